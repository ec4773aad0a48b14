/* Unit tests for the model backends: echo, and openai against the fake
 * OpenAI-compatible server of tests/harness (linked from libharness). */
#include <cJSON.h>
#include <check.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "wrk_backend.h"
#include "fake_openai.h"

/* Generous bound on how late a call may return after its deadline or its
 * cancel: only a hang fails it, never a slow machine. */
#define SLACK_MS 2000

/* Collects the streamed text; tokens are also recorded separated by '|'. */
typedef struct sink {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    char text[8192];
    size_t len;
    char toks[8192];
    size_t toks_len;
    int ntok;
    int abort_after;              /* return nonzero at this token (1-based); 0 = never */
    _Atomic int *cancel_at_first; /* set to 1 on the first token, when not NULL */
} sink;

static void sink_init(sink *s)
{
    memset(s, 0, sizeof(*s));
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
}

static void sink_fini(sink *s)
{
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cv);
}

static int on_token(void *ud, const char *text, size_t len)
{
    sink *s = ud;
    ck_assert_uint_gt(len, 0);
    pthread_mutex_lock(&s->mu);
    ck_assert_uint_lt(s->len + len, sizeof(s->text));
    ck_assert_uint_lt(s->toks_len + len + 1, sizeof(s->toks));
    memcpy(s->text + s->len, text, len);
    s->len += len;
    s->text[s->len] = '\0';
    memcpy(s->toks + s->toks_len, text, len);
    s->toks_len += len;
    s->toks[s->toks_len++] = '|';
    s->toks[s->toks_len] = '\0';
    int n = ++s->ntok;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
    if (s->cancel_at_first && n == 1)
        atomic_store(s->cancel_at_first, 1);
    return s->abort_after && n >= s->abort_after;
}

/* Waits until the sink saw at least n tokens; returns 0, or -1 after timeout_ms. */
static int sink_wait(sink *s, int n, int timeout_ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += timeout_ms / 1000;
    ts.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    int rc = 0;
    pthread_mutex_lock(&s->mu);
    while (s->ntok < n && rc == 0)
        rc = pthread_cond_timedwait(&s->cv, &s->mu, &ts);
    int ok = s->ntok >= n;
    pthread_mutex_unlock(&s->mu);
    return ok ? 0 : -1;
}

static const wrk_msg default_msgs[] = {
    {"system", "You are terse."},
    {"user", "first question"},
    {"assistant", "first answer"},
    {"user", "hello there"},
};
#define NDEFAULT (sizeof(default_msgs) / sizeof(default_msgs[0]))

/* Runs one call with a deadline relative to now; returns the elapsed ms. */
static int64_t run(wrk_backend *b, const wrk_msg *msgs, size_t n, int64_t rel_deadline_ms,
                   const _Atomic int *cancel, sink *s, wrk_result *res)
{
    int64_t t0 = sl_mono_ms();
    wrk_call call = {.model = "m1",
                     .msgs = msgs,
                     .nmsgs = n,
                     .deadline_ms = t0 + rel_deadline_ms,
                     .cancel = cancel};
    wrk_backend_call(b, &call, on_token, s, res);
    return sl_mono_ms() - t0;
}

static wrk_backend *make_echo(int64_t delay)
{
    wrk_backend *b = NULL;
    char err[128] = "";
    wrk_backend_cfg cfg = {.kind = "echo", .echo_delay_ms = delay};
    ck_assert_msg(wrk_backend_create(&b, &cfg, err, sizeof(err)) == SL_OK, "%s", err);
    return b;
}

/* ---- echo ---- */

static void echo_expect(const char *in, const char *toks)
{
    wrk_backend *b = make_echo(0);
    wrk_msg m = {"user", in};
    sink s;
    sink_init(&s);
    wrk_result res;
    run(b, &m, 1, 5000, NULL, &s, &res);
    ck_assert_int_eq(res.outcome, WRK_DONE);
    ck_assert_str_eq(res.error, "");
    ck_assert_str_eq(s.text, in);
    ck_assert_str_eq(s.toks, toks);
    ck_assert_uint_eq(res.ntokens, (size_t)s.ntok);
    sink_fini(&s);
    wrk_backend_destroy(b);
}

