/* The seven fault scenarios of issue 6 and the table printing. */
#include <cJSON.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fault.h"
#include "fault_load.h"
#include "hx.h"

#define FX_ENV_MAX 24

/* Everything one scenario run needs. */
typedef struct fx_ctx {
    fx_size size;
    hx_stack_cfg stack;
    const char *env[FX_ENV_MAX];
    int nenv;
    fx_load_cfg load;
    int connect_timeout_ms;
    int settle_timeout_ms;
    int fault_at_pct; /* the fault happens when this share of the messages is accepted */
    int rounds;       /* how many times the fault happens (soak: 2, 35 points apart) */
    int round;        /* the current one, from 0 */
    hx_stack *s;
    fx_load *l;
    bool killed[HX_TIERS][HX_STACK_MAX_PER_TIER]; /* killed by the fault and not restarted */
    double survivor_min; /* orchestrator-kill: fewest messages a survivor took over in a round */
    int slow[8];
    int nslow;
} fx_ctx;

typedef struct fx_scen {
    const char *name;
    void (*plan)(fx_ctx *x);
    /* Injects the fault mid-load (the load keeps running); SL_OK when it
     * was injected. */
    sl_status (*fault)(fx_ctx *x, fx_result *r);
    /* After the count: did the fault take effect? */
    bool (*verify)(fx_ctx *x, fx_result *r);
} fx_scen;

static void fx_env(fx_ctx *x, const char *kv)
{
    if (x->nenv < FX_ENV_MAX - 1)
        x->env[x->nenv++] = kv;
    x->env[x->nenv] = NULL;
}

