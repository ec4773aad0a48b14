#include "wrk_stream.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sl_bus.h"
#include "sl_codec.h"
#include "sl_log.h"
#include "sl_metrics.h"
#include "sl_streams.h"
#include "sl_subject.h"
#include "sl_text.h"
#include "sl_time.h"

/* ---- Coalescing -------------------------------------------------------- */

sl_status wrk_coalesce_init(wrk_coalesce *c, int64_t window_ms, size_t max_bytes,
                            bool first_at_once)
{
    if (c == NULL || window_ms < 0 || max_bytes < 1)
        return SL_ERR_INVAL;
    memset(c, 0, sizeof(*c));
    c->window_ms = window_ms;
    c->max_bytes = max_bytes;
    c->first_at_once = first_at_once;
    return SL_OK;
}

void wrk_coalesce_set_first_window(wrk_coalesce *c, int64_t ms)
{
    c->first_window_ms = ms > 0 ? ms : 0;
}

bool wrk_coalesce_emitted(const wrk_coalesce *c)
{
    return c->emitted_any;
}

/* Whether the pending text is the first chunk waiting for its first
 * window. */
static bool in_first_window(const wrk_coalesce *c)
{
    return c->first_at_once && !c->emitted_any && c->first_window_ms > 0;
}

/* When the pending text is due (pending text only). */
static int64_t pending_due(const wrk_coalesce *c)
{
    return c->first_ms + (in_first_window(c) ? c->first_window_ms : c->window_ms);
}

void wrk_coalesce_fini(wrk_coalesce *c)
{
    if (c == NULL)
        return;
    free(c->buf);
    c->buf = NULL;
    c->len = c->cap = 0;
}

static void coalesce_emit(wrk_coalesce *c, wrk_chunk_fn fn, void *ud)
{
    if (c->len == 0)
        return;
    if (fn != NULL)
        fn(ud, c->buf, c->len);
    c->len = 0;
    c->emitted_any = true;
}

sl_status wrk_coalesce_add(wrk_coalesce *c, const char *text, size_t len, int64_t now_ms,
                           wrk_chunk_fn fn, void *ud)
{
    if (len == 0)
        return SL_OK;
    if (c->len > 0 && now_ms >= pending_due(c))
        coalesce_emit(c, fn, ud);
    if (c->len + len > c->cap) {
        size_t cap = c->cap ? c->cap : 128;
        while (cap < c->len + len)
            cap *= 2;
        char *nb = realloc(c->buf, cap);
        if (nb == NULL)
            return SL_ERR_NOMEM;
        c->buf = nb;
        c->cap = cap;
    }
    if (c->len == 0)
        c->first_ms = now_ms;
    memcpy(c->buf + c->len, text, len);
    c->len += len;
    if (in_first_window(c))
        return SL_OK; /* held, whatever its size, until its window is over */
    if ((c->first_at_once && !c->emitted_any) || c->len >= c->max_bytes || c->window_ms == 0)
        coalesce_emit(c, fn, ud);
    return SL_OK;
}

void wrk_coalesce_poll(wrk_coalesce *c, int64_t now_ms, wrk_chunk_fn fn, void *ud)
{
    if (c->len > 0 && now_ms >= pending_due(c))
        coalesce_emit(c, fn, ud);
}

void wrk_coalesce_flush(wrk_coalesce *c, wrk_chunk_fn fn, void *ud)
{
    coalesce_emit(c, fn, ud);
}

int64_t wrk_coalesce_due(const wrk_coalesce *c)
{
    return c->len > 0 ? pending_due(c) : INT64_MAX;
}

size_t wrk_coalesce_pending(const wrk_coalesce *c)
{
    return c->len;
}

/* ---- One reply attempt ------------------------------------------------- */

struct wrk_stream {
    pthread_mutex_t mu; /* orders the job thread and the timer thread */
    jsCtx *js;
    natsConnection *nc; /* token events without acknowledgment; NULL: through js */
    char *subject, *tenant, *session, *trace_id, *job_id, *reply_id, *to, *agent;
    uint32_t hops, attempt;
    size_t max_text;
    wrk_coalesce co;
    char *text; /* the whole reply so far, NUL-terminated */
    size_t text_len, text_cap;
    uint32_t index; /* next chunk index */
    int64_t first_chunk_ms;
    uint32_t usage_in, usage_out; /* the final reply's usage (wrk_stream_set_usage) */
    bool usage_estimated;
};

