#include "sl_metrics.h"

#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sl_log.h"

#define NAME_MAX_LEN   127
#define LABELS_MAX_LEN 512
#define CACHE_LINE     64

/* Fine buckets: values below 2^SUB_BITS ns get one bucket each; above, each
 * power of two [2^e, 2^(e+1)) is split into SUB_COUNT equal buckets, so a
 * bucket is at most 1/32 of its lower bound wide. Values from 2^TOP_BITS ns
 * (68.7 s) go to the overflow bucket FINE_N. */
#define SUB_BITS  5
#define SUB_COUNT (1 << SUB_BITS)
#define TOP_BITS  36
#define FINE_N    (SUB_COUNT + (TOP_BITS - SUB_BITS) * SUB_COUNT)
/* Observations are clamped here (13 days) so that _sum cannot wrap. */
#define NS_CLAMP ((int64_t)1 << 50)

/* Prometheus `le` bounds in ns: 1-2-5 from 1 us to 60 s. */
static const int64_t le_ns[] = {
    1000LL,       2000LL,        5000LL,        10000LL,       20000LL,
    50000LL,      100000LL,      200000LL,      500000LL,      1000000LL,
    2000000LL,    5000000LL,     10000000LL,    20000000LL,    50000000LL,
    100000000LL,  200000000LL,   500000000LL,   1000000000LL,  2000000000LL,
    5000000000LL, 10000000000LL, 20000000000LL, 30000000000LL, 60000000000LL,
};
#define LE_N (sizeof(le_ns) / sizeof(le_ns[0]))

static const double quantiles[] = {0.5, 0.99, 0.999};
static const char *const quantile_names[] = {"0.5", "0.99", "0.999"};

enum kind { K_COUNTER, K_GAUGE, K_HIST };
static const char *const kind_names[] = {"counter", "gauge", "histogram"};

struct sl_counter {
    _Atomic uint64_t v;
};

struct sl_gauge {
    _Atomic int64_t v;
};

struct sl_hist {
    _Atomic uint64_t fine[FINE_N + 1]; /* the last one is the overflow bucket */
    _Atomic uint64_t coarse[LE_N + 1]; /* per `le` bound, not cumulative; last: +Inf */
    _Atomic uint64_t sum_ns;
    _Atomic int64_t max_ns;
};

typedef struct series {
    struct series *next;
    char *labels; /* "" when none */
    void *m;      /* sl_counter, sl_gauge or sl_hist, cache-line aligned */
} series;

typedef struct family {
    struct family *next;
    char *name;
    char *help; /* NULL: no HELP line */
    enum kind kind;
    series *first, *last;
} family;

/* The registry: guarded by reg_mu. The metrics themselves are not. */
static pthread_mutex_t reg_mu = PTHREAD_MUTEX_INITIALIZER;
static family *reg_first, *reg_last;

static sl_counter dummy_counter;
static sl_gauge dummy_gauge;
static sl_hist dummy_hist;

/* ---- validation ------------------------------------------------------- */

static bool is_alpha_(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
}

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

static bool name_valid(const char *s)
{
    size_t i;

    if (s == NULL || !(is_alpha_(s[0]) || s[0] == ':'))
        return false;
    for (i = 1; s[i] != '\0'; i++) {
        if (i >= NAME_MAX_LEN || !(is_alpha_(s[i]) || is_digit(s[i]) || s[i] == ':'))
            return false;
    }
    return true;
}

/* `k="v"` pairs separated by commas; a histogram may not use le or quantile,
 * which its rendering adds. */
static bool labels_valid(const char *s, enum kind kind)
{
    const char *p = s;

    if (*p == '\0')
        return true;
    if (strlen(s) > LABELS_MAX_LEN)
        return false;
    for (;;) {
        const char *ns = p;
        size_t nl;

        if (!is_alpha_(*p))
            return false;
        while (is_alpha_(*p) || is_digit(*p))
            p++;
        nl = (size_t)(p - ns);
        if (nl >= 2 && ns[0] == '_' && ns[1] == '_')
            return false;
        if (kind == K_HIST &&
            ((nl == 2 && memcmp(ns, "le", 2) == 0) || (nl == 8 && memcmp(ns, "quantile", 8) == 0)))
            return false;
        if (*p++ != '=' || *p++ != '"')
            return false;
        while (*p != '"') {
            if (*p == '\0' || *p == '\n')
                return false;
            if (*p == '\\') {
                p++;
                if (*p != '\\' && *p != '"' && *p != 'n')
                    return false;
            }
            p++;
        }
        p++;
        if (*p == '\0')
            return true;
        if (*p++ != ',')
            return false;
    }
}

