/* Integration tests of sluice-orchestrator alone: a real nats-server and
 * the real orchestrator binary (started by the harness), with envelopes
 * published to SLUICE_IN and SLUICE_OUT / SLUICE_WORK read back with cnats.
 * Where a worker is needed, the test runs a small one of its own (a pull
 * consumer on WORK that publishes the final reply with the wire ids), so
 * that these tests do not depend on the worker tier. */
#include <check.h>
#include <nats/nats.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "hx_http.h"
#include "hx_stack.h"
#include "hx_util.h"
#include "sl_codec.h"
#include "sl_streams.h"
#include "sl_subject.h"
#include "sl_time.h"

#define T1 "t1"
#define T2 "t2"

/* ---- helpers: stack ---- */

typedef struct fixture {
    hx_stack *stack;
    char *dir; /* our own temp dir, for the agents file */
    natsConnection *nc;
    jsCtx *js;
    /* The harness keeps pointing at the environment (restarts reuse it). */
    const char *env[16];
    char *agents_env;
} fixture;

static void fx_start(fixture *fx, int orchestrators, const char *agents_json,
                     const char *const *extra_env)
{
    hx_stack_cfg cfg = {0};
    const char **env = fx->env;
    int n = 0;

    memset(fx, 0, sizeof(*fx));
    ck_assert_int_eq(hx_tmpdir_create("orch", &fx->dir), SL_OK);
    if (agents_json != NULL) {
        fx->agents_env = hx_strf("SLUICE_AGENTS_FILE=%s/agents.json", fx->dir);
        char *file = hx_strf("%s/agents.json", fx->dir);
        ck_assert_int_eq(hx_file_write(file, agents_json), SL_OK);
        free(file);
        env[n++] = fx->agents_env;
    }
    for (int i = 0; extra_env != NULL && extra_env[i] != NULL && n < 14; i++)
        env[n++] = extra_env[i];
    env[n] = NULL;
    cfg.orchestrators = orchestrators;
    cfg.tier_env[HX_ORCHESTRATOR] = env;
    ck_assert_msg(hx_stack_start(&fx->stack, &cfg) == SL_OK, "stack: %s", hx_error());
    ck_assert_int_eq(natsConnection_ConnectTo(&fx->nc, hx_stack_nats_url(fx->stack)), NATS_OK);
    ck_assert_int_eq(natsConnection_JetStream(&fx->js, fx->nc, NULL), NATS_OK);
}

/* Stops every orchestrator with SIGTERM (a graceful stop must end with exit
 * 0 within 5 s), checks the logs for sanitizer reports, tears down. */
static void fx_stop(fixture *fx)
{
    jsCtx_Destroy(fx->js);
    natsConnection_Destroy(fx->nc);
    if (fx->stack != NULL) {
        for (int i = 0; i < hx_stack_count(fx->stack, HX_ORCHESTRATOR); i++) {
            int status = 0;
            char sb[64];
            if (!hx_proc_alive(hx_stack_proc(fx->stack, HX_ORCHESTRATOR, i)))
                continue;
            ck_assert_msg(hx_stack_stop(fx->stack, HX_ORCHESTRATOR, i, SIGTERM, 5000, &status) ==
                              SL_OK,
                          "orchestrator %d did not stop within 5 s of SIGTERM", i);
            if (!(WIFEXITED(status) && WEXITSTATUS(status) == 0))
                hx_print_tail(stderr, "orchestrator",
                              hx_stack_log_path(fx->stack, HX_ORCHESTRATOR, i), 8000);
            ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0,
                          "orchestrator %d: %s after SIGTERM", i,
                          hx_proc_status_str(status, sb, sizeof(sb)));
        }
        ck_assert(hx_stack_sanitizer_clean(fx->stack));
        hx_stack_destroy(fx->stack);
    }
    hx_rm_rf(fx->dir);
    free(fx->dir);
    free(fx->agents_env);
}

/* The value of a metric line "<series> <value>" on process i's /metrics;
 * -1 when absent or unreachable. */
static double metric(fixture *fx, int i, const char *series)
{
    char *body = NULL;
    double v = -1;
    size_t n = strlen(series);

    if (hx_http_get(NULL, hx_stack_admin_port(fx->stack, HX_ORCHESTRATOR, i), "/metrics", 2000,
                    &body) != 200) {
        free(body);
        return -1;
    }
    for (const char *p = body; p != NULL && *p != '\0';) {
        const char *eol = strchr(p, '\n');
        if (strncmp(p, series, n) == 0 && p[n] == ' ') {
            v = strtod(p + n + 1, NULL);
            break;
        }
        p = eol != NULL ? eol + 1 : NULL;
    }
    free(body);
    return v;
}

/* Waits until the metric reaches want (or timeout_ms passes); returns
 * the last value read. */
static double wait_metric(fixture *fx, int i, const char *series, double want, int timeout_ms)
{
    int64_t end = hx_now_ms() + timeout_ms;
    double v = metric(fx, i, series);

    while (v < want && hx_now_ms() < end) {
        hx_sleep_ms(20);
        v = metric(fx, i, series);
    }
    return v;
}

/* ---- helpers: publishing to IN ---- */

typedef struct sent {
    char event_id[SL_EVENT_ID_LEN + 1];
} sent;

/* Publishes a user message as the gateway does (wire.md). Retries a failed
 * publish with the same id a few times; returns the last status. Usable
 * from any thread (it asserts nothing). */
static natsStatus try_publish_user(fixture *fx, const char *tenant, const char *session,
                                   const char *client_id, const char *prev, const char *room,
                                   const char *text, const char *msg_id_override, sent *out)
{
    Sluice__Envelope e = SLUICE__ENVELOPE__INIT;
    Sluice__ClientMessage m = SLUICE__CLIENT_MESSAGE__INIT;
    char ev[SL_EVENT_ID_LEN + 1], subj[SL_SUBJECT_MAX], id[200];
    uint8_t *buf = NULL;
    size_t len = 0;
    jsPubOptions po;
    natsStatus s = NATS_ERR;

    if (out != NULL && out->event_id[0] != '\0')
        snprintf(ev, sizeof(ev), "%s", out->event_id);
    else
        sl_event_id_new(ev);
    e.event_id = ev;
    e.tenant = (char *)tenant;
    e.session = (char *)session;
    e.client_id = (char *)client_id;
    e.message_id = (char *)client_id;
    e.prev_event_id = (char *)(prev != NULL ? prev : "");
    e.ts_unix_ns = sl_now_ns();
    m.room = (char *)(room != NULL ? room : "");
    m.text = (char *)text;
    m.user = "u1";
    e.body_case = SLUICE__ENVELOPE__BODY_MESSAGE;
    e.message = &m;
    if (sl_envelope_encode(&e, &buf, &len) != SL_OK ||
        sl_subject_in(subj, sizeof(subj), tenant, session) != SL_OK) {
        free(buf);
        return NATS_INVALID_ARG;
    }
    snprintf(id, sizeof(id), "%s:%s:%s", tenant, session, client_id);
    jsPubOptions_Init(&po);
    po.MsgId = msg_id_override != NULL ? msg_id_override : id;
    for (int i = 0; i < 20 && s != NATS_OK; i++) {
        s = js_Publish(NULL, fx->js, subj, buf, (int)len, &po, NULL);
        if (s != NATS_OK)
            hx_sleep_ms(100);
    }
    free(buf);
    if (s == NATS_OK && out != NULL)
        snprintf(out->event_id, sizeof(out->event_id), "%s", ev);
    return s;
}

static void publish_user(fixture *fx, const char *tenant, const char *session,
                         const char *client_id, const char *prev, const char *room,
                         const char *text, const char *msg_id_override, sent *out)
{
    natsStatus s =
        try_publish_user(fx, tenant, session, client_id, prev, room, text, msg_id_override, out);
    ck_assert_msg(s == NATS_OK, "publish to IN: %s", natsStatus_GetText(s));
}

/* ---- helpers: reading OUT with an ordered consumer ---- */

typedef struct out_ev {
    char subject[SL_SUBJECT_MAX];
    Sluice__Envelope *env;
} out_ev;

typedef struct out_log {
    pthread_mutex_t mu;
    out_ev *v;
    size_t n, cap;
    natsSubscription *sub;
} out_log;

static void on_out(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    out_log *o = closure;
    Sluice__Envelope *e = NULL;

    (void)nc;
    (void)sub;
    if (sl_envelope_decode(natsMsg_GetData(msg), (size_t)natsMsg_GetDataLength(msg), &e) == SL_OK) {
        pthread_mutex_lock(&o->mu);
        if (o->n == o->cap) {
            o->cap = o->cap ? o->cap * 2 : 256;
            o->v = realloc(o->v, o->cap * sizeof(*o->v));
        }
        snprintf(o->v[o->n].subject, SL_SUBJECT_MAX, "%s", natsMsg_GetSubject(msg));
        o->v[o->n++].env = e;
        pthread_mutex_unlock(&o->mu);
    }
    natsMsg_Destroy(msg);
}

static void out_start(fixture *fx, out_log *o)
{
    jsSubOptions so;

    memset(o, 0, sizeof(*o));
    pthread_mutex_init(&o->mu, NULL);
    jsSubOptions_Init(&so);
    so.Ordered = true;
    so.Stream = SL_STREAM_OUT;
    ck_assert_int_eq(js_Subscribe(&o->sub, fx->js, "sluice.out.>", on_out, o, NULL, &so, NULL),
                     NATS_OK);
}

static void out_stop(out_log *o)
{
    natsSubscription_Unsubscribe(o->sub);
    natsSubscription_Destroy(o->sub);
    for (size_t i = 0; i < o->n; i++)
        sl_envelope_free(o->v[i].env);
    free(o->v);
    pthread_mutex_destroy(&o->mu);
}

/* Counts OUT events matching body kind (0: any) and, when subject is not
 * NULL, that subject. */
static size_t out_count(out_log *o, Sluice__Envelope__BodyCase kind, const char *subject)
{
    size_t n = 0;

    pthread_mutex_lock(&o->mu);
    for (size_t i = 0; i < o->n; i++) {
        if ((kind == 0 || o->v[i].env->body_case == kind) &&
            (subject == NULL || strcmp(o->v[i].subject, subject) == 0))
            n++;
    }
    pthread_mutex_unlock(&o->mu);
    return n;
}

typedef struct count_cond {
    out_log *o;
    Sluice__Envelope__BodyCase kind;
    const char *subject;
    size_t want;
} count_cond;

static bool count_reached(void *ud)
{
    count_cond *c = ud;
    return out_count(c->o, c->kind, c->subject) >= c->want;
}

static bool wait_out(out_log *o, Sluice__Envelope__BodyCase kind, const char *subject, size_t want,
                     int timeout_ms)
{
    count_cond c = {o, kind, subject, want};
    return hx_wait_until(count_reached, &c, timeout_ms);
}

