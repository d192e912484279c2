/* SPDX-License-Identifier: MIT */
/*
 * loop_add_signal_handler / loop_remove_signal_handler: delivery in the
 * loop's thread (never inside raise()), from other threads, bursts that are
 * never lost, one loop per signal (-EBUSY), replacing, removing, restoring
 * the previous disposition (on remove, close and in a fork child), errors.
 *
 * Only SIGUSR1, SIGUSR2 and SIGHUP are used. A checked fixture installs a
 * counting "previous" handler on each before every test and puts back the
 * original dispositions afterwards, so the suite also passes with CK_FORK=no
 * and a signal that reaches the previous disposition never kills the run.
 */
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <sys/wait.h>

#include "testutil.h"

#define ELEMENTS(a) (sizeof(a) / sizeof((a)[0]))

static const int test_signals[] = { SIGUSR1, SIGUSR2, SIGHUP };

static struct sigaction original[NSIG];         /* before the fixture */
static struct sigaction previous[NSIG];         /* the fixture's, as the kernel reports it */
static volatile sig_atomic_t prev_count[NSIG];  /* calls of the previous handler */

static void prev_handler(int signum) {
        if (signum > 0 && signum < NSIG)
                prev_count[signum]++;
}

static void setup(void) {
        for (size_t i = 0; i < ELEMENTS(test_signals); i++) {
                int sig = test_signals[i];
                struct sigaction sa = { .sa_handler = prev_handler, .sa_flags = SA_RESTART };

                sigemptyset(&sa.sa_mask);
                sigaddset(&sa.sa_mask, SIGHUP);
                ck_assert_int_eq(sigaction(sig, &sa, &original[sig]), 0);
                ck_assert_int_eq(sigaction(sig, NULL, &previous[sig]), 0);
                prev_count[sig] = 0;
        }
}

static void teardown(void) {
        for (size_t i = 0; i < ELEMENTS(test_signals); i++)
                ck_assert_int_eq(sigaction(test_signals[i], &original[test_signals[i]], NULL), 0);
}

/* Whether sig's disposition is exactly what want describes. */
static bool disposition_is(int sig, const struct sigaction *want) {
        struct sigaction cur;

        if (sigaction(sig, NULL, &cur) < 0)
                return false;
        if (cur.sa_handler != want->sa_handler || cur.sa_flags != want->sa_flags)
                return false;
        for (int s = 1; s < NSIG; s++)
                if (sigismember(&cur.sa_mask, s) != sigismember(&want->sa_mask, s))
                        return false;
        return true;
}

static bool is_previous(int sig) {
        return disposition_is(sig, &previous[sig]);
}

/* Whether the library's handler (neither the fixture's nor a default) is installed. */
static bool is_caught_by_library(int sig) {
        struct sigaction cur;

        ck_assert_int_eq(sigaction(sig, NULL, &cur), 0);
        return cur.sa_handler != prev_handler && cur.sa_handler != SIG_DFL && cur.sa_handler != SIG_IGN;
}

/* What a callback saw; only the loop's thread writes it. */
struct rec {
        int count;
        int last_signum;
        int wrong_thread;       /* ran in a thread other than the loop's */
        int early;              /* ran before raise() returned */
        int wrong_loop;
        int after_raise;        /* set by the test once raise() has returned */
        loop_t *loop;
        pthread_t thread;
        int ret;                /* what the callback returns */
};

static void rec_init(struct rec *r, loop_t *loop) {
        *r = (struct rec) { .loop = loop, .thread = pthread_self(), .after_raise = 1 };
}

static int rec_cb(loop_t *loop, int signum, void *userdata) {
        struct rec *r = userdata;

        r->count++;
        r->last_signum = signum;
        if (!pthread_equal(pthread_self(), r->thread))
                r->wrong_thread++;
        if (!r->after_raise)
                r->early++;
        if (loop != r->loop)
                r->wrong_loop++;
        return r->ret;
}

static void assert_rec_clean(const struct rec *r) {
        ck_assert_int_eq(r->wrong_thread, 0);
        ck_assert_int_eq(r->early, 0);
        ck_assert_int_eq(r->wrong_loop, 0);
}

static int stop_cb(loop_t *loop, int signum, void *userdata) {
        (void) signum;
        (*(int *) userdata)++;
        return loop_stop(loop);
}

static int guard_cb(loop_t *loop, void *userdata) {
        *(int *) userdata = 1;
        return loop_stop(loop);
}

static uint64_t fds_watched(loop_t *loop) {
        struct loop_metrics m = { .size = sizeof(m) };

        ck_assert_int_eq(loop_get_metrics(loop, &m), 0);
        return m.fds;
}

