#include "wrk_config.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sl_subject.h"

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
            sl_errf(err, errlen, "SLUICE_WORKER_MODELS: '%.64s' is not a valid model id", tok);
            return -1;
        }
        for (int i = 0; i < n; i++) {
            if (strcmp(models[i], tok) == 0) {
                sl_errf(err, errlen, "SLUICE_WORKER_MODELS: '%s' is listed twice", tok);
                return -1;
            }
        }
        if (n == max) {
            sl_errf(err, errlen, "SLUICE_WORKER_MODELS: more than %d models", max);
            return -1;
        }
        models[n++] = tok;
    }
    if (n == 0)
        sl_errf(err, errlen, "SLUICE_WORKER_MODELS: no model given");
    return n > 0 ? n : -1;
}

/* The options table: every variable, its flag, default, help and bounds. */
static void build_opts(wrk_config *c)
{
    sl_cfg_opt *o = c->opts;
    int k = SL_COMMON_OPTS_N;

    sl_common_opts(o, &c->common, "0.0.0.0:9092");
    o[k++] = (sl_cfg_opt){"SLUICE_WORKER_MODELS",
                          "worker-models",
                          SL_CFG_STR,
                          "default",
                          "comma-separated models this worker serves (durable consumers "
                          "wrk_<model>~<tenant> on SLUICE_WORK, pulled fairly across "
                          "tenants)",
                          &c->models_list,
                          0,
                          0,
                          true,
                          false};
    o[k++] = (sl_cfg_opt){"SLUICE_WORKER_CONCURRENCY",
                          "worker-concurrency",
                          SL_CFG_INT,
                          "8",
                          "jobs in flight per process (one thread each)",
                          &c->concurrency,
                          1,
                          WRK_CONCURRENCY_MAX,
                          false,
                          false};
    o[k++] = (sl_cfg_opt){"SLUICE_TENANT_WEIGHTS",
                          "tenant-weights",
                          SL_CFG_STR,
                          NULL,
                          "tenants' weights in the fair share of job slots, e.g. "
                          "\"acme=2,globex=1\" (integers 1..1000; tenants not listed weigh 1)",
                          &c->weights_spec,
                          0,
                          0,
                          false,
                          false};
    o[k++] = (sl_cfg_opt){"SLUICE_WORKER_ID",
                          "worker-id",
                          SL_CFG_STR,
                          NULL,
                          "name shown in the in-flight state (default: hostname-pid)",
                          &c->worker_id_opt,
                          0,
                          0,
                          false,
                          false};
    o[k++] = (sl_cfg_opt){"SLUICE_MODEL_BACKEND",
                          "model-backend",
                          SL_CFG_STR,
                          "echo",
                          "echo (built in, deterministic) or openai (an OpenAI-compatible "
                          "/v1/chat/completions endpoint)",
                          &c->backend_kind,
                          0,
                          0,
                          true,
                          false};
    o[k++] = (sl_cfg_opt){"SLUICE_MODEL_URL",
                          "model-url",
                          SL_CFG_STR,
                          NULL,
                          "openai: base URL of the model server, e.g. http://127.0.0.1:8000",
                          &c->model_url,
                          0,
                          0,
                          false,
                          false};
    o[k++] = (sl_cfg_opt){"SLUICE_MODEL_API_KEY",
                          "model-api-key",
                          SL_CFG_STR,
                          NULL,
                          "openai: API key sent as a bearer token",
                          &c->api_key,
                          0,
                          0,
                          false,
                          true};
    o[k++] = (sl_cfg_opt){"SLUICE_MODEL_TIMEOUT_MS",
                          "model-timeout-ms",
                          SL_CFG_INT,
                          "10000",
                          "hard deadline of one model call when the job gives none",
                          &c->timeout_ms,
                          100,
                          3600000,
                          false,
                          false};
    o[k++] = (sl_cfg_opt){"SLUICE_MODEL_CONNECT_TIMEOUT_MS",
                          "model-connect-timeout-ms",
                          SL_CFG_INT,
                          "3000",
                          "openai: TCP and TLS connect bound",
                          &c->connect_timeout_ms,
                          100,
                          600000,
                          false,
                          false};
    o[k++] = (sl_cfg_opt){"SLUICE_ECHO_TOKEN_DELAY_MS",
                          "echo-token-delay-ms",
                          SL_CFG_INT,
                          "50",
                          "echo: delay before each token",
                          &c->echo_delay_ms,
                          0,
                          60000,
                          false,
                          false};
    o[k++] = (sl_cfg_opt){"SLUICE_COALESCE_MS",
                          "coalesce-ms",
                          SL_CFG_INT,
                          "30",
                          "tokens are published at most this long after they arrive",
                          &c->coalesce_ms,
                          0,
                          10000,
                          false,
                          false};
    o[k++] = (sl_cfg_opt){"SLUICE_COALESCE_FIRST_MS",
                          "coalesce-first-ms",
                          SL_CFG_INT,
                          "10",
                          "the first token chunk is published this long after the first token "
                          "(whatever its size), so an answer the model gives at once comes as "
                          "its final reply alone; 0: the first token at once",
                          &c->coalesce_first_ms,
                          0,
                          10000,
                          false,
                          false};
    o[k++] = (sl_cfg_opt){"SLUICE_COALESCE_BYTES",
                          "coalesce-bytes",
                          SL_CFG_INT,
                          "64",
                          "a token chunk is published once it holds this many bytes",
                          &c->coalesce_bytes,
                          1,
                          65536,
                          false,
                          false};
    o[k++] = (sl_cfg_opt){"SLUICE_CONTEXT_MESSAGES",
                          "context-messages",
                          SL_CFG_INT,
                          "10",
                          "openai: last messages of the channel sent as context (0: none)",
                          &c->context_messages,
                          0,
                          200,
                          false,
                          false};
    o[k++] = (sl_cfg_opt){"SLUICE_DRAIN_GRACE_MS",
                          "drain-grace-ms",
                          SL_CFG_INT,
                          "10000",
                          "on SIGTERM/SIGINT, how long running jobs may finish before they "
                          "are handed to another worker",
                          &c->drain_grace_ms,
                          0,
                          3600000,
                          false,
                          false};
    o[k++] = (sl_cfg_opt){"SLUICE_WORKER_ACK_GRACE_MS",
                          "worker-ack-grace-ms",
                          SL_CFG_INT,
                          "5000",
                          "AckWait of the work consumers = model timeout + this; a crashed "
                          "worker's job is redelivered after that",
                          &c->ack_grace_ms,
                          500,
                          3600000,
                          false,
                          false};
}

