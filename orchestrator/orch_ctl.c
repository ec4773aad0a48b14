#include "orch_ctl.h"

#include <cJSON.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "orch_dispatch.h"
#include "sl_bus.h"
#include "sl_codec.h"
#include "sl_json.h"
#include "sl_log.h"
#include "sl_metrics.h"
#include "sl_streams.h"
#include "sl_subject.h"
#include "sl_time.h"

#define ADV_QUEUE_MAX  4096 /* advisories waiting to be handled; more are left to the sweep */
#define ADV_TRIES      45   /* about 40 s of retries, then the sweep takes over */
#define API_WAIT_MS    5000
#define SWEEP_SCAN_MAX 100000 /* messages looked at per subject and sweep */
#define LOST_PASS_MAX  1024   /* kept jobs checked per pass; the rest wait for the next */
#define LOST_BATCH     64

/* An advisory to handle: the work message at seq, delivered dc times. */
typedef struct adv {
    uint64_t seq;
    uint32_t dc;
    int tries;
    int64_t due_ms; /* monotonic */
} adv;

struct orch_ctl {
    natsConnection *nc;
    jsCtx *js;
    kvStore *kv;
    kvStore *kv_cancel;
    int64_t sweep_ms;
    orch_inflight *tracker; /* the jobs this replica queued, for the lost-work check */
    int64_t lost_check_ms;
    natsSubscription *cancel_sub;
    natsSubscription *adv_sub;
    /* The advisories' queue, handled by the ender thread (never on the
     * cnats thread that delivers them), which also runs the sweeps. */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    adv queue[ADV_QUEUE_MAX];
    size_t nqueue;
    pthread_t thread;
    bool started;
    _Atomic int stopping; /* ends the retries and the thread at shutdown */
};

sl_status orch_ctl_parse_advisory(const char *json, size_t len, uint64_t *seq, uint32_t *deliveries)
{
    cJSON *root = cJSON_ParseWithLength(json, len);
    const cJSON *stream = cJSON_GetObjectItemCaseSensitive(root, "stream");
    const cJSON *sseq = cJSON_GetObjectItemCaseSensitive(root, "stream_seq");
    const cJSON *dc = cJSON_GetObjectItemCaseSensitive(root, "deliveries");
    sl_status st = SL_ERR_INVAL;
    int64_t v, d;

    if (cJSON_IsString(stream) && strcmp(stream->valuestring, SL_STREAM_WORK) == 0 &&
        sl_json_get_int(sseq, 1, SL_JSON_INT_MAX, &v)) {
        *seq = (uint64_t)v;
        *deliveries = sl_json_get_int(dc, 1, UINT32_MAX, &d) ? (uint32_t)d : 0;
        st = SL_OK;
    }
    cJSON_Delete(root);
    return st;
}

/* Reads a job's in-flight entry: *ended when it holds an end state (the
 * reply was ended by someone), *rev its revision (0 when absent), and
 * *running_ms how long ago its worker wrote `running` (-1 when it holds
 * another state). SL_ERR_BUS when it could not be read. */
static sl_status job_entry(kvStore *kv, const char *key, bool *ended, uint64_t *rev,
                           int64_t *running_ms)
{
    kvEntry *e = NULL;
    cJSON *root = NULL;
    const cJSON *state;
    natsStatus s;

    *ended = false;
    *rev = 0;
    *running_ms = -1;
    s = kvStore_Get(&e, kv, key);
    if (s == NATS_NOT_FOUND)
        return SL_OK;
    if (s != NATS_OK)
        return SL_ERR_BUS;
    *rev = kvEntry_Revision(e);
    if (kvEntry_Operation(e) == kvOp_Put) {
        root = cJSON_ParseWithLength(kvEntry_ValueString(e), (size_t)kvEntry_ValueLen(e));
        state = cJSON_GetObjectItemCaseSensitive(root, "state");
        *ended = cJSON_IsString(state) && (strcmp(state->valuestring, "done") == 0 ||
                                           strcmp(state->valuestring, "cancelled") == 0 ||
                                           strcmp(state->valuestring, "failed") == 0);
        if (cJSON_IsString(state) && strcmp(state->valuestring, "running") == 0) {
            int64_t age = (sl_now_ns() - kvEntry_Created(e)) / 1000000;
            *running_ms = age > 0 ? age : 0;
        }
    }
    cJSON_Delete(root);
    kvEntry_Destroy(e);
    return SL_OK;
}