START_TEST(test_runs_in_loop_not_in_raise) {
        loop_t *loop = tu_loop_new();
        struct rec r;

        rec_init(&r, loop);
        ck_assert_int_eq(loop_add_signal_handler(loop, SIGUSR1, rec_cb, &r), 0);
        ck_assert(is_caught_by_library(SIGUSR1));

        r.after_raise = 0;
        ck_assert_int_eq(raise(SIGUSR1), 0);
        /* Not inside raise(): nothing ran yet, and what raise() returned to
         * is visible to the callback. */
        ck_assert_int_eq(r.count, 0);
        r.after_raise = 1;

        tu_run_until(loop, &r.count, 1, 5 * TU_SEC);
        ck_assert_int_eq(r.count, 1);
        ck_assert_int_eq(r.last_signum, SIGUSR1);
        assert_rec_clean(&r);
        ck_assert_int_eq(prev_count[SIGUSR1], 0);

        /* One signal, one call. */
        tu_run_for(loop, 20 * TU_MSEC);
        ck_assert_int_eq(r.count, 1);

        ck_assert_int_eq(loop_remove_signal_handler(loop, SIGUSR1), 1);
        loop_unref(loop);
}
END_TEST

START_TEST(test_pending_before_run) {
        loop_t *loop = tu_loop_new();
        struct rec r;

        rec_init(&r, loop);
        ck_assert_int_eq(loop_add_signal_handler(loop, SIGUSR2, rec_cb, &r), 0);
        /* The loop is not running when the signal comes: it is kept. */
        ck_assert_int_eq(raise(SIGUSR2), 0);
        tu_run_until(loop, &r.count, 1, 5 * TU_SEC);
        ck_assert_int_eq(r.count, 1);
        ck_assert_int_eq(r.last_signum, SIGUSR2);
        assert_rec_clean(&r);
        ck_assert_int_eq(loop_close(loop), 0);
        loop_unref(loop);
}
END_TEST

enum { SEND_KILL, SEND_PTHREAD_KILL_SELF };

struct sender {
        pthread_t thread;
        int mode;
        int64_t delay_ns;
        atomic_int error;
};

static void *sender_main(void *arg) {
        struct sender *s = arg;

        tu_sleep_ns(s->delay_ns);
        /* SEND_PTHREAD_KILL_SELF: the handler runs in this thread, not the loop's. */
        int r = s->mode == SEND_KILL ? kill(getpid(), SIGUSR1) : -pthread_kill(pthread_self(), SIGUSR1);
        if (r != 0)
                atomic_store(&s->error, r < 0 ? errno : r);
        return NULL;
}

START_TEST(test_from_other_thread_wakes_loop) {
        static const int modes[] = { SEND_KILL, SEND_PTHREAD_KILL_SELF };

        for (size_t i = 0; i < ELEMENTS(modes); i++) {
                loop_t *loop = tu_loop_new();
                struct sender s = { .mode = modes[i], .delay_ns = 50 * TU_MSEC };
                int stopped = 0, timed_out = 0;
                int64_t start;

                ck_assert_int_eq(loop_add_signal_handler(loop, SIGUSR1, stop_cb, &stopped), 0);
                ck_assert_int_eq(loop_call_later(loop, 10.0, guard_cb, &timed_out, NULL), 0);
                ck_assert_int_eq(pthread_create(&s.thread, NULL, sender_main, &s), 0);
                start = tu_now_ns();
                /* The loop sleeps in its wait until the signal wakes it. */
                ck_assert_int_eq(loop_run_forever(loop), 0);
                ck_assert_int_eq(pthread_join(s.thread, NULL), 0);
                ck_assert_int_eq(atomic_load(&s.error), 0);
                ck_assert_int_eq(timed_out, 0);
                ck_assert_int_eq(stopped, 1);
                ck_assert_int_lt(tu_now_ns() - start, 5 * TU_SEC);
                ck_assert_int_eq(prev_count[SIGUSR1], 0);
                loop_unref(loop);
        }
}
END_TEST

#define BURST 1000

struct burst {
        pthread_t thread;
        atomic_int sent;        /* number of the signal about to be raised */
        atomic_int error;
        /* loop thread only */
        int count;
        int seen;               /* sent, as the latest call read it */
};

static void *burst_main(void *arg) {
        struct burst *b = arg;

        for (int i = 1; i <= BURST; i++) {
                /* Stored before raising: a call that reads N ran after signal N. */
                atomic_store(&b->sent, i);
                if (raise(SIGUSR1) != 0) {
                        atomic_store(&b->error, errno);
                        break;
                }
        }
        return NULL;
}

