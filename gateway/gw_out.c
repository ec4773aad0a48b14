/* What leaves the gateway for a connection or for NATS: queued frames and
 * closes (conn_send_*, conn_close, errors and busy), publishes of client
 * envelopes, KV writes (presence records, gw_presence.c; acked positions),
 * and the per-connection deadline timer. */
#include "gw_server_int.h"

/* ---------- output ---------- */

/* Closes c with code once its queue is flushed (or at once). reason must
 * outlive the connection: callers pass string literals. */
void gw__conn_close(gw_conn *c, int code, const char *reason, bool flush_first)
{
    if (c->close_code != 0)
        return;
    c->close_code = code;
    c->close_now = !flush_first;
    c->close_reason = reason;
    if (c->wsi != NULL) {
        lws_callback_on_writable(c->wsi);
        /* The close frame goes out from the next writeable callback, which
         * never comes while lws holds part of an earlier write for a
         * client that stopped reading (and TCP keeps such a connection
         * forever): give it CONN_CLOSE_GRACE_S, then drop it. */
        lws_set_timeout(c->wsi, PENDING_TIMEOUT_USER_OK, CONN_CLOSE_GRACE_S);
    }
}

/* Queues a frame; a client over its bound is cut with 4429 and resumes.
 * Only the frame into an empty queue puts the connection on the flush
 * list (gw__flush_cb writes it before the loop waits): while frames wait,
 * the connection is on the list or a writeable callback is pending, and
 * gw__on_writeable asks again whenever it leaves frames behind. */
void gw__conn_send_buf(gw_server *s, gw_conn *c, gw_buf *b)
{
    bool was_empty;

    if (b == NULL || c->close_code != 0)
        return;
    was_empty = gw_outq_peek(&c->q) == NULL;
    if (!gw_outq_push(&c->q, b, (size_t)s->cfg->outq_max_frames, (size_t)s->cfg->outq_max_bytes)) {
        sl_counter_inc(s->m.slow_closes);
        gw_outq_clear(&c->q);
        gw__conn_close(c, 4429, "slow consumer", false);
        return;
    }
    if (was_empty)
        gw__flush_queue(s, c);
}

/* Sends a malloc'd frame text (freed here; NULL is ignored). */
void gw__conn_send_text(gw_server *s, gw_conn *c, char *text)
{
    gw_buf *b = gw_buf_from(text);

    if (b != NULL) {
        gw__conn_send_buf(s, c, b);
        gw_buf_unref(b);
    }
}

void gw__conn_error(gw_server *s, gw_conn *c, const char *code, const char *msg, const char *id)
{
    sl_counter_inc(s->m.bad_frames);
    gw__conn_send_text(s, c, gw_frame_error(code, msg, id));
}

void gw__conn_busy(gw_server *s, gw_conn *c, const char *id, const char *reason, int64_t retry)
{
    if (strcmp(reason, "rate_limited") == 0)
        sl_counter_inc(s->m.busy_rate);
    else if (strcmp(reason, "draining") == 0)
        sl_counter_inc(s->m.busy_draining);
    else if (strcmp(reason, "history_busy") == 0)
        sl_counter_inc(s->m.busy_history);
    else
        sl_counter_inc(s->m.busy_overloaded);
    gw__conn_send_text(s, c, gw_frame_busy(id, reason, retry));
}

/* ---------- publishing helpers ---------- */

void gw__fill_header(gw_conn *c, Sluice__Envelope *e, char *event_id)
{
    sl_event_id_new(event_id);
    e->event_id = event_id;
    e->tenant = c->tenant;
    e->session = c->session;
    e->ts_unix_ns = sl_now_ns();
}

/* Fire-and-forget JetStream publish (presence, receipts): errors are
 * logged by the bus; the next refresh repairs presence. */
