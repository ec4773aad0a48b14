/* libFuzzer target: envelope decoding (common/sl_codec.c) and the event
 * frames the gateway builds from what decodes (gateway/gw_protocol.c).
 *
 * Input: the bytes of one NATS message body, as read from SLUICE_OUT. They
 * are copied so that they end right before a PROT_NONE page, so an
 * over-read faults even inside the (uninstrumented) protobuf-c library.
 *
 * Properties checked on every input that sl_envelope_decode() accepts:
 *   - Re-encoding is a fixed point: with k = encode(known fields of e),
 *     encode(decode(k)) equals k byte for byte, and e and decode(k) give
 *     the same frame.
 *   - gw_frame_event() returns NULL exactly for the bodies clients never
 *     see (none, work, cancel); otherwise a JSON object of type "event" on
 *     the given channel and sequence, whose kind matches the body and whose
 *     fields carry the envelope's strings and numbers back unchanged.
 *   - When every string of the envelope is valid UTF-8, the frame is valid
 *     UTF-8 too (a browser closes the socket on anything else).
 *   - A history frame holding the event parses and holds the same event.
 *
 * Built with -DFUZZ_SEEDS, this file is instead a program that writes the
 * seed corpus (one encoded envelope per body kind, plus near misses) into
 * the directory given as its argument, running each seed through the
 * checks. */
#include <cJSON.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_ref.h"
#include "gw_protocol.h"
#include "sl_codec.h"
#include "sl_subject.h"
#include "sl_text.h"

/* The boolean member key: absent counts as false, as the builder omits it. */
static bool jflag(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    CHECK(v == NULL || cJSON_IsBool(v));
    return cJSON_IsTrue(v);
}

/* Every string of the envelope, header and body, is valid UTF-8. */
static bool all_utf8(const Sluice__Envelope *e)
{
    const char *hdr[] = {e->event_id,   e->tenant,        e->session, e->client_id,
                         e->message_id, e->prev_event_id, e->trace_id};
    const char *body[12] = {NULL};

    for (size_t i = 0; i < sizeof(hdr) / sizeof(hdr[0]); i++) {
        if (!ref_utf8_str(hdr[i]))
            return false;
    }
    switch (e->body_case) {
    case SLUICE__ENVELOPE__BODY_MESSAGE:
        body[0] = e->message->room, body[1] = e->message->text, body[2] = e->message->user;
        body[3] = e->message->agent;
        break;
    case SLUICE__ENVELOPE__BODY_TOKEN:
        body[0] = e->token->reply_id, body[1] = e->token->to, body[2] = e->token->agent;
        body[3] = e->token->text;
        break;
    case SLUICE__ENVELOPE__BODY_REPLY:
        body[0] = e->reply->reply_id, body[1] = e->reply->to, body[2] = e->reply->agent;
        body[3] = e->reply->text;
        break;
    case SLUICE__ENVELOPE__BODY_PRESENCE:
        body[0] = e->presence->action, body[1] = e->presence->user;
        body[2] = e->presence->session, body[3] = e->presence->room;
        for (size_t i = 0; i < e->presence->n_changes; i++) {
            const Sluice__PresenceChange *pc = e->presence->changes[i];
            if (!ref_utf8_str(pc->action) || !ref_utf8_str(pc->user) || !ref_utf8_str(pc->session))
                return false;
        }
        break;
    case SLUICE__ENVELOPE__BODY_RECEIPT:
        body[0] = e->receipt->to, body[1] = e->receipt->user, body[2] = e->receipt->state;
        break;
    case SLUICE__ENVELOPE__BODY_BUSY:
        body[0] = e->busy->to, body[1] = e->busy->agent, body[2] = e->busy->reason;
        break;
    default:
        break;
    }
    for (size_t i = 0; i < sizeof(body) / sizeof(body[0]); i++) {
        if (body[i] != NULL && !ref_utf8_str(body[i]))
            return false;
    }
    return true;
}

