/* What the worker writes to, and reads from, the OUT and IN streams for one
 * job (docs/wire.md):
 *
 * - wrk_coalesce: the pure token-coalescing logic (no I/O, no clock, no
 *   locks), so it can be tested by feeding it arrival times.
 * - wrk_stream: one attempt of one reply. It coalesces the model's tokens
 *   into `token` events published asynchronously on the reply's OUT
 *   channel with Nats-Msg-Id `t:<job>:<attempt>:<index>` (best effort:
 *   with params.nc, without waiting for or even asking for JetStream's
 *   acknowledgment), keeps the whole text, and publishes the final
 *   `reply` (Nats-Msg-Id `r:<job>`) synchronously, so the caller knows
 *   JetStream stored it, after every token of the attempt, before it acks
 *   the work message.
 * - wrk_agent_message_publish: the agent's answer as a new message on IN,
 *   so that agents can answer agents.
 * - wrk_history_load: the last messages of a channel, as model context.
 */
#ifndef WRK_STREAM_H
#define WRK_STREAM_H

#include <nats/nats.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "sl_status.h"
#include "wrk_backend.h"

/* ---- Coalescing (pure) ------------------------------------------------- */

/* Receives one chunk to publish: text is not NUL-terminated, len > 0, and
 * it is valid only during the call. */
typedef void (*wrk_chunk_fn)(void *ud, const char *text, size_t len);

/* Token coalescer. Tokens are never split: a chunk is one or more whole
 * tokens. Rules, for a token arriving at time t:
 *   1. if text is pending and t >= first + window, the pending text is
 *      emitted first (the new token starts the next chunk);
 *   2. the token is appended (first = t when nothing was pending);
 *   3. the pending text is emitted at once when it is the first token of
 *      the stream and first_at_once is set with no first window (the user
 *      sees the answer start without waiting a window), when it holds
 *      max_bytes or more (except the first chunk while it waits for its
 *      first window), or when window is 0.
 * With first_at_once and a first window (wrk_coalesce_set_first_window),
 * the first chunk is due first_window after its first token instead, and
 * holds whatever arrived by then, whatever its size: an answer the model
 * gives at once is then still pending when the model call ends, and
 * wrk_stream_end() leaves it to the final reply.
 * wrk_coalesce_poll() emits pending text whose window has passed, and
 * wrk_coalesce_flush() whatever is pending. One coalescer belongs to one
 * thread at a time (wrk_stream adds the lock). */
typedef struct wrk_coalesce {
    char *buf;
    size_t len, cap;
    int64_t first_ms; /* arrival of the first pending token */
    int64_t window_ms;
    int64_t first_window_ms; /* with first_at_once: the first chunk's window (0: at once) */
    size_t max_bytes;
    bool first_at_once;
    bool emitted_any;
} wrk_coalesce;

/* Sets c up empty with a window of window_ms (>= 0) and a size bound of
 * max_bytes (>= 1). Returns SL_OK, or SL_ERR_INVAL for bad arguments. */
sl_status wrk_coalesce_init(wrk_coalesce *c, int64_t window_ms, size_t max_bytes,
                            bool first_at_once);

/* With first_at_once: the first chunk is due ms (>= 0) after its first
 * token, whatever its size, instead of at once (0, the default). Call
 * before the first token. */
void wrk_coalesce_set_first_window(wrk_coalesce *c, int64_t ms);

/* Whether any chunk was emitted. */
bool wrk_coalesce_emitted(const wrk_coalesce *c);

/* Frees the buffer; c may be initialised again afterwards. NULL-safe. */
void wrk_coalesce_fini(wrk_coalesce *c);

/* Adds a token that arrived at now_ms, calling fn for every chunk the rules
 * above emit. Returns SL_OK; SL_ERR_NOMEM when the token could not be
 * buffered (it is dropped; what was pending before stays pending). */
sl_status wrk_coalesce_add(wrk_coalesce *c, const char *text, size_t len, int64_t now_ms,
                           wrk_chunk_fn fn, void *ud);

/* Emits the pending text when its window has passed at now_ms. */
void wrk_coalesce_poll(wrk_coalesce *c, int64_t now_ms, wrk_chunk_fn fn, void *ud);

/* Emits whatever is pending. */
void wrk_coalesce_flush(wrk_coalesce *c, wrk_chunk_fn fn, void *ud);

/* The time at which the pending text is due, or INT64_MAX when nothing is
 * pending. */
