/* Client side of RFC 6455 WebSocket framing, without any I/O.
 *
 * The bench owns its sockets; these functions only build and parse bytes:
 * the opening handshake request, the server's 101 response, masked client
 * frames and unmasked server frames. Nothing here allocates.
 */
#ifndef SB_WS_H
#define SB_WS_H

#include <stddef.h>
#include <stdint.h>

#include "sl_status.h"

enum {
    SB_WS_CONT = 0x0,
    SB_WS_TEXT = 0x1,
    SB_WS_BINARY = 0x2,
    SB_WS_CLOSE = 0x8,
    SB_WS_PING = 0x9,
    SB_WS_PONG = 0xA,
};

/* Largest frame header a client writes: 2 + 8 length bytes + 4 mask bytes. */
#define SB_WS_MAX_HEADER 14

/* One parsed frame; payload points into the caller's buffer and is already
 * unmasked in place when the server (wrongly) masked it. */
typedef struct sb_ws_frame {
    int fin;
    int opcode;
    const uint8_t *payload;
    size_t len;
} sb_ws_frame;

/* Fills key (at least 25 bytes) with a fresh base64 Sec-WebSocket-Key made
 * from 16 bytes of seed-derived randomness. */
void sb_ws_make_key(char *key, uint64_t *seed);

/* Writes the HTTP upgrade request for host:port/path offering subprotocol
 * proto (NULL or "" for none) into out. Returns the length, or 0 when it does
 * not fit in cap. */
size_t sb_ws_request(char *out, size_t cap, const char *host, int port, const char *path,
                     const char *key, const char *proto);

/* Computes the Sec-WebSocket-Accept value for key into out (29 bytes). */
void sb_ws_accept_for(const char *key, char *out);

/* Parses the server's handshake response at the start of buf[0..len).
 * Returns SL_ERR_TIMEOUT when the header is not complete yet (read more),
 * SL_OK for a valid 101 with the right Sec-WebSocket-Accept (and *consumed
 * set to the header length), SL_ERR_FULL for an HTTP 503/429 refusal, and
 * SL_ERR_PROTO for anything else. *status receives the HTTP status when one
 * was parsed. */
sl_status sb_ws_parse_response(const char *buf, size_t len, const char *key, size_t *consumed,
                               int *status);

/* Writes a masked client frame (FIN set) with the given opcode and payload
 * into out, which must hold len + SB_WS_MAX_HEADER bytes. The mask comes from
 * *seed. Returns the frame length. */
size_t sb_ws_encode(uint8_t *out, int opcode, const void *payload, size_t len, uint64_t *seed);

/* Writes only the header of a masked frame of len bytes into hdr and returns
 * its length; mask receives the 4 mask bytes, to be applied with
 * sb_ws_mask(). */
size_t sb_ws_encode_header(uint8_t *hdr, int opcode, size_t len, uint8_t mask[4], uint64_t *seed);

/* XORs buf with the mask, starting at mask offset off. */
void sb_ws_mask(uint8_t *buf, size_t len, const uint8_t mask[4], size_t off);

/* Parses one frame at the start of buf[0..len) (the buffer is writable so a
 * masked server frame can be unmasked in place). Returns the number of bytes
 * the frame occupies, 0 when more bytes are needed, or -1 for a protocol
 * error (reserved bits, bad control frame, length over max_len). */
long sb_ws_parse_frame(uint8_t *buf, size_t len, size_t max_len, sb_ws_frame *f);

/* A fast non-cryptographic generator (xorshift64*), for masks and jitter. */
uint64_t sb_rand(uint64_t *seed);

#endif
