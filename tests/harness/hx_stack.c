#include "hx_stack.h"

#include <errno.h>
#include <limits.h>
#include <openssl/rand.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "hx_http.h"
#include "hx_port.h"
#include "hx_util.h"

#if defined(__SANITIZE_ADDRESS__)
#define HX_DEFAULT_BIN_DIR "build/san/bin"
#else
#define HX_DEFAULT_BIN_DIR "bin"
#endif

static const char *const hx__sanitizer_markers[] = {
    "ERROR: AddressSanitizer",       "ERROR: LeakSanitizer",     "runtime error:",
    "AddressSanitizer:DEADLYSIGNAL", "WARNING: ThreadSanitizer",
};

typedef struct hx__svc {
    hx_tier tier;
    int index;
    int admin_port;
    int listen_port; /* gateways only */
    char *log_path;
    char **extra_env; /* NULL-terminated copy of the hx_stack_add env, or NULL */
    hx_proc *proc;
    bool stopped_by_test;
} hx__svc;

struct hx_stack {
    char *dir;
    char *bin_dir;
    char secret[65];
    hx_stack_cfg cfg;
    hx_nats *nats;
    hx__svc svc[HX_TIERS][HX_STACK_MAX_PER_TIER];
    int count[HX_TIERS];
    pid_t owner;
    struct hx_stack *next;
};

/* Stacks still alive at exit (a test that returned early, or NOFORK mode
 * after a failed assertion) are torn down by an atexit handler. */
static pthread_mutex_t hx__stacks_mu = PTHREAD_MUTEX_INITIALIZER;
static hx_stack *hx__stacks;
static pthread_once_t hx__stacks_once = PTHREAD_ONCE_INIT;

static void hx__fast_teardown(hx_stack *s);

static void hx__stacks_atexit(void)
{
    pthread_mutex_lock(&hx__stacks_mu);
    for (hx_stack *s = hx__stacks; s != NULL; s = s->next) {
        if (s->owner != getpid())
            continue;
        fprintf(stderr, "hx: stack %s was not destroyed by the test; its logs follow\n", s->dir);
        hx_stack_dump_logs(s, stderr, 3000);
        hx__fast_teardown(s);
    }
    pthread_mutex_unlock(&hx__stacks_mu);
}

static void hx__stacks_init(void)
{
    atexit(hx__stacks_atexit);
}

static void hx__stacks_add(hx_stack *s)
{
    pthread_once(&hx__stacks_once, hx__stacks_init);
    pthread_mutex_lock(&hx__stacks_mu);
    s->next = hx__stacks;
    hx__stacks = s;
    pthread_mutex_unlock(&hx__stacks_mu);
}

static void hx__stacks_remove(hx_stack *s)
{
    pthread_mutex_lock(&hx__stacks_mu);
    for (hx_stack **pp = &hx__stacks; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == s) {
            *pp = s->next;
            break;
        }
    }
    pthread_mutex_unlock(&hx__stacks_mu);
}

const char *hx_tier_name(hx_tier tier)
{
    switch (tier) {
    case HX_GATEWAY:
        return "gateway";
    case HX_ORCHESTRATOR:
        return "orchestrator";
    case HX_WORKER:
        return "worker";
    }
    return "?";
}

static hx__svc *hx__get(const hx_stack *s, hx_tier tier, int i)
{
    if (s == NULL || (int)tier < 0 || (int)tier >= HX_TIERS || i < 0 || i >= s->count[tier])
        return NULL;
    return (hx__svc *)&s->svc[tier][i];
}

static char *hx__svc_name(const hx__svc *v)
{
    return hx_strf("%s-%d", hx_tier_name(v->tier), v->index);
}

