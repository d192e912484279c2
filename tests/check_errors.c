/* SPDX-License-Identifier: MIT */
/*
 * Bad input everywhere (NULL, closed loops, NaN/inf/huge delays), error
 * strings, the exception handler, debug mode and fork. After each error the
 * loop must still work.
 */
#include <inttypes.h>
#include <float.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stddef.h>
#ifndef _WIN32
#include <sys/wait.h>
#endif

#include "testutil.h"

/* Built with AddressSanitizer (gcc: __SANITIZE_ADDRESS__, clang: __has_feature). */
#if defined(__SANITIZE_ADDRESS__)
#define TU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define TU_ASAN 1
#endif
#endif
#ifdef TU_ASAN
#include <sanitizer/asan_interface.h>
#endif

static int nop_cb(loop_t *loop, void *userdata) {
        (void) loop;
        (void) userdata;
        return 0;
}

static int nop_io_cb(loop_t *loop, int fd, void *userdata) {
        (void) loop;
        (void) fd;
        (void) userdata;
        return 0;
}

static void nop_handler(loop_t *loop, const struct loop_exception_context *ctx, void *userdata) {
        (void) loop;
        (void) ctx;
        (void) userdata;
}

static struct loop_exception_context make_ctx(const char *message, int error, loop_handle_t *h, int fd) {
        return (struct loop_exception_context){
                .size = sizeof(struct loop_exception_context),
                .message = message,
                .error = error,
                .handle = h,
                .fd = fd,
        };
}

/* ---- NULL arguments ------------------------------------------------------ */

START_TEST(test_null_loop) {
        struct loop_exception_context ctx = make_ctx("x", 0, NULL, -1);
        loop_handle_t *h = NULL;
        void *ud = &ud;

        ck_assert_int_eq(loop_new(NULL), -EINVAL);
        ck_assert_ptr_eq(loop_ref(NULL), NULL);
        ck_assert_ptr_eq(loop_unref(NULL), NULL);
        ck_assert_ptr_eq(loop_get_selector(NULL), NULL);
        ck_assert_int_eq(loop_close(NULL), -EINVAL);
        ck_assert_int_eq(loop_is_closed(NULL), -EINVAL);
        ck_assert_int_eq(loop_is_running(NULL), -EINVAL);

        ck_assert_int_eq(loop_run_forever(NULL), -EINVAL);
        ck_assert_int_eq(loop_run_once(NULL, 0), -EINVAL);
        ck_assert_int_eq(loop_run_once(NULL, -1), -EINVAL);
        ck_assert_int_eq(loop_stop(NULL), -EINVAL);

        ck_assert(isnan(loop_time(NULL)));
        ck_assert_int_eq(loop_time_ns(NULL), -EINVAL);

        ck_assert_int_eq(loop_call_soon(NULL, nop_cb, NULL, &h), -EINVAL);
        ck_assert_int_eq(loop_call_soon_threadsafe(NULL, nop_cb, NULL, &h), -EINVAL);
        ck_assert_int_eq(loop_call_later(NULL, 0.1, nop_cb, NULL, &h), -EINVAL);
        ck_assert_int_eq(loop_call_later_ns(NULL, 1, nop_cb, NULL, &h), -EINVAL);
        ck_assert_int_eq(loop_call_at(NULL, 1.0, nop_cb, NULL, &h), -EINVAL);
        ck_assert_int_eq(loop_call_at_ns(NULL, 1, nop_cb, NULL, &h), -EINVAL);
        ck_assert_ptr_eq(h, NULL);

        ck_assert_int_eq(loop_add_reader(NULL, 0, nop_io_cb, NULL), -EINVAL);
        ck_assert_int_eq(loop_remove_reader(NULL, 0), -EINVAL);
        ck_assert_int_eq(loop_add_writer(NULL, 1, nop_io_cb, NULL), -EINVAL);
        ck_assert_int_eq(loop_remove_writer(NULL, 1), -EINVAL);

        ck_assert_int_eq(loop_set_exception_handler(NULL, nop_handler, NULL), -EINVAL);
        ck_assert_ptr_eq(loop_get_exception_handler(NULL, &ud), NULL);
        ck_assert_ptr_eq(loop_get_exception_handler(NULL, NULL), NULL);
        ck_assert_int_eq(loop_call_exception_handler(NULL, &ctx), -EINVAL);
        ck_assert_int_eq(loop_default_exception_handler(NULL, &ctx), -EINVAL);

        ck_assert_int_eq(loop_set_debug(NULL, 1), -EINVAL);
        ck_assert_int_eq(loop_get_debug(NULL), -EINVAL);
        ck_assert_int_eq(loop_set_slow_callback_duration(NULL, 0.5), -EINVAL);
        ck_assert(isnan(loop_get_slow_callback_duration(NULL)));
}
END_TEST

START_TEST(test_null_handle_and_selector) {
        loop_selector_t *sel = NULL;
        loop_t *loop = NULL;

        ck_assert_ptr_eq(loop_handle_ref(NULL), NULL);
        ck_assert_ptr_eq(loop_handle_unref(NULL), NULL);
        ck_assert_int_eq(loop_handle_cancel(NULL), -EINVAL);
        ck_assert_int_eq(loop_handle_cancelled(NULL), -EINVAL);
        ck_assert(isnan(loop_handle_when(NULL)));
        ck_assert_int_eq(loop_handle_when_ns(NULL), -EINVAL);

        ck_assert_int_eq(loop_selector_new(NULL, NULL), -EINVAL);
        ck_assert_int_eq(loop_selector_loop_new(NULL, &loop), -EINVAL);
        ck_assert_ptr_eq(loop_selector_ref(NULL), NULL);
        ck_assert_ptr_eq(loop_selector_unref(NULL), NULL);
        ck_assert_ptr_eq(loop_selector_name(NULL), NULL);
        ck_assert_int_eq(loop_selector_new(loop_selector_names()[0], &sel), 0);
        ck_assert_int_eq(loop_selector_loop_new(sel, NULL), -EINVAL);
        loop_selector_unref(sel);
}
END_TEST

