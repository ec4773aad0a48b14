/* Self-test of the integration-test harness (tests/harness) against a real
 * nats-server and against a fake Sluice service.
 *
 * The fake service is this very binary: when it runs under the name
 * sluice-gateway, sluice-orchestrator or sluice-worker (through symlinks in a
 * temporary directory), main() serves /readyz on SLUICE_ADMIN_LISTEN and, for
 * the gateway, a small WebSocket server on SLUICE_LISTEN whose behaviour the
 * test drives with text commands ("!close 4401", "!frag 5 text", ...). That
 * lets the harness's stack, WebSocket and protocol helpers be checked
 * without the real binaries. HX_FAKE_MODE selects misbehaviour (crash,
 * never_ready, asan, ignore_term, exit1_on_term, die_later, refuse). */
#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <openssl/evp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <time.h>
#include <unistd.h>

#include "hx.h"
#include "sl_auth.h"

/* ================================================================== */
/* The fake service                                                    */
/* ================================================================== */

static volatile sig_atomic_t fake_term;

static void fake_on_term(int sig)
{
    (void)sig;
    fake_term = 1;
}

static int fake_listen(const char *addr)
{
    const char *colon = strrchr(addr, ':');
    if (colon == NULL)
        return -1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(colon + 1))};
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, (struct sockaddr *)&a, sizeof a) != 0 || listen(fd, 64) != 0) {
        fprintf(stderr, "fake: cannot listen on %s: %s\n", addr, strerror(errno));
        exit(4);
    }
    return fd;
}

static void fake_write(int fd, const void *p, size_t len)
{
    hx__io_write_all(fd, p, len, hx_now_ms() + 10000);
}

/* Sends one server frame; masked only when asked (a bug on purpose). */
static void fake_send(int fd, int op, const void *data, size_t len, bool fin, bool mask)
{
    unsigned char h[14];
    size_t hl = 0;
    h[hl++] = (unsigned char)((fin ? 0x80 : 0) | op);
    unsigned char mb = mask ? 0x80 : 0;
    if (len < 126) {
        h[hl++] = (unsigned char)(mb | len);
    } else if (len <= 0xFFFF) {
        h[hl++] = mb | 126;
        h[hl++] = (unsigned char)(len >> 8);
        h[hl++] = (unsigned char)len;
    } else {
        h[hl++] = mb | 127;
        for (int i = 7; i >= 0; i--)
            h[hl++] = (unsigned char)((uint64_t)len >> (8 * i));
    }
    unsigned char *buf = malloc(hl + 4 + len);
    memcpy(buf, h, hl);
    if (mask) {
        memcpy(buf + hl, "\x01\x02\x03\x04", 4);
        hl += 4;
    }
    for (size_t i = 0; i < len; i++)
        buf[hl + i] = ((const unsigned char *)data)[i] ^ (mask ? (unsigned char)(1 + (i & 3)) : 0);
    fake_write(fd, buf, hl + len);
    free(buf);
}

static void fake_send_text(int fd, const char *s)
{
    fake_send(fd, HX_WS_OP_TEXT, s, strlen(s), true, false);
}

static void fake_send_close(int fd, int code, const char *reason)
{
    unsigned char p[125];
    p[0] = (unsigned char)(code >> 8);
    p[1] = (unsigned char)code;
    size_t rl = reason ? strlen(reason) : 0;
    memcpy(p + 2, reason ? reason : "", rl);
    fake_send(fd, HX_WS_OP_CLOSE, p, 2 + rl, true, false);
}

static int fake_read_exact(int fd, unsigned char *buf, size_t len, unsigned char **pend,
                           size_t *pend_len)
{
    size_t got = 0;
    /* Bytes that arrived with the HTTP head come first. */
    if (*pend_len > 0) {
        size_t take = *pend_len < len ? *pend_len : len;
        memcpy(buf, *pend, take);
        memmove(*pend, *pend + take, *pend_len - take);
        *pend_len -= take;
        got = take;
    }
    while (got < len) {
        ssize_t n = hx__io_read(fd, buf + got, len - got, hx_now_ms() + 60000);
        if (n <= 0)
            return -1;
        got += (size_t)n;
    }
    return 0;
}

/* Reads one client frame. Returns 0, or -1 at the end of the stream. */
static int fake_read_frame(int fd, int *op, bool *fin, bool *masked, unsigned char **data,
                           size_t *len, unsigned char **pend, size_t *pend_len)
{
    unsigned char h[8];
    if (fake_read_exact(fd, h, 2, pend, pend_len) != 0)
        return -1;
    *fin = h[0] & 0x80;
    *op = h[0] & 0x0F;
    *masked = h[1] & 0x80;
    uint64_t pl = h[1] & 0x7F;
    if (pl == 126) {
        if (fake_read_exact(fd, h, 2, pend, pend_len) != 0)
            return -1;
        pl = ((uint64_t)h[0] << 8) | h[1];
    } else if (pl == 127) {
        if (fake_read_exact(fd, h, 8, pend, pend_len) != 0)
            return -1;
        pl = 0;
        for (int i = 0; i < 8; i++)
            pl = (pl << 8) | h[i];
    }
    unsigned char key[4] = {0};
    if (*masked && fake_read_exact(fd, key, 4, pend, pend_len) != 0)
        return -1;
    if (pl > (64u << 20))
        return -1;
    *data = malloc(pl + 1);
    if (fake_read_exact(fd, *data, pl, pend, pend_len) != 0) {
        free(*data);
        return -1;
    }
    for (uint64_t i = 0; i < pl; i++)
        (*data)[i] ^= key[i & 3];
    (*data)[pl] = '\0';
    *len = pl;
    return 0;
}

static void fake_json_reply(int fd, const cJSON *msg)
{
    const char *type = hx_json_str(msg, "type");
    if (type == NULL) {
        fake_send_text(fd, "{\"type\":\"error\",\"code\":\"bad_frame\"}");
        return;
    }
    if (strcmp(type, "hello") == 0) {
        const char *tok = hx_json_str(msg, "token");
        if (tok == NULL || strcmp(tok, "bad") == 0) {
            fake_send_text(fd,
                           "{\"type\":\"error\",\"code\":\"unauthorized\",\"message\":\"bad\"}");
            fake_send_close(fd, 4401, "unauthorized");
            return;
        }
        cJSON *w = cJSON_CreateObject();
        cJSON_AddStringToObject(w, "type", "welcome");
        char sess[32];
        snprintf(sess, sizeof sess, "S%d", (int)getpid());
        cJSON_AddStringToObject(w, "session", sess);
        cJSON_AddStringToObject(w, "resume_token", "R-tok");
        cJSON_AddNumberToObject(w, "heartbeat_ms", 25000);
        const cJSON *res = cJSON_GetObjectItemCaseSensitive(msg, "resume");
        cJSON_AddBoolToObject(w, "resumed", res != NULL);
        if (res != NULL)
            cJSON_AddItemToObject(w, "resume_echo", cJSON_Duplicate(res, true));
        char *s = cJSON_PrintUnformatted(w);
        fake_send_text(fd, s);
        free(s);
        cJSON_Delete(w);
    } else if (strcmp(type, "send") == 0) {
        const char *id = hx_json_str(msg, "id");
        const char *text = hx_json_str(msg, "text");
        char buf[1024];
        snprintf(buf, sizeof buf,
                 "{\"type\":\"accepted\",\"id\":\"%s\",\"event\":\"E1\",\"duplicate\":false}", id);
        fake_send_text(fd, buf);
        snprintf(buf, sizeof buf,
                 "{\"type\":\"event\",\"ch\":\"s\",\"seq\":100,\"kind\":\"reply\",\"to\":\"%s\","
                 "\"text\":\"echo: %s\",\"final\":true}",
                 id, text);
        fake_send_text(fd, buf);
    } else if (strcmp(type, "join") == 0) {
        char buf[256];
        snprintf(buf, sizeof buf,
                 "{\"type\":\"joined\",\"room\":\"%s\",\"ch\":\"r:%s\",\"seq\":0,\"members\":[]}",
                 hx_json_str(msg, "room"), hx_json_str(msg, "room"));
        fake_send_text(fd, buf);
    } else {
        char *s = cJSON_PrintUnformatted(msg);
        fake_send_text(fd, s);
        free(s);
    }
}

/* Handles a text command or JSON message; returns false to end. */
static bool fake_ws_message(int fd, char *text, size_t len, unsigned char **pend, size_t *pend_len)
{
    int a = 0, b = 0;
    char word[64] = "";
    if (strncmp(text, "!close ", 7) == 0) {
        fake_send_close(fd, atoi(text + 7), "bye");
        /* Wait for the client's close reply, briefly. */
        int op;
        bool fin, masked;
        unsigned char *d = NULL;
        size_t l;
        if (fake_read_frame(fd, &op, &fin, &masked, &d, &l, pend, pend_len) == 0)
            free(d);
        return false;
    }
    if (strcmp(text, "!drop") == 0)
        return false;
    if (sscanf(text, "!frag %d %63s", &a, word) == 2 && a > 0) {
        size_t wl = strlen(word), per = (wl + (size_t)a - 1) / (size_t)a;
        for (int i = 0; i < a; i++) {
            size_t off = (size_t)i * per;
            size_t n = off >= wl ? 0 : (wl - off < per ? wl - off : per);
            fake_send(fd, i == 0 ? HX_WS_OP_TEXT : HX_WS_OP_CONT, word + (off < wl ? off : wl), n,
                      i == a - 1, false);
            if (i == 0)
                fake_send(fd, HX_WS_OP_PING, "mid", 3, true, false);
        }
        return true;
    }
    if (strcmp(text, "!ping") == 0) {
        fake_send(fd, HX_WS_OP_PING, "hx", 2, true, false);
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        bool got = false;
        if (*pend_len > 0 || poll(&pfd, 1, 300) == 1) {
            int op;
            bool fin, masked;
            unsigned char *d = NULL;
            size_t l;
            if (fake_read_frame(fd, &op, &fin, &masked, &d, &l, pend, pend_len) == 0) {
                got = op == HX_WS_OP_PONG && l == 2 && memcmp(d, "hx", 2) == 0;
                free(d);
            }
        }
        fake_send_text(fd, got ? "pong-ok" : "pong-missing");
        return true;
    }
    if (strcmp(text, "!binary") == 0) {
        fake_send(fd, HX_WS_OP_BINARY, "\x00\x01\x02", 3, true, false);
        return true;
    }
    if (strcmp(text, "!badutf8") == 0) {
        fake_send(fd, HX_WS_OP_TEXT, "ok\xC3\x28", 4, true, false);
        return true;
    }
    if (strcmp(text, "!masked") == 0) {
        fake_send(fd, HX_WS_OP_TEXT, "masked", 6, true, true);
        return true;
    }
    if (sscanf(text, "!big %d", &a) == 1 && a > 0) {
        char *big = malloc((size_t)a);
        memset(big, 'a', (size_t)a);
        fake_send(fd, HX_WS_OP_TEXT, big, (size_t)a, true, false);
        free(big);
        return true;
    }
    if (sscanf(text, "!events %63s %d %d", word, &a, &b) == 3) {
        for (int i = a; i <= b; i++) {
            char buf[160];
            snprintf(buf, sizeof buf,
                     "{\"type\":\"event\",\"ch\":\"%s\",\"seq\":%d,\"kind\":\"message\"}", word, i);
            fake_send_text(fd, buf);
        }
        return true;
    }
    cJSON *j = cJSON_ParseWithLength(text, len);
    if (j == NULL) {
        fake_send(fd, HX_WS_OP_TEXT, text, len, true, false); /* plain echo */
        return true;
    }
    fake_json_reply(fd, j);
    cJSON_Delete(j);
    return true;
}

