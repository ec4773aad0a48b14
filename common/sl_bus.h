/* The NATS connection every tier holds: connects (retrying in the
 * background when NATS is down), reconnects forever, tracks whether it is
 * connected, and hands out a JetStream context. Owned by the tier's main;
 * the getters are safe from any thread. */
#ifndef SL_BUS_H
#define SL_BUS_H

#include <nats/nats.h>
#include <stdbool.h>

#include "sl_config.h"
#include "sl_status.h"

typedef struct sl_bus sl_bus;

/* Maps a cnats status to ours (the one place that does). */
sl_status sl_status_from_nats(natsStatus s);

/* The same mapping narrowed for functions that promise "SL_ERR_TIMEOUT
 * when NATS timed out, SL_ERR_BUS when it failed otherwise": a failed
 * call's status (s != NATS_OK) becomes one of those two; NATS_OK stays
 * SL_OK. */
sl_status sl_status_from_nats_failure(natsStatus s);

/* Creates the connection from the common config. Returns SL_OK even when
 * NATS is not reachable yet (it keeps trying; see sl_bus_connected). name
 * is the client name NATS shows. On error writes a reason to err. */
sl_status sl_bus_create(sl_bus **out, const sl_common_cfg *cfg, const char *name, char *err,
                        size_t errlen);

typedef struct sl_bus_opts {
    /* Every publish is written to the socket by the thread that makes it,
     * instead of waking cnats' flusher thread, which waits 1 ms for more
     * and then writes (two thread wake-ups and 1 ms per burst). For a tier
     * that publishes a message or two at a time from one thread (the
     * gateway); a tier that publishes in batches keeps the flusher. */
    bool send_asap;
} sl_bus_opts;

/* sl_bus_create with options (NULL: the defaults, all false). */
sl_status sl_bus_create_ex(sl_bus **out, const sl_common_cfg *cfg, const char *name,
                           const sl_bus_opts *o, char *err, size_t errlen);

/* Closes the connection (draining first when drain_ms > 0); NULL-safe. */
void sl_bus_destroy(sl_bus *b, int64_t drain_ms);

/* True while the TCP connection to NATS is up. */
bool sl_bus_connected(const sl_bus *b);

/* Ensures streams and buckets (see sl_streams.h) once connected, retrying
 * every second until it succeeds or *stop becomes nonzero. Returns SL_OK
 * when provisioned, SL_ERR_CLOSED when stopped, or SL_ERR_INVAL when an
 * existing stream has an incompatible configuration (fatal: err says why). */
sl_status sl_bus_wait_provisioned(sl_bus *b, const sl_common_cfg *cfg, volatile int *stop,
                                  char *err, size_t errlen);

/* True once provisioning succeeded and the connection is up. */
bool sl_bus_ready(const sl_bus *b);

natsConnection *sl_bus_nc(sl_bus *b);
jsCtx *sl_bus_js(sl_bus *b);

/* Opens a KV bucket handle (after provisioning). The caller owns *out
 * (kvStore_Destroy). */
sl_status sl_bus_kv(sl_bus *b, const char *bucket, kvStore **out);

#endif
