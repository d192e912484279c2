/* SPDX-License-Identifier: MIT */
/*
 * TLS over transports (lib/tls.c): a libloop client and server together,
 * and each against the openssl command's s_server and s_client; the
 * error contract (-EACCES for a certificate that fails verification,
 * -EPROTO for other TLS failures, -ETIMEDOUT, -ECONNRESET, -EOPNOTSUPP
 * without libssl); client certificates, ALPN, start_tls, flow control
 * through TLS, close_notify, loop_close, aborts and servers with TLS
 * clients. The suite makes its PKI with tests/tls-pki (the openssl
 * command) in a temporary directory first, or takes a ready one from
 * CHECK_TLS_PKI=DIR, as under wine, where make check-windows makes it on
 * the build machine (without either, every case says so and ends;
 * CHECK_TLS_KEEP=1 leaves the directory, with the children's stderr in
 * children.log). The cases with openssl's s_server and s_client are
 * POSIX only.
 * Each test counts the process's descriptors before and after;
 * tests/run-backends reruns the suite once per backend.
 */
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <signal.h>
#include <stdarg.h>
#ifdef _WIN32
#include <process.h>
#else
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <spawn.h>
#include <sys/wait.h>
#endif

#include "testutil.h"
#include "protocol-events.h"

#ifndef _WIN32
extern char **environ;
#endif

/* ---- the test PKI ------------------------------------------------------ */

static char g_dir[512];         /* the PKI's directory, "" when there is none */
static int g_own_dir;           /* made here (removed at the end) */
static const char *g_no_pki;    /* why there is none */

static const char *pki(const char *name) {
        static char paths[8][640];
        static int next;
        char *p = paths[next++ % 8];

        snprintf(p, sizeof(paths[0]), "%s/%s", g_dir, name);
        return p;
}

#define NEED_PKI()                                                                              \
        do {                                                                                    \
                if (g_no_pki) {                                                                 \
                        printf("%s:%d: %s: SKIP: %s\n", __FILE__, __LINE__, __func__, g_no_pki); \
                        fflush(stdout);                                                         \
                        return;                                                                 \
                }                                                                               \
        } while (0)

static int sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int sh(const char *fmt, ...) {
        char cmd[2048];
        va_list ap;
        int n;

        va_start(ap, fmt);
        n = vsnprintf(cmd, sizeof(cmd), fmt, ap);
        va_end(ap);
        if (n < 0 || (size_t) n >= sizeof(cmd))
                return -1;
        n = system(cmd);
        return n == 0 ? 0 : -1;
}

static void pki_create(void) {
        const char *ready = getenv("CHECK_TLS_PKI");

        if (ready && *ready) {
                snprintf(g_dir, sizeof(g_dir), "%s", ready);
                FILE *f = fopen(pki("server.pem"), "r");
                if (f)
                        fclose(f);
                else
                        g_no_pki = "CHECK_TLS_PKI names no directory made by tests/tls-pki";
                return;
        }
#ifdef _WIN32
        g_no_pki = "no CHECK_TLS_PKI (make check-windows makes one with tests/tls-pki)";
#else
        if (sh("openssl version >/dev/null 2>&1") < 0) {
                g_no_pki = "no `openssl` command to make the test certificates";
                return;
        }
        snprintf(g_dir, sizeof(g_dir), "/tmp/check_tls.XXXXXX");
        if (!mkdtemp(g_dir)) {
                g_dir[0] = '\0';
                g_no_pki = "mkdtemp failed";
                return;
        }
        g_own_dir = 1;
        if (sh("%s %s", TLS_PKI_SCRIPT, g_dir) < 0)
                g_no_pki = "tests/tls-pki failed to make the test certificates (see pki.log)";
#endif
}

static void pki_remove(void) {
        if (g_own_dir && !getenv("CHECK_TLS_KEEP"))
                (void) sh("rm -rf %s", g_dir);
}

/* ---- recording protocol ---------------------------------------------- */

#define MAX_EVENTS 64

/* Set around the calls the tests make: a protocol callback seen while it
 * is set came from inside a public call (only pause_writing may). */
static int g_in_call;

struct rec {
        const void *tp;                 /* the transport of the callbacks */
        loop_transport_t *t;            /* the same, with a reference */
        int ev[MAX_EVENTS];
        int nev;
        int made, data, eof, lost, pause, resume;
        int lost_error;
        int lost_peer;                  /* get_peername's return in connection_lost */
        int lost_fd;                    /* get_fd's there */
        int no_made;                    /* start_tls: no connection_made comes */
        int after_lost, before_made, other_transport, reentrant, echo_error;
        int echo, eof_ret;
        size_t pause_reading_at;        /* pause reading once this much came (0: never) */
        loop_future_t *fut;
        int fut_done_at_made;
        const char *alpn_at_made;
        void *ssl_at_made;
        unsigned char *in;
        size_t nin, capin;
};

static void rec_init(struct rec *r) {
        memset(r, 0, sizeof(*r));
}

static void rec_free(struct rec *r) {
        r->t = loop_transport_unref(r->t);
        free(r->in);
        r->in = NULL;
}

static void rec_append(struct rec *r, const void *data, size_t size) {
        if (r->nin + size > r->capin) {
                size_t cap = r->capin ? r->capin : 4096;

                while (cap < r->nin + size)
                        cap *= 2;
                r->in = realloc(r->in, cap);
                if (!r->in)
                        abort();
                r->capin = cap;
        }
        memcpy(r->in + r->nin, data, size);
        r->nin += size;
}

static void rec_event(struct rec *r, loop_transport_t *t, int ev) {
        if (r->lost)
                r->after_lost++;
        if (!r->made && !r->no_made && ev != EV_MADE)
                r->before_made++;
        if (!r->tp)
                r->tp = t;
        if ((const void *) t != r->tp)
                r->other_transport++;
        if (g_in_call && ev != EV_PAUSE)
                r->reentrant++;
        if (ev == EV_DATA && r->nev > 0 && r->ev[r->nev - 1] == EV_DATA)
                return;
        if (r->nev < MAX_EVENTS)
                r->ev[r->nev++] = ev;
}

static int on_made(loop_transport_t *t, void *userdata) {
        struct rec *r = userdata;

        rec_event(r, t, EV_MADE);
        r->made++;
        if (!r->t)
                r->t = loop_transport_ref(t);
        if (r->fut)
                r->fut_done_at_made = loop_future_done(r->fut);
        r->alpn_at_made = loop_transport_get_alpn_protocol(t);
        r->ssl_at_made = loop_transport_get_ssl(t);
        return 0;
}

static int on_data(loop_transport_t *t, const void *data, size_t size, void *userdata) {
        struct rec *r = userdata;

        rec_event(r, t, EV_DATA);
        r->data++;
        rec_append(r, data, size);
        if (r->echo && loop_transport_write(t, data, size) != 0)
                r->echo_error++;
        if (r->pause_reading_at && r->nin >= r->pause_reading_at) {
                r->pause_reading_at = 0;
                (void) loop_transport_pause_reading(t);
        }
        return 0;
}

static int on_eof(loop_transport_t *t, void *userdata) {
        struct rec *r = userdata;

        rec_event(r, t, EV_EOF);
        r->eof++;
        return r->eof_ret;
}

static int on_lost(loop_transport_t *t, int error, void *userdata) {
        struct rec *r = userdata;

        rec_event(r, t, EV_LOST);
        r->lost++;
        r->lost_error = error;
        /* The socket is still open here, TLS or not. */
        struct sockaddr_storage a;
        socklen_t len = sizeof(a);
        r->lost_peer = loop_transport_get_peername(t, (struct sockaddr *) &a, &len);
        r->lost_fd = loop_transport_get_fd(t);
        return 0;
}

static int on_pause(loop_transport_t *t, void *userdata) {
        struct rec *r = userdata;

        rec_event(r, t, EV_PAUSE);
        r->pause++;
        return 0;
}

static int on_resume(loop_transport_t *t, void *userdata) {
        struct rec *r = userdata;

        rec_event(r, t, EV_RESUME);
        r->resume++;
        return 0;
}

static const struct loop_protocol_ops rec_ops = {
        .size = sizeof(struct loop_protocol_ops),
        .connection_made = on_made,
        .data_received = on_data,
        .eof_received = on_eof,
        .connection_lost = on_lost,
        .pause_writing = on_pause,
        .resume_writing = on_resume,
};

static void rec_assert_sane(const struct rec *r) {
        ck_assert_int_le(r->made, 1);
        ck_assert_int_le(r->lost, 1);
        ck_assert_int_eq(r->after_lost, 0);
        ck_assert_int_eq(r->before_made, 0);
        ck_assert_int_eq(r->other_transport, 0);
        ck_assert_msg(r->reentrant == 0, "%d protocol callback(s) called from inside a public call", r->reentrant);
        ck_assert_int_eq(r->echo_error, 0);
}

/* The callbacks came exactly in this order, pause/resume left out
 * (and runs of data folded). */
static void rec_assert_events(const struct rec *r, const int *want) {
        char got[256];
        int n = 0, k = 0;

        ev_format(r->ev, r->nev, got, sizeof(got));
        for (int i = 0, last = EV_END; i < r->nev; i++) {
                if (r->ev[i] == EV_PAUSE || r->ev[i] == EV_RESUME)
                        continue;
                /* Data on both sides of a pause is one run of data. */
                if (r->ev[i] == EV_DATA && last == EV_DATA)
                        continue;
                last = r->ev[i];
                ck_assert_msg(want[k] != EV_END && r->ev[i] == want[k], "callbacks: got [%s]", got);
                k++;
        }
        while (want[n] != EV_END)
                n++;
        ck_assert_msg(k == n, "callbacks: got [%s], %d expected", got, n);
        rec_assert_sane(r);
}

