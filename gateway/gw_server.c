#include "gw_server.h"

#include <cJSON.h>
#include <errno.h>
#include <ev.h>
#include <libwebsockets.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "gw_bridge.h"
#include "gw_map.h"
#include "gw_outq.h"
#include "gw_protocol.h"
#include "sl_auth.h"
#include "sl_codec.h"
#include "sl_log.h"
#include "sl_metrics.h"
#include "sl_streams.h"
#include "sl_subject.h"

/*
 * Threads: everything in this file runs on the loop thread (the libev loop
 * that lws serves the sockets on, see gw_server_run) unless
 * its name ends in _cb (cnats threads) or _io (gw_io threads). Those never
 * touch a gw_conn or gw_chan: they post closures back through the bridge,
 * which look their target up again by session id or subject, since the
 * connection may be gone by then.
 */

/* Seconds a connection being closed has to take what is queued for it. */
#define CONN_CLOSE_GRACE_S 10

#define MEMBER_PEND_MAX    4096 /* live events buffered while a member replays */
#define CHAN_PEND_MAX      8192 /* live events buffered while a channel fills a gap */
#define REPLAY_BATCH       256  /* events fetched per replay round trip batch */
#define SEND_INFLIGHT      256  /* unacknowledged sends per connection */
#define RECEIPTS_MAX       64   /* delivered messages awaiting an ack, per connection */
#define HISTORY_CONN_MAX   2    /* history reads in flight per connection */
#define HISTORY_TENANT_MAX 8    /* history reads in flight per tenant, per gateway */
#define HISTORY_RETRY_MS   250  /* retry_after_ms of a history_busy */
#define JOIN_MEMBERS_MAX   100  /* members listed in `joined` */

/* Output: queued frames leave in writes of up to WRITE_BATCH bytes (several
 * pre-framed frames in one send), at most WRITE_ROUND bytes per connection
 * and writeable callback so that one busy client does not hold the loop. */
#define WRITE_BATCH (64 * 1024)
#define WRITE_ROUND (256 * 1024)

enum conn_state { CONN_AWAIT_HELLO = 0, CONN_HELLO_PENDING, CONN_READY, CONN_CLOSING };
enum chan_state { CHAN_INIT = 0, CHAN_READY, CHAN_FILLING };

typedef struct gw_chan gw_chan;
typedef struct gw_conn gw_conn;

#define POSITIONS_FLUSH_MS  250 /* acked positions reach KV this long after a change */
#define CONN_TIMER_SLACK_MS 250 /* connection deadlines are rounded up to this grid */

/* One event in a channel's cache. */
typedef struct cached {
    uint64_t seq;
    gw_buf *buf;
    char sender_session[SL_ID_MAX + 1];
    char message_id[SL_ID_MAX + 1];
} cached;

#define CHAN_CACHE_MAX_BYTES (512 * 1024) /* bytes per channel */
#define CHAN_LINGER_MS       30000        /* an empty channel is kept this long */

/* A live event waiting for its channel or member to be ready. */
typedef struct pend {
    struct pend *next;
    uint64_t seq;
    uint64_t last; /* Nats-Last-Sequence (channel level only) */
    natsMsg *msg;  /* channel level: the raw live message */
    gw_buf *buf;   /* member level: the built frame */
    char sender_session[SL_ID_MAX + 1];
    char message_id[SL_ID_MAX + 1];
} pend;

typedef struct gw_member {
    gw_chan *chan;
    gw_conn *conn;
    uint64_t gen; /* tells this membership from a later one of the same session */
    uint64_t delivered;
    bool replaying;
    bool join_wait;     /* answered by the join read running for its room */
    bool replay_paused; /* waits for the outbound queue to drain */
    bool pend_overflow;
    pend *pend_head, *pend_tail;
    int npend;
    struct gw_member *cprev, *cnext; /* in the channel */
    struct gw_member *next;          /* in the connection */
} gw_member;

struct gw_chan {
    /* Names, in the channel's own allocation (strs) at their length: every
     * connection has a channel of its own ("s"), so no fixed-size buffers. */
    const char *live;
    const char *out;
    const char *ch; /* "s" or "r:<room>" as clients see it */
    const char *tenant;
    const char *name;
    bool is_room;
    int state;
    uint64_t head;       /* last sequence seen on this channel */
    uint64_t ready_head; /* head when it became ready: buffered live events up to it were dropped */
    natsSubscription *sub;
    gw_member *members;
    int nmembers;
    pend *pend_head, *pend_tail;
    int npend;
    /* The latest events in order: every event of the channel with a
     * sequence in (cache_base, head] is in the ring once cache_valid, so a
     * member resuming from there is served from memory (no NATS). */
    cached *ring;
    int ring_cap, ring_start, ring_n;
    size_t ring_bytes;
    uint64_t cache_base;
    bool cache_valid;
    int64_t idle_since_ms; /* no members since then (kept for a resume); 0: in use */
    struct gw_chan *idle_prev, *idle_next; /* in the server's idle list while idle */
    /* Who is in the room (session -> user), loaded once from the presence
     * bucket by the first join and kept current from presence events and
     * local joins, so later joins need no NATS round trip. The index
     * (session -> item of presence) and the count keep a join O(1); the
     * rendered `members` of `joined` is kept until the listed members
     * change, so a storm of joins into a large room renders it once. */
    cJSON *presence;
    gw_map *presence_idx;
    int npresence;
    bool presence_truncated;
    char *members_json; /* NULL: render again */
    bool members_json_truncated;
    /* A READ_JOIN of this room is running: later joins wait for its result
     * (join_wait) instead of each reading the head and the member list. */
    bool join_reading;
    char strs[]; /* live and out */
};

typedef struct pending_send {
    struct pending_send *next;
    char id[SL_ID_MAX + 1];
    char event[SL_EVENT_ID_LEN + 1];
    int64_t deadline_ms;
} pending_send;

typedef struct receipt {
    uint64_t seq;
    char ch[GW_CH_MAX];
    char sender_session[SL_ID_MAX + 1];
    char message_id[SL_ID_MAX + 1];
} receipt;

/* Per-connection state, allocated by lws as the protocol's session data. */
struct gw_conn {
    struct lws *wsi;
    int state;
    char tenant[SL_ID_MAX + 1];
    char session[SL_ID_MAX + 1];
    char *sub;   /* the user (malloc'd) */
    char *rooms; /* the rooms claim as "a\0b*\0\0", or NULL for any room */
    bool rooms_any;
    int64_t opened_ms;
    int64_t last_rx_ms;
    int64_t last_ping_ms;
    bool ping_due;
    int close_code;
    bool close_now;
    const char *close_reason; /* a string literal */
    char *rx;
    size_t rxlen;
    bool rx_binary;
    bool rx_oversize;
    gw_bucket bucket;
    gw_outq q;
    gw_member *members;
    int nrooms; /* room memberships, at most cfg->max_rooms */
    pending_send *sends;
    int nsends;
    /* The session's default `prev`: the last client id JetStream
     * acknowledged (a refused or failed send never becomes it). Persisted
     * with the positions and read back on a resume, on any gateway. */
    char last_id[SL_ID_MAX + 1];
    gw_pos *acked; /* acked positions (malloc'd, grows to max_rooms + 1) */
    int nacked, acked_cap;
    bool acked_dirty;
    receipt *receipts; /* ring (malloc'd on first use) */
    int nreceipts;
    int history_inflight; /* history reads queued or running */
    struct gw_conn *all_prev, *all_next;
    gw_server *srv;
    /* One timer per connection (libev's heap: a start or a firing costs
     * O(log connections)) for its next deadline: hello timeout, ping and
     * presence refresh, silence (4408), a send's ack deadline, a position
     * flush. Nothing walks every connection on a clock. */
    ev_timer timer;
    int64_t timer_due_ms; /* when the armed timer fires; 0: not armed */
    /* In the server's list of connections whose presence entries are due
     * (written together on the next tick: one wake of cnats's threads for
     * many writes). */
    struct gw_conn *pres_prev, *pres_next;
    bool pres_queued;
};

typedef struct gw_metrics {
    sl_gauge *connections;
    sl_gauge *history_inflight;
    sl_counter *connections_total;
    sl_counter *frames_in, *frames_out, *bytes_in, *bytes_out;
    sl_counter *writes; /* lws_write calls carrying frames (one or several) */
    sl_counter *busy_rate, *busy_overloaded, *busy_draining, *busy_history;
    sl_counter *slow_closes;
    sl_counter *resumes_ok, *resumes_gap;
    sl_counter *gap_fills;
    sl_counter *fill_gaps;
    sl_counter *handshake_refusals;
    sl_counter *bad_frames;
    sl_counter *live_dropped;
    sl_counter *replays, *replays_cached;
    sl_counter *presence_suppressed;
    sl_counter *joins_local;
    sl_counter *join_reads;
    sl_counter *presence_writes, *presence_events;
    sl_hist *delivery_latency;
    sl_hist *accept_latency;
} gw_metrics;

struct gw_server {
    const gw_config *cfg;
    sl_bus *bus;
    sl_auth *auth;
    const char *resume_secret;
    struct ev_loop *loop;    /* the event loop lws runs on (libev, epoll) */
    struct lws_context *ctx; /* NULL again once lws_context_destroy finished */
    struct lws_http_mount mounts[2];
    struct lws_protocols protocols[2];
    gw_bridge *bridge;
    gw_io *io;
    jsCtx *js_in; /* publishes client messages; acks come to on_pub_ack_cb */
    kvStore *kv_sessions;
    kvStore *kv_presence;
    gw_map *sessions; /* session id -> gw_conn */
    gw_map *chans;    /* live subject -> gw_chan */
    /* Empty channels kept for a resume, oldest first (they are appended as
     * they become idle): expiry looks at the head, not at every channel. */
    gw_chan *idle_head, *idle_tail;
    /* tenant -> int (malloc'd): history reads in flight; the map exists only
     * while some read is in flight (made on demand, freed when empty). */
    gw_map *history_tenants;
    gw_conn *all; /* every websocket connection */
    int nconns;
    gw_conn *pres_due; /* connections whose presence refresh is due (pres_next) */
    gw_bucket handshakes;
    lws_sorted_usec_list_t tick;
    int64_t last_expire_ms;
    volatile int *stop;
    int64_t drain_started_ms;
    int64_t closing_since_ms; /* the drain ended: 1001 closes on their way */
    _Atomic int draining;
    _Atomic int running;
    gw_metrics m;
    unsigned char *wbuf; /* LWS_PRE + WRITE_BATCH: on_writeable's batch (loop thread) */
};

static int64_t now_ms(void)
{
    return sl_mono_ms();
}

/* ---------- output ---------- */

/* Closes c with code once its queue is flushed (or at once). reason must
 * outlive the connection: callers pass string literals. */
static void conn_close(gw_conn *c, int code, const char *reason, bool flush_first)
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

/* Queues a frame; a client over its bound is cut with 4429 and resumes. */
static void conn_send_buf(gw_server *s, gw_conn *c, gw_buf *b)
{
    if (b == NULL || c->close_code != 0)
        return;
    if (!gw_outq_push(&c->q, b, (size_t)s->cfg->outq_max_frames, (size_t)s->cfg->outq_max_bytes)) {
        sl_counter_inc(s->m.slow_closes);
        gw_outq_clear(&c->q);
        conn_close(c, 4429, "slow consumer", false);
        return;
    }
    lws_callback_on_writable(c->wsi);
}

/* Sends a malloc'd frame text (freed here; NULL is ignored). */
static void conn_send_text(gw_server *s, gw_conn *c, char *text)
{
    gw_buf *b = gw_buf_from(text);

    if (b != NULL) {
        conn_send_buf(s, c, b);
        gw_buf_unref(b);
    }
}

static void conn_error(gw_server *s, gw_conn *c, const char *code, const char *msg, const char *id)
{
    sl_counter_inc(s->m.bad_frames);
    conn_send_text(s, c, gw_frame_error(code, msg, id));
}

