/* Private to the gateway server (gw_server.c, gw_out.c, gw_chan.c, gw_read.c,
 * gw_stream.c, gw_history.c, gw_live.c, gw_cmd.c, gw_conn.c, gw_api*.c):
 * the shared state, its constants and the functions these files call
 * across each other (gw__ prefix). Not for other modules. */
#ifndef GW_SERVER_INT_H
#define GW_SERVER_INT_H

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
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "gw_api.h"
#include "gw_bridge.h"
#include "gw_bucket.h"
#include "gw_map.h"
#include "gw_outq.h"
#include "gw_protocol.h"
#include "gw_uring.h"
#include "sl_auth.h"
#include "sl_codec.h"
#include "sl_json.h"
#include "sl_log.h"
#include "sl_metrics.h"
#include "sl_streams.h"
#include "sl_subject.h"
#include "sl_text.h"
#include "sl_time.h"

/*
 * Threads: everything in these files runs on the loop thread (the libev loop
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

/* gw__flush_cb writes at most FLUSH_SLICE connections per turn of the
 * loop, which then polls without waiting and comes back for the rest: a
 * fan-out burst (one write per member) no longer holds the loop for
 * milliseconds while client frames, acks and the next live event wait. */
#define FLUSH_SLICE 64

/* A slice's writes go to the kernel in one io_uring submission where it
 * allows (gw_uring.h), each connection's frames (at most URING_IOV of them
 * queued: more is a backlog, written with send() in copied 64 KiB batches)
 * as one sendmsg of at most WRITE_BATCH bytes (a longer first frame alone),
 * straight from the shared buffers: the header of each frame is written in
 * its buffer's headroom, the same bytes for every member. */
#define URING_IOV 16

typedef struct gw_usend {
    struct gw_conn *c;
    struct msghdr mh;
    struct iovec iov[URING_IOV];
    size_t nf; /* frames in iov */
} gw_usend;

enum conn_state { CONN_AWAIT_HELLO = 0, CONN_HELLO_PENDING, CONN_READY, CONN_CLOSING };
enum chan_state { CHAN_INIT = 0, CHAN_READY, CHAN_FILLING };

typedef struct gw_chan gw_chan;
typedef struct gw_conn gw_conn;
typedef struct gw_presence gw_presence;

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
     * connection has a channel of its own ("s"), so no fixed-size buffers.
     * The stream subject (sluice.out...) is not kept: gw__read_job_new
     * derives it from tenant, is_room and name. Fields are ordered by size
     * (no holes) for the same reason. */
    const char *live;
    const char *ch; /* "s" or "r:<room>" as clients see it */
    const char *tenant;
    const char *name;
    natsSubscription *sub;
    gw_member *members;
    pend *pend_head, *pend_tail;
    /* A live event came after a hole (its Nats-Last-Sequence is above
     * head): JetStream's republished events can arrive out of order, so the
     * hole is given SLUICE_REORDER_MS to fill itself before it is read from
     * the stream. Allocated on the channel's first hole. */
    struct chan_hole *hole;
    /* The latest events in order: every event of the channel with a
     * sequence in (cache_base, head] is in the ring once cache_valid, so a
     * member resuming from there is served from memory (no NATS). */
    cached *ring;
    struct gw_chan *idle_prev, *idle_next; /* in the server's idle list while idle */
    /* Who is in the room (chan_presence): NULL until the first join's read
     * loads it, and always for a session's channel. */
    struct chan_presence *pres;
    uint64_t head;       /* last sequence seen on this channel */
    uint64_t ready_head; /* head when it became ready: buffered live events up to it were dropped */
    size_t ring_bytes;
    uint64_t cache_base;
    int64_t idle_since_ms; /* no members since then (kept for a resume); 0: in use */
    int state;
    int nmembers;
    int npend;
    int ring_cap, ring_start, ring_n;
    /* Which channel of this subject it is: a read's result is for the
     * channel that asked (read_job.chan_gen), not a later one made for the
     * same subject after it was freed. Never 0. */
    uint32_t gen;
    bool is_room;
    bool cache_valid;
    /* A READ_JOIN of this room is running: later joins wait for its result
     * (join_wait) instead of each reading the head and the member list. */
    bool join_reading;
    char strs[]; /* live, ch, tenant and name */
};

