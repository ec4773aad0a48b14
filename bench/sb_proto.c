/* Protocol adapters: Sluice, nats-server's websocket, nchan, socket.io.
 *
 * The hot path (one event per delivery) avoids a JSON parser: frames are
 * scanned for the few top-level keys the bench needs. The bench controls the
 * message texts it sends ("sbt=<ns> ..." and filler letters, no quotes), so
 * a key name can only appear as a key.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sb_proto.h"
#include "sb_ws.h"

/* Finds "key": in buf and returns the start of its value (after spaces), or
 * NULL. */
static const uint8_t *jfind(const uint8_t *buf, size_t len, const char *key)
{
    char pat[40];
    int pl = snprintf(pat, sizeof(pat), "\"%s\"", key);
    const uint8_t *p = buf;
    const uint8_t *end = buf + len;

    while (p < end) {
        const uint8_t *q = memmem(p, (size_t)(end - p), pat, (size_t)pl);
        if (q == NULL)
            return NULL;
        q += pl;
        while (q < end && (*q == ' ' || *q == '\t'))
            q++;
        if (q < end && *q == ':') {
            q++;
            while (q < end && (*q == ' ' || *q == '\t'))
                q++;
            return q < end ? q : NULL;
        }
        p = q;
    }
    return NULL;
}

/* Returns the string value of key (without quotes; escapes left as they
 * are), or NULL. */
static const uint8_t *jstr(const uint8_t *buf, size_t len, const char *key, size_t *vlen)
{
    const uint8_t *v = jfind(buf, len, key);
    const uint8_t *end = buf + len;
    const uint8_t *q;

    if (v == NULL || *v != '"')
        return NULL;
    for (q = v + 1; q < end && *q != '"'; q++) {
        if (*q == '\\')
            q++;
    }
    if (q >= end)
        return NULL;
    *vlen = (size_t)(q - v - 1);
    return v + 1;
}

static uint64_t jnum(const uint8_t *buf, size_t len, const char *key)
{
    const uint8_t *v = jfind(buf, len, key);
    const uint8_t *end = buf + len;
    uint64_t n = 0;

    if (v == NULL)
        return 0;
    for (; v < end && *v >= '0' && *v <= '9'; v++)
        n = n * 10 + (uint64_t)(*v - '0');
    return n;
}

static int jtrue(const uint8_t *buf, size_t len, const char *key)
{
    const uint8_t *v = jfind(buf, len, key);

    return v != NULL && (size_t)(buf + len - v) >= 4 && memcmp(v, "true", 4) == 0;
}

/* Parses n from an id "m<n>". */
static int64_t id_num(const uint8_t *v, size_t vlen)
{
    int64_t n = 0;
    size_t i;

    if (v == NULL || vlen < 2 || v[0] != 'm')
        return -1;
    for (i = 1; i < vlen; i++) {
        if (v[i] < '0' || v[i] > '9')
            return -1;
        n = n * 10 + (v[i] - '0');
    }
    return n;
}

static char *dup_n(const uint8_t *v, size_t n)
{
    char *s = malloc(n + 1);

    if (s) {
        memcpy(s, v, n);
        s[n] = '\0';
    }
    return s;
}

/* ---------------------------------------------------------------- Sluice */

/* The room of connection c (cfg.rooms spreads members over several). */
static const char *room_of(const sb_engine *e, const sb_conn *c, char *buf, size_t cap)
{
    if (e->cfg.rooms <= 1)
        return e->cfg.room;
    snprintf(buf, cap, "%s-%u", e->cfg.room, c->idx % e->cfg.rooms);
    return buf;
}

