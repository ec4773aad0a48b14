/* A token bucket: the gateway's rate limits (client frames per connection,
 * new connections per gateway). Pure functions of the time given; one
 * thread uses a bucket at a time. */
#ifndef GW_BUCKET_H
#define GW_BUCKET_H

#include <stdbool.h>
#include <stdint.h>

/* Token bucket: rate tokens per second, at most burst. */
typedef struct gw_bucket {
    double tokens;
    double rate;
    double burst;
    int64_t last_ms;
} gw_bucket;

/* Starts b full (burst tokens) at now_ms. */
void gw_bucket_init(gw_bucket *b, double rate, double burst, int64_t now_ms);

/* Takes one token; returns true when there was one. */
bool gw_bucket_take(gw_bucket *b, int64_t now_ms);

/* Milliseconds until one token is available (0 when one is). */
int64_t gw_bucket_retry_ms(const gw_bucket *b, int64_t now_ms);

#endif
