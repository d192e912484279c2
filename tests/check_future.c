/* SPDX-License-Identifier: MIT */
/*
 * Futures (asyncio.Future) and loop_run_until_complete: the three ways to
 * complete a future and what each leaves behind, the once-only rule
 * (-EALREADY), ownership of the result (destroy runs once, when the future
 * is freed), done callbacks (scheduled with call_soon, never run inside
 * set_result, in the order added, each once; removal; errors reaching the
 * exception handler), run_until_complete's return values, the reference a
 * future holds on its loop, closing a loop with callbacks still queued, and
 * the usual errors (NULL, closed loop, fork child).
 */
#include <pthread.h>
#ifndef _WIN32
#include <sys/wait.h>
#endif

#include "testutil.h"

/* ---- helpers ----------------------------------------------------------- */

/* A result whose destroy function counts its calls. */
struct owned {
        int destroyed;
};

static void destroy_owned(void *result) {
        ((struct owned *) result)->destroyed++;
}

/* Done callbacks append (id, future) to a log, so order and arguments can be checked. */
#define LOG_MAX 16

struct cb_log {
        int n;
        int ids[LOG_MAX];
        loop_future_t *futures[LOG_MAX];
        int results[LOG_MAX];           /* loop_future_error() as seen by the callback */
};

struct cb_entry {
        struct cb_log *log;
        int id;
        int ret;                        /* what the callback returns */
};

static int log_cb(loop_future_t *f, void *userdata) {
        struct cb_entry *e = userdata;
        struct cb_log *log = e->log;

        if (log->n < LOG_MAX) {
                log->ids[log->n] = e->id;
                log->futures[log->n] = f;
                log->results[log->n] = loop_future_error(f);
        }
        log->n++;
        return e->ret;
}

/* A second function with the same signature, for remove_done_callback. */
static int other_log_cb(loop_future_t *f, void *userdata) {
        return log_cb(f, userdata);
}

/* Records what the exception handler saw. */
struct seen_exception {
        int calls;
        int error;
        int fd;
        int had_handle;
        char message[64];
};

static void record_exception(loop_t *loop, const struct loop_exception_context *ctx, void *userdata) {
        struct seen_exception *s = userdata;

        (void) loop;
        s->calls++;
        s->error = ctx->error;
        s->fd = ctx->fd;
        s->had_handle = ctx->handle != NULL;
        snprintf(s->message, sizeof(s->message), "%s", ctx->message);
}

static loop_future_t *new_future(loop_t *loop) {
        loop_future_t *f = NULL;

        ck_assert_int_eq(loop_create_future(loop, &f), 0);
        ck_assert_ptr_ne(f, NULL);
        return f;
}

static void assert_pending(loop_future_t *f) {
        void *p = &p;

        ck_assert_int_eq(loop_future_done(f), 0);
        ck_assert_int_eq(loop_future_cancelled(f), 0);
        ck_assert_int_eq(loop_future_error(f), -EAGAIN);
        ck_assert_int_eq(loop_future_result(f, &p), -EAGAIN);
        ck_assert_ptr_eq(p, &p);        /* untouched */
}

enum completion { BY_RESULT, BY_ERROR, BY_CANCEL };

static int complete_future(loop_future_t *f, enum completion how, void *result) {
        switch (how) {
        case BY_RESULT:
                return loop_future_set_result(f, result, NULL);
        case BY_ERROR:
                return loop_future_set_error(f, -EPIPE);
        default:
                return loop_future_cancel(f) == 1 ? 0 : -1;
        }
}

static int expected_error(enum completion how) {
        return how == BY_RESULT ? 0 : how == BY_ERROR ? -EPIPE : -ECANCELED;
}

/* ---- completing a future --------------------------------------------------- */

START_TEST(test_set_result) {
        loop_t *loop = tu_loop_new();
        loop_future_t *f = new_future(loop);
        int value = 42;
        void *p = NULL;

        ck_assert_ptr_eq(loop_future_get_loop(f), loop);
        assert_pending(f);

        ck_assert_int_eq(loop_future_set_result(f, &value, NULL), 0);
        ck_assert_int_eq(loop_future_done(f), 1);
        ck_assert_int_eq(loop_future_cancelled(f), 0);
        ck_assert_int_eq(loop_future_error(f), 0);
        ck_assert_int_eq(loop_future_result(f, &p), 0);
        ck_assert_ptr_eq(p, &value);

        /* A NULL result is a result like any other. */
        loop_future_t *g = new_future(loop);
        p = &p;
        ck_assert_int_eq(loop_future_set_result(g, NULL, NULL), 0);
        ck_assert_int_eq(loop_future_result(g, &p), 0);
        ck_assert_ptr_eq(p, NULL);

        ck_assert_ptr_eq(loop_future_unref(g), NULL);
        ck_assert_ptr_eq(loop_future_unref(f), NULL);
        loop_unref(loop);
}
END_TEST

START_TEST(test_set_error) {
        loop_t *loop = tu_loop_new();
        loop_future_t *f = new_future(loop);
        void *p = &p;

        ck_assert_int_eq(loop_future_set_error(f, -EIO), 0);
        ck_assert_int_eq(loop_future_done(f), 1);
        ck_assert_int_eq(loop_future_cancelled(f), 0);
        ck_assert_int_eq(loop_future_error(f), -EIO);
        ck_assert_int_eq(loop_future_result(f, &p), -EIO);
        ck_assert_ptr_eq(p, &p);
        loop_future_unref(f);
        loop_unref(loop);
}
END_TEST

