/* Token usage and per-tenant quotas through the whole stack (issue 16,
 * items 2 and 3): the usage on every final reply (estimated with echo;
 * from the model's report with the OpenAI-compatible backend, estimated
 * when it reports none), sluice_tokens_total on the worker's /metrics,
 * `sluicectl usage`, a quota that refuses with busy quota and recovers
 * after retry_after_ms while another tenant is served, and a bad
 * SLUICE_TENANT_QUOTAS refused at start. Real nats-server, real binaries,
 * the fake OpenAI-compatible server, a real WebSocket client. */
#include <nats/nats.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "fake_openai.h"
#include "hx.h"
#include "sl_json.h"
#include "sl_streams.h"

#define WAIT_MS 20000

static void stop_clean(hx_stack *s)
{
    bool clean = false;

    HX_OK(s, hx_stack_stop_all_gracefully(s, &clean));
    HX_ASSERT_MSG(s, clean, "a process did not exit cleanly (exit code or sanitizer report)");
    hx_stack_destroy(s);
}

typedef struct want_to {
    const char *to;
} want_to;

/* The final reply to, or a busy event about, message `to`. */
static bool reply_or_busy(const cJSON *f, void *ud)
{
    const want_to *w = ud;
    const char *type = hx_json_str(f, "type"), *kind = hx_json_str(f, "kind");
    const char *to = hx_json_str(f, "to");

    return type != NULL && strcmp(type, "event") == 0 && kind != NULL && to != NULL &&
           strcmp(to, w->to) == 0 && (strcmp(kind, "reply") == 0 || strcmp(kind, "busy") == 0);
}

/* Sends text as message id on the private channel and returns the final
 * reply or busy event about it (caller frees). */
static cJSON *ask(hx_stack *s, hx_sl_client *c, const char *id, const char *text)
{
    want_to w = {.to = id};
    cJSON *acc = hx_sl_send_wait(c, id, NULL, text, 10000);
    cJSON *f;

    HX_ASSERT(s, acc != NULL);
    HX_ASSERT_MSG(s, strcmp(hx_json_str(acc, "type"), "accepted") == 0, "%s: not accepted", id);
    cJSON_Delete(acc);
    f = hx_ws_expect_fn(hx_sl_ws(c), reply_or_busy, &w, WAIT_MS);
    HX_ASSERT_MSG(s, f != NULL, "%s: no reply or busy within %d ms", id, WAIT_MS);
    return f;
}

/* The usage of a final reply, checked for shape. */
typedef struct usage {
    int64_t in, out;
    bool estimated;
} usage;

static usage usage_of(hx_stack *s, const cJSON *reply)
{
    const cJSON *u = cJSON_GetObjectItemCaseSensitive(reply, "usage");
    usage r = {0};

    HX_ASSERT_MSG(s, strcmp(hx_json_str(reply, "kind"), "reply") == 0, "not a reply: %s",
                  cJSON_PrintUnformatted(reply));
    HX_ASSERT_MSG(s, cJSON_IsObject(u), "final reply without usage: %s",
                  cJSON_PrintUnformatted(reply));
    HX_ASSERT(s, sl_json_get_int(cJSON_GetObjectItemCaseSensitive(u, "input_tokens"), 0,
                                 SL_JSON_INT_MAX, &r.in));
    HX_ASSERT(s, sl_json_get_int(cJSON_GetObjectItemCaseSensitive(u, "output_tokens"), 0,
                                 SL_JSON_INT_MAX, &r.out));
    r.estimated = hx_json_true(u, "estimated");
    /* "estimated" appears only when true. */
    HX_ASSERT(s, r.estimated || cJSON_GetObjectItemCaseSensitive(u, "estimated") == NULL);
    return r;
}

/* The value of the series `series` (name{labels}) on a process's /metrics,
 * -1 when absent. */
static long long metric(hx_stack *s, hx_tier tier, const char *series)
{
    char *body = NULL, *p;
    long long v = -1;
    size_t n = strlen(series);

    if (hx_http_get(NULL, hx_stack_admin_port(s, tier, 0), "/metrics", 5000, &body) != 200) {
        free(body);
        return -1;
    }
    for (p = body; p != NULL && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL) {
        if (strncmp(p, series, n) == 0 && p[n] == ' ') {
            v = atoll(p + n + 1);
            break;
        }
    }
    free(body);
    return v;
}

