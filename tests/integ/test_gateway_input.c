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
    /* Many refused frames on one connection: a bucket that does not run
     * dry here (refused frames take tokens too; test_gateway_limits checks
     * that). */
    static const char *const env[] = {"SLUICE_MAX_FRAME=1024", "SLUICE_RATE=1000",
                                      "SLUICE_BURST=1000", NULL};
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

/* Sends each frame on one authenticated connection and expects error code
 * for each, the connection staying open; nothing reaches NATS; a valid send
 * works afterwards on the same connection. */
static void refuse_each_keep_open(const char *const *bad, size_t n, const char *code)
{
    fx f;
    hx_ws *ws;
    counts before;

    start_default(&f);
    ws = fx_raw_hello(&f, 0, "acme", "alice");
    before = nats_counts(&f);
    for (size_t i = 0; i < n; i++) {
        cJSON *e;
        HX_OK(f.s, hx_ws_send_frame(ws, HX_WS_OP_TEXT, bad[i], strlen(bad[i]), true));
        e = fx_expect_error(&f, ws, code);
        cJSON_Delete(e);
        fx_ping(&f, ws); /* still open and answering */
    }
    assert_nothing_published(&f, before);
    HX_ASSERT(f.s, fx_backlog_count(ws, "accepted", NULL) == 0);
    control_send_counts(&f, ws, "ok-1");
    hx_ws_destroy(ws);
    fx_check_serves(&f, 0);
    fx_stop(&f);
}

START_TEST(test_invalid_json_bad_frame)
{
    const char *bad[] = {
        "{\"type\":\"send\",\"id\":\"j-1\",\"text\":",                          /* truncated */
        "{type:send}",                                                          /* not JSON */
        "",                                                                     /* empty */
        "{\"type\":\"send\",\"id\":\"j-3\",\"text\":\"x\"} trailing",           /* garbage after */
        "{\"type\":\"send\",\"id\":\"j-4\",\"text\":\"x\"}{\"type\":\"ping\"}", /* two values */
        "{\"type\":\"send\",\"id\":\"j-5\",\"text\":\"x\",}",                   /* trailing comma */
    };
    refuse_each_keep_open(bad, sizeof(bad) / sizeof(bad[0]), "bad_frame");
}
END_TEST

START_TEST(test_non_object_bad_frame)
{
    const char *bad[] = {
        "[{\"type\":\"send\",\"id\":\"j-2\",\"text\":\"x\"}]", /* an array */
        "\"send\"",                                            /* a string */
        "42",                                                  /* a number */
        "null",                                                /* null */
        "true",                                                /* a boolean */
        "{}",                                                  /* no type */
    };
    refuse_each_keep_open(bad, sizeof(bad) / sizeof(bad[0]), "bad_frame");
}
END_TEST

START_TEST(test_unknown_type)
{
    const char *bad[] = {
        "{\"type\":\"sned\",\"id\":\"k-1\",\"text\":\"x\"}",
        "{\"type\":\"SEND\",\"id\":\"k-2\",\"text\":\"x\"}",
        "{\"type\":\"\"}",
        "{\"type\":7}",
        "{\"type\":\"welcome\"}",
    };
    refuse_each_keep_open(bad, sizeof(bad) / sizeof(bad[0]), "unknown_type");
}
END_TEST

/* ---- ids and room names ---- */

/* Returns tmpl with its one "@V@" replaced by v (malloc'd). */
static char *subst(const char *tmpl, const char *v)
{
    const char *at = strstr(tmpl, "@V@");
    ck_assert_ptr_nonnull(at);
    return hx_strf("%.*s%s%s", (int)(at - tmpl), tmpl, v, at + 3);
}

/* Sends frames (templates with one "@V@", filled with each bad value)
 * and expects error bad_id for every one; the connection stays open and
 * nothing reaches NATS. Then ok_frame (already formatted) must get
 * ok_answer. */