/* Ends the job of work envelope work (a work message, or the stub of one):
 * unless its in-flight entry already holds an end state, publishes the
 * fallback final reply (deduplicated as r:<job>) and marks the entry
 * failed with reason (compare-and-set on the revision read). *published
 * tells whether this call stored the reply. SL_ERR_INVAL when work is not
 * a valid work request; SL_ERR_BUS when NATS failed. A job whose entry
 * has said `running` for less than running_grace_ms (> 0) is left alone
 * (SL_OK, *deferred): a worker may still be running it. */
static sl_status end_work(jsCtx *js, kvStore *inflight, const Sluice__Envelope *work,
                          uint32_t attempt, const char *reason, int64_t running_grace_ms,
                          bool *published, bool *deferred)
{
    jsPubAck *pa = NULL;
    jsPubOptions po;
    jsErrCode jerr = 0;
    uint8_t *buf = NULL;
    size_t len = 0;
    char subj[SL_SUBJECT_MAX], id[ORCH_MSGID_MAX], key[SL_SUBJECT_MAX];
    char *json = NULL;
    bool ended = false, keyed;
    uint64_t rev = 0;
    int64_t running_ms = -1;
    sl_status st = SL_OK;

    *published = false;
    *deferred = false;
    if (work->work == NULL || !sl_id_valid(work->work->job_id) ||
        orch_fallback_encode(work, attempt, &buf, &len, subj, sizeof(subj)) != SL_OK)
        return SL_ERR_INVAL;
    keyed =
        inflight != NULL && sl_kv_key2(key, sizeof(key), work->tenant, work->work->job_id) == SL_OK;
    /* A job whose reply has ended (its final stored, then its worker died
     * before the ack) only needs its message removed. */
    if (keyed && job_entry(inflight, key, &ended, &rev, &running_ms) != SL_OK) {
        st = SL_ERR_BUS;
        goto cleanup;
    }
    if (ended)
        goto cleanup;
    if (running_grace_ms > 0 && running_ms >= 0 && running_ms < running_grace_ms) {
        *deferred = true;
        goto cleanup;
    }
    jsPubOptions_Init(&po);
    snprintf(id, sizeof(id), "r:%s", work->work->job_id);
    po.MsgId = id;
    if (js_Publish(&pa, js, subj, buf, (int)len, &po, &jerr) != NATS_OK) {
        st = SL_ERR_BUS;
        goto cleanup;
    }
    if (!pa->Duplicate) {
        *published = true;
        sl_counter_inc(
            sl_counter_get("sluice_orch_fallbacks_total", NULL,
                           "replies ended with the agent's fallback by the orchestrator"));
    }
    /* Compare-and-set on the revision read: a state written meanwhile (by
     * another replica ending it too) stays. */
    if (keyed && orch_job_json(&json, "failed", work->session, work->work->to, work->work->agent,
                               reason) == SL_OK) {
        if (rev > 0)
            (void)kvStore_UpdateString(NULL, inflight, key, json, rev);
        else
            (void)kvStore_CreateString(NULL, inflight, key, json);
    }
cleanup:
    free(json);
    free(buf);
    jsPubAck_Destroy(pa);
    return st;
}

