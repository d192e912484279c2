/* SPDX-License-Identifier: MIT */
/*
 * Loop lifecycle (new/ref/unref/close) and running (run_forever, stop,
 * run_once, call_soon ordering, re-entrancy, exceptions from callbacks).
 */
#include <pthread.h>
#include <stdbool.h>
#ifndef _WIN32
#include <sys/wait.h>
#endif
#include <unistd.h>

#include "testutil.h"

/* ---- shared callback helpers ------------------------------------------ */

/* Records the order in which callbacks ran. */
struct order {
        int log[2048];
        int n;
};

struct order_item {
        struct order *order;
        int id;
};

static int record_cb(loop_t *loop, void *userdata) {
        struct order_item *it = userdata;

        (void) loop;
        ck_assert_int_lt(it->order->n, 2048);
        it->order->log[it->order->n++] = it->id;
        return 0;
}

/* ---- lifecycle ------------------------------------------------------- */

START_TEST(test_new_ref_unref) {
        loop_t *loop = tu_loop_new();

        ck_assert_int_eq(loop_is_closed(loop), 0);
        ck_assert_int_eq(loop_is_running(loop), 0);
        ck_assert_ptr_eq(loop_ref(loop), loop);
        /* Two references: the first unref leaves a working loop. */
        ck_assert_ptr_eq(loop_unref(loop), NULL);
        ck_assert_int_eq(loop_is_closed(loop), 0);
        tu_assert_usable(loop);
        ck_assert_ptr_eq(loop_unref(loop), NULL);
        ck_assert_ptr_eq(loop_unref(NULL), NULL);
        ck_assert_ptr_eq(loop_ref(NULL), NULL);
}
END_TEST

START_TEST(test_selector_matches_environment) {
        loop_t *loop = tu_loop_new();
        const char *env = getenv("LIBLOOP_SELECTOR");
        const char *const *names = loop_selector_names();

        ck_assert_ptr_ne(names, NULL);
        ck_assert_ptr_ne(names[0], NULL);
        if (tu_is_proactor(loop)) {
                /* LIBLOOP_PROACTOR wins over LIBLOOP_SELECTOR in loop_new(). */
                ck_assert_ptr_eq(loop_get_selector(loop), NULL);
                loop_unref(loop);
                return;
        }
        if (env && *env)
                ck_assert_str_eq(tu_selector_name(loop), env);
        else
                ck_assert_str_eq(tu_selector_name(loop), names[0]);
        loop_unref(loop);
}
END_TEST

START_TEST(test_close) {
        loop_t *loop = tu_loop_new();

        ck_assert_int_eq(loop_close(loop), 0);
        ck_assert_int_eq(loop_is_closed(loop), 1);
        ck_assert_int_eq(loop_is_running(loop), 0);
        /* Closing twice is fine. */
        ck_assert_int_eq(loop_close(loop), 0);
        ck_assert_int_eq(loop_is_closed(loop), 1);
        ck_assert_int_eq(loop_run_once(loop, 0), -ESHUTDOWN);
        ck_assert_int_eq(loop_run_forever(loop), -ESHUTDOWN);
        ck_assert_ptr_eq(loop_unref(loop), NULL);
}
END_TEST

START_TEST(test_close_drops_pending) {
        loop_t *loop = tu_loop_new();
        loop_handle_t *h = NULL, *th = NULL;
        int soon = 0, timer = 0, sv[2];

        tu_socketpair(sv);
        tu_write_byte(sv[1]);
        ck_assert_int_eq(loop_call_soon(loop, tu_count_cb, &soon, NULL), 0);
        ck_assert_int_eq(loop_call_soon(loop, tu_count_cb, &soon, &h), 0);
        ck_assert_int_eq(loop_call_soon_threadsafe(loop, tu_count_cb, &soon, NULL), 0);
        ck_assert_int_eq(loop_call_later_ns(loop, 0, tu_count_cb, &timer, &th), 0);
        ck_assert_int_eq(loop_call_later(loop, -1.0, tu_count_cb, &timer, NULL), 0);
        ck_assert_int_eq(loop_add_reader(loop, sv[0], tu_io_count_cb, &soon), 0);
        ck_assert_int_eq(loop_add_writer(loop, sv[0], tu_io_count_cb, &soon), 0);

        ck_assert_int_eq(loop_close(loop), 0);
        ck_assert_int_eq(soon, 0);
        ck_assert_int_eq(timer, 0);
        ck_assert_int_eq(loop_run_once(loop, 0), -ESHUTDOWN);
        ck_assert_int_eq(soon, 0);
        ck_assert_int_eq(timer, 0);

        /* The caller's handles stay valid after the loop dropped them. */
        ck_assert_ptr_eq(loop_handle_unref(h), NULL);
        ck_assert_ptr_eq(loop_handle_unref(th), NULL);
        ck_assert_ptr_eq(loop_unref(loop), NULL);
        tu_close_pair(sv);
}
END_TEST

/*
 * Dropping the last reference closes the loop: nothing pending runs and the
 * loop's kernel objects (selector fd, wake-up fd) are released.
 */
