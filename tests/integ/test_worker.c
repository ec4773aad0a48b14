/* Integration tests of sluice-worker: a real nats-server, real worker
 * processes, and, for the openai backend, the fake OpenAI-compatible server
 * of the harness. Work requests are published to SLUICE_WORK directly with
 * cnats (no orchestrator), and OUT is read with an ordered consumer, so
 * every assertion is about what the worker wrote to the streams. Waits are
 * on conditions with bounds; deadlines come from the environment. */
#include <check.h>
#include <cJSON.h>
#include <inttypes.h>
#include <nats/nats.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "fake_openai.h"
#include "hx.h"
#include "sl_codec.h"
#include "sl_streams.h"
#include "sl_subject.h"
#include "sl_time.h"

#define MAX_EVENTS 8192
#define MODEL      "default"
#define AGENT      "helper"
#define FALLBACK   "The helper is unavailable right now."

/* ---- Test context: a stack, a NATS connection and an OUT reader -------- */

typedef struct ev {
    int kind; /* SLUICE__ENVELOPE__BODY_TOKEN or _REPLY (others are skipped) */
    char reply[80];
    uint32_t attempt, index;
    char *text;
    bool degraded, partial, cancelled;
    uint64_t seq;
    int64_t at_ms; /* when the test read it */
    char subject[128];
} ev;

typedef struct tctx {
    hx_stack *stack;
    natsConnection *nc;
    jsCtx *js;
    kvStore *kv;
    natsSubscription *out;
    char tenant[40];
    ev *evs;
    int n;
} tctx;

static void t_begin(tctx *t, const hx_stack_cfg *cfg)
{
    char subj[128];
    jsSubOptions so;
    jsErrCode jerr = 0;
    char sid[SL_SESSION_ID_LEN + 1];

    memset(t, 0, sizeof(*t));
    sl_session_id_new(sid);
    snprintf(t->tenant, sizeof(t->tenant), "t%.12s", sid);
    t->evs = calloc(MAX_EVENTS, sizeof(*t->evs));
    ck_assert_ptr_nonnull(t->evs);
    HX_OK(NULL, hx_stack_start(&t->stack, cfg));
    ck_assert_int_eq(natsConnection_ConnectTo(&t->nc, hx_stack_nats_url(t->stack)), NATS_OK);
    ck_assert_int_eq(natsConnection_JetStream(&t->js, t->nc, NULL), NATS_OK);
    ck_assert_int_eq(js_KeyValue(&t->kv, t->js, "sluice_inflight"), NATS_OK);
    snprintf(subj, sizeof(subj), "sluice.out.%s.>", t->tenant);
    jsSubOptions_Init(&so);
    so.Stream = "SLUICE_OUT";
    so.Ordered = true;
    so.Config.DeliverPolicy = js_DeliverAll;
    ck_assert_int_eq(js_SubscribeSync(&t->out, t->js, subj, NULL, &so, &jerr), NATS_OK);
}

static void t_end(tctx *t, bool expect_clean_exit)
{
    bool clean = true;

    if (expect_clean_exit) {
        hx_stack_stop_all_gracefully(t->stack, &clean);
    }
    natsSubscription_Unsubscribe(t->out);
    natsSubscription_Destroy(t->out);
    kvStore_Destroy(t->kv);
    jsCtx_Destroy(t->js);
    natsConnection_Destroy(t->nc);
    hx_stack_destroy(t->stack);
    for (int i = 0; i < t->n; i++)
        free(t->evs[i].text);
    free(t->evs);
    nats_CloseAndWait(2000);
    ck_assert_msg(clean, "a worker did not exit cleanly on SIGTERM: %s", hx_error());
}

/* Reads OUT events for up to ms (returns early when no more arrive within
 * idle_ms, if idle_ms > 0). */
static void pump(tctx *t, int ms, int idle_ms)
{
    int64_t until = hx_now_ms() + ms;

    while (hx_now_ms() < until && t->n < MAX_EVENTS) {
        natsMsg *m = NULL;
        Sluice__Envelope *e = NULL;
        jsMsgMetaData *meta = NULL;
        int64_t left = until - hx_now_ms();
        if (idle_ms > 0 && left > idle_ms)
            left = idle_ms;
        if (left <= 0)
            break;
        natsStatus s = natsSubscription_NextMsg(&m, t->out, left);
        if (s == NATS_TIMEOUT && idle_ms > 0)
            break;
        if (s != NATS_OK)
            continue;
        if (sl_envelope_decode(natsMsg_GetData(m), (size_t)natsMsg_GetDataLength(m), &e) == SL_OK) {
            ev *v = &t->evs[t->n];
            memset(v, 0, sizeof(*v));
            v->at_ms = hx_now_ms();
            snprintf(v->subject, sizeof(v->subject), "%s", natsMsg_GetSubject(m));
            if (natsMsg_GetMetaData(&meta, m) == NATS_OK) {
                v->seq = meta->Sequence.Stream;
                jsMsgMetaData_Destroy(meta);
            }
            if (e->body_case == SLUICE__ENVELOPE__BODY_TOKEN) {
                v->kind = SLUICE__ENVELOPE__BODY_TOKEN;
                snprintf(v->reply, sizeof(v->reply), "%s", e->token->reply_id);
                v->attempt = e->token->attempt;
                v->index = e->token->index;
                v->text = strdup(e->token->text);
                t->n++;
            } else if (e->body_case == SLUICE__ENVELOPE__BODY_REPLY) {
                v->kind = SLUICE__ENVELOPE__BODY_REPLY;
                snprintf(v->reply, sizeof(v->reply), "%s", e->reply->reply_id);
                v->attempt = e->reply->attempt;
                v->text = strdup(e->reply->text);
                v->degraded = e->reply->degraded;
                v->partial = e->reply->partial;
                v->cancelled = e->reply->cancelled;
                t->n++;
            }
            sl_envelope_free(e);
        }
        natsMsg_Destroy(m);
    }
}

/* The index of the first final reply for reply, or -1. */
static int find_final(const tctx *t, const char *reply)
{
    for (int i = 0; i < t->n; i++)
        if (t->evs[i].kind == SLUICE__ENVELOPE__BODY_REPLY && strcmp(t->evs[i].reply, reply) == 0)
            return i;
    return -1;
}

static int count_finals(const tctx *t, const char *reply)
{
    int c = 0;
    for (int i = 0; i < t->n; i++)
        c += t->evs[i].kind == SLUICE__ENVELOPE__BODY_REPLY && strcmp(t->evs[i].reply, reply) == 0;
    return c;
}

/* Pumps until the final reply for reply arrives; returns its index or -1. */
static int wait_final(tctx *t, const char *reply, int timeout_ms)
{
    int64_t until = hx_now_ms() + timeout_ms;
    int i;

    while ((i = find_final(t, reply)) < 0 && hx_now_ms() < until)
        pump(t, 50, 0);
    return i;
}

/* Pumps until a token of reply with the given attempt arrives. */
static bool wait_token(tctx *t, const char *reply, uint32_t attempt, int timeout_ms)
{
    int64_t until = hx_now_ms() + timeout_ms;

    do {
        for (int i = 0; i < t->n; i++)
            if (t->evs[i].kind == SLUICE__ENVELOPE__BODY_TOKEN &&
                strcmp(t->evs[i].reply, reply) == 0 && t->evs[i].attempt == attempt)
                return true;
        pump(t, 50, 0);
    } while (hx_now_ms() < until);
    return false;
}

/* Concatenates the tokens of one attempt (malloc'd) after checking that
 * their indexes run 0, 1, 2, ... in stream order and that they all come
 * before the final reply (final_seq, 0 to skip). *count gets their number. */
static char *tokens_of(const tctx *t, const char *reply, uint32_t attempt, uint64_t final_seq,
                       int *count)
{
    size_t len = 0;
    char *buf = calloc(1, 1);
    uint32_t next = 0;

    for (int i = 0; i < t->n; i++) {
        const ev *v = &t->evs[i];
        if (v->kind != SLUICE__ENVELOPE__BODY_TOKEN || strcmp(v->reply, reply) != 0 ||
            v->attempt != attempt)
            continue;
        ck_assert_msg(v->index == next, "token index %u where %u was expected", v->index, next);
        next++;
        if (final_seq > 0)
            ck_assert_msg(v->seq < final_seq, "a token of attempt %u came after the final",
                          attempt);
        size_t l = strlen(v->text);
        buf = realloc(buf, len + l + 1);
        memcpy(buf + len, v->text, l + 1);
        len += l;
    }
    *count = (int)next;
    return buf;
}

/* ---- Publishing jobs and cancels ---------------------------------------- */

typedef struct job_spec {
    char session[SL_SESSION_ID_LEN + 1];
    char to[32];
    char job[SL_EVENT_ID_LEN + 8];
    const char *text;
    const char *room; /* NULL or "": the session channel */
    const char *system_prompt;
} job_spec;

static void job_init(job_spec *j, const char *text, const char *room)
{
    char eid[SL_EVENT_ID_LEN + 1];
    static int counter;

    memset(j, 0, sizeof(*j));
    sl_session_id_new(j->session);
    sl_event_id_new(eid);
    snprintf(j->job, sizeof(j->job), "%s-0", eid);
    snprintf(j->to, sizeof(j->to), "c-%d", ++counter);
    j->text = text;
    j->room = room;
}

