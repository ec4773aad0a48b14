/* Integration-test harness: Sluice client protocol helpers on top of hx_ws
 * (see shared/PROTOCOL.md): tokens, connect + hello + welcome, resume, and a
 * per-client tracker of channel positions that counts duplicates.
 *
 * The tracker sees every JSON frame the client's hx_ws reads at the JSON
 * level (hx_ws_recv_json, hx_ws_expect*, and the hx_sl_ helpers): for each
 * {"type":"event","ch":C,"seq":N} it records N as C's position when N is
 * above the last one, and counts a duplicate otherwise (same or lower seq on
 * a channel: a duplicate or a reordering, both forbidden). Frames read with
 * the raw hx_ws_recv are not tracked. A client is used by one thread. */
#ifndef HX_SLUICE_H
#define HX_SLUICE_H

#include <cJSON.h>
#include <stdint.h>

#include "hx_stack.h"
#include "hx_ws.h"
#include "sl_status.h"

#define HX_SL_PATH        "/v1/ws"
#define HX_SL_SUBPROTOCOL "sluice.v1"

/* Mints an HS256 JWT with the stack's secret for tenant and sub, expiring
 * ttl_s seconds from now (negative: already expired). Returns a malloc'd
 * token (caller frees), or NULL with hx_error() when sl_jwt_mint_hs256
 * refuses the arguments. */
char *hx_token(const hx_stack *s, const char *tenant, const char *sub, int ttl_s);

/* hx_token with a rooms claim (nrooms entries; rooms may be NULL for none). */
char *hx_token_rooms(const hx_stack *s, const char *tenant, const char *sub, int ttl_s,
                     const char *const *rooms, int nrooms);

/* hx_token with any secret (for wrong-secret tests). */
char *hx_token_secret(const char *secret, const char *tenant, const char *sub, int ttl_s,
                      const char *const *rooms, int nrooms);

/* Sends {"type":"hello","token":token} (plus "resume": resume_json when not
 * NULL, e.g. {"session":"..","resume_token":"..","positions":{"s":3}}) on ws
 * and waits for "welcome". On SL_OK *welcome_out (may be NULL) gets the
 * welcome frame (caller frees). SL_ERR_AUTH when an error frame comes first
 * or the gateway closes (hx_error() has its code and close code);
 * SL_ERR_TIMEOUT; SL_ERR_IO when sending fails. */
sl_status hx_sl_hello(hx_ws *ws, const char *token, const char *resume_json, int timeout_ms,
                      cJSON **welcome_out);

typedef struct hx_sl_client hx_sl_client;

/* Connects to the gateway client port (ws://127.0.0.1:port/v1/ws, offering
 * sluice.v1), says hello with token (copied) and waits for welcome, all
 * within timeout_ms. On SL_OK *out owns the connection. SL_ERR_FULL when
 * the upgrade is refused with 503 (hx_error() has the Retry-After),
 * SL_ERR_IO for other connection failures, else as hx_sl_hello. */
sl_status hx_sl_connect(hx_sl_client **out, int port, const char *token, int timeout_ms);

/* Drops the client's current connection (without a close frame, like a
 * lost network) and resumes on port: hello with the session, the resume
 * token and the tracked positions. The tracker carries over, so replayed
 * events that were already seen count as duplicates. Unread frames of the
 * old connection are discarded. SL_OK when a welcome arrived (check
 * hx_sl_welcome(c) for "resumed"); errors as hx_sl_connect. */
sl_status hx_sl_reconnect(hx_sl_client *c, int port, int timeout_ms);

/* The current connection, owned by c (replaced by hx_sl_reconnect). */
hx_ws *hx_sl_ws(hx_sl_client *c);

/* From the last welcome; owned by c. */
const char *hx_sl_session(const hx_sl_client *c);
const char *hx_sl_resume_token(const hx_sl_client *c);
const cJSON *hx_sl_welcome(const hx_sl_client *c);

/* Sends {"type":"send","id":id,"text":text} with "room" and "prev" when not
 * NULL. Status as hx_ws_send_text. */
sl_status hx_sl_send(hx_sl_client *c, const char *id, const char *room, const char *text,
                     const char *prev);

/* hx_sl_send, then waits for {"type":"accepted","id":id} or
 * {"type":"busy","id":id} and returns that frame (caller frees), or NULL. */
cJSON *hx_sl_send_wait(hx_sl_client *c, const char *id, const char *room, const char *text,
                       int timeout_ms);

/* Sends join and waits for {"type":"joined","room":room} (returned; caller
 * frees) or an error frame (NULL, hx_error() has it). */
cJSON *hx_sl_join(hx_sl_client *c, const char *room, int timeout_ms);

/* Sends {"type":"ack","ch":ch,"seq":seq}. */
sl_status hx_sl_ack(hx_sl_client *c, const char *ch, int64_t seq);

/* Waits for the final reply event to message id: {"type":"event",
 * "kind":"reply","to":id}. Caller frees; NULL on timeout. */
cJSON *hx_sl_wait_reply(hx_sl_client *c, const char *to, int timeout_ms);

/* Tracker counters. */
typedef struct hx_sl_counts {
    unsigned long events;     /* event frames seen */
    unsigned long duplicates; /* events whose seq was not above their channel's last */
    unsigned long gaps;       /* gap frames seen */
} hx_sl_counts;
hx_sl_counts hx_sl_get_counts(const hx_sl_client *c);

/* The last seq seen on channel ch ("s", "r:lobby"), 0 when none. */
int64_t hx_sl_position(const hx_sl_client *c, const char *ch);

/* The positions as a JSON object text, e.g. {"s":41,"r:lobby":97}
 * (malloc'd; caller frees). */
char *hx_sl_positions_json(const hx_sl_client *c);

/* Closes the connection (no close handshake) and frees c. NULL-safe. */
void hx_sl_destroy(hx_sl_client *c);

#endif
