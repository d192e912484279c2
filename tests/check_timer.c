/* SPDX-License-Identifier: MIT */
/*
 * Timers: never early (the one strict timing bound), deadline order with a
 * stable tie-break, cancellation, when/when_ns, negative and past deadlines.
 * Upper bounds on lateness are generous: these tests never assert speed.
 */
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>

#include "testutil.h"

/* Lateness we tolerate: only to catch timers that never fire. */
#define LATE_BOUND (2 * TU_SEC)

/* Deterministic pseudo-random numbers (no libc state shared with others). */
static uint32_t lcg_next(uint32_t *state) {
        *state = *state * 1664525u + 1013904223u;
        return *state >> 8;
}

/*
 * Runs iterations with timeout -1 (the loop computes its own wait from the
 * earliest timer) until *counter >= want. Only for tests that keep a timer
 * pending, so that run_once cannot block forever.
 */
static void run_blocking_until(loop_t *loop, const int *counter, int want) {
        int64_t deadline = tu_now_ns() + 10 * TU_SEC;

        while (*counter < want && tu_now_ns() < deadline)
                ck_assert_int_ge(loop_run_once(loop, -1), 0);
        ck_assert_int_ge(*counter, want);
}

/* ---- never early ------------------------------------------------------ */

struct fire {
        loop_handle_t *handle;
        int64_t loop_ns;  /* loop_time_ns() inside the callback */
        int64_t clock_ns; /* CLOCK_MONOTONIC inside the callback */
        double loop_s;    /* loop_time() inside the callback */
        int count;
};

static int fire_cb(loop_t *loop, void *userdata) {
        struct fire *f = userdata;

        f->loop_ns = loop_time_ns(loop);
        f->clock_ns = tu_now_ns();
        f->loop_s = loop_time(loop);
        f->count++;
        return 0;
}

static void assert_not_early(const struct fire *f, int64_t sched_ns, int64_t delay_ns) {
        int64_t when = loop_handle_when_ns(f->handle);

        ck_assert_int_eq(f->count, 1);
        ck_assert_int_ge(when, sched_ns + delay_ns);
        ck_assert_msg(f->loop_ns >= when, "timer (delay %" PRId64 " ns) fired %" PRId64 " ns early", delay_ns,
                      when - f->loop_ns);
        ck_assert_msg(f->clock_ns >= when, "timer (delay %" PRId64 " ns) ran %" PRId64 " ns early by CLOCK_MONOTONIC",
                      delay_ns, when - f->clock_ns);
        ck_assert_int_ge(f->loop_ns, sched_ns + delay_ns);
        ck_assert_msg(f->loop_s >= loop_handle_when(f->handle), "loop_time() %.9f < when %.9f", f->loop_s,
                      loop_handle_when(f->handle));
        ck_assert_int_lt(f->loop_ns - sched_ns, delay_ns + LATE_BOUND);
}

static const int64_t delays_ns[] = {
        1, 1000, 100 * TU_USEC, 999 * TU_USEC, TU_MSEC, 1500 * TU_USEC, 7 * TU_MSEC, 20 * TU_MSEC,
};
#define N_DELAYS ((int) (sizeof(delays_ns) / sizeof(delays_ns[0])))

/* One timer at a time, so that each is the one the loop sleeps for. */
START_TEST(test_never_early_ns) {
        loop_t *loop = tu_loop_new();
        int i, rep;

        for (rep = 0; rep < 5; rep++) {
                for (i = 0; i < N_DELAYS; i++) {
                        struct fire f = {0};
                        int64_t sched = loop_time_ns(loop), after;

                        ck_assert_int_eq(loop_call_later_ns(loop, delays_ns[i], fire_cb, &f, &f.handle), 0);
                        after = loop_time_ns(loop);
                        /* deadline = now + delay, now taken during the call */
                        ck_assert_int_ge(loop_handle_when_ns(f.handle), sched + delays_ns[i]);
                        ck_assert_int_le(loop_handle_when_ns(f.handle), after + delays_ns[i]);
                        run_blocking_until(loop, &f.count, 1);
                        assert_not_early(&f, sched, delays_ns[i]);
                        loop_handle_unref(f.handle);
                }
        }
        loop_unref(loop);
}
END_TEST

START_TEST(test_never_early_seconds) {
        static const double delays_s[] = {1e-9, 1e-6, 1e-4, 0.0015, 0.007, 0.02};
        loop_t *loop = tu_loop_new();
        size_t i;
        int rep;

        for (rep = 0; rep < 3; rep++) {
                for (i = 0; i < sizeof(delays_s) / sizeof(delays_s[0]); i++) {
                        struct fire f = {0};
                        int64_t sched = loop_time_ns(loop);
                        /* The double's own rounding may cost a nanosecond. */
                        int64_t delay = (int64_t) floor(delays_s[i] * 1e9) - 1;

                        ck_assert_int_eq(loop_call_later(loop, delays_s[i], fire_cb, &f, &f.handle), 0);
                        run_blocking_until(loop, &f.count, 1);
                        assert_not_early(&f, sched, delay);
                        loop_handle_unref(f.handle);
                }
        }
        loop_unref(loop);
}
END_TEST

START_TEST(test_never_early_call_at) {
        loop_t *loop = tu_loop_new();
        int i;

        for (i = 0; i < N_DELAYS; i++) {
                struct fire f = {0};
                int64_t sched = loop_time_ns(loop);
                int64_t when = sched + delays_ns[i];

                ck_assert_int_eq(loop_call_at_ns(loop, when, fire_cb, &f, &f.handle), 0);
                ck_assert_int_eq(loop_handle_when_ns(f.handle), when);
                run_blocking_until(loop, &f.count, 1);
                assert_not_early(&f, sched, delays_ns[i]);
                loop_handle_unref(f.handle);
        }
        loop_unref(loop);
}
END_TEST

