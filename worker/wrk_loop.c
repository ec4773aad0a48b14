#include "wrk_loop.h"

#include <cJSON.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "sl_codec.h"
#include "sl_log.h"
#include "sl_metrics.h"
#include "sl_streams.h"
#include "sl_subject.h"
#include "wrk_stream.h"

#define NS_PER_MS ((int64_t)1000000)

/* Used when the agent configured no fallback text. */
#define DEFAULT_FALLBACK "Sorry, I cannot answer right now. Please try again."

/* Cancels seen on core NATS, remembered so a job that starts after its
 * cancel arrived (before the orchestrator wrote the KV marker) is dropped
 * too. */
#define RECENT_CANCELS   256
#define RECENT_CANCEL_MS (10 * 60 * 1000)

/* A stop request is noticed within one fetch wait. */
#define FETCH_WAIT_MS     1000
#define FETCH_WAIT_MIN_MS 100

/* The timer thread wakes at least this often. */
#define TICK_MAX_MS 200

/* Bound on the time spent reading the channel history for context. */
#define CONTEXT_BUDGET_MS 1000

/* A final reply that could not be stored is retried after this delay. */
#define FINAL_RETRY_MS 1000

typedef struct recent_cancel {
    char tenant[SL_ID_MAX + 1];
    char session[SL_ID_MAX + 1];
    char to[SL_ID_MAX + 1];
    int64_t at_ms;
} recent_cancel;

typedef struct wrk_slot {
    struct wrk_loop *loop;
    int idx;
    pthread_t th;
    bool started;
    bool done;               /* the thread left its fetch loop; under the loop's mu */
    bool in_job;             /* a job is attached; under the loop's mu */
    natsSubscription **subs; /* one per model; used only by this slot's thread */

    pthread_mutex_t mu; /* guards the fields below against the timer and cancel threads */
    bool busy;
    char tenant[SL_ID_MAX + 1];
    char session[SL_ID_MAX + 1];
    char to[SL_ID_MAX + 1];
    natsMsg *msg;        /* the work message while a job runs (InProgress target) */
    wrk_stream *stream;  /* the current attempt's stream (ticked by the timer) */
    int64_t progress_ms; /* last InProgress (or job start) */
    _Atomic int cancel;  /* wrk_cancel_reason; nonzero aborts the model call */
} wrk_slot;

struct wrk_loop {
    sl_bus *bus;
    natsConnection *nc;
    jsCtx *js; /* own context: async token publishes, pulls */
    kvStore *kv;
    wrk_backend *backend;

    char **models;
    size_t nmodels;
    wrk_loop_cfg cfg; /* models and worker_id point into this struct's copies */
    char *worker_id;
    int64_t ack_wait_ms;
    int64_t max_deliver;
    int64_t fetch_wait_ms;

    wrk_slot *slots;
    int nslots;
    natsSubscription *cancel_sub;

    pthread_mutex_t mu; /* guards kick, idle and the recent-cancel ring */
    pthread_cond_t tick_cv;
    pthread_cond_t idle_cv;
    uint64_t kick;
    int busy;
    pthread_t ticker;
    bool ticker_started;
    recent_cancel recent[RECENT_CANCELS];
    size_t recent_next;

    _Atomic int stopping;
    _Atomic int abort_all; /* the grace is over: every job is aborted as it starts */
    _Atomic int ticker_stop;
    _Atomic int running;
    bool stopped;

    sl_counter *m_jobs[5]; /* ok, partial, degraded, cancelled, failed */
    sl_counter *m_tokens, *m_retries, *m_requeued, *m_cancels;
    sl_hist *m_ttft, *m_job;
    sl_gauge *m_inflight;
};

enum { M_OK, M_PARTIAL, M_DEGRADED, M_CANCELLED, M_FAILED };

static const char *const metric_names[5] = {"ok", "partial", "degraded", "cancelled", "failed"};

/* ---- Pure decision ----------------------------------------------------- */

static int64_t retry_delay(uint64_t attempt, int64_t retry_after_ms)
{
    int64_t d;

    if (retry_after_ms >= 0) {
        d = retry_after_ms;
    } else {
        d = WRK_RETRY_BASE_MS;
        for (uint64_t i = 1; i < attempt && d < WRK_RETRY_MAX_MS; i++)
            d *= 2;
    }
    return d > WRK_RETRY_MAX_MS ? WRK_RETRY_MAX_MS : d;
}

wrk_decision wrk_job_decide(wrk_outcome outcome, wrk_cancel_reason cancel, bool truncated,
                            size_t text_len, uint64_t attempt, int64_t max_deliver,
                            int64_t retry_after_ms)
{
    wrk_decision d = {
        .end = WRK_END_OK, .term = false, .delay_ms = 0, .kv_state = "done", .metric = "ok"};
    bool last = max_deliver > 0 && attempt >= (uint64_t)max_deliver;
    wrk_decision partial_or_degraded = {
        .end = text_len > 0 ? WRK_END_PARTIAL : WRK_END_DEGRADED,
        .kv_state = "done",
        .metric = text_len > 0 ? "partial" : "degraded",
    };
    wrk_decision degraded_term = {
        .end = WRK_END_DEGRADED, .term = true, .kv_state = "failed", .metric = "degraded"};

    switch (outcome) {
    case WRK_DONE:
        return d;
    case WRK_DEADLINE:
        return partial_or_degraded;
    case WRK_CANCELLED:
        if (truncated)
            return (wrk_decision){.end = WRK_END_PARTIAL, .kv_state = "done", .metric = "partial"};
        if (cancel == WRK_CANCEL_USER)
            return (wrk_decision){
                .end = WRK_END_CANCELLED, .kv_state = "cancelled", .metric = "cancelled"};
        if (cancel == WRK_CANCEL_SHUTDOWN) {
            if (last)
                return partial_or_degraded;
            return (wrk_decision){.end = WRK_END_REQUEUE, .kv_state = "queued"};
        }
        return degraded_term; /* cancelled for no known reason: a backend bug */
    case WRK_TRANSIENT:
        if (last)
            return degraded_term;
        return (wrk_decision){.end = WRK_END_RETRY,
                              .delay_ms = retry_delay(attempt, retry_after_ms),
                              .kv_state = "queued"};
    case WRK_FATAL:
    default:
        return degraded_term;
    }
}

/* ---- Helpers ----------------------------------------------------------- */

