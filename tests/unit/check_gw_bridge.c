/* Unit tests of the gateway's thread hand-off (gw_bridge): the bridge's
 * order, its bound on droppable work, what destroy does with queued tasks
 * and the wake-up of a real libwebsockets loop; the io pool's threads,
 * order, bulk limits and drain on destroy. Threads wait on conditions with
 * deadlines; nothing sleeps and hopes. */
#include <check.h>
#include <libwebsockets.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "gw_bridge.h"

#define WAIT_MS 10000

/* ---------- a log of task runs, and waiting on it ---------- */

#define LOG_MAX 4096

typedef struct runlog {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int ran[LOG_MAX]; /* task ids in the order they ran */
    int n;
    int freed; /* free_fn calls */
    int running, max_running;
    bool gate_open; /* blocking tasks wait for it */
    pthread_t last_thread;
} runlog;

static runlog L;

static void log_reset(void)
{
    pthread_mutex_init(&L.mu, NULL);
    pthread_cond_init(&L.cv, NULL);
    L.n = L.freed = L.running = L.max_running = 0;
    L.gate_open = false;
}

static void log_done(void)
{
    pthread_cond_destroy(&L.cv);
    pthread_mutex_destroy(&L.mu);
}

typedef struct item {
    int id;
    bool block; /* wait for the gate before returning */
} item;

static item *item_new(int id, bool block)
{
    item *it = malloc(sizeof(*it));
    ck_assert_ptr_nonnull(it);
    it->id = id;
    it->block = block;
    return it;
}

static void task_run(void *arg)
{
    item *it = arg;

    pthread_mutex_lock(&L.mu);
    L.running++;
    if (L.running > L.max_running)
        L.max_running = L.running;
    pthread_cond_broadcast(&L.cv);
    while (it->block && !L.gate_open)
        pthread_cond_wait(&L.cv, &L.mu);
    if (L.n < LOG_MAX)
        L.ran[L.n++] = it->id;
    L.last_thread = pthread_self();
    L.running--;
    pthread_cond_broadcast(&L.cv);
    pthread_mutex_unlock(&L.mu);
    free(it);
}

static void task_free(void *arg)
{
    pthread_mutex_lock(&L.mu);
    L.freed++;
    pthread_mutex_unlock(&L.mu);
    free(arg);
}

static void deadline_in(struct timespec *ts, long ms)
{
    clock_gettime(CLOCK_REALTIME, ts);
    ts->tv_sec += ms / 1000;
    ts->tv_nsec += (ms % 1000) * 1000000L;
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}

/* Waits until at least n tasks ran (or running reaches n when
 * count_running); false after WAIT_MS. */
static bool wait_for(int n, bool count_running)
{
    struct timespec until;
    bool ok = true;

    deadline_in(&until, WAIT_MS);
    pthread_mutex_lock(&L.mu);
    while ((count_running ? L.running : L.n) < n && ok)
        ok = pthread_cond_timedwait(&L.cv, &L.mu, &until) == 0 ||
             (count_running ? L.running : L.n) >= n;
    ok = (count_running ? L.running : L.n) >= n;
    pthread_mutex_unlock(&L.mu);
    return ok;
}

static void gate_open(void)
{
    pthread_mutex_lock(&L.mu);
    L.gate_open = true;
    pthread_cond_broadcast(&L.cv);
    pthread_mutex_unlock(&L.mu);
}

/* ---------- the bridge ---------- */

START_TEST(test_bridge_runs_in_order)
{
    gw_bridge *b = NULL;

    log_reset();
    ck_assert_int_eq(gw_bridge_create(&b, 100), SL_OK);
    ck_assert_uint_eq(gw_bridge_run(b), 0);
    for (int i = 0; i < 100; i++) {
        if (i % 3 == 0)
            ck_assert(gw_bridge_post_droppable(b, task_run, task_free, item_new(i, false)));
        else
            gw_bridge_post(b, task_run, task_free, item_new(i, false));
    }
    ck_assert_int_eq(L.n, 0); /* nothing runs before gw_bridge_run */
    ck_assert_uint_eq(gw_bridge_run(b), 100);
    ck_assert_int_eq(L.n, 100);
    for (int i = 0; i < 100; i++)
        ck_assert_int_eq(L.ran[i], i);
    ck_assert_int_eq(L.freed, 0); /* a task that ran is not also freed */
    ck_assert_uint_eq(gw_bridge_run(b), 0);
    gw_bridge_destroy(b);
    gw_bridge_destroy(NULL);
    log_done();
}
END_TEST