/* The event frame o carries e's body. */
static void check_body(const cJSON *o, const Sluice__Envelope *e)
{
    const char *kind = jstr(o, "kind");

    switch (e->body_case) {
    case SLUICE__ENVELOPE__BODY_MESSAGE: {
        const Sluice__ClientMessage *m = e->message;
        const cJSON *from = cJSON_GetObjectItemCaseSensitive(o, "from");
        CHECK(streq(kind, "message"));
        CHECK(streq(jstr(o, "id"), e->message_id) && streq(jstr(o, "event"), e->event_id));
        CHECK(streq(jstr(o, "text"), m->text));
        CHECK(num_eq(jnum(o, "ts"), (double)(e->ts_unix_ns / 1000000)));
        CHECK(cJSON_IsObject(from) && cJSON_GetArraySize(from) == 1 + (m->server ? 1 : 0));
        CHECK(jflag(from, "server") == m->server);
        if (m->agent[0] != '\0')
            CHECK(streq(jstr(from, "agent"), m->agent));
        else
            CHECK(streq(jstr(from, "user"), m->user));
        break;
    }
    case SLUICE__ENVELOPE__BODY_TOKEN: {
        const Sluice__TokenChunk *t = e->token;
        CHECK(streq(kind, "token"));
        CHECK(streq(jstr(o, "reply"), t->reply_id) && streq(jstr(o, "to"), t->to));
        CHECK(streq(jstr(o, "agent"), t->agent) && streq(jstr(o, "text"), t->text));
        CHECK(jnum(o, "attempt") == (double)t->attempt);
        break;
    }
    case SLUICE__ENVELOPE__BODY_REPLY: {
        const Sluice__Reply *r = e->reply;
        CHECK(streq(kind, "reply"));
        CHECK(streq(jstr(o, "reply"), r->reply_id) && streq(jstr(o, "to"), r->to));
        CHECK(streq(jstr(o, "agent"), r->agent) && streq(jstr(o, "text"), r->text));
        CHECK(jnum(o, "attempt") == (double)r->attempt);
        CHECK(jflag(o, "final"));
        CHECK(jflag(o, "degraded") == r->degraded && jflag(o, "partial") == r->partial);
        CHECK(jflag(o, "cancelled") == r->cancelled);
        break;
    }
    case SLUICE__ENVELOPE__BODY_PRESENCE:
        CHECK(streq(kind, "presence"));
        if (e->presence->n_changes == 0) {
            CHECK(streq(jstr(o, "action"), e->presence->action));
            CHECK(streq(jstr(o, "user"), e->presence->user));
            CHECK(streq(jstr(o, "session"), e->presence->session));
        } else {
            const cJSON *chg = cJSON_GetObjectItemCaseSensitive(o, "changes");
            CHECK(cJSON_GetArraySize(chg) == (int)e->presence->n_changes);
            for (size_t i = 0; i < e->presence->n_changes; i++) {
                const cJSON *it = cJSON_GetArrayItem(chg, (int)i);
                CHECK(streq(jstr(it, "action"), e->presence->changes[i]->action));
                CHECK(streq(jstr(it, "user"), e->presence->changes[i]->user));
                CHECK(streq(jstr(it, "session"), e->presence->changes[i]->session));
            }
        }
        break;
    case SLUICE__ENVELOPE__BODY_RECEIPT:
        CHECK(streq(kind, "receipt"));
        CHECK(streq(jstr(o, "to"), e->receipt->to) && streq(jstr(o, "user"), e->receipt->user));
        CHECK(streq(jstr(o, "state"), e->receipt->state));
        break;
    case SLUICE__ENVELOPE__BODY_BUSY:
        CHECK(streq(kind, "busy"));
        CHECK(streq(jstr(o, "to"), e->busy->to) && streq(jstr(o, "reason"), e->busy->reason));
        if (e->busy->agent[0] != '\0')
            CHECK(streq(jstr(o, "agent"), e->busy->agent));
        else
            CHECK(cJSON_GetObjectItemCaseSensitive(o, "agent") == NULL);
        CHECK(jnum(o, "retry_after_ms") == (double)e->busy->retry_after_ms);
        break;
    default:
        CHECK(!"a body clients never see produced a frame");
    }
}