/* The counters are looked up once, by whichever thread publishes first:
 * every slot's job thread and the timer publish chunks, each under its
 * own stream's lock, so the cached pointers are atomic (the registry
 * hands every caller the same counter). */
static sl_counter *m_chunks(void)
{
    static _Atomic(sl_counter *) c;
    sl_counter *v = atomic_load_explicit(&c, memory_order_acquire);

    if (v == NULL) {
        v = sl_counter_get("sluice_wrk_chunks_total", NULL, "token events published to OUT");
        atomic_store_explicit(&c, v, memory_order_release);
    }
    return v;
}

static sl_counter *m_pub_errors(void)
{
    static _Atomic(sl_counter *) c;
    sl_counter *v = atomic_load_explicit(&c, memory_order_acquire);

    if (v == NULL) {
        v = sl_counter_get("sluice_wrk_publish_errors_total", NULL,
                           "token, reply or agent-message publishes that failed");
        atomic_store_explicit(&c, v, memory_order_release);
    }
    return v;
}

static void envelope_header(Sluice__Envelope *e, char *event_id, const wrk_stream *s)
{
    sl_event_id_new(event_id);
    e->event_id = event_id;
    e->tenant = s->tenant;
    e->session = s->session;
    e->message_id = s->to;
    e->ts_unix_ns = sl_now_ns();
    e->trace_id = s->trace_id;
    e->hops = s->hops;
}

/* Packs e into a new natsMsg on subject; the caller owns *out. */
static sl_status envelope_msg(const Sluice__Envelope *e, const char *subject, natsMsg **out)
{
    uint8_t *buf = NULL;
    size_t len = 0;
    sl_status st = sl_envelope_encode(e, &buf, &len);

    if (st != SL_OK)
        return st;
    if (natsMsg_Create(out, subject, NULL, (const char *)buf, (int)len) != NATS_OK)
        st = SL_ERR_NOMEM;
    free(buf);
    return st;
}

/* Publishes one token event; called with s->mu held, so indexes and
 * publishes stay in order. */
static void publish_chunk(void *ud, const char *text, size_t len)
{
    wrk_stream *s = ud;
    Sluice__Envelope e = SLUICE__ENVELOPE__INIT;
    Sluice__TokenChunk tc = SLUICE__TOKEN_CHUNK__INIT;
    char event_id[SL_EVENT_ID_LEN + 1];
    char msg_id[256];
    char *chunk = NULL;
    natsMsg *msg = NULL;
    jsPubOptions po;
    natsStatus ns;
    uint32_t index = s->index++;

    chunk = strndup(text, len);
    if (chunk == NULL)
        goto fail;
    envelope_header(&e, event_id, s);
    tc.reply_id = s->reply_id;
    tc.to = s->to;
    tc.agent = s->agent;
    tc.attempt = s->attempt;
    tc.text = chunk;
    tc.index = index;
    e.body_case = SLUICE__ENVELOPE__BODY_TOKEN;
    e.token = &tc;
    if (envelope_msg(&e, s->subject, &msg) != SL_OK)
        goto fail;
    snprintf(msg_id, sizeof(msg_id), "t:%s:%" PRIu32 ":%" PRIu32, s->job_id, s->attempt, index);
    if (s->nc != NULL) {
        /* A plain publish: JetStream stores it (deduplicated by the same
         * header) and sends no acknowledgment back. */
        ns = natsMsgHeader_Set(msg, "Nats-Msg-Id", msg_id);
        if (ns == NATS_OK)
            ns = natsConnection_PublishMsg(s->nc, msg);
        natsMsg_Destroy(msg);
        msg = NULL;
    } else {
        jsPubOptions_Init(&po);
        po.MsgId = msg_id;
        ns = js_PublishMsgAsync(s->js, &msg, &po);
    }
    if (ns != NATS_OK) {
        sl_logf(SL_LOG_DEBUG, &(sl_log_ctx){.tenant = s->tenant, .session = s->session},
                "token publish for job %s failed: %s", s->job_id, natsStatus_GetText(ns));
        goto fail;
    }
    if (s->first_chunk_ms == 0)
        s->first_chunk_ms = sl_mono_ms();
    sl_counter_inc(m_chunks());
    free(chunk);
    return;
fail:
    sl_counter_inc(m_pub_errors());
    natsMsg_Destroy(msg);
    free(chunk);
}

