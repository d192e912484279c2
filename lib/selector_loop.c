/* SPDX-License-Identifier: MIT */
/*
 * The selector loop (asyncio's BaseSelectorEventLoop): readers and writers
 * on top of a readiness backend.
 *
 * Registrations are kept per descriptor in a table indexed by fd (libev's
 * anfds). Changes reach the backend lazily: a changed descriptor is queued
 * and the queue is applied once, right before the next wait, so removing
 * and re-adding a callback in one iteration costs nothing (one MOD at most
 * on epoll, see below). The first registration of a descriptor is the
 * exception: it goes to the backend at once so that a bad descriptor is
 * reported to the caller of loop_add_reader(), as asyncio does.
 *
 * When the last callback of a descriptor is removed, the descriptor may be
 * closed and its number reused before the next wait (accept() returns the
 * lowest free number, so under load it usually is). Such a descriptor is
 * marked "reset": if a callback is added again in the same iteration the
 * backend is told to re-check it, which on epoll is one EPOLL_CTL_ADD (it
 * fails with EEXIST, changing nothing, when the file is still the same).
 * Without that the new file would never be watched.
 *
 * A paused callback (loop_pause_reader) keeps its slot in fdinfo.io but
 * leaves fdinfo.want, so the backend stops watching for it at the next
 * flush. Pausing is not a removal: it never marks the descriptor reset,
 * because the caller promises that the file stays the same until it
 * resumes. Pausing and resuming in one iteration therefore cancel out in
 * the change queue and cost no system call on any backend.
 *
 * A ready descriptor's callback is queued as a plain ready entry: a
 * trampoline (run_reader or run_writer) with the descriptor number as its
 * argument, and a "pending" bit in the fdinfo. Removing or replacing the
 * callback clears the bit, so the queued entry then does nothing (asyncio
 * cancels the queued handle), without a handle per registration or a
 * reference count per event.
 *
 * I/O watchers (loop_add_io, io.c) sit beside readers and writers: a
 * descriptor's watchers are a list (watchers[fd], in the order added),
 * the union of what the enabled ones ask for is fdinfo.watch_want, and the
 * backend watches want | watch_want, changed lazily through the same
 * queue. A descriptor with watchers is "special", like the wake-up one, so
 * its events leave on_ready's fast path by the test that was there
 * already: readers and writers pay nothing for watchers existing. Its
 * watchers are marked with the conditions they asked for and one entry,
 * run_watchers with the descriptor number, runs the marked ones. The
 * first watcher of a descriptor, and one enabled again, has the backend
 * re-check the descriptor (reset), as adding a reader over one does: it
 * costs one failing EPOLL_CTL_ADD when the file is the same, and libev
 * pays the same on every ev_io_start.
 */
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "io.h"
#include "selector.h"

struct fdio {
        loop_io_callback_t cb;  /* NULL: none */
        void *userdata;
};

enum { IO_READ, IO_WRITE, IO_WATCH };  /* index into fdinfo.io; IO_WATCH: the watchers' entry */

enum {
        SPECIAL_WAKE = 1,       /* the loop's own wake-up descriptor */
        SPECIAL_WATCHED = 2,    /* has I/O watchers (enabled or not) */
};

struct fdinfo {
        struct fdio io[2];      /* the reader and the writer, active or paused */
        uint8_t registered;     /* LOOP_EVENT_*: what the backend watches now */
        uint8_t want;           /* LOOP_EVENT_*: what it should watch for the reader and writer (or wake) */
        uint8_t watch_want;     /* LOOP_EVENT_*: what the enabled watchers need (ERROR if any) */
        uint8_t pending;        /* 1 << IO_*: its callback (IO_WATCH: its watchers) in the ready queue */
        uint8_t special;        /* SPECIAL_*: its events leave on_ready's fast path */
        bool queued;            /* on the change queue */
        bool reset;             /* all callbacks were removed since the last flush */
        bool dead;              /* reported closed behind our back; cleared by the next add */
};

