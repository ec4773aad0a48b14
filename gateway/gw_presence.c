/* Room presence, coalesced per room: the gateway keeps who of its
 * connections is in each room, writes one presence record per room (not
 * one entry per member) to sluice_presence, and publishes the joins and
 * leaves of an interval as one presence event, so a storm of N members
 * costs O(N) frames and writes, not O(N^2).
 *
 * A change marks its room: the flush timer, started by the first change
 * after a flush, writes the record of every marked room and publishes its
 * changes SLUICE_PRESENCE_FLUSH_MS later (a room is written at most once per
 * interval). Records are rewritten once per heartbeat interval (oldest
 * first, from the tick) so the bucket's TTL keeps them; an empty room's
 * record is deleted; so are all records at shutdown. */
#include "gw_presrec.h"
#include "gw_server_int.h"

/* One allocation per member: the session, then the user. */
typedef struct pres_member {
    struct pres_member *prev, *next; /* in the room, in the order they came */
    const char *user;                /* in session's allocation */
    char session[];
} pres_member;

typedef struct pres_change {
    const char *action; /* a string literal: join, leave, disconnect */
    char *user;
    char session[SL_ID_MAX + 1];
} pres_change;

typedef struct pres_room {
    char tenant[SL_ID_MAX + 1];
    char room[SL_ID_MAX + 1];
    gw_map *idx; /* session -> pres_member */
    pres_member *head, *tail;
    int n;
    pres_change *changes; /* to publish at the next flush, in order */
    int nchanges, changes_cap;
    bool dirty;   /* the record differs from what was written */
    bool queued;  /* in the flush list */
    bool written; /* a record of ours is in the bucket */
    int64_t written_ms;
    struct pres_room *flush_next;
    struct pres_room *age_prev, *age_next; /* written rooms, oldest write first */
} pres_room;

struct gw_presence {
    char instance[SL_SESSION_ID_LEN + 1];
    gw_map *rooms; /* "<tenant>.<room>" -> pres_room */
    pres_room *flush_head;
    pres_room *age_head, *age_tail;
    ev_timer timer;
};

static void flush_cb(struct ev_loop *loop, ev_timer *w, int revents);

sl_status gw__presence_create(gw_server *s)
{
    gw_presence *p = calloc(1, sizeof(*p));

    if (p == NULL || gw_map_create(&p->rooms) != SL_OK) {
        free(p);
        return SL_ERR_NOMEM;
    }
    sl_session_id_new(p->instance);
    ev_init(&p->timer, flush_cb);
    p->timer.data = s;
    s->pres = p;
    sl_info("presence: gateway instance %s (records %s.<room>.%c%s)", p->instance, "<tenant>",
            GW_PRESREC_MARK, p->instance);
    return SL_OK;
}

const char *gw__presence_instance(const gw_server *s)
{
    return s->pres != NULL ? s->pres->instance : "";
}

static void age_unlink(gw_presence *p, pres_room *r)
{
    if (r->age_prev != NULL)
        r->age_prev->age_next = r->age_next;
    else if (p->age_head == r)
        p->age_head = r->age_next;
    if (r->age_next != NULL)
        r->age_next->age_prev = r->age_prev;
    else if (p->age_tail == r)
        p->age_tail = r->age_prev;
    r->age_prev = r->age_next = NULL;
}

static void age_append(gw_presence *p, pres_room *r)
{
    r->age_prev = p->age_tail;
    r->age_next = NULL;
    if (p->age_tail != NULL)
        p->age_tail->age_next = r;
    else
        p->age_head = r;
    p->age_tail = r;
}

static void changes_clear(pres_room *r)
{
    for (int i = 0; i < r->nchanges; i++)
        free(r->changes[i].user);
    r->nchanges = 0;
}

static void room_free(pres_room *r)
{
    pres_member *m = r->head;

    while (m != NULL) {
        pres_member *next = m->next;
        free(m);
        m = next;
    }
    changes_clear(r);
    free(r->changes);
    gw_map_destroy(r->idx);
    free(r);
}

/* Writes the room's record (or deletes it when the room is empty here). */
static void record_sync(gw_server *s, pres_room *r, int64_t now)
{
    gw_presence *p = s->pres;
    char key[SL_SUBJECT_MAX];
    char *val = NULL;

    r->dirty = false;
    if (gw_presrec_key(key, sizeof(key), r->tenant, r->room, p->instance) != SL_OK)
        return;
    if (r->n == 0) {
        if (!r->written)
            return;
        r->written = false;
        age_unlink(p, r);
    } else {
        int n = r->n < GW_PRESREC_MAX ? r->n : GW_PRESREC_MAX, i = 0;
        gw_presrec_member *list = calloc((size_t)n, sizeof(*list));
        if (list == NULL)
            return;
        for (pres_member *m = r->head; m != NULL && i < n; m = m->next, i++) {
            list[i].session = m->session;
            list[i].user = m->user;
        }
        val = gw_presrec_encode(list, n, r->n);
        free(list);
        if (val == NULL)
            return;
        if (r->written)
            age_unlink(p, r);
        age_append(p, r);
        r->written = true;
        r->written_ms = now;
    }
    sl_counter_inc(s->m.presence_writes);
    gw__kv_submit(s, true, key, val);
}

