/* Channels (one per live subject, shared by its members) and memberships:
 * delivery of events in order to members, buffering while a member
 * replays, the per-channel event cache, the room presence snapshot, channel
 * lifetime (idle list, expiry) and the per-tenant history read budget.
 * What starts stream reads (live events after a hole, a new channel's
 * head, replays) is in gw_read.c, the reads themselves in gw_stream.c and
 * gw_history.c, and new channels are made in gw_live.c; they call into this
 * file and never the other way round. */
#include "gw_server_int.h"

/* ---------- delivery ---------- */

void gw__pend_free(pend *p)
{
    natsMsg_Destroy(p->msg);
    gw_buf_unref(p->buf);
    free(p);
}

void gw__member_pend_clear(gw_member *m)
{
    while (m->pend_head != NULL) {
        pend *p = m->pend_head;
        m->pend_head = p->next;
        gw__pend_free(p);
    }
    m->pend_tail = NULL;
    m->npend = 0;
}

/* Copies a NUL-terminated id into a field of cap bytes, cut to fit: a
 * receipt is written per member and per event, so no printf here. */
static void copy_id(char *dst, size_t cap, const char *src)
{
    size_t n = strnlen(src, cap - 1);

    memcpy(dst, src, n);
    dst[n] = '\0';
}

void gw__receipt_track(gw_conn *c, const char *ch, uint64_t seq, const char *sender_session,
                       const char *message_id)
{
    receipt *r;

    if (c->receipts == NULL) {
        c->receipts = calloc(RECEIPTS_MAX, sizeof(receipt));
        if (c->receipts == NULL)
            return;
        c->receipts_start = 0;
    }
    if (c->nreceipts == RECEIPTS_MAX) { /* oldest unacked one loses its receipt */
        c->receipts_start = (c->receipts_start + 1) % RECEIPTS_MAX;
        c->nreceipts--;
    }
    r = &c->receipts[(c->receipts_start + c->nreceipts++) % RECEIPTS_MAX];
    r->seq = seq;
    copy_id(r->ch, sizeof(r->ch), ch);
    copy_id(r->sender_session, sizeof(r->sender_session), sender_session);
    copy_id(r->message_id, sizeof(r->message_id), message_id);
}

/* Delivers one event (seq, frame) to a member now or buffers it while the
 * member replays; duplicates (seq already delivered) are dropped. */
static void member_offer(gw_server *s, gw_member *m, uint64_t seq, gw_buf *b,
                         const char *sender_session, const char *message_id)
{
    gw_conn *c = m->conn;

    if (m->replaying) {
        pend *p;
        if (m->npend >= MEMBER_PEND_MAX) {
            m->pend_overflow = true; /* the replay reads on past these */
            return;
        }
        p = calloc(1, sizeof(*p));
        if (p == NULL) {
            m->pend_overflow = true;
            return;
        }
        p->seq = seq;
        p->buf = b;
        gw_buf_ref(b);
        snprintf(p->sender_session, sizeof(p->sender_session), "%s", sender_session);
        snprintf(p->message_id, sizeof(p->message_id), "%s", message_id);
        if (m->pend_tail != NULL)
            m->pend_tail->next = p;
        else
            m->pend_head = p;
        m->pend_tail = p;
        m->npend++;
        return;
    }
    if (seq <= m->delivered)
        return;
    m->delivered = seq;
    gw__conn_send_buf(s, c, b);
    if (m->chan->is_room && sender_session[0] != '\0' && strcmp(sender_session, c->session) != 0)
        gw__receipt_track(c, m->chan->ch, seq, sender_session, message_id);
}

/* Applies one presence change to a room's member snapshot. */
static void presence_snap_apply(gw_chan *snap, const char *action, const char *user,
                                const char *session)
{
    if (!sl_id_valid(session))
        return;
    if (strcmp(action, "join") == 0)
        gw__presence_snap_set(snap, session, user);
    else
        gw__presence_snap_del(snap, session);
}

/* Builds the frame of a stored or live OUT message for channel ch. Fills
 * the sender session and message id of user messages (for receipts); when
 * snap is not NULL, a presence event also updates its member snapshot. */
