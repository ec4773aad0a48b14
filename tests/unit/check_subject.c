/* Unit tests for ids, channels and subjects (common/sl_subject). */
#include <check.h>
#include <stdio.h>
#include <string.h>

#include "sl_streams.h"
#include "sl_subject.h"

START_TEST(test_ids)
{
    static const char *const good[] = {"a", "acme", "A-b_9", "x-"};
    static const char *const bad[] = {"",  "a.b", "a*",  ">",   "a b",     "a\tb",
                                      "é", "a/b", "a:b", "a\n", "lobby.>", "*"};
    char s65[66], s64[65];

    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++)
        ck_assert_msg(sl_id_valid(good[i]), "%s", good[i]);
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        ck_assert_msg(!sl_id_valid(bad[i]), "%s", bad[i]);
    ck_assert(!sl_id_valid(NULL));
    memset(s64, 'a', 64);
    s64[64] = '\0';
    memset(s65, 'a', 65);
    s65[65] = '\0';
    ck_assert(sl_id_valid(s64));
    ck_assert(!sl_id_valid(s65));
    ck_assert(sl_client_id_valid("c-17"));
    ck_assert(sl_client_id_valid("a.b:c"));
    ck_assert(!sl_client_id_valid("a b"));
    ck_assert(!sl_client_id_valid("a*"));
    ck_assert(!sl_client_id_valid("a>"));
    ck_assert(!sl_client_id_valid(s65));
    ck_assert(!sl_client_id_valid(""));
}
END_TEST

START_TEST(test_channels)
{
    bool is_room = true;
    const char *room = "x";

    ck_assert_int_eq(sl_channel_parse("s", &is_room, &room), SL_OK);
    ck_assert(!is_room);
    ck_assert_int_eq(sl_channel_parse("r:lobby", &is_room, &room), SL_OK);
    ck_assert(is_room);
    ck_assert_str_eq(room, "lobby");
    ck_assert_int_eq(sl_channel_parse("r:", &is_room, &room), SL_ERR_INVAL);
    ck_assert_int_eq(sl_channel_parse("r:a.b", &is_room, &room), SL_ERR_INVAL);
    ck_assert_int_eq(sl_channel_parse("x:lobby", &is_room, &room), SL_ERR_INVAL);
    ck_assert_int_eq(sl_channel_parse("ss", &is_room, &room), SL_ERR_INVAL);
    ck_assert_int_eq(sl_channel_parse(NULL, &is_room, &room), SL_ERR_INVAL);
}
END_TEST

