/* SPDX-License-Identifier: MIT */
/*
 * bench.h: what every benchmark program shares.
 *
 * Each bench_<library> program runs one workload per invocation
 * ("bench_libev pipe -n 1000 -a 100"), once untimed to warm up and then
 * -r times (coldtimers, memtimers, memfds, lateness and http have no
 * untimed run: see their sections), and prints one line per measured
 * quantity:
 *
 *     R <metric> <sample> <sample> ...     one sample per run
 *     N <text>                             a note for the reader
 *     I <text>                             what was measured (version, backend)
 *     P <text>                             the run's parameters (for a human
 *                                          running a program by hand; the
 *                                          driver's titles say the same)
 *
 * bench/run-bench takes the medians, the ratios to libloop and prints the
 * tables. Keeping the workload logic (what a callback does with its byte,
 * its counter, its message) here and only the event-library calls in the
 * programs makes every library do the same work per callback.
 *
 * Everything is static inline: one header, no library, no unused-function
 * warnings in the programs that use only part of it.
 */
#ifndef BENCH_H
#define BENCH_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif

#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BENCH_MAX_REPS 64

/* For the phase functions a program hands to timer_bench and friends: kept
 * out of line so that a profile (callgrind_annotate --inclusive=yes) shows
 * each phase as one function. */
#define BENCH_NOINLINE __attribute__((noinline))

/* ---- dying, printing --------------------------------------------------- */

/* The message on stderr, then exit(code): 2 a failure, 77 a skipped cell. */
static inline void bench_vexit(int code, const char *fmt, va_list ap)
        __attribute__((format(printf, 2, 0), noreturn));
static inline void bench_vexit(int code, const char *fmt, va_list ap)
{
        fflush(stdout);
        fputs("bench: ", stderr);
        vfprintf(stderr, fmt, ap);
        fputc('\n', stderr);
        exit(code);
}

static inline void bench_die(const char *fmt, ...)
        __attribute__((format(printf, 1, 2), noreturn));
static inline void bench_die(const char *fmt, ...)
{
        va_list ap;

        va_start(ap, fmt);
        bench_vexit(2, fmt, ap);
}

/* A library call returning a negative errno (libloop, libuv) or -1 (libev,
 * libevent, POSIX): die with the call's text. */
#define BENCH_CHECK(expr)                                                     \
        do {                                                                  \
                long bench_r_ = (long)(expr);                                 \
                if (bench_r_ < 0)                                             \
                        bench_die("%s:%d: %s failed (%ld, errno %s)",         \
                                  __FILE__, __LINE__, #expr, bench_r_,        \
                                  strerror(errno));                           \
        } while (0)

static inline void bench_note(const char *fmt, ...)
        __attribute__((format(printf, 1, 2)));
static inline void bench_note(const char *fmt, ...)
{
        va_list ap;

        fputs("N ", stdout);
        va_start(ap, fmt);
        vprintf(fmt, ap);
        va_end(ap);
        fputc('\n', stdout);
}

static inline void bench_param(const char *fmt, ...)
        __attribute__((format(printf, 1, 2)));
static inline void bench_param(const char *fmt, ...)
{
        va_list ap;

        fputs("P ", stdout);
        va_start(ap, fmt);
        vprintf(fmt, ap);
        va_end(ap);
        fputc('\n', stdout);
}

static inline void bench_info(const char *fmt, ...)
        __attribute__((format(printf, 1, 2)));
static inline void bench_info(const char *fmt, ...)
{
        va_list ap;

        fputs("I ", stdout);
        va_start(ap, fmt);
        vprintf(fmt, ap);
        va_end(ap);
        fputc('\n', stdout);
}

struct bench_series {
        const char *metric;
        int n;
        double v[BENCH_MAX_REPS];
};

static inline void bench_add(struct bench_series *s, double v)
{
        if (s->n < BENCH_MAX_REPS)
                s->v[s->n++] = v;
}

static inline void bench_print(const struct bench_series *s)
{
        printf("R %s", s->metric);
        for (int i = 0; i < s->n; i++)
                printf(" %.6g", s->v[i]);
        putchar('\n');
        fflush(stdout);
}

static inline int bench_cmp_double(const void *a, const void *b)
{
        double x = *(const double *)a, y = *(const double *)b;

        return (x > y) - (x < y);
}

/* Median of n samples (the programs print all samples; this is for their
 * own diagnostics and for anyone reusing the header). */
static inline double bench_median(const double *v, int n)
{
        double tmp[BENCH_MAX_REPS];

        if (n <= 0)
                return 0.0;
        if (n > BENCH_MAX_REPS)
                n = BENCH_MAX_REPS;
        memcpy(tmp, v, (size_t)n * sizeof(*tmp));
        qsort(tmp, (size_t)n, sizeof(*tmp), bench_cmp_double);
        return n % 2 ? tmp[n / 2] : (tmp[n / 2 - 1] + tmp[n / 2]) / 2.0;
}

/* ---- time ---------------------------------------------------------------- */

