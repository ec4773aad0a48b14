/* Unit tests of the worker's fair pulling (wrk_sched: which queue is asked
 * next, for how many jobs, and when a queue waits) and of when a job must
 * read its cancel marker (wrk_cancel_marker_needed). */
#include <check.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sl_codec.h"
#include "sl_time.h"
#include "wrk_loop.h"
#include "wrk_sched.h"

static wrk_sched *sched_new(size_t max)
{
    wrk_sched *s = NULL;

    ck_assert_int_eq(wrk_sched_create(&s, max), SL_OK);
    return s;
}

static wrk_queue *queue(wrk_sched *s, const char *tenant)
{
    wrk_queue *q = wrk_sched_queue(s, 0, "default", tenant, true);

    ck_assert_ptr_nonnull(q);
    q->ready = true;
    return q;
}

/* Takes the next queue's turn with free slots and, when one is due, opens
 * its request; returns the queue (NULL: none) and its batch. */
static wrk_queue *turn(wrk_sched *s, int free, int64_t now, int *batch, uint64_t *token)
{
    int b = 0;
    wrk_queue *q = wrk_sched_next(s, free, now, &b, NULL);

    if (q != NULL) {
        ck_assert(q->claimed);
        ck_assert(!q->in_ring);
        *token = wrk_sched_open(s, q, b, now);
        ck_assert(*token != 0);
    }
    if (batch != NULL)
        *batch = b;
    return q;
}

START_TEST(test_names)
{
    wrk_sched *s = sched_new(8);
    wrk_queue *q = wrk_sched_queue(s, 0, "default", "acme", true);
    wrk_queue *legacy = wrk_sched_queue(s, 0, "default", "", true);

    ck_assert_ptr_nonnull(q);
    ck_assert_str_eq(q->durable, "wrk_default~acme");
    ck_assert_str_eq(q->filter, "sluice.work.default.acme");
    ck_assert_ptr_nonnull(legacy);
    ck_assert_str_eq(legacy->durable, "wrk_default");
    ck_assert_str_eq(legacy->filter, "sluice.work.default.>");
    /* Found again, not made twice; per model. */
    ck_assert_ptr_eq(wrk_sched_queue(s, 0, "default", "acme", false), q);
    ck_assert_ptr_null(wrk_sched_queue(s, 1, "other", "acme", false));
    ck_assert_ptr_eq(wrk_sched_by_id(s, q->id), q);
    /* Never a name from an invalid id. */
    ck_assert_ptr_null(wrk_sched_queue(s, 0, "default", "a.b", true));
    ck_assert_ptr_null(wrk_sched_queue(s, 0, "default", "*", true));
    ck_assert_ptr_null(wrk_sched_queue(s, 2, "bad.model", "zz", true));
    ck_assert(!q->ready && !q->in_ring && q->req_token == 0);
    wrk_sched_destroy(s);
}
END_TEST

START_TEST(test_table_bound)
{
    wrk_sched *s = sched_new(2);

    ck_assert_ptr_nonnull(wrk_sched_queue(s, 0, "default", "a", true));
    ck_assert_ptr_nonnull(wrk_sched_queue(s, 0, "default", "b", true));
    ck_assert_ptr_null(wrk_sched_queue(s, 0, "default", "c", true));
    ck_assert_ptr_nonnull(wrk_sched_queue(s, 0, "default", "a", false));
    wrk_sched_destroy(s);
    ck_assert_int_eq(wrk_sched_create(&s, 0), SL_ERR_INVAL);
}
END_TEST

/* Delivers every job of q's open request token (batch of them). */
static void deliver(wrk_sched *s, wrk_queue *q, uint64_t tok, int batch, int64_t now)
{
    for (int i = 0; i < batch; i++)
        wrk_sched_delivered(s, q, tok, now);
    ck_assert(q->req_token == 0);
}

/* 4 slots. Tenant A alone takes every slot; once tenant B waits, each
 * freed slot goes to B until both hold their share (2), then each keeps
 * its own: A never gets a slot above its share while B is active, even
 * when B has nothing waiting, until B's linger ends. */
