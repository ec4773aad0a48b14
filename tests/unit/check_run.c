/* Unit tests of sl_run: the readiness order (a missing bus, an object not
 * yet published, then stopping) and the stop flag set by the signals.
 * The bus-connected states are checked end to end through /readyz by the
 * integration suites (a real nats-server). */
#include <check.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "sl_run.h"

static bool svc_says(void *svc, char *why, size_t whylen)
{
    snprintf(why, whylen, "svc %s", (const char *)svc);
    return false;
}

START_TEST(test_ready_without_bus_or_object)
{
    sl_run_ready r = {.bus = NULL, .svc_ready = svc_says, .svc_wait = "consumer not set up"};
    char why[64];

    ck_assert(!sl_run_ready_fn(&r, why, sizeof(why)));
    ck_assert_str_eq(why, "nats not connected");
    sl_run_publish(&r, "x");
    ck_assert(!sl_run_ready_fn(&r, why, sizeof(why)));
    ck_assert_str_eq(why, "nats not connected"); /* the bus is checked first */
    sl_run_publish(&r, NULL);
}
END_TEST

static void *raise_later(void *arg)
{
    struct timespec ts = {.tv_sec = 0, .tv_nsec = 100 * 1000000L};

    (void)arg;
    nanosleep(&ts, NULL);
    kill(getpid(), SIGTERM);
    return NULL;
}

START_TEST(test_signals_set_the_stop_flag)
{
    sl_run_ready r = {0};
    pthread_t t;
    char why[64];
    struct timespec a, b;

    sl_run_signals();
    ck_assert_int_eq(*sl_run_stop_flag(), 0);
    ck_assert_int_eq(pthread_create(&t, NULL, raise_later, NULL), 0);
    sl_run_wait_stop(); /* returns only once SIGTERM arrived */
    pthread_join(t, NULL);
    ck_assert_int_eq(*sl_run_stop_flag(), 1);
    ck_assert(!sl_run_ready_fn(&r, why, sizeof(why)));
    ck_assert_str_eq(why, "draining");
    kill(getpid(), SIGINT);
    ck_assert_int_eq(*sl_run_stop_flag(), 2);
    clock_gettime(CLOCK_MONOTONIC, &a);
    sl_run_sleep(60000); /* returns at once: the flag is set */
    clock_gettime(CLOCK_MONOTONIC, &b);
    ck_assert_int_lt(b.tv_sec - a.tv_sec, 30);
    ck_assert_int_eq(raise(SIGPIPE), 0); /* ignored: the test is still running */
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("run");
    TCase *tc = tcase_create("core");

    tcase_add_test(tc, test_ready_without_bus_or_object);
    tcase_add_test(tc, test_signals_set_the_stop_flag);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(suite());
    int failed;

    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
