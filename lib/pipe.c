/* SPDX-License-Identifier: MIT */
/*
 * Pipe transports: asyncio's connect_read_pipe and connect_write_pipe
 * (_UnixReadPipeTransport, _UnixWritePipeTransport). The transport takes
 * over a pipe, a socket or a character device (a terminal), makes it
 * non-blocking, and moves its bytes with read(2) and write(2) on
 * readiness: on the proactor loop too, whose readers serve any
 * descriptor, where its receive and send operations take sockets only.
 *
 * A read pipe ends at EOF: eof_received, then connection_lost(0), as in
 * asyncio. A write pipe watches its descriptor for readability, which is
 * how the reader's going away shows (POLLERR on a pipe's write end):
 * connection_lost, with -EPIPE if bytes were still buffered; write_eof
 * closes it once the buffer is out. kqueue reports nothing for a pipe's
 * write end when the reader leaves: there the next write finds out
 * (EPIPE). Windows has no such transports here
 * (-EOPNOTSUPP): its loops take sockets only.
 */
#ifndef LOOP_WINDOWS
#include <sys/stat.h>
#endif

#include "transport.h"

static int connect_pipe(loop_t *loop, const struct loop_protocol_ops *ops, void *userdata, int fd, uint8_t kind,
                        loop_future_t **ret) {
#ifdef LOOP_WINDOWS
        (void) loop, (void) ops, (void) userdata, (void) fd, (void) kind, (void) ret;
        return -EOPNOTSUPP;
#else
        struct stat st;
        loop_future_t *f;
        int r = loop__usable(loop);

        if (r < 0)
                return r;
        return_if_fail(fd >= 0 && ret, -EINVAL);
        r = loop__protocol_check(ops);
        if (r < 0)
                return r;
        if (fstat(fd, &st) < 0)
                return -errno;
        /* asyncio: "Pipe transport is only for pipes, sockets and character devices". */
        if (!S_ISFIFO(st.st_mode) && !S_ISSOCK(st.st_mode) && !S_ISCHR(st.st_mode))
                return -EINVAL;
        if (loop__set_nonblock(fd) < 0)
                return -errno;
        r = loop_create_future(loop, &f);
        if (r < 0)
                return r;
        struct loop__transport_args a = {
                .fd = fd,
                .ops = ops,
                .userdata = userdata,
                .waiter = f,
                .kind = kind,
        };
        r = loop__transport_new_full(loop, &a, NULL);
        if (r < 0) {
                loop_future_unref(f);
                return r;
        }
        *ret = f;
        return 0;
#endif
}

LOOP_EXPORT int loop_connect_read_pipe(loop_t *loop, const struct loop_protocol_ops *ops, void *userdata, int fd,
                                       loop_future_t **ret) {
        return connect_pipe(loop, ops, userdata, fd, LOOP__T_READ_PIPE, ret);
}

LOOP_EXPORT int loop_connect_write_pipe(loop_t *loop, const struct loop_protocol_ops *ops, void *userdata, int fd,
                                        loop_future_t **ret) {
        return connect_pipe(loop, ops, userdata, fd, LOOP__T_WRITE_PIPE, ret);
}