START_TEST(test_backlog_does_not_starve_another_tenant)
{
    wrk_sched *s = sched_new(16);
    wrk_queue *a = queue(s, "a"), *b = queue(s, "b");
    uint64_t tok = 0;
    int batch = 0;
    int64_t now = 1000, wake = 0;

    wrk_sched_ring(s, a, now, 100); /* a backlog of 100 */
    ck_assert_ptr_eq(turn(s, 4, now, &batch, &tok), a);
    ck_assert_int_eq(batch, 4); /* alone: every slot */
    deliver(s, a, tok, 4, now);
    ck_assert(a->in_ring); /* more believed there */

    wrk_sched_ring(s, b, now, 100);
    ck_assert_ptr_null(wrk_sched_next(s, 0, now, &batch, NULL)); /* no free slot */
    /* A's job ends: the slot goes to B, whose turn it is not by the ring's
     * order (A is first in line) but by the slots held. */
    wrk_sched_release(s, a, now);
    ck_assert_ptr_eq(turn(s, 1, now, &batch, &tok), b);
    ck_assert_int_eq(batch, 1);
    deliver(s, b, tok, 1, now);
    wrk_sched_release(s, a, now);
    ck_assert_ptr_eq(turn(s, 1, now, &batch, &tok), b);
    deliver(s, b, tok, 1, now);
    ck_assert_int_eq(wrk_sched_tenant_load(a), 2);
    ck_assert_int_eq(wrk_sched_tenant_load(b), 2);
    /* Both at their share: each freed slot goes back to the tenant with
     * fewer. */
    for (int i = 0; i < 10; i++) {
        wrk_queue *q = i % 2 ? a : b;
        wrk_sched_release(s, q, now);
        ck_assert_ptr_eq(turn(s, 1, now, &batch, &tok), q);
        deliver(s, q, tok, 1, now);
        ck_assert_int_eq(wrk_sched_tenant_load(a), 2);
        ck_assert_int_eq(wrk_sched_tenant_load(b), 2);
    }
    /* B's queue is found empty; B has nothing waiting. */
    ck_assert(b->in_ring);
    wrk_sched_release(s, b, now);
    ck_assert_ptr_eq(turn(s, 1, now, &batch, &tok), b);
    ck_assert(wrk_sched_ended(s, b, tok, now)); /* found empty after all */
    ck_assert(!b->in_ring);
    ck_assert_int_eq(wrk_sched_tenant_load(b), 1);
    /* A may not go above its share while B is below its own... */
    ck_assert_ptr_null(wrk_sched_next(s, 1, now, &batch, &wake));
    now += 10;
    wrk_sched_release(s, b, now);
    ck_assert_ptr_null(wrk_sched_next(s, 2, now, &batch, &wake));
    ck_assert(wake == now + WRK_FAIR_LINGER_MS);
    ck_assert_ptr_null(wrk_sched_next(s, 2, now + WRK_FAIR_LINGER_MS - 1, &batch, &wake));
    /* ...until B's linger ends: then A is alone and takes every slot. */
    ck_assert_ptr_eq(turn(s, 2, now + WRK_FAIR_LINGER_MS, &batch, &tok), a);
    ck_assert_int_eq(batch, 2);
    wrk_sched_destroy(s);
}
END_TEST

/* Free slots are shared among the tenants in line, the fewest held first. */
START_TEST(test_shares)
{
    wrk_sched *s = sched_new(16);
    wrk_queue *a = queue(s, "a"), *b = queue(s, "b"), *c = queue(s, "c");
    uint64_t tok = 0;
    int batch = 0, free = 8;

    wrk_sched_ring(s, a, 0, 20);
    ck_assert_ptr_eq(turn(s, free, 0, &batch, &tok), a);
    ck_assert_int_eq(batch, 8); /* alone: everything */
    ck_assert_int_eq(wrk_sched_outstanding(s), 8);
    ck_assert_int_eq(wrk_sched_tenant_load(a), 8); /* asked for is held */
    ck_assert(wrk_sched_ended(s, a, tok, 0));      /* none there after all */
    ck_assert_int_eq(wrk_sched_outstanding(s), 0);
    ck_assert_int_eq(wrk_sched_tenant_load(a), 0);
    ck_assert(!a->in_ring);

    wrk_sched_ring(s, a, 0, 20);
    wrk_sched_ring(s, b, 0, 20);
    wrk_sched_ring(s, c, 0, 20);
    ck_assert_ptr_eq(turn(s, free, 0, &batch, &tok), a);
    ck_assert_int_eq(batch, 3); /* 8 slots: 3, 3, 2 */
    free -= batch;
    ck_assert_ptr_eq(turn(s, free, 0, &batch, &tok), b);
    ck_assert_int_eq(batch, 3);
    free -= batch;
    ck_assert_ptr_eq(turn(s, free, 0, &batch, &tok), c);
    ck_assert_int_eq(batch, 2);
    ck_assert_int_eq(wrk_sched_outstanding(s), 8);
    /* No queue left in line, and none without free slots. */
    ck_assert_ptr_null(wrk_sched_next(s, 5, 0, &batch, NULL));
    wrk_sched_ring(s, a, 0, 0); /* rung while its request is open: not in line twice */
    ck_assert_uint_eq(wrk_sched_active(s), 0);
    ck_assert_ptr_null(wrk_sched_next(s, 0, 0, &batch, NULL));
    wrk_sched_destroy(s);
}
END_TEST

/* Weights (SLUICE_TENANT_WEIGHTS): a tenant of weight 2 gets twice the
 * slots of one of weight 1 while both wait; a tenant's queues of two models
 * share its slots. */