sl_status wrk_config_load(wrk_config *c, int argc, char **argv, bool *help, char *err,
                          size_t errlen)
{
    sl_status st;

    memset(c, 0, sizeof(*c));
    c->log_level = SL_LOG_INFO;
    build_opts(c);
    st = sl_config_load(c->opts, WRK_CONFIG_OPTS_N, argc, argv, help, err, errlen);
    if (*help)
        return SL_OK;
    if (st == SL_OK && sl_log_level_parse(c->common.log_level, &c->log_level) != SL_OK) {
        sl_errf(err, errlen, "SLUICE_LOG_LEVEL: must be debug, info, warn or error");
        st = SL_ERR_INVAL;
    }
    if (st == SL_OK && strcmp(c->backend_kind, "echo") != 0 &&
        strcmp(c->backend_kind, "openai") != 0) {
        sl_errf(err, errlen, "SLUICE_MODEL_BACKEND: '%s' is not echo or openai", c->backend_kind);
        st = SL_ERR_INVAL;
    }
    if (st == SL_OK && strcmp(c->backend_kind, "openai") == 0 &&
        (c->model_url == NULL || c->model_url[0] == '\0')) {
        sl_errf(err, errlen, "SLUICE_MODEL_URL is required with SLUICE_MODEL_BACKEND=openai");
        st = SL_ERR_INVAL;
    }
    if (st == SL_OK) {
        /* A cancel marker must outlive every job it may concern: all its
         * deliveries, each up to AckWait (timeout + grace) and a NAK delay
         * of up to WRK_RETRY_MAX_MS. */
        int64_t life_s =
            (WRK_MAX_DELIVER * (c->timeout_ms + c->ack_grace_ms + WRK_RETRY_MAX_MS) + 999) / 1000;
        if (c->common.cancel_ttl_s < life_s) {
            sl_errf(err, errlen,
                    "SLUICE_CANCEL_TTL_S: %lld s is shorter than a job can live here (%lld s = "
                    "%d deliveries x (SLUICE_MODEL_TIMEOUT_MS + SLUICE_WORKER_ACK_GRACE_MS + "
                    "%d ms of retry delay)): a cancel could expire before its job runs",
                    (long long)c->common.cancel_ttl_s, (long long)life_s, WRK_MAX_DELIVER,
                    WRK_RETRY_MAX_MS);
            st = SL_ERR_INVAL;
        }
    }
    if (st == SL_OK) {
        char why[256];
        st = wrk_weights_parse(c->weights_spec, &c->weights, &c->nweights, why, sizeof(why));
        if (st == SL_ERR_INVAL)
            sl_errf(err, errlen, "SLUICE_TENANT_WEIGHTS: %s", why);
        else if (st != SL_OK)
            sl_errf(err, errlen, "SLUICE_TENANT_WEIGHTS: %s", sl_status_str(st));
    }
    if (st == SL_OK) {
        c->nmodels = split_models(c->models_list, c->models, WRK_CONFIG_MODELS_MAX, err, errlen);
        if (c->nmodels < 0)
            st = SL_ERR_INVAL;
    }
    if (st != SL_OK)
        return st;
    if (c->worker_id_opt == NULL || c->worker_id_opt[0] == '\0') {
        char host[64] = "worker";
        gethostname(host, sizeof(host) - 1);
        host[sizeof(host) - 1] = '\0';
        snprintf(c->worker_id, sizeof(c->worker_id), "%s-%ld", host, (long)getpid());
    } else {
        snprintf(c->worker_id, sizeof(c->worker_id), "%s", c->worker_id_opt);
    }
    return SL_OK;
}

