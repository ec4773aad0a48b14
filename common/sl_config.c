#include "sl_config.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

sl_status sl_parse_int(const char *s, int64_t *out)
{
    char *end = NULL;
    long long v;

    if (s == NULL || *s == '\0')
        return SL_ERR_INVAL;
    errno = 0;
    v = strtoll(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0')
        return SL_ERR_INVAL;
    *out = (int64_t)v;
    return SL_OK;
}

sl_status sl_parse_u64(const char *s, uint64_t *out)
{
    char *end = NULL;
    unsigned long long v;

    if (s == NULL || *s < '0' || *s > '9')
        return SL_ERR_INVAL;
    errno = 0;
    v = strtoull(s, &end, 10);
    if (errno != 0 || *end != '\0')
        return SL_ERR_INVAL;
    *out = (uint64_t)v;
    return SL_OK;
}

sl_status sl_parse_size(const char *s, int64_t *out)
{
    static const char units[] = "kmgt";
    const char *p = s;
    const char *u;
    int64_t v = 0;
    int shift = 0;

    if (s == NULL || *s < '0' || *s > '9')
        return SL_ERR_INVAL;
    for (; *p >= '0' && *p <= '9'; p++) {
        if (v > (INT64_MAX - (*p - '0')) / 10)
            return SL_ERR_INVAL;
        v = v * 10 + (*p - '0');
    }
    if (*p != '\0') {
        u = strchr(units, p[0] | 0x20);
        if (u == NULL)
            return SL_ERR_INVAL;
        shift = 10 * (int)(u - units + 1);
        p++;
        if (strcasecmp(p, "ib") == 0)
            p += 2;
        else if (strcasecmp(p, "b") == 0)
            p += 1;
        if (*p != '\0')
            return SL_ERR_INVAL;
    }
    if (v > (INT64_MAX >> shift))
        return SL_ERR_INVAL;
    *out = v << shift;
    return SL_OK;
}

sl_status sl_parse_addr(const char *s, char *hostbuf, size_t hostlen, int *port)
{
    const char *colon;
    int64_t p;
    size_t hl;

    if (s == NULL)
        return SL_ERR_INVAL;
    colon = strrchr(s, ':');
    if (colon == NULL)
        return SL_ERR_INVAL;
    hl = (size_t)(colon - s);
    if (hl >= hostlen)
        return SL_ERR_INVAL;
    if (sl_parse_int(colon + 1, &p) != SL_OK || p < 1 || p > 65535)
        return SL_ERR_INVAL;
    memcpy(hostbuf, s, hl);
    hostbuf[hl] = '\0';
    *port = (int)p;
    return SL_OK;
}

static sl_status parse_bool(const char *s, bool *out)
{
    static const char *const yes[] = {"1", "true", "yes", "on"};
    static const char *const no[] = {"0", "false", "no", "off"};

    for (size_t i = 0; i < 4; i++) {
        if (strcasecmp(s, yes[i]) == 0) {
            *out = true;
            return SL_OK;
        }
        if (strcasecmp(s, no[i]) == 0) {
            *out = false;
            return SL_OK;
        }
    }
    return SL_ERR_INVAL;
}

/* Applies one textual value to an option; source names where it came from. */
static sl_status apply(const sl_cfg_opt *o, const char *val, const char *source, char *err,
                       size_t errlen)
{
    switch (o->type) {
    case SL_CFG_ADDR: {
        char host[256];
        int port;
        if (sl_parse_addr(val, host, sizeof(host), &port) != SL_OK) {
            sl_errf(err, errlen, "%s (%s): '%s' is not host:port with a port in 1..65535", o->env,
                    source, val);
            return SL_ERR_INVAL;
        }
    }
    /* fall through */
    case SL_CFG_STR: {
        char **dst = o->dst;
        char *copy = strdup(val);
        if (copy == NULL)
            return SL_ERR_NOMEM;
        free(*dst);
        *dst = copy;
        return SL_OK;
    }
    case SL_CFG_INT: {
        int64_t v;
        if (sl_parse_int(val, &v) != SL_OK) {
            sl_errf(err, errlen, "%s (%s): '%s' is not an integer", o->env, source, val);
            return SL_ERR_INVAL;
        }
        if ((o->min != 0 || o->max != 0) && (v < o->min || v > o->max)) {
            sl_errf(err, errlen, "%s (%s): %lld is outside %lld..%lld", o->env, source,
                    (long long)v, (long long)o->min, (long long)o->max);
            return SL_ERR_INVAL;
        }
        *(int64_t *)o->dst = v;
        return SL_OK;
    }
    case SL_CFG_SIZE: {
        int64_t v;
        if (sl_parse_size(val, &v) != SL_OK) {
            sl_errf(err, errlen, "%s (%s): '%s' is not a byte size (e.g. 1073741824 or 1GiB)",
                    o->env, source, val);
            return SL_ERR_INVAL;
        }
        if ((o->min != 0 || o->max != 0) && (v < o->min || v > o->max)) {
            sl_errf(err, errlen, "%s (%s): %lld bytes is outside %lld..%lld", o->env, source,
                    (long long)v, (long long)o->min, (long long)o->max);
            return SL_ERR_INVAL;
        }
        *(int64_t *)o->dst = v;
        return SL_OK;
    }
    case SL_CFG_BOOL:
        if (parse_bool(val, o->dst) != SL_OK) {
            sl_errf(err, errlen, "%s (%s): '%s' is not a boolean (1/0, true/false)", o->env, source,
                    val);
            return SL_ERR_INVAL;
        }
        return SL_OK;
    }
    return SL_ERR_INTERNAL;
}

static const sl_cfg_opt *find_flag(const sl_cfg_opt *opts, size_t n, const char *name, size_t len)
{
    for (size_t i = 0; i < n; i++) {
        if (strlen(opts[i].flag) == len && strncmp(opts[i].flag, name, len) == 0)
            return &opts[i];
    }
    return NULL;
}

sl_status sl_config_load(const sl_cfg_opt *opts, size_t n, int argc, char **argv, bool *help,
                         char *err, size_t errlen)
{
    sl_status st = SL_OK;

    *help = false;
    err[0] = '\0';
    for (size_t i = 0; i < n && st == SL_OK; i++) {
        const char *env = getenv(opts[i].env);
        if (opts[i].def != NULL)
            st = apply(&opts[i], opts[i].def, "default", err, errlen);
        if (st == SL_OK && env != NULL && *env != '\0')
            st = apply(&opts[i], env, "environment", err, errlen);
    }
    for (int a = 1; a < argc && st == SL_OK; a++) {
        const char *arg = argv[a];
        const char *name, *eq, *val;
        const sl_cfg_opt *o;
        size_t len;

        if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
            *help = true;
            return SL_OK;
        }
        if (strncmp(arg, "--", 2) != 0) {
            sl_errf(err, errlen, "unexpected argument '%s' (see --help)", arg);
            return SL_ERR_INVAL;
        }
        name = arg + 2;
        eq = strchr(name, '=');
        len = eq ? (size_t)(eq - name) : strlen(name);
        o = find_flag(opts, n, name, len);
        if (o == NULL) {
            sl_errf(err, errlen, "unknown flag '%s' (see --help)", arg);
            return SL_ERR_INVAL;
        }
        if (eq != NULL) {
            val = eq + 1;
        } else if (o->type == SL_CFG_BOOL &&
                   (a + 1 >= argc || strncmp(argv[a + 1], "--", 2) == 0)) {
            val = "1";
        } else if (a + 1 < argc) {
            val = argv[++a];
        } else {
            sl_errf(err, errlen, "flag --%s (%s) needs a value", o->flag, o->env);
            return SL_ERR_INVAL;
        }
        st = apply(o, val, "flag", err, errlen);
    }
    for (size_t i = 0; i < n && st == SL_OK; i++) {
        const sl_cfg_opt *o = &opts[i];
        if (o->required && (o->type == SL_CFG_STR || o->type == SL_CFG_ADDR)) {
            char *v = *(char **)o->dst;
            if (v == NULL || *v == '\0') {
                sl_errf(err, errlen, "%s is required (or --%s): %s", o->env, o->flag, o->help);
                st = SL_ERR_INVAL;
            }
        }
    }
    return st;
}

