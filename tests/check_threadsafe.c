/* SPDX-License-Identifier: MIT */
/*
 * loop_call_soon_threadsafe from other threads: exactly once, per-thread
 * FIFO, wakes a sleeping loop, survives floods; plus the threadsafe parts of
 * the API (loop_stop, loop_ref/unref, cancelling a call_soon handle).
 *
 * TSan-friendly: the loop's callbacks only touch state of the loop's thread,
 * threads report through atomics, and everything is joined before reading.
 */
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>

#include "testutil.h"

#define N_THREADS 4
#define N_CALLS 10000

/* userdata encodes (thread, sequence number) */
#define ENCODE(t, i) ((void *) (uintptr_t) (((uintptr_t) (t) << 24) | (uintptr_t) (i)))
#define DEC_THREAD(p) ((int) ((uintptr_t) (p) >> 24))
#define DEC_SEQ(p) ((int) ((uintptr_t) (p) % ((uintptr_t) 1 << 24)))

/* State of the loop's thread (only callbacks and the test touch it). */
struct tally {
        int count[N_THREADS];
        int next[N_THREADS]; /* expected next sequence number */
        int out_of_order;
        int total;
        int want; /* stop the loop at this total */
};

static struct tally tally;

static int tally_cb(loop_t *loop, void *userdata) {
        int t = DEC_THREAD(userdata), i = DEC_SEQ(userdata);

        if (t < 0 || t >= N_THREADS) {
                tally.out_of_order++;
                return 0;
        }
        if (i != tally.next[t])
                tally.out_of_order++;
        tally.next[t] = i + 1;
        tally.count[t]++;
        if (++tally.total == tally.want)
                return loop_stop(loop);
        return 0;
}

struct poster {
        pthread_t thread;
        loop_t *loop;
        int id;
        int calls;
        atomic_int *go; /* start line, so the threads overlap */
        atomic_int failures;
        atomic_int first_error;
        loop_callback_t cb;     /* NULL: tally_cb */
        int burst;              /* yield the processor after every burst posts (0: never) */
};

static void *poster_main(void *arg) {
        struct poster *p = arg;
        int i;

        while (!atomic_load(p->go))
                sched_yield();
        for (i = 0; i < p->calls; i++) {
                int r = loop_call_soon_threadsafe(p->loop, p->cb ? p->cb : tally_cb, ENCODE(p->id, i), NULL);

                if (r < 0) {
                        atomic_fetch_add(&p->failures, 1);
                        atomic_store(&p->first_error, r);
                }
                if (p->burst && i % p->burst == p->burst - 1)
                        sched_yield();
        }
        return NULL;
}

static void start_posters_with(struct poster *p, int n, loop_t *loop, int calls, atomic_int *go,
                               loop_callback_t cb, int burst) {
        int t;

        for (t = 0; t < n; t++) {
                p[t].cb = cb;
                p[t].burst = burst;
                p[t].loop = loop;
                p[t].id = t;
                p[t].calls = calls;
                p[t].go = go;
                atomic_init(&p[t].failures, 0);
                atomic_init(&p[t].first_error, 0);
                ck_assert_int_eq(pthread_create(&p[t].thread, NULL, poster_main, &p[t]), 0);
        }
}

static void start_posters(struct poster *p, int n, loop_t *loop, int calls, atomic_int *go) {
        start_posters_with(p, n, loop, calls, go, NULL, 0);
}

static void join_posters(struct poster *p, int n) {
        int t;

        for (t = 0; t < n; t++) {
                ck_assert_int_eq(pthread_join(p[t].thread, NULL), 0);
                ck_assert_msg(atomic_load(&p[t].failures) == 0, "thread %d: %d calls failed (%s)", t,
                              atomic_load(&p[t].failures), loop_strerror(atomic_load(&p[t].first_error)));
        }
}

static void tally_reset(int want) {
        memset(&tally, 0, sizeof(tally));
        tally.want = want;
}

/*
 * N_THREADS threads x calls posts while the loop runs: each runs exactly
 * once, FIFO per thread. cb and burst as in struct poster.
 */
static void posters_while_running(int calls, loop_callback_t cb, int burst) {
        loop_t *loop = tu_loop_new();
        struct poster p[N_THREADS];
        atomic_int go;
        int t, guard = 0;
        loop_handle_t *gh = NULL;

        atomic_init(&go, 0);
        tally_reset(N_THREADS * calls);
        start_posters_with(p, N_THREADS, loop, calls, &go, cb, burst);
        ck_assert_int_eq(loop_call_later(loop, 60.0, tu_stop_cb, &guard, &gh), 0);
        atomic_store(&go, 1);
        ck_assert_int_eq(loop_run_forever(loop), 0);
        join_posters(p, N_THREADS);
        ck_assert_int_eq(guard, 0);
        ck_assert_int_eq(tally.total, N_THREADS * calls);
        ck_assert_int_eq(tally.out_of_order, 0);
        for (t = 0; t < N_THREADS; t++)
                ck_assert_int_eq(tally.count[t], calls);
        /* Nothing is left over. */
        ck_assert_int_eq(loop_run_once(loop, 0), 0);
        ck_assert_int_eq(tally.total, N_THREADS * calls);
        ck_assert_int_eq(loop_handle_cancel(gh), 0);
        loop_handle_unref(gh);
        loop_unref(loop);
}

/* 4 threads x 10,000 calls while the loop runs. */
START_TEST(test_many_threads_exactly_once) {
        posters_while_running(N_CALLS, NULL, 0);
}
END_TEST

/* The same with the loop not running while the threads post (queue, then drain). */
START_TEST(test_many_threads_before_run) {
        loop_t *loop = tu_loop_new();
        struct poster p[N_THREADS];
        atomic_int go;
        int t, ran;

        atomic_init(&go, 1);
        tally_reset(-1);
        start_posters(p, N_THREADS, loop, N_CALLS, &go);
        join_posters(p, N_THREADS);
        ran = loop_run_once(loop, 0);
        ck_assert_int_eq(ran, N_THREADS * N_CALLS);
        ck_assert_int_eq(tally.out_of_order, 0);
        for (t = 0; t < N_THREADS; t++)
                ck_assert_int_eq(tally.count[t], N_CALLS);
        loop_unref(loop);
}
END_TEST