START_TEST(test_echo_exact_text)
{
    echo_expect("hello world", "hello |world|");
    echo_expect("  lead and trail  ", "  lead |and |trail  |");
    echo_expect("tabs\tand\nnew\r\nlines\n", "tabs\t|and\n|new\r\n|lines\n|");
    echo_expect("caf\xC3\xA9 \xF0\x9F\x9A\x80!", "caf\xC3\xA9 |\xF0\x9F\x9A\x80!|");
    echo_expect("one", "one|");
    echo_expect("   ", "   |");
    echo_expect("", "");
}
END_TEST

START_TEST(test_echo_answers_last_user_message)
{
    wrk_backend *b = make_echo(0);
    sink s;
    sink_init(&s);
    wrk_result res;
    run(b, default_msgs, NDEFAULT, 5000, NULL, &s, &res);
    ck_assert_int_eq(res.outcome, WRK_DONE);
    ck_assert_str_eq(s.text, "hello there");

    /* No user message: an empty, complete answer. */
    sink_fini(&s);
    sink_init(&s);
    run(b, default_msgs, 1, 5000, NULL, &s, &res);
    ck_assert_int_eq(res.outcome, WRK_DONE);
    ck_assert_int_eq(s.ntok, 0);
    sink_fini(&s);
    wrk_backend_destroy(b);
}
END_TEST

START_TEST(test_echo_deterministic)
{
    wrk_backend *b = make_echo(1);
    wrk_msg m = {"user", "the same words every time, exactly"};
    sink s1, s2;
    sink_init(&s1);
    sink_init(&s2);
    wrk_result r1, r2;
    run(b, &m, 1, 10000, NULL, &s1, &r1);
    run(b, &m, 1, 10000, NULL, &s2, &r2);
    ck_assert_int_eq(r1.outcome, WRK_DONE);
    ck_assert_int_eq(r2.outcome, WRK_DONE);
    ck_assert_str_eq(s1.toks, s2.toks);
    ck_assert_int_eq(s1.ntok, 6);
    sink_fini(&s1);
    sink_fini(&s2);
    wrk_backend_destroy(b);
}
END_TEST

START_TEST(test_echo_deadline)
{
    /* Ten tokens 100 ms apart cannot fit in 250 ms. */
    wrk_backend *b = make_echo(100);
    wrk_msg m = {"user", "a b c d e f g h i j"};
    sink s;
    sink_init(&s);
    wrk_result res;
    int64_t took = run(b, &m, 1, 250, NULL, &s, &res);
    ck_assert_int_eq(res.outcome, WRK_DEADLINE);
    ck_assert_int_lt(s.ntok, 10);
    ck_assert_int_eq(strncmp("a b c d e f g h i j", s.text, s.len), 0);
    ck_assert_int_lt(took, 250 + SLACK_MS);
    sink_fini(&s);
    wrk_backend_destroy(b);
}
END_TEST

START_TEST(test_echo_cancel)
{
    /* The first token sets cancel; without delay the echo still looks at
     * cancel between tokens. */
    wrk_backend *b = make_echo(0);
    wrk_msg m = {"user", "first second third"};
    _Atomic int cancel = 0;
    sink s;
    sink_init(&s);
    s.cancel_at_first = &cancel;
    wrk_result res;
    run(b, &m, 1, 60000, &cancel, &s, &res);
    ck_assert_int_eq(res.outcome, WRK_CANCELLED);
    ck_assert_int_eq(s.ntok, 1);
    sink_fini(&s);

    /* Cancel before the call: no token at all. */
    sink_init(&s);
    run(b, &m, 1, 60000, &cancel, &s, &res);
    ck_assert_int_eq(res.outcome, WRK_CANCELLED);
    ck_assert_int_eq(s.ntok, 0);
    sink_fini(&s);
    wrk_backend_destroy(b);
}
END_TEST

typedef struct call_thread {
    wrk_backend *b;
    const wrk_msg *msgs;
    size_t nmsgs;
    int64_t rel_deadline;
    _Atomic int *cancel;
    sink s;
    wrk_result res;
    int64_t took;
} call_thread;

static void *call_main(void *arg)
{
    call_thread *t = arg;
    t->took = run(t->b, t->msgs, t->nmsgs, t->rel_deadline, t->cancel, &t->s, &t->res);
    return NULL;
}