static void rec_assert_nothing(const struct rec *r) {
        char got[256];

        ev_format(r->ev, r->nev, got, sizeof(got));
        ck_assert_msg(r->nev == 0, "protocol callbacks were called: [%s]", got);
}

/* ---- the test's loop, exception handler and descriptor count --------- */

struct tt {
        loop_t *loop;
        int fds_before;
        int nexc;
        char exc_message[128];
};

static void exc_handler(loop_t *loop, const struct loop_exception_context *c, void *userdata) {
        struct tt *tt = userdata;

        (void) loop;
        if (tt->nexc++ == 0)
                snprintf(tt->exc_message, sizeof(tt->exc_message), "%s (%s)", c->message ? c->message : "(null)",
                         loop_strerror(c->error));
}

static void tt_begin(struct tt *tt) {
        memset(tt, 0, sizeof(*tt));
        g_in_call = 0;
        tt->fds_before = tu_count_fds();
        ck_assert_int_ge(tt->fds_before, 0);
        tt->loop = tu_loop_new();
        ck_assert_int_eq(loop_set_exception_handler(tt->loop, exc_handler, tt), 0);
}

static void tt_end(struct tt *tt, int want_exc) {
        if (want_exc >= 0)
                ck_assert_msg(tt->nexc == want_exc, "%d exception(s), expected %d; first: %s", tt->nexc, want_exc,
                              tt->exc_message);
        ck_assert_int_eq(loop_close(tt->loop), 0);
        tt->loop = loop_unref(tt->loop);
        /* CHECK_TLS_FDS=1: which descriptors are left (an eventfd is a
         * loop that something still holds). */
#ifndef _WIN32
        if (tu_count_fds() != tt->fds_before && getenv("CHECK_TLS_FDS"))
                (void) sh("ls -l /proc/%d/fd >&2", (int) getpid());
#endif
        ck_assert_msg(tu_count_fds() == tt->fds_before, "descriptors: %d before, %d after", tt->fds_before,
                      tu_count_fds());
}

/* Runs iterations until cond holds; fails after 20 s (never hangs). */
#define RUN_UNTIL(loop, cond)                                                         \
        do {                                                                          \
                int64_t deadline_ = tu_now_ns() + 20 * TU_SEC;                        \
                while (!(cond) && tu_now_ns() < deadline_)                            \
                        ck_assert_int_ge(loop_run_once((loop), 10 * TU_MSEC), 0);     \
                ck_assert_msg((cond), "timed out waiting for: %s", #cond);            \
        } while (0)

static void wait_done(loop_t *loop, loop_future_t *f) {
        RUN_UNTIL(loop, loop_future_done(f));
}

static void *result_of(loop_future_t *f) {
        void *p = NULL;
        int r = loop_future_result(f, &p);

        ck_assert_msg(r == 0, "future failed: %s", loop_strerror(r));
        return p;
}

static int tt_write(loop_transport_t *t, const void *data, size_t size) {
        int r;

        g_in_call++;
        r = loop_transport_write(t, data, size);
        g_in_call--;
        return r;
}

static int tt_close(loop_transport_t *t) {
        int r;

        g_in_call++;
        r = loop_transport_close(t);
        g_in_call--;
        return r;
}

/* ---- contexts ------------------------------------------------------------ */

static loop_tls_context_t *server_ctx(const char *name) {
        loop_tls_context_t *c = NULL;
        char cert[32], key[32];

        snprintf(cert, sizeof(cert), "%s.pem", name);
        snprintf(key, sizeof(key), "%s.key", name);
        int r = loop_tls_context_new_server(pki(cert), pki(key), &c);
        ck_assert_msg(r == 0, "loop_tls_context_new_server: %s", loop_strerror(r));
        return c;
}

/* A client context that trusts ca (NULL: the system's CAs only). */
static loop_tls_context_t *client_ctx(const char *ca) {
        loop_tls_context_t *c = NULL;
        char file[32];

        int r = loop_tls_context_new_client(&c);
        ck_assert_msg(r == 0, "loop_tls_context_new_client: %s", loop_strerror(r));
        if (ca) {
                snprintf(file, sizeof(file), "%s.pem", ca);
                ck_assert_int_eq(loop_tls_context_load_verify_locations(c, pki(file), NULL), 0);
        }
        return c;
}

/* ---- servers ---------------------------------------------------------- */

#define MAX_CONN 24

struct srv {
        struct rec conn[MAX_CONN];
        int nconn;
        int factory_calls;
        loop_server_t *server;
        const struct loop_protocol_ops *ops;
        int echo, eof_ret;
};

static void srv_init(struct srv *v) {
        memset(v, 0, sizeof(*v));
        for (int i = 0; i < MAX_CONN; i++)
                rec_init(&v->conn[i]);
}

static void srv_free(struct srv *v) {
        for (int i = 0; i < MAX_CONN; i++) {
                rec_assert_sane(&v->conn[i]);
                rec_free(&v->conn[i]);
        }
}

/* Connections that saw connection_made. */
static int srv_made(const struct srv *v) {
        int n = 0;

        for (int i = 0; i < v->nconn; i++)
                n += v->conn[i].made;
        return n;
}

static int srv_lost(const struct srv *v) {
        int n = 0;

        for (int i = 0; i < v->nconn; i++)
                n += v->conn[i].lost;
        return n;
}

static int srv_factory(loop_server_t *server, const struct loop_protocol_ops **ops, void **userdata,
                       void *factory_userdata) {
        struct srv *v = factory_userdata;
        struct rec *r;

        (void) server;
        v->factory_calls++;
        if (v->nconn == MAX_CONN)
                return -EMFILE;
        r = &v->conn[v->nconn++];
        r->echo = v->echo;
        r->eof_ret = v->eof_ret;
        *ops = v->ops ? v->ops : &rec_ops;
        *userdata = r;
        return 0;
}

static uint16_t port_of_fd(int fd) {
        struct sockaddr_in sin;
        socklen_t len = sizeof(sin);

        ck_assert_int_eq(getsockname(fd, (struct sockaddr *) &sin, &len), 0);
        ck_assert_int_eq(sin.sin_family, AF_INET);
        return ntohs(sin.sin_port);
}

/* A server on 127.0.0.1, the kernel's port, TLS with tls (or none). */
static loop_server_t *start_server(struct tt *tt, struct srv *v, loop_tls_context_t *tls, int64_t timeout_ns,
                                   char port[16]) {
        struct loop_server_options o = {.size = sizeof(o), .tls = tls, .tls_handshake_timeout_ns = timeout_ns};
        loop_future_t *f = NULL;
        loop_server_t *s;
        int fd = -1;

        ck_assert_int_eq(loop_create_server(tt->loop, srv_factory, v, "127.0.0.1", "0", &o, &f), 0);
        wait_done(tt->loop, f);
        s = loop_server_ref(result_of(f));
        loop_future_unref(f);
        ck_assert_int_eq(loop_server_get_fds(s, &fd, 1), 1);
        snprintf(port, 16, "%u", (unsigned) port_of_fd(fd));
        v->server = s;
        return s;
}

static void finish_server(struct tt *tt, loop_server_t *s) {
        loop_future_t *w = NULL;

        ck_assert_int_eq(loop_server_close(s), 0);
        ck_assert_int_eq(loop_server_wait_closed(s, &w), 0);
        wait_done(tt->loop, w);
        ck_assert_int_eq(loop_future_error(w), 0);
        loop_future_unref(w);
        ck_assert_ptr_eq(loop_server_unref(s), NULL);
}

/* ---- clients ---------------------------------------------------------- */

/* Starts a TLS connection to 127.0.0.1:port (host given as host); the
 * future is returned, nothing is called before the loop runs. */
static loop_future_t *connect_tls(struct tt *tt, struct rec *r, const char *host, const char *port,
                                  loop_tls_context_t *tls, const char *server_hostname, int64_t timeout_ns) {
        struct loop_connection_options o = {
                .size = sizeof(o),
                .tls = tls,
                .server_hostname = server_hostname,
                .tls_handshake_timeout_ns = timeout_ns,
        };
        loop_future_t *f = NULL;

        g_in_call++;
        ck_assert_int_eq(loop_create_connection(tt->loop, &rec_ops, r, host, port, &o, &f), 0);
        g_in_call--;
        ck_assert_ptr_ne(f, NULL);
        ck_assert_int_eq(r->made, 0);
        r->fut = f;
        return f;
}

/* The transport of a connection future that succeeded (r keeps a
 * reference); connection_made came first. */
static loop_transport_t *take_transport(struct tt *tt, struct rec *r, loop_future_t *f) {
        loop_transport_t *t;

        wait_done(tt->loop, f);
        t = result_of(f);
        ck_assert_ptr_ne(t, NULL);
        ck_assert_int_eq(r->made, 1);
        ck_assert_ptr_eq(r->tp, t);
        ck_assert_int_eq(r->fut_done_at_made, 0);
        r->fut = NULL;
        loop_future_unref(f);
        return t;
}

/* The error a connection future failed with (it must fail). */
static int failure_of(struct tt *tt, struct rec *r, loop_future_t *f) {
        wait_done(tt->loop, f);
        int e = loop_future_error(f);
        ck_assert_msg(e < 0, "the connection succeeded");
        r->fut = NULL;
        loop_future_unref(f);
        return e;
}

/* Byte i of a stream that shows lost, repeated or reordered pieces. */
static unsigned char pat(size_t i) {
        return (unsigned char) ((uint32_t) ((uint32_t) i * 2654435761u) >> 24);
}

static unsigned char *pattern(size_t n) {
        unsigned char *p = malloc(n);

        ck_assert_ptr_ne(p, NULL);
        for (size_t i = 0; i < n; i++)
                p[i] = pat(i);
        return p;
}

static void assert_pattern(const unsigned char *buf, size_t n) {
        for (size_t i = 0; i < n; i++)
                TU_CHECK_MSG(buf[i] == pat(i), "byte %zu differs from what was written", i);
}

/* A raw listening socket on 127.0.0.1 (non-blocking). */
static int raw_listener(char port[16]) {
        struct sockaddr_in sin = {.sin_family = AF_INET};
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

        ck_assert_int_ge(fd, 0);
#ifdef _WIN32
        tu_set_nonblock(fd);    /* SOCK_NONBLOCK and SOCK_CLOEXEC are 0 there */
#endif
        sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        ck_assert_int_eq(bind(fd, (struct sockaddr *) &sin, sizeof(sin)), 0);
        ck_assert_int_eq(listen(fd, 16), 0);
        snprintf(port, 16, "%u", (unsigned) port_of_fd(fd));
        return fd;
}

/* accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC); -1 and errno. */
static int accept_nonblock(int lfd) {
#ifdef _WIN32
        SOCKET s = accept((SOCKET) lfd, NULL, NULL);

        if (s == INVALID_SOCKET) {
                errno = tu_win_errno(WSAGetLastError());
                return -1;
        }
        tu_set_nonblock((int) s);
        return (int) s;
#else
        return accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
#endif
}

static int raw_accept(loop_t *loop, int lfd) {
        int64_t deadline = tu_now_ns() + 10 * TU_SEC;
        int fd;

        while ((fd = accept_nonblock(lfd)) < 0 && errno == EAGAIN && tu_now_ns() < deadline)
                ck_assert_int_ge(loop_run_once(loop, 10 * TU_MSEC), 0);
        ck_assert_msg(fd >= 0, "accept: %s", strerror(errno));
        return fd;
}

/* Runs the loop until fd (non-blocking) has bytes (returns 1: some were
 * read and dropped) or its end (0: EOF or reset); fails after 20 s. */
static int peer_wait(loop_t *loop, int fd) {
        int64_t deadline = tu_now_ns() + 20 * TU_SEC;
        char buf[4096];

        while (tu_now_ns() < deadline) {
                ssize_t n = read(fd, buf, sizeof(buf));

                if (n > 0)
                        return 1;
                if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK))
                        return 0;
                if (loop)
                        ck_assert_int_ge(loop_run_once(loop, 10 * TU_MSEC), 0);
                else
                        tu_sleep_ns(TU_MSEC);
        }
        ck_abort_msg("the peer socket stayed silent");
        return -1;
}

