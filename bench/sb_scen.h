/* Bench scenarios: idle, fanout, pipeline, noisy, storm.
 *
 * Each scenario drives an sb_engine from one thread with bounded durations
 * and counts and returns its figures as a cJSON object the caller owns.
 */
#ifndef SB_SCEN_H
#define SB_SCEN_H

#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <cJSON.h>

#include "sb_engine.h"
#include "sl_status.h"

#define SB_MAX_RATES 16

typedef struct sb_opts {
    const char *scenario;
    sb_engine_cfg cfg;
    uint32_t conns;   /* members (idle, fanout, storm) or sessions (pipeline, noisy B) */
    uint32_t pubs;    /* publishers (fanout, storm) */
    uint32_t conns_a; /* noisy tenant A sessions */
    double rate;      /* publishes/s (fanout, storm), messages/s (pipeline, noisy B) */
    double rate_a;    /* noisy tenant A messages/s */
    double rates[SB_MAX_RATES];
    int nrates; /* pipeline steps; rate alone when 0 */
    size_t size;
    double duration_s;
    double warmup_s;
    double drain_s;
    double connect_timeout_s;
    double connect_rate; /* new connections/s, 0 = as fast as max_pending allows */
    uint32_t max_pending;
    double heartbeat_s;      /* application heartbeat per connection, 0 = none */
    pid_t pids[SB_MAX_PIDS]; /* the server under test (RSS, CPU) */
    int npids;
    pid_t aux_pids[SB_MAX_PIDS]; /* its helpers (broker, orchestrator, worker): CPU */
    int naux;
    double slo_ms;   /* pipeline: p99 reply latency bound of a sustainable step */
    double model_ms; /* pipeline: the model's own time per reply (subtracted) */
    double storm_timeout_s;
    const char *text_prefix; /* pipeline / noisy: text starts with it (agent match) */
    const char *label;
    const char *ready_file;
} sb_opts;

/* Set by the signal handler: scenarios stop early and report what they have. */
extern volatile sig_atomic_t sb_stop;

/* Runs the scenario named in o->scenario and sets *out to its result object
 * (owned by the caller). Returns SL_ERR_INVAL for an unknown scenario or bad
 * options, SL_ERR_NOMEM or SL_ERR_IO when the engine cannot be built. */
sl_status sb_scen_run(const sb_opts *o, cJSON **out);

/* Adds {count,min,mean,p50,p90,p99,p999,max} in microseconds to obj as
 * name. */
void sb_hist_json(cJSON *obj, const char *name, const sb_hist *h);

#endif
