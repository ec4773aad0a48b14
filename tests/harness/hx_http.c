#include "hx_http.h"

#include <ctype.h>
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "hx_port.h"
#include "hx_util.h"

#define HX_HTTP_MAX_HEAD (64 * 1024)
#define HX_HTTP_MAX_BODY (16 * 1024 * 1024)

static int hx__left(int64_t deadline)
{
    int64_t left = deadline - hx_now_ms();
    return left > 0 ? (int)left : 0;
}

int hx__io_write_all(int fd, const void *buf, size_t len, int64_t deadline)
{
    const char *p = buf;
    size_t off = 0;
    for (int i = 0; off < len && i < 10000000; i++) {
        ssize_t n = send(fd, p + off, len - off, MSG_NOSIGNAL);
        if (n > 0) {
            off += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            struct pollfd pfd = {.fd = fd, .events = POLLOUT};
            int rc = poll(&pfd, 1, hx__left(deadline));
            if (rc == 0) {
                hx_set_error("send: timed out with %zu of %zu bytes written", off, len);
                return -1;
            }
            continue;
        }
        hx_set_error("send: %s", n < 0 ? strerror(errno) : "wrote nothing");
        return -1;
    }
    return off == len ? 0 : -1;
}

ssize_t hx__io_read(int fd, void *buf, size_t len, int64_t deadline)
{
    for (int i = 0; i < 10000000; i++) {
        ssize_t n = recv(fd, buf, len, 0);
        if (n >= 0)
            return n;
        if (errno == EINTR)
            continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK) {
            if (errno == ECONNRESET)
                return 0; /* the caller treats a reset like the end of the stream */
            hx_set_error("recv: %s", strerror(errno));
            return -1;
        }
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        int rc = poll(&pfd, 1, hx__left(deadline));
        if (rc == 0)
            return -2;
        if (rc < 0 && errno != EINTR) {
            hx_set_error("poll: %s", strerror(errno));
            return -1;
        }
    }
    return -1;
}

int hx__http_read_head(int fd, int64_t deadline, char **head, char **extra, size_t *extra_len)
{
    char *buf = malloc(HX_HTTP_MAX_HEAD + 1);
    if (buf == NULL)
        return -1;
    size_t have = 0;
    char *end = NULL;
    while (end == NULL) {
        if (have >= HX_HTTP_MAX_HEAD) {
            hx_set_error("HTTP head larger than %d bytes", HX_HTTP_MAX_HEAD);
            goto fail;
        }
        ssize_t n = hx__io_read(fd, buf + have, HX_HTTP_MAX_HEAD - have, deadline);
        if (n == -2) {
            hx_set_error("timed out waiting for the HTTP response head (%zu bytes so far)", have);
            goto fail;
        }
        if (n < 0)
            goto fail;
        if (n == 0) {
            hx_set_error("connection closed before the end of the HTTP head (%zu bytes)", have);
            goto fail;
        }
        have += (size_t)n;
        buf[have] = '\0';
        end = memmem(buf, have, "\r\n\r\n", 4);
    }
    size_t hl = (size_t)(end - buf);
    size_t xl = have - hl - 4;
    char *x = malloc(xl + 1);
    char *h = malloc(hl + 1);
    if (x == NULL || h == NULL) {
        free(x);
        free(h);
        goto fail;
    }
    memcpy(h, buf, hl);
    h[hl] = '\0';
    memcpy(x, end + 4, xl);
    x[xl] = '\0';
    free(buf);
    *head = h;
    *extra = x;
    *extra_len = xl;
    return 0;
fail:
    free(buf);
    return -1;
}

int hx__http_status(const char *head)
{
    if (strncmp(head, "HTTP/1.", 7) != 0 || head[8] != ' ')
        return -1;
    char *end = NULL;
    long code = strtol(head + 9, &end, 10);
    if (end != head + 12 || code < 100 || code > 999)
        return -1;
    return (int)code;
}

