/* Unit tests for the gateway's client protocol module. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gw_outq.h"
#include "gw_protocol.h"

static sl_status parse(const char *s, gw_cmd *c, gw_err *e)
{
    return gw_cmd_parse(s, strlen(s), c, e);
}

START_TEST(test_parse_send)
{
    gw_cmd c;
    gw_err e;

    ck_assert_int_eq(parse("{\"type\":\"send\",\"id\":\"c-17\",\"room\":\"lobby\","
                           "\"text\":\"hi @summarizer\",\"prev\":\"c-16\"}",
                           &c, &e),
                     SL_OK);
    ck_assert_int_eq(c.type, GW_CMD_SEND);
    ck_assert_str_eq(c.id, "c-17");
    ck_assert_str_eq(c.room, "lobby");
    ck_assert_str_eq(c.text, "hi @summarizer");
    ck_assert_str_eq(c.prev, "c-16");
    gw_cmd_free(&c);

    ck_assert_int_eq(parse("{\"type\":\"send\",\"id\":\"a.b:c_d-1\",\"text\":\"\"}", &c, &e),
                     SL_OK);
    ck_assert_ptr_null(c.room);
    ck_assert_ptr_null(c.prev);
    gw_cmd_free(&c);
}
END_TEST

START_TEST(test_bad_frames)
{
    static const struct {
        const char *frame;
        const char *code;
    } cases[] = {
        {"not json", "bad_frame"},
        {"[1,2]", "bad_frame"},
        {"\"hello\"", "bad_frame"},
        {"{}", "bad_frame"},
        {"{\"type\":7}", "unknown_type"},
        {"{\"type\":\"teleport\"}", "unknown_type"},
        {"{\"type\":\"send\",\"text\":\"x\"}", "bad_id"},
        {"{\"type\":\"send\",\"id\":\"c 1\",\"text\":\"x\"}", "bad_id"},
        {"{\"type\":\"send\",\"id\":\"c*\",\"text\":\"x\"}", "bad_id"},
        {"{\"type\":\"send\",\"id\":\"c>\",\"text\":\"x\"}", "bad_id"},
        {"{\"type\":\"send\",\"id\":\"c\\u0001\",\"text\":\"x\"}", "bad_id"},
        {"{\"type\":\"send\",\"id\":\"c1\"}", "bad_frame"},
        {"{\"type\":\"send\",\"id\":\"c1\",\"text\":\"x\",\"room\":\"a.b\"}", "bad_id"},
        {"{\"type\":\"send\",\"id\":\"c1\",\"text\":\"x\",\"room\":\"*\"}", "bad_id"},
        {"{\"type\":\"send\",\"id\":\"c1\",\"text\":\"x\",\"room\":\">\"}", "bad_id"},
        {"{\"type\":\"send\",\"id\":\"c1\",\"text\":\"x\",\"room\":\"lob by\"}", "bad_id"},
        {"{\"type\":\"join\",\"room\":\"lobby.>\"}", "bad_id"},
        {"{\"type\":\"join\"}", "bad_id"},
        {"{\"type\":\"ack\",\"ch\":\"r:lobby\",\"seq\":-1}", "bad_frame"},
        {"{\"type\":\"ack\",\"ch\":\"r:lobby\",\"seq\":1.5}", "bad_frame"},
        {"{\"type\":\"ack\",\"ch\":\"x:lobby\",\"seq\":1}", "bad_id"},
        {"{\"type\":\"ack\",\"ch\":\"r:a*\",\"seq\":1}", "bad_id"},
        {"{\"type\":\"history\",\"ch\":\"s\",\"limit\":0}", "bad_frame"},
        {"{\"type\":\"history\",\"ch\":\"s\",\"limit\":1000}", "bad_frame"},
        {"{\"type\":\"hello\"}", "unauthorized"},
        {"{\"type\":\"hello\",\"token\":\"t\",\"resume\":{\"session\":\"a.b\",\"resume_token\":"
         "\"x\"}}",
         "unauthorized"},
        {"{\"type\":\"hello\",\"token\":\"t\",\"resume\":{\"session\":\"s1\",\"resume_token\":"
         "\"x\","
         "\"positions\":{\"r:a.b\":1}}}",
         "bad_id"},
        {"{\"type\":\"cancel\",\"id\":\"\"}", "bad_id"},
    };
    char longid[100];

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        gw_cmd c;
        gw_err e;
        ck_assert_msg(parse(cases[i].frame, &c, &e) == SL_ERR_INVAL, "accepted: %s",
                      cases[i].frame);
        ck_assert_msg(strcmp(e.code, cases[i].code) == 0, "%s: code %s, want %s", cases[i].frame,
                      e.code, cases[i].code);
    }
    memset(longid, 'a', 65);
    longid[65] = '\0';
    {
        char frame[256];
        gw_cmd c;
        gw_err e;
        snprintf(frame, sizeof(frame), "{\"type\":\"join\",\"room\":\"%s\"}", longid);
        ck_assert_int_eq(parse(frame, &c, &e), SL_ERR_INVAL);
        longid[64] = '\0';
        snprintf(frame, sizeof(frame), "{\"type\":\"join\",\"room\":\"%s\"}", longid);
        ck_assert_int_eq(parse(frame, &c, &e), SL_OK);
        gw_cmd_free(&c);
    }
}
END_TEST

START_TEST(test_parse_hello_resume)
{
    gw_cmd c;
    gw_err e;

    ck_assert_int_eq(parse("{\"type\":\"hello\",\"token\":\"abc\",\"resume\":{\"session\":\"S1\","
                           "\"resume_token\":\"rt\",\"positions\":{\"s\":41,\"r:lobby\":97}}}",
                           &c, &e),
                     SL_OK);
    ck_assert(c.resume);
    ck_assert(c.has_positions);
    ck_assert_int_eq(c.npositions, 2);
    ck_assert_str_eq(c.positions[0].ch, "s");
    ck_assert_int_eq(c.positions[0].seq, 41);
    ck_assert_str_eq(c.positions[1].ch, "r:lobby");
    ck_assert_int_eq(c.positions[1].seq, 97);
    gw_cmd_free(&c);
}
END_TEST

/* Up to GW_POSITIONS_MAX positions (every room of SLUICE_MAX_ROOMS at its
 * highest, and "s"); one more is refused. */