gw_buf *gw__frame_of(const void *data, size_t len, const char *ch, uint64_t seq,
                     char *sender_session, char *message_id, gw_chan *snap)
{
    Sluice__Envelope *e = NULL;
    gw_buf *b = NULL;

    sender_session[0] = message_id[0] = '\0';
    if (sl_envelope_decode(data, len, &e) != SL_OK)
        return NULL;
    b = gw_buf_from(gw_frame_event(e, ch, seq));
    if (b != NULL)
        b->ts_ns = e->ts_unix_ns;
    if (e->body_case == SLUICE__ENVELOPE__BODY_MESSAGE && e->message->agent[0] == '\0') {
        snprintf(sender_session, SL_ID_MAX + 1, "%s", sl_id_valid(e->session) ? e->session : "");
        snprintf(message_id, SL_ID_MAX + 1, "%s", e->message_id);
    }
    if (snap != NULL && e->body_case == SLUICE__ENVELOPE__BODY_PRESENCE) {
        const Sluice__Presence *p = e->presence;
        /* One change, or several in order (a coalescing gateway's). */
        if (p->n_changes == 0)
            presence_snap_apply(snap, p->action, p->user, p->session);
        for (size_t i = 0; i < p->n_changes; i++)
            presence_snap_apply(snap, p->changes[i]->action, p->changes[i]->user,
                                p->changes[i]->session);
    }
    sl_envelope_free(e);
    return b;
}

#define PRESENCE_SNAP_MAX 1000

