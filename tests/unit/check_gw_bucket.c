/* Unit tests of the gateway's token bucket (gw_bucket): the burst, the
 * refill at the rate, the cap, and the retry hint of a busy answer. */
#include <check.h>
#include <stdlib.h>

#include "gw_bucket.h"

START_TEST(test_burst_then_rate)
{
    gw_bucket b;

    gw_bucket_init(&b, 10, 3, 1000);
    ck_assert(gw_bucket_take(&b, 1000));
    ck_assert(gw_bucket_take(&b, 1000));
    ck_assert(gw_bucket_take(&b, 1000));
    ck_assert(!gw_bucket_take(&b, 1000));
    ck_assert_int_eq(gw_bucket_retry_ms(&b, 1000), 100);
    ck_assert(!gw_bucket_take(&b, 1050));
    ck_assert(gw_bucket_take(&b, 1100));
    /* never above the burst however long the pause */
    ck_assert(gw_bucket_take(&b, 100000));
    ck_assert(gw_bucket_take(&b, 100000));
    ck_assert(gw_bucket_take(&b, 100000));
    ck_assert(!gw_bucket_take(&b, 100000));
}
END_TEST

START_TEST(test_retry_hint)
{
    gw_bucket b;

    gw_bucket_init(&b, 4, 1, 0);
    ck_assert_int_eq(gw_bucket_retry_ms(&b, 0), 0); /* a token is there */
    ck_assert(gw_bucket_take(&b, 0));
    ck_assert_int_eq(gw_bucket_retry_ms(&b, 0), 250);
    /* Partly refilled: the hint counts what is left, rounded up. */
    ck_assert_int_eq(gw_bucket_retry_ms(&b, 100), 150);
    /* 1 ms of wait left: at least 1 (never 0 while empty), and a rounding
     * step above it at most. */
    ck_assert_int_ge(gw_bucket_retry_ms(&b, 249), 1);
    ck_assert_int_le(gw_bucket_retry_ms(&b, 249), 2);
    ck_assert_int_eq(gw_bucket_retry_ms(&b, 250), 0);
    /* Asking does not take or refill: the bucket is where it was. */
    ck_assert(!gw_bucket_take(&b, 249));
    ck_assert(gw_bucket_take(&b, 250));
}
END_TEST

START_TEST(test_clock_going_back)
{
    gw_bucket b;

    /* A time before the last one adds nothing (and takes nothing away). */
    gw_bucket_init(&b, 1000, 2, 5000);
    ck_assert(gw_bucket_take(&b, 5000));
    ck_assert(gw_bucket_take(&b, 5000));
    ck_assert(!gw_bucket_take(&b, 1000));
    ck_assert_int_eq(gw_bucket_retry_ms(&b, 1000), 1);
    ck_assert(gw_bucket_take(&b, 5001));
}
END_TEST

START_TEST(test_slow_rate)
{
    gw_bucket b;

    /* Fractions add up: at 1 token per second, 4 x 250 ms make one. */
    gw_bucket_init(&b, 1, 1, 0);
    ck_assert(gw_bucket_take(&b, 0));
    for (int64_t t = 250; t < 1000; t += 250)
        ck_assert(!gw_bucket_take(&b, t));
    ck_assert_int_eq(gw_bucket_retry_ms(&b, 750), 250);
    ck_assert(gw_bucket_take(&b, 1000));
    ck_assert_int_eq(gw_bucket_retry_ms(&b, 1000), 1000);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("gw_bucket");
    TCase *tc = tcase_create("bucket");
    SRunner *sr;
    int failed;

    tcase_add_test(tc, test_burst_then_rate);
    tcase_add_test(tc, test_retry_hint);
    tcase_add_test(tc, test_clock_going_back);
    tcase_add_test(tc, test_slow_rate);
    suite_add_tcase(s, tc);
    sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
