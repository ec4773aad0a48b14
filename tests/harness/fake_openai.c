#include "fake_openai.h"

#include <cJSON.h>
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/sockios.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define HEAD_MAX      (64 * 1024)
#define BODY_MAX      (4 * 1024 * 1024)
#define IDLE_MS       30000 /* a keep-alive connection with no request for this long is closed */
#define SEND_STALL_MS 5000  /* a client that reads nothing for this long is dropped */
#define DRAIN_MS      1000  /* RESET: how long to wait for the client to take the tokens */

typedef struct conn {
    fake_openai *f;
    int fd;
    pthread_t thr;
    int used;
    atomic_int finished;
    char *buf; /* bytes read but not yet consumed (pipelined or partial requests) */
    size_t len, cap;
} conn;

struct fake_openai {
    int lfd;
    int wake[2]; /* written once by stop; every poll here watches wake[0] */
    pthread_t acceptor;
    pthread_mutex_t mu; /* guards everything below */
    pthread_cond_t cv;
    fake_openai_mode mode;
    char *reply;
    int token_delay_ms, slow_ms, reset_after;
    int usage_in, usage_out; /* < 0: no usage reported */
    int requests, connections;
    char *last_head, *last_body;
    conn conns[FAKE_OPENAI_MAX_CONNS];
};

/* What one request is answered with, copied under the lock. */
typedef struct plan {
    fake_openai_mode mode;
    char *reply;
    int token_delay_ms, slow_ms, reset_after;
    int usage_in, usage_out; /* < 0: none */
    int wants_usage;         /* the request asked for stream_options.include_usage */
    int has_stream_options;  /* the request carried stream_options at all */
} plan;

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int stopping(const conn *c)
{
    struct pollfd p = {.fd = c->f->wake[0], .events = POLLIN};
    return poll(&p, 1, 0) > 0;
}

/* Waits ms (or, with ms < 0, forever). Returns 0 when the time passed, -1
 * when the server stops or the client hung up first. */
static int wait_ms(conn *c, int ms)
{
    int64_t end = now_ms() + (ms < 0 ? 0 : ms);
    int watch_fd = 1;
    for (;;) {
        int left = -1;
        if (ms >= 0) {
            int64_t l = end - now_ms();
            if (l <= 0)
                return 0;
            left = (int)l;
        }
        struct pollfd p[2] = {{.fd = c->f->wake[0], .events = POLLIN},
                              {.fd = c->fd, .events = POLLRDHUP}};
        int n = poll(p, watch_fd ? 2 : 1, left);
        if (n < 0 && errno != EINTR)
            return -1;
        if (n <= 0)
            continue;
        if (p[0].revents)
            return -1;
        if (p[1].revents & (POLLRDHUP | POLLHUP | POLLERR))
            return -1;
        if (p[1].revents)
            watch_fd = 0; /* the client sent more; only hang-ups matter here */
    }
}

static int write_all(conn *c, const char *s, size_t n)
{
    while (n > 0) {
        ssize_t w = send(c->fd, s, n, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w > 0) {
            s += w;
            n -= (size_t)w;
            continue;
        }
        if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
            return -1;
        struct pollfd p[2] = {{.fd = c->f->wake[0], .events = POLLIN},
                              {.fd = c->fd, .events = POLLOUT}};
        int r = poll(p, 2, SEND_STALL_MS);
        if (r <= 0 || p[0].revents || (p[1].revents & (POLLERR | POLLHUP)))
            return -1;
    }
    return 0;
}

static int send_chunk(conn *c, const char *s, size_t n)
{
    char head[32];
    int hl = snprintf(head, sizeof(head), "%zx\r\n", n);
    if (write_all(c, head, (size_t)hl) != 0 || write_all(c, s, n) != 0)
        return -1;
    return write_all(c, "\r\n", 2);
}

/* Sends "data: <payload>\n\n" as two HTTP chunks split mid-payload, so
 * clients see events cut across reads. */
static int send_event(conn *c, const char *payload)
{
    size_t n = strlen(payload);
    size_t len = n + 8;
    char *ev = malloc(len + 1);
    if (!ev)
        return -1;
    snprintf(ev, len + 1, "data: %s\n\n", payload);
    size_t half = len / 2;
    int rc = send_chunk(c, ev, half);
    if (rc == 0)
        rc = send_chunk(c, ev + half, len - half);
    free(ev);
    return rc;
}