START_TEST(test_subjects)
{
    char b[SL_SUBJECT_MAX], tenant[SL_ID_MAX + 1], name[SL_ID_MAX + 1];
    bool is_room;

    ck_assert_int_eq(sl_subject_in(b, sizeof(b), "acme", "S1"), SL_OK);
    ck_assert_str_eq(b, "sluice.in.acme.S1");
    ck_assert_int_eq(sl_subject_work(b, sizeof(b), "default", "acme"), SL_OK);
    ck_assert_str_eq(b, "sluice.work.default.acme");
    ck_assert_int_eq(sl_subject_cancel(b, sizeof(b), "acme"), SL_OK);
    ck_assert_str_eq(b, "sluice.ctl.cancel.acme");
    ck_assert_int_eq(sl_subject_disconnect(b, sizeof(b), "acme"), SL_OK);
    ck_assert_str_eq(b, "sluice.ctl.disconnect.acme");
    ck_assert_int_eq(sl_subject_disconnect(b, sizeof(b), "ac>me"), SL_ERR_INVAL);
    ck_assert_int_eq(sl_subject_disconnect(b, 10, "acme"), SL_ERR_INVAL);
    ck_assert_int_eq(sl_subject_disconnect_parse("sluice.ctl.disconnect.acme", tenant), SL_OK);
    ck_assert_str_eq(tenant, "acme");
    ck_assert_int_eq(sl_subject_disconnect_parse("sluice.ctl.disconnect.acme.x", tenant),
                     SL_ERR_INVAL);
    ck_assert_int_eq(sl_subject_disconnect_parse("sluice.ctl.disconnect.", tenant), SL_ERR_INVAL);
    ck_assert_int_eq(sl_subject_disconnect_parse("sluice.ctl.cancel.acme", tenant), SL_ERR_INVAL);
    ck_assert_int_eq(sl_subject_chan(b, sizeof(b), "sluice.out", "acme", true, "lobby"), SL_OK);
    ck_assert_str_eq(b, "sluice.out.acme.r.lobby");
    ck_assert_int_eq(sl_subject_chan(b, sizeof(b), "sluice.live", "acme", false, "S1"), SL_OK);
    ck_assert_str_eq(b, "sluice.live.acme.s.S1");
    /* Nothing invalid ever reaches a subject. */
    ck_assert_int_eq(sl_subject_in(b, sizeof(b), "ac.me", "S1"), SL_ERR_INVAL);
    ck_assert_int_eq(sl_subject_in(b, sizeof(b), "acme", ">"), SL_ERR_INVAL);
    ck_assert_int_eq(sl_subject_work(b, sizeof(b), "*", "acme"), SL_ERR_INVAL);
    ck_assert_int_eq(sl_subject_chan(b, sizeof(b), "sluice.other", "acme", true, "l"),
                     SL_ERR_INVAL);
    ck_assert_int_eq(sl_subject_chan(b, sizeof(b), "sluice.out", "acme", true, "a b"),
                     SL_ERR_INVAL);
    /* Too small a buffer fails instead of truncating. */
    ck_assert_int_eq(sl_subject_in(b, 10, "acme", "S1"), SL_ERR_INVAL);
    /* Round trip. */
    ck_assert_int_eq(sl_subject_chan_parse("sluice.out.acme.r.lobby", tenant, &is_room, name),
                     SL_OK);
    ck_assert_str_eq(tenant, "acme");
    ck_assert(is_room);
    ck_assert_str_eq(name, "lobby");
    ck_assert_int_eq(sl_subject_chan_parse("sluice.live.t.s.x", tenant, &is_room, name), SL_OK);
    ck_assert(!is_room);
    ck_assert_int_eq(sl_subject_chan_parse("sluice.out.acme.x.lobby", tenant, &is_room, name),
                     SL_ERR_INVAL);
    ck_assert_int_eq(sl_subject_chan_parse("sluice.out.acme.r.a.b", tenant, &is_room, name),
                     SL_ERR_INVAL);
    ck_assert_int_eq(sl_subject_chan_parse("sluice.out.acme.r", tenant, &is_room, name),
                     SL_ERR_INVAL);
    ck_assert_int_eq(sl_kv_key3(b, sizeof(b), "t", "s", "pos"), SL_OK);
    ck_assert_str_eq(b, "t.s.pos");
    ck_assert_int_eq(sl_kv_key2(b, sizeof(b), "t", "a.b"), SL_ERR_INVAL);
}
END_TEST

START_TEST(test_cancel_key)
{
    char a[SL_SUBJECT_MAX], b[SL_SUBJECT_MAX];

    ck_assert_int_eq(sl_cancel_key(a, sizeof(a), "acme", "S1", "c-1"), SL_OK);
    ck_assert_int_eq(sl_cancel_key(b, sizeof(b), "acme", "S1", "c-1"), SL_OK);
    ck_assert_str_eq(a, b);
    ck_assert_int_eq(strncmp(a, "acme.x-", 7), 0);
    ck_assert_int_eq(strlen(a), 7 + 40);
    ck_assert_int_eq(sl_cancel_key(b, sizeof(b), "acme", "S1", "c-2"), SL_OK);
    ck_assert_str_ne(a, b);
    ck_assert_int_eq(sl_cancel_key(b, sizeof(b), "acme", "S1", "c 1"), SL_ERR_INVAL);
}
END_TEST