static void set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;

    if (err == NULL || errlen == 0)
        return;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static void copy_id(char *dst, const char *src)
{
    snprintf(dst, SL_ID_MAX + 1, "%s", src != NULL ? src : "");
}

static void kick_ticker(wrk_loop *l)
{
    pthread_mutex_lock(&l->mu);
    l->kick++;
    pthread_cond_signal(&l->tick_cv);
    pthread_mutex_unlock(&l->mu);
}

/* Converts an absolute CLOCK_MONOTONIC time in ms to a timespec. */
static struct timespec mono_abs(int64_t ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
    return ts;
}

/* Sleeps up to ms, waking early when the loop stops. */
static void nap(wrk_loop *l, int64_t ms)
{
    int64_t until = wrk_backend_now_ms() + ms;

    while (!atomic_load(&l->stopping)) {
        int64_t left = until - wrk_backend_now_ms();
        if (left <= 0)
            break;
        if (left > 50)
            left = 50;
        struct timespec ts = {.tv_sec = 0, .tv_nsec = (long)left * 1000000L};
        nanosleep(&ts, NULL);
    }
}

/* ---- In-flight KV ------------------------------------------------------ */

typedef struct job {
    wrk_slot *slot;
    natsMsg *msg;
    Sluice__Envelope *env;
    const Sluice__WorkRequest *work;
    const char *tenant, *session, *job_id, *reply_id, *to, *agent, *fallback;
    char subject[SL_SUBJECT_MAX];
    char kv_key[SL_SUBJECT_MAX];
    uint64_t attempt;
    int64_t start_ms;
    wrk_stream *stream;
    bool truncated;
    bool stream_failed;
} job;

static sl_log_ctx job_ctx(const job *j)
{
    return (sl_log_ctx){.tenant = j->tenant,
                        .session = j->session,
                        .event = j->job_id,
                        .trace = j->env != NULL ? j->env->trace_id : NULL};
}

static void kv_put_state(wrk_loop *l, job *j, const char *state)
{
    cJSON *o = cJSON_CreateObject();
    char *txt = NULL;
    natsStatus ns;

    if (o == NULL)
        return;
    cJSON_AddStringToObject(o, "state", state);
    cJSON_AddStringToObject(o, "session", j->session);
    cJSON_AddStringToObject(o, "to", j->to);
    cJSON_AddStringToObject(o, "agent", j->agent);
    cJSON_AddStringToObject(o, "worker", l->worker_id);
    cJSON_AddNumberToObject(o, "attempt", (double)j->attempt);
    txt = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    if (txt == NULL)
        return;
    ns = kvStore_PutString(NULL, l->kv, j->kv_key, txt);
    if (ns != NATS_OK) {
        sl_log_ctx c = job_ctx(j);
        sl_logf(SL_LOG_WARN, &c, "in-flight state %s for %s not written: %s", state, j->kv_key,
                natsStatus_GetText(ns));
    }
    free(txt);
}

/* Returns true when the in-flight KV says the job already ended. */
static bool kv_job_finished(wrk_loop *l, const job *j, char *state, size_t statelen)
{
    kvEntry *e = NULL;
    cJSON *o = NULL;
    bool finished = false;

    if (kvStore_Get(&e, l->kv, j->kv_key) != NATS_OK)
        return false;
    o = cJSON_ParseWithLength(kvEntry_Value(e), (size_t)kvEntry_ValueLen(e));
    if (o != NULL) {
        const cJSON *s = cJSON_GetObjectItemCaseSensitive(o, "state");
        if (cJSON_IsString(s) &&
            (strcmp(s->valuestring, "done") == 0 || strcmp(s->valuestring, "cancelled") == 0 ||
             strcmp(s->valuestring, "failed") == 0)) {
            finished = true;
            snprintf(state, statelen, "%s", s->valuestring);
        }
    }
    cJSON_Delete(o);
    kvEntry_Destroy(e);
    return finished;
}

/* True when a cancel for the job's message was recorded: a KV marker from
 * the orchestrator or a cancel this worker heard on core NATS. */
static bool cancel_requested(wrk_loop *l, const job *j)
{
    char key[SL_SUBJECT_MAX];
    kvEntry *e = NULL;
    bool hit = false;
    int64_t now = wrk_backend_now_ms();

    pthread_mutex_lock(&l->mu);
    for (size_t i = 0; i < RECENT_CANCELS && !hit; i++) {
        const recent_cancel *r = &l->recent[i];
        hit = r->at_ms != 0 && now - r->at_ms < RECENT_CANCEL_MS &&
              strcmp(r->tenant, j->tenant) == 0 && strcmp(r->session, j->session) == 0 &&
              strcmp(r->to, j->to) == 0;
    }
    pthread_mutex_unlock(&l->mu);
    if (hit)
        return true;
    if (sl_cancel_key(key, sizeof(key), j->tenant, j->session, j->to) != SL_OK)
        return false;
    if (kvStore_Get(&e, l->kv, key) == NATS_OK)
        hit = true;
    kvEntry_Destroy(e);
    return hit;
}

/* ---- Cancel subscription ----------------------------------------------- */

static void on_cancel(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    wrk_loop *l = closure;
    Sluice__Envelope *e = NULL;
    const char *subj = natsMsg_GetSubject(msg);
    const char *tenant = strrchr(subj, '.');
    const char *to = NULL;
    int64_t now = wrk_backend_now_ms();

    (void)nc;
    (void)sub;
    if (tenant == NULL || !sl_id_valid(tenant + 1))
        goto cleanup;
    tenant++;
    if (sl_envelope_decode(natsMsg_GetData(msg), (size_t)natsMsg_GetDataLength(msg), &e) != SL_OK)
        goto cleanup;
    if (e->body_case == SLUICE__ENVELOPE__BODY_CANCEL && e->cancel != NULL &&
        e->cancel->message_id[0] != '\0')
        to = e->cancel->message_id;
    else
        to = e->message_id;
    if (to == NULL || !sl_client_id_valid(to) || !sl_id_valid(e->session))
        goto cleanup;
    if (e->tenant[0] != '\0' && strcmp(e->tenant, tenant) != 0)
        goto cleanup; /* the subject decides the tenant; a mismatch is bogus */
    sl_counter_inc(l->m_cancels);

    pthread_mutex_lock(&l->mu);
    recent_cancel *r = &l->recent[l->recent_next];
    l->recent_next = (l->recent_next + 1) % RECENT_CANCELS;
    copy_id(r->tenant, tenant);
    copy_id(r->session, e->session);
    copy_id(r->to, to);
    r->at_ms = now;
    pthread_mutex_unlock(&l->mu);

    for (int i = 0; i < l->nslots; i++) {
        wrk_slot *s = &l->slots[i];
        pthread_mutex_lock(&s->mu);
        if (s->busy && strcmp(s->tenant, tenant) == 0 && strcmp(s->session, e->session) == 0 &&
            strcmp(s->to, to) == 0) {
            int expected = WRK_CANCEL_NONE;
            atomic_compare_exchange_strong(&s->cancel, &expected, WRK_CANCEL_USER);
            sl_logf(SL_LOG_INFO, &(sl_log_ctx){.tenant = tenant, .session = e->session},
                    "cancel for message %s: aborting the running job", to);
        }
        pthread_mutex_unlock(&s->mu);
    }
cleanup:
    sl_envelope_free(e);
    natsMsg_Destroy(msg);
}

