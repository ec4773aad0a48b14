/* Unit tests of orch_park: bounds, taking messages back by session, by
 * predecessor and after a recheck against a causal state, dropping copies
 * whose lease ended. */
#include <check.h>
#include <nats/nats.h>
#include <stdlib.h>
#include <string.h>

#include "orch_park.h"

static natsMsg *msg(const char *data)
{
    natsMsg *m = NULL;

    ck_assert_int_eq(nats_Open(-1), NATS_OK); /* natsMsg_Destroy needs the library */
    ck_assert_int_eq(natsMsg_Create(&m, "sluice.in.t.s", NULL, data, (int)strlen(data)), NATS_OK);
    return m;
}

static void free_all(natsMsg **v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        natsMsg_Destroy(v[i]);
}

START_TEST(test_bounds)
{
    orch_park *p = NULL;
    natsMsg *m = msg("x");

    ck_assert_int_eq(orch_park_create(&p, -1, 1, 1), SL_ERR_INVAL);
    ck_assert_int_eq(orch_park_create(&p, 2, 3, 4), SL_OK);
    ck_assert_int_eq(orch_park_add(p, "t1", "t1.a", "c-2", "c-1", msg("1"), 100), SL_OK);
    ck_assert_int_eq(orch_park_add(p, "t1", "t1.a", "c-3", "c-2", msg("2"), 100), SL_OK);
    /* Per session. */
    ck_assert(!orch_park_fits(p, "t1", "t1.a"));
    ck_assert_int_eq(orch_park_add(p, "t1", "t1.a", "c-4", "c-3", m, 100), SL_ERR_FULL);
    ck_assert_int_eq(orch_park_add(p, "t1", "t1.b", "c-2", "c-1", msg("3"), 100), SL_OK);
    /* Per tenant: t1 has 3. */
    ck_assert(!orch_park_fits(p, "t1", "t1.c"));
    ck_assert_int_eq(orch_park_add(p, "t1", "t1.c", "c-2", "c-1", m, 100), SL_ERR_FULL);
    ck_assert_int_eq(orch_park_add(p, "t2", "t2.a", "c-2", "c-1", msg("4"), 100), SL_OK);
    /* In all: 4. */
    ck_assert(!orch_park_fits(p, "t3", "t3.a"));
    ck_assert_int_eq(orch_park_count(p), 4);
    natsMsg_Destroy(m);
    orch_park_destroy(p, NULL);
}
END_TEST

START_TEST(test_take_by_predecessor)
{
    orch_park *p = NULL;
    natsMsg *out[8];

    ck_assert_int_eq(orch_park_create(&p, 8, 8, 8), SL_OK);
    ck_assert_int_eq(orch_park_add(p, "t", "t.a", "c-3", "c-2", msg("3"), 100), SL_OK);
    ck_assert_int_eq(orch_park_add(p, "t", "t.a", "c-4", "c-3", msg("4"), 100), SL_OK);
    ck_assert_int_eq(orch_park_add(p, "t", "t.b", "c-9", "c-8", msg("9"), 100), SL_OK);
    /* c-1 unlocks nothing; c-3 is awaited by c-4 (itself parked, with its
     * session's others). */
    ck_assert_uint_eq(orch_park_take_session(p, "t.a", "c-1", out, 8), 0);
    ck_assert_uint_eq(orch_park_take_session(p, "t.a", "c-2", out, 8), 2);
    ck_assert_str_eq(natsMsg_GetData(out[0]), "3"); /* oldest first */
    ck_assert_str_eq(natsMsg_GetData(out[1]), "4");
    free_all(out, 2);
    ck_assert_uint_eq(orch_park_count(p), 1);
    ck_assert_uint_eq(orch_park_take_session(p, "t.a", NULL, out, 8), 0);
    /* The freed room is usable again. */
    ck_assert(orch_park_fits(p, "t", "t.a"));
    ck_assert_uint_eq(orch_park_take_session(p, "t.b", NULL, out, 8), 1);
    free_all(out, 1);
    ck_assert_uint_eq(orch_park_count(p), 0);
    orch_park_destroy(p, NULL);
}
END_TEST

