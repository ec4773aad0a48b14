#include "orch_ctl.h"

#include <cJSON.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "orch_dispatch.h"
#include "sl_bus.h"
#include "sl_codec.h"
#include "sl_log.h"
#include "sl_metrics.h"
#include "sl_streams.h"
#include "sl_subject.h"

#define ADVISORY_SUBJ "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES." SL_STREAM_WORK ".*"

struct orch_ctl {
    jsCtx *js;
    kvStore *kv;
    kvStore *kv_cancel;
    natsSubscription *cancel_sub;
    natsSubscription *adv_sub;
    _Atomic int stopping; /* ends the advisory retries at shutdown */
};

sl_status orch_ctl_parse_advisory(const char *json, size_t len, uint64_t *seq, uint32_t *deliveries)
{
    cJSON *root = cJSON_ParseWithLength(json, len);
    const cJSON *stream = cJSON_GetObjectItemCaseSensitive(root, "stream");
    const cJSON *sseq = cJSON_GetObjectItemCaseSensitive(root, "stream_seq");
    const cJSON *dc = cJSON_GetObjectItemCaseSensitive(root, "deliveries");
    sl_status st = SL_ERR_INVAL;

    if (cJSON_IsString(stream) && strcmp(stream->valuestring, SL_STREAM_WORK) == 0 &&
        cJSON_IsNumber(sseq) && sseq->valuedouble >= 1) {
        *seq = (uint64_t)sseq->valuedouble;
        *deliveries = cJSON_IsNumber(dc) && dc->valuedouble > 0 ? (uint32_t)dc->valuedouble : 0;
        st = SL_OK;
    }
    cJSON_Delete(root);
    return st;
}

sl_status orch_ctl_end_job(jsCtx *js, kvStore *inflight, uint64_t seq, uint32_t attempt)
{
    natsMsg *m = NULL;
    Sluice__Envelope *work = NULL;
    jsPubAck *pa = NULL;
    jsPubOptions po;
    jsErrCode jerr = 0;
    uint8_t *buf = NULL;
    size_t len = 0;
    char subj[SL_SUBJECT_MAX], id[ORCH_MSGID_MAX], key[SL_SUBJECT_MAX];
    char *json = NULL;
    natsStatus s;
    sl_status st = SL_OK;

    s = js_GetMsg(&m, js, SL_STREAM_WORK, seq, NULL, &jerr);
    if (s == NATS_NOT_FOUND || jerr == 10037) {
        st = SL_ERR_NOTFOUND;
        goto cleanup;
    }
    if (s != NATS_OK) {
        st = SL_ERR_BUS;
        goto cleanup;
    }
    if (sl_envelope_decode(natsMsg_GetData(m), (size_t)natsMsg_GetDataLength(m), &work) != SL_OK ||
        work->work == NULL || !sl_id_valid(work->work->job_id) ||
        orch_fallback_encode(work, attempt, &buf, &len, subj, sizeof(subj)) != SL_OK) {
        sl_warn("work message %llu is not a valid work request; deleting it",
                (unsigned long long)seq);
        goto delete_msg;
    }
    jsPubOptions_Init(&po);
    snprintf(id, sizeof(id), "r:%s", work->work->job_id);
    po.MsgId = id;
    s = js_Publish(&pa, js, subj, buf, (int)len, &po, &jerr);
    if (s != NATS_OK) {
        st = SL_ERR_BUS;
        goto cleanup;
    }
    if (!pa->Duplicate) {
        sl_counter_inc(
            sl_counter_get("sluice_orch_fallbacks_total", NULL,
                           "replies ended with the agent's fallback by the orchestrator"));
        sl_logf(SL_LOG_WARN,
                &(sl_log_ctx){
                    .tenant = work->tenant, .session = work->session, .trace = work->trace_id},
                "job %s exhausted its deliveries (%u); ended with the fallback", work->work->job_id,
                attempt);
    }
    if (inflight != NULL &&
        sl_kv_key2(key, sizeof(key), work->tenant, work->work->job_id) == SL_OK &&
        orch_job_json(&json, "failed", work->session, work->work->to, work->work->agent,
                      "max_deliveries") == SL_OK)
        (void)kvStore_PutString(NULL, inflight, key, json);
delete_msg:
    s = js_DeleteMsg(js, SL_STREAM_WORK, seq, NULL, &jerr);
    if (s != NATS_OK && s != NATS_NOT_FOUND && jerr != 10057)
        st = SL_ERR_BUS;
cleanup:
    free(json);
    free(buf);
    jsPubAck_Destroy(pa);
    sl_envelope_free(work);
    natsMsg_Destroy(m);
    return st;
}

