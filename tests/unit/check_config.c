/* Unit tests for configuration parsing (common/sl_config). */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sl_config.h"

typedef struct cfg {
    char *url;
    char *addr;
    int64_t n;
    bool flag;
} cfg;

static void table(sl_cfg_opt *o, cfg *c)
{
    const sl_cfg_opt t[4] = {
        {"TEST_URL", "url", SL_CFG_STR, "nats://x:1", "url", &c->url, 0, 0, true, false},
        {"TEST_ADDR", "addr", SL_CFG_ADDR, "0.0.0.0:80", "addr", &c->addr, 0, 0, true, false},
        {"TEST_N", "n", SL_CFG_INT, "5", "n", &c->n, 1, 10, false, false},
        {"TEST_FLAG", "flag", SL_CFG_BOOL, "0", "flag", &c->flag, 0, 0, false, false},
    };
    memcpy(o, t, sizeof(t));
}

static sl_status load(cfg *c, sl_cfg_opt *o, int argc, char **argv, char *err)
{
    bool help;
    memset(c, 0, sizeof(*c));
    table(o, c);
    return sl_config_load(o, 4, argc, argv, &help, err, 256);
}

START_TEST(test_defaults_env_flags)
{
    cfg c;
    sl_cfg_opt o[4];
    char err[256];
    char *argv[] = {"prog", "--n", "7", "--flag", "--url=nats://flag:2"};

    unsetenv("TEST_URL");
    unsetenv("TEST_N");
    ck_assert_int_eq(load(&c, o, 1, argv, err), SL_OK);
    ck_assert_str_eq(c.url, "nats://x:1");
    ck_assert_int_eq(c.n, 5);
    ck_assert(!c.flag);
    sl_config_free(o, 4);

    setenv("TEST_URL", "nats://env:3", 1);
    setenv("TEST_N", "9", 1);
    ck_assert_int_eq(load(&c, o, 1, argv, err), SL_OK);
    ck_assert_str_eq(c.url, "nats://env:3");
    ck_assert_int_eq(c.n, 9);
    sl_config_free(o, 4);

    /* Flags win over the environment. */
    ck_assert_int_eq(load(&c, o, 5, argv, err), SL_OK);
    ck_assert_str_eq(c.url, "nats://flag:2");
    ck_assert_int_eq(c.n, 7);
    ck_assert(c.flag);
    sl_config_free(o, 4);
    ck_assert_ptr_null(c.url);
    unsetenv("TEST_URL");
    unsetenv("TEST_N");
}
END_TEST

START_TEST(test_errors_name_the_variable)
{
    cfg c;
    sl_cfg_opt o[4];
    char err[256];

    setenv("TEST_N", "12", 1);
    ck_assert_int_eq(load(&c, o, 1, (char *[]){"p"}, err), SL_ERR_INVAL);
    ck_assert_ptr_nonnull(strstr(err, "TEST_N"));
    sl_config_free(o, 4);
    setenv("TEST_N", "3x", 1);
    ck_assert_int_eq(load(&c, o, 1, (char *[]){"p"}, err), SL_ERR_INVAL);
    ck_assert_ptr_nonnull(strstr(err, "TEST_N"));
    sl_config_free(o, 4);
    unsetenv("TEST_N");
    setenv("TEST_ADDR", "nohostport", 1);
    ck_assert_int_eq(load(&c, o, 1, (char *[]){"p"}, err), SL_ERR_INVAL);
    ck_assert_ptr_nonnull(strstr(err, "TEST_ADDR"));
    sl_config_free(o, 4);
    setenv("TEST_ADDR", "h:70000", 1);
    ck_assert_int_eq(load(&c, o, 1, (char *[]){"p"}, err), SL_ERR_INVAL);
    sl_config_free(o, 4);
    unsetenv("TEST_ADDR");
    setenv("TEST_FLAG", "maybe", 1);
    ck_assert_int_eq(load(&c, o, 1, (char *[]){"p"}, err), SL_ERR_INVAL);
    ck_assert_ptr_nonnull(strstr(err, "TEST_FLAG"));
    sl_config_free(o, 4);
    unsetenv("TEST_FLAG");
    ck_assert_int_eq(load(&c, o, 2, (char *[]){"p", "--nope"}, err), SL_ERR_INVAL);
    ck_assert_ptr_nonnull(strstr(err, "--nope"));
    sl_config_free(o, 4);
    ck_assert_int_eq(load(&c, o, 2, (char *[]){"p", "--n"}, err), SL_ERR_INVAL);
    sl_config_free(o, 4);
}
END_TEST