START_TEST(test_named_subjects)
{
    char b[SL_SUBJECT_MAX], s65[66];

    memset(s65, 'a', 65);
    s65[65] = '\0';
    ck_assert_int_eq(sl_subject_out(b, sizeof(b), "acme", true, "lobby"), SL_OK);
    ck_assert_str_eq(b, "sluice.out.acme.r.lobby");
    ck_assert_int_eq(sl_subject_out(b, sizeof(b), "acme", false, "S1"), SL_OK);
    ck_assert_str_eq(b, "sluice.out.acme.s.S1");
    ck_assert_int_eq(sl_subject_live(b, sizeof(b), "acme", true, "lobby"), SL_OK);
    ck_assert_str_eq(b, "sluice.live.acme.r.lobby");
    ck_assert_int_eq(sl_subject_out(b, sizeof(b), "ac.me", true, "lobby"), SL_ERR_INVAL);
    ck_assert_int_eq(sl_subject_live(b, sizeof(b), "acme", false, ">"), SL_ERR_INVAL);
    ck_assert_int_eq(sl_subject_out(b, 23, "acme", true, "lobby"), SL_ERR_INVAL);
    ck_assert_str_eq(b, "");
    ck_assert_int_eq(sl_subject_out(b, 24, "acme", true, "lobby"), SL_OK);

    ck_assert_int_eq(sl_subject_live_tenant(b, sizeof(b), "acme"), SL_OK);
    ck_assert_str_eq(b, "sluice.live.acme.>");
    ck_assert_int_eq(sl_subject_live_tenant(b, sizeof(b), "a.*"), SL_ERR_INVAL);
    ck_assert_int_eq(sl_subject_live_tenant(b, sizeof(b), NULL), SL_ERR_INVAL);
    ck_assert_int_eq(sl_subject_live_tenant(b, 18, "acme"), SL_ERR_INVAL);
    ck_assert_int_eq(sl_subject_live_tenant(b, 19, "acme"), SL_OK);

    ck_assert_int_eq(sl_subject_work_filter(b, sizeof(b), "default", "acme"), SL_OK);
    ck_assert_str_eq(b, "sluice.work.default.acme");
    ck_assert_int_eq(sl_subject_work_filter(b, sizeof(b), "default", NULL), SL_OK);
    ck_assert_str_eq(b, "sluice.work.default.>");
    ck_assert_int_eq(sl_subject_work_filter(b, sizeof(b), "default", ""), SL_OK);
    ck_assert_str_eq(b, "sluice.work.default.>");
    ck_assert_int_eq(sl_subject_work_filter(b, sizeof(b), "m*", NULL), SL_ERR_INVAL);
    ck_assert_int_eq(sl_subject_work_filter(b, sizeof(b), "m", "a b"), SL_ERR_INVAL);
    ck_assert_int_eq(sl_subject_work_filter(b, 10, "default", NULL), SL_ERR_INVAL);
    ck_assert_int_eq(sl_subject_work_tenants(b, sizeof(b), "default"), SL_OK);
    ck_assert_str_eq(b, "sluice.work.default.*");
    ck_assert_int_eq(sl_subject_work_tenants(b, sizeof(b), "a.b"), SL_ERR_INVAL);
    ck_assert_int_eq(sl_subject_work_tenants(b, sizeof(b), s65), SL_ERR_INVAL);
    ck_assert_int_eq(sl_subject_work_tenants(b, 21, "default"), SL_ERR_INVAL);
    ck_assert_int_eq(sl_subject_work_tenants(b, 22, "default"), SL_OK);

    ck_assert_int_eq(sl_subject_bell(b, sizeof(b), "default", "acme"), SL_OK);
    ck_assert_str_eq(b, "sluice.ctl.work.default.acme");
    ck_assert_int_eq(sl_subject_bell(b, sizeof(b), "default", "a.b"), SL_ERR_INVAL);
    ck_assert_int_eq(sl_subject_bell(b, sizeof(b), "*", "acme"), SL_ERR_INVAL);
    ck_assert_int_eq(sl_subject_bell(b, sizeof(b), "default", NULL), SL_ERR_INVAL);
    ck_assert_int_eq(sl_subject_bell(b, 28, "default", "acme"), SL_ERR_INVAL);
    ck_assert_int_eq(sl_subject_bell_filter(b, sizeof(b), "default"), SL_OK);
    ck_assert_str_eq(b, "sluice.ctl.work.default.*");
    ck_assert_int_eq(sl_subject_bell_filter(b, sizeof(b), ""), SL_ERR_INVAL);
    ck_assert_int_eq(sl_subject_bell_filter(b, 5, "default"), SL_ERR_INVAL);
}
END_TEST

