/* Unit tests for the presence bucket's entries (gw_presrec): the record
 * key, the record's value, and the reader that takes both the records and
 * the one-member entries of older gateways, each session once. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gw_presrec.h"

START_TEST(test_key)
{
    char b[128];

    ck_assert_int_eq(gw_presrec_key(b, sizeof(b), "acme", "lobby", "Inst1"), SL_OK);
    ck_assert_str_eq(b, "acme.lobby.=Inst1");
    /* Bad ids and a short buffer are refused. */
    ck_assert_int_eq(gw_presrec_key(b, sizeof(b), "a.b", "lobby", "Inst1"), SL_ERR_INVAL);
    ck_assert_int_eq(gw_presrec_key(b, sizeof(b), "acme", "", "Inst1"), SL_ERR_INVAL);
    ck_assert_int_eq(gw_presrec_key(b, sizeof(b), "acme", "lobby", "x=y"), SL_ERR_INVAL);
    ck_assert_int_eq(gw_presrec_key(b, 10, "acme", "lobby", "Inst1"), SL_ERR_INVAL);
}
END_TEST

/* Reads entries into a fresh array; returns it (caller frees). */
static cJSON *collect(const char *const *kv, int n, int max, bool *truncated)
{
    cJSON *arr = cJSON_CreateArray();
    gw_map *seen = NULL;

    ck_assert_int_eq(gw_map_create(&seen), SL_OK);
    *truncated = false;
    for (int i = 0; i < n; i++)
        ck_assert(gw_presrec_collect(kv[2 * i], kv[2 * i + 1], strlen(kv[2 * i + 1]), arr, seen,
                                     max, truncated));
    gw_map_destroy(seen);
    return arr;
}

static const char *member_user(const cJSON *arr, const char *session)
{
    const cJSON *it;

    cJSON_ArrayForEach(it, arr)
    {
        const cJSON *ss = cJSON_GetObjectItem(it, "session");
        if (cJSON_IsString(ss) && strcmp(ss->valuestring, session) == 0)
            return cJSON_GetObjectItem(it, "user")->valuestring;
    }
    return NULL;
}

START_TEST(test_encode_then_collect)
{
    gw_presrec_member m[] = {{"s1", "alice"}, {"s2", "b\"o\\b \xc3\xa9"}};
    char *v = gw_presrec_encode(m, 2, 2);
    const char *kv[2];
    bool truncated;
    cJSON *arr;

    ck_assert_ptr_nonnull(v);
    ck_assert_str_eq(v, "{\"v\":1,\"count\":2,\"members\":[{\"session\":\"s1\",\"user\":\"alice\"},"
                        "{\"session\":\"s2\",\"user\":\"b\\\"o\\\\b \xc3\xa9\"}]}");
    kv[0] = "acme.lobby.=G1";
    kv[1] = v;
    arr = collect(kv, 1, 100, &truncated);
    ck_assert_int_eq(cJSON_GetArraySize(arr), 2);
    ck_assert_str_eq(member_user(arr, "s1"), "alice");
    ck_assert_str_eq(member_user(arr, "s2"), "b\"o\\b \xc3\xa9");
    ck_assert(!truncated);
    cJSON_Delete(arr);
    free(v);
    /* A record listing fewer members than it counts marks the read cut. */
    v = gw_presrec_encode(m, 1, 700);
    kv[1] = v;
    arr = collect(kv, 1, 100, &truncated);
    ck_assert_int_eq(cJSON_GetArraySize(arr), 1);
    ck_assert(truncated);
    cJSON_Delete(arr);
    free(v);
}
END_TEST

START_TEST(test_both_forms_each_session_once)
{
    const char *kv[] = {
        "acme.lobby.=G1",
        "{\"v\":1,\"count\":2,\"members\":[{\"session\":\"s1\",\"user\":\"a\"},"
        "{\"session\":\"s2\",\"user\":\"b\"}]}",
        "acme.lobby.s2",
        "{\"user\":\"b\"}", /* an old gateway's entry, same session */
        "acme.lobby.s3",
        "{\"user\":\"c\"}", /* an old gateway's entry */
        "acme.lobby.=G2",
        "{\"v\":1,\"count\":2,\"members\":[{\"session\":\"s1\",\"user\":\"a\"},"
        "{\"session\":\"s4\",\"user\":\"d\"}]}",
    };
    bool truncated;
    cJSON *arr = collect(kv, 4, 100, &truncated);

    ck_assert_int_eq(cJSON_GetArraySize(arr), 4);
    ck_assert_str_eq(member_user(arr, "s1"), "a");
    ck_assert_str_eq(member_user(arr, "s2"), "b");
    ck_assert_str_eq(member_user(arr, "s3"), "c");
    ck_assert_str_eq(member_user(arr, "s4"), "d");
    ck_assert(!truncated);
    cJSON_Delete(arr);
    /* Cut at max: the first ones are kept and the read says so. */
    arr = collect(kv, 4, 3, &truncated);
    ck_assert_int_eq(cJSON_GetArraySize(arr), 3);
    ck_assert(truncated);
    cJSON_Delete(arr);
}
END_TEST

START_TEST(test_malformed_entries_add_nothing)
{
    const char *kv[] = {
        "acme.lobby.=G1",
        "not json",
        "acme.lobby.=G2",
        "{\"members\":\"no\"}",
        "acme.lobby.=G3",
        "{\"members\":[{\"session\":\"bad.id\",\"user\":\"x\"},{\"user\":\"y\"},"
        "{\"session\":\"ok\",\"user\":7},{\"session\":\"\",\"user\":\"z\"}]}",
        "acme.lobby.s5",
        "[1,2]",
        "acme.lobby.s6",
        "{\"user\":\"\"}",
        "nodots",
        "{\"user\":\"u\"}",
    };
    bool truncated;
    cJSON *arr = collect(kv, 6, 100, &truncated);

    ck_assert_int_eq(cJSON_GetArraySize(arr), 0);
    ck_assert(!truncated);
    cJSON_Delete(arr);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("gw_presrec");
    TCase *tc = tcase_create("core");
    SRunner *sr;
    int failed;

    tcase_add_test(tc, test_key);
    tcase_add_test(tc, test_encode_then_collect);
    tcase_add_test(tc, test_both_forms_each_session_once);
    tcase_add_test(tc, test_malformed_entries_add_nothing);
    suite_add_tcase(s, tc);
    sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? 0 : 1;
}