/* ---- Timer thread ------------------------------------------------------ */

static void *ticker_main(void *arg)
{
    wrk_loop *l = arg;
    int64_t progress_every = l->ack_wait_ms / 3 > 0 ? l->ack_wait_ms / 3 : 1;

    pthread_mutex_lock(&l->mu);
    while (!atomic_load(&l->ticker_stop)) {
        uint64_t kick = l->kick;
        pthread_mutex_unlock(&l->mu);

        int64_t now = wrk_backend_now_ms();
        int64_t next = now + TICK_MAX_MS;
        for (int i = 0; i < l->nslots; i++) {
            wrk_slot *s = &l->slots[i];
            pthread_mutex_lock(&s->mu);
            if (s->stream != NULL) {
                wrk_stream_tick(s->stream, now);
                int64_t due = wrk_stream_due(s->stream);
                if (due < next)
                    next = due;
            }
            if (s->msg != NULL) {
                /* Long jobs (a job's own deadline may exceed the default,
                 * and publishing takes time too) keep their lease. */
                if (now - s->progress_ms >= progress_every) {
                    natsMsg_InProgress(s->msg, NULL);
                    s->progress_ms = now;
                }
                if (s->progress_ms + progress_every < next)
                    next = s->progress_ms + progress_every;
            }
            pthread_mutex_unlock(&s->mu);
        }

        pthread_mutex_lock(&l->mu);
        if (l->kick == kick && !atomic_load(&l->ticker_stop)) {
            struct timespec ts = mono_abs(next);
            pthread_cond_timedwait(&l->tick_cv, &l->mu, &ts);
        }
    }
    pthread_mutex_unlock(&l->mu);
    return NULL;
}

/* ---- One job ----------------------------------------------------------- */

static int on_token(void *ud, const char *text, size_t len)
{
    job *j = ud;
    wrk_loop *l = j->slot->loop;
    bool armed = false;
    sl_status st;

    sl_counter_inc(l->m_tokens);
    st = wrk_stream_token(j->stream, text, len, wrk_backend_now_ms(), &armed);
    if (armed)
        kick_ticker(l);
    if (st == SL_ERR_FULL) {
        j->truncated = true;
        return 1; /* stop the model: the reply is as long as it may get */
    }
    if (st != SL_OK)
        j->stream_failed = true;
    return 0;
}

/* Binds the job to its slot, so that cancels and the timer can find it. */
static void slot_attach(wrk_slot *s, job *j)
{
    wrk_loop *l = s->loop;

    pthread_mutex_lock(&s->mu);
    s->busy = true;
    copy_id(s->tenant, j->tenant);
    copy_id(s->session, j->session);
    copy_id(s->to, j->to);
    s->msg = j->msg;
    s->progress_ms = wrk_backend_now_ms();
    atomic_store(&s->cancel, atomic_load(&l->abort_all) ? WRK_CANCEL_SHUTDOWN : WRK_CANCEL_NONE);
    pthread_mutex_unlock(&s->mu);
    pthread_mutex_lock(&l->mu);
    l->busy++;
    s->in_job = true;
    pthread_mutex_unlock(&l->mu);
    sl_gauge_inc(l->m_inflight);
}

static void slot_set_stream(wrk_slot *s, wrk_stream *st)
{
    pthread_mutex_lock(&s->mu);
    s->stream = st;
    pthread_mutex_unlock(&s->mu);
}

/* Acks, NAKs or terminates the work message; the slot lock orders this
 * with the timer's InProgress on the same message. */
static void slot_settle(wrk_slot *s, natsMsg *msg, int how, int64_t delay_ms)
{
    natsStatus ns;

    pthread_mutex_lock(&s->mu);
    s->msg = NULL;
    if (how == 0)
        ns = natsMsg_Ack(msg, NULL);
    else if (how == 1)
        ns = natsMsg_Term(msg, NULL);
    else if (delay_ms > 0)
        ns = natsMsg_NakWithDelay(msg, delay_ms, NULL);
    else
        ns = natsMsg_Nak(msg, NULL);
    pthread_mutex_unlock(&s->mu);
    if (ns != NATS_OK)
        sl_warn("settling a work message failed: %s", natsStatus_GetText(ns));
}

enum { SETTLE_ACK = 0, SETTLE_TERM = 1, SETTLE_NAK = 2 };

static void slot_detach(wrk_slot *s)
{
    wrk_loop *l = s->loop;

    pthread_mutex_lock(&s->mu);
    s->busy = false;
    s->stream = NULL;
    s->msg = NULL;
    s->tenant[0] = s->session[0] = s->to[0] = '\0';
    atomic_store(&s->cancel, WRK_CANCEL_NONE);
    pthread_mutex_unlock(&s->mu);
    pthread_mutex_lock(&l->mu);
    l->busy--;
    s->in_job = false;
    pthread_cond_broadcast(&l->idle_cv);
    pthread_mutex_unlock(&l->mu);
    sl_gauge_dec(l->m_inflight);
}

/* Decodes and validates the work message. Returns false (and logs) for a
 * message no worker could ever process. */