/* ---- helpers: a worker of the test's own ---- */

typedef enum fw_mode { FW_REPLY, FW_NAK } fw_mode;

typedef struct fw_job {
    char job[SL_ID_MAX + 1];
    char agent[SL_ID_MAX + 1];
    char tenant[SL_ID_MAX + 1];
    char to[SL_ID_MAX + 1];
    uint32_t hops;
} fw_job;

typedef struct fake_worker {
    natsConnection *nc;
    jsCtx *js;
    natsSubscription *sub;
    fw_mode mode;
    bool post_agent_msgs; /* publish each reply back to IN as the worker does */
    pthread_t thread;
    _Atomic int stop;
    pthread_mutex_t mu;
    fw_job *jobs;
    size_t njobs, cap;
    _Atomic long deliveries;
} fake_worker;

/* The text an agent answers with: pinger and ponger make a loop. */
static const char *fw_answer(const char *agent)
{
    if (strcmp(agent, "pinger") == 0)
        return "pong";
    if (strcmp(agent, "ponger") == 0)
        return "ping";
    return "done";
}

static void fw_handle(fake_worker *w, natsMsg *m)
{
    Sluice__Envelope *e = NULL;
    const Sluice__WorkRequest *wr;
    char subj[SL_SUBJECT_MAX], id[200];
    uint8_t *buf = NULL;
    size_t len = 0;
    jsPubOptions po;
    natsStatus s;

    atomic_fetch_add(&w->deliveries, 1);
    if (w->mode == FW_NAK) {
        natsMsg_Nak(m, NULL);
        return;
    }
    if (sl_envelope_decode(natsMsg_GetData(m), (size_t)natsMsg_GetDataLength(m), &e) != SL_OK ||
        e->work == NULL) {
        natsMsg_Term(m, NULL);
        sl_envelope_free(e);
        return;
    }
    wr = e->work;
    pthread_mutex_lock(&w->mu);
    if (w->njobs == w->cap) {
        w->cap = w->cap ? w->cap * 2 : 256;
        w->jobs = realloc(w->jobs, w->cap * sizeof(*w->jobs));
    }
    fw_job *j = &w->jobs[w->njobs++];
    snprintf(j->job, sizeof(j->job), "%s", wr->job_id);
    snprintf(j->agent, sizeof(j->agent), "%s", wr->agent);
    snprintf(j->tenant, sizeof(j->tenant), "%s", e->tenant);
    snprintf(j->to, sizeof(j->to), "%s", wr->to);
    j->hops = e->hops;
    pthread_mutex_unlock(&w->mu);

    {
        Sluice__Envelope r = SLUICE__ENVELOPE__INIT;
        Sluice__Reply rep = SLUICE__REPLY__INIT;
        char ev[SL_EVENT_ID_LEN + 1];
        sl_event_id_new(ev);
        r.event_id = ev;
        r.tenant = e->tenant;
        r.session = e->session;
        r.message_id = wr->to;
        r.hops = e->hops;
        rep.reply_id = wr->reply_id;
        rep.to = wr->to;
        rep.agent = wr->agent;
        rep.text = (char *)fw_answer(wr->agent);
        rep.attempt = 1;
        r.body_case = SLUICE__ENVELOPE__BODY_REPLY;
        r.reply = &rep;
        sl_envelope_encode(&r, &buf, &len);
        if (wr->room[0] != '\0')
            sl_subject_chan(subj, sizeof(subj), "sluice.out", e->tenant, true, wr->room);
        else
            sl_subject_chan(subj, sizeof(subj), "sluice.out", e->tenant, false, e->session);
        jsPubOptions_Init(&po);
        snprintf(id, sizeof(id), "r:%s", wr->job_id);
        po.MsgId = id;
        s = js_Publish(NULL, w->js, subj, buf, (int)len, &po, NULL);
        free(buf);
        buf = NULL;
        if (s != NATS_OK) {
            natsMsg_Nak(m, NULL);
            sl_envelope_free(e);
            return;
        }
    }
    if (w->post_agent_msgs) {
        Sluice__Envelope a = SLUICE__ENVELOPE__INIT;
        Sluice__ClientMessage cm = SLUICE__CLIENT_MESSAGE__INIT;
        char ev[SL_EVENT_ID_LEN + 1], sess[SL_ID_MAX + 1];
        sl_event_id_new(ev);
        a.event_id = ev;
        a.tenant = e->tenant;
        a.session = e->session;
        a.message_id = wr->reply_id;
        a.hops = e->hops + 1;
        cm.room = wr->room;
        cm.text = (char *)fw_answer(wr->agent);
        cm.agent = wr->agent;
        a.body_case = SLUICE__ENVELOPE__BODY_MESSAGE;
        a.message = &cm;
        sl_envelope_encode(&a, &buf, &len);
        snprintf(sess, sizeof(sess), "a-%s", wr->agent);
        sl_subject_in(subj, sizeof(subj), e->tenant, sess);
        jsPubOptions_Init(&po);
        snprintf(id, sizeof(id), "a:%s", wr->reply_id);
        po.MsgId = id;
        js_Publish(NULL, w->js, subj, buf, (int)len, &po, NULL);
        free(buf);
    }
    {
        char key[SL_SUBJECT_MAX], val[256];
        snprintf(key, sizeof(key), "$KV.%s.%s.%s", SL_KV_INFLIGHT, e->tenant, wr->job_id);
        snprintf(val, sizeof(val), "{\"state\":\"done\",\"agent\":\"%s\"}", wr->agent);
        natsConnection_PublishString(w->nc, key, val);
    }
    natsMsg_Ack(m, NULL);
    sl_envelope_free(e);
}

static void *fw_main(void *arg)
{
    fake_worker *w = arg;

    while (!atomic_load(&w->stop)) {
        natsMsgList list = {0};
        if (natsSubscription_Fetch(&list, w->sub, 32, 200, NULL) == NATS_OK) {
            for (int i = 0; i < list.Count; i++)
                fw_handle(w, list.Msgs[i]);
        }
        natsMsgList_Destroy(&list);
    }
    return NULL;
}

/* Starts a worker on the durable wrk_<model> with the given filter (NULL:
 * sluice.work.<model>.>), AckWait and MaxDeliver. */
static void fw_start(fixture *fx, fake_worker *w, const char *model, const char *filter,
                     int64_t ack_wait_ms, int64_t max_deliver, fw_mode mode)
{
    jsConsumerConfig cc;
    jsSubOptions so;
    char durable[80], filt[SL_SUBJECT_MAX];

    memset(w, 0, sizeof(*w));
    pthread_mutex_init(&w->mu, NULL);
    w->mode = mode;
    ck_assert_int_eq(natsConnection_ConnectTo(&w->nc, hx_stack_nats_url(fx->stack)), NATS_OK);
    ck_assert_int_eq(natsConnection_JetStream(&w->js, w->nc, NULL), NATS_OK);
    snprintf(durable, sizeof(durable), "wrk_%s", model);
    if (filter != NULL)
        snprintf(filt, sizeof(filt), "%s", filter);
    else
        snprintf(filt, sizeof(filt), "sluice.work.%s.>", model);
    jsConsumerConfig_Init(&cc);
    cc.Durable = durable;
    cc.AckPolicy = js_AckExplicit;
    cc.AckWait = ack_wait_ms * 1000000LL;
    cc.MaxDeliver = max_deliver;
    cc.FilterSubject = filt;
    ck_assert_int_eq(js_AddConsumer(NULL, w->js, SL_STREAM_WORK, &cc, NULL, NULL), NATS_OK);
    jsSubOptions_Init(&so);
    so.Stream = SL_STREAM_WORK;
    so.Consumer = durable;
    ck_assert_int_eq(js_PullSubscribe(&w->sub, w->js, filt, durable, NULL, &so, NULL), NATS_OK);
    ck_assert_int_eq(pthread_create(&w->thread, NULL, fw_main, w), 0);
}

static void fw_stop(fake_worker *w)
{
    atomic_store(&w->stop, 1);
    pthread_join(w->thread, NULL);
    natsSubscription_Destroy(w->sub);
    jsCtx_Destroy(w->js);
    natsConnection_Destroy(w->nc);
    free(w->jobs);
    pthread_mutex_destroy(&w->mu);
}

static size_t fw_count(fake_worker *w, const char *agent)
{
    size_t n = 0;

    pthread_mutex_lock(&w->mu);
    for (size_t i = 0; i < w->njobs; i++)
        n += agent == NULL || strcmp(w->jobs[i].agent, agent) == 0;
    pthread_mutex_unlock(&w->mu);
    return n;
}

/* Messages currently in SLUICE_WORK on subject (NULL: all). */
static uint64_t work_depth(fixture *fx, const char *subject)
{
    jsStreamInfo *si = NULL;
    jsOptions o;
    uint64_t n = 0;

    jsOptions_Init(&o);
    o.Stream.Info.SubjectsFilter = subject;
    if (js_GetStreamInfo(&si, fx->js, SL_STREAM_WORK, subject != NULL ? &o : NULL, NULL) ==
        NATS_OK) {
        if (subject == NULL) {
            n = si->State.Msgs;
        } else if (si->State.Subjects != NULL) {
            for (int i = 0; i < si->State.Subjects->Count; i++)
                n += si->State.Subjects->List[i].Msgs;
        }
    }
    jsStreamInfo_Destroy(si);
    return n;
}

static const char *const ONE_AGENT =
    "{\"agents\":[{\"name\":\"assistant\",\"model\":\"default\",\"match\":\"all\","
    "\"fallback\":\"sorry, later\"}]}";

/* ---- tests ---- */

/* Messages published to IN out of causal order (c-3 and c-2 before c-1,
 * waiting across batches) come out on OUT as c-1, c-2, c-3; a message
 * whose predecessor never comes is processed after the deadline (a gap). */