/* The loop's own work in progress while one thread floods it. */
static int busy_chain_cb(loop_t *loop, void *userdata) {
        int *n = userdata;

        (*n)++;
        if (tally.total >= tally.want)
                return 0;
        return loop_call_soon(loop, busy_chain_cb, n, NULL);
}

START_TEST(test_flood_while_running) {
        loop_t *loop = tu_loop_new();
        struct poster p[1];
        atomic_int go;
        int chain = 0, guard = 0;
        loop_handle_t *gh = NULL;
        const int n = 100000;

        atomic_init(&go, 0);
        tally_reset(n);
        start_posters(p, 1, loop, n, &go);
        ck_assert_int_eq(loop_call_soon(loop, busy_chain_cb, &chain, NULL), 0);
        ck_assert_int_eq(loop_call_later(loop, 25.0, tu_stop_cb, &guard, &gh), 0);
        atomic_store(&go, 1);
        ck_assert_int_eq(loop_run_forever(loop), 0);
        join_posters(p, 1);
        ck_assert_int_eq(guard, 0);
        ck_assert_int_eq(tally.total, n);
        ck_assert_int_eq(tally.count[0], n);
        ck_assert_int_eq(tally.out_of_order, 0);
        ck_assert_int_gt(chain, 0);
        loop_handle_cancel(gh);
        loop_handle_unref(gh);
        loop_unref(loop);
}
END_TEST

/* Two threads post n calls each while the loop runs iterations of
 * loop_run_once(max_wait_ns): each runs once, in order per thread. */
static void flood_run_once(loop_t *loop, int n, int64_t max_wait_ns) {
        struct poster p[2];
        atomic_int go;
        int64_t deadline;

        atomic_init(&go, 0);
        tally_reset(2 * n);
        start_posters(p, 2, loop, n, &go);
        atomic_store(&go, 1);
        deadline = tu_now_ns() + 20 * TU_SEC;
        while (tally.total < 2 * n && tu_now_ns() < deadline)
                ck_assert_int_ge(loop_run_once(loop, max_wait_ns), 0);
        join_posters(p, 2);
        ck_assert_int_eq(tally.total, 2 * n);
        ck_assert_int_eq(tally.count[0], n);
        ck_assert_int_eq(tally.count[1], n);
        ck_assert_int_eq(tally.out_of_order, 0);
}

/* Same, driven by run_once(-1) (embedding): each post must wake the wait.
 * No timers, no fds: only the posts can end each wait. */
START_TEST(test_flood_run_once_blocking) {
        loop_t *loop = tu_loop_new();

        flood_run_once(loop, 20000, -1);
        loop_unref(loop);
}
END_TEST

/*
 * After a flood the loop goes back to sleep: a loop that took many posts
 * waits a few microseconds for more before it sleeps (threadsafe.c), and
 * must not go on waiting, nor iterate, once they stop.
 */
START_TEST(test_flood_then_sleeps) {
        loop_t *loop = tu_loop_new();
        struct loop_metrics m0 = { .size = sizeof(m0) }, m1 = { .size = sizeof(m1) };
        int stopped = 0;
        int64_t t0;

        flood_run_once(loop, 50000, 10 * TU_MSEC);
        ck_assert_int_eq(loop_get_metrics(loop, &m0), 0);
        t0 = tu_now_ns();
        ck_assert_int_eq(loop_call_later(loop, 0.05, tu_stop_cb, &stopped, NULL), 0);
        ck_assert_int_eq(loop_run_forever(loop), 0);
        ck_assert_int_eq(loop_get_metrics(loop, &m1), 0);
        ck_assert_int_eq(stopped, 1);
        ck_assert_int_ge(tu_now_ns() - t0, 50 * TU_MSEC);
        /* One wait for the timer, one iteration to run it (and a spare). */
        ck_assert_uint_le(m1.iterations - m0.iterations, 3);
        ck_assert_uint_eq(m1.callbacks - m0.callbacks, 1);
        loop_unref(loop);
}
END_TEST

/* ---- waking a sleeping loop --------------------------------------------- */

struct waker {
        loop_t *loop;
        int64_t delay_ns;
        atomic_int ret;
};

static int wake_stop_cb(loop_t *loop, void *userdata) {
        (*(int *) userdata)++;
        return loop_stop(loop);
}

static int woken;

static void *waker_main(void *arg) {
        struct waker *w = arg;

        tu_sleep_ns(w->delay_ns);
        atomic_store(&w->ret, loop_call_soon_threadsafe(w->loop, wake_stop_cb, &woken, NULL));
        return NULL;
}

START_TEST(test_wakes_sleeping_loop) {
        loop_t *loop = tu_loop_new();
        struct waker w = {.loop = loop, .delay_ns = 50 * TU_MSEC};
        pthread_t t;
        int64_t t0;

        woken = 0;
        atomic_init(&w.ret, 1);
        t0 = tu_now_ns();
        ck_assert_int_eq(pthread_create(&t, NULL, waker_main, &w), 0);
        /* Nothing scheduled: run_forever sleeps with no timeout. */
        ck_assert_int_eq(loop_run_forever(loop), 0);
        ck_assert_int_eq(pthread_join(t, NULL), 0);
        ck_assert_int_eq(atomic_load(&w.ret), 0);
        ck_assert_int_eq(woken, 1);
        ck_assert_int_ge(tu_now_ns() - t0, 50 * TU_MSEC);
        ck_assert_int_lt(tu_now_ns() - t0, 10 * TU_SEC);
        loop_unref(loop);
}
END_TEST

/* Several wake-ups in a row (the wake-up fd is drained and re-armed). */
START_TEST(test_wakes_repeatedly) {
        loop_t *loop = tu_loop_new();
        int round;

        woken = 0;
        for (round = 0; round < 5; round++) {
                struct waker w = {.loop = loop, .delay_ns = 10 * TU_MSEC};
                pthread_t t;

                atomic_init(&w.ret, 1);
                ck_assert_int_eq(pthread_create(&t, NULL, waker_main, &w), 0);
                ck_assert_int_eq(loop_run_forever(loop), 0);
                ck_assert_int_eq(pthread_join(t, NULL), 0);
                ck_assert_int_eq(atomic_load(&w.ret), 0);
                ck_assert_int_eq(woken, round + 1);
        }
        loop_unref(loop);
}
END_TEST

