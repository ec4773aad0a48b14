/* Unit tests for sl_metrics: counters, gauges, labels, histograms and
 * their quantiles, the Prometheus text (parsed back and checked line by
 * line), and concurrent updates from several threads. */
#include <check.h>
#include <math.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sl_log.h"
#include "sl_metrics.h"

/* Relative error allowed for quantile estimates: the fine buckets are at
 * most 1/32 of their lower bound wide. */
#define QERR (1.0 / 32 + 1e-9)

static char *render(void)
{
    char *text = NULL;
    size_t len = 0;

    ck_assert_int_eq(sl_metrics_render(&text, &len), SL_OK);
    ck_assert_ptr_nonnull(text);
    ck_assert_uint_eq(len, strlen(text));
    return text;
}

/* The value of the sample line "<series> <value>", or NaN when absent. */
static double sample(const char *text, const char *series)
{
    size_t n = strlen(series);

    for (const char *p = text; p != NULL && *p != '\0';) {
        const char *eol = strchr(p, '\n');
        if (strncmp(p, series, n) == 0 && p[n] == ' ')
            return strtod(p + n + 1, NULL);
        p = eol != NULL ? eol + 1 : NULL;
    }
    return NAN;
}

static int count_lines_starting(const char *text, const char *prefix)
{
    int n = 0;
    size_t pl = strlen(prefix);

    for (const char *p = text; p != NULL && *p != '\0';) {
        const char *eol = strchr(p, '\n');
        if (strncmp(p, prefix, pl) == 0)
            n++;
        p = eol != NULL ? eol + 1 : NULL;
    }
    return n;
}

static bool name_char(char c, bool first)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':' ||
           (!first && c >= '0' && c <= '9');
}

/* Checks the whole text against the exposition format: every line is a
 * HELP, a TYPE or a sample; each family has at most one HELP and exactly
 * one TYPE, before its samples; a family's lines are contiguous; samples
 * parse as `name{k="v",...} value`; histogram buckets are cumulative and
 * end with +Inf equal to _count. Returns the number of samples. */
static int check_format(const char *text)
{
    char families[64][128], cur[128] = "", cur_type[16] = "";
    int nfam = 0, nsamples = 0;
    double last_bucket = -1;

    ck_assert_msg(text[0] == '\0' || text[strlen(text) - 1] == '\n', "no final newline");
    for (const char *p = text; *p != '\0';) {
        const char *eol = strchr(p, '\n');
        char line[1024], name[128], type[16];
        size_t len = (size_t)(eol - p), i = 0;

        ck_assert_uint_lt(len, sizeof(line));
        memcpy(line, p, len);
        line[len] = '\0';
        p = eol + 1;
        if (strncmp(line, "# HELP ", 7) == 0 || strncmp(line, "# TYPE ", 7) == 0) {
            bool help = line[2] == 'H';
            ck_assert_int_eq(sscanf(line + 7, "%127s", name), 1);
            if (strcmp(name, cur) != 0) {
                for (int f = 0; f < nfam; f++)
                    ck_assert_msg(strcmp(families[f], name) != 0, "family %s split", name);
                ck_assert_int_lt(nfam, 64);
                strcpy(families[nfam++], name);
                strcpy(cur, name);
                cur_type[0] = '\0';
            } else {
                ck_assert_msg(!help, "second HELP for %s", name);
                ck_assert_msg(cur_type[0] == '\0', "second TYPE for %s", name);
            }
            if (!help) {
                ck_assert_int_eq(sscanf(line + 7, "%*s %15s", type), 1);
                ck_assert_msg(strcmp(type, "counter") == 0 || strcmp(type, "gauge") == 0 ||
                                  strcmp(type, "histogram") == 0,
                              "type %s", type);
                strcpy(cur_type, type);
            }
            continue;
        }
        /* A sample: name, optional labels, one space, a value. */
        ck_assert_msg(name_char(line[0], true), "bad line '%s'", line);
        while (name_char(line[i], false))
            i++;
        memcpy(name, line, i);
        name[i] = '\0';
        ck_assert_msg(cur_type[0] != '\0', "sample before TYPE: %s", line);
        if (strcmp(cur_type, "histogram") == 0) {
            size_t fl = strlen(cur);
            ck_assert_msg(strncmp(name, cur, fl) == 0 &&
                              (strcmp(name + fl, "_bucket") == 0 ||
                               strcmp(name + fl, "_sum") == 0 || strcmp(name + fl, "_count") == 0),
                          "%s in histogram %s", name, cur);
        } else {
            ck_assert_msg(strcmp(name, cur) == 0, "%s in family %s", name, cur);
        }
        if (line[i] == '{') {
            i++;
            for (;;) {
                ck_assert_msg(name_char(line[i], true), "label name in '%s'", line);
                while (name_char(line[i], false))
                    i++;
                ck_assert_msg(line[i] == '=' && line[i + 1] == '"', "label in '%s'", line);
                i += 2;
                while (line[i] != '"') {
                    ck_assert_msg(line[i] != '\0', "unterminated value in '%s'", line);
                    i += line[i] == '\\' ? 2 : 1;
                }
                i++;
                if (line[i] == '}')
                    break;
                ck_assert_msg(line[i] == ',', "labels in '%s'", line);
                i++;
            }
            i++;
        }
        ck_assert_msg(line[i] == ' ', "no space in '%s'", line);
        {
            char *end = NULL;
            double v = strtod(line + i + 1, &end);
            ck_assert_msg(end != line + i + 1 && *end == '\0', "value in '%s'", line);
            if (strstr(name, "_bucket") != NULL && strcmp(cur_type, "histogram") == 0) {
                ck_assert_msg(v >= last_bucket || strstr(line, "le=\"1e-06\"") != NULL,
                              "buckets not cumulative at '%s'", line);
                last_bucket = v;
            } else if (strcmp(cur_type, "histogram") == 0 && strstr(name, "_count") != NULL) {
                ck_assert_msg(v == last_bucket, "_count != +Inf bucket at '%s'", line);
            }
        }
        nsamples++;
    }
    return nsamples;
}

