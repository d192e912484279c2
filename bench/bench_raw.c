/* SPDX-License-Identifier: MIT */
/*
 * bench_raw: the floor. The same workloads written straight on epoll,
 * eventfd and a plain ring buffer of (fn, arg) pairs, with no event
 * library in between. See bench.h for the output format.
 *
 *   pipe      epoll, every read end registered once. The per-run "re-setup"
 *             is nothing: an epoll registration persists, so the cheapest
 *             correct equivalent of stop+start is no call at all
 *             (-q: one EPOLL_CTL_MOD per fd instead).
 *   soon      a ring buffer of (fn, arg); a pass runs the entries that were
 *             queued when it began (asyncio's rule). No kernel call at all
 *             (-q: one epoll_wait(timeout 0) per pass, as a loop must do).
 *   xthread   a mutex-protected vector plus an eventfd written only when
 *             the vector goes from empty to non-empty; the loop thread
 *             sleeps in epoll_wait and swaps the vector out. Every post runs.
 *   pingpong  two threads, each asleep in epoll_wait on its own eventfd.
 *   echo      epoll on both ends of the connection.
 *   http      epoll (level-triggered) on the listening socket and on every
 *             connection; read(2) and write(2).
 */
#include "bench.h"

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>

#define MAX_EVENTS 256

static struct bench_opts opts;

static int xepoll_create(void)
{
        int ep = epoll_create1(EPOLL_CLOEXEC);

        if (ep < 0)
                bench_die("epoll_create1: %s", strerror(errno));
        return ep;
}

static void xepoll_add(int ep, int fd, uint64_t data)
{
        struct epoll_event ev = { .events = EPOLLIN, .data.u64 = data };

        if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0)
                bench_die("epoll_ctl ADD %d: %s", fd, strerror(errno));
}

/* ---- pipe ring ---------------------------------------------------------- */

static int ring_ep;

static BENCH_NOINLINE void raw_ring_setup(struct ring *r)
{
        ring_ep = xepoll_create();
        for (long i = 0; i < r->n; i++)
                xepoll_add(ring_ep, r->fds[2 * i], (uint64_t)i);
}

static BENCH_NOINLINE void raw_ring_resetup(struct ring *r)
{
        if (!opts.variant)
                return;
        for (long i = 0; i < r->n; i++) {
                struct epoll_event ev = { .events = EPOLLIN, .data.u64 = (uint64_t)i };

                if (epoll_ctl(ring_ep, EPOLL_CTL_MOD, r->fds[2 * i], &ev) < 0)
                        bench_die("epoll_ctl MOD: %s", strerror(errno));
        }
}

static BENCH_NOINLINE void raw_ring_flush(struct ring *r)
{
        struct epoll_event evs[MAX_EVENTS];

        (void)r;
        if (epoll_wait(ring_ep, evs, MAX_EVENTS, 0) != 0)
                bench_die("pipe ring: unexpected ready descriptors");
}

static BENCH_NOINLINE void raw_ring_run(struct ring *r)
{
        struct epoll_event evs[MAX_EVENTS];

        for (;;) {
                int k = epoll_wait(ring_ep, evs, MAX_EVENTS, -1);

                if (k < 0 && errno != EINTR)
                        bench_die("epoll_wait: %s", strerror(errno));
                for (int i = 0; i < k; i++)
                        if (ring_on_read(r, (long)evs[i].data.u64))
                                return;
        }
}

static void bench_pipe(void)
{
        static const struct ring_ops ops = {
                .setup = raw_ring_setup, .resetup = raw_ring_resetup,
                .flush = raw_ring_flush, .run = raw_ring_run,
        };
        struct ring r;

        bench_note(opts.variant ? "re-setup: EPOLL_CTL_MOD per fd"
                                : "re-setup: none (epoll registrations persist)");
        ring_bench(&opts, &ops, &r);
        close(ring_ep);
        ring_close(&r);
}

