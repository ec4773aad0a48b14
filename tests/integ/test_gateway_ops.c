/* Operations of sluice-gateway: draining on SIGTERM (DESIGN.md
 * "Operations"), heartbeats (PROTOCOL.md "Transport", close 4408), and
 * wss:// with SLUICE_TLS_CERT/SLUICE_TLS_KEY, the certificate made at test
 * time with the openssl CLI and the client written on the OpenSSL API
 * (the harness's hx_ws speaks plain TCP only). */
#include <fcntl.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "test_gateway_fx.h"

#define T 15000

/* ---- drain ---- */

typedef struct ready_wait {
    int port;
    int want;
} ready_wait;

static bool readyz_is(void *ud)
{
    ready_wait *w = ud;
    return hx_http_get(NULL, w->port, "/readyz", 1000, NULL) == w->want;
}

START_TEST(test_drain_on_sigterm)
{
    static const char *const gw_env[] = {"SLUICE_DRAIN_GRACE_MS=3000", NULL};
    fx f;
    fx_opts o = {.gateways = 2, .gw_env = gw_env};
    hx_sl_client *c[3];
    ready_wait rw;
    hx_proc *gw0;
    int status = 0;
    char sb[64];

    fx_start(&f, &o);
    for (int i = 0; i < 3; i++) {
        char user[16];
        snprintf(user, sizeof(user), "user%d", i);
        c[i] = fx_client(&f, 0, "acme", user);
        cJSON_Delete(hx_sl_join(c[i], "lobby", T));
    }
    /* One room event each, so every client's resume positions name the
     * room (the harness's tracker records channels from their events). */
    fx_publish_room_msg(&f, "acme", "lobby", "writer", "w-1", "welcome all");
    fx_publish_flush(&f);
    for (int i = 0; i < 3; i++) {
        cJSON *e = hx_ws_expect(hx_sl_ws(c[i]), "{\"type\":\"event\",\"id\":\"w-1\"}", T);
        HX_ASSERT_MSG(f.s, e != NULL, "client %d: %s", i, hx_error());
        cJSON_Delete(e);
    }
    gw0 = hx_stack_proc(f.s, HX_GATEWAY, 0);
    rw.port = hx_stack_admin_port(f.s, HX_GATEWAY, 0);
    rw.want = 200;
    HX_ASSERT(f.s, readyz_is(&rw));

    HX_OK(f.s, hx_stack_kill(f.s, HX_GATEWAY, 0, SIGTERM));
    rw.want = 503;
    HX_ASSERT_MSG(f.s, hx_wait_until(readyz_is, &rw, 5000),
                  "/readyz never said 503 while draining");
    for (int i = 0; i < 3; i++) {
        cJSON *r = hx_ws_expect_type(hx_sl_ws(c[i]), "reconnect", T);
        HX_ASSERT_MSG(f.s, r != NULL, "client %d got no reconnect: %s", i, hx_error());
        HX_ASSERT_MSG(f.s,
                      cJSON_IsNumber(cJSON_GetObjectItem(r, "after_ms")) &&
                          hx_json_int(r, "after_ms", -1) >= 0 &&
                          hx_json_int(r, "after_ms", -1) <= 3000,
                      "after_ms %lld", (long long)hx_json_int(r, "after_ms", -1));
        cJSON_Delete(r);
    }
    /* While draining: sends are refused, new connections are not served. */
    {
        cJSON *b = hx_sl_send_wait(c[1], "late-1", NULL, "too late", T);
        HX_ASSERT_MSG(f.s,
                      b != NULL && fx__is_type(b, "busy") &&
                          strcmp(hx_json_str(b, "reason"), "draining") == 0,
                      "send while draining: %s", b ? cJSON_PrintUnformatted(b) : hx_error());
        HX_ASSERT(f.s, hx_json_int(b, "retry_after_ms", -1) > 0);
        cJSON_Delete(b);
    }
    {
        hx_ws *late = NULL;
        int code = hx_ws_connect(&late, NULL, hx_stack_gw_port(f.s, 0), HX_SL_PATH,
                                 HX_SL_SUBPROTOCOL, 5000);
        if (code == 101) {
            sl_status st = hx_sl_hello(late, fx_token(&f, "acme", "late"), NULL, 5000, NULL);
            HX_ASSERT_MSG(f.s, st != SL_OK, "a new client was welcomed by a draining gateway");
            HX_ASSERT_MSG(f.s, hx_ws_close_code(late) == 1001 || fx_wait_close(late, T) == 1001,
                          "new connection while draining closed with %d", hx_ws_close_code(late));
            hx_ws_destroy(late);
        } else {
            HX_ASSERT_MSG(f.s, code == 503 || code == -1, "new connection while draining: %d",
                          code);
        }
    }
    for (int i = 0; i < 3; i++) {
        int code = fx_wait_close(hx_sl_ws(c[i]), T);
        HX_ASSERT_MSG(f.s, code == 1001, "client %d closed with %d, wanted 1001", i, code);
    }
    HX_ASSERT_MSG(f.s, hx_proc_wait(gw0, 20000, &status) == SL_OK,
                  "the gateway did not exit after draining");
    HX_ASSERT_MSG(f.s, WIFEXITED(status) && WEXITSTATUS(status) == 0, "gateway: %s after SIGTERM",
                  hx_proc_status_str(status, sb, sizeof(sb)));
    HX_ASSERT(f.s, hx_stack_sanitizer_clean(f.s));
    /* Everyone resumes on the other gateway. */
    for (int i = 0; i < 3; i++) {
        char id[16];
        cJSON *a;
        HX_OK(f.s, hx_sl_reconnect(c[i], hx_stack_gw_port(f.s, 1), T));
        HX_ASSERT(f.s, hx_json_true(hx_sl_welcome(c[i]), "resumed"));
        snprintf(id, sizeof(id), "m-%d", i);
        a = hx_sl_send_wait(c[i], id, "lobby", "resumed elsewhere", T);
        HX_ASSERT_MSG(f.s, a != NULL && fx__is_type(a, "accepted"), "after resume: %s",
                      a ? cJSON_PrintUnformatted(a) : hx_error());
        cJSON_Delete(a);
        hx_sl_destroy(c[i]);
    }
    fx_stop(&f);
}
END_TEST

