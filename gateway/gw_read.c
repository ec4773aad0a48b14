/* Stream reads on gw_io threads (head, gap fill, replay, history, join:
 * gw__read_io, on the direct gets of gw_stream.c), back on the loop thread
 * the application of their results (a history page is answered by
 * gw_history.c), and what starts reads: live events in sequence (a hole
 * starts a fill; they arrive through gw_live.c), a channel getting ready
 * and member replays. Uses gw_chan.c for the channels and members. */
#include "gw_server_int.h"

static void read_result_run(void *arg);

/* ---------- io jobs: reading the stream ---------- */

void gw__read_io(void *arg)
{
    read_job *j = arg;
    gw_server *s = j->s;
    natsStatus st = NATS_OK;

    switch (j->kind) {
    case READ_HEAD:
        st = gw__last_seq_io(s, j->out, &j->head);
        break;
    case READ_JOIN:
        st = gw__last_seq_io(s, j->out, &j->head);
        j->members = cJSON_CreateArray();
        /* A large room's list is cut: reading every member on every join
         * would make a room of N members cost N^2 reads. */
        (void)gw__room_members_io(s, j->tenant, j->room, JOIN_MEMBERS_MAX, j->members,
                                  &j->members_truncated);
        break;
    case READ_FILL:
        if (j->from > 1)
            st = gw__still_stored_io(j, j->from - 1);
        if (st == NATS_OK)
            st = gw__read_forward_io(j, CHAN_PEND_MAX);
        break;
    case READ_REPLAY:
        if (j->check_gap && j->from > 1)
            st = gw__still_stored_io(j, j->from - 1);
        if (st == NATS_OK)
            st = gw__read_forward_io(j, REPLAY_BATCH);
        break;
    case READ_HISTORY:
        st = gw__history_read_io(j);
        break;
    }
    if (st != NATS_OK)
        sl_warn("stream read on %s failed: %s", j->out, natsStatus_GetText(st));
    j->more = j->more && st == NATS_OK;
    if (st != NATS_OK) {
        j->head = UINT64_MAX; /* marks failure for the loop, which retries */
        if (j->kind != READ_HISTORY)
            usleep(200 * 1000); /* paces the retries; a history request is answered */
    }
    gw_bridge_post(s->bridge, read_result_run, gw__read_job_free, j);
}

void gw__chan_fill_start(gw_server *s, gw_chan *ch, uint64_t upto, uint64_t last)
{
    read_job *j = gw__read_job_new(s, READ_FILL, ch);

    if (j == NULL)
        return;
    gw__chan_hole_stop(s, ch);
    ch->state = CHAN_FILLING;
    j->from = ch->head + 1;
    j->upto = upto;
    j->last = last;
    sl_counter_inc(s->m.gap_fills);
    gw_io_submit(s->io, gw__read_io, j);
}

/* ---------- results of stream reads ---------- */

/* Tells the channel's live members that events in (from, to) are missing:
 * the stream no longer has them. Members still replaying read the stream
 * themselves. */
static void chan_gap(gw_server *s, gw_chan *ch, uint64_t from, uint64_t to)
{
    gw_buf *b = gw_buf_from(gw_frame_gap(ch->ch, (int64_t)from, (int64_t)to));

    sl_warn("channel %s: events in (%llu, %llu) are no longer in the stream", ch->live,
            (unsigned long long)from, (unsigned long long)to);
    sl_counter_inc(s->m.fill_gaps);
    if (b == NULL)
        return;
    for (gw_member *m = ch->members; m != NULL; m = m->cnext) {
        if (!m->replaying && m->delivered < to)
            gw__conn_send_buf(s, m->conn, b);
    }
    gw_buf_unref(b);
}

/* Makes a channel ready at head. The live events it buffered meanwhile at
 * or below head are dropped (they are in the stream), so a member that went
 * live below head first replays up to it; a member still replaying checks
 * at the end of its replay (read_result_run). Without this, events stored
 * while a channel waited for its head never reach members that resumed or
 * said hello in that window. */
