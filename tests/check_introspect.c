/* SPDX-License-Identifier: MIT */
/*
 * Introspection and embedding: loop_get_metrics (exact counters, the state
 * gauges, the size rule for older callers), loop_dump (the documented line
 * format: header, ready callbacks in run order, timers in deadline order,
 * watched descriptors) and the embedding pair loop_fileno +
 * loop_get_timeout_ns (an outer poll(2) on the loop's descriptor sees I/O,
 * call_soon_threadsafe and registrations made just before; the timeout
 * follows the loop's state). loop_fileno exists on epoll and kqueue only; on poll and
 * select it answers -EOPNOTSUPP, which is checked instead.
 */
#include <limits.h>
#ifndef _WIN32
#include <poll.h>
#endif
#include <pthread.h>
#include <stddef.h>

#include "testutil.h"

/* ---- helpers ----------------------------------------------------------- */

static struct loop_metrics get_metrics(loop_t *loop) {
        struct loop_metrics m;

        memset(&m, 0xA5, sizeof(m));
        m.size = sizeof(m);
        ck_assert_int_eq(loop_get_metrics(loop, &m), 0);
        ck_assert_uint_eq(m.size, sizeof(m));
        return m;
}

static int nop_cb(loop_t *loop, void *userdata) {
        (void) loop;
        (void) userdata;
        return 0;
}

static int other_nop_cb(loop_t *loop, void *userdata) {
        return nop_cb(loop, userdata);
}

static int nop_io_cb(loop_t *loop, int fd, void *userdata) {
        (void) loop;
        (void) fd;
        (void) userdata;
        return 0;
}

/* Reads what is there (so a level-triggered reader does not fire again) and counts. */
static int drain_io_cb(loop_t *loop, int fd, void *userdata) {
        (void) loop;
        tu_drain(fd);
        (*(int *) userdata)++;
        return 0;
}

/* A callback that schedules another one (which runs in the next iteration). */
static int resched_cb(loop_t *loop, void *userdata) {
        return loop_call_soon(loop, tu_count_cb, userdata, NULL);
}

static char *ptr(void *p, char buf[32]) {
        snprintf(buf, 32, "%p", p);
        return buf;
}

static void *fn_ptr_loop(loop_callback_t cb) {
        return (void *) (uintptr_t) cb;
}

static void *fn_ptr_io(loop_io_callback_t cb) {
        return (void *) (uintptr_t) cb;
}

/* The output of loop_dump, split into lines. */
#define DUMP_MAX_LINES 64

struct dump {
        char *text;
        char *lines[DUMP_MAX_LINES];
        int n;
};

static void dump_loop(loop_t *loop, struct dump *d) {
        FILE *f = tmpfile();
        long size;

        ck_assert_ptr_ne(f, NULL);
        ck_assert_int_eq(loop_dump(loop, fileno(f)), 0);
        /* loop_dump writes through a duplicate: the offset is shared, so seek back. */
        ck_assert_int_eq(fseek(f, 0, SEEK_END), 0);
        size = ftell(f);
        ck_assert_int_gt(size, 0);
        rewind(f);
        d->text = calloc(1, (size_t) size + 1);
        ck_assert_ptr_ne(d->text, NULL);
        ck_assert_uint_eq(fread(d->text, 1, (size_t) size, f), (size_t) size);
        ck_assert_int_eq(fclose(f), 0);
        ck_assert_int_eq(d->text[size - 1], '\n');

        d->n = 0;
        for (char *save = NULL, *line = strtok_r(d->text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
                ck_assert_int_lt(d->n, DUMP_MAX_LINES);
                d->lines[d->n++] = line;
        }
}

static void dump_free(struct dump *d) {
        free(d->text);
        d->text = NULL;
}

static int starts_with(const char *s, const char *prefix) {
        return strncmp(s, prefix, strlen(prefix)) == 0;
}

/* The lines that begin with prefix, in order. */
static int dump_select(const struct dump *d, const char *prefix, const char **out, int max) {
        int n = 0;

        for (int i = 0; i < d->n; i++)
                if (starts_with(d->lines[i], prefix)) {
                        ck_assert_int_lt(n, max);
                        out[n++] = d->lines[i];
                }
        return n;
}

/* True if the whitespace-separated field key=value appears in line. */
static int has_field(const char *line, const char *key, const char *value) {
        char want[128];
        size_t n;

        n = (size_t) snprintf(want, sizeof(want), "%s=%s", key, value);
        for (const char *p = line; (p = strstr(p, want)); p++)
                if ((p == line || p[-1] == ' ') && (p[n] == ' ' || p[n] == '\0'))
                        return 1;
        return 0;
}

/* The int64 value of key=... in line. */
static int64_t field_i64(const char *line, const char *key) {
        char want[64];
        const char *p;

        snprintf(want, sizeof(want), " %s=", key);
        p = strstr(line, want);
        ck_assert_msg(p != NULL, "no %s in \"%s\"", key, line);
        return strtoll(p + strlen(want), NULL, 10);
}

/* loop_fileno() works on epoll and kqueue selector loops and on io_uring
 * proactor loops (the ring's descriptor); elsewhere (IOCP: a port is no
 * socket) it says EOPNOTSUPP. */
static int is_epoll(loop_t *loop) {
        return tu_selector_is(loop, "io_uring") || tu_selector_is(loop, "epoll") || tu_selector_is(loop, "kqueue");
}

/* poll(2) on one descriptor: 1 if readable within timeout_ms, else 0. */
static int poll_readable(int fd, int timeout_ms) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int r;

        do
                r = poll(&p, 1, timeout_ms);
        while (r < 0 && errno == EINTR);
        ck_assert_int_ge(r, 0);
        return r > 0 && (p.revents & POLLIN);
}