START_TEST(test_causal_order)
{
    const char *env[] = {"SLUICE_CAUSAL_WAIT_MS=3000", NULL};
    const char *room = "sluice.out." T1 ".r.lobby";
    fixture fx;
    out_log o;

    fx_start(&fx, 1, ONE_AGENT, env);
    out_start(&fx, &o);
    publish_user(&fx, T1, "sessA", "c-3", "c-2", "lobby", "third", NULL, NULL);
    publish_user(&fx, T1, "sessA", "c-2", "c-1", "lobby", "second", NULL, NULL);
    /* Both have been held back (NAKed) at least once before c-1 exists. */
    for (int i = 0; i < 100 && metric(&fx, 0, "sluice_orch_causal_waits_total") < 2; i++)
        hx_sleep_ms(20);
    ck_assert_double_ge(metric(&fx, 0, "sluice_orch_causal_waits_total"), 2);
    ck_assert_uint_eq(out_count(&o, SLUICE__ENVELOPE__BODY_MESSAGE, room), 0);
    publish_user(&fx, T1, "sessA", "c-1", NULL, "lobby", "first", NULL, NULL);
    ck_assert(wait_out(&o, SLUICE__ENVELOPE__BODY_MESSAGE, room, 3, 10000));
    pthread_mutex_lock(&o.mu);
    {
        const char *want[] = {"c-1", "c-2", "c-3"};
        size_t k = 0;
        for (size_t i = 0; i < o.n; i++) {
            if (o.v[i].env->body_case != SLUICE__ENVELOPE__BODY_MESSAGE)
                continue;
            ck_assert_str_eq(o.v[i].env->client_id, want[k]);
            k++;
        }
        ck_assert_uint_eq(k, 3);
    }
    pthread_mutex_unlock(&o.mu);
    ck_assert_double_eq(metric(&fx, 0, "sluice_orch_causal_gaps_total"), 0);

    /* A private message whose predecessor never arrives: processed anyway
     * after the deadline, on the session channel, and counted as a gap. */
    int64_t t0 = hx_now_ms();
    publish_user(&fx, T1, "sessB", "c-9", "c-8", NULL, "orphan", NULL, NULL);
    ck_assert(wait_out(&o, SLUICE__ENVELOPE__BODY_MESSAGE, "sluice.out." T1 ".s.sessB", 1, 15000));
    ck_assert_int_ge(hx_now_ms() - t0, 2000);
    /* Counted once its effects are stored: right after the event shows. */
    ck_assert_double_eq(wait_metric(&fx, 0, "sluice_orch_causal_gaps_total", 1, 5000), 1);
    /* Each message also became one work request for the one agent. */
    ck_assert_uint_eq(work_depth(&fx, "sluice.work.default." T1), 4);
    /* With no in-flight record: the work message is the queued state. */
    {
        kvStore *kv = NULL;
        kvEntry *e = NULL;
        char key[SL_SUBJECT_MAX];
        size_t seen = 0;
        ck_assert_int_eq(js_KeyValue(&kv, fx.js, SL_KV_INFLIGHT), NATS_OK);
        pthread_mutex_lock(&o.mu);
        for (size_t i = 0; i < o.n; i++) {
            if (o.v[i].env->body_case != SLUICE__ENVELOPE__BODY_MESSAGE)
                continue;
            snprintf(key, sizeof(key), "%s.%s-0", T1, o.v[i].env->event_id);
            ck_assert_int_eq(kvStore_Get(&e, kv, key), NATS_NOT_FOUND);
            seen++;
        }
        pthread_mutex_unlock(&o.mu);
        ck_assert_uint_eq(seen, 4);
        kvStore_Destroy(kv);
    }
    out_stop(&o);
    fx_stop(&fx);
}
END_TEST

static size_t count_lines_with(const char *path, const char *needle);

/* Publishes n user messages of tenant, sessions "<prefix><k>" (k < nsess)
 * round robin, each with a predecessor that is never sent, asynchronously
 * (as a busy gateway does), and waits for all acknowledgments. */
static void flood_orphans(fixture *fx, const char *tenant, const char *prefix, int nsess, int n)
{
    jsCtx *js = NULL;
    jsOptions jo;
    natsStatus s = NATS_OK;

    jsOptions_Init(&jo);
    jo.PublishAsync.MaxPending = 2000;
    jo.PublishAsync.StallWait = 10000;
    ck_assert_int_eq(natsConnection_JetStream(&js, fx->nc, &jo), NATS_OK);
    for (int i = 0; i < n && s == NATS_OK; i++) {
        Sluice__Envelope e = SLUICE__ENVELOPE__INIT;
        Sluice__ClientMessage m = SLUICE__CLIENT_MESSAGE__INIT;
        char ev[SL_EVENT_ID_LEN + 1], subj[SL_SUBJECT_MAX], id[200], sess[32], cid[16], prev[16];
        uint8_t *buf = NULL;
        size_t len = 0;
        jsPubOptions po;
        int k = i / nsess;
        snprintf(sess, sizeof(sess), "%s%d", prefix, i % nsess);
        snprintf(cid, sizeof(cid), "c-%d", 2 * k + 2);
        snprintf(prev, sizeof(prev), "c-%d", 2 * k + 1); /* never sent */
        sl_event_id_new(ev);
        e.event_id = ev;
        e.tenant = (char *)tenant;
        e.session = sess;
        e.client_id = cid;
        e.message_id = cid;
        e.prev_event_id = prev;
        e.ts_unix_ns = sl_now_ns();
        m.room = "";
        m.text = "where is my prev?";
        m.user = "u1";
        e.body_case = SLUICE__ENVELOPE__BODY_MESSAGE;
        e.message = &m;
        ck_assert_int_eq(sl_envelope_encode(&e, &buf, &len), SL_OK);
        ck_assert_int_eq(sl_subject_in(subj, sizeof(subj), tenant, sess), SL_OK);
        snprintf(id, sizeof(id), "%s:%s:%s", tenant, sess, cid);
        jsPubOptions_Init(&po);
        po.MsgId = id;
        s = js_PublishAsync(js, subj, buf, (int)len, &po);
        free(buf);
    }
    ck_assert_msg(s == NATS_OK, "flood publish: %s", natsStatus_GetText(s));
    ck_assert_int_eq(js_PublishAsyncComplete(js, NULL), NATS_OK);
    {
        natsMsgList failed = {0};
        ck_assert_int_eq(js_PublishAsyncGetPendingList(&failed, js), NATS_NOT_FOUND);
    }
    jsCtx_Destroy(js);
}

/* One tenant floods messages whose predecessors never come: 400 sessions,
 * 10,800 messages, more than the IN consumer's MaxAckPending (10,000).
 * Another tenant's messages are answered one after the other while the
 * flood's waits are still running: at most SLUICE_CAUSAL_PARK_PER_TENANT
 * of the flood wait (parked, coming back once a second instead of ten
 * times), the rest are processed at once as gaps. With the old NAK loop every waiting message
 * stayed pending on the shared consumer, so the flood filled its
 * MaxAckPending and came back every 100 ms ahead of new messages: the
 * other tenant was answered only after the flood's waits ended. */
START_TEST(test_causal_wait_isolated)
{
    enum { SESS = 400, PER = 27, B_MSGS = 5 };
    const char *agents = "{\"agents\":[{\"name\":\"assistant\",\"model\":\"default\","
                         "\"match\":\"mention\"}]}";
    const char *env[] = {"SLUICE_CAUSAL_WAIT_MS=90000", NULL};
    const char *b_sess = "sluice.out.tb.s.sessB";
    fixture fx;
    out_log o;
    fake_worker w;
    char cid[16], prev[16];
    double gaps, full, parked;
    int64_t t0;

    fx_start(&fx, 1, agents, env);
    out_start(&fx, &o);
    fw_start(&fx, &w, "default", "sluice.work.default.tb", 5000, 3, FW_REPLY);
    t0 = hx_now_ms();
    flood_orphans(&fx, "ta", "flood", SESS, SESS * PER);
    for (int c = 1; c <= B_MSGS; c++) {
        snprintf(cid, sizeof(cid), "c-%d", c);
        snprintf(prev, sizeof(prev), "c-%d", c - 1);
        publish_user(&fx, "tb", "sessB", cid, c > 1 ? prev : NULL, NULL, "@assistant hi", NULL,
                     NULL);
        ck_assert_msg(wait_out(&o, SLUICE__ENVELOPE__BODY_REPLY, b_sess, (size_t)c, 60000),
                      "tb: no reply to c-%d after %lld ms", c, (long long)(hx_now_ms() - t0));
    }
    /* tb was answered while no flooded message's wait had ended: every
     * gap so far is one past the park's bound, none a wait that ran out. */
    gaps = metric(&fx, 0, "sluice_orch_causal_gaps_total");
    full = metric(&fx, 0, "sluice_orch_causal_park_full_total");
    parked = metric(&fx, 0, "sluice_orch_causal_parked");
    fprintf(stderr,
            "isolation: %d flooded, %.0f parked, %.0f processed as gaps (%.0f past the bound); "
            "tb answered %d times within %lld ms of the flood's start\n",
            SESS * PER, parked, gaps, full, B_MSGS, (long long)(hx_now_ms() - t0));
    ck_assert_double_eq(gaps - (full > 0 ? full : 0), 0);
    /* At most the default per-tenant bound waits. */
    ck_assert(parked > 0 && parked <= 1000);
    ck_assert_double_ge(gaps, SESS * PER - 1000);
    ck_assert_uint_eq(out_count(&o, SLUICE__ENVELOPE__BODY_BUSY, NULL), 0);
    fw_stop(&w);
    out_stop(&o);
    fx_stop(&fx);
}
END_TEST

/* Past the park's bounds (per session, per tenant) a waiting message is
 * processed at once as a gap, counted and logged; parked messages go on
 * in order as soon as their predecessor is processed. */
START_TEST(test_causal_park_bounds)
{
    const char *env[] = {"SLUICE_CAUSAL_WAIT_MS=60000", "SLUICE_CAUSAL_PARK_PER_SESSION=2",
                         "SLUICE_CAUSAL_PARK_PER_TENANT=3", NULL};
    const char *s1 = "sluice.out." T1 ".s.sess1";
    const char *s2 = "sluice.out." T1 ".s.sess2";
    fixture fx;
    out_log o;

    fx_start(&fx, 1, ONE_AGENT, env);
    out_start(&fx, &o);
    /* sess1: c-2 and c-3 wait (2 per session), c-4 is past the bound. */
    publish_user(&fx, T1, "sess1", "c-2", "c-1", NULL, "two", NULL, NULL);
    publish_user(&fx, T1, "sess1", "c-3", "c-2", NULL, "three", NULL, NULL);
    ck_assert_double_ge(wait_metric(&fx, 0, "sluice_orch_causal_waits_total", 2, 10000), 2);
    publish_user(&fx, T1, "sess1", "c-4", "c-3", NULL, "four", NULL, NULL);
    ck_assert(wait_out(&o, SLUICE__ENVELOPE__BODY_MESSAGE, s1, 1, 10000));
    ck_assert_double_eq(wait_metric(&fx, 0, "sluice_orch_causal_park_full_total", 1, 5000), 1);
    /* sess2: x-2 waits (the tenant's third), x-3 is past the tenant's bound. */
    publish_user(&fx, T1, "sess2", "x-2", "x-1", NULL, "a", NULL, NULL);
    ck_assert_double_ge(wait_metric(&fx, 0, "sluice_orch_causal_parked", 3, 10000), 3);
    publish_user(&fx, T1, "sess2", "x-3", "x-9", NULL, "b", NULL, NULL);
    ck_assert(wait_out(&o, SLUICE__ENVELOPE__BODY_MESSAGE, s2, 1, 10000));
    ck_assert_double_eq(wait_metric(&fx, 0, "sluice_orch_causal_park_full_total", 2, 5000), 2);
    ck_assert_double_eq(metric(&fx, 0, "sluice_orch_causal_gaps_total"), 2);
    ck_assert_uint_eq(count_lines_with(hx_stack_log_path(fx.stack, HX_ORCHESTRATOR, 0),
                                       "too many messages of this session or tenant wait"),
                      2);
    /* c-1 arrives: c-1, c-2, c-3 follow c-4 on sess1's channel, in order. */
    publish_user(&fx, T1, "sess1", "c-1", NULL, NULL, "one", NULL, NULL);
    ck_assert(wait_out(&o, SLUICE__ENVELOPE__BODY_MESSAGE, s1, 4, 10000));
    pthread_mutex_lock(&o.mu);
    {
        const char *want[] = {"c-4", "c-1", "c-2", "c-3"};
        size_t k = 0;
        for (size_t i = 0; i < o.n; i++) {
            if (o.v[i].env->body_case != SLUICE__ENVELOPE__BODY_MESSAGE ||
                strcmp(o.v[i].subject, s1) != 0)
                continue;
            ck_assert_str_eq(o.v[i].env->client_id, want[k]);
            k++;
        }
        ck_assert_uint_eq(k, 4);
    }
    pthread_mutex_unlock(&o.mu);
    ck_assert_double_eq(metric(&fx, 0, "sluice_orch_causal_gaps_total"), 2);
    /* x-2 still waits. */
    for (int i = 0; i < 100 && metric(&fx, 0, "sluice_orch_causal_parked") != 1; i++)
        hx_sleep_ms(20);
    ck_assert_double_eq(metric(&fx, 0, "sluice_orch_causal_parked"), 1);
    out_stop(&o);
    fx_stop(&fx);
}
END_TEST

