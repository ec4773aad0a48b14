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
