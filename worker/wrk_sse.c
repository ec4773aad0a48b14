#include "wrk_sse.h"

#include <stdlib.h>
#include <string.h>

struct wrk_sse {
    wrk_sse_fn fn;
    void *ud;
    size_t max; /* bound on line + data + event type bytes held at once */
    char *line; /* a line split across feeds; complete lines are parsed in place */
    size_t line_len, line_cap;
    char *data; /* joined data lines, each followed by '\n' */
    size_t data_len, data_cap;
    char *event;
    size_t event_len, event_cap;
    int skip_lf;  /* the last byte was '\r': a '\n' right after it is the same line end */
    int at_start; /* the first line may begin with a byte-order mark */
    sl_status err;
};

/* Grows *buf to hold at least need bytes; the callers keep need within max + 1. */
static sl_status reserve(char **buf, size_t *cap, size_t need)
{
    if (need <= *cap)
        return SL_OK;
    size_t ncap = *cap ? *cap : 256;
    while (ncap < need)
        ncap *= 2;
    char *nb = realloc(*buf, ncap);
    if (!nb)
        return SL_ERR_NOMEM;
    *buf = nb;
    *cap = ncap;
    return SL_OK;
}

static size_t held(const wrk_sse *p)
{
    return p->line_len + p->data_len + p->event_len;
}

static sl_status dispatch(wrk_sse *p)
{
    if (p->data_len == 0) {
        p->event_len = 0;
        return SL_OK;
    }
    /* The data buffer always has room for the NUL: it replaces the last '\n'. */
    p->data_len--;
    p->data[p->data_len] = '\0';
    const char *ev = "message";
    if (p->event_len > 0) {
        sl_status st = reserve(&p->event, &p->event_cap, p->event_len + 1);
        if (st != SL_OK)
            return st;
        p->event[p->event_len] = '\0';
        ev = p->event;
    }
    int stop = p->fn(p->ud, ev, p->data, p->data_len);
    p->data_len = 0;
    p->event_len = 0;
    return stop ? SL_ERR_CLOSED : SL_OK;
}

static sl_status process_line(wrk_sse *p, const char *s, size_t n)
{
    if (p->at_start) {
        p->at_start = 0;
        if (n >= 3 && memcmp(s, "\xEF\xBB\xBF", 3) == 0) {
            s += 3;
            n -= 3;
        }
    }
    if (n == 0)
        return dispatch(p);
    if (s[0] == ':')
        return SL_OK;

    const char *colon = memchr(s, ':', n);
    size_t flen = colon ? (size_t)(colon - s) : n;
    const char *v = colon ? colon + 1 : s + n;
    size_t vlen = (size_t)(s + n - v);
    if (vlen > 0 && v[0] == ' ') {
        v++;
        vlen--;
    }

    if (flen == 4 && memcmp(s, "data", 4) == 0) {
        size_t need = p->data_len + vlen + 1;
        if (need + p->event_len > p->max)
            return SL_ERR_FULL;
        sl_status st = reserve(&p->data, &p->data_cap, need + 1);
        if (st != SL_OK)
            return st;
        if (vlen > 0)
            memcpy(p->data + p->data_len, v, vlen);
        p->data[need - 1] = '\n';
        p->data_len = need;
    } else if (flen == 5 && memcmp(s, "event", 5) == 0) {
        if (p->data_len + vlen > p->max)
            return SL_ERR_FULL;
        sl_status st = reserve(&p->event, &p->event_cap, vlen + 1);
        if (st != SL_OK)
            return st;
        if (vlen > 0)
            memcpy(p->event, v, vlen);
        p->event_len = vlen;
    }
    /* "id", "retry" and unknown fields carry nothing this client uses. */
    return SL_OK;
}

static sl_status line_append(wrk_sse *p, const char *s, size_t n)
{
    if (n == 0)
        return SL_OK;
    if (held(p) + n > p->max)
        return SL_ERR_FULL;
    sl_status st = reserve(&p->line, &p->line_cap, p->line_len + n);
    if (st != SL_OK)
        return st;
    memcpy(p->line + p->line_len, s, n);
    p->line_len += n;
    return SL_OK;
}

sl_status wrk_sse_create(wrk_sse **out, size_t max_event, wrk_sse_fn fn, void *ud)
{
    if (!out || !fn)
        return SL_ERR_INVAL;
    wrk_sse *p = calloc(1, sizeof(*p));
    if (!p)
        return SL_ERR_NOMEM;
    p->fn = fn;
    p->ud = ud;
    p->max = max_event ? max_event : WRK_SSE_MAX_EVENT_DEFAULT;
    p->at_start = 1;
    *out = p;
    return SL_OK;
}

void wrk_sse_destroy(wrk_sse *p)
{
    if (!p)
        return;
    free(p->line);
    free(p->data);
    free(p->event);
    free(p);
}

sl_status wrk_sse_feed(wrk_sse *p, const char *buf, size_t len)
{
    if (!p || (!buf && len))
        return SL_ERR_INVAL;
    if (p->err != SL_OK)
        return p->err;
    size_t i = 0;
    while (i < len) {
        if (p->skip_lf) {
            p->skip_lf = 0;
            if (buf[i] == '\n') {
                i++;
                continue;
            }
        }
        size_t j = i;
        while (j < len && buf[j] != '\n' && buf[j] != '\r')
            j++;
        sl_status st;
        if (j == len) {
            st = line_append(p, buf + i, len - i);
            if (st != SL_OK)
                return p->err = st;
            break;
        }
        if (buf[j] == '\r')
            p->skip_lf = 1;
        if (p->line_len == 0) {
            if (held(p) + (j - i) > p->max)
                return p->err = SL_ERR_FULL;
            st = process_line(p, buf + i, j - i);
        } else {
            st = line_append(p, buf + i, j - i);
            if (st == SL_OK) {
                st = process_line(p, p->line, p->line_len);
                p->line_len = 0;
            }
        }
        if (st != SL_OK)
            return p->err = st;
        i = j + 1;
    }
    return SL_OK;
}

sl_status wrk_sse_finish(wrk_sse *p)
{
    if (!p)
        return SL_ERR_INVAL;
    if (p->err != SL_OK)
        return p->err;
    p->skip_lf = 0;
    sl_status st = SL_OK;
    if (p->line_len > 0) {
        st = process_line(p, p->line, p->line_len);
        p->line_len = 0;
    }
    if (st == SL_OK)
        st = dispatch(p);
    if (st != SL_OK)
        p->err = st;
    return st;
}

int wrk_sse_pending(const wrk_sse *p)
{
    return p && held(p) > 0;
}

void wrk_sse_reset(wrk_sse *p)
{
    if (!p)
        return;
    p->line_len = 0;
    p->data_len = 0;
    p->event_len = 0;
    p->skip_lf = 0;
    p->at_start = 1;
    p->err = SL_OK;
}
