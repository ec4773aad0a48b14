/* What every backend uses: outcome names, the deadline clock and the
 * result setters. Depends on no other backend file. */
#include "wrk_backend.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

const char *wrk_outcome_str(wrk_outcome o)
{
    switch (o) {
    case WRK_DONE:
        return "done";
    case WRK_DEADLINE:
        return "deadline";
    case WRK_CANCELLED:
        return "cancelled";
    case WRK_TRANSIENT:
        return "transient";
    case WRK_FATAL:
        return "fatal";
    }
    return "unknown";
}

void wrk__result_init(wrk_result *res)
{
    memset(res, 0, sizeof(*res));
    res->outcome = WRK_FATAL;
    res->retry_after_ms = -1;
    res->input_tokens = -1;
    res->output_tokens = -1;
}

void wrk__result_set(wrk_result *res, wrk_outcome o, const char *fmt, ...)
{
    res->outcome = o;
    if (!fmt) {
        res->error[0] = '\0';
        return;
    }
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(res->error, sizeof(res->error), fmt, ap);
    va_end(ap);
}