START_TEST(test_echo_cancel_while_sleeping)
{
    wrk_backend *b = make_echo(300);
    wrk_msg m = {"user", "w1 w2 w3 w4 w5 w6 w7 w8 w9 w10 w11 w12 w13 w14 w15 w16 w17 w18 w19 w20"};
    _Atomic int cancel = 0;
    call_thread t = {.b = b, .msgs = &m, .nmsgs = 1, .rel_deadline = 60000, .cancel = &cancel};
    sink_init(&t.s);
    pthread_t th;
    ck_assert_int_eq(pthread_create(&th, NULL, call_main, &t), 0);
    ck_assert_int_eq(sink_wait(&t.s, 1, 10000), 0);
    int64_t t0 = sl_mono_ms();
    atomic_store(&cancel, 1);
    pthread_join(th, NULL);
    int64_t after = sl_mono_ms() - t0;
    ck_assert_int_eq(t.res.outcome, WRK_CANCELLED);
    ck_assert_int_lt(t.s.ntok, 20);
    ck_assert_int_lt(after, SLACK_MS);
    sink_fini(&t.s);
    wrk_backend_destroy(b);
}
END_TEST

START_TEST(test_echo_callback_abort)
{
    wrk_backend *b = make_echo(0);
    wrk_msg m = {"user", "a b c d"};
    sink s;
    sink_init(&s);
    s.abort_after = 2;
    wrk_result res;
    run(b, &m, 1, 5000, NULL, &s, &res);
    ck_assert_int_eq(res.outcome, WRK_CANCELLED);
    ck_assert_str_eq(s.text, "a b ");
    sink_fini(&s);
    wrk_backend_destroy(b);
}
END_TEST

START_TEST(test_deadline_already_past)
{
    wrk_backend *b = make_echo(0);
    wrk_msg m = {"user", "a b"};
    sink s;
    sink_init(&s);
    wrk_result res;
    run(b, &m, 1, -1, NULL, &s, &res);
    ck_assert_int_eq(res.outcome, WRK_DEADLINE);
    ck_assert_int_eq(s.ntok, 0);
    sink_fini(&s);
    wrk_backend_destroy(b);
}
END_TEST

START_TEST(test_create_errors)
{
    wrk_backend *b = NULL;
    char err[160] = "";
    wrk_backend_cfg cfg = {.kind = "gpt"};
    ck_assert_int_eq(wrk_backend_create(&b, &cfg, err, sizeof(err)), SL_ERR_INVAL);
    ck_assert_ptr_nonnull(strstr(err, "gpt"));
    cfg = (wrk_backend_cfg){.kind = "echo", .echo_delay_ms = -1};
    ck_assert_int_eq(wrk_backend_create(&b, &cfg, err, sizeof(err)), SL_ERR_INVAL);
    cfg = (wrk_backend_cfg){.kind = "openai"};
    ck_assert_int_eq(wrk_backend_create(&b, &cfg, err, sizeof(err)), SL_ERR_INVAL);
    ck_assert_ptr_nonnull(strstr(err, "URL"));
    cfg = (wrk_backend_cfg){.kind = "openai", .url = "ftp://127.0.0.1/"};
    ck_assert_int_eq(wrk_backend_create(&b, &cfg, err, sizeof(err)), SL_ERR_INVAL);
    cfg = (wrk_backend_cfg){.kind = "openai", .url = "http://127.0.0.1:1/ x"};
    ck_assert_int_eq(wrk_backend_create(&b, &cfg, err, sizeof(err)), SL_ERR_INVAL);
    ck_assert_ptr_null(b);
    /* NULL kind is the default, echo. */
    cfg = (wrk_backend_cfg){0};
    ck_assert_int_eq(wrk_backend_create(&b, &cfg, err, sizeof(err)), SL_OK);
    wrk_backend_destroy(b);
    wrk_backend_destroy(NULL);
}
END_TEST

/* ---- openai against the fake server ---- */

static fake_openai *g_fake;
static int g_port;

static void fake_setup(void)
{
    ck_assert_int_eq(fake_openai_start(&g_fake, &g_port), 0);
}

static void fake_teardown(void)
{
    fake_openai_stop(g_fake);
    g_fake = NULL;
}

static wrk_backend *make_openai_url(const char *url, const char *key)
{
    wrk_backend *b = NULL;
    char err[160] = "";
    wrk_backend_cfg cfg = {.kind = "openai", .url = url, .api_key = key};
    ck_assert_msg(wrk_backend_create(&b, &cfg, err, sizeof(err)) == SL_OK, "%s", err);
    return b;
}

static wrk_backend *make_openai(const char *key)
{
    char url[64];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d", g_port);
    return make_openai_url(url, key);
}

static const char tricky_reply[] = "Hi \"there\"\n\ttab caf\xC3\xA9 \\ back/slash </script> "
                                   "\xF0\x9F\x9A\x80 end.";

