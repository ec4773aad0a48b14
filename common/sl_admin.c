#include "sl_admin.h"

#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "sl_config.h"
#include "sl_log.h"
#include "sl_metrics.h"
#include "sl_time.h"

#define DEFAULT_TIMEOUT_MS  5000
#define DEFAULT_MAX_CLIENTS 32
#define DEFAULT_MAX_REQUEST 8192
#define MAX_CLIENTS_LIMIT   1024
#define ACCEPTS_PER_WAKE    16   /* accepts per poll round, so clients get their turn */
#define ACCEPT_PAUSE_MS     100  /* after EMFILE and the like, instead of spinning */
#define LINGER_MS           500  /* reading what a client still sends after the response */
#define POLL_MAX_MS         1000 /* upper bound of any wait (the eventfd wakes us anyway) */
#define WHY_MAX             256

typedef enum conn_state {
    C_FREE = 0,
    C_READ,  /* reading the request head */
    C_WRITE, /* sending the response */
    C_DRAIN, /* response sent and write side shut: read until EOF, then close */
} conn_state;

typedef struct conn {
    int fd;
    conn_state st;
    char *in; /* max_request + 1 bytes */
    size_t inlen;
    char *out; /* the whole response */
    size_t outlen, outoff;
    int64_t deadline; /* monotonic ms */
    uint64_t seq;     /* accept order, for evicting the oldest */
} conn;

/* Owned by the thread that created it until sl_admin_stop(); the server
 * thread owns conns and pfds while it runs. */
struct sl_admin {
    int lfd, wfd;
    pthread_t th;
    bool started;
    atomic_bool stop;
    sl_ready_fn ready;
    void *ud;
    int timeout_ms, max_clients;
    size_t max_request;
    int port;
    conn *conns;
    struct pollfd *pfds;
    int *pmap; /* pfds index -> conns index */
    uint64_t seq;
};

/* ---- connections ------------------------------------------------------ */

static void conn_close(conn *c)
{
    if (c->st == C_FREE)
        return;
    close(c->fd);
    free(c->out);
    c->fd = -1;
    c->st = C_FREE;
    c->inlen = 0;
    c->out = NULL;
    c->outlen = c->outoff = 0;
}

static const char *reason_phrase(int code)
{
    switch (code) {
    case 200:
        return "OK";
    case 400:
        return "Bad Request";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 431:
        return "Request Header Fields Too Large";
    case 503:
        return "Service Unavailable";
    default:
        return "Internal Server Error";
    }
}

/* Stores the whole response in c->out; false on OOM. */
static bool set_response(conn *c, int code, const char *ctype, const char *body, size_t blen)
{
    char head[512];
    int hl;

    hl = snprintf(head, sizeof(head),
                  "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                  "Cache-Control: no-store\r\n%sConnection: close\r\n\r\n",
                  code, reason_phrase(code), ctype, blen, code == 405 ? "Allow: GET\r\n" : "");
    if (hl < 0 || (size_t)hl >= sizeof(head))
        return false;
    c->out = malloc((size_t)hl + blen);
    if (c->out == NULL)
        return false;
    memcpy(c->out, head, (size_t)hl);
    memcpy(c->out + hl, body, blen);
    c->outlen = (size_t)hl + blen;
    c->outoff = 0;
    c->st = C_WRITE;
    return true;
}

static bool set_text(conn *c, int code, const char *text)
{
    return set_response(c, code, "text/plain; charset=utf-8", text, strlen(text));
}

/* Calls the readiness callback and mirrors it into the sluice_ready gauge
 * (looked up each time: the registry may have been reset in tests). */
static bool check_ready(sl_admin *a, char *why, size_t whylen)
{
    bool ok = true;

    why[0] = '\0';
    if (a->ready != NULL)
        ok = a->ready(a->ud, why, whylen);
    why[whylen - 1] = '\0';
    if (!ok && why[0] == '\0')
        snprintf(why, whylen, "not ready");
    sl_gauge_set(
        sl_gauge_get("sluice_ready", NULL, "1 when the process reports ready on /readyz, else 0."),
        ok ? 1 : 0);
    return ok;
}