START_TEST(test_bridge_droppable_bound)
{
    gw_bridge *b = NULL;
    item *extra = item_new(99, false);

    log_reset();
    ck_assert_int_eq(gw_bridge_create(&b, 3), SL_OK);
    for (int i = 0; i < 3; i++)
        ck_assert(gw_bridge_post_droppable(b, task_run, task_free, item_new(i, false)));
    /* Over the bound: refused, and the caller still owns its argument. */
    ck_assert(!gw_bridge_post_droppable(b, task_run, task_free, extra));
    ck_assert_int_eq(L.freed, 0);
    /* The bound is on droppable work only. */
    gw_bridge_post(b, task_run, task_free, item_new(3, false));
    ck_assert_uint_eq(gw_bridge_run(b), 4);
    /* Running empties the queue, and the bound counts from zero again. */
    for (int i = 4; i < 7; i++)
        ck_assert(gw_bridge_post_droppable(b, task_run, task_free, item_new(i, false)));
    ck_assert(!gw_bridge_post_droppable(b, task_run, task_free, extra));
    ck_assert_uint_eq(gw_bridge_run(b), 3);
    for (int i = 0; i < 7; i++)
        ck_assert_int_eq(L.ran[i], i);
    free(extra);
    gw_bridge_destroy(b);
    log_done();
}
END_TEST

START_TEST(test_bridge_destroy_frees_unrun)
{
    gw_bridge *b = NULL;

    log_reset();
    ck_assert_int_eq(gw_bridge_create(&b, 10), SL_OK);
    for (int i = 0; i < 5; i++)
        gw_bridge_post(b, task_run, task_free, item_new(i, false));
    ck_assert(gw_bridge_post_droppable(b, task_run, task_free, item_new(5, false)));
    gw_bridge_post(b, task_run, NULL, NULL); /* no free_fn: nothing to free */
    gw_bridge_destroy(b);
    ck_assert_int_eq(L.n, 0);     /* never run */
    ck_assert_int_eq(L.freed, 6); /* each argument freed once (ASan checks the rest) */
    log_done();
}
END_TEST

/* Posting threads: every task arrives once, and each thread's tasks in
 * the order it posted them. */
#define POSTERS 4
#define PER     500

static gw_bridge *shared_bridge;

