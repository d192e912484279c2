/* SPDX-License-Identifier: MIT */
/*
 * bench_libloop: the workloads on libloop. See bench.h.
 *
 *   pipe      loop_add_reader per read end; re-setup = loop_remove_reader +
 *             loop_add_reader for every pair; -q: loop_pause_reader +
 *             loop_resume_reader instead (the same file, no reuse check).
 *   timers    loop_call_later_ns with a handle (needed to cancel);
 *             -q: loop_call_at_ns(base + delay) with base = loop_time_ns()
 *             read once per batch, the way libev's ev_timer_start counts
 *             from the loop's cached ev_now() and libuv's from uv_now();
 *             cancel = loop_handle_cancel. Dropping the caller's handle
 *             reference (loop_handle_unref) and the loop iteration that
 *             purges the cancelled timers are timed apart as "release";
 *             the unref of fired timers is untimed.
 *   soon      loop_call_soon(..., NULL): each callback queues itself again;
 *             -p 1000 seeds 1000 of them, so every pass runs 1000.
 *   xthread   loop_call_soon_threadsafe from the posting thread: every post
 *             runs (libloop never coalesces).
 *   pingpong  one loop per thread, loop_call_soon_threadsafe each way.
 *   echo      loop_add_reader on both sockets, one loop, one thread;
 *             -S NAME picks the selector (loop_selector_new(NAME)).
 *             -q: futures instead: loop_sock_recv_into on both sockets and
 *             loop_sock_sendall, each done callback starting the next
 *             operation; with -S io_uring on loop_proactor_loop_new().
 *
 *   coldtimers  the timers of "timers" scheduled and cancelled (+ the
 *             handle's unref) on a fresh loop, then again warm; -q: call_at.
 *   memtimers, memfds  loop_call_later_ns with a handle; loop_add_reader.
 *   lateness  loop_call_later_ns (due: loop_handle_when_ns); -q:
 *             loop_call_at_ns from one loop_time_ns() per batch.
 *   http      readers (loop_add_reader, read, write); -q: futures
 *             (loop_sock_accept, loop_sock_recv_into, loop_sock_sendall);
 *             -S epoll or -S io_uring (the proactor loop).
 *   trips, stream  transports: loop_create_server + loop_create_connection
 *             on 127.0.0.1, protocols with data_received; the server
 *             echoes with loop_transport_write, the client writes with
 *             loop_transport_write. -k DIR: TLS (the options' tls field,
 *             a server context from DIR's files, a client context with
 *             verification and the host name check off), TLS 1.3 as the
 *             minimum where the program is built with OpenSSL's headers
 *             (BENCH_OPENSSL). TCP_NODELAY is set on both sockets, as on
 *             the other libraries' (libloop sets it on TCP transports
 *             itself, as asyncio does; -q: the program does not).
 *             -S epoll or -S io_uring (the proactor loop).
 *
 * Loops come from loop_new() (the default selector) unless -S is given.
 */
#include "bench.h"

#include <signal.h>
#include <stdatomic.h>

#include <loop.h>

#ifdef BENCH_OPENSSL
#include <openssl/ssl.h>
#endif

static struct bench_opts opts;
static loop_t *loop;

#define LOOP_CHECK(expr)                                                      \
        do {                                                                  \
                int loop_r_ = (expr);                                         \
                if (loop_r_ < 0)                                              \
                        bench_die("%s:%d: %s: %s", __FILE__, __LINE__, #expr, \
                                  loop_strerror(loop_r_));                    \
        } while (0)

static loop_t *new_loop(void)
{
        static int noted;
        loop_t *l;

        if (opts.selector && !strcmp(opts.selector, "io_uring")) {
                LOOP_CHECK(loop_proactor_loop_new(&l));
                if (!noted++)
                        bench_info("libloop, io_uring proactor");
                return l;
        }
        if (opts.selector) {
                loop_selector_t *sel;

                LOOP_CHECK(loop_selector_new(opts.selector, &sel));
                LOOP_CHECK(loop_selector_loop_new(sel, &l));
                loop_selector_unref(sel);
        } else {
                LOOP_CHECK(loop_new(&l));
        }
        if (!noted++)
                bench_info("libloop, selector %s",
                           loop_selector_name(loop_get_selector(l)));
        return l;
}

static void free_loop(loop_t *l)
{
        LOOP_CHECK(loop_close(l));
        loop_unref(l);
}

/* ---- pipe ring --------------------------------------------------------- */

static struct ring ring;

static int ring_cb(loop_t *l, int fd, void *userdata)
{
        (void)fd;
        if (ring_on_read(&ring, (long)(intptr_t)userdata))
                loop_stop(l);
        return 0;
}