START_TEST(test_unref_closes_and_releases_fds) {
        int before = tu_count_fds();
        loop_t *loop;
        int count = 0, sv[2];

        loop = tu_loop_new();
        tu_socketpair(sv);
        tu_write_byte(sv[1]);
        ck_assert_int_eq(loop_call_soon(loop, tu_count_cb, &count, NULL), 0);
        ck_assert_int_eq(loop_call_soon_threadsafe(loop, tu_count_cb, &count, NULL), 0);
        ck_assert_int_eq(loop_call_later_ns(loop, TU_SEC, tu_count_cb, &count, NULL), 0);
        ck_assert_int_eq(loop_add_reader(loop, sv[0], tu_io_count_cb, &count), 0);
        /* One iteration so that lazy registrations reach the kernel. */
        ck_assert_int_ge(loop_run_once(loop, 0), 2);
        count = 0;
        ck_assert_int_eq(loop_call_soon(loop, tu_count_cb, &count, NULL), 0);
        ck_assert_ptr_eq(loop_unref(loop), NULL);
        ck_assert_int_eq(count, 0);
        tu_close_pair(sv);
        if (before >= 0)
                ck_assert_int_eq(tu_count_fds(), before);
}
END_TEST

START_TEST(test_close_releases_fds) {
        int before = tu_count_fds();
        loop_t *loop = tu_loop_new();
        int count = 0;

        ck_assert_int_eq(loop_call_soon_threadsafe(loop, tu_count_cb, &count, NULL), 0);
        ck_assert_int_eq(loop_run_once(loop, 0), 1);
        ck_assert_int_eq(loop_close(loop), 0);
        ck_assert_ptr_eq(loop_unref(loop), NULL);
        if (before >= 0)
                ck_assert_int_eq(tu_count_fds(), before);
}
END_TEST

/* A handle the caller holds outlives the loop that made it. */
START_TEST(test_handle_outlives_loop) {
        loop_t *loop = tu_loop_new();
        loop_handle_t *th = NULL, *h = NULL;
        int64_t when = loop_time_ns(loop) + 10 * TU_SEC;
        int count = 0, r;

        ck_assert_int_eq(loop_call_at_ns(loop, when, tu_count_cb, &count, &th), 0);
        ck_assert_int_eq(loop_call_soon(loop, tu_count_cb, &count, &h), 0);
        ck_assert_ptr_eq(loop_unref(loop), NULL);
        ck_assert_int_eq(loop_handle_when_ns(th), when);
        ck_assert_int_eq(loop_handle_when_ns(h), -ENODATA);
        r = loop_handle_cancel(th);
        ck_assert_msg(r == 0 || r == -ESHUTDOWN, "cancel after close: %d", r);
        r = loop_handle_cancel(h);
        ck_assert_msg(r == 0 || r == -ESHUTDOWN, "cancel after close: %d", r);
        ck_assert_int_eq(count, 0);
        ck_assert_ptr_eq(loop_handle_unref(th), NULL);
        ck_assert_ptr_eq(loop_handle_unref(h), NULL);
}
END_TEST

START_TEST(test_handle_ref_unref) {
        loop_t *loop = tu_loop_new();
        loop_handle_t *h = NULL;
        int count = 0;

        ck_assert_int_eq(loop_call_soon(loop, tu_count_cb, &count, &h), 0);
        ck_assert_ptr_ne(h, NULL);
        ck_assert_ptr_eq(loop_handle_ref(h), h);
        ck_assert_ptr_eq(loop_handle_unref(h), NULL);
        ck_assert_int_eq(loop_run_once(loop, 0), 1);
        ck_assert_int_eq(count, 1);
        /* asyncio: a handle whose callback ran is not "cancelled". */
        ck_assert_int_eq(loop_handle_cancelled(h), 0);
        ck_assert_int_eq(loop_handle_cancel(h), 0);
        ck_assert_ptr_eq(loop_handle_unref(h), NULL);
        ck_assert_ptr_eq(loop_handle_ref(NULL), NULL);
        ck_assert_ptr_eq(loop_handle_unref(NULL), NULL);
        loop_unref(loop);
}
END_TEST

/* ---- run_forever / stop -------------------------------------------- */

struct stop_state {
        int a, b, c, d;
        int running_inside;
};

static int stop_d_cb(loop_t *loop, void *userdata) {
        struct stop_state *st = userdata;

        (void) loop;
        st->d++;
        return 0;
}

static int stop_a_cb(loop_t *loop, void *userdata) {
        struct stop_state *st = userdata;

        st->a++;
        st->running_inside = loop_is_running(loop);
        ck_assert_int_eq(loop_stop(loop), 0);
        /* Scheduled by a callback of the stopping iteration: must not run. */
        ck_assert_int_eq(loop_call_soon(loop, stop_d_cb, st, NULL), 0);
        return 0;
}

static int stop_b_cb(loop_t *loop, void *userdata) {
        struct stop_state *st = userdata;

        (void) loop;
        st->b++;
        return 0;
}

static int stop_c_cb(loop_t *loop, void *userdata) {
        struct stop_state *st = userdata;

        (void) loop;
        st->c++;
        return 0;
}

