#include "orch_dispatch.h"

#include <cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sl_codec.h"
#include "sl_streams.h"
#include "sl_time.h"

static const char *nz(const char *s)
{
    return s != NULL ? s : "";
}

const char *orch_msg_event_id(const Sluice__Envelope *in)
{
    if (in->event_id != NULL && in->event_id[0] != '\0')
        return in->event_id;
    if (in->message_id != NULL && in->message_id[0] != '\0')
        return in->message_id;
    return NULL;
}

sl_status orch_job_id(char *buf, size_t n, const Sluice__Envelope *in, size_t agent_idx)
{
    const char *ev = orch_msg_event_id(in);
    int r;

    if (ev == NULL)
        return SL_ERR_INVAL;
    r = snprintf(buf, n, "%s-%zu", ev, agent_idx);
    if (r < 0 || (size_t)r >= n || !sl_id_valid(buf))
        return SL_ERR_INVAL;
    return SL_OK;
}

sl_status orch_reply_subject(char *buf, size_t n, const char *tenant, const char *room,
                             const char *session)
{
    if (room != NULL && room[0] != '\0')
        return sl_subject_out(buf, n, tenant, true, room);
    return sl_subject_out(buf, n, tenant, false, session);
}

/* Copies the causal header every derived event carries. */
static void copy_header(Sluice__Envelope *e, const Sluice__Envelope *in, const char *tenant)
{
    e->tenant = (char *)tenant;
    e->session = in->session;
    e->client_id = in->client_id;
    e->trace_id = in->trace_id;
    e->hops = in->hops;
    e->ts_unix_ns = sl_now_ns();
}

/* The id of the message answered: the client's id for a user message, the
 * reply id for an agent's. */
static const char *answered_id(const Sluice__Envelope *in)
{
    if (in->message_id != NULL && in->message_id[0] != '\0')
        return in->message_id;
    return nz(in->client_id);
}

/* What a work request and its stub share: the header, the ids, the agent
 * and its fallback, where the answer goes. in->message is set. */
static void work_common(Sluice__Envelope *e, Sluice__WorkRequest *w, const Sluice__Envelope *in,
                        const char *tenant, const orch_agent *a, const char *job)
{
    copy_header(e, in, tenant);
    e->event_id = (char *)nz(orch_msg_event_id(in));
    e->message_id = (char *)answered_id(in);
    w->job_id = (char *)job;
    w->reply_id = (char *)job;
    w->agent = a->name;
    w->fallback = a->fallback;
    w->room = in->message->room;
    w->to = (char *)answered_id(in);
}

sl_status orch_work_encode(const Sluice__Envelope *in, const char *tenant, const orch_agent *a,
                           const char *job, int64_t deadline_ms, const orch_followers *fw,
                           uint8_t **out, size_t *len)
{
    Sluice__Envelope e = SLUICE__ENVELOPE__INIT;
    Sluice__WorkRequest w = SLUICE__WORK_REQUEST__INIT;
    const Sluice__ClientMessage *m = in->message;

    if (m == NULL)
        return SL_ERR_INVAL;
    work_common(&e, &w, in, tenant, a, job);
    w.model = a->backend_model;
    w.system_prompt = a->system_prompt;
    w.text = m->text;
    w.user = (m->user != NULL && m->user[0] != '\0') ? m->user : m->agent;
    w.deadline_ms = deadline_ms;
    if (fw != NULL && fw->mentions_only) {
        w.agent_mentions_only = true;
        w.n_agent_mentions = fw->n;
        w.agent_mentions = (char **)fw->names;
    }
    e.body_case = SLUICE__ENVELOPE__BODY_WORK;
    e.work = &w;
    return sl_envelope_encode(&e, out, len);
}

sl_status orch_work_stub_encode(const Sluice__Envelope *in, const char *tenant, const orch_agent *a,
                                const char *job, uint8_t **out, size_t *len)
{
    Sluice__Envelope e = SLUICE__ENVELOPE__INIT;
    Sluice__WorkRequest w = SLUICE__WORK_REQUEST__INIT;

    if (in->message == NULL)
        return SL_ERR_INVAL;
    work_common(&e, &w, in, tenant, a, job);
    e.body_case = SLUICE__ENVELOPE__BODY_WORK;
    e.work = &w;
    return sl_envelope_encode(&e, out, len);
}

sl_status orch_busy_encode(const Sluice__Envelope *in, const char *tenant, const char *agent,
                           const char *reason, uint32_t retry_after_ms, uint8_t **out, size_t *len)
{
    Sluice__Envelope e = SLUICE__ENVELOPE__INIT;
    Sluice__Busy b = SLUICE__BUSY__INIT;
    char ev[SL_EVENT_ID_LEN + 1];

    copy_header(&e, in, tenant);
    sl_event_id_new(ev);
    e.event_id = ev;
    e.message_id = (char *)answered_id(in);
    b.to = (char *)answered_id(in);
    b.agent = (char *)agent;
    b.reason = (char *)reason;
    b.retry_after_ms = retry_after_ms;
    e.body_case = SLUICE__ENVELOPE__BODY_BUSY;
    e.busy = &b;
    return sl_envelope_encode(&e, out, len);
}

