/* SPDX-License-Identifier: MIT */
/*
 * Servers: asyncio's create_server, create_unix_server and Server.
 *
 * A server owns its listening sockets and accepts on readers, on both loop
 * families (an accept is one system call on readiness; the connections
 * are what the proactor does natively). Each accepted socket gets a
 * protocol from the factory and becomes a transport that knows its
 * server, so that wait_closed() can wait for the last connection as well
 * (asyncio 3.12), and close_clients()/abort_clients() can reach them.
 *
 * While it listens, a server holds a reference to itself (the loop serves
 * it whether the caller kept one or not); loop_server_close(), or the
 * loop's close, drops it. A server that is still resolving its name is
 * the same object, not yet listening: its future completes with it once
 * every address is bound, or fails with the first error (every socket
 * bound so far closed), as asyncio raises from create_server.
 */
#include <stdlib.h>
#include <string.h>
#ifndef LOOP_WINDOWS
#include <netdb.h>
#include <netinet/in.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>
#endif

#include "transport.h"

#define DEFAULT_BACKLOG 100
#define ACCEPT_RETRY_DELAY_NS INT64_C(1000000000)       /* asyncio's constants.ACCEPT_RETRY_DELAY */

struct listener {
        int fd;
        bool reading;
};

struct loop_server {
        struct loop__close_hook hook;
        unsigned n_ref;
        loop_t *loop;
        loop_protocol_factory_t factory;
        void *factory_userdata;
        struct loop_server_options opts;

        struct listener *listeners;
        size_t n_listeners;
        char *unix_path;                /* removed on close */
#ifndef LOOP_WINDOWS
        struct loop__file_id unix_id;   /* ... if it is still our socket */
#endif

        loop_future_t *result;          /* create_server's, until it completes */
        loop_future_t *resolving;       /* loop_getaddrinfo's */
        loop_handle_t *retry;           /* accepting again after EMFILE */

        bool serving, closed, hooked;
        loop_transport_t *conns;        /* the connections it made and that live */
        size_t n_conns;
        loop_future_t **waiters;        /* wait_closed()'s */
        size_t n_waiters;
};

static void server_free(loop_server_t *s) {
        loop_tls_context_unref(s->opts.tls);
        free(s->listeners);
        free(s->unix_path);
        free(s->waiters);
        loop_unref(s->loop);
        free(s);
}

LOOP_EXPORT loop_server_t *loop_server_ref(loop_server_t *s) {
        if (s)
                s->n_ref++;
        return s;
}

LOOP_EXPORT loop_server_t *loop_server_unref(loop_server_t *s) {
        if (s && --s->n_ref == 0)
                server_free(s);
        return NULL;
}

static void unref_discard(void *p) {
        loop_server_unref(p);
}

LOOP_EXPORT loop_t *loop_server_get_loop(const loop_server_t *s) {
        return s ? s->loop : NULL;
}

static int sock_errno(void) {
#ifdef LOOP_WINDOWS
        return loop__errno_from_wsa(WSAGetLastError());
#else
        return errno;
#endif
}

/* ---- accepting --------------------------------------------------------------- */

static void set_accepting(loop_server_t *s, bool on);

static int retry_cb(loop_t *loop, void *userdata) {
        loop_server_t *s = userdata;

        (void) loop;
        s->retry = loop_handle_unref(s->retry);
        if (s->serving)
                set_accepting(s, true);
        return 0;
}

int loop__server_make_protocol(loop_server_t *s, const struct loop_protocol_ops **ops, void **userdata) {
        *ops = NULL;
        *userdata = NULL;
        int r = s->factory(s, ops, userdata, s->factory_userdata);
        if (r >= 0 && !*ops)
                r = -EINVAL;
        return r < 0 ? r : 0;
}

static void accepted(loop_server_t *s, int fd, const struct loop__peer *peer) {
        const struct loop_protocol_ops *ops = NULL;
        void *userdata = NULL;
        int r;

        /* With TLS the factory is asked once the handshake is over: a
         * connection that never gets that far costs the program nothing. */
        if (s->opts.tls)
                r = loop__tls_wrap(s->loop, fd, s->opts.tls, true, NULL, s->opts.tls_handshake_timeout_ns, NULL,
                                   NULL, s, NULL, peer);
        else {
                r = loop__server_make_protocol(s, &ops, &userdata);
                if (r >= 0)
                        r = loop__transport_new(s->loop, fd, ops, userdata, s, NULL, peer, NULL);
        }
        if (r < 0) {
                loop__report(s->loop, "Error in the protocol factory of a server: the connection is closed", r,
                             NULL, fd);
                loop__close_socket(fd);
        }
}