START_TEST(test_weighted_shares)
{
    wrk_sched *s = sched_new(16);
    wrk_weight w[] = {{"a", 2}};
    wrk_queue *a = queue(s, "a"), *b = queue(s, "b"), *a2, *q;
    uint64_t tok = 0;
    int batch = 0;

    ck_assert_int_eq(wrk_sched_set_weights(s, w, 1), SL_OK);
    a2 = wrk_sched_queue(s, 1, "other", "a", true);
    ck_assert_ptr_nonnull(a2);
    a2->ready = true;
    wrk_sched_ring(s, a, 0, 50);
    wrk_sched_ring(s, b, 0, 50);
    wrk_sched_ring(s, a2, 0, 50);
    ck_assert_ptr_eq(turn(s, 9, 0, &batch, &tok), a);
    ck_assert_int_eq(batch, 6);
    deliver(s, a, tok, 6, 0);
    ck_assert_ptr_eq(turn(s, 3, 0, &batch, &tok), b);
    ck_assert_int_eq(batch, 3);
    deliver(s, b, tok, 3, 0);
    /* A's other model gets nothing: A holds its share. */
    ck_assert_ptr_null(wrk_sched_next(s, 0, 0, &batch, NULL));
    /* A slot of B frees: back to B (3 of 9 is its share); one of A: to
     * A's queue first in line, the other model's. */
    wrk_sched_release(s, b, 1);
    ck_assert_ptr_eq(turn(s, 1, 1, &batch, &tok), b);
    deliver(s, b, tok, 1, 1);
    wrk_sched_release(s, a, 1);
    q = turn(s, 1, 1, &batch, &tok);
    ck_assert_ptr_eq(q, a2);
    deliver(s, q, tok, 1, 1);
    ck_assert_int_eq(wrk_sched_tenant_load(a), 6);
    ck_assert_int_eq(wrk_sched_tenant_load(a2), 6);
    ck_assert_int_eq(wrk_sched_tenant_load(b), 3);
    /* Bad weights change nothing. */
    w[0].weight = 0;
    ck_assert_int_eq(wrk_sched_set_weights(s, w, 1), SL_ERR_INVAL);
    wrk_sched_destroy(s);
}
END_TEST

/* The policy alone, over counts. */
START_TEST(test_fair_grant)
{
    /* A tenant alone gets every free slot it wants. */
    wrk_fair one[] = {{.load = 0, .weight = 1, .want = 10}};
    ck_assert_int_eq(wrk_fair_grant(one, 1, 8, 8), 8);
    ck_assert_int_eq(one[0].grant, 8);
    /* ...but not more than it wants. */
    one[0].want = 3;
    ck_assert_int_eq(wrk_fair_grant(one, 1, 8, 8), 3);

    /* A holds 7 of 8; B waits: the free slot is B's. */
    wrk_fair ab[] = {{.load = 7, .weight = 1, .want = 10}, {.load = 0, .weight = 1, .want = 1}};
    ck_assert_int_eq(wrk_fair_grant(ab, 2, 8, 1), 1);
    ck_assert_int_eq(ab[0].grant, 0);
    ck_assert_int_eq(ab[1].grant, 1);
    /* B active but wanting nothing now, below its share: its share is kept
     * (A, at its share, gets nothing). */
    ab[0].load = 4;
    ab[1] = (wrk_fair){.load = 1, .weight = 1, .want = 0};
    ck_assert_int_eq(wrk_fair_grant(ab, 2, 8, 3), 0);
    /* A below its share gets up to it, not beyond. */
    ab[0].load = 2;
    ck_assert_int_eq(wrk_fair_grant(ab, 2, 8, 5), 2);
    ck_assert_int_eq(ab[0].grant, 2);
    /* B above its share and wanting nothing: A gets the rest. */
    ab[0] = (wrk_fair){.load = 3, .weight = 1, .want = 10};
    ab[1] = (wrk_fair){.load = 5, .weight = 1, .want = 0};
    ck_assert_int_eq(wrk_fair_grant(ab, 2, 10, 2), 2);
    ck_assert_int_eq(ab[0].grant, 2);
    /* Both wanting: the slots level the counts, ties to the lower index. */
    ab[0] = (wrk_fair){.load = 1, .weight = 1, .want = 10};
    ab[1] = (wrk_fair){.load = 0, .weight = 1, .want = 10};
    ck_assert_int_eq(wrk_fair_grant(ab, 2, 8, 7), 7);
    ck_assert_int_eq(ab[0].grant, 3);
    ck_assert_int_eq(ab[1].grant, 4);

    /* Weights 2:1 over 9 slots: shares 6 and 3. */
    wrk_fair w[] = {{.load = 0, .weight = 2, .want = 20}, {.load = 0, .weight = 1, .want = 20}};
    ck_assert_int_eq(wrk_fair_grant(w, 2, 9, 9), 9);
    ck_assert_int_eq(w[0].grant, 6);
    ck_assert_int_eq(w[1].grant, 3);
    /* Fewest for its weight: 3 of weight 2 (1.5) is less than 2 of
     * weight 1. */
    w[0] = (wrk_fair){.load = 3, .weight = 2, .want = 20};
    w[1] = (wrk_fair){.load = 2, .weight = 1, .want = 20};
    ck_assert_int_eq(wrk_fair_grant(w, 2, 9, 1), 1);
    ck_assert_int_eq(w[0].grant, 1);

    /* Three tenants over 8 slots: shares ceil(8/3) = 3. A and B hold 3;
     * C is active with nothing waiting: the 2 free slots are kept for C. */
    wrk_fair abc[] = {{.load = 3, .weight = 1, .want = 5},
                      {.load = 3, .weight = 1, .want = 5},
                      {.load = 0, .weight = 1, .want = 0}};
    ck_assert_int_eq(wrk_fair_grant(abc, 3, 8, 2), 0);
    abc[2].want = 5;
    ck_assert_int_eq(wrk_fair_grant(abc, 3, 8, 2), 2);
    ck_assert_int_eq(abc[2].grant, 2);
    /* A tenant above its share (it had the slots alone) keeps them, but
     * gets no more while another is below. */
    abc[0] = (wrk_fair){.load = 6, .weight = 1, .want = 5};
    abc[1] = (wrk_fair){.load = 0, .weight = 1, .want = 5};
    abc[2] = (wrk_fair){.load = 0, .weight = 1, .want = 5};
    ck_assert_int_eq(wrk_fair_grant(abc, 3, 8, 2), 2);
    ck_assert_int_eq(abc[0].grant, 0);
    ck_assert_int_eq(abc[1].grant, 1);
    ck_assert_int_eq(abc[2].grant, 1);

    ck_assert_int_eq(wrk_fair_share(8, 1, 2), 4);
    ck_assert_int_eq(wrk_fair_share(8, 1, 3), 3);
    ck_assert_int_eq(wrk_fair_share(9, 2, 3), 6);
    ck_assert_int_eq(wrk_fair_share(4, 1, 100), 1); /* never 0 */
    ck_assert_int_eq(wrk_fair_share(4, 5, 5), 4);
    ck_assert_int_eq(wrk_fair_grant(NULL, 0, 8, 8), 0);
}
END_TEST

