/* Unit tests of the orchestrator's configuration (orch_config): defaults
 * and what reaches the loop, flags over the environment, every bound
 * refused with a message naming its variable, and bad agents files. */
#include <check.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "orch_config.h"

static orch_config cfg;

static const char *const vars[] = {
    "SLUICE_AGENTS_FILE",
    "SLUICE_HOP_LIMIT",
    "SLUICE_CAUSAL_WAIT_MS",
    "SLUICE_MODEL_TIMEOUT_MS",
    "SLUICE_CAUSAL_PARK_PER_SESSION",
    "SLUICE_CAUSAL_PARK_PER_TENANT",
    "SLUICE_SWEEP_MS",
    "SLUICE_LOG_LEVEL",
    "SLUICE_TENANT_QUEUE_MAX",
    "SLUICE_TENANT_TOKENS_PER_MIN",
    "SLUICE_TENANT_QUOTAS",
    "SLUICE_TENANT_QUOTA_WINDOW_S",
};

static void clear_env(void)
{
    for (size_t i = 0; i < sizeof(vars) / sizeof(vars[0]); i++)
        unsetenv(vars[i]);
}

/* Loads with argv = {"sluice-orchestrator", args...} (NULL-terminated). */
static sl_status load_args(char **args, char *err, size_t errlen)
{
    char *argv[8] = {"sluice-orchestrator"};
    int argc = 1;
    bool help = true;
    sl_status st;

    while (args != NULL && args[argc - 1] != NULL && argc < 7) {
        argv[argc] = args[argc - 1];
        argc++;
    }
    st = orch_config_load(&cfg, argc, argv, &help, err, errlen);
    ck_assert(!help);
    return st;
}

static sl_status load(char *err, size_t errlen)
{
    return load_args(NULL, err, errlen);
}

/* Writes text to a new temporary file; the caller unlinks path. */
static void write_tmp(char *path, const char *text)
{
    int fd = mkstemp(path);
    FILE *f;

    ck_assert_int_ge(fd, 0);
    f = fdopen(fd, "w");
    ck_assert_ptr_nonnull(f);
    ck_assert_int_eq(fputs(text, f) >= 0, 1);
    ck_assert_int_eq(fclose(f), 0);
}

START_TEST(test_defaults_reach_the_loop)
{
    char err[512] = "";
    orch_loop_cfg lc;

    clear_env();
    ck_assert_msg(load(err, sizeof(err)) == SL_OK, "%s", err);
    ck_assert_int_eq(cfg.log_level, SL_LOG_INFO);
    ck_assert_ptr_null(cfg.agents_file);
    ck_assert_ptr_nonnull(cfg.agents);
    ck_assert_uint_eq(cfg.agents->n, 2); /* built in: assistant + summarizer */
    ck_assert_ptr_nonnull(orch_agents_find(cfg.agents, "assistant", NULL));
    ck_assert_ptr_nonnull(orch_agents_find(cfg.agents, "summarizer", NULL));
    ck_assert_str_eq(cfg.common.admin_listen, "0.0.0.0:9091");
    lc = orch_config_loop(&cfg);
    ck_assert_int_eq(lc.hop_limit, 3);
    ck_assert_int_eq(lc.causal_wait_ms, 5000);
    ck_assert_int_eq(lc.model_timeout_ms, 10000);
    ck_assert_int_eq(lc.park_per_session, 32);
    ck_assert_int_eq(lc.park_per_tenant, 1000);
    ck_assert_int_eq(lc.sweep_ms, 5000);
    ck_assert_int_eq(lc.tenant_queue_max, cfg.common.tenant_queue_max);
    ck_assert_int_gt(lc.tenant_queue_max, 0);
    ck_assert_int_eq(lc.batch, 64);
    ck_assert_int_eq(lc.fetch_timeout_ms, 500);
    ck_assert_int_eq(lc.tokens_per_window, 0); /* no quota */
    ck_assert_uint_eq(lc.nquota_rules, 0);
    ck_assert_int_eq(lc.quota_window_s, 60);
    orch_config_free(&cfg);
    ck_assert_ptr_null(cfg.agents);
    orch_config_free(NULL);
}
END_TEST

