/* SPDX-License-Identifier: MIT */
/*
 * make check-stress: a descriptor closed behind the loop's back (issue 18,
 * defect 3), on every backend.
 *
 * loop_add_reader(3) makes "remove before closing" a precondition; when it
 * is broken, the loop is held to what the page's "Closing a watched
 * descriptor" promises: where the loop finds out (the backend reports the
 * number closed, events come from a file the number no longer names, or a
 * callback returned -EBADF for a closed descriptor), it calls the exception
 * handler once with ctx->fd set to that number and ctx->error to -EBADF,
 * drops the dead registration (a later loop_remove_reader/writer returns
 * 0) and goes on blocking normally. It never spins: over a 200 ms window
 * closed by a timer, with loop_run_once(loop, -1) (which blocks until the
 * timer), the loop runs fewer than MAX_ITERATIONS iterations
 * (loop_get_metrics); a loop_run_once that does not return is caught by
 * the watchdog. The callbacks behave like real ones: a reader drains, a
 * writer fills, and a failed read or write raises its error (-EBADF).
 *
 * The cases, for readers and the same for writers (whose file is made
 * unwritable by filling the pipe, and writable again by draining it):
 * closed       reader on fd N, close(N), nothing else. The loop may not
 *              find out (epoll forgets a closed file by itself; io_uring's
 *              poll keeps it open, but nothing happens to it), so at most one
 *              report, and exactly one where the kernel says so (poll's
 *              POLLNVAL, select's EBADF). No callback, no spin.
 * closed_dup   reader on N, dup(N) kept open, close(N), then the file turns
 *              ready through its peer: one report, no spin, before and after
 *              the report. No callback for the stale file on poll and
 *              select; at most one on epoll and io_uring, which watch the
 *              file, not the number (that run's -EBADF is how epoll finds
 *              out).
 * reused       reader on N, dup(N) kept, close(N), a new pipe takes number
 *              N, loop_add_reader(N) again for the new file (at once, or
 *              after the loop ran a while in between): the old file's
 *              readiness never runs a callback, the new file's does; at
 *              most one report, about N.
 *
 * Before commits 35588e4 and fc66350, 6 of the 8 tests failed on every
 * backend: epoll, poll and select spun (up to 200,000 iterations in 200
 * ms), io_uring ran the new callback for the old file's readiness and never
 * reported. Since, all pass on every backend.
 */
#include "stress.h"

#define WINDOW (200 * TU_MSEC)
#define MAX_ITERATIONS 50
#define MAX_REPORTS 8

/* The loop's reports; the callbacks' own exceptions are counted apart. */
struct reports {
        int n;
        int raised;             /* "Exception in callback": a callback returned -EBADF */
        int fd[MAX_REPORTS];
        int error[MAX_REPORTS];
        char message[MAX_REPORTS][96];
        int fd_expected;
        int raised_wrong;       /* a callback's exception with another fd or error */
};

static void on_exception(loop_t *loop, const struct loop_exception_context *ctx, void *userdata) {
        struct reports *r = userdata;

        (void) loop;
        /* loop_add_reader(3) documents this message for a callback's error. */
        if (strcmp(ctx->message, "Exception in callback") == 0) {
                if (ctx->fd != r->fd_expected || ctx->error != -EBADF)
                        r->raised_wrong++;
                r->raised++;
                return;
        }
        if (r->n < MAX_REPORTS) {
                r->fd[r->n] = ctx->fd;
                r->error[r->n] = ctx->error;
                snprintf(r->message[r->n], sizeof(r->message[0]), "%s", ctx->message);
        }
        r->n++;
}

/*
 * A reader drains its pipe, a writer fills it (or it would run in every
 * iteration), as real callbacks do, and like them it raises the error of
 * a failed read or write (-EBADF on a closed descriptor): on epoll and
 * io_uring, which watch the file rather than the number, that error is one
 * way the loop finds out (loop_add_reader(3), "Closing a watched
 * descriptor").
 */
struct watcher {
        int calls;
        int writer;
};

