/* The gateway: one event loop (libev on epoll, with libwebsockets serving
 * the sockets on it) that owns every client connection, with cnats
 * callbacks and blocking NATS work handed to and from it through gw_bridge.
 * Implements shared/PROTOCOL.md. */
#ifndef GW_SERVER_H
#define GW_SERVER_H

#include <stdbool.h>
#include <stdint.h>

#include "sl_bus.h"
#include "sl_config.h"
#include "sl_status.h"

typedef struct gw_config {
    sl_common_cfg common;
    char *listen;
    char *jwt_secret;
    char *jwt_public_key;
    char *resume_secret;
    char *tls_cert;
    char *tls_key;
    char *web_root;
    bool dev_mode;
    int64_t heartbeat_ms;
    int64_t max_frame;
    int64_t rate;
    int64_t burst;
    int64_t outq_max_frames;
    int64_t outq_max_bytes;
    int64_t drain_grace_ms;
    int64_t handshake_rate;
    int64_t handshake_burst;
    int64_t publish_timeout_ms;
    int64_t hello_timeout_ms;
    int64_t io_threads;
    int64_t chan_cache;
    int64_t presence_fanout_max;
    int64_t max_rooms;
    int64_t socket_sndbuf;
} gw_config;

#define GW_OPTS_N (SL_COMMON_OPTS_N + 24)

/* Fills opts with the gateway's options writing into cfg. */
void gw_config_opts(sl_cfg_opt *opts, gw_config *cfg);

/* Checks the options together; SL_ERR_INVAL with a message naming the
 * variable. */
sl_status gw_config_validate(const gw_config *cfg, char *err, size_t errlen);

typedef struct gw_server gw_server;

/* Builds the server (listening socket, TLS, mounts) on a connected or
 * connecting bus. The server does not own bus or cfg; both must outlive it. */
sl_status gw_server_create(gw_server **out, const gw_config *cfg, sl_bus *bus, char *err,
                           size_t errlen);

/* Runs the loop until *stop is set and the drain finished (or *stop is set
 * twice: then it exits at once). Returns SL_OK after a clean drain. */
sl_status gw_server_run(gw_server *s, volatile int *stop);

/* True while serving and not draining; thread-safe (for /readyz). */
bool gw_server_ready(gw_server *s, char *why, size_t whylen);

/* Closes the connections and frees everything, in an order where nothing
 * is used after it is freed: it first stops cnats calling back into the
 * server (unsubscribes, then waits for outstanding publish acks, up to
 * SLUICE_PUBLISH_TIMEOUT_MS + 5 s, and for running handlers), then drains
 * the io threads, then frees the bridge's queued tasks unrun. Call it
 * before the bus is destroyed. NULL-safe. */
void gw_server_destroy(gw_server *s);

#endif
