/* In-flight jobs as this replica sees them: a watch of KV sluice_inflight
 * ("<tenant>.<job>" -> {"state":...,"agent":...}) keeps, per tenant and
 * agent, the number of jobs queued or running (for the agents'
 * max_concurrent) and, per tenant and model, the times at which jobs ended
 * (the queue's drain rate, for busy's retry_after_ms). Approximate by
 * nature (other replicas' writes arrive a little later), which is enough
 * for a concurrency bound and a retry hint.
 *
 * The loop reads the bucket's updates itself (orch_inflight_poll, before
 * each batch's decisions and whenever a fetch comes back empty), so no
 * thread is woken per update. Used by one thread at a time (a mutex still
 * guards the tables). */
#ifndef ORCH_INFLIGHT_H
#define ORCH_INFLIGHT_H

#include <nats/nats.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "orch_agents.h"
#include "sl_status.h"

typedef struct orch_inflight orch_inflight;

/* Creates an empty tracker for the agents set (borrowed: it must outlive
 * the tracker). SL_ERR_NOMEM on failure. */
sl_status orch_inflight_create(orch_inflight **out, const orch_agents *agents);

/* Starts watching KV bucket (an ordered consumer on js from each key's
 * latest entry; js is borrowed and must outlive the tracker). SL_ERR_INVAL
 * for a bad bucket name; SL_ERR_BUS when the watch could not be created
 * (call again later). */
sl_status orch_inflight_start(orch_inflight *f, jsCtx *js, const char *bucket);

/* Applies the updates that came since the last poll (at most 4096; the
 * rest waits for the next poll). Never waits for the server. */
void orch_inflight_poll(orch_inflight *f);

/* Stops the watch and frees everything; NULL-safe. */
void orch_inflight_destroy(orch_inflight *f);

/* Applies one KV update: key is "<tenant>.<job>", json its value (NULL for
 * a delete), at_ms its time (Unix ms). Cancel markers are ignored. Exposed
 * for tests; orch_inflight_poll calls it. */
void orch_inflight_apply(orch_inflight *f, const char *key, const char *json, size_t len,
                         int64_t at_ms);

/* Counts job (of agent index agent) of tenant as active from now on, unless
 * it is known already. */
void orch_inflight_note(orch_inflight *f, const char *tenant, const char *job, size_t agent,
                        int64_t now_ms);

/* Returns the number of active jobs of agent for tenant. */
int64_t orch_inflight_active(orch_inflight *f, const char *tenant, size_t agent);

/* Returns a retry hint in ms for a tenant whose queue of model is full
 * (queue_max jobs): the time the queue needs to drain a tenth of itself (at
 * least one job) at the rate jobs recently ended, within 100..30000 ms; 1000
 * when no rate is known. */
int64_t orch_inflight_retry_after_ms(orch_inflight *f, const char *tenant, const char *model,
                                     int64_t queue_max, int64_t now_ms);

#endif