/* ---- metrics ------------------------------------------------------------- */

START_TEST(test_metrics_fresh) {
        loop_t *loop = tu_loop_new();
        struct loop_metrics m = get_metrics(loop);

        ck_assert_uint_eq(m.iterations, 0);
        ck_assert_uint_eq(m.callbacks, 0);
        ck_assert_uint_eq(m.events, 0);
        ck_assert_int_eq(m.wait_ns, 0);
        ck_assert_int_eq(m.run_ns, 0);
        ck_assert_uint_eq(m.handles_ready, 0);
        ck_assert_uint_eq(m.timers, 0);
        /* The loop's own wake-up descriptor is not counted. */
        ck_assert_uint_eq(m.fds, 0);
        loop_unref(loop);
}
END_TEST

/* Iterations and callbacks are counted exactly. */
START_TEST(test_metrics_counts) {
        loop_t *loop = tu_loop_new();
        loop_handle_t *h = NULL;
        struct loop_metrics m;
        int count = 0, chained = 0;

        for (int i = 0; i < 3; i++)
                ck_assert_int_eq(loop_call_soon(loop, tu_count_cb, &count, NULL), 0);
        ck_assert_int_eq(loop_call_soon(loop, resched_cb, &chained, NULL), 0);
        /* A cancelled callback is not run, so not counted. */
        ck_assert_int_eq(loop_call_soon(loop, tu_count_cb, &count, &h), 0);
        ck_assert_int_eq(loop_handle_cancel(h), 0);
        h = loop_handle_unref(h);

        m = get_metrics(loop);
        ck_assert_uint_eq(m.iterations, 0);
        ck_assert_uint_eq(m.callbacks, 0);

        /* 1st: 4 callbacks (3 counters + resched), 2nd: the rescheduled one, 3rd to 5th: nothing. */
        ck_assert_int_eq(loop_run_once(loop, 0), 4);
        ck_assert_int_eq(loop_run_once(loop, 0), 1);
        for (int i = 0; i < 3; i++)
                ck_assert_int_eq(loop_run_once(loop, 0), 0);
        m = get_metrics(loop);
        ck_assert_uint_eq(m.iterations, 5);
        ck_assert_uint_eq(m.callbacks, 5);
        ck_assert_uint_eq(m.handles_ready, 0);
        ck_assert_int_eq(count, 3);
        ck_assert_int_eq(chained, 1);
        ck_assert_int_ge(m.wait_ns, 0);
        ck_assert_int_ge(m.run_ns, 0);

        /* run_forever's iterations count too: call_soon(stop) is one. */
        ck_assert_int_eq(loop_call_soon(loop, tu_stop_cb, NULL, NULL), 0);
        ck_assert_int_eq(loop_run_forever(loop), 0);
        m = get_metrics(loop);
        ck_assert_uint_eq(m.iterations, 6);
        ck_assert_uint_eq(m.callbacks, 6);
        loop_unref(loop);
}
END_TEST

/* One readiness event per iteration in which a reader's descriptor is ready. */
START_TEST(test_metrics_events) {
        loop_t *loop = tu_loop_new();
        int sv[2], fired = 0;
        struct loop_metrics m;

        tu_socketpair(sv);
        ck_assert_int_eq(loop_add_reader(loop, sv[0], drain_io_cb, &fired), 0);
        ck_assert_int_eq(loop_run_once(loop, 0), 0);
        ck_assert_uint_eq(get_metrics(loop).events, 0);

        for (int i = 1; i <= 3; i++) {
                tu_write_byte(sv[1]);
                ck_assert_int_eq(loop_run_once(loop, 2 * TU_SEC), 1);
                ck_assert_int_eq(fired, i);
                m = get_metrics(loop);
                ck_assert_uint_eq(m.events, (uint64_t) i);
                ck_assert_uint_eq(m.callbacks, (uint64_t) i);
        }
        /* Nothing ready: no event. */
        ck_assert_int_eq(loop_run_once(loop, 0), 0);
        m = get_metrics(loop);
        ck_assert_uint_eq(m.events, 3);
        ck_assert_uint_eq(m.iterations, 5);
        ck_assert_int_eq(loop_remove_reader(loop, sv[0]), 1);
        loop_unref(loop);
        tu_close_pair(sv);
}
END_TEST

/* Sleeping on a timer is time spent waiting. */
START_TEST(test_metrics_wait_ns) {
        const int64_t delay = 50 * TU_MSEC;
        loop_t *loop = tu_loop_new();
        struct loop_metrics before = get_metrics(loop), after;
        int fired = 0;
        int64_t start, elapsed;

        start = tu_now_ns();
        ck_assert_int_eq(loop_call_later_ns(loop, delay, tu_count_cb, &fired, NULL), 0);
        while (fired == 0)
                ck_assert_int_ge(loop_run_once(loop, -1), 0);
        elapsed = tu_now_ns() - start;
        after = get_metrics(loop);

        ck_assert_int_ge(elapsed, delay);
        /* Generous: most of the delay was spent in the backend's wait ... */
        ck_assert_int_ge(after.wait_ns - before.wait_ns, delay / 2);
        /* ... and wait plus run cannot exceed the time that passed. */
        ck_assert_int_le((after.wait_ns - before.wait_ns) + (after.run_ns - before.run_ns), elapsed);
        ck_assert_int_ge(after.run_ns, before.run_ns);
        ck_assert_uint_ge(after.iterations, 1);
        loop_unref(loop);
}
END_TEST