sl_status orch_ctl_end_job(jsCtx *js, kvStore *inflight, uint64_t seq, uint32_t attempt)
{
    natsMsg *m = NULL;
    Sluice__Envelope *work = NULL;
    jsErrCode jerr = 0;
    bool published = false, deferred = false;
    natsStatus s;
    sl_status st = SL_OK;

    s = js_GetMsg(&m, js, SL_STREAM_WORK, seq, NULL, &jerr);
    /* Not through sl_status_from_nats: "no message found" may come as
     * JetStream error 10037 beside a generic status, and every other
     * failure is SL_ERR_BUS here, as the header promises (the ender retries
     * on it, whatever the cause). */
    if (s == NATS_NOT_FOUND || jerr == 10037) {
        st = SL_ERR_NOTFOUND;
        goto cleanup;
    }
    if (s != NATS_OK) {
        st = SL_ERR_BUS;
        goto cleanup;
    }
    if (sl_envelope_decode(natsMsg_GetData(m), (size_t)natsMsg_GetDataLength(m), &work) != SL_OK)
        st = SL_ERR_INVAL;
    else
        st = end_work(js, inflight, work, attempt, "max_deliveries", 0, &published, &deferred);
    if (st == SL_ERR_BUS)
        goto cleanup;
    if (st == SL_ERR_INVAL) {
        sl_warn("work message %llu is not a valid work request; deleting it",
                (unsigned long long)seq);
        st = SL_OK;
    } else if (published) {
        sl_logf(SL_LOG_WARN,
                &(sl_log_ctx){
                    .tenant = work->tenant, .session = work->session, .trace = work->trace_id},
                "job %s exhausted its deliveries (%u); ended with the fallback", work->work->job_id,
                attempt);
    }
    s = js_DeleteMsg(js, SL_STREAM_WORK, seq, NULL, &jerr);
    if (s != NATS_OK && s != NATS_NOT_FOUND && jerr != 10057)
        st = SL_ERR_BUS;
cleanup:
    sl_envelope_free(work);
    natsMsg_Destroy(m);
    return st;
}

sl_status orch_ctl_end_lost(jsCtx *js, kvStore *inflight, uint64_t seq, const void *stub,
                            size_t len, int64_t running_grace_ms, bool *ended)
{
    natsMsg *m = NULL;
    Sluice__Envelope *work = NULL;
    jsErrCode jerr = 0;
    bool published = false, deferred = false;
    natsStatus s;
    sl_status st;

    *ended = false;
    s = js_GetMsg(&m, js, SL_STREAM_WORK, seq, NULL, &jerr);
    if (s == NATS_OK) {
        natsMsg_Destroy(m);
        return SL_OK; /* still queued or running */
    }
    if (s != NATS_NOT_FOUND && jerr != 10037)
        return SL_ERR_BUS;
    /* Gone. Its worker acks only once its end state is stored, which
     * end_work reads first: with no end state there, the message was lost
     * (or purged) before any worker ended it. */
    if (sl_envelope_decode(stub, len, &work) != SL_OK)
        return SL_ERR_INVAL;
    st = end_work(js, inflight, work, 1, "lost", running_grace_ms, &published, &deferred);
    if (st == SL_OK && !deferred) {
        *ended = true;
        if (published) {
            sl_counter_inc(sl_counter_get("sluice_orch_lost_jobs_total", NULL,
                                          "jobs ended with the fallback because their work "
                                          "message vanished from SLUICE_WORK"));
            sl_logf(SL_LOG_WARN,
                    &(sl_log_ctx){
                        .tenant = work->tenant, .session = work->session, .trace = work->trace_id},
                    "job %s: its work message (WORK seq %llu) is gone and the job never ended; "
                    "ended with the fallback",
                    work->work->job_id, (unsigned long long)seq);
        }
    }
    sl_envelope_free(work);
    return st;
}

/* ---- the sweep: exhausted work messages whose advisory was missed ---- */

/* Finds the stream sequence of the first message on subject at or after
 * seq (the JetStream API's next_by_subj, which 2.9.10 serves without
 * AllowDirect). SL_OK with *found; SL_ERR_NOTFOUND at the end; SL_ERR_BUS. */
static sl_status next_on_subject(natsConnection *nc, const char *subject, uint64_t seq,
                                 uint64_t *found)
{
    char req[SL_SUBJECT_MAX + 64];
    natsMsg *r = NULL;
    cJSON *root = NULL;
    const cJSON *msg, *sq, *err;
    sl_status st = SL_ERR_BUS;
    int64_t v;

    snprintf(req, sizeof(req), "{\"seq\":%llu,\"next_by_subj\":\"%s\"}", (unsigned long long)seq,
             subject);
    if (natsConnection_RequestString(&r, nc, SL_JS_MSG_GET_WORK, req, API_WAIT_MS) != NATS_OK)
        goto cleanup;
    root = cJSON_ParseWithLength(natsMsg_GetData(r), (size_t)natsMsg_GetDataLength(r));
    msg = cJSON_GetObjectItemCaseSensitive(root, "message");
    sq = cJSON_GetObjectItemCaseSensitive(msg, "seq");
    err = cJSON_GetObjectItemCaseSensitive(root, "error");
    if (sl_json_get_int(sq, 1, SL_JSON_INT_MAX, &v)) {
        *found = (uint64_t)v;
        st = SL_OK;
    } else if (err != NULL && cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(err, "code")) &&
               cJSON_GetObjectItemCaseSensitive(err, "code")->valueint == 404) {
        st = SL_ERR_NOTFOUND;
    }