static void teardown(void)
{
    sl_metrics_reset_all();
}

/* ---- counters, gauges, labels ----------------------------------------- */

START_TEST(test_counter)
{
    sl_counter *c = sl_counter_get("sluice_test_total", NULL, "A test counter.");
    sl_counter *r1 = sl_counter_get("sluice_busy_total", "reason=\"rate_limited\"", "Busy.");
    sl_counter *r2 = sl_counter_get("sluice_busy_total", "reason=\"tenant_queue_full\"", "x");
    char *text;

    ck_assert_ptr_nonnull(c);
    ck_assert_ptr_eq(c, sl_counter_get("sluice_test_total", NULL, NULL));
    ck_assert_ptr_eq(c, sl_counter_get("sluice_test_total", "", NULL));
    ck_assert_ptr_ne(r1, r2);
    ck_assert_ptr_eq(r1, sl_counter_get("sluice_busy_total", "reason=\"rate_limited\"", NULL));
    ck_assert_uint_eq(sl_counter_value(c), 0);
    sl_counter_inc(c);
    sl_counter_add(c, 41);
    sl_counter_add(r1, 3);
    sl_counter_inc(r2);
    ck_assert_uint_eq(sl_counter_value(c), 42);
    ck_assert_uint_eq(sl_counter_value(r1), 3);
    ck_assert_uint_eq(sl_counter_value(r2), 1);

    /* NULL-safe. */
    sl_counter_inc(NULL);
    ck_assert_uint_eq(sl_counter_value(NULL), 0);

    text = render();
    ck_assert_int_eq(check_format(text), 3);
    ck_assert_int_eq(count_lines_starting(text, "# HELP sluice_busy_total "), 1);
    ck_assert_int_eq(count_lines_starting(text, "# TYPE sluice_busy_total counter"), 1);
    ck_assert_ptr_nonnull(strstr(text, "# HELP sluice_busy_total Busy.\n"));
    ck_assert_ptr_nonnull(strstr(text, "# HELP sluice_test_total A test counter.\n"));
    ck_assert(sample(text, "sluice_test_total") == 42);
    ck_assert(sample(text, "sluice_busy_total{reason=\"rate_limited\"}") == 3);
    ck_assert(sample(text, "sluice_busy_total{reason=\"tenant_queue_full\"}") == 1);
    free(text);
}
END_TEST

