/* Unit tests for orch_dispatch (job ids, reply channels, the envelopes the
 * orchestrator writes), orch_inflight (concurrency counts and retry hints)
 * and the max-deliveries advisory parser of orch_ctl. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "orch_agents.h"
#include "orch_ctl.h"
#include "orch_dispatch.h"
#include "orch_inflight.h"
#include "sl_codec.h"

static Sluice__Envelope *user_msg(const char *room)
{
    static Sluice__Envelope e;
    static Sluice__ClientMessage m;

    sluice__envelope__init(&e);
    sluice__client_message__init(&m);
    e.event_id = "01HXABCDEFGHJKMNPQRSTVWXYZ";
    e.tenant = "t1";
    e.session = "sessA";
    e.client_id = "c-17";
    e.message_id = "c-17";
    e.prev_event_id = "c-16";
    e.trace_id = "tr";
    e.hops = 0;
    m.room = (char *)room;
    m.text = "hi @summarizer";
    m.user = "u1";
    e.body_case = SLUICE__ENVELOPE__BODY_MESSAGE;
    e.message = &m;
    return &e;
}

START_TEST(test_job_ids_and_subjects)
{
    Sluice__Envelope *e = user_msg("lobby");
    char buf[128];

    ck_assert_int_eq(orch_job_id(buf, sizeof(buf), e, 1), SL_OK);
    ck_assert_str_eq(buf, "01HXABCDEFGHJKMNPQRSTVWXYZ-1");
    ck_assert_int_eq(orch_job_id(buf, 10, e, 1), SL_ERR_INVAL);
    e->event_id = "";
    e->message_id = "01HXABCDEFGHJKMNPQRSTVWXYZ-0";
    ck_assert_int_eq(orch_job_id(buf, sizeof(buf), e, 2), SL_OK);
    ck_assert_str_eq(buf, "01HXABCDEFGHJKMNPQRSTVWXYZ-0-2");
    e->message_id = "c.17"; /* a client id is not a valid job id */
    ck_assert_int_eq(orch_job_id(buf, sizeof(buf), e, 2), SL_ERR_INVAL);
    e->message_id = "";
    ck_assert_ptr_null(orch_msg_event_id(e));
    ck_assert_int_eq(orch_job_id(buf, sizeof(buf), e, 2), SL_ERR_INVAL);

    ck_assert_int_eq(orch_reply_subject(buf, sizeof(buf), "t1", "lobby", "sessA"), SL_OK);
    ck_assert_str_eq(buf, "sluice.out.t1.r.lobby");
    ck_assert_int_eq(orch_reply_subject(buf, sizeof(buf), "t1", "", "sessA"), SL_OK);
    ck_assert_str_eq(buf, "sluice.out.t1.s.sessA");
    ck_assert_int_eq(orch_reply_subject(buf, sizeof(buf), "t1", NULL, "se.ss"), SL_ERR_INVAL);
}
END_TEST

