/* SPDX-License-Identifier: MIT */
/*
 * Client streams: asyncio's create_connection (with happy eyeballs, RFC
 * 8305, as asyncio 3.8 has it), create_unix_connection and
 * connect_accepted_socket.
 *
 * A connector resolves the name (numeric hosts at once, without the
 * executor, as asyncio's _ipaddr_info; names through loop_getaddrinfo),
 * then connects with loop_sock_connect, which both loop families do (the
 * proactor loop natively). Without happy eyeballs the addresses are tried
 * one after the other; with it, the next attempt starts when the last one
 * failed or the delay has passed, whichever is first, and the first
 * connection wins: the others are cancelled and closed. The winner
 * becomes a transport whose waiter is the caller's future, so the future
 * completes after connection_made, as in asyncio.
 *
 * The connector ends when the transport is made, when every attempt
 * failed, when the caller cancels the future, or when the loop closes
 * (its close hook): each path cancels what is pending, closes the
 * sockets of the attempts and frees it. Done callbacks and the timer do
 * not hold references: every one of them is removed or cancelled first.
 */
#include <stdlib.h>
#include <string.h>
#ifndef LOOP_WINDOWS
#include <netdb.h>
#include <sys/un.h>
#endif

#include "transport.h"

struct address {
        struct sockaddr_storage addr;
        socklen_t addrlen;
        int family, socktype, protocol;
};

struct attempt {
        int fd;                         /* -1: over */
        loop_future_t *f;               /* loop_sock_connect's */
        struct connector *c;
        const struct address *addr;     /* what it connects to (the transport's peer) */
};

struct connector {
        struct loop__close_hook hook;
        loop_t *loop;
        loop_future_t *result;          /* the caller's; a reference */
        struct loop_protocol_ops ops;
        void *userdata;
        struct loop_connection_options opts;
        struct sockaddr_storage local;
        loop_future_t *resolving;       /* loop_getaddrinfo's, or NULL */
        struct address *addrs;
        size_t n_addrs, next;
        struct attempt *attempts;       /* one per address, as started */
        size_t n_live;                  /* attempts in flight */
        loop_handle_t *timer;           /* happy eyeballs: the next attempt's start */
        int last_error;
        unsigned n_ref;                 /* 1 until it ends, + each done callback of ours queued */
        bool ended;
        bool handed_off;                /* result is the transport's waiter now */
        char *hostname;                 /* TLS: the name to ask for and check */
};

static int on_connected(loop_future_t *f, void *userdata);

static void connector_unref(struct connector *c) {
        if (--c->n_ref > 0)
                return;
        loop_tls_context_unref(c->opts.tls);
        free(c->hostname);
        free(c->addrs);
        free(c->attempts);
        free(c);
}

/* Our done callback on f goes: removed, or (already queued) left to run
 * and find the connector ended. */
static void forget(struct connector *c, loop_future_t **fp, loop_future_callback_t cb, void *userdata) {
        if (loop_future_remove_done_callback(*fp, cb, userdata) > 0)
                c->n_ref--;     /* never the last: the caller holds one */
        (void) loop_future_cancel(*fp);
        *fp = loop_future_unref(*fp);
}

static void attempt_end(struct attempt *a) {
        if (a->f)
                forget(a->c, &a->f, on_connected, a);
        if (a->fd >= 0) {
                loop__close_socket(a->fd);
                a->fd = -1;
                a->c->n_live--;
        }
}

static int on_resolved(loop_future_t *f, void *userdata);

/* Everything pending ends; the caller's future is left as it is. */
static void connector_end(struct connector *c) {
        if (c->ended)
                return;
        c->ended = true;
        if (c->resolving)
                forget(c, &c->resolving, on_resolved, c);
        for (size_t i = 0; i < c->next; i++)
                attempt_end(&c->attempts[i]);
        if (c->timer) {
                (void) loop_handle_cancel(c->timer);
                c->timer = loop_handle_unref(c->timer);
        }
        if (c->hook.fn)
                loop__remove_close_hook(c->loop, &c->hook);
        if (!c->handed_off)
                loop__future_on_cancel(c->result, NULL, NULL);
        c->result = loop_future_unref(c->result);
        connector_unref(c);
}

static void fail(struct connector *c, int error) {
        if (!loop_future_done(c->result))
                (void) loop_future_set_error(c->result, error);
        connector_end(c);
}

static void on_cancel(loop_future_t *f, void *data) {
        (void) f;
        connector_end(data);
}

static void on_loop_close(loop_t *loop, struct loop__close_hook *hook) {
        struct connector *c = (struct connector *) hook;

        (void) loop;
        c->hook.fn = NULL;      /* already off the list */
        c->n_ref++;             /* connector_end may drop what would be the last */
        loop__future_on_cancel(c->result, NULL, NULL);
        (void) loop_future_cancel(c->result);
        connector_end(c);
        /* A closed loop drops the done callbacks it had queued without
         * running them: nothing will come back for the connector. */
        c->n_ref = 1;
        connector_unref(c);
}

