/* The server API (see gw_api.h): the lws protocol "sluice-api" mounted
 * at /v1/api (HTTP sessions, token checks, dispatch), and the disconnect of
 * a user on every gateway. Routing and parsing are in gw_api_parse.c, the
 * io jobs that publish and read in gw_api_ops.c. */
#include "gw_api_int.h"

#define API_WAIT_S      60            /* an HTTP request waits this long for NATS at most */
#define API_DISCARD_MAX (1024 * 1024) /* a larger declared body is refused unread */

/* ---------- HTTP sessions ---------- */

static void respond_error(api_pss *p, int status, const char *code, const char *msg)
{
    gw__api_respond(p, status, gw_api_error_body(code, msg));
}

static void pss_reset(api_pss *p, struct lws *wsi)
{
    if (p->job != NULL) /* a request that overtook an unanswered one: drop that answer */
        p->job->pss = NULL;
    free(p->body);
    free(p->resp);
    memset(p, 0, sizeof(*p));
    p->wsi = wsi;
}

/* Detaches the connection from its job (which then frees itself). */
static void pss_release(api_pss *p)
{
    if (p->job != NULL)
        p->job->pss = NULL;
    p->job = NULL;
    free(p->body);
    free(p->resp);
    p->body = p->resp = NULL;
}

static const char *op_name(gw_api_op op)
{
    switch (op) {
    case GW_API_PUBLISH:
        return "publish";
    case GW_API_DISCONNECT:
        return "disconnect";
    case GW_API_PRESENCE:
        return "presence";
    case GW_API_HISTORY:
        return "history";
    default:
        return "none";
    }
}

static int write_response(api_pss *p)
{
    unsigned char hdr[LWS_PRE + 512], *h = hdr + LWS_PRE, *end = hdr + sizeof(hdr);
    unsigned char *buf;
    size_t n;
    int w;

    if (p->resp == NULL)
        return p->close ? -1 : 0;
    {
        char labels[64];
        snprintf(labels, sizeof(labels), "op=\"%s\",status=\"%d\"", op_name(p->op), p->status);
        sl_counter_inc(sl_counter_get("sluice_gw_api_requests_total", labels,
                                      "server API answers by endpoint and HTTP status"));
    }
    n = strlen(p->resp);
    if (lws_add_http_common_headers(p->wsi, (unsigned int)p->status, "application/json",
                                    (lws_filepos_t)n, &h, end) ||
        lws_add_http_header_by_name(p->wsi, (const unsigned char *)"cache-control:",
                                    (const unsigned char *)"no-store", 8, &h, end) ||
        (p->status == 401 &&
         lws_add_http_header_by_name(p->wsi, (const unsigned char *)"www-authenticate:",
                                     (const unsigned char *)"Bearer", 6, &h, end)) ||
        (p->close && lws_add_http_header_by_token(p->wsi, WSI_TOKEN_CONNECTION,
                                                  (const unsigned char *)"close", 5, &h, end)) ||
        lws_finalize_write_http_header(p->wsi, hdr + LWS_PRE, &h, end))
        return -1;
    buf = malloc(LWS_PRE + n);
    if (buf == NULL)
        return -1;
    memcpy(buf + LWS_PRE, p->resp, n);
    w = lws_write(p->wsi, buf + LWS_PRE, n, LWS_WRITE_HTTP_FINAL);
    free(buf);
    free(p->resp);
    p->resp = NULL;
    if (w != (int)n || p->close)
        return -1;
    return lws_http_transaction_completed(p->wsi) ? -1 : 0;
}

/* ---------- disconnects ---------- */

typedef struct disconnect_item {
    gw_server *s;
    char tenant[SL_ID_MAX + 1];
    char user[SL_SUB_MAX + 1];
} disconnect_item;

static void user_key(char *buf, size_t n, const char *tenant, const char *user)
{
    /* A user has no control characters: '\n' cannot be part of either. */
    snprintf(buf, n, "%s\n%s", tenant, user);
}