START_TEST(test_set_error_invalid) {
        static const int bad[] = {0, 1, EIO, ECANCELED, -ECANCELED};
        loop_t *loop = tu_loop_new();
        loop_future_t *f = new_future(loop);

        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
                ck_assert_msg(loop_future_set_error(f, bad[i]) == -EINVAL, "set_error(%d)", bad[i]);
                assert_pending(f);
        }
        /* Still settable afterwards. */
        ck_assert_int_eq(loop_future_set_error(f, -ETIMEDOUT), 0);
        ck_assert_int_eq(loop_future_error(f), -ETIMEDOUT);
        loop_future_unref(f);
        loop_unref(loop);
}
END_TEST

START_TEST(test_cancel) {
        loop_t *loop = tu_loop_new();
        loop_future_t *f = new_future(loop);
        void *p = &p;

        ck_assert_int_eq(loop_future_cancel(f), 1);
        ck_assert_int_eq(loop_future_cancel(f), 0);
        ck_assert_int_eq(loop_future_done(f), 1);
        ck_assert_int_eq(loop_future_cancelled(f), 1);
        ck_assert_int_eq(loop_future_error(f), -ECANCELED);
        ck_assert_int_eq(loop_future_result(f, &p), -ECANCELED);
        ck_assert_ptr_eq(p, &p);
        loop_future_unref(f);
        loop_unref(loop);
}
END_TEST

/* Cancelling a future that is already done changes nothing. */
START_TEST(test_cancel_done) {
        loop_t *loop = tu_loop_new();
        loop_future_t *f = new_future(loop), *g = new_future(loop);
        int value;
        void *p = NULL;

        ck_assert_int_eq(loop_future_set_result(f, &value, NULL), 0);
        ck_assert_int_eq(loop_future_cancel(f), 0);
        ck_assert_int_eq(loop_future_cancelled(f), 0);
        ck_assert_int_eq(loop_future_result(f, &p), 0);
        ck_assert_ptr_eq(p, &value);

        ck_assert_int_eq(loop_future_set_error(g, -EIO), 0);
        ck_assert_int_eq(loop_future_cancel(g), 0);
        ck_assert_int_eq(loop_future_cancelled(g), 0);
        ck_assert_int_eq(loop_future_error(g), -EIO);
        loop_future_unref(g);
        loop_future_unref(f);
        loop_unref(loop);
}
END_TEST

/* asyncio's InvalidStateError: a future completes once. */
START_TEST(test_set_twice) {
        loop_t *loop = tu_loop_new();
        struct owned rejected = {0};
        int a, b;
        void *p = NULL;

        /* result, then result or error */
        loop_future_t *f = new_future(loop);
        ck_assert_int_eq(loop_future_set_result(f, &a, NULL), 0);
        ck_assert_int_eq(loop_future_set_result(f, &b, NULL), -EALREADY);
        ck_assert_int_eq(loop_future_set_result(f, &rejected, destroy_owned), -EALREADY);
        ck_assert_int_eq(loop_future_set_error(f, -EIO), -EALREADY);
        ck_assert_int_eq(loop_future_result(f, &p), 0);
        ck_assert_ptr_eq(p, &a);
        loop_future_unref(f);

        /* error, then result or error */
        f = new_future(loop);
        ck_assert_int_eq(loop_future_set_error(f, -EIO), 0);
        ck_assert_int_eq(loop_future_set_result(f, &rejected, destroy_owned), -EALREADY);
        ck_assert_int_eq(loop_future_set_error(f, -EPIPE), -EALREADY);
        ck_assert_int_eq(loop_future_error(f), -EIO);
        loop_future_unref(f);

        /* cancel, then result or error */
        f = new_future(loop);
        ck_assert_int_eq(loop_future_cancel(f), 1);
        ck_assert_int_eq(loop_future_set_result(f, &rejected, destroy_owned), -EALREADY);
        ck_assert_int_eq(loop_future_set_error(f, -EPIPE), -EALREADY);
        ck_assert_int_eq(loop_future_error(f), -ECANCELED);
        ck_assert_int_eq(loop_future_cancelled(f), 1);
        loop_future_unref(f);

        /* A rejected result stays the caller's: its destroy never runs. */
        ck_assert_int_eq(rejected.destroyed, 0);
        loop_unref(loop);
}
END_TEST

/* destroy(result) runs once, when the last reference goes, not before. */
START_TEST(test_destroy_once) {
        loop_t *loop = tu_loop_new();
        loop_future_t *f = new_future(loop);
        struct owned o = {0};
        struct cb_log log = {0};
        struct cb_entry e = {.log = &log, .id = 1};

        ck_assert_int_eq(loop_future_add_done_callback(f, log_cb, &e), 0);
        ck_assert_int_eq(loop_future_set_result(f, &o, destroy_owned), 0);
        ck_assert_int_eq(o.destroyed, 0);

        /* Extra references: the future lives until the last one goes. */
        ck_assert_ptr_eq(loop_future_ref(f), f);
        ck_assert_ptr_eq(loop_future_unref(f), NULL);
        ck_assert_int_eq(o.destroyed, 0);

        /* The queued done callback holds a reference of its own. */
        ck_assert_ptr_eq(loop_future_unref(f), NULL);
        ck_assert_int_eq(o.destroyed, 0);
        ck_assert_int_eq(loop_run_once(loop, 0), 1);
        ck_assert_int_eq(log.n, 1);
        ck_assert_int_eq(log.results[0], 0);
        ck_assert_int_eq(o.destroyed, 1);

        tu_assert_usable(loop);
        ck_assert_int_eq(o.destroyed, 1);
        loop_unref(loop);
}
END_TEST

