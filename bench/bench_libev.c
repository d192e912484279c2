/* SPDX-License-Identifier: MIT */
/*
 * bench_libev: the workloads on libev (anchor). See bench.h.
 *
 *   pipe      one ev_io per read end; re-setup = ev_io_stop + ev_io_set +
 *             ev_io_start for every pair (libev's own benchmark variant);
 *             -q: ev_io_stop + ev_io_start only (libev then assumes the
 *             same file, as libloop's pause/resume does).
 *   timers    ev_timer (ev_timer_init + ev_timer_start), ev_timer_stop.
 *   soon      ev_idle: one idle watcher per callback slot; an idle watcher
 *             is invoked once per loop pass, so -p 1000 = 1000 watchers.
 *   xthread   ev_async_send from the posting thread. ev_async coalesces:
 *             the note says how many callbacks ran. -q: every post runs
 *             (a mutex-protected queue, ev_async_send as the wake-up).
 *   pingpong  one loop per thread, an ev_async each.
 *   echo      ev_io on both sockets, one loop, one thread.
 *   coldtimers  the timers of "timers" on a fresh loop, then again warm.
 *   memtimers, memfds  ev_timer + ev_timer_start; ev_io + ev_io_start
 *             (the watchers are the caller's memory and are counted).
 *   lateness  ev_timer_start, counting from ev_now() (the loop's cached time).
 *   http      ev_io on the listening socket and on every connection,
 *             read(2), write(2); ev_signal for SIGTERM.
 */
#include "bench.h"

#include <signal.h>
#include <stdatomic.h>

#include <ev.h>

static struct bench_opts opts;
static struct ev_loop *loop;

static struct ev_loop *new_loop(void)
{
        struct ev_loop *l = ev_loop_new(EVFLAG_AUTO);

        static int noted;

        if (!l)
                bench_die("ev_loop_new failed");
        if (!noted++)
                bench_info("libev %d.%d, backend %s", ev_version_major(),
                           ev_version_minor(),
                           ev_backend(l) == EVBACKEND_EPOLL ? "epoll" : "not epoll");
        return l;
}

/* ---- pipe ring --------------------------------------------------------- */

static struct ring ring;
static ev_io *ios;

static void ring_cb(struct ev_loop *l, ev_io *w, int revents)
{
        (void)revents;
        if (ring_on_read(&ring, w - ios))
                ev_break(l, EVBREAK_ONE);
}

static BENCH_NOINLINE void ev_ring_setup(struct ring *r)
{
        ios = calloc((size_t)r->n, sizeof(*ios));
        if (!ios)
                bench_die("out of memory");
        for (long i = 0; i < r->n; i++) {
                ev_io_init(&ios[i], ring_cb, r->fds[2 * i], EV_READ);
                ev_io_start(loop, &ios[i]);
        }
}

static BENCH_NOINLINE void ev_ring_resetup(struct ring *r)
{
        for (long i = 0; i < r->n; i++) {
                ev_io_stop(loop, &ios[i]);
                ev_io_set(&ios[i], r->fds[2 * i], EV_READ);
                ev_io_start(loop, &ios[i]);
        }
}

/* -q: stop and start only. Without ev_io_set libev assumes the same file
 * and skips its EPOLL_CTL_ADD check, as libloop's pause/resume does. */
static BENCH_NOINLINE void ev_ring_resetup_noset(struct ring *r)
{
        for (long i = 0; i < r->n; i++) {
                ev_io_stop(loop, &ios[i]);
                ev_io_start(loop, &ios[i]);
        }
}

static BENCH_NOINLINE void ev_ring_flush(struct ring *r)
{
        (void)r;
        ev_run(loop, EVRUN_NOWAIT);
}

static BENCH_NOINLINE void ev_ring_run(struct ring *r)
{
        (void)r;
        ev_run(loop, 0);
}

