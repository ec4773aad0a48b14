/* Handlers of client frames once a connection is ready (send, join, leave,
 * ack, cancel, history) and the JetStream publish acknowledgements of sends. */
#include "gw_server_int.h"

/* ---------- publish acknowledgements ---------- */

/* A send's outcome, on the loop: the identity comes from the reply
 * subject, the outcome from JetStream's answer. */
typedef struct ack_item {
    gw_server *s;
    char session[SL_ID_MAX + 1];
    char id[SL_ID_MAX + 1];
    bool ok;
    bool duplicate;
    uint64_t seq;
    char event[SL_EVENT_ID_LEN + 1]; /* the original event of a duplicate */
} ack_item;

/* The reply subject's last token is the client id with '.' (a token
 * separator in subjects) written as '~', which no client id holds. */
bool gw__ack_reply(char *out, size_t outlen, const char *prefix, int64_t deadline_ms,
                   const char *session, const char *id)
{
    int n = snprintf(out, outlen, "%s.%lld.%s.", prefix, (long long)deadline_ms, session);
    size_t k;

    if (n < 0 || (size_t)n >= outlen || id[0] == '\0')
        return false;
    k = (size_t)n;
    for (const char *p = id; *p != '\0'; p++) {
        unsigned char ch = (unsigned char)*p;
        if (ch <= ' ' || ch == '~' || ch == '*' || ch == '>' || ch >= 0x7f || k + 1 >= outlen)
            return false;
        out[k++] = ch == '.' ? '~' : (char)ch;
    }
    out[k] = '\0';
    return true;
}

bool gw__ack_parse(const char *subject, const char *prefix, int64_t *deadline_ms,
                   char session[SL_ID_MAX + 1], char id[SL_ID_MAX + 1])
{
    size_t plen = strlen(prefix), n;
    const char *p, *dot;
    char *end = NULL;
    long long v;

    if (subject == NULL || strncmp(subject, prefix, plen) != 0 || subject[plen] != '.')
        return false;
    p = subject + plen + 1;
    errno = 0;
    v = strtoll(p, &end, 10);
    if (errno != 0 || end == p || *end != '.')
        return false;
    *deadline_ms = (int64_t)v;
    p = end + 1;
    dot = strchr(p, '.');
    if (dot == NULL || dot == p || (size_t)(dot - p) > SL_ID_MAX)
        return false;
    memcpy(session, p, (size_t)(dot - p));
    session[dot - p] = '\0';
    p = dot + 1;
    n = strlen(p);
    if (n == 0 || n > SL_ID_MAX)
        return false;
    for (size_t i = 0; i <= n; i++)
        id[i] = p[i] == '~' ? '.' : p[i];
    return true;
}

static pending_send *sends_take(gw_conn *c, const char *id)
{
    for (pending_send **pp = &c->sends; *pp != NULL; pp = &(*pp)->next) {
        pending_send *p = *pp;
        if (strcmp(p->id, id) == 0) {
            *pp = p->next;
            c->nsends--;
            return p;
        }
    }
    return NULL;
}

/* Answers a send (loop thread). */
static void ack_apply(gw_server *s, const ack_item *a)
{
    gw_conn *c = gw_map_get(s->sessions, a->session);
    pending_send *p;

    if (c != NULL && a->ok && !a->duplicate) {
        /* Stored: the session's next default prev, even when the send was
         * made on an earlier connection of the session. A duplicate is an
         * older id: no step back. */
        gw__last_id_set(c, a->id);
        c->acked_dirty = true;
    }
    if (c == NULL || (p = sends_take(c, a->id)) == NULL)
        return; /* gone, or answered already (timeout) */
    if (a->ok) {
        gw__conn_send_text(s, c,
                           gw_frame_accepted(a->id,
                                             a->duplicate && a->event[0] ? a->event : p->event,
                                             a->duplicate));
    } else {
        gw__conn_busy(s, c, a->id, "overloaded", 1000);
    }
    free(p);
}

static void ack_task(void *arg)
{
    ack_item *a = arg;

    ack_apply(a->s, a);
    free(a);
}

