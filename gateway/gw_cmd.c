/* Handlers of client frames once a connection is ready (send, join, leave,
 * ack, cancel, history) and the JetStream publish acknowledgements of sends. */
#include "gw_server_int.h"

/* ---------- publish acknowledgements ---------- */

typedef struct ack_item {
    gw_server *s;
    char msgid[3 * SL_ID_MAX + 4];
    bool ok;
    bool duplicate;
    uint64_t seq;
    char event[SL_EVENT_ID_LEN + 1]; /* the original event of a duplicate */
} ack_item;

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

static void ack_run(void *arg)
{
    ack_item *a = arg;
    gw_server *s = a->s;
    char *session, *id;
    gw_conn *c;
    pending_send *p;

    /* msgid is "<tenant>:<session>:<client id>"; the id may hold ':'. */
    session = strchr(a->msgid, ':');
    id = session ? strchr(session + 1, ':') : NULL;
    if (id == NULL)
        goto cleanup;
    *session++ = '\0';
    *id++ = '\0';
    c = gw_map_get(s->sessions, session);
    if (c != NULL && a->ok && !a->duplicate) {
        /* Stored: the session's next default prev, even when the send was
         * made on an earlier connection of the session or answered busy
         * after a timeout. A duplicate is an older id: no step back. */
        snprintf(c->last_id, sizeof(c->last_id), "%s", id);
        c->acked_dirty = true;
    }
    if (c == NULL || (p = sends_take(c, id)) == NULL)
        goto cleanup; /* gone, or answered already (timeout) */
    if (a->ok) {
        gw__conn_send_text(
            s, c,
            gw_frame_accepted(id, a->duplicate && a->event[0] ? a->event : p->event, a->duplicate));
    } else {
        gw__conn_busy(s, c, id, "overloaded", 1000);
    }
    free(p);
cleanup:
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
    gw_bridge_post(a->s->bridge, ack_run, free, a);
}

void gw__on_pub_ack_cb(jsCtx *js, natsMsg *msg, jsPubAck *pa, jsPubAckErr *pae, void *closure)
{
    gw_server *s = closure;
    ack_item *a = calloc(1, sizeof(*a));
    const char *msgid = NULL;

    (void)js;
    if (a != NULL && natsMsgHeader_Get(msg, "Nats-Msg-Id", &msgid) == NATS_OK && msgid != NULL) {
        a->s = s;
        snprintf(a->msgid, sizeof(a->msgid), "%s", msgid);
        a->ok = pa != NULL && pae == NULL;
        if (a->ok) {
            a->duplicate = pa->Duplicate;
            a->seq = pa->Sequence;
        } else if (pae != NULL) {
            sl_warn("publish of %s refused: %s (jerr %d)", msgid, natsStatus_GetText(pae->Err),
                    (int)pae->ErrCode);
        }
        if (a->duplicate)
            gw_io_submit(s->io, ack_dup_io, a);
        else
            gw_bridge_post(s->bridge, ack_run, free, a);
        a = NULL;
    }
    free(a);
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
    jsPubOptions po;

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
    e.prev_event_id = (char *)(cmd->prev != NULL ? cmd->prev : c->last_id);
    e.trace_id = event_id;
    body.room = (char *)(cmd->room != NULL ? cmd->room : "");
    body.text = (char *)cmd->text;
    body.user = c->sub;
    e.body_case = SLUICE__ENVELOPE__BODY_MESSAGE;
    e.message = &body;
    snprintf(msgid, sizeof(msgid), "%s:%s:%s", c->tenant, c->session, cmd->id);
    p = calloc(1, sizeof(*p));
    if (p == NULL || sl_envelope_encode(&e, &data, &len) != SL_OK ||
        natsMsg_Create(&m, subj, NULL, (const char *)data, (int)len) != NATS_OK ||
        natsMsgHeader_Set(m, "Nats-Msg-Id", msgid) != NATS_OK) {
        gw__conn_busy(s, c, cmd->id, "overloaded", 1000);
        goto cleanup;
    }
    jsPubOptions_Init(&po);
    po.MaxWait = s->cfg->publish_timeout_ms; /* then the ack handler reports a timeout */
    if (js_PublishMsgAsync(s->js_in, &m, &po) != NATS_OK) {
        gw__conn_busy(s, c, cmd->id, "overloaded", 1000);
        goto cleanup;
    }
    snprintf(p->id, sizeof(p->id), "%s", cmd->id);
    snprintf(p->event, sizeof(p->event), "%s", event_id);
    p->deadline_ms = now_ms() + s->cfg->publish_timeout_ms;
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
    natsMsg_Destroy(m);
    free(data);
    free(p);
}

void gw__cmd_join(gw_server *s, gw_conn *c, const gw_cmd *cmd)
{
    char rch[GW_CH_MAX];
    gw_chan *ch;
    gw_member *m;
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
    if (ch != NULL && ch->state == CHAN_READY && ch->presence != NULL) {
        /* The room is live on this gateway: join from memory, no NATS. */
        m = gw__member_add(s, c, ch, ch->head, false);
        if (m == NULL) {
            gw__chan_release(s, ch);
            gw__conn_error(s, c, "internal", "cannot join now; retry", cmd->id);
            return;
        }
        gw__presence_snap_set(ch, c->session, c->sub);
        gw__conn_send_text(s, c, gw__presence_joined_frame(ch, ch->head));
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
    char live[SL_SUBJECT_MAX], out[SL_SUBJECT_MAX];
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
    sl_subject_out(out, sizeof(out), c->tenant, is_room, name);
    sl_subject_live(live, sizeof(live), c->tenant, is_room, name);
    tmp.name = name;
    tmp.tenant = tenant;
    tmp.ch = chname;
    tmp.out = out;
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