static inline uint64_t bench_now_ns(void)
{
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static inline void bench_sleep_until_ns(uint64_t deadline)
{
        uint64_t now;

        while ((now = bench_now_ns()) < deadline) {
                uint64_t d = deadline - now;
                struct timespec ts = {
                        .tv_sec = (time_t)(d / 1000000000u),
                        .tv_nsec = (long)(d % 1000000000u),
                };
                nanosleep(&ts, NULL);
        }
}

/* ---- random numbers: xorshift64*, fixed seed ----------------------------- */

#define BENCH_SEED UINT64_C(0x5eed1e55c0ffee01)

struct bench_rng {
        uint64_t s;
};

static inline void bench_rng_seed(struct bench_rng *r, uint64_t seed)
{
        r->s = seed ? seed : UINT64_C(0x9e3779b97f4a7c15);
}

static inline uint64_t bench_rng_next(struct bench_rng *r)
{
        uint64_t x = r->s;

        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        r->s = x;
        return x * UINT64_C(0x2545f4914f6cdd1d);
}

/* Uniform in [lo, hi]; the modulo bias is irrelevant at these ranges. */
static inline uint64_t bench_rng_range(struct bench_rng *r, uint64_t lo,
                                       uint64_t hi)
{
        return lo + bench_rng_next(r) % (hi - lo + 1);
}

/* ---- command line --------------------------------------------------------- */

struct bench_opts {
        const char *workload;   /* pipe timers soon ... (bench_usage) */
        long n;                 /* -n: pairs, timers, callbacks, posts, trips */
        long active;            /* -a: pipe ring active tokens */
        long writes;            /* -w: pipe ring writes per run */
        long per_pass;          /* -p: call_soon callbacks per loop pass */
        long size;              /* -s: echo message size in bytes */
        int reps;               /* -r: measured runs (one warm-up run more) */
        int variant;            /* -q: library-specific variant (see program) */
        int no_warmup;          /* -z: no untimed warm-up run (for callgrind) */
        const char *selector;   /* -S: libloop selector name */
        const char *tls_dir;    /* -k: TLS, DIR/cert.pem + DIR/key.pem (trips, stream) */
};

static inline void bench_usage(const char *prog)
{
        fprintf(stderr,
                "usage: %s WORKLOAD [-n N] [-a ACTIVE] [-w WRITES] [-p PER_PASS]\n"
                "          [-s SIZE] [-r REPS] [-q] [-z] [-S SELECTOR] [-k TLSDIR]\n"
                "workloads: pipe timers soon xthread pingpong echo coldtimers\n"
                "           memtimers memfds lateness http trips stream\n",
                prog);
        exit(2);
}

static inline long bench_atol(const char *prog, const char *s)
{
        char *end;
        long v;

        errno = 0;
        v = strtol(s, &end, 10);
        if (errno || end == s || *end || v < 0)
                bench_usage(prog);
        return v;
}

static inline void bench_parse(int argc, char **argv, struct bench_opts *o)
{
        *o = (struct bench_opts){
                .n = -1, .active = 100, .writes = 1000, .per_pass = 1,
                .size = 64, .reps = 5, .variant = 0, .selector = NULL,
        };
        if (argc < 2)
                bench_usage(argv[0]);
        o->workload = argv[1];
        for (int i = 2; i < argc; i++) {
                const char *a = argv[i];
                const char *v = i + 1 < argc ? argv[i + 1] : NULL;

                if (a[0] != '-' || a[1] == '\0' || a[2] != '\0')
                        bench_usage(argv[0]);
                if (a[1] == 'q' || a[1] == 'z') {
                        *(a[1] == 'q' ? &o->variant : &o->no_warmup) = 1;
                        continue;
                }
                if (!v)
                        bench_usage(argv[0]);
                i++;
                switch (a[1]) {
                case 'n': o->n = bench_atol(argv[0], v); break;
                case 'a': o->active = bench_atol(argv[0], v); break;
                case 'w': o->writes = bench_atol(argv[0], v); break;
                case 'p': o->per_pass = bench_atol(argv[0], v); break;
                case 's': o->size = bench_atol(argv[0], v); break;
                case 'r': o->reps = (int)bench_atol(argv[0], v); break;
                case 'S': o->selector = v; break;
                case 'k': o->tls_dir = v; break;
                default: bench_usage(argv[0]);
                }
        }
        if (o->reps < 1 || o->reps > BENCH_MAX_REPS)
                bench_die("-r must be 1..%d", BENCH_MAX_REPS);
        if (o->active < 1 || o->per_pass < 1 || o->size < 1)
                bench_usage(argv[0]);
}

/* Every program's main(): parse the options, run the named workload. A
 * program passes the workloads it implements (plus any of its own, such as
 * libloop's "selectors"); an unknown name exits with 3. */
struct bench_workload {
        const char *name;
        void (*run)(void);
};

static inline int bench_main(int argc, char **argv, struct bench_opts *o,
                             const struct bench_workload *w, size_t n)
{
        bench_parse(argc, argv, o);
        for (size_t i = 0; i < n; i++)
                if (!strcmp(o->workload, w[i].name)) {
                        w[i].run();
                        return 0;
                }
        return 3;
}

/* The first value of a program's run counter: -1 is the untimed warm-up. */
static inline int bench_first_rep(const struct bench_opts *o)
{
        return o->no_warmup ? 0 : -1;
}

static inline long bench_default(long v, long dflt)
{
        return v < 0 ? dflt : v;
}

/* ---- file descriptors ------------------------------------------------------ */

/* Raise RLIMIT_NOFILE's soft limit to the hard limit; return the new limit. */
static inline long bench_raise_nofile(void)
{
        struct rlimit rl;

        if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
                bench_die("getrlimit: %s", strerror(errno));
        if (rl.rlim_cur != rl.rlim_max) {
                rl.rlim_cur = rl.rlim_max;
                if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
                        bench_die("setrlimit: %s", strerror(errno));
        }
        return rl.rlim_cur == RLIM_INFINITY ? 1L << 20 : (long)rl.rlim_cur;
}

static inline void bench_nonblock(int fd)
{
        int fl = fcntl(fd, F_GETFL);

        if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
                bench_die("fcntl O_NONBLOCK: %s", strerror(errno));
}

/* ---- workload 1: the pipe ring ---------------------------------------------
 *
 * n socketpairs; pair i is read at fds[2i] and written at fds[2i+1]. A run
 * writes one byte into `active` pairs spread evenly round the ring; each
 * read callback takes its byte and, while the run still has writes to do,
 * passes a byte on to the next pair. The run is over when every byte
 * written (active + writes) has been read.
 */
struct ring {
        long n, active, writes_per_run;
        int *fds;
        long count;             /* bytes read in this run */
        long writes_left;       /* writes this run may still do */
        long target;            /* active + writes_per_run */
        long failures;
};

static inline void ring_open(struct ring *r, long n, long active, long writes)
{
        *r = (struct ring){ .n = n, .active = active, .writes_per_run = writes };
        if (active > n)
                bench_die("pipe ring: %ld active tokens for %ld pairs", active, n);
        r->fds = malloc(2 * (size_t)n * sizeof(int));
        if (!r->fds)
                bench_die("out of memory");
        for (long i = 0; i < n; i++) {
                if (socketpair(AF_UNIX, SOCK_STREAM, 0, &r->fds[2 * i]) < 0)
                        bench_die("socketpair #%ld: %s", i, strerror(errno));
                bench_nonblock(r->fds[2 * i]);
                bench_nonblock(r->fds[2 * i + 1]);
        }
}

static inline void ring_close(struct ring *r)
{
        for (long i = 0; i < 2 * r->n; i++)
                close(r->fds[i]);
        free(r->fds);
        r->fds = NULL;
}

/* The largest ring RLIMIT_NOFILE allows, keeping `headroom` descriptors
 * for stdio, the loop's own descriptors and the libraries' internals. */
#define RING_HEADROOM 200
static inline long ring_max_pairs(long headroom)
{
        long lim = bench_raise_nofile();

        return (lim - headroom) / 2;
}

static inline void ring_start(struct ring *r)
{
        long space = r->n / r->active;

        r->count = 0;
        r->writes_left = r->writes_per_run;
        r->target = r->active + r->writes_per_run;
        for (long i = 0; i < r->active; i++)
                if (send(r->fds[2 * (i * space) + 1], "e", 1, 0) != 1)
                        r->failures++;
}

/* The body of every library's read callback. Returns 1 when the run is
 * complete (the caller then stops its loop). */
static inline int ring_on_read(struct ring *r, long idx)
{
        unsigned char ch;
        long next;

        if (recv(r->fds[2 * idx], &ch, 1, 0) == 1)
                r->count++;
        else
                r->failures++;
        if (r->writes_left > 0) {
                next = idx + 1 == r->n ? 0 : idx + 1;
                if (send(r->fds[2 * next + 1], "e", 1, 0) != 1)
                        r->failures++;
                r->writes_left--;
        }
        return r->count == r->target;
}

static inline void ring_finish(const struct ring *r)
{
        if (r->failures)
                bench_die("pipe ring: %ld failed reads/writes", r->failures);
        if (r->count != r->target)
                bench_die("pipe ring: read %ld of %ld bytes", r->count, r->target);
}

/* The body of a program's `pipe` workload, with the library's part as
 * callbacks: setup (register every read watcher once), resetup (the
 * per-run stop/start of every watcher), flush (one non-blocking loop pass
 * so that registration changes a library applies lazily are paid here),
 * run (run the loop until ring_on_read said the run is complete). */
struct ring_ops {
        void (*setup)(struct ring *r);
        void (*resetup)(struct ring *r);
        void (*flush)(struct ring *r);
        void (*run)(struct ring *r);
};

static inline void ring_bench(const struct bench_opts *o,
                              const struct ring_ops *ops, struct ring *r)
{
        struct bench_series run = { .metric = "run" };
        struct bench_series all = { .metric = "all" };
        long n = o->n;

        if (n == 0)
                n = ring_max_pairs(RING_HEADROOM);
        else if (n < 0)
                n = 1000;
        ring_open(r, n, o->active, o->writes);
        bench_param("pairs=%ld active=%ld writes=%ld", n, o->active, o->writes);
        ops->setup(r);
        ops->flush(r);
        for (int rep = bench_first_rep(o); rep < o->reps; rep++) {
                uint64_t t0, t1, t2;

                t0 = bench_now_ns();
                ops->resetup(r);
                ops->flush(r);
                t1 = bench_now_ns();
                ring_start(r);
                ops->run(r);
                t2 = bench_now_ns();
                ring_finish(r);
                if (rep >= 0) {
                        bench_add(&run, (double)(t2 - t1) / 1e3);
                        bench_add(&all, (double)(t2 - t0) / 1e3);
                }
        }
        bench_print(&run);
        bench_print(&all);
}

/* ---- workload 2: timers ------------------------------------------------------ */

#define TIMER_MIN_MS 1
#define TIMER_MAX_MS 1000

/* The same delays, in whole milliseconds (libuv's unit), for every library. */
static inline uint32_t *timer_delays(long n)
{
        struct bench_rng rng;
        uint32_t *d = malloc((size_t)n * sizeof(*d));

        if (!d)
                bench_die("out of memory");
        bench_rng_seed(&rng, BENCH_SEED);
        for (long i = 0; i < n; i++)
                d[i] = (uint32_t)bench_rng_range(&rng, TIMER_MIN_MS, TIMER_MAX_MS);
        return d;
}

/* Library part of the timer workload. schedule: start timer i with delay
 * d[i] ms (the loop is not run in between); fire: run the loop until
 * *fired == n; cancel: stop every timer; release: free whatever schedule
 * allocated that the library does not free itself (untimed). */
struct timer_ops {
        void (*schedule)(long n, const uint32_t *d);
        void (*fire)(long n);
        void (*cancel)(long n);
        void (*release)(long n);        /* after the cancel, timed */
        void (*release_fired)(long n);  /* after the fire, untimed (NULL: release) */
};

static long timer_fired;

static inline void timer_bench(const struct bench_opts *o,
                               const struct timer_ops *ops)
{
        struct bench_series sched = { .metric = "schedule" };
        struct bench_series fire = { .metric = "fire" };
        struct bench_series cancel = { .metric = "cancel" };
        struct bench_series rel = { .metric = "release" };
        long n = bench_default(o->n, 1000000);
        uint32_t *d = timer_delays(n);

        bench_param("timers=%ld delays uniform %d..%d ms (xorshift64*, fixed seed)",
                   n, TIMER_MIN_MS, TIMER_MAX_MS);
        for (int rep = bench_first_rep(o); rep < o->reps; rep++) {
                uint64_t t0, t1, t2, t3;

                /* schedule n, sleep past the last deadline, fire n */
                t0 = bench_now_ns();
                ops->schedule(n, d);
                t1 = bench_now_ns();
                bench_sleep_until_ns(t1 + (uint64_t)(TIMER_MAX_MS + 5) * 1000000u);
                timer_fired = 0;
                t2 = bench_now_ns();
                ops->fire(n);
                t3 = bench_now_ns();
                if (timer_fired != n)
                        bench_die("timers: %ld of %ld fired", timer_fired, n);
                if (ops->release_fired)
                        ops->release_fired(n);
                else if (ops->release)
                        ops->release(n);
                if (rep >= 0) {
                        bench_add(&sched, (double)(t1 - t0) / (double)n);
                        bench_add(&fire, (double)(t3 - t2) / (double)n);
                }

                /* schedule n again (untimed), cancel n (timed) */
                timer_fired = 0;
                ops->schedule(n, d);
                t0 = bench_now_ns();
                ops->cancel(n);
                t1 = bench_now_ns();
                if (ops->release)
                        ops->release(n);
                t2 = bench_now_ns();
                if (rep >= 0) {
                        bench_add(&cancel, (double)(t1 - t0) / (double)n);
                        if (ops->release)
                                bench_add(&rel, (double)(t2 - t1) / (double)n);
                }
                if (timer_fired)
                        bench_die("timers: %ld cancelled timers fired", timer_fired);
        }
        bench_print(&sched);
        bench_print(&fire);
        bench_print(&cancel);
        if (rel.n)
                bench_print(&rel);
        free(d);
}

/* ---- workload 3: call_soon --------------------------------------------------
 *
 * A callback counts itself and, while fewer than `target` callbacks have been
 * queued (the seeds included), queues itself again: exactly `target` run,
 * `per_pass` of them in each loop pass.
 */
struct soon {
        long count, queued, target;
};

static inline void soon_reset(struct soon *s, long target, long per_pass)
{
        s->count = 0;
        s->target = target;
        s->queued = per_pass < target ? per_pass : target;
}

/* Returns 1 if the callback must queue itself again. */
static inline int soon_step(struct soon *s)
{
        s->count++;
        if (s->queued < s->target) {
                s->queued++;
                return 1;
        }
        return 0;
}

/* ---- workload 4: a mutex-protected queue of (fn, arg) -------------------------
 *
 * For the "every post runs" variants of the libraries whose wake-up call
 * coalesces (uv_async_send, ev_async_send) and for the raw floor: the
 * poster appends under a mutex, the loop thread swaps the whole vector out
 * and runs it.
 */
struct mq_item {
        void (*fn)(void *arg);
        void *arg;
};

struct mq {
        pthread_mutex_t mu;
        struct mq_item *v, *spare;
        size_t len, cap, spare_cap;
};

static inline void mq_init(struct mq *q)
{
        pthread_mutex_init(&q->mu, NULL);
        q->len = 0;
        q->cap = q->spare_cap = 1024;
        q->v = malloc(q->cap * sizeof(*q->v));
        q->spare = malloc(q->spare_cap * sizeof(*q->spare));
        if (!q->v || !q->spare)
                bench_die("out of memory");
}

static inline void mq_fini(struct mq *q)
{
        free(q->v);
        free(q->spare);
        pthread_mutex_destroy(&q->mu);
}

/* Any thread. Returns 1 if the queue was empty (the loop may be asleep). */
static inline int mq_push(struct mq *q, void (*fn)(void *), void *arg)
{
        int was_empty;

        pthread_mutex_lock(&q->mu);
        if (q->len == q->cap) {
                struct mq_item *nv = realloc(q->v, 2 * q->cap * sizeof(*nv));

                if (!nv)
                        bench_die("out of memory");
                q->v = nv;
                q->cap *= 2;
        }
        q->v[q->len++] = (struct mq_item){ fn, arg };
        was_empty = q->len == 1;
        pthread_mutex_unlock(&q->mu);
        return was_empty;
}

/* Loop thread: run everything queued so far; returns how many ran. */
static inline size_t mq_run(struct mq *q)
{
        struct mq_item *batch;
        size_t len, cap;

        pthread_mutex_lock(&q->mu);
        batch = q->v;
        len = q->len;
        cap = q->cap;
        q->v = q->spare;
        q->cap = q->spare_cap;
        q->len = 0;
        pthread_mutex_unlock(&q->mu);
        for (size_t i = 0; i < len; i++)
                batch[i].fn(batch[i].arg);
        q->spare = batch;
        q->spare_cap = cap;
        return len;
}

/* ---- workload 5: loopback TCP echo --------------------------------------------
 *
 * One client and one server socket, connected over 127.0.0.1, both watched
 * by the same loop in one thread. The client writes a message, the server
 * echoes whatever it reads, the client counts a round trip when the whole
 * message is back and sends the next one. Buffers are sized so that a
 * message always fits; should a write still come up short, the rest is
 * written after poll() (counted, and reported when it happens).
 */
#define ECHO_BUF (64 * 1024)

struct echo {
        int cfd, sfd;
        size_t size;
        long trips, target;
        size_t got;
        long short_writes;
        char *msg;
        char buf[ECHO_BUF];
};

static inline void echo_write_all(struct echo *e, int fd, const char *p, size_t len)
{
        while (len > 0) {
                ssize_t k = write(fd, p, len);

                if (k > 0) {
                        p += k;
                        len -= (size_t)k;
                        if (len)
                                e->short_writes++;
                } else if (k < 0 && errno == EAGAIN) {
                        struct pollfd pfd = { .fd = fd, .events = POLLOUT };

                        e->short_writes++;
                        poll(&pfd, 1, -1);
                } else if (k < 0 && errno == EINTR) {
                        continue;
                } else {
                        bench_die("echo write: %s", strerror(errno));
                }
        }
}

static inline void echo_open(struct echo *e, size_t size, long target)
{
        struct sockaddr_in sa = { .sin_family = AF_INET };
        socklen_t len = sizeof(sa);
        int one = 1, bufsz = 1 << 20, lfd;

        memset(e, 0, offsetof(struct echo, buf));
        e->size = size;
        e->target = target;
        e->msg = malloc(size);
        if (!e->msg)
                bench_die("out of memory");
        memset(e->msg, 'x', size);
        sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        lfd = socket(AF_INET, SOCK_STREAM, 0);
        if (lfd < 0 || bind(lfd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
            listen(lfd, 1) < 0 || getsockname(lfd, (struct sockaddr *)&sa, &len) < 0)
                bench_die("listen on 127.0.0.1: %s", strerror(errno));
        e->cfd = socket(AF_INET, SOCK_STREAM, 0);
        if (e->cfd < 0 || connect(e->cfd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
                bench_die("connect: %s", strerror(errno));
        e->sfd = accept(lfd, NULL, NULL);
        if (e->sfd < 0)
                bench_die("accept: %s", strerror(errno));
        close(lfd);
        for (int i = 0; i < 2; i++) {
                int fd = i ? e->sfd : e->cfd;

                setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
                setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &bufsz, sizeof(bufsz));
                setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &bufsz, sizeof(bufsz));
                bench_nonblock(fd);
        }
}

static inline void echo_close(struct echo *e)
{
        close(e->cfd);
        close(e->sfd);
        free(e->msg);
}

static inline void echo_start(struct echo *e)
{
        e->trips = 0;
        e->got = 0;
        echo_write_all(e, e->cfd, e->msg, e->size);
}

/* Server side: echo what arrived. */
static inline void echo_on_server(struct echo *e)
{
        ssize_t k = read(e->sfd, e->buf, sizeof(e->buf));

        if (k > 0)
                echo_write_all(e, e->sfd, e->buf, (size_t)k);
        else if (k == 0 || (errno != EAGAIN && errno != EINTR))
                bench_die("echo server read: %s", k ? strerror(errno) : "EOF");
}

/* Client side: returns 1 when the run's last round trip is complete. */
static inline int echo_on_client(struct echo *e)
{
        ssize_t k = read(e->cfd, e->buf, sizeof(e->buf));

        if (k <= 0) {
                if (k == 0 || (errno != EAGAIN && errno != EINTR))
                        bench_die("echo client read: %s", k ? strerror(errno) : "EOF");
                return 0;
        }
        e->got += (size_t)k;
        if (e->got < e->size)
                return 0;
        if (e->got > e->size)
                bench_die("echo: got %zu bytes back for a %zu-byte message",
                          e->got, e->size);
        e->got = 0;
        if (++e->trips == e->target)
                return 1;
        echo_write_all(e, e->cfd, e->msg, e->size);
        return 0;
}

/* Library part: setup registers both readers (echo_on_server for sfd,
 * echo_on_client for cfd) once; run runs the loop until echo_on_client
 * returned 1; teardown unregisters. */
struct echo_ops {
        void (*setup)(struct echo *e);
        void (*run)(struct echo *e);
        void (*teardown)(struct echo *e);
};

static inline void echo_bench(const struct bench_opts *o,
                              const struct echo_ops *ops, struct echo *e)
{
        struct bench_series rts = { .metric = "rtps" };
        long trips = bench_default(o->n, o->size > 4096 ? 10000 : 20000);

        echo_open(e, (size_t)o->size, trips);
        bench_param("message=%ld bytes, %ld round trips per run", o->size, trips);
        ops->setup(e);
        for (int rep = bench_first_rep(o); rep < o->reps; rep++) {
                uint64_t t0, t1;

                t0 = bench_now_ns();
                echo_start(e);
                ops->run(e);
                t1 = bench_now_ns();
                if (e->trips != trips)
                        bench_die("echo: %ld of %ld round trips", e->trips, trips);
                if (rep >= 0)
                        bench_add(&rts, (double)trips * 1e9 / (double)(t1 - t0));
        }
        ops->teardown(e);
        if (e->short_writes)
                bench_note("%ld short writes (finished with poll)", e->short_writes);
        bench_print(&rts);
        echo_close(e);
}

/* ---- workload 6: cold timers -------------------------------------------------
 *
 * What a user's first burst costs. The program creates its loop and starts
 * this with no untimed run before: run 0 schedules n timers on the fresh
 * loop (timed), cancels them all (timed, with whatever the caller must do
 * to let go of a timer: libloop's loop_handle_unref), then runs one
 * non-blocking loop pass (timed: where a library that removes cancelled
 * timers lazily pays for it). Runs 1..reps do the same again on the now
 * warm loop: the "warm" rows. The caller's storage (watcher structs, handle
 * pointers) is allocated and touched before run 0 by every program, so
 * that the cold run pays for the library's memory, not for the caller's
 * first page faults; with -z it is left untouched, and the cold run pays
 * for both (libuv's handles are touched by uv_timer_init either way).
 */
struct cold_timer_ops {
        void (*schedule)(long n, const uint32_t *d);
        void (*cancel)(long n);
        void (*pass)(void);
};

static inline void cold_timer_bench(const struct bench_opts *o,
                                    const struct cold_timer_ops *ops)
{
        struct bench_series cs = { .metric = "cold_sched" };
        struct bench_series cc = { .metric = "cold_cancel" };
        struct bench_series ct = { .metric = "cold_total" };
        struct bench_series ws = { .metric = "warm_sched" };
        struct bench_series wc = { .metric = "warm_cancel" };
        struct bench_series wt = { .metric = "warm_total" };
        long n = bench_default(o->n, 1000000);
        uint32_t *d = timer_delays(n);

        bench_param("timers=%ld delays uniform %d..%d ms (xorshift64*, fixed seed), cold run first",
                   n, TIMER_MIN_MS, TIMER_MAX_MS);
        for (int rep = 0; rep <= o->reps; rep++) {
                uint64_t t0, t1, t3;

                timer_fired = 0;
                t0 = bench_now_ns();
                ops->schedule(n, d);
                t1 = bench_now_ns();
                ops->cancel(n);
                ops->pass();
                t3 = bench_now_ns();
                if (timer_fired)
                        bench_die("cold timers: %ld cancelled timers fired", timer_fired);
                bench_add(rep ? &ws : &cs, (double)(t1 - t0) / (double)n);
                bench_add(rep ? &wc : &cc, (double)(t3 - t1) / (double)n);
                bench_add(rep ? &wt : &ct, (double)(t3 - t0) / (double)n);
        }
        /* what one clock reading costs here (call_later makes one per call) */
        {
                struct bench_series ck = { .metric = "clock" };
                uint64_t t0 = bench_now_ns(), t1;
                volatile uint64_t sink = 0;

                for (int i = 0; i < 1000000; i++)
                        sink += bench_now_ns();
                t1 = bench_now_ns();
                bench_add(&ck, (double)(t1 - t0) / 1e6);
                bench_print(&ck);
                (void)sink;
        }
        bench_print(&cs);
        bench_print(&cc);
        bench_print(&ct);
        bench_print(&ws);
        bench_print(&wc);
        bench_print(&wt);
        free(d);
}

/* ---- workload 7: memory --------------------------------------------------------
 *
 * Resident memory per pending timer and per watched descriptor: the
 * growth of the process's resident set (/proc/self/statm) while the
 * program creates n timers (memtimers) or watches every descriptor of
 * the largest socketpair ring RLIMIT_NOFILE allows (memfds, both ends of
 * every pair, one non-blocking loop pass so that lazily applied
 * registrations are in), divided by n. The caller's part is included: the
 * watcher structs libev, libuv and libevent take from their caller, the
 * handle pointer a libloop caller keeps to cancel a timer; the program
 * reports its size per object apart ("caller"). "heap" is the same growth
 * seen by malloc (mallinfo2: in use plus mmapped), which leaves out what
 * a library maps itself and the kernel's share of an fd.
 */
static inline double bench_rss_bytes(void)
{
        long size = 0, res = 0;
        FILE *f = fopen("/proc/self/statm", "r");

        if (!f || fscanf(f, "%ld %ld", &size, &res) != 2)
                bench_die("/proc/self/statm: %s", strerror(errno));
        fclose(f);
        return (double)res * (double)sysconf(_SC_PAGESIZE);
}

static inline double bench_heap_bytes(void)
{
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 33))
        struct mallinfo2 mi = mallinfo2();

        return (double)mi.uordblks + (double)mi.hblkhd;
#else
        return 0.0;
#endif
}

