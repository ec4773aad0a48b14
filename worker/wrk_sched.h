/* Fair pulling across tenants: the worker's table of work queues and the
 * round-robin order in which it asks them for jobs. Pure bookkeeping, no
 * I/O and no clock of its own (times are passed in), so it is tested by
 * feeding it events (tests/unit/check_wrk_sched.c).
 *
 * A queue is one durable pull consumer on SLUICE_WORK: `wrk_<model>~<tenant>`
 * with filter `sluice.work.<model>.<tenant>` (or, while a model still has
 * the model-wide consumer of older workers, `wrk_<model>` with filter
 * `sluice.work.<model>.>`, see wrk_loop.c). A queue is *active* while it
 * may hold jobs this worker could take: it sits in a ring, and the
 * dispatcher takes queues from the ring's head in turn and asks each for a
 * share of the free job slots (one pull request at a time per queue, no
 * waiting on the server: an empty queue answers at once and leaves the
 * ring until something rings it again). A tenant with a long backlog
 * therefore gets one turn per round like any other, instead of every slot
 * until its backlog is gone.
 *
 * Slots are shared fairly by tenant (wrk_fair_grant): each free slot goes
 * to the tenant holding the fewest slots for its weight, and while another
 * tenant is active (it holds or waits for a slot, or did within
 * WRK_FAIR_LINGER_MS) no tenant gets a slot above its share; so a tenant
 * with slow jobs cannot keep another tenant's job waiting for a slot. A
 * tenant alone may use every slot. A tenant's queues (one per model) share
 * its slots. A job asked for is a slot taken: requests are only made for
 * free capacity (free slots, plus the jobs a worker may hold ahead of them:
 * see "Pulling ahead of the slots" below).
 *
 * Not thread-safe: the caller holds one lock around every call. Queue
 * pointers stay valid until wrk_sched_prune() or wrk_sched_destroy() frees
 * them; prune frees only queues that hold nothing and wait for nothing. */
#ifndef WRK_SCHED_H
#define WRK_SCHED_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "sl_status.h"
#include "sl_subject.h"

#define WRK_DURABLE_MAX (2 * SL_ID_MAX + 8)

/* A tenant stays active this long after it last held a slot, so that a
 * tenant with a steady trickle of jobs finds its share free instead of
 * waiting for another tenant's slow job to end. */
#define WRK_FAIR_LINGER_MS 500
#define WRK_WEIGHT_MAX     1000 /* bound on a tenant's weight */
#define WRK_WEIGHTS_MAX    4096 /* bound on the tenants given a weight */

/* One tenant's weight (SLUICE_TENANT_WEIGHTS); tenants not listed weigh 1. */
typedef struct wrk_weight {
    char tenant[SL_ID_MAX + 1];
    int weight; /* 1..WRK_WEIGHT_MAX */
} wrk_weight;

/* Parses "tenantA=2,tenantB=1" (no spaces, no empty items, each tenant a
 * valid id at most once, each weight an integer 1..WRK_WEIGHT_MAX, at most
 * WRK_WEIGHTS_MAX items); "" and NULL give no weights. Returns SL_OK with
 * *out (NULL when *n is 0) owned by the caller (free()), or SL_ERR_INVAL
 * with a reason in err (naming the item, not the variable), or
 * SL_ERR_NOMEM. */
sl_status wrk_weights_parse(const char *spec, wrk_weight **out, size_t *n, char *err,
                            size_t errlen);

/* ---- The fair share, as a pure function (tested in unit tests) --------- */

typedef struct wrk_fair {
    int load;   /* slots the tenant holds or has asked for */
    int weight; /* >= 1 */
    int want;   /* slots it could be given now (jobs it may be asked for; 0: none) */
    int grant;  /* out: slots it gets now */
} wrk_fair;

/* A tenant's share of slots among active tenants whose weights add up to
 * weights: ceil(slots * weight / weights), at least 1. */
int wrk_fair_share(int slots, int weight, int64_t weights);

/* Shares free slots among the n active tenants t (every tenant that holds
 * a slot, has asked for one, waits for one, or did within
 * WRK_FAIR_LINGER_MS) of a worker with slots in all. One slot at a time
 * goes to the tenant, among those that want more, holding the fewest slots
 * for its weight (ties: the lowest index); a tenant at or above its share
 * gets none while another is below its own (that share is kept for it,
 * even when it wants none right now), but when every tenant has its share
 * the rest is shared too (a tenant alone gets every slot). Sets every
 * grant and returns their sum. */
int wrk_fair_grant(wrk_fair *t, size_t n, int slots, int free);

