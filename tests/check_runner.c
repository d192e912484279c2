/* SPDX-License-Identifier: MIT */
/*
 * Runners (asyncio.Runner) and loop_run (asyncio.run): factories, main's
 * return value, the thread's current loop during and after a run, lazy
 * creation, reuse, closing, and the errors (-EBUSY inside a running loop,
 * -ESHUTDOWN once closed, -EINVAL for NULL arguments).
 *
 * Under CK_FORK=no every test shares one thread, so the fixture puts the
 * global policy and the thread's current loop back to their defaults.
 */
#include <pthread.h>
#include <unistd.h>
#ifndef _WIN32
#include <sys/wait.h>
#endif

#include "testutil.h"

/* ---- fixture --------------------------------------------------------- */

static void reset_globals(void)
{
        ck_assert_int_eq(loop_set_event_loop_policy(NULL), 0);
        ck_assert_int_eq(loop_thread_set_loop(NULL), 0);
}

/* ---- a loop factory that counts its calls ---------------------------- */

struct factory_state {
        int calls;
        int error;              /* < 0: fail with it */
        int give_null;          /* succeed without a loop */
        const char *selector;   /* NULL: loop_new */
        void *seen_userdata;
};

static int factory(loop_t **ret, void *userdata)
{
        struct factory_state *fs = userdata;
        loop_selector_t *sel = NULL;
        int r;

        fs->calls++;
        fs->seen_userdata = userdata;
        if (fs->error < 0)
                return fs->error;
        if (fs->give_null) {
                *ret = NULL;
                return 0;
        }
        if (!fs->selector)
                return loop_new(ret);
        r = loop_selector_new(fs->selector, &sel);
        if (r < 0)
                return r;
        r = loop_selector_loop_new(sel, ret);
        loop_selector_unref(sel);
        return r;
}

static int have_selector(const char *name)
{
        const char *const *names = loop_selector_names();

        for (; names && *names; names++)
                if (strcmp(*names, name) == 0)
                        return 1;
        return 0;
}

/* ---- a main callback that records what it sees ------------------------ */

struct main_state {
        /* what main does */
        int result;             /* main's return value */
        int stop;               /* call loop_stop before returning */
        int stop_later;         /* schedule loop_stop for the next iteration */
        int schedule_count;     /* call_soon(count) before returning */
        loop_runner_t *runner;  /* the runner running main */
        int try_close;          /* loop_runner_close(runner) from main */
        int try_run;            /* loop_runner_run(runner, ...) from main */
        loop_runner_t *other;   /* try loop_runner_run on it */
        int nested_run;         /* try loop_run */
        struct factory_state *nested_factory;

        /* what main saw */
        int calls;
        loop_t *loop;           /* compared, never dereferenced after the run */
        int running, closed;
        int thread_r, thread_is_loop;
        int event_r, event_is_loop;
        int running_r, running_is_loop;
        char selector[16];
        int close_r, runner_run_r, other_run_r, nested_r;
        int current_kept;       /* still our loop after the refused calls */
        struct main_state *inner;
        int count;              /* the call_soon scheduled by main */
        int stopped;
};

static int main_cb(loop_t *loop, void *userdata);

/*
 * A refused loop_runner_run that still queued its main would leave the
 * loop a callback whose state lived in the refused call's (dead) stack
 * frame. To see that happen deterministically rather than by chance,
 * main fills the dead stack below it with pointers to stray_main: a
 * stray callback then calls stray_main, which counts.
 */
static int stray_calls;

static int stray_main(loop_t *loop, void *userdata)
{
        (void) loop;
        (void) userdata;
        stray_calls++;
        return 0;
}

static __attribute__((noinline)) void scrub_dead_stack(void)
{
        volatile uintptr_t area[1024];
        size_t i;

        for (i = 0; i < sizeof(area) / sizeof(area[0]); i++)
                area[i] = (uintptr_t) stray_main;
}

static int stop_cb(loop_t *loop, void *userdata)
{
        struct main_state *st = userdata;

        st->stopped++;
        return loop_stop(loop);
}

