/* SPDX-License-Identifier: MIT */
/*
 * The epoll selector (Linux).
 *
 * Quirks this file deals with:
 * - epoll watches open file descriptions, keyed by (fd number, file). Closing
 *   the last descriptor of a file removes it from the set silently, so a
 *   later EPOLL_CTL_MOD/DEL on that number fails with ENOENT or EBADF; a
 *   removal tolerates both, and a re-check (reset) after a possible
 *   close-and-reuse is a MOD that falls back to ADD.
 * - If the file lives on in a dup() or a fork child, its registration lives
 *   on too, keyed by a number that is closed or names another file, so it
 *   can no longer be deleted, and it reports events, level-triggered, for
 *   ever: the loop would never block again. Every registration therefore
 *   carries a generation in its event data (bumped by each ADD and each
 *   removal); an event whose generation is not the number's current one
 *   comes from such a dead registration, and the only way to be rid of it
 *   is a new epoll instance with the live registrations (libev rebuilds
 *   the same way after fork). It takes the old instance's number (dup3),
 *   so loop_fileno() stays valid. The loop hears of it once (STALE), and
 *   of any number found closed while re-adding (CLOSED).
 * - Regular files and directories cannot be watched: EPOLL_CTL_ADD fails
 *   with EPERM. poll and select call them always ready, and a program
 *   must not work on one selector and fail on another, so they are kept
 *   apart and reported ready after every wait (libev does the same); an
 *   eventfd left readable sits in the set meanwhile, so the wait does not
 *   block and loop_fileno() polls readable.
 * - The epoll instance is shared with a fork child. Freeing it only closes
 *   our descriptor and never removes registrations one by one, so a child
 *   that closes its inherited loop leaves the parent's registrations intact.
 * - EPOLLERR and EPOLLHUP are reported whatever the mask, so a registration
 *   with no events at all (EPOLL_CTL_ADD with 0) is what a watcher that
 *   asks for neither readiness needs (ERROR in the loop's mask, see
 *   selector.h). A change of ERROR alone is still a MOD: the event data
 *   carries the whole tag, which the wait compares.
 * - epoll_wait takes milliseconds; epoll_pwait2 (Linux 5.11) takes a
 *   timespec. The latter is used for timeouts that are not whole
 *   milliseconds, so a timer is not late by up to a millisecond; the
 *   former's timeout is rounded up, never down, so
 *   we do not wake early and spin.
 */
#include <fcntl.h>
#include <stdbool.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "internal.h"
#include "selector.h"

struct epoll_state {
        int fd;
        bool no_pwait2;
        int n_events;
        struct epoll_event *events;
        /* Per fd: the generation (bits 5 and up), TAG_ALWAYS, and what is
         * watched (TAG_EVENTS: LOOP_EVENT_READ, WRITE, ERROR). Event data
         * is tag << 32 | fd. */
        uint32_t *tag;
        size_t n_tag;
        int stale;              /* an fd a dead registration reported this wait, or -1 */
        int *always;            /* fds of files epoll refuses: always ready */
        size_t n_always, cap_always;
        int busy_fd;            /* a readable eventfd, in the set while there are some */
        unsigned verify_in;     /* events until the next check of a registration's file */
        uint32_t seed;          /* of the checks' spacing */
};

#define TAG_RW (LOOP_EVENT_READ | LOOP_EVENT_WRITE)
#define TAG_EVENTS (TAG_RW | LOOP_EVENT_ERROR)
#define TAG_ALWAYS UINT32_C(4)  /* always ready, not in the epoll set */
#define TAG_GEN UINT32_C(32)
_Static_assert((TAG_EVENTS & TAG_ALWAYS) == 0 && TAG_EVENTS < TAG_GEN && TAG_ALWAYS < TAG_GEN,
               "epoll.c: the tag's fields overlap");

/* busy_fd's event data: its own number, whose tag stays 0, and a tag that
 * is not 0, so the check of every event sends it off the fast path. */
#define BUSY_DATA(fd) ((uint64_t) UINT32_MAX << 32 | (uint32_t) (fd))

static int reserve_tag(struct epoll_state *st, int fd) {
        return loop__fd_table_reserve((void **) &st->tag, &st->n_tag, sizeof(*st->tag), fd);
}

/* The kernel's mask for LOOP_EVENT_* (ERROR needs none). */
static uint32_t epoll_mask(uint32_t events) {
        return (events & LOOP_EVENT_READ ? EPOLLIN : 0) | (events & LOOP_EVENT_WRITE ? EPOLLOUT : 0);
}

