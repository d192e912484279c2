/* SPDX-License-Identifier: MIT */
/*
 * make check-stress: 10^6 loop_call_soon_threadsafe posts from 4 threads.
 *
 * NTHREADS threads post PER_THREAD callbacks each, as fast as they can,
 * while the loop runs (loop_run_once with a timeout, so the loop both
 * sleeps and is woken). Each post carries its thread and sequence number.
 * Checked: every post is accepted, every callback runs exactly once (none
 * lost, none doubled), and each thread's callbacks run in the order that
 * thread posted them. A second round posts while the loop does not run at
 * all, then runs it: the backlog of 10^6 drains the same way.
 *
 * Limits reached: 10^6 posts per round from 4 threads, on every backend.
 */
#include <pthread.h>
#include <stdatomic.h>

#include "stress.h"

#define NTHREADS 4
#define PER_THREAD 250000
#define TOTAL ((long) NTHREADS * PER_THREAD)

struct poster {
        pthread_t thread;
        loop_t *loop;
        int id;
        int failed;             /* posts refused, and the last error */
        int error;
};

static long next_seq[NTHREADS]; /* the sequence number each thread's next callback must carry */
static long ran, out_of_order, bad_id;
static atomic_int go;

static int on_post(loop_t *loop, void *userdata) {
        uintptr_t v = (uintptr_t) userdata;
        int id = (int) (v >> 24);
        long seq = (long) (v & 0xffffff);

        (void) loop;
        if (id < 0 || id >= NTHREADS) {
                bad_id++;
                return 0;
        }
        if (seq != next_seq[id])
                out_of_order++;
        next_seq[id] = seq + 1;
        ran++;
        return 0;
}

static void *post_all(void *arg) {
        struct poster *p = arg;

        while (!atomic_load(&go))
                ;
        for (long seq = 0; seq < PER_THREAD; seq++) {
                uintptr_t v = ((uintptr_t) p->id << 24) | (uintptr_t) seq;
                int r = loop_call_soon_threadsafe(p->loop, on_post, (void *) v, NULL);

                if (r < 0) {
                        p->failed++;
                        p->error = r;
                }
        }
        return NULL;
}

static void run_round(int loop_runs_meanwhile) {
        struct poster p[NTHREADS];
        loop_t *loop = tu_loop_new();
        int64_t deadline;

        ran = out_of_order = bad_id = 0;
        for (int i = 0; i < NTHREADS; i++)
                next_seq[i] = 0;
        atomic_store(&go, 0);
        st_watchdog(90, loop_runs_meanwhile ? "10^6 threadsafe posts while the loop runs"
                                            : "10^6 threadsafe posts, then the loop drains them");
        for (int i = 0; i < NTHREADS; i++) {
                p[i] = (struct poster) { .loop = loop, .id = i };
                ck_assert_int_eq(pthread_create(&p[i].thread, NULL, post_all, &p[i]), 0);
        }
        atomic_store(&go, 1);
        if (!loop_runs_meanwhile)
                for (int i = 0; i < NTHREADS; i++)
                        ck_assert_int_eq(pthread_join(p[i].thread, NULL), 0);
        deadline = tu_now_ns() + 80 * TU_SEC;
        while (ran < TOTAL && tu_now_ns() < deadline)
                ck_assert_int_ge(loop_run_once(loop, 10 * TU_MSEC), 0);
        if (loop_runs_meanwhile)
                for (int i = 0; i < NTHREADS; i++)
                        ck_assert_int_eq(pthread_join(p[i].thread, NULL), 0);
        /* Nothing more arrives. */
        ck_assert_int_eq(loop_run_once(loop, 10 * TU_MSEC), 0);
        st_watchdog(0, NULL);
        for (int i = 0; i < NTHREADS; i++) {
                ck_assert_msg(p[i].failed == 0, "thread %d: %d posts failed: %s", i, p[i].failed,
                              loop_strerror(p[i].error));
        }
        st_note("%ld threadsafe posts from %d threads (%s), %ld ran, %ld out of order", TOTAL, NTHREADS,
                loop_runs_meanwhile ? "the loop running" : "the loop idle", ran, out_of_order);
        ck_assert_int_eq(bad_id, 0);
        ck_assert_msg(out_of_order == 0, "%ld callbacks out of their thread's order", out_of_order);
        ck_assert_int_eq(ran, TOTAL);
        for (int i = 0; i < NTHREADS; i++)
                ck_assert_int_eq(next_seq[i], PER_THREAD);
        tu_assert_usable(loop);
        loop_unref(loop);
}

START_TEST(test_posts_while_running) {
        run_round(1);
}
END_TEST

START_TEST(test_posts_backlog) {
        run_round(0);
}
END_TEST

int main(void) {
        Suite *s = suite_create("stress_threadsafe");
        TCase *tc = st_tcase(s, "million_posts", ST_TCASE_TIMEOUT);

        tcase_add_test(tc, test_posts_while_running);
        tcase_add_test(tc, test_posts_backlog);
        return tu_run_suite(s);
}
