/* The bench's connection engine: see sb_engine.h. */
#include "sb_engine.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "sb_util.h"
#include "sb_ws.h"

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

/* Room for one largest frame carried over plus a large read. */
#define SCRATCH_CAP (2 * SB_FRAME_MAX + (256u << 10))
#define OUT_CAP     (SB_FRAME_MAX + SB_WS_MAX_HEADER)

sl_status sb_parse_url(const char *url, sb_target *t)
{
    const char *p;
    const char *colon;
    const char *slash;
    char *end = NULL;
    long port;
    size_t hlen;

    if (strncmp(url, "ws://", 5) != 0)
        return SL_ERR_INVAL;
    p = url + 5;
    colon = strchr(p, ':');
    if (colon == NULL)
        return SL_ERR_INVAL;
    hlen = (size_t)(colon - p);
    if (hlen == 0 || hlen >= sizeof(t->host))
        return SL_ERR_INVAL;
    memset(t, 0, sizeof(*t));
    memcpy(t->host, p, hlen);
    errno = 0;
    port = strtol(colon + 1, &end, 10);
    if (errno != 0 || end == colon + 1 || port <= 0 || port > 65535 ||
        (*end != '\0' && *end != '/'))
        return SL_ERR_INVAL;
    t->port = (int)port;
    slash = end;
    if (*slash == '\0')
        slash = "/";
    if (strlen(slash) >= sizeof(t->path))
        return SL_ERR_INVAL;
    strcpy(t->path, slash);
    t->addr.sin_family = AF_INET;
    t->addr.sin_port = htons((uint16_t)port);
    if (strcmp(t->host, "localhost") == 0) {
        t->addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    } else if (inet_pton(AF_INET, t->host, &t->addr.sin_addr) != 1) {
        return SL_ERR_INVAL;
    }
    /* Load goes to this machine only. */
    if ((ntohl(t->addr.sin_addr.s_addr) >> 24) != 127)
        return SL_ERR_INVAL;
    return SL_OK;
}

uint64_t sb_parse_stamp(const uint8_t *s, size_t len)
{
    const uint8_t *p = memmem(s, len, "sbt=", 4);
    const uint8_t *end = s + len;
    uint64_t v = 0;

    if (p == NULL)
        return 0;
    for (p += 4; p < end && *p >= '0' && *p <= '9'; p++)
        v = v * 10 + (uint64_t)(*p - '0');
    return v;
}

static sl_status load_tokens(sb_engine *e)
{
    FILE *f = NULL;
    char line[4096];
    size_t cap = 0;
    sl_status rc = SL_OK;
    int g;

    if (e->cfg.tokens_file == NULL) {
        e->tokens = calloc(2, sizeof(char *));
        if (e->tokens == NULL)
            return SL_ERR_NOMEM;
        e->ntokens = 2;
        for (g = 0; g < 2; g++) {
            char sub[32];
            if (e->cfg.secret == NULL || e->cfg.tenant[g] == NULL)
                continue;
            e->tokens[g] = malloc(1024);
            if (e->tokens[g] == NULL)
                return SL_ERR_NOMEM;
            snprintf(sub, sizeof(sub), "bench-%c", g ? 'a' : 'b');
            rc = sb_jwt_mint(e->tokens[g], 1024, e->cfg.secret, e->cfg.tenant[g], sub,
                             e->cfg.token_ttl_s);
            if (rc != SL_OK)
                return rc;
        }
        return SL_OK;
    }
    f = fopen(e->cfg.tokens_file, "r");
    if (f == NULL)
        return SL_ERR_IO;
    while (fgets(line, sizeof(line), f)) {
        size_t n = strcspn(line, "\r\n");
        line[n] = '\0';
        if (n == 0)
            continue;
        if (e->ntokens == cap) {
            size_t ncap = cap ? cap * 2 : 64;
            char **nt = realloc(e->tokens, ncap * sizeof(char *));
            if (nt == NULL) {
                rc = SL_ERR_NOMEM;
                goto cleanup;
            }
            e->tokens = nt;
            cap = ncap;
        }
        e->tokens[e->ntokens] = strdup(line);
        if (e->tokens[e->ntokens] == NULL) {
            rc = SL_ERR_NOMEM;
            goto cleanup;
        }
        e->ntokens++;
    }
    if (e->ntokens == 0)
        rc = SL_ERR_INVAL;
cleanup:
    fclose(f);
    return rc;
}