/* A duplicate's original event id is in the stored message. */
static void ack_dup_io(void *arg)
{
    ack_item *a = arg;
    natsMsg *m = NULL;

    if (js_GetMsg(&m, sl_bus_js(a->s->bus), SL_STREAM_IN, a->seq, NULL, NULL) == NATS_OK) {
        Sluice__Envelope *e = NULL;
        if (sl_envelope_decode(natsMsg_GetData(m), (size_t)natsMsg_GetDataLength(m), &e) == SL_OK) {
            snprintf(a->event, sizeof(a->event), "%s", e->event_id);
            sl_envelope_free(e);
        }
    }
    natsMsg_Destroy(m);
    gw_bridge_post(a->s->bridge, ack_task, free, a);
}

/* Reads JetStream's answer m into a: a PubAck ({"stream":..,"seq":..
 * [,"duplicate":true]}), an API error ({"error":{"err_code":..}}) or a
 * status without a body (503: no stream took the subject). */
static void ack_outcome(ack_item *a, natsMsg *m)
{
    const char *status = NULL;
    cJSON *root = NULL;
    const cJSON *err;
    int64_t v = 0;

    if (natsMsgHeader_Get(m, "Status", &status) == NATS_OK && status != NULL) {
        sl_warn("publish of %s:%s refused: status %s", a->session, a->id, status);
        return;
    }
    root = cJSON_ParseWithLength(natsMsg_GetData(m), (size_t)natsMsg_GetDataLength(m));
    err = cJSON_GetObjectItemCaseSensitive(root, "error");
    if (err != NULL && !cJSON_IsNull(err)) {
        if (!sl_json_get_int(cJSON_GetObjectItemCaseSensitive(err, "err_code"), 0, INT32_MAX, &v))
            v = 0;
        sl_warn("publish of %s:%s refused: %s (jerr %lld)", a->session, a->id,
                gw__json_str(err, "description") ? gw__json_str(err, "description") : "error",
                (long long)v);
    } else if (sl_json_get_int(cJSON_GetObjectItemCaseSensitive(root, "seq"), 1, SL_JSON_INT_MAX,
                               &v)) {
        a->ok = true;
        a->seq = (uint64_t)v;
        a->duplicate = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(root, "duplicate"));
    } else {
        sl_warn("publish of %s:%s: unreadable acknowledgement", a->session, a->id);
    }
    cJSON_Delete(root);
}

void gw__ack_run(void *ctx, void *item)
{
    gw_server *s = ctx;
    natsMsg *m = item;
    ack_item a;
    int64_t deadline = 0;

    memset(&a, 0, sizeof(a));
    a.s = s;
    if (!gw__ack_parse(natsMsg_GetSubject(m), s->ack_prefix, &deadline, a.session, a.id))
        goto cleanup;
    /* Past the deadline the send timed out (its connection's timer answers
     * busy if nothing did yet): as with a refusal, a late acknowledgement
     * never makes it the default prev. */
    if (now_ms() <= deadline)
        ack_outcome(&a, m);
    if (a.ok && a.duplicate) {
        ack_item *d = malloc(sizeof(*d));
        if (d != NULL) {
            *d = a;
            gw_io_submit(s->io, ack_dup_io, d);
            goto cleanup;
        }
    }
    ack_apply(s, &a);
cleanup:
    gw__msg_release(s, m);
}

void gw__ack_free(void *item)
{
    natsMsg_Destroy(item);
}

/* cnats' delivery thread: queued for the loop (the batch has no practical
 * bound). Out of memory it is dropped: the send then times out and is
 * answered busy, and its retry, under the same Nats-Msg-Id, is accepted as
 * a duplicate. */
void gw__on_ack_cb(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    gw_server *s = closure;

    (void)nc;
    (void)sub;
    if (!gw_batch_push(s->acks, msg))
        natsMsg_Destroy(msg);
}

/* ---------- commands ---------- */

bool gw__conn_room_allowed(const gw_conn *c, const char *room)
{
    sl_claims cl;
    const char *p;

    if (c->rooms_any)
        return true;
    memset(&cl, 0, sizeof(cl));
    for (p = c->rooms; p != NULL && *p != '\0' && cl.nrooms < SL_ROOMS_MAX; p += strlen(p) + 1)
        snprintf(cl.rooms[cl.nrooms++], sizeof(cl.rooms[0]), "%s", p);
    return sl_claims_room_allowed(&cl, room);
}

