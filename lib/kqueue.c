/* SPDX-License-Identifier: MIT */
/*
 * The kqueue selector (macOS and the BSDs).
 *
 * Quirks this file deals with:
 * - kqueue keeps one knote per (descriptor, filter): reading and writing
 *   are two registrations (EVFILT_READ, EVFILT_WRITE), each added and
 *   deleted on its own, and each reported as an event of its own. The two
 *   events of one descriptor are merged into one ready() call, as the
 *   loop expects.
 * - Changes are batched: a change of interest is appended to a changelist
 *   that reaches the kernel with the next wait, one kevent() call per
 *   iteration (libev and libevent do the same). A change that fails comes
 *   back as an EV_ERROR entry in the event list, on its own, as long as
 *   the list has room for it; it is sized so that it always has, so one
 *   bad descriptor never makes the whole call fail.
 * - Additions are not batched: the first registration of a descriptor, and
 *   a re-check after a possible close and reuse (reset), go to the kernel
 *   at once with EV_RECEIPT (the queued changes first, in order), so that
 *   loop_add_reader() hears that kqueue refuses a descriptor. Mac OS X
 *   10.6 to 10.8 refuse ttys and other character devices (EINVAL); that is
 *   reported as -EOPNOTSUPP, and loop_add_reader(3) names the remedy: the
 *   poll or select selector.
 * - close() deletes a descriptor's knotes, even if the file lives on in a
 *   dup(): no dead registration keeps reporting (epoll's trouble), but a
 *   number closed behind the loop's back is silently no longer watched,
 *   and if it is reused the new file is not either. So every wait also
 *   re-adds one registered descriptor, in turn (EV_ADD changes an existing
 *   knote and creates a missing one; no system call of its own, it rides
 *   with the wait): a closed number comes back with EBADF and is reported
 *   as CLOSED, a reused one is watched again.
 * - Regular files and directories: kqueue's vnode filter calls a file
 *   readable only before its end, while poll, select and the epoll
 *   selector call it always ready. A program must not work on one selector
 *   and hang on another, so they are kept out of the kernel and reported
 *   ready after every wait, which then does not block.
 * - EV_EOF on a read filter means the peer will send no more (the data
 *   still buffered is read first): readable. On a write filter it means
 *   the reader is gone: writable, and an error (the write fails with
 *   EPIPE; poll says POLLERR), which wakes the reader too. A socket error
 *   rides in fflags: ERROR. For a descriptor registered with
 *   LOOP_EVENT_ERROR (an I/O watcher, which tells errors and hang-ups
 *   apart), one poll() with no timeout says what holds, as in select.c;
 *   kqueue cannot wait for errors alone either.
 * - The loop's wake-up is an EVFILT_USER event where the system has it
 *   (FreeBSD 8.1, macOS 10.6): no pipe, and a trigger from another thread
 *   costs one kevent() call.
 * - A fork child does not inherit the queue (the kernel leaves its number
 *   unused there): freeing the selector closes the descriptor only in the
 *   process that made it, since in a child the number may be another file.
 */
#include <fcntl.h>
#include <poll.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/event.h>
#include <sys/time.h>
#include <unistd.h>

#include "internal.h"
#include "selector.h"

/* reg[fd]: what the kernel watches (LOOP_EVENT_READ, WRITE: one knote
 * each), whether the loop asked for ERROR (poll() gives the details),
 * and the always-ready mark. */
#define REG_RW (LOOP_EVENT_READ | LOOP_EVENT_WRITE)
#define REG_DETAILS LOOP_EVENT_ERROR
#define REG_ALWAYS UINT8_C(64)
/* got[fd]: events seen in this wait, merged into one ready() call. */
#define GOT_LISTED UINT8_C(128)

/* The ident of the wake-up's EVFILT_USER event. */
#define WAKE_IDENT 0

/* Descriptors looked at per wait for the turn's re-add. */
#define VERIFY_SCAN 64

struct kq_state {
        int kq;
        pid_t pid;              /* the process that made kq */
        uint8_t *reg;
        size_t n_reg;
        uint8_t *got;
        size_t n_got;
        struct kevent *changes;
        int n_changes, cap_changes;
        struct kevent *events;
        int cap_events;
        int *touched;           /* descriptors with events in this wait */
        int *always;            /* regular files and directories: always ready */
        size_t n_always, cap_always;
        int *closed;            /* found closed outside a wait: reported by the next */
        size_t n_closed, cap_closed;
        size_t verify_next;     /* where the next re-add's search starts */
        size_t n_watched;       /* descriptors with a knote */
};