int64_t wrk_coalesce_due(const wrk_coalesce *c);

/* Bytes pending. */
size_t wrk_coalesce_pending(const wrk_coalesce *c);

/* ---- One reply attempt on OUT ------------------------------------------ */

/* What a stream needs to know about its job. Strings are copied. */
typedef struct wrk_stream_params {
    const char *subject;  /* the OUT subject of the reply's channel */
    const char *tenant;   /* envelope header fields */
    const char *session;  /* the session of the message answered */
    const char *trace_id; /* may be NULL */
    uint32_t hops;
    const char *job_id;
    const char *reply_id;
    const char *to;          /* the client message id answered */
    const char *agent;       /* the agent answering */
    uint32_t attempt;        /* the JetStream delivery count of the work message */
    int64_t window_ms;       /* coalescing window (SLUICE_COALESCE_MS) */
    int64_t first_window_ms; /* the first chunk's (SLUICE_COALESCE_FIRST_MS); 0: at once */
    size_t max_bytes;        /* coalescing size bound (SLUICE_COALESCE_BYTES) */
    size_t max_text;         /* bound on the whole reply text; 0: WRK_STREAM_MAX_TEXT */
    natsConnection *nc;      /* NULL: tokens are JetStream async publishes on js (acknowledged,
                                failures counted); else plain publishes on nc (the connection
                                of js): no acknowledgment traffic, failures unseen */
} wrk_stream_params;

#define WRK_STREAM_MAX_TEXT (256u * 1024u)

typedef struct wrk_stream wrk_stream;

/* Creates a stream that publishes with js (borrowed: it must outlive the
 * stream; token publishes are asynchronous on it, so its PublishAsync
 * options apply). Returns SL_OK with *out owned by the caller;
 * SL_ERR_INVAL for missing parameters, SL_ERR_NOMEM.
 *
 * Threads: wrk_stream_token(), wrk_stream_text(), wrk_stream_final() are
 * called by the job's thread; wrk_stream_tick() and wrk_stream_due() may be
 * called from a timer thread at the same time (an internal mutex orders
 * them). Destroy only when no other thread can reach the stream. */
sl_status wrk_stream_create(wrk_stream **out, jsCtx *js, const wrk_stream_params *p);

/* Frees the stream (pending text is dropped, not published). NULL-safe. */
void wrk_stream_destroy(wrk_stream *s);

/* Adds a model token that arrived at now_ms (sl_mono_ms clock),
 * publishing the chunks it completes. *armed (may be NULL) is set when the
 * stream now holds pending text it did not hold before, so the caller can
 * wake the timer that calls wrk_stream_tick(). Returns SL_OK; SL_ERR_FULL
 * when the reply text would exceed max_text (the token is dropped and the
 * caller should stop the model); SL_ERR_NOMEM. A failed token publish is
 * not an error here: it is logged and counted, and the final reply carries
 * the whole text anyway. */
sl_status wrk_stream_token(wrk_stream *s, const char *text, size_t len, int64_t now_ms,
                           bool *armed);

/* Publishes the pending text when its window has passed at now_ms. */
void wrk_stream_tick(wrk_stream *s, int64_t now_ms);

/* When wrk_stream_tick() should run next: INT64_MAX when nothing is
 * pending. */
int64_t wrk_stream_due(wrk_stream *s);

/* Publishes whatever is pending. */
void wrk_stream_flush(wrk_stream *s);

/* The model call is over and the final reply follows: the pending text is
 * published when the attempt has published token events already (so the
 * events sent add up to the whole text), else dropped, since the final
 * reply carries it: an answer ready within the first window comes as its
 * final reply alone, without token events (docs/protocol.md). */
void wrk_stream_end(wrk_stream *s);

/* The whole text received so far (NUL-terminated, owned by the stream,
 * valid until the next wrk_stream_token call), its length in *len (may be
 * NULL). */
const char *wrk_stream_text(wrk_stream *s, size_t *len);

/* Number of token events published (attempted) so far, and the monotonic
 * time of the first one (0 when none). */
uint32_t wrk_stream_chunks(wrk_stream *s);
int64_t wrk_stream_first_chunk_ms(wrk_stream *s);

/* Sets the usage the final reply carries (job thread only; numbers above
 * UINT32_MAX are clamped). Until called: 0 input, 0 output, estimated (no
 * model call was counted, e.g. a job cancelled before it started). */