/* Parses the request line of a complete head and builds the response. */
static bool respond(sl_admin *a, conn *c, size_t headlen)
{
    const char *line = c->in, *eol, *sp1, *sp2, *target, *path_end;
    size_t len, mlen, plen, vlen;
    char why[WHY_MAX + 2];

    eol = memchr(line, '\n', headlen);
    if (eol == NULL)
        return set_text(c, 400, "bad request\n");
    len = (size_t)(eol - line);
    if (len > 0 && line[len - 1] == '\r')
        len--;
    sp1 = memchr(line, ' ', len);
    sp2 = sp1 == NULL ? NULL : memchr(sp1 + 1, ' ', len - (size_t)(sp1 + 1 - line));
    if (sp1 == NULL || sp2 == NULL)
        return set_text(c, 400, "bad request\n");
    mlen = (size_t)(sp1 - line);
    target = sp1 + 1;
    vlen = len - (size_t)(sp2 + 1 - line);
    if (mlen == 0 || !(vlen == 8 && (memcmp(sp2 + 1, "HTTP/1.1", 8) == 0 ||
                                     memcmp(sp2 + 1, "HTTP/1.0", 8) == 0)))
        return set_text(c, 400, "bad request\n");
    /* Absolute form ("http://host/path"): keep only the path. */
    if ((size_t)(sp2 - target) > 7 && memcmp(target, "http://", 7) == 0) {
        const char *slash = memchr(target + 7, '/', (size_t)(sp2 - target) - 7);
        target = slash != NULL ? slash : sp2;
    }
    path_end = target;
    while (path_end < sp2 && *path_end != '?' && *path_end != '#')
        path_end++;
    plen = (size_t)(path_end - target);

#define PATH_IS(p) (plen == sizeof(p) - 1 && memcmp(target, p, plen) == 0)
    if (!PATH_IS("/healthz") && !PATH_IS("/readyz") && !PATH_IS("/metrics"))
        return set_text(c, 404, "not found\n");
    if (!(mlen == 3 && memcmp(line, "GET", 3) == 0))
        return set_text(c, 405, "method not allowed\n");
    if (PATH_IS("/healthz"))
        return set_text(c, 200, "ok\n");
    if (PATH_IS("/readyz")) {
        if (check_ready(a, why, WHY_MAX))
            return set_text(c, 200, "ready\n");
        strcat(why, "\n");
        return set_text(c, 503, why);
    }
#undef PATH_IS
    {
        char *text = NULL;
        size_t tlen = 0;
        bool ok;

        check_ready(a, why, WHY_MAX);
        if (sl_metrics_render(&text, &tlen) != SL_OK)
            return set_text(c, 500, "cannot render metrics\n");
        ok = set_response(c, 200, "text/plain; version=0.0.4; charset=utf-8", text, tlen);
        free(text);
        return ok;
    }
}

static void conn_write(conn *c, int64_t now)
{
    while (c->outoff < c->outlen) {
        ssize_t n = send(c->fd, c->out + c->outoff, c->outlen - c->outoff, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                conn_close(c);
            return;
        }
        c->outoff += (size_t)n;
    }
    /* Closing with unread input would reset the connection and could
     * destroy the response in flight: shut our side and read to EOF. */
    shutdown(c->fd, SHUT_WR);
    free(c->out);
    c->out = NULL;
    c->st = C_DRAIN;
    if (c->deadline > now + LINGER_MS)
        c->deadline = now + LINGER_MS;
}

static void conn_read(sl_admin *a, conn *c, int64_t now)
{
    char scratch[4096];
    const char *end;
    ssize_t n;

    if (c->st == C_DRAIN) {
        for (int i = 0; i < 16; i++) {
            n = recv(c->fd, scratch, sizeof(scratch), 0);
            if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
                conn_close(c);
                return;
            }
            if (n < 0)
                return;
        }
        return;
    }
    n = recv(c->fd, c->in + c->inlen, a->max_request - c->inlen, 0);
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
        conn_close(c);
        return;
    }
    if (n < 0)
        return;
    c->inlen += (size_t)n;
    c->in[c->inlen] = '\0';
    end = memmem(c->in, c->inlen, "\r\n\r\n", 4);
    if (end != NULL)
        end += 4;
    else if ((end = memmem(c->in, c->inlen, "\n\n", 2)) != NULL)
        end += 2;
    if (end != NULL) {
        if (!respond(a, c, (size_t)(end - c->in))) {
            conn_close(c);
            return;
        }
    } else if (c->inlen >= a->max_request) {
        if (!set_text(c, 431, "request too large\n")) {
            conn_close(c);
            return;
        }
    } else {
        return;
    }
    conn_write(c, now);
}

/* Accepts up to ACCEPTS_PER_WAKE connections; returns false when accept
 * hit a resource limit and should pause. */