/* All delays pending at once: the loop sleeps from one to the next. */
START_TEST(test_never_early_together) {
        loop_t *loop = tu_loop_new();
        struct fire f[N_DELAYS * 2];
        int64_t sched[N_DELAYS * 2];
        int i, fired;

        memset(f, 0, sizeof(f));
        for (i = 0; i < N_DELAYS * 2; i++) {
                sched[i] = loop_time_ns(loop);
                ck_assert_int_eq(loop_call_later_ns(loop, delays_ns[i % N_DELAYS], fire_cb, &f[i], &f[i].handle), 0);
        }
        for (fired = 0; fired < N_DELAYS * 2;) {
                int64_t deadline = tu_now_ns() + 10 * TU_SEC;

                ck_assert_int_ge(loop_run_once(loop, -1), 0);
                ck_assert_int_lt(tu_now_ns(), deadline);
                for (fired = 0, i = 0; i < N_DELAYS * 2; i++)
                        fired += f[i].count;
        }
        for (i = 0; i < N_DELAYS * 2; i++) {
                assert_not_early(&f[i], sched[i], delays_ns[i % N_DELAYS]);
                loop_handle_unref(f[i].handle);
        }
        loop_unref(loop);
}
END_TEST

/* ---- ordering ---------------------------------------------------------- */

#define N_ORDER 500

struct order_state {
        loop_handle_t *handles[N_ORDER];
        int64_t when[N_ORDER];
        int log[N_ORDER];
        int ran[N_ORDER];
        int n;
};

struct order_item {
        struct order_state *st;
        int id;
};

static int order_cb(loop_t *loop, void *userdata) {
        struct order_item *it = userdata;

        (void) loop;
        ck_assert_int_lt(it->st->n, N_ORDER);
        it->st->log[it->st->n++] = it->id;
        it->st->ran[it->id]++;
        return 0;
}

static void assert_deadline_order(const struct order_state *st, int n) {
        int i;

        for (i = 0; i < n; i++)
                ck_assert_int_eq(st->ran[i], 1);
        for (i = 1; i < n; i++) {
                int a = st->log[i - 1], b = st->log[i];

                ck_assert_msg(st->when[a] < st->when[b] || (st->when[a] == st->when[b] && a < b),
                              "timer %d (when %" PRId64 ") ran before timer %d (when %" PRId64 ")", a, st->when[a], b,
                              st->when[b]);
        }
}

START_TEST(test_deadline_order_random) {
        static struct order_state st;
        static struct order_item items[N_ORDER];
        loop_t *loop = tu_loop_new();
        int64_t base = loop_time_ns(loop) + TU_MSEC;
        uint32_t seed = 12345;
        int i;

        memset(&st, 0, sizeof(st));
        for (i = 0; i < N_ORDER; i++) {
                int64_t delay = (int64_t) (lcg_next(&seed) % 20000) * TU_USEC;

                items[i] = (struct order_item){.st = &st, .id = i};
                /* A quarter of them on a 5 ms grid: ties to break. */
                if (i % 4 == 0)
                        delay -= delay % (5 * TU_MSEC);
                if (i % 2 == 0) {
                        ck_assert_int_eq(loop_call_at_ns(loop, base + delay, order_cb, &items[i], &st.handles[i]), 0);
                        ck_assert_int_eq(loop_handle_when_ns(st.handles[i]), base + delay);
                } else {
                        ck_assert_int_eq(loop_call_later_ns(loop, delay, order_cb, &items[i], &st.handles[i]), 0);
                }
                st.when[i] = loop_handle_when_ns(st.handles[i]);
        }
        tu_run_until(loop, &st.n, N_ORDER, 10 * TU_SEC);
        ck_assert_int_eq(st.n, N_ORDER);
        assert_deadline_order(&st, N_ORDER);
        for (i = 0; i < N_ORDER; i++)
                loop_handle_unref(st.handles[i]);
        loop_unref(loop);
}
END_TEST

/* Equal deadlines run in the order they were scheduled. */
START_TEST(test_equal_deadlines_fifo) {
        static struct order_state st;
        static struct order_item items[100];
        loop_t *loop = tu_loop_new();
        int64_t t = loop_time_ns(loop) + 5 * TU_MSEC;
        int i;

        memset(&st, 0, sizeof(st));
        for (i = 0; i < 100; i++) {
                items[i] = (struct order_item){.st = &st, .id = i};
                ck_assert_int_eq(loop_call_at_ns(loop, t, order_cb, &items[i], NULL), 0);
                st.when[i] = t;
        }
        tu_run_until(loop, &st.n, 100, 10 * TU_SEC);
        ck_assert_int_eq(st.n, 100);
        for (i = 0; i < 100; i++)
                ck_assert_int_eq(st.log[i], i);
        loop_unref(loop);
}
END_TEST

/* Two interleaved groups: the later group scheduled first. */
START_TEST(test_equal_deadlines_interleaved) {
        static struct order_state st;
        static struct order_item items[100];
        loop_t *loop = tu_loop_new();
        int64_t t = loop_time_ns(loop) + 5 * TU_MSEC;
        int i;

        memset(&st, 0, sizeof(st));
        for (i = 0; i < 100; i++) {
                items[i] = (struct order_item){.st = &st, .id = i};
                st.when[i] = i % 2 == 0 ? t + TU_MSEC : t;
                ck_assert_int_eq(loop_call_at_ns(loop, st.when[i], order_cb, &items[i], NULL), 0);
        }
        tu_run_until(loop, &st.n, 100, 10 * TU_SEC);
        ck_assert_int_eq(st.n, 100);
        for (i = 0; i < 50; i++) {
                ck_assert_int_eq(st.log[i], 2 * i + 1);
                ck_assert_int_eq(st.log[50 + i], 2 * i);
        }
        loop_unref(loop);
}
END_TEST

