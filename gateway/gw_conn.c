/* A connection's life: hello and resume (reading stored positions),
 * detach and free, frames in (reassembly, rate limit, dispatch), the
 * writeable callback, per-connection timers and drain. */
#include "gw_server_int.h"

static void conn_detach(gw_server *s, gw_conn *c, const char *presence_action);

/* ---------- hello and resume ---------- */

typedef struct resume_job {
    gw_server *s;
    char key[SL_SUBJECT_MAX];      /* <t>.<session>.pos */
    char orch_key[SL_SUBJECT_MAX]; /* <t>.<session>: the orchestrator's causal state */
    char session[SL_ID_MAX + 1];
    bool attach;    /* the client gave no positions: attach the stored ones */
    bool want_prev; /* the default prev is not known on this gateway */
    char *value;    /* the stored positions JSON, or NULL */
    char prev[SL_ID_MAX + 1];
} resume_job;

static void resume_attach(gw_server *s, gw_conn *c, const gw_pos *pos, int npos)
{
    bool have_s = false;

    for (int i = 0; i < npos; i++) {
        bool is_room;
        const char *room;
        gw_chan *ch;
        gw_member *m;

        if (sl_channel_parse(pos[i].ch, &is_room, &room) != SL_OK)
            continue;
        if (is_room && !gw__conn_room_allowed(c, room))
            continue; /* the new token no longer allows it */
        if (gw__member_find(c, pos[i].ch) != NULL)
            continue;
        if (is_room && c->nrooms >= s->cfg->max_rooms)
            continue; /* as a join past the bound would be refused */
        ch = gw__chan_get(s, c->tenant, is_room, is_room ? room : c->session);
        if (ch == NULL || (m = gw__member_add(s, c, ch, (uint64_t)pos[i].seq, true)) == NULL) {
            if (ch != NULL)
                gw__chan_release(s, ch);
            continue;
        }
        have_s = have_s || !is_room;
        gw__acked_set(c, pos[i].ch, pos[i].seq, true);
        gw__replay_submit(s, c, m, pos[i].seq > 0);
        if (is_room)
            gw__presence_change(s, c, room, "join");
    }
    if (!have_s) {
        gw_chan *ch = gw__chan_get(s, c->tenant, false, c->session);
        gw_member *m = ch ? gw__member_add(s, c, ch, 0, true) : NULL;
        if (m != NULL)
            gw__replay_submit(s, c, m, false);
        else if (ch != NULL)
            gw__chan_release(s, ch);
    }
}

static void resume_kv_run(void *arg)
{
    resume_job *j = arg;
    gw_conn *c = gw_map_get(j->s->sessions, j->session);
    cJSON *root = c != NULL && j->value ? cJSON_Parse(j->value) : NULL;
    cJSON *o = cJSON_GetObjectItemCaseSensitive(root, "pos"), *it;
    int cap = cJSON_GetArraySize(o) < GW_POSITIONS_MAX ? cJSON_GetArraySize(o) : GW_POSITIONS_MAX;
    gw_pos *pos = calloc((size_t)cap + 1, sizeof(gw_pos));
    int n = 0;

    if (c != NULL && j->want_prev) {
        if (j->prev[0] != '\0' || c->last_id != NULL)
            gw__last_id_set(c, j->prev);
        lws_rx_flow_control(c->wsi, 1); /* held since the hello: sends may use it now */
    }
    if (c != NULL && pos != NULL && j->attach) {
        cJSON_ArrayForEach(it, o)
        {
            if (n < cap && it->string != NULL &&
                sl_json_get_int(it, 0, SL_JSON_INT_MAX, &pos[n].seq)) {
                snprintf(pos[n].ch, GW_CH_MAX, "%s", it->string);
                n++;
            }
        }
        resume_attach(j->s, c, pos, n);
    }
    cJSON_Delete(root);
    free(pos);
    free(j->value);
    free(j);
}

static void resume_kv_free(void *arg)
{
    resume_job *j = arg;
    free(j->value);
    free(j);
}

/* The id stored under key field of a JSON value, when it is a valid client
 * id. */
static void json_id(const char *value, int len, const char *key, char *out, size_t outlen)
{
    cJSON *root = value != NULL ? cJSON_ParseWithLength(value, (size_t)len) : NULL;
    const char *v = gw__json_str(root, key);

    if (v != NULL && sl_client_id_valid(v))
        snprintf(out, outlen, "%s", v);
    cJSON_Delete(root);
}

