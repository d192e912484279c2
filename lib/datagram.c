/* SPDX-License-Identifier: MIT */
/*
 * Datagram endpoints: asyncio's create_datagram_endpoint, its
 * _SelectorDatagramTransport and DatagramProtocol.
 *
 * The endpoint's socket is made in the executor: resolving the local and
 * remote names, bind() and connect() are blocking calls asyncio awaits,
 * and one job does them all. The job leaves the socket in its argument;
 * the argument's free function, which the executor runs in the loop's
 * thread once the job is over (or from loop_close()), turns it into the
 * transport, or closes it when the caller's future was cancelled
 * meanwhile or the loop closed.
 *
 * The transport is the stream transports' core (transport.c) with a driver
 * of its own: the core keeps the protocol order, closing and the water
 * marks; the driver keeps a queue of whole datagrams, each with its
 * address, which a writer sends in order when the socket has room (the
 * core's byte buffer cannot keep their boundaries). It works on readiness
 * on both loop families (the proactor loop serves readers and writers).
 * A datagram is sent whole or queued whole; an error on one goes to
 * error_received and the endpoint stays, as in asyncio.
 */
#include <stdlib.h>
#include <string.h>
#ifndef LOOP_WINDOWS
#include <netdb.h>
#endif

#include "transport.h"

struct dgram_item {
        struct dgram_item *next;
        size_t len;
        socklen_t addrlen;
        struct sockaddr_storage addr;
        char data[];
};

struct dgram {
        struct loop_datagram_protocol_ops ops;
        struct dgram_item *head, *tail;
        size_t queued;                  /* bytes waiting */
        bool connected;                 /* a remote address was given: sendto() takes none */
};

/* ---- the driver ----------------------------------------------------------------- */

static int sock_errno(void) {
#ifdef LOOP_WINDOWS
        return loop__errno_from_wsa(WSAGetLastError());
#else
        return errno;
#endif
}

static bool would_block(int e) {
        return e == EAGAIN || e == EWOULDBLOCK || e == ENOBUFS;
}

static void error_received(loop_transport_t *t, int error) {
        struct dgram *d = t->drv_state;

        if (!d->ops.error_received)
                return;
        int r = d->ops.error_received(t, error, t->userdata);
        if (r < 0)
                loop__report(t->loop, "Fatal error: protocol.error_received() call failed.", r, NULL, t->fd);
}

static int on_readable(loop_t *loop, int fd, void *userdata) {
        loop_transport_t *t = userdata;
        struct dgram *d = t->drv_state;
        struct sockaddr_storage addr;
        socklen_t addrlen = sizeof(addr);
        void *buf;
        size_t size;
        ssize_t n;

        (void) loop;
        if (!t->reading)
                return 0;
        int r = loop__transport_recv_buffer(t->loop, &buf, &size);
        if (r < 0) {
                loop__transport_fatal(t, r);    /* not left ready, to spin */
                return 0;
        }
        do
                n = loop__recvfrom(fd, buf, size, MSG_DONTWAIT, (struct sockaddr *) &addr, &addrlen);
        while (n < 0 && sock_errno() == EINTR);
        if (n < 0) {
                int e = sock_errno();
                if (!would_block(e))
                        error_received(t, -e);  /* an ICMP error of an earlier datagram */
                return 0;
        }
        if (d->ops.datagram_received) {
                r = d->ops.datagram_received(t, buf, (size_t) n, addrlen ? (struct sockaddr *) &addr : NULL,
                                             addrlen, t->userdata);
                if (r < 0) {
                        loop__report(t->loop, "Fatal error: protocol.datagram_received() call failed.", r, NULL,
                                     t->fd);
                        loop__transport_fatal(t, r);
                }
        }
        return 0;
}

static int set_reading(loop_transport_t *t, bool on) {
        return loop__transport_watch(t, false, on, on_readable);
}

static int start(loop_transport_t *t) {
        return set_reading(t, true);
}

