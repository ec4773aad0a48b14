#include "wrk_loop.h"

#include <cJSON.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "sl_codec.h"
#include "sl_log.h"
#include "sl_metrics.h"
#include "sl_streams.h"
#include "sl_subject.h"
#include "wrk_sched.h"
#include "wrk_stream.h"

#define NS_PER_MS ((int64_t)1000000)

/* Used when the agent configured no fallback text. */
#define DEFAULT_FALLBACK "Sorry, I cannot answer right now. Please try again."

/* Cancels seen on core NATS, remembered so a job that starts after its
 * cancel arrived (before the orchestrator wrote the KV marker) is dropped
 * too. */
#define RECENT_CANCELS   256
#define RECENT_CANCEL_MS (10 * 60 * 1000)

/* The timer thread wakes at least this often. */
#define TICK_MAX_MS 200

/* A job that runs longer than this gets its `running` in-flight state
 * (written by the timer thread); shorter jobs go from queued to done. */
#define RUNNING_AFTER_MS 250

/* Bound on the time spent reading the channel history for context. */
#define CONTEXT_BUDGET_MS 1000

/* A job that could not run or store its end is handed back with this NAK
 * delay. */
#define FINAL_RETRY_MS 1000

/* The end of a job (final reply, agent message, end state) is stored again
 * and again, with a back-off from STORE_BACKOFF_MIN_MS to
 * STORE_BACKOFF_MAX_MS, for up to STORE_RETRY_MS while the timer keeps the
 * job's lease; only then is the job handed back. The bound keeps a
 * redelivery's final reply within JetStream's 2-minute duplicate window
 * (60 s here, plus the NAK delay, plus one model call), so no client ever
 * sees a second final. */
#define STORE_RETRY_MS       60000
#define STORE_BACKOFF_MIN_MS 100
#define STORE_BACKOFF_MAX_MS 2000

/* Bound on the wait for the acknowledgments of a job's last publishes. */
#define PUB_WAIT_MS 5000

/* Pulling. The stream's per-subject counts are read this often, to find
 * queues with jobs nobody rang for (redeliveries, NAK delays, jobs queued
 * while this worker was away). */
#define DISCOVER_MS 200
/* A pull request nobody answered within this time is given up. */
#define REQUEST_TIMEOUT_MS 2000
/* A queue whose consumer could not be set up, or whose request failed, is
 * asked again after this. */
#define QUEUE_RETRY_MS 500
/* A queue not seen for this long is forgotten (its consumer stays; the
 * server deletes it after WRK_CONSUMER_IDLE_S without activity). */
#define QUEUE_FORGET_MS (10 * 60 * 1000)
#define WRK_QUEUES_MAX  65536
/* The streams' sizes and limits (sluice_stream_* gauges) are sampled this
 * often. */
#define STREAM_SAMPLE_MS 15000
/* Server-side lifetime of an unused per-tenant consumer. */
#define WRK_CONSUMER_IDLE_S 3600

typedef struct recent_cancel {
    char tenant[SL_ID_MAX + 1];
    char session[SL_ID_MAX + 1];
    char to[SL_ID_MAX + 1];
    int64_t at_ms;   /* monotonic; 0: empty */
    int64_t wall_ms; /* Unix ms, when it was heard */
} recent_cancel;

/* A fetched job waiting for a slot. */
typedef struct ready_job {
    natsMsg *msg;
    wrk_queue *q;
} ready_job;

typedef struct wrk_slot {
    struct wrk_loop *loop;
    int idx;
    pthread_t th;
    bool started;
    jsCtx *js;              /* this slot's publishes (tokens, reply, agent message, states) */
    natsStatistics *stats;  /* reconnect count, for cancel_requested */
    _Atomic int pub_errors; /* asynchronous publishes of this slot that failed */

    pthread_mutex_t mu; /* guards the fields below against the timer and cancel threads */
    bool busy;
    char tenant[SL_ID_MAX + 1];
    char session[SL_ID_MAX + 1];
    char to[SL_ID_MAX + 1];
    char agent[SL_ID_MAX + 1];
    char kv_subject[SL_SUBJECT_MAX + 32]; /* the job's in-flight key as a subject */
    uint64_t attempt;
    natsMsg *msg;        /* the work message while a job runs (InProgress target) */
    wrk_stream *stream;  /* the current attempt's stream (ticked by the timer) */
    int64_t progress_ms; /* last InProgress (or job start) */
    int64_t start_ms;
    bool want_running;  /* the timer may still write the `running` state */
    _Atomic int cancel; /* wrk_cancel_reason; nonzero aborts the model call */
} wrk_slot;

struct wrk_loop {
    sl_bus *bus;
    natsConnection *nc;
    jsCtx *js;          /* API calls: consumers, stream info */
    kvStore *kv;        /* sluice_inflight */
    kvStore *kv_cancel; /* sluice_cancel */
    wrk_backend *backend;

    char **models;
    size_t nmodels;
    wrk_loop_cfg cfg; /* models and worker_id point into this struct's copies */
    char *worker_id;
    int64_t ack_wait_ms;
    int64_t max_deliver;

    wrk_slot *slots;
    int nslots;
    natsSubscription *cancel_sub;

    pthread_mutex_t mu; /* guards kick, busy, the recent-cancel ring and the fields after it */
    pthread_cond_t tick_cv;
    pthread_cond_t idle_cv;
    uint64_t kick;
    _Atomic int64_t ticker_wake_at; /* when the timer wakes next; 0 while it runs */
    int busy;
    pthread_t ticker;
    bool ticker_started;
    recent_cancel recent[RECENT_CANCELS];
    size_t recent_next;
    int nrecent;             /* entries in use */
    int64_t evicted_wall_ms; /* newest cancel dropped from the full ring (Unix ms) */
    int64_t live_since_ms;   /* cancels heard without a gap since then (Unix ms) */
    uint64_t reconnects;     /* the connection's reconnect count at live_since_ms */

    /* Pulling: the dispatcher thread asks queues for jobs, the pull replies
     * arrive on inbox_sub (a cnats thread) and go to the ready list, the
     * slot threads take them from there. */
    pthread_mutex_t qmu; /* guards everything below up to the flags */
    pthread_cond_t job_cv;
    pthread_cond_t disp_cv;
    wrk_sched *sched;
    ready_job *ready; /* ring */
    int rcap, rhead, nready;
    int idle; /* slots without a job */
    bool disp_done, accepting;
    bool *legacy;         /* per model: the model-wide consumer is still in use */
    wrk_queue **legacy_q; /* per model: its queue while legacy */
    char inbox[128];      /* pull replies arrive on <inbox>.<queue id>.<token> */
    natsSubscription *inbox_sub;
    natsSubscription **bell_subs; /* per model: sluice.ctl.work.<model>.* */
    pthread_t disp;
    bool disp_started;

    _Atomic int stopping;
    _Atomic int abort_all; /* the grace is over: every job is aborted as it starts */
    _Atomic int ticker_stop;
    _Atomic int running;
    bool stopped;

    sl_counter *m_jobs[5]; /* ok, partial, degraded, cancelled, failed */
    sl_counter *m_tokens, *m_retries, *m_requeued, *m_cancels, *m_pulls, *m_store_retries;
    sl_hist *m_ttft, *m_job;
    sl_gauge *m_inflight, *m_queues;
};

enum { M_OK, M_PARTIAL, M_DEGRADED, M_CANCELLED, M_FAILED };

static const char *const metric_names[5] = {"ok", "partial", "degraded", "cancelled", "failed"};

/* ---- Pure decision ----------------------------------------------------- */

static int64_t retry_delay(uint64_t attempt, int64_t retry_after_ms)
{
    int64_t d;

    if (retry_after_ms >= 0) {
        d = retry_after_ms;
    } else {
        d = WRK_RETRY_BASE_MS;
        for (uint64_t i = 1; i < attempt && d < WRK_RETRY_MAX_MS; i++)
            d *= 2;
    }
    return d > WRK_RETRY_MAX_MS ? WRK_RETRY_MAX_MS : d;
}

wrk_decision wrk_job_decide(wrk_outcome outcome, wrk_cancel_reason cancel, bool truncated,
                            size_t text_len, uint64_t attempt, int64_t max_deliver,
                            int64_t retry_after_ms)
{
    wrk_decision d = {
        .end = WRK_END_OK, .term = false, .delay_ms = 0, .kv_state = "done", .metric = "ok"};
    bool last = max_deliver > 0 && attempt >= (uint64_t)max_deliver;
    wrk_decision partial_or_degraded = {
        .end = text_len > 0 ? WRK_END_PARTIAL : WRK_END_DEGRADED,
        .kv_state = "done",
        .metric = text_len > 0 ? "partial" : "degraded",
    };
    wrk_decision degraded_term = {
        .end = WRK_END_DEGRADED, .term = true, .kv_state = "failed", .metric = "degraded"};

    switch (outcome) {
    case WRK_DONE:
        return d;
    case WRK_DEADLINE:
        return partial_or_degraded;
    case WRK_CANCELLED:
        if (truncated)
            return (wrk_decision){.end = WRK_END_PARTIAL, .kv_state = "done", .metric = "partial"};
        if (cancel == WRK_CANCEL_USER)
            return (wrk_decision){
                .end = WRK_END_CANCELLED, .kv_state = "cancelled", .metric = "cancelled"};
        if (cancel == WRK_CANCEL_SHUTDOWN) {
            if (last)
                return partial_or_degraded;
            return (wrk_decision){.end = WRK_END_REQUEUE, .kv_state = "queued"};
        }
        return degraded_term; /* cancelled for no known reason: a backend bug */
    case WRK_TRANSIENT:
        if (last)
            return degraded_term;
        return (wrk_decision){.end = WRK_END_RETRY,
                              .delay_ms = retry_delay(attempt, retry_after_ms),
                              .kv_state = "queued"};
    case WRK_FATAL:
    default:
        return degraded_term;
    }
}

/* ---- Helpers ----------------------------------------------------------- */

static void set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;

    if (err == NULL || errlen == 0)
        return;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static void copy_id(char *dst, const char *src)
{
    snprintf(dst, SL_ID_MAX + 1, "%s", src != NULL ? src : "");
}

static void kick_ticker(wrk_loop *l)
{
    pthread_mutex_lock(&l->mu);
    l->kick++;
    pthread_cond_signal(&l->tick_cv);
    pthread_mutex_unlock(&l->mu);
}

/* Converts an absolute CLOCK_MONOTONIC time in ms to a timespec. */
static struct timespec mono_abs(int64_t ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
    return ts;
}

/* Warnings that could repeat on every turn of a loop are logged at most
 * every 5 s per call site. */
static bool log_due(int64_t *last)
{
    int64_t now = wrk_backend_now_ms();

    if (now - *last < 5000)
        return false;
    *last = now;
    return true;
}

/* ---- Acknowledgments ---------------------------------------------------- */

/* The work messages come from our own pull requests on a plain
 * subscription (not a cnats JetStream one), so they are acknowledged by
 * publishing to their reply subject, as the JetStream protocol defines. */
enum { SETTLE_ACK = 0, SETTLE_TERM = 1, SETTLE_NAK = 2 };