/* No destroy without a result: error, cancel and never-set futures free nothing of the caller's. */
START_TEST(test_destroy_not_called_without_result) {
        loop_t *loop = tu_loop_new();
        struct owned o = {0};

        for (int how = 0; how < 3; how++) {
                loop_future_t *f = new_future(loop);
                if (how == 1)
                        ck_assert_int_eq(loop_future_set_error(f, -EIO), 0);
                else if (how == 2)
                        ck_assert_int_eq(loop_future_cancel(f), 1);
                ck_assert_int_eq(loop_future_set_result(f, &o, destroy_owned), how == 0 ? 0 : -EALREADY);
                loop_future_unref(f);
                ck_assert_int_eq(o.destroyed, how == 0 ? 1 : 0);
                o.destroyed = 0;
        }
        /* Never completed at all. */
        loop_future_t *f = new_future(loop);
        ck_assert_ptr_eq(loop_future_unref(f), NULL);
        loop_unref(loop);
}
END_TEST

START_TEST(test_ref_unref_null) {
        ck_assert_ptr_eq(loop_future_ref(NULL), NULL);
        ck_assert_ptr_eq(loop_future_unref(NULL), NULL);
        ck_assert_ptr_eq(loop_future_get_loop(NULL), NULL);
}
END_TEST

/* ---- done callbacks ------------------------------------------------------- */

/* Scheduled with call_soon on completion: never inside set_result, in order, once each. */
START_TEST(test_done_callbacks_order) {
        enum completion how = (enum completion) _i;
        loop_t *loop = tu_loop_new();
        loop_future_t *f = new_future(loop);
        struct cb_log log = {0};
        struct cb_entry e[4] = {
                {.log = &log, .id = 1}, {.log = &log, .id = 2}, {.log = &log, .id = 3}, {.log = &log, .id = 4}};
        int value;

        ck_assert_int_eq(loop_future_add_done_callback(f, log_cb, &e[0]), 0);
        ck_assert_int_eq(loop_future_add_done_callback(f, other_log_cb, &e[1]), 0);
        ck_assert_int_eq(loop_future_add_done_callback(f, log_cb, &e[2]), 0);
        /* The same pair twice runs twice. */
        ck_assert_int_eq(loop_future_add_done_callback(f, log_cb, &e[0]), 0);
        /* Nothing runs while the future is pending. */
        ck_assert_int_eq(loop_run_once(loop, 0), 0);
        ck_assert_int_eq(log.n, 0);

        ck_assert_int_eq(complete_future(f, how, &value), 0);
        ck_assert_int_eq(log.n, 0);     /* not synchronously */

        ck_assert_int_eq(loop_run_once(loop, 0), 4);
        ck_assert_int_eq(log.n, 4);
        ck_assert_int_eq(log.ids[0], 1);
        ck_assert_int_eq(log.ids[1], 2);
        ck_assert_int_eq(log.ids[2], 3);
        ck_assert_int_eq(log.ids[3], 1);
        for (int i = 0; i < 4; i++) {
                ck_assert_ptr_eq(log.futures[i], f);
                ck_assert_int_eq(log.results[i], expected_error(how));
        }

        /* Each once: nothing is left. */
        ck_assert_int_eq(loop_run_once(loop, 0), 0);
        ck_assert_int_eq(log.n, 4);
        loop_future_unref(f);
        loop_unref(loop);
}
END_TEST

/* Done callbacks queue behind what was already scheduled (call_soon's FIFO). */
START_TEST(test_done_callbacks_fifo_with_call_soon) {
        loop_t *loop = tu_loop_new();
        loop_future_t *f = new_future(loop);
        struct cb_log log = {0};
        struct cb_entry e = {.log = &log, .id = 7};
        int before = 0;

        ck_assert_int_eq(loop_future_add_done_callback(f, log_cb, &e), 0);
        ck_assert_int_eq(loop_call_soon(loop, tu_count_cb, &before, NULL), 0);
        ck_assert_int_eq(loop_future_set_result(f, NULL, NULL), 0);
        ck_assert_int_eq(loop_run_once(loop, 0), 2);
        ck_assert_int_eq(before, 1);
        ck_assert_int_eq(log.n, 1);
        loop_future_unref(f);
        loop_unref(loop);
}
END_TEST

/* Added after completion: scheduled at once (but still run by the loop). */
START_TEST(test_done_callback_after_completion) {
        enum completion how = (enum completion) _i;
        loop_t *loop = tu_loop_new();
        loop_future_t *f = new_future(loop);
        struct cb_log log = {0};
        struct cb_entry e1 = {.log = &log, .id = 1}, e2 = {.log = &log, .id = 2};
        int value;

        ck_assert_int_eq(complete_future(f, how, &value), 0);
        ck_assert_int_eq(loop_future_add_done_callback(f, log_cb, &e1), 0);
        ck_assert_int_eq(loop_future_add_done_callback(f, log_cb, &e2), 0);
        ck_assert_int_eq(log.n, 0);
        ck_assert_int_eq(loop_run_once(loop, 0), 2);
        ck_assert_int_eq(log.n, 2);
        ck_assert_int_eq(log.ids[0], 1);
        ck_assert_int_eq(log.ids[1], 2);
        ck_assert_ptr_eq(log.futures[0], f);
        ck_assert_int_eq(log.results[0], expected_error(how));
        ck_assert_int_eq(loop_run_once(loop, 0), 0);
        loop_future_unref(f);
        loop_unref(loop);
}
END_TEST