/* ---- shutdown under load ---- */

/* SIGTERM (_i == 1) or SIGTERM twice, an impatient operator (_i == 2), to
 * a gateway under load while NATS is paused: client sends have their
 * publish acks in flight, room events arrive on live subscriptions, and
 * stream reads (the heads of rooms just joined) sit on the io thread until
 * they time out. Those reads fail during the shutdown and their results
 * would retry on the io pool, and the acks resume when NATS does: the
 * gateway must stop the cnats callbacks, then the io pool, then drop the
 * bridge's tasks, so nothing touches what was freed. It exits 0 with no
 * sanitizer report (run it in the SANITIZE=1 build). */
START_TEST(test_sigterm_under_load_exits_clean)
{
    static const char *const gw_env[] = {"SLUICE_DRAIN_GRACE_MS=0", "SLUICE_RATE=100000",
                                         "SLUICE_BURST=100000", "SLUICE_GW_IO_THREADS=1", NULL};
    enum { NCLIENTS = 6, NSENDS = 200, NJOINS = 8 };
    fx f;
    fx_opts o = {.gateways = 1, .gw_env = gw_env};
    hx_sl_client *c[NCLIENTS];
    hx_proc *gw0, *nats;
    int status = 0;
    char sb[64];

    fx_start(&f, &o);
    for (int i = 0; i < NCLIENTS; i++) {
        char user[16];
        snprintf(user, sizeof(user), "user%d", i);
        c[i] = fx_client(&f, 0, "acme", user);
        cJSON_Delete(hx_sl_join(c[i], "load", T));
    }
    for (int i = 0; i < NCLIENTS; i++) {
        char id[32];
        cJSON *a;
        snprintf(id, sizeof(id), "c%d-first", i);
        a = hx_sl_send_wait(c[i], id, "load", "warm up", T);
        HX_ASSERT_MSG(f.s, a != NULL && fx__is_type(a, "accepted"), "warm up: %s",
                      a ? cJSON_PrintUnformatted(a) : hx_error());
        cJSON_Delete(a);
    }
    /* A flood into the room everyone is in (each send fanned out to all),
     * with history reads. */
    for (int k = 0; k < NSENDS; k++) {
        for (int i = 0; i < NCLIENTS; i++) {
            char id[32];
            snprintf(id, sizeof(id), "c%d-%d", i, k);
            HX_OK(f.s, hx_sl_send(c[i], id, "load", "under load", NULL));
            if (k % 50 == 0)
                HX_OK(f.s,
                      hx_ws_send_text(hx_sl_ws(c[i]),
                                      "{\"type\":\"history\",\"ch\":\"r:load\",\"limit\":50}"));
        }
    }
    /* The last sends are answered: the gateway has read everything sent. */
    for (int i = 0; i < NCLIENTS; i++) {
        char pattern[96];
        cJSON *a;
        snprintf(pattern, sizeof(pattern), "{\"id\":\"c%d-%d\"}", i, NSENDS - 1);
        a = hx_ws_expect(hx_sl_ws(c[i]), pattern, T);
        HX_ASSERT_MSG(f.s, a != NULL, "client %d: %s", i, hx_error());
        cJSON_Delete(a);
    }
    /* NATS pauses with more sends on their way and rooms being joined. */
    nats = hx_nats_proc(hx_stack_nats(f.s), 0);
    HX_ASSERT(f.s, kill(hx_proc_pid(nats), SIGSTOP) == 0);
    for (int i = 0; i < NCLIENTS; i++) {
        for (int k = 0; k < 20; k++) {
            char id[32];
            snprintf(id, sizeof(id), "c%d-late-%d", i, k);
            HX_OK(f.s, hx_sl_send(c[i], id, "load", "while paused", NULL));
        }
        for (int r = 0; r < NJOINS; r++)
            HX_OK(f.s, hx_ws_sendf(hx_sl_ws(c[i]), "{\"type\":\"join\",\"room\":\"new%d\"}", r));
    }
    /* The joins are read: the gateway answers a ping after them. */
    for (int i = 0; i < NCLIENTS; i++)
        fx_ping(&f, hx_sl_ws(c[i]));
    HX_OK(f.s, hx_stack_kill(f.s, HX_GATEWAY, 0, SIGTERM));
    if (_i == 2)
        HX_OK(f.s, hx_stack_kill(f.s, HX_GATEWAY, 0, SIGTERM));
    gw0 = hx_stack_proc(f.s, HX_GATEWAY, 0);
    /* NATS comes back while the gateway shuts down (it waits for its reads
     * to time out first): the acks and events flow again. */
    {
        sl_status st = hx_proc_wait(gw0, 8000, &status);
        kill(hx_proc_pid(nats), SIGCONT);
        if (st != SL_OK)
            st = hx_proc_wait(gw0, 30000, &status);
        HX_ASSERT_MSG(f.s, st == SL_OK, "the gateway did not exit after SIGTERM under load");
    }
    HX_ASSERT_MSG(f.s, WIFEXITED(status) && WEXITSTATUS(status) == 0, "gateway: %s after SIGTERM",
                  hx_proc_status_str(status, sb, sizeof(sb)));
    HX_ASSERT(f.s, hx_stack_sanitizer_clean(f.s));
    for (int i = 0; i < NCLIENTS; i++)
        hx_sl_destroy(c[i]);
    fx_stop(&f);
}
END_TEST

