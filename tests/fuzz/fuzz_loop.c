/* SPDX-License-Identifier: MIT */
/*
 * A libFuzzer driver over random sequences of libloop's public calls.
 *
 * Each input is a program: its first byte picks the backend (unless the
 * environment fixes it, see below) and how the loop is made, the rest is
 * read as operations with their arguments. The operations schedule and
 * cancel callbacks, take and release handle references, watch, pause,
 * close (cleanly or behind the loop's back) and dup socketpairs and pipes,
 * run the loop for one iteration with small timeouts, stop it, complete
 * futures, start socket operations, post from a second thread, and go
 * through the policy functions. Callbacks do the same kind of things from
 * inside the loop.
 *
 * What the driver checks, besides what ASan, UBSan and LeakSanitizer catch:
 *   - no timer runs before its deadline (loop_time_ns() at run time against
 *     the deadline: the handle's when_ns, or a lower bound taken before the
 *     call for timers without a handle);
 *   - timers that run in one iteration run in deadline order, equal
 *     deadlines in the order they were scheduled;
 *   - loop_call_soon() callbacks run in FIFO order, one scheduled by a
 *     callback runs in a later iteration, and none is lost: once the
 *     iteration it belongs to is over, it has run;
 *   - a timer whose deadline had passed when loop_run_once() was called has
 *     run when it returns; a threadsafe post from the second thread runs
 *     within a few iterations of the thread having posted it;
 *   - nothing runs twice; a cancelled handle, a removed or paused reader or
 *     writer, a removed done callback never run;
 *   - a done callback sees a done future; futures answer as the driver's
 *     model of them says (done, cancelled, error, -EALREADY, -EBUSY for a
 *     second socket operation in one direction);
 *   - calls that must fail inside a callback fail (-EBUSY for a nested run
 *     or a close), the running loop is the loop;
 *   - no spin: loop_run_once() with a 1 ms timeout, when nothing but
 *     cancelled timers and stale registrations is left, blocks instead of
 *     returning again and again with nothing done (a descriptor closed
 *     behind the loop's back included: it is reported through the
 *     exception handler, not spun on);
 *   - no descriptor and no memory outlives the input (the open descriptors
 *     are compared before and after; LeakSanitizer does memory).
 * A failed check prints what failed and aborts, which libFuzzer reports
 * as a crash with the input that caused it.
 *
 * The driver uses the public API only (<loop.h>) and does not misuse it,
 * except on purpose where the library promises to survive: closing a
 * watched descriptor behind the loop's back.
 *
 * Environment:
 *   FUZZ_BACKEND=epoll|poll|select|io_uring   fix the backend (also taken
 *       from LIBLOOP_PROACTOR=io_uring or LIBLOOP_SELECTOR=...); the first
 *       byte then only picks how the loop is made;
 *   FUZZ_NO_CLOSE_BEHIND=1   never close a watched descriptor behind the
 *       loop's back (to fuzz the rest while that is being fixed);
 *   FUZZ_NO_REUSE=1          never let the driver's new descriptors take the
 *       number of one closed behind the loop's back (they are moved up):
 *       closing behind the loop's back without the case where only the
 *       file's identity tells the old file from the new;
 *   FUZZ_NO_SPIN_CHECK=1     do not check for spinning;
 *   FUZZ_NO_READY_CHECK=1    do not check that a reader or writer runs only
 *       on a descriptor poll(2) finds ready;
 *   FUZZ_NO_THREAD=1         no second thread;
 *   FUZZ_NO_SHUTDOWN=1       never shutdown(2) a socket (half-closed
 *       sockets, to fuzz the rest while they are being fixed);
 *   FUZZ_VERBOSE=1           trace the operations on stderr.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include <loop.h>

#define MAX_RECS        4096
#define MAX_HANDLES     32
#define MAX_FDS         12      /* six pairs */
#define MAX_DUPS        4
#define MAX_FUTS        16
#define MAX_OPS         400
#define MAX_POSTS       32      /* per job of the second thread */
#define FD_SCAN         256     /* descriptors compared before and after */

enum backend { B_EPOLL, B_POLL, B_SELECT, B_URING, N_BACKENDS };
static const char *const backend_names[N_BACKENDS] = { "epoll", "poll", "select", "io_uring" };

enum rkind { RK_SOON, RK_TS, RK_THREAD, RK_TIMER, RK_IO, RK_DONE, RK_UTIL };

/* One scheduled callback: what the driver expects of it. */
struct rec {
        uint8_t kind, action, arg, depth;
        bool cancelled;         /* cancelled (or removed) before it ran: must never run */
        bool in_cb;             /* scheduled from inside a callback */
        bool exact;             /* min_deadline is the deadline itself */
        bool orphan;            /* I/O: its descriptor was closed behind the loop's back */
        bool write;             /* I/O: a writer */
        bool paused;            /* I/O: paused, must not run */
        uint32_t ran;
        uint64_t seq;           /* FIFO order among RK_SOON; scheduling order among timers */
        uint64_t sched_iter;    /* metrics.iterations when scheduled */
        int64_t sched_time;     /* loop_time_ns() before the call */
        int64_t min_deadline, max_deadline;
        int fdi;                /* I/O: index in fds[] */
        int fd;                 /* I/O: the number it was added on */
        int futi;               /* done callback: index in futs[] */
};

struct hent {
        loop_handle_t *h;
        struct rec *r;
        int refs;               /* references the driver holds */
        bool timer;
};

struct fdent {
        int fd;                 /* -1: free */
        int peer;               /* index of the other end, -1 once it is closed */
        bool sock;
        struct rec *io[2];      /* the reader's and the writer's record, or NULL */
        loop_future_t *op[2];   /* pending or finished socket operation per direction */
        char buf[256];          /* recv_into's buffer: lives as long as the input */
};

struct orphan {
        int fd;
        struct rec *io[2];
};

enum fstate { F_PENDING, F_RESULT, F_ERROR, F_CANCELLED };
struct fent {
        loop_future_t *f;
        int refs;
        enum fstate st;
        struct rec *done_rec;   /* the last done callback added, for removal */
};

struct thread_job {
        loop_t *loop;
        struct rec *recs[MAX_POSTS];
        int n;
        uint8_t mode;
};

static struct {
        const uint8_t *p;
        size_t n;

        enum backend backend;
        loop_t *loop;
        loop_policy_t *policy;          /* our derived policy, while installed */
        bool policy_set_called;         /* a loop was set through it (asyncio's _set_called) */
        bool closed;

        struct rec recs[MAX_RECS];
        int nrec;
        uint64_t soon_seq, last_soon_run, timer_seq;
        uint64_t last_timer_iter;
        int64_t last_timer_deadline;
        uint64_t last_timer_seq;
        bool have_last_timer;
        int in_cb;                      /* depth of driver callbacks on the stack */

        struct hent hs[MAX_HANDLES];
        struct fdent fds[MAX_FDS];
        struct orphan orphans[MAX_FDS];
        int dups[MAX_DUPS];
        struct fent futs[MAX_FUTS];

        unsigned exceptions;
        unsigned orphan_runs;           /* callbacks of orphaned records */
        unsigned timers_since_settle, io_changes_since_settle, posts_since_settle, stops_since_settle;

        bool fd_open_before[FD_SCAN];
        /* 1 + the iteration in which a callback wrote to, shut down or
         * closed a descriptor: readiness reported by the wait may have
         * changed since, so the ready check leaves it alone then. */
        uint64_t disturbed[FD_SCAN];
        int devnull;
} G;

static struct {
        enum backend forced;    /* N_BACKENDS when the input chooses */
        bool no_close_behind, no_reuse, no_spin_check, no_ready_check, no_thread, no_shutdown, verbose;
        bool uring_ok;
} cfg;

/* ---- failing ------------------------------------------------------------- */

__attribute__((format(printf, 1, 2), noreturn))
static void fail(const char *fmt, ...) {
        va_list ap;

        fprintf(stderr, "fuzz_loop: invariant failed (%s): ", backend_names[G.backend]);
        va_start(ap, fmt);
        vfprintf(stderr, fmt, ap);
        va_end(ap);
        fputc('\n', stderr);
        abort();
}