static int burst_cb(loop_t *loop, int signum, void *userdata) {
        struct burst *b = userdata;

        (void) loop;
        (void) signum;
        b->count++;
        b->seen = atomic_load(&b->sent);
        return 0;
}

START_TEST(test_burst_never_lost) {
        loop_t *loop = tu_loop_new();
        struct burst b = { .count = 0 };

        ck_assert_int_eq(loop_add_signal_handler(loop, SIGUSR1, burst_cb, &b), 0);
        ck_assert_int_eq(pthread_create(&b.thread, NULL, burst_main, &b), 0);
        /* The loop runs while the signals come in. */
        tu_run_until(loop, &b.seen, BURST, 10 * TU_SEC);
        ck_assert_int_eq(pthread_join(b.thread, NULL), 0);
        ck_assert_int_eq(atomic_load(&b.error), 0);
        /* Burst signals may coalesce, but a call ran after the last one. */
        ck_assert_int_eq(b.seen, BURST);
        ck_assert_int_ge(b.count, 1);
        ck_assert_int_le(b.count, BURST);
        ck_assert_int_eq(prev_count[SIGUSR1], 0);
        /* The call that read BURST may have been the one for signal
         * BURST - 1, with one more on its way: let it come. */
        tu_run_for(loop, 50 * TU_MSEC);
        ck_assert_int_le(b.count, BURST);

        /* Send, wait for the call, send again: every round gets its call. */
        for (int round = 0; round < 5; round++) {
                int before = b.count;
                ck_assert_int_eq(raise(SIGUSR1), 0);
                tu_run_until(loop, &b.count, before + 1, 5 * TU_SEC);
                tu_run_for(loop, 10 * TU_MSEC);
                ck_assert_int_eq(b.count, before + 1);
        }

        /* Raised together before the loop looks: at least one call, at most one each. */
        int before = b.count;
        for (int i = 0; i < 5; i++)
                ck_assert_int_eq(raise(SIGUSR1), 0);
        tu_run_until(loop, &b.count, before + 1, 5 * TU_SEC);
        tu_run_for(loop, 10 * TU_MSEC);
        ck_assert_int_ge(b.count, before + 1);
        ck_assert_int_le(b.count, before + 5);

        ck_assert_int_eq(loop_remove_signal_handler(loop, SIGUSR1), 1);
        loop_unref(loop);
}
END_TEST

static int reraise_cb(loop_t *loop, int signum, void *userdata) {
        int *count = userdata;

        (void) loop;
        /* A signal that arrives while the callback runs gets a call of its own. */
        if (++*count == 1 && raise(signum) != 0)
                return -errno;
        return 0;
}

START_TEST(test_signal_during_callback) {
        loop_t *loop = tu_loop_new();
        int count = 0;

        ck_assert_int_eq(loop_add_signal_handler(loop, SIGUSR1, reraise_cb, &count), 0);
        ck_assert_int_eq(raise(SIGUSR1), 0);
        tu_run_until(loop, &count, 2, 5 * TU_SEC);
        tu_run_for(loop, 20 * TU_MSEC);
        ck_assert_int_eq(count, 2);
        loop_unref(loop);
}
END_TEST

START_TEST(test_two_signals) {
        loop_t *loop = tu_loop_new();
        struct rec r1, r2;

        rec_init(&r1, loop);
        rec_init(&r2, loop);
        ck_assert_int_eq(loop_add_signal_handler(loop, SIGUSR1, rec_cb, &r1), 0);
        ck_assert_int_eq(loop_add_signal_handler(loop, SIGUSR2, rec_cb, &r2), 0);

        ck_assert_int_eq(raise(SIGUSR2), 0);
        tu_run_until(loop, &r2.count, 1, 5 * TU_SEC);
        tu_run_for(loop, 10 * TU_MSEC);
        ck_assert_int_eq(r1.count, 0);
        ck_assert_int_eq(r2.count, 1);
        ck_assert_int_eq(r2.last_signum, SIGUSR2);

        ck_assert_int_eq(raise(SIGUSR1), 0);
        tu_run_until(loop, &r1.count, 1, 5 * TU_SEC);
        tu_run_for(loop, 10 * TU_MSEC);
        ck_assert_int_eq(r1.count, 1);
        ck_assert_int_eq(r1.last_signum, SIGUSR1);
        ck_assert_int_eq(r2.count, 1);

        /* Both at once: each its own callback. */
        ck_assert_int_eq(raise(SIGUSR1), 0);
        ck_assert_int_eq(raise(SIGUSR2), 0);
        tu_run_until(loop, &r1.count, 2, 5 * TU_SEC);
        tu_run_until(loop, &r2.count, 2, 5 * TU_SEC);
        tu_run_for(loop, 10 * TU_MSEC);
        ck_assert_int_eq(r1.count, 2);
        ck_assert_int_eq(r2.count, 2);
        assert_rec_clean(&r1);
        assert_rec_clean(&r2);

        ck_assert_int_eq(loop_remove_signal_handler(loop, SIGUSR1), 1);
        ck_assert_int_eq(loop_remove_signal_handler(loop, SIGUSR2), 1);
        ck_assert(is_previous(SIGUSR1));
        ck_assert(is_previous(SIGUSR2));
        ck_assert_uint_eq(fds_watched(loop), 0);
        loop_unref(loop);
}
END_TEST