START_TEST(test_remove_done_callback) {
        loop_t *loop = tu_loop_new();
        loop_future_t *f = new_future(loop);
        struct cb_log log = {0};
        struct cb_entry a1 = {.log = &log, .id = 1}, a2 = {.log = &log, .id = 2}, b1 = {.log = &log, .id = 3};

        ck_assert_int_eq(loop_future_add_done_callback(f, log_cb, &a1), 0);
        ck_assert_int_eq(loop_future_add_done_callback(f, other_log_cb, &a1), 0);
        ck_assert_int_eq(loop_future_add_done_callback(f, log_cb, &a1), 0);
        ck_assert_int_eq(loop_future_add_done_callback(f, log_cb, &a2), 0);
        ck_assert_int_eq(loop_future_add_done_callback(f, other_log_cb, &b1), 0);
        ck_assert_int_eq(loop_future_add_done_callback(f, log_cb, &a1), 0);

        /* Every matching (cb, userdata) pair goes, and only those. */
        ck_assert_int_eq(loop_future_remove_done_callback(f, log_cb, &a1), 3);
        ck_assert_int_eq(loop_future_remove_done_callback(f, log_cb, &a1), 0);
        ck_assert_int_eq(loop_future_remove_done_callback(f, log_cb, &b1), 0);
        ck_assert_int_eq(loop_future_remove_done_callback(f, log_cb, NULL), 0);

        ck_assert_int_eq(loop_future_set_result(f, NULL, NULL), 0);
        /* Once done the list is empty: the callbacks are already scheduled. */
        ck_assert_int_eq(loop_future_remove_done_callback(f, log_cb, &a2), 0);
        ck_assert_int_eq(loop_run_once(loop, 0), 3);
        ck_assert_int_eq(log.n, 3);
        /* The survivors, in the order they were added. */
        ck_assert_int_eq(log.ids[0], 1);        /* other_log_cb, &a1 */
        ck_assert_int_eq(log.ids[1], 2);        /* log_cb, &a2 */
        ck_assert_int_eq(log.ids[2], 3);        /* other_log_cb, &b1 */
        ck_assert_int_eq(loop_run_once(loop, 0), 0);
        loop_future_unref(f);
        loop_unref(loop);
}
END_TEST

/* A done callback that returns a negative errno reaches the exception handler; the others still run. */
START_TEST(test_done_callback_error) {
        loop_t *loop = tu_loop_new();
        loop_future_t *f = new_future(loop);
        struct cb_log log = {0};
        struct cb_entry bad = {.log = &log, .id = 1, .ret = -EIO}, good = {.log = &log, .id = 2};
        struct seen_exception seen = {0};

        ck_assert_int_eq(loop_set_exception_handler(loop, record_exception, &seen), 0);
        ck_assert_int_eq(loop_future_add_done_callback(f, log_cb, &bad), 0);
        ck_assert_int_eq(loop_future_add_done_callback(f, log_cb, &good), 0);
        ck_assert_int_eq(loop_future_set_result(f, NULL, NULL), 0);
        ck_assert_int_eq(loop_run_once(loop, 0), 2);
        ck_assert_int_eq(log.n, 2);
        ck_assert_int_eq(seen.calls, 1);
        ck_assert_int_eq(seen.error, -EIO);
        ck_assert_int_eq(seen.fd, -1);
        ck_assert_int_eq(seen.had_handle, 0);
        ck_assert_str_eq(seen.message, "Exception in callback");
        loop_future_unref(f);
        loop_unref(loop);
}
END_TEST

/* A done callback may drop the last reference and complete other futures. */
struct chain {
        loop_future_t *next;
        int ran;
};

static int chain_cb(loop_future_t *f, void *userdata) {
        struct chain *c = userdata;
        void *p = NULL;
        int r = loop_future_result(f, &p);

        c->ran++;
        if (r < 0)
                return r;
        /* f is valid here even though the test has dropped its reference. */
        return loop_future_set_result(c->next, p, NULL);
}

START_TEST(test_done_callback_chain) {
        loop_t *loop = tu_loop_new();
        loop_future_t *f = new_future(loop), *g = new_future(loop);
        struct chain c = {.next = g};
        int value;
        void *p = NULL;

        ck_assert_int_eq(loop_future_add_done_callback(f, chain_cb, &c), 0);
        ck_assert_int_eq(loop_future_set_result(f, &value, NULL), 0);
        f = loop_future_unref(f);
        ck_assert_int_eq(loop_run_until_complete(loop, g), 0);
        ck_assert_int_eq(c.ran, 1);
        ck_assert_int_eq(loop_future_result(g, &p), 0);
        ck_assert_ptr_eq(p, &value);
        loop_future_unref(g);
        loop_unref(loop);
}
END_TEST

/* ---- run_until_complete --------------------------------------------------- */

struct completer {
        loop_future_t *future;
        enum completion how;
        void *result;
        int ran;
};

static int complete_cb(loop_t *loop, void *userdata) {
        struct completer *c = userdata;

        (void) loop;
        c->ran++;
        return complete_future(c->future, c->how, c->result);
}

