/* The server API's operations that need NATS: the io jobs that publish,
 * read presence and read history (io threads), and their answers back on
 * the loop thread, to the HTTP connection that asked (gw__api_respond). */
#include "gw_api_int.h"

void gw__api_respond(api_pss *p, int status, char *body)
{
    free(p->resp);
    p->answered = true;
    p->status = status;
    p->resp = body != NULL ? body : gw_api_error_body("internal", "out of memory");
    if (p->resp == NULL)
        p->close = true;
    lws_callback_on_writable(p->wsi);
}

/* ---------- io jobs ---------- */

static void job_free(void *arg)
{
    api_job *j = arg;

    gw_api_req_clear(&j->req);
    free(j->resp);
    free(j);
}

/* Loop thread: the answer of an io job. */
static void job_done(void *arg)
{
    api_job *j = arg;

    if (j->s->api != NULL)
        j->s->api->inflight--;
    if (j->pss != NULL) {
        j->pss->job = NULL;
        gw__api_respond(j->pss, j->status, j->resp);
        j->resp = NULL;
    }
    job_free(j);
}

static void job_fail(api_job *j, int status, const char *code, const char *msg)
{
    free(j->resp);
    j->status = status;
    j->resp = gw_api_error_body(code, msg);
}

/* io thread: stores the message on IN like a member's send (one
 * synchronous publish: its acknowledgment is the answer), and for a
 * duplicate reads the original event id back from the stored message. */
void gw__api_publish_io(void *arg)
{
    api_job *j = arg;
    gw_server *s = j->s;
    Sluice__Envelope e = SLUICE__ENVELOPE__INIT;
    Sluice__ClientMessage body = SLUICE__CLIENT_MESSAGE__INIT;
    char event_id[SL_EVENT_ID_LEN + 1], subj[SL_SUBJECT_MAX], msgid[3 * SL_ID_MAX + 4];
    jsPubAck *pa = NULL;
    jsErrCode jerr = 0;
    jsPubOptions po;
    natsMsg *m = NULL, *orig = NULL;
    uint8_t *data = NULL;
    size_t len = 0;
    natsStatus st;

    sl_event_id_new(event_id);
    e.event_id = event_id;
    e.tenant = j->tenant;
    e.session = GW_API_SESSION;
    e.client_id = j->req.id;
    e.message_id = j->req.id;
    e.prev_event_id = "";
    e.trace_id = event_id;
    e.ts_unix_ns = sl_now_ns();
    body.room = j->req.room;
    body.text = j->req.text;
    body.user = j->req.user;
    body.server = true;
    body.no_agents = !j->req.agents;
    e.body_case = SLUICE__ENVELOPE__BODY_MESSAGE;
    e.message = &body;
    snprintf(msgid, sizeof(msgid), "%s:%s:%s", j->tenant, GW_API_SESSION, j->req.id);
    if (sl_subject_in(subj, sizeof(subj), j->tenant, GW_API_SESSION) != SL_OK ||
        sl_envelope_encode(&e, &data, &len) != SL_OK ||
        natsMsg_Create(&m, subj, NULL, (const char *)data, (int)len) != NATS_OK ||
        natsMsgHeader_Set(m, "Nats-Msg-Id", msgid) != NATS_OK) {
        job_fail(j, 500, "internal", "cannot build the message");
        goto done;
    }
    jsPubOptions_Init(&po);
    po.MaxWait = j->publish_timeout_ms;
    st = js_PublishMsg(&pa, sl_bus_js(s->bus), m, &po, &jerr);
    if (st != NATS_OK || pa == NULL) {
        sl_warn("api publish %s: %s (jerr %d)", msgid, natsStatus_GetText(st), (int)jerr);
        job_fail(j, 503, "unavailable",
                 "the message was not stored in time; retry with the same id");
        goto done;
    }
    if (pa->Duplicate) {
        Sluice__Envelope *oe = NULL;
        event_id[0] = '\0';
        if (js_GetMsg(&orig, sl_bus_js(s->bus), SL_STREAM_IN, pa->Sequence, NULL, NULL) ==
                NATS_OK &&
            sl_envelope_decode(natsMsg_GetData(orig), (size_t)natsMsg_GetDataLength(orig), &oe) ==
                SL_OK) {
            snprintf(event_id, sizeof(event_id), "%s", oe->event_id);
            sl_envelope_free(oe);
        }
        if (event_id[0] == '\0') {
            job_fail(j, 503, "unavailable", "stored before; cannot read it back now, retry");
            goto done;
        }
    }
    {
        cJSON *o = cJSON_CreateObject();
        if (o != NULL && cJSON_AddStringToObject(o, "event", event_id) != NULL &&
            cJSON_AddBoolToObject(o, "duplicate", pa->Duplicate) != NULL) {
            j->status = 200;
            j->resp = cJSON_PrintUnformatted(o);
        }
        cJSON_Delete(o);
        if (j->resp == NULL)
            job_fail(j, 500, "internal", "out of memory");
    }
done:
    jsPubAck_Destroy(pa);
    natsMsg_Destroy(m);
    natsMsg_Destroy(orig);
    free(data);
    gw_bridge_post(s->bridge, job_done, job_free, j);
}

