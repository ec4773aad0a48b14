/* Unit tests of the worker's pure logic: token coalescing (wrk_coalesce:
 * given token arrivals and times, which chunks are emitted) and how a job
 * ends (wrk_job_decide). */
#include <check.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "wrk_loop.h"
#include "wrk_stream.h"

#define MAX_CHUNKS 256

/* Records emitted chunks with the time of the call that emitted them. */
typedef struct rec {
    char *chunks[MAX_CHUNKS];
    int64_t at[MAX_CHUNKS];
    int n;
    int64_t now;
} rec;

static void on_chunk(void *ud, const char *text, size_t len)
{
    rec *r = ud;

    ck_assert_int_gt((int)len, 0);
    ck_assert_int_lt(r->n, MAX_CHUNKS);
    r->chunks[r->n] = strndup(text, len);
    r->at[r->n] = r->now;
    r->n++;
}

static void rec_free(rec *r)
{
    for (int i = 0; i < r->n; i++)
        free(r->chunks[i]);
    r->n = 0;
}

static void add(wrk_coalesce *c, rec *r, int64_t t, const char *tok)
{
    r->now = t;
    ck_assert_int_eq(wrk_coalesce_add(c, tok, strlen(tok), t, on_chunk, r), SL_OK);
}

static void poll_at(wrk_coalesce *c, rec *r, int64_t t)
{
    r->now = t;
    wrk_coalesce_poll(c, t, on_chunk, r);
}

START_TEST(test_first_token_at_once_then_window)
{
    wrk_coalesce c;
    rec r = {0};

    ck_assert_int_eq(wrk_coalesce_init(&c, 30, 64, true), SL_OK);
    ck_assert(wrk_coalesce_due(&c) == INT64_MAX);
    add(&c, &r, 1000, "Hello ");
    ck_assert_int_eq(r.n, 1); /* the first token is not held back */
    ck_assert_str_eq(r.chunks[0], "Hello ");
    add(&c, &r, 1005, "big ");
    add(&c, &r, 1010, "wide ");
    ck_assert_int_eq(r.n, 1);
    ck_assert(wrk_coalesce_due(&c) == 1035);
    poll_at(&c, &r, 1034);
    ck_assert_int_eq(r.n, 1); /* window not over yet */
    poll_at(&c, &r, 1035);
    ck_assert_int_eq(r.n, 2);
    ck_assert_str_eq(r.chunks[1], "big wide ");
    ck_assert(wrk_coalesce_due(&c) == INT64_MAX);
    ck_assert_int_eq((int)wrk_coalesce_pending(&c), 0);
    rec_free(&r);
    wrk_coalesce_fini(&c);
}
END_TEST

START_TEST(test_without_first_at_once)
{
    wrk_coalesce c;
    rec r = {0};

    ck_assert_int_eq(wrk_coalesce_init(&c, 30, 64, false), SL_OK);
    add(&c, &r, 0, "a ");
    add(&c, &r, 29, "b ");
    ck_assert_int_eq(r.n, 0);
    poll_at(&c, &r, 30);
    ck_assert_int_eq(r.n, 1);
    ck_assert_str_eq(r.chunks[0], "a b ");
    rec_free(&r);
    wrk_coalesce_fini(&c);
}
END_TEST

/* With a first window, the first chunk waits for it whatever its size (an
 * answer given at once stays pending, for the final reply); later chunks
 * follow the window and the size bound as before. */
START_TEST(test_first_window_holds_first_chunk)
{
    wrk_coalesce c;
    rec r = {0};

    ck_assert_int_eq(wrk_coalesce_init(&c, 30, 10, true), SL_OK);
    wrk_coalesce_set_first_window(&c, 5);
    add(&c, &r, 1000, "Hello ");
    ck_assert_int_eq(r.n, 0); /* held for the first window */
    ck_assert(wrk_coalesce_due(&c) == 1005);
    add(&c, &r, 1001, "brave new ");
    add(&c, &r, 1002, "world ");
    ck_assert_int_eq(r.n, 0); /* 22 bytes, above the bound: still held */
    ck_assert(!wrk_coalesce_emitted(&c));
    poll_at(&c, &r, 1004);
    ck_assert_int_eq(r.n, 0);
    poll_at(&c, &r, 1005);
    ck_assert_int_eq(r.n, 1);
    ck_assert_str_eq(r.chunks[0], "Hello brave new world ");
    ck_assert(wrk_coalesce_emitted(&c));
    /* From now on: the 30 ms window and the 10-byte bound. */
    add(&c, &r, 1006, "a ");
    ck_assert(wrk_coalesce_due(&c) == 1036);
    add(&c, &r, 1007, "12345678");
    ck_assert_int_eq(r.n, 2);
    ck_assert_str_eq(r.chunks[1], "a 12345678");
    rec_free(&r);
    wrk_coalesce_fini(&c);

    /* A token after the first window is over emits the first chunk before
     * it (no poll in between). */
    ck_assert_int_eq(wrk_coalesce_init(&c, 30, 64, true), SL_OK);
    wrk_coalesce_set_first_window(&c, 5);
    add(&c, &r, 0, "one ");
    add(&c, &r, 7, "two ");
    ck_assert_int_eq(r.n, 1);
    ck_assert_str_eq(r.chunks[0], "one ");
    ck_assert(wrk_coalesce_due(&c) == 37);
    rec_free(&r);
    wrk_coalesce_fini(&c);

    /* Without first_at_once the first window does not apply. */
    ck_assert_int_eq(wrk_coalesce_init(&c, 30, 64, false), SL_OK);
    wrk_coalesce_set_first_window(&c, 5);
    add(&c, &r, 0, "x ");
    ck_assert(wrk_coalesce_due(&c) == 30);
    rec_free(&r);
    wrk_coalesce_fini(&c);
}
END_TEST