const char *gw__json_str(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* Starts an empty snapshot; false when out of memory (no snapshot then). */
bool gw__presence_snap_init(gw_chan *ch)
{
    chan_presence *p = calloc(1, sizeof(*p));

    if (p == NULL || (p->snap = cJSON_CreateObject()) == NULL || gw_map_create(&p->idx) != SL_OK) {
        if (p != NULL)
            cJSON_Delete(p->snap);
        free(p);
        return false;
    }
    ch->pres = p;
    return true;
}

static void presence_snap_changed(chan_presence *p)
{
    free(p->members_json);
    p->members_json = NULL;
    gw_buf_unref(p->joined);
    p->joined = NULL;
}

static void presence_snap_free(chan_presence *p)
{
    if (p == NULL)
        return;
    presence_snap_changed(p);
    cJSON_Delete(p->snap);
    gw_map_destroy(p->idx);
    free(p);
}

void gw__presence_snap_set(gw_chan *ch, const char *session, const char *user)
{
    chan_presence *p = ch->pres;
    cJSON *it;

    if (p == NULL)
        return; /* not loaded yet: the first join's read brings everyone */
    if (gw_map_get(p->idx, session) != NULL)
        return;
    if (p->n >= PRESENCE_SNAP_MAX) {
        if (!p->truncated)
            presence_snap_changed(p);
        p->truncated = true;
        return;
    }
    it = cJSON_CreateString(user);
    if (it == NULL || !cJSON_AddItemToObject(p->snap, session, it)) {
        cJSON_Delete(it);
        return;
    }
    if (gw_map_put(p->idx, session, it) != SL_OK) {
        cJSON_Delete(cJSON_DetachItemViaPointer(p->snap, it));
        return;
    }
    p->n++;
    /* Members are listed in the order they came: one past the listed ones
     * only changes the list's truncation. */
    if (p->n <= JOIN_MEMBERS_MAX + 1)
        presence_snap_changed(p);
}

void gw__presence_snap_del(gw_chan *ch, const char *session)
{
    chan_presence *p = ch->pres;
    cJSON *it;

    if (p == NULL || (it = gw_map_get(p->idx, session)) == NULL)
        return;
    gw_map_del(p->idx, session);
    cJSON_Delete(cJSON_DetachItemViaPointer(p->snap, it));
    p->n--;
    presence_snap_changed(p);
}

/* The members list of `joined`, from the snapshot (at most
 * JOIN_MEMBERS_MAX). Sets *truncated when the room has more. */
static cJSON *presence_snap_list(const chan_presence *p, bool *truncated)
{
    cJSON *arr = cJSON_CreateArray(), *it;
    int n = 0;

    *truncated = p->truncated;
    cJSON_ArrayForEach(it, p->snap)
    {
        cJSON *mem;
        if (n++ >= JOIN_MEMBERS_MAX) {
            *truncated = true;
            break;
        }
        mem = cJSON_CreateObject();
        cJSON_AddStringToObject(mem, "user", it->valuestring);
        cJSON_AddStringToObject(mem, "session", it->string);
        cJSON_AddItemToArray(arr, mem);
    }
    return arr;
}

/* The `joined` frame of room ch at seq with the snapshot's members, as a
 * buffer with a reference for the caller (NULL when out of memory or
 * without a snapshot). The same buffer serves every join until the listed
 * members change or seq does: every joiner of a storm shares one frame. */
gw_buf *gw__presence_joined_frame(gw_chan *ch, uint64_t seq)
{
    chan_presence *p = ch->pres;

    if (p == NULL)
        return NULL;
    if (p->joined != NULL && p->joined_seq != seq) {
        gw_buf_unref(p->joined);
        p->joined = NULL;
    }
    if (p->joined == NULL) {
        if (p->members_json == NULL) {
            bool truncated = false;
            cJSON *arr = presence_snap_list(p, &truncated);
            p->members_json = arr != NULL ? cJSON_PrintUnformatted(arr) : NULL;
            p->members_json_truncated = truncated;
            cJSON_Delete(arr);
            if (p->members_json == NULL)
                return NULL;
        }
        p->joined = gw_buf_from(
            gw_frame_joined_raw(ch->name, seq, p->members_json, p->members_json_truncated));
        if (p->joined == NULL)
            return NULL;
        p->joined_seq = seq;
    }
    gw_buf_ref(p->joined);
    return p->joined;
}

uint64_t gw__header_u64(natsMsg *m, const char *name)
{
    const char *v = NULL;

    if (natsMsgHeader_Get(m, name, &v) != NATS_OK || v == NULL)
        return 0;
    return strtoull(v, NULL, 10);
}

static void cache_drop_oldest(gw_chan *ch)
{
    cached *c = &ch->ring[ch->ring_start];

    ch->cache_base = c->seq;
    ch->ring_bytes -= c->buf->len;
    gw_buf_unref(c->buf);
    c->buf = NULL;
    ch->ring_start = (ch->ring_start + 1) % ch->ring_cap;
    ch->ring_n--;
}

static void cache_clear(gw_chan *ch)
{
    while (ch->ring_n > 0)
        cache_drop_oldest(ch);
    free(ch->ring);
    ch->ring = NULL;
    ch->ring_cap = 0;
}

/* Starts caching after `head` (the channel just became ready). */
void gw__cache_start(gw_server *s, gw_chan *ch)
{
    ch->cache_valid = s->cfg->chan_cache > 0;
    ch->cache_base = ch->head;
}

/* Appends an in-order event; evicts the oldest beyond the bounds. The
 * cache never holds more events than the stream keeps per channel, so a
 * resume sees the same history on every gateway. */
static void cache_append(gw_server *s, gw_chan *ch, uint64_t seq, gw_buf *b, const char *sender,
                         const char *msgid)
{
    int max = (int)(s->cfg->chan_cache < s->cfg->common.out_history ? s->cfg->chan_cache
                                                                    : s->cfg->common.out_history);
    cached *c;

    if (!ch->cache_valid)
        return;
    if (max <= 0) {
        ch->cache_valid = false; /* it no longer holds every event after its base */
        return;
    }
    if (ch->ring == NULL) {
        /* Grows on demand: most session channels hold a handful. */
        ch->ring_cap = 16;
        ch->ring = calloc((size_t)ch->ring_cap, sizeof(cached));
        if (ch->ring == NULL) {
            ch->cache_valid = false;
            return;
        }
    } else if (ch->ring_n == ch->ring_cap && ch->ring_cap < max) {
        int ncap = ch->ring_cap * 2;
        cached *nr = calloc((size_t)ncap, sizeof(cached));
        if (nr != NULL) {
            for (int i = 0; i < ch->ring_n; i++)
                nr[i] = ch->ring[(ch->ring_start + i) % ch->ring_cap];
            free(ch->ring);
            ch->ring = nr;
            ch->ring_cap = ncap;
            ch->ring_start = 0;
        }
    }
    while (ch->ring_n > 0 && (ch->ring_n == ch->ring_cap || ch->ring_n >= max ||
                              ch->ring_bytes + b->len > CHAN_CACHE_MAX_BYTES))
        cache_drop_oldest(ch);
    c = &ch->ring[(ch->ring_start + ch->ring_n) % ch->ring_cap];
    c->seq = seq;
    c->buf = b;
    gw_buf_ref(b);
    snprintf(c->sender_session, sizeof(c->sender_session), "%s", sender);
    snprintf(c->message_id, sizeof(c->message_id), "%s", msgid);
    ch->ring_n++;
    ch->ring_bytes += b->len;
}

/* Delivers an in-order channel event to every member. */
void gw__chan_deliver(gw_server *s, gw_chan *ch, uint64_t seq, const void *data, size_t len)
{
    char sender[SL_ID_MAX + 1], msgid[SL_ID_MAX + 1];
    gw_buf *b;

    if (seq > ch->head)
        ch->head = seq;
    b = gw__frame_of(data, len, ch->ch, seq, sender, msgid, ch);
    if (b == NULL)
        return;
    cache_append(s, ch, seq, b, sender, msgid);
    for (gw_member *m = ch->members; m != NULL; m = m->cnext)
        member_offer(s, m, seq, b, sender, msgid);
    gw_buf_unref(b);
}

/* ---------- channels and members ---------- */

/* Frees what a channel owns and the channel itself (not its map entry). */
void gw__chan_destroy(gw_chan *ch)
{
    natsSubscription_Destroy(ch->sub);
    while (ch->pend_head != NULL) {
        pend *p = ch->pend_head;
        ch->pend_head = p->next;
        gw__pend_free(p);
    }
    cache_clear(ch);
    free(ch->hole);
    presence_snap_free(ch->pres);
    free(ch);
}

/* History reads in flight per tenant and per connection: a request over
 * either bound is answered busy (history_busy), so one tenant's flood
 * takes at most HISTORY_TENANT_MAX of the gateway's bulk reads. */
bool gw__history_acquire(gw_server *s, gw_conn *c)
{
    int *n;

    if (c->history_inflight >= HISTORY_CONN_MAX)
        return false;
    if (s->history_tenants == NULL && gw_map_create(&s->history_tenants) != SL_OK)
        return false;
    n = gw_map_get(s->history_tenants, c->tenant);
    if (n == NULL) {
        n = calloc(1, sizeof(*n));
        if (n == NULL || gw_map_put(s->history_tenants, c->tenant, n) != SL_OK) {
            free(n);
            if (gw_map_len(s->history_tenants) == 0) {
                gw_map_destroy(s->history_tenants);
                s->history_tenants = NULL;
            }
            return false;
        }
    }
    if (*n >= HISTORY_TENANT_MAX)
        return false;
    (*n)++;
    c->history_inflight++;
    sl_gauge_inc(s->m.history_inflight);
    return true;
}

/* Ends a history read of tenant (c: the connection that asked, NULL when
 * it is gone). */
void gw__history_release(gw_server *s, const char *tenant, gw_conn *c)
{
    int *n = s->history_tenants != NULL ? gw_map_get(s->history_tenants, tenant) : NULL;

    if (c != NULL && c->history_inflight > 0)
        c->history_inflight--;
    if (n == NULL)
        return;
    sl_gauge_dec(s->m.history_inflight);
    if (--*n <= 0) {
        gw_map_del(s->history_tenants, tenant);
        free(n);
    }
    if (gw_map_len(s->history_tenants) == 0) {
        gw_map_destroy(s->history_tenants);
        s->history_tenants = NULL;
    }
}

/* Unsubscribes and frees a channel nobody uses any more. */
/* Takes ch off the idle list (no-op when it is not on it). */
static void chan_idle_unlink(gw_server *s, gw_chan *ch)
{
    if (ch->idle_since_ms == 0)
        return;
    if (ch->idle_prev != NULL)
        ch->idle_prev->idle_next = ch->idle_next;
    else
        s->idle_head = ch->idle_next;
    if (ch->idle_next != NULL)
        ch->idle_next->idle_prev = ch->idle_prev;
    else
        s->idle_tail = ch->idle_prev;
    ch->idle_prev = ch->idle_next = NULL;
    ch->idle_since_ms = 0;
}

static void chan_free(gw_server *s, gw_chan *ch)
{
    chan_idle_unlink(s, ch);
    gw__chan_hole_stop(s, ch);
    gw_map_del(s->chans, ch->live);
    natsSubscription_Unsubscribe(ch->sub);
    gw__chan_destroy(ch);
}

/* Called when a member leaves: an empty channel with a cache is kept for
 * CHAN_LINGER_MS (members resuming here find its cache), else freed. */
void gw__chan_release(gw_server *s, gw_chan *ch)
{
    if (ch->nmembers > 0)
        return;
    if (ch->cache_valid && !atomic_load(&s->draining)) {
        chan_idle_unlink(s, ch);
        ch->idle_since_ms = now_ms();
        ch->idle_prev = s->idle_tail;
        if (s->idle_tail != NULL)
            s->idle_tail->idle_next = ch;
        else
            s->idle_head = ch;
        s->idle_tail = ch;
        return;
    }
    chan_free(s, ch);
}

/* Frees channels that stayed empty past the linger time (at most 1024 per
 * call, to keep the loop responsive): the idle list is in the order they
 * became idle, so only expired ones and the first live one are looked at. */
void gw__chans_expire(gw_server *s)
{
    int64_t now = now_ms();

    for (int n = 0; n < 1024 && s->idle_head != NULL; n++) {
        gw_chan *ch = s->idle_head;
        if (now - ch->idle_since_ms < CHAN_LINGER_MS)
            break;
        chan_free(s, ch);
    }
}

gw_member *gw__member_find(gw_conn *c, const char *chname)
{
    for (gw_member *m = c->members; m != NULL; m = m->next) {
        if (strcmp(m->chan->ch, chname) == 0)
            return m;
    }
    return NULL;
}

gw_member *gw__member_add(gw_server *s, gw_conn *c, gw_chan *ch, uint64_t delivered, bool replaying)
{
    static uint64_t next_gen; /* loop thread only */
    gw_member *m = calloc(1, sizeof(*m));

    if (m == NULL)
        return NULL;
    m->gen = ++next_gen;
    chan_idle_unlink(s, ch);
    m->chan = ch;
    m->conn = c;
    m->delivered = delivered;
    m->replaying = replaying;
    m->cnext = ch->members;
    if (ch->members != NULL)
        ch->members->cprev = m;
    ch->members = m;
    ch->nmembers++;
    m->next = c->members;
    c->members = m;
    if (ch->is_room)
        c->nrooms++;
    return m;
}

void gw__member_remove(gw_server *s, gw_member *m)
{
    gw_chan *ch = m->chan;
    gw_conn *c = m->conn;
    gw_member **pp;

    if (m->cprev != NULL)
        m->cprev->cnext = m->cnext;
    else
        ch->members = m->cnext;
    if (m->cnext != NULL)
        m->cnext->cprev = m->cprev;
    ch->nmembers--;
    if (ch->is_room)
        c->nrooms--;
    for (pp = &c->members; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == m) {
            *pp = m->next;
            break;
        }
    }
    gw__member_pend_clear(m);
    free(m);
    gw__chan_release(s, ch);
}