START_TEST(test_openai_normal)
{
    ck_assert_int_eq(fake_openai_set_reply(g_fake, tricky_reply), 0);
    wrk_backend *b = make_openai("sk-test");
    sink s;
    sink_init(&s);
    wrk_result res;
    run(b, default_msgs, NDEFAULT, 10000, NULL, &s, &res);
    ck_assert_msg(res.outcome == WRK_DONE, "%s: %s", wrk_outcome_str(res.outcome), res.error);
    ck_assert_int_eq(res.http_status, 200);
    ck_assert_str_eq(s.text, tricky_reply);
    ck_assert_int_eq(s.ntok, 9);
    ck_assert_uint_eq(res.ntokens, 9);

    /* The request carried the model, every message in order, stream:true. */
    char *body = fake_openai_last_body(g_fake);
    char *head = fake_openai_last_head(g_fake);
    ck_assert_ptr_nonnull(body);
    ck_assert_ptr_nonnull(head);
    ck_assert_ptr_nonnull(strstr(head, "POST /v1/chat/completions HTTP/1.1\r\n"));
    ck_assert_ptr_nonnull(strstr(head, "\r\nAuthorization: Bearer sk-test\r\n"));
    cJSON *j = cJSON_Parse(body);
    ck_assert_ptr_nonnull(j);
    ck_assert_str_eq(cJSON_GetObjectItem(j, "model")->valuestring, "m1");
    ck_assert(cJSON_IsTrue(cJSON_GetObjectItem(j, "stream")));
    cJSON *msgs = cJSON_GetObjectItem(j, "messages");
    ck_assert_int_eq(cJSON_GetArraySize(msgs), (int)NDEFAULT);
    for (size_t i = 0; i < NDEFAULT; i++) {
        cJSON *m = cJSON_GetArrayItem(msgs, (int)i);
        ck_assert_str_eq(cJSON_GetObjectItem(m, "role")->valuestring, default_msgs[i].role);
        ck_assert_str_eq(cJSON_GetObjectItem(m, "content")->valuestring, default_msgs[i].content);
    }
    cJSON_Delete(j);
    free(body);
    free(head);
    sink_fini(&s);
    wrk_backend_destroy(b);
}
END_TEST

START_TEST(test_openai_url_forms_and_no_key)
{
    const char *forms[] = {"/", "/v1", "/v1/", "/v1/chat/completions"};
    for (size_t i = 0; i < sizeof(forms) / sizeof(forms[0]); i++) {
        char url[96];
        snprintf(url, sizeof(url), "http://127.0.0.1:%d%s", g_port, forms[i]);
        wrk_backend *b = make_openai_url(url, NULL);
        sink s;
        sink_init(&s);
        wrk_result res;
        run(b, default_msgs, NDEFAULT, 10000, NULL, &s, &res);
        ck_assert_msg(res.outcome == WRK_DONE, "%s: %s", url, res.error);
        ck_assert_str_eq(s.text, "Hello from the fake model.");
        char *head = fake_openai_last_head(g_fake);
        ck_assert_ptr_null(strstr(head, "Authorization"));
        free(head);
        sink_fini(&s);
        wrk_backend_destroy(b);
    }
    /* A wrong path gets a 404 from the fake: fatal. */
    char url[96];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/api", g_port);
    wrk_backend *b = make_openai_url(url, NULL);
    sink s;
    sink_init(&s);
    wrk_result res;
    run(b, default_msgs, NDEFAULT, 10000, NULL, &s, &res);
    ck_assert_int_eq(res.outcome, WRK_FATAL);
    ck_assert_int_eq(res.http_status, 404);
    sink_fini(&s);
    wrk_backend_destroy(b);
}
END_TEST

START_TEST(test_openai_slow_hits_deadline)
{
    fake_openai_set_mode(g_fake, FAKE_OPENAI_SLOW);
    fake_openai_set_slow_ms(g_fake, 10000);
    wrk_backend *b = make_openai(NULL);
    sink s;
    sink_init(&s);
    wrk_result res;
    int64_t took = run(b, default_msgs, NDEFAULT, 400, NULL, &s, &res);
    ck_assert_msg(res.outcome == WRK_DEADLINE, "%s: %s", wrk_outcome_str(res.outcome), res.error);
    ck_assert_str_eq(s.text, "Hello ");
    ck_assert_int_lt(took, 400 + SLACK_MS);
    sink_fini(&s);
    wrk_backend_destroy(b);
}
END_TEST