#define check(cond, ...) do { if (!(cond)) fail(__VA_ARGS__); } while (0)

static void trace(const char *fmt, ...) {
        va_list ap;

        if (!cfg.verbose)
                return;
        va_start(ap, fmt);
        vfprintf(stderr, fmt, ap);
        va_end(ap);
        fputc('\n', stderr);
}

/* ---- input --------------------------------------------------------------- */

static uint8_t u8(void) {
        if (G.n == 0)
                return 0;
        G.n--;
        return *G.p++;
}

/* ---- helpers ------------------------------------------------------------- */

static int64_t now_ns(void) {
        return loop_time_ns(G.loop);
}

static uint64_t iterations(void) {
        struct loop_metrics m = { .size = sizeof(m) };

        if (loop_get_metrics(G.loop, &m) < 0)
                return 0;
        return m.iterations;
}

static void disturb(int fd) {
        if (fd >= 0 && fd < FD_SCAN && G.in_cb)
                G.disturbed[fd] = iterations() + 1;
}

static struct rec *new_rec(enum rkind kind) {
        struct rec *r;

        if (G.nrec >= MAX_RECS)
                return NULL;
        r = &G.recs[G.nrec++];
        memset(r, 0, sizeof(*r));
        r->kind = (uint8_t) kind;
        r->in_cb = G.in_cb > 0;
        r->fdi = -1;
        r->fd = -1;
        r->futi = -1;
        if (!G.closed)
                r->sched_iter = iterations();
        return r;
}

static void rec_ran(struct rec *r, const char *what) {
        check(r->ran == 0, "%s ran twice", what);
        check(!r->cancelled, "%s ran after it was cancelled or removed", what);
        r->ran++;
}

static int hent_free_slot(void) {
        for (int i = 0; i < MAX_HANDLES; i++)
                if (!G.hs[i].h)
                        return i;
        return -1;
}

static void hent_put(loop_handle_t *h, struct rec *r, bool timer) {
        int i = hent_free_slot();

        if (i < 0) {
                loop_handle_unref(h);
                return;
        }
        G.hs[i] = (struct hent) { .h = h, .r = r, .refs = 1, .timer = timer };
}

static void hent_release(int i) {
        while (G.hs[i].refs-- > 0)
                loop_handle_unref(G.hs[i].h);
        G.hs[i] = (struct hent) {};
}

/* The handle is cancelled: its record must never run, unless it already did. */
static void cancel_handle(int i) {
        struct hent *e = &G.hs[i];

        if (!e->h)
                return;
        /* A timer must be cancelled from the loop's thread, which we are; a
         * cancel on a closed loop's handle is allowed too. */
        int r = loop_handle_cancel(e->h);
        check(r == 0, "loop_handle_cancel: %d", r);
        check(loop_handle_cancelled(e->h) == 1, "cancelled handle not marked cancelled");
        if (e->r && e->r->ran == 0)
                e->r->cancelled = true;
}

/* ---- callbacks ----------------------------------------------------------- */

static int cb_generic(loop_t *loop, void *userdata);
static int cb_io(loop_t *loop, int fd, void *userdata);
static int cb_done(loop_future_t *future, void *userdata);
static void close_fd_clean(int i);
static void close_fd_behind(int i, bool then_remove);
static void future_set(int i, uint8_t how);

static void common_cb_checks(loop_t *loop) {
        loop_t *running = NULL;

        check(loop == G.loop, "callback called with another loop");
        check(loop_is_running(loop) == 1, "loop not running inside its callback");
        check(loop_get_running_loop(&running) == 0 && running == loop,
              "loop_get_running_loop inside a callback");
        loop_unref(running);
}

static struct rec *schedule_soon(bool handle, uint8_t action, uint8_t arg, uint8_t depth) {
        struct rec *r = new_rec(RK_SOON);
        loop_handle_t *h = NULL;
        int ret;

        if (!r)
                return NULL;
        r->action = action;
        r->arg = arg;
        r->depth = depth;
        r->seq = ++G.soon_seq;
        ret = loop_call_soon(G.loop, cb_generic, r, handle ? &h : NULL);
        if (G.closed) {
                check(ret == -ESHUTDOWN, "call_soon on a closed loop: %d", ret);
                r->cancelled = true;
                return NULL;
        }
        check(ret == 0, "loop_call_soon: %d", ret);
        if (h)
                hent_put(h, r, false);
        return r;
}

static const int64_t delays_ns[16] = {
        -1000000, 0, 1, 1000, 50000, 100000, 250000, 500000,
        1000000, 1500000, 2000000, 3000000, 3600 * INT64_C(1000000000), -1, 10, 700000,
};

static struct rec *schedule_timer(uint8_t how, uint8_t sel, uint8_t action, uint8_t arg, uint8_t depth) {
        struct rec *r = new_rec(RK_TIMER);
        loop_handle_t *h = NULL;
        bool handle = how & 1;
        int64_t delay = delays_ns[sel & 15], before, after, when = 0;
        int ret;

        if (!r)
                return NULL;
        r->action = action;
        r->arg = arg;
        r->depth = depth;
        r->seq = ++G.timer_seq;
        before = now_ns();
        switch ((how >> 1) % 4) {
        case 0:
                if ((sel & 15) == 13) {
                        /* now + INT64_MAX does not fit: refused, nothing scheduled. */
                        ret = loop_call_later_ns(G.loop, INT64_MAX, cb_generic, r, handle ? &h : NULL);
                        check(ret == -ERANGE || (G.closed && ret == -ESHUTDOWN), "call_later_ns(INT64_MAX): %d",
                              ret);
                        r->cancelled = true;
                        return NULL;
                }
                ret = loop_call_later_ns(G.loop, delay, cb_generic, r, handle ? &h : NULL);
                break;
        case 1:
                ret = loop_call_later(G.loop, (double) delay / 1e9, cb_generic, r, handle ? &h : NULL);
                break;
        case 2:
                /* Any int64 is a deadline: the extremes included. */
                when = (sel & 15) == 13 ? INT64_MIN : (sel & 15) == 14 ? INT64_MAX : before + delay;
                ret = loop_call_at_ns(G.loop, when, cb_generic, r, handle ? &h : NULL);
                r->exact = true;
                break;
        default:
                ret = loop_call_at(G.loop, (double) (before + delay) / 1e9, cb_generic, r, handle ? &h : NULL);
                break;
        }
        after = now_ns();
        if (G.closed) {
                check(ret == -ESHUTDOWN, "timer on a closed loop: %d", ret);
                r->cancelled = true;
                return NULL;
        }
        check(ret == 0, "timer: %d", ret);
        G.timers_since_settle++;
        r->sched_time = before;
        switch ((how >> 1) % 4) {
        case 0:
        case 1:
                r->min_deadline = before + delay - 1;
                r->max_deadline = after + delay + 1;
                break;
        case 2:
                r->min_deadline = r->max_deadline = when;
                break;
        default:
                /* Seconds as a double: a few hundred nanoseconds of rounding. */
                r->min_deadline = before + delay - 1000;
                r->max_deadline = before + delay + 1000;
                break;
        }
        if (h) {
                int64_t w = loop_handle_when_ns(h);
                check(w >= r->min_deadline && w <= r->max_deadline,
                      "loop_handle_when_ns %lld outside [%lld, %lld]", (long long) w,
                      (long long) r->min_deadline, (long long) r->max_deadline);
                check(fabs(loop_handle_when(h) - (double) w / 1e9) < 1e-5, "loop_handle_when");
                r->min_deadline = r->max_deadline = w;
                r->exact = true;
                hent_put(h, r, true);
        }
        return r;
}

static struct rec *post_threadsafe(bool handle) {
        struct rec *r = new_rec(RK_TS);
        loop_handle_t *h = NULL;
        int ret;

        if (!r)
                return NULL;
        ret = loop_call_soon_threadsafe(G.loop, cb_generic, r, handle ? &h : NULL);
        if (G.closed) {
                check(ret == -ESHUTDOWN, "call_soon_threadsafe on a closed loop: %d", ret);
                r->cancelled = true;
                return NULL;
        }
        check(ret == 0, "loop_call_soon_threadsafe: %d", ret);
        G.posts_since_settle++;
        if (h)
                hent_put(h, r, false);
        return r;
}

