/* Integration tests of the worker's fair pulling across tenants: a real
 * nats-server and a real sluice-worker; work requests are published to
 * SLUICE_WORK directly with cnats (as the orchestrator does, doorbell
 * included), and OUT is read with an ordered consumer. Assertions are on
 * the order and counts of what the worker wrote, never on timings. */
#include <check.h>
#include <inttypes.h>
#include <nats/nats.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hx.h"
#include "sl_codec.h"
#include "sl_subject.h"

#define MODEL "default"
#define AGENT "helper"

typedef struct tctx {
    hx_stack *stack;
    natsConnection *nc;
    jsCtx *js;
    natsSubscription *out; /* every tenant's OUT, in stream order */
    char prefix[16];       /* tenant names: <prefix>a, <prefix>b, ... */
    /* Final replies read so far, in stream order. */
    char (*finals)[80];
    int nfinals, cap;
} tctx;

static void t_begin(tctx *t, const hx_stack_cfg *cfg)
{
    jsSubOptions so;
    jsErrCode jerr = 0;
    char sid[SL_SESSION_ID_LEN + 1];

    memset(t, 0, sizeof(*t));
    sl_session_id_new(sid);
    snprintf(t->prefix, sizeof(t->prefix), "f%.8s", sid);
    t->cap = 4096;
    t->finals = calloc((size_t)t->cap, sizeof(*t->finals));
    ck_assert_ptr_nonnull(t->finals);
    HX_OK(NULL, hx_stack_start(&t->stack, cfg));
    ck_assert_int_eq(natsConnection_ConnectTo(&t->nc, hx_stack_nats_url(t->stack)), NATS_OK);
    ck_assert_int_eq(natsConnection_JetStream(&t->js, t->nc, NULL), NATS_OK);
    jsSubOptions_Init(&so);
    so.Stream = "SLUICE_OUT";
    so.Ordered = true;
    so.Config.DeliverPolicy = js_DeliverAll;
    ck_assert_int_eq(js_SubscribeSync(&t->out, t->js, "sluice.out.>", NULL, &so, &jerr), NATS_OK);
}

static void t_end(tctx *t)
{
    bool clean = true;

    hx_stack_stop_all_gracefully(t->stack, &clean);
    natsSubscription_Unsubscribe(t->out);
    natsSubscription_Destroy(t->out);
    jsCtx_Destroy(t->js);
    natsConnection_Destroy(t->nc);
    hx_stack_destroy(t->stack);
    free(t->finals);
    nats_CloseAndWait(2000);
    ck_assert_msg(clean, "a worker did not exit cleanly on SIGTERM: %s", hx_error());
}

static void tenant_name(const tctx *t, char *out, size_t n, char which)
{
    snprintf(out, n, "%s%c", t->prefix, which);
}

/* Reads OUT for up to ms, keeping the reply ids of final replies. */
static void pump(tctx *t, int ms)
{
    int64_t until = hx_now_ms() + ms;

    while (hx_now_ms() < until && t->nfinals < t->cap) {
        natsMsg *m = NULL;
        Sluice__Envelope *e = NULL;
        if (natsSubscription_NextMsg(&m, t->out,
                                     until - hx_now_ms() > 0 ? until - hx_now_ms() : 1) != NATS_OK)
            continue;
        if (sl_envelope_decode(natsMsg_GetData(m), (size_t)natsMsg_GetDataLength(m), &e) == SL_OK &&
            e->body_case == SLUICE__ENVELOPE__BODY_REPLY)
            snprintf(t->finals[t->nfinals++], sizeof(t->finals[0]), "%s", e->reply->reply_id);
        sl_envelope_free(e);
        natsMsg_Destroy(m);
    }
}

static int find_final(const tctx *t, const char *job)
{
    for (int i = 0; i < t->nfinals; i++)
        if (strcmp(t->finals[i], job) == 0)
            return i;
    return -1;
}

/* Pumps until job's final reply is read; returns its position or -1. */
static int wait_final(tctx *t, const char *job, int timeout_ms)
{
    int64_t until = hx_now_ms() + timeout_ms;
    int i;

    while ((i = find_final(t, job)) < 0 && hx_now_ms() < until)
        pump(t, 50);
    return i;
}

/* Publishes one work request for tenant (and, with ring, the doorbell the
 * orchestrator rings once jobs are stored); the job id goes to job. */