void sl_config_usage(FILE *f, const char *prog, const char *about, const sl_cfg_opt *opts, size_t n)
{
    fprintf(f, "Usage: %s [--flag value ...]\n%s\n\n", prog, about);
    fprintf(f, "Every option is an environment variable and a flag (the flag wins):\n\n");
    for (size_t i = 0; i < n; i++) {
        const sl_cfg_opt *o = &opts[i];
        fprintf(f, "  %-28s --%s\n      %s", o->env, o->flag, o->help);
        if (o->def != NULL && !o->secret)
            fprintf(f, " (default: %s)", o->def);
        if (o->required)
            fprintf(f, " (required)");
        fprintf(f, "\n");
    }
}

void sl_config_free(const sl_cfg_opt *opts, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (opts[i].type == SL_CFG_STR || opts[i].type == SL_CFG_ADDR) {
            char **dst = opts[i].dst;
            free(*dst);
            *dst = NULL;
        }
    }
}

void sl_common_opts(sl_cfg_opt *out, sl_common_cfg *c, const char *admin_default)
{
    const sl_cfg_opt opts[SL_COMMON_OPTS_N] = {
        {"SLUICE_NATS_URL", "nats-url", SL_CFG_STR, "nats://127.0.0.1:4222",
         "NATS server URL(s), comma-separated", &c->nats_url, 0, 0, true, false},
        {"SLUICE_NATS_USER", "nats-user", SL_CFG_STR, NULL, "NATS user name", &c->nats_user, 0, 0,
         false, false},
        {"SLUICE_NATS_PASSWORD", "nats-password", SL_CFG_STR, NULL, "NATS password",
         &c->nats_password, 0, 0, false, true},
        {"SLUICE_ADMIN_LISTEN", "admin-listen", SL_CFG_ADDR, admin_default,
         "admin HTTP address (/healthz, /readyz, /metrics)", &c->admin_listen, 0, 0, true, false},
        {"SLUICE_LOG_LEVEL", "log-level", SL_CFG_STR, "info", "debug, info, warn or error",
         &c->log_level, 0, 0, true, false},
        {"SLUICE_STREAM_REPLICAS", "stream-replicas", SL_CFG_INT, "1",
         "replicas of Sluice's streams and buckets (3 on a NATS cluster)", &c->stream_replicas, 1,
         5, false, false},
        {"SLUICE_TENANT_QUEUE_MAX", "tenant-queue-max", SL_CFG_INT, "1000",
         "per-tenant bound of queued jobs per model", &c->tenant_queue_max, 1, 10000000, false,
         false},
        {"SLUICE_OUT_MAX_AGE_S", "out-max-age-s", SL_CFG_INT, "900",
         "recovery window: how long delivered events are kept for resume", &c->out_max_age_s, 10,
         30 * 86400, false, false},
        {"SLUICE_OUT_HISTORY", "out-history", SL_CFG_INT, "10000",
         "events kept per channel for resume and history", &c->out_history, 10, 100000000, false,
         false},
        {"SLUICE_RESUME_WINDOW_S", "resume-window-s", SL_CFG_INT, "900",
         "how long a session can be resumed", &c->resume_window_s, 10, 30 * 86400, false, false},
        {"SLUICE_IN_MAX_BYTES", "in-max-bytes", SL_CFG_SIZE, "1GiB",
         "storage bound of SLUICE_IN (client messages; when full the oldest are dropped)",
         &c->in_max_bytes, SL_MAX_BYTES_MIN, SL_MAX_BYTES_MAX, false, false},
        {"SLUICE_WORK_MAX_BYTES", "work-max-bytes", SL_CFG_SIZE, "1GiB",
         "storage bound of SLUICE_WORK (queued jobs; when full new jobs are refused: busy)",
         &c->work_max_bytes, SL_MAX_BYTES_MIN, SL_MAX_BYTES_MAX, false, false},
        {"SLUICE_OUT_MAX_BYTES", "out-max-bytes", SL_CFG_SIZE, "4GiB",
         "storage bound of SLUICE_OUT (delivered events; when full the oldest are dropped)",
         &c->out_max_bytes, SL_MAX_BYTES_MIN, SL_MAX_BYTES_MAX, false, false},
        {"SLUICE_KV_MAX_BYTES", "kv-max-bytes", SL_CFG_SIZE, "256MiB",
         "storage bound of each KV bucket (when full new keys are refused)", &c->kv_max_bytes,
         SL_MAX_BYTES_MIN, SL_MAX_BYTES_MAX, false, false},
        {"SLUICE_CANCEL_TTL_S", "cancel-ttl-s", SL_CFG_INT, "300",
         "lifetime of a cancel marker (bucket sluice_cancel): at least as long as a job can "
         "wait and run",
         &c->cancel_ttl_s, 1, 7 * 86400, false, false},
    };
    memcpy(out, opts, sizeof(opts));
}

