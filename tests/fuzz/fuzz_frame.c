/* libFuzzer target: the client frame parser (gateway/gw_protocol.c).
 *
 * Input: the payload of one WebSocket text frame, exactly as the gateway
 * hands it to gw_cmd_parse(): not NUL-terminated. The bytes are copied so
 * that they end right before a PROT_NONE page, so an over-read faults even
 * inside the (uninstrumented) cJSON library.
 *
 * Properties checked on every input:
 *   - sl_utf8_valid() agrees with an independent validator written from the
 *     Unicode table of well-formed byte sequences.
 *   - gw_cmd_parse() either refuses the frame with one of the protocol's
 *     error codes, a non-empty NUL-terminated message and an err.id that is
 *     empty or a valid client id, or accepts it; then every field of the
 *     command passes its validation and equals the member of the same name
 *     in an independent, case-sensitive reading of the JSON.
 *   - Every server frame built from what was parsed (accepted, busy, error,
 *     joined, left, gap, history, welcome, pong, and the event frame that
 *     room members receive for a send) is a JSON object of the right type
 *     that carries the same strings back, and is valid UTF-8 whenever the
 *     client frame was (the gateway checks UTF-8 before it parses).
 *
 * Built with -DFUZZ_SEEDS, this file is instead a program that writes the
 * seed corpus (frames from shared/PROTOCOL.md and near misses) into the
 * directory given as its argument, running each seed through the checks. */
#include <cJSON.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_ref.h"
#include "gw_protocol.h"
#include "sl_subject.h"
#include "sl_text.h"

#define EVENT_ID "01HX0000000000000000000000"

static bool is_uint53(int64_t v)
{
    return v >= 0 && v <= FZ_INT53_I;
}

static bool jbool(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    CHECK(cJSON_IsBool(v));
    return cJSON_IsTrue(v);
}

/* Checks a frame built by gw_frame_*(): a JSON object whose type is type,
 * valid UTF-8 when utf8 is set. Frees text; returns the tree to delete. */
static cJSON *reparse(char *text, const char *type, bool utf8)
{
    cJSON *o;
    size_t n;

    CHECK(text != NULL);
    n = strlen(text);
    if (utf8) {
        CHECK(ref_utf8((const unsigned char *)text, n));
        CHECK(sl_utf8_valid(text, n));
    }
    o = cJSON_ParseWithLength(text, n);
    free(text);
    CHECK(cJSON_IsObject(o));
    CHECK(streq(jstr(o, "type"), type));
    return o;
}

/* A member that the protocol makes optional: absent or null means NULL. */
static bool optional_matches(const cJSON *j, const char *key, const char *parsed)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, key);

    if (v == NULL || cJSON_IsNull(v))
        return parsed == NULL;
    return cJSON_IsString(v) && streq(parsed, v->valuestring);
}

static bool known_code(const char *code)
{
    static const char *const codes[] = {"bad_frame",    "unauthorized", "forbidden",  "too_large",
                                        "unknown_type", "bad_id",       "not_joined", "internal"};

    for (size_t i = 0; i < sizeof(codes) / sizeof(codes[0]); i++) {
        if (streq(code, codes[i]))
            return true;
    }
    return false;
}

static const char *type_name(gw_cmd_type t)
{
    switch (t) {
    case GW_CMD_HELLO:
        return "hello";
    case GW_CMD_SEND:
        return "send";
    case GW_CMD_JOIN:
        return "join";
    case GW_CMD_LEAVE:
        return "leave";
    case GW_CMD_ACK:
        return "ack";
    case GW_CMD_CANCEL:
        return "cancel";
    case GW_CMD_HISTORY:
        return "history";
    case GW_CMD_PING:
        return "ping";
    }
    return NULL;
}