START_TEST(test_replace) {
        loop_t *loop = tu_loop_new();
        struct rec a, b;

        rec_init(&a, loop);
        rec_init(&b, loop);
        ck_assert_int_eq(loop_add_signal_handler(loop, SIGUSR1, rec_cb, &a), 0);
        /* The same loop again: the callback is replaced, as in asyncio. */
        ck_assert_int_eq(loop_add_signal_handler(loop, SIGUSR1, rec_cb, &b), 0);
        ck_assert_int_eq(raise(SIGUSR1), 0);
        tu_run_until(loop, &b.count, 1, 5 * TU_SEC);
        tu_run_for(loop, 10 * TU_MSEC);
        ck_assert_int_eq(a.count, 0);
        ck_assert_int_eq(b.count, 1);

        /* Replacing did not take the library's own handler for the previous one. */
        ck_assert_int_eq(loop_remove_signal_handler(loop, SIGUSR1), 1);
        ck_assert(is_previous(SIGUSR1));
        ck_assert_int_eq(loop_remove_signal_handler(loop, SIGUSR1), 0);
        loop_unref(loop);
}
END_TEST

START_TEST(test_remove) {
        loop_t *loop = tu_loop_new();
        struct rec r, keep;

        rec_init(&r, loop);
        rec_init(&keep, loop);
        /* Nothing was ever added. */
        ck_assert_int_eq(loop_remove_signal_handler(loop, SIGUSR1), 0);
        ck_assert_int_eq(loop_add_signal_handler(loop, SIGUSR1, rec_cb, &r), 0);
        ck_assert_int_eq(loop_remove_signal_handler(loop, SIGUSR2), 0);
        ck_assert_int_eq(loop_remove_signal_handler(loop, SIGUSR1), 1);
        ck_assert_int_eq(loop_remove_signal_handler(loop, SIGUSR1), 0);
        ck_assert(is_previous(SIGUSR1));
        ck_assert_uint_eq(fds_watched(loop), 0);

        /* After removal the previous disposition gets the signal. */
        ck_assert_int_eq(raise(SIGUSR1), 0);
        ck_assert_int_eq(prev_count[SIGUSR1], 1);
        tu_run_for(loop, 20 * TU_MSEC);
        ck_assert_int_eq(r.count, 0);

        /* Removed while its call is already queued: the call does nothing.
         * SIGUSR2's handler keeps the loop's reader in place. */
        ck_assert_int_eq(loop_add_signal_handler(loop, SIGUSR2, rec_cb, &keep), 0);
        ck_assert_int_eq(loop_add_signal_handler(loop, SIGUSR1, rec_cb, &r), 0);
        ck_assert_int_eq(raise(SIGUSR1), 0);
        ck_assert_int_ge(loop_run_once(loop, 0), 1);   /* the reader ran and queued the call */
        ck_assert_int_eq(r.count, 0);
        ck_assert_int_eq(loop_remove_signal_handler(loop, SIGUSR1), 1);
        tu_run_for(loop, 20 * TU_MSEC);
        ck_assert_int_eq(r.count, 0);

        /* Removed before the loop looked, then added again: the old signal
         * does not reach the new handler. */
        ck_assert_int_eq(loop_add_signal_handler(loop, SIGUSR1, rec_cb, &r), 0);
        ck_assert_int_eq(raise(SIGUSR1), 0);
        ck_assert_int_eq(loop_remove_signal_handler(loop, SIGUSR1), 1);
        ck_assert_int_eq(loop_add_signal_handler(loop, SIGUSR1, rec_cb, &r), 0);
        tu_run_for(loop, 20 * TU_MSEC);
        ck_assert_int_eq(r.count, 0);
        ck_assert_int_eq(keep.count, 0);

        ck_assert_int_eq(loop_remove_signal_handler(loop, SIGUSR1), 1);
        ck_assert_int_eq(loop_remove_signal_handler(loop, SIGUSR2), 1);
        ck_assert_uint_eq(fds_watched(loop), 0);
        loop_unref(loop);
}
END_TEST