START_TEST(test_run_forever_stop) {
        loop_t *loop = tu_loop_new();
        struct stop_state st = {0};

        ck_assert_int_eq(loop_call_soon(loop, stop_a_cb, &st, NULL), 0);
        ck_assert_int_eq(loop_call_soon(loop, stop_b_cb, &st, NULL), 0);
        ck_assert_int_eq(loop_call_soon(loop, stop_c_cb, &st, NULL), 0);
        ck_assert_int_eq(loop_run_forever(loop), 0);
        /* The current iteration completed ... */
        ck_assert_int_eq(st.a, 1);
        ck_assert_int_eq(st.b, 1);
        ck_assert_int_eq(st.c, 1);
        ck_assert_int_eq(st.running_inside, 1);
        /* ... and what it scheduled waits for the next one. */
        ck_assert_int_eq(st.d, 0);
        ck_assert_int_eq(loop_is_running(loop), 0);
        ck_assert_int_eq(loop_run_once(loop, 0), 1);
        ck_assert_int_eq(st.d, 1);
        ck_assert_int_eq(loop_run_once(loop, 0), 0);
        loop_unref(loop);
}
END_TEST

static int chain_cb(loop_t *loop, void *userdata) {
        int *count = userdata;

        (*count)++;
        return loop_call_soon(loop, chain_cb, count, NULL);
}

/* stop() before run: the next run_forever runs exactly one iteration. */
START_TEST(test_stop_before_run) {
        loop_t *loop = tu_loop_new();
        loop_handle_t *guard = NULL;
        int chain = 0, guard_fired = 0;
        int64_t t0;

        ck_assert_int_eq(loop_call_soon(loop, chain_cb, &chain, NULL), 0);
        /* A far timer: the one iteration must not wait for it. */
        ck_assert_int_eq(loop_call_later(loop, 5.0, tu_stop_cb, &guard_fired, &guard), 0);
        ck_assert_int_eq(loop_stop(loop), 0);
        t0 = tu_now_ns();
        ck_assert_int_eq(loop_run_forever(loop), 0);
        ck_assert_int_lt(tu_now_ns() - t0, 4 * TU_SEC);
        ck_assert_int_eq(guard_fired, 0);
        ck_assert_int_eq(chain, 1);
        ck_assert_int_eq(loop_is_running(loop), 0);

        /* The stop was consumed: this run goes on until the chain stops it. */
        ck_assert_int_eq(loop_handle_cancel(guard), 0);
        loop_handle_unref(guard);
        ck_assert_int_eq(loop_call_later_ns(loop, 20 * TU_MSEC, tu_stop_cb, NULL, NULL), 0);
        ck_assert_int_eq(loop_run_forever(loop), 0);
        ck_assert_int_gt(chain, 2);
        loop_unref(loop);
}
END_TEST

/* stop() before run with nothing to do: run_forever must not block. */
START_TEST(test_stop_before_run_idle) {
        loop_t *loop = tu_loop_new();
        loop_handle_t *guard = NULL;
        int guard_fired = 0;

        ck_assert_int_eq(loop_call_later(loop, 5.0, tu_stop_cb, &guard_fired, &guard), 0);
        ck_assert_int_eq(loop_stop(loop), 0);
        ck_assert_int_eq(loop_run_forever(loop), 0);
        ck_assert_int_eq(guard_fired, 0);
        ck_assert_int_eq(loop_handle_cancelled(guard), 0);
        ck_assert_int_eq(loop_handle_cancel(guard), 0);
        loop_handle_unref(guard);
        loop_unref(loop);
}
END_TEST

START_TEST(test_run_again_after_stop) {
        loop_t *loop = tu_loop_new();
        int stops = 0, chain = 0, round;

        for (round = 1; round <= 3; round++) {
                int before = chain;

                ck_assert_int_eq(loop_call_soon(loop, chain_cb, &chain, NULL), 0);
                ck_assert_int_eq(loop_call_later_ns(loop, 10 * TU_MSEC, tu_stop_cb, &stops, NULL), 0);
                ck_assert_int_eq(loop_run_forever(loop), 0);
                ck_assert_int_eq(stops, round);
                /* It really ran for a while (until the timer), not one iteration. */
                ck_assert_int_gt(chain - before, 1);
                ck_assert_int_eq(loop_is_running(loop), 0);
        }
        loop_unref(loop);
}
END_TEST

/* ---- ordering ------------------------------------------------------- */

START_TEST(test_call_soon_fifo) {
        loop_t *loop = tu_loop_new();
        static struct order order;
        static struct order_item items[1000];
        int i;

        memset(&order, 0, sizeof(order));
        for (i = 0; i < 1000; i++) {
                items[i] = (struct order_item){.order = &order, .id = i};
                ck_assert_int_eq(loop_call_soon(loop, record_cb, &items[i], NULL), 0);
        }
        ck_assert_int_eq(loop_run_once(loop, 0), 1000);
        ck_assert_int_eq(order.n, 1000);
        for (i = 0; i < 1000; i++)
                ck_assert_int_eq(order.log[i], i);
        ck_assert_int_eq(loop_run_once(loop, 0), 0);
        loop_unref(loop);
}
END_TEST