START_TEST(test_bytes_bound)
{
    wrk_coalesce c;
    rec r = {0};

    ck_assert_int_eq(wrk_coalesce_init(&c, 1000, 10, true), SL_OK);
    add(&c, &r, 0, "x");
    ck_assert_int_eq(r.n, 1);
    add(&c, &r, 1, "12345");
    add(&c, &r, 2, "6789");
    ck_assert_int_eq(r.n, 1); /* 9 bytes pending: below the bound */
    add(&c, &r, 3, "0");
    ck_assert_int_eq(r.n, 2); /* 10 bytes: emitted without waiting for the window */
    ck_assert_str_eq(r.chunks[1], "1234567890");
    ck_assert_int_eq((int)r.at[1], 3);
    /* A token longer than the bound goes out whole, never split. */
    add(&c, &r, 4, "abcdefghijklmnopqrstuvwxyz");
    ck_assert_int_eq(r.n, 3);
    ck_assert_str_eq(r.chunks[2], "abcdefghijklmnopqrstuvwxyz");
    rec_free(&r);
    wrk_coalesce_fini(&c);
}
END_TEST

START_TEST(test_late_arrival_starts_new_chunk)
{
    wrk_coalesce c;
    rec r = {0};

    ck_assert_int_eq(wrk_coalesce_init(&c, 30, 64, true), SL_OK);
    add(&c, &r, 0, "one ");
    add(&c, &r, 10, "two ");
    /* Nobody polled at 40: the next token finds the window over. The
     * pending text goes out alone, and the new token opens a new window. */
    add(&c, &r, 50, "three ");
    ck_assert_int_eq(r.n, 2);
    ck_assert_str_eq(r.chunks[1], "two ");
    ck_assert(wrk_coalesce_due(&c) == 80);
    add(&c, &r, 79, "four ");
    poll_at(&c, &r, 80);
    ck_assert_int_eq(r.n, 3);
    ck_assert_str_eq(r.chunks[2], "three four ");
    rec_free(&r);
    wrk_coalesce_fini(&c);
}
END_TEST

START_TEST(test_window_zero_and_flush)
{
    wrk_coalesce c;
    rec r = {0};

    ck_assert_int_eq(wrk_coalesce_init(&c, 0, 64, false), SL_OK);
    add(&c, &r, 0, "a");
    add(&c, &r, 0, "b");
    add(&c, &r, 0, "c");
    ck_assert_int_eq(r.n, 3);
    rec_free(&r);
    wrk_coalesce_fini(&c);

    ck_assert_int_eq(wrk_coalesce_init(&c, 30, 64, true), SL_OK);
    add(&c, &r, 0, "a");
    add(&c, &r, 1, "b");
    add(&c, &r, 2, "");
    ck_assert_int_eq((int)wrk_coalesce_pending(&c), 1);
    r.now = 3;
    wrk_coalesce_flush(&c, on_chunk, &r);
    ck_assert_int_eq(r.n, 2);
    ck_assert_str_eq(r.chunks[1], "b");
    wrk_coalesce_flush(&c, on_chunk, &r); /* nothing pending: no empty chunk */
    ck_assert_int_eq(r.n, 2);
    rec_free(&r);
    wrk_coalesce_fini(&c);
}
END_TEST

START_TEST(test_bad_init)
{
    wrk_coalesce c;

    ck_assert_int_eq(wrk_coalesce_init(&c, -1, 64, true), SL_ERR_INVAL);
    ck_assert_int_eq(wrk_coalesce_init(&c, 30, 0, true), SL_ERR_INVAL);
    ck_assert_int_eq(wrk_coalesce_init(NULL, 30, 64, true), SL_ERR_INVAL);
}
END_TEST