START_TEST(test_run_until_complete_timer) {
        enum completion how = (enum completion) _i;
        loop_t *loop = tu_loop_new();
        loop_future_t *f = new_future(loop);
        int value, other = 0;
        struct completer c = {.future = f, .how = how, .result = &value};
        void *p = NULL;

        /* Unrelated work keeps running while we wait. */
        ck_assert_int_eq(loop_call_soon(loop, tu_count_cb, &other, NULL), 0);
        ck_assert_int_eq(loop_call_later_ns(loop, 20 * TU_MSEC, complete_cb, &c, NULL), 0);
        ck_assert_int_eq(loop_run_until_complete(loop, f), expected_error(how));
        ck_assert_int_eq(c.ran, 1);
        ck_assert_int_eq(other, 1);
        ck_assert_int_eq(loop_future_done(f), 1);
        ck_assert_int_eq(loop_is_running(loop), 0);
        if (how == BY_RESULT) {
                ck_assert_int_eq(loop_future_result(f, &p), 0);
                ck_assert_ptr_eq(p, &value);
        }
        /* Nothing of run_until_complete is left behind. */
        ck_assert_int_eq(loop_run_once(loop, 0), 0);
        tu_assert_usable(loop);
        loop_future_unref(f);
        loop_unref(loop);
}
END_TEST

/* Already done: the answer at once, without running the loop. */
START_TEST(test_run_until_complete_already_done) {
        enum completion how = (enum completion) _i;
        loop_t *loop = tu_loop_new();
        loop_future_t *f = new_future(loop);
        int value, count = 0;

        ck_assert_int_eq(complete_future(f, how, &value), 0);
        ck_assert_int_eq(loop_call_soon(loop, tu_count_cb, &count, NULL), 0);
        ck_assert_int_eq(loop_run_until_complete(loop, f), expected_error(how));
        ck_assert_int_eq(count, 0);
        ck_assert_int_eq(loop_run_once(loop, 0), 1);
        ck_assert_int_eq(count, 1);
        loop_future_unref(f);
        loop_unref(loop);
}
END_TEST

START_TEST(test_run_until_complete_other_loop) {
        loop_t *loop = tu_loop_new(), *other = tu_loop_new();
        loop_future_t *f = new_future(other);

        ck_assert_int_eq(loop_run_until_complete(loop, f), -EXDEV);
        ck_assert_int_eq(loop_future_set_result(f, NULL, NULL), 0);
        ck_assert_int_eq(loop_run_until_complete(loop, f), -EXDEV);
        ck_assert_int_eq(loop_run_until_complete(other, f), 0);
        loop_future_unref(f);
        loop_unref(other);
        loop_unref(loop);
}
END_TEST

/* Stopped before the future completes: -EINTR, and nothing stale is left. */
START_TEST(test_run_until_complete_stopped) {
        loop_t *loop = tu_loop_new();
        loop_future_t *f = new_future(loop);
        int stops = 0, count = 0;
        struct completer c = {.future = f, .how = BY_RESULT};

        ck_assert_int_eq(loop_call_later_ns(loop, 10 * TU_MSEC, tu_stop_cb, &stops, NULL), 0);
        ck_assert_int_eq(loop_run_until_complete(loop, f), -EINTR);
        ck_assert_int_eq(stops, 1);
        assert_pending(f);
        ck_assert_int_eq(loop_is_running(loop), 0);

        /* Completing it now schedules nothing: run_until_complete took its callback back. */
        ck_assert_int_eq(loop_future_set_result(f, NULL, NULL), 0);
        ck_assert_int_eq(loop_run_once(loop, 0), 0);

        /* The loop is usable and can run forever again. */
        tu_assert_usable(loop);
        ck_assert_int_eq(loop_call_soon(loop, tu_count_cb, &count, NULL), 0);
        ck_assert_int_eq(loop_call_later_ns(loop, 10 * TU_MSEC, tu_stop_cb, &stops, NULL), 0);
        ck_assert_int_eq(loop_run_forever(loop), 0);
        ck_assert_int_eq(count, 1);
        ck_assert_int_eq(stops, 2);
        loop_future_unref(f);

        /* A loop_stop() pending before the call also interrupts it (one iteration, asyncio). */
        f = new_future(loop);
        c.future = f;
        ck_assert_int_eq(loop_stop(loop), 0);
        ck_assert_int_eq(loop_call_later_ns(loop, 10 * TU_MSEC, complete_cb, &c, NULL), 0);
        ck_assert_int_eq(loop_run_until_complete(loop, f), -EINTR);
        ck_assert_int_eq(loop_run_until_complete(loop, f), 0);
        ck_assert_int_eq(c.ran, 1);
        loop_future_unref(f);
        loop_unref(loop);
}
END_TEST

/* Called from a callback of the running loop: -EBUSY, and no callback is left on the future. */
struct nested {
        loop_future_t *future;
        int result;
};

static int nested_cb(loop_t *loop, void *userdata) {
        struct nested *n = userdata;

        n->result = loop_run_until_complete(loop, n->future);
        return 0;
}

/* The future completes in the same iteration as someone else's loop_stop():
 * run_until_complete's own stop callback is then still queued when it
 * returns, and must not stop the next run after one iteration (asyncio's
 * stale stop). */
static int set_and_stop_cb(loop_t *loop, void *userdata) {
        loop_future_set_result(userdata, NULL, NULL);
        loop_stop(loop);
        return 0;
}

static int count_until_stop_cb(loop_t *loop, void *userdata) {
        int *n = userdata;
        if (++*n == 5)
                loop_stop(loop);
        else
                loop_call_soon(loop, count_until_stop_cb, n, NULL);
        return 0;
}

START_TEST(test_run_until_complete_no_stale_stop) {
        loop_t *loop = tu_loop_new();
        loop_future_t *f;
        int n = 0;

        ck_assert_int_eq(loop_create_future(loop, &f), 0);
        ck_assert_int_eq(loop_call_soon(loop, set_and_stop_cb, f, NULL), 0);
        ck_assert_int_eq(loop_run_until_complete(loop, f), 0);
        /* A new run: five iterations of a self-rescheduling callback. */
        ck_assert_int_eq(loop_call_soon(loop, count_until_stop_cb, &n, NULL), 0);
        ck_assert_int_eq(loop_run_forever(loop), 0);
        ck_assert_int_eq(n, 5);
        loop_future_unref(f);
        loop_unref(loop);
}
END_TEST

