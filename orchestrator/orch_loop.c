#include "orch_loop.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "orch_causal.h"
#include "orch_ctl.h"
#include "orch_dispatch.h"
#include "orch_inflight.h"
#include "orch_kvget.h"
#include "orch_park.h"
#include "orch_pub.h"
#include "orch_router.h"
#include "orch_scache.h"
#include "sl_codec.h"
#include "sl_log.h"
#include "sl_metrics.h"
#include "sl_streams.h"
#include "sl_subject.h"
#include "sl_time.h"

#define NS_PER_MS          1000000LL
#define BATCH_MAX          256
#define PUB_WAIT_MS        5000
#define NAK_FAIL_MS        250
#define CAS_TRIES          8
#define KV_READ_MS         2000  /* bound on a batch's session reads */
#define JERR_WRONG_LAST    10071 /* a compare-and-set lost the race */
#define IN_ACK_WAIT_MAX_MS 30000
#define IN_ACK_WAIT_MIN_MS 1000
#define IN_MAX_ACK_PEND    10000
#define REBUILD_AFTER      50 /* consecutive fetch errors before the subscription is rebuilt */
#define JERR_SUBJ_FULL     10077
#define BELLS_MAX          64   /* distinct (model, tenant) doorbells per flush */
#define PARK_POLL_MS       100  /* re-reads of parked sessions' states (other replicas' progress) */
#define PARK_LEASE_MS      1000 /* a waiting message's NAK delay: how long a copy stays parked */
/* A parked copy is kept this long past its lease: its redelivery, when it
 * comes to this replica, replaces it (so the bounds hold steady); when it
 * went to another replica, the copy is dropped then. */
#define PARK_LEASE_GRACE 1000
/* Parked messages of all tenants on one replica: a quarter of the IN
 * consumer's MaxAckPending, which parked messages hold. */
#define PARK_TOTAL_MAX (IN_MAX_ACK_PEND / 4)
/* Session states kept from one batch to the next (orch_scache): how many,
 * and how long one is trusted (far inside the 2-minute duplicate window). */
#define SCACHE_MAX    2048
#define SCACHE_TTL_MS 30000

typedef enum item_kind { K_BAD, K_USER, K_AGENT } item_kind;

typedef struct job_slot {
    size_t agent;
    char job[ORCH_JOB_MAX];
    bool over; /* over the agent's max_concurrent: busy, not queued */
    int s_work, s_busy, s_fail;
} job_slot;

typedef struct item {
    natsMsg *m;
    Sluice__Envelope *env;
    item_kind kind;
    char tenant[SL_ID_MAX + 1];
    const char *author; /* the agent that wrote an agent message */
    int sess;           /* index into sessions, user messages only */
    int64_t age_ms;
    bool decided, failed;
    bool redelivered; /* delivered before: another replica may have processed it */
    bool parked;      /* waits in the park: the park owns m now */
    bool from_park;   /* a parked copy (NAKed already: answered with raw acks) */
    bool park_full;   /* would have waited, but the park's bounds were reached */
    orch_causal_decision d;
    int order; /* position among processed items, -1 otherwise */
    int s_post;
    job_slot *jobs;
    size_t njobs;
} item;

/* A work queue that got jobs in this batch: its doorbell. */
typedef struct bell {
    const char *model; /* the agent's, owned by the agents set */
    char tenant[SL_ID_MAX + 1];
    int jobs; /* stored in this batch */
} bell;

typedef struct session {
    char key[SL_SUBJECT_MAX];
    orch_causal_state base; /* as loaded from KV */
    orch_causal_state cur;  /* advanced by the batch's decisions */
    uint64_t rev;
    bool failed;
    bool fresh;  /* read from KV: a message of it may have been processed elsewhere */
    bool cached; /* its state came from the cache (a lower bound) */
    int s_store; /* the first store's publish slot, -1 when none */
} session;

struct orch_loop {
    sl_bus *bus;
    const orch_agents *agents;
    orch_loop_cfg cfg;
    kvStore *kv_sessions;
    kvStore *kv_inflight;
    kvStore *kv_cancel;
    orch_kvget *kvget;                 /* batched reads of kv_sessions */
    orch_kv_entry *entries;            /* BATCH_MAX of them */
    char nonce[SL_SESSION_ID_LEN + 1]; /* makes the stores' Nats-Msg-Ids unique */
    uint64_t store_seq;
    natsSubscription *sub;
    orch_pub *pub;
    orch_ctl *ctl;
    orch_inflight *inflight;
    orch_park *park;     /* messages waiting for their predecessor */
    orch_scache *scache; /* session states this replica stored or read lately */
    int64_t last_poll_ms;
    _Atomic int ready;
    natsMsg *msgs[BATCH_MAX]; /* the batch's messages, owned by the loop until parked */
    int nfetched;             /* msgs[0..nfetched) are new, the rest came from the park */
    item items[BATCH_MAX];
    session *sessions; /* BATCH_MAX of them: large, so on the heap */
    int nsess;
    int order[BATCH_MAX]; /* item indexes in processing order */
    int norder;
    bell bells[BELLS_MAX];
    int nbells;
    struct {
        sl_counter *ev_user, *ev_agent, *dups, *waits, *gaps, *dispatched, *busy_full, *busy_conc,
            *bad, *failed, *hop_stops, *park_full;
        sl_gauge *parked;
        sl_hist *proc;
        /* Synchronous waits for the server (docs/wire.md, "Cost of a
         * message"): fetches that returned messages, batched KV reads,
         * waits for publish acknowledgments, one-at-a-time KV calls. */
        sl_counter *rt_fetch, *rt_kv_read, *rt_pub_acks, *rt_kv_sync;
    } m;
};

