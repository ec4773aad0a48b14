/* Bad input to sluice-gateway (issue 3, shared/PROTOCOL.md "Transport" and
 * "Close codes"): framing faults, malformed frames, bad ids, bad tokens and
 * resume tokens, frames before hello, no hello. Each test runs a gateway on
 * a real nats-server with no orchestrator or worker, so SLUICE_IN and
 * SLUICE_OUT only ever hold what the gateway itself published: every test
 * counts both streams before and after the bad input (nothing may reach
 * NATS), and ends by proving the gateway still serves a fresh client. */
#include <openssl/evp.h>
#include <time.h>

#include "test_gateway_fx.h"

#define MAX_FRAME 1024

typedef struct counts {
    uint64_t in, out;
} counts;

static counts nats_counts(fx *f)
{
    counts c = {fx_stream_msgs(f, SL_STREAM_IN, NULL), fx_stream_msgs(f, SL_STREAM_OUT, NULL)};
    return c;
}

static void assert_nothing_published(fx *f, counts before)
{
    counts now = nats_counts(f);
    HX_ASSERT_MSG(f->s, now.in == before.in && now.out == before.out,
                  "bad input reached NATS: SLUICE_IN %llu -> %llu, SLUICE_OUT %llu -> %llu",
                  (unsigned long long)before.in, (unsigned long long)now.in,
                  (unsigned long long)before.out, (unsigned long long)now.out);
}

static void start(fx *f, const char *const *gw_env)
{
    fx_opts o = {.gateways = 1, .gw_env = gw_env};
    fx_start(f, &o);
}

static void start_default(fx *f)
{
    static const char *const env[] = {"SLUICE_MAX_FRAME=1024", NULL};
    start(f, env);
}

/* A send that is accepted proves the counters can see a publish: the
 * checks above would be worthless if they could not move. */
static void control_send_counts(fx *f, hx_ws *ws, const char *id)
{
    counts before = nats_counts(f);
    cJSON *a;

    HX_OK(f->s, hx_ws_sendf(ws, "{\"type\":\"send\",\"id\":\"%s\",\"text\":\"fine\"}", id));
    a = hx_ws_expect(ws, "{\"type\":\"accepted\"}", 15000);
    HX_ASSERT_MSG(f->s, a != NULL, "control send not accepted: %s", hx_error());
    HX_ASSERT(f->s, strcmp(hx_json_str(a, "id"), id) == 0);
    cJSON_Delete(a);
    HX_ASSERT(f->s, fx_stream_msgs(f, SL_STREAM_IN, NULL) == before.in + 1);
}

/* ---- framing faults: error, then the close code ---- */

START_TEST(test_binary_frame_closes_1003)
{
    fx f;
    hx_ws *ws;
    counts before;
    const char bin[] = "{\"type\":\"send\",\"id\":\"b-1\",\"text\":\"binary\"}";

    start_default(&f);
    ws = fx_raw_hello(&f, 0, "acme", "alice");
    before = nats_counts(&f);
    HX_OK(f.s, hx_ws_send_frame(ws, HX_WS_OP_BINARY, bin, strlen(bin), true));
    fx_expect_error_close(&f, ws, "bad_frame", 1003);
    assert_nothing_published(&f, before);
    hx_ws_destroy(ws);
    fx_check_serves(&f, 0);
    fx_stop(&f);
}
END_TEST

START_TEST(test_invalid_utf8_closes_1007)
{
    fx f;
    hx_ws *ws;
    counts before;
    /* A valid send whose text holds an invalid sequence (C3 28), then one
     * with a lone surrogate (ED A0 80), each on its own connection. */
    const char *bad[] = {"{\"type\":\"send\",\"id\":\"u-1\",\"text\":\"a\xc3\x28z\"}",
                         "{\"type\":\"send\",\"id\":\"u-2\",\"text\":\"\xed\xa0\x80\"}"};

    start_default(&f);
    for (int i = 0; i < 2; i++) {
        ws = fx_raw_hello(&f, 0, "acme", "alice");
        before = nats_counts(&f);
        HX_OK(f.s, hx_ws_send_frame(ws, HX_WS_OP_TEXT, bad[i], strlen(bad[i]), true));
        fx_expect_error_close(&f, ws, "bad_frame", 1007);
        assert_nothing_published(&f, before);
        hx_ws_destroy(ws);
    }
    fx_check_serves(&f, 0);
    fx_stop(&f);
}
END_TEST