static natsStatus ack_send(wrk_loop *l, natsMsg *msg, int how, int64_t delay_ms)
{
    const char *reply = natsMsg_GetReply(msg);
    char body[64];

    if (reply == NULL || strncmp(reply, "$JS.ACK.", 8) != 0)
        return NATS_ILLEGAL_STATE;
    if (how == SETTLE_ACK)
        snprintf(body, sizeof(body), "+ACK");
    else if (how == SETTLE_TERM)
        snprintf(body, sizeof(body), "+TERM");
    else if (delay_ms > 0)
        snprintf(body, sizeof(body), "-NAK {\"delay\":%" PRId64 "}", delay_ms * NS_PER_MS);
    else
        snprintf(body, sizeof(body), "-NAK");
    return natsConnection_PublishString(l->nc, reply, body);
}

static natsStatus in_progress_send(wrk_loop *l, natsMsg *msg)
{
    const char *reply = natsMsg_GetReply(msg);

    if (reply == NULL)
        return NATS_ILLEGAL_STATE;
    return natsConnection_PublishString(l->nc, reply, "+WPI");
}

/* ---- In-flight KV ------------------------------------------------------ */

typedef struct job {
    wrk_slot *slot;
    natsMsg *msg;
    Sluice__Envelope *env;
    const Sluice__WorkRequest *work;
    const char *tenant, *session, *job_id, *reply_id, *to, *agent, *fallback;
    char subject[SL_SUBJECT_MAX];
    char kv_key[SL_SUBJECT_MAX];
    uint64_t attempt;
    int64_t start_ms;
    wrk_stream *stream;
    bool truncated;
    bool stream_failed;
} job;

static sl_log_ctx job_ctx(const job *j)
{
    return (sl_log_ctx){.tenant = j->tenant,
                        .session = j->session,
                        .event = j->job_id,
                        .trace = j->env != NULL ? j->env->trace_id : NULL};
}

/* The in-flight state as JSON (docs/wire.md); NULL when out of memory. */
static char *state_json(const wrk_loop *l, const char *state, const char *session, const char *to,
                        const char *agent, uint64_t attempt)
{
    cJSON *o = cJSON_CreateObject();
    char *txt = NULL;

    if (o == NULL)
        return NULL;
    cJSON_AddStringToObject(o, "state", state);
    cJSON_AddStringToObject(o, "session", session);
    cJSON_AddStringToObject(o, "to", to);
    cJSON_AddStringToObject(o, "agent", agent);
    cJSON_AddStringToObject(o, "worker", l->worker_id);
    cJSON_AddNumberToObject(o, "attempt", (double)attempt);
    txt = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return txt;
}

/* Writes the job's in-flight state with an asynchronous publish on the
 * slot's context (a KV put is a publish to $KV.<bucket>.<key>); the
 * caller's next js_PublishAsyncComplete covers it. Published on the same
 * connection after every earlier state of the job, so the bucket keeps the
 * order. Returns false when it was not even sent. */
static bool kv_put_async(wrk_loop *l, job *j, const char *state)
{
    wrk_slot *s = j->slot;
    char *txt = state_json(l, state, j->session, j->to, j->agent, j->attempt);
    natsStatus ns;

    if (txt == NULL)
        return false;
    ns = js_PublishAsync(s->js, s->kv_subject, txt, (int)strlen(txt), NULL);
    if (ns != NATS_OK) {
        sl_log_ctx c = job_ctx(j);
        sl_logf(SL_LOG_WARN, &c, "in-flight state %s for %s not written: %s", state, j->kv_key,
                natsStatus_GetText(ns));
    }
    free(txt);
    return ns == NATS_OK;
}

/* Returns true when the in-flight KV says the job already ended. */
static bool kv_job_finished(wrk_loop *l, const job *j, char *state, size_t statelen)
{
    kvEntry *e = NULL;
    cJSON *o = NULL;
    bool finished = false;

    if (kvStore_Get(&e, l->kv, j->kv_key) != NATS_OK)
        return false;
    o = cJSON_ParseWithLength(kvEntry_Value(e), (size_t)kvEntry_ValueLen(e));
    if (o != NULL) {
        const cJSON *s = cJSON_GetObjectItemCaseSensitive(o, "state");
        if (cJSON_IsString(s) &&
            (strcmp(s->valuestring, "done") == 0 || strcmp(s->valuestring, "cancelled") == 0 ||
             strcmp(s->valuestring, "failed") == 0)) {
            finished = true;
            snprintf(state, statelen, "%s", s->valuestring);
        }
    }
    cJSON_Delete(o);
    kvEntry_Destroy(e);
    return finished;
}

/* Decodes the time in a time-sortable event id (sl_event_id_new: 10
 * base-32 digits of Unix ms first). */
bool wrk_event_id_ms(const char *id, int64_t *ms)
{
    static const char b32[] = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    int64_t v = 0;

    if (id == NULL || ms == NULL || strlen(id) < SL_EVENT_ID_LEN)
        return false;
    for (int i = 0; i < 10; i++) {
        const char *p = strchr(b32, id[i]);
        if (p == NULL || id[i] == '\0')
            return false;
        v = v * 32 + (p - b32);
    }
    *ms = v;
    return true;
}

bool wrk_cancel_marker_needed(const char *job_id, int64_t now_ms, int64_t live_since_ms,
                              int64_t evicted_ms)
{
    int64_t t0;

    if (!wrk_event_id_ms(job_id, &t0))
        return true;
    return t0 - WRK_CANCEL_SKEW_MS <= live_since_ms || t0 - WRK_CANCEL_SKEW_MS <= evicted_ms ||
           now_ms - t0 + WRK_CANCEL_SKEW_MS >= RECENT_CANCEL_MS;
}

/* True when a cancel for the job's message was recorded: a cancel this
 * worker heard on core NATS, or a KV marker from the orchestrator. The
 * marker is read only when this worker may have missed the cancel (see
 * wrk_cancel_marker_needed): one round trip less for almost every job. */
static bool cancel_requested(wrk_loop *l, wrk_slot *s, const job *j)
{
    char key[SL_SUBJECT_MAX];
    kvEntry *e = NULL;
    bool hit = false, needed = true;
    int64_t now = wrk_backend_now_ms();
    int64_t wall = sl_now_ns() / NS_PER_MS;
    uint64_t reconnects = 0;
    bool connected =
        natsConnection_Status(l->nc) == NATS_CONN_STATUS_CONNECTED &&
        natsConnection_GetStats(l->nc, s->stats) == NATS_OK &&
        natsStatistics_GetCounts(s->stats, NULL, NULL, NULL, NULL, &reconnects) == NATS_OK;

    pthread_mutex_lock(&l->mu);
    for (size_t i = 0; l->nrecent > 0 && i < RECENT_CANCELS && !hit; i++) {
        const recent_cancel *r = &l->recent[i];
        hit = r->at_ms != 0 && now - r->at_ms < RECENT_CANCEL_MS &&
              strcmp(r->tenant, j->tenant) == 0 && strcmp(r->session, j->session) == 0 &&
              strcmp(r->to, j->to) == 0;
    }
    if (connected && reconnects != l->reconnects) {
        /* Cancels sent while we were away were not heard. */
        l->reconnects = reconnects;
        l->live_since_ms = wall;
    }
    if (connected)
        needed = wrk_cancel_marker_needed(j->job_id, wall, l->live_since_ms, l->evicted_wall_ms);
    pthread_mutex_unlock(&l->mu);
    if (hit || !needed)
        return hit;
    if (sl_cancel_key(key, sizeof(key), j->tenant, j->session, j->to) != SL_OK)
        return false;
    if (kvStore_Get(&e, l->kv_cancel, key) == NATS_OK)
        hit = true;
    kvEntry_Destroy(e);
    return hit;
}

/* ---- Cancel subscription ----------------------------------------------- */

static void on_cancel(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    wrk_loop *l = closure;
    Sluice__Envelope *e = NULL;
    const char *subj = natsMsg_GetSubject(msg);
    const char *tenant = strrchr(subj, '.');
    const char *to = NULL;
    int64_t now = wrk_backend_now_ms();

    (void)nc;
    (void)sub;
    if (tenant == NULL || !sl_id_valid(tenant + 1))
        goto cleanup;
    tenant++;
    if (sl_envelope_decode(natsMsg_GetData(msg), (size_t)natsMsg_GetDataLength(msg), &e) != SL_OK)
        goto cleanup;
    if (e->body_case == SLUICE__ENVELOPE__BODY_CANCEL && e->cancel != NULL &&
        e->cancel->message_id[0] != '\0')
        to = e->cancel->message_id;
    else
        to = e->message_id;
    if (to == NULL || !sl_client_id_valid(to) || !sl_id_valid(e->session))
        goto cleanup;
    if (e->tenant[0] != '\0' && strcmp(e->tenant, tenant) != 0)
        goto cleanup; /* the subject decides the tenant; a mismatch is bogus */
    sl_counter_inc(l->m_cancels);

    pthread_mutex_lock(&l->mu);
    recent_cancel *r = &l->recent[l->recent_next];
    l->recent_next = (l->recent_next + 1) % RECENT_CANCELS;
    if (r->at_ms != 0 && r->wall_ms > l->evicted_wall_ms)
        l->evicted_wall_ms = r->wall_ms; /* older cancels are forgotten from now on */
    if (r->at_ms == 0)
        l->nrecent++;
    copy_id(r->tenant, tenant);
    copy_id(r->session, e->session);
    copy_id(r->to, to);
    r->at_ms = now;
    r->wall_ms = sl_now_ns() / NS_PER_MS;
    pthread_mutex_unlock(&l->mu);

    for (int i = 0; i < l->nslots; i++) {
        wrk_slot *s = &l->slots[i];
        pthread_mutex_lock(&s->mu);
        if (s->busy && strcmp(s->tenant, tenant) == 0 && strcmp(s->session, e->session) == 0 &&
            strcmp(s->to, to) == 0) {
            int expected = WRK_CANCEL_NONE;
            atomic_compare_exchange_strong(&s->cancel, &expected, WRK_CANCEL_USER);
            sl_logf(SL_LOG_INFO, &(sl_log_ctx){.tenant = tenant, .session = e->session},
                    "cancel for message %s: aborting the running job", to);
        }
        pthread_mutex_unlock(&s->mu);
    }
cleanup:
    sl_envelope_free(e);
    natsMsg_Destroy(msg);
}

/* ---- Timer thread ------------------------------------------------------ */

/* Writes the `running` state of a job that has run for a while. Called by
 * the timer with the slot lock held; the job thread takes that lock
 * (slot_finishing) before it writes its last state, so `running` can never
 * land after it. */
static void write_running(wrk_loop *l, wrk_slot *s)
{
    char *txt = state_json(l, "running", s->session, s->to, s->agent, s->attempt);

    s->want_running = false;
    if (txt == NULL)
        return;
    if (js_PublishAsync(s->js, s->kv_subject, txt, (int)strlen(txt), NULL) != NATS_OK)
        sl_debug("in-flight state running for %s not written", s->kv_subject);
    free(txt);
}

