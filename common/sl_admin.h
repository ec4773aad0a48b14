/* The admin HTTP endpoint of every Sluice process: a small HTTP/1.1 server
 * on its own thread (plain sockets and poll), one request per connection
 * (`Connection: close`), serving
 *   GET /healthz  200 "ok"
 *   GET /readyz   200 "ready", or 503 with the reason from the callback
 *   GET /metrics  200, Prometheus text from sl_metrics_render()
 * Any other path is 404, any other method 405, a malformed request 400 and
 * a request head over the size cap 431. A query string is ignored. Each
 * /readyz and /metrics sets the gauge `sluice_ready` (1 or 0) from the
 * callback. Connections that do not complete within the timeout are closed;
 * when max_clients connections are open the oldest is closed to make room,
 * so slow clients cannot lock out health probes. */
#ifndef SL_ADMIN_H
#define SL_ADMIN_H

#include <stdbool.h>
#include <stddef.h>

#include "sl_status.h"

typedef struct sl_admin sl_admin;

/* Readiness callback: returns true when ready, else false with a short
 * reason written to why (NUL-terminated, at most whylen bytes). It runs on
 * the admin thread, so it must be thread-safe with respect to ud and quick
 * (it blocks the admin server while it runs). */
typedef bool (*sl_ready_fn)(void *ud, char *why, size_t whylen);

typedef struct sl_admin_opts {
    const char *listen_addr; /* "host:port"; host "" or "0.0.0.0" = any; port 0 = ephemeral */
    sl_ready_fn ready;       /* NULL: always ready */
    void *ud;                /* passed to ready */
    int timeout_ms;          /* per connection, from accept to the last byte; 0: 5000 */
    int max_clients;         /* open connections at once; 0: 32 */
    size_t max_request;      /* request head cap in bytes; 0: 8192 */
} sl_admin_opts;

/* Binds the listening socket (SO_REUSEADDR) and starts the server thread
 * (with all signals blocked, so they go to the process's other threads).
 * Returns SL_OK and sets *out (stop with sl_admin_stop); SL_ERR_INVAL for a
 * malformed address or option, SL_ERR_IO when the address cannot be
 * resolved or bound, SL_ERR_NOMEM / SL_ERR_INTERNAL; a message goes to
 * err. *out is untouched on failure. */
sl_status sl_admin_start_opts(sl_admin **out, const sl_admin_opts *opts, char *err, size_t errlen);

/* sl_admin_start_opts() with default timeout, client and size limits. */
sl_status sl_admin_start(sl_admin **out, const char *listen_addr, sl_ready_fn ready, void *ud,
                         char *err, size_t errlen);

/* Returns the bound TCP port (useful with port 0), or -1 for NULL. */
int sl_admin_port(const sl_admin *a);

/* Wakes the server thread, joins it, closes every socket and frees a.
 * Returns promptly (no waiting on clients). NULL-safe. */
void sl_admin_stop(sl_admin *a);

#endif