const char *sb_engine_token(const sb_engine *e, const sb_conn *c)
{
    if (e->cfg.tokens_file != NULL)
        return e->tokens[c->idx % e->ntokens];
    return e->tokens[c->group & 1] ? e->tokens[c->group & 1] : "";
}

sl_status sb_engine_create(sb_engine **out, const sb_engine_cfg *cfg, const sb_hooks *hooks)
{
    sb_engine *e = NULL;
    sl_status rc = SL_OK;
    uint32_t i;

    if (out == NULL || cfg == NULL || cfg->adapter == NULL || cfg->ntargets <= 0 ||
        cfg->ntargets > SB_MAX_TARGETS || cfg->nconns == 0 || cfg->nconns > SB_MAX_CONNS)
        return SL_ERR_INVAL;
    e = calloc(1, sizeof(*e));
    if (e == NULL)
        return SL_ERR_NOMEM;
    e->ep = -1;
    e->cfg = *cfg;
    if (hooks)
        e->hooks = *hooks;
    e->ad = cfg->adapter;
    e->seed = sb_now_ns() ^ ((uint64_t)getpid() << 32);
    e->conns = calloc(cfg->nconns, sizeof(sb_conn));
    e->scratch = malloc(SCRATCH_CAP);
    e->out = malloc(OUT_CAP);
    if (e->conns == NULL || e->scratch == NULL || e->out == NULL) {
        rc = SL_ERR_NOMEM;
        goto cleanup;
    }
    e->scratch_cap = SCRATCH_CAP;
    e->out_cap = OUT_CAP;
    for (i = 0; i < cfg->nconns; i++) {
        e->conns[i].fd = -1;
        e->conns[i].idx = i;
        e->conns[i].state = SB_ST_IDLE;
    }
    rc = load_tokens(e);
    if (rc != SL_OK)
        goto cleanup;
    e->ep = epoll_create1(EPOLL_CLOEXEC);
    if (e->ep < 0) {
        rc = SL_ERR_IO;
        goto cleanup;
    }
    *out = e;
    return SL_OK;
cleanup:
    sb_engine_destroy(e);
    return rc;
}

static void conn_free_buffers(sb_conn *c)
{
    free(c->rbuf);
    free(c->wbuf);
    free(c->sbuf);
    free(c->frag);
    c->rbuf = c->wbuf = c->sbuf = c->frag = NULL;
    c->rlen = c->rcap = c->wlen = c->woff = c->wcap = 0;
    c->slen = c->scap = c->fraglen = c->fragcap = 0;
}

void sb_engine_destroy(sb_engine *e)
{
    uint32_t i;
    size_t t;

    if (e == NULL)
        return;
    if (e->conns) {
        for (i = 0; i < e->cfg.nconns; i++) {
            sb_conn *c = &e->conns[i];
            if (c->fd >= 0)
                close(c->fd);
            conn_free_buffers(c);
            free(c->session);
            free(c->resume_token);
            free(c->ring);
        }
    }
    for (t = 0; t < e->ntokens; t++)
        free(e->tokens[t]);
    free(e->tokens);
    if (e->ep >= 0)
        close(e->ep);
    free(e->conns);
    free(e->scratch);
    free(e->out);
    free(e);
}

