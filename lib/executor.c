/* SPDX-License-Identifier: MIT */
/*
 * The executor: a bounded pool of worker threads owned by a loop (asyncio's
 * default ThreadPoolExecutor behind loop.run_in_executor).
 *
 * Design:
 *
 *  - The pool is created on first use. Workers are started on demand, when
 *    a job is queued and no worker is idle, up to max_workers (asyncio's
 *    default: min(32, CPUs + 4), CPUs counted in the affinity mask like
 *    os.process_cpu_count()). Idle workers wait on a condition variable
 *    until the pool shuts down; they never time out.
 *
 *  - Two lists. The queue (jobs not started) is shared with the workers and
 *    lives under ex->lock. The job list (every job whose future the loop
 *    thread has not finished with) belongs to the loop thread alone: it is
 *    how loop_close() and a fork child find every job to free, whatever
 *    state the workers left it in.
 *
 *  - The loop thread owns each job and holds a reference to its future. A
 *    worker only reads fn and arg, writes r and result, and posts the job
 *    back with loop_call_soon_threadsafe(); it never touches the future
 *    (futures are loop-thread objects with a non-atomic refcount) and never
 *    frees anything. The post's lock orders the worker's writes before the
 *    loop thread's reads. Once the post succeeded the worker forgets the
 *    job: the loop thread may free it at once.
 *
 *  - Cancelling the future of a queued job takes the job out of the queue
 *    (loop__future_on_cancel runs inside loop_future_cancel): fn never
 *    runs. A running job cannot be interrupted: it runs to the end and its
 *    completion finds the future cancelled and drops the result, through
 *    the job's destroy function if it has one (loop_run_in_executor_full;
 *    loop_run_in_executor has none, and the result is then lost). So does
 *    loop_close() with the result of a job that finished before it.
 *
 *  - max_workers limits the jobs that run at once, not only the threads
 *    started: lowering it makes the surplus workers idle (not exit) as they
 *    finish, so no worker ever needs joining before shutdown.
 *
 *  - loop_shutdown_default_executor() lets the workers drain the queue,
 *    then joins them. loop_close() (our close hook) joins too, after it
 *    emptied the queue; a worker that finishes after the loop was closed
 *    gets -ESHUTDOWN from the post and leaves the job to the hook, which
 *    frees every job it finds after the join. Completions posted but not
 *    yet run are dropped by loop_close() with the rest of the loop's
 *    callbacks (plain posts, no discard hook: the job list frees them).
 *
 *  - The pool and the loop reference each other only through futures: a
 *    pending job's future holds a reference to the loop, so a loop is freed
 *    only after its jobs completed or loop_close() dropped them, and the
 *    workers never see a freed loop.
 *
 * Quirks:
 *
 *  - Workers start with every asynchronous signal blocked (the mask is set
 *    around pthread_create). A process-directed signal is then delivered to
 *    a thread of the application, never to a worker: a signalfd-style
 *    handler relies on the signal being blocked everywhere, and user code
 *    does not expect its handlers on our threads.
 *
 *  - fork(): the child has the memory of the pool but none of its threads.
 *    The close hook then only frees memory: joining would wait forever for
 *    threads that do not exist. A worker may have held ex->lock at the
 *    fork; pthread_mutex_trylock() tells (nothing else runs in the child),
 *    and when it fails the results of jobs that were finishing are leaked
 *    rather than trusted. Neither the mutex nor the condition variable is
 *    destroyed in the child: destroying a condition variable that parent
 *    threads were waiting on can block forever (glibc).
 */
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

enum {
        JOB_QUEUED,     /* in the queue, no worker has it */
        JOB_RUNNING,    /* a worker runs fn */
        JOB_DONE,       /* fn returned: r and result are set */
        JOB_DROPPED,    /* taken out of the queue, fn never ran */
};