static int start_next(struct connector *c);

static int on_timer(loop_t *loop, void *userdata) {
        struct connector *c = userdata;

        (void) loop;
        loop_handle_unref(c->timer);
        c->timer = NULL;
        (void) start_next(c);
        return 0;
}

static int start_attempt(struct connector *c, struct attempt *a, const struct address *addr) {
        int fd, r;

        a->c = c;
        a->fd = -1;
        a->addr = addr;
        fd = loop__socket_nonblock(addr->family, addr->socktype, addr->protocol);
        if (fd < 0)
                return fd;
        if (c->opts.local_addr && bind(fd, (const struct sockaddr *) &c->local, c->opts.local_addrlen) < 0) {
#ifdef LOOP_WINDOWS
                r = -loop__errno_from_wsa(WSAGetLastError());
#else
                r = -errno;
#endif
                loop__close_socket(fd);
                return r;
        }
        r = loop_sock_connect(c->loop, fd, (const struct sockaddr *) &addr->addr, addr->addrlen, &a->f);
        if (r == 0)
                r = loop_future_add_done_callback(a->f, on_connected, a);
        if (r == 0)
                c->n_ref++;
        if (r < 0) {
                if (a->f) {
                        (void) loop_future_cancel(a->f);
                        a->f = loop_future_unref(a->f);
                }
                loop__close_socket(fd);
                return r;
        }
        a->fd = fd;
        c->n_live++;
        return 0;
}

/* Start the next address that can be tried; 1 if the connector has ended
 * (every address failed). */
static int start_next(struct connector *c) {
        while (c->next < c->n_addrs) {
                struct attempt *a = &c->attempts[c->next];
                int r = start_attempt(c, a, &c->addrs[c->next]);
                c->next++;
                if (r < 0) {
                        c->last_error = r;
                        continue;
                }
                if (c->opts.happy_eyeballs_delay_ns > 0 && c->next < c->n_addrs && !c->timer &&
                    loop_call_later_ns(c->loop, c->opts.happy_eyeballs_delay_ns, on_timer, c, &c->timer) < 0)
                        c->timer = NULL;        /* then the next one starts when this one fails */
                return 0;
        }
        if (c->n_live == 0) {
                fail(c, c->last_error ? c->last_error : -ECONNREFUSED);
                return 1;
        }
        return 0;
}

static int on_connected(loop_future_t *f, void *userdata) {
        struct attempt *a = userdata;
        struct connector *c = a->c;
        int r = loop_future_error(f);

        if (c->ended) {
                connector_unref(c);
                return 0;
        }
        c->n_ref--;
        a->f = loop_future_unref(a->f);
        if (r < 0) {
                loop__close_socket(a->fd);
                a->fd = -1;
                c->n_live--;
                c->last_error = r;
                if (c->timer) {
                        /* Failed before its delay: the next one starts now. */
                        (void) loop_handle_cancel(c->timer);
                        c->timer = loop_handle_unref(c->timer);
                }
                (void) start_next(c);
                return 0;
        }
        /* The winner: the others end in connector_free. */
        int fd = a->fd;
        a->fd = -1;
        c->n_live--;
        /* From here a cancel of the result is the transport's business. */
        loop__future_on_cancel(c->result, NULL, NULL);
        c->handed_off = true;
        struct loop__peer peer = {(const struct sockaddr *) &a->addr->addr, a->addr->addrlen};
        if (c->opts.tls)
                r = loop__tls_wrap(c->loop, fd, c->opts.tls, false, c->hostname, c->opts.tls_handshake_timeout_ns,
                                   &c->ops, c->userdata, NULL, c->result, &peer);
        else
                r = loop__transport_new(c->loop, fd, &c->ops, c->userdata, NULL, c->result, &peer, NULL);
        if (r < 0) {
                loop__close_socket(fd);
                fail(c, r);
                return 0;
        }
        connector_end(c);
        return 0;
}

/* RFC 8305 §4, as asyncio's _interleave_addrinfos: the first count - 1
 * addresses of the first family, then one of each family in turn, the
 * families in the order they first appear. */