static BENCH_NOINLINE void ll_ring_setup(struct ring *r)
{
        for (long i = 0; i < r->n; i++)
                LOOP_CHECK(loop_add_reader(loop, r->fds[2 * i], ring_cb, (void *)(intptr_t)i));
}

static BENCH_NOINLINE void ll_ring_resetup(struct ring *r)
{
        for (long i = 0; i < r->n; i++) {
                loop_remove_reader(loop, r->fds[2 * i]);
                loop_add_reader(loop, r->fds[2 * i], ring_cb, (void *)(intptr_t)i);
        }
}

/* -q: the same files all along, said with pause/resume: no reuse check. */
static BENCH_NOINLINE void ll_ring_resetup_pause(struct ring *r)
{
        for (long i = 0; i < r->n; i++) {
                loop_pause_reader(loop, r->fds[2 * i]);
                loop_resume_reader(loop, r->fds[2 * i]);
        }
}

static BENCH_NOINLINE void ll_ring_flush(struct ring *r)
{
        (void)r;
        LOOP_CHECK(loop_run_once(loop, 0));
}

static BENCH_NOINLINE void ll_ring_run(struct ring *r)
{
        (void)r;
        LOOP_CHECK(loop_run_forever(loop));
}

static void bench_pipe(void)
{
        static const struct ring_ops ops = {
                .setup = ll_ring_setup, .resetup = ll_ring_resetup,
                .flush = ll_ring_flush, .run = ll_ring_run,
        }, pause_ops = {
                .setup = ll_ring_setup, .resetup = ll_ring_resetup_pause,
                .flush = ll_ring_flush, .run = ll_ring_run,
        };

        loop = new_loop();
        if (opts.variant)
                bench_note("re-setup: loop_pause_reader + loop_resume_reader per pair");
        else
                bench_note("re-setup: loop_remove_reader + loop_add_reader per pair");
        ring_bench(&opts, opts.variant ? &pause_ops : &ops, &ring);
        for (long i = 0; i < ring.n; i++)
                loop_remove_reader(loop, ring.fds[2 * i]);
        free_loop(loop);
        ring_close(&ring);
}

/* ---- timers ----------------------------------------------------------------- */

static loop_handle_t **timers;

static int timer_cb(loop_t *l, void *userdata)
{
        (void)l;
        (void)userdata;
        timer_fired++;
        return 0;
}

static BENCH_NOINLINE void ll_timer_schedule(long n, const uint32_t *d)
{
        for (long i = 0; i < n; i++)
                loop_call_later_ns(loop, (int64_t)d[i] * 1000000, timer_cb, NULL,
                                   &timers[i]);
}

static BENCH_NOINLINE void ll_timer_schedule_at(long n, const uint32_t *d)
{
        int64_t base = loop_time_ns(loop);

        for (long i = 0; i < n; i++)
                loop_call_at_ns(loop, base + (int64_t)d[i] * 1000000, timer_cb, NULL,
                                &timers[i]);
}

static BENCH_NOINLINE void ll_timer_fire(long n)
{
        while (timer_fired < n)
                LOOP_CHECK(loop_run_once(loop, 0));
}

static BENCH_NOINLINE void ll_timer_cancel(long n)
{
        for (long i = 0; i < n; i++)
                loop_handle_cancel(timers[i]);
}

/* The caller's references to fired timers: the loop let go of them already. */
static BENCH_NOINLINE void ll_timer_release_fired(long n)
{
        for (long i = 0; i < n; i++)
                timers[i] = loop_handle_unref(timers[i]);
}

/* The caller's references to cancelled timers, and the loop iteration
 * that purges them from the heap (timed with the release: the purge is
 * part of what a cancel costs). */
static BENCH_NOINLINE void ll_timer_release(long n)
{
        for (long i = 0; i < n; i++)
                timers[i] = loop_handle_unref(timers[i]);
        LOOP_CHECK(loop_run_once(loop, 0));
}

static void bench_timers(void)
{
        static const struct timer_ops ops = {
                .schedule = ll_timer_schedule, .fire = ll_timer_fire,
                .cancel = ll_timer_cancel, .release = ll_timer_release,
                .release_fired = ll_timer_release_fired,
        }, ops_at = {
                .schedule = ll_timer_schedule_at, .fire = ll_timer_fire,
                .cancel = ll_timer_cancel, .release = ll_timer_release,
                .release_fired = ll_timer_release_fired,
        };
        long n = bench_default(opts.n, 1000000);

        loop = new_loop();
        timers = calloc((size_t)n, sizeof(*timers));
        if (!timers)
                bench_die("out of memory");
        if (opts.variant)
                bench_note("loop_call_at_ns(base + delay) with a handle, base = loop_time_ns() once per "
                           "batch (as libev counts from ev_now()); cancel and release as above");
        else
                bench_note("loop_call_later_ns with a handle (a clock reading per call); cancel = "
                           "loop_handle_cancel; release = loop_handle_unref of the caller's reference, then "
                           "the loop iteration that purges the cancelled timers");
        timer_bench(&opts, opts.variant ? &ops_at : &ops);
        free(timers);
        free_loop(loop);
}

