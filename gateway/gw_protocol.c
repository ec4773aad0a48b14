#include "gw_protocol.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sl_json.h"
#include "sl_text.h"

static void set_err(gw_err *err, const char *code, const char *msg)
{
    err->code = code;
    snprintf(err->message, sizeof(err->message), "%s", msg);
}

static const char *get_str(const cJSON *root, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* An integer-valued JSON number in [0, 2^53]: sequence numbers and limits. */
static bool get_uint(const cJSON *root, const char *key, int64_t *out)
{
    return sl_json_get_int(cJSON_GetObjectItemCaseSensitive(root, key), 0, SL_JSON_INT_MAX, out);
}

static bool has_key(const cJSON *root, const char *key)
{
    return cJSON_GetObjectItemCaseSensitive(root, key) != NULL;
}

static sl_status parse_positions(const cJSON *pos, gw_cmd *c, gw_err *err)
{
    const cJSON *it;

    if (!cJSON_IsObject(pos)) {
        set_err(err, "bad_frame", "resume.positions must be an object");
        return SL_ERR_INVAL;
    }
    c->has_positions = true;
    if (cJSON_GetArraySize(pos) > GW_POSITIONS_MAX) {
        set_err(err, "bad_frame", "too many positions");
        return SL_ERR_INVAL;
    }
    if (cJSON_GetArraySize(pos) > 0) {
        c->positions = calloc((size_t)cJSON_GetArraySize(pos), sizeof(gw_pos));
        if (c->positions == NULL) {
            set_err(err, "internal", "out of memory");
            return SL_ERR_NOMEM;
        }
    }
    cJSON_ArrayForEach(it, pos)
    {
        bool is_room;
        const char *room;
        int64_t seq;

        if (c->npositions >= GW_POSITIONS_MAX) {
            set_err(err, "bad_frame", "too many positions");
            return SL_ERR_INVAL;
        }
        if (it->string == NULL || sl_channel_parse(it->string, &is_room, &room) != SL_OK) {
            set_err(err, "bad_id", "resume.positions has an invalid channel name");
            return SL_ERR_INVAL;
        }
        if (!sl_json_get_int(it, 0, SL_JSON_INT_MAX, &seq)) {
            set_err(err, "bad_frame", "positions must be non-negative integers");
            return SL_ERR_INVAL;
        }
        snprintf(c->positions[c->npositions].ch, GW_CH_MAX, "%s", it->string);
        c->positions[c->npositions].seq = seq;
        c->npositions++;
    }
    return SL_OK;
}

/* The optional "id" of join, leave and history: a client id, echoed in
 * the answers and errors so a client can match them to the request. */
static bool parse_opt_id(const cJSON *root, gw_cmd *c, gw_err *err)
{
    if (!has_key(root, "id") || cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(root, "id")))
        return true;
    c->id = get_str(root, "id");
    if (!sl_client_id_valid(c->id)) {
        set_err(err, "bad_id", "id must be 1-64 chars of [A-Za-z0-9_.:-]");
        c->id = NULL;
        return false;
    }
    snprintf(err->id, sizeof(err->id), "%s", c->id);
    return true;
}