START_TEST(test_help_and_parsers)
{
    cfg c;
    sl_cfg_opt o[4];
    char err[256], host[64];
    bool help = false;
    int64_t v;
    int port;

    memset(&c, 0, sizeof(c));
    table(o, &c);
    ck_assert_int_eq(sl_config_load(o, 4, 2, (char *[]){"p", "--help"}, &help, err, sizeof(err)),
                     SL_OK);
    ck_assert(help);
    sl_config_free(o, 4);
    ck_assert_int_eq(sl_parse_int("42", &v), SL_OK);
    ck_assert_int_eq(v, 42);
    ck_assert_int_eq(sl_parse_int("", &v), SL_ERR_INVAL);
    ck_assert_int_eq(sl_parse_int("4 2", &v), SL_ERR_INVAL);
    ck_assert_int_eq(sl_parse_int("99999999999999999999", &v), SL_ERR_INVAL);
    {
        uint64_t u = 7;
        ck_assert_int_eq(sl_parse_u64("18446744073709551615", &u), SL_OK);
        ck_assert(u == UINT64_MAX);
        ck_assert_int_eq(sl_parse_u64("0", &u), SL_OK);
        ck_assert(u == 0);
        ck_assert_int_eq(sl_parse_u64("12", &u), SL_OK);
        ck_assert(u == 12);
        ck_assert_int_eq(sl_parse_u64("18446744073709551616", &u), SL_ERR_INVAL);
        ck_assert_int_eq(sl_parse_u64("-1", &u), SL_ERR_INVAL);
        ck_assert_int_eq(sl_parse_u64("+1", &u), SL_ERR_INVAL);
        ck_assert_int_eq(sl_parse_u64(" 1", &u), SL_ERR_INVAL);
        ck_assert_int_eq(sl_parse_u64("12abc", &u), SL_ERR_INVAL);
        ck_assert_int_eq(sl_parse_u64("", &u), SL_ERR_INVAL);
        ck_assert_int_eq(sl_parse_u64(NULL, &u), SL_ERR_INVAL);
        ck_assert(u == 12);
    }
    ck_assert_int_eq(sl_parse_addr("127.0.0.1:8080", host, sizeof(host), &port), SL_OK);
    ck_assert_str_eq(host, "127.0.0.1");
    ck_assert_int_eq(port, 8080);
    ck_assert_int_eq(sl_parse_addr(":9", host, sizeof(host), &port), SL_OK);
    ck_assert_str_eq(host, "");
    ck_assert_int_eq(sl_parse_addr("h:0", host, sizeof(host), &port), SL_ERR_INVAL);
}
END_TEST

START_TEST(test_sizes)
{
    int64_t v;

    ck_assert_int_eq(sl_parse_size("0", &v), SL_OK);
    ck_assert_int_eq(v, 0);
    ck_assert_int_eq(sl_parse_size("1073741824", &v), SL_OK);
    ck_assert_int_eq(v, 1073741824LL);
    ck_assert_int_eq(sl_parse_size("1GiB", &v), SL_OK);
    ck_assert_int_eq(v, 1LL << 30);
    ck_assert_int_eq(sl_parse_size("4g", &v), SL_OK);
    ck_assert_int_eq(v, 4LL << 30);
    ck_assert_int_eq(sl_parse_size("256MB", &v), SL_OK);
    ck_assert_int_eq(v, 256LL << 20);
    ck_assert_int_eq(sl_parse_size("64k", &v), SL_OK);
    ck_assert_int_eq(v, 64LL << 10);
    ck_assert_int_eq(sl_parse_size("2T", &v), SL_OK);
    ck_assert_int_eq(v, 2LL << 40);
    const char *bad[] = {"",
                         "G",
                         "-1",
                         "1.5G",
                         "1 G",
                         "1GiBs",
                         "1X",
                         "1Gi",
                         "0x10",
                         "9223372036854775808",
                         "8589934592G",
                         NULL};
    for (int i = 0; bad[i] != NULL; i++)
        ck_assert_msg(sl_parse_size(bad[i], &v) == SL_ERR_INVAL, "'%s' was accepted", bad[i]);
}
END_TEST

/* The storage limits every tier takes: defaults, a good value, and bad
 * values refused with the variable named. */
