/* SPDX-License-Identifier: MIT */
/*
 * A TCP echo server and its client in one loop, on 127.0.0.1, written with
 * the socket operations that return futures (loop_sock_accept, _recv,
 * _sendall, _connect). The server is driven by done callbacks, the way an
 * asyncio protocol would be; the client reads as straight-line code, one
 * loop_run_until_complete() per step, the way a coroutine would.
 *
 *     echo [--proactor] [--serve PORT]
 *
 * --proactor does what asyncio's documentation shows for Windows: it makes
 * a proactor loop (IOCP on Windows, io_uring on Linux) and sets it as the
 * event loop, which everything after takes from loop_get_event_loop().
 * Without it the loop is loop_new()'s default (the proactor on Windows,
 * the selector loop elsewhere). --serve PORT serves on 127.0.0.1:PORT
 * until Ctrl-C (SIGINT) instead of running the built-in client; try it
 * with `nc 127.0.0.1 PORT`. Build against an installed libloop with
 *     cc echo.c $(pkg-config --cflags --libs libloop)
 * (on Windows, with mingw-w64: add -lws2_32).
 */
#include <errno.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifndef _WIN32
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>
#endif

#include <loop.h>

/* A non-blocking TCP socket, or -1. Windows: a winsock SOCKET in an int
 * (see loop.h), closed with closesocket(). */
#ifdef _WIN32
static int tcp_socket(void) {
        SOCKET s = socket(AF_INET, SOCK_STREAM, 0);
        u_long on = 1;

        if (s == INVALID_SOCKET)
                return -1;
        if (ioctlsocket(s, FIONBIO, &on) != 0) {
                closesocket(s);
                return -1;
        }
        return (int) s;
}
#define close_socket(fd) closesocket((SOCKET) (fd))
#define socket_errno() EIO      /* winsock's WSAGetLastError() is no errno */
#else
static int tcp_socket(void) {
        return socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
}
#define close_socket(fd) close(fd)
#define socket_errno() errno
#endif

struct server {
        loop_t *loop;
        int fd;                         /* the listening socket */
        loop_future_t *accepting;       /* the pending accept */
        int n_conns;                    /* connections open now */
        loop_future_t *idle;            /* set when n_conns drops to 0 */
};

struct conn {
        struct server *srv;
        int fd;
        loop_future_t *op;              /* the pending recv or sendall */
};

static void die(int r, const char *what) {
        fprintf(stderr, "echo: %s: %s\n", what, loop_strerror(r));
        exit(EXIT_FAILURE);
}

static void conn_close(struct conn *c) {
        struct server *srv = c->srv;

        /* Cancel before closing: an operation left pending on a closed fd
         * would never complete. A done future ignores this. */
        if (c->op)
                loop_future_cancel(c->op);
        loop_future_unref(c->op);
        close_socket(c->fd);
        free(c);
        if (--srv->n_conns == 0 && srv->idle)
                loop_future_set_result(srv->idle, NULL, NULL);
}

static int on_received(loop_future_t *f, void *userdata);

/* A callback that returns a negative errno reaches the exception handler. */
static int start_recv(struct conn *c) {
        int r = loop_sock_recv(c->srv->loop, c->fd, 4096, &c->op);

        if (r < 0 || (r = loop_future_add_done_callback(c->op, on_received, c)) < 0) {
                conn_close(c);
                return r;
        }
        return 0;
}

static int on_sent(loop_future_t *f, void *userdata) {
        struct conn *c = userdata;
        int r = loop_future_error(f);

        c->op = loop_future_unref(c->op);
        if (r < 0) {
                conn_close(c);
                return r;
        }
        return start_recv(c);
}