/* Builds and checks the frame of e on its channel; returns the frame text
 * (the caller frees) or NULL for a body clients never see. */
static char *check_event(const Sluice__Envelope *e)
{
    bool hidden = e->body_case == SLUICE__ENVELOPE__BODY__NOT_SET ||
                  e->body_case == SLUICE__ENVELOPE__BODY_WORK ||
                  e->body_case == SLUICE__ENVELOPE__BODY_CANCEL;
    char ch[GW_CH_MAX] = "s";
    uint64_t seq = (uint64_t)e->ts_unix_ns & ((UINT64_C(1) << 53) - 1);
    char *text, *hist;
    cJSON *o, *h;

    if (e->body_case == SLUICE__ENVELOPE__BODY_MESSAGE && sl_id_valid(e->message->room))
        snprintf(ch, sizeof(ch), "r:%s", e->message->room);
    text = gw_frame_event(e, ch, seq);
    CHECK((text == NULL) == hidden);
    if (text == NULL)
        return NULL;
    if (all_utf8(e)) {
        CHECK(ref_utf8_str(text));
        CHECK(sl_utf8_valid(text, strlen(text)));
    }
    o = cJSON_Parse(text);
    CHECK(cJSON_IsObject(o));
    CHECK(streq(jstr(o, "type"), "event") && streq(jstr(o, "ch"), ch));
    CHECK(num_eq(jnum(o, "seq"), (double)seq));
    check_body(o, e);

    hist = gw_frame_history(ch, &text, 1, false, 0, NULL);
    CHECK(hist != NULL);
    h = cJSON_Parse(hist);
    free(hist);
    CHECK(cJSON_IsObject(h) && streq(jstr(h, "type"), "history"));
    CHECK(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(h, "events")) == 1);
    CHECK(cJSON_Compare(cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(h, "events"), 0), o,
                        true));
    cJSON_Delete(h);
    cJSON_Delete(o);
    return text;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fz_guard_init();
    return 0;
}

/* Encodes e without the unknown fields it kept (at the top, in its body
 * and in the messages nested in the body): protobuf-c 1.4.1 accepts field number 0 when its tag is
 * a non-minimal varint ("82 00") but refuses the minimal "02" it writes back, so only the known
 * fields are expected to round-trip. */