void gw__cmd_send(gw_server *s, gw_conn *c, const gw_cmd *cmd)
{
    Sluice__Envelope e = SLUICE__ENVELOPE__INIT;
    Sluice__ClientMessage body = SLUICE__CLIENT_MESSAGE__INIT;
    char event_id[SL_EVENT_ID_LEN + 1], subj[SL_SUBJECT_MAX], msgid[3 * SL_ID_MAX + 4];
    char rch[GW_CH_MAX];
    pending_send *p = NULL;
    natsMsg *m = NULL;
    uint8_t *data = NULL;
    size_t len = 0;
    char reply[SL_SUBJECT_MAX + 192];
    int64_t deadline;

    if (atomic_load(&s->draining)) {
        gw__conn_busy(s, c, cmd->id, "draining", 1000);
        return;
    }
    if (cmd->room != NULL) {
        snprintf(rch, sizeof(rch), "r:%s", cmd->room);
        if (gw__member_find(c, rch) == NULL) {
            gw__conn_error(s, c, "not_joined", "join the room before sending to it", cmd->id);
            return;
        }
    }
    if (c->nsends >= SEND_INFLIGHT || !sl_bus_connected(s->bus)) {
        gw__conn_busy(s, c, cmd->id, "overloaded", 1000);
        return;
    }
    if (sl_subject_in(subj, sizeof(subj), c->tenant, c->session) != SL_OK)
        return;
    gw__fill_header(c, &e, event_id);
    e.client_id = (char *)cmd->id;
    e.message_id = (char *)cmd->id;
    e.prev_event_id = (char *)(cmd->prev != NULL ? cmd->prev : gw__last_id(c));
    e.trace_id = event_id;
    body.room = (char *)(cmd->room != NULL ? cmd->room : "");
    body.text = (char *)cmd->text;
    body.user = c->sub;
    e.body_case = SLUICE__ENVELOPE__BODY_MESSAGE;
    e.message = &body;
    snprintf(msgid, sizeof(msgid), "%s:%s:%s", c->tenant, c->session, cmd->id);
    /* The acknowledgement comes to s->ack_sub (gw__on_ack_cb); one later
     * than the deadline counts as a timeout. */
    deadline = now_ms() + s->cfg->publish_timeout_ms;
    p = calloc(1, sizeof(*p));
    if (p == NULL ||
        !gw__ack_reply(reply, sizeof(reply), s->ack_prefix, deadline, c->session, cmd->id) ||
        sl_envelope_encode(&e, &data, &len) != SL_OK ||
        natsMsg_Create(&m, subj, reply, (const char *)data, (int)len) != NATS_OK ||
        natsMsgHeader_Set(m, "Nats-Msg-Id", msgid) != NATS_OK ||
        natsConnection_PublishMsg(sl_bus_nc(s->bus), m) != NATS_OK) {
        gw__conn_busy(s, c, cmd->id, "overloaded", 1000);
        goto cleanup;
    }
    snprintf(p->id, sizeof(p->id), "%s", cmd->id);
    snprintf(p->event, sizeof(p->event), "%s", event_id);
    p->deadline_ms = deadline;
    /* Appended at the tail so a repeated id is answered in order. */
    {
        pending_send **pp = &c->sends;
        while (*pp != NULL)
            pp = &(*pp)->next;
        *pp = p;
    }
    c->nsends++;
    p = NULL;
cleanup:
    gw__msg_release(s, m);
    free(data);
    free(p);
}