static int on_received(loop_future_t *f, void *userdata) {
        struct conn *c = userdata;
        struct loop_sock_result *res;
        loop_future_t *send = NULL;
        int r = loop_future_result(f, (void **) &res);

        if (r < 0 || res->nbytes == 0) {
                /* An error, or the client closed its end. */
                printf("server: connection closed\n");
                conn_close(c);
                return r;
        }
        /* sendall copies what it cannot send at once: res may go now. */
        r = loop_sock_sendall(c->srv->loop, c->fd, res->data, res->nbytes, &send);
        c->op = loop_future_unref(c->op);
        if (r < 0) {
                conn_close(c);
                return r;
        }
        c->op = send;
        r = loop_future_add_done_callback(send, on_sent, c);
        if (r < 0)
                conn_close(c);
        return r;
}

static int on_accepted(loop_future_t *f, void *userdata);

static int start_accept(struct server *srv) {
        int r = loop_sock_accept(srv->loop, srv->fd, &srv->accepting);

        if (r < 0)
                return r;
        return loop_future_add_done_callback(srv->accepting, on_accepted, srv);
}

static int on_accepted(loop_future_t *f, void *userdata) {
        struct server *srv = userdata;
        struct loop_sock_result *res;
        char host[INET_ADDRSTRLEN];
        int r = loop_future_result(f, (void **) &res);

        srv->accepting = loop_future_unref(srv->accepting);
        if (r == -ECANCELED)
                return 0;               /* shutting down */
        if (r < 0)
                return r;

        /* res->fd is ours now; the future never closes it. */
        const struct sockaddr_in *peer = (const struct sockaddr_in *) &res->addr;
        printf("server: connection from %s:%u\n", inet_ntop(AF_INET, &peer->sin_addr, host, sizeof(host)),
               ntohs(peer->sin_port));
        struct conn *c = calloc(1, sizeof(*c));
        if (!c) {
                close_socket(res->fd);
                return -ENOMEM;
        }
        *c = (struct conn) { .srv = srv, .fd = res->fd };
        srv->n_conns++;
        r = start_recv(c);
        if (r < 0)
                return r;
        return start_accept(srv);      /* and wait for the next client */
}

static int client(loop_t *loop, const struct sockaddr_in *addr) {
        static const char *const messages[] = { "hello", "echo, echo", "goodbye" };
        loop_future_t *f = NULL;
        int fd = tcp_socket(), r;

        if (fd < 0)
                die(-socket_errno(), "socket");
        r = loop_sock_connect(loop, fd, (const struct sockaddr *) addr, sizeof(*addr), &f);
        if (r < 0 || (r = loop_run_until_complete(loop, f)) < 0)
                die(r, "connect");
        f = loop_future_unref(f);

        for (size_t i = 0; i < sizeof(messages) / sizeof(messages[0]); i++) {
                size_t len = strlen(messages[i]), got = 0;
                char buf[64];

                r = loop_sock_sendall(loop, fd, messages[i], len, &f);
                if (r < 0 || (r = loop_run_until_complete(loop, f)) < 0)
                        die(r, "sendall");
                f = loop_future_unref(f);

                /* A stream may deliver the echo in pieces. */
                while (got < len) {
                        struct loop_sock_result *res;

                        r = loop_sock_recv_into(loop, fd, buf + got, sizeof(buf) - got, &f);
                        if (r < 0 || (r = loop_run_until_complete(loop, f)) < 0)
                                die(r, "recv_into");
                        loop_future_result(f, (void **) &res);
                        if (res->nbytes == 0)
                                die(-ECONNRESET, "server closed the connection");
                        got += res->nbytes;
                        f = loop_future_unref(f);
                }
                printf("client: sent \"%s\", got back \"%.*s\"\n", messages[i], (int) got, buf);
                if (got != len || memcmp(buf, messages[i], len) != 0)
                        return -EPROTO;
        }
        close_socket(fd);
        return 0;
}

static int on_sigint(loop_t *loop, int signum, void *userdata) {
        (void) signum;
        (void) userdata;
        printf("server: interrupted\n");
        return loop_stop(loop);
}

static void usage(void) {
        fprintf(stderr, "usage: echo [--proactor] [--serve PORT]\n");
        exit(2);
}

