/* SPDX-License-Identifier: MIT */
/*
 * TLS over transports: asyncio's SSLProtocol and _SSLProtocolTransport,
 * on OpenSSL's memory BIOs, so that one engine serves both loop families.
 *
 * Two transports make one TLS connection:
 *
 *   the caller's protocol  <->  app transport (driver: this file)
 *                                    |  SSL_read / SSL_write
 *                                 SSL object, BIO in / BIO out
 *                                    |  ciphertext
 *   this file's raw protocol <->  raw transport (the socket's, either family)
 *
 * Ciphertext from the socket reaches the raw protocol's data_received and
 * is written into BIO in; SSL_do_handshake and then SSL_read turn it into
 * plaintext for the caller's protocol. What the caller writes goes through
 * SSL_write into BIO out, which is handed to the raw transport as it fills
 * (straight from the BIO's memory, no copy of ours).
 *
 * - The app transport is made deferred and started once the handshake is
 *   over: connection_made (or, for start_tls, only the waiter) comes after
 *   it, as in asyncio.
 * - Flow control: the app transport's water marks are the raw transport's
 *   too (passed on), and the size it reports includes the raw transport's
 *   buffer, so pause_writing/resume_writing follow the socket.
 * - Closing: once the app transport's buffer is through SSL_write, its
 *   shutdown sends close_notify and closes the raw transport, which
 *   flushes; when that one is lost, so is the app transport. The peer's
 *   close_notify is not waited for (RFC 8446 §6.1 allows it), so there is
 *   no shutdown timeout. TLS has no half-close: write_eof is -EOPNOTSUPP.
 * - An EOF from the socket without close_notify is the app's EOF (asyncio
 *   does the same); during the handshake it is ECONNRESET.
 * - Errors: a certificate that fails verification is -EACCES; any other
 *   TLS failure -EPROTO; a handshake that does not end in time -ETIMEDOUT.
 *   In debug mode the exception handler gets OpenSSL's reason as well.
 *
 * Lifetime: struct tls is shared by the two transports, reference-counted:
 * one for the app transport (dropped when it is freed), one for the raw
 * protocol (dropped in its connection_lost, its last call).
 */
#include <stdlib.h>
#include <string.h>
#ifndef LOOP_WINDOWS
#include <arpa/inet.h>
#endif

#include "transport.h"

#ifdef ENABLE_OPENSSL
#include "openssl.h"

#define DEFAULT_HANDSHAKE_TIMEOUT_NS INT64_C(60000000000)       /* asyncio's SSL_HANDSHAKE_TIMEOUT */
#define READ_CHUNK (64 * 1024)

struct loop_tls_context {
        unsigned n_ref;
        const struct loop__openssl *o;
        SSL_CTX *ctx;
        bool server;
        bool check_hostname;
        unsigned char *alpn;            /* wire format: length-prefixed names */
        unsigned alpn_len;
};

struct tls {
        unsigned n_ref;
        const struct loop__openssl *o;
        loop_tls_context_t *ctx;
        SSL *ssl;
        BIO *in, *out;
        loop_transport_t *app;          /* NULL once freed */
        loop_transport_t *raw;          /* a reference */
        loop_handle_t *timer;           /* the handshake's deadline */
        int64_t timeout_ns;
        bool server_side;
        bool handshake_done;
        bool failed;
        bool raw_eof, eof_given;
        bool process_queued;
        bool need_protocol;             /* a server's: the factory is asked after the handshake */
        loop_server_t *server;
        char *alpn;                     /* the protocol agreed on, NUL-terminated */
};

/* ---- contexts -------------------------------------------------------------------- */

static int context_new(bool server, loop_tls_context_t **ret) {
        const struct loop__openssl *o;
        loop_tls_context_t *c;
        int r;

        return_if_fail(ret, -EINVAL);
        r = loop__openssl(&o);
        if (r < 0)
                return r;
        c = calloc(1, sizeof(*c));
        if (!c)
                return -ENOMEM;
        c->n_ref = 1;
        c->o = o;
        c->server = server;
        c->ctx = o->SSL_CTX_new(server ? o->TLS_server_method() : o->TLS_client_method());
        if (!c->ctx) {
                free(c);
                return -ENOMEM;
        }
        /* What Python's ssl.create_default_context() gives: TLS 1.2 at
         * least, and for clients the system's CAs, the peer verified and
         * its name checked. */
        o->SSL_CTX_ctrl(c->ctx, SSL_CTRL_SET_MIN_PROTO_VERSION, TLS1_2_VERSION, NULL);
        o->SSL_CTX_ctrl(c->ctx, SSL_CTRL_MODE, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER,
                        NULL);
        if (!server) {
                o->SSL_CTX_set_verify(c->ctx, SSL_VERIFY_PEER, NULL);
                (void) o->SSL_CTX_set_default_verify_paths(c->ctx);
                c->check_hostname = true;
        }
        *ret = c;
        return 0;
}