static void fake_ws(int fd, const char *head, unsigned char *pend, size_t pend_len,
                    const char *mode)
{
    char key[128], proto[128], resp[512];
    if (strcmp(mode, "refuse") == 0) {
        const char *r = "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 7\r\n"
                        "Content-Length: 0\r\nConnection: close\r\n\r\n";
        fake_write(fd, r, strlen(r));
        return;
    }
    if (!hx_http_header(head, "Sec-WebSocket-Key", key, sizeof key)) {
        const char *r = "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n";
        fake_write(fd, r, strlen(r));
        return;
    }
    char accept[29];
    hx_ws_accept_key(key, accept);
    bool has_proto = hx_http_header(head, "Sec-WebSocket-Protocol", proto, sizeof proto);
    if (has_proto) {
        char *comma = strchr(proto, ',');
        if (comma)
            *comma = '\0';
    }
    snprintf(resp, sizeof resp,
             "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
             "Sec-WebSocket-Accept: %s\r\n%s%s%s\r\n",
             accept, has_proto ? "Sec-WebSocket-Protocol: " : "", has_proto ? proto : "",
             has_proto ? "\r\n" : "");
    fake_write(fd, resp, strlen(resp));
    unsigned char *msg = NULL;
    size_t mlen = 0;
    int mop = 0;
    for (int i = 0; i < 100000; i++) {
        int op;
        bool fin, masked;
        unsigned char *d = NULL;
        size_t l = 0;
        if (fake_read_frame(fd, &op, &fin, &masked, &d, &l, &pend, &pend_len) != 0)
            break;
        if (!masked) {
            free(d);
            fake_send_close(fd, 1002, "unmasked");
            break;
        }
        if (op == HX_WS_OP_CLOSE) {
            int code = l >= 2 ? (d[0] << 8 | d[1]) : 0;
            free(d);
            if (code)
                fake_send_close(fd, code, "");
            else
                fake_send(fd, HX_WS_OP_CLOSE, "", 0, true, false);
            break;
        }
        if (op == HX_WS_OP_PING) {
            fake_send(fd, HX_WS_OP_PONG, d, l, true, false);
            free(d);
            continue;
        }
        if (op == HX_WS_OP_PONG) {
            free(d);
            continue;
        }
        if (op != HX_WS_OP_CONT) {
            free(msg);
            msg = NULL;
            mlen = 0;
            mop = op;
        }
        msg = realloc(msg, mlen + l + 1);
        memcpy(msg + mlen, d, l);
        mlen += l;
        msg[mlen] = '\0';
        free(d);
        if (!fin)
            continue;
        bool go_on = true;
        if (mop == HX_WS_OP_BINARY)
            fake_send(fd, HX_WS_OP_BINARY, msg, mlen, true, false);
        else
            go_on = fake_ws_message(fd, (char *)msg, mlen, &pend, &pend_len);
        free(msg);
        msg = NULL;
        mlen = 0;
        if (!go_on)
            break;
    }
    free(msg);
}

static void fake_admin(int fd, const char *head, const char *mode)
{
    char path[256] = "";
    sscanf(head, "GET %255s", path);
    char buf[512];
    if (strcmp(path, "/chunked") == 0) {
        const char *r = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                        "7\r\nhello, \r\n8\r\nchunked \r\n5\r\nworld\r\n0\r\n\r\n";
        fake_write(fd, r, strlen(r));
        return;
    }
    int code = 404;
    const char *body = "not found";
    if (strcmp(path, "/healthz") == 0) {
        code = 200;
        body = "ok";
    } else if (strcmp(path, "/readyz") == 0) {
        bool ready = strcmp(mode, "never_ready") != 0;
        code = ready ? 200 : 503;
        body = ready ? "ready" : "not ready";
    }
    snprintf(buf, sizeof buf,
             "HTTP/1.1 %d X\r\nContent-Type: text/plain\r\nContent-Length: %zu\r\n"
             "Connection: close\r\n\r\n%s",
             code, strlen(body), body);
    fake_write(fd, buf, strlen(buf));
}

static void fake_conn(int fd, bool ws, const char *mode)
{
    char *head = NULL, *extra = NULL;
    size_t extra_len = 0;
    if (hx__http_read_head(fd, hx_now_ms() + 10000, &head, &extra, &extra_len) == 0) {
        if (ws)
            fake_ws(fd, head, (unsigned char *)extra, extra_len, mode);
        else
            fake_admin(fd, head, mode);
    }
    free(head);
    free(extra);
}

static int fake_main(const char *name)
{
    const char *mode = getenv("HX_FAKE_MODE");
    if (mode == NULL)
        mode = "ok";
    fprintf(stderr, "fake %s pid=%d mode=%s\n", name, (int)getpid(), mode);
    static const char *const keys[] = {"SLUICE_NATS_URL",
                                       "SLUICE_JWT_SECRET",
                                       "SLUICE_LISTEN",
                                       "SLUICE_ADMIN_LISTEN",
                                       "SLUICE_LOG_LEVEL",
                                       "SLUICE_ECHO_TOKEN_DELAY_MS",
                                       "ASAN_OPTIONS",
                                       "UBSAN_OPTIONS",
                                       "HX_X",
                                       "HX_W",
                                       "HX_EXTRA"};
    for (size_t i = 0; i < sizeof keys / sizeof *keys; i++) {
        const char *v = getenv(keys[i]);
        if (v != NULL)
            fprintf(stderr, "env %s=%s\n", keys[i], v);
    }
    if (strcmp(mode, "crash") == 0) {
        fprintf(stderr, "fake: crashing as asked\n");
        return 3;
    }
    if (strcmp(mode, "asan") == 0)
        fprintf(stderr, "==1==ERROR: AddressSanitizer: heap-use-after-free (fake report)\n");
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = strcmp(mode, "ignore_term") == 0 ? SIG_IGN : fake_on_term;
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    const char *admin = getenv("SLUICE_ADMIN_LISTEN");
    const char *listen_addr = strcmp(name, "sluice-gateway") == 0 ? getenv("SLUICE_LISTEN") : NULL;
    struct pollfd pfd[2];
    int n = 0;
    if (admin != NULL)
        pfd[n++] = (struct pollfd){.fd = fake_listen(admin), .events = POLLIN};
    if (listen_addr != NULL)
        pfd[n++] = (struct pollfd){.fd = fake_listen(listen_addr), .events = POLLIN};
    int64_t started = hx_now_ms();
    /* Bounded: a fake lives at most 10 minutes. */
    while (!fake_term && hx_now_ms() - started < 600000) {
        if (strcmp(mode, "die_later") == 0 && hx_now_ms() - started > 300) {
            fprintf(stderr, "fake: dying on my own\n");
            return 2;
        }
        while (waitpid(-1, NULL, WNOHANG) > 0)
            ;
        if (poll(pfd, (nfds_t)n, 50) <= 0)
            continue;
        for (int i = 0; i < n; i++) {
            if (!(pfd[i].revents & POLLIN))
                continue;
            int c = accept4(pfd[i].fd, NULL, NULL, SOCK_CLOEXEC);
            if (c < 0)
                continue;
            pid_t pid = fork();
            if (pid == 0) {
                prctl(PR_SET_PDEATHSIG, SIGKILL);
                fake_conn(c, listen_addr != NULL && i == n - 1, mode);
                close(c);
                _exit(0);
            }
            close(c);
        }
    }
    fprintf(stderr, "fake %s: SIGTERM, exiting\n", name);
    return strcmp(mode, "exit1_on_term") == 0 ? 1 : 0;
}

/* ================================================================== */
/* Test helpers                                                        */
/* ================================================================== */