typedef struct metric_want {
    hx_stack *s;
    const char *series;
    long long want;
} metric_want;

static bool metric_is(void *ud)
{
    metric_want *m = ud;
    return metric(m->s, HX_WORKER, m->series) == m->want;
}

/* Runs a command and returns its exit status, its output in *out (caller
 * frees). */
static int run(const char *cmd, char **out)
{
    FILE *p = popen(cmd, "r");
    size_t len = 0, cap = 8192;
    char *buf = calloc(1, cap);
    int status;

    ck_assert_ptr_nonnull(p);
    while (len + 1 < cap) {
        size_t r = fread(buf + len, 1, cap - len - 1, p);
        if (r == 0)
            break;
        len += r;
    }
    status = pclose(p);
    *out = buf;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

typedef struct ctl_want {
    hx_stack *s;
    const char *tenant;
    const char *line; /* expected in the output */
    char *last;       /* the last output */
} ctl_want;

static bool ctl_usage_shows(void *ud)
{
    ctl_want *w = ud;
    char *cmd = hx_strf("SLUICE_NATS_URL='%s' '%s/sluicectl' usage --tenant %s 2>&1",
                        hx_stack_nats_url(w->s), hx_stack_bin_dir(w->s), w->tenant);
    int rc;

    free(w->last);
    w->last = NULL;
    rc = run(cmd, &w->last);
    free(cmd);
    return rc == 0 && strstr(w->last, w->line) != NULL;
}

/* ---- echo: estimated usage, /metrics, sluicectl usage ---------------------- */

START_TEST(test_echo_usage_metrics_and_sluicectl)
{
    hx_stack_cfg cfg = {.gateways = 1, .orchestrators = 1, .workers = 1};
    hx_stack *s = NULL;
    hx_sl_client *c = NULL;
    const char *texts[] = {"one two three four five six seven eight nine", /* 44 -> 11 */
                           "h\xc3\xa9llo"};                                /* 5 code points -> 2 */
    const int64_t outs[] = {11, 2};
    int64_t sum_in = 0, sum_out = 0;
    char *tok;

    HX_OK(NULL, hx_stack_start(&s, &cfg));
    tok = hx_token(s, "acme", "alice", 300);
    HX_OK(s, hx_sl_connect(&c, hx_stack_gw_port(s, 0), tok, 10000));
    for (int i = 0; i < 2; i++) {
        char id[16];
        snprintf(id, sizeof(id), "c-%d", i + 1);
        cJSON *r = ask(s, c, id, texts[i]);
        usage u = usage_of(s, r);
        HX_ASSERT_MSG(s, u.estimated, "echo usage must be estimated");
        HX_ASSERT_MSG(s, u.out == outs[i], "%s: output_tokens %lld, want %lld", id,
                      (long long)u.out, (long long)outs[i]);
        /* At least the system prompt and the message, 4 each plus text. */
        HX_ASSERT_MSG(s, u.in > 8 + outs[i], "%s: input_tokens %lld", id, (long long)u.in);
        sum_in += u.in;
        sum_out += u.out;
        cJSON_Delete(r);
    }

    /* The counters add up the replies' usage (counted once each reply is
     * stored, so wait for them). */
    metric_want m = {
        s, "sluice_tokens_total{tenant=\"acme\",agent=\"assistant\",direction=\"input\"}", sum_in};
    HX_ASSERT_MSG(s, hx_wait_until(metric_is, &m, 5000),
                  "input tokens on /metrics: %lld, want %lld", metric(s, HX_WORKER, m.series),
                  (long long)sum_in);
    m.series = "sluice_tokens_total{tenant=\"acme\",agent=\"assistant\",direction=\"output\"}";
    m.want = sum_out;
    HX_ASSERT_MSG(s, hx_wait_until(metric_is, &m, 5000),
                  "output tokens on /metrics: %lld, want %lld", metric(s, HX_WORKER, m.series),
                  (long long)sum_out);

    /* sluicectl usage: the day's totals and the agent's line (the worker
     * flushes to KV every 200 ms). */
    char *line = hx_strf("input_tokens=%lld output_tokens=%lld replies=2", (long long)sum_in,
                         (long long)sum_out);
    ctl_want w = {.s = s, .tenant = "acme", .line = line};
    HX_ASSERT_MSG(s, hx_wait_until(ctl_usage_shows, &w, 10000), "sluicectl usage: %s",
                  w.last ? w.last : "(nothing)");
    HX_ASSERT_MSG(s, strstr(w.last, "agent assistant") != NULL, "no agent line: %s", w.last);
    HX_ASSERT_MSG(s, strstr(w.last, "total") != NULL, "no total line: %s", w.last);
    free(w.last);
    /* Another tenant has nothing. */
    w = (ctl_want){.s = s, .tenant = "globex", .line = "input_tokens=0 output_tokens=0 replies=0"};
    HX_ASSERT_MSG(s, ctl_usage_shows(&w), "sluicectl usage for globex: %s", w.last);
    free(w.last);
    free(line);

    hx_sl_destroy(c);
    free(tok);
    stop_clean(s);
}
END_TEST

/* ---- the OpenAI-compatible backend: reported, then estimated ---------------- */

START_TEST(test_openai_usage_reported_or_estimated)
{
    fake_openai *fake = NULL;
    int port = 0;
    char url[96];
    const char *wenv[4];
    hx_stack_cfg cfg = {.gateways = 1, .orchestrators = 1, .workers = 1};
    hx_stack *s = NULL;
    hx_sl_client *c = NULL;
    char *tok;
    cJSON *r;
    usage u;

    ck_assert_int_eq(fake_openai_start(&fake, &port), 0);
    snprintf(url, sizeof(url), "SLUICE_MODEL_URL=http://127.0.0.1:%d", port);
    wenv[0] = "SLUICE_MODEL_BACKEND=openai";
    wenv[1] = url;
    wenv[2] = NULL;
    cfg.tier_env[HX_WORKER] = wenv;
    HX_OK(NULL, hx_stack_start(&s, &cfg));
    tok = hx_token(s, "acme", "alice", 300);
    HX_OK(s, hx_sl_connect(&c, hx_stack_gw_port(s, 0), tok, 10000));

    /* The model reports usage: its numbers, not estimated. */
    fake_openai_set_usage(fake, 41, 9);
    r = ask(s, c, "c-1", "what is the weather");
    u = usage_of(s, r);
    HX_ASSERT_MSG(s, !u.estimated && u.in == 41 && u.out == 9, "usage %lld/%lld%s", (long long)u.in,
                  (long long)u.out, u.estimated ? " estimated" : "");
    HX_ASSERT(s, strcmp(hx_json_str(r, "text"), "Hello from the fake model.") == 0);
    cJSON_Delete(r);

    /* It reports none: estimated, the output from the text (26 -> 7). */
    fake_openai_set_usage(fake, -1, -1);
    r = ask(s, c, "c-2", "and tomorrow");
    u = usage_of(s, r);
    HX_ASSERT_MSG(s, u.estimated && u.out == 7 && u.in > 0, "usage %lld/%lld%s", (long long)u.in,
                  (long long)u.out, u.estimated ? " estimated" : "");
    cJSON_Delete(r);

    metric_want m = {
        s, "sluice_tokens_total{tenant=\"acme\",agent=\"assistant\",direction=\"output\"}", 9 + 7};
    HX_ASSERT_MSG(s, hx_wait_until(metric_is, &m, 5000), "output tokens on /metrics: %lld",
                  metric(s, HX_WORKER, m.series));

    hx_sl_destroy(c);
    free(tok);
    stop_clean(s);
    fake_openai_stop(fake);
}
END_TEST

/* ---- quotas ------------------------------------------------------------------ */

typedef struct kv_sum {
    hx_stack *s;
    const char *tenant;
    int64_t want;
    int64_t have;
} kv_sum;

/* Sums the tenant's seconds in sluice_quota (what every orchestrator
 * watches) and compares with want. */
static bool quota_kv_reaches(void *ud)
{
    kv_sum *k = ud;
    natsConnection *nc = NULL;
    jsCtx *js = NULL;
    kvStore *kv = NULL;
    kvWatcher *w = NULL;
    kvWatchOptions o;
    char filter[80];

    k->have = 0;
    snprintf(filter, sizeof(filter), "%s.>", k->tenant);
    kvWatchOptions_Init(&o);
    if (natsConnection_ConnectTo(&nc, hx_stack_nats_url(k->s)) == NATS_OK &&
        natsConnection_JetStream(&js, nc, NULL) == NATS_OK &&
        js_KeyValue(&kv, js, SL_KV_QUOTA) == NATS_OK &&
        kvStore_Watch(&w, kv, filter, &o) == NATS_OK) {
        for (;;) {
            kvEntry *e = NULL;
            if (kvWatcher_Next(&e, w, 2000) != NATS_OK || e == NULL)
                break;
            cJSON *v = cJSON_ParseWithLength(kvEntry_ValueString(e), (size_t)kvEntry_ValueLen(e));
            int64_t in = 0, out = 0;
            (void)sl_json_get_int(cJSON_GetObjectItem(v, "in"), 0, SL_JSON_INT_MAX, &in);
            (void)sl_json_get_int(cJSON_GetObjectItem(v, "out"), 0, SL_JSON_INT_MAX, &out);
            k->have += in + out;
            cJSON_Delete(v);
            kvEntry_Destroy(e);
        }
    }
    kvWatcher_Destroy(w);
    kvStore_Destroy(kv);
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
    return k->have >= k->want;
}

static bool reply_or_token_to(const hx_ws *ws, const char *to)
{
    for (size_t i = 0; i < hx_ws_backlog_count(ws); i++) {
        const cJSON *f = hx_ws_backlog_get(ws, i);
        const char *kind = hx_json_str(f, "kind"), *t = hx_json_str(f, "to");
        if (kind != NULL && t != NULL && strcmp(t, to) == 0 &&
            (strcmp(kind, "reply") == 0 || strcmp(kind, "token") == 0))
            return true;
    }
    return false;
}

START_TEST(test_quota_refuses_then_recovers)
{
    /* acme may use 10 tokens per 5 s window; globex has no quota. */
    const char *oenv[] = {"SLUICE_TENANT_QUOTAS=acme=10,globex=0", "SLUICE_TENANT_QUOTA_WINDOW_S=5",
                          NULL};
    hx_stack_cfg cfg = {.gateways = 1, .orchestrators = 1, .workers = 1};
    hx_stack *s = NULL;
    hx_sl_client *a = NULL, *g = NULL;
    char *ta, *tg;
    cJSON *r;
    int64_t retry = 0;

    cfg.tier_env[HX_ORCHESTRATOR] = oenv;
    HX_OK(NULL, hx_stack_start(&s, &cfg));
    ta = hx_token(s, "acme", "alice", 300);
    tg = hx_token(s, "globex", "gina", 300);
    HX_OK(s, hx_sl_connect(&a, hx_stack_gw_port(s, 0), ta, 10000));
    HX_OK(s, hx_sl_connect(&g, hx_stack_gw_port(s, 0), tg, 10000));

    /* Under budget: served; its usage puts acme over budget. */
    r = ask(s, a, "c-1", "hello there friends of mine");
    usage u = usage_of(s, r);
    HX_ASSERT(s, u.in + u.out >= 10);
    cJSON_Delete(r);
    kv_sum k = {.s = s, .tenant = "acme", .want = u.in + u.out};
    HX_ASSERT_MSG(s, hx_wait_until(quota_kv_reaches, &k, 10000),
                  "sluice_quota holds %lld tokens of acme, want %lld", (long long)k.have,
                  (long long)k.want);

    /* Over budget: busy quota with the time until the window frees,
     * counted from when the orchestrator decided (before it arrived). */
    r = ask(s, a, "c-2", "are you there");
    int64_t t_busy = hx_now_ms();
    HX_ASSERT_MSG(s, strcmp(hx_json_str(r, "kind"), "busy") == 0, "not refused: %s",
                  cJSON_PrintUnformatted(r));
    HX_ASSERT(s, strcmp(hx_json_str(r, "reason"), "quota") == 0);
    HX_ASSERT(s, strcmp(hx_json_str(r, "agent"), "assistant") == 0);
    retry = hx_json_int(r, "retry_after_ms", -1);
    HX_ASSERT_MSG(s, retry > 0 && retry <= 5000, "retry_after_ms %lld", (long long)retry);
    cJSON_Delete(r);

    /* Another tenant is served meanwhile. */
    r = ask(s, g, "g-1", "hi from globex");
    HX_ASSERT_MSG(s, strcmp(hx_json_str(r, "kind"), "reply") == 0, "globex refused: %s",
                  cJSON_PrintUnformatted(r));
    cJSON_Delete(r);
    HX_ASSERT(s, metric(s, HX_ORCHESTRATOR, "sluice_orch_busy_total{reason=\"quota\"}") == 1);

    /* After retry_after_ms, acme is served again. */
    int64_t wait = t_busy + retry - hx_now_ms();
    if (wait > 0)
        hx_sleep_ms((int)wait);
    r = ask(s, a, "c-3", "back again");
    HX_ASSERT_MSG(s, strcmp(hx_json_str(r, "kind"), "reply") == 0,
                  "still refused after retry_after_ms: %s", cJSON_PrintUnformatted(r));
    (void)usage_of(s, r);
    cJSON_Delete(r);
    /* The refused message was never queued: c-3 was answered and c-2 never
     * got a token or a reply. */
    HX_ASSERT(s, !reply_or_token_to(hx_sl_ws(a), "c-2"));

    hx_sl_destroy(a);
    hx_sl_destroy(g);
    free(ta);
    free(tg);
    stop_clean(s);
}
END_TEST

START_TEST(test_bad_quotas_refused_at_start)
{
    const char *bad[][2] = {
        {"SLUICE_TENANT_QUOTAS='acme=x'",
         "SLUICE_TENANT_QUOTAS: tokens of 'acme' must be an integer"},
        {"SLUICE_TENANT_QUOTAS='acme=5,,b=1'", "SLUICE_TENANT_QUOTAS: empty item"},
        {"SLUICE_TENANT_QUOTAS='acme=5,acme=6'", "SLUICE_TENANT_QUOTAS: tenant 'acme' is listed"},
        {"SLUICE_TENANT_QUOTAS='acme'", "SLUICE_TENANT_QUOTAS: 'acme' is not tenant=tokens"},
        {"SLUICE_TENANT_QUOTAS='a.b=5'", "SLUICE_TENANT_QUOTAS: 'a.b' is not a valid tenant"},
        {"SLUICE_TENANT_TOKENS_PER_MIN=-1", "SLUICE_TENANT_TOKENS_PER_MIN"},
        {"SLUICE_TENANT_QUOTA_WINDOW_S=0", "SLUICE_TENANT_QUOTA_WINDOW_S"},
    };

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        /* No NATS is needed: the configuration is checked first. timeout:
         * an orchestrator that accepted the value would run until stopped. */
        char *cmd = hx_strf("SLUICE_NATS_URL=nats://127.0.0.1:1 SLUICE_ADMIN_LISTEN=127.0.0.1:1 %s "
                            "timeout -s KILL 15 '%s/sluice-orchestrator' 2>&1",
                            bad[i][0], hx_stack_default_bin_dir());
        char *out = NULL;
        int rc = run(cmd, &out);
        ck_assert_msg(rc == 2, "%s: exit status %d, output: %s", bad[i][0], rc, out);
        ck_assert_msg(strstr(out, bad[i][1]) != NULL, "%s: the error does not say %s: %s",
                      bad[i][0], bad[i][1], out);
        free(out);
        free(cmd);
    }
}
END_TEST

int main(void)
{
    Suite *su = suite_create("usage");
    TCase *tc = tcase_create("usage and quotas");
    SRunner *sr;
    int failed;

    tcase_set_timeout(tc, 180);
    tcase_add_test(tc, test_bad_quotas_refused_at_start);
    tcase_add_test(tc, test_echo_usage_metrics_and_sluicectl);
    tcase_add_test(tc, test_openai_usage_reported_or_estimated);
    tcase_add_test(tc, test_quota_refuses_then_recovers);
    suite_add_tcase(su, tc);
    sr = srunner_create(su);
    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