/* What a callback does besides being checked: the loop's own API, from inside. */
static int do_action(struct rec *r) {
        uint8_t a = r->arg;
        int ret;

        switch (r->action % 20) {
        case 1:
                if (r->depth < 4)
                        schedule_soon(a & 1, (uint8_t) (a >> 1), a, (uint8_t) (r->depth + 1));
                break;
        case 2:
                cancel_handle(a % MAX_HANDLES);
                break;
        case 3:
                check(loop_stop(G.loop) == 0, "loop_stop in a callback");
                G.stops_since_settle++;
                break;
        case 4:
                return -EIO;
        case 5:
                ret = loop_run_once(G.loop, 0);
                check(ret == -EBUSY, "nested loop_run_once: %d", ret);
                ret = loop_close(G.loop);
                check(ret == -EBUSY, "loop_close in a callback: %d", ret);
                ret = loop_run_forever(G.loop);
                check(ret == -EBUSY, "nested loop_run_forever: %d", ret);
                break;
        case 6:
                if (r->depth < 4)
                        schedule_timer(a, (uint8_t) (a >> 3), (uint8_t) (a >> 2), a, (uint8_t) (r->depth + 1));
                break;
        case 7:
                future_set(a % MAX_FUTS, (uint8_t) (a >> 4));
                break;
        case 8: {
                struct fdent *e = &G.fds[a % MAX_FDS];
                int dir = (a >> 4) & 1;
                if (e->fd >= 0 && e->io[dir]) {
                        ret = dir ? loop_remove_writer(G.loop, e->fd) : loop_remove_reader(G.loop, e->fd);
                        check(ret == 1, "remove in a callback: %d", ret);
                        e->io[dir]->cancelled = true;
                        e->io[dir] = NULL;
                        G.io_changes_since_settle++;
                }
                break;
        }
        case 9: {
                struct fdent *e = &G.fds[a % MAX_FDS];
                int dir = (a >> 4) & 1;
                if (e->fd >= 0 && e->io[dir]) {
                        bool pause = !e->io[dir]->paused;
                        ret = dir ? (pause ? loop_pause_writer(G.loop, e->fd) : loop_resume_writer(G.loop, e->fd))
                                  : (pause ? loop_pause_reader(G.loop, e->fd) : loop_resume_reader(G.loop, e->fd));
                        check(ret == 0, "pause/resume in a callback: %d", ret);
                        e->io[dir]->paused = pause;
                        G.io_changes_since_settle++;
                }
                break;
        }
        case 10:
                post_threadsafe(a & 1);
                break;
        case 11: {
                loop_t *l = NULL;
                ret = loop_get_event_loop(&l);
                check(ret == 0 && l == G.loop, "loop_get_event_loop in a callback: %d", ret);
                loop_unref(l);
                break;
        }
        case 12: {
                struct fdent *e = &G.fds[a % MAX_FDS];
                if (e->fd >= 0) {
                        static const char bytes[64];
                        ssize_t n = write(e->fd, bytes, 1 + (a >> 4) * 4);
                        (void) n;
                        disturb(e->fd);
                }
                break;
        }
        case 13:
                close_fd_clean(a % MAX_FDS);
                break;
        case 14:
                if (!cfg.no_close_behind)
                        close_fd_behind(a % MAX_FDS, (a >> 4) & 1);
                break;
        default:
                break;
        }
        return 0;
}

static void check_timer_run(struct rec *r) {
        int64_t now = now_ns();
        uint64_t it = iterations();

        check(now >= r->min_deadline, "timer ran %lld ns before its deadline",
              (long long) (r->min_deadline - now));
        if (!r->exact)
                return;
        if (G.have_last_timer && G.last_timer_iter == it)
                check(r->min_deadline > G.last_timer_deadline ||
                      (r->min_deadline == G.last_timer_deadline && r->seq > G.last_timer_seq),
                      "timers out of order in one iteration: %lld after %lld (seq %llu after %llu)",
                      (long long) r->min_deadline, (long long) G.last_timer_deadline,
                      (unsigned long long) r->seq, (unsigned long long) G.last_timer_seq);
        G.have_last_timer = true;
        G.last_timer_iter = it;
        G.last_timer_deadline = r->min_deadline;
        G.last_timer_seq = r->seq;
}

static int cb_generic(loop_t *loop, void *userdata) {
        struct rec *r = userdata;
        int ret;

        common_cb_checks(loop);
        switch (r->kind) {
        case RK_SOON:
                rec_ran(r, "call_soon callback");
                check(r->seq > G.last_soon_run, "call_soon callbacks out of order: %llu after %llu",
                      (unsigned long long) r->seq, (unsigned long long) G.last_soon_run);
                G.last_soon_run = r->seq;
                if (r->in_cb)
                        check(iterations() > r->sched_iter,
                              "callback scheduled by a callback ran in the same iteration");
                break;
        case RK_TS:
        case RK_THREAD:
                __atomic_thread_fence(__ATOMIC_ACQUIRE);
                rec_ran(r, "threadsafe callback");
                break;
        case RK_TIMER:
                rec_ran(r, "timer");
                check_timer_run(r);
                break;
        default:
                fail("bad record kind %d", r->kind);
        }
        G.in_cb++;
        ret = do_action(r);
        G.in_cb--;
        return ret;
}

static bool fd_ready(int fd, bool write) {
        struct pollfd p = { .fd = fd, .events = write ? POLLOUT : POLLIN };

        if (poll(&p, 1, 0) < 0)
                return true;
        return p.revents != 0;
}

static int cb_io(loop_t *loop, int fd, void *userdata) {
        struct rec *r = userdata;
        int ret = 0;

        common_cb_checks(loop);
        check(r->kind == RK_IO, "I/O callback with a bad record");
        check(!r->cancelled, "%s of fd %d ran after it was removed or replaced", r->write ? "writer" : "reader",
              fd);
        check(!r->paused, "paused %s of fd %d ran", r->write ? "writer" : "reader", fd);
        check(fd == r->fd, "I/O callback for fd %d called with fd %d", r->fd, fd);
        if (cfg.verbose) {
                struct pollfd pv = { .fd = fd, .events = POLLIN | POLLOUT | POLLRDHUP };
                int pn = poll(&pv, 1, 0);
                trace("  %s of fd %d runs (iteration %u; poll %d revents %#x)", r->write ? "writer" : "reader", fd,
                      iterations(), pn, (unsigned) pv.revents);
        }
        r->ran++;
        if (r->orphan) {
                /* Closed behind the loop's back. The callback does what a
                 * program's would, its I/O on fd, but with 0 bytes (the
                 * number may be another file now, whose data is not ours),
                 * and raises what that I/O says: -EBADF while the number
                 * is closed, which the loop takes as the end of the
                 * registration. Calls while the number is closed count as
                 * nothing done for the spin check: the loop can tell
                 * (POLLNVAL, EBADF, the callback's error). When the number
                 * is another file again, a call is work if that file is
                 * ready; if it is not, the loop reported the old file's
                 * readiness under the new file's number, which the program
                 * cannot tell from a spurious wake-up: a silent spin if it
                 * goes on. */
                char c;
                ssize_t n = r->write ? write(fd, &c, 0) : read(fd, &c, 0);
                int err = n < 0 ? -errno : 0;
                bool nothing;
                if (err == -EBADF)
                        nothing = true;
                else
                        nothing = !fd_ready(fd, r->write) && !(fd < FD_SCAN && G.disturbed[fd] == iterations() + 1);
                if (nothing)
                        G.orphan_runs++;
                return err == -EBADF ? err : 0;
        }
        if (!cfg.no_ready_check && (fd >= FD_SCAN || G.disturbed[fd] != iterations() + 1))
                check(fd_ready(fd, r->write), "%s of fd %d ran but poll(2) finds it not ready",
                      r->write ? "writer" : "reader", fd);
        if (r->write) {
                static const char bytes[512];
                ssize_t n = write(fd, bytes, 1 + (r->arg & 0x1ff) % sizeof(bytes));
                (void) n;
        } else if (r->arg & 1) {
                char buf[512];
                ssize_t n = read(fd, buf, 1 + r->arg * 2);
                (void) n;
        }
        G.in_cb++;
        ret = do_action(r);
        G.in_cb--;
        return ret;
}

