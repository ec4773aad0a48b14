#include "hx_ws.h"

#include <errno.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "hx_http.h"
#include "hx_port.h"
#include "hx_util.h"

#define HX_WS_GUID        "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#define HX_WS_MAX_MESSAGE ((size_t)64 << 20)

struct hx_ws {
    int fd;
    bool mask;
    bool auto_pong;
    int send_timeout_ms;
    char protocol[64];
    unsigned char *rbuf; /* bytes read but not yet parsed */
    size_t rlen, rcap;
    int frag_op; /* opcode of the message being reassembled, 0 when none */
    unsigned long frag_frames;
    unsigned char *frag;
    size_t flen, fcap;
    bool close_sent;
    bool closed; /* close frame received or stream ended */
    bool broken; /* protocol error: nothing more can be read */
    int close_code;
    char close_reason[128];
    hx_ws_result last;
    hx_ws_stats stats;
    cJSON **backlog;
    size_t bl_count, bl_cap, bl_max;
    hx_ws_observer obs;
    void *obs_ud;
};

/* ---- helpers ---- */

void hx_ws_accept_key(const char *key, char out[29])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    char *cat = hx_strf("%s%s", key, HX_WS_GUID);
    EVP_Digest(cat, strlen(cat), md, &mdlen, EVP_sha1(), NULL);
    free(cat);
    EVP_EncodeBlock((unsigned char *)out, md, (int)mdlen);
    out[28] = '\0';
}

bool hx_utf8_valid(const void *data, size_t len)
{
    const unsigned char *s = data;
    size_t i = 0;
    while (i < len) {
        unsigned char c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t n;
        uint32_t cp;
        if (c >= 0xC2 && c <= 0xDF) {
            n = 1;
            cp = c & 0x1F;
        } else if (c >= 0xE0 && c <= 0xEF) {
            n = 2;
            cp = c & 0x0F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            n = 3;
            cp = c & 0x07;
        } else {
            return false;
        }
        if (i + n >= len)
            return false;
        for (size_t k = 1; k <= n; k++) {
            if ((s[i + k] & 0xC0) != 0x80)
                return false;
            cp = (cp << 6) | (s[i + k] & 0x3F);
        }
        if ((n == 2 && cp < 0x800) || (n == 3 && (cp < 0x10000 || cp > 0x10FFFF)) ||
            (cp >= 0xD800 && cp <= 0xDFFF))
            return false;
        i += n + 1;
    }
    return true;
}

bool hx_json_match(const cJSON *pattern, const cJSON *value)
{
    if (pattern == NULL || value == NULL)
        return false;
    if (cJSON_IsObject(pattern)) {
        if (!cJSON_IsObject(value))
            return false;
        const cJSON *c;
        cJSON_ArrayForEach(c, pattern)
        {
            if (!hx_json_match(c, cJSON_GetObjectItemCaseSensitive(value, c->string)))
                return false;
        }
        return true;
    }
    if (cJSON_IsArray(pattern)) {
        if (!cJSON_IsArray(value) || cJSON_GetArraySize(pattern) != cJSON_GetArraySize(value))
            return false;
        const cJSON *p = pattern->child, *v = value->child;
        for (; p != NULL && v != NULL; p = p->next, v = v->next) {
            if (!hx_json_match(p, v))
                return false;
        }
        return true;
    }
    if (cJSON_IsString(pattern))
        return cJSON_IsString(value) && strcmp(pattern->valuestring, value->valuestring) == 0;
    if (cJSON_IsNumber(pattern))
        return cJSON_IsNumber(value) && pattern->valuedouble == value->valuedouble;
    if (cJSON_IsBool(pattern))
        return cJSON_IsBool(value) && cJSON_IsTrue(pattern) == cJSON_IsTrue(value);
    if (cJSON_IsNull(pattern))
        return cJSON_IsNull(value);
    return false;
}