START_TEST(test_work_and_fallback)
{
    orch_agents *ag = NULL;
    char err[256], subj[128];
    uint8_t *buf = NULL, *buf2 = NULL;
    size_t len = 0, len2 = 0;
    Sluice__Envelope *w = NULL, *r = NULL;

    ck_assert_int_eq(orch_agents_parse(&ag,
                                       "[{\"name\":\"summarizer\",\"model\":\"m1\","
                                       "\"backend_model\":\"llama3\",\"system_prompt\":\"sum\","
                                       "\"match\":\"mention\",\"fallback\":\"later\"}]",
                                       err, sizeof(err)),
                     SL_OK);
    ck_assert_int_eq(
        orch_work_encode(user_msg("lobby"), "t1", &ag->v[0], "J-0", 7000, NULL, &buf, &len), SL_OK);
    ck_assert_int_eq(sl_envelope_decode(buf, len, &w), SL_OK);
    ck_assert_int_eq(w->body_case, SLUICE__ENVELOPE__BODY_WORK);
    ck_assert_str_eq(w->tenant, "t1");
    ck_assert_str_eq(w->session, "sessA");
    ck_assert_str_eq(w->message_id, "c-17");
    ck_assert_str_eq(w->work->job_id, "J-0");
    ck_assert_str_eq(w->work->reply_id, "J-0");
    ck_assert_str_eq(w->work->agent, "summarizer");
    ck_assert_str_eq(w->work->model, "llama3");
    ck_assert_str_eq(w->work->system_prompt, "sum");
    ck_assert_str_eq(w->work->fallback, "later");
    ck_assert_str_eq(w->work->text, "hi @summarizer");
    ck_assert_str_eq(w->work->user, "u1");
    ck_assert_str_eq(w->work->room, "lobby");
    ck_assert_str_eq(w->work->to, "c-17");
    ck_assert_int_eq(w->work->deadline_ms, 7000);

    ck_assert_int_eq(orch_fallback_encode(w, 3, &buf2, &len2, subj, sizeof(subj)), SL_OK);
    ck_assert_str_eq(subj, "sluice.out.t1.r.lobby");
    ck_assert_int_eq(sl_envelope_decode(buf2, len2, &r), SL_OK);
    ck_assert_int_eq(r->body_case, SLUICE__ENVELOPE__BODY_REPLY);
    ck_assert_str_eq(r->reply->reply_id, "J-0");
    ck_assert_str_eq(r->reply->to, "c-17");
    ck_assert_str_eq(r->reply->agent, "summarizer");
    ck_assert_str_eq(r->reply->text, "later");
    ck_assert(r->reply->degraded);
    ck_assert_uint_eq(r->reply->attempt, 3);
    ck_assert_ptr_nonnull(r->reply->usage);
    ck_assert_uint_eq(r->reply->usage->input_tokens, 0);
    ck_assert_uint_eq(r->reply->usage->output_tokens, 0);
    ck_assert(r->reply->usage->estimated);
    ck_assert_str_eq(r->message_id, "c-17");
    sl_envelope_free(r);
    free(buf2);

    /* A private message's fallback goes to the session channel. */
    w->work->room[0] = '\0';
    ck_assert_int_eq(orch_fallback_encode(w, 1, &buf2, &len2, subj, sizeof(subj)), SL_OK);
    ck_assert_str_eq(subj, "sluice.out.t1.s.sessA");
    free(buf2);
    sl_envelope_free(w);
    free(buf);
    orch_agents_destroy(ag);
}
END_TEST

/* Who could answer an agent's answer: nobody past the hop limit, never
 * the author nor an "all" agent, "mention" agents by name, and any text
 * once a "regex" agent could answer; the work request carries it. */