bool hx_http_header(const char *head, const char *name, char *out, size_t len)
{
    size_t nl = strlen(name);
    const char *line = strstr(head, "\r\n");
    for (int i = 0; line != NULL && i < 1000; i++) {
        line += 2;
        if (strncasecmp(line, name, nl) == 0 && line[nl] == ':') {
            const char *v = line + nl + 1;
            while (*v == ' ' || *v == '\t')
                v++;
            const char *e = strstr(v, "\r\n");
            size_t vl = e ? (size_t)(e - v) : strlen(v);
            while (vl > 0 && (v[vl - 1] == ' ' || v[vl - 1] == '\t'))
                vl--;
            if (len > 0) {
                size_t cl = vl < len - 1 ? vl : len - 1;
                memcpy(out, v, cl);
                out[cl] = '\0';
            }
            return true;
        }
        line = strstr(line, "\r\n");
    }
    return false;
}

/* A growable byte buffer for the body. */
typedef struct hx__bytes {
    char *p;
    size_t len, cap;
} hx__bytes;

static int hx__bytes_add(hx__bytes *b, const void *data, size_t n)
{
    if (b->len + n > HX_HTTP_MAX_BODY) {
        hx_set_error("HTTP body larger than %d bytes", HX_HTTP_MAX_BODY);
        return -1;
    }
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *np = realloc(b->p, cap);
        if (np == NULL)
            return -1;
        b->p = np;
        b->cap = cap;
    }
    memcpy(b->p + b->len, data, n);
    b->len += n;
    b->p[b->len] = '\0';
    return 0;
}

/* Reads the raw body: exactly want bytes, or (want < 0) until EOF. */
static int hx__read_body(int fd, int64_t deadline, hx__bytes *b, long long want)
{
    char chunk[16384];
    while (want < 0 || (long long)b->len < want) {
        size_t ask = sizeof chunk;
        if (want >= 0 && (long long)ask > want - (long long)b->len)
            ask = (size_t)(want - (long long)b->len);
        ssize_t n = hx__io_read(fd, chunk, ask, deadline);
        if (n == -2) {
            hx_set_error("timed out reading the HTTP body");
            return -1;
        }
        if (n < 0)
            return -1;
        if (n == 0) {
            if (want < 0)
                return 0;
            hx_set_error("connection closed after %zu of %lld body bytes", b->len, want);
            return -1;
        }
        if (hx__bytes_add(b, chunk, (size_t)n) != 0)
            return -1;
    }
    return 0;
}

/* Decodes a complete chunked body in place into out. */
static int hx__dechunk(const hx__bytes *raw, hx__bytes *out, bool *complete)
{
    size_t pos = 0;
    *complete = false;
    for (int i = 0; i < 1000000; i++) {
        const char *crlf = memmem(raw->p + pos, raw->len - pos, "\r\n", 2);
        if (crlf == NULL)
            return 0;
        char *end = NULL;
        unsigned long long size = strtoull(raw->p + pos, &end, 16);
        if (end == raw->p + pos) {
            hx_set_error("bad chunk size in chunked body");
            return -1;
        }
        size_t data = (size_t)(crlf - raw->p) + 2;
        if (size == 0) {
            *complete = memmem(raw->p + data, raw->len - data, "\r\n", 2) != NULL;
            return 0;
        }
        if (data + size + 2 > raw->len)
            return 0;
        if (hx__bytes_add(out, raw->p + data, (size_t)size) != 0)
            return -1;
        pos = data + (size_t)size + 2;
    }
    return -1;
}

int hx_http_request(const char *host, int port, const char *method, const char *path,
                    const char *body, int timeout_ms, hx_http_resp *resp)
{
    return hx_http_request_hdr(host, port, method, path, NULL, body, timeout_ms, resp);
}