START_TEST(test_weights_parse)
{
    static const struct {
        const char *spec, *err;
    } bad[] = {
        {"a", "'a' is not tenant=weight"},
        {"a=", "weight of 'a' must be an integer from 1 to 1000, not ''"},
        {"a=0", "weight of 'a' must be an integer from 1 to 1000, not '0'"},
        {"a=1001", "weight of 'a' must be an integer from 1 to 1000, not '1001'"},
        {"a=-1", "weight of 'a' must be an integer from 1 to 1000, not '-1'"},
        {"a=+1", "weight of 'a' must be an integer from 1 to 1000, not '+1'"},
        {"a=2x", "weight of 'a' must be an integer from 1 to 1000, not '2x'"},
        {"a=1=2", "weight of 'a' must be an integer from 1 to 1000, not '1=2'"},
        {"a=99999999999999999999", "weight of 'a' must be an integer from 1 to 1000, not "
                                   "'99999999999999999999'"},
        {"a=1,", "empty item (expected tenant=weight,...)"},
        {",a=1", "empty item (expected tenant=weight,...)"},
        {"a=1,,b=2", "empty item (expected tenant=weight,...)"},
        {"=1", "'' is not a valid tenant id"},
        {"a b=1", "'a b' is not a valid tenant id"},
        {" a=1", "' a' is not a valid tenant id"},
        {"a=1,b=2,a=3", "tenant 'a' is listed twice"},
    };
    wrk_weight *w = NULL;
    size_t n = 7;
    char err[256];

    ck_assert_int_eq(wrk_weights_parse("acme=2,globex=1,x_y-z=1000", &w, &n, err, sizeof(err)),
                     SL_OK);
    ck_assert_uint_eq(n, 3);
    ck_assert_str_eq(w[0].tenant, "acme");
    ck_assert_int_eq(w[0].weight, 2);
    ck_assert_str_eq(w[1].tenant, "globex");
    ck_assert_int_eq(w[1].weight, 1);
    ck_assert_str_eq(w[2].tenant, "x_y-z");
    ck_assert_int_eq(w[2].weight, 1000);
    free(w);
    ck_assert_int_eq(wrk_weights_parse("", &w, &n, err, sizeof(err)), SL_OK);
    ck_assert_uint_eq(n, 0);
    ck_assert_ptr_null(w);
    ck_assert_int_eq(wrk_weights_parse(NULL, &w, &n, err, sizeof(err)), SL_OK);
    ck_assert_uint_eq(n, 0);
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        err[0] = '\0';
        w = (wrk_weight *)&n; /* must come back NULL */
        ck_assert_msg(wrk_weights_parse(bad[i].spec, &w, &n, err, sizeof(err)) == SL_ERR_INVAL,
                      "accepted %s", bad[i].spec);
        ck_assert_ptr_null(w);
        ck_assert_uint_eq(n, 0);
        ck_assert_str_eq(err, bad[i].err);
    }
}
END_TEST

