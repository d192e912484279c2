/* SPDX-License-Identifier: MIT */
/*
 * The executor (loop_run_in_executor and its pool) and name resolution
 * through it (loop_getaddrinfo, loop_getnameinfo).
 *
 * Jobs run on worker threads; everything they share with the test goes
 * through atomics or a mutex (TSan-clean), and ck_assert is only used in
 * the test's thread. Jobs that must stay running wait at a gate the test
 * opens. Name resolution uses numeric addresses and "localhost" only: no
 * test needs a network.
 */
#ifndef _WIN32
#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#endif
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#ifndef _WIN32
#include <sys/wait.h>
#endif

#include "testutil.h"

#define WAIT_LIMIT (10 * TU_SEC)

/* ---- helpers -------------------------------------------------------------- */

/* Jobs wait here until the test opens it; counts what they do meanwhile. */
struct gate {
        pthread_mutex_t lock;
        pthread_cond_t cond;
        int open;
        atomic_int running, max_running, started, finished;
};

static void gate_init(struct gate *g) {
        memset(g, 0, sizeof(*g));
        ck_assert_int_eq(pthread_mutex_init(&g->lock, NULL), 0);
        ck_assert_int_eq(pthread_cond_init(&g->cond, NULL), 0);
}

static void gate_open(struct gate *g) {
        pthread_mutex_lock(&g->lock);
        g->open = 1;
        pthread_cond_broadcast(&g->cond);
        pthread_mutex_unlock(&g->lock);
}

static void gate_destroy(struct gate *g) {
        ck_assert_int_eq(pthread_cond_destroy(&g->cond), 0);
        ck_assert_int_eq(pthread_mutex_destroy(&g->lock), 0);
}

/* Worker side: count in, wait for the gate, count out. Result: arg. */
static int gated_fn(void *arg, void **result) {
        struct gate *g = arg;
        int now = atomic_fetch_add(&g->running, 1) + 1, max = atomic_load(&g->max_running);

        while (now > max && !atomic_compare_exchange_weak(&g->max_running, &max, now))
                ;
        atomic_fetch_add(&g->started, 1);
        pthread_mutex_lock(&g->lock);
        while (!g->open)
                pthread_cond_wait(&g->cond, &g->lock);
        pthread_mutex_unlock(&g->lock);
        atomic_fetch_sub(&g->running, 1);
        atomic_fetch_add(&g->finished, 1);
        *result = arg;
        return 0;
}

/* Waits (without running the loop: workers do not need it) until *n >= want. */
static void wait_atomic(atomic_int *n, int want) {
        int64_t deadline = tu_now_ns() + WAIT_LIMIT;

        while (atomic_load(n) < want && tu_now_ns() < deadline)
                tu_sleep_ns(TU_MSEC);
        ck_assert_int_ge(atomic_load(n), want);
}

/* Counts its runs in the atomic_int arg points to. */
static int count_fn(void *arg, void **result) {
        atomic_fetch_add((atomic_int *) arg, 1);
        *result = arg;
        return 0;
}

/* Sleeps 50 ms, then counts. */
static int slow_count_fn(void *arg, void **result) {
        tu_sleep_ns(50 * TU_MSEC);
        atomic_fetch_add((atomic_int *) arg, 1);
        *result = arg;
        return 0;
}

static int return_error_fn(void *arg, void **result) {
        (void) result;
        return (int) (intptr_t) arg;
}

static void complete_all(loop_t *loop, loop_future_t **f, int n) {
        for (int i = 0; i < n; i++)
                ck_assert_int_eq(loop_run_until_complete(loop, f[i]), 0);
}

static void unref_all(loop_future_t **f, int n) {
        for (int i = 0; i < n; i++)
                f[i] = loop_future_unref(f[i]);
}

/* What asyncio's ThreadPoolExecutor picks: min(32, os.process_cpu_count() + 4). */
static int expected_default_max(void) {
        long n = -1;
#ifdef _WIN32
        DWORD_PTR mask, sysmask;
        SYSTEM_INFO si;

        if (GetProcessAffinityMask(GetCurrentProcess(), &mask, &sysmask))
                for (n = 0; mask; mask &= mask - 1)
                        n++;
        if (n < 1) {
                GetSystemInfo(&si);
                n = (long) si.dwNumberOfProcessors;
        }
#else
        cpu_set_t set;

        if (sched_getaffinity(0, sizeof(set), &set) == 0)
                n = CPU_COUNT(&set);
        if (n < 1)
                n = sysconf(_SC_NPROCESSORS_ONLN);
#endif
        if (n < 1)
                n = 1;
        return n + 4 < 32 ? (int) n + 4 : 32;
}

/* ---- results ---------------------------------------------------------------- */

struct threads_seen {
        pthread_t fn_thread; /* written by the worker, read after the future completed */
        pthread_t done_thread;
        int done_calls;
};

static int record_thread_fn(void *arg, void **result) {
        struct threads_seen *t = arg;

        t->fn_thread = pthread_self();
        *result = t;
        return 0;
}

static int record_done_cb(loop_future_t *f, void *userdata) {
        struct threads_seen *t = userdata;

        (void) f;
        t->done_thread = pthread_self();
        t->done_calls++;
        return 0;
}

/* fn runs on a worker; the future completes, and its callbacks run, on the loop's thread. */
START_TEST(test_result_on_loop_thread) {
        loop_t *loop = tu_loop_new();
        struct threads_seen t = {0};
        loop_future_t *f = NULL;
        void *result = NULL;

        ck_assert_int_eq(loop_run_in_executor(loop, record_thread_fn, &t, &f), 0);
        ck_assert_ptr_ne(f, NULL);
        ck_assert_ptr_eq(loop_future_get_loop(f), loop);
        ck_assert_int_eq(loop_future_add_done_callback(f, record_done_cb, &t), 0);
        ck_assert_int_eq(loop_run_until_complete(loop, f), 0);
        ck_assert_int_eq(loop_future_result(f, &result), 0);
        ck_assert_ptr_eq(result, &t);
        /* run_until_complete stops before the done callbacks' iteration ends: one more. */
        while (t.done_calls == 0)
                ck_assert_int_ge(loop_run_once(loop, 0), 0);
        ck_assert_int_eq(t.done_calls, 1);
        ck_assert(!pthread_equal(t.fn_thread, pthread_self()));
        ck_assert(pthread_equal(t.done_thread, pthread_self()));
        loop_future_unref(f);
        loop_unref(loop);
}
END_TEST

#define N_JOBS 100

/* Every job completes, each with its own result. */
START_TEST(test_many_jobs) {
        loop_t *loop = tu_loop_new();
        loop_future_t *f[N_JOBS];
        atomic_int runs[N_JOBS];

        for (int i = 0; i < N_JOBS; i++) {
                atomic_init(&runs[i], 0);
                ck_assert_int_eq(loop_run_in_executor(loop, count_fn, &runs[i], &f[i]), 0);
        }
        /* In reverse order: the loop delivers completions whatever we wait for. */
        for (int i = N_JOBS - 1; i >= 0; i--) {
                void *result = NULL;
                ck_assert_int_eq(loop_run_until_complete(loop, f[i]), 0);
                ck_assert_int_eq(loop_future_result(f[i], &result), 0);
                ck_assert_ptr_eq(result, &runs[i]);
        }
        for (int i = 0; i < N_JOBS; i++)
                ck_assert_int_eq(atomic_load(&runs[i]), 1);
        unref_all(f, N_JOBS);
        loop_unref(loop);
}
END_TEST

