/* Unit tests for the gateway's outbound frames and bounded queues (gw_outq):
 * shared reference-counted buffers, FIFO order, and the frame and byte
 * bounds that decide when a client is cut with 4429. */
#include <check.h>
#include <libwebsockets.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gw_outq.h"

START_TEST(test_buf_payload_and_headroom)
{
    gw_buf *b = gw_buf_new("hello", 5);

    ck_assert_ptr_nonnull(b);
    ck_assert_int_eq(b->refs, 1);
    ck_assert_uint_eq(b->len, 5);
    /* The payload leaves LWS_PRE bytes for the frame header and is
     * NUL-terminated (the text is also logged and parsed as a string). */
    ck_assert_ptr_eq(gw_buf_payload(b), b->data + LWS_PRE);
    ck_assert_mem_eq(gw_buf_payload(b), "hello", 6);
    gw_buf_unref(b);
    gw_buf_unref(NULL);

    ck_assert_ptr_null(gw_buf_from(NULL));
    b = gw_buf_from(strdup("{\"type\":\"pong\"}"));
    ck_assert_ptr_nonnull(b);
    ck_assert_uint_eq(b->len, strlen("{\"type\":\"pong\"}"));
    ck_assert_str_eq((const char *)gw_buf_payload(b), "{\"type\":\"pong\"}");
    gw_buf_unref(b);
}
END_TEST

START_TEST(test_fifo_order)
{
    gw_outq q = {0};
    gw_buf *b[5];

    ck_assert_ptr_null(gw_outq_peek(&q));
    gw_outq_pop(&q); /* popping an empty queue does nothing */
    for (int i = 0; i < 5; i++) {
        char t[16];
        snprintf(t, sizeof(t), "f%d", i);
        b[i] = gw_buf_new(t, strlen(t));
        ck_assert(gw_outq_push(&q, b[i], 100, 1000));
        gw_buf_unref(b[i]); /* the queue holds the only reference now */
    }
    ck_assert_uint_eq(q.frames, 5);
    ck_assert_uint_eq(q.bytes, 10);
    for (int i = 0; i < 5; i++) {
        char t[16];
        snprintf(t, sizeof(t), "f%d", i);
        ck_assert_ptr_eq(gw_outq_peek(&q), b[i]);
        ck_assert_str_eq((const char *)gw_buf_payload(gw_outq_peek(&q)), t);
        gw_outq_pop(&q);
    }
    ck_assert_ptr_null(gw_outq_peek(&q));
    ck_assert_uint_eq(q.frames, 0);
    ck_assert_uint_eq(q.bytes, 0);
    /* Usable again after it ran empty. */
    b[0] = gw_buf_new("again", 5);
    ck_assert(gw_outq_push(&q, b[0], 1, 5));
    ck_assert_ptr_eq(gw_outq_peek(&q), b[0]);
    gw_outq_clear(&q);
    gw_buf_unref(b[0]);
}
END_TEST

START_TEST(test_bounds_are_inclusive_and_refuse_whole_frames)
{
    gw_outq q = {0};
    gw_buf *b = gw_buf_new("0123456789", 10);

    /* Exactly at the bounds is allowed; one more frame or byte is not, and
     * a refused push changes nothing. */
    ck_assert(gw_outq_push(&q, b, 3, 30));
    ck_assert(gw_outq_push(&q, b, 3, 30));
    ck_assert(gw_outq_push(&q, b, 3, 30));
    ck_assert(!gw_outq_push(&q, b, 4, 30));   /* bytes: 40 > 30 */
    ck_assert(!gw_outq_push(&q, b, 3, 1000)); /* frames: 4 > 3 */
    ck_assert_uint_eq(q.frames, 3);
    ck_assert_uint_eq(q.bytes, 30);
    ck_assert_int_eq(b->refs, 4);
    gw_outq_pop(&q);
    ck_assert(gw_outq_push(&q, b, 3, 30));
    gw_outq_clear(&q);
    ck_assert_uint_eq(q.frames, 0);
    ck_assert_uint_eq(q.bytes, 0);
    ck_assert_ptr_null(gw_outq_peek(&q));
    ck_assert_int_eq(b->refs, 1);
    /* A frame larger than the byte bound never fits, even in an empty queue. */
    ck_assert(!gw_outq_push(&q, b, 10, 9));
    ck_assert_int_eq(b->refs, 1);
    gw_buf_unref(b);
}
END_TEST

/* One frame fanned out to many members: every queue holds a reference, and
 * the buffer is freed with the last one (ASan reports a leak or a use after
 * free otherwise). */