struct mem_ops {
        /* create n pending timers with delays d[] (caller storage included) */
        void (*timers)(long n, const uint32_t *d);
        /* watch every descriptor of fds[0..nfds-1] for reading, then one
         * non-blocking loop pass */
        void (*fds)(const int *fds, long nfds);
        size_t caller_timer, caller_fd;         /* the caller's bytes per object */
};

static inline void mem_bench(const struct bench_opts *o, const struct mem_ops *ops)
{
        double rss0, heap0, rss1, heap1;

        if (!strcmp(o->workload, "memtimers")) {
                long n = bench_default(o->n, 1000000);
                uint32_t *d = timer_delays(n);

                bench_param("%ld pending timers", n);
                rss0 = bench_rss_bytes();
                heap0 = bench_heap_bytes();
                ops->timers(n, d);
                rss1 = bench_rss_bytes();
                heap1 = bench_heap_bytes();
                printf("R timer_rss %.6g\nR timer_heap %.6g\nR timer_caller %zu\n",
                       (rss1 - rss0) / (double)n, (heap1 - heap0) / (double)n,
                       ops->caller_timer);
        } else {
                long pairs = ring_max_pairs(RING_HEADROOM);
                struct ring r;

                if (o->n > 0 && o->n < pairs)
                        pairs = o->n;
                ring_open(&r, pairs, 1, 0);
                bench_param("%ld watched descriptors (%ld socketpairs, both ends)",
                           2 * pairs, pairs);
                rss0 = bench_rss_bytes();
                heap0 = bench_heap_bytes();
                ops->fds(r.fds, 2 * pairs);
                rss1 = bench_rss_bytes();
                heap1 = bench_heap_bytes();
                printf("R fd_rss %.6g\nR fd_heap %.6g\nR fd_caller %zu\n",
                       (rss1 - rss0) / (double)(2 * pairs),
                       (heap1 - heap0) / (double)(2 * pairs), ops->caller_fd);
        }
        fflush(stdout);
}