struct job {
        loop_executor_fn_t fn;
        void *arg;
        void (*free_arg)(void *arg);
        void (*destroy)(void *result);
        struct loop__executor *ex;
        loop_future_t *future;          /* the loop thread's reference */

        /* Written by the worker before it posts the job back. */
        int r;
        void *result;

        uint8_t state;                  /* under ex->lock */
        struct job *qprev, *qnext;      /* the queue, under ex->lock */
        struct job *prev, *next;        /* ex->jobs, loop thread only */
};

struct loop__executor {
        loop_t *loop;                   /* not a reference: the pool is part of the loop */
        struct loop__close_hook close_hook;

        pthread_mutex_t lock;
        pthread_cond_t wake;            /* a job was queued, max_workers rose, or shutdown */
        /* Under lock. */
        struct job *queue_head, *queue_tail;
        size_t n_queued;
        unsigned max_workers;
        unsigned n_running;             /* jobs running now */
        unsigned n_idle;                /* workers not running a job (waiting or starting) */
        bool shutdown;                  /* workers exit once the queue is empty */

        /* Loop thread only. */
        pthread_t *threads;             /* every worker started and not joined */
        unsigned n_threads, cap_threads;
        struct job *jobs;
        bool shutdown_called;           /* loop_shutdown_default_executor() or close */
};

static unsigned default_max_workers(void) {
        long n = -1;

#if defined(HAVE_SCHED_GETAFFINITY) && defined(CPU_COUNT)
        /* The CPUs this process may use (os.process_cpu_count()), not the
         * machine's. Linux and FreeBSD 13.1+; macOS has no affinity masks. */
        cpu_set_t set;
        if (sched_getaffinity(0, sizeof(set), &set) == 0)
                n = CPU_COUNT(&set);
#endif
        if (n < 1)
                n = loop__online_cpus();
        if (n < 1)
                n = 1;
        return n + 4 < 32 ? (unsigned) n + 4 : 32;
}

static void executor_close(loop_t *loop, struct loop__close_hook *hook);

static int executor_get(loop_t *loop, struct loop__executor **ret) {
        struct loop__executor *ex = loop->executor;

        if (ex) {
                *ret = ex;
                return 0;
        }
        ex = malloc(sizeof(*ex));
        if (!ex)
                return -ENOMEM;
        *ex = (struct loop__executor) {
                .loop = loop,
                .close_hook.fn = executor_close,
                .max_workers = default_max_workers(),
        };
        int r = pthread_mutex_init(&ex->lock, NULL);
        if (r != 0)
                goto fail;
        r = pthread_cond_init(&ex->wake, NULL);
        if (r != 0) {
                pthread_mutex_destroy(&ex->lock);
                goto fail;
        }
        loop__add_close_hook(loop, &ex->close_hook);
        loop->executor = *ret = ex;
        return 0;

fail:
        free(ex);
        return -r;
}

/* Under ex->lock. */
static void queue_push(struct loop__executor *ex, struct job *job) {
        job->qprev = ex->queue_tail;
        job->qnext = NULL;
        if (ex->queue_tail)
                ex->queue_tail->qnext = job;
        else
                ex->queue_head = job;
        ex->queue_tail = job;
        ex->n_queued++;
}

/* Under ex->lock. */
static void queue_remove(struct loop__executor *ex, struct job *job) {
        if (job->qprev)
                job->qprev->qnext = job->qnext;
        else
                ex->queue_head = job->qnext;
        if (job->qnext)
                job->qnext->qprev = job->qprev;
        else
                ex->queue_tail = job->qprev;
        job->qprev = job->qnext = NULL;
        ex->n_queued--;
}

static void jobs_link(struct loop__executor *ex, struct job *job) {
        job->prev = NULL;
        job->next = ex->jobs;
        if (ex->jobs)
                ex->jobs->prev = job;
        ex->jobs = job;
}

