/* Unit tests of the token quotas (orch_quota): SLUICE_TENANT_QUOTAS
 * parsing, the sliding-window arithmetic with its retry time, and the view
 * fed with bucket values as the watch would. */
#include <check.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "orch_quota.h"

START_TEST(test_parse)
{
    orch_quota_rule *r = NULL;
    size_t n = 99;
    char err[256];

    ck_assert_int_eq(orch_quota_parse(NULL, &r, &n, err, sizeof(err)), SL_OK);
    ck_assert_uint_eq(n, 0);
    ck_assert_ptr_null(r);
    ck_assert_int_eq(orch_quota_parse("", &r, &n, err, sizeof(err)), SL_OK);
    ck_assert_uint_eq(n, 0);

    ck_assert_int_eq(orch_quota_parse("tenantA=100,tenantB=50000,c=0", &r, &n, err, sizeof(err)),
                     SL_OK);
    ck_assert_uint_eq(n, 3);
    ck_assert_str_eq(r[0].tenant, "tenantA");
    ck_assert_int_eq(r[0].tokens, 100);
    ck_assert_str_eq(r[1].tenant, "tenantB");
    ck_assert_int_eq(r[1].tokens, 50000);
    ck_assert_int_eq(r[2].tokens, 0);
    free(r);

    const char *bad[][2] = {
        {"a=1,,b=2", "empty item"},
        {"a", "'a' is not tenant=tokens"},
        {"=5", "not a valid tenant id"},
        {"a.b=5", "not a valid tenant id"},
        {"a=-1", "integer"},
        {"a=1x", "integer"},
        {"a=", "integer"},
        {"a= 5", "integer"},
        {"a=99999999999999999999", "integer"},
        {"a=1,a=2", "listed twice"},
        {"a=1,", "empty item"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        err[0] = '\0';
        r = NULL;
        ck_assert_msg(orch_quota_parse(bad[i][0], &r, &n, err, sizeof(err)) == SL_ERR_INVAL,
                      "%s accepted", bad[i][0]);
        ck_assert_msg(strstr(err, bad[i][1]) != NULL, "%s: '%s'", bad[i][0], err);
        ck_assert_ptr_null(r);
    }
}
END_TEST

START_TEST(test_window)
{
    /* Window 60 s, now = second 1000 + 250 ms. */
    int64_t now = 1000 * 1000 + 250;
    orch_quota_slot s[] = {
        {.sec = 930, .tokens = 1000}, /* out of the window (<= 940) */
        {.sec = 941, .tokens = 30},   /* the oldest in the window: leaves at 1001 s */
        {.sec = 950, .tokens = 50},   /* leaves at 1010 s */
        {.sec = 1000, .tokens = 20},  /* this second */
    };
    uint64_t used = 0;
    int64_t retry = -1;

    /* 100 in the window. */
    ck_assert(orch_quota_window_ok(s, 4, now, 60, 101, &used, &retry));
    ck_assert_uint_eq(used, 100);
    ck_assert_int_eq(retry, -1);
    /* At budget is over it: the oldest second must leave (at 1001.000 s). */
    ck_assert(!orch_quota_window_ok(s, 4, now, 60, 100, &used, &retry));
    ck_assert_int_eq(retry, 750);
    /* Under 70 needs 941 and 950 gone: 1010 s. */
    ck_assert(!orch_quota_window_ok(s, 4, now, 60, 70, &used, &retry));
    ck_assert_int_eq(retry, 10 * 1000 - 250);
    /* Under 20 needs this second gone too: 1060 s. */
    ck_assert(!orch_quota_window_ok(s, 4, now, 60, 20, &used, &retry));
    ck_assert_int_eq(retry, 60 * 1000 - 250);
    /* No budget: no quota. */
    ck_assert(orch_quota_window_ok(s, 4, now, 60, 0, NULL, NULL));
    /* Order does not matter. */
    orch_quota_slot r[] = {s[3], s[0], s[2], s[1]};
    ck_assert(!orch_quota_window_ok(r, 4, now, 60, 70, NULL, &retry));
    ck_assert_int_eq(retry, 10 * 1000 - 250);
    /* A second ahead of now (clock skew) counts, and leaves last. */
    orch_quota_slot ahead[] = {{.sec = 1001, .tokens = 10}};
    ck_assert(!orch_quota_window_ok(ahead, 1, now, 60, 10, &used, &retry));
    ck_assert_int_eq(retry, 61 * 1000 - 250);
    /* A short window (tests): 5 s. */
    ck_assert(orch_quota_window_ok(s, 4, now, 5, 21, &used, NULL));
    ck_assert_uint_eq(used, 20);
    ck_assert(!orch_quota_window_ok(s, 4, now, 5, 20, &used, &retry));
    ck_assert_int_eq(retry, 5 * 1000 - 250);
    /* The last millisecond before the oldest second leaves. */
    ck_assert(!orch_quota_window_ok(s, 4, 1000 * 1000 + 999, 60, 100, NULL, &retry));
    ck_assert_int_eq(retry, 1);
}
END_TEST

START_TEST(test_view)
{
    orch_quota_rule rules[] = {{.tenant = "small", .tokens = 10}, {.tenant = "free", .tokens = 0}};
    orch_quota *q = NULL;
    int64_t retry = 0;
    int64_t now = 2000 * 1000 + 100;
    char v[64];

    ck_assert_int_eq(orch_quota_create(&q, 0, rules, 2, 61), SL_ERR_INVAL);
    ck_assert_int_eq(orch_quota_create(&q, 100, rules, 2, 60), SL_OK);
    ck_assert(orch_quota_enabled(q));
    ck_assert_int_eq(orch_quota_budget(q, "small"), 10);
    ck_assert_int_eq(orch_quota_budget(q, "free"), 0);
    ck_assert_int_eq(orch_quota_budget(q, "other"), 100);

    /* Not synced yet: served. */
    orch_quota_apply(q, "small.2000", "{\"in\":8,\"out\":4}", 17);
    ck_assert_int_eq(orch_quota_check(q, "small", now, &retry), ORCH_QUOTA_UNKNOWN);
    orch_quota_set_synced(q, true);
    ck_assert_int_eq(orch_quota_check(q, "small", now, &retry), ORCH_QUOTA_OVER);
    ck_assert_int_eq(retry, 60 * 1000 - 100);
    /* Other tenants are untouched. */
    ck_assert_int_eq(orch_quota_check(q, "other", now, &retry), ORCH_QUOTA_OK);
    ck_assert_int_eq(orch_quota_check(q, "free", now, &retry), ORCH_QUOTA_OK);
    /* A later value of the same second is its new total. */
    orch_quota_apply(q, "other.1999", "{\"in\":60,\"out\":30}", 19);
    ck_assert_int_eq(orch_quota_check(q, "other", now, &retry), ORCH_QUOTA_OK);
    snprintf(v, sizeof(v), "{\"in\":70,\"out\":30}");
    orch_quota_apply(q, "other.1999", v, strlen(v));
    ck_assert_int_eq(orch_quota_check(q, "other", now, &retry), ORCH_QUOTA_OVER);
    ck_assert_int_eq(retry, 59 * 1000 - 100);
    /* The window moves on. */
    ck_assert_int_eq(orch_quota_check(q, "other", 2059 * 1000, &retry), ORCH_QUOTA_OK);
    ck_assert_int_eq(orch_quota_check(q, "small", 2060 * 1000, &retry), ORCH_QUOTA_OK);
    /* A second 64 s later takes the same ring place. */
    orch_quota_apply(q, "small.2064", "{\"in\":1,\"out\":1}", 17);
    ck_assert_int_eq(orch_quota_check(q, "small", 2064 * 1000, &retry), ORCH_QUOTA_OK);
    /* Junk is ignored. */
    orch_quota_apply(q, "small.x", "{\"in\":100}", 10);
    orch_quota_apply(q, "small", "{\"in\":100}", 10);
    orch_quota_apply(q, "small.2064", "not json", 8);
    orch_quota_apply(q, "bad tenant.2064", "{\"in\":100}", 10);
    ck_assert_int_eq(orch_quota_check(q, "small", 2064 * 1000, &retry), ORCH_QUOTA_OK);
    orch_quota_destroy(q);

    /* No budgets anywhere: disabled, every check passes. */
    ck_assert_int_eq(orch_quota_create(&q, 0, NULL, 0, 60), SL_OK);
    ck_assert(!orch_quota_enabled(q));
    ck_assert_int_eq(orch_quota_check(q, "small", now, &retry), ORCH_QUOTA_OK);
    orch_quota_destroy(q);
    ck_assert_int_eq(orch_quota_check(NULL, "small", now, &retry), ORCH_QUOTA_OK);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("orch_quota");
    TCase *tc = tcase_create("quota");
    SRunner *sr;
    int failed;

    tcase_add_test(tc, test_parse);
    tcase_add_test(tc, test_window);
    tcase_add_test(tc, test_view);
    suite_add_tcase(s, tc);
    sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