/* Runs the loop until fd's end, dropping what comes first. */
static void peer_wait_end(loop_t *loop, int fd) {
        while (peer_wait(loop, fd) > 0)
                ;
}

/* A plain TCP client socket connected to 127.0.0.1:port (blocking
 * connect, then non-blocking). */
static int raw_connect(const char *port) {
        struct sockaddr_in sin = {.sin_family = AF_INET};
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

        ck_assert_int_ge(fd, 0);
        sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        sin.sin_port = htons((uint16_t) atoi(port));
        ck_assert_int_eq(connect(fd, (struct sockaddr *) &sin, sizeof(sin)), 0);
        tu_set_nonblock(fd);
        return fd;
}

/* A port nobody listens on now (the kernel's pick, released). */
static void free_port(char port[16]) {
        int fd = raw_listener(port);

        close(fd);
}

/* ---- child processes (openssl s_server, s_client) ---------------------- */

#ifndef _WIN32

/* Runs argv with stdin from *in_fd's pipe (or /dev/null), stdout to
 * *out_fd's pipe (or /dev/null), stderr to the PKI directory's log. */
static pid_t spawn(char *const argv[], int *in_fd, int *out_fd) {
        posix_spawn_file_actions_t fa;
        int in[2] = {-1, -1}, out[2] = {-1, -1};
        pid_t pid;

        ck_assert_int_eq(posix_spawn_file_actions_init(&fa), 0);
        if (in_fd) {
                ck_assert_int_eq(pipe2(in, O_CLOEXEC), 0);
                posix_spawn_file_actions_adddup2(&fa, in[0], 0);
        } else
                posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
        if (out_fd) {
                ck_assert_int_eq(pipe2(out, O_CLOEXEC), 0);
                posix_spawn_file_actions_adddup2(&fa, out[1], 1);
        } else
                posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
        posix_spawn_file_actions_addopen(&fa, 2, pki("children.log"), O_WRONLY | O_CREAT | O_APPEND, 0600);
        int r = posix_spawnp(&pid, argv[0], &fa, NULL, argv, environ);
        posix_spawn_file_actions_destroy(&fa);
        ck_assert_msg(r == 0, "posix_spawnp %s: %s", argv[0], strerror(r));
        if (in_fd) {
                close(in[0]);
                *in_fd = in[1];
        }
        if (out_fd) {
                close(out[1]);
                *out_fd = out[0];
                tu_set_nonblock(out[0]);
        }
        return pid;
}

/* Waits (running the loop, up to 10 s) for pid to exit; its status, or
 * -1 if it had to be killed. */
static int reap(loop_t *loop, pid_t pid, int sig) {
        int64_t deadline = tu_now_ns() + 10 * TU_SEC;
        int status;

        if (sig)
                (void) kill(pid, sig);
        while (waitpid(pid, &status, WNOHANG) == 0) {
                if (tu_now_ns() > deadline) {
                        (void) kill(pid, SIGKILL);
                        (void) waitpid(pid, &status, 0);
                        return -1;
                }
                if (loop)
                        ck_assert_int_ge(loop_run_once(loop, 10 * TU_MSEC), 0);
                else
                        tu_sleep_ns(10 * TU_MSEC);
        }
        return status;
}

/* Reads what fd has (non-blocking) onto buf[*n..size-1], NUL-terminated. */
static void drain_into(int fd, char *buf, size_t size, size_t *n) {
        ssize_t k;

        while (*n + 1 < size && (k = read(fd, buf + *n, size - 1 - *n)) > 0)
                *n += (size_t) k;
        buf[*n] = '\0';
}
#endif /* !_WIN32 */

/* ---- the cases ----------------------------------------------------------- */

#define BIG (4u << 20)

static void small_buffers(int sender, int receiver) {
        int small = 32768;

        ck_assert_int_ge(sender, 0);
        ck_assert_int_ge(receiver, 0);
        ck_assert_int_eq(setsockopt(sender, SOL_SOCKET, SO_SNDBUF, (const void *) &small, sizeof(small)), 0);
        ck_assert_int_eq(setsockopt(receiver, SOL_SOCKET, SO_RCVBUF, (const void *) &small, sizeof(small)), 0);
}

/* Client and server of libloop: order, 4 MiB each way with flow control,
 * close_notify, connection_lost(0) on both. */
START_TEST(test_round_trip) {
        NEED_PKI();
        struct tt tt;
        struct srv v;
        struct rec c;
        char port[16];
        loop_tls_context_t *sctx, *cctx;
        unsigned char *big = pattern(BIG);

        tt_begin(&tt);
        srv_init(&v);
        rec_init(&c);
        sctx = server_ctx("server");
        cctx = client_ctx("ca");
        loop_server_t *s = start_server(&tt, &v, sctx, 0, port);
        loop_transport_t *t = take_transport(&tt, &c, connect_tls(&tt, &c, "127.0.0.1", port, cctx, "localhost", 0));
        RUN_UNTIL(tt.loop, v.conn[0].made == 1);
        struct rec *sr = &v.conn[0];
        loop_transport_t *st = sr->t;

        /* TLS transports: no half-close, the SSL object is there. */
        ck_assert_ptr_ne(c.ssl_at_made, NULL);
        ck_assert_ptr_eq(loop_transport_get_ssl(t), c.ssl_at_made);
        ck_assert_ptr_ne(loop_transport_get_ssl(st), NULL);
        ck_assert_int_eq(loop_transport_can_write_eof(t), 0);
        ck_assert_int_eq(loop_transport_can_write_eof(st), 0);
        ck_assert_int_eq(loop_transport_write_eof(t), -EOPNOTSUPP);
        ck_assert_int_eq(loop_transport_is_closing(t), 0);
        ck_assert_ptr_eq(loop_transport_get_alpn_protocol(t), NULL);
        ck_assert_int_ge(loop_transport_get_fd(t), 0);
        {
                struct sockaddr_in a;
                socklen_t len = sizeof(a);
                ck_assert_int_eq(loop_transport_get_peername(t, (struct sockaddr *) &a, &len), 0);
                ck_assert_uint_eq(ntohs(a.sin_port), (unsigned) atoi(port));
        }

        /* Client to server, the server not reading: the client pauses.
         * Small socket buffers here too: the kernel grows a send buffer
         * to 4 MiB on its own (tcp_wmem), which could take all of it, and
         * the client would resume with the server still paused. */
        small_buffers(loop_transport_get_fd(t), loop_transport_get_fd(st));
        ck_assert_int_eq(loop_transport_pause_reading(st), 0);
        ck_assert_int_eq(tt_write(t, big, BIG), 0);
        ck_assert_int_eq(c.pause, 1);
        ck_assert_uint_gt(loop_transport_get_write_buffer_size(t), 65536);
        tu_run_for(tt.loop, 100 * TU_MSEC);
        ck_assert_int_eq(c.pause, 1);
        ck_assert_int_eq(c.resume, 0);
        ck_assert_uint_lt(sr->nin, BIG);
        ck_assert_int_eq(loop_transport_resume_reading(st), 0);
        RUN_UNTIL(tt.loop, sr->nin == BIG);
        assert_pattern(sr->in, BIG);
        RUN_UNTIL(tt.loop, c.resume == 1);
        ck_assert_uint_le(loop_transport_get_write_buffer_size(t), 16384);

        /* Server to client, the client stopping itself at 1 MiB; small
         * socket buffers, so that the kernel cannot hold the rest. */
        small_buffers(loop_transport_get_fd(st), loop_transport_get_fd(t));
        c.pause_reading_at = 1u << 20;
        ck_assert_int_eq(tt_write(st, big, BIG), 0);
        ck_assert_int_eq(sr->pause, 1);
        RUN_UNTIL(tt.loop, c.nin >= (1u << 20) && !loop_transport_is_reading(t));
        tu_run_for(tt.loop, 100 * TU_MSEC);
        ck_assert_uint_lt(c.nin, BIG);
        ck_assert_int_eq(sr->resume, 0);
        ck_assert_int_eq(loop_transport_resume_reading(t), 0);
        RUN_UNTIL(tt.loop, c.nin == BIG);
        assert_pattern(c.in, BIG);
        RUN_UNTIL(tt.loop, sr->resume == 1);

        /* close: close_notify, the server's EOF (which closes it), both lost(0). */
        ck_assert_int_eq(tt_close(t), 0);
        ck_assert_int_eq(loop_transport_is_closing(t), 1);
        RUN_UNTIL(tt.loop, c.lost == 1 && sr->lost == 1);
        ck_assert_int_eq(c.lost_error, 0);
        ck_assert_int_eq(sr->lost_error, 0);
        ck_assert_int_eq(c.lost_peer, 0);
        ck_assert_int_eq(sr->lost_peer, 0);
        EVENTS(&c, EV_MADE, EV_DATA, EV_LOST);
        EVENTS(sr, EV_MADE, EV_DATA, EV_EOF, EV_LOST);
        ck_assert_int_eq(loop_transport_get_fd(t), -EBADF);
        ck_assert_int_eq(tt_write(t, "x", 1), -EPIPE);

        finish_server(&tt, s);
        loop_tls_context_unref(sctx);
        loop_tls_context_unref(cctx);
        rec_free(&c);
        srv_free(&v);
        free(big);
        tt_end(&tt, 0);
}
END_TEST