static void bench_pipe(void)
{
        static const struct ring_ops ops = {
                .setup = ev_ring_setup, .resetup = ev_ring_resetup,
                .flush = ev_ring_flush, .run = ev_ring_run,
        }, noset_ops = {
                .setup = ev_ring_setup, .resetup = ev_ring_resetup_noset,
                .flush = ev_ring_flush, .run = ev_ring_run,
        };

        loop = new_loop();
        if (opts.variant)
                bench_note("re-setup: ev_io_stop + ev_io_start per pair (no ev_io_set)");
        else
                bench_note("re-setup: ev_io_stop + ev_io_set + ev_io_start per pair");
        ring_bench(&opts, opts.variant ? &noset_ops : &ops, &ring);
        for (long i = 0; i < ring.n; i++)
                ev_io_stop(loop, &ios[i]);
        free(ios);
        ring_close(&ring);
        ev_loop_destroy(loop);
}

/* ---- timers ----------------------------------------------------------------- */

static ev_timer *timers;

static void timer_cb(struct ev_loop *l, ev_timer *w, int revents)
{
        (void)l;
        (void)w;
        (void)revents;
        timer_fired++;
}

static BENCH_NOINLINE void ev_timer_schedule(long n, const uint32_t *d)
{
        ev_now_update(loop);
        for (long i = 0; i < n; i++) {
                ev_timer_init(&timers[i], timer_cb, d[i] * 1e-3, 0.);
                ev_timer_start(loop, &timers[i]);
        }
}

static BENCH_NOINLINE void ev_timer_fire(long n)
{
        while (timer_fired < n)
                ev_run(loop, EVRUN_NOWAIT);
}

static BENCH_NOINLINE void ev_timer_cancel(long n)
{
        for (long i = 0; i < n; i++)
                ev_timer_stop(loop, &timers[i]);
}

static void bench_timers(void)
{
        static const struct timer_ops ops = {
                .schedule = ev_timer_schedule, .fire = ev_timer_fire,
                .cancel = ev_timer_cancel,
        };
        long n = bench_default(opts.n, 1000000);

        loop = new_loop();
        timers = calloc((size_t)n, sizeof(*timers));
        if (!timers)
                bench_die("out of memory");
        bench_note("ev_timer_init + ev_timer_start; cancel = ev_timer_stop");
        timer_bench(&opts, &ops);
        free(timers);
        ev_loop_destroy(loop);
}

/* ---- call_soon: ev_idle ---------------------------------------------------------- */

static struct soon sn;

static void idle_cb(struct ev_loop *l, ev_idle *w, int revents)
{
        (void)revents;
        if (!soon_step(&sn))
                ev_idle_stop(l, w);
}

static void bench_soon(void)
{
        struct bench_series s = { .metric = "soon" };
        long n = bench_default(opts.n, 10000000);
        ev_idle *idles = calloc((size_t)opts.per_pass, sizeof(*idles));

        if (!idles)
                bench_die("out of memory");
        loop = new_loop();
        bench_param("%ld callbacks, %ld per pass", n, opts.per_pass);
        bench_note("one ev_idle watcher per callback slot (1000 per pass = 1000 watchers)");
        for (int rep = bench_first_rep(&opts); rep < opts.reps; rep++) {
                uint64_t t0, t1;

                soon_reset(&sn, rep < 0 ? n / 10 : n, opts.per_pass);
                t0 = bench_now_ns();
                for (long i = 0; i < sn.queued; i++) {
                        ev_idle_init(&idles[i], idle_cb);
                        ev_idle_start(loop, &idles[i]);
                }
                ev_run(loop, 0);        /* returns when every idle stopped */
                t1 = bench_now_ns();
                if (sn.count != sn.target)
                        bench_die("soon: %ld of %ld callbacks", sn.count, sn.target);
                if (rep >= 0 && n > 0)
                        bench_add(&s, (double)(t1 - t0) / (double)n);
        }
        if (n > 0)
                bench_print(&s);
        ev_loop_destroy(loop);
        free(idles);
}

/* ---- cross-thread posts: ev_async_send ---------------------------------------- */

static ev_async x_async;
static struct mq x_mq;
static long x_ran, x_target, x_calls;
static atomic_int x_go, x_done;
static uint64_t x_t0, x_t1, x_post_ns;

static void x_item(void *arg)
{
        (void)arg;
        if (++x_ran == x_target) {
                x_t1 = bench_now_ns();
                ev_break(loop, EVBREAK_ONE);
        }
}