/* The same message delivered twice (past JetStream's duplicate window, as a
 * different IN message) has no second effect: one message event, one work
 * request. */
START_TEST(test_redelivery_no_second_effect)
{
    const char *room = "sluice.out." T1 ".r.lobby";
    fixture fx;
    out_log o;
    sent s1 = {0};

    fx_start(&fx, 1, ONE_AGENT, NULL);
    out_start(&fx, &o);
    publish_user(&fx, T1, "sessA", "c-1", NULL, "lobby", "hello", NULL, &s1);
    ck_assert(wait_out(&o, SLUICE__ENVELOPE__BODY_MESSAGE, room, 1, 10000));
    /* Same envelope (same event id), another Nats-Msg-Id: a redelivery
     * that JetStream's dedup cannot catch. */
    publish_user(&fx, T1, "sessA", "c-1", NULL, "lobby", "hello", "redelivered-1", &s1);
    for (int i = 0; i < 250 && metric(&fx, 0, "sluice_orch_duplicates_total") < 1; i++)
        hx_sleep_ms(20);
    ck_assert_double_eq(metric(&fx, 0, "sluice_orch_duplicates_total"), 1);
    /* Then the next message, so that anything still in flight has landed. */
    publish_user(&fx, T1, "sessA", "c-2", "c-1", "lobby", "next", NULL, NULL);
    ck_assert(wait_out(&o, SLUICE__ENVELOPE__BODY_MESSAGE, room, 2, 10000));
    ck_assert_uint_eq(out_count(&o, SLUICE__ENVELOPE__BODY_MESSAGE, room), 2);
    /* The event and the work request are stored in different streams: the
     * counter goes up once the work request is, a moment after the event
     * may show. */
    ck_assert_double_eq(wait_metric(&fx, 0, "sluice_orch_jobs_dispatched_total", 2, 5000), 2);
    ck_assert_uint_eq(work_depth(&fx, "sluice.work.default." T1), 2);
    out_stop(&o);
    fx_stop(&fx);
}
END_TEST

/* Checks every session's message events on OUT against client order
 * c-1, c-2, ...: counts distinct events, duplicates and order violations
 * (an event that is not the successor of the session's previous one). */
static void check_session_order(out_log *o, int nsess, int per_sess, size_t *distinct, size_t *dups,
                                size_t *disorder)
{
    int *last = calloc((size_t)nsess, sizeof(int));
    char **seen = calloc((size_t)nsess, sizeof(char *));

    *distinct = 0;
    *dups = 0;
    *disorder = 0;
    for (int s = 0; s < nsess; s++)
        seen[s] = calloc(100000, 1);
    pthread_mutex_lock(&o->mu);
    for (size_t i = 0; i < o->n; i++) {
        const Sluice__Envelope *e = o->v[i].env;
        int s, c;
        if (e->body_case != SLUICE__ENVELOPE__BODY_MESSAGE || sscanf(e->session, "s%d", &s) != 1 ||
            sscanf(e->client_id, "c-%d", &c) != 1)
            continue;
        ck_assert(s >= 0 && s < nsess && c > 0 && c < 100000);
        if (seen[s][c]) {
            (*dups)++;
            continue;
        }
        seen[s][c] = 1;
        (*distinct)++;
        if (c != last[s] + 1) {
            (*disorder)++;
            fprintf(stderr, "order: session s%d: c-%d after c-%d\n", s, c, last[s]);
        }
        last[s] = c;
    }
    pthread_mutex_unlock(&o->mu);
    for (int s = 0; s < nsess; s++) {
        if (per_sess > 0)
            ck_assert_int_le(last[s], per_sess);
        free(seen[s]);
    }
    free(seen);
    free(last);
}

/* Number of lines of a file that contain needle. */
static size_t count_lines_with(const char *path, const char *needle)
{
    char *text = hx_file_tail(path, 64u << 20);
    size_t n = 0;

    for (const char *p = text; p != NULL && (p = strstr(p, needle)) != NULL; p++)
        n++;
    free(text);
    return n;
}

/* Two replicas share the durable: both process messages, and each
 * session's order holds although its messages go to either replica and
 * are published out of order. */
START_TEST(test_two_replicas_share_and_order)
{
    enum { NSESS = 12, PER = 20 };
    fixture fx;
    out_log o;
    size_t distinct, dups, disorder;
    char sess[16], cid[16], prev[16];

    fx_start(&fx, 2, ONE_AGENT, NULL);
    out_start(&fx, &o);
    for (int round = 0; round < PER; round += 2) {
        /* Each session's pair goes out reversed: c-(n+1) before c-n. */
        for (int s = 0; s < NSESS; s++) {
            snprintf(sess, sizeof(sess), "s%d", s);
            for (int k = 1; k >= 0; k--) {
                int c = round + k + 1;
                snprintf(cid, sizeof(cid), "c-%d", c);
                snprintf(prev, sizeof(prev), "c-%d", c - 1);
                publish_user(&fx, T1, sess, cid, c > 1 ? prev : NULL, NULL, "x", NULL, NULL);
            }
        }
        hx_sleep_ms(30); /* spread over several fetches so both replicas get some */
    }
    ck_assert(wait_out(&o, SLUICE__ENVELOPE__BODY_MESSAGE, NULL, NSESS * PER, 30000));
    hx_sleep_ms(300);
    check_session_order(&o, NSESS, PER, &distinct, &dups, &disorder);
    ck_assert_uint_eq(distinct, NSESS * PER);
    ck_assert_uint_eq(dups, 0);
    ck_assert_uint_eq(disorder, 0);
    double a = metric(&fx, 0, "sluice_orch_events_total{kind=\"user\"}");
    double b = metric(&fx, 1, "sluice_orch_events_total{kind=\"user\"}");
    ck_assert_msg(a > 0 && b > 0, "replicas processed %.0f and %.0f", a, b);
    ck_assert_double_eq(a + b, NSESS * PER);
    out_stop(&o);
    fx_stop(&fx);
}
END_TEST

typedef struct loader {
    fixture *fx;
    int nsess;
    _Atomic int stop;
    _Atomic int sent; /* messages accepted by IN */
    _Atomic int failed;
    int per_sess[64]; /* at most 64 sessions */
    pthread_t thread;
} loader;

static void *load_main(void *arg)
{
    loader *ld = arg;
    char sess[16], cid[16], prev[16];

    for (int round = 1; round <= 10000 && !atomic_load(&ld->stop); round++) {
        for (int s = 0; s < ld->nsess; s++) {
            snprintf(sess, sizeof(sess), "s%d", s);
            snprintf(cid, sizeof(cid), "c-%d", round);
            snprintf(prev, sizeof(prev), "c-%d", round - 1);
            if (try_publish_user(ld->fx, T1, sess, cid, round > 1 ? prev : NULL, "lobby", "load",
                                 NULL, NULL) != NATS_OK) {
                atomic_fetch_add(&ld->failed, 1);
                return NULL;
            }
            ld->per_sess[s] = round;
            atomic_fetch_add(&ld->sent, 1);
        }
        /* 5 messages/s per session: a busy user, within the gateway's
         * default rate limit. */
        hx_sleep_ms(200);
    }
    return NULL;
}

/* Replicas are SIGKILLed at random points of a loaded run, at least 10
 * times; afterwards no accepted message is lost, none is shown twice,
 * every session's order holds and every job has exactly one final reply. */