static sl_status parse_typed(const char *type, gw_cmd *c, gw_err *err)
{
    cJSON *root = c->root;

    if (strcmp(type, "hello") == 0) {
        const cJSON *resume = cJSON_GetObjectItemCaseSensitive(root, "resume");
        c->type = GW_CMD_HELLO;
        c->token = get_str(root, "token");
        if (c->token == NULL) {
            set_err(err, "unauthorized", "hello needs a token");
            return SL_ERR_INVAL;
        }
        if (resume != NULL && !cJSON_IsNull(resume)) {
            const cJSON *pos = cJSON_GetObjectItemCaseSensitive(resume, "positions");
            c->resume = true;
            c->resume_session = get_str(resume, "session");
            c->resume_token = get_str(resume, "resume_token");
            if (!cJSON_IsObject(resume) || !sl_id_valid(c->resume_session) ||
                c->resume_token == NULL) {
                set_err(err, "unauthorized", "resume needs a session and a resume_token");
                return SL_ERR_INVAL;
            }
            if (pos != NULL && !cJSON_IsNull(pos))
                return parse_positions(pos, c, err);
        }
        return SL_OK;
    }
    if (strcmp(type, "send") == 0) {
        c->type = GW_CMD_SEND;
        c->id = get_str(root, "id");
        if (!sl_client_id_valid(c->id)) {
            set_err(err, "bad_id", "send.id must be 1-64 chars of [A-Za-z0-9_.:-]");
            return SL_ERR_INVAL;
        }
        snprintf(err->id, sizeof(err->id), "%s", c->id);
        c->text = get_str(root, "text");
        if (c->text == NULL) {
            set_err(err, "bad_frame", "send.text must be a string");
            return SL_ERR_INVAL;
        }
        if (has_key(root, "room") &&
            !cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(root, "room"))) {
            c->room = get_str(root, "room");
            if (!sl_id_valid(c->room)) {
                set_err(err, "bad_id", "room must be 1-64 chars of [A-Za-z0-9_-]");
                return SL_ERR_INVAL;
            }
        }
        if (has_key(root, "prev") &&
            !cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(root, "prev"))) {
            c->prev = get_str(root, "prev");
            if (!sl_client_id_valid(c->prev)) {
                set_err(err, "bad_id", "send.prev must be 1-64 chars of [A-Za-z0-9_.:-]");
                return SL_ERR_INVAL;
            }
        }
        return SL_OK;
    }
    if (strcmp(type, "join") == 0 || strcmp(type, "leave") == 0) {
        c->type = type[0] == 'j' ? GW_CMD_JOIN : GW_CMD_LEAVE;
        if (!parse_opt_id(root, c, err))
            return SL_ERR_INVAL;
        c->room = get_str(root, "room");
        if (!sl_id_valid(c->room)) {
            set_err(err, "bad_id", "room must be 1-64 chars of [A-Za-z0-9_-]");
            return SL_ERR_INVAL;
        }
        return SL_OK;
    }
    if (strcmp(type, "ack") == 0 || strcmp(type, "history") == 0) {
        bool is_room;
        const char *room;
        if (type[0] == 'h' && !parse_opt_id(root, c, err))
            return SL_ERR_INVAL;
        c->ch = get_str(root, "ch");
        if (c->ch == NULL || sl_channel_parse(c->ch, &is_room, &room) != SL_OK) {
            set_err(err, "bad_id", "ch must be \"s\" or \"r:<room>\"");
            return SL_ERR_INVAL;
        }
        if (type[0] == 'a') {
            c->type = GW_CMD_ACK;
            if (!get_uint(root, "seq", &c->seq)) {
                set_err(err, "bad_frame", "ack.seq must be a non-negative integer");
                return SL_ERR_INVAL;
            }
            return SL_OK;
        }
        c->type = GW_CMD_HISTORY;
        c->before = 0;
        c->limit = 50;
        if (has_key(root, "before") && !get_uint(root, "before", &c->before)) {
            set_err(err, "bad_frame", "history.before must be a non-negative integer");
            return SL_ERR_INVAL;
        }
        if (has_key(root, "limit") &&
            (!get_uint(root, "limit", &c->limit) || c->limit < 1 || c->limit > 200)) {
            set_err(err, "bad_frame", "history.limit must be 1..200");
            return SL_ERR_INVAL;
        }
        return SL_OK;
    }
    if (strcmp(type, "cancel") == 0) {
        c->type = GW_CMD_CANCEL;
        c->id = get_str(root, "id");
        if (!sl_client_id_valid(c->id)) {
            set_err(err, "bad_id", "cancel.id must be 1-64 chars of [A-Za-z0-9_.:-]");
            return SL_ERR_INVAL;
        }
        return SL_OK;
    }
    if (strcmp(type, "ping") == 0) {
        c->type = GW_CMD_PING;
        return SL_OK;
    }
    set_err(err, "unknown_type", "unknown frame type");
    return SL_ERR_INVAL;
}