START_TEST(test_subject_parsers)
{
    char a[SL_ID_MAX + 1], t[SL_ID_MAX + 1], b[SL_SUBJECT_MAX], s65[66], long_subj[128];

    ck_assert_int_eq(sl_subject_in_parse("sluice.in.acme.S1", t, a), SL_OK);
    ck_assert_str_eq(t, "acme");
    ck_assert_str_eq(a, "S1");
    ck_assert_int_eq(sl_subject_in_parse("sluice.in.acme.a-bot", t, a), SL_OK);
    ck_assert_str_eq(a, "a-bot");
    ck_assert_int_eq(sl_subject_in_parse("sluice.in.acme", t, a), SL_ERR_INVAL);
    ck_assert_int_eq(sl_subject_in_parse("sluice.in.acme.", t, a), SL_ERR_INVAL);
    ck_assert_int_eq(sl_subject_in_parse("sluice.in..S1", t, a), SL_ERR_INVAL);
    ck_assert_int_eq(sl_subject_in_parse("sluice.in.acme.S1.x", t, a), SL_ERR_INVAL);
    ck_assert_int_eq(sl_subject_in_parse("sluice.work.acme.S1", t, a), SL_ERR_INVAL);
    ck_assert_int_eq(sl_subject_in_parse("sluice.in.a*.S1", t, a), SL_ERR_INVAL);
    ck_assert_int_eq(sl_subject_in_parse(NULL, t, a), SL_ERR_INVAL);
    memset(s65, 'a', 65);
    s65[65] = '\0';
    snprintf(long_subj, sizeof(long_subj), "sluice.in.acme.%s", s65);
    ck_assert_int_eq(sl_subject_in_parse(long_subj, t, a), SL_ERR_INVAL);
    snprintf(long_subj, sizeof(long_subj), "sluice.in.%s.S1", s65);
    ck_assert_int_eq(sl_subject_in_parse(long_subj, t, a), SL_ERR_INVAL);

    ck_assert_int_eq(sl_subject_work_parse("sluice.work.default.acme", a, t), SL_OK);
    ck_assert_str_eq(a, "default");
    ck_assert_str_eq(t, "acme");
    ck_assert_int_eq(sl_subject_work_parse("sluice.work.default.>", a, t), SL_ERR_INVAL);
    ck_assert_int_eq(sl_subject_work_parse("sluice.work.default", a, t), SL_ERR_INVAL);

    ck_assert_int_eq(sl_subject_cancel_parse("sluice.ctl.cancel.acme", t), SL_OK);
    ck_assert_str_eq(t, "acme");
    ck_assert_int_eq(sl_subject_cancel_parse("sluice.ctl.cancel.acme.x", t), SL_ERR_INVAL);
    ck_assert_int_eq(sl_subject_cancel_parse("sluice.ctl.cancel.acme.", t), SL_ERR_INVAL);
    ck_assert_int_eq(sl_subject_cancel_parse("sluice.ctl.cancel.", t), SL_ERR_INVAL);
    ck_assert_int_eq(sl_subject_cancel_parse("sluice.ctl.cancel.*", t), SL_ERR_INVAL);
    ck_assert_int_eq(sl_subject_cancel_parse("sluice.ctl.work.acme", t), SL_ERR_INVAL);

    ck_assert_int_eq(sl_subject_bell_parse("sluice.ctl.work.default.acme", a, t), SL_OK);
    ck_assert_str_eq(a, "default");
    ck_assert_str_eq(t, "acme");
    ck_assert_int_eq(sl_subject_bell_parse("sluice.ctl.work.default", a, t), SL_ERR_INVAL);
    ck_assert_int_eq(sl_subject_bell_parse("sluice.ctl.work.default.a b", a, t), SL_ERR_INVAL);

    /* What a builder writes, its parser reads back. */
    ck_assert_int_eq(sl_subject_bell(b, sizeof(b), "m-1", "t_2"), SL_OK);
    ck_assert_int_eq(sl_subject_bell_parse(b, a, t), SL_OK);
    ck_assert_str_eq(a, "m-1");
    ck_assert_str_eq(t, "t_2");
    ck_assert_int_eq(sl_subject_in(b, sizeof(b), "t_2", "S-9"), SL_OK);
    ck_assert_int_eq(sl_subject_in_parse(b, t, a), SL_OK);
    ck_assert_str_eq(t, "t_2");
    ck_assert_str_eq(a, "S-9");
    ck_assert_int_eq(sl_subject_work(b, sizeof(b), "m", "t"), SL_OK);
    ck_assert_int_eq(sl_subject_work_parse(b, a, t), SL_OK);
    ck_assert_int_eq(sl_subject_cancel(b, sizeof(b), "t"), SL_OK);
    ck_assert_int_eq(sl_subject_cancel_parse(b, t), SL_OK);
}
END_TEST