static void on_advisory(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    orch_ctl *c = closure;
    uint64_t seq = 0;
    uint32_t dc = 0;

    (void)nc;
    (void)sub;
    if (orch_ctl_parse_advisory(natsMsg_GetData(msg), (size_t)natsMsg_GetDataLength(msg), &seq,
                                &dc) == SL_OK) {
        /* The advisory is not repeated, so giving up here would leave the
         * reply open for good: keep trying while NATS recovers (a stream
         * leader election after a node loss takes seconds; the fault tests
         * saw more than 3 s). Bounded: about 40 s, or until shutdown, which
         * waits for this callback (orch_ctl_destroy). */
        bool ended = false;
        for (int i = 0; i < 45 && !ended && !atomic_load(&c->stopping); i++) {
            sl_status st = orch_ctl_end_job(c->js, c->kv, seq, dc);
            ended = st == SL_OK || st == SL_ERR_NOTFOUND;
            if (!ended)
                usleep((useconds_t)(200 * 1000 * (i < 5 ? i + 1 : 5)));
        }
        if (!ended)
            sl_error("could not end the exhausted job at WORK seq %llu; its reply stays open",
                     (unsigned long long)seq);
    }
    natsMsg_Destroy(msg);
}

static void on_cancel(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    orch_ctl *c = closure;
    Sluice__Envelope *e = NULL;
    const char *subject = natsMsg_GetSubject(msg);
    const char *tenant = subject + strlen("sluice.ctl.cancel.");
    char key[SL_SUBJECT_MAX];
    char *json = NULL;

    (void)nc;
    (void)sub;
    if (strncmp(subject, "sluice.ctl.cancel.", 18) != 0 || !sl_id_valid(tenant) ||
        sl_envelope_decode(natsMsg_GetData(msg), (size_t)natsMsg_GetDataLength(msg), &e) != SL_OK ||
        e->cancel == NULL ||
        sl_cancel_key(key, sizeof(key), tenant, e->session, e->cancel->message_id) != SL_OK)
        goto cleanup;
    if (orch_job_json(&json, "cancelled", e->session, e->cancel->message_id, "", NULL) != SL_OK)
        goto cleanup;
    if (kvStore_PutString(NULL, c->kv_cancel, key, json) != NATS_OK)
        sl_warn("cancel marker %s: %s", key, nats_GetLastError(NULL));
    else
        sl_logf(SL_LOG_INFO, &(sl_log_ctx){.tenant = tenant, .session = e->session},
                "cancel requested for %s", e->cancel->message_id);
cleanup:
    free(json);
    sl_envelope_free(e);
    natsMsg_Destroy(msg);
}

sl_status orch_ctl_create(orch_ctl **out, natsConnection *nc, jsCtx *js, kvStore *inflight,
                          kvStore *cancel)
{
    orch_ctl *c = calloc(1, sizeof(*c));
    natsStatus s;

    if (c == NULL)
        return SL_ERR_NOMEM;
    c->js = js;
    c->kv = inflight;
    c->kv_cancel = cancel;
    s = natsConnection_Subscribe(&c->cancel_sub, nc, "sluice.ctl.cancel.*", on_cancel, c);
    if (s == NATS_OK)
        s = natsConnection_Subscribe(&c->adv_sub, nc, ADVISORY_SUBJ, on_advisory, c);
    if (s != NATS_OK) {
        orch_ctl_destroy(c);
        return SL_ERR_BUS;
    }
    *out = c;
    return SL_OK;
}

static void sub_close(natsSubscription *sub)
{
    if (sub == NULL)
        return;
    /* Drain so that a callback still running finishes before c is freed. */
    if (natsSubscription_Drain(sub) == NATS_OK)
        natsSubscription_WaitForDrainCompletion(sub, 5000);
    else
        natsSubscription_Unsubscribe(sub);
    natsSubscription_Destroy(sub);
}

void orch_ctl_destroy(orch_ctl *c)
{
    if (c == NULL)
        return;
    atomic_store(&c->stopping, 1);
    sub_close(c->cancel_sub);
    sub_close(c->adv_sub);
    free(c);
}