sl_status gw_cmd_parse(const char *buf, size_t len, gw_cmd *out, gw_err *err)
{
    gw_cmd c;
    const char *type, *end = NULL;
    sl_status st;

    memset(&c, 0, sizeof(c));
    memset(err, 0, sizeof(*err));
    c.root = cJSON_ParseWithLengthOpts(buf, len, &end, 0);
    /* cJSON stops after the first value: anything but whitespace after it
     * makes the frame invalid JSON. */
    while (c.root != NULL && end != NULL && end < buf + len &&
           (*end == ' ' || *end == '\t' || *end == '\n' || *end == '\r'))
        end++;
    if (c.root == NULL || end != buf + len) {
        cJSON_Delete(c.root);
        set_err(err, "bad_frame", "frame is not valid JSON");
        return SL_ERR_INVAL;
    }
    if (sl_json_has_nul_escape(buf, len)) {
        cJSON_Delete(c.root);
        set_err(err, "bad_frame", "strings must not contain NUL (\\u0000)");
        return SL_ERR_INVAL;
    }
    if (!cJSON_IsObject(c.root)) {
        set_err(err, "bad_frame", "frame must be a JSON object");
        st = SL_ERR_INVAL;
        goto cleanup;
    }
    type = get_str(c.root, "type");
    if (type == NULL) {
        set_err(err, has_key(c.root, "type") ? "unknown_type" : "bad_frame",
                "frame needs a string \"type\"");
        st = SL_ERR_INVAL;
        goto cleanup;
    }
    st = parse_typed(type, &c, err);
cleanup:
    if (st != SL_OK) {
        cJSON_Delete(c.root);
        free(c.positions);
        return st;
    }
    *out = c;
    return SL_OK;
}

void gw_cmd_free(gw_cmd *c)
{
    if (c != NULL) {
        cJSON_Delete(c->root);
        free(c->positions);
        c->root = NULL;
        c->positions = NULL;
        c->npositions = 0;
    }
}

static char *print_and_free(cJSON *o)
{
    char *s = o ? cJSON_PrintUnformatted(o) : NULL;
    cJSON_Delete(o);
    return s;
}

static cJSON *typed(const char *type)
{
    cJSON *o = cJSON_CreateObject();
    if (o != NULL)
        cJSON_AddStringToObject(o, "type", type);
    return o;
}

char *gw_frame_error(const char *code, const char *message, const char *id)
{
    cJSON *o = typed("error");
    if (o == NULL)
        return NULL;
    cJSON_AddStringToObject(o, "code", code);
    cJSON_AddStringToObject(o, "message", message);
    if (id != NULL && id[0] != '\0')
        cJSON_AddStringToObject(o, "id", id);
    return print_and_free(o);
}

char *gw_frame_accepted(const char *id, const char *event, bool duplicate)
{
    cJSON *o = typed("accepted");
    if (o == NULL)
        return NULL;
    cJSON_AddStringToObject(o, "id", id);
    cJSON_AddStringToObject(o, "event", event);
    cJSON_AddBoolToObject(o, "duplicate", duplicate);
    return print_and_free(o);
}

char *gw_frame_busy(const char *id, const char *reason, int64_t retry_after_ms)
{
    cJSON *o = typed("busy");
    if (o == NULL)
        return NULL;
    if (id != NULL)
        cJSON_AddStringToObject(o, "id", id);
    cJSON_AddStringToObject(o, "reason", reason);
    sl_json_add_int(o, "retry_after_ms", retry_after_ms);
    return print_and_free(o);
}

char *gw_frame_welcome(const char *session, const char *resume_token, int64_t heartbeat_ms,
                       bool resumed, int64_t max_frame, double rate, double burst)
{
    cJSON *o = typed("welcome");
    cJSON *lim;
    if (o == NULL)
        return NULL;
    cJSON_AddStringToObject(o, "session", session);
    cJSON_AddStringToObject(o, "resume_token", resume_token);
    sl_json_add_int(o, "heartbeat_ms", heartbeat_ms);
    cJSON_AddBoolToObject(o, "resumed", resumed);
    lim = cJSON_AddObjectToObject(o, "limits");
    if (lim != NULL) {
        sl_json_add_int(lim, "max_frame", max_frame);
        cJSON_AddNumberToObject(lim, "rate", rate);
        cJSON_AddNumberToObject(lim, "burst", burst);
    }
    return print_and_free(o);
}

char *gw_frame_resume_token(const char *resume_token)
{
    cJSON *o = typed("resume_token");
    if (o == NULL)
        return NULL;
    cJSON_AddStringToObject(o, "resume_token", resume_token);
    return print_and_free(o);
}

char *gw_frame_gap(const char *ch, int64_t from, int64_t to)
{
    cJSON *o = typed("gap");
    if (o == NULL)
        return NULL;
    cJSON_AddStringToObject(o, "ch", ch);
    sl_json_add_int(o, "from", from);
    sl_json_add_int(o, "to", to);
    return print_and_free(o);
}

