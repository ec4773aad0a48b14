/* Unit tests for orch_causal: the causal decision as a pure function, the
 * recent-id window, and the KV JSON format. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "orch_causal.h"

START_TEST(test_decide_chain)
{
    orch_causal_state st;

    memset(&st, 0, sizeof(st));
    /* A first message (no prev) starts the chain. */
    ck_assert_int_eq(orch_causal_decide(&st, "c-1", "", 0, 5000), ORCH_CAUSAL_PROCESS);
    ck_assert_int_eq(orch_causal_decide(&st, "c-1", NULL, 0, 5000), ORCH_CAUSAL_PROCESS);
    /* Its successor waits while it is not processed... */
    ck_assert_int_eq(orch_causal_decide(&st, "c-2", "c-1", 10, 5000), ORCH_CAUSAL_WAIT);
    ck_assert_int_eq(orch_causal_decide(&st, "c-2", "c-1", 4999, 5000), ORCH_CAUSAL_WAIT);
    /* ...until the deadline, then it goes through as a gap. */
    ck_assert_int_eq(orch_causal_decide(&st, "c-2", "c-1", 5000, 5000), ORCH_CAUSAL_GAP);
    ck_assert_int_eq(orch_causal_decide(&st, "c-2", "c-1", 0, 0), ORCH_CAUSAL_GAP);
    orch_causal_advance(&st, "c-1");
    ck_assert_str_eq(st.last, "c-1");
    ck_assert_int_eq(orch_causal_decide(&st, "c-2", "c-1", 10, 5000), ORCH_CAUSAL_PROCESS);
    /* A redelivery of a processed message has no effect. */
    ck_assert_int_eq(orch_causal_decide(&st, "c-1", "", 10, 5000), ORCH_CAUSAL_DUPLICATE);
    ck_assert_int_eq(orch_causal_decide(&st, "c-1", "c-0", 99999, 5000), ORCH_CAUSAL_DUPLICATE);
    orch_causal_advance(&st, "c-2");
    orch_causal_advance(&st, "c-3");
    /* A late message whose prev is an older processed one still goes
     * through (after a gap, or a fork), instead of waiting forever. */
    ck_assert_int_eq(orch_causal_decide(&st, "c-x", "c-1", 0, 5000), ORCH_CAUSAL_PROCESS);
    ck_assert_int_eq(orch_causal_decide(&st, "c-4", "c-3", 0, 5000), ORCH_CAUSAL_PROCESS);
    ck_assert_int_eq(orch_causal_decide(&st, "c-5", "c-4", 0, 5000), ORCH_CAUSAL_WAIT);
}
END_TEST

START_TEST(test_recent_window)
{
    orch_causal_state st;
    char id[16];

    memset(&st, 0, sizeof(st));
    for (int i = 1; i <= ORCH_CAUSAL_RECENT + 10; i++) {
        snprintf(id, sizeof(id), "c-%d", i);
        orch_causal_advance(&st, id);
    }
    ck_assert_uint_eq(st.n, ORCH_CAUSAL_RECENT);
    ck_assert_str_eq(st.recent[0], "c-11");
    ck_assert_str_eq(st.last, "c-74");
    ck_assert(!orch_causal_seen(&st, "c-10"));
    ck_assert(orch_causal_seen(&st, "c-11"));
    ck_assert(orch_causal_seen(&st, "c-74"));
    /* Advancing with a known id does not duplicate it. */
    orch_causal_advance(&st, "c-50");
    ck_assert_uint_eq(st.n, ORCH_CAUSAL_RECENT);
    ck_assert_str_eq(st.last, "c-50");
    /* Empty and over-long ids are ignored. */
    orch_causal_advance(&st, "");
    orch_causal_advance(&st, NULL);
    char longid[ORCH_CAUSAL_ID_MAX + 2];
    memset(longid, 'a', sizeof(longid) - 1);
    longid[sizeof(longid) - 1] = '\0';
    orch_causal_advance(&st, longid);
    ck_assert_str_eq(st.last, "c-50");
    ck_assert(!orch_causal_seen(&st, ""));
    ck_assert(!orch_causal_seen(&st, NULL));
}
END_TEST

