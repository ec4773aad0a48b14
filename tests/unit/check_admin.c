/* Unit tests for sl_admin: the endpoints over real sockets on 127.0.0.1,
 * readiness flips, error statuses, slow and partial clients, eviction when
 * full, and a prompt stop. Every wait is a poll with a deadline. */
#include <arpa/inet.h>
#include <check.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "sl_admin.h"
#include "sl_log.h"
#include "sl_metrics.h"

#define IO_TIMEOUT_MS 3000

static int64_t now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int dial(int port)
{
    struct sockaddr_in sa;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

    ck_assert_int_ge(fd, 0);
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ck_assert_msg(connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0, "connect: %s",
                  strerror(errno));
    return fd;
}

static void send_str(int fd, const char *s)
{
    size_t n = strlen(s), off = 0;

    while (off < n) {
        ssize_t w = send(fd, s + off, n - off, MSG_NOSIGNAL);
        ck_assert_msg(w > 0, "send: %s", strerror(errno));
        off += (size_t)w;
    }
}

/* Reads until EOF within timeout_ms; returns the malloc'd bytes (NUL
 * terminated), or NULL when the deadline passed first. A reset after some
 * data counts as the end too. */
static char *read_to_eof(int fd, int timeout_ms)
{
    int64_t deadline = now_ms() + timeout_ms;
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap);

    ck_assert_ptr_nonnull(buf);
    for (;;) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int64_t left = deadline - now_ms();
        ssize_t n;

        if (left <= 0 || poll(&p, 1, (int)left) <= 0) {
            free(buf);
            return NULL;
        }
        if (len + 1024 >= cap) {
            cap *= 2;
            buf = realloc(buf, cap);
            ck_assert_ptr_nonnull(buf);
        }
        n = recv(fd, buf + len, cap - len - 1, 0);
        if (n <= 0)
            break;
        len += (size_t)n;
    }
    buf[len] = '\0';
    return buf;
}

/* Sends raw on a new connection and returns the status; *resp (may be
 * NULL) gets the whole response. */
static int request(int port, const char *raw, char **resp)
{
    int fd = dial(port), status = -1;
    char *r;

    send_str(fd, raw);
    r = read_to_eof(fd, IO_TIMEOUT_MS);
    close(fd);
    ck_assert_msg(r != NULL, "no complete response to '%s'", raw);
    ck_assert_int_eq(sscanf(r, "HTTP/1.1 %d ", &status), 1);
    if (resp != NULL)
        *resp = r;
    else
        free(r);
    return status;
}

static int get(int port, const char *path, char **resp)
{
    char raw[512];

    snprintf(raw, sizeof(raw), "GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: check\r\n\r\n",
             path);
    return request(port, raw, resp);
}

static const char *body_of(const char *resp)
{
    const char *b = strstr(resp, "\r\n\r\n");

    ck_assert_ptr_nonnull(b);
    return b + 4;
}

/* Content-Length must match the body. */
static void check_length(const char *resp)
{
    const char *cl = strstr(resp, "\r\nContent-Length: ");
    size_t n;

    ck_assert_ptr_nonnull(cl);
    ck_assert_int_eq(sscanf(cl + 18, "%zu", &n), 1);
    ck_assert_uint_eq(n, strlen(body_of(resp)));
    ck_assert_ptr_nonnull(strstr(resp, "\r\nConnection: close\r\n"));
}

typedef struct readiness {
    atomic_bool ready;
    atomic_int calls;
} readiness;

static bool ready_cb(void *ud, char *why, size_t whylen)
{
    readiness *r = ud;

    atomic_fetch_add(&r->calls, 1);
    if (atomic_load(&r->ready))
        return true;
    snprintf(why, whylen, "nats down");
    return false;
}

static sl_admin *start(const char *addr, sl_ready_fn fn, void *ud, int timeout_ms, int max_clients,
                       size_t max_request)
{
    sl_admin_opts o = {.listen_addr = addr,
                       .ready = fn,
                       .ud = ud,
                       .timeout_ms = timeout_ms,
                       .max_clients = max_clients,
                       .max_request = max_request};
    sl_admin *a = NULL;
    char err[256] = "";

    ck_assert_msg(sl_admin_start_opts(&a, &o, err, sizeof(err)) == SL_OK, "start: %s", err);
    ck_assert_ptr_nonnull(a);
    ck_assert_int_gt(sl_admin_port(a), 0);
    return a;
}

static void teardown(void)
{
    sl_metrics_reset_all();
}

/* ---- tests -------------------------------------------------------------- */

