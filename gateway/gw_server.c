/* The gateway server: the libwebsockets callback (with the dev-mode token
 * endpoint), metrics, and create/run/ready/destroy (the options table and
 * their validation are gw_config.c). The rest of the server lives in gw_out.c,
 * gw_chan.c, gw_read.c, gw_stream.c, gw_history.c, gw_live.c, gw_cmd.c and
 * gw_conn.c (shared state in gw_server_int.h). */
#include "gw_server_int.h"

/* ---------- the libwebsockets callback ---------- */

static int http_dev_token(gw_server *s, struct lws *wsi)
{
    char targ[SL_ID_MAX + 16] = "", sarg[SL_SUB_MAX + 16] = "", body[SL_TOKEN_MAX + 64];
    unsigned char hdr[LWS_PRE + 1024], *p = hdr + LWS_PRE, *end = hdr + sizeof(hdr);
    const char *tenant, *sub;
    char *tok = NULL;
    unsigned int code = 200;
    int n;

    /* The returned pointers point just past "name=" inside the buffers. */
    tenant = lws_get_urlarg_by_name(wsi, "tenant=", targ, sizeof(targ));
    sub = lws_get_urlarg_by_name(wsi, "sub=", sarg, sizeof(sarg));
    if (!s->cfg->dev_mode || s->cfg->jwt_secret == NULL) {
        code = 404;
        snprintf(body, sizeof(body), "{\"error\":\"dev mode is off\"}");
    } else if (tenant == NULL || sub == NULL || !sl_id_valid(tenant) || sub[0] == '\0' ||
               !sl_id_valid(sub)) {
        code = 400;
        snprintf(body, sizeof(body),
                 "{\"error\":\"tenant and sub are required ([A-Za-z0-9_-]{1,64})\"}");
    } else if (sl_jwt_mint_hs256(s->cfg->jwt_secret, tenant, sub, (int64_t)time(NULL) + 86400, NULL,
                                 -1, &tok) != SL_OK) {
        code = 400;
        snprintf(body, sizeof(body), "{\"error\":\"cannot mint a token for these claims\"}");
    } else {
        snprintf(body, sizeof(body), "{\"token\":\"%s\"}", tok);
    }
    free(tok);
    n = (int)strlen(body);
    if (lws_add_http_common_headers(wsi, code, "application/json", (lws_filepos_t)n, &p, end) ||
        lws_add_http_header_by_name(wsi, (const unsigned char *)"cache-control:",
                                    (const unsigned char *)"no-store", 8, &p, end) ||
        lws_finalize_write_http_header(wsi, hdr + LWS_PRE, &p, end))
        return 1;
    {
        unsigned char *out = malloc(LWS_PRE + (size_t)n);
        int w;
        if (out == NULL)
            return 1;
        memcpy(out + LWS_PRE, body, (size_t)n);
        w = lws_write(wsi, out + LWS_PRE, (size_t)n, LWS_WRITE_HTTP_FINAL);
        free(out);
        if (w != n)
            return 1;
    }
    return lws_http_transaction_completed(wsi) ? -1 : 0;
}