/* Who is in a room (session -> user), loaded once from the presence bucket
 * by the first join and kept current from presence events and local joins,
 * so later joins need no NATS round trip. The index (session -> item of
 * snap) and the count keep a join O(1). The rendered `members` of `joined`
 * is kept until the listed members change, and the whole `joined` frame
 * until they change or the room's head moves: a storm of joins into a large
 * room renders it once and queues the same buffer to every joiner. Only
 * rooms have one, so a session's channel stays small. */
typedef struct chan_presence {
    cJSON *snap;
    gw_map *idx;
    char *members_json; /* NULL: render again */
    gw_buf *joined;     /* NULL: render again */
    uint64_t joined_seq;
    int n;
    bool truncated;
    bool members_json_truncated;
} chan_presence;

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

/* Per-connection state, allocated by lws as the protocol's session data.
 * Every idle connection holds one (15,000 on a gateway are 15,000 of them):
 * fields are ordered by size so that the struct has no holes, and what an
 * idle connection does not need (the last acknowledged id, positions past
 * the session channel's) lives outside it, allocated on first use. */
struct gw_conn {
    struct lws *wsi;
    gw_server *srv;
    char *sub;   /* the user, then the rooms claim (one allocation, see rooms) */
    char *rooms; /* the rooms claim as "a\0b*\0\0" inside sub's block, or NULL for any room */
    const char *close_reason; /* a string literal */
    char *rx;
    size_t rxlen;
    int64_t opened_ms;
    int64_t last_rx_ms;
    int64_t last_ping_ms;
    int64_t token_due_ms; /* READY: when the next resume_token frame is due */
    gw_bucket bucket;
    gw_outq q;
    gw_member *members;
    pending_send *sends;
    /* The session's default `prev`: the last client id JetStream
     * acknowledged (a refused or failed send never becomes it). Persisted
     * with the positions and read back on a resume, on any gateway. NULL
     * until the session has one (malloc'd SL_ID_MAX + 1, gw__last_id_set). */
    char *last_id;
    /* Acked positions: the session channel's in pos_s (every session has
     * it), the rooms' in acked (malloc'd, grows to max_rooms). */
    int64_t pos_s;
    gw_pos *acked;
    receipt *receipts; /* ring of RECEIPTS_MAX (malloc'd on first use) */
    struct gw_conn *all_prev, *all_next;
    /* One timer per connection (libev's heap: a start or a firing costs
     * O(log connections)) for its next deadline: hello timeout, ping and
     * silence (4408), a send's ack deadline, a position flush. Nothing
     * walks every connection on a clock. */
    ev_timer timer;
    int64_t timer_due_ms;                    /* when the armed timer fires; 0: not armed */
    struct gw_conn *flush_prev, *flush_next; /* on s->flush_head (gw__flush_cb) */
    /* In the server API's index of the tenant's user (gw_api.c). */
    struct gw_conn *user_prev, *user_next;
    int state;
    int16_t close_code; /* 1000-4999 */
    /* Counts bounded by small limits (GW_ROOMS_LIMIT, SEND_INFLIGHT,
     * RECEIPTS_MAX, HISTORY_CONN_MAX): 16 bits each. */
    int16_t nrooms; /* room memberships, at most cfg->max_rooms */
    int16_t nsends;
    int16_t nacked, acked_cap;
    int16_t receipts_start; /* the oldest */
    int16_t nreceipts;
    int16_t history_inflight; /* history reads queued or running */
    char tenant[SL_ID_MAX + 1];
    char session[SL_ID_MAX + 1];
    bool rooms_any;
    bool ping_due;
    bool close_now;
    bool rx_binary;
    bool rx_oversize;
    bool has_pos_s;
    bool acked_dirty;
    bool flush_queued;
    bool user_indexed;
    /* Frames go to the socket with send() (conn_send in gw_conn.c): no
     * TLS on this connection. */
    bool plain;
};
_Static_assert(GW_POSITIONS_MAX <= INT16_MAX && SEND_INFLIGHT <= INT16_MAX &&
                   RECEIPTS_MAX <= INT16_MAX && HISTORY_CONN_MAX <= INT16_MAX,
               "gw_conn's 16-bit counts hold their limits");

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
    sl_gauge *io_uring;        /* 1: slices of writes go through io_uring */
    sl_counter *uring_submits; /* io_uring submissions (each a slice of writes) */
    sl_hist *accept_latency;
} gw_metrics;