/* Publishes j's work request; returns the publish's status. */
static natsStatus publish_work_status(tctx *t, const job_spec *j)
{
    Sluice__Envelope e = SLUICE__ENVELOPE__INIT;
    Sluice__WorkRequest w = SLUICE__WORK_REQUEST__INIT;
    char eid[SL_EVENT_ID_LEN + 1];
    char subj[SL_SUBJECT_MAX];
    char msg_id[128];
    uint8_t *buf = NULL;
    size_t len = 0;
    jsPubOptions po;
    jsPubAck *pa = NULL;
    jsErrCode jerr = 0;
    natsStatus ns;

    sl_event_id_new(eid);
    e.event_id = eid;
    e.tenant = t->tenant;
    e.session = (char *)j->session;
    e.client_id = (char *)j->to;
    e.message_id = (char *)j->to;
    e.ts_unix_ns = sl_now_ns();
    e.trace_id = "trace-1";
    e.hops = 0;
    w.job_id = (char *)j->job;
    w.agent = AGENT;
    w.model = MODEL;
    w.system_prompt = (char *)(j->system_prompt ? j->system_prompt : "You are terse.");
    w.fallback = FALLBACK;
    w.text = (char *)j->text;
    w.user = "u1";
    w.room = (char *)(j->room ? j->room : "");
    w.to = (char *)j->to;
    w.reply_id = (char *)j->job;
    e.body_case = SLUICE__ENVELOPE__BODY_WORK;
    e.work = &w;
    ck_assert_int_eq(sl_envelope_encode(&e, &buf, &len), SL_OK);
    ck_assert_int_eq(sl_subject_work(subj, sizeof(subj), MODEL, t->tenant), SL_OK);
    snprintf(msg_id, sizeof(msg_id), "w:%s", j->job);
    jsPubOptions_Init(&po);
    po.MsgId = msg_id;
    ns = js_Publish(&pa, t->js, subj, buf, (int)len, &po, &jerr);
    jsPubAck_Destroy(pa);
    free(buf);
    return ns;
}

static void publish_work(tctx *t, const job_spec *j)
{
    ck_assert_int_eq(publish_work_status(t, j), NATS_OK);
}

/* A user message on OUT, as the orchestrator posts it (for context). */
static void publish_out_message(tctx *t, const job_spec *j, const char *client_id, const char *text)
{
    Sluice__Envelope e = SLUICE__ENVELOPE__INIT;
    Sluice__ClientMessage cm = SLUICE__CLIENT_MESSAGE__INIT;
    char eid[SL_EVENT_ID_LEN + 1];
    char subj[SL_SUBJECT_MAX];
    uint8_t *buf = NULL;
    size_t len = 0;
    jsPubAck *pa = NULL;

    sl_event_id_new(eid);
    e.event_id = eid;
    e.tenant = t->tenant;
    e.session = (char *)j->session;
    e.client_id = (char *)client_id;
    e.message_id = (char *)client_id;
    cm.text = (char *)text;
    cm.user = "u1";
    cm.room = (char *)(j->room ? j->room : "");
    e.body_case = SLUICE__ENVELOPE__BODY_MESSAGE;
    e.message = &cm;
    ck_assert_int_eq(sl_envelope_encode(&e, &buf, &len), SL_OK);
    ck_assert_int_eq(sl_subject_chan(subj, sizeof(subj), "sluice.out", t->tenant,
                                     j->room != NULL && j->room[0] != '\0',
                                     j->room != NULL && j->room[0] != '\0' ? j->room : j->session),
                     SL_OK);
    ck_assert_int_eq(js_Publish(&pa, t->js, subj, buf, (int)len, NULL, NULL), NATS_OK);
    jsPubAck_Destroy(pa);
    free(buf);
}

static void publish_cancel(tctx *t, const job_spec *j)
{
    Sluice__Envelope e = SLUICE__ENVELOPE__INIT;
    Sluice__Cancel c = SLUICE__CANCEL__INIT;
    char eid[SL_EVENT_ID_LEN + 1];
    char subj[SL_SUBJECT_MAX];
    uint8_t *buf = NULL;
    size_t len = 0;

    sl_event_id_new(eid);
    e.event_id = eid;
    e.tenant = t->tenant;
    e.session = (char *)j->session;
    e.message_id = (char *)j->to;
    c.message_id = (char *)j->to;
    c.user = "u1";
    e.body_case = SLUICE__ENVELOPE__BODY_CANCEL;
    e.cancel = &c;
    ck_assert_int_eq(sl_envelope_encode(&e, &buf, &len), SL_OK);
    ck_assert_int_eq(sl_subject_cancel(subj, sizeof(subj), t->tenant), SL_OK);
    ck_assert_int_eq(natsConnection_Publish(t->nc, subj, buf, (int)len), NATS_OK);
    ck_assert_int_eq(natsConnection_FlushTimeout(t->nc, 2000), NATS_OK);
    free(buf);
}

/* ---- Stream and KV probes ----------------------------------------------- */

static bool work_stream_empty(void *ud)
{
    tctx *t = ud;
    jsStreamInfo *si = NULL;
    bool empty = false;

    if (js_GetStreamInfo(&si, t->js, "SLUICE_WORK", NULL, NULL) == NATS_OK)
        empty = si->State.Msgs == 0;
    jsStreamInfo_Destroy(si);
    return empty;
}

/* The in-flight JSON of a job (caller frees), or NULL. */
static cJSON *inflight(tctx *t, const job_spec *j)
{
    char key[256];
    kvEntry *e = NULL;
    cJSON *o = NULL;

    snprintf(key, sizeof(key), "%s.%s", t->tenant, j->job);
    if (kvStore_Get(&e, t->kv, key) == NATS_OK)
        o = cJSON_ParseWithLength(kvEntry_Value(e), (size_t)kvEntry_ValueLen(e));
    kvEntry_Destroy(e);
    return o;
}

static bool inflight_state_is(tctx *t, const job_spec *j, const char *state)
{
    cJSON *o = inflight(t, j);
    const cJSON *s = cJSON_GetObjectItemCaseSensitive(o, "state");
    bool yes = cJSON_IsString(s) && strcmp(s->valuestring, state) == 0;
    cJSON_Delete(o);
    return yes;
}

typedef struct state_wait {
    tctx *t;
    const job_spec *j;
    const char *state;
} state_wait;

static bool state_reached(void *ud)
{
    state_wait *w = ud;
    return inflight_state_is(w->t, w->j, w->state);
}

/* Waits until the job's in-flight state is state (it is written just after
 * the final reply, before the ack). */
static bool wait_state(tctx *t, const job_spec *j, const char *state)
{
    state_wait w = {t, j, state};
    return hx_wait_until(state_reached, &w, 5000);
}

/* The agent message a worker published on IN for a reply, or NULL. */
static Sluice__Envelope *agent_message(tctx *t)
{
    char subj[SL_SUBJECT_MAX];
    natsMsg *m = NULL;
    Sluice__Envelope *e = NULL;

    snprintf(subj, sizeof(subj), "sluice.in.%s.a-%s", t->tenant, AGENT);
    if (js_GetLastMsg(&m, t->js, "SLUICE_IN", subj, NULL, NULL) != NATS_OK)
        return NULL;
    if (sl_envelope_decode(natsMsg_GetData(m), (size_t)natsMsg_GetDataLength(m), &e) != SL_OK)
        e = NULL;
    natsMsg_Destroy(m);
    return e;
}

static const char *const LONG_TEXT =
    "one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen twenty twentyone twentytwo twentythree "
    "twentyfour twentyfive twentysix twentyseven twentyeight twentynine thirty";

/* ---- Echo: streaming, coalescing, one final, ack, agent message -------- */