static void *ticker_main(void *arg)
{
    wrk_loop *l = arg;
    int64_t progress_every = l->ack_wait_ms / 3 > 0 ? l->ack_wait_ms / 3 : 1;

    pthread_mutex_lock(&l->mu);
    while (!atomic_load(&l->ticker_stop)) {
        uint64_t kick = l->kick;
        atomic_store(&l->ticker_wake_at, 0);
        pthread_mutex_unlock(&l->mu);

        int64_t now = wrk_backend_now_ms();
        int64_t next = now + TICK_MAX_MS;
        for (int i = 0; i < l->nslots; i++) {
            wrk_slot *s = &l->slots[i];
            pthread_mutex_lock(&s->mu);
            if (s->stream != NULL) {
                wrk_stream_tick(s->stream, now);
                int64_t due = wrk_stream_due(s->stream);
                if (due < next)
                    next = due;
            }
            if (s->msg != NULL) {
                /* Long jobs (a job's own deadline may exceed the default,
                 * and publishing takes time too) keep their lease. */
                if (now - s->progress_ms >= progress_every) {
                    in_progress_send(l, s->msg);
                    s->progress_ms = now;
                }
                if (s->progress_ms + progress_every < next)
                    next = s->progress_ms + progress_every;
                if (s->want_running) {
                    if (now - s->start_ms >= RUNNING_AFTER_MS)
                        write_running(l, s);
                    else if (s->start_ms + RUNNING_AFTER_MS < next)
                        next = s->start_ms + RUNNING_AFTER_MS;
                }
            }
            pthread_mutex_unlock(&s->mu);
        }

        pthread_mutex_lock(&l->mu);
        if (l->kick == kick && !atomic_load(&l->ticker_stop)) {
            struct timespec ts = mono_abs(next);
            atomic_store(&l->ticker_wake_at, next);
            pthread_cond_timedwait(&l->tick_cv, &l->mu, &ts);
        }
    }
    pthread_mutex_unlock(&l->mu);
    return NULL;
}

/* Wakes the timer when something is due before it would wake anyway. */
static void ticker_need(wrk_loop *l, int64_t due_ms)
{
    if (due_ms < atomic_load(&l->ticker_wake_at) || atomic_load(&l->ticker_wake_at) == 0)
        kick_ticker(l);
}

/* ---- One job ----------------------------------------------------------- */

static int on_token(void *ud, const char *text, size_t len)
{
    job *j = ud;
    wrk_loop *l = j->slot->loop;
    bool armed = false;
    int64_t now = wrk_backend_now_ms();
    sl_status st;

    sl_counter_inc(l->m_tokens);
    st = wrk_stream_token(j->stream, text, len, now, &armed);
    if (armed)
        ticker_need(l, now + l->cfg.coalesce_ms);
    if (st == SL_ERR_FULL) {
        j->truncated = true;
        return 1; /* stop the model: the reply is as long as it may get */
    }
    if (st != SL_OK)
        j->stream_failed = true;
    return 0;
}

/* Binds the job to its slot, so that cancels and the timer can find it. */
static void slot_attach(wrk_slot *s, job *j)
{
    wrk_loop *l = s->loop;

    pthread_mutex_lock(&s->mu);
    s->busy = true;
    copy_id(s->tenant, j->tenant);
    copy_id(s->session, j->session);
    copy_id(s->to, j->to);
    copy_id(s->agent, j->agent);
    snprintf(s->kv_subject, sizeof(s->kv_subject), "$KV.%s.%s", SL_KV_INFLIGHT, j->kv_key);
    s->attempt = j->attempt;
    s->msg = j->msg;
    s->progress_ms = s->start_ms = wrk_backend_now_ms();
    s->want_running = false;
    atomic_store(&s->cancel, atomic_load(&l->abort_all) ? WRK_CANCEL_SHUTDOWN : WRK_CANCEL_NONE);
    pthread_mutex_unlock(&s->mu);
    pthread_mutex_lock(&l->mu);
    l->busy++;
    pthread_mutex_unlock(&l->mu);
    sl_gauge_inc(l->m_inflight);
}

/* The model call starts: the stream is ticked by the timer from now on,
 * which also writes `running` if the job lasts. */
static void slot_started(wrk_slot *s, wrk_stream *st)
{
    pthread_mutex_lock(&s->mu);
    s->stream = st;
    s->want_running = true;
    pthread_mutex_unlock(&s->mu);
}

/* The model call is over: no more ticks and no `running` from now on, so
 * the job's next state write is its last. */
static void slot_finishing(wrk_slot *s)
{
    pthread_mutex_lock(&s->mu);
    s->stream = NULL;
    s->want_running = false;
    pthread_mutex_unlock(&s->mu);
}

/* Acks, NAKs or terminates the work message; the slot lock orders this
 * with the timer's InProgress on the same message. */
static void slot_settle(wrk_slot *s, natsMsg *msg, int how, int64_t delay_ms)
{
    natsStatus ns;

    pthread_mutex_lock(&s->mu);
    s->msg = NULL;
    ns = ack_send(s->loop, msg, how, delay_ms);
    pthread_mutex_unlock(&s->mu);
    if (ns != NATS_OK)
        sl_warn("settling a work message failed: %s", natsStatus_GetText(ns));
}

static void slot_detach(wrk_slot *s)
{
    wrk_loop *l = s->loop;

    pthread_mutex_lock(&s->mu);
    s->busy = false;
    s->stream = NULL;
    s->msg = NULL;
    s->want_running = false;
    s->tenant[0] = s->session[0] = s->to[0] = s->agent[0] = '\0';
    atomic_store(&s->cancel, WRK_CANCEL_NONE);
    pthread_mutex_unlock(&s->mu);
    pthread_mutex_lock(&l->mu);
    l->busy--;
    pthread_cond_broadcast(&l->idle_cv);
    pthread_mutex_unlock(&l->mu);
    sl_gauge_dec(l->m_inflight);
}

/* Waits for the acknowledgments of the slot's asynchronous publishes
 * (tokens, agent message, in-flight state). Returns false (and logs) when
 * one failed or did not come in time. */
static bool slot_publishes_done(wrk_slot *s, const job *j, int errors_before)
{
    jsPubOptions po;
    natsStatus ns;
    sl_log_ctx c = job_ctx(j);

    jsPubOptions_Init(&po);
    po.MaxWait = PUB_WAIT_MS;
    ns = js_PublishAsyncComplete(s->js, &po);
    if (ns != NATS_OK) {
        natsMsgList pending = {0};
        sl_logf(SL_LOG_WARN, &c, "job %s: publishes not acknowledged within %d ms (%s)", j->job_id,
                PUB_WAIT_MS, natsStatus_GetText(ns));
        /* Forget them (a late acknowledgment is then ignored), or every
         * later wait of this slot would wait for them too; whoever needs
         * them stored publishes them again. */
        if (js_PublishAsyncGetPendingList(&pending, s->js) == NATS_OK)
            natsMsgList_Destroy(&pending);
        return false;
    }
    if (atomic_load(&s->pub_errors) != errors_before) {
        sl_logf(SL_LOG_WARN, &c, "job %s: the agent message or the in-flight state was not stored",
                j->job_id);
        return false;
    }
    return true;
}

/* Decodes and validates the work message. Returns false (and logs) for a
 * message no worker could ever process. */
static bool job_parse(job *j)
{
    const Sluice__Envelope *e;
    const Sluice__WorkRequest *w;
    bool is_room;
    const char *chan;

    if (sl_envelope_decode(natsMsg_GetData(j->msg), (size_t)natsMsg_GetDataLength(j->msg),
                           &j->env) != SL_OK) {
        sl_error("work message on %s is not an envelope; terminating it",
                 natsMsg_GetSubject(j->msg));
        return false;
    }
    e = j->env;
    w = e->body_case == SLUICE__ENVELOPE__BODY_WORK ? e->work : NULL;
    if (w == NULL || !sl_id_valid(e->tenant) || !sl_id_valid(w->job_id) || !sl_id_valid(w->agent)) {
        sl_error("work message on %s lacks a valid tenant, job id or agent; terminating it",
                 natsMsg_GetSubject(j->msg));
        return false;
    }
    j->work = w;
    j->tenant = e->tenant;
    j->session = e->session;
    j->job_id = w->job_id;
    j->reply_id = w->reply_id[0] != '\0' ? w->reply_id : w->job_id;
    j->to = w->to[0] != '\0' ? w->to : e->message_id;
    j->agent = w->agent;
    j->fallback = w->fallback[0] != '\0' ? w->fallback : DEFAULT_FALLBACK;
    is_room = w->room[0] != '\0';
    chan = is_room ? w->room : e->session;
    if (sl_subject_chan(j->subject, sizeof(j->subject), "sluice.out", j->tenant, is_room, chan) !=
            SL_OK ||
        sl_kv_key2(j->kv_key, sizeof(j->kv_key), j->tenant, j->job_id) != SL_OK) {
        sl_error("work message %s has an invalid room or session; terminating it", w->job_id);
        return false;
    }
    return true;
}

/* Sleeps up to ms, in steps, returning early once the grace of a stop is
 * over. */
static void store_backoff(wrk_loop *l, int64_t ms)
{
    int64_t until = wrk_backend_now_ms() + ms;

    while (!atomic_load(&l->abort_all)) {
        int64_t left = until - wrk_backend_now_ms();
        if (left <= 0)
            break;
        if (left > 100)
            left = 100;
        nanosleep(&(struct timespec){.tv_sec = 0, .tv_nsec = (long)left * 1000000L}, NULL);
    }
}

/* Stores the end of a job: the final reply, published and awaited; then
 * the agent message (for ok and partial ends) and the in-flight end state,
 * asynchronous, one wait for both. What fails is published again (each
 * under its Nats-Msg-Id, so JetStream keeps one copy; the end state is the
 * same value again) with a back-off, for up to STORE_RETRY_MS or until the
 * grace of a stop is over; the work message stays unacknowledged all that
 * time and the timer keeps its lease. Returns true once everything is
 * stored. */
static bool job_store_end(wrk_loop *l, job *j, const wrk_decision *d, const char *text,
                          const char *so_far)
{
    wrk_slot *s = j->slot;
    sl_log_ctx c = job_ctx(j);
    int64_t give_up = wrk_backend_now_ms() + STORE_RETRY_MS;
    int64_t backoff = STORE_BACKOFF_MIN_MS;
    bool final_ok = false;
    bool want_agent = d->end == WRK_END_OK || d->end == WRK_END_PARTIAL;

    for (int round = 0;; round++) {
        if (round > 0) {
            if (wrk_backend_now_ms() + backoff > give_up || atomic_load(&l->abort_all))
                return false;
            sl_counter_inc(l->m_store_retries);
            store_backoff(l, backoff);
            backoff = backoff * 2 > STORE_BACKOFF_MAX_MS ? STORE_BACKOFF_MAX_MS : backoff * 2;
        }
        if (!final_ok) {
            bool duplicate = false;
            sl_status st = wrk_stream_final(j->stream, text, d->end == WRK_END_DEGRADED,
                                            d->end == WRK_END_PARTIAL, d->end == WRK_END_CANCELLED,
                                            &duplicate);
            if (st != SL_OK) {
                sl_logf(SL_LOG_WARN, &c, "job %s: final reply not stored (%s); trying again",
                        j->job_id, sl_status_str(st));
                continue;
            }
            final_ok = true;
            if (duplicate && round == 0)
                sl_logf(SL_LOG_INFO, &c, "job %s: a final reply was already stored", j->job_id);
        }
        int errors_before = atomic_load(&s->pub_errors);
        bool sent = true;
        if (want_agent) {
            wrk_agent_msg am = {
                .tenant = j->tenant,
                .session = j->session,
                .trace_id = j->env->trace_id,
                .hops = j->env->hops + 1,
                .reply_id = j->reply_id,
                .agent = j->agent,
                .room = j->work->room,
                .text = so_far,
            };
            sl_status st = wrk_agent_message_publish_async(s->js, &am);
            if (st == SL_ERR_INVAL) {
                /* No valid subject for this agent: nothing that could ever
                 * be stored, so nothing to wait for. */
                sl_logf(SL_LOG_WARN, &c, "job %s: no agent message (%s)", j->job_id,
                        sl_status_str(st));
                want_agent = false;
            } else if (st != SL_OK) {
                sent = false;
            }
        }
        if (!kv_put_async(l, j, d->kv_state))
            sent = false;
        if (slot_publishes_done(s, j, errors_before) && sent)
            return true;
        sl_logf(SL_LOG_WARN, &c, "job %s: %s not stored; trying again before the ack", j->job_id,
                want_agent ? "the agent message or the end state" : "the end state");
    }
}