START_TEST(test_run_until_complete_nested) {
        loop_t *loop = tu_loop_new();
        loop_future_t *f = new_future(loop);
        struct nested n = {.future = f, .result = 1};

        ck_assert_int_eq(loop_call_soon(loop, nested_cb, &n, NULL), 0);
        ck_assert_int_eq(loop_run_once(loop, 0), 1);
        ck_assert_int_eq(n.result, -EBUSY);
        ck_assert_int_eq(loop_future_set_result(f, NULL, NULL), 0);
        ck_assert_int_eq(loop_run_once(loop, 0), 0);
        loop_future_unref(f);
        loop_unref(loop);
}
END_TEST

/* asyncio checks "already running" before looking at the future
 * (test_run_until_complete_nesting): a done future gets -EBUSY too, from
 * its own running loop and from another loop's callback. */
struct nested_done {
        loop_t *other;
        loop_future_t *future, *other_future;
        int own, other_r;
};

static int nested_done_cb(loop_t *loop, void *userdata) {
        struct nested_done *n = userdata;

        n->own = loop_run_until_complete(loop, n->future);
        n->other_r = loop_run_until_complete(n->other, n->other_future);
        return 0;
}

START_TEST(test_run_until_complete_nested_done) {
        loop_t *loop = tu_loop_new(), *other = tu_loop_new();
        loop_future_t *f = new_future(loop), *g = new_future(other);
        struct nested_done n = {.other = other, .future = f, .other_future = g, .own = 1, .other_r = 1};

        ck_assert_int_eq(loop_future_set_result(f, NULL, NULL), 0);
        ck_assert_int_eq(loop_future_set_result(g, NULL, NULL), 0);
        ck_assert_int_eq(loop_call_soon(loop, nested_done_cb, &n, NULL), 0);
        ck_assert_int_ge(loop_run_once(loop, 0), 1);
        ck_assert_int_eq(n.own, -EBUSY);
        ck_assert_int_eq(n.other_r, -EBUSY);
        /* Not running: the done future's outcome at once. */
        ck_assert_int_eq(loop_run_until_complete(loop, f), 0);
        ck_assert_int_eq(loop_run_until_complete(other, g), 0);
        loop_future_unref(f);
        loop_future_unref(g);
        loop_unref(loop);
        loop_unref(other);
}
END_TEST

/* The documented way to complete a future from a worker thread: post back with call_soon_threadsafe. */
struct worker {
        loop_t *loop;
        struct completer c;
};

static void *worker_main(void *userdata) {
        struct worker *w = userdata;

        tu_sleep_ns(10 * TU_MSEC);
        if (loop_call_soon_threadsafe(w->loop, complete_cb, &w->c, NULL) < 0)
                abort();
        return NULL;
}

START_TEST(test_run_until_complete_from_thread) {
        loop_t *loop = tu_loop_new();
        loop_future_t *f = new_future(loop);
        int value;
        struct worker w = {.loop = loop, .c = {.future = f, .how = BY_RESULT, .result = &value}};
        pthread_t thread;
        void *p = NULL;

        ck_assert_int_eq(pthread_create(&thread, NULL, worker_main, &w), 0);
        ck_assert_int_eq(loop_run_until_complete(loop, f), 0);
        ck_assert_int_eq(pthread_join(thread, NULL), 0);
        ck_assert_int_eq(loop_future_result(f, &p), 0);
        ck_assert_ptr_eq(p, &value);
        loop_future_unref(f);
        loop_unref(loop);
}
END_TEST

/* ---- lifetime -------------------------------------------------------------- */

/* Closing drops the queued done callbacks unrun; the future and loop are freed by the last unrefs. */
START_TEST(test_close_with_scheduled_callbacks) {
        int future_first = _i;
        loop_t *loop = tu_loop_new();
        loop_future_t *f = new_future(loop);
        struct cb_log log = {0};
        struct cb_entry e1 = {.log = &log, .id = 1}, e2 = {.log = &log, .id = 2};
        struct owned o = {0};

        ck_assert_int_eq(loop_future_add_done_callback(f, log_cb, &e1), 0);
        ck_assert_int_eq(loop_future_add_done_callback(f, log_cb, &e2), 0);
        ck_assert_int_eq(loop_future_set_result(f, &o, destroy_owned), 0);
        ck_assert_int_eq(loop_close(loop), 0);
        ck_assert_int_eq(log.n, 0);
        ck_assert_int_eq(o.destroyed, 0);       /* we still hold the future */

        /* The future is still readable after its loop closed. */
        ck_assert_int_eq(loop_future_done(f), 1);
        ck_assert_int_eq(loop_future_error(f), 0);
        ck_assert_ptr_eq(loop_future_get_loop(f), loop);

        if (future_first) {
                loop_future_unref(f);
                ck_assert_int_eq(o.destroyed, 1);
                loop_unref(loop);
        } else {
                loop_unref(loop);
                ck_assert_int_eq(o.destroyed, 0);
                loop_future_unref(f);
                ck_assert_int_eq(o.destroyed, 1);
        }
        ck_assert_int_eq(log.n, 0);
}
END_TEST