START_TEST(test_take_ready_and_expire)
{
    orch_park *p = NULL;
    natsMsg *out[8];
    const char *keys[8];
    orch_causal_state st;

    ck_assert_int_eq(orch_park_create(&p, 8, 8, 8), SL_OK);
    ck_assert_int_eq(orch_park_add(p, "t", "t.a", "c-2", "c-1", msg("a2"), 1000), SL_OK);
    ck_assert_int_eq(orch_park_add(p, "t", "t.a", "c-3", "c-2", msg("a3"), 5000), SL_OK);
    ck_assert_int_eq(orch_park_add(p, "t", "t.b", "c-7", "c-6", msg("b7"), 5000), SL_OK);
    ck_assert_uint_eq(orch_park_take_ready(p, out, 8), 0);
    /* a2's lease ends: its copy is dropped (the server redelivers it). */
    ck_assert_uint_eq(orch_park_expire(p, 999), 0);
    ck_assert_uint_eq(orch_park_expire(p, 1000), 1);
    ck_assert_uint_eq(orch_park_count(p), 2);
    /* t.b's state, read from KV, shows c-6 processed elsewhere. */
    ck_assert_uint_eq(orch_park_sessions(p, keys, 8), 2);
    memset(&st, 0, sizeof(st));
    orch_causal_advance(&st, "c-5");
    ck_assert(!orch_park_recheck(p, "t.b", &st));
    ck_assert_uint_eq(orch_park_take_ready(p, out, 8), 0);
    orch_causal_advance(&st, "c-6");
    ck_assert(orch_park_recheck(p, "t.b", &st));
    ck_assert_uint_eq(orch_park_take_ready(p, out, 8), 1);
    ck_assert_str_eq(natsMsg_GetData(out[0]), "b7");
    free_all(out, 1);
    /* A woken session comes back whole. */
    orch_park_wake(p, "t.a");
    ck_assert_uint_eq(orch_park_take_ready(p, out, 8), 1);
    ck_assert_str_eq(natsMsg_GetData(out[0]), "a3");
    free_all(out, 1);
    ck_assert_uint_eq(orch_park_sessions(p, keys, 8), 0);
    ck_assert(orch_park_fits(p, "t", "t.a"));
    orch_park_destroy(p, NULL);
}
END_TEST

START_TEST(test_round_robin_and_destroy)
{
    orch_park *p = NULL;
    const char *keys[2];
    char key[16];
    int seen[5] = {0};

    ck_assert_int_eq(orch_park_create(&p, 8, 8, 8), SL_OK);
    for (int i = 0; i < 5; i++) {
        snprintf(key, sizeof(key), "t.s%d", i);
        ck_assert_int_eq(orch_park_add(p, "t", key, "c-2", "c-1", msg("m"), 100), SL_OK);
    }
    /* Two at a time, every session within three calls. */
    for (int c = 0; c < 3; c++) {
        size_t n = orch_park_sessions(p, keys, 2);
        ck_assert_uint_eq(n, 2);
        for (size_t i = 0; i < n; i++)
            seen[keys[i][3] - '0']++;
    }
    for (int i = 0; i < 5; i++)
        ck_assert_int_ge(seen[i], 1);
    /* Destroy frees the parked messages (checked by the sanitizers). */
    orch_park_destroy(p, NULL);
    orch_park_destroy(NULL, NULL);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("orch_park");
    TCase *tc = tcase_create("core");

    tcase_add_test(tc, test_bounds);
    tcase_add_test(tc, test_take_by_predecessor);
    tcase_add_test(tc, test_take_ready_and_expire);
    tcase_add_test(tc, test_round_robin_and_destroy);
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