static int on_acceptable(loop_t *loop, int fd, void *userdata) {
        loop_server_t *s = userdata;
        int backlog = s->opts.backlog;

        (void) loop;
        /* asyncio accepts up to backlog connections per readiness. */
        loop_server_ref(s);
        for (int i = 0; i < backlog && s->serving; i++) {
                struct sockaddr_storage ss;
                socklen_t sslen = sizeof(ss);
                int nfd = loop__accept_nonblock(fd, (struct sockaddr *) &ss, &sslen);
                if (nfd >= 0) {
                        struct loop__peer peer = {(const struct sockaddr *) &ss, sslen};
                        accepted(s, nfd, &peer);
                        continue;
                }
                int e = sock_errno();
                if (e == EINTR || e == ECONNABORTED)
                        continue;
                if (e == EAGAIN || e == EWOULDBLOCK)
                        break;
                if (e == EMFILE || e == ENFILE || e == ENOBUFS || e == ENOMEM) {
                        /* Out of descriptors: the listener stays, accepting
                         * pauses for a second, as in asyncio. */
                        loop__report(s->loop, "Socket accept failed: out of resources; accepting again in 1 s",
                                     -e, NULL, fd);
                        set_accepting(s, false);
                        if (!s->retry &&
                            loop_call_later_ns(s->loop, ACCEPT_RETRY_DELAY_NS, retry_cb, s, &s->retry) < 0)
                                s->retry = NULL;
                        break;
                }
                loop__report(s->loop, "Socket accept failed", -e, NULL, fd);
                break;
        }
        loop_server_unref(s);
        return 0;
}

static void set_accepting(loop_server_t *s, bool on) {
        for (size_t i = 0; i < s->n_listeners; i++) {
                struct listener *l = &s->listeners[i];
                if (l->reading == on)
                        continue;
                int r = on ? loop_add_reader(s->loop, l->fd, on_acceptable, s) : loop_remove_reader(s->loop, l->fd);
                if (r < 0 && on) {
                        loop__report(s->loop, "Cannot watch a listening socket", r, NULL, l->fd);
                        continue;
                }
                l->reading = on;
        }
}

LOOP_EXPORT int loop_server_start_serving(loop_server_t *s) {
        return_if_fail(s, -EINVAL);
        int r = loop__usable(s->loop);
        if (r < 0)
                return r;
        if (s->closed)
                return -ESHUTDOWN;
        if (s->serving)
                return 0;
        s->serving = true;
        set_accepting(s, true);
        return 0;
}

LOOP_EXPORT int loop_server_is_serving(const loop_server_t *s) {
        return_if_fail(s, -EINVAL);
        return s->serving;
}

/* ---- closing ----------------------------------------------------------------- */

static void wake_waiters(loop_server_t *s) {
        if (!s->closed || s->n_conns > 0)
                return;
        for (size_t i = 0; i < s->n_waiters; i++) {
                if (!loop_future_done(s->waiters[i]))
                        (void) loop_future_set_result(s->waiters[i], NULL, NULL);
                loop_future_unref(s->waiters[i]);
        }
        s->n_waiters = 0;
}

static int on_resolved(loop_future_t *f, void *userdata);

static void server_close(loop_server_t *s, int error) {
        if (s->closed)
                return;
        s->closed = true;
        s->serving = false;
        if (s->resolving) {
                if (loop_future_remove_done_callback(s->resolving, on_resolved, s) > 0)
                        loop_server_unref(s);
                (void) loop_future_cancel(s->resolving);
                s->resolving = loop_future_unref(s->resolving);
        }
        if (s->result) {
                /* Still being made: the caller's future ends with the error. */
                if (!loop_future_done(s->result))
                        (void) loop_future_set_error(s->result, error);
                s->result = loop_future_unref(s->result);
        }
        set_accepting(s, false);
        for (size_t i = 0; i < s->n_listeners; i++)
                loop__close_socket(s->listeners[i].fd);
        s->n_listeners = 0;
        if (s->retry) {
                (void) loop_handle_cancel(s->retry);
                s->retry = loop_handle_unref(s->retry);
        }
#ifndef LOOP_WINDOWS
        if (s->unix_path) {
                /* asyncio 3.13's cleanup_socket: only if it is still ours. */
                struct stat st;
                if (stat(s->unix_path, &st) == 0 && S_ISSOCK(st.st_mode) && (uint64_t) st.st_dev == s->unix_id.dev &&
                    (uint64_t) st.st_ino == s->unix_id.ino)
                        (void) unlink(s->unix_path);
        }
#endif
        if (s->hooked) {
                loop__remove_close_hook(s->loop, &s->hook);
                s->hooked = false;
        }
        wake_waiters(s);
        loop_server_unref(s);   /* its own */
}

