/* SPDX-License-Identifier: MIT */
/*
 * The readiness driver of stream transports (asyncio's
 * _SelectorSocketTransport): a reader receives once per readiness, into
 * the loop's shared buffer or, for a buffered protocol, straight into the
 * protocol's memory; a write sends at once from the caller's memory and a
 * writer flushes the rest when the socket has room. Serves every loop that
 * has readers and writers; the selector loop uses it.
 */
#include <string.h>
#ifndef LOOP_WINDOWS
#include <unistd.h>
#endif

#include "transport.h"

#define RECV_FLAGS MSG_DONTWAIT
#define SEND_FLAGS MSG_DONTWAIT

static int sock_errno(void) {
#ifdef LOOP_WINDOWS
        return loop__errno_from_wsa(WSAGetLastError());
#else
        return errno;
#endif
}

static bool would_block(int e) {
        return e == EAGAIN || e == EWOULDBLOCK;
}

static ssize_t receive(loop_transport_t *t, int fd, void *buf, size_t size) {
#ifndef LOOP_WINDOWS
        if (t->kind != LOOP__T_STREAM)
                return read(fd, buf, size);
#endif
        return loop__recv(fd, buf, size, RECV_FLAGS);
}

static int on_readable(loop_t *loop, int fd, void *userdata) {
        loop_transport_t *t = userdata;
        void *buf;
        size_t size;
        ssize_t n;
        int r;

        (void) loop;
        if (t->kind == LOOP__T_WRITE_PIPE) {
                /* The write end is readable when the reader is gone
                 * (asyncio watches it for that): the end, with EPIPE if
                 * bytes were still to go. */
                loop__transport_fatal(t, t->wbuf.len > 0 ? -EPIPE : 0);
                return 0;
        }
        if (!t->reading)
                return 0;
        if (loop__transport_buffered(t))
                r = loop__transport_get_buffer(t, 0, &buf, &size);
        else
                r = loop__transport_recv_buffer(t->loop, &buf, &size);
        if (r < 0) {
                if (!t->closing)
                        loop__transport_fatal(t, r);
                return 0;
        }
        do
                n = receive(t, fd, buf, size);
        while (n < 0 && sock_errno() == EINTR);
        if (n > 0) {
                if (loop__transport_buffered(t))
                        loop__transport_buffer_updated(t, (size_t) n);
                else
                        loop__transport_received(t, buf, (size_t) n);
        } else if (n == 0)
                loop__transport_eof(t);
        else if (!would_block(sock_errno()))
                loop__transport_fatal(t, -sock_errno());
        return 0;
}

int loop__transport_watch(loop_transport_t *t, bool write, bool on, loop_io_callback_t cb) {
        bool *registered = write ? &t->writer_on : &t->reader_on;

        if (on == *registered || t->fd < 0)
                return 0;
        int r;
        if (write)
                r = on ? loop_add_writer(t->loop, t->fd, cb, t) : loop_remove_writer(t->loop, t->fd);
        else
                r = on ? loop_add_reader(t->loop, t->fd, cb, t) : loop_remove_reader(t->loop, t->fd);
        if (r < 0)
                return r;
        *registered = on;
        return 0;
}

static int set_reading(loop_transport_t *t, bool on) {
        return loop__transport_watch(t, false, on, on_readable);
}

static int start(loop_transport_t *t) {
        return set_reading(t, true);
}

static int on_writable(loop_t *loop, int fd, void *userdata);

static void set_writing(loop_transport_t *t, bool on) {
        int r = loop__transport_watch(t, true, on, on_writable);

        if (r < 0 && on)
                loop__transport_fatal(t, r);
}

/* Send what the socket takes now: the count, or -1 after a fatal error. */
static ssize_t send_now(loop_transport_t *t, const void *data, size_t n) {
        ssize_t k;

        do {
#ifndef LOOP_WINDOWS
                if (t->kind != LOOP__T_STREAM)
                        k = loop__write_nosigpipe(t->fd, data, n);
                else
#endif
                        k = loop__send(t->fd, data, n, SEND_FLAGS);
        } while (k < 0 && sock_errno() == EINTR);
        if (k >= 0)
                return k;
        if (would_block(sock_errno()))
                return 0;
        loop__transport_fatal(t, -sock_errno());
        return -1;
}

static size_t sel_write(loop_transport_t *t, const void *data, size_t n) {
        ssize_t k = send_now(t, data, n);

        if (k < 0)
                return n;
        if ((size_t) k < n)
                set_writing(t, true);
        return (size_t) k;
}

static void flush(loop_transport_t *t) {
        ssize_t k = send_now(t, t->wbuf.base + t->wbuf.head, t->wbuf.len);

        if (k < 0)
                return;
        loop__wbuf_consume(&t->wbuf, (size_t) k);
        set_writing(t, t->wbuf.len > 0);
        /* May resume the protocol, which may write more; may end a close. */
        loop__transport_sent(t);
}

static int on_writable(loop_t *loop, int fd, void *userdata) {
        loop_transport_t *t = userdata;

        (void) loop;
        (void) fd;
        if (t->wbuf.len == 0) {
                set_writing(t, false);
                if (t->sendfile)
                        loop__sendfile_step(t);         /* the kernel's copy has room again */
                return 0;
        }
        flush(t);
        return 0;
}

void loop__transport_sel_want_write(loop_transport_t *t) {
        set_writing(t, true);
}

static size_t inflight(const loop_transport_t *t) {
        (void) t;
        return 0;
}

static void stop(loop_transport_t *t) {
        (void) set_reading(t, false);
        set_writing(t, false);
}

const struct loop__transport_driver loop__transport_sel = {
        .start = start,
        .set_reading = set_reading,
        .write = sel_write,
        .flush = flush,
        .inflight = inflight,
        .stop = stop,
};