START_TEST(test_shared_buffer_across_queues)
{
    enum { N = 64 };
    gw_outq q[N];
    gw_buf *b = gw_buf_new("{\"type\":\"event\"}", 16);

    memset(q, 0, sizeof(q));
    for (int i = 0; i < N; i++)
        ck_assert(gw_outq_push(&q[i], b, 4, 64));
    ck_assert_int_eq(b->refs, N + 1);
    gw_buf_unref(b); /* the producer's reference */
    for (int i = 0; i < N; i++) {
        ck_assert_ptr_eq(gw_outq_peek(&q[i]), b);
        if (i % 2 == 0)
            gw_outq_pop(&q[i]);
        else
            gw_outq_clear(&q[i]);
    }
}
END_TEST

/* The ring wraps and grows while wrapped: frames stay in order, encode
 * reads across the wrap, and emptying a small ring frees it (ASan checks
 * that nothing leaks). */
START_TEST(test_ring_wraps_and_grows_in_order)
{
    gw_outq q = {0};
    gw_buf *b[40];
    unsigned char dst[4096];
    int in = 0, out = 0;

    for (int i = 0; i < 40; i++) {
        char t[8];
        int n = snprintf(t, sizeof(t), "f%d", i);
        b[i] = gw_buf_new(t, (size_t)n);
    }
    /* 3 in, 2 out, 3 in, 2 out...: the oldest frame walks round the ring,
     * and every third round the ring is full and grows. */
    while (in < 40) {
        for (int k = 0; k < 3 && in < 40; k++)
            ck_assert(gw_outq_push(&q, b[in++], 100, 1u << 20));
        for (int k = 0; k < 2; k++) {
            ck_assert_ptr_eq(gw_outq_peek(&q), b[out]);
            gw_outq_pop(&q);
            out++;
        }
        ck_assert_uint_eq(q.frames, (size_t)(in - out));
    }
    {
        size_t nf = 0, n = gw_outq_encode(&q, dst, sizeof(dst), &nf), at = 0;
        ck_assert_uint_eq(nf, (size_t)(in - out));
        for (size_t f = 0; f < nf; f++) {
            ck_assert_uint_lt(at + 2, n);
            ck_assert_uint_eq(dst[at], 0x81);
            ck_assert_uint_eq(dst[at + 1], b[out + (int)f]->len);
            ck_assert_mem_eq(dst + at + 2, gw_buf_payload(b[out + (int)f]), b[out + (int)f]->len);
            at += 2 + b[out + (int)f]->len;
        }
        ck_assert_uint_eq(at, n);
    }
    while (gw_outq_peek(&q) != NULL) {
        ck_assert_ptr_eq(gw_outq_peek(&q), b[out++]);
        gw_outq_pop(&q);
    }
    ck_assert_int_eq(out, 40);
    ck_assert_uint_eq(q.bytes, 0);
    for (int i = 0; i < 40; i++) {
        ck_assert_int_eq(b[i]->refs, 1); /* the queue dropped every reference */
        gw_buf_unref(b[i]);
    }
    /* The grown ring is kept for the next burst; clearing frees it. A
     * small ring is freed when emptied. */
    ck_assert_ptr_nonnull(q.ring);
    gw_outq_clear(&q);
    ck_assert_ptr_null(q.ring);
    ck_assert(gw_outq_push(&q, b[0] = gw_buf_new("x", 1), 4, 64));
    gw_outq_pop(&q);
    ck_assert_ptr_null(q.ring);
    ck_assert(gw_outq_push(&q, b[0], 4, 64));
    gw_outq_clear(&q);
    ck_assert_ptr_null(q.ring);
    gw_buf_unref(b[0]);
}
END_TEST

/* Parses one server frame at p (n bytes left) strictly: FIN, no RSV, text,
 * unmasked, minimal length encoding. Returns the frame's size, sets *off and
 * *len to its payload. */
static size_t parse_frame(const unsigned char *p, size_t n, size_t *off, size_t *len)
{
    size_t h = 2;

    ck_assert_uint_ge(n, 2);
    ck_assert_uint_eq(p[0], 0x81);
    ck_assert_uint_eq(p[1] & 0x80, 0); /* unmasked */
    *len = p[1] & 0x7f;
    if (*len == 126) {
        ck_assert_uint_ge(n, 4);
        *len = ((size_t)p[2] << 8) | p[3];
        ck_assert_uint_ge(*len, 126);
        h = 4;
    } else if (*len == 127) {
        ck_assert_uint_ge(n, 10);
        *len = 0;
        for (int i = 0; i < 8; i++)
            *len = (*len << 8) | p[2 + i];
        ck_assert_uint_gt(*len, 0xffff);
        h = 10;
    }
    *off = h;
    ck_assert_uint_ge(n, h + *len);
    return h + *len;
}

