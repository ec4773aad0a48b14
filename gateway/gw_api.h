/* The server API: HTTP with JSON bodies on the gateway's listener, under
 * /v1/api, for the application's own backend (docs/operations.md):
 *
 *   POST /v1/api/publish     {"room","text","from","id","agents"}
 *   POST /v1/api/disconnect  {"user"}
 *   GET  /v1/api/presence?room=R
 *   GET  /v1/api/history?ch=r:R&limit=N&before=S
 *
 * Authenticated by "Authorization: Bearer <JWT>" verified like client
 * tokens, with the claim "role":"server"; the tenant comes from the token.
 * Requests that need NATS run on the gateway's io threads (as bulk work,
 * after client joins and resumes) and are answered from the loop when they
 * complete; the loop never waits.
 *
 * Threads: everything here runs on the loop thread except the parsing
 * functions (pure, any thread, gw_api_parse.c) and the jobs gw_api_ops.c
 * runs on io threads. */
#ifndef GW_API_H
#define GW_API_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "sl_auth.h"
#include "sl_status.h"
#include "sl_subject.h"

#define GW_API_BODY_MAX     (64 * 1024) /* larger request bodies: 413 */
#define GW_API_PRESENCE_MAX 1000        /* members listed by presence (then truncated) */
#define GW_API_INFLIGHT_MAX 256         /* requests waiting for NATS per gateway (then 503) */
/* The session of server publishes on SLUICE_IN (never a client session:
 * those are 22 alphanumerics). */
#define GW_API_SESSION "x-server"

typedef enum gw_api_op {
    GW_API_NONE = 0,
    GW_API_PUBLISH,
    GW_API_DISCONNECT,
    GW_API_PRESENCE,
    GW_API_HISTORY,
} gw_api_op;

/* A parsed request. text is malloc'd (gw_api_req_clear frees it). */
typedef struct gw_api_req {
    gw_api_op op;
    char room[SL_ID_MAX + 1];  /* publish, presence; history: the room of ch */
    char id[SL_ID_MAX + 1];    /* publish */
    char user[SL_SUB_MAX + 1]; /* publish: from; disconnect: user */
    char *text;                /* publish */
    bool agents;               /* publish: agents answer (default true) */
    char ch[SL_ID_MAX + 3];    /* history: "r:<room>" */
    int64_t limit;             /* history: 1..200, default 50 */
    int64_t before;            /* history: 0 = from the newest */
} gw_api_req;

/* Finds the operation of path (without the query) for a method ("GET",
 * "POST", ...). Returns 200 and sets *op, 404 for a path that is not an
 * endpoint, 405 for an endpoint that does not take this method. */
int gw_api_route(const char *path, const char *method, gw_api_op *op);

/* Parses the JSON body of a POST (publish, disconnect) into *req (zeroed
 * first). Returns 200, or 400 with a sentence in msg; nothing to free then.
 * Unknown members are ignored. */
int gw_api_parse_body(gw_api_op op, const char *body, size_t len, gw_api_req *req, char *msg,
                      size_t msglen);

/* Parses the query arguments of a GET (presence: room; history: ch, limit,
 * before), each NULL when absent, into *req (zeroed first). Returns 200, or
 * 400 with a sentence in msg. */
int gw_api_parse_query(gw_api_op op, const char *room, const char *ch, const char *limit,
                       const char *before, gw_api_req *req, char *msg, size_t msglen);

/* Frees what req owns and zeroes it. NULL-safe. */
void gw_api_req_clear(gw_api_req *req);

/* The JSON error body {"error":code,"message":message}: malloc'd, or NULL
 * when out of memory. */
char *gw_api_error_body(const char *code, const char *message);

struct gw_server;
struct gw_conn;

/* Sets up the API of s: its lws protocol in s->protocols[1], its mount in
 * s->mounts[2], and the subscription to disconnects for every tenant.
 * Returns SL_OK, or SL_ERR_NOMEM / SL_ERR_BUS with a message in err. */
sl_status gw_api_create(struct gw_server *s, char *err, size_t errlen);

/* Stops the subscription and frees the API state. Called once lws has
 * closed every connection and before the io pool and bridge go. */
void gw_api_destroy(struct gw_server *s);

/* Index of ready connections by tenant and user, for disconnects. add is
 * called once a connection said hello, del when it is freed (no-op when
 * not indexed). */
void gw_api_user_add(struct gw_server *s, struct gw_conn *c);
void gw_api_user_del(struct gw_server *s, struct gw_conn *c);

#endif /* GW_API_H */