START_TEST(test_flag_beats_environment)
{
    char err[512] = "";
    char *args[] = {"--hop-limit=7", "--causal-wait-ms", "1234", "--log-level=debug", NULL};
    orch_loop_cfg lc;

    clear_env();
    setenv("SLUICE_HOP_LIMIT", "5", 1);
    setenv("SLUICE_CAUSAL_WAIT_MS", "999", 1);
    setenv("SLUICE_SWEEP_MS", "250", 1);
    setenv("SLUICE_LOG_LEVEL", "warn", 1);
    ck_assert_msg(load(err, sizeof(err)) == SL_OK, "%s", err);
    lc = orch_config_loop(&cfg);
    ck_assert_int_eq(lc.hop_limit, 5);
    ck_assert_int_eq(lc.causal_wait_ms, 999);
    ck_assert_int_eq(lc.sweep_ms, 250);
    ck_assert_int_eq(cfg.log_level, SL_LOG_WARN);
    orch_config_free(&cfg);

    ck_assert_msg(load_args(args, err, sizeof(err)) == SL_OK, "%s", err);
    lc = orch_config_loop(&cfg);
    ck_assert_int_eq(lc.hop_limit, 7);
    ck_assert_int_eq(lc.causal_wait_ms, 1234);
    ck_assert_int_eq(lc.sweep_ms, 250); /* no flag: the environment's */
    ck_assert_int_eq(cfg.log_level, SL_LOG_DEBUG);
    orch_config_free(&cfg);
    clear_env();
}
END_TEST

START_TEST(test_help)
{
    char *argv[] = {"sluice-orchestrator", "--help", "--hop-limit=1000", NULL};
    char err[512] = "", *text = NULL;
    size_t len = 0;
    bool help = false;
    FILE *out;

    clear_env();
    setenv("SLUICE_LOG_LEVEL", "loud", 1); /* not validated with --help */
    ck_assert_int_eq(orch_config_load(&cfg, 3, argv, &help, err, sizeof(err)), SL_OK);
    ck_assert(help);
    out = open_memstream(&text, &len);
    ck_assert_ptr_nonnull(out);
    orch_config_usage(&cfg, out);
    fclose(out);
    ck_assert_ptr_nonnull(strstr(text, "sluice-orchestrator"));
    for (size_t i = 0; i < sizeof(vars) / sizeof(vars[0]); i++)
        ck_assert_msg(strstr(text, vars[i]) != NULL, "usage does not name %s", vars[i]);
    free(text);
    orch_config_free(&cfg);
    clear_env();
}
END_TEST