static int gw_callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in,
                       size_t len)
{
    gw_server *s = lws_context_user(lws_get_context(wsi));
    gw_conn *c = user;

    switch (reason) {
    case LWS_CALLBACK_EVENT_WAIT_CANCELLED:
        if (s != NULL && s->bridge != NULL)
            gw_bridge_run(s->bridge);
        break;
    case LWS_CALLBACK_HTTP:
        if (in != NULL && strncmp((const char *)in, "/dev/token", 10) == 0)
            return http_dev_token(s, wsi);
        if (lws_return_http_status(wsi, HTTP_STATUS_NOT_FOUND, NULL))
            return -1;
        return lws_http_transaction_completed(wsi) ? -1 : 0;
    case LWS_CALLBACK_HTTP_FILE_COMPLETION:
        /* Keep-alive: browsers fetch a page's files over one connection. */
        return lws_http_transaction_completed(wsi) ? -1 : 0;
    case LWS_CALLBACK_FILTER_PROTOCOL_CONNECTION: {
        char uri[64];
        if (lws_hdr_copy(wsi, uri, sizeof(uri), WSI_TOKEN_GET_URI) < 0 ||
            strcmp(uri, "/v1/ws") != 0)
            return 1;
        break;
    }
    case LWS_CALLBACK_ESTABLISHED: {
        int64_t now = now_ms();
        memset(c, 0, sizeof(*c));
        c->wsi = wsi;
        c->srv = s;
        c->opened_ms = c->last_rx_ms = now;
        c->plain = !lws_is_ssl(wsi);
        {
            /* The first ping comes after a random
             * half to whole heartbeat, so connections opened together
             * (a reconnect storm) do not keep pinging together. */
            uint32_t r;
            sl_random_bytes(&r, sizeof(r));
            c->last_ping_ms = now - (int64_t)(r % (uint32_t)(s->cfg->heartbeat_ms / 2 + 1));
        }
        ev_init(&c->timer, gw__conn_timer_cb);
        if (s->cfg->socket_sndbuf > 0) {
            /* Bounds what a client that stops reading pins in the kernel
             * (autotuning grows it to megabytes), so it is cut with 4429 by
             * the queue bound soon, and its backlog, then its close frame,
             * reach it in time when it reads again. */
            int sz = (int)s->cfg->socket_sndbuf;
            lws_sockfd_type fd = lws_get_socket_fd(wsi);
            if (fd >= 0 && setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sz, sizeof(sz)) != 0)
                sl_debug("SO_SNDBUF %d: %s", sz, strerror(errno));
        }
        gw_bucket_init(&c->bucket, (double)s->cfg->rate, (double)s->cfg->burst, now);
        c->all_next = s->all;
        if (s->all != NULL)
            s->all->all_prev = c;
        s->all = c;
        s->nconns++;
        sl_gauge_inc(s->m.connections);
        sl_counter_inc(s->m.connections_total);
        if (atomic_load(&s->draining)) {
            gw__conn_close(c, 1001, "gateway draining", false);
        } else if (!gw_bucket_take(&s->handshakes, now)) {
            sl_counter_inc(s->m.handshake_refusals);
            gw__conn_close(c, 1013, "overloaded, retry with backoff", false);
        }
        gw__conn_timer_arm(s, c);
        break;
    }
    case LWS_CALLBACK_RECEIVE:
        gw__on_receive(s, c, in, len);
        gw__conn_timer_arm(s, c); /* a send's ack deadline, a position to flush */
        break;
    case LWS_CALLBACK_RECEIVE_PONG:
        c->last_rx_ms = now_ms();
        break;
    case LWS_CALLBACK_SERVER_WRITEABLE:
        return gw__on_writeable(s, c);
    case LWS_CALLBACK_CLOSED:
        gw__conn_free(s, c);
        /* After gw__conn_free, which may arm the timer (a position change). */
        ev_timer_stop(s->loop, &c->timer);
        break;
    default:
        break;
    }
    return 0;
}

/* ---------- lifecycle ---------- */