/* The environment of one process, as a NULL-terminated malloc'd vector. */
static char **hx__svc_env(const hx_stack *s, const hx__svc *v)
{
    size_t cap = 16;
    for (const char *const *e = s->cfg.env; e && *e; e++)
        cap++;
    for (const char *const *e = s->cfg.tier_env[v->tier]; e && *e; e++)
        cap++;
    for (char **e = v->extra_env; e && *e; e++)
        cap++;
    char **env = calloc(cap, sizeof *env);
    if (env == NULL)
        abort();
    size_t n = 0;
    env[n++] = hx_strf("SLUICE_NATS_URL=%s", hx_nats_url(s->nats));
    env[n++] = hx_strf("SLUICE_JWT_SECRET=%s", s->secret);
    env[n++] = hx_strf("SLUICE_ADMIN_LISTEN=127.0.0.1:%d", v->admin_port);
    if (v->tier == HX_GATEWAY)
        env[n++] = hx_strf("SLUICE_LISTEN=127.0.0.1:%d", v->listen_port);
    env[n++] = hx_strf("SLUICE_LOG_LEVEL=debug");
    if (s->cfg.echo_token_delay_ms > 0)
        env[n++] = hx_strf("SLUICE_ECHO_TOKEN_DELAY_MS=%d", s->cfg.echo_token_delay_ms);
    env[n++] = hx_strf("ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:exitcode=66");
    env[n++] = hx_strf("UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1:exitcode=66");
    for (const char *const *e = s->cfg.env; e && *e; e++)
        env[n++] = hx_strf("%s", *e);
    for (const char *const *e = s->cfg.tier_env[v->tier]; e && *e; e++)
        env[n++] = hx_strf("%s", *e);
    for (char **e = v->extra_env; e && *e; e++)
        env[n++] = hx_strf("%s", *e);
    env[n] = NULL;
    return env;
}

static void hx__strv_free(char **v)
{
    for (size_t i = 0; v && v[i]; i++)
        free(v[i]);
    free(v);
}

static void hx__svc_report(const hx__svc *v, const char *why)
{
    char *name = hx__svc_name(v);
    fprintf(stderr, "hx: %s: %s\n", name, why);
    hx_print_tail(stderr, name, v->log_path, 4096);
    free(name);
}

static sl_status hx__svc_spawn(hx_stack *s, hx__svc *v)
{
    char *name = hx__svc_name(v);
    char *path = hx_strf("%s/sluice-%s", s->bin_dir, hx_tier_name(v->tier));
    char **env = hx__svc_env(s, v);
    const char *argv[] = {path, NULL};
    sl_status st;
    if (v->proc == NULL) {
        st = hx_proc_spawn(&v->proc, name, argv, (const char *const *)env, v->log_path);
    } else {
        st = hx_proc_respawn(v->proc);
    }
    if (st == SL_OK)
        v->stopped_by_test = false;
    hx__strv_free(env);
    free(path);
    free(name);
    return st;
}

sl_status hx_stack_wait_ready(hx_stack *s, hx_tier tier, int i, int timeout_ms)
{
    hx__svc *v = hx__get(s, tier, i);
    if (v == NULL) {
        hx_set_error("hx_stack_wait_ready: no %s %d", hx_tier_name(tier), i);
        return SL_ERR_INVAL;
    }
    int64_t deadline = hx_now_ms() + (timeout_ms > 0 ? timeout_ms : 0);
    int last = -1, nap = 5;
    char *name = hx__svc_name(v);
    sl_status st = SL_ERR_TIMEOUT;
    for (int k = 0; k < 100000; k++) {
        if (!hx_proc_alive(v->proc)) {
            int status = 0;
            char sb[64];
            hx_proc_exited(v->proc, &status);
            hx_set_error("%s exited (%s) before /readyz answered 200 (log %s)", name,
                         hx_proc_status_str(status, sb, sizeof sb), v->log_path);
            st = SL_ERR_IO;
            goto cleanup;
        }
        int left = (int)(deadline - hx_now_ms());
        if (left <= 0)
            break;
        last = hx_http_get(NULL, v->admin_port, "/readyz", left < 2000 ? left : 2000, NULL);
        if (last == 200 && v->tier == HX_GATEWAY) {
            left = (int)(deadline - hx_now_ms());
            int fd = hx_tcp_connect(NULL, v->listen_port, left > 0 ? left : 1);
            if (fd >= 0) {
                close(fd);
                st = SL_OK;
                hx_set_error("%s", ""); /* the refusals before it listened are no error */
                goto cleanup;
            }
            last = -2;
        } else if (last == 200) {
            st = SL_OK;
            hx_set_error("%s", "");
            goto cleanup;
        }
        left = (int)(deadline - hx_now_ms());
        hx_sleep_ms(nap < left ? nap : left);
        if (nap < 50)
            nap *= 2;
    }
    if (last == -2)
        hx_set_error("%s: /readyz is 200 but its client port %d refuses connections after %d ms",
                     name, v->listen_port, timeout_ms);
    else
        hx_set_error("%s not ready after %d ms (last GET /readyz on port %d: %d)", name, timeout_ms,
                     v->admin_port, last);
cleanup:
    free(name);
    return st;
}