/* NULL callbacks on a live loop; the loop stays usable after each. */
START_TEST(test_null_callback) {
        loop_t *loop = tu_loop_new();
        loop_handle_t *h = NULL;
        int sv[2];

        tu_socketpair(sv);
        ck_assert_int_eq(loop_call_soon(loop, NULL, NULL, &h), -EINVAL);
        tu_assert_usable(loop);
        ck_assert_int_eq(loop_call_soon(loop, NULL, NULL, NULL), -EINVAL);
        tu_assert_usable(loop);
        ck_assert_int_eq(loop_call_soon_threadsafe(loop, NULL, NULL, &h), -EINVAL);
        tu_assert_usable(loop);
        ck_assert_int_eq(loop_call_later(loop, 0.0, NULL, NULL, &h), -EINVAL);
        tu_assert_usable(loop);
        ck_assert_int_eq(loop_call_later_ns(loop, 0, NULL, NULL, &h), -EINVAL);
        tu_assert_usable(loop);
        ck_assert_int_eq(loop_call_at(loop, 0.0, NULL, NULL, &h), -EINVAL);
        tu_assert_usable(loop);
        ck_assert_int_eq(loop_call_at_ns(loop, 0, NULL, NULL, &h), -EINVAL);
        tu_assert_usable(loop);
        ck_assert_ptr_eq(h, NULL);
        ck_assert_int_eq(loop_add_reader(loop, sv[0], NULL, NULL), -EINVAL);
        tu_assert_usable(loop);
        ck_assert_int_eq(loop_add_writer(loop, sv[0], NULL, NULL), -EINVAL);
        tu_assert_usable(loop);
        /* Nothing got registered. */
        ck_assert_int_eq(loop_remove_reader(loop, sv[0]), 0);
        ck_assert_int_eq(loop_remove_writer(loop, sv[0]), 0);
        loop_unref(loop);
        tu_close_pair(sv);
}
END_TEST

/* ---- closed loops ---------------------------------------------------------- */

START_TEST(test_closed_loop) {
        loop_t *loop = tu_loop_new();
        loop_handle_t *h = NULL;
        void *ud = NULL;
        int sv[2], count = 0;

        tu_socketpair(sv);
        ck_assert_int_eq(loop_set_exception_handler(loop, nop_handler, &count), 0);
        ck_assert_int_eq(loop_set_debug(loop, 1), 0);
        ck_assert_int_eq(loop_set_slow_callback_duration(loop, 0.25), 0);
        ck_assert_int_eq(loop_close(loop), 0);

        ck_assert_int_eq(loop_run_forever(loop), -ESHUTDOWN);
        ck_assert_int_eq(loop_run_once(loop, 0), -ESHUTDOWN);
        ck_assert_int_eq(loop_run_once(loop, -1), -ESHUTDOWN);
        ck_assert_int_eq(loop_stop(loop), -ESHUTDOWN);
        ck_assert_int_eq(loop_call_soon(loop, tu_count_cb, &count, &h), -ESHUTDOWN);
        ck_assert_int_eq(loop_call_soon(loop, tu_count_cb, &count, NULL), -ESHUTDOWN);
        ck_assert_int_eq(loop_call_soon_threadsafe(loop, tu_count_cb, &count, &h), -ESHUTDOWN);
        ck_assert_int_eq(loop_call_later(loop, 0.0, tu_count_cb, &count, &h), -ESHUTDOWN);
        ck_assert_int_eq(loop_call_later_ns(loop, 0, tu_count_cb, &count, &h), -ESHUTDOWN);
        ck_assert_int_eq(loop_call_at(loop, 0.0, tu_count_cb, &count, &h), -ESHUTDOWN);
        ck_assert_int_eq(loop_call_at_ns(loop, 0, tu_count_cb, &count, &h), -ESHUTDOWN);
        ck_assert_ptr_eq(h, NULL);
        ck_assert_int_eq(loop_add_reader(loop, sv[0], nop_io_cb, NULL), -ESHUTDOWN);
        ck_assert_int_eq(loop_remove_reader(loop, sv[0]), -ESHUTDOWN);
        ck_assert_int_eq(loop_add_writer(loop, sv[0], nop_io_cb, NULL), -ESHUTDOWN);
        ck_assert_int_eq(loop_remove_writer(loop, sv[0]), -ESHUTDOWN);
        ck_assert_int_eq(loop_set_exception_handler(loop, NULL, NULL), -ESHUTDOWN);
        ck_assert_int_eq(loop_set_debug(loop, 0), -ESHUTDOWN);
        ck_assert_int_eq(loop_set_slow_callback_duration(loop, 0.5), -ESHUTDOWN);
        ck_assert_int_eq(count, 0);

        /* What still works on a closed loop. */
        ck_assert_int_eq(loop_close(loop), 0);
        ck_assert_int_eq(loop_is_closed(loop), 1);
        ck_assert_int_eq(loop_is_running(loop), 0);
        ck_assert_ptr_eq(loop_get_exception_handler(loop, &ud), nop_handler);
        ck_assert_ptr_eq(ud, &count);
        ck_assert_int_eq(loop_get_debug(loop), 1);
        ck_assert_msg(loop_get_slow_callback_duration(loop) == 0.25, "slow duration %g",
                      loop_get_slow_callback_duration(loop));
        ck_assert(!isnan(loop_time(loop)));
        ck_assert_int_gt(loop_time_ns(loop), 0);
        ck_assert_ptr_eq(loop_ref(loop), loop);
        ck_assert_ptr_eq(loop_unref(loop), NULL);
        ck_assert_ptr_eq(loop_unref(loop), NULL);
        tu_close_pair(sv);
}
END_TEST

/*
 * The exception-handler calls are not among the spec's exceptions to the
 * closed-loop rule either (close, is_closed, is_running, ref/unref, get_*,
 * time): -ESHUTDOWN, and nothing printed or called.
 */
static void count_handler(loop_t *loop, const struct loop_exception_context *ctx, void *userdata) {
        (void) loop;
        (void) ctx;
        (*(int *) userdata)++;
}

START_TEST(test_closed_loop_exception_handler) {
        loop_t *loop = tu_loop_new();
        struct loop_exception_context ctx = make_ctx("closed", -EIO, NULL, -1);
        struct tu_capture cap;
        char out[1024];
        int call_ret, default_ret, custom_ret, calls = 0;

        ck_assert_int_eq(loop_close(loop), 0);
        tu_capture_start(&cap);
        call_ret = loop_call_exception_handler(loop, &ctx);
        default_ret = loop_default_exception_handler(loop, &ctx);
        tu_capture_stop(&cap, out, sizeof(out));
        loop_unref(loop);
        ck_assert_int_eq(call_ret, -ESHUTDOWN);
        ck_assert_int_eq(default_ret, -ESHUTDOWN);
        ck_assert_msg(out[0] == '\0', "closed loop printed: %s", out);

        /* With a custom handler set before the close. */
        loop = tu_loop_new();
        ck_assert_int_eq(loop_set_exception_handler(loop, count_handler, &calls), 0);
        ck_assert_int_eq(loop_close(loop), 0);
        custom_ret = loop_call_exception_handler(loop, &ctx);
        loop_unref(loop);
        ck_assert_int_eq(custom_ret, -ESHUTDOWN);
        ck_assert_int_eq(calls, 0);
}
END_TEST

/* ---- delays ------------------------------------------------------------------ */