/* ---- call_soon ------------------------------------------------------------------ */

static struct soon sn;

static int soon_cb(loop_t *l, void *userdata)
{
        if (soon_step(&sn))
                loop_call_soon(l, soon_cb, userdata, NULL);
        else if (sn.count == sn.target)
                loop_stop(l);
        return 0;
}

static void bench_soon(void)
{
        struct bench_series s = { .metric = "soon" };
        long n = bench_default(opts.n, 10000000);

        loop = new_loop();
        bench_param("%ld callbacks, %ld per pass", n, opts.per_pass);
        bench_note("loop_call_soon(..., NULL): no handle");
        for (int rep = bench_first_rep(&opts); rep < opts.reps; rep++) {
                uint64_t t0, t1;

                soon_reset(&sn, rep < 0 ? n / 10 : n, opts.per_pass);
                t0 = bench_now_ns();
                for (long i = 0; i < sn.queued; i++)
                        LOOP_CHECK(loop_call_soon(loop, soon_cb, NULL, NULL));
                if (sn.target > 0)
                        LOOP_CHECK(loop_run_forever(loop));
                t1 = bench_now_ns();
                if (sn.count != sn.target)
                        bench_die("soon: %ld of %ld callbacks", sn.count, sn.target);
                if (rep >= 0 && n > 0)
                        bench_add(&s, (double)(t1 - t0) / (double)n);
        }
        if (n > 0)
                bench_print(&s);
        free_loop(loop);
}

/* ---- cross-thread posts ------------------------------------------------------------ */

static long x_ran, x_target;
static atomic_int x_go;
static atomic_long x_failed;
static uint64_t x_t0, x_t1, x_post_ns;

static int x_cb(loop_t *l, void *userdata)
{
        (void)userdata;
        if (++x_ran == x_target) {
                x_t1 = bench_now_ns();
                loop_stop(l);
        }
        return 0;
}

static int x_start_cb(loop_t *l, void *userdata)
{
        (void)l;
        (void)userdata;
        atomic_store_explicit(&x_go, 1, memory_order_release);
        return 0;
}

static void *x_producer(void *arg)
{
        (void)arg;
        while (!atomic_load_explicit(&x_go, memory_order_acquire))
                ;
        x_t0 = bench_now_ns();
        for (long i = 0; i < x_target; i++)
                if (loop_call_soon_threadsafe(loop, x_cb, NULL, NULL) < 0)
                        atomic_fetch_add(&x_failed, 1);
        x_post_ns = bench_now_ns() - x_t0;
        return NULL;
}

static void bench_xthread(void)
{
        struct bench_series total = { .metric = "total" };
        struct bench_series post = { .metric = "post" };
        struct bench_series ran = { .metric = "ran" };
        long n = bench_default(opts.n, 1000000);

        bench_param("%ld posts", n);
        bench_note("loop_call_soon_threadsafe(..., NULL); every post runs");
        for (int rep = bench_first_rep(&opts); rep < opts.reps; rep++) {
                pthread_t th;

                loop = new_loop();
                x_ran = 0;
                x_target = n;
                atomic_store(&x_go, 0);
                atomic_store(&x_failed, 0);
                LOOP_CHECK(loop_call_soon(loop, x_start_cb, NULL, NULL));
                pthread_create(&th, NULL, x_producer, NULL);
                LOOP_CHECK(loop_run_forever(loop));
                pthread_join(th, NULL);
                if (atomic_load(&x_failed))
                        bench_die("xthread: %ld posts failed", atomic_load(&x_failed));
                if (x_ran != n)
                        bench_die("xthread: %ld of %ld ran", x_ran, n);
                if (rep >= 0) {
                        bench_add(&total, (double)(x_t1 - x_t0) / (double)n);
                        bench_add(&post, (double)x_post_ns / (double)n);
                        bench_add(&ran, (double)x_ran);
                }
                free_loop(loop);
        }
        bench_print(&total);
        bench_print(&post);
        bench_print(&ran);
}

/* ---- ping-pong: two loops, two threads ------------------------------------------------ */

static loop_t *pp_loop[2];
static long pp_trips, pp_target;

static int pp_b_cb(loop_t *l, void *userdata);

static int pp_stop_cb(loop_t *l, void *userdata)
{
        (void)userdata;
        return loop_stop(l);
}