START_TEST(test_echo_streams_and_ends_once)
{
    /* No first window: a slow machine may run the first tokens late and
     * together, and every job here must stream. */
    const char *env[] = {"SLUICE_ECHO_TOKEN_DELAY_MS=20", "SLUICE_MODEL_TIMEOUT_MS=5000",
                         "SLUICE_WORKER_ACK_GRACE_MS=1000", "SLUICE_COALESCE_FIRST_MS=0", NULL};
    hx_stack_cfg cfg = {.workers = 1};
    tctx t;
    job_spec room_job, sess_job;
    const char *text = "  the quick brown fox jumps over the lazy dog, twice.";
    int fi, ntok;
    char *joined;

    cfg.tier_env[HX_WORKER] = env;
    t_begin(&t, &cfg);

    /* A room reply. */
    job_init(&room_job, text, "lobby");
    publish_work(&t, &room_job);
    fi = wait_final(&t, room_job.job, 10000);
    HX_ASSERT_MSG(t.stack, fi >= 0, "no final reply within 10 s");
    joined = tokens_of(&t, room_job.job, 1, t.evs[fi].seq, &ntok);
    ck_assert_int_ge(ntok, 2);
    ck_assert_str_eq(joined, text);
    free(joined);
    ck_assert_str_eq(t.evs[fi].text, text);
    ck_assert_int_eq(t.evs[fi].attempt, 1);
    ck_assert(!t.evs[fi].degraded && !t.evs[fi].partial && !t.evs[fi].cancelled);
    {
        char want[128];
        snprintf(want, sizeof(want), "sluice.out.%s.r.lobby", t.tenant);
        ck_assert_str_eq(t.evs[fi].subject, want);
    }
    /* The work message is acked (gone from the work queue) and the job is
     * recorded as done. */
    HX_ASSERT(t.stack, hx_wait_until(work_stream_empty, &t, 5000));
    HX_ASSERT(t.stack, wait_state(&t, &room_job, "done"));
    /* The answer went back to IN as an agent message, one hop further. */
    {
        Sluice__Envelope *am = agent_message(&t);
        ck_assert_ptr_nonnull(am);
        ck_assert_int_eq(am->body_case, SLUICE__ENVELOPE__BODY_MESSAGE);
        ck_assert_str_eq(am->message->text, text);
        ck_assert_str_eq(am->message->agent, AGENT);
        ck_assert_str_eq(am->message->room, "lobby");
        ck_assert_str_eq(am->message_id, room_job.job);
        ck_assert_str_eq(am->session, room_job.session);
        ck_assert_int_eq((int)am->hops, 1);
        sl_envelope_free(am);
    }

    /* A private reply goes to the session channel. */
    job_init(&sess_job, "hello there", NULL);
    publish_work(&t, &sess_job);
    fi = wait_final(&t, sess_job.job, 10000);
    HX_ASSERT_MSG(t.stack, fi >= 0, "no final reply within 10 s");
    {
        char want[128];
        snprintf(want, sizeof(want), "sluice.out.%s.s.%s", t.tenant, sess_job.session);
        ck_assert_str_eq(t.evs[fi].subject, want);
        ck_assert_str_eq(t.evs[fi].text, "hello there");
    }

    /* Exactly one final each, even after a while. */
    pump(&t, 500, 0);
    ck_assert_int_eq(count_finals(&t, room_job.job), 1);
    ck_assert_int_eq(count_finals(&t, sess_job.job), 1);

    /* The job metrics. */
    {
        char *body = NULL;
        int port = hx_stack_admin_port(t.stack, HX_WORKER, 0);
        ck_assert_int_eq(hx_http_get(NULL, port, "/metrics", 5000, &body), 200);
        const char *want[] = {"sluice_wrk_jobs_total{outcome=\"ok\"} 2\n",
                              "sluice_wrk_jobs_total{outcome=\"failed\"} 0\n",
                              "sluice_wrk_tokens_total 12\n",
                              "sluice_wrk_ttft_seconds_count 2\n",
                              "sluice_wrk_job_seconds_count 2\n",
                              "sluice_wrk_inflight 0\n"};
        for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++)
            ck_assert_msg(strstr(body, want[i]) != NULL, "no %s in /metrics:\n%.3000s", want[i],
                          strstr(body, "sluice_wrk_") != NULL ? strstr(body, "sluice_wrk_") : body);
        free(body);
    }
    t_end(&t, true);
}
END_TEST

START_TEST(test_echo_coalesces_fast_tokens)
{
    /* No first window: the size bound is what is tested. */
    const char *env[] = {"SLUICE_ECHO_TOKEN_DELAY_MS=0", "SLUICE_MODEL_TIMEOUT_MS=5000",
                         "SLUICE_COALESCE_FIRST_MS=0", NULL};
    hx_stack_cfg cfg = {.workers = 1};
    tctx t;
    job_spec j;
    char text[4096] = "";
    int fi, ntok, words = 200;
    char *joined;

    for (int i = 0; i < words; i++) {
        char w[16];
        snprintf(w, sizeof(w), "w%03d ", i);
        strcat(text, w);
    }
    cfg.tier_env[HX_WORKER] = env;
    t_begin(&t, &cfg);
    job_init(&j, text, "lobby");
    publish_work(&t, &j);
    fi = wait_final(&t, j.job, 10000);
    HX_ASSERT_MSG(t.stack, fi >= 0, "no final reply within 10 s");
    joined = tokens_of(&t, j.job, 1, t.evs[fi].seq, &ntok);
    ck_assert_str_eq(joined, text);
    free(joined);
    /* 200 tokens of 5 bytes arriving back to back: with a 64-byte bound
     * about 16 chunks; one event per token would be 200. */
    ck_assert_msg(ntok >= 2 && ntok <= words / 4, "%d token events for %d tokens", ntok, words);
    t_end(&t, true);
}
END_TEST

/* An answer the model gives at once (within the first window, whatever
 * its size) comes as its final reply alone: no token events. A first
 * window longer than any scheduling delay of the test machine makes the
 * outcome certain. */
START_TEST(test_echo_at_once_is_final_alone)
{
    const char *env[] = {"SLUICE_ECHO_TOKEN_DELAY_MS=0", "SLUICE_MODEL_TIMEOUT_MS=5000",
                         "SLUICE_COALESCE_FIRST_MS=3000", NULL};
    hx_stack_cfg cfg = {.workers = 1};
    tctx t;
    job_spec j;
    char text[1024] = "";
    int fi, ntok = -1;
    char *joined;

    for (int i = 0; i < 100; i++) {
        char w[16];
        snprintf(w, sizeof(w), "w%03d ", i);
        strcat(text, w);
    }
    cfg.tier_env[HX_WORKER] = env;
    t_begin(&t, &cfg);
    job_init(&j, text, "lobby");
    publish_work(&t, &j);
    fi = wait_final(&t, j.job, 10000);
    HX_ASSERT_MSG(t.stack, fi >= 0, "no final reply within 10 s");
    ck_assert_str_eq(t.evs[fi].text, text);
    joined = tokens_of(&t, j.job, 1, t.evs[fi].seq, &ntok);
    ck_assert_msg(ntok == 0, "%d token events for an answer given at once", ntok);
    free(joined);
    HX_ASSERT(t.stack, hx_wait_until(work_stream_empty, &t, 5000));
    HX_ASSERT(t.stack, wait_state(&t, &j, "done"));
    t_end(&t, true);
}
END_TEST

START_TEST(test_slow_job_does_not_block_others)
{
    const char *env[] = {"SLUICE_ECHO_TOKEN_DELAY_MS=100", "SLUICE_MODEL_TIMEOUT_MS=10000",
                         "SLUICE_WORKER_CONCURRENCY=4", NULL};
    hx_stack_cfg cfg = {.workers = 1};
    tctx t;
    job_spec slow, quick;
    int fs, fq;

    cfg.tier_env[HX_WORKER] = env;
    t_begin(&t, &cfg);
    job_init(&slow, LONG_TEXT, "lobby"); /* 30 tokens: about 3 s */
    publish_work(&t, &slow);
    HX_ASSERT_MSG(t.stack, wait_token(&t, slow.job, 1, 10000), "no token within 10 s");
    job_init(&quick, "quick one", "lobby");
    publish_work(&t, &quick);
    fq = wait_final(&t, quick.job, 10000);
    HX_ASSERT_MSG(t.stack, fq >= 0, "no final for the quick job");
    /* The quick job, queued behind the slow one, ended first. */
    ck_assert_int_lt(find_final(&t, slow.job), 0);
    fs = wait_final(&t, slow.job, 15000);
    HX_ASSERT_MSG(t.stack, fs >= 0, "no final for the slow job");
    ck_assert_uint_lt(t.evs[fq].seq, t.evs[fs].seq);
    ck_assert_str_eq(t.evs[fs].text, LONG_TEXT);
    t_end(&t, true);
}
END_TEST

/* ---- Cancellation ------------------------------------------------------- */

START_TEST(test_cancel_mid_stream)
{
    const char *env[] = {"SLUICE_ECHO_TOKEN_DELAY_MS=100", "SLUICE_MODEL_TIMEOUT_MS=10000", NULL};
    hx_stack_cfg cfg = {.workers = 1};
    tctx t;
    job_spec j;
    int fi;
    int64_t cancel_at;

    cfg.tier_env[HX_WORKER] = env;
    t_begin(&t, &cfg);
    job_init(&j, LONG_TEXT, "lobby");
    publish_work(&t, &j);
    HX_ASSERT_MSG(t.stack, wait_token(&t, j.job, 1, 10000), "no token within 10 s");
    cancel_at = hx_now_ms();
    publish_cancel(&t, &j);
    fi = wait_final(&t, j.job, 5000);
    HX_ASSERT_MSG(t.stack, fi >= 0, "no final reply within 5 s of the cancel");
    ck_assert(t.evs[fi].cancelled);
    ck_assert(!t.evs[fi].degraded);
    /* Cut: the text so far, a strict prefix of the whole answer. */
    ck_assert_int_lt((int)strlen(t.evs[fi].text), (int)strlen(LONG_TEXT));
    ck_assert(strncmp(LONG_TEXT, t.evs[fi].text, strlen(t.evs[fi].text)) == 0);
    ck_assert_msg(t.evs[fi].at_ms - cancel_at <= 1000, "final %" PRId64 " ms after the cancel",
                  t.evs[fi].at_ms - cancel_at);
    HX_ASSERT(t.stack, hx_wait_until(work_stream_empty, &t, 5000));
    HX_ASSERT(t.stack, wait_state(&t, &j, "cancelled"));
    /* No agent message for a cancelled reply. */
    ck_assert_ptr_null(agent_message(&t));
    pump(&t, 300, 0);
    ck_assert_int_eq(count_finals(&t, j.job), 1);
    t_end(&t, true);
}
END_TEST