START_TEST(test_sigkill_under_load)
{
    enum { NSESS = 40, KILLS = 12 };
    const char *env[] = {"SLUICE_CAUSAL_WAIT_MS=5000", NULL};
    fixture fx;
    out_log o;
    fake_worker w;
    loader ld = {0};
    size_t distinct, dups, disorder, finals = 0, final_dups = 0, gaps = 0;
    unsigned seed = (unsigned)hx_now_ms();

    fx_start(&fx, 2, ONE_AGENT, env);
    out_start(&fx, &o);
    fw_start(&fx, &w, "default", NULL, 5000, 5, FW_REPLY);
    ld.fx = &fx;
    ld.nsess = NSESS;
    ck_assert_int_eq(pthread_create(&ld.thread, NULL, load_main, &ld), 0);
    for (int k = 0; k < KILLS; k++) {
        int victim = (int)(rand_r(&seed) % 2);
        hx_sleep_ms(150 + (int)(rand_r(&seed) % 350));
        ck_assert_int_eq(hx_stack_kill(fx.stack, HX_ORCHESTRATOR, victim, SIGKILL), SL_OK);
        hx_sleep_ms((int)(rand_r(&seed) % 200));
        ck_assert_msg(hx_stack_restart(fx.stack, HX_ORCHESTRATOR, victim) == SL_OK, "%s",
                      hx_error());
    }
    atomic_store(&ld.stop, 1);
    pthread_join(ld.thread, NULL);
    int total = atomic_load(&ld.sent);
    ck_assert_int_eq(atomic_load(&ld.failed), 0);
    /* Everything accepted must come out: the held messages of the last
     * victim come back after the IN AckWait. */
    ck_assert_msg(wait_out(&o, SLUICE__ENVELOPE__BODY_MESSAGE, NULL, (size_t)total, 60000),
                  "only %zu of %d message events",
                  out_count(&o, SLUICE__ENVELOPE__BODY_MESSAGE, NULL), total);
    ck_assert_msg(wait_out(&o, SLUICE__ENVELOPE__BODY_REPLY, NULL, (size_t)total, 60000),
                  "only %zu of %d finals", out_count(&o, SLUICE__ENVELOPE__BODY_REPLY, NULL),
                  total);
    hx_sleep_ms(1000); /* let late duplicates, if any, show up */
    check_session_order(&o, NSESS, 0, &distinct, &dups, &disorder);
    for (int i = 0; i < 2; i++)
        gaps += count_lines_with(hx_stack_log_path(fx.stack, HX_ORCHESTRATOR, i), "causal gap");
    {
        /* Finals: one per job, whatever happened. */
        char **seen = calloc(o.n, sizeof(char *));
        size_t nseen = 0;
        pthread_mutex_lock(&o.mu);
        for (size_t i = 0; i < o.n; i++) {
            const Sluice__Envelope *e = o.v[i].env;
            bool dup = false;
            if (e->body_case != SLUICE__ENVELOPE__BODY_REPLY)
                continue;
            for (size_t j = 0; j < nseen && !dup; j++)
                dup = strcmp(seen[j], e->reply->reply_id) == 0;
            if (dup) {
                final_dups++;
            } else {
                seen[nseen++] = e->reply->reply_id;
                finals++;
            }
        }
        pthread_mutex_unlock(&o.mu);
        free(seen);
    }
    fprintf(stderr,
            "kill test: %d kills, %d accepted, %zu message events (%zu duplicates), "
            "%zu finals (%zu duplicates), %zu lost, %zu replies without a final, "
            "%zu out of order, %zu causal gaps logged\n",
            KILLS, total, distinct, dups, finals, final_dups, (size_t)total - distinct,
            (size_t)total - finals, disorder, gaps);
    if (getenv("ORCH_KEEP_LOGS") != NULL) {
        /* Development aid: keep the orchestrators' logs at $ORCH_KEEP_LOGS-<i>. */
        for (int i = 0; i < 2; i++) {
            char *text = hx_file_tail(hx_stack_log_path(fx.stack, HX_ORCHESTRATOR, i), 256u << 20);
            char *path = hx_strf("%s-%d", getenv("ORCH_KEEP_LOGS"), i);
            if (text != NULL)
                hx_file_write(path, text);
            free(text);
            free(path);
        }
    }
    ck_assert_uint_eq(distinct, (size_t)total);
    ck_assert_uint_eq(dups, 0);
    ck_assert_uint_eq(finals, (size_t)total);
    ck_assert_uint_eq(final_dups, 0);
    fw_stop(&w);
    out_stop(&o);
    fx_stop(&fx);
}
END_TEST

/* A tenant whose queue is full gets busy events (with a retry hint) on the
 * sender's session channel, while another tenant is still served. */
START_TEST(test_tenant_queue_full_busy)
{
    const char *env[] = {"SLUICE_TENANT_QUEUE_MAX=2", "SLUICE_SWEEP_MS=100", NULL};
    fixture fx;
    out_log o;
    fake_worker w;
    char cid[16], prev[16];

    fx_start(&fx, 1, ONE_AGENT, env);
    out_start(&fx, &o);
    /* Only tenant t2 has a worker; t1's queue fills up. */
    fw_start(&fx, &w, "default", "sluice.work.default." T2, 5000, 3, FW_REPLY);
    for (int c = 1; c <= 5; c++) {
        snprintf(cid, sizeof(cid), "c-%d", c);
        snprintf(prev, sizeof(prev), "c-%d", c - 1);
        publish_user(&fx, T1, "sessA", cid, c > 1 ? prev : NULL, "lobby", "hi", NULL, NULL);
    }
    ck_assert(wait_out(&o, SLUICE__ENVELOPE__BODY_BUSY, "sluice.out." T1 ".s.sessA", 3, 10000));
    ck_assert_uint_eq(work_depth(&fx, "sluice.work.default." T1), 2);
    pthread_mutex_lock(&o.mu);
    for (size_t i = 0; i < o.n; i++) {
        const Sluice__Envelope *e = o.v[i].env;
        if (e->body_case != SLUICE__ENVELOPE__BODY_BUSY)
            continue;
        ck_assert_str_eq(e->busy->reason, "tenant_queue_full");
        ck_assert_str_eq(e->busy->agent, "assistant");
        ck_assert_uint_gt(e->busy->retry_after_ms, 0);
        ck_assert(strcmp(e->busy->to, "c-3") == 0 || strcmp(e->busy->to, "c-4") == 0 ||
                  strcmp(e->busy->to, "c-5") == 0);
    }
    pthread_mutex_unlock(&o.mu);
    /* All five messages were still posted to the room. */
    ck_assert(wait_out(&o, SLUICE__ENVELOPE__BODY_MESSAGE, "sluice.out." T1 ".r.lobby", 5, 5000));

    /* Tenant t2 is answered meanwhile. Each message is sent after the
     * previous reply: t2's own bound is 2 too, and three sent at once may
     * all be queued before the worker takes the first, when the third is
     * rightly refused (that is t2's queue being full, not t1's hurting t2). */
    for (int c = 1; c <= 3; c++) {
        snprintf(cid, sizeof(cid), "c-%d", c);
        snprintf(prev, sizeof(prev), "c-%d", c - 1);
        publish_user(&fx, T2, "sessB", cid, c > 1 ? prev : NULL, "lobby", "hi", NULL, NULL);
        ck_assert_msg(
            wait_out(&o, SLUICE__ENVELOPE__BODY_REPLY, "sluice.out." T2 ".r.lobby", (size_t)c,
                     10000),
            "t2 after c-%d: %zu messages, %zu replies, %zu busy; %llu queued; worker saw %ld", c,
            out_count(&o, SLUICE__ENVELOPE__BODY_MESSAGE, "sluice.out." T2 ".r.lobby"),
            out_count(&o, SLUICE__ENVELOPE__BODY_REPLY, "sluice.out." T2 ".r.lobby"),
            out_count(&o, SLUICE__ENVELOPE__BODY_BUSY, "sluice.out." T2 ".s.sessB"),
            (unsigned long long)work_depth(&fx, "sluice.work.default." T2),
            atomic_load(&w.deliveries));
    }
    ck_assert_uint_eq(out_count(&o, SLUICE__ENVELOPE__BODY_BUSY, "sluice.out." T2 ".s.sessB"), 0);
    ck_assert_double_eq(metric(&fx, 0, "sluice_orch_busy_total{reason=\"tenant_queue_full\"}"), 3);
    /* t1's queued jobs are only waiting for a worker: the sweeps (every
     * 100 ms here) leave them alone, although t2's consumer, which is
     * named like a model-wide one, has acked past their sequences. */
    hx_sleep_ms(1000);
    ck_assert_uint_eq(work_depth(&fx, "sluice.work.default." T1), 2);
    ck_assert_uint_eq(out_count(&o, SLUICE__ENVELOPE__BODY_REPLY, "sluice.out." T1 ".r.lobby"), 0);
    fw_stop(&w);
    out_stop(&o);
    fx_stop(&fx);
}
END_TEST

static const char *const ONE_SLOT_AGENT =
    "{\"agents\":[{\"name\":\"assistant\",\"model\":\"default\",\"match\":\"all\","
    "\"fallback\":\"sorry, later\",\"max_concurrent\":1}]}";

typedef struct outcome_cond {
    out_log *o;
    size_t busy, replies; /* counts before the message: either grows */
} outcome_cond;

static bool outcome_seen(void *ud)
{
    outcome_cond *c = ud;
    return out_count(c->o, SLUICE__ENVELOPE__BODY_BUSY, "sluice.out." T1 ".s.sessA") > c->busy ||
           out_count(c->o, SLUICE__ENVELOPE__BODY_REPLY, "sluice.out." T1 ".r.lobby") > c->replies;
}

/* An agent with max_concurrent 1: while the tenant's job runs, its next
 * message gets busy "overloaded"; once the worker wrote the job's end to
 * KV sluice_inflight (which the orchestrator watches) the slot is free
 * again and a later message is answered. Fails when the orchestrator
 * never reads its watch (the slot stays taken). */
START_TEST(test_max_concurrent_slot_freed)
{
    fixture fx;
    out_log o;
    fake_worker w;
    char cid[16], prev[16];
    bool answered = false;

    fx_start(&fx, 1, ONE_SLOT_AGENT, NULL);
    out_start(&fx, &o);
    publish_user(&fx, T1, "sessA", "c-1", NULL, "lobby", "hi", NULL, NULL);
    publish_user(&fx, T1, "sessA", "c-2", "c-1", "lobby", "hi", NULL, NULL);
    ck_assert(wait_out(&o, SLUICE__ENVELOPE__BODY_BUSY, "sluice.out." T1 ".s.sessA", 1, 10000));
    pthread_mutex_lock(&o.mu);
    for (size_t i = 0; i < o.n; i++) {
        const Sluice__Envelope *e = o.v[i].env;
        if (e->body_case != SLUICE__ENVELOPE__BODY_BUSY)
            continue;
        ck_assert_str_eq(e->busy->reason, "overloaded");
        ck_assert_str_eq(e->busy->to, "c-2");
    }
    pthread_mutex_unlock(&o.mu);
    ck_assert_uint_eq(work_depth(&fx, "sluice.work.default." T1), 1);

    /* The worker answers c-1 and writes its end. */
    fw_start(&fx, &w, "default", NULL, 5000, 3, FW_REPLY);
    ck_assert(wait_out(&o, SLUICE__ENVELOPE__BODY_REPLY, "sluice.out." T1 ".r.lobby", 1, 10000));
    /* The end reaches the orchestrator a little after the reply: a message
     * may still find the slot taken, a later one must not. */
    for (int c = 3; c <= 8 && !answered; c++) {
        outcome_cond oc = {
            &o, out_count(&o, SLUICE__ENVELOPE__BODY_BUSY, "sluice.out." T1 ".s.sessA"),
            out_count(&o, SLUICE__ENVELOPE__BODY_REPLY, "sluice.out." T1 ".r.lobby")};
        snprintf(cid, sizeof(cid), "c-%d", c);
        snprintf(prev, sizeof(prev), "c-%d", c - 1);
        publish_user(&fx, T1, "sessA", cid, prev, "lobby", "hi", NULL, NULL);
        ck_assert_msg(hx_wait_until(outcome_seen, &oc, 10000), "no busy and no reply for %s", cid);
        answered =
            out_count(&o, SLUICE__ENVELOPE__BODY_REPLY, "sluice.out." T1 ".r.lobby") > oc.replies;
    }
    ck_assert_msg(answered, "the slot stayed taken after the job ended (%zu busy)",
                  out_count(&o, SLUICE__ENVELOPE__BODY_BUSY, "sluice.out." T1 ".s.sessA"));
    fw_stop(&w);
    out_stop(&o);
    fx_stop(&fx);
}
END_TEST