static int hx__ready_timeout(const hx_stack *s)
{
    return s->cfg.ready_timeout_ms > 0 ? s->cfg.ready_timeout_ms : 20000;
}

static int hx__term_timeout(const hx_stack *s)
{
    return s->cfg.term_timeout_ms > 0 ? s->cfg.term_timeout_ms : 5000;
}

/* Adds a process record with fresh ports and starts it (no waiting). */
static sl_status hx__svc_new(hx_stack *s, hx_tier tier, const char *const *env, hx__svc **out)
{
    if (s->count[tier] >= HX_STACK_MAX_PER_TIER) {
        hx_set_error("at most %d %ss per stack", HX_STACK_MAX_PER_TIER, hx_tier_name(tier));
        return SL_ERR_FULL;
    }
    hx__svc *v = &s->svc[tier][s->count[tier]];
    memset(v, 0, sizeof *v);
    v->tier = tier;
    v->index = s->count[tier];
    v->admin_port = hx_port_free();
    v->listen_port = tier == HX_GATEWAY ? hx_port_free() : 0;
    if (v->admin_port < 0 || v->listen_port < 0)
        return SL_ERR_IO;
    v->log_path = hx_strf("%s/%s-%d.log", s->dir, hx_tier_name(tier), v->index);
    if (env != NULL) {
        size_t n = 0;
        while (env[n])
            n++;
        v->extra_env = calloc(n + 1, sizeof *v->extra_env);
        if (v->extra_env == NULL)
            abort();
        for (size_t k = 0; k < n; k++)
            v->extra_env[k] = hx_strf("%s", env[k]);
    }
    s->count[tier]++;
    sl_status st = hx__svc_spawn(s, v);
    if (st == SL_OK)
        *out = v;
    return st;
}

const char *hx_stack_default_bin_dir(void)
{
    const char *d = getenv("SLUICE_BIN_DIR");
    return d != NULL && *d != '\0' ? d : HX_DEFAULT_BIN_DIR;
}

sl_status hx_stack_start(hx_stack **out, const hx_stack_cfg *cfg)
{
    hx_stack_cfg def = {.gateways = 1, .orchestrators = 1, .workers = 1};
    const hx_stack_cfg *c = cfg ? cfg : &def;
    sl_status st = SL_ERR_INVAL;
    char *bin = NULL;
    hx_stack *s = NULL;
    const int want[HX_TIERS] = {c->gateways, c->orchestrators, c->workers};
    for (int t = 0; t < HX_TIERS; t++) {
        if (want[t] < 0 || want[t] > HX_STACK_MAX_PER_TIER) {
            hx_set_error("hx_stack_start: %d %ss is out of range", want[t],
                         hx_tier_name((hx_tier)t));
            return SL_ERR_INVAL;
        }
    }
    const char *bin_dir = c->bin_dir ? c->bin_dir : hx_stack_default_bin_dir();
    char resolved[PATH_MAX];
    if (realpath(bin_dir, resolved) == NULL) {
        hx_set_error("binary directory %s: %s (run make, or set SLUICE_BIN_DIR)", bin_dir,
                     strerror(errno));
        return SL_ERR_INVAL;
    }
    for (int t = 0; t < HX_TIERS; t++) {
        if (want[t] == 0)
            continue;
        bin = hx_strf("%s/sluice-%s", resolved, hx_tier_name((hx_tier)t));
        if (access(bin, X_OK) != 0) {
            hx_set_error("%s: %s (run make, or set SLUICE_BIN_DIR)", bin, strerror(errno));
            free(bin);
            return SL_ERR_INVAL;
        }
        free(bin);
        bin = NULL;
    }

    s = calloc(1, sizeof *s);
    if (s == NULL)
        return SL_ERR_NOMEM;
    s->cfg = *c;
    s->owner = getpid();
    s->bin_dir = hx_strf("%s", resolved);
    unsigned char rnd[32];
    if (RAND_bytes(rnd, sizeof rnd) != 1) {
        hx_set_error("RAND_bytes failed");
        st = SL_ERR_INTERNAL;
        goto cleanup;
    }
    for (size_t k = 0; k < sizeof rnd; k++)
        snprintf(s->secret + 2 * k, 3, "%02x", rnd[k]);
    st = hx_tmpdir_create("stack", &s->dir);
    if (st != SL_OK)
        goto cleanup;
    hx__stacks_add(s);
    hx_nats_opts no = {.nodes = c->nats_nodes, .websocket = c->nats_websocket};
    st = hx_nats_start(&s->nats, s->dir, &no);
    if (st != SL_OK)
        goto cleanup;
    /* Start everything first, then wait: the processes boot in parallel. */
    for (int t = 0; t < HX_TIERS; t++) {
        for (int i = 0; i < want[t]; i++) {
            hx__svc *v = NULL;
            st = hx__svc_new(s, (hx_tier)t, NULL, &v);
            if (st != SL_OK)
                goto cleanup;
        }
    }
    if (!c->no_wait_ready) {
        int64_t deadline = hx_now_ms() + hx__ready_timeout(s);
        for (int t = 0; t < HX_TIERS; t++) {
            for (int i = 0; i < s->count[t]; i++) {
                int left = (int)(deadline - hx_now_ms());
                st = hx_stack_wait_ready(s, (hx_tier)t, i, left > 0 ? left : 1);
                if (st != SL_OK) {
                    char why[1024];
                    snprintf(why, sizeof why, "%s", hx_error());
                    hx__svc_report(&s->svc[t][i], why);
                    hx_set_error("%s", why);
                    goto cleanup;
                }
            }
        }
    }
    *out = s;
    s = NULL;
    st = SL_OK;
cleanup:
    if (s != NULL) {
        char why[1024];
        snprintf(why, sizeof why, "%s", hx_error());
        hx__stacks_remove(s);
        hx__fast_teardown(s);
        free(s->dir);
        free(s->bin_dir);
        free(s);
        hx_set_error("%s", why);
    }
    return st;
}

