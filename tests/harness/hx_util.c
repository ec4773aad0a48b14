#include "hx_util.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define HX_TMP_PREFIX "sluice-hx-"

static _Thread_local char hx__errbuf[2048];

int64_t hx_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void hx_sleep_ms(int ms)
{
    if (ms <= 0)
        return;
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

bool hx_wait_until(hx_cond_fn fn, void *ud, int timeout_ms)
{
    int64_t deadline = hx_now_ms() + (timeout_ms > 0 ? timeout_ms : 0);
    int nap = 1;
    /* The time bound ends the loop; the count bound is a backstop. */
    for (int i = 0; i < 1000000; i++) {
        if (fn(ud))
            return true;
        int64_t left = deadline - hx_now_ms();
        if (left <= 0)
            break;
        hx_sleep_ms(nap < left ? nap : (int)left);
        if (nap < 20)
            nap *= 2;
    }
    hx_set_error("condition not met within %d ms", timeout_ms);
    return false;
}

const char *hx_error(void)
{
    return hx__errbuf;
}

void hx_set_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(hx__errbuf, sizeof hx__errbuf, fmt, ap);
    va_end(ap);
}

char *hx_strf(const char *fmt, ...)
{
    va_list ap;
    char *s = NULL;
    va_start(ap, fmt);
    int n = vasprintf(&s, fmt, ap);
    va_end(ap);
    if (n < 0)
        abort();
    return s;
}

/* Removes /tmp/sluice-hx-<pid>-* directories whose process is gone, so that
 * a test killed by a signal (Check's timeout uses SIGKILL) leaves no litter
 * for long. */
static void hx__sweep_stale_tmpdirs(void)
{
    DIR *d = opendir("/tmp");
    if (d == NULL)
        return;
    struct dirent *e;
    for (int i = 0; i < 100000 && (e = readdir(d)) != NULL; i++) {
        if (strncmp(e->d_name, HX_TMP_PREFIX, strlen(HX_TMP_PREFIX)) != 0)
            continue;
        const char *p = e->d_name + strlen(HX_TMP_PREFIX);
        char *end = NULL;
        long pid = strtol(p, &end, 10);
        if (end == p || *end != '-' || pid <= 0)
            continue;
        if (kill((pid_t)pid, 0) == 0 || errno != ESRCH)
            continue;
        char *path = hx_strf("/tmp/%s", e->d_name);
        hx_rm_rf(path);
        free(path);
    }
    closedir(d);
}

sl_status hx_tmpdir_create(const char *tag, char **out)
{
    hx__sweep_stale_tmpdirs();
    char *tmpl = hx_strf("/tmp/" HX_TMP_PREFIX "%ld-%s-XXXXXX", (long)getpid(), tag ? tag : "t");
    if (mkdtemp(tmpl) == NULL) {
        hx_set_error("mkdtemp %s: %s", tmpl, strerror(errno));
        free(tmpl);
        return SL_ERR_IO;
    }
    *out = tmpl;
    return SL_OK;
}

static int hx__rm_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)ftw;
    int rc = (flag == FTW_DP) ? rmdir(path) : unlink(path);
    if (rc != 0 && errno != ENOENT)
        hx_set_error("remove %s: %s", path, strerror(errno));
    /* Go on removing the rest; the caller checks the top directory. */
    return 0;
}

sl_status hx_rm_rf(const char *path)
{
    if (path == NULL || strncmp(path, "/tmp/", 5) != 0 || strstr(path, "/../") != NULL ||
        strlen(path) < 6) {
        hx_set_error("hx_rm_rf refuses path %s", path ? path : "(null)");
        return SL_ERR_INVAL;
    }
    struct stat st;
    if (lstat(path, &st) != 0)
        return errno == ENOENT ? SL_OK : SL_ERR_IO;
    nftw(path, hx__rm_one, 32, FTW_DEPTH | FTW_PHYS | FTW_MOUNT);
    if (lstat(path, &st) == 0) {
        hx_set_error("could not remove %s", path);
        return SL_ERR_IO;
    }
    return SL_OK;
}

sl_status hx_file_write(const char *path, const char *text)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) {
        hx_set_error("open %s: %s", path, strerror(errno));
        return SL_ERR_IO;
    }
    size_t len = strlen(text), off = 0;
    while (off < len) {
        ssize_t n = write(fd, text + off, len - off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            hx_set_error("write %s: %s", path, strerror(errno));
            close(fd);
            return SL_ERR_IO;
        }
        off += (size_t)n;
    }
    close(fd);
    return SL_OK;
}

char *hx_file_tail(const char *path, size_t max_bytes)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return NULL;
    char *buf = NULL;
    struct stat st;
    if (fstat(fd, &st) != 0)
        goto cleanup;
    off_t start = 0;
    if ((size_t)st.st_size > max_bytes)
        start = st.st_size - (off_t)max_bytes;
    size_t want = (size_t)(st.st_size - start);
    buf = malloc(want + 1);
    if (buf == NULL)
        goto cleanup;
    size_t got = 0;
    while (got < want) {
        ssize_t n = pread(fd, buf + got, want - got, start + (off_t)got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        got += (size_t)n;
    }
    buf[got] = '\0';
    if (start > 0) {
        char *nl = memchr(buf, '\n', got);
        if (nl != NULL)
            memmove(buf, nl + 1, got - (size_t)(nl + 1 - buf) + 1);
    }
cleanup:
    close(fd);
    return buf;
}

bool hx_file_contains(const char *path, const char *needle)
{
    char *text = hx_file_tail(path, (size_t)64 << 20);
    bool found = text != NULL && strstr(text, needle) != NULL;
    free(text);
    return found;
}

void hx_print_tail(FILE *f, const char *title, const char *path, size_t max_bytes)
{
    char *tail = hx_file_tail(path, max_bytes);
    fprintf(f, "---- %s: last lines of %s ----\n%s%s---- end of %s ----\n", title, path,
            tail ? tail : "(unreadable)\n",
            (tail && *tail && tail[strlen(tail) - 1] != '\n') ? "\n" : "", title);
    fflush(f);
    free(tail);
}
