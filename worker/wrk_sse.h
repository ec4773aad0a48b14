/* Incremental server-sent-events parser (the subset of the WHATWG
 * EventSource stream format that model servers use). Bytes are fed in
 * chunks of any size, split anywhere; lines end with "\n", "\r\n" or a lone
 * "\r"; "data:" lines are joined with "\n"; "event:" sets the event type;
 * lines starting with ':' are comments; "id:", "retry:" and unknown fields
 * are ignored; a blank line dispatches the event (an event without data is
 * not dispatched); a UTF-8 byte-order mark at the start is skipped.
 *
 * One parser belongs to one stream and one thread at a time. */
#ifndef WRK_SSE_H
#define WRK_SSE_H

#include <stddef.h>

#include "sl_status.h"

#define WRK_SSE_MAX_EVENT_DEFAULT (1024u * 1024u) /* 1 MiB */

typedef struct wrk_sse wrk_sse;

/* Called once per dispatched event. event is the event type ("message"
 * unless an "event:" field said otherwise); data is the joined data lines,
 * NUL-terminated, len bytes long (it may itself contain NUL bytes). Both
 * point into the parser and are valid only during the call. Return 0 to go
 * on, nonzero to stop the parser. */
typedef int (*wrk_sse_fn)(void *ud, const char *event, const char *data, size_t len);

/* Creates a parser that calls fn(ud, ...) for each event. max_event bounds
 * the bytes one event may hold (its data plus the line being read; 0 means
 * WRK_SSE_MAX_EVENT_DEFAULT). On success stores the parser in *out (the
 * caller destroys it) and returns SL_OK; SL_ERR_INVAL for NULL arguments,
 * SL_ERR_NOMEM when allocation fails. */
sl_status wrk_sse_create(wrk_sse **out, size_t max_event, wrk_sse_fn fn, void *ud);

/* Frees the parser; NULL is ignored. */
void wrk_sse_destroy(wrk_sse *p);

/* Feeds len bytes, dispatching every event they complete. Returns SL_OK;
 * SL_ERR_FULL when an event or line grows beyond max_event; SL_ERR_CLOSED
 * when the callback asked to stop; SL_ERR_NOMEM on allocation failure.
 * Errors are sticky: once a feed failed, every later feed returns the same
 * status without calling back. */
sl_status wrk_sse_feed(wrk_sse *p, const char *buf, size_t len);

/* Ends the stream. Unlike the spec, which drops an unterminated last event,
 * this completes a last line that has no line ending and dispatches
 * pending data, so a server that closes right after "data: [DONE]\n" is
 * understood. Returns what wrk_sse_feed would. */
sl_status wrk_sse_finish(wrk_sse *p);

/* Returns nonzero when bytes of an undispatched event or line are held. */
int wrk_sse_pending(const wrk_sse *p);

/* Forgets all buffered state and any sticky error, as if newly created. */
void wrk_sse_reset(wrk_sse *p);

#endif