START_TEST(test_bounds_refused_and_named)
{
    static const struct {
        const char *var, *value, *want;
    } bad[] = {
        {"SLUICE_HOP_LIMIT", "-1", "SLUICE_HOP_LIMIT (environment): -1 is outside 0..100"},
        {"SLUICE_HOP_LIMIT", "101", "SLUICE_HOP_LIMIT (environment): 101 is outside 0..100"},
        {"SLUICE_HOP_LIMIT", "3x", "SLUICE_HOP_LIMIT (environment): '3x' is not an integer"},
        {"SLUICE_CAUSAL_WAIT_MS", "-1", "SLUICE_CAUSAL_WAIT_MS (environment): -1 is outside"},
        {"SLUICE_CAUSAL_WAIT_MS", "3600001",
         "SLUICE_CAUSAL_WAIT_MS (environment): 3600001 is outside 0..3600000"},
        {"SLUICE_MODEL_TIMEOUT_MS", "0",
         "SLUICE_MODEL_TIMEOUT_MS (environment): 0 is outside 1..3600000"},
        {"SLUICE_MODEL_TIMEOUT_MS", "3600001",
         "SLUICE_MODEL_TIMEOUT_MS (environment): 3600001 is outside 1..3600000"},
        {"SLUICE_CAUSAL_PARK_PER_SESSION", "-1",
         "SLUICE_CAUSAL_PARK_PER_SESSION (environment): -1 is outside 0..100000"},
        {"SLUICE_CAUSAL_PARK_PER_SESSION", "100001",
         "SLUICE_CAUSAL_PARK_PER_SESSION (environment): 100001 is outside 0..100000"},
        {"SLUICE_CAUSAL_PARK_PER_TENANT", "-1",
         "SLUICE_CAUSAL_PARK_PER_TENANT (environment): -1 is outside 0..1000000"},
        {"SLUICE_CAUSAL_PARK_PER_TENANT", "1000001",
         "SLUICE_CAUSAL_PARK_PER_TENANT (environment): 1000001 is outside 0..1000000"},
        {"SLUICE_SWEEP_MS", "99", "SLUICE_SWEEP_MS (environment): 99 is outside 100..3600000"},
        {"SLUICE_SWEEP_MS", "3600001",
         "SLUICE_SWEEP_MS (environment): 3600001 is outside 100..3600000"},
        {"SLUICE_LOG_LEVEL", "loud", "SLUICE_LOG_LEVEL: must be debug, info, warn or error"},
        {"SLUICE_TENANT_TOKENS_PER_MIN", "-1",
         "SLUICE_TENANT_TOKENS_PER_MIN (environment): -1 is outside"},
        {"SLUICE_TENANT_QUOTA_WINDOW_S", "0",
         "SLUICE_TENANT_QUOTA_WINDOW_S (environment): 0 is outside 1..60"},
        {"SLUICE_TENANT_QUOTA_WINDOW_S", "61",
         "SLUICE_TENANT_QUOTA_WINDOW_S (environment): 61 is outside 1..60"},
        {"SLUICE_TENANT_QUOTAS", "acme=x",
         "SLUICE_TENANT_QUOTAS: tokens of 'acme' must be an integer from 0 to"},
        {"SLUICE_TENANT_QUOTAS", "acme=1,,b=2", "SLUICE_TENANT_QUOTAS: empty item"},
        {"SLUICE_TENANT_QUOTAS", "acme=1,acme=2",
         "SLUICE_TENANT_QUOTAS: tenant 'acme' is listed twice"},
    };

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char err[512] = "";
        clear_env();
        setenv(bad[i].var, bad[i].value, 1);
        ck_assert_msg(load(err, sizeof(err)) == SL_ERR_INVAL, "%s=%s accepted", bad[i].var,
                      bad[i].value);
        ck_assert_msg(strstr(err, bad[i].want) != NULL, "%s=%s: '%s' does not say '%s'", bad[i].var,
                      bad[i].value, err, bad[i].want);
        ck_assert_ptr_null(cfg.agents);
        orch_config_free(&cfg);
    }
    /* The edges themselves are accepted. */
    clear_env();
    setenv("SLUICE_HOP_LIMIT", "100", 1);
    setenv("SLUICE_CAUSAL_WAIT_MS", "0", 1);
    setenv("SLUICE_MODEL_TIMEOUT_MS", "1", 1);
    setenv("SLUICE_CAUSAL_PARK_PER_SESSION", "100000", 1);
    setenv("SLUICE_CAUSAL_PARK_PER_TENANT", "0", 1);
    setenv("SLUICE_SWEEP_MS", "100", 1);
    setenv("SLUICE_TENANT_TOKENS_PER_MIN", "5000", 1);
    setenv("SLUICE_TENANT_QUOTAS", "acme=100,globex=0", 1);
    setenv("SLUICE_TENANT_QUOTA_WINDOW_S", "1", 1);
    {
        char err[512] = "";
        ck_assert_msg(load(err, sizeof(err)) == SL_OK, "%s", err);
        orch_loop_cfg lc = orch_config_loop(&cfg);
        ck_assert_int_eq(lc.tokens_per_window, 5000);
        ck_assert_uint_eq(lc.nquota_rules, 2);
        ck_assert_str_eq(lc.quota_rules[0].tenant, "acme");
        ck_assert_int_eq(lc.quota_rules[0].tokens, 100);
        ck_assert_int_eq(lc.quota_rules[1].tokens, 0);
        ck_assert_int_eq(lc.quota_window_s, 1);
    }
    orch_config_free(&cfg);
    clear_env();
}
END_TEST

