/* SPDX-License-Identifier: MIT */
/*
 * make check-stress: a signal storm.
 *
 * A handler for SIGUSR1 (loop_add_signal_handler) while a thread sends
 * NSIGNALS SIGUSR1 as fast as it can, in turn with kill(2) to the process,
 * pthread_kill(3) to the loop's thread and pthread_kill(3) to itself. The
 * loop runs meanwhile, with a 1 ms timer that re-arms itself. Checked:
 * - the loop's calls never fail (EINTR is the loop's business);
 * - the timer goes on running during the storm: the loop stays responsive
 *   (no speed is measured);
 * - the callback runs at least once after the last signal was sent, within
 *   5 s (loop_add_signal_handler(3), "Delivery": no arrival is lost,
 *   merged ones are allowed);
 * - every callback runs in the loop's thread, with signum SIGUSR1;
 * - afterwards the loop still runs timers, call_soon and cross-thread
 *   posts, and removing the handler restores the old disposition.
 * No crash, under ASan/UBSan too.
 *
 * Limits reached: 10^5 signals; the log says into how many callbacks the
 * kernel and the loop merged them.
 */
#include <pthread.h>
#include <stdatomic.h>

#include "stress.h"

#define NSIGNALS 100000

static pthread_t loop_thread;
static atomic_long sent;                /* signals sent so far, counting the one being sent */
static atomic_int sender_done;
static long calls, calls_after_last, wrong_thread, wrong_signum;
static long ticks, ticks_during_storm;
static int send_errors;

static int on_signal(loop_t *loop, int signum, void *userdata) {
        (void) loop;
        (void) userdata;
        if (!pthread_equal(pthread_self(), loop_thread))
                wrong_thread++;
        if (signum != SIGUSR1)
                wrong_signum++;
        /*
         * sent is stored before each signal is sent: a call that began after
         * the last signal arrived reads NSIGNALS (one that began a moment
         * earlier may too, so this is a necessary condition, not proof).
         */
        if (atomic_load(&sent) == NSIGNALS)
                calls_after_last++;
        calls++;
        return 0;
}

static int on_tick(loop_t *loop, void *userdata) {
        (void) userdata;
        ticks++;
        if (!atomic_load(&sender_done))
                ticks_during_storm++;
        return loop_call_later_ns(loop, TU_MSEC, on_tick, NULL, NULL);
}

static void *storm(void *arg) {
        (void) arg;
        for (long i = 0; i < NSIGNALS; i++) {
                int r;

                atomic_store(&sent, i + 1);
                switch (i % 3) {
                case 0:
                        r = kill(getpid(), SIGUSR1) < 0 ? errno : 0;
                        break;
                case 1:
                        r = pthread_kill(loop_thread, SIGUSR1);
                        break;
                default:
                        r = pthread_kill(pthread_self(), SIGUSR1);
                        break;
                }
                if (r)
                        send_errors++;
        }
        atomic_store(&sender_done, 1);
        return NULL;
}

START_TEST(test_storm) {
        loop_t *loop = tu_loop_new();
        struct sigaction before, after;
        pthread_t sender;
        int64_t deadline;
        int count = 0;

        loop_thread = pthread_self();
        atomic_store(&sent, 0);
        atomic_store(&sender_done, 0);
        calls = calls_after_last = wrong_thread = wrong_signum = ticks = ticks_during_storm = 0;
        send_errors = 0;
        ck_assert_int_eq(sigaction(SIGUSR1, NULL, &before), 0);
        ck_assert_int_eq(loop_add_signal_handler(loop, SIGUSR1, on_signal, NULL), 0);
        ck_assert_int_eq(loop_call_later_ns(loop, TU_MSEC, on_tick, NULL, NULL), 0);

        st_watchdog(60, "a storm of 10^5 signals");
        ck_assert_int_eq(pthread_create(&sender, NULL, storm, NULL), 0);
        deadline = tu_now_ns() + 50 * TU_SEC;
        while (!atomic_load(&sender_done) && tu_now_ns() < deadline)
                ck_assert_int_ge(loop_run_once(loop, 10 * TU_MSEC), 0);
        ck_assert_int_eq(pthread_join(sender, NULL), 0);
        ck_assert_int_eq(send_errors, 0);
        /* The last arrival must be followed by a call that began after it
         * (loop_add_signal_handler(3), "Delivery"): it comes at once. */
        deadline = tu_now_ns() + 5 * TU_SEC;
        while (calls_after_last == 0 && tu_now_ns() < deadline)
                ck_assert_int_ge(loop_run_once(loop, 10 * TU_MSEC), 0);
        st_watchdog(0, NULL);

        st_note("%d signals sent, %ld callbacks (%ld after the last one), %ld timer ticks during the storm",
                NSIGNALS, calls, calls_after_last, ticks_during_storm);
        ck_assert_msg(calls_after_last > 0, "no callback after the last signal (%ld callbacks in all)", calls);
        ck_assert_int_eq(wrong_thread, 0);
        ck_assert_int_eq(wrong_signum, 0);
        ck_assert_msg(ticks_during_storm > 0, "the 1 ms timer never ran during the storm");

        /* Still responsive: a timer, a call_soon, a threadsafe post. */
        st_watchdog(30, "the loop after the storm");
        {
                long t = ticks;

                while (ticks < t + 3)
                        ck_assert_int_ge(loop_run_once(loop, 100 * TU_MSEC), 0);
        }
        tu_assert_usable(loop);
        ck_assert_int_eq(loop_call_soon_threadsafe(loop, tu_count_cb, &count, NULL), 0);
        tu_run_until(loop, &count, 1, 5 * TU_SEC);
        ck_assert_int_eq(count, 1);
        st_watchdog(0, NULL);

        ck_assert_int_eq(loop_remove_signal_handler(loop, SIGUSR1), 1);
        ck_assert_int_eq(sigaction(SIGUSR1, NULL, &after), 0);
        ck_assert(after.sa_handler == before.sa_handler);
        loop_unref(loop);
}
END_TEST

int main(void) {
        Suite *s = suite_create("stress_signal");
        TCase *tc = st_tcase(s, "storm", ST_TCASE_TIMEOUT);

        tcase_add_test(tc, test_storm);
        return tu_run_suite(s);
}