START_TEST(test_cancelled_before_start_is_dropped)
{
    const char *env[] = {"SLUICE_ECHO_TOKEN_DELAY_MS=20", NULL};
    hx_stack_cfg cfg = {.workers = 1};
    tctx t;
    job_spec by_marker, by_core;
    kvStore *cancel_kv = NULL;
    char key[256];
    int fi, ntok;
    char *joined;

    cfg.tier_env[HX_WORKER] = env;
    t_begin(&t, &cfg);

    /* The orchestrator's cancel marker in the cancel bucket. */
    job_init(&by_marker, "this should never be answered", "lobby");
    ck_assert_int_eq(sl_cancel_key(key, sizeof(key), t.tenant, by_marker.session, by_marker.to),
                     SL_OK);
    ck_assert_int_eq(js_KeyValue(&cancel_kv, t.js, "sluice_cancel"), NATS_OK);
    ck_assert_int_eq(kvStore_PutString(NULL, cancel_kv, key, "{\"cancelled\":true}"), NATS_OK);
    kvStore_Destroy(cancel_kv);
    publish_work(&t, &by_marker);
    fi = wait_final(&t, by_marker.job, 10000);
    HX_ASSERT_MSG(t.stack, fi >= 0, "no final reply within 10 s");
    ck_assert(t.evs[fi].cancelled);
    ck_assert_str_eq(t.evs[fi].text, "");
    joined = tokens_of(&t, by_marker.job, 1, 0, &ntok);
    ck_assert_int_eq(ntok, 0);
    free(joined);
    HX_ASSERT(t.stack, wait_state(&t, &by_marker, "cancelled"));

    /* A cancel the worker heard on core NATS before the job arrived. */
    job_init(&by_core, "this should never be answered either", NULL);
    publish_cancel(&t, &by_core);
    publish_work(&t, &by_core);
    fi = wait_final(&t, by_core.job, 10000);
    HX_ASSERT_MSG(t.stack, fi >= 0, "no final reply within 10 s");
    ck_assert(t.evs[fi].cancelled);
    joined = tokens_of(&t, by_core.job, 1, 0, &ntok);
    ck_assert_int_eq(ntok, 0);
    free(joined);

    HX_ASSERT(t.stack, hx_wait_until(work_stream_empty, &t, 5000));
    t_end(&t, true);
}
END_TEST

/* ---- Crash and shutdown --------------------------------------------------- */

/* The pid in the in-flight "worker" field ("<host>-<pid>"), or -1. */
static pid_t running_worker_pid(tctx *t, const job_spec *j)
{
    cJSON *o = inflight(t, j);
    const cJSON *w = cJSON_GetObjectItemCaseSensitive(o, "worker");
    const cJSON *s = cJSON_GetObjectItemCaseSensitive(o, "state");
    pid_t pid = -1;

    if (cJSON_IsString(w) && cJSON_IsString(s) && strcmp(s->valuestring, "running") == 0) {
        const char *dash = strrchr(w->valuestring, '-');
        if (dash != NULL)
            pid = (pid_t)atol(dash + 1);
    }
    cJSON_Delete(o);
    return pid;
}

START_TEST(test_killed_worker_job_finished_by_another)
{
    /* AckWait = 6000 + 500 ms: the crashed worker's job comes back after it. */
    const char *env[] = {"SLUICE_ECHO_TOKEN_DELAY_MS=100", "SLUICE_MODEL_TIMEOUT_MS=6000",
                         "SLUICE_WORKER_ACK_GRACE_MS=500", NULL};
    hx_stack_cfg cfg = {.workers = 2};
    tctx t;
    job_spec j;
    pid_t pid = -1;
    int victim = -1, fi, ntok;
    char *joined;

    cfg.tier_env[HX_WORKER] = env;
    t_begin(&t, &cfg);
    job_init(&j, LONG_TEXT, "lobby");
    publish_work(&t, &j);
    HX_ASSERT_MSG(t.stack, wait_token(&t, j.job, 1, 10000), "no token within 10 s");
    for (int64_t until = hx_now_ms() + 5000; pid < 0 && hx_now_ms() < until;)
        if ((pid = running_worker_pid(&t, &j)) < 0)
            hx_sleep_ms(20);
    for (int i = 0; i < 2; i++)
        if (hx_proc_pid(hx_stack_proc(t.stack, HX_WORKER, i)) == pid)
            victim = i;
    HX_ASSERT_MSG(t.stack, victim >= 0, "cannot tell which worker runs the job (pid %d)", (int)pid);
    HX_OK(t.stack, hx_stack_kill(t.stack, HX_WORKER, victim, SIGKILL));

    fi = wait_final(&t, j.job, 25000);
    HX_ASSERT_MSG(t.stack, fi >= 0, "no final reply within 25 s of the crash");
    ck_assert_int_eq(t.evs[fi].attempt, 2);
    ck_assert(!t.evs[fi].degraded && !t.evs[fi].partial && !t.evs[fi].cancelled);
    ck_assert_str_eq(t.evs[fi].text, LONG_TEXT);
    joined = tokens_of(&t, j.job, 2, t.evs[fi].seq, &ntok);
    ck_assert_str_eq(joined, LONG_TEXT); /* the retry streams the whole answer again */
    free(joined);
    joined = tokens_of(&t, j.job, 1, t.evs[fi].seq, &ntok);
    ck_assert_int_ge(ntok, 1); /* the first attempt's partial text stays in the channel */
    ck_assert(strncmp(LONG_TEXT, joined, strlen(joined)) == 0);
    free(joined);
    HX_ASSERT(t.stack, hx_wait_until(work_stream_empty, &t, 5000));
    pump(&t, 300, 0);
    ck_assert_int_eq(count_finals(&t, j.job), 1);
    t_end(&t, true);
}
END_TEST

START_TEST(test_sigterm_finishes_running_job)
{
    const char *env[] = {"SLUICE_ECHO_TOKEN_DELAY_MS=50", "SLUICE_MODEL_TIMEOUT_MS=10000", NULL};
    hx_stack_cfg cfg = {.workers = 1};
    tctx t;
    job_spec j;
    int status = -1, fi;

    cfg.tier_env[HX_WORKER] = env;
    t_begin(&t, &cfg);
    job_init(&j, LONG_TEXT, "lobby"); /* 30 tokens x 50 ms */
    publish_work(&t, &j);
    HX_ASSERT_MSG(t.stack, wait_token(&t, j.job, 1, 10000), "no token within 10 s");
    HX_OK(t.stack, hx_stack_stop(t.stack, HX_WORKER, 0, SIGTERM, 15000, &status));
    ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "worker exit status %d", status);
    /* The job had finished before the process exited. */
    pump(&t, 2000, 300);
    fi = find_final(&t, j.job);
    HX_ASSERT_MSG(t.stack, fi >= 0, "no final reply from the draining worker");
    ck_assert_int_eq(t.evs[fi].attempt, 1);
    ck_assert_str_eq(t.evs[fi].text, LONG_TEXT);
    HX_ASSERT(t.stack, hx_wait_until(work_stream_empty, &t, 5000));
    t_end(&t, false);
}
END_TEST

START_TEST(test_sigterm_hands_back_after_grace)
{
    /* AckWait 10 + 30 s: a handed-back job must be taken at once, not after
     * AckWait. */
    const char *env[] = {"SLUICE_ECHO_TOKEN_DELAY_MS=200", "SLUICE_MODEL_TIMEOUT_MS=10000",
                         "SLUICE_WORKER_ACK_GRACE_MS=30000", "SLUICE_DRAIN_GRACE_MS=200", NULL};
    hx_stack_cfg cfg = {.workers = 1};
    tctx t;
    job_spec j;
    int status = -1, fi, other = -1;
    int64_t term_at;
    char *joined;
    int ntok;

    cfg.tier_env[HX_WORKER] = env;
    t_begin(&t, &cfg);
    job_init(&j, LONG_TEXT, "lobby"); /* 6 s of tokens */
    publish_work(&t, &j);
    HX_ASSERT_MSG(t.stack, wait_token(&t, j.job, 1, 10000), "no token within 10 s");
    HX_OK(t.stack, hx_stack_add(t.stack, HX_WORKER, NULL, &other));
    term_at = hx_now_ms();
    HX_OK(t.stack, hx_stack_stop(t.stack, HX_WORKER, 0, SIGTERM, 10000, &status));
    ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "worker exit status %d", status);
    fi = wait_final(&t, j.job, 20000);
    HX_ASSERT_MSG(t.stack, fi >= 0, "no final reply within 20 s");
    ck_assert_int_eq(t.evs[fi].attempt, 2);
    ck_assert_str_eq(t.evs[fi].text, LONG_TEXT);
    joined = tokens_of(&t, j.job, 2, t.evs[fi].seq, &ntok);
    ck_assert_str_eq(joined, LONG_TEXT);
    free(joined);
    /* Well before the 40 s AckWait: the job was NAKed, not abandoned. */
    ck_assert_msg(t.evs[fi].at_ms - term_at < 15000, "final %" PRId64 " ms after SIGTERM",
                  t.evs[fi].at_ms - term_at);
    t_end(&t, true);
}
END_TEST

