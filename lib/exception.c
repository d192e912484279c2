/* SPDX-License-Identifier: MIT */
/*
 * Errors raised by callbacks (asyncio's exception handler) and debug mode
 * (slow-callback warnings are emitted by handle.c where callbacks run).
 */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "internal.h"

void loop__report(loop_t *loop, const char *message, int error, loop_handle_t *handle, int fd) {
        struct loop_exception_context ctx = {
                .size = sizeof(ctx),
                .message = message,
                .error = error,
                .handle = handle,
                .fd = fd,
        };
        loop_call_exception_handler(loop, &ctx);
}

LOOP_EXPORT int loop_set_exception_handler(loop_t *loop, loop_exception_handler_t handler, void *userdata) {
        int r = loop__usable(loop);

        if (r < 0)
                return r;
        loop->exception_handler = handler;
        loop->exception_userdata = handler ? userdata : NULL;
        return 0;
}

LOOP_EXPORT loop_exception_handler_t loop_get_exception_handler(const loop_t *loop, void **userdata) {
        if (!loop)
                return NULL;
        if (userdata)
                *userdata = loop->exception_userdata;
        return loop->exception_handler;
}

/* Contexts from older callers may be shorter; the fields up to message are
 * required. Copies what the caller has into a full-size context. */
static int read_context(const struct loop_exception_context *context, struct loop_exception_context *ctx) {
        size_t min = offsetof(struct loop_exception_context, message) + sizeof(const char *);

        return_if_fail(context && context->size >= min && context->message, -EINVAL);
        *ctx = (struct loop_exception_context) { .fd = -1 };
        memcpy(ctx, context, context->size < sizeof(*ctx) ? context->size : sizeof(*ctx));
        ctx->size = sizeof(*ctx);
        return 0;
}

LOOP_EXPORT int loop_call_exception_handler(loop_t *loop, const struct loop_exception_context *context) {
        int r = loop__usable(loop);

        if (r < 0)
                return r;
        struct loop_exception_context ctx;
        r = read_context(context, &ctx);
        if (r < 0)
                return r;

        if (loop->exception_handler)
                loop->exception_handler(loop, &ctx, loop->exception_userdata);
        else
                loop_default_exception_handler(loop, &ctx);
        return 0;
}

LOOP_EXPORT int loop_default_exception_handler(loop_t *loop, const struct loop_exception_context *context) {
        int r = loop__usable(loop);

        if (r < 0)
                return r;
        struct loop_exception_context ctx;
        r = read_context(context, &ctx);
        if (r < 0)
                return r;

        char fd_part[32] = "", handle_part[48] = "";
        if (ctx.fd >= 0)
                snprintf(fd_part, sizeof(fd_part), " (fd %d)", ctx.fd);
        if (ctx.handle)
                /* Not %p, whose form is the C library's ("0x..." on glibc,
                 * bare digits on Windows): one form everywhere. */
                snprintf(handle_part, sizeof(handle_part), " (handle 0x%" PRIxPTR ")", (uintptr_t) ctx.handle);
        /* One fprintf, so lines from several threads do not interleave. */
        fprintf(stderr, "libloop: %s%s%s%s%s\n", ctx.message, ctx.error ? ": " : "",
                ctx.error ? loop_strerror(ctx.error) : "", fd_part, handle_part);
        return 0;
}

LOOP_EXPORT int loop_set_debug(loop_t *loop, int enabled) {
        int r = loop__usable(loop);

        if (r < 0)
                return r;
        loop__set_debug(loop, enabled != 0);
        return 0;
}

LOOP_EXPORT int loop_get_debug(const loop_t *loop) {
        return_if_fail(loop, -EINVAL);
        return loop->debug;
}

LOOP_EXPORT int loop_set_slow_callback_duration(loop_t *loop, double seconds) {
        int64_t ns;
        int r = loop__usable(loop);

        if (r < 0)
                return r;
        return_if_fail(seconds >= 0, -EINVAL);
        r = loop__seconds_to_ns(seconds, &ns);
        if (r < 0)
                return r;
        loop->slow_callback_ns = ns;
        return 0;
}

LOOP_EXPORT double loop_get_slow_callback_duration(const loop_t *loop) {
        if (!loop)
                return NAN;
        return (double) loop->slow_callback_ns / 1e9;
}
