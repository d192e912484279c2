/* SPDX-License-Identifier: MIT */
/*
 * Stream transports: asyncio's _SelectorSocketTransport and
 * _ProactorSocketTransport, as one core over two drivers (transport.h).
 *
 * What the protocol sees is decided here, for both loop families:
 * - connection_made runs from the loop, first; reading starts after it,
 *   and the waiter (create_connection's future) completes after that, in
 *   the same callback (asyncio queues the three in that order).
 * - connection_lost runs exactly once, last, from the loop, and the fd is
 *   closed after it, as asyncio's _call_connection_lost closes the socket
 *   in its finally clause: the protocol may still ask for the peer's
 *   address there.
 * - Errors from the kernel only reach connection_lost; a protocol
 *   callback that "raised" goes to the exception handler as well (asyncio
 *   logs OSError at debug level and reports the rest).
 *
 * Ownership: an open transport holds a reference to itself, dropped when
 * connection_lost has run, and one to its loop. Every callback scheduled
 * for later holds one more (dropped by the loop's discard if loop_close()
 * drops the callback instead). A loop closed with transports open ends
 * them from its close hook: connection_lost(-ECANCELED), the fd closed.
 */
#include <stdlib.h>
#include <string.h>
#ifndef LOOP_WINDOWS
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#endif

#include "transport.h"

#ifndef SHUT_WR
#define SHUT_WR SD_SEND
#endif

/* asyncio's defaults: 64 KiB high-water mark, low = high / 4; 256 KiB
 * read at most per readiness (selector_events.max_size). */
#define DEFAULT_HIGH (64 * 1024)
#define RECV_BUFFER_SIZE (256 * 1024)

struct loop__transports {
        struct loop__close_hook hook;
        loop_transport_t *list;
        void *rbuf;
};

static void transports_close(loop_t *loop, struct loop__close_hook *hook);
static void call_connection_lost(loop_transport_t *t);
static int lost_cb(loop_t *loop, void *userdata);

/* ---- the write buffer ------------------------------------------------------ */

int loop__wbuf_append(struct loop__wbuf *b, const void *data, size_t n) {
        if (n == 0)
                return 0;
        if (b->len == 0)
                b->head = 0;
        if (b->head + b->len + n > b->cap && b->head > 0 && b->len + n <= b->cap) {
                /* Room at the front: move the rest down rather than grow.
                 * Amortized, every byte moves O(1) times. */
                memmove(b->base, b->base + b->head, b->len);
                b->head = 0;
        }
        if (b->head + b->len + n > b->cap) {
                size_t need = b->head + b->len + n;
                if (need < n)
                        return -ENOMEM;
                size_t cap = b->cap ? b->cap : 4096;
                while (cap < need) {
                        if (cap > SIZE_MAX / 2)
                                return -ENOMEM;
                        cap *= 2;
                }
                char *p = realloc(b->base, cap);
                if (!p)
                        return -ENOMEM;
                b->base = p;
                b->cap = cap;
        }
        memcpy(b->base + b->head + b->len, data, n);
        b->len += n;
        return 0;
}

void loop__wbuf_consume(struct loop__wbuf *b, size_t n) {
        b->head += n;
        b->len -= n;
        if (b->len == 0)
                b->head = 0;
}

void loop__wbuf_free(struct loop__wbuf *b) {
        free(b->base);
        *b = (struct loop__wbuf) { 0 };
}

/* ---- the loop's registry ---------------------------------------------------- */

static int registry_get(loop_t *loop, struct loop__transports **ret) {
        struct loop__transports *r = loop->transports;

        if (!r) {
                r = calloc(1, sizeof(*r));
                if (!r)
                        return -ENOMEM;
                r->hook.fn = transports_close;
                loop__add_close_hook(loop, &r->hook);
                loop->transports = r;
        }
        *ret = r;
        return 0;
}

/* One buffer per loop for the selector loop's receives: data_received
 * gets the bytes during the call only, and only the loop's thread
 * receives, so transports take turns with it. Its pages are touched only
 * as far as the largest read went. */
int loop__transport_recv_buffer(loop_t *loop, void **buf, size_t *size) {
        struct loop__transports *r = loop->transports;

        if (!r->rbuf) {
                r->rbuf = malloc(RECV_BUFFER_SIZE);
                if (!r->rbuf)
                        return -ENOMEM;
        }
        *buf = r->rbuf;
        *size = RECV_BUFFER_SIZE;
        return 0;
}

