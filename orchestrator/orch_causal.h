/* Per-session causal order (DESIGN.md, "Ordering"). The state of a session
 * lives in KV sluice_sessions under "<tenant>.<session>" as JSON
 * {"last":"<client_id>","recent":[...]} (docs/wire.md), advanced with a
 * compare-and-set on the KV revision, so any number of replicas can process
 * a session's messages without a lock. The decision itself is a pure
 * function (orch_causal_decide) so it can be tested alone. */
#ifndef ORCH_CAUSAL_H
#define ORCH_CAUSAL_H

#include <nats/nats.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "orch_kvget.h"
#include "sl_status.h"

#define ORCH_CAUSAL_RECENT 64 /* processed ids remembered for redelivery detection */
#define ORCH_CAUSAL_ID_MAX 64

typedef struct orch_causal_state {
    char last[ORCH_CAUSAL_ID_MAX + 1]; /* "" when nothing was processed */
    /* Processed ids, oldest first; at most ORCH_CAUSAL_RECENT. */
    char recent[ORCH_CAUSAL_RECENT][ORCH_CAUSAL_ID_MAX + 1];
    size_t n;
} orch_causal_state;

typedef enum orch_causal_decision {
    ORCH_CAUSAL_PROCESS,   /* prev is processed (or none): process now */
    ORCH_CAUSAL_DUPLICATE, /* already processed: ack without effects */
    ORCH_CAUSAL_WAIT,      /* prev not processed yet: NAK with a delay */
    ORCH_CAUSAL_GAP,       /* prev still missing after the deadline: process, log a gap */
} orch_causal_decision;

/* Decides what to do with message client_id whose predecessor is prev ("" or
 * NULL: none) given the session state, the message's age (time since it was
 * stored in IN) and the wait deadline. */
orch_causal_decision orch_causal_decide(const orch_causal_state *st, const char *client_id,
                                        const char *prev, int64_t age_ms, int64_t wait_ms);

/* Returns true when id is among the processed ids. */
bool orch_causal_seen(const orch_causal_state *st, const char *id);

/* Records client_id as processed: it becomes last and joins recent (the
 * oldest id is forgotten when full). Ids longer than ORCH_CAUSAL_ID_MAX
 * are ignored. */
void orch_causal_advance(orch_causal_state *st, const char *client_id);

/* Parses the KV JSON into *st (cleared first). SL_ERR_INVAL when the JSON
 * is malformed; *st is then empty. */
sl_status orch_causal_parse(orch_causal_state *st, const char *json, size_t len);

/* Formats *st as the KV JSON into a malloc'd string the caller frees.
 * SL_ERR_NOMEM on failure. */
sl_status orch_causal_format(const orch_causal_state *st, char **out);

/* Reads the state of key from kv. Returns SL_OK with *st and *rev (the KV
 * revision, for orch_causal_store); a missing key gives an empty state and
 * *rev = 0; a malformed value is logged and treated as empty with its
 * revision. SL_ERR_BUS or SL_ERR_TIMEOUT when NATS failed. */
sl_status orch_causal_load(kvStore *kv, const char *key, orch_causal_state *st, uint64_t *rev);

/* The same from an entry read with orch_kvget_many: a key never written
 * gives an empty state and revision 0, a deleted key an empty state and
 * its marker's revision, a malformed value an empty state (logged).
 * Returns SL_OK, or the read's error (SL_ERR_TIMEOUT, SL_ERR_BUS). */
sl_status orch_causal_from_entry(const orch_kv_entry *e, orch_causal_state *st, uint64_t *rev);

/* Writes *st to key if its revision is still rev (0: the key must not
 * exist). Returns SL_OK; SL_ERR_CONFLICT when another writer got there
 * first (reload and retry); SL_ERR_BUS / SL_ERR_TIMEOUT on NATS failure. */
sl_status orch_causal_store(kvStore *kv, const char *key, const orch_causal_state *st,
                            uint64_t rev);

#endif
