/* SPDX-License-Identifier: MIT */
/*
 * loop_add_signal_handler / loop_remove_signal_handler and the loop_add_signal
 * watchers: delivery in the loop's thread (never inside raise()), from
 * other threads, bursts that are never lost, several loops sharing a signal
 * (in one thread and in several, a storm that reaches every loop, the limit
 * of loops per signal), several watchers in one loop (in order, enabled,
 * removed from their own callbacks), replacing, removing, restoring the
 * previous disposition only when the last loop lets go (on remove, close
 * and in a fork child), errors.
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

START_TEST(test_other_loop_shares) {
        loop_t *a = tu_loop_new(), *b = tu_loop_new();
        struct rec ra, rb;

        rec_init(&ra, a);
        rec_init(&rb, b);
        ck_assert_int_eq(loop_add_signal_handler(a, SIGUSR1, rec_cb, &ra), 0);
        /* A second loop shares the signal (it used to get -EBUSY). */
        ck_assert_int_eq(loop_add_signal_handler(b, SIGUSR1, rec_cb, &rb), 0);
        ck_assert(is_caught_by_library(SIGUSR1));

        /* One signal reaches both loops, once each. */
        ck_assert_int_eq(raise(SIGUSR1), 0);
        tu_run_until(a, &ra.count, 1, 5 * TU_SEC);
        tu_run_until(b, &rb.count, 1, 5 * TU_SEC);
        tu_run_for(a, 10 * TU_MSEC);
        tu_run_for(b, 10 * TU_MSEC);
        ck_assert_int_eq(ra.count, 1);
        ck_assert_int_eq(rb.count, 1);
        ck_assert_int_eq(rb.last_signum, SIGUSR1);

        /* The loop that saved the disposition lets go first: b keeps the
         * signal, and the library's handler stays installed. */
        ck_assert_int_eq(loop_remove_signal_handler(a, SIGUSR1), 1);
        ck_assert(is_caught_by_library(SIGUSR1));
        ck_assert_int_eq(raise(SIGUSR1), 0);
        tu_run_until(b, &rb.count, 2, 5 * TU_SEC);
        tu_run_for(a, 10 * TU_MSEC);
        ck_assert_int_eq(rb.count, 2);
        ck_assert_int_eq(ra.count, 1);
        ck_assert_int_eq(prev_count[SIGUSR1], 0);

        /* a takes it again, b lets go: a alone. */
        ck_assert_int_eq(loop_add_signal_handler(a, SIGUSR1, rec_cb, &ra), 0);
        ck_assert_int_eq(loop_remove_signal_handler(b, SIGUSR1), 1);
        ck_assert(is_caught_by_library(SIGUSR1));
        ck_assert_int_eq(raise(SIGUSR1), 0);
        tu_run_until(a, &ra.count, 2, 5 * TU_SEC);
        tu_run_for(b, 10 * TU_MSEC);
        ck_assert_int_eq(ra.count, 2);
        ck_assert_int_eq(rb.count, 2);
        assert_rec_clean(&ra);
        assert_rec_clean(&rb);

        /* The last removal restores what was there before the first add. */
        ck_assert_int_eq(loop_remove_signal_handler(a, SIGUSR1), 1);
        ck_assert(is_previous(SIGUSR1));
        ck_assert_int_eq(prev_count[SIGUSR1], 0);

        /* Closing one sharing loop leaves the signal to the other. */
        ck_assert_int_eq(loop_add_signal_handler(a, SIGUSR2, rec_cb, &ra), 0);
        ck_assert_int_eq(loop_add_signal_handler(b, SIGUSR2, rec_cb, &rb), 0);
        loop_unref(a);
        ck_assert(is_caught_by_library(SIGUSR2));
        ck_assert_int_eq(raise(SIGUSR2), 0);
        tu_run_until(b, &rb.count, 3, 5 * TU_SEC);
        ck_assert_int_eq(rb.count, 3);
        ck_assert_int_eq(rb.last_signum, SIGUSR2);
        loop_unref(b);
        ck_assert(is_previous(SIGUSR2));
        ck_assert_int_eq(prev_count[SIGUSR2], 0);
}
END_TEST

/*
 * A loop in a thread of its own that handles sig beside the test's loop,
 * driven by commands: it counts its calls, removes its handler on
 * SHARER_REMOVE, and closes its loop on SHARER_QUIT.
 */
enum { SHARER_RUN, SHARER_REMOVE, SHARER_QUIT };

struct sharer {
        pthread_t thread;
        int sig;
        atomic_int ready;       /* 1: handler added, -errno: failed */
        atomic_int command;
        atomic_int removed;     /* what loop_remove_signal_handler returned, once done */
        atomic_int calls;
        atomic_int wrong_thread;
        atomic_int error;
};

