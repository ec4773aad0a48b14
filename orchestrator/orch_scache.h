/* The causal states of recently seen sessions, as this replica last
 * stored or read them, so a batch need not read from KV a session it
 * advanced itself a moment ago (docs/wire.md, "Cost of a message").
 *
 * A cached state is a lower bound: every id in it was processed, but
 * another replica may have processed more since. The loop therefore
 * (1) reads KV instead for a session whose message is a redelivery or a
 * parked copy, the only messages another replica can have processed,
 * (2) stores with a compare-and-set on the cached revision, which fails
 * and is retried on a fresh read when another writer got there first, and
 * (3) trusts an entry for at most its TTL (well inside the streams'
 * 2-minute duplicate window, so an effect published twice on a stale
 * entry is dropped by its Nats-Msg-Id).
 *
 * Bounded: at most max entries; the least recently written goes first.
 * Used by the loop's thread only. */
#ifndef ORCH_SCACHE_H
#define ORCH_SCACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "orch_causal.h"
#include "sl_status.h"

typedef struct orch_scache orch_scache;

/* Creates an empty cache of at most max entries (>= 1), each trusted for
 * ttl_ms (>= 1) after it was written. SL_ERR_INVAL / SL_ERR_NOMEM. */
sl_status orch_scache_create(orch_scache **out, size_t max, int64_t ttl_ms);

/* Frees the cache; NULL-safe. */
void orch_scache_destroy(orch_scache *c);

/* Copies the state of key and its KV revision into *st and *rev and
 * returns true when the entry is younger than the TTL at now_ms; false
 * (and *st, *rev untouched) otherwise. */
bool orch_scache_get(orch_scache *c, const char *key, int64_t now_ms, orch_causal_state *st,
                     uint64_t *rev);

/* Remembers *st at revision rev for key, known current at now_ms. An
 * entry of a newer revision is kept as it is (a late read must not undo a
 * store); the same or an older one is replaced. Out of memory: nothing is
 * cached (the loop reads KV then). Keys longer than the cache's bound are
 * ignored. */
void orch_scache_put(orch_scache *c, const char *key, const orch_causal_state *st, uint64_t rev,
                     int64_t now_ms);

/* Drops the entry of key, if any (its state is unknown now). */
void orch_scache_forget(orch_scache *c, const char *key);

/* Returns the number of entries (fresh or not). */
size_t orch_scache_count(const orch_scache *c);

#endif