/* Stores the end of the job (job_store_end), and only then acks (or
 * terminates) the work message. When the end could not be stored in time
 * the job is handed back (NAK): the next attempt ends it, and its final
 * reply is a duplicate JetStream drops when this one was stored. */
static void job_finish(wrk_loop *l, job *j, const wrk_decision *d)
{
    wrk_slot *s = j->slot;
    sl_log_ctx c = job_ctx(j);
    size_t len = 0;
    const char *so_far = wrk_stream_text(j->stream, &len);
    const char *text = d->end == WRK_END_DEGRADED ? j->fallback : so_far;

    if (!job_store_end(l, j, d, text, so_far)) {
        sl_logf(SL_LOG_ERROR, &c,
                "job %s: its end could not be stored; handing it back for another attempt",
                j->job_id);
        sl_counter_inc(l->m_jobs[M_FAILED]);
        slot_settle(s, j->msg, SETTLE_NAK, FINAL_RETRY_MS);
        return;
    }
    slot_settle(s, j->msg, d->term ? SETTLE_TERM : SETTLE_ACK, 0);
    for (int i = 0; i < 4; i++)
        if (d->metric != NULL && strcmp(d->metric, metric_names[i]) == 0)
            sl_counter_inc(l->m_jobs[i]);
    sl_logf(SL_LOG_DEBUG, &c,
            "job %s attempt %" PRIu64 " ended: %s (%zu bytes, %" PRIu32 " chunks)", j->job_id,
            j->attempt, d->metric != NULL ? d->metric : "?", strlen(text),
            wrk_stream_chunks(j->stream));
}

/* Builds the model's messages: system prompt, channel history, the message
 * answered. */
static sl_status job_messages(wrk_loop *l, job *j, int64_t deadline, wrk_history **hist,
                              wrk_msg **out, size_t *n)
{
    wrk_msg *msgs = NULL;
    size_t k = 0, nh = 0;

    if (l->cfg.context_messages > 0) {
        int64_t budget = (deadline - wrk_backend_now_ms()) / 4;
        if (budget > CONTEXT_BUDGET_MS)
            budget = CONTEXT_BUDGET_MS;
        if (budget > 0) {
            sl_status st = wrk_history_load(j->slot->js, j->subject, j->to, j->agent,
                                            (size_t)l->cfg.context_messages, budget, hist);
            if (st != SL_OK) {
                sl_log_ctx c = job_ctx(j);
                sl_logf(SL_LOG_WARN, &c, "job %s: no channel context (%s)", j->job_id,
                        sl_status_str(st));
            }
        }
        if (*hist != NULL)
            nh = (*hist)->n;
    }
    msgs = calloc(nh + 2, sizeof(*msgs));
    if (msgs == NULL)
        return SL_ERR_NOMEM;
    if (j->work->system_prompt[0] != '\0')
        msgs[k++] = (wrk_msg){.role = "system", .content = j->work->system_prompt};
    for (size_t i = 0; i < nh; i++)
        msgs[k++] = (*hist)->msgs[i];
    msgs[k++] = (wrk_msg){.role = "user", .content = j->work->text};
    *out = msgs;
    *n = k;
    return SL_OK;
}

static void job_run(wrk_slot *s, natsMsg *msg)
{
    wrk_loop *l = s->loop;
    job j = {.slot = s, .msg = msg, .start_ms = wrk_backend_now_ms()};
    jsMsgMetaData *meta = NULL;
    wrk_history *hist = NULL;
    wrk_msg *msgs = NULL;
    size_t nmsgs = 0;
    wrk_result res;
    wrk_decision d;
    char state[32];
    sl_log_ctx c;
    bool attached = false;
    int64_t deadline;

    if (natsMsg_GetMetaData(&meta, msg) != NATS_OK) {
        sl_error("work message without JetStream metadata; ignoring it");
        goto cleanup;
    }
    j.attempt = meta->NumDelivered;
    if (!job_parse(&j)) {
        sl_counter_inc(l->m_jobs[M_FAILED]);
        ack_send(l, msg, SETTLE_TERM, 0);
        goto cleanup;
    }
    c = job_ctx(&j);
    /* Attach before looking for cancels, so a cancel arriving from now on
     * reaches the slot and one that arrived earlier is found below. */
    slot_attach(s, &j);
    attached = true;

    /* Only a redelivery can find its job ended: a first delivery is the
     * first time any worker sees the job (a work message published again
     * under the same Nats-Msg-Id is dropped by JetStream, and so would be
     * this attempt's reply). */
    if (j.attempt > 1 && kv_job_finished(l, &j, state, sizeof(state))) {
        sl_logf(SL_LOG_INFO, &c, "job %s already ended (%s); acking the redelivery", j.job_id,
                state);
        slot_settle(s, msg, SETTLE_ACK, 0);
        goto cleanup;
    }

    wrk_stream_params sp = {
        .subject = j.subject,
        .tenant = j.tenant,
        .session = j.session,
        .trace_id = j.env->trace_id,
        .hops = j.env->hops,
        .job_id = j.job_id,
        .reply_id = j.reply_id,
        .to = j.to,
        .agent = j.agent,
        .attempt = (uint32_t)j.attempt,
        .window_ms = l->cfg.coalesce_ms,
        .max_bytes = (size_t)l->cfg.coalesce_bytes,
        /* Token events are best effort (the final reply carries the whole
         * text): no acknowledgment traffic for them. */
        .nc = l->nc,
    };
    if (wrk_stream_create(&j.stream, s->js, &sp) != SL_OK) {
        sl_logf(SL_LOG_ERROR, &c, "job %s: out of memory; will be retried", j.job_id);
        slot_settle(s, msg, SETTLE_NAK, FINAL_RETRY_MS);
        goto cleanup;
    }

    if (atomic_load(&s->cancel) == WRK_CANCEL_USER || cancel_requested(l, s, &j)) {
        d = (wrk_decision){
            .end = WRK_END_CANCELLED, .kv_state = "cancelled", .metric = "cancelled"};
        sl_logf(SL_LOG_INFO, &c, "job %s was cancelled before it started", j.job_id);
        job_finish(l, &j, &d);
        goto cleanup;
    }

    deadline = j.start_ms + (j.work->deadline_ms > 0 ? j.work->deadline_ms : l->cfg.timeout_ms);
    if (job_messages(l, &j, deadline, &hist, &msgs, &nmsgs) != SL_OK) {
        slot_settle(s, msg, SETTLE_NAK, FINAL_RETRY_MS);
        goto cleanup;
    }
    slot_started(s, j.stream);

    wrk_call call = {
        .model = j.work->model,
        .msgs = msgs,
        .nmsgs = nmsgs,
        .deadline_ms = deadline,
        .cancel = &s->cancel,
    };
    wrk_backend_call(l->backend, &call, on_token, &j, &res);
    slot_finishing(s);
    wrk_stream_flush(j.stream);

    size_t len = 0;
    wrk_stream_text(j.stream, &len);
    d = wrk_job_decide(res.outcome, (wrk_cancel_reason)atomic_load(&s->cancel), j.truncated, len,
                       j.attempt, l->max_deliver, res.retry_after_ms);
    if (res.outcome != WRK_DONE)
        sl_logf(SL_LOG_INFO, &c, "job %s attempt %" PRIu64 ": model call %s (http %d): %s",
                j.job_id, j.attempt, wrk_outcome_str(res.outcome), res.http_status, res.error);

    if (d.end == WRK_END_RETRY || d.end == WRK_END_REQUEUE) {
        int errors_before = atomic_load(&s->pub_errors);
        kv_put_async(l, &j, d.kv_state);
        (void)slot_publishes_done(s, &j, errors_before);
        sl_counter_inc(d.end == WRK_END_RETRY ? l->m_retries : l->m_requeued);
        sl_logf(SL_LOG_INFO, &c, "job %s attempt %" PRIu64 ": %s in %" PRId64 " ms", j.job_id,
                j.attempt, d.end == WRK_END_RETRY ? "retrying" : "handing back", d.delay_ms);
        slot_settle(s, msg, SETTLE_NAK, d.delay_ms);
        goto cleanup;
    }
    job_finish(l, &j, &d);
    {
        int64_t first = wrk_stream_first_chunk_ms(j.stream);
        if (first > 0)
            sl_hist_observe_ns(l->m_ttft, (first - j.start_ms) * NS_PER_MS);
        sl_hist_observe_ns(l->m_job, (wrk_backend_now_ms() - j.start_ms) * NS_PER_MS);
    }

cleanup:
    if (attached)
        slot_detach(s);
    wrk_stream_destroy(j.stream);
    free(msgs);
    wrk_history_destroy(hist);
    sl_envelope_free(j.env);
    jsMsgMetaData_Destroy(meta);
}

/* ---- Slot threads ------------------------------------------------------ */

/* Free job capacity: slots without a job, minus jobs waiting for a slot,
 * minus jobs asked for and not delivered yet. Caller holds qmu. */
static int free_capacity(const wrk_loop *l)
{
    return l->idle - l->nready - wrk_sched_outstanding(l->sched);
}

static int64_t pump(wrk_loop *l, int64_t now);
static void need_setup(wrk_loop *l, const wrk_queue *q);

/* Adds a delivered job to the ready ring (growing it when late deliveries
 * overfill it). Caller holds qmu. Returns false when out of memory. */
static bool ready_push(wrk_loop *l, natsMsg *msg, wrk_queue *q)
{
    if (l->nready == l->rcap) {
        int cap = l->rcap * 2;
        ready_job *nr = calloc((size_t)cap, sizeof(*nr));
        if (nr == NULL)
            return false;
        for (int i = 0; i < l->nready; i++)
            nr[i] = l->ready[(l->rhead + i) % l->rcap];
        free(l->ready);
        l->ready = nr;
        l->rcap = cap;
        l->rhead = 0;
    }
    l->ready[(l->rhead + l->nready) % l->rcap] = (ready_job){.msg = msg, .q = q};
    l->nready++;
    return true;
}

static void *slot_main(void *arg)
{
    wrk_slot *s = arg;
    wrk_loop *l = s->loop;

    pthread_mutex_lock(&l->qmu);
    for (;;) {
        if (l->nready > 0) {
            ready_job rj = l->ready[l->rhead];
            l->rhead = (l->rhead + 1) % l->rcap;
            l->nready--;
            l->idle--;
            pthread_mutex_unlock(&l->qmu);
            /* Even while stopping, a fetched job runs: within the grace it
             * may finish, and after it slot_attach aborts it at once. */
            job_run(s, rj.msg);
            natsMsg_Destroy(rj.msg);
            pthread_mutex_lock(&l->qmu);
            wrk_sched_release(l->sched, rj.q, wrk_backend_now_ms());
            l->idle++;
            pump(l, wrk_backend_now_ms());
            continue;
        }
        if (l->disp_done)
            break;
        pthread_cond_wait(&l->job_cv, &l->qmu);
    }
    pthread_mutex_unlock(&l->qmu);
    return NULL;
}