int hx_http_request_hdr(const char *host, int port, const char *method, const char *path,
                        const char *headers, const char *body, int timeout_ms, hx_http_resp *resp)
{
    const char *xh = headers != NULL ? headers : "";
    memset(resp, 0, sizeof *resp);
    resp->status = -1;
    int64_t deadline = hx_now_ms() + (timeout_ms > 0 ? timeout_ms : 0);
    char *req = NULL, *head = NULL, *extra = NULL;
    size_t extra_len = 0;
    hx__bytes raw = {0}, dec = {0};
    int status = -1;
    const char *h = host ? host : "127.0.0.1";
    int fd = hx_tcp_connect(h, port, timeout_ms);
    if (fd < 0)
        goto cleanup;
    if (body != NULL)
        req = hx_strf("%s %s HTTP/1.1\r\nHost: %s:%d\r\nConnection: close\r\n"
                      "Content-Type: application/json\r\nContent-Length: %zu\r\n%s\r\n%s",
                      method, path, h, port, strlen(body), xh, body);
    else
        req = hx_strf("%s %s HTTP/1.1\r\nHost: %s:%d\r\nConnection: close\r\n%s\r\n", method, path,
                      h, port, xh);
    if (hx__io_write_all(fd, req, strlen(req), deadline) != 0)
        goto cleanup;
    if (hx__http_read_head(fd, deadline, &head, &extra, &extra_len) != 0)
        goto cleanup;
    int code = hx__http_status(head);
    if (code < 0) {
        hx_set_error("malformed HTTP status line: %.80s", head);
        goto cleanup;
    }
    if (hx__bytes_add(&raw, extra, extra_len) != 0)
        goto cleanup;
    char val[64];
    bool no_body = strcmp(method, "HEAD") == 0 || code == 204 || code == 304 || code < 200;
    if (no_body) {
        /* nothing to read */
    } else if (hx_http_header(head, "Transfer-Encoding", val, sizeof val) &&
               strcasecmp(val, "chunked") == 0) {
        bool complete = false;
        for (int i = 0; i < 1000000; i++) {
            dec.len = 0;
            if (hx__dechunk(&raw, &dec, &complete) != 0)
                goto cleanup;
            if (complete)
                break;
            char chunk[16384];
            ssize_t n = hx__io_read(fd, chunk, sizeof chunk, deadline);
            if (n == -2)
                hx_set_error("timed out reading a chunked body");
            else if (n == 0)
                hx_set_error("connection closed inside a chunked body");
            if (n <= 0)
                goto cleanup;
            if (hx__bytes_add(&raw, chunk, (size_t)n) != 0)
                goto cleanup;
        }
        if (!complete)
            goto cleanup;
        free(raw.p);
        raw = dec;
        dec = (hx__bytes){0};
    } else if (hx_http_header(head, "Content-Length", val, sizeof val)) {
        char *end = NULL;
        long long cl = strtoll(val, &end, 10);
        if (end == val || *end != '\0' || cl < 0 || cl > HX_HTTP_MAX_BODY) {
            hx_set_error("bad Content-Length %s", val);
            goto cleanup;
        }
        if ((long long)raw.len > cl)
            raw.len = (size_t)cl;
        if (hx__read_body(fd, deadline, &raw, cl) != 0)
            goto cleanup;
    } else if (hx__read_body(fd, deadline, &raw, -1) != 0) {
        goto cleanup;
    }
    if (raw.p == NULL && hx__bytes_add(&raw, "", 0) != 0)
        goto cleanup;
    raw.p[raw.len] = '\0';
    resp->status = status = code;
    resp->head = head;
    resp->body = raw.p;
    resp->body_len = raw.len;
    head = NULL;
    raw = (hx__bytes){0};
cleanup:
    if (fd >= 0)
        close(fd);
    free(req);
    free(head);
    free(extra);
    free(raw.p);
    free(dec.p);
    return status;
}

int hx_http_get(const char *host, int port, const char *path, int timeout_ms, char **body_out)
{
    hx_http_resp r;
    int status = hx_http_request(host, port, "GET", path, NULL, timeout_ms, &r);
    if (status >= 0 && body_out != NULL) {
        *body_out = r.body;
        r.body = NULL;
    }
    hx_http_resp_free(&r);
    return status;
}

void hx_http_resp_free(hx_http_resp *resp)
{
    if (resp == NULL)
        return;
    free(resp->head);
    free(resp->body);
    memset(resp, 0, sizeof *resp);
    resp->status = -1;
}

long long hx_metric_get(int port, const char *name)
{
    char *body = NULL, pat[256];
    const char *p;
    long long v = -1;

    if (hx_http_get(NULL, port, "/metrics", 5000, &body) != 200) {
        free(body);
        return -1;
    }
    snprintf(pat, sizeof(pat), "\n%s ", name);
    p = strstr(body, pat);
    if (p != NULL)
        v = strtoll(p + strlen(pat), NULL, 10);
    free(body);
    return v;
}