static void registry_remove(loop_transport_t *t) {
        struct loop__transports *r = t->loop->transports;

        if (!r)
                return;
        if (t->prev)
                t->prev->next = t->next;
        else if (r->list == t)
                r->list = t->next;
        if (t->next)
                t->next->prev = t->prev;
        t->prev = t->next = NULL;
}

/* ---- references -------------------------------------------------------------- */

LOOP_EXPORT loop_transport_t *loop_transport_ref(loop_transport_t *t) {
        if (t)
                t->n_ref++;
        return t;
}

static void transport_free(loop_transport_t *t) {
        if (t->fd >= 0 && !t->drv->foreign_fd) {
                /* Never started (its loop went first): the fd is ours. */
                t->drv->stop(t);
                loop__close_socket(t->fd);
        }
        registry_remove(t);
        if (t->drv->free)
                t->drv->free(t);
        loop__wbuf_free(&t->wbuf);
        loop_future_unref(t->waiter);
        loop_server_unref(t->server);
        loop_unref(t->loop);
        free(t);
}

LOOP_EXPORT loop_transport_t *loop_transport_unref(loop_transport_t *t) {
        if (t && --t->n_ref == 0)
                transport_free(t);
        return NULL;
}

static void unref_discard(void *userdata) {
        loop_transport_unref(userdata);
}

/* Run cb(t) from the loop, holding a reference meanwhile. */
static int schedule(loop_transport_t *t, loop_callback_t cb) {
        int r = loop__call_soon_discard(t->loop, cb, loop_transport_ref(t), unref_discard);

        if (r < 0)
                loop_transport_unref(t);
        return r;
}

/* ---- the protocol ------------------------------------------------------------ */

int loop__protocol_check(const struct loop_protocol_ops *ops) {
        struct loop_protocol_ops p = { 0 };

        return_if_fail(ops, -EINVAL);
        return_if_fail(ops->size >= offsetof(struct loop_protocol_ops, connection_made) + sizeof(void *), -EINVAL);
        memcpy(&p, ops, ops->size < sizeof(p) ? ops->size : sizeof(p));
        /* A buffered protocol has both halves. */
        return_if_fail(!p.get_buffer == !p.buffer_updated, -EINVAL);
        return 0;
}

/* The caller's table as one of ours: members its size does not reach are NULL. */
static int protocol_set(loop_transport_t *t, const struct loop_protocol_ops *ops, void *userdata) {
        struct loop_protocol_ops p = { .size = sizeof(p) };
        int r = loop__protocol_check(ops);

        if (r < 0)
                return r;
        memcpy(&p, ops, ops->size < sizeof(p) ? ops->size : sizeof(p));
        p.size = sizeof(p);
        t->proto = p;
        t->userdata = userdata;
        return 0;
}

bool loop__transport_buffered(const loop_transport_t *t) {
        return t->proto.get_buffer != NULL;
}

static void report(loop_transport_t *t, const char *what, int error) {
        char msg[128];

        snprintf(msg, sizeof(msg), "Fatal error: protocol.%s() call failed.", what);
        loop__report(t->loop, msg, error, NULL, t->fd);
}

/* asyncio's _force_close: drop what is buffered, stop every operation, and
 * have connection_lost(error) called from the loop. */
static void force_close(loop_transport_t *t, int error) {
        if (t->lost)
                return;
        if (t->sendfile)
                loop__sendfile_abort(t, error < 0 ? error : -ECANCELED);
        t->lost = true;
        t->closing = true;
        t->lost_error = error;
        t->reading = false;
        loop__wbuf_free(&t->wbuf);
        t->drv->stop(t);
        /* Out of memory is the only way this fails while the loop is
         * open (a closed loop ended its transports): better now than never. */
        if (schedule(t, lost_cb) < 0)
                call_connection_lost(t);
}

/* A protocol callback "raised": asyncio's _fatal_error for an exception
 * that is not an OSError. */
static void raised(loop_transport_t *t, const char *what, int error) {
        report(t, what, error);
        force_close(t, error);
}

void loop__transport_fatal(loop_transport_t *t, int error) {
        force_close(t, error);
}