/* The gauges describe the loop as it is now. */
START_TEST(test_metrics_state) {
        loop_t *loop = tu_loop_new();
        loop_handle_t *t1 = NULL, *t2 = NULL;
        int a[2], b[2];
        struct loop_metrics m;

        tu_socketpair(a);
        tu_socketpair(b);
        ck_assert_int_eq(loop_call_soon(loop, nop_cb, NULL, NULL), 0);
        ck_assert_int_eq(loop_call_soon(loop, nop_cb, NULL, NULL), 0);
        ck_assert_int_eq(loop_call_later(loop, 10.0, nop_cb, NULL, &t1), 0);
        ck_assert_int_eq(loop_call_later(loop, 20.0, nop_cb, NULL, &t2), 0);
        ck_assert_int_eq(loop_add_reader(loop, a[0], nop_io_cb, NULL), 0);
        ck_assert_int_eq(loop_add_writer(loop, a[0], nop_io_cb, NULL), 0);   /* same fd: counted once */
        ck_assert_int_eq(loop_add_writer(loop, b[1], nop_io_cb, NULL), 0);
        m = get_metrics(loop);
        ck_assert_uint_eq(m.handles_ready, 2);
        ck_assert_uint_eq(m.timers, 2);
        ck_assert_uint_eq(m.fds, 2);

        /* A cancelled timer leaves the heap at once. */
        ck_assert_int_eq(loop_handle_cancel(t1), 0);
        ck_assert_uint_eq(get_metrics(loop).timers, 1);

        ck_assert_int_eq(loop_remove_writer(loop, a[0]), 1);
        ck_assert_uint_eq(get_metrics(loop).fds, 2);    /* a[0] still has its reader */
        ck_assert_int_eq(loop_remove_reader(loop, a[0]), 1);
        ck_assert_uint_eq(get_metrics(loop).fds, 1);
        ck_assert_int_eq(loop_remove_writer(loop, b[1]), 1);

        ck_assert_int_eq(loop_run_once(loop, 0), 2);
        m = get_metrics(loop);
        ck_assert_uint_eq(m.handles_ready, 0);
        ck_assert_uint_eq(m.timers, 1);
        ck_assert_uint_eq(m.fds, 0);

        loop_handle_unref(t1);
        loop_handle_unref(t2);
        loop_unref(loop);
        tu_close_pair(a);
        tu_close_pair(b);
}
END_TEST

/* An older caller's shorter struct gets the members it knows, and nothing past them is written. */
START_TEST(test_metrics_old_size) {
        static const size_t sizes[] = {
                sizeof(size_t),
                offsetof(struct loop_metrics, callbacks),
                offsetof(struct loop_metrics, events),
                offsetof(struct loop_metrics, fds),
        };
        loop_t *loop = tu_loop_new();
        int count = 0;

        ck_assert_int_eq(loop_call_soon(loop, tu_count_cb, &count, NULL), 0);
        ck_assert_int_eq(loop_call_soon(loop, tu_count_cb, &count, NULL), 0);
        ck_assert_int_eq(loop_run_once(loop, 0), 2);
        ck_assert_int_eq(loop_call_soon(loop, tu_count_cb, &count, NULL), 0);

        for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
                size_t size = sizes[i];
                union {
                        struct loop_metrics m;
                        unsigned char bytes[sizeof(struct loop_metrics) + 32];
                } buf;

                memset(&buf, 0xA5, sizeof(buf));
                buf.m.size = size;
                ck_assert_int_eq(loop_get_metrics(loop, &buf.m), 0);
                ck_assert_uint_eq(buf.m.size, size);
                /* The canary: every byte past the caller's size is untouched. */
                for (size_t j = size; j < sizeof(buf.bytes); j++)
                        ck_assert_msg(buf.bytes[j] == 0xA5, "size %zu: byte %zu written", size, j);
                if (size > offsetof(struct loop_metrics, iterations))
                        ck_assert_uint_eq(buf.m.iterations, 1);
                if (size > offsetof(struct loop_metrics, callbacks))
                        ck_assert_uint_eq(buf.m.callbacks, 2);
                if (size > offsetof(struct loop_metrics, handles_ready))
                        ck_assert_uint_eq(buf.m.handles_ready, 1);
        }

        /* A newer caller's longer struct: the known members, the rest untouched. */
        union {
                struct loop_metrics m;
                unsigned char bytes[sizeof(struct loop_metrics) + 32];
        } big;
        memset(&big, 0xA5, sizeof(big));
        big.m.size = sizeof(big);
        ck_assert_int_eq(loop_get_metrics(loop, &big.m), 0);
        ck_assert_uint_eq(big.m.size, sizeof(big));
        ck_assert_uint_eq(big.m.iterations, 1);
        ck_assert_uint_eq(big.m.fds, 0);
        for (size_t j = sizeof(struct loop_metrics); j < sizeof(big.bytes); j++)
                ck_assert_int_eq(big.bytes[j], 0xA5);

        ck_assert_int_eq(loop_run_once(loop, 0), 1);
        loop_unref(loop);
}
END_TEST