const char *hx_stack_dir(const hx_stack *s)
{
    return s ? s->dir : "";
}

const char *hx_stack_secret(const hx_stack *s)
{
    return s ? s->secret : "";
}

const char *hx_stack_nats_url(const hx_stack *s)
{
    return s ? hx_nats_url(s->nats) : "";
}

const char *hx_stack_bin_dir(const hx_stack *s)
{
    return s ? s->bin_dir : "";
}

hx_nats *hx_stack_nats(hx_stack *s)
{
    return s ? s->nats : NULL;
}

int hx_stack_count(const hx_stack *s, hx_tier tier)
{
    return s && (int)tier >= 0 && (int)tier < HX_TIERS ? s->count[tier] : 0;
}

int hx_stack_gw_port(const hx_stack *s, int i)
{
    hx__svc *v = hx__get(s, HX_GATEWAY, i);
    return v ? v->listen_port : -1;
}

int hx_stack_admin_port(const hx_stack *s, hx_tier tier, int i)
{
    hx__svc *v = hx__get(s, tier, i);
    return v ? v->admin_port : -1;
}

hx_proc *hx_stack_proc(hx_stack *s, hx_tier tier, int i)
{
    hx__svc *v = hx__get(s, tier, i);
    return v ? v->proc : NULL;
}

const char *hx_stack_log_path(const hx_stack *s, hx_tier tier, int i)
{
    hx__svc *v = hx__get(s, tier, i);
    return v ? v->log_path : "";
}

sl_status hx_stack_kill(hx_stack *s, hx_tier tier, int i, int sig)
{
    hx__svc *v = hx__get(s, tier, i);
    if (v == NULL) {
        hx_set_error("hx_stack_kill: no %s %d", hx_tier_name(tier), i);
        return SL_ERR_INVAL;
    }
    if (!hx_proc_alive(v->proc)) {
        hx_set_error("%s %d is not running", hx_tier_name(tier), i);
        return SL_ERR_CLOSED;
    }
    v->stopped_by_test = true;
    hx_proc_kill(v->proc, sig);
    if (sig == SIGKILL)
        return hx_proc_wait(v->proc, 5000, NULL);
    return SL_OK;
}

sl_status hx_stack_stop(hx_stack *s, hx_tier tier, int i, int sig, int timeout_ms, int *status)
{
    hx__svc *v = hx__get(s, tier, i);
    if (v == NULL) {
        hx_set_error("hx_stack_stop: no %s %d", hx_tier_name(tier), i);
        return SL_ERR_INVAL;
    }
    v->stopped_by_test = true;
    return hx_proc_stop(v->proc, sig, timeout_ms, status);
}