LOOP_EXPORT int loop_tls_context_new_client(loop_tls_context_t **ret) {
        return context_new(false, ret);
}

static int file_error(const char *path) {
        FILE *f = fopen(path, "r");

        if (!f)
                return -errno;
        fclose(f);
        return -EINVAL;         /* there, and not what OpenSSL wants */
}

LOOP_EXPORT int loop_tls_context_new_server(const char *cert_file, const char *key_file, loop_tls_context_t **ret) {
        loop_tls_context_t *c;
        int r;

        return_if_fail(cert_file && ret, -EINVAL);
        r = context_new(true, &c);
        if (r < 0)
                return r;
        const struct loop__openssl *o = c->o;
        if (o->SSL_CTX_use_certificate_chain_file(c->ctx, cert_file) != 1)
                r = file_error(cert_file);
        else if (o->SSL_CTX_use_PrivateKey_file(c->ctx, key_file ? key_file : cert_file, SSL_FILETYPE_PEM) != 1)
                r = file_error(key_file ? key_file : cert_file);
        else if (o->SSL_CTX_check_private_key(c->ctx) != 1)
                r = -EINVAL;
        o->ERR_clear_error();
        if (r < 0) {
                loop_tls_context_unref(c);
                return r;
        }
        *ret = c;
        return 0;
}

LOOP_EXPORT loop_tls_context_t *loop_tls_context_ref(loop_tls_context_t *c) {
        if (c)
                __atomic_add_fetch(&c->n_ref, 1, __ATOMIC_RELAXED);
        return c;
}

LOOP_EXPORT loop_tls_context_t *loop_tls_context_unref(loop_tls_context_t *c) {
        if (c && __atomic_sub_fetch(&c->n_ref, 1, __ATOMIC_ACQ_REL) == 0) {
                c->o->SSL_CTX_free(c->ctx);
                free(c->alpn);
                free(c);
        }
        return NULL;
}

LOOP_EXPORT int loop_tls_context_load_verify_locations(loop_tls_context_t *c, const char *cafile,
                                                       const char *capath) {
        return_if_fail(c && (cafile || capath), -EINVAL);
        int ok = c->o->SSL_CTX_load_verify_locations(c->ctx, cafile, capath);
        c->o->ERR_clear_error();
        if (ok == 1)
                return 0;
        return cafile ? file_error(cafile) : -EINVAL;
}

LOOP_EXPORT int loop_tls_context_set_verify(loop_tls_context_t *c, int verify) {
        return_if_fail(c, -EINVAL);
        /* A server that verifies asks for the client's certificate and
         * refuses a client without one (Python's CERT_REQUIRED). */
        int mode = !verify ? SSL_VERIFY_NONE
                           : c->server ? SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT : SSL_VERIFY_PEER;
        c->o->SSL_CTX_set_verify(c->ctx, mode, NULL);
        if (!verify)
                c->check_hostname = false;
        return 0;
}

LOOP_EXPORT int loop_tls_context_set_check_hostname(loop_tls_context_t *c, int check) {
        return_if_fail(c, -EINVAL);
        /* A name check without verification means nothing. Python 3.7+
         * turns verification on for it; we refuse instead, so that
         * turning verification on is never a side effect. */
        if (check && c->o->SSL_CTX_get_verify_mode(c->ctx) == SSL_VERIFY_NONE)
                return -EINVAL;
        c->check_hostname = check != 0;
        return 0;
}

static int alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen, const unsigned char *in,
                       unsigned inlen, void *arg) {
        loop_tls_context_t *c = arg;
        unsigned char *o = NULL;

        (void) ssl;
        if (c->o->SSL_select_next_proto(&o, outlen, c->alpn, c->alpn_len, in, inlen) != OPENSSL_NPN_NEGOTIATED)
                return SSL_TLSEXT_ERR_NOACK;    /* none in common: go on without, as Python does */
        *out = o;
        return SSL_TLSEXT_ERR_OK;
}