static bool job_parse(job *j)
{
    const Sluice__Envelope *e;
    const Sluice__WorkRequest *w;
    bool is_room;
    const char *chan;

    if (sl_envelope_decode(natsMsg_GetData(j->msg), (size_t)natsMsg_GetDataLength(j->msg),
                           &j->env) != SL_OK) {
        sl_error("work message on %s is not an envelope; terminating it",
                 natsMsg_GetSubject(j->msg));
        return false;
    }
    e = j->env;
    w = e->body_case == SLUICE__ENVELOPE__BODY_WORK ? e->work : NULL;
    if (w == NULL || !sl_id_valid(e->tenant) || !sl_id_valid(w->job_id) || !sl_id_valid(w->agent)) {
        sl_error("work message on %s lacks a valid tenant, job id or agent; terminating it",
                 natsMsg_GetSubject(j->msg));
        return false;
    }
    j->work = w;
    j->tenant = e->tenant;
    j->session = e->session;
    j->job_id = w->job_id;
    j->reply_id = w->reply_id[0] != '\0' ? w->reply_id : w->job_id;
    j->to = w->to[0] != '\0' ? w->to : e->message_id;
    j->agent = w->agent;
    j->fallback = w->fallback[0] != '\0' ? w->fallback : DEFAULT_FALLBACK;
    is_room = w->room[0] != '\0';
    chan = is_room ? w->room : e->session;
    if (sl_subject_chan(j->subject, sizeof(j->subject), "sluice.out", j->tenant, is_room, chan) !=
            SL_OK ||
        sl_kv_key2(j->kv_key, sizeof(j->kv_key), j->tenant, j->job_id) != SL_OK) {
        sl_error("work message %s has an invalid room or session; terminating it", w->job_id);
        return false;
    }
    return true;
}

/* Publishes a final reply and settles the work message accordingly. */
static void job_finish(wrk_loop *l, job *j, const wrk_decision *d)
{
    wrk_slot *s = j->slot;
    sl_log_ctx c = job_ctx(j);
    size_t len = 0;
    const char *so_far = wrk_stream_text(j->stream, &len);
    const char *text = so_far;
    bool duplicate = false;
    sl_status st;

    if (d->end == WRK_END_DEGRADED)
        text = j->fallback;
    st = wrk_stream_final(j->stream, text, d->end == WRK_END_DEGRADED, d->end == WRK_END_PARTIAL,
                          d->end == WRK_END_CANCELLED, &duplicate);
    if (st != SL_OK) {
        /* Not stored: the job stays pending so this or another worker ends
         * it (attempt + 1); the orchestrator covers the last delivery. */
        sl_logf(SL_LOG_ERROR, &c, "job %s: final reply not stored (%s); will be retried", j->job_id,
                sl_status_str(st));
        sl_counter_inc(l->m_jobs[M_FAILED]);
        slot_settle(s, j->msg, SETTLE_NAK, FINAL_RETRY_MS);
        return;
    }
    if (duplicate)
        sl_logf(SL_LOG_INFO, &c, "job %s: a final reply was already stored", j->job_id);
    if (d->end == WRK_END_OK || d->end == WRK_END_PARTIAL) {
        wrk_agent_msg am = {
            .tenant = j->tenant,
            .session = j->session,
            .trace_id = j->env->trace_id,
            .hops = j->env->hops + 1,
            .reply_id = j->reply_id,
            .agent = j->agent,
            .room = j->work->room,
            .text = so_far,
        };
        st = wrk_agent_message_publish(l->js, &am);
        if (st != SL_OK)
            sl_logf(SL_LOG_WARN, &c, "job %s: agent message not published (%s)", j->job_id,
                    sl_status_str(st));
    }
    kv_put_state(l, j, d->kv_state);
    slot_settle(s, j->msg, d->term ? SETTLE_TERM : SETTLE_ACK, 0);
    for (int i = 0; i < 4; i++)
        if (d->metric != NULL && strcmp(d->metric, metric_names[i]) == 0)
            sl_counter_inc(l->m_jobs[i]);
    sl_logf(SL_LOG_INFO, &c, "job %s attempt %" PRIu64 " ended: %s (%zu bytes, %" PRIu32 " chunks)",
            j->job_id, j->attempt, d->metric != NULL ? d->metric : "?", strlen(text),
            wrk_stream_chunks(j->stream));
}

/* Builds the model's messages: system prompt, channel history, the message
 * answered. */
static sl_status job_messages(wrk_loop *l, job *j, int64_t deadline, wrk_history **hist,
                              wrk_msg **out, size_t *n)
{
    wrk_msg *msgs = NULL;
    size_t k = 0, nh = 0;

    if (l->cfg.context_messages > 0) {
        int64_t budget = (deadline - wrk_backend_now_ms()) / 4;
        if (budget > CONTEXT_BUDGET_MS)
            budget = CONTEXT_BUDGET_MS;
        if (budget > 0) {
            sl_status st = wrk_history_load(l->js, j->subject, j->to, j->agent,
                                            (size_t)l->cfg.context_messages, budget, hist);
            if (st != SL_OK) {
                sl_log_ctx c = job_ctx(j);
                sl_logf(SL_LOG_WARN, &c, "job %s: no channel context (%s)", j->job_id,
                        sl_status_str(st));
            }
        }
        if (*hist != NULL)
            nh = (*hist)->n;
    }
    msgs = calloc(nh + 2, sizeof(*msgs));
    if (msgs == NULL)
        return SL_ERR_NOMEM;
    if (j->work->system_prompt[0] != '\0')
        msgs[k++] = (wrk_msg){.role = "system", .content = j->work->system_prompt};
    for (size_t i = 0; i < nh; i++)
        msgs[k++] = (*hist)->msgs[i];
    msgs[k++] = (wrk_msg){.role = "user", .content = j->work->text};
    *out = msgs;
    *n = k;
    return SL_OK;
}

