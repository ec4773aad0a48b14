/* The orchestrator's listeners on core NATS, which run on cnats threads,
 * and the thread that ends exhausted jobs:
 * - cancel requests on sluice.ctl.cancel.* become cancel markers in KV
 *   sluice_cancel ("<t>.x-<hex>", docs/wire.md; they expire after
 *   SLUICE_CANCEL_TTL_S), so a worker drops a queued job before it starts;
 * - the max-deliveries advisory of SLUICE_WORK ends the job nobody could
 *   finish: the agent's fallback as the final reply (degraded, id
 *   r:<job>), the job marked failed, and the work message deleted by
 *   sequence (on nats-server 2.9.10 it would keep its tenant's slot). The
 *   callback only queues it; the ender thread does the work and retries.
 * - the sweep (on the ender thread, at start and every sweep_ms) ends the
 *   same way every work message that exhausted its deliveries but is
 *   still there: its advisory was missed (no orchestrator was connected)
 *   or could not be handled.
 * - the lost-work check (on the ender thread, after each sweep) ends the
 *   jobs this replica queued whose work message vanished from WORK
 *   without the job ending (nats-server 2.9.10 can lose acknowledged
 *   messages when it resets a replica's copy of the stream): every
 *   lost_check_ms it looks up each such job's message by sequence and,
 *   once it is gone and no end state is stored, ends the job the same way.
 * Every replica handles every advisory and cancel and sweeps: the steps
 * are idempotent, and a replica dying halfway does not lose the ending. */
#ifndef ORCH_CTL_H
#define ORCH_CTL_H

#include <nats/nats.h>
#include <stddef.h>
#include <stdint.h>

#include "orch_inflight.h"
#include "sl_status.h"

typedef struct orch_ctl orch_ctl;

/* SLUICE_LOST_CHECK_MS's default: above a job's deadline plus a worker's
 * ack grace. */
#define ORCH_LOST_CHECK_MS_DEFAULT 60000

/* Starts the ender thread (sweeping every sweep_ms, <= 0: 5000, and
 * checking tracker's kept jobs, NULL: none, lost_check_ms after they were
 * queued or last checked, <= 0: ORCH_LOST_CHECK_MS_DEFAULT) and subscribes on nc using js, the
 * in-flight bucket and the cancel bucket (all borrowed: they must outlive
 * the listeners). SL_ERR_BUS when a subscription failed, SL_ERR_NOMEM. */
sl_status orch_ctl_create(orch_ctl **out, natsConnection *nc, jsCtx *js, kvStore *inflight,
                          kvStore *cancel, int64_t sweep_ms, orch_inflight *tracker,
                          int64_t lost_check_ms);

/* Unsubscribes, waits for running callbacks, stops the ender thread (a
 * job being ended finishes first); NULL-safe. */
void orch_ctl_destroy(orch_ctl *c);

/* One sweep (the ender thread runs it; exposed for tests): ends every
 * work message of SLUICE_WORK that its consumer will not deliver again.
 * Returns how many were ended. Any thread. */
int orch_ctl_sweep(orch_ctl *c);

/* Ends the work message at stream sequence seq of SLUICE_WORK with its
 * fallback (the advisory's handler and the sweep's; exposed for tests):
 * unless the job's in-flight entry already holds an end state, publishes
 * the fallback final reply and marks the entry failed (compare-and-set on
 * the revision read); then deletes the message. attempt is the number of
 * deliveries. Returns SL_OK when the reply is stored (or was already)
 * and the message is gone; SL_ERR_NOTFOUND when there is no such
 * message; SL_ERR_BUS when NATS failed. */
sl_status orch_ctl_end_job(jsCtx *js, kvStore *inflight, uint64_t seq, uint32_t attempt);

/* One lost-work check (the ender thread runs it; exposed for tests): for
 * at most 1024 kept jobs whose check time has come, orch_ctl_end_lost;
 * a settled job (ended now, or found ended) is forgotten, the others are
 * checked again lost_check_ms later. The pass stops at the first NATS
 * failure. Returns how many were settled. Any thread. */
int orch_ctl_check_lost(orch_ctl *c);

/* Ends a job whose work message (at WORK sequence seq) is gone: when
 * the message is still there, or the job's in-flight entry has said
 * `running` for less than running_grace_ms (its worker, which took the
 * message before it vanished, may still answer), does nothing (SL_OK,
 * *ended false); otherwise, unless the entry already holds an end state,
 * publishes the fallback built from stub (orch_work_stub_encode's bytes)
 * as r:<job> and marks the entry failed with reason "lost" (SL_OK,
 * *ended true). SL_ERR_INVAL for a stub that is no work request;
 * SL_ERR_BUS when NATS failed (call again later). */
sl_status orch_ctl_end_lost(jsCtx *js, kvStore *inflight, uint64_t seq, const void *stub,
                            size_t len, int64_t running_grace_ms, bool *ended);

/* Parses a max-deliveries advisory. Returns SL_OK with the stream
 * sequence and delivery count, SL_ERR_INVAL when it is not one for
 * SLUICE_WORK. */
sl_status orch_ctl_parse_advisory(const char *json, size_t len, uint64_t *seq,
                                  uint32_t *deliveries);

#endif