static int sharer_cb(loop_t *loop, int signum, void *userdata) {
        struct sharer *sh = userdata;

        (void) loop;
        if (!pthread_equal(pthread_self(), sh->thread) || signum != sh->sig)
                atomic_fetch_add(&sh->wrong_thread, 1);
        atomic_fetch_add(&sh->calls, 1);
        return 0;
}

static void *sharer_main(void *arg) {
        struct sharer *sh = arg;
        loop_t *loop = NULL;
        bool removed = false;
        int r = loop_new(&loop);

        if (r == 0)
                r = loop_add_signal_handler(loop, sh->sig, sharer_cb, sh);
        if (r < 0) {
                atomic_store(&sh->ready, r);
                loop_unref(loop);
                return NULL;
        }
        atomic_store(&sh->ready, 1);
        for (;;) {
                int cmd = atomic_load(&sh->command);

                if (cmd == SHARER_QUIT)
                        break;
                if (cmd == SHARER_REMOVE && !removed) {
                        atomic_store(&sh->removed, loop_remove_signal_handler(loop, sh->sig) + 100);
                        removed = true;
                }
                r = loop_run_once(loop, 5 * TU_MSEC);
                if (r < 0) {
                        atomic_store(&sh->error, r);
                        break;
                }
        }
        loop_unref(loop);
        return NULL;
}

/* Waits (up to 5 s) for *v to become nonzero; returns it. */
static int wait_nonzero(atomic_int *v) {
        int64_t deadline = tu_now_ns() + 5 * TU_SEC;

        while (atomic_load(v) == 0 && tu_now_ns() < deadline)
                tu_sleep_ns(TU_MSEC);
        return atomic_load(v);
}

static void wait_calls(atomic_int *calls, int want) {
        int64_t deadline = tu_now_ns() + 5 * TU_SEC;

        while (atomic_load(calls) < want && tu_now_ns() < deadline)
                tu_sleep_ns(TU_MSEC);
}

START_TEST(test_two_threads_share) {
        struct sigaction dfl = { .sa_handler = SIG_DFL }, want;
        struct sharer sh = { .sig = SIGUSR1 };
        loop_t *loop = tu_loop_new();
        struct rec r;

        /* The default action ends the process: a signal that reached it
         * while a loop still handles SIGUSR1 would end the test. */
        sigemptyset(&dfl.sa_mask);
        ck_assert_int_eq(sigaction(SIGUSR1, &dfl, NULL), 0);
        ck_assert_int_eq(sigaction(SIGUSR1, NULL, &want), 0);

        rec_init(&r, loop);
        ck_assert_int_eq(loop_add_signal_handler(loop, SIGUSR1, rec_cb, &r), 0);
        ck_assert_int_eq(pthread_create(&sh.thread, NULL, sharer_main, &sh), 0);
        ck_assert_int_eq(wait_nonzero(&sh.ready), 1);

        /* Both loops, each in its own thread, get the signal once. */
        ck_assert_int_eq(kill(getpid(), SIGUSR1), 0);
        tu_run_until(loop, &r.count, 1, 5 * TU_SEC);
        wait_calls(&sh.calls, 1);
        tu_run_for(loop, 20 * TU_MSEC);
        ck_assert_int_eq(r.count, 1);
        ck_assert_int_eq(atomic_load(&sh.calls), 1);

        /* The other thread's loop lets go: this one still gets the signal,
         * and the disposition is still the library's. */
        atomic_store(&sh.command, SHARER_REMOVE);
        ck_assert_int_eq(wait_nonzero(&sh.removed), 101);
        ck_assert(is_caught_by_library(SIGUSR1));
        ck_assert_int_eq(kill(getpid(), SIGUSR1), 0);
        tu_run_until(loop, &r.count, 2, 5 * TU_SEC);
        tu_run_for(loop, 20 * TU_MSEC);
        ck_assert_int_eq(r.count, 2);
        ck_assert_int_eq(atomic_load(&sh.calls), 1);

        /* Its loop closes: still ours. */
        atomic_store(&sh.command, SHARER_QUIT);
        ck_assert_int_eq(pthread_join(sh.thread, NULL), 0);
        ck_assert_int_eq(atomic_load(&sh.error), 0);
        ck_assert_int_eq(atomic_load(&sh.wrong_thread), 0);
        ck_assert(is_caught_by_library(SIGUSR1));
        ck_assert_int_eq(raise(SIGUSR1), 0);
        tu_run_until(loop, &r.count, 3, 5 * TU_SEC);
        ck_assert_int_eq(r.count, 3);
        assert_rec_clean(&r);

        /* The last handler in the process goes: SIG_DFL is back. */
        ck_assert_int_eq(loop_remove_signal_handler(loop, SIGUSR1), 1);
        ck_assert(disposition_is(SIGUSR1, &want));
        loop_unref(loop);
}
END_TEST