LOOP_EXPORT int loop_server_close(loop_server_t *s) {
        return_if_fail(s, -EINVAL);
        if (s->closed)
                return 0;
        server_close(s, -ECANCELED);
        return 0;
}

static void on_loop_close(loop_t *loop, struct loop__close_hook *hook) {
        loop_server_t *s = (loop_server_t *) hook;

        (void) loop;
        s->hooked = false;      /* off the list already */
        loop_server_ref(s);
        server_close(s, -ECANCELED);
        /* What is still waiting will never see the last connection go
         * (the loop's transports end after us, in a closed loop). */
        for (size_t i = 0; i < s->n_waiters; i++) {
                (void) loop_future_cancel(s->waiters[i]);
                loop_future_unref(s->waiters[i]);
        }
        s->n_waiters = 0;
        loop_server_unref(s);
}

static int each_client(loop_server_t *s, int (*fn)(loop_transport_t *t)) {
        return_if_fail(s, -EINVAL);
        size_t n = s->n_conns, k = 0;
        if (n == 0)
                return 0;
        loop_transport_t **v = malloc(n * sizeof(*v));
        if (!v)
                return -ENOMEM;
        for (loop_transport_t *t = s->conns; t && k < n; t = t->snext)
                v[k++] = loop_transport_ref(t);
        for (size_t i = 0; i < k; i++) {
                (void) fn(v[i]);
                loop_transport_unref(v[i]);
        }
        free(v);
        return 0;
}

LOOP_EXPORT int loop_server_close_clients(loop_server_t *s) {
        return each_client(s, loop_transport_close);
}

LOOP_EXPORT int loop_server_abort_clients(loop_server_t *s) {
        return each_client(s, loop_transport_abort);
}

LOOP_EXPORT int loop_server_wait_closed(loop_server_t *s, loop_future_t **ret) {
        loop_future_t *f;

        return_if_fail(s && ret, -EINVAL);
        int r = loop_create_future(s->loop, &f);
        if (r < 0)
                return r;
        if (s->closed && s->n_conns == 0) {
                (void) loop_future_set_result(f, NULL, NULL);
                *ret = f;
                return 0;
        }
        loop_future_t **v = realloc(s->waiters, (s->n_waiters + 1) * sizeof(*v));
        if (!v) {
                loop_future_unref(f);
                return -ENOMEM;
        }
        s->waiters = v;
        v[s->n_waiters++] = loop_future_ref(f);
        *ret = f;
        return 0;
}

LOOP_EXPORT int loop_server_get_fds(const loop_server_t *s, int *fds, size_t n) {
        return_if_fail(s && (fds || n == 0), -EINVAL);
        for (size_t i = 0; i < n && i < s->n_listeners; i++)
                fds[i] = s->listeners[i].fd;
        return (int) s->n_listeners;
}

LOOP_EXPORT size_t loop_server_get_connections(const loop_server_t *s) {
        return s ? s->n_conns : 0;
}

void loop__server_connection_add(loop_server_t *s, loop_transport_t *t) {
        t->snext = s->conns;
        if (s->conns)
                s->conns->sprev = t;
        s->conns = t;
        s->n_conns++;
}

void loop__server_connection_gone(loop_server_t *s, loop_transport_t *t) {
        if (t->sprev)
                t->sprev->snext = t->snext;
        else if (s->conns == t)
                s->conns = t->snext;
        if (t->snext)
                t->snext->sprev = t->sprev;
        t->sprev = t->snext = NULL;
        s->n_conns--;
        wake_waiters(s);
}

/* ---- making one -------------------------------------------------------------- */

static int server_new(loop_t *loop, loop_protocol_factory_t factory, void *userdata,
                      const struct loop_server_options *options, loop_server_t **ret) {
        loop_server_t *s;
        int r = loop__usable(loop);

        if (r < 0)
                return r;
        return_if_fail(factory && ret, -EINVAL);
        if (options && options->size < offsetof(struct loop_server_options, family) + sizeof(int))
                return -EINVAL;
        s = calloc(1, sizeof(*s));
        if (!s)
                return -ENOMEM;
        if (options)
                memcpy(&s->opts, options, options->size < sizeof(s->opts) ? options->size : sizeof(s->opts));
        s->opts.size = sizeof(s->opts);
        if (s->opts.backlog < 0 || s->opts.tls_handshake_timeout_ns < 0 ||
            (s->opts.tls && !loop__tls_context_is_server(s->opts.tls))) {
                free(s);
                return -EINVAL;
        }
        loop_tls_context_ref(s->opts.tls);
        if (s->opts.backlog == 0)
                s->opts.backlog = DEFAULT_BACKLOG;
        s->n_ref = 1;           /* its own, until closed */
        s->loop = loop_ref(loop);
        s->factory = factory;
        s->factory_userdata = userdata;
        s->hook.fn = on_loop_close;
        loop__add_close_hook(loop, &s->hook);
        s->hooked = true;
        *ret = s;
        return 0;
}