static int on_ready(loop_t *loop, int fd, void *userdata) {
        struct watcher *w = userdata;
        static char buf[4096];
        ssize_t n;

        (void) loop;
        w->calls++;
        if (w->writer)
                while ((n = write(fd, buf, sizeof(buf))) > 0)
                        ;
        else
                while ((n = read(fd, buf, sizeof(buf))) > 0)
                        ;
        return n < 0 && errno != EAGAIN ? -errno : 0;
}

static int on_window_end(loop_t *loop, void *userdata) {
        (void) loop;
        *(int *) userdata = 1;
        return 0;
}

/*
 * Runs the loop, blocking as it pleases, until a timer WINDOW from now;
 * returns the number of iterations that took.
 */
static uint64_t run_window(loop_t *loop, const char *what) {
        uint64_t before = st_iterations(loop);
        int64_t deadline = tu_now_ns() + 2 * TU_SEC;
        int done = 0;

        ck_assert_int_eq(loop_call_later_ns(loop, WINDOW, on_window_end, &done, NULL), 0);
        st_watchdog(10, what);
        while (!done && tu_now_ns() < deadline)
                ck_assert_int_ge(loop_run_once(loop, -1), 0);
        st_watchdog(0, NULL);
        ck_assert_msg(done, "%s: the 200 ms timer did not fire within 2 s", what);
        return st_iterations(loop) - before;
}

static void assert_no_spin(loop_t *loop, const char *what) {
        uint64_t iters = run_window(loop, what);

        st_note("%s: %" PRIu64 " iterations in 200 ms", what, iters);
        ck_assert_msg(iters < MAX_ITERATIONS, "%s: the loop spins: %" PRIu64 " iterations in 200 ms", what, iters);
}

static void assert_reports(const struct reports *r, int fd, int min, int max, const char *what) {
        ck_assert_msg(r->n >= min && r->n <= max, "%s: %d reports to the exception handler, want %d..%d%s%s", what,
                      r->n, min, max, r->n ? "; the first: " : "", r->n ? r->message[0] : "");
        for (int i = 0; i < r->n && i < MAX_REPORTS; i++) {
                ck_assert_msg(r->fd[i] == fd, "%s: report %d (%s) is about fd %d, not %d", what, i, r->message[i],
                              r->fd[i], fd);
                ck_assert_msg(r->error[i] == -EBADF, "%s: report %d (%s) has error %d (%s), not -EBADF", what, i,
                              r->message[i], r->error[i], loop_strerror(r->error[i]));
        }
}

/* Moves fd to number want (which must be free), returns want. */
static int move_to(int fd, int want) {
        if (fd == want)
                return fd;
        ck_assert_int_eq(dup2(fd, want), want);
        ck_assert_int_eq(fcntl(want, F_SETFD, FD_CLOEXEC), 0);
        ck_assert_int_eq(close(fd), 0);
        return want;
}

static int kernel_reports_closed(loop_t *loop) {
        return tu_selector_is(loop, "poll") || tu_selector_is(loop, "select");
}

static int add_watch(loop_t *loop, int writer, int fd, struct watcher *w) {
        return writer ? loop_add_writer(loop, fd, on_ready, w) : loop_add_reader(loop, fd, on_ready, w);
}

static int remove_watch(loop_t *loop, int writer, int fd) {
        return writer ? loop_remove_writer(loop, fd) : loop_remove_reader(loop, fd);
}

/*
 * A pipe whose watched end (the read end for a reader, the write end for a
 * writer) is not ready: p[0] reads, p[1] writes; returns the watched end.
 */
static int quiet_pipe(int p[2], int writer) {
        tu_pipe(p);
        if (writer)
                tu_fill(p[1]);
        return writer ? p[1] : p[0];
}

/* Makes the file behind a quiet pipe ready for its watcher. */
static void make_ready(int p[2], int writer) {
        if (writer)
                tu_drain(p[0]);
        else
                tu_write_byte(p[1]);
}

/*
 * How often a stale file's readiness may run its callback: never where the
 * kernel reports the number closed (poll, select); once on epoll and
 * io_uring, which watch the file: that run's -EBADF may be how the loop
 * finds out (loop_add_reader(3), "Closing a watched descriptor").
 */
static int max_stale_calls(loop_t *loop) {
        return kernel_reports_closed(loop) ? 0 : 1;
}

