/* SPDX-License-Identifier: MIT */
/*
 * bench_libuv: the workloads on libuv (anchor). See bench.h.
 *
 *   pipe      one uv_poll_t per read end (uv_poll_init_socket); re-setup =
 *             uv_poll_stop + uv_poll_start for every pair.
 *   timers    uv_timer_t: uv_timer_start / uv_timer_stop. The handles are
 *             uv_timer_init'ed once, untimed (a handle cannot be
 *             re-initialised without a uv_close round trip).
 *   soon      uv_idle_t: one idle handle per callback slot; an idle
 *             handle's callback runs once per loop pass, so -p 1000 =
 *             1000 idle handles.
 *   xthread   uv_async_send from the posting thread. uv_async coalesces:
 *             the note says how many callbacks ran. -q: every post runs
 *             (a mutex-protected queue, uv_async_send as the wake-up).
 *   pingpong  one loop per thread, a uv_async_t each.
 *   echo      uv_poll_t on both sockets (readiness, like loop_add_reader;
 *             not uv_tcp_t's read/write requests), one loop, one thread.
 *   coldtimers  the timers of "timers" on a fresh loop, then again warm
 *             (uv_timer_init untimed, before the cold run).
 *   memtimers, memfds  uv_timer_t + uv_timer_init + uv_timer_start;
 *             uv_poll_t + uv_poll_init_socket + uv_poll_start (the handles
 *             are the caller's memory and are counted).
 *   lateness  uv_timer_start, counting from uv_now() (cached, in ms).
 *   http      uv_tcp_t as a libuv server uses it: uv_listen, uv_accept,
 *             uv_read_start into the connection's buffer, uv_try_write;
 *             uv_signal_t for SIGTERM.
 *   trips, stream  uv_tcp_t streams on a connected loopback pair
 *             (uv_tcp_open; bench.h's xp_pair sets TCP_NODELAY): the
 *             server as libuv's own echo server (test/echo-server.c) does
 *             it, uv_read_start into a malloc'd buffer of the suggested
 *             size (64 KiB) handed to uv_write and freed in its callback;
 *             the client uv_write's the pattern (no copy: the bytes stay
 *             put until the write callback) and reads into one buffer.
 *             libuv has no TLS: -k exits 77.
 */
#include "bench.h"

#include <signal.h>
#include <stdatomic.h>

#include <uv.h>

static struct bench_opts opts;
static uv_loop_t loop_storage, *loop = &loop_storage;

#define UV_CHECK(expr)                                                        \
        do {                                                                  \
                int uv_r_ = (expr);                                           \
                if (uv_r_ < 0)                                                \
                        bench_die("%s:%d: %s: %s", __FILE__, __LINE__, #expr, \
                                  uv_strerror(uv_r_));                        \
        } while (0)

static void init_loop(uv_loop_t *l)
{
        static int noted;

        UV_CHECK(uv_loop_init(l));
        if (!noted++)
                bench_info("libuv %s", uv_version_string());
}

/* Close every handle still open and free the loop's resources. */
static void walk_close(uv_handle_t *h, void *arg)
{
        (void)arg;
        if (!uv_is_closing(h))
                uv_close(h, NULL);
}

static void fini_loop(uv_loop_t *l)
{
        uv_walk(l, walk_close, NULL);
        uv_run(l, UV_RUN_DEFAULT);
        UV_CHECK(uv_loop_close(l));
}

/* ---- pipe ring --------------------------------------------------------- */

static struct ring ring;
static uv_poll_t *polls;

static void ring_cb(uv_poll_t *h, int status, int events)
{
        (void)status;
        (void)events;
        if (ring_on_read(&ring, h - polls))
                uv_stop(h->loop);
}

static BENCH_NOINLINE void uv_ring_setup(struct ring *r)
{
        polls = calloc((size_t)r->n, sizeof(*polls));
        if (!polls)
                bench_die("out of memory");
        for (long i = 0; i < r->n; i++) {
                UV_CHECK(uv_poll_init_socket(loop, &polls[i], r->fds[2 * i]));
                UV_CHECK(uv_poll_start(&polls[i], UV_READABLE, ring_cb));
        }
}

static BENCH_NOINLINE void uv_ring_resetup(struct ring *r)
{
        for (long i = 0; i < r->n; i++) {
                uv_poll_stop(&polls[i]);
                uv_poll_start(&polls[i], UV_READABLE, ring_cb);
        }
}

