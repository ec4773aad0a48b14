/* The main loop's insides, shared by its source files (not for callers:
 * orch_loop.h is the interface): the loop, a batch's items, sessions and
 * doorbells, and the constants they share.
 *   orch_loop.c      create, destroy, metrics, the consumer and the fetch loop
 *   orch_bells.c     doorbells: one core message per work queue that got jobs
 *   orch_sessions.c  the batch's sessions: causal states read at once,
 *                    written back with compare-and-set
 *   orch_item.c      one message: classification, effects (message event,
 *                    in-flight records, work, busy events) and ack/NAK/term
 *   orch_wait.c      causal parking: messages that wait for their predecessor
 *                    go to the park and come back into a batch
 *   orch_batch.c     one batch: decide in causal order, publish the effects in
 *                    rounds, store the sessions, ack
 * They depend one way: orch_loop.c uses orch_batch.c and orch_wait.c;
 * orch_batch.c uses the four others; orch_wait.c uses orch_item.c and
 * orch_sessions.c; orch_item.c uses orch_bells.c; nothing goes the other
 * way. Everything here runs on the loop's thread (orch_loop_run), but for
 * the ready flag (any thread). */
#ifndef ORCH_LOOP_INT_H
#define ORCH_LOOP_INT_H

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
    bool over;           /* over the agent's max_concurrent: busy, not queued */
    int64_t quota_retry; /* > 0: the tenant is over its token quota: busy, not queued */
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
    orch_quota *quota;   /* token quotas: a view of sluice_quota kept by its own thread */
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
            *lost_untracked, *bad, *failed, *hop_stops, *park_full;
        sl_gauge *parked;
        sl_hist *proc;
        sl_hist *wait; /* stored on IN to fetched, first deliveries */
        /* Synchronous waits for the server (docs/wire.md, "Cost of a
         * message"): fetches that returned messages, batched KV reads,
         * waits for publish acknowledgments, one-at-a-time KV calls. */
        sl_counter *rt_fetch, *rt_kv_read, *rt_pub_acks, *rt_kv_sync;
    } m;
};

/* orch_bells.c */
/* Publishes the pending doorbells (best effort) and clears them. */
void orch__bells_flush(orch_loop *l);
/* Counts a stored job in the doorbell of (model, tenant); model must
 * outlive the batch (the agent's). */
void orch__bell_add(orch_loop *l, const char *model, const char *tenant);

/* orch_sessions.c */
/* The index of the item's session among the batch's (added, not loaded,
 * when new), or -1 when its key cannot be built. */
int orch__session_of(orch_loop *l, const item *it);
/* Loads the states of the batch's sessions, from the cache or from KV. */
void orch__sessions_load(orch_loop *l);
/* Fails the undecided user messages of failed sessions among items[0..n). */
void orch__fail_failed_sessions(orch_loop *l, int n);
/* Queues the first compare-and-set of every advanced session. */
void orch__stores_queue(orch_loop *l);
/* Settles the stores (retrying lost races); failed sessions are marked. */
void orch__store_sessions(orch_loop *l);
/* Fails every processed item of a session after its first failed one, and
 * the duplicates of items[0..n) in a session where anything failed. */
void orch__propagate_failures(orch_loop *l, int n);

/* orch_item.c */
/* Decodes and classifies the fetched message it->m (kind, tenant, age). */
void orch__classify(orch_loop *l, item *it, int64_t now_ns);
/* Answers the server for m on its reply subject ("+ACK", "-NAK" with
 * delay_ms when > 0): for parked copies, which cnats counts as answered. */
void orch__raw_reply(orch_loop *l, natsMsg *m, const char *body, int64_t delay_ms);
/* Queues an item's first round: the message event, in-flight records and
 * work requests. */
void orch__queue_effects(orch_loop *l, item *it);
/* Reads the first round's outcomes; queues busy events for refused jobs and
 * counts stored ones in the doorbells. */
void orch__queue_followups(orch_loop *l, item *it);
/* Fails the item when a second-round publish failed. */
void orch__check_followups(orch_loop *l, item *it);
/* Acks, NAKs or terminates the item's message, with its log and metrics. */
void orch__finish(orch_loop *l, item *it, int64_t t0_ns);

/* orch_wait.c */
/* Parks the undecided user messages among items[0..n); true when one past
 * the park's bounds became a gap (the caller decides again). */
bool orch__park_waiting(orch_loop *l, int n);
/* Re-reads from KV the cached sessions of messages that would wait; true
 * when it read any (the caller decides again). */
bool orch__reload_waiting(orch_loop *l, int n);
/* Appends to the batch of n the parked messages that may go on; returns
 * the new size. */
int orch__add_parked(orch_loop *l, int n, int64_t t0);
/* Expires parked copies and re-reads the parked sessions' states (at
 * most every PARK_POLL_MS). */
void orch__park_tend(orch_loop *l);

/* orch_batch.c */
/* Processes l->msgs[0..n) (owned by the loop) with the parked messages
 * that may go on: parked ones move to the park, the others are acked or
 * NAKed and destroyed. */
void orch__process_batch(orch_loop *l, int n);

#endif