void gw__chan_ready(gw_server *s, gw_chan *ch, uint64_t head)
{
    ch->head = head;
    ch->ready_head = head;
    ch->state = CHAN_READY;
    gw__cache_start(s, ch);
    for (gw_member *m = ch->members; m != NULL; m = m->cnext) {
        if (!m->replaying && m->delivered < head) {
            m->replaying = true;
            gw__replay_submit(s, m->conn, m, false);
        }
    }
    gw__chan_process_pending(s, ch);
}

/* Answers member m's join with the result of the room's join read j:
 * the member starts at the head read, with the room's member list. */
static void join_answer(gw_server *s, gw_chan *ch, gw_member *m, read_job *j)
{
    gw_conn *c = m->conn;

    m->join_wait = false;
    m->delivered = j->head;
    if (ch->pres != NULL) {
        /* The store read may have run before this member's own presence
         * write landed: the snapshot always holds every local member, so
         * the next join served from memory lists it, and this joiner
         * sees itself as on the fast path. */
        gw_buf *joined;
        gw__presence_snap_set(ch, c->session, c->sub);
        joined = gw__presence_joined_frame(ch, j->head);
        gw__conn_send_buf(s, c, joined);
        gw_buf_unref(joined);
    } else {
        gw__conn_send_text(
            s, c,
            gw_frame_joined(ch->name, j->head,
                            j->members != NULL ? cJSON_Duplicate(j->members, true) : NULL,
                            j->members_truncated));
    }
    gw__acked_set(c, ch->ch, (int64_t)j->head, true);
    if (m->delivered < ch->ready_head || m->pend_overflow) {
        /* The channel dropped events above the join point, or more came
         * meanwhile than the member buffers: read them from the stream. */
        m->pend_overflow = false;
        gw__replay_submit(s, c, m, false);
    } else {
        gw__member_go_live(s, m);
    }
}

static bool join_waiters(const gw_chan *ch)
{
    for (const gw_member *w = ch->members; w != NULL; w = w->cnext)
        if (w->join_wait)
            return true;
    return false;
}

/* The room's join read cannot be retried (out of memory): the joins
 * waiting for it are refused like a join that cannot start. */
static void join_waiters_fail(gw_server *s, gw_chan *ch)
{
    gw_member *w = ch->members, *next;

    for (; w != NULL; w = next) {
        next = w->cnext;
        if (w->join_wait) {
            gw_conn *c = w->conn;
            gw__conn_error(s, c, "internal", "cannot join now; retry", NULL);
            gw__presence_change(s, c, ch->name, NULL); /* not a member after all */
            gw__member_remove(s, w);
        }
    }
}

