#include "gw_bridge.h"

#include <libwebsockets.h>
#include <pthread.h>
#include <stdlib.h>

typedef struct task {
    struct task *next;
    gw_task_fn fn;
    gw_task_fn free_fn;
    void *arg;
    bool droppable;
} task;

struct gw_bridge {
    pthread_mutex_t mu;
    task *head, *tail;
    size_t ndroppable;
    size_t max_droppable;
    struct lws_context *ctx;
};

sl_status gw_bridge_create(gw_bridge **out, size_t max_droppable)
{
    gw_bridge *b = calloc(1, sizeof(*b));

    if (b == NULL)
        return SL_ERR_NOMEM;
    pthread_mutex_init(&b->mu, NULL);
    b->max_droppable = max_droppable;
    *out = b;
    return SL_OK;
}

void gw_bridge_destroy(gw_bridge *b)
{
    task *t, *next;

    if (b == NULL)
        return;
    for (t = b->head; t != NULL; t = next) {
        next = t->next;
        if (t->free_fn != NULL)
            t->free_fn(t->arg);
        free(t);
    }
    pthread_mutex_destroy(&b->mu);
    free(b);
}

void gw_bridge_set_context(gw_bridge *b, struct lws_context *ctx)
{
    pthread_mutex_lock(&b->mu);
    b->ctx = ctx;
    pthread_mutex_unlock(&b->mu);
}

static bool enqueue(gw_bridge *b, task *t)
{
    struct lws_context *ctx;
    bool was_empty;

    pthread_mutex_lock(&b->mu);
    if (t->droppable) {
        if (b->ndroppable >= b->max_droppable) {
            pthread_mutex_unlock(&b->mu);
            return false;
        }
        b->ndroppable++;
    }
    was_empty = b->head == NULL;
    if (b->tail != NULL)
        b->tail->next = t;
    else
        b->head = t;
    b->tail = t;
    ctx = b->ctx;
    pthread_mutex_unlock(&b->mu);
    /* One wake-up per batch: the loop drains everything queued. */
    if (was_empty && ctx != NULL)
        lws_cancel_service(ctx);
    return true;
}

void gw_bridge_post(gw_bridge *b, gw_task_fn fn, gw_task_fn free_fn, void *arg)
{
    task *t = calloc(1, sizeof(*t));

    while (t == NULL) /* a result must never be lost; memory pressure passes */
        t = calloc(1, sizeof(*t));
    t->fn = fn;
    t->free_fn = free_fn;
    t->arg = arg;
    enqueue(b, t);
}

bool gw_bridge_post_droppable(gw_bridge *b, gw_task_fn fn, gw_task_fn free_fn, void *arg)
{
    task *t = calloc(1, sizeof(*t));

    if (t == NULL)
        return false;
    t->fn = fn;
    t->free_fn = free_fn;
    t->arg = arg;
    t->droppable = true;
    if (!enqueue(b, t)) {
        free(t);
        return false;
    }
    return true;
}

size_t gw_bridge_run(gw_bridge *b)
{
    task *list, *next;
    size_t n = 0;

    pthread_mutex_lock(&b->mu);
    list = b->head;
    b->head = b->tail = NULL;
    b->ndroppable = 0;
    pthread_mutex_unlock(&b->mu);
    for (; list != NULL; list = next) {
        next = list->next;
        list->fn(list->arg);
        free(list);
        n++;
    }
    return n;
}

struct gw_batch {
    pthread_mutex_t mu;
    void **items; /* waiting, in push order */
    size_t n, cap;
    void **spare; /* the array the last drain emptied, reused next */
    size_t spare_cap;
    bool posted; /* a drain task is queued on the bridge */
    size_t max;
    gw_bridge *bridge;
    gw_item_fn run;
    gw_task_fn free_item;
    void *ctx;
};

sl_status gw_batch_create(gw_batch **out, gw_bridge *b, size_t max, gw_item_fn run,
                          gw_task_fn free_item, void *ctx)
{
    gw_batch *q;

    if (b == NULL || run == NULL || max == 0)
        return SL_ERR_INVAL;
    q = calloc(1, sizeof(*q));
    if (q == NULL)
        return SL_ERR_NOMEM;
    pthread_mutex_init(&q->mu, NULL);
    q->max = max;
    q->bridge = b;
    q->run = run;
    q->free_item = free_item;
    q->ctx = ctx;
    *out = q;
    return SL_OK;
}

void gw_batch_destroy(gw_batch *q)
{
    if (q == NULL)
        return;
    for (size_t i = 0; i < q->n; i++)
        if (q->free_item != NULL)
            q->free_item(q->items[i]);
    free(q->items);
    free(q->spare);
    pthread_mutex_destroy(&q->mu);
    free(q);
}

/* The bridge task: takes every waiting item at once, so the lock is held
 * once per batch, and gives the array back for reuse. */
static void batch_drain(void *arg)
{
    gw_batch *q = arg;
    void **items;
    size_t n, cap;

    pthread_mutex_lock(&q->mu);
    items = q->items;
    n = q->n;
    cap = q->cap;
    q->items = q->spare;
    q->cap = q->spare_cap;
    q->spare = NULL;
    q->spare_cap = 0;
    q->n = 0;
    q->posted = false;
    pthread_mutex_unlock(&q->mu);
    for (size_t i = 0; i < n; i++)
        q->run(q->ctx, items[i]);
    pthread_mutex_lock(&q->mu);
    if (q->spare == NULL) {
        q->spare = items;
        q->spare_cap = cap;
        items = NULL;
    }
    pthread_mutex_unlock(&q->mu);
    free(items);
}

