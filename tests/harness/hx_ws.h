/* Integration-test harness: a blocking WebSocket client (RFC 6455) over a
 * plain TCP socket, written for tests: every call has a timeout, outgoing
 * frames are masked (switchable, to test servers), pings are answered
 * automatically (switchable), fragmented messages are reassembled, and raw or
 * malformed frames can be sent on purpose.
 *
 * Two levels read from the connection:
 *   - hx_ws_recv / hx_ws_recv_msg return the next data message from the
 *     socket as text or bytes;
 *   - the JSON functions (hx_ws_recv_json, hx_ws_expect*) parse every text
 *     message as JSON and share a backlog: frames read but not wanted by an
 *     expect call wait there, in arrival order, for the next JSON call.
 * The raw level never looks at the backlog. An observer, when set, sees
 * every JSON frame once, when it is read from the socket.
 *
 * Not thread-safe: one thread uses a hx_ws at a time. A test simulates a
 * slow client by not reading (and, for a small TCP window, by connecting
 * with hx_ws_opts.rcvbuf). */
#ifndef HX_WS_H
#define HX_WS_H

#include <cJSON.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "sl_status.h"

typedef struct hx_ws hx_ws;

typedef enum hx_ws_result {
    HX_WS_TEXT = 1, /* a complete text message (valid UTF-8) */
    HX_WS_BINARY,   /* a complete binary message */
    HX_WS_CLOSED,   /* the peer closed: see hx_ws_close_code() */
    HX_WS_TIMEOUT,  /* nothing complete arrived in time; the connection is fine */
    HX_WS_ERROR,    /* protocol violation by the peer or a local failure; the
                       connection is unusable (hx_error() says why) */
} hx_ws_result;

enum {
    HX_WS_OP_CONT = 0x0,
    HX_WS_OP_TEXT = 0x1,
    HX_WS_OP_BINARY = 0x2,
    HX_WS_OP_CLOSE = 0x8,
    HX_WS_OP_PING = 0x9,
    HX_WS_OP_PONG = 0xA,
    /* OR-ed into an opcode given to hx_ws_send_frame to set RSV1..3. */
    HX_WS_RSV1 = 0x40,
    HX_WS_RSV2 = 0x20,
    HX_WS_RSV3 = 0x10,
};

/* Connection options; zero-initialise and set what you need. */
typedef struct hx_ws_opts {
    const char *host;          /* IPv4 address; NULL: 127.0.0.1 */
    int port;                  /* required */
    const char *path;          /* NULL: "/" */
    const char *subprotocol;   /* offered in Sec-WebSocket-Protocol; NULL: none */
    const char *extra_headers; /* raw "Name: value\r\n" lines, or NULL */
    const char *source_addr;   /* local IPv4 to bind (e.g. 127.0.0.7), or NULL */
    int rcvbuf;                /* SO_RCVBUF before connecting; 0: system default */
    int timeout_ms;            /* connect + handshake; 0: 5000 */
} hx_ws_opts;

/* What the server answered to the upgrade request. */
typedef struct hx_ws_handshake {
    int status;        /* HTTP status, -1 when no valid response arrived */
    int retry_after;   /* Retry-After header as a number, -1 when absent */
    char protocol[64]; /* Sec-WebSocket-Protocol the server chose, "" if none */
    char head[4096];   /* the response head (truncated), for messages */
} hx_ws_handshake;

/* Connects to ws://host:port/path (host NULL: 127.0.0.1), offering
 * subprotocol (NULL: none), within timeout_ms. Returns 101 and sets *out on
 * success; returns the HTTP status (e.g. 503, 401) with *out untouched when
 * the server refuses the upgrade; returns -1 on a connection error, timeout
 * or invalid handshake (bad Sec-WebSocket-Accept, unoffered subprotocol).
 * hx_error() says why whenever it does not return 101. */
int hx_ws_connect(hx_ws **out, const char *host, int port, const char *path,
                  const char *subprotocol, int timeout_ms);

/* Like hx_ws_connect with all options; when hs is not NULL it receives the
 * handshake response in every case (status -1 when there was none). */