static void resume_kv_io(void *arg)
{
    resume_job *j = arg;
    kvEntry *e = NULL;

    if (j->s->kv_sessions != NULL && kvStore_Get(&e, j->s->kv_sessions, j->key) == NATS_OK)
        j->value = strndup(kvEntry_Value(e), (size_t)kvEntry_ValueLen(e));
    kvEntry_Destroy(e);
    e = NULL;
    if (j->want_prev && j->value != NULL)
        json_id(j->value, (int)strlen(j->value), "prev", j->prev, sizeof(j->prev));
    /* No id acknowledged by a gateway stored (an older gateway, or a crash
     * before the write): the orchestrator's last processed id is one the
     * session stored too. */
    if (j->want_prev && j->prev[0] == '\0' && j->s->kv_sessions != NULL &&
        kvStore_Get(&e, j->s->kv_sessions, j->orch_key) == NATS_OK)
        json_id(kvEntry_Value(e), kvEntry_ValueLen(e), "last", j->prev, sizeof(j->prev));
    kvEntry_Destroy(e);
    gw_bridge_post(j->s->bridge, resume_kv_run, resume_kv_free, j);
}

/* How often an open connection gets a fresh resume token: every half
 * window (conn_token_refresh). */
static int64_t token_interval_ms(const gw_server *s)
{
    return s->cfg->common.resume_window_s * 1000 / 2;
}

static void cmd_hello(gw_server *s, gw_conn *c, const gw_cmd *cmd)
{
    sl_claims *cl = calloc(1, sizeof(*cl));
    char why[128], sub_rt[SL_SUB_MAX + 1];
    char *rt = NULL;
    int64_t now = (int64_t)time(NULL);
    bool have_prev = false;
    sl_status st;

    if (cl == NULL) {
        gw__conn_close(c, 1011, "out of memory", false);
        return;
    }
    st = sl_auth_verify(s->auth, cmd->token, now, cl, why, sizeof(why));
    if (st != SL_OK) {
        gw__conn_error(s, c, "unauthorized", why, NULL);
        gw__conn_close(c, 4401, st == SL_ERR_EXPIRED ? "token expired" : "bad token", true);
        goto cleanup;
    }
    if (cmd->resume) {
        if (sl_resume_token_verify(s->resume_secret, cmd->resume_token, cl->tenant,
                                   cmd->resume_session, now, sub_rt) != SL_OK ||
            strcmp(sub_rt, cl->sub) != 0) {
            gw__conn_error(s, c, "unauthorized", "bad resume token", NULL);
            gw__conn_close(c, 4401, "bad resume token", true);
            goto cleanup;
        }
        {
            gw_conn *old = gw_map_get(s->sessions, cmd->resume_session);
            if (old != NULL && old != c) {
                if (old->last_id != NULL)
                    gw__last_id_set(c, old->last_id);
                have_prev = true;
                conn_detach(s, old, NULL);
                gw__conn_close(old, 1000, "session resumed elsewhere", false);
            }
        }
        snprintf(c->session, sizeof(c->session), "%s", cmd->resume_session);
    } else {
        sl_session_id_new(c->session);
    }
    snprintf(c->tenant, sizeof(c->tenant), "%s", cl->tenant);
    c->rooms_any = cl->nrooms < 0;
    {
        /* The user and the rooms claim in one block: both live as long as
         * the connection. */
        size_t lsub = strlen(cl->sub) + 1, len = lsub;
        if (!c->rooms_any) {
            len += 2;
            for (int i = 0; i < cl->nrooms; i++)
                len += strlen(cl->rooms[i]) + 1;
        }
        c->sub = calloc(1, len);
        if (c->sub != NULL) {
            memcpy(c->sub, cl->sub, lsub);
            if (!c->rooms_any) {
                char *p = c->rooms = c->sub + lsub;
                for (int i = 0; i < cl->nrooms; i++)
                    p = stpcpy(p, cl->rooms[i]) + 1;
            }
        }
    }
    if (c->sub == NULL || gw_map_put(s->sessions, c->session, c) != SL_OK ||
        sl_resume_token_make(s->resume_secret, c->tenant, c->session, c->sub,
                             now + s->cfg->common.resume_window_s, &rt) != SL_OK) {
        gw_map_del(s->sessions, c->session);
        c->session[0] = '\0';
        gw__conn_close(c, 1011, "out of memory", false);
        goto cleanup;
    }
    c->state = CONN_READY;
    c->token_due_ms = now_ms() + token_interval_ms(s);
    gw_api_user_add(s, c);
    gw__conn_send_text(s, c,
                       gw_frame_welcome(c->session, rt, s->cfg->heartbeat_ms, cmd->resume,
                                        s->cfg->max_frame, (double)s->cfg->rate,
                                        (double)s->cfg->burst));
    if (!cmd->resume) {
        /* A new session id is random: nothing can be on its channel yet. */
        gw_chan *ch = gw__chan_get_ex(s, c->tenant, false, c->session, HEAD_FRESH);
        if (ch == NULL || gw__member_add(s, c, ch, 0, false) == NULL) {
            if (ch != NULL)
                gw__chan_release(s, ch);
            gw__conn_close(c, 1011, "cannot subscribe", true);
        }
        goto cleanup;
    }
    sl_counter_inc(s->m.resumes_ok);
    if (cmd->has_positions)
        resume_attach(s, c, cmd->positions, cmd->npositions);
    if (!cmd->has_positions || !have_prev) {
        resume_job *j = calloc(1, sizeof(*j));
        if (j == NULL) {
            gw__conn_close(c, 1011, "out of memory", false);
            goto cleanup;
        }
        j->s = s;
        j->attach = !cmd->has_positions;
        j->want_prev = !have_prev;
        snprintf(j->session, sizeof(j->session), "%s", c->session);
        sl_kv_key3(j->key, sizeof(j->key), c->tenant, c->session, "pos");
        sl_kv_key2(j->orch_key, sizeof(j->orch_key), c->tenant, c->session);
        /* Frames wait in the socket until the session's default prev is
         * known, so a send without prev never takes a stale one. */
        if (j->want_prev)
            lws_rx_flow_control(c->wsi, 0);
        gw_io_submit(s->io, resume_kv_io, j);
    }
cleanup:
    free(rt);
    free(cl);
}