static void refuse_values(const char *const *templates, size_t nt, const char *const *values,
                          size_t nv, const char *ok_frame, const char *ok_answer)
{
    fx f;
    hx_ws *ws;
    counts before;

    start_default(&f);
    ws = fx_raw_hello(&f, 0, "acme", "alice");
    before = nats_counts(&f);
    for (size_t v = 0; v < nv; v++) {
        for (size_t t = 0; t < nt; t++) {
            cJSON *e;
            char *fr = subst(templates[t], values[v]);
            HX_OK(f.s, hx_ws_send_text(ws, fr));
            e = hx_ws_expect_type(ws, "error", 10000);
            HX_ASSERT_MSG(f.s, e != NULL && strcmp(hx_json_str(e, "code"), "bad_id") == 0,
                          "%s: wanted error bad_id, got %s", fr,
                          e ? cJSON_PrintUnformatted(e) : hx_error());
            cJSON_Delete(e);
            free(fr);
        }
        fx_ping(&f, ws);
    }
    HX_ASSERT(f.s, fx_backlog_count(ws, "accepted", NULL) == 0);
    HX_ASSERT(f.s, fx_backlog_count(ws, "joined", NULL) == 0);
    HX_ASSERT(f.s, fx_backlog_count(ws, "history", NULL) == 0);
    HX_ASSERT(f.s, fx_backlog_count(ws, "busy", NULL) == 0);
    assert_nothing_published(&f, before);
    {
        cJSON *a;
        HX_OK(f.s, hx_ws_send_text(ws, ok_frame));
        a = hx_ws_expect(ws, ok_answer, 15000);
        HX_ASSERT_MSG(f.s, a != NULL, "%s was not answered with %s: %s", ok_frame, ok_answer,
                      hx_error());
        cJSON_Delete(a);
    }
    hx_ws_destroy(ws);
    fx_check_serves(&f, 0);
    fx_stop(&f);
}

START_TEST(test_bad_message_ids)
{
    /* Message ids allow [A-Za-z0-9_.:-]{1,64}; JSON escapes carry the
     * control characters. */
    static const char *const templates[] = {
        "{\"type\":\"send\",\"id\":\"@V@\",\"text\":\"x\"}",
        "{\"type\":\"send\",\"id\":\"c-1\",\"prev\":\"@V@\",\"text\":\"x\"}",
        "{\"type\":\"cancel\",\"id\":\"@V@\"}",
    };
    static const char *const values[] = {
        "a*b",   "a>b",
        "a b",   "a\\u0001b",
        "a\\tb", "a\\u007f",
        "",      "\xc3\xa9",
        "a/b",   "iiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiii", /* 65 */
    };
    /* The longest valid id, with '.' and ':' (which ids allow). */
    char ok[200];
    snprintf(ok, sizeof(ok), "{\"type\":\"send\",\"id\":\"%s\",\"text\":\"x\"}",
             "c.1:x_iiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiiii");
    ck_assert_uint_eq(strlen(ok) - strlen("{\"type\":\"send\",\"id\":\"\",\"text\":\"x\"}"), 64);
    refuse_values(templates, 3, values, sizeof(values) / sizeof(values[0]), ok,
                  "{\"type\":\"accepted\"}");
}
END_TEST

START_TEST(test_bad_room_names)
{
    /* Room ids allow [A-Za-z0-9_-]{1,64}: no '.', '*', '>' that could reach
     * a subject. */
    static const char *const templates[] = {
        "{\"type\":\"join\",\"room\":\"@V@\"}",
        "{\"type\":\"leave\",\"room\":\"@V@\"}",
        "{\"type\":\"send\",\"id\":\"r-1\",\"room\":\"@V@\",\"text\":\"x\"}",
        "{\"type\":\"ack\",\"ch\":\"r:@V@\",\"seq\":1}",
        "{\"type\":\"history\",\"ch\":\"r:@V@\"}",
    };
    static const char *const values[] = {
        "a.b",      "a*",
        ">",        "lob by",
        "a\\nb",    "a\\u001fb",
        "",         "a:b",
        "sluice.>", "rrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrr", /* 65 */
    };
    refuse_values(templates, 5, values, sizeof(values) / sizeof(values[0]),
                  "{\"type\":\"join\",\"room\":"
                  "\"rrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrr\"}",
                  "{\"type\":\"joined\"}");
}
END_TEST