static void conn_busy(gw_server *s, gw_conn *c, const char *id, const char *reason, int64_t retry)
{
    if (strcmp(reason, "rate_limited") == 0)
        sl_counter_inc(s->m.busy_rate);
    else if (strcmp(reason, "draining") == 0)
        sl_counter_inc(s->m.busy_draining);
    else if (strcmp(reason, "history_busy") == 0)
        sl_counter_inc(s->m.busy_history);
    else
        sl_counter_inc(s->m.busy_overloaded);
    conn_send_text(s, c, gw_frame_busy(id, reason, retry));
}

/* ---------- publishing helpers ---------- */

static void fill_header(gw_conn *c, Sluice__Envelope *e, char *event_id)
{
    sl_event_id_new(event_id);
    e->event_id = event_id;
    e->tenant = c->tenant;
    e->session = c->session;
    e->ts_unix_ns = sl_now_ns();
}

/* Fire-and-forget JetStream publish (presence, receipts): errors are
 * logged by the bus; the next refresh repairs presence. */
static void publish_out_async(gw_server *s, const char *subject, const Sluice__Envelope *e,
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

/* Presence events of a room are published only while the room has at most
 * SLUICE_PRESENCE_FANOUT_MAX members on this gateway: in a large room every
 * join would otherwise reach every member, and a reconnect storm of N
 * members would cost N^2 frames. Members of large rooms still appear in
 * `joined.members` (the presence bucket is always kept). */
static void publish_presence(gw_server *s, gw_conn *c, const char *room, const char *action)
{
    Sluice__Envelope e = SLUICE__ENVELOPE__INIT;
    Sluice__Presence p = SLUICE__PRESENCE__INIT;
    char event_id[SL_EVENT_ID_LEN + 1], subj[SL_SUBJECT_MAX], msgid[SL_EVENT_ID_LEN + 4];
    char live[SL_SUBJECT_MAX];
    gw_chan *ch;

    if (sl_subject_chan(subj, sizeof(subj), "sluice.out", c->tenant, true, room) != SL_OK ||
        sl_subject_chan(live, sizeof(live), "sluice.live", c->tenant, true, room) != SL_OK)
        return;
    ch = gw_map_get(s->chans, live);
    if (ch != NULL && ch->nmembers > s->cfg->presence_fanout_max) {
        sl_counter_inc(s->m.presence_suppressed);
        return;
    }
    fill_header(c, &e, event_id);
    p.action = (char *)action;
    p.user = c->sub;
    p.session = c->session;
    p.room = (char *)room;
    e.body_case = SLUICE__ENVELOPE__BODY_PRESENCE;
    e.presence = &p;
    snprintf(msgid, sizeof(msgid), "p:%s", event_id);
    sl_counter_inc(s->m.presence_events);
    publish_out_async(s, subj, &e, msgid);
}

/* ---------- io jobs: KV ---------- */

/* Writes (value) or deletes (NULL) a KV key without waiting: a KV put is a
 * publish to "$KV.<bucket>.<key>", so it goes out asynchronously from the
 * loop like any other publish, instead of a round trip per key. Takes
 * value (malloc'd). Presence and positions are refreshed regularly, so a
 * lost write is repaired by the next one. */
static void kv_submit(gw_server *s, bool presence, const char *key, char *value)
{
    char subj[SL_SUBJECT_MAX + 32];
    natsMsg *m = NULL;
    jsPubOptions po;

    snprintf(subj, sizeof(subj), "$KV.%s.%s", presence ? SL_KV_PRESENCE : SL_KV_SESSIONS, key);
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

static void presence_put(gw_server *s, gw_conn *c, const char *room, bool present)
{
    char key[SL_SUBJECT_MAX];
    char *val = NULL;

    if (sl_kv_key3(key, sizeof(key), c->tenant, room, c->session) != SL_OK)
        return;
    if (present) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "user", c->sub);
        val = cJSON_PrintUnformatted(o);
        cJSON_Delete(o);
        if (val == NULL)
            return;
    }
    sl_counter_inc(s->m.presence_writes);
    kv_submit(s, true, key, val);
}

/* Persists the acked positions (and so the joined rooms) of a connection. */
static void positions_flush(gw_server *s, gw_conn *c)
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
    for (int i = 0; i < c->nacked; i++)
        cJSON_AddNumberToObject(pos, c->acked[i].ch, (double)c->acked[i].seq);
    if (c->last_id[0] != '\0')
        cJSON_AddStringToObject(o, "prev", c->last_id);
    val = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    if (val != NULL)
        kv_submit(s, false, key, val);
}

static void conn_timer_arm(gw_server *s, gw_conn *c);

/* Marks c's positions for the next flush, which its timer does. */
static void positions_dirty(gw_conn *c)
{
    c->acked_dirty = true;
    if (c->srv != NULL)
        conn_timer_arm(c->srv, c);
}