/* A negative return is the future's error; -ECANCELED cancels it. */
START_TEST(test_error_result) {
        loop_t *loop = tu_loop_new();
        loop_future_t *f = NULL, *g = NULL;
        void *result = NULL;

        ck_assert_int_eq(loop_run_in_executor(loop, return_error_fn, (void *) (intptr_t) -EPERM, &f), 0);
        ck_assert_int_eq(loop_run_until_complete(loop, f), -EPERM);
        ck_assert_int_eq(loop_future_error(f), -EPERM);
        ck_assert_int_eq(loop_future_result(f, &result), -EPERM);
        ck_assert_int_eq(loop_future_cancelled(f), 0);

        ck_assert_int_eq(loop_run_in_executor(loop, return_error_fn, (void *) (intptr_t) -ECANCELED, &g), 0);
        ck_assert_int_eq(loop_run_until_complete(loop, g), -ECANCELED);
        ck_assert_int_eq(loop_future_cancelled(g), 1);

        loop_future_unref(f);
        loop_future_unref(g);
        loop_unref(loop);
}
END_TEST

struct post_back {
        loop_t *loop;
        int ran; /* loop thread */
        atomic_int post_result;
};

static int post_back_cb(loop_t *loop, void *userdata) {
        (void) loop;
        ((struct post_back *) userdata)->ran++;
        return 0;
}

/* The one loop call fn may make: call_soon_threadsafe. */
static int post_back_fn(void *arg, void **result) {
        struct post_back *p = arg;

        atomic_store(&p->post_result, loop_call_soon_threadsafe(p->loop, post_back_cb, p, NULL));
        *result = p;
        return 0;
}

START_TEST(test_fn_posts_to_loop) {
        loop_t *loop = tu_loop_new();
        struct post_back p = {.loop = loop};
        loop_future_t *f = NULL;

        ck_assert_int_eq(loop_run_in_executor(loop, post_back_fn, &p, &f), 0);
        ck_assert_int_eq(loop_run_until_complete(loop, f), 0);
        ck_assert_int_eq(atomic_load(&p.post_result), 0);
        /* Posted before the completion: it ran first. */
        ck_assert_int_eq(p.ran, 1);
        loop_future_unref(f);
        loop_unref(loop);
}
END_TEST

/* ---- the pool's size -------------------------------------------------------- */

/* Starts n gated jobs, checks that exactly limit run at once, then lets them finish. */
static void check_concurrency(loop_t *loop, int n, int limit) {
        loop_future_t **f = calloc((size_t) n, sizeof(*f));
        struct gate g;

        ck_assert_ptr_ne(f, NULL);
        gate_init(&g);
        for (int i = 0; i < n; i++)
                ck_assert_int_eq(loop_run_in_executor(loop, gated_fn, &g, &f[i]), 0);
        wait_atomic(&g.started, limit);
        /* Time for a worker beyond the limit to show up, if there were one. */
        tu_sleep_ns(100 * TU_MSEC);
        ck_assert_int_eq(atomic_load(&g.started), limit);
        ck_assert_int_eq(atomic_load(&g.running), limit);
        gate_open(&g);
        complete_all(loop, f, n);
        ck_assert_int_eq(atomic_load(&g.finished), n);
        ck_assert_int_eq(atomic_load(&g.max_running), limit);
        unref_all(f, n);
        free(f);
        gate_destroy(&g);
}

START_TEST(test_max_workers) {
        loop_t *loop = tu_loop_new();

        ck_assert_int_eq(loop_set_executor_max_workers(loop, 2), 0);
        check_concurrency(loop, 6, 2);
        loop_unref(loop);
}
END_TEST

START_TEST(test_max_workers_one) {
        loop_t *loop = tu_loop_new();

        ck_assert_int_eq(loop_set_executor_max_workers(loop, 1), 0);
        check_concurrency(loop, 3, 1);
        loop_unref(loop);
}
END_TEST

/* asyncio's default: min(32, CPUs + 4). */
START_TEST(test_default_max_workers) {
        loop_t *loop = tu_loop_new();
        int limit = expected_default_max();

        check_concurrency(loop, limit + 2, limit);
        loop_unref(loop);
}
END_TEST

/* Raising the limit after first use applies to jobs already queued. */
START_TEST(test_raise_max_workers) {
        loop_t *loop = tu_loop_new();
        loop_future_t *f[3];
        struct gate g;

        gate_init(&g);
        ck_assert_int_eq(loop_set_executor_max_workers(loop, 1), 0);
        for (int i = 0; i < 3; i++)
                ck_assert_int_eq(loop_run_in_executor(loop, gated_fn, &g, &f[i]), 0);
        wait_atomic(&g.started, 1);
        tu_sleep_ns(50 * TU_MSEC);
        ck_assert_int_eq(atomic_load(&g.started), 1);
        ck_assert_int_eq(loop_set_executor_max_workers(loop, 3), 0);
        wait_atomic(&g.started, 3);
        ck_assert_int_eq(atomic_load(&g.running), 3);
        gate_open(&g);
        complete_all(loop, f, 3);
        unref_all(f, 3);
        gate_destroy(&g);
        loop_unref(loop);
}
END_TEST

/* Lowering it holds jobs back until the running ones are below the new limit. */
START_TEST(test_lower_max_workers) {
        loop_t *loop = tu_loop_new();
        loop_future_t *f[3], *h[3];
        struct gate g, g2;

        gate_init(&g);
        gate_init(&g2);
        ck_assert_int_eq(loop_set_executor_max_workers(loop, 3), 0);
        for (int i = 0; i < 3; i++)
                ck_assert_int_eq(loop_run_in_executor(loop, gated_fn, &g, &f[i]), 0);
        wait_atomic(&g.started, 3);
        ck_assert_int_eq(loop_set_executor_max_workers(loop, 1), 0);
        gate_open(&g);
        complete_all(loop, f, 3);
        /* Three workers exist, but only one may run a job now. */
        for (int i = 0; i < 3; i++)
                ck_assert_int_eq(loop_run_in_executor(loop, gated_fn, &g2, &h[i]), 0);
        wait_atomic(&g2.started, 1);
        tu_sleep_ns(100 * TU_MSEC);
        ck_assert_int_eq(atomic_load(&g2.started), 1);
        gate_open(&g2);
        complete_all(loop, h, 3);
        ck_assert_int_eq(atomic_load(&g2.max_running), 1);
        unref_all(f, 3);
        unref_all(h, 3);
        gate_destroy(&g);
        gate_destroy(&g2);
        loop_unref(loop);
}
END_TEST