static int main_cb(loop_t *loop, void *userdata)
{
        struct main_state *st = userdata;
        loop_t *l = NULL;
        const char *name;

        st->calls++;
        st->loop = loop;
        st->running = loop_is_running(loop);
        st->closed = loop_is_closed(loop);
        st->thread_r = loop_thread_get_loop(&l);
        st->thread_is_loop = st->thread_r == 0 && l == loop;
        l = loop_unref(l);
        st->event_r = loop_get_event_loop(&l);
        st->event_is_loop = st->event_r == 0 && l == loop;
        l = loop_unref(l);
        st->running_r = loop_get_running_loop(&l);
        st->running_is_loop = st->running_r == 0 && l == loop;
        l = loop_unref(l);
        name = loop_selector_name(loop_get_selector(loop));
        snprintf(st->selector, sizeof(st->selector), "%s", name ? name : "");

        if (st->try_close)
                st->close_r = loop_runner_close(st->runner);
        if (st->try_run)
                st->runner_run_r = loop_runner_run(st->runner, main_cb, st->inner);
        if (st->other)
                st->other_run_r = loop_runner_run(st->other, main_cb, st->inner);
        if (st->nested_run)
                st->nested_r = loop_run(st->nested_factory ? factory : NULL, st->nested_factory,
                                        main_cb, st->inner);
        if (st->try_run || st->other || st->nested_run) {
                scrub_dead_stack();
                st->current_kept = loop_thread_get_loop(&l) == 0 && l == loop;
                l = loop_unref(l);
        }
        if (st->schedule_count && loop_call_soon(loop, tu_count_cb, &st->count, NULL) < 0)
                return -EPROTO;
        if (st->stop_later && loop_call_soon(loop, stop_cb, st, NULL) < 0)
                return -EPROTO;
        if (st->stop)
                loop_stop(loop);
        return st->result;
}

/* The checks every main that ran in a runner's loop must pass. */
static void assert_main_saw_runner_loop(const struct main_state *st)
{
        ck_assert_int_eq(st->calls, 1);
        ck_assert_ptr_ne(st->loop, NULL);
        ck_assert_int_eq(st->running, 1);
        ck_assert_int_eq(st->closed, 0);
        ck_assert_int_eq(st->thread_r, 0);
        ck_assert_int_eq(st->thread_is_loop, 1);
        ck_assert_int_eq(st->event_r, 0);
        ck_assert_int_eq(st->event_is_loop, 1);
        ck_assert_int_eq(st->running_r, 0);
        ck_assert_int_eq(st->running_is_loop, 1);
}

/* ---- loop_run ---------------------------------------------------------- */

START_TEST(test_run_null_factory)
{
        int fds = tu_count_fds();
        struct main_state st = { .result = 42, .stop = 1 };
        loop_t *l = NULL;

        ck_assert_int_ge(fds, 0);
        ck_assert_int_eq(loop_run(NULL, NULL, main_cb, &st), 42);
        assert_main_saw_runner_loop(&st);
        /* Nothing was current before, nothing is after; the loop is gone. */
        ck_assert_int_eq(loop_thread_get_loop(&l), -ENOENT);
        ck_assert_int_eq(loop_get_running_loop(&l), -ENOENT);
        ck_assert_int_eq(tu_count_fds(), fds);

        /* loop_run can be called again: a new runner, a new loop. */
        st = (struct main_state) { .result = 0, .stop = 1 };
        ck_assert_int_eq(loop_run(NULL, NULL, main_cb, &st), 0);
        assert_main_saw_runner_loop(&st);
        ck_assert_int_eq(tu_count_fds(), fds);
}
END_TEST

/* main's value comes back only once something stops the loop. */
START_TEST(test_run_returns_after_stop)
{
        struct main_state st = { .result = 7, .stop_later = 1, .schedule_count = 1 };

        ck_assert_int_eq(loop_run(NULL, NULL, main_cb, &st), 7);
        ck_assert_int_eq(st.calls, 1);
        /* The loop went on after main returned: its callbacks ran. */
        ck_assert_int_eq(st.count, 1);
        ck_assert_int_eq(st.stopped, 1);
}
END_TEST

START_TEST(test_run_main_error)
{
        struct main_state st = { .result = -EIO, .stop_later = 1, .schedule_count = 1 };
        struct main_state st2 = { .result = 5, .stop = 1 };
        loop_runner_t *r = NULL;
        loop_t *l = NULL;

        ck_assert_int_eq(loop_run(NULL, NULL, main_cb, &st), -EIO);
        ck_assert_int_eq(st.calls, 1);
        /* Stopped at once: what main scheduled never ran. */
        ck_assert_int_eq(st.count, 0);
        ck_assert_int_eq(st.stopped, 0);
        ck_assert_int_eq(loop_thread_get_loop(&l), -ENOENT);

        /* The same through a runner, which stays usable afterwards. */
        ck_assert_int_eq(loop_runner_new(NULL, NULL, &r), 0);
        st = (struct main_state) { .result = -ENOTCONN, .stop_later = 1, .schedule_count = 1 };
        ck_assert_int_eq(loop_runner_run(r, main_cb, &st), -ENOTCONN);
        ck_assert_int_eq(st.calls, 1);
        ck_assert_int_eq(st.count, 0);
        ck_assert_int_eq(st.stopped, 0);
        ck_assert_int_eq(loop_runner_run(r, main_cb, &st2), 5);
        assert_main_saw_runner_loop(&st2);
        ck_assert_int_eq(loop_runner_close(r), 0);
        loop_runner_unref(r);
}
END_TEST

/* ---- factories --------------------------------------------------------- */

