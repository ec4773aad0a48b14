/* Private to the server API (gw_api.c, gw_api_parse.c, gw_api_ops.c): what
 * these files share. Not for other modules. */
#ifndef GW_API_INT_H
#define GW_API_INT_H

#include "gw_server_int.h"

#define API_PREFIX "/v1/api"

struct gw_api {
    natsSubscription *sub; /* SL_SUBJECT_DISCONNECT_ALL */
    gw_map *users;         /* "<tenant>\n<user>" -> first gw_conn (user_next) */
    int inflight;          /* io jobs of the API queued or running */
};

typedef struct api_job api_job;

/* One HTTP connection on the API (lws's per-session data; loop thread). A
 * keep-alive connection carries its requests one after another. */
typedef struct api_pss {
    struct lws *wsi;
    gw_api_op op;
    char tenant[SL_ID_MAX + 1];
    int err_status;       /* refused before the body was read: answered once it was */
    const char *err_code; /* a string literal */
    char err_msg[160];
    char *body;
    size_t body_len;
    bool body_over;
    api_job *job;  /* waiting for an io thread, or NULL */
    int status;    /* the response waiting for a writeable callback (resp != NULL) */
    char *resp;    /* malloc'd JSON */
    bool close;    /* close after the response (its body was not read) */
    bool answered; /* this request has its answer: later body callbacks are dropped */
} api_pss;

/* Work handed to an io thread. The io thread touches only s's bus, io and
 * bridge and the job itself; pss is the loop's (NULL once the HTTP
 * connection is gone: the answer is then dropped). */
struct api_job {
    gw_server *s;
    api_pss *pss;
    gw_api_req req;
    char tenant[SL_ID_MAX + 1];
    int64_t publish_timeout_ms;
    int status;
    char *resp;
};

/* Loop thread: sets the answer of p's request (body is taken; when NULL, an
 * out-of-memory error body goes instead) and asks for a writeable callback,
 * which sends it. */
void gw__api_respond(api_pss *p, int status, char *body);

/* io threads (gw_io_submit_bulk), each with an api_job: publish, presence
 * and history. Each posts its answer back to the loop through the bridge. */
void gw__api_publish_io(void *arg);
void gw__api_presence_io(void *arg);
void gw__api_history_io(void *arg);

#endif /* GW_API_INT_H */