static void x_async_cb(struct ev_loop *l, ev_async *w, int revents)
{
        (void)w;
        (void)revents;
        x_calls++;
        if (opts.variant) {
                mq_run(&x_mq);
                return;
        }
        x_ran++;
        if (atomic_load_explicit(&x_done, memory_order_acquire)) {
                x_t1 = bench_now_ns();
                ev_break(l, EVBREAK_ONE);
        }
}

static void x_start_cb(struct ev_loop *l, ev_idle *w, int revents)
{
        (void)revents;
        ev_idle_stop(l, w);
        atomic_store_explicit(&x_go, 1, memory_order_release);
}

static void *x_producer(void *arg)
{
        (void)arg;
        while (!atomic_load_explicit(&x_go, memory_order_acquire))
                ;
        x_t0 = bench_now_ns();
        if (opts.variant) {
                for (long i = 0; i < x_target; i++) {
                        mq_push(&x_mq, x_item, NULL);
                        ev_async_send(loop, &x_async);
                }
        } else {
                for (long i = 0; i < x_target; i++)
                        ev_async_send(loop, &x_async);
        }
        x_post_ns = bench_now_ns() - x_t0;
        atomic_store_explicit(&x_done, 1, memory_order_release);
        ev_async_send(loop, &x_async);
        return NULL;
}

static void bench_xthread(void)
{
        struct bench_series total = { .metric = "total" };
        struct bench_series post = { .metric = "post" };
        struct bench_series ran = { .metric = "ran" };
        struct bench_series wakes = { .metric = "wakeups" };
        long n = bench_default(opts.n, 1000000);

        bench_param("%ld posts", n);
        bench_note(opts.variant
                   ? "every post runs: a mutex-protected queue, ev_async_send after each push"
                   : "ev_async_send per post; coalesces");
        for (int rep = bench_first_rep(&opts); rep < opts.reps; rep++) {
                ev_idle start;
                pthread_t th;

                loop = new_loop();
                mq_init(&x_mq);
                ev_async_init(&x_async, x_async_cb);
                ev_async_start(loop, &x_async);
                ev_idle_init(&start, x_start_cb);
                ev_idle_start(loop, &start);
                x_ran = x_calls = 0;
                x_target = n;
                atomic_store(&x_go, 0);
                atomic_store(&x_done, 0);
                pthread_create(&th, NULL, x_producer, NULL);
                ev_run(loop, 0);
                pthread_join(th, NULL);
                if (opts.variant && x_ran != n)
                        bench_die("xthread: %ld of %ld ran", x_ran, n);
                if (rep >= 0) {
                        bench_add(&total, (double)(x_t1 - x_t0) / (double)n);
                        bench_add(&post, (double)x_post_ns / (double)n);
                        bench_add(&ran, (double)x_ran);
                        bench_add(&wakes, (double)x_calls);
                }
                ev_async_stop(loop, &x_async);
                ev_loop_destroy(loop);
                mq_fini(&x_mq);
        }
        bench_print(&total);
        bench_print(&post);
        bench_print(&ran);
        bench_print(&wakes);
}

/* ---- ping-pong: two loops, two threads --------------------------------------- */

static struct ev_loop *pp_loop[2];
static ev_async pp_async[2];
static long pp_trips, pp_target;
static atomic_int pp_stop;

static void pp_a_cb(struct ev_loop *l, ev_async *w, int revents)
{
        (void)w;
        (void)revents;
        if (++pp_trips < pp_target) {
                ev_async_send(pp_loop[1], &pp_async[1]);
        } else {
                atomic_store(&pp_stop, 1);
                ev_async_send(pp_loop[1], &pp_async[1]);
                ev_break(l, EVBREAK_ONE);
        }
}

static void pp_b_cb(struct ev_loop *l, ev_async *w, int revents)
{
        (void)w;
        (void)revents;
        if (atomic_load(&pp_stop))
                ev_break(l, EVBREAK_ONE);
        else
                ev_async_send(pp_loop[0], &pp_async[0]);
}

static void *pp_thread(void *arg)
{
        (void)arg;
        ev_run(pp_loop[1], 0);
        return NULL;
}

