/* The Sluice integration-test harness: include this one header.
 *
 *   hx_util   time, hx_wait_until, hx_error(), temp dirs, log tails
 *   hx_proc   child processes (own process group, log file, no orphans)
 *   hx_port   free ports, TCP connect, hx_wait_tcp
 *   hx_http   a minimal HTTP/1.1 GET/POST client
 *   hx_nats   nats-server with JetStream (one node or a cluster)
 *   hx_stack  nats-server + gateways + orchestrators + workers
 *   hx_ws     a blocking RFC 6455 client with a JSON level and a backlog
 *   hx_sluice tokens, hello/welcome, resume, position tracking
 *
 * Assertion helpers for Check tests: on failure they print hx_error() and,
 * given a stack, the tail of every log, so a red test explains itself. */
#ifndef HX_H
#define HX_H

#include <check.h>

#include "hx_http.h"
#include "hx_nats.h"
#include "hx_port.h"
#include "hx_proc.h"
#include "hx_sluice.h"
#include "hx_stack.h"
#include "hx_util.h"
#include "hx_ws.h"

/* Fails the test unless expr (an sl_status) is SL_OK; prints the stack's
 * logs first when stack is not NULL. */
#define HX_OK(stack, expr)                                                                         \
    do {                                                                                           \
        sl_status hx_ok_st_ = (expr);                                                              \
        if (hx_ok_st_ != SL_OK) {                                                                  \
            char hx_ok_why_[2048];                                                                 \
            snprintf(hx_ok_why_, sizeof hx_ok_why_, "%s", hx_error());                             \
            hx_stack_dump_logs((stack), stderr, 3000);                                             \
            ck_abort_msg("%s returned %s: %s", #expr, sl_status_str(hx_ok_st_), hx_ok_why_);       \
        }                                                                                          \
    } while (0)

/* Fails the test unless cond holds; prints the stack's logs (stack may be
 * NULL) and hx_error() first. */
#define HX_ASSERT(stack, cond)                                                                     \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            char hx_as_why_[2048];                                                                 \
            snprintf(hx_as_why_, sizeof hx_as_why_, "%s", hx_error());                             \
            hx_stack_dump_logs((stack), stderr, 3000);                                             \
            ck_abort_msg("assertion %s failed (last harness error: %s)", #cond, hx_as_why_);       \
        }                                                                                          \
    } while (0)

/* Like HX_ASSERT with a printf-style message. */
#define HX_ASSERT_MSG(stack, cond, ...)                                                            \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            hx_stack_dump_logs((stack), stderr, 3000);                                             \
            ck_abort_msg(__VA_ARGS__);                                                             \
        }                                                                                          \
    } while (0)

#endif