/* The libloop client against `openssl s_server -www`. */
START_TEST(test_openssl_s_server) {
        TU_SKIP_ON_WINDOWS("the openssl command is not there under wine");
#ifndef _WIN32
        NEED_PKI();
        struct tt tt;
        struct rec c;
        char port[16], accept_arg[32], out[4096] = "";
        size_t nout = 0;
        int out_fd = -1;
        loop_tls_context_t *cctx;

        tt_begin(&tt);
        rec_init(&c);
        free_port(port);
        snprintf(accept_arg, sizeof(accept_arg), "127.0.0.1:%s", port);
        char *argv[] = {"openssl", "s_server", "-accept", accept_arg, "-cert", (char *) pki("server.pem"),
                        "-key", (char *) pki("server.key"), "-www", NULL};
        pid_t pid = spawn(argv, NULL, &out_fd);
        /* It says ACCEPT once it listens. */
        {
                int64_t deadline = tu_now_ns() + 10 * TU_SEC;
                while (!strstr(out, "ACCEPT") && tu_now_ns() < deadline) {
                        struct pollfd p = {.fd = out_fd, .events = POLLIN};
                        (void) poll(&p, 1, 10);
                        drain_into(out_fd, out, sizeof(out), &nout);
                }
                ck_assert_msg(strstr(out, "ACCEPT"), "openssl s_server did not start: [%s]", out);
        }
        cctx = client_ctx("ca");
        loop_transport_t *t = take_transport(&tt, &c, connect_tls(&tt, &c, "localhost", port, cctx, NULL, 0));
        static const char req[] = "GET / HTTP/1.0\r\n\r\n";
        ck_assert_int_eq(tt_write(t, req, sizeof(req) - 1), 0);
        RUN_UNTIL(tt.loop, c.lost == 1);
        ck_assert_msg(c.nin > 20 && memcmp(c.in, "HTTP/1.0 200 ok", 15) == 0, "s_server answered [%.*s]",
                      (int) (c.nin < 60 ? c.nin : 60), c.in ? (char *) c.in : "");
        ck_assert_int_eq(c.lost_error, 0);
        EVENTS(&c, EV_MADE, EV_DATA, EV_EOF, EV_LOST);
        (void) reap(tt.loop, pid, SIGTERM);
        close(out_fd);
        loop_tls_context_unref(cctx);
        rec_free(&c);
        tt_end(&tt, 0);
#endif
}
END_TEST

/* `openssl s_client` (verifying the name) against the libloop server,
 * which echoes; s_client's stdin closed: it sends close_notify. */
START_TEST(test_openssl_s_client) {
        TU_SKIP_ON_WINDOWS("the openssl command is not there under wine");
#ifndef _WIN32
        NEED_PKI();
        struct tt tt;
        struct srv v;
        char port[16], connect_arg[32], out[4096] = "";
        size_t nout = 0;
        int in_fd = -1, out_fd = -1;
        loop_tls_context_t *sctx;
        static const char line[] = "hello through s_client\n";

        tt_begin(&tt);
        srv_init(&v);
        v.echo = 1;
        sctx = server_ctx("server");
        loop_server_t *s = start_server(&tt, &v, sctx, 0, port);
        snprintf(connect_arg, sizeof(connect_arg), "127.0.0.1:%s", port);
        char *argv[] = {"openssl", "s_client", "-connect", connect_arg, "-CAfile", (char *) pki("ca.pem"),
                        "-verify_hostname", "localhost", "-verify_return_error", "-quiet", "-no_ign_eof", NULL};
        pid_t pid = spawn(argv, &in_fd, &out_fd);
        RUN_UNTIL(tt.loop, v.conn[0].made == 1);
        ck_assert_int_eq(write(in_fd, line, sizeof(line) - 1), (ssize_t) (sizeof(line) - 1));
        RUN_UNTIL(tt.loop, (drain_into(out_fd, out, sizeof(out), &nout), nout >= sizeof(line) - 1));
        ck_assert_str_eq(out, line);
        ck_assert_uint_eq(v.conn[0].nin, sizeof(line) - 1);
        ck_assert_int_eq(memcmp(v.conn[0].in, line, sizeof(line) - 1), 0);
        close(in_fd);
        RUN_UNTIL(tt.loop, v.conn[0].lost == 1);
        ck_assert_int_eq(v.conn[0].lost_error, 0);
        EVENTS(&v.conn[0], EV_MADE, EV_DATA, EV_EOF, EV_LOST);
        int status = reap(tt.loop, pid, 0);
        ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "s_client: status %#x", status);
        close(out_fd);
        finish_server(&tt, s);
        loop_tls_context_unref(sctx);
        srv_free(&v);
        tt_end(&tt, 0);
#endif
}
END_TEST

/* Certificates that fail verification: -EACCES, no protocol call on
 * either side. _i: 0 unknown CA, 1 wrong name, 2 expired, 3 an address
 * the certificate does not carry, 4 another name. */
START_TEST(test_verify_fails) {
        NEED_PKI();
        static const struct {
                const char *cert, *host, *server_hostname;
        } cases[] = {
                {"unknown", "127.0.0.1", "localhost"},
                {"server", "127.0.0.1", "wrong.example"},
                {"expired", "127.0.0.1", "localhost"},
                {"other", "127.0.0.1", NULL},
                {"other", "localhost", NULL},
        };
        struct tt tt;
        struct srv v;
        struct rec c;
        char port[16];
        loop_tls_context_t *sctx, *cctx;

        tt_begin(&tt);
        srv_init(&v);
        rec_init(&c);
        sctx = server_ctx(cases[_i].cert);
        cctx = client_ctx("ca");
        loop_server_t *s = start_server(&tt, &v, sctx, 0, port);
        loop_future_t *f = connect_tls(&tt, &c, cases[_i].host, port, cctx, cases[_i].server_hostname, 0);
        int e = failure_of(&tt, &c, f);
        ck_assert_msg(e == -EACCES, "case %d: %s, expected EACCES", _i, loop_strerror(e));
        /* The server gave up too, without a word to its protocol. */
        RUN_UNTIL(tt.loop, loop_server_get_connections(s) == 0 && v.factory_calls <= 1);
        tu_run_for(tt.loop, 20 * TU_MSEC);
        rec_assert_nothing(&c);
        ck_assert_int_eq(srv_made(&v), 0);
        ck_assert_int_eq(srv_lost(&v), 0);
        finish_server(&tt, s);
        loop_tls_context_unref(sctx);
        loop_tls_context_unref(cctx);
        rec_free(&c);
        srv_free(&v);
        tt_end(&tt, -1);
}
END_TEST

/* A connection that works: data one way, then closed. */
static void assert_connects(struct tt *tt, struct srv *v, struct rec *c, loop_future_t *f) {
        loop_transport_t *t = take_transport(tt, c, f);
        RUN_UNTIL(tt->loop, v->nconn >= 1 && v->conn[v->nconn - 1].made == 1);
        struct rec *sr = &v->conn[v->nconn - 1];
        ck_assert_int_eq(tt_write(t, "ping", 4), 0);
        RUN_UNTIL(tt->loop, sr->nin == 4);
        ck_assert_int_eq(memcmp(sr->in, "ping", 4), 0);
        ck_assert_int_eq(tt_close(t), 0);
        RUN_UNTIL(tt->loop, c->lost == 1 && sr->lost == 1);
        ck_assert_int_eq(c->lost_error, 0);
        ck_assert_int_eq(sr->lost_error, 0);
}

/* Verification off: an unknown CA connects. check_hostname without it:
 * -EINVAL. */