static void maybe_pause_protocol(loop_transport_t *t) {
        if (t->writing_paused || loop_transport_get_write_buffer_size(t) <= t->high)
                return;
        t->writing_paused = true;
        if (t->proto.pause_writing) {
                int r = t->proto.pause_writing(t, t->userdata);
                if (r < 0)
                        report(t, "pause_writing", r);
        }
}

static void maybe_resume_protocol(loop_transport_t *t) {
        if (!t->writing_paused || loop_transport_get_write_buffer_size(t) > t->low)
                return;
        t->writing_paused = false;
        if (t->proto.resume_writing) {
                int r = t->proto.resume_writing(t, t->userdata);
                if (r < 0)
                        report(t, "resume_writing", r);
        }
}

void loop__transport_check_pause(loop_transport_t *t) {
        if (!t->lost)
                maybe_pause_protocol(t);
}

void loop__transport_received(loop_transport_t *t, const void *data, size_t n) {
        if (t->closing || !t->made)
                return;
        if (!t->proto.get_buffer) {
                if (t->proto.data_received) {
                        int r = t->proto.data_received(t, data, n, t->userdata);
                        if (r < 0)
                                raised(t, "data_received", r);
                }
                return;
        }
        /* A buffered protocol on a driver that received into its own
         * memory: asyncio's _feed_data_to_buffered_proto. */
        const char *p = data;
        while (n > 0 && !t->closing) {
                void *buf = NULL;
                size_t size = 0;
                int r = t->proto.get_buffer(t, n, &buf, &size, t->userdata);
                if (r < 0) {
                        raised(t, "get_buffer", r);
                        return;
                }
                if (!buf || size == 0) {
                        raised(t, "get_buffer", -EINVAL);
                        return;
                }
                size_t m = size < n ? size : n;
                memcpy(buf, p, m);
                r = t->proto.buffer_updated(t, m, t->userdata);
                if (r < 0) {
                        raised(t, "buffer_updated", r);
                        return;
                }
                p += m;
                n -= m;
        }
}

/* For a driver that receives straight into the protocol's memory: 0 and a
 * buffer, or the transport is closing (the error has been handled). */
int loop__transport_get_buffer(loop_transport_t *t, size_t hint, void **buf, size_t *size) {
        *buf = NULL;
        *size = 0;
        int r = t->proto.get_buffer(t, hint, buf, size, t->userdata);
        if (r >= 0 && (!*buf || *size == 0))
                r = -EINVAL;
        if (r < 0)
                raised(t, "get_buffer", r);
        return r < 0 ? r : 0;
}

void loop__transport_buffer_updated(loop_transport_t *t, size_t n) {
        int r = t->proto.buffer_updated(t, n, t->userdata);

        if (r < 0)
                raised(t, "buffer_updated", r);
}

void loop__transport_eof(loop_transport_t *t) {
        if (t->closing || !t->made)
                return;
        t->peer_eof = true;
        if (t->reading) {
                t->reading = false;
                (void) t->drv->set_reading(t, false);
        }
        int keep = 0;
        if (t->proto.eof_received)
                keep = t->proto.eof_received(t, t->userdata);
        if (keep < 0)
                raised(t, "eof_received", keep);
        else if (t->kind == LOOP__T_READ_PIPE)
                force_close(t, 0);      /* asyncio: a read pipe ends at EOF, whatever eof_received says */
        else if (keep == 0)
                loop_transport_close(t);
}

static void shutdown_write(loop_transport_t *t) {
        if (t->eof_sent)
                return;
        t->eof_sent = true;
        if (t->kind == LOOP__T_WRITE_PIPE) {
                /* A pipe's EOF is its closing (asyncio's write_eof). */
                force_close(t, 0);
                return;
        }
        if (shutdown(t->fd, SHUT_WR) < 0) {
#ifdef LOOP_WINDOWS
                int e = loop__errno_from_wsa(WSAGetLastError());
#else
                int e = errno;
#endif
                /* The peer already gone is connection_lost's news, not ours. */
                if (e != ENOTCONN)
                        force_close(t, -e);
        }
}

/* Closing, and everything written: the end, the driver's way if it has one. */
static void finish_close(loop_transport_t *t) {
        if (!t->drv->shutdown) {
                force_close(t, 0);
                return;
        }
        if (t->shutting)
                return;
        t->shutting = true;
        t->drv->shutdown(t);
}