static bool accept_some(sl_admin *a, int64_t now)
{
    for (int k = 0; k < ACCEPTS_PER_WAKE; k++) {
        int fd = accept4(a->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        conn *c = NULL;

        if (fd < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return true;
            if (errno == EINTR || errno == ECONNABORTED || errno == EPROTO)
                continue;
            sl_warn("admin: accept: %s", strerror(errno));
            return false;
        }
        for (int i = 0; i < a->max_clients; i++) {
            if (a->conns[i].st == C_FREE) {
                c = &a->conns[i];
                break;
            }
            if (c == NULL || a->conns[i].seq < c->seq)
                c = &a->conns[i];
        }
        /* All busy: c is the oldest; it makes room for the newcomer. */
        conn_close(c);
        c->fd = fd;
        c->st = C_READ;
        c->inlen = 0;
        c->deadline = now + a->timeout_ms;
        c->seq = a->seq++;
    }
    return true;
}

static void *admin_main(void *arg)
{
    sl_admin *a = arg;
    int64_t accept_paused_until = 0;

    while (!atomic_load(&a->stop)) {
        int64_t now = sl_mono_ms();
        int timeout = POLL_MAX_MS, nfds = 0, r, lidx = -1;

        a->pfds[nfds++] = (struct pollfd){.fd = a->wfd, .events = POLLIN};
        if (now >= accept_paused_until) {
            lidx = nfds;
            a->pfds[nfds++] = (struct pollfd){.fd = a->lfd, .events = POLLIN};
        } else if (accept_paused_until - now < timeout) {
            timeout = (int)(accept_paused_until - now);
        }
        for (int i = 0; i < a->max_clients; i++) {
            conn *c = &a->conns[i];
            if (c->st == C_FREE)
                continue;
            a->pmap[nfds] = i;
            a->pfds[nfds++] = (struct pollfd){
                .fd = c->fd, .events = (short)(c->st == C_WRITE ? POLLOUT : POLLIN)};
            if (c->deadline - now < timeout)
                timeout = c->deadline - now < 0 ? 0 : (int)(c->deadline - now);
        }
        r = poll(a->pfds, (nfds_t)nfds, timeout);
        if (r < 0) {
            if (errno != EINTR) {
                sl_warn("admin: poll: %s", strerror(errno));
                nanosleep(&(struct timespec){0, 10 * 1000000L}, NULL);
            }
            continue;
        }
        now = sl_mono_ms();
        if (a->pfds[0].revents != 0) {
            uint64_t v;
            ssize_t n = read(a->wfd, &v, sizeof(v));
            (void)n;
        }
        for (int p = lidx < 0 ? 1 : 2; p < nfds; p++) {
            conn *c = &a->conns[a->pmap[p]];
            short rev = a->pfds[p].revents;
            if (rev == 0 || c->st == C_FREE)
                continue;
            if (c->st == C_WRITE)
                conn_write(c, now);
            else
                conn_read(a, c, now);
        }
        for (int i = 0; i < a->max_clients; i++) {
            if (a->conns[i].st != C_FREE && now >= a->conns[i].deadline)
                conn_close(&a->conns[i]);
        }
        if (lidx >= 0 && a->pfds[lidx].revents != 0 && !accept_some(a, now))
            accept_paused_until = now + ACCEPT_PAUSE_MS;
    }
    for (int i = 0; i < a->max_clients; i++)
        conn_close(&a->conns[i]);
    return NULL;
}

/* ---- start and stop --------------------------------------------------- */

/* Splits "host:port" allowing port 0; strips [] around an IPv6 host. */
static sl_status parse_listen(const char *s, char *host, size_t hostlen, int *port)
{
    const char *colon;
    size_t hl;

    if (s == NULL)
        return SL_ERR_INVAL;
    colon = strrchr(s, ':');
    if (colon != NULL && strcmp(colon, ":0") == 0) {
        hl = (size_t)(colon - s);
        if (hl >= hostlen)
            return SL_ERR_INVAL;
        memcpy(host, s, hl);
        host[hl] = '\0';
        *port = 0;
    } else if (sl_parse_addr(s, host, hostlen, port) != SL_OK) {
        return SL_ERR_INVAL;
    }
    hl = strlen(host);
    if (hl >= 2 && host[0] == '[' && host[hl - 1] == ']') {
        memmove(host, host + 1, hl - 2);
        host[hl - 2] = '\0';
    }
    return SL_OK;
}

static sl_status bind_listen(const char *host, int port, int *fd_out, int *port_out, char *err,
                             size_t errlen)
{
    struct addrinfo hints, *res = NULL, *ai;
    char portstr[16];
    int fd = -1, rc, one = 1, saved = 0;
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);

    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    snprintf(portstr, sizeof(portstr), "%d", port);
    rc = getaddrinfo(host[0] == '\0' ? "0.0.0.0" : host, portstr, &hints, &res);
    if (rc != 0) {
        sl_errf(err, errlen, "admin: cannot resolve '%s': %s", host, gai_strerror(rc));
        return SL_ERR_IO;
    }
    for (ai = res; ai != NULL; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0) {
            saved = errno;
            continue;
        }
        if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) == 0 &&
            bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && listen(fd, 128) == 0 &&
            getsockname(fd, (struct sockaddr *)&ss, &sl) == 0)
            break;
        saved = errno;
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (fd < 0) {
        sl_errf(err, errlen, "admin: cannot listen on %s:%d: %s", host, port, strerror(saved));
        return SL_ERR_IO;
    }
    if (ss.ss_family == AF_INET6)
        *port_out = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    else
        *port_out = ntohs(((struct sockaddr_in *)&ss)->sin_port);
    *fd_out = fd;
    return SL_OK;
}