static BENCH_NOINLINE void uv_ring_flush(struct ring *r)
{
        (void)r;
        uv_run(loop, UV_RUN_NOWAIT);
}

static BENCH_NOINLINE void uv_ring_run(struct ring *r)
{
        (void)r;
        uv_run(loop, UV_RUN_DEFAULT);
}

static void bench_pipe(void)
{
        static const struct ring_ops ops = {
                .setup = uv_ring_setup, .resetup = uv_ring_resetup,
                .flush = uv_ring_flush, .run = uv_ring_run,
        };

        init_loop(loop);
        bench_note("re-setup: uv_poll_stop + uv_poll_start per pair");
        ring_bench(&opts, &ops, &ring);
        fini_loop(loop);
        free(polls);
        ring_close(&ring);
}

/* ---- timers ----------------------------------------------------------------- */

static uv_timer_t *timers;

static void timer_cb(uv_timer_t *t)
{
        (void)t;
        timer_fired++;
}

static BENCH_NOINLINE void uv_timer_schedule(long n, const uint32_t *d)
{
        uv_update_time(loop);
        for (long i = 0; i < n; i++)
                uv_timer_start(&timers[i], timer_cb, d[i], 0);
}

static BENCH_NOINLINE void uv_timer_fire(long n)
{
        while (timer_fired < n)
                uv_run(loop, UV_RUN_NOWAIT);
}

static BENCH_NOINLINE void uv_timer_cancel(long n)
{
        for (long i = 0; i < n; i++)
                uv_timer_stop(&timers[i]);
}

static void bench_timers(void)
{
        static const struct timer_ops ops = {
                .schedule = uv_timer_schedule, .fire = uv_timer_fire,
                .cancel = uv_timer_cancel,
        };
        long n = bench_default(opts.n, 1000000);

        init_loop(loop);
        timers = calloc((size_t)n, sizeof(*timers));
        if (!timers)
                bench_die("out of memory");
        for (long i = 0; i < n; i++)
                UV_CHECK(uv_timer_init(loop, &timers[i]));
        bench_note("uv_timer_start (handles initialised once, untimed); cancel = uv_timer_stop");
        timer_bench(&opts, &ops);
        fini_loop(loop);
        free(timers);
}

/* ---- call_soon: uv_idle -------------------------------------------------------- */

static struct soon sn;

static void idle_cb(uv_idle_t *h)
{
        if (!soon_step(&sn))
                uv_idle_stop(h);
}

static void bench_soon(void)
{
        struct bench_series s = { .metric = "soon" };
        long n = bench_default(opts.n, 10000000);
        uv_idle_t *idles = calloc((size_t)opts.per_pass, sizeof(*idles));

        if (!idles)
                bench_die("out of memory");
        init_loop(loop);
        for (long i = 0; i < opts.per_pass; i++)
                UV_CHECK(uv_idle_init(loop, &idles[i]));
        bench_param("%ld callbacks, %ld per pass", n, opts.per_pass);
        bench_note("one uv_idle handle per callback slot (1000 per pass = 1000 handles)");
        for (int rep = bench_first_rep(&opts); rep < opts.reps; rep++) {
                uint64_t t0, t1;

                soon_reset(&sn, rep < 0 ? n / 10 : n, opts.per_pass);
                t0 = bench_now_ns();
                for (long i = 0; i < sn.queued; i++)
                        uv_idle_start(&idles[i], idle_cb);
                uv_run(loop, UV_RUN_DEFAULT);   /* returns when every idle stopped */
                t1 = bench_now_ns();
                if (sn.count != sn.target)
                        bench_die("soon: %ld of %ld callbacks", sn.count, sn.target);
                if (rep >= 0 && n > 0)
                        bench_add(&s, (double)(t1 - t0) / (double)n);
        }
        if (n > 0)
                bench_print(&s);
        fini_loop(loop);
        free(idles);
}

/* ---- cross-thread posts: uv_async_send ------------------------------------------ */

static uv_async_t x_async;
static uv_idle_t x_start;
static struct mq x_mq;
static long x_ran, x_target, x_calls;
static atomic_int x_go, x_done;
static uint64_t x_t0, x_t1, x_post_ns;