/* The tie-break survives removals from the heap. */
START_TEST(test_equal_deadlines_after_cancel) {
        static struct order_state st;
        static struct order_item items[300];
        loop_t *loop = tu_loop_new();
        int64_t t = loop_time_ns(loop) + 5 * TU_MSEC;
        int i, expect = 0;

        memset(&st, 0, sizeof(st));
        for (i = 0; i < 300; i++) {
                items[i] = (struct order_item){.st = &st, .id = i};
                /* one in three 1 ms earlier, to shuffle the heap */
                st.when[i] = i % 3 == 1 ? t - TU_MSEC : t;
                ck_assert_int_eq(loop_call_at_ns(loop, st.when[i], order_cb, &items[i], &st.handles[i]), 0);
        }
        for (i = 0; i < 300; i += 3)
                ck_assert_int_eq(loop_handle_cancel(st.handles[i]), 0);
        tu_run_until(loop, &st.n, 200, 10 * TU_SEC);
        tu_run_for(loop, 2 * TU_MSEC);
        ck_assert_int_eq(st.n, 200);
        for (i = 1; i < 300; i += 3)
                ck_assert_int_eq(st.log[expect++], i);
        for (i = 2; i < 300; i += 3)
                ck_assert_int_eq(st.log[expect++], i);
        for (i = 0; i < 300; i++) {
                ck_assert_int_eq(st.ran[i], i % 3 != 0);
                loop_handle_unref(st.handles[i]);
        }
        loop_unref(loop);
}
END_TEST

START_TEST(test_many_due_in_one_iteration) {
        loop_t *loop = tu_loop_new();
        int64_t past = loop_time_ns(loop) - TU_MSEC;
        int count = 0, i;

        for (i = 0; i < 1000; i++)
                ck_assert_int_eq(loop_call_at_ns(loop, past, tu_count_cb, &count, NULL), 0);
        ck_assert_int_eq(loop_run_once(loop, 0), 1000);
        ck_assert_int_eq(count, 1000);
        ck_assert_int_eq(loop_run_once(loop, 0), 0);
        loop_unref(loop);
}
END_TEST

/* ---- cancellation ------------------------------------------------------ */

START_TEST(test_cancel_before_firing) {
        loop_t *loop = tu_loop_new();
        loop_handle_t *h = NULL, *h2 = NULL;
        int count = 0, sentinel = 0;

        ck_assert_int_eq(loop_call_later_ns(loop, TU_MSEC, tu_count_cb, &count, &h), 0);
        ck_assert_int_eq(loop_call_later_ns(loop, 0, tu_count_cb, &count, &h2), 0);
        ck_assert_int_eq(loop_handle_cancelled(h), 0);
        ck_assert_int_eq(loop_handle_cancel(h), 0);
        ck_assert_int_eq(loop_handle_cancelled(h), 1);
        ck_assert_int_eq(loop_handle_cancel(h), 0);
        ck_assert_int_eq(loop_handle_cancelled(h), 1);
        ck_assert_int_eq(loop_handle_cancel(h2), 0);
        ck_assert_int_eq(loop_call_later_ns(loop, 10 * TU_MSEC, tu_count_cb, &sentinel, NULL), 0);
        /* A second cancel is not counted again: one live timer of three. */
        struct loop_metrics m = { .size = sizeof(m) };
        ck_assert_int_eq(loop_get_metrics(loop, &m), 0);
        ck_assert_uint_eq(m.timers, 1);
        run_blocking_until(loop, &sentinel, 1);
        ck_assert_int_eq(count, 0);
        ck_assert_int_eq(loop_handle_cancelled(h), 1);
        ck_assert_int_eq(loop_handle_cancelled(h2), 1);
        /* Still idempotent after the loop dropped it. */
        ck_assert_int_eq(loop_handle_cancel(h), 0);
        loop_handle_unref(h);
        loop_handle_unref(h2);
        loop_unref(loop);
}
END_TEST

/* A cancel after the timer ran, and after its loop is gone: the flag is
 * set, nothing else is touched (the loop's count of live timers stays). */
START_TEST(test_cancel_after_run_and_close) {
        loop_t *loop = tu_loop_new();
        loop_handle_t *ran = NULL, *pending = NULL;
        int count = 0;

        ck_assert_int_eq(loop_call_later_ns(loop, 0, tu_count_cb, &count, &ran), 0);
        ck_assert_int_eq(loop_call_later_ns(loop, 60 * TU_SEC, tu_count_cb, &count, &pending), 0);
        run_blocking_until(loop, &count, 1);
        struct loop_metrics m = { .size = sizeof(m) };
        ck_assert_int_eq(loop_get_metrics(loop, &m), 0);
        ck_assert_uint_eq(m.timers, 1);
        ck_assert_int_eq(loop_handle_cancelled(ran), 0);
        ck_assert_int_eq(loop_handle_cancel(ran), 0);
        ck_assert_int_eq(loop_handle_cancelled(ran), 1);
        ck_assert_int_eq(loop_get_metrics(loop, &m), 0);
        ck_assert_uint_eq(m.timers, 1);
        ck_assert_int_eq(loop_close(loop), 0);
        loop_unref(loop);
        /* The loop dropped the pending timer without running it. */
        ck_assert_int_eq(loop_handle_cancel(pending), 0);
        ck_assert_int_eq(loop_handle_cancelled(pending), 1);
        ck_assert_int_eq(count, 1);
        loop_handle_unref(ran);
        loop_handle_unref(pending);
}
END_TEST

