/* SPDX-License-Identifier: MIT */
/*
 * asyncio's "TCP echo server using streams" and its client, on transports
 * and protocols (loop_transport(7)): the server is a protocol whose
 * data_received writes the bytes back; the client is a protocol that
 * sends its messages, checks every echo and closes. Both run in one loop,
 * on 127.0.0.1 and a port the kernel picks.
 *
 *     echo_transport [--proactor] [--tls CERT KEY] [--serve PORT]
 *
 * --proactor runs it on the proactor loop (io_uring on Linux, IOCP on
 * Windows); the program is otherwise the same on both loop families.
 * --tls serves TLS with that certificate and key (PEM files), and the
 * built-in client trusts CERT and checks that it names "localhost":
 * only the server's and client's options change, not their protocols.
 * With --serve, try `openssl s_client -connect 127.0.0.1:PORT`.
 * --serve PORT serves on 127.0.0.1:PORT until Ctrl-C (SIGINT) instead of
 * running the built-in client (port 0: the kernel's pick, which it
 * prints); try it with `nc 127.0.0.1 PORT`. Build
 * against an installed libloop with
 *     cc echo_transport.c $(pkg-config --cflags --libs libloop)
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
#endif

#include <loop.h>

static void die(int r, const char *what) {
        fprintf(stderr, "echo_transport: %s: %s\n", what, loop_strerror(r));
        exit(EXIT_FAILURE);
}

/* ---- the server's protocol: one per connection ------------------------------ */

static int server_made(loop_transport_t *t, void *userdata) {
        struct sockaddr_storage peer;
        socklen_t len = sizeof(peer);
        char host[64] = "?";

        (void) userdata;
        if (loop_transport_get_peername(t, (struct sockaddr *) &peer, &len) == 0 && peer.ss_family == AF_INET)
                inet_ntop(AF_INET, &((struct sockaddr_in *) &peer)->sin_addr, host, sizeof(host));
        printf("server: connection from %s\n", host);
        return 0;
}

static int server_received(loop_transport_t *t, const void *data, size_t size, void *userdata) {
        (void) userdata;
        /* Never blocks: what the kernel does not take now is buffered. */
        return loop_transport_write(t, data, size);
}

static int server_lost(loop_transport_t *t, int error, void *userdata) {
        (void) t;
        (void) userdata;
        printf("server: connection closed%s%s\n", error ? ": " : "", error ? loop_strerror(error) : "");
        return 0;
}

static const struct loop_protocol_ops server_protocol = {
        .size = sizeof(struct loop_protocol_ops),
        .connection_made = server_made,
        .data_received = server_received,
        .connection_lost = server_lost,
        /* eof_received NULL: the server closes its end when the client does. */
};

static int factory(loop_server_t *server, const struct loop_protocol_ops **ops, void **userdata, void *arg) {
        (void) server;
        (void) arg;
        *ops = &server_protocol;
        *userdata = NULL;
        return 0;
}

/* ---- the client's protocol ------------------------------------------------------- */

static const char *const messages[] = { "hello", "echo, echo", "goodbye" };
#define N_MESSAGES (sizeof(messages) / sizeof(messages[0]))

struct client {
        size_t next;                    /* the message whose echo is awaited */
        char got[64];
        size_t n_got;
        loop_future_t *done;            /* completed by connection_lost */
};

static int client_send_next(loop_transport_t *t, struct client *c) {
        if (c->next == N_MESSAGES)
                return loop_transport_close(t);
        return loop_transport_write(t, messages[c->next], strlen(messages[c->next]));
}

static int client_made(loop_transport_t *t, void *userdata) {
        return client_send_next(t, userdata);
}

static int client_received(loop_transport_t *t, const void *data, size_t size, void *userdata) {
        struct client *c = userdata;
        const char *want = messages[c->next];
        size_t len = strlen(want);

        /* A stream may deliver the echo in pieces. */
        if (c->n_got + size > len)
                return -EPROTO;
        memcpy(c->got + c->n_got, data, size);
        c->n_got += size;
        if (c->n_got < len)
                return 0;
        printf("client: sent \"%s\", got back \"%.*s\"\n", want, (int) c->n_got, c->got);
        if (memcmp(c->got, want, len) != 0)
                return -EPROTO;
        c->n_got = 0;
        c->next++;
        return client_send_next(t, c);
}

static int client_lost(loop_transport_t *t, int error, void *userdata) {
        struct client *c = userdata;

        (void) t;
        if (error == 0 && c->next < N_MESSAGES)
                error = -ECONNRESET;
        if (error < 0)
                return loop_future_set_error(c->done, error);
        return loop_future_set_result(c->done, NULL, NULL);
}

