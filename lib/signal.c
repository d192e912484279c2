/* SPDX-License-Identifier: MIT */
/*
 * Signal handlers and signal watchers: asyncio's loop.add_signal_handler
 * (one callback per signal per loop, replaced on add) and, beneath it,
 * sd_event_add_signal-style watchers (any number per signal per loop,
 * each an object of its own). Callbacks run in the loop's thread as
 * ordinary callbacks, never in signal context.
 *
 * Why not signalfd: a signalfd only sees a signal that is blocked, and it
 * has to be blocked in every thread of the process, since the kernel hands
 * a process-directed signal to any thread that does not block it, and that
 * thread takes the default action (SIGTERM kills the process, the
 * signalfd never hears of it). A library cannot block signals in threads
 * it did not create, nor in threads created before it was called; sd-event
 * makes this its users' problem. So this file uses the classic self-pipe
 * scheme (libuv, CPython's signal.set_wakeup_fd) with one descriptor per
 * loop:
 *
 * - A process-wide table, indexed by signal number, has SLOTS slots per
 *   signal, one for each loop that handles the signal; a loop holds a
 *   slot while it has at least one watcher for the signal (the asyncio
 *   handler is a watcher too). A slot is the loop's wake-up descriptor
 *   (stored plus one, so that zeroed memory means "free") and a pending
 *   flag. The table also counts the loops per signal and keeps the
 *   disposition that was in place before the first of them: sigaction()
 *   installs ours when the count goes from 0 to 1 and restores the saved
 *   one when it goes back to 0, so one loop letting go never takes the
 *   signal from the others. A loop beyond the SLOTS-th gets -EBUSY: the
 *   handler may only read memory that is never freed, and a fixed array
 *   of atomics is the simplest such memory (libuv's handler walks a
 *   red-black tree of handles instead, under a lock made of a pipe, so
 *   it can block until a thread has finished changing the tree). The
 *   table is changed under a mutex, from the threads that run the loops;
 *   a per-signal high-water mark keeps the handler's walk to the slots
 *   that may be in use.
 *
 * - The sigaction handler is async-signal-safe and touches only lock-free
 *   atomics: for each slot below the mark, it sets the pending flag, then
 *   reads the descriptor and, if the slot is taken, writes to it (an
 *   eventfd increment, or one byte to a pipe; non-blocking, so a full pipe
 *   is simply "already awake"), keeping errno. It runs with every signal
 *   blocked and with SA_RESTART, so the interrupted code sees no EINTR
 *   from the calls that can be restarted. Taking a slot stores the
 *   descriptor, raises the mark, then clears the flag: a flag that
 *   survives the clear was set by a handler that reads the descriptor
 *   afterwards, so a set flag is always followed by a write to its loop
 *   (a flag set on a free slot is cleared by whoever takes it).
 *
 * - The loop watches its descriptor with an ordinary reader while it holds
 *   at least one slot. The reader drains the descriptor first, then swaps
 *   the flag of each slot it holds to 0 and, for those that were set,
 *   queues one call with loop_call_soon that runs the signal's watchers.
 *   The order (flag, then write; drain, then swap) is what makes signals
 *   impossible to lose: a flag set after the swap is followed by a write
 *   after the drain, so the loop looks again. Signals that arrive together
 *   coalesce into one call, but one that arrives while its call is queued
 *   or running gets a call of its own after that one: a burst gives each
 *   loop at least one call, and always one after the last signal.
 *
 * - The call runs the signal's enabled watchers in the order they were
 *   added. Any callback may add, remove, disable or free any watcher, so
 *   the walk keeps no pointer across a callback: each call stamps the
 *   watchers it has visited with a generation number and, after every
 *   callback, starts again from the head for the first unstamped one
 *   (quadratic in the watchers of one signal in one loop, which are few;
 *   no allocation, so it cannot fail). A watcher added during the walk is
 *   born stamped: the signal came before it.
 *
 * - Descriptors versus concurrent handlers: a handler running in another
 *   thread may have read the descriptor just before the loop let go of
 *   the slot. Letting go only clears the slot; the descriptors stay open
 *   until the loop is closed, and the close hook, after letting go of
 *   every slot, waits until no handler is running anywhere (a counter the
 *   handler raises and lowers) before it closes them. A stale write in
 *   between is a harmless spurious wake-up.
 *
 * - Where kqueue exists (macOS, the BSDs), each loop's descriptor is a
 *   kqueue of its own with an EVFILT_SIGNAL event per signal it holds,
 *   watched with the same reader: the kernel counts the signals for it,
 *   so it takes no slot and the handler writes nothing for it. The
 *   handler is still installed, counted per signal as above: EVFILT_SIGNAL
 *   records a signal beside its delivery and does not stop the default
 *   action (SIGTERM would still kill), and it is what the other selectors'
 *   loops of the process hear. The event is added after the handler is
 *   installed and deleted before it is restored.
 *
 * - fork: the child inherits the table, the handlers and the descriptors,
 *   which are shared with the parent's loops; the child's loops are dead
 *   (-ECHILD). An atfork handler therefore gives every signal back in the
 *   child: it empties every slot, which stops the writes to the parent's
 *   descriptors, and restores the dispositions that were in place before
 *   the parent's loops took the signals, so a forked worker dies on
 *   SIGTERM again instead of ignoring it. Closing an inherited loop, or
 *   dropping a watcher of one, then only frees memory: the descriptor
 *   numbers are not closed, since the child may have reused them (they are
 *   close-on-exec).
 *
 * - Windows (win32.c's loop__signal_take): SIGINT only, from the console's
 *   Ctrl-C and Ctrl-Break (SetConsoleCtrlHandler), the others say
 *   EOPNOTSUPP. The handler runs in a thread the system starts for it,
 *   which the atomics above allow; the wake-up pairs are sockets there.
 */
