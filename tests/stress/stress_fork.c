/* SPDX-License-Identifier: MIT */
/*
 * make check-stress: fork() inside callbacks.
 *
 * NFORKS times, in turn from a reader's callback, a timer's callback (the
 * loop then runs under loop_run_forever), a call_soon callback and an
 * executor job's done callback, the running loop's thread forks. The child,
 * still inside the callback of the inherited (running) loop:
 * - finds every call on the inherited loop failing with -ECHILD, except
 *   loop_close() and loop_unref() (loop_new(3), "fork(2)");
 * - closes it and drops its reference, without touching the parent's
 *   kernel state;
 * - creates a loop of its own with loop_new() (the same backend: the
 *   environment is inherited), runs a timer and a reader on it, and
 *   _exit()s with 0, or with the number of the first check that failed.
 * The parent waits for the child in the callback and goes on: after all
 * the forks its reader, timers, call_soon, threadsafe posts and executor
 * still work, and it holds the descriptors it held before.
 *
 * A second test asks loop_is_closed() and loop_is_running() in the child:
 * loop_new(3) says they answer -ECHILD there (issue 18, defect 5: up to
 * commit 13fdbac they answered 0 and 1, and this test failed; the fix was
 * in the lead's working tree, not committed, at 19:25 UTC).
 *
 * Limits reached: 200 forks per backend (50 from each kind of callback).
 */
#include <pthread.h>
#include <stdatomic.h>
#include <sys/wait.h>

#include "stress.h"

#define NFORKS 200

enum kind { FROM_READER, FROM_TIMER, FROM_SOON, FROM_DONE, KINDS };
static const char *const kind_name[KINDS] = { "reader", "timer", "call_soon", "executor done callback" };

/* The child's checks, numbered: its exit status names the first that failed. */
static const char *const check_name[] = {
        [0] = "ok",
        [1] = "loop_call_soon() (the function) on the inherited loop is not -ECHILD",
        [2] = "loop_call_soon() (inline) on the inherited loop is not -ECHILD",
        [3] = "loop_call_later_ns() on the inherited loop is not -ECHILD",
        [4] = "loop_add_reader() on the inherited loop is not -ECHILD",
        [5] = "loop_remove_reader() on the inherited loop is not -ECHILD",
        [6] = "loop_run_once() on the inherited loop is not -ECHILD",
        [7] = "loop_stop() on the inherited loop is not -ECHILD",
        [8] = "loop_call_soon_threadsafe() on the inherited loop is not -ECHILD",
        [9] = "loop_run_in_executor() on the inherited loop is not -ECHILD",
        [10] = "loop_add_signal_handler() on the inherited loop is not -ECHILD",
        [11] = "loop_create_future() on the inherited loop is not -ECHILD",
        [12] = "loop_add_writer() on the inherited loop is not -ECHILD",
        [13] = "loop_close() on the inherited loop failed",
        [14] = "loop_new() in the child failed",
        [15] = "the child's own loop: scheduling failed",
        [16] = "the child's own loop: loop_run_once() failed",
        [17] = "the child's own loop: the timer or the reader did not run",
        [18] = "loop_is_closed() on the inherited loop is not -ECHILD",
        [19] = "loop_is_running() on the inherited loop is not -ECHILD",
};
#define NCHECKS ((int) (sizeof(check_name) / sizeof(check_name[0])))

struct state {
        int p[2];               /* the parent's reader watches p[0] */
        int forks;
        int failed;
        int first_failure;      /* the child's exit status, or 128 + signal */
        enum kind first_kind;
        int queries;            /* test_inherited_queries: check 18 and 19 too */
        int fired[KINDS];
};

static int nop_cb(loop_t *loop, void *userdata) {
        (void) loop;
        (void) userdata;
        return 0;
}

static int nop_io_cb(loop_t *loop, int fd, void *userdata) {
        (void) loop;
        (void) fd;
        (void) userdata;
        return 0;
}

static int nop_signal_cb(loop_t *loop, int signum, void *userdata) {
        (void) loop;
        (void) signum;
        (void) userdata;
        return 0;
}

static int nop_fn(void *arg, void **result) {
        (void) arg;
        (void) result;
        return 0;
}

static int child_reader_cb(loop_t *loop, int fd, void *userdata) {
        (void) loop;
        tu_drain(fd);
        (*(int *) userdata)++;
        return 0;
}