/* A job that no worker finishes (the only one NAKs every delivery until
 * MaxDeliver) ends with the agent's fallback as the final reply, and the
 * work message is removed so the tenant's slot is free again. */
START_TEST(test_fallback_after_max_deliveries)
{
    const char *agents = "{\"agents\":[{\"name\":\"slowpoke\",\"model\":\"m1\",\"match\":\"all\","
                         "\"fallback\":\"the model is unavailable\"}]}";
    fixture fx;
    out_log o;
    fake_worker w;
    const char *room = "sluice.out." T1 ".r.lobby";

    fx_start(&fx, 1, agents, NULL);
    out_start(&fx, &o);
    fw_start(&fx, &w, "m1", NULL, 1000, 2, FW_NAK);
    publish_user(&fx, T1, "sessA", "c-1", NULL, "lobby", "anyone?", NULL, NULL);
    ck_assert(wait_out(&o, SLUICE__ENVELOPE__BODY_REPLY, room, 1, 20000));
    pthread_mutex_lock(&o.mu);
    for (size_t i = 0; i < o.n; i++) {
        const Sluice__Envelope *e = o.v[i].env;
        if (e->body_case != SLUICE__ENVELOPE__BODY_REPLY)
            continue;
        ck_assert(e->reply->degraded);
        ck_assert_str_eq(e->reply->text, "the model is unavailable");
        ck_assert_str_eq(e->reply->agent, "slowpoke");
        ck_assert_str_eq(e->reply->to, "c-1");
    }
    pthread_mutex_unlock(&o.mu);
    ck_assert_int_ge(atomic_load(&w.deliveries), 2);
    for (int i = 0; i < 100 && work_depth(&fx, NULL) != 0; i++)
        hx_sleep_ms(50);
    ck_assert_uint_eq(work_depth(&fx, NULL), 0);
    ck_assert_double_eq(metric(&fx, 0, "sluice_orch_fallbacks_total"), 1);
    hx_sleep_ms(300);
    ck_assert_uint_eq(out_count(&o, SLUICE__ENVELOPE__BODY_REPLY, room), 1);
    fw_stop(&w);
    out_stop(&o);
    fx_stop(&fx);
}
END_TEST

/* The max-deliveries advisory is core NATS: while no orchestrator runs it
 * is lost. The job still ends: the orchestrators' sweep finds the work
 * message its consumer will not deliver again and ends it with the
 * fallback, exactly once although two replicas sweep at the same time. */
START_TEST(test_fallback_when_advisory_missed)
{
    const char *agents = "{\"agents\":[{\"name\":\"slowpoke\",\"model\":\"m1\",\"match\":\"all\","
                         "\"fallback\":\"the model is unavailable\"}]}";
    fixture fx;
    out_log o;
    fake_worker w;
    natsSubscription *adv = NULL;
    natsMsg *am = NULL;
    kvStore *kv = NULL;
    kvEntry *e = NULL;
    const char *room = "sluice.out." T1 ".r.lobby";
    double fallbacks = 0, swept = 0;
    char key[SL_SUBJECT_MAX];

    fx_start(&fx, 2, agents, NULL);
    out_start(&fx, &o);
    ck_assert_int_eq(natsConnection_SubscribeSync(
                         &adv, fx.nc, "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.SLUICE_WORK.*"),
                     NATS_OK);
    publish_user(&fx, T1, "sessA", "c-1", NULL, "lobby", "anyone?", NULL, NULL);
    ck_assert(wait_out(&o, SLUICE__ENVELOPE__BODY_MESSAGE, room, 1, 10000));
    for (int i = 0; i < 100 && work_depth(&fx, "sluice.work.m1." T1) != 1; i++)
        hx_sleep_ms(50);
    ck_assert_uint_eq(work_depth(&fx, "sluice.work.m1." T1), 1);
    /* No orchestrator from here on while the only worker exhausts the job. */
    for (int i = 0; i < 2; i++)
        ck_assert_int_eq(hx_stack_stop(fx.stack, HX_ORCHESTRATOR, i, SIGTERM, 5000, NULL), SL_OK);
    fw_start(&fx, &w, "m1", NULL, 1000, 2, FW_NAK);
    ck_assert_int_eq(natsSubscription_NextMsg(&am, adv, 20000), NATS_OK);
    natsMsg_Destroy(am);
    ck_assert_int_ge(atomic_load(&w.deliveries), 2);
    ck_assert_uint_eq(out_count(&o, SLUICE__ENVELOPE__BODY_REPLY, room), 0);
    ck_assert_uint_eq(work_depth(&fx, "sluice.work.m1." T1), 1); /* still there, for good */
    /* Both come back; each sweeps at start. */
    for (int i = 0; i < 2; i++)
        ck_assert_msg(hx_stack_restart(fx.stack, HX_ORCHESTRATOR, i) == SL_OK, "%s", hx_error());
    ck_assert(wait_out(&o, SLUICE__ENVELOPE__BODY_REPLY, room, 1, 20000));
    for (int i = 0; i < 100 && work_depth(&fx, NULL) != 0; i++)
        hx_sleep_ms(50);
    ck_assert_uint_eq(work_depth(&fx, NULL), 0);
    pthread_mutex_lock(&o.mu);
    for (size_t i = 0; i < o.n; i++) {
        const Sluice__Envelope *r = o.v[i].env;
        if (r->body_case != SLUICE__ENVELOPE__BODY_REPLY)
            continue;
        ck_assert(r->reply->degraded);
        ck_assert_str_eq(r->reply->text, "the model is unavailable");
        ck_assert_str_eq(r->reply->to, "c-1");
    }
    pthread_mutex_unlock(&o.mu);
    /* The job is marked failed. */
    ck_assert_int_eq(js_KeyValue(&kv, fx.js, SL_KV_INFLIGHT), NATS_OK);
    pthread_mutex_lock(&o.mu);
    snprintf(key, sizeof(key), "%s.%s", T1, o.v[0].env->event_id);
    pthread_mutex_unlock(&o.mu);
    ck_assert_uint_lt(strlen(key) + 2, sizeof(key));
    strcat(key, "-0");
    ck_assert_int_eq(kvStore_Get(&e, kv, key), NATS_OK);
    ck_assert_msg(strstr(kvEntry_ValueString(e), "\"state\":\"failed\"") != NULL, "%s",
                  kvEntry_ValueString(e));
    kvEntry_Destroy(e);
    kvStore_Destroy(kv);
    /* Exactly one final: one fallback published in all, one swept. */
    for (int i = 0; i < 2; i++) {
        double f = metric(&fx, i, "sluice_orch_fallbacks_total");
        double s = metric(&fx, i, "sluice_orch_swept_total");
        fallbacks += f > 0 ? f : 0;
        swept += s > 0 ? s : 0;
    }
    ck_assert_double_eq(fallbacks, 1);
    ck_assert_double_ge(swept, 1);
    hx_sleep_ms(300);
    ck_assert_uint_eq(out_count(&o, SLUICE__ENVELOPE__BODY_REPLY, room), 1);
    natsSubscription_Destroy(adv);
    fw_stop(&w);
    out_stop(&o);
    fx_stop(&fx);
}
END_TEST

/* The WORK sequence and job id of the queued work message answering
 * client message to on subject; 0 when there is none. */
static uint64_t work_seq_for(fixture *fx, const char *subject, const char *to, char *job,
                             size_t joblen)
{
    jsStreamInfo *si = NULL;
    uint64_t found = 0;

    if (js_GetStreamInfo(&si, fx->js, SL_STREAM_WORK, NULL, NULL) != NATS_OK)
        return 0;
    for (uint64_t seq = si->State.FirstSeq; seq <= si->State.LastSeq && found == 0; seq++) {
        natsMsg *m = NULL;
        Sluice__Envelope *e = NULL;
        if (js_GetMsg(&m, fx->js, SL_STREAM_WORK, seq, NULL, NULL) != NATS_OK)
            continue;
        if (strcmp(natsMsg_GetSubject(m), subject) == 0 &&
            sl_envelope_decode(natsMsg_GetData(m), (size_t)natsMsg_GetDataLength(m), &e) == SL_OK &&
            e->work != NULL && strcmp(e->work->to, to) == 0) {
            snprintf(job, joblen, "%s", e->work->job_id);
            found = seq;
        }
        sl_envelope_free(e);
        natsMsg_Destroy(m);
    }
    jsStreamInfo_Destroy(si);
    return found;
}

/* nats-server 2.9.10 can lose work messages it acknowledged (a replica's
 * reset copy of WORK becoming leader). A job whose work message vanishes
 * behind the orchestrator's back, before any worker took it, still ends:
 * the orchestrator that queued it finds the message gone and no end
 * stored, and publishes the agent's fallback as the final reply, once. A
 * job whose message is still queued is left alone and answered later by
 * its worker. Fails without the lost-work check: the reply never ends. */
