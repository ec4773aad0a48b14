/* permcheck: checks deploy/nats/accounts.conf against a real nats-server.
 *
 * deploy/check.sh starts a nats-server whose only configuration is
 * accounts.conf (plus a port and a store), then runs this program with the
 * server's URL and the NATS_PW_* passwords in the environment. It connects
 * as each tier's user and does, through cnats (the client the tiers use),
 * the JetStream work DESIGN.md gives that tier: provisioning, publishing to
 * its streams, pull consumers with ack/nak/in-progress, KV reads, writes
 * and key listings, direct gets, ordered consumers, live copies, cancels,
 * the max-deliveries advisory. Each allowed step must succeed without a
 * permission violation; each forbidden step (another tier's subjects) must
 * be refused by the server. Prints one line per step and a closing
 * "N passed, N failed"; exits 1 if any step failed.
 *
 * Usage: permcheck nats://127.0.0.1:PORT */
#include <nats/nats.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define PC_WAIT_MS       3000 /* allowed requests */
#define PC_DENY_MS       300  /* forbidden requests: the server never answers */
#define PC_FLUSH_MS      2000 /* a flush makes the server's -ERR arrive first */
#define PC_SETTLE_MS     50   /* then cnats reports it from another thread */
#define PC_CONNECT_TRIES 50
#define NS_PER_MS        1000000LL

/* One connection as one NATS user. Owned by main; the violation counter is
 * written by cnats threads. */
typedef struct pc_user {
    const char *name;
    natsConnection *nc;
    jsCtx *js;
    atomic_int violations;
} pc_user;

static int pc_passed;
static int pc_failed;

static void pc_on_error(natsConnection *nc, natsSubscription *sub, natsStatus err, void *closure)
{
    pc_user *u = closure;
    (void)nc;
    (void)sub;
    if (err == NATS_NOT_PERMITTED)
        atomic_fetch_add(&u->violations, 1);
}

static void pc_result(const pc_user *u, const char *step, bool ok, const char *why)
{
    if (ok)
        pc_passed++;
    else
        pc_failed++;
    printf("  %-4s %-12s %s%s%s\n", ok ? "ok" : "FAIL", u->name, step, ok ? "" : ": ",
           ok ? "" : why);
}

/* Waits until the server has answered everything sent so far and cnats
 * has had the time to report its errors (on its own callback thread), or
 * until the violation counter exceeds `above` (at most max_ms). Returns
 * the counter. */
static int pc_settle(pc_user *u, int above, int max_ms)
{
    const struct timespec tick = {0, 10 * NS_PER_MS};

    natsConnection_FlushTimeout(u->nc, PC_FLUSH_MS);
    for (int i = 0; i < max_ms / 10 && atomic_load(&u->violations) <= above; i++)
        nanosleep(&tick, NULL);
    return atomic_load(&u->violations);
}

/* Records an allowed step: s must be NATS_OK and the server must not have
 * reported a permission violation since the previous step. */
static void pc_allowed(pc_user *u, const char *step, natsStatus s)
{
    char why[256];
    int violations;

    pc_settle(u, 0, PC_SETTLE_MS);
    violations = atomic_exchange(&u->violations, 0);
    if (s != NATS_OK) {
        snprintf(why, sizeof(why), "%s (%s)", natsStatus_GetText(s), nats_GetLastError(NULL));
        pc_result(u, step, false, why);
    } else if (violations != 0) {
        pc_result(u, step, false, "permissions violation");
    } else {
        pc_result(u, step, true, NULL);
    }
}

/* Records a forbidden step: the server must have reported a violation
 * since `before` (the counter read before the step). */
static void pc_denied(pc_user *u, const char *step, int before)
{
    pc_result(u, step, pc_settle(u, before, 20 * PC_SETTLE_MS) > before,
              "the server allowed it (accounts.conf too broad)");
    atomic_store(&u->violations, 0);
}