static int pp_a_cb(loop_t *l, void *userdata)
{
        (void)userdata;
        if (++pp_trips < pp_target)
                return loop_call_soon_threadsafe(pp_loop[1], pp_b_cb, NULL, NULL);
        loop_call_soon_threadsafe(pp_loop[1], pp_stop_cb, NULL, NULL);
        return loop_stop(l);
}

static int pp_b_cb(loop_t *l, void *userdata)
{
        (void)l;
        (void)userdata;
        return loop_call_soon_threadsafe(pp_loop[0], pp_a_cb, NULL, NULL);
}

static void *pp_thread(void *arg)
{
        (void)arg;
        LOOP_CHECK(loop_run_forever(pp_loop[1]));
        return NULL;
}

static void bench_pingpong(void)
{
        struct bench_series rt = { .metric = "rtt" };
        long n = bench_default(opts.n, 20000);

        bench_param("%ld round trips per run", n);
        bench_note("loop_call_soon_threadsafe each way");
        for (int rep = bench_first_rep(&opts); rep < opts.reps; rep++) {
                pthread_t th;
                uint64_t t0, t1;

                pp_loop[0] = new_loop();
                pp_loop[1] = new_loop();
                pp_trips = 0;
                pp_target = n;
                pthread_create(&th, NULL, pp_thread, NULL);
                t0 = bench_now_ns();
                LOOP_CHECK(loop_call_soon_threadsafe(pp_loop[1], pp_b_cb, NULL, NULL));
                LOOP_CHECK(loop_run_forever(pp_loop[0]));
                t1 = bench_now_ns();
                pthread_join(th, NULL);
                free_loop(pp_loop[0]);
                free_loop(pp_loop[1]);
                if (rep >= 0)
                        bench_add(&rt, (double)(t1 - t0) / (double)n);
        }
        bench_print(&rt);
}

/* ---- loopback TCP echo -------------------------------------------------------------- */

static struct echo echo;

static int echo_server_cb(loop_t *l, int fd, void *userdata)
{
        (void)l;
        (void)fd;
        (void)userdata;
        echo_on_server(&echo);
        return 0;
}

static int echo_client_cb(loop_t *l, int fd, void *userdata)
{
        (void)fd;
        (void)userdata;
        if (echo_on_client(&echo))
                loop_stop(l);
        return 0;
}

static void ll_echo_setup(struct echo *e)
{
        LOOP_CHECK(loop_add_reader(loop, e->sfd, echo_server_cb, NULL));
        LOOP_CHECK(loop_add_reader(loop, e->cfd, echo_client_cb, NULL));
}

static void ll_echo_run(struct echo *e)
{
        (void)e;
        LOOP_CHECK(loop_run_forever(loop));
}

static void ll_echo_teardown(struct echo *e)
{
        loop_remove_reader(loop, e->sfd);
        loop_remove_reader(loop, e->cfd);
}

/* The same exchange with futures (-q): the server echoes what one
 * loop_sock_recv_into brought with loop_sock_sendall; the client counts a
 * round trip once its receives add up to the message, then sends the
 * next with loop_sock_sendall. Done callbacks start the next receive, so
 * one is always pending on each socket. (The first message of a run is
 * echo_start's plain write, as in the reader variant.) */
static int fut_server_recv_done(loop_future_t *f, void *userdata);
static int fut_client_recv_done(loop_future_t *f, void *userdata);
static int fut_send_done(loop_future_t *f, void *userdata);
static char fut_sbuf[ECHO_BUF], fut_cbuf[ECHO_BUF];

static void fut_start(int fd, char *buf, loop_future_callback_t cb)
{
        loop_future_t *f;

        LOOP_CHECK(loop_sock_recv_into(loop, fd, buf, ECHO_BUF, &f));
        LOOP_CHECK(loop_future_add_done_callback(f, cb, NULL));
        loop_future_unref(f);
}

static const struct loop_sock_result *fut_result(loop_future_t *f)
{
        void *res;
        int r = loop_future_result(f, &res);

        if (r < 0)
                bench_die("echo future: %s", loop_strerror(r));
        if (((const struct loop_sock_result *)res)->nbytes == 0)
                bench_die("echo future: EOF");
        return res;
}

static int fut_send_done(loop_future_t *f, void *userdata)
{
        void *res;
        int r = loop_future_result(f, &res);

        (void)userdata;
        if (r < 0)
                bench_die("echo sendall: %s", loop_strerror(r));
        return 0;
}

static void fut_send(int fd, const void *p, size_t len)
{
        loop_future_t *f;

        LOOP_CHECK(loop_sock_sendall(loop, fd, p, len, &f));
        if (loop_future_done(f))
                fut_send_done(f, NULL);
        else
                LOOP_CHECK(loop_future_add_done_callback(f, fut_send_done, NULL));
        loop_future_unref(f);
}

