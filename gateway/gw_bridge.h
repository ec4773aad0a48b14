/* Hand-off between threads. cnats calls back on its own threads and the
 * libwebsockets loop must never block on NATS, so:
 * - gw_bridge carries closures from any thread to the loop thread (which
 *   runs them when woken through lws_cancel_service());
 * - gw_io runs blocking NATS work (direct gets, KV) on its own threads; the
 *   work posts its result back through the bridge. */
#ifndef GW_BRIDGE_H
#define GW_BRIDGE_H

#include <stdbool.h>
#include <stddef.h>

#include "sl_status.h"

struct lws_context;

typedef void (*gw_task_fn)(void *arg);

typedef struct gw_bridge gw_bridge;

/* max_droppable bounds the tasks posted with gw_bridge_post_droppable. */
sl_status gw_bridge_create(gw_bridge **out, size_t max_droppable);

/* Frees the bridge; tasks still queued are run with discard=true semantics:
 * their free_fn is called on arg. NULL-safe. */
void gw_bridge_destroy(gw_bridge *b);

/* Sets the context woken on each post (NULL: no wake-up). */
void gw_bridge_set_context(gw_bridge *b, struct lws_context *ctx);

/* Queues fn(arg) for the loop thread. Never fails: the closure always runs
 * (or is freed with free_fn at destroy). free_fn may be NULL. */
void gw_bridge_post(gw_bridge *b, gw_task_fn fn, gw_task_fn free_fn, void *arg);

/* Like gw_bridge_post for work that may be dropped under overload (live
 * events, which gap detection repairs): returns false without queueing
 * when the droppable bound is reached; the caller still owns arg. */
bool gw_bridge_post_droppable(gw_bridge *b, gw_task_fn fn, gw_task_fn free_fn, void *arg);

/* Runs every queued task; loop thread only. Returns how many ran. */
size_t gw_bridge_run(gw_bridge *b);

typedef void (*gw_item_fn)(void *ctx, void *item);

/* A bounded, droppable hand-off of many small items (live events) from any
 * thread to the loop in batches: items wait in one array, and only the
 * push into an empty batch posts a task to the bridge; that task runs
 * run(ctx, item) on every item waiting when it starts, in push order. No
 * allocation per item (the array grows, and two are reused in turn). */
typedef struct gw_batch gw_batch;

/* At most max items wait. free_item frees the items never run (destroy).
 * The bridge must outlive the batch's tasks: destroy the bridge first (its
 * queued batch task is dropped, it owns nothing), then the batch. */
sl_status gw_batch_create(gw_batch **out, gw_bridge *b, size_t max, gw_item_fn run,
                          gw_task_fn free_item, void *ctx);

/* Frees the items still waiting with free_item, then the batch; NULL-safe. */
void gw_batch_destroy(gw_batch *q);

/* Queues item; any thread. Returns false without queueing when max items
 * wait or memory is short: the caller still owns item. */
bool gw_batch_push(gw_batch *q, void *item);

typedef struct gw_io gw_io;

/* Starts nthreads threads for blocking work. */
sl_status gw_io_create(gw_io **out, int nthreads);

/* Stops the threads after the queued work is done; NULL-safe. */
void gw_io_destroy(gw_io *io);

/* Queues fn(arg) on an io thread. */
void gw_io_submit(gw_io *io, gw_task_fn fn, void *arg);

/* Queues fn(arg) to run when no work queued with gw_io_submit waits, on
 * any thread; first in, first out among such tasks. For member replays: a
 * resume storm's replays must not hold up the resumes, joins and fills
 * queued after them. */
void gw_io_submit_later(gw_io *io, gw_task_fn fn, void *arg);

/* Queues fn(arg) as bulk work (history reads): it runs only when no work
 * queued with gw_io_submit or gw_io_submit_later waits, and on at most nthreads - 1 threads at a
 * time (1 when there is one), so a flood of bulk work never delays the
 * others by more than one task. First in, first out among bulk tasks. */
void gw_io_submit_bulk(gw_io *io, gw_task_fn fn, void *arg);

/* Tasks queued or running. */
size_t gw_io_pending(gw_io *io);

#endif
