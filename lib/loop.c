/* SPDX-License-Identifier: MIT */
/*
 * The base loop (asyncio's BaseEventLoop): life cycle, running, stopping,
 * and the per-thread "running loop". The ready queue and timers are in
 * handle.c; the I/O side comes from the loop kind behind loop->impl.
 */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "selector.h"

uint64_t loop__fork_generation;

/* The loop running in this thread, if any (asyncio's _get_running_loop). */
__thread loop_t *loop__running_loop;

static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

/* Every loop of the process, so that a fork child can shut their soon
 * windows: the inline loop_call_soon compares against the
 * call_soon_threadsafe ring, which a fork does not change. The lock is
 * held across fork() (prepare/parent/child), so the child's list is whole. */
static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static loop_t *registry;

static void before_fork(void) {
        pthread_mutex_lock(&registry_lock);
}

static void after_fork_in_parent(void) {
        pthread_mutex_unlock(&registry_lock);
}

static void after_fork_in_child(void) {
        /* Marks every existing loop as inherited: checking a generation
         * number is cheaper than calling getpid() on every call. */
        __atomic_store_n(&loop__fork_generation, loop__fork_generation + 1, __ATOMIC_RELAXED);
        loop__running_loop = NULL;
        for (loop_t *l = registry; l; l = l->registry_next)
                __atomic_store_n(&l->ready.window.open_generation, LOOP__INHERITED, __ATOMIC_RELAXED);
        pthread_mutex_unlock(&registry_lock);
}

static void install_atfork(void) {
        loop__atfork(before_fork, after_fork_in_parent, after_fork_in_child);
}

static void registry_add(loop_t *loop) {
        pthread_mutex_lock(&registry_lock);
        loop->registry_next = registry;
        if (registry)
                registry->registry_prev = loop;
        registry = loop;
        pthread_mutex_unlock(&registry_lock);
}

static void registry_remove(loop_t *loop) {
        pthread_mutex_lock(&registry_lock);
        if (loop->registry_prev)
                loop->registry_prev->registry_next = loop->registry_next;
        else if (registry == loop)
                registry = loop->registry_next;
        if (loop->registry_next)
                loop->registry_next->registry_prev = loop->registry_prev;
        loop->registry_prev = loop->registry_next = NULL;
        pthread_mutex_unlock(&registry_lock);
}

int loop__init(loop_t *loop, const struct loop__impl *impl) {
        pthread_once(&atfork_once, install_atfork);
        *loop = (loop_t) {
                /* The window stays shut (tail == end) until the first call
                 * through loop_call_soon() gives the queue an array, and
                 * until the ring exists, it points at the debug gate. */
                .ready.window = {
                        .generation = &loop->debug_gate,
                        .open_generation = 0,
                },
                .n_ref = 1,
                .impl = impl,
                .fork_generation = __atomic_load_n(&loop__fork_generation, __ATOMIC_RELAXED),
                .debug_gate = LOOP__DEBUG_GATE,
                .slow_callback_ns = 100 * 1000 * 1000,   /* asyncio's 0.1 s */
                .wake_read_fd = -1,
                .wake_write_fd = -1,
        };
        int r = loop__handle_pool_new(loop);
        if (r < 0)
                return r;
        loop__timers_init(loop);
        r = loop__threadsafe_init(loop);
        if (r < 0) {
                loop__handle_pool_release(loop);
                return r;
        }
        /* Open: the ring's tail as it is, nothing posted yet. */
        loop->ready.window.open_generation = *loop__threadsafe_gate(loop);
        loop__set_debug(loop, loop__getenv_bool("LIBLOOP_DEBUG"));
        registry_add(loop);
        return 0;
}