static int grow_ints(int **a, size_t n, size_t *cap) {
        if (n < *cap)
                return 0;
        size_t c = *cap ? 2 * *cap : 8;
        int *p = realloc(*a, c * sizeof(*p));
        if (!p)
                return -ENOMEM;
        *a = p;
        *cap = c;
        return 0;
}

static int kq_init(void **ret) {
        struct kq_state *st = calloc(1, sizeof(*st));

        if (!st)
                return -ENOMEM;
        st->kq = kqueue();
        if (st->kq < 0) {
                int r = -errno;
                free(st);
                return r;
        }
        /* kqueue() has no CLOEXEC flag everywhere (FreeBSD's kqueuex does). */
        (void) fcntl(st->kq, F_SETFD, FD_CLOEXEC);
        st->pid = getpid();
        *ret = st;
        return 0;
}

static void kq_free(void *state) {
        struct kq_state *st = state;

        if (st->pid == getpid())
                close(st->kq);
        free(st->reg);
        free(st->got);
        free(st->changes);
        free(st->events);
        free(st->touched);
        free(st->always);
        free(st->closed);
        free(st);
}

static int push_change(struct kq_state *st, int fd, short filter, unsigned short flags) {
        if (st->n_changes == st->cap_changes) {
                int cap = st->cap_changes ? 2 * st->cap_changes : 64;
                struct kevent *c = realloc(st->changes, (size_t) cap * sizeof(*c));
                if (!c)
                        return -ENOMEM;
                st->changes = c;
                st->cap_changes = cap;
        }
        /* udata 0, not NULL: NetBSD before 10 declares it intptr_t. */
        EV_SET(&st->changes[st->n_changes++], (uintptr_t) fd, filter, flags, 0, 0, 0);
        return 0;
}

/* Room for n events: every queued change may come back as an error. */
static int reserve_events(struct kq_state *st, int n) {
        if (n <= st->cap_events)
                return 0;
        int cap = st->cap_events ? st->cap_events : 64;
        while (cap < n)
                cap *= 2;
        struct kevent *e = realloc(st->events, (size_t) cap * sizeof(*e));
        if (!e)
                return -ENOMEM;
        st->events = e;
        int *t = realloc(st->touched, (size_t) cap * sizeof(*t));
        if (!t)
                return -ENOMEM;
        st->touched = t;
        st->cap_events = cap;
        return 0;
}

static void always_remove(struct kq_state *st, int fd) {
        for (size_t i = 0; i < st->n_always; i++)
                if (st->always[i] == fd) {
                        st->always[i] = st->always[--st->n_always];
                        return;
                }
}

/* The knotes a registration has in the kernel (LOOP_EVENT_READ, WRITE). */
static uint8_t knotes(uint8_t reg) {
        return reg & REG_ALWAYS ? 0 : reg & REG_RW;
}

/* Changes taking fd's knotes from has to want (READ, WRITE); with
 * readd, every wanted knote is added, also one it has. */
static int queue_changes(struct kq_state *st, int fd, uint8_t has, uint32_t want, unsigned short add_flags,
                         bool readd) {
        uint32_t add = readd ? want : want & ~has, del = has & ~want;
        int r = 0;

        if (add & LOOP_EVENT_READ || del & LOOP_EVENT_READ)
                r = push_change(st, fd, EVFILT_READ, add & LOOP_EVENT_READ ? EV_ADD | add_flags : EV_DELETE);
        if (r == 0 && (add & LOOP_EVENT_WRITE || del & LOOP_EVENT_WRITE))
                r = push_change(st, fd, EVFILT_WRITE, add & LOOP_EVENT_WRITE ? EV_ADD | add_flags : EV_DELETE);
        return r;
}

static void set_reg(struct kq_state *st, int fd, uint8_t reg) {
        bool had = knotes(st->reg[fd]), has = knotes(reg);

        st->reg[fd] = reg;
        st->n_watched += (size_t) has - (size_t) had;
}

/*
 * The change an EV_ERROR entry answers. The kernel writes the entries in
 * the changelist's order, but keeps only ident, filter and the error
 * (FreeBSD sets flags to EV_ERROR alone), so the entries are matched to
 * the changes in order; *j is where the search goes on.
 */
