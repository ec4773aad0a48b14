#include "hx_proc.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "hx_util.h"

extern char **environ;

struct hx_proc {
    char *name;
    char *path;     /* resolved executable */
    char **argv;    /* NULL-terminated copy */
    char **envp;    /* the complete environment of the child */
    char *log_path; /* "" for /dev/null */
    pid_t pid;
    pid_t owner; /* the process that spawned it (only it may reap) */
    bool reaped;
    int status;
    int starts;
    struct hx_proc *next; /* registry of live children */
};

static pthread_mutex_t hx__reg_mu = PTHREAD_MUTEX_INITIALIZER;
static hx_proc *hx__reg_head;
static pthread_once_t hx__reg_once = PTHREAD_ONCE_INIT;

static void hx__reap_blocking(hx_proc *p);

/* At exit, kill whatever this process spawned and did not destroy. Entries
 * copied into a forked child of the test belong to the test, not to it. */
static void hx__atexit(void)
{
    pthread_mutex_lock(&hx__reg_mu);
    for (hx_proc *p = hx__reg_head; p != NULL; p = p->next) {
        if (p->owner == getpid() && !p->reaped) {
            killpg(p->pid, SIGKILL);
            hx__reap_blocking(p);
        }
    }
    pthread_mutex_unlock(&hx__reg_mu);
}

static void hx__reg_init(void)
{
    atexit(hx__atexit);
}

static void hx__reg_add(hx_proc *p)
{
    pthread_once(&hx__reg_once, hx__reg_init);
    pthread_mutex_lock(&hx__reg_mu);
    p->next = hx__reg_head;
    hx__reg_head = p;
    pthread_mutex_unlock(&hx__reg_mu);
}

static void hx__reg_remove(hx_proc *p)
{
    pthread_mutex_lock(&hx__reg_mu);
    for (hx_proc **pp = &hx__reg_head; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == p) {
            *pp = p->next;
            break;
        }
    }
    pthread_mutex_unlock(&hx__reg_mu);
}

static void hx__strv_free(char **v)
{
    if (v == NULL)
        return;
    for (size_t i = 0; v[i] != NULL; i++)
        free(v[i]);
    free(v);
}

static char **hx__strv_dup(const char *const *v)
{
    size_t n = 0;
    while (v[n] != NULL)
        n++;
    char **out = calloc(n + 1, sizeof *out);
    if (out == NULL)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        out[i] = strdup(v[i]);
        if (out[i] == NULL) {
            hx__strv_free(out);
            return NULL;
        }
    }
    return out;
}

static size_t hx__keylen(const char *kv)
{
    const char *eq = strchr(kv, '=');
    return eq ? (size_t)(eq - kv) : strlen(kv);
}

/* The inherited environment with the adjustments applied. */
static char **hx__build_env(const char *const *adj)
{
    size_t n = 0, m = 0;
    while (environ[n] != NULL)
        n++;
    while (adj != NULL && adj[m] != NULL)
        m++;
    char **out = calloc(n + m + 1, sizeof *out);
    if (out == NULL)
        return NULL;
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        size_t kl = hx__keylen(environ[i]);
        bool overridden = false;
        for (size_t j = 0; j < m && !overridden; j++)
            overridden = hx__keylen(adj[j]) == kl && strncmp(adj[j], environ[i], kl) == 0;
        if (!overridden && (out[k] = strdup(environ[i])) != NULL)
            k++;
    }
    for (size_t j = 0; j < m; j++) {
        if (strchr(adj[j], '=') == NULL)
            continue; /* "K" alone: removed above */
        /* A later adjustment of the same key wins. */
        bool later = false;
        for (size_t l = j + 1; l < m && !later; l++)
            later = hx__keylen(adj[l]) == hx__keylen(adj[j]) &&
                    strncmp(adj[l], adj[j], hx__keylen(adj[j])) == 0;
        if (!later && (out[k] = strdup(adj[j])) != NULL)
            k++;
    }
    return out;
}

static char *hx__resolve(const char *prog)
{
    if (strchr(prog, '/') != NULL)
        return strdup(prog);
    const char *path = getenv("PATH");
    if (path == NULL)
        path = "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin";
    const char *p = path;
    for (int i = 0; i < 256 && *p != '\0'; i++) {
        const char *colon = strchr(p, ':');
        size_t dl = colon ? (size_t)(colon - p) : strlen(p);
        char *cand = hx_strf("%.*s/%s", (int)dl, dl ? p : ".", prog);
        if (access(cand, X_OK) == 0)
            return cand;
        free(cand);
        if (colon == NULL)
            break;
        p = colon + 1;
    }
    return strdup(prog);
}