static void job_run(wrk_slot *s, natsMsg *msg)
{
    wrk_loop *l = s->loop;
    job j = {.slot = s, .msg = msg, .start_ms = wrk_backend_now_ms()};
    jsMsgMetaData *meta = NULL;
    wrk_history *hist = NULL;
    wrk_msg *msgs = NULL;
    size_t nmsgs = 0;
    wrk_result res;
    wrk_decision d;
    char state[32];
    sl_log_ctx c;
    bool attached = false;
    int64_t deadline;

    if (natsMsg_GetMetaData(&meta, msg) != NATS_OK) {
        sl_error("work message without JetStream metadata; ignoring it");
        goto cleanup;
    }
    j.attempt = meta->NumDelivered;
    if (!job_parse(&j)) {
        sl_counter_inc(l->m_jobs[M_FAILED]);
        natsMsg_Term(msg, NULL);
        goto cleanup;
    }
    c = job_ctx(&j);
    /* Attach before looking for cancels, so a cancel arriving from now on
     * reaches the slot and one that arrived earlier is found below. */
    slot_attach(s, &j);
    attached = true;

    if (kv_job_finished(l, &j, state, sizeof(state))) {
        sl_logf(SL_LOG_INFO, &c, "job %s already ended (%s); acking the redelivery", j.job_id,
                state);
        slot_settle(s, msg, SETTLE_ACK, 0);
        goto cleanup;
    }

    wrk_stream_params sp = {
        .subject = j.subject,
        .tenant = j.tenant,
        .session = j.session,
        .trace_id = j.env->trace_id,
        .hops = j.env->hops,
        .job_id = j.job_id,
        .reply_id = j.reply_id,
        .to = j.to,
        .agent = j.agent,
        .attempt = (uint32_t)j.attempt,
        .window_ms = l->cfg.coalesce_ms,
        .max_bytes = (size_t)l->cfg.coalesce_bytes,
    };
    if (wrk_stream_create(&j.stream, l->js, &sp) != SL_OK) {
        sl_logf(SL_LOG_ERROR, &c, "job %s: out of memory; will be retried", j.job_id);
        slot_settle(s, msg, SETTLE_NAK, FINAL_RETRY_MS);
        goto cleanup;
    }

    if (atomic_load(&s->cancel) == WRK_CANCEL_USER || cancel_requested(l, &j)) {
        d = (wrk_decision){
            .end = WRK_END_CANCELLED, .kv_state = "cancelled", .metric = "cancelled"};
        sl_logf(SL_LOG_INFO, &c, "job %s was cancelled before it started", j.job_id);
        job_finish(l, &j, &d);
        goto cleanup;
    }

    kv_put_state(l, &j, "running");
    deadline = j.start_ms + (j.work->deadline_ms > 0 ? j.work->deadline_ms : l->cfg.timeout_ms);
    if (job_messages(l, &j, deadline, &hist, &msgs, &nmsgs) != SL_OK) {
        slot_settle(s, msg, SETTLE_NAK, FINAL_RETRY_MS);
        goto cleanup;
    }
    slot_set_stream(s, j.stream);

    wrk_call call = {
        .model = j.work->model,
        .msgs = msgs,
        .nmsgs = nmsgs,
        .deadline_ms = deadline,
        .cancel = &s->cancel,
    };
    wrk_backend_call(l->backend, &call, on_token, &j, &res);
    slot_set_stream(s, NULL);
    wrk_stream_flush(j.stream);

    size_t len = 0;
    wrk_stream_text(j.stream, &len);
    d = wrk_job_decide(res.outcome, (wrk_cancel_reason)atomic_load(&s->cancel), j.truncated, len,
                       j.attempt, l->max_deliver, res.retry_after_ms);
    if (res.outcome != WRK_DONE)
        sl_logf(SL_LOG_INFO, &c, "job %s attempt %" PRIu64 ": model call %s (http %d): %s",
                j.job_id, j.attempt, wrk_outcome_str(res.outcome), res.http_status, res.error);

    if (d.end == WRK_END_RETRY || d.end == WRK_END_REQUEUE) {
        kv_put_state(l, &j, d.kv_state);
        sl_counter_inc(d.end == WRK_END_RETRY ? l->m_retries : l->m_requeued);
        sl_logf(SL_LOG_INFO, &c, "job %s attempt %" PRIu64 ": %s in %" PRId64 " ms", j.job_id,
                j.attempt, d.end == WRK_END_RETRY ? "retrying" : "handing back", d.delay_ms);
        slot_settle(s, msg, SETTLE_NAK, d.delay_ms);
        goto cleanup;
    }
    job_finish(l, &j, &d);
    {
        int64_t first = wrk_stream_first_chunk_ms(j.stream);
        if (first > 0)
            sl_hist_observe_ns(l->m_ttft, (first - j.start_ms) * NS_PER_MS);
        sl_hist_observe_ns(l->m_job, (wrk_backend_now_ms() - j.start_ms) * NS_PER_MS);
    }

cleanup:
    if (attached)
        slot_detach(s);
    wrk_stream_destroy(j.stream);
    free(msgs);
    wrk_history_destroy(hist);
    sl_envelope_free(j.env);
    jsMsgMetaData_Destroy(meta);
}

/* ---- Slot threads ------------------------------------------------------ */

static void *slot_main(void *arg)
{
    wrk_slot *s = arg;
    wrk_loop *l = s->loop;
    size_t rr = (size_t)s->idx % l->nmodels;
    int64_t last_err_log = 0;

    while (!atomic_load(&l->stopping)) {
        natsMsgList list = {0};
        jsErrCode jerr = 0;
        size_t m = rr;
        natsStatus ns;

        rr = (rr + 1) % l->nmodels;
        ns = natsSubscription_Fetch(&list, s->subs[m], 1, l->fetch_wait_ms, &jerr);
        if (ns == NATS_TIMEOUT)
            continue;
        if (ns != NATS_OK) {
            int64_t now = wrk_backend_now_ms();
            if (now - last_err_log > 5000) {
                sl_warn("fetch from wrk_%s failed: %s (jerr %d); retrying", l->models[m],
                        natsStatus_GetText(ns), (int)jerr);
                last_err_log = now;
            }
            nap(l, 250);
            continue;
        }
        /* Even while stopping, a fetched job runs: within the grace it may
         * finish, and after it slot_attach aborts it at once, so it is
         * handed back only once this worker fetches nothing any more (a
         * NAK caught by one of our own pending pulls would bounce between
         * our slots and burn the job's deliveries). */
        for (int i = 0; i < list.Count; i++)
            job_run(s, list.Msgs[i]);
        natsMsgList_Destroy(&list);
    }
    pthread_mutex_lock(&l->mu);
    s->done = true;
    pthread_cond_broadcast(&l->idle_cv);
    pthread_mutex_unlock(&l->mu);
    return NULL;
}

/* True when every slot thread has left its fetch loop or runs a job, so
 * this worker has no pull request pending. Caller holds l->mu. */