LOOP_EXPORT int loop_new(loop_t **ret) {
        loop_selector_t *sel = NULL;
        const char *proactor;
        int r;

        return_if_fail(ret, -EINVAL);
        /* LIBLOOP_PROACTOR=io_uring: asyncio's ProactorEventLoop as the default. */
        proactor = loop__getenv("LIBLOOP_PROACTOR");
        if (proactor && *proactor)
                return loop__proactor_loop_new_named(proactor, ret);
        /* Windows: the proactor unless LIBLOOP_SELECTOR names a selector. */
        const char *selector = loop__getenv("LIBLOOP_SELECTOR");
        if (loop__proactor_by_default() && !(selector && *selector))
                return loop_proactor_loop_new(ret);
        r = loop_selector_new(NULL, &sel);
        if (r < 0)
                return r;
        r = loop_selector_loop_new(sel, ret);
        loop_selector_unref(sel);
        return r;
}

LOOP_EXPORT loop_t *loop_ref(loop_t *loop) {
        if (loop)
                __atomic_add_fetch(&loop->n_ref, 1, __ATOMIC_RELAXED);
        return loop;
}

static void loop_free(loop_t *loop) {
        registry_remove(loop);
        loop_close(loop);
        /* Not at the close: the handle pool, which may grow until the
         * loop is freed, grows the heap's bitmap with it. */
        loop__timer_heap_free(&loop->timers);
        loop__threadsafe_free(loop);
        loop__handle_pool_release(loop);
        free(loop);
}

LOOP_EXPORT loop_t *loop_unref(loop_t *loop) {
        if (loop && __atomic_sub_fetch(&loop->n_ref, 1, __ATOMIC_ACQ_REL) == 0)
                loop_free(loop);
        return NULL;
}

LOOP_EXPORT int loop_close(loop_t *loop) {
        return_if_fail(loop, -EINVAL);

        if (loop->closed)
                return 0;
        /* In a fork child the loop cannot be running here (that thread is
         * gone), and closing must still work: it is how a child lets go. */
        if (!loop__inherited(loop) && __atomic_load_n(&loop->running, __ATOMIC_ACQUIRE))
                return -EBUSY;
        __atomic_store_n(&loop->ready.window.open_generation, LOOP__CLOSED, __ATOMIC_RELAXED);
        if (loop__inherited(loop))
                loop->closed = true;
        else
                loop__threadsafe_close(loop);   /* under the lock other threads post with */
        /* Components first (signals, executor, sockets, children): they
         * cancel their futures, whose done callbacks a closed loop drops. */
        while (loop->close_hooks) {
                struct loop__close_hook *hook = loop->close_hooks;
                loop->close_hooks = hook->next;
                hook->next = NULL;
                hook->fn(loop, hook);
        }
        loop__discard_scheduled(loop);
        loop->impl->close(loop);
        return 0;
}

void loop__set_debug(loop_t *loop, bool enabled) {
        loop->debug = enabled;
        /* Set in the loop's thread (loop_set_debug(3)); a shut window only
         * sends the inline loop_call_soon to the function. */
        loop->ready.window.generation = enabled ? &loop->debug_gate : loop__threadsafe_gate(loop);
}

static int report_wrong_thread(loop_t *loop, void *userdata) {
        char msg[160];

        snprintf(msg, sizeof(msg),
                 "Non-thread-safe operation invoked on an event loop other than the current one: %s() from "
                 "another thread while the loop runs (use loop_call_soon_threadsafe)",
                 (const char *) userdata);
        loop__report(loop, msg, -EPERM, NULL, -1);
        return 0;
}

/* Told in the loop's thread, where the exception handler runs; the caller
 * gets the error at once. */
int loop__wrong_thread(loop_t *loop, const char *call) {
        (void) loop_call_soon_threadsafe(loop, report_wrong_thread, (void *) call, NULL);
        return -EPERM;
}

/* Readers and writers belong to the loop kind: both the selector loop and
 * the proactor loop serve them. */