/* Dropping the caller's reference to a handle does not cancel the timer. */
START_TEST(test_unref_handle_keeps_timer) {
        loop_t *loop = tu_loop_new();
        loop_handle_t *h = NULL;
        int count = 0;

        ck_assert_int_eq(loop_call_later_ns(loop, TU_MSEC, tu_count_cb, &count, &h), 0);
        ck_assert_ptr_eq(loop_handle_unref(h), NULL);
        run_blocking_until(loop, &count, 1);
        ck_assert_int_eq(count, 1);
        loop_unref(loop);
}
END_TEST

#define N_HALF 10000

START_TEST(test_cancel_half) {
        static loop_handle_t *handles[N_HALF];
        static int ran[N_HALF];
        loop_t *loop = tu_loop_new();
        int sentinel = 0, i;

        memset(ran, 0, sizeof(ran));
        for (i = 0; i < N_HALF; i++)
                ck_assert_int_eq(loop_call_later_ns(loop, (i % 100) * 100 * TU_USEC, tu_count_cb, &ran[i], &handles[i]),
                                 0);
        for (i = 0; i < N_HALF; i += 2)
                ck_assert_int_eq(loop_handle_cancel(handles[i]), 0);
        ck_assert_int_eq(loop_call_later_ns(loop, 30 * TU_MSEC, tu_count_cb, &sentinel, NULL), 0);
        run_blocking_until(loop, &sentinel, 1);
        for (i = 0; i < N_HALF; i++) {
                ck_assert_int_eq(ran[i], i % 2);
                ck_assert_int_eq(loop_handle_cancelled(handles[i]), i % 2 == 0);
                loop_handle_unref(handles[i]);
        }
        loop_unref(loop);
}
END_TEST

/*
 * Cancelled timers leave the heap at the loop's next iteration (asyncio's
 * _run_once): a handle the caller still holds stays valid and cancelled
 * through the purge, one dropped before it goes back to the loop, and a
 * callback that schedules and cancels many timers without the loop
 * iterating in between makes no timer run.
 */
#define N_PURGE 20000

static int schedule_and_cancel_cb(loop_t *loop, void *userdata) {
        int *ran = userdata;

        for (int i = 0; i < N_PURGE; i++) {
                loop_handle_t *h;
                ck_assert_int_eq(loop_call_later_ns(loop, TU_MSEC + i, tu_count_cb, ran, &h), 0);
                ck_assert_int_eq(loop_handle_cancel(h), 0);
                loop_handle_unref(h);
        }
        return 0;
}

START_TEST(test_cancel_purged_next_iteration) {
        static loop_handle_t *handles[N_PURGE];
        loop_t *loop = tu_loop_new();
        struct loop_metrics m = { .size = sizeof(m) };
        int ran = 0, sentinel = 0;
        int64_t base = loop_time_ns(loop) + TU_MSEC;

        for (int i = 0; i < N_PURGE; i++)
                ck_assert_int_eq(loop_call_at_ns(loop, base + i, tu_count_cb, &ran, &handles[i]), 0);
        ck_assert_int_eq(loop_call_later_ns(loop, 20 * TU_MSEC, tu_count_cb, &sentinel, NULL), 0);
        for (int i = 0; i < N_PURGE; i++)
                ck_assert_int_eq(loop_handle_cancel(handles[i]), 0);
        /* Half let go of before the purge, half held through it. */
        for (int i = 0; i < N_PURGE; i += 2)
                handles[i] = loop_handle_unref(handles[i]);
        ck_assert_int_eq(loop_get_metrics(loop, &m), 0);
        ck_assert_uint_eq(m.timers, 1);
        ck_assert_int_ge(loop_run_once(loop, 0), 0);
        for (int i = 1; i < N_PURGE; i += 2) {
                ck_assert_int_eq(loop_handle_cancelled(handles[i]), 1);
                ck_assert_int_eq(loop_handle_when_ns(handles[i]), base + i);
        }
        ck_assert_int_eq(loop_call_soon(loop, schedule_and_cancel_cb, &ran, NULL), 0);
        run_blocking_until(loop, &sentinel, 1);
        ck_assert_int_eq(ran, 0);
        ck_assert_int_eq(loop_get_metrics(loop, &m), 0);
        ck_assert_uint_eq(m.timers, 0);
        for (int i = 1; i < N_PURGE; i += 2)
                loop_handle_unref(handles[i]);
        loop_unref(loop);
}
END_TEST

struct cancel_peer {
        loop_handle_t *victim;
        int cancel_ret;
        int ran;
};

static int cancel_peer_cb(loop_t *loop, void *userdata) {
        struct cancel_peer *cp = userdata;

        (void) loop;
        cp->ran++;
        cp->cancel_ret = loop_handle_cancel(cp->victim);
        return 0;
}

/* A cancels B; both are due in the same iteration, A first. */
START_TEST(test_cancel_from_same_time_timer) {
        loop_t *loop = tu_loop_new();
        struct cancel_peer cp = {0};
        loop_handle_t *a = NULL;
        int64_t t = loop_time_ns(loop) + 2 * TU_MSEC;
        int b_count = 0, sentinel = 0;

        ck_assert_int_eq(loop_call_at_ns(loop, t, cancel_peer_cb, &cp, &a), 0);
        ck_assert_int_eq(loop_call_at_ns(loop, t, tu_count_cb, &b_count, &cp.victim), 0);
        ck_assert_int_eq(loop_call_at_ns(loop, t + 10 * TU_MSEC, tu_count_cb, &sentinel, NULL), 0);
        run_blocking_until(loop, &sentinel, 1);
        ck_assert_int_eq(cp.ran, 1);
        ck_assert_int_eq(cp.cancel_ret, 0);
        ck_assert_int_eq(b_count, 0);
        ck_assert_int_eq(loop_handle_cancelled(cp.victim), 1);
        ck_assert_int_eq(loop_handle_cancelled(a), 0);
        loop_handle_unref(a);
        loop_handle_unref(cp.victim);
        loop_unref(loop);
}
END_TEST