START_TEST(test_openai_hang_after_headers)
{
    fake_openai_set_mode(g_fake, FAKE_OPENAI_HANG_AFTER_HEADERS);
    wrk_backend *b = make_openai(NULL);
    sink s;
    sink_init(&s);
    wrk_result res;
    int64_t took = run(b, default_msgs, NDEFAULT, 300, NULL, &s, &res);
    ck_assert_msg(res.outcome == WRK_DEADLINE, "%s: %s", wrk_outcome_str(res.outcome), res.error);
    ck_assert_int_eq(res.http_status, 200);
    ck_assert_int_eq(s.ntok, 0);
    ck_assert_int_lt(took, 300 + SLACK_MS);
    sink_fini(&s);
    wrk_backend_destroy(b);
}
END_TEST

static void expect_error(fake_openai_mode mode, wrk_outcome want, int status, const char *msg,
                         int64_t retry_after, const char *text)
{
    fake_openai_set_mode(g_fake, mode);
    wrk_backend *b = make_openai(NULL);
    sink s;
    sink_init(&s);
    wrk_result res;
    run(b, default_msgs, NDEFAULT, 10000, NULL, &s, &res);
    ck_assert_msg(res.outcome == want, "mode %d: %s: %s", mode, wrk_outcome_str(res.outcome),
                  res.error);
    ck_assert_int_eq(res.http_status, status);
    ck_assert_msg(strstr(res.error, msg), "mode %d: error \"%s\" lacks \"%s\"", mode, res.error,
                  msg);
    ck_assert_int_eq(res.retry_after_ms, retry_after);
    ck_assert_str_eq(s.text, text);
    sink_fini(&s);
    wrk_backend_destroy(b);
}

START_TEST(test_openai_http_errors)
{
    expect_error(FAKE_OPENAI_HTTP_500, WRK_TRANSIENT, 500, "fake internal error", -1, "");
    expect_error(FAKE_OPENAI_HTTP_429, WRK_TRANSIENT, 429, "fake rate limit", 1000, "");
    expect_error(FAKE_OPENAI_HTTP_400, WRK_FATAL, 400, "fake bad request", -1, "");
}
END_TEST

START_TEST(test_openai_malformed_and_error_event)
{
    expect_error(FAKE_OPENAI_MALFORMED_SSE, WRK_FATAL, 200, "malformed SSE data", -1, "Hello ");
    expect_error(FAKE_OPENAI_ERROR_EVENT, WRK_FATAL, 200, "fake stream error", -1, "Hello ");
}
END_TEST

START_TEST(test_openai_reset_mid_stream)
{
    fake_openai_set_mode(g_fake, FAKE_OPENAI_RESET_MID_STREAM);
    fake_openai_set_reset_after(g_fake, 2);
    wrk_backend *b = make_openai(NULL);
    sink s;
    sink_init(&s);
    wrk_result res;
    run(b, default_msgs, NDEFAULT, 10000, NULL, &s, &res);
    ck_assert_msg(res.outcome == WRK_TRANSIENT, "%s: %s", wrk_outcome_str(res.outcome), res.error);
    /* Whatever arrived before the reset was streamed, and nothing else. */
    ck_assert_int_le(s.ntok, 2);
    ck_assert_int_eq(strncmp("Hello from ", s.text, s.len), 0);
    sink_fini(&s);
    wrk_backend_destroy(b);
}
END_TEST

START_TEST(test_openai_json_answer)
{
    fake_openai_set_mode(g_fake, FAKE_OPENAI_JSON);
    ck_assert_int_eq(fake_openai_set_reply(g_fake, tricky_reply), 0);
    wrk_backend *b = make_openai(NULL);
    sink s;
    sink_init(&s);
    wrk_result res;
    run(b, default_msgs, NDEFAULT, 10000, NULL, &s, &res);
    ck_assert_msg(res.outcome == WRK_DONE, "%s", res.error);
    ck_assert_str_eq(s.text, tricky_reply);
    ck_assert_int_eq(s.ntok, 1);
    sink_fini(&s);
    wrk_backend_destroy(b);
}
END_TEST

/* The backend asks for usage in the stream and keeps the model's numbers;
 * a server that reports none leaves them unknown (-1), as does echo. */