START_TEST(test_gauge)
{
    sl_gauge *g = sl_gauge_get("sluice_conns", "tier=\"gw\",zone=\"a\"", NULL);
    char *text;

    ck_assert_ptr_eq(g, sl_gauge_get("sluice_conns", "tier=\"gw\",zone=\"a\"", "ignored"));
    sl_gauge_set(g, 10);
    sl_gauge_add(g, -25);
    sl_gauge_inc(g);
    sl_gauge_dec(g);
    sl_gauge_dec(g);
    ck_assert_int_eq(sl_gauge_value(g), -16);
    text = render();
    ck_assert_int_eq(check_format(text), 1);
    ck_assert_ptr_null(strstr(text, "# HELP")); /* no help given */
    ck_assert(sample(text, "sluice_conns{tier=\"gw\",zone=\"a\"}") == -16);
    free(text);
}
END_TEST

START_TEST(test_invalid_and_conflicts)
{
    static const char *const bad_names[] = {"", "1abc", "a-b", "a b", "a.b", "é"};
    static const char *const bad_labels[] = {
        "reason=x", "reason=\"x", "=\"x\"",   "a=\"x\",", "a=\"x\"b",         "__a=\"x\"",
        "a =\"x\"", "a=\"x\\q\"", "a=\"x\"}", "1a=\"x\"", "a=\"x\",,b=\"y\"",
    };
    sl_gauge *dummy = sl_gauge_get(NULL, NULL, NULL);
    sl_counter *c;
    char *text;

    ck_assert_ptr_nonnull(dummy);
    for (size_t i = 0; i < sizeof(bad_names) / sizeof(bad_names[0]); i++)
        ck_assert_ptr_eq(sl_gauge_get(bad_names[i], NULL, NULL), dummy);
    for (size_t i = 0; i < sizeof(bad_labels) / sizeof(bad_labels[0]); i++)
        ck_assert_msg(sl_gauge_get("ok_name", bad_labels[i], NULL) == dummy, "%s", bad_labels[i]);
    /* Escapes in label values are fine. */
    ck_assert_ptr_ne(sl_gauge_get("ok_name", "a=\"x\\\"y\\\\z\\n\"", NULL), dummy);
    /* le and quantile are reserved in histogram labels only. */
    ck_assert_ptr_eq(sl_hist_get("h_seconds", "le=\"1\"", NULL), sl_hist_get(NULL, NULL, NULL));
    ck_assert_ptr_eq(sl_hist_get("h_seconds", "quantile=\"1\"", NULL),
                     sl_hist_get(NULL, NULL, NULL));
    ck_assert_ptr_ne(sl_gauge_get("g_le", "le=\"1\"", NULL), dummy);

    /* One name, one type. */
    c = sl_counter_get("shared_name", NULL, NULL);
    ck_assert_ptr_eq(sl_gauge_get("shared_name", NULL, NULL), dummy);
    ck_assert_ptr_eq(sl_gauge_get("shared_name", "x=\"1\"", NULL), dummy);
    ck_assert_ptr_eq(sl_counter_get("shared_name", NULL, NULL), c);
    /* A histogram owns <name>_quantile, whichever comes first. */
    ck_assert_ptr_ne(sl_hist_get("lat_seconds", NULL, NULL), sl_hist_get(NULL, NULL, NULL));
    ck_assert_ptr_eq(sl_gauge_get("lat_seconds_quantile", NULL, NULL), dummy);
    ck_assert_ptr_ne(sl_gauge_get("other_quantile", NULL, NULL), dummy);
    ck_assert_ptr_eq(sl_hist_get("other", NULL, NULL), sl_hist_get(NULL, NULL, NULL));

    /* Writes to dummies are harmless and never rendered. */
    sl_gauge_set(dummy, 99);
    text = render();
    check_format(text);
    ck_assert_int_eq(count_lines_starting(text, "# TYPE shared_name "), 1);
    ck_assert_int_eq(count_lines_starting(text, "# TYPE shared_name counter"), 1);
    ck_assert_int_eq(count_lines_starting(text, "# TYPE lat_seconds_quantile gauge"), 1);
    ck_assert_ptr_null(strstr(text, " 99\n"));
    ck_assert_ptr_null(strstr(text, "1abc"));
    free(text);
}
END_TEST

START_TEST(test_help_escaping)
{
    char *text;

    sl_counter_get("esc_total", NULL, "back\\slash and\nnewline");
    text = render();
    check_format(text);
    ck_assert_ptr_nonnull(strstr(text, "# HELP esc_total back\\\\slash and\\nnewline\n"));
    free(text);
}
END_TEST

/* ---- histograms -------------------------------------------------------- */

