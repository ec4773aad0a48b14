/* Integration-test harness: a whole Sluice stack for one test.
 *
 * hx_stack_start() makes a temporary directory, starts nats-server (one node
 * or a cluster) in it, then N gateways, orchestrators and workers from the
 * binary directory, each with a log file in the directory and this
 * environment (later entries win):
 *
 *   SLUICE_NATS_URL=<nats url>          SLUICE_JWT_SECRET=<random, per stack>
 *   SLUICE_ADMIN_LISTEN=127.0.0.1:<free> SLUICE_LISTEN=127.0.0.1:<free> (gateways)
 *   SLUICE_LOG_LEVEL=debug              SLUICE_ECHO_TOKEN_DELAY_MS (when set)
 *   ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:exitcode=66
 *   UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1:exitcode=66
 *   then cfg.env, then cfg.tier_env[tier], then the env given to hx_stack_add
 *
 * and waits until GET /readyz answers 200 on every admin port. Ports stay
 * with a process across restarts, so clients reconnect to the same address.
 *
 * The binary directory is cfg.bin_dir, else $SLUICE_BIN_DIR, else "bin"
 * ("build/san/bin" when the test itself is built with SANITIZE=1), relative
 * to the working directory (tests run from the repository root).
 *
 * Teardown sends SIGTERM to every Sluice process, waits (cfg.term_timeout_ms)
 * so sanitizer reports get written, SIGKILLs what is left, stops nats-server
 * and removes the directory (kept when HX_KEEP_TMP=1 is in the environment).
 * A hx_stack is used by one thread at a time. */
#ifndef HX_STACK_H
#define HX_STACK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#include "hx_nats.h"
#include "hx_proc.h"
#include "sl_status.h"

typedef enum hx_tier {
    HX_GATEWAY = 0,
    HX_ORCHESTRATOR = 1,
    HX_WORKER = 2,
} hx_tier;
#define HX_TIERS 3

#define HX_STACK_MAX_PER_TIER 32

/* Stack configuration; zero-initialise and set what you need. A NULL cfg
 * means one of each tier. */
typedef struct hx_stack_cfg {
    int gateways, orchestrators, workers;  /* how many to start (0..32 each) */
    int echo_token_delay_ms;               /* > 0: SLUICE_ECHO_TOKEN_DELAY_MS; 0: unset
                                              (pass "SLUICE_ECHO_TOKEN_DELAY_MS=0" in env
                                              for an explicit zero) */
    const char *const *env;                /* "K=V" for every Sluice process, NULL-terminated */
    const char *const *tier_env[HX_TIERS]; /* "K=V" for one tier, NULL-terminated */
    const char *bin_dir;                   /* NULL: see above */
    int nats_nodes;                        /* 0 or 1: one server; 3: a cluster */
    bool nats_websocket;                   /* nats-server also listens for websockets */
    int ready_timeout_ms;                  /* per process start; 0: 20000 */
    int term_timeout_ms;                   /* SIGTERM grace at teardown; 0: 5000 */
    bool no_wait_ready;                    /* start without waiting for /readyz */
} hx_stack_cfg;

typedef struct hx_stack hx_stack;

/* Starts a stack as described above. On failure nothing is left running or
 * on disk, the log tail of the process at fault is printed to stderr, and
 * hx_error() says what failed: SL_ERR_INVAL (bad cfg, missing binary),
 * SL_ERR_IO (a process could not start or exited), SL_ERR_TIMEOUT (not
 * ready in time). On success *out owns everything. */
sl_status hx_stack_start(hx_stack **out, const hx_stack_cfg *cfg);

/* The binary directory a stack uses when cfg.bin_dir is NULL:
 * $SLUICE_BIN_DIR, else "bin" ("build/san/bin" in a SANITIZE=1 build). */
const char *hx_stack_default_bin_dir(void);

/* Tears the stack down as described above. Sanitizer reports found in the
 * logs are printed to stderr (assert on them with
 * hx_stack_stop_all_gracefully). NULL-safe. */
void hx_stack_destroy(hx_stack *s);

