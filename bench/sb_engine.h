/* The bench's connection engine: one epoll loop, many non-blocking client
 * WebSocket connections, protocol adapters and scenario hooks.
 *
 * Everything here runs on the one thread that calls sb_engine_run(). The
 * engine owns every connection and its buffers; adapters and scenarios see
 * connections through the hooks and never free them.
 */
#ifndef SB_ENGINE_H
#define SB_ENGINE_H

#include <netinet/in.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "sb_hist.h"
#include "sl_status.h"

#define SB_MAX_TARGETS 16
#define SB_MAX_PIDS    16
#define SB_RING        256
#define SB_MAX_CONNS   19500
#define SB_WBUF_MAX    (8u << 20)
#define SB_FRAME_MAX   (1u << 20)
#define SB_MAX_CODES   16

typedef enum sb_proto_kind {
    SB_P_SLUICE,
    SB_P_NATS,
    SB_P_NCHAN,
    SB_P_SOCKETIO,
} sb_proto_kind;

typedef enum sb_state {
    SB_ST_IDLE,       /* not connected, may be (re)started */
    SB_ST_CONNECTING, /* TCP connect in progress */
    SB_ST_HANDSHAKE,  /* HTTP upgrade sent, waiting for 101 */
    SB_ST_OPENING,    /* WebSocket open, protocol greeting in progress */
    SB_ST_READY,      /* greeting done (welcome / subscribed / joined) */
    SB_ST_CLOSED,     /* closed; see close_code */
} sb_state;

typedef enum sb_role {
    SB_ROLE_SUB,  /* member of the room, counts deliveries */
    SB_ROLE_PUB,  /* publishes to the room */
    SB_ROLE_CHAT, /* pipeline session talking to the agents */
} sb_role;

typedef enum sb_mtype {
    SB_M_OTHER,
    SB_M_WELCOME,
    SB_M_JOINED,
    SB_M_ACCEPTED,
    SB_M_BUSY,
    SB_M_EVENT,
    SB_M_GAP,
    SB_M_ERROR,
    SB_M_RECONNECT,
    SB_M_DATA, /* a peer's payload (nats, nchan, socket.io) */
} sb_mtype;

typedef enum sb_kind {
    SB_K_NONE,
    SB_K_MESSAGE,
    SB_K_TOKEN,
    SB_K_REPLY,
    SB_K_OTHER,
} sb_kind;

/* What an adapter extracted from one inbound message. */
typedef struct sb_msg {
    sb_mtype type;
    sb_kind kind;
    int room_ch;    /* 1 for "r:<room>", 0 for "s" */
    uint64_t seq;   /* event seq, or joined seq */
    int64_t id_n;   /* n of "m<n>" in id (accepted/busy) or to (token/reply); -1 */
    uint64_t stamp; /* the "sbt=<ns>" send time in the text; 0 when absent */
    int resumed;    /* welcome.resumed */
    int dup;        /* seq not above the last one seen on the channel */
    uint64_t retry_after_ms;
} sb_msg;

/* One outstanding pipeline message. */
typedef struct sb_sent {
    int64_t n;
    uint64_t t_send;
    uint8_t got_accept;
    uint8_t got_token;
    uint8_t got_reply;
    uint8_t group;
} sb_sent;

typedef struct sb_conn {
    int fd;
    uint32_t idx;
    uint8_t state;
    uint8_t role;
    uint8_t group;  /* tenant group (noisy: 0 = quiet B, 1 = noisy A) */
    uint8_t target; /* index into the target list */
    uint8_t joined;
    uint8_t resuming;
    uint8_t retry_pending; /* refused while connecting: retry at retry_at */
    uint16_t close_code;
    char key[28];
    uint64_t t_start; /* connect() time of the current attempt */
    uint64_t t_ready;
    uint64_t retry_at; /* storm: earliest time of the next attempt */
    uint32_t attempts;
    uint32_t rlen, rcap;
    uint32_t wlen, woff, wcap;
    uint32_t slen, scap;
    uint32_t fraglen, fragcap;
    uint8_t fragop;
    uint8_t *rbuf; /* partial inbound bytes carried between reads */
    uint8_t *wbuf; /* outbound bytes the socket did not take yet */
    uint8_t *sbuf; /* stream protocols (nats): partial protocol text */
    uint8_t *frag; /* fragmented WebSocket message being reassembled */
    /* Sluice session state, kept across reconnects for resume. */
    char *session;
    char *resume_token;
    uint64_t seq_room;
    uint64_t seq_s;
    uint64_t msgs_room; /* distinct stamped room messages received */
    uint64_t next_n;    /* next message number to send */
    sb_sent *ring;      /* pipeline: SB_RING outstanding sends */
} sb_conn;

typedef struct sb_target {
    char host[64];
    int port;
    char path[256];
    struct sockaddr_in addr;
} sb_target;

typedef struct sb_engine sb_engine;