/* Loop thread: closes every connection of the user here with 4403. */
static void disconnect_run(void *arg)
{
    disconnect_item *d = arg;
    gw_server *s = d->s;
    char key[SL_ID_MAX + SL_SUB_MAX + 2];
    gw_conn *c;
    int n = 0;

    if (s->api != NULL) {
        user_key(key, sizeof(key), d->tenant, d->user);
        for (c = gw_map_get(s->api->users, key); c != NULL; c = c->user_next) {
            gw__conn_close(c, 4403, "disconnected by the application", false);
            n++;
        }
        if (n > 0)
            sl_info("api: disconnected %d connection(s) of a user of tenant %s", n, d->tenant);
    }
    free(d);
}

/* cnats thread: a disconnect published by any gateway's API. */
static void on_disconnect_cb(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    gw_server *s = closure;
    size_t n = (size_t)natsMsg_GetDataLength(msg);
    disconnect_item *d = NULL;

    (void)nc;
    (void)sub;
    if (n == 0 || n > SL_SUB_MAX || (d = calloc(1, sizeof(*d))) == NULL)
        goto cleanup;
    d->s = s;
    memcpy(d->user, natsMsg_GetData(msg), n);
    d->user[n] = '\0';
    if (sl_subject_disconnect_parse(natsMsg_GetSubject(msg), d->tenant) != SL_OK ||
        !sl_user_valid(d->user))
        goto cleanup;
    gw_bridge_post(s->bridge, disconnect_run, free, d);
    d = NULL;
cleanup:
    free(d);
    natsMsg_Destroy(msg);
}

void gw_api_user_add(gw_server *s, gw_conn *c)
{
    char key[SL_ID_MAX + SL_SUB_MAX + 2];
    gw_conn *head;

    if (s->api == NULL || c->user_indexed || c->sub == NULL)
        return;
    user_key(key, sizeof(key), c->tenant, c->sub);
    head = gw_map_get(s->api->users, key);
    if (gw_map_put(s->api->users, key, c) != SL_OK)
        return; /* out of memory: this connection cannot be disconnected by the API */
    c->user_prev = NULL;
    c->user_next = head;
    if (head != NULL)
        head->user_prev = c;
    c->user_indexed = true;
}

void gw_api_user_del(gw_server *s, gw_conn *c)
{
    char key[SL_ID_MAX + SL_SUB_MAX + 2];

    if (s->api == NULL || !c->user_indexed)
        return;
    if (c->user_next != NULL)
        c->user_next->user_prev = c->user_prev;
    if (c->user_prev != NULL) {
        c->user_prev->user_next = c->user_next;
    } else {
        user_key(key, sizeof(key), c->tenant, c->sub);
        if (c->user_next != NULL)
            gw_map_put(s->api->users, key, c->user_next); /* replaces: no allocation */
        else
            gw_map_del(s->api->users, key);
    }
    c->user_prev = c->user_next = NULL;
    c->user_indexed = false;
}

/* ---------- requests ---------- */

static int submit(gw_server *s, api_pss *p, gw_api_req *req, gw_task_fn fn)
{
    api_job *j;

    if (s->api->inflight >= GW_API_INFLIGHT_MAX) {
        respond_error(p, 503, "busy", "too many API requests in flight on this gateway; retry");
        return 0;
    }
    j = calloc(1, sizeof(*j));
    if (j == NULL) {
        respond_error(p, 500, "internal", "out of memory");
        return 0;
    }
    j->s = s;
    j->pss = p;
    j->req = *req;
    memset(req, 0, sizeof(*req)); /* the job owns text now */
    snprintf(j->tenant, sizeof(j->tenant), "%s", p->tenant);
    j->publish_timeout_ms = s->cfg->publish_timeout_ms;
    p->job = j;
    s->api->inflight++;
    lws_set_timeout(p->wsi, PENDING_TIMEOUT_USER_OK, API_WAIT_S);
    /* Bulk: after client joins, resumes and fills, never on every io thread. */
    gw_io_submit_bulk(s->io, fn, j);
    return 0;
}