START_TEST(test_fallback_when_work_message_lost)
{
    const char *env[] = {"SLUICE_SWEEP_MS=100", "SLUICE_LOST_CHECK_MS=300", NULL};
    fixture fx;
    out_log o;
    fake_worker w;
    kvStore *kv = NULL;
    kvEntry *e = NULL;
    const char *room = "sluice.out." T1 ".r.lobby", *subj = "sluice.work.default." T1;
    char job1[SL_ID_MAX + 1] = "", job2[SL_ID_MAX + 1] = "", key[SL_SUBJECT_MAX];
    uint64_t seq1;
    size_t degraded = 0;
    double checks;

    fx_start(&fx, 1, ONE_AGENT, env);
    out_start(&fx, &o);
    /* No worker yet: both jobs stay queued. */
    publish_user(&fx, T1, "sessA", "c-1", NULL, "lobby", "hi", NULL, NULL);
    publish_user(&fx, T1, "sessA", "c-2", "c-1", "lobby", "hi", NULL, NULL);
    for (int i = 0; i < 200 && work_depth(&fx, subj) != 2; i++)
        hx_sleep_ms(50);
    ck_assert_uint_eq(work_depth(&fx, subj), 2);
    seq1 = work_seq_for(&fx, subj, "c-1", job1, sizeof(job1));
    ck_assert_uint_gt(seq1, 0);
    ck_assert_uint_gt(work_seq_for(&fx, subj, "c-2", job2, sizeof(job2)), 0);
    /* The server loses c-1's work message. */
    ck_assert_int_eq(js_DeleteMsg(fx.js, SL_STREAM_WORK, seq1, NULL, NULL), NATS_OK);
    ck_assert_msg(wait_out(&o, SLUICE__ENVELOPE__BODY_REPLY, room, 1, 15000),
                  "the job whose work message vanished never ended");
    pthread_mutex_lock(&o.mu);
    for (size_t i = 0; i < o.n; i++) {
        const Sluice__Envelope *r = o.v[i].env;
        if (r->body_case != SLUICE__ENVELOPE__BODY_REPLY)
            continue;
        ck_assert(r->reply->degraded);
        ck_assert_str_eq(r->reply->text, "sorry, later");
        ck_assert_str_eq(r->reply->to, "c-1");
        ck_assert_str_eq(r->reply->reply_id, job1);
        ck_assert_str_eq(r->reply->agent, "assistant");
    }
    pthread_mutex_unlock(&o.mu);
    /* The job is marked failed, reason lost. */
    ck_assert_int_eq(js_KeyValue(&kv, fx.js, SL_KV_INFLIGHT), NATS_OK);
    snprintf(key, sizeof(key), "%s.%s", T1, job1);
    ck_assert_int_eq(kvStore_Get(&e, kv, key), NATS_OK);
    ck_assert_msg(strstr(kvEntry_ValueString(e), "\"state\":\"failed\"") != NULL &&
                      strstr(kvEntry_ValueString(e), "\"reason\":\"lost\"") != NULL,
                  "%s", kvEntry_ValueString(e));
    kvEntry_Destroy(e);
    kvStore_Destroy(kv);
    ck_assert_double_eq(metric(&fx, 0, "sluice_orch_lost_jobs_total"), 1);
    /* c-2's message is still queued: three checks of it later (it is the
     * only job watched now) it is still there, unanswered. */
    checks = metric(&fx, 0, "sluice_orch_lost_checks_total");
    ck_assert_double_ge(checks, 1);
    ck_assert_double_ge(wait_metric(&fx, 0, "sluice_orch_lost_checks_total", checks + 3, 15000),
                        checks + 3);
    ck_assert_uint_eq(work_depth(&fx, subj), 1);
    ck_assert_uint_eq(out_count(&o, SLUICE__ENVELOPE__BODY_REPLY, room), 1);
    /* Its worker comes and answers it; nothing more is ended. */
    fw_start(&fx, &w, "default", NULL, 5000, 3, FW_REPLY);
    ck_assert(wait_out(&o, SLUICE__ENVELOPE__BODY_REPLY, room, 2, 10000));
    for (int i = 0; i < 100 && work_depth(&fx, NULL) != 0; i++)
        hx_sleep_ms(50);
    ck_assert_uint_eq(work_depth(&fx, NULL), 0);
    /* Once its end reached the orchestrator, c-2 is no longer watched: no
     * check can end it after that. */
    {
        int64_t end = hx_now_ms() + 10000;
        while (metric(&fx, 0, "sluice_orch_lost_watched") != 0 && hx_now_ms() < end)
            hx_sleep_ms(20);
        ck_assert_double_eq(metric(&fx, 0, "sluice_orch_lost_watched"), 0);
    }
    pthread_mutex_lock(&o.mu);
    for (size_t i = 0; i < o.n; i++) {
        const Sluice__Envelope *r = o.v[i].env;
        if (r->body_case == SLUICE__ENVELOPE__BODY_REPLY && r->reply->degraded)
            degraded++;
    }
    pthread_mutex_unlock(&o.mu);
    ck_assert_uint_eq(out_count(&o, SLUICE__ENVELOPE__BODY_REPLY, room), 2);
    ck_assert_uint_eq(degraded, 1);
    ck_assert_double_eq(metric(&fx, 0, "sluice_orch_lost_jobs_total"), 1);
    ck_assert_double_eq(metric(&fx, 0, "sluice_orch_fallbacks_total"), 1);
    fw_stop(&w);
    out_stop(&o);
    fx_stop(&fx);
}
END_TEST

/* A job whose work message vanished while its entry says `running`, and
 * was written less than SLUICE_LOST_CHECK_MS ago, may still be running on
 * a worker (which took the message before it went): the check leaves it
 * alone. Once its worker stops refreshing `running`, it is ended with the
 * fallback like any lost job. Fails if the grace is not honoured (a reply
 * while `running` is fresh) or if a stale `running` keeps it forever. */
START_TEST(test_lost_work_spares_a_running_job)
{
    const char *env[] = {"SLUICE_SWEEP_MS=100", "SLUICE_LOST_CHECK_MS=1000", NULL};
    const char *room = "sluice.out." T1 ".r.lobby", *subj = "sluice.work.default." T1;
    fixture fx;
    out_log o;
    kvStore *kv = NULL;
    char job[SL_ID_MAX + 1] = "", key[SL_SUBJECT_MAX];
    uint64_t seq;
    double checks;
    int64_t end;

    fx_start(&fx, 1, ONE_AGENT, env);
    out_start(&fx, &o);
    ck_assert_int_eq(js_KeyValue(&kv, fx.js, SL_KV_INFLIGHT), NATS_OK);
    publish_user(&fx, T1, "sessA", "c-1", NULL, "lobby", "hi", NULL, NULL);
    for (int i = 0; i < 200 && work_depth(&fx, subj) != 1; i++)
        hx_sleep_ms(20);
    ck_assert_uint_eq(work_depth(&fx, subj), 1);
    seq = work_seq_for(&fx, subj, "c-1", job, sizeof(job));
    ck_assert_uint_gt(seq, 0);
    snprintf(key, sizeof(key), "%s.%s", T1, job);
    /* A worker took it and runs it; then the server loses the message. */
    ck_assert_int_eq(kvStore_PutString(NULL, kv, key, "{\"state\":\"running\"}"), NATS_OK);
    ck_assert_int_eq(js_DeleteMsg(fx.js, SL_STREAM_WORK, seq, NULL, NULL), NATS_OK);
    /* While the worker refreshes `running` (every 100 ms, the grace is
     * 1000 ms), three checks find the message gone and leave the job. */
    checks = metric(&fx, 0, "sluice_orch_lost_checks_total");
    ck_assert_double_ge(checks, 0);
    end = hx_now_ms() + 20000;
    while (metric(&fx, 0, "sluice_orch_lost_checks_total") < checks + 3 && hx_now_ms() < end) {
        ck_assert_int_eq(kvStore_PutString(NULL, kv, key, "{\"state\":\"running\"}"), NATS_OK);
        hx_sleep_ms(100);
    }
    ck_assert_double_ge(metric(&fx, 0, "sluice_orch_lost_checks_total"), checks + 3);
    ck_assert_uint_eq(out_count(&o, SLUICE__ENVELOPE__BODY_REPLY, room), 0);
    /* Registered on the first lost job: absent (-1) until then. */
    ck_assert_double_le(metric(&fx, 0, "sluice_orch_lost_jobs_total"), 0);
    /* The worker is gone: `running` grows stale and the job ends. */
    ck_assert_msg(wait_out(&o, SLUICE__ENVELOPE__BODY_REPLY, room, 1, 15000),
                  "a lost job whose `running` went stale never ended");
    ck_assert_double_eq(metric(&fx, 0, "sluice_orch_lost_jobs_total"), 1);
    kvStore_Destroy(kv);
    out_stop(&o);
    fx_stop(&fx);
}
END_TEST

/* Mentions route to the mentioned agent only; agents answering agents
 * (pinger <-> ponger) stop at the hop limit. */
START_TEST(test_mentions_and_hop_limit)
{
    const char *agents =
        "{\"agents\":["
        "{\"name\":\"summarizer\",\"model\":\"default\",\"match\":\"mention\"},"
        "{\"name\":\"pinger\",\"model\":\"default\",\"match\":{\"regex\":\"^ping$\"}},"
        "{\"name\":\"ponger\",\"model\":\"default\",\"match\":{\"regex\":\"^pong$\"}}]}";
    const char *env[] = {"SLUICE_HOP_LIMIT=3", NULL};
    fixture fx;
    out_log o;
    fake_worker w;

    fx_start(&fx, 1, agents, env);
    out_start(&fx, &o);
    fw_start(&fx, &w, "default", NULL, 5000, 3, FW_REPLY);
    w.post_agent_msgs = true;
    publish_user(&fx, T1, "sessA", "c-1", NULL, "lobby", "hi @Summarizer, wrap up", NULL, NULL);
    publish_user(&fx, T1, "sessA", "c-2", "c-1", "lobby", "mail me at x@summarizer.com", NULL,
                 NULL);
    publish_user(&fx, T1, "sessA", "c-3", "c-2", "lobby", "summarizer without the at", NULL, NULL);
    publish_user(&fx, T1, "sessA", "c-4", "c-3", "lobby", "ping", NULL, NULL);
    /* ping(0) -> pinger: pong(1) -> ponger: ping(2) -> pinger: pong(3) stops. */
    for (int i = 0; i < 250 && metric(&fx, 0, "sluice_orch_hop_limit_total") < 1; i++)
        hx_sleep_ms(20);
    ck_assert_double_eq(metric(&fx, 0, "sluice_orch_hop_limit_total"), 1);
    hx_sleep_ms(500);
    ck_assert_uint_eq(fw_count(&w, "summarizer"), 1);
    ck_assert_uint_eq(fw_count(&w, "pinger"), 2);
    ck_assert_uint_eq(fw_count(&w, "ponger"), 1);
    pthread_mutex_lock(&w.mu);
    for (size_t i = 0; i < w.njobs; i++) {
        if (strcmp(w.jobs[i].agent, "summarizer") == 0)
            ck_assert_str_eq(w.jobs[i].to, "c-1");
        ck_assert_uint_lt(w.jobs[i].hops, 3);
    }
    pthread_mutex_unlock(&w.mu);
    /* Agents' messages were not posted again by the orchestrator: the room
     * holds the 4 user messages and the 4 replies. */
    ck_assert_uint_eq(out_count(&o, SLUICE__ENVELOPE__BODY_MESSAGE, NULL), 4);
    ck_assert(wait_out(&o, SLUICE__ENVELOPE__BODY_REPLY, NULL, 4, 5000));
    fw_stop(&w);
    out_stop(&o);
    fx_stop(&fx);
}
END_TEST

/* A cancel request on core NATS becomes the cancel marker in the cancel
 * bucket (docs/wire.md), which workers check before starting a job. */