void wrk_stream_set_usage(wrk_stream *s, uint64_t input_tokens, uint64_t output_tokens,
                          bool estimated);

/* Flushes pending tokens, then publishes the final reply with text and the
 * flags and waits for JetStream's acknowledgment. *duplicate (may be NULL)
 * is set when JetStream had already stored a final for this job (the same
 * Nats-Msg-Id within the duplicate window: another attempt or the
 * orchestrator ended it). Returns SL_OK once stored; SL_ERR_BUS or
 * SL_ERR_TIMEOUT when it was not (the caller must not ack the work
 * message); SL_ERR_NOMEM. */
sl_status wrk_stream_final(wrk_stream *s, const char *text, bool degraded, bool partial,
                           bool cancelled, bool *duplicate);

/* The same final reply, published asynchronously on the stream's js
 * context (wrk_stream_set_js): its PublishAsync error handler hears of a
 * failure, js_PublishAsyncComplete waits for the acknowledgment (a
 * duplicate counts as stored). Pending tokens are flushed first. Returns
 * SL_OK once handed to the connection; SL_ERR_BUS (not sent),
 * SL_ERR_NOMEM. */
sl_status wrk_stream_final_async(wrk_stream *s, const char *text, bool degraded, bool partial,
                                 bool cancelled);

/* Moves the stream's JetStream publishes (the final reply) to js, on the
 * same connection; for the thread that takes the job over once its
 * tokens are all published. */
void wrk_stream_set_js(wrk_stream *s, jsCtx *js);

/* ---- Agent message on IN ----------------------------------------------- */

/* Whether the agent message of an answer with this text could be routed,
 * as the work request says (WorkRequest.agent_mentions_only and
 * agent_mentions, docs/wire.md): always when mentions_only is false (an
 * orchestrator that does not say), else when text mentions one of the n
 * names (sl_text_mentions). */
bool wrk_agent_message_routable(bool mentions_only, char *const *names, size_t n, const char *text);

typedef struct wrk_agent_msg {
    const char *tenant;
    const char *session;  /* the original session of the chain */
    const char *trace_id; /* may be NULL */
    uint32_t hops;        /* already incremented: work hops + 1 */
    const char *reply_id;
    const char *agent;
    const char *room; /* "" or NULL for the session channel */
    const char *text;
} wrk_agent_msg;

/* Publishes the agent's final answer as a `message` on
 * sluice.in.<tenant>.a-<agent> with Nats-Msg-Id `a:<reply_id>` and waits for
 * the acknowledgment. Returns SL_OK (also when JetStream reports a
 * duplicate); SL_ERR_INVAL when the subject cannot be built (e.g. an agent
 * name too long for "a-<agent>"); SL_ERR_BUS / SL_ERR_TIMEOUT / SL_ERR_NOMEM. */
sl_status wrk_agent_message_publish(jsCtx *js, const wrk_agent_msg *m);

/* The same message, published asynchronously on js (its PublishAsync
 * error handler hears of a failure; js_PublishAsyncComplete waits for the
 * acknowledgment). Returns SL_OK once handed to the connection; SL_ERR_INVAL,
 * SL_ERR_BUS (not sent), SL_ERR_NOMEM. */
sl_status wrk_agent_message_publish_async(jsCtx *js, const wrk_agent_msg *m);

/* ---- Channel history as context ---------------------------------------- */

/* The last messages of a channel as chat messages (oldest first). Every
 * string is owned by the history. */
typedef struct wrk_history {
    wrk_msg *msgs;
    size_t n;
    char **strs; /* owned contents, one per message */
} wrk_history;

/* Reads up to max recent `message` and final `reply` events of the OUT
 * subject (direct get of the last sequence on the subject, then an ordered
 * consumer over a bounded window before it), skipping the message whose id
 * is exclude_to (the message being answered, which the caller appends
 * itself). Replies of `agent` become "assistant" messages; user messages
 * and other agents' replies become "user" messages prefixed with their
 * author ("u1: ..."). Gives up after budget_ms. Returns SL_OK with *out
 * owned by the caller (wrk_history_destroy), possibly empty; SL_ERR_BUS or
 * SL_ERR_TIMEOUT when nothing could be read; SL_ERR_NOMEM. */
sl_status wrk_history_load(jsCtx *js, const char *subject, const char *exclude_to,
                           const char *agent, size_t max, int64_t budget_ms, wrk_history **out);

/* Frees a history; NULL-safe. */
void wrk_history_destroy(wrk_history *h);

#endif
