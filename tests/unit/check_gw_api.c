/* Unit tests for the server API's routing and request parsing
 * (gateway/gw_api_parse.c): what is accepted, what is a 400/404/405, and that a
 * refused request leaves nothing to free. */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "gw_api.h"

static int body(gw_api_op op, const char *b, gw_api_req *r)
{
    char msg[160] = "";
    int code = gw_api_parse_body(op, b, b != NULL ? strlen(b) : 0, r, msg, sizeof(msg));

    if (code != 200) {
        ck_assert_msg(msg[0] != '\0', "no message for a %d", code);
        ck_assert_ptr_null(r->text);
    }
    return code;
}

START_TEST(test_route)
{
    gw_api_op op;

    ck_assert_int_eq(gw_api_route("/v1/api/publish", "POST", &op), 200);
    ck_assert_int_eq(op, GW_API_PUBLISH);
    ck_assert_int_eq(gw_api_route("/v1/api/disconnect", "POST", &op), 200);
    ck_assert_int_eq(op, GW_API_DISCONNECT);
    ck_assert_int_eq(gw_api_route("/v1/api/presence", "GET", &op), 200);
    ck_assert_int_eq(op, GW_API_PRESENCE);
    ck_assert_int_eq(gw_api_route("/v1/api/history", "GET", &op), 200);
    ck_assert_int_eq(op, GW_API_HISTORY);
    ck_assert_int_eq(gw_api_route("/v1/api/publish", "GET", &op), 405);
    ck_assert_int_eq(op, GW_API_NONE);
    ck_assert_int_eq(gw_api_route("/v1/api/history", "POST", &op), 405);
    ck_assert_int_eq(gw_api_route("/v1/api/presence", "DELETE", &op), 405);
    ck_assert_int_eq(gw_api_route("/v1/api", "GET", &op), 404);
    ck_assert_int_eq(gw_api_route("/v1/api/", "GET", &op), 404);
    ck_assert_int_eq(gw_api_route("/v1/api/publish/", "POST", &op), 404);
    ck_assert_int_eq(gw_api_route("/v1/api/Publish", "POST", &op), 404);
    ck_assert_int_eq(gw_api_route(NULL, "GET", &op), 404);
}
END_TEST

START_TEST(test_publish)
{
    gw_api_req r;

    ck_assert_int_eq(
        body(GW_API_PUBLISH,
             "{\"room\":\"news\",\"text\":\"deploy finished\",\"from\":\"release-bot\","
             "\"id\":\"srv-1\",\"agents\":false}",
             &r),
        200);
    ck_assert_str_eq(r.room, "news");
    ck_assert_str_eq(r.text, "deploy finished");
    ck_assert_str_eq(r.user, "release-bot");
    ck_assert_str_eq(r.id, "srv-1");
    ck_assert(!r.agents);
    gw_api_req_clear(&r);
    ck_assert_ptr_null(r.text);

    /* agents defaults to true; unknown members are ignored; text may be empty. */
    ck_assert_int_eq(body(GW_API_PUBLISH,
                          " {\"room\":\"n\",\"text\":\"\",\"from\":\"Zo\xC3\xAB\",\"id\":\"a:b.c\","
                          "\"x\":[1]}\n",
                          &r),
                     200);
    ck_assert(r.agents);
    ck_assert_str_eq(r.user, "Zo\xC3\xAB");
    gw_api_req_clear(&r);
    ck_assert_int_eq(
        body(GW_API_PUBLISH,
             "{\"room\":\"n\",\"text\":\"t\",\"from\":\"u\",\"id\":\"i\",\"agents\":true}", &r),
        200);
    ck_assert(r.agents);
    gw_api_req_clear(&r);
}
END_TEST

