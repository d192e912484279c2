/* SPDX-License-Identifier: MIT */
/*
 * Shared helpers for the Check suites. Everything is static inline so that
 * each check_*.c stays one translation unit and unused helpers cost nothing.
 *
 * Rules the suites follow (they also run under CK_FORK=no for valgrind):
 * every loop is created inside the test (never in an unchecked fixture:
 * with CK_FORK the test runs in a child, and a loop created in the parent
 * would be an inherited one that answers -ECHILD), every fd is closed and
 * every reference dropped before the test ends, and ck_assert is only used
 * in the test's own thread.
 */
#ifndef LIBLOOP_TESTUTIL_H
#define LIBLOOP_TESTUTIL_H

#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "loop.h"

#define TU_USEC INT64_C(1000)
#define TU_MSEC INT64_C(1000000)
#define TU_SEC INT64_C(1000000000)

/* Timeout for test cases: generous, tests never assert speed. */
#define TU_TIMEOUT 30

/* CLOCK_MONOTONIC in nanoseconds; usable from any thread (no ck_assert). */
static inline int64_t tu_now_ns(void) {
        struct timespec ts;

        if (clock_gettime(CLOCK_MONOTONIC, &ts) < 0)
                abort();
        return (int64_t) ts.tv_sec * TU_SEC + ts.tv_nsec;
}

static inline void tu_sleep_ns(int64_t ns) {
        struct timespec ts = {.tv_sec = ns / TU_SEC, .tv_nsec = ns % TU_SEC};

        while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
                ;
}

static inline void tu_set_nonblock(int fd) {
        int flags = fcntl(fd, F_GETFL);

        ck_assert_int_ge(flags, 0);
        ck_assert_int_eq(fcntl(fd, F_SETFL, flags | O_NONBLOCK), 0);
        ck_assert_int_eq(fcntl(fd, F_SETFD, FD_CLOEXEC), 0);
}

/* A non-blocking, close-on-exec AF_UNIX stream socketpair. */
static inline void tu_socketpair(int sv[2]) {
        ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
        tu_set_nonblock(sv[0]);
        tu_set_nonblock(sv[1]);
}

/* A non-blocking, close-on-exec pipe: p[0] reads, p[1] writes. */
static inline void tu_pipe(int p[2]) {
        ck_assert_int_eq(pipe(p), 0);
        tu_set_nonblock(p[0]);
        tu_set_nonblock(p[1]);
}

static inline void tu_close_pair(int fds[2]) {
        if (fds[0] >= 0)
                ck_assert_int_eq(close(fds[0]), 0);
        if (fds[1] >= 0)
                ck_assert_int_eq(close(fds[1]), 0);
        fds[0] = fds[1] = -1;
}

static inline void tu_write_byte(int fd) {
        ck_assert_int_eq(write(fd, "x", 1), 1);
}

/* Reads everything there is; returns the byte count (0 at EOF or EAGAIN). */
static inline size_t tu_drain(int fd) {
        char buf[4096];
        size_t total = 0;
        ssize_t n;

        while ((n = read(fd, buf, sizeof(buf))) > 0)
                total += (size_t) n;
        return total;
}

/* Writes until the kernel buffer is full (EAGAIN); returns the byte count. */
static inline size_t tu_fill(int fd) {
        static const char buf[4096];
        size_t total = 0;
        ssize_t n;

        while ((n = write(fd, buf, sizeof(buf))) > 0)
                total += (size_t) n;
        ck_assert_msg(n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK), "filling fd %d: %s", fd, strerror(errno));
        return total;
}

/* Number of open fds of this process (/proc/self/fd), or -1 if unknown. */
static inline int tu_count_fds(void) {
        DIR *d = opendir("/proc/self/fd");
        struct dirent *de;
        int n = 0;

        if (!d)
                return -1;
        while ((de = readdir(d)))
                if (de->d_name[0] != '.')
                        n++;
        closedir(d);
        return n - 1; /* the directory stream's own fd */
}

/*
 * Makes sure the soft RLIMIT_NOFILE is at least want (raising it up to the
 * hard limit if needed) and returns the resulting soft limit.
 */
static inline long tu_ensure_nofile(long want) {
        struct rlimit rl;

        if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
                return 0;
        if (rl.rlim_cur != RLIM_INFINITY && (long) rl.rlim_cur < want) {
                struct rlimit nrl = rl;

                nrl.rlim_cur =
                        (rl.rlim_max == RLIM_INFINITY || (long) rl.rlim_max >= want) ? (rlim_t) want : rl.rlim_max;
                if (setrlimit(RLIMIT_NOFILE, &nrl) == 0)
                        rl = nrl;
        }
        return rl.rlim_cur == RLIM_INFINITY ? want : (long) rl.rlim_cur;
}

/*
 * stderr capture: everything written to fd 2 between tu_capture_start and
 * tu_capture_stop lands in a temporary file, which stop reads back into buf
 * (NUL-terminated) before restoring the real stderr. Keep ck_asserts out of
 * the captured region: a failure there would leave stderr redirected.
 */
