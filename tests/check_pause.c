/* SPDX-License-Identifier: MIT */
/*
 * loop_pause_reader/loop_resume_reader and the writer pair: a paused
 * callback never runs (not even one already queued), keeps its place for
 * resume, is replaced by add and dropped by remove; errors; and, on epoll,
 * that a pause undone in the same iteration costs no system call, counted
 * by wrapping epoll_ctl(). tests/run-backends reruns this once per backend.
 */
#include "testutil.h"

/* The cost test needs epoll.h, and the epoll selector at run time: it is
 * left out on other systems and skips in builds without epoll (configure
 * --with-backends=poll,select). */
#ifdef HAVE_SYS_EPOLL_H
#ifndef _WIN32
#include <sys/epoll.h>
#include <sys/syscall.h>
#endif
#if defined(SYS_epoll_ctl)
#define COUNT_EPOLL_CTL 1

/*
 * Every epoll_ctl() libloop makes lands here: the executable's definition
 * comes before libc's in symbol lookup. The system call itself is made
 * directly so that no other definition is needed.
 */
static unsigned long n_epoll_ctl;

int epoll_ctl(int epfd, int op, int fd, struct epoll_event *event) {
        n_epoll_ctl++;
        return (int) syscall(SYS_epoll_ctl, epfd, op, fd, event);
}
#endif
#endif

/* A reader that counts its runs; pause_fd >= 0: it pauses that fd's reader. */
struct rec {
        int count;
        int pause_fd;
};

static int rec_cb(loop_t *loop, int fd, void *userdata) {
        struct rec *r = userdata;

        (void) fd;
        r->count++;
        if (r->pause_fd >= 0)
                ck_assert_int_eq(loop_pause_reader(loop, r->pause_fd), 0);
        return 0;
}

/* Runs iterations for about 30 ms; a paused callback must stay quiet. */
static void run_quiet(loop_t *loop) {
        for (int i = 0; i < 3; i++)
                ck_assert_int_eq(loop_run_once(loop, 10 * TU_MSEC), 0);
}

START_TEST(test_pause_reader) {
        loop_t *loop = tu_loop_new();
        struct rec r = {.pause_fd = -1};
        int sv[2];

        tu_socketpair(sv);
        tu_write_byte(sv[1]);
        ck_assert_int_eq(loop_add_reader(loop, sv[0], rec_cb, &r), 0);
        tu_run_until(loop, &r.count, 1, 2 * TU_SEC);
        ck_assert_int_eq(r.count, 1);

        /* Readable all along (level-triggered), yet quiet while paused. */
        ck_assert_int_eq(loop_pause_reader(loop, sv[0]), 0);
        run_quiet(loop);
        ck_assert_int_eq(r.count, 1);

        ck_assert_int_eq(loop_resume_reader(loop, sv[0]), 0);
        tu_run_until(loop, &r.count, 2, 2 * TU_SEC);
        ck_assert_int_eq(r.count, 2);

        ck_assert_int_eq(loop_remove_reader(loop, sv[0]), 1);
        loop_unref(loop);
        tu_close_pair(sv);
}
END_TEST

START_TEST(test_pause_writer) {
        loop_t *loop = tu_loop_new();
        int count = 0;
        int sv[2];

        tu_socketpair(sv);
        ck_assert_int_eq(loop_add_writer(loop, sv[0], tu_io_count_cb, &count), 0);
        tu_run_until(loop, &count, 1, 2 * TU_SEC);
        ck_assert_int_ge(count, 1);

        ck_assert_int_eq(loop_pause_writer(loop, sv[0]), 0);
        int seen = count;
        run_quiet(loop);
        ck_assert_int_eq(count, seen);

        ck_assert_int_eq(loop_resume_writer(loop, sv[0]), 0);
        tu_run_until(loop, &count, seen + 1, 2 * TU_SEC);
        ck_assert_int_gt(count, seen);

        ck_assert_int_eq(loop_remove_writer(loop, sv[0]), 1);
        loop_unref(loop);
        tu_close_pair(sv);
}
END_TEST