START_TEST(test_endpoints)
{
    readiness rd;
    sl_admin *a;
    int port;
    char *r = NULL;

    atomic_init(&rd.ready, true);
    atomic_init(&rd.calls, 0);
    a = start("127.0.0.1:0", ready_cb, &rd, 0, 0, 0);
    port = sl_admin_port(a);
    sl_counter_add(sl_counter_get("admin_test_total", NULL, "Test."), 5);

    ck_assert_int_eq(get(port, "/healthz", &r), 200);
    ck_assert_str_eq(body_of(r), "ok\n");
    check_length(r);
    ck_assert_ptr_nonnull(strstr(r, "\r\nContent-Type: text/plain"));
    free(r);

    ck_assert_int_eq(get(port, "/readyz", &r), 200);
    ck_assert_str_eq(body_of(r), "ready\n");
    check_length(r);
    free(r);
    ck_assert_int_eq(atomic_load(&rd.calls), 1);
    ck_assert_int_eq(sl_gauge_value(sl_gauge_get("sluice_ready", NULL, NULL)), 1);

    /* Readiness flips both ways, and the gauge follows. */
    atomic_store(&rd.ready, false);
    ck_assert_int_eq(get(port, "/readyz", &r), 503);
    ck_assert_str_eq(body_of(r), "nats down\n");
    check_length(r);
    free(r);
    ck_assert_int_eq(sl_gauge_value(sl_gauge_get("sluice_ready", NULL, NULL)), 0);

    ck_assert_int_eq(get(port, "/metrics", &r), 200);
    check_length(r);
    ck_assert_ptr_nonnull(
        strstr(r, "\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"));
    ck_assert_ptr_nonnull(strstr(body_of(r), "\nsluice_ready 0\n"));
    ck_assert_ptr_nonnull(strstr(body_of(r), "admin_test_total 5\n"));
    ck_assert_ptr_nonnull(strstr(body_of(r), "# TYPE sluice_ready gauge\n"));
    free(r);

    atomic_store(&rd.ready, true);
    ck_assert_int_eq(get(port, "/metrics", &r), 200);
    ck_assert_ptr_nonnull(strstr(body_of(r), "\nsluice_ready 1\n"));
    free(r);
    ck_assert_int_eq(get(port, "/readyz?full=1", NULL), 200);
    ck_assert_int_eq(get(port, "/healthz?x=1&y=2", NULL), 200);

    /* Errors. */
    ck_assert_int_eq(get(port, "/nope", &r), 404);
    check_length(r);
    free(r);
    ck_assert_int_eq(get(port, "/", NULL), 404);
    ck_assert_int_eq(get(port, "/healthz/", NULL), 404);
    ck_assert_int_eq(get(port, "/HEALTHZ", NULL), 404);
    ck_assert_int_eq(request(port, "POST /healthz HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi", &r),
                     405);
    ck_assert_ptr_nonnull(strstr(r, "\r\nAllow: GET\r\n"));
    check_length(r);
    free(r);
    ck_assert_int_eq(request(port, "HEAD /metrics HTTP/1.1\r\n\r\n", NULL), 405);
    ck_assert_int_eq(request(port, "DELETE /readyz HTTP/1.0\r\n\r\n", NULL), 405);
    ck_assert_int_eq(request(port, "garbage\r\n\r\n", NULL), 400);
    ck_assert_int_eq(request(port, "GET /healthz\r\n\r\n", NULL), 400);
    ck_assert_int_eq(request(port, "GET /healthz HTTP/2.0\r\n\r\n", NULL), 400);
    ck_assert_int_eq(request(port, " /healthz HTTP/1.1\r\n\r\n", NULL), 400);

    /* Other accepted shapes: HTTP/1.0, bare newlines, absolute form. */
    ck_assert_int_eq(request(port, "GET /healthz HTTP/1.0\r\n\r\n", NULL), 200);
    ck_assert_int_eq(request(port, "GET /healthz HTTP/1.1\n\n", NULL), 200);
    ck_assert_int_eq(request(port, "GET http://127.0.0.1/healthz HTTP/1.1\r\n\r\n", NULL), 200);
    sl_admin_stop(a);
}
END_TEST

START_TEST(test_defaults_and_any_address)
{
    sl_admin *a = NULL;
    char err[256] = "";
    char *r = NULL;

    /* No callback: always ready. Empty host: every interface. */
    ck_assert_int_eq(sl_admin_start(&a, ":0", NULL, NULL, err, sizeof(err)), SL_OK);
    ck_assert_int_eq(get(sl_admin_port(a), "/readyz", &r), 200);
    ck_assert_str_eq(body_of(r), "ready\n");
    free(r);
    sl_admin_stop(a);
    a = NULL;
    ck_assert_int_eq(sl_admin_start(&a, "0.0.0.0:0", NULL, NULL, err, sizeof(err)), SL_OK);
    ck_assert_int_eq(get(sl_admin_port(a), "/healthz", NULL), 200);
    sl_admin_stop(a);
}
END_TEST