static void acked_set(gw_conn *c, const char *ch, int64_t seq, bool only_if_absent)
{
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
        /* Grows with the channels joined (bounded by SLUICE_MAX_ROOMS + the
         * session channel): most connections hold the session channel and
         * one room, so it starts with room for those two. */
        int ncap = c->acked_cap > 0 ? c->acked_cap * 2 : 2;
        gw_pos *na;
        if (ncap > GW_POSITIONS_MAX)
            ncap = GW_POSITIONS_MAX;
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

static void acked_remove(gw_conn *c, const char *ch)
{
    for (int i = 0; i < c->nacked; i++) {
        if (strcmp(c->acked[i].ch, ch) == 0) {
            c->acked[i] = c->acked[--c->nacked];
            positions_dirty(c);
            return;
        }
    }
}

/* ---------- delivery ---------- */

static void pend_free(pend *p)
{
    natsMsg_Destroy(p->msg);
    gw_buf_unref(p->buf);
    free(p);
}

static void member_pend_clear(gw_member *m)
{
    while (m->pend_head != NULL) {
        pend *p = m->pend_head;
        m->pend_head = p->next;
        pend_free(p);
    }
    m->pend_tail = NULL;
    m->npend = 0;
}

static void receipt_track(gw_conn *c, const char *ch, uint64_t seq, const char *sender_session,
                          const char *message_id)
{
    receipt *r;

    if (c->receipts == NULL) {
        c->receipts = calloc(RECEIPTS_MAX, sizeof(receipt));
        if (c->receipts == NULL)
            return;
    }
    if (c->nreceipts == RECEIPTS_MAX) { /* oldest unacked one loses its receipt */
        memmove(c->receipts, c->receipts + 1, (RECEIPTS_MAX - 1) * sizeof(receipt));
        c->nreceipts--;
    }
    r = &c->receipts[c->nreceipts++];
    r->seq = seq;
    snprintf(r->ch, sizeof(r->ch), "%s", ch);
    snprintf(r->sender_session, sizeof(r->sender_session), "%s", sender_session);
    snprintf(r->message_id, sizeof(r->message_id), "%s", message_id);
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
    conn_send_buf(s, c, b);
    if (m->chan->is_room && sender_session[0] != '\0' && strcmp(sender_session, c->session) != 0)
        receipt_track(c, m->chan->ch, seq, sender_session, message_id);
}

/* Decodes a stored/live OUT message into a frame for channel ch. Fills the
 * sender session and message id of user messages (for receipts). */
static void presence_snap_set(gw_chan *ch, const char *session, const char *user);
static void presence_snap_del(gw_chan *ch, const char *session);

/* Builds the frame of a stored or live OUT message for channel ch. Fills
 * the sender session and message id of user messages (for receipts); when
 * snap is not NULL, a presence event also updates its member snapshot. */
static gw_buf *frame_of(const void *data, size_t len, const char *ch, uint64_t seq,
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
    if (snap != NULL && e->body_case == SLUICE__ENVELOPE__BODY_PRESENCE &&
        sl_id_valid(e->presence->session)) {
        if (strcmp(e->presence->action, "join") == 0)
            presence_snap_set(snap, e->presence->session, e->presence->user);
        else
            presence_snap_del(snap, e->presence->session);
    }
    sl_envelope_free(e);
    return b;
}

#define PRESENCE_SNAP_MAX 1000

static const char *json_str(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* Starts an empty snapshot; false when out of memory (no snapshot then). */
static bool presence_snap_init(gw_chan *ch)
{
    ch->presence = cJSON_CreateObject();
    if (ch->presence == NULL || gw_map_create(&ch->presence_idx) != SL_OK) {
        cJSON_Delete(ch->presence);
        ch->presence = NULL;
        return false;
    }
    ch->npresence = 0;
    return true;
}

static void presence_snap_changed(gw_chan *ch)
{
    free(ch->members_json);
    ch->members_json = NULL;
}

static void presence_snap_set(gw_chan *ch, const char *session, const char *user)
{
    cJSON *it;

    if (ch->presence == NULL)
        return; /* not loaded yet: the first join's read brings everyone */
    if (gw_map_get(ch->presence_idx, session) != NULL)
        return;
    if (ch->npresence >= PRESENCE_SNAP_MAX) {
        if (!ch->presence_truncated)
            presence_snap_changed(ch);
        ch->presence_truncated = true;
        return;
    }
    it = cJSON_CreateString(user);
    if (it == NULL || !cJSON_AddItemToObject(ch->presence, session, it)) {
        cJSON_Delete(it);
        return;
    }
    if (gw_map_put(ch->presence_idx, session, it) != SL_OK) {
        cJSON_Delete(cJSON_DetachItemViaPointer(ch->presence, it));
        return;
    }
    ch->npresence++;
    /* Members are listed in the order they came: one past the listed ones
     * only changes the list's truncation. */
    if (ch->npresence <= JOIN_MEMBERS_MAX + 1)
        presence_snap_changed(ch);
}

static void presence_snap_del(gw_chan *ch, const char *session)
{
    cJSON *it;

    if (ch->presence == NULL || (it = gw_map_get(ch->presence_idx, session)) == NULL)
        return;
    gw_map_del(ch->presence_idx, session);
    cJSON_Delete(cJSON_DetachItemViaPointer(ch->presence, it));
    ch->npresence--;
    presence_snap_changed(ch);
}

/* The members list of `joined`, from the snapshot (at most
 * JOIN_MEMBERS_MAX). Sets *truncated when the room has more. */
static cJSON *presence_snap_list(const gw_chan *ch, bool *truncated)
{
    cJSON *arr = cJSON_CreateArray(), *it;
    int n = 0;

    *truncated = ch->presence_truncated;
    cJSON_ArrayForEach(it, ch->presence)
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

/* The `joined` frame of room ch at seq with the snapshot's members,
 * rendered once per change of the listed members (caller frees). */
static char *presence_joined_frame(gw_chan *ch, uint64_t seq)
{
    if (ch->members_json == NULL) {
        bool truncated = false;
        cJSON *arr = presence_snap_list(ch, &truncated);
        ch->members_json = arr != NULL ? cJSON_PrintUnformatted(arr) : NULL;
        ch->members_json_truncated = truncated;
        cJSON_Delete(arr);
        if (ch->members_json == NULL)
            return NULL;
    }
    return gw_frame_joined_raw(ch->name, seq, ch->members_json, ch->members_json_truncated);
}

static uint64_t header_u64(natsMsg *m, const char *name)
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
static void cache_start(gw_server *s, gw_chan *ch)
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
static void chan_deliver(gw_server *s, gw_chan *ch, uint64_t seq, const void *data, size_t len)
{
    char sender[SL_ID_MAX + 1], msgid[SL_ID_MAX + 1];
    gw_buf *b;

    if (seq > ch->head)
        ch->head = seq;
    b = frame_of(data, len, ch->ch, seq, sender, msgid, ch);
    if (b == NULL)
        return;
    cache_append(s, ch, seq, b, sender, msgid);
    for (gw_member *m = ch->members; m != NULL; m = m->cnext)
        member_offer(s, m, seq, b, sender, msgid);
    gw_buf_unref(b);
}

static void chan_pend_push(gw_chan *ch, natsMsg *msg, uint64_t seq, uint64_t last)
{
    pend *p;

    if (ch->npend >= CHAN_PEND_MAX || (p = calloc(1, sizeof(*p))) == NULL) {
        /* Dropped: the next live event's Nats-Last-Sequence shows the hole
         * and a fill fetches it from the stream. */
        natsMsg_Destroy(msg);
        return;
    }
    p->msg = msg;
    p->seq = seq;
    p->last = last;
    if (ch->pend_tail != NULL)
        ch->pend_tail->next = p;
    else
        ch->pend_head = p;
    ch->pend_tail = p;
    ch->npend++;
}

static void chan_fill_start(gw_server *s, gw_chan *ch, uint64_t upto, uint64_t last);
static void chan_process_pending(gw_server *s, gw_chan *ch);

/* A live event for a ready channel: in order, a duplicate, or after a hole. */
static void chan_on_live(gw_server *s, gw_chan *ch, natsMsg *msg)
{
    uint64_t seq = header_u64(msg, "Nats-Sequence");
    uint64_t last = header_u64(msg, "Nats-Last-Sequence");

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
    if (last > ch->head) {
        chan_pend_push(ch, msg, seq, last);
        chan_fill_start(s, ch, seq, last);
        return;
    }
    chan_deliver(s, ch, seq, natsMsg_GetData(msg), (size_t)natsMsg_GetDataLength(msg));
    natsMsg_Destroy(msg);
}

static void chan_process_pending(gw_server *s, gw_chan *ch)
{
    while (ch->state == CHAN_READY && ch->pend_head != NULL) {
        pend *p = ch->pend_head;
        ch->pend_head = p->next;
        if (ch->pend_head == NULL)
            ch->pend_tail = NULL;
        ch->npend--;
        chan_on_live(s, ch, p->msg);
        p->msg = NULL;
        pend_free(p);
    }
}

typedef struct live_item {
    gw_server *s;
    natsMsg *msg;
} live_item;

static void live_item_free(void *arg)
{
    live_item *it = arg;
    natsMsg_Destroy(it->msg);
    free(it);
}

static void live_run(void *arg)
{
    live_item *it = arg;
    gw_chan *ch = gw_map_get(it->s->chans, natsMsg_GetSubject(it->msg));

    if (ch != NULL)
        chan_on_live(it->s, ch, it->msg);
    else
        natsMsg_Destroy(it->msg);
    free(it);
}

static void on_live_cb(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    gw_server *s = closure;
    live_item *it = malloc(sizeof(*it));

    (void)nc;
    (void)sub;
    if (it == NULL) {
        natsMsg_Destroy(msg);
        return;
    }
    it->s = s;
    it->msg = msg;
    if (!gw_bridge_post_droppable(s->bridge, live_run, live_item_free, it)) {
        sl_counter_inc(s->m.live_dropped);
        live_item_free(it);
    }
}

/* ---------- io jobs: reading the stream ---------- */

typedef struct got {
    uint64_t seq;
    natsMsg *msg;
} got;

/* A read of a channel's stream subject on an io thread. */
typedef struct read_job {
    gw_server *s;
    int kind; /* READ_HEAD, READ_FILL, READ_REPLAY, READ_HISTORY, READ_JOIN */
    char out[SL_SUBJECT_MAX];
    char live[SL_SUBJECT_MAX];
    char ch[GW_CH_MAX];
    char session[SL_ID_MAX + 1]; /* the connection asking (replay, history, join) */
    char room[SL_ID_MAX + 1];
    char tenant[SL_ID_MAX + 1];
    uint64_t from; /* first sequence wanted */
    uint64_t upto; /* fill: stop at this sequence */
    uint64_t last; /* fill: Nats-Last-Sequence of the live event at upto */
    uint64_t before;
    int64_t limit;
    char id[SL_ID_MAX + 1]; /* history: the request's id, or "" */
    uint64_t covered;       /* history: every event in [covered, before) was read */
    bool check_gap;
    uint64_t member_gen; /* replay, join: the membership asking */
    bool after_ready;    /* replay: submitted when the channel knew its head */
    /* results */
    uint64_t head;
    bool gap;
    bool more;
    got *msgs;
    size_t n;
    cJSON *members;
    bool members_truncated;
} read_job;

enum { READ_HEAD, READ_FILL, READ_REPLAY, READ_HISTORY, READ_JOIN };

static void read_job_free(void *arg)
{
    read_job *j = arg;
    for (size_t i = 0; i < j->n; i++)
        natsMsg_Destroy(j->msgs[i].msg);
    free(j->msgs);
    cJSON_Delete(j->members);
    free(j);
}

/* Direct get: the next message on subject at or after seq. */
static natsStatus next_by_subject(gw_server *s, const char *subject, uint64_t seq, natsMsg **out)
{
    jsDirectGetMsgOptions o;

    jsDirectGetMsgOptions_Init(&o);
    o.Sequence = seq;
    o.NextBySubject = subject;
    return js_DirectGetMsg(out, sl_bus_js(s->bus), SL_STREAM_OUT, NULL, &o);
}

static natsStatus last_seq_io(gw_server *s, const char *subject, uint64_t *seq)
{
    jsDirectGetMsgOptions o;
    natsMsg *m = NULL;
    natsStatus st;

    jsDirectGetMsgOptions_Init(&o);
    o.LastBySubject = subject;
    st = js_DirectGetMsg(&m, sl_bus_js(s->bus), SL_STREAM_OUT, NULL, &o);
    if (st == NATS_NOT_FOUND) {
        *seq = 0;
        return NATS_OK;
    }
    if (st == NATS_OK)
        *seq = header_u64(m, "Nats-Sequence");
    natsMsg_Destroy(m);
    return st;
}

static bool push_got(read_job *j, natsMsg *m, uint64_t seq, size_t *cap)
{
    if (j->n == *cap) {
        size_t nc = *cap ? *cap * 2 : 64;
        got *g = realloc(j->msgs, nc * sizeof(got));
        if (g == NULL)
            return false;
        j->msgs = g;
        *cap = nc;
    }
    j->msgs[j->n].seq = seq;
    j->msgs[j->n].msg = m;
    j->n++;
    return true;
}

/* Reads forward from j->from: up to REPLAY_BATCH messages, or to j->upto. */
static natsStatus read_forward_io(read_job *j, size_t max)
{
    size_t cap = 0;
    uint64_t seq = j->from;
    natsStatus st = NATS_OK;

    while (j->n < max) {
        natsMsg *m = NULL;
        uint64_t got_seq;
        st = next_by_subject(j->s, j->out, seq, &m);
        if (st == NATS_NOT_FOUND) {
            st = NATS_OK;
            j->more = false;
            return st;
        }
        if (st != NATS_OK)
            return st;
        got_seq = header_u64(m, "Nats-Sequence");
        if (got_seq == 0 || (j->upto != 0 && got_seq >= j->upto)) {
            natsMsg_Destroy(m);
            j->more = false;
            return NATS_OK;
        }
        if (!push_got(j, m, got_seq, &cap)) {
            natsMsg_Destroy(m);
            return NATS_NO_MEMORY;
        }
        seq = got_seq + 1;
    }
    j->more = true;
    return st;
}

/* Sets j->gap when the event at seq (the last one delivered) is no longer
 * in the stream on j's subject: events after it may be gone too. While it
 * is stored nothing after it was removed (removal is oldest-first). */
static natsStatus still_stored_io(read_job *j, uint64_t seq)
{
    jsDirectGetMsgOptions o;
    natsMsg *m = NULL;
    const char *subj = NULL;
    natsStatus st;

    jsDirectGetMsgOptions_Init(&o);
    o.Sequence = seq;
    st = js_DirectGetMsg(&m, sl_bus_js(j->s->bus), SL_STREAM_OUT, NULL, &o);
    if (st == NATS_NOT_FOUND) {
        j->gap = true;
        st = NATS_OK;
    } else if (st == NATS_OK) {
        if (natsMsgHeader_Get(m, "Nats-Subject", &subj) != NATS_OK || subj == NULL ||
            strcmp(subj, j->out) != 0)
            j->gap = true;
    }
    natsMsg_Destroy(m);
    return st;
}

/* Appends (seq, m) to a growing array; false without memory. */
static bool got_append(got **arr, size_t *n, size_t *cap, natsMsg *m, uint64_t seq)
{
    if (*n == *cap) {
        size_t nc = *cap ? *cap * 2 : 32;
        got *g = realloc(*arr, nc * sizeof(got));
        if (g == NULL)
            return false;
        *arr = g;
        *cap = nc;
    }
    (*arr)[*n].seq = seq;
    (*arr)[*n].msg = m;
    (*n)++;
    return true;
}

/* One history request: the newest `limit` events of the channel below
 * `before`, in one bounded read. Direct gets only read forward, so windows
 * below `before` are read newest window first, each once (from its start to
 * where the previous window began, never again), growing fourfold, until
 * `limit` events are found, the stream's start is reached or the budget of
 * 2 x limit + 16 gets is spent. A window the budget cuts is dropped (its
 * newest part was not read); what was not reached is the next page's
 * (j->covered). */
static natsStatus history_read_io(read_job *j)
{
    uint64_t before = j->before, w = (uint64_t)j->limit * 2;
    uint64_t budget = (uint64_t)j->limit * 2 + 16, used = 0;
    natsStatus st = NATS_OK;

    if (before == 0) {
        st = last_seq_io(j->s, j->out, &before);
        before += 1;
        used++;
    }
    j->covered = before;
    while (st == NATS_OK && j->covered > 1 && (int64_t)j->n < j->limit && used < budget) {
        uint64_t start = j->covered > w ? j->covered - w : 1;
        got *win = NULL;
        size_t wn = 0, wcap = 0;
        bool complete = false;
        for (uint64_t seq = start; used < budget;) {
            natsMsg *m = NULL;
            uint64_t gs;
            used++;
            st = next_by_subject(j->s, j->out, seq, &m);
            if (st == NATS_NOT_FOUND) {
                st = NATS_OK;
                complete = true;
                break;
            }
            if (st != NATS_OK)
                break;
            gs = header_u64(m, "Nats-Sequence");
            if (gs == 0 || gs >= j->covered) {
                natsMsg_Destroy(m);
                complete = true;
                break;
            }
            if (!got_append(&win, &wn, &wcap, m, gs)) {
                natsMsg_Destroy(m);
                st = NATS_NO_MEMORY;
                break;
            }
            seq = gs + 1;
        }
        if (complete && st == NATS_OK && wn > 0) {
            got *all = realloc(win, (wn + j->n) * sizeof(got));
            if (all == NULL) {
                complete = false;
                st = NATS_NO_MEMORY;
            } else {
                win = all;
                if (j->n > 0)
                    memcpy(win + wn, j->msgs, j->n * sizeof(got));
                free(j->msgs);
                j->msgs = win;
                j->n += wn;
                win = NULL;
                wn = 0;
            }
        }
        for (size_t i = 0; i < wn; i++)
            natsMsg_Destroy(win[i].msg);
        free(win);
        if (!complete)
            break;
        j->covered = start;
        w *= 4;
    }
    /* Not every event below covered was read: is there any? (one get) */
    if (st == NATS_OK && j->covered > 1 && (int64_t)j->n <= j->limit) {
        natsMsg *m = NULL;
        st = next_by_subject(j->s, j->out, 1, &m);
        if (st == NATS_NOT_FOUND || (st == NATS_OK && header_u64(m, "Nats-Sequence") >= j->covered))
            j->covered = 1;
        if (st == NATS_NOT_FOUND)
            st = NATS_OK;
        natsMsg_Destroy(m);
    }
    return st;
}

static void read_result_run(void *arg);

static void read_io(void *arg)
{
    read_job *j = arg;
    gw_server *s = j->s;
    natsStatus st = NATS_OK;

    switch (j->kind) {
    case READ_HEAD:
        st = last_seq_io(s, j->out, &j->head);
        break;
    case READ_JOIN: {
        kvWatcher *w = NULL;
        kvWatchOptions wo;
        char filter[SL_SUBJECT_MAX];
        st = last_seq_io(s, j->out, &j->head);
        j->members = cJSON_CreateArray();
        snprintf(filter, sizeof(filter), "%s.%s.*", j->tenant, j->room);
        kvWatchOptions_Init(&wo);
        wo.IgnoreDeletes = true;
        if (s->kv_presence != NULL && kvStore_Watch(&w, s->kv_presence, filter, &wo) == NATS_OK) {
            /* A large room's list is cut: reading every member on every
             * join would make a room of N members cost N^2 reads. */
            for (int i = 0;; i++) {
                kvEntry *e = NULL;
                if (kvWatcher_Next(&e, w, 2000) != NATS_OK || e == NULL)
                    break; /* NULL entry: the initial values are done */
                if (i >= JOIN_MEMBERS_MAX) {
                    j->members_truncated = true;
                    kvEntry_Destroy(e);
                    break;
                }
                {
                    const char *key = kvEntry_Key(e);
                    const char *sess = strrchr(key, '.');
                    cJSON *v = cJSON_ParseWithLength(kvEntry_Value(e), (size_t)kvEntry_ValueLen(e));
                    cJSON *u = cJSON_GetObjectItemCaseSensitive(v, "user");
                    if (sess != NULL && cJSON_IsString(u)) {
                        cJSON *mem = cJSON_CreateObject();
                        cJSON_AddStringToObject(mem, "user", u->valuestring);
                        cJSON_AddStringToObject(mem, "session", sess + 1);
                        cJSON_AddItemToArray(j->members, mem);
                    }
                    cJSON_Delete(v);
                }
                kvEntry_Destroy(e);
            }
            kvWatcher_Destroy(w);
        }
        break;
    }
    case READ_FILL:
        if (j->from > 1)
            st = still_stored_io(j, j->from - 1);
        if (st == NATS_OK)
            st = read_forward_io(j, CHAN_PEND_MAX);
        break;
    case READ_REPLAY:
        if (j->check_gap && j->from > 1)
            st = still_stored_io(j, j->from - 1);
        if (st == NATS_OK)
            st = read_forward_io(j, REPLAY_BATCH);
        break;
    case READ_HISTORY:
        st = history_read_io(j);
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
    gw_bridge_post(s->bridge, read_result_run, read_job_free, j);
}

static read_job *read_job_new(gw_server *s, int kind, gw_chan *ch)
{
    read_job *j = calloc(1, sizeof(*j));

    if (j == NULL)
        return NULL;
    j->s = s;
    j->kind = kind;
    snprintf(j->out, sizeof(j->out), "%s", ch->out);
    snprintf(j->live, sizeof(j->live), "%s", ch->live);
    snprintf(j->ch, sizeof(j->ch), "%s", ch->ch);
    snprintf(j->tenant, sizeof(j->tenant), "%s", ch->tenant);
    if (ch->is_room)
        snprintf(j->room, sizeof(j->room), "%s", ch->name);
    return j;
}

static void chan_fill_start(gw_server *s, gw_chan *ch, uint64_t upto, uint64_t last)
{
    read_job *j = read_job_new(s, READ_FILL, ch);

    if (j == NULL)
        return;
    ch->state = CHAN_FILLING;
    j->from = ch->head + 1;
    j->upto = upto;
    j->last = last;
    sl_counter_inc(s->m.gap_fills);
    gw_io_submit(s->io, read_io, j);
}

/* ---------- channels and members ---------- */

static void chan_ready(gw_server *s, gw_chan *ch, uint64_t head);

/* How a new channel learns its head. */
enum chan_head {
    HEAD_READ,    /* a READ_HEAD of its own */
    HEAD_FRESH,   /* none: it cannot have events yet (a new session's) */
    HEAD_BY_JOIN, /* the READ_JOIN of the join that creates it */
};

/* Finds or creates (subscribing to its live subject) a channel; how a new
 * one gets ready is `how`. */
static gw_chan *chan_get_ex(gw_server *s, const char *tenant, bool is_room, const char *name,
                            enum chan_head how)
{
    char live[SL_SUBJECT_MAX], out[SL_SUBJECT_MAX], cname[GW_CH_MAX];
    size_t llive, lout, lch, ltenant, lname;
    gw_chan *ch;
    char *p;
    read_job *j;

    if (sl_subject_chan(live, sizeof(live), "sluice.live", tenant, is_room, name) != SL_OK ||
        sl_subject_chan(out, sizeof(out), "sluice.out", tenant, is_room, name) != SL_OK)
        return NULL;
    ch = gw_map_get(s->chans, live);
    if (ch != NULL)
        return ch;
    snprintf(cname, sizeof(cname), is_room ? "r:%s" : "s", name);
    llive = strlen(live) + 1;
    lout = strlen(out) + 1;
    lch = strlen(cname) + 1;
    ltenant = strlen(tenant) + 1;
    lname = strlen(name) + 1;
    ch = calloc(1, sizeof(*ch) + llive + lout + lch + ltenant + lname);
    if (ch == NULL)
        return NULL;
    p = ch->strs;
    ch->live = memcpy(p, live, llive);
    ch->out = memcpy(p += llive, out, lout);
    ch->ch = memcpy(p += lout, cname, lch);
    ch->tenant = memcpy(p += lch, tenant, ltenant);
    ch->name = memcpy(p += ltenant, name, lname);
    ch->is_room = is_room;
    ch->state = CHAN_INIT;
    if (natsConnection_Subscribe(&ch->sub, sl_bus_nc(s->bus), live, on_live_cb, s) != NATS_OK ||
        gw_map_put(s->chans, live, ch) != SL_OK) {
        natsSubscription_Destroy(ch->sub);
        free(ch);
        return NULL;
    }
    natsSubscription_SetPendingLimits(ch->sub, 100000, 256 * 1024 * 1024);
    if (how == HEAD_FRESH) {
        chan_ready(s, ch, 0);
        return ch;
    }
    /* A join's own head read makes its channel ready: with a second read
     * the two could fall on either side of the join's presence event, and
     * the new member would start with a replay (which never cuts a client
     * that stops reading: a stopped member of a flooded room was then not
     * closed with 4429). */
    if (how == HEAD_BY_JOIN)
        return ch;
    j = read_job_new(s, READ_HEAD, ch);
    if (j != NULL)
        gw_io_submit(s->io, read_io, j);
    return ch;
}

static gw_chan *chan_get(gw_server *s, const char *tenant, bool is_room, const char *name)
{
    return chan_get_ex(s, tenant, is_room, name, HEAD_READ);
}

/* Frees what a channel owns and the channel itself (not its map entry). */
static void chan_destroy(gw_chan *ch)
{
    natsSubscription_Destroy(ch->sub);
    while (ch->pend_head != NULL) {
        pend *p = ch->pend_head;
        ch->pend_head = p->next;
        pend_free(p);
    }
    cache_clear(ch);
    cJSON_Delete(ch->presence);
    gw_map_destroy(ch->presence_idx);
    free(ch->members_json);
    free(ch);
}

/* History reads in flight per tenant and per connection: a request over
 * either bound is answered busy (history_busy), so one tenant's flood
 * takes at most HISTORY_TENANT_MAX of the gateway's bulk reads. */
static bool history_acquire(gw_server *s, gw_conn *c)
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
static void history_release(gw_server *s, const char *tenant, gw_conn *c)
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
    gw_map_del(s->chans, ch->live);
    natsSubscription_Unsubscribe(ch->sub);
    chan_destroy(ch);
}

/* Called when a member leaves: an empty channel with a cache is kept for
 * CHAN_LINGER_MS (members resuming here find its cache), else freed. */
static void chan_release(gw_server *s, gw_chan *ch)
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
static void chans_expire(gw_server *s)
{
    int64_t now = now_ms();

    for (int n = 0; n < 1024 && s->idle_head != NULL; n++) {
        gw_chan *ch = s->idle_head;
        if (now - ch->idle_since_ms < CHAN_LINGER_MS)
            break;
        chan_free(s, ch);
    }
}

static gw_member *member_find(gw_conn *c, const char *chname)
{
    for (gw_member *m = c->members; m != NULL; m = m->next) {
        if (strcmp(m->chan->ch, chname) == 0)
            return m;
    }
    return NULL;
}

static gw_member *member_add(gw_server *s, gw_conn *c, gw_chan *ch, uint64_t delivered,
                             bool replaying)
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

static void member_remove(gw_server *s, gw_member *m)
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
    member_pend_clear(m);
    free(m);
    chan_release(s, ch);
}

/* Ends a member's replay: sends what was buffered meanwhile. */
static void member_go_live(gw_server *s, gw_member *m)
{
    pend *p = m->pend_head;

    m->pend_head = m->pend_tail = NULL;
    m->npend = 0;
    m->replaying = false;
    while (p != NULL) {
        pend *next = p->next;
        member_offer(s, m, p->seq, p->buf, p->sender_session, p->message_id);
        pend_free(p);
        p = next;
    }
}

/* Replayed events take at most half of the outbound bounds, so that a
 * resuming client is paced by its own reading instead of being cut (4429)
 * by the size of a replay batch; the other half is for live traffic. */
static bool replay_has_room(gw_server *s, gw_conn *c, size_t len)
{
    return c->q.frames == 0 || (c->q.frames + 1 <= (size_t)s->cfg->outq_max_frames / 2 &&
                                c->q.bytes + len <= (size_t)s->cfg->outq_max_bytes / 2);
}

/* True when the events a member buffered during its replay fit in the
 * replay share of the outbound queue. */
static bool member_pend_fits(gw_server *s, gw_member *m)
{
    size_t bytes = 0;

    for (pend *p = m->pend_head; p != NULL; p = p->next)
        bytes += p->buf->len;
    return m->npend == 0 ||
           (m->conn->q.frames + (size_t)m->npend <= (size_t)s->cfg->outq_max_frames / 2 &&
            m->conn->q.bytes + bytes <= (size_t)s->cfg->outq_max_bytes / 2);
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
        if (!replay_has_room(s, c, e->buf->len)) {
            m->replay_paused = true; /* continues when the client has read */
            return true;
        }
        m->delivered = e->seq;
        conn_send_buf(s, c, e->buf);
        if (ch->is_room && e->sender_session[0] != '\0' &&
            strcmp(e->sender_session, c->session) != 0)
            receipt_track(c, ch->ch, e->seq, e->sender_session, e->message_id);
    }
    if (c->close_code == 0)
        member_go_live(s, m);
    return true;
}

static void replay_submit(gw_server *s, gw_conn *c, gw_member *m, bool check_gap)
{
    read_job *j;

    sl_counter_inc(s->m.replays);
    if (replay_from_cache(s, c, m)) {
        sl_counter_inc(s->m.replays_cached);
        return;
    }
    j = read_job_new(s, READ_REPLAY, m->chan);

    if (j == NULL) {
        conn_close(c, 1011, "out of memory", true);
        return;
    }
    snprintf(j->session, sizeof(j->session), "%s", c->session);
    j->member_gen = m->gen;
    j->from = m->delivered + 1;
    j->check_gap = check_gap;
    j->after_ready = m->chan->state != CHAN_INIT;
    gw_io_submit(s->io, read_io, j);
}

/* ---------- results of stream reads ---------- */

/* Tells the channel's live members that events in (from, to) are missing:
 * the stream no longer has them. Members still replaying read the stream
 * themselves. */
static void chan_gap(gw_server *s, gw_chan *ch, uint64_t from, uint64_t to)
{
    gw_buf *b = gw_buf_from(gw_frame_gap(ch->ch, (int64_t)from, (int64_t)to));

    sl_warn("channel %s: events in (%llu, %llu) are no longer in the stream", ch->out,
            (unsigned long long)from, (unsigned long long)to);
    sl_counter_inc(s->m.fill_gaps);
    if (b == NULL)
        return;
    for (gw_member *m = ch->members; m != NULL; m = m->cnext) {
        if (!m->replaying && m->delivered < to)
            conn_send_buf(s, m->conn, b);
    }
    gw_buf_unref(b);
}

/* Makes a channel ready at head. The live events it buffered meanwhile at
 * or below head are dropped (they are in the stream), so a member that went
 * live below head first replays up to it; a member still replaying checks
 * at the end of its replay (read_result_run). Without this, events stored
 * while a channel waited for its head never reach members that resumed or
 * said hello in that window. */
static void chan_ready(gw_server *s, gw_chan *ch, uint64_t head)
{
    ch->head = head;
    ch->ready_head = head;
    ch->state = CHAN_READY;
    cache_start(s, ch);
    for (gw_member *m = ch->members; m != NULL; m = m->cnext) {
        if (!m->replaying && m->delivered < head) {
            m->replaying = true;
            replay_submit(s, m->conn, m, false);
        }
    }
    chan_process_pending(s, ch);
}

/* Answers a history request: the newest events found, at most `limit`,
 * and at most half of the outbound bound in bytes (the other half is for
 * live traffic), so a page never cuts its reader with 4429. Older events
 * are announced with more:true and next_before. */
static void history_done(gw_server *s, read_job *j, gw_conn *c)
{
    size_t lo = j->n > (size_t)j->limit ? j->n - (size_t)j->limit : 0, k = 0, cut = j->n;
    size_t max = (size_t)s->cfg->outq_max_bytes, budget = max / 2;
    size_t used = 128 + strlen(j->ch) + strlen(j->id);
    const char *id = j->id[0] != '\0' ? j->id : NULL;
    char **events = NULL;
    bool more, full = false;

    history_release(s, j->tenant, c);
    if (c == NULL || c->close_code != 0)
        return;
    if (j->head == UINT64_MAX) {
        conn_error(s, c, "internal", "history read failed; retry", id);
        return;
    }
    if (c->q.bytes + budget > max)
        budget = max > c->q.bytes ? max - c->q.bytes : 0;
    events = calloc(j->n - lo + 1, sizeof(char *));
    if (events == NULL) {
        conn_error(s, c, "internal", "out of memory; retry", id);
        return;
    }
    for (size_t i = j->n; i > lo; i--) {
        Sluice__Envelope *e = NULL;
        char *ev;
        size_t len;
        if (sl_envelope_decode(natsMsg_GetData(j->msgs[i - 1].msg),
                               (size_t)natsMsg_GetDataLength(j->msgs[i - 1].msg), &e) != SL_OK) {
            cut = i - 1; /* not an event: skipped, like live delivery does */
            continue;
        }
        ev = gw_frame_event(e, j->ch, j->msgs[i - 1].seq);
        sl_envelope_free(e);
        len = ev != NULL ? strlen(ev) + 1 : 0;
        /* One event larger than the page still goes alone when the queue
         * can take it; otherwise the client is asked to read first. */
        if (ev == NULL || (used + len > budget && (k > 0 || c->q.bytes + used + len > max))) {
            free(ev);
            full = true;
            break;
        }
        events[k++] = ev;
        used += len;
        cut = i - 1;
    }
    if (k == 0 && full) {
        conn_busy(s, c, id, "history_busy", HISTORY_RETRY_MS);
        free(events);
        return;
    }
    for (size_t a = 0, b = k; a + 1 < b; a++, b--) { /* newest first -> stream order */
        char *t = events[a];
        events[a] = events[b - 1];
        events[b - 1] = t;
    }
    /* Events below msgs[cut] (found, or not read yet below covered) are
     * the next page's. */
    more = cut > 0 || j->covered > 1;
    conn_send_text(s, c,
                   gw_frame_history(j->ch, events, k, more,
                                    (int64_t)(cut < j->n ? j->msgs[cut].seq : j->covered), id));
    for (size_t i = 0; i < k; i++)
        free(events[i]);
    free(events);
}

/* Answers member m's join with the result of the room's join read j:
 * the member starts at the head read, with the room's member list. */
static void join_answer(gw_server *s, gw_chan *ch, gw_member *m, read_job *j)
{
    gw_conn *c = m->conn;

    m->join_wait = false;
    m->delivered = j->head;
    if (ch->presence != NULL) {
        /* The store read may have run before this member's own presence
         * write landed: the snapshot always holds every local member, so
         * the next join served from memory lists it, and this joiner
         * sees itself as on the fast path. */
        presence_snap_set(ch, c->session, c->sub);
        conn_send_text(s, c, presence_joined_frame(ch, j->head));
    } else {
        conn_send_text(
            s, c,
            gw_frame_joined(ch->name, j->head,
                            j->members != NULL ? cJSON_Duplicate(j->members, true) : NULL,
                            j->members_truncated));
    }
    acked_set(c, ch->ch, (int64_t)j->head, true);
    if (m->delivered < ch->ready_head || m->pend_overflow) {
        /* The channel dropped events above the join point, or more came
         * meanwhile than the member buffers: read them from the stream. */
        m->pend_overflow = false;
        replay_submit(s, c, m, false);
    } else {
        member_go_live(s, m);
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
            conn_error(s, c, "internal", "cannot join now; retry", NULL);
            member_remove(s, w);
        }
    }
}