static char *dup_or_empty(const char *s)
{
    return strdup(s != NULL ? s : "");
}

void wrk_stream_destroy(wrk_stream *s)
{
    if (s == NULL)
        return;
    pthread_mutex_destroy(&s->mu);
    wrk_coalesce_fini(&s->co);
    free(s->subject);
    free(s->tenant);
    free(s->session);
    free(s->trace_id);
    free(s->job_id);
    free(s->reply_id);
    free(s->to);
    free(s->agent);
    free(s->text);
    free(s);
}

sl_status wrk_stream_create(wrk_stream **out, jsCtx *js, const wrk_stream_params *p)
{
    wrk_stream *s = NULL;
    sl_status st = SL_OK;

    if (out == NULL || js == NULL || p == NULL || p->subject == NULL || p->tenant == NULL ||
        p->job_id == NULL || p->reply_id == NULL)
        return SL_ERR_INVAL;
    s = calloc(1, sizeof(*s));
    if (s == NULL)
        return SL_ERR_NOMEM;
    if (pthread_mutex_init(&s->mu, NULL) != 0) {
        free(s);
        return SL_ERR_NOMEM;
    }
    s->js = js;
    s->nc = p->nc;
    s->hops = p->hops;
    s->attempt = p->attempt;
    s->max_text = p->max_text ? p->max_text : WRK_STREAM_MAX_TEXT;
    s->subject = dup_or_empty(p->subject);
    s->tenant = dup_or_empty(p->tenant);
    s->session = dup_or_empty(p->session);
    s->trace_id = dup_or_empty(p->trace_id);
    s->job_id = dup_or_empty(p->job_id);
    s->reply_id = dup_or_empty(p->reply_id);
    s->to = dup_or_empty(p->to);
    s->agent = dup_or_empty(p->agent);
    s->usage_estimated = true; /* no call counted yet: 0 and 0, estimated */
    s->text = calloc(1, 1);
    if (!s->subject || !s->tenant || !s->session || !s->trace_id || !s->job_id || !s->reply_id ||
        !s->to || !s->agent || !s->text) {
        st = SL_ERR_NOMEM;
        goto cleanup;
    }
    s->text_cap = 1;
    st = wrk_coalesce_init(&s->co, p->window_ms, p->max_bytes > 0 ? p->max_bytes : 1, true);
    if (st != SL_OK)
        goto cleanup;
    wrk_coalesce_set_first_window(&s->co, p->first_window_ms);
    *out = s;
    s = NULL;
cleanup:
    wrk_stream_destroy(s);
    return st;
}

sl_status wrk_stream_token(wrk_stream *s, const char *text, size_t len, int64_t now_ms, bool *armed)
{
    sl_status st = SL_OK;
    bool was_pending;

    if (armed != NULL)
        *armed = false;
    if (len == 0)
        return SL_OK;
    if (s->text_len + len > s->max_text)
        return SL_ERR_FULL;
    /* The text is only touched by the job thread, but the timer reads
     * nothing of it, so growing it needs no lock. */
    if (s->text_len + len + 1 > s->text_cap) {
        size_t cap = s->text_cap * 2;
        while (cap < s->text_len + len + 1)
            cap *= 2;
        char *nb = realloc(s->text, cap);
        if (nb == NULL)
            return SL_ERR_NOMEM;
        s->text = nb;
        s->text_cap = cap;
    }
    memcpy(s->text + s->text_len, text, len);
    s->text_len += len;
    s->text[s->text_len] = '\0';

    pthread_mutex_lock(&s->mu);
    was_pending = wrk_coalesce_pending(&s->co) > 0;
    st = wrk_coalesce_add(&s->co, text, len, now_ms, publish_chunk, s);
    if (armed != NULL)
        *armed = !was_pending && wrk_coalesce_pending(&s->co) > 0;
    pthread_mutex_unlock(&s->mu);
    return st;
}

void wrk_stream_tick(wrk_stream *s, int64_t now_ms)
{
    pthread_mutex_lock(&s->mu);
    wrk_coalesce_poll(&s->co, now_ms, publish_chunk, s);
    pthread_mutex_unlock(&s->mu);
}

int64_t wrk_stream_due(wrk_stream *s)
{
    int64_t due;

    pthread_mutex_lock(&s->mu);
    due = wrk_coalesce_due(&s->co);
    pthread_mutex_unlock(&s->mu);
    return due;
}

