/* Integration-test harness: TCP ports and connections on 127.0.0.1. */
#ifndef HX_PORT_H
#define HX_PORT_H

#include <stdbool.h>

/* Returns a TCP port on 127.0.0.1 that was free a moment ago (bound and
 * closed again), never one this process handed out recently; -1 on
 * failure. Ports are picked at random below the kernel's ephemeral range
 * (ip_local_port_range), so client connections never occupy them; when
 * that range is too narrow the kernel picks (bind to port 0). Another
 * process may still take the port before it is used. */
int hx_port_free(void);

/* Connects to host:port (a numeric IPv4 address; NULL means 127.0.0.1)
 * within timeout_ms. Returns a non-blocking, close-on-exec socket with
 * TCP_NODELAY, or -1 with
 * hx_error() set. The caller closes it. */
int hx_tcp_connect(const char *host, int port, int timeout_ms);

/* Like hx_tcp_connect, binding first to src_addr (NULL: any) and setting
 * SO_RCVBUF to rcvbuf bytes when rcvbuf > 0 (before connecting, so the
 * window is small from the start). */
int hx_tcp_connect_ex(const char *host, int port, const char *src_addr, int rcvbuf, int timeout_ms);

/* Waits until something accepts TCP connections on 127.0.0.1:port, trying
 * every 10-50 ms for up to timeout_ms. Returns true when it does. */
bool hx_wait_tcp(int port, int timeout_ms);

#endif