/* The driver has given the kernel every byte, and nothing is in flight. */
void loop__transport_sent(loop_transport_t *t) {
        if (t->lost)
                return;
        if (t->sendfile) {
                loop__sendfile_step(t);
                if (t->sendfile || t->lost)
                        return;
        }
        maybe_resume_protocol(t);
        if (t->wbuf.len > 0 || t->drv->inflight(t) > 0)
                return;         /* resume_writing wrote more */
        if (t->closing) {
                /* Through the loop, not at once as asyncio does: a done
                 * callback of the driver may already be queued behind us,
                 * and it must find the transport still there. */
                finish_close(t);
        } else if (t->eof_wanted)
                shutdown_write(t);
}

/* ---- starting and ending --------------------------------------------------- */

static int start_cb(loop_t *loop, void *userdata) {
        loop_transport_t *t = userdata;

        (void) loop;
        if (t->waiter && loop_future_cancelled(t->waiter)) {
                /* create_connection was cancelled: the protocol never hears of it. */
                force_close(t, -ECANCELED);
        } else if (!t->lost) {
                t->made = true;
                int r = 0;
                if (t->proto.connection_made && !t->skip_made)
                        r = t->proto.connection_made(t, t->userdata);
                if (r < 0)
                        raised(t, "connection_made", r);
                else if (!t->closing && !t->paused) {
                        t->reading = true;
                        r = t->drv->start(t);
                        if (r < 0) {
                                t->reading = false;
                                force_close(t, r);
                        }
                }
                if (t->waiter && !loop_future_done(t->waiter) &&
                    loop_future_set_result(t->waiter, loop_transport_ref(t), unref_discard) < 0)
                        loop_transport_unref(t);
                /* The waiter holds us now: holding it too would be a cycle. */
                t->waiter = loop_future_unref(t->waiter);
        }
        loop_transport_unref(t);
        return 0;
}

static void call_connection_lost(loop_transport_t *t) {
        if (t->lost_done)
                return;
        t->lost_done = true;
        if (t->sendfile)
                loop__sendfile_abort(t, t->lost_error < 0 ? t->lost_error : -ECANCELED);
        if ((t->made || t->lost_always) && t->proto.connection_lost) {
                int r = t->proto.connection_lost(t, t->lost_error, t->userdata);
                if (r < 0)
                        report(t, "connection_lost", r);
        }
        if (t->waiter && !loop_future_done(t->waiter))
                (void) loop_future_cancel(t->waiter);
        t->waiter = loop_future_unref(t->waiter);
        if (t->fd >= 0 && !t->drv->foreign_fd)
                loop__close_socket(t->fd);
        t->fd = -1;
        registry_remove(t);
        if (t->server)
                loop__server_connection_gone(t->server, t);
        loop_transport_unref(t);        /* the transport's own */
}

void loop__transport_lost_now(loop_transport_t *t, int error) {
        if (!t->lost) {
                t->lost = t->closing = true;
                t->lost_error = error;
                t->reading = false;
                loop__wbuf_free(&t->wbuf);
                t->drv->stop(t);
        }
        call_connection_lost(t);
}

static int lost_cb(loop_t *loop, void *userdata) {
        loop_transport_t *t = userdata;

        (void) loop;
        call_connection_lost(t);
        loop_transport_unref(t);
        return 0;
}

static void transports_close(loop_t *loop, struct loop__close_hook *hook) {
        struct loop__transports *r = (struct loop__transports *) hook;
        bool child = loop__inherited(loop);

        while (r->list) {
                loop_transport_t *t = loop_transport_ref(r->list);
                registry_remove(t);
                if (child) {
                        /* A fork child letting go of its parent's loop: memory
                         * only; the fds stay as they are. */
                        t->fd = -1;
                        t->lost = t->lost_done = true;
                        loop_transport_unref(t);
                } else {
                        if (!t->lost) {
                                t->lost = t->closing = true;
                                t->lost_error = -ECANCELED;
                                t->reading = false;
                                loop__wbuf_free(&t->wbuf);
                                t->drv->stop(t);
                        }
                        call_connection_lost(t);
                }
                loop_transport_unref(t);
        }
        loop->transports = NULL;
        free(r->rbuf);
        free(r);
}