START_TEST(test_openai_usage_reported_or_not)
{
    wrk_backend *b = make_openai(NULL);
    sink s;
    wrk_result res;

    /* Not reported (the default of the fake). */
    sink_init(&s);
    run(b, default_msgs, NDEFAULT, 10000, NULL, &s, &res);
    ck_assert_msg(res.outcome == WRK_DONE, "%s", res.error);
    ck_assert_int_eq(res.input_tokens, -1);
    ck_assert_int_eq(res.output_tokens, -1);
    char *body = fake_openai_last_body(g_fake);
    cJSON *j = cJSON_Parse(body);
    cJSON *so = cJSON_GetObjectItem(j, "stream_options");
    ck_assert(cJSON_IsTrue(cJSON_GetObjectItem(so, "include_usage")));
    cJSON_Delete(j);
    free(body);
    sink_fini(&s);

    /* Reported in a last chunk with no choices, before [DONE]. */
    fake_openai_set_usage(g_fake, 11, 7);
    sink_init(&s);
    run(b, default_msgs, NDEFAULT, 10000, NULL, &s, &res);
    ck_assert_msg(res.outcome == WRK_DONE, "%s", res.error);
    ck_assert_str_eq(s.text, "Hello from the fake model.");
    ck_assert_int_eq(res.input_tokens, 11);
    ck_assert_int_eq(res.output_tokens, 7);
    sink_fini(&s);

    /* Reported in a plain JSON answer. */
    fake_openai_set_mode(g_fake, FAKE_OPENAI_JSON);
    fake_openai_set_usage(g_fake, 3, 5);
    sink_init(&s);
    run(b, default_msgs, NDEFAULT, 10000, NULL, &s, &res);
    ck_assert_msg(res.outcome == WRK_DONE, "%s", res.error);
    ck_assert_int_eq(res.input_tokens, 3);
    ck_assert_int_eq(res.output_tokens, 5);
    sink_fini(&s);
    wrk_backend_destroy(b);

    /* Echo never reports usage. */
    b = make_echo(0);
    sink_init(&s);
    run(b, default_msgs, NDEFAULT, 10000, NULL, &s, &res);
    ck_assert_int_eq(res.outcome, WRK_DONE);
    ck_assert_int_eq(res.input_tokens, -1);
    ck_assert_int_eq(res.output_tokens, -1);
    sink_fini(&s);
    wrk_backend_destroy(b);
}
END_TEST

/* An older server refuses stream_options: that call is transient, and the
 * backend's later requests go without it (usage then unknown). */
START_TEST(test_openai_server_without_stream_options)
{
    fake_openai_set_mode(g_fake, FAKE_OPENAI_NO_STREAM_OPTIONS);
    fake_openai_set_usage(g_fake, 11, 7);
    wrk_backend *b = make_openai(NULL);
    sink s;
    wrk_result res;

    sink_init(&s);
    run(b, default_msgs, NDEFAULT, 10000, NULL, &s, &res);
    ck_assert_msg(res.outcome == WRK_TRANSIENT, "%s: %s", wrk_outcome_str(res.outcome), res.error);
    ck_assert_int_eq(res.http_status, 400);
    ck_assert_int_eq(s.ntok, 0);
    sink_fini(&s);

    sink_init(&s);
    run(b, default_msgs, NDEFAULT, 10000, NULL, &s, &res);
    ck_assert_msg(res.outcome == WRK_DONE, "%s: %s", wrk_outcome_str(res.outcome), res.error);
    ck_assert_str_eq(s.text, "Hello from the fake model.");
    ck_assert_int_eq(res.input_tokens, -1);
    char *body = fake_openai_last_body(g_fake);
    cJSON *j = cJSON_Parse(body);
    ck_assert_ptr_null(cJSON_GetObjectItem(j, "stream_options"));
    ck_assert(cJSON_IsTrue(cJSON_GetObjectItem(j, "stream")));
    cJSON_Delete(j);
    free(body);
    sink_fini(&s);
    wrk_backend_destroy(b);
}
END_TEST

START_TEST(test_openai_connect_refused)
{
    /* Stop the fake so its port refuses connections. */
    char url[64];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d", g_port);
    fake_openai_stop(g_fake);
    g_fake = NULL;
    wrk_backend *b = make_openai_url(url, NULL);
    sink s;
    sink_init(&s);
    wrk_result res;
    run(b, default_msgs, NDEFAULT, 10000, NULL, &s, &res);
    ck_assert_msg(res.outcome == WRK_TRANSIENT, "%s: %s", wrk_outcome_str(res.outcome), res.error);
    ck_assert_int_eq(res.http_status, 0);
    ck_assert_str_ne(res.error, "");
    sink_fini(&s);
    wrk_backend_destroy(b);
}
END_TEST