typedef struct wrk_queue {
    uint32_t id;                /* table index: stable while the queue lives */
    size_t model;               /* caller's model index */
    char tenant[SL_ID_MAX + 1]; /* "" for a model's legacy model-wide consumer */
    char durable[WRK_DURABLE_MAX];
    char filter[SL_SUBJECT_MAX];
    bool ready;               /* the consumer is known to exist (wrk_sched_setup_done) */
    bool setting_up;          /* handed out by wrk_sched_unready, not done yet */
    bool claimed;             /* taken by wrk_sched_next(), being set up or requested */
    bool in_ring;             /* waiting for its turn */
    bool pinned;              /* never pruned (set by the caller) */
    int64_t retry_at_ms;      /* not asked before this time (set by the caller after a failure) */
    uint64_t bell;            /* bumped whenever jobs may have arrived */
    int hint;                 /* jobs it is believed to hold for us (not asked for yet) */
    int held;                 /* jobs fetched from it and not yet settled here */
    int waiting;              /* of those, delivered and not started (waiting for a slot) */
    int64_t seen_ms;          /* last time it was rung or delivered a job */
    int64_t failing_since_ms; /* setting up its consumer fails since then (0: it does not) */
    struct wrk_tenant *owner; /* its tenant's share bookkeeping (wrk_sched.c) */
    /* The open pull request (token 0: none). */
    uint64_t req_token;
    int req_batch, req_got;
    uint64_t req_bell; /* bell when the request was made */
    int64_t req_at_ms;
    struct wrk_queue *hnext, *rnext; /* hash chain, ring */
} wrk_queue;

typedef struct wrk_sched wrk_sched;

/* Creates an empty table holding at most max_queues queues (>= 1).
 * Returns SL_OK with *out owned by the caller, SL_ERR_INVAL, SL_ERR_NOMEM. */
sl_status wrk_sched_create(wrk_sched **out, size_t max_queues);

/* Sets the tenants' weights (copied; tenants not listed weigh 1), for
 * tenants known now and to come. Returns SL_OK, SL_ERR_INVAL (a weight out
 * of range) or SL_ERR_NOMEM (nothing changed). */
sl_status wrk_sched_set_weights(wrk_sched *s, const wrk_weight *w, size_t n);

/* Frees the table and every queue. NULL-safe. */
void wrk_sched_destroy(wrk_sched *s);

/* The queue of (model, tenant), created (not ready, not in the ring) when
 * missing and create is set. tenant "" names a model's legacy queue. The
 * durable and filter names are made here. Returns NULL when it does not
 * exist and create is not set, when tenant is not a valid id (and not ""),
 * when model_name is invalid, or when the table is full or out of memory. */
wrk_queue *wrk_sched_queue(wrk_sched *s, size_t model, const char *model_name, const char *tenant,
                           bool create);

/* The queue with this id, or NULL. */
wrk_queue *wrk_sched_by_id(wrk_sched *s, uint32_t id);

/* Jobs may have arrived on q: jobs more (a doorbell says how many were
 * stored; 0 when unknown). Bumps its bell, adds jobs to its hint, notes
 * now_ms as seen, and puts it at the ring's tail unless it is there
 * already, claimed, or has a request open (it is put back when that ends,
 * since it was rung meanwhile). */
void wrk_sched_ring(wrk_sched *s, wrk_queue *q, int64_t now_ms, int jobs);

/* The same when q is known to hold at least jobs for us (the stream's
 * per-subject count minus what this worker holds): the hint becomes at
 * least jobs. */
void wrk_sched_ring_count(wrk_sched *s, wrk_queue *q, int64_t now_ms, int jobs);

/* Number of queues in the ring. */
size_t wrk_sched_active(const wrk_sched *s);

/* Takes the next queue to ask and claims it: the free slots (free > 0;
 * the worker's slots are those free plus those held or asked for) are
 * shared among tenants by wrk_fair_grant, each tenant wanting what its
 * first queue in the ring is believed to hold (at least 1), skipping and
 * keeping queues not ready or whose retry time has not come; the queue
 * returned is the first in the ring whose tenant is granted slots, and
 * *batch is that grant. Returns NULL when no queue may be asked now (or
 * out of memory); then *wake_ms (may be NULL) is the earliest time that
 * may change without an event (a retry time, or the end of a tenant's
 * linger that keeps slots for it) or INT64_MAX. */
wrk_queue *wrk_sched_next(wrk_sched *s, int free, int64_t now_ms, int *batch, int64_t *wake_ms);

/* The first queue in line whose consumer is not known to exist (new, or
 * checked again after an unanswered request), not being set up, and due:
 * it keeps its place in line while the caller sets it up (without regard
 * to free capacity, so a new tenant never waits for a free slot to get
 * its consumer) and calls wrk_sched_setup_done. NULL when none; then
 * *wake_ms (may be NULL) is the earliest retry time of such a queue, or
 * INT64_MAX. */
wrk_queue *wrk_sched_unready(wrk_sched *s, int64_t now_ms, int64_t *wake_ms);

/* Ends the setup of q: ready when ok, else not asked again before
 * retry_at_ms. */
