/* Log-linear histogram: see sb_hist.h for the layout. */
#include "sb_hist.h"

#include <stdlib.h>
#include <string.h>

#define SUB       (UINT64_C(1) << SB_HIST_SUB_BITS)
#define HALF      (SUB >> 1)
#define N_BUCKETS ((size_t)(SUB + (SB_HIST_MAX_BITS - SB_HIST_SUB_BITS + 1) * HALF))

struct sb_hist {
    uint64_t count;
    uint64_t min;
    uint64_t max;
    uint64_t clamped;
    long double sum;
    uint64_t buckets[N_BUCKETS];
};

sl_status sb_hist_create(sb_hist **out)
{
    sb_hist *h = NULL;

    if (out == NULL)
        return SL_ERR_INVAL;
    h = calloc(1, sizeof(*h));
    if (h == NULL)
        return SL_ERR_NOMEM;
    h->min = UINT64_MAX;
    *out = h;
    return SL_OK;
}

void sb_hist_destroy(sb_hist *h)
{
    free(h);
}

size_t sb_hist_index(uint64_t v)
{
    int msb;
    int shift;

    if (v > SB_HIST_MAX)
        v = SB_HIST_MAX;
    if (v < SUB)
        return (size_t)v;
    msb = 63 - __builtin_clzll(v);
    /* v >> shift lands in [HALF, SUB): the upper half of a linear range. */
    shift = msb - (SB_HIST_SUB_BITS - 1);
    return (size_t)(SUB + (uint64_t)(shift - 1) * HALF + ((v >> shift) - HALF));
}

uint64_t sb_hist_bucket_high(size_t idx)
{
    uint64_t shift;
    uint64_t sub;

    if (idx < SUB)
        return idx;
    shift = (idx - SUB) / HALF + 1;
    sub = (idx - SUB) % HALF + HALF;
    return ((sub + 1) << shift) - 1;
}

void sb_hist_record(sb_hist *h, uint64_t v)
{
    if (v > SB_HIST_MAX) {
        v = SB_HIST_MAX;
        h->clamped++;
    }
    h->buckets[sb_hist_index(v)]++;
    h->count++;
    h->sum += (long double)v;
    if (v < h->min)
        h->min = v;
    if (v > h->max)
        h->max = v;
}

void sb_hist_merge(sb_hist *dst, const sb_hist *src)
{
    size_t i;

    if (src->count == 0)
        return;
    for (i = 0; i < N_BUCKETS; i++)
        dst->buckets[i] += src->buckets[i];
    dst->count += src->count;
    dst->sum += src->sum;
    dst->clamped += src->clamped;
    if (src->min < dst->min)
        dst->min = src->min;
    if (src->max > dst->max)
        dst->max = src->max;
}

void sb_hist_reset(sb_hist *h)
{
    memset(h, 0, sizeof(*h));
    h->min = UINT64_MAX;
}

uint64_t sb_hist_count(const sb_hist *h)
{
    return h->count;
}

uint64_t sb_hist_min(const sb_hist *h)
{
    return h->count ? h->min : 0;
}

uint64_t sb_hist_max(const sb_hist *h)
{
    return h->max;
}

double sb_hist_mean(const sb_hist *h)
{
    return h->count ? (double)(h->sum / (long double)h->count) : 0.0;
}

uint64_t sb_hist_percentile(const sb_hist *h, double p)
{
    uint64_t target;
    uint64_t seen = 0;
    size_t i;

    if (h->count == 0)
        return 0;
    if (p <= 0.0)
        return sb_hist_min(h);
    if (p >= 100.0)
        return h->max;
    target = (uint64_t)((p / 100.0) * (double)h->count + 0.999999999);
    if (target == 0)
        target = 1;
    for (i = 0; i < N_BUCKETS; i++) {
        seen += h->buckets[i];
        if (seen >= target) {
            uint64_t hi = sb_hist_bucket_high(i);
            return hi < h->max ? hi : h->max;
        }
    }
    return h->max;
}
