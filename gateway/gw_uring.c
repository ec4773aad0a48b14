/* A minimal io_uring for batches of socket sends (gw_uring.h). */
#include "gw_uring.h"

#include <errno.h>
#include <linux/io_uring.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

/* Tries of io_uring_enter on a transient error (EINTR, EAGAIN, EBUSY)
 * before the ring is given up. */
#define ENTER_TRIES 16

struct gw_uring {
    int fd;
    unsigned entries;
    bool broken;
    int err; /* errno of the failure that broke the ring */
    /* Submission ring: the kernel's head, our tail, the index array. */
    unsigned *sq_head, *sq_tail, *sq_mask, *sq_array;
    struct io_uring_sqe *sqes;
    /* Completion ring: our head, the kernel's tail. */
    unsigned *cq_head, *cq_tail, *cq_mask;
    struct io_uring_cqe *cqes;
    void *sq_map, *cq_map;
    size_t sq_map_len, cq_map_len, sqes_len;
    /* The batch being filled: tags and, once reaped, results. */
    unsigned queued;
    uint64_t *tags;
    int *results;
    bool *reaped;
};

static int sys_setup(unsigned entries, struct io_uring_params *p)
{
    return (int)syscall(__NR_io_uring_setup, entries, p);
}

static int sys_enter(int fd, unsigned submit, unsigned min_complete, unsigned flags)
{
    return (int)syscall(__NR_io_uring_enter, fd, submit, min_complete, flags, NULL, 0);
}

static int sys_register(int fd, unsigned op, void *arg, unsigned n)
{
    return (int)syscall(__NR_io_uring_register, fd, op, arg, n);
}

/* Whether the kernel knows IORING_OP_SENDMSG (a ring set up by a kernel
 * without it would fail every send with -EINVAL). */
static bool probe_sendmsg(int fd)
{
    size_t len = sizeof(struct io_uring_probe) + 256 * sizeof(struct io_uring_probe_op);
    struct io_uring_probe *pr = calloc(1, len);
    bool ok = false;

    if (pr == NULL)
        return false;
    if (sys_register(fd, IORING_REGISTER_PROBE, pr, 256) == 0)
        ok = pr->last_op >= IORING_OP_SENDMSG &&
             (pr->ops[IORING_OP_SENDMSG].flags & IO_URING_OP_SUPPORTED) != 0;
    free(pr);
    return ok;
}

static void unmap(gw_uring *u)
{
    if (u->sqes != NULL && u->sqes != MAP_FAILED)
        munmap(u->sqes, u->sqes_len);
    if (u->cq_map != NULL && u->cq_map != MAP_FAILED && u->cq_map != u->sq_map)
        munmap(u->cq_map, u->cq_map_len);
    if (u->sq_map != NULL && u->sq_map != MAP_FAILED)
        munmap(u->sq_map, u->sq_map_len);
}

gw_uring *gw_uring_new(unsigned entries)
{
    struct io_uring_params p;
    gw_uring *u;
    int err;

    if (entries == 0) {
        errno = EINVAL;
        return NULL;
    }
    u = calloc(1, sizeof(*u));
    if (u == NULL)
        return NULL;
    u->tags = calloc(entries, sizeof(*u->tags));
    u->results = calloc(entries, sizeof(*u->results));
    u->reaped = calloc(entries, sizeof(*u->reaped));
    if (u->tags == NULL || u->results == NULL || u->reaped == NULL) {
        err = ENOMEM;
        goto fail;
    }
    memset(&p, 0, sizeof(p));
    u->fd = sys_setup(entries, &p);
    if (u->fd < 0) {
        err = errno;
        goto fail;
    }
    if (!probe_sendmsg(u->fd)) {
        err = EOPNOTSUPP;
        goto fail_fd;
    }
    u->entries = p.sq_entries;
    if (u->entries > entries)
        u->entries = entries;
    u->sq_map_len = p.sq_off.array + p.sq_entries * sizeof(unsigned);
    u->cq_map_len = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
    if ((p.features & IORING_FEAT_SINGLE_MMAP) && u->cq_map_len > u->sq_map_len)
        u->sq_map_len = u->cq_map_len;
    u->sq_map = mmap(NULL, u->sq_map_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, u->fd,
                     IORING_OFF_SQ_RING);
    if (u->sq_map == MAP_FAILED) {
        err = errno;
        goto fail_fd;
    }
    if (p.features & IORING_FEAT_SINGLE_MMAP) {
        u->cq_map = u->sq_map;
    } else {
        u->cq_map = mmap(NULL, u->cq_map_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE,
                         u->fd, IORING_OFF_CQ_RING);
        if (u->cq_map == MAP_FAILED) {
            err = errno;
            goto fail_fd;
        }
    }
    u->sqes_len = p.sq_entries * sizeof(struct io_uring_sqe);
    u->sqes = mmap(NULL, u->sqes_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, u->fd,
                   IORING_OFF_SQES);
    if (u->sqes == MAP_FAILED) {
        err = errno;
        goto fail_fd;
    }
    u->sq_head = (unsigned *)((char *)u->sq_map + p.sq_off.head);
    u->sq_tail = (unsigned *)((char *)u->sq_map + p.sq_off.tail);
    u->sq_mask = (unsigned *)((char *)u->sq_map + p.sq_off.ring_mask);
    u->sq_array = (unsigned *)((char *)u->sq_map + p.sq_off.array);
    u->cq_head = (unsigned *)((char *)u->cq_map + p.cq_off.head);
    u->cq_tail = (unsigned *)((char *)u->cq_map + p.cq_off.tail);
    u->cq_mask = (unsigned *)((char *)u->cq_map + p.cq_off.ring_mask);
    u->cqes = (struct io_uring_cqe *)((char *)u->cq_map + p.cq_off.cqes);
    return u;

fail_fd:
    unmap(u);
    close(u->fd);
fail:
    free(u->tags);
    free(u->results);
    free(u->reaped);
    free(u);
    errno = err;
    return NULL;
}