#define STORM 10000

/* One callback in the storm: what it saw, read by the test's thread. */
struct storm_cb_data {
        const atomic_int *sent;
        atomic_int seen;        /* sent, as the latest call read it */
        atomic_int calls;
};

static int storm_cb(loop_t *loop, int signum, void *userdata) {
        struct storm_cb_data *d = userdata;

        (void) loop;
        (void) signum;
        atomic_fetch_add(&d->calls, 1);
        atomic_store(&d->seen, atomic_load(d->sent));
        return 0;
}

/* The same callbacks as watchers (loop_signal_handler_t): the watcher
 * first, its loop through loop_signal_get_loop(). */
static int storm_w(loop_signal_t *w, int signum, void *userdata) {
        return storm_cb(loop_signal_get_loop(w), signum, userdata);
}

struct storm_loop {
        pthread_t thread;
        struct storm_cb_data handler, watcher;
        atomic_int ready;
        atomic_int quit;
        atomic_int error;
};

static void *storm_loop_main(void *arg) {
        struct storm_loop *sl = arg;
        loop_t *loop = NULL;
        int r = loop_new(&loop);

        /* The asyncio-style handler and a watcher the loop owns. */
        if (r == 0)
                r = loop_add_signal_handler(loop, SIGUSR2, storm_cb, &sl->handler);
        if (r == 0)
                r = loop_add_signal(loop, SIGUSR2, storm_w, &sl->watcher, NULL);
        if (r < 0) {
                atomic_store(&sl->ready, r);
                loop_unref(loop);
                return NULL;
        }
        atomic_store(&sl->ready, 1);
        while (!atomic_load(&sl->quit)) {
                r = loop_run_once(loop, 5 * TU_MSEC);
                if (r < 0) {
                        atomic_store(&sl->error, r);
                        break;
                }
        }
        loop_unref(loop);
        return NULL;
}

struct storm_sender {
        pthread_t thread;
        atomic_int sent;        /* number of the signal about to be sent */
        atomic_int error;
};

static void *storm_sender_main(void *arg) {
        struct storm_sender *s = arg;

        for (int i = 1; i <= STORM; i++) {
                /* Stored before sending: a call that reads N ran after signal N. */
                atomic_store(&s->sent, i);
                if (kill(getpid(), SIGUSR2) != 0) {
                        atomic_store(&s->error, errno);
                        break;
                }
        }
        return NULL;
}

static bool storm_done(struct storm_loop *sl) {
        for (int i = 0; i < 2; i++)
                if (atomic_load(&sl[i].handler.seen) != STORM || atomic_load(&sl[i].watcher.seen) != STORM)
                        return false;
        return true;
}

START_TEST(test_storm_two_loops) {
        struct storm_sender sender = { .sent = 0 };
        struct storm_loop sl[2];
        int64_t deadline;

        for (int i = 0; i < 2; i++) {
                sl[i] = (struct storm_loop) { .ready = 0 };
                sl[i].handler.sent = sl[i].watcher.sent = &sender.sent;
                ck_assert_int_eq(pthread_create(&sl[i].thread, NULL, storm_loop_main, &sl[i]), 0);
                ck_assert_int_eq(wait_nonzero(&sl[i].ready), 1);
        }
        ck_assert_int_eq(pthread_create(&sender.thread, NULL, storm_sender_main, &sender), 0);
        ck_assert_int_eq(pthread_join(sender.thread, NULL), 0);
        ck_assert_int_eq(atomic_load(&sender.error), 0);
        /* Every callback of both loops runs after the last signal. */
        deadline = tu_now_ns() + 20 * TU_SEC;
        while (!storm_done(sl) && tu_now_ns() < deadline)
                tu_sleep_ns(TU_MSEC);
        for (int i = 0; i < 2; i++) {
                atomic_store(&sl[i].quit, 1);
                ck_assert_int_eq(pthread_join(sl[i].thread, NULL), 0);
                ck_assert_int_eq(atomic_load(&sl[i].error), 0);
                ck_assert_int_eq(atomic_load(&sl[i].handler.seen), STORM);
                ck_assert_int_eq(atomic_load(&sl[i].watcher.seen), STORM);
                ck_assert_int_ge(atomic_load(&sl[i].handler.calls), 1);
                ck_assert_int_le(atomic_load(&sl[i].handler.calls), STORM);
                /* Both callbacks of a loop run in the same calls. */
                ck_assert_int_eq(atomic_load(&sl[i].handler.calls), atomic_load(&sl[i].watcher.calls));
        }
        ck_assert(is_previous(SIGUSR2));
        ck_assert_int_eq(prev_count[SIGUSR2], 0);
}
END_TEST

