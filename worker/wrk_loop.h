/* The worker's job loop: fair pulling from SLUICE_WORK (a durable
 * `wrk_<model>~<tenant>` per model and tenant, shared by every worker
 * replica; the slots shared fairly by tenant, weighted by cfg->weights:
 * wrk_sched.h), a fixed number of job slots (a
 * thread each, so one slow model call never blocks the others), the job
 * lifecycle (in-flight KV state, cancels, model call with a hard deadline,
 * coalesced tokens and the final reply on OUT, ack / NAK with delay /
 * Term) and graceful shutdown (docs/wire.md).
 *
 * Per job, on the hot path: the job arrives in a batch pulled for its
 * queue; tokens are published without waiting (an answer ready within the
 * first coalescing window publishes none: the final reply carries it);
 * once the model call is over the job leaves its slot for the finisher,
 * which stores the ends of every job waiting in one batch: the final
 * replies, published together and awaited with one wait; then the agent
 * messages and end states, together, one wait; then the acks. When a
 * batch's publish fails, each of its jobs is ended alone: what was not
 * stored is stored again (bounded, the lease kept alive by InProgress) or
 * the job is handed back with a NAK. The `running` state is written only
 * for jobs that last (by the timer thread), and the cancel marker is read
 * only when a cancel could have been missed.
 *
 * Threads: wrk_loop_create, wrk_loop_stop and wrk_loop_destroy are called
 * by one owner thread (main). Inside, a dispatcher thread finds queues
 * (the stream's per-subject counts every 200 ms) and sets up their
 * consumers; pull requests are sent by whichever thread frees capacity or
 * rings a queue (a slot thread, or a cnats thread on a doorbell
 * `sluice.ctl.work.<model>.<tenant>` or a pull reply); pulled jobs wait in
 * a ready list for a slot thread (a worker with a fast model pulls a few
 * ahead of its slots; a freed slot starts the job of the tenant running
 * the fewest for its weight: wrk_sched_pick), which owns the job it runs until the
 * model call is over and then hands it to the finisher thread; a timer
 * thread publishes due token chunks, sends InProgress acks for long jobs
 * and writes `running`; the cancel subscription runs on a cnats thread.
 * wrk_loop_ready() may be called from any thread. Every thread the loop
 * starts blocks all signals, so signals reach the process's main thread. */
#ifndef WRK_LOOP_H
#define WRK_LOOP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "sl_bus.h"
#include "sl_status.h"
#include "wrk_backend.h"
#include "wrk_sched.h"

#define WRK_MAX_DELIVER     3     /* deliveries of one job, the consumer's MaxDeliver */
#define WRK_RETRY_BASE_MS   500   /* NAK delay of the first transient retry, doubled after */
#define WRK_RETRY_MAX_MS    30000 /* bound on any NAK delay */
#define WRK_CONCURRENCY_MAX 256
/* A per-tenant work consumer that could not be read for this long (a
 * JetStream error or no answer on every try: a consumer left without
 * quorum after a node loss answers 10008 for good) is deleted and created
 * afresh; WORK keeps the jobs it had not acked, and the new consumer
 * delivers them again (docs/wire.md, "Consumers"). Well above a consumer
 * leader election after a node loss on a busy host (up to about 10 s in
 * the cluster-node-loss soak), so that a consumer that recovers by itself
 * is left alone. */
#define WRK_CONSUMER_STALL_MS 20000

typedef struct wrk_loop_cfg {
    const char *const *models; /* valid ids; at least one */
    size_t nmodels;
    int concurrency;           /* job slots, 1..WRK_CONCURRENCY_MAX */
    int64_t timeout_ms;        /* per-attempt model deadline when the job gives none */
    int64_t ack_grace_ms;      /* AckWait = timeout_ms + ack_grace_ms */
    int64_t coalesce_ms;       /* token coalescing window */
    int64_t coalesce_first_ms; /* the first chunk's window; 0: the first token at once */
    int64_t coalesce_bytes;    /* token coalescing size bound */
    int64_t context_messages;  /* channel messages given to the model as context; 0: none */
    const char *worker_id;     /* shown in the in-flight KV state */
    const wrk_weight *weights; /* tenants' shares of the slots (others weigh 1); may be NULL */
    size_t nweights;
} wrk_loop_cfg;

typedef struct wrk_loop wrk_loop;

/* Looks at each model's older model-wide consumer `wrk_<model>` (serving
 * the model from it while it holds jobs, deleting it once empty and
 * unused), subscribes to pull replies, doorbells and `sluice.ctl.cancel.*`,
 * and starts the threads; per-tenant consumers are made (or their
 * AckWait, MaxDeliver and BackOff updated) as their tenants show up. bus
 * must be provisioned (sl_bus_wait_provisioned) and, like backend, outlive
 * the loop; cfg is copied. Returns SL_OK with *out owned by the caller;
 * SL_ERR_INVAL for a bad configuration or a `wrk_<model>` consumer with an
 * incompatible filter (fatal); SL_ERR_BUS when NATS failed (retry later);
 * SL_ERR_NOMEM. A reason goes to err. */
