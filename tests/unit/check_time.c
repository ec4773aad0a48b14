/* Unit tests for the clocks (common/sl_time). */
#include <check.h>
#include <time.h>

#include "sl_time.h"

START_TEST(test_wall_clock)
{
    struct timespec a, b;
    int64_t ns;

    /* Against the same clock read around it: time() would not do, it reads
     * the coarse clock (updated once per tick), which can still show the
     * previous second just after sl_now_ns() has passed into the next. */
    clock_gettime(CLOCK_REALTIME, &a);
    ns = sl_now_ns();
    clock_gettime(CLOCK_REALTIME, &b);
    ck_assert_int_ge(ns, (int64_t)a.tv_sec * 1000000000LL + a.tv_nsec);
    ck_assert_int_le(ns, (int64_t)b.tv_sec * 1000000000LL + b.tv_nsec);
    /* And it is a current date (after 2024-01-01), in nanoseconds. */
    ck_assert_int_gt(ns / 1000000000LL, 1704067200LL);
}
END_TEST

START_TEST(test_monotonic)
{
    struct timespec pause = {.tv_sec = 0, .tv_nsec = 20 * 1000000L};
    int64_t a = sl_mono_ms(), b;

    ck_assert_int_gt(a, 0);
    nanosleep(&pause, NULL);
    b = sl_mono_ms();
    /* It advanced by at least the pause and never went back. */
    ck_assert_int_ge(b - a, 20);
    ck_assert_int_lt(b - a, 10000);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("sl_time");
    TCase *tc = tcase_create("core");
    SRunner *sr;
    int failed;

    tcase_add_test(tc, test_wall_clock);
    tcase_add_test(tc, test_monotonic);
    suite_add_tcase(s, tc);
    sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? 0 : 1;
}