/* 40 bytes a descriptor: the callbacks and one byte per state. */
_Static_assert(sizeof(struct fdinfo) == 40, "struct fdinfo packs its state into a word");
_Static_assert((LOOP_EVENT_READ | LOOP_EVENT_WRITE | LOOP_EVENT_CLOSED | LOOP_EVENT_STALE | LOOP_EVENT_ERROR |
                LOOP_EVENT_HANGUP) <= UINT8_MAX,
               "the LOOP_EVENT_* masks fit a byte");

struct selector_loop {
        loop_t base;            /* first: a selector loop is a loop */
        loop_selector_t *sel;
        struct fdinfo *fds;
        size_t n_fds;
        int *changes;
        size_t n_changes, cap_changes;
        size_t n_watched;       /* descriptors the backend watches, the wake-up one aside */
        loop_io_t **watchers;   /* per fd: its I/O watchers, first added first (NULL until the first) */
        size_t n_watchers;
        bool embedded;          /* loop_fileno() was asked: an outer loop waits on the backend */
};

static inline struct selector_loop *selector_loop(loop_t *loop) {
        return (struct selector_loop *) loop;
}

static inline unsigned io_index(uint32_t event) {
        return event == LOOP_EVENT_READ ? IO_READ : IO_WRITE;
}

/* Every change of what the backend watches goes through here, so that
 * n_watched stays exact. */
static inline void set_registered(struct selector_loop *sl, struct fdinfo *fi, uint32_t events) {
        sl->n_watched += (events != 0) - (fi->registered != 0);
        fi->registered = events;
}

static int ensure_fd(struct selector_loop *sl, int fd) {
        return loop__fd_table_reserve((void **) &sl->fds, &sl->n_fds, sizeof(*sl->fds), fd);
}

/* May fd be watched by this backend (select: below FD_SETSIZE)? Then make
 * room for it. */
static int reserve_fd(struct selector_loop *sl, int fd) {
        const struct loop_selector_ops *ops = sl->sel->ops;

        if (ops->check_fd) {
                int r = ops->check_fd(sl->sel->state, fd);
                if (r < 0)
                        return r;
        }
        return ensure_fd(sl, fd);
}

static __attribute__((noinline)) int grow_changes(struct selector_loop *sl) {
        size_t cap = sl->cap_changes ? sl->cap_changes * 2 : 64;
        int *changes = realloc(sl->changes, cap * sizeof(*changes));

        if (!changes)
                return -ENOMEM;
        sl->changes = changes;
        sl->cap_changes = cap;
        return 0;
}

static inline int queue_change(struct selector_loop *sl, struct fdinfo *fi, int fd) {
        if (fi->queued)
                return 0;
        if (unlikely(sl->n_changes == sl->cap_changes) && grow_changes(sl) < 0)
                return -ENOMEM;
        sl->changes[sl->n_changes++] = fd;
        fi->queued = true;
        return 0;
}

static inline bool has_callbacks(const struct fdinfo *fi) {
        return fi->io[IO_READ].cb || fi->io[IO_WRITE].cb || (fi->special & SPECIAL_WATCHED);
}

/* Forget both callbacks and disable the watchers; a queued one will not
 * run. */
static void drop_callbacks(struct selector_loop *sl, struct fdinfo *fi, int fd) {
        fi->io[IO_READ] = fi->io[IO_WRITE] = (struct fdio) {};
        fi->want = (fi->special & SPECIAL_WAKE) ? LOOP_EVENT_READ : 0;
        fi->pending = 0;
        if (fi->special & SPECIAL_WATCHED)
                for (loop_io_t *io = sl->watchers[fd]; io; io = io->next)
                        loop__io_lost(io);
        fi->watch_want = 0;
}

/* Apply the queued changes: once per iteration, right before waiting. */
static void flush_changes(struct selector_loop *sl) {
        const struct loop_selector_ops *ops = sl->sel->ops;

        for (size_t i = 0; i < sl->n_changes; i++) {
                int fd = sl->changes[i];
                struct fdinfo *fi = &sl->fds[fd];
                uint32_t w = fi->want | fi->watch_want;
                bool reset = fi->reset && w != 0;

                fi->queued = false;
                fi->reset = false;
                if (w == fi->registered && !reset)
                        continue;
                int r = ops->modify(sl->sel->state, fd, fi->registered, w, reset);
                if (r < 0) {
                        /* The descriptor went bad behind our back (closed while
                         * watched): asyncio would raise in add_reader; here the
                         * add was deferred, so the exception handler hears it. */
                        set_registered(sl, fi, 0);
                        loop__report(&sl->base, "Cannot watch file descriptor", r, NULL, fd);
                        drop_callbacks(sl, fi, fd);
                        continue;
                }
                set_registered(sl, fi, w);
        }
        sl->n_changes = 0;
}