static char *send_of_size(const char *id, size_t total)
{
    const char *head = "{\"type\":\"send\",\"id\":\"";
    size_t fixed = strlen(head) + strlen(id) + strlen("\",\"text\":\"\"}");
    char *text, *out;

    ck_assert_uint_gt(total, fixed);
    text = malloc(total - fixed + 1);
    ck_assert_ptr_nonnull(text);
    memset(text, 'x', total - fixed);
    text[total - fixed] = '\0';
    out = hx_strf("%s%s\",\"text\":\"%s\"}", head, id, text);
    free(text);
    ck_assert_uint_eq(strlen(out), total);
    return out;
}

START_TEST(test_oversize_frame_closes_1009)
{
    fx f;
    hx_ws *ws;
    counts before;
    char *big = send_of_size("o-1", MAX_FRAME + 1), *fits = send_of_size("o-ok", MAX_FRAME);
    size_t half = (MAX_FRAME + 200) / 2;
    char *frag = send_of_size("o-2", MAX_FRAME + 200);

    start_default(&f);
    ws = fx_raw_hello(&f, 0, "acme", "alice");
    /* Exactly at the limit is fine. */
    before = nats_counts(&f);
    HX_OK(f.s, hx_ws_send_text(ws, fits));
    {
        cJSON *a = hx_ws_expect(ws, "{\"type\":\"accepted\",\"id\":\"o-ok\"}", 15000);
        HX_ASSERT_MSG(f.s, a != NULL, "a frame of exactly SLUICE_MAX_FRAME bytes was refused: %s",
                      hx_error());
        cJSON_Delete(a);
    }
    HX_ASSERT(f.s, fx_stream_msgs(&f, SL_STREAM_IN, NULL) == before.in + 1);
    /* One byte over. */
    before = nats_counts(&f);
    HX_OK(f.s, hx_ws_send_text(ws, big));
    fx_expect_error_close(&f, ws, "too_large", 1009);
    assert_nothing_published(&f, before);
    hx_ws_destroy(ws);

    /* Over the limit only when the fragments are added up. */
    ws = fx_raw_hello(&f, 0, "acme", "alice");
    before = nats_counts(&f);
    HX_OK(f.s, hx_ws_send_frame(ws, HX_WS_OP_TEXT, frag, half, false));
    HX_OK(f.s, hx_ws_send_frame(ws, HX_WS_OP_CONT, frag + half, strlen(frag) - half, true));
    fx_expect_error_close(&f, ws, "too_large", 1009);
    assert_nothing_published(&f, before);
    hx_ws_destroy(ws);

    free(big);
    free(fits);
    free(frag);
    fx_check_serves(&f, 0);
    fx_stop(&f);
}
END_TEST

/* ---- malformed frames: error, the connection stays open ---- */

START_TEST(test_invalid_json_and_non_object)
{
    fx f;
    hx_ws *ws;
    counts before;
    const char *bad[] = {
        "{\"type\":\"send\",\"id\":\"j-1\",\"text\":",  /* truncated */
        "{type:send}",                                /* not JSON */
        "",                                           /* empty */
        "[{\"type\":\"send\",\"id\":\"j-2\",\"text\":\"x\"}]", /* an array */
        "\"send\"",                                   /* a string */
        "42",                                         /* a number */
        "null",                                       /* null */
        "{}",                                         /* no type */
        "{\"type\":\"send\",\"id\":\"j-3\",\"text\":\"x\"} trailing", /* garbage after */
    };
    size_t n = sizeof(bad) / sizeof(bad[0]);

    start_default(&f);
    ws = fx_raw_hello(&f, 0, "acme", "alice");
    before = nats_counts(&f);
    for (size_t i = 0; i < n; i++) {
        cJSON *e;
        HX_OK(f.s, hx_ws_send_frame(ws, HX_WS_OP_TEXT, bad[i], strlen(bad[i]), true));
        e = fx_expect_error(&f, ws, "bad_frame");
        cJSON_Delete(e);
        fx_ping(&f, ws); /* still open and answering */
    }
    assert_nothing_published(&f, before);
    HX_ASSERT(f.s, fx_backlog_count(ws, "accepted", NULL) == 0);
    control_send_counts(&f, ws, "j-ok");
    hx_ws_destroy(ws);
    fx_check_serves(&f, 0);
    fx_stop(&f);
}
END_TEST

