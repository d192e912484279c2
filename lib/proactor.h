/* SPDX-License-Identifier: MIT */
#pragma once

/*
 * Completion backends (io_uring; IOCP would be the other): what the
 * proactor loop (proactor_loop.c) needs from one, as one const table per
 * backend file, the way struct loop_selector_ops serves the selector loop.
 *
 * The model is a submission queue and a completion queue. Every submit
 * primitive only queues a request tagged with the caller's user_data
 * (never 0, never UINT64_MAX); nothing reaches the kernel before wait(),
 * so that one system call per loop iteration carries every
 * request the callbacks made (wait with timeout 0 submits and reaps
 * without blocking: loop_get_timeout_ns). A backend whose queue is full submits what
 * it holds and queues again: the primitives fail only when the request
 * cannot be queued at all.
 *
 * Memory a request points to (buffers, addresses, the msghdr) belongs to
 * the caller and must stay valid until the request's final completion has
 * been delivered, whatever happened meanwhile (cancelled, loop closing).
 * Requests that take user_data 0 (cancel, poll_remove) complete silently.
 */

#include <stdbool.h>
#include <stdint.h>
#ifdef LOOP_WINDOWS
/* Winsock's sockaddr and socklen_t, and the struct msghdr and struct iovec
 * shims with POSIX's field names (win32.h). */
#include "win32.h"
#else
#include <sys/socket.h>
#endif

#include "macro.h"

/* Completion flag: a multishot request stays armed; more completions of the
 * same user_data follow. Without it, the completion is the request's last. */
#define LOOP_PROACTOR_MORE UINT32_C(1)

/* Called once per completion, with the operation's result (a count, a new
 * fd, 0, or a negative errno) as the kernel gave it. */
typedef void (*loop_proactor_complete_t)(void *ctx, uint64_t user_data, int res, uint32_t flags);

/* Asked before a completion is consumed (see wait): true to leave it, and
 * every one after it, where it is. */
typedef bool (*loop_proactor_keep_t)(void *ctx, uint64_t user_data, int res, uint32_t flags);

struct loop_proactor_ops {
        const char *name;               /* LIBLOOP_PROACTOR's value for this backend */

        /* Create the queues; *ret is the backend's state. Fails with the
         * kernel's reason (-ENOSYS: not in the kernel; -EPERM: disabled by
         * the administrator, e.g. sysctl kernel.io_uring_disabled). */
        int (*init)(void **ret);

        /*
         * Release the queues. With inherited set (a fork child letting go
         * of its parent's loop) the kernel object is the parent's too: only
         * this process's descriptor and memory go, nothing is submitted or
         * reaped (a reaped completion would be stolen from the parent).
         */
        void (*free)(void *state, bool inherited);

        /* Poll fd for events (POLLIN, POLLOUT...). multishot: stays armed
         * and completes once per wake-up with LOOP_PROACTOR_MORE, until it
         * is removed or the kernel ends it (a last completion without the
         * flag); otherwise one completion, at once if fd is ready now. The
         * result is the poll mask or a negative errno. */
        int (*poll_add)(void *state, int fd, uint32_t events, bool multishot, uint64_t user_data);

        /* Remove the poll request tagged target; it completes -ECANCELED. */
        int (*poll_remove)(void *state, uint64_t target);

        /* recv(2) / send(2) (MSG_NOSIGNAL) on a socket, waiting for the
         * socket to be ready: the result is the byte count. */
        int (*recv)(void *state, int fd, void *buf, size_t len, uint64_t user_data);
        int (*send)(void *state, int fd, const void *buf, size_t len, uint64_t user_data);

        /* recvmsg(2) / sendmsg(2) (MSG_NOSIGNAL), for datagrams with addresses. */
        int (*recvmsg)(void *state, int fd, struct msghdr *msg, uint64_t user_data);
        int (*sendmsg)(void *state, int fd, const struct msghdr *msg, uint64_t user_data);

        /* accept4(2) with SOCK_NONBLOCK | SOCK_CLOEXEC: the result is the
         * new fd. */
        int (*accept)(void *state, int fd, struct sockaddr *addr, socklen_t *addrlen, uint64_t user_data);

        /* connect(2), waiting for it to finish: the result is 0 or the
         * connection's error. */
        int (*connect)(void *state, int fd, const struct sockaddr *addr, socklen_t addrlen, uint64_t user_data);

        /* Ask the kernel to cancel the request tagged target: it then
         * completes -ECANCELED, or with its result if it had finished. */
        int (*cancel)(void *state, uint64_t target);

        /* If the request tagged target is still queued (not yet given to
         * the kernel), turn it into a no-op that completes with 0, and
         * return true: the kernel never acts on it. Otherwise false. */
        bool (*withdraw)(void *state, uint64_t target);

        /*
         * Submit every queued request, wait until at least one completion
         * is there or timeout_ns has passed (< 0: no limit, 0: do not
         * block), then call complete for each completion there is. A
         * completion is consumed before complete runs, so complete may
         * queue requests and even call wait() again. With keep (not NULL),
         * the completions from the first one keep says true for stay
         * queued for a later wait. Returns the number of completions
         * handled or a negative errno; an interrupted or timed-out wait is
         * not an error.
         */
        int (*wait)(void *state, int64_t timeout_ns, loop_proactor_complete_t complete, loop_proactor_keep_t keep,
                    void *ctx);

        /* A descriptor that becomes readable when a completion is there,
         * or -EOPNOTSUPP (loop_fileno). */
        int (*fileno)(void *state);

        /* Optional (NULL: the loop wakes itself through its wake-up
         * descriptor, io_uring): makes a wait() blocked in another thread
         * return, from any thread; 0 or a negative errno. IOCP: a packet
         * posted to the port (loop_call_soon_threadsafe). */
        int (*wake)(void *state);
};

#ifdef ENABLE_URING
extern LOOP_HIDDEN const struct loop_proactor_ops loop_proactor_uring;
#endif
#ifdef LOOP_WINDOWS
extern LOOP_HIDDEN const struct loop_proactor_ops loop_proactor_iocp;
/* For tests/windows/iocp_ops.c: requests in flight, and how AFD polling went. */
size_t loop__iocp_inflight(void *state);
void loop__iocp_describe(void *state, char *buf, size_t size);
#endif