/* Same, with and without handles interleaved (the fast path and the other). */
START_TEST(test_call_soon_fifo_mixed_handles) {
        loop_t *loop = tu_loop_new();
        static struct order order;
        static struct order_item items[200];
        loop_handle_t *handles[200];
        int i;

        memset(&order, 0, sizeof(order));
        for (i = 0; i < 200; i++) {
                items[i] = (struct order_item){.order = &order, .id = i};
                handles[i] = NULL;
                ck_assert_int_eq(loop_call_soon(loop, record_cb, &items[i], i % 3 == 0 ? &handles[i] : NULL), 0);
        }
        ck_assert_int_eq(loop_run_once(loop, 0), 200);
        for (i = 0; i < 200; i++) {
                ck_assert_int_eq(order.log[i], i);
                loop_handle_unref(handles[i]);
        }
        loop_unref(loop);
}
END_TEST

struct next_iter {
        int first, second, third;
};

static int next_third_cb(loop_t *loop, void *userdata) {
        (void) loop;
        ((struct next_iter *) userdata)->third++;
        return 0;
}

static int next_second_cb(loop_t *loop, void *userdata) {
        ((struct next_iter *) userdata)->second++;
        return loop_call_soon(loop, next_third_cb, userdata, NULL);
}

static int next_first_cb(loop_t *loop, void *userdata) {
        ((struct next_iter *) userdata)->first++;
        return loop_call_soon(loop, next_second_cb, userdata, NULL);
}

/* asyncio's _run_once: what a callback schedules runs next iteration. */
START_TEST(test_call_soon_runs_next_iteration) {
        loop_t *loop = tu_loop_new();
        struct next_iter st = {0};

        ck_assert_int_eq(loop_call_soon(loop, next_first_cb, &st, NULL), 0);
        ck_assert_int_eq(loop_run_once(loop, 0), 1);
        ck_assert_int_eq(st.first, 1);
        ck_assert_int_eq(st.second, 0);
        ck_assert_int_eq(loop_run_once(loop, 0), 1);
        ck_assert_int_eq(st.second, 1);
        ck_assert_int_eq(st.third, 0);
        ck_assert_int_eq(loop_run_once(loop, 0), 1);
        ck_assert_int_eq(st.third, 1);
        ck_assert_int_eq(loop_run_once(loop, 0), 0);
        loop_unref(loop);
}
END_TEST

START_TEST(test_run_once_count) {
        loop_t *loop = tu_loop_new();
        loop_handle_t *h = NULL;
        int count = 0;
        int64_t t0;

        /* Nothing to do, no blocking. */
        ck_assert_int_eq(loop_run_once(loop, 0), 0);

        ck_assert_int_eq(loop_call_soon(loop, tu_count_cb, &count, NULL), 0);
        ck_assert_int_eq(loop_call_soon(loop, tu_count_cb, &count, NULL), 0);
        ck_assert_int_eq(loop_call_soon(loop, tu_count_cb, &count, NULL), 0);
        ck_assert_int_eq(loop_run_once(loop, 0), 3);
        ck_assert_int_eq(count, 3);

        /* A cancelled handle does not run and is not counted. */
        ck_assert_int_eq(loop_call_soon(loop, tu_count_cb, &count, &h), 0);
        ck_assert_int_eq(loop_call_soon(loop, tu_count_cb, &count, NULL), 0);
        ck_assert_int_eq(loop_handle_cancel(h), 0);
        ck_assert_int_eq(loop_run_once(loop, 0), 1);
        ck_assert_int_eq(count, 4);
        ck_assert_int_eq(loop_handle_cancelled(h), 1);
        loop_handle_unref(h);

        /* A positive timeout with nothing to do returns 0, bounded. */
        t0 = tu_now_ns();
        ck_assert_int_eq(loop_run_once(loop, 20 * TU_MSEC), 0);
        ck_assert_int_lt(tu_now_ns() - t0, 2 * TU_SEC);
        loop_unref(loop);
}
END_TEST

/* run_once(-1) sleeps until the earliest timer, then runs it. */
START_TEST(test_run_once_waits_for_timer) {
        loop_t *loop = tu_loop_new();
        int count = 0, iterations = 0, ran = 0;
        int64_t t0 = tu_now_ns();

        ck_assert_int_eq(loop_call_later_ns(loop, 5 * TU_MSEC, tu_count_cb, &count, NULL), 0);
        while (count == 0 && tu_now_ns() - t0 < 5 * TU_SEC) {
                int r = loop_run_once(loop, -1);

                ck_assert_int_ge(r, 0);
                ran += r;
                iterations++;
        }
        ck_assert_int_eq(count, 1);
        ck_assert_int_eq(ran, 1);
        ck_assert_int_ge(tu_now_ns() - t0, 5 * TU_MSEC);
        loop_unref(loop);
}
END_TEST

/* ---- re-entrancy and -EBUSY ---------------------------------------- */

struct busy_state {
        loop_t *other;
        int run_forever, run_once, close, is_closed;
        int other_forever, other_once;
        int ran;
};

static int busy_cb(loop_t *loop, void *userdata) {
        struct busy_state *st = userdata;

        st->ran++;
        st->run_forever = loop_run_forever(loop);
        st->run_once = loop_run_once(loop, 0);
        st->close = loop_close(loop);
        st->is_closed = loop_is_closed(loop);
        if (st->other) {
                st->other_forever = loop_run_forever(st->other);
                st->other_once = loop_run_once(st->other, 0);
        }
        return loop_stop(loop);
}