START_TEST(test_parse_many_positions)
{
    gw_cmd c;
    gw_err e;
    size_t cap = 64 + (GW_POSITIONS_MAX + 1) * 24;
    char *buf = malloc(cap), *p;

    for (int n = GW_POSITIONS_MAX; n <= GW_POSITIONS_MAX + 1; n++) {
        p = buf + sprintf(buf, "{\"type\":\"hello\",\"token\":\"t\",\"resume\":{\"session\":\"S1\","
                               "\"resume_token\":\"rt\",\"positions\":{\"s\":1");
        for (int i = 1; i < n; i++)
            p += sprintf(p, ",\"r:room-%d\":%d", i, i);
        strcpy(p, "}}}");
        if (n == GW_POSITIONS_MAX) {
            ck_assert_int_eq(parse(buf, &c, &e), SL_OK);
            ck_assert_int_eq(c.npositions, GW_POSITIONS_MAX);
            ck_assert_str_eq(c.positions[GW_POSITIONS_MAX - 1].ch, "r:room-1024");
            gw_cmd_free(&c);
        } else {
            ck_assert_int_ne(parse(buf, &c, &e), SL_OK);
            ck_assert_str_eq(e.code, "bad_frame");
        }
    }
    free(buf);
}
END_TEST

/* join, leave and history take an optional id, echoed in their errors. */
START_TEST(test_parse_optional_ids)
{
    gw_cmd c;
    gw_err e;

    ck_assert_int_eq(parse("{\"type\":\"join\",\"room\":\"lobby\",\"id\":\"j-1\"}", &c, &e), SL_OK);
    ck_assert_str_eq(c.id, "j-1");
    gw_cmd_free(&c);
    ck_assert_int_eq(parse("{\"type\":\"join\",\"room\":\"lobby\"}", &c, &e), SL_OK);
    ck_assert_ptr_null(c.id);
    gw_cmd_free(&c);
    ck_assert_int_eq(parse("{\"type\":\"history\",\"ch\":\"s\",\"id\":\"h-1\"}", &c, &e), SL_OK);
    ck_assert_str_eq(c.id, "h-1");
    gw_cmd_free(&c);
    ck_assert_int_ne(parse("{\"type\":\"join\",\"room\":\"lobby\",\"id\":\"a b\"}", &c, &e), SL_OK);
    ck_assert_str_eq(e.code, "bad_id");
    ck_assert_int_ne(parse("{\"type\":\"join\",\"room\":\"a.b\",\"id\":\"j-2\"}", &c, &e), SL_OK);
    ck_assert_str_eq(e.id, "j-2");
}
END_TEST