/* Runs in the forked child: only async-signal-safe calls until execve. */
static void hx__child(const hx_proc *p, pid_t parent, int logfd, int nullfd, int errfd)
{
    setpgid(0, 0);
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() != parent)
        _exit(127);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = SIG_DFL;
    for (int sig = 1; sig < NSIG; sig++) {
        if (sig != SIGKILL && sig != SIGSTOP)
            sigaction(sig, &sa, NULL);
    }
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    if (dup2(nullfd, 0) < 0 || dup2(logfd, 1) < 0 || dup2(logfd, 2) < 0)
        goto fail;
    /* Every other descriptor (test sockets, other logs) closes at exec;
     * errfd is close-on-exec already and reports a failed exec. */
    if (close_range(3, ~0U, CLOSE_RANGE_CLOEXEC) != 0) {
        for (int fd = 3; fd < 65536; fd++)
            fcntl(fd, F_SETFD, FD_CLOEXEC);
    }
    execve(p->path, p->argv, p->envp);
fail:;
    int e = errno;
    ssize_t w = write(errfd, &e, sizeof e);
    (void)w;
    _exit(127);
}

static sl_status hx__start(hx_proc *p)
{
    sl_status st = SL_ERR_IO;
    int logfd = -1, nullfd = -1, pipefd[2] = {-1, -1};
    nullfd = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (*p->log_path != '\0')
        logfd = open(p->log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    else
        logfd = open("/dev/null", O_WRONLY | O_CLOEXEC);
    if (nullfd < 0 || logfd < 0) {
        hx_set_error("%s: open log %s: %s", p->name, p->log_path, strerror(errno));
        goto cleanup;
    }
    if (pipe2(pipefd, O_CLOEXEC) != 0) {
        hx_set_error("%s: pipe: %s", p->name, strerror(errno));
        goto cleanup;
    }
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        hx_set_error("%s: fork: %s", p->name, strerror(errno));
        goto cleanup;
    }
    if (pid == 0)
        hx__child(p, parent, logfd, nullfd, pipefd[1]);
    setpgid(pid, pid); /* also done by the child; whoever runs first wins */
    close(pipefd[1]);
    pipefd[1] = -1;
    int child_errno = 0;
    ssize_t n;
    do {
        n = read(pipefd[0], &child_errno, sizeof child_errno);
    } while (n < 0 && errno == EINTR);
    p->pid = pid;
    p->owner = parent;
    p->reaped = false;
    p->status = 0;
    p->starts++;
    if (n > 0) {
        hx__reap_blocking(p);
        hx_set_error("%s: cannot execute %s: %s", p->name, p->path, strerror(child_errno));
        goto cleanup;
    }
    st = SL_OK;
cleanup:
    if (nullfd >= 0)
        close(nullfd);
    if (logfd >= 0)
        close(logfd);
    if (pipefd[0] >= 0)
        close(pipefd[0]);
    if (pipefd[1] >= 0)
        close(pipefd[1]);
    return st;
}

sl_status hx_proc_spawn(hx_proc **out, const char *name, const char *const *argv,
                        const char *const *env, const char *log_path)
{
    if (out == NULL || argv == NULL || argv[0] == NULL) {
        hx_set_error("hx_proc_spawn: no program");
        return SL_ERR_INVAL;
    }
    sl_status st = SL_ERR_NOMEM;
    hx_proc *p = calloc(1, sizeof *p);
    if (p == NULL)
        goto cleanup;
    p->name = strdup(name ? name : argv[0]);
    p->path = hx__resolve(argv[0]);
    p->argv = hx__strv_dup(argv);
    p->envp = hx__build_env(env);
    p->log_path = strdup(log_path ? log_path : "");
    if (!p->name || !p->path || !p->argv || !p->envp || !p->log_path) {
        hx_set_error("hx_proc_spawn: out of memory");
        goto cleanup;
    }
    p->reaped = true; /* nothing to reap until started */
    st = hx__start(p);
    if (st != SL_OK)
        goto cleanup;
    hx__reg_add(p);
    *out = p;
    p = NULL;
cleanup:
    if (p != NULL) {
        free(p->name);
        free(p->path);
        hx__strv_free(p->argv);
        hx__strv_free(p->envp);
        free(p->log_path);
        free(p);
    }
    return st;
}