START_TEST(test_metrics_errors) {
        loop_t *loop = tu_loop_new();
        struct loop_metrics m = {.size = sizeof(m)};

        ck_assert_int_eq(loop_get_metrics(NULL, &m), -EINVAL);
        ck_assert_int_eq(loop_get_metrics(loop, NULL), -EINVAL);
        m.size = 0;
        ck_assert_int_eq(loop_get_metrics(loop, &m), -EINVAL);
        m.size = sizeof(size_t) - 1;
        ck_assert_int_eq(loop_get_metrics(loop, &m), -EINVAL);
        ck_assert_int_eq(loop_close(loop), 0);
        m.size = sizeof(m);
        ck_assert_int_eq(loop_get_metrics(loop, &m), -ESHUTDOWN);
        loop_unref(loop);
}
END_TEST

/* ---- dump ------------------------------------------------------------------ */

START_TEST(test_dump_empty) {
        loop_t *loop = tu_loop_new();
        struct dump d;
        char want[64], p[32];

        dump_loop(loop, &d);
        ck_assert_int_eq(d.n, 1);
        snprintf(want, sizeof(want), "loop %s ", ptr(loop, p));
        ck_assert_msg(starts_with(d.lines[0], want), "header \"%s\"", d.lines[0]);
        if (tu_is_proactor(loop)) {
                ck_assert(has_field(d.lines[0], "selector", "none"));
                ck_assert(has_field(d.lines[0], "proactor", tu_selector_name(loop)));
        } else
                ck_assert(has_field(d.lines[0], "selector", tu_selector_name(loop)));
        ck_assert(has_field(d.lines[0], "running", "0"));
        ck_assert(has_field(d.lines[0], "ready", "0"));
        ck_assert(has_field(d.lines[0], "timers", "0"));
        dump_free(&d);
        loop_unref(loop);
}
END_TEST

START_TEST(test_dump_ready) {
        loop_t *loop = tu_loop_new();
        loop_handle_t *h = NULL;
        int ud[4];
        const char *lines[8];
        char p[32];
        struct dump d;

        ck_assert_int_eq(loop_call_soon(loop, nop_cb, &ud[0], NULL), 0);
        ck_assert_int_eq(loop_call_soon(loop, other_nop_cb, &ud[1], &h), 0);
        ck_assert_int_eq(loop_call_soon(loop, nop_cb, &ud[2], NULL), 0);
        ck_assert_int_eq(loop_handle_cancel(h), 0);
        ck_assert_int_eq(loop_call_soon(loop, nop_cb, NULL, NULL), 0);

        dump_loop(loop, &d);
        ck_assert(starts_with(d.lines[0], "loop "));
        ck_assert(has_field(d.lines[0], "ready", "4"));
        ck_assert_int_eq(dump_select(&d, "ready ", lines, 8), 4);
        /* In run order, right after the header. */
        ck_assert_ptr_eq(d.lines[1], lines[0]);
        ck_assert(has_field(lines[0], "callback", ptr(fn_ptr_loop(nop_cb), p)));
        ck_assert(has_field(lines[0], "userdata", ptr(&ud[0], p)));
        ck_assert(has_field(lines[0], "cancelled", "0"));
        ck_assert(has_field(lines[1], "callback", ptr(fn_ptr_loop(other_nop_cb), p)));
        ck_assert(has_field(lines[1], "userdata", ptr(&ud[1], p)));
        ck_assert(has_field(lines[1], "cancelled", "1"));
        ck_assert(has_field(lines[2], "userdata", ptr(&ud[2], p)));
        ck_assert(has_field(lines[3], "userdata", ptr(NULL, p)));
        ck_assert(has_field(lines[3], "cancelled", "0"));
        dump_free(&d);

        /* Once run, they are gone. */
        ck_assert_int_eq(loop_run_once(loop, 0), 3);
        dump_loop(loop, &d);
        ck_assert_int_eq(d.n, 1);
        dump_free(&d);
        loop_handle_unref(h);
        loop_unref(loop);
}
END_TEST

START_TEST(test_dump_timers) {
        loop_t *loop = tu_loop_new();
        loop_handle_t *cancelled = NULL;
        int ud[6];
        const char *lines[8];
        char p[32];
        struct dump d;
        int64_t now, t0;

        now = loop_time_ns(loop);
        t0 = now + 5 * TU_SEC;
        ck_assert_int_eq(loop_call_at_ns(loop, now + 3 * TU_SEC, nop_cb, &ud[0], NULL), 0);
        ck_assert_int_eq(loop_call_at_ns(loop, now + 1 * TU_SEC, other_nop_cb, &ud[1], NULL), 0);
        ck_assert_int_eq(loop_call_at_ns(loop, t0, nop_cb, &ud[2], NULL), 0);
        ck_assert_int_eq(loop_call_at_ns(loop, now + 2 * TU_SEC, nop_cb, &ud[3], &cancelled), 0);
        ck_assert_int_eq(loop_call_at_ns(loop, t0, nop_cb, &ud[4], NULL), 0);   /* equal: after ud[2] */
        ck_assert_int_eq(loop_call_at_ns(loop, now + 4 * TU_SEC, nop_cb, &ud[5], NULL), 0);
        ck_assert_int_eq(loop_handle_cancel(cancelled), 0);

        dump_loop(loop, &d);
        ck_assert(has_field(d.lines[0], "timers", "5"));
        ck_assert_int_eq(dump_select(&d, "timer ", lines, 8), 5);
        /* Deadline order; equal deadlines in the order scheduled. */
        static const int order[] = {1, 0, 5, 2, 4};
        const int64_t wants[] = {now + TU_SEC, now + 3 * TU_SEC, now + 4 * TU_SEC, t0, t0};
        for (int i = 0; i < 5; i++) {
                ck_assert_msg(has_field(lines[i], "userdata", ptr(&ud[order[i]], p)), "line %d: \"%s\" (want %p)", i,
                              lines[i], (void *) &ud[order[i]]);
                int64_t when = field_i64(lines[i], "when_ns"), in = field_i64(lines[i], "in_ns");
                ck_assert_int_eq(when, wants[i]);
                ck_assert_int_gt(in, 0);
                ck_assert_int_le(in, when - now);
        }
        ck_assert(has_field(lines[0], "callback", ptr(fn_ptr_loop(other_nop_cb), p)));
        ck_assert(has_field(lines[1], "callback", ptr(fn_ptr_loop(nop_cb), p)));
        dump_free(&d);
        loop_handle_unref(cancelled);
        loop_unref(loop);
}
END_TEST