#include <assert.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <unistd.h>
#ifdef ENABLE_KQUEUE
#include <sys/types.h>
#include <sys/event.h>
#include <sys/time.h>
#define SIGNAL_KQUEUE 1
#endif

#include "internal.h"

/* Loops that may handle one signal at once; loop_add_signal(3) says so. */
#define SLOTS 64

/* The signal handler may only use atomics that never take a lock. */
_Static_assert(__atomic_always_lock_free(sizeof(int), 0), "int atomics must be lock-free");
_Static_assert(__atomic_always_lock_free(sizeof(unsigned), 0), "unsigned atomics must be lock-free");

struct loop_signal {
        unsigned n_ref;                 /* the caller's references; a floating watcher has none */
        bool floating;                  /* the loop owns it: freed when removed */
        bool enabled;
        bool closed;                    /* removed because its loop was closed */
        int signum;
        loop_signal_callback_t cb;      /* the asyncio-style handler's, or NULL */
        loop_signal_handler_t handler;  /* a watcher's (loop_add_signal), or NULL */
        void *userdata;
        loop_t *loop;                   /* NULL once removed */
        uint64_t generation;            /* the last walk that visited it */
        loop_signal_t *prev, *next;     /* the signal's watchers in this loop, in order added */
};

/* One signal in one loop. */
struct per_signal {
        int slot;                       /* the loop's slot in the table, -1 when none */
        bool queued;                    /* a run_watchers call is in the ready queue */
        uint64_t generation;            /* of the latest walk */
        loop_signal_t *head, *tail;
        loop_signal_t *handler;         /* the asyncio-style handler (floating), or NULL */
};

struct loop__signals {
        struct loop__close_hook hook;   /* first: the hook is the state */
        loop_t *loop;
        int read_fd, write_fd;          /* the same eventfd on Linux, a pipe elsewhere; a kqueue and -1 */
        bool reading;                   /* the reader on read_fd is registered */
        unsigned n_slots;               /* slots held, over every signal */
        struct per_signal sig[NSIG];
};