static void metrics_init(gw_metrics *m)
{
    m->connections = sl_gauge_get("sluice_gw_connections", NULL, "open WebSocket connections");
    m->history_inflight =
        sl_gauge_get("sluice_gw_history_reads_inflight", NULL, "history reads queued or running");
    m->connections_total =
        sl_counter_get("sluice_gw_connections_total", NULL, "WebSocket connections accepted");
    m->frames_in = sl_counter_get("sluice_gw_frames_in_total", NULL, "client frames received");
    m->frames_out = sl_counter_get("sluice_gw_frames_out_total", NULL, "frames sent to clients");
    m->bytes_in = sl_counter_get("sluice_gw_bytes_in_total", NULL, "client frame bytes received");
    m->bytes_out = sl_counter_get("sluice_gw_bytes_out_total", NULL, "frame bytes sent");
    m->writes =
        sl_counter_get("sluice_gw_writes_total", NULL,
                       "socket writes of frames to clients (one write carries one or more)");
    m->io_uring = sl_gauge_get("sluice_gw_io_uring", NULL,
                               "1 when writes to clients go to the kernel in io_uring batches");
    m->uring_submits = sl_counter_get(
        "sluice_gw_uring_submits_total", NULL,
        "io_uring submissions: system calls that each carried up to 64 socket writes");
    m->busy_rate =
        sl_counter_get("sluice_gw_busy_total", "reason=\"rate_limited\"", "busy answers by reason");
    m->busy_overloaded =
        sl_counter_get("sluice_gw_busy_total", "reason=\"overloaded\"", "busy answers by reason");
    m->busy_draining =
        sl_counter_get("sluice_gw_busy_total", "reason=\"draining\"", "busy answers by reason");
    m->busy_history =
        sl_counter_get("sluice_gw_busy_total", "reason=\"history_busy\"", "busy answers by reason");
    m->slow_closes = sl_counter_get("sluice_gw_slow_consumer_closes_total", NULL,
                                    "clients cut with 4429 at their outbound bound");
    m->resumes_ok = sl_counter_get("sluice_gw_resumes_total", "result=\"recovered\"",
                                   "session resumes by result");
    m->resumes_gap =
        sl_counter_get("sluice_gw_resumes_total", "result=\"gap\"", "session resumes by result");
    m->gap_fills =
        sl_counter_get("sluice_gw_gap_fills_total", NULL, "live holes filled from the stream");
    m->fill_gaps = sl_counter_get("sluice_gw_fill_gaps_total", NULL,
                                  "live holes the stream no longer had (gap sent to members)");
    m->handshake_refusals = sl_counter_get("sluice_gw_handshake_refusals_total", NULL,
                                           "connections refused by the handshake bucket");
    m->bad_frames = sl_counter_get("sluice_gw_errors_total", NULL, "error frames sent");
    m->live_dropped = sl_counter_get("sluice_gw_live_dropped_total", NULL,
                                     "live events dropped under overload (refilled)");
    m->joins_local = sl_counter_get(
        "sluice_gw_joins_local_total", NULL,
        "joins served from the gateway's room state or an earlier join's read (no NATS read)");
    m->join_reads = sl_counter_get("sluice_gw_join_reads_total", NULL,
                                   "joins that read the room's head and members from NATS");
    m->presence_writes = sl_counter_get("sluice_gw_presence_writes_total", NULL,
                                        "presence record writes and deletes (per room and "
                                        "flush, and refreshes)");
    m->presence_events = sl_counter_get("sluice_gw_presence_events_total", NULL,
                                        "presence events published (each with one or more "
                                        "changes)");
    m->presence_suppressed =
        sl_counter_get("sluice_gw_presence_suppressed_total", NULL,
                       "presence changes not published: room over SLUICE_PRESENCE_FANOUT_MAX");
    m->replays = sl_counter_get("sluice_gw_replays_total", NULL,
                                "channel replays for resuming or joining members");
    m->replays_cached = sl_counter_get("sluice_gw_replays_cached_total", NULL,
                                       "replays served from the gateway's channel cache");
    m->delivery_latency =
        sl_hist_get("sluice_gw_delivery_latency_seconds", NULL, "event time to socket write");
}

/* ---------- messages the loop is done with ---------- */

#define HELD_MAX 1024 /* messages held at most */
#define HELD_MS  50   /* and for at most this long */

static void held_release_all(gw_server *s)
{
    for (int i = 0; i < s->nheld; i++)
        natsMsg_Destroy(s->held[i]);
    s->nheld = 0;
}

