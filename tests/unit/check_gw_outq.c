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
    suite_add_tcase(s, tc);
    sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? 0 : 1;
}