void gw__publish_out_async(gw_server *s, const char *subject, const Sluice__Envelope *e,
                           const char *msg_id)
{
    natsMsg *m = NULL;
    uint8_t *data = NULL;
    size_t len = 0;

    if (sl_envelope_encode(e, &data, &len) != SL_OK)
        return;
    if (natsMsg_Create(&m, subject, NULL, (const char *)data, (int)len) == NATS_OK &&
        natsMsgHeader_Set(m, "Nats-Msg-Id", msg_id) == NATS_OK) {
        jsPubOptions po;
        jsPubOptions_Init(&po);
        po.MaxWait = 5000;
        if (js_PublishMsgAsync(sl_bus_js(s->bus), &m, &po) != NATS_OK)
            sl_warn("publish to %s failed", subject);
    }
    natsMsg_Destroy(m);
    free(data);
}

/* ---------- io jobs: KV ---------- */

/* Writes (value) or deletes (NULL) a KV key without waiting: a KV put is a
 * publish to "$KV.<bucket>.<key>", so it goes out asynchronously from the
 * loop like any other publish, instead of a round trip per key. Takes
 * value (malloc'd). Presence and positions are refreshed regularly, so a
 * lost write is repaired by the next one. */
void gw__kv_submit(gw_server *s, bool presence, const char *key, char *value)
{
    char subj[SL_SUBJECT_MAX + 32];
    natsMsg *m = NULL;
    jsPubOptions po;

    (void)sl_kv_subject(subj, sizeof(subj), presence ? SL_KV_PRESENCE : SL_KV_SESSIONS, key);
    if (natsMsg_Create(&m, subj, NULL, value, value ? (int)strlen(value) : 0) != NATS_OK ||
        (value == NULL && natsMsgHeader_Set(m, "KV-Operation", "DEL") != NATS_OK))
        goto cleanup;
    jsPubOptions_Init(&po);
    po.MaxWait = 5000;
    if (js_PublishMsgAsync(sl_bus_js(s->bus), &m, &po) != NATS_OK)
        sl_debug("kv write %s not sent", subj);
cleanup:
    natsMsg_Destroy(m);
    free(value);
}

/* Persists the acked positions (and so the joined rooms) of a connection. */
void gw__positions_flush(gw_server *s, gw_conn *c)
{
    char key[SL_SUBJECT_MAX];
    cJSON *o, *pos;
    char *val;

    c->acked_dirty = false;
    if (sl_kv_key3(key, sizeof(key), c->tenant, c->session, "pos") != SL_OK)
        return;
    o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "sub", c->sub);
    pos = cJSON_AddObjectToObject(o, "pos");
    if (c->has_pos_s)
        sl_json_add_int(pos, "s", c->pos_s);
    for (int i = 0; i < c->nacked; i++)
        sl_json_add_int(pos, c->acked[i].ch, c->acked[i].seq);
    if (c->last_id != NULL && c->last_id[0] != '\0')
        cJSON_AddStringToObject(o, "prev", c->last_id);
    val = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    if (val != NULL)
        gw__kv_submit(s, false, key, val);
}

/* Marks c's positions for the next flush, which its timer does. */
static void positions_dirty(gw_conn *c)
{
    c->acked_dirty = true;
    if (c->srv != NULL)
        gw__conn_timer_arm(c->srv, c);
}