static int fut_server_recv_done(loop_future_t *f, void *userdata)
{
        const struct loop_sock_result *res = fut_result(f);

        (void)userdata;
        fut_send(echo.sfd, res->data, res->nbytes);
        fut_start(echo.sfd, fut_sbuf, fut_server_recv_done);
        return 0;
}

static int fut_client_recv_done(loop_future_t *f, void *userdata)
{
        const struct loop_sock_result *res = fut_result(f);

        (void)userdata;
        echo.got += res->nbytes;
        fut_start(echo.cfd, fut_cbuf, fut_client_recv_done);
        if (echo.got < echo.size)
                return 0;
        if (echo.got > echo.size)
                bench_die("echo: got %zu bytes back for a %zu-byte message",
                          echo.got, echo.size);
        echo.got = 0;
        if (++echo.trips == echo.target)
                return loop_stop(loop);
        fut_send(echo.cfd, echo.msg, echo.size);
        return 0;
}

static void ll_echo_fut_setup(struct echo *e)
{
        fut_start(e->sfd, fut_sbuf, fut_server_recv_done);
        fut_start(e->cfd, fut_cbuf, fut_client_recv_done);
}

static void ll_echo_fut_teardown(struct echo *e)
{
        /* The pending receives are cancelled by loop_close(). */
        (void)e;
}

static void bench_echo(void)
{
        static const struct echo_ops ops = {
                .setup = ll_echo_setup, .run = ll_echo_run,
                .teardown = ll_echo_teardown,
        };
        static const struct echo_ops fut_ops = {
                .setup = ll_echo_fut_setup, .run = ll_echo_run,
                .teardown = ll_echo_fut_teardown,
        };

        loop = new_loop();
        if (opts.variant)
                bench_note("futures: loop_sock_recv_into + loop_sock_sendall, done callbacks re-arm");
        echo_bench(&opts, opts.variant ? &fut_ops : &ops, &echo);
        free_loop(loop);
}

/* ---- cold timers --------------------------------------------------------------- */

static BENCH_NOINLINE void ll_cold_cancel(long n)
{
        for (long i = 0; i < n; i++) {
                loop_handle_cancel(timers[i]);
                timers[i] = loop_handle_unref(timers[i]);
        }
}

static BENCH_NOINLINE void ll_cold_pass(void)
{
        LOOP_CHECK(loop_run_once(loop, 0));
}

static void bench_coldtimers(void)
{
        static const struct cold_timer_ops ops = {
                .schedule = ll_timer_schedule, .cancel = ll_cold_cancel,
                .pass = ll_cold_pass,
        }, ops_at = {
                .schedule = ll_timer_schedule_at, .cancel = ll_cold_cancel,
                .pass = ll_cold_pass,
        };
        long n = bench_default(opts.n, 1000000);

        timers = calloc((size_t)n, sizeof(*timers));
        if (!timers)
                bench_die("out of memory");
        if (!opts.no_warmup)    /* -z: the caller's pages left untouched too */
                memset(timers, 0, (size_t)n * sizeof(*timers));
        loop = new_loop();
        if (opts.variant)
                bench_note("loop_call_at_ns(base + delay), base = loop_time_ns() once per batch; "
                           "cancel = loop_handle_cancel + loop_handle_unref");
        else
                bench_note("loop_call_later_ns (a clock reading per call); "
                           "cancel = loop_handle_cancel + loop_handle_unref");
        cold_timer_bench(&opts, opts.variant ? &ops_at : &ops);
        free_loop(loop);
        free(timers);
}

/* ---- memory ---------------------------------------------------------------------- */

static int mem_io_cb(loop_t *l, int fd, void *userdata)
{
        (void)l;
        (void)fd;
        (void)userdata;
        return 0;
}

static void ll_mem_timers(long n, const uint32_t *d)
{
        timers = malloc((size_t)n * sizeof(*timers));
        if (!timers)
                bench_die("out of memory");
        ll_timer_schedule(n, d);
}

static void ll_mem_fds(const int *fds, long nfds)
{
        for (long i = 0; i < nfds; i++)
                LOOP_CHECK(loop_add_reader(loop, fds[i], mem_io_cb, NULL));
        LOOP_CHECK(loop_run_once(loop, 0));
}

static void bench_memory(void)
{
        static const struct mem_ops ops = {
                .timers = ll_mem_timers, .fds = ll_mem_fds,
                .caller_timer = sizeof(loop_handle_t *), .caller_fd = 0,
        };

        loop = new_loop();
        bench_note("timer: loop_call_later_ns with a handle (the caller keeps the pointer); "
                   "fd: loop_add_reader");
        mem_bench(&opts, &ops);
        /* the process exits: nothing to release that the kernel does not */
}

/* ---- timer lateness ---------------------------------------------------------------- */