/* The counts and saved dispositions; only the threads running loops use them. */
static pthread_mutex_t table_lock = PTHREAD_MUTEX_INITIALIZER;
static struct {
        unsigned loops;                 /* slots taken; 0: the previous disposition is in force */
        loop__sig_saved_t previous;     /* valid while loops > 0 */
} table[NSIG];

/* What the signal handler reads: lock-free atomics only, never freed. */
static struct {
        int wake;                       /* the loop's write_fd + 1; 0: the slot is free */
        int pending;                    /* the signal arrived since the loop last looked */
} slots[NSIG][SLOTS];
static unsigned slots_used[NSIG];       /* every taken slot is below this mark */
static unsigned in_handler;             /* handlers running now, in any thread */

static pthread_once_t init_once = PTHREAD_ONCE_INIT;
static int init_error;

static void on_signal(int signum) {
        int saved_errno = errno;

        __atomic_add_fetch(&in_handler, 1, __ATOMIC_SEQ_CST);
        if (signum > 0 && signum < NSIG) {
                unsigned n = __atomic_load_n(&slots_used[signum], __ATOMIC_SEQ_CST);

                for (unsigned i = 0; i < n && i < SLOTS; i++) {
                        /* The flag before the read and the write: see the top of the file. */
                        __atomic_store_n(&slots[signum][i].pending, 1, __ATOMIC_SEQ_CST);
                        int fd = __atomic_load_n(&slots[signum][i].wake, __ATOMIC_SEQ_CST) - 1;
                        if (fd >= 0)
                                loop__wakeup_write(fd);
                }
        }
        __atomic_sub_fetch(&in_handler, 1, __ATOMIC_SEQ_CST);
        errno = saved_errno;
}

static void table_prepare_fork(void) {
        /* The child gets a consistent table and a lock nobody holds. */
        pthread_mutex_lock(&table_lock);
}

static void table_parent_after_fork(void) {
        pthread_mutex_unlock(&table_lock);
}

static void table_child_after_fork(void) {
        for (int sig = 1; sig < NSIG; sig++) {
                if (table[sig].loops == 0)
                        continue;
                /* First stop writing to the parent's descriptors, then put
                 * back what was there before the parent's loops took the signal. */
                for (unsigned i = 0; i < SLOTS; i++)
                        __atomic_store_n(&slots[sig][i].wake, 0, __ATOMIC_SEQ_CST);
                __atomic_store_n(&slots_used[sig], 0, __ATOMIC_SEQ_CST);
                loop__signal_give(sig, &table[sig].previous);
                table[sig].loops = 0;
        }
        /* Only the forking thread exists here, and it was not in a handler:
         * a count left by the parent's other threads would hang a close. */
        __atomic_store_n(&in_handler, 0, __ATOMIC_SEQ_CST);
        pthread_mutex_unlock(&table_lock);
}

static void init(void) {
        init_error = -loop__atfork(table_prepare_fork, table_parent_after_fork, table_child_after_fork);
}

static bool valid_signal(int signum) {
        return loop__signal_valid(signum);
}

/* With table_lock held: install the handler if s is the first loop to
 * take signum (posix.c: sigaction(); win32.c: the console's Ctrl-C). */
static int take_disposition(int signum) {
        if (table[signum].loops == 0) {
                int r = loop__signal_take(signum, on_signal, &table[signum].previous);
                if (r < 0)
                        return r;
        }
        table[signum].loops++;
        return 0;
}

/* With table_lock held: the last loop puts back what was there. */
static void give_disposition(int signum) {
        if (--table[signum].loops == 0)
                /* From here on the signal goes where it went before, and a
                 * handler already running only wakes us. */
                loop__signal_give(signum, &table[signum].previous);
}

#ifdef SIGNAL_KQUEUE
/* The slot number of a signal held through the loop's kqueue. */
#define SLOT_KQUEUE SLOTS

static int kqueue_change(struct loop__signals *s, int signum, unsigned short flags) {
        struct kevent ev;

        EV_SET(&ev, (uintptr_t) signum, EVFILT_SIGNAL, flags, 0, 0, 0);
        return kevent(s->read_fd, &ev, 1, NULL, 0, NULL) < 0 ? -errno : 0;
}