START_TEST(test_run_while_running) {
        loop_t *loop = tu_loop_new();
        struct busy_state st = {0};

        ck_assert_int_eq(loop_call_soon(loop, busy_cb, &st, NULL), 0);
        ck_assert_int_eq(loop_run_forever(loop), 0);
        ck_assert_int_eq(st.ran, 1);
        ck_assert_int_eq(st.run_forever, -EBUSY);
        ck_assert_int_eq(st.run_once, -EBUSY);
        ck_assert_int_eq(st.close, -EBUSY);
        ck_assert_int_eq(st.is_closed, 0);
        ck_assert_int_eq(loop_is_closed(loop), 0);
        tu_assert_usable(loop);

        /* The same from run_once. */
        memset(&st, 0, sizeof(st));
        ck_assert_int_eq(loop_call_soon(loop, busy_cb, &st, NULL), 0);
        ck_assert_int_eq(loop_run_once(loop, 0), 1);
        ck_assert_int_eq(st.run_forever, -EBUSY);
        ck_assert_int_eq(st.run_once, -EBUSY);
        ck_assert_int_eq(st.close, -EBUSY);
        ck_assert_int_eq(loop_is_closed(loop), 0);
        tu_assert_usable(loop);
        loop_unref(loop);
}
END_TEST

START_TEST(test_other_loop_running_in_thread) {
        loop_t *loop = tu_loop_new();
        loop_t *other = tu_loop_new();
        struct busy_state st = {0};
        int other_count = 0;

        st.other = other;
        ck_assert_int_eq(loop_call_soon(other, tu_count_cb, &other_count, NULL), 0);
        ck_assert_int_eq(loop_call_soon(loop, busy_cb, &st, NULL), 0);
        ck_assert_int_eq(loop_run_forever(loop), 0);
        ck_assert_int_eq(st.other_forever, -EBUSY);
        ck_assert_int_eq(st.other_once, -EBUSY);
        ck_assert_int_eq(other_count, 0);
        ck_assert_int_eq(loop_is_running(other), 0);
        /* Once the first loop returned, the other one may run here. */
        ck_assert_int_eq(loop_run_once(other, 0), 1);
        ck_assert_int_eq(other_count, 1);
        loop_unref(other);
        loop_unref(loop);
}
END_TEST

struct thread_state {
        loop_t *busy_loop; /* running in the test's thread */
        int busy_forever;  /* loop_run_forever(busy_loop) from the thread */
        int busy_once;
        int own_new, own_once, own_count;
};

static void *thread_main(void *arg) {
        struct thread_state *ts = arg;
        loop_t *own = NULL;

        ts->busy_forever = loop_run_forever(ts->busy_loop);
        ts->busy_once = loop_run_once(ts->busy_loop, 0);
        /* "Another loop running" is per thread: this thread may run its own. */
        ts->own_new = loop_new(&own);
        if (ts->own_new == 0) {
                if (loop_call_soon(own, tu_count_cb, &ts->own_count, NULL) == 0)
                        ts->own_once = loop_run_once(own, 0);
                loop_unref(own);
        }
        return NULL;
}

static int spawn_thread_cb(loop_t *loop, void *userdata) {
        struct thread_state *ts = userdata;
        pthread_t t;

        ts->busy_loop = loop;
        ck_assert_int_eq(pthread_create(&t, NULL, thread_main, ts), 0);
        ck_assert_int_eq(pthread_join(t, NULL), 0);
        return loop_stop(loop);
}

START_TEST(test_running_and_threads) {
        loop_t *loop = tu_loop_new();
        struct thread_state ts = {0};

        ck_assert_int_eq(loop_call_soon(loop, spawn_thread_cb, &ts, NULL), 0);
        ck_assert_int_eq(loop_run_forever(loop), 0);
        ck_assert_int_eq(ts.busy_forever, -EBUSY);
        ck_assert_int_eq(ts.busy_once, -EBUSY);
        ck_assert_int_eq(ts.own_new, 0);
        ck_assert_int_eq(ts.own_once, 1);
        ck_assert_int_eq(ts.own_count, 1);
        tu_assert_usable(loop);
        loop_unref(loop);
}
END_TEST

/* ---- callbacks that raise ------------------------------------------ */

struct seen_exception {
        loop_t *loop;
        char message[128];
        int error;
        loop_handle_t *handle;
        int fd;
        size_t size;
        int calls;
};

static void record_handler(loop_t *loop, const struct loop_exception_context *ctx, void *userdata) {
        struct seen_exception *all = userdata;
        /* The first call is recorded in all[0], later ones in all[1]. */
        struct seen_exception *seen = &all[all[0].calls++ == 0 ? 0 : 1];

        seen->loop = loop;
        seen->size = ctx->size;
        snprintf(seen->message, sizeof(seen->message), "%s", ctx->message ? ctx->message : "(null)");
        seen->error = ctx->error;
        seen->handle = ctx->handle;
        seen->fd = ctx->fd;
}