static int remove_self_cb(loop_t *loop, int signum, void *userdata) {
        (*(int *) userdata)++;
        return loop_remove_signal_handler(loop, signum) == 1 ? 0 : -EPROTO;
}

START_TEST(test_remove_from_callback) {
        loop_t *loop = tu_loop_new();
        int count = 0;

        ck_assert_int_eq(loop_add_signal_handler(loop, SIGHUP, remove_self_cb, &count), 0);
        ck_assert_int_eq(raise(SIGHUP), 0);
        tu_run_until(loop, &count, 1, 5 * TU_SEC);
        ck_assert_int_eq(count, 1);
        ck_assert(is_previous(SIGHUP));
        ck_assert_int_eq(raise(SIGHUP), 0);
        tu_run_for(loop, 20 * TU_MSEC);
        ck_assert_int_eq(count, 1);
        ck_assert_int_eq(prev_count[SIGHUP], 1);
        loop_unref(loop);
}
END_TEST

START_TEST(test_restores_previous_disposition) {
        loop_t *loop = tu_loop_new();
        struct sigaction ign = { .sa_handler = SIG_IGN }, dfl = { .sa_handler = SIG_DFL }, want;
        struct rec r;

        rec_init(&r, loop);
        /* A handler with flags and a mask (the fixture's). */
        ck_assert(is_previous(SIGUSR1));
        ck_assert_int_eq(loop_add_signal_handler(loop, SIGUSR1, rec_cb, &r), 0);
        ck_assert(is_caught_by_library(SIGUSR1));
        ck_assert_int_eq(loop_remove_signal_handler(loop, SIGUSR1), 1);
        ck_assert(is_previous(SIGUSR1));

        /* SIG_IGN comes back as SIG_IGN. */
        sigemptyset(&ign.sa_mask);
        ck_assert_int_eq(sigaction(SIGHUP, &ign, NULL), 0);
        ck_assert_int_eq(sigaction(SIGHUP, NULL, &want), 0);
        ck_assert_int_eq(loop_add_signal_handler(loop, SIGHUP, rec_cb, &r), 0);
        ck_assert(is_caught_by_library(SIGHUP));
        ck_assert_int_eq(loop_remove_signal_handler(loop, SIGHUP), 1);
        ck_assert(disposition_is(SIGHUP, &want));

        /* SIG_DFL comes back as SIG_DFL (not raised: it would end the test). */
        sigemptyset(&dfl.sa_mask);
        ck_assert_int_eq(sigaction(SIGUSR2, &dfl, NULL), 0);
        ck_assert_int_eq(sigaction(SIGUSR2, NULL, &want), 0);
        ck_assert_int_eq(loop_add_signal_handler(loop, SIGUSR2, rec_cb, &r), 0);
        ck_assert(is_caught_by_library(SIGUSR2));
        ck_assert_int_eq(loop_remove_signal_handler(loop, SIGUSR2), 1);
        ck_assert(disposition_is(SIGUSR2, &want));

        ck_assert_int_eq(r.count, 0);
        loop_unref(loop);
}
END_TEST

START_TEST(test_other_loop_ebusy) {
        loop_t *a = tu_loop_new(), *b = tu_loop_new();
        struct rec ra, rb;

        rec_init(&ra, a);
        rec_init(&rb, b);
        ck_assert_int_eq(loop_add_signal_handler(a, SIGUSR1, rec_cb, &ra), 0);
        ck_assert_int_eq(loop_add_signal_handler(b, SIGUSR1, rec_cb, &rb), -EBUSY);
        /* The failed add left nothing behind in b. */
        ck_assert_uint_eq(fds_watched(b), 0);
        ck_assert_int_eq(loop_remove_signal_handler(b, SIGUSR1), 0);
        ck_assert(is_caught_by_library(SIGUSR1));

        /* Another signal is free; each signal reaches its own loop. */
        ck_assert_int_eq(loop_add_signal_handler(b, SIGUSR2, rec_cb, &rb), 0);
        ck_assert_int_eq(raise(SIGUSR2), 0);
        tu_run_until(b, &rb.count, 1, 5 * TU_SEC);
        tu_run_for(a, 10 * TU_MSEC);
        ck_assert_int_eq(rb.count, 1);
        ck_assert_int_eq(rb.last_signum, SIGUSR2);
        ck_assert_int_eq(ra.count, 0);

        ck_assert_int_eq(raise(SIGUSR1), 0);
        tu_run_until(a, &ra.count, 1, 5 * TU_SEC);
        tu_run_for(b, 10 * TU_MSEC);
        ck_assert_int_eq(ra.count, 1);
        ck_assert_int_eq(rb.count, 1);

        /* Once a lets go, b may have it. */
        ck_assert_int_eq(loop_remove_signal_handler(a, SIGUSR1), 1);
        ck_assert_int_eq(loop_add_signal_handler(b, SIGUSR1, rec_cb, &rb), 0);
        ck_assert_int_eq(loop_add_signal_handler(a, SIGUSR1, rec_cb, &ra), -EBUSY);
        ck_assert_int_eq(raise(SIGUSR1), 0);
        tu_run_until(b, &rb.count, 2, 5 * TU_SEC);
        tu_run_for(a, 10 * TU_MSEC);
        ck_assert_int_eq(rb.count, 2);
        ck_assert_int_eq(rb.last_signum, SIGUSR1);
        ck_assert_int_eq(ra.count, 1);
        assert_rec_clean(&ra);
        assert_rec_clean(&rb);

        /* b's removal restores what was there before a took the signal. */
        ck_assert_int_eq(loop_remove_signal_handler(b, SIGUSR1), 1);
        ck_assert(is_previous(SIGUSR1));
        loop_unref(a);
        loop_unref(b);
        ck_assert(is_previous(SIGUSR2));
}
END_TEST