/* The command agrees with an independent reading j of the same frame. */
static void check_cmd(const gw_cmd *c, const cJSON *j)
{
    bool is_room;
    const char *room;

    CHECK(c->root != NULL);
    CHECK(cJSON_IsObject(j));
    CHECK(streq(jstr(j, "type"), type_name(c->type)));
    switch (c->type) {
    case GW_CMD_HELLO: {
        const cJSON *r = cJSON_GetObjectItemCaseSensitive(j, "resume");
        CHECK(streq(c->token, jstr(j, "token")));
        CHECK(c->resume == (r != NULL && !cJSON_IsNull(r)));
        CHECK(c->npositions >= 0 && c->npositions <= GW_POSITIONS_MAX);
        CHECK(c->resume || (!c->has_positions && c->npositions == 0));
        CHECK(c->has_positions || c->npositions == 0);
        if (c->resume) {
            CHECK(sl_id_valid(c->resume_session));
            CHECK(streq(c->resume_session, jstr(r, "session")));
            CHECK(streq(c->resume_token, jstr(r, "resume_token")));
        }
        for (int i = 0; i < c->npositions; i++) {
            CHECK(sl_channel_parse(c->positions[i].ch, &is_room, &room) == SL_OK);
            CHECK(is_uint53(c->positions[i].seq));
        }
        break;
    }
    case GW_CMD_SEND:
        CHECK(sl_client_id_valid(c->id) && streq(c->id, jstr(j, "id")));
        CHECK(streq(c->text, jstr(j, "text")));
        CHECK(c->room == NULL || sl_id_valid(c->room));
        CHECK(c->prev == NULL || sl_client_id_valid(c->prev));
        CHECK(optional_matches(j, "room", c->room));
        CHECK(optional_matches(j, "prev", c->prev));
        break;
    case GW_CMD_JOIN:
    case GW_CMD_LEAVE:
        CHECK(sl_id_valid(c->room) && streq(c->room, jstr(j, "room")));
        break;
    case GW_CMD_ACK:
        CHECK(sl_channel_parse(c->ch, &is_room, &room) == SL_OK && streq(c->ch, jstr(j, "ch")));
        CHECK(is_uint53(c->seq) && (double)c->seq == jnum(j, "seq")); /* parsed, not printed */
        break;
    case GW_CMD_HISTORY:
        CHECK(sl_channel_parse(c->ch, &is_room, &room) == SL_OK && streq(c->ch, jstr(j, "ch")));
        CHECK(is_uint53(c->before));
        CHECK(c->limit >= 1 && c->limit <= 200);
        break;
    case GW_CMD_CANCEL:
        CHECK(sl_client_id_valid(c->id) && streq(c->id, jstr(j, "id")));
        break;
    case GW_CMD_PING:
        break;
    }
}

/* The event frame that the members of a room (or the session) receive
 * for an accepted send, and a history frame holding it. */
static void check_send_event(const gw_cmd *c, bool utf8)
{
    Sluice__Envelope e;
    Sluice__ClientMessage m;
    char ch[GW_CH_MAX];
    char *text, *hist;
    cJSON *o, *h, *from, *events;

    sluice__envelope__init(&e);
    sluice__client_message__init(&m);
    e.event_id = (char *)EVENT_ID;
    e.tenant = (char *)"acme";
    e.session = (char *)"S0000000000000000000000";
    e.client_id = (char *)c->id;
    e.message_id = (char *)c->id;
    e.prev_event_id = (char *)(c->prev ? c->prev : "");
    e.ts_unix_ns = 1700000000123456789LL;
    m.room = (char *)(c->room ? c->room : "");
    m.text = (char *)c->text;
    m.user = (char *)"u1";
    e.body_case = SLUICE__ENVELOPE__BODY_MESSAGE;
    e.message = &m;
    if (c->room != NULL)
        snprintf(ch, sizeof(ch), "r:%s", c->room);
    else
        snprintf(ch, sizeof(ch), "s");

    text = gw_frame_event(&e, ch, 97);
    CHECK(text != NULL);
    hist = gw_frame_history(ch, &text, 1, false, 0, NULL);
    o = reparse(text, "event", utf8);
    CHECK(streq(jstr(o, "ch"), ch) && jnum(o, "seq") == 97);
    CHECK(streq(jstr(o, "kind"), "message"));
    CHECK(streq(jstr(o, "id"), c->id) && streq(jstr(o, "event"), EVENT_ID));
    CHECK(streq(jstr(o, "text"), c->text));
    from = cJSON_GetObjectItemCaseSensitive(o, "from");
    CHECK(streq(jstr(from, "user"), "u1"));
    CHECK(jnum(o, "ts") == 1700000000123.0);

    h = reparse(hist, "history", utf8);
    CHECK(streq(jstr(h, "ch"), ch));
    events = cJSON_GetObjectItemCaseSensitive(h, "events");
    CHECK(cJSON_GetArraySize(events) == 1);
    CHECK(cJSON_Compare(cJSON_GetArrayItem(events, 0), o, true));
    cJSON_Delete(h);
    cJSON_Delete(o);
}