static void interleave(struct address *v, size_t n, int count) {
        if (n < 2 || count <= 0)
                return;
        struct address *out = malloc(n * sizeof(*out));
        bool *used = calloc(n, sizeof(*used));
        int *families = malloc(n * sizeof(*families));
        if (!out || !used || !families) {
                free(out);
                free(used);
                free(families);
                return;         /* the order is a preference only */
        }
        size_t k = 0, n_fam = 0;
        for (size_t i = 0; i < n; i++) {
                size_t f = 0;
                while (f < n_fam && families[f] != v[i].family)
                        f++;
                if (f == n_fam)
                        families[n_fam++] = v[i].family;
        }
        for (size_t i = 0; i < n && k + 1 < (size_t) count; i++)
                if (v[i].family == families[0]) {
                        used[i] = true;
                        out[k++] = v[i];
                }
        while (k < n)
                for (size_t f = 0; f < n_fam; f++)
                        for (size_t i = 0; i < n; i++)
                                if (!used[i] && v[i].family == families[f]) {
                                        used[i] = true;
                                        out[k++] = v[i];
                                        break;
                                }
        memcpy(v, out, n * sizeof(*v));
        free(out);
        free(used);
        free(families);
}

static int take_addresses(struct connector *c, const struct addrinfo *list) {
        size_t n = 0;

        for (const struct addrinfo *ai = list; ai; ai = ai->ai_next)
                if (ai->ai_addrlen <= sizeof(struct sockaddr_storage))
                        n++;
        if (n == 0)
                return -EADDRNOTAVAIL;
        c->addrs = calloc(n, sizeof(*c->addrs));
        c->attempts = calloc(n, sizeof(*c->attempts));
        if (!c->addrs || !c->attempts)
                return -ENOMEM;
        for (const struct addrinfo *ai = list; ai; ai = ai->ai_next) {
                if (ai->ai_addrlen > sizeof(struct sockaddr_storage))
                        continue;
                struct address *a = &c->addrs[c->n_addrs++];
                memcpy(&a->addr, ai->ai_addr, ai->ai_addrlen);
                a->addrlen = (socklen_t) ai->ai_addrlen;
                a->family = ai->ai_family;
                a->socktype = SOCK_STREAM;
                a->protocol = ai->ai_protocol;
        }
        int il = c->opts.interleave;
        if (il == 0 && c->opts.happy_eyeballs_delay_ns > 0)
                il = 1;
        interleave(c->addrs, c->n_addrs, il);
        return 0;
}

static int on_resolved(loop_future_t *f, void *userdata) {
        struct connector *c = userdata;
        void *list = NULL;
        int r = loop_future_result(f, &list);

        if (c->ended) {
                connector_unref(c);
                return 0;
        }
        c->n_ref--;
        if (r == 0)
                r = take_addresses(c, list);
        c->resolving = loop_future_unref(c->resolving);
        if (r < 0) {
                fail(c, r);
                return 0;
        }
        (void) start_next(c);
        return 0;
}

static int connector_new(loop_t *loop, const struct loop_protocol_ops *ops, void *userdata,
                         const struct loop_connection_options *options, struct connector **ret) {
        struct connector *c;
        int r;

        r = loop__protocol_check(ops);
        if (r < 0)
                return r;
        if (options && options->size < offsetof(struct loop_connection_options, family) + sizeof(int))
                return -EINVAL;
        c = calloc(1, sizeof(*c));
        if (!c)
                return -ENOMEM;
        memcpy(&c->ops, ops, ops->size < sizeof(c->ops) ? ops->size : sizeof(c->ops));
        c->ops.size = ops->size < sizeof(c->ops) ? ops->size : sizeof(c->ops);
        c->userdata = userdata;
        if (options)
                memcpy(&c->opts, options, options->size < sizeof(c->opts) ? options->size : sizeof(c->opts));
        c->opts.size = sizeof(c->opts);
        if (c->opts.local_addr) {
                if (c->opts.local_addrlen <= 0 || (size_t) c->opts.local_addrlen > sizeof(c->local)) {
                        free(c);
                        return -EINVAL;
                }
                memcpy(&c->local, c->opts.local_addr, c->opts.local_addrlen);
        }
        if (c->opts.happy_eyeballs_delay_ns < 0 || c->opts.interleave < 0 || c->opts.tls_handshake_timeout_ns < 0 ||
            (!c->opts.tls && c->opts.server_hostname)) {
                free(c);
                return -EINVAL;         /* asyncio: server_hostname is only meaningful with ssl */
        }
        loop_tls_context_ref(c->opts.tls);
        c->loop = loop;
        c->n_ref = 1;
        r = loop_create_future(loop, &c->result);
        if (r < 0) {
                free(c);
                return r;
        }
        c->hook.fn = on_loop_close;
        loop__add_close_hook(loop, &c->hook);
        loop__future_on_cancel(c->result, on_cancel, c);
        *ret = c;
        return 0;
}