START_TEST(test_unknown_type)
{
    fx f;
    hx_ws *ws;
    counts before;
    const char *bad[] = {
        "{\"type\":\"sned\",\"id\":\"k-1\",\"text\":\"x\"}",
        "{\"type\":\"SEND\",\"id\":\"k-2\",\"text\":\"x\"}",
        "{\"type\":\"\"}",
        "{\"type\":7}",
        "{\"type\":\"welcome\"}",
    };

    start_default(&f);
    ws = fx_raw_hello(&f, 0, "acme", "alice");
    before = nats_counts(&f);
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        cJSON *e;
        HX_OK(f.s, hx_ws_send_text(ws, bad[i]));
        e = fx_expect_error(&f, ws, "unknown_type");
        cJSON_Delete(e);
    }
    fx_ping(&f, ws);
    assert_nothing_published(&f, before);
    control_send_counts(&f, ws, "k-ok");
    hx_ws_destroy(ws);
    fx_check_serves(&f, 0);
    fx_stop(&f);
}
END_TEST

/* ---- ids and room names ---- */

START_TEST(test_bad_ids_and_rooms)
{
    fx f;
    hx_ws *ws;
    counts before;
    char long_id[80], ok_id[80], long_room[80], ok_room[80];
    /* Message ids allow [A-Za-z0-9_.:-]; room ids [A-Za-z0-9_-]; both 1..64.
     * JSON escapes carry the control characters. */
    const char *bad_ids[] = {"a*b", "a>b", "a b", "a\\u0001b", "a\\tb", "a\\u007f", "", "é",
                             "a/b", long_id};
    const char *bad_rooms[] = {"a.b", "a*", ">", "lob by", "a\\nb", "a\\u001fb", "", "a:b",
                               "sluice.>", long_room};
    size_t nids = sizeof(bad_ids) / sizeof(bad_ids[0]);
    size_t nrooms = sizeof(bad_rooms) / sizeof(bad_rooms[0]);
    int nerr = 0;

    memset(long_id, 'i', 65);
    long_id[65] = '\0';
    memset(ok_id, 'i', 64);
    memcpy(ok_id, "c.1:x_", 6);
    ok_id[64] = '\0';
    memset(long_room, 'r', 65);
    long_room[65] = '\0';
    memset(ok_room, 'r', 64);
    ok_room[64] = '\0';

    start_default(&f);
    ws = fx_raw_hello(&f, 0, "acme", "alice");
    before = nats_counts(&f);
    for (size_t i = 0; i < nids; i++) {
        HX_OK(f.s, hx_ws_sendf(ws, "{\"type\":\"send\",\"id\":\"%s\",\"text\":\"x\"}", bad_ids[i]));
        HX_OK(f.s, hx_ws_sendf(ws, "{\"type\":\"cancel\",\"id\":\"%s\"}", bad_ids[i]));
        HX_OK(f.s, hx_ws_sendf(ws, "{\"type\":\"send\",\"id\":\"ok-%zu\",\"prev\":\"%s\","
                                   "\"text\":\"x\"}",
                               i, bad_ids[i]));
        nerr += 3;
    }
    for (size_t i = 0; i < nrooms; i++) {
        HX_OK(f.s, hx_ws_sendf(ws, "{\"type\":\"join\",\"room\":\"%s\"}", bad_rooms[i]));
        HX_OK(f.s, hx_ws_sendf(ws, "{\"type\":\"leave\",\"room\":\"%s\"}", bad_rooms[i]));
        HX_OK(f.s, hx_ws_sendf(ws, "{\"type\":\"send\",\"id\":\"r-%zu\",\"room\":\"%s\","
                                   "\"text\":\"x\"}",
                               i, bad_rooms[i]));
        HX_OK(f.s, hx_ws_sendf(ws, "{\"type\":\"ack\",\"ch\":\"r:%s\",\"seq\":1}", bad_rooms[i]));
        HX_OK(f.s, hx_ws_sendf(ws, "{\"type\":\"history\",\"ch\":\"r:%s\"}", bad_rooms[i]));
        nerr += 5;
        /* The token bucket (default burst 40) must not turn these into busy:
         * drain the answers as we go. */
        for (int k = 0; k < 5; k++) {
            cJSON *e = fx_expect_error(&f, ws, "bad_id");
            cJSON_Delete(e);
            nerr--;
        }
        fx_ping(&f, ws);
    }
    for (; nerr > 0; nerr--) {
        cJSON *e = fx_expect_error(&f, ws, "bad_id");
        cJSON_Delete(e);
    }
    fx_ping(&f, ws);
    HX_ASSERT(f.s, fx_backlog_count(ws, "accepted", NULL) == 0);
    HX_ASSERT(f.s, fx_backlog_count(ws, "joined", NULL) == 0);
    HX_ASSERT(f.s, fx_backlog_count(ws, "busy", NULL) == 0);
    assert_nothing_published(&f, before);

    /* An escaped NUL would cut the string short ("a\u0000.b" reads as "a"
     * in C): the frame is refused as a whole. */
    {
        const char *nul[] = {
            "{\"type\":\"join\",\"room\":\"a\\u0000.b\"}",
            "{\"type\":\"send\",\"id\":\"n-1\\u0000*\",\"text\":\"x\"}",
            "{\"type\":\"send\",\"id\":\"n-2\",\"text\":\"cut\\u0000here\"}",
        };
        for (size_t i = 0; i < sizeof(nul) / sizeof(nul[0]); i++) {
            cJSON *e;
            HX_OK(f.s, hx_ws_send_text(ws, nul[i]));
            e = fx_expect_error(&f, ws, "bad_frame");
            cJSON_Delete(e);
        }
        fx_ping(&f, ws);
        HX_ASSERT(f.s, fx_backlog_count(ws, "accepted", NULL) == 0);
        HX_ASSERT(f.s, fx_backlog_count(ws, "joined", NULL) == 0);
    }
    assert_nothing_published(&f, before);

    /* The longest valid id (with '.' and ':', which ids allow) and room. */
    control_send_counts(&f, ws, ok_id);
    {
        cJSON *j = NULL;
        HX_OK(f.s, hx_ws_sendf(ws, "{\"type\":\"join\",\"room\":\"%s\"}", ok_room));
        j = hx_ws_expect_type(ws, "joined", 15000);
        HX_ASSERT_MSG(f.s, j != NULL && strcmp(hx_json_str(j, "room"), ok_room) == 0,
                      "a 64-char room was not joined: %s", hx_error());
        cJSON_Delete(j);
    }
    hx_ws_destroy(ws);
    fx_check_serves(&f, 0);
    fx_stop(&f);
}
END_TEST