START_TEST(test_nul_escape_bad_frame)
{
    /* An escaped NUL would cut the string short ("a\u0000.b" reads as "a"
     * in C): the frame is refused as a whole. */
    const char *bad[] = {
        "{\"type\":\"join\",\"room\":\"a\\u0000.b\"}",
        "{\"type\":\"send\",\"id\":\"n-1\\u0000*\",\"text\":\"x\"}",
        "{\"type\":\"send\",\"id\":\"n-2\",\"text\":\"cut\\u0000here\"}",
    };
    refuse_each_keep_open(bad, sizeof(bad) / sizeof(bad[0]), "bad_frame");
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

/* Each token is refused with 4401 on its own connection; nothing reaches
 * NATS and the gateway goes on serving. */
static void refuse_tokens(fx *f, char **tokens, int n)
{
    counts before = nats_counts(f);

    for (int i = 0; i < n; i++) {
        HX_ASSERT(f->s, tokens[i] != NULL);
        expect_hello_refused(f, tokens[i], NULL);
        free(tokens[i]);
    }
    assert_nothing_published(f, before);
    fx_check_serves(f, 0);
    fx_stop(f);
}

START_TEST(test_expired_token_4401)
{
    fx f;
    char *tok[2];

    start_default(&f);
    tok[0] = hx_token(f.s, "acme", "alice", -5);
    tok[1] = hx_token(f.s, "acme", "alice", 0); /* expires now: exp <= now */
    refuse_tokens(&f, tok, 2);
}
END_TEST

START_TEST(test_forged_token_4401)
{
    fx f;
    char *tok[4];

    start_default(&f);
    tok[0] = hx_token_secret("this-is-not-the-stack-secret-0123", "acme", "alice", 600, NULL, -1);
    {
        /* A valid token with its payload swapped for another tenant's. */
        char *good = hx_token(f.s, "acme", "alice", 600);
        char *other = hx_token(f.s, "globex", "alice", 600);
        char *gdot = strchr(good, '.'), *odot = strchr(other, '.');
        char *gsig = strrchr(good, '.'), *osig = strrchr(other, '.');
        HX_ASSERT(f.s, gdot && odot && gsig && osig);
        *osig = '\0';
        *gdot = '\0';
        tok[1] = hx_strf("%s.%s%s", good, odot + 1, gsig);
        free(good);
        free(other);
    }
    tok[2] = hx_strf("not-a-jwt");
    tok[3] = hx_strf("%s", "");
    refuse_tokens(&f, tok, 4);
}
END_TEST

START_TEST(test_alg_none_token_4401)
{
    fx f;
    char *tok[4];

    start_default(&f);
    tok[0] = alg_none_token("none", "acme", "alice");
    tok[1] = alg_none_token("None", "acme", "alice");
    tok[2] = alg_none_token("NONE", "acme", "alice");
    {
        /* alg none with the stack's real signature appended. */
        char *good = hx_token(f.s, "acme", "alice", 600);
        char *none = alg_none_token("none", "acme", "alice");
        tok[3] = hx_strf("%s%s", none, strrchr(good, '.') + 1);
        free(good);
        free(none);
    }
    refuse_tokens(&f, tok, 4);
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
        resume = hx_strf("{\"session\":\"%s\",\"resume_token\":\"%s\"}", hx_sl_session(a), rt);
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
    static const char *const env[] = {"SLUICE_HELLO_TIMEOUT_MS=1000", NULL};
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
    tcase_add_test(tc, test_invalid_json_bad_frame);
    tcase_add_test(tc, test_non_object_bad_frame);
    tcase_add_test(tc, test_unknown_type);
    tcase_add_test(tc, test_bad_message_ids);
    tcase_add_test(tc, test_bad_room_names);
    tcase_add_test(tc, test_nul_escape_bad_frame);
    tcase_add_test(tc, test_expired_token_4401);
    tcase_add_test(tc, test_forged_token_4401);
    tcase_add_test(tc, test_alg_none_token_4401);
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