START_TEST(test_openai_cancel_mid_stream)
{
    /* Twenty tokens 300 ms apart would take 6 s. */
    fake_openai_set_reply(g_fake, "w1 w2 w3 w4 w5 w6 w7 w8 w9 w10 w11 w12 w13 w14 w15 w16 w17 "
                                  "w18 w19 w20");
    fake_openai_set_token_delay_ms(g_fake, 300);
    wrk_backend *b = make_openai(NULL);
    _Atomic int cancel = 0;
    call_thread t = {
        .b = b, .msgs = default_msgs, .nmsgs = NDEFAULT, .rel_deadline = 60000, .cancel = &cancel};
    sink_init(&t.s);
    pthread_t th;
    ck_assert_int_eq(pthread_create(&th, NULL, call_main, &t), 0);
    ck_assert_int_eq(sink_wait(&t.s, 1, 10000), 0);
    int64_t t0 = sl_mono_ms();
    atomic_store(&cancel, 1);
    pthread_join(th, NULL);
    int64_t after = sl_mono_ms() - t0;
    ck_assert_msg(t.res.outcome == WRK_CANCELLED, "%s: %s", wrk_outcome_str(t.res.outcome),
                  t.res.error);
    ck_assert_int_lt(t.s.ntok, 20);
    ck_assert_int_lt(after, SLACK_MS);
    sink_fini(&t.s);
    wrk_backend_destroy(b);
}
END_TEST

START_TEST(test_openai_cancel_while_hanging)
{
    /* No byte flows, so only the poll loop can notice the cancel. */
    fake_openai_set_mode(g_fake, FAKE_OPENAI_HANG_AFTER_HEADERS);
    wrk_backend *b = make_openai(NULL);
    _Atomic int cancel = 0;
    call_thread t = {
        .b = b, .msgs = default_msgs, .nmsgs = NDEFAULT, .rel_deadline = 60000, .cancel = &cancel};
    sink_init(&t.s);
    pthread_t th;
    ck_assert_int_eq(pthread_create(&th, NULL, call_main, &t), 0);
    ck_assert_int_eq(fake_openai_wait_requests(g_fake, 1, 10000), 0);
    int64_t t0 = sl_mono_ms();
    atomic_store(&cancel, 1);
    pthread_join(th, NULL);
    ck_assert_int_eq(t.res.outcome, WRK_CANCELLED);
    ck_assert_int_lt(sl_mono_ms() - t0, SLACK_MS);
    sink_fini(&t.s);
    wrk_backend_destroy(b);
}
END_TEST

START_TEST(test_openai_callback_abort_and_precancel)
{
    fake_openai_set_token_delay_ms(g_fake, 0);
    wrk_backend *b = make_openai(NULL);
    sink s;
    sink_init(&s);
    s.abort_after = 2;
    wrk_result res;
    run(b, default_msgs, NDEFAULT, 10000, NULL, &s, &res);
    ck_assert_int_eq(res.outcome, WRK_CANCELLED);
    ck_assert_str_eq(s.text, "Hello from ");
    ck_assert_int_eq(fake_openai_requests(g_fake), 1);
    sink_fini(&s);

    /* Cancelled or expired before the start: no request is made. */
    _Atomic int cancel = 1;
    sink_init(&s);
    run(b, default_msgs, NDEFAULT, 10000, &cancel, &s, &res);
    ck_assert_int_eq(res.outcome, WRK_CANCELLED);
    run(b, default_msgs, NDEFAULT, 0, NULL, &s, &res);
    ck_assert_int_eq(res.outcome, WRK_DEADLINE);
    ck_assert_int_eq(fake_openai_requests(g_fake), 1);
    sink_fini(&s);
    wrk_backend_destroy(b);
}
END_TEST

