/* SPDX-License-Identifier: MIT */
/*
 * Futures (asyncio.Future) and run_until_complete.
 *
 * A future belongs to one loop and is used from that loop's thread. Done
 * callbacks are scheduled with call_soon when the future completes, in the
 * order they were added, as asyncio does; a callback added to a future that
 * is already done is scheduled at once.
 */
#include <stdlib.h>

#include "internal.h"

enum { PENDING, FINISHED, FAILED, CANCELLED };

struct done_callback {
        loop_future_callback_t cb;
        void *userdata;
};

struct loop_future {
        unsigned n_ref;
        uint8_t state;
        loop_t *loop;           /* a reference: the future keeps its loop alive */
        void *result;
        void (*destroy)(void *result);
        int error;
        struct done_callback *callbacks;
        size_t n_callbacks, cap_callbacks;
        /* Called synchronously by cancel, so an operation can unregister
         * before anything else happens (see loop__future_on_cancel). */
        void (*on_cancel)(loop_future_t *future, void *data);
        void *on_cancel_data;
};

LOOP_EXPORT int loop_create_future(loop_t *loop, loop_future_t **ret) {
        int r = loop__usable(loop);

        if (r < 0)
                return r;
        return_if_fail(ret, -EINVAL);
        loop_future_t *f = calloc(1, sizeof(*f));
        if (!f)
                return -ENOMEM;
        f->n_ref = 1;
        f->loop = loop_ref(loop);
        *ret = f;
        return 0;
}

LOOP_EXPORT loop_future_t *loop_future_ref(loop_future_t *f) {
        if (f)
                f->n_ref++;
        return f;
}

LOOP_EXPORT loop_future_t *loop_future_unref(loop_future_t *f) {
        if (!f || --f->n_ref > 0)
                return NULL;
        if (f->state == FINISHED && f->destroy)
                f->destroy(f->result);
        free(f->callbacks);
        loop_unref(f->loop);
        free(f);
        return NULL;
}

LOOP_EXPORT loop_t *loop_future_get_loop(const loop_future_t *f) {
        return f ? f->loop : NULL;
}

void loop__future_on_cancel(loop_future_t *f, void (*fn)(loop_future_t *f, void *data), void *data) {
        f->on_cancel = fn;
        f->on_cancel_data = data;
}

struct scheduled_callback {
        loop_future_t *future;
        struct done_callback cb;
};

static int run_done_callback(loop_t *loop, void *userdata) {
        struct scheduled_callback *sc = userdata;
        int r = sc->cb.cb(sc->future, sc->cb.userdata);

        loop_future_unref(sc->future);
        free(sc);
        return r;       /* a negative value reaches the exception handler */
}

/* The loop closed before the callback's turn: let go of the future. */
static void discard_done_callback(void *userdata) {
        struct scheduled_callback *sc = userdata;

        loop_future_unref(sc->future);
        free(sc);
}

static int schedule_callback(loop_future_t *f, const struct done_callback *cb) {
        /* A closed loop runs nothing more: the callback is dropped, as
         * close drops everything already queued. */
        if (f->loop->closed)
                return 0;
        struct scheduled_callback *sc = malloc(sizeof(*sc));

        if (!sc)
                return -ENOMEM;
        *sc = (struct scheduled_callback) { .future = loop_future_ref(f), .cb = *cb };
        int r = loop__call_soon_discard(f->loop, run_done_callback, sc, discard_done_callback);
        if (r < 0)
                discard_done_callback(sc);
        return r;
}

/* asyncio's __schedule_callbacks: every callback once, in order, then forgotten. */
static void complete(loop_future_t *f, uint8_t state) {
        f->state = state;
        f->on_cancel = NULL;
        for (size_t i = 0; i < f->n_callbacks; i++) {
                int r = schedule_callback(f, &f->callbacks[i]);
                if (r < 0)
                        loop__report(f->loop, "Cannot schedule a done callback", r, NULL, -1);
        }
        free(f->callbacks);
        f->callbacks = NULL;
        f->n_callbacks = f->cap_callbacks = 0;
}

static int check_settable(const loop_future_t *f) {
        if (!f)
                return -EINVAL;
        if (loop__inherited(f->loop))
                return -ECHILD;
        /* asyncio's InvalidStateError: a result can be set once. */
        if (f->state != PENDING)
                return -EALREADY;
        return 0;
}

LOOP_EXPORT int loop_future_set_result(loop_future_t *f, void *result, void (*destroy)(void *result)) {
        int r = check_settable(f);

        if (r < 0)
                return r;
        f->result = result;
        f->destroy = destroy;
        complete(f, FINISHED);
        return 0;
}

