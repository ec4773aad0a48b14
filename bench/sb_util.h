/* Small helpers for the bench: clocks, JWT minting, process sampling. */
#ifndef SB_UTIL_H
#define SB_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "sl_status.h"

/* CLOCK_MONOTONIC in nanoseconds. */
uint64_t sb_now_ns(void);

/* CLOCK_REALTIME in seconds. */
int64_t sb_wall_s(void);

/* Mints an HS256 JWT {"sub":sub,"tenant":tenant,"exp":now+ttl_s} signed with
 * secret into out. Returns SL_ERR_INVAL when an argument is missing or the
 * token does not fit in cap, SL_ERR_INTERNAL when HMAC fails. */
sl_status sb_jwt_mint(char *out, size_t cap, const char *secret, const char *tenant,
                      const char *sub, long ttl_s);

/* As sb_jwt_mint, with an absolute exp (Unix seconds). */
sl_status sb_jwt_mint_at(char *out, size_t cap, const char *secret, const char *tenant,
                         const char *sub, long long exp);

/* Base64url without padding of in[0..len) into out; returns the length, or 0
 * when it does not fit in cap. */
size_t sb_b64url(char *out, size_t cap, const uint8_t *in, size_t len);

/* Reads a process's resident set (VmRSS, KiB) and CPU time (utime+stime,
 * seconds) from /proc. Returns SL_ERR_NOTFOUND when the process is gone and
 * SL_ERR_IO when /proc cannot be parsed; the outputs are set only on
 * success. */
sl_status sb_proc_sample(pid_t pid, uint64_t *rss_kib, double *cpu_s);

/* Binds a TCP socket on 127.0.0.1 port 0 and returns the port the kernel
 * chose (the socket is closed again), or -1. */
int sb_free_port(void);

#endif