/* Dropping the last loop reference with done callbacks queued: no cycle survives a close. */
START_TEST(test_unref_loop_with_scheduled_callbacks) {
        loop_t *loop = tu_loop_new();
        loop_future_t *f = new_future(loop);
        struct cb_log log = {0};
        struct cb_entry e = {.log = &log, .id = 1};
        struct owned o = {0};

        ck_assert_int_eq(loop_future_add_done_callback(f, log_cb, &e), 0);
        ck_assert_int_eq(loop_future_set_result(f, &o, destroy_owned), 0);
        f = loop_future_unref(f);
        ck_assert_int_eq(o.destroyed, 0);       /* the queued callback holds it */
        /* The queued callback keeps the future, the future keeps the loop:
         * an explicit close breaks the cycle (valgrind checks the rest). */
        ck_assert_int_eq(loop_close(loop), 0);
        ck_assert_int_eq(o.destroyed, 1);
        loop_unref(loop);
        ck_assert_int_eq(log.n, 0);
}
END_TEST

/* A future keeps its loop alive: drop the loop first, keep using it through the future. */
START_TEST(test_future_keeps_loop_alive) {
        loop_t *loop = tu_loop_new();
        loop_future_t *f = new_future(loop);
        struct completer c = {.future = f, .how = BY_ERROR};

        loop = loop_unref(loop);
        loop_t *l = loop_future_get_loop(f);
        ck_assert_ptr_ne(l, NULL);
        ck_assert_int_eq(loop_is_closed(l), 0);
        ck_assert_int_eq(loop_call_later_ns(l, TU_MSEC, complete_cb, &c, NULL), 0);
        ck_assert_int_eq(loop_run_until_complete(l, f), -EPIPE);
        tu_assert_usable(l);
        /* The last reference to the loop goes with the future. */
        loop_future_unref(f);
}
END_TEST

/* ---- errors -------------------------------------------------------------------- */

static int nop_future_cb(loop_future_t *f, void *userdata) {
        (void) f;
        (void) userdata;
        return 0;
}

START_TEST(test_null_arguments) {
        loop_t *loop = tu_loop_new();
        loop_future_t *f = NULL;
        void *p = NULL;

        ck_assert_int_eq(loop_create_future(NULL, &f), -EINVAL);
        ck_assert_ptr_eq(f, NULL);
        ck_assert_int_eq(loop_create_future(loop, NULL), -EINVAL);
        ck_assert_int_eq(loop_future_set_result(NULL, NULL, NULL), -EINVAL);
        ck_assert_int_eq(loop_future_set_error(NULL, -EIO), -EINVAL);
        ck_assert_int_eq(loop_future_cancel(NULL), -EINVAL);
        ck_assert_int_eq(loop_future_done(NULL), -EINVAL);
        ck_assert_int_eq(loop_future_cancelled(NULL), -EINVAL);
        ck_assert_int_eq(loop_future_error(NULL), -EINVAL);
        ck_assert_int_eq(loop_future_result(NULL, &p), -EINVAL);
        ck_assert_int_eq(loop_future_add_done_callback(NULL, nop_future_cb, NULL), -EINVAL);
        ck_assert_int_eq(loop_future_remove_done_callback(NULL, nop_future_cb, NULL), -EINVAL);
        ck_assert_int_eq(loop_run_until_complete(loop, NULL), -EINVAL);

        f = new_future(loop);
        ck_assert_int_eq(loop_run_until_complete(NULL, f), -EINVAL);
        ck_assert_int_eq(loop_future_result(f, NULL), -EINVAL);
        ck_assert_int_eq(loop_future_add_done_callback(f, NULL, NULL), -EINVAL);
        ck_assert_int_eq(loop_future_remove_done_callback(f, NULL, NULL), -EINVAL);
        ck_assert_int_eq(loop_future_set_result(f, NULL, NULL), 0);
        ck_assert_int_eq(loop_future_result(f, NULL), -EINVAL);
        loop_future_unref(f);
        loop_unref(loop);
}
END_TEST

START_TEST(test_closed_loop) {
        loop_t *loop = tu_loop_new();
        loop_future_t *f = new_future(loop), *g = NULL;

        ck_assert_int_eq(loop_close(loop), 0);
        ck_assert_int_eq(loop_create_future(loop, &g), -ESHUTDOWN);
        ck_assert_ptr_eq(g, NULL);
        ck_assert_int_eq(loop_run_until_complete(loop, f), -ESHUTDOWN);
        ck_assert_int_eq(loop_future_add_done_callback(f, nop_future_cb, NULL), -ESHUTDOWN);
        assert_pending(f);
        loop_future_unref(f);
        loop_unref(loop);
}
END_TEST

/*
 * Completing a future whose loop has been closed (what close hooks do when
 * they cancel their operations): the future completes, its done callbacks
 * are dropped unrun like everything else a closed loop held, and nothing
 * keeps the loop or the future alive afterwards (valgrind).
 */
START_TEST(test_complete_after_close) {
        enum completion how = (enum completion) _i;
        loop_t *loop = tu_loop_new();
        loop_future_t *f = new_future(loop);
        struct cb_log log = {0};
        struct cb_entry e = {.log = &log, .id = 1};
        struct owned o = {0};

        ck_assert_int_eq(loop_future_add_done_callback(f, log_cb, &e), 0);
        ck_assert_int_eq(loop_close(loop), 0);
        if (how == BY_RESULT)
                ck_assert_int_eq(loop_future_set_result(f, &o, destroy_owned), 0);
        else
                ck_assert_int_eq(complete_future(f, how, NULL), 0);
        ck_assert_int_eq(loop_future_done(f), 1);
        ck_assert_int_eq(loop_future_error(f), expected_error(how));
        ck_assert_int_eq(log.n, 0);
        loop_future_unref(f);
        /* Freed now: no queued callback of the closed loop holds it. */
        ck_assert_int_eq(o.destroyed, (how == BY_RESULT ? 1 : 0));
        loop_unref(loop);
        ck_assert_int_eq(log.n, 0);
}
END_TEST

