#include "gw_outq.h"

#include <libwebsockets.h>
#include <stdlib.h>
#include <string.h>

struct gw_qnode {
    gw_qnode *next;
    gw_buf *buf;
};

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
    gw_qnode *n;

    if (q->frames + 1 > max_frames || q->bytes + b->len > max_bytes)
        return false;
    n = malloc(sizeof(*n));
    if (n == NULL)
        return false;
    gw_buf_ref(b);
    n->buf = b;
    n->next = NULL;
    if (q->tail != NULL)
        q->tail->next = n;
    else
        q->head = n;
    q->tail = n;
    q->frames++;
    q->bytes += b->len;
    return true;
}

gw_buf *gw_outq_peek(const gw_outq *q)
{
    return q->head != NULL ? q->head->buf : NULL;
}

void gw_outq_pop(gw_outq *q)
{
    gw_qnode *n = q->head;

    if (n == NULL)
        return;
    q->head = n->next;
    if (q->head == NULL)
        q->tail = NULL;
    q->frames--;
    q->bytes -= n->buf->len;
    gw_buf_unref(n->buf);
    free(n);
}

void gw_outq_clear(gw_outq *q)
{
    while (q->head != NULL)
        gw_outq_pop(q);
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
    const gw_qnode *end = q->head;

    /* First count, so that a lone frame is not copied for nothing. */
    while (end != NULL && total + ws_frame_size(end->buf->len) <= cap) {
        total += ws_frame_size(end->buf->len);
        n++;
        end = end->next;
    }
    *nframes = n;
    if (n < 2)
        return 0;
    for (const gw_qnode *x = q->head; x != end; x = x->next) {
        off += gw_ws_text_header(dst + off, x->buf->len);
        memcpy(dst + off, x->buf->data + LWS_PRE, x->buf->len);
        off += x->buf->len;
    }
    return off;
}