/* Publishes changes [from, from + n) of r as one presence event. */
static void publish_changes(gw_server *s, pres_room *r, int from, int n)
{
    Sluice__Envelope e = SLUICE__ENVELOPE__INIT;
    Sluice__Presence pr = SLUICE__PRESENCE__INIT;
    Sluice__PresenceChange *ch = NULL, **chp = NULL;
    char event_id[SL_EVENT_ID_LEN + 1], subj[SL_SUBJECT_MAX], msgid[SL_EVENT_ID_LEN + 4];

    if (sl_subject_out(subj, sizeof(subj), r->tenant, true, r->room) != SL_OK)
        return;
    sl_event_id_new(event_id);
    e.event_id = event_id;
    e.tenant = r->tenant;
    e.ts_unix_ns = sl_now_ns();
    pr.room = r->room;
    if (n == 1) {
        /* One change: the shape of gateways that do not coalesce. */
        pr.action = (char *)r->changes[from].action;
        pr.user = r->changes[from].user;
        pr.session = r->changes[from].session;
        e.session = r->changes[from].session;
    } else {
        ch = calloc((size_t)n, sizeof(*ch));
        chp = calloc((size_t)n, sizeof(*chp));
        if (ch == NULL || chp == NULL)
            goto done;
        for (int i = 0; i < n; i++) {
            sluice__presence_change__init(&ch[i]);
            ch[i].action = (char *)r->changes[from + i].action;
            ch[i].user = r->changes[from + i].user;
            ch[i].session = r->changes[from + i].session;
            chp[i] = &ch[i];
        }
        pr.n_changes = (size_t)n;
        pr.changes = chp;
    }
    e.body_case = SLUICE__ENVELOPE__BODY_PRESENCE;
    e.presence = &pr;
    snprintf(msgid, sizeof(msgid), "p:%s", event_id);
    sl_counter_inc(s->m.presence_events);
    gw__publish_out_async(s, subj, &e, msgid);
done:
    free(ch);
    free(chp);
}

/* Presence events of a room are published only while the room has at most
 * SLUICE_PRESENCE_FANOUT_MAX members on this gateway (when it is flushed):
 * in a large room every join would otherwise reach every member. Members
 * of large rooms still appear in `joined.members` (the records are always
 * written). */
static void publish_pending(gw_server *s, pres_room *r)
{
    if (r->nchanges == 0)
        return;
    if (r->n > s->cfg->presence_fanout_max) {
        sl_counter_add(s->m.presence_suppressed, (uint64_t)r->nchanges);
    } else {
        for (int i = 0; i < r->nchanges; i += GW_PRESENCE_CHANGES_MAX) {
            int n = r->nchanges - i;
            publish_changes(s, r, i, n < GW_PRESENCE_CHANGES_MAX ? n : GW_PRESENCE_CHANGES_MAX);
        }
    }
    changes_clear(r);
}

static void room_key(char *buf, size_t n, const char *tenant, const char *room)
{
    snprintf(buf, n, "%s.%s", tenant, room);
}

/* Writes and publishes what the marked rooms gathered since the last flush;
 * forgets the rooms left empty. */
static void flush_all(gw_server *s)
{
    gw_presence *p = s->pres;
    int64_t now = now_ms();

    while (p->flush_head != NULL) {
        pres_room *r = p->flush_head;
        p->flush_head = r->flush_next;
        r->flush_next = NULL;
        r->queued = false;
        /* The record first: a joiner elsewhere that reads the stream's head
         * before this event reads the bucket after it. */
        if (r->dirty)
            record_sync(s, r, now);
        publish_pending(s, r);
        if (r->n == 0 && !r->written) {
            char key[2 * SL_ID_MAX + 2];
            room_key(key, sizeof(key), r->tenant, r->room);
            gw_map_del(p->rooms, key);
            room_free(r);
        }
    }
}

static void flush_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    flush_all(w->data);
}

static pres_room *room_get(gw_server *s, const char *tenant, const char *room)
{
    gw_presence *p = s->pres;
    char key[2 * SL_ID_MAX + 2];
    pres_room *r;

    room_key(key, sizeof(key), tenant, room);
    if ((r = gw_map_get(p->rooms, key)) != NULL)
        return r;
    r = calloc(1, sizeof(*r));
    if (r == NULL || gw_map_create(&r->idx) != SL_OK) {
        free(r);
        return NULL;
    }
    snprintf(r->tenant, sizeof(r->tenant), "%s", tenant);
    snprintf(r->room, sizeof(r->room), "%s", room);
    if (gw_map_put(p->rooms, key, r) != SL_OK) {
        room_free(r);
        return NULL;
    }
    return r;
}