START_TEST(test_bad_delays) {
        loop_t *loop = tu_loop_new();
        loop_handle_t *h = NULL;
        int count = 0;

        ck_assert_int_eq(loop_call_later(loop, NAN, tu_count_cb, &count, &h), -EINVAL);
        tu_assert_usable(loop);
        ck_assert_int_eq(loop_call_later(loop, INFINITY, tu_count_cb, &count, &h), -EINVAL);
        tu_assert_usable(loop);
        ck_assert_int_eq(loop_call_later(loop, -INFINITY, tu_count_cb, &count, &h), -EINVAL);
        tu_assert_usable(loop);
        ck_assert_int_eq(loop_call_at(loop, NAN, tu_count_cb, &count, &h), -EINVAL);
        tu_assert_usable(loop);
        ck_assert_int_eq(loop_call_at(loop, INFINITY, tu_count_cb, &count, &h), -EINVAL);
        tu_assert_usable(loop);
        ck_assert_int_eq(loop_call_at(loop, -INFINITY, tu_count_cb, &count, &h), -EINVAL);
        tu_assert_usable(loop);

        /* Finite but beyond int64 nanoseconds. */
        ck_assert_int_eq(loop_call_later(loop, 1e300, tu_count_cb, &count, &h), -ERANGE);
        tu_assert_usable(loop);
        ck_assert_int_eq(loop_call_later(loop, DBL_MAX, tu_count_cb, &count, &h), -ERANGE);
        tu_assert_usable(loop);
        ck_assert_int_eq(loop_call_later(loop, 1e10, tu_count_cb, &count, &h), -ERANGE);
        tu_assert_usable(loop);
        ck_assert_int_eq(loop_call_at(loop, 1e300, tu_count_cb, &count, &h), -ERANGE);
        tu_assert_usable(loop);
        ck_assert_int_eq(loop_call_at(loop, 1e10, tu_count_cb, &count, &h), -ERANGE);
        tu_assert_usable(loop);
        ck_assert_int_eq(loop_call_later_ns(loop, INT64_MAX, tu_count_cb, &count, &h), -ERANGE);
        tu_assert_usable(loop);
        ck_assert_int_eq(loop_call_later_ns(loop, INT64_MAX - loop_time_ns(loop) / 2, tu_count_cb, &count, &h),
                         -ERANGE);
        tu_assert_usable(loop);
        ck_assert_ptr_eq(h, NULL);
        ck_assert_int_eq(count, 0);

        /* The extremes that do fit are accepted. */
        ck_assert_int_eq(loop_call_at_ns(loop, INT64_MAX, tu_count_cb, &count, &h), 0);
        ck_assert_int_eq(loop_handle_when_ns(h), INT64_MAX);
        ck_assert_int_eq(loop_handle_cancel(h), 0);
        h = loop_handle_unref(h);
        ck_assert_int_eq(loop_call_later_ns(loop, INT64_MIN, tu_count_cb, &count, NULL), 0);
        ck_assert_int_eq(loop_call_at_ns(loop, INT64_MIN, tu_count_cb, &count, NULL), 0);
        ck_assert_int_eq(loop_call_at(loop, -1e9, tu_count_cb, &count, NULL), 0);
        ck_assert_int_eq(loop_run_once(loop, 0), 3);
        ck_assert_int_eq(count, 3);
        loop_unref(loop);
}
END_TEST

/* ---- loop_strerror ----------------------------------------------------------- */

static int signal_cb(loop_t *loop, int signum, void *userdata) {
        (void) loop;
        (void) signum;
        (void) userdata;
        return 0;
}

/* Windows has SIGINT only (the console's Ctrl-C and Ctrl-Break), as asyncio
 * there: every other signal is EOPNOTSUPP, never a crash. POSIX takes both.
 * (tests/windows/check-windows delivers a real Ctrl-C to examples/echo.) */
START_TEST(test_platform_signals) {
        loop_t *loop = tu_loop_new();

        ck_assert_int_eq(loop_add_signal_handler(loop, SIGINT, signal_cb, NULL), 0);
#ifdef _WIN32
        ck_assert_int_eq(loop_add_signal_handler(loop, SIGTERM, signal_cb, NULL), -EOPNOTSUPP);
        ck_assert_int_eq(loop_add_signal_handler(loop, SIGABRT, signal_cb, NULL), -EOPNOTSUPP);
        ck_assert_int_eq(loop_remove_signal_handler(loop, SIGTERM), 0);
#else
        ck_assert_int_eq(loop_add_signal_handler(loop, SIGTERM, signal_cb, NULL), 0);
        ck_assert_int_eq(loop_remove_signal_handler(loop, SIGTERM), 1);
#endif
        ck_assert_int_eq(loop_remove_signal_handler(loop, SIGINT), 1);
        ck_assert_int_eq(loop_remove_signal_handler(loop, SIGINT), 0);
        loop_unref(loop);
}
END_TEST

START_TEST(test_strerror) {
        static const int values[] = {0,      EINVAL, -EINVAL,  -EBADF, -ESHUTDOWN, -ECHILD, -ERANGE, -ENOENT,
                                     -EBUSY, -EPERM, -ENODATA, 99999,  -99999,     INT_MAX, INT_MIN, INT_MIN + 1};
        size_t i;

        for (i = 0; i < sizeof(values) / sizeof(values[0]); i++) {
                const char *s = loop_strerror(values[i]);

                ck_assert_msg(s != NULL, "loop_strerror(%d) is NULL", values[i]);
                ck_assert_msg(*s != '\0', "loop_strerror(%d) is empty", values[i]);
        }
        ck_assert_str_eq(loop_strerror(-EINVAL), "Invalid argument");
        ck_assert_str_eq(loop_strerror(EINVAL), loop_strerror(-EINVAL));
        ck_assert_str_eq(loop_strerror(-EBADF), "Bad file descriptor");
        ck_assert_ptr_ne(strstr(loop_strerror(-99999), "Unknown error"), NULL);
        ck_assert_ptr_ne(strstr(loop_strerror(INT_MIN), "Unknown error"), NULL);
        /* Static storage: a later call does not overwrite an earlier result. */
        {
                const char *a = loop_strerror(-ENOENT);
                const char *b = loop_strerror(-EPERM);

                ck_assert_str_eq(a, "No such file or directory");
                ck_assert_str_eq(b, "Operation not permitted");
        }
}
END_TEST

/* ---- the exception handler ------------------------------------------------- */

struct seen {
        int calls;
        loop_t *loop;
        void *userdata;
        char message[128];
        int error, fd;
        loop_handle_t *handle;
};

static void seen_handler(loop_t *loop, const struct loop_exception_context *ctx, void *userdata) {
        struct seen *s = userdata;

        s->calls++;
        s->loop = loop;
        s->userdata = userdata;
        snprintf(s->message, sizeof(s->message), "%s", ctx->message);
        s->error = ctx->error;
        s->fd = ctx->fd;
        s->handle = ctx->handle;
}