static void admin_free(sl_admin *a)
{
    if (a == NULL)
        return;
    if (a->conns != NULL) {
        for (int i = 0; i < a->max_clients; i++) {
            conn_close(&a->conns[i]);
            free(a->conns[i].in);
        }
    }
    if (a->lfd >= 0)
        close(a->lfd);
    if (a->wfd >= 0)
        close(a->wfd);
    free(a->conns);
    free(a->pfds);
    free(a->pmap);
    free(a);
}

sl_status sl_admin_start_opts(sl_admin **out, const sl_admin_opts *opts, char *err, size_t errlen)
{
    sl_status st = SL_ERR_INVAL;
    sl_admin *a = NULL;
    char host[256];
    int port = 0, rc;
    sigset_t all, old;

    if (out == NULL || opts == NULL ||
        parse_listen(opts->listen_addr, host, sizeof(host), &port) != SL_OK) {
        sl_errf(err, errlen, "admin: '%s' is not host:port with a port in 0..65535",
                opts != NULL && opts->listen_addr != NULL ? opts->listen_addr : "(null)");
        goto cleanup;
    }
    if (opts->timeout_ms < 0 || opts->max_clients < 0 || opts->max_clients > MAX_CLIENTS_LIMIT ||
        (opts->max_request != 0 && opts->max_request < 64)) {
        sl_errf(err, errlen, "admin: bad timeout, client or request size limit");
        goto cleanup;
    }
    st = SL_ERR_NOMEM;
    a = calloc(1, sizeof(*a));
    if (a == NULL)
        goto nomem;
    a->lfd = a->wfd = -1;
    atomic_init(&a->stop, false);
    a->ready = opts->ready;
    a->ud = opts->ud;
    a->timeout_ms = opts->timeout_ms > 0 ? opts->timeout_ms : DEFAULT_TIMEOUT_MS;
    a->max_clients = opts->max_clients > 0 ? opts->max_clients : DEFAULT_MAX_CLIENTS;
    a->max_request = opts->max_request > 0 ? opts->max_request : DEFAULT_MAX_REQUEST;
    a->conns = calloc((size_t)a->max_clients, sizeof(*a->conns));
    a->pfds = calloc((size_t)a->max_clients + 2, sizeof(*a->pfds));
    a->pmap = calloc((size_t)a->max_clients + 2, sizeof(*a->pmap));
    if (a->conns == NULL || a->pfds == NULL || a->pmap == NULL)
        goto nomem;
    for (int i = 0; i < a->max_clients; i++) {
        a->conns[i].fd = -1;
        a->conns[i].in = malloc(a->max_request + 1);
        if (a->conns[i].in == NULL)
            goto nomem;
    }
    st = bind_listen(host, port, &a->lfd, &a->port, err, errlen);
    if (st != SL_OK)
        goto cleanup;
    st = SL_ERR_INTERNAL;
    a->wfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (a->wfd < 0) {
        sl_errf(err, errlen, "admin: eventfd: %s", strerror(errno));
        goto cleanup;
    }
    /* The server thread takes no signals: they belong to the main loop. */
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    rc = pthread_create(&a->th, NULL, admin_main, a);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        sl_errf(err, errlen, "admin: cannot start thread: %s", strerror(rc));
        goto cleanup;
    }
    pthread_setname_np(a->th, "sl-admin");
    a->started = true;
    sl_info("admin: listening on %s:%d", host[0] != '\0' ? host : "0.0.0.0", a->port);
    *out = a;
    a = NULL;
    st = SL_OK;
    goto cleanup;
nomem:
    sl_errf(err, errlen, "admin: out of memory");
cleanup:
    admin_free(a);
    return st;
}

sl_status sl_admin_start(sl_admin **out, const char *listen_addr, sl_ready_fn ready, void *ud,
                         char *err, size_t errlen)
{
    sl_admin_opts o = {.listen_addr = listen_addr, .ready = ready, .ud = ud};

    return sl_admin_start_opts(out, &o, err, errlen);
}

int sl_admin_port(const sl_admin *a)
{
    return a != NULL ? a->port : -1;
}

void sl_admin_stop(sl_admin *a)
{
    uint64_t one = 1;

    if (a == NULL)
        return;
    if (a->started) {
        atomic_store(&a->stop, true);
        if (write(a->wfd, &one, sizeof(one)) < 0)
            sl_warn("admin: cannot wake the server thread: %s", strerror(errno));
        pthread_join(a->th, NULL);
    }
    admin_free(a);
}