/* Two readable descriptors whose callbacks pause each other: whichever
 * runs first cancels the other's run, even one queued in the same
 * iteration, as asyncio's pause_reading cancels the reader's handle. */
START_TEST(test_pause_cancels_queued) {
        loop_t *loop = tu_loop_new();
        int a[2], b[2];

        tu_socketpair(a);
        tu_socketpair(b);
        struct rec ra = {.pause_fd = b[0]}, rb = {.pause_fd = a[0]};
        tu_write_byte(a[1]);
        tu_write_byte(b[1]);
        ck_assert_int_eq(loop_add_reader(loop, a[0], rec_cb, &ra), 0);
        ck_assert_int_eq(loop_add_reader(loop, b[0], rec_cb, &rb), 0);
        for (int i = 0; i < 200 && ra.count + rb.count == 0; i++)
                ck_assert_int_ge(loop_run_once(loop, 10 * TU_MSEC), 0);
        ck_assert_int_eq(ra.count + rb.count, 1);

        /* From now on the winner pauses nobody: the loser stays paused. */
        struct rec *winner = ra.count ? &ra : &rb, *loser = ra.count ? &rb : &ra;
        winner->pause_fd = -1;
        for (int i = 0; i < 3; i++)
                ck_assert_int_ge(loop_run_once(loop, 10 * TU_MSEC), 0);
        ck_assert_int_eq(loser->count, 0);
        ck_assert_int_ge(winner->count, 2);

        loop_unref(loop);
        tu_close_pair(a);
        tu_close_pair(b);
}
END_TEST

/* A pause undone in the same iteration changes nothing: data that is
 * there is reported as usual. */
START_TEST(test_pause_resume_same_iteration) {
        loop_t *loop = tu_loop_new();
        struct rec r = {.pause_fd = -1};
        int sv[2];

        tu_socketpair(sv);
        ck_assert_int_eq(loop_add_reader(loop, sv[0], rec_cb, &r), 0);
        ck_assert_int_eq(loop_pause_reader(loop, sv[0]), 0);
        ck_assert_int_eq(loop_resume_reader(loop, sv[0]), 0);
        run_quiet(loop);        /* nothing to read yet */
        ck_assert_int_eq(r.count, 0);

        tu_write_byte(sv[1]);
        tu_run_until(loop, &r.count, 1, 2 * TU_SEC);
        ck_assert_int_eq(r.count, 1);

        loop_unref(loop);
        tu_close_pair(sv);
}
END_TEST

/* A callback that pauses itself runs once, however long the data stays. */
START_TEST(test_pause_self) {
        loop_t *loop = tu_loop_new();
        struct rec r;
        int sv[2];

        tu_socketpair(sv);
        r = (struct rec) {.pause_fd = sv[0]};
        tu_write_byte(sv[1]);
        ck_assert_int_eq(loop_add_reader(loop, sv[0], rec_cb, &r), 0);
        tu_run_until(loop, &r.count, 1, 2 * TU_SEC);
        run_quiet(loop);
        ck_assert_int_eq(r.count, 1);

        ck_assert_int_eq(loop_resume_reader(loop, sv[0]), 0);
        tu_run_until(loop, &r.count, 2, 2 * TU_SEC);
        run_quiet(loop);
        ck_assert_int_eq(r.count, 2);

        loop_unref(loop);
        tu_close_pair(sv);
}
END_TEST

/* Pausing one direction leaves the other alone. */
START_TEST(test_pause_one_direction) {
        loop_t *loop = tu_loop_new();
        int nread = 0, nwrite = 0;
        int sv[2];

        tu_socketpair(sv);
        tu_write_byte(sv[1]);
        ck_assert_int_eq(loop_add_reader(loop, sv[0], tu_io_count_cb, &nread), 0);
        ck_assert_int_eq(loop_add_writer(loop, sv[0], tu_io_count_cb, &nwrite), 0);
        ck_assert_int_eq(loop_pause_writer(loop, sv[0]), 0);
        tu_run_until(loop, &nread, 3, 2 * TU_SEC);
        ck_assert_int_ge(nread, 3);
        ck_assert_int_eq(nwrite, 0);

        ck_assert_int_eq(loop_pause_reader(loop, sv[0]), 0);
        ck_assert_int_eq(loop_resume_writer(loop, sv[0]), 0);
        int seen = nread;
        tu_run_until(loop, &nwrite, 3, 2 * TU_SEC);
        ck_assert_int_ge(nwrite, 3);
        ck_assert_int_eq(nread, seen);

        loop_unref(loop);
        tu_close_pair(sv);
}
END_TEST