START_TEST(test_custom_factory)
{
        struct factory_state fs = { .selector = "poll" };
        struct main_state st = { .result = 3, .stop = 1 };
        loop_runner_t *r = NULL;
        loop_t *l = NULL;

        if (!have_selector("poll"))
                fs.selector = loop_selector_names()[0];
        ck_assert_int_eq(loop_run(factory, &fs, main_cb, &st), 3);
        ck_assert_int_eq(fs.calls, 1);
        ck_assert_ptr_eq(fs.seen_userdata, &fs);
        assert_main_saw_runner_loop(&st);
        ck_assert_str_eq(st.selector, fs.selector);

        /* A runner calls its factory once, on first use, however often it runs. */
        fs.calls = 0;
        ck_assert_int_eq(loop_runner_new(factory, &fs, &r), 0);
        ck_assert_int_eq(fs.calls, 0);
        st = (struct main_state) { .result = 1, .stop = 1 };
        ck_assert_int_eq(loop_runner_run(r, main_cb, &st), 1);
        ck_assert_int_eq(fs.calls, 1);
        ck_assert_str_eq(st.selector, fs.selector);
        st = (struct main_state) { .result = 2, .stop = 1 };
        ck_assert_int_eq(loop_runner_run(r, main_cb, &st), 2);
        ck_assert_int_eq(fs.calls, 1);
        ck_assert_int_eq(loop_runner_get_loop(r, &l), 0);
        ck_assert_ptr_eq(l, st.loop);
        ck_assert_int_eq(fs.calls, 1);
        ck_assert_str_eq(tu_selector_name(l), fs.selector);
        loop_unref(l);
        ck_assert_int_eq(loop_runner_close(r), 0);
        ck_assert_int_eq(fs.calls, 1);
        loop_runner_unref(r);
}
END_TEST

START_TEST(test_factory_error)
{
        struct factory_state fs = { .error = -EMFILE };
        struct main_state st = { .stop = 1 };
        loop_t *prev = tu_loop_new(), *l = prev, *cur = NULL;
        loop_runner_t *r = NULL;

        ck_assert_int_eq(loop_thread_set_loop(prev), 0);
        ck_assert_int_eq(loop_run(factory, &fs, main_cb, &st), -EMFILE);
        ck_assert_int_eq(fs.calls, 1);
        ck_assert_int_eq(st.calls, 0);

        ck_assert_int_eq(loop_runner_new(factory, &fs, &r), 0);
        ck_assert_int_eq(loop_runner_get_loop(r, &l), -EMFILE);
        ck_assert_ptr_eq(l, prev); /* untouched */
        ck_assert_int_eq(loop_runner_run(r, main_cb, &st), -EMFILE);
        ck_assert_int_eq(st.calls, 0);
        ck_assert_int_ge(fs.calls, 3);
        ck_assert_int_eq(loop_runner_close(r), 0);
        loop_runner_unref(r);

        /* The thread's current loop is still the one from before. */
        ck_assert_int_eq(loop_thread_get_loop(&cur), 0);
        ck_assert_ptr_eq(cur, prev);
        loop_unref(cur);
        tu_assert_usable(prev);
        loop_unref(prev);
}
END_TEST

START_TEST(test_factory_null_loop)
{
        struct factory_state fs = { .give_null = 1 };
        struct main_state st = { .stop = 1 };
        loop_runner_t *r = NULL;
        loop_t *l = NULL;

        ck_assert_int_eq(loop_run(factory, &fs, main_cb, &st), -ENOENT);
        ck_assert_int_eq(fs.calls, 1);
        ck_assert_int_eq(st.calls, 0);

        ck_assert_int_eq(loop_runner_new(factory, &fs, &r), 0);
        ck_assert_int_eq(loop_runner_get_loop(r, &l), -ENOENT);
        ck_assert_ptr_eq(l, NULL);
        ck_assert_int_eq(loop_runner_run(r, main_cb, &st), -ENOENT);
        ck_assert_int_eq(st.calls, 0);
        ck_assert_int_eq(loop_thread_get_loop(&l), -ENOENT);
        ck_assert_int_eq(loop_runner_close(r), 0);
        loop_runner_unref(r);
}
END_TEST

/* ---- the thread's current loop ------------------------------------------ */

