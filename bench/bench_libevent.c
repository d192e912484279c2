/* SPDX-License-Identifier: MIT */
/*
 * bench_libevent: the workloads on libevent 2.1 (anchor). See bench.h.
 *
 *   pipe      one struct event (EV_READ | EV_PERSIST) per read end;
 *             re-setup = event_del + event_assign + event_add per pair
 *             (as Niels Provos' test/bench.c).
 *   timers    evtimer_assign + evtimer_add with the delay; event_del.
 *   soon      event_active on fd-less events; each callback activates
 *             itself again. libevent would run a callback activated
 *             during dispatch in the same pass, so the base is configured
 *             with event_config_set_max_dispatch_interval(max_callbacks =
 *             per-pass count): after that many callbacks it polls again.
 *   xthread   event_base_once(EV_TIMEOUT, no timeout) from the posting
 *             thread, evthread_use_pthreads(): every post runs.
 *   pingpong  one base per thread, event_base_once onto the other base.
 *   echo      struct event (EV_READ | EV_PERSIST) on both sockets.
 *   coldtimers  the timers of "timers" on a fresh base, then again warm.
 *   memtimers, memfds  struct event (the caller's memory, counted) +
 *             evtimer_add; event_assign + event_add.
 *   lateness  evtimer_add (libevent's clock: CLOCK_MONOTONIC_COARSE).
 *   http      struct event (EV_READ | EV_PERSIST) on the listening socket
 *             and on every connection, read(2), write(2); not bufferevents,
 *             so that it is the same work as the other readers.
 *   trips, stream  bufferevent_socket_new on a connected loopback pair
 *             (bench.h's xp_pair sets TCP_NODELAY), default watermarks and
 *             read/write sizes: the server moves its input buffer to its
 *             output (bufferevent_write_buffer, no copy), the client
 *             bufferevent_write's the pattern (a copy into the output
 *             buffer) and drains what comes back. -k DIR: TLS, a
 *             bufferevent_openssl_filter_new over each socket bufferevent
 *             (the filter: OpenSSL reads and writes through the underlying
 *             bufferevent's buffers, as libloop's memory BIOs feed its raw
 *             transport); -k DIR -q: bufferevent_openssl_socket_new
 *             instead (OpenSSL reads and writes the socket itself). Built
 *             without libevent_openssl (BENCH_LIBEVENT_OPENSSL), -k exits 77.
 *
 * evthread_use_pthreads() is called only for xthread and pingpong: it puts
 * a lock round every base operation, which a single-threaded user would not
 * pay.
 */
#include "bench.h"

#include <signal.h>
#include <stdatomic.h>

#include <event2/event.h>
#include <event2/event_struct.h>      /* struct event, for event_assign */
#include <event2/thread.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>

#ifdef BENCH_LIBEVENT_OPENSSL
#include <event2/bufferevent_ssl.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#endif

static struct bench_opts opts;
static struct event_base *base;

static struct event_base *new_base(int max_callbacks)
{
        struct event_config *cfg = event_config_new();
        struct event_base *b;
        static int noted;

        if (!cfg)
                bench_die("event_config_new failed");
        if (max_callbacks > 0 &&
            event_config_set_max_dispatch_interval(cfg, NULL, max_callbacks, 0) < 0)
                bench_die("event_config_set_max_dispatch_interval failed");
        b = event_base_new_with_config(cfg);
        event_config_free(cfg);
        if (!b)
                bench_die("event_base_new failed");
        if (!noted++)
                bench_info("libevent %s, method %s", event_get_version(),
                           event_base_get_method(b));
        return b;
}

/* ---- pipe ring --------------------------------------------------------- */

static struct ring ring;
static struct event *evs;

static void ring_cb(evutil_socket_t fd, short what, void *arg)
{
        (void)fd;
        (void)what;
        if (ring_on_read(&ring, (long)(intptr_t)arg))
                event_base_loopbreak(base);
}