START_TEST(test_hist_buckets)
{
    sl_hist *h = sl_hist_get("req_seconds", "op=\"send\"", "Request latency.");
    sl_hist *e = sl_hist_get("empty_seconds", NULL, NULL);
    char *text;

    sl_hist_observe_ns(h, 500);  /* 0.5 us */
    sl_hist_observe_ns(h, 1000); /* exactly 1 us: le="1e-06" includes it */
    sl_hist_observe_ns(h, 1001); /* just above */
    sl_hist_observe(h, 0.0015);  /* 1.5 ms, three times */
    sl_hist_observe(h, 0.0015);
    sl_hist_observe_ns(h, 1500000);
    sl_hist_observe(h, 7.0);   /* 7 s */
    sl_hist_observe(h, 100.0); /* past 60 s: +Inf only */
    sl_hist_observe_ns(h, -5); /* counts as 0 */
    sl_hist_observe(h, NAN);   /* counts as 0 */
    ck_assert_uint_eq(sl_hist_count(h), 10);
    ck_assert_double_eq_tol(sl_hist_sum(h), 0.000002501 + 0.0045 + 107.0, 1e-12);

    text = render();
    ck_assert_int_gt(check_format(text), 0);
    ck_assert(sample(text, "req_seconds_bucket{op=\"send\",le=\"1e-06\"}") == 4);
    ck_assert(sample(text, "req_seconds_bucket{op=\"send\",le=\"2e-06\"}") == 5);
    ck_assert(sample(text, "req_seconds_bucket{op=\"send\",le=\"0.001\"}") == 5);
    ck_assert(sample(text, "req_seconds_bucket{op=\"send\",le=\"0.002\"}") == 8);
    ck_assert(sample(text, "req_seconds_bucket{op=\"send\",le=\"5\"}") == 8);
    ck_assert(sample(text, "req_seconds_bucket{op=\"send\",le=\"10\"}") == 9);
    ck_assert(sample(text, "req_seconds_bucket{op=\"send\",le=\"60\"}") == 9);
    ck_assert(sample(text, "req_seconds_bucket{op=\"send\",le=\"+Inf\"}") == 10);
    ck_assert(sample(text, "req_seconds_count{op=\"send\"}") == 10);
    ck_assert_double_eq_tol(sample(text, "req_seconds_sum{op=\"send\"}"), 107.004502501, 1e-9);
    ck_assert_int_eq(count_lines_starting(text, "req_seconds_bucket{op=\"send\","), 26);
    ck_assert_int_eq(count_lines_starting(text, "# TYPE req_seconds histogram"), 1);
    ck_assert_int_eq(count_lines_starting(text, "# TYPE req_seconds_quantile gauge"), 1);
    ck_assert(sample(text, "req_seconds_quantile{op=\"send\",quantile=\"0.999\"}") == 100.0);
    ck_assert(!isnan(sample(text, "req_seconds_quantile{op=\"send\",quantile=\"0.5\"}")));
    /* An empty histogram: zero counts, NaN quantiles. */
    ck_assert(sample(text, "empty_seconds_bucket{le=\"+Inf\"}") == 0);
    ck_assert(sample(text, "empty_seconds_count") == 0);
    ck_assert_ptr_nonnull(strstr(text, "empty_seconds_quantile{quantile=\"0.99\"} NaN\n"));
    ck_assert(isnan(sl_hist_quantile(e, 0.5)));
    ck_assert(isnan(sl_hist_quantile(h, 1.5)));
    ck_assert(isnan(sl_hist_quantile(h, -0.1)));
    ck_assert(isnan(sl_hist_quantile(NULL, 0.5)));
    free(text);
}
END_TEST