/* Run the callback a ready descriptor queued, unless it was removed or
 * replaced since. The descriptor rides in the userdata word. An error the
 * callback returns is reported by the run loop, which finds the
 * descriptor again through selector_describe(). */
static inline int run_io(loop_t *loop, void *userdata, unsigned which) {
        struct selector_loop *sl = selector_loop(loop);
        int fd = (int) (intptr_t) userdata;
        struct fdinfo *fi = &sl->fds[fd];       /* looked up now: the table may have moved */

        if (unlikely(!(fi->pending & (1u << which)))) {
                loop->n_stale++;
                return 0;
        }
        fi->pending &= ~(1u << which);
        return fi->io[which].cb(loop, fd, fi->io[which].userdata);
}

static int run_reader(loop_t *loop, void *userdata) {
        return run_io(loop, userdata, IO_READ);
}

static int run_writer(loop_t *loop, void *userdata) {
        return run_io(loop, userdata, IO_WRITE);
}

static void on_ready(void *ctx, int fd, uint32_t events);

/*
 * The backend found fd's registration dead: the descriptor was closed
 * behind the loop's back (loop_add_reader(3): remove, then close). Said
 * once, through the exception handler; a closed fd's callbacks are
 * dropped (they could only fail), and the backend lets go of it at the
 * next flush, so the loop blocks again instead of spinning.
 */
static void on_dead(struct selector_loop *sl, int fd, uint32_t events) {
        struct fdinfo *fi = &sl->fds[fd];

        if (events & LOOP_EVENT_STALE) {
                if (fi->dead)
                        return;         /* the closing was reported already */
                loop__report(&sl->base, "Events from a file closed while watched (it lives on elsewhere); "
                             "no longer watched", -EBADF, NULL, fd);
                return;
        }
        if (fi->special & SPECIAL_WAKE)
                return;         /* ours, never closed behind our back */
        drop_callbacks(sl, fi, fd);
        fi->reset = true;
        fi->dead = true;
        /* Without room to queue the removal the next wait reports fd
         * again, and we try again. */
        (void) queue_change(sl, fi, fd);
        loop__report(&sl->base, "File descriptor closed while watched; its callbacks were removed", -EBADF, NULL,
                     fd);
}

/* A callback for fd returned -EBADF and fd is closed (handle.c). */
static void selector_io_closed(loop_t *loop, int fd) {
        struct selector_loop *sl = selector_loop(loop);

        if ((size_t) fd < sl->n_fds && has_callbacks(&sl->fds[fd]))
                on_dead(sl, fd, LOOP_EVENT_CLOSED);
}

/* Run fd's watchers that were marked ready, each once, in the order
 * added; one removed or disabled meanwhile is no longer marked. */
static int run_watchers(loop_t *loop, void *userdata) {
        struct selector_loop *sl = selector_loop(loop);
        int fd = (int) (intptr_t) userdata;
        uint32_t revents;
        unsigned k = 0;
        loop_io_t *io;

        if (!(sl->fds[fd].pending & (1u << IO_WATCH))) {
                loop->n_stale++;
                return 0;
        }
        sl->fds[fd].pending &= ~(1u << IO_WATCH);
        /* The list head is read again after each callback: the table may
         * have moved, the list changed. */
        while ((io = loop__io_take(sl->watchers[fd], &revents))) {
                loop__io_call(loop, io, revents);
                k++;
        }
        loop__io_ran(loop, k);
        return 0;
}

/* LOOP_EVENT_* as the backend reported them, in the watchers' terms. */
static uint32_t io_conditions(uint32_t events) {
        return (events & LOOP_EVENT_READ ? LOOP_IO_READABLE : 0) | (events & LOOP_EVENT_WRITE ? LOOP_IO_WRITABLE : 0) |
               (events & LOOP_EVENT_ERROR ? LOOP_IO_ERROR : 0) | (events & LOOP_EVENT_HANGUP ? LOOP_IO_HANGUP : 0);
}