/* A post wakes a loop that sleeps until a far timer, and the timer stays. */
START_TEST(test_wakes_loop_waiting_for_timer) {
        loop_t *loop = tu_loop_new();
        struct waker w = {.loop = loop, .delay_ns = 20 * TU_MSEC};
        loop_handle_t *far = NULL;
        int far_count = 0;
        pthread_t t;
        int64_t t0 = tu_now_ns();

        woken = 0;
        atomic_init(&w.ret, 1);
        ck_assert_int_eq(loop_call_later(loop, 20.0, tu_count_cb, &far_count, &far), 0);
        ck_assert_int_eq(pthread_create(&t, NULL, waker_main, &w), 0);
        ck_assert_int_eq(loop_run_forever(loop), 0);
        ck_assert_int_eq(pthread_join(t, NULL), 0);
        ck_assert_int_eq(woken, 1);
        ck_assert_int_eq(far_count, 0);
        ck_assert_int_lt(tu_now_ns() - t0, 10 * TU_SEC);
        ck_assert_int_eq(loop_handle_cancelled(far), 0);
        ck_assert_int_eq(loop_handle_cancel(far), 0);
        loop_handle_unref(far);
        loop_unref(loop);
}
END_TEST

/*
 * A post the loop takes while busy (no wait that blocks: the iteration
 * only looks at the ring, and the post wrote no wake-up), then a post
 * while it sleeps: the second must still wake it, whatever the first left
 * behind (an unread eventfd, kqueue's queued EVFILT_USER trigger).
 */
struct busy_taker {
        loop_t *loop;
        atomic_int go;          /* the loop is busy: post the first */
        atomic_int first_ran;
        atomic_int ret;
};

static int busy_first_cb(loop_t *loop, void *userdata) {
        (void) loop;
        atomic_store(&((struct busy_taker *) userdata)->first_ran, 1);
        return 0;
}

/* Keeps the loop busy (no wait) until the first post has run. */
static int busy_until_first_cb(loop_t *loop, void *userdata) {
        struct busy_taker *b = userdata;

        atomic_store(&b->go, 1);
        if (atomic_load(&b->first_ran))
                return 0;
        return loop_call_soon(loop, busy_until_first_cb, b, NULL);
}

static void *busy_taker_main(void *arg) {
        struct busy_taker *b = arg;
        int r;

        while (!atomic_load(&b->go))
                tu_sleep_ns(TU_MSEC);
        r = loop_call_soon_threadsafe(b->loop, busy_first_cb, b, NULL);
        while (r == 0 && !atomic_load(&b->first_ran))
                tu_sleep_ns(TU_MSEC);
        /* Time for the loop to go to sleep in its wait. */
        tu_sleep_ns(50 * TU_MSEC);
        if (r == 0)
                r = loop_call_soon_threadsafe(b->loop, wake_stop_cb, &woken, NULL);
        atomic_store(&b->ret, r);
        return NULL;
}

START_TEST(test_wakes_after_busy_take) {
        loop_t *loop = tu_loop_new();
        struct busy_taker b = {.loop = loop};
        loop_handle_t *gh = NULL;
        int guard = 0;
        pthread_t t;

        woken = 0;
        atomic_init(&b.go, 0);
        atomic_init(&b.first_ran, 0);
        atomic_init(&b.ret, 1);
        ck_assert_int_eq(loop_call_soon(loop, busy_until_first_cb, &b, NULL), 0);
        ck_assert_int_eq(loop_call_later(loop, 10.0, tu_stop_cb, &guard, &gh), 0);
        ck_assert_int_eq(pthread_create(&t, NULL, busy_taker_main, &b), 0);
        ck_assert_int_eq(loop_run_forever(loop), 0);
        ck_assert_int_eq(pthread_join(t, NULL), 0);
        ck_assert_int_eq(atomic_load(&b.ret), 0);
        ck_assert_int_eq(guard, 0);
        ck_assert_int_eq(woken, 1);
        loop_handle_cancel(gh);
        loop_handle_unref(gh);
        loop_unref(loop);
}
END_TEST

/* ---- loop_stop() from another thread ------------------------------------------- */

struct stopper {
        loop_t *loop;
        pthread_t thread;
        atomic_int started;     /* the loop runs (its first callback said so) */
        atomic_int ret;         /* what loop_stop() returned */
};

static int mark_started_cb(loop_t *loop, void *userdata) {
        (void) loop;
        atomic_store(&((struct stopper *) userdata)->started, 1);
        return 0;
}

static void *stopper_main(void *arg) {
        struct stopper *s = arg;

        while (!atomic_load(&s->started))
                tu_sleep_ns(TU_MSEC);
        /* Time for the loop to go to sleep in its wait, which has no timeout. */
        tu_sleep_ns(50 * TU_MSEC);
        atomic_store(&s->ret, loop_stop(s->loop));
        return NULL;
}

/* Wakes the loop from another thread after 5 s unless told the test is over. */
struct stop_watchdog {
        loop_t *loop;
        pthread_t thread;
        atomic_int done;
        atomic_int fired;
};

static int watchdog_stop_cb(loop_t *loop, void *userdata) {
        (void) userdata;
        return loop_stop(loop);
}

static void *stop_watchdog_main(void *arg) {
        struct stop_watchdog *w = arg;
        int64_t deadline = tu_now_ns() + 5 * TU_SEC;

        while (!atomic_load(&w->done) && tu_now_ns() < deadline)
                tu_sleep_ns(5 * TU_MSEC);
        if (!atomic_load(&w->done)) {
                atomic_store(&w->fired, 1);
                loop_call_soon_threadsafe(w->loop, watchdog_stop_cb, NULL, NULL);
        }
        return NULL;
}

/*
 * Debug mode checks threads, as asyncio's _check_thread: while the loop
 * runs in one thread, a call that is not thread-safe from another fails
 * with -EPERM and is reported in the loop's thread; the thread-safe calls
 * still work. While it does not run, any thread may use it.
 */
struct debug_run {
        loop_t *loop;
        atomic_int started;
        int reports;
        int error;
        char message[256];
};