static void assert_stale_calls(loop_t *loop, const struct reports *r, const struct watcher *w, const char *what) {
        ck_assert_msg(w->calls <= max_stale_calls(loop), "%s: the callback ran %d times for the stale file", what,
                      w->calls);
        ck_assert_int_le(r->raised, w->calls);
        ck_assert_int_eq(r->raised_wrong, 0);
}

static void test_closed(int writer) {
        loop_t *loop = tu_loop_new();
        struct reports rep = { 0 };
        struct watcher w = { .writer = writer };
        const char *what = writer ? "writer on a closed fd" : "reader on a closed fd";
        uint64_t fds;
        int p[2], n;

        ck_assert_int_eq(loop_set_exception_handler(loop, on_exception, &rep), 0);
        n = quiet_pipe(p, writer);
        rep.fd_expected = n;
        ck_assert_int_eq(add_watch(loop, writer, n, &w), 0);
        tu_assert_usable(loop); /* registered with the kernel */
        fds = st_fds(loop);
        ck_assert_int_eq(close(n), 0);
        if (writer)
                p[1] = -1;
        else
                p[0] = -1;

        assert_no_spin(loop, what);
        st_note("%s: %d reports, %d callbacks", what, rep.n, w.calls);
        assert_reports(&rep, n, kernel_reports_closed(loop) ? 1 : 0, 1, what);
        assert_stale_calls(loop, &rep, &w, what);
        if (rep.n) {
                /* Dropped, as if removed. */
                ck_assert_uint_eq(st_fds(loop), fds - 1);
                ck_assert_int_eq(remove_watch(loop, writer, n), 0);
        }
        assert_no_spin(loop, what);
        assert_reports(&rep, n, 0, 1, what);
        assert_stale_calls(loop, &rep, &w, what);
        tu_assert_usable(loop);
        loop_unref(loop);
        tu_close_pair(p);
}

static void test_closed_dup(int writer) {
        loop_t *loop = tu_loop_new();
        struct reports rep = { 0 };
        struct watcher w = { .writer = writer };
        const char *what = writer ? "writer on a closed fd whose file lives on and turns writable"
                                  : "reader on a closed fd whose file lives on and turns readable";
        uint64_t fds;
        int p[2], n, d, calls;

        ck_assert_int_eq(loop_set_exception_handler(loop, on_exception, &rep), 0);
        n = quiet_pipe(p, writer);
        rep.fd_expected = n;
        ck_assert_int_eq(add_watch(loop, writer, n, &w), 0);
        tu_assert_usable(loop);
        fds = st_fds(loop);
        d = dup(n);
        ck_assert_int_ge(d, 0);
        ck_assert_int_eq(close(n), 0);
        if (writer)
                p[1] = d;
        else
                p[0] = d;
        make_ready(p, writer);

        assert_no_spin(loop, what);
        st_note("%s: %d reports, %d callbacks", what, rep.n, w.calls);
        assert_reports(&rep, n, 1, 1, what);
        assert_stale_calls(loop, &rep, &w, what);
        ck_assert_uint_eq(st_fds(loop), fds - 1);
        ck_assert_int_eq(remove_watch(loop, writer, n), 0);
        /* Still ready, no longer watched: still no spin, no second report. */
        calls = w.calls;
        assert_no_spin(loop, what);
        assert_reports(&rep, n, 1, 1, what);
        ck_assert_int_eq(w.calls, calls);
        tu_assert_usable(loop);
        loop_unref(loop);
        tu_close_pair(p);
}

/*
 * The number is reused by a new file and watched again; run_between: the
 * loop runs a window between the close and the new loop_add_*.
 */