cleanup:
    cJSON_Delete(root);
    natsMsg_Destroy(r);
    return st;
}

/* True when a consumer's filter takes subject: the same subject, or a
 * prefix ending in ">" (other wildcards: false, to be safe). */
static bool filter_covers(const char *filter, const char *subject)
{
    size_t n;

    if (filter == NULL || filter[0] == '\0')
        return false;
    if (strcmp(filter, subject) == 0)
        return true;
    n = strlen(filter);
    return n >= 2 && strcmp(filter + n - 2, ".>") == 0 && strchr(filter, '*') == NULL &&
           strncmp(filter, subject, n - 1) == 0 && strlen(subject) > n - 1;
}

/* Sweeps one work subject sluice.work.<model>.<tenant>: its consumer
 * (per tenant, or the older per model) tells which of its messages can no
 * longer be delivered. A message still in the work-queue stream was not
 * acked; if its sequence is at or below the consumer's ack floor, or if
 * the consumer delivered it and has no ack pending at all, it is not
 * pending either: it exhausted MaxDeliver. Each is ended as the advisory
 * would have. Returns how many were ended. */
static int sweep_subject(orch_ctl *c, const char *subject)
{
    char model[SL_ID_MAX + 1], tenant[SL_ID_MAX + 1], durable[2 * SL_ID_MAX + 8];
    jsConsumerInfo *ci = NULL;
    uint64_t limit, seq = 1, found = 0;
    uint32_t dc;
    int ended = 0;

    if (sl_subject_work_parse(subject, model, tenant) != SL_OK ||
        sl_work_durable(durable, sizeof(durable), model, tenant) != SL_OK)
        return 0;
    if (js_GetConsumerInfo(&ci, c->js, SL_STREAM_WORK, durable, NULL, NULL) != NATS_OK) {
        if (sl_work_durable(durable, sizeof(durable), model, NULL) != SL_OK ||
            js_GetConsumerInfo(&ci, c->js, SL_STREAM_WORK, durable, NULL, NULL) != NATS_OK)
            return 0; /* nobody consumes it yet: nothing was delivered */
    }
    if (ci->Config == NULL || !filter_covers(ci->Config->FilterSubject, subject)) {
        /* Its sequences say nothing about this subject's messages. */
        jsConsumerInfo_Destroy(ci);
        return 0;
    }
    limit = ci->AckFloor.Stream;
    if (ci->NumAckPending == 0 && ci->Delivered.Stream > limit)
        limit = ci->Delivered.Stream;
    dc = ci->Config != NULL && ci->Config->MaxDeliver > 0 ? (uint32_t)ci->Config->MaxDeliver : 0;
    jsConsumerInfo_Destroy(ci);
    for (int n = 0; n < SWEEP_SCAN_MAX && !atomic_load(&c->stopping); n++) {
        sl_status st;
        if (next_on_subject(c->nc, subject, seq, &found) != SL_OK || found > limit)
            break;
        st = orch_ctl_end_job(c->js, c->kv, found, dc);
        if (st == SL_OK) {
            ended++;
            sl_logf(SL_LOG_WARN, &(sl_log_ctx){.tenant = tenant},
                    "swept work message %llu of %s: its deliveries were exhausted and no "
                    "advisory was handled",
                    (unsigned long long)found, subject);
        }
        seq = found + 1;
    }
    return ended;
}