static void held_timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    held_release_all(lws_container_of(w, gw_server, held_timer));
}

/* Held, then destroyed in one burst: the garbage collector thread wakes
 * once for the burst instead of once per message (docs/wire.md, "Cost of
 * a message"). */
void gw__msg_release(gw_server *s, natsMsg *m)
{
    if (m == NULL)
        return;
    if (s->held == NULL || s->loop == NULL) {
        natsMsg_Destroy(m);
        return;
    }
    if (s->nheld == HELD_MAX)
        held_release_all(s);
    s->held[s->nheld++] = m;
    if (!ev_is_active(&s->held_timer)) {
        ev_timer_set(&s->held_timer, HELD_MS / 1000.0, 0.0);
        ev_timer_start(s->loop, &s->held_timer);
    }
}

/* No lws idle policy: the gateway pings and cuts silent clients itself
 * (gw__conn_timer_cb). lws 4.1.6 would otherwise re-arm a 5-minute validity
 * timer on every frame received, an insertion into its sorted timer list
 * that walks every connection's entry. */
static const lws_retry_bo_t no_idle_policy = {.secs_since_valid_ping = 0,
                                              .secs_since_valid_hangup = 0};

sl_status gw_server_create(gw_server **out, const gw_config *cfg, sl_bus *bus, char *err,
                           size_t errlen)
{
    gw_server *s = calloc(1, sizeof(*s));
    struct lws_context_creation_info info;
    void *foreign_loops[1];
    natsInbox *inbox = NULL;
    char ack_subject[96];
    char host[256];
    int port;
    sl_status st = SL_OK;

    if (s == NULL)
        return SL_ERR_NOMEM;
    s->cfg = cfg;
    s->bus = bus;
    s->wbuf = malloc(LWS_PRE + WRITE_BATCH);
    s->held = malloc(HELD_MAX * sizeof(*s->held));
    if (s->wbuf == NULL || s->held == NULL) {
        free(s->wbuf);
        free(s->held);
        free(s);
        return SL_ERR_NOMEM;
    }
    s->resume_secret = cfg->resume_secret ? cfg->resume_secret : cfg->jwt_secret;
    metrics_init(&s->m);
    gw_bucket_init(&s->handshakes, (double)cfg->handshake_rate, (double)cfg->handshake_burst,
                   now_ms());
    if ((st = sl_auth_create(&s->auth, cfg->jwt_secret, cfg->jwt_public_key, err, errlen)) != SL_OK)
        goto cleanup;
    /* lws on a libev loop (Debian's libwebsockets-evlib-ev plugin): epoll
     * costs what the ready sockets cost, where lws's own poll() loop scans
     * every open one on each wake. */
    s->loop = ev_loop_new(EVBACKEND_EPOLL);
    if (s->loop == NULL) {
        snprintf(err, errlen, "gateway init: cannot create the epoll event loop");
        st = SL_ERR_INTERNAL;
        goto cleanup;
    }
    ev_prepare_init(&s->flush_w, gw__flush_cb);
    ev_prepare_start(s->loop, &s->flush_w);
    if (cfg->io_uring) {
        s->uring = gw_uring_new(FLUSH_SLICE);
        s->usend = s->uring != NULL ? calloc(FLUSH_SLICE, sizeof(*s->usend)) : NULL;
        if (s->usend == NULL) {
            sl_info("io_uring not available (%s): fan-out writes use one send() per "
                    "connection",
                    s->uring != NULL ? "out of memory" : strerror(errno));
            gw_uring_free(s->uring);
            s->uring = NULL;
        }
    }
    sl_gauge_set(s->m.io_uring, s->uring != NULL);
    ev_idle_init(&s->flush_more, gw__flush_more_cb);
    ev_init(&s->held_timer, held_timer_cb);
    /* Acknowledgements are never dropped: the bound of their batch is
     * never reached (sends in flight are bounded per connection). */
    if ((st = gw_bridge_create(&s->bridge, 200000)) != SL_OK ||
        (st = gw_batch_create(&s->live, s->bridge, 200000, gw__live_run, gw__live_free, s)) !=
            SL_OK ||
        (st = gw_batch_create(&s->acks, s->bridge, SIZE_MAX / 2, gw__ack_run, gw__ack_free, s)) !=
            SL_OK ||
        (st = gw__presence_create(s)) != SL_OK ||
        (st = gw_io_create(&s->io, (int)cfg->io_threads)) != SL_OK ||
        (st = gw_map_create(&s->sessions)) != SL_OK || (st = gw_map_create(&s->chans)) != SL_OK) {
        snprintf(err, errlen, "gateway init: %s", sl_status_str(st));
        goto cleanup;
    }
    /* One subscription for the acknowledgements of every send, delivered
     * by cnats' shared thread with the live events: no thread of its own
     * (as js_PublishMsgAsync's), no timer per publish (gw_cmd.c). */
    if (natsInbox_Create(&inbox) == NATS_OK) {
        snprintf(s->ack_prefix, sizeof(s->ack_prefix), "%s", (const char *)inbox);
        snprintf(ack_subject, sizeof(ack_subject), "%s.>", s->ack_prefix);
    }
    natsInbox_Destroy(inbox);
    if (s->ack_prefix[0] == '\0' ||
        natsConnection_Subscribe(&s->ack_sub, sl_bus_nc(bus), ack_subject, gw__on_ack_cb, s) !=
            NATS_OK ||
        natsSubscription_SetPendingLimits(s->ack_sub, -1, -1) != NATS_OK ||
        sl_bus_kv(bus, SL_KV_SESSIONS, &s->kv_sessions) != SL_OK ||
        sl_bus_kv(bus, SL_KV_PRESENCE, &s->kv_presence) != SL_OK) {
        snprintf(err, errlen, "jetstream: cannot open the context or buckets");
        st = SL_ERR_BUS;
        goto cleanup;
    }
    sl_parse_addr(cfg->listen, host, sizeof(host), &port);

    s->protocols[0].name = "sluice.v1";
    s->protocols[0].callback = gw_callback;
    s->protocols[0].per_session_data_size = sizeof(gw_conn);
    /* Kept per connection by lws: small, since larger client frames arrive
     * in pieces that gw__on_receive() joins anyway. */
    s->protocols[0].rx_buffer_size = 256;
    /* lws 4.1.6 caps every send of lws_issue_raw (framed and raw writes, and
     * each drain of a partial write) at tx_packet_size, or rx_buffer_size
     * when it is 0: 256 bytes would cut every batch into many sends. */
    s->protocols[0].tx_packet_size = WRITE_ROUND;

    s->mounts[0].mountpoint = "/dev/token";
    s->mounts[0].mountpoint_len = 10;
    s->mounts[0].origin = "sluice.v1";
    s->mounts[0].origin_protocol = LWSMPRO_CALLBACK;
    s->mounts[0].mount_next = &s->mounts[1];
    s->mounts[1].mountpoint = "/";
    s->mounts[1].mountpoint_len = 1;
    s->mounts[1].origin = cfg->web_root;
    s->mounts[1].def = "index.html";
    s->mounts[1].origin_protocol = LWSMPRO_FILE;
    s->mounts[1].mount_next = &s->mounts[2];
    if ((st = gw_api_create(s, err, errlen)) != SL_OK) /* protocols[1], mounts[2] */
        goto cleanup;

    memset(&info, 0, sizeof(info));
    info.port = port;
    info.iface = (host[0] == '\0' || strcmp(host, "0.0.0.0") == 0) ? NULL : host;
    info.protocols = s->protocols;
    info.mounts = &s->mounts[0];
    info.user = s;
    info.options = LWS_SERVER_OPTION_DISABLE_IPV6 | LWS_SERVER_OPTION_LIBEV;
    info.foreign_loops = foreign_loops;
    foreign_loops[0] = s->loop;
    info.pcontext = &s->ctx; /* lws clears it when its destroy is complete */
    info.retry_and_idle_policy = &no_idle_policy;
    info.timeout_secs = 10;
    if (cfg->tls_cert != NULL) {
        info.options |= LWS_SERVER_OPTION_DO_SSL_GLOBAL_INIT;
        info.ssl_cert_filepath = cfg->tls_cert;
        info.ssl_private_key_filepath = cfg->tls_key;
    }
    lws_set_log_level(LLL_ERR, NULL);
    s->ctx = lws_create_context(&info);
    if (s->ctx == NULL) {
        snprintf(err, errlen,
                 "SLUICE_LISTEN %s: cannot listen (in use, bad TLS files, or the libev plugin "
                 "libwebsockets-evlib-ev is not installed?)",
                 cfg->listen);
        st = SL_ERR_IO;
        goto cleanup;
    }
    gw_bridge_set_context(s->bridge, s->ctx);
    *out = s;
    s = NULL;
cleanup:
    gw_server_destroy(s);
    return st;
}