static void x_item(void *arg)
{
        (void)arg;
        if (++x_ran == x_target) {
                x_t1 = bench_now_ns();
                uv_close((uv_handle_t *)&x_async, NULL);
        }
}

static void x_async_cb(uv_async_t *h)
{
        x_calls++;
        if (opts.variant) {
                mq_run(&x_mq);
                return;
        }
        x_ran++;
        if (atomic_load_explicit(&x_done, memory_order_acquire)) {
                x_t1 = bench_now_ns();
                uv_close((uv_handle_t *)h, NULL);
        }
}

static void x_start_cb(uv_idle_t *h)
{
        uv_close((uv_handle_t *)h, NULL);
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
                        uv_async_send(&x_async);
                }
        } else {
                for (long i = 0; i < x_target; i++)
                        uv_async_send(&x_async);
        }
        x_post_ns = bench_now_ns() - x_t0;
        if (!opts.variant) {
                atomic_store_explicit(&x_done, 1, memory_order_release);
                uv_async_send(&x_async);
        }
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
                   ? "every post runs: a mutex-protected queue, uv_async_send after each push"
                   : "uv_async_send per post; coalesces");
        for (int rep = bench_first_rep(&opts); rep < opts.reps; rep++) {
                pthread_t th;

                init_loop(loop);
                mq_init(&x_mq);
                UV_CHECK(uv_async_init(loop, &x_async, x_async_cb));
                UV_CHECK(uv_idle_init(loop, &x_start));
                UV_CHECK(uv_idle_start(&x_start, x_start_cb));
                x_ran = x_calls = 0;
                x_target = n;
                atomic_store(&x_go, 0);
                atomic_store(&x_done, 0);
                pthread_create(&th, NULL, x_producer, NULL);
                uv_run(loop, UV_RUN_DEFAULT);   /* until x_async is closed */
                pthread_join(th, NULL);
                if (opts.variant && x_ran != n)
                        bench_die("xthread: %ld of %ld ran", x_ran, n);
                if (rep >= 0) {
                        bench_add(&total, (double)(x_t1 - x_t0) / (double)n);
                        bench_add(&post, (double)x_post_ns / (double)n);
                        bench_add(&ran, (double)x_ran);
                        bench_add(&wakes, (double)x_calls);
                }
                fini_loop(loop);
                mq_fini(&x_mq);
        }
        bench_print(&total);
        bench_print(&post);
        bench_print(&ran);
        bench_print(&wakes);
}

/* ---- ping-pong: two loops, two threads ---------------------------------------------- */

static uv_loop_t pp_loop[2];
static uv_async_t pp_async[2];
static long pp_trips, pp_target;
static atomic_int pp_stop;

static void pp_a_cb(uv_async_t *h)
{
        if (++pp_trips < pp_target) {
                uv_async_send(&pp_async[1]);
        } else {
                atomic_store(&pp_stop, 1);
                uv_async_send(&pp_async[1]);
                uv_close((uv_handle_t *)h, NULL);
        }
}

static void pp_b_cb(uv_async_t *h)
{
        if (atomic_load(&pp_stop))
                uv_close((uv_handle_t *)h, NULL);
        else
                uv_async_send(&pp_async[0]);
}

static void *pp_thread(void *arg)
{
        (void)arg;
        uv_run(&pp_loop[1], UV_RUN_DEFAULT);
        return NULL;
}

static void bench_pingpong(void)
{
        struct bench_series rt = { .metric = "rtt" };
        long n = bench_default(opts.n, 20000);

        bench_param("%ld round trips per run", n);
        bench_note("uv_async_send each way");
        for (int rep = bench_first_rep(&opts); rep < opts.reps; rep++) {
                pthread_t th;
                uint64_t t0, t1;

                for (int i = 0; i < 2; i++) {
                        init_loop(&pp_loop[i]);
                        UV_CHECK(uv_async_init(&pp_loop[i], &pp_async[i],
                                               i ? pp_b_cb : pp_a_cb));
                }
                pp_trips = 0;
                pp_target = n;
                atomic_store(&pp_stop, 0);
                pthread_create(&th, NULL, pp_thread, NULL);
                t0 = bench_now_ns();
                uv_async_send(&pp_async[1]);
                uv_run(&pp_loop[0], UV_RUN_DEFAULT);
                t1 = bench_now_ns();
                pthread_join(th, NULL);
                for (int i = 0; i < 2; i++)
                        fini_loop(&pp_loop[i]);
                if (rep >= 0)
                        bench_add(&rt, (double)(t1 - t0) / (double)n);
        }
        bench_print(&rt);
}

