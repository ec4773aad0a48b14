/* Integration-test harness: a real nats-server with JetStream on
 * 127.0.0.1, one node or a cluster, each node with its own free client,
 * monitoring (and optionally websocket and cluster) port and its own store
 * under a directory. A node can be stopped (any signal) and started again
 * on the same ports and store, for restart faults.
 *
 * The server program is $HX_NATS_SERVER when set, else nats-server from
 * PATH. A hx_nats is used by one thread at a time. */
#ifndef HX_NATS_H
#define HX_NATS_H

#include <stdbool.h>

#include "hx_proc.h"
#include "sl_status.h"

typedef struct hx_nats hx_nats;

typedef struct hx_nats_opts {
    int nodes;              /* 0 or 1: one server; n > 1: an n-node JetStream cluster */
    bool websocket;         /* also listen for websocket clients (no TLS) */
    const char *extra_conf; /* text appended to every node's config, or NULL */
    int ready_timeout_ms;   /* per start; 0 means 20000 */
} hx_nats_opts;

/* Starts the server(s) and waits until each accepts connections and its
 * /healthz (JetStream included) answers 200. dir is an existing directory
 * that receives nats-<i>.conf, nats-<i>.log and the store nats-<i>/; NULL
 * makes a temporary one that hx_nats_destroy removes. opts may be NULL (one
 * node, no websocket). On failure (SL_ERR_IO, SL_ERR_TIMEOUT) the log tail is
 * printed to stderr, hx_error() says why and nothing is left running. */
sl_status hx_nats_start(hx_nats **out, const char *dir, const hx_nats_opts *opts);

/* The client URL: "nats://127.0.0.1:P", comma-separated for a cluster
 * (cnats accepts that list). Owned by n. */
const char *hx_nats_url(const hx_nats *n);

/* The client URL of one node. Owned by n. */
const char *hx_nats_node_url(const hx_nats *n, int node);

/* Number of nodes. */
int hx_nats_nodes(const hx_nats *n);

/* Ports of a node: client, HTTP monitoring, websocket (0 when disabled). */
int hx_nats_port(const hx_nats *n, int node);
int hx_nats_monitor_port(const hx_nats *n, int node);
int hx_nats_ws_port(const hx_nats *n, int node);

/* Sends sig to a node (SIGTERM: clean shutdown; SIGKILL: crash) and waits
 * up to 10 s for it to exit, then SIGKILLs it. SL_OK when it exited in time
 * (or was not running), SL_ERR_TIMEOUT when it needed SIGKILL. */
sl_status hx_nats_stop(hx_nats *n, int node, int sig);

/* Starts a stopped node again on the same ports and store and waits until
 * it is ready. SL_ERR_EXISTS when it is running; SL_ERR_TIMEOUT or
 * SL_ERR_IO (log tail printed) when it does not come up. */
sl_status hx_nats_start_node(hx_nats *n, int node);

/* hx_nats_stop() with sig, then hx_nats_start_node(). */
sl_status hx_nats_restart(hx_nats *n, int node, int sig);

/* Waits up to timeout_ms until a running node accepts connections and its
 * /healthz answers 200. SL_ERR_TIMEOUT, or SL_ERR_IO when it died. */
sl_status hx_nats_wait_ready(hx_nats *n, int node, int timeout_ms);

/* True while the node's process runs. */
bool hx_nats_alive(hx_nats *n, int node);

/* The node's process and log path; owned by n. */
hx_proc *hx_nats_proc(hx_nats *n, int node);
const char *hx_nats_log_path(const hx_nats *n, int node);

/* Kills every node (SIGKILL), reaps it, removes the directory if
 * hx_nats_start made it, and frees n. NULL-safe. */
void hx_nats_destroy(hx_nats *n);

#endif