/* ---- The end is stored before the ack ------------------------------------ */

/* Moves the in-flight bucket's stream to other subjects (paused) or back,
 * so that the worker's end-state writes find no stream and fail while
 * everything else works. */
static void inflight_pause(tctx *t, bool paused)
{
    const char *moved[] = {"$KV.sluice_inflight_paused.>"};
    const char *normal[] = {"$KV.sluice_inflight.>"};
    jsStreamInfo *si = NULL, *upd = NULL;
    jsErrCode jerr = 0;
    const char **saved;
    int saved_len;
    natsStatus s;

    ck_assert_int_eq(js_GetStreamInfo(&si, t->js, "KV_sluice_inflight", NULL, NULL), NATS_OK);
    saved = si->Config->Subjects;
    saved_len = si->Config->SubjectsLen;
    si->Config->Subjects = paused ? moved : normal;
    si->Config->SubjectsLen = 1;
    s = js_UpdateStream(&upd, t->js, si->Config, NULL, &jerr);
    si->Config->Subjects = saved;
    si->Config->SubjectsLen = saved_len;
    ck_assert_msg(s == NATS_OK, "updating KV_sluice_inflight: %s (jerr %d)", natsStatus_GetText(s),
                  (int)jerr);
    jsStreamInfo_Destroy(upd);
    jsStreamInfo_Destroy(si);
}

/* A counter of the worker's /metrics, or -1. */
static long long worker_metric(tctx *t, const char *name)
{
    return hx_metric_get(hx_stack_admin_port(t->stack, HX_WORKER, 0), name);
}

typedef struct store_wait {
    tctx *t;
    long long retries;
} store_wait;

/* Until the worker has stored the end again `retries` times, or the job
 * has left the work queue (acked). */
static bool retried_or_acked(void *ud)
{
    store_wait *w = ud;
    return worker_metric(w->t, "sluice_wrk_store_retries_total") >= w->retries ||
           work_stream_empty(w->t);
}

START_TEST(test_end_state_stored_before_ack)
{
    /* AckWait = 3000 + 1000 ms: the end state stays unwritable for longer
     * than that, so the job's lease must be kept alive meanwhile. */
    const char *env[] = {"SLUICE_ECHO_TOKEN_DELAY_MS=20", "SLUICE_MODEL_TIMEOUT_MS=3000",
                         "SLUICE_WORKER_ACK_GRACE_MS=1000", NULL};
    hx_stack_cfg cfg = {.workers = 1};
    tctx t;
    job_spec j;
    int fi, ntok;
    char *joined;
    /* Back-offs 100, 200, 400, 800, 1600, 2000, 2000 ms: past AckWait. */
    store_wait w = {.t = &t, .retries = 7};

    cfg.tier_env[HX_WORKER] = env;
    t_begin(&t, &cfg);
    inflight_pause(&t, true);
    job_init(&j, LONG_TEXT, "lobby");
    publish_work(&t, &j);

    /* The final reply is stored; the end state cannot be. */
    fi = wait_final(&t, j.job, 10000);
    HX_ASSERT_MSG(t.stack, fi >= 0, "no final reply within 10 s");
    HX_ASSERT_MSG(t.stack, hx_wait_until(retried_or_acked, &w, 30000),
                  "the worker neither acked nor stored the end again within 30 s");
    HX_ASSERT_MSG(t.stack, !work_stream_empty(&t),
                  "the job was acked although its end state was not stored");

    /* Once the bucket takes writes again, the end state is stored, then
     * the job is acked: within this attempt, which kept its lease, and
     * with one final reply. */
    inflight_pause(&t, false);
    HX_ASSERT(t.stack, wait_state(&t, &j, "done"));
    HX_ASSERT(t.stack, hx_wait_until(work_stream_empty, &t, 10000));
    pump(&t, 500, 0);
    ck_assert_int_eq(count_finals(&t, j.job), 1);
    fi = find_final(&t, j.job);
    ck_assert_int_eq(t.evs[fi].attempt, 1);
    ck_assert_str_eq(t.evs[fi].text, LONG_TEXT);
    ck_assert(!wait_token(&t, j.job, 2, 100)); /* never redelivered */
    joined = tokens_of(&t, j.job, 1, t.evs[fi].seq, &ntok);
    ck_assert_str_eq(joined, LONG_TEXT);
    free(joined);
    ck_assert_int_eq(worker_metric(&t, "sluice_wrk_jobs_total{outcome=\"ok\"}"), 1);
    ck_assert_int_eq(worker_metric(&t, "sluice_wrk_jobs_total{outcome=\"failed\"}"), 0);
    t_end(&t, true);
}
END_TEST

/* ---- Storage bounds --------------------------------------------------------- */

/* ---- A work consumer left without quorum is replaced ----------------- */

typedef struct recov_wait {
    tctx *t;
    const char *reply;
} recov_wait;

static bool final_seen(void *ud)
{
    recov_wait *w = ud;
    pump(w->t, 100, 0);
    return find_final(w->t, w->reply) >= 0;
}

/* The node (0..2) that leads durable on SLUICE_WORK, or -1. */
static int consumer_node(tctx *t, const char *durable)
{
    jsConsumerInfo *ci = NULL;
    int node = -1;

    if (js_GetConsumerInfo(&ci, t->js, "SLUICE_WORK", durable, NULL, NULL) == NATS_OK &&
        ci->Cluster != NULL && ci->Cluster->Leader != NULL &&
        strncmp(ci->Cluster->Leader, "hx-n", 4) == 0)
        node = atoi(ci->Cluster->Leader + 4);
    jsConsumerInfo_Destroy(ci);
    return node;
}

/* A work consumer whose group cannot elect a leader serves no pull and
 * answers every request about it with an error (nats-server 2.9 leaves an
 * R3 consumer so when a node killed and restarted never rejoins it). Made
 * here deterministically: the tenant's consumer is created with one replica
 * before the worker sees its work, and its node is killed; the stream (R3)
 * and the cluster's metadata keep their quorum. The worker must delete the
 * consumer and create it afresh, and the job waiting in WORK must run. */
START_TEST(test_stalled_consumer_recreated)
{
    static const char *const env[] = {"SLUICE_STREAM_REPLICAS=3", NULL};
    hx_stack_cfg cfg = {.workers = 1, .nats_nodes = 3, .env = env, .ready_timeout_ms = 40000};
    char durable[128], filter[SL_SUBJECT_MAX];
    int64_t backoff[2];
    jsConsumerConfig cc;
    jsConsumerInfo *ci = NULL;
    jsErrCode jerr = 0;
    job_spec a, b;
    recov_wait w;
    tctx t;
    int node;

    t_begin(&t, &cfg);
    ck_assert_int_eq(sl_work_durable(durable, sizeof(durable), MODEL, t.tenant), SL_OK);
    ck_assert_int_eq(sl_subject_work_filter(filter, sizeof(filter), MODEL, t.tenant), SL_OK);
    /* As the worker makes it (AckWait = the default model timeout, 10 s,
     * + the ack grace, 5 s; MaxDeliver 3), so that it keeps it as it is,
     * but with one replica. */
    for (int i = 0; i < 2; i++)
        backoff[i] = 15000LL * 1000000;
    jsConsumerConfig_Init(&cc);
    cc.Durable = durable;
    cc.FilterSubject = filter;
    cc.AckPolicy = js_AckExplicit;
    cc.AckWait = 15000LL * 1000000;
    cc.MaxDeliver = 3;
    cc.BackOff = backoff;
    cc.BackOffLen = 2;
    cc.Replicas = 1;
    ck_assert_int_eq(js_AddConsumer(&ci, t.js, "SLUICE_WORK", &cc, NULL, &jerr), NATS_OK);
    jsConsumerInfo_Destroy(ci);

    /* The worker serves the tenant from it. */
    job_init(&a, "before the loss", NULL);
    publish_work(&t, &a);
    ck_assert_int_ge(wait_final(&t, a.job, 20000), 0);

    node = consumer_node(&t, durable);
    ck_assert_int_ge(node, 0);
    ck_assert_int_eq(hx_nats_stop(hx_stack_nats(t.stack), node, SIGKILL) == SL_OK ||
                         !hx_nats_alive(hx_stack_nats(t.stack), node),
                     1);

    /* The stream may be electing a leader meanwhile: the same message
     * again until it is stored (Nats-Msg-Id keeps one). */
    job_init(&b, "after the loss", NULL);
    for (int64_t until = hx_now_ms() + 30000;
         publish_work_status(&t, &b) != NATS_OK && hx_now_ms() < until;)
        ;
    w = (recov_wait){.t = &t, .reply = b.job};
    ck_assert_msg(hx_wait_until(final_seen, &w, 90000),
                  "the job queued behind a consumer without quorum never ran");
    ck_assert_int_ge(worker_metric(&t, "sluice_wrk_consumer_recoveries_total"), 1);
    t_end(&t, true);
}
END_TEST