sl_status hx_proc_respawn(hx_proc *p)
{
    if (p == NULL)
        return SL_ERR_INVAL;
    if (hx_proc_alive(p)) {
        hx_set_error("%s: still running (pid %d); stop it before respawning", p->name, (int)p->pid);
        return SL_ERR_EXISTS;
    }
    if (*p->log_path != '\0') {
        int fd = open(p->log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
        if (fd >= 0) {
            dprintf(fd, "=== hx: restart %d ===\n", p->starts);
            close(fd);
        }
    }
    return hx__start(p);
}

/* Reaps p, waiting at most 10 s (SIGKILLed children go quickly). */
static void hx__reap_blocking(hx_proc *p)
{
    int64_t deadline = hx_now_ms() + 10000;
    for (int i = 0; i < 20000 && !p->reaped; i++) {
        int status = 0;
        pid_t r = waitpid(p->pid, &status, WNOHANG);
        if (r == p->pid || (r < 0 && errno == ECHILD)) {
            p->reaped = true;
            p->status = r == p->pid ? status : 0xff00; /* reaped elsewhere: unknown */
            break;
        }
        if (hx_now_ms() > deadline) {
            fprintf(stderr, "hx: %s (pid %d) could not be reaped\n", p->name, (int)p->pid);
            break;
        }
        hx_sleep_ms(1);
    }
}

bool hx_proc_alive(hx_proc *p)
{
    if (p == NULL || p->reaped)
        return false;
    int status = 0;
    pid_t r = waitpid(p->pid, &status, WNOHANG);
    if (r == p->pid || (r < 0 && errno == ECHILD)) {
        p->reaped = true;
        p->status = r == p->pid ? status : 0xff00; /* reaped elsewhere: unknown */
        return false;
    }
    return true;
}

bool hx_proc_exited(const hx_proc *p, int *status)
{
    if (p == NULL || !p->reaped)
        return false;
    if (status)
        *status = p->status;
    return true;
}

int hx_proc_kill(hx_proc *p, int sig)
{
    if (p == NULL || p->reaped) {
        errno = ESRCH;
        return -1;
    }
    return kill(p->pid, sig);
}

sl_status hx_proc_wait(hx_proc *p, int timeout_ms, int *status)
{
    if (p == NULL)
        return SL_ERR_INVAL;
    int64_t deadline = hx_now_ms() + (timeout_ms > 0 ? timeout_ms : 0);
    int nap = 1;
    for (int i = 0; i < 1000000; i++) {
        if (!hx_proc_alive(p)) {
            if (status)
                *status = p->status;
            return SL_OK;
        }
        int64_t left = deadline - hx_now_ms();
        if (left <= 0)
            break;
        hx_sleep_ms(nap < left ? nap : (int)left);
        if (nap < 10)
            nap *= 2;
    }
    hx_set_error("%s (pid %d) still running after %d ms", p->name, (int)p->pid, timeout_ms);
    return SL_ERR_TIMEOUT;
}

sl_status hx_proc_stop(hx_proc *p, int sig, int timeout_ms, int *status)
{
    if (p == NULL)
        return SL_ERR_INVAL;
    if (hx_proc_alive(p))
        kill(p->pid, sig);
    if (hx_proc_wait(p, timeout_ms, status) == SL_OK)
        return SL_OK;
    char msg[256];
    snprintf(msg, sizeof msg, "%s", hx_error());
    killpg(p->pid, SIGKILL);
    hx__reap_blocking(p);
    if (status)
        *status = p->status;
    hx_set_error("%s; killed with SIGKILL", msg);
    return SL_ERR_TIMEOUT;
}

pid_t hx_proc_pid(const hx_proc *p)
{
    return p ? p->pid : -1;
}

int hx_proc_starts(const hx_proc *p)
{
    return p ? p->starts : 0;
}

const char *hx_proc_log_path(const hx_proc *p)
{
    return p ? p->log_path : "";
}

const char *hx_proc_name(const hx_proc *p)
{
    return p ? p->name : "";
}

const char *hx_proc_status_str(int status, char *buf, size_t len)
{
    if (WIFEXITED(status))
        snprintf(buf, len, "exit %d", WEXITSTATUS(status));
    else if (WIFSIGNALED(status))
        snprintf(buf, len, "signal %d (%s)", WTERMSIG(status), strsignal(WTERMSIG(status)));
    else
        snprintf(buf, len, "status 0x%x", (unsigned)status);
    return buf;
}

void hx_proc_destroy(hx_proc *p)
{
    if (p == NULL)
        return;
    if (!p->reaped && p->owner == getpid()) {
        killpg(p->pid, SIGKILL);
        hx__reap_blocking(p);
    }
    hx__reg_remove(p);
    free(p->name);
    free(p->path);
    hx__strv_free(p->argv);
    hx__strv_free(p->envp);
    free(p->log_path);
    free(p);
}