static void fx_notef(fx_result *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void fx_notef(fx_result *r, const char *fmt, ...)
{
    size_t n = strlen(r->note);
    va_list ap;
    if (n >= sizeof r->note - 1)
        return;
    va_start(ap, fmt);
    vsnprintf(r->note + n, sizeof r->note - n, fmt, ap);
    va_end(ap);
}

static void fx_whyf(fx_result *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void fx_whyf(fx_result *r, const char *fmt, ...)
{
    size_t n = strlen(r->why);
    va_list ap;
    if (n >= sizeof r->why - 1)
        return;
    if (n > 0) {
        snprintf(r->why + n, sizeof r->why - n, "; ");
        n = strlen(r->why);
    }
    va_start(ap, fmt);
    vsnprintf(r->why + n, sizeof r->why - n, fmt, ap);
    va_end(ap);
}

/* The value of a Prometheus sample (summed over its label sets when
 * labels is NULL), or -1 when the endpoint does not answer. */
static double fx_metric(hx_stack *s, hx_tier tier, int i, const char *name, const char *labels)
{
    char *body = NULL;
    int port = hx_stack_admin_port(s, tier, i);
    double sum = 0;
    size_t nl = strlen(name);

    if (port < 0 || hx_http_get(NULL, port, "/metrics", 3000, &body) != 200) {
        free(body);
        return -1;
    }
    for (char *line = body; line != NULL && *line != '\0';) {
        char *eol = strchr(line, '\n');
        if (eol != NULL)
            *eol = '\0';
        if (strncmp(line, name, nl) == 0 && (line[nl] == ' ' || line[nl] == '{')) {
            const char *v = strrchr(line, ' ');
            bool want = labels == NULL || (line[nl] == '{' && strstr(line, labels) != NULL);
            if (want && v != NULL)
                sum += strtod(v + 1, NULL);
        }
        line = eol != NULL ? eol + 1 : NULL;
    }
    free(body);
    return sum;
}

/* ---------- the plans ---------- */

/* The common shape: two tenants with same-named rooms, a few rooms each,
 * every client a sender, one message in three private. */
static void fx_plan_base(fx_ctx *x)
{
    bool soak = x->size == FX_SOAK;

    x->stack.gateways = 1;
    x->stack.orchestrators = 1;
    /* Soak: twice the workers, and a pace the machine can answer (the
     * point is faults, not a tenant queue that fills up for good). */
    x->stack.workers = soak ? 2 : 1;
    x->stack.echo_token_delay_ms = 10;
    x->stack.env = x->env;
    /* Stopping after a fault may wait out a NATS timeout (5 s); the note
     * shows how long the stop took. */
    x->stack.term_timeout_ms = 15000;
    fx_env(x, "SLUICE_DRAIN_GRACE_MS=500");
    fx_env(x, "SLUICE_MODEL_TIMEOUT_MS=3000");
    fx_env(x, "SLUICE_WORKER_ACK_GRACE_MS=1000");
    fx_env(x, "SLUICE_PUBLISH_TIMEOUT_MS=3000");
    if (soak && getenv("FX_DEBUG") == NULL)
        fx_env(x, "SLUICE_LOG_LEVEL=info");
    x->load.tenants = 2;
    x->load.rooms = 3;
    x->load.clients = soak ? 96 : 24;
    x->load.senders = x->load.clients;
    x->load.msgs_per_sender = soak ? 40 : 12;
    x->load.private_every = 3;
    x->load.words = 6;
    x->load.send_interval_ms = soak ? 500 : 150;
    x->load.threads = 2;
    x->connect_timeout_ms = 30000;
    x->settle_timeout_ms = soak ? 120000 : 40000;
    x->fault_at_pct = 30;
    x->rounds = soak ? 2 : 1;
}

static void plan_gateway_kill(fx_ctx *x)
{
    fx_plan_base(x);
    x->stack.gateways = 2;
}

static void plan_orchestrator_kill(fx_ctx *x)
{
    fx_plan_base(x);
    x->stack.orchestrators = 2;
}

static void plan_worker_kill(fx_ctx *x)
{
    fx_plan_base(x);
    x->stack.workers = x->size == FX_SOAK ? 3 : 2;
    /* Long enough replies that the kill lands mid-stream. */
    x->stack.echo_token_delay_ms = 25;
    x->load.words = 10;
    /* Soak: a pace the workers left can answer. */
    if (x->size == FX_SOAK)
        x->load.send_interval_ms = 1500;
}

static void plan_nats_restart(fx_ctx *x)
{
    fx_plan_base(x);
}

static void plan_cluster_node_loss(fx_ctx *x)
{
    fx_plan_base(x);
    x->stack.nats_nodes = 3;
    x->stack.ready_timeout_ms = 40000;
    fx_env(x, "SLUICE_STREAM_REPLICAS=3");
    x->connect_timeout_ms = 40000;
    x->settle_timeout_ms += 20000;
}

static void plan_slow_consumer(fx_ctx *x)
{
    /* Small bounds so a stalled socket trips them soon. */
    static const char *const gw_env[] = {"SLUICE_OUTQ_MAX_FRAMES=64",
                                         "SLUICE_OUTQ_MAX_BYTES=262144", NULL};

    fx_plan_base(x);
    x->stack.echo_token_delay_ms = 5;
    x->stack.tier_env[HX_GATEWAY] = gw_env;
    /* The gateway's socket buffer (SLUICE_SOCKET_SNDBUF, 256 KiB; the
     * kernel's autotuning took about 2.3 MB) and the client's 2 KiB take
     * little of the room's traffic: about 4 MB of big frames per room
     * member (and few members, to spare the machine) overflow them and
     * then the queue. */
    x->load.clients = x->size == FX_SOAK ? 24 : 12;
    x->load.senders = x->load.clients;
    if (x->size == FX_SOAK)
        x->load.msgs_per_sender = 24;
    x->load.words = 8;
    x->load.word_len = 4000;
    x->load.rooms = 1;
    x->load.slow_clients = x->size == FX_SOAK ? 4 : 2;
    x->rounds = 1;
    x->load.slow_rcvbuf = 2048;
}

static void plan_reconnect_storm(fx_ctx *x)
{
    bool soak = x->size == FX_SOAK;

    fx_plan_base(x);
    /* The storm is about connections: info logs, and a handshake bucket
     * well below the storm. */
    fx_env(x, "SLUICE_LOG_LEVEL=info");
    fx_env(x, soak ? "SLUICE_HANDSHAKE_RATE=500" : "SLUICE_HANDSHAKE_RATE=400");
    fx_env(x, "SLUICE_HANDSHAKE_BURST=200");
    x->load.tenants = 2;
    x->load.clients = soak ? 6000 : 2000;
    x->load.rooms = x->load.clients / 2 / 20; /* 20 members per room */
    x->load.senders = soak ? 150 : 50;
    x->load.msgs_per_sender = soak ? 12 : 4;
    x->load.send_interval_ms = 300;
    x->load.threads = 4;
    x->load.src_addrs = soak ? 8 : 4;
    x->load.backoff_base_ms = 100;
    x->rounds = 1;
    x->load.backoff_cap_ms = 3000;
    x->connect_timeout_ms = soak ? 90000 : 45000;
    x->settle_timeout_ms = soak ? 120000 : 45000;
}

/* ---------- the faults ---------- */

static sl_status fx_kill(fx_ctx *x, fx_result *r, hx_tier tier, int i)
{
    sl_status st = hx_stack_kill(x->s, tier, i, SIGKILL);
    if (st == SL_OK) {
        x->killed[tier][i] = true;
        fx_notef(r, "SIGKILL %s-%d at %d/%d accepted. ", hx_tier_name(tier), i,
                 fx_load_accepted(x->l), fx_load_planned(x->l));
    }
    return st;
}

static sl_status fx_restart(fx_ctx *x, fx_result *r, hx_tier tier, int i)
{
    sl_status st = hx_stack_restart(x->s, tier, i);
    if (st == SL_OK) {
        x->killed[tier][i] = false;
        fx_notef(r, "restarted %s-%d at %d accepted. ", hx_tier_name(tier), i,
                 fx_load_accepted(x->l));
    }
    return st;
}

static sl_status fault_gateway_kill(fx_ctx *x, fx_result *r)
{
    if (x->round > 0) {
        /* Bring the first victim back, then kill the other one. */
        sl_status st = fx_restart(x, r, HX_GATEWAY, 0);
        if (st != SL_OK)
            return st;
        return fx_kill(x, r, HX_GATEWAY, 1);
    }
    return fx_kill(x, r, HX_GATEWAY, 0);
}

static bool verify_gateway_kill(fx_ctx *x, fx_result *r)
{
    (void)x;
    /* Half of the clients were on gateway 0: all of them resumed on 1. */
    return r->resumes >= r->clients / 2;
}

static sl_status fault_orchestrator_kill(fx_ctx *x, fx_result *r)
{
    int victim = x->round % 2, survivor = 1 - victim;
    double before, after;
    sl_status st;

    before = fx_metric(x->s, HX_ORCHESTRATOR, survivor, "sluice_orch_events_total", NULL);
    st = fx_kill(x, r, HX_ORCHESTRATOR, victim);
    if (st != SL_OK)
        return st;
    /* Let the survivor carry the load alone for a while, then bring the
     * replica back while the load goes on. */
    fx_load_wait_accepted(x->l, fx_load_accepted(x->l) + fx_load_planned(x->l) / 4, 10000);
    after = fx_metric(x->s, HX_ORCHESTRATOR, survivor, "sluice_orch_events_total", NULL);
    fx_notef(r, "orchestrator-%d processed %.0f messages alone. ", survivor, after - before);
    if (x->round == 0 || after - before < x->survivor_min)
        x->survivor_min = after - before;
    return fx_restart(x, r, HX_ORCHESTRATOR, victim);
}

static bool verify_orchestrator_kill(fx_ctx *x, fx_result *r)
{
    (void)r;
    return x->survivor_min > 0;
}

static sl_status fault_worker_kill(fx_ctx *x, fx_result *r)
{
    int victim = x->round % 2;

    if (x->round > 0) {
        /* Bring the first victim back, then kill the other one. */
        sl_status st = fx_restart(x, r, HX_WORKER, 0);
        if (st != SL_OK)
            return st;
    }
    /* Kill it while it streams: wait (briefly) for jobs in flight. */
    for (int i = 0; i < 200; i++) {
        if (fx_metric(x->s, HX_WORKER, victim, "sluice_wrk_inflight", NULL) >= 2)
            break;
        hx_sleep_ms(10);
    }
    fx_notef(r, "worker-%d had %.0f jobs in flight. ", victim,
             fx_metric(x->s, HX_WORKER, victim, "sluice_wrk_inflight", NULL));
    return fx_kill(x, r, HX_WORKER, victim);
}

static bool verify_worker_kill(fx_ctx *x, fx_result *r)
{
    (void)x;
    /* Its jobs were finished by another attempt on the other worker. */
    return r->retried > 0;
}

static sl_status fault_nats_restart(fx_ctx *x, fx_result *r)
{
    int64_t t0 = hx_now_ms();
    sl_status st = hx_stack_restart_nats(x->s, SIGTERM);
    if (st == SL_OK)
        fx_notef(r, "nats-server restarted (SIGTERM, file store) at %d/%d accepted, down %lld ms. ",
                 fx_load_accepted(x->l), fx_load_planned(x->l), (long long)(hx_now_ms() - t0));
    return st;
}

static bool verify_nats_restart(fx_ctx *x, fx_result *r)
{
    (void)x;
    (void)r;
    return true; /* the restart itself is the effect */
}

/* The node that leads a stream, from the monitoring endpoint of a live
 * node; -1 when unknown. */
static int fx_stream_leader(hx_nats *n, const char *stream)
{
    int leader = -1;
    for (int node = 0; node < hx_nats_nodes(n) && leader < 0; node++) {
        char *body = NULL;
        cJSON *root, *acc, *a;
        if (!hx_nats_alive(n, node) ||
            hx_http_get(NULL, hx_nats_monitor_port(n, node), "/jsz?accounts=true&streams=true",
                        3000, &body) != 200) {
            free(body);
            continue;
        }
        root = cJSON_Parse(body);
        free(body);
        acc = cJSON_GetObjectItem(root, "account_details");
        cJSON_ArrayForEach(a, acc)
        {
            cJSON *sd = cJSON_GetObjectItem(a, "stream_detail"), *st;
            cJSON_ArrayForEach(st, sd)
            {
                const char *name = hx_json_str(st, "name");
                const char *ld = hx_json_str(cJSON_GetObjectItem(st, "cluster"), "leader");
                if (name != NULL && strcmp(name, stream) == 0 && ld != NULL &&
                    strncmp(ld, "hx-n", 4) == 0)
                    leader = atoi(ld + 4);
            }
        }
        cJSON_Delete(root);
    }
    return leader;
}

static sl_status fault_cluster_node_loss(fx_ctx *x, fx_result *r)
{
    hx_nats *n = hx_stack_nats(x->s);
    int out, in, victim;
    sl_status st;

    if (x->round > 0) {
        /* The lost node comes back (hx_nats_start_node waits for its
         * /healthz, which needs its streams current), then the current
         * leader goes. */
        for (int node = 0; node < hx_nats_nodes(n); node++) {
            if (!hx_nats_alive(n, node) && hx_nats_start_node(n, node) == SL_OK)
                fx_notef(r, "nats node %d back. ", node);
        }
    }
    out = fx_stream_leader(n, "SLUICE_OUT");
    in = fx_stream_leader(n, "SLUICE_IN");
    victim = out >= 0 ? out : 0;
    st = hx_nats_stop(n, victim, SIGKILL);
    fx_notef(r,
             "SIGKILL nats node %d (leader of SLUICE_OUT; SLUICE_IN led by %d) at %d/%d "
             "accepted. ",
             victim, in, fx_load_accepted(x->l), fx_load_planned(x->l));
    /* hx_nats_stop reports SL_ERR_TIMEOUT when SIGKILL was needed: with
     * SIGKILL that is success. */
    return st == SL_OK || st == SL_ERR_TIMEOUT ? SL_OK : st;
}

static bool verify_cluster_node_loss(fx_ctx *x, fx_result *r)
{
    int out = fx_stream_leader(hx_stack_nats(x->s), "SLUICE_OUT");
    double recovered = 0;

    /* A work consumer the lost node left without quorum is replaced by
     * the workers (docs/wire.md, "Consumers"): how often that happened. */
    for (int w = 0; w < hx_stack_count(x->s, HX_WORKER); w++)
        if (hx_proc_alive(hx_stack_proc(x->s, HX_WORKER, w)))
            recovered +=
                fx_metric(x->s, HX_WORKER, w, "sluice_wrk_consumer_recoveries_total", NULL);
    fx_notef(r, "SLUICE_OUT now led by node %d; %.0f work consumer(s) recreated. ", out, recovered);
    return out >= 0;
}

/* Cuts seen by the clients that did not stop reading. */
static unsigned long other_cuts(const fx_ctx *x)
{
    unsigned long n = 0;

    for (int i = 0; i < x->load.clients; i++) {
        bool slow = false;
        for (int k = 0; k < x->nslow; k++)
            slow = slow || x->slow[k] == i;
        if (!slow)
            n += fx_load_cuts_of(x->l, i);
    }
    return n;
}

static sl_status fault_slow_consumer(fx_ctx *x, fx_result *r)
{
    double cuts;
    bool settled;

    /* The slow clients stopped reading before sending began (fx_run).
     * They read on as soon as the gateway has cut them all (or everyone
     * else is done): each must find 4429 at the end of what it buffered,
     * resume, and miss nothing. Not later: libwebsockets gives a closing
     * connection 5 s to take its close frame, so a client that stays
     * stalled longer (waiting for the others to settle on a busy machine)
     * sees the connection end without a code. */
    settled = false;
    cuts = 0;
    for (int64_t until = hx_now_ms() + 30000, held = 0; hx_now_ms() < until;) {
        cuts = fx_metric(x->s, HX_GATEWAY, 0, "sluice_gw_slow_consumer_closes_total", NULL);
        /* On a busy machine clients that do read get cut too: only the
         * cuts beyond the ones those saw (they read, so they see theirs
         * at once) can be the stalled clients', on two polls in a row. */
        if (cuts - (double)other_cuts(x) >= x->nslow) {
            if (++held >= 2)
                break;
        } else {
            held = 0;
        }
        if (fx_load_wait_settled_active(x->l, 50)) {
            settled = true;
            break;
        }
    }
    fx_notef(r,
             "%d clients stopped reading (SO_RCVBUF 2048) until the gateway cut them%s; "
             "%.0f cuts with 4429 by then. ",
             x->nslow, settled ? " (the others were done first)" : "", cuts);
    for (int k = 0; k < x->nslow; k++)
        fx_load_pause(x->l, x->slow[k], false);
    return SL_OK;
}

static bool verify_slow_consumer(fx_ctx *x, fx_result *r)
{
    bool all = true;

    /* Every client that stopped reading was cut with 4429 (others may be
     * cut too when the machine is busy: they resume like the rest). */
    for (int k = 0; k < x->nslow; k++)
        all = all && fx_load_cuts_of(x->l, x->slow[k]) > 0;
    fx_notef(r, "%s. ",
             all ? "Each client that stopped reading saw 4429 and resumed"
                 : "A client that stopped reading was never cut");
    return all && r->resumes >= (unsigned long)x->nslow;
}

static sl_status fault_reconnect_storm(fx_ctx *x, fx_result *r)
{
    sl_status st = fx_kill(x, r, HX_GATEWAY, 0);
    int64_t t0 = hx_now_ms();
    if (st != SL_OK)
        return st;
    st = fx_restart(x, r, HX_GATEWAY, 0);
    if (st != SL_OK)
        return st;
    /* Measure how long the storm takes to settle back. */
    for (int i = 0; i < 100000 && hx_now_ms() - t0 < 60000; i++) {
        if (fx_load_connected(x->l) >= x->load.clients)
            break;
        hx_sleep_ms(20);
    }
    fx_notef(r, "%d of %d clients back after %lld ms. ", fx_load_connected(x->l), x->load.clients,
             (long long)(hx_now_ms() - t0));
    return SL_OK;
}

static bool verify_reconnect_storm(fx_ctx *x, fx_result *r)
{
    double refused = fx_metric(x->s, HX_GATEWAY, 0, "sluice_gw_handshake_refusals_total", NULL);
    fx_notef(r, "gateway refused %.0f handshakes since its restart. ", refused);
    return r->refusals > 0 && r->resumes >= (unsigned long)x->load.clients;
}

static const fx_scen fx_scens[] = {
    {"gateway-kill", plan_gateway_kill, fault_gateway_kill, verify_gateway_kill},
    {"orchestrator-kill", plan_orchestrator_kill, fault_orchestrator_kill,
     verify_orchestrator_kill},
    {"worker-kill", plan_worker_kill, fault_worker_kill, verify_worker_kill},
    {"nats-restart", plan_nats_restart, fault_nats_restart, verify_nats_restart},
    {"cluster-node-loss", plan_cluster_node_loss, fault_cluster_node_loss,
     verify_cluster_node_loss},
    {"slow-consumer", plan_slow_consumer, fault_slow_consumer, verify_slow_consumer},
    {"reconnect-storm", plan_reconnect_storm, fault_reconnect_storm, verify_reconnect_storm},
};

#define FX_NSCEN ((int)(sizeof fx_scens / sizeof fx_scens[0]))

int fx_scenario_count(void)
{
    return FX_NSCEN;
}

const char *fx_scenario_name(int i)
{
    return i >= 0 && i < FX_NSCEN ? fx_scens[i].name : NULL;
}

int fx_scenario_find(const char *name)
{
    char *end = NULL;
    long v;

    if (name == NULL)
        return -1;
    for (int i = 0; i < FX_NSCEN; i++) {
        if (strcmp(fx_scens[i].name, name) == 0)
            return i;
    }
    v = strtol(name, &end, 10);
    if (end != name && *end == '\0' && v >= 1 && v <= FX_NSCEN)
        return (int)v - 1;
    return -1;
}

/* ---------- the driver ---------- */

/* Adds the gateways' delivery counters to the notes (for a run that did
 * not settle: where did the events go?). */
static void fx_gateway_counters(fx_ctx *x, fx_result *r)
{
    static const char *const names[] = {
        "sluice_gw_live_dropped_total", "sluice_gw_gap_fills_total", "sluice_gw_replays_total",
        "sluice_gw_slow_consumer_closes_total", "sluice_gw_frames_out_total"};
    for (int g = 0; g < hx_stack_count(x->s, HX_GATEWAY); g++) {
        if (!hx_proc_alive(hx_stack_proc(x->s, HX_GATEWAY, g)))
            continue;
        fx_notef(r, "gateway-%d:", g);
        for (size_t k = 0; k < sizeof names / sizeof names[0]; k++)
            fx_notef(r, " %s %.0f", names[k] + 10, fx_metric(x->s, HX_GATEWAY, g, names[k], NULL));
        fx_notef(r, ". ");
    }
}

/* True when every process the fault did not kill still runs. */
static bool fx_procs_alive(fx_ctx *x, fx_result *r)
{
    bool ok = true;
    for (int t = 0; t < HX_TIERS; t++) {
        for (int i = 0; i < hx_stack_count(x->s, (hx_tier)t); i++) {
            if (x->killed[t][i] || hx_proc_alive(hx_stack_proc(x->s, (hx_tier)t, i)))
                continue;
            ok = false;
            fx_whyf(r, "%s-%d died (log %s)", hx_tier_name((hx_tier)t), i,
                    hx_stack_log_path(x->s, (hx_tier)t, i));
        }
    }
    return ok;
}

/* With $FX_SAVE_DIR set, keeps a failed scenario's logs and stores in
 * <dir>/<scenario>-<pid>-<ms>/ (the harness removes its own directory);
 * with $FX_SAVE_ALL too, a passed one's as well. */
static void fx_save_logs(hx_stack *s, fx_result *r)
{
    const char *dir = getenv("FX_SAVE_DIR");
    char *dst, *cmd;

    if (dir == NULL || *dir == '\0' || strchr(dir, '\'') != NULL)
        return;
    dst = hx_strf("%s/%s-%d-%lld", dir, r->scenario, (int)getpid(), (long long)hx_now_ms());
    cmd = hx_strf("mkdir -p '%s' && cp -a '%s/.' '%s/'", dst, hx_stack_dir(s), dst);
    if (system(cmd) == 0)
        fx_notef(r, "Logs kept in %s. ", dst);
    free(cmd);
    free(dst);
}

sl_status fx_run(int idx, fx_size size, fx_result *r)
{
    const fx_scen *sc;
    fx_ctx *x = NULL;
    sl_status st = SL_OK;
    int64_t t0 = hx_now_ms(), t_fault = 0, t_settled = 0, t_stop = 0;
    bool clean = false, passed;

    memset(r, 0, sizeof *r);
    if (idx < 0 || idx >= FX_NSCEN) {
        snprintf(r->why, sizeof r->why, "no scenario %d", idx);
        r->setup = SL_ERR_INVAL;
        return SL_ERR_INVAL;
    }
    sc = &fx_scens[idx];
    snprintf(r->scenario, sizeof r->scenario, "%s", sc->name);
    x = calloc(1, sizeof *x);
    if (x == NULL) {
        r->setup = SL_ERR_NOMEM;
        return SL_ERR_NOMEM;
    }
    x->size = size;
    sc->plan(x);

    st = hx_stack_start(&x->s, &x->stack);
    if (st != SL_OK) {
        fx_whyf(r, "stack did not start: %s", hx_error());
        goto cleanup;
    }
    x->load.secret = hx_stack_secret(x->s);
    x->load.ngw = hx_stack_count(x->s, HX_GATEWAY);
    for (int g = 0; g < x->load.ngw && g < FX_MAX_GATEWAYS; g++)
        x->load.gw_port[g] = hx_stack_gw_port(x->s, g);
    st = fx_load_create(&x->l, &x->load);
    if (st != SL_OK) {
        fx_whyf(r, "load: %s", hx_error());
        goto cleanup;
    }
    st = fx_load_connect(x->l, x->connect_timeout_ms);
    if (st != SL_OK) {
        fx_whyf(r, "clients did not connect: %s", hx_error());
        goto cleanup;
    }
    for (int k = 0; k < x->load.slow_clients && k < 8; k++) {
        /* The slow clients are the first ones of tenant 0, room 0. */
        int i = k * x->load.tenants * x->load.rooms;
        if (i < x->load.clients) {
            x->slow[x->nslow++] = i;
            fx_load_pause(x->l, i, true);
        }
    }
    fx_load_start_sending(x->l);
    if (!fx_load_wait_accepted(x->l, fx_load_planned(x->l) * x->fault_at_pct / 100, 60000)) {
        fx_whyf(r, "load stalled before the fault: %d of %d accepted", fx_load_accepted(x->l),
                fx_load_planned(x->l));
        st = SL_ERR_TIMEOUT;
        for (int k = 0; k < x->nslow; k++)
            fx_load_pause(x->l, x->slow[k], false);
    } else {
        t_fault = hx_now_ms();
        st = sc->fault(x, r);
        if (st != SL_OK)
            fx_whyf(r, "the fault could not be injected: %s", hx_error());
        /* Soak: the fault again later in the load. */
        for (x->round = 1; x->round < x->rounds && st == SL_OK; x->round++) {
            int pct = x->fault_at_pct + 35 * x->round;
            if (!fx_load_wait_accepted(x->l, fx_load_planned(x->l) * pct / 100, 60000))
                break;
            st = sc->fault(x, r);
            if (st != SL_OK)
                fx_whyf(r, "the fault could not be injected again: %s", hx_error());
        }
    }
    r->settled = fx_load_wait_settled(x->l, x->settle_timeout_ms);
    t_settled = hx_now_ms();
    if (!r->settled)
        fx_gateway_counters(x, r);
    /* A moment more, so late duplicates would show. */
    hx_sleep_ms(300);
    fx_load_stop(x->l);
    fx_load_count(x->l, r);
    r->fault_ok = st == SL_OK && sc->verify(x, r);
    r->procs_ok = fx_procs_alive(x, r);
    t_stop = hx_now_ms();
    if (hx_stack_stop_all_gracefully(x->s, &clean) != SL_OK || !clean) {
        r->procs_ok = false;
        fx_whyf(r, "a process did not exit cleanly: %s", hx_error());
    }
    fx_notef(r, "Settled %.1f s after the fault; the stack stopped in %.1f s. ",
             (double)(t_settled - t_fault) / 1000.0, (double)(hx_now_ms() - t_stop) / 1000.0);
    st = SL_OK;
cleanup:
    r->setup = st;
    r->seconds = (double)(hx_now_ms() - t0) / 1000.0;
    fx_load_destroy(x->l);
    passed = fx_result_ok(r);
    if (st != SL_OK)
        hx_stack_dump_logs(x->s, stderr, 3000);
    if ((!passed || getenv("FX_SAVE_ALL") != NULL) && x->s != NULL)
        fx_save_logs(x->s, r);
    hx_stack_destroy(x->s);
    free(x);
    if (st != SL_OK)
        return st;
    return passed ? SL_OK : SL_ERR_INTERNAL;
}

bool fx_result_ok(fx_result *r)
{
    if (r->setup != SL_OK)
        return false;
    if (r->lost > 0)
        fx_whyf(r, "%lu lost", r->lost);
    if (r->duplicated > 0)
        fx_whyf(r, "%lu duplicated", r->duplicated);
    if (r->unended > 0)
        fx_whyf(r, "%lu unended", r->unended);
    if (r->leaked > 0)
        fx_whyf(r, "%lu events leaked across tenants/rooms/sessions", r->leaked);
    if (r->bad_text > 0)
        fx_whyf(r, "%lu replies or messages with the wrong text", r->bad_text);
    if (!r->settled)
        fx_whyf(r, "not settled before the deadline");
    if (!r->fault_ok)
        fx_whyf(r, "the fault did not take effect");
    if (r->accepted == 0)
        fx_whyf(r, "nothing was accepted");
    return r->lost == 0 && r->duplicated == 0 && r->unended == 0 && r->leaked == 0 &&
           r->bad_text == 0 && r->settled && r->fault_ok && r->procs_ok && r->accepted > 0;
}

void fx_print_head(FILE *f)
{
    fprintf(f, "| %-18s | %6s | %8s | %5s | %9s | %4s | %10s | %7s |\n", "scenario", "sent",
            "accepted", "busy", "delivered", "lost", "duplicated", "unended");
    fprintf(f, "|--------------------|-------:|---------:|------:|----------:|-----:|-----------:|"
               "--------:|\n");
}

void fx_print_row(FILE *f, const fx_result *r)
{
    fprintf(f, "| %-18s | %6lu | %8lu | %5lu | %9lu | %4lu | %10lu | %7lu |\n", r->scenario,
            r->sent, r->accepted, r->busy, r->delivered, r->lost, r->duplicated, r->unended);
}

void fx_print_notes(FILE *f, const fx_result *r)
{
    fprintf(f,
            "%s: %s in %.1f s; %lu clients, %lu events, %lu resumes, %lu drops, %lu cuts (4429), "
            "%lu refusals, %lu retried, %lu degraded, %lu agent-busy, %lu gaps, %lu errors, %lu "
            "gave up. %s\n",
            r->scenario, r->why[0] == '\0' && r->setup == SL_OK ? "PASS" : "FAIL", r->seconds,
            r->clients, r->events, r->resumes, r->drops, r->cuts, r->refusals, r->retried,
            r->degraded, r->refused, r->gaps, r->errors, r->gave_up, r->note);
    if (r->why[0] != '\0')
        fprintf(f, "  why: %s\n", r->why);
    if (r->detail[0] != '\0' && (r->why[0] != '\0' || getenv("FX_VERBOSE") != NULL))
        fprintf(f, "%s", r->detail);
}