START_TEST(test_verify_off) {
        NEED_PKI();
        struct tt tt;
        struct srv v;
        struct rec c;
        char port[16];
        loop_tls_context_t *sctx, *cctx;

        tt_begin(&tt);
        srv_init(&v);
        rec_init(&c);
        sctx = server_ctx("unknown");
        cctx = client_ctx("ca");
        ck_assert_int_eq(loop_tls_context_set_verify(cctx, 0), 0);
        ck_assert_int_eq(loop_tls_context_set_check_hostname(cctx, 1), -EINVAL);
        ck_assert_int_eq(loop_tls_context_set_check_hostname(cctx, 0), 0);
        loop_server_t *s = start_server(&tt, &v, sctx, 0, port);
        assert_connects(&tt, &v, &c, connect_tls(&tt, &c, "127.0.0.1", port, cctx, "wrong.example", 0));
        finish_server(&tt, s);
        loop_tls_context_unref(sctx);
        loop_tls_context_unref(cctx);
        rec_free(&c);
        srv_free(&v);
        tt_end(&tt, 0);
}
END_TEST

/* No server_hostname: create_connection checks host; "127.0.0.1" is in
 * the certificate's IP SAN, "localhost" in its DNS SAN. */
START_TEST(test_verify_host_as_name) {
        NEED_PKI();
        struct tt tt;
        struct srv v;
        struct rec c;
        char port[16];
        loop_tls_context_t *sctx, *cctx;

        tt_begin(&tt);
        srv_init(&v);
        rec_init(&c);
        sctx = server_ctx("server");
        cctx = client_ctx("ca");
        loop_server_t *s = start_server(&tt, &v, sctx, 0, port);
        assert_connects(&tt, &v, &c, connect_tls(&tt, &c, _i ? "localhost" : "127.0.0.1", port, cctx, NULL, 0));
        finish_server(&tt, s);
        loop_tls_context_unref(sctx);
        loop_tls_context_unref(cctx);
        rec_free(&c);
        srv_free(&v);
        tt_end(&tt, 0);
}
END_TEST

/* A server that requires client certificates. _i 0: the client has none
 * and fails; 1: it has one (through the SSL_CTX) and gets through. */
START_TEST(test_client_cert) {
        NEED_PKI();
        struct tt tt;
        struct srv v;
        struct rec c;
        char port[16];
        loop_tls_context_t *sctx, *cctx;

        tt_begin(&tt);
        srv_init(&v);
        rec_init(&c);
        sctx = server_ctx("server");
        ck_assert_int_eq(loop_tls_context_set_verify(sctx, 1), 0);
        ck_assert_int_eq(loop_tls_context_load_verify_locations(sctx, pki("ca.pem"), NULL), 0);
        cctx = client_ctx("ca");
        if (_i) {
                SSL_CTX *ssl_ctx = loop_tls_context_get_ssl_ctx(cctx);
                ck_assert_ptr_ne(ssl_ctx, NULL);
                ck_assert_int_eq(SSL_CTX_use_certificate_file(ssl_ctx, pki("client.pem"), SSL_FILETYPE_PEM), 1);
                ck_assert_int_eq(SSL_CTX_use_PrivateKey_file(ssl_ctx, pki("client.key"), SSL_FILETYPE_PEM), 1);
        }
        loop_server_t *s = start_server(&tt, &v, sctx, 0, port);
        loop_future_t *f = connect_tls(&tt, &c, "localhost", port, cctx, NULL, 0);
        if (_i) {
                assert_connects(&tt, &v, &c, f);
                /* The server saw whom. */
                ck_assert_ptr_ne(v.conn[0].ssl_at_made, NULL);
                X509 *peer = SSL_get1_peer_certificate(v.conn[0].ssl_at_made);
                ck_assert_ptr_ne(peer, NULL);
                char cn[64] = "";
                X509_NAME_get_text_by_NID(X509_get_subject_name(peer), NID_commonName, cn, sizeof(cn));
                ck_assert_str_eq(cn, "libloop client");
                X509_free(peer);
        } else {
                /* TLS 1.3: the client may finish its handshake before the
                 * server refuses; then its connection is lost with an error. */
                wait_done(tt.loop, f);
                int e = loop_future_error(f);
                if (e == 0) {
                        loop_transport_t *t = take_transport(&tt, &c, f);
                        (void) tt_write(t, "ping", 4);
                        RUN_UNTIL(tt.loop, c.lost == 1);
                        ck_assert_msg(c.lost_error == -EPROTO || c.lost_error == -ECONNRESET,
                                      "client's connection_lost: %s", loop_strerror(c.lost_error));
                        rec_assert_sane(&c);
                } else {
                        ck_assert_msg(e == -EPROTO || e == -ECONNRESET, "client: %s", loop_strerror(e));
                        rec_assert_nothing(&c);
                        loop_future_unref(f);
                }
                RUN_UNTIL(tt.loop, loop_server_get_connections(s) == 0);
                tu_run_for(tt.loop, 20 * TU_MSEC);
                ck_assert_int_eq(srv_made(&v), 0);
                ck_assert_int_eq(srv_lost(&v), 0);
        }
        finish_server(&tt, s);
        loop_tls_context_unref(sctx);
        loop_tls_context_unref(cctx);
        rec_free(&c);
        srv_free(&v);
        tt_end(&tt, -1);
}
END_TEST

/* ALPN: _i 0 a protocol in common, on both transports from
 * connection_made on; 1 none in common: connected, NULL. */
START_TEST(test_alpn) {
        NEED_PKI();
        static const char *const server_protos[] = {"h2", "http/1.1"};
        static const char *const client_protos[2][1] = {{"http/1.1"}, {"spdy/1"}};
        struct tt tt;
        struct srv v;
        struct rec c;
        char port[16];
        loop_tls_context_t *sctx, *cctx;

        tt_begin(&tt);
        srv_init(&v);
        rec_init(&c);
        sctx = server_ctx("server");
        cctx = client_ctx("ca");
        ck_assert_int_eq(loop_tls_context_set_alpn_protocols(sctx, server_protos, 2), 0);
        ck_assert_int_eq(loop_tls_context_set_alpn_protocols(cctx, client_protos[_i], 1), 0);
        loop_server_t *s = start_server(&tt, &v, sctx, 0, port);
        loop_transport_t *t = take_transport(&tt, &c, connect_tls(&tt, &c, "localhost", port, cctx, NULL, 0));
        RUN_UNTIL(tt.loop, v.conn[0].made == 1);
        if (_i == 0) {
                ck_assert_ptr_ne(c.alpn_at_made, NULL);
                ck_assert_str_eq(c.alpn_at_made, "http/1.1");
                ck_assert_str_eq(loop_transport_get_alpn_protocol(t), "http/1.1");
                ck_assert_ptr_ne(v.conn[0].alpn_at_made, NULL);
                ck_assert_str_eq(v.conn[0].alpn_at_made, "http/1.1");
                ck_assert_str_eq(loop_transport_get_alpn_protocol(v.conn[0].t), "http/1.1");
        } else {
                ck_assert_ptr_eq(c.alpn_at_made, NULL);
                ck_assert_ptr_eq(v.conn[0].alpn_at_made, NULL);
        }
        ck_assert_int_eq(tt_close(t), 0);
        RUN_UNTIL(tt.loop, c.lost == 1 && v.conn[0].lost == 1);
        finish_server(&tt, s);
        loop_tls_context_unref(sctx);
        loop_tls_context_unref(cctx);
        rec_free(&c);
        srv_free(&v);
        tt_end(&tt, 0);
}
END_TEST

/* A peer that accepts and never answers: -ETIMEDOUT after 200 ms. */
START_TEST(test_handshake_timeout) {
        NEED_PKI();
        struct tt tt;
        struct rec c;
        char port[16];
        loop_tls_context_t *cctx;

        tt_begin(&tt);
        rec_init(&c);
        int lfd = raw_listener(port);
        cctx = client_ctx("ca");
        int64_t t0 = tu_now_ns();
        loop_future_t *f = connect_tls(&tt, &c, "localhost", port, cctx, NULL, 200 * TU_MSEC);
        int fd = raw_accept(tt.loop, lfd);
        int e = failure_of(&tt, &c, f);
        int64_t took = tu_now_ns() - t0;
        ck_assert_msg(e == -ETIMEDOUT, "%s, expected ETIMEDOUT", loop_strerror(e));
        ck_assert_msg(took >= 190 * TU_MSEC && took < 10 * TU_SEC, "took %" PRId64 " ms", took / TU_MSEC);
        rec_assert_nothing(&c);
        /* The socket is gone: the peer has the ClientHello, then its end. */
        ck_assert_int_eq(peer_wait(tt.loop, fd), 1);
        peer_wait_end(tt.loop, fd);
        close(fd);
        close(lfd);
        loop_tls_context_unref(cctx);
        rec_free(&c);
        tt_end(&tt, 0);
}
END_TEST

/* The server closes during the handshake: -ECONNRESET. _i 0: once the
 * ClientHello came; 1: at once (accepted then closed). */
START_TEST(test_peer_closes_in_handshake) {
        NEED_PKI();
        struct tt tt;
        struct rec c;
        char port[16];
        loop_tls_context_t *cctx;

        tt_begin(&tt);
        rec_init(&c);
        int lfd = raw_listener(port);
        cctx = client_ctx("ca");
        loop_future_t *f = connect_tls(&tt, &c, "localhost", port, cctx, NULL, 0);
        int fd = raw_accept(tt.loop, lfd);
        if (_i == 0)
                ck_assert_int_eq(peer_wait(tt.loop, fd), 1);   /* the ClientHello */
        close(fd);
        int e = failure_of(&tt, &c, f);
        ck_assert_msg(e == -ECONNRESET, "%s, expected ECONNRESET", loop_strerror(e));
        rec_assert_nothing(&c);
        close(lfd);
        loop_tls_context_unref(cctx);
        rec_free(&c);
        tt_end(&tt, 0);
}
END_TEST

/* The client goes during the server's handshake: the server's protocol
 * hears nothing. _i 0: connects and closes; 1: sends garbage. */