/* One datagram: 1 sent (or failed, told to error_received), 0 no room. */
static int send_one(loop_transport_t *t, const void *data, size_t len, const struct sockaddr *addr,
                    socklen_t addrlen) {
        ssize_t n;

        do
                n = loop__sendto(t->fd, data, len, MSG_DONTWAIT, addr, addrlen);
        while (n < 0 && sock_errno() == EINTR);
        if (n >= 0)
                return 1;
        int e = sock_errno();
        if (would_block(e))
                return 0;
        error_received(t, -e);
        return 1;
}

static int on_writable(loop_t *loop, int fd, void *userdata);

static void set_writing(loop_transport_t *t, bool on) {
        int r = loop__transport_watch(t, true, on, on_writable);

        if (r < 0 && on)
                loop__transport_fatal(t, r);
}

static void flush(loop_transport_t *t) {
        struct dgram *d = t->drv_state;

        while (d->head && !t->lost) {
                struct dgram_item *it = d->head;
                if (!send_one(t, it->data, it->len, it->addrlen ? (struct sockaddr *) &it->addr : NULL, it->addrlen))
                        break;
                d->head = it->next;
                if (!d->head)
                        d->tail = NULL;
                d->queued -= it->len;
                free(it);
        }
        if (t->lost)
                return;
        set_writing(t, d->head != NULL);
        /* Resumes the protocol at the low mark; ends a close once empty. */
        loop__transport_sent(t);
}

static int on_writable(loop_t *loop, int fd, void *userdata) {
        (void) loop;
        (void) fd;
        flush(userdata);
        return 0;
}

/* The core's byte path is not used: every datagram comes through sendto(). */
static size_t write_bytes(loop_transport_t *t, const void *data, size_t n) {
        (void) t;
        (void) data;
        return n;
}

static size_t inflight(const loop_transport_t *t) {
        const struct dgram *d = t->drv_state;

        return d ? d->queued : 0;
}

static void stop(loop_transport_t *t) {
        struct dgram *d = t->drv_state;

        (void) set_reading(t, false);
        set_writing(t, false);
        while (d && d->head) {
                struct dgram_item *it = d->head;
                d->head = it->next;
                free(it);
        }
        if (d) {
                d->tail = NULL;
                d->queued = 0;
        }
}

static void dgram_free(loop_transport_t *t) {
        free(t->drv_state);
        t->drv_state = NULL;
}

static const struct loop__transport_driver dgram_driver = {
        .start = start,
        .set_reading = set_reading,
        .write = write_bytes,
        .flush = flush,
        .inflight = inflight,
        .stop = stop,
        .free = dgram_free,
        .no_write_eof = true,
};

LOOP_EXPORT int loop_transport_sendto(loop_transport_t *t, const void *data, size_t size, const struct sockaddr *addr,
                                      socklen_t addrlen) {
        return_if_fail(t && (data || size == 0), -EINVAL);
        if (t->drv != &dgram_driver)
                return -EOPNOTSUPP;     /* a stream has no datagrams */
        int r = loop__usable(t->loop);
        if (r < 0)
                return r;
        struct dgram *d = t->drv_state;
        if (addr && (addrlen <= 0 || (size_t) addrlen > sizeof(struct sockaddr_storage)))
                return -EINVAL;
        if (t->lost || t->closing)
                return -EPIPE;
        /* asyncio: a connected endpoint takes no other address, an
         * unconnected one needs one. */
        if (d->connected && addr)
                return -EISCONN;
        if (!d->connected && !addr)
                return -EDESTADDRREQ;
        if (!d->head && send_one(t, data, size, addr, addrlen))
                return 0;
        struct dgram_item *it = malloc(sizeof(*it) + (size ? size : 1));
        if (!it)
                return -ENOMEM;
        it->next = NULL;
        it->len = size;
        it->addrlen = addr ? addrlen : 0;
        if (addr)
                memcpy(&it->addr, addr, addrlen);
        memcpy(it->data, data, size);
        if (d->tail)
                d->tail->next = it;
        else
                d->head = it;
        d->tail = it;
        d->queued += size;
        set_writing(t, true);
        /* The water marks count queued bytes, as asyncio's. */
        loop__transport_check_pause(t);
        return 0;
}

/* ---- making one ------------------------------------------------------------------ */