START_TEST(test_runner_current_loop)
{
        loop_t *prev = tu_loop_new(), *l = NULL, *cur = NULL;
        struct main_state st = { .result = 9, .stop = 1 };
        loop_runner_t *r = NULL;

        ck_assert_int_eq(loop_thread_set_loop(prev), 0);
        ck_assert_int_eq(loop_runner_new(NULL, NULL, &r), 0);
        ck_assert_int_eq(loop_runner_run(r, main_cb, &st), 9);
        assert_main_saw_runner_loop(&st);
        ck_assert_ptr_ne(st.loop, prev);

        /* Until the runner closes, its loop stays the current one. */
        ck_assert_int_eq(loop_runner_get_loop(r, &l), 0);
        ck_assert_ptr_eq(l, st.loop);
        ck_assert_int_eq(loop_thread_get_loop(&cur), 0);
        ck_assert_ptr_eq(cur, l);
        loop_unref(cur);
        ck_assert_int_eq(loop_get_event_loop(&cur), 0);
        ck_assert_ptr_eq(cur, l);
        loop_unref(cur);

        /* Closed: the previous current loop is back, the runner's is closed. */
        ck_assert_int_eq(loop_runner_close(r), 0);
        ck_assert_int_eq(loop_is_closed(l), 1);
        ck_assert_int_eq(loop_is_closed(prev), 0);
        ck_assert_int_eq(loop_thread_get_loop(&cur), 0);
        ck_assert_ptr_eq(cur, prev);
        loop_unref(cur);
        loop_unref(l);
        loop_runner_unref(r);

        /* loop_run puts the previous loop back as well. */
        st = (struct main_state) { .result = 0, .stop = 1 };
        ck_assert_int_eq(loop_run(NULL, NULL, main_cb, &st), 0);
        assert_main_saw_runner_loop(&st);
        ck_assert_ptr_ne(st.loop, prev);
        ck_assert_int_eq(loop_thread_get_loop(&cur), 0);
        ck_assert_ptr_eq(cur, prev);
        loop_unref(cur);
        tu_assert_usable(prev);
        loop_unref(prev);
}
END_TEST

/* A loop installed after the runner's is left alone by close. */
START_TEST(test_runner_close_keeps_newer_current)
{
        loop_t *prev = tu_loop_new(), *newer = tu_loop_new(), *l = NULL, *cur = NULL;
        loop_runner_t *r = NULL;

        ck_assert_int_eq(loop_thread_set_loop(prev), 0);
        ck_assert_int_eq(loop_runner_new(NULL, NULL, &r), 0);
        ck_assert_int_eq(loop_runner_get_loop(r, &l), 0);
        ck_assert_int_eq(loop_thread_set_loop(newer), 0);
        ck_assert_int_eq(loop_runner_close(r), 0);
        ck_assert_int_eq(loop_is_closed(l), 1);
        ck_assert_int_eq(loop_thread_get_loop(&cur), 0);
        ck_assert_ptr_eq(cur, newer);
        loop_unref(cur);
        loop_unref(l);
        loop_runner_unref(r);
        loop_unref(newer);
        loop_unref(prev);
}
END_TEST

/* ---- lazy creation, reuse, close ---------------------------------------- */

START_TEST(test_runner_get_loop_lazy)
{
        struct factory_state fs = { 0 };
        struct main_state st = { .result = 4, .stop = 1 };
        loop_runner_t *r = NULL;
        loop_t *l1 = NULL, *l2 = NULL, *cur = NULL;

        ck_assert_int_eq(loop_runner_new(factory, &fs, &r), 0);
        ck_assert_int_eq(fs.calls, 0);
        ck_assert_int_eq(loop_thread_get_loop(&cur), -ENOENT);

        ck_assert_int_eq(loop_runner_get_loop(r, &l1), 0);
        ck_assert_ptr_ne(l1, NULL);
        ck_assert_int_eq(fs.calls, 1);
        ck_assert_int_eq(loop_thread_get_loop(&cur), 0);
        ck_assert_ptr_eq(cur, l1);
        loop_unref(cur);
        ck_assert_int_eq(loop_runner_get_loop(r, &l2), 0);
        ck_assert_ptr_eq(l2, l1);
        ck_assert_int_eq(fs.calls, 1);
        /* Both were new references: dropping them leaves the runner's. */
        loop_unref(l2);
        tu_assert_usable(l1);

        ck_assert_int_eq(loop_runner_run(r, main_cb, &st), 4);
        assert_main_saw_runner_loop(&st);
        ck_assert_ptr_eq(st.loop, l1);
        ck_assert_int_eq(fs.calls, 1);

        ck_assert_int_eq(loop_runner_close(r), 0);
        ck_assert_int_eq(loop_is_closed(l1), 1);
        ck_assert_int_eq(loop_thread_get_loop(&cur), -ENOENT);
        loop_unref(l1);
        loop_runner_unref(r);
}
END_TEST

START_TEST(test_runner_run_twice)
{
        struct main_state one = { .result = 1, .stop = 1 };
        struct main_state two = { .result = 2, .stop_later = 1, .schedule_count = 1 };
        loop_runner_t *r = NULL;

        ck_assert_int_eq(loop_runner_new(NULL, NULL, &r), 0);
        ck_assert_int_eq(loop_runner_run(r, main_cb, &one), 1);
        assert_main_saw_runner_loop(&one);
        ck_assert_int_eq(loop_runner_run(r, main_cb, &two), 2);
        assert_main_saw_runner_loop(&two);
        ck_assert_int_eq(two.count, 1);
        ck_assert_int_eq(two.stopped, 1);
        ck_assert_int_eq(one.calls, 1); /* the first main did not run again */
        ck_assert_ptr_eq(two.loop, one.loop);
        ck_assert_int_eq(loop_runner_close(r), 0);
        loop_runner_unref(r);
}
END_TEST