char *gw_frame_reconnect(int64_t after_ms)
{
    cJSON *o = typed("reconnect");
    if (o == NULL)
        return NULL;
    sl_json_add_int(o, "after_ms", after_ms);
    return print_and_free(o);
}

char *gw_frame_left(const char *room)
{
    cJSON *o = typed("left");
    char ch[GW_CH_MAX];
    if (o == NULL)
        return NULL;
    snprintf(ch, sizeof(ch), "r:%s", room);
    cJSON_AddStringToObject(o, "room", room);
    cJSON_AddStringToObject(o, "ch", ch);
    return print_and_free(o);
}

char *gw_frame_pong(void)
{
    return strdup("{\"type\":\"pong\"}");
}

char *gw_frame_joined(const char *room, uint64_t seq, cJSON *members, bool truncated)
{
    cJSON *o = typed("joined");
    char ch[GW_CH_MAX];
    if (o == NULL) {
        cJSON_Delete(members);
        return NULL;
    }
    snprintf(ch, sizeof(ch), "r:%s", room);
    cJSON_AddStringToObject(o, "room", room);
    cJSON_AddStringToObject(o, "ch", ch);
    sl_json_add_int(o, "seq", (int64_t)seq);
    cJSON_AddItemToObject(o, "members", members ? members : cJSON_CreateArray());
    if (truncated)
        cJSON_AddBoolToObject(o, "members_truncated", 1);
    return print_and_free(o);
}

char *gw_frame_joined_raw(const char *room, uint64_t seq, const char *members_json, bool truncated)
{
    size_t len = 128 + 2 * strlen(room) + strlen(members_json);
    char *out = malloc(len);

    if (out == NULL)
        return NULL;
    /* room is a validated id and members_json valid JSON: no escaping. The
     * same fields in the same order as gw_frame_joined. */
    snprintf(out, len,
             "{\"type\":\"joined\",\"room\":\"%s\",\"ch\":\"r:%s\",\"seq\":%" PRIu64
             ",\"members\":%s%s}",
             room, room, seq, members_json, truncated ? ",\"members_truncated\":true" : "");
    return out;
}

char *gw_frame_history(const char *ch, char *const *events, size_t n, bool more,
                       int64_t next_before, const char *id)
{
    size_t len = 128 + strlen(ch) + (id != NULL ? strlen(id) : 0);
    char *out, *p;

    for (size_t i = 0; i < n; i++)
        len += strlen(events[i]) + 1;
    out = malloc(len);
    if (out == NULL)
        return NULL;
    /* ch is a validated channel name and id a validated client id: no
     * escaping needed. */
    p = out + sprintf(out, "{\"type\":\"history\",\"ch\":\"%s\",", ch);
    if (id != NULL)
        p += sprintf(p, "\"id\":\"%s\",", id);
    p = stpcpy(p, "\"events\":[");
    for (size_t i = 0; i < n; i++) {
        size_t l = strlen(events[i]);
        if (i > 0)
            *p++ = ',';
        memcpy(p, events[i], l);
        p += l;
    }
    if (more)
        sprintf(p, "],\"more\":true,\"next_before\":%lld}", (long long)next_before);
    else
        strcpy(p, "],\"more\":false}");
    return out;
}

static void add_str_if(cJSON *o, const char *key, const char *v)
{
    if (v != NULL && v[0] != '\0')
        cJSON_AddStringToObject(o, key, v);
}

/* Every final reply says what it cost; a writer that sent no usage (an
 * older worker) counted nothing, which is reported as an estimate of 0. */
static void add_usage(cJSON *o, const Sluice__Usage *u)
{
    cJSON *j = cJSON_AddObjectToObject(o, "usage");

    if (j == NULL)
        return;
    sl_json_add_int(j, "input_tokens", u != NULL ? u->input_tokens : 0);
    sl_json_add_int(j, "output_tokens", u != NULL ? u->output_tokens : 0);
    if (u == NULL || u->estimated)
        cJSON_AddBoolToObject(j, "estimated", 1);
}