sl_status wrk_loop_create(wrk_loop **out, sl_bus *bus, wrk_backend *backend,
                          const wrk_loop_cfg *cfg, char *err, size_t errlen);

/* True while the loop is running and not stopping. */
bool wrk_loop_ready(const wrk_loop *l);

/* Graceful stop: stops pulling (jobs pulled ahead of the slots and not
 * started are handed back with a NAK at once, except one on its last
 * delivery, which still runs; one that arrives after the last slot is gone
 * is NAKed at once), lets running jobs
 * finish for up to grace_ms, then aborts the rest and NAKs them so another
 * worker takes them at once (a job on its last delivery is ended here
 * instead, with what it has), and joins every thread. Returns within about
 * grace_ms plus 1.5 s plus the time to publish the last replies.
 * Idempotent. */
void wrk_loop_stop(wrk_loop *l, int64_t grace_ms);

/* Stops (with no grace when still running) and frees the loop. NULL-safe. */
void wrk_loop_destroy(wrk_loop *l);

/* ---- The end of a job, as a pure decision (tested in unit tests) ------- */

/* Why the job's cancel flag was raised. */
typedef enum wrk_cancel_reason {
    WRK_CANCEL_NONE = 0,
    WRK_CANCEL_USER = 1,     /* a client cancel (core NATS or the KV marker) */
    WRK_CANCEL_SHUTDOWN = 2, /* the worker is stopping and the grace ran out */
} wrk_cancel_reason;

typedef enum wrk_end {
    WRK_END_OK,        /* final reply with the whole text */
    WRK_END_PARTIAL,   /* final with the text so far, partial:true */
    WRK_END_DEGRADED,  /* final with the agent's fallback, degraded:true */
    WRK_END_CANCELLED, /* final with the text so far, cancelled:true */
    WRK_END_RETRY,     /* no final: NAK with delay_ms, another attempt follows */
    WRK_END_REQUEUE,   /* no final: NAK at once (shutdown), another worker takes it */
} wrk_end;

typedef struct wrk_decision {
    wrk_end end;
    bool term;            /* after the final: natsMsg_Term instead of Ack */
    int64_t delay_ms;     /* WRK_END_RETRY: the NAK delay */
    const char *kv_state; /* in-flight state to record: done, cancelled, failed or queued */
    const char *metric;   /* outcome label (ok, partial, degraded, cancelled) or NULL */
} wrk_decision;

/* Decides how a job ends from the backend's outcome, the cancel reason,
 * whether the reply was cut because it grew too long (truncated), the
 * bytes of text produced, the delivery attempt (1-based), the consumer's
 * MaxDeliver (<= 0: unlimited) and the backend's retry_after_ms (-1 when
 * none). The rules:
 *   DONE -> ok; DEADLINE -> partial when text was produced, else degraded;
 *   CANCELLED -> partial when truncated, cancelled for a user cancel, and
 *   for a shutdown: requeue, or on the last delivery partial/degraded;
 *   TRANSIENT -> retry (delay: retry_after_ms when given, else
 *   WRK_RETRY_BASE_MS doubled per attempt, both capped at WRK_RETRY_MAX_MS),
 *   or on the last delivery degraded + Term; FATAL -> degraded + Term. */
wrk_decision wrk_job_decide(wrk_outcome outcome, wrk_cancel_reason cancel, bool truncated,
                            size_t text_len, uint64_t attempt, int64_t max_deliver,
                            int64_t retry_after_ms);

/* ---- Whether a job must read its cancel marker (tested in unit tests) --- */

/* Bound on the clock difference between the gateway that made an event id
 * and this worker. */
#define WRK_CANCEL_SKEW_MS 10000

/* Reads the Unix ms time in a time-sortable event id (or a job id that
 * starts with one, `<event_id>-<agent>`). Returns false when id does not
 * start with one. */
bool wrk_event_id_ms(const char *id, int64_t *ms);

/* A worker hears every cancel on core NATS (sluice.ctl.cancel.*) while
 * connected and keeps the recent ones (10 minutes, a bounded ring); the
 * orchestrator's KV marker is for cancels this worker may have missed.
 * Returns true when the job must read the marker: when the message it
 * answers (time from job_id's event id; false when it has none) is not
 * clearly younger, by WRK_CANCEL_SKEW_MS, than live_since_ms (since when
 * cancels were heard without a gap: connect, reconnect) and than
 * evicted_ms (the newest cancel dropped from the full ring), or is too old
 * for the ring's 10 minutes. A cancel for a message is assumed not to
 * precede it by more than WRK_CANCEL_SKEW_MS. All times are Unix ms. */
bool wrk_cancel_marker_needed(const char *job_id, int64_t now_ms, int64_t live_since_ms,
                              int64_t evicted_ms);

#endif
