/* Integration-test harness: child processes.
 *
 * A child runs in its own process group with stdin on /dev/null and stdout
 * and stderr appended to a log file, inherits no file descriptor but 0-2,
 * and gets SIGKILL when the thread that spawned it dies (PR_SET_PDEATHSIG),
 * so a crashed or killed test leaves no orphan. Spawn from the test's main
 * thread (or a thread that outlives the child). When the test process exits
 * normally (Check's fork mode exits the test child on a failed assertion),
 * an atexit handler SIGKILLs and reaps every child still registered.
 *
 * A hx_proc is used by one thread at a time. */
#ifndef HX_PROC_H
#define HX_PROC_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include "sl_status.h"

typedef struct hx_proc hx_proc;

/* Starts argv[0] (a path, or a name searched in PATH) with argv (NULL-
 * terminated). env (NULL-terminated, may be NULL) adjusts the inherited
 * environment: "K=V" sets K, "K" alone removes K. log_path receives stdout
 * and stderr (appended, created 0600); NULL sends them to /dev/null. name
 * labels the process in messages (NULL: argv[0]). Everything is copied.
 * On success *out owns the running child; SL_ERR_IO when the program cannot
 * be executed (hx_error() says why). */
sl_status hx_proc_spawn(hx_proc **out, const char *name, const char *const *argv,
                        const char *const *env, const char *log_path);

/* Starts the same program again with the same argv, env and log (a line
 * "=== hx: restart N ===" is appended to the log first). The previous child
 * must have exited and been reaped (SL_ERR_EXISTS otherwise: stop it first).
 * SL_ERR_IO when it cannot be executed. */
sl_status hx_proc_respawn(hx_proc *p);

/* Sends sig to the child (not its group). Returns 0, or -1 with errno
 * ESRCH when the child has already exited and been reaped. */
int hx_proc_kill(hx_proc *p, int sig);

/* Waits up to timeout_ms for the child to exit and reaps it. On SL_OK the
 * waitpid status is in *status (may be NULL); a child reaped earlier returns
 * its recorded status at once. SL_ERR_TIMEOUT when it is still running. */
sl_status hx_proc_wait(hx_proc *p, int timeout_ms, int *status);

/* Sends sig, waits up to timeout_ms, then SIGKILLs the whole group and reaps.
 * Returns SL_OK when the child exited within the timeout (or had exited
 * before), SL_ERR_TIMEOUT when it needed SIGKILL. *status (may be NULL)
 * gets the final waitpid status either way. */
sl_status hx_proc_stop(hx_proc *p, int sig, int timeout_ms, int *status);

/* True while the child runs (a child that exited is reaped here and its
 * status recorded). */
bool hx_proc_alive(hx_proc *p);

/* True when the child has exited and been reaped; *status (may be NULL)
 * gets its waitpid status. */
bool hx_proc_exited(const hx_proc *p, int *status);

/* The pid of the current (or last) child. */
pid_t hx_proc_pid(const hx_proc *p);

/* How many times the program was started (1 after spawn). */
int hx_proc_starts(const hx_proc *p);

/* The log path given at spawn ("" for /dev/null) and the name. Owned by p. */
const char *hx_proc_log_path(const hx_proc *p);
const char *hx_proc_name(const hx_proc *p);

/* Describes a waitpid status in buf ("exit 0", "signal 9 (Killed)") and
 * returns buf. */
const char *hx_proc_status_str(int status, char *buf, size_t len);

/* SIGKILLs the child's group if it still runs, reaps it and frees p.
 * NULL-safe. */
void hx_proc_destroy(hx_proc *p);

#endif