/* ---- cancellation ------------------------------------------------------------ */

static int count_done_cb(loop_future_t *f, void *userdata) {
        (void) f;
        (*(int *) userdata)++;
        return 0;
}

/* A job cancelled while queued never runs. */
START_TEST(test_cancel_before_start) {
        loop_t *loop = tu_loop_new();
        loop_future_t *a = NULL, *b = NULL;
        atomic_int b_runs;
        int b_done = 0;
        struct gate g;

        atomic_init(&b_runs, 0);
        gate_init(&g);
        ck_assert_int_eq(loop_set_executor_max_workers(loop, 1), 0);
        ck_assert_int_eq(loop_run_in_executor(loop, gated_fn, &g, &a), 0);
        wait_atomic(&g.started, 1);
        ck_assert_int_eq(loop_run_in_executor(loop, count_fn, &b_runs, &b), 0);
        ck_assert_int_eq(loop_future_add_done_callback(b, count_done_cb, &b_done), 0);
        ck_assert_int_eq(loop_future_cancel(b), 1);
        ck_assert_int_eq(loop_future_cancelled(b), 1);
        ck_assert_int_eq(loop_future_cancel(b), 0);
        gate_open(&g);
        ck_assert_int_eq(loop_run_until_complete(loop, a), 0);
        /* Whatever was queued has run once the pool is shut down. */
        ck_assert_int_eq(loop_shutdown_default_executor(loop), 0);
        tu_run_until(loop, &b_done, 1, WAIT_LIMIT);
        ck_assert_int_eq(b_done, 1);
        ck_assert_int_eq(atomic_load(&b_runs), 0);
        ck_assert_int_eq(loop_future_error(b), -ECANCELED);
        loop_future_unref(a);
        loop_future_unref(b);
        gate_destroy(&g);
        loop_unref(loop);
}
END_TEST

/* A running job cannot be stopped: it finishes, the future stays cancelled. */
START_TEST(test_cancel_while_running) {
        loop_t *loop = tu_loop_new();
        loop_future_t *f = NULL, *after = NULL;
        atomic_int after_runs;
        struct gate g;

        atomic_init(&after_runs, 0);
        gate_init(&g);
        ck_assert_int_eq(loop_run_in_executor(loop, gated_fn, &g, &f), 0);
        wait_atomic(&g.started, 1);
        ck_assert_int_eq(loop_future_cancel(f), 1);
        ck_assert_int_eq(loop_future_cancelled(f), 1);
        gate_open(&g);
        wait_atomic(&g.finished, 1);
        /* The completion arrives and is dropped; the pool goes on working. */
        ck_assert_int_eq(loop_run_in_executor(loop, count_fn, &after_runs, &after), 0);
        ck_assert_int_eq(loop_run_until_complete(loop, after), 0);
        tu_run_for(loop, 20 * TU_MSEC);
        ck_assert_int_eq(loop_future_cancelled(f), 1);
        ck_assert_int_eq(loop_future_error(f), -ECANCELED);
        ck_assert_int_eq(atomic_load(&after_runs), 1);
        loop_future_unref(f);
        loop_future_unref(after);
        gate_destroy(&g);
        loop_unref(loop);
}
END_TEST

/* The caller may drop its reference at once: the job still runs and nothing leaks. */
START_TEST(test_unref_future_early) {
        loop_t *loop = tu_loop_new();
        loop_future_t *f = NULL, *last = NULL;
        atomic_int runs;

        atomic_init(&runs, 0);
        ck_assert_int_eq(loop_set_executor_max_workers(loop, 1), 0);
        for (int i = 0; i < 10; i++) {
                ck_assert_int_eq(loop_run_in_executor(loop, count_fn, &runs, &f), 0);
                f = loop_future_unref(f);
        }
        /* One worker, FIFO: when the last job is done, so are the others. */
        ck_assert_int_eq(loop_run_in_executor(loop, count_fn, &runs, &last), 0);
        ck_assert_int_eq(loop_run_until_complete(loop, last), 0);
        ck_assert_int_eq(atomic_load(&runs), 11);
        loop_future_unref(last);
        loop_unref(loop);
}
END_TEST

/* ---- results with a destroy function (loop_run_in_executor_full) --------------- */

/* Opens a gate from another thread after a delay. */
struct opener {
        struct gate *gate;
        int64_t delay_ns;
};

static void *opener_main(void *arg) {
        struct opener *o = arg;

        tu_sleep_ns(o->delay_ns);
        gate_open(o->gate);
        return NULL;
}

/* A result the job allocates; its destroy function counts it. */
struct owned_result {
        atomic_int *freed;
};

static void owned_result_free(void *p) {
        struct owned_result *r = p;

        atomic_fetch_add(r->freed, 1);
        free(r);
}

struct owned_job {
        struct gate *gate; /* NULL: no waiting */
        atomic_int freed;  /* results destroyed */
};

static int owned_fn(void *arg, void **result) {
        struct owned_job *j = arg;
        struct owned_result *r;

        if (j->gate)
                gated_fn(j->gate, result);
        r = malloc(sizeof(*r));
        if (!r)
                return -ENOMEM;
        r->freed = &j->freed;
        *result = r;
        return 0;
}

static void owned_job_init(struct owned_job *j, struct gate *g) {
        j->gate = g;
        atomic_init(&j->freed, 0);
}

/* Runs the loop until *n >= want. */
static void run_until_atomic(loop_t *loop, atomic_int *n, int want) {
        int64_t deadline = tu_now_ns() + WAIT_LIMIT;

        while (atomic_load(n) < want && tu_now_ns() < deadline)
                ck_assert_int_ge(loop_run_once(loop, 10 * TU_MSEC), 0);
        ck_assert_int_ge(atomic_load(n), want);
}

/* The future owns the result, as with loop_future_set_result(): read or not,
 * it is destroyed once, when the future is freed. */
START_TEST(test_full_result_owned_by_future) {
        loop_t *loop = tu_loop_new();
        loop_future_t *f = NULL, *g = NULL;
        struct owned_job j;
        void *result = NULL;

        owned_job_init(&j, NULL);
        ck_assert_int_eq(loop_run_in_executor_full(loop, owned_fn, &j, owned_result_free, &f), 0);
        ck_assert_int_eq(loop_run_until_complete(loop, f), 0);
        ck_assert_int_eq(loop_future_result(f, &result), 0);
        ck_assert_ptr_nonnull(result);
        ck_assert_ptr_eq(((struct owned_result *) result)->freed, &j.freed);
        ck_assert_int_eq(atomic_load(&j.freed), 0);
        loop_future_unref(f);
        ck_assert_int_eq(atomic_load(&j.freed), 1);

        /* Never read: freed with the future all the same. */
        ck_assert_int_eq(loop_run_in_executor_full(loop, owned_fn, &j, owned_result_free, &g), 0);
        ck_assert_int_eq(loop_run_until_complete(loop, g), 0);
        ck_assert_int_eq(atomic_load(&j.freed), 1);
        loop_future_unref(g);
        ck_assert_int_eq(atomic_load(&j.freed), 2);
        loop_unref(loop);
}
END_TEST