static const sb_target *conn_target(const sb_engine *e, const sb_conn *c)
{
    if (c->role == SB_ROLE_PUB && e->cfg.npub_targets > 0)
        return &e->cfg.pub_targets[c->target % e->cfg.npub_targets];
    return &e->cfg.targets[c->target % e->cfg.ntargets];
}

static void set_events(sb_engine *e, sb_conn *c, uint32_t ev)
{
    struct epoll_event ee;

    memset(&ee, 0, sizeof(ee));
    ee.events = ev;
    ee.data.u32 = c->idx;
    epoll_ctl(e->ep, EPOLL_CTL_MOD, c->fd, &ee);
}

static void conn_fail(sb_engine *e, sb_conn *c, int refused)
{
    if (c->state == SB_ST_READY) {
        e->ready--;
        e->closed_remote++;
    } else if (c->state != SB_ST_IDLE && c->state != SB_ST_CLOSED) {
        e->pending--;
        if (refused)
            e->refused++;
        else
            e->connect_err++;
    }
    if (c->fd >= 0) {
        close(c->fd);
        c->fd = -1;
    }
    conn_free_buffers(c);
    c->state = SB_ST_CLOSED;
    if (e->hooks.on_closed)
        e->hooks.on_closed(e, c, refused);
}

sl_status sb_engine_connect(sb_engine *e, sb_conn *c)
{
    struct sockaddr_in src;
    struct epoll_event ee;
    const sb_target *t = conn_target(e, c);
    int one = 1;
    int fd;
    uint32_t slot = c->idx;

    if (c->state != SB_ST_IDLE && c->state != SB_ST_CLOSED)
        return SL_ERR_INVAL;
    fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        e->last_errno = errno;
        e->connect_err++;
        c->state = SB_ST_CLOSED;
        return SL_ERR_IO;
    }
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one));
    /* Spread source addresses over 127.<octet>.x.y so each address has its
     * own ephemeral port range towards each server port. */
    memset(&src, 0, sizeof(src));
    src.sin_family = AF_INET;
    src.sin_addr.s_addr = htonl((127u << 24) | ((uint32_t)(e->cfg.src_octet & 0xFF) << 16) |
                                ((1u + (slot / 250u) % 250u) << 8) | (2u + slot % 250u));
    if (bind(fd, (struct sockaddr *)&src, sizeof(src)) != 0) {
        e->last_errno = errno;
        goto fail;
    }
    if (connect(fd, (const struct sockaddr *)&t->addr, sizeof(t->addr)) != 0 &&
        errno != EINPROGRESS) {
        e->last_errno = errno;
        goto fail;
    }
    memset(&ee, 0, sizeof(ee));
    ee.events = EPOLLOUT;
    ee.data.u32 = c->idx;
    if (epoll_ctl(e->ep, EPOLL_CTL_ADD, fd, &ee) != 0) {
        e->last_errno = errno;
        goto fail;
    }
    c->fd = fd;
    c->state = SB_ST_CONNECTING;
    c->t_start = sb_now_ns();
    c->close_code = 0;
    c->attempts++;
    e->pending++;
    return SL_OK;
fail:
    close(fd);
    e->connect_err++;
    c->state = SB_ST_CLOSED;
    return SL_ERR_IO;
}

/* Writes as much of buf as the socket takes; returns bytes written or -1. */
static ssize_t write_some(int fd, const uint8_t *buf, size_t len)
{
    size_t off = 0;

    while (off < len) {
        ssize_t n = send(fd, buf + off, len - off, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                break;
            return -1;
        }
        off += (size_t)n;
    }
    return (ssize_t)off;
}