/* The child: no ck_assert here (it is not Check's process); exit codes. */
static int child_checks(loop_t *inherited, const struct state *st) {
        loop_t *own = NULL;
        loop_future_t *f = NULL;
        int ran = 0, read = 0, p[2];
        int64_t deadline;

        if ((loop_call_soon)(inherited, nop_cb, NULL, NULL) != -ECHILD)
                return 1;
        if (loop_call_soon(inherited, nop_cb, NULL, NULL) != -ECHILD)
                return 2;
        if (loop_call_later_ns(inherited, TU_MSEC, nop_cb, NULL, NULL) != -ECHILD)
                return 3;
        if (loop_add_reader(inherited, st->p[0], nop_io_cb, NULL) != -ECHILD)
                return 4;
        if (loop_remove_reader(inherited, st->p[0]) != -ECHILD)
                return 5;
        if (loop_run_once(inherited, 0) != -ECHILD)
                return 6;
        if (loop_stop(inherited) != -ECHILD)
                return 7;
        if (loop_call_soon_threadsafe(inherited, nop_cb, NULL, NULL) != -ECHILD)
                return 8;
        if (loop_run_in_executor(inherited, nop_fn, NULL, &f) != -ECHILD)
                return 9;
        if (loop_add_signal_handler(inherited, SIGUSR2, nop_signal_cb, NULL) != -ECHILD)
                return 10;
        if (loop_create_future(inherited, &f) != -ECHILD)
                return 11;
        if (loop_add_writer(inherited, st->p[1], nop_io_cb, NULL) != -ECHILD)
                return 12;
        if (st->queries && loop_is_closed(inherited) != -ECHILD)
                return 18;
        if (st->queries && loop_is_running(inherited) != -ECHILD)
                return 19;
        if (loop_close(inherited) != 0)
                return 13;
        /* The test's reference: the parent's copy keeps its own. */
        loop_unref(inherited);

        if (loop_new(&own) != 0)
                return 14;
        if (pipe2(p, O_NONBLOCK | O_CLOEXEC) < 0)
                return 15;
        if (loop_call_later_ns(own, TU_MSEC, tu_count_cb, &ran, NULL) != 0 ||
            loop_add_reader(own, p[0], child_reader_cb, &read) != 0 || write(p[1], "x", 1) != 1)
                return 15;
        deadline = tu_now_ns() + 5 * TU_SEC;
        while ((ran == 0 || read == 0) && tu_now_ns() < deadline)
                if (loop_run_once(own, 10 * TU_MSEC) < 0)
                        return 16;
        if (ran != 1 || read != 1)
                return 17;
        loop_remove_reader(own, p[0]);
        loop_unref(own);
        close(p[0]);
        close(p[1]);
        return 0;
}

/* Forks; the child never comes back. The parent waits for it. */
static void fork_here(loop_t *loop, struct state *st, enum kind kind) {
        pid_t pid;
        int status;

        st->fired[kind]++;
        fflush(NULL);
        pid = fork();
        if (pid < 0) {
                st->failed++;
                return;
        }
        if (pid == 0) {
                alarm(10); /* st_watchdog's handler is inherited */
                _exit(child_checks(loop, st));
        }
        st->forks++;
        while (waitpid(pid, &status, 0) < 0)
                if (errno != EINTR) {
                        status = -1;
                        break;
                }
        if (status != 0) {
                st->failed++;
                if (!st->first_failure) {
                        st->first_failure = WIFEXITED(status) ? WEXITSTATUS(status)
                                          : WIFSIGNALED(status) ? 128 + WTERMSIG(status) : 255;
                        st->first_kind = kind;
                }
        }
}

static int on_readable(loop_t *loop, int fd, void *userdata) {
        tu_drain(fd);
        fork_here(loop, userdata, FROM_READER);
        return 0;
}

static int on_timer(loop_t *loop, void *userdata) {
        fork_here(loop, userdata, FROM_TIMER);
        return loop_stop(loop);
}

static int on_soon(loop_t *loop, void *userdata) {
        fork_here(loop, userdata, FROM_SOON);
        return 0;
}

static int on_done(loop_future_t *f, void *userdata) {
        fork_here(loop_future_get_loop(f), userdata, FROM_DONE);
        return 0;
}

static int job_fn(void *arg, void **result) {
        (void) arg;
        *result = NULL;
        return 0;
}

