/* Unit tests of orch_scache: a fresh entry is returned, an old one is
 * not, a late read never replaces a newer store, forget drops, and the
 * bound evicts the least recently written. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>

#include "orch_scache.h"

static orch_causal_state state_of(const char *id)
{
    orch_causal_state st = {0};

    orch_causal_advance(&st, id);
    return st;
}

START_TEST(test_get_put_ttl)
{
    orch_scache *c = NULL;
    orch_causal_state st = state_of("c-1"), got = {0};
    uint64_t rev = 0;

    ck_assert_int_eq(orch_scache_create(&c, 0, 10), SL_ERR_INVAL);
    ck_assert_int_eq(orch_scache_create(&c, 4, 0), SL_ERR_INVAL);
    ck_assert_int_eq(orch_scache_create(&c, 4, 100), SL_OK);
    ck_assert(!orch_scache_get(c, "t.s", 1000, &got, &rev));
    orch_scache_put(c, "t.s", &st, 7, 1000);
    ck_assert(orch_scache_get(c, "t.s", 1099, &got, &rev));
    ck_assert_uint_eq(rev, 7);
    ck_assert_str_eq(got.last, "c-1");
    ck_assert(orch_causal_seen(&got, "c-1"));
    /* Past its TTL the entry is not trusted. */
    ck_assert(!orch_scache_get(c, "t.s", 1100, &got, &rev));
    /* A newer store refreshes it. */
    st = state_of("c-2");
    orch_scache_put(c, "t.s", &st, 9, 2000);
    ck_assert(orch_scache_get(c, "t.s", 2050, &got, &rev));
    ck_assert_uint_eq(rev, 9);
    ck_assert_str_eq(got.last, "c-2");
    ck_assert_uint_eq(orch_scache_count(c), 1);
    orch_scache_destroy(c);
    orch_scache_destroy(NULL);
}
END_TEST

START_TEST(test_older_revision_kept_out)
{
    orch_scache *c = NULL;
    orch_causal_state st = state_of("c-5"), old = state_of("c-4"), got = {0};
    uint64_t rev = 0;

    ck_assert_int_eq(orch_scache_create(&c, 4, 1000), SL_OK);
    orch_scache_put(c, "t.s", &st, 20, 100);
    /* A read that started before our store returns an older revision. */
    orch_scache_put(c, "t.s", &old, 19, 150);
    ck_assert(orch_scache_get(c, "t.s", 200, &got, &rev));
    ck_assert_uint_eq(rev, 20);
    ck_assert_str_eq(got.last, "c-5");
    /* Forget drops it: the next batch reads KV. */
    orch_scache_forget(c, "t.s");
    orch_scache_forget(c, "t.none");
    ck_assert(!orch_scache_get(c, "t.s", 200, &got, &rev));
    ck_assert_uint_eq(orch_scache_count(c), 0);
    orch_scache_destroy(c);
}
END_TEST

START_TEST(test_bound_evicts_least_recently_written)
{
    orch_scache *c = NULL;
    orch_causal_state st = state_of("c-1"), got = {0};
    uint64_t rev = 0;
    char key[32];

    ck_assert_int_eq(orch_scache_create(&c, 3, 1000), SL_OK);
    for (int i = 0; i < 3; i++) {
        snprintf(key, sizeof(key), "t.s%d", i);
        orch_scache_put(c, key, &st, (uint64_t)i + 1, 10);
    }
    /* s0 is written again: s1 is now the least recently written. */
    orch_scache_put(c, "t.s0", &st, 5, 20);
    orch_scache_put(c, "t.s3", &st, 6, 30);
    ck_assert_uint_eq(orch_scache_count(c), 3);
    ck_assert(!orch_scache_get(c, "t.s1", 40, &got, &rev));
    ck_assert(orch_scache_get(c, "t.s0", 40, &got, &rev));
    ck_assert(orch_scache_get(c, "t.s2", 40, &got, &rev));
    ck_assert(orch_scache_get(c, "t.s3", 40, &got, &rev));
    /* Many more than the bound: the count stays at it. */
    for (int i = 0; i < 1000; i++) {
        snprintf(key, sizeof(key), "t.x%d", i);
        orch_scache_put(c, key, &st, (uint64_t)i + 10, 50);
    }
    ck_assert_uint_eq(orch_scache_count(c), 3);
    ck_assert(orch_scache_get(c, "t.x999", 60, &got, &rev));
    ck_assert(!orch_scache_get(c, "t.s3", 60, &got, &rev));
    orch_scache_destroy(c); /* frees every entry (checked by the sanitizers) */
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("orch_scache");
    TCase *tc = tcase_create("core");

    tcase_add_test(tc, test_get_put_ttl);
    tcase_add_test(tc, test_older_revision_kept_out);
    tcase_add_test(tc, test_bound_evicts_least_recently_written);
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