/* ---- workload 8: timer lateness ------------------------------------------------
 *
 * n timers (default 10,000) with delays uniform in 0..200 ms, whole
 * milliseconds (libuv's unit; the same for every library), scheduled in one
 * batch 10 ms after the loop's last pass (a program does some work between
 * passes; a library that caches the time at the start of a pass counts
 * from the stale time). Each callback records CLOCK_MONOTONIC. Lateness is
 * fire time - requested time, the requested time being a CLOCK_MONOTONIC
 * reading just before the scheduling call + the delay. Early fires are
 * counted twice: against the library's own due time (its cached or coarse
 * "now" + delay, as the program computes it: what the library promises)
 * and against the requested time (what the caller asked for).
 */
#define LATE_MAX_MS 200
#define LATE_STALE_MS 10

struct late {
        long n, fired;
        uint32_t *d;
        int64_t *req, *due, *at;
};

static struct late late;

static inline void late_fire(long i)
{
        late.at[i] = (int64_t)bench_now_ns();
        late.fired++;
}

struct late_ops {
        void (*pass)(void);             /* one non-blocking loop pass */
        /* schedule timer i with delay d ms; return the library's due time
         * (CLOCK_MONOTONIC ns) */
        int64_t (*schedule)(long i, uint32_t d);
        void (*run)(void);              /* run until late.fired == late.n */
};