/* Checks the p-quantile estimate of h against the exact one of sorted[n]. */
static void check_q(const sl_hist *h, const int64_t *sorted, size_t n, double q)
{
    size_t rank = (size_t)ceil(q * (double)n);
    double exact = (double)sorted[rank > 0 ? rank - 1 : 0] / 1e9;
    double est = sl_hist_quantile(h, q);

    ck_assert_msg(fabs(est - exact) <= QERR * exact + 1e-9, "q%g: estimate %.9g, exact %.9g", q,
                  est, exact);
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

START_TEST(test_quantiles)
{
    enum { N = 100000 };
    sl_hist *uni = sl_hist_get("uniform_seconds", NULL, NULL);
    sl_hist *logu = sl_hist_get("loguniform_seconds", NULL, NULL);
    sl_hist *one = sl_hist_get("constant_seconds", NULL, NULL);
    int64_t *vals = malloc(N * sizeof(*vals));
    uint64_t x = 88172645463325252ULL;
    char *text;

    ck_assert_ptr_nonnull(vals);
    /* 1 us .. 100 ms in 1 us steps. */
    for (int i = 0; i < N; i++) {
        vals[i] = (int64_t)(i + 1) * 1000;
        sl_hist_observe_ns(uni, vals[i]);
    }
    check_q(uni, vals, N, 0.5);
    check_q(uni, vals, N, 0.99);
    check_q(uni, vals, N, 0.999);
    check_q(uni, vals, N, 0.1);
    check_q(uni, vals, N, 1.0);

    /* Log-uniform over 1 us .. 60 s (xorshift, fixed seed). */
    for (int i = 0; i < N; i++) {
        double u;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        u = (double)(x >> 11) / 9007199254740992.0;
        vals[i] = (int64_t)(1000.0 * pow(6e7, u));
        sl_hist_observe_ns(logu, vals[i]);
    }
    qsort(vals, N, sizeof(*vals), cmp_i64);
    for (double q = 0.05; q < 1.0; q += 0.05)
        check_q(logu, vals, N, q);
    check_q(logu, vals, N, 0.99);
    check_q(logu, vals, N, 0.999);

    /* A single value: every quantile near it and never above it. */
    for (int i = 0; i < 1000; i++)
        sl_hist_observe(one, 0.007);
    for (double q = 0.0; q <= 1.0; q += 0.25) {
        double est = sl_hist_quantile(one, q);
        ck_assert_msg(est <= 0.007 && est >= 0.007 * (1 - QERR), "q%g = %g", q, est);
    }

    /* The rendered quantiles are the same estimates. */
    text = render();
    check_format(text);
    ck_assert_double_eq_tol(sample(text, "uniform_seconds_quantile{quantile=\"0.5\"}"),
                            sl_hist_quantile(uni, 0.5), 1e-8);
    ck_assert_double_eq_tol(sample(text, "loguniform_seconds_quantile{quantile=\"0.999\"}"),
                            sl_hist_quantile(logu, 0.999), 1e-6);
    ck_assert_double_eq_tol(sample(text, "uniform_seconds_quantile{quantile=\"0.99\"}"), 0.099,
                            0.099 * QERR);
    free(text);
    free(vals);
}
END_TEST

/* Interpolation hides bucket width on smooth distributions; single values
 * near the top of a bucket do not: this bounds the bucket error itself. */
START_TEST(test_quantile_bucket_error)
{
    char labels[32];

    for (int k = 0; k <= 30; k++) {
        /* 33 * 2^k - 1: the last ns of the first bucket of its octave,
         * the widest relative to its value. */
        int64_t v = 33 * ((int64_t)1 << k) - 1;
        sl_hist *h;

        snprintf(labels, sizeof(labels), "k=\"%d\"", k);
        h = sl_hist_get("single_seconds", labels, NULL);
        for (int i = 0; i < 10; i++)
            sl_hist_observe_ns(h, v);
        for (double q = 0.0; q <= 1.0; q += 0.5) {
            double est = sl_hist_quantile(h, q) * 1e9;
            ck_assert_msg(fabs(est - (double)v) <= QERR * (double)v + 1, "k %d q %g: %.0f vs %lld",
                          k, q, est, (long long)v);
        }
    }
    /* Two clusters: the median sits in the lower one, p99 in the upper. */
    {
        sl_hist *h = sl_hist_get("bimodal_seconds", NULL, NULL);
        for (int i = 0; i < 600; i++)
            sl_hist_observe(h, 0.001);
        for (int i = 0; i < 400; i++)
            sl_hist_observe(h, 0.05);
        ck_assert_double_eq_tol(sl_hist_quantile(h, 0.5), 0.001, 0.001 * QERR);
        ck_assert_double_eq_tol(sl_hist_quantile(h, 0.99), 0.05, 0.05 * QERR);
        ck_assert_double_eq_tol(sl_hist_quantile(h, 0.6), 0.001, 0.001 * QERR);
        ck_assert_double_eq_tol(sl_hist_quantile(h, 0.61), 0.05, 0.05 * QERR);
    }
}
END_TEST

/* ---- threads and lifecycle --------------------------------------------- */

enum { THREADS = 4, OPS = 200000, SERIES_PER_THREAD = 50 };

static pthread_barrier_t barrier;

typedef struct worker_arg {
    int id;
    sl_counter *got;
} worker_arg;

static void *worker(void *p)
{
    worker_arg *w = p;
    sl_counter *c;
    sl_gauge *g;
    sl_hist *h;
    char labels[64];

    pthread_barrier_wait(&barrier);
    /* Registration races: every thread gets the same shared pointers. */
    c = sl_counter_get("conc_total", NULL, "Concurrent.");
    g = sl_gauge_get("conc_gauge", NULL, NULL);
    h = sl_hist_get("conc_seconds", NULL, NULL);
    w->got = c;
    for (int i = 0; i < SERIES_PER_THREAD; i++) {
        snprintf(labels, sizeof(labels), "t=\"%d\",i=\"%d\"", w->id, i);
        sl_counter_inc(sl_counter_get("conc_series_total", labels, NULL));
    }
    for (int i = 0; i < OPS; i++) {
        sl_counter_inc(c);
        sl_gauge_add(g, 2);
        sl_gauge_dec(g);
        sl_hist_observe_ns(h, (int64_t)(i % 1000) * 1000);
    }
    return NULL;
}

START_TEST(test_concurrent)
{
    pthread_t th[THREADS];
    worker_arg args[THREADS];
    sl_hist *h;
    char *text;

    ck_assert_int_eq(pthread_barrier_init(&barrier, NULL, THREADS), 0);
    for (int i = 0; i < THREADS; i++) {
        args[i] = (worker_arg){.id = i, .got = NULL};
        ck_assert_int_eq(pthread_create(&th[i], NULL, worker, &args[i]), 0);
    }
    for (int i = 0; i < THREADS; i++)
        pthread_join(th[i], NULL);
    pthread_barrier_destroy(&barrier);
    for (int i = 1; i < THREADS; i++)
        ck_assert_ptr_eq(args[i].got, args[0].got);
    ck_assert_uint_eq(sl_counter_value(args[0].got), (uint64_t)THREADS * OPS);
    ck_assert_int_eq(sl_gauge_value(sl_gauge_get("conc_gauge", NULL, NULL)),
                     (int64_t)THREADS * OPS);
    h = sl_hist_get("conc_seconds", NULL, NULL);
    ck_assert_uint_eq(sl_hist_count(h), (uint64_t)THREADS * OPS);
    /* Sum of (i % 1000) us over OPS per thread. */
    ck_assert_double_eq_tol(sl_hist_sum(h), THREADS * (OPS / 1000) * (999.0 * 1000 / 2) * 1e-6,
                            1e-6);
    text = render();
    check_format(text);
    ck_assert_int_eq(count_lines_starting(text, "conc_series_total{"), THREADS * SERIES_PER_THREAD);
    ck_assert_int_eq(count_lines_starting(text, "# TYPE conc_series_total counter"), 1);
    ck_assert(sample(text, "conc_series_total{t=\"3\",i=\"49\"}") == 1);
    free(text);
}
END_TEST

START_TEST(test_reset)
{
    sl_counter *c = sl_counter_get("reset_total", NULL, NULL);
    char *text = NULL;
    size_t len = 99;

    sl_counter_add(c, 5);
    sl_metrics_reset_all();
    ck_assert_int_eq(sl_metrics_render(&text, &len), SL_OK);
    ck_assert_uint_eq(len, 0);
    ck_assert_str_eq(text, "");
    free(text);
    c = sl_counter_get("reset_total", NULL, NULL);
    ck_assert_uint_eq(sl_counter_value(c), 0);
    ck_assert_int_eq(sl_metrics_render(NULL, NULL), SL_ERR_INVAL);
}
END_TEST

static Suite *metrics_suite(void)
{
    Suite *s = suite_create("metrics");
    TCase *tc = tcase_create("metrics");

    tcase_add_checked_fixture(tc, NULL, teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_counter);
    tcase_add_test(tc, test_gauge);
    tcase_add_test(tc, test_invalid_and_conflicts);
    tcase_add_test(tc, test_help_escaping);
    tcase_add_test(tc, test_hist_buckets);
    tcase_add_test(tc, test_quantiles);
    tcase_add_test(tc, test_quantile_bucket_error);
    tcase_add_test(tc, test_concurrent);
    tcase_add_test(tc, test_reset);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr;
    int failed;

    /* Invalid registrations log errors on purpose; keep the output quiet. */
    sl_log_init("check_metrics", SL_LOG_ERROR + 1);
    sr = srunner_create(metrics_suite());
    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