/* ---- tokens ---- */

static char *b64url(const void *data, size_t len)
{
    char *out = malloc(4 * ((len + 2) / 3) + 1);
    int n;

    ck_assert_ptr_nonnull(out);
    n = EVP_EncodeBlock((unsigned char *)out, data, (int)len);
    for (int i = 0; i < n; i++) {
        if (out[i] == '+')
            out[i] = '-';
        else if (out[i] == '/')
            out[i] = '_';
    }
    while (n > 0 && out[n - 1] == '=')
        n--;
    out[n] = '\0';
    return out;
}

static char *alg_none_token(const char *alg, const char *tenant, const char *sub)
{
    char *hj = hx_strf("{\"alg\":\"%s\",\"typ\":\"JWT\"}", alg);
    char *pj = hx_strf("{\"sub\":\"%s\",\"tenant\":\"%s\",\"exp\":%lld}", sub, tenant,
                       (long long)time(NULL) + 600);
    char *h = b64url(hj, strlen(hj)), *p = b64url(pj, strlen(pj));
    char *tok = hx_strf("%s.%s.", h, p);

    free(hj);
    free(pj);
    free(h);
    free(p);
    return tok;
}

/* hello with token on a fresh connection must be refused with 4401. */
static void expect_hello_refused(fx *f, const char *token, const char *resume_json)
{
    hx_ws *ws = fx_raw(f, 0);
    cJSON *hello = cJSON_CreateObject();

    cJSON_AddStringToObject(hello, "type", "hello");
    cJSON_AddStringToObject(hello, "token", token);
    if (resume_json != NULL)
        cJSON_AddItemToObject(hello, "resume", cJSON_Parse(resume_json));
    HX_OK(f->s, hx_ws_send_json(ws, hello));
    cJSON_Delete(hello);
    fx_expect_error_close(f, ws, "unauthorized", 4401);
    HX_ASSERT(f->s, fx_backlog_count(ws, "welcome", NULL) == 0);
    hx_ws_destroy(ws);
}

