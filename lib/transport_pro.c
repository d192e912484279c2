/* SPDX-License-Identifier: MIT */
/*
 * The completion driver of stream transports (asyncio's
 * _ProactorSocketTransport), on the proactor loop's own socket operations
 * (loop->impl->sock_call): io_uring's RECV and SEND, IOCP's WSARecv and
 * WSASend.
 *
 * - One receive is in flight while the transport reads, into a buffer of
 *   the transport's (the kernel writes into it meanwhile, so never the
 *   protocol's memory, which could be gone by the time a cancellation
 *   lands). Paused with a receive in flight, its bytes wait in the buffer
 *   and are delivered after resume_reading(), from the loop.
 * - One send is in flight at a time. A write with nothing queued goes
 *   straight to a send, which copies only what the kernel did not take at
 *   once; writes meanwhile gather in the write buffer, which the next send
 *   takes over whole (give): every byte is copied once at most.
 *
 * Done callbacks hold no reference: the transport outlives them, because
 * stop() removes the callbacks of pending operations, and the end of a
 * transport (lost_cb) is always queued behind any done callback that
 * already was.
 */
#include <stdlib.h>
#include <string.h>

#include "transport.h"

#define RECV_SIZE (64 * 1024)   /* asyncio's proactor reads 64 KiB at most, too */

struct pro {
        loop_future_t *rf, *wf;         /* the receive, the send in flight */
        char *rbuf;
        size_t pending;                 /* bytes in rbuf received while paused */
        size_t inflight;                /* bytes the send in flight carries */
        bool kick;                      /* deliver_cb is queued */
};

static struct pro *pro(loop_transport_t *t) {
        if (!t->drv_state)
                t->drv_state = calloc(1, sizeof(struct pro));
        return t->drv_state;
}

static int on_recv(loop_future_t *f, void *userdata);

/* drained: the socket was just read empty of what it had (no recv() first). */
static int issue_recv(loop_transport_t *t, bool drained) {
        struct pro *p = pro(t);
        loop_future_t *f;
        int r;

        if (!p)
                return -ENOMEM;
        if (!p->rbuf) {
                /* Zeroed for valgrind, which cannot see io_uring write it. */
                p->rbuf = calloc(1, RECV_SIZE);
                if (!p->rbuf)
                        return -ENOMEM;
        }
        struct loop__sock_call call = {
                .kind = LOOP__SOCK_RECV_INTO,
                .fd = t->fd,
                .buf = p->rbuf,
                .size = RECV_SIZE,
                .no_try = drained,
        };
        r = t->loop->impl->sock_call(t->loop, &call, &f);
        if (r < 0)
                return r;
        r = loop_future_add_done_callback(f, on_recv, t);
        if (r < 0) {
                (void) loop_future_cancel(f);
                loop_future_unref(f);
                return r;
        }
        p->rf = f;
        return 0;
}

static void deliver(loop_transport_t *t, size_t n) {
        struct pro *p = t->drv_state;

        if (n == 0) {
                loop__transport_eof(t);
                return;
        }
        loop__transport_received(t, p->rbuf, n);
        if (t->reading && !p->rf) {
                /* Less than a full buffer came: the socket is empty now. */
                int r = issue_recv(t, n < RECV_SIZE);
                if (r < 0)
                        loop__transport_fatal(t, r);
        }
}

static int on_recv(loop_future_t *f, void *userdata) {
        loop_transport_t *t = userdata;
        struct pro *p = t->drv_state;
        void *result;

        if (f != p->rf)
                return 0;       /* stopped meanwhile; f is not ours any more */
        p->rf = NULL;
        int r = loop_future_result(f, &result);
        size_t n = r == 0 ? ((struct loop_sock_result *) result)->nbytes : 0;
        loop_future_unref(f);
        if (t->closing)
                return 0;
        if (r == -ECANCELED)
                return 0;
        if (r < 0) {
                loop__transport_fatal(t, r);
                return 0;
        }
        /* Paused: kept for resume_reading(), an EOF too (as SIZE_MAX). */
        if (!t->reading) {
                p->pending = n ? n : SIZE_MAX;
                return 0;
        }
        deliver(t, n);
        return 0;
}