static void sluice_open(sb_engine *e, sb_conn *c)
{
    char buf[4096];
    int n;

    if (c->resuming && c->session && c->resume_token) {
        char room_pos[128] = "", rb[80];
        if (e->cfg.room && *e->cfg.room)
            snprintf(room_pos, sizeof(room_pos), ",\"r:%s\":%llu", room_of(e, c, rb, sizeof(rb)),
                     (unsigned long long)c->seq_room);
        n = snprintf(buf, sizeof(buf),
                     "{\"type\":\"hello\",\"token\":\"%s\",\"resume\":{\"session\":\"%s\","
                     "\"resume_token\":\"%s\",\"positions\":{\"s\":%llu%s}}}",
                     sb_engine_token(e, c), c->session, c->resume_token,
                     (unsigned long long)c->seq_s, room_pos);
    } else {
        n = snprintf(buf, sizeof(buf), "{\"type\":\"hello\",\"token\":\"%s\"}",
                     sb_engine_token(e, c));
    }
    if (n > 0 && (size_t)n < sizeof(buf))
        sb_engine_send(e, c, SB_WS_TEXT, buf, (size_t)n);
}

static void sluice_join(sb_engine *e, sb_conn *c)
{
    char buf[256], rb[80];
    int n = snprintf(buf, sizeof(buf), "{\"type\":\"join\",\"room\":\"%s\"}",
                     room_of(e, c, rb, sizeof(rb)));

    sb_engine_send(e, c, SB_WS_TEXT, buf, (size_t)n);
}

static void sluice_data(sb_engine *e, sb_conn *c, int opcode, uint8_t *d, size_t len)
{
    sb_msg m;
    size_t vlen = 0;
    const uint8_t *v;

    if (opcode != SB_WS_TEXT)
        return;
    memset(&m, 0, sizeof(m));
    m.id_n = -1;
    v = jstr(d, len, "type", &vlen);
    if (v == NULL)
        return;
    if (vlen == 5 && memcmp(v, "event", 5) == 0) {
        const uint8_t *ch;
        const uint8_t *k;
        size_t chl = 0;
        size_t kl = 0;
        m.type = SB_M_EVENT;
        ch = jstr(d, len, "ch", &chl);
        m.room_ch = ch != NULL && chl > 2 && ch[0] == 'r' && ch[1] == ':';
        m.seq = jnum(d, len, "seq");
        k = jstr(d, len, "kind", &kl);
        if (k && kl == 7 && memcmp(k, "message", 7) == 0) {
            m.kind = SB_K_MESSAGE;
            m.stamp = sb_parse_stamp(d, len);
        } else if (k && kl == 5 && memcmp(k, "token", 5) == 0) {
            m.kind = SB_K_TOKEN;
        } else if (k && kl == 5 && memcmp(k, "reply", 5) == 0) {
            m.kind = SB_K_REPLY;
        } else {
            m.kind = SB_K_OTHER;
        }
        if (m.kind == SB_K_TOKEN || m.kind == SB_K_REPLY) {
            const uint8_t *to = jstr(d, len, "to", &vlen);
            m.id_n = id_num(to, to ? vlen : 0);
        }
        if (m.room_ch) {
            if (m.seq <= c->seq_room)
                m.dup = 1;
            else
                c->seq_room = m.seq;
        } else if (m.seq <= c->seq_s) {
            m.dup = 1;
        } else {
            c->seq_s = m.seq;
        }
    } else if (vlen == 8 && memcmp(v, "accepted", 8) == 0) {
        const uint8_t *id = jstr(d, len, "id", &vlen);
        m.type = SB_M_ACCEPTED;
        m.id_n = id_num(id, id ? vlen : 0);
    } else if (vlen == 4 && memcmp(v, "busy", 4) == 0) {
        const uint8_t *id = jstr(d, len, "id", &vlen);
        m.type = SB_M_BUSY;
        m.id_n = id_num(id, id ? vlen : 0);
        m.retry_after_ms = jnum(d, len, "retry_after_ms");
    } else if (vlen == 7 && memcmp(v, "welcome", 7) == 0) {
        const uint8_t *s;
        m.type = SB_M_WELCOME;
        m.resumed = jtrue(d, len, "resumed");
        s = jstr(d, len, "session", &vlen);
        if (s) {
            free(c->session);
            c->session = dup_n(s, vlen);
        }
        s = jstr(d, len, "resume_token", &vlen);
        if (s) {
            free(c->resume_token);
            c->resume_token = dup_n(s, vlen);
        }
        sb_engine_msg(e, c, &m);
        if (c->fd < 0)
            return;
        /* Room members join (again, after a resume) before they count as
         * ready; everyone else is ready on welcome. */
        if (c->role != SB_ROLE_CHAT && e->cfg.room && *e->cfg.room)
            sluice_join(e, c);
        else
            sb_engine_ready(e, c);
        return;
    } else if (vlen == 12 && memcmp(v, "resume_token", 12) == 0) {
        /* A long connection's fresh token: the next resume sends it. */
        const uint8_t *s = jstr(d, len, "resume_token", &vlen);
        if (s) {
            free(c->resume_token);
            c->resume_token = dup_n(s, vlen);
        }
        return;
    } else if (vlen == 6 && memcmp(v, "joined", 6) == 0) {
        m.type = SB_M_JOINED;
        m.seq = jnum(d, len, "seq");
        if (!c->resuming && m.seq > c->seq_room)
            c->seq_room = m.seq;
        c->joined = 1;
        sb_engine_msg(e, c, &m);
        if (c->fd >= 0)
            sb_engine_ready(e, c);
        return;
    } else if (vlen == 3 && memcmp(v, "gap", 3) == 0) {
        m.type = SB_M_GAP;
    } else if (vlen == 5 && memcmp(v, "error", 5) == 0) {
        m.type = SB_M_ERROR;
    } else if (vlen == 9 && memcmp(v, "reconnect", 9) == 0) {
        m.type = SB_M_RECONNECT;
    } else {
        m.type = SB_M_OTHER;
    }
    sb_engine_msg(e, c, &m);
}