void gw__acked_set(gw_conn *c, const char *ch, int64_t seq, bool only_if_absent)
{
    if (strcmp(ch, "s") == 0) {
        if (!c->has_pos_s || (!only_if_absent && seq > c->pos_s)) {
            c->pos_s = seq;
            c->has_pos_s = true;
            positions_dirty(c);
        }
        return;
    }
    for (int i = 0; i < c->nacked; i++) {
        if (strcmp(c->acked[i].ch, ch) == 0) {
            if (!only_if_absent && seq > c->acked[i].seq) {
                c->acked[i].seq = seq;
                positions_dirty(c);
            }
            return;
        }
    }
    if (c->nacked == c->acked_cap) {
        /* Grows with the rooms joined (bounded by SLUICE_MAX_ROOMS; the
         * session channel's position is pos_s): most connections hold one
         * room, so it starts with room for one. */
        int ncap = c->acked_cap > 0 ? c->acked_cap * 2 : 1;
        gw_pos *na;
        if (ncap > GW_POSITIONS_MAX - 1)
            ncap = GW_POSITIONS_MAX - 1;
        if (c->nacked >= ncap)
            return;
        na = realloc(c->acked, (size_t)ncap * sizeof(gw_pos));
        if (na == NULL)
            return;
        c->acked = na;
        c->acked_cap = ncap;
    }
    snprintf(c->acked[c->nacked].ch, GW_CH_MAX, "%s", ch);
    c->acked[c->nacked].seq = seq;
    c->nacked++;
    positions_dirty(c);
}

void gw__acked_remove(gw_conn *c, const char *ch)
{
    if (strcmp(ch, "s") == 0) {
        if (c->has_pos_s) {
            c->has_pos_s = false;
            positions_dirty(c);
        }
        return;
    }
    for (int i = 0; i < c->nacked; i++) {
        if (strcmp(c->acked[i].ch, ch) == 0) {
            c->acked[i] = c->acked[--c->nacked];
            positions_dirty(c);
            return;
        }
    }
}

/* Most connections never send: the buffer is made by the first id. On
 * failure to allocate it the id is not kept (the session's next send then
 * needs an explicit prev, as after a restart). */
void gw__last_id_set(gw_conn *c, const char *id)
{
    if (c->last_id == NULL && (c->last_id = malloc(SL_ID_MAX + 1)) == NULL)
        return;
    snprintf(c->last_id, SL_ID_MAX + 1, "%s", id);
}

const char *gw__last_id(const gw_conn *c)
{
    return c->last_id != NULL ? c->last_id : "";
}

/* ---------- connection deadlines ---------- */

/* When c's timer must fire next (monotonic ms). */
static int64_t conn_next_due(gw_server *s, const gw_conn *c, int64_t now)
{
    int64_t due = c->last_ping_ms + s->cfg->heartbeat_ms;
    int64_t silent = c->last_rx_ms + s->cfg->heartbeat_ms * 5 / 2 + 1;

    if (silent < due)
        due = silent;
    if (c->state == CONN_AWAIT_HELLO && c->opened_ms + s->cfg->hello_timeout_ms + 1 < due)
        due = c->opened_ms + s->cfg->hello_timeout_ms + 1;
    if (c->sends != NULL && c->sends->deadline_ms + 1 < due)
        due = c->sends->deadline_ms + 1;
    if (c->state == CONN_READY && c->token_due_ms + 1 < due)
        due = c->token_due_ms + 1;
    if (c->acked_dirty && now + POSITIONS_FLUSH_MS < due)
        due = now + POSITIONS_FLUSH_MS;
    /* On a grid, so the deadlines of many connections fire in one wake of
     * the loop (and their writes go out together), as the old 250 ms tick
     * did. */
    return (due + CONN_TIMER_SLACK_MS - 1) / CONN_TIMER_SLACK_MS * CONN_TIMER_SLACK_MS;
}

/* (Re)arms c's timer when its next deadline is earlier than the armed one
 * (or none is armed). Cheap to call after anything that may add one. */
void gw__conn_timer_arm(gw_server *s, gw_conn *c)
{
    int64_t now = now_ms();
    int64_t due = conn_next_due(s, c, now);

    if (c->timer_due_ms != 0 && c->timer_due_ms <= due && ev_is_active(&c->timer))
        return;
    ev_timer_stop(s->loop, &c->timer);
    ev_timer_set(&c->timer, due > now ? (double)(due - now) / 1000.0 : 0.001, 0.0);
    ev_timer_start(s->loop, &c->timer);
    c->timer_due_ms = due;
}
