/* Integration-test harness: time, error text, temporary directories and
 * files. Every hx_ function that fails records a sentence in a thread-local
 * buffer that hx_error() returns, so a test can say why:
 *
 *     ck_assert_msg(hx_stack_start(&s, &cfg) == SL_OK, "%s", hx_error());
 *
 * Nothing here is async-signal-safe. */
#ifndef HX_UTIL_H
#define HX_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "sl_status.h"

/* Monotonic clock in milliseconds (CLOCK_MONOTONIC). */
int64_t hx_now_ms(void);

/* Sleeps for ms milliseconds (resumes after signals); ms <= 0 returns at once. */
void hx_sleep_ms(int ms);

/* A condition polled by hx_wait_until(); returns true when met. */
typedef bool (*hx_cond_fn)(void *ud);

/* Calls fn(ud) at once and then every few milliseconds (1 ms growing to
 * 20 ms) until it returns true or timeout_ms has passed. Returns true when the
 * condition was met, false on timeout (and sets hx_error()). */
bool hx_wait_until(hx_cond_fn fn, void *ud, int timeout_ms);

/* The last error recorded by a hx_ function on this thread, or "" when none.
 * The text stays valid until the next hx_ call on this thread. */
const char *hx_error(void);

/* Records an error for hx_error() (printf-style). */
void hx_set_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Creates a fresh private directory /tmp/sluice-hx-<pid>-<tag>-XXXXXX and
 * returns its malloc'd path in *out (caller frees; remove with hx_rm_rf).
 * Directories left behind by dead test processes are swept first. Returns
 * SL_ERR_IO on failure. */
sl_status hx_tmpdir_create(const char *tag, char **out);

/* Removes path and everything below it without following symlinks. Refuses
 * (SL_ERR_INVAL) any path that does not start with "/tmp/". A missing path
 * is SL_OK. Returns SL_ERR_IO when something could not be removed. */
sl_status hx_rm_rf(const char *path);

/* Writes text to path (created or truncated, mode 0600). SL_ERR_IO on failure. */
sl_status hx_file_write(const char *path, const char *text);

/* Reads at most the last max_bytes of path into a malloc'd NUL-terminated
 * string (caller frees). When the file is longer, the text starts at a line
 * boundary. Returns NULL when the file cannot be read. */
char *hx_file_tail(const char *path, size_t max_bytes);

/* True when the file (its first 64 MiB) contains needle. */
bool hx_file_contains(const char *path, const char *needle);

/* Prints "---- title: last lines of path ----", the tail and a footer to f. */
void hx_print_tail(FILE *f, const char *title, const char *path, size_t max_bytes);

/* Returns a malloc'd formatted string (caller frees); aborts on OOM, as a
 * test cannot go on without memory. */
char *hx_strf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