static int cb_done(loop_future_t *future, void *userdata) {
        struct rec *r = userdata;
        int ret;

        check(r->kind == RK_DONE, "done callback with a bad record");
        rec_ran(r, "done callback");
        check(loop_future_done(future) == 1, "done callback of a pending future");
        check(loop_future_get_loop(future) == G.loop, "future's loop");
        G.in_cb++;
        ret = do_action(r);
        G.in_cb--;
        return ret;
}

static int cb_stop(loop_t *loop, void *userdata) {
        G.stops_since_settle++;
        return loop_stop(loop);
}

static void on_exception(loop_t *loop, const struct loop_exception_context *ctx, void *userdata) {
        check(loop == G.loop, "exception handler with another loop");
        check(ctx && ctx->size >= sizeof(*ctx) && ctx->message, "bad exception context");
        check(ctx->error <= 0, "exception error %d", ctx->error);
        G.exceptions++;
        trace("  exception: %s (%d, fd %d)", ctx->message, ctx->error, ctx->fd);
}

/* ---- the second thread --------------------------------------------------- */

static struct {
        pthread_t tid;
        pthread_mutex_t lock;
        pthread_cond_t cond;
        bool started, has_job, busy;
        struct thread_job job;
} T = { .lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER };

static void *thread_main(void *arg) {
        pthread_mutex_lock(&T.lock);
        for (;;) {
                while (!T.has_job)
                        pthread_cond_wait(&T.cond, &T.lock);
                struct thread_job job = T.job;
                T.has_job = false;
                pthread_mutex_unlock(&T.lock);

                for (int i = 0; i < job.n; i++) {
                        loop_handle_t *h = NULL;
                        bool handle = (job.mode >> (i % 8)) & 1;
                        int r = loop_call_soon_threadsafe(job.loop, cb_generic, job.recs[i], handle ? &h : NULL);
                        if (r < 0)
                                job.recs[i]->cancelled = true;  /* closed: never runs */
                        /* Released from this thread while the loop may be running it. */
                        loop_handle_unref(h);
                }

                pthread_mutex_lock(&T.lock);
                T.busy = false;
                pthread_cond_broadcast(&T.cond);
        }
        return NULL;
}

static void thread_join(void) {
        pthread_mutex_lock(&T.lock);
        while (T.busy)
                pthread_cond_wait(&T.cond, &T.lock);
        pthread_mutex_unlock(&T.lock);
}

static void thread_post(int n, uint8_t mode) {
        if (cfg.no_thread || G.closed)
                return;
        if (!T.started) {
                if (pthread_create(&T.tid, NULL, thread_main, NULL) != 0)
                        return;
                T.started = true;
        }
        thread_join();
        struct thread_job job = { .loop = G.loop, .mode = mode };
        for (int i = 0; i < n && i < MAX_POSTS; i++) {
                struct rec *r = new_rec(RK_THREAD);
                if (!r)
                        break;
                job.recs[job.n++] = r;
        }
        G.posts_since_settle += (unsigned) job.n;
        pthread_mutex_lock(&T.lock);
        T.job = job;
        T.has_job = true;
        T.busy = true;
        pthread_cond_broadcast(&T.cond);
        pthread_mutex_unlock(&T.lock);
}

/* ---- descriptors --------------------------------------------------------- */

static int fd_free_slot(void) {
        for (int i = 0; i < MAX_FDS; i++)
                if (G.fds[i].fd < 0)
                        return i;
        return -1;
}

/* A new number may be one closed behind the loop's back: a reader or writer
 * added on it now replaces the orphaned one, which must not run again. */
static void orphan_replaced(int fd, int dir) {
        for (int i = 0; i < MAX_FDS; i++) {
                struct orphan *o = &G.orphans[i];
                if (o->fd != fd || !o->io[dir])
                        continue;
                o->io[dir]->cancelled = true;
                o->io[dir] = NULL;
                if (!o->io[0] && !o->io[1])
                        o->fd = -1;
        }
}

static bool is_orphan(int fd) {
        if (fd < 0)
                return false;
        for (int i = 0; i < MAX_FDS; i++)
                if (G.orphans[i].fd == fd)
                        return true;
        return false;
}

/* FUZZ_NO_REUSE: move a descriptor off a number closed behind the loop's
 * back; the number stays free. */
static int avoid_orphan(int fd) {
        int moved;

        if (!cfg.no_reuse || !is_orphan(fd))
                return fd;
        moved = fcntl(fd, F_DUPFD_CLOEXEC, FD_SCAN / 2);
        check(moved >= 0, "F_DUPFD: %s", strerror(errno));
        close(fd);
        return moved;
}

static void new_pair(uint8_t how) {
        int a = -1, b = -1, sv[2];
        int ia, ib;
        bool sock = true;

        ia = fd_free_slot();
        if (ia < 0)
                return;
        G.fds[ia].fd = 0;       /* reserve */
        ib = fd_free_slot();
        G.fds[ia].fd = -1;
        if (ib < 0)
                return;
        switch (how % 3) {
        case 0:
                if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) == 0)
                        a = sv[0], b = sv[1];
                break;
        case 1:
                if (socketpair(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) == 0)
                        a = sv[0], b = sv[1];
                break;
        default:
                if (pipe2(sv, O_NONBLOCK | O_CLOEXEC) == 0)
                        a = sv[0], b = sv[1];
                sock = false;
                break;
        }
        if (a < 0)
                return;
        a = avoid_orphan(a);
        b = avoid_orphan(b);
        check(a < FD_SCAN && b < FD_SCAN, "descriptor numbers beyond %d", FD_SCAN);
        G.fds[ia] = (struct fdent) { .fd = a, .peer = ib, .sock = sock };
        G.fds[ib] = (struct fdent) { .fd = b, .peer = ia, .sock = sock };
        trace("  pair %d,%d (%s)", a, b, how % 3 == 2 ? "pipe" : "socketpair");
}

static bool op_pending(struct fdent *e, int dir) {
        return e->op[dir] && !loop_future_done(e->op[dir]);
}

static void add_io(int i, int dir, uint8_t action, uint8_t arg) {
        struct fdent *e = &G.fds[i];
        struct rec *r;
        int ret;

        if (e->fd < 0 || op_pending(e, dir))    /* mixing with a socket operation is unsupported */
                return;
        r = new_rec(RK_IO);
        if (!r)
                return;
        r->write = dir;
        r->fd = e->fd;
        r->fdi = i;
        r->action = action;
        r->arg = arg;
        ret = dir ? loop_add_writer(G.loop, e->fd, cb_io, r) : loop_add_reader(G.loop, e->fd, cb_io, r);
        if (G.closed) {
                check(ret == -ESHUTDOWN, "add_io on a closed loop: %d", ret);
                return;
        }
        if (ret == -ERANGE && G.backend == B_SELECT && e->fd >= 1024)
                return;
        check(ret == 0, "loop_add_%s(%d): %d", dir ? "writer" : "reader", e->fd, ret);
        if (e->io[dir])
                e->io[dir]->cancelled = true;   /* replaced */
        orphan_replaced(e->fd, dir);
        e->io[dir] = r;
        G.io_changes_since_settle++;
}

static void remove_io(int i, int dir) {
        struct fdent *e = &G.fds[i];
        int ret;

        if (e->fd < 0 || op_pending(e, dir))
                return;
        ret = dir ? loop_remove_writer(G.loop, e->fd) : loop_remove_reader(G.loop, e->fd);
        if (G.closed) {
                check(ret == -ESHUTDOWN, "remove_io on a closed loop: %d", ret);
                return;
        }
        /* Without one of ours, an orphan on the same number may answer 1. */
        check(ret == 1 || (ret == 0 && !e->io[dir]), "loop_remove_%s(%d): %d", dir ? "writer" : "reader", e->fd,
              ret);
        if (e->io[dir])
                e->io[dir]->cancelled = true;
        e->io[dir] = NULL;
        orphan_replaced(e->fd, dir);
        G.io_changes_since_settle++;
}