/* Adapter: speaks one protocol over an open WebSocket. */
typedef struct sb_adapter {
    const char *name;
    /* Called once the 101 arrived: send the greeting. */
    void (*on_open)(sb_engine *e, sb_conn *c);
    /* Called for every complete text or binary message. */
    void (*on_data)(sb_engine *e, sb_conn *c, int opcode, uint8_t *data, size_t len);
    /* Publishes text to the room (role PUB) or to the agents (role CHAT);
     * n is the message number used for ids. */
    void (*publish)(sb_engine *e, sb_conn *c, int64_t n, const char *text, size_t len);
    /* Sends an application heartbeat, if the protocol has one. */
    void (*heartbeat)(sb_engine *e, sb_conn *c);
} sb_adapter;

/* Scenario hooks; any may be NULL. */
typedef struct sb_hooks {
    void *ctx;
    void (*on_ready)(sb_engine *e, sb_conn *c);
    void (*on_msg)(sb_engine *e, sb_conn *c, const sb_msg *m);
    void (*on_closed)(sb_engine *e, sb_conn *c, int refused);
} sb_hooks;

/* Engine configuration, filled by the caller. */
typedef struct sb_engine_cfg {
    sb_proto_kind proto;
    /* The protocol adapter (sb_proto.h's sb_adapter_for(proto)); required.
     * Handed in so that the engine does not depend on the adapters, which
     * depend on it. */
    const sb_adapter *adapter;
    sb_target targets[SB_MAX_TARGETS];
    int ntargets;
    sb_target pub_targets[SB_MAX_TARGETS]; /* nchan publishes elsewhere */
    int npub_targets;
    uint32_t nconns;
    int src_octet; /* source addresses 127.<src_octet>.x.y */
    const char *room;
    /* sluice: members spread over rooms <room>-0 .. <room>-(rooms-1) by
     * connection index (0 or 1: every member in <room>). */
    uint32_t rooms;
    const char *secret;
    const char *tenant[2]; /* by group */
    long token_ttl_s;
    const char *tokens_file; /* optional: tokens, one a line, instead of minting */
} sb_engine_cfg;

struct sb_engine {
    int ep;
    sb_engine_cfg cfg;
    const sb_adapter *ad;
    sb_hooks hooks;
    sb_conn *conns;
    uint64_t seed;
    uint8_t *scratch; /* read buffer shared by every connection */
    size_t scratch_cap;
    uint8_t *out; /* frame build buffer */
    size_t out_cap;
    char **tokens; /* one per group, or per connection from tokens_file */
    size_t ntokens;
    /* Counters. */
    uint32_t pending; /* connecting + handshake + opening */
    uint32_t ready;
    uint64_t connect_ok;
    uint64_t connect_err;   /* TCP or handshake failures */
    uint64_t refused;       /* 503/429 handshakes and 1013 closes */
    uint64_t closed_remote; /* server closed a ready connection */
    uint64_t proto_err;
    uint64_t frames_in;
    uint64_t bytes_in;
    uint64_t frames_out;
    uint64_t pings_in;
    uint64_t errors_app; /* protocol "error" frames */
    uint64_t reconnect_frames;
    int last_errno;
    /* Close codes received from servers: up to SB_MAX_CODES distinct ones. */
    uint16_t close_code[SB_MAX_CODES];
    uint64_t close_count[SB_MAX_CODES];
    /* TCP-level ends of ready connections (EOF or reset without a close frame). */
    uint64_t eof_ready;
};

/* Creates an engine for cfg (copied) in *out: allocates the connection table
 * and the epoll instance and mints the tokens. Returns SL_ERR_INVAL for a bad
 * configuration, SL_ERR_NOMEM or SL_ERR_IO on resource failure; *out is set
 * only on success and the caller owns it. */
sl_status sb_engine_create(sb_engine **out, const sb_engine_cfg *cfg, const sb_hooks *hooks);

/* Closes every connection and frees the engine; NULL is a no-op. */
void sb_engine_destroy(sb_engine *e);

/* Starts a connection attempt for c (state must be IDLE or CLOSED). Failures
 * are counted and leave c CLOSED; returns SL_OK when the attempt is under
 * way. */
sl_status sb_engine_connect(sb_engine *e, sb_conn *c);

/* Waits for and handles socket events for at most timeout_ms. Returns the
 * number of events handled, or -1 on an epoll failure. */
int sb_engine_poll(sb_engine *e, int timeout_ms);

/* Closes c. abrupt = 1 resets the TCP connection without a close frame
 * (a network drop); otherwise a close frame with code 1000 is sent first. */
void sb_engine_close(sb_engine *e, sb_conn *c, int abrupt);

/* Sends one frame on c; on overflow of the write buffer the connection is
 * closed and counted. */
void sb_engine_send(sb_engine *e, sb_conn *c, int opcode, const void *data, size_t len);

/* Marks c ready (called by adapters when the greeting completed). */
void sb_engine_ready(sb_engine *e, sb_conn *c);

/* Hands an extracted message to the scenario. */
void sb_engine_msg(sb_engine *e, sb_conn *c, const sb_msg *m);

/* Returns the JWT for c's group (or its own from the tokens file). */
const char *sb_engine_token(const sb_engine *e, const sb_conn *c);

/* Parses "sbt=<digits>" in s[0..len) (0 when absent). */
uint64_t sb_parse_stamp(const uint8_t *s, size_t len);

/* Parses "ws://host:port/path" into t (resolving host to IPv4 loopback
 * addresses only). Returns SL_ERR_INVAL for anything else. */
sl_status sb_parse_url(const char *url, sb_target *t);

#endif