/* ---- loopback TCP echo -------------------------------------------------------------- */

static struct echo echo;
static uv_poll_t echo_poll[2];

static void echo_server_cb(uv_poll_t *h, int status, int events)
{
        (void)h;
        (void)status;
        (void)events;
        echo_on_server(&echo);
}

static void echo_client_cb(uv_poll_t *h, int status, int events)
{
        (void)status;
        (void)events;
        if (echo_on_client(&echo))
                uv_stop(h->loop);
}

static void uv_echo_setup(struct echo *e)
{
        UV_CHECK(uv_poll_init_socket(loop, &echo_poll[0], e->sfd));
        UV_CHECK(uv_poll_init_socket(loop, &echo_poll[1], e->cfd));
        UV_CHECK(uv_poll_start(&echo_poll[0], UV_READABLE, echo_server_cb));
        UV_CHECK(uv_poll_start(&echo_poll[1], UV_READABLE, echo_client_cb));
}

static void uv_echo_run(struct echo *e)
{
        (void)e;
        uv_run(loop, UV_RUN_DEFAULT);
}

static void uv_echo_teardown(struct echo *e)
{
        (void)e;
        uv_poll_stop(&echo_poll[0]);
        uv_poll_stop(&echo_poll[1]);
}

static void bench_echo(void)
{
        static const struct echo_ops ops = {
                .setup = uv_echo_setup, .run = uv_echo_run,
                .teardown = uv_echo_teardown,
        };

        init_loop(loop);
        echo_bench(&opts, &ops, &echo);
        fini_loop(loop);
}

/* ---- cold timers --------------------------------------------------------------- */

static BENCH_NOINLINE void uv_cold_pass(void)
{
        uv_run(loop, UV_RUN_NOWAIT);
}

static void bench_coldtimers(void)
{
        static const struct cold_timer_ops ops = {
                .schedule = uv_timer_schedule, .cancel = uv_timer_cancel,
                .pass = uv_cold_pass,
        };
        long n = bench_default(opts.n, 1000000);

        timers = calloc((size_t)n, sizeof(*timers));
        if (!timers)
                bench_die("out of memory");
        init_loop(loop);
        for (long i = 0; i < n; i++)
                UV_CHECK(uv_timer_init(loop, &timers[i]));
        bench_note("uv_update_time once per batch, uv_timer_start (handles uv_timer_init'ed before, "
                   "untimed: that touches the caller's memory); cancel = uv_timer_stop");
        cold_timer_bench(&opts, &ops);
        fini_loop(loop);
        free(timers);
}

/* ---- memory ---------------------------------------------------------------------- */

static void mem_poll_cb(uv_poll_t *h, int status, int events)
{
        (void)h;
        (void)status;
        (void)events;
}

static void uv_mem_timers(long n, const uint32_t *d)
{
        timers = malloc((size_t)n * sizeof(*timers));
        if (!timers)
                bench_die("out of memory");
        for (long i = 0; i < n; i++)
                UV_CHECK(uv_timer_init(loop, &timers[i]));
        uv_timer_schedule(n, d);
}

static void uv_mem_fds(const int *fds, long nfds)
{
        uv_poll_t *p = malloc((size_t)nfds * sizeof(*p));

        if (!p)
                bench_die("out of memory");
        for (long i = 0; i < nfds; i++) {
                UV_CHECK(uv_poll_init_socket(loop, &p[i], fds[i]));
                UV_CHECK(uv_poll_start(&p[i], UV_READABLE, mem_poll_cb));
        }
        uv_run(loop, UV_RUN_NOWAIT);
}

static void bench_memory(void)
{
        static const struct mem_ops ops = {
                .timers = uv_mem_timers, .fds = uv_mem_fds,
                .caller_timer = sizeof(uv_timer_t), .caller_fd = sizeof(uv_poll_t),
        };

        init_loop(loop);
        bench_note("timer: uv_timer_t (the caller's) + uv_timer_init + uv_timer_start; "
                   "fd: uv_poll_t (the caller's) + uv_poll_init_socket + uv_poll_start");
        mem_bench(&opts, &ops);
}

