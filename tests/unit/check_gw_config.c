/* Unit tests of the gateway's configuration (gw_config): defaults, flags
 * over the environment, every bound refused with a message naming its
 * variable, and the checks of the options together. */
#include <check.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gw_config.h"

#define SECRET "0123456789abcdef" /* 16 characters: the shortest accepted */

static gw_config cfg;

/* Unsets every variable the gateway reads (the table names them all). */
static void clear_env(void)
{
    static gw_config names;
    char err[256];
    bool help;
    char *argv[] = {"sluice-gateway", "--help", NULL};

    gw_config_load(&names, 2, argv, &help, err, sizeof(err));
    for (size_t i = 0; i < GW_CONFIG_OPTS_N; i++)
        unsetenv(names.opts[i].env);
    gw_config_free(&names);
}

static sl_status load_args(int argc, char **argv, char *err, size_t errlen)
{
    bool help = true;
    sl_status st = gw_config_load(&cfg, argc, argv, &help, err, errlen);

    ck_assert(!help);
    return st;
}

static sl_status load(char *err, size_t errlen)
{
    char *argv[] = {"sluice-gateway", NULL};
    return load_args(1, argv, err, errlen);
}

START_TEST(test_defaults)
{
    char err[512] = "";

    clear_env();
    setenv("SLUICE_JWT_SECRET", SECRET, 1);
    ck_assert_msg(load(err, sizeof(err)) == SL_OK, "%s", err);
    ck_assert_str_eq(cfg.listen, "0.0.0.0:8080");
    ck_assert_str_eq(cfg.common.admin_listen, "0.0.0.0:9090");
    ck_assert_str_eq(cfg.common.nats_url, "nats://127.0.0.1:4222");
    ck_assert_int_eq(cfg.log_level, SL_LOG_INFO);
    ck_assert_str_eq(cfg.jwt_secret, SECRET);
    ck_assert_ptr_null(cfg.jwt_public_key);
    ck_assert_ptr_null(cfg.resume_secret);
    ck_assert_ptr_null(cfg.tls_cert);
    ck_assert_ptr_null(cfg.tls_key);
    ck_assert_str_eq(cfg.web_root, "web");
    ck_assert(!cfg.dev_mode);
    ck_assert_int_eq(cfg.heartbeat_ms, 25000);
    ck_assert_int_eq(cfg.max_frame, 65536);
    ck_assert_int_eq(cfg.rate, 20);
    ck_assert_int_eq(cfg.burst, 40);
    ck_assert_int_eq(cfg.outq_max_frames, 4096);
    ck_assert_int_eq(cfg.outq_max_bytes, 1048576);
    ck_assert_int_eq(cfg.drain_grace_ms, 10000);
    ck_assert_int_eq(cfg.handshake_rate, 2000);
    ck_assert_int_eq(cfg.handshake_burst, 2000);
    ck_assert_int_eq(cfg.publish_timeout_ms, 5000);
    ck_assert_int_eq(cfg.hello_timeout_ms, 5000);
    ck_assert_int_eq(cfg.presence_fanout_max, 200);
    ck_assert_int_eq(cfg.chan_cache, 512);
    ck_assert_int_eq(cfg.io_threads, 2);
    ck_assert_int_eq(cfg.max_rooms, 100);
    ck_assert_int_eq(cfg.socket_sndbuf, 262144);
    gw_config_free(&cfg);
    ck_assert_ptr_null(cfg.listen); /* freed and cleared */
    clear_env();
}
END_TEST

START_TEST(test_flags_over_env)
{
    char err[512] = "";
    char *argv[] = {"sluice-gateway", "--rate=7",          "--burst", "9",
                    "--dev-mode",     "--log-level=debug", NULL};

    clear_env();
    setenv("SLUICE_JWT_SECRET", SECRET, 1);
    setenv("SLUICE_RATE", "5", 1);
    setenv("SLUICE_BURST", "6", 1);
    setenv("SLUICE_MAX_ROOMS", "12", 1);
    setenv("SLUICE_LOG_LEVEL", "error", 1);
    ck_assert_msg(load_args(6, argv, err, sizeof(err)) == SL_OK, "%s", err);
    ck_assert_int_eq(cfg.rate, 7);       /* --rate=V over the environment */
    ck_assert_int_eq(cfg.burst, 9);      /* --burst V */
    ck_assert(cfg.dev_mode);             /* a boolean flag alone is true */
    ck_assert_int_eq(cfg.max_rooms, 12); /* the environment over the default */
    ck_assert_int_eq(cfg.log_level, SL_LOG_DEBUG);
    gw_config_free(&cfg);

    /* An empty variable is as if unset. */
    setenv("SLUICE_RATE", "", 1);
    ck_assert_msg(load(err, sizeof(err)) == SL_OK, "%s", err);
    ck_assert_int_eq(cfg.rate, 20);
    gw_config_free(&cfg);
    clear_env();
}
END_TEST