/* A loop in its own thread that handles SIGUSR2 while the test's loop has SIGUSR1. */
struct other {
        pthread_t thread;
        atomic_int ready;       /* 1: handler added, -errno: failed */
        atomic_int calls;
        atomic_int wrong_thread;
        atomic_int result;
};

static int other_cb(loop_t *loop, int signum, void *userdata) {
        struct other *o = userdata;

        if (!pthread_equal(pthread_self(), o->thread) || signum != SIGUSR2)
                atomic_fetch_add(&o->wrong_thread, 1);
        atomic_fetch_add(&o->calls, 1);
        return loop_stop(loop);
}

static void *other_main(void *arg) {
        struct other *o = arg;
        loop_t *loop = NULL;
        int r = loop_new(&loop);

        if (r == 0)
                r = loop_add_signal_handler(loop, SIGUSR2, other_cb, o);
        if (r < 0) {
                atomic_store(&o->ready, r);
                loop_unref(loop);
                return NULL;
        }
        atomic_store(&o->ready, 1);
        r = loop_run_forever(loop);
        atomic_store(&o->result, r);
        loop_unref(loop);
        return NULL;
}

START_TEST(test_loops_in_two_threads) {
        loop_t *loop = tu_loop_new();
        struct other o = { .ready = 0 };
        struct rec r;

        rec_init(&r, loop);
        ck_assert_int_eq(loop_add_signal_handler(loop, SIGUSR1, rec_cb, &r), 0);
        ck_assert_int_eq(pthread_create(&o.thread, NULL, other_main, &o), 0);
        int64_t deadline = tu_now_ns() + 5 * TU_SEC;
        while (atomic_load(&o.ready) == 0 && tu_now_ns() < deadline)
                tu_sleep_ns(TU_MSEC);
        ck_assert_int_eq(atomic_load(&o.ready), 1);
        /* Adding is under a process-wide lock: the other thread's loop has it. */
        ck_assert_int_eq(loop_add_signal_handler(loop, SIGUSR2, rec_cb, &r), -EBUSY);

        /* Raised here, handled by the other thread's loop in that thread. */
        ck_assert_int_eq(raise(SIGUSR2), 0);
        ck_assert_int_eq(pthread_join(o.thread, NULL), 0);
        ck_assert_int_eq(atomic_load(&o.result), 0);
        ck_assert_int_eq(atomic_load(&o.calls), 1);
        ck_assert_int_eq(atomic_load(&o.wrong_thread), 0);
        /* Its loop is gone: the signal is free again and back to the previous handler. */
        ck_assert(is_previous(SIGUSR2));

        ck_assert_int_eq(raise(SIGUSR1), 0);
        tu_run_until(loop, &r.count, 1, 5 * TU_SEC);
        ck_assert_int_eq(r.count, 1);
        ck_assert_int_eq(r.last_signum, SIGUSR1);
        assert_rec_clean(&r);
        loop_unref(loop);
}
END_TEST

START_TEST(test_invalid) {
        static const int bad[] = { 0, -1, INT_MIN, SIGKILL, SIGSTOP, NSIG, NSIG + 1, INT_MAX };
        loop_t *loop = tu_loop_new();
        struct rec r;

        rec_init(&r, loop);
        for (size_t i = 0; i < ELEMENTS(bad); i++) {
                ck_assert_int_eq(loop_add_signal_handler(loop, bad[i], rec_cb, &r), -EINVAL);
                ck_assert_int_eq(loop_remove_signal_handler(loop, bad[i]), -EINVAL);
        }
        ck_assert_int_eq(loop_add_signal_handler(loop, SIGUSR1, NULL, &r), -EINVAL);
        ck_assert_int_eq(loop_add_signal_handler(NULL, SIGUSR1, rec_cb, &r), -EINVAL);
        ck_assert_int_eq(loop_remove_signal_handler(NULL, SIGUSR1), -EINVAL);
        ck_assert(is_previous(SIGUSR1));
        ck_assert_uint_eq(fds_watched(loop), 0);
        loop_unref(loop);
}
END_TEST