struct gw_server {
    const gw_config *cfg;
    sl_bus *bus;
    sl_auth *auth;
    const char *resume_secret;
    struct ev_loop *loop;    /* the event loop lws runs on (libev, epoll) */
    struct lws_context *ctx; /* NULL again once lws_context_destroy finished */
    struct lws_http_mount mounts[3];
    struct lws_protocols protocols[3];
    struct gw_api *api; /* the server API on /v1/api (gw_api.c) */
    gw_bridge *bridge;
    gw_batch *live; /* live events from cnats (gw__on_live_cb), drained on the loop */
    gw_io *io;
    /* JetStream's acknowledgements of client messages (gw_cmd.c): each send
     * is published with the reply subject <ack_prefix>.<deadline>.<session>.<id>,
     * and ack_sub (on cnats' shared delivery thread, beside the live events)
     * queues what comes back in acks, drained on the loop. */
    char ack_prefix[64];
    natsSubscription *ack_sub;
    gw_batch *acks;
    /* Messages the loop is done with, destroyed together (gw__msg_release):
     * cnats frees every natsMsg on its garbage collector thread and wakes
     * it for each one destroyed while it sleeps. */
    natsMsg **held;
    int nheld;
    ev_timer held_timer;
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
    /* Connections with frames to write before the loop waits, in the
     * order their queues stopped being empty (gw__flush_cb). */
    gw_conn *flush_head, *flush_tail;
    ev_prepare flush_w; /* runs gw__flush_cb */
    ev_idle flush_more; /* active while connections wait for the next slice */
    gw_presence *pres;  /* room presence records and events (gw_presence.c) */
    gw_bucket handshakes;
    lws_sorted_usec_list_t tick;
    int64_t last_expire_ms;
    volatile int *stop;
    int64_t drain_started_ms;
    int64_t closing_since_ms; /* the drain ended: 1001 closes on their way */
    _Atomic int draining;
    _Atomic int running;
    gw_metrics m;
    unsigned char *wbuf; /* LWS_PRE + WRITE_BATCH: gw__on_writeable's batch (loop thread) */
    gw_uring *uring;     /* NULL: one send() per connection (gw__flush_cb) */
    gw_usend *usend;     /* FLUSH_SLICE prepared sends, with uring */
};

static inline int64_t now_ms(void)
{
    return sl_mono_ms();
}

/* How a new channel learns its head. */
enum chan_head {
    HEAD_READ,    /* a READ_HEAD of its own */
    HEAD_FRESH,   /* none: it cannot have events yet (a new session's) */
    HEAD_BY_JOIN, /* the READ_JOIN of the join that creates it */
};

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
    uint64_t upto; /* fill, replay: stop at this sequence */
    uint64_t last; /* fill: Nats-Last-Sequence of the live event at upto */
    uint64_t before;
    int64_t limit;
    char id[SL_ID_MAX + 1]; /* history: the request's id, or "" */
    uint64_t covered;       /* history: every event in [covered, before) was read */
    bool check_gap;
    uint64_t member_gen; /* replay, join: the membership asking */
    uint32_t chan_gen;   /* the channel asking (gw_chan.gen); 0: none */
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