static int late_cb(loop_t *l, void *userdata)
{
        late_fire((long)(intptr_t)userdata);
        if (late.fired == late.n)
                loop_stop(l);
        return 0;
}

static void ll_late_pass(void)
{
        LOOP_CHECK(loop_run_once(loop, 0));
}

static int64_t late_base;

static int64_t ll_late_schedule(long i, uint32_t d)
{
        loop_handle_t *h;
        int64_t when;

        if (opts.variant) {
                if (i == 0)
                        late_base = loop_time_ns(loop);
                when = late_base + (int64_t)d * 1000000;
                LOOP_CHECK(loop_call_at_ns(loop, when, late_cb, (void *)(intptr_t)i, NULL));
                return when;
        }
        LOOP_CHECK(loop_call_later_ns(loop, (int64_t)d * 1000000, late_cb, (void *)(intptr_t)i, &h));
        when = loop_handle_when_ns(h);
        loop_handle_unref(h);
        return when;
}

static void ll_late_run(void)
{
        LOOP_CHECK(loop_run_forever(loop));
}

static void bench_lateness(void)
{
        static const struct late_ops ops = {
                .pass = ll_late_pass, .schedule = ll_late_schedule, .run = ll_late_run,
        };

        loop = new_loop();
        if (opts.variant)
                bench_note("loop_call_at_ns(base + delay), base = loop_time_ns() at the batch's start; "
                           "due = base + delay");
        else
                bench_note("loop_call_later_ns; due = loop_handle_when_ns (its own clock reading + delay)");
        late_bench(&opts, &ops);
        free_loop(loop);
}

/* ---- HTTP server ------------------------------------------------------------------- */

static int http_stop_cb(loop_t *l, int signum, void *userdata)
{
        (void)signum;
        (void)userdata;
        return loop_stop(l);
}

/* Readers: loop_add_reader on the listening socket and on each connection. */
static int http_conn_cb(loop_t *l, int fd, void *userdata)
{
        struct http_conn *c = userdata;

        if (http_on_readable(c) < 0) {
                loop_remove_reader(l, fd);
                close(fd);
                free(c);
        }
        return 0;
}

static int http_accept_cb(loop_t *l, int fd, void *userdata)
{
        (void)userdata;
        for (;;) {
                int cfd = accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);

                if (cfd < 0)
                        return 0;
                http_setup_fd(cfd);
                LOOP_CHECK(loop_add_reader(l, cfd, http_conn_cb, http_conn_new(cfd)));
        }
}

/* Futures: loop_sock_accept, loop_sock_recv_into into the connection's
 * buffer, loop_sock_sendall of the responses; a done callback starts the
 * next operation (one receive pending per connection, as the reader
 * variant has one reader). */
static int http_recv_done(loop_future_t *f, void *userdata);

static void http_conn_close(struct http_conn *c)
{
        close(c->fd);
        free(c);
}

static void http_recv(struct http_conn *c)
{
        loop_future_t *f;

        if (loop_sock_recv_into(loop, c->fd, c->buf + c->len, sizeof(c->buf) - c->len, &f) < 0) {
                http_errors++;
                http_conn_close(c);
                return;
        }
        LOOP_CHECK(loop_future_add_done_callback(f, http_recv_done, c));
        loop_future_unref(f);
}

static int http_send_done(loop_future_t *f, void *userdata)
{
        void *res;

        (void)userdata;
        if (loop_future_result(f, &res) < 0)
                http_errors++;
        return 0;
}

static void http_send(int fd, long k)
{
        http_served += k;
        while (k > 0) {
                long b = k < HTTP_MAX_BATCH ? k : HTTP_MAX_BATCH;
                loop_future_t *f;

                if (loop_sock_sendall(loop, fd, http_out, (size_t)b * HTTP_RESPONSE_LEN, &f) < 0) {
                        http_errors++;
                        return;
                }
                if (loop_future_done(f))
                        http_send_done(f, NULL);
                else
                        LOOP_CHECK(loop_future_add_done_callback(f, http_send_done, NULL));
                loop_future_unref(f);
                k -= b;
        }
}

static int http_recv_done(loop_future_t *f, void *userdata)
{
        struct http_conn *c = userdata;
        void *res;
        size_t got;
        long reqs;

        if (loop_future_result(f, &res) < 0) {
                http_errors++;
                http_conn_close(c);
                return 0;
        }
        got = ((const struct loop_sock_result *)res)->nbytes;
        if (got == 0) {
                http_conn_close(c);
                return 0;
        }
        c->len += got;
        reqs = http_parse(c, got);
        if (reqs < 0) {
                http_errors++;
                http_conn_close(c);
                return 0;
        }
        if (reqs)
                http_send(c->fd, reqs);
        http_recv(c);
        return 0;
}

static int http_lfd;