/* add_reader on a paused reader replaces it with an active one. */
START_TEST(test_add_on_paused) {
        loop_t *loop = tu_loop_new();
        int old = 0, new = 0;
        int sv[2];

        tu_socketpair(sv);
        tu_write_byte(sv[1]);
        ck_assert_int_eq(loop_add_reader(loop, sv[0], tu_io_count_cb, &old), 0);
        ck_assert_int_eq(loop_pause_reader(loop, sv[0]), 0);
        run_quiet(loop);
        ck_assert_int_eq(loop_add_reader(loop, sv[0], tu_io_count_cb, &new), 0);
        tu_run_until(loop, &new, 1, 2 * TU_SEC);
        ck_assert_int_ge(new, 1);
        ck_assert_int_eq(old, 0);

        /* Active again: resuming is a no-op, pausing works as before. */
        ck_assert_int_eq(loop_resume_reader(loop, sv[0]), 0);
        ck_assert_int_eq(loop_pause_reader(loop, sv[0]), 0);
        int seen = new;
        run_quiet(loop);
        ck_assert_int_eq(new, seen);

        loop_unref(loop);
        tu_close_pair(sv);
}
END_TEST

START_TEST(test_remove_paused) {
        loop_t *loop = tu_loop_new();
        int count = 0;
        int sv[2];

        tu_socketpair(sv);
        tu_write_byte(sv[1]);
        ck_assert_int_eq(loop_add_reader(loop, sv[0], tu_io_count_cb, &count), 0);
        ck_assert_int_eq(loop_pause_reader(loop, sv[0]), 0);
        ck_assert_int_eq(loop_remove_reader(loop, sv[0]), 1);
        ck_assert_int_eq(loop_remove_reader(loop, sv[0]), 0);
        ck_assert_int_eq(loop_resume_reader(loop, sv[0]), -ENOENT);
        ck_assert_int_eq(loop_pause_reader(loop, sv[0]), -ENOENT);
        run_quiet(loop);
        ck_assert_int_eq(count, 0);

        /* Paused across an iteration, then removed. */
        ck_assert_int_eq(loop_add_reader(loop, sv[0], tu_io_count_cb, &count), 0);
        ck_assert_int_eq(loop_pause_reader(loop, sv[0]), 0);
        run_quiet(loop);
        ck_assert_int_eq(loop_remove_reader(loop, sv[0]), 1);
        run_quiet(loop);
        ck_assert_int_eq(count, 0);

        struct loop_metrics m = {.size = sizeof(m)};
        ck_assert_int_eq(loop_get_metrics(loop, &m), 0);
        ck_assert_uint_eq(m.fds, 0);

        loop_unref(loop);
        tu_close_pair(sv);
}
END_TEST

/* A paused callback is still registered: metrics count it, the dump
 * marks it. */
START_TEST(test_paused_is_registered) {
        loop_t *loop = tu_loop_new();
        int count = 0;
        int sv[2];
        char buf[4096];

        tu_socketpair(sv);
        ck_assert_int_eq(loop_add_reader(loop, sv[0], tu_io_count_cb, &count), 0);
        ck_assert_int_eq(loop_add_writer(loop, sv[0], tu_io_count_cb, &count), 0);
        ck_assert_int_eq(loop_pause_writer(loop, sv[0]), 0);
        ck_assert_int_eq(loop_run_once(loop, 0), 0);

        struct loop_metrics m = {.size = sizeof(m)};
        ck_assert_int_eq(loop_get_metrics(loop, &m), 0);
        ck_assert_uint_eq(m.fds, 1);

        FILE *f = tmpfile();
        ck_assert_ptr_ne(f, NULL);
        ck_assert_int_eq(loop_dump(loop, fileno(f)), 0);
        ck_assert_int_eq(fseek(f, 0, SEEK_SET), 0);
        size_t n = fread(buf, 1, sizeof(buf) - 1, f);
        buf[n] = '\0';
        fclose(f);
        ck_assert_ptr_ne(strstr(buf, "writer_paused"), NULL);
        ck_assert_ptr_eq(strstr(buf, "reader_paused"), NULL);

        loop_unref(loop);
        tu_close_pair(sv);
}
END_TEST