START_TEST(test_bad_tokens_close_4401)
{
    fx f;
    counts before;
    char *expired, *forged, *none1, *none2, *none3, *tampered;

    start_default(&f);
    expired = hx_token(f.s, "acme", "alice", -5);
    forged = hx_token_secret("this-is-not-the-stack-secret-0123", "acme", "alice", 600, NULL, -1);
    none1 = alg_none_token("none", "acme", "alice");
    none2 = alg_none_token("None", "acme", "alice");
    none3 = alg_none_token("NONE", "acme", "alice");
    {
        /* A valid token with its payload swapped for another tenant's. */
        char *good = hx_token(f.s, "acme", "alice", 600);
        char *other = hx_token(f.s, "globex", "alice", 600);
        char *gdot = strchr(good, '.'), *odot = strchr(other, '.');
        char *gsig = strrchr(good, '.'), *osig = strrchr(other, '.');
        HX_ASSERT(f.s, gdot && odot && gsig && osig);
        *osig = '\0';
        *gdot = '\0';
        tampered = hx_strf("%s.%s%s", good, odot + 1, gsig);
        free(good);
        free(other);
    }
    HX_ASSERT(f.s, expired && forged);
    before = nats_counts(&f);
    expect_hello_refused(&f, expired, NULL);
    expect_hello_refused(&f, forged, NULL);
    expect_hello_refused(&f, none1, NULL);
    expect_hello_refused(&f, none2, NULL);
    expect_hello_refused(&f, none3, NULL);
    expect_hello_refused(&f, tampered, NULL);
    expect_hello_refused(&f, "not-a-jwt", NULL);
    expect_hello_refused(&f, "", NULL);
    assert_nothing_published(&f, before);
    free(expired);
    free(forged);
    free(none1);
    free(none2);
    free(none3);
    free(tampered);
    fx_check_serves(&f, 0);
    fx_stop(&f);
}
END_TEST

START_TEST(test_foreign_resume_tokens_close_4401)
{
    fx f;
    hx_sl_client *a, *a2, *g;
    char *resume;
    counts before;

    start_default(&f);
    a = fx_client(&f, 0, "acme", "alice");
    a2 = fx_client(&f, 0, "acme", "alice");
    g = fx_client(&f, 0, "globex", "alice");
    before = nats_counts(&f);

    /* acme's session and resume token presented with a globex token. */
    resume = hx_strf("{\"session\":\"%s\",\"resume_token\":\"%s\"}", hx_sl_session(a),
                     hx_sl_resume_token(a));
    expect_hello_refused(&f, fx_token(&f, "globex", "alice"), resume);
    /* The same by another user of the same tenant. */
    expect_hello_refused(&f, fx_token(&f, "acme", "mallory"), resume);
    free(resume);
    /* a's resume token for a2's session (same tenant, same user). */
    resume = hx_strf("{\"session\":\"%s\",\"resume_token\":\"%s\"}", hx_sl_session(a2),
                     hx_sl_resume_token(a));
    expect_hello_refused(&f, fx_token(&f, "acme", "alice"), resume);
    free(resume);
    /* globex's token for acme's session of the same name. */
    resume = hx_strf("{\"session\":\"%s\",\"resume_token\":\"%s\"}", hx_sl_session(a),
                     hx_sl_resume_token(g));
    expect_hello_refused(&f, fx_token(&f, "acme", "alice"), resume);
    free(resume);
    /* a's own resume token with one character changed. */
    {
        char *rt = hx_strf("%s", hx_sl_resume_token(a));
        rt[0] = rt[0] == 'A' ? 'B' : 'A';
        resume = hx_strf("{\"session\":\"%s\",\"resume_token\":\"%s\"}", hx_sl_session(a),
                         rt);
        free(rt);
    }
    expect_hello_refused(&f, fx_token(&f, "acme", "alice"), resume);
    free(resume);
    assert_nothing_published(&f, before);

    /* The refused resumes did not take a's session away from it. */
    fx_ping(&f, hx_sl_ws(a));
    control_send_counts(&f, hx_sl_ws(a), "a-1");
    /* And the real owner can resume. */
    {
        char *sess = hx_strf("%s", hx_sl_session(a));
        HX_OK(f.s, hx_sl_reconnect(a, hx_stack_gw_port(f.s, 0), 15000));
        HX_ASSERT(f.s, hx_json_true(hx_sl_welcome(a), "resumed"));
        HX_ASSERT(f.s, strcmp(hx_json_str(hx_sl_welcome(a), "session"), sess) == 0);
        free(sess);
    }
    hx_sl_destroy(a);
    hx_sl_destroy(a2);
    hx_sl_destroy(g);
    fx_check_serves(&f, 0);
    fx_stop(&f);
}
END_TEST