bool gw_batch_push(gw_batch *q, void *item)
{
    bool post;

    pthread_mutex_lock(&q->mu);
    if (q->n >= q->max) {
        pthread_mutex_unlock(&q->mu);
        return false;
    }
    if (q->n == q->cap) {
        size_t ncap = q->cap > 0 ? q->cap * 2 : 64;
        void **ni;
        if (ncap > q->max)
            ncap = q->max;
        ni = realloc(q->items, ncap * sizeof(*ni));
        if (ni == NULL) {
            pthread_mutex_unlock(&q->mu);
            return false;
        }
        q->items = ni;
        q->cap = ncap;
    }
    q->items[q->n++] = item;
    post = !q->posted;
    q->posted = true;
    pthread_mutex_unlock(&q->mu);
    /* Outside the lock: the drain may run (and take this item) before the
     * post returns, which is fine, it only finds the batch posted=false. */
    if (post)
        gw_bridge_post(q->bridge, batch_drain, NULL, q);
    return true;
}

typedef struct io_task {
    struct io_task *next;
    gw_task_fn fn;
    void *arg;
} io_task;

/* The three queues, taken in this order: ordinary work, then replays
 * (any thread), then bulk work (on bulk_max threads at most). */
enum { IO_FIRST, IO_LATER, IO_BULK, IO_NQ };

struct gw_io {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    io_task *head[IO_NQ], *tail[IO_NQ];
    int bulk_running, bulk_max;
    size_t pending;
    bool stop;
    int nthreads;
    pthread_t threads[];
};

static void *io_main(void *p)
{
    gw_io *io = p;

    for (;;) {
        io_task *t = NULL;
        bool bulk = false;
        pthread_mutex_lock(&io->mu);
        for (;;) {
            int q = io->head[IO_FIRST] != NULL                                     ? IO_FIRST
                    : io->head[IO_LATER] != NULL                                   ? IO_LATER
                    : io->head[IO_BULK] != NULL && io->bulk_running < io->bulk_max ? IO_BULK
                                                                                   : IO_NQ;
            if (q != IO_NQ) {
                t = io->head[q];
                io->head[q] = t->next;
                if (io->head[q] == NULL)
                    io->tail[q] = NULL;
                if (q == IO_BULK) {
                    io->bulk_running++;
                    bulk = true;
                }
                break;
            }
            if (io->stop && io->head[IO_BULK] == NULL) {
                pthread_mutex_unlock(&io->mu);
                return NULL;
            }
            pthread_cond_wait(&io->cv, &io->mu);
        }
        pthread_mutex_unlock(&io->mu);
        t->fn(t->arg);
        free(t);
        pthread_mutex_lock(&io->mu);
        io->pending--;
        if (bulk) {
            io->bulk_running--;
            pthread_cond_broadcast(&io->cv); /* a thread may take the next bulk task */
        }
        pthread_mutex_unlock(&io->mu);
    }
}

sl_status gw_io_create(gw_io **out, int nthreads)
{
    gw_io *io = calloc(1, sizeof(*io) + (size_t)nthreads * sizeof(pthread_t));

    if (io == NULL)
        return SL_ERR_NOMEM;
    pthread_mutex_init(&io->mu, NULL);
    pthread_cond_init(&io->cv, NULL);
    io->bulk_max = nthreads > 1 ? nthreads - 1 : 1;
    for (int i = 0; i < nthreads; i++) {
        if (pthread_create(&io->threads[i], NULL, io_main, io) != 0) {
            io->nthreads = i;
            gw_io_destroy(io);
            return SL_ERR_INTERNAL;
        }
    }
    io->nthreads = nthreads;
    *out = io;
    return SL_OK;
}

void gw_io_destroy(gw_io *io)
{
    if (io == NULL)
        return;
    pthread_mutex_lock(&io->mu);
    io->stop = true;
    pthread_cond_broadcast(&io->cv);
    pthread_mutex_unlock(&io->mu);
    for (int i = 0; i < io->nthreads; i++)
        pthread_join(io->threads[i], NULL);
    pthread_cond_destroy(&io->cv);
    pthread_mutex_destroy(&io->mu);
    free(io);
}

/* Appends a task to queue q. A bulk task wakes every thread: only those
 * under bulk_max may take it. */
static void io_enqueue(gw_io *io, gw_task_fn fn, void *arg, int q)
{
    io_task *t = calloc(1, sizeof(*t));

    while (t == NULL)
        t = calloc(1, sizeof(*t));
    t->fn = fn;
    t->arg = arg;
    pthread_mutex_lock(&io->mu);
    if (io->tail[q] != NULL)
        io->tail[q]->next = t;
    else
        io->head[q] = t;
    io->tail[q] = t;
    io->pending++;
    if (q == IO_BULK)
        pthread_cond_broadcast(&io->cv);
    else
        pthread_cond_signal(&io->cv);
    pthread_mutex_unlock(&io->mu);
}

void gw_io_submit(gw_io *io, gw_task_fn fn, void *arg)
{
    io_enqueue(io, fn, arg, IO_FIRST);
}

void gw_io_submit_later(gw_io *io, gw_task_fn fn, void *arg)
{
    io_enqueue(io, fn, arg, IO_LATER);
}

void gw_io_submit_bulk(gw_io *io, gw_task_fn fn, void *arg)
{
    io_enqueue(io, fn, arg, IO_BULK);
}

size_t gw_io_pending(gw_io *io)
{
    size_t n;

    pthread_mutex_lock(&io->mu);
    n = io->pending;
    pthread_mutex_unlock(&io->mu);
    return n;
}