START_TEST(test_server_peer_gone) {
        NEED_PKI();
        struct tt tt;
        struct srv v;
        char port[16];
        loop_tls_context_t *sctx;

        tt_begin(&tt);
        srv_init(&v);
        sctx = server_ctx("server");
        loop_server_t *s = start_server(&tt, &v, sctx, 0, port);
        int fd = raw_connect(port);
        RUN_UNTIL(tt.loop, loop_server_get_connections(s) == 1);
        if (_i) {
                static const char junk[] = "GET / HTTP/1.0\r\n\r\n";
                ck_assert_int_eq(write(fd, junk, sizeof(junk) - 1), (ssize_t) sizeof(junk) - 1);
        } else
                close(fd);
        RUN_UNTIL(tt.loop, loop_server_get_connections(s) == 0);
        if (_i)
                close(fd);
        tu_run_for(tt.loop, 20 * TU_MSEC);
        ck_assert_int_eq(srv_made(&v), 0);
        ck_assert_int_eq(srv_lost(&v), 0);
        finish_server(&tt, s);
        loop_tls_context_unref(sctx);
        srv_free(&v);
        tt_end(&tt, -1);
}
END_TEST

/* ---- start_tls ----------------------------------------------------------- */

/* STARTTLS the SMTP way: the client says "STARTTLS\n" in the clear, the
 * server answers "GO\n" and starts TLS from its data_received, the client
 * does from its own on "GO\n". */
struct starttls {
        struct rec plain;               /* the plain protocol's record */
        struct rec tls;                 /* the TLS protocol's (no connection_made) */
        loop_tls_context_t *ctx;
        int server_side;
        loop_future_t *fut;             /* start_tls's */
        int start_error;
        int start_in_call;
        int pause_first;                /* pause reading before start_tls (which resumes it) */
        loop_transport_t *plain_t;
};

static int st_data(loop_transport_t *t, const void *data, size_t size, void *userdata) {
        struct starttls *st = userdata;

        rec_event(&st->plain, t, EV_DATA);
        rec_append(&st->plain, data, size);
        const char *want = st->server_side ? "STARTTLS\n" : "GO\n";
        if (st->plain.nin < strlen(want) || st->fut)
                return 0;
        if (st->plain.nin != strlen(want) || memcmp(st->plain.in, want, strlen(want)) != 0)
                return -EPROTO;
        if (st->server_side) {
                int r = loop_transport_write(t, "GO\n", 3);
                if (r < 0)
                        return r;
        }
        if (st->pause_first && loop_transport_pause_reading(t) < 0)
                return -EIO;
        st->start_error = loop_start_tls(t, &rec_ops, &st->tls, st->ctx, st->server_side,
                                         st->server_side ? NULL : "localhost", 0, &st->fut);
        return st->start_error;
}

static int st_made(loop_transport_t *t, void *userdata) {
        struct starttls *st = userdata;

        on_made(t, &st->plain);
        st->plain_t = st->plain.t;
        if (!st->server_side)
                return loop_transport_write(t, "STARTTLS\n", 9);
        return 0;
}

static int st_lost(loop_transport_t *t, int error, void *userdata) {
        struct starttls *st = userdata;

        return on_lost(t, error, &st->plain);
}

static const struct loop_protocol_ops starttls_ops = {
        .size = sizeof(struct loop_protocol_ops),
        .connection_made = st_made,
        .data_received = st_data,
        .connection_lost = st_lost,
};

static struct starttls *g_st_server;

static int st_factory(loop_server_t *server, const struct loop_protocol_ops **ops, void **userdata, void *arg) {
        struct srv *v = arg;

        (void) server;
        v->factory_calls++;
        *ops = &starttls_ops;
        *userdata = g_st_server;
        return 0;
}

START_TEST(test_start_tls) {
        NEED_PKI();
        struct tt tt;
        struct srv v;
        struct starttls ss, cs;
        char port[16];
        loop_future_t *f = NULL, *w = NULL;

        tt_begin(&tt);
        srv_init(&v);
        memset(&ss, 0, sizeof(ss));
        memset(&cs, 0, sizeof(cs));
        ss.server_side = 1;
        ss.ctx = server_ctx("server");
        cs.ctx = client_ctx("ca");
        ss.tls.no_made = cs.tls.no_made = 1;
        /* The client pauses its transport first: start_tls resumes it
         * (asyncio's does), or the handshake would never be read. */
        cs.pause_first = 1;
        g_st_server = &ss;
        ck_assert_int_eq(loop_create_server(tt.loop, st_factory, &v, "127.0.0.1", "0", NULL, &f), 0);
        wait_done(tt.loop, f);
        loop_server_t *s = loop_server_ref(result_of(f));
        loop_future_unref(f);
        {
                int fd;
                ck_assert_int_eq(loop_server_get_fds(s, &fd, 1), 1);
                snprintf(port, sizeof(port), "%u", (unsigned) port_of_fd(fd));
        }
        ck_assert_int_eq(loop_create_connection(tt.loop, &starttls_ops, &cs, "127.0.0.1", port, NULL, &f), 0);
        wait_done(tt.loop, f);
        loop_transport_t *cplain = result_of(f);
        ck_assert_ptr_eq(cplain, cs.plain_t);
        loop_future_unref(f);
        /* Plain transports: no SSL, no ALPN; start_tls's argument checks. */
        ck_assert_ptr_eq(loop_transport_get_ssl(cplain), NULL);
        ck_assert_ptr_eq(loop_transport_get_alpn_protocol(cplain), NULL);
        ck_assert_int_eq(loop_transport_can_write_eof(cplain), 1);
        ck_assert_int_eq(loop_start_tls(cplain, &rec_ops, &cs.tls, ss.ctx, 0, "localhost", 0, &f), -EINVAL);
        ck_assert_int_eq(loop_start_tls(cplain, &rec_ops, &cs.tls, cs.ctx, 1, "localhost", 0, &f), -EINVAL);
        ck_assert_int_eq(loop_start_tls(cplain, &rec_ops, &cs.tls, cs.ctx, 0, NULL, 0, &f), -EINVAL);
        ck_assert_int_eq(loop_start_tls(cplain, &rec_ops, &cs.tls, NULL, 0, "localhost", 0, &f), -EINVAL);
        ck_assert_int_eq(loop_start_tls(cplain, &rec_ops, &cs.tls, cs.ctx, 0, "localhost", -1, &f), -EINVAL);
        ck_assert_int_eq(loop_start_tls(cplain, &rec_ops, &cs.tls, cs.ctx, 0, "localhost", 0, NULL), -EINVAL);

        RUN_UNTIL(tt.loop, cs.fut && ss.fut);
        ck_assert_int_eq(cs.start_error, 0);
        ck_assert_int_eq(ss.start_error, 0);
        wait_done(tt.loop, cs.fut);
        wait_done(tt.loop, ss.fut);
        loop_transport_t *ct = result_of(cs.fut), *st = result_of(ss.fut);
        ck_assert_ptr_ne(ct, NULL);
        ck_assert_ptr_ne(st, NULL);
        ck_assert_ptr_ne(ct, cplain);
        ck_assert_ptr_ne(loop_transport_get_ssl(ct), NULL);
        ck_assert_ptr_ne(loop_transport_get_ssl(st), NULL);
        ck_assert_int_eq(loop_transport_can_write_eof(ct), 0);
        ck_assert_int_eq(loop_transport_write_eof(ct), -EOPNOTSUPP);
        /* Again on a TLS transport: -EALREADY. */
        ck_assert_int_eq(loop_start_tls(ct, &rec_ops, &cs.tls, cs.ctx, 0, "localhost", 0, &f), -EALREADY);
        cs.tls.t = loop_transport_ref(ct);
        ss.tls.t = loop_transport_ref(st);
        loop_future_unref(cs.fut);
        loop_future_unref(ss.fut);

        ck_assert_int_eq(tt_write(ct, "over TLS", 8), 0);
        RUN_UNTIL(tt.loop, ss.tls.nin == 8);
        ck_assert_int_eq(memcmp(ss.tls.in, "over TLS", 8), 0);
        ck_assert_int_eq(tt_write(st, "and back", 8), 0);
        RUN_UNTIL(tt.loop, cs.tls.nin == 8);
        ck_assert_int_eq(memcmp(cs.tls.in, "and back", 8), 0);
        ck_assert_int_eq(tt_close(ct), 0);
        RUN_UNTIL(tt.loop, cs.tls.lost == 1 && ss.tls.lost == 1);
        ck_assert_int_eq(cs.tls.lost_error, 0);
        ck_assert_int_eq(ss.tls.lost_error, 0);
        /* In their connection_lost the socket was still there. */
        ck_assert_int_eq(cs.tls.lost_peer, 0);
        ck_assert_int_eq(ss.tls.lost_peer, 0);
        ck_assert_int_ge(cs.tls.lost_fd, 0);
        ck_assert_int_ge(ss.tls.lost_fd, 0);
        /* No connection_made on the TLS transports. */
        EVENTS(&cs.tls, EV_DATA, EV_LOST);
        EVENTS(&ss.tls, EV_DATA, EV_EOF, EV_LOST);
        /* The plain protocols heard nothing more after start_tls. */
        EVENTS(&cs.plain, EV_MADE, EV_DATA);
        EVENTS(&ss.plain, EV_MADE, EV_DATA);
        /* start_tls on a closed transport. */
        ck_assert_int_eq(loop_start_tls(cplain, &rec_ops, &cs.tls, cs.ctx, 0, "localhost", 0, &f), -ENOTCONN);

        ck_assert_int_eq(loop_server_close(s), 0);
        ck_assert_int_eq(loop_server_wait_closed(s, &w), 0);
        wait_done(tt.loop, w);
        loop_future_unref(w);
        loop_server_unref(s);
        loop_tls_context_unref(ss.ctx);
        loop_tls_context_unref(cs.ctx);
        rec_free(&ss.plain);
        rec_free(&cs.plain);
        rec_free(&ss.tls);
        rec_free(&cs.tls);
        srv_free(&v);
        tt_end(&tt, 0);
}
END_TEST