sl_status hx_stack_restart(hx_stack *s, hx_tier tier, int i)
{
    hx__svc *v = hx__get(s, tier, i);
    if (v == NULL) {
        hx_set_error("hx_stack_restart: no %s %d", hx_tier_name(tier), i);
        return SL_ERR_INVAL;
    }
    if (hx_proc_alive(v->proc))
        hx_proc_stop(v->proc, SIGKILL, 5000, NULL);
    sl_status st = hx__svc_spawn(s, v);
    if (st == SL_OK && !s->cfg.no_wait_ready)
        st = hx_stack_wait_ready(s, tier, i, hx__ready_timeout(s));
    if (st != SL_OK) {
        char why[1024];
        snprintf(why, sizeof why, "%s", hx_error());
        hx__svc_report(v, why);
        hx_set_error("%s", why);
    }
    return st;
}

sl_status hx_stack_add(hx_stack *s, hx_tier tier, const char *const *env, int *index_out)
{
    if (s == NULL || (int)tier < 0 || (int)tier >= HX_TIERS)
        return SL_ERR_INVAL;
    char bin[PATH_MAX];
    snprintf(bin, sizeof bin, "%s/sluice-%s", s->bin_dir, hx_tier_name(tier));
    if (access(bin, X_OK) != 0) {
        hx_set_error("%s: %s", bin, strerror(errno));
        return SL_ERR_INVAL;
    }
    hx__svc *v = NULL;
    sl_status st = hx__svc_new(s, tier, env, &v);
    if (st == SL_OK && !s->cfg.no_wait_ready)
        st = hx_stack_wait_ready(s, tier, v->index, hx__ready_timeout(s));
    if (st != SL_OK && v != NULL) {
        char why[1024];
        snprintf(why, sizeof why, "%s", hx_error());
        hx__svc_report(v, why);
        hx_set_error("%s", why);
    }
    if (st == SL_OK && index_out != NULL)
        *index_out = v->index;
    return st;
}

sl_status hx_stack_restart_nats(hx_stack *s, int sig)
{
    return s ? hx_nats_restart(s->nats, 0, sig) : SL_ERR_INVAL;
}

/* Returns the first sanitizer marker in the log, or NULL. */
static const char *hx__sanitizer_hit(const char *log_path)
{
    for (size_t k = 0; k < sizeof hx__sanitizer_markers / sizeof *hx__sanitizer_markers; k++) {
        if (hx_file_contains(log_path, hx__sanitizer_markers[k]))
            return hx__sanitizer_markers[k];
    }
    return NULL;
}

/* SIGTERMs every running process, waits for all until one deadline, then
 * SIGKILLs the rest. killed[t][i] tells which needed SIGKILL; was_running
 * which were running when it began. */
static void hx__term_all(hx_stack *s, int timeout_ms, bool killed[HX_TIERS][HX_STACK_MAX_PER_TIER],
                         bool was_running[HX_TIERS][HX_STACK_MAX_PER_TIER])
{
    for (int t = 0; t < HX_TIERS; t++) {
        for (int i = 0; i < s->count[t]; i++) {
            killed[t][i] = false;
            was_running[t][i] = hx_proc_alive(s->svc[t][i].proc);
            if (was_running[t][i])
                hx_proc_kill(s->svc[t][i].proc, SIGTERM);
        }
    }
    int64_t deadline = hx_now_ms() + timeout_ms;
    for (int t = 0; t < HX_TIERS; t++) {
        for (int i = 0; i < s->count[t]; i++) {
            if (!was_running[t][i])
                continue;
            int left = (int)(deadline - hx_now_ms());
            if (hx_proc_wait(s->svc[t][i].proc, left > 0 ? left : 0, NULL) != SL_OK) {
                killed[t][i] = true;
                hx_proc_stop(s->svc[t][i].proc, SIGKILL, 5000, NULL);
            }
        }
    }
}