const char *hx_json_str(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

int64_t hx_json_int(const cJSON *o, const char *key, int64_t def)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsNumber(v) ? (int64_t)v->valuedouble : def;
}

bool hx_json_true(const cJSON *o, const char *key)
{
    return cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(o, key));
}

static int hx__grow(unsigned char **buf, size_t *cap, size_t need)
{
    if (need <= *cap)
        return 0;
    size_t nc = *cap ? *cap : 4096;
    while (nc < need)
        nc *= 2;
    unsigned char *nb = realloc(*buf, nc);
    if (nb == NULL)
        return -1;
    *buf = nb;
    *cap = nc;
    return 0;
}

/* ---- connect ---- */

int hx_ws_connect_opts(hx_ws **out, const hx_ws_opts *o, hx_ws_handshake *hs)
{
    hx_ws_handshake local;
    if (hs == NULL)
        hs = &local;
    memset(hs, 0, sizeof *hs);
    hs->status = -1;
    hs->retry_after = -1;
    int timeout = o->timeout_ms > 0 ? o->timeout_ms : 5000;
    int64_t deadline = hx_now_ms() + timeout;
    const char *host = o->host ? o->host : "127.0.0.1";
    char *req = NULL, *head = NULL, *extra = NULL;
    size_t extra_len = 0;
    hx_ws *ws = NULL;
    int ret = -1;
    int fd = hx_tcp_connect_ex(host, o->port, o->source_addr, o->rcvbuf, timeout);
    if (fd < 0)
        goto cleanup;

    unsigned char nonce[16];
    char key[32], want[29];
    RAND_bytes(nonce, sizeof nonce);
    EVP_EncodeBlock((unsigned char *)key, nonce, sizeof nonce);
    hx_ws_accept_key(key, want);
    char *proto = o->subprotocol ? hx_strf("Sec-WebSocket-Protocol: %s\r\n", o->subprotocol)
                                 : hx_strf("%s", "");
    req = hx_strf("GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n"
                  "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
                  "Sec-WebSocket-Version: 13\r\n%s%s\r\n",
                  o->path ? o->path : "/", host, o->port, key, proto,
                  o->extra_headers ? o->extra_headers : "");
    free(proto);
    if (hx__io_write_all(fd, req, strlen(req), deadline) != 0)
        goto cleanup;
    if (hx__http_read_head(fd, deadline, &head, &extra, &extra_len) != 0)
        goto cleanup;
    snprintf(hs->head, sizeof hs->head, "%s", head);
    hs->status = hx__http_status(head);
    char val[256];
    if (hx_http_header(head, "Retry-After", val, sizeof val)) {
        char *end = NULL;
        long ra = strtol(val, &end, 10);
        if (end != val && *end == '\0' && ra >= 0)
            hs->retry_after = (int)ra;
    }
    hx_http_header(head, "Sec-WebSocket-Protocol", hs->protocol, sizeof hs->protocol);
    if (hs->status < 0) {
        hx_set_error("ws upgrade: malformed response: %.200s", head);
        goto cleanup;
    }
    if (hs->status != 101) {
        hx_set_error("ws upgrade refused: HTTP %d (Retry-After %d): %.300s", hs->status,
                     hs->retry_after, head);
        ret = hs->status;
        goto cleanup;
    }
    if (!hx_http_header(head, "Upgrade", val, sizeof val) || strcasecmp(val, "websocket") != 0) {
        hx_set_error("ws upgrade: 101 without Upgrade: websocket");
        goto cleanup;
    }
    if (!hx_http_header(head, "Connection", val, sizeof val) ||
        strcasestr(val, "upgrade") == NULL) {
        hx_set_error("ws upgrade: 101 without Connection: Upgrade");
        goto cleanup;
    }
    if (!hx_http_header(head, "Sec-WebSocket-Accept", val, sizeof val) || strcmp(val, want) != 0) {
        hx_set_error("ws upgrade: bad Sec-WebSocket-Accept (want %s)", want);
        goto cleanup;
    }
    if (hs->protocol[0] != '\0' &&
        (o->subprotocol == NULL || strcmp(hs->protocol, o->subprotocol) != 0)) {
        hx_set_error("ws upgrade: server chose subprotocol %s that was not offered", hs->protocol);
        goto cleanup;
    }
    ws = calloc(1, sizeof *ws);
    if (ws == NULL)
        goto cleanup;
    ws->fd = fd;
    ws->mask = true;
    ws->auto_pong = true;
    ws->send_timeout_ms = 10000;
    ws->close_code = -1;
    ws->bl_max = 4096;
    ws->last = HX_WS_TIMEOUT;
    memcpy(ws->protocol, hs->protocol, sizeof ws->protocol);
    if (extra_len > 0) {
        if (hx__grow(&ws->rbuf, &ws->rcap, extra_len) != 0) {
            free(ws);
            ws = NULL;
            goto cleanup;
        }
        memcpy(ws->rbuf, extra, extra_len);
        ws->rlen = extra_len;
    }
    fd = -1;
    *out = ws;
    ret = 101;
cleanup:
    if (fd >= 0)
        close(fd);
    free(req);
    free(head);
    free(extra);
    return ret;
}

