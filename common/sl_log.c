#include "sl_log.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static char log_svc[32] = "sluice";
static _Atomic int log_min = SL_LOG_INFO;

static const char *const level_names[] = {"debug", "info", "warn", "error"};

void sl_log_init(const char *svc, sl_log_level min)
{
    if (svc != NULL)
        snprintf(log_svc, sizeof(log_svc), "%s", svc);
    atomic_store(&log_min, (int)min);
}

sl_status sl_log_level_parse(const char *s, sl_log_level *out)
{
    for (int i = 0; i < 4; i++) {
        if (s != NULL && strcmp(s, level_names[i]) == 0) {
            *out = (sl_log_level)i;
            return SL_OK;
        }
    }
    return SL_ERR_INVAL;
}

/* Appends s as a JSON string body (no quotes) to buf at *pos, escaping as
 * needed; stops silently when the buffer is full. */
static void put_escaped(char *buf, size_t cap, size_t *pos, const char *s)
{
    for (; *s != '\0' && *pos + 7 < cap; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            buf[(*pos)++] = '\\';
            buf[(*pos)++] = (char)c;
        } else if (c < 0x20) {
            *pos += (size_t)snprintf(buf + *pos, cap - *pos, "\\u%04x", c);
        } else {
            buf[(*pos)++] = (char)c;
        }
    }
}

static void put_field(char *buf, size_t cap, size_t *pos, const char *key, const char *val)
{
    if (val == NULL || *pos + strlen(key) + 8 >= cap)
        return;
    *pos += (size_t)snprintf(buf + *pos, cap - *pos, ",\"%s\":\"", key);
    put_escaped(buf, cap, pos, val);
    if (*pos + 1 < cap)
        buf[(*pos)++] = '"';
}

void sl_logf(sl_log_level lvl, const sl_log_ctx *ctx, const char *fmt, ...)
{
    char msg[2048];
    char line[4096];
    size_t pos = 0;
    struct timespec ts;
    struct tm tm;
    va_list ap;

    if ((int)lvl < atomic_load(&log_min))
        return;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);

    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    pos = strftime(line, sizeof(line), "{\"ts\":\"%Y-%m-%dT%H:%M:%S", &tm);
    pos += (size_t)snprintf(line + pos, sizeof(line) - pos, ".%03ldZ\",\"level\":\"%s\"",
                            ts.tv_nsec / 1000000L, level_names[lvl]);
    put_field(line, sizeof(line), &pos, "svc", log_svc);
    put_field(line, sizeof(line), &pos, "msg", msg);
    if (ctx != NULL) {
        put_field(line, sizeof(line), &pos, "tenant", ctx->tenant);
        put_field(line, sizeof(line), &pos, "session", ctx->session);
        put_field(line, sizeof(line), &pos, "event", ctx->event);
        put_field(line, sizeof(line), &pos, "trace", ctx->trace);
    }
    if (pos + 2 >= sizeof(line))
        pos = sizeof(line) - 3;
    line[pos++] = '}';
    line[pos++] = '\n';
    /* One write per line keeps lines whole across threads. */
    ssize_t w = write(STDERR_FILENO, line, pos);
    (void)w;
}