static const struct kevent *match_change(const struct kq_state *st, int n_changes, int *j, const struct kevent *e) {
        for (; *j < n_changes; (*j)++) {
                const struct kevent *c = &st->changes[*j];
                if (c->ident == e->ident && c->filter == e->filter) {
                        (*j)++;
                        return c;
                }
        }
        return NULL;
}

/* A change c that failed with error: a deletion of a knote already gone
 * (the number was closed) is what was asked; an addition on a closed
 * number makes fd CLOSED. Anything else leaves the registration as the
 * loop thinks it is and makes its callbacks run, so that they see the
 * error themselves. */
static uint8_t change_failed(struct kq_state *st, const struct kevent *c, int64_t error) {
        int fd = (int) c->ident;

        if (!(c->flags & EV_ADD) || (size_t) fd >= st->n_reg)
                return 0;
        if (error == EBADF) {
                set_reg(st, fd, 0);
                return LOOP_EVENT_CLOSED;
        }
        return knotes(st->reg[fd]) | LOOP_EVENT_ERROR;
}

/*
 * The queued changes, now, at least one of them with EV_RECEIPT: with an
 * entry for every receipt, kevent() returns at once, taking no events.
 * Returns the error of fd's own receipted change, if any (fd < 0: none is
 * fd's); the others' CLOSED are kept for the next wait to report.
 */
static int submit_now(struct kq_state *st, int fd) {
        static const struct timespec zero;
        int r = reserve_events(st, st->n_changes);

        if (r < 0)
                return r;
        int n = kevent(st->kq, st->changes, st->n_changes, st->events, st->cap_events, &zero);
        int saved = errno, n_changes = st->n_changes, j = 0, error = 0;
        st->n_changes = 0;
        if (n < 0)
                return -saved;
        for (int i = 0; i < n; i++) {
                const struct kevent *e = &st->events[i], *c;
                if (!(e->flags & EV_ERROR) || !(c = match_change(st, n_changes, &j, e)) || e->data == 0)
                        continue;
                if (fd >= 0 && (int) c->ident == fd && c->flags & EV_RECEIPT) {
                        if (!error)
                                error = (int) e->data;
                        continue;
                }
                if (change_failed(st, c, e->data) & LOOP_EVENT_CLOSED &&
                    grow_ints(&st->closed, st->n_closed, &st->cap_closed) == 0)
                        st->closed[st->n_closed++] = (int) e->ident;
        }
        return -error;
}

/* The queued changes and fd's own (from has to want, re-adding what it
 * has), at once, fd's additions with EV_RECEIPT: the error of fd's. */
static int apply_now(struct kq_state *st, int fd, uint8_t has, uint32_t want) {
        int first = st->n_changes;
        int r = queue_changes(st, fd, has, want, EV_RECEIPT, true);

        if (r < 0) {
                st->n_changes = first;
                return r;
        }
        return submit_now(st, fd);
}

/* Before an outer loop waits on our descriptor (loop_fileno): the kernel
 * must know what the queued changes say. */
static void kq_commit(void *state) {
        struct kq_state *st = state;

        if (st->n_changes == 0)
                return;
        for (int i = 0; i < st->n_changes; i++)
                st->changes[i].flags |= EV_RECEIPT;
        (void) submit_now(st, -1);
}

/* What kqueue's refusal of fd means: a character device it does not
 * support (Mac OS X 10.6 to 10.8) is EOPNOTSUPP, whose remedy the man
 * pages give; the rest as the kernel said. */
static int refused(int fd, int error) {
        struct stat sb;

        if ((error == EINVAL || error == ENODEV || error == EOPNOTSUPP) && fstat(fd, &sb) == 0 && S_ISCHR(sb.st_mode))
                return -EOPNOTSUPP;
        return -error;
}

