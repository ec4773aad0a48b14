/* Model backends: one call streams one answer, token by token, and always
 * ends with an outcome, by its deadline.
 *
 * Kinds: "echo" (built in, deterministic: answers the last user message
 * word by word; reports no usage) and "openai" (any OpenAI-compatible
 * /v1/chat/completions endpoint with stream:true and
 * stream_options.include_usage, over libcurl; the usage the server reports,
 * in a chunk of the stream or in a JSON answer, goes to the result. A
 * server that answers 400 naming stream_options is an older one: that call
 * ends WRK_TRANSIENT and the backend never sends the option again).
 *
 * Threads: a backend is created and destroyed by one thread; between the
 * two, any number of threads may run wrk_backend_call() on it at once.
 * Each call runs entirely on its calling thread, callbacks included. */
#ifndef WRK_BACKEND_H
#define WRK_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "sl_status.h"
#include "sl_time.h" /* sl_mono_ms: the clock of deadline_ms */

/* One chat message. role is "system", "user" or "assistant" (NULL is sent
 * as "user"); content is UTF-8 text (NULL is sent as ""). */
typedef struct wrk_msg {
    const char *role;
    const char *content;
} wrk_msg;

/* One model call. Everything it points to is owned by the caller and must
 * stay valid until wrk_backend_call() returns. */
typedef struct wrk_call {
    const char *model;   /* backend model name; NULL or "" omits it from the request */
    const wrk_msg *msgs; /* system prompt + context + the message to answer */
    size_t nmsgs;
    int64_t deadline_ms;       /* absolute, sl_mono_ms() clock: the call ends by then */
    const _Atomic int *cancel; /* may be NULL; nonzero: abort as soon as possible */
} wrk_call;

/* Called for every token or chunk of text as it arrives (text is not
 * NUL-terminated; len > 0). Return 0 to go on, nonzero to abort the call,
 * which then ends with WRK_CANCELLED. */
typedef int (*wrk_token_fn)(void *ud, const char *text, size_t len);

typedef enum wrk_outcome {
    WRK_DONE,      /* complete answer */
    WRK_DEADLINE,  /* deadline hit: the text so far (maybe empty) was streamed */
    WRK_CANCELLED, /* *cancel became nonzero, or the token callback returned nonzero */
    WRK_TRANSIENT, /* retry later: connect error, 408, 429, 5xx, reset or truncated stream;
                      tokens already streamed stay streamed (the caller decides) */
    WRK_FATAL,     /* will not succeed on retry: other 4xx, malformed stream, bad request */
} wrk_outcome;

typedef struct wrk_result {
    wrk_outcome outcome;
    int http_status;        /* last HTTP status seen, 0 when none (echo, connect error) */
    int64_t retry_after_ms; /* from Retry-After (seconds) or retry-after-ms; -1 when not given */
    size_t ntokens;         /* token callbacks made */
    int64_t input_tokens;   /* the model's own usage report (prompt tokens), -1 when none */
    int64_t output_tokens;  /* the model's own usage report (completion tokens), -1 when none */
    char error[256];        /* "" on WRK_DONE, else a one-line reason */
} wrk_result;

typedef struct wrk_backend wrk_backend;

typedef struct wrk_backend_cfg {
    const char *kind;      /* "echo" (also when NULL) or "openai" */
    const char *url;       /* openai: base URL, e.g. http://127.0.0.1:8000; the backend posts to
                              <url>/v1/chat/completions, and also accepts a url that already ends
                              with /v1 or /v1/chat/completions. http:// or https:// only. */
    const char *api_key;   /* openai: sent as "Authorization: Bearer <key>" when not NULL or "" */
    int64_t echo_delay_ms; /* echo: wait before each token, 0 = none */
    int64_t connect_timeout_ms; /* openai: TCP + TLS connect bound, 0 = 3000; a connect that
                                   fails or times out before the deadline is WRK_TRANSIENT */
} wrk_backend_cfg;

/* Name of an outcome ("done", "deadline", "cancelled", "transient",
 * "fatal"); never NULL. */
const char *wrk_outcome_str(wrk_outcome o);

/* Initialises libcurl for the process. Call once from main before any
 * thread starts and before creating an "openai" backend; returns SL_OK, or
 * SL_ERR_INTERNAL when libcurl cannot be initialised. */
sl_status wrk_backend_global_init(void);

/* Releases what wrk_backend_global_init() set up; call once at exit, after
 * every backend was destroyed. */
void wrk_backend_global_cleanup(void);

/* Creates a backend from cfg (its strings are copied). On success stores it
 * in *out (the caller destroys it) and returns SL_OK. On failure returns
 * SL_ERR_INVAL (unknown kind, missing or bad url, negative delay, or
 * wrk_backend_global_init() not called for "openai") or SL_ERR_NOMEM, and
 * writes a reason into err (when err is not NULL). */
sl_status wrk_backend_create(wrk_backend **out, const wrk_backend_cfg *cfg, char *err,
                             size_t errlen);

/* Destroys a backend; NULL is ignored. No call may be running on it. */
void wrk_backend_destroy(wrk_backend *b);

/* Runs one model call on the calling thread, passing text to fn(ud, ...)
 * as it arrives, and fills *res. Thread-safe. Returns within about 100 ms
 * after call->deadline_ms (a deadline already past returns WRK_DEADLINE at
 * once) and about 50 ms after *call->cancel becomes nonzero. When cancel
 * and the deadline both apply, the outcome is WRK_CANCELLED. */
void wrk_backend_call(wrk_backend *b, const wrk_call *call, wrk_token_fn fn, void *ud,
                      wrk_result *res);

/* Internals shared by the backend's source files; not for callers.
 * wrk_backend.c dispatches to wrk_backend_echo.c and wrk_backend_openai.c;
 * all three use wrk_backend_util.c (wrk__result_*,
 * wrk_outcome_str). */
void wrk__echo_call(int64_t delay_ms, const wrk_call *call, wrk_token_fn fn, void *ud,
                    wrk_result *res);
typedef struct wrk__openai wrk__openai;
sl_status wrk__openai_create(wrk__openai **out, const wrk_backend_cfg *cfg, char *err,
                             size_t errlen);
void wrk__openai_destroy(wrk__openai *o);
void wrk__openai_call(wrk__openai *o, const wrk_call *call, wrk_token_fn fn, void *ud,
                      wrk_result *res);
void wrk__result_init(wrk_result *res);
void wrk__result_set(wrk_result *res, wrk_outcome o, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif
