/* SPDX-License-Identifier: MIT */
#pragma once

/*
 * The readiness backends (asyncio's selectors module).
 *
 * Each backend lives in one file (kqueue.c, epoll.c, poll.c, select.c) and exports one
 * const table of this type; selector.c lists the compiled-in tables in order
 * of preference and nothing else in the library names a backend.
 *
 * The selector loop (selector_loop.c) keeps the user-visible registrations
 * and applies changes to the backend lazily, once per iteration, so a
 * backend only ever sees "fd had events OLD, now wants NEW".
 */

#include <stdint.h>

#include "macro.h"

#include "loop.h"

#define LOOP_EVENT_READ  UINT32_C(1)
#define LOOP_EVENT_WRITE UINT32_C(2)

/*
 * Not readiness: what a backend passes to ready(), alone, when it finds a
 * registration dead, i.e. a descriptor closed behind the loop's back
 * (loop_add_reader(3) asks callers to remove first).
 * CLOSED: fd is closed (poll's POLLNVAL, select's EBADF, epoll refusing to
 * watch the number again); the loop drops fd's callbacks, reports it, and
 * asks for fd's removal at the next flush.
 * STALE: events came from a file that is no longer the one behind fd (it
 * lived on in a dup() or a fork child after fd was closed); the backend has
 * stopped watching it. The loop reports it; fd's callbacks stay.
 */
#define LOOP_EVENT_CLOSED UINT32_C(4)
#define LOOP_EVENT_STALE UINT32_C(8)

/*
 * Conditions beside readiness, for I/O watchers (loop_add_io), which are
 * told them apart. In ready(): ERROR is POLLERR, HANGUP is POLLHUP, and
 * READ and WRITE then say what the kernel said (POLLIN, POLLOUT), no more:
 * the loop itself gives readers and writers asyncio's mapping (an error or
 * a hang-up wakes both). In modify(): ERROR in the mask means "watched for
 * errors and hang-ups, even with neither READ nor WRITE" (a watcher whose
 * mask is 0 is told of them, as poll(2) with no events is). epoll and
 * poll report them anyway, so it asks nothing more of the kernel there
 * (epoll registers a descriptor with no events for it alone); select,
 * which cannot wait for them alone, asks poll() for the details of a
 * descriptor it found ready.
 */
#define LOOP_EVENT_ERROR UINT32_C(16)
#define LOOP_EVENT_HANGUP UINT32_C(32)

#ifdef POLLIN
/* poll(2)'s revents as LOOP_EVENT_* (POLLNVAL: CLOSED), for the backends
 * that include <poll.h>: the kernel's answer, which the loop maps to
 * readers and writers the asyncio way. */
static inline uint32_t loop__poll_revents(short re) {
        if (re & POLLNVAL)
                return LOOP_EVENT_CLOSED;
        return (re & POLLIN ? LOOP_EVENT_READ : 0) | (re & POLLOUT ? LOOP_EVENT_WRITE : 0) |
               (re & POLLERR ? LOOP_EVENT_ERROR : 0) | (re & POLLHUP ? LOOP_EVENT_HANGUP : 0);
}
#endif

/* Called by ->select once per ready descriptor, from inside ->select. */
typedef void (*loop_selector_ready_t)(void *ctx, int fd, uint32_t events);

struct loop_selector_ops {
        /* Name used by loop_selector_new() and LIBLOOP_SELECTOR. */
        const char *name;

        /*
         * Allocate the backend state and store it in *state. May fail with a
         * negative errno (-ENOMEM, -EMFILE...). The state is private to the
         * backend and freed by ->free.
         */
        int (*init)(void **state);

        /*
         * Release everything ->init made. Must not issue per-descriptor
         * removals: after fork() the kernel object may be shared with the
         * parent (epoll), and closing our copy must not disturb its
         * registrations.
         */
        void (*free)(void *state);

        /*
         * May fd be watched at all? Called before the first registration of
         * a descriptor. Returns 0 or a negative errno (-ERANGE for select's
         * FD_SETSIZE). NULL means every fd >= 0 is fine.
         */
        int (*check_fd)(void *state, int fd);

        /*
         * Change fd's interest from old_events to new_events (LOOP_EVENT_*).
         * old_events == 0 is an addition, new_events == 0 a removal. Called
         * with old != new, or with old == new != 0 and reset set, meaning the
         * descriptor may have been closed and reused since it was last
         * registered (the backend must make sure the kernel watches the fd
         * that now has this number). A removal must tolerate a descriptor
         * that was already closed. Returns 0 or a negative errno; -EBADF and
         * -EPERM are reported to the user on additions.
         */
        int (*modify)(void *state, int fd, uint32_t old_events, uint32_t new_events, int reset);

        /*
         * Wait up to timeout_ns (< 0: forever, 0: poll) and call ready() for
         * each descriptor with events, once per descriptor: READ and WRITE
         * as the kernel says, plus ERROR and HANGUP (above; select only for
         * descriptors registered with ERROR); a dead
         * registration as CLOSED or STALE (above), never silently and never
         * again and again. EINTR is not an error: return 0 with no events.
         * Returns the number of events or a negative errno. ready() never
         * changes the set: the loop defers its changes to the next flush.
         */
        int (*select)(void *state, int64_t timeout_ns, loop_selector_ready_t ready, void *ctx);

        /*
         * A descriptor that polls readable when ->select would report
         * something (epoll's own fd), for embedding the loop in another
         * one. NULL when the backend has none (poll, select).
         */
        int (*fileno)(void *state);

        /*
         * Optional: give the kernel the changes ->modify queued (kqueue
         * batches them into the next wait), for an outer loop about to
         * wait on ->fileno. Errors are reported by the next ->select.
         */
        void (*commit)(void *state);

        /*
         * Optional: the loop's wake-up without a descriptor of its own
         * (kqueue's EVFILT_USER). wake_setup arms it and returns the
         * number ->select passes to ready() with LOOP_EVENT_READ when it
         * was woken (the backend's own descriptor), or a negative errno;
         * wake(state) makes a waiting ->select return, from any thread.
         * NULL: the loop watches a pipe or an eventfd instead.
         */
        int (*wake_setup)(void *state);
        void (*wake)(void *state);
};

struct loop_selector {
        unsigned n_ref;
        const struct loop_selector_ops *ops;
        void *state;
        loop_t *owner;          /* the loop using it, or NULL (not a reference) */
};

/* The compiled-in backends, defined in their own files. */
extern LOOP_HIDDEN const struct loop_selector_ops loop_selector_kqueue;
extern LOOP_HIDDEN const struct loop_selector_ops loop_selector_epoll;
extern LOOP_HIDDEN const struct loop_selector_ops loop_selector_poll;
extern LOOP_HIDDEN const struct loop_selector_ops loop_selector_select;

/* Converts a timeout to milliseconds, rounding up so we never wake early and spin. */
int loop__timeout_ms(int64_t timeout_ns);