static inline int bench_cmp_i64(const void *a, const void *b)
{
        int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;

        return (x > y) - (x < y);
}

static inline void late_bench(const struct bench_opts *o, const struct late_ops *ops)
{
        struct bench_series p50 = { .metric = "p50" }, p99 = { .metric = "p99" };
        struct bench_series mx = { .metric = "max" }, mn = { .metric = "min" };
        struct bench_series el = { .metric = "early_lib" }, er = { .metric = "early_req" };
        long n = bench_default(o->n, 10000);
        struct bench_rng rng;
        int64_t *lat;

        late.n = n;
        late.d = malloc((size_t)n * sizeof(*late.d));
        late.req = malloc((size_t)n * sizeof(*late.req));
        late.due = malloc((size_t)n * sizeof(*late.due));
        late.at = malloc((size_t)n * sizeof(*late.at));
        lat = malloc((size_t)n * sizeof(*lat));
        if (!late.d || !late.req || !late.due || !late.at || !lat)
                bench_die("out of memory");
        bench_param("%ld timers, delays uniform 0..%d ms, scheduled %d ms after a loop pass",
                   n, LATE_MAX_MS, LATE_STALE_MS);
        for (int rep = 0; rep < o->reps; rep++) {
                long early_lib = 0, early_req = 0;

                bench_rng_seed(&rng, BENCH_SEED ^ 0x1a7e);
                for (long i = 0; i < n; i++)
                        late.d[i] = (uint32_t)bench_rng_range(&rng, 0, LATE_MAX_MS);
                memset(late.at, 0, (size_t)n * sizeof(*late.at));
                late.fired = 0;
                ops->pass();
                bench_sleep_until_ns(bench_now_ns() + LATE_STALE_MS * 1000000u);
                for (long i = 0; i < n; i++) {
                        late.req[i] = (int64_t)bench_now_ns() + (int64_t)late.d[i] * 1000000;
                        late.due[i] = ops->schedule(i, late.d[i]);
                }
                ops->run();
                if (late.fired != n)
                        bench_die("lateness: %ld of %ld fired", late.fired, n);
                for (long i = 0; i < n; i++) {
                        lat[i] = late.at[i] - late.req[i];
                        early_req += late.at[i] < late.req[i];
                        early_lib += late.at[i] < late.due[i];
                }
                qsort(lat, (size_t)n, sizeof(*lat), bench_cmp_i64);
                bench_add(&p50, (double)lat[n / 2] / 1e3);
                bench_add(&p99, (double)lat[n * 99 / 100] / 1e3);
                bench_add(&mx, (double)lat[n - 1] / 1e3);
                bench_add(&mn, (double)lat[0] / 1e3);
                bench_add(&el, (double)early_lib);
                bench_add(&er, (double)early_req);
        }
        bench_print(&p50);
        bench_print(&p99);
        bench_print(&mx);
        bench_print(&mn);
        bench_print(&el);
        bench_print(&er);
        free(late.d);
        free(late.req);
        free(late.due);
        free(late.at);
        free(lat);
}

