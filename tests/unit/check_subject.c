/* Unit tests for ids, channels and subjects (common/sl_subject). */
#include <check.h>
#include <stdio.h>
#include <string.h>

#include "sl_subject.h"

START_TEST(test_ids)
{
    static const char *const good[] = {"a", "acme", "A-b_9", "x-"};
    static const char *const bad[] = {"",  "a.b", "a*",  ">",   "a b",     "a\tb",
                                      "é", "a/b", "a:b", "a\n", "lobby.>", "*"};
    char s65[66], s64[65];

    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++)
        ck_assert_msg(sl_id_valid(good[i]), "%s", good[i]);
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        ck_assert_msg(!sl_id_valid(bad[i]), "%s", bad[i]);
    ck_assert(!sl_id_valid(NULL));
    memset(s64, 'a', 64);
    s64[64] = '\0';
    memset(s65, 'a', 65);
    s65[65] = '\0';
    ck_assert(sl_id_valid(s64));
    ck_assert(!sl_id_valid(s65));
    ck_assert(sl_client_id_valid("c-17"));
    ck_assert(sl_client_id_valid("a.b:c"));
    ck_assert(!sl_client_id_valid("a b"));
    ck_assert(!sl_client_id_valid("a*"));
    ck_assert(!sl_client_id_valid("a>"));
    ck_assert(!sl_client_id_valid(s65));
    ck_assert(!sl_client_id_valid(""));
}
END_TEST

START_TEST(test_channels)
{
    bool is_room = true;
    const char *room = "x";

    ck_assert_int_eq(sl_channel_parse("s", &is_room, &room), SL_OK);
    ck_assert(!is_room);
    ck_assert_int_eq(sl_channel_parse("r:lobby", &is_room, &room), SL_OK);
    ck_assert(is_room);
    ck_assert_str_eq(room, "lobby");
    ck_assert_int_eq(sl_channel_parse("r:", &is_room, &room), SL_ERR_INVAL);
    ck_assert_int_eq(sl_channel_parse("r:a.b", &is_room, &room), SL_ERR_INVAL);
    ck_assert_int_eq(sl_channel_parse("x:lobby", &is_room, &room), SL_ERR_INVAL);
    ck_assert_int_eq(sl_channel_parse("ss", &is_room, &room), SL_ERR_INVAL);
    ck_assert_int_eq(sl_channel_parse(NULL, &is_room, &room), SL_ERR_INVAL);
}
END_TEST

START_TEST(test_subjects)
{
    char b[SL_SUBJECT_MAX], tenant[SL_ID_MAX + 1], name[SL_ID_MAX + 1];
    bool is_room;

    ck_assert_int_eq(sl_subject_in(b, sizeof(b), "acme", "S1"), SL_OK);
    ck_assert_str_eq(b, "sluice.in.acme.S1");
    ck_assert_int_eq(sl_subject_work(b, sizeof(b), "default", "acme"), SL_OK);
    ck_assert_str_eq(b, "sluice.work.default.acme");
    ck_assert_int_eq(sl_subject_cancel(b, sizeof(b), "acme"), SL_OK);
    ck_assert_str_eq(b, "sluice.ctl.cancel.acme");
    ck_assert_int_eq(sl_subject_chan(b, sizeof(b), "sluice.out", "acme", true, "lobby"), SL_OK);
    ck_assert_str_eq(b, "sluice.out.acme.r.lobby");
    ck_assert_int_eq(sl_subject_chan(b, sizeof(b), "sluice.live", "acme", false, "S1"), SL_OK);
    ck_assert_str_eq(b, "sluice.live.acme.s.S1");
    /* Nothing invalid ever reaches a subject. */
    ck_assert_int_eq(sl_subject_in(b, sizeof(b), "ac.me", "S1"), SL_ERR_INVAL);
    ck_assert_int_eq(sl_subject_in(b, sizeof(b), "acme", ">"), SL_ERR_INVAL);
    ck_assert_int_eq(sl_subject_work(b, sizeof(b), "*", "acme"), SL_ERR_INVAL);
    ck_assert_int_eq(sl_subject_chan(b, sizeof(b), "sluice.other", "acme", true, "l"),
                     SL_ERR_INVAL);
    ck_assert_int_eq(sl_subject_chan(b, sizeof(b), "sluice.out", "acme", true, "a b"),
                     SL_ERR_INVAL);
    /* Too small a buffer fails instead of truncating. */
    ck_assert_int_eq(sl_subject_in(b, 10, "acme", "S1"), SL_ERR_INVAL);
    /* Round trip. */
    ck_assert_int_eq(sl_subject_chan_parse("sluice.out.acme.r.lobby", tenant, &is_room, name),
                     SL_OK);
    ck_assert_str_eq(tenant, "acme");
    ck_assert(is_room);
    ck_assert_str_eq(name, "lobby");
    ck_assert_int_eq(sl_subject_chan_parse("sluice.live.t.s.x", tenant, &is_room, name), SL_OK);
    ck_assert(!is_room);
    ck_assert_int_eq(sl_subject_chan_parse("sluice.out.acme.x.lobby", tenant, &is_room, name),
                     SL_ERR_INVAL);
    ck_assert_int_eq(sl_subject_chan_parse("sluice.out.acme.r.a.b", tenant, &is_room, name),
                     SL_ERR_INVAL);
    ck_assert_int_eq(sl_subject_chan_parse("sluice.out.acme.r", tenant, &is_room, name),
                     SL_ERR_INVAL);
    ck_assert_int_eq(sl_kv_key3(b, sizeof(b), "t", "s", "pos"), SL_OK);
    ck_assert_str_eq(b, "t.s.pos");
    ck_assert_int_eq(sl_kv_key2(b, sizeof(b), "t", "a.b"), SL_ERR_INVAL);
}
END_TEST

START_TEST(test_cancel_key)
{
    char a[SL_SUBJECT_MAX], b[SL_SUBJECT_MAX];

    ck_assert_int_eq(sl_cancel_key(a, sizeof(a), "acme", "S1", "c-1"), SL_OK);
    ck_assert_int_eq(sl_cancel_key(b, sizeof(b), "acme", "S1", "c-1"), SL_OK);
    ck_assert_str_eq(a, b);
    ck_assert_int_eq(strncmp(a, "acme.x-", 7), 0);
    ck_assert_int_eq(strlen(a), 7 + 40);
    ck_assert_int_eq(sl_cancel_key(b, sizeof(b), "acme", "S1", "c-2"), SL_OK);
    ck_assert_str_ne(a, b);
    ck_assert_int_eq(sl_cancel_key(b, sizeof(b), "acme", "S1", "c 1"), SL_ERR_INVAL);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("sl_subject");
    TCase *tc = tcase_create("core");
    SRunner *sr;
    int failed;

    tcase_add_test(tc, test_ids);
    tcase_add_test(tc, test_channels);
    tcase_add_test(tc, test_subjects);
    tcase_add_test(tc, test_cancel_key);
    suite_add_tcase(s, tc);
    sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? 0 : 1;
}