int hx_ws_connect_opts(hx_ws **out, const hx_ws_opts *opts, hx_ws_handshake *hs);

/* Reads the next data message from the socket, answering pings and
 * reassembling fragments on the way, for up to timeout_ms (0: only what is
 * already there). For TEXT and BINARY, *data_out (when not NULL) gets a
 * malloc'd copy with a NUL added (caller frees) and *len_out its length.
 * A close frame from the peer is answered (once) and gives HX_WS_CLOSED;
 * so does the end of the TCP stream (close code 1006). */
hx_ws_result hx_ws_recv_msg(hx_ws *ws, int timeout_ms, char **data_out, size_t *len_out);

/* hx_ws_recv_msg without the length: *text_out gets the message (text or
 * binary) NUL-terminated. */
hx_ws_result hx_ws_recv(hx_ws *ws, int timeout_ms, char **text_out);

/* The close code the peer sent: 1005 when its close frame had no code, 1006
 * when the TCP stream ended without a close frame, -1 when neither happened
 * yet. */
int hx_ws_close_code(const hx_ws *ws);

/* The reason text of the peer's close frame ("" when none). Owned by ws. */
const char *hx_ws_close_reason(const hx_ws *ws);

/* The result of the last read at either level (HX_WS_TEXT after a
 * successful JSON read), so a test can tell timeout from close after a NULL. */
hx_ws_result hx_ws_last_result(const hx_ws *ws);

/* Sends one text frame (masked unless masking is off). SL_OK; SL_ERR_CLOSED
 * after the connection ended; SL_ERR_IO or SL_ERR_TIMEOUT (the peer does not
 * read; the send timeout is 10 s) with hx_error(). */
sl_status hx_ws_send_text(hx_ws *ws, const char *s);