static void pause_io(int i, int dir, bool pause) {
        struct fdent *e = &G.fds[i];
        int ret;

        if (e->fd < 0 || !e->io[dir])
                return;
        if (dir)
                ret = pause ? loop_pause_writer(G.loop, e->fd) : loop_resume_writer(G.loop, e->fd);
        else
                ret = pause ? loop_pause_reader(G.loop, e->fd) : loop_resume_reader(G.loop, e->fd);
        if (G.closed) {
                check(ret == -ESHUTDOWN, "pause on a closed loop: %d", ret);
                return;
        }
        check(ret == 0, "loop_%s_%s(%d): %d", pause ? "pause" : "resume", dir ? "writer" : "reader", e->fd, ret);
        e->io[dir]->paused = pause;
        G.io_changes_since_settle++;
}

static void release_ops(struct fdent *e) {
        for (int dir = 0; dir < 2; dir++) {
                if (!e->op[dir])
                        continue;
                if (!loop_future_done(e->op[dir])) {
                        int r = loop_future_cancel(e->op[dir]);
                        check(r == 1, "cancel of a pending socket operation: %d", r);
                        check(loop_future_cancelled(e->op[dir]) == 1, "cancelled operation not cancelled");
                }
                e->op[dir] = loop_future_unref(e->op[dir]);
        }
}

static void forget_fd(int i) {
        struct fdent *e = &G.fds[i];

        if (e->peer >= 0)
                G.fds[e->peer].peer = -1;
        e->fd = -1;
        e->peer = -1;
        e->io[0] = e->io[1] = NULL;
}

/* As the man pages ask: cancel operations, remove callbacks, then close. */
static void close_fd_clean(int i) {
        struct fdent *e = &G.fds[i];

        if (e->fd < 0)
                return;
        if (!G.closed) {
                release_ops(e);
                for (int dir = 0; dir < 2; dir++)
                        if (e->io[dir])
                                remove_io(i, dir);
        } else {
                release_ops(e);
        }
        trace("  close %d", e->fd);
        disturb(e->fd);
        if (e->peer >= 0)
                disturb(G.fds[e->peer].fd);
        close(e->fd);
        forget_fd(i);
}

/* The precondition broken on purpose: the loop must survive it. With
 * then_remove, the common mistake: close first, remove after. */
static void close_fd_behind(int i, bool then_remove) {
        struct fdent *e = &G.fds[i];
        int o, fd = e->fd;

        if (e->fd < 0 || (!e->io[0] && !e->io[1] && !op_pending(e, 0) && !op_pending(e, 1)))
                return;
        for (o = 0; o < MAX_FDS && G.orphans[o].fd >= 0; o++)
                ;
        if (o == MAX_FDS)
                return;
        G.orphans[o].fd = e->fd;
        for (int dir = 0; dir < 2; dir++) {
                G.orphans[o].io[dir] = e->io[dir];
                if (e->io[dir])
                        e->io[dir]->orphan = true;
        }
        /* Pending socket operations stay pending (loop_sock_recv(3) says so);
         * the future is cancelled at the end. Keep it, with the number. */
        trace("  close %d behind the loop's back", e->fd);
        disturb(e->fd);
        if (e->peer >= 0)
                disturb(G.fds[e->peer].fd);
        close(e->fd);
        G.io_changes_since_settle += 2;
        for (int dir = 0; dir < 2; dir++) {
                if (e->op[dir]) {
                        /* Cancelling now is what the page asks before the number is reused. */
                        if (!loop_future_done(e->op[dir]))
                                loop_future_cancel(e->op[dir]);
                        e->op[dir] = loop_future_unref(e->op[dir]);
                }
        }
        if (then_remove && !G.closed) {
                for (int dir = 0; dir < 2; dir++) {
                        if (!G.orphans[o].io[dir])
                                continue;
                        int r = dir ? loop_remove_writer(G.loop, fd) : loop_remove_reader(G.loop, fd);
                        /* 0: the loop found out and dropped it already. */
                        check(r == 0 || r == 1, "remove after close: %d", r);
                        G.orphans[o].io[dir]->cancelled = true;
                        G.orphans[o].io[dir] = NULL;
                }
                G.orphans[o].fd = -1;
        }
        forget_fd(i);
}

static void dup_fd(int i) {
        for (int d = 0; d < MAX_DUPS; d++) {
                if (G.dups[d] >= 0)
                        continue;
                if (G.fds[i].fd >= 0) {
                        G.dups[d] = avoid_orphan(fcntl(G.fds[i].fd, F_DUPFD_CLOEXEC, 3));
                }
                return;
        }
        /* All taken: drop one. */
        close(G.dups[i % MAX_DUPS]);
        G.dups[i % MAX_DUPS] = -1;
}

/* ---- futures ------------------------------------------------------------- */

static void future_check_model(struct fent *e) {
        void *res = NULL;
        int err = loop_future_error(e->f);

        switch (e->st) {
        case F_PENDING:
                check(loop_future_done(e->f) == 0 && err == -EAGAIN, "pending future: done %d, error %d",
                      loop_future_done(e->f), err);
                break;
        case F_RESULT:
                check(loop_future_done(e->f) == 1 && err == 0 && loop_future_result(e->f, &res) == 0,
                      "future with a result: error %d", err);
                break;
        case F_ERROR:
                check(loop_future_done(e->f) == 1 && err == -EIO, "failed future: error %d", err);
                break;
        case F_CANCELLED:
                check(loop_future_cancelled(e->f) == 1 && err == -ECANCELED, "cancelled future: error %d", err);
                break;
        }
}

static void future_new(int i) {
        struct fent *e = &G.futs[i];
        int r;

        if (e->f)
                return;
        r = loop_create_future(G.loop, &e->f);
        if (G.closed) {
                check(r == -ESHUTDOWN, "loop_create_future on a closed loop: %d", r);
                e->f = NULL;
                return;
        }
        check(r == 0, "loop_create_future: %d", r);
        e->refs = 1;
        e->st = F_PENDING;
        e->done_rec = NULL;
}

static void future_set(int i, uint8_t how) {
        struct fent *e = &G.futs[i];
        int r;

        if (!e->f)
                return;
        future_check_model(e);
        switch (how % 3) {
        case 0: {
                void *res = NULL;
                void (*destroy)(void *) = NULL;
                if (how & 4) {
                        res = malloc(16);
                        destroy = free;
                }
                r = loop_future_set_result(e->f, res, destroy);
                if (e->st != F_PENDING) {
                        check(r == -EALREADY, "set_result on a done future: %d", r);
                        free(res);
                } else if (r == 0) {
                        e->st = F_RESULT;
                } else {
                        check(r == -ESHUTDOWN || r == -ECHILD, "set_result: %d", r);
                        free(res);
                }
                break;
        }
        case 1:
                r = loop_future_set_error(e->f, -EIO);
                if (e->st != F_PENDING)
                        check(r == -EALREADY, "set_error on a done future: %d", r);
                else if (r == 0)
                        e->st = F_ERROR;
                break;
        default:
                r = loop_future_cancel(e->f);
                if (e->st != F_PENDING)
                        check(r == 0, "cancel of a done future: %d", r);
                else if (r == 1)
                        e->st = F_CANCELLED;
                else
                        check(r < 0, "cancel of a pending future: %d", r);
                break;
        }
        future_check_model(e);
}

static void future_add_done(int i, uint8_t action, uint8_t arg) {
        struct fent *e = &G.futs[i];
        struct rec *r;
        int ret;

        if (!e->f || !(r = new_rec(RK_DONE)))
                return;
        r->action = action;
        r->arg = arg;
        r->futi = i;
        ret = loop_future_add_done_callback(e->f, cb_done, r);
        if (ret < 0) {
                r->cancelled = true;
                check(G.closed, "add_done_callback: %d", ret);
                return;
        }
        e->done_rec = r;
}