static void read_result_run(void *arg)
{
    read_job *j = arg;
    gw_server *s = j->s;
    gw_chan *ch = gw_map_get(s->chans, j->live);
    gw_conn *c = j->session[0] ? gw_map_get(s->sessions, j->session) : NULL;
    gw_member *m;
    bool failed = j->head == UINT64_MAX;

    /* The channel that asked was freed while the read ran, and another
     * made for the same subject since: the result is not the new one's
     * (its head, fill or member list would be taken for the new
     * channel's, and its members are new memberships; the new channel
     * makes its own reads). */
    if (ch != NULL && j->chan_gen != 0 && ch->gen != j->chan_gen)
        ch = NULL;
    m = (c != NULL && ch != NULL) ? gw__member_find(c, j->ch) : NULL;

    /* The session may have left and come back (resumed on this gateway, or
     * left and re-joined) while the read ran: a result for an earlier
     * membership must not move the current one's position. */
    if (m != NULL && j->member_gen != 0 && m->gen != j->member_gen)
        m = NULL;

    if (failed && (j->kind == READ_HEAD || j->kind == READ_FILL || j->kind == READ_REPLAY ||
                   j->kind == READ_JOIN)) {
        /* NATS trouble: try again shortly (the io thread paces retries). */
        if (ch != NULL &&
            (j->kind == READ_HEAD || j->kind == READ_FILL || m != NULL ||
             (j->kind == READ_JOIN && (ch->state == CHAN_INIT || ch->join_reading)))) {
            /* A join that went away still owes its channel a head, and the
             * joins waiting for it their answer. */
            int kind = j->kind == READ_JOIN && m == NULL && !join_waiters(ch) ? READ_HEAD : j->kind;
            read_job *again = gw__read_job_new(s, kind, ch);
            if (j->kind == READ_JOIN) {
                ch->join_reading = again != NULL && kind == READ_JOIN;
                if (again == NULL)
                    join_waiters_fail(s, ch);
            }
            if (again != NULL) {
                memcpy(again->session, j->session, sizeof(j->session));
                again->from = j->kind == READ_REPLAY && m != NULL ? m->delivered + 1 : j->from;
                again->upto = j->upto;
                again->last = j->last;
                again->check_gap = j->check_gap;
                again->member_gen = j->member_gen;
                if (kind == READ_REPLAY)
                    gw_io_submit_later(s->io, gw__read_io, again);
                else
                    gw_io_submit(s->io, gw__read_io, again);
            }
        }
        gw__read_job_free(j);
        return;
    }
    switch (j->kind) {
    case READ_HEAD:
        if (ch != NULL && ch->state == CHAN_INIT)
            gw__chan_ready(s, ch, j->head);
        break;
    case READ_FILL: {
        /* The stream no longer has some of the hole when the last event
         * delivered is gone (what followed it may be gone too), or when the
         * live event's predecessor is not there: the live members are told
         * with `gap`, never skipped silently. */
        if (ch == NULL)
            break;
        if (ch->head > 0 && j->gap && j->n > 0 && j->msgs[0].seq > ch->head + 1)
            chan_gap(s, ch, ch->head, j->msgs[0].seq);
        for (size_t i = 0; i < j->n; i++) {
            if (j->msgs[i].seq > ch->head)
                gw__chan_deliver(s, ch, j->msgs[i].seq, natsMsg_GetData(j->msgs[i].msg),
                                 (size_t)natsMsg_GetDataLength(j->msgs[i].msg));
        }
        /* What is not in the stream below `upto` any more is gone for good. */
        if (!j->more && j->upto > 0 && j->upto - 1 > ch->head) {
            if (j->last > ch->head)
                chan_gap(s, ch, ch->head, j->upto);
            ch->head = j->upto - 1;
        }
        ch->state = CHAN_READY;
        gw__chan_process_pending(s, ch);
        break;
    }
    case READ_JOIN:
        if (ch == NULL)
            break;
        ch->join_reading = false;
        if (ch->state == CHAN_INIT)
            gw__chan_ready(s, ch, j->head); /* even when the joiner is gone: others wait for it */
        if (ch->pres == NULL && j->members != NULL) {
            cJSON *it;
            if (gw__presence_snap_init(ch))
                ch->pres->truncated = j->members_truncated;
            cJSON_ArrayForEach(it, j->members)
            {
                const char *u = gw__json_str(it, "user"), *ss = gw__json_str(it, "session");
                if (u != NULL && ss != NULL)
                    gw__presence_snap_set(ch, ss, u);
            }
        }
        if (m != NULL)
            join_answer(s, ch, m, j);
        /* The joins that came while the read ran: one read per room. */
        for (gw_member *w = ch->members, *next; w != NULL; w = next) {
            next = w->cnext;
            if (w->join_wait)
                join_answer(s, ch, w, j);
        }
        break;
    case READ_REPLAY: {
        char sender[SL_ID_MAX + 1], msgid[SL_ID_MAX + 1];
        if (m == NULL)
            break;
        if (j->gap) {
            uint64_t to = j->n > 0 ? j->msgs[0].seq : 0;
            /* A read that stopped where the cache starts: the event after
             * the hole is the cache's first. */
            if (to == 0 && j->upto != 0 && ch->cache_valid && ch->cache_base + 1 == j->upto &&
                ch->ring_n > 0)
                to = ch->ring[ch->ring_start].seq;
            if (to > 0) {
                gw__conn_send_text(s, c, gw_frame_gap(ch->ch, (int64_t)m->delivered, (int64_t)to));
                sl_counter_inc(s->m.resumes_gap);
            }
        }
        for (size_t i = 0; i < j->n && c->close_code == 0; i++) {
            gw_buf *b;
            if (j->msgs[i].seq <= m->delivered)
                continue;
            b = gw__frame_of(natsMsg_GetData(j->msgs[i].msg),
                             (size_t)natsMsg_GetDataLength(j->msgs[i].msg), ch->ch, j->msgs[i].seq,
                             sender, msgid, NULL);
            if (b != NULL && !gw__replay_has_room(s, c, b->len)) {
                /* The rest is read again once the client has caught up. */
                gw_buf_unref(b);
                m->replay_paused = true;
                break;
            }
            m->delivered = j->msgs[i].seq;
            if (b != NULL) {
                gw__conn_send_buf(s, c, b);
                gw_buf_unref(b);
            }
        }
        if (c->close_code != 0 || m->replay_paused)
            break;
        if (j->upto != 0 && !j->more && m->delivered + 1 < j->upto)
            m->delivered = j->upto - 1; /* the stream holds nothing of the channel in between */
        if (j->more || j->upto != 0 || m->pend_overflow || !gw__member_pend_fits(s, m) ||
            (!j->after_ready && ch->state != CHAN_INIT && m->delivered < ch->ready_head)) {
            m->pend_overflow = false;
            if (!j->more)
                gw__member_pend_clear(m); /* all in the stream: the next round reads them */
            gw__replay_submit(s, c, m, false);
        } else {
            gw__member_go_live(s, m);
        }
        break;
    }
    case READ_HISTORY:
        gw__history_done(s, j, c);
        break;
    }
    gw__read_job_free(j);
}