/* Builds the server frames that answer a parsed command and checks them. */
static void check_frames_of(const gw_cmd *c, bool utf8)
{
    cJSON *o, *arr;
    char ch[GW_CH_MAX];

    switch (c->type) {
    case GW_CMD_SEND:
        o = reparse(gw_frame_accepted(c->id, EVENT_ID, c->prev != NULL), "accepted", utf8);
        CHECK(streq(jstr(o, "id"), c->id) && streq(jstr(o, "event"), EVENT_ID));
        CHECK(jbool(o, "duplicate") == (c->prev != NULL));
        cJSON_Delete(o);
        o = reparse(gw_frame_busy(c->id, "rate_limited", 800), "busy", utf8);
        CHECK(streq(jstr(o, "id"), c->id) && streq(jstr(o, "reason"), "rate_limited"));
        CHECK(jnum(o, "retry_after_ms") == 800);
        cJSON_Delete(o);
        /* The client's text as an error message: arbitrary text, escaped. */
        o = reparse(gw_frame_error("not_joined", c->text, c->id), "error", utf8);
        CHECK(streq(jstr(o, "message"), c->text) && streq(jstr(o, "id"), c->id));
        cJSON_Delete(o);
        check_send_event(c, utf8);
        break;
    case GW_CMD_JOIN:
    case GW_CMD_LEAVE:
        snprintf(ch, sizeof(ch), "r:%s", c->room);
        arr = cJSON_CreateArray();
        CHECK(arr != NULL);
        cJSON_AddItemToArray(arr, cJSON_CreateString(c->room));
        /* A leave stands in for a join whose member list was cut. */
        o = reparse(gw_frame_joined(c->room, 97, arr, c->type == GW_CMD_LEAVE), "joined", utf8);
        CHECK(streq(jstr(o, "room"), c->room) && streq(jstr(o, "ch"), ch));
        CHECK(jnum(o, "seq") == 97);
        if (c->type == GW_CMD_LEAVE)
            CHECK(jbool(o, "members_truncated"));
        else
            CHECK(cJSON_GetObjectItemCaseSensitive(o, "members_truncated") == NULL);
        CHECK(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(o, "members")) == 1);
        cJSON_Delete(o);
        o = reparse(gw_frame_left(c->room), "left", utf8);
        CHECK(streq(jstr(o, "room"), c->room) && streq(jstr(o, "ch"), ch));
        cJSON_Delete(o);
        break;
    case GW_CMD_ACK:
        o = reparse(gw_frame_gap(c->ch, c->seq / 2, c->seq), "gap", utf8);
        CHECK(streq(jstr(o, "ch"), c->ch));
        CHECK(num_eq(jnum(o, "from"), (double)(c->seq / 2)));
        CHECK(num_eq(jnum(o, "to"), (double)c->seq));
        cJSON_Delete(o);
        o = reparse(gw_frame_history(c->ch, NULL, 0, true, c->seq, NULL), "history", utf8);
        CHECK(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(o, "events")) == 0);
        CHECK(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(o, "more")));
        CHECK(num_eq(jnum(o, "next_before"), (double)c->seq));
        cJSON_Delete(o);
        break;
    case GW_CMD_HISTORY: {
        char *pong = gw_frame_pong();
        const cJSON *ev;
        CHECK(pong != NULL);
        o = reparse(gw_frame_history(c->ch, &pong, 1, false, 0, c->id), "history", utf8);
        free(pong);
        CHECK(streq(jstr(o, "ch"), c->ch));
        CHECK(cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(o, "more")));
        CHECK(c->id == NULL ? jstr(o, "id") == NULL : streq(jstr(o, "id"), c->id));
        ev = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(o, "events"), 0);
        CHECK(streq(jstr(ev, "type"), "pong"));
        cJSON_Delete(o);
        break;
    }
    case GW_CMD_HELLO: {
        const char *sess = c->resume ? c->resume_session : "S0000000000000000000000";
        /* The token stands in for a resume token: arbitrary text, escaped. */
        o = reparse(gw_frame_welcome(sess, c->token, 25000, c->resume, 65536, 20, 40), "welcome",
                    utf8);
        CHECK(streq(jstr(o, "session"), sess) && streq(jstr(o, "resume_token"), c->token));
        CHECK(jbool(o, "resumed") == c->resume && jnum(o, "heartbeat_ms") == 25000);
        cJSON_Delete(o);
        break;
    }
    case GW_CMD_CANCEL:
    case GW_CMD_PING:
        o = reparse(gw_frame_pong(), "pong", true);
        cJSON_Delete(o);
        break;
    }
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fz_guard_init();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *buf;
    bool utf8;
    gw_cmd cmd;
    gw_err err;
    cJSON *j, *o;

    if (size > FZ_GUARDED_MAX)
        return 0;
    utf8 = sl_utf8_valid(data, size);
    CHECK(utf8 == ref_utf8(data, size));
    buf = fz_guard_copy(data, size);

    memset(&cmd, 0xA5, sizeof(cmd));
    if (gw_cmd_parse(buf, size, &cmd, &err) != SL_OK) {
        CHECK(known_code(err.code));
        CHECK(memchr(err.message, '\0', sizeof(err.message)) != NULL && err.message[0] != '\0');
        CHECK(memchr(err.id, '\0', sizeof(err.id)) != NULL);
        CHECK(err.id[0] == '\0' || sl_client_id_valid(err.id));
        o = reparse(gw_frame_error(err.code, err.message, err.id), "error", true);
        CHECK(streq(jstr(o, "code"), err.code) && streq(jstr(o, "message"), err.message));
        CHECK(err.id[0] == '\0' ? jstr(o, "id") == NULL : streq(jstr(o, "id"), err.id));
        cJSON_Delete(o);
        return 0;
    }
    j = cJSON_ParseWithLength(buf, size);
    check_cmd(&cmd, j);
    cJSON_Delete(j);
    check_frames_of(&cmd, utf8);
    gw_cmd_free(&cmd);
    CHECK(cmd.root == NULL);
    gw_cmd_free(&cmd); /* twice: the second must be a no-op */
    return 0;
}