/* A timer cancels a far one (still in the heap) and a call_soon handle. */
START_TEST(test_cancel_pending_from_timer) {
        loop_t *loop = tu_loop_new();
        struct cancel_peer cp = {0};
        int far = 0, sentinel = 0;

        ck_assert_int_eq(loop_call_later_ns(loop, 50 * TU_MSEC, tu_count_cb, &far, &cp.victim), 0);
        ck_assert_int_eq(loop_call_later_ns(loop, TU_MSEC, cancel_peer_cb, &cp, NULL), 0);
        ck_assert_int_eq(loop_call_later_ns(loop, 100 * TU_MSEC, tu_count_cb, &sentinel, NULL), 0);
        run_blocking_until(loop, &sentinel, 1);
        ck_assert_int_eq(cp.ran, 1);
        ck_assert_int_eq(cp.cancel_ret, 0);
        ck_assert_int_eq(far, 0);
        loop_handle_unref(cp.victim);
        loop_unref(loop);
}
END_TEST

#define N_STRESS 2000

struct stress {
        loop_handle_t *handles[N_STRESS];
        int64_t when[N_STRESS];
        int ran[N_STRESS];
        int cancelled[N_STRESS];
        int64_t last_when;
        int last_id;
        uint32_t seed;
        int resolved;
        int order_ok;
};

struct stress_item {
        struct stress *st;
        int id;
};

static int stress_cb(loop_t *loop, void *userdata) {
        struct stress_item *it = userdata;
        struct stress *st = it->st;
        int j;

        (void) loop;
        if (st->cancelled[it->id] || st->ran[it->id])
                st->order_ok = 0;
        if (st->when[it->id] < st->last_when || (st->when[it->id] == st->last_when && it->id < st->last_id))
                st->order_ok = 0;
        st->last_when = st->when[it->id];
        st->last_id = it->id;
        st->ran[it->id] = 1;
        st->resolved++;
        /* Cancel some other timer that has not run yet. */
        j = (int) (lcg_next(&st->seed) % N_STRESS);
        if (!st->ran[j] && !st->cancelled[j] && j != it->id) {
                ck_assert_int_eq(loop_handle_cancel(st->handles[j]), 0);
                st->cancelled[j] = 1;
                st->resolved++;
        }
        return 0;
}

START_TEST(test_cancel_stress) {
        static struct stress st;
        static struct stress_item items[N_STRESS];
        loop_t *loop = tu_loop_new();
        uint32_t seed = 777;
        int i;

        memset(&st, 0, sizeof(st));
        st.seed = 4242;
        st.order_ok = 1;
        st.last_id = -1;
        st.last_when = INT64_MIN;
        for (i = 0; i < N_STRESS; i++) {
                items[i] = (struct stress_item){.st = &st, .id = i};
                ck_assert_int_eq(loop_call_later_ns(loop, (int64_t) (lcg_next(&seed) % 10000) * TU_USEC, stress_cb,
                                                    &items[i], &st.handles[i]),
                                 0);
                st.when[i] = loop_handle_when_ns(st.handles[i]);
        }
        tu_run_until(loop, &st.resolved, N_STRESS, 10 * TU_SEC);
        ck_assert_int_eq(st.resolved, N_STRESS);
        ck_assert_int_eq(st.order_ok, 1);
        for (i = 0; i < N_STRESS; i++) {
                ck_assert_int_eq(st.ran[i] + st.cancelled[i], 1);
                ck_assert_int_eq(loop_handle_cancelled(st.handles[i]), st.cancelled[i]);
                loop_handle_unref(st.handles[i]);
        }
        loop_unref(loop);
}
END_TEST

/*
 * A big pool: past its first chunks the handles come from 2 MiB slabs,
 * many chunks to one. 160,000 timers take the 48 chunks of their own, two
 * slabs and part of a third, crossing from one slab to the next (the kept
 * indices sit at those edges); they run in deadline order, the pool
 * hands the same memory out again, and handles kept past the loop (in the
 * first chunks and in a slab) stay usable until their last reference.
 */
#define N_BIG 160000
#define BIG_PERM(i) ((int64_t) (((uint64_t) (i) * 7919u) % N_BIG))

struct big_run {
        int64_t last;
        int count, order_ok;
};

static struct big_run big;

static int big_cb(loop_t *loop, void *userdata) {
        int64_t rank = BIG_PERM((intptr_t) userdata);

        (void) loop;
        if (rank < big.last)
                big.order_ok = 0;
        big.last = rank;
        big.count++;
        return 0;
}

START_TEST(test_big_pool_slabs) {
        static const int kept_at[] = { 0, 1023, 1024, 49151, 49152, 101375, 101376, N_BIG - 1 };
        enum { N_KEPT = sizeof(kept_at) / sizeof(kept_at[0]) };
        loop_handle_t *kept[N_KEPT];
        loop_t *loop = tu_loop_new();
        int64_t past = loop_time_ns(loop) - 2 * N_BIG;

        for (int round = 0; round < 2; round++) {
                big = (struct big_run) { .last = -1, .order_ok = 1 };
                int k = 0;
                for (int i = 0; i < N_BIG; i++) {
                        loop_handle_t **out = round == 0 && k < N_KEPT && kept_at[k] == i ? &kept[k++] : NULL;
                        TU_CHECK(loop_call_at_ns(loop, past + BIG_PERM(i), big_cb, (void *) (intptr_t) i, out) == 0);
                }
                struct loop_metrics m = { .size = sizeof(m) };
                ck_assert_int_eq(loop_get_metrics(loop, &m), 0);
                ck_assert_uint_eq(m.timers, N_BIG);
                ck_assert_int_eq(loop_run_once(loop, 0), N_BIG);
                ck_assert_int_eq(big.count, N_BIG);
                ck_assert_int_eq(big.order_ok, 1);
        }
        loop_unref(loop);
        for (int k = 0; k < N_KEPT; k++) {
                ck_assert_int_eq(loop_handle_when_ns(kept[k]), past + BIG_PERM(kept_at[k]));
                ck_assert_int_eq(loop_handle_cancelled(kept[k]), 0);
                ck_assert_int_eq(loop_handle_cancel(kept[k]), 0);
                ck_assert_int_eq(loop_handle_cancelled(kept[k]), 1);
                loop_handle_unref(kept[k]);
        }
}
END_TEST