static void queue_entry(struct selector_loop *sl, struct fdinfo *fi, int fd, unsigned which) {
        static const loop_callback_t run[] = { run_reader, run_writer, run_watchers };

        if (ready_push(&sl->base.ready, run[which], (void *) (intptr_t) fd, NULL) < 0) {
                loop__report(&sl->base, "Cannot queue an I/O callback", -ENOMEM, NULL, fd);
                return;
        }
        fi->pending |= 1u << which;
}

static void queue_watchers(struct selector_loop *sl, struct fdinfo *fi, int fd, uint32_t events) {
        uint32_t cond = io_conditions(events);
        bool any = false;

        for (loop_io_t *io = sl->watchers[fd]; io; io = io->next)
                any |= loop__io_mark(io, cond);
        if (any && !(fi->pending & (1u << IO_WATCH))) {
                queue_entry(sl, fi, fd, IO_WATCH);
                if (!(fi->pending & (1u << IO_WATCH)))
                        for (loop_io_t *io = sl->watchers[fd]; io; io = io->next)
                                io->revents = 0;        /* no entry will run them */
        }
}

/* What leaves on_ready's fast path: a dead registration, the wake-up
 * descriptor, a descriptor with watchers, an error or a hang-up, or no
 * room for two entries (the queue grows). */
static __attribute__((noinline)) void on_ready_slow(struct selector_loop *sl, int fd, uint32_t events) {
        struct fdinfo *fi = &sl->fds[fd];

        if (events & (LOOP_EVENT_CLOSED | LOOP_EVENT_STALE))
                return on_dead(sl, fd, events);
        if (fi->special & SPECIAL_WAKE)
                return loop__threadsafe_drain(&sl->base);
        if (fi->special & SPECIAL_WATCHED)
                queue_watchers(sl, fi, fd, events);
        /* asyncio's mapping for readers and writers: an error or a hang-up
         * wakes both (the backend said only what the kernel said). */
        if (events & (LOOP_EVENT_ERROR | LOOP_EVENT_HANGUP))
                events |= LOOP_EVENT_READ | LOOP_EVENT_WRITE;
        events &= fi->want;
        if (events & LOOP_EVENT_READ)
                queue_entry(sl, fi, fd, IO_READ);
        if (events & LOOP_EVENT_WRITE)
                queue_entry(sl, fi, fd, IO_WRITE);
}

static void on_ready(void *ctx, int fd, uint32_t events) {
        struct selector_loop *sl = ctx;
        struct ready_queue *q = &sl->base.ready;

        /* Unsigned: a negative fd fails the same test. */
        if (unlikely((size_t) fd >= sl->n_fds))
                return;
        /* The common case calls nothing (no registers to save): room for
         * both entries, readiness only, and neither the wake-up descriptor
         * nor one with watchers. */
        struct fdinfo *fi = &sl->fds[fd];
        if (unlikely(fi->special || q->window.end - q->window.tail < 2 ||
                     events > (LOOP_EVENT_READ | LOOP_EVENT_WRITE)))
                return on_ready_slow(sl, fd, events);
        /* want, not io[].cb: a paused callback keeps its slot, and until
         * the next flush the backend may still report its events. */
        events &= fi->want;
        if (events & LOOP_EVENT_READ) {
                *q->window.tail++ = (struct loop__ready_entry) { .cb = run_reader, .userdata = (void *) (intptr_t) fd };
                fi->pending |= 1u << IO_READ;
        }
        if (events & LOOP_EVENT_WRITE) {
                *q->window.tail++ = (struct loop__ready_entry) { .cb = run_writer, .userdata = (void *) (intptr_t) fd };
                fi->pending |= 1u << IO_WRITE;
        }
}