void gw__cmd_join(gw_server *s, gw_conn *c, const gw_cmd *cmd)
{
    char rch[GW_CH_MAX];
    gw_chan *ch;
    gw_member *m;
    gw_buf *joined;
    read_job *j;

    if (!gw__conn_room_allowed(c, cmd->room)) {
        gw__conn_error(s, c, "forbidden", "your token does not allow this room", cmd->id);
        return;
    }
    snprintf(rch, sizeof(rch), "r:%s", cmd->room);
    m = gw__member_find(c, rch);
    if (m != NULL) {
        gw__conn_send_text(s, c, gw_frame_joined(cmd->room, m->delivered, NULL, false));
        return;
    }
    if (c->nrooms >= s->cfg->max_rooms) {
        /* Checked before anything is touched: no subscription, presence or
         * position for a refused join. */
        gw__conn_error(s, c, "too_many_rooms",
                       "this connection is in SLUICE_MAX_ROOMS rooms already", cmd->id);
        return;
    }
    ch = gw__chan_get_ex(s, c->tenant, true, cmd->room, HEAD_BY_JOIN);
    if (ch != NULL && ch->state == CHAN_READY && ch->pres != NULL) {
        /* The room is live on this gateway: join from memory, no NATS. */
        m = gw__member_add(s, c, ch, ch->head, false);
        if (m == NULL) {
            gw__chan_release(s, ch);
            gw__conn_error(s, c, "internal", "cannot join now; retry", cmd->id);
            return;
        }
        gw__presence_snap_set(ch, c->session, c->sub);
        joined = gw__presence_joined_frame(ch, ch->head);
        gw__conn_send_buf(s, c, joined);
        gw_buf_unref(joined);
        gw__acked_set(c, ch->ch, (int64_t)ch->head, true);
        sl_counter_inc(s->m.joins_local);
        gw__presence_change(s, c, cmd->room, "join");
        return;
    }
    if (ch != NULL && ch->join_reading) {
        /* The room's head and members are being read for an earlier join:
         * this one is answered with the same result, no read of its own. */
        m = gw__member_add(s, c, ch, 0, true);
        if (m == NULL) {
            gw__chan_release(s, ch);
            gw__conn_error(s, c, "internal", "cannot join now; retry", cmd->id);
            return;
        }
        m->join_wait = true;
        sl_counter_inc(s->m.joins_local);
        gw__presence_change(s, c, cmd->room, "join");
        return;
    }
    if (ch == NULL || (m = gw__member_add(s, c, ch, 0, true)) == NULL ||
        (j = gw__read_job_new(s, READ_JOIN, ch)) == NULL) {
        if (ch != NULL && m != NULL)
            gw__member_remove(s, m);
        else if (ch != NULL)
            gw__chan_release(s, ch);
        gw__conn_error(s, c, "internal", "cannot join now; retry", cmd->id);
        return;
    }
    snprintf(j->session, sizeof(j->session), "%s", c->session);
    j->member_gen = m->gen;
    ch->join_reading = true;
    sl_counter_inc(s->m.join_reads);
    gw_io_submit(s->io, gw__read_io, j);
    gw__presence_change(s, c, cmd->room, "join");
}

void gw__cmd_leave(gw_server *s, gw_conn *c, const gw_cmd *cmd)
{
    char rch[GW_CH_MAX];
    gw_member *m;

    snprintf(rch, sizeof(rch), "r:%s", cmd->room);
    m = gw__member_find(c, rch);
    if (m == NULL) {
        gw__conn_error(s, c, "not_joined", "not in this room", cmd->id);
        return;
    }
    gw__presence_snap_del(m->chan, c->session);
    gw__member_remove(s, m);
    gw__presence_change(s, c, cmd->room, "leave");
    gw__acked_remove(c, rch);
    gw__conn_send_text(s, c, gw_frame_left(cmd->room));
}