static bool fetches_over(const wrk_loop *l)
{
    for (int i = 0; i < l->nslots; i++)
        if (l->slots[i].started && !l->slots[i].done && !l->slots[i].in_job)
            return false;
    return true;
}

/* NAKs messages that reached a pull subscription after its last fetch. */
static void nak_leftovers(wrk_loop *l)
{
    for (int i = 0; i < l->nslots; i++) {
        for (size_t m = 0; l->slots[i].subs != NULL && m < l->nmodels; m++) {
            natsSubscription *sub = l->slots[i].subs[m];
            natsMsgList list = {0};
            int n = 0;
            if (sub == NULL || natsSubscription_GetPending(sub, &n, NULL) != NATS_OK || n <= 0)
                continue;
            /* With n messages queued, Fetch takes them without asking the
             * server for more. */
            if (natsSubscription_Fetch(&list, sub, n, 100, NULL) == NATS_OK) {
                for (int k = 0; k < list.Count; k++)
                    natsMsg_Nak(list.Msgs[k], NULL);
                sl_info("stopping: handed back %d job(s) that arrived after the last fetch",
                        list.Count);
            }
            natsMsgList_Destroy(&list);
        }
    }
}

/* ---- Setup ------------------------------------------------------------- */

static sl_status ensure_consumer(wrk_loop *l, const char *model, char *err, size_t errlen)
{
    char durable[SL_ID_MAX + 8];
    char filter[SL_SUBJECT_MAX];
    int64_t aw = l->ack_wait_ms * NS_PER_MS;
    int64_t backoff[WRK_MAX_DELIVER - 1];
    jsConsumerConfig cc;
    jsConsumerInfo *ci = NULL;
    jsErrCode jerr = 0;
    natsStatus ns;
    sl_status st = SL_OK;

    snprintf(durable, sizeof(durable), "wrk_%s", model);
    snprintf(filter, sizeof(filter), "sluice.work.%s.>", model);
    /* Equal back-off steps: a crashed worker's job comes back after AckWait
     * each time. Growing steps would also be added to every NAK delay by the
     * server (a NAK's delay is counted from BackOff[0]), so transient
     * retries get their growing back-off from the NAK delays instead. */
    for (int i = 0; i < WRK_MAX_DELIVER - 1; i++)
        backoff[i] = aw;
    jsConsumerConfig_Init(&cc);
    cc.Durable = durable;
    cc.FilterSubject = filter;
    cc.AckPolicy = js_AckExplicit;
    cc.AckWait = aw;
    cc.MaxDeliver = WRK_MAX_DELIVER;
    cc.BackOff = backoff;
    cc.BackOffLen = WRK_MAX_DELIVER - 1;
    cc.DeliverPolicy = js_DeliverAll;

    ns = js_GetConsumerInfo(&ci, l->js, SL_STREAM_WORK, durable, NULL, &jerr);
    if (ns == NATS_NOT_FOUND) {
        ns = js_AddConsumer(&ci, l->js, SL_STREAM_WORK, &cc, NULL, &jerr);
        if (ns == NATS_OK)
            sl_info("created consumer %s on %s", durable, SL_STREAM_WORK);
        else /* another worker may have created it in between */
            ns = js_GetConsumerInfo(&ci, l->js, SL_STREAM_WORK, durable, NULL, &jerr);
    }
    if (ns != NATS_OK) {
        set_err(err, errlen, "consumer %s: %s (jerr %d)", durable, natsStatus_GetText(ns),
                (int)jerr);
        st = SL_ERR_BUS;
        goto cleanup;
    }
    if (ci->Config->FilterSubject == NULL || strcmp(ci->Config->FilterSubject, filter) != 0 ||
        ci->Config->AckPolicy != js_AckExplicit || ci->Config->DeliverSubject != NULL) {
        set_err(err, errlen,
                "consumer %s exists with another filter, ack policy or delivery mode; fix or "
                "delete it with sluicectl",
                durable);
        st = SL_ERR_INVAL;
        goto cleanup;
    }
    if (ci->Config->AckWait != aw || ci->Config->MaxDeliver != WRK_MAX_DELIVER ||
        ci->Config->BackOffLen != cc.BackOffLen) {
        jsConsumerInfo *up = NULL;
        ns = js_UpdateConsumer(&up, l->js, SL_STREAM_WORK, &cc, NULL, &jerr);
        if (ns == NATS_OK) {
            sl_warn("consumer %s had AckWait %" PRId64 " ms / MaxDeliver %" PRId64
                    "; updated to %" PRId64 " ms / %d",
                    durable, ci->Config->AckWait / NS_PER_MS, ci->Config->MaxDeliver,
                    l->ack_wait_ms, WRK_MAX_DELIVER);
            jsConsumerInfo_Destroy(ci);
            ci = up;
        } else {
            sl_warn("consumer %s has other settings and could not be updated (%s); using it",
                    durable, natsStatus_GetText(ns));
        }
    }
    /* Every model's consumer is made by this code, so they agree. */
    l->max_deliver = ci->Config->MaxDeliver;
cleanup:
    jsConsumerInfo_Destroy(ci);
    return st;
}

static sl_status bind_subs(wrk_loop *l, wrk_slot *s, char *err, size_t errlen)
{
    s->subs = calloc(l->nmodels, sizeof(*s->subs));
    if (s->subs == NULL)
        return SL_ERR_NOMEM;
    for (size_t m = 0; m < l->nmodels; m++) {
        char durable[SL_ID_MAX + 8];
        char filter[SL_SUBJECT_MAX];
        jsSubOptions so;
        jsErrCode jerr = 0;
        natsStatus ns;

        snprintf(durable, sizeof(durable), "wrk_%s", l->models[m]);
        snprintf(filter, sizeof(filter), "sluice.work.%s.>", l->models[m]);
        jsSubOptions_Init(&so);
        so.Stream = SL_STREAM_WORK;
        so.Consumer = durable;
        ns = js_PullSubscribe(&s->subs[m], l->js, filter, durable, NULL, &so, &jerr);
        if (ns != NATS_OK) {
            set_err(err, errlen, "pull subscription to %s: %s (jerr %d)", durable,
                    natsStatus_GetText(ns), (int)jerr);
            return SL_ERR_BUS;
        }
    }
    return SL_OK;
}

