/* The backend front: create, destroy, and each call dispatched by kind to
 * the echo backend (wrk_backend_echo.c) or the openai one
 * (wrk_backend_openai.c). */
#include "wrk_backend.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef enum backend_kind {
    KIND_ECHO,
    KIND_OPENAI,
} backend_kind;

struct wrk_backend {
    backend_kind kind;
    int64_t echo_delay_ms;
    wrk__openai *openai;
};

sl_status wrk_backend_create(wrk_backend **out, const wrk_backend_cfg *cfg, char *err,
                             size_t errlen)
{
    sl_status st = SL_OK;
    wrk_backend *b = NULL;

    if (!out || !cfg) {
        sl_errf(err, errlen, "wrk_backend_create: NULL argument");
        return SL_ERR_INVAL;
    }
    b = calloc(1, sizeof(*b));
    if (!b) {
        sl_errf(err, errlen, "out of memory");
        return SL_ERR_NOMEM;
    }
    if (!cfg->kind || strcmp(cfg->kind, "echo") == 0) {
        if (cfg->echo_delay_ms < 0) {
            sl_errf(err, errlen, "echo token delay must be >= 0 ms");
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
            sl_errf(err, errlen, "unknown model backend \"%.64s\" (want echo or openai)",
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
    if (call->cancel && *call->cancel) {
        wrk__result_set(res, WRK_CANCELLED, "cancelled before the call started");
        return;
    }
    if (sl_mono_ms() >= call->deadline_ms) {
        wrk__result_set(res, WRK_DEADLINE, "deadline passed before the call started");
        return;
    }
    if (b->kind == KIND_ECHO)
        wrk__echo_call(b->echo_delay_ms, call, fn, ud, res);
    else
        wrk__openai_call(b->openai, call, fn, ud, res);
}