static void run_forks(int queries) {
        struct state st = { .queries = queries };
        loop_t *loop = tu_loop_new();
        uint64_t fds_before;
        int nforks = queries ? 8 : NFORKS;
        int count = 0;

        tu_pipe(st.p);
        ck_assert_int_eq(loop_add_reader(loop, st.p[0], on_readable, &st), 0);
        ck_assert_int_eq(loop_set_executor_max_workers(loop, 2), 0);
        fds_before = st_fds(loop);
        st_watchdog(100, "forks inside callbacks");
        for (int i = 0; i < nforks; i++) {
                enum kind kind = (enum kind) (i % KINDS);
                int want = st.fired[kind] + 1;
                loop_future_t *f = NULL;
                int64_t deadline = tu_now_ns() + 10 * TU_SEC;

                switch (kind) {
                case FROM_READER:
                        tu_write_byte(st.p[1]);
                        break;
                case FROM_TIMER:
                        ck_assert_int_eq(loop_call_later_ns(loop, 100 * TU_USEC, on_timer, &st, NULL), 0);
                        ck_assert_int_eq(loop_run_forever(loop), 0);
                        break;
                case FROM_SOON:
                        ck_assert_int_eq(loop_call_soon(loop, on_soon, &st, NULL), 0);
                        break;
                case FROM_DONE:
                        ck_assert_int_eq(loop_run_in_executor(loop, job_fn, NULL, &f), 0);
                        ck_assert_int_eq(loop_future_add_done_callback(f, on_done, &st), 0);
                        break;
                default:
                        break;
                }
                while (st.fired[kind] < want && tu_now_ns() < deadline)
                        ck_assert_int_ge(loop_run_once(loop, 10 * TU_MSEC), 0);
                ck_assert_msg(st.fired[kind] == want, "fork %d: the %s callback did not run", i, kind_name[kind]);
                loop_future_unref(f);
        }
        st_watchdog(0, NULL);
        st_note("%d forks inside callbacks (%d reader, %d timer, %d call_soon, %d done callback), %d children failed",
                st.forks, st.fired[FROM_READER], st.fired[FROM_TIMER], st.fired[FROM_SOON], st.fired[FROM_DONE],
                st.failed);
        ck_assert_msg(st.failed == 0, "%d of %d children failed; the first (forked from a %s callback): %s (%d)",
                      st.failed, st.forks,
                      kind_name[st.first_kind],
                      st.first_failure < NCHECKS ? check_name[st.first_failure] : "killed by a signal or unknown",
                      st.first_failure);
        ck_assert_int_eq(st.forks, nforks);

        /* The parent goes on undisturbed. */
        st_watchdog(30, "the parent's loop after the forks");
        ck_assert_int_eq(loop_is_closed(loop), 0);
        ck_assert_uint_eq(st_fds(loop), fds_before);
        ck_assert_int_eq(loop_remove_reader(loop, st.p[0]), 1);
        ck_assert_int_eq(loop_add_reader(loop, st.p[0], tu_io_count_cb, &count), 0);
        tu_write_byte(st.p[1]);
        tu_run_until(loop, &count, 1, 5 * TU_SEC);
        ck_assert_int_ge(count, 1);
        tu_drain(st.p[0]);
        count = 0;
        ck_assert_int_eq(loop_call_later_ns(loop, TU_MSEC, tu_count_cb, &count, NULL), 0);
        ck_assert_int_eq(loop_call_soon_threadsafe(loop, tu_count_cb, &count, NULL), 0);
        tu_run_until(loop, &count, 2, 5 * TU_SEC);
        ck_assert_int_eq(count, 2);
        {
                loop_future_t *f = NULL;

                ck_assert_int_eq(loop_run_in_executor(loop, job_fn, NULL, &f), 0);
                ck_assert_int_eq(loop_run_until_complete(loop, f), 0);
                ck_assert_int_eq(loop_future_error(f), 0);
                loop_future_unref(f);
        }
        tu_assert_usable(loop);
        st_watchdog(0, NULL);
        ck_assert_int_eq(loop_remove_reader(loop, st.p[0]), 1);
        loop_unref(loop);
        tu_close_pair(st.p);
}

START_TEST(test_fork_in_callbacks) {
        run_forks(0);
}
END_TEST

/* loop_new(3): loop_is_closed() and loop_is_running() answer -ECHILD in a child. */
START_TEST(test_inherited_queries) {
        run_forks(1);
}
END_TEST

int main(void) {
        Suite *s = suite_create("stress_fork");
        TCase *tc = st_tcase(s, "fork_in_callbacks", ST_TCASE_TIMEOUT);

        tcase_add_test(tc, test_fork_in_callbacks);
        tc = st_tcase(s, "inherited_queries", ST_TCASE_TIMEOUT);
        tcase_add_test(tc, test_inherited_queries);
        return tu_run_suite(s);
}