/* A chat.completion.chunk with delta.content = s[0..n), or a role-only
 * delta (s NULL), or a finish chunk (finish not NULL). */
static char *chunk_json(const char *s, size_t n, const char *finish)
{
    char *out = NULL, *text = NULL;
    cJSON *root = cJSON_CreateObject();
    cJSON *choices = cJSON_AddArrayToObject(root, "choices");
    cJSON *ch = cJSON_CreateObject();
    if (!root || !choices || !ch || !cJSON_AddItemToArray(choices, ch)) {
        cJSON_Delete(ch);
        goto cleanup;
    }
    cJSON_AddStringToObject(root, "id", "chatcmpl-fake");
    cJSON_AddStringToObject(root, "object", "chat.completion.chunk");
    cJSON_AddNumberToObject(root, "created", 0);
    cJSON_AddStringToObject(root, "model", "fake");
    cJSON_AddNumberToObject(ch, "index", 0);
    cJSON *delta = cJSON_AddObjectToObject(ch, "delta");
    if (!delta)
        goto cleanup;
    if (s) {
        text = strndup(s, n);
        if (!text || !cJSON_AddStringToObject(delta, "content", text))
            goto cleanup;
    } else if (!finish) {
        cJSON_AddStringToObject(delta, "role", "assistant");
    }
    if (finish)
        cJSON_AddStringToObject(ch, "finish_reason", finish);
    else
        cJSON_AddNullToObject(ch, "finish_reason");
    out = cJSON_PrintUnformatted(root);
cleanup:
    free(text);
    cJSON_Delete(root);
    return out;
}

static int send_token(conn *c, const char *s, size_t n)
{
    char *j = chunk_json(s, n, NULL);
    if (!j)
        return -1;
    int rc = send_event(c, j);
    cJSON_free(j);
    return rc;
}

static int send_role_or_finish(conn *c, const char *finish)
{
    char *j = chunk_json(NULL, 0, finish);
    if (!j)
        return -1;
    int rc = send_event(c, j);
    cJSON_free(j);
    return rc;
}

static int is_space(char ch)
{
    return ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r' || ch == '\v' || ch == '\f';
}

/* The next token of the reply starting at p: its length, 0 at the end. */
static size_t next_token(const char *p)
{
    const char *q = p;
    while (*q && is_space(*q))
        q++;
    while (*q && !is_space(*q))
        q++;
    while (*q && is_space(*q))
        q++;
    return (size_t)(q - p);
}

static int send_simple(conn *c, int status, const char *reason, const char *extra,
                       const char *ctype, const char *body)
{
    char head[512];
    int hl = snprintf(head, sizeof(head),
                      "HTTP/1.1 %d %s\r\nContent-Type: %s\r\n%sContent-Length: %zu\r\n\r\n", status,
                      reason, ctype, extra ? extra : "", strlen(body));
    if (write_all(c, head, (size_t)hl) != 0)
        return -1;
    return write_all(c, body, strlen(body));
}

static int send_stream_head(conn *c)
{
    static const char head[] = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                               "Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n";
    return write_all(c, head, sizeof(head) - 1);
}

static int send_stream_end(conn *c, int done)
{
    if (done && send_chunk(c, "data: [DONE]\n\n", 14) != 0)
        return -1;
    return write_all(c, "0\r\n\r\n", 5);
}

/* Waits until the kernel has handed every byte sent to the client (the
 * send queue is empty), for at most DRAIN_MS. */
static void drain(conn *c)
{
    int64_t end = now_ms() + DRAIN_MS;
    while (now_ms() < end) {
        int q = 0;
        if (ioctl(c->fd, SIOCOUTQ, &q) != 0 || q == 0)
            break;
        if (wait_ms(c, 5) != 0)
            break;
    }
}