/* Detaches a connection from its session and channels (on close, or when
 * its session is resumed on another connection). */
static void conn_detach(gw_server *s, gw_conn *c, const char *presence_action)
{
    while (c->members != NULL) {
        gw_member *m = c->members;
        if (m->chan->is_room) {
            /* Without an action (the session moves to another connection
             * here) the member leaves the record quietly: the new
             * connection's own joins put it back. */
            char room[SL_ID_MAX + 1];
            snprintf(room, sizeof(room), "%s", m->chan->name);
            if (presence_action != NULL)
                gw__presence_snap_del(m->chan, c->session);
            gw__member_remove(s, m);
            gw__presence_change(s, c, room, presence_action);
        } else {
            gw__member_remove(s, m);
        }
    }
    if (c->session[0] != '\0') {
        if (c->acked_dirty)
            gw__positions_flush(s, c);
        if (gw_map_get(s->sessions, c->session) == c)
            gw_map_del(s->sessions, c->session);
    }
    while (c->sends != NULL) {
        pending_send *p = c->sends;
        c->sends = p->next;
        free(p);
    }
    c->nsends = 0;
    c->state = CONN_CLOSING;
}

void gw__conn_free(gw_server *s, gw_conn *c)
{
    gw_api_user_del(s, c);
    conn_detach(s, c, "disconnect");
    gw_outq_clear(&c->q);
    free(c->rx);
    free(c->sub); /* and the rooms claim, in the same block */
    free(c->acked);
    free(c->receipts);
    free(c->last_id);
    c->rx = c->sub = c->rooms = c->last_id = NULL;
    c->acked = NULL;
    c->receipts = NULL;
    if (c->all_prev != NULL)
        c->all_prev->all_next = c->all_next;
    else if (s->all == c)
        s->all = c->all_next;
    if (c->all_next != NULL)
        c->all_next->all_prev = c->all_prev;
    gw__flush_unqueue(s, c);
    s->nconns--;
    sl_gauge_dec(s->m.connections);
}

/* ---------- frames in ---------- */

