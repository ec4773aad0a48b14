/* Batched asynchronous JetStream publishing: the loop queues every publish
 * of a batch, waits once for all acknowledgments, then reads each
 * publish's outcome. Each publish carries its own reply subject,
 * <inbox>.<round>.<slot>, on one synchronous subscription (on the bus's
 * connection) that the waiting thread drains itself: no cnats delivery
 * thread and no hand-off per acknowledgment. Used by one thread at a time
 * (the loop); nothing in it runs on cnats' threads. */
#ifndef ORCH_PUB_H
#define ORCH_PUB_H

#include <nats/nats.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "sl_status.h"

#define ORCH_PUB_MAX 2048 /* publishes per round */

typedef struct orch_pub orch_pub;

typedef struct orch_pub_result {
    bool done;      /* an acknowledgment or an error came back */
    natsStatus err; /* NATS_OK when stored (or deduplicated) */
    jsErrCode jerr; /* the JetStream error code, e.g. 10077 for a full subject */
    uint64_t seq;   /* stream sequence when stored */
    bool duplicate; /* the stream already had this Nats-Msg-Id */
} orch_pub_result;

/* Creates a publisher on nc. SL_ERR_BUS / SL_ERR_NOMEM on failure. */
sl_status orch_pub_create(orch_pub **out, natsConnection *nc);

/* Destroys p (acknowledgments still to come are dropped); NULL-safe. */
void orch_pub_destroy(orch_pub *p);

/* Starts a new round: forgets every slot; acknowledgments of earlier
 * rounds that come later are dropped. */
void orch_pub_reset(orch_pub *p);

/* Queues one publish of data to subject with header Nats-Msg-Id msg_id
 * (required: it is how outcomes are matched and duplicates dropped).
 * Returns SL_OK and the slot in *slot; SL_ERR_FULL when the round has
 * ORCH_PUB_MAX slots; SL_ERR_BUS when the publish could not be queued (the
 * slot is then already done with that error). */
sl_status orch_pub_add(orch_pub *p, const char *subject, const char *msg_id, const void *data,
                       size_t len, int *slot);

/* orch_pub_add with one more header, extra_hdr: extra_val (both not NULL),
 * e.g. Nats-Expected-Last-Subject-Sequence for a KV compare-and-set (whose
 * refusal comes back as jerr 10071). */
sl_status orch_pub_add_hdr(orch_pub *p, const char *subject, const char *msg_id, const void *data,
                           size_t len, const char *extra_hdr, const char *extra_val, int *slot);

/* Waits until every queued publish of the round has an outcome or
 * timeout_ms passed; publishes still without an outcome then count as
 * failed with NATS_TIMEOUT. Returns SL_OK when all completed (each may
 * still have failed: see orch_pub_get), SL_ERR_TIMEOUT otherwise. */
sl_status orch_pub_wait(orch_pub *p, int64_t timeout_ms);

/* Returns true when a publish of the round has no outcome yet (so
 * orch_pub_wait would wait for the server). */
bool orch_pub_outstanding(orch_pub *p);

/* Returns the outcome of slot (valid after orch_pub_wait). */
orch_pub_result orch_pub_get(const orch_pub *p, int slot);

/* Returns true when the outcome is stored or deduplicated. */
bool orch_pub_ok(const orch_pub *p, int slot);

#endif