/* ---------- live events in order and replays: what starts reads ---------- */

/* Keeps a live event for later, in sequence order (they may arrive out of
 * order); a second copy of a sequence is dropped. */
static void chan_pend_push(gw_chan *ch, natsMsg *msg, uint64_t seq, uint64_t last)
{
    pend *p, **at;

    if (ch->npend >= CHAN_PEND_MAX || (p = calloc(1, sizeof(*p))) == NULL) {
        /* Dropped: the next live event's Nats-Last-Sequence shows the hole
         * and a fill fetches it from the stream. */
        natsMsg_Destroy(msg);
        return;
    }
    p->msg = msg;
    p->seq = seq;
    p->last = last;
    if (ch->pend_tail == NULL || ch->pend_tail->seq < seq) {
        if (ch->pend_tail != NULL)
            ch->pend_tail->next = p;
        else
            ch->pend_head = p;
        ch->pend_tail = p;
    } else {
        for (at = &ch->pend_head; (*at)->seq < seq; at = &(*at)->next)
            ; /* stops at the tail at the latest: its seq is >= seq */
        if ((*at)->seq == seq) {
            gw__pend_free(p);
            return;
        }
        p->next = *at;
        *at = p;
    }
    ch->npend++;
}

struct chan_hole {
    ev_timer timer;
    gw_server *s;
    gw_chan *ch;
};

/* The reorder window ended: if the hole is still there, read it. */
static void chan_hole_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct chan_hole *h = (struct chan_hole *)w;
    gw_chan *ch = h->ch;

    (void)loop;
    (void)revents;
    if (ch->state != CHAN_READY || ch->pend_head == NULL)
        return;
    if (ch->pend_head->seq > ch->head && ch->pend_head->last > ch->head)
        gw__chan_fill_start(h->s, ch, ch->pend_head->seq, ch->pend_head->last);
    else
        gw__chan_process_pending(h->s, ch);
}

static void chan_hole_wait(gw_server *s, gw_chan *ch)
{
    if (ch->hole == NULL) {
        ch->hole = calloc(1, sizeof(*ch->hole));
        if (ch->hole == NULL) {
            gw__chan_fill_start(s, ch, ch->pend_head->seq, ch->pend_head->last);
            return;
        }
        ch->hole->s = s;
        ch->hole->ch = ch;
        ev_init(&ch->hole->timer, chan_hole_cb);
    }
    if (!ev_is_active(&ch->hole->timer)) {
        ev_timer_set(&ch->hole->timer, (double)s->cfg->reorder_ms / 1000.0, 0.0);
        ev_timer_start(s->loop, &ch->hole->timer);
    }
}

void gw__chan_hole_stop(gw_server *s, gw_chan *ch)
{
    if (ch->hole != NULL && ev_is_active(&ch->hole->timer))
        ev_timer_stop(s->loop, &ch->hole->timer);
}

/* A live event for a ready channel: in order, a duplicate, or after a hole
 * (kept in order until the hole fills itself or is read). */