/* ---- registry --------------------------------------------------------- */

static family *find_family(const char *name)
{
    for (family *f = reg_first; f != NULL; f = f->next) {
        if (strcmp(f->name, name) == 0)
            return f;
    }
    return NULL;
}

/* A histogram h owns the rendered family name h_quantile. */
static bool name_reserved(const char *name, enum kind kind)
{
    static const char sfx[] = "_quantile";
    size_t n = strlen(name), sl = sizeof(sfx) - 1;
    char buf[NAME_MAX_LEN + sizeof(sfx)];

    if (kind == K_HIST) {
        snprintf(buf, sizeof(buf), "%s%s", name, sfx);
        if (find_family(buf) != NULL)
            return true;
    }
    if (n > sl && strcmp(name + n - sl, sfx) == 0) {
        family *f;
        memcpy(buf, name, n - sl);
        buf[n - sl] = '\0';
        f = find_family(buf);
        if (f != NULL && f->kind == K_HIST)
            return true;
    }
    return false;
}

static void *dummy_of(enum kind kind)
{
    switch (kind) {
    case K_COUNTER:
        return &dummy_counter;
    case K_GAUGE:
        return &dummy_gauge;
    case K_HIST:
        break;
    }
    return &dummy_hist;
}

static size_t metric_size(enum kind kind)
{
    size_t n = kind == K_COUNTER ? sizeof(sl_counter)
               : kind == K_GAUGE ? sizeof(sl_gauge)
                                 : sizeof(sl_hist);
    return (n + CACHE_LINE - 1) / CACHE_LINE * CACHE_LINE;
}

static void series_free(series *s)
{
    if (s == NULL)
        return;
    free(s->labels);
    free(s->m);
    free(s);
}

static series *series_new(const char *labels, enum kind kind)
{
    series *s = calloc(1, sizeof(*s));
    size_t sz = metric_size(kind);

    if (s == NULL)
        return NULL;
    s->labels = strdup(labels);
    /* One cache line or more per metric: no false sharing between them. */
    s->m = aligned_alloc(CACHE_LINE, sz);
    if (s->labels == NULL || s->m == NULL) {
        series_free(s);
        return NULL;
    }
    memset(s->m, 0, sz);
    return s;
}

static void family_free(family *f)
{
    series *s, *next;

    if (f == NULL)
        return;
    for (s = f->first; s != NULL; s = next) {
        next = s->next;
        series_free(s);
    }
    free(f->name);
    free(f->help);
    free(f);
}

static family *family_new(const char *name, const char *help, enum kind kind)
{
    family *f = calloc(1, sizeof(*f));

    if (f == NULL)
        return NULL;
    f->kind = kind;
    f->name = strdup(name);
    f->help = help != NULL ? strdup(help) : NULL;
    if (f->name == NULL || (help != NULL && f->help == NULL)) {
        family_free(f);
        return NULL;
    }
    return f;
}

static void *metric_get(enum kind kind, const char *name, const char *labels, const char *help)
{
    family *f, *fresh = NULL;
    series *s;
    void *m = NULL;
    const char *fail = NULL;

    if (labels == NULL)
        labels = "";
    if (!name_valid(name) || !labels_valid(labels, kind)) {
        sl_error("metrics: invalid %s name or labels: %s{%s}", kind_names[kind],
                 name != NULL ? name : "(null)", labels);
        return dummy_of(kind);
    }
    pthread_mutex_lock(&reg_mu);
    f = find_family(name);
    if (f != NULL && f->kind != kind) {
        fail = "name already used by another type";
        goto cleanup;
    }
    if (f != NULL) {
        for (s = f->first; s != NULL; s = s->next) {
            if (strcmp(s->labels, labels) == 0) {
                m = s->m;
                goto cleanup;
            }
        }
    } else {
        if (name_reserved(name, kind)) {
            fail = "name reserved by a histogram's quantile family";
            goto cleanup;
        }
        f = fresh = family_new(name, help, kind);
        if (f == NULL) {
            fail = "out of memory";
            goto cleanup;
        }
    }
    s = series_new(labels, kind);
    if (s == NULL) {
        fail = "out of memory";
        family_free(fresh);
        goto cleanup;
    }
    if (f->last != NULL)
        f->last->next = s;
    else
        f->first = s;
    f->last = s;
    if (fresh != NULL) {
        if (reg_last != NULL)
            reg_last->next = fresh;
        else
            reg_first = fresh;
        reg_last = fresh;
    }
    m = s->m;
cleanup:
    pthread_mutex_unlock(&reg_mu);
    if (m == NULL) {
        sl_error("metrics: cannot register %s %s{%s}: %s", kind_names[kind], name, labels, fail);
        m = dummy_of(kind);
    }
    return m;
}

