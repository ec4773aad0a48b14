/* The server API (see gw_api.h): the lws protocol "sluice-api" mounted
 * at /v1/api, the io jobs that publish and read, and the disconnect of a
 * user on every gateway. Routing and parsing are in gw_api_parse.c. */
#include "gw_api_int.h"

#define API_WAIT_S      60            /* an HTTP request waits this long for NATS at most */
#define API_DISCARD_MAX (1024 * 1024) /* a larger declared body is refused unread */

struct gw_api {
    natsSubscription *sub; /* SL_SUBJECT_DISCONNECT_ALL */
    gw_map *users;         /* "<tenant>\n<user>" -> first gw_conn (user_next) */
    int inflight;          /* io jobs of the API queued or running */
};

/* ---------- HTTP sessions ---------- */

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

static void respond(api_pss *p, int status, char *body)
{
    free(p->resp);
    p->answered = true;
    p->status = status;
    p->resp = body != NULL ? body : gw_api_error_body("internal", "out of memory");
    if (p->resp == NULL)
        p->close = true;
    lws_callback_on_writable(p->wsi);
}

static void respond_error(api_pss *p, int status, const char *code, const char *msg)
{
    respond(p, status, gw_api_error_body(code, msg));
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

/* ---------- io jobs ---------- */

static void job_free(void *arg)
{
    api_job *j = arg;

    gw_api_req_clear(&j->req);
    free(j->resp);
    free(j);
}

/* Loop thread: the answer of an io job. */
static void job_done(void *arg)
{
    api_job *j = arg;

    if (j->s->api != NULL)
        j->s->api->inflight--;
    if (j->pss != NULL) {
        j->pss->job = NULL;
        respond(j->pss, j->status, j->resp);
        j->resp = NULL;
    }
    job_free(j);
}

static void job_fail(api_job *j, int status, const char *code, const char *msg)
{
    free(j->resp);
    j->status = status;
    j->resp = gw_api_error_body(code, msg);
}

/* io thread: stores the message on IN like a member's send (one
 * synchronous publish: its acknowledgment is the answer), and for a
 * duplicate reads the original event id back from the stored message. */
static void publish_io(void *arg)
{
    api_job *j = arg;
    gw_server *s = j->s;
    Sluice__Envelope e = SLUICE__ENVELOPE__INIT;
    Sluice__ClientMessage body = SLUICE__CLIENT_MESSAGE__INIT;
    char event_id[SL_EVENT_ID_LEN + 1], subj[SL_SUBJECT_MAX], msgid[3 * SL_ID_MAX + 4];
    jsPubAck *pa = NULL;
    jsErrCode jerr = 0;
    jsPubOptions po;
    natsMsg *m = NULL, *orig = NULL;
    uint8_t *data = NULL;
    size_t len = 0;
    natsStatus st;

    sl_event_id_new(event_id);
    e.event_id = event_id;
    e.tenant = j->tenant;
    e.session = GW_API_SESSION;
    e.client_id = j->req.id;
    e.message_id = j->req.id;
    e.prev_event_id = "";
    e.trace_id = event_id;
    e.ts_unix_ns = sl_now_ns();
    body.room = j->req.room;
    body.text = j->req.text;
    body.user = j->req.user;
    body.server = true;
    body.no_agents = !j->req.agents;
    e.body_case = SLUICE__ENVELOPE__BODY_MESSAGE;
    e.message = &body;
    snprintf(msgid, sizeof(msgid), "%s:%s:%s", j->tenant, GW_API_SESSION, j->req.id);
    if (sl_subject_in(subj, sizeof(subj), j->tenant, GW_API_SESSION) != SL_OK ||
        sl_envelope_encode(&e, &data, &len) != SL_OK ||
        natsMsg_Create(&m, subj, NULL, (const char *)data, (int)len) != NATS_OK ||
        natsMsgHeader_Set(m, "Nats-Msg-Id", msgid) != NATS_OK) {
        job_fail(j, 500, "internal", "cannot build the message");
        goto done;
    }
    jsPubOptions_Init(&po);
    po.MaxWait = j->publish_timeout_ms;
    st = js_PublishMsg(&pa, sl_bus_js(s->bus), m, &po, &jerr);
    if (st != NATS_OK || pa == NULL) {
        sl_warn("api publish %s: %s (jerr %d)", msgid, natsStatus_GetText(st), (int)jerr);
        job_fail(j, 503, "unavailable",
                 "the message was not stored in time; retry with the same id");
        goto done;
    }
    if (pa->Duplicate) {
        Sluice__Envelope *oe = NULL;
        event_id[0] = '\0';
        if (js_GetMsg(&orig, sl_bus_js(s->bus), SL_STREAM_IN, pa->Sequence, NULL, NULL) ==
                NATS_OK &&
            sl_envelope_decode(natsMsg_GetData(orig), (size_t)natsMsg_GetDataLength(orig), &oe) ==
                SL_OK) {
            snprintf(event_id, sizeof(event_id), "%s", oe->event_id);
            sl_envelope_free(oe);
        }
        if (event_id[0] == '\0') {
            job_fail(j, 503, "unavailable", "stored before; cannot read it back now, retry");
            goto done;
        }
    }
    {
        cJSON *o = cJSON_CreateObject();
        if (o != NULL && cJSON_AddStringToObject(o, "event", event_id) != NULL &&
            cJSON_AddBoolToObject(o, "duplicate", pa->Duplicate) != NULL) {
            j->status = 200;
            j->resp = cJSON_PrintUnformatted(o);
        }
        cJSON_Delete(o);
        if (j->resp == NULL)
            job_fail(j, 500, "internal", "out of memory");
    }
done:
    jsPubAck_Destroy(pa);
    natsMsg_Destroy(m);
    natsMsg_Destroy(orig);
    free(data);
    gw_bridge_post(s->bridge, job_done, job_free, j);
}

/* io thread: the room's members from the presence bucket, as a joining
 * client gets them in `joined.members`. */
static void presence_io(void *arg)
{
    api_job *j = arg;
    gw_server *s = j->s;
    kvWatcher *w = NULL;
    kvWatchOptions wo;
    char filter[SL_SUBJECT_MAX];
    cJSON *o = cJSON_CreateObject(), *members = cJSON_AddArrayToObject(o, "members");
    bool truncated = false, ok = false;

    snprintf(filter, sizeof(filter), "%s.%s.*", j->tenant, j->req.room);
    kvWatchOptions_Init(&wo);
    wo.IgnoreDeletes = true;
    if (members != NULL && s->kv_presence != NULL &&
        kvStore_Watch(&w, s->kv_presence, filter, &wo) == NATS_OK) {
        for (int i = 0;; i++) {
            kvEntry *e = NULL;
            if (kvWatcher_Next(&e, w, 2000) != NATS_OK)
                break;
            if (e == NULL) { /* the initial values are done */
                ok = true;
                break;
            }
            if (i >= GW_API_PRESENCE_MAX) {
                truncated = true;
                ok = true;
                kvEntry_Destroy(e);
                break;
            }
            {
                const char *sess = strrchr(kvEntry_Key(e), '.');
                cJSON *v = cJSON_ParseWithLength(kvEntry_Value(e), (size_t)kvEntry_ValueLen(e));
                cJSON *u = cJSON_GetObjectItemCaseSensitive(v, "user");
                if (sess != NULL && cJSON_IsString(u)) {
                    cJSON *mem = cJSON_CreateObject();
                    cJSON_AddStringToObject(mem, "user", u->valuestring);
                    cJSON_AddStringToObject(mem, "session", sess + 1);
                    cJSON_AddItemToArray(members, mem);
                }
                cJSON_Delete(v);
            }
            kvEntry_Destroy(e);
        }
        kvWatcher_Destroy(w);
    }
    if (ok) {
        if (truncated)
            cJSON_AddBoolToObject(o, "truncated", 1);
        j->status = 200;
        j->resp = cJSON_PrintUnformatted(o);
    }
    if (j->resp == NULL)
        job_fail(j, 503, "unavailable", "presence read failed; retry");
    cJSON_Delete(o);
    gw_bridge_post(s->bridge, job_done, job_free, j);
}

/* io thread: the client's history read (gw__history_read_io), answered
 * with the frame a client gets: the newest `limit` events below `before`,
 * in stream order, with more and next_before. */
static void history_io(void *arg)
{
    api_job *j = arg;
    gw_server *s = j->s;
    read_job *r = calloc(1, sizeof(*r));
    char **events = NULL;
    size_t k = 0;

    if (r == NULL) {
        job_fail(j, 500, "internal", "out of memory");
        goto done;
    }
    r->s = s;
    r->kind = READ_HISTORY;
    snprintf(r->ch, sizeof(r->ch), "%s", j->req.ch);
    snprintf(r->tenant, sizeof(r->tenant), "%s", j->tenant);
    snprintf(r->room, sizeof(r->room), "%s", j->req.room);
    sl_subject_out(r->out, sizeof(r->out), j->tenant, true, j->req.room);
    sl_subject_live(r->live, sizeof(r->live), j->tenant, true, j->req.room);
    r->before = (uint64_t)j->req.before;
    r->limit = j->req.limit;
    if (gw__history_read_io(r) != NATS_OK) {
        job_fail(j, 503, "unavailable", "history read failed; retry");
        goto done;
    }
    {
        size_t lo = r->n > (size_t)r->limit ? r->n - (size_t)r->limit : 0, cut = r->n;
        events = calloc(r->n - lo + 1, sizeof(char *));
        if (events == NULL) {
            job_fail(j, 500, "internal", "out of memory");
            goto done;
        }
        for (size_t i = r->n; i > lo; i--) {
            Sluice__Envelope *e = NULL;
            char *ev = NULL;
            natsMsg *m = r->msgs[i - 1].msg;
            cut = i - 1;
            if (sl_envelope_decode(natsMsg_GetData(m), (size_t)natsMsg_GetDataLength(m), &e) !=
                SL_OK)
                continue; /* not an event: skipped, as for clients */
            ev = gw_frame_event(e, r->ch, r->msgs[i - 1].seq);
            sl_envelope_free(e);
            if (ev != NULL)
                events[k++] = ev;
        }
        for (size_t a = 0, b = k; a + 1 < b; a++, b--) { /* newest first -> stream order */
            char *t = events[a];
            events[a] = events[b - 1];
            events[b - 1] = t;
        }
        j->resp = gw_frame_history(r->ch, events, k, cut > 0 || r->covered > 1,
                                   (int64_t)(cut < r->n ? r->msgs[cut].seq : r->covered), NULL);
        j->status = 200;
        if (j->resp == NULL)
            job_fail(j, 500, "internal", "out of memory");
    }
done:
    for (size_t i = 0; i < k; i++)
        free(events[i]);
    free(events);
    if (r != NULL) {
        for (size_t i = 0; i < r->n; i++)
            natsMsg_Destroy(r->msgs[i].msg);
        free(r->msgs);
        cJSON_Delete(r->members);
        free(r);
    }
    gw_bridge_post(s->bridge, job_done, job_free, j);
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
    respond(p, 200, strdup("{}"));
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
        rc = submit(s, p, req, publish_io);
    } else if (req->op == GW_API_DISCONNECT) {
        rc = disconnect_now(s, p, req);
    } else if (req->op == GW_API_PRESENCE) {
        rc = submit(s, p, req, presence_io);
    } else {
        rc = submit(s, p, req, history_io);
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