START_TEST(test_followers_in_work)
{
    orch_agents *ag = NULL;
    orch_followers fw;
    char err[256];
    uint8_t *buf = NULL;
    size_t len = 0;
    Sluice__Envelope *w = NULL;

    ck_assert_int_eq(
        orch_agents_parse(&ag,
                          "[{\"name\":\"assistant\",\"model\":\"m\",\"match\":\"all\"},"
                          "{\"name\":\"summarizer\",\"model\":\"m\","
                          "\"match\":\"mention\"}]",
                          err, sizeof(err)),
        SL_OK);
    orch_followers_of(ag, "assistant", 1, 4, &fw);
    ck_assert(fw.mentions_only);
    ck_assert_uint_eq(fw.n, 1);
    ck_assert_str_eq(fw.names[0], "summarizer");
    orch_followers_of(ag, "summarizer", 1, 4, &fw);
    ck_assert(fw.mentions_only);
    ck_assert_uint_eq(fw.n, 0);
    orch_followers_of(ag, "assistant", 4, 4, &fw);
    ck_assert(fw.mentions_only);
    ck_assert_uint_eq(fw.n, 0);

    orch_followers_of(ag, "assistant", 1, 4, &fw);
    ck_assert_int_eq(orch_work_encode(user_msg(""), "t1", &ag->v[0], "J-0", 0, &fw, &buf, &len),
                     SL_OK);
    ck_assert_int_eq(sl_envelope_decode(buf, len, &w), SL_OK);
    ck_assert(w->work->agent_mentions_only);
    ck_assert_uint_eq(w->work->n_agent_mentions, 1);
    ck_assert_str_eq(w->work->agent_mentions[0], "summarizer");
    sl_envelope_free(w);
    free(buf);
    /* Unknown (NULL): the field stays unset, the worker posts as always. */
    ck_assert_int_eq(orch_work_encode(user_msg(""), "t1", &ag->v[0], "J-0", 0, NULL, &buf, &len),
                     SL_OK);
    ck_assert_int_eq(sl_envelope_decode(buf, len, &w), SL_OK);
    ck_assert(!w->work->agent_mentions_only);
    ck_assert_uint_eq(w->work->n_agent_mentions, 0);
    sl_envelope_free(w);
    free(buf);
    orch_agents_destroy(ag);

    ck_assert_int_eq(orch_agents_parse(&ag,
                                       "[{\"name\":\"a\",\"model\":\"m\",\"match\":\"all\"},"
                                       "{\"name\":\"b\",\"model\":\"m\",\"match\":\"mention\"},"
                                       "{\"name\":\"c\",\"model\":\"m\","
                                       "\"match\":{\"regex\":\"x\"}}]",
                                       err, sizeof(err)),
                     SL_OK);
    orch_followers_of(ag, "a", 1, 4, &fw);
    ck_assert(!fw.mentions_only);
    orch_followers_of(ag, "c", 1, 4, &fw);
    ck_assert(fw.mentions_only);
    ck_assert_uint_eq(fw.n, 1);
    ck_assert_str_eq(fw.names[0], "b");
    orch_followers_of(ag, "a", 9, 4, &fw);
    ck_assert(fw.mentions_only);
    ck_assert_uint_eq(fw.n, 0);
    orch_agents_destroy(ag);
}
END_TEST

START_TEST(test_busy_and_job_json)
{
    uint8_t *buf = NULL;
    size_t len = 0;
    Sluice__Envelope *b = NULL;
    char *json = NULL;

    ck_assert_int_eq(
        orch_busy_encode(user_msg(""), "t1", "assistant", "tenant_queue_full", 800, &buf, &len),
        SL_OK);
    ck_assert_int_eq(sl_envelope_decode(buf, len, &b), SL_OK);
    ck_assert_int_eq(b->body_case, SLUICE__ENVELOPE__BODY_BUSY);
    ck_assert_str_eq(b->busy->to, "c-17");
    ck_assert_str_eq(b->busy->agent, "assistant");
    ck_assert_str_eq(b->busy->reason, "tenant_queue_full");
    ck_assert_uint_eq(b->busy->retry_after_ms, 800);
    ck_assert_uint_eq(strlen(b->event_id), 26);
    sl_envelope_free(b);
    free(buf);

    ck_assert_int_eq(orch_job_json(&json, "queued", "sessA", "c-17", "assistant", NULL), SL_OK);
    ck_assert_str_eq(
        json,
        "{\"state\":\"queued\",\"session\":\"sessA\",\"to\":\"c-17\",\"agent\":\"assistant\"}");
    free(json);
    ck_assert_int_eq(orch_job_json(&json, "failed", NULL, NULL, "a", "busy"), SL_OK);
    ck_assert_str_eq(json, "{\"state\":\"failed\",\"session\":\"\",\"to\":\"\",\"agent\":\"a\","
                           "\"reason\":\"busy\"}");
    free(json);
}
END_TEST

