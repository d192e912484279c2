/* SPDX-License-Identifier: MIT */
/*
 * make check-stress: 10^6 timers, a third of them cancelled.
 *
 * NTIMERS timers with loop_call_at_ns, their deadlines drawn from SLOTS
 * distinct values over SPREAD nanoseconds (so about 1,000 timers share each
 * deadline, in scrambled scheduling order). A third is cancelled: most of
 * it before the loop runs, a quarter of it (half of the i % 6 == 3 ones,
 * those whose deadline is still ahead) by a timer in the middle of the
 * run. Checked:
 * - none runs early: loop_time_ns() in the callback >= its deadline;
 * - deadline order, and scheduling order among equal deadlines;
 * - no cancelled timer runs; every other one runs exactly once;
 * - the handles of the cancelled ones say so and the loop holds no timer
 *   afterwards (loop_get_metrics).
 *
 * Limits reached: 10^6 timers, 333,334 cancelled (83,000 or so during the
 * run), on every backend.
 */
#include "stress.h"

#define NTIMERS 1000000
#define SLOTS 1000
#define SPREAD (300 * TU_MSEC)

struct timer {
        int64_t when;
        int ran;
};

static struct timer *timers;
static loop_handle_t **handles;         /* only for those that get cancelled */
static int64_t base;
static int64_t mid_when;
static int late_cancelled;
static long fired, early, out_of_order, ran_cancelled, twice;
static long last_index = -1;            /* the timer that ran last */

/* A third is cancelled. */
static int doomed(long i) {
        return i % 3 == 0;
}

/* Those the middle timer cancels; the other doomed ones go before the run. */
static int cancelled_late(long i) {
        return i % 6 == 3 && timers[i].when > mid_when;
}

/* Whether timer a must run before timer b: deadline, then scheduling. */
static int before(long a, long b) {
        return timers[a].when < timers[b].when || (timers[a].when == timers[b].when && a < b);
}

static int on_timer(loop_t *loop, void *userdata) {
        long i = (long) (intptr_t) userdata;
        int64_t now = loop_time_ns(loop);

        if (now < timers[i].when)
                early++;
        if (last_index >= 0 && !before(last_index, i))
                out_of_order++;
        if (doomed(i))
                ran_cancelled++;
        if (timers[i].ran++)
                twice++;
        last_index = i;
        fired++;
        return 0;
}

/* The middle of the run: cancels the i % 6 == 3 timers still ahead. */
static int on_mid(loop_t *loop, void *userdata) {
        (void) loop;
        (void) userdata;
        for (long i = 3; i < NTIMERS; i += 6)
                if (cancelled_late(i)) {
                        if (loop_handle_cancel(handles[i]) < 0)
                                abort();
                        late_cancelled++;
                }
        return 0;
}

