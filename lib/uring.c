/* SPDX-License-Identifier: MIT */
/*
 * The io_uring completion backend (Linux 5.19+ for everything used here,
 * through liburing).
 *
 * Quirks this file deals with:
 * - io_uring can be compiled out (ENOSYS) or switched off by the
 *   administrator: sysctl kernel.io_uring_disabled=2 fails io_uring_setup
 *   with EPERM for everyone, =1 for processes outside io_uring_group. init
 *   returns that error as it is: the caller asked for a proactor and must
 *   learn why there is none, rather than get a selector loop silently.
 * - The rings are shared memory. A fork child must neither submit (it
 *   would queue requests into the parent's ring) nor reap (it would steal
 *   the parent's completions), so the mappings are made MADV_DONTFORK
 *   (io_uring_ring_dontfork) and an inherited ring is released by closing
 *   our copy of its descriptor only: the parent's requests go on.
 * - A full submission queue (more requests in one iteration than it has
 *   entries) is submitted on the spot and the request queued again; a
 *   full completion queue loses nothing (IORING_FEAT_NODROP, required:
 *   init fails with ENOSYS without it) but ends multishot requests, which
 *   the proactor loop arms again in its next batch; the completion ring is
 *   sized well above the submission ring to make that rare, and one wait
 *   reaps a bounded number of completions, so it always returns.
 * - Completions are consumed one by one, before the proactor loop sees
 *   each one, so that its handler may queue requests or wait again (a
 *   cancelled recv_into reaps its own completion, see proactor_loop.c).
 * - COOP_TASKRUN (5.19): the kernel finishes a request (a receive whose
 *   data came) in task work that runs when the loop's thread next enters
 *   the kernel, instead of interrupting it at once as a signal would.
 *   Without it, on a busy server every recv() and send() the loop makes
 *   was interrupted on its way out to run such work, which then contended
 *   for the socket's lock with the network stack: 20-30 % more CPU per
 *   request than with it. TASKRUN_FLAG says when such work waits, so that
 *   a wait with timeout 0, which otherwise makes no system call, enters
 *   the kernel to run it. A thread blocked in poll(2) on loop_fileno() is
 *   woken by the work's notification, runs it, and sees the completion.
 *   (Not DEFER_TASKRUN: it needs SINGLE_ISSUER, which ties the ring to one
 *   thread, while a loop may be made in one thread and run in another.)
 * - Without IORING_FEAT_EXT_ARG (before 5.11) liburing implements the
 *   timeout with an internal timeout request whose completion carries
 *   LIBURING_UDATA_TIMEOUT; it is skipped here.
 */
#include <errno.h>
#include <liburing.h>
#include <poll.h>
#include <stdlib.h>
#include <unistd.h>

#include "internal.h"
#include "proactor.h"

#define URING_ENTRIES 256
/* Completions have more room than requests: a batch of probes for every
 * ready descriptor, plus the multishot polls' own completions, can exceed
 * the submission ring many times over. An overflow loses nothing
 * (IORING_FEAT_NODROP, required) but ends multishot polls and costs a
 * system call to flush; 4096 entries are 64 KiB per loop. */
#define URING_CQ_ENTRIES 4096
/* Completions handled per wait at most: whatever happens, the iteration
 * ends and runs its callbacks; the rest stays for the next wait. */
#define URING_REAP_MAX (2 * URING_CQ_ENTRIES)

#ifndef MSG_NOSIGNAL
#define MSG_NOSIGNAL 0
#endif

/*
 * ThreadSanitizer does not see liburing map and unmap the rings (raw
 * system calls), so when a loop's ring is unmapped and another thread's new
 * ring gets the same address, it takes the two loops' writes for a race.
 * The kernel orders the unmap before the map; this tells TSan so.
 */
#if defined(__SANITIZE_THREAD__)
#define URING_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define URING_TSAN 1
#endif
#endif
#ifdef URING_TSAN
static unsigned long rings_unmapped;
#define RING_WILL_UNMAP() __atomic_fetch_add(&rings_unmapped, 1, __ATOMIC_RELEASE)
#define RING_MAPPED() ((void) __atomic_load_n(&rings_unmapped, __ATOMIC_ACQUIRE))
#else
#define RING_WILL_UNMAP() ((void) 0)
#define RING_MAPPED() ((void) 0)
#endif

struct uring {
        struct io_uring ring;
        uint8_t quiet;          /* IOSQE_CQE_SKIP_SUCCESS where the kernel has it */
};

