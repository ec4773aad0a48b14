/* The job loop's insides, shared by its source files (not for callers:
 * wrk_loop.h is the interface):
 *   wrk_loop.c    create, stop, destroy, metrics
 *   wrk_pull.c    queues and their consumers, pull requests, the ready
 *                 list, the slot threads and the dispatcher thread
 *   wrk_job.c     one job from start to ack, the timer thread, acks,
 *                 in-flight states, the end decision
 *   wrk_cancel.c  cancels heard on core NATS and the cancel markers
 * wrk_loop.c uses the three others, wrk_pull.c uses wrk_job.c, which uses
 * wrk_cancel.c; nothing goes the other way. Threads and locks: see
 * wrk_loop.h and the fields' comments. */
#ifndef WRK_LOOP_INT_H
#define WRK_LOOP_INT_H

#include "wrk_loop.h"
#include "wrk_usage.h"

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
#include "sl_json.h"
#include "sl_log.h"
#include "sl_metrics.h"
#include "sl_streams.h"
#include "sl_subject.h"
#include "sl_time.h"
#include "wrk_sched.h"
#include "wrk_stream.h"

#define NS_PER_MS ((int64_t)1000000)

/* Cancels seen on core NATS, remembered so a job that starts after its
 * cancel arrived (before the orchestrator wrote the KV marker) is dropped
 * too. */
#define RECENT_CANCELS   256
#define RECENT_CANCEL_MS (10 * 60 * 1000)
/* Queues a worker keeps at most (wrk_sched). */
#define WRK_QUEUES_MAX 65536

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
    int64_t progress_ms; /* delivered, or its last InProgress */
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
    kvStore *kv_quota;  /* sluice_quota */
    kvStore *kv_usage;  /* sluice_usage */
    wrk_usage *usage;   /* token accounting (wrk_usage.h): its own flusher thread */
    wrk_backend *backend;

    char **models;
    size_t nmodels;
    wrk_loop_cfg cfg; /* models and worker_id point into this struct's copies */
    char *worker_id;
    int64_t ack_wait_ms;
    int64_t max_deliver;

    wrk_slot *slots; /* nslots job slots, then the finisher's (fin) */
    int nslots;
    wrk_slot *fin; /* the finisher's publishing context: &slots[nslots], no thread of its own */
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
    ready_job *ready;  /* the jobs delivered and not started, oldest first */
    wrk_queue **pickq; /* scratch for wrk_sched_pick: rcap entries */
    int rcap, nready;
    int idle;       /* slots without a job */
    int ahead;      /* jobs the worker may hold beyond its slots (wrk_pull.c) */
    int64_t job_us; /* the slots' average time per job, us (0: none yet) */
    bool disp_done, accepting;
    bool *legacy;         /* per model: the model-wide consumer is still in use */
    wrk_queue **legacy_q; /* per model: its queue while legacy */
    char inbox[128];      /* pull replies arrive on <inbox>.<queue id>.<token> */
    natsSubscription *inbox_sub;
    natsSubscription **bell_subs; /* per model: sluice.ctl.work.<model>.* */
    pthread_t disp;
    bool disp_started;

    /* Finishing: a job whose model call is over leaves its slot and waits
     * here for the finisher thread, which stores the ends of every job
     * waiting in one batch (wrk_job.c). */
    pthread_mutex_t fmu;     /* guards the fields below up to fin_started */
    pthread_cond_t fin_cv;   /* a job to finish, or the stop */
    pthread_cond_t fin_room; /* room in the list */
    struct done_job *fhead, *ftail;
    struct done_job *fin_rest; /* the finisher's: its batch's jobs not ended yet (no lock) */
    int fcount, fmax;
    bool fin_stop;
    pthread_t fin_th;
    bool fin_started;

    _Atomic int stopping;
    _Atomic int abort_all; /* the grace is over: every job is aborted as it starts */
    _Atomic int ticker_stop;
    _Atomic int running;
    bool stopped;

    sl_counter *m_jobs[5]; /* ok, partial, degraded, cancelled, failed */
    sl_counter *m_tokens, *m_retries, *m_requeued, *m_cancels, *m_pulls, *m_store_retries;
    sl_counter *m_agent_skipped, *m_consumer_recoveries;
    sl_hist *m_ttft, *m_job;
    sl_hist *m_wait; /* stored on WORK to a slot taking it, first deliveries */
    sl_gauge *m_inflight, *m_queues;
};

enum { M_OK, M_PARTIAL, M_DEGRADED, M_CANCELLED, M_FAILED };

/* The outcome labels of m_jobs, by M_* (wrk_job.c). */
extern const char *const wrk__metric_names[5];

typedef struct job {
    wrk_slot *slot;
    natsMsg *msg;
    Sluice__Envelope *env;
    const Sluice__WorkRequest *work;
    const char *tenant, *session, *job_id, *reply_id, *to, *agent, *fallback;
    char subject[SL_SUBJECT_MAX];
    char kv_key[SL_SUBJECT_MAX];
    char kv_subject[SL_SUBJECT_MAX + 32]; /* kv_key as a subject of the in-flight bucket */
    uint64_t attempt;
    int64_t start_ms;
    wrk_stream *stream;
    bool truncated;
    bool stream_failed;
    bool agent_counted; /* m_agent_skipped was counted for this job */
} job;

