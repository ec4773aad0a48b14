/* The orchestrator's main loop: fetches batches from the shared durable
 * "orch" on SLUICE_IN, decides each message's causal fate, publishes its
 * effects (room/session message event, in-flight records, work requests,
 * busy events) asynchronously per batch, advances each session's causal
 * state with CAS, and only then acks. A message whose predecessor is
 * missing is parked (orch_park) until it can go on or its wait ends. NATS
 * may be down at any time: the
 * loop keeps trying and recovers. Runs on the calling thread, which also
 * reads the publishes' acknowledgments and the in-flight watch; the
 * listeners (orch_ctl) run on their own. */
#ifndef ORCH_LOOP_H
#define ORCH_LOOP_H

#include <stdbool.h>
#include <stdint.h>

#include "orch_agents.h"
#include "orch_quota.h"
#include "sl_bus.h"
#include "sl_status.h"
#include "sluice.pb-c.h"

#define ORCH_DURABLE "orch"

typedef struct orch_loop_cfg {
    int64_t hop_limit;        /* agent hops along a chain before agents stop answering */
    int64_t causal_wait_ms;   /* wait for a missing predecessor at most this long */
    int64_t model_timeout_ms; /* deadline_ms of work requests */
    int64_t tenant_queue_max; /* the WORK per-subject bound (for retry hints) */
    int batch;                /* messages per fetch, 1..256 */
    int64_t fetch_timeout_ms; /* how long a fetch waits for messages */
    int64_t park_per_session; /* messages of one session waiting at once (more: gaps) */
    int64_t park_per_tenant;  /* messages of one tenant waiting at once, per replica */
    int64_t sweep_ms;         /* period of the sweep for exhausted work messages (<= 0: 5000) */
    int64_t lost_check_ms; /* a queued job's message is looked for this long after (<= 0: 60000) */
    /* Token quotas (orch_quota.h): every tenant's budget per window (0:
     * none), per-tenant budgets (copied; may be NULL) and the window
     * (1..ORCH_QUOTA_WINDOW_MAX_S s; 0: 60). */
    int64_t tokens_per_window;
    const orch_quota_rule *quota_rules;
    size_t nquota_rules;
    int64_t quota_window_s;
} orch_loop_cfg;

typedef struct orch_loop orch_loop;

/* Creates the loop over bus and agents (both borrowed; they must outlive
 * it). Nothing touches NATS yet. SL_ERR_NOMEM / SL_ERR_INVAL. */
sl_status orch_loop_create(orch_loop **out, sl_bus *bus, const orch_agents *agents,
                           const orch_loop_cfg *cfg);

/* Runs until *stop becomes nonzero: sets up the consumer, the listeners and
 * the watcher (retrying while NATS is unavailable), then fetches and
 * processes batches. On stop it finishes the batch in hand and returns
 * SL_OK. */
sl_status orch_loop_run(orch_loop *l, volatile int *stop);

/* True once the loop is set up and fetching (for /readyz); any thread. */
bool orch_loop_ready(const orch_loop *l);

/* Tears down the listeners, watcher and subscription; NULL-safe. Call
 * before the bus is destroyed. */
void orch_loop_destroy(orch_loop *l);

#endif