/* history pages say whether older events remain and where to go on. */
START_TEST(test_history_frame)
{
    char *ev[2] = {"{\"type\":\"event\",\"seq\":5}", "{\"type\":\"event\",\"seq\":9}"};
    char *s = gw_frame_history("r:lobby", ev, 2, true, 5, "h-1");
    cJSON *j = cJSON_Parse(s);

    ck_assert_ptr_nonnull(j);
    ck_assert_str_eq(cJSON_GetObjectItem(j, "type")->valuestring, "history");
    ck_assert_str_eq(cJSON_GetObjectItem(j, "ch")->valuestring, "r:lobby");
    ck_assert_str_eq(cJSON_GetObjectItem(j, "id")->valuestring, "h-1");
    ck_assert_int_eq(cJSON_GetArraySize(cJSON_GetObjectItem(j, "events")), 2);
    ck_assert(cJSON_IsTrue(cJSON_GetObjectItem(j, "more")));
    ck_assert_int_eq(cJSON_GetObjectItem(j, "next_before")->valueint, 5);
    cJSON_Delete(j);
    free(s);
    s = gw_frame_history("s", NULL, 0, false, 0, NULL);
    j = cJSON_Parse(s);
    ck_assert_ptr_nonnull(j);
    ck_assert_int_eq(cJSON_GetArraySize(cJSON_GetObjectItem(j, "events")), 0);
    ck_assert(cJSON_IsFalse(cJSON_GetObjectItem(j, "more")));
    ck_assert_ptr_null(cJSON_GetObjectItem(j, "next_before"));
    ck_assert_ptr_null(cJSON_GetObjectItem(j, "id"));
    cJSON_Delete(j);
    free(s);
}
END_TEST

START_TEST(test_event_frames)
{
    Sluice__Envelope e = SLUICE__ENVELOPE__INIT;
    Sluice__TokenChunk t = SLUICE__TOKEN_CHUNK__INIT;
    Sluice__Reply r = SLUICE__REPLY__INIT;
    Sluice__ClientMessage m = SLUICE__CLIENT_MESSAGE__INIT;
    cJSON *j;
    char *s;

    t.reply_id = "J-0";
    t.to = "c-1";
    t.agent = "assistant";
    t.attempt = 2;
    t.text = "he said \"hi\"";
    e.body_case = SLUICE__ENVELOPE__BODY_TOKEN;
    e.token = &t;
    s = gw_frame_event(&e, "r:lobby", 42);
    j = cJSON_Parse(s);
    ck_assert_str_eq(cJSON_GetObjectItem(j, "type")->valuestring, "event");
    ck_assert_str_eq(cJSON_GetObjectItem(j, "kind")->valuestring, "token");
    ck_assert_str_eq(cJSON_GetObjectItem(j, "ch")->valuestring, "r:lobby");
    ck_assert_int_eq(cJSON_GetObjectItem(j, "seq")->valueint, 42);
    ck_assert_int_eq(cJSON_GetObjectItem(j, "attempt")->valueint, 2);
    ck_assert_str_eq(cJSON_GetObjectItem(j, "text")->valuestring, "he said \"hi\"");
    cJSON_Delete(j);
    free(s);

    r.reply_id = "J-0";
    r.to = "c-1";
    r.agent = "assistant";
    r.text = "done";
    r.partial = 1;
    e.body_case = SLUICE__ENVELOPE__BODY_REPLY;
    e.reply = &r;
    s = gw_frame_event(&e, "s", 7);
    j = cJSON_Parse(s);
    ck_assert(cJSON_IsTrue(cJSON_GetObjectItem(j, "final")));
    ck_assert(cJSON_IsTrue(cJSON_GetObjectItem(j, "partial")));
    ck_assert_ptr_null(cJSON_GetObjectItem(j, "degraded"));
    /* A writer without usage: reported as an estimate of nothing. */
    cJSON *u = cJSON_GetObjectItem(j, "usage");
    ck_assert_int_eq(cJSON_GetObjectItem(u, "input_tokens")->valueint, 0);
    ck_assert_int_eq(cJSON_GetObjectItem(u, "output_tokens")->valueint, 0);
    ck_assert(cJSON_IsTrue(cJSON_GetObjectItem(u, "estimated")));
    cJSON_Delete(j);
    free(s);

    /* The model's own count: exact integers, no "estimated". */
    Sluice__Usage us = SLUICE__USAGE__INIT;
    us.input_tokens = 4000000000u;
    us.output_tokens = 17;
    r.usage = &us;
    s = gw_frame_event(&e, "s", 7);
    ck_assert_ptr_nonnull(
        strstr(s, "\"usage\":{\"input_tokens\":4000000000,\"output_tokens\":17}"));
    us.estimated = 1;
    free(s);
    s = gw_frame_event(&e, "s", 7);
    ck_assert_ptr_nonnull(strstr(
        s, "\"usage\":{\"input_tokens\":4000000000,\"output_tokens\":17,\"estimated\":true}"));
    free(s);
    r.usage = NULL;

    m.text = "x";
    m.agent = "summarizer";
    e.message_id = "a1";
    e.event_id = "E";
    e.body_case = SLUICE__ENVELOPE__BODY_MESSAGE;
    e.message = &m;
    s = gw_frame_event(&e, "s", 8);
    j = cJSON_Parse(s);
    ck_assert_str_eq(cJSON_GetObjectItem(cJSON_GetObjectItem(j, "from"), "agent")->valuestring,
                     "summarizer");
    cJSON_Delete(j);
    free(s);

    e.body_case = SLUICE__ENVELOPE__BODY__NOT_SET;
    ck_assert_ptr_null(gw_frame_event(&e, "s", 9));
}
END_TEST

