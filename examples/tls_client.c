/* SPDX-License-Identifier: MIT */
/*
 * Fetch a page over HTTPS (HTTP/1.0, so the server closes when it is
 * done) with a TLS transport, and print it:
 *
 *     tls_client [--proactor] [--cafile FILE] [--insecure] [--alpn PROTO]
 *                HOST PORT [PATH]
 *
 * The peer's certificate is verified against the system's CAs, or FILE's
 * (a self-signed test server's own certificate will do), and must name
 * HOST; --insecure turns both checks off. Try it against a local server:
 *     openssl req -x509 -newkey rsa:2048 -nodes -keyout key.pem -out cert.pem \
 *             -days 1 -subj /CN=localhost -addext subjectAltName=DNS:localhost
 *     openssl s_server -accept 4433 -cert cert.pem -key key.pem -www &
 *     tls_client --cafile cert.pem localhost 4433
 * The exit status is 0 when the page came and the connection closed
 * cleanly, 1 otherwise (the error is printed: "Permission denied" is a
 * certificate that failed verification).
 */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <loop.h>

struct fetch {
        const char *host, *path;
        size_t n_bytes;
        loop_future_t *done;            /* connection_lost completes it */
};

static int made(loop_transport_t *t, void *userdata) {
        struct fetch *f = userdata;
        const char *alpn = loop_transport_get_alpn_protocol(t);
        char req[1024];

        if (alpn)
                fprintf(stderr, "tls_client: ALPN agreed on \"%s\"\n", alpn);
        int n = snprintf(req, sizeof(req), "GET %s HTTP/1.0\r\nHost: %s\r\nConnection: close\r\n\r\n", f->path,
                         f->host);
        if (n < 0 || (size_t) n >= sizeof(req))
                return -ENAMETOOLONG;
        return loop_transport_write(t, req, (size_t) n);
}

static int received(loop_transport_t *t, const void *data, size_t size, void *userdata) {
        struct fetch *f = userdata;

        (void) t;
        f->n_bytes += size;
        fwrite(data, 1, size, stdout);
        return 0;
}

static int lost(loop_transport_t *t, int error, void *userdata) {
        struct fetch *f = userdata;

        (void) t;
        if (error < 0)
                return loop_future_set_error(f->done, error);
        return loop_future_set_result(f->done, NULL, NULL);
}

static const struct loop_protocol_ops protocol = {
        .size = sizeof(struct loop_protocol_ops),
        .connection_made = made,
        .data_received = received,
        .connection_lost = lost,
        /* eof_received NULL: the server's close_notify closes our end too. */
};

static void usage(void) {
        fprintf(stderr, "usage: tls_client [--proactor] [--cafile FILE] [--insecure] [--alpn PROTO] HOST PORT [PATH]\n");
        exit(2);
}

int main(int argc, char **argv) {
        bool proactor = false, insecure = false;
        const char *cafile = NULL, *alpn = NULL, *port;
        struct fetch f = { .path = "/" };
        loop_tls_context_t *tls = NULL;
        loop_future_t *conn = NULL;
        loop_t *loop = NULL;
        int i, r;

        for (i = 1; i < argc && argv[i][0] == '-'; i++) {
                if (strcmp(argv[i], "--proactor") == 0)
                        proactor = true;
                else if (strcmp(argv[i], "--insecure") == 0)
                        insecure = true;
                else if (strcmp(argv[i], "--cafile") == 0 && i + 1 < argc)
                        cafile = argv[++i];
                else if (strcmp(argv[i], "--alpn") == 0 && i + 1 < argc)
                        alpn = argv[++i];
                else
                        usage();
        }
        if (argc - i < 2 || argc - i > 3)
                usage();
        f.host = argv[i];
        port = argv[i + 1];
        if (argc - i == 3)
                f.path = argv[i + 2];

        r = proactor ? loop_proactor_loop_new(&loop) : loop_new(&loop);
        if (r < 0) {
                fprintf(stderr, "tls_client: loop: %s\n", loop_strerror(r));
                return proactor ? 77 : 1;
        }
        r = loop_tls_context_new_client(&tls);
        if (r == -EOPNOTSUPP) {
                fprintf(stderr, "tls_client: no TLS in this libloop (OpenSSL missing)\n");
                return 77;
        }
        if (r == 0 && cafile)
                r = loop_tls_context_load_verify_locations(tls, cafile, NULL);
        if (r == 0 && insecure)
                r = loop_tls_context_set_verify(tls, 0);
        if (r == 0 && alpn)
                r = loop_tls_context_set_alpn_protocols(tls, &alpn, 1);
        if (r < 0) {
                fprintf(stderr, "tls_client: TLS context: %s\n", loop_strerror(r));
                return 1;
        }

        struct loop_connection_options opts = {
                .size = sizeof(opts),
                .tls = tls,
        };
        r = loop_create_future(loop, &f.done);
        if (r == 0)
                r = loop_create_connection(loop, &protocol, &f, f.host, port, &opts, &conn);
        /* Completes after the handshake, once connection_made has run. */
        if (r == 0)
                r = loop_run_until_complete(loop, conn);
        if (r == 0)
                r = loop_run_until_complete(loop, f.done);
        if (r < 0)
                fprintf(stderr, "tls_client: %s:%s: %s\n", f.host, port, loop_strerror(r));
        else
                fprintf(stderr, "tls_client: %zu bytes\n", f.n_bytes);
        loop_future_unref(conn);
        loop_future_unref(f.done);
        loop_tls_context_unref(tls);
        loop_close(loop);
        loop_unref(loop);
        return r < 0 ? 1 : 0;
}