static void read_result_run(void *arg)
{
    read_job *j = arg;
    gw_server *s = j->s;
    gw_chan *ch = gw_map_get(s->chans, j->live);
    gw_conn *c = j->session[0] ? gw_map_get(s->sessions, j->session) : NULL;
    gw_member *m = (c != NULL && ch != NULL) ? member_find(c, j->ch) : NULL;
    bool failed = j->head == UINT64_MAX;

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
            read_job *again = read_job_new(s, kind, ch);
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
                gw_io_submit(s->io, read_io, again);
            }
        }
        read_job_free(j);
        return;
    }
    switch (j->kind) {
    case READ_HEAD:
        if (ch != NULL && ch->state == CHAN_INIT)
            chan_ready(s, ch, j->head);
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
                chan_deliver(s, ch, j->msgs[i].seq, natsMsg_GetData(j->msgs[i].msg),
                             (size_t)natsMsg_GetDataLength(j->msgs[i].msg));
        }
        /* What is not in the stream below `upto` any more is gone for good. */
        if (!j->more && j->upto > 0 && j->upto - 1 > ch->head) {
            if (j->last > ch->head)
                chan_gap(s, ch, ch->head, j->upto);
            ch->head = j->upto - 1;
        }
        ch->state = CHAN_READY;
        chan_process_pending(s, ch);
        break;
    }
    case READ_JOIN:
        if (ch == NULL)
            break;
        ch->join_reading = false;
        if (ch->state == CHAN_INIT)
            chan_ready(s, ch, j->head); /* even when the joiner is gone: others wait for it */
        if (ch->presence == NULL && j->members != NULL) {
            cJSON *it;
            if (presence_snap_init(ch))
                ch->presence_truncated = j->members_truncated;
            cJSON_ArrayForEach(it, j->members)
            {
                const char *u = json_str(it, "user"), *ss = json_str(it, "session");
                if (u != NULL && ss != NULL)
                    presence_snap_set(ch, ss, u);
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
            if (to > 0) {
                conn_send_text(s, c, gw_frame_gap(ch->ch, (int64_t)m->delivered, (int64_t)to));
                sl_counter_inc(s->m.resumes_gap);
            }
        }
        for (size_t i = 0; i < j->n && c->close_code == 0; i++) {
            gw_buf *b;
            if (j->msgs[i].seq <= m->delivered)
                continue;
            b = frame_of(natsMsg_GetData(j->msgs[i].msg),
                         (size_t)natsMsg_GetDataLength(j->msgs[i].msg), ch->ch, j->msgs[i].seq,
                         sender, msgid, NULL);
            if (b != NULL && !replay_has_room(s, c, b->len)) {
                /* The rest is read again once the client has caught up. */
                gw_buf_unref(b);
                m->replay_paused = true;
                break;
            }
            m->delivered = j->msgs[i].seq;
            if (b != NULL) {
                conn_send_buf(s, c, b);
                gw_buf_unref(b);
            }
        }
        if (c->close_code != 0 || m->replay_paused)
            break;
        if (j->more || m->pend_overflow || !member_pend_fits(s, m) ||
            (!j->after_ready && ch->state != CHAN_INIT && m->delivered < ch->ready_head)) {
            m->pend_overflow = false;
            if (!j->more)
                member_pend_clear(m); /* all in the stream: the next round reads them */
            replay_submit(s, c, m, false);
        } else {
            member_go_live(s, m);
        }
        break;
    }
    case READ_HISTORY:
        history_done(s, j, c);
        break;
    }
    read_job_free(j);
}

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
        conn_send_text(
            s, c,
            gw_frame_accepted(id, a->duplicate && a->event[0] ? a->event : p->event, a->duplicate));
    } else {
        conn_busy(s, c, id, "overloaded", 1000);
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

static void on_pub_ack_cb(jsCtx *js, natsMsg *msg, jsPubAck *pa, jsPubAckErr *pae, void *closure)
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

static bool conn_room_allowed(const gw_conn *c, const char *room)
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

static void cmd_send(gw_server *s, gw_conn *c, const gw_cmd *cmd)
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
        conn_busy(s, c, cmd->id, "draining", 1000);
        return;
    }
    if (cmd->room != NULL) {
        snprintf(rch, sizeof(rch), "r:%s", cmd->room);
        if (member_find(c, rch) == NULL) {
            conn_error(s, c, "not_joined", "join the room before sending to it", cmd->id);
            return;
        }
    }
    if (c->nsends >= SEND_INFLIGHT || !sl_bus_connected(s->bus)) {
        conn_busy(s, c, cmd->id, "overloaded", 1000);
        return;
    }
    if (sl_subject_in(subj, sizeof(subj), c->tenant, c->session) != SL_OK)
        return;
    fill_header(c, &e, event_id);
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
        conn_busy(s, c, cmd->id, "overloaded", 1000);
        goto cleanup;
    }
    jsPubOptions_Init(&po);
    po.MaxWait = s->cfg->publish_timeout_ms; /* then the ack handler reports a timeout */
    if (js_PublishMsgAsync(s->js_in, &m, &po) != NATS_OK) {
        conn_busy(s, c, cmd->id, "overloaded", 1000);
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

static void cmd_join(gw_server *s, gw_conn *c, const gw_cmd *cmd)
{
    char rch[GW_CH_MAX];
    gw_chan *ch;
    gw_member *m;
    read_job *j;

    if (!conn_room_allowed(c, cmd->room)) {
        conn_error(s, c, "forbidden", "your token does not allow this room", cmd->id);
        return;
    }
    snprintf(rch, sizeof(rch), "r:%s", cmd->room);
    m = member_find(c, rch);
    if (m != NULL) {
        conn_send_text(s, c, gw_frame_joined(cmd->room, m->delivered, NULL, false));
        return;
    }
    if (c->nrooms >= s->cfg->max_rooms) {
        /* Checked before anything is touched: no subscription, presence or
         * position for a refused join. */
        conn_error(s, c, "too_many_rooms", "this connection is in SLUICE_MAX_ROOMS rooms already",
                   cmd->id);
        return;
    }
    ch = chan_get_ex(s, c->tenant, true, cmd->room, HEAD_BY_JOIN);
    if (ch != NULL && ch->state == CHAN_READY && ch->presence != NULL) {
        /* The room is live on this gateway: join from memory, no NATS. */
        m = member_add(s, c, ch, ch->head, false);
        if (m == NULL) {
            chan_release(s, ch);
            conn_error(s, c, "internal", "cannot join now; retry", cmd->id);
            return;
        }
        presence_snap_set(ch, c->session, c->sub);
        conn_send_text(s, c, presence_joined_frame(ch, ch->head));
        acked_set(c, ch->ch, (int64_t)ch->head, true);
        sl_counter_inc(s->m.joins_local);
        presence_put(s, c, cmd->room, true);
        publish_presence(s, c, cmd->room, "join");
        return;
    }
    if (ch != NULL && ch->join_reading) {
        /* The room's head and members are being read for an earlier join:
         * this one is answered with the same result, no read of its own. */
        m = member_add(s, c, ch, 0, true);
        if (m == NULL) {
            chan_release(s, ch);
            conn_error(s, c, "internal", "cannot join now; retry", cmd->id);
            return;
        }
        m->join_wait = true;
        sl_counter_inc(s->m.joins_local);
        presence_put(s, c, cmd->room, true);
        publish_presence(s, c, cmd->room, "join");
        return;
    }
    if (ch == NULL || (m = member_add(s, c, ch, 0, true)) == NULL ||
        (j = read_job_new(s, READ_JOIN, ch)) == NULL) {
        if (ch != NULL && m != NULL)
            member_remove(s, m);
        else if (ch != NULL)
            chan_release(s, ch);
        conn_error(s, c, "internal", "cannot join now; retry", cmd->id);
        return;
    }
    snprintf(j->session, sizeof(j->session), "%s", c->session);
    j->member_gen = m->gen;
    ch->join_reading = true;
    sl_counter_inc(s->m.join_reads);
    gw_io_submit(s->io, read_io, j);
    presence_put(s, c, cmd->room, true);
    publish_presence(s, c, cmd->room, "join");
}

static void cmd_leave(gw_server *s, gw_conn *c, const gw_cmd *cmd)
{
    char rch[GW_CH_MAX];
    gw_member *m;

    snprintf(rch, sizeof(rch), "r:%s", cmd->room);
    m = member_find(c, rch);
    if (m == NULL) {
        conn_error(s, c, "not_joined", "not in this room", cmd->id);
        return;
    }
    presence_snap_del(m->chan, c->session);
    member_remove(s, m);
    presence_put(s, c, cmd->room, false);
    publish_presence(s, c, cmd->room, "leave");
    acked_remove(c, rch);
    conn_send_text(s, c, gw_frame_left(cmd->room));
}

static void cmd_ack(gw_server *s, gw_conn *c, const gw_cmd *cmd)
{
    int keep = 0;

    if (member_find(c, cmd->ch) == NULL) {
        conn_error(s, c, "not_joined", "not subscribed to this channel", NULL);
        return;
    }
    acked_set(c, cmd->ch, cmd->seq, false);
    for (int i = 0; i < c->nreceipts; i++) {
        receipt *r = &c->receipts[i];
        if (strcmp(r->ch, cmd->ch) == 0 && r->seq <= (uint64_t)cmd->seq) {
            Sluice__Envelope e = SLUICE__ENVELOPE__INIT;
            Sluice__Receipt body = SLUICE__RECEIPT__INIT;
            char event_id[SL_EVENT_ID_LEN + 1], subj[SL_SUBJECT_MAX], msgid[SL_EVENT_ID_LEN + 4];
            if (sl_subject_chan(subj, sizeof(subj), "sluice.out", c->tenant, false,
                                r->sender_session) == SL_OK) {
                fill_header(c, &e, event_id);
                e.message_id = r->message_id;
                body.to = r->message_id;
                body.user = c->sub;
                body.state = "delivered";
                e.body_case = SLUICE__ENVELOPE__BODY_RECEIPT;
                e.receipt = &body;
                snprintf(msgid, sizeof(msgid), "rc:%s", event_id);
                publish_out_async(s, subj, &e, msgid);
            }
        } else {
            c->receipts[keep++] = *r;
        }
    }
    c->nreceipts = keep;
}

static void cmd_cancel(gw_server *s, gw_conn *c, const gw_cmd *cmd)
{
    Sluice__Envelope e = SLUICE__ENVELOPE__INIT;
    Sluice__Cancel body = SLUICE__CANCEL__INIT;
    char event_id[SL_EVENT_ID_LEN + 1], subj[SL_SUBJECT_MAX];
    uint8_t *data = NULL;
    size_t len = 0;

    if (sl_subject_cancel(subj, sizeof(subj), c->tenant) != SL_OK)
        return;
    fill_header(c, &e, event_id);
    e.client_id = (char *)cmd->id;
    e.message_id = (char *)cmd->id;
    body.message_id = (char *)cmd->id;
    body.user = c->sub;
    e.body_case = SLUICE__ENVELOPE__BODY_CANCEL;
    e.cancel = &body;
    if (sl_envelope_encode(&e, &data, &len) == SL_OK &&
        natsConnection_Publish(sl_bus_nc(s->bus), subj, data, (int)len) != NATS_OK)
        conn_busy(s, c, cmd->id, "overloaded", 1000);
    free(data);
}

static void cmd_history(gw_server *s, gw_conn *c, const gw_cmd *cmd)
{
    bool is_room;
    const char *room;
    char live[SL_SUBJECT_MAX], out[SL_SUBJECT_MAX];
    char name[SL_ID_MAX + 1], tenant[SL_ID_MAX + 1], chname[GW_CH_MAX];
    gw_chan tmp;
    read_job *j;

    sl_channel_parse(cmd->ch, &is_room, &room);
    if (is_room && !conn_room_allowed(c, room)) {
        conn_error(s, c, "forbidden", "your token does not allow this room", cmd->id);
        return;
    }
    memset(&tmp, 0, sizeof(tmp));
    tmp.is_room = is_room;
    snprintf(name, sizeof(name), "%s", is_room ? room : c->session);
    snprintf(tenant, sizeof(tenant), "%s", c->tenant);
    snprintf(chname, sizeof(chname), "%s", cmd->ch);
    sl_subject_chan(out, sizeof(out), "sluice.out", c->tenant, is_room, name);
    sl_subject_chan(live, sizeof(live), "sluice.live", c->tenant, is_room, name);
    tmp.name = name;
    tmp.tenant = tenant;
    tmp.ch = chname;
    tmp.out = out;
    tmp.live = live;
    if (!history_acquire(s, c)) {
        conn_busy(s, c, cmd->id, "history_busy", HISTORY_RETRY_MS);
        return;
    }
    j = read_job_new(s, READ_HISTORY, &tmp);
    if (j == NULL) {
        history_release(s, c->tenant, c);
        conn_error(s, c, "internal", "out of memory; retry", cmd->id);
        return;
    }
    snprintf(j->session, sizeof(j->session), "%s", c->session);
    snprintf(j->id, sizeof(j->id), "%s", cmd->id != NULL ? cmd->id : "");
    j->before = (uint64_t)cmd->before;
    j->limit = cmd->limit;
    /* Bulk work: runs after joins, resumes and fills, never on every io
     * thread at once. */
    gw_io_submit_bulk(s->io, read_io, j);
}

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
        if (is_room && !conn_room_allowed(c, room))
            continue; /* the new token no longer allows it */
        if (member_find(c, pos[i].ch) != NULL)
            continue;
        if (is_room && c->nrooms >= s->cfg->max_rooms)
            continue; /* as a join past the bound would be refused */
        ch = chan_get(s, c->tenant, is_room, is_room ? room : c->session);
        if (ch == NULL || (m = member_add(s, c, ch, (uint64_t)pos[i].seq, true)) == NULL) {
            if (ch != NULL)
                chan_release(s, ch);
            continue;
        }
        have_s = have_s || !is_room;
        acked_set(c, pos[i].ch, pos[i].seq, true);
        replay_submit(s, c, m, pos[i].seq > 0);
        if (is_room) {
            presence_put(s, c, room, true);
            publish_presence(s, c, room, "join");
        }
    }
    if (!have_s) {
        gw_chan *ch = chan_get(s, c->tenant, false, c->session);
        gw_member *m = ch ? member_add(s, c, ch, 0, true) : NULL;
        if (m != NULL)
            replay_submit(s, c, m, false);
        else if (ch != NULL)
            chan_release(s, ch);
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
        snprintf(c->last_id, sizeof(c->last_id), "%s", j->prev);
        lws_rx_flow_control(c->wsi, 1); /* held since the hello: sends may use it now */
    }
    if (c != NULL && pos != NULL && j->attach) {
        cJSON_ArrayForEach(it, o)
        {
            if (n < cap && it->string != NULL && cJSON_IsNumber(it) && it->valuedouble >= 0) {
                snprintf(pos[n].ch, GW_CH_MAX, "%s", it->string);
                pos[n].seq = (int64_t)it->valuedouble;
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
    const char *v = json_str(root, key);

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

static void conn_detach(gw_server *s, gw_conn *c, const char *presence_action);

static void cmd_hello(gw_server *s, gw_conn *c, const gw_cmd *cmd)
{
    sl_claims *cl = calloc(1, sizeof(*cl));
    char why[128], sub_rt[SL_SUB_MAX + 1];
    char *rt = NULL;
    int64_t now = (int64_t)time(NULL);
    bool have_prev = false;
    sl_status st;

    if (cl == NULL) {
        conn_close(c, 1011, "out of memory", false);
        return;
    }
    st = sl_auth_verify(s->auth, cmd->token, now, cl, why, sizeof(why));
    if (st != SL_OK) {
        conn_error(s, c, "unauthorized", why, NULL);
        conn_close(c, 4401, st == SL_ERR_EXPIRED ? "token expired" : "bad token", true);
        goto cleanup;
    }
    if (cmd->resume) {
        if (sl_resume_token_verify(s->resume_secret, cmd->resume_token, cl->tenant,
                                   cmd->resume_session, now, sub_rt) != SL_OK ||
            strcmp(sub_rt, cl->sub) != 0) {
            conn_error(s, c, "unauthorized", "bad resume token", NULL);
            conn_close(c, 4401, "bad resume token", true);
            goto cleanup;
        }
        {
            gw_conn *old = gw_map_get(s->sessions, cmd->resume_session);
            if (old != NULL && old != c) {
                snprintf(c->last_id, sizeof(c->last_id), "%s", old->last_id);
                have_prev = true;
                conn_detach(s, old, NULL);
                conn_close(old, 1000, "session resumed elsewhere", false);
            }
        }
        snprintf(c->session, sizeof(c->session), "%s", cmd->resume_session);
    } else {
        sl_session_id_new(c->session);
    }
    snprintf(c->tenant, sizeof(c->tenant), "%s", cl->tenant);
    c->sub = strdup(cl->sub);
    c->rooms_any = cl->nrooms < 0;
    if (!c->rooms_any) {
        size_t len = 1;
        for (int i = 0; i < cl->nrooms; i++)
            len += strlen(cl->rooms[i]) + 1;
        c->rooms = calloc(1, len + 1);
        if (c->rooms != NULL) {
            char *p = c->rooms;
            for (int i = 0; i < cl->nrooms; i++)
                p = stpcpy(p, cl->rooms[i]) + 1;
        }
    }
    if (c->sub == NULL || (!c->rooms_any && c->rooms == NULL) ||
        gw_map_put(s->sessions, c->session, c) != SL_OK ||
        sl_resume_token_make(s->resume_secret, c->tenant, c->session, c->sub,
                             now + s->cfg->common.resume_window_s, &rt) != SL_OK) {
        gw_map_del(s->sessions, c->session);
        c->session[0] = '\0';
        conn_close(c, 1011, "out of memory", false);
        goto cleanup;
    }
    c->state = CONN_READY;
    conn_send_text(s, c,
                   gw_frame_welcome(c->session, rt, s->cfg->heartbeat_ms, cmd->resume,
                                    s->cfg->max_frame, (double)s->cfg->rate,
                                    (double)s->cfg->burst));
    if (!cmd->resume) {
        /* A new session id is random: nothing can be on its channel yet. */
        gw_chan *ch = chan_get_ex(s, c->tenant, false, c->session, HEAD_FRESH);
        if (ch == NULL || member_add(s, c, ch, 0, false) == NULL) {
            if (ch != NULL)
                chan_release(s, ch);
            conn_close(c, 1011, "cannot subscribe", true);
        }
        goto cleanup;
    }
    sl_counter_inc(s->m.resumes_ok);
    if (cmd->has_positions)
        resume_attach(s, c, cmd->positions, cmd->npositions);
    if (!cmd->has_positions || !have_prev) {
        resume_job *j = calloc(1, sizeof(*j));
        if (j == NULL) {
            conn_close(c, 1011, "out of memory", false);
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
        if (m->chan->is_room && presence_action != NULL) {
            char room[SL_ID_MAX + 1];
            snprintf(room, sizeof(room), "%s", m->chan->name);
            presence_snap_del(m->chan, c->session);
            member_remove(s, m);
            presence_put(s, c, room, false);
            publish_presence(s, c, room, presence_action);
        } else {
            member_remove(s, m);
        }
    }
    if (c->session[0] != '\0') {
        if (c->acked_dirty)
            positions_flush(s, c);
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

static void conn_free(gw_server *s, gw_conn *c)
{
    conn_detach(s, c, "disconnect");
    gw_outq_clear(&c->q);
    free(c->rx);
    free(c->sub);
    free(c->rooms);
    free(c->acked);
    free(c->receipts);
    c->rx = c->sub = c->rooms = NULL;
    c->acked = NULL;
    c->receipts = NULL;
    if (c->all_prev != NULL)
        c->all_prev->all_next = c->all_next;
    else if (s->all == c)
        s->all = c->all_next;
    if (c->all_next != NULL)
        c->all_next->all_prev = c->all_prev;
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
            conn_error(s, c, err.code, err.message, NULL);
            conn_close(c, strcmp(err.code, "unauthorized") == 0 ? 4401 : 4400, "bad hello", true);
            return;
        }
        conn_error(s, c, err.code, err.message, err.id[0] ? err.id : NULL);
        return;
    }
    if (c->state == CONN_AWAIT_HELLO) {
        if (cmd.type != GW_CMD_HELLO) {
            conn_error(s, c, "unauthorized", "the first frame must be hello", NULL);
            conn_close(c, 4400, "hello first", true);
        } else {
            cmd_hello(s, c, &cmd);
        }
        goto cleanup;
    }
    if (c->state != CONN_READY)
        goto cleanup;
    if (cmd.type == GW_CMD_HELLO) {
        conn_error(s, c, "bad_frame", "already said hello", NULL);
        goto cleanup;
    }
    if (cmd.type != GW_CMD_PING && cmd.type != GW_CMD_ACK && !gw_bucket_take(&c->bucket, now)) {
        conn_busy(s, c, cmd.id, "rate_limited", gw_bucket_retry_ms(&c->bucket, now));
        goto cleanup;
    }
    switch (cmd.type) {
    case GW_CMD_SEND:
        cmd_send(s, c, &cmd);
        break;
    case GW_CMD_JOIN:
        cmd_join(s, c, &cmd);
        break;
    case GW_CMD_LEAVE:
        cmd_leave(s, c, &cmd);
        break;
    case GW_CMD_ACK:
        cmd_ack(s, c, &cmd);
        break;
    case GW_CMD_CANCEL:
        cmd_cancel(s, c, &cmd);
        break;
    case GW_CMD_HISTORY:
        cmd_history(s, c, &cmd);
        break;
    case GW_CMD_PING:
        conn_send_text(s, c, gw_frame_pong());
        break;
    case GW_CMD_HELLO:
        break;
    }
cleanup:
    gw_cmd_free(&cmd);
}

/* Collects a message's fragments; framing faults close the connection. */
static void on_receive(gw_server *s, gw_conn *c, const char *in, size_t len)
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
            if (!gw_utf8_valid((const unsigned char *)in, len)) {
                conn_error(s, c, "bad_frame", "invalid UTF-8", NULL);
                conn_close(c, 1007, "invalid utf-8", true);
                return;
            }
            handle_frame(s, c, in, len);
            return;
        } else {
            char *nb = realloc(c->rx, c->rxlen + len + 1);
            if (nb == NULL) {
                conn_close(c, 1011, "out of memory", false);
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
        conn_error(s, c, "bad_frame", "binary frames are not accepted", NULL);
        conn_close(c, 1003, "binary frame", true);
    } else if (c->rx_oversize) {
        conn_error(s, c, "too_large", "frame over the limit", NULL);
        conn_close(c, 1009, "frame too large", true);
    } else if (!gw_utf8_valid((const unsigned char *)c->rx, c->rxlen)) {
        conn_error(s, c, "bad_frame", "invalid UTF-8", NULL);
        conn_close(c, 1007, "invalid utf-8", true);
    } else {
        handle_frame(s, c, c->rx, c->rxlen);
    }
    free(c->rx);
    c->rx = NULL;
    c->rxlen = 0;
}

static int on_writeable(gw_server *s, gw_conn *c)
{
    unsigned char ctl[LWS_PRE + 8];
    size_t sent = 0;
    gw_buf *b;

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
    /* Several frames per write: framed here (unmasked, FIN, text, no RSV:
     * no extension is offered) into wbuf and written raw, which lws 4.1.6
     * hands to lws_issue_raw unframed. What the socket does not take waits
     * in lws's buflist_out, which lws sends before anything else (its own
     * pings, pongs and close frames included) and before the next
     * SERVER_WRITEABLE, so frames never interleave. A lone frame (the next
     * does not fit, or the first is larger than WRITE_BATCH) is written from
     * its own buffer with ordinary framing. */
    while ((b = gw_outq_peek(&c->q)) != NULL) {
        size_t nf = 0, len = gw_outq_encode(&c->q, s->wbuf + LWS_PRE, WRITE_BATCH, &nf);
        int64_t now = sl_now_ns();
        int n;

        if (nf < 2) {
            nf = 1;
            len = b->len;
            n = lws_write(c->wsi, gw_buf_payload(b), len, LWS_WRITE_TEXT);
        } else {
            n = lws_write(c->wsi, s->wbuf + LWS_PRE, len, LWS_WRITE_RAW);
        }
        if (n < 0 || (size_t)n < len)
            return -1;
        sl_counter_inc(s->m.writes);
        sent += len;
        for (size_t i = 0; i < nf; i++) {
            b = gw_outq_peek(&c->q);
            sl_counter_inc(s->m.frames_out);
            sl_counter_add(s->m.bytes_out, b->len);
            if (b->ts_ns > 0)
                sl_hist_observe_ns(s->m.delivery_latency, now - b->ts_ns);
            gw_outq_pop(&c->q);
        }
        /* lws_send_pipe_choked polls the socket: only asked when more wait. */
        if (gw_outq_peek(&c->q) == NULL || sent >= WRITE_ROUND || lws_send_pipe_choked(c->wsi))
            break;
    }
    if (gw_outq_peek(&c->q) != NULL || c->close_code != 0)
        lws_callback_on_writable(c->wsi);
    for (gw_member *m = c->members; m != NULL && c->close_code == 0; m = m->next) {
        if (m->replay_paused && replay_has_room(s, c, 0)) {
            m->replay_paused = false;
            replay_submit(s, c, m, false);
        }
    }
    return 0;
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
            conn_send_text(s, c,
                           gw_frame_reconnect(spread > 0 ? (int64_t)(r % (uint32_t)spread) : 0));
        else
            conn_close(c, 1001, "draining", false);
    }
}

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
    if (c->acked_dirty && now + POSITIONS_FLUSH_MS < due)
        due = now + POSITIONS_FLUSH_MS;
    /* On a grid, so the deadlines of many connections fire in one wake of
     * the loop (and their writes go out together), as the old 250 ms tick
     * did. */
    return (due + CONN_TIMER_SLACK_MS - 1) / CONN_TIMER_SLACK_MS * CONN_TIMER_SLACK_MS;
}

/* (Re)arms c's timer when its next deadline is earlier than the armed one
 * (or none is armed). Cheap to call after anything that may add one. */
static void conn_timer_arm(gw_server *s, gw_conn *c)
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

static void presence_unqueue(gw_server *s, gw_conn *c)
{
    if (!c->pres_queued)
        return;
    if (c->pres_prev != NULL)
        c->pres_prev->pres_next = c->pres_next;
    else
        s->pres_due = c->pres_next;
    if (c->pres_next != NULL)
        c->pres_next->pres_prev = c->pres_prev;
    c->pres_prev = c->pres_next = NULL;
    c->pres_queued = false;
}

/* Refreshes the presence entries of the connections queued since the last
 * tick. */
static void presence_refresh_due(gw_server *s)
{
    while (s->pres_due != NULL) {
        gw_conn *c = s->pres_due;
        presence_unqueue(s, c);
        for (gw_member *m = c->members; m != NULL; m = m->next) {
            if (m->chan->is_room)
                presence_put(s, c, m->chan->name, true);
        }
    }
}

/* One connection's deadlines. Its room presence entries are refreshed
 * with its pings, so the refreshes of a gateway are spread over the
 * heartbeat interval as the connections' pings are (see ESTABLISHED), and
 * written in small batches by on_tick. */
static void conn_timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
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
        conn_error(s, c, "unauthorized", "no hello in time", NULL);
        conn_close(c, 4401, "no hello", true);
        return;
    }
    if (now - c->last_rx_ms > s->cfg->heartbeat_ms * 5 / 2) {
        conn_close(c, 4408, "heartbeat timeout", false);
        return;
    }
    if (now - c->last_ping_ms >= s->cfg->heartbeat_ms) {
        c->last_ping_ms = now;
        c->ping_due = true;
        lws_callback_on_writable(c->wsi);
        if (c->members != NULL && !c->pres_queued) {
            c->pres_queued = true;
            c->pres_prev = NULL;
            c->pres_next = s->pres_due;
            if (s->pres_due != NULL)
                s->pres_due->pres_prev = c;
            s->pres_due = c;
        }
    }
    while (c->sends != NULL && c->sends->deadline_ms < now) {
        pending_send *p = c->sends;
        c->sends = p->next;
        c->nsends--;
        conn_busy(s, c, p->id, "overloaded", 1000);
        free(p);
    }
    if (c->acked_dirty)
        positions_flush(s, c);
    conn_timer_arm(s, c);
}