START_TEST(test_stream_names)
{
    char b[SL_SUBJECT_MAX + 64], m[SL_ID_MAX + 1], t[SL_ID_MAX + 1];

    ck_assert(sl_js_is_ack_reply("$JS.ACK.SLUICE_WORK.wrk_m.1.2.3.4.5"));
    ck_assert(!sl_js_is_ack_reply("_INBOX.abc"));
    ck_assert(!sl_js_is_ack_reply("$JS.AC"));
    ck_assert(!sl_js_is_ack_reply(NULL));

    ck_assert(sl_kv_key_valid("acme.S1"));
    ck_assert(sl_kv_key_valid("acme.x-0123abc"));
    ck_assert(sl_kv_key_valid("a/b=c_d"));
    ck_assert(!sl_kv_key_valid(""));
    ck_assert(!sl_kv_key_valid(NULL));
    ck_assert(!sl_kv_key_valid(".a"));
    ck_assert(!sl_kv_key_valid("a."));
    ck_assert(!sl_kv_key_valid("a.*"));
    ck_assert(!sl_kv_key_valid("a.>"));
    ck_assert(!sl_kv_key_valid("a b"));

    ck_assert_int_eq(sl_kv_subject(b, sizeof(b), SL_KV_SESSIONS, "acme.S1"), SL_OK);
    ck_assert_str_eq(b, "$KV.sluice_sessions.acme.S1");
    ck_assert_int_eq(sl_kv_subject(b, sizeof(b), SL_KV_SESSIONS, "acme.>"), SL_ERR_INVAL);
    ck_assert_str_eq(b, "");
    ck_assert_int_eq(sl_kv_subject(b, sizeof(b), "a.b", "k"), SL_ERR_INVAL);
    ck_assert_int_eq(sl_kv_subject(b, sizeof(b), SL_KV_SESSIONS, NULL), SL_ERR_INVAL);
    ck_assert_int_eq(sl_kv_subject(b, 27, SL_KV_SESSIONS, "acme.S1"), SL_ERR_INVAL);
    ck_assert_int_eq(sl_kv_subject(b, 28, SL_KV_SESSIONS, "acme.S1"), SL_OK);

    ck_assert_int_eq(sl_kv_direct_get_subject(b, sizeof(b), "sluice_presence", "acme.r"), SL_OK);
    ck_assert_str_eq(b, "$JS.API.DIRECT.GET.KV_sluice_presence.$KV.sluice_presence.acme.r");
    ck_assert_int_eq(sl_kv_direct_get_subject(b, sizeof(b), "sluice_presence", "a*"), SL_ERR_INVAL);
    ck_assert_int_eq(sl_kv_direct_get_subject(b, 20, "sluice_presence", "acme.r"), SL_ERR_INVAL);

    ck_assert_int_eq(sl_js_msg_next_subject(b, sizeof(b), SL_STREAM_WORK, "wrk_m~t"), SL_OK);
    ck_assert_str_eq(b, "$JS.API.CONSUMER.MSG.NEXT.SLUICE_WORK.wrk_m~t");
    ck_assert_int_eq(sl_js_msg_next_subject(b, sizeof(b), SL_STREAM_WORK, "a.b"), SL_ERR_INVAL);
    ck_assert_int_eq(sl_js_msg_next_subject(b, sizeof(b), "", "c"), SL_ERR_INVAL);
    ck_assert_int_eq(sl_js_msg_next_subject(b, 10, SL_STREAM_WORK, "c"), SL_ERR_INVAL);

    ck_assert_int_eq(sl_work_durable(b, sizeof(b), "default", "acme"), SL_OK);
    ck_assert_str_eq(b, "wrk_default~acme");
    ck_assert_int_eq(sl_work_durable(b, sizeof(b), "default", NULL), SL_OK);
    ck_assert_str_eq(b, "wrk_default");
    ck_assert_int_eq(sl_work_durable(b, sizeof(b), "default", ""), SL_OK);
    ck_assert_str_eq(b, "wrk_default");
    ck_assert_int_eq(sl_work_durable(b, sizeof(b), "de.fault", NULL), SL_ERR_INVAL);
    ck_assert_int_eq(sl_work_durable(b, sizeof(b), "default", "a~b"), SL_ERR_INVAL);
    ck_assert_int_eq(sl_work_durable(b, 16, "default", "acme"), SL_ERR_INVAL);
    ck_assert_int_eq(sl_work_durable(b, 17, "default", "acme"), SL_OK);

    ck_assert_int_eq(sl_work_durable_parse("wrk_default~acme", m, t), SL_OK);
    ck_assert_str_eq(m, "default");
    ck_assert_str_eq(t, "acme");
    ck_assert_int_eq(sl_work_durable_parse("wrk_default", m, t), SL_OK);
    ck_assert_str_eq(m, "default");
    ck_assert_str_eq(t, "");
    ck_assert_int_eq(sl_work_durable_parse("wrk_", m, t), SL_ERR_INVAL);
    ck_assert_int_eq(sl_work_durable_parse("wrk_~acme", m, t), SL_ERR_INVAL);
    ck_assert_int_eq(sl_work_durable_parse("wrk_m~", m, t), SL_ERR_INVAL);
    ck_assert_int_eq(sl_work_durable_parse("wrk_m~a~b", m, t), SL_ERR_INVAL);
    ck_assert_int_eq(sl_work_durable_parse("orch_in", m, t), SL_ERR_INVAL);
    ck_assert_int_eq(sl_work_durable_parse(NULL, m, t), SL_ERR_INVAL);
}
END_TEST