START_TEST(test_runner_close_idempotent)
{
        struct factory_state fs = { 0 };
        struct main_state st = { .stop = 1 };
        loop_runner_t *r = NULL;
        loop_t *l = NULL;

        /* Never used: closing creates nothing. */
        ck_assert_int_eq(loop_runner_new(factory, &fs, &r), 0);
        ck_assert_int_eq(loop_runner_close(r), 0);
        ck_assert_int_eq(loop_runner_close(r), 0);
        ck_assert_int_eq(fs.calls, 0);
        ck_assert_int_eq(loop_runner_get_loop(r, &l), -ESHUTDOWN);
        ck_assert_ptr_eq(l, NULL);
        ck_assert_int_eq(loop_runner_run(r, main_cb, &st), -ESHUTDOWN);
        ck_assert_int_eq(st.calls, 0);
        ck_assert_int_eq(fs.calls, 0);
        loop_runner_unref(r);

        /* Used, then closed twice. */
        ck_assert_int_eq(loop_runner_new(factory, &fs, &r), 0);
        ck_assert_int_eq(loop_runner_run(r, main_cb, &st), 0);
        ck_assert_int_eq(st.calls, 1);
        ck_assert_int_eq(loop_runner_close(r), 0);
        ck_assert_int_eq(loop_runner_close(r), 0);
        ck_assert_int_eq(loop_runner_run(r, main_cb, &st), -ESHUTDOWN);
        ck_assert_int_eq(loop_runner_get_loop(r, &l), -ESHUTDOWN);
        ck_assert_int_eq(st.calls, 1);
        ck_assert_int_eq(fs.calls, 1);
        loop_runner_unref(r);
}
END_TEST

START_TEST(test_runner_unref_closes)
{
        loop_t *prev = tu_loop_new(), *l = NULL, *cur = NULL;
        loop_runner_t *r = NULL;

        ck_assert_int_eq(loop_thread_set_loop(prev), 0);
        ck_assert_int_eq(loop_runner_new(NULL, NULL, &r), 0);
        ck_assert_int_eq(loop_runner_get_loop(r, &l), 0);
        ck_assert_ptr_eq(loop_runner_ref(r), r);
        ck_assert_ptr_eq(loop_runner_unref(r), NULL);
        ck_assert_int_eq(loop_is_closed(l), 0);
        tu_assert_usable(l);
        /* The last reference closes the runner (and so its loop). */
        ck_assert_ptr_eq(loop_runner_unref(r), NULL);
        ck_assert_int_eq(loop_is_closed(l), 1);
        ck_assert_int_eq(loop_thread_get_loop(&cur), 0);
        ck_assert_ptr_eq(cur, prev);
        loop_unref(cur);
        loop_unref(l);
        loop_unref(prev);
}
END_TEST

/* ---- -EBUSY inside a running loop ---------------------------------------- */

START_TEST(test_runner_close_inside_main)
{
        struct main_state st = { .result = 6, .stop = 1, .try_close = 1 };
        loop_runner_t *r = NULL;
        loop_t *l = NULL;

        ck_assert_int_eq(loop_runner_new(NULL, NULL, &r), 0);
        st.runner = r;
        ck_assert_int_eq(loop_runner_run(r, main_cb, &st), 6);
        ck_assert_int_eq(st.calls, 1);
        ck_assert_int_eq(st.close_r, -EBUSY);
        /* The refused close changed nothing: same loop, still open. */
        ck_assert_int_eq(loop_runner_get_loop(r, &l), 0);
        ck_assert_ptr_eq(l, st.loop);
        ck_assert_int_eq(loop_is_closed(l), 0);
        ck_assert_int_eq(loop_runner_close(r), 0);
        ck_assert_int_eq(loop_is_closed(l), 1);
        loop_unref(l);
        loop_runner_unref(r);
}
END_TEST

/* loop_run (asyncio.run) refuses to start inside a running loop. */
START_TEST(test_run_inside_running_loop)
{
        struct factory_state fs = { 0 };
        struct main_state inner = { .stop = 1 };
        struct main_state st = { .result = 8, .stop_later = 1, .nested_run = 1 };
        loop_runner_t *r = NULL;

        st.inner = &inner;
        st.nested_factory = &fs;
        ck_assert_int_eq(loop_runner_new(NULL, NULL, &r), 0);
        ck_assert_int_eq(loop_runner_run(r, main_cb, &st), 8);
        ck_assert_int_eq(st.calls, 1);
        ck_assert_int_eq(st.stopped, 1);
        ck_assert_int_eq(st.nested_r, -EBUSY);
        ck_assert_int_eq(fs.calls, 0);
        ck_assert_int_eq(inner.calls, 0);
        ck_assert_int_eq(st.current_kept, 1);
        ck_assert_int_eq(loop_runner_close(r), 0);
        loop_runner_unref(r);
}
END_TEST