static BENCH_NOINLINE void le_ring_setup(struct ring *r)
{
        evs = calloc((size_t)r->n, sizeof(*evs));
        if (!evs)
                bench_die("out of memory");
        for (long i = 0; i < r->n; i++) {
                event_assign(&evs[i], base, r->fds[2 * i], EV_READ | EV_PERSIST,
                             ring_cb, (void *)(intptr_t)i);
                BENCH_CHECK(event_add(&evs[i], NULL));
        }
}

static BENCH_NOINLINE void le_ring_resetup(struct ring *r)
{
        for (long i = 0; i < r->n; i++) {
                event_del(&evs[i]);
                event_assign(&evs[i], base, r->fds[2 * i], EV_READ | EV_PERSIST,
                             ring_cb, (void *)(intptr_t)i);
                event_add(&evs[i], NULL);
        }
}

static BENCH_NOINLINE void le_ring_flush(struct ring *r)
{
        (void)r;
        event_base_loop(base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
}

static BENCH_NOINLINE void le_ring_run(struct ring *r)
{
        (void)r;
        event_base_loop(base, 0);
}

static void bench_pipe(void)
{
        static const struct ring_ops ops = {
                .setup = le_ring_setup, .resetup = le_ring_resetup,
                .flush = le_ring_flush, .run = le_ring_run,
        };

        base = new_base(0);
        bench_note("re-setup: event_del + event_assign + event_add per pair");
        ring_bench(&opts, &ops, &ring);
        for (long i = 0; i < ring.n; i++)
                event_del(&evs[i]);
        free(evs);
        ring_close(&ring);
        event_base_free(base);
}

/* ---- timers ----------------------------------------------------------------- */

static struct event *timers;

static void timer_cb(evutil_socket_t fd, short what, void *arg)
{
        (void)fd;
        (void)what;
        (void)arg;
        timer_fired++;
}

static BENCH_NOINLINE void le_timer_schedule(long n, const uint32_t *d)
{
        for (long i = 0; i < n; i++) {
                struct timeval tv = {
                        .tv_sec = d[i] / 1000,
                        .tv_usec = (suseconds_t)(d[i] % 1000) * 1000,
                };

                evtimer_assign(&timers[i], base, timer_cb, NULL);
                evtimer_add(&timers[i], &tv);
        }
}

static BENCH_NOINLINE void le_timer_fire(long n)
{
        while (timer_fired < n)
                event_base_loop(base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
}

static BENCH_NOINLINE void le_timer_cancel(long n)
{
        for (long i = 0; i < n; i++)
                event_del(&timers[i]);
}

static void bench_timers(void)
{
        static const struct timer_ops ops = {
                .schedule = le_timer_schedule, .fire = le_timer_fire,
                .cancel = le_timer_cancel,
        };
        long n = bench_default(opts.n, 1000000);

        base = new_base(0);
        timers = calloc((size_t)n, sizeof(*timers));
        if (!timers)
                bench_die("out of memory");
        bench_note("evtimer_assign + evtimer_add; cancel = event_del");
        timer_bench(&opts, &ops);
        free(timers);
        event_base_free(base);
}

/* ---- call_soon: event_active ----------------------------------------------------- */

static struct soon sn;

static void soon_cb(evutil_socket_t fd, short what, void *arg)
{
        (void)fd;
        if (soon_step(&sn))
                event_active(arg, what, 0);
}

static void bench_soon(void)
{
        struct bench_series s = { .metric = "soon" };
        long n = bench_default(opts.n, 10000000);
        struct event *ev = calloc((size_t)opts.per_pass, sizeof(*ev));

        if (!ev)
                bench_die("out of memory");
        base = new_base((int)opts.per_pass);
        for (long i = 0; i < opts.per_pass; i++)
                event_assign(&ev[i], base, -1, 0, soon_cb, &ev[i]);
        bench_param("%ld callbacks, %ld per pass", n, opts.per_pass);
        bench_note("event_active on itself, max_dispatch_callbacks = callbacks per pass");
        for (int rep = bench_first_rep(&opts); rep < opts.reps; rep++) {
                uint64_t t0, t1;

                soon_reset(&sn, rep < 0 ? n / 10 : n, opts.per_pass);
                t0 = bench_now_ns();
                for (long i = 0; i < sn.queued; i++)
                        event_active(&ev[i], EV_TIMEOUT, 0);
                event_base_loop(base, 0);       /* returns when nothing is active */
                t1 = bench_now_ns();
                if (sn.count != sn.target)
                        bench_die("soon: %ld of %ld callbacks", sn.count, sn.target);
                if (rep >= 0 && n > 0)
                        bench_add(&s, (double)(t1 - t0) / (double)n);
        }
        if (n > 0)
                bench_print(&s);
        event_base_free(base);
        free(ev);
}

/* ---- cross-thread posts: event_base_once -------------------------------------------- */

static long x_ran, x_target;
static atomic_int x_go;
static uint64_t x_t0, x_t1, x_post_ns;

static void x_cb(evutil_socket_t fd, short what, void *arg)
{
        (void)fd;
        (void)what;
        (void)arg;
        if (++x_ran == x_target) {
                x_t1 = bench_now_ns();
                event_base_loopbreak(base);
        }
}

static void x_start_cb(evutil_socket_t fd, short what, void *arg)
{
        (void)fd;
        (void)what;
        (void)arg;
        atomic_store_explicit(&x_go, 1, memory_order_release);
}

static void *x_producer(void *arg)
{
        (void)arg;
        while (!atomic_load_explicit(&x_go, memory_order_acquire))
                ;
        x_t0 = bench_now_ns();
        for (long i = 0; i < x_target; i++)
                if (event_base_once(base, -1, EV_TIMEOUT, x_cb, NULL, NULL) < 0)
                        bench_die("event_base_once failed");
        x_post_ns = bench_now_ns() - x_t0;
        return NULL;
}

static void bench_xthread(void)
{
        struct bench_series total = { .metric = "total" };
        struct bench_series post = { .metric = "post" };
        struct bench_series ran = { .metric = "ran" };
        long n = bench_default(opts.n, 1000000);

        BENCH_CHECK(evthread_use_pthreads());
        bench_param("%ld posts", n);
        bench_note("event_base_once, evthread_use_pthreads; every post runs");
        for (int rep = bench_first_rep(&opts); rep < opts.reps; rep++) {
                pthread_t th;

                base = new_base(0);
                x_ran = 0;
                x_target = n;
                atomic_store(&x_go, 0);
                event_base_once(base, -1, EV_TIMEOUT, x_start_cb, NULL, NULL);
                pthread_create(&th, NULL, x_producer, NULL);
                event_base_loop(base, EVLOOP_NO_EXIT_ON_EMPTY);
                pthread_join(th, NULL);
                if (x_ran != n)
                        bench_die("xthread: %ld of %ld ran", x_ran, n);
                if (rep >= 0) {
                        bench_add(&total, (double)(x_t1 - x_t0) / (double)n);
                        bench_add(&post, (double)x_post_ns / (double)n);
                        bench_add(&ran, (double)x_ran);
                }
                event_base_free(base);
        }
        bench_print(&total);
        bench_print(&post);
        bench_print(&ran);
}

/* ---- ping-pong: two bases, two threads ---------------------------------------------- */

static struct event_base *pp_base[2];
static long pp_trips, pp_target;

static void pp_b_cb(evutil_socket_t fd, short what, void *arg);

static void pp_a_cb(evutil_socket_t fd, short what, void *arg)
{
        (void)fd;
        (void)what;
        (void)arg;
        if (++pp_trips < pp_target) {
                event_base_once(pp_base[1], -1, EV_TIMEOUT, pp_b_cb, NULL, NULL);
        } else {
                event_base_loopbreak(pp_base[1]);
                event_base_loopbreak(pp_base[0]);
        }
}

static void pp_b_cb(evutil_socket_t fd, short what, void *arg)
{
        (void)fd;
        (void)what;
        (void)arg;
        event_base_once(pp_base[0], -1, EV_TIMEOUT, pp_a_cb, NULL, NULL);
}

static void *pp_thread(void *arg)
{
        (void)arg;
        event_base_loop(pp_base[1], EVLOOP_NO_EXIT_ON_EMPTY);
        return NULL;
}

static void bench_pingpong(void)
{
        struct bench_series rt = { .metric = "rtt" };
        long n = bench_default(opts.n, 20000);

        BENCH_CHECK(evthread_use_pthreads());
        bench_param("%ld round trips per run", n);
        bench_note("event_base_once each way");
        for (int rep = bench_first_rep(&opts); rep < opts.reps; rep++) {
                pthread_t th;
                uint64_t t0, t1;

                pp_base[0] = new_base(0);
                pp_base[1] = new_base(0);
                pp_trips = 0;
                pp_target = n;
                pthread_create(&th, NULL, pp_thread, NULL);
                t0 = bench_now_ns();
                event_base_once(pp_base[1], -1, EV_TIMEOUT, pp_b_cb, NULL, NULL);
                event_base_loop(pp_base[0], EVLOOP_NO_EXIT_ON_EMPTY);
                t1 = bench_now_ns();
                pthread_join(th, NULL);
                event_base_free(pp_base[0]);
                event_base_free(pp_base[1]);
                if (rep >= 0)
                        bench_add(&rt, (double)(t1 - t0) / (double)n);
        }
        bench_print(&rt);
}

/* ---- loopback TCP echo -------------------------------------------------------------- */

static struct echo echo;
static struct event echo_ev[2];

static void echo_server_cb(evutil_socket_t fd, short what, void *arg)
{
        (void)fd;
        (void)what;
        (void)arg;
        echo_on_server(&echo);
}

static void echo_client_cb(evutil_socket_t fd, short what, void *arg)
{
        (void)fd;
        (void)what;
        (void)arg;
        if (echo_on_client(&echo))
                event_base_loopbreak(base);
}

static void le_echo_setup(struct echo *e)
{
        event_assign(&echo_ev[0], base, e->sfd, EV_READ | EV_PERSIST, echo_server_cb, NULL);
        event_assign(&echo_ev[1], base, e->cfd, EV_READ | EV_PERSIST, echo_client_cb, NULL);
        BENCH_CHECK(event_add(&echo_ev[0], NULL));
        BENCH_CHECK(event_add(&echo_ev[1], NULL));
}

static void le_echo_run(struct echo *e)
{
        (void)e;
        event_base_loop(base, 0);
}

static void le_echo_teardown(struct echo *e)
{
        (void)e;
        event_del(&echo_ev[0]);
        event_del(&echo_ev[1]);
}

static void bench_echo(void)
{
        static const struct echo_ops ops = {
                .setup = le_echo_setup, .run = le_echo_run,
                .teardown = le_echo_teardown,
        };

        base = new_base(0);
        echo_bench(&opts, &ops, &echo);
        event_base_free(base);
}

/* ---- cold timers --------------------------------------------------------------- */

static BENCH_NOINLINE void le_cold_pass(void)
{
        event_base_loop(base, EVLOOP_NONBLOCK);
}

static void bench_coldtimers(void)
{
        static const struct cold_timer_ops ops = {
                .schedule = le_timer_schedule, .cancel = le_timer_cancel,
                .pass = le_cold_pass,
        };
        long n = bench_default(opts.n, 1000000);

        timers = calloc((size_t)n, sizeof(*timers));
        if (!timers)
                bench_die("out of memory");
        if (!opts.no_warmup)    /* -z: the caller's pages left untouched too */
                memset(timers, 0, (size_t)n * sizeof(*timers));
        base = new_base(0);
        bench_note("evtimer_assign + evtimer_add; cancel = event_del");
        cold_timer_bench(&opts, &ops);
        event_base_free(base);
        free(timers);
}

/* ---- memory ---------------------------------------------------------------------- */

static void mem_ev_cb(evutil_socket_t fd, short what, void *arg)
{
        (void)fd;
        (void)what;
        (void)arg;
}

static void le_mem_timers(long n, const uint32_t *d)
{
        timers = malloc((size_t)n * sizeof(*timers));
        if (!timers)
                bench_die("out of memory");
        le_timer_schedule(n, d);
}

static void le_mem_fds(const int *fds, long nfds)
{
        struct event *e = malloc((size_t)nfds * sizeof(*e));

        if (!e)
                bench_die("out of memory");
        for (long i = 0; i < nfds; i++) {
                event_assign(&e[i], base, fds[i], EV_READ | EV_PERSIST, mem_ev_cb, NULL);
                BENCH_CHECK(event_add(&e[i], NULL));
        }
        event_base_loop(base, EVLOOP_NONBLOCK);
}

static void bench_memory(void)
{
        static const struct mem_ops ops = {
                .timers = le_mem_timers, .fds = le_mem_fds,
                .caller_timer = sizeof(struct event), .caller_fd = sizeof(struct event),
        };

        base = new_base(0);
        bench_note("timer: struct event (the caller's) + evtimer_assign + evtimer_add; "
                   "fd: struct event (the caller's) + event_assign + event_add");
        mem_bench(&opts, &ops);
}

/* ---- timer lateness ---------------------------------------------------------------- */

static struct event *late_ev;

static void late_cb(evutil_socket_t fd, short what, void *arg)
{
        (void)fd;
        (void)what;
        late_fire((long)(intptr_t)arg);
}

static void le_late_pass(void)
{
        event_base_loop(base, EVLOOP_NONBLOCK);
}

static int64_t le_late_schedule(long i, uint32_t d)
{
        struct timeval tv = { .tv_sec = d / 1000, .tv_usec = (suseconds_t)(d % 1000) * 1000 };
        struct timespec ts;

        /* libevent reads CLOCK_MONOTONIC_COARSE in event_add outside
         * dispatch (unless EVENT_BASE_FLAG_PRECISE_TIMER) */
        clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
        evtimer_assign(&late_ev[i], base, late_cb, (void *)(intptr_t)i);
        BENCH_CHECK(evtimer_add(&late_ev[i], &tv));
        return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec + (int64_t)d * 1000000;
}

static void le_late_run(void)
{
        event_base_dispatch(base);
}

static void bench_lateness(void)
{
        static const struct late_ops ops = {
                .pass = le_late_pass, .schedule = le_late_schedule, .run = le_late_run,
        };

        base = new_base(0);
        late_ev = calloc((size_t)bench_default(opts.n, 10000), sizeof(*late_ev));
        if (!late_ev)
                bench_die("out of memory");
        bench_note("evtimer_add counts from CLOCK_MONOTONIC_COARSE (libevent's default clock); "
                   "due = that clock read before the call + delay");
        late_bench(&opts, &ops);
        event_base_free(base);
        free(late_ev);
}

/* ---- HTTP server: struct event per connection -------------------------------------- */

struct le_conn {
        struct event ev;
        struct http_conn c;
};

static void http_conn_cb(evutil_socket_t fd, short what, void *arg)
{
        struct le_conn *lc = arg;

        (void)what;
        if (http_on_readable(&lc->c) < 0) {
                event_del(&lc->ev);
                close(fd);
                free(lc);
        }
}

static void http_accept_cb(evutil_socket_t fd, short what, void *arg)
{
        int cfd;

        (void)what;
        (void)arg;
        while ((cfd = accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0) {
                struct le_conn *lc = malloc(sizeof(*lc));

                if (!lc)
                        bench_die("out of memory");
                http_setup_fd(cfd);
                lc->c.fd = cfd;
                lc->c.len = 0;
                event_assign(&lc->ev, base, cfd, EV_READ | EV_PERSIST, http_conn_cb, lc);
                BENCH_CHECK(event_add(&lc->ev, NULL));
        }
}

static void http_stop_cb(evutil_socket_t sig, short what, void *arg)
{
        (void)sig;
        (void)what;
        (void)arg;
        event_base_loopbreak(base);
}

static void bench_http(void)
{
        struct event lev, sev;

        base = new_base(0);
        event_assign(&lev, base, http_listen(), EV_READ | EV_PERSIST, http_accept_cb, NULL);
        BENCH_CHECK(event_add(&lev, NULL));
        evsignal_assign(&sev, base, SIGTERM, http_stop_cb, NULL);
        BENCH_CHECK(event_add(&sev, NULL));
        bench_note("struct event (EV_READ | EV_PERSIST), read(2), write(2)");
        event_base_dispatch(base);
        http_report();
        exit(0);
}

/* ---- transport echo (trips, stream) ------------------------------------------------ */

static struct bufferevent *xp_cbev, *xp_sbev;
static int xp_connected;

static void xp_pump(void)
{
        const void *p;
        size_t len;

        while ((len = xp_next(&p)) > 0)
                BENCH_CHECK(bufferevent_write(xp_cbev, p, len));
}

static void xp_server_read(struct bufferevent *bev, void *arg)
{
        (void)arg;
        BENCH_CHECK(bufferevent_write_buffer(bev, bufferevent_get_input(bev)));
}

static void xp_client_read(struct bufferevent *bev, void *arg)
{
        struct evbuffer *in = bufferevent_get_input(bev);
        size_t n = evbuffer_get_length(in);

        (void)arg;
        if (xp.check) {
                struct evbuffer_iovec v[64];
                int k = evbuffer_peek(in, -1, NULL, v, 64);
                uint64_t off = 0;

                if (k > 64)
                        bench_die("evbuffer_peek: %d chains", k);
                for (int i = 0; i < k; i++) {
                        xp_check(off, v[i].iov_base, v[i].iov_len);
                        off += v[i].iov_len;
                }
        }
        BENCH_CHECK(evbuffer_drain(in, n));
        if (xp_received(n))
                event_base_loopbreak(base);
        else
                xp_pump();
}

static void xp_event(struct bufferevent *bev, short what, void *arg)
{
        const char *side = arg;

        (void)bev;
        if (what & BEV_EVENT_CONNECTED) {
                xp_connected++;
                return;
        }
#ifdef BENCH_LIBEVENT_OPENSSL
        {
                unsigned long e = bufferevent_get_openssl_error(bev);
                char buf[256] = "";

                if (e)
                        ERR_error_string_n(e, buf, sizeof(buf));
                bench_die("%s bufferevent: event 0x%x (%s%s%s)", side, (unsigned)what,
                          evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()), e ? ", " : "", buf);
        }
#else
        bench_die("%s bufferevent: event 0x%x (%s)", side, (unsigned)what,
                  evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()));
#endif
}

static void xp_run(void)
{
        xp_pump();
        BENCH_CHECK(event_base_dispatch(base));
}

#ifdef BENCH_LIBEVENT_OPENSSL
static SSL_CTX *xp_ssl_ctx(int server)
{
        SSL_CTX *ctx = SSL_CTX_new(server ? TLS_server_method() : TLS_client_method());

        if (!ctx || !SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION))
                bench_die("SSL_CTX_new failed");
        if (server && (SSL_CTX_use_certificate_chain_file(ctx, xp.cert) != 1 ||
                       SSL_CTX_use_PrivateKey_file(ctx, xp.key, SSL_FILETYPE_PEM) != 1))
                bench_die("loading %s and %s failed", xp.cert, xp.key);
        SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
        return ctx;
}