char *gw_frame_event(const Sluice__Envelope *e, const char *ch, uint64_t seq)
{
    cJSON *o;

    if (e->body_case == SLUICE__ENVELOPE__BODY__NOT_SET ||
        e->body_case == SLUICE__ENVELOPE__BODY_WORK ||
        e->body_case == SLUICE__ENVELOPE__BODY_CANCEL)
        return NULL;
    o = typed("event");
    if (o == NULL)
        return NULL;
    cJSON_AddStringToObject(o, "ch", ch);
    sl_json_add_int(o, "seq", (int64_t)seq);
    switch (e->body_case) {
    case SLUICE__ENVELOPE__BODY_MESSAGE: {
        const Sluice__ClientMessage *m = e->message;
        cJSON *from;
        cJSON_AddStringToObject(o, "kind", "message");
        cJSON_AddStringToObject(o, "id", e->message_id);
        cJSON_AddStringToObject(o, "event", e->event_id);
        from = cJSON_AddObjectToObject(o, "from");
        if (from != NULL) {
            if (m->agent[0] != '\0')
                cJSON_AddStringToObject(from, "agent", m->agent);
            else
                cJSON_AddStringToObject(from, "user", m->user);
            if (m->server)
                cJSON_AddBoolToObject(from, "server", 1);
        }
        cJSON_AddStringToObject(o, "text", m->text);
        sl_json_add_int(o, "ts", e->ts_unix_ns / 1000000);
        break;
    }
    case SLUICE__ENVELOPE__BODY_TOKEN: {
        const Sluice__TokenChunk *t = e->token;
        cJSON_AddStringToObject(o, "kind", "token");
        cJSON_AddStringToObject(o, "reply", t->reply_id);
        cJSON_AddStringToObject(o, "to", t->to);
        cJSON_AddStringToObject(o, "agent", t->agent);
        sl_json_add_int(o, "attempt", t->attempt);
        cJSON_AddStringToObject(o, "text", t->text);
        break;
    }
    case SLUICE__ENVELOPE__BODY_REPLY: {
        const Sluice__Reply *r = e->reply;
        cJSON_AddStringToObject(o, "kind", "reply");
        cJSON_AddStringToObject(o, "reply", r->reply_id);
        cJSON_AddStringToObject(o, "to", r->to);
        cJSON_AddStringToObject(o, "agent", r->agent);
        cJSON_AddStringToObject(o, "text", r->text);
        sl_json_add_int(o, "attempt", r->attempt);
        cJSON_AddBoolToObject(o, "final", 1);
        if (r->degraded)
            cJSON_AddBoolToObject(o, "degraded", 1);
        if (r->partial)
            cJSON_AddBoolToObject(o, "partial", 1);
        if (r->cancelled)
            cJSON_AddBoolToObject(o, "cancelled", 1);
        add_usage(o, r->usage);
        break;
    }
    case SLUICE__ENVELOPE__BODY_PRESENCE: {
        const Sluice__Presence *p = e->presence;
        cJSON_AddStringToObject(o, "kind", "presence");
        if (p->n_changes == 0) {
            cJSON_AddStringToObject(o, "action", p->action);
            cJSON_AddStringToObject(o, "user", p->user);
            cJSON_AddStringToObject(o, "session", p->session);
            break;
        }
        /* Several changes coalesced by the gateway, in order. */
        {
            cJSON *arr = cJSON_AddArrayToObject(o, "changes");
            for (size_t i = 0; arr != NULL && i < p->n_changes; i++) {
                cJSON *it = cJSON_CreateObject();
                if (it == NULL || !cJSON_AddItemToArray(arr, it)) {
                    cJSON_Delete(it);
                    break;
                }
                cJSON_AddStringToObject(it, "action", p->changes[i]->action);
                cJSON_AddStringToObject(it, "user", p->changes[i]->user);
                cJSON_AddStringToObject(it, "session", p->changes[i]->session);
            }
        }
        break;
    }
    case SLUICE__ENVELOPE__BODY_RECEIPT: {
        const Sluice__Receipt *r = e->receipt;
        cJSON_AddStringToObject(o, "kind", "receipt");
        cJSON_AddStringToObject(o, "to", r->to);
        cJSON_AddStringToObject(o, "user", r->user);
        cJSON_AddStringToObject(o, "state", r->state);
        break;
    }
    case SLUICE__ENVELOPE__BODY_BUSY: {
        const Sluice__Busy *b = e->busy;
        cJSON_AddStringToObject(o, "kind", "busy");
        cJSON_AddStringToObject(o, "to", b->to);
        add_str_if(o, "agent", b->agent);
        cJSON_AddStringToObject(o, "reason", b->reason);
        sl_json_add_int(o, "retry_after_ms", b->retry_after_ms);
        break;
    }
    default:
        break;
    }
    return print_and_free(o);
}
