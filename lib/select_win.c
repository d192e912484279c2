/* SPDX-License-Identifier: MIT */
/*
 * The select selector on winsock (Windows): loop_selector_select, as
 * lib/select.c is on POSIX. A file of its own: every part of select.c
 * (fd_set bitmaps indexed by descriptor, pselect, poll() for the details)
 * is different here.
 *
 * Quirks this file deals with:
 * - Sockets only: select() takes nothing else (no pipes, no files, no
 *   console). check_fd says ENOTSOCK for any other handle, so that
 *   loop_add_reader() fails at once, not in the next wait.
 * - Winsock's fd_set is not a bitmap but a count and an array of SOCKETs
 *   (FD_SETSIZE, 64 by default, is only the array's size in the header's
 *   struct). select() reads fd_count entries, however many: the sets here
 *   are allocated for every registered socket, so there is no 64 limit.
 *   select() ignores its first argument.
 * - select() compacts each set to the ready sockets. Registrations are
 *   kept sorted by socket, and each ready one is found by binary search
 *   (FD_ISSET is a linear scan: quadratic with many ready sockets).
 * - A failed non-blocking connect() is reported in exceptfds, never in
 *   writefds: sockets registered for writing are in exceptfds too, and
 *   found there with SO_ERROR set they are reported writable with ERROR
 *   (the writer then reads SO_ERROR, as on POSIX). exceptfds also says
 *   "out-of-band data" (and, under wine, a peer's shutdown), which is
 *   nothing a writer can act on and, level-triggered, would return every
 *   wait at once: a socket found there without an error, or once found
 *   writable (its connect is over), leaves exceptfds until it is
 *   registered anew.
 * - select() with three empty sets fails (WSAEINVAL) instead of sleeping:
 *   a wait with nothing registered sleeps with Sleep().
 * - One closed socket in the sets fails the whole call (WSAENOTSOCK):
 *   the dead ones are found (loop__fd_valid) and reported as CLOSED, as
 *   select.c does for EBADF.
 * - The timeout is a timeval, microseconds rounded up (tv_sec is a 32-bit
 *   long): nothing fires early. ERROR: for a socket registered with it that
 *   select found ready, one WSAPoll() with no timeout says which
 *   conditions hold (POLLHUP is a hang-up), as select.c asks poll().
 */
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "selector.h"

struct reg {
        SOCKET s;
        uint32_t events;
        bool no_except;         /* left out of exceptfds (see the top of the file) */
};

/* Layout-compatible with winsock's fd_set, with room for n sockets. */
struct sock_set {
        u_int fd_count;
        SOCKET fd_array[];
};

struct select_state {
        struct reg *regs;       /* sorted by socket */
        size_t n, cap;
        struct sock_set *rd, *wr, *ex;  /* cap entries each */
};

static int select_init(void **ret) {
        struct select_state *st;
        int r = loop__winsock_init();

        if (r < 0)
                return r;
        st = calloc(1, sizeof(*st));
        if (!st)
                return -ENOMEM;
        *ret = st;
        return 0;
}

static void select_free(void *state) {
        struct select_state *st = state;

        free(st->regs);
        free(st->rd);
        free(st->wr);
        free(st->ex);
        free(st);
}

static int select_check_fd(void *state, int fd) {
        return loop__fd_valid(fd);
}

/* The index of s in regs, or where it would go (*found false). */
static size_t find(const struct select_state *st, SOCKET s, bool *found) {
        size_t lo = 0, hi = st->n;

        while (lo < hi) {
                size_t mid = lo + (hi - lo) / 2;
                if (st->regs[mid].s < s)
                        lo = mid + 1;
                else
                        hi = mid;
        }
        *found = lo < st->n && st->regs[lo].s == s;
        return lo;
}

static struct sock_set *set_new(size_t cap) {
        return malloc(offsetof(struct sock_set, fd_array) + cap * sizeof(SOCKET));
}

/* Room for one more registration, in regs and in each set. */
static int grow(struct select_state *st) {
        size_t cap = st->cap ? st->cap * 2 : 16;
        struct reg *regs;
        struct sock_set *rd, *wr, *ex;

        if (st->n < st->cap)
                return 0;
        regs = realloc(st->regs, cap * sizeof(*regs));
        if (!regs)
                return -ENOMEM;
        st->regs = regs;
        rd = set_new(cap);
        wr = set_new(cap);
        ex = set_new(cap);
        if (!rd || !wr || !ex) {
                free(rd);
                free(wr);
                free(ex);
                return -ENOMEM;
        }
        free(st->rd);
        free(st->wr);
        free(st->ex);
        st->rd = rd;
        st->wr = wr;
        st->ex = ex;
        st->cap = cap;
        return 0;
}

static int select_modify(void *state, int fd, uint32_t old_events, uint32_t new_events, int reset) {
        struct select_state *st = state;
        SOCKET s = (SOCKET) fd;
        bool found;
        size_t i = find(st, s, &found);

        if (new_events == 0) {
                if (found) {
                        memmove(&st->regs[i], &st->regs[i + 1], (st->n - i - 1) * sizeof(*st->regs));
                        st->n--;
                }
                return 0;
        }
        if (found) {
                st->regs[i].events = new_events;
                if (reset || old_events == 0)
                        st->regs[i].no_except = false;  /* maybe another socket now */
                return 0;
        }
        int r = loop__fd_valid(fd);
        if (r < 0)
                return r;
        r = grow(st);
        if (r < 0)
                return r;
        memmove(&st->regs[i + 1], &st->regs[i], (st->n - i) * sizeof(*st->regs));
        st->regs[i] = (struct reg) { .s = s, .events = new_events };
        st->n++;
        return 0;
}

static void fill(struct select_state *st) {
        st->rd->fd_count = st->wr->fd_count = st->ex->fd_count = 0;
        for (size_t i = 0; i < st->n; i++) {
                if (st->regs[i].events & LOOP_EVENT_READ)
                        st->rd->fd_array[st->rd->fd_count++] = st->regs[i].s;
                if (st->regs[i].events & LOOP_EVENT_WRITE) {
                        st->wr->fd_array[st->wr->fd_count++] = st->regs[i].s;
                        if (!st->regs[i].no_except)
                                st->ex->fd_array[st->ex->fd_count++] = st->regs[i].s;
                }
        }
}

/* Nothing to wait for: sleep through the timeout (whole milliseconds,
 * rounded up). */
static int sleep_for(int64_t timeout_ns) {
        if (timeout_ns < 0)
                Sleep(INFINITE);
        else if (timeout_ns > 0)
                Sleep((DWORD) loop__timeout_ms(timeout_ns));    /* at most INT_MAX: never INFINITE */
        return 0;
}

static int report_bad_sockets(struct select_state *st, loop_selector_ready_t ready, void *ctx) {
        int n = 0;

        for (size_t i = 0; i < st->n; i++) {
                if (!(st->regs[i].events & (LOOP_EVENT_READ | LOOP_EVENT_WRITE)))
                        continue;
                if (loop__fd_valid((int) st->regs[i].s) < 0) {
                        ready(ctx, (int) st->regs[i].s, LOOP_EVENT_CLOSED);
                        n++;
                }
        }
        return n;
}

/* What set says, as ev, into found[] (by registration), for what each
 * socket is registered for. */
static void mark(struct select_state *st, const struct sock_set *set, uint32_t ev, uint32_t *found) {
        for (u_int k = 0; k < set->fd_count; k++) {
                bool ok;
                size_t i = find(st, set->fd_array[k], &ok);
                if (ok)
                        found[i] |= ev & st->regs[i].events;
        }
}

static bool has_error(SOCKET s) {
        int err = 0, len = sizeof(err);

        return getsockopt(s, SOL_SOCKET, SO_ERROR, (char *) &err, &len) == 0 && err != 0;
}

/*
 * What holds for a socket registered with ERROR (an I/O watcher) that
 * select found ready with ev: WSAPoll()'s answer, which tells a hang-up
 * (a peer's close or reset: POLLHUP) and an error apart, as select.c asks
 * poll(); ev with SO_ERROR's verdict if WSAPoll has nothing to say.
 */
static uint32_t details(const struct reg *r, uint32_t ev) {
        WSAPOLLFD p = {
                .fd = r->s,
                .events = (short) ((r->events & LOOP_EVENT_READ ? POLLRDNORM : 0) |
                                   (r->events & LOOP_EVENT_WRITE ? POLLWRNORM : 0)),
        };

        if (WSAPoll(&p, 1, 0) <= 0)
                return ev | (has_error(r->s) ? LOOP_EVENT_ERROR : 0);
        return (p.revents & (POLLRDNORM | POLLRDBAND) ? LOOP_EVENT_READ : 0) |
               (p.revents & POLLWRNORM ? LOOP_EVENT_WRITE : 0) | (p.revents & POLLERR ? LOOP_EVENT_ERROR : 0) |
               (p.revents & POLLHUP ? LOOP_EVENT_HANGUP : 0);
}

/* exceptfds: a failed connect is WRITE and ERROR; anything else takes the
 * socket out of exceptfds (see the top of the file). Writable sockets
 * have connected: out too. */
static void mark_except(struct select_state *st, uint32_t *found) {
        for (u_int k = 0; k < st->ex->fd_count; k++) {
                bool ok;
                size_t i = find(st, st->ex->fd_array[k], &ok);
                if (!ok)
                        continue;
                if (has_error(st->regs[i].s))
                        found[i] |= (LOOP_EVENT_WRITE | LOOP_EVENT_ERROR) & st->regs[i].events;
                else
                        st->regs[i].no_except = true;
        }
        for (u_int k = 0; k < st->wr->fd_count; k++) {
                bool ok;
                size_t i = find(st, st->wr->fd_array[k], &ok);
                if (ok)
                        st->regs[i].no_except = true;
        }
}

static int select_select(void *state, int64_t timeout_ns, loop_selector_ready_t ready, void *ctx) {
        struct select_state *st = state;
        struct timeval tv, *tvp = NULL;
        int n;

        if (!st->cap)
                return sleep_for(timeout_ns);   /* nothing was ever registered: no sets yet */
        fill(st);
        if (!st->rd->fd_count && !st->wr->fd_count)
                return sleep_for(timeout_ns);
        if (timeout_ns >= 0) {
                int64_t us = timeout_ns / 1000 + (timeout_ns % 1000 != 0);
                if (us / 1000000 > LONG_MAX)
                        us = (int64_t) LONG_MAX * 1000000;
                tv.tv_sec = (long) (us / 1000000);
                tv.tv_usec = (long) (us % 1000000);
                tvp = &tv;
        }
        n = select(0, (fd_set *) st->rd, (fd_set *) st->wr, (fd_set *) st->ex, tvp);
        if (n == SOCKET_ERROR) {
                int e = WSAGetLastError();
                if (e == WSAEINTR)
                        return 0;
                if (e == WSAENOTSOCK)
                        return report_bad_sockets(st, ready, ctx);
                return -loop__errno_from_wsa(e);
        }
        if (n == 0)
                return 0;

        /* The ready ones, each reported once, in registration order. */
        uint32_t stack[64], *found = st->n <= 64 ? stack : calloc(st->n, sizeof(*found));
        if (!found)
                return -ENOMEM;
        memset(found, 0, st->n * sizeof(*found));
        mark(st, st->rd, LOOP_EVENT_READ, found);
        mark(st, st->wr, LOOP_EVENT_WRITE, found);
        mark_except(st, found);
        n = 0;
        for (size_t i = 0; i < st->n; i++) {
                uint32_t ev = found[i];
                if (!ev)
                        continue;
                if (st->regs[i].events & LOOP_EVENT_ERROR)
                        ev = details(&st->regs[i], ev);
                ready(ctx, (int) st->regs[i].s, ev);
                n++;
        }
        if (found != stack)
                free(found);
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