struct endpoint_job {
        loop_t *loop;
        loop_future_t *result;          /* the caller's */
        loop_future_t *job;             /* the executor's, until the job is over */
        struct loop_datagram_protocol_ops ops;
        void *userdata;
        struct loop_datagram_options opts;
        char *local_host, *local_port, *remote_host, *remote_port;
        /* Written by the worker, read in free_arg (ordered by the executor's post). */
        int fd;
        int error;
        bool connected;
        bool result_cancelled;          /* the caller cancelled result: its cancel completes it */
};

static int set_opt(int fd, int name) {
        int on = 1;

        return setsockopt(fd, SOL_SOCKET, name, (const void *) &on, sizeof(on)) < 0 ? -sock_errno() : 0;
}

/* Worker thread: resolve, make the socket, bind, connect. */
static int endpoint_run(void *arg, void **result) {
        struct endpoint_job *j = arg;
        struct addrinfo hints = {
                .ai_family = j->opts.family,
                .ai_socktype = SOCK_DGRAM,
                .ai_flags = j->opts.flags,
        };
        struct addrinfo *local = NULL, *remote = NULL;
        int family = j->opts.family, r = 0, fd = -1;

        *result = NULL;
        if (j->remote_host || j->remote_port) {
                r = getaddrinfo(j->remote_host, j->remote_port, &hints, &remote);
                if (r != 0) {
                        r = loop__eai_to_errno(r, errno);
                        goto out;
                }
                family = remote->ai_family;
        }
        if (j->local_host || j->local_port) {
                struct addrinfo lh = hints;
                lh.ai_flags |= AI_PASSIVE;
                lh.ai_family = family;
                r = getaddrinfo(j->local_host, j->local_port, &lh, &local);
                if (r != 0) {
                        r = loop__eai_to_errno(r, errno);
                        goto out;
                }
                family = local->ai_family;
        }
        if (family == AF_UNSPEC)
                family = AF_INET;       /* neither address: asyncio needs a family; IPv4 */
        r = 0;
        /* First address of each that fits the family (asyncio tries pairs). */
        const struct addrinfo *la = local, *ra = remote;
        while (la && la->ai_family != family)
                la = la->ai_next;
        while (ra && ra->ai_family != family)
                ra = ra->ai_next;
        if ((local && !la) || (remote && !ra)) {
                r = -EADDRNOTAVAIL;
                goto out;
        }
        fd = loop__socket_nonblock(family, SOCK_DGRAM, 0);
        if (fd < 0) {
                r = fd;
                fd = -1;
                goto out;
        }
        if (j->opts.reuse_port > 0) {
#ifdef SO_REUSEPORT
                r = set_opt(fd, SO_REUSEPORT);
#else
                r = -EOPNOTSUPP;
#endif
        }
        if (r == 0 && j->opts.allow_broadcast > 0)
                r = set_opt(fd, SO_BROADCAST);
        if (r == 0 && la && bind(fd, la->ai_addr, (socklen_t) la->ai_addrlen) < 0)
                r = -sock_errno();
        if (r == 0 && ra) {
                if (loop__connect(fd, ra->ai_addr, (socklen_t) ra->ai_addrlen) < 0)
                        r = -sock_errno();
                else
                        j->connected = true;
        }
out:
        if (local)
                freeaddrinfo(local);
        if (remote)
                freeaddrinfo(remote);
        if (r < 0 && fd >= 0) {
                loop__close_socket(fd);
                fd = -1;
        }
        j->fd = fd;
        j->error = r;
        return 0;
}

static void endpoint_cancelled(loop_future_t *f, void *data) {
        struct endpoint_job *j = data;

        (void) f;
        j->result_cancelled = true;
        if (j->job) {
                /* A queued job never runs: the executor frees it, and j
                 * with it (endpoint_done), inside this cancel; whoever
                 * cancels holds a reference (executor.c). */
                loop_future_t *job = loop_future_ref(j->job);
                (void) loop_future_cancel(job);
                loop_future_unref(job);
        }
}