/* The loop everything runs on, as the thread's event loop. */
static loop_t *make_loop(bool proactor) {
        loop_t *loop = NULL;
        int r;

        if (proactor) {
                /* asyncio: loop = asyncio.ProactorEventLoop()
                 *          asyncio.set_event_loop(loop) */
                r = loop_proactor_loop_new(&loop);
                if (r == -EOPNOTSUPP || r == -ENOSYS || r == -EPERM) {
                        /* No completion backend here (io_uring refused). */
                        fprintf(stderr, "echo: no proactor loop here: %s\n", loop_strerror(r));
                        exit(77);
                }
                if (r < 0)
                        die(r, "loop_proactor_loop_new");
                r = loop_set_event_loop(loop);
                if (r < 0)
                        die(r, "loop_set_event_loop");
                loop_unref(loop);       /* the policy holds it now */
        }
        /* Without --proactor the policy makes loop_new()'s default. */
        r = loop_get_event_loop(&loop);
        if (r < 0)
                die(r, "loop_get_event_loop");
        printf("loop: %s\n", loop_get_selector(loop) ? loop_selector_name(loop_get_selector(loop)) : "proactor");
        return loop;
}

int main(int argc, char **argv) {
        struct server srv = { .fd = -1 };
        struct sockaddr_in addr = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        socklen_t len = sizeof(addr);
        bool proactor = false;
        long serve = -1;
        int r;

        for (int i = 1; i < argc; i++) {
                if (strcmp(argv[i], "--proactor") == 0)
                        proactor = true;
                else if (strcmp(argv[i], "--serve") == 0 && i + 1 < argc) {
                        char *end;
                        serve = strtol(argv[++i], &end, 10);
                        if (*end || serve < 0 || serve > 65535)
                                usage();
                } else
                        usage();
        }
        srv.loop = make_loop(proactor);

        /* Port 0: the kernel picks a free one, getsockname() tells which. */
        addr.sin_port = htons(serve > 0 ? (unsigned short) serve : 0);
        srv.fd = tcp_socket();
        if (srv.fd < 0 || bind(srv.fd, (struct sockaddr *) &addr, sizeof(addr)) < 0 || listen(srv.fd, 16) < 0 ||
            getsockname(srv.fd, (struct sockaddr *) &addr, &len) < 0)
                die(-socket_errno(), "listening socket");
        printf("server: listening on 127.0.0.1:%u\n", ntohs(addr.sin_port));
        fflush(stdout);
        r = start_accept(&srv);
        if (r < 0)
                die(r, "accept");

        if (serve >= 0) {
                /* SIGINT is the one signal Windows has a handler for. */
                r = loop_add_signal_handler(srv.loop, SIGINT, on_sigint, NULL);
                if (r < 0)
                        die(r, "loop_add_signal_handler");
                r = loop_run_forever(srv.loop);
                if (r < 0)
                        die(r, "loop_run_forever");
                loop_remove_signal_handler(srv.loop, SIGINT);
                srv.n_conns = 0;        /* connections still open are dropped with the loop */
        } else
                r = client(srv.loop, &addr);
        if (r < 0)
                die(r, "client");

        /* Let the server see the client go before stopping it. */
        r = loop_create_future(srv.loop, &srv.idle);
        if (r < 0)
                die(r, "loop_create_future");
        if (srv.n_conns == 0)
                loop_future_set_result(srv.idle, NULL, NULL);
        r = loop_run_until_complete(srv.loop, srv.idle);
        if (r < 0)
                die(r, "waiting for the server");
        srv.idle = loop_future_unref(srv.idle);

        /* The pending accept is cancelled by loop_close() too; cancelling
         * it first lets its done callback release it. */
        loop_future_cancel(srv.accepting);
        loop_run_once(srv.loop, 0);
        close_socket(srv.fd);
        loop_close(srv.loop);
        /* The policy's reference goes with the thread's event loop. */
        loop_set_event_loop(NULL);
        srv.loop = loop_unref(srv.loop);
        return EXIT_SUCCESS;
}