static void sluice_publish(sb_engine *e, sb_conn *c, int64_t n, const char *text, size_t len)
{
    char buf[SB_FRAME_MAX / 16], rb[80];
    int k;

    if (c->role == SB_ROLE_PUB)
        k = snprintf(buf, sizeof(buf),
                     "{\"type\":\"send\",\"id\":\"m%lld\",\"room\":\"%s\",\"text\":\"%.*s\"}",
                     (long long)n, room_of(e, c, rb, sizeof(rb)), (int)len, text);
    else
        k = snprintf(buf, sizeof(buf), "{\"type\":\"send\",\"id\":\"m%lld\",\"text\":\"%.*s\"}",
                     (long long)n, (int)len, text);
    if (k > 0 && (size_t)k < sizeof(buf))
        sb_engine_send(e, c, SB_WS_TEXT, buf, (size_t)k);
}

static void sluice_heartbeat(sb_engine *e, sb_conn *c)
{
    static const char ping[] = "{\"type\":\"ping\"}";

    sb_engine_send(e, c, SB_WS_TEXT, ping, sizeof(ping) - 1);
}

/* ------------------------------------------------------------------ NATS */

static void nats_open(sb_engine *e, sb_conn *c)
{
    (void)e;
    (void)c;
    /* The server speaks first (INFO). */
}

static int sbuf_append(sb_conn *c, const uint8_t *d, size_t len)
{
    size_t need = (size_t)c->slen + len;

    if (need > SB_FRAME_MAX)
        return -1;
    if (need > c->scap) {
        size_t ncap = c->scap ? c->scap : 4096;
        uint8_t *nb;
        while (ncap < need)
            ncap *= 2;
        nb = realloc(c->sbuf, ncap);
        if (nb == NULL)
            return -1;
        c->sbuf = nb;
        c->scap = (uint32_t)ncap;
    }
    memcpy(c->sbuf + c->slen, d, len);
    c->slen += (uint32_t)len;
    return 0;
}

static void nats_greet(sb_engine *e, sb_conn *c)
{
    char buf[512];
    int n;

    if (c->role == SB_ROLE_SUB)
        n = snprintf(buf, sizeof(buf),
                     "CONNECT {\"verbose\":false,\"pedantic\":false,\"protocol\":1,"
                     "\"name\":\"sluice-bench\"}\r\nSUB %s 1\r\nPING\r\n",
                     e->cfg.room);
    else
        n = snprintf(buf, sizeof(buf),
                     "CONNECT {\"verbose\":false,\"pedantic\":false,\"protocol\":1,"
                     "\"name\":\"sluice-bench\"}\r\nPING\r\n");
    sb_engine_send(e, c, SB_WS_BINARY, buf, (size_t)n);
}

