/* Unit tests for the clocks (common/sl_time). */
#include <check.h>
#include <time.h>

#include "sl_time.h"

START_TEST(test_wall_clock)
{
    int64_t before = (int64_t)time(NULL), ns = sl_now_ns(), after = (int64_t)time(NULL);

    /* Nanoseconds of the same wall clock that time() reads in seconds. */
    ck_assert_int_ge(ns / 1000000000LL, before);
    ck_assert_int_le(ns / 1000000000LL, after);
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