int loop__transport_new(loop_t *loop, int fd, const struct loop_protocol_ops *ops, void *userdata,
                        loop_server_t *server, loop_future_t *waiter, const struct loop__peer *peer,
                        loop_transport_t **ret) {
        struct loop__transport_args a = {
                .fd = fd,
                .ops = ops,
                .userdata = userdata,
                .server = server,
                .waiter = waiter,
                .peer = peer,
        };

        return loop__transport_new_full(loop, &a, ret);
}

int loop__transport_start(loop_transport_t *t) {
        if (!t->deferred)
                return 0;
        t->deferred = false;
        return schedule(t, start_cb);
}

int loop__transport_new_full(loop_t *loop, const struct loop__transport_args *a, loop_transport_t **ret) {
        struct loop__transports *reg;
        loop_transport_t *t;
        int r;

        r = registry_get(loop, &reg);
        if (r < 0)
                return r;
        t = calloc(1, sizeof(*t));
        if (!t)
                return -ENOMEM;
        t->n_ref = 1;
        t->fd = -1;
        t->kind = a->kind;
        if (a->drv)
                t->drv = a->drv;
        else if (a->kind != LOOP__T_STREAM || !loop__proactor_name(loop))
                t->drv = &loop__transport_sel;
        else
                t->drv = &loop__transport_pro;
        r = protocol_set(t, a->ops, a->userdata);
        if (r < 0) {
                free(t);
                return r;
        }
        t->loop = loop_ref(loop);
        t->high = DEFAULT_HIGH;
        t->low = DEFAULT_HIGH / 4;
        t->fd = a->fd;
        t->drv_state = a->drv_state;
        if (t->kind == LOOP__T_STREAM && !t->drv->foreign_fd) {
                /* asyncio sets TCP_NODELAY on every TCP transport: a
                 * protocol's small writes go out at once. Not TCP: it
                 * fails, and that is fine. */
                int on = 1;
                (void) setsockopt(t->fd, IPPROTO_TCP, TCP_NODELAY, (const void *) &on, sizeof(on));
        }
        /* A Unix socket's path may not fit: the socket is asked then. */
        if (a->peer && a->peer->len > 0 && (size_t) a->peer->len <= sizeof(t->peer)) {
                memcpy(&t->peer, a->peer->addr, a->peer->len);
                t->peer_len = a->peer->len;
        }
        t->skip_made = a->made;
        t->lost_always = a->lost_always;
        t->deferred = a->deferred;
        r = a->deferred ? 0 : schedule(t, start_cb);
        if (r < 0) {
                t->fd = -1;     /* the caller's still */
                t->drv_state = NULL;
                loop_transport_unref(t);
                return r;
        }
        loop_server_t *server = a->server;
        loop_future_t *waiter = a->waiter;
        t->next = reg->list;
        if (reg->list)
                reg->list->prev = t;
        reg->list = t;
        if (server) {
                t->server = loop_server_ref(server);
                loop__server_connection_add(server, t);
        }
        t->waiter = loop_future_ref(waiter);
        if (ret)
                *ret = t;
        return 0;
}

/* ---- the calls --------------------------------------------------------------- */

LOOP_EXPORT loop_t *loop_transport_get_loop(const loop_transport_t *t) {
        return t ? t->loop : NULL;
}

LOOP_EXPORT int loop_transport_get_fd(const loop_transport_t *t) {
        return_if_fail(t, -EINVAL);
        return t->fd >= 0 ? t->fd : -EBADF;
}

static int sockname(const loop_transport_t *t, struct sockaddr *addr, socklen_t *addrlen, bool peer) {
        return_if_fail(t && addr && addrlen, -EINVAL);
        if (t->fd < 0)
                return -EBADF;
        if (peer && t->peer_len > 0) {
                /* As getpeername(): truncated to *addrlen, which says the
                 * whole length. */
                memcpy(addr, &t->peer, (size_t) (*addrlen < t->peer_len ? *addrlen : t->peer_len));
                *addrlen = t->peer_len;
                return 0;
        }
        int r = peer ? getpeername(t->fd, addr, addrlen) : getsockname(t->fd, addr, addrlen);
        if (r < 0) {
#ifdef LOOP_WINDOWS
                return -loop__errno_from_wsa(WSAGetLastError());
#else
                return -errno;
#endif
        }
        return 0;
}