sl_status hx_stack_stop_all_gracefully(hx_stack *s, bool *all_clean)
{
    if (s == NULL)
        return SL_ERR_INVAL;
    bool killed[HX_TIERS][HX_STACK_MAX_PER_TIER];
    bool running[HX_TIERS][HX_STACK_MAX_PER_TIER];
    hx__term_all(s, hx__term_timeout(s), killed, running);
    bool clean = true;
    char first[1024] = "";
    for (int t = 0; t < HX_TIERS; t++) {
        for (int i = 0; i < s->count[t]; i++) {
            hx__svc *v = &s->svc[t][i];
            char why[512] = "";
            int status = 0;
            char sb[64];
            const char *hit = hx__sanitizer_hit(v->log_path);
            hx_proc_exited(v->proc, &status);
            if (hit != NULL)
                snprintf(why, sizeof why, "log contains \"%s\"", hit);
            else if (killed[t][i])
                snprintf(why, sizeof why, "still running %d ms after SIGTERM; killed",
                         hx__term_timeout(s));
            else if (!running[t][i] && v->stopped_by_test)
                continue;
            else if (!running[t][i] && !(WIFEXITED(status) && WEXITSTATUS(status) == 0))
                snprintf(why, sizeof why, "had died before the stop (%s)",
                         hx_proc_status_str(status, sb, sizeof sb));
            else if (!(WIFEXITED(status) && WEXITSTATUS(status) == 0))
                snprintf(why, sizeof why, "exited with %s after SIGTERM",
                         hx_proc_status_str(status, sb, sizeof sb));
            if (why[0] == '\0')
                continue;
            if (clean)
                snprintf(first, sizeof first, "%s %d: %s", hx_tier_name((hx_tier)t), i, why);
            clean = false;
            hx__svc_report(v, why);
        }
    }
    for (int t = 0; t < HX_TIERS; t++) {
        for (int i = 0; i < s->count[t]; i++)
            s->svc[t][i].stopped_by_test = true; /* stopped now; a restart clears it */
    }
    if (all_clean)
        *all_clean = clean;
    if (!clean) {
        hx_set_error("not a clean stop: %s", first);
        return SL_ERR_INTERNAL;
    }
    return SL_OK;
}

bool hx_stack_sanitizer_clean(hx_stack *s)
{
    bool clean = true;
    for (int t = 0; s && t < HX_TIERS; t++) {
        for (int i = 0; i < s->count[t]; i++) {
            const char *hit = hx__sanitizer_hit(s->svc[t][i].log_path);
            if (hit == NULL)
                continue;
            char why[128];
            snprintf(why, sizeof why, "log contains \"%s\"", hit);
            hx__svc_report(&s->svc[t][i], why);
            if (clean)
                hx_set_error("%s %d: %s", hx_tier_name((hx_tier)t), i, why);
            clean = false;
        }
    }
    return clean;
}

void hx_stack_dump_logs(hx_stack *s, FILE *f, size_t tail_bytes)
{
    if (s == NULL)
        return;
    for (int n = 0; s->nats && n < hx_nats_nodes(s->nats); n++) {
        char title[32];
        snprintf(title, sizeof title, "nats-%d", n);
        hx_print_tail(f, title, hx_nats_log_path(s->nats, n), tail_bytes);
    }
    for (int t = 0; t < HX_TIERS; t++) {
        for (int i = 0; i < s->count[t]; i++) {
            char *name = hx__svc_name(&s->svc[t][i]);
            hx_print_tail(f, name, s->svc[t][i].log_path, tail_bytes);
            free(name);
        }
    }
}

/* SIGKILLs and frees every process, stops nats, removes the directory;
 * leaves s itself allocated. */
static void hx__fast_teardown(hx_stack *s)
{
    for (int t = 0; t < HX_TIERS; t++) {
        for (int i = 0; i < s->count[t]; i++) {
            hx__svc *v = &s->svc[t][i];
            hx_proc_destroy(v->proc);
            v->proc = NULL;
            free(v->log_path);
            v->log_path = NULL;
            hx__strv_free(v->extra_env);
            v->extra_env = NULL;
        }
        s->count[t] = 0;
    }
    hx_nats_destroy(s->nats);
    s->nats = NULL;
    if (s->dir != NULL) {
        const char *keep = getenv("HX_KEEP_TMP");
        if (keep != NULL && strcmp(keep, "1") == 0)
            fprintf(stderr, "hx: keeping %s (HX_KEEP_TMP=1)\n", s->dir);
        else
            hx_rm_rf(s->dir);
    }
}

void hx_stack_destroy(hx_stack *s)
{
    if (s == NULL)
        return;
    hx__stacks_remove(s);
    if (s->owner == getpid()) {
        bool killed[HX_TIERS][HX_STACK_MAX_PER_TIER];
        bool running[HX_TIERS][HX_STACK_MAX_PER_TIER];
        hx__term_all(s, hx__term_timeout(s), killed, running);
        hx_stack_sanitizer_clean(s);
    }
    hx__fast_teardown(s);
    free(s->dir);
    free(s->bin_dir);
    free(s);
}