static void bench_pingpong(void)
{
        struct bench_series rt = { .metric = "rtt" };
        long n = bench_default(opts.n, 20000);

        bench_param("%ld round trips per run", n);
        bench_note("ev_async_send each way");
        for (int rep = bench_first_rep(&opts); rep < opts.reps; rep++) {
                pthread_t th;
                uint64_t t0, t1;

                for (int i = 0; i < 2; i++) {
                        pp_loop[i] = new_loop();
                        ev_async_init(&pp_async[i], i ? pp_b_cb : pp_a_cb);
                        ev_async_start(pp_loop[i], &pp_async[i]);
                }
                pp_trips = 0;
                pp_target = n;
                atomic_store(&pp_stop, 0);
                pthread_create(&th, NULL, pp_thread, NULL);
                t0 = bench_now_ns();
                ev_async_send(pp_loop[1], &pp_async[1]);
                ev_run(pp_loop[0], 0);
                t1 = bench_now_ns();
                pthread_join(th, NULL);
                for (int i = 0; i < 2; i++) {
                        ev_async_stop(pp_loop[i], &pp_async[i]);
                        ev_loop_destroy(pp_loop[i]);
                }
                if (rep >= 0)
                        bench_add(&rt, (double)(t1 - t0) / (double)n);
        }
        bench_print(&rt);
}

/* ---- loopback TCP echo -------------------------------------------------------------- */

static struct echo echo;
static ev_io echo_io[2];

static void echo_server_cb(struct ev_loop *l, ev_io *w, int revents)
{
        (void)l;
        (void)w;
        (void)revents;
        echo_on_server(&echo);
}

static void echo_client_cb(struct ev_loop *l, ev_io *w, int revents)
{
        (void)w;
        (void)revents;
        if (echo_on_client(&echo))
                ev_break(l, EVBREAK_ONE);
}

static void ev_echo_setup(struct echo *e)
{
        ev_io_init(&echo_io[0], echo_server_cb, e->sfd, EV_READ);
        ev_io_init(&echo_io[1], echo_client_cb, e->cfd, EV_READ);
        ev_io_start(loop, &echo_io[0]);
        ev_io_start(loop, &echo_io[1]);
}

static void ev_echo_run(struct echo *e)
{
        (void)e;
        ev_run(loop, 0);
}

static void ev_echo_teardown(struct echo *e)
{
        (void)e;
        ev_io_stop(loop, &echo_io[0]);
        ev_io_stop(loop, &echo_io[1]);
}

static void bench_echo(void)
{
        static const struct echo_ops ops = {
                .setup = ev_echo_setup, .run = ev_echo_run,
                .teardown = ev_echo_teardown,
        };

        loop = new_loop();
        echo_bench(&opts, &ops, &echo);
        ev_loop_destroy(loop);
}

/* ---- cold timers --------------------------------------------------------------- */

static BENCH_NOINLINE void ev_cold_pass(void)
{
        ev_run(loop, EVRUN_NOWAIT);
}

static void bench_coldtimers(void)
{
        static const struct cold_timer_ops ops = {
                .schedule = ev_timer_schedule, .cancel = ev_timer_cancel,
                .pass = ev_cold_pass,
        };
        long n = bench_default(opts.n, 1000000);

        timers = calloc((size_t)n, sizeof(*timers));
        if (!timers)
                bench_die("out of memory");
        if (!opts.no_warmup)    /* -z: the caller's pages left untouched too */
                memset(timers, 0, (size_t)n * sizeof(*timers));
        loop = new_loop();
        bench_note("ev_now_update once per batch, ev_timer_init + ev_timer_start; cancel = ev_timer_stop");
        cold_timer_bench(&opts, &ops);
        ev_loop_destroy(loop);
        free(timers);
}

/* ---- memory ---------------------------------------------------------------------- */

static void mem_io_cb(struct ev_loop *l, ev_io *w, int revents)
{
        (void)l;
        (void)w;
        (void)revents;
}

static void ev_mem_timers(long n, const uint32_t *d)
{
        timers = malloc((size_t)n * sizeof(*timers));
        if (!timers)
                bench_die("out of memory");
        ev_timer_schedule(n, d);
}