typedef struct limits_want {
    const char *stream;
    int64_t max_bytes;
    int discard; /* jsDiscardPolicy, or -1: not checked */
} limits_want;

static void assert_limits(tctx *t, const limits_want *w, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        jsStreamInfo *si = NULL;
        ck_assert_msg(js_GetStreamInfo(&si, t->js, w[i].stream, NULL, NULL) == NATS_OK,
                      "no stream %s", w[i].stream);
        ck_assert_msg(si->Config->MaxBytes == w[i].max_bytes,
                      "%s: MaxBytes %" PRId64 " where %" PRId64 " was wanted", w[i].stream,
                      si->Config->MaxBytes, w[i].max_bytes);
        if (w[i].discard >= 0)
            ck_assert_msg((int)si->Config->Discard == w[i].discard, "%s: discard %d, not %d",
                          w[i].stream, (int)si->Config->Discard, w[i].discard);
        jsStreamInfo_Destroy(si);
    }
}

/* Sets a stream's MaxBytes and discard policy, as an older version left
 * them. */
static void set_limits(tctx *t, const char *stream, int64_t max_bytes, jsDiscardPolicy discard)
{
    jsStreamInfo *si = NULL, *upd = NULL;

    ck_assert_int_eq(js_GetStreamInfo(&si, t->js, stream, NULL, NULL), NATS_OK);
    si->Config->MaxBytes = max_bytes;
    si->Config->Discard = discard;
    ck_assert_int_eq(js_UpdateStream(&upd, t->js, si->Config, NULL, NULL), NATS_OK);
    jsStreamInfo_Destroy(upd);
    jsStreamInfo_Destroy(si);
}

typedef struct metric_wait {
    tctx *t;
    const char *line;
} metric_wait;

static bool metric_line_seen(void *ud)
{
    metric_wait *w = ud;
    char *body = NULL;
    bool seen;
    int port = hx_stack_admin_port(w->t->stack, HX_WORKER, 0);

    seen = hx_http_get(NULL, port, "/metrics", 2000, &body) == 200 && body != NULL &&
           strstr(body, w->line) != NULL;
    free(body);
    return seen;
}

START_TEST(test_streams_bounded_and_updated)
{
    const char *env[] = {"SLUICE_IN_MAX_BYTES=64MiB",      "SLUICE_WORK_MAX_BYTES=32M",
                         "SLUICE_OUT_MAX_BYTES=134217728", "SLUICE_KV_MAX_BYTES=16MiB",
                         "SLUICE_CANCEL_TTL_S=200",        NULL};
    hx_stack_cfg cfg = {.workers = 1};
    const limits_want want[] = {
        {"SLUICE_IN", 64LL << 20, js_DiscardOld},
        {"SLUICE_WORK", 32LL << 20, js_DiscardNew},
        {"SLUICE_OUT", 128LL << 20, js_DiscardOld},
        {"KV_sluice_sessions", 16LL << 20, js_DiscardNew},
        {"KV_sluice_inflight", 16LL << 20, js_DiscardNew},
        {"KV_sluice_presence", 16LL << 20, js_DiscardNew},
        {"KV_sluice_cancel", 16LL << 20, js_DiscardNew},
    };
    const size_t n = sizeof(want) / sizeof(want[0]);
    jsStreamInfo *si = NULL;
    tctx t;

    cfg.tier_env[HX_WORKER] = env;
    t_begin(&t, &cfg);
    /* Created with the limits. */
    assert_limits(&t, want, n);
    ck_assert_int_eq(js_GetStreamInfo(&si, t.js, "KV_sluice_cancel", NULL, NULL), NATS_OK);
    ck_assert_int_eq(si->Config->MaxAge, 200LL * 1000000000LL);
    jsStreamInfo_Destroy(si);
    si = NULL;
    {
        metric_wait w = {&t, "sluice_stream_max_bytes{stream=\"SLUICE_OUT\"} 134217728\n"};
        HX_ASSERT_MSG(t.stack, hx_wait_until(metric_line_seen, &w, 10000),
                      "no sampled limit of SLUICE_OUT in the worker's /metrics");
    }

    /* Streams and buckets as an older version left them (no byte limit,
     * IN discarding new, the cancel bucket with another TTL) are brought
     * to the configuration by the next start. */
    HX_OK(t.stack, hx_stack_stop(t.stack, HX_WORKER, 0, SIGTERM, 10000, NULL));
    for (size_t i = 0; i < n; i++)
        set_limits(&t, want[i].stream, -1,
                   strcmp(want[i].stream, "SLUICE_IN") == 0 ? js_DiscardNew
                   : want[i].discard >= 0                   ? (jsDiscardPolicy)want[i].discard
                                                            : js_DiscardOld);
    {
        jsStreamInfo *upd = NULL;
        ck_assert_int_eq(js_GetStreamInfo(&si, t.js, "KV_sluice_cancel", NULL, NULL), NATS_OK);
        si->Config->MaxAge = 3600LL * 1000000000LL;
        ck_assert_int_eq(js_UpdateStream(&upd, t.js, si->Config, NULL, NULL), NATS_OK);
        jsStreamInfo_Destroy(upd);
        jsStreamInfo_Destroy(si);
        si = NULL;
    }
    HX_OK(t.stack, hx_stack_restart(t.stack, HX_WORKER, 0));
    assert_limits(&t, want, n);
    ck_assert_int_eq(js_GetStreamInfo(&si, t.js, "KV_sluice_cancel", NULL, NULL), NATS_OK);
    ck_assert_int_eq(si->Config->MaxAge, 200LL * 1000000000LL);
    jsStreamInfo_Destroy(si);
    HX_ASSERT(t.stack, hx_file_contains(hx_stack_log_path(t.stack, HX_WORKER, 0),
                                        "stream SLUICE_OUT updated"));
    t_end(&t, true);
}
END_TEST

/* Runs the worker binary with one extra variable against the stack's
 * NATS; returns its exit status and its output in out (caller frees). */
static int run_worker_with(tctx *t, const char *var, char **out)
{
    /* timeout: a worker that accepted the value would run until stopped. */
    char *cmd = hx_strf("SLUICE_NATS_URL='%s' SLUICE_ADMIN_LISTEN=127.0.0.1:1 %s "
                        "timeout -s KILL 15 '%s/sluice-worker' 2>&1",
                        hx_stack_nats_url(t->stack), var, hx_stack_bin_dir(t->stack));
    FILE *p = popen(cmd, "r");
    size_t len = 0, cap = 4096;
    char *buf = calloc(1, cap);
    int status;

    ck_assert_ptr_nonnull(p);
    while (!feof(p) && len + 1 < cap) {
        size_t r = fread(buf + len, 1, cap - len - 1, p);
        if (r == 0)
            break;
        len += r;
    }
    status = pclose(p);
    free(cmd);
    *out = buf;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/* --help exits 0 with the usage, a bad option value 2 (SL_EXIT_CONFIG):
 * both before any NATS connection. */
START_TEST(test_exit_codes_help_and_bad_option)
{
    static const struct {
        const char *args;
        int rc;
        const char *want;
    } runs[] = {
        {"--help", 0, "Usage: sluice-worker"},
        {"--worker-concurrency=0", 2, "SLUICE_WORKER_CONCURRENCY"},
        {"--log-level=loud", 2, "SLUICE_LOG_LEVEL"},
        {"--no-such-flag", 2, "unknown flag"},
    };

    for (size_t i = 0; i < sizeof(runs) / sizeof(runs[0]); i++) {
        char *cmd = hx_strf("SLUICE_NATS_URL=nats://127.0.0.1:1 SLUICE_ADMIN_LISTEN=127.0.0.1:1 "
                            "timeout -s KILL 15 '%s/sluice-worker' %s 2>&1",
                            hx_stack_default_bin_dir(), runs[i].args);
        FILE *p = popen(cmd, "r");
        char out[16384];
        size_t len = 0;
        int status, rc;

        ck_assert_ptr_nonnull(p);
        while (len + 1 < sizeof(out)) {
            size_t r = fread(out + len, 1, sizeof(out) - len - 1, p);
            if (r == 0)
                break;
            len += r;
        }
        out[len] = '\0';
        status = pclose(p);
        rc = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
        ck_assert_msg(rc == runs[i].rc, "%s: exit status %d, output: %s", runs[i].args, rc, out);
        ck_assert_msg(strstr(out, runs[i].want) != NULL, "%s: the output does not say %s: %s",
                      runs[i].args, runs[i].want, out);
        free(cmd);
    }
}
END_TEST

START_TEST(test_bad_limit_refused_at_start)
{
    const char *env[] = {"SLUICE_WORK_MAX_BYTES=32MiB", NULL};
    hx_stack_cfg cfg = {.workers = 1};
    const limits_want want[] = {{"SLUICE_WORK", 32LL << 20, js_DiscardNew}};
    const char *bad[][2] = {
        {"SLUICE_WORK_MAX_BYTES=12x", "SLUICE_WORK_MAX_BYTES"},
        {"SLUICE_WORK_MAX_BYTES=1000", "SLUICE_WORK_MAX_BYTES"},
        {"SLUICE_KV_MAX_BYTES=-5", "SLUICE_KV_MAX_BYTES"},
        {"SLUICE_CANCEL_TTL_S=60", "SLUICE_CANCEL_TTL_S"}, /* shorter than a job can live */
        {"SLUICE_TENANT_WEIGHTS='acme=0'", "SLUICE_TENANT_WEIGHTS: weight of 'acme'"},
        {"SLUICE_TENANT_WEIGHTS='acme=2,,b=1'", "SLUICE_TENANT_WEIGHTS: empty item"},
        {"SLUICE_TENANT_WEIGHTS='acme=2,acme=1'", "SLUICE_TENANT_WEIGHTS: tenant 'acme' is listed"},
        {"SLUICE_TENANT_WEIGHTS='acme'", "SLUICE_TENANT_WEIGHTS: 'acme' is not tenant=weight"},
    };
    tctx t;

    cfg.tier_env[HX_WORKER] = env;
    t_begin(&t, &cfg);
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char *out = NULL;
        int rc = run_worker_with(&t, bad[i][0], &out);
        ck_assert_msg(rc == 2, "%s: exit status %d, output: %s", bad[i][0], rc, out);
        ck_assert_msg(strstr(out, bad[i][1]) != NULL, "%s: the error does not name %s: %s",
                      bad[i][0], bad[i][1], out);
        free(out);
    }
    /* Nothing changed. */
    assert_limits(&t, want, 1);
    t_end(&t, true);
}
END_TEST