START_TEST(test_inflight_counts_and_retry)
{
    orch_agents *ag = NULL;
    orch_inflight *f = NULL;
    char err[256], val[128];
    const char *q = "{\"state\":\"queued\",\"agent\":\"a\"}";
    const char *run = "{\"state\":\"running\",\"agent\":\"a\"}";
    const char *done = "{\"state\":\"done\",\"agent\":\"a\"}";

    ck_assert_int_eq(orch_agents_parse(&ag,
                                       "[{\"name\":\"a\",\"model\":\"m\",\"match\":\"all\"},"
                                       "{\"name\":\"b\",\"model\":\"m\",\"match\":\"all\"}]",
                                       err, sizeof(err)),
                     SL_OK);
    ck_assert_int_eq(orch_inflight_create(&f, ag), SL_OK);
    orch_inflight_note(f, "t1", "J-0", 0, 1000);
    orch_inflight_apply(f, "t1.J-0", q, strlen(q), 1001); /* known: not counted twice */
    orch_inflight_apply(f, "t1.J-0", run, strlen(run), 1002);
    orch_inflight_apply(f, "t1.J-1", q, strlen(q), 1003);
    orch_inflight_apply(f, "t2.J-2", q, strlen(q), 1003);
    ck_assert_int_eq(orch_inflight_active(f, "t1", 0), 2);
    ck_assert_int_eq(orch_inflight_active(f, "t1", 1), 0);
    ck_assert_int_eq(orch_inflight_active(f, "t2", 0), 1);
    /* Unknown agents, cancel markers and junk are ignored. */
    snprintf(val, sizeof(val), "{\"state\":\"queued\",\"agent\":\"zz\"}");
    orch_inflight_apply(f, "t1.J-9", val, strlen(val), 1004);
    orch_inflight_apply(f, "t1.x-abc", q, strlen(q), 1004);
    orch_inflight_apply(f, "t1.J-8", "nope", 4, 1004);
    orch_inflight_apply(f, "nodot", q, strlen(q), 1004);
    ck_assert_int_eq(orch_inflight_active(f, "t1", 0), 2);
    /* No rate known yet: the default hint. */
    ck_assert_int_eq(orch_inflight_retry_after_ms(f, "t1", "m", 100, 2000), 1000);
    /* Jobs end 100 ms apart: 10/s; a tenth of a 100-job queue is 10 jobs,
     * so about 1 s. */
    orch_inflight_apply(f, "t1.J-0", done, strlen(done), 2000);
    orch_inflight_apply(f, "t1.J-1", done, strlen(done), 2100);
    ck_assert_int_eq(orch_inflight_active(f, "t1", 0), 0);
    for (int i = 0; i < 8; i++) {
        char key[32];
        snprintf(key, sizeof(key), "t1.K-%d", i);
        orch_inflight_apply(f, key, done, strlen(done), 2200 + 100 * i);
    }
    int64_t r = orch_inflight_retry_after_ms(f, "t1", "m", 100, 3000);
    ck_assert_int_ge(r, 900);
    ck_assert_int_le(r, 1100);
    /* A small queue: one job's worth, clamped to at least 100 ms. */
    ck_assert_int_eq(orch_inflight_retry_after_ms(f, "t1", "m", 2, 3000), 100);
    /* A stale rate says nothing. */
    ck_assert_int_eq(orch_inflight_retry_after_ms(f, "t1", "m", 100, 60000), 1000);
    /* Another tenant's rate is its own. */
    ck_assert_int_eq(orch_inflight_retry_after_ms(f, "t2", "m", 100, 3000), 1000);
    /* A delete frees the slot too. */
    orch_inflight_apply(f, "t2.J-2", NULL, 0, 3000);
    ck_assert_int_eq(orch_inflight_active(f, "t2", 0), 0);
    orch_inflight_destroy(f);
    orch_inflight_destroy(NULL);
    orch_agents_destroy(ag);
}
END_TEST

/* The stub kept for a queued job ends it with the same fallback as its
 * work message would; the tracker hands kept jobs out in check-time order,
 * forgets a job whose end it sees, and keeps at most
 * ORCH_INFLIGHT_TRACK_MAX. */