/* A temp dir with sluice-* symlinks to this binary. */
static char *make_fake_bin(void)
{
    char *dir = NULL;
    ck_assert_int_eq(hx_tmpdir_create("bin", &dir), SL_OK);
    char self[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    ck_assert_int_gt(n, 0);
    self[n] = '\0';
    static const char *const names[] = {"sluice-gateway", "sluice-orchestrator", "sluice-worker"};
    for (int i = 0; i < 3; i++) {
        char *link = hx_strf("%s/%s", dir, names[i]);
        ck_assert_int_eq(symlink(self, link), 0);
        free(link);
    }
    return dir;
}

/* Lines printed by a pgrep run through the harness (pgrep excludes itself). */
static int pgrep_count(const char *arg1, const char *arg2, char **out_text)
{
    char *dir = NULL;
    ck_assert_int_eq(hx_tmpdir_create("pgrep", &dir), SL_OK);
    char *log = hx_strf("%s/out", dir);
    const char *argv[] = {"pgrep", "-a", arg1, arg2, NULL};
    hx_proc *p = NULL;
    ck_assert_int_eq(hx_proc_spawn(&p, "pgrep", argv, NULL, log), SL_OK);
    int status = 0;
    ck_assert_int_eq(hx_proc_wait(p, 5000, &status), SL_OK);
    hx_proc_destroy(p);
    char *text = hx_file_tail(log, 1 << 20);
    int lines = 0;
    for (char *c = text; c && *c; c++)
        lines += *c == '\n';
    if (out_text)
        *out_text = text;
    else
        free(text);
    free(log);
    hx_rm_rf(dir);
    free(dir);
    return lines;
}

static int my_children(char **text)
{
    char pid[32];
    snprintf(pid, sizeof pid, "%d", (int)getpid());
    /* The pgrep itself is our child but excludes itself. */
    return pgrep_count("-P", pid, text);
}

static void assert_no_children(void)
{
    char *text = NULL;
    int n = my_children(&text);
    ck_assert_msg(n == 0, "processes left behind:\n%s", text);
    free(text);
}

static bool path_exists(const char *p)
{
    struct stat st;
    return lstat(p, &st) == 0;
}

/* Accumulates NATS protocol text from a ws until needle appears. */
static bool nats_ws_wait_for(hx_ws *ws, const char *needle, int timeout_ms, char **acc)
{
    int64_t deadline = hx_now_ms() + timeout_ms;
    size_t len = *acc ? strlen(*acc) : 0;
    for (int i = 0; i < 10000; i++) {
        if (*acc && strstr(*acc, needle))
            return true;
        int left = (int)(deadline - hx_now_ms());
        if (left <= 0)
            return false;
        char *m = NULL;
        size_t ml = 0;
        hx_ws_result r = hx_ws_recv_msg(ws, left, &m, &ml);
        if (r != HX_WS_TEXT && r != HX_WS_BINARY)
            return false;
        *acc = realloc(*acc, len + ml + 1);
        memcpy(*acc + len, m, ml + 1);
        len += ml;
        free(m);
    }
    return false;
}

static hx_ws *nats_ws_connect(hx_nats *n)
{
    hx_ws *ws = NULL;
    int code = hx_ws_connect(&ws, NULL, hx_nats_ws_port(n, 0), "/", NULL, 5000);
    ck_assert_msg(code == 101, "ws connect to nats: %d %s", code, hx_error());
    char *acc = NULL;
    ck_assert_msg(nats_ws_wait_for(ws, "INFO {", 5000, &acc), "no INFO: %s", hx_error());
    free(acc);
    ck_assert_int_eq(hx_ws_send_text(ws, "CONNECT {\"verbose\":false,\"protocol\":1}\r\n"), SL_OK);
    return ws;
}

/* ================================================================== */
/* util                                                                */
/* ================================================================== */

static bool cond_counter(void *ud)
{
    int *n = ud;
    return ++*n >= 5;
}

static bool cond_never(void *ud)
{
    (void)ud;
    return false;
}

START_TEST(test_util_time_and_wait)
{
    int64_t t0 = hx_now_ms();
    hx_sleep_ms(50);
    int64_t dt = hx_now_ms() - t0;
    ck_assert_int_ge(dt, 50);
    ck_assert_int_lt(dt, 1000);

    int n = 0;
    ck_assert(hx_wait_until(cond_counter, &n, 1000));
    ck_assert_int_eq(n, 5);

    t0 = hx_now_ms();
    ck_assert(!hx_wait_until(cond_never, NULL, 150));
    dt = hx_now_ms() - t0;
    ck_assert_int_ge(dt, 150);
    ck_assert_int_lt(dt, 1000);
    ck_assert_ptr_nonnull(strstr(hx_error(), "150 ms"));
}
END_TEST

START_TEST(test_util_tmpdir_rm_rf)
{
    char *d = NULL, *outside = NULL;
    ck_assert_int_eq(hx_tmpdir_create("util", &d), SL_OK);
    char prefix[64];
    snprintf(prefix, sizeof prefix, "/tmp/sluice-hx-%d-util-", (int)getpid());
    ck_assert_msg(strncmp(d, prefix, strlen(prefix)) == 0, "%s", d);
    ck_assert_int_eq(hx_tmpdir_create("outside", &outside), SL_OK);
    char *keep = hx_strf("%s/keep", outside);
    ck_assert_int_eq(hx_file_write(keep, "precious\n"), SL_OK);

    char *sub = hx_strf("%s/a/b/c", d);
    char *a = hx_strf("%s/a", d), *ab = hx_strf("%s/a/b", d);
    ck_assert_int_eq(mkdir(a, 0700), 0);
    ck_assert_int_eq(mkdir(ab, 0700), 0);
    ck_assert_int_eq(mkdir(sub, 0700), 0);
    char *f = hx_strf("%s/file", sub);
    ck_assert_int_eq(hx_file_write(f, "x"), SL_OK);
    char *ln = hx_strf("%s/link", ab);
    ck_assert_int_eq(symlink(outside, ln), 0); /* must not be followed */

    ck_assert_int_eq(hx_rm_rf(d), SL_OK);
    ck_assert(!path_exists(d));
    ck_assert(path_exists(keep));
    ck_assert_int_eq(hx_rm_rf(d), SL_OK); /* missing is fine */
    ck_assert_int_eq(hx_rm_rf("/etc"), SL_ERR_INVAL);
    ck_assert_int_eq(hx_rm_rf("/tmp/../etc"), SL_ERR_INVAL);

    /* Tail starts at a line boundary. */
    ck_assert_int_eq(hx_file_write(keep, "line1\nline2\nline3\nline4\n"), SL_OK);
    char *tail = hx_file_tail(keep, 14);
    ck_assert_str_eq(tail, "line3\nline4\n");
    free(tail);
    ck_assert(hx_file_contains(keep, "line2"));
    ck_assert(!hx_file_contains(keep, "line9"));
    ck_assert_ptr_null(hx_file_tail("/nonexistent/x", 10));

    ck_assert_int_eq(hx_rm_rf(outside), SL_OK);
    free(d);
    free(outside);
    free(keep);
    free(sub);
    free(a);
    free(ab);
    free(f);
    free(ln);
}
END_TEST

START_TEST(test_util_sweeps_stale_dirs)
{
    /* A dir named after a pid that no longer exists is swept by the next
     * hx_tmpdir_create. */
    pid_t dead = fork();
    if (dead == 0)
        _exit(0);
    waitpid(dead, NULL, 0);
    char *stale = hx_strf("/tmp/sluice-hx-%d-stack-XXXXXX", (int)dead);
    ck_assert_ptr_nonnull(mkdtemp(stale));
    char *d = NULL;
    ck_assert_int_eq(hx_tmpdir_create("sweep", &d), SL_OK);
    ck_assert(!path_exists(stale));
    ck_assert(path_exists(d)); /* ours (live pid) stays */
    hx_rm_rf(d);
    free(d);
    free(stale);
}
END_TEST

/* ================================================================== */
/* proc                                                                */
/* ================================================================== */

START_TEST(test_proc_env_log_status)
{
    char *d = NULL;
    ck_assert_int_eq(hx_tmpdir_create("proc", &d), SL_OK);
    char *log = hx_strf("%s/p.log", d);
    setenv("HX_INHERITED", "yes", 1);
    setenv("HX_DROPPED", "bad", 1);
    const char *argv[] = {"/bin/sh", "-c",
                          "echo out; echo err >&2; echo \"FOO=$FOO\"; "
                          "echo \"INH=$HX_INHERITED\"; echo \"DROP=${HX_DROPPED-unset}\"; exit 3",
                          NULL};
    const char *env[] = {"FOO=bar", "FOO=baz", "HX_DROPPED", NULL};
    hx_proc *p = NULL;
    ck_assert_int_eq(hx_proc_spawn(&p, "sh", argv, env, log), SL_OK);
    int status = 0;
    ck_assert_int_eq(hx_proc_wait(p, 5000, &status), SL_OK);
    ck_assert(WIFEXITED(status));
    ck_assert_int_eq(WEXITSTATUS(status), 3);
    ck_assert(!hx_proc_alive(p));
    int st2 = 0;
    ck_assert(hx_proc_exited(p, &st2));
    ck_assert_int_eq(st2, status);
    ck_assert(hx_file_contains(log, "out\n"));
    ck_assert(hx_file_contains(log, "err\n"));
    ck_assert(hx_file_contains(log, "FOO=baz\n")); /* the later one wins */
    ck_assert(hx_file_contains(log, "INH=yes\n"));
    ck_assert(hx_file_contains(log, "DROP=unset\n"));
    char sb[64];
    ck_assert_str_eq(hx_proc_status_str(status, sb, sizeof sb), "exit 3");
    ck_assert_int_eq(hx_proc_kill(p, SIGTERM), -1);

    /* Respawn appends a marker and runs again. */
    ck_assert_int_eq(hx_proc_respawn(p), SL_OK);
    ck_assert_int_eq(hx_proc_wait(p, 5000, &status), SL_OK);
    ck_assert_int_eq(hx_proc_starts(p), 2);
    ck_assert(hx_file_contains(log, "=== hx: restart 1 ==="));
    hx_proc_destroy(p);
    hx_proc_destroy(NULL);

    /* A program that cannot run is reported at spawn time. */
    const char *bad[] = {"/nonexistent/prog", NULL};
    ck_assert_int_eq(hx_proc_spawn(&p, "bad", bad, NULL, log), SL_ERR_IO);
    ck_assert_ptr_nonnull(strstr(hx_error(), "cannot execute"));
    const char *nopath[] = {"hx-no-such-program-anywhere", NULL};
    ck_assert_int_eq(hx_proc_spawn(&p, NULL, nopath, NULL, NULL), SL_ERR_IO);

    hx_rm_rf(d);
    free(d);
    free(log);
    assert_no_children();
}
END_TEST

START_TEST(test_proc_fds_group_kill)
{
    char *d = NULL;
    ck_assert_int_eq(hx_tmpdir_create("proc", &d), SL_OK);
    char *log = hx_strf("%s/fds.log", d);
    /* A descriptor without close-on-exec must not reach the child. */
    int leak = socket(AF_INET, SOCK_STREAM, 0);
    ck_assert_int_gt(leak, 2);
    const char *argv[] = {"/bin/sh", "-c", "for f in /proc/$$/fd/*; do echo \"fd:${f##*/}\"; done",
                          NULL};
    hx_proc *p = NULL;
    ck_assert_int_eq(hx_proc_spawn(&p, "fds", argv, NULL, log), SL_OK);
    ck_assert_int_eq(hx_proc_wait(p, 5000, NULL), SL_OK);
    char needle[32];
    snprintf(needle, sizeof needle, "fd:%d\n", leak);
    ck_assert_msg(!hx_file_contains(log, needle), "fd %d leaked into the child", leak);
    ck_assert(hx_file_contains(log, "fd:2\n"));
    close(leak);
    hx_proc_destroy(p);

    /* Own process group; SIGTERM; destroy reaps (no zombie). */
    const char *sl[] = {"sleep", "30", NULL};
    ck_assert_int_eq(hx_proc_spawn(&p, "sleep", sl, NULL, NULL), SL_OK);
    pid_t pid = hx_proc_pid(p);
    ck_assert(hx_proc_alive(p));
    ck_assert_int_eq(getpgid(pid), pid);
    ck_assert_int_eq(hx_proc_wait(p, 100, NULL), SL_ERR_TIMEOUT);
    ck_assert_int_eq(hx_proc_kill(p, SIGTERM), 0);
    int status = 0;
    ck_assert_int_eq(hx_proc_wait(p, 5000, &status), SL_OK);
    ck_assert(WIFSIGNALED(status) && WTERMSIG(status) == SIGTERM);
    hx_proc_destroy(p);
    ck_assert_int_eq(kill(pid, 0), -1);
    ck_assert_int_eq(errno, ESRCH);

    /* A child that ignores SIGTERM, with a grandchild: stop SIGKILLs the
     * whole group after the timeout. */
    ck_assert_int_eq(prctl(PR_SET_CHILD_SUBREAPER, 1), 0);
    const char *stubborn[] = {"/bin/sh", "-c", "trap '' TERM; sleep 30 & wait", NULL};
    ck_assert_int_eq(hx_proc_spawn(&p, "stubborn", stubborn, NULL, NULL), SL_OK);
    pid = hx_proc_pid(p);
    hx_sleep_ms(100); /* let sh set the trap and start sleep */
    int64_t t0 = hx_now_ms();
    ck_assert_int_eq(hx_proc_stop(p, SIGTERM, 300, &status), SL_ERR_TIMEOUT);
    ck_assert_int_lt(hx_now_ms() - t0, 3000);
    ck_assert(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
    /* The grandchild was in the group and is reparented to us: reap it. */
    bool gone = false;
    for (int i = 0; i < 200 && !gone; i++) {
        pid_t r = waitpid(-pid, &status, WNOHANG);
        if (r < 0 && errno == ECHILD)
            gone = true;
        else if (r == 0)
            hx_sleep_ms(10);
    }
    ck_assert_msg(gone, "grandchild of the stopped process survived");
    ck_assert_int_eq(prctl(PR_SET_CHILD_SUBREAPER, 0), 0);
    hx_proc_destroy(p);
    hx_rm_rf(d);
    free(d);
    free(log);
    assert_no_children();
}
END_TEST

START_TEST(test_proc_no_orphans_when_test_dies)
{
    /* The helper spawns a long sleep through the harness and is then
     * SIGKILLed: the sleep must die too (PR_SET_PDEATHSIG). As subreaper we
     * inherit it and can see how it ended. */
    ck_assert_int_eq(prctl(PR_SET_CHILD_SUBREAPER, 1), 0);
    int pfd[2];
    ck_assert_int_eq(pipe(pfd), 0);
    pid_t helper = fork();
    if (helper == 0) {
        close(pfd[0]);
        hx_proc *p = NULL;
        const char *argv[] = {"sleep", "60", NULL};
        if (hx_proc_spawn(&p, "sleep", argv, NULL, NULL) != SL_OK)
            _exit(1);
        pid_t pid = hx_proc_pid(p);
        ssize_t w = write(pfd[1], &pid, sizeof pid);
        (void)w;
        pause();
        _exit(0);
    }
    close(pfd[1]);
    pid_t grandchild = 0;
    ck_assert_int_eq(read(pfd[0], &grandchild, sizeof grandchild), (ssize_t)sizeof grandchild);
    close(pfd[0]);
    ck_assert_int_eq(kill(helper, 0), 0);
    ck_assert_int_eq(kill(grandchild, 0), 0);
    kill(helper, SIGKILL);
    waitpid(helper, NULL, 0);
    int status = 0;
    bool reaped = false;
    for (int i = 0; i < 300 && !reaped; i++) {
        pid_t r = waitpid(grandchild, &status, WNOHANG);
        if (r == grandchild)
            reaped = true;
        else
            hx_sleep_ms(10);
    }
    ck_assert_msg(reaped, "orphan %d still running", (int)grandchild);
    ck_assert(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
    ck_assert_int_eq(prctl(PR_SET_CHILD_SUBREAPER, 0), 0);
}
END_TEST

/* ================================================================== */
/* port + http                                                         */
/* ================================================================== */

START_TEST(test_port_and_http)
{
    int p1 = hx_port_free(), p2 = hx_port_free();
    ck_assert_int_gt(p1, 1024);
    ck_assert_int_gt(p2, 1024);
    ck_assert_int_ne(p1, p2);
    int64_t t0 = hx_now_ms();
    ck_assert(!hx_wait_tcp(p1, 200));
    ck_assert_int_ge(hx_now_ms() - t0, 200);
    ck_assert_int_eq(hx_http_get(NULL, p1, "/", 500, NULL), -1);
    ck_assert_ptr_nonnull(strstr(hx_error(), "refused"));

    /* The fake service's admin endpoint, spawned directly. */
    char *bin = make_fake_bin();
    char *prog = hx_strf("%s/sluice-worker", bin);
    char *log = hx_strf("%s/w.log", bin);
    char *admin = hx_strf("SLUICE_ADMIN_LISTEN=127.0.0.1:%d", p1);
    const char *argv[] = {prog, NULL};
    const char *env[] = {admin, NULL};
    hx_proc *p = NULL;
    ck_assert_int_eq(hx_proc_spawn(&p, "fake", argv, env, log), SL_OK);
    ck_assert_msg(hx_wait_tcp(p1, 10000), "%s", hx_error());

    char *body = NULL;
    ck_assert_int_eq(hx_http_get(NULL, p1, "/readyz", 2000, &body), 200);
    ck_assert_str_eq(body, "ready");
    free(body);
    body = NULL;
    ck_assert_int_eq(hx_http_get("127.0.0.1", p1, "/nope", 2000, &body), 404);
    ck_assert_str_eq(body, "not found");
    free(body);
    ck_assert_int_eq(hx_http_get(NULL, p1, "/chunked", 2000, &body), 200);
    ck_assert_str_eq(body, "hello, chunked world");
    free(body);
    hx_http_resp r;
    ck_assert_int_eq(hx_http_request(NULL, p1, "GET", "/healthz", NULL, 2000, &r), 200);
    char val[64];
    ck_assert(hx_http_header(r.head, "content-length", val, sizeof val));
    ck_assert_str_eq(val, "2");
    ck_assert(!hx_http_header(r.head, "X-Missing", val, sizeof val));
    ck_assert_uint_eq(r.body_len, 2);
    hx_http_resp_free(&r);
    hx_http_resp_free(NULL);

    ck_assert_int_eq(hx_proc_stop(p, SIGTERM, 5000, NULL), SL_OK);
    ck_assert(hx_file_contains(log, "SIGTERM, exiting"));
    hx_proc_destroy(p);
    hx_rm_rf(bin);
    free(bin);
    free(prog);
    free(log);
    free(admin);
    assert_no_children();
}
END_TEST

/* ================================================================== */
/* nats                                                                */
/* ================================================================== */

START_TEST(test_nats_start_restart_store)
{
    hx_nats *n = NULL;
    hx_nats_opts o = {.websocket = true};
    HX_OK(NULL, hx_nats_start(&n, NULL, &o));
    char want[64];
    snprintf(want, sizeof want, "nats://127.0.0.1:%d", hx_nats_port(n, 0));
    ck_assert_str_eq(hx_nats_url(n), want);
    ck_assert_int_eq(hx_nats_nodes(n), 1);
    char *body = NULL;
    ck_assert_int_eq(hx_http_get(NULL, hx_nats_monitor_port(n, 0), "/jsz", 2000, &body), 200);
    ck_assert_ptr_nonnull(strstr(body, "store_dir"));
    free(body);

    /* A file stream with one message, created over the websocket. */
    hx_ws *ws = nats_ws_connect(n);
    char *acc = NULL;
    const char *cfg = "{\"name\":\"HXT\",\"subjects\":[\"hxt.>\"],\"storage\":\"file\"}";
    char *cmd = hx_strf("SUB _INBOX.hx 1\r\nPUB $JS.API.STREAM.CREATE.HXT _INBOX.hx %zu\r\n%s\r\n"
                        "PUB hxt.a _INBOX.hx 5\r\nhello\r\n",
                        strlen(cfg), cfg);
    ck_assert_int_eq(hx_ws_send_text(ws, cmd), SL_OK);
    free(cmd);
    ck_assert_msg(nats_ws_wait_for(ws, "\"seq\":1", 5000, &acc), "no publish ack: %s", acc);
    free(acc);
    acc = NULL;
    hx_ws_destroy(ws);

    /* Crash and restart: same URL, same store. */
    pid_t old = hx_proc_pid(hx_nats_proc(n, 0));
    HX_OK(NULL, hx_nats_restart(n, 0, SIGKILL));
    ck_assert_int_ne(hx_proc_pid(hx_nats_proc(n, 0)), old);
    ck_assert_str_eq(hx_nats_url(n), want);
    ws = nats_ws_connect(n);
    ck_assert_int_eq(
        hx_ws_send_text(ws, "SUB _INBOX.i 1\r\nPUB $JS.API.STREAM.INFO.HXT _INBOX.i 0\r\n\r\n"),
        SL_OK);
    ck_assert_msg(nats_ws_wait_for(ws, "\"messages\":1", 5000, &acc), "stream lost: %s", acc);
    free(acc);
    hx_ws_destroy(ws);

    /* Clean stop, then start again. */
    ck_assert_int_eq(hx_nats_stop(n, 0, SIGTERM), SL_OK);
    ck_assert(!hx_nats_alive(n, 0));
    ck_assert(!hx_wait_tcp(hx_nats_port(n, 0), 100));
    HX_OK(NULL, hx_nats_start_node(n, 0));
    ck_assert(hx_nats_alive(n, 0));
    ck_assert_int_eq(hx_nats_start_node(n, 0), SL_ERR_EXISTS);

    char *log = hx_strf("%s", hx_nats_log_path(n, 0));
    char *dir = hx_strf("%s", log);
    *strrchr(dir, '/') = '\0';
    ck_assert(hx_file_contains(log, "Server is ready"));
    hx_nats_destroy(n);
    hx_nats_destroy(NULL);
    ck_assert(!path_exists(dir));
    free(log);
    free(dir);
    assert_no_children();
}
END_TEST

START_TEST(test_nats_cluster)
{
    hx_nats *n = NULL;
    hx_nats_opts o = {.nodes = 3};
    HX_OK(NULL, hx_nats_start(&n, NULL, &o));
    ck_assert_int_eq(hx_nats_nodes(n), 3);
    ck_assert_int_eq((int)(strchr(hx_nats_url(n), ',') != NULL), 1);
    /* Lose a node; the others stay healthy; it comes back. */
    ck_assert_int_eq(hx_nats_stop(n, 1, SIGKILL), SL_OK);
    ck_assert_int_eq(hx_http_get(NULL, hx_nats_monitor_port(n, 0), "/varz", 2000, NULL), 200);
    HX_OK(NULL, hx_nats_start_node(n, 1));
    for (int i = 0; i < 3; i++)
        ck_assert_int_eq(hx_http_get(NULL, hx_nats_monitor_port(n, i), "/healthz", 2000, NULL),
                         200);
    hx_nats_destroy(n);
    assert_no_children();
}
END_TEST

/* ================================================================== */
/* ws against nats-server's websocket listener                          */
/* ================================================================== */

START_TEST(test_ws_nats)
{
    hx_nats *n = NULL;
    hx_nats_opts o = {.websocket = true};
    HX_OK(NULL, hx_nats_start(&n, NULL, &o));
    int port = hx_nats_ws_port(n, 0);
    hx_ws *ws = NULL;
    ck_assert_int_eq(hx_ws_connect(&ws, NULL, port, "/", NULL, 5000), 101);
    ck_assert_str_eq(hx_ws_protocol(ws), "");

    /* The server speaks first: INFO {...}. */
    char *m = NULL;
    size_t ml = 0;
    hx_ws_result r = hx_ws_recv_msg(ws, 5000, &m, &ml);
    ck_assert_msg(r == HX_WS_BINARY || r == HX_WS_TEXT, "r=%d %s", r, hx_error());
    ck_assert_msg(strncmp(m, "INFO {", 6) == 0, "%s", m);
    ck_assert_uint_eq(ml, strlen(m));
    free(m);

    /* Idle: a bounded timeout. */
    int64_t t0 = hx_now_ms();
    ck_assert_int_eq(hx_ws_recv(ws, 200, &m), HX_WS_TIMEOUT);
    ck_assert_int_ge(hx_now_ms() - t0, 200);
    ck_assert_int_lt(hx_now_ms() - t0, 1500);

    /* PING/PONG in one masked text frame. */
    ck_assert_int_eq(hx_ws_send_text(ws, "CONNECT {\"verbose\":false,\"protocol\":1}\r\nPING\r\n"),
                     SL_OK);
    char *acc = NULL;
    ck_assert_msg(nats_ws_wait_for(ws, "PONG\r\n", 5000, &acc), "%s", hx_error());
    free(acc);
    acc = NULL;

    /* The same PING fragmented across a binary frame and a continuation,
     * with a WebSocket ping in between. */
    ck_assert_int_eq(hx_ws_send_frame(ws, HX_WS_OP_BINARY, "PI", 2, false), SL_OK);
    ck_assert_int_eq(hx_ws_ping(ws, "abc", 3), SL_OK);
    ck_assert_int_eq(hx_ws_send_frame(ws, HX_WS_OP_CONT, "NG\r\n", 4, true), SL_OK);
    ck_assert_msg(nats_ws_wait_for(ws, "PONG\r\n", 5000, &acc), "%s", hx_error());
    free(acc);
    acc = NULL;
    ck_assert_uint_eq(hx_ws_get_stats(ws).pongs, 1);

    /* A 20000-byte message back and forth (16-bit and larger lengths). */
    char *big = malloc(20100);
    int k = sprintf(big, "SUB foo 1\r\nPUB foo 20000\r\n");
    memset(big + k, 'x', 20000);
    strcpy(big + k + 20000, "\r\n");
    ck_assert_int_eq(hx_ws_send_frame(ws, HX_WS_OP_BINARY, big, strlen(big), true), SL_OK);
    free(big);
    ck_assert(nats_ws_wait_for(ws, "MSG foo 1 20000\r\n", 5000, &acc));
    char *start = strstr(acc, "MSG foo 1 20000\r\n") + strlen("MSG foo 1 20000\r\n");
    for (int i = 0; i < 100 && strlen(start) < 20002; i++) {
        ck_assert(nats_ws_wait_for(ws, "never-appears", 200, &acc) || true);
        start = strstr(acc, "MSG foo 1 20000\r\n") + strlen("MSG foo 1 20000\r\n");
    }
    ck_assert_uint_ge(strlen(start), 20002);
    ck_assert_int_eq(strspn(start, "x"), 20000);
    free(acc);
    acc = NULL;

    /* Polite close: nats-server answers 1000. */
    ck_assert_int_eq(hx_ws_close(ws, 1000, "bye"), 1000);
    ck_assert_int_eq(hx_ws_recv(ws, 100, &m), HX_WS_CLOSED);
    ck_assert_int_eq(hx_ws_send_text(ws, "x"), SL_ERR_CLOSED);
    hx_ws_destroy(ws);

    /* Unmasked client frames are a protocol violation: the server drops us. */
    ck_assert_int_eq(hx_ws_connect(&ws, NULL, port, "/", NULL, 5000), 101);
    ck_assert(nats_ws_wait_for(ws, "INFO", 5000, &acc));
    free(acc);
    acc = NULL;
    hx_ws_set_masking(ws, false);
    ck_assert_int_eq(hx_ws_send_text(ws, "CONNECT {}\r\nPING\r\n"), SL_OK);
    ck_assert_int_eq(hx_ws_recv(ws, 5000, &m), HX_WS_CLOSED);
    ck_assert_int_ne(hx_ws_close_code(ws), -1);
    hx_ws_destroy(ws);

    /* Nothing listening: -1. */
    ck_assert_int_eq(hx_ws_connect(&ws, NULL, hx_port_free(), "/", NULL, 1000), -1);
    hx_nats_destroy(n);
    assert_no_children();
}
END_TEST

/* ================================================================== */
/* stack with fake binaries                                             */
/* ================================================================== */

static hx_stack *fake_stack(char **bin, const hx_stack_cfg *base)
{
    *bin = make_fake_bin();
    hx_stack_cfg cfg = base ? *base : (hx_stack_cfg){.gateways = 1};
    cfg.bin_dir = *bin;
    hx_stack *s = NULL;
    HX_OK(NULL, hx_stack_start(&s, &cfg));
    return s;
}

static void free_fake_bin(char *bin)
{
    hx_rm_rf(bin);
    free(bin);
}

START_TEST(test_stack_env_restart_add)
{
    const char *env[] = {"HX_X=1", NULL};
    const char *wenv[] = {"HX_W=2", NULL};
    hx_stack_cfg cfg = {.gateways = 2,
                        .orchestrators = 1,
                        .workers = 2,
                        .echo_token_delay_ms = 7,
                        .env = env,
                        .tier_env = {[HX_WORKER] = wenv}};
    char *bin = NULL;
    hx_stack *s = fake_stack(&bin, &cfg);
    char *dir = hx_strf("%s", hx_stack_dir(s));
    ck_assert(path_exists(dir));
    ck_assert_int_eq(hx_stack_count(s, HX_GATEWAY), 2);
    ck_assert_int_eq(hx_stack_count(s, HX_ORCHESTRATOR), 1);
    ck_assert_int_eq(hx_stack_count(s, HX_WORKER), 2);
    ck_assert_int_eq(strlen(hx_stack_secret(s)), 64);
    ck_assert_int_ne(hx_stack_gw_port(s, 0), hx_stack_gw_port(s, 1));
    ck_assert_int_eq(hx_stack_gw_port(s, 2), -1);
    ck_assert_ptr_null(hx_stack_proc(s, HX_WORKER, 5));

    char *line = NULL;
    for (int t = 0; t < HX_TIERS; t++) {
        for (int i = 0; i < hx_stack_count(s, (hx_tier)t); i++) {
            const char *log = hx_stack_log_path(s, (hx_tier)t, i);
            ck_assert_int_eq(
                hx_http_get(NULL, hx_stack_admin_port(s, (hx_tier)t, i), "/readyz", 2000, NULL),
                200);
            line = hx_strf("env SLUICE_NATS_URL=%s\n", hx_stack_nats_url(s));
            ck_assert(hx_file_contains(log, line));
            free(line);
            line = hx_strf("env SLUICE_JWT_SECRET=%s\n", hx_stack_secret(s));
            ck_assert(hx_file_contains(log, line));
            free(line);
            line = hx_strf("env SLUICE_ADMIN_LISTEN=127.0.0.1:%d\n",
                           hx_stack_admin_port(s, (hx_tier)t, i));
            ck_assert(hx_file_contains(log, line));
            free(line);
            ck_assert(hx_file_contains(log, "env SLUICE_LOG_LEVEL=debug\n"));
            ck_assert(hx_file_contains(log, "env SLUICE_ECHO_TOKEN_DELAY_MS=7\n"));
            ck_assert(hx_file_contains(
                log, "env ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:exitcode=66\n"));
            ck_assert(hx_file_contains(log, "env HX_X=1\n"));
            ck_assert_int_eq(hx_file_contains(log, "env HX_W=2\n"), t == HX_WORKER);
            ck_assert_int_eq(hx_file_contains(log, "env SLUICE_LISTEN="), t == HX_GATEWAY);
        }
    }
    line = hx_strf("env SLUICE_LISTEN=127.0.0.1:%d\n", hx_stack_gw_port(s, 1));
    ck_assert(hx_file_contains(hx_stack_log_path(s, HX_GATEWAY, 1), line));
    free(line);

    /* Crash a gateway, restart it on the same port. */
    int port = hx_stack_gw_port(s, 0);
    HX_OK(s, hx_stack_kill(s, HX_GATEWAY, 0, SIGKILL));
    ck_assert(!hx_proc_alive(hx_stack_proc(s, HX_GATEWAY, 0)));
    ck_assert_int_eq(hx_stack_kill(s, HX_GATEWAY, 0, SIGKILL), SL_ERR_CLOSED);
    HX_OK(s, hx_stack_restart(s, HX_GATEWAY, 0));
    ck_assert_int_eq(hx_stack_gw_port(s, 0), port);
    ck_assert(hx_proc_alive(hx_stack_proc(s, HX_GATEWAY, 0)));
    ck_assert(hx_file_contains(hx_stack_log_path(s, HX_GATEWAY, 0), "=== hx: restart 1 ==="));
    /* Restart of a running process kills it first. */
    pid_t before = hx_proc_pid(hx_stack_proc(s, HX_ORCHESTRATOR, 0));
    HX_OK(s, hx_stack_restart(s, HX_ORCHESTRATOR, 0));
    ck_assert_int_ne(hx_proc_pid(hx_stack_proc(s, HX_ORCHESTRATOR, 0)), before);

    /* One more worker with its own env. */
    const char *extra[] = {"HX_EXTRA=9", NULL};
    int idx = -1;
    HX_OK(s, hx_stack_add(s, HX_WORKER, extra, &idx));
    ck_assert_int_eq(idx, 2);
    ck_assert_int_eq(hx_stack_count(s, HX_WORKER), 3);
    ck_assert(hx_file_contains(hx_stack_log_path(s, HX_WORKER, 2), "env HX_EXTRA=9\n"));
    ck_assert(hx_file_contains(hx_stack_log_path(s, HX_WORKER, 2), "env HX_W=2\n"));

    /* nats-server restart keeps the URL. */
    char *url = hx_strf("%s", hx_stack_nats_url(s));
    HX_OK(s, hx_stack_restart_nats(s, SIGKILL));
    ck_assert_str_eq(hx_stack_nats_url(s), url);
    free(url);

    /* A graceful stop: SIGTERM, all exit 0, no sanitizer text. */
    bool clean = false;
    HX_OK(s, hx_stack_stop_all_gracefully(s, &clean));
    ck_assert(clean);
    for (int i = 0; i < 2; i++)
        ck_assert(!hx_proc_alive(hx_stack_proc(s, HX_GATEWAY, i)));
    ck_assert(hx_stack_sanitizer_clean(s));
    /* Processes can come back after a graceful stop. */
    HX_OK(s, hx_stack_restart(s, HX_GATEWAY, 1));

    hx_stack_destroy(s);
    hx_stack_destroy(NULL);
    ck_assert(!path_exists(dir));
    free(dir);
    free_fake_bin(bin);
    assert_no_children();
}
END_TEST

START_TEST(test_stack_unclean_stops)
{
    static const struct {
        const char *mode;
        const char *expect;
    } cases[] = {
        {"asan", "AddressSanitizer"},
        {"exit1_on_term", "exit 1"},
        {"ignore_term", "still running"},
    };
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        char *mode = hx_strf("HX_FAKE_MODE=%s", cases[c].mode);
        const char *wenv[] = {mode, NULL};
        hx_stack_cfg cfg = {
            .gateways = 1, .workers = 1, .term_timeout_ms = 500, .tier_env = {[HX_WORKER] = wenv}};
        char *bin = NULL;
        hx_stack *s = fake_stack(&bin, &cfg);
        bool clean = true;
        ck_assert_int_eq(hx_stack_stop_all_gracefully(s, &clean), SL_ERR_INTERNAL);
        ck_assert_msg(!clean, "mode %s counted as clean", cases[c].mode);
        ck_assert_msg(strstr(hx_error(), "worker 0") && strstr(hx_error(), cases[c].expect),
                      "mode %s: %s", cases[c].mode, hx_error());
        ck_assert(!hx_proc_alive(hx_stack_proc(s, HX_WORKER, 0)));
        hx_stack_destroy(s);
        free_fake_bin(bin);
        free(mode);
    }

    /* A process that dies on its own counts against the stack; one the test
     * killed does not. */
    const char *denv[] = {"HX_FAKE_MODE=die_later", NULL};
    hx_stack_cfg cfg = {.gateways = 1, .workers = 1, .tier_env = {[HX_WORKER] = denv}};
    char *bin = NULL;
    hx_stack *s = fake_stack(&bin, &cfg);
    HX_OK(s, hx_stack_kill(s, HX_GATEWAY, 0, SIGKILL));
    hx_proc *w = hx_stack_proc(s, HX_WORKER, 0);
    ck_assert_int_eq(hx_proc_wait(w, 5000, NULL), SL_OK);
    bool clean = true;
    ck_assert_int_eq(hx_stack_stop_all_gracefully(s, &clean), SL_ERR_INTERNAL);
    ck_assert(!clean);
    ck_assert_msg(strstr(hx_error(), "worker 0: had died before the stop (exit 2)"), "%s",
                  hx_error());
    ck_assert_ptr_null(strstr(hx_error(), "gateway"));
    hx_stack_destroy(s);
    free_fake_bin(bin);
    assert_no_children();
}
END_TEST

START_TEST(test_stack_start_failures)
{
    char *bin = make_fake_bin();
    char *pattern = hx_strf("/tmp/sluice-hx-%d-stack-", (int)getpid());

    /* Never ready: a bounded wait, then nothing left. */
    const char *nenv[] = {"HX_FAKE_MODE=never_ready", NULL};
    hx_stack_cfg cfg = {.gateways = 1, .bin_dir = bin, .ready_timeout_ms = 1000, .env = nenv};
    hx_stack *s = NULL;
    int64_t t0 = hx_now_ms();
    ck_assert_int_eq(hx_stack_start(&s, &cfg), SL_ERR_TIMEOUT);
    ck_assert_int_lt(hx_now_ms() - t0, 5000);
    ck_assert_ptr_null(s);
    ck_assert_msg(strstr(hx_error(), "last GET /readyz") != NULL, "%s", hx_error());

    /* Crashing at start: reported at once with the exit status. */
    const char *cenv[] = {"HX_FAKE_MODE=crash", NULL};
    cfg.env = cenv;
    cfg.ready_timeout_ms = 20000;
    t0 = hx_now_ms();
    ck_assert_int_eq(hx_stack_start(&s, &cfg), SL_ERR_IO);
    ck_assert_int_lt(hx_now_ms() - t0, 5000);
    ck_assert_msg(strstr(hx_error(), "exit 3") != NULL, "%s", hx_error());

    /* Missing binaries or directory. */
    cfg.env = NULL;
    cfg.bin_dir = "/nonexistent/bin";
    ck_assert_int_eq(hx_stack_start(&s, &cfg), SL_ERR_INVAL);
    char *empty = NULL;
    ck_assert_int_eq(hx_tmpdir_create("empty", &empty), SL_OK);
    cfg.bin_dir = empty;
    ck_assert_int_eq(hx_stack_start(&s, &cfg), SL_ERR_INVAL);
    ck_assert_msg(strstr(hx_error(), "sluice-gateway") != NULL, "%s", hx_error());
    cfg.gateways = 99;
    ck_assert_int_eq(hx_stack_start(&s, &cfg), SL_ERR_INVAL);
    hx_rm_rf(empty);
    free(empty);

    /* No stack dir survived any of it. */
    DIR *d = opendir("/tmp");
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        char *full = hx_strf("/tmp/%s", e->d_name);
        ck_assert_msg(strncmp(full, pattern, strlen(pattern)) != 0, "left behind: %s", full);
        free(full);
    }
    closedir(d);
    free(pattern);
    free_fake_bin(bin);
    assert_no_children();
}
END_TEST

START_TEST(test_stack_repeated_no_leftovers)
{
    char *bin = make_fake_bin();
    for (int round = 0; round < 3; round++) {
        hx_stack_cfg cfg = {.gateways = 1, .orchestrators = 1, .workers = 1, .bin_dir = bin};
        hx_stack *s = NULL;
        HX_OK(NULL, hx_stack_start(&s, &cfg));
        char *dir = hx_strf("%s", hx_stack_dir(s));
        ck_assert_int_eq(my_children(NULL), 4); /* nats + 3 */
        hx_stack_destroy(s);
        ck_assert(!path_exists(dir));
        /* Nothing anywhere still runs with the stack dir in its command line. */
        char *text = NULL;
        int left = pgrep_count("-f", dir, &text);
        ck_assert_msg(left == 0, "still running:\n%s", text);
        free(text);
        free(dir);
        assert_no_children();
    }
    free_fake_bin(bin);
}
END_TEST

/* ================================================================== */
/* ws against the fake gateway                                          */
/* ================================================================== */

static hx_ws *fake_ws_connect(hx_stack *s)
{
    hx_ws *ws = NULL;
    int code =
        hx_ws_connect(&ws, NULL, hx_stack_gw_port(s, 0), HX_SL_PATH, HX_SL_SUBPROTOCOL, 5000);
    HX_ASSERT(s, code == 101);
    return ws;
}

static int observed;

static void count_frames(hx_ws *ws, const cJSON *f, void *ud)
{
    (void)ws;
    (void)f;
    (void)ud;
    observed++;
}

START_TEST(test_ws_json_backlog)
{
    char *bin = NULL;
    hx_stack *s = fake_stack(&bin, NULL);
    hx_ws *ws = fake_ws_connect(s);
    ck_assert_str_eq(hx_ws_protocol(ws), "sluice.v1");
    hx_ws_set_observer(ws, count_frames, NULL);

    /* Echoed JSON. */
    HX_OK(s, hx_ws_send_text(ws, "{\"type\":\"a\",\"n\":1}"));
    cJSON *j = hx_ws_recv_json(ws, 2000);
    HX_ASSERT(s, j != NULL);
    ck_assert_str_eq(hx_json_str(j, "type"), "a");
    ck_assert_int_eq(hx_json_int(j, "n", -1), 1);
    ck_assert_int_eq(hx_json_int(j, "missing", -7), -7);
    cJSON_Delete(j);
    ck_assert(!hx_ws_has_buffered(ws)); /* exactly one frame was sent */

    /* expect_type skips into the backlog; recv_json drains it in order. */
    HX_OK(s, hx_ws_send_text(ws, "{\"type\":\"x\"}"));
    HX_OK(s, hx_ws_sendf(ws, "{\"type\":\"%s\"}", "y"));
    cJSON *z = cJSON_CreateObject();
    cJSON_AddStringToObject(z, "type", "z");
    HX_OK(s, hx_ws_send_json(ws, z));
    cJSON_Delete(z);
    j = hx_ws_expect_type(ws, "z", 2000);
    HX_ASSERT(s, j != NULL);
    cJSON_Delete(j);
    ck_assert_uint_eq(hx_ws_backlog_count(ws), 2);
    ck_assert(hx_ws_has_buffered(ws));
    ck_assert_str_eq(hx_json_str(hx_ws_backlog_get(ws, 0), "type"), "x");
    ck_assert_ptr_null(hx_ws_backlog_get(ws, 2));
    j = hx_ws_expect_type(ws, "y", 0); /* found in the backlog */
    HX_ASSERT(s, j != NULL);
    cJSON_Delete(j);
    j = hx_ws_recv_json(ws, 0);
    ck_assert_str_eq(hx_json_str(j, "type"), "x");
    cJSON_Delete(j);
    ck_assert_uint_eq(hx_ws_backlog_count(ws), 0);

    /* Pattern match: extra keys are fine, listed ones must be equal. */
    HX_OK(s, hx_ws_send_text(ws, "{\"type\":\"event\",\"kind\":\"token\",\"to\":\"c-1\"}"));
    HX_OK(s, hx_ws_send_text(ws, "{\"type\":\"event\",\"kind\":\"reply\",\"to\":\"c-2\"}"));
    HX_OK(s,
          hx_ws_send_text(
              ws,
              "{\"type\":\"event\",\"kind\":\"reply\",\"to\":\"c-1\",\"final\":true,\"n\":[1,2]}"));
    j = hx_ws_expect(ws, "{\"type\":\"event\",\"kind\":\"reply\",\"to\":\"c-1\",\"n\":[1,2]}",
                     2000);
    HX_ASSERT(s, j != NULL);
    ck_assert(hx_json_true(j, "final"));
    cJSON_Delete(j);
    ck_assert_uint_eq(hx_ws_backlog_count(ws), 2);
    ck_assert_ptr_null(hx_ws_expect(ws, "not json", 10));

    /* Timeout: bounded, reported, backlog untouched. */
    int64_t t0 = hx_now_ms();
    ck_assert_ptr_null(hx_ws_expect_type(ws, "never", 200));
    ck_assert_int_ge(hx_now_ms() - t0, 200);
    ck_assert_int_lt(hx_now_ms() - t0, 1500);
    ck_assert_int_eq(hx_ws_last_result(ws), HX_WS_TIMEOUT);
    ck_assert_ptr_nonnull(strstr(hx_error(), "no matching frame"));
    ck_assert_uint_eq(hx_ws_backlog_count(ws), 2);
    hx_ws_backlog_clear(ws);
    ck_assert_uint_eq(hx_ws_backlog_count(ws), 0);

    /* A bounded backlog drops the oldest. */
    hx_ws_set_backlog_max(ws, 2);
    for (int i = 0; i < 4; i++)
        HX_OK(s, hx_ws_sendf(ws, "{\"type\":\"b\",\"i\":%d}", i));
    HX_OK(s, hx_ws_send_text(ws, "{\"type\":\"end\"}"));
    j = hx_ws_expect_type(ws, "end", 2000);
    HX_ASSERT(s, j != NULL);
    cJSON_Delete(j);
    ck_assert_uint_eq(hx_ws_backlog_count(ws), 2);
    ck_assert_int_eq(hx_json_int(hx_ws_backlog_get(ws, 0), "i", -1), 2);
    ck_assert_uint_eq(hx_ws_get_stats(ws).backlog_dropped, 2);
    ck_assert_int_eq(observed, 1 + 3 + 3 + 5);

    /* A non-JSON text frame at the JSON level is an error (not fatal). */
    hx_ws_backlog_clear(ws);
    HX_OK(s, hx_ws_send_text(ws, "plain words"));
    ck_assert_ptr_null(hx_ws_recv_json(ws, 2000));
    ck_assert_int_eq(hx_ws_last_result(ws), HX_WS_ERROR);
    ck_assert_ptr_nonnull(strstr(hx_error(), "not JSON"));
    HX_OK(s, hx_ws_send_text(ws, "!binary"));
    ck_assert_ptr_null(hx_ws_recv_json(ws, 2000));
    ck_assert_ptr_nonnull(strstr(hx_error(), "binary"));
    HX_OK(s, hx_ws_send_text(ws, "{\"type\":\"still-fine\"}"));
    j = hx_ws_expect_type(ws, "still-fine", 2000);
    HX_ASSERT(s, j != NULL);
    cJSON_Delete(j);

    ck_assert_int_eq(hx_ws_close(ws, 1000, NULL), 1000);
    hx_ws_destroy(ws);
    hx_stack_destroy(s);
    free_fake_bin(bin);
}
END_TEST

START_TEST(test_ws_frames)
{
    char *bin = NULL;
    hx_stack *s = fake_stack(&bin, NULL);
    hx_ws *ws = fake_ws_connect(s);
    char *m = NULL;
    size_t ml = 0;

    /* Fragmented server message with a ping in the middle. */
    HX_OK(s, hx_ws_send_text(ws, "!frag 4 abcdefghij"));
    ck_assert_int_eq(hx_ws_recv(ws, 2000, &m), HX_WS_TEXT);
    ck_assert_str_eq(m, "abcdefghij");
    free(m);
    hx_ws_stats st = hx_ws_get_stats(ws);
    ck_assert_uint_eq(st.fragmented, 1);
    ck_assert_uint_eq(st.pings, 1);
    ck_assert_uint_eq(st.messages, 1);
    ck_assert_uint_eq(st.frames, 5);

    /* Automatic pong, then switched off. */
    HX_OK(s, hx_ws_send_text(ws, "!ping"));
    ck_assert_int_eq(hx_ws_recv(ws, 2000, &m), HX_WS_TEXT);
    ck_assert_str_eq(m, "pong-ok");
    free(m);
    hx_ws_set_auto_pong(ws, false);
    HX_OK(s, hx_ws_send_text(ws, "!ping"));
    ck_assert_int_eq(hx_ws_recv(ws, 2000, &m), HX_WS_TEXT);
    ck_assert_str_eq(m, "pong-missing");
    free(m);
    hx_ws_set_auto_pong(ws, true);

    /* Lengths: 7-bit, 16-bit and 64-bit, both directions. */
    int sizes[] = {125, 300, 70000};
    for (int i = 0; i < 3; i++) {
        HX_OK(s, hx_ws_sendf(ws, "!big %d", sizes[i]));
        ck_assert_int_eq(hx_ws_recv_msg(ws, 2000, &m, &ml), HX_WS_TEXT);
        ck_assert_uint_eq(ml, (size_t)sizes[i]);
        ck_assert_uint_eq(strspn(m, "a"), (size_t)sizes[i]);
        free(m);
    }
    char *big = malloc(70001);
    memset(big, 'q', 70000);
    big[70000] = '\0';
    HX_OK(s, hx_ws_send_text(ws, big));
    ck_assert_int_eq(hx_ws_recv_msg(ws, 2000, &m, &ml), HX_WS_TEXT);
    ck_assert_uint_eq(ml, 70000);
    ck_assert_int_eq(memcmp(m, big, 70000), 0);
    free(m);
    free(big);

    /* Client-side fragmentation and binary echo. */
    HX_OK(s, hx_ws_send_frame(ws, HX_WS_OP_TEXT, "{\"type\":", 8, false));
    HX_OK(s, hx_ws_ping(ws, "p", 1));
    HX_OK(s, hx_ws_send_frame(ws, HX_WS_OP_CONT, "\"joined-up\"}", 12, true));
    cJSON *j = hx_ws_expect_type(ws, "joined-up", 2000);
    HX_ASSERT(s, j != NULL);
    cJSON_Delete(j);
    HX_OK(s, hx_ws_send_frame(ws, HX_WS_OP_BINARY, "\x01\x00\x02", 3, true));
    ck_assert_int_eq(hx_ws_recv_msg(ws, 2000, &m, &ml), HX_WS_BINARY);
    ck_assert_uint_eq(ml, 3);
    ck_assert_int_eq(memcmp(m, "\x01\x00\x02", 3), 0);
    free(m);
    ck_assert_int_eq(hx_ws_ping(ws, "x", 200), SL_ERR_INVAL);

    /* Server close with a code and reason. */
    HX_OK(s, hx_ws_send_text(ws, "!close 4401"));
    ck_assert_int_eq(hx_ws_recv(ws, 2000, &m), HX_WS_CLOSED);
    ck_assert_int_eq(hx_ws_close_code(ws), 4401);
    ck_assert_str_eq(hx_ws_close_reason(ws), "bye");
    ck_assert_int_eq(hx_ws_recv(ws, 0, &m), HX_WS_CLOSED);
    hx_ws_destroy(ws);

    /* End of stream without a close frame: 1006. */
    ws = fake_ws_connect(s);
    ck_assert_int_eq(hx_ws_close_code(ws), -1);
    HX_OK(s, hx_ws_send_text(ws, "!drop"));
    ck_assert_int_eq(hx_ws_recv(ws, 2000, &m), HX_WS_CLOSED);
    ck_assert_int_eq(hx_ws_close_code(ws), 1006);
    hx_ws_destroy(ws);

    /* Protocol violations by the server are errors. */
    ws = fake_ws_connect(s);
    HX_OK(s, hx_ws_send_text(ws, "!badutf8"));
    ck_assert_int_eq(hx_ws_recv(ws, 2000, &m), HX_WS_ERROR);
    ck_assert_ptr_nonnull(strstr(hx_error(), "UTF-8"));
    ck_assert_int_eq(hx_ws_recv(ws, 0, &m), HX_WS_ERROR);
    hx_ws_destroy(ws);
    ws = fake_ws_connect(s);
    HX_OK(s, hx_ws_send_text(ws, "!masked"));
    ck_assert_int_eq(hx_ws_recv(ws, 2000, &m), HX_WS_ERROR);
    ck_assert_ptr_nonnull(strstr(hx_error(), "masked"));
    hx_ws_destroy(ws);

    /* Unmasked client frame: the (fake) server closes with 1002. */
    ws = fake_ws_connect(s);
    hx_ws_set_masking(ws, false);
    HX_OK(s, hx_ws_send_text(ws, "hello"));
    ck_assert_int_eq(hx_ws_recv(ws, 2000, &m), HX_WS_CLOSED);
    ck_assert_int_eq(hx_ws_close_code(ws), 1002);
    hx_ws_destroy(ws);

    /* Close without a code; raw bytes. */
    ws = fake_ws_connect(s);
    HX_OK(s, hx_ws_send_raw(ws, "\x81\x80\x00\x00\x00\x00", 6)); /* empty masked text */
    ck_assert_int_eq(hx_ws_recv(ws, 2000, &m), HX_WS_TEXT);
    ck_assert_str_eq(m, "");
    free(m);
    ck_assert_int_eq(hx_ws_close(ws, 0, NULL), 1005);
    hx_ws_destroy(ws);

    /* A small receive buffer. */
    hx_ws_opts o = {.port = hx_stack_gw_port(s, 0), .path = "/v1/ws", .rcvbuf = 4096};
    ck_assert_int_eq(hx_ws_connect_opts(&ws, &o, NULL), 101);
    int rb = 0;
    socklen_t rl = sizeof rb;
    ck_assert_int_eq(getsockopt(hx_ws_fd(ws), SOL_SOCKET, SO_RCVBUF, &rb, &rl), 0);
    ck_assert_int_le(rb, 16384);
    ck_assert_str_eq(hx_ws_protocol(ws), "");
    hx_ws_destroy(ws);

    hx_stack_destroy(s);
    free_fake_bin(bin);
}
END_TEST

START_TEST(test_ws_refused_upgrade)
{
    const char *genv[] = {"HX_FAKE_MODE=refuse", NULL};
    hx_stack_cfg cfg = {.gateways = 1, .tier_env = {[HX_GATEWAY] = genv}};
    char *bin = NULL;
    hx_stack *s = fake_stack(&bin, &cfg);
    hx_ws *ws = NULL;
    hx_ws_handshake hs;
    hx_ws_opts o = {.port = hx_stack_gw_port(s, 0), .path = "/v1/ws", .subprotocol = "sluice.v1"};
    ck_assert_int_eq(hx_ws_connect_opts(&ws, &o, &hs), 503);
    ck_assert_ptr_null(ws);
    ck_assert_int_eq(hs.status, 503);
    ck_assert_int_eq(hs.retry_after, 7);
    ck_assert_ptr_nonnull(strstr(hx_error(), "503"));
    ck_assert_int_eq(hx_ws_connect(&ws, NULL, hx_stack_gw_port(s, 0), "/v1/ws", NULL, 2000), 503);
    hx_sl_client *c = NULL;
    ck_assert_int_eq(hx_sl_connect(&c, hx_stack_gw_port(s, 0), "t", 2000), SL_ERR_FULL);
    ck_assert_ptr_null(c);
    hx_stack_destroy(s);
    free_fake_bin(bin);
}
END_TEST

/* ================================================================== */
/* sluice helpers                                                      */
/* ================================================================== */

static char *b64url_decode(const char *in)
{
    size_t n = strlen(in);
    char *s = malloc(n + 4);
    size_t k = 0;
    for (; k < n; k++)
        s[k] = in[k] == '-' ? '+' : in[k] == '_' ? '/' : in[k];
    while (k % 4)
        s[k++] = '=';
    s[k] = '\0';
    unsigned char *out = malloc(k + 1);
    int len = EVP_DecodeBlock(out, (unsigned char *)s, (int)k);
    free(s);
    if (len < 0) {
        free(out);
        return NULL;
    }
    out[len] = '\0';
    return (char *)out;
}

START_TEST(test_sluice_tokens)
{
    char *bin = NULL;
    hx_stack *s = fake_stack(&bin, NULL);
    char *tok = hx_token(s, "acme", "u1", 60);
    HX_ASSERT(s, tok != NULL);
    char *dot1 = strchr(tok, '.');
    ck_assert_ptr_nonnull(dot1);
    char *dot2 = strchr(dot1 + 1, '.');
    ck_assert_ptr_nonnull(dot2);
    *dot2 = '\0';
    char *payload = b64url_decode(dot1 + 1);
    ck_assert_ptr_nonnull(payload);
    cJSON *claims = cJSON_Parse(payload);
    ck_assert_ptr_nonnull(claims);
    ck_assert_str_eq(hx_json_str(claims, "tenant"), "acme");
    ck_assert_str_eq(hx_json_str(claims, "sub"), "u1");
    int64_t exp = hx_json_int(claims, "exp", 0);
    int64_t now = (int64_t)time(NULL);
    ck_assert_int_ge(exp, now + 58);
    ck_assert_int_le(exp, now + 62);
    cJSON_Delete(claims);
    free(payload);
    free(tok);

    /* The token verifies with the stack's secret. */
    const char *rooms[] = {"lobby", "team-*"};
    tok = hx_token_rooms(s, "acme", "u2", 60, rooms, 2);
    HX_ASSERT(s, tok != NULL);
    sl_auth *a = NULL;
    char err[128];
    ck_assert_int_eq(sl_auth_create(&a, hx_stack_secret(s), NULL, err, sizeof err), SL_OK);
    sl_claims c;
    ck_assert_int_eq(sl_auth_verify(a, tok, now, &c, err, sizeof err), SL_OK);
    ck_assert_str_eq(c.sub, "u2");
    ck_assert_int_eq(c.nrooms, 2);
    free(tok);
    tok = hx_token(s, "acme", "u3", -5); /* already expired */
    ck_assert_int_eq(sl_auth_verify(a, tok, now, &c, err, sizeof err), SL_ERR_EXPIRED);
    free(tok);
    tok = hx_token_secret("other-secret", "acme", "u4", 60, NULL, 0);
    ck_assert_int_eq(sl_auth_verify(a, tok, now, &c, err, sizeof err), SL_ERR_AUTH);
    free(tok);
    sl_auth_destroy(a);
    ck_assert_ptr_null(hx_token(s, "bad.tenant", "u1", 60));
    ck_assert_ptr_nonnull(strstr(hx_error(), "sl_jwt_mint_hs256"));

    hx_stack_destroy(s);
    free_fake_bin(bin);
}
END_TEST

START_TEST(test_sluice_client)
{
    char *bin = NULL;
    hx_stack *s = fake_stack(&bin, NULL);
    int port = hx_stack_gw_port(s, 0);

    /* A refused hello. */
    hx_sl_client *c = NULL;
    ck_assert_int_eq(hx_sl_connect(&c, port, "bad", 3000), SL_ERR_AUTH);
    ck_assert_ptr_null(c);
    ck_assert_msg(strstr(hx_error(), "unauthorized") && strstr(hx_error(), "4401"), "%s",
                  hx_error());

    char *tok = hx_token(s, "acme", "u1", 60);
    HX_OK(s, hx_sl_connect(&c, port, tok, 3000));
    ck_assert_ptr_eq(hx_sl_session(c), strstr(hx_sl_session(c), "S"));
    ck_assert_str_eq(hx_sl_resume_token(c), "R-tok");
    ck_assert(!hx_json_true(hx_sl_welcome(c), "resumed"));
    ck_assert_str_eq(hx_ws_protocol(hx_sl_ws(c)), "sluice.v1");

    /* send -> accepted + reply. */
    cJSON *acc = hx_sl_send_wait(c, "c-1", "lobby", "hi", 3000);
    HX_ASSERT(s, acc != NULL);
    ck_assert_str_eq(hx_json_str(acc, "type"), "accepted");
    cJSON_Delete(acc);
    cJSON *rep = hx_sl_wait_reply(c, "c-1", 3000);
    HX_ASSERT(s, rep != NULL);
    ck_assert_str_eq(hx_json_str(rep, "text"), "echo: hi");
    cJSON_Delete(rep);
    cJSON *joined = hx_sl_join(c, "lobby", 3000);
    HX_ASSERT(s, joined != NULL);
    ck_assert_str_eq(hx_json_str(joined, "ch"), "r:lobby");
    cJSON_Delete(joined);
    HX_OK(s, hx_sl_ack(c, "s", 100));
    cJSON *echo = hx_ws_expect_type(hx_sl_ws(c), "ack", 3000);
    HX_ASSERT(s, echo != NULL);
    ck_assert_int_eq(hx_json_int(echo, "seq", 0), 100);
    cJSON_Delete(echo);

    /* The tracker: positions per channel and duplicates. */
    hx_ws *ws = hx_sl_ws(c);
    HX_OK(s, hx_ws_send_text(ws, "!events s 101 105"));
    HX_OK(s, hx_ws_send_text(ws, "!events s 104 106"));
    HX_OK(s, hx_ws_send_text(ws, "!events r:lobby 10 12"));
    cJSON *last = hx_ws_expect(ws, "{\"ch\":\"r:lobby\",\"seq\":12}", 3000);
    HX_ASSERT(s, last != NULL);
    cJSON_Delete(last);
    hx_sl_counts n = hx_sl_get_counts(c);
    ck_assert_uint_eq(n.events, 1 + 5 + 3 + 3);
    ck_assert_uint_eq(n.duplicates, 2);
    ck_assert_int_eq(hx_sl_position(c, "s"), 106);
    ck_assert_int_eq(hx_sl_position(c, "r:lobby"), 12);
    ck_assert_int_eq(hx_sl_position(c, "r:none"), 0);
    char *pos = hx_sl_positions_json(c);
    ck_assert_str_eq(pos, "{\"s\":106,\"r:lobby\":12}");
    free(pos);

    /* Resume: the gateway gets session, resume token and positions. */
    HX_OK(s, hx_sl_reconnect(c, port, 3000));
    const cJSON *w = hx_sl_welcome(c);
    ck_assert(hx_json_true(w, "resumed"));
    const cJSON *re = cJSON_GetObjectItemCaseSensitive(w, "resume_echo");
    ck_assert_str_eq(hx_json_str(re, "resume_token"), "R-tok");
    ck_assert_ptr_nonnull(hx_json_str(re, "session"));
    cJSON *pat = cJSON_Parse("{\"positions\":{\"s\":106,\"r:lobby\":12}}");
    ck_assert(hx_json_match(pat, re));
    cJSON_Delete(pat);
    /* Replayed events already seen count as duplicates across reconnects. */
    HX_OK(s, hx_ws_send_text(hx_sl_ws(c), "!events s 106 107"));
    last = hx_ws_expect(hx_sl_ws(c), "{\"ch\":\"s\",\"seq\":107}", 3000);
    HX_ASSERT(s, last != NULL);
    cJSON_Delete(last);
    ck_assert_uint_eq(hx_sl_get_counts(c).duplicates, 3);

    hx_sl_destroy(c);
    hx_sl_destroy(NULL);
    free(tok);
    hx_stack_destroy(s);
    free_fake_bin(bin);
}
END_TEST

/* ================================================================== */
/* the real binaries, when they are built                              */
/* ================================================================== */

START_TEST(test_real_stack_smoke)
{
    const char *bin = hx_stack_default_bin_dir();
    char *gw = hx_strf("%s/sluice-gateway", bin);
    bool have = access(gw, X_OK) == 0;
    free(gw);
    if (!have) {
        fprintf(stderr, "test_real_stack_smoke: SKIPPED, no binaries in %s\n", bin);
        return;
    }
    /* The harness's helpers against the real protocol: start, hello,
     * send -> accepted -> reply, resume, graceful stop. Whether the tiers
     * exit cleanly under sanitizers is for their own tests to assert. */
    hx_stack_cfg cfg = {.gateways = 1, .orchestrators = 1, .workers = 1};
    hx_stack *s = NULL;
    HX_OK(NULL, hx_stack_start(&s, &cfg));
    char *tok = hx_token(s, "acme", "u1", 60);
    hx_sl_client *c = NULL;
    HX_OK(s, hx_sl_connect(&c, hx_stack_gw_port(s, 0), tok, 10000));
    HX_ASSERT(s, *hx_sl_session(c) != '\0' && *hx_sl_resume_token(c) != '\0');
    cJSON *a = hx_sl_send_wait(c, "c-1", NULL, "hello harness", 10000);
    HX_ASSERT(s, a != NULL);
    HX_ASSERT(s, strcmp(hx_json_str(a, "type"), "accepted") == 0);
    cJSON_Delete(a);
    cJSON *r = hx_sl_wait_reply(c, "c-1", 15000);
    HX_ASSERT(s, r != NULL);
    HX_ASSERT(s, hx_json_true(r, "final"));
    cJSON_Delete(r);
    HX_ASSERT(s, hx_sl_get_counts(c).duplicates == 0);
    HX_ASSERT(s, hx_sl_position(c, "s") > 0);
    HX_OK(s, hx_sl_reconnect(c, hx_stack_gw_port(s, 0), 10000));
    HX_ASSERT(s, hx_json_true(hx_sl_welcome(c), "resumed"));
    hx_sl_destroy(c);
    free(tok);
    bool clean = false;
    hx_stack_stop_all_gracefully(s, &clean);
    for (int t = 0; t < HX_TIERS; t++)
        ck_assert(!hx_proc_alive(hx_stack_proc(s, (hx_tier)t, 0)));
    hx_stack_destroy(s);
    assert_no_children();
}
END_TEST

/* ================================================================== */

static Suite *harness_suite(void)
{
    Suite *s = suite_create("harness");
    TCase *tc = tcase_create("util");
    tcase_add_test(tc, test_util_time_and_wait);
    tcase_add_test(tc, test_util_tmpdir_rm_rf);
    tcase_add_test(tc, test_util_sweeps_stale_dirs);
    tcase_set_timeout(tc, 120);
    suite_add_tcase(s, tc);

    tc = tcase_create("proc");
    tcase_add_test(tc, test_proc_env_log_status);
    tcase_add_test(tc, test_proc_fds_group_kill);
    tcase_add_test(tc, test_proc_no_orphans_when_test_dies);
    tcase_set_timeout(tc, 120);
    suite_add_tcase(s, tc);

    tc = tcase_create("net");
    tcase_add_test(tc, test_port_and_http);
    tcase_set_timeout(tc, 120);
    suite_add_tcase(s, tc);

    tc = tcase_create("nats");
    tcase_add_test(tc, test_nats_start_restart_store);
    tcase_add_test(tc, test_nats_cluster);
    tcase_add_test(tc, test_ws_nats);
    tcase_set_timeout(tc, 120);
    suite_add_tcase(s, tc);

    tc = tcase_create("stack");
    tcase_add_test(tc, test_stack_env_restart_add);
    tcase_add_test(tc, test_stack_unclean_stops);
    tcase_add_test(tc, test_stack_start_failures);
    tcase_add_test(tc, test_stack_repeated_no_leftovers);
    tcase_set_timeout(tc, 120);
    suite_add_tcase(s, tc);

    tc = tcase_create("ws");
    tcase_add_test(tc, test_ws_json_backlog);
    tcase_add_test(tc, test_ws_frames);
    tcase_add_test(tc, test_ws_refused_upgrade);
    tcase_set_timeout(tc, 120);
    suite_add_tcase(s, tc);

    tc = tcase_create("sluice");
    tcase_add_test(tc, test_sluice_tokens);
    tcase_add_test(tc, test_sluice_client);
    tcase_set_timeout(tc, 120);
    suite_add_tcase(s, tc);

    tc = tcase_create("real");
    tcase_add_test(tc, test_real_stack_smoke);
    tcase_set_timeout(tc, 120);
    suite_add_tcase(s, tc);
    return s;
}

int main(int argc, char **argv)
{
    (void)argc;
    char *copy = strdup(argv[0]);
    const char *name = basename(copy);
    if (strncmp(name, "sluice-", 7) == 0) {
        char n[64];
        snprintf(n, sizeof n, "%s", name);
        free(copy);
        return fake_main(n);
    }
    free(copy);
    SRunner *sr = srunner_create(harness_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
