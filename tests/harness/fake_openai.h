/* A fake OpenAI-compatible HTTP server for tests: it answers
 * POST /v1/chat/completions on 127.0.0.1:<ephemeral port> with a streamed
 * (server-sent events) reply, or with the fault its mode asks for. It is a
 * stand-in for vLLM, llama.cpp's server, Ollama or OpenAI, outside the
 * product, and depends on nothing of Sluice.
 *
 * Threads: one accept thread plus one thread per connection (at most
 * FAKE_OPENAI_MAX_CONNS at once; more are closed at once). Every function
 * here is thread-safe; settings apply to requests that arrive after they
 * were made. Keep-alive is honoured, so one connection may carry many
 * requests. */
#ifndef FAKE_OPENAI_H
#define FAKE_OPENAI_H

#define FAKE_OPENAI_MAX_CONNS 64

typedef enum fake_openai_mode {
    FAKE_OPENAI_NORMAL,             /* role chunk, the tokens (each after token_delay_ms),
                                       finish chunk, data: [DONE] */
    FAKE_OPENAI_SLOW,               /* the first token at once, then one per slow_ms */
    FAKE_OPENAI_HANG_AFTER_HEADERS, /* 200 and headers, then nothing until the client leaves
                                       or the server stops */
    FAKE_OPENAI_HTTP_500,           /* 500 with an OpenAI-style JSON error body */
    FAKE_OPENAI_HTTP_429,           /* 429, Retry-After: 1, JSON error body */
    FAKE_OPENAI_HTTP_400,           /* 400, JSON error body (a request the server refuses) */
    FAKE_OPENAI_MALFORMED_SSE,      /* the first token, then "data: {not json", then [DONE] */
    FAKE_OPENAI_RESET_MID_STREAM,   /* reset_after tokens, then a TCP reset (SO_LINGER 0) */
    FAKE_OPENAI_ERROR_EVENT,        /* the first token, then data: {"error":{...}} */
    FAKE_OPENAI_JSON,               /* ignores stream:true: one application/json answer */
    FAKE_OPENAI_NO_STREAM_OPTIONS,  /* an older server: 400 naming "stream_options" when the
                                       request has it, else as NORMAL */
} fake_openai_mode;

typedef struct fake_openai fake_openai;

/* Starts a server on 127.0.0.1 with an ephemeral port, stored in *port.
 * Defaults: mode NORMAL, reply "Hello from the fake model.", token delay 0,
 * slow_ms 1000, reset_after 2. Returns 0 and stores the server in *out
 * (stop it with fake_openai_stop()), or -1 with errno set on failure. */
int fake_openai_start(fake_openai **out, int *port);

/* Stops the server: wakes and joins every thread (a hanging or slow stream
 * is cut at once), closes every socket and frees the server. Returns
 * promptly. NULL is ignored. */
void fake_openai_stop(fake_openai *f);

void fake_openai_set_mode(fake_openai *f, fake_openai_mode mode);

/* The text streamed back, split like the echo backend: each token is a
 * word plus the whitespace after it (the first also carries any leading
 * whitespace), so the tokens concatenate to exactly this text. Copied.
 * Returns 0, or -1 when out of memory (the old reply stays). */
int fake_openai_set_reply(fake_openai *f, const char *text);

/* NORMAL: the delay before each token, in ms (0 = none). */
void fake_openai_set_token_delay_ms(fake_openai *f, int ms);

/* SLOW: the delay between tokens after the first, in ms. */
void fake_openai_set_slow_ms(fake_openai *f, int ms);

/* RESET_MID_STREAM: how many tokens go out before the reset. */
void fake_openai_set_reset_after(fake_openai *f, int ntokens);

/* Usage reporting: with prompt_tokens >= 0 and completion_tokens >= 0 the
 * server reports them as a real one does: in the streamed modes a last
 * chunk {"choices":[],"usage":{"prompt_tokens":P,"completion_tokens":C,
 * "total_tokens":P+C}} before [DONE], only when the request asked for it
 * with "stream_options":{"include_usage":true}; in JSON mode a "usage"
 * object in the answer. Negative (the default): no usage is reported. */
void fake_openai_set_usage(fake_openai *f, int prompt_tokens, int completion_tokens);

/* Number of complete requests received so far (any path, any mode). */
int fake_openai_requests(fake_openai *f);

/* Number of TCP connections accepted so far. */
int fake_openai_connections(fake_openai *f);

/* Waits until at least n requests arrived or timeout_ms passed; returns 0
 * when they did, -1 on timeout. */
int fake_openai_wait_requests(fake_openai *f, int n, int timeout_ms);

/* Copies of the last request's body and head (request line and headers,
 * "\r\n"-separated) as NUL-terminated strings the caller frees; NULL when
 * no request came yet or out of memory. */
char *fake_openai_last_body(fake_openai *f);
char *fake_openai_last_head(fake_openai *f);

#endif