static int claim_kqueue(struct loop__signals *s, int signum) {
        pthread_mutex_lock(&table_lock);
        int r = take_disposition(signum);
        if (r == 0) {
                r = kqueue_change(s, signum, EV_ADD);
                if (r < 0)
                        give_disposition(signum);
                else
                        s->sig[signum].slot = SLOT_KQUEUE;
        }
        pthread_mutex_unlock(&table_lock);
        return r;
}
#endif

#ifndef SIGNAL_KQUEUE
/* Give s a slot for signum, installing the handler if it is the first
 * loop; -EBUSY when SLOTS loops have the signal already. */
static int claim_slot(struct loop__signals *s, int signum) {
        unsigned i;
        int r = 0;

        pthread_mutex_lock(&table_lock);
        for (i = 0; i < SLOTS; i++)
                if (__atomic_load_n(&slots[signum][i].wake, __ATOMIC_SEQ_CST) == 0)
                        break;
        if (i == SLOTS) {
                r = -EBUSY;
                goto unlock;
        }
        /* Descriptor, mark, then flag: a flag left from before (a previous
         * owner's, or set on the free slot) must not make the new watchers
         * run, and one set from here on is followed by a write to us. */
        __atomic_store_n(&slots[signum][i].wake, s->write_fd + 1, __ATOMIC_SEQ_CST);
        if (i >= __atomic_load_n(&slots_used[signum], __ATOMIC_SEQ_CST))
                __atomic_store_n(&slots_used[signum], i + 1, __ATOMIC_SEQ_CST);
        __atomic_store_n(&slots[signum][i].pending, 0, __ATOMIC_SEQ_CST);
        r = take_disposition(signum);
        if (r < 0) {
                __atomic_store_n(&slots[signum][i].wake, 0, __ATOMIC_SEQ_CST);
                goto unlock;
        }
        s->sig[signum].slot = (int) i;
unlock:
        pthread_mutex_unlock(&table_lock);
        return r;
}
#endif

static int claim(struct loop__signals *s, int signum) {
#ifdef SIGNAL_KQUEUE
        return claim_kqueue(s, signum);
#else
        return claim_slot(s, signum);
#endif
}

static void release(struct loop__signals *s, int signum) {
        unsigned i = (unsigned) s->sig[signum].slot;

        pthread_mutex_lock(&table_lock);
#ifdef SIGNAL_KQUEUE
        if (i == SLOT_KQUEUE) {
                /* The event first, while the handler still keeps the
                 * default action away. */
                (void) kqueue_change(s, signum, EV_DELETE);
                give_disposition(signum);
                pthread_mutex_unlock(&table_lock);
                s->sig[signum].slot = -1;
                return;
        }
#endif
        give_disposition(signum);
        __atomic_store_n(&slots[signum][i].wake, 0, __ATOMIC_SEQ_CST);
        /* Shorten the handler's walk; a handler still using the old mark
         * only sets the flags of free slots. */
        unsigned n = __atomic_load_n(&slots_used[signum], __ATOMIC_SEQ_CST);
        while (n > 0 && __atomic_load_n(&slots[signum][n - 1].wake, __ATOMIC_SEQ_CST) == 0)
                n--;
        __atomic_store_n(&slots_used[signum], n, __ATOMIC_SEQ_CST);
        pthread_mutex_unlock(&table_lock);
        s->sig[signum].slot = -1;
}

static int run_watchers(loop_t *loop, void *userdata);

/* Queue one call of signum's watchers unless one is queued; false if
 * that failed (reported; the caller keeps the signal for the next try). */
static bool queue_watchers(loop_t *loop, struct per_signal *p) {
        /* A call not run yet will run after this signal: it covers it. */
        if (p->queued)
                return true;
        int r = loop_call_soon(loop, run_watchers, p, NULL);
        if (r < 0) {
                loop__report(loop, "Cannot queue a signal handler", r, NULL, -1);
                return false;
        }
        p->queued = true;
        return true;
}