/* start_tls with a peer that never answers, then the plain transport
 * aborted: the future fails; nothing on the protocol. */
START_TEST(test_start_tls_abort) {
        NEED_PKI();
        struct tt tt;
        struct srv v;
        struct rec c, ctls;
        char port[16];
        loop_tls_context_t *cctx;
        loop_future_t *f = NULL;

        tt_begin(&tt);
        srv_init(&v);
        rec_init(&c);
        rec_init(&ctls);
        cctx = client_ctx("ca");
        loop_server_t *s = start_server(&tt, &v, NULL, 0, port);
        ck_assert_int_eq(loop_create_connection(tt.loop, &rec_ops, &c, "127.0.0.1", port, NULL, &f), 0);
        loop_transport_t *t = take_transport(&tt, &c, f);
        RUN_UNTIL(tt.loop, v.conn[0].made == 1);
        g_in_call++;
        ck_assert_int_eq(loop_start_tls(t, &rec_ops, &ctls, cctx, 0, "localhost", 0, &f), 0);
        g_in_call--;
        RUN_UNTIL(tt.loop, v.conn[0].nin > 0);  /* the ClientHello, in the clear */
        ck_assert_int_eq(loop_future_done(f), 0);
        ck_assert_int_eq(loop_transport_abort(t), 0);
        wait_done(tt.loop, f);
        ck_assert_int_lt(loop_future_error(f), 0);
        loop_future_unref(f);
        RUN_UNTIL(tt.loop, v.conn[0].lost == 1);
        tu_run_for(tt.loop, 20 * TU_MSEC);
        rec_assert_nothing(&ctls);
        EVENTS(&c, EV_MADE);
        finish_server(&tt, s);
        loop_tls_context_unref(cctx);
        rec_free(&c);
        rec_free(&ctls);
        srv_free(&v);
        tt_end(&tt, -1);
}
END_TEST

/* Cancelling create_connection's future in the handshake: nothing on the
 * protocol, the socket closed. */
START_TEST(test_cancel_in_handshake) {
        NEED_PKI();
        struct tt tt;
        struct rec c;
        char port[16];
        loop_tls_context_t *cctx;

        tt_begin(&tt);
        rec_init(&c);
        int lfd = raw_listener(port);
        cctx = client_ctx("ca");
        loop_future_t *f = connect_tls(&tt, &c, "localhost", port, cctx, NULL, 0);
        int fd = raw_accept(tt.loop, lfd);
        ck_assert_int_eq(peer_wait(tt.loop, fd), 1);   /* the ClientHello */
        ck_assert_int_eq(loop_future_done(f), 0);
        ck_assert_int_eq(loop_future_cancel(f), 1);
        peer_wait_end(tt.loop, fd);
        tu_run_for(tt.loop, 20 * TU_MSEC);
        rec_assert_nothing(&c);
        loop_future_unref(f);
        close(fd);
        close(lfd);
        loop_tls_context_unref(cctx);
        rec_free(&c);
        tt_end(&tt, 0);
}
END_TEST

/* loop_close with TLS transports open: connection_lost(-ECANCELED) from
 * within loop_close, nothing leaks. _i 0: a connection with bytes in
 * flight; 1: and a create_connection just started; 2: and one in its
 * handshake (the peer silent), whose protocol hears nothing. */
START_TEST(test_loop_close) {
        NEED_PKI();
        struct tt tt;
        struct srv v;
        struct rec c, c2;
        char port[16], port2[16];
        loop_tls_context_t *sctx, *cctx;
        loop_future_t *f2 = NULL;
        int lfd = -1, fd = -1;

        tt_begin(&tt);
        srv_init(&v);
        rec_init(&c);
        rec_init(&c2);
        sctx = server_ctx("server");
        cctx = client_ctx("ca");
        loop_server_t *s = start_server(&tt, &v, sctx, 0, port);
        loop_transport_t *t = take_transport(&tt, &c, connect_tls(&tt, &c, "localhost", port, cctx, NULL, 0));
        RUN_UNTIL(tt.loop, v.conn[0].made == 1);
        ck_assert_int_eq(tt_write(t, "pending", 7), 0);
        if (_i == 1)
                f2 = connect_tls(&tt, &c2, "localhost", port, cctx, NULL, 0);
        if (_i == 2) {
                lfd = raw_listener(port2);
                f2 = connect_tls(&tt, &c2, "localhost", port2, cctx, NULL, 0);
                fd = raw_accept(tt.loop, lfd);
                ck_assert_int_eq(peer_wait(tt.loop, fd), 1);   /* the ClientHello */
                ck_assert_int_eq(loop_future_done(f2), 0);
        }
        ck_assert_int_eq(loop_close(tt.loop), 0);
        ck_assert_int_eq(c.lost, 1);
        ck_assert_int_eq(c.lost_error, -ECANCELED);
        ck_assert_int_eq(v.conn[0].lost, 1);
        ck_assert_int_eq(v.conn[0].lost_error, -ECANCELED);
        EVENTS(&c, EV_MADE, EV_LOST);
        ck_assert_int_eq(loop_transport_get_fd(t), -EBADF);
        if (f2) {
                ck_assert_int_eq(loop_future_done(f2), 1);
                ck_assert_int_ne(loop_future_error(f2), 0);
                rec_assert_nothing(&c2);
                loop_future_unref(f2);
        }
        if (fd >= 0) {
                peer_wait_end(NULL, fd);
                close(fd);
                close(lfd);
        }
        loop_server_unref(s);
        loop_tls_context_unref(sctx);
        loop_tls_context_unref(cctx);
        rec_free(&c);
        rec_free(&c2);
        srv_free(&v);
        tt_end(&tt, -1);
}
END_TEST

/* The server's clients: _i 0 close_clients (close_notify: each client
 * sees EOF then lost(0)); 1 abort_clients; 2 abort_clients at once after
 * the accept (raw clients that say nothing); 3 the same once the server's
 * handshakes are under way. */
START_TEST(test_server_clients) {
        NEED_PKI();
        enum { N = 3 };
        struct tt tt;
        struct srv v;
        struct rec c[N];
        int raw[N];
        char port[16];
        loop_tls_context_t *sctx, *cctx;

        tt_begin(&tt);
        srv_init(&v);
        sctx = server_ctx("server");
        cctx = client_ctx("ca");
        loop_server_t *s = start_server(&tt, &v, sctx, 0, port);
        for (int i = 0; i < N; i++) {
                rec_init(&c[i]);
                if (_i >= 2)
                        raw[i] = raw_connect(port);
                else
                        (void) take_transport(&tt, &c[i], connect_tls(&tt, &c[i], "localhost", port, cctx, NULL, 0));
        }
        if (_i >= 2) {
                RUN_UNTIL(tt.loop, loop_server_get_connections(s) == N);
                if (_i == 3)
                        tu_run_for(tt.loop, 50 * TU_MSEC);
        } else
                RUN_UNTIL(tt.loop, srv_made(&v) == N);
        ck_assert_uint_eq(loop_server_get_connections(s), N);
        ck_assert_int_eq(loop_server_close(s), 0);
        ck_assert_int_eq(_i == 0 ? loop_server_close_clients(s) : loop_server_abort_clients(s), 0);
        if (_i >= 2) {
                for (int i = 0; i < N; i++) {
                        peer_wait_end(tt.loop, raw[i]);
                        close(raw[i]);
                }
        } else {
                RUN_UNTIL(tt.loop, srv_lost(&v) == N);
                for (int i = 0; i < N; i++) {
                        RUN_UNTIL(tt.loop, c[i].lost == 1);
                        if (_i == 0) {
                                ck_assert_int_eq(c[i].lost_error, 0);
                                EVENTS(&c[i], EV_MADE, EV_EOF, EV_LOST);
                        } else
                                rec_assert_sane(&c[i]);
                        ck_assert_int_eq(v.conn[i].lost_error, 0);
                }
        }
        RUN_UNTIL(tt.loop, loop_server_get_connections(s) == 0);
        if (_i >= 2)
                ck_assert_int_eq(srv_made(&v) + srv_lost(&v), 0);
        finish_server(&tt, s);
        loop_tls_context_unref(sctx);
        loop_tls_context_unref(cctx);
        for (int i = 0; i < N; i++)
                rec_free(&c[i]);
        srv_free(&v);
        tt_end(&tt, -1);
}
END_TEST

/* 20 TLS clients at once against one server that echoes. */
START_TEST(test_many_clients) {
        NEED_PKI();
        enum { N = 20, SIZE = 100000 };
        struct tt tt;
        struct srv v;
        struct rec c[N];
        loop_future_t *f[N];
        loop_transport_t *t[N];
        char port[16];
        loop_tls_context_t *sctx, *cctx;
        unsigned char *data = pattern(SIZE + N);

        tt_begin(&tt);
        srv_init(&v);
        v.echo = 1;
        sctx = server_ctx("server");
        cctx = client_ctx("ca");
        loop_server_t *s = start_server(&tt, &v, sctx, 0, port);
        for (int i = 0; i < N; i++) {
                rec_init(&c[i]);
                f[i] = connect_tls(&tt, &c[i], "localhost", port, cctx, NULL, 0);
        }
        for (int i = 0; i < N; i++) {
                t[i] = take_transport(&tt, &c[i], f[i]);
                /* Each its own piece of the pattern. */
                ck_assert_int_eq(tt_write(t[i], data + i, SIZE), 0);
        }
        for (int i = 0; i < N; i++) {
                RUN_UNTIL(tt.loop, c[i].nin == SIZE);
                ck_assert_int_eq(memcmp(c[i].in, data + i, SIZE), 0);
                ck_assert_int_eq(tt_close(t[i]), 0);
        }
        RUN_UNTIL(tt.loop, srv_lost(&v) == N);
        for (int i = 0; i < N; i++) {
                RUN_UNTIL(tt.loop, c[i].lost == 1);
                ck_assert_int_eq(c[i].lost_error, 0);
                ck_assert_int_eq(v.conn[i].lost_error, 0);
                EVENTS(&v.conn[i], EV_MADE, EV_DATA, EV_EOF, EV_LOST);
        }
        ck_assert_int_eq(v.nconn, N);
        finish_server(&tt, s);
        loop_tls_context_unref(sctx);
        loop_tls_context_unref(cctx);
        for (int i = 0; i < N; i++)
                rec_free(&c[i]);
        srv_free(&v);
        free(data);
        tt_end(&tt, 0);
}
END_TEST