static int disconnect_now(gw_server *s, api_pss *p, const gw_api_req *req)
{
    char subj[SL_SUBJECT_MAX];

    if (sl_subject_disconnect(subj, sizeof(subj), p->tenant) != SL_OK) {
        respond_error(p, 500, "internal", "cannot build the subject");
        return 0;
    }
    /* Core NATS: every gateway, this one included, hears it. */
    if (!sl_bus_connected(s->bus) || natsConnection_Publish(sl_bus_nc(s->bus), subj, req->user,
                                                            (int)strlen(req->user)) != NATS_OK) {
        respond_error(p, 503, "unavailable", "NATS is not reachable; retry");
        return 0;
    }
    gw__api_respond(p, 200, strdup("{}"));
    return 0;
}

static int dispatch(gw_server *s, api_pss *p, gw_api_req *req)
{
    int rc = 0;

    if (req->op != GW_API_DISCONNECT && !sl_bus_connected(s->bus)) {
        respond_error(p, 503, "unavailable", "NATS is not reachable; retry");
    } else if (req->op == GW_API_PUBLISH && atomic_load(&s->draining)) {
        respond_error(p, 503, "draining", "this gateway is shutting down; retry on another");
    } else if (req->op == GW_API_PUBLISH) {
        rc = submit(s, p, req, gw__api_publish_io);
    } else if (req->op == GW_API_DISCONNECT) {
        rc = disconnect_now(s, p, req);
    } else if (req->op == GW_API_PRESENCE) {
        rc = submit(s, p, req, gw__api_presence_io);
    } else {
        rc = submit(s, p, req, gw__api_history_io);
    }
    gw_api_req_clear(req);
    return rc;
}

/* Checks the bearer token; 200, or the status and error of a refusal. */
static int check_auth(gw_server *s, struct lws *wsi, api_pss *p)
{
    char hdr[SL_TOKEN_MAX + 64], why[128] = "";
    const char *tok;
    sl_claims cl;
    int n = lws_hdr_total_length(wsi, WSI_TOKEN_HTTP_AUTHORIZATION);

    p->err_code = "unauthorized";
    if (n <= 0) {
        snprintf(p->err_msg, sizeof(p->err_msg), "Authorization: Bearer <token> is required");
        return 401;
    }
    if (n >= (int)sizeof(hdr) ||
        lws_hdr_copy(wsi, hdr, sizeof(hdr), WSI_TOKEN_HTTP_AUTHORIZATION) < 0) {
        snprintf(p->err_msg, sizeof(p->err_msg), "token too long");
        return 401;
    }
    if (strncasecmp(hdr, "Bearer ", 7) != 0) {
        snprintf(p->err_msg, sizeof(p->err_msg), "Authorization: Bearer <token> is required");
        return 401;
    }
    for (tok = hdr + 7; *tok == ' ';)
        tok++;
    if (sl_auth_verify(s->auth, tok, (int64_t)time(NULL), &cl, why, sizeof(why)) != SL_OK) {
        snprintf(p->err_msg, sizeof(p->err_msg), "%s", why);
        return 401;
    }
    if (!cl.server) {
        p->err_code = "forbidden";
        snprintf(p->err_msg, sizeof(p->err_msg), "a token with \"role\":\"server\" is required");
        return 403;
    }
    snprintf(p->tenant, sizeof(p->tenant), "%s", cl.tenant);
    p->err_code = NULL;
    return 200;
}

static const char *method_name(int m)
{
    static const char *const names[] = {"GET",   "POST",   "OPTIONS", "PUT",
                                        "PATCH", "DELETE", "CONNECT", "HEAD"};
    return m >= 0 && m < (int)(sizeof(names) / sizeof(names[0])) ? names[m] : "?";
}