static int add(struct kq_state *st, int fd, uint32_t new_events) {
        struct stat sb;
        uint8_t old_reg = st->reg[fd];

        uint8_t has = knotes(old_reg);
        int r;

        /* Whatever the number named, it is looked at afresh. */
        if (old_reg & REG_ALWAYS)
                always_remove(st, fd);
        set_reg(st, fd, 0);
        if (fstat(fd, &sb) < 0)
                return -errno;
        if (S_ISREG(sb.st_mode) || S_ISDIR(sb.st_mode)) {
                /* Knotes the number had belong to a file closed since;
                 * a deletion that finds none is fine. */
                if (has)
                        (void) queue_changes(st, fd, has, 0, 0, false);
                r = grow_ints(&st->always, st->n_always, &st->cap_always);
                if (r < 0)
                        return r;
                st->always[st->n_always++] = fd;
                set_reg(st, fd, REG_ALWAYS | (uint8_t) (new_events & (REG_RW | REG_DETAILS)));
                return 0;
        }
        if (!(new_events & REG_RW)) {
                /* Errors alone: kqueue cannot wait for them (see the top
                 * of the file); fstat() said the number is open. */
                if (has)
                        (void) queue_changes(st, fd, has, 0, 0, false);
                set_reg(st, fd, (uint8_t) (new_events & REG_DETAILS));
                return 0;
        }
        /* A re-check re-adds what the number has: EV_ADD of an existing
         * knote changes nothing, of a missing one (the file was closed and
         * the number reused) watches the new file. */
        r = apply_now(st, fd, has, new_events & REG_RW);
        if (r < 0) {
                /* Half of it may have been added: take it back at the
                 * next wait (a deletion that finds none is fine). */
                (void) queue_changes(st, fd, REG_RW, 0, 0, false);
                return refused(fd, -r);
        }
        set_reg(st, fd, (uint8_t) (new_events & (REG_RW | REG_DETAILS)));
        return 0;
}

static int kq_modify(void *state, int fd, uint32_t old_events, uint32_t new_events, int reset) {
        struct kq_state *st = state;
        int r = loop__fd_table_reserve((void **) &st->reg, &st->n_reg, sizeof(*st->reg), fd);

        if (r < 0)
                return new_events ? r : 0;
        r = loop__fd_table_reserve((void **) &st->got, &st->n_got, sizeof(*st->got), fd);
        if (r < 0)
                return new_events ? r : 0;
        if (new_events && (old_events == 0 || reset))
                return add(st, fd, new_events);
        uint8_t reg = st->reg[fd];
        if (reg & REG_ALWAYS) {
                if (new_events == 0)
                        always_remove(st, fd);
                st->reg[fd] = new_events ? REG_ALWAYS | (uint8_t) (new_events & (REG_RW | REG_DETAILS)) : 0;
                return 0;
        }
        r = queue_changes(st, fd, knotes(reg), new_events & REG_RW, 0, false);
        if (r < 0)
                return r;
        set_reg(st, fd, (uint8_t) (new_events & (REG_RW | REG_DETAILS)));
        return 0;
}

/* Queue the turn's re-add (see the top of the file). */
static void verify_one(struct kq_state *st) {
        size_t fd = st->verify_next;

        for (int i = 0; i < VERIFY_SCAN; i++, fd++) {
                if (fd >= st->n_reg)
                        fd = 0;
                uint8_t reg = knotes(st->reg[fd]);
                if (!reg)
                        continue;
                if (reg & LOOP_EVENT_READ)
                        (void) push_change(st, (int) fd, EVFILT_READ, EV_ADD);
                if (reg & LOOP_EVENT_WRITE)
                        (void) push_change(st, (int) fd, EVFILT_WRITE, EV_ADD);
                fd++;
                break;
        }
        st->verify_next = fd;
}

/* What holds for fd, which kqueue found ready with ev: poll()'s answer,
 * or ev if poll has nothing to say (any more). */
static uint32_t details(const struct kq_state *st, int fd, uint32_t ev) {
        struct pollfd p = {
                .fd = fd,
                .events = (short) ((st->reg[fd] & LOOP_EVENT_READ ? POLLIN : 0) |
                                   (st->reg[fd] & LOOP_EVENT_WRITE ? POLLOUT : 0)),
        };

        if (poll(&p, 1, 0) <= 0)
                return ev;
        return loop__poll_revents(p.revents);
}

/* Note ev for fd; reported once per descriptor after the scan. */
static void note(struct kq_state *st, int *n_touched, int fd, uint8_t ev) {
        if (!(st->got[fd] & GOT_LISTED)) {
                st->got[fd] = GOT_LISTED;
                st->touched[(*n_touched)++] = fd;
        }
        st->got[fd] |= ev;
}

/* Longer waits are refused by some kernels (macOS's select() says
 * EINVAL above 10^8 seconds); a wait cut short is simply made again. */
#define MAX_WAIT_S 100000000

