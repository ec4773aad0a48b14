/* The orchestrator's listeners on core NATS, which run on cnats threads:
 * - cancel requests on sluice.ctl.cancel.* become cancel markers in KV
 *   sluice_cancel ("<t>.x-<hex>", docs/wire.md; they expire after
 *   SLUICE_CANCEL_TTL_S), so a worker drops a queued job before it starts;
 * - the max-deliveries advisory of SLUICE_WORK ends the job nobody could
 *   finish: the agent's fallback as the final reply (degraded, id
 *   r:<job>), the job marked failed, and the work message deleted by
 *   sequence (on nats-server 2.9.10 it would keep its tenant's slot).
 * Every replica handles every advisory and cancel: the steps are
 * idempotent, and a replica dying halfway does not lose the ending. */
#ifndef ORCH_CTL_H
#define ORCH_CTL_H

#include <nats/nats.h>
#include <stddef.h>
#include <stdint.h>

#include "sl_status.h"

typedef struct orch_ctl orch_ctl;

/* Subscribes on nc using js, the in-flight bucket and the cancel bucket
 * (all borrowed: they must outlive the listeners). SL_ERR_BUS when a
 * subscription failed. */
sl_status orch_ctl_create(orch_ctl **out, natsConnection *nc, jsCtx *js, kvStore *inflight,
                          kvStore *cancel);

/* Unsubscribes and waits for running callbacks; NULL-safe. */
void orch_ctl_destroy(orch_ctl *c);

/* Ends the work message at stream sequence seq of SLUICE_WORK with its
 * fallback (the advisory's handler; exposed for tests). attempt is the
 * number of deliveries. Returns SL_OK when the reply is stored (or was
 * already) and the message is gone; SL_ERR_NOTFOUND when there is no such
 * message; SL_ERR_BUS when NATS failed. */
sl_status orch_ctl_end_job(jsCtx *js, kvStore *inflight, uint64_t seq, uint32_t attempt);

/* Parses a max-deliveries advisory. Returns SL_OK with the stream
 * sequence and delivery count, SL_ERR_INVAL when it is not one for
 * SLUICE_WORK. */
sl_status orch_ctl_parse_advisory(const char *json, size_t len, uint64_t *seq,
                                  uint32_t *deliveries);

#endif