static void jobs_unlink(struct loop__executor *ex, struct job *job) {
        if (job->prev)
                job->prev->next = job->next;
        else
                ex->jobs = job->next;
        if (job->next)
                job->next->prev = job->prev;
        job->prev = job->next = NULL;
}

/* Loop thread, once no worker can reach the job any more. */
static void job_free(struct job *job) {
        if (job->free_arg)
                job->free_arg(job->arg);
        loop_future_unref(job->future);
        free(job);
}

/* In the loop's thread: completes the job's future. */
static int deliver(loop_t *loop, void *userdata);

/* Worker: hands the finished job to the loop thread; it is not ours after a success. */
static void post(struct loop__executor *ex, struct job *job) {
        /*
         * -ENOMEM (the loop's post buffer could not grow) would lose the
         * completion and leave the future pending forever: try again until
         * memory comes back or the loop is closed. -ESHUTDOWN: loop_close()
         * is joining us and frees the job afterwards.
         */
        while (loop_call_soon_threadsafe(ex->loop, deliver, job, NULL) == -ENOMEM)
                nanosleep(&(struct timespec) { .tv_nsec = 1000 * 1000 }, NULL);
}

static void *worker_main(void *userdata) {
        struct loop__executor *ex = userdata;

        pthread_mutex_lock(&ex->lock);
        for (;;) {
                if (ex->queue_head && ex->n_running < ex->max_workers) {
                        struct job *job = ex->queue_head;
                        queue_remove(ex, job);
                        job->state = JOB_RUNNING;
                        ex->n_running++;
                        ex->n_idle--;
                        /* Waiters that saw a non-empty queue during shutdown wait for this. */
                        if (ex->shutdown && !ex->queue_head)
                                pthread_cond_broadcast(&ex->wake);
                        pthread_mutex_unlock(&ex->lock);

                        void *result = NULL;
                        int r = job->fn(job->arg, &result);
                        job->r = r;
                        job->result = result;

                        pthread_mutex_lock(&ex->lock);
                        job->state = JOB_DONE;
                        ex->n_running--;
                        ex->n_idle++;
                        pthread_mutex_unlock(&ex->lock);

                        post(ex, job);

                        pthread_mutex_lock(&ex->lock);
                        continue;
                }
                if (ex->shutdown && !ex->queue_head)
                        break;
                pthread_cond_wait(&ex->wake, &ex->lock);
        }
        ex->n_idle--;
        pthread_mutex_unlock(&ex->lock);
        return NULL;
}

/* Loop thread. Starts one worker, counted idle until it takes a job. */
static int spawn(struct loop__executor *ex) {
        pthread_t thread;
        int r;

        if (ex->n_threads == ex->cap_threads) {
                unsigned cap = ex->cap_threads ? ex->cap_threads * 2 : 8;
                pthread_t *threads = realloc(ex->threads, cap * sizeof(*threads));
                if (!threads)
                        return -ENOMEM;
                ex->threads = threads;
                ex->cap_threads = cap;
        }

        pthread_mutex_lock(&ex->lock);
        ex->n_idle++;
        pthread_mutex_unlock(&ex->lock);

        /* Asynchronous signals go to the application's threads. */
        r = loop__thread_create_nosignals(&thread, worker_main, ex);
        if (r != 0) {
                pthread_mutex_lock(&ex->lock);
                ex->n_idle--;
                pthread_mutex_unlock(&ex->lock);
                return -r;
        }
        ex->threads[ex->n_threads++] = thread;
        return 0;
}

/*
 * Loop thread. Starts workers for the queued jobs no idle worker will take,
 * within max_workers (asyncio's _adjust_thread_count). Returns the first
 * error, if any.
 */