/* ---- when, negative and past deadlines --------------------------------- */

START_TEST(test_handle_when) {
        loop_t *loop = tu_loop_new();
        loop_handle_t *h = NULL;
        int64_t t = loop_time_ns(loop) + 3 * TU_SEC + 123456789;
        int64_t before, after;
        double w;
        int count = 0;

        ck_assert_int_eq(loop_call_at_ns(loop, t, tu_count_cb, &count, &h), 0);
        ck_assert_int_eq(loop_handle_when_ns(h), t);
        ck_assert_msg(fabs(loop_handle_when(h) - (double) t / 1e9) < 1e-6, "when %.9f, expected %.9f",
                      loop_handle_when(h), (double) t / 1e9);
        ck_assert_int_eq(loop_handle_cancel(h), 0);
        /* A cancelled timer keeps its deadline. */
        ck_assert_int_eq(loop_handle_when_ns(h), t);
        loop_handle_unref(h);

        w = loop_time(loop) + 2.5;
        ck_assert_int_eq(loop_call_at(loop, w, tu_count_cb, &count, &h), 0);
        ck_assert_msg(llabs(loop_handle_when_ns(h) - (int64_t) (w * 1e9)) < 1000,
                      "when_ns %" PRId64 " for call_at(%.9f)", loop_handle_when_ns(h), w);
        ck_assert_msg(fabs(loop_handle_when(h) - w) < 1e-6, "when %.9f for call_at(%.9f)", loop_handle_when(h), w);
        ck_assert_int_eq(loop_handle_cancel(h), 0);
        loop_handle_unref(h);

        before = loop_time_ns(loop);
        ck_assert_int_eq(loop_call_later_ns(loop, 2 * TU_SEC, tu_count_cb, &count, &h), 0);
        after = loop_time_ns(loop);
        ck_assert_int_ge(loop_handle_when_ns(h), before + 2 * TU_SEC);
        ck_assert_int_le(loop_handle_when_ns(h), after + 2 * TU_SEC);
        ck_assert_int_eq(loop_handle_cancel(h), 0);
        loop_handle_unref(h);

        before = loop_time_ns(loop);
        ck_assert_int_eq(loop_call_later(loop, 1.25, tu_count_cb, &count, &h), 0);
        after = loop_time_ns(loop);
        ck_assert_int_ge(loop_handle_when_ns(h), before + 1250 * TU_MSEC - 1);
        ck_assert_int_le(loop_handle_when_ns(h), after + 1250 * TU_MSEC + 1);
        ck_assert_int_eq(loop_handle_cancel(h), 0);
        loop_handle_unref(h);

        /* Not a timer. */
        ck_assert_int_eq(loop_call_soon(loop, tu_count_cb, &count, &h), 0);
        ck_assert_int_eq(loop_handle_when_ns(h), -ENODATA);
        ck_assert(isnan(loop_handle_when(h)));
        ck_assert_int_eq(loop_handle_cancel(h), 0);
        loop_handle_unref(h);
        ck_assert_int_eq(loop_call_soon_threadsafe(loop, tu_count_cb, &count, &h), 0);
        ck_assert_int_eq(loop_handle_when_ns(h), -ENODATA);
        ck_assert(isnan(loop_handle_when(h)));
        ck_assert_int_eq(loop_handle_cancel(h), 0);
        loop_handle_unref(h);

        ck_assert_int_ge(loop_run_once(loop, 0), 0);
        ck_assert_int_eq(count, 0);
        loop_unref(loop);
}
END_TEST

START_TEST(test_time_is_monotonic_clock) {
        loop_t *loop = tu_loop_new();
        int64_t prev = 0;
        int i;

        for (i = 0; i < 1000; i++) {
                int64_t t1 = tu_now_ns();
                int64_t l = loop_time_ns(loop);
                int64_t t2 = tu_now_ns();
                double s = loop_time(loop);

                ck_assert_int_ge(l, t1);
                ck_assert_int_le(l, t2);
                ck_assert_int_ge(l, prev);
                ck_assert_msg(fabs(s * 1e9 - (double) l) < 1e8, "loop_time %.9f vs loop_time_ns %" PRId64, s, l);
                prev = l;
        }
        loop_unref(loop);
}
END_TEST

START_TEST(test_negative_and_zero_delay) {
        loop_t *loop = tu_loop_new();
        int count = 0;

        ck_assert_int_eq(loop_call_later_ns(loop, -5 * TU_MSEC, tu_count_cb, &count, NULL), 0);
        ck_assert_int_eq(loop_call_later(loop, -0.5, tu_count_cb, &count, NULL), 0);
        ck_assert_int_eq(loop_call_later_ns(loop, 0, tu_count_cb, &count, NULL), 0);
        ck_assert_int_eq(loop_call_later(loop, 0.0, tu_count_cb, &count, NULL), 0);
        ck_assert_int_eq(loop_call_later_ns(loop, INT64_MIN / 2, tu_count_cb, &count, NULL), 0);
        /* All due: the next iteration runs them without waiting. */
        ck_assert_int_eq(loop_run_once(loop, 0), 5);
        ck_assert_int_eq(count, 5);
        loop_unref(loop);
}
END_TEST