static void http_accept(void);

static int http_accept_done(loop_future_t *f, void *userdata)
{
        void *res;

        (void)userdata;
        if (loop_future_result(f, &res) == 0) {
                int cfd = ((const struct loop_sock_result *)res)->fd;

                bench_nonblock(cfd);
                http_setup_fd(cfd);
                http_recv(http_conn_new(cfd));
        } else {
                http_errors++;
        }
        http_accept();
        return 0;
}

static void http_accept(void)
{
        loop_future_t *f;

        LOOP_CHECK(loop_sock_accept(loop, http_lfd, &f));
        LOOP_CHECK(loop_future_add_done_callback(f, http_accept_done, NULL));
        loop_future_unref(f);
}

static void bench_http(void)
{
        loop = new_loop();
        http_lfd = http_listen();
        LOOP_CHECK(loop_add_signal_handler(loop, SIGTERM, http_stop_cb, NULL));
        if (opts.variant) {
                bench_note("futures: loop_sock_accept, loop_sock_recv_into, loop_sock_sendall");
                http_accept();
        } else {
                bench_note("readers: loop_add_reader, read(2), write(2)");
                LOOP_CHECK(loop_add_reader(loop, http_lfd, http_accept_cb, NULL));
        }
        LOOP_CHECK(loop_run_forever(loop));
        http_report();
        /* exit without loop_close(): the pending operations die with the
         * process, and no done callback runs on a closing loop */
        exit(0);
}

/* ---- transport echo (trips, stream) ------------------------------------------------- */

static loop_transport_t *xp_client, *xp_server;

static void xp_nodelay(loop_transport_t *t)
{
        int one = 1, fd = loop_transport_get_fd(t);

        if (opts.variant)
                return;
        if (fd < 0 || setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) < 0)
                bench_die("TCP_NODELAY on the transport's socket (fd %d): %s", fd, strerror(errno));
}

static void xp_pump(void)
{
        const void *p;
        size_t len;

        while ((len = xp_next(&p)) > 0)
                LOOP_CHECK(loop_transport_write(xp_client, p, len));
}

static int xp_server_made(loop_transport_t *t, void *userdata)
{
        (void)userdata;
        xp_server = loop_transport_ref(t);
        xp_nodelay(t);
        return 0;
}

static int xp_server_data(loop_transport_t *t, const void *data, size_t size, void *userdata)
{
        (void)userdata;
        return loop_transport_write(t, data, size);
}

static int xp_lost(loop_transport_t *t, int error, void *userdata)
{
        (void)t;
        if (!userdata)  /* the teardown's: set to non-NULL before closing */
                bench_die("transport echo: %s connection lost: %s", t == xp_client ? "client" : "server",
                          error ? loop_strerror(error) : "EOF");
        return 0;
}

static int xp_client_made(loop_transport_t *t, void *userdata)
{
        (void)userdata;
        xp_client = loop_transport_ref(t);
        xp_nodelay(t);
        return 0;
}

static int xp_client_data(loop_transport_t *t, const void *data, size_t size, void *userdata)
{
        (void)t;
        (void)userdata;
        if (xp_on_data(data, size))
                return loop_stop(loop);
        xp_pump();
        return 0;
}

static const struct loop_protocol_ops xp_server_ops = {
        .size = sizeof(struct loop_protocol_ops),
        .connection_made = xp_server_made,
        .data_received = xp_server_data,
        .connection_lost = xp_lost,
}, xp_client_ops = {
        .size = sizeof(struct loop_protocol_ops),
        .connection_made = xp_client_made,
        .data_received = xp_client_data,
        .connection_lost = xp_lost,
};

static int xp_factory(loop_server_t *server, const struct loop_protocol_ops **ops, void **userdata, void *arg)
{
        (void)server;
        (void)arg;
        *ops = &xp_server_ops;
        *userdata = NULL;
        return 0;
}

static void xp_run(void)
{
        xp_pump();
        LOOP_CHECK(loop_run_forever(loop));
}

/* Where the program has OpenSSL's headers: TLS 1.3 only, and say what was
 * agreed. (libloop's contexts allow TLS 1.2 and up; two OpenSSL 3 peers
 * agree on 1.3 anyway.) */
static void xp_tls_min13(loop_tls_context_t *ctx)
{
#ifdef BENCH_OPENSSL
        if (!SSL_CTX_set_min_proto_version(loop_tls_context_get_ssl_ctx(ctx), TLS1_3_VERSION))
                bench_die("SSL_CTX_set_min_proto_version(TLS1_3_VERSION) failed");
#else
        (void)ctx;
#endif
}