static void metrics_init(orch_loop *l)
{
    l->m.ev_user =
        sl_counter_get("sluice_orch_events_total", "kind=\"user\"", "messages processed from IN");
    l->m.ev_agent =
        sl_counter_get("sluice_orch_events_total", "kind=\"agent\"", "messages processed from IN");
    l->m.dups = sl_counter_get("sluice_orch_duplicates_total", NULL,
                               "redelivered messages acked without effects");
    l->m.waits = sl_counter_get("sluice_orch_causal_waits_total", NULL,
                                "messages parked to wait for their causal predecessor");
    l->m.gaps = sl_counter_get("sluice_orch_causal_gaps_total", NULL,
                               "messages processed without their predecessor (deadline or park "
                               "bound reached)");
    l->m.park_full = sl_counter_get("sluice_orch_causal_park_full_total", NULL,
                                    "messages processed without their predecessor because the "
                                    "session's or tenant's park was full");
    l->m.parked = sl_gauge_get("sluice_orch_causal_parked", NULL,
                               "messages parked now, waiting for their predecessor");
    l->m.dispatched =
        sl_counter_get("sluice_orch_jobs_dispatched_total", NULL, "work requests queued on WORK");
    l->m.busy_full = sl_counter_get("sluice_orch_busy_total", "reason=\"tenant_queue_full\"",
                                    "jobs refused with a busy event");
    l->m.busy_conc = sl_counter_get("sluice_orch_busy_total", "reason=\"overloaded\"",
                                    "jobs refused with a busy event");
    l->m.bad = sl_counter_get("sluice_orch_bad_messages_total", NULL,
                              "IN messages that are not valid envelopes (terminated)");
    l->m.failed = sl_counter_get("sluice_orch_retries_total", NULL,
                                 "messages NAKed because an effect could not be stored");
    l->m.hop_stops = sl_counter_get("sluice_orch_hop_limit_total", NULL,
                                    "agent messages not routed because of the hop limit");
    l->m.proc =
        sl_hist_get("sluice_orch_processing_seconds", NULL, "time from fetch to ack of a message");
#define RT_HELP "synchronous waits for nats-server on the orchestrator's main loop"
    l->m.rt_fetch = sl_counter_get("sluice_orch_round_trips_total", "kind=\"fetch\"", RT_HELP);
    l->m.rt_kv_read = sl_counter_get("sluice_orch_round_trips_total", "kind=\"kv_read\"", RT_HELP);
    l->m.rt_pub_acks =
        sl_counter_get("sluice_orch_round_trips_total", "kind=\"pub_acks\"", RT_HELP);
    l->m.rt_kv_sync = sl_counter_get("sluice_orch_round_trips_total", "kind=\"kv_sync\"", RT_HELP);
#undef RT_HELP
}

sl_status orch_loop_create(orch_loop **out, sl_bus *bus, const orch_agents *agents,
                           const orch_loop_cfg *cfg)
{
    orch_loop *l = NULL;

    if (bus == NULL || agents == NULL || cfg == NULL || cfg->batch < 1 || cfg->batch > BATCH_MAX ||
        cfg->park_per_session < 0 || cfg->park_per_tenant < 0)
        return SL_ERR_INVAL;
    l = calloc(1, sizeof(*l));
    if (l == NULL)
        return SL_ERR_NOMEM;
    l->sessions = calloc(BATCH_MAX, sizeof(*l->sessions));
    l->entries = calloc(BATCH_MAX, sizeof(*l->entries));
    if (l->sessions == NULL || l->entries == NULL ||
        orch_scache_create(&l->scache, SCACHE_MAX, SCACHE_TTL_MS) != SL_OK ||
        orch_park_create(&l->park, cfg->park_per_session, cfg->park_per_tenant, PARK_TOTAL_MAX) !=
            SL_OK) {
        orch_scache_destroy(l->scache);
        free(l->sessions);
        free(l->entries);
        free(l);
        return SL_ERR_NOMEM;
    }
    sl_session_id_new(l->nonce);
    l->bus = bus;
    l->agents = agents;
    l->cfg = *cfg;
    metrics_init(l);
    *out = l;
    return SL_OK;
}

bool orch_loop_ready(const orch_loop *l)
{
    return l != NULL && atomic_load(&l->ready) != 0 && sl_bus_ready(l->bus);
}

static void teardown(orch_loop *l)
{
    atomic_store(&l->ready, 0);
    orch_ctl_destroy(l->ctl);
    l->ctl = NULL;
    orch_inflight_destroy(l->inflight);
    l->inflight = NULL;
    if (l->sub != NULL) {
        /* Bound to the durable: destroying never deletes the consumer. */
        natsSubscription_Destroy(l->sub);
        l->sub = NULL;
    }
    orch_pub_destroy(l->pub);
    l->pub = NULL;
    orch_kvget_destroy(l->kvget);
    l->kvget = NULL;
    kvStore_Destroy(l->kv_sessions);
    l->kv_sessions = NULL;
    kvStore_Destroy(l->kv_inflight);
    l->kv_inflight = NULL;
    kvStore_Destroy(l->kv_cancel);
    l->kv_cancel = NULL;
}

void orch_loop_destroy(orch_loop *l)
{
    if (l == NULL)
        return;
    /* Parked messages go back to the server for another replica (before
     * the connection goes: the caller destroys the bus after us). */
    orch_park_destroy(l->park, l->sub != NULL ? sl_bus_nc(l->bus) : NULL);
    sl_gauge_set(l->m.parked, 0);
    teardown(l);
    for (int i = 0; i < BATCH_MAX; i++)
        orch_kv_entry_clear(&l->entries[i]);
    free(l->entries);
    free(l->sessions);
    orch_scache_destroy(l->scache);
    free(l);
}

/* The IN AckWait: shorter than the causal wait, so that the messages a
 * crashed replica held come back before their successors give up waiting
 * for them (otherwise a crash would turn into causal gaps). */
static int64_t in_ack_wait_ms(int64_t causal_wait_ms)
{
    int64_t w = causal_wait_ms / 2;

    if (w > IN_ACK_WAIT_MAX_MS)
        w = IN_ACK_WAIT_MAX_MS;
    if (w < IN_ACK_WAIT_MIN_MS)
        w = IN_ACK_WAIT_MIN_MS;
    return w;
}