static natsStatus pc_connect(pc_user *u, const char *url)
{
    char var[64];
    const char *pw;
    natsOptions *opts = NULL;
    jsOptions jo;
    natsStatus s;

    snprintf(var, sizeof(var), "NATS_PW_%s", u->name);
    for (char *p = var; *p; p++)
        if (*p >= 'a' && *p <= 'z')
            *p = (char)(*p - 'a' + 'A');
    pw = getenv(var);
    if (pw == NULL) {
        fprintf(stderr, "permcheck: %s is not set\n", var);
        return NATS_INVALID_ARG;
    }
    s = natsOptions_Create(&opts);
    if (s == NATS_OK)
        s = natsOptions_SetURL(opts, url);
    if (s == NATS_OK)
        s = natsOptions_SetUserInfo(opts, u->name, pw);
    if (s == NATS_OK)
        s = natsOptions_SetErrorHandler(opts, pc_on_error, u);
    if (s == NATS_OK)
        s = natsOptions_SetName(opts, "permcheck");
    for (int i = 0; s == NATS_OK && i < PC_CONNECT_TRIES; i++) {
        const struct timespec ts = {0, 100 * NS_PER_MS};
        s = natsConnection_Connect(&u->nc, opts);
        if (s != NATS_NO_SERVER)
            break;
        s = NATS_OK;
        nanosleep(&ts, NULL);
    }
    if (s == NATS_OK && u->nc == NULL)
        s = NATS_NO_SERVER;
    jsOptions_Init(&jo);
    jo.Wait = PC_WAIT_MS;
    if (s == NATS_OK)
        s = natsConnection_JetStream(&u->js, u->nc, &jo);
    natsOptions_Destroy(opts);
    return s;
}

static void pc_close(pc_user *u)
{
    jsCtx_Destroy(u->js);
    natsConnection_Destroy(u->nc);
}

/* What common/sl_streams.c does at start in every tier: look each stream
 * and bucket up, create it when missing, and bring its byte limit to the
 * configuration (an update). */
static natsStatus pc_provision(pc_user *u)
{
    const char *in_s[] = {"sluice.in.>"}, *work_s[] = {"sluice.work.>"},
               *out_s[] = {"sluice.out.>"};
    const char *buckets[] = {"sluice_sessions", "sluice_inflight", "sluice_presence",
                             "sluice_cancel",   "sluice_quota",    "sluice_usage"};
    const char *streams[] = {"SLUICE_IN",          "SLUICE_WORK",        "SLUICE_OUT",
                             "KV_sluice_sessions", "KV_sluice_inflight", "KV_sluice_presence",
                             "KV_sluice_cancel",   "KV_sluice_quota",    "KV_sluice_usage"};
    jsRePublish rp = {.Source = "sluice.out.>", .Destination = "sluice.live.>"};
    jsStreamConfig cfg[3];
    natsStatus s = NATS_OK;

    for (int i = 0; i < 3; i++)
        jsStreamConfig_Init(&cfg[i]);
    cfg[0].Name = "SLUICE_IN";
    cfg[0].Subjects = in_s;
    cfg[1].Name = "SLUICE_WORK";
    cfg[1].Subjects = work_s;
    cfg[1].Retention = js_WorkQueuePolicy;
    cfg[1].MaxMsgsPerSubject = 100;
    cfg[1].Discard = js_DiscardNew;
    cfg[1].DiscardNewPerSubject = true;
    cfg[2].Name = "SLUICE_OUT";
    cfg[2].Subjects = out_s;
    cfg[2].AllowDirect = true;
    cfg[2].RePublish = &rp;
    for (int i = 0; s == NATS_OK && i < 3; i++) {
        jsStreamInfo *si = NULL;
        cfg[i].SubjectsLen = 1;
        cfg[i].Storage = js_FileStorage;
        s = js_GetStreamInfo(&si, u->js, cfg[i].Name, NULL, NULL);
        if (s == NATS_NOT_FOUND)
            s = js_AddStream(&si, u->js, &cfg[i], NULL, NULL);
        jsStreamInfo_Destroy(si);
    }
    for (int i = 0; s == NATS_OK && i < 6; i++) {
        kvStore *kv = NULL;
        kvConfig kc;
        s = js_KeyValue(&kv, u->js, buckets[i]);
        if (s == NATS_NOT_FOUND) {
            kvConfig_Init(&kc);
            kc.Bucket = buckets[i];
            kc.History = 1;
            kc.TTL = 3600 * 1000 * NS_PER_MS;
            s = js_CreateKeyValue(&kv, u->js, &kc);
        }
        kvStore_Destroy(kv);
    }
    for (int i = 0; s == NATS_OK && i < 9; i++) {
        jsStreamInfo *si = NULL, *upd = NULL;
        s = js_GetStreamInfo(&si, u->js, streams[i], NULL, NULL);
        if (s == NATS_OK) {
            si->Config->MaxBytes = si->Config->MaxBytes == 64LL << 20 ? 32LL << 20 : 64LL << 20;
            s = js_UpdateStream(&upd, u->js, si->Config, NULL, NULL);
        }
        jsStreamInfo_Destroy(upd);
        jsStreamInfo_Destroy(si);
    }
    return s;
}