START_TEST(test_lost_stub_and_tracking)
{
    orch_agents *ag = NULL;
    orch_inflight *f = NULL;
    orch_inflight_lost due[4];
    char err[256], subj[128], subj2[128];
    uint8_t *stub = NULL, *work = NULL, *fb = NULL, *fb2 = NULL;
    size_t slen = 0, wlen = 0, flen = 0, flen2 = 0;
    Sluice__Envelope *st = NULL, *w = NULL, *r = NULL, *r2 = NULL;
    const char *done = "{\"state\":\"done\",\"agent\":\"a\"}";

    ck_assert_int_eq(orch_agents_parse(&ag,
                                       "[{\"name\":\"a\",\"model\":\"m\",\"match\":\"all\","
                                       "\"system_prompt\":\"long prompt\",\"fallback\":\"later\"}]",
                                       err, sizeof(err)),
                     SL_OK);
    ck_assert_int_eq(orch_work_stub_encode(user_msg("lobby"), "t1", &ag->v[0], "J-0", &stub, &slen),
                     SL_OK);
    ck_assert_int_eq(
        orch_work_encode(user_msg("lobby"), "t1", &ag->v[0], "J-0", 7000, NULL, &work, &wlen),
        SL_OK);
    ck_assert_uint_lt(slen, wlen);
    ck_assert_int_eq(sl_envelope_decode(stub, slen, &st), SL_OK);
    ck_assert_int_eq(sl_envelope_decode(work, wlen, &w), SL_OK);
    ck_assert_str_eq(st->work->text, ""); /* no text or prompt kept */
    ck_assert_str_eq(st->work->system_prompt, "");
    ck_assert_int_eq(orch_fallback_encode(st, 1, &fb, &flen, subj, sizeof(subj)), SL_OK);
    ck_assert_int_eq(orch_fallback_encode(w, 1, &fb2, &flen2, subj2, sizeof(subj2)), SL_OK);
    ck_assert_str_eq(subj, subj2);
    ck_assert_int_eq(sl_envelope_decode(fb, flen, &r), SL_OK);
    ck_assert_int_eq(sl_envelope_decode(fb2, flen2, &r2), SL_OK);
    ck_assert_str_eq(r->tenant, r2->tenant);
    ck_assert_str_eq(r->session, r2->session);
    ck_assert_str_eq(r->client_id, r2->client_id);
    ck_assert_str_eq(r->trace_id, r2->trace_id);
    ck_assert_str_eq(r->message_id, r2->message_id);
    ck_assert_str_eq(r->reply->reply_id, r2->reply->reply_id);
    ck_assert_str_eq(r->reply->to, r2->reply->to);
    ck_assert_str_eq(r->reply->agent, r2->reply->agent);
    ck_assert_str_eq(r->reply->text, "later");
    ck_assert(r->reply->degraded);

    ck_assert_int_eq(orch_inflight_create(&f, ag), SL_OK);
    /* Only a job counted as active is kept. */
    ck_assert_int_eq(orch_inflight_track(f, "t1", "J-0", 5, stub, slen, 100), SL_ERR_NOTFOUND);
    orch_inflight_note(f, "t1", "J-0", 0, 1000);
    orch_inflight_note(f, "t1", "J-1", 0, 1000);
    orch_inflight_note(f, "t1", "J-2", 0, 1000);
    ck_assert_int_eq(orch_inflight_track(f, "t1", "J-0", 5, stub, slen, 100), SL_OK);
    ck_assert_int_eq(orch_inflight_track(f, "t1", "J-1", 6, stub, slen, 200), SL_OK);
    ck_assert_int_eq(orch_inflight_track(f, "t1", "J-2", 7, stub, slen, 300), SL_OK);
    ck_assert_uint_eq(orch_inflight_tracked(f), 3);
    /* Not due yet. */
    ck_assert_uint_eq(orch_inflight_due(f, 99, 1099, due, 4), 0);
    /* J-1 ends: forgotten. */
    orch_inflight_apply(f, "t1.J-1", done, strlen(done), 1100);
    ck_assert_uint_eq(orch_inflight_tracked(f), 2);
    ck_assert_uint_eq(orch_inflight_due(f, 300, 1300, due, 4), 2);
    ck_assert_str_eq(due[0].key, "t1.J-0");
    ck_assert_uint_eq(due[0].seq, 5);
    ck_assert_str_eq(due[1].key, "t1.J-2");
    ck_assert_uint_eq(due[1].seq, 7);
    ck_assert_uint_eq(due[0].len, slen);
    ck_assert_mem_eq(due[0].stub, stub, slen);
    free(due[0].stub);
    free(due[1].stub);
    /* Checked: not due again until next_ms. */
    ck_assert_uint_eq(orch_inflight_due(f, 1299, 2300, due, 4), 0);
    orch_inflight_forget(f, "t1.J-0");
    ck_assert_int_eq(orch_inflight_active(f, "t1", 0), 1);
    ck_assert_uint_eq(orch_inflight_due(f, 1300, 2300, due, 4), 1);
    ck_assert_str_eq(due[0].key, "t1.J-2");
    free(due[0].stub);
    /* The bound. */
    for (int i = 0; i < ORCH_INFLIGHT_TRACK_MAX; i++) {
        char job[32];
        snprintf(job, sizeof(job), "B-%d", i);
        orch_inflight_note(f, "t2", job, 0, 1000);
        ck_assert_int_eq(orch_inflight_track(f, "t2", job, 10 + (uint64_t)i, stub, slen, 5000),
                         i < ORCH_INFLIGHT_TRACK_MAX - 1 ? SL_OK : SL_ERR_FULL);
    }
    ck_assert_uint_eq(orch_inflight_tracked(f), ORCH_INFLIGHT_TRACK_MAX);
    orch_inflight_destroy(f); /* frees what it keeps */
    sl_envelope_free(st);
    sl_envelope_free(w);
    sl_envelope_free(r);
    sl_envelope_free(r2);
    free(stub);
    free(work);
    free(fb);
    free(fb2);
    orch_agents_destroy(ag);
}
END_TEST

