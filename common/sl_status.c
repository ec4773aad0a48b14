#include "sl_status.h"

#include <stdarg.h>
#include <stdio.h>

const char *sl_status_str(sl_status s)
{
    switch (s) {
    case SL_OK:
        return "ok";
    case SL_ERR_INVAL:
        return "invalid argument";
    case SL_ERR_NOMEM:
        return "out of memory";
    case SL_ERR_BUS:
        return "nats error";
    case SL_ERR_TIMEOUT:
        return "timeout";
    case SL_ERR_FULL:
        return "full";
    case SL_ERR_NOTFOUND:
        return "not found";
    case SL_ERR_EXISTS:
        return "already exists";
    case SL_ERR_CONFLICT:
        return "conflict";
    case SL_ERR_AUTH:
        return "authentication failed";
    case SL_ERR_EXPIRED:
        return "expired";
    case SL_ERR_IO:
        return "i/o error";
    case SL_ERR_CLOSED:
        return "closed";
    case SL_ERR_PROTO:
        return "protocol error";
    case SL_ERR_INTERNAL:
        return "internal error";
    }
    return "unknown status";
}

void sl_errf(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;

    if (err == NULL || errlen == 0)
        return;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}