LOOP_EXPORT int loop_tls_context_set_alpn_protocols(loop_tls_context_t *c, const char *const *protocols, size_t n) {
        size_t len = 0;

        return_if_fail(c && (protocols || n == 0), -EINVAL);
        for (size_t i = 0; i < n; i++) {
                size_t k = protocols[i] ? strlen(protocols[i]) : 0;
                return_if_fail(k > 0 && k <= 255, -EINVAL);
                len += 1 + k;
        }
        return_if_fail(len <= 65535, -EINVAL);
        unsigned char *wire = malloc(len ? len : 1), *p = wire;
        if (!wire)
                return -ENOMEM;
        for (size_t i = 0; i < n; i++) {
                size_t k = strlen(protocols[i]);
                *p++ = (unsigned char) k;
                memcpy(p, protocols[i], k);
                p += k;
        }
        if (!c->server && c->o->SSL_CTX_set_alpn_protos(c->ctx, wire, (unsigned) len) != 0) {
                free(wire);             /* returns 0 on success, unlike the rest */
                return -ENOMEM;
        }
        free(c->alpn);
        c->alpn = wire;
        c->alpn_len = (unsigned) len;
        if (c->server)
                c->o->SSL_CTX_set_alpn_select_cb(c->ctx, n ? alpn_select : NULL, c);
        return 0;
}

LOOP_EXPORT void *loop_tls_context_get_ssl_ctx(loop_tls_context_t *c) {
        return c ? c->ctx : NULL;
}

bool loop__tls_context_is_server(const loop_tls_context_t *c) {
        return c->server;
}

int loop__tls_check_client(const loop_tls_context_t *c, const char *hostname) {
        if (c->server)
                return -EINVAL;         /* a server's context cannot start a client's handshake */
        if (c->check_hostname && (!hostname || !*hostname))
                return -EINVAL;         /* Python: check_hostname requires server_hostname */
        return 0;
}

/* ---- the engine ------------------------------------------------------------------ */

static void tls_unref(struct tls *t) {
        if (!t || --t->n_ref > 0)
                return;
        if (t->timer) {
                (void) loop_handle_cancel(t->timer);
                loop_handle_unref(t->timer);
        }
        if (t->ssl)
                t->o->SSL_free(t->ssl);         /* frees both BIOs */
        loop_transport_unref(t->raw);
        loop_tls_context_unref(t->ctx);
        free(t->alpn);
        free(t);
}

/* What went wrong, as an errno value, with OpenSSL's reason in debug mode. */
static int tls_error(struct tls *t, const char *what) {
        const struct loop__openssl *o = t->o;
        long verify = o->SSL_get_verify_result(t->ssl);
        int r = verify != X509_V_OK ? -EACCES : -EPROTO;
        loop_t *loop = t->raw->loop;

        if (loop_get_debug(loop)) {
                char reason[256] = "", msg[400];
                unsigned long e = o->ERR_peek_error();
                if (verify != X509_V_OK)
                        snprintf(reason, sizeof(reason), "certificate verify failed: %s",
                                 o->X509_verify_cert_error_string(verify));
                else if (e)
                        o->ERR_error_string_n(e, reason, sizeof(reason));
                snprintf(msg, sizeof(msg), "TLS %s failed: %s", what, reason[0] ? reason : "no reason given");
                loop__report(loop, msg, r, NULL, t->raw->fd);
        }
        o->ERR_clear_error();
        return r;
}

/* Hand what SSL has written to the raw transport, from the BIO's memory. */
static void flush_out(struct tls *t) {
        char *p = NULL;
        long n = t->o->BIO_ctrl(t->out, BIO_CTRL_INFO, 0, (char *) &p);

        if (n <= 0)
                return;
        int r = loop_transport_write(t->raw, p, (size_t) n);
        (void) t->o->BIO_ctrl(t->out, BIO_CTRL_RESET, 0, NULL);
        if (r < 0 && r != -EPIPE && t->app)
                loop__transport_fatal(t->app, r);
}

/* The handshake failed (or timed out): the caller's future gets error, the
 * connection goes. */
static void fail(struct tls *t, int error) {
        if (t->failed)
                return;
        t->failed = true;
        if (t->app && t->app->waiter) {
                loop__future_on_cancel(t->app->waiter, NULL, NULL);
                if (!loop_future_done(t->app->waiter))
                        (void) loop_future_set_error(t->app->waiter, error);
        }
        /* raw_lost ends the app transport, before the socket closes. */
        if (t->raw)
                (void) loop_transport_abort(t->raw);
        else if (t->app)
                loop__transport_fatal(t->app, error);
}

static int process_cb(loop_t *loop, void *userdata);

static void process_discard(void *userdata) {
        tls_unref(userdata);
}

