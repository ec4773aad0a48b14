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
#include "sl_subject.h"

typedef struct orch_inflight orch_inflight;

#define ORCH_INFLIGHT_KEY_MAX   (2 * SL_ID_MAX + 8) /* "<tenant>.<job>" and its NUL */
#define ORCH_INFLIGHT_TRACK_MAX 65536               /* jobs kept for the lost-work check */

/* A job kept for the lost-work check, as orch_inflight_due hands it out. */
typedef struct orch_inflight_lost {
    char key[ORCH_INFLIGHT_KEY_MAX]; /* "<tenant>.<job>" */
    uint64_t seq;                    /* its work message's WORK sequence */
    uint8_t *stub;                   /* orch_work_stub_encode's bytes; the receiver frees it */
    size_t len;
} orch_inflight_lost;

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

/* Keeps, beside a job counted by orch_inflight_note and not seen ended
 * since, its work message's WORK sequence seq and stub (len bytes,
 * copied) until its end is seen, for orch_inflight_due from check_ms (a
 * monotonic time) on. SL_OK when kept (or kept already); SL_ERR_NOTFOUND
 * when the job is not active (it has ended already); SL_ERR_FULL when
 * ORCH_INFLIGHT_TRACK_MAX jobs are kept already; SL_ERR_INVAL,
 * SL_ERR_NOMEM. */
sl_status orch_inflight_track(orch_inflight *f, const char *tenant, const char *job, uint64_t seq,
                              const void *stub, size_t len, int64_t check_ms);

/* Copies into out at most max kept jobs whose check time (monotonic) is at
 * or before now_ms, oldest first, and moves their check time to next_ms;
 * each out[i].stub is the caller's to free. Returns how many. Any thread. */
size_t orch_inflight_due(orch_inflight *f, int64_t now_ms, int64_t next_ms, orch_inflight_lost *out,
                         size_t max);

/* Forgets the job key ("<tenant>.<job>"), which the caller ended: it no
 * longer counts as active. Any thread. */
void orch_inflight_forget(orch_inflight *f, const char *key);

/* Returns the number of jobs kept for the lost-work check. */
size_t orch_inflight_tracked(orch_inflight *f);

/* Returns the number of active jobs of agent for tenant. */
int64_t orch_inflight_active(orch_inflight *f, const char *tenant, size_t agent);

/* Returns a retry hint in ms for a tenant whose queue of model is full
 * (queue_max jobs): the time the queue needs to drain a tenth of itself (at
 * least one job) at the rate jobs recently ended, within 100..30000 ms; 1000
 * when no rate is known. */
int64_t orch_inflight_retry_after_ms(orch_inflight *f, const char *tenant, const char *model,
                                     int64_t queue_max, int64_t now_ms);

#endif