static void publish_work(tctx *t, const char *tenant, const char *text, char *job, size_t joblen,
                         bool ring)
{
    Sluice__Envelope e = SLUICE__ENVELOPE__INIT;
    Sluice__WorkRequest w = SLUICE__WORK_REQUEST__INIT;
    char eid[SL_EVENT_ID_LEN + 1], sess[SL_SESSION_ID_LEN + 1];
    char subj[SL_SUBJECT_MAX], msg_id[128], to[32];
    static int counter;
    uint8_t *buf = NULL;
    size_t len = 0;
    jsPubOptions po;
    jsErrCode jerr = 0;

    sl_event_id_new(eid);
    sl_session_id_new(sess);
    snprintf(job, joblen, "%s-0", eid);
    snprintf(to, sizeof(to), "c-%d", ++counter);
    e.event_id = eid;
    e.tenant = (char *)tenant;
    e.session = sess;
    e.client_id = to;
    e.message_id = to;
    e.ts_unix_ns = sl_now_ns();
    w.job_id = job;
    w.agent = AGENT;
    w.model = MODEL;
    w.fallback = "unavailable";
    w.text = (char *)text;
    w.user = "u1";
    w.room = "lobby";
    w.to = to;
    w.reply_id = job;
    e.body_case = SLUICE__ENVELOPE__BODY_WORK;
    e.work = &w;
    ck_assert_int_eq(sl_envelope_encode(&e, &buf, &len), SL_OK);
    ck_assert_int_eq(sl_subject_work(subj, sizeof(subj), MODEL, tenant), SL_OK);
    snprintf(msg_id, sizeof(msg_id), "w:%s", job);
    jsPubOptions_Init(&po);
    po.MsgId = msg_id;
    ck_assert_int_eq(js_Publish(NULL, t->js, subj, buf, (int)len, &po, &jerr), NATS_OK);
    free(buf);
    if (ring) {
        snprintf(subj, sizeof(subj), "sluice.ctl.work.%s.%s", MODEL, tenant);
        ck_assert_int_eq(natsConnection_Publish(t->nc, subj, NULL, 0), NATS_OK);
    }
}

static bool consumer_exists(tctx *t, const char *name)
{
    jsConsumerInfo *ci = NULL;
    natsStatus s = js_GetConsumerInfo(&ci, t->js, "SLUICE_WORK", name, NULL, NULL);

    jsConsumerInfo_Destroy(ci);
    return s == NATS_OK;
}

typedef struct gone_ctx {
    tctx *t;
    const char *name;
} gone_ctx;

static bool consumer_gone(void *ud)
{
    gone_ctx *g = ud;
    return !consumer_exists(g->t, g->name);
}

/* ---- Tests ---------------------------------------------------------------- */

/* Tenant A queues 200 slow jobs, then tenant B sends one: B is answered
 * within a few of A's jobs, not after A's backlog (the FIFO a single
 * model-wide consumer gave). */
START_TEST(test_backlog_does_not_delay_other_tenant)
{
    const char *env[] = {"SLUICE_ECHO_TOKEN_DELAY_MS=10", "SLUICE_WORKER_CONCURRENCY=2", NULL};
    hx_stack_cfg cfg = {.workers = 1};
    static char jobs_a[200][SL_EVENT_ID_LEN + 8];
    char job_b[SL_EVENT_ID_LEN + 8];
    char ta[32], tb[32];
    tctx t;
    int fb, a_before = 0, a_total = 0;

    cfg.tier_env[HX_WORKER] = env;
    t_begin(&t, &cfg);
    tenant_name(&t, ta, sizeof(ta), 'a');
    tenant_name(&t, tb, sizeof(tb), 'b');
    /* About 5 tokens of 10 ms each: some 50 ms a job, 2 at a time. */
    for (int i = 0; i < 200; i++)
        publish_work(&t, ta, "one two three four five", jobs_a[i], sizeof(jobs_a[i]), i % 20 == 0);
    /* Let A's backlog start. */
    ck_assert_msg(wait_final(&t, jobs_a[0], 10000) >= 0, "A's first job was not answered");
    publish_work(&t, tb, "quick one", job_b, sizeof(job_b), true);
    fb = wait_final(&t, job_b, 30000);
    HX_ASSERT_MSG(t.stack, fb >= 0, "no final for tenant B's job");
    for (int i = 0; i < fb; i++)
        for (int k = 0; k < 200; k++)
            if (strcmp(t.finals[i], jobs_a[k]) == 0)
                a_before++;
    fprintf(stderr, "fairness: %d of tenant A's 200 jobs ended before tenant B's one\n", a_before);
    /* With FIFO it would be 200 (or 199). A couple of turns at most are
     * expected; half of A's queue is the bound. */
    ck_assert_int_lt(a_before, 100);
    /* And A is still served to the end. */
    ck_assert_msg(wait_final(&t, jobs_a[199], 60000) >= 0, "A's last job was not answered");
    for (int k = 0; k < 200; k++)
        a_total += find_final(&t, jobs_a[k]) >= 0;
    ck_assert_int_eq(a_total, 200);
    t_end(&t);
}
END_TEST