/* Random arrivals and polls: the chunks always add up to the tokens, no
 * chunk is empty, every chunk holds whole tokens, and none is emitted later
 * than its window when polled once per ms. */
START_TEST(test_random_properties)
{
    unsigned seed = 12345;

    for (int round = 0; round < 200; round++) {
        wrk_coalesce c;
        rec r = {0};
        char all[4096] = "";
        size_t all_len = 0;
        int64_t window = (int64_t)(rand_r(&seed) % 50);
        size_t bound = 1 + (size_t)(rand_r(&seed) % 40);
        int64_t t = 0;
        int ntok = 1 + (int)(rand_r(&seed) % 60);
        int64_t first_pending = -1;
        bool is_boundary[4096] = {false};

        ck_assert_int_eq(wrk_coalesce_init(&c, window, bound, round % 2 == 0), SL_OK);
        for (int i = 0; i < ntok; i++) {
            char tok[16];
            int len = 1 + (int)(rand_r(&seed) % 8);
            int64_t gap = (int64_t)(rand_r(&seed) % 20);
            for (int k = 0; k < len; k++)
                tok[k] = (char)('a' + (i % 26));
            tok[len] = '\0';
            /* Poll every ms up to the arrival, as the timer thread would. */
            for (int64_t s = t + 1; s <= t + gap; s++) {
                int before = r.n;
                poll_at(&c, &r, s);
                if (r.n > before)
                    ck_assert_int_le((int)(s - first_pending), (int)window);
                if (wrk_coalesce_pending(&c) == 0)
                    first_pending = -1;
            }
            t += gap;
            add(&c, &r, t, tok);
            if (wrk_coalesce_pending(&c) > 0 && first_pending < 0)
                first_pending = t;
            else if (wrk_coalesce_pending(&c) == 0)
                first_pending = -1;
            memcpy(all + all_len, tok, (size_t)len);
            all_len += (size_t)len;
            all[all_len] = '\0';
            is_boundary[all_len] = true;
        }
        r.now = t;
        wrk_coalesce_flush(&c, on_chunk, &r);
        {
            char joined[4096] = "";
            size_t jl = 0;
            for (int i = 0; i < r.n; i++) {
                size_t l = strlen(r.chunks[i]);
                ck_assert_int_gt((int)l, 0);
                memcpy(joined + jl, r.chunks[i], l);
                jl += l;
            }
            joined[jl] = '\0';
            ck_assert_str_eq(joined, all);
            /* Every chunk ends on a token boundary (tokens are never
             * split), and only its last token may take it past the bound. */
            size_t off = 0;
            for (int i = 0; i < r.n; i++) {
                size_t l = strlen(r.chunks[i]);
                off += l;
                ck_assert_msg(is_boundary[off], "round %d: chunk %d splits a token", round, i);
            }
        }
        rec_free(&r);
        wrk_coalesce_fini(&c);
    }
}
END_TEST

/* ---- wrk_job_decide ---------------------------------------------------- */

START_TEST(test_decide_done_and_deadline)
{
    wrk_decision d = wrk_job_decide(WRK_DONE, WRK_CANCEL_NONE, false, 10, 1, 3, -1);
    ck_assert_int_eq(d.end, WRK_END_OK);
    ck_assert(!d.term);
    ck_assert_str_eq(d.kv_state, "done");
    ck_assert_str_eq(d.metric, "ok");

    d = wrk_job_decide(WRK_DEADLINE, WRK_CANCEL_NONE, false, 10, 1, 3, -1);
    ck_assert_int_eq(d.end, WRK_END_PARTIAL);
    ck_assert_str_eq(d.metric, "partial");
    d = wrk_job_decide(WRK_DEADLINE, WRK_CANCEL_NONE, false, 0, 1, 3, -1);
    ck_assert_int_eq(d.end, WRK_END_DEGRADED);
    ck_assert(!d.term);
    ck_assert_str_eq(d.metric, "degraded");
}
END_TEST

START_TEST(test_decide_cancel)
{
    wrk_decision d = wrk_job_decide(WRK_CANCELLED, WRK_CANCEL_USER, false, 5, 1, 3, -1);
    ck_assert_int_eq(d.end, WRK_END_CANCELLED);
    ck_assert_str_eq(d.kv_state, "cancelled");

    d = wrk_job_decide(WRK_CANCELLED, WRK_CANCEL_NONE, true, 5, 1, 3, -1);
    ck_assert_int_eq(d.end, WRK_END_PARTIAL); /* cut because the reply grew too long */

    d = wrk_job_decide(WRK_CANCELLED, WRK_CANCEL_SHUTDOWN, false, 5, 1, 3, -1);
    ck_assert_int_eq(d.end, WRK_END_REQUEUE);
    ck_assert_str_eq(d.kv_state, "queued");
    ck_assert(d.metric == NULL);
    d = wrk_job_decide(WRK_CANCELLED, WRK_CANCEL_SHUTDOWN, false, 5, 3, 3, -1);
    ck_assert_int_eq(d.end, WRK_END_PARTIAL); /* last delivery: end it here */
    d = wrk_job_decide(WRK_CANCELLED, WRK_CANCEL_SHUTDOWN, false, 0, 3, 3, -1);
    ck_assert_int_eq(d.end, WRK_END_DEGRADED);
}
END_TEST