/* Cancelled while the job runs: the result nobody will take is destroyed
 * when the completion arrives (LSan: nothing leaks). */
START_TEST(test_full_cancel_while_running) {
        loop_t *loop = tu_loop_new();
        loop_future_t *f = NULL;
        struct owned_job j;
        struct gate g;

        gate_init(&g);
        owned_job_init(&j, &g);
        ck_assert_int_eq(loop_run_in_executor_full(loop, owned_fn, &j, owned_result_free, &f), 0);
        wait_atomic(&g.started, 1);
        ck_assert_int_eq(loop_future_cancel(f), 1);
        gate_open(&g);
        run_until_atomic(loop, &j.freed, 1);
        ck_assert_int_eq(loop_future_cancelled(f), 1);
        loop_future_unref(f);
        ck_assert_int_eq(atomic_load(&j.freed), 1);
        gate_destroy(&g);
        loop_unref(loop);
}
END_TEST

/* The loop closes first: close waits for the running job and destroys its
 * result; a result that was posted but not delivered is destroyed too. */
START_TEST(test_full_close_first) {
        loop_t *loop = tu_loop_new();
        loop_future_t *f = NULL, *done = NULL;
        struct owned_job j, k;
        struct gate g;
        struct opener o = {.gate = &g, .delay_ns = 100 * TU_MSEC};
        pthread_t t;

        gate_init(&g);
        owned_job_init(&j, &g);
        owned_job_init(&k, NULL);
        ck_assert_int_eq(loop_set_executor_max_workers(loop, 2), 0);
        ck_assert_int_eq(loop_run_in_executor_full(loop, owned_fn, &k, owned_result_free, &done), 0);
        ck_assert_int_eq(loop_run_in_executor_full(loop, owned_fn, &j, owned_result_free, &f), 0);
        wait_atomic(&g.started, 1);
        /* k's job finishes and posts its completion; the loop never runs it. */
        tu_sleep_ns(50 * TU_MSEC);
        ck_assert_int_eq(pthread_create(&t, NULL, opener_main, &o), 0);
        ck_assert_int_eq(loop_close(loop), 0);
        ck_assert_int_eq(pthread_join(t, NULL), 0);
        ck_assert_int_eq(atomic_load(&j.freed), 1);
        ck_assert_int_eq(atomic_load(&k.freed), 1);
        ck_assert_int_eq(loop_future_cancelled(f), 1);
        ck_assert_int_eq(loop_future_cancelled(done), 1);
        loop_future_unref(f);
        loop_future_unref(done);
        ck_assert_int_eq(atomic_load(&j.freed), 1);
        ck_assert_int_eq(atomic_load(&k.freed), 1);
        gate_destroy(&g);
        loop_unref(loop);
}
END_TEST

static void must_not_destroy(void *result) {
        (void) result;
        abort();
}

/* A job that fails or cancels itself has no result to destroy. */
START_TEST(test_full_errors) {
        loop_t *loop = tu_loop_new();
        loop_future_t *f = NULL;
        void *eio = (void *) (intptr_t) -EIO, *ecanceled = (void *) (intptr_t) -ECANCELED;
        atomic_int runs;

        atomic_init(&runs, 0);
        ck_assert_int_eq(loop_run_in_executor_full(NULL, count_fn, &runs, free, &f), -EINVAL);
        ck_assert_int_eq(loop_run_in_executor_full(loop, NULL, &runs, free, &f), -EINVAL);
        ck_assert_int_eq(loop_run_in_executor_full(loop, count_fn, &runs, free, NULL), -EINVAL);
        ck_assert_ptr_null(f);
        ck_assert_int_eq(loop_run_in_executor_full(loop, return_error_fn, eio, must_not_destroy, &f), 0);
        ck_assert_int_eq(loop_run_until_complete(loop, f), -EIO);
        f = loop_future_unref(f);
        ck_assert_int_eq(loop_run_in_executor_full(loop, return_error_fn, ecanceled, must_not_destroy, &f), 0);
        ck_assert_int_eq(loop_run_until_complete(loop, f), -ECANCELED);
        ck_assert_int_eq(loop_future_cancelled(f), 1);
        f = loop_future_unref(f);
        /* NULL destroy: loop_run_in_executor() itself. */
        ck_assert_int_eq(loop_run_in_executor_full(loop, count_fn, &runs, NULL, &f), 0);
        ck_assert_int_eq(loop_run_until_complete(loop, f), 0);
        ck_assert_int_eq(atomic_load(&runs), 1);
        loop_future_unref(f);
        ck_assert_int_eq(loop_close(loop), 0);
        ck_assert_int_eq(loop_run_in_executor_full(loop, count_fn, &runs, free, &f), -ESHUTDOWN);
        loop_unref(loop);
}
END_TEST

/* ---- shutdown and close -------------------------------------------------------- */

/* shutdown_default_executor waits for queued and running jobs; later jobs are refused. */
START_TEST(test_shutdown_waits) {
        loop_t *loop = tu_loop_new();
        loop_future_t *f[3], *g = NULL;
        atomic_int runs;

        atomic_init(&runs, 0);
        ck_assert_int_eq(loop_set_executor_max_workers(loop, 1), 0);
        for (int i = 0; i < 3; i++)
                ck_assert_int_eq(loop_run_in_executor(loop, slow_count_fn, &runs, &f[i]), 0);
        ck_assert_int_eq(loop_shutdown_default_executor(loop), 0);
        ck_assert_int_eq(atomic_load(&runs), 3);
        /* The completions are posted; they reach the futures when the loop runs. */
        for (int i = 0; i < 3; i++)
                ck_assert_int_eq(loop_future_done(f[i]), 0);
        complete_all(loop, f, 3);

        ck_assert_int_eq(loop_run_in_executor(loop, count_fn, &runs, &g), -ESHUTDOWN);
        ck_assert_ptr_eq(g, NULL);
        ck_assert_int_eq(loop_getaddrinfo(loop, "127.0.0.1", "80", NULL, &g), -ESHUTDOWN);
        ck_assert_int_eq(loop_set_executor_max_workers(loop, 4), -ESHUTDOWN);
        ck_assert_int_eq(loop_shutdown_default_executor(loop), 0);
        tu_assert_usable(loop);
        unref_all(f, 3);
        loop_unref(loop);
}
END_TEST

/* A pool never used can be shut down; jobs are refused afterwards. */
START_TEST(test_shutdown_unused) {
        loop_t *loop = tu_loop_new();
        loop_future_t *f = NULL;
        atomic_int runs;

        atomic_init(&runs, 0);
        ck_assert_int_eq(loop_shutdown_default_executor(loop), 0);
        ck_assert_int_eq(loop_run_in_executor(loop, count_fn, &runs, &f), -ESHUTDOWN);
        ck_assert_int_eq(loop_close(loop), 0);
        loop_unref(loop);
}
END_TEST