/* A queue found empty waits until something rings it; a ring that came
 * while its request was open puts it back at once (the job may have been
 * stored after the server looked). */
START_TEST(test_empty_and_rung_meanwhile)
{
    wrk_sched *s = sched_new(4);
    wrk_queue *a = queue(s, "a");
    uint64_t tok = 0, old;
    int batch = 0;

    wrk_sched_ring(s, a, 0, 4);
    ck_assert_ptr_eq(turn(s, 4, 0, &batch, &tok), a);
    ck_assert_int_eq(batch, 4);
    ck_assert(!wrk_sched_delivered(s, a, tok, 0)); /* 1 of 4 */
    ck_assert(wrk_sched_ended(s, a, tok, 0));      /* 404: no more */
    ck_assert(!a->in_ring);
    ck_assert_int_eq(a->held, 1);
    ck_assert_ptr_null(wrk_sched_next(s, 4, 0, &batch, NULL));

    ck_assert_int_eq(a->hint, 0); /* the server found no more */
    wrk_sched_ring(s, a, 5, 1);
    ck_assert_ptr_eq(turn(s, 4, 5, &batch, &tok), a);
    ck_assert_int_eq(batch, 1); /* no more than the doorbell said */
    wrk_sched_ring(s, a, 6, 1); /* a doorbell while the request is open */
    ck_assert(!a->in_ring);
    ck_assert(wrk_sched_ended(s, a, tok, 7));
    ck_assert(a->in_ring);

    /* An end for a request that is not the open one changes nothing. */
    old = tok;
    ck_assert_ptr_eq(turn(s, 4, 8, &batch, &tok), a);
    ck_assert(!wrk_sched_ended(s, a, old, 8));
    ck_assert(a->req_token == tok);
    /* A late delivery (no open request) is held but fills nothing. */
    ck_assert(wrk_sched_ended(s, a, tok, 9));
    ck_assert(!wrk_sched_delivered(s, a, 0, 9));
    ck_assert_int_eq(a->held, 2);
    ck_assert_int_eq(wrk_sched_outstanding(s), 0);
    wrk_sched_release(s, a, 9);
    wrk_sched_release(s, a, 9);
    wrk_sched_release(s, a, 9); /* never below zero */
    ck_assert_int_eq(a->held, 0);
    wrk_sched_destroy(s);
}
END_TEST

/* An unanswered request (lost in a reconnect, or a consumer that does not
 * exist) is given up after the timeout and the queue's consumer is checked
 * again; meanwhile the queue keeps its place in line and other queues get
 * their turns. A queue kept waiting is not asked before its retry time. */
START_TEST(test_expire_setup_and_retry)
{
    wrk_sched *s = sched_new(4);
    wrk_queue *a = queue(s, "a"), *b = queue(s, "b");
    uint64_t tok = 0;
    int batch = 0;
    int64_t wake = 0;

    wrk_sched_ring(s, a, 0, 2);
    ck_assert_ptr_eq(turn(s, 2, 0, &batch, &tok), a);
    ck_assert_uint_eq(wrk_sched_expire(s, 1999, 2000), 0);
    ck_assert_uint_eq(wrk_sched_expire(s, 2000, 2000), 1);
    ck_assert(a->req_token == 0 && a->in_ring && !a->ready);
    ck_assert_int_eq(wrk_sched_outstanding(s), 0);

    /* Not ready: no turn, whatever the free capacity, until set up. */
    wrk_sched_ring(s, b, 2000, 1);
    ck_assert_ptr_eq(wrk_sched_next(s, 2, 2000, &batch, &wake), b);
    wrk_sched_unclaim(s, b); /* back at the tail: [a, b] */
    ck_assert(b->in_ring && !b->claimed);
    ck_assert_ptr_eq(wrk_sched_unready(s, 2000, &wake), a);
    ck_assert(a->setting_up && a->in_ring);
    ck_assert_ptr_null(wrk_sched_unready(s, 2000, &wake)); /* already handed out */
    wrk_sched_setup_done(s, a, false, 2500);               /* failed: retry later */
    ck_assert_ptr_null(wrk_sched_unready(s, 2100, &wake));
    ck_assert(wake == 2500);
    ck_assert_ptr_eq(turn(s, 2, 2100, &batch, &tok), b);
    ck_assert(wrk_sched_ended(s, b, tok, 2100));
    ck_assert_ptr_null(wrk_sched_next(s, 2, 2100, &batch, &wake));
    ck_assert_ptr_eq(wrk_sched_unready(s, 2500, &wake), a);
    wrk_sched_setup_done(s, a, true, 0);
    ck_assert(a->ready && !a->setting_up);
    ck_assert_ptr_eq(wrk_sched_next(s, 2, 2500, &batch, &wake), a);
    wrk_sched_destroy(s);
}
END_TEST