START_TEST(test_call_at_past) {
        loop_t *loop = tu_loop_new();
        int count = 0;

        ck_assert_int_eq(loop_call_at_ns(loop, loop_time_ns(loop) - TU_SEC, tu_count_cb, &count, NULL), 0);
        ck_assert_int_eq(loop_call_at_ns(loop, 0, tu_count_cb, &count, NULL), 0);
        ck_assert_int_eq(loop_call_at(loop, 0.0, tu_count_cb, &count, NULL), 0);
        ck_assert_int_eq(loop_call_at(loop, loop_time(loop) - 10.0, tu_count_cb, &count, NULL), 0);
        ck_assert_int_eq(loop_call_at(loop, loop_time(loop), tu_count_cb, &count, NULL), 0);
        ck_assert_int_eq(loop_run_once(loop, 0), 5);
        ck_assert_int_eq(count, 5);
        loop_unref(loop);
}
END_TEST

/* Wakes the loop from another thread after 5 s unless told it is done. */
struct watchdog {
        loop_t *loop;
        pthread_t thread;
        atomic_int done;
        atomic_int fired;
};

static int nop_cb(loop_t *loop, void *userdata) {
        (void) loop;
        (void) userdata;
        return 0;
}

static void *watchdog_main(void *arg) {
        struct watchdog *w = arg;
        int64_t deadline = tu_now_ns() + 5 * TU_SEC;

        while (!atomic_load(&w->done) && tu_now_ns() < deadline)
                tu_sleep_ns(5 * TU_MSEC);
        if (!atomic_load(&w->done)) {
                atomic_store(&w->fired, 1);
                loop_call_soon_threadsafe(w->loop, nop_cb, NULL, NULL);
        }
        return NULL;
}

/*
 * The most negative deadline there is: the wait until it must not overflow
 * into a huge positive timeout (the loop would sleep instead of running it).
 */
START_TEST(test_far_past_deadline_does_not_sleep) {
        loop_t *loop = tu_loop_new();
        struct watchdog w = {.loop = loop};
        int count = 0;
        int64_t t0, elapsed;

        atomic_init(&w.done, 0);
        atomic_init(&w.fired, 0);
        ck_assert_int_eq(loop_call_at_ns(loop, INT64_MIN, tu_count_cb, &count, NULL), 0);
        ck_assert_int_eq(loop_call_at_ns(loop, INT64_MIN + 1, tu_count_cb, &count, NULL), 0);
        ck_assert_int_eq(pthread_create(&w.thread, NULL, watchdog_main, &w), 0);
        t0 = tu_now_ns();
        while (count < 2 && tu_now_ns() - t0 < 10 * TU_SEC)
                ck_assert_int_ge(loop_run_once(loop, -1), 0);
        elapsed = tu_now_ns() - t0;
        atomic_store(&w.done, 1);
        ck_assert_int_eq(pthread_join(w.thread, NULL), 0);
        loop_unref(loop);
        ck_assert_int_eq(count, 2);
        ck_assert_msg(!atomic_load(&w.fired) && elapsed < 4 * TU_SEC,
                      "a timer due at INT64_MIN ns waited %.3f s (woken by the watchdog: %d)", (double) elapsed / 1e9,
                      atomic_load(&w.fired));
}
END_TEST

/*
 * Any timeout is accepted, up to INT64_MAX: converting it to the backend's
 * unit (milliseconds for epoll) must saturate, not overflow (UBSan: signed
 * overflow when rounding up to whole milliseconds near INT64_MAX). A ready descriptor
 * ends each wait at once; a timer at INT64_MAX bounds a wait as far.
 */
START_TEST(test_huge_run_once_timeout) {
        static const int64_t timeouts[] = {
                INT64_MAX,
                INT64_MAX - 1,
                INT64_MAX - 999999,
                INT64_MAX - 1000000,
                INT64_MAX / TU_MSEC * TU_MSEC, /* whole milliseconds: epoll_wait, not epoll_pwait2 */
                (int64_t) INT32_MAX * TU_MSEC + 1,
                (int64_t) INT32_MAX * TU_MSEC - 1,
        };
        loop_t *loop = tu_loop_new();
        loop_handle_t *far = NULL;
        int p[2], reads = 0, never = 0, i;

        tu_pipe(p);
        tu_write_byte(p[1]);
        ck_assert_int_eq(loop_add_reader(loop, p[0], tu_io_count_cb, &reads), 0);
        for (i = 0; i < (int) (sizeof(timeouts) / sizeof(timeouts[0])); i++) {
                ck_assert_int_eq(loop_run_once(loop, timeouts[i]), 1);
                ck_assert_int_eq(reads, i + 1);
        }
        ck_assert_int_eq(loop_call_at_ns(loop, INT64_MAX, tu_count_cb, &never, &far), 0);
        ck_assert_int_gt(loop_get_timeout_ns(loop), INT64_MAX - loop_time_ns(loop) - TU_SEC);
        ck_assert_int_eq(loop_run_once(loop, -1), 1);
        ck_assert_int_eq(loop_run_once(loop, INT64_MAX), 1);
        ck_assert_int_eq(reads, i + 2);
        ck_assert_int_eq(never, 0);
        ck_assert_int_eq(loop_remove_reader(loop, p[0]), 1);
        ck_assert_int_eq(loop_handle_cancel(far), 0);
        loop_handle_unref(far);
        loop_unref(loop);
        tu_close_pair(p);
}
END_TEST

struct soon_vs_timer {
        int log[4];
        int n;
};

static int log_soon_cb(loop_t *loop, void *userdata) {
        struct soon_vs_timer *st = userdata;

        (void) loop;
        st->log[st->n++] = 1;
        return 0;
}