START_TEST(test_common_storage_limits)
{
    sl_common_cfg c;
    sl_cfg_opt o[SL_COMMON_OPTS_N];
    char err[256];
    bool help;
    const char *vars[] = {"SLUICE_IN_MAX_BYTES", "SLUICE_WORK_MAX_BYTES", "SLUICE_OUT_MAX_BYTES",
                          "SLUICE_KV_MAX_BYTES"};

    memset(&c, 0, sizeof(c));
    sl_common_opts(o, &c, "127.0.0.1:1");
    ck_assert_int_eq(sl_config_load(o, SL_COMMON_OPTS_N, 1, (char *[]){"p"}, &help, err, 256),
                     SL_OK);
    ck_assert_int_eq(c.in_max_bytes, 1LL << 30);
    ck_assert_int_eq(c.work_max_bytes, 1LL << 30);
    ck_assert_int_eq(c.out_max_bytes, 4LL << 30);
    ck_assert_int_eq(c.kv_max_bytes, 256LL << 20);
    ck_assert_int_eq(c.cancel_ttl_s, 300);
    sl_config_free(o, SL_COMMON_OPTS_N);

    ck_assert_int_eq(sl_config_load(o, SL_COMMON_OPTS_N, 2, (char *[]){"p", "--out-max-bytes=8GiB"},
                                    &help, err, 256),
                     SL_OK);
    ck_assert_int_eq(c.out_max_bytes, 8LL << 30);
    sl_config_free(o, SL_COMMON_OPTS_N);

    for (size_t i = 0; i < 4; i++) {
        const char *values[] = {"lots", "1000", "2P"}; /* not a size, below 1 MiB, above 1 PiB */
        for (size_t k = 0; k < 3; k++) {
            setenv(vars[i], values[k], 1);
            ck_assert_int_eq(
                sl_config_load(o, SL_COMMON_OPTS_N, 1, (char *[]){"p"}, &help, err, 256),
                SL_ERR_INVAL);
            ck_assert_msg(strstr(err, vars[i]) != NULL, "'%s' does not name %s", err, vars[i]);
            sl_config_free(o, SL_COMMON_OPTS_N);
        }
        unsetenv(vars[i]);
    }
    setenv("SLUICE_CANCEL_TTL_S", "0", 1);
    ck_assert_int_eq(sl_config_load(o, SL_COMMON_OPTS_N, 1, (char *[]){"p"}, &help, err, 256),
                     SL_ERR_INVAL);
    ck_assert_ptr_nonnull(strstr(err, "SLUICE_CANCEL_TTL_S"));
    sl_config_free(o, SL_COMMON_OPTS_N);
    unsetenv("SLUICE_CANCEL_TTL_S");
}
END_TEST

/* The one parser of per-tenant lists (weights, quotas): bounds at both
 * ends, the item bound, and a refusal leaves nothing allocated. */
START_TEST(test_tenant_values)
{
    sl_tenant_value *v = NULL;
    size_t n = 9;
    char err[256];

    ck_assert_int_eq(sl_tenant_values_parse("a=5,b-c=10", "n", 5, 10, 2, &v, &n, err, sizeof(err)),
                     SL_OK);
    ck_assert_uint_eq(n, 2);
    ck_assert_str_eq(v[0].tenant, "a");
    ck_assert_int_eq(v[0].value, 5);
    ck_assert_str_eq(v[1].tenant, "b-c");
    ck_assert_int_eq(v[1].value, 10);
    free(v);
    ck_assert_int_eq(sl_tenant_values_parse("a=4", "n", 5, 10, 2, &v, &n, err, sizeof(err)),
                     SL_ERR_INVAL);
    ck_assert_str_eq(err, "n of 'a' must be an integer from 5 to 10, not '4'");
    ck_assert_ptr_null(v);
    ck_assert_uint_eq(n, 0);
    ck_assert_int_eq(sl_tenant_values_parse("a=11", "n", 5, 10, 2, &v, &n, err, sizeof(err)),
                     SL_ERR_INVAL);
    ck_assert_int_eq(sl_tenant_values_parse("a=5,b=5,c=5", "n", 5, 10, 2, &v, &n, err, sizeof(err)),
                     SL_ERR_INVAL);
    ck_assert_str_eq(err, "more than 2 tenants");
    ck_assert_ptr_null(v);
    ck_assert_int_eq(sl_tenant_values_parse("", "n", 5, 10, 2, &v, &n, err, sizeof(err)), SL_OK);
    ck_assert_ptr_null(v);
    ck_assert_uint_eq(n, 0);
    ck_assert_int_eq(sl_tenant_values_parse("a=5", NULL, 5, 10, 2, &v, &n, err, sizeof(err)),
                     SL_ERR_INVAL);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("sl_config");
    TCase *tc = tcase_create("core");
    SRunner *sr;
    int failed;

    tcase_add_test(tc, test_defaults_env_flags);
    tcase_add_test(tc, test_errors_name_the_variable);
    tcase_add_test(tc, test_help_and_parsers);
    tcase_add_test(tc, test_sizes);
    tcase_add_test(tc, test_common_storage_limits);
    tcase_add_test(tc, test_tenant_values);
    suite_add_tcase(s, tc);
    sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? 0 : 1;
}