/* ---- Pulling ----------------------------------------------------------- */

/* The model index of name, or -1. */
static int model_index(const wrk_loop *l, const char *name, size_t len)
{
    for (size_t m = 0; m < l->nmodels; m++)
        if (strlen(l->models[m]) == len && strncmp(l->models[m], name, len) == 0)
            return (int)m;
    return -1;
}

/* The queue that serves (model, tenant): the model's legacy queue while
 * the model-wide consumer is in use, else the tenant's own (created when
 * create is set). Caller holds qmu. */
static wrk_queue *queue_for(wrk_loop *l, size_t m, const char *tenant, bool create)
{
    wrk_queue *q;

    if (l->legacy[m])
        return l->legacy_q[m];
    q = wrk_sched_queue(l->sched, m, l->models[m], tenant, create);
    if (q == NULL && create && sl_id_valid(tenant)) {
        static int64_t last;
        if (log_due(&last))
            sl_warn("work queue table full (%d queues): tenant %s of model %s waits",
                    WRK_QUEUES_MAX, tenant, l->models[m]);
    }
    return q;
}

/* The queue a delivery belongs to, from its consumer name. Caller holds
 * qmu. */
static wrk_queue *queue_of_consumer(wrk_loop *l, const char *consumer)
{
    const char *tilde;
    int m;

    if (consumer == NULL || strncmp(consumer, "wrk_", 4) != 0)
        return NULL;
    consumer += 4;
    tilde = strchr(consumer, '~');
    if (tilde == NULL) {
        m = model_index(l, consumer, strlen(consumer));
        return m >= 0 && l->legacy[m] ? l->legacy_q[m] : NULL;
    }
    m = model_index(l, consumer, (size_t)(tilde - consumer));
    return m >= 0 ? wrk_sched_queue(l->sched, (size_t)m, l->models[m], tilde + 1, true) : NULL;
}

/* Replies to our pull requests. Jobs keep their own subject and carry a
 * $JS.ACK reply subject naming the consumer, so they are matched to their
 * queue (whose one open request they fill) by consumer name. Status
 * messages arrive on <inbox>.<queue id>.<token> and end a request early:
 * 404 no messages, 408 request timeout (fewer jobs than asked for) or
 * requests pending, 409 a consumer problem. A request to a consumer that
 * does not exist gets no answer at all: wrk_sched_expire ends it. Runs on a
 * cnats thread. */
static void on_pull_reply(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    wrk_loop *l = closure;
    const char *reply = natsMsg_GetReply(msg);
    int64_t now = wrk_backend_now_ms();
    wrk_queue *q = NULL;

    (void)nc;
    (void)sub;
    if (reply != NULL && strncmp(reply, "$JS.ACK.", 8) == 0) {
        jsMsgMetaData *meta = NULL;
        bool ok = false;
        pthread_mutex_lock(&l->qmu);
        if (natsMsg_GetMetaData(&meta, msg) == NATS_OK)
            q = queue_of_consumer(l, meta->Consumer);
        jsMsgMetaData_Destroy(meta);
        /* Stopping (no slot will take it) or unaccountable: back to the
         * stream at once, for another worker. */
        if (l->accepting && q != NULL && ready_push(l, msg, q)) {
            if (wrk_sched_delivered(l->sched, q, q->req_token, now))
                pump(l, now);
            pthread_cond_signal(&l->job_cv);
            ok = true;
        }
        pthread_mutex_unlock(&l->qmu);
        if (!ok) {
            ack_send(l, msg, SETTLE_NAK, 0);
            natsMsg_Destroy(msg);
        }
        return;
    }

    {
        const char *subj = natsMsg_GetSubject(msg);
        size_t plen = strlen(l->inbox);
        unsigned long long qid = 0, token = 0;
        const char *status = NULL;
        int code = 0;

        if (natsMsgHeader_Get(msg, "Status", &status) == NATS_OK && status != NULL)
            code = atoi(status);
        if (strncmp(subj, l->inbox, plen) != 0 || subj[plen] != '.' ||
            sscanf(subj + plen + 1, "%llu.%llu", &qid, &token) != 2 || qid >= UINT32_MAX ||
            code == 100) /* 100: a heartbeat or flow control, not an end */
            goto done;
        pthread_mutex_lock(&l->qmu);
        q = wrk_sched_by_id(l->sched, (uint32_t)qid);
        if (q != NULL && wrk_sched_ended(l->sched, q, token, now)) {
            if (code == 409) {
                /* The consumer cannot serve pulls (deleted meanwhile, or
                 * changed): set it up again. */
                const char *desc = NULL;
                natsMsgHeader_Get(msg, "Description", &desc);
                sl_debug("pull from %s: %d %s", q->durable, code, desc != NULL ? desc : "");
                q->ready = false;
                q->retry_at_ms = now + QUEUE_RETRY_MS;
                wrk_sched_ring(l->sched, q, now, 1);
                need_setup(l, q);
            }
            pump(l, now);
        }
        pthread_mutex_unlock(&l->qmu);
    }
done:
    natsMsg_Destroy(msg);
}

/* The orchestrator stored jobs for sluice.work.<model>.<tenant> and rang
 * sluice.ctl.work.<model>.<tenant>: the queue is asked at its turn. Runs
 * on a cnats thread. */
static void on_bell(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    wrk_loop *l = closure;
    const char *subj = natsMsg_GetSubject(msg);
    const char *model = subj + strlen("sluice.ctl.work.");
    const char *dot = strchr(model, '.');
    int m;

    (void)nc;
    (void)sub;
    if (strncmp(subj, "sluice.ctl.work.", 16) == 0 && dot != NULL &&
        (m = model_index(l, model, (size_t)(dot - model))) >= 0) {
        /* The body is the number of jobs stored (empty: at least one). */
        char body[16];
        int len = natsMsg_GetDataLength(msg), jobs = 1;
        if (len > 0 && len < (int)sizeof(body)) {
            memcpy(body, natsMsg_GetData(msg), (size_t)len);
            body[len] = '\0';
            jobs = atoi(body);
            if (jobs < 1 || jobs > 1000000)
                jobs = 1;
        }
        pthread_mutex_lock(&l->qmu);
        wrk_queue *q = queue_for(l, (size_t)m, dot + 1, true);
        if (q != NULL) {
            int64_t now = wrk_backend_now_ms();
            wrk_sched_ring(l->sched, q, now, jobs);
            need_setup(l, q);
            pump(l, now);
        }
        pthread_mutex_unlock(&l->qmu);
    }
    natsMsg_Destroy(msg);
}

/* Ensures a durable pull consumer (creating it, or updating AckWait,
 * MaxDeliver and BackOff when they differ). Returns SL_OK; SL_ERR_INVAL
 * when it exists with another filter, ack policy or delivery mode;
 * SL_ERR_BUS. A reason goes to err. */
static sl_status ensure_consumer(wrk_loop *l, const char *durable, const char *filter, bool create,
                                 char *err, size_t errlen)
{
    int64_t aw = l->ack_wait_ms * NS_PER_MS;
    int64_t backoff[WRK_MAX_DELIVER - 1];
    jsConsumerConfig cc;
    jsConsumerInfo *ci = NULL;
    jsErrCode jerr = 0;
    natsStatus ns;
    sl_status st = SL_OK;

    /* Equal back-off steps: a crashed worker's job comes back after AckWait
     * each time. Growing steps would also be added to every NAK delay by the
     * server (a NAK's delay is counted from BackOff[0]), so transient
     * retries get their growing back-off from the NAK delays instead. */
    for (int i = 0; i < WRK_MAX_DELIVER - 1; i++)
        backoff[i] = aw;
    jsConsumerConfig_Init(&cc);
    cc.Durable = durable;
    cc.FilterSubject = filter;
    cc.AckPolicy = js_AckExplicit;
    cc.AckWait = aw;
    cc.MaxDeliver = WRK_MAX_DELIVER;
    cc.BackOff = backoff;
    cc.BackOffLen = WRK_MAX_DELIVER - 1;
    cc.DeliverPolicy = js_DeliverAll;
    /* Tenants come and go: an unused tenant consumer is removed by the
     * server, and made again by the first worker that sees work for it. */
    if (strchr(durable, '~') != NULL)
        cc.InactiveThreshold = (int64_t)WRK_CONSUMER_IDLE_S * 1000 * NS_PER_MS;

    ns = js_GetConsumerInfo(&ci, l->js, SL_STREAM_WORK, durable, NULL, &jerr);
    /* Only per-tenant consumers are ever created: a model-wide one
     * (wrk_<model>, from before the migration) made again by a stale queue
     * would overlap every tenant's filter and block their consumers. */
    if (ns == NATS_NOT_FOUND && create && strchr(durable, '~') != NULL) {
        ns = js_AddConsumer(&ci, l->js, SL_STREAM_WORK, &cc, NULL, &jerr);
        if (ns == NATS_OK)
            sl_debug("created consumer %s on %s", durable, SL_STREAM_WORK);
        else /* another worker may have created it in between */
            ns = js_GetConsumerInfo(&ci, l->js, SL_STREAM_WORK, durable, NULL, &jerr);
    }
    if (ns != NATS_OK) {
        set_err(err, errlen, "consumer %s: %s (jerr %d)", durable, natsStatus_GetText(ns),
                (int)jerr);
        st = SL_ERR_BUS;
        goto cleanup;
    }
    if (ci->Config->FilterSubject == NULL || strcmp(ci->Config->FilterSubject, filter) != 0 ||
        ci->Config->AckPolicy != js_AckExplicit || ci->Config->DeliverSubject != NULL) {
        set_err(err, errlen,
                "consumer %s exists with another filter, ack policy or delivery mode; fix or "
                "delete it with sluicectl",
                durable);
        st = SL_ERR_INVAL;
        goto cleanup;
    }
    if (ci->Config->AckWait != aw || ci->Config->MaxDeliver != WRK_MAX_DELIVER ||
        ci->Config->BackOffLen != cc.BackOffLen) {
        jsConsumerInfo *up = NULL;
        ns = js_UpdateConsumer(&up, l->js, SL_STREAM_WORK, &cc, NULL, &jerr);
        if (ns == NATS_OK) {
            sl_warn("consumer %s had AckWait %" PRId64 " ms / MaxDeliver %" PRId64
                    "; updated to %" PRId64 " ms / %d",
                    durable, ci->Config->AckWait / NS_PER_MS, ci->Config->MaxDeliver,
                    l->ack_wait_ms, WRK_MAX_DELIVER);
            jsConsumerInfo_Destroy(ci);
            ci = up;
        } else {
            sl_warn("consumer %s has other settings and could not be updated (%s); using it",
                    durable, natsStatus_GetText(ns));
        }
    }
    /* Every consumer is made by this code, so they agree. */
    l->max_deliver = ci->Config->MaxDeliver;
cleanup:
    jsConsumerInfo_Destroy(ci);
    return st;
}

/* Looks at a model's model-wide consumer `wrk_<model>` (filter
 * sluice.work.<model>.>, made by workers before per-tenant consumers).
 * A work-queue stream refuses per-tenant consumers beside it, so while it
 * exists every job of the model is pulled from it (first in, first out, as
 * before). Once it holds nothing (no job pending, none unacknowledged, no
 * pull waiting: no worker of the older kind uses it) it is deleted and the
 * model moves to per-tenant consumers. Sets *legacy. Returns SL_OK, or
 * SL_ERR_BUS / SL_ERR_INVAL (a consumer of that name with another filter)
 * with a reason in err. own_idle tells that this worker holds nothing from
 * it. */