static int wbuf_append(sb_conn *c, const uint8_t *data, size_t len)
{
    size_t need;

    if (c->woff > 0 && c->woff == c->wlen)
        c->woff = c->wlen = 0;
    need = (size_t)c->wlen + len;
    if (need > SB_WBUF_MAX)
        return -1;
    if (need > c->wcap) {
        size_t ncap = c->wcap ? c->wcap : 4096;
        uint8_t *nb;
        if (c->woff > 0) {
            memmove(c->wbuf, c->wbuf + c->woff, c->wlen - c->woff);
            c->wlen -= c->woff;
            c->woff = 0;
            need = (size_t)c->wlen + len;
        }
        while (ncap < need)
            ncap *= 2;
        if (ncap > c->wcap) {
            nb = realloc(c->wbuf, ncap);
            if (nb == NULL)
                return -1;
            c->wbuf = nb;
            c->wcap = (uint32_t)ncap;
        }
    }
    memcpy(c->wbuf + c->wlen, data, len);
    c->wlen += (uint32_t)len;
    return 0;
}

/* Sends raw bytes: straight to the socket when nothing is queued. */
static void send_raw(sb_engine *e, sb_conn *c, const uint8_t *data, size_t len)
{
    ssize_t n = 0;

    if (c->fd < 0)
        return;
    if (c->wlen == c->woff) {
        n = write_some(c->fd, data, len);
        if (n < 0) {
            e->last_errno = errno;
            conn_fail(e, c, 0);
            return;
        }
        if ((size_t)n == len)
            return;
    }
    if (wbuf_append(c, data + n, len - (size_t)n) != 0) {
        e->proto_err++;
        conn_fail(e, c, 0);
        return;
    }
    set_events(e, c, EPOLLIN | EPOLLOUT);
}

void sb_engine_send(sb_engine *e, sb_conn *c, int opcode, const void *data, size_t len)
{
    size_t n;

    if (c->fd < 0 || len > SB_FRAME_MAX)
        return;
    n = sb_ws_encode(e->out, opcode, data, len, &e->seed);
    e->frames_out++;
    send_raw(e, c, e->out, n);
}

void sb_engine_ready(sb_engine *e, sb_conn *c)
{
    if (c->state == SB_ST_READY)
        return;
    c->state = SB_ST_READY;
    c->t_ready = sb_now_ns();
    e->pending--;
    e->ready++;
    e->connect_ok++;
    if (e->hooks.on_ready)
        e->hooks.on_ready(e, c);
}

void sb_engine_msg(sb_engine *e, sb_conn *c, const sb_msg *m)
{
    if (m->type == SB_M_ERROR)
        e->errors_app++;
    if (m->type == SB_M_RECONNECT)
        e->reconnect_frames++;
    if (e->hooks.on_msg)
        e->hooks.on_msg(e, c, m);
}

void sb_engine_close(sb_engine *e, sb_conn *c, int abrupt)
{
    if (c->fd < 0)
        return;
    if (abrupt) {
        struct linger lg = {1, 0};
        setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    } else if (c->state >= SB_ST_OPENING) {
        uint8_t code[2] = {0x03, 0xE8};
        sb_engine_send(e, c, SB_WS_CLOSE, code, 2);
    }
    if (c->fd < 0)
        return;
    if (c->state == SB_ST_READY)
        e->ready--;
    else if (c->state != SB_ST_IDLE && c->state != SB_ST_CLOSED)
        e->pending--;
    close(c->fd);
    c->fd = -1;
    conn_free_buffers(c);
    c->state = SB_ST_CLOSED;
}

static void on_connected(sb_engine *e, sb_conn *c)
{
    char req[1024];
    const sb_target *t = conn_target(e, c);
    int err = 0;
    socklen_t elen = sizeof(err);
    size_t n;

    if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &elen) != 0 || err != 0) {
        e->last_errno = err;
        conn_fail(e, c, 0);
        return;
    }
    sb_ws_make_key(c->key, &e->seed);
    n = sb_ws_request(req, sizeof(req), t->host, t->port, t->path, c->key,
                      e->cfg.proto == SB_P_SLUICE ? "sluice.v1" : NULL);
    c->state = SB_ST_HANDSHAKE;
    set_events(e, c, EPOLLIN);
    send_raw(e, c, (const uint8_t *)req, n);
}