/* Watchers: each callback appends its id to an order log. */
struct order {
        int log[32];
        int n;
        loop_signal_t *remove_self;     /* order_remove_cb: the watcher that removes itself */
        loop_signal_t *remove_other;    /* order_remove_cb: one it removes too */
};

struct order_entry {
        struct order *o;
        int id;
};

static int order_cb(loop_t *loop, int signum, void *userdata) {
        struct order_entry *e = userdata;

        (void) loop;
        if (signum != SIGUSR1)
                return -EPROTO;
        if (e->o->n < (int) ELEMENTS(e->o->log))
                e->o->log[e->o->n] = e->id;
        e->o->n++;
        return 0;
}

static int order_w(loop_signal_t *w, int signum, void *userdata) {
        return order_cb(loop_signal_get_loop(w), signum, userdata);
}

static void assert_order(struct order *o, const int *want, int n) {
        ck_assert_int_eq(o->n, n);
        for (int i = 0; i < n; i++)
                ck_assert_msg(o->log[i] == want[i], "call %d: watcher %d, want %d", i, o->log[i], want[i]);
        o->n = 0;
}

/* Raises SIGUSR1 and runs loop until o has n calls and a little longer. */
static void raise_and_run(loop_t *loop, struct order *o, int n) {
        o->n = 0;
        ck_assert_int_eq(raise(SIGUSR1), 0);
        tu_run_until(loop, &o->n, n, 5 * TU_SEC);
        tu_run_for(loop, 10 * TU_MSEC);
}

START_TEST(test_watchers_in_order) {
        loop_t *loop = tu_loop_new();
        struct order o = { .n = 0 };
        struct order_entry e[6];
        loop_signal_t *w1 = NULL, *w3 = NULL, *w5 = NULL;

        for (int i = 0; i < 6; i++)
                e[i] = (struct order_entry) { .o = &o, .id = i };
        ck_assert_int_eq(loop_add_signal(loop, SIGUSR1, order_w, &e[1], &w1), 0);
        ck_assert_ptr_nonnull(w1);
        ck_assert_int_eq(loop_add_signal_handler(loop, SIGUSR1, order_cb, &e[2]), 0);
        ck_assert_int_eq(loop_add_signal(loop, SIGUSR1, order_w, &e[3], &w3), 0);
        ck_assert_int_eq(loop_add_signal(loop, SIGUSR1, order_w, &e[4], NULL), 0);   /* the loop's */
        ck_assert_int_eq(loop_signal_get_signum(w1), SIGUSR1);
        ck_assert_int_eq(loop_signal_get_enabled(w1), 1);
        /* One descriptor for the loop, however many watchers. */
        ck_assert_uint_eq(fds_watched(loop), 1);

        raise_and_run(loop, &o, 4);
        assert_order(&o, (int[]) { 1, 2, 3, 4 }, 4);

        /* Replacing the asyncio-style handler keeps its place. */
        ck_assert_int_eq(loop_add_signal_handler(loop, SIGUSR1, order_cb, &e[0]), 0);
        raise_and_run(loop, &o, 4);
        assert_order(&o, (int[]) { 1, 0, 3, 4 }, 4);

        /* Disabled: skipped, and the others still run. */
        ck_assert_int_eq(loop_signal_set_enabled(w1, 0), 0);
        ck_assert_int_eq(loop_signal_get_enabled(w1), 0);
        raise_and_run(loop, &o, 3);
        assert_order(&o, (int[]) { 0, 3, 4 }, 3);
        ck_assert_int_eq(loop_signal_set_enabled(w1, 1), 0);
        ck_assert_int_eq(loop_signal_get_enabled(w1), 1);
        raise_and_run(loop, &o, 4);
        assert_order(&o, (int[]) { 1, 0, 3, 4 }, 4);

        /* Disabled watchers are skipped; the loop's own one still runs. */
        ck_assert_int_eq(loop_signal_set_enabled(w1, 0), 0);
        ck_assert_int_eq(loop_signal_set_enabled(w3, 0), 0);
        ck_assert_int_eq(loop_remove_signal_handler(loop, SIGUSR1), 1);
        ck_assert_int_eq(loop_add_signal(loop, SIGUSR1, order_w, &e[5], &w5), 0);
        ck_assert_int_eq(loop_signal_set_enabled(w5, 0), 0);
        raise_and_run(loop, &o, 1);
        /* Only the loop's own watcher 4 is enabled. */
        assert_order(&o, (int[]) { 4 }, 1);
        ck_assert(is_caught_by_library(SIGUSR1));
        ck_assert_int_eq(prev_count[SIGUSR1], 0);

        /* Removing the asyncio-style handler leaves the watchers; adding it
         * again puts it last. */
        ck_assert_int_eq(loop_signal_set_enabled(w1, 1), 0);
        ck_assert_int_eq(loop_signal_set_enabled(w3, 1), 0);
        ck_assert_int_eq(loop_signal_set_enabled(w5, 1), 0);
        ck_assert_int_eq(loop_add_signal_handler(loop, SIGUSR1, order_cb, &e[2]), 0);
        raise_and_run(loop, &o, 5);
        assert_order(&o, (int[]) { 1, 3, 4, 5, 2 }, 5);

        /* Removing one watcher leaves the others; removing twice says 0. */
        ck_assert_int_eq(loop_signal_remove(w3), 1);
        ck_assert_int_eq(loop_signal_remove(w3), 0);
        ck_assert_int_eq(loop_signal_get_signum(w3), SIGUSR1);
        /* A removed watcher cannot be enabled again. */
        ck_assert_int_eq(loop_signal_set_enabled(w3, 1), -ESTALE);
        raise_and_run(loop, &o, 4);
        assert_order(&o, (int[]) { 1, 4, 5, 2 }, 4);
        ck_assert_ptr_null(loop_signal_unref(w3));

        /* Dropping the last reference removes it. */
        ck_assert_ptr_eq(loop_signal_ref(w5), w5);
        ck_assert_ptr_null(loop_signal_unref(w5));
        raise_and_run(loop, &o, 4);
        assert_order(&o, (int[]) { 1, 4, 5, 2 }, 4);
        ck_assert_ptr_null(loop_signal_unref(w5));
        raise_and_run(loop, &o, 3);
        assert_order(&o, (int[]) { 1, 4, 2 }, 3);

        /* The loop's own watcher holds the signal after the others go. */
        ck_assert_int_eq(loop_remove_signal_handler(loop, SIGUSR1), 1);
        ck_assert_int_eq(loop_signal_remove(w1), 1);
        ck_assert(is_caught_by_library(SIGUSR1));
        raise_and_run(loop, &o, 1);
        assert_order(&o, (int[]) { 4 }, 1);

        /* Closing the loop removes and frees it; w1 outlives the loop. */
        ck_assert_int_eq(loop_close(loop), 0);
        ck_assert(is_previous(SIGUSR1));
        ck_assert_uint_eq(prev_count[SIGUSR1], 0);
        ck_assert_int_eq(loop_signal_remove(w1), 0);
        ck_assert_ptr_null(loop_signal_unref(w1));
        loop_unref(loop);
}
END_TEST