static sl_status legacy_check(wrk_loop *l, size_t m, bool own_idle, bool *legacy, char *err,
                              size_t errlen)
{
    char durable[WRK_DURABLE_MAX], filter[SL_SUBJECT_MAX];
    jsConsumerInfo *ci = NULL;
    jsErrCode jerr = 0;
    natsStatus ns;
    sl_status st = SL_OK;

    snprintf(durable, sizeof(durable), "wrk_%s", l->models[m]);
    snprintf(filter, sizeof(filter), "sluice.work.%s.>", l->models[m]);
    ns = js_GetConsumerInfo(&ci, l->js, SL_STREAM_WORK, durable, NULL, &jerr);
    if (ns == NATS_NOT_FOUND) {
        *legacy = false;
        goto cleanup;
    }
    if (ns != NATS_OK) {
        set_err(err, errlen, "consumer %s: %s (jerr %d)", durable, natsStatus_GetText(ns),
                (int)jerr);
        st = SL_ERR_BUS;
        goto cleanup;
    }
    if (ci->Config->FilterSubject == NULL || strcmp(ci->Config->FilterSubject, filter) != 0 ||
        ci->Config->AckPolicy != js_AckExplicit || ci->Config->DeliverSubject != NULL) {
        set_err(err, errlen,
                "consumer %s exists with another filter, ack policy or delivery mode; fix or "
                "delete it with sluicectl",
                durable);
        st = SL_ERR_INVAL;
        goto cleanup;
    }
    *legacy = true;
    if (own_idle && ci->NumPending == 0 && ci->NumAckPending == 0 && ci->NumWaiting == 0) {
        ns = js_DeleteConsumer(l->js, SL_STREAM_WORK, durable, NULL, &jerr);
        if (ns == NATS_OK || ns == NATS_NOT_FOUND) {
            sl_info("consumer %s is empty and unused: deleted; model %s now has a consumer per "
                    "tenant",
                    durable, l->models[m]);
            *legacy = false;
        } else {
            sl_warn("consumer %s is empty but could not be deleted (%s, jerr %d); still using it",
                    durable, natsStatus_GetText(ns), (int)jerr);
        }
    } else if (own_idle) {
        static int64_t last;
        if (log_due(&last))
            sl_info("consumer %s still holds jobs (%" PRIu64 " pending, %" PRId64
                    " unacknowledged, %" PRId64 " pulls waiting): serving model %s from it",
                    durable, ci->NumPending, ci->NumAckPending, ci->NumWaiting, l->models[m]);
    }
cleanup:
    jsConsumerInfo_Destroy(ci);
    return st;
}

/* Switches model m in or out of legacy mode. Caller holds qmu. */
static void set_legacy(wrk_loop *l, size_t m, bool legacy)
{
    if (legacy == l->legacy[m])
        return;
    if (legacy) {
        wrk_queue *q = wrk_sched_queue(l->sched, m, l->models[m], "", true);
        if (q == NULL)
            return; /* out of memory: retried at the next discovery */
        q->ready = true;
        q->pinned = true; /* legacy_q points to it */
        l->legacy_q[m] = q;
        l->legacy[m] = true;
        wrk_sched_ring(l->sched, q, wrk_backend_now_ms(), 1);
        return;
    }
    l->legacy[m] = false;
    /* A legacy queue still holding jobs is freed later by wrk_sched_prune. */
    if (l->legacy_q[m] != NULL) {
        l->legacy_q[m]->pinned = false;
        wrk_sched_remove(l->sched, l->legacy_q[m]);
    }
    l->legacy_q[m] = NULL;
}

/* Reads the stream's per-subject counts for one model and rings every
 * queue with more jobs than this worker holds from it. */
static void discover_model(wrk_loop *l, size_t m, int64_t now)
{
    static int64_t last_warn;
    char filter[SL_SUBJECT_MAX];
    jsStreamInfo *si = NULL;
    jsOptions o;
    jsErrCode jerr = 0;
    natsStatus ns;

    snprintf(filter, sizeof(filter), "sluice.work.%s.*", l->models[m]);
    jsOptions_Init(&o);
    o.Stream.Info.SubjectsFilter = filter;
    ns = js_GetStreamInfo(&si, l->js, SL_STREAM_WORK, &o, &jerr);
    if (ns != NATS_OK) {
        if (log_due(&last_warn))
            sl_warn("reading %s subjects failed: %s (jerr %d); retrying", SL_STREAM_WORK,
                    natsStatus_GetText(ns), (int)jerr);
        return;
    }
    pthread_mutex_lock(&l->qmu);
    for (int i = 0; si->State.Subjects != NULL && i < si->State.Subjects->Count; i++) {
        const jsStreamStateSubject *ss = &si->State.Subjects->List[i];
        const char *tenant = strrchr(ss->Subject, '.');
        wrk_queue *q;
        if (tenant == NULL || ss->Msgs == 0)
            continue;
        q = queue_for(l, m, tenant + 1, true);
        if (q != NULL && ss->Msgs > (uint64_t)q->held && q->req_token == 0)
            wrk_sched_ring_count(l->sched, q, now,
                                 ss->Msgs - (uint64_t)q->held > INT32_MAX
                                     ? INT32_MAX
                                     : (int)(ss->Msgs - (uint64_t)q->held));
    }
    pthread_mutex_unlock(&l->qmu);
    jsStreamInfo_Destroy(si);
}

static void discover(wrk_loop *l, int64_t now)
{
    static int64_t last_warn;

    for (size_t m = 0; m < l->nmodels; m++) {
        bool legacy, own_idle;
        char err[256];

        pthread_mutex_lock(&l->qmu);
        legacy = l->legacy[m];
        own_idle = !legacy || (l->legacy_q[m]->held == 0 && l->legacy_q[m]->req_token == 0 &&
                               !l->legacy_q[m]->claimed);
        pthread_mutex_unlock(&l->qmu);
        if (legacy) {
            bool still = true;
            if (legacy_check(l, m, own_idle, &still, err, sizeof(err)) != SL_OK) {
                if (log_due(&last_warn))
                    sl_warn("%s", err);
            } else if (!still) {
                pthread_mutex_lock(&l->qmu);
                set_legacy(l, m, false);
                pthread_mutex_unlock(&l->qmu);
            }
        }
        discover_model(l, m, now);
    }
}

/* Sends the pull request of q's open request token: up to batch jobs, at
 * once (no_wait: an empty queue answers 404 without waiting). */
static natsStatus send_pull(wrk_loop *l, const char *durable, uint32_t qid, uint64_t token,
                            int batch)
{
    char subj[SL_SUBJECT_MAX], reply[192], body[64];

    snprintf(subj, sizeof(subj), "$JS.API.CONSUMER.MSG.NEXT.%s.%s", SL_STREAM_WORK, durable);
    snprintf(reply, sizeof(reply), "%s.%" PRIu32 ".%" PRIu64, l->inbox, qid, token);
    snprintf(body, sizeof(body), "{\"batch\":%d,\"no_wait\":true}", batch);
    sl_counter_inc(l->m_pulls);
    return natsConnection_PublishRequestString(l->nc, subj, reply, body);
}

/* Sends pull requests while there is free capacity and a queue whose turn
 * it is. Called with qmu held by the dispatcher and by every callback that
 * frees capacity or rings a queue, so a job needs no dispatcher wake-up.
 * The publish is made under qmu: it only queues bytes on the connection
 * and calls none of our callbacks. Queues whose consumer is not set up
 * yet keep their place in line for the dispatcher (wrk_sched_unready).
 * Returns the earliest retry time of a queue kept waiting, or INT64_MAX. */
static int64_t pump(wrk_loop *l, int64_t now)
{
    static int64_t last_warn;
    size_t tries = wrk_sched_active(l->sched) + 1;
    int64_t wake = INT64_MAX;

    for (size_t i = 0; i < tries && !atomic_load(&l->stopping); i++) {
        int free = free_capacity(l), batch = 0;
        uint64_t token;
        natsStatus ns;
        wrk_queue *q;

        if (free <= 0)
            break;
        q = wrk_sched_next(l->sched, free, now, &batch, &wake);
        if (q == NULL)
            break;
        token = wrk_sched_open(l->sched, q, batch, now);
        ns = send_pull(l, q->durable, q->id, token, batch);
        if (ns != NATS_OK && wrk_sched_ended(l->sched, q, token, now)) {
            q->retry_at_ms = now + QUEUE_RETRY_MS;
            wrk_sched_ring(l->sched, q, now, batch);
            if (log_due(&last_warn))
                sl_warn("pull request to %s failed: %s; retrying", q->durable,
                        natsStatus_GetText(ns));
        }
    }
    return wake;
}

/* Wakes the dispatcher when q needs its consumer set up. Caller holds
 * qmu. */
static void need_setup(wrk_loop *l, const wrk_queue *q)
{
    if (!q->ready && !q->setting_up)
        pthread_cond_signal(&l->disp_cv);
}

static void *dispatch_main(void *arg)
{
    wrk_loop *l = arg;
    int64_t next_discover = 0, next_prune = wrk_backend_now_ms() + QUEUE_FORGET_MS / 10;
    int64_t stop_until = 0;
    int64_t last_warn = 0;
    int64_t next_sample = 0;

    pthread_mutex_lock(&l->qmu);
    for (;;) {
        int64_t now = wrk_backend_now_ms();
        int64_t wake = INT64_MAX;
        wrk_queue *q;

        if (atomic_load(&l->stopping)) {
            /* No new requests; the open ones are answered at once (no_wait),
             * and what they bring is run or handed back by the slots. */
            if (stop_until == 0)
                stop_until = now + 1000;
            if (wrk_sched_outstanding(l->sched) == 0 || now >= stop_until)
                break;
            struct timespec ts = mono_abs(now + 20);
            pthread_cond_timedwait(&l->disp_cv, &l->qmu, &ts);
            continue;
        }
        if (now >= next_discover) {
            size_t n;
            pthread_mutex_unlock(&l->qmu);
            if (now >= next_sample) {
                sl_streams_sample(l->js);
                next_sample = now + STREAM_SAMPLE_MS;
            }
            discover(l, now);
            pthread_mutex_lock(&l->qmu);
            n = wrk_sched_expire(l->sched, now, REQUEST_TIMEOUT_MS);
            if (n > 0)
                sl_debug("%zu pull request(s) unanswered for %d ms; asking again", n,
                         REQUEST_TIMEOUT_MS);
            if (now >= next_prune) {
                wrk_sched_prune(l->sched, now, QUEUE_FORGET_MS);
                next_prune = now + QUEUE_FORGET_MS / 10;
            }
            sl_gauge_set(l->m_queues, (int64_t)wrk_sched_active(l->sched));
            next_discover = wrk_backend_now_ms() + DISCOVER_MS;
            continue;
        }
        /* New queues get their consumer at once, whatever the free
         * capacity; they keep their place in line meanwhile. */
        q = wrk_sched_unready(l->sched, now, &wake);
        if (q != NULL) {
            char durable[WRK_DURABLE_MAX], filter[SL_SUBJECT_MAX], err[256];
            sl_status st;
            snprintf(durable, sizeof(durable), "%s", q->durable);
            snprintf(filter, sizeof(filter), "%s", q->filter);
            pthread_mutex_unlock(&l->qmu);
            st = ensure_consumer(l, durable, filter, true, err, sizeof(err));
            pthread_mutex_lock(&l->qmu);
            wrk_sched_setup_done(l->sched, q, st == SL_OK, wrk_backend_now_ms() + QUEUE_RETRY_MS);
            if (st != SL_OK && log_due(&last_warn))
                sl_warn("work queue %s: %s; retrying", durable, err);
            pump(l, wrk_backend_now_ms());
            continue;
        }
        {
            int64_t retry = pump(l, now);
            struct timespec ts;
            if (retry < wake)
                wake = retry;
            ts = mono_abs(wake < next_discover ? wake : next_discover);
            pthread_cond_timedwait(&l->disp_cv, &l->qmu, &ts);
        }
    }
    /* From now on a late delivery is handed back by on_pull_reply. */
    l->accepting = false;
    l->disp_done = true;
    pthread_cond_broadcast(&l->job_cv);
    pthread_mutex_unlock(&l->qmu);
    pthread_mutex_lock(&l->mu);
    pthread_cond_broadcast(&l->idle_cv);
    pthread_mutex_unlock(&l->mu);
    return NULL;
}

