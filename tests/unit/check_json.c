/* Unit tests of sl_json: integers go out digit for digit and come back
 * the same; anything that is not an exact integer in range is refused.
 * cJSON_AddNumberToObject() alone prints 8204888159999999 as
 * 8204888160000000 (the JWT fuzz target found it in minted tokens). */
#include <check.h>
#include <cJSON.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sl_json.h"

/* Prints {"v":v} and parses it back with sl_json_get_int. */
static void round_trip(int64_t v)
{
    cJSON *o = cJSON_CreateObject(), *back;
    char *txt, want[48];
    int64_t got = 0;

    ck_assert_ptr_nonnull(sl_json_add_int(o, "v", v));
    txt = cJSON_PrintUnformatted(o);
    snprintf(want, sizeof(want), "{\"v\":%lld}", (long long)v);
    ck_assert_str_eq(txt, want);
    back = cJSON_Parse(txt);
    ck_assert(sl_json_get_int(cJSON_GetObjectItemCaseSensitive(back, "v"), -SL_JSON_INT_MAX,
                              SL_JSON_INT_MAX, &got));
    ck_assert_int_eq(got, v);
    cJSON_Delete(back);
    cJSON_free(txt);
    cJSON_Delete(o);
}

START_TEST(test_add_prints_every_digit)
{
    static const int64_t vals[] = {0,
                                   1,
                                   -1,
                                   1700000000123,
                                   999999999999999,
                                   1000000000000001,
                                   8204888159999999,
                                   9007199254740991,
                                   SL_JSON_INT_MAX,
                                   -SL_JSON_INT_MAX};

    for (size_t i = 0; i < sizeof(vals) / sizeof(vals[0]); i++)
        round_trip(vals[i]);
    ck_assert_ptr_null(sl_json_add_int(NULL, "v", 1));
    {
        cJSON *o = cJSON_CreateObject();
        ck_assert_ptr_null(sl_json_add_int(o, NULL, 1));
        cJSON_Delete(o);
    }
}
END_TEST

/* The text of the one member "v" of {"v":text}, read with the bounds. */
static bool get_text(const char *text, int64_t min, int64_t max, int64_t *out)
{
    char buf[128];
    cJSON *o;
    bool ok;

    snprintf(buf, sizeof(buf), "{\"v\":%s}", text);
    o = cJSON_Parse(buf);
    ck_assert_ptr_nonnull(o);
    ok = sl_json_get_int(cJSON_GetObjectItemCaseSensitive(o, "v"), min, max, out);
    cJSON_Delete(o);
    return ok;
}

START_TEST(test_get_refuses_what_is_not_an_exact_integer)
{
    int64_t v = 42;

    ck_assert(get_text("7", 0, 10, &v) && v == 7);
    ck_assert(get_text("0", 0, 10, &v) && v == 0);
    ck_assert(get_text("10", 0, 10, &v) && v == 10);
    ck_assert(get_text("-3", -5, 10, &v) && v == -3);
    ck_assert(get_text("1e3", 0, 10000, &v) && v == 1000);
    v = 42;
    ck_assert(!get_text("11", 0, 10, &v));
    ck_assert(!get_text("-1", 0, 10, &v));
    ck_assert(!get_text("1.5", 0, 10, &v));
    ck_assert(!get_text("\"7\"", 0, 10, &v));
    ck_assert(!get_text("null", 0, 10, &v));
    ck_assert(!get_text("true", 0, 10, &v));
    ck_assert(!get_text("[7]", 0, 10, &v));
    ck_assert(!get_text("1e300", 0, INT64_MAX, &v));
    ck_assert(!get_text("-1e300", INT64_MIN, 0, &v));
    ck_assert(!get_text("18014398509481984", 0, INT64_MAX, &v)); /* 2^54 */
    ck_assert_int_eq(v, 42);                                     /* a refusal leaves *out alone */
    ck_assert(get_text("9007199254740992", 0, INT64_MAX, &v) && v == SL_JSON_INT_MAX);
    ck_assert(!sl_json_get_int(NULL, 0, 10, &v));
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("json");
    TCase *tc = tcase_create("core");

    tcase_add_test(tc, test_add_prints_every_digit);
    tcase_add_test(tc, test_get_refuses_what_is_not_an_exact_integer);
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