/* The gateway's own clock: signals, channel expiry, the drain. It visits no
 * connection (conn_timer_cb does their deadlines). */
static void on_tick(lws_sorted_usec_list_t *sul)
{
    gw_server *s = lws_container_of(sul, gw_server, tick);
    int64_t now = now_ms();

    if (*s->stop && !atomic_load(&s->draining))
        start_drain(s);
    presence_refresh_due(s);
    if (now - s->last_expire_ms >= 1000) {
        s->last_expire_ms = now;
        chans_expire(s);
    }
    if (atomic_load(&s->running) && atomic_load(&s->draining) &&
        (s->nconns == 0 || now - s->drain_started_ms >= s->cfg->drain_grace_ms || *s->stop > 1)) {
        for (gw_conn *c = s->all; c != NULL; c = c->all_next)
            conn_close(c, 1001, "gateway shutting down", false);
        atomic_store(&s->running, 0);
        s->closing_since_ms = now;
    }
    if (!atomic_load(&s->running)) {
        /* Let the 1001 closes reach the clients, briefly. */
        if (s->nconns == 0 || now - s->closing_since_ms > 2000 || *s->stop > 1) {
            ev_break(s->loop, EVBREAK_ALL);
            return;
        }
        lws_sul_schedule(s->ctx, 0, &s->tick, on_tick, 20 * LWS_US_PER_MS);
        return;
    }
    lws_sul_schedule(s->ctx, 0, &s->tick, on_tick, 250 * LWS_US_PER_MS);
}

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
        {
            /* The first ping (and presence refresh) comes after a random
             * half to whole heartbeat, so connections opened together
             * (a reconnect storm) do not keep pinging together. */
            uint32_t r;
            sl_random_bytes(&r, sizeof(r));
            c->last_ping_ms = now - (int64_t)(r % (uint32_t)(s->cfg->heartbeat_ms / 2 + 1));
        }
        ev_init(&c->timer, conn_timer_cb);
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
            conn_close(c, 1001, "gateway draining", false);
        } else if (!gw_bucket_take(&s->handshakes, now)) {
            sl_counter_inc(s->m.handshake_refusals);
            conn_close(c, 1013, "overloaded, retry with backoff", false);
        }
        conn_timer_arm(s, c);
        break;
    }
    case LWS_CALLBACK_RECEIVE:
        on_receive(s, c, in, len);
        conn_timer_arm(s, c); /* a send's ack deadline, a position to flush */
        break;
    case LWS_CALLBACK_RECEIVE_PONG:
        c->last_rx_ms = now_ms();
        break;
    case LWS_CALLBACK_SERVER_WRITEABLE:
        return on_writeable(s, c);
    case LWS_CALLBACK_CLOSED:
        conn_free(s, c);
        /* After conn_free, which may arm the timer (a position change). */
        ev_timer_stop(s->loop, &c->timer);
        presence_unqueue(s, c);
        break;
    default:
        break;
    }
    return 0;
}

