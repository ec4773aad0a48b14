/* Many KV reads at once: the latest entry of each of n keys of a bucket,
 * read with JetStream direct gets (`$JS.API.DIRECT.GET.KV_<bucket>.$KV.<bucket>.<key>`,
 * the buckets are made with AllowDirect) that are all sent before any
 * answer is awaited, so a batch of n keys costs one round trip instead of
 * n. The answers come back on one subscription made at create time.
 *
 * Used by one thread at a time (the loop). */
#ifndef ORCH_KVGET_H
#define ORCH_KVGET_H

#include <nats/nats.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "sl_status.h"

typedef struct orch_kvget orch_kvget;

/* One key to read and what was found. */
typedef struct orch_kv_entry {
    const char *key; /* in: borrowed, must stay valid during the call */
    sl_status st;    /* SL_OK: found (value, rev, deleted); SL_ERR_NOTFOUND: never
                        written (rev 0); SL_ERR_TIMEOUT / SL_ERR_BUS: not read */
    uint64_t rev;    /* the entry's revision (its delete marker's when deleted) */
    bool deleted;    /* the latest entry is a delete or purge marker */
    char *value;     /* owned: orch_kv_entry_clear frees it; NUL-terminated */
    size_t len;
} orch_kv_entry;

/* Creates a reader of bucket on nc (borrowed: it must outlive the reader)
 * and subscribes to its answers. SL_ERR_INVAL (bad bucket name), SL_ERR_BUS,
 * SL_ERR_NOMEM. */
sl_status orch_kvget_create(orch_kvget **out, natsConnection *nc, const char *bucket);

/* Unsubscribes and frees. NULL-safe. */
void orch_kvget_destroy(orch_kvget *g);

/* Reads the n entries (their st, rev, deleted, value and len are set;
 * earlier values are freed first), waiting up to timeout_ms in all. */
void orch_kvget_many(orch_kvget *g, orch_kv_entry *e, size_t n, int64_t timeout_ms);

/* Frees an entry's value and resets its results (the key is kept). */
void orch_kv_entry_clear(orch_kv_entry *e);

#endif
