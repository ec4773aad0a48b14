/* Per-tenant token quotas (docs/operations.md, "Token usage and quotas").
 *
 * Every tenant may use a budget of input plus output tokens per sliding
 * window (SLUICE_TENANT_TOKENS_PER_MIN, overridden per tenant by
 * SLUICE_TENANT_QUOTAS; 0: no quota). Workers add each finished call's
 * tokens to the sluice_quota bucket, one key per tenant and second
 * ("<tenant>.<unix second>", compare-and-set); every orchestrator replica
 * watches that bucket and keeps the last window_s seconds of each tenant
 * in memory, so the check before a model call costs no round trip and
 * holds across replicas (a replica sees another's tokens as soon as the
 * watch delivers them, a few ms).
 *
 * A tenant whose window sums to its budget or more gets `busy` with
 * reason "quota" and the time until enough of the window has passed.
 * While the watch has not delivered the bucket's current values (start,
 * or NATS unreachable so the view may be stale) messages are served: a
 * quota is never a reason to lose the chat; such checks are counted in
 * sluice_orch_quota_unknown_total.
 *
 * Threads: create/start/destroy by the loop's thread; orch_quota_check
 * from the loop's thread; the watch runs on a thread of its own. */
#ifndef ORCH_QUOTA_H
#define ORCH_QUOTA_H

#include <nats/nats.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "sl_bus.h"
#include "sl_status.h"
#include "sl_subject.h"

#define ORCH_QUOTA_WINDOW_MAX_S 60 /* the longest window (the bucket's TTL is twice that) */
#define ORCH_QUOTA_RULES_MAX    4096
#define ORCH_QUOTA_RING         64 /* seconds kept per tenant (>= the window, plus skew) */

/* One tenant's budget (SLUICE_TENANT_QUOTAS). */
typedef struct orch_quota_rule {
    char tenant[SL_ID_MAX + 1];
    int64_t tokens; /* per window; 0: none for this tenant */
} orch_quota_rule;

/* Parses "tenantA=100,tenantB=50000" (no spaces, no empty items, each
 * tenant a valid id at most once, each budget an integer 0..10^15, at most
 * ORCH_QUOTA_RULES_MAX items); "" and NULL give none. Returns SL_OK with
 * *out (NULL when *n is 0; the caller frees it), SL_ERR_INVAL with a reason
 * in err (naming the item), or SL_ERR_NOMEM. */
sl_status orch_quota_parse(const char *spec, orch_quota_rule **out, size_t *n, char *err,
                           size_t errlen);

/* ---- The window arithmetic, pure (tested in unit tests) ------------------ */

/* One second's tokens of one tenant. */
typedef struct orch_quota_slot {
    int64_t sec; /* Unix second */
    uint64_t tokens;
} orch_quota_slot;

/* Decides a tenant's check at now_ms (Unix ms) from its slots (any order;
 * a slot counts while sec > now_s - window_s, now_s = now_ms / 1000, and
 * slots ahead of now, from clock skew, count too). Returns true when the
 * tokens in the window are below budget (or budget <= 0: no quota). When
 * not, *retry_ms (may be NULL) is set to the ms until enough of the oldest
 * seconds have left the window for the sum to fall below budget (at least
 * 1), and *used (may be NULL) to the sum. */
bool orch_quota_window_ok(const orch_quota_slot *slots, size_t n, int64_t now_ms, int64_t window_s,
                          int64_t budget, uint64_t *used, int64_t *retry_ms);

/* ---- The shared view ------------------------------------------------------ */

typedef struct orch_quota orch_quota;

/* Makes the quota view (rules are copied). per_window: every tenant's
 * budget unless a rule names it; window_s: 1..ORCH_QUOTA_WINDOW_MAX_S.
 * orch_quota_enabled() is false when no tenant has a budget: then nothing
 * is watched and every check passes. SL_ERR_INVAL / SL_ERR_NOMEM. */
sl_status orch_quota_create(orch_quota **out, int64_t per_window, const orch_quota_rule *rules,
                            size_t nrules, int64_t window_s);

bool orch_quota_enabled(const orch_quota *q);

/* The budget of tenant per window (0: none). */
int64_t orch_quota_budget(const orch_quota *q, const char *tenant);

/* Starts the thread that watches the sluice_quota bucket on bus
 * (borrowed: it must outlive the view), opening the watch again every
 * second while NATS does not let it (checks pass meanwhile). Does nothing
 * when q is NULL, not enabled or already started. SL_OK; SL_ERR_NOMEM when
 * the thread cannot start. */
sl_status orch_quota_start(orch_quota *q, sl_bus *bus);

/* Applies one value of the bucket: key "<tenant>.<second>", value
 * {"in":N,"out":M} (what the watch does; exposed for tests). Malformed
 * keys or values are ignored. */
void orch_quota_apply(orch_quota *q, const char *key, const char *val, size_t len);

/* Marks the view as holding the bucket's current values (the watch's
 * initial values were delivered) or not. */
void orch_quota_set_synced(orch_quota *q, bool synced);

typedef enum orch_quota_verdict {
    ORCH_QUOTA_OK,      /* under budget, or no quota for the tenant */
    ORCH_QUOTA_OVER,    /* at or over budget: refuse with retry_ms */
    ORCH_QUOTA_UNKNOWN, /* the view is not synced: served (fail open) */
} orch_quota_verdict;

/* Checks tenant at now_ms (Unix ms). On ORCH_QUOTA_OVER sets *retry_ms. */
orch_quota_verdict orch_quota_check(orch_quota *q, const char *tenant, int64_t now_ms,
                                    int64_t *retry_ms);

/* Stops the watch and frees. NULL-safe. */
void orch_quota_destroy(orch_quota *q);

#endif
