#include "gw_bucket.h"

#include <math.h>

void gw_bucket_init(gw_bucket *b, double rate, double burst, int64_t now_ms)
{
    b->rate = rate;
    b->burst = burst;
    b->tokens = burst;
    b->last_ms = now_ms;
}

static void refill(gw_bucket *b, int64_t now_ms)
{
    if (now_ms > b->last_ms) {
        b->tokens += (double)(now_ms - b->last_ms) * b->rate / 1000.0;
        if (b->tokens > b->burst)
            b->tokens = b->burst;
        b->last_ms = now_ms;
    }
}

bool gw_bucket_take(gw_bucket *b, int64_t now_ms)
{
    refill(b, now_ms);
    if (b->tokens >= 1.0) {
        b->tokens -= 1.0;
        return true;
    }
    return false;
}

int64_t gw_bucket_retry_ms(const gw_bucket *b, int64_t now_ms)
{
    gw_bucket t = *b;
    refill(&t, now_ms);
    if (t.tokens >= 1.0 || t.rate <= 0)
        return 0;
    return (int64_t)ceil((1.0 - t.tokens) * 1000.0 / t.rate);
}