static int fail_cb(loop_t *loop, void *userdata) {
        (void) loop;
        return (int) (intptr_t) userdata;
}

START_TEST(test_callback_error_reaches_handler) {
        loop_t *loop = tu_loop_new();
        struct seen_exception seen[2];
        loop_handle_t *h = NULL;
        void *ud = NULL;
        int count = 0;

        memset(seen, 0, sizeof(seen));
        ck_assert_int_eq(loop_set_exception_handler(loop, record_handler, seen), 0);
        ck_assert_ptr_eq(loop_get_exception_handler(loop, &ud), record_handler);
        ck_assert_ptr_eq(ud, seen);

        ck_assert_int_eq(loop_call_soon(loop, fail_cb, (void *) (intptr_t) -EIO, &h), 0);
        /* A positive return value is not an error. */
        ck_assert_int_eq(loop_call_soon(loop, fail_cb, (void *) (intptr_t) 5, NULL), 0);
        ck_assert_int_eq(loop_call_soon(loop, fail_cb, (void *) (intptr_t) -ENOENT, NULL), 0);
        ck_assert_int_eq(loop_call_soon(loop, tu_count_cb, &count, NULL), 0);
        ck_assert_int_eq(loop_run_once(loop, 0), 4);
        /* The loop went on after the errors. */
        ck_assert_int_eq(count, 1);
        ck_assert_int_eq(seen[0].calls, 2);

        ck_assert_ptr_eq(seen[0].loop, loop);
        ck_assert_uint_ge(seen[0].size, sizeof(struct loop_exception_context));
        ck_assert_str_eq(seen[0].message, "Exception in callback");
        ck_assert_int_eq(seen[0].error, -EIO);
        ck_assert_ptr_eq(seen[0].handle, h);
        ck_assert_int_eq(seen[0].fd, -1);

        ck_assert_ptr_eq(seen[1].loop, loop);
        ck_assert_str_eq(seen[1].message, "Exception in callback");
        ck_assert_int_eq(seen[1].error, -ENOENT);
        ck_assert_ptr_eq(seen[1].handle, NULL);
        ck_assert_int_eq(seen[1].fd, -1);

        loop_handle_unref(h);
        loop_unref(loop);
}
END_TEST

START_TEST(test_timer_error_reaches_handler) {
        loop_t *loop = tu_loop_new();
        struct seen_exception seen[2];
        loop_handle_t *h = NULL;

        memset(seen, 0, sizeof(seen));
        ck_assert_int_eq(loop_set_exception_handler(loop, record_handler, seen), 0);
        ck_assert_int_eq(loop_call_later_ns(loop, 0, fail_cb, (void *) (intptr_t) -ETIMEDOUT, &h), 0);
        ck_assert_int_eq(loop_call_later_ns(loop, 0, fail_cb, (void *) (intptr_t) -EPIPE, NULL), 0);
        tu_run_until(loop, &seen[0].calls, 2, 5 * TU_SEC);
        ck_assert_int_eq(seen[0].calls, 2);
        ck_assert_str_eq(seen[0].message, "Exception in callback");
        ck_assert_int_eq(seen[0].error, -ETIMEDOUT);
        ck_assert_ptr_eq(seen[0].handle, h);
        ck_assert_int_eq(seen[0].fd, -1);
        ck_assert_int_eq(seen[1].error, -EPIPE);
        ck_assert_ptr_eq(seen[1].handle, NULL);
        ck_assert_int_eq(seen[1].fd, -1);
        loop_handle_unref(h);
        loop_unref(loop);
}
END_TEST

static int fail_io_cb(loop_t *loop, int fd, void *userdata) {
        (void) loop;
        (void) fd;
        return (int) (intptr_t) userdata;
}

START_TEST(test_io_error_reaches_handler) {
        loop_t *loop = tu_loop_new();
        struct seen_exception seen[2];
        int sv[2];

        memset(seen, 0, sizeof(seen));
        tu_socketpair(sv);
        ck_assert_int_eq(loop_set_exception_handler(loop, record_handler, seen), 0);
        ck_assert_int_eq(loop_add_reader(loop, sv[0], fail_io_cb, (void *) (intptr_t) -EBADMSG), 0);
        tu_write_byte(sv[1]);
        tu_run_until(loop, &seen[0].calls, 1, 5 * TU_SEC);
        ck_assert_int_ge(seen[0].calls, 1);
        ck_assert_str_eq(seen[0].message, "Exception in callback");
        ck_assert_int_eq(seen[0].error, -EBADMSG);
        ck_assert_int_eq(seen[0].fd, sv[0]);
        ck_assert_int_eq(loop_remove_reader(loop, sv[0]), 1);
        loop_unref(loop);
        tu_close_pair(sv);
}
END_TEST

static int fail_then_nothing_cb(loop_t *loop, void *userdata) {
        (void) loop;
        (void) userdata;
        return -EIO;
}