/* A new tenant's queue keeps its place in line while its consumer is set
 * up, and its share of the slots is kept for it: once ready it comes
 * before the tenant with a backlog. */
START_TEST(test_new_queue_keeps_its_place)
{
    wrk_sched *s = sched_new(4);
    wrk_queue *a = queue(s, "a"), *b = wrk_sched_queue(s, 0, "default", "b", true), *q;
    uint64_t tok = 0;
    int batch = 0;

    wrk_sched_ring(s, a, 0, 100);
    wrk_sched_ring(s, b, 0, 1); /* not ready yet */
    /* A takes its share of the 4 free slots while B is being set up... */
    ck_assert_ptr_eq(wrk_sched_unready(s, 0, NULL), b);
    ck_assert_ptr_eq(turn(s, 4, 0, &batch, &tok), a);
    ck_assert_int_eq(batch, 2);
    deliver(s, a, tok, 2, 0);
    ck_assert_ptr_null(wrk_sched_next(s, 2, 0, &batch, NULL));
    /* ...and B is first once it is ready. */
    wrk_sched_setup_done(s, b, true, 0);
    q = turn(s, 2, 0, &batch, &tok);
    ck_assert_ptr_eq(q, b);
    ck_assert_int_eq(batch, 1); /* what it is believed to hold */
    wrk_sched_destroy(s);
}
END_TEST

START_TEST(test_prune_and_remove)
{
    wrk_sched *s = sched_new(4);
    wrk_queue *a = queue(s, "a"), *b = queue(s, "b"), *c;
    uint64_t tok = 0;
    int batch = 0;

    wrk_sched_ring(s, a, 0, 5);
    wrk_sched_ring(s, b, 0, 1);
    ck_assert_ptr_eq(turn(s, 1, 0, &batch, &tok), a);
    ck_assert(wrk_sched_delivered(s, a, tok, 0)); /* a holds a job, and is in line */
    ck_assert(a->in_ring);
    ck_assert(!wrk_sched_remove(s, a));
    ck_assert_uint_eq(wrk_sched_prune(s, 100000, 1000), 0); /* both busy */
    ck_assert_ptr_eq(turn(s, 1, 0, &batch, &tok), b);
    ck_assert(wrk_sched_ended(s, b, tok, 0));
    ck_assert_uint_eq(wrk_sched_prune(s, 500, 1000), 0); /* b seen too recently */
    b->pinned = true;
    ck_assert_uint_eq(wrk_sched_prune(s, 100000, 1000), 0); /* pinned */
    b->pinned = false;
    ck_assert_uint_eq(wrk_sched_prune(s, 100000, 1000), 1); /* b is gone */
    ck_assert_ptr_null(wrk_sched_queue(s, 0, "default", "b", false));
    /* Its id is used again. */
    c = queue(s, "c");
    ck_assert_uint_eq(c->id, 1);
    ck_assert(wrk_sched_remove(s, c));
    ck_assert_ptr_null(wrk_sched_by_id(s, 1));
    wrk_sched_destroy(s);
}
END_TEST

/* A queue is asked for no more jobs than it is believed to hold (what its
 * doorbells said, or the stream's count), so a request is filled instead
 * of ended by a status message; when the belief runs out it waits for the
 * next doorbell. */
START_TEST(test_hints)
{
    wrk_sched *s = sched_new(4);
    wrk_queue *a = queue(s, "a");
    uint64_t tok = 0;
    int batch = 0;

    wrk_sched_ring(s, a, 0, 3);
    ck_assert_ptr_eq(turn(s, 8, 0, &batch, &tok), a);
    ck_assert_int_eq(batch, 3);
    ck_assert_int_eq(a->hint, 0);
    ck_assert(!wrk_sched_delivered(s, a, tok, 0));
    ck_assert(!wrk_sched_delivered(s, a, tok, 0));
    ck_assert(wrk_sched_delivered(s, a, tok, 0)); /* filled */
    ck_assert(!a->in_ring);                       /* and nothing more believed */
    /* A doorbell without a count: at least one. */
    wrk_sched_ring(s, a, 1, 0);
    ck_assert_ptr_eq(turn(s, 8, 1, &batch, &tok), a);
    ck_assert_int_eq(batch, 1);
    wrk_sched_ring(s, a, 2, 4); /* 4 more stored meanwhile */
    ck_assert(wrk_sched_delivered(s, a, tok, 2));
    ck_assert(a->in_ring);
    ck_assert_int_eq(a->hint, 4);
    /* The stream's count raises the belief, never lowers it. */
    wrk_sched_ring_count(s, a, 3, 2);
    ck_assert_int_eq(a->hint, 4);
    wrk_sched_ring_count(s, a, 3, 6);
    ck_assert_int_eq(a->hint, 6);
    ck_assert_ptr_eq(turn(s, 8, 3, &batch, &tok), a);
    ck_assert_int_eq(batch, 6);
    wrk_sched_destroy(s);
}
END_TEST