/* Consumes complete protocol operations from p[0..len); returns the number
 * of bytes consumed. */
static size_t nats_parse(sb_engine *e, sb_conn *c, const uint8_t *p, size_t len)
{
    size_t off = 0;

    while (off < len && c->fd >= 0) {
        const uint8_t *line = p + off;
        const uint8_t *eol = memmem(line, len - off, "\r\n", 2);
        size_t ll;
        if (eol == NULL)
            break;
        ll = (size_t)(eol - line);
        if (ll >= 4 && memcmp(line, "MSG ", 4) == 0) {
            /* MSG <subject> <sid> [reply] <#bytes> */
            const uint8_t *sp = eol;
            size_t nbytes = 0;
            size_t mult = 1;
            sb_msg m;
            while (sp > line && sp[-1] >= '0' && sp[-1] <= '9') {
                nbytes += (size_t)(sp[-1] - '0') * mult;
                mult *= 10;
                sp--;
            }
            if (len - off < ll + 2 + nbytes + 2)
                break;
            memset(&m, 0, sizeof(m));
            m.type = SB_M_DATA;
            m.kind = SB_K_MESSAGE;
            m.room_ch = 1;
            m.id_n = -1;
            m.stamp = sb_parse_stamp(eol + 2, nbytes);
            off += ll + 2 + nbytes + 2;
            sb_engine_msg(e, c, &m);
            continue;
        }
        if (ll >= 4 && memcmp(line, "PING", 4) == 0) {
            sb_engine_send(e, c, SB_WS_BINARY, "PONG\r\n", 6);
        } else if (ll >= 4 && memcmp(line, "PONG", 4) == 0) {
            if (c->state == SB_ST_OPENING)
                sb_engine_ready(e, c);
        } else if (ll >= 4 && memcmp(line, "INFO", 4) == 0) {
            if (c->state == SB_ST_OPENING)
                nats_greet(e, c);
        } else if (ll >= 4 && memcmp(line, "-ERR", 4) == 0) {
            sb_msg m;
            memset(&m, 0, sizeof(m));
            m.type = SB_M_ERROR;
            m.id_n = -1;
            sb_engine_msg(e, c, &m);
        }
        off += ll + 2;
    }
    return off;
}

static void nats_data(sb_engine *e, sb_conn *c, int opcode, uint8_t *d, size_t len)
{
    size_t used;

    (void)opcode;
    if (c->slen == 0) {
        used = nats_parse(e, c, d, len);
        if (c->fd >= 0 && used < len && sbuf_append(c, d + used, len - used) != 0)
            sb_engine_close(e, c, 1);
        return;
    }
    if (sbuf_append(c, d, len) != 0) {
        sb_engine_close(e, c, 1);
        return;
    }
    used = nats_parse(e, c, c->sbuf, c->slen);
    if (c->fd < 0)
        return;
    memmove(c->sbuf, c->sbuf + used, c->slen - used);
    c->slen -= (uint32_t)used;
}

static void nats_publish(sb_engine *e, sb_conn *c, int64_t n, const char *text, size_t len)
{
    char buf[SB_FRAME_MAX / 16];
    int k = snprintf(buf, sizeof(buf), "PUB %s %zu\r\n%.*s\r\n", e->cfg.room, len, (int)len, text);

    (void)n;
    if (k > 0 && (size_t)k < sizeof(buf))
        sb_engine_send(e, c, SB_WS_BINARY, buf, (size_t)k);
}

static void nats_heartbeat(sb_engine *e, sb_conn *c)
{
    sb_engine_send(e, c, SB_WS_BINARY, "PING\r\n", 6);
}

/* ----------------------------------------------------------------- nchan */

static void nchan_open(sb_engine *e, sb_conn *c)
{
    /* A websocket subscriber or publisher is in place once upgraded. */
    sb_engine_ready(e, c);
}