static natsStatus pc_jspub(pc_user *u, const char *subj, const char *msgid, int64_t wait_ms)
{
    jsPubOptions po;
    jsPubAck *pa = NULL;
    natsStatus s;

    jsPubOptions_Init(&po);
    po.MsgId = msgid;
    po.MaxWait = wait_ms;
    s = js_Publish(&pa, u->js, subj, "x", 1, &po, NULL);
    jsPubAck_Destroy(pa);
    return s;
}

static natsStatus pc_kv_put(pc_user *u, const char *bucket, const char *key)
{
    kvStore *kv = NULL;
    uint64_t rev = 0;
    natsStatus s = js_KeyValue(&kv, u->js, bucket);
    if (s == NATS_OK)
        s = kvStore_Put(&rev, kv, key, "v", 1);
    kvStore_Destroy(kv);
    return s;
}

static natsStatus pc_kv_get(pc_user *u, const char *bucket, const char *key)
{
    kvStore *kv = NULL;
    kvEntry *e = NULL;
    natsStatus s = js_KeyValue(&kv, u->js, bucket);
    if (s == NATS_OK)
        s = kvStore_Get(&e, kv, key);
    kvEntry_Destroy(e);
    kvStore_Destroy(kv);
    return s;
}

/* Lists a bucket's keys: a KV watch, i.e. an ordered push consumer. */
static natsStatus pc_kv_keys(pc_user *u, const char *bucket)
{
    kvStore *kv = NULL;
    kvKeysList keys = {NULL, 0};
    natsStatus s = js_KeyValue(&kv, u->js, bucket);
    if (s == NATS_OK)
        s = kvStore_Keys(&keys, kv, NULL);
    if (s == NATS_OK && keys.Count == 0)
        s = NATS_NOT_FOUND;
    kvKeysList_Destroy(&keys);
    kvStore_Destroy(kv);
    return s;
}

static natsStatus pc_direct_next(pc_user *u, const char *stream, const char *subj)
{
    jsDirectGetMsgOptions o;
    natsMsg *m = NULL;
    natsStatus s;

    jsDirectGetMsgOptions_Init(&o);
    o.Sequence = 1;
    o.NextBySubject = subj;
    s = js_DirectGetMsg(&m, u->js, stream, NULL, &o);
    natsMsg_Destroy(m);
    return s;
}

/* Reads the first message of subj through an ordered consumer (replay). */
static natsStatus pc_ordered_first(pc_user *u, const char *subj)
{
    natsSubscription *sub = NULL;
    natsMsg *m = NULL;
    jsSubOptions so;
    natsStatus s;

    jsSubOptions_Init(&so);
    so.Ordered = true;
    so.Config.DeliverPolicy = js_DeliverAll;
    s = js_SubscribeSync(&sub, u->js, subj, NULL, &so, NULL);
    if (s == NATS_OK)
        s = natsSubscription_NextMsg(&m, sub, PC_WAIT_MS);
    natsMsg_Destroy(m);
    if (sub != NULL)
        natsSubscription_Unsubscribe(sub);
    natsSubscription_Destroy(sub);
    return s;
}

/* Creates a durable the way the tiers do (info, add when missing, update
 * when its settings differ), then binds a pull subscription to it. */
static natsStatus pc_pull(pc_user *u, const char *subj, const char *durable, const char *stream,
                          int max_deliver, int64_t ack_wait_ms, jsOptions *jo,
                          natsSubscription **out)
{
    jsConsumerInfo *ci = NULL, *up = NULL;
    jsConsumerConfig cc;
    jsSubOptions so;
    natsStatus s;

    jsConsumerConfig_Init(&cc);
    cc.Durable = durable;
    cc.FilterSubject = subj;
    cc.AckPolicy = js_AckExplicit;
    cc.MaxDeliver = max_deliver;
    cc.AckWait = 2 * ack_wait_ms * NS_PER_MS;
    cc.DeliverPolicy = js_DeliverAll;
    s = js_GetConsumerInfo(&ci, u->js, stream, durable, jo, NULL);
    if (s == NATS_NOT_FOUND)
        s = js_AddConsumer(&ci, u->js, stream, &cc, jo, NULL);
    if (s == NATS_OK) {
        cc.AckWait = ack_wait_ms * NS_PER_MS;
        s = js_UpdateConsumer(&up, u->js, stream, &cc, jo, NULL);
    }
    jsConsumerInfo_Destroy(ci);
    jsConsumerInfo_Destroy(up);
    if (s != NATS_OK)
        return s;
    jsSubOptions_Init(&so);
    so.Stream = stream;
    so.Consumer = durable;
    return js_PullSubscribe(out, u->js, subj, durable, jo, &so, NULL);
}