static int add_listener(loop_server_t *s, int fd) {
        struct listener *v = realloc(s->listeners, (s->n_listeners + 1) * sizeof(*v));

        if (!v)
                return -ENOMEM;
        s->listeners = v;
        v[s->n_listeners++] = (struct listener) { .fd = fd };
        return 0;
}

static int set_opt(int fd, int level, int name, int value) {
        if (setsockopt(fd, level, name, (const void *) &value, sizeof(value)) < 0)
                return -sock_errno();
        return 0;
}

/* One listening socket for addr; the server owns it on success. */
static int listen_on(loop_server_t *s, int family, int socktype, int protocol, const struct sockaddr *addr,
                     socklen_t addrlen) {
        int fd = loop__socket_nonblock(family, socktype, protocol);
        int r = 0;

        if (fd < 0)
                return fd;
#ifdef LOOP_WINDOWS
        bool reuse = s->opts.reuse_address > 0;
#else
        bool reuse = s->opts.reuse_address >= 0;
#endif
        if (reuse && family != AF_UNIX)
                r = set_opt(fd, SOL_SOCKET, SO_REUSEADDR, 1);
        if (r == 0 && s->opts.reuse_port > 0) {
#ifdef SO_REUSEPORT
                r = set_opt(fd, SOL_SOCKET, SO_REUSEPORT, 1);
#else
                r = -EOPNOTSUPP;
#endif
        }
#ifdef IPV6_V6ONLY
        /* One socket per family, as asyncio: the AF_INET6 one must not
         * take the IPv4 port too. */
        if (r == 0 && family == AF_INET6)
                r = set_opt(fd, IPPROTO_IPV6, IPV6_V6ONLY, 1);
#endif
        if (r == 0 && bind(fd, addr, addrlen) < 0)
                r = -sock_errno();
        if (r == 0 && listen(fd, s->opts.backlog) < 0)
                r = -sock_errno();
        if (r == 0)
                r = add_listener(s, fd);
        if (r < 0)
                loop__close_socket(fd);
        return r;
}

static int listen_all(loop_server_t *s, const struct addrinfo *list) {
        int r = -EADDRNOTAVAIL;

        for (const struct addrinfo *ai = list; ai; ai = ai->ai_next) {
#ifdef AF_INET6
                if (ai->ai_family != AF_INET && ai->ai_family != AF_INET6)
                        continue;
#endif
                r = listen_on(s, ai->ai_family, SOCK_STREAM, ai->ai_protocol, ai->ai_addr,
                              (socklen_t) ai->ai_addrlen);
                if (r < 0)
                        return r;
        }
        return s->n_listeners > 0 ? 0 : r;
}

/* The server is bound: serve (unless deferred) and complete the future. */
static void made(loop_server_t *s) {
        if (s->opts.defer_serving <= 0) {
                s->serving = true;
                set_accepting(s, true);
        }
        loop_future_t *f = s->result;
        s->result = NULL;
        if (loop_future_set_result(f, loop_server_ref(s), unref_discard) < 0)
                loop_server_unref(s);
        loop_future_unref(f);
}

static int on_resolved(loop_future_t *f, void *userdata) {
        loop_server_t *s = userdata;
        void *list = NULL;
        int r = loop_future_result(f, &list);

        s->resolving = loop_future_unref(s->resolving);
        if (!s->closed) {
                if (r == 0)
                        r = listen_all(s, list);
                if (r < 0)
                        server_close(s, r);
                else
                        made(s);
        }
        loop_server_unref(s);   /* the callback's */
        return 0;
}

static void server_cancelled(loop_future_t *f, void *data) {
        (void) f;
        server_close(data, -ECANCELED);
}