/* gw_out.c */
void gw__conn_close(gw_conn *c, int code, const char *reason, bool flush_first);
void gw__conn_send_buf(gw_server *s, gw_conn *c, gw_buf *b);
void gw__conn_send_text(gw_server *s, gw_conn *c, char *text);
void gw__conn_error(gw_server *s, gw_conn *c, const char *code, const char *msg, const char *id);
void gw__conn_busy(gw_server *s, gw_conn *c, const char *id, const char *reason, int64_t retry);
void gw__fill_header(gw_conn *c, Sluice__Envelope *e, char *event_id);
void gw__publish_out_async(gw_server *s, const char *subject, const Sluice__Envelope *e,
                           const char *msg_id);
void gw__kv_submit(gw_server *s, bool presence, const char *key, char *value);
void gw__positions_flush(gw_server *s, gw_conn *c);
void gw__acked_set(gw_conn *c, const char *ch, int64_t seq, bool only_if_absent);
void gw__acked_remove(gw_conn *c, const char *ch);
void gw__last_id_set(gw_conn *c, const char *id);
const char *gw__last_id(const gw_conn *c);
void gw__conn_timer_arm(gw_server *s, gw_conn *c);

/* gw_chan.c */
void gw__pend_free(pend *p);
void gw__member_pend_clear(gw_member *m);
void gw__receipt_track(gw_conn *c, const char *ch, uint64_t seq, const char *sender_session,
                       const char *message_id);
gw_buf *gw__frame_of(const void *data, size_t len, const char *ch, uint64_t seq,
                     char *sender_session, char *message_id, gw_chan *snap);
const char *gw__json_str(const cJSON *o, const char *key);
bool gw__presence_snap_init(gw_chan *ch);
void gw__presence_snap_set(gw_chan *ch, const char *session, const char *user);
void gw__presence_snap_del(gw_chan *ch, const char *session);
gw_buf *gw__presence_joined_frame(gw_chan *ch, uint64_t seq);
uint64_t gw__header_u64(natsMsg *m, const char *name);
void gw__cache_start(gw_server *s, gw_chan *ch);
void gw__chan_deliver(gw_server *s, gw_chan *ch, uint64_t seq, const void *data, size_t len);
void gw__chan_destroy(gw_chan *ch);
bool gw__history_acquire(gw_server *s, gw_conn *c);
void gw__history_release(gw_server *s, const char *tenant, gw_conn *c);
void gw__chan_release(gw_server *s, gw_chan *ch);
void gw__chans_expire(gw_server *s);
gw_member *gw__member_find(gw_conn *c, const char *chname);
gw_member *gw__member_add(gw_server *s, gw_conn *c, gw_chan *ch, uint64_t delivered,
                          bool replaying);
void gw__member_remove(gw_server *s, gw_member *m);
void gw__member_go_live(gw_server *s, gw_member *m);
bool gw__replay_has_room(gw_server *s, gw_conn *c, size_t len);
bool gw__member_pend_fits(gw_server *s, gw_member *m);

/* gw_stream.c */
void gw__read_job_free(void *arg);
natsStatus gw__next_by_subject(gw_server *s, const char *subject, uint64_t seq, natsMsg **out);
natsStatus gw__last_seq_io(gw_server *s, const char *subject, uint64_t *seq);
natsStatus gw__read_forward_io(read_job *j, size_t max);
natsStatus gw__still_stored_io(read_job *j, uint64_t seq);
bool gw__room_members_io(gw_server *s, const char *tenant, const char *room, int max,
                         cJSON *members, bool *truncated);
read_job *gw__read_job_new(gw_server *s, int kind, gw_chan *ch);

/* gw_history.c */
natsStatus gw__history_read_io(read_job *j);
void gw__history_done(gw_server *s, read_job *j, gw_conn *c);