START_TEST(test_exception_handler_set_get) {
        loop_t *loop = tu_loop_new();
        struct seen s = {0};
        struct loop_exception_context ctx = make_ctx("hello", -EPIPE, NULL, 3);
        void *ud = &ud;

        /* The default is in force: NULL. */
        ck_assert_ptr_eq(loop_get_exception_handler(loop, &ud), NULL);
        ck_assert_ptr_eq(loop_get_exception_handler(loop, NULL), NULL);

        ck_assert_int_eq(loop_set_exception_handler(loop, seen_handler, &s), 0);
        ck_assert_ptr_eq(loop_get_exception_handler(loop, &ud), seen_handler);
        ck_assert_ptr_eq(ud, &s);
        ck_assert_ptr_eq(loop_get_exception_handler(loop, NULL), seen_handler);

        ck_assert_int_eq(loop_call_exception_handler(loop, &ctx), 0);
        ck_assert_int_eq(s.calls, 1);
        ck_assert_ptr_eq(s.loop, loop);
        ck_assert_ptr_eq(s.userdata, &s);
        ck_assert_str_eq(s.message, "hello");
        ck_assert_int_eq(s.error, -EPIPE);
        ck_assert_int_eq(s.fd, 3);
        ck_assert_ptr_eq(s.handle, NULL);

        /* NULL restores the default. */
        ck_assert_int_eq(loop_set_exception_handler(loop, NULL, NULL), 0);
        ck_assert_ptr_eq(loop_get_exception_handler(loop, &ud), NULL);
        loop_unref(loop);
}
END_TEST

START_TEST(test_exception_handler_bad_context) {
        loop_t *loop = tu_loop_new();
        struct seen s = {0};
        struct loop_exception_context ctx;
        struct {
                struct loop_exception_context base;
                int future_field;
        } bigger;
        struct tu_capture cap;
        char out[1024];
        int r[4];

        ck_assert_int_eq(loop_set_exception_handler(loop, seen_handler, &s), 0);
        ck_assert_int_eq(loop_call_exception_handler(loop, NULL), -EINVAL);
        ctx = make_ctx("x", 0, NULL, -1);
        ctx.size = 0;
        ck_assert_int_eq(loop_call_exception_handler(loop, &ctx), -EINVAL);
        ctx.size = 1;
        ck_assert_int_eq(loop_call_exception_handler(loop, &ctx), -EINVAL);
        /* Too small to hold the message, which is required. */
        ctx.size = offsetof(struct loop_exception_context, message);
        ck_assert_int_eq(loop_call_exception_handler(loop, &ctx), -EINVAL);
        ctx = make_ctx(NULL, -EIO, NULL, -1);
        ck_assert_int_eq(loop_call_exception_handler(loop, &ctx), -EINVAL);
        ck_assert_int_eq(s.calls, 0);
        tu_assert_usable(loop);

        /* A caller built against a later, bigger context is fine. */
        memset(&bigger, 0, sizeof(bigger));
        bigger.base = make_ctx("bigger", -EIO, NULL, -1);
        bigger.base.size = sizeof(bigger);
        ck_assert_int_eq(loop_call_exception_handler(loop, &bigger.base), 0);
        ck_assert_int_eq(s.calls, 1);
        ck_assert_str_eq(s.message, "bigger");

        /* The default handler checks the same way. */
        tu_capture_start(&cap);
        r[0] = loop_default_exception_handler(loop, NULL);
        ctx = make_ctx("x", 0, NULL, -1);
        ctx.size = 1;
        r[1] = loop_default_exception_handler(loop, &ctx);
        ctx = make_ctx(NULL, 0, NULL, -1);
        r[2] = loop_default_exception_handler(loop, &ctx);
        r[3] = (int) tu_capture_stop(&cap, out, sizeof(out));
        ck_assert_int_eq(r[0], -EINVAL);
        ck_assert_int_eq(r[1], -EINVAL);
        ck_assert_int_eq(r[2], -EINVAL);
        ck_assert_msg(r[3] == 0, "rejected contexts printed: %s", out);
        loop_unref(loop);
}
END_TEST

static int count_char(const char *s, char c) {
        int n = 0;

        for (; *s; s++)
                n += *s == c;
        return n;
}

START_TEST(test_default_handler_output) {
        loop_t *loop = tu_loop_new();
        struct loop_exception_context ctx;
        struct tu_capture cap;
        loop_handle_t *h = NULL;
        char out[4][1024];
        int r[3];

        ck_assert_int_eq(loop_call_soon(loop, nop_cb, NULL, &h), 0);

        tu_capture_start(&cap);
        ctx = make_ctx("boom", -EIO, NULL, 7);
        r[0] = loop_default_exception_handler(loop, &ctx);
        tu_capture_stop(&cap, out[0], sizeof(out[0]));

        tu_capture_start(&cap);
        ctx = make_ctx("plain message", 0, NULL, -1);
        r[1] = loop_call_exception_handler(loop, &ctx); /* no handler set: the default */
        tu_capture_stop(&cap, out[1], sizeof(out[1]));

        tu_capture_start(&cap);
        ctx = make_ctx("with handle", -EPIPE, h, -1);
        r[2] = loop_default_exception_handler(loop, &ctx);
        tu_capture_stop(&cap, out[2], sizeof(out[2]));

        ck_assert_int_eq(r[0], 0);
        ck_assert_int_eq(r[1], 0);
        ck_assert_int_eq(r[2], 0);

        ck_assert_msg(strncmp(out[0], "libloop: boom: ", 15) == 0, "got: %s", out[0]);
        ck_assert_msg(strstr(out[0], loop_strerror(-EIO)), "no error text in: %s", out[0]);
        ck_assert_msg(strstr(out[0], "(fd 7)"), "no fd in: %s", out[0]);
        ck_assert_msg(!strstr(out[0], "handle"), "a handle that is not there in: %s", out[0]);
        ck_assert_int_eq(count_char(out[0], '\n'), 1);
        ck_assert_int_eq(out[0][strlen(out[0]) - 1], '\n');

        ck_assert_msg(strncmp(out[1], "libloop: plain message", 22) == 0, "got: %s", out[1]);
        ck_assert_msg(!strstr(out[1], "(fd"), "an fd that is not there in: %s", out[1]);
        ck_assert_int_eq(count_char(out[1], '\n'), 1);

        ck_assert_msg(strncmp(out[2], "libloop: with handle: ", 22) == 0, "got: %s", out[2]);
        ck_assert_msg(strstr(out[2], loop_strerror(-EPIPE)), "no error text in: %s", out[2]);
        ck_assert_msg(strstr(out[2], "(handle 0x"), "no handle in: %s", out[2]);
        ck_assert_msg(!strstr(out[2], "(fd"), "an fd that is not there in: %s", out[2]);
        ck_assert_int_eq(count_char(out[2], '\n'), 1);

        ck_assert_int_eq(loop_handle_cancel(h), 0);
        loop_handle_unref(h);
        loop_unref(loop);
}
END_TEST