static void future_remove_done(int i) {
        struct fent *e = &G.futs[i];
        int ret;

        if (!e->f || !e->done_rec)
                return;
        ret = loop_future_remove_done_callback(e->f, cb_done, e->done_rec);
        if (e->st != F_PENDING) {
                check(ret == 0, "remove_done_callback on a done future: %d", ret);
        } else if (!G.closed) {
                check(ret == 1, "remove_done_callback: %d", ret);
                e->done_rec->cancelled = true;
        }
        e->done_rec = NULL;
}

static void future_release(int i) {
        struct fent *e = &G.futs[i];

        while (e->refs-- > 0)
                loop_future_unref(e->f);
        *e = (struct fent) {};
}

static int cb_complete(loop_t *loop, void *userdata) {
        struct fent *e = userdata;

        if (e->f && e->st == F_PENDING && loop_future_set_result(e->f, NULL, NULL) == 0)
                e->st = F_RESULT;
        return 0;
}

/* ---- socket operations --------------------------------------------------- */

static char send_data[300000];

static void sock_op(int i, uint8_t how) {
        struct fdent *e = &G.fds[i];
        static const size_t sizes[8] = { 0, 1, 7, 100, 4096, 65536, 200000, 300000 };
        int dir = how & 1;
        loop_future_t *f = NULL;
        int ret;

        if (e->fd < 0 || e->io[dir])    /* no mixing with a reader or writer */
                return;
        bool pending = op_pending(e, dir);
        size_t size = sizes[(how >> 1) & 7];
        if (dir == 0) {
                size = how & 0x10 ? size % sizeof(e->buf) : size % 5000;
                if (how & 0x10)
                        ret = loop_sock_recv_into(G.loop, e->fd, e->buf, size, &f);
                else
                        ret = loop_sock_recv(G.loop, e->fd, size, &f);
        } else {
                ret = loop_sock_sendall(G.loop, e->fd, send_data, size, &f);
        }
        if (G.closed) {
                check(ret == -ESHUTDOWN, "socket operation on a closed loop: %d", ret);
                return;
        }
        if (!e->sock) {
                check(ret == -ENOTSOCK, "socket operation on a pipe: %d", ret);
                return;
        }
        if (pending) {
                check(ret == -EBUSY, "second socket operation in one direction: %d", ret);
                return;
        }
        if (ret == -EINVAL && dir == 1 && size == 0)
                return;
        check(ret == 0, "socket operation: %d", ret);
        if (e->op[dir])
                loop_future_unref(e->op[dir]);
        e->op[dir] = f;
        G.io_changes_since_settle++;
        if (loop_future_done(f) && loop_future_error(f) == 0) {
                void *res = NULL;
                const struct loop_sock_result *sr;
                check(loop_future_result(f, &res) == 0 && res, "socket result");
                sr = res;
                check(dir == 1 ? sr->nbytes == size : sr->nbytes <= size,
                      "socket result: %zu bytes", sr->nbytes);
                check(dir == 1 || sr->data, "received data NULL");
        }
}

/* ---- running ------------------------------------------------------------- */

static const int64_t timeouts_ns[4] = { 0, 1000, 100000, 1000000 };

/* Every soon callback of a finished iteration has run; so has every
 * timer that was due when the run began. */
static void check_lost(int64_t run_start, uint64_t it_before) {
        uint64_t it = iterations();

        for (int i = 0; i < G.nrec; i++) {
                struct rec *r = &G.recs[i];
                if (r->ran || r->cancelled)
                        continue;
                if (r->kind == RK_SOON && it >= r->sched_iter + 2)
                        fail("call_soon callback (seq %llu, scheduled at iteration %llu%s) lost by iteration %llu",
                             (unsigned long long) r->seq, (unsigned long long) r->sched_iter,
                             r->in_cb ? " in a callback" : "", (unsigned long long) it);
                if (r->kind == RK_SOON && !r->in_cb && it >= r->sched_iter + 1)
                        fail("call_soon callback (seq %llu) not run by the next iteration",
                             (unsigned long long) r->seq);
                if (r->kind == RK_TIMER && r->sched_time < run_start && r->max_deadline < run_start)
                        fail("timer due %lld ns before loop_run_once began did not run",
                             (long long) (run_start - r->max_deadline));
        }
}

static int run_once(int64_t timeout) {
        int64_t start = now_ns();
        uint64_t it = iterations();
        int r = loop_run_once(G.loop, timeout);

        if (G.closed) {
                check(r == -ESHUTDOWN, "loop_run_once on a closed loop: %d", r);
                return r;
        }
        check(r >= 0, "loop_run_once: %d", r);
        check(iterations() == it + 1, "loop_run_once ran %llu iterations",
              (unsigned long long) (iterations() - it));
        check_lost(start, it);
        return r;
}

/* A stop timer keeps loop_run_forever() and loop_run_until_complete() bounded. */
static loop_handle_t *safety_stop(void) {
        loop_handle_t *h = NULL;

        if (loop_call_later_ns(G.loop, 3000000, cb_stop, NULL, &h) < 0)
                return NULL;
        return h;
}

static void run_forever(uint8_t how) {
        loop_handle_t *safety;
        int r;

        if (G.closed) {
                check(loop_run_forever(G.loop) == -ESHUTDOWN, "run_forever on a closed loop");
                return;
        }
        safety = safety_stop();
        if (how & 1)
                loop_stop(G.loop);
        else
                loop_call_soon(G.loop, cb_stop, NULL, NULL);
        r = loop_run_forever(G.loop);
        check(r == 0, "loop_run_forever: %d", r);
        check(loop_is_running(G.loop) == 0, "loop running after run_forever");
        loop_handle_cancel(safety);
        loop_handle_unref(safety);
}

static void run_until_complete(int i) {
        struct fent *e = &G.futs[i];
        loop_handle_t *safety;
        int r;

        if (!e->f)
                return;
        if (G.closed) {
                r = loop_run_until_complete(G.loop, e->f);
                check(e->st != F_PENDING || r == -ESHUTDOWN, "run_until_complete on a closed loop: %d", r);
                return;
        }
        safety = safety_stop();
        if (e->st == F_PENDING)
                loop_call_soon(G.loop, cb_complete, e, NULL);
        r = loop_run_until_complete(G.loop, e->f);
        loop_handle_cancel(safety);
        loop_handle_unref(safety);
        if (r == -EINTR) {
                check(e->st == F_PENDING, "run_until_complete: -EINTR on a done future");
                return;
        }
        check(e->st != F_PENDING, "run_until_complete returned %d on a pending future", r);
        future_check_model(e);
        check(r == loop_future_error(e->f), "run_until_complete: %d", r);
}

/*
 * The spin check: iterations that return at once with nothing done. A few
 * are legitimate (a cancelled timer reaching the front, a stale wake-up, a
 * completion for a removed poll on io_uring), bounded by what was done
 * since the last settle; a spin is not bounded.
 */
static void settle(void) {
        unsigned budget = 8 + G.timers_since_settle + 2 * G.io_changes_since_settle + G.posts_since_settle +
                          G.stops_since_settle;

        /* A registration whose number went to another file while the old
         * file lives on (epoll) is found dead only by a check the backend
         * makes every 32 to 95 events (lib/epoll.c, registration_dead):
         * until then its callback runs for nothing. Bounded, so allowed. */
        for (int o = 0; o < MAX_FDS && G.orphans[o].fd >= 0; o++)
                budget += 100;
        unsigned empty = 0, max_iter = budget + 48;
        int mark;

        if (G.closed)
                return;
        thread_join();
        mark = G.nrec;  /* posts made by callbacks during the settle may be left for later */
        for (unsigned k = 0; k < max_iter; k++) {
                unsigned exc = G.exceptions, orph = G.orphan_runs;
                struct timespec a, b;
                clock_gettime(CLOCK_MONOTONIC, &a);
                int r = run_once(1000000);
                clock_gettime(CLOCK_MONOTONIC, &b);
                int64_t took = (b.tv_sec - a.tv_sec) * 1000000000LL + (b.tv_nsec - a.tv_nsec);
                unsigned real = (unsigned) r - (G.orphan_runs - orph);
                if (real > 0 || G.exceptions != exc)
                        continue;
                if (took >= 900000)
                        break;          /* it blocked: quiescent */
                if (++empty > budget && !cfg.no_spin_check)
                        fail("spin: %u iterations of loop_run_once(1 ms) returned at once with nothing done "
                             "(last took %lld ns; %u orphaned callbacks)",
                             empty, (long long) took, G.orphan_runs);
        }
        /* Every post of the second thread has been made: it has run. */
        for (int i = 0; i < mark; i++) {
                struct rec *r = &G.recs[i];
                if ((r->kind == RK_THREAD || r->kind == RK_TS) && !r->ran && !r->cancelled)
                        fail("threadsafe callback %d not run after %u iterations", i, max_iter);
        }
        G.timers_since_settle = G.io_changes_since_settle = G.posts_since_settle = G.stops_since_settle = 0;
}