void wrk_config_usage(const wrk_config *c, FILE *out)
{
    sl_config_usage(out, "sluice-worker",
                    "Pulls jobs from SLUICE_WORK, calls the model with a hard deadline, "
                    "streams coalesced tokens and the final reply to SLUICE_OUT, honours "
                    "cancellation, and acks only when the reply is final.",
                    c->opts, WRK_CONFIG_OPTS_N);
}

wrk_loop_cfg wrk_config_loop(const wrk_config *c)
{
    return (wrk_loop_cfg){
        .models = (const char *const *)c->models,
        .nmodels = (size_t)c->nmodels,
        .concurrency = (int)c->concurrency,
        .timeout_ms = c->timeout_ms,
        .ack_grace_ms = c->ack_grace_ms,
        .coalesce_ms = c->coalesce_ms,
        .coalesce_first_ms = c->coalesce_first_ms,
        .coalesce_bytes = c->coalesce_bytes,
        .context_messages = strcmp(c->backend_kind, "openai") == 0 ? c->context_messages : 0,
        .worker_id = c->worker_id,
        .weights = c->weights,
        .nweights = c->nweights,
    };
}

wrk_backend_cfg wrk_config_backend(const wrk_config *c)
{
    return (wrk_backend_cfg){.kind = c->backend_kind,
                             .url = c->model_url,
                             .api_key = c->api_key,
                             .echo_delay_ms = c->echo_delay_ms,
                             .connect_timeout_ms = c->connect_timeout_ms};
}

void wrk_config_free(wrk_config *c)
{
    if (c == NULL)
        return;
    sl_config_free(c->opts, WRK_CONFIG_OPTS_N);
    free(c->weights);
    c->weights = NULL;
    c->nweights = 0;
}