static bool selector_describe(const loop_t *loop, const struct loop__ready_entry *e, struct loop__entry_info *info) {
        const struct selector_loop *sl = (const struct selector_loop *) loop;
        unsigned which;

        if (e->cb == run_reader)
                which = IO_READ;
        else if (e->cb == run_writer)
                which = IO_WRITE;
        else if (e->cb == run_watchers)
                which = IO_WATCH;
        else
                return false;
        int fd = (int) (intptr_t) e->userdata;
        const struct fdinfo *fi = &sl->fds[fd];
        if (which == IO_WATCH) {
                /* Named after the first watcher it will run. */
                const loop_io_t *io = sl->watchers[fd];
                while (io && !io->revents)
                        io = io->next;
                *info = (struct loop__entry_info) {
                        .fn = io ? (void *) (uintptr_t) io->cb : (void *) (uintptr_t) run_watchers,
                        .userdata = io ? io->userdata : NULL,
                        .fd = fd,
                        .cancelled = !(fi->pending & (1u << IO_WATCH)),
                };
                return true;
        }
        *info = (struct loop__entry_info) {
                .fn = (void *) (uintptr_t) fi->io[which].cb,
                .userdata = fi->io[which].userdata,
                .fd = fd,
                .cancelled = !(fi->pending & (1u << which)),
        };
        return true;
}

static int selector_poll(loop_t *loop, int64_t timeout_ns) {
        struct selector_loop *sl = selector_loop(loop);

        flush_changes(sl);
        /*
         * A loop that must not wait and watches nothing but its wake-up
         * descriptor has nothing to ask the kernel: what a wait would
         * report, the call_soon_threadsafe ring says directly, and
         * iterate() reads it after every wait. A run of call_soon
         * callbacks then costs no system call per iteration.
         * Not when embedded: a wake-up written after this check would keep
         * the outer loop's poll on loop_fileno() readable, and only a wait
         * reads it.
         */
        if (timeout_ns == 0 && sl->n_watched == 0 && !sl->embedded)
                return 0;
        return sl->sel->ops->select(sl->sel->state, timeout_ns, on_ready, sl);
}

static void selector_close(loop_t *loop) {
        struct selector_loop *sl = selector_loop(loop);

        /* Watchers outlive the loop as detached objects while the caller
         * holds them; the loop's own go now. */
        for (size_t fd = 0; fd < sl->n_watchers; fd++)
                while (sl->watchers[fd]) {
                        loop_io_t *io = sl->watchers[fd];
                        sl->watchers[fd] = io->next;
                        loop__io_loop_closed(io);
                }
        free(sl->watchers);
        sl->watchers = NULL;
        sl->n_watchers = 0;
        free(sl->fds);
        free(sl->changes);
        sl->fds = NULL;
        sl->changes = NULL;
        sl->n_fds = sl->n_changes = sl->cap_changes = 0;
        /* The selector stays marked as used: its kernel object still holds
         * this loop's registrations (they are never removed one by one, see
         * selector.h), so it cannot serve another loop. */
        sl->sel = loop_selector_unref(sl->sel);
}

static uint64_t selector_count_fds(loop_t *loop) {
        struct selector_loop *sl = selector_loop(loop);
        uint64_t n = 0;

        for (size_t fd = 0; fd < sl->n_fds; fd++)
                n += has_callbacks(&sl->fds[fd]);
        return n;
}

static void selector_dump(loop_t *loop, FILE *f) {
        struct selector_loop *sl = selector_loop(loop);

        for (size_t fd = 0; fd < sl->n_fds; fd++) {
                const struct fdinfo *fi = &sl->fds[fd];
                const struct fdio *rd = &fi->io[IO_READ], *wr = &fi->io[IO_WRITE];
                if (!has_callbacks(fi))
                        continue;
                fprintf(f, "fd %zu registered=%s%s", fd, fi->registered & LOOP_EVENT_READ ? "r" : "",
                        fi->registered & LOOP_EVENT_WRITE ? "w" : "");
                if (rd->cb)
                        fprintf(f, " reader=%p reader_userdata=%p%s", (void *) (uintptr_t) rd->cb, rd->userdata,
                                fi->want & LOOP_EVENT_READ ? "" : " reader_paused");
                if (wr->cb)
                        fprintf(f, " writer=%p writer_userdata=%p%s", (void *) (uintptr_t) wr->cb, wr->userdata,
                                fi->want & LOOP_EVENT_WRITE ? "" : " writer_paused");
                if (fi->special & SPECIAL_WATCHED)
                        for (const loop_io_t *io = sl->watchers[fd]; io; io = io->next)
                                fprintf(f, " io=%p io_userdata=%p io_events=%s%s%s", (void *) (uintptr_t) io->cb,
                                        io->userdata, io->events & LOOP_IO_READABLE ? "r" : "",
                                        io->events & LOOP_IO_WRITABLE ? "w" : "", io->enabled ? "" : " io_disabled");
                fputc('\n', f);
        }
}