static void debug_handler(loop_t *loop, const struct loop_exception_context *ctx, void *userdata) {
        struct debug_run *d = userdata;

        (void) loop;
        d->reports++;
        d->error = ctx->error;
        snprintf(d->message, sizeof(d->message), "%s", ctx->message);
}

static int debug_started_cb(loop_t *loop, void *userdata) {
        (void) loop;
        atomic_store(&((struct debug_run *) userdata)->started, 1);
        return 0;
}

static void *debug_run_main(void *arg) {
        struct debug_run *d = arg;

        if (loop_call_soon(d->loop, debug_started_cb, d, NULL) < 0 || loop_run_forever(d->loop) < 0)
                abort();
        return NULL;
}

START_TEST(test_debug_checks_thread) {
        loop_t *loop = tu_loop_new();
        struct debug_run d = {.loop = loop};
        int sv[2], n = 0;
        pthread_t t;

        tu_socketpair(sv);
        ck_assert_int_eq(loop_set_debug(loop, 1), 0);
        ck_assert_int_eq(loop_set_exception_handler(loop, debug_handler, &d), 0);
        /* Not running: any thread may schedule. */
        ck_assert_int_eq(loop_call_soon(loop, tu_count_cb, &n, NULL), 0);
        ck_assert_int_eq(pthread_create(&t, NULL, debug_run_main, &d), 0);
        while (!atomic_load(&d.started))
                tu_sleep_ns(TU_MSEC);
        ck_assert_int_eq(loop_call_soon(loop, tu_count_cb, &n, NULL), -EPERM);
        ck_assert_int_eq((loop_call_soon)(loop, tu_count_cb, &n, NULL), -EPERM);
        ck_assert_int_eq(loop_call_later(loop, 0.001, tu_count_cb, &n, NULL), -EPERM);
        ck_assert_int_eq(loop_call_at_ns(loop, 0, tu_count_cb, &n, NULL), -EPERM);
        ck_assert_int_eq(loop_add_reader(loop, sv[0], tu_io_count_cb, &n), -EPERM);
        ck_assert_int_eq(loop_add_writer(loop, sv[0], tu_io_count_cb, &n), -EPERM);
        ck_assert_int_eq(loop_remove_reader(loop, sv[0]), -EPERM);
        /* Thread-safe calls are not refused. */
        ck_assert_int_eq(loop_call_soon_threadsafe(loop, tu_count_cb, &n, NULL), 0);
        ck_assert_int_eq(loop_stop(loop), 0);
        ck_assert_int_eq(pthread_join(t, NULL), 0);
        /* Reported in the loop's thread, which has run everything by now. */
        ck_assert_int_ge(loop_run_once(loop, 0), 0);
        ck_assert_int_ge(d.reports, 1);
        ck_assert_int_eq(d.error, -EPERM);
        ck_assert_msg(strstr(d.message, "Non-thread-safe") != NULL, "report: %s", d.message);
        ck_assert_int_eq(n, 2);
        /* Debug off: no check, and the inline path is open again. */
        ck_assert_int_eq(loop_set_debug(loop, 0), 0);
        ck_assert_int_eq(loop_call_soon(loop, tu_count_cb, &n, NULL), 0);
        ck_assert_int_eq(loop_run_once(loop, 0), 1);
        ck_assert_int_eq(n, 3);
        loop_unref(loop);
        tu_close_pair(sv);
}
END_TEST

/*
 * A control thread stops a loop that sleeps in run_forever with nothing
 * scheduled: the stop wakes it (the watchdog only rescues a loop that was
 * not woken, and then fails the test).
 */
START_TEST(test_stop_from_thread_wakes_loop) {
        loop_t *loop = tu_loop_new();
        struct stopper s = {.loop = loop};
        struct stop_watchdog w = {.loop = loop};
        int count = 0;

        atomic_init(&s.started, 0);
        atomic_init(&s.ret, 1);
        atomic_init(&w.done, 0);
        atomic_init(&w.fired, 0);
        ck_assert_int_eq(loop_call_soon(loop, mark_started_cb, &s, NULL), 0);
        ck_assert_int_eq(pthread_create(&w.thread, NULL, stop_watchdog_main, &w), 0);
        ck_assert_int_eq(pthread_create(&s.thread, NULL, stopper_main, &s), 0);
        ck_assert_int_eq(loop_run_forever(loop), 0);
        atomic_store(&w.done, 1);
        ck_assert_int_eq(pthread_join(s.thread, NULL), 0);
        ck_assert_int_eq(pthread_join(w.thread, NULL), 0);
        ck_assert_int_eq(atomic_load(&s.ret), 0);
        ck_assert_msg(!atomic_load(&w.fired), "loop_stop() from another thread did not wake the loop");
        ck_assert_int_eq(loop_is_running(loop), 0);

        /* The stop was for that run only. */
        ck_assert_int_eq(loop_call_soon(loop, tu_count_cb, &count, NULL), 0);
        ck_assert_int_eq(loop_call_soon(loop, wake_stop_cb, &count, NULL), 0);
        ck_assert_int_eq(loop_run_forever(loop), 0);
        ck_assert_int_eq(count, 2);
        tu_run_for(loop, 10 * TU_MSEC);         /* no wake-up left over that misbehaves */
        loop_unref(loop);
}
END_TEST

static int busy_cb(loop_t *loop, void *userdata) {
        struct stopper *s = userdata;

        atomic_store(&s->started, 1);
        return loop_call_soon(loop, busy_cb, s, NULL);
}

/* A loop busy with callbacks (it never waits) stops too. */
START_TEST(test_stop_from_thread_busy_loop) {
        loop_t *loop = tu_loop_new();
        struct stopper s = {.loop = loop};

        atomic_init(&s.started, 0);
        atomic_init(&s.ret, 1);
        ck_assert_int_eq(loop_call_soon(loop, busy_cb, &s, NULL), 0);
        ck_assert_int_eq(pthread_create(&s.thread, NULL, stopper_main, &s), 0);
        ck_assert_int_eq(loop_run_forever(loop), 0);
        ck_assert_int_eq(pthread_join(s.thread, NULL), 0);
        ck_assert_int_eq(atomic_load(&s.ret), 0);
        loop_unref(loop);
}
END_TEST