int hx_ws_connect(hx_ws **out, const char *host, int port, const char *path,
                  const char *subprotocol, int timeout_ms)
{
    hx_ws_opts o = {.host = host,
                    .port = port,
                    .path = path,
                    .subprotocol = subprotocol,
                    .timeout_ms = timeout_ms};
    return hx_ws_connect_opts(out, &o, NULL);
}

/* ---- send ---- */

sl_status hx_ws_send_frame(hx_ws *ws, int opcode, const void *data, size_t len, bool fin)
{
    if (ws == NULL || ws->fd < 0) {
        hx_set_error("ws send: connection closed");
        return SL_ERR_CLOSED;
    }
    unsigned char hdr[14];
    size_t hl = 0;
    hdr[hl++] = (unsigned char)((fin ? 0x80 : 0) | (opcode & 0x7F));
    unsigned char mbit = ws->mask ? 0x80 : 0;
    if (len < 126) {
        hdr[hl++] = (unsigned char)(mbit | len);
    } else if (len <= 0xFFFF) {
        hdr[hl++] = mbit | 126;
        hdr[hl++] = (unsigned char)(len >> 8);
        hdr[hl++] = (unsigned char)len;
    } else {
        hdr[hl++] = mbit | 127;
        for (int i = 7; i >= 0; i--)
            hdr[hl++] = (unsigned char)((uint64_t)len >> (8 * i));
    }
    unsigned char mkey[4] = {0};
    if (ws->mask) {
        RAND_bytes(mkey, sizeof mkey);
        memcpy(hdr + hl, mkey, 4);
        hl += 4;
    }
    unsigned char *frame = malloc(hl + len);
    if (frame == NULL)
        return SL_ERR_NOMEM;
    memcpy(frame, hdr, hl);
    const unsigned char *src = data;
    for (size_t i = 0; i < len; i++)
        frame[hl + i] = ws->mask ? (unsigned char)(src[i] ^ mkey[i & 3]) : src[i];
    int rc = hx__io_write_all(ws->fd, frame, hl + len, hx_now_ms() + ws->send_timeout_ms);
    free(frame);
    if (rc != 0)
        return strstr(hx_error(), "timed out") ? SL_ERR_TIMEOUT : SL_ERR_IO;
    if ((opcode & 0x0F) == HX_WS_OP_CLOSE)
        ws->close_sent = true;
    return SL_OK;
}

sl_status hx_ws_send_text(hx_ws *ws, const char *s)
{
    return hx_ws_send_frame(ws, HX_WS_OP_TEXT, s, strlen(s), true);
}

sl_status hx_ws_sendf(hx_ws *ws, const char *fmt, ...)
{
    va_list ap;
    char *s = NULL;
    va_start(ap, fmt);
    int n = vasprintf(&s, fmt, ap);
    va_end(ap);
    if (n < 0)
        return SL_ERR_NOMEM;
    sl_status st = hx_ws_send_text(ws, s);
    free(s);
    return st;
}