/* ---------- lifecycle ---------- */

void gw_config_opts(sl_cfg_opt *o, gw_config *c)
{
    const sl_cfg_opt gw[GW_OPTS_N - SL_COMMON_OPTS_N] = {
        {"SLUICE_LISTEN", "listen", SL_CFG_ADDR, "0.0.0.0:8080", "WebSocket and HTTP address",
         &c->listen, 0, 0, true, false},
        {"SLUICE_JWT_SECRET", "jwt-secret", SL_CFG_STR, NULL, "HS256 secret for client JWTs",
         &c->jwt_secret, 0, 0, false, true},
        {"SLUICE_JWT_PUBLIC_KEY", "jwt-public-key", SL_CFG_STR, NULL,
         "PEM file of an RS256 public key for client JWTs", &c->jwt_public_key, 0, 0, false, false},
        {"SLUICE_RESUME_SECRET", "resume-secret", SL_CFG_STR, NULL,
         "HMAC secret for resume tokens, the same on every gateway (default: the JWT secret)",
         &c->resume_secret, 0, 0, false, true},
        {"SLUICE_TLS_CERT", "tls-cert", SL_CFG_STR, NULL, "PEM certificate: serve wss://",
         &c->tls_cert, 0, 0, false, false},
        {"SLUICE_TLS_KEY", "tls-key", SL_CFG_STR, NULL, "PEM private key for SLUICE_TLS_CERT",
         &c->tls_key, 0, 0, false, false},
        {"SLUICE_WEB_ROOT", "web-root", SL_CFG_STR, "web", "folder of static files served at /",
         &c->web_root, 0, 0, false, false},
        {"SLUICE_DEV_MODE", "dev-mode", SL_CFG_BOOL, "0",
         "serve development tokens at /dev/token (never in production)", &c->dev_mode, 0, 0, false,
         false},
        {"SLUICE_HEARTBEAT_MS", "heartbeat-ms", SL_CFG_INT, "25000",
         "ping interval; silent connections close after 2.5x", &c->heartbeat_ms, 100, 3600000,
         false, false},
        {"SLUICE_MAX_FRAME", "max-frame", SL_CFG_INT, "65536", "largest client frame in bytes",
         &c->max_frame, 256, 16 * 1024 * 1024, false, false},
        {"SLUICE_RATE", "rate", SL_CFG_INT, "20", "client frames per second per connection",
         &c->rate, 1, 1000000, false, false},
        {"SLUICE_BURST", "burst", SL_CFG_INT, "40", "client frame burst per connection", &c->burst,
         1, 1000000, false, false},
        {"SLUICE_OUTQ_MAX_FRAMES", "outq-max-frames", SL_CFG_INT, "4096",
         "frames queued to one client before it is cut (4429)", &c->outq_max_frames, 16, 10000000,
         false, false},
        {"SLUICE_OUTQ_MAX_BYTES", "outq-max-bytes", SL_CFG_INT, "1048576",
         "bytes queued to one client before it is cut (4429)", &c->outq_max_bytes, 4096, 1LL << 32,
         false, false},
        {"SLUICE_DRAIN_GRACE_MS", "drain-grace-ms", SL_CFG_INT, "10000",
         "on SIGTERM: time clients get to reconnect elsewhere", &c->drain_grace_ms, 0, 600000,
         false, false},
        {"SLUICE_HANDSHAKE_RATE", "handshake-rate", SL_CFG_INT, "500",
         "new connections per second per gateway (over it: close 1013)", &c->handshake_rate, 1,
         10000000, false, false},
        {"SLUICE_HANDSHAKE_BURST", "handshake-burst", SL_CFG_INT, "1000",
         "burst of new connections", &c->handshake_burst, 1, 10000000, false, false},
        {"SLUICE_PUBLISH_TIMEOUT_MS", "publish-timeout-ms", SL_CFG_INT, "5000",
         "wait for the JetStream ack before answering busy overloaded", &c->publish_timeout_ms, 100,
         600000, false, false},
        {"SLUICE_HELLO_TIMEOUT_MS", "hello-timeout-ms", SL_CFG_INT, "5000",
         "time a new connection has to say hello (then 4401)", &c->hello_timeout_ms, 100, 600000,
         false, false},
        {"SLUICE_PRESENCE_FANOUT_MAX", "presence-fanout-max", SL_CFG_INT, "200",
         "rooms with more local members get no join/leave presence events", &c->presence_fanout_max,
         0, 100000000, false, false},
        {"SLUICE_CHAN_CACHE", "chan-cache", SL_CFG_INT, "512",
         "recent events kept in memory per channel for resumes (0: none)", &c->chan_cache, 0,
         100000, false, false},
        {"SLUICE_GW_IO_THREADS", "gw-io-threads", SL_CFG_INT, "2",
         "threads for stream reads and KV writes", &c->io_threads, 1, 64, false, false},
        {"SLUICE_MAX_ROOMS", "max-rooms", SL_CFG_INT, "100",
         "rooms one connection may be in (a join past it: error too_many_rooms)", &c->max_rooms, 1,
         GW_ROOMS_LIMIT, false, false},
        {"SLUICE_SOCKET_SNDBUF", "socket-sndbuf", SL_CFG_INT, "262144",
         "kernel send buffer per client socket, bytes (0: the kernel's autotuning, up to "
         "net.ipv4.tcp_wmem's max, about 4 MiB per client that stops reading)",
         &c->socket_sndbuf, 0, 67108864, false, false},
    };
    sl_common_opts(o, &c->common, "0.0.0.0:9090");
    memcpy(o + SL_COMMON_OPTS_N, gw, sizeof(gw));
}