static struct epoll_event event_of(const struct epoll_state *st, int fd) {
        uint32_t t = st->tag[fd];

        return (struct epoll_event) {
                .events = epoll_mask(t),
                .data.u64 = (uint64_t) t << 32 | (uint32_t) fd,
        };
}

static int epoll_init(void **ret) {
        struct epoll_state *st = calloc(1, sizeof(*st));

        if (!st)
                return -ENOMEM;
        st->fd = epoll_create1(EPOLL_CLOEXEC);
        if (st->fd < 0) {
                int r = -errno;
                free(st);
                return r;
        }
        st->stale = -1;
        st->busy_fd = -1;
        st->seed = (uint32_t) (uintptr_t) st;
        st->verify_in = 64;
        st->n_events = 64;
        st->events = malloc(st->n_events * sizeof(*st->events));
        if (!st->events) {
                close(st->fd);
                free(st);
                return -ENOMEM;
        }
        *ret = st;
        return 0;
}

static void epoll_free(void *state) {
        struct epoll_state *st = state;

        close(st->fd);
        if (st->busy_fd >= 0)
                close(st->busy_fd);
        free(st->events);
        free(st->tag);
        free(st->always);
        free(st);
}

/* A file epoll cannot watch (EPERM: a regular file, a directory) is
 * always ready, as poll(2) and select(2) say of it. */
static int always_add(struct epoll_state *st, int fd) {
        if (st->n_always == st->cap_always) {
                size_t cap = st->cap_always ? 2 * st->cap_always : 8;
                int *a = realloc(st->always, cap * sizeof(*a));
                if (!a)
                        return -ENOMEM;
                st->always = a;
                st->cap_always = cap;
        }
        if (st->n_always == 0) {
                /* An eventfd left readable keeps the epoll fd readable too,
                 * so waits return at once and an outer loop polling
                 * loop_fileno() wakes up. */
                if (st->busy_fd < 0) {
                        int bfd = eventfd(1, EFD_CLOEXEC | EFD_NONBLOCK);
                        if (bfd < 0)
                                return -errno;
                        int r = reserve_tag(st, bfd);
                        if (r < 0) {
                                close(bfd);
                                return r;
                        }
                        st->busy_fd = bfd;
                }
                struct epoll_event ev = { .events = EPOLLIN, .data.u64 = BUSY_DATA(st->busy_fd) };
                if (epoll_ctl(st->fd, EPOLL_CTL_ADD, st->busy_fd, &ev) < 0 && errno != EEXIST)
                        return -errno;
        }
        st->always[st->n_always++] = fd;
        return 0;
}

static void always_remove(struct epoll_state *st, int fd) {
        for (size_t i = 0; i < st->n_always; i++)
                if (st->always[i] == fd) {
                        st->always[i] = st->always[--st->n_always];
                        break;
                }
        if (st->n_always == 0 && st->busy_fd >= 0)
                (void) epoll_ctl(st->fd, EPOLL_CTL_DEL, st->busy_fd, NULL);
}

/* A change epoll refused (errno): the registration is what it was, unless
 * the number is closed (EBADF). Then a registration it had lives on only
 * if a dup() or a child keeps the file, and can no longer be deleted: a
 * new generation makes its events stale, so that the set is rebuilt
 * instead of returning them to every wait. */
static int failed(struct epoll_state *st, int fd, uint32_t old_tag) {
        int r = -errno;

        st->tag[fd] = r == -EBADF ? (old_tag & ~(TAG_EVENTS | TAG_ALWAYS)) + TAG_GEN : old_tag;
        return r;
}