static bool marker_present(void *ud)
{
    void **a = ud;
    kvEntry *e = NULL;
    bool yes = kvStore_Get(&e, (kvStore *)a[0], (const char *)a[1]) == NATS_OK;
    kvEntry_Destroy(e);
    return yes;
}

static bool marker_gone(void *ud)
{
    return !marker_present(ud);
}

START_TEST(test_cancel_marker_expires)
{
    const char *env[] = {"SLUICE_CANCEL_TTL_S=3", NULL};
    hx_stack_cfg cfg = {.orchestrators = 1};
    kvStore *cancel = NULL;
    char key[SL_SUBJECT_MAX];
    job_spec j;
    tctx t;
    void *a[2];
    int64_t seen_at;

    cfg.tier_env[HX_ORCHESTRATOR] = env;
    t_begin(&t, &cfg);
    ck_assert_int_eq(js_KeyValue(&cancel, t.js, "sluice_cancel"), NATS_OK);
    job_init(&j, "hello", NULL);
    ck_assert_int_eq(sl_cancel_key(key, sizeof(key), t.tenant, j.session, j.to), SL_OK);
    a[0] = cancel;
    a[1] = key;
    /* Core NATS: the orchestrator's subscription may reach the server a
     * moment after /readyz, so send until the marker shows up. */
    for (int i = 0; i < 50 && !marker_present(a); i++) {
        publish_cancel(&t, &j);
        hx_wait_until(marker_present, a, 200);
    }
    HX_ASSERT_MSG(t.stack, marker_present(a), "no cancel marker in sluice_cancel within 10 s");
    seen_at = hx_now_ms();
    /* Not in the in-flight bucket (whose TTL is an hour). */
    {
        kvEntry *e = NULL;
        ck_assert_int_ne(kvStore_Get(&e, t.kv, key), NATS_OK);
        kvEntry_Destroy(e);
    }
    HX_ASSERT_MSG(t.stack, hx_wait_until(marker_gone, a, 20000),
                  "the cancel marker outlived its 3 s TTL by 20 s");
    ck_assert_int_ge(hx_now_ms() - seen_at, 0);
    kvStore_Destroy(cancel);
    t_end(&t, true);
}
END_TEST

/* ---- The openai backend against the fake server --------------------------- */

typedef struct oa_ctx {
    tctx t;
    fake_openai *fake;
    char url[128];
    const char *env[8]; /* the stack keeps pointing at it */
} oa_ctx;

static void oa_begin(oa_ctx *o)
{
    int port = 0;
    hx_stack_cfg cfg = {.workers = 1};
    int k = 0;

    ck_assert_int_eq(fake_openai_start(&o->fake, &port), 0);
    snprintf(o->url, sizeof(o->url), "SLUICE_MODEL_URL=http://127.0.0.1:%d", port);
    o->env[k++] = "SLUICE_MODEL_BACKEND=openai";
    o->env[k++] = o->url;
    o->env[k++] = "SLUICE_MODEL_API_KEY=sk-test-123";
    o->env[k++] = "SLUICE_MODEL_TIMEOUT_MS=1500";
    o->env[k++] = "SLUICE_WORKER_ACK_GRACE_MS=1000";
    o->env[k++] = "SLUICE_CONTEXT_MESSAGES=10";
    /* The fake server streams at once: every token event is checked. */
    o->env[k++] = "SLUICE_COALESCE_FIRST_MS=0";
    o->env[k] = NULL;
    cfg.tier_env[HX_WORKER] = o->env;
    t_begin(&o->t, &cfg);
}

static void oa_end(oa_ctx *o)
{
    t_end(&o->t, true);
    fake_openai_stop(o->fake);
}

/* Runs one job in the current fake mode; returns the final's index. */
static int oa_run(oa_ctx *o, job_spec *j, const char *text, int timeout_ms)
{
    int fi;

    job_init(j, text, "lobby");
    publish_work(&o->t, j);
    fi = wait_final(&o->t, j->job, timeout_ms);
    HX_ASSERT_MSG(o->t.stack, fi >= 0, "no final reply within %d ms", timeout_ms);
    return fi;
}

START_TEST(test_openai_normal_with_context)
{
    oa_ctx o;
    job_spec j, j2;
    int fi, ntok;
    char *joined, *body, *head;
    const char *answer = "Paris is the capital of France.";

    oa_begin(&o);
    fake_openai_set_mode(o.fake, FAKE_OPENAI_NORMAL);
    ck_assert_int_eq(fake_openai_set_reply(o.fake, answer), 0);
    fi = oa_run(&o, &j, "What is the capital of France?", 10000);
    ck_assert(!o.t.evs[fi].degraded && !o.t.evs[fi].partial && !o.t.evs[fi].cancelled);
    ck_assert_str_eq(o.t.evs[fi].text, answer);
    joined = tokens_of(&o.t, j.job, 1, o.t.evs[fi].seq, &ntok);
    ck_assert_str_eq(joined, answer);
    free(joined);
    head = fake_openai_last_head(o.fake);
    ck_assert_ptr_nonnull(head);
    ck_assert_msg(strstr(head, "Bearer sk-test-123") != NULL, "no API key in %s", head);
    free(head);

    /* A second question in the same room: the model gets the system prompt,
     * the earlier user message and its own earlier answer as context. */
    fake_openai_set_reply(o.fake, "About two million people.");
    job_init(&j2, "And how many people live there?", "lobby");
    memcpy(j2.session, j.session, sizeof(j2.session));
    j2.system_prompt = "You are a geography bot.";
    publish_out_message(&o.t, &j2, "c-earlier", "What is the capital of France?");
    publish_work(&o.t, &j2);
    fi = wait_final(&o.t, j2.job, 10000);
    HX_ASSERT_MSG(o.t.stack, fi >= 0, "no second final reply");
    ck_assert_str_eq(o.t.evs[fi].text, "About two million people.");
    body = fake_openai_last_body(o.fake);
    ck_assert_ptr_nonnull(body);
    {
        cJSON *req = cJSON_Parse(body);
        const cJSON *msgs = cJSON_GetObjectItemCaseSensitive(req, "messages");
        int n = cJSON_GetArraySize(msgs);
        bool sys = false, earlier_user = false, earlier_answer = false;
        ck_assert_msg(n >= 4, "only %d messages in %s", n, body);
        for (int i = 0; i < n; i++) {
            const cJSON *m = cJSON_GetArrayItem(msgs, i);
            const char *role = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(m, "role"));
            const char *content =
                cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(m, "content"));
            ck_assert_ptr_nonnull(role);
            ck_assert_ptr_nonnull(content);
            sys |= i == 0 && strcmp(role, "system") == 0 &&
                   strcmp(content, "You are a geography bot.") == 0;
            earlier_user |= strcmp(role, "user") == 0 &&
                            strstr(content, "What is the capital of France?") != NULL;
            earlier_answer |= strcmp(role, "assistant") == 0 && strcmp(content, answer) == 0;
            if (i == n - 1)
                ck_assert_str_eq(content, "And how many people live there?");
        }
        ck_assert_msg(sys && earlier_user && earlier_answer, "context missing in %s", body);
        ck_assert_str_eq(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(req, "model")),
                         MODEL);
        cJSON_Delete(req);
    }
    free(body);
    oa_end(&o);
}
END_TEST