/* Answers one request. Returns 0 to keep the connection, -1 to close it. */
static int respond(conn *c, const plan *pl)
{
    const char *p = pl->reply;
    size_t n;
    int i = 0;

    switch (pl->mode) {
    case FAKE_OPENAI_HTTP_500:
        return send_simple(c, 500, "Internal Server Error", NULL, "application/json",
                           "{\"error\":{\"message\":\"fake internal error\","
                           "\"type\":\"server_error\",\"code\":null}}");
    case FAKE_OPENAI_HTTP_429:
        return send_simple(c, 429, "Too Many Requests", "Retry-After: 1\r\n", "application/json",
                           "{\"error\":{\"message\":\"fake rate limit\","
                           "\"type\":\"rate_limit_exceeded\",\"code\":null}}");
    case FAKE_OPENAI_HTTP_400:
        return send_simple(c, 400, "Bad Request", NULL, "application/json",
                           "{\"error\":{\"message\":\"fake bad request\","
                           "\"type\":\"invalid_request_error\",\"code\":null}}");
    case FAKE_OPENAI_JSON: {
        cJSON *root = cJSON_CreateObject();
        cJSON *choices = cJSON_AddArrayToObject(root, "choices");
        cJSON *ch = cJSON_CreateObject();
        int rc = -1;
        if (root && choices && ch && cJSON_AddItemToArray(choices, ch)) {
            cJSON *m = cJSON_AddObjectToObject(ch, "message");
            cJSON_AddStringToObject(m, "role", "assistant");
            cJSON_AddStringToObject(m, "content", pl->reply);
            cJSON_AddStringToObject(ch, "finish_reason", "stop");
            if (pl->usage_in >= 0 && pl->usage_out >= 0) {
                cJSON *u = cJSON_AddObjectToObject(root, "usage");
                cJSON_AddNumberToObject(u, "prompt_tokens", pl->usage_in);
                cJSON_AddNumberToObject(u, "completion_tokens", pl->usage_out);
                cJSON_AddNumberToObject(u, "total_tokens", pl->usage_in + pl->usage_out);
            }
            char *body = cJSON_PrintUnformatted(root);
            if (body)
                rc = send_simple(c, 200, "OK", NULL, "application/json", body);
            cJSON_free(body);
        } else {
            cJSON_Delete(ch);
        }
        cJSON_Delete(root);
        return rc;
    }
    case FAKE_OPENAI_NO_STREAM_OPTIONS:
        if (pl->has_stream_options)
            return send_simple(c, 400, "Bad Request", NULL, "application/json",
                               "{\"error\":{\"message\":\"Unrecognized request argument "
                               "supplied: stream_options\",\"type\":\"invalid_request_error\","
                               "\"code\":null}}");
        break;
    case FAKE_OPENAI_HANG_AFTER_HEADERS:
        if (send_stream_head(c) == 0)
            wait_ms(c, -1);
        return -1;
    default:
        break;
    }

    /* The streamed modes. */
    if (send_stream_head(c) != 0 || send_chunk(c, ": fake-openai\n\n", 15) != 0 ||
        send_role_or_finish(c, NULL) != 0)
        return -1;
    for (; (n = next_token(p)) > 0; p += n, i++) {
        if (pl->mode == FAKE_OPENAI_RESET_MID_STREAM && i >= pl->reset_after)
            break;
        int delay = 0;
        if (pl->mode == FAKE_OPENAI_NORMAL)
            delay = pl->token_delay_ms;
        else if (pl->mode == FAKE_OPENAI_SLOW && i > 0)
            delay = pl->slow_ms;
        if (delay > 0 && wait_ms(c, delay) != 0)
            return -1;
        if (send_token(c, p, n) != 0)
            return -1;
        if (pl->mode == FAKE_OPENAI_MALFORMED_SSE) {
            static const char bad[] = "data: {not json\n\n";
            if (send_chunk(c, bad, sizeof(bad) - 1) != 0)
                return -1;
            return send_stream_end(c, 1);
        }
        if (pl->mode == FAKE_OPENAI_ERROR_EVENT) {
            if (send_event(c, "{\"error\":{\"message\":\"fake stream error\","
                              "\"type\":\"invalid_request_error\",\"code\":null}}") != 0)
                return -1;
            return send_stream_end(c, 0);
        }
    }
    if (pl->mode == FAKE_OPENAI_RESET_MID_STREAM) {
        drain(c);
        struct linger lg = {.l_onoff = 1, .l_linger = 0};
        setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
        close(c->fd);
        c->fd = -1;
        return -1;
    }
    if (send_role_or_finish(c, "stop") != 0)
        return -1;
    if (pl->wants_usage && pl->usage_in >= 0 && pl->usage_out >= 0) {
        char u[256];
        snprintf(u, sizeof(u),
                 "{\"id\":\"chatcmpl-fake\",\"object\":\"chat.completion.chunk\",\"created\":0,"
                 "\"model\":\"fake\",\"choices\":[],\"usage\":{\"prompt_tokens\":%d,"
                 "\"completion_tokens\":%d,\"total_tokens\":%d}}",
                 pl->usage_in, pl->usage_out, pl->usage_in + pl->usage_out);
        if (send_event(c, u) != 0)
            return -1;
    }
    return send_stream_end(c, 1);
}