/* ---- workload 9: HTTP/1.1 keep-alive "hello world" server ---------------------
 *
 * `bench_X http` listens on 127.0.0.1 (an ephemeral port, printed as
 * "L <port>"), answers every request with the same 200 response and keeps
 * the connection, until SIGTERM; it then prints "R served <requests>" and
 * exits 0. bench/run-bench loads it with wrk and measures its CPU time
 * from /proc. A request is complete at its "\r\n\r\n" (wrk sends GETs
 * without a body); reads may end anywhere, several requests in one read
 * get one response each. The response is written with one write(); should
 * it come up short (it never does with wrk's one request in flight per
 * connection), the rest is written after poll(), counted and reported.
 * What differs between programs is only how the library tells the server
 * that a descriptor is readable (or, for libloop's futures, that bytes
 * arrived), and how it accepts.
 */
#define HTTP_BUF 4096
#define HTTP_RESPONSE                                                         \
        "HTTP/1.1 200 OK\r\nServer: bench\r\nContent-Type: text/plain\r\n"    \
        "Content-Length: 13\r\n\r\nHello, World!"
#define HTTP_RESPONSE_LEN (sizeof(HTTP_RESPONSE) - 1)
#define HTTP_MAX_BATCH 16

struct http_conn {
        int fd;
        size_t len;
        void *lib;              /* the program's per-connection watcher */
        char buf[HTTP_BUF];
};

static long http_served, http_short_writes, http_conns, http_errors;
static char http_out[HTTP_MAX_BATCH * HTTP_RESPONSE_LEN];

/* The listening socket: non-blocking, 127.0.0.1, ephemeral port, printed. */
static inline int http_listen(void)
{
        struct sockaddr_in sa = { .sin_family = AF_INET };
        socklen_t len = sizeof(sa);
        int one = 1, fd;

        bench_raise_nofile();
        for (int i = 0; i < HTTP_MAX_BATCH; i++)
                memcpy(http_out + i * HTTP_RESPONSE_LEN, HTTP_RESPONSE, HTTP_RESPONSE_LEN);
        sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0)
                bench_die("socket: %s", strerror(errno));
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(fd, 4096) < 0 ||
            getsockname(fd, (struct sockaddr *)&sa, &len) < 0)
                bench_die("listen on 127.0.0.1: %s", strerror(errno));
        printf("L %d\n", ntohs(sa.sin_port));
        fflush(stdout);
        return fd;
}