/* Formats and sends one text frame. */
sl_status hx_ws_sendf(hx_ws *ws, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Serialises j (unformatted) and sends it as one text frame. */
sl_status hx_ws_send_json(hx_ws *ws, const cJSON *j);

/* Sends one frame as given, for raw and malformed traffic: any opcode (with
 * HX_WS_RSV* bits if wanted), any payload (even invalid UTF-8 in a text
 * frame, or a control frame over 125 bytes), fin as given. Masked according
 * to hx_ws_set_masking(). */
sl_status hx_ws_send_frame(hx_ws *ws, int opcode, const void *data, size_t len, bool fin);

/* Writes bytes to the socket as they are (no framing at all). */
sl_status hx_ws_send_raw(hx_ws *ws, const void *bytes, size_t len);

/* Sends a ping with the payload (len <= 125). The pong is counted in
 * hx_ws_stats().pongs when a later read sees it. */
sl_status hx_ws_ping(hx_ws *ws, const void *payload, size_t len);

/* Masking of outgoing frames (on by default; a server must refuse unmasked
 * client frames). */
void hx_ws_set_masking(hx_ws *ws, bool on);

/* Automatic pong replies to pings (on by default). Off, pings are only
 * counted: for heartbeat-timeout tests. */
void hx_ws_set_auto_pong(hx_ws *ws, bool on);

/* Timeout for each send (default 10000 ms). */
void hx_ws_set_send_timeout(hx_ws *ws, int timeout_ms);

/* Counters since the connection opened. */
typedef struct hx_ws_stats {
    unsigned long frames;     /* frames read, control frames included */
    unsigned long messages;   /* data messages delivered (after reassembly) */
    unsigned long fragmented; /* of which arrived in more than one frame */
    unsigned long pings, pongs;
    unsigned long backlog_dropped; /* JSON frames dropped from a full backlog */
} hx_ws_stats;
hx_ws_stats hx_ws_get_stats(const hx_ws *ws);

/* The subprotocol the server chose ("" if none). Owned by ws. */
const char *hx_ws_protocol(const hx_ws *ws);

/* The socket, for tricks the API lacks (e.g. setsockopt, or poll() over
 * many connections). Owned by ws. */
int hx_ws_fd(const hx_ws *ws);

/* True when bytes already read from the socket (or JSON frames in the
 * backlog) wait to be processed: poll() on hx_ws_fd would not report them,
 * so call hx_ws_recv* with timeout 0 first. */
bool hx_ws_has_buffered(const hx_ws *ws);

/* Closes politely: sends a close frame with code (0: no code; reason may be
 * NULL) unless one was sent, waits up to 2 s for the peer's close frame
 * (discarding data), then closes the socket. Returns the peer's close code
 * as hx_ws_close_code() does. */
int hx_ws_close(hx_ws *ws, int code, const char *reason);

/* Closes the socket at once (no close frame) and frees everything, the
 * backlog included. NULL-safe. */
void hx_ws_destroy(hx_ws *ws);

/* ---- JSON level ---- */

/* Returns the next JSON frame: the oldest in the backlog, else the next
 * text message from the socket within timeout_ms. The caller owns the
 * result (cJSON_Delete). NULL on timeout, close or error (see
 * hx_ws_last_result and hx_error); a text frame that is not JSON or a
 * binary frame gives NULL with HX_WS_ERROR as the last result, but the
 * connection stays usable. */
cJSON *hx_ws_recv_json(hx_ws *ws, int timeout_ms);

/* Decides whether a frame is the wanted one. */
typedef bool (*hx_ws_match_fn)(const cJSON *frame, void *ud);

/* Returns the first frame for which match(frame, ud) holds: the oldest such
 * frame in the backlog, else the next one read from the socket within
 * timeout_ms; other frames read meanwhile go to the backlog. The caller owns
 * the result. NULL when none arrived in time or the connection ended;
 * hx_error() then says what was seen instead. */
cJSON *hx_ws_expect_fn(hx_ws *ws, hx_ws_match_fn match, void *ud, int timeout_ms);

/* hx_ws_expect_fn for the first frame whose "type" equals type. */
cJSON *hx_ws_expect_type(hx_ws *ws, const char *type, int timeout_ms);

/* hx_ws_expect_fn for the first frame that matches a JSON pattern (see
 * hx_json_match), e.g. {"type":"event","kind":"reply","to":"c-1"}. An
 * invalid pattern returns NULL at once. */
cJSON *hx_ws_expect(hx_ws *ws, const char *pattern_json, int timeout_ms);

/* Backlog inspection. Frames are in arrival order; get returns a borrowed
 * pointer (NULL when i is out of range), valid until the next call on ws. */
size_t hx_ws_backlog_count(const hx_ws *ws);
const cJSON *hx_ws_backlog_get(const hx_ws *ws, size_t i);
void hx_ws_backlog_clear(hx_ws *ws);

/* Backlog bound (default 4096 frames). When full, the oldest frame is
 * dropped and counted in hx_ws_stats.backlog_dropped. */
void hx_ws_set_backlog_max(hx_ws *ws, size_t max);

/* Called with every JSON frame as it is read from the socket by the JSON
 * level (before it is returned or put in the backlog). The frame is
 * borrowed for the duration of the call. NULL removes the observer. */
typedef void (*hx_ws_observer)(hx_ws *ws, const cJSON *frame, void *ud);
void hx_ws_set_observer(hx_ws *ws, hx_ws_observer fn, void *ud);

/* ---- helpers ---- */

/* True when value contains pattern: objects match when every key of the
 * pattern is present in value and matches (extra keys in value are fine);
 * arrays match element by element with equal length; strings, numbers,
 * booleans and null must be equal. */
bool hx_json_match(const cJSON *pattern, const cJSON *value);

/* The string at key in object o, or NULL when absent or not a string. */
const char *hx_json_str(const cJSON *o, const char *key);

/* The number at key in o, or def when absent or not a number. */
int64_t hx_json_int(const cJSON *o, const char *key, int64_t def);

/* True when key holds true in o. */
bool hx_json_true(const cJSON *o, const char *key);

/* Computes Sec-WebSocket-Accept for a Sec-WebSocket-Key (for fake servers
 * in tests); out gets 28 characters and a NUL. */
void hx_ws_accept_key(const char *key, char out[29]);

/* True when the len bytes are valid UTF-8 (no overlongs, surrogates or
 * code points above U+10FFFF). */
bool hx_utf8_valid(const void *data, size_t len);

#endif