static int epoll_modify(void *state, int fd, uint32_t old_events, uint32_t new_events, int reset) {
        struct epoll_state *st = state;
        struct epoll_event ev;
        int r = reserve_tag(st, fd);

        if (r < 0)
                return r;
        uint32_t old_tag = st->tag[fd];
        if (old_tag & TAG_ALWAYS) {
                /* Not in the epoll set. A re-check (reset) asks epoll
                 * again: the number may name a pollable file now. */
                if (new_events != 0 && !reset) {
                        st->tag[fd] = (old_tag & ~TAG_EVENTS) | new_events;
                        return 0;
                }
                always_remove(st, fd);
                old_tag = (old_tag & ~(TAG_EVENTS | TAG_ALWAYS)) + TAG_GEN;
                st->tag[fd] = old_tag;
                if (new_events == 0)
                        return 0;
                old_events = 0;         /* an addition from here on */
        }
        if (new_events == 0) {
                /* Already gone if the descriptor was closed: that is fine.
                 * If the file lives on elsewhere, its registration does
                 * too, and the new generation tells its events apart. */
                st->tag[fd] = (old_tag & ~TAG_EVENTS) + TAG_GEN;
                if (epoll_ctl(st->fd, EPOLL_CTL_DEL, fd, &ev) < 0 && errno != ENOENT && errno != EBADF)
                        return -errno;
                return 0;
        }
        /*
         * A re-check with an unchanged mask (reset) is an ADD: it succeeds if
         * the number now names a file epoll does not watch (closed and
         * reused), and fails with EEXIST, changing nothing, if it is still
         * the same file. A failing ADD costs half a MOD on Linux 6.x, which
         * is what makes remove-then-add cheap (libev does the same).
         */
        bool same_mask = reset && old_events == new_events;
        int op = old_events == 0 || same_mask ? EPOLL_CTL_ADD : EPOLL_CTL_MOD;
        /* A new registration gets a new generation; a MOD keeps it. */
        st->tag[fd] = (op == EPOLL_CTL_ADD ? (old_tag & ~TAG_EVENTS) + TAG_GEN : old_tag & ~TAG_EVENTS) | new_events;
        ev = event_of(st, fd);
        r = epoll_ctl(st->fd, op, fd, &ev);
        if (r < 0 && op == EPOLL_CTL_ADD && errno == EEXIST) {
                if (same_mask) {
                        st->tag[fd] = old_tag;  /* the same registration goes on */
                        return 0;
                }
                op = EPOLL_CTL_MOD;     /* still registered through a surviving dup */
                r = epoll_ctl(st->fd, op, fd, &ev);
        } else if (r < 0 && op == EPOLL_CTL_MOD && errno == ENOENT) {
                /* The file was closed (and the number maybe reused). */
                op = EPOLL_CTL_ADD;
                st->tag[fd] += TAG_GEN;
                ev = event_of(st, fd);
                r = epoll_ctl(st->fd, op, fd, &ev);
        }
        if (r == 0)
                return 0;
        if (errno == EPERM && (op == EPOLL_CTL_ADD || reset)) {
                /* Was a pollable file's registration: it is not any more. */
                if (old_events != 0)
                        (void) epoll_ctl(st->fd, EPOLL_CTL_DEL, fd, &ev);
                r = always_add(st, fd);
                if (r == 0) {
                        st->tag[fd] |= TAG_ALWAYS;
                        return 0;
                }
                st->tag[fd] = old_tag;
                return r;
        }
        return failed(st, fd, old_tag);
}

/*
 * Now and then (every 32 to 95 events, spaced at random so that no fd is
 * always skipped), the registration an event came from is checked: a MOD
 * of the number with what it already has succeeds if the number still
 * names the registered file. ENOENT means it names another file: the one
 * registered was closed behind our back and lives on in a dup() or a
 * child, while the callback is for the number, whose new file nobody
 * watches. Its level-triggered events would run the callback on every
 * iteration for ever, and nothing else would tell. Caught here, it is
 * dropped by a rebuild within about a hundred events (which watches the
 * new file, and reports it once); the check costs one system call per
 * 64 events on average.
 */
static __attribute__((noinline)) bool registration_dead(struct epoll_state *st, int fd) {
        st->seed = st->seed * 1103515245u + 12345u;
        st->verify_in = 32 + (st->seed >> 26);
        if (!(st->tag[fd] & TAG_EVENTS) || (st->tag[fd] & TAG_ALWAYS))
                return false;
        struct epoll_event ev = event_of(st, fd);
        if (epoll_ctl(st->fd, EPOLL_CTL_MOD, fd, &ev) == 0 || (errno != ENOENT && errno != EBADF))
                return false;
        /* Its events become stale; the rebuild adds the number's file. */
        st->tag[fd] += TAG_GEN;
        st->stale = fd;
        return true;
}

/*
 * Drop dead registrations (see the top of the file): a new instance with
 * the live ones, under the old number. A number that can no longer be
 * added (closed: EBADF; another kind of file now: EPERM) is CLOSED.
 */