/* ---- Cancel markers ----------------------------------------------------- */

static void job_id_at(char *out, size_t n, int64_t ms)
{
    static const char b32[] = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    char id[SL_EVENT_ID_LEN + 1];

    sl_event_id_new(id);
    for (int i = 9; i >= 0; i--) {
        id[i] = b32[ms & 31];
        ms >>= 5;
    }
    snprintf(out, n, "%s-0", id);
}

/* Pulling ahead of the slots: a queue whose buffer holds more than the
 * refill mark is not asked (it keeps its place in line) until enough of
 * its jobs have started. */
START_TEST(test_refill_mark)
{
    wrk_sched *s = sched_new(16);
    wrk_queue *a = queue(s, "a");
    uint64_t tok = 0;
    int batch = 0;
    int64_t now = 1000, wake = 0;

    wrk_sched_set_refill(s, 2);
    wrk_sched_ring(s, a, now, 100);
    ck_assert_ptr_eq(turn(s, 10, now, &batch, &tok), a);
    ck_assert_int_eq(batch, 10);
    deliver(s, a, tok, 10, now);
    ck_assert_int_eq(a->waiting, 10);
    ck_assert(a->in_ring); /* more believed there... */
    /* ...but 10 wait here: not asked for one or two more. */
    ck_assert_ptr_null(wrk_sched_next(s, 3, now, &batch, &wake));
    ck_assert(a->in_ring);
    for (int i = 0; i < 7; i++)
        wrk_sched_started(s, a);
    ck_assert_ptr_null(wrk_sched_next(s, 3, now, &batch, &wake));
    wrk_sched_started(s, a); /* 2 left: asked again */
    ck_assert_int_eq(wrk_sched_tenant_running(a), 8);
    ck_assert_ptr_eq(turn(s, 6, now, &batch, &tok), a);
    ck_assert_int_eq(batch, 6);
    /* A job handed back unstarted and one that ran both leave the load. */
    ck_assert(wrk_sched_ended(s, a, tok, now));
    ck_assert_int_eq(wrk_sched_tenant_load(a), 10);
    wrk_sched_dropped(s, a, now);
    ck_assert_int_eq(a->waiting, 1);
    wrk_sched_release(s, a, now);
    ck_assert_int_eq(wrk_sched_tenant_running(a), 7);
    ck_assert_int_eq(wrk_sched_tenant_load(a), 8);
    wrk_sched_destroy(s);
}
END_TEST

/* Which delivered job a freed slot starts: 4 slots, shares of 2. A alone
 * runs every slot and holds more ahead; once B is active, A's jobs wait
 * while A runs its share or more and B runs less than its own, even when
 * B has nothing here yet (its request is on the way) or nothing at all
 * (until its linger ends). */
START_TEST(test_pick_keeps_share)
{
    wrk_sched *s = sched_new(16);
    wrk_queue *a = queue(s, "a"), *b = queue(s, "b");
    wrk_queue *qs[8];
    uint64_t tok = 0;
    int batch = 0;
    int64_t now = 1000, wake = 0;

    wrk_sched_ring(s, a, now, 100);
    ck_assert_ptr_eq(turn(s, 8, now, &batch, &tok), a); /* 4 slots + 4 ahead */
    ck_assert_int_eq(batch, 8);
    deliver(s, a, tok, 8, now);
    for (int i = 0; i < 8; i++)
        qs[i] = a;
    /* Alone: every slot. */
    for (int i = 0; i < 4; i++) {
        ck_assert_int_eq(wrk_sched_pick(s, qs, 8 - (size_t)i, 4, now, &wake), 0);
        wrk_sched_started(s, a);
    }
    /* B rings; A's job ends: the slot waits for B (A runs 3, its share
     * is 2, B runs none of its 2). */
    wrk_sched_ring(s, b, now, 1);
    wrk_sched_release(s, a, now);
    ck_assert_int_eq(wrk_sched_pick(s, qs, 4, 4, now, &wake), -1);
    ck_assert(wake == INT64_MAX); /* no time: B's job is on the way */
    ck_assert_ptr_eq(turn(s, 1, now, &batch, &tok), b);
    ck_assert_int_eq(wrk_sched_pick(s, qs, 4, 4, now, &wake), -1);
    deliver(s, b, tok, 1, now);
    qs[4] = b;
    ck_assert_int_eq(wrk_sched_pick(s, qs, 5, 4, now, &wake), 4); /* B's, behind A's */
    wrk_sched_started(s, b);
    /* A's next job ends: A runs 2 (its share), B 1: still kept for B. */
    wrk_sched_release(s, a, now);
    ck_assert_int_eq(wrk_sched_pick(s, qs, 4, 4, now, &wake), -1);
    /* B's job ends and B has nothing more: kept until B's linger ends. */
    now += 10;
    wrk_sched_release(s, b, now);
    ck_assert_int_eq(wrk_sched_pick(s, qs, 4, 4, now, &wake), -1);
    ck_assert(wake == now + WRK_FAIR_LINGER_MS);
    ck_assert_int_eq(wrk_sched_pick(s, qs, 4, 4, now + WRK_FAIR_LINGER_MS, &wake), 0);
    /* Both below their share: the tenant running fewer first, then the
     * oldest job. */
    wrk_sched_ring(s, b, now, 1);
    qs[0] = a;
    qs[1] = b;
    ck_assert_int_eq(wrk_sched_pick(s, qs, 2, 8, now, &wake), 1); /* B runs 0, A 2 */
    qs[1] = a;
    ck_assert_int_eq(wrk_sched_pick(s, qs, 2, 8, now, &wake), 0);
    ck_assert_int_eq(wrk_sched_pick(s, qs, 0, 8, now, &wake), -1);
    wrk_sched_destroy(s);
}
END_TEST