struct tu_capture {
        FILE *file;
        int saved_fd;
};

static inline void tu_capture_start(struct tu_capture *c) {
        fflush(stderr);
        c->file = tmpfile();
        ck_assert_ptr_ne(c->file, NULL);
        c->saved_fd = dup(STDERR_FILENO);
        ck_assert_int_ge(c->saved_fd, 0);
        ck_assert_int_eq(dup2(fileno(c->file), STDERR_FILENO), STDERR_FILENO);
}

static inline size_t tu_capture_stop(struct tu_capture *c, char *buf, size_t size) {
        size_t n;

        fflush(stderr);
        ck_assert_int_eq(dup2(c->saved_fd, STDERR_FILENO), STDERR_FILENO);
        ck_assert_int_eq(close(c->saved_fd), 0);
        rewind(c->file);
        n = fread(buf, 1, size - 1, c->file);
        buf[n] = '\0';
        ck_assert_int_eq(fclose(c->file), 0);
        c->file = NULL;
        return n;
}

/*
 * A loop on the selector named by LIBLOOP_SELECTOR (tests/run-backends sets
 * it once per compiled-in backend; loop_new honours it).
 */
static inline loop_t *tu_loop_new(void) {
        loop_t *loop = NULL;
        const char *env = getenv("LIBLOOP_SELECTOR");
        int r = loop_new(&loop);

        ck_assert_msg(r == 0, "loop_new (LIBLOOP_SELECTOR=%s): %s", env ? env : "(unset)", loop_strerror(r));
        ck_assert_ptr_ne(loop, NULL);
        return loop;
}

/*
 * A proactor loop (LIBLOOP_PROACTOR=io_uring: tests/run-backends sets it
 * for the io_uring pass) has no selector. Tests that are about selectors
 * skip or adapt on one; the rest run unchanged.
 */
static inline int tu_is_proactor(loop_t *loop) {
        const char *env = getenv("LIBLOOP_PROACTOR");

        if (loop_get_selector(loop))
                return 0;
        ck_assert_msg(env && *env, "a loop without a selector, but LIBLOOP_PROACTOR is not set");
        return 1;
}

/* The backend's name: the selector's, or the proactor's (LIBLOOP_PROACTOR). */
static inline const char *tu_selector_name(loop_t *loop) {
        const char *name;

        if (tu_is_proactor(loop))
                return getenv("LIBLOOP_PROACTOR");
        name = loop_selector_name(loop_get_selector(loop));
        ck_assert_ptr_ne(name, NULL);
        return name;
}

static inline int tu_selector_is(loop_t *loop, const char *name) {
        return strcmp(tu_selector_name(loop), name) == 0;
}

/*
 * Runs iterations (each blocking at most 10 ms) until *counter >= want or
 * timeout_ns has passed. The caller asserts on *counter afterwards.
 */
static inline void tu_run_until(loop_t *loop, const int *counter, int want, int64_t timeout_ns) {
        int64_t deadline = tu_now_ns() + timeout_ns;

        while (*counter < want && tu_now_ns() < deadline)
                ck_assert_int_ge(loop_run_once(loop, 10 * TU_MSEC), 0);
}

/* Runs iterations without blocking for about ns nanoseconds. */
static inline void tu_run_for(loop_t *loop, int64_t ns) {
        int64_t deadline = tu_now_ns() + ns;

        while (tu_now_ns() < deadline)
                ck_assert_int_ge(loop_run_once(loop, TU_MSEC), 0);
}

/* A callback that counts its calls in the int that userdata points to. */
static inline int tu_count_cb(loop_t *loop, void *userdata) {
        (void) loop;
        (*(int *) userdata)++;
        return 0;
}

/* The same for I/O callbacks. */
static inline int tu_io_count_cb(loop_t *loop, int fd, void *userdata) {
        (void) loop;
        (void) fd;
        (*(int *) userdata)++;
        return 0;
}

static inline int tu_stop_cb(loop_t *loop, void *userdata) {
        if (userdata)
                (*(int *) userdata)++;
        return loop_stop(loop);
}

/* The loop still works: one call_soon runs in one non-blocking iteration. */
static inline void tu_assert_usable(loop_t *loop) {
        int count = 0;

        ck_assert_int_eq(loop_call_soon(loop, tu_count_cb, &count, NULL), 0);
        ck_assert_int_eq(loop_run_once(loop, 0), 1);
        ck_assert_int_eq(count, 1);
}

/* Runs the suite; CK_FORK and CK_VERBOSITY from the environment apply. */
static inline int tu_run_suite(Suite *s) {
        SRunner *sr = srunner_create(s);
        int failed;

        srunner_run_all(sr, CK_ENV);
        failed = srunner_ntests_failed(sr);
        srunner_free(sr);
        return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

static inline TCase *tu_tcase(Suite *s, const char *name) {
        TCase *tc = tcase_create(name);

        tcase_set_timeout(tc, TU_TIMEOUT);
        suite_add_tcase(s, tc);
        return tc;
}

#endif /* LIBLOOP_TESTUTIL_H */