sl_status gw_server_run(gw_server *s, volatile int *stop)
{
    s->stop = stop;
    atomic_store(&s->running, 1);
    lws_sul_schedule(s->ctx, 0, &s->tick, gw__on_tick, 250 * LWS_US_PER_MS);
    sl_info("gateway listening on %s (%s)", s->cfg->listen, s->cfg->tls_cert ? "wss" : "ws");
    /* Signal handlers only set *stop; gw__on_tick sees it within a tick, drains,
     * and breaks the loop once the 1001 closes are out. */
    ev_run(s->loop, 0);
    lws_sul_cancel(&s->tick);
    return SL_OK;
}

bool gw_server_ready(gw_server *s, char *why, size_t whylen)
{
    if (atomic_load(&s->draining)) {
        snprintf(why, whylen, "draining");
        return false;
    }
    if (!atomic_load(&s->running)) {
        snprintf(why, whylen, "not serving yet");
        return false;
    }
    if (!sl_bus_ready(s->bus)) {
        snprintf(why, whylen, "nats not connected");
        return false;
    }
    return true;
}

/* Counts the channel subscriptions whose message handler may still run. */
typedef struct quiesce {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int left;
} quiesce;

/* cnats thread: the subscription's handler has returned for good. */
static void sub_done_cb(void *closure)
{
    quiesce *q = closure;

    pthread_mutex_lock(&q->mu);
    q->left--;
    pthread_cond_broadcast(&q->cv);
    pthread_mutex_unlock(&q->mu);
}