#ifdef SIGNAL_KQUEUE
static int on_kqueue(loop_t *loop, struct loop__signals *s) {
        static const struct timespec zero;
        struct kevent ev[16];
        int n;

        do {
                n = kevent(s->read_fd, NULL, 0, ev, (int) ELEMENTSOF(ev), &zero);
                for (int i = 0; i < n; i++) {
                        int sig = (int) ev[i].ident;
                        if (ev[i].filter != EVFILT_SIGNAL || sig <= 0 || sig >= NSIG || s->sig[sig].slot < 0)
                                continue;
                        /* Counted by the kernel since the last look: one
                         * call covers them all, as on the other path. A
                         * failure loses this signal (the event is cleared). */
                        (void) queue_watchers(loop, &s->sig[sig]);
                }
        } while (n == (int) ELEMENTSOF(ev));
        return 0;
}
#endif

static int on_wake(loop_t *loop, int fd, void *userdata) {
        struct loop__signals *s = userdata;

#ifdef SIGNAL_KQUEUE
        return on_kqueue(loop, s);
#else
        /* Drain before looking at the flags: see the top of the file. */
        loop__wakeup_drain(fd);
        for (int sig = 1; sig < NSIG; sig++) {
                struct per_signal *p = &s->sig[sig];

                if (p->slot < 0)
                        continue;
                int *pending = &slots[sig][p->slot].pending;
                if (!__atomic_load_n(pending, __ATOMIC_SEQ_CST) || !__atomic_exchange_n(pending, 0, __ATOMIC_SEQ_CST))
                        continue;
                if (!queue_watchers(loop, p))
                        /* Keep the signal: the next wake-up tries again. */
                        __atomic_store_n(pending, 1, __ATOMIC_SEQ_CST);
        }
        return 0;
#endif
}

static int start_reading(struct loop__signals *s) {
        int r;

        if (s->reading)
                return 0;
        r = loop_add_reader(s->loop, s->read_fd, on_wake, s);
        if (r < 0)
                return r;
        s->reading = true;
        return 0;
}

static void stop_reading(struct loop__signals *s) {
        if (!s->reading)
                return;
        /* The descriptor stays open (see the top of the file); a byte left
         * in it only makes the next reader run once for nothing. */
        (void) loop_remove_reader(s->loop, s->read_fd);
        s->reading = false;
}

static int run_watchers(loop_t *loop, void *userdata) {
        struct per_signal *p = userdata;
        uint64_t generation = ++p->generation;
        int signum = (int) (p - loop->signals->sig);

        /* Cleared first: a signal during a callback queues another call. */
        p->queued = false;
        for (;;) {
                loop_signal_t *w;

                /* From the head every time: the last callback may have
                 * changed the list in any way (see the top of the file). */
                for (w = p->head; w; w = w->next)
                        if (w->generation != generation) {
                                w->generation = generation;
                                if (w->enabled)
                                        break;
                        }
                if (!w)
                        return 0;
                /* w may be gone when the callback returns: copy nothing back. */
                int r = w->handler ? w->handler(w, signum, w->userdata) : w->cb(loop, signum, w->userdata);
                if (r < 0)
                        loop__report(loop, "Exception in callback", r, NULL, -1);
        }
}

/* Append w to its signal's watchers in s, taking a slot for the first. */
static int attach(struct loop__signals *s, loop_signal_t *w) {
        struct per_signal *p = &s->sig[w->signum];
        int r;

        if (p->slot < 0) {
                /* The reader first: once the handler is installed, nothing may fail. */
                r = start_reading(s);
                if (r < 0)
                        return r;
                r = claim(s, w->signum);
                if (r < 0) {
                        if (s->n_slots == 0)
                                stop_reading(s);
                        return r;
                }
                s->n_slots++;
        }
        w->loop = s->loop;
        /* Born visited: a walk going on now is for a signal that came before. */
        w->generation = p->generation;
        w->prev = p->tail;
        w->next = NULL;
        if (p->tail)
                p->tail->next = w;
        else
                p->head = w;
        p->tail = w;
        return 0;
}