static int uring_init(void **ret) {
        struct uring *u = calloc(1, sizeof(*u));
        int r;

        if (!u)
                return -ENOMEM;
        struct io_uring_params p = {
                .flags = IORING_SETUP_CQSIZE | IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG,
                .cq_entries = URING_CQ_ENTRIES,
        };
        r = io_uring_queue_init_params(URING_ENTRIES, &u->ring, &p);
        if (r == -EINVAL) {
                /* Before Linux 5.19: no COOP_TASKRUN, no TASKRUN_FLAG. */
                p = (struct io_uring_params) { .flags = IORING_SETUP_CQSIZE, .cq_entries = URING_CQ_ENTRIES };
                r = io_uring_queue_init_params(URING_ENTRIES, &u->ring, &p);
        }
        if (r == -EINVAL)
                /* A kernel that limits the completion ring lower. */
                r = io_uring_queue_init(URING_ENTRIES, &u->ring, 0);
        if (r < 0) {
                free(u);
                return r;
        }
        RING_MAPPED();
        if (!(u->ring.features & IORING_FEAT_NODROP)) {
                /* Before Linux 5.5 an overflowed completion is lost, and
                 * with it a future that never completes. */
                io_uring_queue_exit(&u->ring);
                free(u);
                return -ENOSYS;
        }
        /* Removals and cancellations need no completion when they work
         * (Linux 5.17): fewer completions to reap, and a ring that does not
         * turn readable (loop_fileno) for nothing. */
        if (u->ring.features & IORING_FEAT_CQE_SKIP)
                u->quiet = IOSQE_CQE_SKIP_SUCCESS;
        /* Failing leaves the rings in a fork child, which never touches
         * them (see above): not worth refusing a loop for. */
        (void) io_uring_ring_dontfork(&u->ring);
        *ret = u;
        return 0;
}

static void uring_free(void *state, bool inherited) {
        struct uring *u = state;

        if (!u)
                return;
        if (inherited)
                /* The mappings are not in this process (dontfork); the
                 * descriptor is ours to close. */
                close(u->ring.ring_fd);
        else {
                RING_WILL_UNMAP();
                io_uring_queue_exit(&u->ring);
        }
        free(u);
}

/* A free submission entry: when the queue is full, what it holds goes to
 * the kernel now (the only submission outside wait and flush). */
static struct io_uring_sqe *get_sqe(struct uring *u) {
        struct io_uring_sqe *sqe = io_uring_get_sqe(&u->ring);

        while (!sqe) {
                int r = io_uring_submit(&u->ring);
                if (r < 0 && r != -EINTR && r != -EAGAIN && r != -EBUSY)
                        return NULL;
                sqe = io_uring_get_sqe(&u->ring);
        }
        return sqe;
}

static int uring_poll_add(void *state, int fd, uint32_t events, bool multishot, uint64_t user_data) {
        struct io_uring_sqe *sqe = get_sqe(state);

        if (!sqe)
                return -EAGAIN;
        if (multishot)
                io_uring_prep_poll_multishot(sqe, fd, events);
        else
                io_uring_prep_poll_add(sqe, fd, events);
        io_uring_sqe_set_data64(sqe, user_data);
        return 0;
}

static int uring_poll_remove(void *state, uint64_t target) {
        struct io_uring_sqe *sqe = get_sqe(state);

        if (!sqe)
                return -EAGAIN;
        io_uring_prep_poll_remove(sqe, target);
        io_uring_sqe_set_data64(sqe, 0);
        io_uring_sqe_set_flags(sqe, ((struct uring *) state)->quiet);
        return 0;
}

static int uring_recv(void *state, int fd, void *buf, size_t len, uint64_t user_data) {
        struct io_uring_sqe *sqe = get_sqe(state);

        if (!sqe)
                return -EAGAIN;
        io_uring_prep_recv(sqe, fd, buf, len, 0);
        io_uring_sqe_set_data64(sqe, user_data);
        return 0;
}

static int uring_send(void *state, int fd, const void *buf, size_t len, uint64_t user_data) {
        struct io_uring_sqe *sqe = get_sqe(state);

        if (!sqe)
                return -EAGAIN;
        io_uring_prep_send(sqe, fd, buf, len, MSG_NOSIGNAL);
        io_uring_sqe_set_data64(sqe, user_data);
        return 0;
}

static int uring_recvmsg(void *state, int fd, struct msghdr *msg, uint64_t user_data) {
        struct io_uring_sqe *sqe = get_sqe(state);

        if (!sqe)
                return -EAGAIN;
        io_uring_prep_recvmsg(sqe, fd, msg, 0);
        io_uring_sqe_set_data64(sqe, user_data);
        return 0;
}

static int uring_sendmsg(void *state, int fd, const struct msghdr *msg, uint64_t user_data) {
        struct io_uring_sqe *sqe = get_sqe(state);

        if (!sqe)
                return -EAGAIN;
        io_uring_prep_sendmsg(sqe, fd, msg, MSG_NOSIGNAL);
        io_uring_sqe_set_data64(sqe, user_data);
        return 0;
}

static int uring_accept(void *state, int fd, struct sockaddr *addr, socklen_t *addrlen, uint64_t user_data) {
        struct io_uring_sqe *sqe = get_sqe(state);

        if (!sqe)
                return -EAGAIN;
        io_uring_prep_accept(sqe, fd, addr, addrlen, SOCK_NONBLOCK | SOCK_CLOEXEC);
        io_uring_sqe_set_data64(sqe, user_data);
        return 0;
}