/* Reads more bytes into c->buf. Returns 0, or -1 on end of stream, error,
 * idle timeout or stop. */
static int read_more(conn *c)
{
    if (c->len + 4096 + 1 > c->cap) {
        size_t cap = c->cap ? c->cap * 2 : 8192;
        while (cap < c->len + 4096 + 1)
            cap *= 2;
        char *nb = realloc(c->buf, cap);
        if (!nb)
            return -1;
        c->buf = nb;
        c->cap = cap;
    }
    struct pollfd p[2] = {{.fd = c->f->wake[0], .events = POLLIN}, {.fd = c->fd, .events = POLLIN}};
    int r = poll(p, 2, IDLE_MS);
    if (r <= 0 || p[0].revents)
        return -1;
    ssize_t got = recv(c->fd, c->buf + c->len, c->cap - c->len - 1, MSG_DONTWAIT);
    if (got <= 0)
        return (got < 0 && (errno == EAGAIN || errno == EINTR)) ? 0 : -1;
    c->len += (size_t)got;
    c->buf[c->len] = '\0';
    return 0;
}

/* Finds a header's value in head (case-insensitive name); NULL if absent. */
static const char *find_header(const char *head, const char *name, size_t *vlen)
{
    size_t nl = strlen(name);
    const char *line = strstr(head, "\r\n");
    while (line) {
        line += 2;
        const char *end = strstr(line, "\r\n");
        if (!end || end == line)
            return NULL;
        if ((size_t)(end - line) > nl && strncasecmp(line, name, nl) == 0 && line[nl] == ':') {
            const char *v = line + nl + 1;
            while (*v == ' ' || *v == '\t')
                v++;
            *vlen = (size_t)(end - v);
            return v;
        }
        line = end;
    }
    return NULL;
}

/* Reads one request; records it and hands out the plan for it. Returns
 * 0, or -1 when the connection should end. */
static int read_request(conn *c, plan *pl, int *keep_alive, int *path_ok)
{
    char *hend;
    while (!(hend = c->len ? strstr(c->buf, "\r\n\r\n") : NULL)) {
        if (c->len > HEAD_MAX || read_more(c) != 0)
            return -1;
    }
    size_t head_len = (size_t)(hend - c->buf) + 4;
    char *head = strndup(c->buf, head_len);
    if (!head)
        return -1;
    size_t vlen = 0, body_len = 0;
    const char *cl = find_header(head, "Content-Length", &vlen);
    if (cl)
        body_len = strtoul(cl, NULL, 10);
    const char *conn_h = find_header(head, "Connection", &vlen);
    *keep_alive = !(conn_h && vlen >= 5 && strncasecmp(conn_h, "close", 5) == 0);
    *path_ok = strncmp(head, "POST /v1/chat/completions ", 26) == 0;
    if (body_len > BODY_MAX) {
        free(head);
        return -1;
    }
    while (c->len < head_len + body_len) {
        if (read_more(c) != 0) {
            free(head);
            return -1;
        }
    }
    char *body = strndup(c->buf + head_len, body_len);
    if (!body) {
        free(head);
        return -1;
    }
    memmove(c->buf, c->buf + head_len + body_len, c->len - head_len - body_len);
    c->len -= head_len + body_len;
    c->buf[c->len] = '\0';

    fake_openai *f = c->f;
    pthread_mutex_lock(&f->mu);
    free(f->last_head);
    free(f->last_body);
    f->last_head = head;
    f->last_body = body;
    f->requests++;
    pl->mode = f->mode;
    pl->reply = strdup(f->reply);
    pl->token_delay_ms = f->token_delay_ms;
    pl->slow_ms = f->slow_ms;
    pl->reset_after = f->reset_after;
    pl->usage_in = f->usage_in;
    pl->usage_out = f->usage_out;
    pl->wants_usage = 0;
    {
        cJSON *req = body ? cJSON_Parse(body) : NULL;
        const cJSON *so = cJSON_GetObjectItemCaseSensitive(req, "stream_options");
        pl->wants_usage = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(so, "include_usage"));
        pl->has_stream_options = so != NULL;
        cJSON_Delete(req);
    }
    pthread_cond_broadcast(&f->cv);
    pthread_mutex_unlock(&f->mu);
    return pl->reply ? 0 : -1;
}