sl_status orch_fallback_encode(const Sluice__Envelope *work, uint32_t attempt, uint8_t **out,
                               size_t *len, char *subj, size_t subjlen)
{
    Sluice__Envelope e = SLUICE__ENVELOPE__INIT;
    Sluice__Reply r = SLUICE__REPLY__INIT;
    const Sluice__WorkRequest *w = work->work;
    char ev[SL_EVENT_ID_LEN + 1];
    sl_status st;

    if (w == NULL || !sl_id_valid(work->tenant))
        return SL_ERR_INVAL;
    st = orch_reply_subject(subj, subjlen, work->tenant, w->room, work->session);
    if (st != SL_OK)
        return st;
    copy_header(&e, work, work->tenant);
    sl_event_id_new(ev);
    e.event_id = ev;
    e.message_id = w->to;
    r.reply_id = w->reply_id;
    r.to = w->to;
    r.agent = w->agent;
    r.text = (w->fallback != NULL && w->fallback[0] != '\0') ? w->fallback
                                                             : (char *)ORCH_DEFAULT_FALLBACK;
    r.attempt = attempt;
    r.degraded = true;
    /* No model call of ours produced it: nothing counted. */
    Sluice__Usage u = SLUICE__USAGE__INIT;
    u.estimated = true;
    r.usage = &u;
    e.body_case = SLUICE__ENVELOPE__BODY_REPLY;
    e.reply = &r;
    return sl_envelope_encode(&e, out, len);
}

sl_status orch_job_json(char **out, const char *state, const char *session, const char *to,
                        const char *agent, const char *reason)
{
    cJSON *o = cJSON_CreateObject();
    char *s = NULL;

    if (o != NULL && cJSON_AddStringToObject(o, "state", state) != NULL &&
        cJSON_AddStringToObject(o, "session", nz(session)) != NULL &&
        cJSON_AddStringToObject(o, "to", nz(to)) != NULL &&
        cJSON_AddStringToObject(o, "agent", nz(agent)) != NULL &&
        (reason == NULL || cJSON_AddStringToObject(o, "reason", reason) != NULL))
        s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    if (s == NULL)
        return SL_ERR_NOMEM;
    *out = s;
    return SL_OK;
}

sl_status orch_queue_post(orch_pub *p, const Sluice__Envelope *in, const char *tenant,
                          const void *data, size_t len, int *slot)
{
    char subj[SL_SUBJECT_MAX], id[ORCH_MSGID_MAX];
    const char *ev = orch_msg_event_id(in);

    if (in->message == NULL || ev == NULL ||
        orch_reply_subject(subj, sizeof(subj), tenant, in->message->room, in->session) != SL_OK)
        return SL_ERR_INVAL;
    snprintf(id, sizeof(id), "m:%s", ev);
    return orch_pub_add(p, subj, id, data, len, slot);
}

sl_status orch_queue_job_state(orch_pub *p, const char *tenant, const char *job, const char *tag,
                               const char *json, int *slot)
{
    char subj[SL_SUBJECT_MAX], key[2 * SL_ID_MAX + 2], id[ORCH_MSGID_MAX];

    if (sl_kv_key2(key, sizeof(key), tenant, job) != SL_OK)
        return SL_ERR_INVAL;
    (void)sl_kv_subject(subj, sizeof(subj), SL_KV_INFLIGHT, key);
    snprintf(id, sizeof(id), "%s:%s", tag, job);
    return orch_pub_add(p, subj, id, json, strlen(json), slot);
}

sl_status orch_queue_work(orch_pub *p, const Sluice__Envelope *in, const char *tenant,
                          const orch_agent *a, const char *job, int64_t deadline_ms,
                          const orch_followers *fw, int *slot)
{
    char subj[SL_SUBJECT_MAX], id[ORCH_MSGID_MAX];
    uint8_t *buf = NULL;
    size_t len = 0;
    sl_status st;

    if ((st = sl_subject_work(subj, sizeof(subj), a->model, tenant)) != SL_OK)
        return st;
    if ((st = orch_work_encode(in, tenant, a, job, deadline_ms, fw, &buf, &len)) != SL_OK)
        return st;
    snprintf(id, sizeof(id), "w:%s", job);
    st = orch_pub_add(p, subj, id, buf, len, slot);
    free(buf);
    return st;
}

sl_status orch_queue_busy(orch_pub *p, const Sluice__Envelope *in, const char *tenant,
                          const char *agent, const char *job, const char *reason,
                          uint32_t retry_after_ms, int *slot)
{
    char subj[SL_SUBJECT_MAX], id[ORCH_MSGID_MAX];
    uint8_t *buf = NULL;
    size_t len = 0;
    sl_status st;

    if ((st = sl_subject_out(subj, sizeof(subj), tenant, false, in->session)) != SL_OK)
        return st;
    if ((st = orch_busy_encode(in, tenant, agent, reason, retry_after_ms, &buf, &len)) != SL_OK)
        return st;
    snprintf(id, sizeof(id), "b:%s", job);
    st = orch_pub_add(p, subj, id, buf, len, slot);
    free(buf);
    return st;
}
