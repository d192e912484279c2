/* SPDX-License-Identifier: MIT */
/*
 * Shared helpers for the make check-stress programs (tests/stress/). They
 * are Check suites like tests/check_*.c and follow testutil.h's rules; what
 * they add is a watchdog, because the point of a stress test is to find a
 * loop that hangs, and a hang must turn into a failure with a message:
 *
 * - In Check's fork mode (the default) the tcase timeout kills a hung test,
 *   but says only "Test timeout expired". Under CK_FORK=no nothing would.
 * - So every phase that can hang runs under st_watchdog(): alarm(2), whose
 *   handler writes what was running to stderr and _exit()s with status 1,
 *   before the tcase timeout (which stays as the last resort). In fork mode
 *   Check reports the test as failed ("Early exit with return value 1")
 *   and goes on with the next test; under CK_FORK=no the program fails.
 *
 * st_note() prints the numbers a run reached to stdout (the tests/stress/NAME.log
 * of the build directory), prefixed with the program and backend.
 */
#ifndef LIBLOOP_STRESS_H
#define LIBLOOP_STRESS_H

#include <signal.h>
#include <stdarg.h>

#include "testutil.h"

/* A tcase's timeout: the last resort behind the watchdogs below. */
#define ST_TCASE_TIMEOUT 120

static const char *st_watchdog_what = "?";

static void st_watchdog_fired(int signum) {
        static const char head[] = "\nWATCHDOG: hang: ";
        static const char tail[] = " did not finish in time\n";
        const char *w = st_watchdog_what;
        size_t n = 0;

        (void) signum;
        while (w[n])
                n++;
        /* async-signal-safe: write(2) and _exit(2) only */
        if (write(STDERR_FILENO, head, sizeof(head) - 1) < 0 || write(STDERR_FILENO, w, n) < 0 ||
            write(STDERR_FILENO, tail, sizeof(tail) - 1) < 0)
                _exit(EXIT_FAILURE);
        _exit(EXIT_FAILURE);
}

/*
 * Arms the watchdog for seconds (0 disarms it). what must stay valid until
 * the watchdog is disarmed or re-armed (a string literal or a static
 * buffer). SIGALRM is used by nothing else in libloop or in these tests.
 */
static inline void st_watchdog(unsigned seconds, const char *what) {
        struct sigaction sa = { .sa_handler = st_watchdog_fired };

        if (seconds == 0) {
                alarm(0);
                return;
        }
        sigemptyset(&sa.sa_mask);
        st_watchdog_what = what;
        ck_assert_int_eq(sigaction(SIGALRM, &sa, NULL), 0);
        alarm(seconds);
}

/* The backend's name as tests/run-backends chose it, for st_note(). */
static inline const char *st_backend(void) {
        const char *p = getenv("LIBLOOP_PROACTOR");
        const char *s = getenv("LIBLOOP_SELECTOR");

        if (p && *p)
                return p;
        return s && *s ? s : "default";
}

static inline void st_note(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static inline void st_note(const char *fmt, ...) {
        va_list ap;

        printf("stress: %s: ", st_backend());
        va_start(ap, fmt);
        vprintf(fmt, ap);
        va_end(ap);
        putchar('\n');
        fflush(stdout);
}

static inline TCase *st_tcase(Suite *s, const char *name, int timeout) {
        TCase *tc = tcase_create(name);

        tcase_set_timeout(tc, timeout);
        suite_add_tcase(s, tc);
        return tc;
}

/* The loop's iteration count (loop_get_metrics). */
static inline uint64_t st_iterations(loop_t *loop) {
        struct loop_metrics m = { .size = sizeof(m) };

        ck_assert_int_eq(loop_get_metrics(loop, &m), 0);
        return m.iterations;
}

/* The number of descriptors with a reader or writer (loop_get_metrics). */
static inline uint64_t st_fds(loop_t *loop) {
        struct loop_metrics m = { .size = sizeof(m) };

        ck_assert_int_eq(loop_get_metrics(loop, &m), 0);
        return m.fds;
}

#endif /* LIBLOOP_STRESS_H */