static void *stop_now_main(void *arg) {
        atomic_store(&((struct stopper *) arg)->ret, loop_stop(((struct stopper *) arg)->loop));
        return NULL;
}

/* As in asyncio, a stop made before the run lets the next run_forever do one iteration. */
START_TEST(test_stop_from_thread_before_run) {
        loop_t *loop = tu_loop_new();
        struct stopper s = {.loop = loop};
        int count = 0;

        atomic_init(&s.ret, 1);
        ck_assert_int_eq(pthread_create(&s.thread, NULL, stop_now_main, &s), 0);
        ck_assert_int_eq(pthread_join(s.thread, NULL), 0);
        ck_assert_int_eq(atomic_load(&s.ret), 0);
        ck_assert_int_eq(loop_call_soon(loop, tu_count_cb, &count, NULL), 0);
        ck_assert_int_eq(loop_run_forever(loop), 0);
        ck_assert_int_eq(count, 1);
        ck_assert_int_eq(loop_close(loop), 0);
        atomic_store(&s.ret, 1);
        ck_assert_int_eq(pthread_create(&s.thread, NULL, stop_now_main, &s), 0);
        ck_assert_int_eq(pthread_join(s.thread, NULL), 0);
        ck_assert_int_eq(atomic_load(&s.ret), -ESHUTDOWN);
        loop_unref(loop);
}
END_TEST

/* ---- from the loop's own thread, closed loops, handles -------------------- */

static int post_from_loop_cb(loop_t *loop, void *userdata) {
        int *state = userdata;

        state[0]++;
        state[1] = loop_call_soon_threadsafe(loop, tu_count_cb, &state[2], NULL);
        return 0;
}

START_TEST(test_from_loop_thread) {
        loop_t *loop = tu_loop_new();
        loop_handle_t *h = NULL;
        int count = 0, state[3] = {0, -100, 0};

        /* Before the loop runs. */
        ck_assert_int_eq(loop_call_soon_threadsafe(loop, tu_count_cb, &count, &h), 0);
        ck_assert_ptr_ne(h, NULL);
        ck_assert_int_eq(loop_run_once(loop, 0), 1);
        ck_assert_int_eq(count, 1);
        ck_assert_int_eq(loop_handle_cancelled(h), 0);
        loop_handle_unref(h);

        /* From a callback: runs in the next iteration, like call_soon. */
        ck_assert_int_eq(loop_call_soon(loop, post_from_loop_cb, state, NULL), 0);
        ck_assert_int_eq(loop_run_once(loop, 0), 1);
        ck_assert_int_eq(state[0], 1);
        ck_assert_int_eq(state[1], 0);
        ck_assert_int_eq(state[2], 0);
        ck_assert_int_eq(loop_run_once(loop, 2 * TU_SEC), 1);
        ck_assert_int_eq(state[2], 1);
        ck_assert_int_eq(loop_run_once(loop, 0), 0);
        loop_unref(loop);
}
END_TEST

/*
 * call_soon_threadsafe keeps its place among call_soon's entries, as in
 * asyncio's one ready queue: from the loop's own thread (before the run
 * and from a callback), and from a thread whose post happens before the
 * call_soon (joined, or handed off through a mutex).
 */
struct seq {
        int log[512];
        int n;
};

struct seq_item {
        struct seq *seq;
        int id;
};

static int seq_cb(loop_t *loop, void *userdata) {
        struct seq_item *it = userdata;

        (void) loop;
        if (it->seq->n < 512)
                it->seq->log[it->seq->n] = it->id;
        it->seq->n++;
        return 0;
}

static void assert_in_order(const struct seq *s, int n) {
        ck_assert_int_eq(s->n, n);
        for (int i = 0; i < n; i++)
                ck_assert_msg(s->log[i] == i, "call %d ran %d-th", s->log[i], i);
}

static int mixed_from_callback_cb(loop_t *loop, void *userdata) {
        struct seq_item *it = userdata;

        for (int i = 0; i < 50; i++)
                if ((i % 2 ? loop_call_soon(loop, seq_cb, &it[i], NULL)
                           : loop_call_soon_threadsafe(loop, seq_cb, &it[i], NULL)) < 0)
                        return -EIO;
        return 0;
}

START_TEST(test_mixed_with_call_soon) {
        loop_t *loop = tu_loop_new();
        static struct seq seq;
        static struct seq_item items[200];
        int i;

        memset(&seq, 0, sizeof(seq));
        for (i = 0; i < 200; i++)
                items[i] = (struct seq_item){.seq = &seq, .id = i};
        /* loop_call_soon_threadsafe(1); loop_call_soon(2): 1 runs first. */
        for (i = 0; i < 100; i++) {
                if (i % 2)
                        ck_assert_int_eq(loop_call_soon(loop, seq_cb, &items[i], NULL), 0);
                else
                        ck_assert_int_eq(loop_call_soon_threadsafe(loop, seq_cb, &items[i], NULL), 0);
        }
        ck_assert_int_eq(loop_run_once(loop, 0), 100);
        assert_in_order(&seq, 100);
        /* The same from inside a callback. */
        memset(&seq, 0, sizeof(seq));
        ck_assert_int_eq(loop_call_soon(loop, mixed_from_callback_cb, items, NULL), 0);
        ck_assert_int_eq(loop_run_once(loop, 0), 1);
        ck_assert_int_eq(loop_run_once(loop, 0), 50);
        assert_in_order(&seq, 50);
        loop_unref(loop);
}
END_TEST

struct handoff {
        loop_t *loop;
        struct seq_item *item;
        pthread_mutex_t lock;
        pthread_cond_t cond;
        bool posted;
};

static void *post_and_hand_off(void *arg) {
        struct handoff *h = arg;

        if (loop_call_soon_threadsafe(h->loop, seq_cb, h->item, NULL) < 0)
                abort();
        pthread_mutex_lock(&h->lock);
        h->posted = true;
        pthread_cond_signal(&h->cond);
        pthread_mutex_unlock(&h->lock);
        return NULL;
}

