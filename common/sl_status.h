/* Status codes shared by every Sluice module. */
#ifndef SL_STATUS_H
#define SL_STATUS_H

#include <stddef.h>

typedef enum sl_status {
    SL_OK = 0,
    SL_ERR_INVAL,    /* bad argument or bad input */
    SL_ERR_NOMEM,    /* allocation failed */
    SL_ERR_BUS,      /* NATS / JetStream failure */
    SL_ERR_TIMEOUT,  /* a deadline passed */
    SL_ERR_FULL,     /* a bounded queue or a tenant's work queue is full */
    SL_ERR_NOTFOUND, /* no such key, message or object */
    SL_ERR_EXISTS,   /* already there (duplicate) */
    SL_ERR_CONFLICT, /* a compare-and-set lost the race */
    SL_ERR_AUTH,     /* authentication or signature failure */
    SL_ERR_EXPIRED,  /* token expired */
    SL_ERR_IO,       /* socket or file failure */
    SL_ERR_CLOSED,   /* the object is shut down or draining */
    SL_ERR_PROTO,    /* peer violated a protocol */
    SL_ERR_INTERNAL, /* a bug or an impossible state */
} sl_status;

/* Returns a static, human-readable name for a status; never NULL. */
const char *sl_status_str(sl_status s);

/* Formats an error message into err, the (char *err, size_t errlen) pair
 * that functions taking one fill on failure: truncated to errlen - 1
 * bytes, always NUL-terminated. Does nothing when err is NULL or errlen
 * is 0. */
void sl_errf(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

#endif