/* ---- call_soon: a plain ring buffer --------------------------------------- */

struct rq_item {
        void (*fn)(void *arg);
        void *arg;
};

static struct {
        struct rq_item *v;
        size_t mask, head, tail;
} rq;

static void rq_init(size_t cap)
{
        rq.v = malloc(cap * sizeof(*rq.v));
        if (!rq.v)
                bench_die("out of memory");
        rq.mask = cap - 1;
        rq.head = rq.tail = 0;
}

static inline void rq_push(void (*fn)(void *), void *arg)
{
        if (rq.tail - rq.head > rq.mask)
                bench_die("ring buffer full");
        rq.v[rq.tail++ & rq.mask] = (struct rq_item){ fn, arg };
}

static struct soon sn;

static __attribute__((noinline)) void soon_cb(void *arg)
{
        if (soon_step(&sn))
                rq_push(soon_cb, arg);
}

static void bench_soon(void)
{
        struct bench_series s = { .metric = "soon" };
        long n = bench_default(opts.n, 10000000);
        long per = opts.per_pass;
        int ep = -1, efd = -1;
        struct epoll_event evs[MAX_EVENTS];

        if (opts.variant) {
                ep = xepoll_create();
                efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
                xepoll_add(ep, efd, 0);
        }
        rq_init(4096);
        if ((size_t)per > rq.mask)
                bench_die("-p %ld: ring buffer too small", per);
        bench_param("%ld callbacks, %ld per pass%s", n, per,
                   opts.variant ? ", epoll_wait(0) per pass" : ", no kernel call");
        for (int rep = bench_first_rep(&opts); rep < opts.reps; rep++) {
                uint64_t t0, t1;

                soon_reset(&sn, rep < 0 ? n / 10 : n, per);
                t0 = bench_now_ns();
                for (long i = 0; i < sn.queued; i++)
                        rq_push(soon_cb, NULL);
                while (rq.head != rq.tail) {
                        size_t end = rq.tail;

                        if (ep >= 0 && epoll_wait(ep, evs, MAX_EVENTS, 0) < 0)
                                bench_die("epoll_wait: %s", strerror(errno));
                        while (rq.head != end) {
                                struct rq_item it = rq.v[rq.head++ & rq.mask];

                                it.fn(it.arg);
                        }
                }
                t1 = bench_now_ns();
                if (sn.count != sn.target)
                        bench_die("soon: %ld of %ld callbacks", sn.count, sn.target);
                if (rep >= 0 && n > 0)
                        bench_add(&s, (double)(t1 - t0) / (double)n);
        }
        if (n > 0)
                bench_print(&s);
        free(rq.v);
        if (ep >= 0) {
                close(efd);
                close(ep);
        }
}

/* ---- cross-thread posts: mutex + vector + eventfd ------------------------- */

struct xq {
        struct mq q;
        int efd, ep;
};

static void xq_init(struct xq *x)
{
        mq_init(&x->q);
        x->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (x->efd < 0)
                bench_die("eventfd: %s", strerror(errno));
        x->ep = xepoll_create();
        xepoll_add(x->ep, x->efd, 0);
}

static void xq_fini(struct xq *x)
{
        close(x->ep);
        close(x->efd);
        mq_fini(&x->q);
}

static void xq_post(struct xq *x, void (*fn)(void *), void *arg)
{
        uint64_t one = 1;

        if (mq_push(&x->q, fn, arg) && write(x->efd, &one, sizeof(one)) != sizeof(one))
                bench_die("eventfd write: %s", strerror(errno));
}

static long x_wakeups;

/* Wait until posts arrive, then run them all. */
static void xq_run_once(struct xq *x)
{
        struct epoll_event ev;
        uint64_t val;

        if (epoll_wait(x->ep, &ev, 1, -1) < 0 && errno != EINTR)
                bench_die("epoll_wait: %s", strerror(errno));
        if (read(x->efd, &val, sizeof(val)) < 0 && errno != EAGAIN)
                bench_die("eventfd read: %s", strerror(errno));
        x_wakeups++;
        mq_run(&x->q);
}