static int kq_select(void *state, int64_t timeout_ns, loop_selector_ready_t ready, void *ctx) {
        struct kq_state *st = state;
        struct timespec ts = {
                .tv_sec = timeout_ns / 1000000000,
                .tv_nsec = timeout_ns % 1000000000,
        };
        int n, n_touched = 0;

        if (ts.tv_sec > MAX_WAIT_S)
                ts = (struct timespec) { MAX_WAIT_S, 0 };
        if (st->n_watched > 0)
                verify_one(st);
        if (reserve_events(st, st->n_changes + 64) < 0 && st->cap_events < st->n_changes + 1)
                return -ENOMEM;
        /* Always-ready files (and descriptors found closed outside a wait,
         * reported now) make this wait a poll. */
        if (st->n_always > 0 || st->n_closed > 0)
                ts = (struct timespec) { 0, 0 };
        n = kevent(st->kq, st->changes, st->n_changes, st->events, st->cap_events,
                   timeout_ns < 0 && st->n_always == 0 && st->n_closed == 0 ? NULL : &ts);
        int saved = errno, n_changes = st->n_changes, j = 0;
        /* Applied, also when a signal then interrupted the wait. */
        st->n_changes = 0;
        for (size_t i = 0; i < st->n_closed; i++)
                /* Unless added again since, successfully. */
                if (!st->reg[st->closed[i]])
                        ready(ctx, st->closed[i], LOOP_EVENT_CLOSED);
        st->n_closed = 0;
        if (n < 0)
                return saved == EINTR ? 0 : -saved;
        for (int i = 0; i < n; i++) {
                const struct kevent *e = &st->events[i];
                int fd = (int) e->ident;
                uint8_t ev;

                if (e->flags & EV_ERROR) {
                        const struct kevent *c = match_change(st, n_changes, &j, e);
                        if (!c || e->data == 0)
                                continue;
                        ev = change_failed(st, c, e->data);
                } else if (e->filter == EVFILT_READ || e->filter == EVFILT_WRITE) {
                        /* fd < n_reg: only registered numbers have knotes. */
                        ev = e->filter == EVFILT_READ ? LOOP_EVENT_READ : LOOP_EVENT_WRITE;
                        if (!(st->reg[fd] & ev))
                                continue;
                        /* A socket error, or nobody left to read what we
                         * write (poll's POLLERR on a pipe): both wake. */
                        if (e->flags & EV_EOF && (e->fflags != 0 || ev == LOOP_EVENT_WRITE))
                                ev |= LOOP_EVENT_ERROR;
                } else {
                        /* The wake-up: the loop knows our descriptor as its own. */
                        ready(ctx, st->kq, LOOP_EVENT_READ);
                        continue;
                }
                if (ev)
                        note(st, &n_touched, fd, ev);
        }
        for (int i = 0; i < n_touched; i++) {
                int fd = st->touched[i];
                uint32_t ev = st->got[fd] & ~GOT_LISTED;

                st->got[fd] = 0;
                if (!(ev & LOOP_EVENT_CLOSED) && st->reg[fd] & REG_DETAILS)
                        ev = details(st, fd, ev);
                ready(ctx, fd, ev);
        }
        for (size_t i = 0; i < st->n_always; i++) {
                int fd = st->always[i];
                if (st->reg[fd] & REG_RW)
                        ready(ctx, fd, st->reg[fd] & REG_RW);
        }
        /* A full list suggests more were waiting: take more next time. */
        if (n == st->cap_events && n < 65536)
                (void) reserve_events(st, 2 * n);
        return n;
}

static int kq_fileno(void *state) {
        return ((struct kq_state *) state)->kq;
}

#ifdef EVFILT_USER
static int kq_wake_setup(void *state) {
        struct kq_state *st = state;
        struct kevent ev;

        EV_SET(&ev, WAKE_IDENT, EVFILT_USER, EV_ADD | EV_CLEAR, 0, 0, 0);
        if (kevent(st->kq, &ev, 1, NULL, 0, NULL) < 0)
                return -errno;
        return st->kq;
}

/* Any thread; the loop may be waiting in kevent() on the same queue. */
static void kq_wake(void *state) {
        struct kevent ev;

        EV_SET(&ev, WAKE_IDENT, EVFILT_USER, 0, NOTE_TRIGGER, 0, 0);
        (void) kevent(((struct kq_state *) state)->kq, &ev, 1, NULL, 0, NULL);
}
#endif

const struct loop_selector_ops loop_selector_kqueue = {
        .name = "kqueue",
        .init = kq_init,
        .free = kq_free,
        .modify = kq_modify,
        .select = kq_select,
        .fileno = kq_fileno,
        .commit = kq_commit,
#ifdef EVFILT_USER
        .wake_setup = kq_wake_setup,
        .wake = kq_wake,
#endif
};