static int raise_cb(loop_t *loop, void *userdata) {
        (void) loop;
        (void) userdata;
        return -ECONNRESET;
}

/* A raising callback under the default handler ends up on stderr. */
START_TEST(test_default_handler_from_callback) {
        loop_t *loop = tu_loop_new();
        struct seen s = {0};
        struct tu_capture cap;
        char out[1024];
        int ran;

        /* Set then restored: the custom handler must not be called. */
        ck_assert_int_eq(loop_set_exception_handler(loop, seen_handler, &s), 0);
        ck_assert_int_eq(loop_set_exception_handler(loop, NULL, NULL), 0);
        ck_assert_int_eq(loop_call_soon(loop, raise_cb, NULL, NULL), 0);
        tu_capture_start(&cap);
        ran = loop_run_once(loop, 0);
        tu_capture_stop(&cap, out, sizeof(out));
        ck_assert_int_eq(ran, 1);
        ck_assert_int_eq(s.calls, 0);
        ck_assert_msg(strstr(out, "libloop: Exception in callback"), "got: %s", out);
        ck_assert_msg(strstr(out, loop_strerror(-ECONNRESET)), "got: %s", out);
        tu_assert_usable(loop);
        loop_unref(loop);
}
END_TEST

/* ---- debug mode ------------------------------------------------------------ */

/* Saves and clears LIBLOOP_DEBUG so that the environment cannot interfere. */
static char *save_env(const char *name) {
        const char *v = getenv(name);
        char *saved = v ? strdup(v) : NULL;

        ck_assert_int_eq(unsetenv(name), 0);
        return saved;
}

static void restore_env(const char *name, char *saved) {
        if (saved) {
                ck_assert_int_eq(setenv(name, saved, 1), 0);
                free(saved);
        } else {
                ck_assert_int_eq(unsetenv(name), 0);
        }
}

START_TEST(test_debug_set_get) {
        char *saved = save_env("LIBLOOP_DEBUG");
        loop_t *loop = tu_loop_new(), *dloop = NULL;
        int r;

        ck_assert_int_eq(loop_get_debug(loop), 0);
        ck_assert_int_eq(loop_set_debug(loop, 1), 0);
        ck_assert_int_eq(loop_get_debug(loop), 1);
        ck_assert_int_eq(loop_set_debug(loop, 0), 0);
        ck_assert_int_eq(loop_get_debug(loop), 0);
        ck_assert_int_eq(loop_set_debug(loop, 42), 0);
        ck_assert_int_eq(loop_get_debug(loop), 1);
        ck_assert_int_eq(loop_set_debug(loop, 0), 0);

        /* LIBLOOP_DEBUG=1 is for loops created afterwards. */
        ck_assert_int_eq(setenv("LIBLOOP_DEBUG", "1", 1), 0);
        r = loop_new(&dloop);
        restore_env("LIBLOOP_DEBUG", saved);
        ck_assert_int_eq(r, 0);
        ck_assert_int_eq(loop_get_debug(dloop), 1);
        ck_assert_int_eq(loop_get_debug(loop), 0);
        ck_assert_int_eq(loop_set_debug(dloop, 0), 0);
        ck_assert_int_eq(loop_get_debug(dloop), 0);
        loop_unref(dloop);
        loop_unref(loop);
}
END_TEST

START_TEST(test_slow_callback_duration) {
        loop_t *loop = tu_loop_new();

        ck_assert_msg(fabs(loop_get_slow_callback_duration(loop) - 0.1) < 1e-9, "default %g",
                      loop_get_slow_callback_duration(loop));
        ck_assert_int_eq(loop_set_slow_callback_duration(loop, 0.01), 0);
        ck_assert_msg(loop_get_slow_callback_duration(loop) == 0.01, "got %g", loop_get_slow_callback_duration(loop));
        ck_assert_int_eq(loop_set_slow_callback_duration(loop, 0.0), 0);
        ck_assert_msg(loop_get_slow_callback_duration(loop) == 0.0, "got %g", loop_get_slow_callback_duration(loop));

        ck_assert_int_eq(loop_set_slow_callback_duration(loop, 0.5), 0);
        ck_assert_int_eq(loop_set_slow_callback_duration(loop, NAN), -EINVAL);
        ck_assert_int_eq(loop_set_slow_callback_duration(loop, -0.1), -EINVAL);
        ck_assert_int_eq(loop_set_slow_callback_duration(loop, -INFINITY), -EINVAL);
        ck_assert_int_eq(loop_set_slow_callback_duration(loop, INFINITY), -EINVAL);
        /* Unchanged by the failed calls. */
        ck_assert_msg(loop_get_slow_callback_duration(loop) == 0.5, "got %g", loop_get_slow_callback_duration(loop));
        tu_assert_usable(loop);
        loop_unref(loop);
}
END_TEST

static int sleepy_cb(loop_t *loop, void *userdata) {
        (void) loop;
        (void) userdata;
        tu_sleep_ns(50 * TU_MSEC);
        return 0;
}

static int count_substr(const char *s, const char *sub) {
        int n = 0;

        while ((s = strstr(s, sub))) {
                n++;
                s += strlen(sub);
        }
        return n;
}

START_TEST(test_slow_callback_warning) {
        loop_t *loop = tu_loop_new();
        struct tu_capture cap;
        char out[4096];
        int ran;

        ck_assert_int_eq(loop_set_debug(loop, 1), 0);
        ck_assert_int_eq(loop_set_slow_callback_duration(loop, 0.01), 0);
        ck_assert_int_eq(loop_call_soon(loop, nop_cb, NULL, NULL), 0);
        ck_assert_int_eq(loop_call_soon(loop, sleepy_cb, NULL, NULL), 0);
        ck_assert_int_eq(loop_call_soon(loop, nop_cb, NULL, NULL), 0);
        tu_capture_start(&cap);
        ran = loop_run_once(loop, 0);
        tu_capture_stop(&cap, out, sizeof(out));
        ck_assert_int_eq(ran, 3);
        ck_assert_msg(count_substr(out, "took") == 1, "expected one slow-callback line, got: %s", out);
        ck_assert_msg(strstr(out, "libloop: Executing callback "), "got: %s", out);
        ck_assert_msg(strstr(out, " seconds\n"), "got: %s", out);
        loop_unref(loop);
}
END_TEST

/*
 * The line names the callback with an address ("Executing callback 0x...
 * took"), also for a call_soon without handle and with NULL userdata.
 */