void gw_uring_free(gw_uring *u)
{
    if (u == NULL)
        return;
    unmap(u);
    close(u->fd);
    free(u->tags);
    free(u->results);
    free(u->reaped);
    free(u);
}

bool gw_uring_ok(const gw_uring *u)
{
    return !u->broken;
}

int gw_uring_error(const gw_uring *u)
{
    return u->err;
}

bool gw_uring_sendmsg(gw_uring *u, int fd, const struct msghdr *msg, unsigned flags, uint64_t tag)
{
    unsigned tail, idx;
    struct io_uring_sqe *sqe;

    if (u->broken || u->queued >= u->entries)
        return false;
    /* Only this thread moves the tail; the kernel reads it (acquire) after
     * the entry is written. */
    tail = *u->sq_tail;
    idx = tail & *u->sq_mask;
    sqe = &u->sqes[idx];
    memset(sqe, 0, sizeof(*sqe));
    sqe->opcode = IORING_OP_SENDMSG;
    sqe->fd = fd;
    sqe->addr = (uint64_t)(uintptr_t)msg;
    sqe->len = 1;
    sqe->msg_flags = flags | MSG_DONTWAIT | MSG_NOSIGNAL;
    sqe->user_data = u->queued;
    u->sq_array[idx] = idx;
    u->tags[u->queued] = tag;
    u->reaped[u->queued] = false;
    u->queued++;
    __atomic_store_n(u->sq_tail, tail + 1, __ATOMIC_RELEASE);
    return true;
}

/* Moves every completion waiting in the ring into results. Returns how
 * many there were. */
static unsigned reap(gw_uring *u)
{
    unsigned head = *u->cq_head, tail = __atomic_load_n(u->cq_tail, __ATOMIC_ACQUIRE), n = 0;

    for (; head != tail; head++) {
        const struct io_uring_cqe *cqe = &u->cqes[head & *u->cq_mask];
        uint64_t i = cqe->user_data;
        if (i < u->queued && !u->reaped[i]) {
            u->results[i] = cqe->res;
            u->reaped[i] = true;
            n++;
        }
    }
    __atomic_store_n(u->cq_head, head, __ATOMIC_RELEASE);
    return n;
}

unsigned gw_uring_submit(gw_uring *u, void (*done)(uint64_t tag, int result, void *arg), void *arg)
{
    unsigned want = u->queued, submitted = 0, completed = 0, tries = 0;

    /* Submit all: the kernel consumes entries in order, so the first
     * `submitted` of the batch are in. */
    while (submitted < want && !u->broken) {
        int r = sys_enter(u->fd, want - submitted, 0, 0);
        if (r > 0) {
            submitted += (unsigned)r;
            continue;
        }
        if ((r == 0 || errno == EINTR || errno == EAGAIN || errno == EBUSY) &&
            ++tries < ENTER_TRIES) {
            completed += reap(u);
            continue;
        }
        u->err = r == 0 ? EAGAIN : errno;
        u->broken = true;
    }
    /* A send with MSG_DONTWAIT completes during the submission; wait all
     * the same for any that did not (min_complete counts what the ring
     * holds, and it held nothing before this batch: every batch is
     * reaped whole). */
    completed += reap(u);
    tries = 0;
    while (completed < submitted && !u->broken) {
        int r = sys_enter(u->fd, 0, submitted - completed, IORING_ENTER_GETEVENTS);
        if (r < 0 && errno != EINTR && errno != EAGAIN && errno != EBUSY) {
            u->err = errno;
            u->broken = true;
            break;
        }
        completed += reap(u);
        if (r < 0 && ++tries >= ENTER_TRIES) {
            u->err = errno;
            u->broken = true;
        }
    }
    for (unsigned i = 0; i < want; i++) {
        int res = u->reaped[i] ? u->results[i] : i < submitted ? -EIO : -ECANCELED;
        done(u->tags[i], res, arg);
    }
    u->queued = 0;
    return want;
}