static void process_later(struct tls *t) {
        if (t->process_queued)
                return;
        t->n_ref++;
        /* A loop closed with it queued drops it: the discard lets go. */
        if (loop__call_soon_discard(t->raw->loop, process_cb, t, process_discard) < 0) {
                tls_unref(t);
                return;
        }
        t->process_queued = true;
}

static void handshake(struct tls *t) {
        const struct loop__openssl *o = t->o;
        int r = o->SSL_do_handshake(t->ssl);

        flush_out(t);
        if (r == 1) {
                t->handshake_done = true;
                if (t->timer) {
                        (void) loop_handle_cancel(t->timer);
                        t->timer = loop_handle_unref(t->timer);
                }
                const unsigned char *alpn = NULL;
                unsigned alpn_len = 0;
                o->SSL_get0_alpn_selected(t->ssl, &alpn, &alpn_len);
                if (alpn_len > 0 && (t->alpn = malloc(alpn_len + 1))) {
                        memcpy(t->alpn, alpn, alpn_len);
                        t->alpn[alpn_len] = 0;
                }
                if (!t->app)
                        return;
                if (t->app->waiter)
                        loop__future_on_cancel(t->app->waiter, NULL, NULL);
                if (t->need_protocol) {
                        const struct loop_protocol_ops *ops;
                        void *userdata;
                        t->need_protocol = false;
                        r = loop__server_make_protocol(t->server, &ops, &userdata);
                        if (r == 0)
                                r = loop_transport_set_protocol(t->app, ops, userdata);
                        if (r < 0) {
                                loop__report(t->raw->loop,
                                             "Error in the protocol factory of a server: the connection is closed", r,
                                             NULL, t->raw->fd);
                                fail(t, r);
                                return;
                        }
                }
                /* connection_made (or start_tls's future) from the loop; the
                 * app transport's start then reads what already came. */
                if ((r = loop__transport_start(t->app)) < 0)
                        fail(t, r);
                return;
        }
        int e = o->SSL_get_error(t->ssl, r);
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
                return;
        fail(t, tls_error(t, "handshake"));
}

static void give_eof(struct tls *t) {
        if (t->eof_given || !t->app)
                return;
        t->eof_given = true;
        loop__transport_eof(t->app);
}

/* Turn what BIO in holds into plaintext for the app, as far as it reads. */
static void process(struct tls *t) {
        const struct loop__openssl *o = t->o;

        if (t->failed || !t->app)
                return;
        if (!t->handshake_done) {
                handshake(t);
                return;
        }
        loop_transport_t *app = t->app;
        while (app->reading && !t->eof_given) {
                void *buf;
                size_t size, off = 0;
                int e = SSL_ERROR_NONE;
                int r = loop__transport_buffered(app) ? loop__transport_get_buffer(app, READ_CHUNK, &buf, &size)
                                                      : loop__transport_recv_buffer(app->loop, &buf, &size);
                if (r < 0) {
                        if (!app->closing)
                                loop__transport_fatal(app, r);
                        return;
                }
                /* Every record there is, in one delivery, as asyncio's
                 * sslproto does: not one data_received per 16 KiB record. */
                while (off < size) {
                        size_t n = 0;
                        r = o->SSL_read_ex(t->ssl, (char *) buf + off, size - off, &n);
                        if (r != 1) {
                                e = o->SSL_get_error(t->ssl, r);
                                break;
                        }
                        off += n;
                }
                if (off > 0) {
                        if (loop__transport_buffered(app))
                                loop__transport_buffer_updated(app, off);
                        else
                                loop__transport_received(app, buf, off);
                }
                if (e == SSL_ERROR_NONE)
                        continue;       /* the buffer filled up: more may wait */
                if (e == SSL_ERROR_WANT_READ) {
                        if (t->raw_eof)
                                give_eof(t);
                        break;
                }
                if (e == SSL_ERROR_ZERO_RETURN) {
                        give_eof(t);    /* close_notify */
                        break;
                }
                if (e == SSL_ERROR_WANT_WRITE)
                        break;
                if (!app->lost)
                        loop__transport_fatal(app, tls_error(t, "read"));
                return;
        }
        flush_out(t);   /* what reading wrote: a key update, session tickets */
        /* A renegotiation may have held writes back. */
        if (t->app && !t->app->lost && t->app->wbuf.len > 0)
                t->app->drv->flush(t->app);
}

static int process_cb(loop_t *loop, void *userdata) {
        struct tls *t = userdata;

        (void) loop;
        t->process_queued = false;
        process(t);
        tls_unref(t);
        return 0;
}