/* ---- heartbeats ---- */

START_TEST(test_silent_client_closed_4408_answering_client_kept)
{
    static const char *const gw_env[] = {"SLUICE_HEARTBEAT_MS=500", NULL};
    fx f;
    fx_opts o = {.gateways = 1, .gw_env = gw_env};
    hx_ws *quiet, *alive;
    int code = -1;
    int64_t deadline;

    fx_start(&f, &o);
    quiet = fx_raw_hello(&f, 0, "acme", "quiet");
    alive = fx_raw_hello(&f, 0, "acme", "alive");
    hx_ws_set_auto_pong(quiet, false);
    /* Read both (alive answers pings as it reads) until quiet is cut. */
    deadline = hx_now_ms() + T;
    while (code < 0 && hx_now_ms() < deadline) {
        char *junk = NULL;
        hx_ws_result r = hx_ws_recv(quiet, 20, &junk);
        free(junk);
        if (r == HX_WS_CLOSED || r == HX_WS_ERROR)
            code = hx_ws_close_code(quiet);
        r = hx_ws_recv(alive, 20, &junk);
        free(junk);
        HX_ASSERT_MSG(f.s, r == HX_WS_TIMEOUT || r == HX_WS_TEXT,
                      "the answering client was closed (%d) after %lu pings",
                      hx_ws_close_code(alive), hx_ws_get_stats(alive).pings);
    }
    HX_ASSERT_MSG(f.s, code == 4408, "silent client closed with %d, wanted 4408", code);
    HX_ASSERT_MSG(f.s, hx_ws_get_stats(quiet).pings >= 1, "the gateway never pinged");
    HX_ASSERT(f.s, hx_ws_get_stats(alive).pings >= 2);
    fx_ping(&f, alive);
    hx_ws_destroy(quiet);
    hx_ws_destroy(alive);
    fx_stop(&f);
}
END_TEST