static void on_pub_error(jsCtx *js, jsPubAckErr *pae, void *closure)
{
    (void)js;
    (void)closure;
    /* The final reply carries the whole text, so a lost token chunk only
     * costs the client some streaming; count and log it. */
    sl_counter_inc(sl_counter_get("sluice_wrk_publish_errors_total", NULL,
                                  "token, reply or agent-message publishes that failed"));
    sl_debug("token publish not acknowledged: %s (jerr %d)", natsStatus_GetText(pae->Err),
             (int)pae->ErrCode);
}

static void init_metrics(wrk_loop *l)
{
    for (int i = 0; i < 5; i++) {
        char labels[64];
        snprintf(labels, sizeof(labels), "outcome=\"%s\"", metric_names[i]);
        l->m_jobs[i] = sl_counter_get("sluice_wrk_jobs_total", labels,
                                      "jobs ended, by outcome (failed: the reply could not be "
                                      "stored or the job was unreadable)");
    }
    l->m_tokens = sl_counter_get("sluice_wrk_tokens_total", NULL, "tokens received from models");
    l->m_retries = sl_counter_get("sluice_wrk_retries_total", NULL,
                                  "transient model failures handed back with a NAK delay");
    l->m_requeued =
        sl_counter_get("sluice_wrk_requeued_total", NULL, "running jobs handed back at shutdown");
    l->m_cancels = sl_counter_get("sluice_wrk_cancels_total", NULL,
                                  "cancel requests received on sluice.ctl.cancel");
    l->m_ttft = sl_hist_get("sluice_wrk_ttft_seconds", NULL,
                            "time from job start to the first token event published");
    l->m_job = sl_hist_get("sluice_wrk_job_seconds", NULL, "time from job start to its end");
    l->m_inflight = sl_gauge_get("sluice_wrk_inflight", NULL, "jobs running in this worker");
}

static sl_status start_thread(pthread_t *th, void *(*fn)(void *), void *arg)
{
    sigset_t all, old;
    int rc;

    /* Threads started here never take signals: main handles them. */
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    rc = pthread_create(th, NULL, fn, arg);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return rc == 0 ? SL_OK : SL_ERR_INTERNAL;
}

sl_status wrk_loop_create(wrk_loop **out, sl_bus *bus, wrk_backend *backend,
                          const wrk_loop_cfg *cfg, char *err, size_t errlen)
{
    wrk_loop *l = NULL;
    jsOptions jo;
    pthread_condattr_t ca;
    natsStatus ns;
    sl_status st = SL_OK;
    char cancel_subj[SL_SUBJECT_MAX];

    if (out == NULL || bus == NULL || backend == NULL || cfg == NULL || cfg->models == NULL ||
        cfg->nmodels == 0 || cfg->concurrency < 1 || cfg->concurrency > WRK_CONCURRENCY_MAX ||
        cfg->timeout_ms <= 0 || cfg->ack_grace_ms < 0 || cfg->coalesce_ms < 0 ||
        cfg->coalesce_bytes < 1 || cfg->context_messages < 0) {
        set_err(err, errlen, "wrk_loop_create: bad configuration");
        return SL_ERR_INVAL;
    }
    for (size_t m = 0; m < cfg->nmodels; m++) {
        if (!sl_id_valid(cfg->models[m])) {
            set_err(err, errlen, "SLUICE_WORKER_MODELS: \"%.64s\" is not a valid model id",
                    cfg->models[m] != NULL ? cfg->models[m] : "");
            return SL_ERR_INVAL;
        }
    }
    l = calloc(1, sizeof(*l));
    if (l == NULL)
        return SL_ERR_NOMEM;
    pthread_mutex_init(&l->mu, NULL);
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&l->tick_cv, &ca);
    pthread_cond_init(&l->idle_cv, &ca);
    pthread_condattr_destroy(&ca);
    l->bus = bus;
    l->nc = sl_bus_nc(bus);
    l->backend = backend;
    l->cfg = *cfg;
    l->stopped = false;
    l->ack_wait_ms = cfg->timeout_ms + cfg->ack_grace_ms;
    l->max_deliver = WRK_MAX_DELIVER;
    l->fetch_wait_ms = FETCH_WAIT_MS / (int64_t)cfg->nmodels;
    if (l->fetch_wait_ms < FETCH_WAIT_MIN_MS)
        l->fetch_wait_ms = FETCH_WAIT_MIN_MS;
    init_metrics(l);

    l->models = calloc(cfg->nmodels, sizeof(*l->models));
    l->worker_id = strdup(cfg->worker_id != NULL ? cfg->worker_id : "worker");
    if (l->models == NULL || l->worker_id == NULL) {
        st = SL_ERR_NOMEM;
        goto cleanup;
    }
    l->nmodels = cfg->nmodels;
    for (size_t m = 0; m < cfg->nmodels; m++) {
        l->models[m] = strdup(cfg->models[m]);
        if (l->models[m] == NULL) {
            st = SL_ERR_NOMEM;
            goto cleanup;
        }
    }
    l->cfg.models = (const char *const *)l->models;
    l->cfg.worker_id = l->worker_id;

    jsOptions_Init(&jo);
    jo.PublishAsync.MaxPending = 4096;
    jo.PublishAsync.ErrHandler = on_pub_error;
    jo.PublishAsync.ErrHandlerClosure = l;
    ns = natsConnection_JetStream(&l->js, l->nc, &jo);
    if (ns != NATS_OK) {
        set_err(err, errlen, "jetstream context: %s", natsStatus_GetText(ns));
        st = SL_ERR_BUS;
        goto cleanup;
    }
    st = sl_bus_kv(bus, SL_KV_INFLIGHT, &l->kv);
    if (st != SL_OK) {
        set_err(err, errlen, "bucket %s: %s", SL_KV_INFLIGHT, sl_status_str(st));
        st = SL_ERR_BUS;
        goto cleanup;
    }
    for (size_t m = 0; m < l->nmodels; m++) {
        st = ensure_consumer(l, l->models[m], err, errlen);
        if (st != SL_OK)
            goto cleanup;
    }

    l->nslots = cfg->concurrency;
    l->slots = calloc((size_t)l->nslots, sizeof(*l->slots));
    if (l->slots == NULL) {
        st = SL_ERR_NOMEM;
        goto cleanup;
    }
    for (int i = 0; i < l->nslots; i++) {
        wrk_slot *s = &l->slots[i];
        s->loop = l;
        s->idx = i;
        pthread_mutex_init(&s->mu, NULL);
        atomic_init(&s->cancel, WRK_CANCEL_NONE);
    }
    for (int i = 0; i < l->nslots; i++) {
        st = bind_subs(l, &l->slots[i], err, errlen);
        if (st != SL_OK)
            goto cleanup;
    }

    snprintf(cancel_subj, sizeof(cancel_subj), "sluice.ctl.cancel.*");
    ns = natsConnection_Subscribe(&l->cancel_sub, l->nc, cancel_subj, on_cancel, l);
    if (ns != NATS_OK) {
        set_err(err, errlen, "subscribe %s: %s", cancel_subj, natsStatus_GetText(ns));
        st = SL_ERR_BUS;
        goto cleanup;
    }
    /* Make sure the server has the cancel interest before jobs run. */
    natsConnection_FlushTimeout(l->nc, 2000);

    st = start_thread(&l->ticker, ticker_main, l);
    if (st != SL_OK) {
        set_err(err, errlen, "cannot start the timer thread");
        goto cleanup;
    }
    l->ticker_started = true;
    for (int i = 0; i < l->nslots; i++) {
        st = start_thread(&l->slots[i].th, slot_main, &l->slots[i]);
        if (st != SL_OK) {
            set_err(err, errlen, "cannot start job thread %d", i);
            goto cleanup;
        }
        l->slots[i].started = true;
    }
    atomic_store(&l->running, 1);
    sl_info("worker %s: %d job slots on %zu model(s), AckWait %" PRId64 " ms, MaxDeliver %" PRId64,
            l->worker_id, l->nslots, l->nmodels, l->ack_wait_ms, l->max_deliver);
    *out = l;
    l = NULL;