static int order_remove_cb(loop_signal_t *w, int signum, void *userdata) {
        struct order_entry *e = userdata;
        struct order *o = e->o;
        loop_signal_t *self = o->remove_self, *other = o->remove_other;

        if (self != w)
                return -EPROTO;
        order_cb(loop_signal_get_loop(w), signum, userdata);
        o->remove_self = o->remove_other = NULL;
        /* Removes the watcher after it, then itself, and frees itself. */
        if (other && loop_signal_remove(other) != 1)
                return -EPROTO;
        if (loop_signal_remove(self) != 1)
                return -EPROTO;
        loop_signal_unref(self);
        return 0;
}

static int order_add_cb(loop_signal_t *w, int signum, void *userdata) {
        struct order_entry *e = userdata;
        loop_t *loop = loop_signal_get_loop(w);

        order_cb(loop, signum, userdata);
        /* Added while the signal is being handled: not called for it. */
        return loop_add_signal(loop, SIGUSR1, order_w, e + 1, NULL);
}

static int count_sig_cb(loop_t *loop, int signum, void *userdata) {
        (void) loop;
        (void) signum;
        (*(int *) userdata)++;
        return 0;
}

/* A watcher the loop owns (ret NULL) reaches itself through the callback's
 * first argument, and its loop through loop_signal_get_loop(). */
struct once {
        loop_t *loop;
        int calls;
        int removed;
};

static int once_cb(loop_signal_t *w, int signum, void *userdata) {
        struct once *o = userdata;

        if (signum != SIGUSR1 || loop_signal_get_loop(w) != o->loop)
                return -EPROTO;
        o->calls++;
        o->removed = loop_signal_remove(w);
        return 0;
}