static void *conn_main(void *arg)
{
    conn *c = arg;
    /* Bounded by the client (it hangs up), IDLE_MS between requests, or stop. */
    while (!stopping(c)) {
        plan pl = {0};
        int keep_alive = 1, path_ok = 1;
        if (read_request(c, &pl, &keep_alive, &path_ok) != 0) {
            free(pl.reply);
            break;
        }
        int rc;
        if (!path_ok)
            rc = send_simple(c, 404, "Not Found", NULL, "application/json",
                             "{\"error\":{\"message\":\"no such path\",\"type\":"
                             "\"invalid_request_error\"}}");
        else
            rc = respond(c, &pl);
        free(pl.reply);
        if (rc != 0 || !keep_alive)
            break;
    }
    if (c->fd >= 0) {
        close(c->fd);
        c->fd = -1;
    }
    free(c->buf);
    c->buf = NULL;
    c->len = c->cap = 0;
    atomic_store(&c->finished, 1);
    return NULL;
}

/* Joins the connection threads that ended; with all set, every one. */
static void reap(fake_openai *f, int all)
{
    for (int i = 0; i < FAKE_OPENAI_MAX_CONNS; i++) {
        conn *c = &f->conns[i];
        if (c->used && (all || atomic_load(&c->finished))) {
            pthread_join(c->thr, NULL);
            c->used = 0;
        }
    }
}

static void *accept_main(void *arg)
{
    fake_openai *f = arg;
    for (;;) {
        struct pollfd p[2] = {{.fd = f->wake[0], .events = POLLIN},
                              {.fd = f->lfd, .events = POLLIN}};
        int r = poll(p, 2, 1000);
        if (r < 0 && errno != EINTR)
            break;
        if (p[0].revents)
            break;
        reap(f, 0);
        if (r <= 0 || !(p[1].revents & POLLIN))
            continue;
        int fd = accept4(f->lfd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0)
            continue;
        conn *c = NULL;
        for (int i = 0; i < FAKE_OPENAI_MAX_CONNS && !c; i++)
            if (!f->conns[i].used)
                c = &f->conns[i];
        if (!c) {
            close(fd);
            continue;
        }
        /* Every write goes out at once, like a streaming server's would. */
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        c->f = f;
        c->fd = fd;
        atomic_store(&c->finished, 0);
        if (pthread_create(&c->thr, NULL, conn_main, c) != 0) {
            close(fd);
            c->fd = -1;
            continue;
        }
        c->used = 1;
        pthread_mutex_lock(&f->mu);
        f->connections++;
        pthread_mutex_unlock(&f->mu);
    }
    return NULL;
}

int fake_openai_start(fake_openai **out, int *port)
{
    int err = 0;
    fake_openai *f = calloc(1, sizeof(*f));
    if (!f)
        return -1;
    f->lfd = -1;
    f->wake[0] = f->wake[1] = -1;
    f->mode = FAKE_OPENAI_NORMAL;
    f->usage_in = f->usage_out = -1;
    f->slow_ms = 1000;
    f->reset_after = 2;
    f->reply = strdup("Hello from the fake model.");
    pthread_mutex_init(&f->mu, NULL);
    pthread_cond_init(&f->cv, NULL);
    if (!f->reply || pipe2(f->wake, O_CLOEXEC) != 0)
        goto fail;
    f->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (f->lfd < 0)
        goto fail;
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = 0};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t sl = sizeof(sa);
    if (bind(f->lfd, (struct sockaddr *)&sa, sizeof(sa)) != 0 || listen(f->lfd, 128) != 0 ||
        getsockname(f->lfd, (struct sockaddr *)&sa, &sl) != 0)
        goto fail;
    if ((errno = pthread_create(&f->acceptor, NULL, accept_main, f)) != 0)
        goto fail;
    *port = ntohs(sa.sin_port);
    *out = f;
    return 0;