void wrk_stream_flush(wrk_stream *s)
{
    pthread_mutex_lock(&s->mu);
    wrk_coalesce_flush(&s->co, publish_chunk, s);
    pthread_mutex_unlock(&s->mu);
}

void wrk_stream_end(wrk_stream *s)
{
    pthread_mutex_lock(&s->mu);
    if (wrk_coalesce_emitted(&s->co))
        wrk_coalesce_flush(&s->co, publish_chunk, s);
    else
        s->co.len = 0; /* dropped: the final reply carries it */
    pthread_mutex_unlock(&s->mu);
}

const char *wrk_stream_text(wrk_stream *s, size_t *len)
{
    if (len != NULL)
        *len = s->text_len;
    return s->text;
}

uint32_t wrk_stream_chunks(wrk_stream *s)
{
    uint32_t n;

    pthread_mutex_lock(&s->mu);
    n = s->index;
    pthread_mutex_unlock(&s->mu);
    return n;
}

int64_t wrk_stream_first_chunk_ms(wrk_stream *s)
{
    int64_t t;

    pthread_mutex_lock(&s->mu);
    t = s->first_chunk_ms;
    pthread_mutex_unlock(&s->mu);
    return t;
}

void wrk_stream_set_usage(wrk_stream *s, uint64_t input_tokens, uint64_t output_tokens,
                          bool estimated)
{
    s->usage_in = input_tokens > UINT32_MAX ? UINT32_MAX : (uint32_t)input_tokens;
    s->usage_out = output_tokens > UINT32_MAX ? UINT32_MAX : (uint32_t)output_tokens;
    s->usage_estimated = estimated;
}

void wrk_stream_set_js(wrk_stream *s, jsCtx *js)
{
    s->js = js;
}

/* The final reply as a message, with its Nats-Msg-Id in msg_id. */
static sl_status final_msg(wrk_stream *s, const char *text, bool degraded, bool partial,
                           bool cancelled, natsMsg **out, char *msg_id, size_t msg_id_len)
{
    Sluice__Envelope e = SLUICE__ENVELOPE__INIT;
    Sluice__Reply r = SLUICE__REPLY__INIT;
    Sluice__Usage u = SLUICE__USAGE__INIT;
    char event_id[SL_EVENT_ID_LEN + 1];
    char *body = strdup(text != NULL ? text : "");
    sl_status st;

    if (body == NULL)
        return SL_ERR_NOMEM;
    envelope_header(&e, event_id, s);
    r.reply_id = s->reply_id;
    r.to = s->to;
    r.agent = s->agent;
    r.text = body;
    r.attempt = s->attempt;
    r.degraded = degraded;
    r.partial = partial;
    r.cancelled = cancelled;
    u.input_tokens = s->usage_in;
    u.output_tokens = s->usage_out;
    u.estimated = s->usage_estimated;
    r.usage = &u;
    e.body_case = SLUICE__ENVELOPE__BODY_REPLY;
    e.reply = &r;
    st = envelope_msg(&e, s->subject, out);
    snprintf(msg_id, msg_id_len, "r:%s", s->job_id);
    free(body);
    return st;
}

sl_status wrk_stream_final_async(wrk_stream *s, const char *text, bool degraded, bool partial,
                                 bool cancelled)
{
    char msg_id[256];
    natsMsg *msg = NULL;
    jsPubOptions po;
    natsStatus ns;
    sl_status st;

    wrk_stream_flush(s);
    st = final_msg(s, text, degraded, partial, cancelled, &msg, msg_id, sizeof(msg_id));
    if (st != SL_OK)
        return st;
    jsPubOptions_Init(&po);
    po.MsgId = msg_id;
    /* On the connection of the tokens, after them: stored after them. */
    ns = js_PublishMsgAsync(s->js, &msg, &po);
    if (ns != NATS_OK) {
        sl_logf(SL_LOG_WARN, &(sl_log_ctx){.tenant = s->tenant, .session = s->session},
                "final reply for job %s not sent: %s", s->job_id, natsStatus_GetText(ns));
        sl_counter_inc(m_pub_errors());
        st = SL_ERR_BUS;
    }
    natsMsg_Destroy(msg); /* NULL once the library took it */
    return st;
}