START_TEST(test_watcher_floating_removes_itself) {
        loop_t *loop = tu_loop_new();
        struct once o = { .loop = loop };
        int count = 0;

        ck_assert_int_eq(loop_add_signal(loop, SIGUSR1, once_cb, &o, NULL), 0);
        ck_assert_int_eq(loop_add_signal_handler(loop, SIGUSR1, count_sig_cb, &count), 0);
        ck_assert_int_eq(raise(SIGUSR1), 0);
        tu_run_until(loop, &count, 1, 5 * TU_SEC);
        ck_assert_int_eq(o.calls, 1);
        ck_assert_int_eq(o.removed, 1);
        ck_assert_int_eq(raise(SIGUSR1), 0);
        tu_run_until(loop, &count, 2, 5 * TU_SEC);
        ck_assert_int_eq(o.calls, 1);
        ck_assert_ptr_null(loop_signal_get_loop(NULL));
        loop_unref(loop);
}
END_TEST

START_TEST(test_watcher_remove_in_callback) {
        loop_t *loop = tu_loop_new();
        struct order o = { .n = 0 };
        struct order_entry e[6];
        struct seen_exception ex = { .calls = 0 };
        loop_signal_t *w1 = NULL, *w2 = NULL, *w3 = NULL, *w4 = NULL;

        for (int i = 0; i < 6; i++)
                e[i] = (struct order_entry) { .o = &o, .id = i };
        ck_assert_int_eq(loop_set_exception_handler(loop, exception_cb, &ex), 0);
        ck_assert_int_eq(loop_add_signal(loop, SIGUSR1, order_w, &e[1], &w1), 0);
        ck_assert_int_eq(loop_add_signal(loop, SIGUSR1, order_remove_cb, &e[2], &w2), 0);
        ck_assert_int_eq(loop_add_signal(loop, SIGUSR1, order_w, &e[3], &w3), 0);
        ck_assert_int_eq(loop_add_signal(loop, SIGUSR1, order_add_cb, &e[4], &w4), 0);
        o.remove_self = w2;
        o.remove_other = w3;

        /* 2 removes 3 (which therefore does not run) and itself; 4 adds 5. */
        raise_and_run(loop, &o, 2);
        assert_order(&o, (int[]) { 1, 2, 4 }, 3);
        ck_assert_int_eq(ex.calls, 0);
        ck_assert_int_eq(loop_signal_remove(w3), 0);
        ck_assert_ptr_null(loop_signal_unref(w3));

        /* The next signal: 4 adds another 5, so 1, 4, 5. */
        raise_and_run(loop, &o, 3);
        assert_order(&o, (int[]) { 1, 4, 5 }, 3);
        ck_assert_int_eq(ex.calls, 0);

        /* A callback that fails is reported; the others still run. */
        ck_assert_int_eq(loop_signal_remove(w4), 1);
        ck_assert_ptr_null(loop_signal_unref(w4));
        ck_assert_int_eq(loop_add_signal_handler(loop, SIGUSR1, order_cb, &e[0]), 0);
        ck_assert_int_eq(raise(SIGUSR2), 0);   /* the fixture's handler: not ours */
        ck_assert_int_eq(loop_add_signal(loop, SIGUSR2, order_w, &e[0], NULL), 0);
        ck_assert_int_eq(raise(SIGUSR2), 0);   /* order_cb refuses SIGUSR2 */
        tu_run_until(loop, &ex.calls, 1, 5 * TU_SEC);
        ck_assert_int_eq(ex.calls, 1);
        ck_assert_int_eq(ex.error, -EPROTO);
        ck_assert_str_eq(ex.message, "Exception in callback");
        raise_and_run(loop, &o, 4);
        assert_order(&o, (int[]) { 1, 5, 5, 0 }, 4);

        ck_assert_ptr_null(loop_signal_unref(w1));
        loop_unref(loop);
        ck_assert(is_previous(SIGUSR1));
        ck_assert(is_previous(SIGUSR2));
        ck_assert_int_eq(prev_count[SIGUSR1], 0);
        ck_assert_int_eq(prev_count[SIGUSR2], 1);
}
END_TEST

static int count_sig_w(loop_signal_t *w, int signum, void *userdata) {
        return count_sig_cb(loop_signal_get_loop(w), signum, userdata);
}