/* io thread: the room's members from the presence bucket, as a joining
 * client gets them in `joined.members`. */
void gw__api_presence_io(void *arg)
{
    api_job *j = arg;
    gw_server *s = j->s;
    cJSON *o = cJSON_CreateObject(), *members = cJSON_AddArrayToObject(o, "members");
    bool truncated = false, ok = gw__room_members_io(s, j->tenant, j->req.room, GW_API_PRESENCE_MAX,
                                                     members, &truncated);

    if (ok) {
        if (truncated)
            cJSON_AddBoolToObject(o, "truncated", 1);
        j->status = 200;
        j->resp = cJSON_PrintUnformatted(o);
    }
    if (j->resp == NULL)
        job_fail(j, 503, "unavailable", "presence read failed; retry");
    cJSON_Delete(o);
    gw_bridge_post(s->bridge, job_done, job_free, j);
}

/* io thread: the client's history read (gw__history_read_io), answered
 * with the frame a client gets: the newest `limit` events below `before`,
 * in stream order, with more and next_before. */
void gw__api_history_io(void *arg)
{
    api_job *j = arg;
    gw_server *s = j->s;
    read_job *r = calloc(1, sizeof(*r));
    char **events = NULL;
    size_t k = 0;

    if (r == NULL) {
        job_fail(j, 500, "internal", "out of memory");
        goto done;
    }
    r->s = s;
    r->kind = READ_HISTORY;
    snprintf(r->ch, sizeof(r->ch), "%s", j->req.ch);
    snprintf(r->tenant, sizeof(r->tenant), "%s", j->tenant);
    snprintf(r->room, sizeof(r->room), "%s", j->req.room);
    sl_subject_out(r->out, sizeof(r->out), j->tenant, true, j->req.room);
    sl_subject_live(r->live, sizeof(r->live), j->tenant, true, j->req.room);
    r->before = (uint64_t)j->req.before;
    r->limit = j->req.limit;
    if (gw__history_read_io(r) != NATS_OK) {
        job_fail(j, 503, "unavailable", "history read failed; retry");
        goto done;
    }
    {
        size_t lo = r->n > (size_t)r->limit ? r->n - (size_t)r->limit : 0, cut = r->n;
        events = calloc(r->n - lo + 1, sizeof(char *));
        if (events == NULL) {
            job_fail(j, 500, "internal", "out of memory");
            goto done;
        }
        for (size_t i = r->n; i > lo; i--) {
            Sluice__Envelope *e = NULL;
            char *ev = NULL;
            natsMsg *m = r->msgs[i - 1].msg;
            cut = i - 1;
            if (sl_envelope_decode(natsMsg_GetData(m), (size_t)natsMsg_GetDataLength(m), &e) !=
                SL_OK)
                continue; /* not an event: skipped, as for clients */
            ev = gw_frame_event(e, r->ch, r->msgs[i - 1].seq);
            sl_envelope_free(e);
            if (ev != NULL)
                events[k++] = ev;
        }
        for (size_t a = 0, b = k; a + 1 < b; a++, b--) { /* newest first -> stream order */
            char *t = events[a];
            events[a] = events[b - 1];
            events[b - 1] = t;
        }
        j->resp = gw_frame_history(r->ch, events, k, cut > 0 || r->covered > 1,
                                   (int64_t)(cut < r->n ? r->msgs[cut].seq : r->covered), NULL);
        j->status = 200;
        if (j->resp == NULL)
            job_fail(j, 500, "internal", "out of memory");
    }
done:
    for (size_t i = 0; i < k; i++)
        free(events[i]);
    free(events);
    if (r != NULL) {
        for (size_t i = 0; i < r->n; i++)
            natsMsg_Destroy(r->msgs[i].msg);
        free(r->msgs);
        cJSON_Delete(r->members);
        free(r);
    }
    gw_bridge_post(s->bridge, job_done, job_free, j);
}