sl_status wrk_stream_final(wrk_stream *s, const char *text, bool degraded, bool partial,
                           bool cancelled, bool *duplicate)
{
    char msg_id[256];
    natsMsg *msg = NULL;
    jsPubAck *pa = NULL;
    jsPubOptions po;
    jsErrCode jerr = 0;
    natsStatus ns;
    sl_status st;

    if (duplicate != NULL)
        *duplicate = false;
    wrk_stream_flush(s);
    st = final_msg(s, text, degraded, partial, cancelled, &msg, msg_id, sizeof(msg_id));
    if (st != SL_OK)
        goto cleanup;
    jsPubOptions_Init(&po);
    po.MsgId = msg_id;
    /* Published on the same connection after every token of this attempt,
     * so the stream stores it after them. */
    ns = js_PublishMsg(&pa, s->js, msg, &po, &jerr);
    if (ns != NATS_OK) {
        sl_logf(SL_LOG_WARN, &(sl_log_ctx){.tenant = s->tenant, .session = s->session},
                "final reply for job %s not stored: %s (jerr %d)", s->job_id,
                natsStatus_GetText(ns), (int)jerr);
        sl_counter_inc(m_pub_errors());
        st = sl_status_from_nats_failure(ns);
        goto cleanup;
    }
    if (duplicate != NULL)
        *duplicate = pa->Duplicate;
cleanup:
    jsPubAck_Destroy(pa);
    natsMsg_Destroy(msg);
    return st;
}

/* ---- Agent message on IN ----------------------------------------------- */

bool wrk_agent_message_routable(bool mentions_only, char *const *names, size_t n, const char *text)
{
    if (!mentions_only)
        return true;
    for (size_t i = 0; i < n; i++)
        if (sl_text_mentions(text != NULL ? text : "", names[i]))
            return true;
    return false;
}

/* Encodes the agent message and its subject and Nats-Msg-Id; *buf is the
 * caller's to free. */
static sl_status agent_message_encode(const wrk_agent_msg *m, char *subject, size_t subject_len,
                                      char *msg_id, size_t msg_id_len, uint8_t **buf, size_t *len)
{
    Sluice__Envelope e = SLUICE__ENVELOPE__INIT;
    Sluice__ClientMessage cm = SLUICE__CLIENT_MESSAGE__INIT;
    char event_id[SL_EVENT_ID_LEN + 1];
    char pseudo[SL_ID_MAX + 8];
    sl_status st;

    if (m == NULL || m->agent == NULL || m->reply_id == NULL || m->tenant == NULL)
        return SL_ERR_INVAL;
    snprintf(pseudo, sizeof(pseudo), "a-%s", m->agent);
    st = sl_subject_in(subject, subject_len, m->tenant, pseudo);
    if (st != SL_OK)
        return st;
    sl_event_id_new(event_id);
    e.event_id = event_id;
    e.tenant = (char *)m->tenant;
    e.session = (char *)(m->session != NULL ? m->session : "");
    e.client_id = (char *)m->reply_id;
    e.message_id = (char *)m->reply_id;
    e.ts_unix_ns = sl_now_ns();
    e.trace_id = (char *)(m->trace_id != NULL ? m->trace_id : "");
    e.hops = m->hops;
    cm.room = (char *)(m->room != NULL ? m->room : "");
    cm.text = (char *)(m->text != NULL ? m->text : "");
    cm.agent = (char *)m->agent;
    e.body_case = SLUICE__ENVELOPE__BODY_MESSAGE;
    e.message = &cm;
    st = sl_envelope_encode(&e, buf, len);
    if (st != SL_OK)
        return st;
    snprintf(msg_id, msg_id_len, "a:%s", m->reply_id);
    return SL_OK;
}

sl_status wrk_agent_message_publish(jsCtx *js, const wrk_agent_msg *m)
{
    char subject[SL_SUBJECT_MAX];
    char msg_id[256];
    uint8_t *buf = NULL;
    size_t len = 0;
    jsPubAck *pa = NULL;
    jsPubOptions po;
    jsErrCode jerr = 0;
    natsStatus ns;
    sl_status st;

    if (js == NULL)
        return SL_ERR_INVAL;
    st = agent_message_encode(m, subject, sizeof(subject), msg_id, sizeof(msg_id), &buf, &len);
    if (st != SL_OK)
        return st;
    jsPubOptions_Init(&po);
    po.MsgId = msg_id;
    ns = js_Publish(&pa, js, subject, buf, (int)len, &po, &jerr);
    if (ns != NATS_OK) {
        sl_logf(SL_LOG_WARN, &(sl_log_ctx){.tenant = m->tenant, .session = m->session},
                "agent message %s not stored: %s (jerr %d)", m->reply_id, natsStatus_GetText(ns),
                (int)jerr);
        sl_counter_inc(m_pub_errors());
        st = sl_status_from_nats_failure(ns);
    }
    jsPubAck_Destroy(pa);
    free(buf);
    return st;
}