static void handle_frame(gw_server *s, gw_conn *c, const char *buf, size_t len)
{
    gw_cmd cmd;
    gw_err err;
    int64_t now = now_ms();

    sl_counter_inc(s->m.frames_in);
    sl_counter_add(s->m.bytes_in, len);
    if (gw_cmd_parse(buf, len, &cmd, &err) != SL_OK) {
        if (c->state == CONN_AWAIT_HELLO) {
            gw__conn_error(s, c, err.code, err.message, NULL);
            gw__conn_close(c, strcmp(err.code, "unauthorized") == 0 ? 4401 : 4400, "bad hello",
                           true);
            return;
        }
        /* A refused frame takes a token like any other: without one the
         * answer is busy, so a client cannot make the gateway write more
         * error frames than its rate allows. */
        if (c->state == CONN_READY && !gw_bucket_take(&c->bucket, now)) {
            gw__conn_busy(s, c, err.id[0] ? err.id : NULL, "rate_limited",
                          gw_bucket_retry_ms(&c->bucket, now));
            return;
        }
        gw__conn_error(s, c, err.code, err.message, err.id[0] ? err.id : NULL);
        return;
    }
    if (c->state == CONN_AWAIT_HELLO) {
        if (cmd.type != GW_CMD_HELLO) {
            gw__conn_error(s, c, "unauthorized", "the first frame must be hello", NULL);
            gw__conn_close(c, 4400, "hello first", true);
        } else {
            cmd_hello(s, c, &cmd);
        }
        goto cleanup;
    }
    if (c->state != CONN_READY)
        goto cleanup;
    if (cmd.type == GW_CMD_HELLO) {
        gw__conn_error(s, c, "bad_frame", "already said hello", NULL);
        goto cleanup;
    }
    if (cmd.type != GW_CMD_PING && cmd.type != GW_CMD_ACK && !gw_bucket_take(&c->bucket, now)) {
        gw__conn_busy(s, c, cmd.id, "rate_limited", gw_bucket_retry_ms(&c->bucket, now));
        goto cleanup;
    }
    switch (cmd.type) {
    case GW_CMD_SEND:
        gw__cmd_send(s, c, &cmd);
        break;
    case GW_CMD_JOIN:
        gw__cmd_join(s, c, &cmd);
        break;
    case GW_CMD_LEAVE:
        gw__cmd_leave(s, c, &cmd);
        break;
    case GW_CMD_ACK:
        gw__cmd_ack(s, c, &cmd);
        break;
    case GW_CMD_CANCEL:
        gw__cmd_cancel(s, c, &cmd);
        break;
    case GW_CMD_HISTORY:
        gw__cmd_history(s, c, &cmd);
        break;
    case GW_CMD_PING:
        gw__conn_send_text(s, c, gw_frame_pong());
        break;
    case GW_CMD_HELLO:
        break;
    }
cleanup:
    gw_cmd_free(&cmd);
}

/* Collects a message's fragments; framing faults close the connection. */
void gw__on_receive(gw_server *s, gw_conn *c, const char *in, size_t len)
{
    bool first = lws_is_first_fragment(c->wsi) != 0;
    bool final = lws_is_final_fragment(c->wsi) != 0 && lws_remaining_packet_payload(c->wsi) == 0;

    c->last_rx_ms = now_ms();
    if (c->close_code != 0)
        return;
    if (first && c->rx == NULL) {
        c->rx_binary = lws_frame_is_binary(c->wsi) != 0;
        c->rx_oversize = false;
        c->rxlen = 0;
    }
    if (!c->rx_binary && !c->rx_oversize) {
        if (c->rxlen + len > (size_t)s->cfg->max_frame) {
            c->rx_oversize = true;
            free(c->rx);
            c->rx = NULL;
        } else if (final && c->rx == NULL) {
            /* The common case: a whole message in one piece, no copy. */
            if (!sl_utf8_valid(in, len)) {
                gw__conn_error(s, c, "bad_frame", "invalid UTF-8", NULL);
                gw__conn_close(c, 1007, "invalid utf-8", true);
                return;
            }
            handle_frame(s, c, in, len);
            return;
        } else {
            char *nb = realloc(c->rx, c->rxlen + len + 1);
            if (nb == NULL) {
                gw__conn_close(c, 1011, "out of memory", false);
                return;
            }
            c->rx = nb;
            memcpy(c->rx + c->rxlen, in, len);
            c->rxlen += len;
        }
    }
    if (!final)
        return;
    if (c->rx_binary) {
        gw__conn_error(s, c, "bad_frame", "binary frames are not accepted", NULL);
        gw__conn_close(c, 1003, "binary frame", true);
    } else if (c->rx_oversize) {
        gw__conn_error(s, c, "too_large", "frame over the limit", NULL);
        gw__conn_close(c, 1009, "frame too large", true);
    } else if (!sl_utf8_valid(c->rx, c->rxlen)) {
        gw__conn_error(s, c, "bad_frame", "invalid UTF-8", NULL);
        gw__conn_close(c, 1007, "invalid utf-8", true);
    } else {
        handle_frame(s, c, c->rx, c->rxlen);
    }
    free(c->rx);
    c->rx = NULL;
    c->rxlen = 0;
}