/* The gateway's presence record of a room with a joined, idle client is
 * rewritten about once a heartbeat, so it outlives the bucket's TTL while
 * the client is connected. */
static uint64_t presence_revision(fx *f, const char *key)
{
    kvStore *kv = NULL;
    kvEntry *e = NULL;
    uint64_t rev = 0;

    if (js_KeyValue(&kv, f->js, SL_KV_PRESENCE) != NATS_OK)
        return 0;
    if (kvStore_Get(&e, kv, key) == NATS_OK && e != NULL)
        rev = kvEntry_Revision(e);
    kvEntry_Destroy(e);
    kvStore_Destroy(kv);
    return rev;
}

START_TEST(test_presence_refreshed_with_heartbeats)
{
    static const char *const gw_env[] = {"SLUICE_HEARTBEAT_MS=400", NULL};
    fx f;
    fx_opts o = {.gateways = 1, .gw_env = gw_env};
    hx_sl_client *c;
    char *key = NULL;
    uint64_t first = 0, last = 0;
    int rewrites = 0;
    int64_t deadline;

    fx_start(&f, &o);
    c = fx_client(&f, 0, "acme", "idler");
    cJSON_Delete(hx_sl_join(c, "lobby", T));
    /* Read (answering pings) while waiting for the record, then for three
     * more writes of it. */
    deadline = hx_now_ms() + T;
    while (hx_now_ms() < deadline) {
        char *junk = NULL;
        hx_ws_result r = hx_ws_recv(hx_sl_ws(c), 50, &junk);
        free(junk);
        HX_ASSERT_MSG(f.s, r == HX_WS_TIMEOUT || r == HX_WS_TEXT, "the idle client was closed (%d)",
                      hx_ws_close_code(hx_sl_ws(c)));
        if (key == NULL) {
            int nrec;
            key = fx_presence_record_of(&f, "acme", "lobby", hx_sl_session(c), &nrec);
        }
        if (key != NULL) {
            uint64_t rev = presence_revision(&f, key);
            if (first == 0)
                first = rev;
            else if (rev != last)
                rewrites++;
            last = rev;
        }
        if (rewrites >= 3)
            break;
    }
    HX_ASSERT_MSG(f.s, first != 0, "no presence record lists %s", hx_sl_session(c));
    HX_ASSERT_MSG(f.s, rewrites >= 3, "presence entry %s rewritten %d times in %d ms", key,
                  rewrites, T);
    free(key);
    hx_sl_destroy(c);
    fx_stop(&f);
}
END_TEST

/* ---- wss:// ---- */

typedef struct tls_ws {
    int fd;
    SSL_CTX *ctx;
    SSL *ssl;
} tls_ws;

static const char *tls_err(void)
{
    static char buf[256];
    unsigned long e = ERR_get_error();
    if (e == 0)
        return "no OpenSSL error";
    ERR_error_string_n(e, buf, sizeof(buf));
    return buf;
}

static bool tls_read_exact(tls_ws *t, void *buf, size_t n)
{
    size_t got = 0;

    while (got < n) {
        int r = SSL_read(t->ssl, (char *)buf + got, (int)(n - got));
        if (r <= 0)
            return false;
        got += (size_t)r;
    }
    return true;
}

static bool tls_write_all(tls_ws *t, const void *buf, size_t n)
{
    return SSL_write(t->ssl, buf, (int)n) == (int)n;
}