sl_status hx_ws_send_json(hx_ws *ws, const cJSON *j)
{
    char *s = cJSON_PrintUnformatted(j);
    if (s == NULL)
        return SL_ERR_NOMEM;
    sl_status st = hx_ws_send_text(ws, s);
    cJSON_free(s);
    return st;
}

sl_status hx_ws_send_raw(hx_ws *ws, const void *bytes, size_t len)
{
    if (ws == NULL || ws->fd < 0)
        return SL_ERR_CLOSED;
    if (hx__io_write_all(ws->fd, bytes, len, hx_now_ms() + ws->send_timeout_ms) != 0)
        return SL_ERR_IO;
    return SL_OK;
}

sl_status hx_ws_ping(hx_ws *ws, const void *payload, size_t len)
{
    if (len > 125)
        return SL_ERR_INVAL;
    return hx_ws_send_frame(ws, HX_WS_OP_PING, payload, len, true);
}

static void hx__send_close(hx_ws *ws, int code, const char *reason)
{
    unsigned char p[125];
    size_t len = 0;
    if (code > 0) {
        p[0] = (unsigned char)(code >> 8);
        p[1] = (unsigned char)code;
        len = 2;
        if (reason != NULL) {
            size_t rl = strlen(reason);
            if (rl > sizeof p - 2)
                rl = sizeof p - 2;
            memcpy(p + 2, reason, rl);
            len += rl;
        }
    }
    hx_ws_send_frame(ws, HX_WS_OP_CLOSE, p, len, true);
    ws->close_sent = true;
}

/* ---- receive ---- */