void gw__chan_on_live(gw_server *s, gw_chan *ch, natsMsg *msg)
{
    uint64_t seq = gw__header_u64(msg, "Nats-Sequence");
    uint64_t last = gw__header_u64(msg, "Nats-Last-Sequence");

    if (seq == 0) {
        natsMsg_Destroy(msg);
        return;
    }
    if (ch->state != CHAN_READY) {
        chan_pend_push(ch, msg, seq, last);
        return;
    }
    if (seq <= ch->head) {
        natsMsg_Destroy(msg);
        return;
    }
    if (last > ch->head || ch->pend_head != NULL) {
        /* After a hole, or while events wait behind one: in sequence order. */
        chan_pend_push(ch, msg, seq, last);
        gw__chan_process_pending(s, ch);
        return;
    }
    gw__chan_deliver(s, ch, seq, natsMsg_GetData(msg), (size_t)natsMsg_GetDataLength(msg));
    gw__msg_release(s, msg);
}

/* Delivers the kept events that follow head without a hole; stops at a
 * hole (and waits for it) or when the channel is not ready. */
void gw__chan_process_pending(gw_server *s, gw_chan *ch)
{
    while (ch->state == CHAN_READY && ch->pend_head != NULL) {
        pend *p = ch->pend_head;
        if (p->seq > ch->head && p->last > ch->head) {
            chan_hole_wait(s, ch);
            return;
        }
        ch->pend_head = p->next;
        if (ch->pend_head == NULL)
            ch->pend_tail = NULL;
        ch->npend--;
        if (p->seq > ch->head)
            gw__chan_deliver(s, ch, p->seq, natsMsg_GetData(p->msg),
                             (size_t)natsMsg_GetDataLength(p->msg));
        gw__pend_free(p);
    }
    if (ch->pend_head == NULL)
        gw__chan_hole_stop(s, ch);
}

/* Serves a member's replay from its channel's cache when the cache covers
 * the member's position (no gap is possible then: the cache is contiguous).
 * Returns false when the stream must be read instead. */
static bool replay_from_cache(gw_server *s, gw_conn *c, gw_member *m)
{
    gw_chan *ch = m->chan;

    if (ch->state != CHAN_READY || !ch->cache_valid || m->delivered < ch->cache_base)
        return false;
    for (int i = 0; i < ch->ring_n && c->close_code == 0; i++) {
        cached *e = &ch->ring[(ch->ring_start + i) % ch->ring_cap];
        if (e->seq <= m->delivered)
            continue;
        if (!gw__replay_has_room(s, c, e->buf->len)) {
            m->replay_paused = true; /* continues when the client has read */
            return true;
        }
        m->delivered = e->seq;
        gw__conn_send_buf(s, c, e->buf);
        if (ch->is_room && e->sender_session[0] != '\0' &&
            strcmp(e->sender_session, c->session) != 0)
            gw__receipt_track(c, ch->ch, e->seq, e->sender_session, e->message_id);
    }
    if (c->close_code == 0)
        gw__member_go_live(s, m);
    return true;
}

void gw__replay_submit(gw_server *s, gw_conn *c, gw_member *m, bool check_gap)
{
    read_job *j;

    sl_counter_inc(s->m.replays);
    if (replay_from_cache(s, c, m)) {
        sl_counter_inc(s->m.replays_cached);
        return;
    }
    j = gw__read_job_new(s, READ_REPLAY, m->chan);

    if (j == NULL) {
        gw__conn_close(c, 1011, "out of memory", true);
        return;
    }
    snprintf(j->session, sizeof(j->session), "%s", c->session);
    j->member_gen = m->gen;
    j->from = m->delivered + 1;
    j->check_gap = check_gap;
    j->after_ready = m->chan->state != CHAN_INIT;
    /* Only what the cache no longer holds is read from the stream; the
     * rest comes from the cache when this read is done. */
    if (m->chan->state == CHAN_READY && m->chan->cache_valid && m->delivered < m->chan->cache_base)
        j->upto = m->chan->cache_base + 1;
    /* After the resumes, joins and fills already queued: in a resume storm
     * every member's replay would otherwise hold up the next resume's
     * positions read (its input waits for it) and the fills live members
     * need. */
    gw_io_submit_later(s->io, gw__read_io, j);
}