START_TEST(test_slow_callback_warning_format) {
        loop_t *loop = tu_loop_new();
        struct tu_capture cap;
        char out[4096];
        int ran;

        ck_assert_int_eq(loop_set_debug(loop, 1), 0);
        ck_assert_int_eq(loop_set_slow_callback_duration(loop, 0.01), 0);
        ck_assert_int_eq(loop_call_soon(loop, sleepy_cb, NULL, NULL), 0);
        tu_capture_start(&cap);
        ran = loop_run_once(loop, 0);
        tu_capture_stop(&cap, out, sizeof(out));
        ck_assert_int_eq(ran, 1);
        ck_assert_msg(strncmp(out, "libloop: Executing callback 0x", 30) == 0, "got: %s", out);
        ck_assert_msg(strstr(out, " took "), "got: %s", out);
        loop_unref(loop);
}
END_TEST

static int sleepy_io_cb(loop_t *loop, int fd, void *userdata) {
        (*(int *) userdata)++;
        tu_drain(fd);
        return sleepy_cb(loop, NULL);
}

/* Removes itself, as a reader does at end of file. */
static int sleepy_last_io_cb(loop_t *loop, int fd, void *userdata) {
        ck_assert_int_eq(loop_remove_reader(loop, fd), 1);
        return sleepy_io_cb(loop, fd, userdata);
}

/* Timer and I/O callbacks are timed too. */
START_TEST(test_slow_callback_warning_timer_and_io) {
        loop_t *loop = tu_loop_new();
        struct tu_capture cap;
        char out[4096];
        int sv[2], fired = 0, nread = 0, ran;

        tu_socketpair(sv);
        ck_assert_int_eq(loop_set_debug(loop, 1), 0);
        ck_assert_int_eq(loop_set_slow_callback_duration(loop, 0.01), 0);
        ck_assert_int_eq(loop_call_later_ns(loop, -1, sleepy_cb, NULL, NULL), 0);
        ck_assert_int_eq(loop_call_later_ns(loop, -1, tu_count_cb, &fired, NULL), 0);
        ck_assert_int_eq(loop_add_reader(loop, sv[0], sleepy_io_cb, &nread), 0);
        tu_write_byte(sv[1]);
        tu_capture_start(&cap);
        ran = loop_run_once(loop, 2 * TU_SEC);
        tu_capture_stop(&cap, out, sizeof(out));
        ck_assert_int_eq(ran, 3);
        ck_assert_int_eq(fired, 1);
        ck_assert_int_eq(nread, 1);
        ck_assert_msg(count_substr(out, "took") == 2, "timer + reader: got: %s", out);
        /* Each line names the user's function, not the library's. */
        char want[64];
        snprintf(want, sizeof(want), "callback 0x%" PRIxPTR " (userdata 0x%" PRIxPTR ")", (uintptr_t) sleepy_io_cb,
                 (uintptr_t) &nread);
        ck_assert_msg(strstr(out, want), "want \"%s\", got: %s", want, out);
        snprintf(want, sizeof(want), "callback 0x%" PRIxPTR " (userdata 0x0)", (uintptr_t) sleepy_cb);
        ck_assert_msg(strstr(out, want), "want \"%s\", got: %s", want, out);

        /* Also a reader that removed itself while it ran. */
        ck_assert_int_eq(loop_add_reader(loop, sv[0], sleepy_last_io_cb, &nread), 0);
        tu_write_byte(sv[1]);
        tu_capture_start(&cap);
        ran = loop_run_once(loop, 2 * TU_SEC);
        tu_capture_stop(&cap, out, sizeof(out));
        ck_assert_int_eq(ran, 1);
        ck_assert_int_eq(nread, 2);
        snprintf(want, sizeof(want), "callback 0x%" PRIxPTR " (userdata 0x%" PRIxPTR ")",
                 (uintptr_t) sleepy_last_io_cb, (uintptr_t) &nread);
        ck_assert_msg(strstr(out, want), "want \"%s\", got: %s", want, out);
        ck_assert_int_eq(loop_add_reader(loop, sv[0], sleepy_io_cb, &nread), 0);
        ck_assert_int_eq(loop_remove_reader(loop, sv[0]), 1);
        loop_unref(loop);
        tu_close_pair(sv);
}
END_TEST

START_TEST(test_no_warning_without_debug) {
        char *saved = save_env("LIBLOOP_DEBUG");
        loop_t *loop = tu_loop_new();
        struct tu_capture cap;
        char out[4096];
        int ran;

        restore_env("LIBLOOP_DEBUG", saved);
        ck_assert_int_eq(loop_get_debug(loop), 0);
        ck_assert_int_eq(loop_set_slow_callback_duration(loop, 0.01), 0);
        ck_assert_int_eq(loop_call_soon(loop, sleepy_cb, NULL, NULL), 0);
        tu_capture_start(&cap);
        ran = loop_run_once(loop, 0);
        tu_capture_stop(&cap, out, sizeof(out));
        ck_assert_int_eq(ran, 1);
        ck_assert_msg(out[0] == '\0', "debug off, yet: %s", out);

        /* Debug on, but the callback is faster than the threshold. */
        ck_assert_int_eq(loop_set_debug(loop, 1), 0);
        ck_assert_int_eq(loop_set_slow_callback_duration(loop, 5.0), 0);
        ck_assert_int_eq(loop_call_soon(loop, sleepy_cb, NULL, NULL), 0);
        tu_capture_start(&cap);
        ran = loop_run_once(loop, 0);
        tu_capture_stop(&cap, out, sizeof(out));
        ck_assert_int_eq(ran, 1);
        ck_assert_msg(!strstr(out, "took"), "under the threshold, yet: %s", out);
        loop_unref(loop);
}
END_TEST

#ifndef _WIN32
/* ---- fork ----------------------------------------------------------------------- */

/*
 * Child side: every call on the inherited loop gives -ECHILD, then the child
 * releases it. Returns a bit mask of the checks that failed (0 = all good);
 * no ck_assert in the child.
 */
static int child_checks(loop_t *loop, int fd, int do_close) {
        int bad = 0;

        if (loop_call_soon(loop, nop_cb, NULL, NULL) != -ECHILD)
                bad |= 1 << 0;
        if (loop_call_soon_threadsafe(loop, nop_cb, NULL, NULL) != -ECHILD)
                bad |= 1 << 1;
        if (loop_call_later_ns(loop, 0, nop_cb, NULL, NULL) != -ECHILD)
                bad |= 1 << 2;
        if (loop_run_once(loop, 0) != -ECHILD)
                bad |= 1 << 3;
        if (loop_run_forever(loop) != -ECHILD)
                bad |= 1 << 4;
        if (loop_add_reader(loop, fd, nop_io_cb, NULL) != -ECHILD)
                bad |= 1 << 5;
        if (loop_remove_reader(loop, fd) != -ECHILD)
                bad |= 1 << 6;
        if (loop_add_writer(loop, fd, nop_io_cb, NULL) != -ECHILD)
                bad |= 1 << 7;
        /* Not "running" (nothing runs in the child) nor "open": -ECHILD, like every call. */
        if (loop_is_running(loop) != -ECHILD)
                bad |= 1 << 10;
        if (loop_is_closed(loop) != -ECHILD)
                bad |= 1 << 11;
        if (do_close && loop_close(loop) != 0)
                bad |= 1 << 8;
        if (do_close && loop_is_closed(loop) != -ECHILD)
                bad |= 1 << 12;
        if (loop_unref(loop) != NULL)
                bad |= 1 << 9;
        return bad;
}