_Static_assert(GW_WS_HDR_MAX <= LWS_PRE, "a frame header fits in a buffer's headroom");

/* Sends len bytes at p, whole WebSocket frames, on c's socket. While lws
 * holds nothing for the connection (and without TLS) that is one send(),
 * which is what lws_write(LWS_WRITE_RAW) comes to in lws 4.1.6 (through
 * lws_issue_raw) after checks that cost about as much as the user side of
 * the send itself, per member and event in a fan-out. What the socket does
 * not take goes to lws_write, as does everything while lws holds bytes:
 * lws sends what it can and keeps the rest in its buflist_out, which goes
 * out before anything else it writes (its pongs and close frames
 * included), before the next SERVER_WRITEABLE and before any later
 * lws_write (lws_issue_raw appends to it). Returns -1 when the connection
 * failed. */
static int conn_send(gw_conn *c, unsigned char *p, size_t len)
{
    size_t done = 0;
    int n;

    if (c->plain && !lws_partial_buffered(c->wsi)) {
        ssize_t w = send(lws_get_socket_fd(c->wsi), p, len, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
            return -1;
        if (w > 0)
            done = (size_t)w;
        if (done == len)
            return 0;
    }
    n = lws_write(c->wsi, p + done, len - done, LWS_WRITE_RAW);
    return n < 0 || (size_t)n < len - done ? -1 : 0;
}

/* Writes b's WebSocket header into its buffer's headroom (the same bytes
 * for every member) and returns where the frame starts; *len is its
 * length, header included. */
static unsigned char *frame_in_headroom(gw_buf *b, size_t *len)
{
    unsigned char hdr[GW_WS_HDR_MAX];
    size_t hl = gw_ws_text_header(hdr, b->len);
    unsigned char *p = gw_buf_payload(b) - hl;

    memcpy(p, hdr, hl);
    *len = hl + b->len;
    return p;
}

/* Takes c's nf oldest frames, written, off its queue (their delivery
 * latency observed at now); returns their payload bytes. */
static size_t frames_sent(gw_server *s, gw_conn *c, size_t nf, int64_t now)
{
    size_t bytes = 0;

    for (size_t i = 0; i < nf; i++) {
        gw_buf *b = gw_outq_peek(&c->q);
        bytes += b->len;
        if (b->ts_ns > 0)
            sl_hist_observe_ns(s->m.delivery_latency, now - b->ts_ns);
        gw_outq_pop(&c->q);
    }
    return bytes;
}

/* Writes c's queued frames, several per write: framed here (unmasked,
 * FIN, text, no RSV: no extension is offered) into wbuf, or a lone frame
 * (the next does not fit, or the first is larger than WRITE_BATCH) in the
 * headroom of its own buffer (every connection writes the same header
 * there), and sent with conn_send, so frames never interleave. Returns -1
 * when a write failed (the connection must close), else 0. */
static int conn_write_queued(gw_server *s, gw_conn *c)
{
    size_t sent = 0, frames = 0, bytes = 0;
    gw_buf *b;
    int rc = 0;

    while ((b = gw_outq_peek(&c->q)) != NULL) {
        size_t nf = 0, len = gw_outq_encode(&c->q, s->wbuf + LWS_PRE, WRITE_BATCH, &nf);
        unsigned char *p = s->wbuf + LWS_PRE;
        int64_t now = sl_now_ns();

        if (nf < 2) {
            nf = 1;
            p = frame_in_headroom(b, &len);
        }
        if (conn_send(c, p, len) < 0) {
            rc = -1;
            break;
        }
        sl_counter_inc(s->m.writes);
        sent += len;
        frames += nf;
        bytes += frames_sent(s, c, nf, now);
        /* lws_send_pipe_choked polls the socket: only asked when more wait. */
        if (gw_outq_peek(&c->q) == NULL || sent >= WRITE_ROUND || lws_partial_buffered(c->wsi) ||
            lws_send_pipe_choked(c->wsi))
            break;
    }
    sl_counter_add(s->m.frames_out, frames);
    sl_counter_add(s->m.bytes_out, bytes);
    return rc;
}

static bool conn_replay_paused(const gw_conn *c)
{
    for (const gw_member *m = c->members; m != NULL; m = m->next)
        if (m->replay_paused)
            return true;
    return false;
}

int gw__on_writeable(gw_server *s, gw_conn *c)
{
    unsigned char ctl[LWS_PRE + 8];

    if (c->close_code != 0 && (c->close_now || gw_outq_peek(&c->q) == NULL)) {
        lws_close_reason(c->wsi, (enum lws_close_status)c->close_code,
                         (unsigned char *)c->close_reason, strlen(c->close_reason));
        return -1;
    }
    if (c->ping_due) {
        c->ping_due = false;
        /* Not empty: peers echo the payload, and libwebsockets 4.1.6 never
         * reports an empty pong (LWS_CALLBACK_RECEIVE_PONG), so answering
         * clients would be cut with 4408. */
        memcpy(ctl + LWS_PRE, "hb", 2);
        if (lws_write(c->wsi, ctl + LWS_PRE, 2, LWS_WRITE_PING) < 0)
            return -1;
    }
    if (conn_write_queued(s, c) < 0)
        return -1;
    if (gw_outq_peek(&c->q) != NULL || c->close_code != 0)
        lws_callback_on_writable(c->wsi);
    for (gw_member *m = c->members; m != NULL && c->close_code == 0; m = m->next) {
        if (m->replay_paused && gw__replay_has_room(s, c, 0)) {
            m->replay_paused = false;
            gw__replay_submit(s, c, m, false);
        }
    }
    return 0;
}

/* ---------- direct writes ---------- */

void gw__flush_queue(gw_server *s, gw_conn *c)
{
    if (c->flush_queued)
        return;
    c->flush_queued = true;
    c->flush_next = NULL;
    c->flush_prev = s->flush_tail;
    if (s->flush_tail != NULL)
        s->flush_tail->flush_next = c;
    else
        s->flush_head = c;
    s->flush_tail = c;
}

void gw__flush_unqueue(gw_server *s, gw_conn *c)
{
    if (!c->flush_queued)
        return;
    if (c->flush_prev != NULL)
        c->flush_prev->flush_next = c->flush_next;
    else
        s->flush_head = c->flush_next;
    if (c->flush_next != NULL)
        c->flush_next->flush_prev = c->flush_prev;
    else
        s->flush_tail = c->flush_prev;
    c->flush_prev = c->flush_next = NULL;
    c->flush_queued = false;
}

/* Prepares c's oldest frames as one sendmsg in the ring (gw_usend): up to
 * URING_IOV frames and WRITE_BATCH bytes, or one longer frame. False when
 * the ring takes no more. */
static bool uring_prepare(gw_server *s, gw_conn *c, unsigned slot)
{
    gw_usend *u = &s->usend[slot];
    size_t nf = 0, len = 0;
    gw_buf *b;

    while (nf < URING_IOV && (b = gw_outq_at(&c->q, nf)) != NULL) {
        size_t fl;
        unsigned char *p = frame_in_headroom(b, &fl);
        if (nf > 0 && len + fl > WRITE_BATCH)
            break;
        u->iov[nf].iov_base = p;
        u->iov[nf].iov_len = fl;
        len += fl;
        nf++;
    }
    memset(&u->mh, 0, sizeof(u->mh));
    u->mh.msg_iov = u->iov;
    u->mh.msg_iovlen = nf;
    u->c = c;
    u->nf = nf;
    return gw_uring_sendmsg(s->uring, lws_get_socket_fd(c->wsi), &u->mh, 0, slot);
}

/* The outcome of a prepared send: the frames it wrote leave the queue; a
 * frame it wrote in part has the rest handed to lws (which sends it before
 * anything else on the connection), and what is left waits for a
 * writeable callback; a connection with frames still queued after a whole
 * write goes back on the flush list. */
static void uring_done(uint64_t tag, int res, void *arg)
{
    gw_server *s = arg;
    gw_usend *u = &s->usend[tag];
    gw_conn *c = u->c;
    size_t sent = res > 0 ? (size_t)res : 0, frames = 0;
    int64_t now = sl_now_ns();
    bool partial = false;

    u->c = NULL;
    if (res < 0 && res != -EAGAIN && res != -EWOULDBLOCK && res != -EINTR && res != -ECANCELED) {
        /* The socket failed, or the ring did and what it wrote is unknown:
         * lws closes the connection at its next turn (the client resumes). */
        lws_set_timeout(c->wsi, PENDING_TIMEOUT_USER_OK, LWS_TO_KILL_ASYNC);
        return;
    }
    if (res > 0)
        sl_counter_inc(s->m.writes);
    for (; frames < u->nf && sent > 0; frames++) {
        size_t fl = u->iov[frames].iov_len;
        if (sent < fl) {
            int n = lws_write(c->wsi, (unsigned char *)u->iov[frames].iov_base + sent, fl - sent,
                              LWS_WRITE_RAW);
            if (n < 0 || (size_t)n < fl - sent) {
                lws_set_timeout(c->wsi, PENDING_TIMEOUT_USER_OK, LWS_TO_KILL_ASYNC);
                return;
            }
            partial = true;
        }
        sent -= sent < fl ? sent : fl;
    }
    sl_counter_add(s->m.frames_out, frames);
    sl_counter_add(s->m.bytes_out, frames_sent(s, c, frames, now));
    if (gw_outq_peek(&c->q) == NULL)
        return;
    if (partial || frames < u->nf)
        lws_callback_on_writable(c->wsi); /* the socket is full */
    else
        gw__flush_queue(s, c);
}

/* Before the loop waits (an ev_prepare watcher): writes the frames queued
 * since the last wait for each connection whose queue was empty, without
 * a writeable round. A writeable round costs two epoll_ctl calls (lws
 * turns POLLOUT on, then off again in the callback), each polling the
 * socket, and a wake of the loop: per event and member in a fan-out, when
 * most sockets take the frames at once. Only what the socket does not take
 * goes the writeable way; so does a connection with more to do than
 * writing frames (a close, a ping, a paused replay) or with bytes still in
 * lws's buflist_out.
 *
 * A fan-out burst is one write per member, milliseconds of loop time for a
 * large room, so at most FLUSH_SLICE connections are written per turn of
 * the loop; while more wait, an idle watcher (flush_more) makes the loop
 * poll without waiting and come back. In between, client frames are read,
 * acks and live events run: the frame of an event that came meanwhile is
 * queued behind the one still waiting for the members not written yet (one
 * write carries both), and the members written already are appended to the
 * list, after those still waiting.
 *
 * With io_uring (s->uring) the slice's writes to plain sockets are one
 * submission: one system call for the slice instead of one per member.
 * That is for the common case of a few frames per member; a connection
 * with a backlog is written with send(), in large copied batches. */
void gw__flush_cb(struct ev_loop *loop, ev_prepare *w, int revents)
{
    gw_server *s = lws_container_of(w, gw_server, flush_w);
    unsigned slots = 0;

    (void)revents;
    for (int n = 0; n < FLUSH_SLICE && s->flush_head != NULL; n++) {
        gw_conn *c = s->flush_head;
        gw__flush_unqueue(s, c);
        if (c->wsi == NULL || gw_outq_peek(&c->q) == NULL)
            continue;
        if (c->close_code != 0 || c->ping_due || lws_partial_buffered(c->wsi) ||
            conn_replay_paused(c)) {
            lws_callback_on_writable(c->wsi);
            continue;
        }
        /* A backlog (more frames than one prepared send carries) goes the
         * old way: 64 KiB copied writes, up to WRITE_ROUND per visit. */
        if (c->plain && s->uring != NULL && c->q.frames <= URING_IOV &&
            uring_prepare(s, c, slots)) {
            slots++;
            continue;
        }
        if (conn_write_queued(s, c) < 0) {
            /* lws marked the socket unusable: it closes at its next turn. */
            lws_set_timeout(c->wsi, PENDING_TIMEOUT_USER_OK, LWS_TO_KILL_ASYNC);
            continue;
        }
        if (gw_outq_peek(&c->q) != NULL)
            lws_callback_on_writable(c->wsi);
    }
    if (slots > 0) {
        gw_uring_submit(s->uring, uring_done, s);
        sl_counter_inc(s->m.uring_submits);
        if (!gw_uring_ok(s->uring)) {
            sl_warn("io_uring failed (%s): writes to clients use one send() each from now on",
                    strerror(gw_uring_error(s->uring)));
            gw_uring_free(s->uring);
            s->uring = NULL;
            sl_gauge_set(s->m.io_uring, 0);
        }
    }
    if (s->flush_head != NULL)
        ev_idle_start(loop, &s->flush_more);
    else
        ev_idle_stop(loop, &s->flush_more);
}

/* Only keeps the loop from waiting while connections wait for their slice
 * (gw__flush_cb writes them before the next poll). */
void gw__flush_more_cb(struct ev_loop *loop, ev_idle *w, int revents)
{
    (void)loop;
    (void)w;
    (void)revents;
}

/* ---------- timers and drain ---------- */

static void start_drain(gw_server *s)
{
    int64_t spread = s->cfg->drain_grace_ms / 2;

    if (atomic_exchange(&s->draining, 1))
        return;
    s->drain_started_ms = now_ms();
    sl_info("draining: %d connections, grace %lld ms", s->nconns,
            (long long)s->cfg->drain_grace_ms);
    if (spread > 5000)
        spread = 5000;
    for (gw_conn *c = s->all; c != NULL; c = c->all_next) {
        uint32_t r;
        sl_random_bytes(&r, sizeof(r));
        if (c->state == CONN_READY)
            gw__conn_send_text(
                s, c, gw_frame_reconnect(spread > 0 ? (int64_t)(r % (uint32_t)spread) : 0));
        else
            gw__conn_close(c, 1001, "draining", false);
    }
}

/* A resume token expires SLUICE_RESUME_WINDOW_S after it was made, so a
 * connection open longer than that would have nothing valid to resume with
 * when it drops (after a redeploy, most connections are that old). Every
 * half window a connection gets a fresh one. */
static void conn_token_refresh(gw_server *s, gw_conn *c, int64_t now)
{
    int64_t window_s = s->cfg->common.resume_window_s;
    char *rt = NULL;

    if (sl_resume_token_make(s->resume_secret, c->tenant, c->session, c->sub,
                             (int64_t)time(NULL) + window_s, &rt) != SL_OK) {
        c->token_due_ms = now + 1000; /* out of memory: try again soon */
        return;
    }
    gw__conn_send_text(s, c, gw_frame_resume_token(rt));
    free(rt);
    c->token_due_ms = now + token_interval_ms(s);
}

/* One connection's deadlines. (Its rooms' presence records are the
 * gateway's, refreshed per room by gw__on_tick, not per connection.) */
void gw__conn_timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    gw_conn *c = lws_container_of(w, gw_conn, timer);
    gw_server *s = c->srv;
    int64_t now = now_ms();

    (void)loop;
    (void)revents;
    c->timer_due_ms = 0;
    if (c->close_code != 0)
        return; /* closing: CLOSED stops the timer */
    if (c->state == CONN_AWAIT_HELLO && now - c->opened_ms > s->cfg->hello_timeout_ms) {
        gw__conn_error(s, c, "unauthorized", "no hello in time", NULL);
        gw__conn_close(c, 4401, "no hello", true);
        return;
    }
    if (now - c->last_rx_ms > s->cfg->heartbeat_ms * 5 / 2) {
        gw__conn_close(c, 4408, "heartbeat timeout", false);
        return;
    }
    if (now - c->last_ping_ms >= s->cfg->heartbeat_ms) {
        c->last_ping_ms = now;
        c->ping_due = true;
        lws_callback_on_writable(c->wsi);
    }
    while (c->sends != NULL && c->sends->deadline_ms < now) {
        pending_send *p = c->sends;
        c->sends = p->next;
        c->nsends--;
        gw__conn_busy(s, c, p->id, "overloaded", 1000);
        free(p);
    }
    if (c->state == CONN_READY && now >= c->token_due_ms)
        conn_token_refresh(s, c, now);
    if (c->acked_dirty)
        gw__positions_flush(s, c);
    gw__conn_timer_arm(s, c);
}