static int on_http(gw_server *s, api_pss *p, struct lws *wsi)
{
    char path[256] = "", cl[32] = "";
    char *uri = NULL;
    int ulen = 0, m, code;
    int64_t clen = 0;
    gw_api_req req;

    pss_reset(p, wsi);
    m = lws_http_get_uri_and_method(wsi, &uri, &ulen);
    if (m >= 0 && uri != NULL && ulen > 0)
        snprintf(path, sizeof(path), "%.*s", ulen, uri);
    if (lws_hdr_copy(wsi, cl, sizeof(cl), WSI_TOKEN_HTTP_CONTENT_LENGTH) > 0 &&
        sl_parse_int(cl, &clen) != SL_OK)
        clen = -1;
    code = gw_api_route(path, method_name(m), &p->op);
    if (code == 404) {
        p->err_code = "not_found";
        snprintf(p->err_msg, sizeof(p->err_msg), "no such endpoint (see docs/operations.md)");
    } else if (code == 405) {
        p->err_code = "method_not_allowed";
        snprintf(p->err_msg, sizeof(p->err_msg), "%s is not allowed on %.64s", method_name(m),
                 path);
    } else {
        code = check_auth(s, wsi, p);
    }
    if (lws_hdr_total_length(wsi, WSI_TOKEN_HTTP_TRANSFER_ENCODING) > 0)
        clen = -2; /* a chunked body: its end is not known up front */
    if (clen < 0 || clen > API_DISCARD_MAX) {
        /* Refused unread: the connection closes after the answer. */
        p->close = true;
        if (code != 200)
            respond_error(p, code, p->err_code, p->err_msg);
        else if (clen == -2)
            respond_error(p, 411, "length_required", "a body needs a Content-Length");
        else if (clen < 0)
            respond_error(p, 400, "bad_request", "bad Content-Length");
        else
            respond_error(p, 413, "too_large", "the body is over 64 KiB");
        return 0;
    }
    p->err_status = code == 200 ? 0 : code;
    if (clen > 0)
        return 0; /* answered once the body is in (HTTP_BODY_COMPLETION) */
    if (p->err_status != 0) {
        respond_error(p, p->err_status, p->err_code, p->err_msg);
        return 0;
    }
    if (p->op == GW_API_PUBLISH || p->op == GW_API_DISCONNECT) {
        respond_error(p, 400, "bad_request", "the body must be a JSON object");
        return 0;
    }
    {
        char a[SL_ID_MAX + 16], b[GW_CH_MAX + 16], c[32], d[32];
        char msg[160];
        const char *room = lws_get_urlarg_by_name(wsi, "room=", a, sizeof(a));
        const char *ch = lws_get_urlarg_by_name(wsi, "ch=", b, sizeof(b));
        const char *limit = lws_get_urlarg_by_name(wsi, "limit=", c, sizeof(c));
        const char *before = lws_get_urlarg_by_name(wsi, "before=", d, sizeof(d));
        if (gw_api_parse_query(p->op, room, ch, limit, before, &req, msg, sizeof(msg)) != 200) {
            respond_error(p, 400, "bad_request", msg);
            return 0;
        }
    }
    return dispatch(s, p, &req);
}

static void on_body(api_pss *p, const void *in, size_t len)
{
    char *nb;

    if (p->body_over || p->err_status != 0 || p->answered)
        return; /* read and dropped */
    if (p->body_len + len > GW_API_BODY_MAX) {
        p->body_over = true;
        free(p->body);
        p->body = NULL;
        p->body_len = 0;
        return;
    }
    nb = realloc(p->body, p->body_len + len + 1);
    if (nb == NULL) {
        p->body_over = true; /* answered as too large: nothing is stored */
        return;
    }
    memcpy(nb + p->body_len, in, len);
    p->body_len += len;
    nb[p->body_len] = '\0';
    p->body = nb;
}