static void xp_tls_note(void)
{
#ifdef BENCH_OPENSSL
        SSL *ssl = loop_transport_get_ssl(xp_client);

        if (ssl)
                bench_note("%s %s, memory BIOs", SSL_get_version(ssl),
                           SSL_CIPHER_get_name(SSL_get_current_cipher(ssl)));
#endif
}

static void bench_transport(void)
{
        int tls = xp_init(&opts);
        loop_tls_context_t *sctx = NULL, *cctx = NULL;
        loop_server_t *server;
        loop_future_t *f;
        struct sockaddr_in sa;
        socklen_t salen = sizeof(sa);
        char port[16];
        int lfd, r;

        if (opts.selector && !strcmp(opts.selector, "io_uring")) {
                loop_t *l;

                if ((r = loop_proactor_loop_new(&l)) < 0)
                        bench_skip("no io_uring proactor here (%s)", loop_strerror(r));
                free_loop(l);
        }
        loop = new_loop();
        if (tls) {
                r = loop_tls_context_new_server(xp.cert, xp.key, &sctx);
                if (r == -EOPNOTSUPP)
                        bench_skip("no TLS in this libloop build (OpenSSL missing)");
                LOOP_CHECK(r);
                LOOP_CHECK(loop_tls_context_new_client(&cctx));
                LOOP_CHECK(loop_tls_context_set_check_hostname(cctx, 0));
                LOOP_CHECK(loop_tls_context_set_verify(cctx, 0));
                xp_tls_min13(sctx);
                xp_tls_min13(cctx);
        }
        struct loop_server_options sopts = { .size = sizeof(sopts), .tls = sctx };
        LOOP_CHECK(loop_create_server(loop, xp_factory, NULL, "127.0.0.1", "0", &sopts, &f));
        LOOP_CHECK(loop_run_until_complete(loop, f));
        LOOP_CHECK(loop_future_result(f, (void **)&server));
        server = loop_server_ref(server);
        loop_future_unref(f);
        if (loop_server_get_fds(server, &lfd, 1) < 1 || getsockname(lfd, (struct sockaddr *)&sa, &salen) < 0)
                bench_die("the server's port: %s", strerror(errno));
        snprintf(port, sizeof(port), "%u", ntohs(sa.sin_port));
        struct loop_connection_options copts = { .size = sizeof(copts), .tls = cctx };
        LOOP_CHECK(loop_create_connection(loop, &xp_client_ops, NULL, "127.0.0.1", port, &copts, &f));
        LOOP_CHECK(loop_run_until_complete(loop, f));
        loop_future_unref(f);
        /* the server's side may finish its handshake a pass later */
        while (!xp_server || !xp_client)
                LOOP_CHECK(loop_run_once(loop, 1000000));
        bench_note("loop_create_server + loop_create_connection, data_received, loop_transport_write%s",
                   opts.variant ? "; no TCP_NODELAY (libloop's default)" : "; TCP_NODELAY set by the program");
        if (tls)
                xp_tls_note();
        xp_bench(&opts, xp_run);

        /* teardown: connection_lost is now expected (non-NULL userdata) */
        LOOP_CHECK(loop_transport_set_protocol(xp_client, &xp_client_ops, &xp));
        LOOP_CHECK(loop_transport_set_protocol(xp_server, &xp_server_ops, &xp));
        loop_transport_abort(xp_client);
        loop_transport_abort(xp_server);
        loop_server_close(server);
        LOOP_CHECK(loop_run_once(loop, 0));
        loop_transport_unref(xp_client);
        loop_transport_unref(xp_server);
        loop_server_unref(server);
        loop_tls_context_unref(sctx);
        loop_tls_context_unref(cctx);
        free_loop(loop);
}

/* "bench_libloop proactor" exits 0 when loop_proactor_loop_new() works here. */
static void probe_proactor(void)
{
        loop_t *l;

        if (loop_proactor_loop_new(&l) < 0)
                exit(1);
        free_loop(l);
}

/* "bench_libloop selectors" prints the compiled-in selector names. */
static void list_selectors(void)
{
        for (const char *const *p = loop_selector_names(); p && *p; p++)
                printf("%s\n", *p);
}

int main(int argc, char **argv)
{
        static const struct bench_workload workloads[] = {
                { "pipe", bench_pipe },
                { "timers", bench_timers },
                { "soon", bench_soon },
                { "xthread", bench_xthread },
                { "pingpong", bench_pingpong },
                { "echo", bench_echo },
                { "coldtimers", bench_coldtimers },
                { "memtimers", bench_memory },
                { "memfds", bench_memory },
                { "lateness", bench_lateness },
                { "http", bench_http },
                { "trips", bench_transport },
                { "stream", bench_transport },
                { "selectors", list_selectors },
                { "proactor", probe_proactor },
        };

        return bench_main(argc, argv, &opts, workloads, sizeof(workloads) / sizeof(workloads[0]));
}