LOOP_EXPORT int loop_add_reader(loop_t *loop, int fd, loop_io_callback_t cb, void *userdata) {
        int r = loop__usable(loop);

        if (r == 0)
                r = loop__check_thread(loop, "loop_add_reader");
        if (r < 0)
                return r;
        return_if_fail(cb, -EINVAL);
        return loop->impl->add_io(loop, fd, LOOP_EVENT_READ, cb, userdata);
}

LOOP_EXPORT int loop_add_writer(loop_t *loop, int fd, loop_io_callback_t cb, void *userdata) {
        int r = loop__usable(loop);

        if (r == 0)
                r = loop__check_thread(loop, "loop_add_writer");
        if (r < 0)
                return r;
        return_if_fail(cb, -EINVAL);
        return loop->impl->add_io(loop, fd, LOOP_EVENT_WRITE, cb, userdata);
}

LOOP_EXPORT int loop_remove_reader(loop_t *loop, int fd) {
        int r = loop__usable(loop);

        if (r == 0)
                r = loop__check_thread(loop, "loop_remove_reader");
        if (r < 0)
                return r;
        return loop->impl->remove_io(loop, fd, LOOP_EVENT_READ);
}

LOOP_EXPORT int loop_remove_writer(loop_t *loop, int fd) {
        int r = loop__usable(loop);

        if (r == 0)
                r = loop__check_thread(loop, "loop_remove_writer");
        if (r < 0)
                return r;
        return loop->impl->remove_io(loop, fd, LOOP_EVENT_WRITE);
}

static int pause_io(loop_t *loop, int fd, uint32_t event, bool pause) {
        int r = loop__usable(loop);

        if (r == 0)
                r = loop__check_thread(loop, pause ? "loop_pause_reader/writer" : "loop_resume_reader/writer");
        if (r < 0)
                return r;
        return loop->impl->pause_io(loop, fd, event, pause);
}

LOOP_EXPORT int loop_pause_reader(loop_t *loop, int fd) {
        return pause_io(loop, fd, LOOP_EVENT_READ, true);
}

LOOP_EXPORT int loop_resume_reader(loop_t *loop, int fd) {
        return pause_io(loop, fd, LOOP_EVENT_READ, false);
}

LOOP_EXPORT int loop_pause_writer(loop_t *loop, int fd) {
        return pause_io(loop, fd, LOOP_EVENT_WRITE, true);
}

LOOP_EXPORT int loop_resume_writer(loop_t *loop, int fd) {
        return pause_io(loop, fd, LOOP_EVENT_WRITE, false);
}

/*
 * An inherited loop answers -ECHILD here too, as it does to every call but
 * loop_unref and loop_close: the parent's state (its "running" flag above
 * all, copied from a thread that does not exist in the child) says nothing
 * about the child, where the loop neither runs nor can be used.
 */
LOOP_EXPORT int loop_is_closed(const loop_t *loop) {
        return_if_fail(loop, -EINVAL);
        if (loop__inherited(loop))
                return -ECHILD;
        return __atomic_load_n(&loop->closed, __ATOMIC_ACQUIRE);
}

LOOP_EXPORT int loop_is_running(const loop_t *loop) {
        return_if_fail(loop, -EINVAL);
        if (loop__inherited(loop))
                return -ECHILD;
        return (int) __atomic_load_n(&loop->running, __ATOMIC_ACQUIRE);
}

void loop__add_close_hook(loop_t *loop, struct loop__close_hook *hook) {
        hook->next = loop->close_hooks;
        loop->close_hooks = hook;
}

/* For a component whose state ends before the loop (a connection attempt). */
void loop__remove_close_hook(loop_t *loop, struct loop__close_hook *hook) {
        for (struct loop__close_hook **p = &loop->close_hooks; *p; p = &(*p)->next)
                if (*p == hook) {
                        *p = hook->next;
                        hook->next = NULL;
                        return;
                }
}

/*
 * loop_stop() may come from any thread. Sequentially consistent, paired
 * with the exchange that sets `running` (enter()): either the stopping
 * thread sees the loop running and wakes it, or the loop sees the stop
 * before it decides how long to wait.
 */