static int adjust_workers(struct loop__executor *ex) {
        unsigned want = 0;

        pthread_mutex_lock(&ex->lock);
        if (ex->n_queued > ex->n_idle && ex->n_threads < ex->max_workers) {
                size_t missing = ex->n_queued - ex->n_idle;
                unsigned room = ex->max_workers - ex->n_threads;
                want = missing < room ? (unsigned) missing : room;
        }
        pthread_mutex_unlock(&ex->lock);

        for (unsigned i = 0; i < want; i++) {
                int r = spawn(ex);
                if (r < 0)
                        return r;
        }
        return 0;
}

static void join_workers(struct loop__executor *ex) {
        pthread_mutex_lock(&ex->lock);
        ex->shutdown = true;
        pthread_cond_broadcast(&ex->wake);
        pthread_mutex_unlock(&ex->lock);

        for (unsigned i = 0; i < ex->n_threads; i++)
                pthread_join(ex->threads[i], NULL);
        ex->n_threads = 0;
}

/*
 * Loop thread, from loop_future_cancel(). A queued job leaves the queue and
 * is freed: fn never runs. A running or finished one is left alone; its
 * completion sees the cancelled future. Dropping our future reference here
 * is safe: whoever cancels holds one too.
 */
static void on_cancel(loop_future_t *f, void *data) {
        struct job *job = data;
        struct loop__executor *ex = job->ex;
        bool dropped = false;

        pthread_mutex_lock(&ex->lock);
        if (job->state == JOB_QUEUED) {
                queue_remove(ex, job);
                job->state = JOB_DROPPED;
                dropped = true;
        }
        pthread_mutex_unlock(&ex->lock);

        if (dropped) {
                jobs_unlink(ex, job);
                job_free(job);
        }
}

/* Loop thread: the worker finished fn. */
static int deliver(loop_t *loop, void *userdata) {
        struct job *job = userdata;
        loop_future_t *f = job->future;

        jobs_unlink(job->ex, job);
        loop__future_on_cancel(f, NULL, NULL);
        if (loop_future_done(f)) {
                /* Cancelled while it ran: nobody will read the result. */
                if (job->r >= 0 && job->destroy)
                        job->destroy(job->result);
        } else if (job->r >= 0)
                loop_future_set_result(f, job->result, job->destroy);
        else if (job->r == -ECANCELED)
                loop_future_cancel(f);
        else
                loop_future_set_error(f, job->r);
        job_free(job);
        return 0;
}

int loop__executor_submit(loop_t *loop, loop_executor_fn_t fn, void *arg, void (*free_arg)(void *arg),
                          void (*destroy)(void *result), loop_future_t **ret) {
        struct loop__executor *ex;
        loop_future_t *f = NULL;
        struct job *job;
        int r = loop__usable(loop);

        if (r < 0)
                return r;
        return_if_fail(fn && ret, -EINVAL);
        r = executor_get(loop, &ex);
        if (r < 0)
                return r;
        /* asyncio: RuntimeError('Executor shutdown has been called'). */
        if (ex->shutdown_called)
                return -ESHUTDOWN;

        job = malloc(sizeof(*job));
        if (!job)
                return -ENOMEM;
        r = loop_create_future(loop, &f);
        if (r < 0) {
                free(job);
                return r;
        }
        *job = (struct job) {
                .fn = fn,
                .arg = arg,
                .free_arg = free_arg,
                .destroy = destroy,
                .ex = ex,
                .future = f,
                .state = JOB_QUEUED,
        };

        pthread_mutex_lock(&ex->lock);
        queue_push(ex, job);
        pthread_cond_signal(&ex->wake);
        pthread_mutex_unlock(&ex->lock);

        /* A failure to start a worker only matters when there is none:
         * otherwise the job waits for one of them. */
        r = adjust_workers(ex);
        if (r < 0 && ex->n_threads == 0) {
                pthread_mutex_lock(&ex->lock);
                queue_remove(ex, job);
                pthread_mutex_unlock(&ex->lock);
                loop_future_unref(f);
                free(job);
                return r;
        }

        jobs_link(ex, job);
        loop__future_on_cancel(f, on_cancel, job);
        *ret = loop_future_ref(f);
        return 0;
}