/* ---- timer lateness ---------------------------------------------------------------- */

static uv_timer_t *late_t;

static void late_cb(uv_timer_t *t)
{
        late_fire(t - late_t);
}

static void uv_late_pass(void)
{
        uv_run(loop, UV_RUN_NOWAIT);
}

static int64_t uv_late_schedule(long i, uint32_t d)
{
        UV_CHECK(uv_timer_init(loop, &late_t[i]));
        UV_CHECK(uv_timer_start(&late_t[i], late_cb, d, 0));
        return ((int64_t)uv_now(loop) + (int64_t)d) * 1000000;
}

static void uv_late_run(void)
{
        uv_run(loop, UV_RUN_DEFAULT);
}

static void bench_lateness(void)
{
        static const struct late_ops ops = {
                .pass = uv_late_pass, .schedule = uv_late_schedule, .run = uv_late_run,
        };

        init_loop(loop);
        late_t = calloc((size_t)bench_default(opts.n, 10000), sizeof(*late_t));
        if (!late_t)
                bench_die("out of memory");
        bench_note("uv_timer_start counts from uv_now(), the loop's cached time in ms "
                   "(CLOCK_MONOTONIC_COARSE where that is fine enough); due = (uv_now() + delay) ms");
        late_bench(&opts, &ops);
        fini_loop(loop);
        free(late_t);
}

/* ---- HTTP server: uv_tcp_t, the API a libuv server uses ---------------------------- */

struct uv_conn {
        uv_tcp_t tcp;
        struct http_conn c;
};

static void http_free_cb(uv_handle_t *h)
{
        free(h->data);
}

static void http_alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
        struct uv_conn *uc = h->data;

        (void)suggested;
        buf->base = uc->c.buf + uc->c.len;
        buf->len = sizeof(uc->c.buf) - uc->c.len;
}

static void http_read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
        struct uv_conn *uc = s->data;
        long reqs;

        (void)buf;
        if (nread == 0)
                return;
        if (nread < 0) {
                if (nread != UV_EOF)
                        http_errors++;
                uv_close((uv_handle_t *)s, http_free_cb);
                return;
        }
        uc->c.len += (size_t)nread;
        reqs = http_parse(&uc->c, (size_t)nread);
        if (reqs < 0) {
                http_errors++;
                uv_close((uv_handle_t *)s, http_free_cb);
                return;
        }
        http_served += reqs;
        while (reqs > 0) {
                long b = reqs < HTTP_MAX_BATCH ? reqs : HTTP_MAX_BATCH;
                uv_buf_t out = uv_buf_init(http_out, (unsigned)(b * HTTP_RESPONSE_LEN));
                int w = uv_try_write(s, &out, 1);

                /* the rest, if any, as the other programs do it */
                if (w < 0 && w != UV_EAGAIN) {
                        http_errors++;
                        return;
                }
                if (w < 0)
                        w = 0;
                if ((size_t)w < out.len) {
                        http_short_writes++;
                        http_write_all(uc->c.fd, out.base + w, out.len - (size_t)w);
                }
                reqs -= b;
        }
}

static void http_connection_cb(uv_stream_t *server, int status)
{
        struct uv_conn *uc;

        if (status < 0)
                return;
        uc = malloc(sizeof(*uc));
        if (!uc)
                bench_die("out of memory");
        UV_CHECK(uv_tcp_init(loop, &uc->tcp));
        uc->tcp.data = uc;
        uc->c.len = 0;
        if (uv_accept(server, (uv_stream_t *)&uc->tcp) < 0) {
                uv_close((uv_handle_t *)&uc->tcp, http_free_cb);
                return;
        }
        UV_CHECK(uv_fileno((uv_handle_t *)&uc->tcp, &uc->c.fd));
        http_setup_fd(uc->c.fd);
        UV_CHECK(uv_read_start((uv_stream_t *)&uc->tcp, http_alloc_cb, http_read_cb));
}

static void http_stop_cb(uv_signal_t *h, int signum)
{
        (void)signum;
        uv_stop(h->loop);
}