static long x_count, x_target;
static atomic_int x_go;
static uint64_t x_t0, x_post_ns;

static __attribute__((noinline)) void x_cb(void *arg)
{
        (void)arg;
        x_count++;
}

static void *x_producer(void *arg)
{
        struct xq *q = arg;
        uint64_t t1;

        while (!atomic_load_explicit(&x_go, memory_order_acquire))
                ;
        x_t0 = bench_now_ns();
        for (long i = 0; i < x_target; i++)
                xq_post(q, x_cb, NULL);
        t1 = bench_now_ns();
        x_post_ns = t1 - x_t0;
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
        bench_note("mutex-protected vector, eventfd written when it goes from empty to non-empty");
        for (int rep = bench_first_rep(&opts); rep < opts.reps; rep++) {
                struct xq q;
                pthread_t th;
                uint64_t t1;

                xq_init(&q);
                x_count = 0;
                x_wakeups = 0;
                x_target = n;
                atomic_store(&x_go, 0);
                pthread_create(&th, NULL, x_producer, &q);
                atomic_store_explicit(&x_go, 1, memory_order_release);
                while (x_count < n)
                        xq_run_once(&q);
                t1 = bench_now_ns();
                pthread_join(th, NULL);
                if (rep >= 0) {
                        bench_add(&total, (double)(t1 - x_t0) / (double)n);
                        bench_add(&post, (double)x_post_ns / (double)n);
                        bench_add(&ran, (double)x_count);
                        bench_add(&wakes, (double)x_wakeups);
                }
                xq_fini(&q);
        }
        bench_print(&total);
        bench_print(&post);
        bench_print(&ran);
        bench_print(&wakes);
}

/* ---- ping-pong: two threads, two eventfds --------------------------------- */

struct pp_side {
        int efd, ep;
        struct pp_side *peer;
        long trips, target;
        atomic_int stop;
};

static void pp_kick(struct pp_side *s)
{
        uint64_t one = 1;

        if (write(s->efd, &one, sizeof(one)) != sizeof(one))
                bench_die("eventfd write: %s", strerror(errno));
}

static void pp_wait(struct pp_side *s)
{
        struct epoll_event ev;
        uint64_t val;

        while (epoll_wait(s->ep, &ev, 1, -1) < 1)
                if (errno != EINTR)
                        bench_die("epoll_wait: %s", strerror(errno));
        if (read(s->efd, &val, sizeof(val)) != sizeof(val))
                bench_die("eventfd read: %s", strerror(errno));
}

static void *pp_echo_thread(void *arg)
{
        struct pp_side *b = arg;

        for (;;) {
                pp_wait(b);
                if (atomic_load(&b->stop))
                        return NULL;
                pp_kick(b->peer);
        }
}

static void bench_pingpong(void)
{
        struct bench_series rt = { .metric = "rtt" };
        long n = bench_default(opts.n, 20000);
        struct pp_side a = { .target = n }, b = { .target = 0 };

        a.peer = &b;
        b.peer = &a;
        for (int i = 0; i < 2; i++) {
                struct pp_side *s = i ? &b : &a;

                s->efd = eventfd(0, EFD_CLOEXEC);
                s->ep = xepoll_create();
                xepoll_add(s->ep, s->efd, 0);
        }
        bench_param("%ld round trips per run", n);
        bench_note("eventfd write, epoll_wait + eventfd read on each side");
        for (int rep = bench_first_rep(&opts); rep < opts.reps; rep++) {
                pthread_t th;
                uint64_t t0, t1;

                a.trips = 0;
                atomic_store(&b.stop, 0);
                pthread_create(&th, NULL, pp_echo_thread, &b);
                t0 = bench_now_ns();
                while (a.trips < n) {
                        pp_kick(&b);
                        pp_wait(&a);
                        a.trips++;
                }
                t1 = bench_now_ns();
                atomic_store(&b.stop, 1);
                pp_kick(&b);    /* let it see the stop flag and leave */
                pthread_join(th, NULL);
                if (rep >= 0)
                        bench_add(&rt, (double)(t1 - t0) / (double)n);
        }
        for (int i = 0; i < 2; i++) {
                struct pp_side *s = i ? &b : &a;

                close(s->ep);
                close(s->efd);
        }
        bench_print(&rt);
}