LOOP_EXPORT int loop_future_set_error(loop_future_t *f, int error) {
        int r = check_settable(f);

        if (r < 0)
                return r;
        /* An error is a negative errno; cancellation goes through cancel. */
        return_if_fail(error < 0 && error != -ECANCELED, -EINVAL);
        f->error = error;
        complete(f, FAILED);
        return 0;
}

LOOP_EXPORT int loop_future_cancel(loop_future_t *f) {
        return_if_fail(f, -EINVAL);
        if (loop__inherited(f->loop))
                return -ECHILD;
        if (f->state != PENDING)
                return 0;       /* asyncio: cancel() returns False when done */
        if (f->on_cancel) {
                void (*fn)(loop_future_t *, void *) = f->on_cancel;
                f->on_cancel = NULL;
                fn(f, f->on_cancel_data);
        }
        f->error = -ECANCELED;
        complete(f, CANCELLED);
        return 1;
}

LOOP_EXPORT int loop_future_done(const loop_future_t *f) {
        return_if_fail(f, -EINVAL);
        return f->state != PENDING;
}

LOOP_EXPORT int loop_future_cancelled(const loop_future_t *f) {
        return_if_fail(f, -EINVAL);
        return f->state == CANCELLED;
}

LOOP_EXPORT int loop_future_error(const loop_future_t *f) {
        return_if_fail(f, -EINVAL);
        switch (f->state) {
        case PENDING:
                return -EAGAIN;         /* asyncio: "Result is not set." */
        case FINISHED:
                return 0;
        default:
                return f->error;        /* the error, or -ECANCELED */
        }
}

LOOP_EXPORT int loop_future_result(const loop_future_t *f, void **ret) {
        return_if_fail(f && ret, -EINVAL);
        int r = loop_future_error(f);
        if (r < 0)
                return r;
        *ret = f->result;
        return 0;
}

LOOP_EXPORT int loop_future_add_done_callback(loop_future_t *f, loop_future_callback_t cb, void *userdata) {
        return_if_fail(f && cb, -EINVAL);
        int r = loop__usable(f->loop);
        if (r < 0)
                return r;

        struct done_callback dc = { .cb = cb, .userdata = userdata };
        if (f->state != PENDING)
                return schedule_callback(f, &dc);
        if (f->n_callbacks == f->cap_callbacks) {
                size_t cap = f->cap_callbacks ? f->cap_callbacks * 2 : 4;
                struct done_callback *cbs = realloc(f->callbacks, cap * sizeof(*cbs));
                if (!cbs)
                        return -ENOMEM;
                f->callbacks = cbs;
                f->cap_callbacks = cap;
        }
        f->callbacks[f->n_callbacks++] = dc;
        return 0;
}

LOOP_EXPORT int loop_future_remove_done_callback(loop_future_t *f, loop_future_callback_t cb, void *userdata) {
        return_if_fail(f && cb, -EINVAL);

        /* asyncio removes every matching entry and returns how many. */
        size_t kept = 0, removed = 0;
        for (size_t i = 0; i < f->n_callbacks; i++) {
                if (f->callbacks[i].cb == cb && f->callbacks[i].userdata == userdata)
                        removed++;
                else
                        f->callbacks[kept++] = f->callbacks[i];
        }
        f->n_callbacks = kept;
        return removed > INT32_MAX ? INT32_MAX : (int) removed;
}

/* userdata is the number of the run it belongs to: if the future completed
 * in the same iteration as some other loop_stop(), this callback is still
 * queued when run_until_complete returns, and must not stop a later run
 * (asyncio has that stale stop; we do not). */
static int stop_when_done(loop_future_t *f, void *userdata) {
        if (f->loop->n_runs == (uint64_t) (uintptr_t) userdata)
                loop_stop(f->loop);
        return 0;
}

LOOP_EXPORT int loop_run_until_complete(loop_t *loop, loop_future_t *f) {
        int r = loop__usable(loop);

        if (r < 0)
                return r;
        return_if_fail(f, -EINVAL);
        /* asyncio: "The future belongs to a different loop". */
        if (f->loop != loop)
                return -EXDEV;
        /* asyncio checks "already running" first (_check_running), so a
         * nested call fails even for a future that is done: the caller's
         * mistake shows at once, not only when the future is pending. */
        if (loop__running_loop || __atomic_load_n(&loop->running, __ATOMIC_ACQUIRE))
                return -EBUSY;
        if (f->state == PENDING) {
                void *run = (void *) (uintptr_t) (loop->n_runs + 1);
                r = loop_future_add_done_callback(f, stop_when_done, run);
                if (r < 0)
                        return r;
                r = loop_run_forever(loop);
                loop_future_remove_done_callback(f, stop_when_done, run);
                if (r < 0)
                        return r;
                /* Stopped by someone else first: asyncio raises RuntimeError. */
                if (f->state == PENDING)
                        return -EINTR;
        }
        return loop_future_error(f);
}
