/* The gateway: one event loop (libev on epoll, with libwebsockets serving
 * the sockets on it) that owns every client connection, with cnats
 * callbacks and blocking NATS work handed to and from it through gw_bridge.
 * Implements shared/PROTOCOL.md. */
#ifndef GW_SERVER_H
#define GW_SERVER_H

#include <stdbool.h>
#include <stdint.h>

#include "gw_config.h"
#include "sl_bus.h"
#include "sl_status.h"

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