START_TEST(test_million_timers) {
        loop_t *loop = tu_loop_new();
        loop_handle_t *mid = NULL;
        uint64_t state = 0x9e3779b97f4a7c15u;
        long expected = 0, cancelled = 0, due_at_start;
        int64_t sched_ns, t_run;
        int64_t deadline;
        struct loop_metrics m = { .size = sizeof(m) };

        timers = calloc(NTIMERS, sizeof(*timers));
        handles = calloc(NTIMERS, sizeof(*handles));
        ck_assert(timers && handles);
        fired = early = out_of_order = ran_cancelled = twice = 0;
        last_index = -1;
        late_cancelled = 0;

        st_watchdog(60, "scheduling 10^6 timers");
        /* Deadlines lie ahead of the first iteration, so that the loop
         * sleeps between them: twice the time scheduling them will take
         * (a fraction of a second; seconds under sanitizers), measured on
         * a scratch loop with a hundredth of them. */
        {
                loop_t *scratch = tu_loop_new();
                int64_t t0 = tu_now_ns();

                for (long i = 0; i < NTIMERS / 100; i++)
                        ck_assert_int_eq(loop_call_later_ns(scratch, TU_SEC, on_timer, NULL, NULL), 0);
                sched_ns = (tu_now_ns() - t0) * 100;
                loop_unref(scratch);
        }
        base = loop_time_ns(loop) + 2 * sched_ns + 50 * TU_MSEC;
        mid_when = base + SPREAD / 2;
        /* Scheduled first: it runs before the timers of its own deadline. */
        ck_assert_int_eq(loop_call_at_ns(loop, mid_when, on_mid, NULL, &mid), 0);
        for (long i = 0; i < NTIMERS; i++) {
                state = state * 6364136223846793005u + 1442695040888963407u;
                timers[i].when = base + (int64_t) ((state >> 33) % SLOTS) * (SPREAD / SLOTS);
                ck_assert_int_eq(loop_call_at_ns(loop, timers[i].when, on_timer, (void *) (intptr_t) i,
                                                 doomed(i) ? &handles[i] : NULL),
                                 0);
        }
        for (long i = 0; i < NTIMERS; i++)
                if (!doomed(i))
                        expected++;
                else if (!cancelled_late(i)) {
                        ck_assert_int_eq(loop_handle_cancel(handles[i]), 0);
                        cancelled++;
                }

        due_at_start = 0;
        {
                int64_t now = tu_now_ns(); /* CLOCK_MONOTONIC, the loop's clock */

                for (long i = 0; i < NTIMERS; i++)
                        if (timers[i].when <= now)
                                due_at_start++;
        }
        st_watchdog(60, "running 10^6 timers");
        t_run = tu_now_ns();
        deadline = t_run + 50 * TU_SEC;
        while (fired < expected && tu_now_ns() < deadline)
                ck_assert_int_ge(loop_run_once(loop, 100 * TU_MSEC), 0);
        /* Past the last deadline: nothing more may run. */
        while (loop_time_ns(loop) <= base + SPREAD)
                ck_assert_int_ge(loop_run_once(loop, 10 * TU_MSEC), 0);
        ck_assert_int_ge(loop_run_once(loop, 0), 0);
        st_watchdog(0, NULL);
        t_run = tu_now_ns() - t_run;
        cancelled += late_cancelled;

        st_note("%d timers, %ld cancelled (%d of them by a timer during the run), %ld ran; %ld were due "
                "before the loop ran; scheduling took about %" PRId64 " ms, the run %" PRId64 " ms",
                NTIMERS, cancelled, late_cancelled, fired, due_at_start, sched_ns / TU_MSEC, t_run / TU_MSEC);
        ck_assert_msg(early == 0, "%ld timers ran early", early);
        ck_assert_msg(out_of_order == 0, "%ld timers ran out of order", out_of_order);
        ck_assert_msg(ran_cancelled == 0, "%ld cancelled timers ran", ran_cancelled);
        ck_assert_msg(twice == 0, "%ld timers ran twice", twice);
        ck_assert_int_eq(fired, expected);
        ck_assert_int_eq(fired + cancelled, NTIMERS);
        ck_assert_int_eq(loop_handle_cancelled(mid), 0);
        for (long i = 0; i < NTIMERS; i++)
                if (handles[i]) {
                        ck_assert_int_eq(loop_handle_cancelled(handles[i]), 1);
                        ck_assert_int_eq(timers[i].ran, 0);
                        loop_handle_unref(handles[i]);
                } else {
                        ck_assert_int_eq(timers[i].ran, 1);
                }
        ck_assert_int_eq(loop_get_metrics(loop, &m), 0);
        ck_assert_int_eq(m.timers, 0);
        loop_handle_unref(mid);
        loop_unref(loop);
        free(timers);
        free(handles);
}
END_TEST

int main(void) {
        Suite *s = suite_create("stress_timers");
        TCase *tc = st_tcase(s, "million", ST_TCASE_TIMEOUT);

        tcase_add_test(tc, test_million_timers);
        return tu_run_suite(s);
}
