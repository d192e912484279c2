/* SPDX-License-Identifier: MIT */
/*
 * The select selector (POSIX, the last resort).
 *
 * Quirks this file deals with:
 * - fd_set holds descriptors below FD_SETSIZE (1024 on glibc) only; setting
 *   a bigger one writes past the set. check_fd refuses them with ERANGE
 *   (asyncio raises ValueError) before anything is registered.
 * - One closed descriptor in the set makes the whole call fail with EBADF
 *   and report nothing. We then find the bad ones with fcntl() and report
 *   them as CLOSED, and the loop drops them before the next call, instead
 *   of spinning on EBADF (libev's fd_ebadf finds them the same way).
 * - The kernel scans 0..maxfd; maxfd is lowered lazily when the highest
 *   descriptor goes away.
 * - pselect() takes a timespec: no microsecond rounding games.
 * - select() says readable or writable, nothing about errors and hang-ups
 *   (it counts them as readiness), and cannot wait for them alone. I/O
 *   watchers need them apart: for a descriptor registered with
 *   LOOP_EVENT_ERROR that select found ready, one poll() with no timeout
 *   says which conditions hold, and its answer is what is reported (as the
 *   poll selector would). A descriptor registered with ERROR alone is in
 *   no set and never reported: on select, a watcher must ask for readiness
 *   to hear of errors and hang-ups.
 */
#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <sys/select.h>

#include "internal.h"
#include "selector.h"

struct select_state {
        fd_set readers, writers;
        fd_set details;         /* registered with LOOP_EVENT_ERROR: ask poll() what holds */
        int max_fd;             /* highest watched descriptor, -1 if none */
};

static int select_init(void **ret) {
        struct select_state *st = calloc(1, sizeof(*st));

        if (!st)
                return -ENOMEM;
        FD_ZERO(&st->readers);
        FD_ZERO(&st->writers);
        FD_ZERO(&st->details);
        st->max_fd = -1;
        *ret = st;
        return 0;
}

static void select_free(void *state) {
        free(state);
}

static int select_check_fd(void *state, int fd) {
        return fd >= FD_SETSIZE ? -ERANGE : 0;
}

static int select_modify(void *state, int fd, uint32_t old_events, uint32_t new_events, int reset) {
        struct select_state *st = state;

        if (fd >= FD_SETSIZE)
                return -ERANGE;
        if (old_events == 0 && new_events != 0 && fcntl(fd, F_GETFD) < 0)
                return -errno;
        if (new_events & LOOP_EVENT_READ)
                FD_SET(fd, &st->readers);
        else
                FD_CLR(fd, &st->readers);
        if (new_events & LOOP_EVENT_WRITE)
                FD_SET(fd, &st->writers);
        else
                FD_CLR(fd, &st->writers);
        if (new_events & LOOP_EVENT_ERROR)
                FD_SET(fd, &st->details);
        else
                FD_CLR(fd, &st->details);
        if (new_events && fd > st->max_fd)
                st->max_fd = fd;
        while (st->max_fd >= 0 && !FD_ISSET(st->max_fd, &st->readers) && !FD_ISSET(st->max_fd, &st->writers))
                st->max_fd--;
        return 0;
}

static int report_bad_fds(struct select_state *st, loop_selector_ready_t ready, void *ctx) {
        int n = 0;

        for (int fd = 0; fd <= st->max_fd; fd++) {
                if (!FD_ISSET(fd, &st->readers) && !FD_ISSET(fd, &st->writers))
                        continue;
                if (fcntl(fd, F_GETFD) < 0 && errno == EBADF) {
                        ready(ctx, fd, LOOP_EVENT_CLOSED);
                        n++;
                }
        }
        return n;
}

/* What holds for fd, which select found ready with ev: poll()'s answer,
 * or ev if poll has nothing to say (any more). */
static uint32_t details(const struct select_state *st, int fd, uint32_t ev) {
        struct pollfd p = {
                .fd = fd,
                .events = (short) ((FD_ISSET(fd, &st->readers) ? POLLIN : 0) |
                                   (FD_ISSET(fd, &st->writers) ? POLLOUT : 0)),
        };

        if (poll(&p, 1, 0) <= 0)
                return ev;
        return loop__poll_revents(p.revents);
}

static int select_select(void *state, int64_t timeout_ns, loop_selector_ready_t ready, void *ctx) {
        struct select_state *st = state;
        fd_set rd = st->readers, wr = st->writers;
        struct timespec ts = {
                .tv_sec = timeout_ns / 1000000000,
                .tv_nsec = timeout_ns % 1000000000,
        };
        int n = pselect(st->max_fd + 1, &rd, &wr, NULL, timeout_ns < 0 ? NULL : &ts, NULL);

        if (n < 0) {
                if (errno == EINTR)
                        return 0;
                if (errno == EBADF)
                        return report_bad_fds(st, ready, ctx);
                return -errno;
        }
        for (int fd = 0, left = n; fd <= st->max_fd && left > 0; fd++) {
                uint32_t ev = 0;
                if (FD_ISSET(fd, &rd)) {
                        ev |= LOOP_EVENT_READ;
                        left--;
                }
                if (FD_ISSET(fd, &wr)) {
                        ev |= LOOP_EVENT_WRITE;
                        left--;
                }
                if (ev && FD_ISSET(fd, &st->details))
                        ev = details(st, fd, ev);
                if (ev)
                        ready(ctx, fd, ev);
        }
        return n;
}

const struct loop_selector_ops loop_selector_select = {
        .name = "select",
        .init = select_init,
        .free = select_free,
        .check_fd = select_check_fd,
        .modify = select_modify,
        .select = select_select,
};