START_TEST(test_pause_errors) {
        loop_t *loop = tu_loop_new();
        int count = 0;
        int sv[2];

        ck_assert_int_eq(loop_pause_reader(NULL, 0), -EINVAL);
        ck_assert_int_eq(loop_resume_reader(NULL, 0), -EINVAL);
        ck_assert_int_eq(loop_pause_writer(NULL, 0), -EINVAL);
        ck_assert_int_eq(loop_resume_writer(NULL, 0), -EINVAL);
        ck_assert_int_eq(loop_pause_reader(loop, -1), -EBADF);
        ck_assert_int_eq(loop_resume_writer(loop, -1), -EBADF);

        tu_socketpair(sv);
        /* Nothing registered on the fd, or beyond every table. */
        ck_assert_int_eq(loop_pause_reader(loop, sv[0]), -ENOENT);
        ck_assert_int_eq(loop_resume_reader(loop, sv[0]), -ENOENT);
        ck_assert_int_eq(loop_pause_writer(loop, 1 << 20), -ENOENT);
        /* A writer is not a reader. */
        ck_assert_int_eq(loop_add_writer(loop, sv[0], tu_io_count_cb, &count), 0);
        ck_assert_int_eq(loop_pause_reader(loop, sv[0]), -ENOENT);
        ck_assert_int_eq(loop_resume_reader(loop, sv[0]), -ENOENT);
        /* Idempotent both ways. */
        ck_assert_int_eq(loop_resume_writer(loop, sv[0]), 0);
        ck_assert_int_eq(loop_pause_writer(loop, sv[0]), 0);
        ck_assert_int_eq(loop_pause_writer(loop, sv[0]), 0);
        ck_assert_int_eq(loop_resume_writer(loop, sv[0]), 0);
        ck_assert_int_eq(loop_resume_writer(loop, sv[0]), 0);
        ck_assert_int_eq(loop_pause_writer(loop, sv[0]), 0);

        ck_assert_int_eq(loop_close(loop), 0);
        ck_assert_int_eq(loop_pause_writer(loop, sv[0]), -ESHUTDOWN);
        ck_assert_int_eq(loop_resume_writer(loop, sv[0]), -ESHUTDOWN);
        ck_assert_int_eq(count, 0);

        loop_unref(loop);
        tu_close_pair(sv);
}
END_TEST

/* Once the kernel stopped watching a paused descriptor, resuming it
 * registers it again, and a descriptor closed meanwhile is an error; the
 * callback then stays paused. */
START_TEST(test_resume_closed_fd) {
        loop_t *loop = tu_loop_new();
        int count = 0;
        int sv[2];

        tu_socketpair(sv);
        ck_assert_int_eq(loop_add_reader(loop, sv[0], tu_io_count_cb, &count), 0);
        ck_assert_int_eq(loop_pause_reader(loop, sv[0]), 0);
        run_quiet(loop);
        int fd = sv[0];
        tu_close_pair(sv);

        ck_assert_int_eq(loop_resume_reader(loop, fd), -EBADF);
        ck_assert_int_eq(loop_pause_reader(loop, fd), 0);
        ck_assert_int_eq(loop_remove_reader(loop, fd), 1);
        tu_assert_usable(loop);
        ck_assert_int_eq(count, 0);
        loop_unref(loop);
}
END_TEST

/* ---- what it costs on epoll ------------------------------------------ */