/* close waits for the running job, drops the queued ones, cancels every future. */
START_TEST(test_close_with_jobs) {
        loop_t *loop = tu_loop_new();
        loop_future_t *f[3];
        atomic_int runs, queued_runs;
        int done = 0;

        atomic_init(&runs, 0);
        atomic_init(&queued_runs, 0);
        ck_assert_int_eq(loop_set_executor_max_workers(loop, 1), 0);
        ck_assert_int_eq(loop_run_in_executor(loop, slow_count_fn, &runs, &f[0]), 0);
        ck_assert_int_eq(loop_run_in_executor(loop, count_fn, &queued_runs, &f[1]), 0);
        ck_assert_int_eq(loop_run_in_executor(loop, count_fn, &queued_runs, &f[2]), 0);
        for (int i = 0; i < 3; i++)
                ck_assert_int_eq(loop_future_add_done_callback(f[i], count_done_cb, &done), 0);
        ck_assert_int_eq(loop_close(loop), 0);
        /* The first job may not have started by the close; if it had, close
         * waited for it. The queued ones never run. */
        ck_assert_int_le(atomic_load(&runs), 1);
        tu_sleep_ns(100 * TU_MSEC);
        ck_assert_int_le(atomic_load(&runs), 1);
        ck_assert_int_eq(atomic_load(&queued_runs), 0);
        for (int i = 0; i < 3; i++)
                ck_assert_int_eq(loop_future_cancelled(f[i]), 1);
        /* Their done callbacks were scheduled by the cancel and dropped with the loop's queue. */
        ck_assert_int_eq(done, 0);
        ck_assert_int_eq(loop_close(loop), 0);
        unref_all(f, 3);
        loop_unref(loop);
}
END_TEST

/*
 * close blocks while a job runs (another thread opens its gate 200 ms later)
 * and drops the job queued behind it.
 */
START_TEST(test_close_waits_for_running) {
        loop_t *loop = tu_loop_new();
        loop_future_t *f = NULL, *q = NULL;
        atomic_int queued_runs;
        struct gate g;
        struct opener o = {.gate = &g, .delay_ns = 200 * TU_MSEC};
        pthread_t t;
        int64_t before;

        atomic_init(&queued_runs, 0);
        gate_init(&g);
        ck_assert_int_eq(loop_set_executor_max_workers(loop, 1), 0);
        ck_assert_int_eq(loop_run_in_executor(loop, gated_fn, &g, &f), 0);
        ck_assert_int_eq(loop_run_in_executor(loop, count_fn, &queued_runs, &q), 0);
        wait_atomic(&g.started, 1);
        before = tu_now_ns();
        ck_assert_int_eq(pthread_create(&t, NULL, opener_main, &o), 0);
        ck_assert_int_eq(loop_close(loop), 0);
        ck_assert_int_ge(tu_now_ns() - before, 150 * TU_MSEC);
        ck_assert_int_eq(atomic_load(&g.finished), 1);
        ck_assert_int_eq(pthread_join(t, NULL), 0);
        tu_sleep_ns(20 * TU_MSEC);
        ck_assert_int_eq(atomic_load(&queued_runs), 0);
        ck_assert_int_eq(loop_future_cancelled(f), 1);
        ck_assert_int_eq(loop_future_cancelled(q), 1);
        loop_future_unref(f);
        loop_future_unref(q);
        gate_destroy(&g);
        loop_unref(loop);
}
END_TEST

/* A finished job whose completion was never delivered: close frees its result. */
START_TEST(test_close_drops_undelivered) {
        loop_t *loop = tu_loop_new();
        struct addrinfo hints = {.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV, .ai_family = AF_INET};
        loop_future_t *f = NULL;

        ck_assert_int_eq(loop_getaddrinfo(loop, "127.0.0.1", "80", &hints, &f), 0);
        /* Give the worker the time to finish and post (the loop does not run). */
        tu_sleep_ns(100 * TU_MSEC);
        ck_assert_int_eq(loop_close(loop), 0);
        ck_assert_int_eq(loop_future_cancelled(f), 1);
        loop_future_unref(f);
        loop_unref(loop);
}
END_TEST

/* Dropping the last reference joins idle workers (valgrind/TSan see no thread left). */
START_TEST(test_unref_joins_idle_workers) {
        loop_t *loop = tu_loop_new();
        loop_future_t *f[4];
        atomic_int runs;

        atomic_init(&runs, 0);
        for (int i = 0; i < 4; i++)
                ck_assert_int_eq(loop_run_in_executor(loop, count_fn, &runs, &f[i]), 0);
        complete_all(loop, f, 4);
        unref_all(f, 4);
        loop_unref(loop);
        ck_assert_int_eq(atomic_load(&runs), 4);
}
END_TEST

/* ---- fork ------------------------------------------------------------------------ */

#ifndef _WIN32
/* The child reports through a pipe: under valgrind the exit status is valgrind's. */
static void child_report(int fd, int bad) {
        ssize_t n = write(fd, &bad, sizeof(bad));

        _exit(n == (ssize_t) sizeof(bad) ? 0 : 1);
}

static void assert_child_ok(pid_t pid, int result_fd) {
        int status, bad = -1;
        ssize_t n = read(result_fd, &bad, sizeof(bad));

        ck_assert_int_eq(close(result_fd), 0);
        ck_assert_int_eq(waitpid(pid, &status, 0), pid);
        ck_assert_msg(n == (ssize_t) sizeof(bad), "child gave no result (%s %d)",
                      WIFSIGNALED(status) ? "killed by signal" : "exit status",
                      WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status));
        ck_assert_msg(bad == 0, "child: checks failed, mask 0x%x", bad);
}
#endif

/*
 * Idle workers exist in the parent only: the child's last unref closes the
 * loop without joining them (a join would wait forever; alarm kills it).
 */
START_TEST(test_fork_idle_workers_unref) {
#ifdef _WIN32
        TU_SKIP_ON_WINDOWS("fork");
#else
        loop_t *loop = tu_loop_new();
        loop_future_t *f = NULL;
        atomic_int runs;
        int result[2];
        pid_t pid;

        atomic_init(&runs, 0);
        ck_assert_int_eq(loop_run_in_executor(loop, count_fn, &runs, &f), 0);
        ck_assert_int_eq(loop_run_until_complete(loop, f), 0);
        f = loop_future_unref(f);
        ck_assert_int_eq(pipe(result), 0);
        fflush(NULL);
        pid = fork();
        ck_assert_int_ge(pid, 0);
        if (pid == 0) {
                int bad = 0;

                alarm(10);
                close(result[0]);
                if (loop_run_in_executor(loop, count_fn, &runs, &f) != -ECHILD)
                        bad |= 1 << 0;
                if (loop_set_executor_max_workers(loop, 2) != -ECHILD)
                        bad |= 1 << 1;
                if (loop_shutdown_default_executor(loop) != -ECHILD)
                        bad |= 1 << 2;
                if (loop_getaddrinfo(loop, "127.0.0.1", NULL, NULL, &f) != -ECHILD)
                        bad |= 1 << 3;
                loop_unref(loop);
                child_report(result[1], bad);
        }
        ck_assert_int_eq(close(result[1]), 0);
        assert_child_ok(pid, result[0]);

        /* The parent's pool is untouched. */
        ck_assert_int_eq(loop_run_in_executor(loop, count_fn, &runs, &f), 0);
        ck_assert_int_eq(loop_run_until_complete(loop, f), 0);
        ck_assert_int_eq(atomic_load(&runs), 2);
        loop_future_unref(f);
        loop_unref(loop);
#endif
}
END_TEST