static void ev_mem_fds(const int *fds, long nfds)
{
        ev_io *w = malloc((size_t)nfds * sizeof(*w));

        if (!w)
                bench_die("out of memory");
        for (long i = 0; i < nfds; i++) {
                ev_io_init(&w[i], mem_io_cb, fds[i], EV_READ);
                ev_io_start(loop, &w[i]);
        }
        ev_run(loop, EVRUN_NOWAIT);
}

static void bench_memory(void)
{
        static const struct mem_ops ops = {
                .timers = ev_mem_timers, .fds = ev_mem_fds,
                .caller_timer = sizeof(ev_timer), .caller_fd = sizeof(ev_io),
        };

        loop = new_loop();
        bench_note("timer: ev_timer (the caller's) + ev_timer_start; fd: ev_io (the caller's) + ev_io_start");
        mem_bench(&opts, &ops);
}

/* ---- timer lateness ---------------------------------------------------------------- */

static ev_timer *late_w;
static int64_t late_now;        /* libev's time of its last pass, as near as we see it */

static void late_cb(struct ev_loop *l, ev_timer *w, int revents)
{
        (void)l;
        (void)revents;
        late_fire(w - late_w);
}

static void ev_late_pass(void)
{
        ev_run(loop, EVRUN_NOWAIT);
        late_now = (int64_t)bench_now_ns();
}

static int64_t ev_late_schedule(long i, uint32_t d)
{
        ev_timer_init(&late_w[i], late_cb, d * 1e-3, 0.);
        ev_timer_start(loop, &late_w[i]);
        return late_now + (int64_t)d * 1000000;
}

static void ev_late_run(void)
{
        ev_run(loop, 0);
}

static void bench_lateness(void)
{
        static const struct late_ops ops = {
                .pass = ev_late_pass, .schedule = ev_late_schedule, .run = ev_late_run,
        };

        loop = new_loop();
        late_w = calloc((size_t)bench_default(opts.n, 10000), sizeof(*late_w));
        if (!late_w)
                bench_die("out of memory");
        bench_note("ev_timer_start counts from ev_now(), the time of the loop's last pass; "
                   "due = CLOCK_MONOTONIC read right after that pass + delay");
        late_bench(&opts, &ops);
        free(late_w);
        ev_loop_destroy(loop);
}

/* ---- HTTP server ------------------------------------------------------------------- */

struct ev_conn {
        ev_io io;
        struct http_conn c;
};

static void http_conn_cb(struct ev_loop *l, ev_io *w, int revents)
{
        struct ev_conn *ec = (struct ev_conn *)w;

        (void)revents;
        if (http_on_readable(&ec->c) < 0) {
                ev_io_stop(l, w);
                close(ec->c.fd);
                free(ec);
        }
}

static void http_accept_cb(struct ev_loop *l, ev_io *w, int revents)
{
        int cfd;

        (void)revents;
        while ((cfd = accept4(w->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0) {
                struct ev_conn *ec = malloc(sizeof(*ec));

                if (!ec)
                        bench_die("out of memory");
                http_setup_fd(cfd);
                ec->c.fd = cfd;
                ec->c.len = 0;
                ev_io_init(&ec->io, http_conn_cb, cfd, EV_READ);
                ev_io_start(l, &ec->io);
        }
}

static void http_stop_cb(struct ev_loop *l, ev_signal *w, int revents)
{
        (void)w;
        (void)revents;
        ev_break(l, EVBREAK_ALL);
}

static void bench_http(void)
{
        ev_io lw;
        ev_signal sw;

        loop = new_loop();
        ev_io_init(&lw, http_accept_cb, http_listen(), EV_READ);
        ev_io_start(loop, &lw);
        ev_signal_init(&sw, http_stop_cb, SIGTERM);
        ev_signal_start(loop, &sw);
        bench_note("ev_io, read(2), write(2)");
        ev_run(loop, 0);
        http_report();
        exit(0);
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
        };

        return bench_main(argc, argv, &opts, workloads, sizeof(workloads) / sizeof(workloads[0]));
}