#ifdef COUNT_EPOLL_CTL
/* An epoll selector loop, or NULL where this build has no epoll selector. */
static loop_t *epoll_loop_new(void) {
        loop_selector_t *sel = NULL;
        loop_t *loop = NULL;
        int r = loop_selector_new("epoll", &sel);

        if (r == -ENOENT || r == -EOPNOTSUPP)
                return NULL;
        ck_assert_msg(r == 0, "loop_selector_new(\"epoll\"): %s", loop_strerror(r));
        ck_assert_int_eq(loop_selector_loop_new(sel, &loop), 0);
        loop_selector_unref(sel);
        return loop;
}

#define N_PAIRS 64

START_TEST(test_epoll_pause_resume_no_syscall) {
        loop_t *loop = epoll_loop_new();
        int sv[N_PAIRS][2], count = 0;

        if (!loop)
                return;         /* no epoll selector in this build */

        for (int i = 0; i < N_PAIRS; i++) {
                tu_socketpair(sv[i]);
                ck_assert_int_eq(loop_add_reader(loop, sv[i][0], tu_io_count_cb, &count), 0);
        }
        ck_assert_int_eq(loop_run_once(loop, 0), 0);

        /* The control: remove and add again in one iteration costs one
         * check per descriptor (it may have been closed and reused). */
        unsigned long before = n_epoll_ctl;
        for (int i = 0; i < N_PAIRS; i++) {
                ck_assert_int_eq(loop_remove_reader(loop, sv[i][0]), 1);
                ck_assert_int_eq(loop_add_reader(loop, sv[i][0], tu_io_count_cb, &count), 0);
        }
        ck_assert_int_eq(loop_run_once(loop, 0), 0);
        ck_assert_uint_eq(n_epoll_ctl - before, N_PAIRS);

        /* Pause and resume in one iteration: nothing at all. */
        before = n_epoll_ctl;
        for (int i = 0; i < N_PAIRS; i++) {
                ck_assert_int_eq(loop_pause_reader(loop, sv[i][0]), 0);
                ck_assert_int_eq(loop_resume_reader(loop, sv[i][0]), 0);
        }
        ck_assert_int_eq(loop_run_once(loop, 0), 0);
        ck_assert_uint_eq(n_epoll_ctl - before, 0);

        /* Paused across a wait: one removal, then one addition. */
        before = n_epoll_ctl;
        ck_assert_int_eq(loop_pause_reader(loop, sv[0][0]), 0);
        ck_assert_int_eq(loop_run_once(loop, 0), 0);
        ck_assert_uint_eq(n_epoll_ctl - before, 1);
        ck_assert_int_eq(loop_resume_reader(loop, sv[0][0]), 0);
        ck_assert_uint_eq(n_epoll_ctl - before, 2);

        /* Still watched after all that. */
        tu_write_byte(sv[0][1]);
        tu_write_byte(sv[N_PAIRS - 1][1]);
        tu_run_until(loop, &count, 2, 2 * TU_SEC);
        ck_assert_int_eq(count, 2);

        loop_unref(loop);
        for (int i = 0; i < N_PAIRS; i++)
                tu_close_pair(sv[i]);
}
END_TEST
#endif

static Suite *pause_suite(void) {
        Suite *s = suite_create("pause");
        TCase *tc;

        tc = tu_tcase(s, "pause");
        tcase_add_test(tc, test_pause_reader);
        tcase_add_test(tc, test_pause_writer);
        tcase_add_test(tc, test_pause_cancels_queued);
        tcase_add_test(tc, test_pause_resume_same_iteration);
        tcase_add_test(tc, test_pause_self);
        tcase_add_test(tc, test_pause_one_direction);

        tc = tu_tcase(s, "registration");
        tcase_add_test(tc, test_add_on_paused);
        tcase_add_test(tc, test_remove_paused);
        tcase_add_test(tc, test_paused_is_registered);
        tcase_add_test(tc, test_pause_errors);
        tcase_add_test(tc, test_resume_closed_fd);

#ifdef COUNT_EPOLL_CTL
        tc = tu_tcase(s, "cost");
        tcase_add_test(tc, test_epoll_pause_resume_no_syscall);
#endif
        return s;
}

int main(void) {
        return tu_run_suite(pause_suite());
}