static void selector_prepare(loop_t *loop) {
        struct selector_loop *sl = selector_loop(loop);

        flush_changes(sl);
        if (sl->sel->ops->commit)
                sl->sel->ops->commit(sl->sel->state);
}

static int selector_fileno(loop_t *loop) {
        struct selector_loop *sl = selector_loop(loop);

        if (!sl->sel->ops->fileno)
                return -EOPNOTSUPP;
        sl->embedded = true;
        return sl->sel->ops->fileno(sl->sel->state);
}

static int add_io(loop_t *loop, int fd, uint32_t event, loop_io_callback_t cb, void *userdata);
static int remove_io(loop_t *loop, int fd, uint32_t event);
static int pause_io(loop_t *loop, int fd, uint32_t event, bool pause);
static int selector_io_attach(loop_t *loop, loop_io_t *io);
static int selector_io_update(loop_t *loop, loop_io_t *io, uint32_t old_events, bool was_enabled);
static void selector_io_detach(loop_t *loop, loop_io_t *io);

const struct loop__impl loop__selector_impl = {
        .poll = selector_poll,
        .count_fds = selector_count_fds,
        .dump = selector_dump,
        .prepare = selector_prepare,
        .fileno = selector_fileno,
        .close = selector_close,
        .add_io = add_io,
        .remove_io = remove_io,
        .pause_io = pause_io,
        .describe = selector_describe,
        .io_closed = selector_io_closed,
        .io_attach = selector_io_attach,
        .io_update = selector_io_update,
        .io_detach = selector_io_detach,
};

/* The backend's own wake-up (kqueue), from any thread. The loop holds a
 * reference to the selector for it until its memory goes: a poster may
 * still call this after loop_close() (threadsafe.c). */
static void selector_wake(void *ctx) {
        loop_selector_t *sel = ctx;

        sel->ops->wake(sel->state);
}

static void selector_wake_release(void *ctx) {
        loop_selector_unref(ctx);
}

LOOP_EXPORT int loop_selector_loop_new(loop_selector_t *sel, loop_t **ret) {
        struct selector_loop *sl;
        int r;

        return_if_fail(sel && ret, -EINVAL);
        if (sel->owner)
                return -EBUSY;

        sl = calloc(1, sizeof(*sl));
        if (!sl)
                return -ENOMEM;
        r = loop__init(&sl->base, &loop__selector_impl);
        if (r < 0) {
                free(sl);
                return r;
        }
        sl->sel = loop_selector_ref(sel);
        sel->owner = &sl->base;

        /* The backend's own wake-up if it has one (kqueue), else the
         * loop's descriptor, watched like any other. */
        int wfd = sel->ops->wake_setup ? sel->ops->wake_setup(sel->state) : -ENOSYS;
        if (wfd >= 0)
                loop__threadsafe_use_wake(&sl->base, selector_wake, selector_wake_release, loop_selector_ref(sel));
        else
                wfd = sl->base.wake_read_fd;
        r = ensure_fd(sl, wfd);
        if (r >= 0 && !sl->base.wake)
                r = sel->ops->modify(sel->state, wfd, 0, LOOP_EVENT_READ, 0);
        if (r < 0) {
                loop_unref(&sl->base);
                return r;
        }
        sl->fds[wfd].special = SPECIAL_WAKE;
        sl->fds[wfd].want = LOOP_EVENT_READ;
        sl->fds[wfd].registered = LOOP_EVENT_READ;
        *ret = &sl->base;
        return 0;
}

LOOP_EXPORT loop_selector_t *loop_get_selector(loop_t *loop) {
        if (!loop || loop->impl != &loop__selector_impl)
                return NULL;
        return selector_loop(loop)->sel;
}