sl_status wrk_agent_message_publish_async(jsCtx *js, const wrk_agent_msg *m)
{
    char subject[SL_SUBJECT_MAX];
    char msg_id[256];
    uint8_t *buf = NULL;
    size_t len = 0;
    jsPubOptions po;
    natsStatus ns;
    sl_status st;

    if (js == NULL)
        return SL_ERR_INVAL;
    st = agent_message_encode(m, subject, sizeof(subject), msg_id, sizeof(msg_id), &buf, &len);
    if (st != SL_OK)
        return st;
    jsPubOptions_Init(&po);
    po.MsgId = msg_id;
    ns = js_PublishAsync(js, subject, buf, (int)len, &po);
    if (ns != NATS_OK) {
        sl_logf(SL_LOG_WARN, &(sl_log_ctx){.tenant = m->tenant, .session = m->session},
                "agent message %s not sent: %s", m->reply_id, natsStatus_GetText(ns));
        sl_counter_inc(m_pub_errors());
        st = SL_ERR_BUS;
    }
    free(buf);
    return st;
}

/* ---- Channel history --------------------------------------------------- */

/* How many stream positions before the channel's last one are scanned per
 * wanted message: a reply streams many token events on the same subject. */
#define HISTORY_SPAN_PER_MSG 64
#define HISTORY_SPAN_MAX     4096

void wrk_history_destroy(wrk_history *h)
{
    if (h == NULL)
        return;
    for (size_t i = 0; i < h->n; i++)
        free(h->strs[i]);
    free(h->strs);
    free(h->msgs);
    free(h);
}

/* Turns one OUT envelope into a context message; returns a malloc'd content
 * and sets *role, or NULL when the event is not part of the conversation. */
static char *history_entry(const Sluice__Envelope *e, const char *exclude_to, const char *agent,
                           const char **role)
{
    char *out = NULL;

    if (e->body_case == SLUICE__ENVELOPE__BODY_MESSAGE && e->message != NULL) {
        const Sluice__ClientMessage *cm = e->message;
        if (exclude_to != NULL && exclude_to[0] != '\0' &&
            (strcmp(e->client_id, exclude_to) == 0 || strcmp(e->message_id, exclude_to) == 0))
            return NULL;
        if (cm->agent[0] != '\0' && strcmp(cm->agent, agent) == 0)
            return NULL; /* the agent's own answer is taken from its reply */
        *role = "user";
        const char *who = cm->agent[0] != '\0' ? cm->agent : cm->user;
        if (who[0] != '\0') {
            if (asprintf(&out, "%s: %s", who, cm->text) < 0)
                out = NULL;
        } else {
            out = strdup(cm->text);
        }
        return out;
    }
    if (e->body_case == SLUICE__ENVELOPE__BODY_REPLY && e->reply != NULL) {
        const Sluice__Reply *r = e->reply;
        if (r->degraded || r->cancelled || r->text[0] == '\0')
            return NULL;
        if (strcmp(r->agent, agent) == 0) {
            *role = "assistant";
            return strdup(r->text);
        }
        *role = "user";
        if (asprintf(&out, "%s: %s", r->agent, r->text) < 0)
            out = NULL;
        return out;
    }
    return NULL;
}