/* An error inside run_forever does not end it. */
START_TEST(test_run_forever_survives_errors) {
        loop_t *loop = tu_loop_new();
        struct seen_exception seen[2];
        int stopped = 0;

        memset(seen, 0, sizeof(seen));
        ck_assert_int_eq(loop_set_exception_handler(loop, record_handler, seen), 0);
        ck_assert_int_eq(loop_call_soon(loop, fail_then_nothing_cb, NULL, NULL), 0);
        ck_assert_int_eq(loop_call_later_ns(loop, TU_MSEC, tu_stop_cb, &stopped, NULL), 0);
        ck_assert_int_eq(loop_run_forever(loop), 0);
        ck_assert_int_eq(stopped, 1);
        ck_assert_int_eq(seen[0].calls, 1);
        ck_assert_int_eq(seen[0].error, -EIO);
        loop_unref(loop);
}
END_TEST

/* ---- loop_call_soon's inline path (loop.h) ----------------------------------- */

/* What the inline code sees: the ABI the header's comment describes. */
static struct loop__soon_window *window_of(loop_t *loop) {
        return (struct loop__soon_window *) (void *) loop;
}

/* Debug mode (LIBLOOP_DEBUG) keeps the window shut, so that every call
 * reaches the thread check: the inline tests run with it off. */
static loop_t *inline_loop_new(void) {
        loop_t *loop = tu_loop_new();

        ck_assert_int_eq(loop_set_debug(loop, 0), 0);
        return loop;
}

static bool window_open(loop_t *loop) {
        const struct loop__soon_window *w = window_of(loop);

        return w->tail != w->end && *w->generation == w->open_generation;
}

/*
 * The inline store, the function and calls with a handle all append to one
 * queue: 1,500 entries (past the first arrays' 256 and their growth) run
 * in the order they were scheduled, whichever way each went in.
 */
START_TEST(test_call_soon_inline_fifo_with_function) {
        loop_t *loop = inline_loop_new();
        static struct order order;
        static struct order_item items[1500];
        loop_handle_t *h;
        int i, inlined = 0;

        memset(&order, 0, sizeof(order));
        for (i = 0; i < 1500; i++) {
                items[i] = (struct order_item){.order = &order, .id = i};
                /* call_soon_threadsafe now and then: it shuts the window
                 * until the next call takes the post in. */
                if (i % 50 == 49) {
                        ck_assert_int_eq(loop_call_soon_threadsafe(loop, record_cb, &items[i], NULL), 0);
                        ck_assert(!window_open(loop));
                        continue;
                }
                switch (i % 3) {
                case 0:
                        inlined += window_open(loop);
                        ck_assert_int_eq(loop_call_soon(loop, record_cb, &items[i], NULL), 0);
                        break;
                case 1:
                        ck_assert_int_eq((loop_call_soon)(loop, record_cb, &items[i], NULL), 0);
                        break;
                default:
                        ck_assert_int_eq(loop_call_soon(loop, record_cb, &items[i], &h), 0);
                        loop_handle_unref(h);
                }
        }
        /* Most inline calls found room: the window is the queue's array. */
        ck_assert_int_gt(inlined, 300);
        /* One queue, in the order of the calls, call_soon_threadsafe's
         * entries included (asyncio's rule). */
        ck_assert_int_eq(loop_run_once(loop, 0), 1500);
        ck_assert_int_eq(order.n, 1500);
        for (i = 0; i < 1500; i++)
                ck_assert_int_eq(order.log[i], i);
        loop_unref(loop);
}
END_TEST

/* Closing shuts the window for good, though the queue had room. */
START_TEST(test_call_soon_inline_closed) {
        loop_t *loop = inline_loop_new();
        int count = 0;

        ck_assert_int_eq(loop_call_soon(loop, tu_count_cb, &count, NULL), 0);
        ck_assert_int_eq(loop_run_once(loop, 0), 1);
        ck_assert_int_eq(loop_call_soon(loop, tu_count_cb, &count, NULL), 0);
        ck_assert(window_open(loop));
        ck_assert_int_eq(loop_close(loop), 0);
        ck_assert(!window_open(loop));
        ck_assert_int_eq(loop_call_soon(loop, tu_count_cb, &count, NULL), -ESHUTDOWN);
        ck_assert_int_eq((loop_call_soon)(loop, tu_count_cb, &count, NULL), -ESHUTDOWN);
        ck_assert(!window_open(loop));
        ck_assert_int_eq(count, 1);
        loop_unref(loop);
}
END_TEST

/* Bad arguments never reach the window: the function reports them. */
START_TEST(test_call_soon_inline_bad_arguments) {
        loop_t *loop = inline_loop_new();
        int count = 0;

        ck_assert_int_eq(loop_call_soon(loop, tu_count_cb, &count, NULL), 0);
        ck_assert_int_eq(loop_call_soon(NULL, tu_count_cb, &count, NULL), -EINVAL);
        ck_assert_int_eq(loop_call_soon(loop, NULL, &count, NULL), -EINVAL);
        ck_assert_int_eq(loop_run_once(loop, 0), 1);
        ck_assert_int_eq(count, 1);
        loop_unref(loop);
}
END_TEST

/*
 * A fork child's inherited loop: its window still has room (the parent's
 * queue), yet the inline call must not take it, and answers -ECHILD.
 */