static int log_timer_cb(loop_t *loop, void *userdata) {
        struct soon_vs_timer *st = userdata;

        (void) loop;
        st->log[st->n++] = 2;
        return 0;
}

/* Due timers are appended to the ready queue after what is already there. */
START_TEST(test_due_timer_after_ready_callbacks) {
        loop_t *loop = tu_loop_new();
        struct soon_vs_timer st = {{0}, 0};

        ck_assert_int_eq(loop_call_at_ns(loop, loop_time_ns(loop) - TU_MSEC, log_timer_cb, &st, NULL), 0);
        ck_assert_int_eq(loop_call_soon(loop, log_soon_cb, &st, NULL), 0);
        ck_assert_int_eq(loop_run_once(loop, 0), 2);
        ck_assert_int_eq(st.n, 2);
        ck_assert_int_eq(st.log[0], 1);
        ck_assert_int_eq(st.log[1], 2);
        loop_unref(loop);
}
END_TEST

/* ---- timers scheduled from callbacks --------------------------------- */

struct chain {
        int64_t fired[10];
        int n;
};

static int chain_timer_cb(loop_t *loop, void *userdata) {
        struct chain *c = userdata;

        c->fired[c->n++] = loop_time_ns(loop);
        if (c->n == 10)
                return loop_stop(loop);
        return loop_call_later_ns(loop, TU_MSEC, chain_timer_cb, c, NULL);
}

START_TEST(test_timers_from_callbacks) {
        loop_t *loop = tu_loop_new();
        loop_handle_t *guard = NULL;
        struct chain c = {{0}, 0};
        int guard_fired = 0, i;
        int64_t t0 = loop_time_ns(loop);

        ck_assert_int_eq(loop_call_later_ns(loop, TU_MSEC, chain_timer_cb, &c, NULL), 0);
        ck_assert_int_eq(loop_call_later(loop, 10.0, tu_stop_cb, &guard_fired, &guard), 0);
        ck_assert_int_eq(loop_run_forever(loop), 0);
        ck_assert_int_eq(guard_fired, 0);
        ck_assert_int_eq(c.n, 10);
        ck_assert_int_ge(c.fired[0], t0 + TU_MSEC);
        for (i = 1; i < 10; i++)
                ck_assert_int_ge(c.fired[i], c.fired[i - 1] + TU_MSEC);
        ck_assert_int_eq(loop_handle_cancel(guard), 0);
        loop_handle_unref(guard);
        loop_unref(loop);
}
END_TEST

static int schedule_zero_timer_cb(loop_t *loop, void *userdata) {
        return loop_call_later_ns(loop, 0, tu_count_cb, userdata, NULL);
}

/* A timer scheduled (already due) from a callback waits for the next iteration. */
START_TEST(test_due_timer_from_callback_next_iteration) {
        loop_t *loop = tu_loop_new();
        int count = 0;

        ck_assert_int_eq(loop_call_later_ns(loop, -1, schedule_zero_timer_cb, &count, NULL), 0);
        ck_assert_int_eq(loop_run_once(loop, 0), 1);
        ck_assert_int_eq(count, 0);
        ck_assert_int_eq(loop_run_once(loop, 0), 1);
        ck_assert_int_eq(count, 1);

        ck_assert_int_eq(loop_call_soon(loop, schedule_zero_timer_cb, &count, NULL), 0);
        ck_assert_int_eq(loop_run_once(loop, 0), 1);
        ck_assert_int_eq(count, 1);
        ck_assert_int_eq(loop_run_once(loop, 0), 1);
        ck_assert_int_eq(count, 2);
        loop_unref(loop);
}
END_TEST

static Suite *timer_suite(void) {
        Suite *s = suite_create("timer");
        TCase *tc;

        tc = tu_tcase(s, "never_early");
        tcase_add_test(tc, test_never_early_ns);
        tcase_add_test(tc, test_never_early_seconds);
        tcase_add_test(tc, test_never_early_call_at);
        tcase_add_test(tc, test_never_early_together);
        tcase_add_test(tc, test_time_is_monotonic_clock);

        tc = tu_tcase(s, "order");
        tcase_add_test(tc, test_deadline_order_random);
        tcase_add_test(tc, test_equal_deadlines_fifo);
        tcase_add_test(tc, test_equal_deadlines_interleaved);
        tcase_add_test(tc, test_equal_deadlines_after_cancel);
        tcase_add_test(tc, test_many_due_in_one_iteration);
        tcase_add_test(tc, test_due_timer_after_ready_callbacks);

        tc = tu_tcase(s, "cancel");
        tcase_add_test(tc, test_cancel_before_firing);
        tcase_add_test(tc, test_cancel_after_run_and_close);
        tcase_add_test(tc, test_unref_handle_keeps_timer);
        tcase_add_test(tc, test_cancel_half);
        tcase_add_test(tc, test_cancel_purged_next_iteration);
        tcase_add_test(tc, test_cancel_from_same_time_timer);
        tcase_add_test(tc, test_cancel_pending_from_timer);
        tcase_add_test(tc, test_cancel_stress);
        tcase_add_test(tc, test_big_pool_slabs);

        tc = tu_tcase(s, "when");
        tcase_add_test(tc, test_handle_when);
        tcase_add_test(tc, test_negative_and_zero_delay);
        tcase_add_test(tc, test_call_at_past);
        tcase_add_test(tc, test_far_past_deadline_does_not_sleep);
        tcase_add_test(tc, test_huge_run_once_timeout);
        tcase_add_test(tc, test_timers_from_callbacks);
        tcase_add_test(tc, test_due_timer_from_callback_next_iteration);
        return s;
}

int main(void) {
        return tu_run_suite(timer_suite());
}