static void *poster(void *arg)
{
    int t = (int)(intptr_t)arg;

    for (int i = 0; i < PER; i++)
        gw_bridge_post(shared_bridge, task_run, task_free, item_new(t * PER + i, false));
    return NULL;
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

START_TEST(test_bridge_many_posters)
{
    pthread_t th[POSTERS];
    size_t ran = 0;
    int next[POSTERS] = {0};
    int64_t until = now_ms() + WAIT_MS;

    log_reset();
    ck_assert_int_eq(gw_bridge_create(&shared_bridge, 1), SL_OK);
    for (int t = 0; t < POSTERS; t++)
        ck_assert_int_eq(pthread_create(&th[t], NULL, poster, (void *)(intptr_t)t), 0);
    /* This thread is the loop: it runs batches while the others post. */
    while (ran < POSTERS * PER && now_ms() < until) {
        size_t k = gw_bridge_run(shared_bridge);
        ran += k;
        if (k == 0)
            sched_yield();
    }
    for (int t = 0; t < POSTERS; t++)
        pthread_join(th[t], NULL);
    ck_assert_uint_eq(ran, POSTERS * PER);
    ck_assert_uint_eq(gw_bridge_run(shared_bridge), 0);
    ck_assert_int_eq(L.n, POSTERS * PER);
    for (int i = 0; i < L.n; i++) {
        int t = L.ran[i] / PER, k = L.ran[i] % PER;
        ck_assert_msg(k == next[t], "thread %d: task %d ran where %d was due", t, k, next[t]);
        next[t]++;
    }
    gw_bridge_destroy(shared_bridge);
    log_done();
}
END_TEST

/* ---------- batches ---------- */

static void batch_run(void *ctx, void *arg)
{
    int *runs = ctx;

    (*runs)++;
    task_run(arg);
}

/* Items pushed while no drain ran go to the loop as one bridge task, in push
 * order; the next push after a drain posts the next task. */
START_TEST(test_batch_one_task_per_batch_in_order)
{
    gw_bridge *b = NULL;
    gw_batch *q = NULL;
    int runs = 0;

    log_reset();
    ck_assert_int_eq(gw_bridge_create(&b, 10), SL_OK);
    ck_assert_int_eq(gw_batch_create(&q, b, 1000, batch_run, task_free, &runs), SL_OK);
    for (int i = 0; i < 300; i++)
        ck_assert(gw_batch_push(q, item_new(i, false)));
    ck_assert_int_eq(L.n, 0);
    ck_assert_uint_eq(gw_bridge_run(b), 1); /* 300 items, one task */
    ck_assert_int_eq(runs, 300);
    gw_bridge_post(b, task_run, task_free, item_new(300, false));
    for (int i = 301; i < 310; i++)
        ck_assert(gw_batch_push(q, item_new(i, false)));
    ck_assert_uint_eq(gw_bridge_run(b), 2); /* the plain task, then the new batch */
    ck_assert_int_eq(L.n, 310);
    for (int i = 0; i < 310; i++)
        ck_assert_int_eq(L.ran[i], i);
    ck_assert_uint_eq(gw_bridge_run(b), 0);
    gw_bridge_destroy(b);
    gw_batch_destroy(q);
    gw_batch_destroy(NULL);
    log_done();
}
END_TEST

/* At most max items wait: a push beyond is refused and the caller keeps its
 * item; a drain makes room; destroy frees the items never run. */
START_TEST(test_batch_bound_and_destroy)
{
    gw_bridge *b = NULL;
    gw_batch *q = NULL;
    item *extra = item_new(99, false);
    int runs = 0;

    log_reset();
    ck_assert_int_eq(gw_bridge_create(&b, 10), SL_OK);
    ck_assert_int_eq(gw_batch_create(&q, b, 3, batch_run, task_free, &runs), SL_OK);
    for (int i = 0; i < 3; i++)
        ck_assert(gw_batch_push(q, item_new(i, false)));
    ck_assert(!gw_batch_push(q, extra));
    ck_assert_int_eq(L.freed, 0);
    ck_assert_uint_eq(gw_bridge_run(b), 1);
    ck_assert_int_eq(runs, 3);
    for (int i = 3; i < 6; i++)
        ck_assert(gw_batch_push(q, item_new(i, false)));
    ck_assert(!gw_batch_push(q, extra));
    /* The bridge goes first (its batch task owns nothing), then the batch
     * frees its three items. */
    gw_bridge_destroy(b);
    gw_batch_destroy(q);
    ck_assert_int_eq(L.n, 3);
    ck_assert_int_eq(L.freed, 3);
    free(extra);
    log_done();
}
END_TEST

/* Pushing threads and a draining loop: every item runs once, each thread's
 * in its push order, in fewer bridge tasks than items. */
static gw_batch *shared_batch;

static void *pusher(void *arg)
{
    int t = (int)(intptr_t)arg;

    for (int i = 0; i < PER; i++) {
        item *it = item_new(t * PER + i, false);
        while (!gw_batch_push(shared_batch, it))
            sched_yield(); /* full: the loop drains */
    }
    return NULL;
}

START_TEST(test_batch_many_pushers)
{
    pthread_t th[POSTERS];
    size_t tasks = 0;
    int runs = 0;
    int next[POSTERS] = {0};
    int64_t until = now_ms() + WAIT_MS;

    log_reset();
    ck_assert_int_eq(gw_bridge_create(&shared_bridge, 1), SL_OK);
    ck_assert_int_eq(gw_batch_create(&shared_batch, shared_bridge, 64, batch_run, task_free, &runs),
                     SL_OK);
    for (int t = 0; t < POSTERS; t++)
        ck_assert_int_eq(pthread_create(&th[t], NULL, pusher, (void *)(intptr_t)t), 0);
    while (runs < POSTERS * PER && now_ms() < until) {
        size_t k = gw_bridge_run(shared_bridge);
        tasks += k;
        if (k == 0)
            sched_yield();
    }
    for (int t = 0; t < POSTERS; t++)
        pthread_join(th[t], NULL);
    ck_assert_int_eq(runs, POSTERS * PER);
    ck_assert_uint_le(tasks, (size_t)runs);
    ck_assert_uint_eq(gw_bridge_run(shared_bridge), 0);
    for (int i = 0; i < L.n; i++) {
        int t = L.ran[i] / PER, k = L.ran[i] % PER;
        ck_assert_msg(k == next[t], "thread %d: item %d ran where %d was due", t, k, next[t]);
        next[t]++;
    }
    gw_bridge_destroy(shared_bridge);
    gw_batch_destroy(shared_batch);
    log_done();
}
END_TEST

/* ---------- the wake-up of a libwebsockets loop ---------- */

typedef struct wake_loop {
    struct lws_context *ctx;
    gw_bridge *bridge;
    atomic_bool stop;
    atomic_int wakes;
    pthread_t thread;
} wake_loop;

static wake_loop W;

static int wake_cb(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in,
                   size_t len)
{
    (void)wsi;
    (void)user;
    (void)in;
    (void)len;
    /* As gw_server's callback: a cancelled wait runs the bridge. */
    if (reason == LWS_CALLBACK_EVENT_WAIT_CANCELLED) {
        atomic_fetch_add(&W.wakes, 1);
        gw_bridge_run(W.bridge);
    }
    return 0;
}

static const struct lws_protocols wake_protocols[] = {
    {"wake", wake_cb, 0, 0, 0, NULL, 0},
    {NULL, NULL, 0, 0, 0, NULL, 0},
};

static void *wake_main(void *arg)
{
    (void)arg;
    while (!atomic_load(&W.stop))
        lws_service(W.ctx, 0);
    return NULL;
}

START_TEST(test_bridge_wakes_the_loop)
{
    struct lws_context_creation_info info;

    log_reset();
    memset(&W, 0, sizeof(W));
    ck_assert_int_eq(gw_bridge_create(&W.bridge, 8), SL_OK);
    /* Without a context a post wakes nothing and waits for a run. */
    gw_bridge_post(W.bridge, task_run, task_free, item_new(0, false));
    ck_assert_int_eq(L.n, 0);
    ck_assert_uint_eq(gw_bridge_run(W.bridge), 1);

    lws_set_log_level(LLL_ERR, NULL);
    memset(&info, 0, sizeof(info));
    info.port = CONTEXT_PORT_NO_LISTEN;
    info.protocols = wake_protocols;
    W.ctx = lws_create_context(&info);
    ck_assert_ptr_nonnull(W.ctx);
    gw_bridge_set_context(W.bridge, W.ctx);
    ck_assert_int_eq(pthread_create(&W.thread, NULL, wake_main, NULL), 0);

    /* Each post into an empty queue wakes the loop thread, which runs it. */
    for (int i = 1; i <= 20; i++) {
        if (i % 2 == 0)
            ck_assert(gw_bridge_post_droppable(W.bridge, task_run, task_free, item_new(i, false)));
        else
            gw_bridge_post(W.bridge, task_run, task_free, item_new(i, false));
        ck_assert_msg(wait_for(i + 1, false), "the loop did not run task %d", i);
        ck_assert(pthread_equal(L.last_thread, W.thread));
    }
    ck_assert_int_ge(atomic_load(&W.wakes), 20);
    for (int i = 0; i <= 20; i++)
        ck_assert_int_eq(L.ran[i], i);

    atomic_store(&W.stop, true);
    gw_bridge_set_context(W.bridge, NULL);
    lws_cancel_service(W.ctx);
    pthread_join(W.thread, NULL);
    lws_context_destroy(W.ctx);
    /* Detached again: a post is queued, nothing is woken. */
    gw_bridge_post(W.bridge, task_run, task_free, item_new(21, false));
    ck_assert_int_eq(L.n, 21);
    gw_bridge_destroy(W.bridge);
    ck_assert_int_eq(L.freed, 1);
    log_done();
}
END_TEST

/* ---------- the io pool ---------- */

START_TEST(test_io_runs_on_its_threads_in_order)
{
    gw_io *io = NULL;

    log_reset();
    ck_assert_int_eq(gw_io_create(&io, 1), SL_OK);
    for (int i = 0; i < 200; i++)
        gw_io_submit(io, task_run, item_new(i, false));
    ck_assert_msg(wait_for(200, false), "ran %d of 200", L.n);
    /* One thread: first in, first out; not this thread. */
    for (int i = 0; i < 200; i++)
        ck_assert_int_eq(L.ran[i], i);
    ck_assert(!pthread_equal(L.last_thread, pthread_self()));
    gw_io_destroy(io);
    gw_io_destroy(NULL);
    log_done();
}
END_TEST

START_TEST(test_io_pending_and_ordinary_before_bulk)
{
    gw_io *io = NULL;

    log_reset();
    ck_assert_int_eq(gw_io_create(&io, 1), SL_OK);
    /* The only thread is held by a blocking task... */
    gw_io_submit(io, task_run, item_new(0, true));
    ck_assert(wait_for(1, true));
    /* ... while bulk work and then ordinary work queue up. */
    for (int i = 1; i <= 3; i++)
        gw_io_submit_bulk(io, task_run, item_new(100 + i, false));
    gw_io_submit(io, task_run, item_new(1, false));
    gw_io_submit(io, task_run, item_new(2, false));
    ck_assert_uint_eq(gw_io_pending(io), 6); /* queued or running */
    gate_open();
    ck_assert_msg(wait_for(6, false), "ran %d of 6", L.n);
    /* Ordinary first (in order), then bulk (in order). */
    {
        const int want[] = {0, 1, 2, 101, 102, 103};
        for (int i = 0; i < 6; i++)
            ck_assert_int_eq(L.ran[i], want[i]);
    }
    gw_io_destroy(io);
    log_done();
}
END_TEST

START_TEST(test_io_ordinary_then_later_then_bulk)
{
    gw_io *io = NULL;

    log_reset();
    ck_assert_int_eq(gw_io_create(&io, 1), SL_OK);
    gw_io_submit(io, task_run, item_new(0, true));
    ck_assert(wait_for(1, true));
    /* Queued while the only thread is held: bulk, later and ordinary work
     * interleaved, as a resume storm queues replays between resumes. */
    for (int i = 1; i <= 3; i++) {
        gw_io_submit_bulk(io, task_run, item_new(200 + i, false));
        gw_io_submit_later(io, task_run, item_new(100 + i, false));
        gw_io_submit(io, task_run, item_new(i, false));
    }
    ck_assert_uint_eq(gw_io_pending(io), 10);
    gate_open();
    ck_assert_msg(wait_for(10, false), "ran %d of 10", L.n);
    /* Ordinary work first, then the later work, then bulk; each in order. */
    {
        const int want[] = {0, 1, 2, 3, 101, 102, 103, 201, 202, 203};
        for (int i = 0; i < 10; i++)
            ck_assert_int_eq(L.ran[i], want[i]);
    }
    gw_io_destroy(io);
    log_done();
}
END_TEST

START_TEST(test_io_later_uses_every_thread)
{
    gw_io *io = NULL;

    log_reset();
    ck_assert_int_eq(gw_io_create(&io, 3), SL_OK);
    /* Unlike bulk work, later work may take every thread. */
    for (int i = 0; i < 3; i++)
        gw_io_submit_later(io, task_run, item_new(100 + i, true));
    ck_assert_msg(wait_for(3, true), "later work did not run on all 3 threads");
    pthread_mutex_lock(&L.mu);
    ck_assert_int_eq(L.max_running, 3);
    pthread_mutex_unlock(&L.mu);
    gate_open();
    ck_assert_msg(wait_for(3, false), "ran %d of 3", L.n);
    gw_io_destroy(io);
    log_done();
}
END_TEST

START_TEST(test_io_bulk_leaves_a_thread)
{
    gw_io *io = NULL;

    log_reset();
    ck_assert_int_eq(gw_io_create(&io, 3), SL_OK);
    /* Bulk work takes at most 2 of the 3 threads... */
    for (int i = 0; i < 5; i++)
        gw_io_submit_bulk(io, task_run, item_new(100 + i, true));
    ck_assert(wait_for(2, true));
    ck_assert_uint_eq(gw_io_pending(io), 5); /* 2 running, 3 queued */
    /* ... so ordinary work runs at once, on the third, while they block. */
    gw_io_submit(io, task_run, item_new(1, false));
    ck_assert_msg(wait_for(1, false), "ordinary work waited behind bulk work");
    ck_assert_int_eq(L.ran[0], 1);
    pthread_mutex_lock(&L.mu);
    ck_assert_int_eq(L.max_running, 3); /* 2 bulk + 1 ordinary */
    pthread_mutex_unlock(&L.mu);
    gate_open();
    ck_assert_msg(wait_for(6, false), "ran %d of 6", L.n);
    gw_io_destroy(io);
    log_done();
}
END_TEST

START_TEST(test_io_destroy_drains)
{
    gw_io *io = NULL;

    log_reset();
    ck_assert_int_eq(gw_io_create(&io, 2), SL_OK);
    for (int i = 0; i < 300; i++) {
        if (i % 3 == 0)
            gw_io_submit(io, task_run, item_new(i, false));
        else if (i % 3 == 1)
            gw_io_submit_later(io, task_run, item_new(i, false));
        else
            gw_io_submit_bulk(io, task_run, item_new(i, false));
    }
    /* Destroy waits for the queued work (later and bulk too) before the
     * threads end. */
    gw_io_destroy(io);
    ck_assert_int_eq(L.n, 300);
    log_done();
}
END_TEST

int main(void)
{
    Suite *s = suite_create("gw_bridge");
    TCase *tb = tcase_create("bridge");
    TCase *ti = tcase_create("io");
    SRunner *sr;
    int failed;

    tcase_set_timeout(tb, 60);
    tcase_set_timeout(ti, 60);
    tcase_add_test(tb, test_bridge_runs_in_order);
    tcase_add_test(tb, test_bridge_droppable_bound);
    tcase_add_test(tb, test_bridge_destroy_frees_unrun);
    tcase_add_test(tb, test_bridge_many_posters);
    tcase_add_test(tb, test_bridge_wakes_the_loop);
    tcase_add_test(tb, test_batch_one_task_per_batch_in_order);
    tcase_add_test(tb, test_batch_bound_and_destroy);
    tcase_add_test(tb, test_batch_many_pushers);
    tcase_add_test(ti, test_io_runs_on_its_threads_in_order);
    tcase_add_test(ti, test_io_pending_and_ordinary_before_bulk);
    tcase_add_test(ti, test_io_ordinary_then_later_then_bulk);
    tcase_add_test(ti, test_io_later_uses_every_thread);
    tcase_add_test(ti, test_io_bulk_leaves_a_thread);
    tcase_add_test(ti, test_io_destroy_drains);
    suite_add_tcase(s, tb);
    suite_add_tcase(s, ti);
    sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