/* ---- policies ------------------------------------------------------------ */

static int make_loop(enum backend b, loop_t **ret) {
        loop_selector_t *sel = NULL;
        int r;

        if (b == B_URING)
                return loop_proactor_loop_new(ret);
        r = loop_selector_new(backend_names[b], &sel);
        if (r < 0)
                return r;
        check(strcmp(loop_selector_name(sel), backend_names[b]) == 0, "selector name");
        r = loop_selector_loop_new(sel, ret);
        loop_selector_unref(sel);
        return r;
}

static int policy_new_event_loop(loop_policy_t *self, loop_t **ret) {
        enum backend *b = loop_policy_get_userdata(self);

        return make_loop(*b, ret);
}

static void install_policy(void) {
        static const struct loop_policy_ops ops = {
                .size = sizeof(struct loop_policy_ops),
                .new_event_loop = policy_new_event_loop,
        };
        loop_policy_t *base = NULL, *p = NULL;

        if (G.policy)
                return;
        check(loop_policy_new_default(&base) == 0, "loop_policy_new_default");
        check(loop_policy_new(&ops, &G.backend, base, &p) == 0, "loop_policy_new");
        check(loop_policy_get_base(p) == base, "loop_policy_get_base");
        loop_policy_unref(base);
        check(loop_set_event_loop_policy(p) == 0, "loop_set_event_loop_policy");
        G.policy = p;
        G.policy_set_called = false;
}

/*
 * The default policy's "set called" rule (loop_policy(3)): once a loop was
 * set through a default policy in a thread (explicitly, or by
 * get_event_loop creating one), that policy creates no loop there on
 * demand. Our derived policy has a fresh default base each time it is
 * installed; the built-in default keeps its record for the life of the
 * process, across inputs.
 */
static bool builtin_set_called;

static bool *set_called_flag(void) {
        return G.policy ? &G.policy_set_called : &builtin_set_called;
}

static void set_current(loop_t *loop, const char *what) {
        int r = loop_set_event_loop(loop);

        check(r == 0, "%s: %d", what, r);
        *set_called_flag() = true;
}

static void uninstall_policy(void) {
        if (!G.policy)
                return;
        check(loop_set_event_loop_policy(NULL) == 0, "loop_set_event_loop_policy(NULL)");
        G.policy = loop_policy_unref(G.policy);
}

static void policy_op(uint8_t how) {
        loop_t *l = NULL;
        loop_policy_t *p;
        int r;

        switch (how % 7) {
        case 0:
                install_policy();
                break;
        case 1:
                uninstall_policy();
                break;
        case 2:
                set_current(G.closed ? NULL : G.loop, "loop_set_event_loop");
                break;
        case 3:
                set_current(NULL, "loop_set_event_loop(NULL)");
                break;
        case 4: {
                /* Creates the main thread's loop if it has none, unless a
                 * loop was set through the policy before: with our policy
                 * installed, on the backend under test. */
                loop_t *cur = NULL;
                bool had = loop_thread_get_loop(&cur) == 0;
                loop_unref(cur);
                r = loop_get_event_loop(&l);
                if (had || !*set_called_flag()) {
                        check(r == 0 && l, "loop_get_event_loop: %d", r);
                        *set_called_flag() = true;
                } else
                        check(r == -ENOENT && !l, "loop_get_event_loop after a set: %d", r);
                loop_unref(l);
                break;
        }
        case 5:
                r = loop_new_event_loop(&l);
                check(r == 0 && l, "loop_new_event_loop: %d", r);
                check(loop_call_soon(l, cb_stop, NULL, NULL) == 0, "call_soon on a new loop");
                check(loop_close(l) == 0, "loop_close of a new loop");
                loop_unref(l);
                break;
        default:
                p = loop_get_event_loop_policy();
                check(p != NULL, "loop_get_event_loop_policy");
                check(!G.policy || p == G.policy, "the installed policy");
                r = loop_thread_get_loop(&l);
                check(r == 0 || r == -ENOENT, "loop_thread_get_loop: %d", r);
                loop_unref(l);
                loop_policy_unref(p);
                break;
        }
}

/* ---- one input ----------------------------------------------------------- */

static void scan_fds(bool *open_) {
        for (int fd = 0; fd < FD_SCAN; fd++)
                open_[fd] = fcntl(fd, F_GETFD) >= 0;
}

static enum backend env_backend(void) {
        const char *s = getenv("FUZZ_BACKEND");

        if (!s || !*s) {
                const char *pr = getenv("LIBLOOP_PROACTOR");
                if (pr && *pr)
                        return B_URING;
                s = getenv("LIBLOOP_SELECTOR");
        }
        if (!s || !*s)
                return N_BACKENDS;
        for (int b = 0; b < N_BACKENDS; b++)
                if (strcmp(s, backend_names[b]) == 0)
                        return (enum backend) b;
        fprintf(stderr, "fuzz_loop: unknown backend '%s'\n", s);
        abort();
}

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerInitialize(int *argc, char ***argv) {
        loop_t *l = NULL;

        cfg.forced = env_backend();
        cfg.no_close_behind = getenv("FUZZ_NO_CLOSE_BEHIND") != NULL;
        cfg.no_reuse = getenv("FUZZ_NO_REUSE") != NULL;
        cfg.no_spin_check = getenv("FUZZ_NO_SPIN_CHECK") != NULL;
        cfg.no_ready_check = getenv("FUZZ_NO_READY_CHECK") != NULL;
        cfg.no_thread = getenv("FUZZ_NO_THREAD") != NULL;
        cfg.no_shutdown = getenv("FUZZ_NO_SHUTDOWN") != NULL;
        cfg.verbose = getenv("FUZZ_VERBOSE") != NULL;
        if (loop_proactor_loop_new(&l) == 0) {
                cfg.uring_ok = true;
                loop_unref(l);
        }
        if (cfg.forced == B_URING && !cfg.uring_ok) {
                /* run-fuzz reports the backend as skipped on this line. */
                fprintf(stderr, "fuzz_loop: io_uring unavailable (loop_proactor_loop_new fails), nothing to fuzz\n");
                exit(0);
        }
        G.devnull = open("/dev/null", O_WRONLY | O_CLOEXEC);
        /* The driver writes to sockets and pipes whose peer may be gone. */
        signal(SIGPIPE, SIG_IGN);
        return 0;
}

