/* Outbound frames: reference-counted text buffers with the headroom
 * libwebsockets needs, shared by every connection a frame fans out to, and a
 * per-connection queue bounded in frames and bytes. Loop thread only. */
#ifndef GW_OUTQ_H
#define GW_OUTQ_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct gw_buf {
    int refs;
    size_t len;
    int64_t ts_ns; /* event time, for the delivery latency histogram (0: none) */
    unsigned char data[];
} gw_buf;

/* Copies len bytes of text into a new buffer with one reference, leaving
 * LWS_PRE bytes of headroom. NULL when out of memory. */
gw_buf *gw_buf_new(const char *text, size_t len);

/* Like gw_buf_new, and frees text (a malloc'd NUL-terminated string, may be
 * NULL, then NULL is returned). */
gw_buf *gw_buf_from(char *text);

/* The payload inside the buffer. */
unsigned char *gw_buf_payload(gw_buf *b);

void gw_buf_ref(gw_buf *b);

/* Drops one reference and frees the buffer with the last; NULL-safe. */
void gw_buf_unref(gw_buf *b);

/* A ring of frame pointers: no allocation per frame. The ring is made on
 * the first push and grows by doubling; emptied, a small one is freed (most
 * connections get a frame now and then and hold no memory between) and a
 * grown one is kept for the next burst, so its owner frees it with
 * gw_outq_clear. A zeroed gw_outq is empty. */
typedef struct gw_outq {
    gw_buf **ring;
    size_t cap;   /* slots in ring */
    size_t start; /* slot of the oldest frame */
    size_t frames;
    size_t bytes;
} gw_outq;

/* Appends b (taking a new reference) unless the queue would then hold more
 * than max_frames frames or max_bytes bytes: then returns false and queues
 * nothing. Also false when out of memory. */
bool gw_outq_push(gw_outq *q, gw_buf *b, size_t max_frames, size_t max_bytes);

/* The oldest frame, or NULL; the queue keeps its reference. */
gw_buf *gw_outq_peek(const gw_outq *q);

/* The i-th oldest frame (0: the oldest), or NULL; the queue keeps it. */
gw_buf *gw_outq_at(const gw_outq *q, size_t i);

/* Removes the oldest frame and drops the queue's reference. */
void gw_outq_pop(gw_outq *q);

/* Empties the queue and frees its ring. */
void gw_outq_clear(gw_outq *q);

/* The longest RFC 6455 frame header a server writes: FIN and opcode, the
 * 127 marker and a 64-bit length (no mask). */
#define GW_WS_HDR_MAX 10

/* Writes the header of an unmasked, final text frame of len payload bytes
 * into out (GW_WS_HDR_MAX bytes of room) and returns its length: 2 bytes up
 * to 125, 4 up to 65535, else 10. */
size_t gw_ws_text_header(unsigned char *out, size_t len);

/* Encodes the oldest frames of q, whole and in order, each as header and
 * payload (gw_ws_text_header), into dst while they fit in cap bytes; the
 * queue is unchanged (pop *nframes frames once they are written). Returns
 * the bytes encoded and sets *nframes. Encodes nothing and returns 0 with
 * *nframes 0 or 1 when fewer than two frames fit: one frame is better sent
 * from its own buffer than copied. */
size_t gw_outq_encode(const gw_outq *q, unsigned char *dst, size_t cap, size_t *nframes);

#endif