START_TEST(test_event_id_time)
{
    char id[SL_EVENT_ID_LEN + 1];
    int64_t now = sl_now_ns() / 1000000, ms = 0;

    sl_event_id_new(id);
    ck_assert(wrk_event_id_ms(id, &ms));
    ck_assert(ms >= now - 1000 && ms <= now + 1000);
    ck_assert(!wrk_event_id_ms("short", &ms));
    ck_assert(!wrk_event_id_ms("c-17-0000000000000000000000000", &ms));
    ck_assert(!wrk_event_id_ms(NULL, &ms));
}
END_TEST

START_TEST(test_marker_needed)
{
    char job[64];
    const int64_t now = 1800000000000LL, min = 60 * 1000;

    /* Heard every cancel for an hour, ring never full: a fresh message's
     * cancel would have been heard. */
    job_id_at(job, sizeof(job), now - 1000);
    ck_assert(!wrk_cancel_marker_needed(job, now, now - 60 * min, 0));
    /* Connected (or reconnected) after the message, or within the skew. */
    ck_assert(wrk_cancel_marker_needed(job, now, now - 2000, 0));
    ck_assert(wrk_cancel_marker_needed(job, now, now - 1000 - WRK_CANCEL_SKEW_MS, 0));
    ck_assert(!wrk_cancel_marker_needed(job, now, now - 1001 - WRK_CANCEL_SKEW_MS, 0));
    /* The ring forgot a cancel heard after the message could have been
     * cancelled. */
    ck_assert(wrk_cancel_marker_needed(job, now, now - 60 * min, now - 5000));
    ck_assert(!wrk_cancel_marker_needed(job, now, now - 60 * min, now - 30 * min));
    /* Too old for the ring's 10 minutes. */
    job_id_at(job, sizeof(job), now - 10 * min);
    ck_assert(wrk_cancel_marker_needed(job, now, now - 60 * min, 0));
    job_id_at(job, sizeof(job), now - 9 * min);
    ck_assert(!wrk_cancel_marker_needed(job, now, now - 60 * min, 0));
    /* A job id without an event id: always. */
    ck_assert(wrk_cancel_marker_needed("job-1", now, now - 60 * min, 0));
}
END_TEST

static Suite *sched_suite(void)
{
    Suite *s = suite_create("wrk_sched");
    TCase *tc = tcase_create("sched");

    tcase_add_test(tc, test_names);
    tcase_add_test(tc, test_table_bound);
    tcase_add_test(tc, test_backlog_does_not_starve_another_tenant);
    tcase_add_test(tc, test_shares);
    tcase_add_test(tc, test_weighted_shares);
    tcase_add_test(tc, test_fair_grant);
    tcase_add_test(tc, test_weights_parse);
    tcase_add_test(tc, test_empty_and_rung_meanwhile);
    tcase_add_test(tc, test_expire_setup_and_retry);
    tcase_add_test(tc, test_new_queue_keeps_its_place);
    tcase_add_test(tc, test_prune_and_remove);
    tcase_add_test(tc, test_hints);
    tcase_add_test(tc, test_refill_mark);
    tcase_add_test(tc, test_pick_keeps_share);
    suite_add_tcase(s, tc);
    return s;
}

static Suite *marker_suite(void)
{
    Suite *s = suite_create("wrk_cancel_marker");
    TCase *tc = tcase_create("marker");

    tcase_add_test(tc, test_event_id_time);
    tcase_add_test(tc, test_marker_needed);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(sched_suite());
    int failed;

    srunner_add_suite(sr, marker_suite());
    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
