/* SPDX-License-Identifier: MIT */
#include <math.h>
#include <time.h>

#include "internal.h"

#define NSEC_PER_SEC INT64_C(1000000000)

/*
 * Time is kept in int64 nanoseconds of CLOCK_MONOTONIC. Deadlines are
 * computed from a fresh reading, never from a time cached at the start of
 * the iteration: a cached "now" makes a timer scheduled late in an
 * iteration fire early relative to the moment it was asked for (libuv's
 * uv_now() problem).
 */
#ifdef LOOP_WINDOWS
/*
 * Windows: QueryPerformanceCounter, monotonic and steady on every system
 * since Vista; its frequency is fixed at boot (10 MHz on Windows 10 and
 * later). counter * 1e9 would overflow int64 after 15 minutes of uptime
 * at 10 MHz: whole seconds and the rest are converted apart. Truncated:
 * "now" is never later than the truth, so nothing is found due early.
 */
int64_t loop__now(void) {
        static int64_t freq;    /* never changes: a race writes the same value */
        LARGE_INTEGER c;

        if (unlikely(!freq)) {
                LARGE_INTEGER f;
                QueryPerformanceFrequency(&f);
                __atomic_store_n(&freq, f.QuadPart, __ATOMIC_RELAXED);
        }
        QueryPerformanceCounter(&c);
        int64_t f = __atomic_load_n(&freq, __ATOMIC_RELAXED);
        return c.QuadPart / f * NSEC_PER_SEC + c.QuadPart % f * NSEC_PER_SEC / f;
}
#else
int64_t loop__now(void) {
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (int64_t) ts.tv_sec * NSEC_PER_SEC + ts.tv_nsec;
}
#endif

int loop__seconds_to_ns(double seconds, int64_t *ret) {
        if (!isfinite(seconds))
                return -EINVAL;
        /* 9.2e9 s is int64's limit in ns; leave room for adding "now". */
        if (fabs(seconds) >= 9.0e9)
                return -ERANGE;
        /* Round up: a deadline may be late by a nanosecond, never early. */
        *ret = (int64_t) ceil(seconds * 1e9);
        return 0;
}

LOOP_EXPORT double loop_time(const loop_t *loop) {
        if (!loop)
                return NAN;
        return (double) loop__now() / 1e9;
}

LOOP_EXPORT int64_t loop_time_ns(const loop_t *loop) {
        return_if_fail(loop, -EINVAL);
        return loop__now();
}