START_TEST(test_publish_refused)
{
    static const char *const bad[] = {
        "",
        "null",
        "[]",
        "\"x\"",
        "{",
        "{}",
        "{\"room\":\"news\",\"text\":\"t\",\"from\":\"u\",\"id\":\"i\"} {}",
        "{\"room\":\"news\",\"text\":\"t\",\"from\":\"u\",\"id\":\"i\"}x",
        /* room */
        "{\"text\":\"t\",\"from\":\"u\",\"id\":\"i\"}",
        "{\"room\":\"a.b\",\"text\":\"t\",\"from\":\"u\",\"id\":\"i\"}",
        "{\"room\":\"a*\",\"text\":\"t\",\"from\":\"u\",\"id\":\"i\"}",
        "{\"room\":\">\",\"text\":\"t\",\"from\":\"u\",\"id\":\"i\"}",
        "{\"room\":\"\",\"text\":\"t\",\"from\":\"u\",\"id\":\"i\"}",
        "{\"room\":7,\"text\":\"t\",\"from\":\"u\",\"id\":\"i\"}",
        "{\"room\":\"a\\u0000b\",\"text\":\"t\",\"from\":\"u\",\"id\":\"i\"}",
        /* id */
        "{\"room\":\"n\",\"text\":\"t\",\"from\":\"u\"}",
        "{\"room\":\"n\",\"text\":\"t\",\"from\":\"u\",\"id\":\"a b\"}",
        "{\"room\":\"n\",\"text\":\"t\",\"from\":\"u\",\"id\":\"\"}",
        /* from */
        "{\"room\":\"n\",\"text\":\"t\",\"id\":\"i\"}",
        "{\"room\":\"n\",\"text\":\"t\",\"from\":\"\",\"id\":\"i\"}",
        "{\"room\":\"n\",\"text\":\"t\",\"from\":\"a\\nb\",\"id\":\"i\"}",
        "{\"room\":\"n\",\"text\":\"t\",\"from\":null,\"id\":\"i\"}",
        /* text */
        "{\"room\":\"n\",\"from\":\"u\",\"id\":\"i\"}",
        "{\"room\":\"n\",\"text\":null,\"from\":\"u\",\"id\":\"i\"}",
        "{\"room\":\"n\",\"text\":\"a\\u0000\",\"from\":\"u\",\"id\":\"i\"}",
        "{\"room\":\"n\",\"text\":\"\xff\",\"from\":\"u\",\"id\":\"i\"}",
        /* agents */
        "{\"room\":\"n\",\"text\":\"t\",\"from\":\"u\",\"id\":\"i\",\"agents\":0}",
        "{\"room\":\"n\",\"text\":\"t\",\"from\":\"u\",\"id\":\"i\",\"agents\":\"false\"}",
        "{\"room\":\"n\",\"text\":\"t\",\"from\":\"u\",\"id\":\"i\",\"agents\":null}",
    };
    gw_api_req r;
    char *huge;

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        ck_assert_msg(body(GW_API_PUBLISH, bad[i], &r) == 400, "accepted: %s", bad[i]);
    ck_assert_int_eq(body(GW_API_PUBLISH, NULL, &r), 400);
    huge = malloc(GW_API_BODY_MAX + 2);
    ck_assert_ptr_nonnull(huge);
    memset(huge, ' ', GW_API_BODY_MAX + 1);
    huge[GW_API_BODY_MAX + 1] = '\0';
    ck_assert_int_eq(body(GW_API_PUBLISH, huge, &r), 400);
    free(huge);
}
END_TEST

START_TEST(test_disconnect)
{
    gw_api_req r;

    ck_assert_int_eq(body(GW_API_DISCONNECT, "{\"user\":\"alice\"}", &r), 200);
    ck_assert_str_eq(r.user, "alice");
    gw_api_req_clear(&r);
    ck_assert_int_eq(body(GW_API_DISCONNECT, "{\"user\":\"\"}", &r), 400);
    ck_assert_int_eq(body(GW_API_DISCONNECT, "{\"user\":1}", &r), 400);
    ck_assert_int_eq(body(GW_API_DISCONNECT, "{\"sub\":\"alice\"}", &r), 400);
    ck_assert_int_eq(body(GW_API_DISCONNECT, "{\"user\":\"a\\u0001\"}", &r), 400);
    ck_assert_int_eq(body(GW_API_PRESENCE, "{\"room\":\"news\"}", &r), 400);
}
END_TEST