static void tls_close(tls_ws *t)
{
    if (t->ssl != NULL)
        SSL_free(t->ssl);
    if (t->ctx != NULL)
        SSL_CTX_free(t->ctx);
    if (t->fd >= 0)
        close(t->fd);
    t->ssl = NULL;
    t->ctx = NULL;
    t->fd = -1;
}

/* TLS handshake (verifying the gateway's certificate against ca for IP
 * 127.0.0.1), then the WebSocket upgrade. */
static void tls_open(fx *f, int port, const char *ca, tls_ws *t)
{
    struct timeval tv = {.tv_sec = 10};
    const char *key = "dGhlIHNhbXBsZSBub25jZQ==";
    char accept[29], head[4096], *req;
    size_t n = 0;

    memset(t, 0, sizeof(*t));
    t->fd = hx_tcp_connect(NULL, port, T);
    HX_ASSERT_MSG(f->s, t->fd >= 0, "connect: %s", hx_error());
    fcntl(t->fd, F_SETFL, fcntl(t->fd, F_GETFL) & ~O_NONBLOCK);
    setsockopt(t->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(t->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    t->ctx = SSL_CTX_new(TLS_client_method());
    HX_ASSERT(f->s, t->ctx != NULL);
    HX_ASSERT_MSG(f->s, SSL_CTX_load_verify_locations(t->ctx, ca, NULL) == 1, "CA: %s", tls_err());
    SSL_CTX_set_verify(t->ctx, SSL_VERIFY_PEER, NULL);
    t->ssl = SSL_new(t->ctx);
    HX_ASSERT(f->s, t->ssl != NULL);
    X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(t->ssl), "127.0.0.1");
    SSL_set_fd(t->ssl, t->fd);
    HX_ASSERT_MSG(f->s, SSL_connect(t->ssl) == 1, "TLS handshake: %s (verify: %s)", tls_err(),
                  X509_verify_cert_error_string(SSL_get_verify_result(t->ssl)));
    req = hx_strf("GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\n"
                  "Connection: Upgrade\r\nSec-WebSocket-Key: "
                  "%s\r\nSec-WebSocket-Version: 13\r\n"
                  "Sec-WebSocket-Protocol: %s\r\n\r\n",
                  HX_SL_PATH, port, key, HX_SL_SUBPROTOCOL);
    HX_ASSERT(f->s, tls_write_all(t, req, strlen(req)));
    free(req);
    /* Byte by byte, so no frame after the head is swallowed. */
    while (n < sizeof(head) - 1 && (n < 4 || memcmp(head + n - 4, "\r\n\r\n", 4) != 0)) {
        HX_ASSERT_MSG(f->s, tls_read_exact(t, head + n, 1), "upgrade response cut short");
        n++;
    }
    head[n] = '\0';
    HX_ASSERT_MSG(f->s, strncmp(head, "HTTP/1.1 101", 12) == 0, "upgrade over TLS: %s", head);
    hx_ws_accept_key(key, accept);
    HX_ASSERT_MSG(f->s, strstr(head, accept) != NULL, "bad Sec-WebSocket-Accept: %s", head);
}

static void tls_send_text(fx *f, tls_ws *t, const char *text)
{
    size_t len = strlen(text), h = 0;
    unsigned char *fr = malloc(len + 14);
    const unsigned char mask[4] = {0x12, 0x34, 0x56, 0x78};

    ck_assert_ptr_nonnull(fr);
    fr[h++] = 0x81;
    if (len < 126) {
        fr[h++] = (unsigned char)(0x80 | len);
    } else {
        ck_assert_uint_lt(len, 65536);
        fr[h++] = 0x80 | 126;
        fr[h++] = (unsigned char)(len >> 8);
        fr[h++] = (unsigned char)len;
    }
    memcpy(fr + h, mask, 4);
    h += 4;
    for (size_t i = 0; i < len; i++)
        fr[h + i] = (unsigned char)text[i] ^ mask[i % 4];
    HX_ASSERT(f->s, tls_write_all(t, fr, h + len));
    free(fr);
}

/* The next text message (control frames skipped); NULL at a close or on a
 * read error/timeout. Caller frees. */
static char *tls_recv_text(tls_ws *t)
{
    for (int k = 0; k < 100; k++) {
        unsigned char hd[2], ext[8];
        uint64_t len;
        char *p;
        if (!tls_read_exact(t, hd, 2))
            return NULL;
        len = hd[1] & 0x7f;
        if (len == 126) {
            if (!tls_read_exact(t, ext, 2))
                return NULL;
            len = ((uint64_t)ext[0] << 8) | ext[1];
        } else if (len == 127) {
            if (!tls_read_exact(t, ext, 8))
                return NULL;
            len = 0;
            for (int i = 0; i < 8; i++)
                len = (len << 8) | ext[i];
        }
        if (len > (1u << 24))
            return NULL;
        p = malloc(len + 1);
        if (p == NULL || !tls_read_exact(t, p, len)) {
            free(p);
            return NULL;
        }
        p[len] = '\0';
        if ((hd[0] & 0x0f) == 0x1)
            return p;
        free(p);
        if ((hd[0] & 0x0f) == 0x8)
            return NULL;
    }
    return NULL;
}

/* Waits for a text frame containing needle; returns it (caller frees). */
static char *tls_expect(fx *f, tls_ws *t, const char *needle)
{
    for (int k = 0; k < 100; k++) {
        char *m = tls_recv_text(t);
        HX_ASSERT_MSG(f->s, m != NULL, "wss: connection ended waiting for %s", needle);
        if (strstr(m, needle) != NULL)
            return m;
        free(m);
    }
    HX_ASSERT_MSG(f->s, false, "wss: no frame with %s", needle);
    return NULL;
}

START_TEST(test_wss_with_tls_cert)
{
    fx f;
    fx_opts o = {.gateways = 1};
    char *dir = NULL, *cert, *key, *env_cert, *env_key;
    const char *gw_env[3];
    hx_proc *p = NULL;
    int status = -1;
    tls_ws t;
    char *m;
    char sb[64];

    HX_OK(NULL, hx_tmpdir_create("tls", &dir));
    cert = hx_strf("%s/cert.pem", dir);
    key = hx_strf("%s/key.pem", dir);
    {
        const char *argv[] = {"openssl",
                              "req",
                              "-x509",
                              "-newkey",
                              "ec",
                              "-pkeyopt",
                              "ec_paramgen_curve:prime256v1",
                              "-nodes",
                              "-keyout",
                              key,
                              "-out",
                              cert,
                              "-days",
                              "1",
                              "-subj",
                              "/CN=127.0.0.1",
                              "-addext",
                              "subjectAltName=IP:127.0.0.1",
                              NULL};
        HX_OK(NULL, hx_proc_spawn(&p, "openssl", argv, NULL, NULL));
    }
    HX_OK(NULL, hx_proc_wait(p, 30000, &status));
    ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "openssl req: %s",
                  hx_proc_status_str(status, sb, sizeof(sb)));
    hx_proc_destroy(p);
    env_cert = hx_strf("SLUICE_TLS_CERT=%s", cert);
    env_key = hx_strf("SLUICE_TLS_KEY=%s", key);
    gw_env[0] = env_cert;
    gw_env[1] = env_key;
    gw_env[2] = NULL;
    o.gw_env = gw_env;
    fx_start(&f, &o);

    tls_open(&f, hx_stack_gw_port(f.s, 0), cert, &t);
    m = hx_strf("{\"type\":\"hello\",\"token\":\"%s\"}", fx_token(&f, "acme", "alice"));
    tls_send_text(&f, &t, m);
    free(m);
    m = tls_expect(&f, &t, "\"type\":\"welcome\"");
    free(m);
    tls_send_text(&f, &t, "{\"type\":\"send\",\"id\":\"tls-1\",\"text\":\"over tls\"}");
    m = tls_expect(&f, &t, "\"type\":\"accepted\"");
    HX_ASSERT(f.s, strstr(m, "\"id\":\"tls-1\"") != NULL);
    free(m);
    tls_send_text(&f, &t, "{\"type\":\"ping\"}");
    m = tls_expect(&f, &t, "\"type\":\"pong\"");
    free(m);
    tls_close(&t);
    HX_ASSERT(f.s, fx_stream_msgs(&f, SL_STREAM_IN, NULL) == 1);
    /* Plain ws:// on the TLS port gets no WebSocket. */
    {
        hx_ws *plain = NULL;
        int code = hx_ws_connect(&plain, NULL, hx_stack_gw_port(f.s, 0), HX_SL_PATH,
                                 HX_SL_SUBPROTOCOL, 5000);
        HX_ASSERT_MSG(f.s, code != 101, "plain ws:// was upgraded on the TLS port");
        hx_ws_destroy(plain);
    }
    fx_stop(&f);
    hx_rm_rf(dir);
    free(dir);
    free(cert);
    free(key);
    free(env_cert);
    free(env_key);
}
END_TEST