static void nchan_data(sb_engine *e, sb_conn *c, int opcode, uint8_t *d, size_t len)
{
    sb_msg m;

    (void)opcode;
    if (c->role == SB_ROLE_PUB)
        return; /* publish receipts */
    memset(&m, 0, sizeof(m));
    m.type = SB_M_DATA;
    m.kind = SB_K_MESSAGE;
    m.room_ch = 1;
    m.id_n = -1;
    m.stamp = sb_parse_stamp(d, len);
    sb_engine_msg(e, c, &m);
}

static void nchan_publish(sb_engine *e, sb_conn *c, int64_t n, const char *text, size_t len)
{
    (void)n;
    sb_engine_send(e, c, SB_WS_TEXT, text, len);
}

static void nchan_heartbeat(sb_engine *e, sb_conn *c)
{
    sb_engine_send(e, c, SB_WS_PING, "", 0);
}

/* ------------------------------------------------------------- socket.io */

/* Engine.IO v4 over a websocket: "0{...}" open, "2"/"3" ping/pong, "4..."
 * socket.io packets: "40" connect, "42[...]" event, "43<id>[...]" ack. */
static void sio_open(sb_engine *e, sb_conn *c)
{
    (void)e;
    (void)c;
}

static void sio_data(sb_engine *e, sb_conn *c, int opcode, uint8_t *d, size_t len)
{
    char buf[256];
    int n;

    if (opcode != SB_WS_TEXT || len == 0)
        return;
    switch (d[0]) {
    case '0':
        sb_engine_send(e, c, SB_WS_TEXT, "40", 2);
        return;
    case '2':
        sb_engine_send(e, c, SB_WS_TEXT, "3", 1);
        return;
    case '4':
        break;
    default:
        return;
    }
    if (len >= 2 && d[1] == '0' && c->state == SB_ST_OPENING) {
        if (c->role == SB_ROLE_SUB) {
            /* Join with an ack so "ready" means "in the room". */
            n = snprintf(buf, sizeof(buf), "421[\"join\",\"%s\"]", e->cfg.room);
            sb_engine_send(e, c, SB_WS_TEXT, buf, (size_t)n);
        } else {
            sb_engine_ready(e, c);
        }
        return;
    }
    if (len >= 2 && d[1] == '3' && c->state == SB_ST_OPENING) {
        sb_engine_ready(e, c);
        return;
    }
    if (len >= 2 && d[1] == '2') {
        sb_msg m;
        memset(&m, 0, sizeof(m));
        m.type = SB_M_DATA;
        m.kind = SB_K_MESSAGE;
        m.room_ch = 1;
        m.id_n = -1;
        m.stamp = sb_parse_stamp(d, len);
        sb_engine_msg(e, c, &m);
    } else if (len >= 2 && d[1] == '4') {
        sb_msg m;
        memset(&m, 0, sizeof(m));
        m.type = SB_M_ERROR;
        m.id_n = -1;
        sb_engine_msg(e, c, &m);
    }
}

static void sio_publish(sb_engine *e, sb_conn *c, int64_t n, const char *text, size_t len)
{
    char buf[SB_FRAME_MAX / 16];
    int k = snprintf(buf, sizeof(buf), "42[\"pub\",\"%s\",\"%.*s\"]", e->cfg.room, (int)len, text);

    (void)n;
    if (k > 0 && (size_t)k < sizeof(buf))
        sb_engine_send(e, c, SB_WS_TEXT, buf, (size_t)k);
}

static void sio_heartbeat(sb_engine *e, sb_conn *c)
{
    (void)e;
    (void)c;
    /* The server pings; the client only answers. */
}

static const sb_adapter ADAPTERS[] = {
    [SB_P_SLUICE] = {"sluice", sluice_open, sluice_data, sluice_publish, sluice_heartbeat},
    [SB_P_NATS] = {"nats", nats_open, nats_data, nats_publish, nats_heartbeat},
    [SB_P_NCHAN] = {"nchan", nchan_open, nchan_data, nchan_publish, nchan_heartbeat},
    [SB_P_SOCKETIO] = {"socketio", sio_open, sio_data, sio_publish, sio_heartbeat},
};

const sb_adapter *sb_adapter_for(sb_proto_kind p)
{
    return &ADAPTERS[p];
}