/*
 * A refused loop_runner_run must leave nothing behind: a main scheduled
 * before the refusal would run later, in a later iteration of the loop,
 * with the refused call's state long gone. The scenarios run in a child
 * of their own so that such a stray callback fails the test instead of
 * crashing the whole suite under CK_FORK=no.
 */
struct isolated_result {
        int outer_r, calls, stopped, refused_r, inner_calls, stray_calls;
        int later_r, later_calls, close_r;
};

static void run_isolated(void (*scenario)(struct isolated_result *), struct isolated_result *res)
{
#ifdef _WIN32
        /* No fork: the scenario runs in this process (a stray callback
         * that crashes fails the whole suite rather than one case). */
        memset(res, 0, sizeof(*res));
        scenario(res);
#else
        int p[2], status = 0;
        ssize_t n;
        pid_t pid;

        ck_assert_int_eq(pipe(p), 0);
        fflush(NULL);
        pid = fork();
        ck_assert_int_ge(pid, 0);
        if (pid == 0) {
                struct isolated_result mine;

                close(p[0]);
                memset(&mine, 0, sizeof(mine));
                scenario(&mine);
                n = write(p[1], &mine, sizeof(mine));
                _exit(n == (ssize_t) sizeof(mine) ? 0 : 1);
        }
        ck_assert_int_eq(close(p[1]), 0);
        n = read(p[0], res, sizeof(*res));
        ck_assert_int_eq(close(p[0]), 0);
        ck_assert_int_eq(waitpid(pid, &status, 0), pid);
        ck_assert_msg(!WIFSIGNALED(status),
                      "scenario killed by signal %d (a stray callback ran?)", WTERMSIG(status));
        ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0 && n == (ssize_t) sizeof(*res),
                      "scenario failed (status 0x%x, %zd bytes)", status, n);
#endif
}

static void nested_same_runner(struct isolated_result *res)
{
        struct main_state inner = { .stop = 1 };
        /* stop_later: one more iteration runs after main, where anything
         * the refused call left behind would run. */
        struct main_state st = { .result = 8, .stop_later = 1, .try_run = 1 };
        loop_runner_t *r = NULL;

        if (loop_runner_new(NULL, NULL, &r) < 0)
                _exit(2);
        st.runner = r;
        st.inner = &inner;
        res->outer_r = loop_runner_run(r, main_cb, &st);
        res->calls = st.calls;
        res->stopped = st.stopped;
        res->refused_r = st.runner_run_r;
        res->inner_calls = inner.calls;
        res->stray_calls = stray_calls;
        res->close_r = loop_runner_close(r);
        loop_runner_unref(r);
}

START_TEST(test_runner_run_inside_its_loop)
{
        struct isolated_result res;

        run_isolated(nested_same_runner, &res);
        ck_assert_int_eq(res.outer_r, 8);
        ck_assert_int_eq(res.calls, 1);
        ck_assert_int_eq(res.refused_r, -EBUSY);
        ck_assert_int_eq(res.stopped, 1);
        ck_assert_msg(res.inner_calls == 0 && res.stray_calls == 0,
                      "a refused loop_runner_run left its main queued: it ran later "
                      "(%d times as itself, %d times from a dead stack frame)",
                      res.inner_calls, res.stray_calls);
        ck_assert_int_eq(res.close_r, 0);
}
END_TEST

static void nested_other_runner(struct isolated_result *res)
{
        struct main_state inner = { .stop = 1 };
        struct main_state later = { .result = 12, .stop = 1 };
        struct main_state st = { .result = 0, .stop_later = 1 };
        loop_runner_t *r = NULL, *other = NULL;

        if (loop_runner_new(NULL, NULL, &r) < 0 || loop_runner_new(NULL, NULL, &other) < 0)
                _exit(2);
        st.inner = &inner;
        st.other = other;
        res->outer_r = loop_runner_run(r, main_cb, &st);
        res->calls = st.calls;
        res->stopped = st.stopped;
        res->refused_r = st.other_run_r;
        res->close_r = loop_runner_close(r);
        /* Now the other runner may run: only the main it is given now. */
        res->later_r = loop_runner_run(other, main_cb, &later);
        res->later_calls = later.calls;
        res->inner_calls = inner.calls;
        res->stray_calls = stray_calls;
        if (loop_runner_close(other) < 0)
                res->close_r = -EPROTO;
        loop_runner_unref(other);
        loop_runner_unref(r);
}

/* Another runner cannot run its loop while this one runs in the thread. */
START_TEST(test_other_runner_inside_running_loop)
{
        struct isolated_result res;

        run_isolated(nested_other_runner, &res);
        ck_assert_int_eq(res.outer_r, 0);
        ck_assert_int_eq(res.calls, 1);
        ck_assert_int_eq(res.stopped, 1);
        ck_assert_int_eq(res.refused_r, -EBUSY);
        ck_assert_int_eq(res.close_r, 0);
        ck_assert_int_eq(res.later_r, 12);
        ck_assert_int_eq(res.later_calls, 1);
        ck_assert_msg(res.inner_calls == 0 && res.stray_calls == 0,
                      "a refused loop_runner_run left its main queued: it ran later "
                      "(%d times as itself, %d times from a dead stack frame)",
                      res.inner_calls, res.stray_calls);
}
END_TEST