/* ---- before and without hello ---- */

START_TEST(test_frames_before_hello_close_4400)
{
    fx f;
    counts before;
    const char *first[] = {
        "{\"type\":\"ping\"}",
        "{\"type\":\"send\",\"id\":\"h-1\",\"text\":\"sneaky\"}",
        "{\"type\":\"join\",\"room\":\"lobby\"}",
        "{\"type\":\"ack\",\"ch\":\"s\",\"seq\":1}",
        "{not json",
        "[]",
        "{\"type\":\"nope\"}",
    };

    start_default(&f);
    before = nats_counts(&f);
    for (size_t i = 0; i < sizeof(first) / sizeof(first[0]); i++) {
        hx_ws *ws = fx_raw(&f, 0);
        cJSON *e;
        int code;
        HX_OK(f.s, hx_ws_send_text(ws, first[i]));
        /* Then a valid hello, which must not be honoured any more. */
        hx_ws_send_text(ws, "{\"type\":\"hello\",\"token\":\"x\"}");
        e = hx_ws_expect_type(ws, "error", 10000);
        HX_ASSERT_MSG(f.s, e != NULL, "no error for %s before hello: %s", first[i], hx_error());
        cJSON_Delete(e);
        code = fx_wait_close(ws, 10000);
        HX_ASSERT_MSG(f.s, code == 4400, "%s before hello: close %d, wanted 4400", first[i], code);
        HX_ASSERT(f.s, fx_backlog_count(ws, "welcome", NULL) == 0);
        HX_ASSERT(f.s, fx_backlog_count(ws, "pong", NULL) == 0);
        hx_ws_destroy(ws);
    }
    assert_nothing_published(&f, before);
    fx_check_serves(&f, 0);
    fx_stop(&f);
}
END_TEST

START_TEST(test_no_hello_in_time_closes_4401)
{
    static const char *const env[] = {"SLUICE_HELLO_TIMEOUT_MS=400", NULL};
    fx f;
    hx_ws *quiet[3];
    counts before;

    start(&f, env);
    for (int i = 0; i < 3; i++)
        quiet[i] = fx_raw(&f, 0);
    /* Meanwhile a client that says hello at once is served normally. */
    fx_check_serves(&f, 0);
    before = nats_counts(&f);
    for (int i = 0; i < 3; i++) {
        fx_expect_error_close(&f, quiet[i], "unauthorized", 4401);
        hx_ws_destroy(quiet[i]);
    }
    assert_nothing_published(&f, before);
    fx_check_serves(&f, 0);
    fx_stop(&f);
}
END_TEST

int main(void)
{
    Suite *su = suite_create("gateway input");
    TCase *tc = tcase_create("bad input");
    SRunner *sr;
    int failed;

    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_binary_frame_closes_1003);
    tcase_add_test(tc, test_invalid_utf8_closes_1007);
    tcase_add_test(tc, test_oversize_frame_closes_1009);
    tcase_add_test(tc, test_invalid_json_and_non_object);
    tcase_add_test(tc, test_unknown_type);
    tcase_add_test(tc, test_bad_ids_and_rooms);
    tcase_add_test(tc, test_bad_tokens_close_4401);
    tcase_add_test(tc, test_foreign_resume_tokens_close_4401);
    tcase_add_test(tc, test_frames_before_hello_close_4400);
    tcase_add_test(tc, test_no_hello_in_time_closes_4401);
    suite_add_tcase(su, tc);
    sr = srunner_create(su);
    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? 0 : 1;
}