static void op(uint8_t code) {
        uint8_t a = u8(), b = u8();
        int i;

        switch (code % 40) {
        case 0:
        case 1:
                schedule_soon(false, a, b, 0);
                break;
        case 2:
                schedule_soon(true, a, b, 0);
                break;
        case 3:
        case 4:
                schedule_timer(a, (uint8_t) (a >> 3), b, u8(), 0);
                break;
        case 5:
                post_threadsafe(a & 1);
                break;
        case 6:
                thread_post(1 + a % MAX_POSTS, b);
                break;
        case 7:
                thread_join();
                break;
        case 8:
                cancel_handle(a % MAX_HANDLES);
                break;
        case 9:
                if (G.hs[a % MAX_HANDLES].h) {
                        struct hent *e = &G.hs[a % MAX_HANDLES];
                        loop_handle_unref(e->h);
                        if (--e->refs == 0)
                                *e = (struct hent) {};
                }
                break;
        case 10: {
                struct hent *e = &G.hs[a % MAX_HANDLES];
                if (e->h && e->refs < 4) {
                        check(loop_handle_ref(e->h) == e->h, "loop_handle_ref");
                        e->refs++;
                }
                if (e->h) {
                        int c = loop_handle_cancelled(e->h);
                        check(c == 1 || (c == 0 && !(e->r && e->r->cancelled)), "loop_handle_cancelled: %d", c);
                        int64_t w = loop_handle_when_ns(e->h);
                        if (e->timer)
                                check(w == e->r->min_deadline, "when_ns changed: %lld", (long long) w);
                        else
                                check(w == -ENODATA && isnan(loop_handle_when(e->h)), "when_ns of a soon handle");
                }
                break;
        }
        case 11:
        case 12:
                new_pair(a);
                break;
        case 13:
        case 14:
                add_io(a % MAX_FDS, b & 1, u8(), u8());
                break;
        case 15:
                remove_io(a % MAX_FDS, b & 1);
                break;
        case 16:
                pause_io(a % MAX_FDS, b & 1, (b >> 1) & 1);
                break;
        case 17:
                i = a % MAX_FDS;
                if (G.fds[i].fd >= 0) {
                        ssize_t n = write(G.fds[i].fd, send_data, 1 + b * 16u);
                        (void) n;
                }
                break;
        case 18:
                i = a % MAX_FDS;
                if (G.fds[i].fd >= 0) {
                        char buf[4096];
                        ssize_t n = read(G.fds[i].fd, buf, 1 + b * 16u);
                        (void) n;
                }
                break;
        case 19:
                close_fd_clean(a % MAX_FDS);
                break;
        case 20:
                if (!cfg.no_close_behind)
                        close_fd_behind(a % MAX_FDS, b & 1);
                break;
        case 21:
                dup_fd(a % MAX_FDS);
                break;
        case 22:
                i = a % MAX_FDS;
                if (G.fds[i].fd >= 0 && G.fds[i].sock && !cfg.no_shutdown)
                        shutdown(G.fds[i].fd, b % 3);
                break;
        case 23:
        case 24:
        case 25:
                run_once(timeouts_ns[a & 3]);
                break;
        case 26:
                if (!G.closed) {
                        check(loop_stop(G.loop) == 0, "loop_stop");
                        G.stops_since_settle++;
                }
                break;
        case 27:
                run_forever(a);
                break;
        case 28:
                future_new(a % MAX_FUTS);
                break;
        case 29:
                future_set(a % MAX_FUTS, b);
                break;
        case 30:
                future_add_done(a % MAX_FUTS, b, u8());
                break;
        case 31:
                future_remove_done(a % MAX_FUTS);
                break;
        case 32:
                i = a % MAX_FUTS;
                if (G.futs[i].f && (b & 1) && G.futs[i].refs < 4) {
                        loop_future_ref(G.futs[i].f);
                        G.futs[i].refs++;
                } else if (G.futs[i].f) {
                        future_release(i);
                }
                break;
        case 33:
                run_until_complete(a % MAX_FUTS);
                break;
        case 34:
        case 35:
                sock_op(a % MAX_FDS, b);
                break;
        case 36:
                policy_op(a);
                break;
        case 37: {
                struct loop_metrics m = { .size = sizeof(m) };
                int r = loop_get_metrics(G.loop, &m);
                check(G.closed ? r == -ESHUTDOWN : r == 0, "loop_get_metrics: %d", r);
                if (a & 1) {
                        r = loop_dump(G.loop, G.devnull);
                        check(G.closed ? r < 0 : r == 0, "loop_dump: %d", r);
                }
                if (a & 2) {
                        int64_t t = loop_get_timeout_ns(G.loop);
                        check(G.closed ? t == -ESHUTDOWN : t >= -1, "loop_get_timeout_ns: %lld", (long long) t);
                }
                if (a & 4) {
                        r = loop_fileno(G.loop);
                        check(G.closed ? r < 0 : (r >= 0 || r == -EOPNOTSUPP), "loop_fileno: %d", r);
                }
                if (a & 8)
                        loop_set_debug(G.loop, b & 1);
                if (a & 16) {
                        struct loop_exception_context ctx = {
                                .size = sizeof(ctx), .message = "fuzz", .error = -EPERM, .fd = -1,
                        };
                        loop_call_exception_handler(G.loop, &ctx);
                }
                break;
        }
        case 38:
                settle();
                break;
        case 39:
                if (a == 0x5c && !G.closed) {
                        /* Rare: close in the middle; everything after must fail cleanly. */
                        thread_join();
                        check(loop_close(G.loop) == 0, "loop_close");
                        check(loop_is_closed(G.loop) == 1, "loop_is_closed");
                        G.closed = true;
                } else {
                        loop_t *l = loop_ref(G.loop);
                        check(l == G.loop, "loop_ref");
                        loop_unref(l);
                }
                break;
        }
}

static void teardown(void) {
        int r;

        thread_join();
        if (!G.closed) {
                settle();
                /* The driver's own hygiene before closing: operations cancelled,
                 * callbacks removed. */
                for (int i = 0; i < MAX_FDS; i++) {
                        if (G.fds[i].fd < 0)
                                continue;
                        release_ops(&G.fds[i]);
                        for (int dir = 0; dir < 2; dir++)
                                if (G.fds[i].io[dir])
                                        remove_io(i, dir);
                }
                run_once(0);
                r = loop_close(G.loop);
                check(r == 0, "loop_close: %d", r);
                G.closed = true;
        }
        check(loop_is_closed(G.loop) == 1, "loop_is_closed after close");
        for (int i = 0; i < MAX_HANDLES; i++)
                if (G.hs[i].h)
                        hent_release(i);
        for (int i = 0; i < MAX_FUTS; i++)
                if (G.futs[i].f)
                        future_release(i);
        for (int i = 0; i < MAX_FDS; i++)
                release_ops(&G.fds[i]);
        set_current(NULL, "clearing the current loop");
        uninstall_policy();
        G.loop = loop_unref(G.loop);
        for (int i = 0; i < MAX_FDS; i++)
                if (G.fds[i].fd >= 0)
                        close(G.fds[i].fd);
        for (int d = 0; d < MAX_DUPS; d++)
                if (G.dups[d] >= 0)
                        close(G.dups[d]);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        bool open_after[FD_SCAN];
        uint8_t first;
        int r;

        {
                int devnull = G.devnull;
                memset(&G, 0, sizeof(G));
                G.devnull = devnull;
        }
        G.p = data;
        G.n = size;
        for (int i = 0; i < MAX_FDS; i++) {
                G.fds[i].fd = G.fds[i].peer = -1;
                G.orphans[i].fd = -1;
        }
        for (int d = 0; d < MAX_DUPS; d++)
                G.dups[d] = -1;
        scan_fds(G.fd_open_before);

        first = u8();
        G.backend = cfg.forced != N_BACKENDS ? cfg.forced : (enum backend) (first % N_BACKENDS);
        if (G.backend == B_URING && !cfg.uring_ok)
                G.backend = B_EPOLL;
        if (first & 0x10) {
                /* Through a derived policy's new_event_loop. */
                install_policy();
                r = loop_new_event_loop(&G.loop);
        } else {
                r = make_loop(G.backend, &G.loop);
        }
        check(r == 0, "making a %s loop: %d", backend_names[G.backend], r);
        check(loop_set_exception_handler(G.loop, on_exception, NULL) == 0, "loop_set_exception_handler");
        {
                void *ud = (void *) 1;
                check(loop_get_exception_handler(G.loop, &ud) == on_exception && ud == NULL,
                      "loop_get_exception_handler");
        }
        trace("input of %zu bytes on %s", size, backend_names[G.backend]);

        for (int k = 0; k < MAX_OPS && G.n > 0; k++) {
                uint8_t code = u8();
                trace("op %d: %u", k, code % 40);
                op(code);
        }
        teardown();

        scan_fds(open_after);
        for (int fd = 0; fd < FD_SCAN; fd++)
                check(open_after[fd] == G.fd_open_before[fd], "descriptor %d %s", fd,
                      open_after[fd] ? "leaked" : "closed by someone else");
        return 0;
}