LOOP_EXPORT int loop_create_server(loop_t *loop, loop_protocol_factory_t factory, void *userdata, const char *host,
                                   const char *port, const struct loop_server_options *options,
                                   loop_future_t **ret) {
        loop_server_t *s;
        loop_future_t *f;
        int r;

        return_if_fail(port && ret, -EINVAL);
        r = server_new(loop, factory, userdata, options, &s);
        if (r < 0)
                return r;
        r = loop_create_future(loop, &f);
        if (r < 0) {
                server_close(s, r);
                return r;
        }
        s->result = loop_future_ref(f);
        loop__future_on_cancel(f, server_cancelled, s);

        struct addrinfo hints = {
                .ai_family = s->opts.family,
                .ai_socktype = SOCK_STREAM,
                .ai_flags = s->opts.flags | AI_PASSIVE,
        };
        struct addrinfo numeric = hints, *list = NULL;
        numeric.ai_flags |= AI_NUMERICHOST | AI_NUMERICSERV;
        if (getaddrinfo(host, port, &numeric, &list) == 0) {
                r = listen_all(s, list);
                freeaddrinfo(list);
                loop__future_on_cancel(f, NULL, NULL);
                if (r < 0) {
                        server_close(s, r);
                        loop_future_unref(f);
                        return r;
                }
                made(s);
                *ret = f;
                return 0;
        }
        r = loop_getaddrinfo(loop, host, port, &hints, &s->resolving);
        if (r == 0) {
                r = loop_future_add_done_callback(s->resolving, on_resolved, loop_server_ref(s));
                if (r < 0)
                        loop_server_unref(s);
        }
        if (r < 0) {
                loop__future_on_cancel(f, NULL, NULL);
                server_close(s, r);
                loop_future_unref(f);
                return r;
        }
        *ret = f;
        return 0;
}

LOOP_EXPORT int loop_create_unix_server(loop_t *loop, loop_protocol_factory_t factory, void *userdata,
                                        const char *path, const struct loop_server_options *options,
                                        loop_future_t **ret) {
#ifdef LOOP_WINDOWS
        (void) loop, (void) factory, (void) userdata, (void) path, (void) options, (void) ret;
        return -EOPNOTSUPP;
#else
        struct sockaddr_un sun = { .sun_family = AF_UNIX };
        struct stat st;
        loop_server_t *s;
        loop_future_t *f;
        int r;

        return_if_fail(path && *path && ret, -EINVAL);
        if (strlen(path) >= sizeof(sun.sun_path))
                return -ENAMETOOLONG;
        strcpy(sun.sun_path, path);
        r = server_new(loop, factory, userdata, options, &s);
        if (r < 0)
                return r;
        /* A socket file left by an earlier run is replaced, as asyncio
         * does; any other file at path is an error (EADDRINUSE). */
        if (lstat(path, &st) == 0 && S_ISSOCK(st.st_mode))
                (void) unlink(path);
        s->unix_path = strdup(path);
        r = s->unix_path ? listen_on(s, AF_UNIX, SOCK_STREAM, 0, (const struct sockaddr *) &sun, sizeof(sun))
                         : -ENOMEM;
        if (r == 0) {
                struct loop__file_id id;
                if (stat(path, &st) == 0) {
                        id.dev = (uint64_t) st.st_dev;
                        id.ino = (uint64_t) st.st_ino;
                        s->unix_id = id;
                }
                r = loop_create_future(loop, &f);
        }
        if (r < 0) {
                free(s->unix_path);     /* not ours to remove: bind failed, or it is bound and closed now */
                s->unix_path = NULL;
                if (s->n_listeners > 0)
                        (void) unlink(path);
                server_close(s, r);
                return r;
        }
        s->result = loop_future_ref(f);
        made(s);
        *ret = f;
        return 0;
#endif
}

LOOP_EXPORT int loop_server_new(loop_t *loop, loop_protocol_factory_t factory, void *userdata, const int *fds,
                                size_t n_fds, const struct loop_server_options *options, loop_server_t **ret) {
        loop_server_t *s;
        int r;

        return_if_fail(fds && n_fds > 0 && ret, -EINVAL);
        for (size_t i = 0; i < n_fds; i++) {
                r = loop__check_socket(fds[i]);
                if (r == -EINVAL) {
                        /* Blocking: ours to make non-blocking, as asyncio's setblocking(False). */
                        if (loop__set_nonblock(fds[i]) < 0)
                                return -errno;
                        r = loop__check_socket(fds[i]);
                }
                if (r < 0)
                        return r;
        }
        r = server_new(loop, factory, userdata, options, &s);
        if (r < 0)
                return r;
        for (size_t i = 0; i < n_fds && r == 0; i++)
                r = add_listener(s, fds[i]);
        if (r < 0) {
                s->n_listeners = 0;     /* the caller's still */
                server_close(s, r);
                return r;
        }
        if (s->opts.defer_serving <= 0) {
                s->serving = true;
                set_accepting(s, true);
        }
        *ret = loop_server_ref(s);
        return 0;
}