#ifdef FUZZ_SEEDS
static void seed_str(const char *name, const char *s)
{
    fz_seed(name, s, strlen(s));
}

int main(int argc, char **argv)
{
    static const unsigned char overlong[] =
        "{\"type\":\"send\",\"id\":\"c-1\",\"text\":\"\xC0\xAF\"}";
    static const unsigned char surrogate[] =
        "{\"type\":\"send\",\"id\":\"c-1\",\"text\":\"\xED\xA0\x80\"}";
    static const unsigned char cut[] =
        "{\"type\":\"send\",\"id\":\"c-1\",\"text\":\"\xF0\x9F\x99\"}";

    if (!fz_seed_args(argc, argv, "frame"))
        return 2;
    LLVMFuzzerInitialize(&argc, &argv);

    /* Every client frame of shared/PROTOCOL.md. */
    seed_str("hello", "{\"type\":\"hello\",\"token\":\"eyJhbGciOiJIUzI1NiJ9.e30.c2ln\"}");
    seed_str(
        "hello_resume",
        "{\"type\":\"hello\",\"token\":\"t\",\"resume\":{\"session\":\"S0000000000000000000000\","
        "\"resume_token\":\"v1.abc.def\",\"positions\":{\"s\":41,\"r:lobby\":97}}}");
    seed_str("send", "{\"type\":\"send\",\"id\":\"c-17\",\"room\":\"lobby\",\"text\":\"hi "
                     "@summarizer\",\"prev\":\"c-16\"}");
    seed_str("send_private", "{\"type\":\"send\",\"id\":\"c-1\",\"text\":\"hello\"}");
    seed_str("send_unicode",
             "{\"type\":\"send\",\"id\":\"a.b:c_d-1\",\"room\":null,\"prev\":null,"
             "\"text\":\"Zo\xC3\xAB \xF0\x9F\x99\x82 \\u00e9\\ud83d\\ude00 \\n\\t\\\"q\\\"\"}");
    seed_str("join", "{\"type\":\"join\",\"room\":\"lobby\"}");
    seed_str("leave", "{\"type\":\"leave\",\"room\":\"lobby\"}");
    seed_str("ack", "{\"type\":\"ack\",\"ch\":\"r:lobby\",\"seq\":120}");
    seed_str("ack_session", "{\"type\":\"ack\",\"ch\":\"s\",\"seq\":9007199254740992}");
    seed_str("cancel", "{\"type\":\"cancel\",\"id\":\"c-17\"}");
    seed_str("history", "{\"type\":\"history\",\"ch\":\"r:lobby\",\"before\":97,\"limit\":50}");
    seed_str("history_default", "{\"type\":\"history\",\"ch\":\"s\"}");
    seed_str("ping", "{\"type\":\"ping\"}");

    /* Near misses: each one is refused by exactly one rule. */
    seed_str("bad_json", "{\"type\":\"ping\"");
    seed_str("not_object", "[\"ping\"]");
    seed_str("no_type", "{\"id\":\"c-1\"}");
    seed_str("type_number", "{\"type\":7}");
    seed_str("unknown_type", "{\"type\":\"pong\"}");
    seed_str("hello_no_token", "{\"type\":\"hello\"}");
    seed_str("resume_bad_session",
             "{\"type\":\"hello\",\"token\":\"t\",\"resume\":{\"session\":\"a.b\","
             "\"resume_token\":\"x\"}}");
    seed_str("positions_bad_ch",
             "{\"type\":\"hello\",\"token\":\"t\",\"resume\":{\"session\":\"S1\","
             "\"resume_token\":\"x\",\"positions\":{\"r:a*\":1}}}");
    seed_str("positions_negative",
             "{\"type\":\"hello\",\"token\":\"t\",\"resume\":{\"session\":\"S1\","
             "\"resume_token\":\"x\",\"positions\":{\"s\":-1,\"r:x\":1.5}}}");
    seed_str("send_bad_id", "{\"type\":\"send\",\"id\":\"c 17\",\"text\":\"x\"}");
    seed_str("send_long_id", "{\"type\":\"send\",\"id\":\"0123456789012345678901234567890123456789"
                             "01234567890123456789012345\",\"text\":\"x\"}");
    seed_str("send_room_wildcard",
             "{\"type\":\"send\",\"id\":\"c-1\",\"room\":\"lob.>\",\"text\":\"x\"}");
    seed_str("send_no_text", "{\"type\":\"send\",\"id\":\"c-1\",\"text\":5}");
    seed_str("join_star", "{\"type\":\"join\",\"room\":\"*\"}");
    seed_str("ack_float", "{\"type\":\"ack\",\"ch\":\"r:lobby\",\"seq\":1e300}");
    seed_str("ack_bad_ch", "{\"type\":\"ack\",\"ch\":\"r:\",\"seq\":1}");
    seed_str("history_limit", "{\"type\":\"history\",\"ch\":\"s\",\"limit\":201}");
    seed_str("cancel_no_id", "{\"type\":\"cancel\"}");
    fz_seed("utf8_overlong", overlong, sizeof(overlong) - 1);
    fz_seed("utf8_surrogate", surrogate, sizeof(surrogate) - 1);
    fz_seed("utf8_truncated", cut, sizeof(cut) - 1);

    /* Regressions: inputs that once failed a property (tests/fuzz/crashes/). */
    seed_str("regress-send-room-case",
             "{\"type\":\"send\",\"id\":\"c-1\",\"text\":\"x\",\"Room\":null,\"room\":\"lobby\"}");
    return fz_seed_done();
}
#endif