sl_status sl_tenant_values_parse(const char *spec, const char *what, int64_t min, int64_t max,
                                 size_t max_items, sl_tenant_value **out, size_t *n, char *err,
                                 size_t errlen)
{
    sl_tenant_value *v = NULL;
    size_t k = 0, cap = 0;
    const char *p = spec;
    sl_status st = SL_ERR_INVAL;

    if (out == NULL || n == NULL || what == NULL)
        return SL_ERR_INVAL;
    *out = NULL;
    *n = 0;
    if (spec == NULL || spec[0] == '\0')
        return SL_OK;
    for (;;) {
        const char *eq = strchr(p, '='), *end = strchr(p, ',');
        size_t tlen, vlen;
        char num[24];
        int64_t val = 0;

        if (end == NULL)
            end = p + strlen(p);
        if (end == p) {
            sl_errf(err, errlen, "empty item (expected tenant=%s,...)", what);
            goto cleanup;
        }
        if (eq == NULL || eq > end) {
            sl_errf(err, errlen, "'%.*s' is not tenant=%s", (int)(end - p > 64 ? 64 : end - p), p,
                    what);
            goto cleanup;
        }
        if (k == max_items) {
            sl_errf(err, errlen, "more than %zu tenants", max_items);
            goto cleanup;
        }
        if (k == cap) {
            size_t ncap = cap ? cap * 2 : 8;
            sl_tenant_value *nv = realloc(v, ncap * sizeof(*nv));
            if (nv == NULL) {
                st = SL_ERR_NOMEM;
                goto cleanup;
            }
            v = nv;
            cap = ncap;
        }
        tlen = (size_t)(eq - p);
        if (tlen == 0 || tlen > SL_ID_MAX) {
            sl_errf(err, errlen, "'%.*s' is not a valid tenant id", (int)(tlen > 64 ? 64 : tlen),
                    p);
            goto cleanup;
        }
        memcpy(v[k].tenant, p, tlen);
        v[k].tenant[tlen] = '\0';
        if (!sl_id_valid(v[k].tenant)) {
            sl_errf(err, errlen, "'%s' is not a valid tenant id", v[k].tenant);
            goto cleanup;
        }
        for (size_t i = 0; i < k; i++) {
            if (strcmp(v[i].tenant, v[k].tenant) == 0) {
                sl_errf(err, errlen, "tenant '%s' is listed twice", v[k].tenant);
                goto cleanup;
            }
        }
        vlen = (size_t)(end - eq - 1);
        if (vlen > 0 && vlen < sizeof(num) && eq[1] >= '0' && eq[1] <= '9') {
            memcpy(num, eq + 1, vlen);
            num[vlen] = '\0';
        } else {
            num[0] = '\0';
        }
        if (num[0] == '\0' || sl_parse_int(num, &val) != SL_OK || val < min || val > max) {
            sl_errf(err, errlen, "%s of '%s' must be an integer from %lld to %lld, not '%.*s'",
                    what, v[k].tenant, (long long)min, (long long)max, (int)(vlen > 32 ? 32 : vlen),
                    eq + 1);
            goto cleanup;
        }
        v[k++].value = val;
        if (*end == '\0')
            break;
        p = end + 1;
    }
    *out = v;
    *n = k;
    return SL_OK;
cleanup:
    free(v);
    return st;
}