START_TEST(test_help_and_usage)
{
    char *argv[] = {"sluice-gateway", "--help", "--rate=0", NULL};
    char err[512] = "", *text = NULL;
    size_t len = 0;
    bool help = false;
    FILE *f;

    clear_env();
    /* --help stops the reading (--rate=0 would be refused) and nothing is
     * validated (there is no key). */
    ck_assert_int_eq(gw_config_load(&cfg, 3, argv, &help, err, sizeof(err)), SL_OK);
    ck_assert(help);
    f = open_memstream(&text, &len);
    ck_assert_ptr_nonnull(f);
    gw_config_usage(&cfg, f);
    fclose(f);
    for (size_t i = 0; i < GW_CONFIG_OPTS_N; i++)
        ck_assert_msg(strstr(text, cfg.opts[i].env) != NULL, "usage does not list %s",
                      cfg.opts[i].env);
    ck_assert(strstr(text, "sluice-gateway") != NULL);
    ck_assert(strstr(text, "--listen\n") != NULL);
    ck_assert(strstr(text, "(default: 0.0.0.0:8080)") != NULL);
    ck_assert(strstr(text, "(default: 0.0.0.0:9090)") != NULL); /* the admin port */
    free(text);
    gw_config_free(&cfg);
    clear_env();
}
END_TEST

/* Loads with SECRET and one variable set; returns the status and the
 * message in err. */
static sl_status load_with(const char *var, const char *value, char *err, size_t errlen)
{
    sl_status st;

    clear_env();
    setenv("SLUICE_JWT_SECRET", SECRET, 1);
    setenv(var, value, 1);
    st = load(err, errlen);
    gw_config_free(&cfg);
    clear_env();
    return st;
}

START_TEST(test_every_bound)
{
    static gw_config table;
    char err[512];
    bool help;
    char *argv[] = {"sluice-gateway", "--help", NULL};
    int checked = 0;

    clear_env();
    gw_config_load(&table, 2, argv, &help, err, sizeof(err));
    for (size_t i = 0; i < GW_CONFIG_OPTS_N; i++) {
        const sl_cfg_opt *o = &table.opts[i];
        char v[32];

        if ((o->type != SL_CFG_INT && o->type != SL_CFG_SIZE) || (o->min == 0 && o->max == 0))
            continue;
        /* The bounds themselves are accepted... */
        snprintf(v, sizeof(v), "%" PRId64, o->min);
        ck_assert_msg(load_with(o->env, v, err, sizeof(err)) == SL_OK, "%s=%s: %s", o->env, v, err);
        snprintf(v, sizeof(v), "%" PRId64, o->max);
        ck_assert_msg(load_with(o->env, v, err, sizeof(err)) == SL_OK, "%s=%s: %s", o->env, v, err);
        /* ... one past either is refused, naming the variable and the range. */
        snprintf(v, sizeof(v), "%" PRId64, o->min - 1);
        ck_assert_msg(load_with(o->env, v, err, sizeof(err)) == SL_ERR_INVAL, "%s=%s accepted",
                      o->env, v);
        ck_assert_msg(strstr(err, o->env) != NULL && strstr(err, "outside") != NULL, "%s=%s: '%s'",
                      o->env, v, err);
        if (o->max < INT64_MAX) {
            snprintf(v, sizeof(v), "%" PRId64, o->max + 1);
            ck_assert_msg(load_with(o->env, v, err, sizeof(err)) == SL_ERR_INVAL, "%s=%s accepted",
                          o->env, v);
            ck_assert_msg(strstr(err, o->env) != NULL && strstr(err, "outside") != NULL,
                          "%s=%s: '%s'", o->env, v, err);
        }
        /* Not a number at all. */
        ck_assert_int_eq(load_with(o->env, "12x", err, sizeof(err)), SL_ERR_INVAL);
        ck_assert_msg(strstr(err, o->env) != NULL, "%s=12x: '%s'", o->env, err);
        checked++;
    }
    /* The gateway's own 17 bounded options and the common ones. */
    ck_assert_int_ge(checked, 17 + 5);
    gw_config_free(&table);
}
END_TEST

