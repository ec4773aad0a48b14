/* Process-wide metrics: counters, gauges and latency histograms, rendered
 * as Prometheus text (format 0.0.4).
 *
 * Registration (the *_get functions) and rendering take one mutex; the
 * update and read functions are lock-free (C11 atomics) and may be called
 * from any thread. Get a metric once (at start, or lazily) and keep the
 * pointer: it stays valid until sl_metrics_reset_all().
 *
 * Naming: name matches [a-zA-Z_:][a-zA-Z0-9_:]* (at most 127 chars);
 * labels is NULL, "" or a fixed label set such as `reason="rate_limited"`
 * or `a="x",b="y"` (label names [a-zA-Z_][a-zA-Z0-9_]*, values with \\, \"
 * and \n escaped). The same name with different labels is another series of
 * the same family: HELP and TYPE are rendered once, from the first
 * registration. A histogram "h" also renders the gauge family "h_quantile"
 * (p50, p99 and p99.9), so that name is reserved, and its labels must not
 * use "le" or "quantile". A bad name or labels, a name already used by
 * another type, or OOM yields a shared dummy metric that is never rendered
 * (and an error in the log), so callers never need to check. */
#ifndef SL_METRICS_H
#define SL_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "sl_status.h"

typedef struct sl_counter sl_counter;
typedef struct sl_gauge sl_gauge;
typedef struct sl_hist sl_hist;

/* Returns the counter name{labels}, registering it on first use (help is
 * copied; NULL means none). Never NULL. */
sl_counter *sl_counter_get(const char *name, const char *labels, const char *help);
/* Adds n. NULL-safe, like every function below that takes a metric. */
void sl_counter_add(sl_counter *c, uint64_t n);
static inline void sl_counter_inc(sl_counter *c)
{
    sl_counter_add(c, 1);
}
uint64_t sl_counter_value(const sl_counter *c);

/* Returns the gauge name{labels}, registering it on first use. Never NULL. */
sl_gauge *sl_gauge_get(const char *name, const char *labels, const char *help);
void sl_gauge_set(sl_gauge *g, int64_t v);
void sl_gauge_add(sl_gauge *g, int64_t delta); /* delta may be negative */
static inline void sl_gauge_inc(sl_gauge *g)
{
    sl_gauge_add(g, 1);
}
static inline void sl_gauge_dec(sl_gauge *g)
{
    sl_gauge_add(g, -1);
}
int64_t sl_gauge_value(const sl_gauge *g);

/* Returns the histogram name{labels}, registering it on first use. Never
 * NULL. Observations are durations: internally nanoseconds in log-linear
 * buckets (32 per power of two, so a quantile estimate is within about 3%
 * of the true value from 32 ns up to 68 s; larger values are counted in an
 * overflow bucket). Rendered in seconds with `le` bounds 1-2-5 from 1 us to
 * 60 s, plus _sum, _count and the _quantile gauges. */
sl_hist *sl_hist_get(const char *name, const char *labels, const char *help);
/* Records one duration in nanoseconds (negative counts as 0). */
void sl_hist_observe_ns(sl_hist *h, int64_t ns);
/* Records one duration in seconds (NaN and negative count as 0). */
void sl_hist_observe(sl_hist *h, double seconds);
/* Returns the estimated q-quantile (0 <= q <= 1) in seconds, or NaN when
 * the histogram is empty or q is out of range. */
double sl_hist_quantile(const sl_hist *h, double q);
/* Returns the number of observations. */
uint64_t sl_hist_count(const sl_hist *h);
/* Returns the sum of all observations in seconds. */
double sl_hist_sum(const sl_hist *h);

/* Renders every registered metric as Prometheus text. Returns SL_OK and sets
 * *out to a malloc'd NUL-terminated buffer (the caller frees) and *len (may
 * be NULL) to its length; SL_ERR_NOMEM otherwise. */
sl_status sl_metrics_render(char **out, size_t *len);

/* Frees the whole registry: every pointer handed out before becomes
 * invalid. For tests and process exit only, when no other thread uses
 * metrics any more. */
void sl_metrics_reset_all(void);

#endif