/*
 * Deadlines at both ends of int64 (loop_call_at_ns accepts any): in_ns is
 * when_ns - now saturated to int64, never a wrapped difference (a deadline
 * at INT64_MIN is overdue, not 292 years away).
 */
START_TEST(test_dump_extreme_deadlines) {
        loop_t *loop = tu_loop_new();
        const char *lines[4];
        struct dump d;
        int ud[2], count = 0;
        char p[32];

        ck_assert_int_eq(loop_call_at_ns(loop, INT64_MAX, nop_cb, &ud[1], NULL), 0);
        ck_assert_int_eq(loop_call_at_ns(loop, INT64_MIN, nop_cb, &ud[0], NULL), 0);
        dump_loop(loop, &d);
        ck_assert_int_eq(dump_select(&d, "timer ", lines, 4), 2);
        ck_assert(has_field(lines[0], "userdata", ptr(&ud[0], p)));
        ck_assert_int_eq(field_i64(lines[0], "when_ns"), INT64_MIN);
        ck_assert_msg(field_i64(lines[0], "in_ns") == INT64_MIN, "\"%s\": want in_ns=%" PRId64, lines[0], INT64_MIN);
        ck_assert(has_field(lines[1], "userdata", ptr(&ud[1], p)));
        ck_assert_int_eq(field_i64(lines[1], "when_ns"), INT64_MAX);
        ck_assert_int_gt(field_i64(lines[1], "in_ns"), INT64_MAX - loop_time_ns(loop) - 1);
        dump_free(&d);
        /* The overdue one runs, the other stays. */
        ck_assert_int_eq(loop_call_at_ns(loop, INT64_MIN, tu_count_cb, &count, NULL), 0);
        ck_assert_int_eq(loop_run_once(loop, 0), 2);
        ck_assert_int_eq(count, 1);
        loop_unref(loop);
}
END_TEST

START_TEST(test_dump_fds) {
        loop_t *loop = tu_loop_new();
        int a[2], b[2], ud[3];
        const char *lines[8];
        char want[64], p[32];
        struct dump d;

        tu_socketpair(a);
        tu_socketpair(b);
        ck_assert_int_eq(loop_add_reader(loop, a[0], nop_io_cb, &ud[0]), 0);
        ck_assert_int_eq(loop_add_writer(loop, b[1], drain_io_cb, &ud[1]), 0);

        dump_loop(loop, &d);
        /* The loop's own wake-up descriptor is not listed. */
        ck_assert_int_eq(dump_select(&d, "fd ", lines, 8), 2);
        /* Ascending descriptor numbers. */
        int lo = a[0] < b[1] ? a[0] : b[1];
        snprintf(want, sizeof(want), "fd %d ", lo);
        ck_assert_msg(starts_with(lines[0], want), "\"%s\"", lines[0]);
        for (int i = 0; i < 2; i++) {
                const char *line = lines[i];
                if (atoi(line + 3) == a[0]) {
                        ck_assert(has_field(line, "registered", "r"));
                        ck_assert(has_field(line, "reader", ptr(fn_ptr_io(nop_io_cb), p)));
                        ck_assert(has_field(line, "reader_userdata", ptr(&ud[0], p)));
                        ck_assert_ptr_eq(strstr(line, "writer"), NULL);
                } else {
                        ck_assert_int_eq(atoi(line + 3), b[1]);
                        ck_assert(has_field(line, "registered", "w"));
                        ck_assert(has_field(line, "writer", ptr(fn_ptr_io(drain_io_cb), p)));
                        ck_assert(has_field(line, "writer_userdata", ptr(&ud[1], p)));
                        ck_assert_ptr_eq(strstr(line, "reader"), NULL);
                }
        }
        dump_free(&d);

        /* Both on one descriptor; "registered" shows what the backend watches, applied lazily. */
        ck_assert_int_eq(loop_add_writer(loop, a[0], drain_io_cb, &ud[2]), 0);
        ck_assert_int_eq(loop_remove_writer(loop, b[1]), 1);
        ck_assert_int_ge(loop_get_timeout_ns(loop), -1);       /* applies pending changes */
        dump_loop(loop, &d);
        ck_assert_int_eq(dump_select(&d, "fd ", lines, 8), 1);
        snprintf(want, sizeof(want), "fd %d ", a[0]);
        ck_assert(starts_with(lines[0], want));
        ck_assert(has_field(lines[0], "registered", "rw"));
        ck_assert(has_field(lines[0], "reader_userdata", ptr(&ud[0], p)));
        ck_assert(has_field(lines[0], "writer_userdata", ptr(&ud[2], p)));
        /* Reader fields come before writer fields. */
        const char *rpos = strstr(lines[0], " reader="), *wpos = strstr(lines[0], " writer=");
        ck_assert(rpos && wpos && rpos < wpos);
        dump_free(&d);

        ck_assert_int_eq(loop_remove_reader(loop, a[0]), 1);
        ck_assert_int_eq(loop_remove_writer(loop, a[0]), 1);
        dump_loop(loop, &d);
        ck_assert_int_eq(dump_select(&d, "fd ", lines, 8), 0);
        dump_free(&d);
        loop_unref(loop);
        tu_close_pair(a);
        tu_close_pair(b);
}
END_TEST