START_TEST(test_openai_deadline_modes)
{
    oa_ctx o;
    job_spec j;
    int fi;

    oa_begin(&o);
    /* Slow: the first token at once, the next ones after the deadline. */
    fake_openai_set_mode(o.fake, FAKE_OPENAI_SLOW);
    fake_openai_set_slow_ms(o.fake, 5000);
    fake_openai_set_reply(o.fake, "First then nothing in time.");
    fi = oa_run(&o, &j, "slow please", 10000);
    ck_assert(o.t.evs[fi].partial);
    ck_assert(!o.t.evs[fi].degraded);
    ck_assert_str_eq(o.t.evs[fi].text, "First ");
    ck_assert_int_eq(o.t.evs[fi].attempt, 1);
    HX_ASSERT(o.t.stack, wait_state(&o.t, &j, "done"));

    /* Hang after the headers: nothing produced by the deadline. */
    fake_openai_set_mode(o.fake, FAKE_OPENAI_HANG_AFTER_HEADERS);
    fi = oa_run(&o, &j, "hang please", 10000);
    ck_assert(o.t.evs[fi].degraded);
    ck_assert_str_eq(o.t.evs[fi].text, FALLBACK);
    ck_assert_int_eq(o.t.evs[fi].attempt, 1);

    /* Malformed SSE: fatal, the fallback at once, no retry. */
    int before = fake_openai_requests(o.fake);
    fake_openai_set_mode(o.fake, FAKE_OPENAI_MALFORMED_SSE);
    fi = oa_run(&o, &j, "malformed please", 10000);
    ck_assert(o.t.evs[fi].degraded);
    ck_assert_str_eq(o.t.evs[fi].text, FALLBACK);
    ck_assert_int_eq(fake_openai_requests(o.fake) - before, 1);
    HX_ASSERT(o.t.stack, hx_wait_until(work_stream_empty, &o.t, 5000));
    HX_ASSERT(o.t.stack, wait_state(&o.t, &j, "failed"));
    oa_end(&o);
}
END_TEST

START_TEST(test_openai_retry_modes)
{
    oa_ctx o;
    job_spec j;
    int fi, before, ntok;
    char *joined;

    oa_begin(&o);
    /* 500 every time: three attempts, then the fallback and the message is
     * terminated (gone from the work queue). */
    fake_openai_set_mode(o.fake, FAKE_OPENAI_HTTP_500);
    before = fake_openai_requests(o.fake);
    fi = oa_run(&o, &j, "five hundred", 20000);
    ck_assert(o.t.evs[fi].degraded);
    ck_assert_str_eq(o.t.evs[fi].text, FALLBACK);
    ck_assert_int_eq(o.t.evs[fi].attempt, 3);
    ck_assert_int_eq(fake_openai_requests(o.fake) - before, 3);
    HX_ASSERT(o.t.stack, hx_wait_until(work_stream_empty, &o.t, 5000));
    HX_ASSERT(o.t.stack, wait_state(&o.t, &j, "failed"));

    /* 429 with Retry-After: 1 — the same, paced by the server's hint. */
    fake_openai_set_mode(o.fake, FAKE_OPENAI_HTTP_429);
    before = fake_openai_requests(o.fake);
    int64_t t0 = hx_now_ms();
    fi = oa_run(&o, &j, "too many", 20000);
    ck_assert(o.t.evs[fi].degraded);
    ck_assert_int_eq(o.t.evs[fi].attempt, 3);
    ck_assert_int_eq(fake_openai_requests(o.fake) - before, 3);
    ck_assert_msg(o.t.evs[fi].at_ms - t0 >= 2000, "retries did not wait for Retry-After");
    HX_ASSERT(o.t.stack, hx_wait_until(work_stream_empty, &o.t, 5000));

    /* Reset mid-stream, then the model recovers: attempt 2 completes. */
    fake_openai_set_mode(o.fake, FAKE_OPENAI_RESET_MID_STREAM);
    fake_openai_set_reset_after(o.fake, 2);
    fake_openai_set_reply(o.fake, "alpha beta gamma delta epsilon");
    before = fake_openai_requests(o.fake);
    job_init(&j, "reset please", "lobby");
    publish_work(&o.t, &j);
    ck_assert_int_eq(fake_openai_wait_requests(o.fake, before + 1, 10000), 0);
    fake_openai_set_mode(o.fake, FAKE_OPENAI_NORMAL); /* for the retry, >= 500 ms later */
    fi = wait_final(&o.t, j.job, 15000);
    HX_ASSERT_MSG(o.t.stack, fi >= 0, "no final reply after the reset");
    ck_assert(!o.t.evs[fi].degraded && !o.t.evs[fi].partial);
    ck_assert_int_eq(o.t.evs[fi].attempt, 2);
    ck_assert_str_eq(o.t.evs[fi].text, "alpha beta gamma delta epsilon");
    joined = tokens_of(&o.t, j.job, 2, o.t.evs[fi].seq, &ntok);
    ck_assert_str_eq(joined, "alpha beta gamma delta epsilon");
    free(joined);
    ck_assert_int_eq(fake_openai_requests(o.fake) - before, 2);
    oa_end(&o);
}
END_TEST

/* A slot is free for the next job once the model call is over: while one
 * job's end state cannot be stored, the next job runs (on the one slot)
 * and streams; both end once the bucket takes writes again, each acked
 * after its end state, with one final reply. */
START_TEST(test_slot_free_while_end_stored)
{
    const char *env[] = {"SLUICE_ECHO_TOKEN_DELAY_MS=20",   "SLUICE_MODEL_TIMEOUT_MS=3000",
                         "SLUICE_WORKER_ACK_GRACE_MS=1000", "SLUICE_WORKER_CONCURRENCY=1",
                         "SLUICE_COALESCE_FIRST_MS=0",      NULL};
    hx_stack_cfg cfg = {.workers = 1};
    tctx t;
    job_spec a, b;
    int fi;

    cfg.tier_env[HX_WORKER] = env;
    t_begin(&t, &cfg);
    inflight_pause(&t, true);
    job_init(&a, "first job here", "lobby");
    publish_work(&t, &a);
    fi = wait_final(&t, a.job, 10000);
    HX_ASSERT_MSG(t.stack, fi >= 0, "no final reply for the first job within 10 s");
    job_init(&b, "second job streams meanwhile", "lobby");
    publish_work(&t, &b);
    HX_ASSERT_MSG(t.stack, wait_token(&t, b.job, 1, 10000),
                  "the second job did not run while the first one's end was being stored");
    HX_ASSERT_MSG(t.stack, !work_stream_empty(&t),
                  "a job was acked although its end state was not stored");

    inflight_pause(&t, false);
    HX_ASSERT(t.stack, wait_state(&t, &a, "done"));
    HX_ASSERT(t.stack, wait_state(&t, &b, "done"));
    HX_ASSERT(t.stack, hx_wait_until(work_stream_empty, &t, 10000));
    HX_ASSERT_MSG(t.stack, wait_final(&t, b.job, 10000) >= 0, "no final reply for the second job");
    pump(&t, 500, 0);
    ck_assert_int_eq(count_finals(&t, a.job), 1);
    ck_assert_int_eq(count_finals(&t, b.job), 1);
    fi = find_final(&t, b.job);
    ck_assert_str_eq(t.evs[fi].text, "second job streams meanwhile");
    ck_assert_int_eq(worker_metric(&t, "sluice_wrk_jobs_total{outcome=\"ok\"}"), 2);
    t_end(&t, true);
}
END_TEST

static Suite *worker_suite(void)
{
    Suite *s = suite_create("worker");
    TCase *echo = tcase_create("echo");
    TCase *cancel = tcase_create("cancel");
    TCase *faults = tcase_create("faults");
    TCase *openai = tcase_create("openai");
    TCase *storage = tcase_create("storage");
    TCase *cluster = tcase_create("cluster");

    tcase_set_timeout(echo, 60);
    tcase_add_test(echo, test_echo_streams_and_ends_once);
    tcase_add_test(echo, test_echo_coalesces_fast_tokens);
    tcase_add_test(echo, test_echo_at_once_is_final_alone);
    tcase_add_test(echo, test_slow_job_does_not_block_others);
    suite_add_tcase(s, echo);

    tcase_set_timeout(cancel, 60);
    tcase_add_test(cancel, test_cancel_mid_stream);
    tcase_add_test(cancel, test_cancelled_before_start_is_dropped);
    suite_add_tcase(s, cancel);

    tcase_set_timeout(faults, 90);
    tcase_add_test(faults, test_killed_worker_job_finished_by_another);
    tcase_add_test(faults, test_sigterm_finishes_running_job);
    tcase_add_test(faults, test_sigterm_hands_back_after_grace);
    tcase_add_test(faults, test_end_state_stored_before_ack);
    tcase_add_test(faults, test_slot_free_while_end_stored);
    suite_add_tcase(s, faults);
    tcase_set_timeout(cluster, 180);
    tcase_add_test(cluster, test_stalled_consumer_recreated);
    suite_add_tcase(s, cluster);

    tcase_set_timeout(storage, 90);
    tcase_add_test(storage, test_streams_bounded_and_updated);
    tcase_add_test(storage, test_bad_limit_refused_at_start);
    tcase_add_test(storage, test_exit_codes_help_and_bad_option);
    tcase_add_test(storage, test_cancel_marker_expires);
    suite_add_tcase(s, storage);

    tcase_set_timeout(openai, 90);
    tcase_add_test(openai, test_openai_normal_with_context);
    tcase_add_test(openai, test_openai_deadline_modes);
    tcase_add_test(openai, test_openai_retry_modes);
    suite_add_tcase(s, openai);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(worker_suite());
    int failed;

    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