/*
 * The child reports its result through a pipe, not its exit status: under
 * valgrind --error-exitcode the status also reflects valgrind's verdict on
 * the child (which inherits, e.g., what earlier failed tests leaked).
 */
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
        ck_assert_msg(bad == 0, "child: checks failed, mask 0x%x (bit n = check n in child_checks)", bad);
}

static void run_fork_test(int do_close) {
        loop_t *loop = tu_loop_new();
        int sv[2], result[2], reader = 0, count = 0;
        pid_t pid;

        tu_socketpair(sv);
        ck_assert_int_eq(pipe(result), 0);
        ck_assert_int_eq(loop_add_reader(loop, sv[0], tu_io_count_cb, &reader), 0);
        ck_assert_int_eq(loop_add_writer(loop, sv[1], tu_io_count_cb, &count), 0);
        /* One iteration: the registrations reach the kernel before the fork. */
        ck_assert_int_eq(loop_run_once(loop, 0), 1);
        ck_assert_int_eq(count, 1);
        ck_assert_int_eq(loop_remove_writer(loop, sv[1]), 1);
        ck_assert_int_eq(reader, 0);

        fflush(NULL);
        pid = fork();
        ck_assert_int_ge(pid, 0);
        if (pid == 0) {
                alarm(10);
                close(result[0]);
                child_report(result[1], child_checks(loop, sv[0], do_close));
        }
        ck_assert_int_eq(close(result[1]), 0);
        assert_child_ok(pid, result[0]);

        /* The parent's loop is untouched by what the child did. */
        tu_write_byte(sv[1]);
        ck_assert_int_eq(loop_run_once(loop, 2 * TU_SEC), 1);
        ck_assert_int_eq(reader, 1);
        ck_assert_int_eq(loop_remove_reader(loop, sv[0]), 1);
        ck_assert_int_eq(loop_call_soon_threadsafe(loop, tu_count_cb, &count, NULL), 0);
        ck_assert_int_eq(loop_run_once(loop, 2 * TU_SEC), 1);
        ck_assert_int_eq(count, 2);
        tu_assert_usable(loop);
        loop_unref(loop);
        tu_close_pair(sv);
}
#endif

START_TEST(test_fork_child_closes) {
#ifdef _WIN32
        TU_SKIP_ON_WINDOWS("fork");
#else
        run_fork_test(1);
#endif
}
END_TEST

START_TEST(test_fork_child_unrefs) {
#ifdef _WIN32
        TU_SKIP_ON_WINDOWS("fork");
#else
        run_fork_test(0);
#endif
}
END_TEST

#ifndef _WIN32
struct fork_in_cb {
        pid_t parent;
        pid_t child;
        int child_running; /* loop_is_running() in the child's callback */
};

static int fork_cb(loop_t *loop, void *userdata) {
        struct fork_in_cb *f = userdata;

        fflush(NULL);
        f->child = fork();
        if (f->child == 0) {
                alarm(10);
                /* The parent's run_forever is on this stack, yet nothing runs the loop here. */
                f->child_running = loop_is_running(loop);
                return 0; /* the child's run_forever must end by itself */
        }
        return loop_stop(loop);
}
#endif

/* A loop forked while it runs: the child's run_forever returns -ECHILD. */
START_TEST(test_fork_while_running) {
#ifdef _WIN32
        TU_SKIP_ON_WINDOWS("fork");
#else
        loop_t *loop = tu_loop_new();
        struct fork_in_cb f = {.parent = getpid()};
        int r, result[2];

        ck_assert_int_eq(pipe(result), 0);
        ck_assert_int_eq(loop_call_soon(loop, fork_cb, &f, NULL), 0);
        /* In the child nothing is left to do: without the -ECHILD it would sleep forever (alarm). */
        r = loop_run_forever(loop);
        if (getpid() != f.parent) {
                int bad = r != -ECHILD;

                if (f.child_running != -ECHILD)
                        bad |= 4;
                if (loop_is_running(loop) != -ECHILD || loop_is_closed(loop) != -ECHILD)
                        bad |= 8;
                if (loop_unref(loop) != NULL)
                        bad |= 2;
                close(result[0]);
                child_report(result[1], bad);
        }
        ck_assert_int_eq(r, 0);
        ck_assert_int_gt(f.child, 0);
        ck_assert_int_eq(close(result[1]), 0);
        assert_child_ok(f.child, result[0]);
        tu_assert_usable(loop);
        loop_unref(loop);
#endif
}
END_TEST

/* ---- handles used after their last reference ------------------------------------ */

#ifndef TU_ASAN
/* Handles that are all distinct: a slot handed out twice is how a stale
 * pointer comes to cancel somebody else's timer. */
static void assert_distinct_handles(loop_t *loop, int *count) {
        loop_handle_t *hs[8];

        for (int i = 0; i < 8; i++) {
                if (i % 2)
                        ck_assert_int_eq(loop_call_soon(loop, tu_count_cb, count, &hs[i]), 0);
                else
                        ck_assert_int_eq(loop_call_later_ns(loop, -1, tu_count_cb, count, &hs[i]), 0);
                for (int j = 0; j < i; j++)
                        ck_assert_ptr_ne(hs[i], hs[j]);
        }
        for (int i = 0; i < 8; i++)
                loop_handle_unref(hs[i]);
}

/*
 * The two orders in which a handle's last references go: the loop lets go
 * first (the callback ran, the user releases last), or the user releases
 * first and the loop last. Then the user releases once more.
 */
static void double_unrefs(loop_t *loop, int *count) {
        loop_handle_t *h = NULL;

        ck_assert_int_eq(loop_call_soon(loop, tu_count_cb, count, &h), 0);
        ck_assert_int_eq(loop_run_once(loop, 0), 1);
        ck_assert_ptr_null(loop_handle_unref(h));
        ck_assert_ptr_null(loop_handle_unref(h)); /* one too many */

        ck_assert_int_eq(loop_call_later_ns(loop, -1, tu_count_cb, count, &h), 0);
        ck_assert_ptr_null(loop_handle_unref(h));
        ck_assert_int_eq(loop_run_once(loop, 0), 1);
        ck_assert_ptr_null(loop_handle_unref(h)); /* one too many */
}
#endif