/* Dumping from inside a callback: the header says the loop is running. */
static int dump_cb(loop_t *loop, void *userdata) {
        struct dump *d = userdata;

        dump_loop(loop, d);
        return 0;
}

START_TEST(test_dump_running) {
        loop_t *loop = tu_loop_new();
        struct dump d = {0};

        ck_assert_int_eq(loop_call_soon(loop, dump_cb, &d, NULL), 0);
        ck_assert_int_eq(loop_run_once(loop, 0), 1);
        ck_assert_ptr_ne(d.text, NULL);
        ck_assert(has_field(d.lines[0], "running", "1"));
        /* The running callback has left the queue. */
        ck_assert(has_field(d.lines[0], "ready", "0"));
        dump_free(&d);
        loop_unref(loop);
}
END_TEST

/* The dump goes to a pipe just as well (any writable descriptor). */
START_TEST(test_dump_pipe) {
        loop_t *loop = tu_loop_new();
        int p[2];
        char buf[4096];
        ssize_t n;

        ck_assert_int_eq(pipe(p), 0);
        ck_assert_int_eq(loop_call_soon(loop, nop_cb, NULL, NULL), 0);
        ck_assert_int_eq(loop_dump(loop, p[1]), 0);
        n = read(p[0], buf, sizeof(buf) - 1);
        ck_assert_int_gt(n, 0);
        buf[n] = '\0';
        ck_assert(starts_with(buf, "loop "));
        ck_assert_ptr_ne(strstr(buf, "\nready callback="), NULL);
        ck_assert_int_eq(buf[n - 1], '\n');
        /* The caller's descriptor stays open. */
        ck_assert_int_eq(write(p[1], "x", 1), 1);
        tu_close_pair(p);
        loop_unref(loop);
}
END_TEST

START_TEST(test_dump_errors) {
        loop_t *loop = tu_loop_new();
        int p[2];

        ck_assert_int_eq(loop_dump(NULL, 1), -EINVAL);
        ck_assert_int_eq(loop_dump(loop, -1), -EBADF);
        /* A descriptor number that is not open. */
        ck_assert_int_eq(pipe(p), 0);
        ck_assert_int_eq(close(p[1]), 0);
        ck_assert_int_eq(loop_dump(loop, p[1]), -EBADF);
        ck_assert_int_eq(close(p[0]), 0);
        ck_assert_int_eq(loop_close(loop), 0);
        ck_assert_int_eq(loop_dump(loop, 1), -ESHUTDOWN);
        loop_unref(loop);
}
END_TEST

/* ---- embedding: loop_get_timeout_ns ------------------------------------------ */

START_TEST(test_timeout) {
        loop_t *loop = tu_loop_new();
        loop_handle_t *t = NULL, *soon = NULL;
        int sv[2];
        int64_t timeout;

        tu_socketpair(sv);
        /* Nothing scheduled: block for as long as you like. */
        ck_assert_int_eq(loop_get_timeout_ns(loop), -1);
        /* Readers do not bound the wait: the descriptor does that. */
        ck_assert_int_eq(loop_add_reader(loop, sv[0], nop_io_cb, NULL), 0);
        ck_assert_int_eq(loop_get_timeout_ns(loop), -1);

        /* One timer: at most its delay, and more than 0. */
        ck_assert_int_eq(loop_call_later_ns(loop, 10 * TU_SEC, nop_cb, NULL, &t), 0);
        timeout = loop_get_timeout_ns(loop);
        ck_assert_int_gt(timeout, 9 * TU_SEC);
        ck_assert_int_le(timeout, 10 * TU_SEC);

        /* A ready callback: do not block. */
        ck_assert_int_eq(loop_call_soon(loop, nop_cb, NULL, &soon), 0);
        ck_assert_int_eq(loop_get_timeout_ns(loop), 0);
        ck_assert_int_eq(loop_run_once(loop, 0), 1);
        timeout = loop_get_timeout_ns(loop);
        ck_assert_int_gt(timeout, 0);
        ck_assert_int_le(timeout, 10 * TU_SEC);

        /* A pending stop: do not block either. */
        ck_assert_int_eq(loop_stop(loop), 0);
        ck_assert_int_eq(loop_get_timeout_ns(loop), 0);
        ck_assert_int_eq(loop_run_once(loop, 0), 0);

        /* A timer already due: 0. */
        ck_assert_int_eq(loop_call_later_ns(loop, -TU_SEC, nop_cb, NULL, NULL), 0);
        ck_assert_int_eq(loop_get_timeout_ns(loop), 0);
        ck_assert_int_eq(loop_run_once(loop, 0), 1);

        /* The earliest of several timers. */
        ck_assert_int_eq(loop_call_later_ns(loop, 100 * TU_MSEC, nop_cb, NULL, NULL), 0);
        timeout = loop_get_timeout_ns(loop);
        ck_assert_int_gt(timeout, 0);
        ck_assert_int_le(timeout, 100 * TU_MSEC);

        /* Without timers or callbacks, back to -1. */
        ck_assert_int_eq(loop_handle_cancel(t), 0);
        while (get_metrics(loop).timers > 0)
                ck_assert_int_ge(loop_run_once(loop, -1), 0);
        ck_assert_int_eq(loop_get_timeout_ns(loop), -1);

        ck_assert_int_eq(loop_get_timeout_ns(NULL), -EINVAL);
        ck_assert_int_eq(loop_remove_reader(loop, sv[0]), 1);
        ck_assert_int_eq(loop_close(loop), 0);
        ck_assert_int_eq(loop_get_timeout_ns(loop), -ESHUTDOWN);
        loop_handle_unref(t);
        loop_handle_unref(soon);
        loop_unref(loop);
        tu_close_pair(sv);
}
END_TEST