/* ---- counters and gauges ---------------------------------------------- */

sl_counter *sl_counter_get(const char *name, const char *labels, const char *help)
{
    return metric_get(K_COUNTER, name, labels, help);
}

void sl_counter_add(sl_counter *c, uint64_t n)
{
    if (c != NULL)
        atomic_fetch_add_explicit(&c->v, n, memory_order_relaxed);
}

uint64_t sl_counter_value(const sl_counter *c)
{
    return c != NULL ? atomic_load_explicit(&c->v, memory_order_relaxed) : 0;
}

sl_gauge *sl_gauge_get(const char *name, const char *labels, const char *help)
{
    return metric_get(K_GAUGE, name, labels, help);
}

void sl_gauge_set(sl_gauge *g, int64_t v)
{
    if (g != NULL)
        atomic_store_explicit(&g->v, v, memory_order_relaxed);
}

void sl_gauge_add(sl_gauge *g, int64_t delta)
{
    if (g != NULL)
        atomic_fetch_add_explicit(&g->v, delta, memory_order_relaxed);
}

int64_t sl_gauge_value(const sl_gauge *g)
{
    return g != NULL ? atomic_load_explicit(&g->v, memory_order_relaxed) : 0;
}

/* ---- histograms ------------------------------------------------------- */

sl_hist *sl_hist_get(const char *name, const char *labels, const char *help)
{
    return metric_get(K_HIST, name, labels, help);
}

static size_t fine_index(uint64_t v)
{
    int e;

    if (v < SUB_COUNT)
        return (size_t)v;
    if ((v >> TOP_BITS) != 0)
        return FINE_N;
    e = 63 - __builtin_clzll(v);
    return SUB_COUNT + (size_t)(e - SUB_BITS) * SUB_COUNT +
           (size_t)((v >> (e - SUB_BITS)) - SUB_COUNT);
}

/* Lower bound and width in ns of fine bucket i < FINE_N. */
static void fine_bounds(size_t i, double *lo, double *width)
{
    size_t k, sub;

    if (i < SUB_COUNT) {
        *lo = (double)i;
        *width = 1;
        return;
    }
    k = (i - SUB_COUNT) / SUB_COUNT;
    sub = (i - SUB_COUNT) % SUB_COUNT;
    *lo = (double)(((uint64_t)SUB_COUNT + sub) << k);
    *width = (double)((uint64_t)1 << k);
}