void gw__cmd_ack(gw_server *s, gw_conn *c, const gw_cmd *cmd)
{
    int keep = 0;

    if (gw__member_find(c, cmd->ch) == NULL) {
        gw__conn_error(s, c, "not_joined", "not subscribed to this channel", NULL);
        return;
    }
    gw__acked_set(c, cmd->ch, cmd->seq, false);
    /* The ring in order, oldest first; kept receipts move up in place. */
    for (int i = 0; i < c->nreceipts; i++) {
        receipt *r = &c->receipts[(c->receipts_start + i) % RECEIPTS_MAX];
        if (strcmp(r->ch, cmd->ch) == 0 && r->seq <= (uint64_t)cmd->seq) {
            Sluice__Envelope e = SLUICE__ENVELOPE__INIT;
            Sluice__Receipt body = SLUICE__RECEIPT__INIT;
            char event_id[SL_EVENT_ID_LEN + 1], subj[SL_SUBJECT_MAX], msgid[SL_EVENT_ID_LEN + 4];
            if (sl_subject_out(subj, sizeof(subj), c->tenant, false, r->sender_session) == SL_OK) {
                gw__fill_header(c, &e, event_id);
                e.message_id = r->message_id;
                body.to = r->message_id;
                body.user = c->sub;
                body.state = "delivered";
                e.body_case = SLUICE__ENVELOPE__BODY_RECEIPT;
                e.receipt = &body;
                snprintf(msgid, sizeof(msgid), "rc:%s", event_id);
                gw__publish_out_async(s, subj, &e, msgid);
            }
        } else {
            receipt *to = &c->receipts[(c->receipts_start + keep++) % RECEIPTS_MAX];
            if (to != r)
                *to = *r;
        }
    }
    c->nreceipts = keep;
}

void gw__cmd_cancel(gw_server *s, gw_conn *c, const gw_cmd *cmd)
{
    Sluice__Envelope e = SLUICE__ENVELOPE__INIT;
    Sluice__Cancel body = SLUICE__CANCEL__INIT;
    char event_id[SL_EVENT_ID_LEN + 1], subj[SL_SUBJECT_MAX];
    uint8_t *data = NULL;
    size_t len = 0;

    if (sl_subject_cancel(subj, sizeof(subj), c->tenant) != SL_OK)
        return;
    gw__fill_header(c, &e, event_id);
    e.client_id = (char *)cmd->id;
    e.message_id = (char *)cmd->id;
    body.message_id = (char *)cmd->id;
    body.user = c->sub;
    e.body_case = SLUICE__ENVELOPE__BODY_CANCEL;
    e.cancel = &body;
    if (sl_envelope_encode(&e, &data, &len) == SL_OK &&
        natsConnection_Publish(sl_bus_nc(s->bus), subj, data, (int)len) != NATS_OK)
        gw__conn_busy(s, c, cmd->id, "overloaded", 1000);
    free(data);
}

void gw__cmd_history(gw_server *s, gw_conn *c, const gw_cmd *cmd)
{
    bool is_room;
    const char *room;
    char live[SL_SUBJECT_MAX];
    char name[SL_ID_MAX + 1], tenant[SL_ID_MAX + 1], chname[GW_CH_MAX];
    gw_chan tmp;
    read_job *j;

    sl_channel_parse(cmd->ch, &is_room, &room);
    if (is_room && !gw__conn_room_allowed(c, room)) {
        gw__conn_error(s, c, "forbidden", "your token does not allow this room", cmd->id);
        return;
    }
    memset(&tmp, 0, sizeof(tmp));
    tmp.is_room = is_room;
    snprintf(name, sizeof(name), "%s", is_room ? room : c->session);
    snprintf(tenant, sizeof(tenant), "%s", c->tenant);
    snprintf(chname, sizeof(chname), "%s", cmd->ch);
    sl_subject_live(live, sizeof(live), c->tenant, is_room, name);
    tmp.name = name;
    tmp.tenant = tenant;
    tmp.ch = chname;
    tmp.live = live;
    if (!gw__history_acquire(s, c)) {
        gw__conn_busy(s, c, cmd->id, "history_busy", HISTORY_RETRY_MS);
        return;
    }
    j = gw__read_job_new(s, READ_HISTORY, &tmp);
    if (j == NULL) {
        gw__history_release(s, c->tenant, c);
        gw__conn_error(s, c, "internal", "out of memory; retry", cmd->id);
        return;
    }
    snprintf(j->session, sizeof(j->session), "%s", c->session);
    snprintf(j->id, sizeof(j->id), "%s", cmd->id != NULL ? cmd->id : "");
    j->before = (uint64_t)cmd->before;
    j->limit = cmd->limit;
    /* Bulk work: runs after joins, resumes and fills, never on every io
     * thread at once. */
    gw_io_submit_bulk(s->io, gw__read_io, j);
}