static int frag_append(sb_conn *c, const uint8_t *d, size_t len)
{
    size_t need = (size_t)c->fraglen + len;

    if (need > SB_FRAME_MAX)
        return -1;
    if (need > c->fragcap) {
        size_t ncap = c->fragcap ? c->fragcap : 4096;
        uint8_t *nb;
        while (ncap < need)
            ncap *= 2;
        nb = realloc(c->frag, ncap);
        if (nb == NULL)
            return -1;
        c->frag = nb;
        c->fragcap = (uint32_t)ncap;
    }
    memcpy(c->frag + c->fraglen, d, len);
    c->fraglen += (uint32_t)len;
    return 0;
}

static void count_close(sb_engine *e, uint16_t code)
{
    int i;

    for (i = 0; i < SB_MAX_CODES; i++) {
        if (e->close_code[i] == code || e->close_code[i] == 0) {
            e->close_code[i] = code;
            e->close_count[i]++;
            return;
        }
    }
}

/* Handles one frame; returns -1 when the connection was closed. */
static int handle_frame(sb_engine *e, sb_conn *c, const sb_ws_frame *f)
{
    e->frames_in++;
    switch (f->opcode) {
    case SB_WS_PING:
        e->pings_in++;
        sb_engine_send(e, c, SB_WS_PONG, f->payload, f->len);
        return c->fd < 0 ? -1 : 0;
    case SB_WS_PONG:
        return 0;
    case SB_WS_CLOSE:
        c->close_code = f->len >= 2 ? (uint16_t)((f->payload[0] << 8) | f->payload[1]) : 1005;
        count_close(e, c->close_code);
        sb_engine_send(e, c, SB_WS_CLOSE, f->payload, f->len >= 2 ? 2 : 0);
        conn_fail(e, c, c->close_code == 1013);
        return -1;
    case SB_WS_CONT:
        if (c->fragop == 0 || frag_append(c, f->payload, f->len) != 0) {
            e->proto_err++;
            conn_fail(e, c, 0);
            return -1;
        }
        if (f->fin) {
            int op = c->fragop;
            c->fragop = 0;
            e->ad->on_data(e, c, op, c->frag, c->fraglen);
            c->fraglen = 0;
        }
        break;
    default:
        if (!f->fin) {
            c->fragop = (uint8_t)f->opcode;
            c->fraglen = 0;
            if (frag_append(c, f->payload, f->len) != 0) {
                e->proto_err++;
                conn_fail(e, c, 0);
                return -1;
            }
            return 0;
        }
        e->ad->on_data(e, c, f->opcode, (uint8_t *)f->payload, f->len);
        break;
    }
    return c->fd < 0 ? -1 : 0;
}

/* Consumes what it can of buf[0..len); returns bytes consumed or -1 when the
 * connection was closed. */
static long process(sb_engine *e, sb_conn *c, uint8_t *buf, size_t len)
{
    size_t off = 0;

    if (c->state == SB_ST_HANDSHAKE) {
        size_t used = 0;
        int status = 0;
        sl_status rc = sb_ws_parse_response((const char *)buf, len, c->key, &used, &status);
        if (rc == SL_ERR_TIMEOUT)
            return 0;
        if (rc != SL_OK) {
            conn_fail(e, c, rc == SL_ERR_FULL);
            return -1;
        }
        off = used;
        c->state = SB_ST_OPENING;
        e->ad->on_open(e, c);
        if (c->fd < 0)
            return -1;
    }
    while (off < len) {
        sb_ws_frame f;
        long n = sb_ws_parse_frame(buf + off, len - off, SB_FRAME_MAX, &f);
        if (n == 0)
            break;
        if (n < 0) {
            e->proto_err++;
            conn_fail(e, c, 0);
            return -1;
        }
        off += (size_t)n;
        if (handle_frame(e, c, &f) < 0)
            return -1;
    }
    return (long)off;
}