sl_status gw_config_validate(const gw_config *c, char *err, size_t errlen)
{
    if (c->jwt_secret == NULL && c->jwt_public_key == NULL) {
        snprintf(err, errlen, "SLUICE_JWT_SECRET (or SLUICE_JWT_PUBLIC_KEY) is required");
        return SL_ERR_INVAL;
    }
    if (c->jwt_secret != NULL && strlen(c->jwt_secret) < 16) {
        snprintf(err, errlen, "SLUICE_JWT_SECRET must be at least 16 characters");
        return SL_ERR_INVAL;
    }
    if (c->resume_secret == NULL && c->jwt_secret == NULL) {
        snprintf(err, errlen, "SLUICE_RESUME_SECRET is required when only RS256 tokens are used");
        return SL_ERR_INVAL;
    }
    if ((c->tls_cert == NULL) != (c->tls_key == NULL)) {
        snprintf(err, errlen, "SLUICE_TLS_CERT and SLUICE_TLS_KEY go together");
        return SL_ERR_INVAL;
    }
    if (c->burst < 1 || c->rate < 1) {
        snprintf(err, errlen, "SLUICE_RATE and SLUICE_BURST must be positive");
        return SL_ERR_INVAL;
    }
    return SL_OK;
}

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
                                        "presence bucket writes (joins, leaves, refreshes)");
    m->presence_events = sl_counter_get("sluice_gw_presence_events_total", NULL,
                                        "presence events published (join, leave, disconnect)");
    m->presence_suppressed =
        sl_counter_get("sluice_gw_presence_suppressed_total", NULL,
                       "presence events not published: room over SLUICE_PRESENCE_FANOUT_MAX");
    m->replays = sl_counter_get("sluice_gw_replays_total", NULL,
                                "channel replays for resuming or joining members");
    m->replays_cached = sl_counter_get("sluice_gw_replays_cached_total", NULL,
                                       "replays served from the gateway's channel cache");
    m->delivery_latency =
        sl_hist_get("sluice_gw_delivery_latency_seconds", NULL, "event time to socket write");
}