/* The TLS bufferevent for one end: the filter over a socket bufferevent,
 * or (-q) OpenSSL on the socket itself. */
static struct bufferevent *xp_tls_bev(SSL_CTX *ctx, int fd, int server)
{
        SSL *ssl = SSL_new(ctx);
        enum bufferevent_ssl_state st = server ? BUFFEREVENT_SSL_ACCEPTING : BUFFEREVENT_SSL_CONNECTING;
        struct bufferevent *bev;

        if (!ssl)
                bench_die("SSL_new failed");
        if (opts.variant) {
                bev = bufferevent_openssl_socket_new(base, fd, ssl, st, BEV_OPT_CLOSE_ON_FREE);
        } else {
                struct bufferevent *under = bufferevent_socket_new(base, fd, BEV_OPT_CLOSE_ON_FREE);

                if (!under)
                        bench_die("bufferevent_socket_new failed");
                bev = bufferevent_openssl_filter_new(base, under, ssl, st, BEV_OPT_CLOSE_ON_FREE);
        }
        if (!bev)
                bench_die("bufferevent_openssl_%s_new failed", opts.variant ? "socket" : "filter");
        return bev;
}
#endif

static void bench_transport(void)
{
        int tls = xp_init(&opts), cfd, sfd;
#ifdef BENCH_LIBEVENT_OPENSSL
        SSL_CTX *sctx = NULL, *cctx = NULL;
#endif

#ifndef BENCH_LIBEVENT_OPENSSL
        if (tls)
                bench_skip("bench_libevent built without libevent_openssl");
#endif
        base = new_base(0);
        xp_pair(&cfd, &sfd);
        if (!tls) {
                xp_cbev = bufferevent_socket_new(base, cfd, BEV_OPT_CLOSE_ON_FREE);
                xp_sbev = bufferevent_socket_new(base, sfd, BEV_OPT_CLOSE_ON_FREE);
                if (!xp_cbev || !xp_sbev)
                        bench_die("bufferevent_socket_new failed");
                xp_connected = 2;
        }
#ifdef BENCH_LIBEVENT_OPENSSL
        else {
                sctx = xp_ssl_ctx(1);
                cctx = xp_ssl_ctx(0);
                xp_sbev = xp_tls_bev(sctx, sfd, 1);
                xp_cbev = xp_tls_bev(cctx, cfd, 0);
        }
#endif
        bufferevent_setcb(xp_sbev, xp_server_read, NULL, xp_event, "server");
        bufferevent_setcb(xp_cbev, xp_client_read, NULL, xp_event, "client");
        BENCH_CHECK(bufferevent_enable(xp_sbev, EV_READ | EV_WRITE));
        BENCH_CHECK(bufferevent_enable(xp_cbev, EV_READ | EV_WRITE));
        /* the handshakes (TLS): both ends report BEV_EVENT_CONNECTED */
        while (xp_connected < 2)
                BENCH_CHECK(event_base_loop(base, EVLOOP_ONCE));
        if (!tls) {
                bench_note("bufferevent_socket_new, bufferevent_write; the server: bufferevent_write_buffer");
        }
#ifdef BENCH_LIBEVENT_OPENSSL
        else {
                SSL *ssl = bufferevent_openssl_get_ssl(xp_cbev);

                bench_note("%s %s, %s", SSL_get_version(ssl), SSL_CIPHER_get_name(SSL_get_current_cipher(ssl)),
                           opts.variant ? "bufferevent_openssl_socket_new (OpenSSL on the socket)"
                                        : "bufferevent_openssl_filter_new over bufferevent_socket_new");
        }
#endif
        xp_bench(&opts, xp_run);
        bufferevent_free(xp_cbev);
        bufferevent_free(xp_sbev);
        event_base_free(base);
#ifdef BENCH_LIBEVENT_OPENSSL
        SSL_CTX_free(sctx);
        SSL_CTX_free(cctx);
#endif
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