START_TEST(test_bad_flags_named)
{
    static char *bad[][3] = {
        {"--hop-limit=101", NULL, "SLUICE_HOP_LIMIT (flag): 101 is outside 0..100"},
        {"--no-such-flag=1", NULL, "unknown flag '--no-such-flag=1'"},
        {"--sweep-ms", NULL, "flag --sweep-ms (SLUICE_SWEEP_MS) needs a value"},
        {"stray", NULL, "unexpected argument 'stray'"},
    };

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char err[512] = "";
        char *args[] = {bad[i][0], NULL};
        clear_env();
        ck_assert_msg(load_args(args, err, sizeof(err)) == SL_ERR_INVAL, "%s accepted", args[0]);
        ck_assert_msg(strstr(err, bad[i][2]) != NULL, "%s: '%s' does not say '%s'", args[0], err,
                      bad[i][2]);
        orch_config_free(&cfg);
    }
    clear_env();
}
END_TEST

START_TEST(test_agents_file)
{
    char good[] = "/tmp/check_orch_config_XXXXXX";
    char badre[] = "/tmp/check_orch_config_XXXXXX";
    char err[512] = "";

    write_tmp(good, "{\"agents\":[{\"name\":\"solo\",\"model\":\"m1\",\"match\":\"all\"}]}");
    write_tmp(badre, "{\"agents\":[{\"name\":\"a\",\"model\":\"m\","
                     "\"match\":{\"regex\":\"(unclosed\"}}]}");
    clear_env();

    setenv("SLUICE_AGENTS_FILE", good, 1);
    ck_assert_msg(load(err, sizeof(err)) == SL_OK, "%s", err);
    ck_assert_str_eq(cfg.agents_file, good);
    ck_assert_uint_eq(cfg.agents->n, 1);
    ck_assert_str_eq(cfg.agents->v[0].name, "solo");
    orch_config_free(&cfg);

    setenv("SLUICE_AGENTS_FILE", badre, 1);
    ck_assert(load(err, sizeof(err)) == SL_ERR_INVAL);
    ck_assert_msg(strstr(err, "SLUICE_AGENTS_FILE") != NULL && strstr(err, badre) != NULL &&
                      strstr(err, "agent a: bad regex") != NULL,
                  "%s", err);
    ck_assert_ptr_null(cfg.agents);
    orch_config_free(&cfg);

    setenv("SLUICE_AGENTS_FILE", "/nonexistent/agents.json", 1);
    ck_assert(load(err, sizeof(err)) == SL_ERR_IO);
    ck_assert_msg(strstr(err, "SLUICE_AGENTS_FILE /nonexistent/agents.json") != NULL, "%s", err);
    orch_config_free(&cfg);

    /* A bad option is reported before the agents file is read. */
    setenv("SLUICE_HOP_LIMIT", "101", 1);
    ck_assert(load(err, sizeof(err)) == SL_ERR_INVAL);
    ck_assert_msg(strstr(err, "SLUICE_HOP_LIMIT") != NULL, "%s", err);
    orch_config_free(&cfg);

    unlink(good);
    unlink(badre);
    clear_env();
}
END_TEST

int main(void)
{
    Suite *s = suite_create("orch_config");
    TCase *tc = tcase_create("config");
    SRunner *sr;
    int failed;

    tcase_add_test(tc, test_defaults_reach_the_loop);
    tcase_add_test(tc, test_flag_beats_environment);
    tcase_add_test(tc, test_help);
    tcase_add_test(tc, test_bounds_refused_and_named);
    tcase_add_test(tc, test_bad_flags_named);
    tcase_add_test(tc, test_agents_file);
    suite_add_tcase(s, tc);
    sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