static void unlink_watcher(struct per_signal *p, loop_signal_t *w) {
        if (w->prev)
                w->prev->next = w->next;
        else
                p->head = w->next;
        if (w->next)
                w->next->prev = w->prev;
        else
                p->tail = w->prev;
        w->prev = w->next = NULL;
        if (p->handler == w)
                p->handler = NULL;
        w->loop = NULL;
}

/* Remove w from its loop; the last watcher of its signal gives the slot back. */
static void detach(loop_signal_t *w) {
        loop_t *loop = w->loop;
        struct loop__signals *s = loop->signals;
        struct per_signal *p = &s->sig[w->signum];

        unlink_watcher(p, w);
        /* In a fork child the atfork handler gave the slots back already. */
        if (!p->head && !loop__inherited(loop)) {
                release(s, w->signum);
                if (--s->n_slots == 0)
                        stop_reading(s);
        }
        /* A call already queued finds no watcher, or only the others. */
        if (w->floating)
                free(w);
}

static void wait_for_handlers(void) {
        /* Handlers are a few instructions long and cannot block. */
        while (__atomic_load_n(&in_handler, __ATOMIC_SEQ_CST) > 0)
                sched_yield();
}

static void close_fds(struct loop__signals *s) {
        loop__wakeup_close(s->read_fd, s->write_fd);
        s->read_fd = s->write_fd = -1;
}

static void signals_close(loop_t *loop, struct loop__close_hook *hook) {
        struct loop__signals *s = (struct loop__signals *) hook;

        /* In a fork child the atfork handler already gave the signals back,
         * and the descriptor numbers may have been reused: memory only. */
        if (!loop__inherited(loop)) {
                for (int sig = 1; sig < NSIG; sig++)
                        if (s->sig[sig].slot >= 0)
                                release(s, sig);
                /* Also after a plain remove: the handler that read the
                 * descriptor before it may still be about to write. */
                wait_for_handlers();
                close_fds(s);
        }
        /* The caller's watchers outlive the loop, removed. */
        for (int sig = 1; sig < NSIG; sig++) {
                struct per_signal *p = &s->sig[sig];

                while (p->head) {
                        loop_signal_t *w = p->head;

                        unlink_watcher(p, w);
                        w->closed = true;
                        if (w->floating)
                                free(w);
                }
        }
        loop->signals = NULL;
        /* The reader's registration and a queued run_watchers are dropped by
         * loop_close() right after this without touching s. */
        free(s);
}

static int get_signals(loop_t *loop, struct loop__signals **ret) {
        struct loop__signals *s;
        int r;

        pthread_once(&init_once, init);
        if (init_error < 0)
                return init_error;
        if (loop->signals) {
                *ret = loop->signals;
                return 0;
        }
        s = calloc(1, sizeof(*s));
        if (!s)
                return -ENOMEM;
        s->loop = loop;
        s->read_fd = s->write_fd = -1;
#ifdef SIGNAL_KQUEUE
        s->read_fd = kqueue();
        r = s->read_fd < 0 ? -errno : 0;
        if (r == 0)
                (void) fcntl(s->read_fd, F_SETFD, FD_CLOEXEC);
#else
        r = loop__wakeup_new(&s->read_fd, &s->write_fd);
#endif
        if (r < 0) {
                free(s);
                return r;
        }
        for (int sig = 0; sig < NSIG; sig++)
                s->sig[sig].slot = -1;
        s->hook.fn = signals_close;
        loop__add_close_hook(loop, &s->hook);
        loop->signals = s;
        *ret = s;
        return 0;
}