/* What the worker does for model context: the channel's last message by
 * direct get, then an ordered consumer from a start sequence. */
static natsStatus pc_context(pc_user *u, const char *subj)
{
    jsDirectGetMsgOptions o;
    natsSubscription *sub = NULL;
    natsMsg *m = NULL;
    jsSubOptions so;
    natsStatus s;

    jsDirectGetMsgOptions_Init(&o);
    o.LastBySubject = subj;
    s = js_DirectGetMsg(&m, u->js, "SLUICE_OUT", NULL, &o);
    natsMsg_Destroy(m);
    m = NULL;
    if (s != NATS_OK)
        return s;
    jsSubOptions_Init(&so);
    so.Stream = "SLUICE_OUT";
    so.Ordered = true;
    so.Config.DeliverPolicy = js_DeliverByStartSequence;
    so.Config.OptStartSeq = 1;
    s = js_SubscribeSync(&sub, u->js, subj, NULL, &so, NULL);
    if (s == NATS_OK)
        s = natsSubscription_NextMsg(&m, sub, PC_WAIT_MS);
    natsMsg_Destroy(m);
    if (sub != NULL)
        natsSubscription_Unsubscribe(sub);
    natsSubscription_Destroy(sub);
    return s;
}

static natsStatus pc_fetch(natsSubscription *sub, natsMsg **out, int64_t timeout_ms)
{
    natsMsgList list = {NULL, 0};
    natsStatus s = natsSubscription_Fetch(&list, sub, 1, timeout_ms, NULL);
    if (s == NATS_OK && list.Count == 1) {
        *out = list.Msgs[0];
        list.Msgs[0] = NULL;
    } else if (s == NATS_OK) {
        s = NATS_TIMEOUT;
    }
    natsMsgList_Destroy(&list);
    return s;
}

static natsStatus pc_next(natsSubscription *sub, int64_t timeout_ms, uint64_t *seq_out)
{
    natsMsg *m = NULL;
    natsStatus s = natsSubscription_NextMsg(&m, sub, timeout_ms);
    if (s == NATS_OK && seq_out != NULL) {
        /* The max-deliveries advisory carries the stream sequence. */
        const char *p = strstr(natsMsg_GetData(m), "\"stream_seq\":");
        *seq_out = p ? strtoull(p + 13, NULL, 10) : 0;
        if (*seq_out == 0)
            s = NATS_ERR;
    }
    natsMsg_Destroy(m);
    return s;
}

static int pc_before(pc_user *u)
{
    return pc_settle(u, INT32_MAX, PC_SETTLE_MS);
}