START_TEST(test_decide_transient_and_fatal)
{
    wrk_decision d = wrk_job_decide(WRK_TRANSIENT, WRK_CANCEL_NONE, false, 0, 1, 3, -1);
    ck_assert_int_eq(d.end, WRK_END_RETRY);
    ck_assert_int_eq((int)d.delay_ms, WRK_RETRY_BASE_MS);
    d = wrk_job_decide(WRK_TRANSIENT, WRK_CANCEL_NONE, false, 0, 2, 3, -1);
    ck_assert_int_eq((int)d.delay_ms, 2 * WRK_RETRY_BASE_MS);
    d = wrk_job_decide(WRK_TRANSIENT, WRK_CANCEL_NONE, false, 0, 2, 3, 1000);
    ck_assert_int_eq((int)d.delay_ms, 1000); /* Retry-After wins */
    d = wrk_job_decide(WRK_TRANSIENT, WRK_CANCEL_NONE, false, 0, 2, 3, 0);
    ck_assert_int_eq((int)d.delay_ms, 0);
    d = wrk_job_decide(WRK_TRANSIENT, WRK_CANCEL_NONE, false, 0, 2, 3, 999999999);
    ck_assert_int_eq((int)d.delay_ms, WRK_RETRY_MAX_MS);
    d = wrk_job_decide(WRK_TRANSIENT, WRK_CANCEL_NONE, false, 0, 60, -1, -1);
    ck_assert_int_eq(d.end, WRK_END_RETRY); /* unlimited deliveries */
    ck_assert_int_eq((int)d.delay_ms, WRK_RETRY_MAX_MS);

    d = wrk_job_decide(WRK_TRANSIENT, WRK_CANCEL_NONE, false, 7, 3, 3, 1000);
    ck_assert_int_eq(d.end, WRK_END_DEGRADED); /* last delivery: fallback, slot freed */
    ck_assert(d.term);
    ck_assert_str_eq(d.kv_state, "failed");

    d = wrk_job_decide(WRK_FATAL, WRK_CANCEL_NONE, false, 7, 1, 3, -1);
    ck_assert_int_eq(d.end, WRK_END_DEGRADED);
    ck_assert(d.term);
}
END_TEST

static Suite *stream_suite(void)
{
    Suite *s = suite_create("wrk_stream");
    TCase *tc = tcase_create("coalesce");

    tcase_add_test(tc, test_first_token_at_once_then_window);
    tcase_add_test(tc, test_without_first_at_once);
    tcase_add_test(tc, test_first_window_holds_first_chunk);
    tcase_add_test(tc, test_bytes_bound);
    tcase_add_test(tc, test_late_arrival_starts_new_chunk);
    tcase_add_test(tc, test_window_zero_and_flush);
    tcase_add_test(tc, test_bad_init);
    tcase_add_test(tc, test_random_properties);
    suite_add_tcase(s, tc);
    return s;
}

/* The agent message goes out unless the work request says only mention
 * agents could route it and the answer names none of them. */
START_TEST(test_agent_message_routable)
{
    char *names[] = {"summarizer", "critic"};

    ck_assert(wrk_agent_message_routable(false, NULL, 0, "anything"));
    ck_assert(wrk_agent_message_routable(false, NULL, 0, NULL));
    ck_assert(!wrk_agent_message_routable(true, NULL, 0, "hi @summarizer"));
    ck_assert(!wrk_agent_message_routable(true, names, 2, "hello there"));
    ck_assert(!wrk_agent_message_routable(true, names, 2, NULL));
    ck_assert(!wrk_agent_message_routable(true, names, 2, "mail x@critic"));
    ck_assert(wrk_agent_message_routable(true, names, 2, "ask @Critic."));
    ck_assert(wrk_agent_message_routable(true, names, 2, "@summarizer: sum up"));
}
END_TEST

static Suite *decide_suite(void)
{
    Suite *s = suite_create("wrk_job_decide");
    TCase *tc = tcase_create("decide");

    tcase_add_test(tc, test_decide_done_and_deadline);
    tcase_add_test(tc, test_decide_cancel);
    tcase_add_test(tc, test_decide_transient_and_fatal);
    tcase_add_test(tc, test_agent_message_routable);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(stream_suite());
    int failed;

    srunner_add_suite(sr, decide_suite());
    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