/* Ends a member's replay: sends what was buffered meanwhile. */
void gw__member_go_live(gw_server *s, gw_member *m)
{
    pend *p = m->pend_head;

    m->pend_head = m->pend_tail = NULL;
    m->npend = 0;
    m->replaying = false;
    while (p != NULL) {
        pend *next = p->next;
        member_offer(s, m, p->seq, p->buf, p->sender_session, p->message_id);
        gw__pend_free(p);
        p = next;
    }
}

/* Replayed events take at most half of the outbound bounds, so that a
 * resuming client is paced by its own reading instead of being cut (4429)
 * by the size of a replay batch; the other half is for live traffic. */
bool gw__replay_has_room(gw_server *s, gw_conn *c, size_t len)
{
    return c->q.frames == 0 || (c->q.frames + 1 <= (size_t)s->cfg->outq_max_frames / 2 &&
                                c->q.bytes + len <= (size_t)s->cfg->outq_max_bytes / 2);
}

/* True when the events a member buffered during its replay fit in the
 * replay share of the outbound queue. */
bool gw__member_pend_fits(gw_server *s, gw_member *m)
{
    size_t bytes = 0;

    for (pend *p = m->pend_head; p != NULL; p = p->next)
        bytes += p->buf->len;
    return m->npend == 0 ||
           (m->conn->q.frames + (size_t)m->npend <= (size_t)s->cfg->outq_max_frames / 2 &&
            m->conn->q.bytes + bytes <= (size_t)s->cfg->outq_max_bytes / 2);
}