static void bench_http(void)
{
        uv_tcp_t server;
        uv_signal_t sig;

        init_loop(loop);
        UV_CHECK(uv_tcp_init(loop, &server));
        UV_CHECK(uv_tcp_open(&server, http_listen()));
        UV_CHECK(uv_listen((uv_stream_t *)&server, 4096, http_connection_cb));
        UV_CHECK(uv_signal_init(loop, &sig));
        UV_CHECK(uv_signal_start(&sig, http_stop_cb, SIGTERM));
        bench_note("uv_tcp_t: uv_listen, uv_accept, uv_read_start, uv_try_write");
        uv_run(loop, UV_RUN_DEFAULT);
        http_report();
        exit(0);
}

/* ---- transport echo (trips, stream) ------------------------------------------------ */

static uv_tcp_t xp_ctcp, xp_stcp;

struct xp_wreq {
        uv_write_t req;
        uv_buf_t buf;
        struct xp_wreq *next;   /* the client's free list */
};

static struct xp_wreq *xp_free_reqs;

static void xp_client_write_cb(uv_write_t *req, int status)
{
        struct xp_wreq *w = (struct xp_wreq *)req;

        if (status < 0)
                bench_die("uv_write (client): %s", uv_strerror(status));
        w->next = xp_free_reqs;
        xp_free_reqs = w;
}

static void xp_pump(void)
{
        const void *p;
        size_t len;

        while ((len = xp_next(&p)) > 0) {
                struct xp_wreq *w = xp_free_reqs;

                if (w)
                        xp_free_reqs = w->next;
                else if (!(w = malloc(sizeof(*w))))
                        bench_die("out of memory");
                w->buf = uv_buf_init((char *)p, (unsigned)len);
                UV_CHECK(uv_write(&w->req, (uv_stream_t *)&xp_ctcp, &w->buf, 1, xp_client_write_cb));
        }
}

static void xp_server_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
        (void)h;
        buf->base = malloc(suggested);
        buf->len = buf->base ? suggested : 0;
}

static void xp_server_write_cb(uv_write_t *req, int status)
{
        struct xp_wreq *w = (struct xp_wreq *)req;

        if (status < 0)
                bench_die("uv_write (server): %s", uv_strerror(status));
        free(w->buf.base);
        free(w);
}

static void xp_server_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
        struct xp_wreq *w;

        if (nread <= 0) {
                free(buf->base);
                if (nread < 0)
                        bench_die("server read: %s", uv_strerror((int)nread));
                return;
        }
        if (!(w = malloc(sizeof(*w))))
                bench_die("out of memory");
        w->buf = uv_buf_init(buf->base, (unsigned)nread);
        UV_CHECK(uv_write(&w->req, s, &w->buf, 1, xp_server_write_cb));
}

static char xp_cbuf[XP_CHUNK];

static void xp_client_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
        (void)h;
        (void)suggested;
        *buf = uv_buf_init(xp_cbuf, sizeof(xp_cbuf));
}

static void xp_client_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
        if (nread < 0)
                bench_die("client read: %s", uv_strerror((int)nread));
        if (nread == 0)
                return;
        if (xp_on_data(buf->base, (size_t)nread))
                uv_stop(s->loop);
        else
                xp_pump();
}

static void xp_run(void)
{
        xp_pump();
        uv_run(loop, UV_RUN_DEFAULT);
}

static void bench_transport(void)
{
        int cfd, sfd;

        if (xp_init(&opts))
                bench_skip("no TLS in libuv");
        init_loop(loop);
        xp_pair(&cfd, &sfd);
        UV_CHECK(uv_tcp_init(loop, &xp_ctcp));
        UV_CHECK(uv_tcp_open(&xp_ctcp, cfd));
        UV_CHECK(uv_tcp_init(loop, &xp_stcp));
        UV_CHECK(uv_tcp_open(&xp_stcp, sfd));
        UV_CHECK(uv_read_start((uv_stream_t *)&xp_stcp, xp_server_alloc, xp_server_read));
        UV_CHECK(uv_read_start((uv_stream_t *)&xp_ctcp, xp_client_alloc, xp_client_read));
        bench_note("uv_tcp_t: uv_read_start, uv_write (server: a malloc'd 64 KiB buffer per read, "
                   "as libuv's echo server)");
        xp_bench(&opts, xp_run);
        fini_loop(loop);
        while (xp_free_reqs) {
                struct xp_wreq *w = xp_free_reqs;

                xp_free_reqs = w->next;
                free(w);
        }
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
        };

        return bench_main(argc, argv, &opts, workloads, sizeof(workloads) / sizeof(workloads[0]));
}