/* ---- Setup ------------------------------------------------------------- */

static void on_pub_error(jsCtx *js, jsPubAckErr *pae, void *closure)
{
    wrk_slot *s = closure;

    (void)js;
    atomic_fetch_add(&s->pub_errors, 1);
    /* The final reply carries the whole text, so a lost token chunk only
     * costs the client some streaming; count and log it. */
    sl_counter_inc(sl_counter_get("sluice_wrk_publish_errors_total", NULL,
                                  "token, reply or agent-message publishes that failed"));
    sl_debug("publish not acknowledged: %s (jerr %d)", natsStatus_GetText(pae->Err),
             (int)pae->ErrCode);
}

static void init_metrics(wrk_loop *l)
{
    for (int i = 0; i < 5; i++) {
        char labels[64];
        snprintf(labels, sizeof(labels), "outcome=\"%s\"", metric_names[i]);
        l->m_jobs[i] = sl_counter_get("sluice_wrk_jobs_total", labels,
                                      "jobs ended, by outcome (failed: the reply could not be "
                                      "stored or the job was unreadable)");
    }
    l->m_tokens = sl_counter_get("sluice_wrk_tokens_total", NULL, "tokens received from models");
    l->m_retries = sl_counter_get("sluice_wrk_retries_total", NULL,
                                  "transient model failures handed back with a NAK delay");
    l->m_requeued =
        sl_counter_get("sluice_wrk_requeued_total", NULL, "running jobs handed back at shutdown");
    l->m_cancels = sl_counter_get("sluice_wrk_cancels_total", NULL,
                                  "cancel requests received on sluice.ctl.cancel");
    l->m_store_retries =
        sl_counter_get("sluice_wrk_store_retries_total", NULL,
                       "rounds in which a job's final reply, agent message or end state was "
                       "stored again before the ack");
    l->m_pulls = sl_counter_get("sluice_wrk_pull_requests_total", NULL,
                                "pull requests sent to the work queues (tenant turns)");
    l->m_ttft = sl_hist_get("sluice_wrk_ttft_seconds", NULL,
                            "time from job start to the first token event published");
    l->m_job = sl_hist_get("sluice_wrk_job_seconds", NULL, "time from job start to its end");
    l->m_inflight = sl_gauge_get("sluice_wrk_inflight", NULL, "jobs running in this worker");
    l->m_queues = sl_gauge_get("sluice_wrk_active_queues", NULL,
                               "work queues (model, tenant) waiting for their turn");
}

static sl_status start_thread(pthread_t *th, void *(*fn)(void *), void *arg)
{
    sigset_t all, old;
    int rc;

    /* Threads started here never take signals: main handles them. */
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    rc = pthread_create(th, NULL, fn, arg);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return rc == 0 ? SL_OK : SL_ERR_INTERNAL;
}

/* Subscribes to the pull replies and the doorbells, and finds each model's
 * mode (legacy model-wide consumer or per-tenant consumers). */
static sl_status setup_pulling(wrk_loop *l, char *err, size_t errlen)
{
    natsInbox *inbox = NULL;
    char subj[SL_SUBJECT_MAX];
    natsStatus ns;
    sl_status st;

    if (natsInbox_Create(&inbox) != NATS_OK)
        return SL_ERR_NOMEM;
    snprintf(l->inbox, sizeof(l->inbox), "%s", (const char *)inbox);
    natsInbox_Destroy(inbox);
    snprintf(subj, sizeof(subj), "%s.*.*", l->inbox);
    ns = natsConnection_Subscribe(&l->inbox_sub, l->nc, subj, on_pull_reply, l);
    if (ns == NATS_OK)
        ns = natsSubscription_SetPendingLimits(l->inbox_sub, -1, -1);
    if (ns != NATS_OK) {
        set_err(err, errlen, "subscribe %s: %s", subj, natsStatus_GetText(ns));
        return SL_ERR_BUS;
    }
    for (size_t m = 0; m < l->nmodels; m++) {
        bool legacy = false;
        st = legacy_check(l, m, true, &legacy, err, errlen);
        if (st != SL_OK)
            return st;
        pthread_mutex_lock(&l->qmu);
        set_legacy(l, m, legacy);
        pthread_mutex_unlock(&l->qmu);
        if (legacy && !l->legacy[m])
            return SL_ERR_NOMEM;
        if (legacy) {
            /* Settings as for every consumer we make; the filter is checked. */
            char durable[WRK_DURABLE_MAX], filter[SL_SUBJECT_MAX];
            snprintf(durable, sizeof(durable), "wrk_%s", l->models[m]);
            snprintf(filter, sizeof(filter), "sluice.work.%s.>", l->models[m]);
            st = ensure_consumer(l, durable, filter, false, err, errlen);
            if (st == SL_ERR_INVAL)
                return st;
        }
        /* The doorbell, rung by the orchestrator once jobs are stored. */
        snprintf(subj, sizeof(subj), "sluice.ctl.work.%s.*", l->models[m]);
        ns = natsConnection_Subscribe(&l->bell_subs[m], l->nc, subj, on_bell, l);
        if (ns == NATS_OK)
            ns = natsSubscription_SetPendingLimits(l->bell_subs[m], -1, -1);
        if (ns != NATS_OK) {
            set_err(err, errlen, "subscribe %s: %s", subj, natsStatus_GetText(ns));
            return SL_ERR_BUS;
        }
    }
    return SL_OK;
}

sl_status wrk_loop_create(wrk_loop **out, sl_bus *bus, wrk_backend *backend,
                          const wrk_loop_cfg *cfg, char *err, size_t errlen)
{
    wrk_loop *l = NULL;
    pthread_condattr_t ca;
    natsStatus ns;
    sl_status st = SL_OK;
    char cancel_subj[SL_SUBJECT_MAX];

    if (out == NULL || bus == NULL || backend == NULL || cfg == NULL || cfg->models == NULL ||
        cfg->nmodels == 0 || cfg->concurrency < 1 || cfg->concurrency > WRK_CONCURRENCY_MAX ||
        cfg->timeout_ms <= 0 || cfg->ack_grace_ms < 0 || cfg->coalesce_ms < 0 ||
        cfg->coalesce_bytes < 1 || cfg->context_messages < 0 ||
        (cfg->weights == NULL && cfg->nweights > 0)) {
        set_err(err, errlen, "wrk_loop_create: bad configuration");
        return SL_ERR_INVAL;
    }
    for (size_t m = 0; m < cfg->nmodels; m++) {
        if (!sl_id_valid(cfg->models[m])) {
            set_err(err, errlen, "SLUICE_WORKER_MODELS: \"%.64s\" is not a valid model id",
                    cfg->models[m] != NULL ? cfg->models[m] : "");
            return SL_ERR_INVAL;
        }
    }
    l = calloc(1, sizeof(*l));
    if (l == NULL)
        return SL_ERR_NOMEM;
    pthread_mutex_init(&l->mu, NULL);
    pthread_mutex_init(&l->qmu, NULL);
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&l->tick_cv, &ca);
    pthread_cond_init(&l->idle_cv, &ca);
    pthread_cond_init(&l->job_cv, &ca);
    pthread_cond_init(&l->disp_cv, &ca);
    pthread_condattr_destroy(&ca);
    l->bus = bus;
    l->nc = sl_bus_nc(bus);
    l->backend = backend;
    l->cfg = *cfg;
    l->stopped = false;
    l->accepting = true;
    l->ack_wait_ms = cfg->timeout_ms + cfg->ack_grace_ms;
    l->max_deliver = WRK_MAX_DELIVER;
    init_metrics(l);

    l->models = calloc(cfg->nmodels, sizeof(*l->models));
    l->legacy = calloc(cfg->nmodels, sizeof(*l->legacy));
    l->legacy_q = calloc(cfg->nmodels, sizeof(*l->legacy_q));
    l->bell_subs = calloc(cfg->nmodels, sizeof(*l->bell_subs));
    l->worker_id = strdup(cfg->worker_id != NULL ? cfg->worker_id : "worker");
    if (l->models == NULL || l->legacy == NULL || l->legacy_q == NULL || l->bell_subs == NULL ||
        l->worker_id == NULL) {
        st = SL_ERR_NOMEM;
        goto cleanup;
    }
    l->nmodels = cfg->nmodels;
    for (size_t m = 0; m < cfg->nmodels; m++) {
        l->models[m] = strdup(cfg->models[m]);
        if (l->models[m] == NULL) {
            st = SL_ERR_NOMEM;
            goto cleanup;
        }
    }
    l->cfg.models = (const char *const *)l->models;
    l->cfg.worker_id = l->worker_id;

    ns = natsConnection_JetStream(&l->js, l->nc, NULL);
    if (ns != NATS_OK) {
        set_err(err, errlen, "jetstream context: %s", natsStatus_GetText(ns));
        st = SL_ERR_BUS;
        goto cleanup;
    }
    st = sl_bus_kv(bus, SL_KV_INFLIGHT, &l->kv);
    if (st == SL_OK)
        st = sl_bus_kv(bus, SL_KV_CANCEL, &l->kv_cancel);
    if (st != SL_OK) {
        set_err(err, errlen, "buckets %s, %s: %s", SL_KV_INFLIGHT, SL_KV_CANCEL, sl_status_str(st));
        st = SL_ERR_BUS;
        goto cleanup;
    }

    l->nslots = cfg->concurrency;
    l->slots = calloc((size_t)l->nslots, sizeof(*l->slots));
    l->rcap = 2 * l->nslots;
    l->ready = calloc((size_t)l->rcap, sizeof(*l->ready));
    if (l->slots == NULL || l->ready == NULL ||
        wrk_sched_create(&l->sched, WRK_QUEUES_MAX) != SL_OK) {
        st = SL_ERR_NOMEM;
        goto cleanup;
    }
    st = wrk_sched_set_weights(l->sched, cfg->weights, cfg->nweights);
    if (st != SL_OK) {
        set_err(err, errlen, "SLUICE_TENANT_WEIGHTS: %s", sl_status_str(st));
        goto cleanup;
    }
    l->cfg.weights = NULL; /* the table has its copy */
    l->cfg.nweights = 0;
    l->idle = l->nslots;
    for (int i = 0; i < l->nslots; i++) {
        wrk_slot *s = &l->slots[i];
        jsOptions jo;
        s->loop = l;
        s->idx = i;
        pthread_mutex_init(&s->mu, NULL);
        atomic_init(&s->cancel, WRK_CANCEL_NONE);
        atomic_init(&s->pub_errors, 0);
        if (natsStatistics_Create(&s->stats) != NATS_OK) {
            st = SL_ERR_NOMEM;
            goto cleanup;
        }
        /* A context per slot: its asynchronous publishes are this slot's
         * alone, so one js_PublishAsyncComplete waits for one job's. */
        jsOptions_Init(&jo);
        jo.PublishAsync.MaxPending = 1024;
        jo.PublishAsync.ErrHandler = on_pub_error;
        jo.PublishAsync.ErrHandlerClosure = s;
        ns = natsConnection_JetStream(&s->js, l->nc, &jo);
        if (ns != NATS_OK) {
            set_err(err, errlen, "jetstream context: %s", natsStatus_GetText(ns));
            st = SL_ERR_BUS;
            goto cleanup;
        }
    }

    st = setup_pulling(l, err, errlen);
    if (st != SL_OK)
        goto cleanup;

    snprintf(cancel_subj, sizeof(cancel_subj), "sluice.ctl.cancel.*");
    ns = natsConnection_Subscribe(&l->cancel_sub, l->nc, cancel_subj, on_cancel, l);
    if (ns == NATS_OK) /* a dropped cancel would go unnoticed: no client-side limit */
        ns = natsSubscription_SetPendingLimits(l->cancel_sub, -1, -1);
    if (ns != NATS_OK) {
        set_err(err, errlen, "subscribe %s: %s", cancel_subj, natsStatus_GetText(ns));
        st = SL_ERR_BUS;
        goto cleanup;
    }
    /* Make sure the server has our interests (cancels, doorbells, pull
     * replies) before jobs run; cancels are heard from then on. Until that
     * is sure, every job reads its cancel marker. */
    {
        natsStatistics *stats = NULL;
        uint64_t reconnects = 0;
        bool flushed = natsConnection_FlushTimeout(l->nc, 2000) == NATS_OK;
        if (natsStatistics_Create(&stats) == NATS_OK &&
            natsConnection_GetStats(l->nc, stats) == NATS_OK)
            natsStatistics_GetCounts(stats, NULL, NULL, NULL, NULL, &reconnects);
        natsStatistics_Destroy(stats);
        l->reconnects = reconnects;
        l->live_since_ms = sl_now_ns() / NS_PER_MS + (flushed ? 0 : RECENT_CANCEL_MS);
    }

    st = start_thread(&l->ticker, ticker_main, l);
    if (st != SL_OK) {
        set_err(err, errlen, "cannot start the timer thread");
        goto cleanup;
    }
    l->ticker_started = true;
    for (int i = 0; i < l->nslots; i++) {
        st = start_thread(&l->slots[i].th, slot_main, &l->slots[i]);
        if (st != SL_OK) {
            set_err(err, errlen, "cannot start job thread %d", i);
            goto cleanup;
        }
        l->slots[i].started = true;
    }
    st = start_thread(&l->disp, dispatch_main, l);
    if (st != SL_OK) {
        set_err(err, errlen, "cannot start the dispatcher thread");
        goto cleanup;
    }
    l->disp_started = true;
    atomic_store(&l->running, 1);
    sl_info("worker %s: %d job slots on %zu model(s), AckWait %" PRId64 " ms, MaxDeliver %" PRId64
            ", a consumer per (model, tenant)",
            l->worker_id, l->nslots, l->nmodels, l->ack_wait_ms, l->max_deliver);
    *out = l;
    l = NULL;
