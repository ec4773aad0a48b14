/* sluice-worker: parses config, installs signals, runs the job loop, tears
 * down. The logic lives in wrk_loop, wrk_stream and the backends. */
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "sl_admin.h"
#include "sl_bus.h"
#include "sl_config.h"
#include "sl_log.h"
#include "sl_subject.h"
#include "wrk_backend.h"
#include "wrk_loop.h"

#define WRK_OPTS_N (SL_COMMON_OPTS_N + 15)
#define MAX_MODELS 32

static volatile sig_atomic_t g_stop;

static void on_signal(int sig)
{
    (void)sig;
    g_stop = 1;
}

typedef struct ready_ctx {
    sl_bus *bus;
    _Atomic(wrk_loop *) loop;
} ready_ctx;

static bool is_ready(void *ud, char *why, size_t whylen)
{
    ready_ctx *r = ud;

    if (g_stop) {
        snprintf(why, whylen, "draining");
        return false;
    }
    if (!sl_bus_ready(r->bus)) {
        snprintf(why, whylen, "nats not connected or streams not provisioned");
        return false;
    }
    if (!wrk_loop_ready(atomic_load(&r->loop))) {
        snprintf(why, whylen, "work consumers not set up");
        return false;
    }
    return true;
}

/* Splits the comma-separated model list in place into models[]; returns
 * the count, or -1 with a message in err. */
static int split_models(char *list, char **models, int max, char *err, size_t errlen)
{
    int n = 0;

    for (char *save = NULL, *tok = strtok_r(list, ",", &save); tok != NULL;
         tok = strtok_r(NULL, ",", &save)) {
        while (*tok == ' ')
            tok++;
        for (char *end = tok + strlen(tok); end > tok && end[-1] == ' ';)
            *--end = '\0';
        if (*tok == '\0')
            continue;
        if (!sl_id_valid(tok)) {
            snprintf(err, errlen, "SLUICE_WORKER_MODELS: '%.64s' is not a valid model id", tok);
            return -1;
        }
        for (int i = 0; i < n; i++) {
            if (strcmp(models[i], tok) == 0) {
                snprintf(err, errlen, "SLUICE_WORKER_MODELS: '%s' is listed twice", tok);
                return -1;
            }
        }
        if (n == max) {
            snprintf(err, errlen, "SLUICE_WORKER_MODELS: more than %d models", max);
            return -1;
        }
        models[n++] = tok;
    }
    if (n == 0)
        snprintf(err, errlen, "SLUICE_WORKER_MODELS: no model given");
    return n > 0 ? n : -1;
}

/* Sleeps up to ms, returning early on a stop signal. */
static void wait_or_stop(int64_t ms)
{
    for (int64_t waited = 0; waited < ms && !g_stop; waited += 50) {
        struct timespec ts = {.tv_sec = 0, .tv_nsec = 50 * 1000000L};
        nanosleep(&ts, NULL);
    }
}