static size_t coarse_index(int64_t v)
{
    size_t lo = 0, hi = LE_N;

    /* The first bound >= v, or LE_N (+Inf). */
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (le_ns[mid] < v)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

void sl_hist_observe_ns(sl_hist *h, int64_t ns)
{
    int64_t cur;

    if (h == NULL)
        return;
    if (ns < 0)
        ns = 0;
    if (ns > NS_CLAMP)
        ns = NS_CLAMP;
    atomic_fetch_add_explicit(&h->fine[fine_index((uint64_t)ns)], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&h->coarse[coarse_index(ns)], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&h->sum_ns, (uint64_t)ns, memory_order_relaxed);
    cur = atomic_load_explicit(&h->max_ns, memory_order_relaxed);
    while (ns > cur && !atomic_compare_exchange_weak_explicit(
                           &h->max_ns, &cur, ns, memory_order_relaxed, memory_order_relaxed))
        ;
}

void sl_hist_observe(sl_hist *h, double seconds)
{
    int64_t ns;

    if (!(seconds > 0))
        ns = 0;
    else if (seconds >= (double)NS_CLAMP / 1e9)
        ns = NS_CLAMP;
    else
        ns = (int64_t)(seconds * 1e9 + 0.5);
    sl_hist_observe_ns(h, ns);
}

/* The q-quantile in ns of a snapshot of the fine buckets (total > 0):
 * the bucket holding rank q * total, interpolated linearly inside it and
 * never above the largest value seen. */
static double quantile_ns(const uint64_t *fine, uint64_t total, double q, int64_t max_ns)
{
    double rank = q * (double)total, lo, width, est;
    uint64_t cum = 0;

    for (size_t i = 0; i <= FINE_N; i++) {
        if (fine[i] == 0)
            continue;
        if ((double)(cum + fine[i]) >= rank) {
            if (i == FINE_N)
                return (double)max_ns;
            fine_bounds(i, &lo, &width);
            est = lo + width * ((rank - (double)cum) / (double)fine[i]);
            return est > (double)max_ns ? (double)max_ns : est;
        }
        cum += fine[i];
    }
    return (double)max_ns;
}

/* Copies the fine buckets; returns their total. */
static uint64_t fine_snapshot(const sl_hist *h, uint64_t *fine)
{
    uint64_t total = 0;

    for (size_t i = 0; i <= FINE_N; i++) {
        fine[i] = atomic_load_explicit(&h->fine[i], memory_order_relaxed);
        total += fine[i];
    }
    return total;
}

double sl_hist_quantile(const sl_hist *h, double q)
{
    uint64_t fine[FINE_N + 1], total;

    if (h == NULL || !(q >= 0 && q <= 1))
        return NAN;
    total = fine_snapshot(h, fine);
    if (total == 0)
        return NAN;
    return quantile_ns(fine, total, q, atomic_load_explicit(&h->max_ns, memory_order_relaxed)) /
           1e9;
}

uint64_t sl_hist_count(const sl_hist *h)
{
    uint64_t n = 0;

    if (h == NULL)
        return 0;
    for (size_t i = 0; i <= LE_N; i++)
        n += atomic_load_explicit(&h->coarse[i], memory_order_relaxed);
    return n;
}

double sl_hist_sum(const sl_hist *h)
{
    return h != NULL ? (double)atomic_load_explicit(&h->sum_ns, memory_order_relaxed) / 1e9 : 0;
}

/* ---- rendering -------------------------------------------------------- */

typedef struct sbuf {
    char *p;
    size_t len, cap;
    bool oom;
} sbuf;

static void sb_printf(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void sb_printf(sbuf *b, const char *fmt, ...)
{
    va_list ap;
    int n;

    if (b->oom)
        return;
    for (int attempt = 0; attempt < 2; attempt++) {
        size_t room = b->cap - b->len;
        va_start(ap, fmt);
        n = vsnprintf(b->p != NULL ? b->p + b->len : NULL, room, fmt, ap);
        va_end(ap);
        if (n < 0) {
            b->oom = true;
            return;
        }
        if ((size_t)n < room) {
            b->len += (size_t)n;
            return;
        }
        size_t ncap = b->cap == 0 ? 16384 : b->cap;
        while (ncap - b->len <= (size_t)n)
            ncap *= 2;
        char *np = realloc(b->p, ncap);
        if (np == NULL) {
            b->oom = true;
            return;
        }
        b->p = np;
        b->cap = ncap;
    }
}

/* HELP text escapes backslash and newline. */
static void sb_header(sbuf *b, const char *name, const char *suffix, const char *help,
                      const char *type)
{
    if (help != NULL) {
        sb_printf(b, "# HELP %s%s ", name, suffix);
        for (const char *p = help; *p != '\0'; p++) {
            if (*p == '\\')
                sb_printf(b, "\\\\");
            else if (*p == '\n')
                sb_printf(b, "\\n");
            else
                sb_printf(b, "%c", *p);
        }
        sb_printf(b, "\n");
    }
    sb_printf(b, "# TYPE %s%s %s\n", name, suffix, type);
}

/* Writes `{labels}`, `{labels,extra}`, `{extra}` or nothing. */
static void sb_labels(sbuf *b, const char *labels, const char *extra)
{
    if (labels[0] == '\0' && extra == NULL)
        return;
    sb_printf(b, "{%s%s%s}", labels, labels[0] != '\0' && extra != NULL ? "," : "",
              extra != NULL ? extra : "");
}

static void render_hist(sbuf *b, const char *name, const series *s)
{
    const sl_hist *h = s->m;
    uint64_t cum = 0;
    char le[48];

    for (size_t i = 0; i <= LE_N; i++) {
        cum += atomic_load_explicit(&h->coarse[i], memory_order_relaxed);
        if (i < LE_N)
            snprintf(le, sizeof(le), "le=\"%g\"", (double)le_ns[i] / 1e9);
        else
            snprintf(le, sizeof(le), "le=\"+Inf\"");
        sb_printf(b, "%s_bucket", name);
        sb_labels(b, s->labels, le);
        sb_printf(b, " %llu\n", (unsigned long long)cum);
    }
    sb_printf(b, "%s_sum", name);
    sb_labels(b, s->labels, NULL);
    sb_printf(b, " %.9f\n", sl_hist_sum(h));
    sb_printf(b, "%s_count", name);
    sb_labels(b, s->labels, NULL);
    sb_printf(b, " %llu\n", (unsigned long long)cum);
}

static void render_quantiles(sbuf *b, const char *name, const series *s)
{
    const sl_hist *h = s->m;
    uint64_t fine[FINE_N + 1], total = fine_snapshot(h, fine);
    int64_t max_ns = atomic_load_explicit(&h->max_ns, memory_order_relaxed);
    char q[32];

    for (size_t i = 0; i < sizeof(quantiles) / sizeof(quantiles[0]); i++) {
        snprintf(q, sizeof(q), "quantile=\"%s\"", quantile_names[i]);
        sb_printf(b, "%s_quantile", name);
        sb_labels(b, s->labels, q);
        if (total == 0)
            sb_printf(b, " NaN\n");
        else
            sb_printf(b, " %.9g\n", quantile_ns(fine, total, quantiles[i], max_ns) / 1e9);
    }
}

static void render_family(sbuf *b, const family *f)
{
    const series *s;
    char qhelp[256];

    sb_header(b, f->name, "", f->help, kind_names[f->kind]);
    for (s = f->first; s != NULL; s = s->next) {
        switch (f->kind) {
        case K_COUNTER:
            sb_printf(b, "%s", f->name);
            sb_labels(b, s->labels, NULL);
            sb_printf(b, " %llu\n", (unsigned long long)sl_counter_value(s->m));
            break;
        case K_GAUGE:
            sb_printf(b, "%s", f->name);
            sb_labels(b, s->labels, NULL);
            sb_printf(b, " %lld\n", (long long)sl_gauge_value(s->m));
            break;
        case K_HIST:
            render_hist(b, f->name, s);
            break;
        }
    }
    if (f->kind != K_HIST)
        return;
    snprintf(qhelp, sizeof(qhelp), "Estimated quantiles of %s in seconds.", f->name);
    sb_header(b, f->name, "_quantile", qhelp, "gauge");
    for (s = f->first; s != NULL; s = s->next)
        render_quantiles(b, f->name, s);
}

sl_status sl_metrics_render(char **out, size_t *len)
{
    sbuf b = {NULL, 0, 0, false};

    if (out == NULL)
        return SL_ERR_INVAL;
    pthread_mutex_lock(&reg_mu);
    for (const family *f = reg_first; f != NULL; f = f->next)
        render_family(&b, f);
    pthread_mutex_unlock(&reg_mu);
    if (b.p == NULL && !b.oom) {
        b.p = malloc(1);
        if (b.p == NULL)
            b.oom = true;
        else
            b.p[0] = '\0';
    }
    if (b.oom) {
        free(b.p);
        return SL_ERR_NOMEM;
    }
    *out = b.p;
    if (len != NULL)
        *len = b.len;
    return SL_OK;
}

void sl_metrics_reset_all(void)
{
    family *f, *next;

    pthread_mutex_lock(&reg_mu);
    for (f = reg_first; f != NULL; f = next) {
        next = f->next;
        family_free(f);
    }
    reg_first = reg_last = NULL;
    pthread_mutex_unlock(&reg_mu);
}