static void encode_known(const Sluice__Envelope *e, uint8_t **out, size_t *len)
{
    Sluice__Envelope top = *e;
    union {
        ProtobufCMessage base;
        Sluice__ClientMessage message;
        Sluice__WorkRequest work;
        Sluice__TokenChunk token;
        Sluice__Reply reply;
        Sluice__Presence presence;
        Sluice__Receipt receipt;
        Sluice__Busy busy;
        Sluice__Cancel cancel;
    } body;
    Sluice__Usage usage;
    Sluice__PresenceChange *changes = NULL, **change_ptrs = NULL;

    top.base.n_unknown_fields = 0;
    top.base.unknown_fields = NULL;
    if (e->body_case != SLUICE__ENVELOPE__BODY__NOT_SET) {
        const ProtobufCMessage *b = (const ProtobufCMessage *)e->message;
        CHECK(b != NULL && b->descriptor->sizeof_message <= sizeof(body));
        memcpy(&body, b, b->descriptor->sizeof_message);
        body.base.n_unknown_fields = 0;
        body.base.unknown_fields = NULL;
        top.message = &body.message; /* any member of the oneof: they share storage */
    }
    /* The messages nested in a body keep unknown fields too. */
    if (e->body_case == SLUICE__ENVELOPE__BODY_REPLY && e->reply->usage != NULL) {
        usage = *e->reply->usage;
        usage.base.n_unknown_fields = 0;
        usage.base.unknown_fields = NULL;
        body.reply.usage = &usage;
    }
    if (e->body_case == SLUICE__ENVELOPE__BODY_PRESENCE && e->presence->n_changes > 0) {
        size_t n = e->presence->n_changes;
        changes = calloc(n, sizeof(*changes));
        change_ptrs = calloc(n, sizeof(*change_ptrs));
        CHECK(changes != NULL && change_ptrs != NULL);
        for (size_t i = 0; i < n; i++) {
            changes[i] = *e->presence->changes[i];
            changes[i].base.n_unknown_fields = 0;
            changes[i].base.unknown_fields = NULL;
            change_ptrs[i] = &changes[i];
        }
        body.presence.changes = change_ptrs;
    }
    CHECK(sl_envelope_encode(&top, out, len) == SL_OK);
    free(changes);
    free(change_ptrs);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    Sluice__Envelope *e = NULL, *e2 = NULL;
    uint8_t *b1 = NULL, *b2 = NULL;
    size_t n1 = 0, n2 = 0;
    char *f1, *f2;

    if (size > FZ_GUARDED_MAX)
        return 0;
    if (sl_envelope_decode(fz_guard_copy(data, size), size, &e) != SL_OK)
        return 0;
    CHECK(e != NULL);
    encode_known(e, &b1, &n1);
    CHECK(sl_envelope_decode(b1, n1, &e2) == SL_OK);
    CHECK(e2->base.n_unknown_fields == 0);
    CHECK(sl_envelope_encode(e2, &b2, &n2) == SL_OK);
    CHECK(n1 == n2 && memcmp(b1, b2, n1) == 0);
    CHECK(e2->body_case == e->body_case);

    f1 = check_event(e);
    f2 = check_event(e2);
    CHECK((f1 == NULL) == (f2 == NULL));
    CHECK(f1 == NULL || strcmp(f1, f2) == 0);
    free(f1);
    free(f2);
    free(b1);
    free(b2);
    sl_envelope_free(e);
    sl_envelope_free(e2);
    sl_envelope_free(NULL);
    return 0;
}

#ifdef FUZZ_SEEDS
/* Encodes e and writes it as a seed, then a copy cut one byte short. */
static void seed_env(const char *name, const Sluice__Envelope *e)
{
    uint8_t *buf = NULL;
    size_t len = 0;
    char cut[256];

    CHECK(sl_envelope_encode(e, &buf, &len) == SL_OK);
    fz_seed(name, buf, len);
    if (len > 0) {
        snprintf(cut, sizeof(cut), "%s_cut", name);
        fz_seed(cut, buf, len - 1);
    }
    free(buf);
}

/* The causal header the orchestrator and worker fill in. */
static void header(Sluice__Envelope *e)
{
    sluice__envelope__init(e);
    e->event_id = "01HX7Z9Q2M4N5P6R7S8T9V0W1X";
    e->tenant = "acme";
    e->session = "S0000000000000000000000";
    e->client_id = "c-17";
    e->message_id = "c-17";
    e->prev_event_id = "c-16";
    e->ts_unix_ns = 1700000000123456789LL;
    e->trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    e->hops = 1;
}