/* Make the backend watch want for fd, where fd had a callback's events
 * added: at once if the backend watches nothing for it yet, so a bad
 * descriptor is the caller's error; else at the next flush. */
static LOOP_ALWAYS_INLINE int watch(struct selector_loop *sl, struct fdinfo *fi, int fd, uint32_t want) {
        uint32_t all = want | fi->watch_want;
        int r;

        if (fi->registered == 0) {
                r = sl->sel->ops->modify(sl->sel->state, fd, 0, all, 0);
                if (r < 0)
                        return r;
                set_registered(sl, fi, all);
        } else if (all != fi->registered || fi->reset) {
                r = queue_change(sl, fi, fd);
                if (r < 0)
                        return r;
        }
        fi->want = want;
        return 0;
}

/* fd's events were taken out of fi->want: tell the backend at the next
 * flush or, with no room to defer the change, now. Either way no
 * callback that left want runs again (on_ready looks at want). */
static LOOP_ALWAYS_INLINE void unwatch(struct selector_loop *sl, struct fdinfo *fi, int fd) {
        if (queue_change(sl, fi, fd) < 0) {
                uint32_t w = fi->want | fi->watch_want;
                if (w != fi->registered && sl->sel->ops->modify(sl->sel->state, fd, fi->registered, w, 0) >= 0)
                        set_registered(sl, fi, w);
        }
}

static int add_io(loop_t *loop, int fd, uint32_t event, loop_io_callback_t cb, void *userdata) {
        struct selector_loop *sl = selector_loop(loop);
        int r;

        if (fd < 0)
                return -EBADF;
        r = reserve_fd(sl, fd);
        if (r < 0)
                return r;

        struct fdinfo *fi = &sl->fds[fd];
        if (fi->special & SPECIAL_WAKE)
                return -EBUSY;
        /* Adding over a callback is asyncio's replace, but also what a
         * caller does who closed fd without removing it and got the number
         * again for another file: have the backend check which file it
         * watches (on epoll one ADD, which fails with EEXIST for the same
         * file), or the new file would never be watched. */
        if (fi->io[io_index(event)].cb)
                fi->reset = true;
        /* A paused callback is replaced, and the new one is active. */
        r = watch(sl, fi, fd, fi->want | event);
        if (r < 0)
                return r;

        /* Replacing a callback, as asyncio does: the old one is cancelled,
         * so it does not run even if it was already queued. */
        unsigned which = io_index(event);
        fi->io[which] = (struct fdio) { .cb = cb, .userdata = userdata };
        fi->pending &= ~(1u << which);
        fi->dead = false;
        return 0;
}

static int remove_io(loop_t *loop, int fd, uint32_t event) {
        struct selector_loop *sl = selector_loop(loop);
        unsigned which = io_index(event);

        if (fd < 0)
                return -EBADF;
        if ((size_t) fd >= sl->n_fds)
                return 0;

        struct fdinfo *fi = &sl->fds[fd];
        if (!fi->io[which].cb)          /* none, active or paused (never on the wake-up fd) */
                return 0;
        fi->io[which] = (struct fdio) {};
        fi->want &= ~event;
        fi->pending &= ~(1u << which);
        /* Only a descriptor nobody holds a callback on may be closed and
         * reused: a paused one, or a watcher, is still the caller's. */
        if (!has_callbacks(fi))
                fi->reset = true;
        unwatch(sl, fi, fd);
        return 1;
}

static int pause_io(loop_t *loop, int fd, uint32_t event, bool pause) {
        struct selector_loop *sl = selector_loop(loop);
        unsigned which = io_index(event);

        if (fd < 0)
                return -EBADF;
        if ((size_t) fd >= sl->n_fds || !sl->fds[fd].io[which].cb)
                return -ENOENT;

        struct fdinfo *fi = &sl->fds[fd];
        if (!!(fi->want & event) != pause)
                return 0;               /* already so */
        if (!pause)
                /* No reset check, unlike add_io: the file is the same one
                 * (loop_resume_reader's contract), so a pause undone
                 * before the next flush leaves nothing to change. */
                return watch(sl, fi, fd, fi->want | event);
        fi->want &= ~event;
        /* asyncio's pause_reading removes the reader: a run already queued
         * is cancelled. */
        fi->pending &= ~(1u << which);
        unwatch(sl, fi, fd);
        return 0;
}