static int make_transport(struct endpoint_job *j) {
        struct dgram *d = calloc(1, sizeof(*d));

        if (!d)
                return -ENOMEM;
        d->ops = j->ops;
        d->connected = j->connected;
        /* The core calls the members both tables share. */
        struct loop_protocol_ops core = {
                .size = sizeof(core),
                .connection_made = j->ops.connection_made,
                .connection_lost = j->ops.connection_lost,
                .pause_writing = j->ops.pause_writing,
                .resume_writing = j->ops.resume_writing,
        };
        struct loop__transport_args a = {
                .fd = j->fd,
                .ops = &core,
                .userdata = j->userdata,
                .waiter = j->result,
                .drv = &dgram_driver,
                .drv_state = d,
                .kind = LOOP__T_DATAGRAM,
        };
        int r = loop__transport_new_full(j->loop, &a, NULL);
        if (r < 0)
                free(d);
        return r;
}

/* Loop thread, once the job is over (or loop_close()): the endpoint, or its end. */
static void endpoint_done(void *arg) {
        struct endpoint_job *j = arg;
        int r = j->error;

        loop__future_on_cancel(j->result, NULL, NULL);
        j->job = loop_future_unref(j->job);
        if (j->fd >= 0) {
                if (j->loop->closed || j->result_cancelled || loop_future_done(j->result))
                        r = -ECANCELED;
                else
                        r = make_transport(j);
                if (r < 0)
                        loop__close_socket(j->fd);
        } else if (r == 0)
                r = -ECANCELED;         /* the job never ran */
        if (r < 0 && !j->result_cancelled && !loop_future_done(j->result)) {
                if (r == -ECANCELED)
                        (void) loop_future_cancel(j->result);
                else
                        (void) loop_future_set_error(j->result, r);
        }
        loop_future_unref(j->result);
        free(j->local_host);
        free(j->local_port);
        free(j->remote_host);
        free(j->remote_port);
        free(j);
}

static int dup_opt(const char *s, char **ret) {
        *ret = NULL;
        if (s && !(*ret = strdup(s)))
                return -ENOMEM;
        return 0;
}

LOOP_EXPORT int loop_create_datagram_endpoint(loop_t *loop, const struct loop_datagram_protocol_ops *ops,
                                              void *userdata, const char *local_host, const char *local_port,
                                              const char *remote_host, const char *remote_port,
                                              const struct loop_datagram_options *options, loop_future_t **ret) {
        struct endpoint_job *j;
        loop_future_t *f;
        int r = loop__usable(loop);

        if (r < 0)
                return r;
        return_if_fail(ops && ret, -EINVAL);
        return_if_fail(ops->size >= offsetof(struct loop_datagram_protocol_ops, connection_made) + sizeof(void *),
                       -EINVAL);
        if (options && options->size < offsetof(struct loop_datagram_options, family) + sizeof(int))
                return -EINVAL;
        /* asyncio: a remote address is a host and a port; so is a local one. */
        return_if_fail(!remote_host == !remote_port, -EINVAL);
        j = calloc(1, sizeof(*j));
        if (!j)
                return -ENOMEM;
        memcpy(&j->ops, ops, ops->size < sizeof(j->ops) ? ops->size : sizeof(j->ops));
        j->ops.size = sizeof(j->ops);
        if (options)
                memcpy(&j->opts, options, options->size < sizeof(j->opts) ? options->size : sizeof(j->opts));
        j->opts.size = sizeof(j->opts);
        j->userdata = userdata;
        j->loop = loop;
        j->fd = -1;
        r = dup_opt(local_host, &j->local_host);
        if (r == 0)
                r = dup_opt(local_port, &j->local_port);
        if (r == 0)
                r = dup_opt(remote_host, &j->remote_host);
        if (r == 0)
                r = dup_opt(remote_port, &j->remote_port);
        if (r == 0)
                r = loop_create_future(loop, &f);
        if (r < 0) {
                free(j->local_host);
                free(j->local_port);
                free(j->remote_host);
                free(j->remote_port);
                free(j);
                return r;
        }
        j->result = loop_future_ref(f);
        r = loop__executor_submit(loop, endpoint_run, j, endpoint_done, NULL, &j->job);
        if (r < 0) {
                /* Not taken: arg is still ours, and nothing ran. */
                j->error = r;
                j->job = NULL;
                endpoint_done(j);
                loop_future_unref(f);
                return r;
        }
        loop__future_on_cancel(f, endpoint_cancelled, j);
        *ret = f;
        return 0;
}