/* A job running at the fork: the child closes the loop and frees the job's memory, no join. */
START_TEST(test_fork_running_job_close) {
#ifdef _WIN32
        TU_SKIP_ON_WINDOWS("fork");
#else
        loop_t *loop = tu_loop_new();
        loop_future_t *f = NULL, *q = NULL;
        atomic_int runs;
        struct gate g;
        int result[2];
        pid_t pid;

        atomic_init(&runs, 0);
        gate_init(&g);
        ck_assert_int_eq(loop_set_executor_max_workers(loop, 1), 0);
        ck_assert_int_eq(loop_run_in_executor(loop, gated_fn, &g, &f), 0);
        ck_assert_int_eq(loop_run_in_executor(loop, count_fn, &runs, &q), 0);
        wait_atomic(&g.started, 1);
        ck_assert_int_eq(pipe(result), 0);
        fflush(NULL);
        pid = fork();
        ck_assert_int_ge(pid, 0);
        if (pid == 0) {
                int bad = 0;

                alarm(10);
                close(result[0]);
                if (loop_close(loop) != 0)
                        bad |= 1 << 0;
                if (loop_future_done(f) != 0) /* nothing to cancel with in the child */
                        bad |= 1 << 1;
                loop_future_unref(f);
                loop_future_unref(q);
                loop_unref(loop);
                child_report(result[1], bad);
        }
        ck_assert_int_eq(close(result[1]), 0);
        assert_child_ok(pid, result[0]);

        gate_open(&g);
        ck_assert_int_eq(loop_run_until_complete(loop, f), 0);
        ck_assert_int_eq(loop_run_until_complete(loop, q), 0);
        ck_assert_int_eq(atomic_load(&runs), 1);
        loop_future_unref(f);
        loop_future_unref(q);
        gate_destroy(&g);
        loop_unref(loop);
#endif
}
END_TEST

/* ---- name resolution ------------------------------------------------------------- */

static struct addrinfo *resolve_ok(loop_t *loop, const char *host, const char *service, const struct addrinfo *hints,
                                   loop_future_t **f) {
        void *result = NULL;
        int r;

        ck_assert_int_eq(loop_getaddrinfo(loop, host, service, hints, f), 0);
        r = loop_run_until_complete(loop, *f);
        ck_assert_msg(r == 0, "getaddrinfo(%s, %s): %s", host ? host : "NULL", service ? service : "NULL",
                      loop_strerror(r));
        ck_assert_int_eq(loop_future_result(*f, &result), 0);
        ck_assert_ptr_ne(result, NULL);
        return result;
}

static int resolve_error(loop_t *loop, const char *host, const char *service, const struct addrinfo *hints) {
        loop_future_t *f = NULL;
        int r;

        ck_assert_int_eq(loop_getaddrinfo(loop, host, service, hints, &f), 0);
        r = loop_run_until_complete(loop, f);
        ck_assert_int_eq(loop_future_error(f), r);
        loop_future_unref(f);
        return r;
}

START_TEST(test_getaddrinfo_numeric) {
        loop_t *loop = tu_loop_new();
        struct addrinfo hints = {
                .ai_flags = AI_NUMERICHOST | AI_NUMERICSERV,
                .ai_family = AF_INET,
                .ai_socktype = SOCK_STREAM,
        };
        char host[32] = "127.0.0.1", service[8] = "80";
        loop_future_t *f = NULL;
        struct addrinfo *ai;
        const struct sockaddr_in *sin;

        ck_assert_int_eq(loop_getaddrinfo(loop, host, service, &hints, &f), 0);
        /* The call copied its arguments: the caller's buffers are free again. */
        memset(host, 'x', sizeof(host) - 1);
        memset(service, 'y', sizeof(service) - 1);
        memset(&hints, 0xff, sizeof(hints));
        ck_assert_int_eq(loop_run_until_complete(loop, f), 0);
        ck_assert_int_eq(loop_future_result(f, (void **) &ai), 0);
        ck_assert_ptr_ne(ai, NULL);
        ck_assert_int_eq(ai->ai_family, AF_INET);
        ck_assert_int_eq(ai->ai_socktype, SOCK_STREAM);
        ck_assert_uint_eq(ai->ai_addrlen, sizeof(struct sockaddr_in));
        sin = (const struct sockaddr_in *) ai->ai_addr;
        ck_assert_int_eq(ntohs(sin->sin_port), 80);
        ck_assert_uint_eq(ntohl(sin->sin_addr.s_addr), INADDR_LOOPBACK);
        /* The future owns the list: unref frees it (valgrind checks). */
        loop_future_unref(f);
        loop_unref(loop);
}
END_TEST

START_TEST(test_getaddrinfo_ipv6_numeric) {
        loop_t *loop = tu_loop_new();
        struct addrinfo hints = {.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV, .ai_socktype = SOCK_DGRAM};
        loop_future_t *f = NULL;
        struct addrinfo *ai = resolve_ok(loop, "::1", "5353", &hints, &f);
        const struct sockaddr_in6 *sin6;

        ck_assert_int_eq(ai->ai_family, AF_INET6);
        sin6 = (const struct sockaddr_in6 *) ai->ai_addr;
        ck_assert_int_eq(ntohs(sin6->sin6_port), 5353);
        ck_assert(IN6_IS_ADDR_LOOPBACK(&sin6->sin6_addr));
        loop_future_unref(f);
        loop_unref(loop);
}
END_TEST

/* No hints, no host: the service alone (the loopback address, AI_PASSIVE unset). */
START_TEST(test_getaddrinfo_service_only) {
        loop_t *loop = tu_loop_new();
        struct addrinfo hints = {.ai_flags = AI_NUMERICSERV, .ai_family = AF_INET, .ai_socktype = SOCK_STREAM};
        loop_future_t *f = NULL;
        struct addrinfo *ai = resolve_ok(loop, NULL, "8080", &hints, &f);
        const struct sockaddr_in *sin = (const struct sockaddr_in *) ai->ai_addr;

        ck_assert_int_eq(ntohs(sin->sin_port), 8080);
        ck_assert_uint_eq(ntohl(sin->sin_addr.s_addr), INADDR_LOOPBACK);
        loop_future_unref(f);
        loop_unref(loop);
}
END_TEST