/* ---- I/O watchers (io.c) ---------------------------------------------------- */

/* The union of what fd's enabled watchers need, as LOOP_EVENT_*. */
static uint8_t watchers_want(struct selector_loop *sl, int fd) {
        uint32_t w = 0;

        for (const loop_io_t *io = sl->watchers[fd]; io; io = io->next)
                w |= loop__io_wants(io);
        return (uint8_t) ((w & LOOP_IO_READABLE ? LOOP_EVENT_READ : 0) | (w & LOOP_IO_WRITABLE ? LOOP_EVENT_WRITE : 0) |
                          (w ? LOOP_EVENT_ERROR : 0));
}

/*
 * fd's watchers changed: have the backend watch the new union. At once if
 * it watches nothing for fd yet (a bad descriptor is then the caller's
 * error, as for readers), else at the next flush. recheck: a watcher
 * starts watching, so the backend checks which file the number names
 * (see the top of the file).
 */
static int rewatch(struct selector_loop *sl, int fd, bool recheck) {
        struct fdinfo *fi = &sl->fds[fd];
        uint8_t old = fi->watch_want;
        int r;

        fi->watch_want = watchers_want(sl, fd);
        uint32_t all = fi->want | fi->watch_want;
        if (fi->registered == 0 && all != 0) {
                r = sl->sel->ops->modify(sl->sel->state, fd, 0, all, 0);
                if (r < 0) {
                        fi->watch_want = old;
                        return r;
                }
                set_registered(sl, fi, all);
                return 0;
        }
        if (recheck && all != 0)
                fi->reset = true;
        if (!has_callbacks(fi))
                fi->reset = true;       /* the last one went: the number may be reused */
        if (all == fi->registered && !fi->reset)
                return 0;
        unwatch(sl, fi, fd);
        return 0;
}

static int selector_io_attach(loop_t *loop, loop_io_t *io) {
        struct selector_loop *sl = selector_loop(loop);
        int fd = io->fd;
        int r;

        r = reserve_fd(sl, fd);
        if (r < 0)
                return r;
        r = loop__fd_table_reserve((void **) &sl->watchers, &sl->n_watchers, sizeof(*sl->watchers), fd);
        if (r < 0)
                return r;
        struct fdinfo *fi = &sl->fds[fd];
        if (fi->special & SPECIAL_WAKE)
                return -EBUSY;

        /* Last on the list: watchers of a descriptor run in the order added. */
        loop_io_t *last = sl->watchers[fd];
        while (last && last->next)
                last = last->next;
        io->prev = last;
        io->next = NULL;
        *(last ? &last->next : &sl->watchers[fd]) = io;
        uint8_t special = fi->special;
        fi->special |= SPECIAL_WATCHED;
        r = rewatch(sl, fd, true);
        if (r < 0) {
                *(last ? &last->next : &sl->watchers[fd]) = NULL;
                fi->special = special;
                return r;
        }
        fi->dead = false;
        return 0;
}

static int selector_io_update(loop_t *loop, loop_io_t *io, uint32_t old_events, bool was_enabled) {
        struct selector_loop *sl = selector_loop(loop);
        bool starts = io->enabled && !was_enabled;
        int r;

        (void) old_events;
        r = rewatch(sl, io->fd, starts);
        if (r >= 0 && starts)
                sl->fds[io->fd].dead = false;   /* a new closing is news again */
        return r;
}

static void selector_io_detach(loop_t *loop, loop_io_t *io) {
        struct selector_loop *sl = selector_loop(loop);
        int fd = io->fd;

        if (io->prev)
                io->prev->next = io->next;
        else
                sl->watchers[fd] = io->next;
        if (io->next)
                io->next->prev = io->prev;
        io->prev = io->next = NULL;
        if (!sl->watchers[fd])
                sl->fds[fd].special &= (uint8_t) ~SPECIAL_WATCHED;
        /* In a fork child the backend is the parent's too: memory only. */
        if (loop__inherited(loop))
                return;
        (void) rewatch(sl, fd, false);
}