LOOP_EXPORT int loop_create_connection(loop_t *loop, const struct loop_protocol_ops *ops, void *userdata,
                                       const char *host, const char *port,
                                       const struct loop_connection_options *options, loop_future_t **ret) {
        struct connector *c;
        int r = loop__usable(loop);

        if (r < 0)
                return r;
        return_if_fail(host && port && ret, -EINVAL);
        r = connector_new(loop, ops, userdata, options, &c);
        if (r < 0)
                return r;
        if (c->opts.tls) {
                const char *name = c->opts.server_hostname ? c->opts.server_hostname : host;
                r = loop__tls_check_client(c->opts.tls, name);
                if (r == 0 && !(c->hostname = strdup(name)))
                        r = -ENOMEM;
                if (r < 0) {
                        connector_end(c);
                        return r;
                }
        }
        struct addrinfo hints = {
                .ai_family = c->opts.family,
                .ai_socktype = SOCK_STREAM,
                .ai_flags = c->opts.flags,
        };
        loop_future_t *result = loop_future_ref(c->result);

        /* A numeric host and port need no resolver thread. */
        struct addrinfo numeric = hints, *list = NULL;
        numeric.ai_flags |= AI_NUMERICHOST | AI_NUMERICSERV;
        if (getaddrinfo(host, port, &numeric, &list) == 0) {
                r = take_addresses(c, list);
                freeaddrinfo(list);
                if (r < 0) {
                        connector_end(c);
                        loop_future_unref(result);
                        return r;
                }
                (void) start_next(c);   /* may end the connector: result is ours */
                *ret = result;
                return 0;
        }
        r = loop_getaddrinfo(loop, host, port, &hints, &c->resolving);
        if (r == 0)
                r = loop_future_add_done_callback(c->resolving, on_resolved, c);
        if (r == 0)
                c->n_ref++;
        if (r < 0) {
                connector_end(c);
                loop_future_unref(result);
                return r;
        }
        *ret = result;
        return 0;
}

LOOP_EXPORT int loop_create_unix_connection(loop_t *loop, const struct loop_protocol_ops *ops, void *userdata,
                                            const char *path, loop_future_t **ret) {
#ifdef LOOP_WINDOWS
        (void) loop, (void) ops, (void) userdata, (void) path, (void) ret;
        return -EOPNOTSUPP;
#else
        struct sockaddr_un sun = { .sun_family = AF_UNIX };
        struct connector *c;
        int r = loop__usable(loop);

        if (r < 0)
                return r;
        return_if_fail(path && ret && *path, -EINVAL);
        if (strlen(path) >= sizeof(sun.sun_path))
                return -ENAMETOOLONG;
        strcpy(sun.sun_path, path);
        r = connector_new(loop, ops, userdata, NULL, &c);
        if (r < 0)
                return r;
        c->addrs = calloc(1, sizeof(*c->addrs));
        c->attempts = calloc(1, sizeof(*c->attempts));
        if (!c->addrs || !c->attempts) {
                connector_end(c);
                return -ENOMEM;
        }
        memcpy(&c->addrs[0].addr, &sun, sizeof(sun));
        c->addrs[0].addrlen = (socklen_t) sizeof(sun);
        c->addrs[0].family = AF_UNIX;
        c->addrs[0].socktype = SOCK_STREAM;
        c->n_addrs = 1;
        loop_future_t *result = loop_future_ref(c->result);
        (void) start_next(c);
        *ret = result;
        return 0;
#endif
}

LOOP_EXPORT int loop_connect_accepted_socket(loop_t *loop, const struct loop_protocol_ops *ops, void *userdata,
                                             int fd, loop_future_t **ret) {
        loop_future_t *f;
        int type = 0;
        socklen_t len = sizeof(type);
        int r = loop__usable(loop);

        if (r < 0)
                return r;
        return_if_fail(fd >= 0 && ret, -EINVAL);
        r = loop__protocol_check(ops);
        if (r < 0)
                return r;
        r = loop__fd_valid(fd);
        if (r < 0)
                return r;
        if (loop__getsockopt(fd, SOL_SOCKET, SO_TYPE, (void *) &type, &len) < 0)
                return errno == ENOTSOCK || errno == EBADF ? -errno : -ENOTSOCK;
        if (type != SOCK_STREAM)
                return -EINVAL;
        if (loop__set_nonblock(fd) < 0)
                return -errno;
        r = loop_create_future(loop, &f);
        if (r < 0)
                return r;
        /* asyncio takes the peer's name now; a socket already reset has
         * none, and is asked again later. */
        struct sockaddr_storage ss;
        socklen_t sslen = sizeof(ss);
        struct loop__peer peer = {(const struct sockaddr *) &ss, 0};
        if (getpeername(fd, (struct sockaddr *) &ss, &sslen) == 0)
                peer.len = sslen;
        r = loop__transport_new(loop, fd, ops, userdata, NULL, f, &peer, NULL);
        if (r < 0) {
                loop_future_unref(f);
                return r;
        }
        *ret = f;
        return 0;
}