static __attribute__((noinline)) void rebuild(struct epoll_state *st, loop_selector_ready_t ready, void *ctx) {
        int stale_fd = st->stale;
        int nfd = epoll_create1(EPOLL_CLOEXEC);

        st->stale = -1;
        if (nfd < 0)
                return;         /* tried again at the next stale event */
        if (st->n_always > 0) {
                struct epoll_event ev = { .events = EPOLLIN, .data.u64 = BUSY_DATA(st->busy_fd) };
                (void) epoll_ctl(nfd, EPOLL_CTL_ADD, st->busy_fd, &ev);
        }
        for (size_t fd = 0; fd < st->n_tag; fd++) {
                if (!(st->tag[fd] & TAG_EVENTS) || (st->tag[fd] & TAG_ALWAYS))
                        continue;
                struct epoll_event ev = event_of(st, (int) fd);
                if (epoll_ctl(nfd, EPOLL_CTL_ADD, (int) fd, &ev) < 0) {
                        st->tag[fd] = (st->tag[fd] & ~TAG_EVENTS) + TAG_GEN;
                        ready(ctx, (int) fd, LOOP_EVENT_CLOSED);
                }
        }
        if (dup3(nfd, st->fd, O_CLOEXEC) < 0) {
                close(nfd);
                return;
        }
        close(nfd);
        ready(ctx, stale_fd, LOOP_EVENT_STALE);
}

static int epoll_wait_ns(struct epoll_state *st, int64_t timeout_ns) {
#ifdef HAVE_EPOLL_PWAIT2
        /* Only a timeout that milliseconds would round needs pwait2, which
         * costs ~100 ns more per call than epoll_wait here. */
        if (timeout_ns % 1000000 != 0 && timeout_ns > 0 && !st->no_pwait2) {
                struct timespec ts = {
                        .tv_sec = timeout_ns / 1000000000,
                        .tv_nsec = timeout_ns % 1000000000,
                };
                int n = epoll_pwait2(st->fd, st->events, st->n_events, timeout_ns < 0 ? NULL : &ts, NULL);
                if (n >= 0 || errno != ENOSYS)
                        return n;
                /* An older kernel than the C library: fall back for good. */
                st->no_pwait2 = true;
        }
#endif
        return epoll_wait(st->fd, st->events, st->n_events, loop__timeout_ms(timeout_ns));
}

static int epoll_select(void *state, int64_t timeout_ns, loop_selector_ready_t ready, void *ctx) {
        struct epoll_state *st = state;
        int n = epoll_wait_ns(st, timeout_ns);

        if (n < 0)
                return errno == EINTR ? 0 : -errno;
        for (int i = 0; i < n; i++) {
                uint32_t e = st->events[i].events, ev = 0;
                uint64_t data = st->events[i].data.u64;
                int fd = (int) (uint32_t) data;
                /* fd < n_tag: the data is ours, written after reserve_tag(). */
                if (unlikely(st->tag[fd] != (uint32_t) (data >> 32))) {
                        if (data != BUSY_DATA(st->busy_fd))
                                st->stale = fd;
                        continue;
                }
                if (unlikely(--st->verify_in == 0) && registration_dead(st, fd))
                        continue;
                /* What the kernel said; the loop maps errors and hang-ups
                 * to readers and writers the asyncio way. */
                if (e & EPOLLIN)
                        ev |= LOOP_EVENT_READ;
                if (e & EPOLLOUT)
                        ev |= LOOP_EVENT_WRITE;
                if (unlikely(e & (EPOLLERR | EPOLLHUP)))
                        ev |= (e & EPOLLERR ? LOOP_EVENT_ERROR : 0) | (e & EPOLLHUP ? LOOP_EVENT_HANGUP : 0);
                ready(ctx, fd, ev);
        }
        if (unlikely(st->stale >= 0))
                rebuild(st, ready, ctx);
        for (size_t i = 0; i < st->n_always; i++) {
                int fd = st->always[i];
                if (st->tag[fd] & TAG_RW)
                        ready(ctx, fd, st->tag[fd] & TAG_RW);
        }
        /* A full buffer suggests more were waiting: take more next time. */
        if (n == st->n_events && n < 65536) {
                struct epoll_event *events = realloc(st->events, 2 * n * sizeof(*events));
                if (events) {
                        st->events = events;
                        st->n_events = 2 * n;
                }
        }
        return n;
}

static int epoll_fileno(void *state) {
        return ((struct epoll_state *) state)->fd;
}

const struct loop_selector_ops loop_selector_epoll = {
        .name = "epoll",
        .init = epoll_init,
        .free = epoll_free,
        .modify = epoll_modify,
        .select = epoll_select,
        .fileno = epoll_fileno,
};