START_TEST(test_closed_loop) {
        loop_t *loop = tu_loop_new();
        struct rec r;

        rec_init(&r, loop);
        ck_assert_int_eq(loop_close(loop), 0);
        ck_assert_int_eq(loop_add_signal_handler(loop, SIGUSR1, rec_cb, &r), -ESHUTDOWN);
        ck_assert_int_eq(loop_remove_signal_handler(loop, SIGUSR1), -ESHUTDOWN);
        ck_assert(is_previous(SIGUSR1));
        loop_unref(loop);
}
END_TEST

START_TEST(test_close_restores) {
        int fds_before = tu_count_fds();
        loop_t *loop = tu_loop_new(), *other;
        struct rec r, r2;

        rec_init(&r, loop);
        ck_assert_int_eq(loop_add_signal_handler(loop, SIGUSR1, rec_cb, &r), 0);
        ck_assert_int_eq(loop_add_signal_handler(loop, SIGUSR2, rec_cb, &r), 0);
        ck_assert_int_eq(loop_add_signal_handler(loop, SIGHUP, rec_cb, &r), 0);
        ck_assert_int_eq(loop_remove_signal_handler(loop, SIGHUP), 1);
        /* Arrives but never runs: the loop is closed first. */
        ck_assert_int_eq(raise(SIGUSR1), 0);
        ck_assert_int_eq(loop_close(loop), 0);
        ck_assert(is_previous(SIGUSR1));
        ck_assert(is_previous(SIGUSR2));
        ck_assert(is_previous(SIGHUP));
        ck_assert_int_eq(r.count, 0);
        loop_unref(loop);
        /* The loop's descriptors are all closed. */
        ck_assert_int_eq(tu_count_fds(), fds_before);

        /* The signals are free; what arrived for the closed loop is not delivered here. */
        other = tu_loop_new();
        rec_init(&r2, other);
        ck_assert_int_eq(loop_add_signal_handler(other, SIGUSR1, rec_cb, &r2), 0);
        ck_assert_int_eq(loop_add_signal_handler(other, SIGUSR2, rec_cb, &r2), 0);
        tu_run_for(other, 20 * TU_MSEC);
        ck_assert_int_eq(r2.count, 0);
        ck_assert_int_eq(raise(SIGUSR2), 0);
        tu_run_until(other, &r2.count, 1, 5 * TU_SEC);
        ck_assert_int_eq(r2.count, 1);
        ck_assert_int_eq(r2.last_signum, SIGUSR2);

        /* Dropping the last reference closes the loop and restores too. */
        loop_unref(other);
        ck_assert(is_previous(SIGUSR1));
        ck_assert(is_previous(SIGUSR2));
        ck_assert_int_eq(tu_count_fds(), fds_before);
        ck_assert_int_eq(prev_count[SIGUSR1], 0);
        ck_assert_int_eq(prev_count[SIGUSR2], 0);
}
END_TEST

struct seen_exception {
        int calls;
        int error;
        int fd;
        int handle_null;
        char message[64];
};

static void exception_cb(loop_t *loop, const struct loop_exception_context *ctx, void *userdata) {
        struct seen_exception *e = userdata;

        (void) loop;
        e->calls++;
        e->error = ctx->error;
        e->fd = ctx->fd;
        e->handle_null = ctx->handle == NULL;
        snprintf(e->message, sizeof(e->message), "%s", ctx->message);
}

START_TEST(test_error_reaches_exception_handler) {
        loop_t *loop = tu_loop_new();
        struct seen_exception e = { .calls = 0 };
        struct rec r;

        rec_init(&r, loop);
        r.ret = -EIO;
        ck_assert_int_eq(loop_set_exception_handler(loop, exception_cb, &e), 0);
        ck_assert_int_eq(loop_add_signal_handler(loop, SIGUSR1, rec_cb, &r), 0);
        ck_assert_int_eq(raise(SIGUSR1), 0);
        tu_run_until(loop, &e.calls, 1, 5 * TU_SEC);
        ck_assert_int_eq(r.count, 1);
        ck_assert_int_eq(e.calls, 1);
        ck_assert_int_eq(e.error, -EIO);
        ck_assert_int_eq(e.fd, -1);
        ck_assert_int_eq(e.handle_null, 1);
        ck_assert_str_eq(e.message, "Exception in callback");

        /* The handler stays in place after an error. */
        r.ret = 0;
        ck_assert_int_eq(raise(SIGUSR1), 0);
        tu_run_until(loop, &r.count, 2, 5 * TU_SEC);
        ck_assert_int_eq(r.count, 2);
        ck_assert_int_eq(e.calls, 1);
        loop_unref(loop);
}
END_TEST