START_TEST(test_outq_bounds)
{
    gw_outq q = {0};
    gw_buf *b = gw_buf_new("0123456789", 10);

    ck_assert(gw_outq_push(&q, b, 3, 25));
    ck_assert(gw_outq_push(&q, b, 3, 25));
    ck_assert(!gw_outq_push(&q, b, 3, 25)); /* bytes bound */
    ck_assert_int_eq(q.frames, 2);
    ck_assert_int_eq(q.bytes, 20);
    gw_outq_pop(&q);
    ck_assert(gw_outq_push(&q, b, 2, 1000));
    ck_assert(!gw_outq_push(&q, b, 2, 1000)); /* frames bound */
    ck_assert_int_eq(b->refs, 3);
    gw_outq_clear(&q);
    ck_assert_int_eq(b->refs, 1);
    gw_buf_unref(b);
}
END_TEST

/* A presence event with one change keeps the original shape; with several
 * (a coalescing gateway's), they are listed in order under changes. */
START_TEST(test_presence_frames)
{
    Sluice__Envelope e = SLUICE__ENVELOPE__INIT;
    Sluice__Presence p = SLUICE__PRESENCE__INIT;
    Sluice__PresenceChange c[2] = {SLUICE__PRESENCE_CHANGE__INIT, SLUICE__PRESENCE_CHANGE__INIT};
    Sluice__PresenceChange *cp[2] = {&c[0], &c[1]};
    char *s;

    p.action = "join";
    p.user = "alice";
    p.session = "s1";
    p.room = "lobby";
    e.body_case = SLUICE__ENVELOPE__BODY_PRESENCE;
    e.presence = &p;
    s = gw_frame_event(&e, "r:lobby", 9);
    ck_assert_str_eq(s, "{\"type\":\"event\",\"ch\":\"r:lobby\",\"seq\":9,\"kind\":\"presence\","
                        "\"action\":\"join\",\"user\":\"alice\",\"session\":\"s1\"}");
    free(s);
    p.action = p.user = p.session = "";
    c[0].action = "join";
    c[0].user = "bob";
    c[0].session = "s2";
    c[1].action = "leave";
    c[1].user = "alice";
    c[1].session = "s1";
    p.n_changes = 2;
    p.changes = cp;
    s = gw_frame_event(&e, "r:lobby", 10);
    ck_assert_str_eq(s, "{\"type\":\"event\",\"ch\":\"r:lobby\",\"seq\":10,\"kind\":\"presence\","
                        "\"changes\":[{\"action\":\"join\",\"user\":\"bob\",\"session\":\"s2\"},"
                        "{\"action\":\"leave\",\"user\":\"alice\",\"session\":\"s1\"}]}");
    free(s);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("gw_protocol");
    TCase *tc = tcase_create("core");
    SRunner *sr;
    int failed;

    tcase_add_test(tc, test_parse_send);
    tcase_add_test(tc, test_bad_frames);
    tcase_add_test(tc, test_parse_hello_resume);
    tcase_add_test(tc, test_parse_many_positions);
    tcase_add_test(tc, test_parse_optional_ids);
    tcase_add_test(tc, test_event_frames);
    tcase_add_test(tc, test_presence_frames);
    tcase_add_test(tc, test_history_frame);
    tcase_add_test(tc, test_outq_bounds);
    suite_add_tcase(s, tc);
    sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? 0 : 1;
}