int orch_ctl_sweep(orch_ctl *c)
{
    jsStreamInfo *si = NULL;
    jsOptions o;
    int ended = 0;

    if (c == NULL)
        return 0;
    jsOptions_Init(&o);
    o.Stream.Info.SubjectsFilter = SL_SUBJECT_WORK_ALL;
    if (js_GetStreamInfo(&si, c->js, SL_STREAM_WORK, &o, NULL) != NATS_OK)
        return 0;
    for (int i = 0;
         si->State.Subjects != NULL && i < si->State.Subjects->Count && !atomic_load(&c->stopping);
         i++) {
        if (si->State.Subjects->List[i].Msgs > 0)
            ended += sweep_subject(c, si->State.Subjects->List[i].Subject);
    }
    jsStreamInfo_Destroy(si);
    if (ended > 0)
        sl_counter_add(sl_counter_get("sluice_orch_swept_total", NULL,
                                      "exhausted work messages ended by the sweep (their "
                                      "advisory was missed)"),
                       (uint64_t)ended);
    return ended;
}

/* ---- the lost-work check: kept jobs whose work message vanished ---- */

int orch_ctl_check_lost(orch_ctl *c)
{
    orch_inflight_lost due[LOST_BATCH];
    size_t total = 0, n;
    int64_t now = sl_mono_ms();
    int ended = 0;
    bool bus_down = false;

    if (c == NULL || c->tracker == NULL)
        return 0;
    while (total < LOST_PASS_MAX && !atomic_load(&c->stopping) && !bus_down &&
           (n = orch_inflight_due(c->tracker, now, now + c->lost_check_ms, due, LOST_BATCH)) > 0) {
        for (size_t i = 0; i < n; i++) {
            bool gone = false;
            sl_status st = SL_ERR_BUS;
            /* Once NATS fails, the rest of the pass waits for the next one
             * (orch_inflight_due has put them lost_check_ms later already):
             * each lookup could wait its whole timeout, and this thread
             * also ends exhausted jobs. */
            if (!atomic_load(&c->stopping) && !bus_down)
                st = orch_ctl_end_lost(c->js, c->kv, due[i].seq, due[i].stub, due[i].len,
                                       c->lost_check_ms, &gone);
            if (st == SL_ERR_BUS)
                bus_down = true;
            if (st == SL_OK && gone)
                ended++;
            /* Settled, or a stub that cannot end anything: nothing more to
             * check. A failure is checked again next time. */
            if ((st == SL_OK && gone) || st == SL_ERR_INVAL)
                orch_inflight_forget(c->tracker, due[i].key);
            free(due[i].stub);
        }
        total += n;
    }
    sl_counter_add(sl_counter_get("sluice_orch_lost_checks_total", NULL,
                                  "work messages the lost-work check looked up"),
                   (uint64_t)total);
    sl_gauge_set(sl_gauge_get("sluice_orch_lost_watched", NULL,
                              "queued jobs this orchestrator keeps for the lost-work check"),
                 (int64_t)orch_inflight_tracked(c->tracker));
    return ended;
}

/* ---- the ender thread ---- */

/* Waits on the condition variable until abs_ms (monotonic clock) at most.
 * Caller holds mu. */
static void wait_until(orch_ctl *c, int64_t abs_ms)
{
    struct timespec ts = {.tv_sec = abs_ms / 1000, .tv_nsec = (abs_ms % 1000) * 1000000};

    (void)pthread_cond_timedwait(&c->cv, &c->mu, &ts);
}

/* Handles queued advisories (retrying those that fail while NATS
 * recovers, a stream leader election takes seconds) and sweeps every
 * sweep_ms, first right at start (advisories may have been missed while
 * no orchestrator ran). */
