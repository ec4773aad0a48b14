/* A minimal io_uring for one thing: a batch of socket sends in one system
 * call. The gateway's fan-out writes one frame (or a few) to each of
 * hundreds of sockets per event; with send() that is one system call per
 * member, and on a virtual machine the entry and exit of each call cost
 * about as much as the TCP work. Here a slice of sends is queued, submitted
 * with one io_uring_enter and reaped at once: a send with MSG_DONTWAIT on
 * a socket completes during the submission (it never waits for room and is
 * never handed to a kernel worker), so the completions are there when the
 * call returns.
 *
 * Raw system calls (linux/io_uring.h), no liburing: the ring is set up,
 * mapped, filled and reaped here, in the order the kernel's documentation
 * gives (io_uring_setup(2), io_uring_enter(2)). Kernels from 5.6 have
 * everything used (IORING_OP_SENDMSG, IORING_REGISTER_PROBE); where the
 * kernel or a seccomp profile (Docker's default refuses io_uring) says no,
 * gw_uring_init fails and the caller keeps using send().
 *
 * One thread owns a ring (the gateway's loop thread). */
#ifndef GW_URING_H
#define GW_URING_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

typedef struct gw_uring gw_uring;

/* Makes a ring for up to entries sends per batch. NULL when the kernel does
 * not offer io_uring with IORING_OP_SENDMSG (the reason is in errno), or
 * when out of memory. */
gw_uring *gw_uring_new(unsigned entries);

/* Closes the ring; NULL-safe. Nothing may be queued (gw_uring_submit
 * reaps every send it submits). */
void gw_uring_free(gw_uring *u);

/* Queues sendmsg(fd, msg, flags | MSG_DONTWAIT | MSG_NOSIGNAL) with tag,
 * which comes back with its result. msg and what it points to must stay
 * unchanged until gw_uring_submit returns. False when the batch is full
 * (entries sends queued). */
bool gw_uring_sendmsg(gw_uring *u, int fd, const struct msghdr *msg, unsigned flags, uint64_t tag);

/* Submits the queued sends and waits for their results; then done(tag,
 * result, arg) is called once per queued send, in the order they were
 * queued, with the bytes sent (>= 0, possibly fewer than asked) or
 * -errno (-EAGAIN: the socket took nothing). When the ring itself failed
 * (a hard error from io_uring_enter), sends that were never submitted get
 * -ECANCELED and sends whose outcome is unknown -EIO, and the ring is then
 * broken: gw_uring_ok turns false and nothing more may be queued. Returns
 * the number of sends reported. */
unsigned gw_uring_submit(gw_uring *u, void (*done)(uint64_t tag, int result, void *arg), void *arg);

/* False once the ring failed (see gw_uring_submit). */
bool gw_uring_ok(const gw_uring *u);

/* The errno of the failure that broke the ring (0 while it is ok). */
int gw_uring_error(const gw_uring *u);

#endif