/* destroy: what loop_future_set_result() takes, and in addition the fate of
 * a result that no future takes (see deliver() and executor_close()). */
LOOP_EXPORT int loop_run_in_executor_full(loop_t *loop, loop_executor_fn_t fn, void *arg,
                                          void (*destroy)(void *result), loop_future_t **ret) {
        return loop__executor_submit(loop, fn, arg, NULL, destroy, ret);
}

LOOP_EXPORT int loop_run_in_executor(loop_t *loop, loop_executor_fn_t fn, void *arg, loop_future_t **ret) {
        return loop__executor_submit(loop, fn, arg, NULL, NULL, ret);
}

LOOP_EXPORT int loop_set_executor_max_workers(loop_t *loop, unsigned max_workers) {
        struct loop__executor *ex;
        int r = loop__usable(loop);

        if (r < 0)
                return r;
        return_if_fail(max_workers >= 1, -EINVAL);
        r = executor_get(loop, &ex);
        if (r < 0)
                return r;
        if (ex->shutdown_called)
                return -ESHUTDOWN;

        pthread_mutex_lock(&ex->lock);
        ex->max_workers = max_workers;
        /* Workers held back by a lower limit may take jobs now. */
        pthread_cond_broadcast(&ex->wake);
        pthread_mutex_unlock(&ex->lock);

        /* A higher limit applies to the jobs already waiting, too. Not
         * being able to start more workers now is no error: the jobs
         * run on those there are. */
        (void) adjust_workers(ex);
        return 0;
}

LOOP_EXPORT int loop_shutdown_default_executor(loop_t *loop) {
        struct loop__executor *ex;
        int r = loop__usable(loop);

        if (r < 0)
                return r;
        /* The pool is created even if it was never used: it remembers that
         * later jobs must be refused, as asyncio does. */
        r = executor_get(loop, &ex);
        if (r < 0)
                return r;
        ex->shutdown_called = true;
        /* The workers drain the queue before they exit. Their completions
         * reach the futures the next time the loop runs. */
        join_workers(ex);
        return 0;
}

/*
 * loop_close(): running jobs finish (they cannot be interrupted), queued ones
 * never start, and every future still pending is cancelled. Completions
 * already posted are dropped by loop_close() right after this hook.
 */
static void executor_close(loop_t *loop, struct loop__close_hook *hook) {
        struct loop__executor *ex = loop->executor;
        bool inherited = loop__inherited(loop), trusted = true;

        (void) hook;
        ex->shutdown_called = true;
        if (inherited) {
                /* No worker exists in a fork child. If one held the lock at
                 * the fork, what it was writing is unknown. */
                trusted = pthread_mutex_trylock(&ex->lock) == 0;
                if (trusted)
                        pthread_mutex_unlock(&ex->lock);
        } else {
                pthread_mutex_lock(&ex->lock);
                for (struct job *job = ex->queue_head; job; job = job->qnext)
                        job->state = JOB_DROPPED;
                ex->queue_head = ex->queue_tail = NULL;
                ex->n_queued = 0;
                pthread_mutex_unlock(&ex->lock);
                join_workers(ex);
        }

        while (ex->jobs) {
                struct job *job = ex->jobs;
                jobs_unlink(ex, job);
                /* The job is freed below: cancel must not come back to us. */
                loop__future_on_cancel(job->future, NULL, NULL);
                if (!inherited)
                        loop_future_cancel(job->future);
                if (trusted && job->state == JOB_DONE && job->r >= 0 && job->destroy)
                        job->destroy(job->result);
                job_free(job);
        }

        if (!inherited) {
                pthread_cond_destroy(&ex->wake);
                pthread_mutex_destroy(&ex->lock);
        }
        free(ex->threads);
        free(ex);
        loop->executor = NULL;
}
