/* Log-linear latency histogram in the style of HdrHistogram.
 *
 * Values are non-negative integers (the bench records nanoseconds). Below
 * 2^SB_HIST_SUB_BITS every value has its own bucket; above, each power of two
 * is split into 2^(SB_HIST_SUB_BITS-1) equal buckets, so a reported value is
 * within 0.2% of the recorded one. Values above SB_HIST_MAX are clamped to
 * it (and counted in `clamped`). The exact minimum, maximum and sum are kept
 * beside the buckets. A histogram is owned by one thread.
 */
#ifndef SB_HIST_H
#define SB_HIST_H

#include <stdint.h>
#include <stddef.h>

#include "sl_status.h"

#define SB_HIST_SUB_BITS 10
#define SB_HIST_MAX_BITS 42
#define SB_HIST_MAX      ((UINT64_C(1) << SB_HIST_MAX_BITS) - 1)

typedef struct sb_hist sb_hist;

/* Creates an empty histogram in *out. Returns SL_ERR_INVAL for a NULL out and
 * SL_ERR_NOMEM when allocation fails; *out is set only on success and the
 * caller owns it (sb_hist_destroy). */
sl_status sb_hist_create(sb_hist **out);

/* Frees a histogram; NULL is a no-op. */
void sb_hist_destroy(sb_hist *h);

/* Records one value. Never fails: values above SB_HIST_MAX are clamped. */
void sb_hist_record(sb_hist *h, uint64_t v);

/* Adds every count of src into dst (same layout by construction). */
void sb_hist_merge(sb_hist *dst, const sb_hist *src);

/* Forgets every recorded value. */
void sb_hist_reset(sb_hist *h);

/* Number of recorded values. */
uint64_t sb_hist_count(const sb_hist *h);

/* Exact minimum, maximum and mean of the recorded values (0 when empty). */
uint64_t sb_hist_min(const sb_hist *h);
uint64_t sb_hist_max(const sb_hist *h);
double sb_hist_mean(const sb_hist *h);

/* Returns the value at percentile p (0..100): the highest value equivalent to
 * the bucket holding the ceil(p/100 * count)-th smallest value, never above
 * the exact maximum. Returns 0 for an empty histogram. */
uint64_t sb_hist_percentile(const sb_hist *h, double p);

/* Index of the bucket for v, and the highest value that bucket holds. Exposed
 * for the self-test. */
size_t sb_hist_index(uint64_t v);
uint64_t sb_hist_bucket_high(size_t idx);

#endif
