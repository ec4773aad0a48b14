/* JSON-lines logging on stderr: one object per line with ts, level, svc,
 * msg and, where known, tenant, session, event and trace. Thread-safe: each
 * line is written with a single write(2). */
#ifndef SL_LOG_H
#define SL_LOG_H

#include "sl_status.h"

typedef enum sl_log_level {
    SL_LOG_DEBUG = 0,
    SL_LOG_INFO,
    SL_LOG_WARN,
    SL_LOG_ERROR,
} sl_log_level;

/* Context fields; any may be NULL. */
typedef struct sl_log_ctx {
    const char *tenant;
    const char *session;
    const char *event;
    const char *trace;
} sl_log_ctx;

/* Sets the service name (copied, at most 31 chars) and the minimum level. */
void sl_log_init(const char *svc, sl_log_level min);

/* Parses "debug", "info", "warn" or "error"; SL_ERR_INVAL otherwise. */
sl_status sl_log_level_parse(const char *s, sl_log_level *out);

/* Logs one line when lvl is at or above the minimum. ctx may be NULL. */
void sl_logf(sl_log_level lvl, const sl_log_ctx *ctx, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define sl_debug(...) sl_logf(SL_LOG_DEBUG, NULL, __VA_ARGS__)
#define sl_info(...)  sl_logf(SL_LOG_INFO, NULL, __VA_ARGS__)
#define sl_warn(...)  sl_logf(SL_LOG_WARN, NULL, __VA_ARGS__)
#define sl_error(...) sl_logf(SL_LOG_ERROR, NULL, __VA_ARGS__)

#endif