static void unsubscribe_chan_cb(const char *key, void *val, void *ud)
{
    gw_chan *ch = val;
    quiesce *q = ud;

    (void)key;
    /* Fails on a subscription cnats already closed (its handler is done). */
    if (ch->sub == NULL || natsSubscription_SetOnCompleteCB(ch->sub, sub_done_cb, q) != NATS_OK)
        return;
    pthread_mutex_lock(&q->mu);
    q->left++;
    pthread_mutex_unlock(&q->mu);
    natsSubscription_Unsubscribe(ch->sub);
}

/* Stops every cnats callback that carries s (gw__on_live_cb, gw__on_ack_cb) and
 * waits until none runs. False when they did not stop in time: then s must
 * not be freed (q, which cnats may still signal, is leaked with it). */
static bool cnats_quiesce(gw_server *s)
{
    quiesce *q = calloc(1, sizeof(*q));
    struct timespec until;
    bool done;

    if (q == NULL)
        return false;
    pthread_mutex_init(&q->mu, NULL);
    pthread_cond_init(&q->cv, NULL);
    if (s->chans != NULL)
        gw_map_each(s->chans, unsubscribe_chan_cb, q);
    /* No connection is left to answer: acknowledgements still due are
     * dropped with the subscription. */
    if (s->ack_sub != NULL &&
        natsSubscription_SetOnCompleteCB(s->ack_sub, sub_done_cb, q) == NATS_OK) {
        pthread_mutex_lock(&q->mu);
        q->left++;
        pthread_mutex_unlock(&q->mu);
        natsSubscription_Unsubscribe(s->ack_sub);
    }
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += 10;
    pthread_mutex_lock(&q->mu);
    while (q->left > 0 && pthread_cond_timedwait(&q->cv, &q->mu, &until) == 0)
        ;
    done = q->left <= 0;
    pthread_mutex_unlock(&q->mu);
    if (!done) {
        sl_error("shutdown: live subscriptions did not stop; leaking the server");
        return false;
    }
    pthread_cond_destroy(&q->cv);
    pthread_mutex_destroy(&q->mu);
    free(q);
    return true;
}