/* ---- loopback TCP echo --------------------------------------------------------- */

static int echo_ep;

static void raw_echo_setup(struct echo *e)
{
        echo_ep = xepoll_create();
        xepoll_add(echo_ep, e->sfd, 0);
        xepoll_add(echo_ep, e->cfd, 1);
}

static void raw_echo_run(struct echo *e)
{
        struct epoll_event evs[8];

        for (;;) {
                int k = epoll_wait(echo_ep, evs, 8, -1);

                if (k < 0 && errno != EINTR)
                        bench_die("epoll_wait: %s", strerror(errno));
                for (int i = 0; i < k; i++) {
                        if (evs[i].data.u64 == 0)
                                echo_on_server(e);
                        else if (echo_on_client(e))
                                return;
                }
        }
}

static void raw_echo_teardown(struct echo *e)
{
        (void)e;
        close(echo_ep);
}

static void bench_echo(void)
{
        static const struct echo_ops ops = {
                .setup = raw_echo_setup, .run = raw_echo_run,
                .teardown = raw_echo_teardown,
        };
        static struct echo e;

        echo_bench(&opts, &ops, &e);
}

/* For run-bench's titles: the ring size -n 0 gives, and the limit. */
static void print_maxpairs(void)
{
        printf("%ld %ld\n", ring_max_pairs(RING_HEADROOM), bench_raise_nofile());
}

/* ---- HTTP server: epoll, level-triggered -------------------------------------- */

static void bench_http(void)
{
        struct epoll_event evs[MAX_EVENTS];
        sigset_t block, wait_mask;
        int ep = xepoll_create(), lfd = http_listen();
        struct http_conn listener = { .fd = lfd };

        /* SIGTERM is delivered only inside epoll_pwait, which then fails
         * with EINTR: no race between checking a flag and sleeping. */
        sigemptyset(&block);
        sigaddset(&block, SIGTERM);
        sigprocmask(SIG_BLOCK, &block, &wait_mask);
        sigdelset(&wait_mask, SIGTERM);
        signal(SIGTERM, http_on_term);
        bench_note("epoll_wait (level-triggered), read(2), write(2)");
        xepoll_add(ep, lfd, (uint64_t)(uintptr_t)&listener);
        while (!http_term) {
                int k = epoll_pwait(ep, evs, MAX_EVENTS, -1, &wait_mask);

                if (k < 0 && errno != EINTR)
                        bench_die("epoll_wait: %s", strerror(errno));
                for (int i = 0; i < k; i++) {
                        struct http_conn *c = (void *)(uintptr_t)evs[i].data.u64;

                        if (c == &listener) {
                                int cfd;

                                while ((cfd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0) {
                                        http_setup_fd(cfd);
                                        xepoll_add(ep, cfd, (uint64_t)(uintptr_t)http_conn_new(cfd));
                                }
                        } else if (http_on_readable(c) < 0) {
                                epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
                                close(c->fd);
                                free(c);
                        }
                }
        }
        http_report();
        exit(0);
}

int main(int argc, char **argv)
{
        static const struct bench_workload workloads[] = {
                { "pipe", bench_pipe },
                { "soon", bench_soon },
                { "xthread", bench_xthread },
                { "pingpong", bench_pingpong },
                { "echo", bench_echo },
                { "http", bench_http },
                { "maxpairs", print_maxpairs },
        };

        return bench_main(argc, argv, &opts, workloads, sizeof(workloads) / sizeof(workloads[0]));
}