START_TEST(test_json_round_trip)
{
    orch_causal_state a, b;
    char *json = NULL;

    memset(&a, 0, sizeof(a));
    orch_causal_advance(&a, "c-1");
    orch_causal_advance(&a, "c-2");
    orch_causal_advance(&a, "c:3.x");
    ck_assert_int_eq(orch_causal_format(&a, &json), SL_OK);
    ck_assert_str_eq(json, "{\"last\":\"c:3.x\",\"recent\":[\"c-1\",\"c-2\",\"c:3.x\"]}");
    ck_assert_int_eq(orch_causal_parse(&b, json, strlen(json)), SL_OK);
    ck_assert_str_eq(b.last, "c:3.x");
    ck_assert_uint_eq(b.n, 3);
    ck_assert_str_eq(b.recent[1], "c-2");
    free(json);

    memset(&a, 0, sizeof(a));
    ck_assert_int_eq(orch_causal_format(&a, &json), SL_OK);
    ck_assert_str_eq(json, "{\"last\":\"\",\"recent\":[]}");
    free(json);

    /* last may lag behind recent's order (after a merge): both are kept. */
    const char *merged = "{\"last\":\"c-2\",\"recent\":[\"c-1\",\"c-3\",\"c-2\"]}";
    ck_assert_int_eq(orch_causal_parse(&b, merged, strlen(merged)), SL_OK);
    ck_assert_str_eq(b.last, "c-2");
    ck_assert(orch_causal_seen(&b, "c-3"));

    /* An id that needs escaping (not a valid client id, but a state read
     * from KV may hold anything) round-trips too. */
    memset(&a, 0, sizeof(a));
    orch_causal_advance(&a, "c-1");
    orch_causal_advance(&a, "q\"\\x");
    ck_assert_int_eq(orch_causal_format(&a, &json), SL_OK);
    ck_assert_str_eq(json, "{\"last\":\"q\\\"\\\\x\",\"recent\":[\"c-1\",\"q\\\"\\\\x\"]}");
    ck_assert_int_eq(orch_causal_parse(&b, json, strlen(json)), SL_OK);
    ck_assert_str_eq(b.last, "q\"\\x");
    free(json);

    /* A full window of the longest ids. */
    memset(&a, 0, sizeof(a));
    for (int i = 0; i < ORCH_CAUSAL_RECENT + 5; i++) {
        char id[ORCH_CAUSAL_ID_MAX + 1], head[16];
        int k = snprintf(head, sizeof(head), "c-%dz", i);
        memset(id, 'a' + i % 26, ORCH_CAUSAL_ID_MAX);
        memcpy(id, head, (size_t)k);
        id[ORCH_CAUSAL_ID_MAX] = '\0';
        orch_causal_advance(&a, id);
    }
    ck_assert_uint_eq(a.n, ORCH_CAUSAL_RECENT);
    ck_assert_int_eq(orch_causal_format(&a, &json), SL_OK);
    ck_assert_uint_eq(strlen(json), strlen("{\"last\":\"\",\"recent\":[]}") +
                                        (ORCH_CAUSAL_RECENT + 1) * ORCH_CAUSAL_ID_MAX +
                                        ORCH_CAUSAL_RECENT * 3 - 1);
    ck_assert_int_eq(orch_causal_parse(&b, json, strlen(json)), SL_OK);
    ck_assert_uint_eq(b.n, ORCH_CAUSAL_RECENT);
    ck_assert_str_eq(b.recent[0], a.recent[0]);
    ck_assert_str_eq(b.last, a.last);
    free(json);

    ck_assert_int_eq(orch_causal_parse(&b, "[]", 2), SL_ERR_INVAL);
    ck_assert_uint_eq(b.n, 0);
    ck_assert_int_eq(orch_causal_parse(&b, "{\"last\":1}", 10), SL_ERR_INVAL);
    ck_assert_int_eq(orch_causal_parse(&b, "{\"recent\":\"x\"}", 14), SL_ERR_INVAL);
    ck_assert_int_eq(orch_causal_parse(&b, "{bad", 4), SL_ERR_INVAL);
    ck_assert_int_eq(orch_causal_parse(&b, "{}", 2), SL_OK);
    ck_assert_str_eq(b.last, "");
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("orch_causal");
    TCase *tc = tcase_create("core");

    tcase_add_test(tc, test_decide_chain);
    tcase_add_test(tc, test_recent_window);
    tcase_add_test(tc, test_json_round_trip);
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