/* Ensures the shared durable exists with the wire.md settings. */
static sl_status ensure_consumer(jsCtx *js, int64_t causal_wait_ms)
{
    jsConsumerInfo *ci = NULL;
    jsConsumerConfig cc;
    jsErrCode jerr = 0;
    natsStatus s;

    s = js_GetConsumerInfo(&ci, js, SL_STREAM_IN, ORCH_DURABLE, NULL, &jerr);
    if (s == NATS_NOT_FOUND) {
        jsConsumerConfig_Init(&cc);
        cc.Durable = ORCH_DURABLE;
        cc.AckPolicy = js_AckExplicit;
        cc.AckWait = in_ack_wait_ms(causal_wait_ms) * NS_PER_MS;
        cc.MaxDeliver = -1;
        cc.MaxAckPending = IN_MAX_ACK_PEND;
        cc.FilterSubject = SL_SUBJECT_IN_ALL;
        cc.DeliverPolicy = js_DeliverAll;
        s = js_AddConsumer(&ci, js, SL_STREAM_IN, &cc, NULL, &jerr);
        if (s != NATS_OK) /* another replica may have created it in between */
            s = js_GetConsumerInfo(&ci, js, SL_STREAM_IN, ORCH_DURABLE, NULL, &jerr);
    }
    jsConsumerInfo_Destroy(ci);
    if (s != NATS_OK) {
        sl_warn("consumer %s on %s: %s (jerr %d)", ORCH_DURABLE, SL_STREAM_IN,
                natsStatus_GetText(s), (int)jerr);
        return SL_ERR_BUS;
    }
    return SL_OK;
}

static sl_status setup(orch_loop *l)
{
    jsSubOptions so;
    jsErrCode jerr = 0;
    natsStatus s;
    sl_status st;

    if (!sl_bus_ready(l->bus))
        return SL_ERR_BUS;
    if (l->kv_sessions == NULL &&
        (st = sl_bus_kv(l->bus, SL_KV_SESSIONS, &l->kv_sessions)) != SL_OK)
        return st;
    if (l->kv_inflight == NULL &&
        (st = sl_bus_kv(l->bus, SL_KV_INFLIGHT, &l->kv_inflight)) != SL_OK)
        return st;
    if (l->kv_cancel == NULL && (st = sl_bus_kv(l->bus, SL_KV_CANCEL, &l->kv_cancel)) != SL_OK)
        return st;
    if (l->pub == NULL && (st = orch_pub_create(&l->pub, sl_bus_nc(l->bus))) != SL_OK)
        return st;
    if (l->kvget == NULL &&
        (st = orch_kvget_create(&l->kvget, sl_bus_nc(l->bus), SL_KV_SESSIONS)) != SL_OK)
        return st;
    if (l->sub == NULL) {
        if ((st = ensure_consumer(sl_bus_js(l->bus), l->cfg.causal_wait_ms)) != SL_OK)
            return st;
        jsSubOptions_Init(&so);
        so.Stream = SL_STREAM_IN;
        so.Consumer = ORCH_DURABLE;
        s = js_PullSubscribe(&l->sub, sl_bus_js(l->bus), SL_SUBJECT_IN_ALL, ORCH_DURABLE, NULL, &so,
                             &jerr);
        if (s != NATS_OK) {
            sl_warn("pull subscribe %s: %s (jerr %d)", ORCH_DURABLE, natsStatus_GetText(s),
                    (int)jerr);
            l->sub = NULL;
            return SL_ERR_BUS;
        }
    }
    if (l->inflight == NULL) {
        if ((st = orch_inflight_create(&l->inflight, l->agents)) != SL_OK)
            return st;
        if ((st = orch_inflight_start(l->inflight, l->kv_inflight)) != SL_OK) {
            orch_inflight_destroy(l->inflight);
            l->inflight = NULL;
            return st;
        }
    }
    if (l->ctl == NULL &&
        (st = orch_ctl_create(&l->ctl, sl_bus_nc(l->bus), sl_bus_js(l->bus), l->kv_inflight,
                              l->kv_cancel, l->cfg.sweep_ms)) != SL_OK)
        return st;
    atomic_store(&l->ready, 1);
    return SL_OK;
}

/* ---- one batch ---- */