/*
 * Debug mode reports a reference count that would go below zero to the
 * exception handler and leaves the count alone; without debug mode it is
 * not reported, and not wrapped either. Either way the pool stays sound.
 * Under AddressSanitizer the slot is poisoned and ASan reports the misuse
 * first (test_double_unref_asan).
 */
START_TEST(test_double_unref_debug) {
#ifdef TU_ASAN
        printf("test_double_unref_debug: skipped under AddressSanitizer, which catches it first\n");
#else
        loop_t *loop = tu_loop_new();
        struct seen s = {0};
        int count = 0;

        ck_assert_int_eq(loop_set_exception_handler(loop, seen_handler, &s), 0);
        ck_assert_int_eq(loop_set_debug(loop, 1), 0);
        double_unrefs(loop, &count);
        ck_assert_int_eq(count, 2);
        ck_assert_int_eq(s.calls, 2);
        ck_assert_ptr_eq(s.loop, loop);
        ck_assert_msg(strstr(s.message, "loop_handle_unref"), "message: \"%s\"", s.message);
        ck_assert_int_eq(s.error, -EINVAL);
        ck_assert_int_eq(s.fd, -1);
        assert_distinct_handles(loop, &count);
        ck_assert_int_eq(loop_run_once(loop, 0), 8);
        ck_assert_int_eq(count, 10);

        ck_assert_int_eq(loop_set_debug(loop, 0), 0);
        double_unrefs(loop, &count);
        ck_assert_int_eq(s.calls, 2);
        assert_distinct_handles(loop, &count);
        ck_assert_int_eq(loop_run_once(loop, 0), 8);
        ck_assert_int_eq(count, 20);
        tu_assert_usable(loop);
        loop_unref(loop);
#endif
}
END_TEST

/*
 * Under AddressSanitizer a handle's slot in the loop's pool is poisoned
 * once its last reference is gone, whichever side let go last, and
 * unpoisoned when it is handed out again; a double unref is then an ASan
 * report (checked in a child, which ASan ends).
 */
START_TEST(test_double_unref_asan) {
#ifdef _WIN32
        TU_SKIP_ON_WINDOWS("fork (the double unref runs in a child)");
#else
#ifndef TU_ASAN
        printf("test_double_unref_asan: skipped, not built with AddressSanitizer\n");
#else
        loop_t *loop = tu_loop_new();
        loop_handle_t *h = NULL, *t = NULL;
        int count = 0, out[2], status;
        char report[4096];
        size_t n = 0;
        ssize_t k;
        pid_t pid;

        ck_assert_int_eq(loop_call_soon(loop, tu_count_cb, &count, &h), 0);
        ck_assert_int_eq(loop_call_later_ns(loop, -1, tu_count_cb, &count, &t), 0);
        ck_assert(!__asan_address_is_poisoned(h));
        ck_assert(!__asan_address_is_poisoned(t));
        loop_handle_unref(t); /* the loop lets go last */
        ck_assert(!__asan_address_is_poisoned(t));
        ck_assert_int_eq(loop_run_once(loop, 0), 2);
        ck_assert(__asan_address_is_poisoned(t));
        ck_assert(!__asan_address_is_poisoned(h)); /* still the user's */
        loop_handle_unref(h);                      /* the user lets go last */
        ck_assert(__asan_address_is_poisoned(h));

        /* Handed out again (both fast paths), the slots are usable. */
        ck_assert_int_eq(loop_call_later_ns(loop, -1, tu_count_cb, &count, &t), 0);
        ck_assert_int_eq(loop_call_soon(loop, tu_count_cb, &count, &h), 0);
        ck_assert(!__asan_address_is_poisoned(t));
        ck_assert(!__asan_address_is_poisoned(h));
        ck_assert_int_eq(loop_run_once(loop, 0), 2);
        ck_assert_int_eq(count, 4);
        loop_handle_unref(t);
        loop_handle_unref(h);

        ck_assert_int_eq(pipe(out), 0);
        fflush(NULL);
        pid = fork();
        ck_assert_int_ge(pid, 0);
        if (pid == 0) {
                alarm(10);
                dup2(out[1], STDERR_FILENO);
                close(out[0]);
                loop_handle_unref(h); /* one too many: ASan ends us here */
                _exit(0);
        }
        ck_assert_int_eq(close(out[1]), 0);
        while (n < sizeof(report) - 1 && (k = read(out[0], report + n, sizeof(report) - 1 - n)) > 0)
                n += (size_t) k;
        report[n] = '\0';
        ck_assert_int_eq(close(out[0]), 0);
        ck_assert_int_eq(waitpid(pid, &status, 0), pid);
        ck_assert_msg(!(WIFEXITED(status) && WEXITSTATUS(status) == 0),
                      "a double loop_handle_unref went unnoticed under ASan");
        ck_assert_msg(strstr(report, "use-after-poison"), "ASan said: %s", report);
        tu_assert_usable(loop);
        loop_unref(loop);
#endif
#endif
}
END_TEST

static Suite *errors_suite(void) {
        Suite *s = suite_create("errors");
        TCase *tc;

        tc = tu_tcase(s, "null");
        tcase_add_test(tc, test_null_loop);
        tcase_add_test(tc, test_null_handle_and_selector);
        tcase_add_test(tc, test_null_callback);

        tc = tu_tcase(s, "closed");
        tcase_add_test(tc, test_closed_loop);
        tcase_add_test(tc, test_closed_loop_exception_handler);

        tc = tu_tcase(s, "delays");
        tcase_add_test(tc, test_bad_delays);

        tc = tu_tcase(s, "strerror");
        tcase_add_test(tc, test_strerror);

        tc = tu_tcase(s, "signals");
        tcase_add_test(tc, test_platform_signals);

        tc = tu_tcase(s, "exception_handler");
        tcase_add_test(tc, test_exception_handler_set_get);
        tcase_add_test(tc, test_exception_handler_bad_context);
        tcase_add_test(tc, test_default_handler_output);
        tcase_add_test(tc, test_default_handler_from_callback);

        tc = tu_tcase(s, "debug");
        tcase_add_test(tc, test_debug_set_get);
        tcase_add_test(tc, test_slow_callback_duration);
        tcase_add_test(tc, test_slow_callback_warning);
        tcase_add_test(tc, test_slow_callback_warning_format);
        tcase_add_test(tc, test_slow_callback_warning_timer_and_io);
        tcase_add_test(tc, test_no_warning_without_debug);

        tc = tu_tcase(s, "fork");
        tcase_add_test(tc, test_fork_child_closes);
        tcase_add_test(tc, test_fork_child_unrefs);
        tcase_add_test(tc, test_fork_while_running);

        tc = tu_tcase(s, "misuse");
        tcase_add_test(tc, test_double_unref_debug);
        tcase_add_test(tc, test_double_unref_asan);
        return s;
}

int main(void) {
        return tu_run_suite(errors_suite());
}