START_TEST(test_loops_per_signal_limit) {
        enum { MAX = 256 };
        loop_t *loops[MAX];
        int n = 0, r, count = 0;

#ifdef ENABLE_KQUEUE
        /* Each loop's kqueue counts the signal for it: no slots, no limit. */
        for (n = 0; n < 80; n++) {
                loops[n] = tu_loop_new();
                ck_assert_int_eq(loop_add_signal(loops[n], SIGHUP, count_sig_w, &count, NULL), 0);
        }
        ck_assert(is_caught_by_library(SIGHUP));
        ck_assert_int_eq(raise(SIGHUP), 0);
        for (int i = 0; i < n; i++) {
                tu_run_until(loops[i], &count, i + 1, 5 * TU_SEC);
                ck_assert_int_eq(count, i + 1);
        }
        for (int i = 0; i < n; i++)
                loop_unref(loops[i]);
        ck_assert(is_previous(SIGHUP));
        ck_assert_int_eq(prev_count[SIGHUP], 0);
        return;
#endif
        /* The documented limit: 64 loops per signal (loop_add_signal(3)). */
        for (;;) {
                ck_assert_int_lt(n, MAX);
                loops[n] = tu_loop_new();
                r = loop_add_signal(loops[n], SIGHUP, count_sig_w, &count, NULL);
                if (r < 0)
                        break;
                n++;
        }
        ck_assert_int_eq(r, -EBUSY);
        ck_assert_int_eq(n, 64);
        /* The refused loop is left as it was; other signals are free. */
        ck_assert_uint_eq(fds_watched(loops[n]), 0);
        ck_assert_int_eq(loop_add_signal_handler(loops[n], SIGHUP, count_sig_cb, &count), -EBUSY);
        ck_assert_int_eq(loop_add_signal_handler(loops[n], SIGUSR2, count_sig_cb, &count), 0);
        ck_assert_int_eq(loop_remove_signal_handler(loops[n], SIGUSR2), 1);
        /* One lets go: there is room. */
        loops[0] = loop_unref(loops[0]);
        ck_assert_int_eq(loop_add_signal(loops[n], SIGHUP, count_sig_w, &count, NULL), 0);
        ck_assert(is_caught_by_library(SIGHUP));
        ck_assert_int_eq(raise(SIGHUP), 0);
        tu_run_until(loops[n], &count, 1, 5 * TU_SEC);
        ck_assert_int_eq(count, 1);
        for (int i = 1; i <= n; i++)
                loop_unref(loops[i]);
        ck_assert(is_previous(SIGHUP));
        ck_assert_int_eq(prev_count[SIGHUP], 0);
}
END_TEST

START_TEST(test_watcher_invalid) {
        static const int bad[] = { 0, -1, INT_MIN, SIGKILL, SIGSTOP, NSIG, NSIG + 1, INT_MAX };
        loop_t *loop = tu_loop_new();
        loop_signal_t *w = NULL;
        int count = 0;

        for (size_t i = 0; i < ELEMENTS(bad); i++)
                ck_assert_int_eq(loop_add_signal(loop, bad[i], count_sig_w, &count, &w), -EINVAL);
        ck_assert_int_eq(loop_add_signal(loop, SIGUSR1, NULL, &count, &w), -EINVAL);
        ck_assert_int_eq(loop_add_signal(NULL, SIGUSR1, count_sig_w, &count, &w), -EINVAL);
        ck_assert_ptr_null(w);
        ck_assert_int_eq(loop_signal_remove(NULL), -EINVAL);
        ck_assert_int_eq(loop_signal_get_signum(NULL), -EINVAL);
        ck_assert_int_eq(loop_signal_set_enabled(NULL, 1), -EINVAL);
        ck_assert_int_eq(loop_signal_get_enabled(NULL), -EINVAL);
        ck_assert_ptr_null(loop_signal_ref(NULL));
        ck_assert_ptr_null(loop_signal_unref(NULL));
        ck_assert(is_previous(SIGUSR1));
        ck_assert_uint_eq(fds_watched(loop), 0);

        /* Disabled, and the only one: the signal stays caught, nothing runs. */
        ck_assert_int_eq(loop_add_signal(loop, SIGUSR1, count_sig_w, &count, &w), 0);
        ck_assert_int_eq(loop_signal_set_enabled(w, 0), 0);
        ck_assert_int_eq(loop_signal_set_enabled(w, 0), 0);
        ck_assert_int_eq(raise(SIGUSR1), 0);
        tu_run_for(loop, 20 * TU_MSEC);
        ck_assert_int_eq(count, 0);
        ck_assert_int_eq(prev_count[SIGUSR1], 0);
        ck_assert(is_caught_by_library(SIGUSR1));
        ck_assert_int_eq(loop_signal_set_enabled(w, 1), 0);

        /* A closed loop. */
        ck_assert_int_eq(loop_close(loop), 0);
        ck_assert(is_previous(SIGUSR1));
        ck_assert_int_eq(loop_add_signal(loop, SIGUSR1, count_sig_w, &count, NULL), -ESHUTDOWN);
        ck_assert_int_eq(loop_signal_remove(w), -ESHUTDOWN);
        ck_assert_int_eq(loop_signal_set_enabled(w, 0), -ESHUTDOWN);
        ck_assert_int_eq(loop_signal_get_enabled(w), 1);
        ck_assert_int_eq(loop_signal_get_signum(w), SIGUSR1);
        ck_assert_ptr_null(loop_signal_unref(w));
        loop_unref(loop);
        ck_assert_int_eq(count, 0);
}
END_TEST