START_TEST(test_cross_thread_happens_before) {
        loop_t *loop = tu_loop_new();
        static struct seq seq;
        static struct seq_item items[120];
        pthread_t t;
        int i;

        memset(&seq, 0, sizeof(seq));
        for (i = 0; i < 120; i++)
                items[i] = (struct seq_item){.seq = &seq, .id = i};
        for (i = 0; i < 120; i += 2) {
                struct handoff h = {.loop = loop, .item = &items[i]};
                pthread_mutex_init(&h.lock, NULL);
                pthread_cond_init(&h.cond, NULL);
                ck_assert_int_eq(pthread_create(&t, NULL, post_and_hand_off, &h), 0);
                if (i % 4 == 0) {
                        /* Joined. */
                        ck_assert_int_eq(pthread_join(t, NULL), 0);
                } else {
                        /* Handed off through a mutex. */
                        pthread_mutex_lock(&h.lock);
                        while (!h.posted)
                                pthread_cond_wait(&h.cond, &h.lock);
                        pthread_mutex_unlock(&h.lock);
                        ck_assert_int_eq(pthread_join(t, NULL), 0);
                }
                ck_assert_int_eq(loop_call_soon(loop, seq_cb, &items[i + 1], NULL), 0);
                pthread_cond_destroy(&h.cond);
                pthread_mutex_destroy(&h.lock);
                if (i % 20 == 18)
                        ck_assert_int_ge(loop_run_once(loop, 0), 0);
        }
        tu_run_for(loop, 20 * TU_MSEC);
        assert_in_order(&seq, 120);
        loop_unref(loop);
}
END_TEST

struct closed_post {
        loop_t *loop;
        atomic_int ret;
};

static void *closed_post_main(void *arg) {
        struct closed_post *cp = arg;

        atomic_store(&cp->ret, loop_call_soon_threadsafe(cp->loop, tu_count_cb, NULL, NULL));
        return NULL;
}

START_TEST(test_closed_loop) {
        loop_t *loop = tu_loop_new();
        struct closed_post cp = {.loop = loop};
        loop_handle_t *h = NULL;
        int count = 0;
        pthread_t t;

        ck_assert_int_eq(loop_call_soon_threadsafe(loop, tu_count_cb, &count, NULL), 0);
        ck_assert_int_eq(loop_close(loop), 0);
        ck_assert_int_eq(count, 0);
        ck_assert_int_eq(loop_call_soon_threadsafe(loop, tu_count_cb, &count, NULL), -ESHUTDOWN);
        ck_assert_int_eq(loop_call_soon_threadsafe(loop, tu_count_cb, &count, &h), -ESHUTDOWN);
        atomic_init(&cp.ret, 1);
        ck_assert_int_eq(pthread_create(&t, NULL, closed_post_main, &cp), 0);
        ck_assert_int_eq(pthread_join(t, NULL), 0);
        ck_assert_int_eq(atomic_load(&cp.ret), -ESHUTDOWN);
        ck_assert_int_eq(count, 0);
        loop_unref(loop);
}
END_TEST

/*
 * The loop falls behind now and then (a slow callback), so the posts of 4
 * threads fill the queue's ring and go to its overflow, and back: still
 * exactly once and FIFO per thread.
 */
static int slow_tally_cb(loop_t *loop, void *userdata) {
        if (tally.total % 4096 == 0)
                tu_sleep_ns(2 * TU_MSEC);
        return tally_cb(loop, userdata);
}

START_TEST(test_overflow_while_running) {
        /* Bursts of 1000, so the ring empties between some of them. */
        posters_while_running(3 * N_CALLS, slow_tally_cb, 1000);
}
END_TEST

/*
 * Threads post (with handles) while the loop runs and is then closed: every
 * post either fails with -ESHUTDOWN or was taken before the close, nothing
 * runs after it, and nothing leaks (ASan and valgrind check the last part).
 */
static int close_ran;   /* the loop's thread's */

struct close_poster {
        pthread_t thread;
        loop_t *loop;
        atomic_int *go;
        atomic_int posted;      /* successful posts so far, for the main thread */
        int ok, shut, other;
};

static void *close_poster_main(void *arg) {
        struct close_poster *cp = arg;

        while (!atomic_load(cp->go))
                sched_yield();
        for (;;) {
                loop_handle_t *h = NULL;
                int r = loop_call_soon_threadsafe(cp->loop, tu_count_cb, &close_ran, cp->ok % 2 ? &h : NULL);
                if (r == -ESHUTDOWN) {
                        cp->shut++;
                        break;
                }
                if (r < 0) {
                        cp->other++;
                        break;
                }
                cp->ok++;
                atomic_store(&cp->posted, cp->ok);
                loop_handle_unref(h);
                /* A burst, then one post a millisecond until the close:
                 * nothing holds a flood back, and under valgrind the loop
                 * gets little of the machine. */
                if (cp->ok >= 5000)
                        tu_sleep_ns(TU_MSEC);
        }
        return NULL;
}

START_TEST(test_close_while_posting) {
        loop_t *loop = tu_loop_new();
        struct close_poster cp[N_THREADS];
        atomic_int go;

        atomic_init(&go, 0);
        for (int t = 0; t < N_THREADS; t++) {
                cp[t] = (struct close_poster) { .loop = loop, .go = &go };
                atomic_init(&cp[t].posted, 0);
                ck_assert_int_eq(pthread_create(&cp[t].thread, NULL, close_poster_main, &cp[t]), 0);
        }
        close_ran = 0;
        atomic_store(&go, 1);
        /* Run until every thread got posts in (then a little more), so the
         * close lands in the middle of all of them. */
        int64_t deadline = tu_now_ns() + 20 * TU_SEC;
        for (int t = 0; t < N_THREADS; t++)
                while (atomic_load(&cp[t].posted) == 0 && tu_now_ns() < deadline)
                        ck_assert_int_ge(loop_run_once(loop, TU_MSEC), 0);
        for (int i = 0; i < 10; i++)
                ck_assert_int_ge(loop_run_once(loop, TU_MSEC), 0);
        ck_assert_int_gt(close_ran, 0);
        ck_assert_int_eq(loop_close(loop), 0);
        int ran_before_close = close_ran;
        for (int t = 0; t < N_THREADS; t++) {
                ck_assert_int_eq(pthread_join(cp[t].thread, NULL), 0);
                ck_assert_int_eq(cp[t].shut, 1);
                ck_assert_int_eq(cp[t].other, 0);
                ck_assert_int_gt(cp[t].ok, 0);
        }
        ck_assert_int_eq(loop_run_once(loop, 0), -ESHUTDOWN);
        ck_assert_int_eq(close_ran, ran_before_close);
        loop_unref(loop);
}
END_TEST

