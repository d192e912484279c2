/* SPDX-License-Identifier: MIT */
/*
 * Signal handlers (asyncio's loop.add_signal_handler): the callback runs in
 * the loop's thread as an ordinary callback, never in signal context.
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
 * - A process-wide table, indexed by signal number, says which loop owns
 *   each signal and holds the disposition that was in place before (saved
 *   by sigaction, restored when the loop lets go). One loop per signal: a
 *   second loop asking for the same signal gets -EBUSY, the same loop
 *   asking again replaces its callback (as asyncio does). The table is
 *   changed under a mutex, from the threads that run the loops.
 *
 * - The sigaction handler is async-signal-safe and touches only lock-free
 *   atomics: it sets the signal's pending flag, reads the owner's wake-up
 *   descriptor from a per-signal atomic int (once) and writes to it (an
 *   eventfd increment, or one byte to a pipe; non-blocking, so a full pipe
 *   is simply "already awake"), keeping errno. It runs with every signal
 *   blocked and with SA_RESTART, so the interrupted code sees no EINTR
 *   from the calls that can be restarted.
 *
 * - The loop watches its descriptor with an ordinary reader while it has
 *   at least one handler. The reader drains the descriptor first, then
 *   swaps each of its signals' pending flags to 0 and queues the callbacks
 *   of those that were set with loop_call_soon. The order (flag, then
 *   write; drain, then swap) is what makes signals impossible to lose: a
 *   flag set after the swap is followed by a write after the drain, so
 *   the loop looks again. Signals that arrive together coalesce into one
 *   call, but one that arrives while its callback is queued or running
 *   gets a call of its own after that one: a burst gives at least one
 *   call, and always one after the last signal.
 *
 * - Descriptors versus concurrent handlers: a handler running in another
 *   thread may have read the descriptor just before the loop let go of
 *   the signal. Letting go only stores -1 in the table; the descriptors
 *   stay open until the loop is closed, and the close hook, after taking
 *   every signal back, waits until no handler is running anywhere (a
 *   counter the handler raises and lowers) before it closes them. A stale
 *   write in between is a harmless spurious wake-up.
 *
 * - fork: the child inherits the table, the handlers and the descriptors,
 *   which are shared with the parent's loop; the child's loops are dead
 *   (-ECHILD). An atfork handler therefore gives every signal back in the
 *   child: it stops the writes to the parent's descriptors and restores
 *   the dispositions that were in place before the parent's loops took the
 *   signals, so a forked worker dies on SIGTERM again instead of ignoring
 *   it. Closing an inherited loop then only frees memory: the descriptor
 *   numbers are not closed, since the child may have reused them (they are
 *   close-on-exec).
 */
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

#include "internal.h"

/* The signal handler may only use atomics that never take a lock. */
_Static_assert(__atomic_always_lock_free(sizeof(int), 0), "int atomics must be lock-free");

struct handler {
        loop_signal_callback_t cb;      /* NULL: this loop does not handle the signal */
        void *userdata;
        int signum;
        bool queued;                    /* a run_handler call is in the ready queue */
};

struct loop__signals {
        struct loop__close_hook hook;   /* first: the hook is the state */
        loop_t *loop;
        int read_fd, write_fd;          /* the same eventfd on Linux, a pipe elsewhere */
        bool reading;                   /* the reader on read_fd is registered */
        unsigned n_handlers;
        struct handler handlers[NSIG];
};

/* Which loop owns each signal; only the threads running loops use it. */
static pthread_mutex_t table_lock = PTHREAD_MUTEX_INITIALIZER;
static struct {
        loop_t *owner;                  /* NULL: the previous disposition is in force */
        struct sigaction previous;      /* valid while owner is set */
} table[NSIG];

/* What the signal handler reads: lock-free atomics only. */
static int wake_fd[NSIG];               /* the owner's write_fd, -1 when none */
static int pending[NSIG];               /* the signal arrived since its owner last looked */
static unsigned in_handler;             /* handlers running now, in any thread */

static pthread_once_t init_once = PTHREAD_ONCE_INIT;
static int init_error;

static void on_signal(int signum) {
        int saved_errno = errno;

        __atomic_add_fetch(&in_handler, 1, __ATOMIC_SEQ_CST);
        if (signum > 0 && signum < NSIG) {
                /* The flag before the write: see the top of the file. */
                __atomic_store_n(&pending[signum], 1, __ATOMIC_SEQ_CST);
                int fd = __atomic_load_n(&wake_fd[signum], __ATOMIC_SEQ_CST);
                if (fd >= 0)
                        loop__wakeup_write(fd);
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
                if (!table[sig].owner)
                        continue;
                /* First stop writing to the parent's descriptor, then put back
                 * what was there before the parent's loop took the signal. */
                __atomic_store_n(&wake_fd[sig], -1, __ATOMIC_SEQ_CST);
                (void) sigaction(sig, &table[sig].previous, NULL);
                __atomic_store_n(&pending[sig], 0, __ATOMIC_SEQ_CST);
                table[sig].owner = NULL;
        }
        /* Only the forking thread exists here, and it was not in a handler:
         * a count left by the parent's other threads would hang a close. */
        __atomic_store_n(&in_handler, 0, __ATOMIC_SEQ_CST);
        pthread_mutex_unlock(&table_lock);
}

static void init(void) {
        for (int sig = 0; sig < NSIG; sig++)
                __atomic_store_n(&wake_fd[sig], -1, __ATOMIC_SEQ_CST);
        init_error = -pthread_atfork(table_prepare_fork, table_parent_after_fork, table_child_after_fork);
}

static bool valid_signal(int signum) {
        /* SIGKILL and SIGSTOP cannot be caught; sigaction() rejects the
         * numbers the C library keeps for itself (glibc's 32 and 33). */
        return signum > 0 && signum < NSIG && signum != SIGKILL && signum != SIGSTOP;
}