LOOP_EXPORT int loop_transport_get_peername(const loop_transport_t *t, struct sockaddr *addr, socklen_t *addrlen) {
        return sockname(t, addr, addrlen, true);
}

LOOP_EXPORT int loop_transport_get_sockname(const loop_transport_t *t, struct sockaddr *addr, socklen_t *addrlen) {
        return sockname(t, addr, addrlen, false);
}

LOOP_EXPORT int loop_transport_set_protocol(loop_transport_t *t, const struct loop_protocol_ops *ops, void *userdata) {
        return_if_fail(t, -EINVAL);
        return protocol_set(t, ops, userdata);
}

LOOP_EXPORT const struct loop_protocol_ops *loop_transport_get_protocol(const loop_transport_t *t, void **userdata) {
        if (!t)
                return NULL;
        if (userdata)
                *userdata = t->userdata;
        return &t->proto;
}

static int write_check(loop_transport_t *t) {
        return_if_fail(t, -EINVAL);
        int r = loop__usable(t->loop);
        if (r < 0)
                return r;
        if (t->kind == LOOP__T_READ_PIPE)
                return -EOPNOTSUPP;
        /* A write_eof during a sendfile waits for it: the fallback's own
         * writes go on until then (the caller's are -EBUSY). */
        if (t->eof_wanted && !t->sendfile)
                return -ESHUTDOWN;
        if (t->lost || t->shutting)
                return -EPIPE;
        return 0;
}

LOOP_EXPORT int loop_transport_write(loop_transport_t *t, const void *data, size_t size) {
        if (t && t->kind == LOOP__T_DATAGRAM)
                return loop_transport_sendto(t, data, size, NULL, 0);   /* a connected endpoint's */
        if (t && t->sendfile)
                return -EBUSY;          /* asyncio: "unable to write; sendfile is in progress" */
        return loop__transport_write(t, data, size);
}

int loop__transport_write(loop_transport_t *t, const void *data, size_t size) {
        int r = write_check(t);

        if (r < 0)
                return r;
        return_if_fail(data || size == 0, -EINVAL);
        if (size == 0)
                return 0;
        if (t->wbuf.len == 0 && t->drv->inflight(t) == 0) {
                /* Nothing queued: the driver sends what it can at once,
                 * from the caller's memory. */
                size_t n = t->drv->write(t, data, size);
                if (t->lost)
                        return 0;
                if (n == size) {
                        /* All taken, maybe into a send in flight (proactor). */
                        maybe_pause_protocol(t);
                        return 0;
                }
                data = (const char *) data + n;
                size -= n;
        }
        r = loop__wbuf_append(&t->wbuf, data, size);
        if (r < 0)
                return r;
        maybe_pause_protocol(t);
        return 0;
}

LOOP_EXPORT int loop_transport_writev(loop_transport_t *t, const struct loop_iovec *iov, size_t n) {
        if (t && t->kind == LOOP__T_DATAGRAM)
                return -EOPNOTSUPP;
        if (t && t->sendfile)
                return -EBUSY;
        int r = write_check(t);

        if (r < 0)
                return r;
        return_if_fail(iov || n == 0, -EINVAL);
        size_t total = 0;
        for (size_t i = 0; i < n; i++) {
                return_if_fail(iov[i].base || iov[i].len == 0, -EINVAL);
                if (total + iov[i].len < total)
                        return -EINVAL;
                total += iov[i].len;
        }
        if (total == 0)
                return 0;
        bool idle = t->wbuf.len == 0 && t->drv->inflight(t) == 0;
        size_t before = t->wbuf.len;
        for (size_t i = 0; i < n; i++) {
                r = loop__wbuf_append(&t->wbuf, iov[i].base, iov[i].len);
                if (r < 0) {
                        /* All or nothing. */
                        t->wbuf.len = before;
                        return r;
                }
        }
        if (idle)
                t->drv->flush(t);
        maybe_pause_protocol(t);
        return 0;
}

LOOP_EXPORT int loop_transport_write_eof(loop_transport_t *t) {
        return_if_fail(t, -EINVAL);
        int r = loop__usable(t->loop);
        if (r < 0)
                return r;
        if (t->drv->no_write_eof || t->kind == LOOP__T_READ_PIPE)
                return -EOPNOTSUPP;
        if (t->closing || t->eof_wanted)
                return 0;
        t->eof_wanted = true;
        /* After a sendfile under way too: sent() comes when it ends. */
        if (t->wbuf.len == 0 && t->drv->inflight(t) == 0 && !t->sendfile)
                shutdown_write(t);
        return 0;
}