/* In the child: bit set per failed check, so the parent can say which. */
static int child_shared_checks(loop_t *a, loop_t *b, loop_signal_t *w) {
        loop_t *fresh = NULL;
        int fail = 0, count = 0;

        if (loop_signal_remove(w) != -ECHILD)
                fail |= 1 << 0;
        if (loop_signal_set_enabled(w, 0) != -ECHILD)
                fail |= 1 << 1;
        if (loop_add_signal(a, SIGUSR1, count_sig_w, &count, NULL) != -ECHILD)
                fail |= 1 << 2;
        /* Both of the parent's loops are dead here: every saved disposition is back. */
        if (!is_previous(SIGUSR1) || !is_previous(SIGUSR2))
                fail |= 1 << 3;
        prev_count[SIGUSR1] = 0;
        if (raise(SIGUSR1) != 0 || prev_count[SIGUSR1] != 1)
                fail |= 1 << 4;
        /* A loop of the child's own may take the signal. */
        if (loop_new(&fresh) < 0)
                return fail | 1 << 5;
        if (loop_add_signal(fresh, SIGUSR1, count_sig_w, &count, NULL) != 0 || raise(SIGUSR1) != 0)
                fail |= 1 << 6;
        for (int i = 0; i < 500 && count == 0; i++)
                loop_run_once(fresh, 10 * TU_MSEC);
        if (count != 1)
                fail |= 1 << 7;
        loop_unref(fresh);
        if (!is_previous(SIGUSR1))
                fail |= 1 << 8;
        /* Letting go of what was inherited touches nothing of the parent's. */
        loop_signal_unref(w);
        loop_unref(a);
        loop_unref(b);
        return fail;
}

START_TEST(test_fork_shared) {
        loop_t *a = tu_loop_new(), *b = tu_loop_new();
        loop_signal_t *w = NULL;
        int ca = 0, cb = 0, c2 = 0, status;
        pid_t pid;

        ck_assert_int_eq(loop_add_signal_handler(a, SIGUSR1, count_sig_cb, &ca), 0);
        ck_assert_int_eq(loop_add_signal(b, SIGUSR1, count_sig_w, &cb, &w), 0);
        ck_assert_int_eq(loop_add_signal(b, SIGUSR2, count_sig_w, &c2, NULL), 0);
        pid = fork();
        ck_assert_int_ge(pid, 0);
        if (pid == 0)
                _exit(child_shared_checks(a, b, w));
        ck_assert_int_eq(waitpid(pid, &status, 0), pid);
        ck_assert(WIFEXITED(status));
        ck_assert_msg(WEXITSTATUS(status) == 0, "child failed checks 0x%x", WEXITSTATUS(status));

        /* The parent is unaffected: both loops still get the signal. */
        ck_assert(is_caught_by_library(SIGUSR1));
        ck_assert(is_caught_by_library(SIGUSR2));
        ck_assert_int_eq(raise(SIGUSR1), 0);
        tu_run_until(a, &ca, 1, 5 * TU_SEC);
        tu_run_until(b, &cb, 1, 5 * TU_SEC);
        ck_assert_int_eq(ca, 1);
        ck_assert_int_eq(cb, 1);
        ck_assert_int_eq(c2, 0);
        ck_assert_int_eq(prev_count[SIGUSR1], 0);
        loop_unref(a);
        ck_assert(is_caught_by_library(SIGUSR1));
        ck_assert_ptr_null(loop_signal_unref(w));
        ck_assert(is_previous(SIGUSR1));
        ck_assert(is_caught_by_library(SIGUSR2));
        loop_unref(b);
        ck_assert(is_previous(SIGUSR2));
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
        tcase_add_test(tc, test_two_threads_share);
        tcase_add_test(tc, test_storm_two_loops);
        tcase_add_test(tc, test_watchers_in_order);
        tcase_add_test(tc, test_watcher_remove_in_callback);
        tcase_add_test(tc, test_watcher_floating_removes_itself);

        tc = tu_tcase(s, "registration");
        tcase_add_checked_fixture(tc, setup, teardown);
        tcase_add_test(tc, test_replace);
        tcase_add_test(tc, test_remove);
        tcase_add_test(tc, test_remove_from_callback);
        tcase_add_test(tc, test_restores_previous_disposition);
        tcase_add_test(tc, test_other_loop_shares);
        tcase_add_test(tc, test_loops_per_signal_limit);
        tcase_add_test(tc, test_watcher_invalid);
        tcase_add_test(tc, test_invalid);
        tcase_add_test(tc, test_closed_loop);
        tcase_add_test(tc, test_close_restores);
        tcase_add_test(tc, test_fork);
        tcase_add_test(tc, test_fork_shared);
        return s;
}

int main(void) {
        return tu_run_suite(signal_suite());
}