int main(int argc, char **argv)
{
    pc_user gw = {.name = "gateway"}, orch = {.name = "orchestrator"}, wrk = {.name = "worker"},
            ctl = {.name = "sluicectl"};
    pc_user *all[] = {&gw, &orch, &wrk, &ctl};
    natsSubscription *gw_disc = NULL;
    natsSubscription *live = NULL, *cancel = NULL, *advisory = NULL, *in = NULL, *echo = NULL,
                     *slow = NULL, *ctl_live = NULL, *deny = NULL, *orch_cancel = NULL,
                     *bell = NULL, *fair = NULL;
    natsMsg *m = NULL;
    jsOptions deny_js;
    jsStreamNamesList *names = NULL;
    jsConsumerInfoList *cons = NULL;
    jsStreamInfo *si = NULL;
    uint64_t dead_seq = 0;
    natsStatus s;
    int b;

    if (argc != 2) {
        fprintf(stderr, "usage: %s nats://HOST:PORT\n", argv[0]);
        return 2;
    }
    for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++) {
        atomic_init(&all[i]->violations, 0);
        s = pc_connect(all[i], argv[1]);
        if (s != NATS_OK) {
            fprintf(stderr, "permcheck: cannot connect as %s: %s\n", all[i]->name,
                    natsStatus_GetText(s));
            pc_failed++;
            goto cleanup;
        }
    }
    jsOptions_Init(&deny_js);
    deny_js.Wait = PC_DENY_MS;
    printf("permcheck: %s\n", argv[1]);

    /* Every tier provisions at start; the first one creates. */
    pc_allowed(&gw, "provision streams and buckets (create)", pc_provision(&gw));
    pc_allowed(&orch, "provision streams and buckets (look up)", pc_provision(&orch));
    pc_allowed(&wrk, "provision streams and buckets (look up)", pc_provision(&wrk));

    /* Listeners first, so that later publishes reach them. */
    pc_allowed(&gw, "subscribe sluice.live.t1.>",
               natsConnection_SubscribeSync(&live, gw.nc, "sluice.live.t1.>"));
    pc_allowed(&gw, "subscribe sluice.ctl.disconnect.*",
               natsConnection_SubscribeSync(&gw_disc, gw.nc, "sluice.ctl.disconnect.*"));
    pc_allowed(&wrk, "subscribe sluice.ctl.cancel.*",
               natsConnection_SubscribeSync(&cancel, wrk.nc, "sluice.ctl.cancel.*"));
    pc_allowed(&orch, "subscribe sluice.ctl.cancel.*",
               natsConnection_SubscribeSync(&orch_cancel, orch.nc, "sluice.ctl.cancel.*"));
    pc_allowed(&wrk, "subscribe the doorbells sluice.ctl.work.*.*",
               natsConnection_SubscribeSync(&bell, wrk.nc, "sluice.ctl.work.*.*"));
    pc_allowed(&orch, "subscribe max-deliveries advisory of SLUICE_WORK",
               natsConnection_SubscribeSync(
                   &advisory, orch.nc, "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.SLUICE_WORK.*"));
    pc_allowed(&ctl, "subscribe sluice.live.>",
               natsConnection_SubscribeSync(&ctl_live, ctl.nc, "sluice.live.>"));

    /* gateway */
    pc_allowed(&gw, "publish client message to SLUICE_IN",
               pc_jspub(&gw, "sluice.in.t1.s1", "t1:s1:c-1", PC_WAIT_MS));
    pc_allowed(&gw, "publish presence to SLUICE_OUT",
               pc_jspub(&gw, "sluice.out.t1.r.lobby", NULL, PC_WAIT_MS));
    s = natsSubscription_NextMsg(&m, live, PC_WAIT_MS);
    if (s == NATS_OK) {
        const char *seq = NULL;
        s = natsMsgHeader_Get(m, "Nats-Sequence", &seq);
    }
    natsMsg_Destroy(m);
    m = NULL;
    pc_allowed(&gw, "receive the live copy with Nats-Sequence", s);
    pc_allowed(&gw, "get a stored client message from SLUICE_IN",
               js_GetMsg(&m, gw.js, "SLUICE_IN", 1, NULL, NULL));
    natsMsg_Destroy(m);
    m = NULL;
    pc_allowed(&gw, "KV put sluice_sessions", pc_kv_put(&gw, "sluice_sessions", "t1.s1"));
    pc_allowed(&gw, "KV get sluice_sessions", pc_kv_get(&gw, "sluice_sessions", "t1.s1"));
    pc_allowed(&gw, "KV put sluice_presence", pc_kv_put(&gw, "sluice_presence", "t1.lobby.s1"));
    pc_allowed(&gw, "KV put sluice_presence (a gateway's room record)",
               pc_kv_put(&gw, "sluice_presence", "t1.lobby.=G1"));
    pc_allowed(&gw, "KV keys sluice_presence (watch)", pc_kv_keys(&gw, "sluice_presence"));
    pc_allowed(&gw, "direct get next by subject on SLUICE_OUT",
               pc_direct_next(&gw, "SLUICE_OUT", "sluice.out.t1.r.lobby"));
    pc_allowed(&gw, "ordered consumer replay of a room",
               pc_ordered_first(&gw, "sluice.out.t1.r.lobby"));
    pc_allowed(&gw, "publish sluice.ctl.cancel.t1",
               natsConnection_PublishString(gw.nc, "sluice.ctl.cancel.t1", "c-1"));
    pc_allowed(&gw, "publish sluice.ctl.disconnect.t1 (server API)",
               natsConnection_PublishString(gw.nc, "sluice.ctl.disconnect.t1", "alice"));
    b = pc_before(&gw);
    (void)pc_jspub(&gw, "sluice.work.echo.t1", NULL, PC_DENY_MS);
    pc_denied(&gw, "publish to SLUICE_WORK is refused", b);
    b = pc_before(&gw);
    (void)natsConnection_PublishString(gw.nc, "sluice.live.t1.r.lobby", "forged");
    pc_denied(&gw, "publish a forged live copy is refused", b);
    b = pc_before(&gw);
    (void)natsConnection_SubscribeSync(&deny, gw.nc, "sluice.in.>");
    pc_denied(&gw, "subscribe sluice.in.> is refused", b);
    natsSubscription_Destroy(deny);
    deny = NULL;

    /* orchestrator */
    s = pc_pull(&orch, "sluice.in.>", "orch", "SLUICE_IN", -1, 30000, NULL, &in);
    pc_allowed(&orch, "create and bind durable orch on SLUICE_IN", s);
    s = in ? pc_fetch(in, &m, PC_WAIT_MS) : NATS_ERR;
    if (s == NATS_OK)
        s = natsMsg_NakWithDelay(m, 100, NULL);
    natsMsg_Destroy(m);
    m = NULL;
    pc_allowed(&orch, "fetch + nak with delay (causal wait)", s);
    s = in ? pc_fetch(in, &m, PC_WAIT_MS) : NATS_ERR;
    if (s == NATS_OK)
        s = natsMsg_Ack(m, NULL);
    natsMsg_Destroy(m);
    m = NULL;
    pc_allowed(&orch, "fetch the redelivery + ack", s);
    pc_allowed(&orch, "queue work on SLUICE_WORK (echo)",
               pc_jspub(&orch, "sluice.work.echo.t1", "t1:job-1", PC_WAIT_MS));
    pc_allowed(&orch, "queue work on SLUICE_WORK (slow)",
               pc_jspub(&orch, "sluice.work.slow.t1", "t1:job-2", PC_WAIT_MS));
    pc_allowed(&orch, "post to a room on SLUICE_OUT",
               pc_jspub(&orch, "sluice.out.t1.r.lobby", NULL, PC_WAIT_MS));
    pc_allowed(&orch, "KV put sluice_inflight", pc_kv_put(&orch, "sluice_inflight", "t1.job-1"));
    pc_allowed(&orch, "KV put sluice_sessions (causal state)",
               pc_kv_put(&orch, "sluice_sessions", "t1.s1"));
    pc_allowed(&orch, "KV get sluice_presence", pc_kv_get(&orch, "sluice_presence", "t1.lobby.s1"));
    pc_allowed(&orch, "KV watch sluice_inflight", pc_kv_keys(&orch, "sluice_inflight"));
    pc_allowed(&orch, "KV put sluice_cancel (cancel marker)",
               pc_kv_put(&orch, "sluice_cancel", "t1.x-00"));
    s = natsSubscription_NextMsg(&m, orch_cancel, PC_WAIT_MS);
    natsMsg_Destroy(m);
    m = NULL;
    pc_allowed(&orch, "receive a cancel", s);
    b = pc_before(&orch);
    (void)pc_jspub(&orch, "sluice.in.t1.s2", NULL, PC_DENY_MS);
    pc_denied(&orch, "publish to SLUICE_IN is refused", b);
    b = pc_before(&orch);
    (void)pc_kv_put(&orch, "sluice_presence", "t1.lobby.s9");
    pc_denied(&orch, "KV put sluice_presence is refused", b);
    b = pc_before(&orch);
    (void)natsConnection_PublishString(orch.nc, "sluice.ctl.cancel.t1", "job-1");
    pc_denied(&orch, "publish a cancel is refused", b);

    /* worker */
    s = pc_pull(&wrk, "sluice.work.echo.>", "wrk_echo", "SLUICE_WORK", 3, 15000, NULL, &echo);
    pc_allowed(&wrk, "create, update and bind durable wrk_echo on SLUICE_WORK", s);
    s = echo ? pc_fetch(echo, &m, PC_WAIT_MS) : NATS_ERR;
    if (s == NATS_OK)
        s = natsMsg_InProgress(m, NULL);
    if (s == NATS_OK)
        s = natsMsg_Ack(m, NULL);
    natsMsg_Destroy(m);
    m = NULL;
    pc_allowed(&wrk, "fetch + in-progress + ack a job", s);
    pc_allowed(&wrk, "stream a token to SLUICE_OUT",
               pc_jspub(&wrk, "sluice.out.t1.s.s1", NULL, PC_WAIT_MS));
    pc_allowed(&wrk, "post the agent's answer to SLUICE_IN",
               pc_jspub(&wrk, "sluice.in.t1.a-echo", "a:r-1", PC_WAIT_MS));
    pc_allowed(&wrk, "read a room's last messages as context",
               pc_context(&wrk, "sluice.out.t1.r.lobby"));
    pc_allowed(&wrk, "KV put sluice_inflight", pc_kv_put(&wrk, "sluice_inflight", "t1.job-1"));
    pc_allowed(&wrk, "KV get sluice_inflight", pc_kv_get(&wrk, "sluice_inflight", "t1.job-1"));
    pc_allowed(&wrk, "KV put sluice_quota (token counter)",
               pc_kv_put(&wrk, "sluice_quota", "t1.1764655200"));
    pc_allowed(&wrk, "KV get sluice_quota (token counter)",
               pc_kv_get(&wrk, "sluice_quota", "t1.1764655200"));
    pc_allowed(&wrk, "KV put sluice_usage (token counter)",
               pc_kv_put(&wrk, "sluice_usage", "t1.5882184.assistant"));
    pc_allowed(&wrk, "KV get sluice_usage (token counter)",
               pc_kv_get(&wrk, "sluice_usage", "t1.5882184.assistant"));
    pc_allowed(&orch, "KV watch sluice_quota (quotas)", pc_kv_keys(&orch, "sluice_quota"));
    pc_allowed(&ctl, "KV watch sluice_usage (usage)", pc_kv_keys(&ctl, "sluice_usage"));
    pc_allowed(&wrk, "KV get sluice_cancel (cancel marker)",
               pc_kv_get(&wrk, "sluice_cancel", "t1.x-00"));
    s = natsSubscription_NextMsg(&m, cancel, PC_WAIT_MS);
    natsMsg_Destroy(m);
    m = NULL;
    pc_allowed(&wrk, "receive a cancel", s);
    /* A job that exhausts its deliveries: the worker takes it and never
     * acks; the server gives up after AckWait and the orchestrator hears
     * of it from the advisory, then deletes the message. */
    s = pc_pull(&wrk, "sluice.work.slow.>", "wrk_slow", "SLUICE_WORK", 1, 500, NULL, &slow);
    if (s == NATS_OK)
        s = pc_fetch(slow, &m, PC_WAIT_MS);
    natsMsg_Destroy(m);
    m = NULL;
    pc_allowed(&wrk, "fetch a job and let it time out", s);
    if (slow != NULL) {
        natsMsg *again = NULL;
        /* A pending pull request makes the server look at the timed-out
         * message again, which is when it sends the advisory. */
        (void)pc_fetch(slow, &again, 1500);
        natsMsg_Destroy(again);
    }
    pc_allowed(&orch, "receive the max-deliveries advisory",
               pc_next(advisory, PC_WAIT_MS, &dead_seq));
    if (dead_seq != 0) {
        pc_allowed(&orch, "get the dead job by sequence",
                   js_GetMsg(&m, orch.js, "SLUICE_WORK", dead_seq, NULL, NULL));
        natsMsg_Destroy(m);
        m = NULL;
        pc_allowed(&orch, "delete the dead job by sequence",
                   js_DeleteMsg(orch.js, "SLUICE_WORK", dead_seq, NULL, NULL));
    }
    /* Fair pulling: a consumer per (model, tenant), found from the stream's
     * per-subject counts and the orchestrator's doorbell, pulled with a
     * no-wait request of our own and acked on its reply subject; an older
     * model-wide consumer is deleted once empty. */
    s = pc_pull(&wrk, "sluice.work.fair.t1", "wrk_fair~t1", "SLUICE_WORK", 3, 15000, NULL, &fair);
    pc_allowed(&wrk, "create and bind a per-tenant durable wrk_fair~t1", s);
    pc_allowed(&orch, "queue work on SLUICE_WORK (fair)",
               pc_jspub(&orch, "sluice.work.fair.t1", "t1:job-3", PC_WAIT_MS));
    pc_allowed(&orch, "ring the doorbell sluice.ctl.work.fair.t1",
               natsConnection_PublishString(orch.nc, "sluice.ctl.work.fair.t1", ""));
    s = natsSubscription_NextMsg(&m, bell, PC_WAIT_MS);
    natsMsg_Destroy(m);
    m = NULL;
    pc_allowed(&wrk, "receive the doorbell", s);
    {
        jsOptions so;
        jsOptions_Init(&so);
        so.Stream.Info.SubjectsFilter = "sluice.work.fair.*";
        s = js_GetStreamInfo(&si, wrk.js, "SLUICE_WORK", &so, NULL);
        if (s == NATS_OK && (si->State.Subjects == NULL || si->State.Subjects->Count != 1))
            s = NATS_ERR;
        jsStreamInfo_Destroy(si);
        si = NULL;
        pc_allowed(&wrk, "read SLUICE_WORK's per-subject counts", s);
    }
    s = natsConnection_RequestString(&m, wrk.nc,
                                     "$JS.API.CONSUMER.MSG.NEXT.SLUICE_WORK.wrk_fair~t1",
                                     "{\"batch\":1,\"no_wait\":true}", PC_WAIT_MS);
    if (s == NATS_OK &&
        (natsMsg_GetReply(m) == NULL || strncmp(natsMsg_GetReply(m), "$JS.ACK.", 8) != 0))
        s = NATS_ERR;
    if (s == NATS_OK)
        s = natsConnection_PublishString(wrk.nc, natsMsg_GetReply(m), "+ACK");
    natsMsg_Destroy(m);
    m = NULL;
    pc_allowed(&wrk, "pull a job with a no-wait request and ack it", s);
    pc_allowed(&wrk, "delete a consumer on SLUICE_WORK",
               js_DeleteConsumer(wrk.js, "SLUICE_WORK", "wrk_fair~t1", NULL, NULL));
    b = pc_before(&wrk);
    (void)natsConnection_PublishString(wrk.nc, "sluice.ctl.work.fair.t1", "");
    pc_denied(&wrk, "ring a doorbell is refused", b);
    b = pc_before(&wrk);
    (void)pc_jspub(&wrk, "sluice.work.echo.t1", NULL, PC_DENY_MS);
    pc_denied(&wrk, "publish to SLUICE_WORK is refused", b);
    b = pc_before(&wrk);
    (void)pc_kv_put(&wrk, "sluice_sessions", "t1.s1");
    pc_denied(&wrk, "KV put sluice_sessions is refused", b);
    b = pc_before(&wrk);
    (void)pc_kv_put(&wrk, "sluice_cancel", "t1.x-01");
    pc_denied(&wrk, "KV put sluice_cancel is refused", b);

    /* sluicectl */
    pc_allowed(&ctl, "list stream names", js_StreamNames(&names, ctl.js, NULL, NULL));
    pc_allowed(&ctl, "stream info SLUICE_WORK",
               js_GetStreamInfo(&si, ctl.js, "SLUICE_WORK", NULL, NULL));
    pc_allowed(&ctl, "list consumers of SLUICE_IN",
               js_Consumers(&cons, ctl.js, "SLUICE_IN", NULL, NULL));
    pc_allowed(&ctl, "KV get sluice_inflight", pc_kv_get(&ctl, "sluice_inflight", "t1.job-1"));
    pc_allowed(&ctl, "KV keys sluice_presence", pc_kv_keys(&ctl, "sluice_presence"));
    pc_allowed(&ctl, "direct get on SLUICE_OUT",
               pc_direct_next(&ctl, "SLUICE_OUT", "sluice.out.t1.s.s1"));
    pc_allowed(&ctl, "tail SLUICE_IN (ordered consumer)", pc_ordered_first(&ctl, "sluice.in.t1.>"));
    s = natsSubscription_NextMsg(&m, ctl_live, PC_WAIT_MS);
    natsMsg_Destroy(m);
    m = NULL;
    pc_allowed(&ctl, "tail live copies", s);
    b = pc_before(&ctl);
    (void)pc_jspub(&ctl, "sluice.in.t1.s1", NULL, PC_DENY_MS);
    pc_denied(&ctl, "publish to SLUICE_IN is refused", b);
    b = pc_before(&ctl);
    (void)js_DeleteStream(ctl.js, "SLUICE_IN", &deny_js, NULL);
    pc_denied(&ctl, "delete a stream is refused", b);
    b = pc_before(&ctl);
    (void)pc_pull(&ctl, "sluice.work.x.>", "thief", "SLUICE_WORK", 1, 1000, &deny_js, &deny);
    pc_denied(&ctl, "a pull consumer on SLUICE_WORK is refused", b);

cleanup:
    jsStreamNamesList_Destroy(names);
    jsConsumerInfoList_Destroy(cons);
    jsStreamInfo_Destroy(si);
    natsSubscription_Destroy(deny);
    natsSubscription_Destroy(live);
    natsSubscription_Destroy(gw_disc);
    natsSubscription_Destroy(cancel);
    natsSubscription_Destroy(advisory);
    natsSubscription_Destroy(in);
    natsSubscription_Destroy(echo);
    natsSubscription_Destroy(slow);
    natsSubscription_Destroy(ctl_live);
    natsSubscription_Destroy(orch_cancel);
    natsSubscription_Destroy(bell);
    natsSubscription_Destroy(fair);
    for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++)
        pc_close(all[i]);
    nats_Close();
    printf("permcheck: %d passed, %d failed\n", pc_passed, pc_failed);
    return pc_failed == 0 ? 0 : 1;
}