/* Accessors; strings are owned by s. */
const char *hx_stack_dir(const hx_stack *s);
const char *hx_stack_secret(const hx_stack *s);
const char *hx_stack_nats_url(const hx_stack *s);
const char *hx_stack_bin_dir(const hx_stack *s);
hx_nats *hx_stack_nats(hx_stack *s);

/* How many processes of a tier the stack has (started or added). */
int hx_stack_count(const hx_stack *s, hx_tier tier);

/* The client port (SLUICE_LISTEN) of gateway i, or -1. */
int hx_stack_gw_port(const hx_stack *s, int i);

/* The admin port of process i of a tier, or -1. */
int hx_stack_admin_port(const hx_stack *s, hx_tier tier, int i);

/* The process, or NULL; owned by s. */
hx_proc *hx_stack_proc(hx_stack *s, hx_tier tier, int i);

/* The log file of process i of a tier ("" when out of range). */
const char *hx_stack_log_path(const hx_stack *s, hx_tier tier, int i);

/* "gateway", "orchestrator" or "worker". */
const char *hx_tier_name(hx_tier tier);

/* Sends sig to process i of a tier. After SIGKILL it also waits (up to
 * 5 s) until the process is reaped. The process then counts as stopped by
 * the test: hx_stack_stop_all_gracefully does not hold its exit against
 * the stack. SL_ERR_INVAL for a bad index, SL_ERR_CLOSED when it is not
 * running. */
sl_status hx_stack_kill(hx_stack *s, hx_tier tier, int i, int sig);

/* Sends sig and waits up to timeout_ms for the exit, then SIGKILLs.
 * *status (may be NULL) gets the waitpid status. SL_OK when it exited in
 * time, SL_ERR_TIMEOUT when SIGKILL was needed. */
sl_status hx_stack_stop(hx_stack *s, hx_tier tier, int i, int sig, int timeout_ms, int *status);

/* Starts process i of a tier again with the same ports, env and log
 * (SIGKILLing it first if it still runs) and waits for /readyz (unless the
 * stack was started with no_wait_ready). SL_ERR_IO / SL_ERR_TIMEOUT with
 * the log tail printed when it does not come up. */
sl_status hx_stack_restart(hx_stack *s, hx_tier tier, int i);

/* Starts one more process of a tier, with env (NULL-terminated "K=V", may
 * be NULL) on top of the stack's, and waits for /readyz. Its index goes to
 * *index_out (may be NULL). */
sl_status hx_stack_add(hx_stack *s, hx_tier tier, const char *const *env, int *index_out);

/* Waits up to timeout_ms for GET /readyz == 200 on process i of a tier.
 * SL_ERR_IO when the process exited, SL_ERR_TIMEOUT otherwise. */
sl_status hx_stack_wait_ready(hx_stack *s, hx_tier tier, int i, int timeout_ms);

/* Restarts nats-server node 0 (see hx_nats_restart) with sig. */
sl_status hx_stack_restart_nats(hx_stack *s, int sig);

/* Sends SIGTERM to every running Sluice process at once and waits up to the
 * stack's term timeout for all of them. *all_clean (may be NULL) becomes
 * true when every process exited with status 0 on its own (processes the
 * test killed with hx_stack_kill/stop and did not restart are skipped) and
 * no log contains a sanitizer report ("ERROR: AddressSanitizer",
 * "ERROR: LeakSanitizer", "runtime error:"). For each offender the reason
 * and its log tail go to stderr and hx_error() names the first. Returns
 * SL_OK when all clean, SL_ERR_INTERNAL otherwise. nats-server keeps
 * running; the processes can be restarted with hx_stack_restart. */
sl_status hx_stack_stop_all_gracefully(hx_stack *s, bool *all_clean);

/* True when no Sluice log of the stack contains a sanitizer report; the
 * offending logs are printed to stderr otherwise. */
bool hx_stack_sanitizer_clean(hx_stack *s);

/* Prints the last tail_bytes of every log (nats-server included) to f. */
void hx_stack_dump_logs(hx_stack *s, FILE *f, size_t tail_bytes);

#endif