START_TEST(test_start_errors)
{
    static const char *const bad[] = {"nocolon",    "127.0.0.1:99999", "127.0.0.1:abc",
                                      "127.0.0.1:", "127.0.0.1:-1",    "127.0.0.1:00x"};
    sl_admin *a = NULL, *b = NULL;
    char err[256], addr[64];

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        err[0] = '\0';
        ck_assert_msg(sl_admin_start(&a, bad[i], NULL, NULL, err, sizeof(err)) == SL_ERR_INVAL,
                      "%s", bad[i]);
        ck_assert_str_ne(err, "");
    }
    ck_assert_int_eq(sl_admin_start(&a, NULL, NULL, NULL, err, sizeof(err)), SL_ERR_INVAL);
    ck_assert_ptr_null(a);

    /* The port is taken. */
    a = start("127.0.0.1:0", NULL, NULL, 0, 0, 0);
    snprintf(addr, sizeof(addr), "127.0.0.1:%d", sl_admin_port(a));
    ck_assert_int_eq(sl_admin_start(&b, addr, NULL, NULL, err, sizeof(err)), SL_ERR_IO);
    ck_assert_ptr_nonnull(strstr(err, "cannot listen"));
    ck_assert_ptr_null(b);
    sl_admin_stop(a);

    /* Freed port: bindable again at once (SO_REUSEADDR), on a fixed port. */
    a = NULL;
    ck_assert_msg(sl_admin_start(&a, addr, NULL, NULL, err, sizeof(err)) == SL_OK, "%s", err);
    ck_assert_int_eq(get(sl_admin_port(a), "/healthz", NULL), 200);
    sl_admin_stop(a);
    sl_admin_stop(NULL);
    ck_assert_int_eq(sl_admin_port(NULL), -1);
}
END_TEST

START_TEST(test_request_cap)
{
    sl_admin *a = start("127.0.0.1:0", NULL, NULL, 0, 0, 1024);
    char *raw = malloc(4096);
    char *r = NULL;

    /* A head that never ends within the cap. */
    strcpy(raw, "GET /healthz HTTP/1.1\r\nX-Big: ");
    memset(raw + strlen(raw), 'a', 2000);
    raw[30 + 2000] = '\0';
    ck_assert_uint_eq(strlen(raw), 2030);
    ck_assert_int_eq(request(sl_admin_port(a), raw, &r), 431);
    check_length(r);
    free(r);
    /* Just under the cap is fine. */
    strcpy(raw, "GET /healthz HTTP/1.1\r\nX-Big: ");
    memset(raw + strlen(raw), 'a', 900);
    strcpy(raw + 30 + 900, "\r\n\r\n");
    ck_assert_uint_eq(strlen(raw), 934);
    ck_assert_int_eq(request(sl_admin_port(a), raw, NULL), 200);
    free(raw);
    sl_admin_stop(a);
}
END_TEST

START_TEST(test_slow_client)
{
    sl_admin *a = start("127.0.0.1:0", NULL, NULL, 1500, 0, 0);
    int port = sl_admin_port(a);
    int slow = dial(port), silent = dial(port);
    int64_t t0;
    char *r;

    /* One client sends half a request, another nothing at all. */
    send_str(slow, "GET /heal");
    t0 = now_ms();
    ck_assert_int_eq(get(port, "/healthz", NULL), 200);
    ck_assert_int_eq(get(port, "/readyz", NULL), 200);
    ck_assert_int_lt(now_ms() - t0, 1000); /* not held up by either */

    /* Both are closed by the server after the timeout, without a reply. */
    r = read_to_eof(slow, 4000);
    ck_assert_ptr_nonnull(r);
    ck_assert_str_eq(r, "");
    free(r);
    r = read_to_eof(silent, 4000);
    ck_assert_ptr_nonnull(r);
    free(r);
    ck_assert_int_ge(now_ms() - t0, 1200);
    ck_assert_int_lt(now_ms() - t0, 4000);
    close(slow);
    close(silent);

    /* A byte-by-byte client within the timeout is served. */
    {
        const char *req = "GET /healthz HTTP/1.1\r\n\r\n";
        int fd = dial(port);
        for (const char *p = req; *p; p++) {
            char one[2] = {*p, '\0'};
            send_str(fd, one);
        }
        r = read_to_eof(fd, IO_TIMEOUT_MS);
        ck_assert_ptr_nonnull(r);
        ck_assert_ptr_nonnull(strstr(r, "HTTP/1.1 200 OK\r\n"));
        free(r);
        close(fd);
    }
    sl_admin_stop(a);
}
END_TEST