/* The gateway's own clock: signals, channel expiry, the drain. It visits no
 * connection (gw__conn_timer_cb does their deadlines). */
void gw__on_tick(lws_sorted_usec_list_t *sul)
{
    gw_server *s = lws_container_of(sul, gw_server, tick);
    int64_t now = now_ms();

    if (*s->stop && !atomic_load(&s->draining))
        start_drain(s);
    gw__presence_refresh(s, now);
    if (now - s->last_expire_ms >= 1000) {
        s->last_expire_ms = now;
        gw__chans_expire(s);
    }
    if (atomic_load(&s->running) && atomic_load(&s->draining) &&
        (s->nconns == 0 || now - s->drain_started_ms >= s->cfg->drain_grace_ms || *s->stop > 1)) {
        for (gw_conn *c = s->all; c != NULL; c = c->all_next)
            gw__conn_close(c, 1001, "gateway shutting down", false);
        atomic_store(&s->running, 0);
        s->closing_since_ms = now;
    }
    if (!atomic_load(&s->running)) {
        /* Let the 1001 closes reach the clients, briefly. */
        if (s->nconns == 0 || now - s->closing_since_ms > 2000 || *s->stop > 1) {
            ev_break(s->loop, EVBREAK_ALL);
            return;
        }
        lws_sul_schedule(s->ctx, 0, &s->tick, gw__on_tick, 20 * LWS_US_PER_MS);
        return;
    }
    lws_sul_schedule(s->ctx, 0, &s->tick, gw__on_tick, 250 * LWS_US_PER_MS);
}