cleanup:
    wrk_loop_destroy(l);
    return st;
}

bool wrk_loop_ready(const wrk_loop *l)
{
    return l != NULL && atomic_load(&l->running) && !atomic_load(&l->stopping);
}

/* Runs or hands back what is still waiting: called after every slot
 * thread has ended, so only a NAK is left. */
static void nak_ready(wrk_loop *l)
{
    int n = 0;

    pthread_mutex_lock(&l->qmu);
    while (l->nready > 0) {
        ready_job rj = l->ready[l->rhead];
        l->rhead = (l->rhead + 1) % l->rcap;
        l->nready--;
        ack_send(l, rj.msg, SETTLE_NAK, 0);
        natsMsg_Destroy(rj.msg);
        wrk_sched_release(l->sched, rj.q, wrk_backend_now_ms());
        n++;
    }
    pthread_mutex_unlock(&l->qmu);
    if (n > 0)
        sl_info("stopping: handed back %d job(s) that arrived after the last slot ended", n);
}

static void sub_close(natsSubscription *sub, int64_t wait_ms)
{
    if (sub == NULL)
        return;
    /* Drain: a running callback finishes before the loop is freed. */
    if (natsSubscription_Drain(sub) == NATS_OK)
        natsSubscription_WaitForDrainCompletion(sub, wait_ms);
    else
        natsSubscription_Unsubscribe(sub);
}

/* True when the loop holds no job: none running, none waiting for a slot,
 * and the dispatcher has stopped asking for more. */
static bool loop_empty(wrk_loop *l)
{
    bool empty;

    pthread_mutex_lock(&l->qmu);
    empty = l->nready == 0 && (l->disp_done || !l->disp_started);
    pthread_mutex_unlock(&l->qmu);
    return empty;
}

void wrk_loop_stop(wrk_loop *l, int64_t grace_ms)
{
    int64_t until;
    int left;

    if (l == NULL || l->stopped)
        return;
    l->stopped = true;
    atomic_store(&l->stopping, 1);
    until = wrk_backend_now_ms() + (grace_ms > 0 ? grace_ms : 0);
    pthread_mutex_lock(&l->qmu);
    pthread_cond_broadcast(&l->disp_cv);
    pthread_mutex_unlock(&l->qmu);

    /* Running jobs may finish within the grace, and so may those fetched
     * just before the stop (the dispatcher ends within about a second:
     * its open requests are answered at once). */
    pthread_mutex_lock(&l->mu);
    if (l->busy > 0)
        sl_info("stopping: waiting up to %" PRId64 " ms for %d running job(s)", grace_ms, l->busy);
    pthread_mutex_unlock(&l->mu);
    for (;;) {
        int64_t now = wrk_backend_now_ms();
        bool empty = loop_empty(l);
        pthread_mutex_lock(&l->mu);
        left = l->busy;
        if ((left == 0 && empty) || now >= until) {
            pthread_mutex_unlock(&l->mu);
            break;
        }
        struct timespec ts = mono_abs(now + 20 < until ? now + 20 : until);
        pthread_cond_timedwait(&l->idle_cv, &l->mu, &ts);
        pthread_mutex_unlock(&l->mu);
    }
    /* Before handing anything back, let the dispatcher end (at most about
     * a second), so a NAKed job goes to another worker, not to a request
     * of ours. */
    if (left > 0 || !loop_empty(l)) {
        int64_t disp_until = wrk_backend_now_ms() + 1500;
        while (!loop_empty(l) && wrk_backend_now_ms() < disp_until) {
            pthread_mutex_lock(&l->qmu);
            if (l->disp_done) {
                pthread_mutex_unlock(&l->qmu);
                break;
            }
            pthread_mutex_unlock(&l->qmu);
            struct timespec ts = {.tv_sec = 0, .tv_nsec = 20 * 1000000L};
            nanosleep(&ts, NULL);
        }
        sl_warn("stopping: grace over, handing back %d running job(s)", left);
    }

    /* Abort what still runs; each job NAKs itself (or ends on its last
     * delivery). A job that starts from now on was fetched before the stop
     * and is aborted at once too (slot_attach reads abort_all under the
     * slot lock, so no job slips between the two). */
    atomic_store(&l->abort_all, 1);
    for (int i = 0; l->slots != NULL && i < l->nslots; i++) {
        int expected = WRK_CANCEL_NONE;
        wrk_slot *s = &l->slots[i];
        pthread_mutex_lock(&s->mu);
        if (s->busy)
            atomic_compare_exchange_strong(&s->cancel, &expected, WRK_CANCEL_SHUTDOWN);
        pthread_mutex_unlock(&s->mu);
    }
    if (l->disp_started) {
        pthread_join(l->disp, NULL);
        l->disp_started = false;
    } else {
        pthread_mutex_lock(&l->qmu);
        l->accepting = false;
        l->disp_done = true;
        pthread_cond_broadcast(&l->job_cv);
        pthread_mutex_unlock(&l->qmu);
    }
    for (int i = 0; l->slots != NULL && i < l->nslots; i++) {
        if (l->slots[i].started) {
            pthread_join(l->slots[i].th, NULL);
            l->slots[i].started = false;
        }
    }
    for (size_t m = 0; l->bell_subs != NULL && m < l->nmodels; m++)
        sub_close(l->bell_subs[m], 2000);
    /* Late deliveries are NAKed by the callback (accepting is false). */
    sub_close(l->inbox_sub, 2000);
    if (l->ready != NULL)
        nak_ready(l);
    if (l->ticker_started) {
        pthread_mutex_lock(&l->mu);
        atomic_store(&l->ticker_stop, 1);
        pthread_cond_signal(&l->tick_cv);
        pthread_mutex_unlock(&l->mu);
        pthread_join(l->ticker, NULL);
        l->ticker_started = false;
    }
    /* Wait for a running cancel callback: it reads the slots. */
    sub_close(l->cancel_sub, 2000);
    for (int i = 0; l->slots != NULL && i < l->nslots; i++) {
        if (l->slots[i].js != NULL) {
            jsPubOptions po;
            jsPubOptions_Init(&po);
            po.MaxWait = 2000;
            js_PublishAsyncComplete(l->slots[i].js, &po);
        }
    }
    atomic_store(&l->running, 0);
}

void wrk_loop_destroy(wrk_loop *l)
{
    if (l == NULL)
        return;
    /* A loop that failed half-way through create is stopped the same way. */
    atomic_store(&l->stopping, 1);
    wrk_loop_stop(l, 0);
    for (size_t m = 0; l->bell_subs != NULL && m < l->nmodels; m++)
        natsSubscription_Destroy(l->bell_subs[m]);
    natsSubscription_Destroy(l->inbox_sub);
    natsSubscription_Destroy(l->cancel_sub);
    for (int i = 0; l->slots != NULL && i < l->nslots; i++) {
        wrk_slot *s = &l->slots[i];
        jsCtx_Destroy(s->js);
        natsStatistics_Destroy(s->stats);
        pthread_mutex_destroy(&s->mu);
    }
    free(l->slots);
    free(l->ready);
    wrk_sched_destroy(l->sched);
    kvStore_Destroy(l->kv);
    kvStore_Destroy(l->kv_cancel);
    jsCtx_Destroy(l->js);
    for (size_t m = 0; l->models != NULL && m < l->nmodels; m++)
        free(l->models[m]);
    free(l->models);
    free(l->legacy);
    free(l->legacy_q);
    free(l->bell_subs);
    free(l->worker_id);
    pthread_cond_destroy(&l->tick_cv);
    pthread_cond_destroy(&l->idle_cv);
    pthread_cond_destroy(&l->job_cv);
    pthread_cond_destroy(&l->disp_cv);
    pthread_mutex_destroy(&l->qmu);
    pthread_mutex_destroy(&l->mu);
    free(l);
}