/* ---- embedding: loop_fileno ---------------------------------------------------- */

START_TEST(test_fileno_support) {
        loop_t *loop = tu_loop_new();
        int fd = loop_fileno(loop);

        if (is_epoll(loop)) {
                ck_assert_int_ge(fd, 0);
                ck_assert_int_eq(loop_fileno(loop), fd);        /* stable */
                ck_assert_int_ge(fcntl(fd, F_GETFD), 0);
                /* Nothing to do: not readable. */
                ck_assert_int_eq(poll_readable(fd, 0), 0);
        } else {
                ck_assert_int_eq(fd, -EOPNOTSUPP);
        }
        ck_assert_int_eq(loop_fileno(NULL), -EINVAL);
        ck_assert_int_eq(loop_close(loop), 0);
        ck_assert_int_eq(loop_fileno(loop), -ESHUTDOWN);
        loop_unref(loop);
}
END_TEST

START_TEST(test_fileno_io) {
        loop_t *loop = tu_loop_new();
        int sv[2], fired = 0, fd = loop_fileno(loop);

        if (!is_epoll(loop)) {
                ck_assert_int_eq(fd, -EOPNOTSUPP);
                loop_unref(loop);
                return;
        }
        tu_socketpair(sv);
        ck_assert_int_eq(loop_add_reader(loop, sv[0], drain_io_cb, &fired), 0);
        ck_assert_int_eq(loop_get_timeout_ns(loop), -1);
        ck_assert_int_eq(poll_readable(fd, 0), 0);

        tu_write_byte(sv[1]);
        ck_assert_int_eq(poll_readable(fd, 5000), 1);
        ck_assert_int_eq(loop_run_once(loop, 0), 1);
        ck_assert_int_eq(fired, 1);
        /* Drained: quiet again. */
        ck_assert_int_eq(poll_readable(fd, 0), 0);

        ck_assert_int_eq(loop_remove_reader(loop, sv[0]), 1);
        loop_unref(loop);
        tu_close_pair(sv);
}
END_TEST

struct poster {
        loop_t *loop;
        int *counter;
        int64_t delay_ns;
};

static void *poster_main(void *userdata) {
        struct poster *p = userdata;

        tu_sleep_ns(p->delay_ns);
        if (loop_call_soon_threadsafe(p->loop, tu_count_cb, p->counter, NULL) < 0)
                abort();
        return NULL;
}

START_TEST(test_fileno_threadsafe) {
        loop_t *loop = tu_loop_new();
        int count = 0, fd = loop_fileno(loop);
        struct poster p = {.loop = loop, .counter = &count, .delay_ns = 20 * TU_MSEC};
        pthread_t thread;

        if (!is_epoll(loop)) {
                ck_assert_int_eq(fd, -EOPNOTSUPP);
                loop_unref(loop);
                return;
        }
        ck_assert_int_eq(loop_get_timeout_ns(loop), -1);
        ck_assert_int_eq(pthread_create(&thread, NULL, poster_main, &p), 0);
        /* The outer wait is woken by the other thread's post. */
        ck_assert_int_eq(poll_readable(fd, 5000), 1);
        ck_assert_int_eq(pthread_join(thread, NULL), 0);
        ck_assert_int_eq(loop_run_once(loop, 0), 1);
        ck_assert_int_eq(count, 1);
        ck_assert_int_eq(poll_readable(fd, 0), 0);
        loop_unref(loop);
}
END_TEST

/*
 * The "prepare" rule: registration changes are applied lazily, before the
 * loop's own wait; an outer loop waits instead, so loop_get_timeout_ns()
 * applies them. Adding a writer to a descriptor that already has a reader
 * is such a deferred change.
 */