START_TEST(test_cancel_before_run) {
        loop_t *loop = tu_loop_new();
        loop_handle_t *h1 = NULL, *h2 = NULL;
        int count = 0;

        ck_assert_int_eq(loop_call_soon_threadsafe(loop, tu_count_cb, &count, &h1), 0);
        ck_assert_int_eq(loop_call_soon_threadsafe(loop, tu_count_cb, &count, &h2), 0);
        ck_assert_int_eq(loop_handle_cancel(h1), 0);
        ck_assert_int_eq(loop_handle_cancelled(h1), 1);
        ck_assert_int_eq(loop_handle_cancel(h1), 0);
        tu_run_until(loop, &count, 1, 5 * TU_SEC);
        ck_assert_int_eq(loop_run_once(loop, 0), 0);
        ck_assert_int_eq(count, 1);
        ck_assert_int_eq(loop_handle_cancelled(h1), 1);
        ck_assert_int_eq(loop_handle_cancelled(h2), 0);
        loop_handle_unref(h1);
        loop_handle_unref(h2);
        loop_unref(loop);
}
END_TEST

struct canceller {
        loop_handle_t *h;
        atomic_int ret;
};

static void *canceller_main(void *arg) {
        struct canceller *c = arg;

        atomic_store(&c->ret, loop_handle_cancel(c->h));
        return NULL;
}

/* Cancelling a threadsafe handle from another thread. */
START_TEST(test_cancel_from_other_thread) {
        loop_t *loop = tu_loop_new();
        struct canceller c;
        int count = 0;
        pthread_t t;

        atomic_init(&c.ret, 1);
        ck_assert_int_eq(loop_call_soon_threadsafe(loop, tu_count_cb, &count, &c.h), 0);
        ck_assert_int_eq(pthread_create(&t, NULL, canceller_main, &c), 0);
        ck_assert_int_eq(pthread_join(t, NULL), 0);
        ck_assert_int_eq(atomic_load(&c.ret), 0);
        ck_assert_int_ge(loop_run_once(loop, 0), 0);
        ck_assert_int_eq(count, 0);
        ck_assert_int_eq(loop_handle_cancelled(c.h), 1);
        loop_handle_unref(c.h);
        loop_unref(loop);
}
END_TEST

/*
 * A thread posts and cancels every other call at once while the loop runs:
 * the cancel races with the loop picking the call up. Whatever the timing,
 * nothing runs twice and every call that was not cancelled runs. (The
 * handles go back to the loop's thread for loop_handle_unref, which the
 * spec does not list among the thread-safe calls.)
 */
#define N_RACE 20000

struct racer {
        loop_t *loop;
        loop_handle_t *handles[N_RACE];
        int ran[N_RACE]; /* loop thread only */
        atomic_int failures;
};

struct race_item {
        struct racer *r;
        int i;
};

static struct race_item race_items[N_RACE];

static int race_cb(loop_t *loop, void *userdata) {
        struct race_item *it = userdata;

        (void) loop;
        it->r->ran[it->i]++;
        return 0;
}

static int race_stop_cb(loop_t *loop, void *userdata) {
        (void) userdata;
        return loop_stop(loop);
}

static void *racer_main(void *arg) {
        struct racer *r = arg;
        int i;

        for (i = 0; i < N_RACE; i++) {
                if (loop_call_soon_threadsafe(r->loop, race_cb, &race_items[i], &r->handles[i]) < 0)
                        atomic_fetch_add(&r->failures, 1);
                else if (i % 2 == 0 && loop_handle_cancel(r->handles[i]) != 0)
                        atomic_fetch_add(&r->failures, 1);
        }
        if (loop_call_soon_threadsafe(r->loop, race_stop_cb, NULL, NULL) < 0)
                atomic_fetch_add(&r->failures, 1);
        return NULL;
}

START_TEST(test_cancel_race_while_running) {
        static struct racer r;
        loop_t *loop = tu_loop_new();
        pthread_t t;
        int i, cancelled_ran = 0;

        memset(&r, 0, sizeof(r));
        r.loop = loop;
        atomic_init(&r.failures, 0);
        for (i = 0; i < N_RACE; i++)
                race_items[i] = (struct race_item){.r = &r, .i = i};
        ck_assert_int_eq(pthread_create(&t, NULL, racer_main, &r), 0);
        ck_assert_int_eq(loop_run_forever(loop), 0);
        ck_assert_int_eq(pthread_join(t, NULL), 0);
        ck_assert_int_eq(atomic_load(&r.failures), 0);
        for (i = 0; i < N_RACE; i++) {
                if (i % 2)
                        ck_assert_int_eq(r.ran[i], 1);
                else
                        ck_assert_int_le(r.ran[i], 1);
                cancelled_ran += i % 2 == 0 && r.ran[i];
                loop_handle_unref(r.handles[i]);
        }
        /* (how many cancelled calls still ran depends on the timing only) */
        ck_assert_int_le(cancelled_ran, N_RACE / 2);
        loop_unref(loop);
}
END_TEST

/* ---- loop_ref / loop_unref are atomic ---------------------------------- */

struct reffer {
        loop_t *loop;
        atomic_int *go;
};

static void *reffer_main(void *arg) {
        struct reffer *r = arg;
        int i;

        while (!atomic_load(r->go))
                sched_yield();
        for (i = 0; i < 10000; i++) {
                loop_ref(r->loop);
                loop_unref(r->loop);
        }
        return NULL;
}

START_TEST(test_ref_unref_threads) {
        loop_t *loop = tu_loop_new();
        struct reffer r[N_THREADS];
        pthread_t t[N_THREADS];
        atomic_int go;
        int i;

        atomic_init(&go, 0);
        for (i = 0; i < N_THREADS; i++) {
                r[i] = (struct reffer){.loop = loop, .go = &go};
                ck_assert_int_eq(pthread_create(&t[i], NULL, reffer_main, &r[i]), 0);
        }
        atomic_store(&go, 1);
        for (i = 0; i < N_THREADS; i++)
                ck_assert_int_eq(pthread_join(t[i], NULL), 0);
        /* Still exactly our one reference: alive and usable, then freed. */
        ck_assert_int_eq(loop_is_closed(loop), 0);
        tu_assert_usable(loop);
        ck_assert_ptr_eq(loop_unref(loop), NULL);
}
END_TEST