static int deliver_cb(loop_t *loop, void *userdata) {
        loop_transport_t *t = userdata;
        struct pro *p = t->drv_state;

        (void) loop;
        p->kick = false;
        if (t->closing || !t->reading || !p->pending) {
                loop_transport_unref(t);
                return 0;
        }
        size_t n = p->pending == SIZE_MAX ? 0 : p->pending;
        p->pending = 0;
        deliver(t, n);
        loop_transport_unref(t);
        return 0;
}

static void unref_discard(void *userdata) {
        loop_transport_unref(userdata);
}

static int set_reading(loop_transport_t *t, bool on) {
        struct pro *p = pro(t);

        if (!p)
                return -ENOMEM;
        if (!on)
                return 0;       /* the receive in flight, if any, waits in rbuf */
        if (p->pending) {
                /* Not from inside resume_reading(): from the loop. */
                if (p->kick)
                        return 0;
                int r = loop__call_soon_discard(t->loop, deliver_cb, loop_transport_ref(t), unref_discard);
                if (r < 0) {
                        loop_transport_unref(t);
                        return r;
                }
                p->kick = true;
                return 0;
        }
        return p->rf ? 0 : issue_recv(t, false);
}

static int start(loop_transport_t *t) {
        return set_reading(t, true);
}

static int on_sent(loop_future_t *f, void *userdata);

/* Send data (size n); give: data is t->wbuf's block, which the send takes. */
static void issue_send(loop_transport_t *t, const void *data, size_t n, void *give) {
        struct pro *p = pro(t);
        loop_future_t *f;
        int r;

        if (!p) {
                free(give);
                loop__transport_fatal(t, -ENOMEM);
                return;
        }
        struct loop__sock_call call = {
                .kind = LOOP__SOCK_SENDALL,
                .fd = t->fd,
                .data = data,
                .size = n,
                .give = give,
        };
        r = t->loop->impl->sock_call(t->loop, &call, &f);
        if (r < 0) {
                free(give);
                loop__transport_fatal(t, r);
                return;
        }
        r = loop_future_add_done_callback(f, on_sent, t);
        if (r < 0) {
                (void) loop_future_cancel(f);
                loop_future_unref(f);
                loop__transport_fatal(t, r);
                return;
        }
        p->wf = f;
        p->inflight = n;
}

static size_t pro_write(loop_transport_t *t, const void *data, size_t n) {
        issue_send(t, data, n, NULL);
        return n;
}

static void flush(loop_transport_t *t) {
        struct loop__wbuf *b = &t->wbuf;

        if (b->head > 0) {
                /* Only the selector driver consumes part of the buffer;
                 * kept correct all the same. */
                memmove(b->base, b->base + b->head, b->len);
                b->head = 0;
        }
        char *block = b->base;
        size_t n = b->len;
        *b = (struct loop__wbuf) { 0 };
        issue_send(t, block, n, block);
}

static int on_sent(loop_future_t *f, void *userdata) {
        loop_transport_t *t = userdata;
        struct pro *p = t->drv_state;

        if (f != p->wf)
                return 0;
        p->wf = NULL;
        p->inflight = 0;
        int r = loop_future_error(f);
        loop_future_unref(f);
        if (t->lost)
                return 0;
        if (r < 0) {
                loop__transport_fatal(t, r);
                return 0;
        }
        if (t->wbuf.len > 0)
                flush(t);
        loop__transport_sent(t);
        return 0;
}

static size_t inflight(const loop_transport_t *t) {
        const struct pro *p = t->drv_state;

        return p ? p->inflight : 0;
}

static void drop(loop_transport_t *t, loop_future_t **fp, loop_future_callback_t cb) {
        loop_future_t *f = *fp;

        if (!f)
                return;
        *fp = NULL;
        (void) loop_future_remove_done_callback(f, cb, t);
        /* A receive's cancellation waits for the kernel to let go of rbuf. */
        (void) loop_future_cancel(f);
        loop_future_unref(f);
}

static void stop(loop_transport_t *t) {
        struct pro *p = t->drv_state;

        if (!p)
                return;
        drop(t, &p->rf, on_recv);
        drop(t, &p->wf, on_sent);
        p->inflight = 0;
        p->pending = 0;
}

static void pro_free(loop_transport_t *t) {
        struct pro *p = t->drv_state;

        if (!p)
                return;
        free(p->rbuf);
        free(p);
        t->drv_state = NULL;
}

const struct loop__transport_driver loop__transport_pro = {
        .start = start,
        .set_reading = set_reading,
        .write = pro_write,
        .flush = flush,
        .inflight = inflight,
        .stop = stop,
        .free = pro_free,
};