static int on_timeout(loop_t *loop, void *userdata) {
        struct tls *t = userdata;

        (void) loop;
        t->timer = loop_handle_unref(t->timer);
        if (!t->handshake_done) {
                if (loop_get_debug(loop))
                        loop__report(loop, "TLS handshake timed out", -ETIMEDOUT, NULL, t->raw->fd);
                fail(t, -ETIMEDOUT);
        }
        return 0;
}

static int begin(struct tls *t) {
        if (t->timeout_ns > 0) {
                int r = loop_call_later_ns(t->raw->loop, t->timeout_ns, on_timeout, t, &t->timer);
                if (r < 0)
                        return r;
        }
        /* The client speaks first (ClientHello); a server waits. */
        if (!t->server_side)
                handshake(t);
        return 0;
}

/* ---- the raw transport's protocol ------------------------------------------------ */

static int raw_made(loop_transport_t *raw, void *userdata) {
        (void) raw;
        return begin(userdata);
}

static int raw_received(loop_transport_t *raw, const void *data, size_t size, void *userdata) {
        struct tls *t = userdata;

        (void) raw;
        if (t->failed)
                return 0;
        /* A memory BIO takes everything (it copies). */
        if (t->o->BIO_write(t->in, data, (int) size) != (int) size)
                return -ENOMEM;
        process(t);
        return 0;
}

static int raw_eof(loop_transport_t *raw, void *userdata) {
        struct tls *t = userdata;

        (void) raw;
        t->raw_eof = true;
        if (!t->handshake_done) {
                fail(t, -ECONNRESET);
                return 0;
        }
        /* What BIO in still holds comes first. */
        process(t);
        return 1;       /* the app decides when to close */
}

static int raw_lost(loop_transport_t *raw, int error, void *userdata) {
        struct tls *t = userdata;

        (void) raw;
        if (t->timer) {
                (void) loop_handle_cancel(t->timer);
                t->timer = loop_handle_unref(t->timer);
        }
        if (!t->handshake_done && !t->failed) {
                t->failed = true;
                if (t->app && t->app->waiter) {
                        loop__future_on_cancel(t->app->waiter, NULL, NULL);
                        if (!loop_future_done(t->app->waiter))
                                (void) loop_future_set_error(t->app->waiter, error < 0 ? error : -ECONNRESET);
                }
        }
        /* Now, while the socket is still open (the raw transport closes
         * it after this returns): the app's connection_lost may still ask
         * for the peer's address, as on a plain transport. */
        t->n_ref++;
        if (t->app)
                loop__transport_lost_now(t->app, t->handshake_done ? error : (error < 0 ? error : -ECONNRESET));
        tls_unref(t);
        tls_unref(t);   /* the raw protocol's */
        return 0;
}

static int raw_resume_writing(loop_transport_t *raw, void *userdata) {
        struct tls *t = userdata;

        (void) raw;
        if (t->app)
                loop__transport_sent(t->app);
        return 0;
}

static const struct loop_protocol_ops raw_protocol = {
        .size = sizeof(struct loop_protocol_ops),
        .connection_made = raw_made,
        .data_received = raw_received,
        .eof_received = raw_eof,
        .connection_lost = raw_lost,
        .resume_writing = raw_resume_writing,
};

/* ---- the app transport's driver ---------------------------------------------------- */

static int drv_start(loop_transport_t *app) {
        struct tls *t = app->drv_state;

        process_later(t);
        return 0;
}

static int drv_set_reading(loop_transport_t *app, bool on) {
        struct tls *t = app->drv_state;

        /* The socket's reading follows, so that BIO in stays bounded. */
        if (!on)
                return loop_transport_pause_reading(t->raw);
        int r = loop_transport_resume_reading(t->raw);
        process_later(t);
        return r;
}

/* Through SSL_write; 0 and nothing taken when TLS must read first. */
static size_t tls_write(loop_transport_t *app, const void *data, size_t n) {
        struct tls *t = app->drv_state;
        size_t done = 0;

        if (!t->handshake_done)
                return 0;
        while (done < n) {
                size_t k = 0;
                int r = t->o->SSL_write_ex(t->ssl, (const char *) data + done, n - done, &k);
                if (r != 1) {
                        int e = t->o->SSL_get_error(t->ssl, r);
                        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
                                break;
                        flush_out(t);
                        loop__transport_fatal(app, tls_error(t, "write"));
                        return n;
                }
                done += k;
        }
        flush_out(t);
        return done;
}

static void drv_flush(loop_transport_t *app) {
        size_t k = tls_write(app, app->wbuf.base + app->wbuf.head, app->wbuf.len);

        if (app->lost)
                return;
        loop__wbuf_consume(&app->wbuf, k);
        if (app->wbuf.len == 0)
                loop__transport_sent(app);
}

