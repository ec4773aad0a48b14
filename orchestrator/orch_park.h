/* Messages parked while they wait for their causal predecessor
 * (docs/wire.md, "Causal waits"). The loop NAKs such a message with a
 * delay (its lease: at most a second, less when its wait ends sooner), so
 * the server redelivers it then to any replica, and keeps a copy here
 * until its redelivery replaces it (orch_park_drop_id) or a while after
 * the lease (orch_park_expire). If its session advances meanwhile (on this
 * replica, or on another one, which the loop learns by re-reading the
 * parked sessions' states), the copy goes through the loop again and is
 * processed and acked at once (an ack after the NAK still removes it from
 * the consumer's pending set, so it is not redelivered). If the process
 * dies, the server redelivers the message at the end of its lease:
 * nothing parked is lost, and a crash costs it no more than its lease.
 *
 * Bounded per session, per tenant and in all: a message past a bound is
 * not parked (the loop processes it as a gap). Waiting messages are
 * pending acks of the shared IN consumer, whose MaxAckPending is finite:
 * the bounds keep one tenant from filling it.
 *
 * Used by the loop's thread only. Owns the parked copies. */
#ifndef ORCH_PARK_H
#define ORCH_PARK_H

#include <nats/nats.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "orch_causal.h"
#include "sl_status.h"

typedef struct orch_park orch_park;

/* Creates an empty park holding at most per_session messages of one
 * session, per_tenant of one tenant and total in all (all >= 0; 0 parks
 * nothing). SL_ERR_INVAL / SL_ERR_NOMEM. */
sl_status orch_park_create(orch_park **out, int64_t per_session, int64_t per_tenant, int64_t total);

/* NAKs every parked message without delay on nc (so another replica
 * takes it at once; nc NULL: no NAK), frees everything; NULL-safe. */
void orch_park_destroy(orch_park *p, natsConnection *nc);

/* True when one more message of session key (its tenant: tenant) fits the
 * bounds. */
bool orch_park_fits(const orch_park *p, const char *tenant, const char *key);

/* Parks m (taking ownership on SL_OK) for session key of tenant; id is
 * its client id and prev the predecessor it waits for, lease_end_ms the
 * monotonic time at which the copy is dropped (orch_park_expire). The
 * caller NAKs m with the matching delay. SL_ERR_FULL when a bound is
 * reached, SL_ERR_NOMEM; m then stays the caller's. */
sl_status orch_park_add(orch_park *p, const char *tenant, const char *key, const char *id,
                        const char *prev, natsMsg *m, int64_t lease_end_ms);

/* Moves to out (at most max, ownership to the caller) the messages of
 * session key, oldest first, when one of them waits for id or is id (id
 * NULL: in any case). Returns how many. */
size_t orch_park_take_session(orch_park *p, const char *key, const char *id, natsMsg **out,
                              size_t max);

/* Moves to out (at most max) the messages of sessions marked with
 * orch_park_wake or orch_park_recheck. Returns how many. */
size_t orch_park_take_ready(orch_park *p, natsMsg **out, size_t max);

/* Drops (destroys, without ack) the copies whose lease ended at now_ms:
 * the server redelivers those messages. Returns how many. */
size_t orch_park_expire(orch_park *p, int64_t now_ms);

/* Drops (destroys, without ack) the copies of message id of session key:
 * the caller holds a newer delivery of it. Returns how many. */
size_t orch_park_drop_id(orch_park *p, const char *key, const char *id);

/* Marks session key: its messages are taken by the next
 * orch_park_take_ready. */
void orch_park_wake(orch_park *p, const char *key);

/* Copies to keys (at most max) the sessions with parked messages, going
 * round robin from the one after the previous call's last. The pointers
 * stay valid until the park changes. Returns how many. */
size_t orch_park_sessions(orch_park *p, const char **keys, size_t max);

/* Marks session key (as orch_park_wake) when its causal state st (read
 * from KV) shows that one of its parked messages can go on: its
 * predecessor or itself was processed. Returns true when marked. */
bool orch_park_recheck(orch_park *p, const char *key, const orch_causal_state *st);

/* Number of parked messages. */
size_t orch_park_count(const orch_park *p);

#endif