/* Jobs published without a doorbell (a redelivery, a job queued while the
 * worker was away, an orchestrator that does not ring) are found by the
 * worker on its own, for a tenant it never saw. */
START_TEST(test_found_without_doorbell)
{
    hx_stack_cfg cfg = {.workers = 1, .echo_token_delay_ms = 1};
    char job[SL_EVENT_ID_LEN + 8], tn[32], name[96];
    tctx t;

    t_begin(&t, &cfg);
    tenant_name(&t, tn, sizeof(tn), 'q');
    publish_work(&t, tn, "hello there", job, sizeof(job), false);
    HX_ASSERT_MSG(t.stack, wait_final(&t, job, 10000) >= 0, "job not found without a doorbell");
    snprintf(name, sizeof(name), "wrk_%s~%s", MODEL, tn);
    ck_assert(consumer_exists(&t, name));
    t_end(&t);
}
END_TEST

/* A model-wide consumer `wrk_<model>` left by older workers: the worker
 * serves its jobs first, then deletes it (empty, unused) and moves to a
 * consumer per tenant. A per-tenant consumer deleted under a running
 * worker is made again. */
START_TEST(test_legacy_consumer_migration)
{
    hx_stack_cfg cfg = {.workers = 1, .echo_token_delay_ms = 1};
    char jobs[3][SL_EVENT_ID_LEN + 8], later[SL_EVENT_ID_LEN + 8], again[SL_EVENT_ID_LEN + 8];
    char tn[32], name[96];
    jsConsumerConfig cc;
    gone_ctx g;
    tctx t;
    int status = 0;

    t_begin(&t, &cfg);
    tenant_name(&t, tn, sizeof(tn), 'l');
    HX_OK(t.stack, hx_stack_stop(t.stack, HX_WORKER, 0, SIGTERM, 10000, &status));
    /* The stream exists (the worker provisioned it); no per-tenant
     * consumer yet, since no job was published. */
    jsConsumerConfig_Init(&cc);
    cc.Durable = "wrk_" MODEL;
    cc.FilterSubject = "sluice.work." MODEL ".>";
    cc.AckPolicy = js_AckExplicit;
    cc.AckWait = 15000LL * 1000000LL;
    cc.MaxDeliver = 3;
    ck_assert_int_eq(js_AddConsumer(NULL, t.js, "SLUICE_WORK", &cc, NULL, NULL), NATS_OK);
    for (int i = 0; i < 3; i++)
        publish_work(&t, tn, "from the old queue", jobs[i], sizeof(jobs[i]), false);
    HX_OK(t.stack, hx_stack_restart(t.stack, HX_WORKER, 0));
    for (int i = 0; i < 3; i++)
        HX_ASSERT_MSG(t.stack, wait_final(&t, jobs[i], 15000) >= 0,
                      "job %d of the legacy consumer not answered", i);
    g.t = &t;
    g.name = "wrk_" MODEL;
    HX_ASSERT_MSG(t.stack, hx_wait_until(consumer_gone, &g, 10000),
                  "the empty legacy consumer was not deleted");
    publish_work(&t, tn, "to the new queue", later, sizeof(later), true);
    HX_ASSERT_MSG(t.stack, wait_final(&t, later, 10000) >= 0, "job after the migration");
    snprintf(name, sizeof(name), "wrk_%s~%s", MODEL, tn);
    ck_assert(consumer_exists(&t, name));

    /* Deleted by an operator: made again on the next job. */
    ck_assert_int_eq(js_DeleteConsumer(t.js, "SLUICE_WORK", name, NULL, NULL), NATS_OK);
    publish_work(&t, tn, "once more", again, sizeof(again), true);
    HX_ASSERT_MSG(t.stack, wait_final(&t, again, 15000) >= 0, "job after the consumer was deleted");
    ck_assert(consumer_exists(&t, name));
    t_end(&t);
}
END_TEST

static Suite *fair_suite(void)
{
    Suite *s = suite_create("worker_fair");
    TCase *tc = tcase_create("integ");

    tcase_set_timeout(tc, 180);
    tcase_add_test(tc, test_backlog_does_not_delay_other_tenant);
    tcase_add_test(tc, test_found_without_doorbell);
    tcase_add_test(tc, test_legacy_consumer_migration);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(fair_suite());
    int failed;

    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