START_TEST(test_getaddrinfo_localhost) {
        loop_t *loop = tu_loop_new();
        struct addrinfo hints = {.ai_socktype = SOCK_STREAM};
        loop_future_t *f = NULL;
        int n = 0;

        for (struct addrinfo *ai = resolve_ok(loop, "localhost", NULL, &hints, &f); ai; ai = ai->ai_next, n++) {
                if (ai->ai_family == AF_INET) {
                        const struct sockaddr_in *sin = (const struct sockaddr_in *) ai->ai_addr;
                        ck_assert_uint_eq(ntohl(sin->sin_addr.s_addr) >> 24, 127);
                } else {
                        ck_assert_int_eq(ai->ai_family, AF_INET6);
                        ck_assert(IN6_IS_ADDR_LOOPBACK(&((const struct sockaddr_in6 *) ai->ai_addr)->sin6_addr));
                }
        }
        ck_assert_int_ge(n, 1);
        loop_future_unref(f);

        /* NULL hints are allowed. */
        ck_assert_int_eq(loop_getaddrinfo(loop, "localhost", "80", NULL, &f), 0);
        ck_assert_int_eq(loop_run_until_complete(loop, f), 0);
        loop_future_unref(f);
        loop_unref(loop);
}
END_TEST

/* The EAI_* codes come back as the errno values of the table in loop_getaddrinfo(3). */
START_TEST(test_getaddrinfo_errors) {
        loop_t *loop = tu_loop_new();
        struct addrinfo numeric = {.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV};
        struct addrinfo bad_family = {.ai_family = 12345};
        struct addrinfo bad_flags = {.ai_flags = AI_CANONNAME};
        struct addrinfo stream = {.ai_flags = AI_NUMERICHOST, .ai_socktype = SOCK_STREAM};

        /* EAI_NONAME */
        ck_assert_int_eq(resolve_error(loop, "not-an-address", "80", &numeric), -ENOENT);
        ck_assert_int_eq(resolve_error(loop, "127.0.0.1", "http-ish", &numeric), -ENOENT);
        /* EAI_FAMILY */
        ck_assert_int_eq(resolve_error(loop, "127.0.0.1", "80", &bad_family), -EAFNOSUPPORT);
        /* EAI_BADFLAGS: AI_CANONNAME without a host */
        ck_assert_int_eq(resolve_error(loop, NULL, "80", &bad_flags), -EINVAL);
        /* EAI_SERVICE: no such service name */
        ck_assert_int_eq(resolve_error(loop, "127.0.0.1", "no-such-service-libloop", &stream), -EPROTONOSUPPORT);
        loop_unref(loop);
}
END_TEST

/* Cancelled after the lookup finished but before the loop delivered it: the result is freed. */
START_TEST(test_getaddrinfo_cancel_undelivered) {
        loop_t *loop = tu_loop_new();
        struct addrinfo hints = {.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV};
        loop_future_t *f = NULL;
        int done = 0;

        ck_assert_int_eq(loop_getaddrinfo(loop, "127.0.0.1", "80", &hints, &f), 0);
        ck_assert_int_eq(loop_future_add_done_callback(f, count_done_cb, &done), 0);
        /* Joins the worker: the lookup is over and its completion posted. */
        ck_assert_int_eq(loop_shutdown_default_executor(loop), 0);
        ck_assert_int_eq(loop_future_cancel(f), 1);
        tu_run_until(loop, &done, 1, WAIT_LIMIT);
        tu_run_for(loop, 10 * TU_MSEC);
        ck_assert_int_eq(done, 1);
        ck_assert_int_eq(loop_future_cancelled(f), 1);
        loop_future_unref(f);
        loop_unref(loop);
}
END_TEST

/* A lookup cancelled while queued never runs; its copies are freed. */
START_TEST(test_getaddrinfo_cancel_queued) {
        loop_t *loop = tu_loop_new();
        loop_future_t *block = NULL, *f = NULL;
        struct gate g;

        gate_init(&g);
        ck_assert_int_eq(loop_set_executor_max_workers(loop, 1), 0);
        ck_assert_int_eq(loop_run_in_executor(loop, gated_fn, &g, &block), 0);
        wait_atomic(&g.started, 1);
        ck_assert_int_eq(loop_getaddrinfo(loop, "localhost", "80", NULL, &f), 0);
        ck_assert_int_eq(loop_future_cancel(f), 1);
        gate_open(&g);
        ck_assert_int_eq(loop_run_until_complete(loop, block), 0);
        ck_assert_int_eq(loop_run_until_complete(loop, f), -ECANCELED);
        loop_future_unref(block);
        loop_future_unref(f);
        gate_destroy(&g);
        loop_unref(loop);
}
END_TEST

START_TEST(test_getnameinfo_numeric) {
        loop_t *loop = tu_loop_new();
        struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons(80)};
        struct loop_nameinfo *ni = NULL;
        loop_future_t *f = NULL;

        sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        ck_assert_int_eq(
                loop_getnameinfo(loop, (struct sockaddr *) &sin, sizeof(sin), NI_NUMERICHOST | NI_NUMERICSERV, &f), 0);
        /* The address was copied. */
        memset(&sin, 0, sizeof(sin));
        ck_assert_int_eq(loop_run_until_complete(loop, f), 0);
        ck_assert_int_eq(loop_future_result(f, (void **) &ni), 0);
        ck_assert_ptr_ne(ni, NULL);
        ck_assert_str_eq(ni->host, "127.0.0.1");
        ck_assert_str_eq(ni->service, "80");
        loop_future_unref(f);
        loop_unref(loop);
}
END_TEST

START_TEST(test_getnameinfo_ipv6) {
        loop_t *loop = tu_loop_new();
        struct sockaddr_in6 sin6 = {
                .sin6_family = AF_INET6, .sin6_port = htons(443), .sin6_addr = IN6ADDR_LOOPBACK_INIT};
        struct loop_nameinfo *ni = NULL;
        loop_future_t *f = NULL;

        ck_assert_int_eq(
                loop_getnameinfo(loop, (struct sockaddr *) &sin6, sizeof(sin6), NI_NUMERICHOST | NI_NUMERICSERV, &f),
                0);
        ck_assert_int_eq(loop_run_until_complete(loop, f), 0);
        ck_assert_int_eq(loop_future_result(f, (void **) &ni), 0);
        ck_assert_str_eq(ni->host, "::1");
        ck_assert_str_eq(ni->service, "443");
        loop_future_unref(f);
        loop_unref(loop);
}
END_TEST

START_TEST(test_getnameinfo_error) {
        loop_t *loop = tu_loop_new();
        struct sockaddr_storage ss = {.ss_family = AF_UNSPEC};
        loop_future_t *f = NULL;

        /* EAI_FAMILY */
        ck_assert_int_eq(
                loop_getnameinfo(loop, (struct sockaddr *) &ss, sizeof(struct sockaddr_in), NI_NUMERICHOST, &f), 0);
        ck_assert_int_eq(loop_run_until_complete(loop, f), -EAFNOSUPPORT);
        loop_future_unref(f);
        loop_unref(loop);
}
END_TEST

/* ---- argument checks ----------------------------------------------------------------- */