START_TEST(test_header_lengths_at_the_boundaries)
{
    static const size_t lens[] = {0, 1, 125, 126, 127, 65535, 65536, 65537, 5000000};
    unsigned char h[GW_WS_HDR_MAX];

    for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
        size_t hl = gw_ws_text_header(h, lens[i]), want = lens[i] < 126     ? 2
                                                          : lens[i] < 65536 ? 4
                                                                            : 10;
        unsigned char *frame = calloc(1, hl + lens[i] + 1);
        size_t off, len;

        ck_assert_uint_eq(hl, want);
        memcpy(frame, h, hl);
        ck_assert_uint_eq(parse_frame(frame, hl + lens[i], &off, &len), hl + lens[i]);
        ck_assert_uint_eq(off, hl);
        ck_assert_uint_eq(len, lens[i]);
        free(frame);
    }
}
END_TEST

/* A queue of frames of boundary sizes encodes, batch by batch, into the
 * same frames in the same order, each batch within its cap, and a lone
 * frame is left to be written from its own buffer. */
START_TEST(test_encode_batches_keep_boundaries_and_order)
{
    static const size_t lens[] = {1, 0, 125, 126, 2, 65535, 3, 65536, 124, 127, 70000, 5, 6, 300};
    size_t nl = sizeof(lens) / sizeof(lens[0]), next = 0, cap = 64 * 1024;
    unsigned char *dst = malloc(cap);
    gw_outq q = {0};
    int batches = 0, lone = 0;

    for (size_t i = 0; i < nl; i++) {
        char *t = malloc(lens[i] + 1);
        gw_buf *b;
        for (size_t k = 0; k < lens[i]; k++)
            t[k] = (char)('a' + (i + k) % 26);
        b = gw_buf_new(t, lens[i]);
        ck_assert(gw_outq_push(&q, b, 100, 1u << 30));
        gw_buf_unref(b);
        free(t);
    }
    while (gw_outq_peek(&q) != NULL) {
        size_t nf = 99, n = gw_outq_encode(&q, dst, cap, &nf), at = 0;

        if (nf < 2) {
            /* Not encoded: the next frame is alone (too large to share). */
            ck_assert_uint_eq(n, 0);
            ck_assert_uint_eq(gw_outq_peek(&q)->len, lens[next]);
            gw_outq_pop(&q);
            next++;
            lone++;
            continue;
        }
        ck_assert_uint_le(n, cap);
        batches++;
        for (size_t f = 0; f < nf; f++) {
            size_t off, len, sz = parse_frame(dst + at, n - at, &off, &len);
            gw_buf *b = gw_outq_peek(&q);

            ck_assert_uint_eq(len, lens[next]);
            ck_assert_mem_eq(dst + at + off, gw_buf_payload(b), len);
            at += sz;
            gw_outq_pop(&q);
            next++;
        }
        ck_assert_uint_eq(at, n);
        /* Greedy: the frame after the batch would not have fitted. */
        if (gw_outq_peek(&q) != NULL) {
            unsigned char h[GW_WS_HDR_MAX];
            ck_assert_uint_gt(
                n + gw_ws_text_header(h, gw_outq_peek(&q)->len) + gw_outq_peek(&q)->len, cap);
        }
    }
    ck_assert_uint_eq(next, nl);
    ck_assert_uint_eq(q.frames, 0);
    ck_assert_uint_eq(q.bytes, 0);
    /* 65535 (4-byte header), 65536 and 70000 cannot share a 64 KiB write. */
    ck_assert_int_ge(lone, 3);
    ck_assert_int_ge(batches, 2);
    gw_outq_clear(&q); /* the grown ring outlives the frames until cleared */
    free(dst);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("gw_outq");
    TCase *tc = tcase_create("core");
    SRunner *sr;
    int failed;

    tcase_add_test(tc, test_buf_payload_and_headroom);
    tcase_add_test(tc, test_fifo_order);
    tcase_add_test(tc, test_bounds_are_inclusive_and_refuse_whole_frames);
    tcase_add_test(tc, test_shared_buffer_across_queues);
    tcase_add_test(tc, test_ring_wraps_and_grows_in_order);
    tcase_add_test(tc, test_header_lengths_at_the_boundaries);
    tcase_add_test(tc, test_encode_batches_keep_boundaries_and_order);
    suite_add_tcase(s, tc);
    sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? 0 : 1;
}