static inline bool stop_requested(const loop_t *loop) {
        return __atomic_load_n(&loop->stopping, __ATOMIC_SEQ_CST);
}

/* How long the next wait may block: 0 with work queued, up to the first
 * timer, else max_wait_ns (< 0: no limit). */
static int64_t wait_timeout(loop_t *loop, int64_t now, int64_t max_wait_ns) {
        const struct timer_slot *top;
        int64_t timeout = max_wait_ns;

        if (ready_count(&loop->ready) > 0 || stop_requested(loop))
                return 0;
        if ((top = loop__first_timer(loop))) {
                /* Compared before subtracting: a deadline near INT64_MIN
                 * would overflow the difference. */
                int64_t until = top->when <= now ? 0 : top->when - now;
                if (timeout < 0 || until < timeout)
                        timeout = until;
        }
        return timeout;
}

/*
 * One iteration: asyncio's BaseEventLoop._run_once.
 *
 * The clock is read only when something needs it: to bound the wait by the
 * first timer, to measure a wait that may block (metrics), and to expire
 * timers. An iteration with callbacks queued and no timers reads it not at
 * all; a run of call_soon callbacks costs no clock_gettime.
 */
static int iterate(loop_t *loop, int64_t max_wait_ns) {
        bool busy = ready_count(&loop->ready) > 0 || stop_requested(loop);
        int64_t before = 0, now = 0, timeout = 0;
        int r;

        /* Cancelled timers leave in bulk here, once an iteration, when
         * they are more than half the heap (asyncio's _run_once). */
        loop__timer_heap_tidy(&loop->timers);
        if (!busy) {
                before = loop__now();
                timeout = wait_timeout(loop, before, max_wait_ns);
                /* A wait that may block: from here another thread's post or
                 * loop_stop() writes the wake-up; one that came before is
                 * seen now, and the wait does not block. */
                if (timeout != 0 &&
                    (loop__threadsafe_linger(loop, timeout) || !loop__threadsafe_sleep(loop) || stop_requested(loop)))
                        timeout = 0;
        }
        r = loop->impl->poll(loop, timeout);
        loop__threadsafe_awake(loop);
        if (r < 0)
                return r;
        /* Posts made while the loop was awake wrote no wake-up. */
        loop__threadsafe_poll(loop);
        loop->n_events += (uint64_t) r;
        if (!busy) {
                now = loop__now();
                loop->wait_ns += now - before;
        }
        if (loop->timers.n > 0)
                loop__expire_timers(loop, now ? now : loop__now());
        r = loop__run_ready(loop);
        loop->n_iterations++;
        loop->n_callbacks += (uint64_t) r;
        return r;
}

LOOP_EXPORT int64_t loop_get_timeout_ns(loop_t *loop) {
        int r = loop__usable(loop);

        if (r < 0)
                return r;
        /* The caller is about to wait on loop_fileno(): the backend must
         * see the registrations made since the last iteration, and posts
         * from other threads must write the wake-up (the next iteration
         * clears that again). */
        loop->impl->prepare(loop);
        int64_t now = loop__now();
        int64_t timeout = wait_timeout(loop, now, -1);
        if (timeout != 0 && (!loop__threadsafe_sleep(loop) || stop_requested(loop)))
                timeout = 0;
        return timeout;
}

LOOP_EXPORT int loop_fileno(loop_t *loop) {
        int r = loop__usable(loop);

        if (r < 0)
                return r;
        return loop->impl->fileno(loop);
}