/* A job whose model call is over, waiting for the finisher: it owns the
 * work message, the envelope and the stream. */
typedef struct done_job {
    job j;
    wrk_decision d;
    wrk_call_usage used;
    struct done_job *next;
} done_job;

/* The work messages come from our own pull requests on a plain
 * subscription (not a cnats JetStream one), so they are acknowledged by
 * publishing to their reply subject, as the JetStream protocol defines. */
enum { SETTLE_ACK = 0, SETTLE_TERM = 1, SETTLE_NAK = 2, SETTLE_PROGRESS = 3 };

static inline void copy_id(char *dst, const char *src)
{
    snprintf(dst, SL_ID_MAX + 1, "%s", src != NULL ? src : "");
}

/* Converts an absolute CLOCK_MONOTONIC time in ms to a timespec. */
static inline struct timespec mono_abs(int64_t ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
    return ts;
}

/* Warnings that could repeat on every turn of a loop are logged at most
 * every 5 s per call site. */
static inline bool log_due(int64_t *last)
{
    int64_t now = sl_mono_ms();

    if (now - *last < 5000)
        return false;
    *last = now;
    return true;
}

/* ---- Across files ------------------------------------------------------ */

/* Bound on the wait for the acknowledgments of a job's last publishes. */
#define PUB_WAIT_MS 5000

/* wrk_job.c */
natsStatus wrk__ack_send(wrk_loop *l, natsMsg *msg, int how, int64_t delay_ms);
/* Acks, NAKs or terminates (how) the work message of slot s's job. */
void wrk__slot_settle(wrk_slot *s, natsMsg *msg, int how, int64_t delay_ms);
/* Writes the job's in-flight state asynchronously; false when not sent. */
bool wrk__kv_put_async(wrk_loop *l, job *j, const char *state);
/* Whether the job's answer goes to SLUICE_IN as an agent message. */
bool wrk__job_wants_agent_msg(const job *j, const wrk_decision *d, const char *so_far);
/* Publishes the job's agent message asynchronously on js (SL_ERR_INVAL:
 * no valid subject, logged, nothing to wait for). */
sl_status wrk__job_agent_msg_publish(jsCtx *js, const job *j, const char *so_far);
/* Stores the job's end on its slot, one by one, with retries, and settles
 * it. */
bool wrk__job_finish(wrk_loop *l, job *j, const wrk_decision *d);
/* Runs the job in msg on slot s (the slot's thread). Returns true when
 * the job went on to the finisher, which then owns msg; else msg stays the
 * caller's. */
bool wrk__job_run(wrk_slot *s, natsMsg *msg);

/* wrk_finish.c */
/* Hands a job whose model call is over to the finisher; false when out of
 * memory (the caller finishes the job itself). */
bool wrk__job_hand_over(wrk_loop *l, job *j, const wrk_decision *d, const wrk_call_usage *used);
/* The finisher thread (arg: the loop); it ends once fin_stop is set and
 * its list is empty. */
void *wrk__finisher_main(void *arg);
/* The timer thread (arg: the loop; wrk_job.c). */
void *wrk__ticker_main(void *arg);

/* wrk_cancel.c */
/* True when a cancel for j's message was heard or its marker is set. */
bool wrk__cancel_requested(wrk_loop *l, wrk_slot *s, const job *j);
/* The sluice.ctl.cancel.* subscription's callback (closure: the loop). */
void wrk__on_cancel(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure);

/* wrk_pull.c */
/* Subscribes to pull replies and doorbells and finds each model's mode. */
sl_status wrk__setup_pulling(wrk_loop *l, char *err, size_t errlen);

/* A slot thread (arg: its slot) and the dispatcher thread (arg: the loop). */
void *wrk__slot_main(void *arg);
void *wrk__dispatch_main(void *arg);
/* Sets how far ahead of its slots the loop pulls (before the threads
 * start). */
void wrk__pull_ahead_init(wrk_loop *l);
/* Hands back (NAK) the jobs still in the ready list; after the slots end. */
void wrk__nak_ready(wrk_loop *l);

/* wrk_consumer.c */
/* Ensures a durable pull consumer on SLUICE_WORK for
 * filter (created when create is set and it is per-tenant; AckWait,
 * MaxDeliver and BackOff updated when they differ). SL_OK; SL_ERR_INVAL
 * when it exists with another filter, ack policy or delivery mode;
 * SL_ERR_BUS. A reason goes to err. */
sl_status wrk__ensure_consumer(wrk_loop *l, const char *durable, const char *filter, bool create,
                               char *err, size_t errlen);
/* Deletes the per-tenant consumer durable, failing for stalled_ms (the last
 * error in why), and creates it afresh; logs and counts it. SL_OK when the
 * new consumer exists, else an error with a reason in err. */
sl_status wrk__recover_consumer(wrk_loop *l, const char *durable, const char *filter,
                                int64_t stalled_ms, const char *why, char *err, size_t errlen);
/* Looks at model m's model-wide consumer of older workers: sets *legacy
 * while it exists, and deletes it once empty and unused (own_idle: this
 * worker holds nothing from it). SL_OK, or an error with a reason in err. */
sl_status wrk__legacy_check(wrk_loop *l, size_t m, bool own_idle, bool *legacy, char *err,
                            size_t errlen);

#endif
