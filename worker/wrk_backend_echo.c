/* The backend front (create, destroy, dispatch by kind) and the built-in
 * echo backend. The openai backend lives in wrk_backend_openai.c. */
#include "wrk_backend.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* How long the echo backend sleeps at most before looking at cancel and
 * the deadline again. */
#define ECHO_SLICE_MS 10

typedef enum backend_kind {
    KIND_ECHO,
    KIND_OPENAI,
} backend_kind;

struct wrk_backend {
    backend_kind kind;
    int64_t echo_delay_ms;
    wrk__openai *openai;
};

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

int64_t wrk_backend_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void wrk__result_init(wrk_result *res)
{
    memset(res, 0, sizeof(*res));
    res->outcome = WRK_FATAL;
    res->retry_after_ms = -1;
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

static void set_err(char *err, size_t errlen, const char *msg)
{
    if (err && errlen)
        snprintf(err, errlen, "%s", msg);
}

sl_status wrk_backend_create(wrk_backend **out, const wrk_backend_cfg *cfg, char *err,
                             size_t errlen)
{
    sl_status st = SL_OK;
    wrk_backend *b = NULL;

    if (!out || !cfg) {
        set_err(err, errlen, "wrk_backend_create: NULL argument");
        return SL_ERR_INVAL;
    }
    b = calloc(1, sizeof(*b));
    if (!b) {
        set_err(err, errlen, "out of memory");
        return SL_ERR_NOMEM;
    }
    if (!cfg->kind || strcmp(cfg->kind, "echo") == 0) {
        if (cfg->echo_delay_ms < 0) {
            set_err(err, errlen, "echo token delay must be >= 0 ms");
            st = SL_ERR_INVAL;
            goto cleanup;
        }
        b->kind = KIND_ECHO;
        b->echo_delay_ms = cfg->echo_delay_ms;
    } else if (strcmp(cfg->kind, "openai") == 0) {
        b->kind = KIND_OPENAI;
        st = wrk__openai_create(&b->openai, cfg, err, errlen);
        if (st != SL_OK)
            goto cleanup;
    } else {
        if (err && errlen)
            snprintf(err, errlen, "unknown model backend \"%.64s\" (want echo or openai)",
                     cfg->kind);
        st = SL_ERR_INVAL;
        goto cleanup;
    }
    *out = b;
    b = NULL;
cleanup:
    wrk_backend_destroy(b);
    return st;
}

void wrk_backend_destroy(wrk_backend *b)
{
    if (!b)
        return;
    wrk__openai_destroy(b->openai);
    free(b);
}

static int cancelled(const wrk_call *call)
{
    return call->cancel && *call->cancel;
}

/* Sleeps until until_ms, waking every ECHO_SLICE_MS to look at cancel and
 * the deadline. Returns WRK_DONE when the time came, else the outcome that
 * cut the sleep short. */
static wrk_outcome echo_sleep(const wrk_call *call, int64_t until_ms)
{
    for (;;) {
        if (cancelled(call))
            return WRK_CANCELLED;
        int64_t now = wrk_backend_now_ms();
        if (now >= call->deadline_ms)
            return WRK_DEADLINE;
        if (now >= until_ms)
            return WRK_DONE;
        int64_t ms = until_ms - now;
        if (ms > call->deadline_ms - now)
            ms = call->deadline_ms - now;
        if (ms > ECHO_SLICE_MS)
            ms = ECHO_SLICE_MS;
        struct timespec ts = {.tv_sec = 0, .tv_nsec = (long)ms * 1000000L};
        while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
            ;
    }
}

static int is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

static void echo_call(const wrk_backend *b, const wrk_call *call, wrk_token_fn fn, void *ud,
                      wrk_result *res)
{
    const char *text = "";
    for (size_t i = call->nmsgs; i > 0; i--) {
        const wrk_msg *m = &call->msgs[i - 1];
        if (m->role && strcmp(m->role, "user") == 0) {
            text = m->content ? m->content : "";
            break;
        }
    }

    /* A token is a word and the whitespace after it; the first token also
     * carries any leading whitespace, so the tokens add up to the text. */
    const char *p = text;
    int64_t next = wrk_backend_now_ms();
    while (*p) {
        const char *start = p;
        while (*p && is_space(*p))
            p++;
        while (*p && !is_space(*p))
            p++;
        while (*p && is_space(*p))
            p++;
        wrk_outcome o = WRK_DONE;
        if (b->echo_delay_ms > 0) {
            next += b->echo_delay_ms;
            o = echo_sleep(call, next);
        } else if (cancelled(call)) {
            o = WRK_CANCELLED;
        } else if (wrk_backend_now_ms() >= call->deadline_ms) {
            o = WRK_DEADLINE;
        }
        if (o == WRK_CANCELLED) {
            wrk__result_set(res, o, "cancelled");
            return;
        }
        if (o == WRK_DEADLINE) {
            wrk__result_set(res, o, "deadline reached (%zu tokens streamed)", res->ntokens);
            return;
        }
        res->ntokens++;
        if (fn && fn(ud, start, (size_t)(p - start)) != 0) {
            wrk__result_set(res, WRK_CANCELLED, "aborted by the token callback");
            return;
        }
    }
    wrk__result_set(res, WRK_DONE, NULL);
}

void wrk_backend_call(wrk_backend *b, const wrk_call *call, wrk_token_fn fn, void *ud,
                      wrk_result *res)
{
    if (!res)
        return;
    wrk__result_init(res);
    if (!b || !call || (!call->msgs && call->nmsgs)) {
        wrk__result_set(res, WRK_FATAL, "wrk_backend_call: bad argument");
        return;
    }
    if (cancelled(call)) {
        wrk__result_set(res, WRK_CANCELLED, "cancelled before the call started");
        return;
    }
    if (wrk_backend_now_ms() >= call->deadline_ms) {
        wrk__result_set(res, WRK_DEADLINE, "deadline passed before the call started");
        return;
    }
    if (b->kind == KIND_ECHO)
        echo_call(b, call, fn, ud, res);
    else
        wrk__openai_call(b->openai, call, fn, ud, res);
}