/*
 * asyncio.Runner.run checks for a running loop before _lazy_init: a
 * refused run creates nothing and leaves the thread's current loop alone.
 */
START_TEST(test_refused_run_changes_nothing)
{
        struct factory_state fs = { 0 };
        struct main_state inner = { .stop = 1 };
        struct main_state st = { .result = 0, .stop = 1 };
        loop_runner_t *r = NULL, *other = NULL;

        st.inner = &inner;
        ck_assert_int_eq(loop_runner_new(NULL, NULL, &r), 0);
        ck_assert_int_eq(loop_runner_new(factory, &fs, &other), 0);
        st.other = other;
        ck_assert_int_eq(loop_runner_run(r, main_cb, &st), 0);
        /* Released before the checks, so that a failure leaks nothing. */
        ck_assert_int_eq(loop_runner_close(other), 0);
        ck_assert_int_eq(loop_runner_close(r), 0);
        loop_runner_unref(other);
        loop_runner_unref(r);
        ck_assert_int_eq(st.other_run_r, -EBUSY);
        ck_assert_int_eq(inner.calls, 0);
        ck_assert_msg(st.current_kept == 1,
                      "a refused loop_runner_run replaced the thread's current loop");
        ck_assert_msg(fs.calls == 0, "a refused loop_runner_run created a loop");
}
END_TEST

/* ---- NULL arguments ---------------------------------------------------- */

START_TEST(test_null_arguments)
{
        struct factory_state fs = { 0 };
        loop_runner_t *r = NULL;
        loop_t *l = NULL;

        ck_assert_int_eq(loop_runner_new(NULL, NULL, NULL), -EINVAL);
        ck_assert_int_eq(loop_runner_new(factory, &fs, NULL), -EINVAL);
        ck_assert_int_eq(loop_runner_get_loop(NULL, &l), -EINVAL);
        ck_assert_int_eq(loop_runner_run(NULL, main_cb, NULL), -EINVAL);
        ck_assert_int_eq(loop_runner_close(NULL), -EINVAL);
        ck_assert_ptr_eq(loop_runner_ref(NULL), NULL);
        ck_assert_ptr_eq(loop_runner_unref(NULL), NULL);
        ck_assert_int_eq(loop_run(NULL, NULL, NULL, NULL), -EINVAL);
        ck_assert_int_eq(loop_run(factory, &fs, NULL, NULL), -EINVAL);
        ck_assert_int_eq(fs.calls, 0);

        ck_assert_int_eq(loop_runner_new(factory, &fs, &r), 0);
        ck_assert_ptr_ne(r, NULL);
        ck_assert_int_eq(loop_runner_get_loop(r, NULL), -EINVAL);
        ck_assert_int_eq(loop_runner_run(r, NULL, NULL), -EINVAL);
        ck_assert_int_eq(fs.calls, 0); /* refused before creating anything */
        ck_assert_ptr_eq(l, NULL);
        ck_assert_int_eq(loop_thread_get_loop(&l), -ENOENT);
        ck_assert_int_eq(loop_runner_close(r), 0);
        loop_runner_unref(r);
}
END_TEST

/* ---- in another thread ---------------------------------------------------- */

struct thread_run {
        struct main_state st;
        int run_r, after_r;
};

static void *run_thread_main(void *arg)
{
        struct thread_run *tr = arg;
        loop_t *l = NULL;

        tr->run_r = loop_run(NULL, NULL, main_cb, &tr->st);
        tr->after_r = loop_thread_get_loop(&l);
        loop_unref(l);
        return NULL;
}

START_TEST(test_run_in_thread)
{
        struct thread_run tr = { .st = { .result = 11, .stop = 1 } };
        pthread_t t;

        ck_assert_int_eq(pthread_create(&t, NULL, run_thread_main, &tr), 0);
        ck_assert_int_eq(pthread_join(t, NULL), 0);
        ck_assert_int_eq(tr.run_r, 11);
        /* Outside the main thread too, the runner's loop is the current one
         * (where the default policy would otherwise give -ENOENT). */
        assert_main_saw_runner_loop(&tr.st);
        ck_assert_int_eq(tr.after_r, -ENOENT);
}
END_TEST

/* ---- run_until_complete and the executor at close ------------------------ */

static int resolve_cb(loop_t *loop, void *userdata) {
        return loop_future_set_result(userdata, (void *) (intptr_t) 42, NULL);
}

