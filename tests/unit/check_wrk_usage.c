/* Unit tests of the worker's token estimate and of which usage a call
 * reports (wrk_usage: the model's numbers, else the estimate). */
#include <check.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "wrk_usage.h"

START_TEST(test_text_tokens)
{
    /* ceil(code points / 4) */
    ck_assert_uint_eq(wrk_usage_text_tokens(NULL, 0), 0);
    ck_assert_uint_eq(wrk_usage_text_tokens("", 0), 0);
    ck_assert_uint_eq(wrk_usage_text_tokens("a", 1), 1);
    ck_assert_uint_eq(wrk_usage_text_tokens("abcd", 4), 1);
    ck_assert_uint_eq(wrk_usage_text_tokens("abcde", 5), 2);
    ck_assert_uint_eq(wrk_usage_text_tokens("Hello from the fake model.", 26), 7);
    /* Code points, not bytes: four 2-byte and four 3-byte characters. */
    ck_assert_uint_eq(wrk_usage_text_tokens("\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9", 8), 1);
    ck_assert_uint_eq(
        wrk_usage_text_tokens("\xe6\x97\xa5\xe6\x97\xa5\xe6\x97\xa5\xe6\x97\xa5x", 13), 2);
    /* len bounds the text. */
    ck_assert_uint_eq(wrk_usage_text_tokens("abcdefgh", 4), 1);
}
END_TEST

START_TEST(test_input_tokens)
{
    const wrk_msg msgs[] = {
        {.role = "system", .content = "You are helpful."}, /* 16 -> 4, + 4 */
        {.role = "user", .content = NULL},                 /* 0, + 4 */
        {.role = "user", .content = "hi"},                 /* 1, + 4 */
    };

    ck_assert_uint_eq(wrk_usage_input_tokens(NULL, 0), 0);
    ck_assert_uint_eq(wrk_usage_input_tokens(msgs, 1), 8);
    ck_assert_uint_eq(wrk_usage_input_tokens(msgs, 3), 17);
}
END_TEST

START_TEST(test_usage_of_call)
{
    const wrk_msg msgs[] = {{.role = "user", .content = "one two three"}}; /* 13 -> 4, + 4 */
    wrk_result res;
    wrk_call_usage u;

    memset(&res, 0, sizeof(res));
    res.input_tokens = res.output_tokens = -1;
    u = wrk_usage_of_call(&res, msgs, 1, "one two", 7);
    ck_assert(u.estimated);
    ck_assert_uint_eq(u.input_tokens, 8);
    ck_assert_uint_eq(u.output_tokens, 2);

    /* The model's report wins, also when it says 0. */
    res.input_tokens = 120;
    res.output_tokens = 0;
    u = wrk_usage_of_call(&res, msgs, 1, "one two", 7);
    ck_assert(!u.estimated);
    ck_assert_uint_eq(u.input_tokens, 120);
    ck_assert_uint_eq(u.output_tokens, 0);

    /* Half a report is no report. */
    res.output_tokens = -1;
    u = wrk_usage_of_call(&res, msgs, 1, "one two", 7);
    ck_assert(u.estimated);
    ck_assert_uint_eq(u.input_tokens, 8);

    /* No result at all: estimated. */
    u = wrk_usage_of_call(NULL, NULL, 0, NULL, 0);
    ck_assert(u.estimated);
    ck_assert_uint_eq(u.input_tokens, 0);
    ck_assert_uint_eq(u.output_tokens, 0);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("wrk_usage");
    TCase *tc = tcase_create("estimate");
    SRunner *sr;
    int failed;

    tcase_add_test(tc, test_text_tokens);
    tcase_add_test(tc, test_input_tokens);
    tcase_add_test(tc, test_usage_of_call);
    suite_add_tcase(s, tc);
    sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