static void *ender_main(void *arg)
{
    orch_ctl *c = arg;
    int64_t next_sweep = sl_mono_ms();

    pthread_mutex_lock(&c->mu);
    while (!atomic_load(&c->stopping)) {
        int64_t now = sl_mono_ms(), wake = next_sweep;
        size_t i = 0;
        while (i < c->nqueue && !atomic_load(&c->stopping)) {
            adv a = c->queue[i];
            sl_status st;
            if (a.due_ms > now) {
                if (a.due_ms < wake)
                    wake = a.due_ms;
                i++;
                continue;
            }
            c->queue[i] = c->queue[--c->nqueue];
            pthread_mutex_unlock(&c->mu);
            st = orch_ctl_end_job(c->js, c->kv, a.seq, a.dc);
            pthread_mutex_lock(&c->mu);
            if (st == SL_OK || st == SL_ERR_NOTFOUND)
                continue;
            if (++a.tries >= ADV_TRIES) {
                sl_error("could not end the exhausted job at WORK seq %llu yet; the sweep "
                         "will",
                         (unsigned long long)a.seq);
                continue;
            }
            a.due_ms = sl_mono_ms() + 200 * (a.tries < 5 ? a.tries : 5);
            if (c->nqueue < ADV_QUEUE_MAX)
                c->queue[c->nqueue++] = a;
            now = sl_mono_ms();
        }
        if (atomic_load(&c->stopping))
            break;
        if (sl_mono_ms() >= next_sweep) {
            pthread_mutex_unlock(&c->mu);
            (void)orch_ctl_sweep(c);
            (void)orch_ctl_check_lost(c);
            pthread_mutex_lock(&c->mu);
            next_sweep = sl_mono_ms() + c->sweep_ms;
            continue;
        }
        wait_until(c, wake);
    }
    pthread_mutex_unlock(&c->mu);
    return NULL;
}

/* Queues the advisory for the ender thread: a cnats delivery thread must
 * not wait on NATS round trips and retries. */
static void on_advisory(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    orch_ctl *c = closure;
    uint64_t seq = 0;
    uint32_t dc = 0;

    (void)nc;
    (void)sub;
    if (orch_ctl_parse_advisory(natsMsg_GetData(msg), (size_t)natsMsg_GetDataLength(msg), &seq,
                                &dc) == SL_OK) {
        pthread_mutex_lock(&c->mu);
        if (c->nqueue < ADV_QUEUE_MAX) {
            c->queue[c->nqueue++] = (adv){.seq = seq, .dc = dc, .tries = 0, .due_ms = 0};
            pthread_cond_signal(&c->cv);
        } else {
            sl_warn("advisory queue full; WORK seq %llu is left to the sweep",
                    (unsigned long long)seq);
        }
        pthread_mutex_unlock(&c->mu);
    }
    natsMsg_Destroy(msg);
}

static void on_cancel(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    orch_ctl *c = closure;
    Sluice__Envelope *e = NULL;
    const char *subject = natsMsg_GetSubject(msg);
    char tenant[SL_ID_MAX + 1];
    char key[SL_SUBJECT_MAX];
    char *json = NULL;

    (void)nc;
    (void)sub;
    if (sl_subject_cancel_parse(subject, tenant) != SL_OK ||
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
                          kvStore *cancel, int64_t sweep_ms, orch_inflight *tracker,
                          int64_t lost_check_ms)
{
    orch_ctl *c = calloc(1, sizeof(*c));
    pthread_condattr_t ca;
    natsStatus s;

    if (c == NULL)
        return SL_ERR_NOMEM;
    c->nc = nc;
    c->js = js;
    c->kv = inflight;
    c->kv_cancel = cancel;
    c->sweep_ms = sweep_ms > 0 ? sweep_ms : 5000;
    c->tracker = tracker;
    c->lost_check_ms = lost_check_ms > 0 ? lost_check_ms : ORCH_LOST_CHECK_MS_DEFAULT;
    pthread_mutex_init(&c->mu, NULL);
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&c->cv, &ca);
    pthread_condattr_destroy(&ca);
    if (pthread_create(&c->thread, NULL, ender_main, c) != 0) {
        orch_ctl_destroy(c);
        return SL_ERR_NOMEM;
    }
    c->started = true;
    s = natsConnection_Subscribe(&c->cancel_sub, nc, SL_SUBJECT_CANCEL_ALL, on_cancel, c);
    if (s == NATS_OK)
        s = natsConnection_Subscribe(&c->adv_sub, nc, SL_JS_ADVISORY_WORK_MAX_DELIVERIES,
                                     on_advisory, c);
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
    if (c->started) {
        pthread_mutex_lock(&c->mu);
        pthread_cond_signal(&c->cv);
        pthread_mutex_unlock(&c->mu);
        pthread_join(c->thread, NULL);
    }
    if (c->nqueue > 0)
        sl_warn("%zu advisories not handled at shutdown; another replica's sweep ends them",
                c->nqueue);
    pthread_cond_destroy(&c->cv);
    pthread_mutex_destroy(&c->mu);
    free(c);
}