START_TEST(test_call_soon_inline_fork_child) {
#ifdef _WIN32
        TU_SKIP_ON_WINDOWS("fork");
#else
        loop_t *loop = inline_loop_new();
        int result[2], count = 0, status;
        unsigned char bad = 0xff;
        pid_t pid;

        /* Two passes: after them both of the queue's arrays exist, and the
         * one being filled is the window. */
        for (int i = 0; i < 2; i++) {
                ck_assert_int_eq(loop_call_soon(loop, tu_count_cb, &count, NULL), 0);
                ck_assert_int_eq(loop_run_once(loop, 0), 1);
        }
        ck_assert(window_open(loop));
        ck_assert_int_eq(pipe(result), 0);
        fflush(NULL);
        pid = fork();
        ck_assert_int_ge(pid, 0);
        if (pid == 0) {
                struct loop__soon_window *w = window_of(loop);
                struct loop__ready_entry *tail = w->tail;
                unsigned char b = 0;

                alarm(10);
                if (w->tail == w->end)
                        b |= 1;         /* no room: the test proves nothing */
                if (loop_call_soon(loop, tu_count_cb, &count, NULL) != -ECHILD)
                        b |= 2;
                if (w->tail != tail)
                        b |= 4;
                if (loop_unref(loop) != NULL)
                        b |= 8;
                _exit(write(result[1], &b, 1) == 1 ? 0 : 1);
        }
        ck_assert_int_eq(close(result[1]), 0);
        ck_assert_int_eq(read(result[0], &bad, 1), 1);
        ck_assert_int_eq(close(result[0]), 0);
        ck_assert_int_eq(waitpid(pid, &status, 0), pid);
        ck_assert_msg(bad == 0, "child: checks failed, mask 0x%x", bad);

        /* The parent's window is still open and still works. */
        ck_assert(window_open(loop));
        ck_assert_int_eq(loop_call_soon(loop, tu_count_cb, &count, NULL), 0);
        ck_assert_int_eq(loop_run_once(loop, 0), 1);
        ck_assert_int_eq(count, 3);
        loop_unref(loop);
#endif
}
END_TEST

/* Entries stored inline count as callbacks run in the metrics. */
START_TEST(test_call_soon_inline_metrics) {
        loop_t *loop = inline_loop_new();
        struct loop_metrics m = {.size = sizeof(m)};
        int count = 0;

        ck_assert_int_eq(loop_call_soon(loop, tu_count_cb, &count, NULL), 0);
        ck_assert_int_eq(loop_run_once(loop, 0), 1);
        for (int i = 0; i < 10; i++)
                ck_assert_int_eq(loop_call_soon(loop, tu_count_cb, &count, NULL), 0);
        ck_assert_int_eq(loop_get_metrics(loop, &m), 0);
        ck_assert_uint_eq(m.handles_ready, 10);
        ck_assert_int_eq(loop_run_once(loop, 0), 10);
        ck_assert_int_eq(loop_get_metrics(loop, &m), 0);
        ck_assert_uint_eq(m.callbacks, 11);
        ck_assert_int_eq(count, 11);
        loop_unref(loop);
}
END_TEST

static Suite *loop_suite(void) {
        Suite *s = suite_create("loop");
        TCase *tc;

        tc = tu_tcase(s, "lifecycle");
        tcase_add_test(tc, test_new_ref_unref);
        tcase_add_test(tc, test_selector_matches_environment);
        tcase_add_test(tc, test_close);
        tcase_add_test(tc, test_close_drops_pending);
        tcase_add_test(tc, test_unref_closes_and_releases_fds);
        tcase_add_test(tc, test_close_releases_fds);
        tcase_add_test(tc, test_handle_outlives_loop);
        tcase_add_test(tc, test_handle_ref_unref);

        tc = tu_tcase(s, "run");
        tcase_add_test(tc, test_run_forever_stop);
        tcase_add_test(tc, test_stop_before_run);
        tcase_add_test(tc, test_stop_before_run_idle);
        tcase_add_test(tc, test_run_again_after_stop);
        tcase_add_test(tc, test_run_once_count);
        tcase_add_test(tc, test_run_once_waits_for_timer);

        tc = tu_tcase(s, "ordering");
        tcase_add_test(tc, test_call_soon_fifo);
        tcase_add_test(tc, test_call_soon_fifo_mixed_handles);
        tcase_add_test(tc, test_call_soon_runs_next_iteration);

        tc = tu_tcase(s, "inline");
        tcase_add_test(tc, test_call_soon_inline_fifo_with_function);
        tcase_add_test(tc, test_call_soon_inline_closed);
        tcase_add_test(tc, test_call_soon_inline_bad_arguments);
        tcase_add_test(tc, test_call_soon_inline_fork_child);
        tcase_add_test(tc, test_call_soon_inline_metrics);

        tc = tu_tcase(s, "busy");
        tcase_add_test(tc, test_run_while_running);
        tcase_add_test(tc, test_other_loop_running_in_thread);
        tcase_add_test(tc, test_running_and_threads);

        tc = tu_tcase(s, "exceptions");
        tcase_add_test(tc, test_callback_error_reaches_handler);
        tcase_add_test(tc, test_timer_error_reaches_handler);
        tcase_add_test(tc, test_io_error_reaches_handler);
        tcase_add_test(tc, test_run_forever_survives_errors);
        return s;
}

int main(void) {
        return tu_run_suite(loop_suite());
}
