#include "hx_port.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "hx_util.h"

#define HX_RECENT_PORTS 256

static pthread_mutex_t hx__port_mu = PTHREAD_MUTEX_INITIALIZER;
static int hx__recent[HX_RECENT_PORTS];
static int hx__recent_next;

static bool hx__port_recent(int port)
{
    for (int i = 0; i < HX_RECENT_PORTS; i++) {
        if (hx__recent[i] == port)
            return true;
    }
    return false;
}

/* The kernel's ephemeral range, from which client sockets take their
 * source ports; listening ports are picked below it so that thousands of
 * test connections can never occupy a port a process is about to bind. */
static void hx__ephemeral_range(int *lo, int *hi)
{
    *lo = 32768;
    *hi = 60999;
    FILE *f = fopen("/proc/sys/net/ipv4/ip_local_port_range", "re");
    if (f != NULL) {
        if (fscanf(f, "%d %d", lo, hi) != 2) {
            *lo = 32768;
            *hi = 60999;
        }
        fclose(f);
    }
}

/* Binds 127.0.0.1:port (0: any) without SO_REUSEADDR, so a port with
 * connections in TIME_WAIT counts as taken. Returns the bound port or -1. */
static int hx__try_bind(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t al = sizeof a;
    int got = -1;
    if (bind(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
        getsockname(fd, (struct sockaddr *)&a, &al) == 0)
        got = ntohs(a.sin_port);
    close(fd);
    return got;
}

int hx_port_free(void)
{
    static unsigned int seed;
    int port = -1, lo = 0, hi = 0;
    hx__ephemeral_range(&lo, &hi);
    pthread_mutex_lock(&hx__port_mu);
    if (seed == 0)
        seed = (unsigned int)getpid() * 2654435761u ^ (unsigned int)hx_now_ms();
    /* Random ports in [10000, lo) when that range is wide enough. */
    for (int attempt = 0; attempt < 200 && port < 0 && lo - 10000 >= 1000; attempt++) {
        int cand = 10000 + (int)(rand_r(&seed) % (unsigned int)(lo - 10000));
        if (!hx__port_recent(cand) && hx__try_bind(cand) == cand)
            port = cand;
    }
    /* Otherwise let the kernel choose. */
    for (int attempt = 0; attempt < 64 && port < 0; attempt++) {
        int cand = hx__try_bind(0);
        if (cand > 0 && !hx__port_recent(cand))
            port = cand;
    }
    if (port > 0) {
        hx__recent[hx__recent_next] = port;
        hx__recent_next = (hx__recent_next + 1) % HX_RECENT_PORTS;
    }
    pthread_mutex_unlock(&hx__port_mu);
    if (port < 0)
        hx_set_error("no free port found: %s", strerror(errno));
    return port;
}

int hx_tcp_connect_ex(const char *host, int port, const char *src_addr, int rcvbuf, int timeout_ms)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, host ? host : "127.0.0.1", &a.sin_addr) != 1) {
        hx_set_error("bad IPv4 address %s", host);
        return -1;
    }
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) {
        hx_set_error("socket: %s", strerror(errno));
        return -1;
    }
    if (rcvbuf > 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
    if (src_addr != NULL) {
        struct sockaddr_in s = {.sin_family = AF_INET, .sin_port = 0};
        if (inet_pton(AF_INET, src_addr, &s.sin_addr) != 1 ||
            bind(fd, (struct sockaddr *)&s, sizeof s) != 0) {
            hx_set_error("bind source %s: %s", src_addr, strerror(errno));
            close(fd);
            return -1;
        }
    }
    int rc = connect(fd, (struct sockaddr *)&a, sizeof a);
    if (rc != 0 && errno == EINPROGRESS) {
        struct pollfd pfd = {.fd = fd, .events = POLLOUT};
        int64_t deadline = hx_now_ms() + (timeout_ms > 0 ? timeout_ms : 0);
        for (int i = 0; i < 100000; i++) {
            int left = (int)(deadline - hx_now_ms());
            rc = poll(&pfd, 1, left > 0 ? left : 0);
            if (rc < 0 && errno == EINTR)
                continue;
            break;
        }
        if (rc == 0) {
            hx_set_error("connect 127.0.0.1:%d: timed out after %d ms", port, timeout_ms);
            close(fd);
            return -1;
        }
        int err = 0;
        socklen_t el = sizeof err;
        getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el);
        if (rc < 0 || err != 0) {
            errno = err ? err : errno;
            rc = -1;
        } else {
            rc = 0;
        }
    }
    if (rc != 0) {
        hx_set_error("connect %s:%d: %s", host ? host : "127.0.0.1", port, strerror(errno));
        close(fd);
        return -1;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

int hx_tcp_connect(const char *host, int port, int timeout_ms)
{
    return hx_tcp_connect_ex(host, port, NULL, 0, timeout_ms);
}

bool hx_wait_tcp(int port, int timeout_ms)
{
    int64_t deadline = hx_now_ms() + (timeout_ms > 0 ? timeout_ms : 0);
    int nap = 10;
    for (int i = 0; i < 100000; i++) {
        int64_t left = deadline - hx_now_ms();
        int fd = hx_tcp_connect(NULL, port, left > 0 ? (int)(left < 1000 ? left : 1000) : 1);
        if (fd >= 0) {
            close(fd);
            return true;
        }
        left = deadline - hx_now_ms();
        if (left <= 0)
            break;
        hx_sleep_ms(nap < left ? nap : (int)left);
        if (nap < 50)
            nap += 10;
    }
    hx_set_error("nothing accepts connections on 127.0.0.1:%d after %d ms", port, timeout_ms);
    return false;
}