/* ---- exit codes ---- */

/* Runs the gateway binary with vars (shell assignments, may be "") and
 * args; returns its exit status (-1: killed) and its output in out (caller
 * frees). No NATS is needed: the config is read before the bus. */
static int run_gateway_with(const char *vars, const char *args, char **out)
{
    /* timeout: a gateway that accepted the config would wait for NATS. */
    char *cmd = hx_strf("SLUICE_NATS_URL=nats://127.0.0.1:1 SLUICE_ADMIN_LISTEN=127.0.0.1:1 %s "
                        "timeout -s KILL 15 '%s/sluice-gateway' %s 2>&1",
                        vars, hx_stack_default_bin_dir(), args);
    FILE *p = popen(cmd, "r");
    size_t len = 0, cap = 16384;
    char *buf = calloc(1, cap);
    int status;

    ck_assert_ptr_nonnull(p);
    ck_assert_ptr_nonnull(buf);
    while (len + 1 < cap) {
        size_t r = fread(buf + len, 1, cap - len - 1, p);
        if (r == 0)
            break;
        len += r;
    }
    status = pclose(p);
    free(cmd);
    *out = buf;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/* A bad option value exits 2 (SL_EXIT_CONFIG) with a message naming it;
 * --help exits 0 with the usage. */
START_TEST(test_exit_codes_bad_config_and_help)
{
    static const char *const bad[][3] = {
        {"SLUICE_JWT_SECRET=0123456789abcdef SLUICE_RATE=0", "", "SLUICE_RATE"},
        {"SLUICE_JWT_SECRET=0123456789abcdef", "--max-rooms=100000", "SLUICE_MAX_ROOMS"},
        {"SLUICE_JWT_SECRET=0123456789abcdef SLUICE_LOG_LEVEL=loud", "", "SLUICE_LOG_LEVEL"},
        {"SLUICE_JWT_SECRET=short", "", "SLUICE_JWT_SECRET must be at least 16"},
        {"env -u SLUICE_JWT_SECRET -u SLUICE_JWT_PUBLIC_KEY", "", "SLUICE_JWT_SECRET"},
        {"SLUICE_JWT_SECRET=0123456789abcdef", "--no-such-flag", "unknown flag"},
    };
    char *out = NULL;
    int rc;

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        rc = run_gateway_with(bad[i][0], bad[i][1], &out);
        ck_assert_msg(rc == 2, "%s %s: exit status %d, output: %s", bad[i][0], bad[i][1], rc, out);
        ck_assert_msg(strstr(out, bad[i][2]) != NULL, "%s %s: the error does not say %s: %s",
                      bad[i][0], bad[i][1], bad[i][2], out);
        free(out);
    }
    rc = run_gateway_with("", "--help", &out);
    ck_assert_msg(rc == 0, "--help: exit status %d, output: %s", rc, out);
    ck_assert_msg(strstr(out, "Usage: sluice-gateway") != NULL &&
                      strstr(out, "SLUICE_HEARTBEAT_MS") != NULL,
                  "--help: %s", out);
    free(out);
}
END_TEST

int main(void)
{
    Suite *su = suite_create("gateway ops");
    TCase *tc = tcase_create("ops");
    SRunner *sr;
    int failed;

    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_drain_on_sigterm);
    tcase_add_test(tc, test_silent_client_closed_4408_answering_client_kept);
    tcase_add_test(tc, test_presence_refreshed_with_heartbeats);
    tcase_add_test(tc, test_wss_with_tls_cert);
    tcase_add_loop_test(tc, test_sigterm_under_load_exits_clean, 1, 3);
    tcase_add_test(tc, test_exit_codes_bad_config_and_help);
    suite_add_tcase(su, tc);
    sr = srunner_create(su);
    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? 0 : 1;
}