cleanup:
    wrk_loop_destroy(l);
    return st;
}

bool wrk_loop_ready(const wrk_loop *l)
{
    return l != NULL && atomic_load(&l->running) && !atomic_load(&l->stopping);
}

void wrk_loop_stop(wrk_loop *l, int64_t grace_ms)
{
    int64_t until;

    if (l == NULL || l->stopped)
        return;
    l->stopped = true;
    atomic_store(&l->stopping, 1);
    until = wrk_backend_now_ms() + (grace_ms > 0 ? grace_ms : 0);

    pthread_mutex_lock(&l->mu);
    if (l->busy > 0)
        sl_info("stopping: waiting up to %" PRId64 " ms for %d running job(s)", grace_ms, l->busy);
    while (l->busy > 0 && wrk_backend_now_ms() < until) {
        struct timespec ts = mono_abs(until);
        pthread_cond_timedwait(&l->idle_cv, &l->mu, &ts);
    }
    int left = l->busy;
    /* Before handing anything back, let the idle slots' pending fetches
     * end (at most one fetch wait), so a NAKed job goes to another worker. */
    if (left > 0) {
        int64_t fetch_until = wrk_backend_now_ms() + l->fetch_wait_ms + 1000;
        while (l->slots != NULL && !fetches_over(l) && wrk_backend_now_ms() < fetch_until) {
            struct timespec ts = mono_abs(fetch_until);
            pthread_cond_timedwait(&l->idle_cv, &l->mu, &ts);
        }
    }
    pthread_mutex_unlock(&l->mu);
    if (left > 0)
        sl_warn("stopping: grace over, handing back %d running job(s)", left);

    /* Abort what still runs; each job NAKs itself (or ends on its last
     * delivery). A job that starts from now on was fetched before the stop
     * and is aborted at once too (slot_attach reads abort_all under the
     * slot lock, so no job slips between the two). */
    atomic_store(&l->abort_all, 1);
    for (int i = 0; l->slots != NULL && i < l->nslots; i++) {
        int expected = WRK_CANCEL_NONE;
        wrk_slot *s = &l->slots[i];
        pthread_mutex_lock(&s->mu);
        if (s->busy)
            atomic_compare_exchange_strong(&s->cancel, &expected, WRK_CANCEL_SHUTDOWN);
        pthread_mutex_unlock(&s->mu);
    }
    for (int i = 0; l->slots != NULL && i < l->nslots; i++) {
        if (l->slots[i].started) {
            pthread_join(l->slots[i].th, NULL);
            l->slots[i].started = false;
        }
    }
    if (l->slots != NULL)
        nak_leftovers(l);
    if (l->ticker_started) {
        pthread_mutex_lock(&l->mu);
        atomic_store(&l->ticker_stop, 1);
        pthread_cond_signal(&l->tick_cv);
        pthread_mutex_unlock(&l->mu);
        pthread_join(l->ticker, NULL);
        l->ticker_started = false;
    }
    if (l->cancel_sub != NULL) {
        /* Wait for a running cancel callback: it reads the slots. */
        if (natsSubscription_Drain(l->cancel_sub) == NATS_OK)
            natsSubscription_WaitForDrainCompletion(l->cancel_sub, 2000);
        else
            natsSubscription_Unsubscribe(l->cancel_sub);
    }
    if (l->js != NULL) {
        jsPubOptions po;
        jsPubOptions_Init(&po);
        po.MaxWait = 2000;
        js_PublishAsyncComplete(l->js, &po);
    }
    atomic_store(&l->running, 0);
}

void wrk_loop_destroy(wrk_loop *l)
{
    if (l == NULL)
        return;
    /* A loop that failed half-way through create is stopped the same way. */
    atomic_store(&l->stopping, 1);
    wrk_loop_stop(l, 0);
    for (int i = 0; l->slots != NULL && i < l->nslots; i++) {
        wrk_slot *s = &l->slots[i];
        for (size_t m = 0; s->subs != NULL && m < l->nmodels; m++)
            natsSubscription_Destroy(s->subs[m]);
        free(s->subs);
        pthread_mutex_destroy(&s->mu);
    }
    free(l->slots);
    natsSubscription_Destroy(l->cancel_sub);
    kvStore_Destroy(l->kv);
    jsCtx_Destroy(l->js);
    for (size_t m = 0; l->models != NULL && m < l->nmodels; m++)
        free(l->models[m]);
    free(l->models);
    free(l->worker_id);
    pthread_cond_destroy(&l->tick_cv);
    pthread_cond_destroy(&l->idle_cv);
    pthread_mutex_destroy(&l->mu);
    free(l);
}