/* In a fork child, the parent's futures cannot be completed or waited for. */
static int fork_child_checks(loop_t *loop, loop_future_t *f) {
        loop_future_t *g = NULL;
        int bad = 0;

        if (loop_future_set_result(f, NULL, NULL) != -ECHILD)
                bad |= 1 << 0;
        if (loop_future_set_error(f, -EIO) != -ECHILD)
                bad |= 1 << 1;
        if (loop_future_cancel(f) != -ECHILD)
                bad |= 1 << 2;
        if (loop_future_add_done_callback(f, nop_future_cb, NULL) != -ECHILD)
                bad |= 1 << 3;
        if (loop_run_until_complete(loop, f) != -ECHILD)
                bad |= 1 << 4;
        if (loop_create_future(loop, &g) != -ECHILD || g)
                bad |= 1 << 5;
        if (loop_future_done(f) != 0)
                bad |= 1 << 6;
        /* Letting go works in the child, without touching the parent's state. */
        if (loop_future_unref(f) != NULL)
                bad |= 1 << 7;
        if (loop_unref(loop) != NULL)
                bad |= 1 << 8;
        return bad;
}

START_TEST(test_fork_child) {
#ifdef _WIN32
        TU_SKIP_ON_WINDOWS("fork");
#else
        loop_t *loop = tu_loop_new();
        loop_future_t *f = new_future(loop);
        struct cb_log log = {0};
        struct cb_entry e = {.log = &log, .id = 1};
        int result[2], status, bad = -1;
        pid_t pid;

        ck_assert_int_eq(loop_future_add_done_callback(f, log_cb, &e), 0);
        ck_assert_int_eq(pipe(result), 0);
        fflush(NULL);
        pid = fork();
        ck_assert_int_ge(pid, 0);
        if (pid == 0) {
                alarm(10);
                close(result[0]);
                bad = fork_child_checks(loop, f);
                _exit(write(result[1], &bad, sizeof(bad)) == (ssize_t) sizeof(bad) ? 0 : 1);
        }
        ck_assert_int_eq(close(result[1]), 0);
        ck_assert_int_eq(read(result[0], &bad, sizeof(bad)), (ssize_t) sizeof(bad));
        ck_assert_int_eq(close(result[0]), 0);
        ck_assert_int_eq(waitpid(pid, &status, 0), pid);
        ck_assert_msg(bad == 0, "child: checks failed, mask 0x%x", bad);

        /* The parent's future is untouched. */
        assert_pending(f);
        ck_assert_int_eq(loop_future_set_result(f, NULL, NULL), 0);
        ck_assert_int_eq(loop_run_once(loop, 0), 1);
        ck_assert_int_eq(log.n, 1);
        loop_future_unref(f);
        loop_unref(loop);
#endif
}
END_TEST

static Suite *future_suite(void) {
        Suite *s = suite_create("future");
        TCase *tc;

        tc = tu_tcase(s, "complete");
        tcase_add_test(tc, test_set_result);
        tcase_add_test(tc, test_set_error);
        tcase_add_test(tc, test_set_error_invalid);
        tcase_add_test(tc, test_cancel);
        tcase_add_test(tc, test_cancel_done);
        tcase_add_test(tc, test_set_twice);
        tcase_add_test(tc, test_destroy_once);
        tcase_add_test(tc, test_destroy_not_called_without_result);
        tcase_add_test(tc, test_ref_unref_null);

        tc = tu_tcase(s, "done_callbacks");
        tcase_add_loop_test(tc, test_done_callbacks_order, BY_RESULT, BY_CANCEL + 1);
        tcase_add_test(tc, test_done_callbacks_fifo_with_call_soon);
        tcase_add_loop_test(tc, test_done_callback_after_completion, BY_RESULT, BY_CANCEL + 1);
        tcase_add_test(tc, test_remove_done_callback);
        tcase_add_test(tc, test_done_callback_error);
        tcase_add_test(tc, test_done_callback_chain);

        tc = tu_tcase(s, "run_until_complete");
        tcase_add_loop_test(tc, test_run_until_complete_timer, BY_RESULT, BY_CANCEL + 1);
        tcase_add_loop_test(tc, test_run_until_complete_already_done, BY_RESULT, BY_CANCEL + 1);
        tcase_add_test(tc, test_run_until_complete_other_loop);
        tcase_add_test(tc, test_run_until_complete_stopped);
        tcase_add_test(tc, test_run_until_complete_nested);
        tcase_add_test(tc, test_run_until_complete_nested_done);
        tcase_add_test(tc, test_run_until_complete_no_stale_stop);
        tcase_add_test(tc, test_run_until_complete_from_thread);

        tc = tu_tcase(s, "lifetime");
        tcase_add_loop_test(tc, test_close_with_scheduled_callbacks, 0, 2);
        tcase_add_test(tc, test_unref_loop_with_scheduled_callbacks);
        tcase_add_test(tc, test_future_keeps_loop_alive);

        tc = tu_tcase(s, "errors");
        tcase_add_test(tc, test_null_arguments);
        tcase_add_test(tc, test_closed_loop);
        tcase_add_loop_test(tc, test_complete_after_close, BY_RESULT, BY_CANCEL + 1);
        tcase_add_test(tc, test_fork_child);
        return s;
}

int main(void) {
        return tu_run_suite(future_suite());
}