LOOP_EXPORT int loop_transport_can_write_eof(const loop_transport_t *t) {
        return_if_fail(t, -EINVAL);
        return !t->drv->no_write_eof && t->kind != LOOP__T_READ_PIPE;
}

LOOP_EXPORT int loop_transport_close(loop_transport_t *t) {
        return_if_fail(t, -EINVAL);
        if (t->closing)
                return 0;
        int r = loop__usable(t->loop);
        if (r < 0)
                return r;
        t->closing = true;
        if (t->sendfile)
                loop__sendfile_abort(t, -ECANCELED);    /* what it queued still goes */
        if (t->reading) {
                t->reading = false;
                (void) t->drv->set_reading(t, false);
        }
        if (t->wbuf.len == 0 && t->drv->inflight(t) == 0)
                finish_close(t);
        return 0;
}

LOOP_EXPORT int loop_transport_abort(loop_transport_t *t) {
        return_if_fail(t, -EINVAL);
        if (t->lost)
                return 0;
        int r = loop__usable(t->loop);
        if (r < 0)
                return r;
        force_close(t, 0);
        return 0;
}

LOOP_EXPORT int loop_transport_is_closing(const loop_transport_t *t) {
        return_if_fail(t, -EINVAL);
        return t->closing;
}

LOOP_EXPORT int loop_transport_pause_reading(loop_transport_t *t) {
        return_if_fail(t, -EINVAL);
        if (t->kind == LOOP__T_WRITE_PIPE)
                return -EOPNOTSUPP;
        if (t->closing || t->paused)
                return 0;
        t->paused = true;
        if (t->reading) {
                t->reading = false;
                return t->drv->set_reading(t, false);
        }
        return 0;
}

LOOP_EXPORT int loop_transport_resume_reading(loop_transport_t *t) {
        return_if_fail(t, -EINVAL);
        if (t->kind == LOOP__T_WRITE_PIPE)
                return -EOPNOTSUPP;
        if (t->closing || !t->paused)
                return 0;
        int r = loop__usable(t->loop);
        if (r < 0)
                return r;
        t->paused = false;
        /* Before connection_made, start_cb starts reading; after an EOF
         * there is nothing more to read. */
        if (!t->made || t->peer_eof)
                return 0;
        t->reading = true;
        r = t->drv->set_reading(t, true);
        if (r < 0) {
                t->reading = false;
                force_close(t, r);
        }
        return 0;
}

LOOP_EXPORT int loop_transport_is_reading(const loop_transport_t *t) {
        return_if_fail(t, -EINVAL);
        return !t->paused && !t->closing && t->kind != LOOP__T_WRITE_PIPE;
}

LOOP_EXPORT int loop_transport_set_write_buffer_limits(loop_transport_t *t, size_t high, size_t low) {
        return_if_fail(t, -EINVAL);
        if (high == LOOP_TRANSPORT_DEFAULT_LIMIT) {
                if (low == LOOP_TRANSPORT_DEFAULT_LIMIT)
                        high = DEFAULT_HIGH;
                else if (low > (SIZE_MAX - 1) / 4)
                        return -EINVAL;
                else
                        high = 4 * low;
        }
        if (low == LOOP_TRANSPORT_DEFAULT_LIMIT)
                low = high / 4;
        return_if_fail(low <= high, -EINVAL);
        t->high = high;
        t->low = low;
        if (t->drv->limits)
                t->drv->limits(t);
        if (!t->lost)
                maybe_pause_protocol(t);
        return 0;
}

LOOP_EXPORT int loop_transport_get_write_buffer_limits(const loop_transport_t *t, size_t *low, size_t *high) {
        return_if_fail(t && low && high, -EINVAL);
        *low = t->low;
        *high = t->high;
        return 0;
}

LOOP_EXPORT size_t loop_transport_get_write_buffer_size(const loop_transport_t *t) {
        if (!t)
                return 0;
        return t->wbuf.len + (t->drv->buffered ? t->drv->buffered(t) : t->drv->inflight(t));
}