LOOP_EXPORT int loop_get_metrics(loop_t *loop, struct loop_metrics *metrics) {
        int r = loop__usable(loop);

        if (r < 0)
                return r;
        return_if_fail(metrics && metrics->size >= sizeof(metrics->size), -EINVAL);
        int64_t run_ns = loop->run_ns;
        if (loop__running_loop == loop)      /* asked from a callback: count the run so far */
                run_ns += loop__now() - loop->run_started_ns - (loop->wait_ns - loop->run_wait_ns);
        struct loop_metrics m = {
                .size = sizeof(m),
                .iterations = loop->n_iterations,
                .callbacks = loop->n_callbacks,
                .events = loop->n_events,
                .wait_ns = loop->wait_ns,
                .run_ns = run_ns,
                .handles_ready = ready_count(&loop->ready),
                .timers = timer_heap_live(&loop->timers),
                .fds = loop->impl->count_fds(loop),
        };
        /* An older caller's shorter struct gets the fields it knows. */
        size_t n = metrics->size < sizeof(m) ? metrics->size : sizeof(m);
        memcpy((char *) metrics + sizeof(m.size), (char *) &m + sizeof(m.size), n - sizeof(m.size));
        return 0;
}

static int enter(loop_t *loop) {
        int r = loop__usable(loop);

        if (r < 0)
                return r;
        /* Another loop already running in this thread: asyncio refuses too. */
        if (loop__running_loop)
                return -EBUSY;
        /* Sequentially consistent: see stop_requested(). */
        if (__atomic_exchange_n(&loop->running, 1, __ATOMIC_SEQ_CST))
                return -EBUSY;
        loop__running_loop = loop;
        loop->n_runs++;
        loop->run_started_ns = loop__now();
        loop->run_wait_ns = loop->wait_ns;
        /* The loop must outlive its own run even if a callback drops the
         * caller's last reference. */
        loop_ref(loop);
        return 0;
}

static void leave(loop_t *loop) {
        /* run_ns: the time inside run_forever/run_once minus the waits. */
        loop->run_ns += loop__now() - loop->run_started_ns - (loop->wait_ns - loop->run_wait_ns);
        /* A stop ends one run, as asyncio's run_forever resets _stopping.
         * Relaxed: a stop that races with the end of a run may end it or
         * the next one, either is right. */
        __atomic_store_n(&loop->stopping, false, __ATOMIC_RELAXED);
        loop__running_loop = NULL;
        __atomic_store_n(&loop->running, 0, __ATOMIC_RELEASE);
        loop_unref(loop);
}

LOOP_EXPORT int loop_run_forever(loop_t *loop) {
        int r = enter(loop);

        if (r < 0)
                return r;
        for (;;) {
                r = iterate(loop, -1);
                if (r < 0 || stop_requested(loop))
                        break;
                /* A callback forked and this is the child: the loop is the parent's. */
                if (loop__inherited(loop)) {
                        r = -ECHILD;
                        break;
                }
        }
        leave(loop);
        return r < 0 ? r : 0;
}

LOOP_EXPORT int loop_run_once(loop_t *loop, int64_t timeout_ns) {
        int r = enter(loop);

        if (r < 0)
                return r;
        r = iterate(loop, timeout_ns < 0 ? -1 : timeout_ns);
        leave(loop);
        return r;
}

/*
 * Any thread may stop a loop (a control thread, a signal-handling thread):
 * the request is an atomic flag, and a loop that runs in another thread is
 * woken through the wake-up descriptor that call_soon_threadsafe uses, so
 * that it finishes its iteration and returns instead of sleeping on.
 */
LOOP_EXPORT int loop_stop(loop_t *loop) {
        return_if_fail(loop, -EINVAL);
        if (loop__inherited(loop))
                return -ECHILD;
        if (__atomic_load_n(&loop->closed, __ATOMIC_ACQUIRE))
                return -ESHUTDOWN;
        __atomic_store_n(&loop->stopping, true, __ATOMIC_SEQ_CST);
        /* From one of its own callbacks the loop is not waiting: the
         * iteration ends by itself. */
        if (loop__running_loop != loop && __atomic_load_n(&loop->running, __ATOMIC_SEQ_CST))
                loop__threadsafe_wake(loop);
        return 0;
}