static const struct loop_protocol_ops client_protocol = {
        .size = sizeof(struct loop_protocol_ops),
        .connection_made = client_made,
        .data_received = client_received,
        .connection_lost = client_lost,
};

/* ---- main -------------------------------------------------------------------------- */

static int on_sigint(loop_t *loop, int signum, void *userdata) {
        (void) signum;
        (void) userdata;
        printf("server: interrupted\n");
        return loop_stop(loop);
}

int main(int argc, char **argv) {
        bool proactor = false;
        const char *serve = NULL, *cert = NULL, *key = NULL;
        loop_tls_context_t *server_tls = NULL, *client_tls = NULL;
        loop_t *loop = NULL;
        loop_future_t *f = NULL;
        loop_server_t *server;
        int r;

        for (int i = 1; i < argc; i++) {
                if (strcmp(argv[i], "--proactor") == 0)
                        proactor = true;
                else if (strcmp(argv[i], "--serve") == 0 && i + 1 < argc)
                        serve = argv[++i];
                else if (strcmp(argv[i], "--tls") == 0 && i + 2 < argc) {
                        cert = argv[++i];
                        key = argv[++i];
                } else {
                        fprintf(stderr, "usage: echo_transport [--proactor] [--tls CERT KEY] [--serve PORT]\n");
                        return 2;
                }
        }
        r = proactor ? loop_proactor_loop_new(&loop) : loop_new(&loop);
        if (proactor && (r == -EOPNOTSUPP || r == -ENOSYS || r == -EPERM)) {
                fprintf(stderr, "echo_transport: no proactor loop here: %s\n", loop_strerror(r));
                return 77;
        }
        if (r < 0)
                die(r, "loop");

        if (cert) {
                r = loop_tls_context_new_server(cert, key, &server_tls);
                if (r == 0)
                        r = loop_tls_context_new_client(&client_tls);
                if (r == 0)
                        r = loop_tls_context_load_verify_locations(client_tls, cert, NULL);
                if (r == -EOPNOTSUPP) {
                        fprintf(stderr, "echo_transport: no TLS in this libloop (OpenSSL missing)\n");
                        return 77;
                }
                if (r < 0)
                        die(r, "TLS context");
        }
        struct loop_server_options sopts = { .size = sizeof(sopts), .tls = server_tls };
        r = loop_create_server(loop, factory, NULL, "127.0.0.1", serve ? serve : "0", &sopts, &f);
        if (r < 0 || (r = loop_run_until_complete(loop, f)) < 0)
                die(r, "create_server");
        loop_future_result(f, (void **) &server);
        server = loop_server_ref(server);
        f = loop_future_unref(f);

        /* The port the server got (the kernel's pick for port 0). */
        struct sockaddr_in addr;
        socklen_t len = sizeof(addr);
        char port[16];
        int fd;

        loop_server_get_fds(server, &fd, 1);
        getsockname(fd, (struct sockaddr *) &addr, &len);
        snprintf(port, sizeof(port), "%u", ntohs(addr.sin_port));
        if (serve) {
                r = loop_add_signal_handler(loop, SIGINT, on_sigint, NULL);
                if (r < 0)
                        die(r, "SIGINT");
                printf("server: serving on 127.0.0.1:%s\n", port);
                fflush(stdout);
                r = loop_run_forever(loop);
        } else {
                struct client c = { 0 };

                r = loop_create_future(loop, &c.done);
                if (r < 0)
                        die(r, "future");
                /* The future completes once connection_made has run. */
                struct loop_connection_options copts = {
                        .size = sizeof(copts),
                        .tls = client_tls,
                        .server_hostname = client_tls ? "localhost" : NULL,
                };
                r = loop_create_connection(loop, &client_protocol, &c, "127.0.0.1", port, &copts, &f);
                if (r < 0 || (r = loop_run_until_complete(loop, f)) < 0)
                        die(r, "create_connection");
                f = loop_future_unref(f);
                r = loop_run_until_complete(loop, c.done);
                loop_future_unref(c.done);
        }
        /* asyncio: server.close(); await server.wait_closed() */
        loop_server_close(server);
        if (loop_server_wait_closed(server, &f) == 0) {
                loop_run_until_complete(loop, f);
                loop_future_unref(f);
        }
        loop_server_unref(server);
        loop_tls_context_unref(server_tls);
        loop_tls_context_unref(client_tls);
        loop_close(loop);
        loop_unref(loop);
        if (r < 0)
                die(r, "echo");
        return 0;
}
