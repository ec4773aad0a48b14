/* The first path through all tiers (issue 2): hello with a JWT -> welcome;
 * send on the private channel -> accepted after the JetStream ack -> the
 * assistant agent's echo streams token events and one final reply on
 * channel "s" with increasing seq. Real nats-server, real binaries, a real
 * WebSocket client. */
#include <stdlib.h>
#include <string.h>

#include "hx.h"
#include "sl_subject.h"

static hx_stack *start_stack(int echo_delay_ms)
{
    hx_stack_cfg cfg;
    hx_stack *s = NULL;

    memset(&cfg, 0, sizeof(cfg));
    cfg.gateways = 1;
    cfg.orchestrators = 1;
    cfg.workers = 1;
    cfg.echo_token_delay_ms = echo_delay_ms;
    /* Every reply must stream (tokens counted), however late a slow machine
     * runs the first tokens. */
    static const char *const wenv[] = {"SLUICE_COALESCE_FIRST_MS=0", NULL};
    cfg.tier_env[HX_WORKER] = wenv;
    HX_OK(NULL, hx_stack_start(&s, &cfg));
    return s;
}

START_TEST(test_echo_reply_streams_on_session_channel)
{
    hx_stack *s = start_stack(5);
    char *tok = hx_token(s, "acme", "alice", 300);
    hx_sl_client *c = NULL;
    cJSON *acc, *f;
    const char *text = "the quick brown fox jumps over the lazy dog";
    char streamed[512] = "";
    int64_t last_seq = 0;
    int tokens = 0, finals = 0;
    int64_t deadline;

    HX_ASSERT(s, tok != NULL);
    HX_OK(s, hx_sl_connect(&c, hx_stack_gw_port(s, 0), tok, 10000));
    HX_ASSERT(s, sl_id_valid(hx_sl_session(c)));
    HX_ASSERT(s, cJSON_IsObject(cJSON_GetObjectItem(hx_sl_welcome(c), "limits")));

    acc = hx_sl_send_wait(c, "c-1", NULL, text, 10000);
    HX_ASSERT(s, acc != NULL);
    HX_ASSERT_MSG(s, strcmp(cJSON_GetObjectItem(acc, "type")->valuestring, "accepted") == 0,
                  "expected accepted, got %s", cJSON_PrintUnformatted(acc));
    HX_ASSERT(s, cJSON_IsString(cJSON_GetObjectItem(acc, "event")));
    HX_ASSERT(s, cJSON_IsFalse(cJSON_GetObjectItem(acc, "duplicate")));
    cJSON_Delete(acc);

    /* Read events until the final reply: the user's message, tokens, reply. */
    deadline = hx_now_ms() + 20000;
    while (finals == 0 && hx_now_ms() < deadline) {
        const char *kind;
        int64_t seq;
        f = hx_ws_recv_json(hx_sl_ws(c), 1000);
        if (f == NULL)
            continue;
        if (strcmp(cJSON_GetObjectItem(f, "type")->valuestring, "event") != 0) {
            cJSON_Delete(f);
            continue;
        }
        HX_ASSERT(s, strcmp(cJSON_GetObjectItem(f, "ch")->valuestring, "s") == 0);
        seq = (int64_t)cJSON_GetObjectItem(f, "seq")->valuedouble;
        HX_ASSERT_MSG(s, seq > last_seq, "seq %lld after %lld", (long long)seq,
                      (long long)last_seq);
        last_seq = seq;
        kind = cJSON_GetObjectItem(f, "kind")->valuestring;
        if (strcmp(kind, "token") == 0) {
            HX_ASSERT(s, strcmp(cJSON_GetObjectItem(f, "to")->valuestring, "c-1") == 0);
            HX_ASSERT(s, strcmp(cJSON_GetObjectItem(f, "agent")->valuestring, "assistant") == 0);
            strncat(streamed, cJSON_GetObjectItem(f, "text")->valuestring,
                    sizeof(streamed) - strlen(streamed) - 1);
            tokens++;
        } else if (strcmp(kind, "reply") == 0) {
            HX_ASSERT(s, cJSON_IsTrue(cJSON_GetObjectItem(f, "final")));
            HX_ASSERT(s, strcmp(cJSON_GetObjectItem(f, "to")->valuestring, "c-1") == 0);
            HX_ASSERT_MSG(s, strcmp(cJSON_GetObjectItem(f, "text")->valuestring, text) == 0,
                          "final text '%s'", cJSON_GetObjectItem(f, "text")->valuestring);
            finals++;
        } else if (strcmp(kind, "message") == 0) {
            HX_ASSERT(s, strcmp(cJSON_GetObjectItem(f, "text")->valuestring, text) == 0);
        }
        cJSON_Delete(f);
    }
    HX_ASSERT_MSG(s, finals == 1, "no final reply within 20 s");
    HX_ASSERT_MSG(s, tokens >= 2, "expected streamed tokens, got %d", tokens);
    HX_ASSERT_MSG(s, strcmp(streamed, text) == 0, "tokens assemble to '%s'", streamed);
    HX_ASSERT(s, hx_sl_get_counts(c).duplicates == 0);

    hx_sl_destroy(c);
    free(tok);
    {
        bool clean = false;
        HX_OK(s, hx_stack_stop_all_gracefully(s, &clean));
        HX_ASSERT_MSG(s, clean, "a process did not exit cleanly (exit code or sanitizer report)");
    }
    hx_stack_destroy(s);
}
END_TEST

