/* SPDX-License-Identifier: MIT */
/*
 * Runners: asyncio.Runner and asyncio.run(), the way asyncio 3.14 wants
 * programs to start. A runner makes its loop with a factory (loop_new when
 * none is given), makes it the thread's current loop, runs a main callback
 * or a future to completion and, when closed, waits for its executor's
 * queued work, puts the previous current loop back and closes its own.
 */
#include <stdlib.h>

#include "internal.h"

struct loop_runner {
        unsigned n_ref;         /* atomic */
        loop_factory_t factory;
        void *factory_userdata;
        loop_t *loop;
        loop_t *previous;       /* the thread's current loop before ours, restored on close */
        bool closed;
};

LOOP_EXPORT int loop_runner_new(loop_factory_t factory, void *userdata, loop_runner_t **ret) {
        return_if_fail(ret, -EINVAL);

        loop_runner_t *runner = malloc(sizeof(*runner));
        if (!runner)
                return -ENOMEM;
        *runner = (loop_runner_t) {
                .n_ref = 1,
                .factory = factory,
                .factory_userdata = factory ? userdata : NULL,
        };
        *ret = runner;
        return 0;
}

LOOP_EXPORT loop_runner_t *loop_runner_ref(loop_runner_t *runner) {
        if (runner)
                __atomic_add_fetch(&runner->n_ref, 1, __ATOMIC_RELAXED);
        return runner;
}

LOOP_EXPORT loop_runner_t *loop_runner_unref(loop_runner_t *runner) {
        if (runner && __atomic_sub_fetch(&runner->n_ref, 1, __ATOMIC_ACQ_REL) == 0) {
                loop_runner_close(runner);
                /* Closing fails only while the loop runs, and a running loop
                 * holds no reference to its runner: nothing can be running. */
                free(runner);
        }
        return NULL;
}

/* The loop is made on first use, as asyncio.Runner's _lazy_init. */
static int lazy_init(loop_runner_t *runner) {
        loop_t *loop = NULL, *previous = NULL;
        int r;

        if (runner->closed)
                return -ESHUTDOWN;
        if (runner->loop)
                return 0;
        r = runner->factory ? runner->factory(&loop, runner->factory_userdata) : loop_new(&loop);
        if (r < 0)
                return r;
        if (!loop)
                return -ENOENT;         /* a factory that "succeeded" without a loop */
        (void) loop_thread_get_loop(&previous);
        r = loop_thread_set_loop(loop);
        if (r < 0) {
                loop_unref(previous);
                loop_unref(loop);
                return r;
        }
        runner->loop = loop;
        runner->previous = previous;
        return 0;
}

LOOP_EXPORT int loop_runner_get_loop(loop_runner_t *runner, loop_t **ret) {
        return_if_fail(runner && ret, -EINVAL);

        int r = lazy_init(runner);
        if (r < 0)
                return r;
        *ret = loop_ref(runner->loop);
        return 0;
}

struct main_call {
        loop_callback_t main;
        void *userdata;
        int result;
};

static int call_main(loop_t *loop, void *userdata) {
        struct main_call *call = userdata;

        call->result = call->main(loop, call->userdata);
        /* A failing main ends the run with its error, as an exception
         * escaping asyncio.run's coroutine does. */
        if (call->result < 0)
                loop_stop(loop);
        return 0;
}

LOOP_EXPORT int loop_runner_run(loop_runner_t *runner, loop_callback_t main, void *userdata) {
        return_if_fail(runner && main, -EINVAL);
        /* asyncio.Runner.run checks before it creates anything: a refused
         * call leaves the thread's current loop alone. */
        if (loop__running_loop)
                return -EBUSY;

        int r = lazy_init(runner);
        if (r < 0)
                return r;
        /* Refuse before scheduling: a main left queued would point into
         * this stack frame after we return. */
        if (loop_is_running(runner->loop) > 0)
                return -EBUSY;
        struct main_call call = { .main = main, .userdata = userdata };
        loop_handle_t *h;
        r = loop_call_soon(runner->loop, call_main, &call, &h);
        if (r < 0)
                return r;
        r = loop_run_forever(runner->loop);
        /* If the run failed before main's turn, main must never run later. */
        loop_handle_cancel(h);
        loop_handle_unref(h);
        if (r < 0)
                return r;
        return call.result;
}

LOOP_EXPORT int loop_runner_run_until_complete(loop_runner_t *runner, loop_future_t *future) {
        return_if_fail(runner && future, -EINVAL);
        if (loop__running_loop)
                return -EBUSY;

        int r = lazy_init(runner);
        if (r < 0)
                return r;
        /* The future must be one of this runner's loop (loop_create_future
         * on the loop from loop_runner_get_loop); else -EXDEV. */
        return loop_run_until_complete(runner->loop, future);
}

LOOP_EXPORT int loop_runner_close(loop_runner_t *runner) {
        return_if_fail(runner, -EINVAL);

        if (runner->closed)
                return 0;
        if (runner->loop) {
                int r = loop_is_running(runner->loop);
                if (r > 0)
                        return -EBUSY;
                /* Put back what was current before us, unless someone has
                 * since installed another loop. */
                loop_t *current = NULL;
                if (loop_thread_get_loop(&current) == 0 && current == runner->loop)
                        loop_thread_set_loop(runner->previous);
                loop_unref(current);
                /* asyncio.Runner.close: let queued executor work finish
                 * (loop_close alone would drop what has not started). */
                (void) loop_shutdown_default_executor(runner->loop);
                loop_close(runner->loop);
                runner->loop = loop_unref(runner->loop);
                runner->previous = loop_unref(runner->previous);
        }
        runner->closed = true;
        return 0;
}

LOOP_EXPORT int loop_run(loop_factory_t factory, void *factory_userdata, loop_callback_t main, void *userdata) {
        loop_runner_t *runner;
        int r;

        return_if_fail(main, -EINVAL);
        /* asyncio.run() refuses to start inside a running loop. */
        if (loop__running_loop)
                return -EBUSY;
        r = loop_runner_new(factory, factory_userdata, &runner);
        if (r < 0)
                return r;
        r = loop_runner_run(runner, main, userdata);
        loop_runner_close(runner);
        loop_runner_unref(runner);
        return r;
}