static void test_reused(int writer, int run_between) {
        loop_t *loop = tu_loop_new();
        struct reports rep = { 0 };
        struct watcher old_w = { .writer = writer }, new_w = { .writer = writer };
        char what[160];
        int p[2], q[2], n, d;

        snprintf(what, sizeof(what), "%s on fd N closed, N reused by a new pipe and watched again%s",
                 writer ? "writer" : "reader", run_between ? " after a while" : " at once");
        ck_assert_int_eq(loop_set_exception_handler(loop, on_exception, &rep), 0);
        n = quiet_pipe(p, writer);
        rep.fd_expected = n;
        ck_assert_int_eq(add_watch(loop, writer, n, &old_w), 0);
        tu_assert_usable(loop);
        d = dup(n);
        ck_assert_int_ge(d, 0);
        ck_assert_int_eq(close(n), 0);
        if (writer)
                p[1] = d;
        else
                p[0] = d;
        if (run_between) {
                uint64_t iters = run_window(loop, what);

                ck_assert_msg(iters < MAX_ITERATIONS, "%s: the loop spins before the reuse: %" PRIu64
                              " iterations in 200 ms", what, iters);
        }

        /* The new file gets number N (the lowest free one, most likely). */
        tu_pipe(q);
        if (q[!writer] == n) {
                /* The other end took it: out of the way first. */
                int o = fcntl(n, F_DUPFD_CLOEXEC, n + 1);

                ck_assert_int_gt(o, n);
                ck_assert_int_eq(close(n), 0);
                q[!writer] = o;
        }
        q[writer] = move_to(q[writer], n);
        if (writer)
                tu_fill(q[1]);
        ck_assert_int_eq(add_watch(loop, writer, n, &new_w), 0);
        make_ready(p, writer); /* the old file, alive in d */

        assert_no_spin(loop, what);
        st_note("%s: %d reports; callbacks: %d old, %d new (the new file is not ready yet)", what, rep.n,
                old_w.calls, new_w.calls);
        ck_assert_msg(old_w.calls == 0, "%s: the old callback ran %d times", what, old_w.calls);
        ck_assert_msg(new_w.calls == 0, "%s: the new callback ran %d times for the old file's readiness", what,
                      new_w.calls);
        assert_reports(&rep, n, 0, 1, what);
        ck_assert_int_eq(rep.raised, 0);

        /* The new file turns ready: its callback runs. */
        make_ready(q, writer);
        st_watchdog(10, what);
        tu_run_until(loop, &new_w.calls, 1, 2 * TU_SEC);
        st_watchdog(0, NULL);
        ck_assert_msg(new_w.calls >= 1, "%s: the new file's readiness did not run the callback", what);
        /* Drained (or filled) again: quiet, while the old file stays ready. */
        new_w.calls = 0;
        assert_no_spin(loop, what);
        ck_assert_msg(new_w.calls == 0, "%s: the new callback ran %d times for the old file's readiness", what,
                      new_w.calls);
        ck_assert_int_eq(old_w.calls, 0);
        assert_reports(&rep, n, 0, 1, what);
        ck_assert_int_eq(rep.raised, 0);

        ck_assert_int_eq(remove_watch(loop, writer, n), 1);
        tu_assert_usable(loop);
        loop_unref(loop);
        tu_close_pair(p);
        tu_close_pair(q);
}

START_TEST(test_reader_closed) {
        test_closed(0);
}
END_TEST

START_TEST(test_reader_closed_dup) {
        test_closed_dup(0);
}
END_TEST

START_TEST(test_reader_reused_at_once) {
        test_reused(0, 0);
}
END_TEST

START_TEST(test_reader_reused_later) {
        test_reused(0, 1);
}
END_TEST

START_TEST(test_writer_closed) {
        test_closed(1);
}
END_TEST

START_TEST(test_writer_closed_dup) {
        test_closed_dup(1);
}
END_TEST

START_TEST(test_writer_reused_at_once) {
        test_reused(1, 0);
}
END_TEST

START_TEST(test_writer_reused_later) {
        test_reused(1, 1);
}
END_TEST

int main(void) {
        Suite *s = suite_create("stress_closed_fd");
        TCase *tc = st_tcase(s, "readers", 30);

        tcase_add_test(tc, test_reader_closed);
        tcase_add_test(tc, test_reader_closed_dup);
        tcase_add_test(tc, test_reader_reused_at_once);
        tcase_add_test(tc, test_reader_reused_later);
        tc = st_tcase(s, "writers", 30);
        tcase_add_test(tc, test_writer_closed);
        tcase_add_test(tc, test_writer_closed_dup);
        tcase_add_test(tc, test_writer_reused_at_once);
        tcase_add_test(tc, test_writer_reused_later);
        return tu_run_suite(s);
}