/* The value of a series on a tier's /metrics, -1 when it cannot be read. */
static double metric(hx_stack *s, hx_tier tier, const char *series)
{
    char *body = NULL;
    double v = -1;
    size_t n = strlen(series);

    if (hx_http_get(NULL, hx_stack_admin_port(s, tier, 0), "/metrics", 2000, &body) != 200) {
        free(body);
        return -1;
    }
    for (const char *p = body; p != NULL && *p != '\0';) {
        const char *eol = strchr(p, '\n');
        if (strncmp(p, series, n) == 0 && p[n] == ' ') {
            v = strtod(p + n + 1, NULL);
            break;
        }
        p = eol != NULL ? eol + 1 : NULL;
    }
    free(body);
    return v;
}

/* Waits until the series reaches want or timeout_ms passes; returns the
 * last value read. */
static double wait_metric(hx_stack *s, hx_tier tier, const char *series, double want,
                          int timeout_ms)
{
    int64_t end = hx_now_ms() + timeout_ms;
    double v = metric(s, tier, series);

    while (v < want && hx_now_ms() < end) {
        hx_sleep_ms(20);
        v = metric(s, tier, series);
    }
    return v;
}

#define AGENT_EVENTS "sluice_orch_events_total{kind=\"agent\"}"
#define JOBS_OK      "sluice_wrk_jobs_total{outcome=\"ok\"}"
#define SKIPPED      "sluice_wrk_agent_messages_skipped_total"

/* With the default agents (assistant: all, summarizer: mention) an answer
 * can be routed only when it mentions @summarizer: the work request says
 * so and the worker posts no agent message for the others (issue 14). One
 * plain message: the assistant's answer is not posted back. One that
 * mentions @summarizer: the assistant's echo mentions it too, so it is
 * posted and the summarizer answers it (the chain as before); the
 * summarizer's own answers could be routed by nobody. */
START_TEST(test_agent_message_only_when_routable)
{
    hx_stack *s = start_stack(0);
    char *tok = hx_token(s, "acme", "alice", 300);
    hx_sl_client *c = NULL;
    cJSON *f;

    HX_ASSERT(s, tok != NULL);
    HX_OK(s, hx_sl_connect(&c, hx_stack_gw_port(s, 0), tok, 10000));
    f = hx_sl_send_wait(c, "c-1", NULL, "hello there", 10000);
    HX_ASSERT(s, f != NULL);
    cJSON_Delete(f);
    f = hx_sl_wait_reply(c, "c-1", 20000);
    HX_ASSERT_MSG(s, f != NULL, "no final reply to c-1");
    cJSON_Delete(f);
    HX_ASSERT(s, wait_metric(s, HX_WORKER, JOBS_OK, 1, 10000) == 1);
    HX_ASSERT_MSG(s, metric(s, HX_WORKER, SKIPPED) == 1, "skipped %g",
                  metric(s, HX_WORKER, SKIPPED));

    /* Assistant and summarizer answer c-2; the summarizer answers the
     * assistant's answer too: four jobs in all. */
    f = hx_sl_send_wait(c, "c-2", NULL, "hi @summarizer", 10000);
    HX_ASSERT(s, f != NULL);
    cJSON_Delete(f);
    HX_ASSERT_MSG(s, wait_metric(s, HX_WORKER, JOBS_OK, 4, 20000) == 4, "jobs ok %g",
                  metric(s, HX_WORKER, JOBS_OK));
    HX_ASSERT_MSG(s, metric(s, HX_WORKER, SKIPPED) == 3, "skipped %g",
                  metric(s, HX_WORKER, SKIPPED));
    /* Every agent message was stored before its job's ack, so the
     * orchestrator reads exactly one (a second would come within this
     * wait). */
    HX_ASSERT_MSG(s, wait_metric(s, HX_ORCHESTRATOR, AGENT_EVENTS, 2, 2000) == 1,
                  "agent messages processed: %g", metric(s, HX_ORCHESTRATOR, AGENT_EVENTS));

    hx_sl_destroy(c);
    free(tok);
    {
        bool clean = false;
        HX_OK(s, hx_stack_stop_all_gracefully(s, &clean));
        HX_ASSERT_MSG(s, clean, "a process did not exit cleanly (exit code or sanitizer report)");
    }
    hx_stack_destroy(s);
}
END_TEST

START_TEST(test_bad_token_is_refused)
{
    hx_stack *s = start_stack(0);
    char *forged =
        hx_token_secret("not-the-right-secret-at-all-0123", "acme", "mallory", 300, NULL, -1);
    hx_sl_client *c = NULL;

    HX_ASSERT(s, forged != NULL);
    HX_ASSERT(s, hx_sl_connect(&c, hx_stack_gw_port(s, 0), forged, 10000) == SL_ERR_AUTH);
    HX_ASSERT(s, c == NULL);
    free(forged);
    hx_stack_destroy(s);
}
END_TEST

int main(void)
{
    Suite *su = suite_create("e2e");
    TCase *tc = tcase_create("first path");
    SRunner *sr;
    int failed;

    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_echo_reply_streams_on_session_channel);
    tcase_add_test(tc, test_bad_token_is_refused);
    tcase_add_test(tc, test_agent_message_only_when_routable);
    suite_add_tcase(su, tc);
    sr = srunner_create(su);
    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? 0 : 1;
}