static bool member_add(pres_room *r, const char *session, const char *user)
{
    size_t ls = strlen(session) + 1, lu = strlen(user) + 1;
    pres_member *m;

    if (gw_map_get(r->idx, session) != NULL)
        return true;
    m = malloc(sizeof(*m) + ls + lu);
    if (m == NULL)
        return false;
    memcpy(m->session, session, ls);
    memcpy(m->session + ls, user, lu);
    m->user = m->session + ls;
    m->prev = m->next = NULL;
    if (gw_map_put(r->idx, session, m) != SL_OK) {
        free(m);
        return false;
    }
    m->prev = r->tail;
    if (r->tail != NULL)
        r->tail->next = m;
    else
        r->head = m;
    r->tail = m;
    r->n++;
    return true;
}

static void member_del(pres_room *r, const char *session)
{
    pres_member *m = gw_map_get(r->idx, session);

    if (m == NULL)
        return;
    gw_map_del(r->idx, session);
    if (m->prev != NULL)
        m->prev->next = m->next;
    else
        r->head = m->next;
    if (m->next != NULL)
        m->next->prev = m->prev;
    else
        r->tail = m->prev;
    r->n--;
    free(m);
}

static void change_add(pres_room *r, const char *action, const char *session, const char *user)
{
    pres_change *c;

    if (r->nchanges == r->changes_cap) {
        int ncap = r->changes_cap > 0 ? r->changes_cap * 2 : 8;
        pres_change *nc = realloc(r->changes, (size_t)ncap * sizeof(*nc));
        if (nc == NULL)
            return; /* the record still tells who is there */
        r->changes = nc;
        r->changes_cap = ncap;
    }
    c = &r->changes[r->nchanges];
    if ((c->user = strdup(user)) == NULL)
        return;
    c->action = action;
    snprintf(c->session, sizeof(c->session), "%s", session);
    r->nchanges++;
}

void gw__presence_change(gw_server *s, gw_conn *c, const char *room, const char *action)
{
    gw_presence *p = s->pres;
    pres_room *r;
    bool join = action != NULL && strcmp(action, "join") == 0;

    if (p == NULL || !sl_id_valid(room) || c->sub == NULL)
        return;
    if (join) {
        r = room_get(s, c->tenant, room);
        if (r == NULL || !member_add(r, c->session, c->sub))
            return;
    } else {
        char key[2 * SL_ID_MAX + 2];
        room_key(key, sizeof(key), c->tenant, room);
        if ((r = gw_map_get(p->rooms, key)) == NULL)
            return;
        member_del(r, c->session);
    }
    r->dirty = true;
    if (action != NULL)
        change_add(r, action, c->session, c->sub);
    if (!r->queued) {
        r->queued = true;
        r->flush_next = p->flush_head;
        p->flush_head = r;
    }
    if (!ev_is_active(&p->timer)) {
        ev_timer_set(&p->timer, (double)s->cfg->presence_flush_ms / 1000.0, 0.0);
        ev_timer_start(s->loop, &p->timer);
    }
}

void gw__presence_refresh(gw_server *s, int64_t now)
{
    gw_presence *p = s->pres;

    /* record_sync moves a rewritten room to the tail, so every room is
     * looked at once per call at most. */
    for (int n = p != NULL ? (int)gw_map_len(p->rooms) : 0; n > 0 && p->age_head != NULL; n--) {
        pres_room *r = p->age_head;
        if (now - r->written_ms < s->cfg->heartbeat_ms)
            break;
        record_sync(s, r, now);
    }
}

static void free_room_cb(const char *key, void *val, void *ud)
{
    (void)key;
    (void)ud;
    room_free(val);
}

void gw__presence_shutdown(gw_server *s)
{
    gw_presence *p = s->pres;
    char key[SL_SUBJECT_MAX];

    if (p == NULL)
        return;
    if (s->loop != NULL)
        ev_timer_stop(s->loop, &p->timer);
    if (s->bus != NULL) {
        flush_all(s);
        /* Whatever records remain are this gateway's: gone with it. */
        while (p->age_head != NULL) {
            pres_room *r = p->age_head;
            age_unlink(p, r);
            r->written = false;
            if (gw_presrec_key(key, sizeof(key), r->tenant, r->room, p->instance) == SL_OK) {
                sl_counter_inc(s->m.presence_writes);
                gw__kv_submit(s, true, key, NULL);
            }
        }
    }
    if (s->bus != NULL) {
        /* The leaves and deletes reach NATS before the connection closes. */
        jsPubOptions po;
        jsPubOptions_Init(&po);
        po.MaxWait = 2000;
        if (js_PublishAsyncComplete(sl_bus_js(s->bus), &po) != NATS_OK)
            sl_warn("shutdown: presence writes still pending");
    }
    gw_map_each(p->rooms, free_room_cb, NULL);
    gw_map_destroy(p->rooms);
    free(p);
    s->pres = NULL;
}