static hx_ws_result hx__fail(hx_ws *ws, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static hx_ws_result hx__fail(hx_ws *ws, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    hx_set_error("ws: %s", msg);
    ws->broken = true;
    ws->last = HX_WS_ERROR;
    return HX_WS_ERROR;
}

static hx_ws_result hx__deliver(hx_ws *ws, int op, const unsigned char *p, size_t len,
                                char **data_out, size_t *len_out)
{
    if (op == HX_WS_OP_TEXT && !hx_utf8_valid(p, len))
        return hx__fail(ws, "server sent a text message that is not valid UTF-8 (%zu bytes)", len);
    ws->stats.messages++;
    if (data_out != NULL) {
        char *copy = malloc(len + 1);
        if (copy == NULL)
            return hx__fail(ws, "out of memory for a %zu-byte message", len);
        memcpy(copy, p, len);
        copy[len] = '\0';
        *data_out = copy;
    }
    if (len_out != NULL)
        *len_out = len;
    ws->last = op == HX_WS_OP_TEXT ? HX_WS_TEXT : HX_WS_BINARY;
    return ws->last;
}

/* Parses one complete frame from rbuf. Returns 1 when it produced a
 * message or a close (*res set), 0 when the frame was consumed without a
 * message (control or fragment) or more bytes are needed (*need_more set),
 * -1 after a protocol error (*res set). */
static int hx__parse_one(hx_ws *ws, hx_ws_result *res, bool *need_more, char **data_out,
                         size_t *len_out)
{
    *need_more = false;
    if (ws->rlen < 2) {
        *need_more = true;
        return 0;
    }
    const unsigned char *b = ws->rbuf;
    bool fin = b[0] & 0x80;
    int rsv = b[0] & 0x70;
    int op = b[0] & 0x0F;
    bool masked = b[1] & 0x80;
    uint64_t plen = b[1] & 0x7F;
    size_t hl = 2;
    if (plen == 126) {
        if (ws->rlen < 4) {
            *need_more = true;
            return 0;
        }
        plen = ((uint64_t)b[2] << 8) | b[3];
        hl = 4;
    } else if (plen == 127) {
        if (ws->rlen < 10) {
            *need_more = true;
            return 0;
        }
        plen = 0;
        for (int i = 0; i < 8; i++)
            plen = (plen << 8) | b[2 + i];
        hl = 10;
    }
    if (masked)
        hl += 4;
    if (plen > HX_WS_MAX_MESSAGE) {
        *res = hx__fail(ws, "server frame of %llu bytes is over the harness limit",
                        (unsigned long long)plen);
        return -1;
    }
    if (ws->rlen < hl + plen) {
        *need_more = true;
        return 0;
    }
    ws->stats.frames++;
    if (rsv != 0) {
        *res = hx__fail(ws, "server frame with RSV bits 0x%x (no extension negotiated)", rsv);
        return -1;
    }
    if (masked) {
        *res = hx__fail(ws, "server sent a masked frame (RFC 6455 5.1)");
        return -1;
    }
    const unsigned char *p = b + hl;
    size_t len = (size_t)plen;
    int ret = 0;
    if (op & 0x08) {
        if (!fin || len > 125) {
            *res =
                hx__fail(ws, "server control frame opcode 0x%x fragmented or over 125 bytes", op);
            return -1;
        }
        if (op == HX_WS_OP_PING) {
            ws->stats.pings++;
            if (ws->auto_pong && !ws->close_sent)
                hx_ws_send_frame(ws, HX_WS_OP_PONG, p, len, true);
        } else if (op == HX_WS_OP_PONG) {
            ws->stats.pongs++;
        } else if (op == HX_WS_OP_CLOSE) {
            if (len == 1) {
                *res = hx__fail(ws, "server close frame with a 1-byte payload");
                return -1;
            }
            ws->close_code = len >= 2 ? ((int)p[0] << 8 | p[1]) : 1005;
            size_t rl = len >= 2 ? len - 2 : 0;
            if (rl >= sizeof ws->close_reason)
                rl = sizeof ws->close_reason - 1;
            memcpy(ws->close_reason, p + 2, rl);
            ws->close_reason[rl] = '\0';
            ws->closed = true;
            if (!ws->close_sent)
                hx__send_close(ws, ws->close_code == 1005 ? 0 : ws->close_code, NULL);
            ws->last = HX_WS_CLOSED;
            *res = HX_WS_CLOSED;
            ret = 1;
        } else {
            *res = hx__fail(ws, "server sent reserved control opcode 0x%x", op);
            return -1;
        }
    } else if (op == HX_WS_OP_CONT) {
        if (ws->frag_op == 0) {
            *res = hx__fail(ws, "continuation frame without a message to continue");
            return -1;
        }
        if (ws->flen + len > HX_WS_MAX_MESSAGE ||
            hx__grow(&ws->frag, &ws->fcap, ws->flen + len + 1) != 0) {
            *res = hx__fail(ws, "fragmented message too large");
            return -1;
        }
        memcpy(ws->frag + ws->flen, p, len);
        ws->flen += len;
        ws->frag_frames++;
        if (fin) {
            int fop = ws->frag_op;
            ws->frag_op = 0;
            ws->stats.fragmented++;
            *res = hx__deliver(ws, fop, ws->frag, ws->flen, data_out, len_out);
            ws->flen = 0;
            ret = *res == HX_WS_ERROR ? -1 : 1;
        }
    } else if (op == HX_WS_OP_TEXT || op == HX_WS_OP_BINARY) {
        if (ws->frag_op != 0) {
            *res = hx__fail(ws, "new data frame inside a fragmented message");
            return -1;
        }
        if (fin) {
            *res = hx__deliver(ws, op, p, len, data_out, len_out);
            ret = *res == HX_WS_ERROR ? -1 : 1;
        } else {
            if (hx__grow(&ws->frag, &ws->fcap, len + 1) != 0) {
                *res = hx__fail(ws, "out of memory");
                return -1;
            }
            memcpy(ws->frag, p, len);
            ws->flen = len;
            ws->frag_op = op;
            ws->frag_frames = 1;
        }
    } else {
        *res = hx__fail(ws, "server sent reserved data opcode 0x%x", op);
        return -1;
    }
    /* Consume the frame; give back big buffers once idle. */
    memmove(ws->rbuf, ws->rbuf + hl + len, ws->rlen - hl - len);
    ws->rlen -= hl + len;
    if (ws->rlen == 0 && ws->rcap > 65536) {
        free(ws->rbuf);
        ws->rbuf = NULL;
        ws->rcap = 0;
    }
    if (ws->frag_op == 0 && ws->fcap > 65536) {
        free(ws->frag);
        ws->frag = NULL;
        ws->fcap = 0;
    }
    return ret;
}

hx_ws_result hx_ws_recv_msg(hx_ws *ws, int timeout_ms, char **data_out, size_t *len_out)
{
    if (ws == NULL)
        return HX_WS_ERROR;
    if (ws->broken) {
        hx_set_error("ws: connection unusable after an earlier protocol error");
        return ws->last = HX_WS_ERROR;
    }
    if (ws->closed || ws->fd < 0) {
        hx_set_error("ws: connection closed (code %d)", ws->close_code);
        return ws->last = HX_WS_CLOSED;
    }
    int64_t deadline = hx_now_ms() + (timeout_ms > 0 ? timeout_ms : 0);
    for (int i = 0; i < 100000000; i++) {
        hx_ws_result res = HX_WS_TIMEOUT;
        bool need_more = false;
        int r = hx__parse_one(ws, &res, &need_more, data_out, len_out);
        if (r != 0)
            return res;
        if (!need_more)
            continue;
        /* Small steps for small traffic (tests may hold thousands of
         * connections), geometric growth for large frames. */
        if (hx__grow(&ws->rbuf, &ws->rcap, ws->rlen + (ws->rlen < 4096 ? 4096 : ws->rlen)) != 0)
            return hx__fail(ws, "out of memory");
        ssize_t n = hx__io_read(ws->fd, ws->rbuf + ws->rlen, ws->rcap - ws->rlen, deadline);
        if (n == -2) {
            hx_set_error("ws: nothing received within %d ms", timeout_ms);
            return ws->last = HX_WS_TIMEOUT;
        }
        if (n < 0)
            return hx__fail(ws, "read failed: %s", hx_error());
        if (n == 0) {
            ws->closed = true;
            if (ws->close_code < 0)
                ws->close_code = 1006;
            hx_set_error("ws: connection ended without a close frame (1006)");
            return ws->last = HX_WS_CLOSED;
        }
        ws->rlen += (size_t)n;
    }
    return hx__fail(ws, "receive loop bound reached");
}

hx_ws_result hx_ws_recv(hx_ws *ws, int timeout_ms, char **text_out)
{
    return hx_ws_recv_msg(ws, timeout_ms, text_out, NULL);
}

int hx_ws_close_code(const hx_ws *ws)
{
    return ws ? ws->close_code : -1;
}

const char *hx_ws_close_reason(const hx_ws *ws)
{
    return ws ? ws->close_reason : "";
}

hx_ws_result hx_ws_last_result(const hx_ws *ws)
{
    return ws ? ws->last : HX_WS_ERROR;
}

void hx_ws_set_masking(hx_ws *ws, bool on)
{
    ws->mask = on;
}

void hx_ws_set_auto_pong(hx_ws *ws, bool on)
{
    ws->auto_pong = on;
}

void hx_ws_set_send_timeout(hx_ws *ws, int timeout_ms)
{
    ws->send_timeout_ms = timeout_ms > 0 ? timeout_ms : 1;
}

hx_ws_stats hx_ws_get_stats(const hx_ws *ws)
{
    return ws->stats;
}

const char *hx_ws_protocol(const hx_ws *ws)
{
    return ws ? ws->protocol : "";
}

int hx_ws_fd(const hx_ws *ws)
{
    return ws ? ws->fd : -1;
}

bool hx_ws_has_buffered(const hx_ws *ws)
{
    return ws != NULL && (ws->rlen > 0 || ws->bl_count > 0);
}

int hx_ws_close(hx_ws *ws, int code, const char *reason)
{
    if (ws == NULL)
        return -1;
    if (ws->fd >= 0 && !ws->close_sent)
        hx__send_close(ws, code, reason);
    int64_t deadline = hx_now_ms() + 2000;
    for (int i = 0; i < 100000 && ws->fd >= 0 && !ws->closed && !ws->broken; i++) {
        int left = (int)(deadline - hx_now_ms());
        if (left <= 0)
            break;
        char *junk = NULL;
        hx_ws_result r = hx_ws_recv_msg(ws, left, &junk, NULL);
        free(junk);
        if (r == HX_WS_TIMEOUT || r == HX_WS_ERROR)
            break;
    }
    if (ws->fd >= 0) {
        close(ws->fd);
        ws->fd = -1;
    }
    ws->closed = true;
    return ws->close_code;
}

/* ---- JSON level ---- */

static void hx__bl_push(hx_ws *ws, cJSON *j)
{
    if (ws->bl_count >= ws->bl_max && ws->bl_count > 0) {
        cJSON_Delete(ws->backlog[0]);
        memmove(ws->backlog, ws->backlog + 1, (ws->bl_count - 1) * sizeof *ws->backlog);
        ws->bl_count--;
        ws->stats.backlog_dropped++;
        if (ws->stats.backlog_dropped == 1)
            fprintf(stderr, "hx_ws: backlog full (%zu frames): dropping the oldest\n", ws->bl_max);
    }
    if (ws->bl_count == ws->bl_cap) {
        size_t nc = ws->bl_cap ? ws->bl_cap * 2 : 64;
        cJSON **nb = realloc(ws->backlog, nc * sizeof *nb);
        if (nb == NULL) {
            cJSON_Delete(j);
            ws->stats.backlog_dropped++;
            return;
        }
        ws->backlog = nb;
        ws->bl_cap = nc;
    }
    ws->backlog[ws->bl_count++] = j;
}

static cJSON *hx__bl_take(hx_ws *ws, size_t i)
{
    cJSON *j = ws->backlog[i];
    memmove(ws->backlog + i, ws->backlog + i + 1, (ws->bl_count - i - 1) * sizeof *ws->backlog);
    ws->bl_count--;
    return j;
}

/* Reads one JSON frame from the socket (not the backlog). */
static cJSON *hx__next_json(hx_ws *ws, int64_t deadline)
{
    char *text = NULL;
    size_t len = 0;
    int left = (int)(deadline - hx_now_ms());
    hx_ws_result r = hx_ws_recv_msg(ws, left > 0 ? left : 0, &text, &len);
    if (r == HX_WS_BINARY) {
        free(text);
        hx_set_error("ws: binary frame (%zu bytes) where JSON was expected", len);
        ws->last = HX_WS_ERROR;
        return NULL;
    }
    if (r != HX_WS_TEXT)
        return NULL;
    cJSON *j = cJSON_ParseWithLength(text, len);
    if (j == NULL) {
        hx_set_error("ws: text frame is not JSON: %.200s", text);
        free(text);
        ws->last = HX_WS_ERROR;
        return NULL;
    }
    free(text);
    if (ws->obs != NULL)
        ws->obs(ws, j, ws->obs_ud);
    return j;
}

cJSON *hx_ws_recv_json(hx_ws *ws, int timeout_ms)
{
    if (ws == NULL)
        return NULL;
    if (ws->bl_count > 0) {
        ws->last = HX_WS_TEXT;
        return hx__bl_take(ws, 0);
    }
    return hx__next_json(ws, hx_now_ms() + (timeout_ms > 0 ? timeout_ms : 0));
}

static const char *hx__result_name(hx_ws_result r)
{
    switch (r) {
    case HX_WS_TEXT:
        return "text";
    case HX_WS_BINARY:
        return "binary";
    case HX_WS_CLOSED:
        return "closed";
    case HX_WS_TIMEOUT:
        return "timeout";
    case HX_WS_ERROR:
        return "error";
    }
    return "?";
}

cJSON *hx_ws_expect_fn(hx_ws *ws, hx_ws_match_fn match, void *ud, int timeout_ms)
{
    if (ws == NULL)
        return NULL;
    for (size_t i = 0; i < ws->bl_count; i++) {
        if (match(ws->backlog[i], ud)) {
            ws->last = HX_WS_TEXT;
            return hx__bl_take(ws, i);
        }
    }
    int64_t deadline = hx_now_ms() + (timeout_ms > 0 ? timeout_ms : 0);
    unsigned long skipped = 0;
    char last_seen[256] = "";
    for (int i = 0; i < 100000000; i++) {
        cJSON *j = hx__next_json(ws, deadline);
        if (j == NULL)
            break;
        if (match(j, ud))
            return j;
        skipped++;
        char *s = cJSON_PrintUnformatted(j);
        if (s != NULL) {
            snprintf(last_seen, sizeof last_seen, "%s", s);
            cJSON_free(s);
        }
        hx__bl_push(ws, j);
    }
    char why[512];
    snprintf(why, sizeof why, "%s", hx_error());
    hx_set_error("ws: no matching frame within %d ms (%s; %lu other frames, last: %s; close "
                 "code %d): %s",
                 timeout_ms, hx__result_name(ws->last), skipped, last_seen[0] ? last_seen : "none",
                 ws->close_code, why);
    return NULL;
}

static bool hx__match_type(const cJSON *frame, void *ud)
{
    const char *t = hx_json_str(frame, "type");
    return t != NULL && strcmp(t, (const char *)ud) == 0;
}

cJSON *hx_ws_expect_type(hx_ws *ws, const char *type, int timeout_ms)
{
    return hx_ws_expect_fn(ws, hx__match_type, (void *)type, timeout_ms);
}

static bool hx__match_pattern(const cJSON *frame, void *ud)
{
    return hx_json_match((const cJSON *)ud, frame);
}

cJSON *hx_ws_expect(hx_ws *ws, const char *pattern_json, int timeout_ms)
{
    cJSON *pat = cJSON_Parse(pattern_json);
    if (pat == NULL) {
        hx_set_error("hx_ws_expect: pattern is not JSON: %s", pattern_json);
        return NULL;
    }
    cJSON *j = hx_ws_expect_fn(ws, hx__match_pattern, pat, timeout_ms);
    if (j == NULL) {
        char why[1024];
        snprintf(why, sizeof why, "%s", hx_error());
        hx_set_error("pattern %s: %s", pattern_json, why);
    }
    cJSON_Delete(pat);
    return j;
}

size_t hx_ws_backlog_count(const hx_ws *ws)
{
    return ws ? ws->bl_count : 0;
}

const cJSON *hx_ws_backlog_get(const hx_ws *ws, size_t i)
{
    return ws && i < ws->bl_count ? ws->backlog[i] : NULL;
}

void hx_ws_backlog_clear(hx_ws *ws)
{
    for (size_t i = 0; ws && i < ws->bl_count; i++)
        cJSON_Delete(ws->backlog[i]);
    if (ws)
        ws->bl_count = 0;
}

void hx_ws_set_backlog_max(hx_ws *ws, size_t max)
{
    ws->bl_max = max > 0 ? max : 1;
}

void hx_ws_set_observer(hx_ws *ws, hx_ws_observer fn, void *ud)
{
    ws->obs = fn;
    ws->obs_ud = ud;
}

void hx_ws_destroy(hx_ws *ws)
{
    if (ws == NULL)
        return;
    if (ws->fd >= 0)
        close(ws->fd);
    hx_ws_backlog_clear(ws);
    free(ws->backlog);
    free(ws->rbuf);
    free(ws->frag);
    free(ws);
}