static void item_log(const item *it, sl_log_level lvl, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void item_log(const item *it, sl_log_level lvl, const char *fmt, ...)
{
    const Sluice__Envelope *e = it->env;
    sl_log_ctx ctx = {.tenant = it->tenant[0] ? it->tenant : NULL};
    char msg[512];
    va_list ap;

    if (e != NULL) {
        ctx.session = e->session;
        ctx.event = e->event_id;
        ctx.trace = e->trace_id;
    }
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    sl_logf(lvl, &ctx, "%s", msg);
}

/* Decodes and classifies one fetched message. */
static void classify(orch_loop *l, item *it, int64_t now_ns)
{
    const char *subj = natsMsg_GetSubject(it->m);
    char sess[SL_ID_MAX + 1];
    jsMsgMetaData *meta = NULL;
    const Sluice__Envelope *e;

    it->kind = K_BAD;
    it->order = -1;
    it->s_post = -1;
    if (sl_subject_in_parse(subj, it->tenant, sess) != SL_OK)
        return;
    if (sl_envelope_decode(natsMsg_GetData(it->m), (size_t)natsMsg_GetDataLength(it->m),
                           &it->env) != SL_OK)
        return;
    e = it->env;
    if (e->message == NULL || orch_msg_event_id(e) == NULL ||
        (e->tenant[0] != '\0' && strcmp(e->tenant, it->tenant) != 0))
        return;
    if (natsMsg_GetMetaData(&meta, it->m) == NATS_OK) {
        it->age_ms = (now_ns - meta->Timestamp) / NS_PER_MS;
        it->redelivered = meta->NumDelivered > 1;
        jsMsgMetaData_Destroy(meta);
    } else if (e->ts_unix_ns > 0) {
        it->age_ms = (now_ns - e->ts_unix_ns) / NS_PER_MS;
        it->redelivered = true; /* unknown: read the session's state */
    }
    if (strncmp(sess, "a-", 2) == 0) {
        /* An agent's reply posted back: routed, not posted, not ordered. */
        it->author = e->message->agent[0] != '\0' ? e->message->agent : sess + 2;
        if (e->message->room[0] == '\0' && !sl_id_valid(e->session))
            return;
        it->kind = K_AGENT;
        return;
    }
    if (strcmp(e->session, sess) != 0 || !sl_client_id_valid(e->client_id) ||
        (e->prev_event_id[0] != '\0' && !sl_client_id_valid(e->prev_event_id)) ||
        (e->message->room[0] != '\0' && !sl_id_valid(e->message->room)))
        return;
    it->kind = K_USER;
    (void)l;
}

/* Finds the item's session among the batch's, adding it (not loaded yet:
 * sessions_load reads them all at once). */
static int session_of(orch_loop *l, const item *it)
{
    char key[SL_SUBJECT_MAX];
    session *s;

    if (sl_kv_key2(key, sizeof(key), it->tenant, it->env->session) != SL_OK)
        return -1;
    for (int i = 0; i < l->nsess; i++) {
        if (strcmp(l->sessions[i].key, key) == 0)
            return i;
    }
    s = &l->sessions[l->nsess];
    memset(s, 0, sizeof(*s));
    snprintf(s->key, sizeof(s->key), "%s", key);
    s->s_store = -1;
    return l->nsess++;
}

/* Gets the causal state of every session of the batch: from the cache
 * when this replica stored or read it lately and no message of the
 * session in the batch was delivered before (only those can have been
 * processed by another replica) nor waited long enough to become a gap
 * (s->fresh); the others from KV, all
 * requests in flight at once (one round trip instead of one per
 * session). */
static void sessions_load(orch_loop *l)
{
    int idx[BATCH_MAX], n = 0;
    int64_t now = sl_mono_ms();

    for (int i = 0; i < l->nsess; i++) {
        session *s = &l->sessions[i];
        if (!s->fresh && orch_scache_get(l->scache, s->key, now, &s->base, &s->rev)) {
            s->cur = s->base;
            s->cached = true;
            continue;
        }
        idx[n] = i;
        l->entries[n++].key = s->key;
    }
    if (n > 0)
        sl_counter_inc(l->m.rt_kv_read);
    orch_kvget_many(l->kvget, l->entries, (size_t)n, KV_READ_MS);
    for (int k = 0; k < n; k++) {
        session *s = &l->sessions[idx[k]];
        if (orch_causal_from_entry(&l->entries[k], &s->base, &s->rev) != SL_OK) {
            s->failed = true;
            orch_scache_forget(l->scache, s->key);
        } else {
            orch_scache_put(l->scache, s->key, &s->base, s->rev, now);
        }
        s->cur = s->base;
        orch_kv_entry_clear(&l->entries[k]);
        l->entries[k].key = NULL;
    }
}

/* Answers the server for m by publishing body to its reply subject, with
 * {"delay":ns} when delay_ms > 0. Used for parked copies: cnats counts a
 * message as answered after its first NAK and ignores later acks, but the
 * server still takes them. */
static void raw_reply(orch_loop *l, natsMsg *m, const char *body, int64_t delay_ms)
{
    const char *reply = natsMsg_GetReply(m);
    char buf[64];

    if (reply == NULL || reply[0] == '\0')
        return;
    if (delay_ms > 0)
        snprintf(buf, sizeof(buf), "%s {\"delay\":%lld}", body, (long long)(delay_ms * NS_PER_MS));
    else
        snprintf(buf, sizeof(buf), "%s", body);
    (void)natsConnection_PublishString(sl_bus_nc(l->bus), reply, buf);
}

/* Decides the undecided user messages against their sessions' states as
 * the batch advances them, pass after pass, so a batch holding c-2 before
 * c-1 processes both in order. Messages that must wait stay undecided. */
static void decide_passes(orch_loop *l, int n)
{
    bool progress = true;

    for (int pass = 0; pass < n && progress; pass++) {
        progress = false;
        for (int i = 0; i < n; i++) {
            item *it = &l->items[i];
            session *s;
            orch_causal_decision d;
            if (it->kind != K_USER || it->decided)
                continue;
            s = &l->sessions[it->sess];
            d = orch_causal_decide(&s->cur, it->env->client_id, it->env->prev_event_id, it->age_ms,
                                   l->cfg.causal_wait_ms);
            if (d == ORCH_CAUSAL_WAIT)
                continue;
            it->decided = true;
            it->d = d;
            progress = true;
            if (d == ORCH_CAUSAL_DUPLICATE)
                continue;
            orch_causal_advance(&s->cur, it->env->client_id);
            l->order[l->norder++] = i;
        }
    }
}

/* Parks the messages that must wait (the park owns them from then on),
 * the ones that came from the park first, then the new ones, so that the
 * older keep their place. The first message past the park's bounds is
 * processed now as a gap, which may let newer ones of its session go on:
 * returns true then (the caller decides again; the rest stay undecided). */
static bool park_waiting(orch_loop *l, int n)
{
    int64_t now = sl_mono_ms(), lease;

    for (int k = 0; k < n; k++) {
        int i = (k + l->nfetched) % n;
        item *it = &l->items[i];
        session *s;
        sl_status st;
        if (it->kind != K_USER || it->decided)
            continue;
        s = &l->sessions[it->sess];
        it->decided = true;
        it->d = ORCH_CAUSAL_WAIT;
        lease = l->cfg.causal_wait_ms - it->age_ms;
        if (lease > PARK_LEASE_MS)
            lease = PARK_LEASE_MS;
        if (lease < 1)
            lease = 1;
        st = orch_park_add(l->park, it->tenant, s->key, it->env->client_id, it->env->prev_event_id,
                           it->m, now + lease + PARK_LEASE_GRACE);
        if (st == SL_OK) {
            /* Back to the server until the lease ends (then redelivered
             * to any replica, as a gap if the wait is over); the copy
             * lets this replica process it sooner. */
            raw_reply(l, it->m, "-NAK", lease);
            it->parked = true;
            l->msgs[i] = NULL;
        } else if (st == SL_ERR_FULL) {
            it->d = ORCH_CAUSAL_GAP;
            it->park_full = true;
            orch_causal_advance(&s->cur, it->env->client_id);
            l->order[l->norder++] = i;
            return true;
        } else {
            it->failed = true; /* NAKed: it comes back */
        }
    }
    return false;
}

/* Decides every message of the batch: agent messages are processed as
 * they come; user messages in causal order per session, the ones whose
 * predecessor is missing parked (or, past the park's bounds, processed
 * as gaps). */
/* Marks the undecided user messages of failed sessions failed. */
static void fail_failed_sessions(orch_loop *l, int n)
{
    for (int i = 0; i < n; i++) {
        item *it = &l->items[i];
        if (it->kind == K_USER && !it->decided && l->sessions[it->sess].failed) {
            it->decided = true;
            it->failed = true;
        }
    }
}

/* A message that would wait on a cached state may only lack what another
 * replica processed meanwhile: reads the states of those sessions from KV
 * (one round trip for all; none on one replica, where messages wait only
 * when they really came out of order) and bases them on the fresh state,
 * plus this batch's decisions so far (first deliveries, which no other
 * replica can have processed). Returns true when it read any. */
static bool reload_waiting(orch_loop *l, int n)
{
    int idx[BATCH_MAX], m = 0;
    int64_t now = sl_mono_ms();

    for (int i = 0; i < n; i++) {
        const item *it = &l->items[i];
        session *s;
        if (it->kind != K_USER || it->decided)
            continue;
        s = &l->sessions[it->sess];
        if (!s->cached || s->fresh || s->failed)
            continue;
        s->fresh = true; /* once */
        idx[m] = it->sess;
        l->entries[m++].key = s->key;
    }
    if (m == 0)
        return false;
    sl_counter_inc(l->m.rt_kv_read);
    orch_kvget_many(l->kvget, l->entries, (size_t)m, KV_READ_MS);
    for (int k = 0; k < m; k++) {
        session *s = &l->sessions[idx[k]];
        s->cached = false;
        if (orch_causal_from_entry(&l->entries[k], &s->base, &s->rev) != SL_OK) {
            s->failed = true;
            orch_scache_forget(l->scache, s->key);
        } else {
            orch_scache_put(l->scache, s->key, &s->base, s->rev, now);
            s->cur = s->base;
            for (int j = 0; j < l->norder; j++) {
                const item *it = &l->items[l->order[j]];
                if (it->kind == K_USER && it->sess == idx[k] &&
                    !orch_causal_seen(&s->cur, it->env->client_id))
                    orch_causal_advance(&s->cur, it->env->client_id);
            }
        }
        orch_kv_entry_clear(&l->entries[k]);
        l->entries[k].key = NULL;
    }
    fail_failed_sessions(l, n);
    return true;
}

static void decide_all(orch_loop *l, int n)
{
    for (int i = 0; i < n; i++) {
        item *it = &l->items[i];
        if (it->kind == K_AGENT) {
            it->decided = true;
            it->d = ORCH_CAUSAL_PROCESS;
            l->order[l->norder++] = i;
        } else if (it->kind == K_USER) {
            it->sess = session_of(l, it);
            if (it->sess < 0)
                it->kind = K_BAD;
            else if (it->redelivered || it->from_park || it->age_ms >= l->cfg.causal_wait_ms / 2)
                /* Only the KV state may let it be a duplicate or a gap. */
                l->sessions[it->sess].fresh = true;
        }
    }
    sessions_load(l);
    fail_failed_sessions(l, n);
    decide_passes(l, n);
    if (reload_waiting(l, n))
        decide_passes(l, n);
    while (park_waiting(l, n))
        decide_passes(l, n);
}

/* Queues an item's first-round effects: the message event, then per agent
 * the in-flight record and the work request. */
static void queue_effects(orch_loop *l, item *it)
{
    const Sluice__Envelope *e = it->env;
    size_t idx[ORCH_AGENTS_MAX];
    size_t n;
    int64_t wall = sl_now_ns() / NS_PER_MS;

    if (it->kind == K_USER &&
        orch_queue_post(l->pub, e, it->tenant, natsMsg_GetData(it->m),
                        (size_t)natsMsg_GetDataLength(it->m), &it->s_post) != SL_OK) {
        it->failed = true;
        return;
    }
    n = orch_route(l->agents, e->message->text, it->kind == K_AGENT ? it->author : NULL, e->hops,
                   (uint32_t)l->cfg.hop_limit, idx, ORCH_AGENTS_MAX);
    if (n == 0 && it->kind == K_AGENT && e->hops >= l->cfg.hop_limit) {
        sl_counter_inc(l->m.hop_stops);
        item_log(it, SL_LOG_INFO, "hop limit reached; agent message from %s not routed",
                 it->author);
    }
    if (n == 0)
        return;
    it->jobs = calloc(n, sizeof(*it->jobs));
    if (it->jobs == NULL) {
        it->failed = true;
        return;
    }
    it->njobs = n;
    for (size_t j = 0; j < n; j++) {
        job_slot *js = &it->jobs[j];
        const orch_agent *a = &l->agents->v[idx[j]];
        js->agent = idx[j];
        js->s_work = js->s_busy = js->s_fail = -1;
        if (orch_job_id(js->job, sizeof(js->job), e, idx[j]) != SL_OK) {
            item_log(it, SL_LOG_WARN, "cannot make a job id for agent %s; skipped", a->name);
            js->over = false;
            continue;
        }
        if (a->max_concurrent > 0 &&
            orch_inflight_active(l->inflight, it->tenant, idx[j]) >= a->max_concurrent) {
            js->over = true;
            continue;
        }
        /* No "queued" in-flight record: the work message is the queued
         * state (docs/wire.md, KV); this replica counts the job from now
         * on, and the worker writes the states that follow. */
        if (orch_queue_work(l->pub, e, it->tenant, a, js->job, l->cfg.model_timeout_ms,
                            &js->s_work) != SL_OK)
            it->failed = true;
        else
            orch_inflight_note(l->inflight, it->tenant, js->job, idx[j], wall);
    }
}

/* Rings the doorbells of the work queues that got jobs: a core message on
 * sluice.ctl.work.<model>.<tenant> whose body is the number of jobs
 * stored, sent once they are stored, so a worker that asks the queue right
 * away finds them (docs/wire.md). Best effort: workers also look for jobs
 * on their own every few hundred ms. */
static void bells_flush(orch_loop *l)
{
    char subj[SL_SUBJECT_MAX], body[16];

    for (int i = 0; i < l->nbells; i++) {
        if (sl_subject_bell(subj, sizeof(subj), l->bells[i].model, l->bells[i].tenant) != SL_OK)
            continue;
        snprintf(body, sizeof(body), "%d", l->bells[i].jobs);
        (void)natsConnection_PublishString(sl_bus_nc(l->bus), subj, body);
    }
    l->nbells = 0;
}

static void bell_add(orch_loop *l, const char *model, const char *tenant)
{
    for (int i = 0; i < l->nbells; i++) {
        if (strcmp(l->bells[i].model, model) == 0 && strcmp(l->bells[i].tenant, tenant) == 0) {
            l->bells[i].jobs++;
            return;
        }
    }
    if (!sl_id_valid(model) || !sl_id_valid(tenant))
        return;
    if (l->nbells == BELLS_MAX)
        bells_flush(l);
    l->bells[l->nbells].model = model;
    memcpy(l->bells[l->nbells].tenant, tenant, strlen(tenant) + 1); /* a valid id: fits */
    l->bells[l->nbells].jobs = 1;
    l->nbells++;
}

/* Reads the first round's outcomes; queues busy events (and the failed
 * in-flight record) for refused or over-limit jobs. */
static void queue_followups(orch_loop *l, item *it)
{
    const Sluice__Envelope *e = it->env;

    if (it->s_post >= 0 && !orch_pub_ok(l->pub, it->s_post))
        it->failed = true;
    for (size_t j = 0; j < it->njobs && !it->failed; j++) {
        job_slot *js = &it->jobs[j];
        const orch_agent *a = &l->agents->v[js->agent];
        const char *reason = NULL;
        uint32_t retry = 0;
        if (js->job[0] == '\0')
            continue;
        if (js->over) {
            reason = "overloaded";
            retry = (uint32_t)orch_inflight_retry_after_ms(
                l->inflight, it->tenant, a->model, a->max_concurrent, sl_now_ns() / NS_PER_MS);
            sl_counter_inc(l->m.busy_conc);
        } else {
            orch_pub_result rw = orch_pub_get(l->pub, js->s_work);
            if (rw.err == NATS_OK) {
                if (!rw.duplicate) {
                    sl_counter_inc(l->m.dispatched);
                    bell_add(l, a->model, it->tenant);
                }
                continue;
            }
            if (rw.jerr != JERR_SUBJ_FULL) {
                it->failed = true;
                break;
            }
            reason = "tenant_queue_full";
            retry = (uint32_t)orch_inflight_retry_after_ms(l->inflight, it->tenant, a->model,
                                                           l->cfg.tenant_queue_max,
                                                           sl_now_ns() / NS_PER_MS);
            sl_counter_inc(l->m.busy_full);
            {
                char *json = NULL;
                if (orch_job_json(&json, "failed", e->session,
                                  e->message_id[0] ? e->message_id : e->client_id, a->name,
                                  "busy") != SL_OK ||
                    orch_queue_job_state(l->pub, it->tenant, js->job, "f", json, &js->s_fail) !=
                        SL_OK)
                    it->failed = true;
                free(json);
            }
        }
        if (orch_queue_busy(l->pub, e, it->tenant, a->name, js->job, reason, retry, &js->s_busy) !=
            SL_OK)
            it->failed = true;
    }
}

static void check_followups(orch_loop *l, item *it)
{
    for (size_t j = 0; j < it->njobs && !it->failed; j++) {
        const job_slot *js = &it->jobs[j];
        if ((js->s_busy >= 0 && !orch_pub_ok(l->pub, js->s_busy)) ||
            (js->s_fail >= 0 && !orch_pub_ok(l->pub, js->s_fail)))
            it->failed = true;
    }
}

/* Collects the ids the batch processed for session si, in order, up to
 * the session's first failed item (later ones must wait for it). */
static int session_ids(orch_loop *l, int si, const char **ids)
{
    int nids = 0;

    for (int k = 0; k < l->norder; k++) {
        item *it = &l->items[l->order[k]];
        if (it->kind != K_USER || it->sess != si)
            continue;
        if (it->failed)
            break;
        ids[nids++] = it->env->client_id;
    }
    return nids;
}

/* Queues the first store of every advanced session as an asynchronous
 * compare-and-set on its revision (all in flight at once). */
static void stores_queue(orch_loop *l)
{
    for (int si = 0; si < l->nsess; si++) {
        session *s = &l->sessions[si];
        const char *ids[BATCH_MAX];
        char subj[SL_SUBJECT_MAX + 32], id[96], rev[32];
        char *json = NULL;
        int nids;

        s->s_store = -1;
        if (s->failed || (nids = session_ids(l, si, ids)) == 0)
            continue;
        s->cur = s->base;
        for (int k = 0; k < nids; k++)
            if (!orch_causal_seen(&s->cur, ids[k]))
                orch_causal_advance(&s->cur, ids[k]);
        if (orch_causal_format(&s->cur, &json) != SL_OK)
            continue; /* store_sessions tries again */
        (void)sl_kv_subject(subj, sizeof(subj), SL_KV_SESSIONS, s->key);
        /* Unique: a CAS must never be dropped as a duplicate of another. */
        snprintf(id, sizeof(id), "s:%s:%llu", l->nonce, (unsigned long long)++l->store_seq);
        snprintf(rev, sizeof(rev), "%llu", (unsigned long long)s->rev);
        if (orch_pub_add_hdr(l->pub, subj, id, json, strlen(json),
                             "Nats-Expected-Last-Subject-Sequence", rev, &s->s_store) != SL_OK)
            s->s_store = -1;
        free(json);
    }
}

/* Stores each session's advanced state: the first try is the batch's
 * asynchronous compare-and-set (stores_queue, awaited by the caller); on a
 * lost race merges our ids into the winner's state and tries again.
 * Items of a session whose state cannot be stored fail (and are
 * redelivered). */
static void store_sessions(orch_loop *l)
{
    for (int si = 0; si < l->nsess; si++) {
        session *s = &l->sessions[si];
        const char *ids[BATCH_MAX];
        int nids;
        bool stored = false, reload = false;

        if (s->failed) {
            orch_scache_forget(l->scache, s->key);
            continue;
        }
        if ((nids = session_ids(l, si, ids)) == 0)
            continue;
        if (s->s_store >= 0) {
            orch_pub_result r = orch_pub_get(l->pub, s->s_store);
            if (r.done && r.err == NATS_OK && !r.duplicate) {
                /* The stored state is current at its sequence. */
                orch_scache_put(l->scache, s->key, &s->cur, r.seq, sl_mono_ms());
                continue;
            }
            orch_scache_forget(l->scache, s->key);
            if (r.done && r.err == NATS_OK)
                continue;
            if (!(r.done && r.jerr == JERR_WRONG_LAST)) {
                s->failed = true; /* not stored, or not known to be */
                continue;
            }
            reload = true;
        } else {
            orch_scache_forget(l->scache, s->key);
        }
        for (int t = reload ? 1 : 0; t < CAS_TRIES && !stored; t++) {
            sl_status st;
            if (t > 0) {
                sl_counter_inc(l->m.rt_kv_sync);
                if (orch_causal_load(l->kv_sessions, s->key, &s->base, &s->rev) != SL_OK)
                    break;
            }
            /* Our processed ids on top of what is stored: after a lost race
             * the winner's ids stay and ours are added. */
            s->cur = s->base;
            for (int k = 0; k < nids; k++) {
                if (!orch_causal_seen(&s->cur, ids[k]))
                    orch_causal_advance(&s->cur, ids[k]);
            }
            sl_counter_inc(l->m.rt_kv_sync);
            st = orch_causal_store(l->kv_sessions, s->key, &s->cur, s->rev);
            if (st == SL_OK)
                stored = true;
            else if (st != SL_ERR_CONFLICT)
                break;
        }
        if (!stored)
            s->failed = true;
    }
}

/* Fails every processed item of a session after its first failed one. */
static void propagate_failures(orch_loop *l)
{
    for (int si = 0; si < l->nsess; si++) {
        bool fail = l->sessions[si].failed;
        for (int k = 0; k < l->norder; k++) {
            item *it = &l->items[l->order[k]];
            if (it->kind != K_USER || it->sess != si)
                continue;
            if (it->failed)
                fail = true;
            if (fail)
                it->failed = true;
        }
    }
}

static void finish(orch_loop *l, item *it, int64_t t0_ns)
{
    static const char *const names[] = {"process", "duplicate", "wait", "gap"};

    if (it->kind != K_BAD)
        item_log(it, SL_LOG_DEBUG, "%s %s prev %s: %s%s (age %lld ms)",
                 it->kind == K_USER ? "user" : "agent", it->env->client_id, it->env->prev_event_id,
                 names[it->d], it->failed ? ", failed" : "", (long long)it->age_ms);
    switch (it->kind) {
    case K_BAD:
        sl_counter_inc(l->m.bad);
        item_log(it, SL_LOG_WARN, "invalid message on %s; terminated", natsMsg_GetSubject(it->m));
        natsMsg_Term(it->m, NULL);
        return;
    case K_USER:
    case K_AGENT:
        break;
    }
    if (it->failed) {
        sl_counter_inc(l->m.failed);
        if (it->from_park)
            raw_reply(l, it->m, "-NAK", NAK_FAIL_MS);
        else
            natsMsg_NakWithDelay(it->m, NAK_FAIL_MS, NULL);
        return;
    }
    if (it->d == ORCH_CAUSAL_WAIT) {
        /* Parked (and NAKed with its lease as the delay). */
        sl_counter_inc(l->m.waits);
        return;
    }
    if (it->from_park)
        raw_reply(l, it->m, "+ACK", 0);
    else
        natsMsg_Ack(it->m, NULL);
    if (it->d == ORCH_CAUSAL_DUPLICATE) {
        sl_counter_inc(l->m.dups);
        return;
    }
    if (it->d == ORCH_CAUSAL_GAP) {
        sl_counter_inc(l->m.gaps);
        if (it->park_full) {
            sl_counter_inc(l->m.park_full);
            item_log(it, SL_LOG_WARN,
                     "causal gap: processed without its predecessor %s (too many messages of "
                     "this session or tenant wait already, or too many in all)",
                     it->env->prev_event_id);
        } else {
            item_log(it, SL_LOG_WARN, "causal gap: processed without its predecessor %s",
                     it->env->prev_event_id);
        }
    }
    sl_counter_inc(it->kind == K_USER ? l->m.ev_user : l->m.ev_agent);
    sl_hist_observe_ns(l->m.proc, sl_now_ns() - t0_ns);
}

/* Adds to the batch (after its n fetched messages) the parked messages
 * that may go on: those of the sessions whose awaited predecessor the
 * batch holds (with the rest of their session, for the chains behind it),
 * those whose wait ended and those of sessions found advanced. Returns
 * the new size. */
static int add_parked(orch_loop *l, int n, int64_t t0)
{
    int total = n;
    char key[SL_SUBJECT_MAX];

    for (int i = 0; i < n && total < BATCH_MAX; i++) {
        const item *it = &l->items[i];
        if (it->kind != K_USER ||
            sl_kv_key2(key, sizeof(key), it->tenant, it->env->session) != SL_OK)
            continue;
        /* A redelivery of a parked message supersedes its copy. */
        orch_park_drop_id(l->park, key, it->env->client_id);
        total += (int)orch_park_take_session(l->park, key, it->env->client_id, &l->msgs[total],
                                             (size_t)(BATCH_MAX - total));
    }
    if (total < BATCH_MAX)
        total += (int)orch_park_take_ready(l->park, &l->msgs[total], (size_t)(BATCH_MAX - total));
    for (int i = n; i < total; i++) {
        memset(&l->items[i], 0, sizeof(l->items[i]));
        l->items[i].m = l->msgs[i];
        l->items[i].from_park = true;
        classify(l, &l->items[i], t0);
    }
    return total;
}

/* Waits for the round's outstanding publish acknowledgments (counted as
 * a round trip when there are any). */
static void pub_wait(orch_loop *l)
{
    if (orch_pub_outstanding(l->pub))
        sl_counter_inc(l->m.rt_pub_acks);
    orch_pub_wait(l->pub, PUB_WAIT_MS);
}

/* Processes l->msgs[0..n) (owned by the loop): parked ones move to the
 * park, the others are acked or NAKed and destroyed. */
static void process_batch(orch_loop *l, int n)
{
    int64_t t0 = sl_now_ns();

    l->nsess = 0;
    l->norder = 0;
    memset(l->items, 0, sizeof(l->items[0]) * (size_t)n);
    for (int i = 0; i < n; i++) {
        l->items[i].m = l->msgs[i];
        classify(l, &l->items[i], t0);
    }
    l->nfetched = n;
    orch_park_expire(l->park, sl_mono_ms());
    n = add_parked(l, n, t0);
    if (n == 0)
        return;
    decide_all(l, n);

    orch_pub_reset(l->pub);
    for (int k = 0; k < l->norder; k++)
        queue_effects(l, &l->items[l->order[k]]);
    pub_wait(l);

    /* A refused job's busy event goes out in a second round: we only learn
     * of the refusal from the first round's acks. */
    l->nbells = 0;
    for (int k = 0; k < l->norder; k++)
        queue_followups(l, &l->items[l->order[k]]);
    bells_flush(l);
    pub_wait(l);
    for (int k = 0; k < l->norder; k++)
        check_followups(l, &l->items[l->order[k]]);

    propagate_failures(l);
    stores_queue(l);
    pub_wait(l);
    store_sessions(l);
    propagate_failures(l);

    for (int i = 0; i < n; i++) {
        finish(l, &l->items[i], t0);
        sl_envelope_free(l->items[i].env);
        free(l->items[i].jobs);
        l->items[i].env = NULL;
        l->items[i].jobs = NULL;
        natsMsg_Destroy(l->msgs[i]); /* NULL when parked */
        l->msgs[i] = NULL;
    }
    sl_gauge_set(l->m.parked, (int64_t)orch_park_count(l->park));
}

/* Keeps the parked messages from redelivery and learns of their sessions'
 * progress on other replicas: re-reads the parked sessions' states (at
 * most BATCH_MAX per call, round robin) and marks those that may go on. */
static void park_tend(orch_loop *l)
{
    const char *keys[BATCH_MAX];
    size_t n;
    int64_t now = sl_mono_ms();

    if (orch_park_count(l->park) == 0)
        return;
    if (orch_park_expire(l->park, now) > 0)
        sl_gauge_set(l->m.parked, (int64_t)orch_park_count(l->park));
    if (now - l->last_poll_ms < PARK_POLL_MS)
        return;
    l->last_poll_ms = now;
    n = orch_park_sessions(l->park, keys, BATCH_MAX);
    for (size_t i = 0; i < n; i++)
        l->entries[i].key = keys[i];
    if (n > 0)
        sl_counter_inc(l->m.rt_kv_read);
    orch_kvget_many(l->kvget, l->entries, n, KV_READ_MS);
    for (size_t i = 0; i < n; i++) {
        orch_causal_state st;
        uint64_t rev = 0;
        if (orch_causal_from_entry(&l->entries[i], &st, &rev) == SL_OK) {
            orch_park_recheck(l->park, keys[i], &st);
            orch_scache_put(l->scache, keys[i], &st, rev, now);
        }
        orch_kv_entry_clear(&l->entries[i]);
        l->entries[i].key = NULL;
    }
}

sl_status orch_loop_run(orch_loop *l, volatile int *stop)
{
    int errors = 0;
    int64_t last_warn = 0;

    while (!*stop) {
        natsMsgList list = {0};
        jsErrCode jerr = 0;
        natsStatus s;

        if (l->sub == NULL || l->ctl == NULL || l->inflight == NULL) {
            if (setup(l) != SL_OK) {
                for (int i = 0; i < 10 && !*stop; i++)
                    usleep(50 * 1000);
                continue;
            }
            sl_info("consuming %s as durable %s", SL_STREAM_IN, ORCH_DURABLE);
        }
        park_tend(l);
        /* While messages are parked, come back often enough to let them go
         * on soon after their predecessor. */
        s = natsSubscription_Fetch(&list, l->sub, l->cfg.batch,
                                   orch_park_count(l->park) > 0 &&
                                           l->cfg.fetch_timeout_ms > PARK_POLL_MS
                                       ? PARK_POLL_MS
                                       : l->cfg.fetch_timeout_ms,
                                   &jerr);
        if (s == NATS_OK && list.Count > 0) {
            int n;
            sl_counter_inc(l->m.rt_fetch);
            n = list.Count < l->cfg.batch ? list.Count : l->cfg.batch;
            errors = 0;
            for (int i = 0; i < n; i++) {
                l->msgs[i] = list.Msgs[i];
                list.Msgs[i] = NULL;
            }
            natsMsgList_Destroy(&list);
            process_batch(l, n);
            continue;
        }
        natsMsgList_Destroy(&list);
        if (orch_park_count(l->park) > 0 && (s == NATS_OK || s == NATS_TIMEOUT)) {
            /* Nothing new: still let parked messages whose wait ended or
             * whose session advanced elsewhere go on. */
            process_batch(l, 0);
            errors = 0;
            continue;
        }
        if (s == NATS_OK || s == NATS_TIMEOUT) {
            errors = 0;
            continue;
        }
        if (++errors >= REBUILD_AFTER) {
            sl_warn("fetch keeps failing (%s); rebuilding the subscription", natsStatus_GetText(s));
            natsSubscription_Destroy(l->sub);
            l->sub = NULL;
            errors = 0;
        } else if (sl_mono_ms() - last_warn > 5000) {
            sl_warn("fetch: %s (jerr %d); retrying", natsStatus_GetText(s), (int)jerr);
            last_warn = sl_mono_ms();
        }
        for (int i = 0; i < 4 && !*stop; i++)
            usleep(50 * 1000);
    }
    atomic_store(&l->ready, 0);
    return SL_OK;
}