START_TEST(test_cancel_marker)
{
    fixture fx;
    kvStore *kv = NULL;
    kvEntry *e = NULL;
    char key[SL_SUBJECT_MAX];
    Sluice__Envelope env = SLUICE__ENVELOPE__INIT;
    Sluice__Cancel c = SLUICE__CANCEL__INIT;
    uint8_t *buf = NULL;
    size_t len = 0;
    natsStatus s = NATS_NOT_FOUND;

    fx_start(&fx, 1, ONE_AGENT, NULL);
    ck_assert_int_eq(js_KeyValue(&kv, fx.js, SL_KV_CANCEL), NATS_OK);
    ck_assert_int_eq(sl_cancel_key(key, sizeof(key), T1, "sessA", "c-17"), SL_OK);
    env.tenant = T1;
    env.session = "sessA";
    c.message_id = "c-17";
    c.user = "u1";
    env.body_case = SLUICE__ENVELOPE__BODY_CANCEL;
    env.cancel = &c;
    ck_assert_int_eq(sl_envelope_encode(&env, &buf, &len), SL_OK);
    /* Core NATS: publish until the marker shows up (the listener may
     * subscribe a moment after /readyz). */
    for (int i = 0; i < 50 && s != NATS_OK; i++) {
        ck_assert_int_eq(natsConnection_Publish(fx.nc, "sluice.ctl.cancel." T1, buf, (int)len),
                         NATS_OK);
        for (int k = 0; k < 10 && s != NATS_OK; k++) {
            hx_sleep_ms(20);
            s = kvStore_Get(&e, kv, key);
        }
    }
    ck_assert_int_eq(s, NATS_OK);
    ck_assert(strstr(kvEntry_ValueString(e), "\"state\":\"cancelled\"") != NULL);
    ck_assert(strstr(kvEntry_ValueString(e), "\"to\":\"c-17\"") != NULL);
    kvEntry_Destroy(e);
    free(buf);
    kvStore_Destroy(kv);
    fx_stop(&fx);
}
END_TEST

/* An invalid agents file stops the process at start with a clear error. */
START_TEST(test_invalid_agents_file)
{
    char *dir = NULL, *file = NULL, *log = NULL, *envv = NULL;
    hx_proc *p = NULL;
    int status = 0;
    const char *bin = getenv("SLUICE_BIN_DIR");
    char *prog;

    ck_assert_int_eq(hx_tmpdir_create("orchbad", &dir), SL_OK);
    file = hx_strf("%s/agents.json", dir);
    log = hx_strf("%s/orch.log", dir);
    ck_assert_int_eq(hx_file_write(file, "{\"agents\":[{\"name\":\"a\",\"model\":\"m\","
                                         "\"match\":{\"regex\":\"(unclosed\"}}]}"),
                     SL_OK);
    envv = hx_strf("SLUICE_AGENTS_FILE=%s", file);
#ifdef __SANITIZE_ADDRESS__
    prog = hx_strf("%s/sluice-orchestrator", bin != NULL ? bin : "build/san/bin");
#else
    prog = hx_strf("%s/sluice-orchestrator", bin != NULL ? bin : "bin");
#endif
    const char *argv[] = {prog, NULL};
    const char *env[] = {envv, "SLUICE_NATS_URL=nats://127.0.0.1:1", NULL};
    ck_assert_int_eq(hx_proc_spawn(&p, "orchestrator", argv, env, log), SL_OK);
    ck_assert_int_eq(hx_proc_wait(p, 5000, &status), SL_OK);
    ck_assert(WIFEXITED(status) && WEXITSTATUS(status) == 2);
    ck_assert(hx_file_contains(log, "bad regex"));
    ck_assert(hx_file_contains(log, "agents.json"));
    hx_proc_destroy(p);
    hx_rm_rf(dir);
    free(prog);
    free(envv);
    free(log);
    free(file);
    free(dir);
}
END_TEST

/* Runs sluice-orchestrator with one argument (NATS unreachable: it must
 * not get that far) and returns its exit status; its output goes to log. */
static int run_orch_with(const char *arg, const char *log)
{
    const char *bin = getenv("SLUICE_BIN_DIR");
    const char *env[] = {"SLUICE_NATS_URL=nats://127.0.0.1:1", NULL};
    hx_proc *p = NULL;
    int status = 0;
    char *prog;

#ifdef __SANITIZE_ADDRESS__
    prog = hx_strf("%s/sluice-orchestrator", bin != NULL ? bin : "build/san/bin");
#else
    prog = hx_strf("%s/sluice-orchestrator", bin != NULL ? bin : "bin");
#endif
    const char *argv[] = {prog, arg, NULL};
    ck_assert_int_eq(hx_proc_spawn(&p, "orchestrator", argv, env, log), SL_OK);
    ck_assert_int_eq(hx_proc_wait(p, 5000, &status), SL_OK);
    hx_proc_destroy(p);
    free(prog);
    ck_assert(WIFEXITED(status));
    return WEXITSTATUS(status);
}

/* A bad option stops the process at start with exit 2 and names the
 * variable; --help prints the options and exits 0. */
START_TEST(test_bad_option_and_help)
{
    char *dir = NULL, *log1 = NULL, *log2 = NULL, *log3 = NULL;

    ck_assert_int_eq(hx_tmpdir_create("orchopt", &dir), SL_OK);
    log1 = hx_strf("%s/bad.log", dir);
    log2 = hx_strf("%s/unknown.log", dir);
    log3 = hx_strf("%s/help.log", dir);
    ck_assert_int_eq(run_orch_with("--hop-limit=101", log1), 2);
    ck_assert(hx_file_contains(log1, "SLUICE_HOP_LIMIT (flag): 101 is outside 0..100"));
    ck_assert_int_eq(run_orch_with("--no-such-flag=1", log2), 2);
    ck_assert(hx_file_contains(log2, "unknown flag '--no-such-flag=1'"));
    ck_assert_int_eq(run_orch_with("--help", log3), 0);
    ck_assert(hx_file_contains(log3, "SLUICE_CAUSAL_WAIT_MS"));
    ck_assert(hx_file_contains(log3, "SLUICE_AGENTS_FILE"));
    hx_rm_rf(dir);
    free(log3);
    free(log2);
    free(log1);
    free(dir);
}
END_TEST

/* The loop keeps the session states it stored, so a session's next
 * message needs no KV read; a state another replica advanced meanwhile
 * is still honoured: the message that follows it waits for a fresh read
 * instead of becoming a gap, and the stale compare-and-set fails and
 * merges instead of overwriting the other replica's ids. */
START_TEST(test_session_state_cache)
{
    const char *env[] = {"SLUICE_CAUSAL_WAIT_MS=20000", NULL};
    const char *chan = "sluice.out." T1 ".s.sessC";
    const char *rt = "sluice_orch_round_trips_total{kind=\"kv_read\"}";
    char cid[16], prev[16], json[1024];
    fixture fx;
    out_log o;
    kvStore *kv = NULL;
    kvEntry *e = NULL;
    uint64_t rev;
    double reads0;
    size_t len;

    fx_start(&fx, 1, ONE_AGENT, env);
    out_start(&fx, &o);
    publish_user(&fx, T1, "sessC", "c-1", NULL, NULL, "x", NULL, NULL);
    ck_assert(wait_out(&o, SLUICE__ENVELOPE__BODY_MESSAGE, chan, 1, 10000));
    reads0 = metric(&fx, 0, rt);
    ck_assert_double_ge(reads0, 1);
    /* One batch each: the cached state serves them all. */
    for (int c = 2; c <= 10; c++) {
        snprintf(cid, sizeof(cid), "c-%d", c);
        snprintf(prev, sizeof(prev), "c-%d", c - 1);
        publish_user(&fx, T1, "sessC", cid, prev, NULL, "x", NULL, NULL);
        ck_assert(wait_out(&o, SLUICE__ENVELOPE__BODY_MESSAGE, chan, (size_t)c, 10000));
    }
    ck_assert_double_eq(metric(&fx, 0, rt), reads0);
    /* Counted once the session state is stored (the event shows before). */
    ck_assert_double_eq(wait_metric(&fx, 0, "sluice_orch_events_total{kind=\"user\"}", 10, 5000),
                        10);

    /* Another replica processed c-11 (we write its state update). */
    ck_assert_int_eq(js_KeyValue(&kv, fx.js, SL_KV_SESSIONS), NATS_OK);
    ck_assert_int_eq(kvStore_Get(&e, kv, T1 ".sessC"), NATS_OK);
    rev = kvEntry_Revision(e);
    ck_assert_msg(strstr(kvEntry_ValueString(e), "\"c-10\"") != NULL, "%s", kvEntry_ValueString(e));
    kvEntry_Destroy(e);
    len = (size_t)snprintf(json, sizeof(json), "{\"last\":\"c-11\",\"recent\":[");
    for (int c = 1; c <= 11; c++)
        len += (size_t)snprintf(json + len, sizeof(json) - len, "%s\"c-%d\"", c > 1 ? "," : "", c);
    snprintf(json + len, sizeof(json) - len, "]}");
    ck_assert_int_eq(kvStore_UpdateString(NULL, kv, T1 ".sessC", json, rev), NATS_OK);

    /* c-12 follows c-11: processed (after a fresh read), not a gap. */
    publish_user(&fx, T1, "sessC", "c-12", "c-11", NULL, "x", NULL, NULL);
    ck_assert(wait_out(&o, SLUICE__ENVELOPE__BODY_MESSAGE, chan, 11, 15000));
    ck_assert_double_eq(wait_metric(&fx, 0, "sluice_orch_events_total{kind=\"user\"}", 11, 5000),
                        11);
    ck_assert_double_eq(metric(&fx, 0, "sluice_orch_causal_gaps_total"), 0);
    ck_assert_double_gt(metric(&fx, 0, rt), reads0);
    /* The stored state holds both replicas' ids. */
    ck_assert_int_eq(kvStore_Get(&e, kv, T1 ".sessC"), NATS_OK);
    ck_assert_msg(strstr(kvEntry_ValueString(e), "\"last\":\"c-12\"") != NULL &&
                      strstr(kvEntry_ValueString(e), "\"c-11\"") != NULL,
                  "%s", kvEntry_ValueString(e));
    kvEntry_Destroy(e);
    kvStore_Destroy(kv);
    out_stop(&o);
    fx_stop(&fx);
}
END_TEST

/* ORCH_TEST=<name> runs one test only (for development). */
#define ADD(tc, t)                                                                                 \
    do {                                                                                           \
        const char *only = getenv("ORCH_TEST");                                                    \
        if (only == NULL || strcmp(only, #t) == 0)                                                 \
            tcase_add_test(tc, t);                                                                 \
    } while (0)

static Suite *suite(void)
{
    Suite *s = suite_create("orchestrator");
    TCase *tc = tcase_create("integ");

    tcase_set_timeout(tc, 180);
    ADD(tc, test_causal_order);
    ADD(tc, test_redelivery_no_second_effect);
    ADD(tc, test_causal_wait_isolated);
    ADD(tc, test_causal_park_bounds);
    ADD(tc, test_two_replicas_share_and_order);
    ADD(tc, test_tenant_queue_full_busy);
    ADD(tc, test_max_concurrent_slot_freed);
    ADD(tc, test_fallback_after_max_deliveries);
    ADD(tc, test_fallback_when_advisory_missed);
    ADD(tc, test_fallback_when_work_message_lost);
    ADD(tc, test_lost_work_spares_a_running_job);
    ADD(tc, test_mentions_and_hop_limit);
    ADD(tc, test_cancel_marker);
    ADD(tc, test_invalid_agents_file);
    ADD(tc, test_bad_option_and_help);
    ADD(tc, test_sigkill_under_load);
    ADD(tc, test_session_state_cache);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(suite());
    int failed;

    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