static void free_value_cb(const char *key, void *val, void *ud)
{
    (void)key;
    (void)ud;
    free(val);
}

static void free_chan_cb(const char *key, void *val, void *ud)
{
    (void)key;
    (void)ud;
    gw__chan_destroy(val);
}

void gw_server_destroy(gw_server *s)
{
    if (s == NULL)
        return;
    atomic_store(&s->running, 0);
    if (s->loop != NULL) {
        ev_prepare_stop(s->loop, &s->flush_w); /* no writes while lws tears down */
        ev_idle_stop(s->loop, &s->flush_more);
    }
    if (s->ctx != NULL) {
        gw_bridge_set_context(s->bridge, NULL);
        lws_context_destroy(s->ctx); /* closes connections: CLOSED frees them */
        /* On a foreign loop lws may finish its destroy on the loop. */
        for (int i = 0; s->ctx != NULL && i < 1000; i++)
            ev_run(s->loop, EVRUN_NOWAIT);
        if (s->ctx != NULL)
            sl_warn("libwebsockets did not finish its shutdown");
    }
    /* Every connection is gone: its leaves go out, and this gateway's
     * presence records are deleted (before the acks are waited for). */
    gw__presence_shutdown(s);
    if (s->loop != NULL) {
        ev_timer_stop(s->loop, &s->held_timer);
        ev_loop_destroy(s->loop);
        s->loop = NULL; /* gw__msg_release destroys at once from here on */
    }
    gw_api_destroy(s);
    /* In order: nothing may use what is freed. cnats threads post to the
     * bridge and submit to the io pool (gw__on_live_cb, gw__on_ack_cb): stop
     * them first. Then the io threads finish their queue (stream and
     * session reads), posting results to the bridge. Those results are for
     * connections that are gone, and running them could start more io
     * (a failed read retries): the bridge frees them unrun. */
    if (!cnats_quiesce(s))
        return;
    gw_io_destroy(s->io);
    s->io = NULL;
    gw_bridge_destroy(s->bridge);
    s->bridge = NULL;
    gw_batch_destroy(s->live); /* after the bridge, which held its drain task */
    s->live = NULL;
    gw_batch_destroy(s->acks);
    s->acks = NULL;
    natsSubscription_Destroy(s->ack_sub);
    held_release_all(s);
    if (s->chans != NULL)
        gw_map_each(s->chans, free_chan_cb, NULL);
    gw_map_destroy(s->chans);
    gw_map_destroy(s->sessions);
    /* Counters of history reads whose results were dropped unrun above. */
    if (s->history_tenants != NULL)
        gw_map_each(s->history_tenants, free_value_cb, NULL);
    gw_map_destroy(s->history_tenants);
    kvStore_Destroy(s->kv_sessions);
    kvStore_Destroy(s->kv_presence);
    sl_auth_destroy(s->auth);
    free(s->held);
    free(s->wbuf);
    gw_uring_free(s->uring);
    free(s->usend);
    free(s);
}