/* No lws idle policy: the gateway pings and cuts silent clients itself
 * (conn_timer_cb). lws 4.1.6 would otherwise re-arm a 5-minute validity
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
    jsOptions jo;
    char host[256];
    int port;
    sl_status st = SL_OK;

    if (s == NULL)
        return SL_ERR_NOMEM;
    s->cfg = cfg;
    s->bus = bus;
    s->wbuf = malloc(LWS_PRE + WRITE_BATCH);
    if (s->wbuf == NULL) {
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
    if ((st = gw_bridge_create(&s->bridge, 200000)) != SL_OK ||
        (st = gw_io_create(&s->io, (int)cfg->io_threads)) != SL_OK ||
        (st = gw_map_create(&s->sessions)) != SL_OK || (st = gw_map_create(&s->chans)) != SL_OK) {
        snprintf(err, errlen, "gateway init: %s", sl_status_str(st));
        goto cleanup;
    }
    jsOptions_Init(&jo);
    jo.PublishAsync.AckHandler = on_pub_ack_cb;
    jo.PublishAsync.AckHandlerClosure = s;
    jo.PublishAsync.MaxPending = 65536;
    jo.PublishAsync.StallWait = 1; /* a full window is "overloaded", never a stall */
    if (natsConnection_JetStream(&s->js_in, sl_bus_nc(bus), &jo) != NATS_OK ||
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
     * in pieces that on_receive() joins anyway. */
    s->protocols[0].rx_buffer_size = 512;
    /* lws 4.1.6 caps every send of lws_issue_raw (framed and raw writes, and
     * each drain of a partial write) at tx_packet_size, or rx_buffer_size
     * when it is 0: 512 bytes would cut every batch into many sends. */
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
    lws_sul_schedule(s->ctx, 0, &s->tick, on_tick, 250 * LWS_US_PER_MS);
    sl_info("gateway listening on %s (%s)", s->cfg->listen, s->cfg->tls_cert ? "wss" : "ws");
    /* Signal handlers only set *stop; on_tick sees it within a tick, drains,
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

/* Stops every cnats callback that carries s (on_live_cb, on_pub_ack_cb) and
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
    if (s->js_in != NULL) {
        /* No client sends any more: the acks still due come (or time out,
         * which cnats also reports through the handler) and end here. */
        jsPubOptions po;
        jsPubOptions_Init(&po);
        po.MaxWait = s->cfg->publish_timeout_ms + 5000;
        if (js_PublishAsyncComplete(s->js_in, &po) != NATS_OK)
            sl_warn("shutdown: publish acks still pending");
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
    chan_destroy(val);
}

void gw_server_destroy(gw_server *s)
{
    if (s == NULL)
        return;
    atomic_store(&s->running, 0);
    if (s->ctx != NULL) {
        gw_bridge_set_context(s->bridge, NULL);
        lws_context_destroy(s->ctx); /* closes connections: CLOSED frees them */
        /* On a foreign loop lws may finish its destroy on the loop. */
        for (int i = 0; s->ctx != NULL && i < 1000; i++)
            ev_run(s->loop, EVRUN_NOWAIT);
        if (s->ctx != NULL)
            sl_warn("libwebsockets did not finish its shutdown");
    }
    if (s->loop != NULL)
        ev_loop_destroy(s->loop);
    /* In order: nothing may use what is freed. cnats threads post to the
     * bridge and submit to the io pool (on_live_cb, on_pub_ack_cb): stop
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
    jsCtx_Destroy(s->js_in);
    sl_auth_destroy(s->auth);
    free(s->wbuf);
    free(s);
}