fail:
    err = errno;
    if (f->lfd >= 0)
        close(f->lfd);
    if (f->wake[0] >= 0) {
        close(f->wake[0]);
        close(f->wake[1]);
    }
    pthread_mutex_destroy(&f->mu);
    pthread_cond_destroy(&f->cv);
    free(f->reply);
    free(f);
    errno = err;
    return -1;
}

void fake_openai_stop(fake_openai *f)
{
    if (!f)
        return;
    ssize_t w;
    do {
        w = write(f->wake[1], "x", 1);
    } while (w < 0 && errno == EINTR);
    pthread_join(f->acceptor, NULL);
    reap(f, 1);
    close(f->lfd);
    close(f->wake[0]);
    close(f->wake[1]);
    pthread_mutex_destroy(&f->mu);
    pthread_cond_destroy(&f->cv);
    free(f->reply);
    free(f->last_head);
    free(f->last_body);
    free(f);
}

void fake_openai_set_usage(fake_openai *f, int prompt_tokens, int completion_tokens)
{
    pthread_mutex_lock(&f->mu);
    f->usage_in = prompt_tokens;
    f->usage_out = completion_tokens;
    pthread_mutex_unlock(&f->mu);
}

void fake_openai_set_mode(fake_openai *f, fake_openai_mode mode)
{
    pthread_mutex_lock(&f->mu);
    f->mode = mode;
    pthread_mutex_unlock(&f->mu);
}

int fake_openai_set_reply(fake_openai *f, const char *text)
{
    char *copy = strdup(text ? text : "");
    if (!copy)
        return -1;
    pthread_mutex_lock(&f->mu);
    free(f->reply);
    f->reply = copy;
    pthread_mutex_unlock(&f->mu);
    return 0;
}

void fake_openai_set_token_delay_ms(fake_openai *f, int ms)
{
    pthread_mutex_lock(&f->mu);
    f->token_delay_ms = ms;
    pthread_mutex_unlock(&f->mu);
}

void fake_openai_set_slow_ms(fake_openai *f, int ms)
{
    pthread_mutex_lock(&f->mu);
    f->slow_ms = ms;
    pthread_mutex_unlock(&f->mu);
}

void fake_openai_set_reset_after(fake_openai *f, int ntokens)
{
    pthread_mutex_lock(&f->mu);
    f->reset_after = ntokens;
    pthread_mutex_unlock(&f->mu);
}

int fake_openai_requests(fake_openai *f)
{
    pthread_mutex_lock(&f->mu);
    int n = f->requests;
    pthread_mutex_unlock(&f->mu);
    return n;
}

int fake_openai_connections(fake_openai *f)
{
    pthread_mutex_lock(&f->mu);
    int n = f->connections;
    pthread_mutex_unlock(&f->mu);
    return n;
}

int fake_openai_wait_requests(fake_openai *f, int n, int timeout_ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += timeout_ms / 1000;
    ts.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    int rc = 0;
    pthread_mutex_lock(&f->mu);
    while (f->requests < n && rc == 0)
        rc = pthread_cond_timedwait(&f->cv, &f->mu, &ts);
    int ok = f->requests >= n;
    pthread_mutex_unlock(&f->mu);
    return ok ? 0 : -1;
}

static char *copy_locked(fake_openai *f, char *const *field)
{
    pthread_mutex_lock(&f->mu);
    char *s = *field ? strdup(*field) : NULL;
    pthread_mutex_unlock(&f->mu);
    return s;
}

char *fake_openai_last_body(fake_openai *f)
{
    return copy_locked(f, &f->last_body);
}

char *fake_openai_last_head(fake_openai *f)
{
    return copy_locked(f, &f->last_head);
}