/* gw_read.c */
void gw__read_io(void *arg);
void gw__chan_fill_start(gw_server *s, gw_chan *ch, uint64_t upto, uint64_t last);
void gw__chan_ready(gw_server *s, gw_chan *ch, uint64_t head);
void gw__chan_on_live(gw_server *s, gw_chan *ch, natsMsg *msg);
void gw__chan_process_pending(gw_server *s, gw_chan *ch);
void gw__chan_hole_stop(gw_server *s, gw_chan *ch);
void gw__replay_submit(gw_server *s, gw_conn *c, gw_member *m, bool check_gap);

/* gw_live.c */
void gw__live_run(void *ctx, void *item); /* gw_batch's run and free_item for s->live */
void gw__live_free(void *item);
void gw__on_live_cb(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure);
gw_chan *gw__chan_get_ex(gw_server *s, const char *tenant, bool is_room, const char *name,
                         enum chan_head how);
gw_chan *gw__chan_get(gw_server *s, const char *tenant, bool is_room, const char *name);

/* gw_server.c */
/* Destroys m (may be NULL) soon, with the other messages the loop released;
 * loop thread only. */
void gw__msg_release(gw_server *s, natsMsg *m);

/* gw_cmd.c */
/* The acknowledgement subscription's callback (cnats thread) and the loop's
 * handling of each acknowledgement (gw_batch's run and free_item for
 * s->acks). */
void gw__on_ack_cb(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure);
void gw__ack_run(void *ctx, void *item);
void gw__ack_free(void *item);
/* Writes the reply subject of a send into out; false when it does not fit
 * or id has a character no subject can carry. */
bool gw__ack_reply(char *out, size_t outlen, const char *prefix, int64_t deadline_ms,
                   const char *session, const char *id);
/* Reads a reply subject made by gw__ack_reply back; false when subject is
 * not one (session and id are then undefined). */
bool gw__ack_parse(const char *subject, const char *prefix, int64_t *deadline_ms,
                   char session[SL_ID_MAX + 1], char id[SL_ID_MAX + 1]);
bool gw__conn_room_allowed(const gw_conn *c, const char *room);
void gw__cmd_send(gw_server *s, gw_conn *c, const gw_cmd *cmd);
void gw__cmd_join(gw_server *s, gw_conn *c, const gw_cmd *cmd);
void gw__cmd_leave(gw_server *s, gw_conn *c, const gw_cmd *cmd);
void gw__cmd_ack(gw_server *s, gw_conn *c, const gw_cmd *cmd);
void gw__cmd_cancel(gw_server *s, gw_conn *c, const gw_cmd *cmd);
void gw__cmd_history(gw_server *s, gw_conn *c, const gw_cmd *cmd);

/* gw_conn.c */
void gw__conn_free(gw_server *s, gw_conn *c);
void gw__on_receive(gw_server *s, gw_conn *c, const char *in, size_t len);
int gw__on_writeable(gw_server *s, gw_conn *c);
void gw__flush_queue(gw_server *s, gw_conn *c);
void gw__flush_unqueue(gw_server *s, gw_conn *c);
void gw__flush_cb(struct ev_loop *loop, ev_prepare *w, int revents);
void gw__flush_more_cb(struct ev_loop *loop, ev_idle *w, int revents);
void gw__conn_timer_cb(struct ev_loop *loop, ev_timer *w, int revents);
void gw__on_tick(lws_sorted_usec_list_t *sul);

/* gw_presence.c */
sl_status gw__presence_create(gw_server *s);
const char *gw__presence_instance(const gw_server *s);
/* c joined room, or left it (action "leave", "disconnect"; NULL: quietly,
 * its session moves to another connection): updates the room's record and
 * queues the change for the room's next presence event. */
void gw__presence_change(gw_server *s, gw_conn *c, const char *room, const char *action);
/* Rewrites the records not written for a heartbeat interval. */
void gw__presence_refresh(gw_server *s, int64_t now);
/* Publishes what is pending, deletes this gateway's records, frees. */
void gw__presence_shutdown(gw_server *s);

#endif /* GW_SERVER_INT_H */
