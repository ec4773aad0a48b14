/* Unit tests of the worker's configuration (wrk_config): defaults, what
 * reaches the loop and the backend, and that every bad value is refused
 * with a message naming its variable. */
#include <check.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "wrk_config.h"

static wrk_config cfg;

static const char *const vars[] = {
    "SLUICE_WORKER_MODELS", "SLUICE_TENANT_WEIGHTS", "SLUICE_MODEL_BACKEND",
    "SLUICE_MODEL_URL",     "SLUICE_WORKER_ID",      "SLUICE_CONTEXT_MESSAGES",
    "SLUICE_LOG_LEVEL",     "SLUICE_CANCEL_TTL_S",   "SLUICE_WORKER_CONCURRENCY",
};

static void clear_env(void)
{
    for (size_t i = 0; i < sizeof(vars) / sizeof(vars[0]); i++)
        unsetenv(vars[i]);
}

static sl_status load(char *err, size_t errlen)
{
    char *argv[] = {"sluice-worker", NULL};
    bool help = false;
    sl_status st = wrk_config_load(&cfg, 1, argv, &help, err, errlen);

    ck_assert(!help);
    return st;
}

START_TEST(test_defaults_and_derived)
{
    char err[512] = "";
    wrk_loop_cfg lc;
    wrk_backend_cfg bc;

    clear_env();
    setenv("SLUICE_WORKER_MODELS", " alpha, beta ,", 1);
    setenv("SLUICE_TENANT_WEIGHTS", "acme=3", 1);
    setenv("SLUICE_CONTEXT_MESSAGES", "7", 1);
    ck_assert_msg(load(err, sizeof(err)) == SL_OK, "%s", err);
    lc = wrk_config_loop(&cfg);
    ck_assert_uint_eq(lc.nmodels, 2);
    ck_assert_str_eq(lc.models[0], "alpha");
    ck_assert_str_eq(lc.models[1], "beta");
    ck_assert_int_eq(lc.concurrency, 8);
    ck_assert_int_eq(lc.timeout_ms, 10000);
    ck_assert_int_eq(lc.context_messages, 0); /* echo: no context */
    ck_assert_uint_eq(lc.nweights, 1);
    ck_assert_str_eq(lc.weights[0].tenant, "acme");
    ck_assert_int_eq(lc.weights[0].weight, 3);
    ck_assert(strchr(lc.worker_id, '-') != NULL); /* hostname-pid */
    bc = wrk_config_backend(&cfg);
    ck_assert_str_eq(bc.kind, "echo");
    ck_assert_int_eq(bc.echo_delay_ms, 50);
    wrk_config_free(&cfg);

    setenv("SLUICE_MODEL_BACKEND", "openai", 1);
    setenv("SLUICE_MODEL_URL", "http://127.0.0.1:9", 1);
    setenv("SLUICE_WORKER_ID", "w-one", 1);
    ck_assert_msg(load(err, sizeof(err)) == SL_OK, "%s", err);
    lc = wrk_config_loop(&cfg);
    ck_assert_int_eq(lc.context_messages, 7);
    ck_assert_str_eq(lc.worker_id, "w-one");
    wrk_config_free(&cfg);
    clear_env();
}
END_TEST

START_TEST(test_bad_values_named)
{
    static const struct {
        const char *var, *value, *want;
    } bad[] = {
        {"SLUICE_TENANT_WEIGHTS", "acme=0", "SLUICE_TENANT_WEIGHTS: weight of 'acme'"},
        {"SLUICE_TENANT_WEIGHTS", "acme", "SLUICE_TENANT_WEIGHTS: 'acme' is not tenant=weight"},
        {"SLUICE_WORKER_MODELS", "a,a", "SLUICE_WORKER_MODELS: 'a' is listed twice"},
        {"SLUICE_WORKER_MODELS", " , ", "SLUICE_WORKER_MODELS: no model given"},
        {"SLUICE_WORKER_MODELS", "a.b", "SLUICE_WORKER_MODELS: 'a.b' is not a valid model id"},
        {"SLUICE_MODEL_BACKEND", "magic", "SLUICE_MODEL_BACKEND: 'magic' is not echo or openai"},
        {"SLUICE_MODEL_BACKEND", "openai", "SLUICE_MODEL_URL is required"},
        {"SLUICE_LOG_LEVEL", "loud", "SLUICE_LOG_LEVEL"},
        {"SLUICE_CANCEL_TTL_S", "60", "SLUICE_CANCEL_TTL_S: 60 s is shorter"},
        {"SLUICE_WORKER_CONCURRENCY", "0", "SLUICE_WORKER_CONCURRENCY"},
    };

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char err[512] = "";
        clear_env();
        setenv(bad[i].var, bad[i].value, 1);
        ck_assert_msg(load(err, sizeof(err)) == SL_ERR_INVAL, "%s=%s accepted", bad[i].var,
                      bad[i].value);
        ck_assert_msg(strstr(err, bad[i].want) != NULL, "%s=%s: '%s' does not say '%s'", bad[i].var,
                      bad[i].value, err, bad[i].want);
        wrk_config_free(&cfg);
    }
    clear_env();
}
END_TEST

int main(void)
{
    Suite *s = suite_create("wrk_config");
    TCase *tc = tcase_create("config");
    SRunner *sr;
    int failed;

    tcase_add_test(tc, test_defaults_and_derived);
    tcase_add_test(tc, test_bad_values_named);
    suite_add_tcase(s, tc);
    sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