START_TEST(test_usage_keys)
{
    char buf[SL_SUBJECT_MAX], tenant[SL_ID_MAX + 1], agent[SL_ID_MAX + 1];
    int64_t v = -1;

    ck_assert_int_eq(sl_kv_key_quota(buf, sizeof(buf), "acme", 1764655200), SL_OK);
    ck_assert_str_eq(buf, "acme.1764655200");
    ck_assert_int_eq(sl_kv_key_quota_parse(buf, tenant, &v), SL_OK);
    ck_assert_str_eq(tenant, "acme");
    ck_assert_int_eq(v, 1764655200);
    ck_assert_int_eq(sl_kv_key_usage(buf, sizeof(buf), "acme", 5882184, "assistant"), SL_OK);
    ck_assert_str_eq(buf, "acme.5882184.assistant");
    ck_assert_int_eq(sl_kv_key_usage_parse(buf, tenant, &v, agent), SL_OK);
    ck_assert_str_eq(tenant, "acme");
    ck_assert_str_eq(agent, "assistant");
    ck_assert_int_eq(v, 5882184);
    ck_assert_int_eq(sl_kv_key_tenant_filter(buf, sizeof(buf), "acme"), SL_OK);
    ck_assert_str_eq(buf, "acme.>");

    ck_assert_int_eq(sl_kv_key_quota(buf, sizeof(buf), "a.b", 1), SL_ERR_INVAL);
    ck_assert_int_eq(sl_kv_key_quota(buf, sizeof(buf), "acme", -1), SL_ERR_INVAL);
    ck_assert_int_eq(sl_kv_key_usage(buf, sizeof(buf), "acme", 1, "a>"), SL_ERR_INVAL);
    ck_assert_int_eq(sl_kv_key_quota(buf, 6, "acme", 1764655200), SL_ERR_INVAL);
    ck_assert_int_eq(sl_kv_key_tenant_filter(buf, sizeof(buf), "*"), SL_ERR_INVAL);
    ck_assert_int_eq(sl_kv_key_room_members_filter(buf, sizeof(buf), "acme", "lobby"), SL_OK);
    ck_assert_str_eq(buf, "acme.lobby.*");
    ck_assert_int_eq(sl_kv_key_room_members_filter(buf, sizeof(buf), "acme", "lob>"), SL_ERR_INVAL);
    ck_assert_int_eq(sl_kv_key_room_members_filter(buf, sizeof(buf), "a.b", "lobby"), SL_ERR_INVAL);
    ck_assert_int_eq(sl_kv_key_room_members_filter(buf, 8, "acme", "lobby"), SL_ERR_INVAL);
    const char *bad_quota[] = {"acme",    "acme.",    ".5",      "acme.x",
                               "acme.5.", "acme.5.x", "acme.-5", "acme.1234567890123456789",
                               "a b.5",   ""};
    for (size_t i = 0; i < sizeof(bad_quota) / sizeof(bad_quota[0]); i++)
        ck_assert_msg(sl_kv_key_quota_parse(bad_quota[i], tenant, &v) == SL_ERR_INVAL, "%s",
                      bad_quota[i]);
    const char *bad_usage[] = {"acme.5",     "acme.5.",    "acme..x", "acme.x.a",
                               "acme.5.a.b", "acme.5.a b", ".5.a"};
    for (size_t i = 0; i < sizeof(bad_usage) / sizeof(bad_usage[0]); i++)
        ck_assert_msg(sl_kv_key_usage_parse(bad_usage[i], tenant, &v, agent) == SL_ERR_INVAL, "%s",
                      bad_usage[i]);
    ck_assert_int_eq(sl_kv_key_quota_parse(NULL, tenant, &v), SL_ERR_INVAL);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("sl_subject");
    TCase *tc = tcase_create("core");
    SRunner *sr;
    int failed;

    tcase_add_test(tc, test_ids);
    tcase_add_test(tc, test_channels);
    tcase_add_test(tc, test_subjects);
    tcase_add_test(tc, test_cancel_key);
    tcase_add_test(tc, test_named_subjects);
    tcase_add_test(tc, test_subject_parsers);
    tcase_add_test(tc, test_stream_names);
    tcase_add_test(tc, test_usage_keys);
    suite_add_tcase(s, tc);
    sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? 0 : 1;
}