START_TEST(test_concurrent_clients)
{
    enum { N = 8 };
    sl_admin *a = start("127.0.0.1:0", NULL, NULL, 0, 0, 0);
    static const char *const paths[] = {"/healthz", "/readyz", "/metrics", "/nope"};
    static const int codes[] = {200, 200, 200, 404};
    int fds[N];
    char raw[128], *r;

    /* All open with half a request each, then finished in reverse order. */
    for (int i = 0; i < N; i++) {
        fds[i] = dial(sl_admin_port(a));
        send_str(fds[i], "GET ");
    }
    for (int i = N - 1; i >= 0; i--) {
        snprintf(raw, sizeof(raw), "%s HTTP/1.1\r\nHost: x\r\n\r\n", paths[i % 4]);
        send_str(fds[i], raw);
        r = read_to_eof(fds[i], IO_TIMEOUT_MS);
        ck_assert_ptr_nonnull(r);
        ck_assert_msg(atoi(r + 9) == codes[i % 4], "client %d: %.40s", i, r);
        free(r);
        close(fds[i]);
    }
    sl_admin_stop(a);
}
END_TEST

START_TEST(test_eviction_when_full)
{
    /* Two slots and a long timeout: two idle clients fill the server. */
    sl_admin *a = start("127.0.0.1:0", NULL, NULL, 10000, 2, 0);
    int port = sl_admin_port(a);
    int idle1 = dial(port), idle2 = dial(port);
    int64_t t0;
    char *r;

    /* Make sure both are accepted (one request in between goes through the
     * same accept queue after them, and evicts idle1). */
    t0 = now_ms();
    ck_assert_int_eq(get(port, "/healthz", NULL), 200);
    ck_assert_int_lt(now_ms() - t0, 2000);
    r = read_to_eof(idle1, 2000); /* the oldest was closed to make room */
    ck_assert_ptr_nonnull(r);
    free(r);
    ck_assert_int_eq(get(port, "/healthz", NULL), 200);
    ck_assert_int_lt(now_ms() - t0, 4000);
    close(idle1);
    close(idle2);
    sl_admin_stop(a);
}
END_TEST

START_TEST(test_stop_is_prompt)
{
    sl_admin *a = start("127.0.0.1:0", NULL, NULL, 60000, 0, 0);
    int port = sl_admin_port(a);
    int idle = dial(port), half = dial(port), fd;
    struct sockaddr_in sa;
    int64_t t0;
    char *r;

    send_str(half, "GET /healthz HTTP/1.1\r\n");
    ck_assert_int_eq(get(port, "/healthz", NULL), 200); /* both are accepted by now */
    t0 = now_ms();
    sl_admin_stop(a);
    ck_assert_int_lt(now_ms() - t0, 500);

    /* Their connections are closed and nothing listens any more. */
    r = read_to_eof(idle, 1000);
    ck_assert_ptr_nonnull(r);
    free(r);
    r = read_to_eof(half, 1000);
    ck_assert_ptr_nonnull(r);
    free(r);
    close(idle);
    close(half);
    fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ck_assert_int_ne(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    ck_assert_int_eq(errno, ECONNREFUSED);
    close(fd);

    /* Start and stop at once, repeatedly: no hang, no leak. */
    for (int i = 0; i < 20; i++) {
        a = start("127.0.0.1:0", NULL, NULL, 0, 0, 0);
        t0 = now_ms();
        sl_admin_stop(a);
        ck_assert_int_lt(now_ms() - t0, 500);
    }
}
END_TEST

static Suite *admin_suite(void)
{
    Suite *s = suite_create("admin");
    TCase *tc = tcase_create("admin");

    tcase_add_checked_fixture(tc, NULL, teardown);
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, test_endpoints);
    tcase_add_test(tc, test_defaults_and_any_address);
    tcase_add_test(tc, test_start_errors);
    tcase_add_test(tc, test_request_cap);
    tcase_add_test(tc, test_slow_client);
    tcase_add_test(tc, test_concurrent_clients);
    tcase_add_test(tc, test_eviction_when_full);
    tcase_add_test(tc, test_stop_is_prompt);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr;
    int failed;

    sl_log_init("check_admin", SL_LOG_WARN);
    sr = srunner_create(admin_suite());
    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