/* A new connection's socket options (accept4 gave it O_NONBLOCK). */
static inline void http_setup_fd(int fd)
{
        int one = 1;

        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        http_conns++;
}

static inline struct http_conn *http_conn_new(int fd)
{
        struct http_conn *c = malloc(sizeof(*c));

        if (!c)
                bench_die("out of memory");
        c->fd = fd;
        c->len = 0;
        c->lib = NULL;
        return c;
}

/* c->len bytes in c->buf, of which `fresh` just arrived: count the
 * complete requests, keep the incomplete tail. Returns the number of
 * complete requests, or -1 if the buffer is full without one. */
static inline long http_parse(struct http_conn *c, size_t fresh)
{
        size_t start = 0, from = c->len - fresh;
        long k = 0;

        /* the end marker may straddle the previous read */
        from = from >= 3 ? from - 3 : 0;
        for (;;) {
                char *e = memmem(c->buf + from, c->len - from, "\r\n\r\n", 4);

                if (!e)
                        break;
                k++;
                start = (size_t)(e - c->buf) + 4;
                from = start;
        }
        if (start) {
                memmove(c->buf, c->buf + start, c->len - start);
                c->len -= start;
        } else if (c->len == sizeof(c->buf)) {
                return -1;
        }
        return k;
}

static inline void http_write_all(int fd, const char *p, size_t len)
{
        while (len > 0) {
                ssize_t w = write(fd, p, len);

                if (w > 0) {
                        p += w;
                        len -= (size_t)w;
                        if (len)
                                http_short_writes++;
                } else if (w < 0 && errno == EAGAIN) {
                        struct pollfd pfd = { .fd = fd, .events = POLLOUT };

                        http_short_writes++;
                        poll(&pfd, 1, 1000);
                } else if (w < 0 && errno == EINTR) {
                        continue;
                } else {
                        http_errors++;  /* the peer went away: its read sees it */
                        return;
                }
        }
}

/* Answer k requests. */
static inline void http_respond(int fd, long k)
{
        http_served += k;
        while (k > 0) {
                long b = k < HTTP_MAX_BATCH ? k : HTTP_MAX_BATCH;

                http_write_all(fd, http_out, (size_t)b * HTTP_RESPONSE_LEN);
                k -= b;
        }
}

/* The body of every reader callback: one read, answer what is complete.
 * Returns 0 to keep the connection, -1 when the caller must close it
 * (EOF, error, a request larger than the buffer). */
static inline int http_on_readable(struct http_conn *c)
{
        ssize_t k = read(c->fd, c->buf + c->len, sizeof(c->buf) - c->len);
        long reqs;

        if (k < 0 && (errno == EAGAIN || errno == EINTR))
                return 0;
        if (k <= 0) {
                if (k < 0)
                        http_errors++;
                return -1;
        }
        c->len += (size_t)k;
        reqs = http_parse(c, (size_t)k);
        if (reqs < 0) {
                http_errors++;
                return -1;
        }
        if (reqs)
                http_respond(c->fd, reqs);
        return 0;
}

/* For programs whose library has no signal watcher of its own. */
static volatile sig_atomic_t http_term;

static inline void http_on_term(int signum)
{
        (void)signum;
        http_term = 1;
}

/* At exit, after SIGTERM. */
static inline void http_report(void)
{
        if (http_short_writes)
                bench_note("%ld short writes (finished with poll)", http_short_writes);
        printf("R served %ld\nR conns %ld\nR errors %ld\n", http_served, http_conns, http_errors);
        fflush(stdout);
}

/* ---- workload 10: transport echo (issue 24) ------------------------------------
 *
 * An echo over one loopback TCP connection, both ends driven by the
 * library's stream API (libloop transports, libuv uv_stream_t, libevent
 * bufferevents), in one loop and one thread: the server writes back what
 * it receives, the client
 *
 *   trips   sends an -s byte message (default 64), waits until all of it
 *           is back, sends the next: -n round trips per run (default
 *           20,000); "rtps" = round trips per second;
 *   stream  sends -n MiB (default 256) in XP_CHUNK (64 KiB) writes,
 *           keeping at most XP_WINDOW bytes in flight (sent and not yet
 *           back, so that no write buffer on either side outgrows it); a
 *           run ends when the last byte is back; "mibps" = MiB of echoed
 *           payload per second.
 *
 * Both are also reported per second of the process's CPU time (getrusage:
 * user + system, every thread; "rtps_cpu", "mibps_cpu"): on a machine
 * shared with other work the wall-clock rates move with whoever else runs
 * on the CPU, the CPU-time rates much less.
 *
 * -k DIR: TLS on that connection, DIR/cert.pem and DIR/key.pem on the
 * server, no certificate verification on the client, TLS 1.3. The
 * connection and its handshake are made once, untimed; the warm-up run and
 * the measured runs reuse it. The payload is a pattern (the byte at offset
 * o of a run is o % XP_PERIOD), checked byte for byte in the warm-up run;
 * every run checks that every byte sent came back and no more.
 *
 * The library part: connect (untimed), then per run xp_pump() from the
 * client's side and run the loop until xp.done; the client's read callback
 * calls xp_on_data() (or xp_check() and xp_received()) and, unless that
 * says the run is done, xp_pump() again. xp_pump() hands the library's
 * write call each piece it may send now.
 */
#define XP_CHUNK (64 * 1024)
#define XP_PERIOD 251
#define XP_WINDOW (1024 * 1024)

struct xp {
        int stream;             /* 0: trips, 1: stream */
        size_t size;            /* trips: the message size */
        long target;            /* trips: round trips per run */
        uint64_t total;         /* stream: bytes per run */
        uint64_t sent, got;     /* this run's bytes written, bytes back */
        long trips;
        int check;              /* compare the bytes back with the pattern */
        int done;
        unsigned char src[XP_CHUNK + XP_PERIOD];
        char cert[4096], key[4096];     /* -k: the server's PEM files */
};

static struct xp xp;

/* Called with SIGALRM: a run that stalls (a lost wake-up, a flow-control
 * deadlock) fails the cell instead of hanging the whole table. */
static inline void xp_on_alarm(int signum)
{
        static const char msg[] = "bench: transport echo stalled (no progress for 300 s)\n";

        (void)signum;
        if (write(2, msg, sizeof(msg) - 1) < 0)
                _exit(2);
        _exit(2);
}

/* A cell that cannot run here: the reason on stderr, exit 77 (run-bench
 * prints it in the table instead of a number). */
static inline void bench_skip(const char *fmt, ...)
        __attribute__((format(printf, 1, 2), noreturn));