static size_t drv_inflight(const loop_transport_t *app) {
        (void) app;
        return 0;       /* what the raw transport holds, it flushes by itself */
}

static size_t drv_buffered(const loop_transport_t *app) {
        const struct tls *t = app->drv_state;

        return t->raw ? loop_transport_get_write_buffer_size(t->raw) : 0;
}

static void drv_stop(loop_transport_t *app) {
        struct tls *t = app->drv_state;

        if (t->raw)
                (void) loop_transport_abort(t->raw);
}

static void drv_shutdown(loop_transport_t *app) {
        struct tls *t = app->drv_state;

        if (t->handshake_done && !t->failed) {
                (void) t->o->SSL_shutdown(t->ssl);      /* our close_notify */
                flush_out(t);
                t->o->ERR_clear_error();
        }
        /* Flushes, then raw_lost ends the app transport. */
        (void) loop_transport_close(t->raw);
}

static void drv_limits(loop_transport_t *app) {
        struct tls *t = app->drv_state;

        if (t->raw)
                (void) loop_transport_set_write_buffer_limits(t->raw, app->high, app->low);
}

static void drv_free(loop_transport_t *app) {
        struct tls *t = app->drv_state;

        t->app = NULL;
        app->drv_state = NULL;
        tls_unref(t);
}

const struct loop__transport_driver loop__transport_tls = {
        .start = drv_start,
        .set_reading = drv_set_reading,
        .write = tls_write,
        .flush = drv_flush,
        .inflight = drv_inflight,
        .buffered = drv_buffered,
        .stop = drv_stop,
        .free = drv_free,
        .shutdown = drv_shutdown,
        .limits = drv_limits,
        .foreign_fd = true,
        .no_write_eof = true,
};

/* A TLS engine for the connection on fd (raw != NULL: an existing
 * transport, start_tls), with the app transport deferred. */