/* A new watcher, attached to loop; floating ones belong to the loop. */
static int add_watcher(loop_t *loop, int signum, loop_signal_callback_t cb, loop_signal_handler_t handler,
                       void *userdata, bool floating, loop_signal_t **ret) {
        struct loop__signals *s;
        loop_signal_t *w;
        int r;

        r = get_signals(loop, &s);
        if (r < 0)
                return r;
        w = calloc(1, sizeof(*w));
        if (!w)
                return -ENOMEM;
        *w = (loop_signal_t) {
                .n_ref = floating ? 0 : 1,
                .floating = floating,
                .enabled = true,
                .signum = signum,
                .cb = cb,
                .handler = handler,
                .userdata = userdata,
        };
        r = attach(s, w);
        if (r < 0) {
                free(w);
                return r;
        }
        if (ret)
                *ret = w;
        return 0;
}

LOOP_EXPORT int loop_add_signal_handler(loop_t *loop, int signum, loop_signal_callback_t cb, void *userdata) {
        loop_signal_t *h;
        int r = loop__usable(loop);

        if (r < 0)
                return r;
        return_if_fail(cb && valid_signal(signum), -EINVAL);

        /* Already there: replace the callback, keeping its place in the order. */
        h = loop->signals ? loop->signals->sig[signum].handler : NULL;
        if (h) {
                h->cb = cb;
                h->userdata = userdata;
                return 0;
        }
        r = add_watcher(loop, signum, cb, NULL, userdata, true, &h);
        if (r < 0)
                return r;
        loop->signals->sig[signum].handler = h;
        return 0;
}

LOOP_EXPORT int loop_remove_signal_handler(loop_t *loop, int signum) {
        loop_signal_t *h;
        int r = loop__usable(loop);

        if (r < 0)
                return r;
        return_if_fail(valid_signal(signum), -EINVAL);

        h = loop->signals ? loop->signals->sig[signum].handler : NULL;
        if (!h)
                return 0;
        detach(h);
        return 1;
}

LOOP_EXPORT int loop_add_signal(loop_t *loop, int signum, loop_signal_handler_t handler, void *userdata,
                                loop_signal_t **ret) {
        int r = loop__usable(loop);

        if (r < 0)
                return r;
        return_if_fail(handler && valid_signal(signum), -EINVAL);
        return add_watcher(loop, signum, NULL, handler, userdata, !ret, ret);
}

LOOP_EXPORT loop_t *loop_signal_get_loop(const loop_signal_t *w) {
        return w ? w->loop : NULL;
}

LOOP_EXPORT loop_signal_t *loop_signal_ref(loop_signal_t *w) {
        if (w) {
                assert(w->n_ref > 0);
                w->n_ref++;
        }
        return w;
}

LOOP_EXPORT loop_signal_t *loop_signal_unref(loop_signal_t *w) {
        if (!w)
                return NULL;
        assert(w->n_ref > 0);
        if (--w->n_ref > 0)
                return NULL;
        /* The last reference removes it, as sd_event_source_unref() does. */
        if (w->loop)
                detach(w);
        free(w);
        return NULL;
}

/* 0 if w is attached to a usable loop, else why not. */
static int watcher_usable(const loop_signal_t *w) {
        if (w->loop)
                return loop__usable(w->loop);
        return w->closed ? -ESHUTDOWN : -ESTALE;
}

LOOP_EXPORT int loop_signal_remove(loop_signal_t *w) {
        int r;

        return_if_fail(w, -EINVAL);
        r = watcher_usable(w);
        if (r == -ESTALE)
                return 0;
        if (r < 0)
                return r;
        detach(w);
        return 1;
}

LOOP_EXPORT int loop_signal_get_signum(const loop_signal_t *w) {
        return_if_fail(w, -EINVAL);
        return w->signum;
}

LOOP_EXPORT int loop_signal_set_enabled(loop_signal_t *w, int enabled) {
        int r;

        return_if_fail(w, -EINVAL);
        r = watcher_usable(w);
        if (r < 0)
                return r;
        /* The slot stays taken while disabled: the signal stays caught. */
        w->enabled = enabled != 0;
        return 0;
}

LOOP_EXPORT int loop_signal_get_enabled(const loop_signal_t *w) {
        return_if_fail(w, -EINVAL);
        return w->enabled;
}