static inline void bench_skip(const char *fmt, ...)
{
        va_list ap;

        va_start(ap, fmt);
        bench_vexit(77, fmt, ap);
}

/* Parse the workload's options into xp; returns 1 for TLS. */
static inline int xp_init(const struct bench_opts *o)
{
        xp.stream = !strcmp(o->workload, "stream");
        xp.size = (size_t)o->size;
        if (xp.size > XP_CHUNK)
                bench_die("trips: -s must be at most %d", XP_CHUNK);
        xp.target = bench_default(o->n, 20000);
        xp.total = (uint64_t)bench_default(o->n, 256) << 20;
        for (size_t i = 0; i < sizeof(xp.src); i++)
                xp.src[i] = (unsigned char)(i % XP_PERIOD);
        if (xp.stream)
                bench_param("stream: %llu MiB per run in %d KiB writes, at most %d KiB in flight",
                            (unsigned long long)(xp.total >> 20), XP_CHUNK / 1024, XP_WINDOW / 1024);
        else
                bench_param("trips: %zu-byte messages, %ld round trips per run", xp.size, xp.target);
        signal(SIGALRM, xp_on_alarm);
        signal(SIGPIPE, SIG_IGN);
        if (!o->tls_dir)
                return 0;
        if ((size_t)snprintf(xp.cert, sizeof(xp.cert), "%s/cert.pem", o->tls_dir) >= sizeof(xp.cert) ||
            (size_t)snprintf(xp.key, sizeof(xp.key), "%s/key.pem", o->tls_dir) >= sizeof(xp.key))
                bench_die("-k: path too long");
        if (access(xp.cert, R_OK) < 0 || access(xp.key, R_OK) < 0)
                bench_die("-k: %s or %s: %s", xp.cert, xp.key, strerror(errno));
        return 1;
}

/* The next piece the client may write now (its length; 0: none). */
static inline size_t xp_next(const void **p)
{
        size_t len;

        if (xp.done)
                return 0;
        if (!xp.stream) {
                if (xp.sent != xp.got)
                        return 0;       /* the echo of the last one is awaited */
                len = xp.size;
        } else {
                if (xp.sent >= xp.total || xp.sent - xp.got + XP_CHUNK > XP_WINDOW)
                        return 0;
                len = xp.total - xp.sent < XP_CHUNK ? (size_t)(xp.total - xp.sent) : XP_CHUNK;
        }
        *p = xp.src + xp.sent % XP_PERIOD;
        xp.sent += len;
        return len;
}

/* Compare len bytes that arrived `off` bytes after the last counted one
 * with the pattern (only in the checking run). */
static inline void xp_check(uint64_t off, const void *data, size_t len)
{
        const unsigned char *d = data;

        if (!xp.check)
                return;
        off += xp.got;
        while (len > 0) {
                size_t k = len < XP_CHUNK ? len : XP_CHUNK;

                if (memcmp(d, xp.src + off % XP_PERIOD, k))
                        bench_die("echo: wrong bytes back at offset %llu", (unsigned long long)off);
                d += k;
                off += k;
                len -= k;
        }
}

/* Count len bytes back; returns 1 when the run is complete. */
static inline int xp_received(size_t len)
{
        if (xp.got + len > xp.sent)
                bench_die("echo: %llu bytes back, %llu sent",
                          (unsigned long long)(xp.got + len), (unsigned long long)xp.sent);
        xp.got += len;
        if (!xp.stream) {
                if (xp.got == xp.sent && ++xp.trips == xp.target)
                        xp.done = 1;
        } else if (xp.got == xp.total) {
                xp.done = 1;
        }
        return xp.done;
}

static inline int xp_on_data(const void *data, size_t len)
{
        xp_check(0, data, len);
        return xp_received(len);
}

static inline double xp_cpu_seconds(void)
{
        struct rusage ru;

        if (getrusage(RUSAGE_SELF, &ru) < 0)
                bench_die("getrusage: %s", strerror(errno));
        return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
               (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

/* The runs: run(): xp_pump() and run the loop until xp.done. */
static inline void xp_bench(const struct bench_opts *o, void (*run)(void))
{
        struct bench_series s = { .metric = xp.stream ? "mibps" : "rtps" };
        struct bench_series c = { .metric = xp.stream ? "mibps_cpu" : "rtps_cpu" };

        for (int rep = bench_first_rep(o); rep < o->reps; rep++) {
                double amount = xp.stream ? (double)xp.total / 1048576.0 : (double)xp.target;
                double c0, c1;
                uint64_t t0, t1;

                xp.sent = xp.got = 0;
                xp.trips = 0;
                xp.done = 0;
                xp.check = rep < 0 || o->no_warmup;
                alarm(300);
                c0 = xp_cpu_seconds();
                t0 = bench_now_ns();
                run();
                t1 = bench_now_ns();
                c1 = xp_cpu_seconds();
                alarm(0);
                if (!xp.done || xp.got != xp.sent ||
                    (xp.stream ? xp.got != xp.total : xp.trips != xp.target))
                        bench_die("echo: run ended with %llu of %llu bytes back, %ld round trips",
                                  (unsigned long long)xp.got, (unsigned long long)xp.sent, xp.trips);
                if (rep >= 0) {
                        bench_add(&s, amount * 1e9 / (double)(t1 - t0));
                        if (c1 > c0)
                                bench_add(&c, amount / (c1 - c0));
                }
        }
        bench_print(&s);
        bench_print(&c);
        bench_param("checked: each run got back all %llu bytes it sent, the %s run byte for byte",
                    (unsigned long long)(xp.stream ? xp.total : (uint64_t)xp.target * xp.size),
                    o->no_warmup ? "first" : "warm-up");
}

/* A connected loopback TCP pair for the libraries that take a socket
 * (libuv's uv_tcp_open, libevent's bufferevent_socket_new): non-blocking,
 * TCP_NODELAY on both ends (what libloop's side sets too), kernel default
 * buffer sizes (autotuned). */
static inline void xp_pair(int *cfd, int *sfd)
{
        struct sockaddr_in sa = { .sin_family = AF_INET };
        socklen_t len = sizeof(sa);
        int one = 1, lfd;

        sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (lfd < 0 || bind(lfd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
            listen(lfd, 1) < 0 || getsockname(lfd, (struct sockaddr *)&sa, &len) < 0)
                bench_die("listen on 127.0.0.1: %s", strerror(errno));
        *cfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (*cfd < 0 || connect(*cfd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
                bench_die("connect: %s", strerror(errno));
        *sfd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
        if (*sfd < 0)
                bench_die("accept: %s", strerror(errno));
        close(lfd);
        for (int i = 0; i < 2; i++) {
                int fd = i ? *sfd : *cfd;

                setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
                bench_nonblock(fd);
        }
}

#endif /* BENCH_H */