static int tls_new(loop_t *loop, loop_tls_context_t *ctx, bool server_side, const char *hostname,
                   int64_t timeout_ns, struct tls **ret) {
        const struct loop__openssl *o = ctx->o;
        struct tls *t;

        if (!server_side && ctx->check_hostname && (!hostname || !*hostname))
                return -EINVAL;         /* Python: check_hostname requires server_hostname */
        if (timeout_ns < 0)
                return -EINVAL;
        t = calloc(1, sizeof(*t));
        if (!t)
                return -ENOMEM;
        (void) loop;
        t->n_ref = 1;
        t->o = o;
        t->ctx = loop_tls_context_ref(ctx);
        t->server_side = server_side;
        t->timeout_ns = timeout_ns ? timeout_ns : DEFAULT_HANDSHAKE_TIMEOUT_NS;
        t->ssl = o->SSL_new(ctx->ctx);
        t->in = o->BIO_new(o->BIO_s_mem());
        t->out = o->BIO_new(o->BIO_s_mem());
        if (!t->ssl || !t->in || !t->out) {
                if (t->in)
                        o->BIO_free(t->in);
                if (t->out)
                        o->BIO_free(t->out);
                t->in = t->out = NULL;
                tls_unref(t);
                return -ENOMEM;
        }
        /* An empty BIO in means "wait for more", not EOF. */
        o->BIO_ctrl(t->in, BIO_C_SET_BUF_MEM_EOF_RETURN, -1, NULL);
        o->BIO_ctrl(t->out, BIO_C_SET_BUF_MEM_EOF_RETURN, -1, NULL);
        o->SSL_set_bio(t->ssl, t->in, t->out);
        if (server_side)
                o->SSL_set_accept_state(t->ssl);
        else {
                o->SSL_set_connect_state(t->ssl);
                if (hostname && *hostname) {
                        /* SNI (not for an address: RFC 6066 §3), and the
                         * name or address the certificate must carry. */
                        unsigned char ip[16];
                        bool is_ip = inet_pton(AF_INET, hostname, ip) == 1 || inet_pton(AF_INET6, hostname, ip) == 1;
                        bool ok = is_ip || o->SSL_ctrl(t->ssl, SSL_CTRL_SET_TLSEXT_HOSTNAME,
                                                       TLSEXT_NAMETYPE_host_name, (void *) hostname) == 1;
                        if (ok && ctx->check_hostname) {
                                if (is_ip)
                                        ok = o->X509_VERIFY_PARAM_set1_ip_asc(o->SSL_get0_param(t->ssl), hostname) == 1;
                                else {
                                        ok = o->SSL_set1_host(t->ssl, hostname) == 1;
                                        o->SSL_set_hostflags(t->ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
                                }
                        }
                        if (!ok) {
                                o->ERR_clear_error();
                                tls_unref(t);
                                return -EINVAL;
                        }
                }
        }
        *ret = t;
        return 0;
}

/* The app transport over t; takes t's first reference in all cases. */
static int app_new(loop_t *loop, struct tls *t, int fd, const struct loop_protocol_ops *ops, void *userdata,
                   loop_server_t *server, loop_future_t *waiter, bool made, const struct loop__peer *peer) {
        struct loop__transport_args a = {
                .fd = fd,
                .ops = ops,
                .userdata = userdata,
                .server = server,
                .waiter = waiter,
                .drv = &loop__transport_tls,
                .drv_state = t,
                .deferred = true,
                .made = made,
                .peer = peer,
        };
        int r = loop__transport_new_full(loop, &a, &t->app);

        if (r < 0) {
                t->app = NULL;
                tls_unref(t);
                return r;
        }
        return 0;
}

/* The caller's future was cancelled during the handshake: the end, at once. */
static void waiter_cancelled(loop_future_t *f, void *data) {
        struct tls *t = data;

        (void) f;
        t->failed = true;
        if (t->raw)
                (void) loop_transport_abort(t->raw);
}

/* A server's connection before its protocol exists (the factory's turn
 * comes after the handshake). */
static const struct loop_protocol_ops no_protocol = { .size = sizeof(struct loop_protocol_ops) };

int loop__tls_wrap(loop_t *loop, int fd, loop_tls_context_t *ctx, bool server_side, const char *hostname,
                   int64_t timeout_ns, const struct loop_protocol_ops *ops, void *userdata, loop_server_t *server,
                   loop_future_t *waiter, const struct loop__peer *peer) {
        struct tls *t;
        int r;

        if (ops) {
                r = loop__protocol_check(ops);
                if (r < 0)
                        return r;
        } else if (!server)
                return -EINVAL;
        r = tls_new(loop, ctx, server_side, hostname, timeout_ns, &t);
        if (r < 0)
                return r;
        if (!ops) {
                t->need_protocol = true;
                t->server = server;     /* the app transport holds the reference */
                ops = &no_protocol;
        }
        /* The app transport first: deferred, and not owning fd, it is
         * easy to undo; the raw transport takes fd. */
        r = app_new(loop, t, fd, ops, userdata, server, waiter, false, peer);
        if (r < 0)
                return r;
        t->n_ref++;     /* the raw protocol's: raw_lost lets go, even if the raw transport never started */
        struct loop__transport_args ra = {
                .fd = fd,
                .ops = &raw_protocol,
                .userdata = t,
                .lost_always = true,
                .peer = peer,
        };
        r = loop__transport_new_full(loop, &ra, &t->raw);
        if (r < 0) {
                t->raw = NULL;
                t->n_ref--;
                t->failed = true;
                loop__transport_fatal(t->app, r);       /* never made: no protocol call */
                return r;
        }
        loop_transport_ref(t->raw);
        if (waiter)
                loop__future_on_cancel(waiter, waiter_cancelled, t);
        return 0;
}

LOOP_EXPORT int loop_start_tls(loop_transport_t *transport, const struct loop_protocol_ops *ops, void *userdata,
                               loop_tls_context_t *ctx, int server_side, const char *server_hostname,
                               int64_t handshake_timeout_ns, loop_future_t **ret) {
        loop_future_t *f;
        struct tls *t;
        int r;

        return_if_fail(transport && ctx && ret, -EINVAL);
        r = loop__usable(transport->loop);
        if (r < 0)
                return r;
        r = loop__protocol_check(ops);
        if (r < 0)
                return r;
        if (transport->drv == &loop__transport_tls)
                return -EALREADY;       /* TLS in TLS is not a thing asyncio does either */
        if (transport->closing || !transport->made)
                return -ENOTCONN;
        if ((server_side != 0) != ctx->server)
                return -EINVAL;
        r = tls_new(transport->loop, ctx, server_side, server_hostname, handshake_timeout_ns, &t);
        if (r < 0)
                return r;
        r = loop_create_future(transport->loop, &f);
        if (r < 0) {
                tls_unref(t);
                return r;
        }
        /* The socket's transport knows its peer already (or asks). */
        struct loop__peer peer = {&transport->peer.sa, transport->peer_len};
        r = app_new(transport->loop, t, transport->fd, ops, userdata, NULL, f, true, &peer);
        if (r < 0) {
                loop_future_unref(f);
                return r;
        }
        t->n_ref++;     /* the raw protocol's */
        t->raw = loop_transport_ref(transport);
        /* The transport is ours now: its bytes are ciphertext, and the
         * handshake needs them even if the program had paused it. */
        (void) loop_transport_set_protocol(transport, &raw_protocol, t);
        (void) loop_transport_resume_reading(transport);
        loop__future_on_cancel(f, waiter_cancelled, t);
        r = begin(t);
        if (r < 0)
                fail(t, r);
        *ret = f;
        return 0;
}

static const struct tls *tls_of(const loop_transport_t *transport) {
        if (!transport || transport->drv != &loop__transport_tls)
                return NULL;
        return transport->drv_state;
}

LOOP_EXPORT const char *loop_transport_get_alpn_protocol(const loop_transport_t *transport) {
        const struct tls *t = tls_of(transport);

        return t ? t->alpn : NULL;
}

LOOP_EXPORT void *loop_transport_get_ssl(const loop_transport_t *transport) {
        const struct tls *t = tls_of(transport);

        return t ? t->ssl : NULL;
}

#else /* !ENABLE_OPENSSL */

/* Built without OpenSSL: every way to a TLS context says so. */
LOOP_EXPORT int loop_tls_context_new_client(loop_tls_context_t **ret) {
        (void) ret;
        return -EOPNOTSUPP;
}

LOOP_EXPORT int loop_tls_context_new_server(const char *cert_file, const char *key_file, loop_tls_context_t **ret) {
        (void) cert_file, (void) key_file, (void) ret;
        return -EOPNOTSUPP;
}

LOOP_EXPORT loop_tls_context_t *loop_tls_context_ref(loop_tls_context_t *ctx) {
        return ctx;
}

LOOP_EXPORT loop_tls_context_t *loop_tls_context_unref(loop_tls_context_t *ctx) {
        (void) ctx;
        return NULL;
}

LOOP_EXPORT int loop_tls_context_load_verify_locations(loop_tls_context_t *ctx, const char *cafile,
                                                       const char *capath) {
        (void) ctx, (void) cafile, (void) capath;
        return -EOPNOTSUPP;
}

LOOP_EXPORT int loop_tls_context_set_verify(loop_tls_context_t *ctx, int verify) {
        (void) ctx, (void) verify;
        return -EOPNOTSUPP;
}

LOOP_EXPORT int loop_tls_context_set_check_hostname(loop_tls_context_t *ctx, int check) {
        (void) ctx, (void) check;
        return -EOPNOTSUPP;
}

LOOP_EXPORT int loop_tls_context_set_alpn_protocols(loop_tls_context_t *ctx, const char *const *protocols,
                                                    size_t n) {
        (void) ctx, (void) protocols, (void) n;
        return -EOPNOTSUPP;
}

LOOP_EXPORT void *loop_tls_context_get_ssl_ctx(loop_tls_context_t *ctx) {
        (void) ctx;
        return NULL;
}

LOOP_EXPORT int loop_start_tls(loop_transport_t *transport, const struct loop_protocol_ops *ops, void *userdata,
                               loop_tls_context_t *ctx, int server_side, const char *server_hostname,
                               int64_t handshake_timeout_ns, loop_future_t **ret) {
        (void) transport, (void) ops, (void) userdata, (void) ctx, (void) server_side, (void) server_hostname;
        (void) handshake_timeout_ns, (void) ret;
        return -EOPNOTSUPP;
}

LOOP_EXPORT const char *loop_transport_get_alpn_protocol(const loop_transport_t *transport) {
        (void) transport;
        return NULL;
}

LOOP_EXPORT void *loop_transport_get_ssl(const loop_transport_t *transport) {
        (void) transport;
        return NULL;
}

/* No context can exist: these are never reached with one. */
bool loop__tls_context_is_server(const loop_tls_context_t *ctx) {
        (void) ctx;
        return false;
}

int loop__tls_check_client(const loop_tls_context_t *ctx, const char *hostname) {
        (void) ctx, (void) hostname;
        return -EOPNOTSUPP;
}

int loop__tls_wrap(loop_t *loop, int fd, loop_tls_context_t *ctx, bool server_side, const char *hostname,
                   int64_t timeout_ns, const struct loop_protocol_ops *ops, void *userdata, loop_server_t *server,
                   loop_future_t *waiter, const struct loop__peer *peer) {
        (void) loop, (void) fd, (void) ctx, (void) server_side, (void) hostname, (void) timeout_ns, (void) peer;
        (void) ops, (void) userdata, (void) server, (void) waiter;
        return -EOPNOTSUPP;
}

#endif