void wrk_sched_setup_done(wrk_sched *s, wrk_queue *q, bool ok, int64_t retry_at_ms);

/* Puts a claimed queue back at the ring's tail (after a failure with
 * q->retry_at_ms set by the caller). */
void wrk_sched_unclaim(wrk_sched *s, wrk_queue *q);

/* Opens a pull request of batch jobs on a claimed queue (its hint goes
 * down by batch) and returns its token (never 0). */
uint64_t wrk_sched_open(wrk_sched *s, wrk_queue *q, int batch, int64_t now_ms);

/* A job delivered for q's request token (or for no open request: a late
 * delivery, when token does not match; a queue has at most one request
 * open, so the caller passes q->req_token). Counts it as held. Returns
 * true when it completed the open request (the batch is full); the queue
 * goes back in the ring when its hint says it holds more, or it was rung
 * meanwhile. */
bool wrk_sched_delivered(wrk_sched *s, wrk_queue *q, uint64_t token, int64_t now_ms);

/* The server ended q's request token before its batch was full (no more
 * jobs, or an error): its hint drops to 0. The queue goes back to the ring
 * only when it was rung while the request was open; otherwise it is idle
 * until rung. Returns false when token is not the open request (nothing
 * changes). */
bool wrk_sched_ended(wrk_sched *s, wrk_queue *q, uint64_t token, int64_t now_ms);

/* Ends every request open for longer than timeout_ms (its answer was lost
 * in a reconnect, or its consumer does not exist: such a pull gets no
 * answer at all), marks its queue not ready (the caller checks the
 * consumer again) and rings it; returns how many. */
size_t wrk_sched_expire(wrk_sched *s, int64_t now_ms, int64_t timeout_ms);

/* Jobs asked for and not delivered yet, over every open request. */
int wrk_sched_outstanding(const wrk_sched *s);

/* A job of q that was started (wrk_sched_started) left its slot at
 * now_ms. */
void wrk_sched_release(wrk_sched *s, wrk_queue *q, int64_t now_ms);

/* ---- Pulling ahead of the slots ----------------------------------------
 *
 * A worker may hold more jobs than it has slots: jobs delivered wait in a
 * small local buffer, so a freed slot starts the next job at once and the
 * queues are asked in batches rather than one freed slot at a time. The
 * caller passes the slots plus the buffer as wrk_sched_next's capacity
 * (free counts both), so the asking stays fair by tenant as above; which
 * buffered job a freed slot starts is decided by wrk_sched_pick, by the
 * same rule over the slots alone. */

/* A queue holding more than at jobs delivered and not started is not asked
 * (it keeps its place in line), so that it is asked for a batch once its
 * buffer has run down, not for each job started. The default, INT32_MAX,
 * never holds a queue back. */
void wrk_sched_set_refill(wrk_sched *s, int at);

/* A job delivered for q (counted waiting by wrk_sched_delivered) takes a
 * slot. */
void wrk_sched_started(wrk_sched *s, wrk_queue *q);

/* A job of q delivered and never started was settled here (handed back
 * with a NAK) at now_ms. */
void wrk_sched_dropped(wrk_sched *s, wrk_queue *q, int64_t now_ms);

/* Jobs q's tenant runs now, over its queues. */
int wrk_sched_tenant_running(const wrk_queue *q);

/* Which of n delivered jobs (qs[i]: the queue of the i-th, oldest first) a
 * freed slot of a worker with slots in all starts now: the fair share of
 * wrk_fair_grant over running jobs. A tenant may start a job while it runs
 * fewer than its share ceil(slots x weight / active weights) (active as
 * for wrk_sched_next: it holds or asks for jobs, has a queue in line, or
 * did within WRK_FAIR_LINGER_MS), or when no other active tenant runs
 * fewer than its own share (that share is kept for it, as the asking
 * keeps it: the slot waits for the other's job). Among those that may,
 * the tenant running the fewest for its weight; ties: the oldest job.
 * Returns the index, or -1 when none may start now; then *wake_ms (may be
 * NULL) is the earliest time that may change without an event (the end
 * of a tenant's linger) or INT64_MAX. */
int wrk_sched_pick(const wrk_sched *s, wrk_queue *const *qs, size_t n, int slots, int64_t now_ms,
                   int64_t *wake_ms);

/* The slots q's tenant holds or has asked for, over its queues. */
int wrk_sched_tenant_load(const wrk_queue *q);

/* Frees the queues that are not pinned, hold nothing, wait for nothing and
 * were not seen for idle_ms. Returns how many were freed. */
size_t wrk_sched_prune(wrk_sched *s, int64_t now_ms, int64_t idle_ms);

/* Frees q now when it holds nothing and waits for nothing (returns true);
 * otherwise leaves it and returns false. */
bool wrk_sched_remove(wrk_sched *s, wrk_queue *q);

#endif
