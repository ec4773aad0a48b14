#include "gw_outq.h"

#include <libwebsockets.h>
#include <stdlib.h>
#include <string.h>

/* A ring this small is freed when the queue empties. */
#define OUTQ_KEEP_MIN 8
#define OUTQ_CAP0     4

gw_buf *gw_buf_new(const char *text, size_t len)
{
    gw_buf *b = malloc(sizeof(*b) + LWS_PRE + len + 1);

    if (b == NULL)
        return NULL;
    b->refs = 1;
    b->len = len;
    b->ts_ns = 0;
    memcpy(b->data + LWS_PRE, text, len);
    b->data[LWS_PRE + len] = '\0';
    return b;
}

gw_buf *gw_buf_from(char *text)
{
    gw_buf *b;

    if (text == NULL)
        return NULL;
    b = gw_buf_new(text, strlen(text));
    free(text);
    return b;
}

unsigned char *gw_buf_payload(gw_buf *b)
{
    return b->data + LWS_PRE;
}

void gw_buf_ref(gw_buf *b)
{
    b->refs++;
}

void gw_buf_unref(gw_buf *b)
{
    if (b != NULL && --b->refs == 0)
        free(b);
}

bool gw_outq_push(gw_outq *q, gw_buf *b, size_t max_frames, size_t max_bytes)
{
    if (q->frames + 1 > max_frames || q->bytes + b->len > max_bytes)
        return false;
    if (q->frames == q->cap) {
        size_t ncap = q->cap > 0 ? q->cap * 2 : OUTQ_CAP0;
        gw_buf **nr = malloc(ncap * sizeof(*nr));
        if (nr == NULL)
            return false;
        for (size_t i = 0; i < q->frames; i++)
            nr[i] = q->ring[(q->start + i) % q->cap];
        free(q->ring);
        q->ring = nr;
        q->cap = ncap;
        q->start = 0;
    }
    gw_buf_ref(b);
    q->ring[(q->start + q->frames) % q->cap] = b;
    q->frames++;
    q->bytes += b->len;
    return true;
}

gw_buf *gw_outq_peek(const gw_outq *q)
{
    return q->frames > 0 ? q->ring[q->start] : NULL;
}

gw_buf *gw_outq_at(const gw_outq *q, size_t i)
{
    return i < q->frames ? q->ring[(q->start + i) % q->cap] : NULL;
}

void gw_outq_pop(gw_outq *q)
{
    gw_buf *b;

    if (q->frames == 0)
        return;
    b = q->ring[q->start];
    q->start = (q->start + 1) % q->cap;
    q->frames--;
    q->bytes -= b->len;
    gw_buf_unref(b);
    if (q->frames == 0) {
        q->start = 0;
        if (q->cap < OUTQ_KEEP_MIN) {
            free(q->ring);
            q->ring = NULL;
            q->cap = 0;
        }
    }
}

void gw_outq_clear(gw_outq *q)
{
    while (q->frames > 0)
        gw_outq_pop(q);
    free(q->ring);
    q->ring = NULL;
    q->cap = 0;
    q->start = 0;
}

size_t gw_ws_text_header(unsigned char *out, size_t len)
{
    out[0] = 0x81; /* FIN, text; RSV bits clear: never compressed */
    if (len < 126) {
        out[1] = (unsigned char)len;
        return 2;
    }
    if (len <= 0xffff) {
        out[1] = 126;
        out[2] = (unsigned char)(len >> 8);
        out[3] = (unsigned char)len;
        return 4;
    }
    out[1] = 127;
    for (int i = 0; i < 8; i++)
        out[2 + i] = (unsigned char)((uint64_t)len >> (56 - 8 * i));
    return 10;
}

static size_t ws_frame_size(size_t len)
{
    return (len < 126 ? 2 : len <= 0xffff ? 4 : 10) + len;
}

size_t gw_outq_encode(const gw_outq *q, unsigned char *dst, size_t cap, size_t *nframes)
{
    size_t total = 0, n = 0, off = 0;

    /* First count, so that a lone frame is not copied for nothing. */
    while (n < q->frames) {
        size_t fs = ws_frame_size(q->ring[(q->start + n) % q->cap]->len);
        if (total + fs > cap)
            break;
        total += fs;
        n++;
    }
    *nframes = n;
    if (n < 2)
        return 0;
    for (size_t i = 0; i < n; i++) {
        const gw_buf *b = q->ring[(q->start + i) % q->cap];
        off += gw_ws_text_header(dst + off, b->len);
        memcpy(dst + off, b->data + LWS_PRE, b->len);
        off += b->len;
    }
    return off;
}