START_TEST(test_runner_run_until_complete) {
        loop_runner_t *runner;
        loop_t *loop, *other;
        loop_future_t *f, *g;
        void *result = NULL;

        ck_assert_int_eq(loop_runner_new(NULL, NULL, &runner), 0);
        ck_assert_int_eq(loop_runner_get_loop(runner, &loop), 0);
        ck_assert_int_eq(loop_create_future(loop, &f), 0);
        ck_assert_int_eq(loop_call_later(loop, 0.01, resolve_cb, f, NULL), 0);
        ck_assert_int_eq(loop_runner_run_until_complete(runner, f), 0);
        ck_assert_int_eq(loop_future_result(f, &result), 0);
        ck_assert_ptr_eq(result, (void *) (intptr_t) 42);

        /* A future of another loop is refused. */
        ck_assert_int_eq(loop_new(&other), 0);
        ck_assert_int_eq(loop_create_future(other, &g), 0);
        ck_assert_int_eq(loop_runner_run_until_complete(runner, g), -EXDEV);
        ck_assert_int_eq(loop_runner_run_until_complete(runner, NULL), -EINVAL);
        ck_assert_int_eq(loop_runner_run_until_complete(NULL, f), -EINVAL);

        loop_future_unref(g);
        loop_close(other);
        loop_unref(other);
        loop_future_unref(f);
        loop_unref(loop);
        ck_assert_int_eq(loop_runner_close(runner), 0);
        ck_assert_int_eq(loop_runner_run_until_complete(runner, f), -ESHUTDOWN);
        loop_runner_unref(runner);
}
END_TEST

static int jobs_done;

static int slow_job(void *arg, void **result) {
        usleep(20 * 1000);
        __atomic_add_fetch(&jobs_done, 1, __ATOMIC_SEQ_CST);
        return 0;
}

/* asyncio.Runner.close() shuts the default executor down before closing the
 * loop: queued work runs to the end instead of being dropped. */
START_TEST(test_runner_close_waits_for_executor) {
        loop_runner_t *runner;
        loop_t *loop;
        loop_future_t *f[3];

        __atomic_store_n(&jobs_done, 0, __ATOMIC_SEQ_CST);
        ck_assert_int_eq(loop_runner_new(NULL, NULL, &runner), 0);
        ck_assert_int_eq(loop_runner_get_loop(runner, &loop), 0);
        ck_assert_int_eq(loop_set_executor_max_workers(loop, 1), 0);
        for (int i = 0; i < 3; i++)
                ck_assert_int_eq(loop_run_in_executor(loop, slow_job, NULL, &f[i]), 0);
        ck_assert_int_eq(loop_runner_close(runner), 0);
        ck_assert_int_eq(__atomic_load_n(&jobs_done, __ATOMIC_SEQ_CST), 3);
        for (int i = 0; i < 3; i++)
                loop_future_unref(f[i]);
        loop_unref(loop);
        loop_runner_unref(runner);
}
END_TEST

static Suite *runner_suite(void)
{
        Suite *s = suite_create("runner");
        TCase *tc;

        tc = tu_tcase(s, "run");
        tcase_add_checked_fixture(tc, reset_globals, reset_globals);
        tcase_add_test(tc, test_run_null_factory);
        tcase_add_test(tc, test_run_returns_after_stop);
        tcase_add_test(tc, test_run_main_error);
        tcase_add_test(tc, test_run_in_thread);

        tc = tu_tcase(s, "factory");
        tcase_add_checked_fixture(tc, reset_globals, reset_globals);
        tcase_add_test(tc, test_custom_factory);
        tcase_add_test(tc, test_factory_error);
        tcase_add_test(tc, test_factory_null_loop);

        tc = tu_tcase(s, "current");
        tcase_add_checked_fixture(tc, reset_globals, reset_globals);
        tcase_add_test(tc, test_runner_current_loop);
        tcase_add_test(tc, test_runner_close_keeps_newer_current);

        tc = tu_tcase(s, "lifecycle");
        tcase_add_checked_fixture(tc, reset_globals, reset_globals);
        tcase_add_test(tc, test_runner_get_loop_lazy);
        tcase_add_test(tc, test_runner_run_twice);
        tcase_add_test(tc, test_runner_close_idempotent);
        tcase_add_test(tc, test_runner_unref_closes);

        tc = tu_tcase(s, "errors");
        tcase_add_checked_fixture(tc, reset_globals, reset_globals);
        tcase_add_test(tc, test_runner_close_inside_main);
        tcase_add_test(tc, test_run_inside_running_loop);
        tcase_add_test(tc, test_runner_run_inside_its_loop);
        tcase_add_test(tc, test_other_runner_inside_running_loop);
        tcase_add_test(tc, test_refused_run_changes_nothing);
        tcase_add_test(tc, test_null_arguments);
        tcase_add_test(tc, test_runner_run_until_complete);
        tcase_add_test(tc, test_runner_close_waits_for_executor);
        return s;
}

int main(void)
{
        return tu_run_suite(runner_suite());
}