START_TEST(test_bad_arguments) {
        loop_t *loop = tu_loop_new();
        struct sockaddr_in sin = {.sin_family = AF_INET};
        loop_future_t *f = NULL;
        atomic_int runs;

        atomic_init(&runs, 0);
        ck_assert_int_eq(loop_run_in_executor(NULL, count_fn, &runs, &f), -EINVAL);
        ck_assert_int_eq(loop_run_in_executor(loop, NULL, &runs, &f), -EINVAL);
        ck_assert_int_eq(loop_run_in_executor(loop, count_fn, &runs, NULL), -EINVAL);
        ck_assert_int_eq(loop_set_executor_max_workers(NULL, 2), -EINVAL);
        ck_assert_int_eq(loop_set_executor_max_workers(loop, 0), -EINVAL);
        ck_assert_int_eq(loop_shutdown_default_executor(NULL), -EINVAL);

        ck_assert_int_eq(loop_getaddrinfo(NULL, "127.0.0.1", "80", NULL, &f), -EINVAL);
        ck_assert_int_eq(loop_getaddrinfo(loop, "127.0.0.1", "80", NULL, NULL), -EINVAL);
        ck_assert_int_eq(loop_getaddrinfo(loop, NULL, NULL, NULL, &f), -EINVAL);

        ck_assert_int_eq(loop_getnameinfo(NULL, (struct sockaddr *) &sin, sizeof(sin), 0, &f), -EINVAL);
        ck_assert_int_eq(loop_getnameinfo(loop, NULL, sizeof(sin), 0, &f), -EINVAL);
        ck_assert_int_eq(loop_getnameinfo(loop, (struct sockaddr *) &sin, 0, 0, &f), -EINVAL);
        ck_assert_int_eq(loop_getnameinfo(loop, (struct sockaddr *) &sin, sizeof(struct sockaddr_storage) + 1, 0, &f),
                         -EINVAL);
        ck_assert_int_eq(loop_getnameinfo(loop, (struct sockaddr *) &sin, sizeof(sin), 0, NULL), -EINVAL);

        ck_assert_ptr_eq(f, NULL);
        ck_assert_int_eq(atomic_load(&runs), 0);
        /* Nothing was started: the loop and the pool still work. */
        ck_assert_int_eq(loop_run_in_executor(loop, count_fn, &runs, &f), 0);
        ck_assert_int_eq(loop_run_until_complete(loop, f), 0);
        loop_future_unref(f);
        loop_unref(loop);
}
END_TEST

START_TEST(test_closed_loop) {
        loop_t *loop = tu_loop_new();
        struct sockaddr_in sin = {.sin_family = AF_INET};
        loop_future_t *f = NULL;
        atomic_int runs;

        atomic_init(&runs, 0);
        ck_assert_int_eq(loop_close(loop), 0);
        ck_assert_int_eq(loop_run_in_executor(loop, count_fn, &runs, &f), -ESHUTDOWN);
        ck_assert_int_eq(loop_set_executor_max_workers(loop, 2), -ESHUTDOWN);
        ck_assert_int_eq(loop_shutdown_default_executor(loop), -ESHUTDOWN);
        ck_assert_int_eq(loop_getaddrinfo(loop, "127.0.0.1", "80", NULL, &f), -ESHUTDOWN);
        ck_assert_int_eq(loop_getnameinfo(loop, (struct sockaddr *) &sin, sizeof(sin), 0, &f), -ESHUTDOWN);
        ck_assert_ptr_eq(f, NULL);
        loop_unref(loop);
}
END_TEST

/* A pool used, then the loop closed: usable in the same process by a new loop. */
START_TEST(test_two_loops) {
        loop_t *a = tu_loop_new(), *b = tu_loop_new();
        loop_future_t *fa = NULL, *fb = NULL;
        atomic_int runs;

        atomic_init(&runs, 0);
        ck_assert_int_eq(loop_run_in_executor(a, count_fn, &runs, &fa), 0);
        ck_assert_int_eq(loop_run_in_executor(b, count_fn, &runs, &fb), 0);
        /* A future of another loop cannot be awaited here. */
        ck_assert_int_eq(loop_run_until_complete(a, fb), -EXDEV);
        ck_assert_int_eq(loop_run_until_complete(a, fa), 0);
        ck_assert_int_eq(loop_run_until_complete(b, fb), 0);
        ck_assert_int_eq(atomic_load(&runs), 2);
        loop_future_unref(fa);
        loop_future_unref(fb);
        loop_unref(a);
        loop_unref(b);
}
END_TEST

static Suite *executor_suite(void) {
        Suite *s = suite_create("executor");
        TCase *tc;

        tc = tu_tcase(s, "results");
        tcase_add_test(tc, test_result_on_loop_thread);
        tcase_add_test(tc, test_many_jobs);
        tcase_add_test(tc, test_error_result);
        tcase_add_test(tc, test_fn_posts_to_loop);
        tcase_add_test(tc, test_two_loops);

        tc = tu_tcase(s, "pool");
        tcase_add_test(tc, test_max_workers);
        tcase_add_test(tc, test_max_workers_one);
        tcase_add_test(tc, test_default_max_workers);
        tcase_add_test(tc, test_raise_max_workers);
        tcase_add_test(tc, test_lower_max_workers);

        tc = tu_tcase(s, "cancel");
        tcase_add_test(tc, test_cancel_before_start);
        tcase_add_test(tc, test_cancel_while_running);
        tcase_add_test(tc, test_unref_future_early);

        tc = tu_tcase(s, "destroy");
        tcase_add_test(tc, test_full_result_owned_by_future);
        tcase_add_test(tc, test_full_cancel_while_running);
        tcase_add_test(tc, test_full_close_first);
        tcase_add_test(tc, test_full_errors);

        tc = tu_tcase(s, "shutdown");
        tcase_add_test(tc, test_shutdown_waits);
        tcase_add_test(tc, test_shutdown_unused);
        tcase_add_test(tc, test_close_with_jobs);
        tcase_add_test(tc, test_close_waits_for_running);
        tcase_add_test(tc, test_close_drops_undelivered);
        tcase_add_test(tc, test_unref_joins_idle_workers);

        tc = tu_tcase(s, "fork");
        tcase_add_test(tc, test_fork_idle_workers_unref);
        tcase_add_test(tc, test_fork_running_job_close);

        tc = tu_tcase(s, "resolve");
        tcase_add_test(tc, test_getaddrinfo_numeric);
        tcase_add_test(tc, test_getaddrinfo_ipv6_numeric);
        tcase_add_test(tc, test_getaddrinfo_service_only);
        tcase_add_test(tc, test_getaddrinfo_localhost);
        tcase_add_test(tc, test_getaddrinfo_errors);
        tcase_add_test(tc, test_getaddrinfo_cancel_undelivered);
        tcase_add_test(tc, test_getaddrinfo_cancel_queued);
        tcase_add_test(tc, test_getnameinfo_numeric);
        tcase_add_test(tc, test_getnameinfo_ipv6);
        tcase_add_test(tc, test_getnameinfo_error);

        tc = tu_tcase(s, "errors");
        tcase_add_test(tc, test_bad_arguments);
        tcase_add_test(tc, test_closed_loop);
        return s;
}

int main(void) {
        return tu_run_suite(executor_suite());
}