/* Make signum's handler write to s's descriptor; -EBUSY if another loop has it. */
static int claim(struct loop__signals *s, int signum) {
        struct sigaction sa = {
                .sa_handler = on_signal,
                .sa_flags = SA_RESTART,
        };
        int r = 0;

        /* Nothing else runs in this thread's handler: no nesting to reason about. */
        sigfillset(&sa.sa_mask);

        pthread_mutex_lock(&table_lock);
        if (table[signum].owner) {
                r = -EBUSY;
                goto unlock;
        }
        /* A flag left from before belongs to no one: it must not make the
         * new callback run. Cleared before the handler can set it again. */
        __atomic_store_n(&pending[signum], 0, __ATOMIC_SEQ_CST);
        __atomic_store_n(&wake_fd[signum], s->write_fd, __ATOMIC_SEQ_CST);
        if (sigaction(signum, &sa, &table[signum].previous) < 0) {
                r = -errno;
                __atomic_store_n(&wake_fd[signum], -1, __ATOMIC_SEQ_CST);
                goto unlock;
        }
        table[signum].owner = s->loop;
unlock:
        pthread_mutex_unlock(&table_lock);
        return r;
}

static void release(loop_t *loop, int signum) {
        pthread_mutex_lock(&table_lock);
        if (table[signum].owner == loop) {
                /* Restore first: from here on the signal goes where it went
                 * before, and a handler already running only wakes us. */
                (void) sigaction(signum, &table[signum].previous, NULL);
                __atomic_store_n(&wake_fd[signum], -1, __ATOMIC_SEQ_CST);
                table[signum].owner = NULL;
        }
        pthread_mutex_unlock(&table_lock);
}

static int run_handler(loop_t *loop, void *userdata) {
        struct handler *h = userdata;

        /* Cleared first: a signal during the callback queues another call. */
        h->queued = false;
        /* Removed after the signal came in: asyncio's cancelled handle. */
        if (!h->cb)
                return 0;
        return h->cb(loop, h->signum, h->userdata);
}

static int on_wake(loop_t *loop, int fd, void *userdata) {
        struct loop__signals *s = userdata;

        /* Drain before looking at the flags: see the top of the file. */
        loop__wakeup_drain(fd);
        for (int sig = 1; sig < NSIG; sig++) {
                struct handler *h = &s->handlers[sig];

                if (!h->cb || !__atomic_load_n(&pending[sig], __ATOMIC_SEQ_CST))
                        continue;
                if (!__atomic_exchange_n(&pending[sig], 0, __ATOMIC_SEQ_CST))
                        continue;
                /* A call not run yet will run after this signal: it covers it. */
                if (h->queued)
                        continue;
                int r = loop_call_soon(loop, run_handler, h, NULL);
                if (r < 0) {
                        /* Keep the signal: the next wake-up tries again. */
                        __atomic_store_n(&pending[sig], 1, __ATOMIC_SEQ_CST);
                        loop__report(loop, "Cannot queue a signal handler", r, NULL, -1);
                        continue;
                }
                h->queued = true;
        }
        return 0;
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

        loop->signals = NULL;
        /* In a fork child the atfork handler already gave the signals back,
         * and the descriptor numbers may have been reused: memory only. */
        if (!loop__inherited(loop)) {
                for (int sig = 1; sig < NSIG; sig++)
                        if (s->handlers[sig].cb)
                                release(loop, sig);
                /* Also after a plain remove: the handler that read the
                 * descriptor before it may still be about to write. */
                wait_for_handlers();
                close_fds(s);
        }
        /* The reader's registration and a queued run_handler are dropped by
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
        r = loop__wakeup_new(&s->read_fd, &s->write_fd);
        if (r < 0) {
                free(s);
                return r;
        }
        for (int sig = 0; sig < NSIG; sig++)
                s->handlers[sig] = (struct handler) { .signum = sig };
        s->hook.fn = signals_close;
        loop__add_close_hook(loop, &s->hook);
        loop->signals = s;
        *ret = s;
        return 0;
}

LOOP_EXPORT int loop_add_signal_handler(loop_t *loop, int signum, loop_signal_callback_t cb, void *userdata) {
        struct loop__signals *s;
        struct handler *h;
        int r = loop__usable(loop);

        if (r < 0)
                return r;
        return_if_fail(cb && valid_signal(signum), -EINVAL);

        r = get_signals(loop, &s);
        if (r < 0)
                return r;
        h = &s->handlers[signum];
        /* Already ours (only this thread gives it away): replace the callback. */
        if (h->cb) {
                h->cb = cb;
                h->userdata = userdata;
                return 0;
        }
        /* The reader first: once the handler is installed, nothing may fail. */
        r = start_reading(s);
        if (r < 0)
                return r;
        r = claim(s, signum);
        if (r < 0) {
                if (s->n_handlers == 0)
                        stop_reading(s);
                return r;
        }
        h->cb = cb;
        h->userdata = userdata;
        s->n_handlers++;
        return 0;
}

LOOP_EXPORT int loop_remove_signal_handler(loop_t *loop, int signum) {
        struct loop__signals *s;
        struct handler *h;
        int r = loop__usable(loop);

        if (r < 0)
                return r;
        return_if_fail(valid_signal(signum), -EINVAL);

        s = loop->signals;
        if (!s || !s->handlers[signum].cb)
                return 0;
        h = &s->handlers[signum];
        release(loop, signum);
        /* A call already queued sees NULL and does nothing. */
        h->cb = NULL;
        h->userdata = NULL;
        if (--s->n_handlers == 0)
                stop_reading(s);
        return 1;
}