/* Context arguments and files. */
START_TEST(test_context_args) {
        NEED_PKI();
        loop_tls_context_t *c = NULL;
        static const char *const bad[] = {""};
        static const char *const ok[] = {"h2"};

        ck_assert_int_eq(loop_tls_context_new_client(NULL), -EINVAL);
        ck_assert_int_eq(loop_tls_context_new_server(NULL, NULL, &c), -EINVAL);
        ck_assert_int_eq(loop_tls_context_new_server(pki("missing.pem"), NULL, &c), -ENOENT);
        ck_assert_int_eq(loop_tls_context_new_server(pki("server.pem"), pki("missing.key"), &c), -ENOENT);
        ck_assert_int_eq(loop_tls_context_new_server(pki("server.pem"), pki("server.ext"), &c), -EINVAL);
        /* A key that is not the certificate's. */
        ck_assert_int_eq(loop_tls_context_new_server(pki("server.pem"), pki("client.key"), &c), -EINVAL);
        ck_assert_ptr_eq(c, NULL);
        c = client_ctx(NULL);
        ck_assert_int_eq(loop_tls_context_load_verify_locations(c, pki("missing.pem"), NULL), -ENOENT);
        ck_assert_int_eq(loop_tls_context_load_verify_locations(c, NULL, NULL), -EINVAL);
        ck_assert_int_eq(loop_tls_context_set_alpn_protocols(c, bad, 1), -EINVAL);
        ck_assert_int_eq(loop_tls_context_set_alpn_protocols(c, ok, 1), 0);
        ck_assert_int_eq(loop_tls_context_set_alpn_protocols(c, NULL, 0), 0);
        {
                /* Refused by the calls, not later by a failed handshake: a
                 * context of the wrong side, an empty server_hostname. */
                loop_t *loop = tu_loop_new();
                loop_tls_context_t *sc = server_ctx("server");
                struct loop_connection_options co = {.size = sizeof(co), .tls = sc};
                struct loop_server_options so = {.size = sizeof(so), .tls = c};
                loop_future_t *f = NULL;
                struct rec r;

                rec_init(&r);
                ck_assert_int_eq(loop_create_connection(loop, &rec_ops, &r, "127.0.0.1", "1", &co, &f), -EINVAL);
                co.tls = c;
                co.server_hostname = "";
                ck_assert_int_eq(loop_create_connection(loop, &rec_ops, &r, "127.0.0.1", "1", &co, &f), -EINVAL);
                ck_assert_int_eq(loop_create_server(loop, srv_factory, NULL, "127.0.0.1", "0", &so, &f), -EINVAL);
                ck_assert_ptr_eq(f, NULL);
                rec_assert_nothing(&r);
                loop_tls_context_unref(sc);
                ck_assert_int_eq(loop_close(loop), 0);
                loop_unref(loop);
        }
        ck_assert_ptr_eq(loop_tls_context_ref(c), c);
        ck_assert_ptr_eq(loop_tls_context_unref(c), NULL);
        ck_assert_ptr_ne(loop_tls_context_get_ssl_ctx(c), NULL);
        ck_assert_ptr_eq(loop_tls_context_unref(c), NULL);
        ck_assert_ptr_eq(loop_tls_context_get_ssl_ctx(NULL), NULL);
        ck_assert_ptr_eq(loop_transport_get_ssl(NULL), NULL);
        ck_assert_ptr_eq(loop_transport_get_alpn_protocol(NULL), NULL);
}
END_TEST

/* The libraries libloop loads, named through the environment:
 * LIBLOOP_LIBSSL or LIBLOOP_LIBCRYPTO naming a missing file leaves every
 * context -EOPNOTSUPP; LIBLOOP_LIBCRYPTO naming the real libcrypto works.
 * libssl is loaded once per process, so each case is this program again,
 * run with --tls-child ok|refused (checked in main()). */
static int tls_child(const char *want) {
        loop_tls_context_t *c = NULL;
        int r1 = loop_tls_context_new_client(&c);

        if (strcmp(want, "ok") == 0) {
                if (r1 != 0) {
                        fprintf(stderr, "tls child: new_client %s\n", loop_strerror(r1));
                        return 1;
                }
                loop_tls_context_unref(c);
                return 0;
        }
        int r2 = loop_tls_context_new_server("/nonexistent.pem", NULL, &c);
        if (r1 != -EOPNOTSUPP || r2 != -EOPNOTSUPP || c) {
                fprintf(stderr, "no libssl: new_client %s, new_server %s\n", loop_strerror(r1), loop_strerror(r2));
                return 1;
        }
        return 0;
}

#define STR2(x) #x
#define STR(x) STR2(x)
#ifdef _WIN32
#define MISSING "nonexistent.dll"
#define LIBCRYPTO "libcrypto-" STR(OPENSSL_VERSION_MAJOR) "-x64.dll"
#else
#define MISSING "/nonexistent"
#define LIBCRYPTO "libcrypto.so." STR(OPENSSL_VERSION_MAJOR)
#endif

START_TEST(test_library_names) {
        static const struct {
                const char *variable, *value, *want;
        } cases[] = {
                {"LIBLOOP_LIBSSL", MISSING, "refused"},
                {"LIBLOOP_LIBCRYPTO", MISSING, "refused"},
                {"LIBLOOP_LIBCRYPTO", LIBCRYPTO, "ok"},
        };
        const char *variable = cases[_i].variable, *want = cases[_i].want;

        ck_assert_int_eq(setenv(variable, cases[_i].value, 1), 0);
#ifdef _WIN32
        char exe[MAX_PATH];
        DWORD n = GetModuleFileNameA(NULL, exe, sizeof(exe));

        ck_assert(n > 0 && n < sizeof(exe));
        intptr_t status = _spawnl(_P_WAIT, exe, exe, "--tls-child", want, NULL);
        ck_assert_int_eq(unsetenv(variable), 0);
        ck_assert_msg(status == 0, "the child with %s=%s: status %d", variable, cases[_i].value, (int) status);
#else
        char exe[4096];
        ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);

        ck_assert_int_gt(n, 0);
        exe[n] = '\0';
        char *argv[] = {exe, "--tls-child", (char *) want, NULL};
        pid_t pid;
        int r = posix_spawn(&pid, exe, NULL, NULL, argv, environ);
        ck_assert_int_eq(unsetenv(variable), 0);
        ck_assert_msg(r == 0, "posix_spawn %s: %s", exe, strerror(r));
        int status = reap(NULL, pid, 0);
        ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the child with %s=%s: status %#x", variable,
                      cases[_i].value, status);
#endif
}
END_TEST

static Suite *tls_suite(void) {
        Suite *s = suite_create("tls");
        TCase *tc;

        tc = tu_tcase(s, "peers");
        tcase_add_test(tc, test_openssl_s_server);
        tcase_add_test(tc, test_openssl_s_client);

        /* Megabytes through OpenSSL, tagged so that a slow run can
         * leave them out (CK_EXCLUDE_TAGS=bulk); both take 9 s under
         * valgrind, on the poll selector. */
        tc = tu_tcase(s, "bulk");
        tcase_set_tags(tc, "bulk");
        tcase_add_test(tc, test_round_trip);
        tcase_add_test(tc, test_many_clients);

        tc = tu_tcase(s, "verify");
        tcase_add_loop_test(tc, test_verify_fails, 0, 5);
        tcase_add_test(tc, test_verify_off);
        tcase_add_loop_test(tc, test_verify_host_as_name, 0, 2);
        tcase_add_loop_test(tc, test_client_cert, 0, 2);
        tcase_add_loop_test(tc, test_alpn, 0, 2);

        tc = tu_tcase(s, "handshake");
        tcase_add_test(tc, test_handshake_timeout);
        tcase_add_loop_test(tc, test_peer_closes_in_handshake, 0, 2);
        tcase_add_loop_test(tc, test_server_peer_gone, 0, 2);
        tcase_add_test(tc, test_cancel_in_handshake);

        tc = tu_tcase(s, "start_tls");
        tcase_add_test(tc, test_start_tls);
        tcase_add_test(tc, test_start_tls_abort);

        tc = tu_tcase(s, "lifetime");
        tcase_add_loop_test(tc, test_loop_close, 0, 3);
        tcase_add_loop_test(tc, test_server_clients, 0, 4);

        tc = tu_tcase(s, "api");
        tcase_add_test(tc, test_context_args);
        tcase_add_loop_test(tc, test_library_names, 0, 3);
        return s;
}

int main(int argc, char **argv) {
        int r;

        if (argc > 2 && strcmp(argv[1], "--tls-child") == 0)
                return tls_child(argv[2]);
#ifndef _WIN32
        /* A write to a closed peer is an error to see, not a death. */
        signal(SIGPIPE, SIG_IGN);
#endif
        pki_create();
        if (g_no_pki)
                printf("check_tls: %s: the cases that need it are skipped\n", g_no_pki);
        r = tu_run_suite(tls_suite());
        pki_remove();
        return r;
}
