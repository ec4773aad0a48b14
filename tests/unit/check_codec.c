/* Unit tests for the envelope codec and ids (common/sl_codec). */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "sl_codec.h"
#include "sl_subject.h"

START_TEST(test_round_trip)
{
    Sluice__Envelope e = SLUICE__ENVELOPE__INIT, *d = NULL;
    Sluice__Reply r = SLUICE__REPLY__INIT;
    uint8_t *buf = NULL;
    size_t len = 0;

    e.event_id = "01ABC";
    e.tenant = "acme";
    e.session = "S1";
    e.client_id = "c-1";
    e.message_id = "c-1";
    e.prev_event_id = "c-0";
    e.ts_unix_ns = 1234567890123LL;
    e.trace_id = "tr";
    e.hops = 2;
    r.reply_id = "J-0";
    r.to = "c-1";
    r.agent = "assistant";
    r.text = "h\xc3\xa9llo \"world\"";
    r.attempt = 3;
    r.partial = 1;
    e.body_case = SLUICE__ENVELOPE__BODY_REPLY;
    e.reply = &r;
    ck_assert_int_eq(sl_envelope_encode(&e, &buf, &len), SL_OK);
    ck_assert_uint_gt(len, 0);
    ck_assert_int_eq(sl_envelope_decode(buf, len, &d), SL_OK);
    ck_assert_str_eq(d->tenant, "acme");
    ck_assert_str_eq(d->prev_event_id, "c-0");
    ck_assert_int_eq(d->ts_unix_ns, 1234567890123LL);
    ck_assert_uint_eq(d->hops, 2);
    ck_assert_int_eq(d->body_case, SLUICE__ENVELOPE__BODY_REPLY);
    ck_assert_str_eq(d->reply->text, r.text);
    ck_assert_uint_eq(d->reply->attempt, 3);
    ck_assert(d->reply->partial);
    ck_assert(!d->reply->degraded);
    sl_envelope_free(d);
    /* Garbage is refused, not crashed on. */
    buf[0] = 0xff;
    ck_assert_int_eq(sl_envelope_decode(buf, len > 3 ? 3 : len, &d), SL_ERR_INVAL);
    free(buf);
    ck_assert_int_eq(sl_envelope_decode("\xff\xff\xff\xff", 4, &d), SL_ERR_INVAL);
    sl_envelope_free(NULL);
}
END_TEST

START_TEST(test_ids)
{
    char a[SL_EVENT_ID_LEN + 1], b[SL_EVENT_ID_LEN + 1], s[SL_SESSION_ID_LEN + 1];

    sl_event_id_new(a);
    sl_event_id_new(b);
    ck_assert_int_eq(strlen(a), SL_EVENT_ID_LEN);
    ck_assert_str_ne(a, b);
    ck_assert(sl_id_valid(a));
    /* Time-sortable: the first 10 characters encode milliseconds. */
    ck_assert_int_le(strncmp(a, b, 10), 0);
    sl_session_id_new(s);
    ck_assert_int_eq(strlen(s), SL_SESSION_ID_LEN);
    ck_assert(sl_id_valid(s));
}
END_TEST

int main(void)
{
    Suite *su = suite_create("sl_codec");
    TCase *tc = tcase_create("core");
    SRunner *sr;
    int failed;

    tcase_add_test(tc, test_round_trip);
    tcase_add_test(tc, test_ids);
    suite_add_tcase(su, tc);
    sr = srunner_create(su);
    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? 0 : 1;
}
