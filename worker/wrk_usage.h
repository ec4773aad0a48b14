/* Token usage: the estimate used when a model reports none, and the
 * worker's accounting of every finished model call (docs/operations.md,
 * "Token usage and quotas").
 *
 * A job adds its call's tokens with wrk_usage_add(); a flusher thread adds
 * what piled up, every WRK_USAGE_FLUSH_MS, to two KV buckets with
 * compare-and-set on the revision read, so any number of worker replicas
 * add to the same counters without losing counts:
 *   - sluice_quota  "<tenant>.<unix second>"  {"in":N,"out":M}
 *     (the orchestrators' sliding-window quota reads it);
 *   - sluice_usage  "<tenant>.<5-minute slot>.<agent>"  {"in":N,"out":M,"replies":R}
 *     (a day of usage for `sluicectl usage`).
 * The counters sluice_tokens_total{tenant,agent,direction} count at once.
 *
 * Threads: wrk_usage_create and wrk_usage_destroy by one owner thread;
 * wrk_usage_add from any thread. */
#ifndef WRK_USAGE_H
#define WRK_USAGE_H

#include <nats/nats.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "sl_status.h"
#include "wrk_backend.h"

#define WRK_USAGE_FLUSH_MS  200  /* how often piled-up usage goes to KV */
#define WRK_USAGE_MAX       4096 /* (tenant, agent) pairs waiting for a flush at once */
#define WRK_USAGE_CAS_TRIES 16   /* compare-and-set attempts per key and flush */

/* The estimate: a text of c Unicode code points (UTF-8 bytes that do not
 * continue a sequence) counts ceil(c / 4) tokens. NULL counts 0. */
uint64_t wrk_usage_text_tokens(const char *text, size_t len);

/* Input of a call as estimated: every message counts 4 tokens (role and
 * framing) plus its content's tokens. */
uint64_t wrk_usage_input_tokens(const wrk_msg *msgs, size_t n);

/* Usage of one finished call, stored in the final reply. */
typedef struct wrk_call_usage {
    uint64_t input_tokens;
    uint64_t output_tokens;
    bool estimated;
} wrk_call_usage;

/* The usage of a call: the model's report in res when it gave both numbers,
 * else the estimate from msgs (input) and output (the text the model
 * produced, len bytes). */
wrk_call_usage wrk_usage_of_call(const wrk_result *res, const wrk_msg *msgs, size_t nmsgs,
                                 const char *output, size_t len);

typedef struct wrk_usage wrk_usage;

/* Starts the accounting over the buckets (borrowed: they must outlive it;
 * either may be NULL: that part is then not stored). Returns SL_OK with
 * *out owned by the caller; SL_ERR_NOMEM / SL_ERR_INTERNAL (thread). */
sl_status wrk_usage_create(wrk_usage **out, kvStore *quota, kvStore *usage);

/* Counts a finished call's tokens for tenant and agent (valid ids; others
 * are ignored). Never blocks on NATS. When WRK_USAGE_MAX pairs are waiting
 * already, a new pair's tokens are counted on /metrics only (and logged). */
void wrk_usage_add(wrk_usage *u, const char *tenant, const char *agent, uint64_t input_tokens,
                   uint64_t output_tokens);

/* Writes what is waiting now, on the calling thread (tests, shutdown).
 * Returns SL_OK when everything was stored; otherwise what failed waits
 * for the next flush and SL_ERR_BUS is returned. */
sl_status wrk_usage_flush(wrk_usage *u);

/* Stops the thread, flushes once more and frees. NULL-safe. */
void wrk_usage_destroy(wrk_usage *u);

#endif