START_TEST(test_advisory_parse)
{
    const char *adv = "{\"type\":\"io.nats.jetstream.advisory.v1.max_deliver\",\"id\":\"x\","
                      "\"timestamp\":\"2024-01-01T00:00:00Z\",\"stream\":\"SLUICE_WORK\","
                      "\"consumer\":\"wrk_default\",\"stream_seq\":42,\"deliveries\":3}";
    const char *other = "{\"stream\":\"SLUICE_IN\",\"stream_seq\":42,\"deliveries\":3}";
    uint64_t seq = 0;
    uint32_t dc = 0;

    ck_assert_int_eq(orch_ctl_parse_advisory(adv, strlen(adv), &seq, &dc), SL_OK);
    ck_assert_uint_eq(seq, 42);
    ck_assert_uint_eq(dc, 3);
    ck_assert_int_eq(orch_ctl_parse_advisory(other, strlen(other), &seq, &dc), SL_ERR_INVAL);
    ck_assert_int_eq(orch_ctl_parse_advisory("{", 1, &seq, &dc), SL_ERR_INVAL);
    ck_assert_int_eq(orch_ctl_parse_advisory("{\"stream\":\"SLUICE_WORK\"}", 24, &seq, &dc),
                     SL_ERR_INVAL);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("orch_dispatch");
    TCase *tc = tcase_create("core");

    tcase_add_test(tc, test_job_ids_and_subjects);
    tcase_add_test(tc, test_work_and_fallback);
    tcase_add_test(tc, test_followers_in_work);
    tcase_add_test(tc, test_busy_and_job_json);
    tcase_add_test(tc, test_inflight_counts_and_retry);
    tcase_add_test(tc, test_advisory_parse);
    tcase_add_test(tc, test_lost_stub_and_tracking);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(suite());
    int failed;

    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