START_TEST(test_bad_values_named)
{
    static const struct {
        const char *var, *value, *want;
    } bad[] = {
        {"SLUICE_LOG_LEVEL", "loud", "SLUICE_LOG_LEVEL: 'loud' is not debug|info|warn|error"},
        {"SLUICE_LISTEN", "localhost", "SLUICE_LISTEN"},
        {"SLUICE_LISTEN", "127.0.0.1:70000", "SLUICE_LISTEN"},
        {"SLUICE_ADMIN_LISTEN", "nowhere", "SLUICE_ADMIN_LISTEN"},
        {"SLUICE_DEV_MODE", "perhaps", "SLUICE_DEV_MODE"},
        {"SLUICE_JWT_SECRET", "short", "SLUICE_JWT_SECRET must be at least 16 characters"},
        {"SLUICE_TLS_CERT", "/tmp/cert.pem", "SLUICE_TLS_CERT and SLUICE_TLS_KEY go together"},
        {"SLUICE_TLS_KEY", "/tmp/key.pem", "SLUICE_TLS_CERT and SLUICE_TLS_KEY go together"},
    };

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char err[512] = "";
        ck_assert_msg(load_with(bad[i].var, bad[i].value, err, sizeof(err)) == SL_ERR_INVAL,
                      "%s=%s accepted", bad[i].var, bad[i].value);
        ck_assert_msg(strstr(err, bad[i].want) != NULL, "%s=%s: '%s' does not say '%s'", bad[i].var,
                      bad[i].value, err, bad[i].want);
    }
}
END_TEST

START_TEST(test_keys_together)
{
    char err[512] = "";
    char *unknown[] = {"sluice-gateway", "--no-such-flag=1", NULL};
    char *stray[] = {"sluice-gateway", "stray", NULL};

    /* No key at all. */
    clear_env();
    ck_assert_int_eq(load(err, sizeof(err)), SL_ERR_INVAL);
    ck_assert_msg(strstr(err, "SLUICE_JWT_SECRET (or SLUICE_JWT_PUBLIC_KEY) is required"), "%s",
                  err);
    gw_config_free(&cfg);

    /* RS256 alone needs its own resume secret... */
    setenv("SLUICE_JWT_PUBLIC_KEY", "/nonexistent/key.pem", 1);
    ck_assert_int_eq(load(err, sizeof(err)), SL_ERR_INVAL);
    ck_assert_msg(strstr(err, "SLUICE_RESUME_SECRET is required"), "%s", err);
    gw_config_free(&cfg);
    /* ... and with one it loads (the key file is read by the server). */
    setenv("SLUICE_RESUME_SECRET", "resume-secret", 1);
    ck_assert_msg(load(err, sizeof(err)) == SL_OK, "%s", err);
    ck_assert_str_eq(cfg.resume_secret, "resume-secret");
    gw_config_free(&cfg);

    /* TLS with both files. */
    clear_env();
    setenv("SLUICE_JWT_SECRET", SECRET, 1);
    setenv("SLUICE_TLS_CERT", "/tmp/cert.pem", 1);
    setenv("SLUICE_TLS_KEY", "/tmp/key.pem", 1);
    ck_assert_msg(load(err, sizeof(err)) == SL_OK, "%s", err);
    gw_config_free(&cfg);

    /* Flags the gateway does not know, and stray arguments. */
    ck_assert_int_eq(load_args(2, unknown, err, sizeof(err)), SL_ERR_INVAL);
    ck_assert_msg(strstr(err, "unknown flag '--no-such-flag=1'"), "%s", err);
    gw_config_free(&cfg);
    ck_assert_int_eq(load_args(2, stray, err, sizeof(err)), SL_ERR_INVAL);
    ck_assert_msg(strstr(err, "unexpected argument 'stray'"), "%s", err);
    gw_config_free(&cfg);
    clear_env();
}
END_TEST

int main(void)
{
    Suite *s = suite_create("gw_config");
    TCase *tc = tcase_create("config");
    SRunner *sr;
    int failed;

    tcase_add_test(tc, test_defaults);
    tcase_add_test(tc, test_flags_over_env);
    tcase_add_test(tc, test_help_and_usage);
    tcase_add_test(tc, test_every_bound);
    tcase_add_test(tc, test_bad_values_named);
    tcase_add_test(tc, test_keys_together);
    suite_add_tcase(s, tc);
    sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
