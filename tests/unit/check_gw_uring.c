/* Unit tests for the gateway's io_uring batch of socket sends (gw_uring):
 * every queued send is reported once, in queue order, with the bytes the
 * socket took; a full socket gives a short count or -EAGAIN (never a wait);
 * a bad descriptor fails only its own send; a full batch refuses more.
 * Real sockets (socketpairs), the real kernel; skipped where the kernel
 * offers no io_uring (the gateway then uses send()). */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "gw_uring.h"

typedef struct report {
    unsigned n;
    uint64_t tags[64];
    int results[64];
} report;

static void on_done(uint64_t tag, int result, void *arg)
{
    report *r = arg;

    ck_assert_uint_lt(r->n, 64);
    r->tags[r->n] = tag;
    r->results[r->n] = result;
    r->n++;
}

static gw_uring *ring_or_skip(unsigned entries)
{
    gw_uring *u = gw_uring_new(entries);

    if (u == NULL)
        fprintf(stderr, "io_uring not available here (%s): nothing to test\n", strerror(errno));
    return u;
}

static void pair(int sv[2], int sndbuf)
{
    ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    if (sndbuf > 0)
        ck_assert_int_eq(setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf)), 0);
}

static size_t drain(int fd, char *out, size_t cap)
{
    size_t got = 0;
    ssize_t n;

    while (got < cap && (n = recv(fd, out + got, cap - got, MSG_DONTWAIT)) > 0)
        got += (size_t)n;
    return got;
}

START_TEST(test_batch_reports_each_send_in_order)
{
    gw_uring *u = ring_or_skip(8);
    int sv[4][2];
    struct iovec iov[4][2];
    struct msghdr mh[4];
    report r = {0};
    char buf[64];

    if (u == NULL)
        return;
    for (int i = 0; i < 4; i++) {
        pair(sv[i], 0);
        /* Two pieces per message: they arrive as one stream, in order. */
        iov[i][0] = (struct iovec){.iov_base = "head-", .iov_len = 5};
        iov[i][1] = (struct iovec){.iov_base = (void *)(i % 2 ? "odd" : "even"),
                                   .iov_len = i % 2 ? 3u : 4u};
        memset(&mh[i], 0, sizeof(mh[i]));
        mh[i].msg_iov = iov[i];
        mh[i].msg_iovlen = 2;
        ck_assert(gw_uring_sendmsg(u, sv[i][0], &mh[i], 0, 100 + (uint64_t)i));
    }
    ck_assert_uint_eq(gw_uring_submit(u, on_done, &r), 4);
    ck_assert_uint_eq(r.n, 4);
    for (int i = 0; i < 4; i++) {
        size_t want = i % 2 ? 8 : 9;
        ck_assert_uint_eq(r.tags[i], 100 + (uint64_t)i);
        ck_assert_int_eq(r.results[i], (int)want);
        ck_assert_uint_eq(drain(sv[i][1], buf, sizeof(buf)), want);
        ck_assert_mem_eq(buf, i % 2 ? "head-odd" : "head-even", want);
        close(sv[i][0]);
        close(sv[i][1]);
    }
    ck_assert(gw_uring_ok(u));
    ck_assert_int_eq(gw_uring_error(u), 0);
    gw_uring_free(u);
}
END_TEST

START_TEST(test_full_socket_short_then_eagain_never_waits)
{
    gw_uring *u = ring_or_skip(4);
    size_t big = 1 << 20, total = 0, got;
    char *data = malloc(big), *back = malloc(big);
    struct iovec iov;
    struct msghdr mh;
    report r = {0};
    int sv[2];

    ck_assert_ptr_nonnull(data);
    ck_assert_ptr_nonnull(back);
    if (u == NULL) {
        free(data);
        free(back);
        return;
    }
    for (size_t i = 0; i < big; i++)
        data[i] = (char)('a' + i % 26);
    pair(sv, 8192);
    /* The peer reads nothing: the first send takes what fits, the second
     * nothing (-EAGAIN), and neither waits. */
    iov = (struct iovec){.iov_base = data, .iov_len = big};
    memset(&mh, 0, sizeof(mh));
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    ck_assert(gw_uring_sendmsg(u, sv[0], &mh, 0, 1));
    ck_assert(gw_uring_sendmsg(u, sv[0], &mh, 0, 2));
    ck_assert_uint_eq(gw_uring_submit(u, on_done, &r), 2);
    ck_assert_uint_eq(r.n, 2);
    ck_assert_int_gt(r.results[0], 0);
    ck_assert_int_lt(r.results[0], (int)big);
    ck_assert_int_eq(r.results[1], -EAGAIN);
    total = (size_t)r.results[0];
    got = drain(sv[1], back, big);
    ck_assert_uint_eq(got, total);
    ck_assert_mem_eq(back, data, total);
    close(sv[0]);
    close(sv[1]);
    gw_uring_free(u);
    free(data);
    free(back);
}
END_TEST

START_TEST(test_bad_descriptor_fails_alone_and_full_batch_refuses)
{
    gw_uring *u = ring_or_skip(2);
    struct iovec iov = {.iov_base = "x", .iov_len = 1};
    struct msghdr mh;
    report r = {0};
    char c;
    int sv[2], devnull = open("/dev/null", O_WRONLY);

    ck_assert_int_ge(devnull, 0);
    if (u == NULL) {
        close(devnull);
        return;
    }
    pair(sv, 0);
    memset(&mh, 0, sizeof(mh));
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    ck_assert(gw_uring_sendmsg(u, devnull, &mh, 0, 7)); /* not a socket */
    ck_assert(gw_uring_sendmsg(u, sv[0], &mh, 0, 8));
    ck_assert(!gw_uring_sendmsg(u, sv[0], &mh, 0, 9)); /* the batch holds 2 */
    ck_assert_uint_eq(gw_uring_submit(u, on_done, &r), 2);
    ck_assert_uint_eq(r.n, 2);
    ck_assert_uint_eq(r.tags[0], 7);
    ck_assert_int_eq(r.results[0], -ENOTSOCK);
    ck_assert_uint_eq(r.tags[1], 8);
    ck_assert_int_eq(r.results[1], 1);
    ck_assert_uint_eq(drain(sv[1], &c, 1), 1);
    ck_assert_int_eq(c, 'x');
    /* The ring is still good, and an empty batch reports nothing. */
    ck_assert(gw_uring_ok(u));
    r.n = 0;
    ck_assert_uint_eq(gw_uring_submit(u, on_done, &r), 0);
    ck_assert_uint_eq(r.n, 0);
    close(sv[0]);
    close(sv[1]);
    close(devnull);
    gw_uring_free(u);
    gw_uring_free(NULL);
}
END_TEST

int main(void)
{
    Suite *su = suite_create("gw_uring");
    TCase *tc = tcase_create("uring");
    SRunner *sr;
    int failed;

    tcase_add_test(tc, test_batch_reports_each_send_in_order);
    tcase_add_test(tc, test_full_socket_short_then_eagain_never_waits);
    tcase_add_test(tc, test_bad_descriptor_fails_alone_and_full_batch_refuses);
    suite_add_tcase(su, tc);
    sr = srunner_create(su);
    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? 0 : 1;
}
