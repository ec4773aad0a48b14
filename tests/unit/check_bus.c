/* Unit tests for the cnats status mapping (common/sl_bus). */
#include <check.h>

#include "sl_bus.h"

START_TEST(test_from_nats)
{
    ck_assert_int_eq(sl_status_from_nats(NATS_OK), SL_OK);
    ck_assert_int_eq(sl_status_from_nats(NATS_TIMEOUT), SL_ERR_TIMEOUT);
    ck_assert_int_eq(sl_status_from_nats(NATS_NOT_FOUND), SL_ERR_NOTFOUND);
    ck_assert_int_eq(sl_status_from_nats(NATS_NO_MEMORY), SL_ERR_NOMEM);
    ck_assert_int_eq(sl_status_from_nats(NATS_INVALID_ARG), SL_ERR_INVAL);
    ck_assert_int_eq(sl_status_from_nats(NATS_CONNECTION_CLOSED), SL_ERR_CLOSED);
    ck_assert_int_eq(sl_status_from_nats(NATS_DRAINING), SL_ERR_CLOSED);
    ck_assert_int_eq(sl_status_from_nats(NATS_ERR), SL_ERR_BUS);
    ck_assert_int_eq(sl_status_from_nats(NATS_NO_RESPONDERS), SL_ERR_BUS);
}
END_TEST

START_TEST(test_from_nats_failure)
{
    ck_assert_int_eq(sl_status_from_nats_failure(NATS_OK), SL_OK);
    ck_assert_int_eq(sl_status_from_nats_failure(NATS_TIMEOUT), SL_ERR_TIMEOUT);
    ck_assert_int_eq(sl_status_from_nats_failure(NATS_NOT_FOUND), SL_ERR_BUS);
    ck_assert_int_eq(sl_status_from_nats_failure(NATS_NO_MEMORY), SL_ERR_BUS);
    ck_assert_int_eq(sl_status_from_nats_failure(NATS_CONNECTION_CLOSED), SL_ERR_BUS);
    ck_assert_int_eq(sl_status_from_nats_failure(NATS_ERR), SL_ERR_BUS);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("sl_bus");
    TCase *tc = tcase_create("core");
    SRunner *sr;
    int failed;

    tcase_add_test(tc, test_from_nats);
    tcase_add_test(tc, test_from_nats_failure);
    suite_add_tcase(s, tc);
    sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? 0 : 1;
}