/* In the child: bit set per failed check, so the parent can say which. */
static int child_checks(loop_t *inherited) {
        struct rec r;
        loop_t *fresh = NULL;
        int fail = 0;

        if (loop_add_signal_handler(inherited, SIGUSR2, rec_cb, &r) != -ECHILD)
                fail |= 1 << 0;
        if (loop_remove_signal_handler(inherited, SIGUSR1) != -ECHILD)
                fail |= 1 << 1;
        /* The parent's loop is dead here: the previous disposition is back. */
        if (!is_previous(SIGUSR1))
                fail |= 1 << 2;
        prev_count[SIGUSR1] = 0;
        if (raise(SIGUSR1) != 0 || prev_count[SIGUSR1] != 1)
                fail |= 1 << 3;
        /* A loop of the child's own may take the signal. */
        if (loop_new(&fresh) < 0)
                return fail | 1 << 4;
        rec_init(&r, fresh);
        if (loop_add_signal_handler(fresh, SIGUSR1, rec_cb, &r) != 0)
                fail |= 1 << 5;
        if (raise(SIGUSR1) != 0)
                fail |= 1 << 6;
        for (int i = 0; i < 500 && r.count == 0; i++)
                loop_run_once(fresh, 10 * TU_MSEC);
        if (r.count != 1 || r.last_signum != SIGUSR1)
                fail |= 1 << 7;
        loop_unref(fresh);
        if (!is_previous(SIGUSR1))
                fail |= 1 << 8;
        /* Letting go of the inherited loop touches nothing of the parent's. */
        loop_unref(inherited);
        return fail;
}

START_TEST(test_fork) {
        loop_t *loop = tu_loop_new();
        struct rec r;
        int status;
        pid_t pid;

        rec_init(&r, loop);
        ck_assert_int_eq(loop_add_signal_handler(loop, SIGUSR1, rec_cb, &r), 0);
        pid = fork();
        ck_assert_int_ge(pid, 0);
        if (pid == 0)
                _exit(child_checks(loop));
        ck_assert_int_eq(waitpid(pid, &status, 0), pid);
        ck_assert(WIFEXITED(status));
        ck_assert_msg(WEXITSTATUS(status) == 0, "child failed checks 0x%x", WEXITSTATUS(status));

        /* The parent's handler is intact and saw nothing of the child's signals. */
        ck_assert(is_caught_by_library(SIGUSR1));
        tu_run_for(loop, 20 * TU_MSEC);
        ck_assert_int_eq(r.count, 0);
        ck_assert_int_eq(raise(SIGUSR1), 0);
        tu_run_until(loop, &r.count, 1, 5 * TU_SEC);
        ck_assert_int_eq(r.count, 1);
        assert_rec_clean(&r);
        ck_assert_int_eq(prev_count[SIGUSR1], 0);
        loop_unref(loop);
        ck_assert(is_previous(SIGUSR1));
}
END_TEST

static Suite *signal_suite(void) {
        Suite *s = suite_create("signal");
        TCase *tc;

        tc = tu_tcase(s, "delivery");
        tcase_add_checked_fixture(tc, setup, teardown);
        tcase_add_test(tc, test_runs_in_loop_not_in_raise);
        tcase_add_test(tc, test_pending_before_run);
        tcase_add_test(tc, test_from_other_thread_wakes_loop);
        tcase_add_test(tc, test_burst_never_lost);
        tcase_add_test(tc, test_signal_during_callback);
        tcase_add_test(tc, test_two_signals);
        tcase_add_test(tc, test_loops_in_two_threads);
        tcase_add_test(tc, test_error_reaches_exception_handler);

        tc = tu_tcase(s, "registration");
        tcase_add_checked_fixture(tc, setup, teardown);
        tcase_add_test(tc, test_replace);
        tcase_add_test(tc, test_remove);
        tcase_add_test(tc, test_remove_from_callback);
        tcase_add_test(tc, test_restores_previous_disposition);
        tcase_add_test(tc, test_other_loop_ebusy);
        tcase_add_test(tc, test_invalid);
        tcase_add_test(tc, test_closed_loop);
        tcase_add_test(tc, test_close_restores);
        tcase_add_test(tc, test_fork);
        return s;
}

int main(void) {
        return tu_run_suite(signal_suite());
}