START_TEST(test_openai_concurrent_calls_and_reuse)
{
    fake_openai_set_token_delay_ms(g_fake, 20);
    wrk_backend *b = make_openai(NULL);
    enum { N = 4 };
    call_thread t[N];
    pthread_t th[N];
    for (int i = 0; i < N; i++) {
        t[i] =
            (call_thread){.b = b, .msgs = default_msgs, .nmsgs = NDEFAULT, .rel_deadline = 10000};
        sink_init(&t[i].s);
        ck_assert_int_eq(pthread_create(&th[i], NULL, call_main, &t[i]), 0);
    }
    for (int i = 0; i < N; i++) {
        pthread_join(th[i], NULL);
        ck_assert_msg(t[i].res.outcome == WRK_DONE, "%d: %s", i, t[i].res.error);
        ck_assert_str_eq(t[i].s.text, "Hello from the fake model.");
        sink_fini(&t[i].s);
    }
    ck_assert_int_eq(fake_openai_requests(g_fake), N);

    /* Sequential calls on one thread reuse the pooled keep-alive connection. */
    int conns = fake_openai_connections(g_fake);
    for (int i = 0; i < 3; i++) {
        sink s;
        sink_init(&s);
        wrk_result res;
        run(b, default_msgs, NDEFAULT, 10000, NULL, &s, &res);
        ck_assert_int_eq(res.outcome, WRK_DONE);
        sink_fini(&s);
    }
    ck_assert_int_eq(fake_openai_requests(g_fake), N + 3);
    ck_assert_int_eq(fake_openai_connections(g_fake), conns);
    wrk_backend_destroy(b);
}
END_TEST

START_TEST(test_fake_stop_while_hanging)
{
    fake_openai_set_mode(g_fake, FAKE_OPENAI_HANG_AFTER_HEADERS);
    wrk_backend *b = make_openai(NULL);
    call_thread t = {.b = b, .msgs = default_msgs, .nmsgs = NDEFAULT, .rel_deadline = 60000};
    sink_init(&t.s);
    pthread_t th;
    ck_assert_int_eq(pthread_create(&th, NULL, call_main, &t), 0);
    ck_assert_int_eq(fake_openai_wait_requests(g_fake, 1, 10000), 0);
    int64_t t0 = sl_mono_ms();
    fake_openai_stop(g_fake);
    g_fake = NULL;
    ck_assert_int_lt(sl_mono_ms() - t0, SLACK_MS);
    pthread_join(th, NULL);
    /* The stream broke before [DONE]: worth a retry. */
    ck_assert_msg(t.res.outcome == WRK_TRANSIENT, "%s: %s", wrk_outcome_str(t.res.outcome),
                  t.res.error);
    ck_assert_int_lt(t.took, SLACK_MS + 10000);
    sink_fini(&t.s);
    wrk_backend_destroy(b);
}
END_TEST

static Suite *backend_suite(void)
{
    Suite *s = suite_create("wrk_backend");
    TCase *echo = tcase_create("echo");
    tcase_add_test(echo, test_echo_exact_text);
    tcase_add_test(echo, test_echo_answers_last_user_message);
    tcase_add_test(echo, test_echo_deterministic);
    tcase_add_test(echo, test_echo_deadline);
    tcase_add_test(echo, test_echo_cancel);
    tcase_add_test(echo, test_echo_cancel_while_sleeping);
    tcase_add_test(echo, test_echo_callback_abort);
    tcase_add_test(echo, test_deadline_already_past);
    tcase_add_test(echo, test_create_errors);
    suite_add_tcase(s, echo);

    TCase *oa = tcase_create("openai");
    tcase_add_checked_fixture(oa, fake_setup, fake_teardown);
    tcase_set_timeout(oa, 30);
    tcase_add_test(oa, test_openai_normal);
    tcase_add_test(oa, test_openai_url_forms_and_no_key);
    tcase_add_test(oa, test_openai_slow_hits_deadline);
    tcase_add_test(oa, test_openai_hang_after_headers);
    tcase_add_test(oa, test_openai_http_errors);
    tcase_add_test(oa, test_openai_malformed_and_error_event);
    tcase_add_test(oa, test_openai_reset_mid_stream);
    tcase_add_test(oa, test_openai_json_answer);
    tcase_add_test(oa, test_openai_usage_reported_or_not);
    tcase_add_test(oa, test_openai_server_without_stream_options);
    tcase_add_test(oa, test_openai_connect_refused);
    tcase_add_test(oa, test_openai_cancel_mid_stream);
    tcase_add_test(oa, test_openai_cancel_while_hanging);
    tcase_add_test(oa, test_openai_callback_abort_and_precancel);
    tcase_add_test(oa, test_openai_concurrent_calls_and_reuse);
    tcase_add_test(oa, test_fake_stop_while_hanging);
    suite_add_tcase(s, oa);
    return s;
}

int main(void)
{
    if (wrk_backend_global_init() != SL_OK) {
        fprintf(stderr, "wrk_backend_global_init failed\n");
        return EXIT_FAILURE;
    }
    SRunner *sr = srunner_create(backend_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    wrk_backend_global_cleanup();
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