/* ---- handles released in other threads, during and after the loop ------- */

#define N_HANDLES 4096

static int noop_cb(loop_t *loop, void *userdata) {
        (void) loop;
        (void) userdata;
        return 0;
}

struct releaser {
        loop_handle_t **handles;
        size_t n;
        atomic_int *go;
};

static void *releaser_main(void *arg) {
        struct releaser *r = arg;

        while (!atomic_load(r->go))
                sched_yield();
        for (size_t i = 0; i < r->n; i++) {
                /* A detached handle still answers, wherever it is asked. */
                ck_assert_int_ge(loop_handle_cancelled(r->handles[i]), 0);
                r->handles[i] = loop_handle_unref(r->handles[i]);
        }
        return NULL;
}

/* Releases every handle in hs from N_THREADS threads at once while the
 * calling thread runs body(loop) (if loop is not NULL). */
static void release_in_threads(loop_handle_t **hs, size_t n, loop_t *loop, void (*body)(loop_t *loop)) {
        struct releaser r[N_THREADS];
        pthread_t t[N_THREADS];
        atomic_int go;
        size_t per = n / N_THREADS;

        atomic_init(&go, 0);
        for (int i = 0; i < N_THREADS; i++) {
                r[i] = (struct releaser) {
                        .handles = hs + (size_t) i * per,
                        .n = i == N_THREADS - 1 ? n - (size_t) i * per : per,
                        .go = &go,
                };
                ck_assert_int_eq(pthread_create(&t[i], NULL, releaser_main, &r[i]), 0);
        }
        atomic_store(&go, 1);
        if (loop)
                body(loop);
        for (int i = 0; i < N_THREADS; i++)
                ck_assert_int_eq(pthread_join(t[i], NULL), 0);
        for (size_t i = 0; i < n; i++)
                ck_assert_ptr_null(hs[i]);
}

/* The loop's thread keeps taking handles (from what the others give back)
 * while they are being given back. */
static void schedule_and_cancel(loop_t *loop) {
        for (int i = 0; i < 20000; i++) {
                loop_handle_t *h = NULL;
                ck_assert_int_eq(loop_call_later_ns(loop, 3600 * TU_SEC, noop_cb, NULL, &h), 0);
                ck_assert_int_eq(loop_handle_cancel(h), 0);
                loop_handle_unref(h);
                if (i % 1000 == 0)
                        ck_assert_int_ge(loop_run_once(loop, 0), 0);
        }
}

START_TEST(test_handles_released_in_threads) {
        loop_t *loop = tu_loop_new();
        loop_handle_t **hs = calloc(N_HANDLES, sizeof(*hs));

        ck_assert_ptr_nonnull(hs);
        /* Handles the loop lets go of (they ran) while the caller holds them. */
        for (size_t i = 0; i < N_HANDLES; i++)
                ck_assert_int_eq(loop_call_soon(loop, noop_cb, NULL, &hs[i]), 0);
        ck_assert_int_eq(loop_run_once(loop, 0), N_HANDLES);
        release_in_threads(hs, N_HANDLES, loop, schedule_and_cancel);

        /* Handles that outlive their loop: closing drops the pending
         * timers, freeing the loop leaves the handles to their holders. */
        for (size_t i = 0; i < N_HANDLES; i++)
                ck_assert_int_eq(loop_call_later_ns(loop, 3600 * TU_SEC, noop_cb, NULL, &hs[i]), 0);
        for (size_t i = 0; i < N_HANDLES; i += 3)
                ck_assert_int_eq(loop_handle_cancel(hs[i]), 0);
        ck_assert_int_eq(loop_close(loop), 0);
        ck_assert_ptr_null(loop_unref(loop));
        for (size_t i = 0; i < N_HANDLES; i++)
                ck_assert(isfinite(loop_handle_when(hs[i])));
        release_in_threads(hs, N_HANDLES, NULL, NULL);
        free(hs);
}
END_TEST

static Suite *threadsafe_suite(void) {
        Suite *s = suite_create("threadsafe");
        TCase *tc;

        tc = tu_tcase(s, "exactly_once");
        tcase_add_test(tc, test_many_threads_exactly_once);
        tcase_add_test(tc, test_many_threads_before_run);
        tcase_add_test(tc, test_flood_while_running);
        tcase_add_test(tc, test_flood_run_once_blocking);
        tcase_add_test(tc, test_flood_then_sleeps);
        tcase_add_test(tc, test_overflow_while_running);
        tcase_add_test(tc, test_close_while_posting);

        tc = tu_tcase(s, "wakeup");
        tcase_add_test(tc, test_wakes_sleeping_loop);
        tcase_add_test(tc, test_wakes_repeatedly);
        tcase_add_test(tc, test_wakes_loop_waiting_for_timer);
        tcase_add_test(tc, test_wakes_after_busy_take);

        tc = tu_tcase(s, "debug");
        tcase_add_test(tc, test_debug_checks_thread);

        tc = tu_tcase(s, "stop");
        tcase_add_test(tc, test_stop_from_thread_wakes_loop);
        tcase_add_test(tc, test_stop_from_thread_busy_loop);
        tcase_add_test(tc, test_stop_from_thread_before_run);

        tc = tu_tcase(s, "misc");
        tcase_add_test(tc, test_from_loop_thread);
        tcase_add_test(tc, test_mixed_with_call_soon);
        tcase_add_test(tc, test_cross_thread_happens_before);
        tcase_add_test(tc, test_closed_loop);
        tcase_add_test(tc, test_cancel_before_run);
        tcase_add_test(tc, test_cancel_from_other_thread);
        tcase_add_test(tc, test_cancel_race_while_running);
        tcase_add_test(tc, test_ref_unref_threads);
        tcase_add_test(tc, test_handles_released_in_threads);
        return s;
}

int main(void) {
        return tu_run_suite(threadsafe_suite());
}