sl_status wrk_history_load(jsCtx *js, const char *subject, const char *exclude_to,
                           const char *agent, size_t max, int64_t budget_ms, wrk_history **out)
{
    wrk_history *h = NULL;
    natsMsg *last = NULL;
    natsSubscription *sub = NULL;
    jsDirectGetMsgOptions dg;
    jsSubOptions so;
    jsErrCode jerr = 0;
    natsStatus ns;
    sl_status st = SL_OK;
    uint64_t last_seq, span, start;
    int64_t until = sl_mono_ms() + budget_ms;
    /* A ring of the most recent entries, oldest first once unrolled. */
    char **ring_text = NULL;
    const char **ring_role = NULL;
    size_t ring_n = 0, ring_head = 0;

    if (js == NULL || subject == NULL || out == NULL)
        return SL_ERR_INVAL;
    if (agent == NULL)
        agent = "";
    h = calloc(1, sizeof(*h));
    if (h == NULL)
        return SL_ERR_NOMEM;
    if (max == 0)
        goto done;
    ring_text = calloc(max, sizeof(*ring_text));
    ring_role = calloc(max, sizeof(*ring_role));
    if (ring_text == NULL || ring_role == NULL) {
        st = SL_ERR_NOMEM;
        goto cleanup;
    }

    jsDirectGetMsgOptions_Init(&dg);
    dg.LastBySubject = subject;
    ns = js_DirectGetMsg(&last, js, SL_STREAM_OUT, NULL, &dg);
    if (ns == NATS_NOT_FOUND)
        goto done; /* an empty channel */
    if (ns != NATS_OK) {
        st = sl_status_from_nats(ns);
        goto cleanup;
    }
    last_seq = natsMsg_GetSequence(last);
    if (last_seq == 0) {
        const char *v = NULL;
        if (natsMsgHeader_Get(last, "Nats-Sequence", &v) == NATS_OK && v != NULL &&
            sl_parse_u64(v, &last_seq) != SL_OK)
            last_seq = 0;
    }
    if (last_seq == 0)
        goto done;
    span = (uint64_t)max * HISTORY_SPAN_PER_MSG;
    if (span > HISTORY_SPAN_MAX)
        span = HISTORY_SPAN_MAX;
    start = last_seq > span ? last_seq - span + 1 : 1;

    jsSubOptions_Init(&so);
    so.Stream = SL_STREAM_OUT;
    so.Ordered = true;
    so.Config.DeliverPolicy = js_DeliverByStartSequence;
    so.Config.OptStartSeq = start;
    ns = js_SubscribeSync(&sub, js, subject, NULL, &so, &jerr);
    if (ns != NATS_OK) {
        st = sl_status_from_nats(ns);
        goto cleanup;
    }
    /* Bounded by the sequence range and by the time budget. */
    for (uint64_t guard = 0; guard <= span; guard++) {
        natsMsg *m = NULL;
        Sluice__Envelope *e = NULL;
        jsMsgMetaData *meta = NULL;
        uint64_t seq = 0;
        int64_t left = until - sl_mono_ms();

        if (left <= 0)
            break;
        ns = natsSubscription_NextMsg(&m, sub, left);
        if (ns != NATS_OK)
            break;
        if (natsMsg_GetMetaData(&meta, m) == NATS_OK) {
            seq = meta->Sequence.Stream;
            jsMsgMetaData_Destroy(meta);
        }
        if (sl_envelope_decode(natsMsg_GetData(m), (size_t)natsMsg_GetDataLength(m), &e) == SL_OK) {
            const char *role = NULL;
            char *text = history_entry(e, exclude_to, agent, &role);
            if (text != NULL) {
                size_t slot = (ring_head + ring_n) % max;
                if (ring_n == max) {
                    free(ring_text[ring_head]);
                    slot = ring_head;
                    ring_head = (ring_head + 1) % max;
                } else {
                    ring_n++;
                }
                ring_text[slot] = text;
                ring_role[slot] = role;
            }
            sl_envelope_free(e);
        }
        natsMsg_Destroy(m);
        if (seq >= last_seq)
            break;
    }

done:
    if (ring_n > 0) {
        h->msgs = calloc(ring_n, sizeof(*h->msgs));
        h->strs = calloc(ring_n, sizeof(*h->strs));
        if (h->msgs == NULL || h->strs == NULL) {
            st = SL_ERR_NOMEM;
            goto cleanup;
        }
        for (size_t i = 0; i < ring_n; i++) {
            size_t k = (ring_head + i) % max;
            h->strs[i] = ring_text[k];
            h->msgs[i].role = ring_role[k];
            h->msgs[i].content = ring_text[k];
            ring_text[k] = NULL;
        }
        h->n = ring_n;
    }
    *out = h;
    h = NULL;
cleanup:
    if (ring_text != NULL)
        for (size_t i = 0; i < max; i++)
            free(ring_text[i]);
    free(ring_text);
    free(ring_role);
    if (sub != NULL)
        natsSubscription_Unsubscribe(sub); /* deletes the ephemeral consumer now */
    natsSubscription_Destroy(sub);
    natsMsg_Destroy(last);
    wrk_history_destroy(h);
    return st;
}