static int keep_rest(sb_conn *c, const uint8_t *rest, size_t n)
{
    if (n > c->rcap) {
        size_t ncap = c->rcap ? c->rcap : 4096;
        uint8_t *nb;
        while (ncap < n)
            ncap *= 2;
        if (ncap > SB_FRAME_MAX + 4096)
            return -1;
        nb = realloc(c->rbuf, ncap);
        if (nb == NULL)
            return -1;
        c->rbuf = nb;
        c->rcap = (uint32_t)ncap;
    }
    memmove(c->rbuf, rest, n);
    c->rlen = (uint32_t)n;
    return 0;
}

static void on_readable(sb_engine *e, sb_conn *c)
{
    int rounds;

    /* A few reads per wakeup, so one busy connection cannot starve the rest. */
    for (rounds = 0; rounds < 4 && c->fd >= 0; rounds++) {
        uint8_t *buf;
        size_t have = c->rlen;
        ssize_t n;
        long used;

        /* Partial bytes are copied into the scratch buffer, after which
         * complete frames are parsed in place and only the tail is kept. */
        if (have > e->scratch_cap / 2) {
            e->proto_err++;
            conn_fail(e, c, 0);
            return;
        }
        buf = e->scratch;
        if (have)
            memcpy(buf, c->rbuf, have);
        n = recv(c->fd, buf + have, e->scratch_cap - have, 0);
        if (n == 0) {
            if (c->state == SB_ST_READY)
                e->eof_ready++;
            conn_fail(e, c, 0);
            return;
        }
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return;
            e->last_errno = errno;
            if (c->state == SB_ST_READY)
                e->eof_ready++;
            conn_fail(e, c, 0);
            return;
        }
        e->bytes_in += (uint64_t)n;
        have += (size_t)n;
        used = process(e, c, buf, have);
        if (used < 0)
            return;
        if ((size_t)used == have) {
            if (c->rcap > 65536) {
                free(c->rbuf);
                c->rbuf = NULL;
                c->rcap = 0;
            }
            c->rlen = 0;
        } else if (keep_rest(c, buf + used, have - (size_t)used) != 0) {
            e->proto_err++;
            conn_fail(e, c, 0);
            return;
        }
        if ((size_t)n < e->scratch_cap - (have - (size_t)n))
            return;
    }
}

static void on_writable(sb_engine *e, sb_conn *c)
{
    ssize_t n;

    if (c->state == SB_ST_CONNECTING) {
        on_connected(e, c);
        return;
    }
    n = write_some(c->fd, c->wbuf + c->woff, c->wlen - c->woff);
    if (n < 0) {
        e->last_errno = errno;
        conn_fail(e, c, 0);
        return;
    }
    c->woff += (uint32_t)n;
    if (c->woff == c->wlen) {
        c->woff = c->wlen = 0;
        if (c->wcap > 65536) {
            free(c->wbuf);
            c->wbuf = NULL;
            c->wcap = 0;
        }
        set_events(e, c, EPOLLIN);
    }
}

int sb_engine_poll(sb_engine *e, int timeout_ms)
{
    struct epoll_event evs[512];
    int n;
    int i;

    n = epoll_wait(e->ep, evs, 512, timeout_ms);
    if (n < 0)
        return errno == EINTR ? 0 : -1;
    for (i = 0; i < n; i++) {
        sb_conn *c = &e->conns[evs[i].data.u32];
        uint32_t ev = evs[i].events;
        if (c->fd < 0)
            continue;
        if (ev & EPOLLOUT)
            on_writable(e, c);
        if (c->fd >= 0 && (ev & (EPOLLIN | EPOLLHUP | EPOLLERR))) {
            if (c->state == SB_ST_CONNECTING)
                on_connected(e, c);
            else
                on_readable(e, c);
        }
    }
    return n;
}
