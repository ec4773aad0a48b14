/* The built-in echo backend: answers the last user message word by word,
 * with an optional delay before each word. */
#include "wrk_backend.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

/* How long the echo backend sleeps at most before looking at cancel and
 * the deadline again. */
#define ECHO_SLICE_MS 10

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
        int64_t now = sl_mono_ms();
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

void wrk__echo_call(int64_t delay_ms, const wrk_call *call, wrk_token_fn fn, void *ud,
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
    int64_t next = sl_mono_ms();
    while (*p) {
        const char *start = p;
        while (*p && is_space(*p))
            p++;
        while (*p && !is_space(*p))
            p++;
        while (*p && is_space(*p))
            p++;
        wrk_outcome o = WRK_DONE;
        if (delay_ms > 0) {
            next += delay_ms;
            o = echo_sleep(call, next);
        } else if (cancelled(call)) {
            o = WRK_CANCELLED;
        } else if (sl_mono_ms() >= call->deadline_ms) {
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