static int uring_connect(void *state, int fd, const struct sockaddr *addr, socklen_t addrlen, uint64_t user_data) {
        struct io_uring_sqe *sqe = get_sqe(state);

        if (!sqe)
                return -EAGAIN;
        io_uring_prep_connect(sqe, fd, addr, addrlen);
        io_uring_sqe_set_data64(sqe, user_data);
        return 0;
}

static int uring_cancel(void *state, uint64_t target) {
        struct io_uring_sqe *sqe = get_sqe(state);

        if (!sqe)
                return -EAGAIN;
        io_uring_prep_cancel64(sqe, target, 0);
        io_uring_sqe_set_data64(sqe, 0);
        io_uring_sqe_set_flags(sqe, ((struct uring *) state)->quiet);
        return 0;
}

static bool uring_withdraw(void *state, uint64_t target) {
        struct uring *u = state;
        struct io_uring_sq *sq = &u->ring.sq;

        /* Between sqe_head and sqe_tail: queued by us, not yet flushed
         * to the kernel's ring. A short scan: cancelling is rare. */
        for (unsigned i = sq->sqe_head; i != sq->sqe_tail; i++) {
                struct io_uring_sqe *sqe = &sq->sqes[i & sq->ring_mask];
                if (sqe->user_data != target)
                        continue;
                io_uring_prep_nop(sqe);
                io_uring_sqe_set_data64(sqe, target);
                return true;
        }
        return false;
}

static bool benign(int r) {
        /* Interrupted, timed out, nothing to wait for, or completions that
         * must be reaped before more can be posted: none stops the loop. */
        return r >= 0 || r == -EINTR || r == -ETIME || r == -EAGAIN || r == -EBUSY;
}

static int uring_wait(void *state, int64_t timeout_ns, loop_proactor_complete_t complete, loop_proactor_keep_t keep,
                      void *ctx) {
        struct uring *u = state;
        struct io_uring_cqe *cqe;
        int r = 0, n = 0;

        if (timeout_ns == 0) {
                /* No system call at all when nothing is queued: the
                 * completion ring is read from shared memory. */
                if (io_uring_sq_ready(&u->ring) > 0)
                        r = io_uring_submit(&u->ring);
                else if (io_uring_cq_has_overflow(&u->ring) ||
                         (IO_URING_READ_ONCE(*u->ring.sq.kflags) & IORING_SQ_TASKRUN))
                        /* Completions waiting in the kernel: the overflow
                         * list, or task work (COOP_TASKRUN) that only a
                         * transition into the kernel runs. */
                        r = io_uring_get_events(&u->ring);
        } else if (io_uring_cq_ready(&u->ring) > 0) {
                /* Completions are already there: submit, do not wait. */
                if (io_uring_sq_ready(&u->ring) > 0)
                        r = io_uring_submit(&u->ring);
        } else if (timeout_ns < 0) {
                r = io_uring_submit_and_wait(&u->ring, 1);
        } else {
                struct __kernel_timespec ts = {
                        .tv_sec = timeout_ns / 1000000000,
                        .tv_nsec = timeout_ns % 1000000000,
                };
                r = io_uring_submit_and_wait_timeout(&u->ring, &cqe, 1, &ts, NULL);
        }
        if (!benign(r))
                return r;

        /* io_uring_peek_cqe also flushes the kernel's overflow list into
         * the ring once the ring is empty. */
        for (unsigned reaped = 0; reaped < URING_REAP_MAX && io_uring_peek_cqe(&u->ring, &cqe) == 0; reaped++) {
                uint64_t user_data = io_uring_cqe_get_data64(cqe);
                int res = cqe->res;
                uint32_t flags = cqe->flags & IORING_CQE_F_MORE ? LOOP_PROACTOR_MORE : 0;

                if (keep && user_data != 0 && user_data != LIBURING_UDATA_TIMEOUT && keep(ctx, user_data, res, flags))
                        break;
                /* Consumed first: the handler may wait again. */
                io_uring_cqe_seen(&u->ring, cqe);
                if (user_data == 0 || user_data == LIBURING_UDATA_TIMEOUT)
                        continue;
                complete(ctx, user_data, res, flags);
                n++;
        }
        return n;
}

static int uring_fileno(void *state) {
        struct uring *u = state;

        return u->ring.ring_fd;
}

const struct loop_proactor_ops loop_proactor_uring = {
        .name = "io_uring",
        .init = uring_init,
        .free = uring_free,
        .poll_add = uring_poll_add,
        .poll_remove = uring_poll_remove,
        .recv = uring_recv,
        .send = uring_send,
        .recvmsg = uring_recvmsg,
        .sendmsg = uring_sendmsg,
        .accept = uring_accept,
        .connect = uring_connect,
        .cancel = uring_cancel,
        .withdraw = uring_withdraw,
        .wait = uring_wait,
        .fileno = uring_fileno,
};