START_TEST(test_fileno_prepare) {
        loop_t *loop = tu_loop_new();
        int sv[2], rd = 0, wr = 0, fd = loop_fileno(loop);

        if (!is_epoll(loop)) {
                ck_assert_int_eq(fd, -EOPNOTSUPP);
                loop_unref(loop);
                return;
        }
        tu_socketpair(sv);
        ck_assert_int_eq(loop_add_reader(loop, sv[0], drain_io_cb, &rd), 0);
        ck_assert_int_eq(loop_run_once(loop, 0), 0);

        /* sv[0] is writable at once; the backend does not know yet. */
        ck_assert_int_eq(loop_add_writer(loop, sv[0], tu_io_count_cb, &wr), 0);
        ck_assert_int_eq(poll_readable(fd, 0), 0);
        ck_assert_int_eq(loop_get_timeout_ns(loop), -1);
        ck_assert_int_eq(poll_readable(fd, 5000), 1);
        ck_assert_int_eq(loop_run_once(loop, 0), 1);
        ck_assert_int_eq(wr, 1);
        ck_assert_int_eq(rd, 0);

        /* Removing it is a deferred change too: after prepare the outer wait is quiet. */
        ck_assert_int_eq(loop_remove_writer(loop, sv[0]), 1);
        ck_assert_int_eq(loop_get_timeout_ns(loop), -1);
        ck_assert_int_eq(poll_readable(fd, 0), 0);

        ck_assert_int_eq(loop_remove_reader(loop, sv[0]), 1);
        loop_unref(loop);
        tu_close_pair(sv);
}
END_TEST

/* The whole recipe: an outer poll(2) loop drives libloop and its own descriptor. */
struct embed_state {
        int timer, posted, reader, own;
};

static int embed_timer_cb(loop_t *loop, void *userdata) {
        struct embed_state *s = userdata;

        (void) loop;
        s->timer++;
        return 0;
}

static int embed_reader_cb(loop_t *loop, int fd, void *userdata) {
        struct embed_state *s = userdata;

        (void) loop;
        s->reader += (int) tu_drain(fd);
        return 0;
}

static int64_t ns_to_poll_ms(int64_t ns) {
        if (ns < 0)
                return -1;
        ns = (ns + TU_MSEC - 1) / TU_MSEC;
        return ns > INT_MAX ? INT_MAX : ns;
}

START_TEST(test_embed_outer_poll) {
        loop_t *loop = tu_loop_new();
        struct embed_state s = {0};
        int sv[2], own[2], fd = loop_fileno(loop);
        struct poster p = {.loop = loop, .counter = &s.posted, .delay_ns = 30 * TU_MSEC};
        pthread_t thread;
        int64_t deadline;

        if (!is_epoll(loop)) {
                ck_assert_int_eq(fd, -EOPNOTSUPP);
                loop_unref(loop);
                return;
        }
        tu_socketpair(sv);
        tu_pipe(own);
        ck_assert_int_eq(loop_call_later_ns(loop, 20 * TU_MSEC, embed_timer_cb, &s, NULL), 0);
        ck_assert_int_eq(loop_add_reader(loop, sv[0], embed_reader_cb, &s), 0);
        ck_assert_int_eq(pthread_create(&thread, NULL, poster_main, &p), 0);
        tu_write_byte(sv[1]);
        tu_write_byte(own[1]);

        deadline = tu_now_ns() + 10 * TU_SEC;
        while ((s.timer == 0 || s.posted == 0 || s.reader == 0 || s.own == 0) && tu_now_ns() < deadline) {
                struct pollfd pfd[2] = {{.fd = fd, .events = POLLIN}, {.fd = own[0], .events = POLLIN}};
                int64_t timeout = loop_get_timeout_ns(loop);
                int n;

                ck_assert_int_ge(timeout, -1);
                n = poll(pfd, 2, (int) ns_to_poll_ms(timeout));
                ck_assert(n >= 0 || errno == EINTR);
                if (n > 0 && (pfd[1].revents & POLLIN))
                        s.own += (int) tu_drain(own[0]);
                /* Always: timers are due even when no descriptor is. */
                ck_assert_int_ge(loop_run_once(loop, 0), 0);
        }
        ck_assert_int_eq(pthread_join(thread, NULL), 0);
        ck_assert_int_eq(s.timer, 1);
        ck_assert_int_eq(s.posted, 1);
        ck_assert_int_eq(s.reader, 1);
        ck_assert_int_eq(s.own, 1);
        ck_assert_int_eq(loop_remove_reader(loop, sv[0]), 1);
        loop_unref(loop);
        tu_close_pair(sv);
        tu_close_pair(own);
}
END_TEST

static Suite *introspect_suite(void) {
        Suite *s = suite_create("introspect");
        TCase *tc;

        tc = tu_tcase(s, "metrics");
        tcase_add_test(tc, test_metrics_fresh);
        tcase_add_test(tc, test_metrics_counts);
        tcase_add_test(tc, test_metrics_events);
        tcase_add_test(tc, test_metrics_wait_ns);
        tcase_add_test(tc, test_metrics_state);
        tcase_add_test(tc, test_metrics_old_size);
        tcase_add_test(tc, test_metrics_errors);

        tc = tu_tcase(s, "dump");
        tcase_add_test(tc, test_dump_empty);
        tcase_add_test(tc, test_dump_ready);
        tcase_add_test(tc, test_dump_timers);
        tcase_add_test(tc, test_dump_extreme_deadlines);
        tcase_add_test(tc, test_dump_fds);
        tcase_add_test(tc, test_dump_running);
        tcase_add_test(tc, test_dump_pipe);
        tcase_add_test(tc, test_dump_errors);

        tc = tu_tcase(s, "embed");
        tcase_add_test(tc, test_timeout);
        tcase_add_test(tc, test_fileno_support);
        tcase_add_test(tc, test_fileno_io);
        tcase_add_test(tc, test_fileno_threadsafe);
        tcase_add_test(tc, test_fileno_prepare);
        tcase_add_test(tc, test_embed_outer_poll);
        return s;
}

int main(void) {
        return tu_run_suite(introspect_suite());
}