int main(int argc, char **argv)
{
    static const uint8_t bad_wire[] = {0x0f, 0x01};            /* field 1, wire type 7 */
    static const uint8_t long_len[] = {0x0a, 0xff, 0x7f, 'a'}; /* length past the end */
    static const uint8_t bad_utf8[] = {0xa2, 0x01, 0x04, 0x12, 0x02, 0xc0, 0xaf}; /* message.text */
    Sluice__Envelope e;
    Sluice__ClientMessage m;
    Sluice__WorkRequest w;
    Sluice__TokenChunk t;
    Sluice__Reply r;
    Sluice__Presence p;
    Sluice__Receipt rc;
    Sluice__Busy b;
    Sluice__Cancel c;

    if (!fz_seed_args(argc, argv, "envelope"))
        return 2;
    LLVMFuzzerInitialize(&argc, &argv);

    header(&e);
    seed_env("header_only", &e);

    sluice__client_message__init(&m);
    m.room = "lobby";
    m.text = "hi @summarizer \xF0\x9F\x99\x82 \"quoted\"\n";
    m.user = "u1";
    e.body_case = SLUICE__ENVELOPE__BODY_MESSAGE;
    e.message = &m;
    seed_env("message_room", &e);
    m.server = true;
    m.no_agents = true;
    m.user = "release-bot";
    seed_env("message_server", &e);
    m.server = false;
    m.no_agents = false;
    m.room = "";
    m.user = "";
    m.agent = "summarizer";
    seed_env("message_agent", &e);

    header(&e);
    sluice__work_request__init(&w);
    w.job_id = "j-1";
    w.agent = "summarizer";
    w.model = "echo";
    w.system_prompt = "Summarize.";
    w.fallback = "Sorry.";
    w.text = "hi";
    w.user = "u1";
    w.room = "lobby";
    w.to = "c-17";
    w.reply_id = "r-1";
    w.deadline_ms = 10000;
    e.body_case = SLUICE__ENVELOPE__BODY_WORK;
    e.work = &w;
    seed_env("work", &e);

    header(&e);
    sluice__token_chunk__init(&t);
    t.reply_id = "r-1";
    t.to = "c-17";
    t.agent = "summarizer";
    t.attempt = 2;
    t.text = "Hel";
    t.index = 3;
    e.body_case = SLUICE__ENVELOPE__BODY_TOKEN;
    e.token = &t;
    seed_env("token", &e);

    header(&e);
    sluice__reply__init(&r);
    r.reply_id = "r-1";
    r.to = "c-17";
    r.agent = "summarizer";
    r.text = "Hello there.";
    r.attempt = 1;
    r.degraded = 1;
    r.partial = 1;
    r.cancelled = 1;
    e.body_case = SLUICE__ENVELOPE__BODY_REPLY;
    e.reply = &r;
    seed_env("reply", &e);

    header(&e);
    sluice__presence__init(&p);
    p.action = "join";
    p.user = "u1";
    p.session = "S0000000000000000000000";
    p.room = "lobby";
    e.body_case = SLUICE__ENVELOPE__BODY_PRESENCE;
    e.presence = &p;
    seed_env("presence", &e);

    header(&e);
    sluice__receipt__init(&rc);
    rc.to = "c-17";
    rc.user = "u2";
    rc.state = "delivered";
    e.body_case = SLUICE__ENVELOPE__BODY_RECEIPT;
    e.receipt = &rc;
    seed_env("receipt", &e);

    header(&e);
    sluice__busy__init(&b);
    b.to = "c-17";
    b.agent = "summarizer";
    b.reason = "tenant_queue_full";
    b.retry_after_ms = 800;
    e.body_case = SLUICE__ENVELOPE__BODY_BUSY;
    e.busy = &b;
    seed_env("busy", &e);

    header(&e);
    sluice__cancel__init(&c);
    c.message_id = "c-17";
    c.user = "u1";
    e.body_case = SLUICE__ENVELOPE__BODY_CANCEL;
    e.cancel = &c;
    seed_env("cancel", &e);

    fz_seed("empty", "", 0);
    fz_seed("bad_wire_type", bad_wire, sizeof(bad_wire));
    fz_seed("length_past_end", long_len, sizeof(long_len));
    fz_seed("message_bad_utf8", bad_utf8, sizeof(bad_utf8));
    return fz_seed_done();
}
#endif
