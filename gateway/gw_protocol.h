/* Client protocol v1 (shared/PROTOCOL.md): parsing client frames into
 * commands and building server frames. Pure functions: no I/O, no NATS,
 * usable from any thread. */
#ifndef GW_PROTOCOL_H
#define GW_PROTOCOL_H

#include <cJSON.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "sl_status.h"
#include "sl_subject.h"
#include "sluice.pb-c.h"

#define GW_CH_MAX        (SL_ID_MAX + 3)      /* "r:" + room + NUL */
#define GW_ROOMS_LIMIT   1024                 /* highest SLUICE_MAX_ROOMS */
#define GW_POSITIONS_MAX (GW_ROOMS_LIMIT + 1) /* every room of a connection, and "s" */

typedef enum gw_cmd_type {
    GW_CMD_HELLO,
    GW_CMD_SEND,
    GW_CMD_JOIN,
    GW_CMD_LEAVE,
    GW_CMD_ACK,
    GW_CMD_CANCEL,
    GW_CMD_HISTORY,
    GW_CMD_PING,
} gw_cmd_type;

typedef struct gw_pos {
    char ch[GW_CH_MAX];
    int64_t seq;
} gw_pos;

/* A parsed client frame. String fields point into root (owned by the
 * command and freed by gw_cmd_free). */
typedef struct gw_cmd {
    gw_cmd_type type;
    cJSON *root;
    const char *id;    /* send, cancel; optional on join, leave, history (echoed in errors) */
    const char *room;  /* send (may be NULL), join, leave */
    const char *text;  /* send */
    const char *prev;  /* send (may be NULL) */
    const char *token; /* hello */
    const char *ch;    /* ack, history */
    int64_t seq;       /* ack */
    int64_t before;    /* history: 0 = from the head */
    int64_t limit;     /* history: 1..200, default 50 */
    bool resume;       /* hello with a resume object */
    const char *resume_session;
    const char *resume_token;
    bool has_positions;
    int npositions;
    gw_pos *positions; /* npositions entries (malloc'd, at most GW_POSITIONS_MAX) */
} gw_cmd;

/* Why a frame was refused: an error code of the protocol and a message. */
typedef struct gw_err {
    const char *code; /* "bad_frame", "unknown_type", "bad_id", ... */
    char message[160];
    char id[SL_ID_MAX + 1]; /* the frame's id when it had a valid one */
} gw_err;

/* Parses one text frame (len bytes, need not be NUL-terminated). On success
 * fills *out (release with gw_cmd_free). On failure returns SL_ERR_INVAL,
 * fills *err and leaves nothing to free. */
sl_status gw_cmd_parse(const char *buf, size_t len, gw_cmd *out, gw_err *err);

/* Frees what a parsed command owns; safe on a zeroed command. */
void gw_cmd_free(gw_cmd *c);

/* Server frames. Each returns a malloc'd NUL-terminated JSON text the
 * caller owns, or NULL when out of memory. */
char *gw_frame_error(const char *code, const char *message, const char *id);
char *gw_frame_accepted(const char *id, const char *event, bool duplicate);
char *gw_frame_busy(const char *id, const char *reason, int64_t retry_after_ms);
char *gw_frame_welcome(const char *session, const char *resume_token, int64_t heartbeat_ms,
                       bool resumed, int64_t max_frame, double rate, double burst);
char *gw_frame_gap(const char *ch, int64_t from, int64_t to);
char *gw_frame_reconnect(int64_t after_ms);
char *gw_frame_left(const char *room);
char *gw_frame_pong(void);
char *gw_frame_resume_token(const char *resume_token);

/* joined: members is a cJSON array whose ownership passes to the frame
 * builder (it is freed in every case); NULL means []. truncated adds
 * "members_truncated":true (a large room's list is cut). */
char *gw_frame_joined(const char *room, uint64_t seq, cJSON *members, bool truncated);

/* The same frame with members given as a rendered JSON array (borrowed);
 * room must be a valid id (not escaped). NULL when out of memory. */
char *gw_frame_joined_raw(const char *room, uint64_t seq, const char *members_json, bool truncated);

/* history: events are complete event frames as built by gw_frame_event, in
 * stream order. more:true says older events remain: the client asks again
 * with before = next_before (the seq of the oldest event in this page, or
 * where the read stopped when the page is empty). id (NULL: none) is the
 * request's. */
char *gw_frame_history(const char *ch, char *const *events, size_t n, bool more,
                       int64_t next_before, const char *id);

/* Builds the `event` frame of an OUT envelope on channel ch at stream
 * sequence seq. Returns NULL for an envelope with no client-visible body
 * (or out of memory). */
char *gw_frame_event(const Sluice__Envelope *e, const char *ch, uint64_t seq);

#endif