static int on_body_done(gw_server *s, api_pss *p)
{
    gw_api_req req;
    char msg[160];
    int code;

    if (p->answered)
        return 0;
    if (p->err_status != 0) {
        respond_error(p, p->err_status, p->err_code, p->err_msg);
        return 0;
    }
    if (p->body_over) {
        respond_error(p, 413, "too_large", "the body is over 64 KiB");
        return 0;
    }
    code = gw_api_parse_body(p->op, p->body, p->body_len, &req, msg, sizeof(msg));
    free(p->body);
    p->body = NULL;
    if (code != 200) {
        respond_error(p, code, code == 400 ? "bad_request" : "internal", msg);
        return 0;
    }
    return dispatch(s, p, &req);
}

static int api_callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in,
                        size_t len)
{
    gw_server *s = lws_context_user(lws_get_context(wsi));
    api_pss *p = user;

    switch (reason) {
    case LWS_CALLBACK_FILTER_PROTOCOL_CONNECTION:
        return 1; /* no websockets here */
    case LWS_CALLBACK_HTTP:
        if (s == NULL || s->api == NULL || p == NULL)
            return -1;
        return on_http(s, p, wsi);
    case LWS_CALLBACK_HTTP_BODY:
        if (p != NULL && in != NULL)
            on_body(p, in, len);
        break;
    case LWS_CALLBACK_HTTP_BODY_COMPLETION:
        if (s == NULL || s->api == NULL || p == NULL)
            return -1;
        return on_body_done(s, p);
    case LWS_CALLBACK_HTTP_WRITEABLE:
        if (p == NULL)
            return -1;
        return write_response(p);
    case LWS_CALLBACK_HTTP_DROP_PROTOCOL:
    case LWS_CALLBACK_CLOSED_HTTP:
        if (p != NULL)
            pss_release(p);
        break;
    default:
        break;
    }
    return 0;
}

/* ---------- lifecycle ---------- */

sl_status gw_api_create(gw_server *s, char *err, size_t errlen)
{
    struct gw_api *a = calloc(1, sizeof(*a));

    if (a == NULL || gw_map_create(&a->users) != SL_OK) {
        sl_errf(err, errlen, "api: out of memory");
        if (a != NULL)
            free(a);
        return SL_ERR_NOMEM;
    }
    if (natsConnection_Subscribe(&a->sub, sl_bus_nc(s->bus), SL_SUBJECT_DISCONNECT_ALL,
                                 on_disconnect_cb, s) != NATS_OK) {
        sl_errf(err, errlen, "api: cannot subscribe to %s", SL_SUBJECT_DISCONNECT_ALL);
        gw_map_destroy(a->users);
        free(a);
        return SL_ERR_BUS;
    }
    s->api = a;
    s->protocols[1].name = "sluice-api";
    s->protocols[1].callback = api_callback;
    s->protocols[1].per_session_data_size = sizeof(api_pss);
    s->protocols[1].rx_buffer_size = 4096;
    s->mounts[2].mountpoint = API_PREFIX;
    s->mounts[2].mountpoint_len = (unsigned char)strlen(API_PREFIX);
    s->mounts[2].origin = "sluice-api";
    s->mounts[2].origin_protocol = LWSMPRO_CALLBACK;
    return SL_OK;
}

void gw_api_destroy(gw_server *s)
{
    struct gw_api *a = s->api;

    if (a == NULL)
        return;
    /* Drained, so its callback (which posts to the bridge) has returned. */
    if (natsSubscription_Drain(a->sub) != NATS_OK ||
        natsSubscription_WaitForDrainCompletion(a->sub, 5000) != NATS_OK)
        natsSubscription_Unsubscribe(a->sub);
    natsSubscription_Destroy(a->sub);
    gw_map_destroy(a->users);
    free(a);
    s->api = NULL;
}