int main(int argc, char **argv)
{
    sl_common_cfg common = {0};
    char *models_list = NULL, *backend_kind = NULL, *model_url = NULL, *api_key = NULL;
    char *worker_id = NULL, *weights_spec = NULL;
    wrk_weight *weights = NULL;
    size_t nweights = 0;
    int64_t concurrency = 0, timeout_ms = 0, echo_delay_ms = 0, coalesce_ms = 0;
    int64_t coalesce_bytes = 0, context_messages = 0, drain_grace_ms = 0, ack_grace_ms = 0;
    int64_t connect_timeout_ms = 0;
    sl_cfg_opt opts[WRK_OPTS_N];
    char *models[MAX_MODELS];
    int nmodels = 0;
    sl_bus *bus = NULL;
    wrk_backend *backend = NULL;
    wrk_loop *loop = NULL;
    sl_admin *admin = NULL;
    ready_ctx rctx = {0};
    struct sigaction sa;
    sigset_t term_set, old_set;
    sl_log_level lvl = SL_LOG_INFO;
    char err[512];
    char default_id[128];
    bool help = false, curl_ready = false;
    int rc = 1;
    sl_status st;
    int k = SL_COMMON_OPTS_N;

    sl_common_opts(opts, &common, "0.0.0.0:9092");
    opts[k++] = (sl_cfg_opt){"SLUICE_WORKER_MODELS",
                             "worker-models",
                             SL_CFG_STR,
                             "default",
                             "comma-separated models this worker serves (durable consumers "
                             "wrk_<model>~<tenant> on SLUICE_WORK, pulled fairly across "
                             "tenants)",
                             &models_list,
                             0,
                             0,
                             true,
                             false};
    opts[k++] = (sl_cfg_opt){"SLUICE_WORKER_CONCURRENCY",
                             "worker-concurrency",
                             SL_CFG_INT,
                             "8",
                             "jobs in flight per process (one thread each)",
                             &concurrency,
                             1,
                             WRK_CONCURRENCY_MAX,
                             false,
                             false};
    opts[k++] = (sl_cfg_opt){"SLUICE_TENANT_WEIGHTS",
                             "tenant-weights",
                             SL_CFG_STR,
                             "",
                             "tenants' weights in the fair share of job slots, e.g. "
                             "\"acme=2,globex=1\" (integers 1..1000; tenants not listed weigh 1)",
                             &weights_spec,
                             0,
                             0,
                             false,
                             false};
    opts[k++] = (sl_cfg_opt){"SLUICE_WORKER_ID",
                             "worker-id",
                             SL_CFG_STR,
                             NULL,
                             "name shown in the in-flight state (default: hostname-pid)",
                             &worker_id,
                             0,
                             0,
                             false,
                             false};
    opts[k++] = (sl_cfg_opt){"SLUICE_MODEL_BACKEND",
                             "model-backend",
                             SL_CFG_STR,
                             "echo",
                             "echo (built in, deterministic) or openai (an OpenAI-compatible "
                             "/v1/chat/completions endpoint)",
                             &backend_kind,
                             0,
                             0,
                             true,
                             false};
    opts[k++] = (sl_cfg_opt){"SLUICE_MODEL_URL",
                             "model-url",
                             SL_CFG_STR,
                             NULL,
                             "openai: base URL of the model server, e.g. http://127.0.0.1:8000",
                             &model_url,
                             0,
                             0,
                             false,
                             false};
    opts[k++] = (sl_cfg_opt){"SLUICE_MODEL_API_KEY",
                             "model-api-key",
                             SL_CFG_STR,
                             NULL,
                             "openai: API key sent as a bearer token",
                             &api_key,
                             0,
                             0,
                             false,
                             true};
    opts[k++] = (sl_cfg_opt){"SLUICE_MODEL_TIMEOUT_MS",
                             "model-timeout-ms",
                             SL_CFG_INT,
                             "10000",
                             "hard deadline of one model call when the job gives none",
                             &timeout_ms,
                             100,
                             3600000,
                             false,
                             false};
    opts[k++] = (sl_cfg_opt){"SLUICE_MODEL_CONNECT_TIMEOUT_MS",
                             "model-connect-timeout-ms",
                             SL_CFG_INT,
                             "3000",
                             "openai: TCP and TLS connect bound",
                             &connect_timeout_ms,
                             100,
                             600000,
                             false,
                             false};
    opts[k++] = (sl_cfg_opt){"SLUICE_ECHO_TOKEN_DELAY_MS",
                             "echo-token-delay-ms",
                             SL_CFG_INT,
                             "50",
                             "echo: delay before each token",
                             &echo_delay_ms,
                             0,
                             60000,
                             false,
                             false};
    opts[k++] = (sl_cfg_opt){"SLUICE_COALESCE_MS",
                             "coalesce-ms",
                             SL_CFG_INT,
                             "30",
                             "tokens are published at most this long after they arrive",
                             &coalesce_ms,
                             0,
                             10000,
                             false,
                             false};
    opts[k++] = (sl_cfg_opt){"SLUICE_COALESCE_BYTES",
                             "coalesce-bytes",
                             SL_CFG_INT,
                             "64",
                             "a token chunk is published once it holds this many bytes",
                             &coalesce_bytes,
                             1,
                             65536,
                             false,
                             false};
    opts[k++] = (sl_cfg_opt){"SLUICE_CONTEXT_MESSAGES",
                             "context-messages",
                             SL_CFG_INT,
                             "10",
                             "openai: last messages of the channel sent as context (0: none)",
                             &context_messages,
                             0,
                             200,
                             false,
                             false};
    opts[k++] = (sl_cfg_opt){"SLUICE_DRAIN_GRACE_MS",
                             "drain-grace-ms",
                             SL_CFG_INT,
                             "10000",
                             "on SIGTERM/SIGINT, how long running jobs may finish before they "
                             "are handed to another worker",
                             &drain_grace_ms,
                             0,
                             3600000,
                             false,
                             false};
    opts[k++] = (sl_cfg_opt){"SLUICE_WORKER_ACK_GRACE_MS",
                             "worker-ack-grace-ms",
                             SL_CFG_INT,
                             "5000",
                             "AckWait of the work consumers = model timeout + this; a crashed "
                             "worker's job is redelivered after that",
                             &ack_grace_ms,
                             500,
                             3600000,
                             false,
                             false};

    st = sl_config_load(opts, WRK_OPTS_N, argc, argv, &help, err, sizeof(err));
    if (help) {
        sl_config_usage(stdout, "sluice-worker",
                        "Pulls jobs from SLUICE_WORK, calls the model with a hard deadline, "
                        "streams coalesced tokens and the final reply to SLUICE_OUT, honours "
                        "cancellation, and acks only when the reply is final.",
                        opts, WRK_OPTS_N);
        rc = 0;
        goto cleanup;
    }
    if (st == SL_OK && sl_log_level_parse(common.log_level, &lvl) != SL_OK) {
        snprintf(err, sizeof(err), "SLUICE_LOG_LEVEL: must be debug, info, warn or error");
        st = SL_ERR_INVAL;
    }
    if (st == SL_OK && strcmp(backend_kind, "echo") != 0 && strcmp(backend_kind, "openai") != 0) {
        snprintf(err, sizeof(err), "SLUICE_MODEL_BACKEND: '%s' is not echo or openai",
                 backend_kind);
        st = SL_ERR_INVAL;
    }
    if (st == SL_OK && strcmp(backend_kind, "openai") == 0 &&
        (model_url == NULL || model_url[0] == '\0')) {
        snprintf(err, sizeof(err), "SLUICE_MODEL_URL is required with SLUICE_MODEL_BACKEND=openai");
        st = SL_ERR_INVAL;
    }
    if (st == SL_OK) {
        /* A cancel marker must outlive every job it may concern: all its
         * deliveries, each up to AckWait (timeout + grace) and a NAK delay
         * of up to WRK_RETRY_MAX_MS. */
        int64_t life_s =
            (WRK_MAX_DELIVER * (timeout_ms + ack_grace_ms + WRK_RETRY_MAX_MS) + 999) / 1000;
        if (common.cancel_ttl_s < life_s) {
            snprintf(err, sizeof(err),
                     "SLUICE_CANCEL_TTL_S: %lld s is shorter than a job can live here (%lld s = "
                     "%d deliveries x (SLUICE_MODEL_TIMEOUT_MS + SLUICE_WORKER_ACK_GRACE_MS + "
                     "%d ms of retry delay)): a cancel could expire before its job runs",
                     (long long)common.cancel_ttl_s, (long long)life_s, WRK_MAX_DELIVER,
                     WRK_RETRY_MAX_MS);
            st = SL_ERR_INVAL;
        }
    }
    if (st == SL_OK) {
        char why[256];
        st = wrk_weights_parse(weights_spec, &weights, &nweights, why, sizeof(why));
        if (st == SL_ERR_INVAL)
            snprintf(err, sizeof(err), "SLUICE_TENANT_WEIGHTS: %s", why);
        else if (st != SL_OK)
            snprintf(err, sizeof(err), "SLUICE_TENANT_WEIGHTS: %s", sl_status_str(st));
    }
    if (st == SL_OK) {
        nmodels = split_models(models_list, models, MAX_MODELS, err, sizeof(err));
        if (nmodels < 0)
            st = SL_ERR_INVAL;
    }
    if (st != SL_OK) {
        fprintf(stderr, "sluice-worker: %s\n", err);
        rc = 2;
        goto cleanup;
    }
    sl_log_init("worker", lvl);
    if (worker_id == NULL || worker_id[0] == '\0') {
        char host[64] = "worker";
        gethostname(host, sizeof(host) - 1);
        host[sizeof(host) - 1] = '\0';
        snprintf(default_id, sizeof(default_id), "%s-%ld", host, (long)getpid());
    } else {
        snprintf(default_id, sizeof(default_id), "%s", worker_id);
    }

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sa.sa_handler = SIG_IGN;
    sigaction(SIGPIPE, &sa, NULL);

    if (wrk_backend_global_init() != SL_OK) {
        sl_error("cannot initialise libcurl");
        goto cleanup;
    }
    curl_ready = true;
    {
        wrk_backend_cfg bc = {.kind = backend_kind,
                              .url = model_url,
                              .api_key = api_key,
                              .echo_delay_ms = echo_delay_ms,
                              .connect_timeout_ms = connect_timeout_ms};
        if (wrk_backend_create(&backend, &bc, err, sizeof(err)) != SL_OK) {
            sl_error("model backend: %s", err);
            fprintf(stderr, "sluice-worker: model backend: %s\n", err);
            rc = 2;
            goto cleanup;
        }
    }

    if (sl_bus_create(&bus, &common, "sluice-worker", err, sizeof(err)) != SL_OK) {
        sl_error("%s", err);
        goto cleanup;
    }
    rctx.bus = bus;
    atomic_init(&rctx.loop, NULL);
    if (sl_admin_start(&admin, common.admin_listen, is_ready, &rctx, err, sizeof(err)) != SL_OK) {
        sl_error("admin %s: %s", common.admin_listen, err);
        goto cleanup;
    }
    st = sl_bus_wait_provisioned(bus, &common, &g_stop, err, sizeof(err));
    if (st == SL_ERR_INVAL) {
        sl_error("%s", err);
        goto cleanup;
    }
    while (st == SL_OK && !g_stop) {
        wrk_loop_cfg lc = {.models = (const char *const *)models,
                           .nmodels = (size_t)nmodels,
                           .concurrency = (int)concurrency,
                           .timeout_ms = timeout_ms,
                           .ack_grace_ms = ack_grace_ms,
                           .coalesce_ms = coalesce_ms,
                           .coalesce_bytes = coalesce_bytes,
                           .context_messages =
                               strcmp(backend_kind, "openai") == 0 ? context_messages : 0,
                           .worker_id = default_id,
                           .weights = weights,
                           .nweights = nweights};
        st = wrk_loop_create(&loop, bus, backend, &lc, err, sizeof(err));
        if (st == SL_OK)
            break;
        if (st != SL_ERR_BUS) {
            sl_error("%s", err);
            goto cleanup;
        }
        sl_warn("%s; retrying", err);
        st = SL_OK;
        wait_or_stop(1000);
    }
    if (loop != NULL) {
        atomic_store(&rctx.loop, loop);
        sl_info("started: backend %s, %d model(s), concurrency %lld, timeout %lld ms, admin %s",
                backend_kind, nmodels, (long long)concurrency, (long long)timeout_ms,
                common.admin_listen);
        /* Wait for SIGTERM/SIGINT without a race between the check and the
         * wait: the signals are blocked except inside sigsuspend. */
        sigemptyset(&term_set);
        sigaddset(&term_set, SIGTERM);
        sigaddset(&term_set, SIGINT);
        sigprocmask(SIG_BLOCK, &term_set, &old_set);
        while (!g_stop)
            sigsuspend(&old_set);
        sigprocmask(SIG_SETMASK, &old_set, NULL);
        sl_info("stopping: finishing running jobs for up to %lld ms", (long long)drain_grace_ms);
        wrk_loop_stop(loop, drain_grace_ms);
        sl_info("stopped: every job finished or handed back");
    }
    rc = 0;
cleanup:
    atomic_store(&rctx.loop, NULL);
    sl_admin_stop(admin);
    wrk_loop_destroy(loop);
    sl_bus_destroy(bus, 2000);
    wrk_backend_destroy(backend);
    if (curl_ready)
        wrk_backend_global_cleanup();
    sl_config_free(opts, WRK_OPTS_N);
    free(weights);
    return rc;
}