START_TEST(test_query)
{
    gw_api_req r;
    char msg[160];

    ck_assert_int_eq(
        gw_api_parse_query(GW_API_PRESENCE, "news", NULL, NULL, NULL, &r, msg, sizeof(msg)), 200);
    ck_assert_str_eq(r.room, "news");
    ck_assert_int_eq(
        gw_api_parse_query(GW_API_PRESENCE, NULL, NULL, NULL, NULL, &r, msg, sizeof(msg)), 400);
    ck_assert_int_eq(
        gw_api_parse_query(GW_API_PRESENCE, "a.b", NULL, NULL, NULL, &r, msg, sizeof(msg)), 400);

    ck_assert_int_eq(
        gw_api_parse_query(GW_API_HISTORY, NULL, "r:news", NULL, NULL, &r, msg, sizeof(msg)), 200);
    ck_assert_str_eq(r.ch, "r:news");
    ck_assert_str_eq(r.room, "news");
    ck_assert_int_eq(r.limit, 50);
    ck_assert_int_eq(r.before, 0);
    ck_assert_int_eq(
        gw_api_parse_query(GW_API_HISTORY, NULL, "r:news", "200", "97", &r, msg, sizeof(msg)), 200);
    ck_assert_int_eq(r.limit, 200);
    ck_assert_int_eq(r.before, 97);
    {
        static const char *const chs[] = {"s", "r:", "r:a.b", "r:*", "x:news", "news"};
        for (size_t i = 0; i < sizeof(chs) / sizeof(chs[0]); i++)
            ck_assert_msg(gw_api_parse_query(GW_API_HISTORY, NULL, chs[i], NULL, NULL, &r, msg,
                                             sizeof(msg)) == 400,
                          "accepted ch %s", chs[i]);
    }
    {
        static const char *const limits[] = {"0", "201", "-1", "1x", "", "+5", " 5", "1.5"};
        for (size_t i = 0; i < sizeof(limits) / sizeof(limits[0]); i++)
            ck_assert_msg(gw_api_parse_query(GW_API_HISTORY, NULL, "r:n", limits[i], NULL, &r, msg,
                                             sizeof(msg)) == 400,
                          "accepted limit '%s'", limits[i]);
    }
    ck_assert_int_eq(
        gw_api_parse_query(GW_API_HISTORY, NULL, "r:n", NULL, "0", &r, msg, sizeof(msg)), 400);
    ck_assert_int_eq(gw_api_parse_query(GW_API_HISTORY, NULL, "r:n", NULL, "99999999999999999999",
                                        &r, msg, sizeof(msg)),
                     400);
    ck_assert_int_eq(
        gw_api_parse_query(GW_API_PUBLISH, "n", NULL, NULL, NULL, &r, msg, sizeof(msg)), 400);
}
END_TEST

START_TEST(test_error_body)
{
    char *b = gw_api_error_body("bad_request", "room \"x\" is bad");

    ck_assert_ptr_nonnull(b);
    ck_assert_str_eq(b, "{\"error\":\"bad_request\",\"message\":\"room \\\"x\\\" is bad\"}");
    free(b);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("gw_api");
    TCase *tc = tcase_create("parse");
    SRunner *sr;
    int failed;

    tcase_add_test(tc, test_route);
    tcase_add_test(tc, test_publish);
    tcase_add_test(tc, test_publish_refused);
    tcase_add_test(tc, test_disconnect);
    tcase_add_test(tc, test_query);
    tcase_add_test(tc, test_error_body);
    suite_add_tcase(s, tc);
    sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? 0 : 1;
}
