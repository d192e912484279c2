/* SPDX-License-Identifier: MIT */
/*
 * Transports, protocols and servers (loop_create_connection,
 * loop_create_server and their kin; asyncio's Transport/Protocol model):
 * the order of the protocol callbacks and that none comes from inside the
 * call that caused it, echo over TCP (IPv4, IPv6) and AF_UNIX, flow control
 * and the write buffer limits, half close, close and write_eof that flush,
 * abort, peer resets, reading paused, callbacks that "raise", buffered
 * protocols, connection failures and cancellation, wrapped sockets,
 * servers (factory errors, EMFILE, close, wait_closed, close_clients,
 * abort_clients), loop_close with open transports, argument errors. Each
 * test counts the process's descriptors before and after and installs an
 * exception handler that counts what it gets. tests/run-backends reruns
 * this once per backend, the proactor (io_uring) included. On Windows
 * (tests/windows: the select and IOCP loops under wine) the sockets are
 * winsock's and the socketpairs loopback TCP pairs (testutil.h); the cases
 * about AF_UNIX paths and RLIMIT_NOFILE say why they skip, pipes are pipe
 * handles there, and loop_create_unix_* are checked to say -EOPNOTSUPP.
 */
#ifndef _WIN32
#include <arpa/inet.h>
#include <netinet/in.h>
#endif
#include <signal.h>
#include <stddef.h>
#ifndef _WIN32
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/un.h>
#endif

#include "testutil.h"
#include "protocol-events.h"

/* ---- recording protocol ---------------------------------------------- */

#define MAX_EVENTS 64

/* Set around the calls the tests make: a protocol callback seen while it
 * is set came from inside a public call (only pause_writing may). */
static int g_in_call;

struct rec {
        const void *tp;                 /* the transport connection_made got (not dereferenced) */
        loop_transport_t *t;            /* the same, with a reference (unless noref) */
        int ev[MAX_EVENTS];
        int nev;
        int made, data, eof, lost, pause, resume, getbuf, bufupd;
        int lost_error;
        /* Broken rules, each must stay 0. */
        int after_lost;                 /* a callback after connection_lost */
        int before_made;                /* a callback before connection_made */
        int other_transport;            /* a callback for another transport */
        int reentrant;                  /* a callback inside a public call */
        int bad_nbytes;                 /* buffer_updated out of the buffer's size */
        int unpaired;                   /* buffer_updated without get_buffer first */
        int echo_error;                 /* the echo's write failed */
        /* What the callbacks return or do. */
        int made_ret, data_ret, eof_ret, lost_ret;
        int echo;                       /* data_received writes the bytes back */
        int noref;                      /* take no reference in connection_made */
        /* What they saw. */
        loop_future_t *fut;             /* the connection's future, when the test has it */
        int fut_done_at_made;
        int fd_at_made;
        int closing_at_lost;
        int lost_peer;                  /* get_peername() in connection_lost */
        unsigned lost_peer_port;
        int pause_in_call, resume_in_call;
        size_t size_at_pause, size_at_resume;
        /* Buffered protocol: get_buffer hands out small[0..small_size). */
        unsigned char small[16];
        size_t small_size;
        int buf_given;
        /* The bytes received. */
        unsigned char *in;
        size_t nin, capin;
};

static void rec_init(struct rec *r) {
        memset(r, 0, sizeof(*r));
        r->fd_at_made = -1;
        r->small_size = 7;
}

static void rec_free(struct rec *r) {
        r->t = loop_transport_unref(r->t);
        ck_assert_ptr_eq(r->t, NULL);
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
        if (!r->made && ev != EV_MADE)
                r->before_made++;
        if (r->tp && (const void *) t != r->tp)
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
        if (!r->tp)
                r->tp = t;
        if (!r->noref && !r->t)
                r->t = loop_transport_ref(t);
        r->fd_at_made = loop_transport_get_fd(t);
        if (r->fut)
                r->fut_done_at_made = loop_future_done(r->fut);
        return r->made_ret;
}

static int on_data(loop_transport_t *t, const void *data, size_t size, void *userdata) {
        struct rec *r = userdata;

        rec_event(r, t, EV_DATA);
        r->data++;
        rec_append(r, data, size);
        if (r->echo && loop_transport_write(t, data, size) != 0)
                r->echo_error++;
        return r->data_ret;
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
        r->closing_at_lost = loop_transport_is_closing(t);
        {
                /* Asked after a reset too: the address the transport kept. */
                struct sockaddr_storage a;
                socklen_t len = sizeof(a);
                r->lost_peer = loop_transport_get_peername(t, (struct sockaddr *) &a, &len);
                r->lost_peer_port = r->lost_peer == 0 && a.ss_family == AF_INET
                                            ? ntohs(((struct sockaddr_in *) &a)->sin_port)
                                            : 0;
        }
        return r->lost_ret;
}

static int on_pause(loop_transport_t *t, void *userdata) {
        struct rec *r = userdata;

        rec_event(r, t, EV_PAUSE);
        r->pause++;
        r->pause_in_call = g_in_call > 0;
        r->size_at_pause = loop_transport_get_write_buffer_size(t);
        return 0;
}

static int on_resume(loop_transport_t *t, void *userdata) {
        struct rec *r = userdata;

        rec_event(r, t, EV_RESUME);
        r->resume++;
        r->resume_in_call = g_in_call > 0;
        r->size_at_resume = loop_transport_get_write_buffer_size(t);
        return 0;
}

static int on_get_buffer(loop_transport_t *t, size_t size_hint, void **buf, size_t *size, void *userdata) {
        struct rec *r = userdata;

        (void) size_hint;
        if (r->lost)
                r->after_lost++;
        if (!r->made)
                r->before_made++;
        if (g_in_call)
                r->reentrant++;
        if (r->tp && (const void *) t != r->tp)
                r->other_transport++;
        r->getbuf++;
        r->buf_given = 1;
        memset(r->small, 0xee, sizeof(r->small));
        *buf = r->small;
        *size = r->small_size;
        return 0;
}

static int on_buffer_updated(loop_transport_t *t, size_t nbytes, void *userdata) {
        struct rec *r = userdata;

        rec_event(r, t, EV_DATA);
        r->bufupd++;
        if (!r->buf_given)
                r->unpaired++;
        r->buf_given = 0;
        if (nbytes == 0 || nbytes > r->small_size) {
                r->bad_nbytes++;
                return 0;
        }
        rec_append(r, r->small, nbytes);
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

/* eof_received NULL: behaves as returning 0. */
static const struct loop_protocol_ops rec_ops_noeof = {
        .size = sizeof(struct loop_protocol_ops),
        .connection_made = on_made,
        .data_received = on_data,
        .connection_lost = on_lost,
        .pause_writing = on_pause,
        .resume_writing = on_resume,
};

/* Buffered: data_received is set too, and must not be used. */
static const struct loop_protocol_ops buf_ops = {
        .size = sizeof(struct loop_protocol_ops),
        .connection_made = on_made,
        .data_received = on_data,
        .eof_received = on_eof,
        .connection_lost = on_lost,
        .get_buffer = on_get_buffer,
        .buffer_updated = on_buffer_updated,
};

/* The rules every protocol's callbacks must have kept. */
static void rec_assert_sane(const struct rec *r) {
        ck_assert_int_le(r->made, 1);
        ck_assert_int_le(r->lost, 1);
        ck_assert_int_eq(r->after_lost, 0);
        ck_assert_int_eq(r->before_made, 0);
        ck_assert_int_eq(r->other_transport, 0);
        ck_assert_msg(r->reentrant == 0, "%d protocol callback(s) called from inside a public call", r->reentrant);
        ck_assert_int_eq(r->bad_nbytes, 0);
        ck_assert_int_eq(r->unpaired, 0);
        ck_assert_int_eq(r->echo_error, 0);
}

/* The callbacks came exactly in this order (EV_END ends the list). */
static void rec_assert_events(const struct rec *r, const int *want) {
        ev_assert_exact(r->ev, r->nev, want);
        rec_assert_sane(r);
}

/* connection_made first, connection_lost last, and no data or EOF. */
static void rec_assert_made_lost_only(const struct rec *r) {
        char got[256];

        ev_format(r->ev, r->nev, got, sizeof(got));
        ck_assert_msg(r->nev >= 2 && r->ev[0] == EV_MADE && r->ev[r->nev - 1] == EV_LOST, "callbacks: [%s]", got);
        for (int i = 1; i < r->nev - 1; i++)
                ck_assert_msg(r->ev[i] == EV_PAUSE || r->ev[i] == EV_RESUME, "callbacks: [%s]", got);
        rec_assert_sane(r);
}

static void rec_assert_nothing(const struct rec *r) {
        char got[256];

        ev_format(r->ev, r->nev, got, sizeof(got));
        ck_assert_msg(r->nev == 0 && r->made == 0 && r->lost == 0 && r->getbuf == 0,
                      "protocol callbacks were called: [%s]", got);
}

/* ---- the test's loop, exception handler and descriptor count --------- */

#define MAX_EXC 8

struct tt {
        loop_t *loop;
        int fds_before;
        int nexc;
        int exc_error[MAX_EXC];
        int exc_fd[MAX_EXC];
        char exc_message[MAX_EXC][128];
};

static void exc_handler(loop_t *loop, const struct loop_exception_context *c, void *userdata) {
        struct tt *tt = userdata;

        (void) loop;
        if (tt->nexc < MAX_EXC) {
                tt->exc_error[tt->nexc] = c->error;
                tt->exc_fd[tt->nexc] = c->fd;
                snprintf(tt->exc_message[tt->nexc], sizeof(tt->exc_message[0]), "%s",
                         c->message ? c->message : "(null)");
        }
        tt->nexc++;
}

static void tt_begin(struct tt *tt) {
        memset(tt, 0, sizeof(*tt));
        g_in_call = 0;
        tt->fds_before = tu_count_fds();        /* -1 without /proc: not checked */
        tt->loop = tu_loop_new();
        ck_assert_int_eq(loop_set_exception_handler(tt->loop, exc_handler, tt), 0);
}

/* want_exc: how many calls of the exception handler, or -1 for any. */
static void tt_end(struct tt *tt, int want_exc) {
        if (want_exc >= 0)
                ck_assert_msg(tt->nexc == want_exc, "%d exception(s), expected %d; first: %s (%s)", tt->nexc,
                              want_exc, tt->nexc ? tt->exc_message[0] : "-",
                              tt->nexc ? loop_strerror(tt->exc_error[0]) : "-");
        ck_assert_int_eq(loop_close(tt->loop), 0);
        tt->loop = loop_unref(tt->loop);
        if (tt->fds_before >= 0)
                ck_assert_msg(tu_count_fds() == tt->fds_before, "descriptors: %d before, %d after", tt->fds_before,
                              tu_count_fds());
}

/* Runs iterations until cond holds; fails after 10 s (never hangs). */
#define RUN_UNTIL(loop, cond)                                                         \
        do {                                                                          \
                int64_t deadline_ = tu_now_ns() + 10 * TU_SEC;                        \
                while (!(cond) && tu_now_ns() < deadline_)                            \
                        ck_assert_int_ge(loop_run_once((loop), 10 * TU_MSEC), 0);     \
                ck_assert_msg((cond), "timed out waiting for: %s", #cond);            \
        } while (0)

static void wait_done(loop_t *loop, loop_future_t *f) {
        RUN_UNTIL(loop, loop_future_done(f));
}

/* The calls a test makes, with g_in_call set around them. */
static int tt_write(loop_transport_t *t, const void *data, size_t size) {
        int r;

        g_in_call++;
        r = loop_transport_write(t, data, size);
        g_in_call--;
        return r;
}

static int tt_writev(loop_transport_t *t, const struct loop_iovec *iov, size_t n) {
        int r;

        g_in_call++;
        r = loop_transport_writev(t, iov, n);
        g_in_call--;
        return r;
}

static int tt_write_eof(loop_transport_t *t) {
        int r;

        g_in_call++;
        r = loop_transport_write_eof(t);
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

static int tt_abort(loop_transport_t *t) {
        int r;

        g_in_call++;
        r = loop_transport_abort(t);
        g_in_call--;
        return r;
}

static int tt_pause_reading(loop_transport_t *t) {
        int r;

        g_in_call++;
        r = loop_transport_pause_reading(t);
        g_in_call--;
        return r;
}

static int tt_resume_reading(loop_transport_t *t) {
        int r;

        g_in_call++;
        r = loop_transport_resume_reading(t);
        g_in_call--;
        return r;
}

/* ---- servers ---------------------------------------------------------- */

#define MAX_CONN 8

struct srv {
        struct rec conn[MAX_CONN];
        int nconn;
        int factory_calls;
        int factory_in_call;            /* the factory ran inside a public call */
        int fail_next;                  /* the next factory call returns this */
        loop_server_t *server;
        int other_server;               /* the factory got another server */
        /* For the connections to come. */
        const struct loop_protocol_ops *ops;
        int echo, eof_ret;
};

static void srv_init(struct srv *v) {
        memset(v, 0, sizeof(*v));
        for (int i = 0; i < MAX_CONN; i++)
                rec_init(&v->conn[i]);
}

static void srv_free(struct srv *v) {
        ck_assert_int_eq(v->factory_in_call, 0);
        ck_assert_int_eq(v->other_server, 0);
        for (int i = 0; i < MAX_CONN; i++) {
                rec_assert_sane(&v->conn[i]);
                rec_free(&v->conn[i]);
        }
}

static int srv_factory(loop_server_t *server, const struct loop_protocol_ops **ops, void **userdata,
                       void *factory_userdata) {
        struct srv *v = factory_userdata;
        struct rec *r;

        v->factory_calls++;
        if (g_in_call)
                v->factory_in_call++;
        if (v->server && server != v->server)
                v->other_server++;
        if (v->fail_next) {
                int e = v->fail_next;

                v->fail_next = 0;
                return e;
        }
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
        ck_assert_uint_eq(ntohl(sin.sin_addr.s_addr), INADDR_LOOPBACK);
        ck_assert_uint_ne(ntohs(sin.sin_port), 0);
        return ntohs(sin.sin_port);
}

/* The result of a future that succeeded. */
static void *result_of(loop_future_t *f) {
        void *p = NULL;
        int r = loop_future_result(f, &p);

        ck_assert_msg(r == 0, "future failed: %s", loop_strerror(r));
        return p;
}

/* A server on 127.0.0.1, port "0": the kernel's pick, read back with
 * loop_server_get_fds and getsockname into port. */
static loop_server_t *start_server(struct tt *tt, struct srv *v, const struct loop_server_options *options,
                                   char port[16]) {
        loop_future_t *f = NULL;
        loop_server_t *s;
        int fds[4] = {-1, -1, -1, -1};

        g_in_call++;
        ck_assert_int_eq(loop_create_server(tt->loop, srv_factory, v, "127.0.0.1", "0", options, &f), 0);
        g_in_call--;
        wait_done(tt->loop, f);
        s = result_of(f);
        ck_assert_ptr_ne(s, NULL);
        ck_assert_ptr_eq(loop_server_ref(s), s);
        loop_future_unref(f);
        ck_assert_ptr_eq(loop_server_get_loop(s), tt->loop);
        ck_assert_int_eq(loop_server_get_fds(s, fds, 4), 1);
        ck_assert_int_ge(fds[0], 0);
        snprintf(port, 16, "%u", (unsigned) port_of_fd(fds[0]));
        v->server = s;
        return s;
}

/* Closes the server, waits until wait_closed says so, drops it. */
static void finish_server(struct tt *tt, loop_server_t *s) {
        loop_future_t *w = NULL;
        void *p = (void *) 1;

        ck_assert_int_eq(loop_server_close(s), 0);
        ck_assert_int_eq(loop_server_wait_closed(s, &w), 0);
        wait_done(tt->loop, w);
        ck_assert_int_eq(loop_future_result(w, &p), 0);
        ck_assert_ptr_eq(p, NULL);
        loop_future_unref(w);
        ck_assert_ptr_eq(loop_server_unref(s), NULL);
}

/* ---- clients ---------------------------------------------------------- */

/* The transport of a connection future that succeeded, checked against
 * what connection_made saw; the future is dropped (r keeps a reference). */
static loop_transport_t *take_transport(struct tt *tt, struct rec *r, loop_future_t *f) {
        loop_transport_t *t;

        r->fut = f;
        wait_done(tt->loop, f);
        t = result_of(f);
        ck_assert_ptr_ne(t, NULL);
        ck_assert_int_eq(r->made, 1);
        ck_assert_ptr_eq(r->tp, t);
        /* connection_made, then the future. */
        ck_assert_int_eq(r->fut_done_at_made, 0);
        if (!r->lost)
                ck_assert_int_eq(r->fd_at_made, loop_transport_get_fd(t));
        r->fut = NULL;
        loop_future_unref(f);
        return t;
}

static loop_transport_t *connect_tcp(struct tt *tt, struct rec *r, const char *port) {
        loop_future_t *f = NULL;

        g_in_call++;
        ck_assert_int_eq(loop_create_connection(tt->loop, &rec_ops, r, "127.0.0.1", port, NULL, &f), 0);
        g_in_call--;
        ck_assert_ptr_ne(f, NULL);
        /* Not from inside the call. */
        ck_assert_int_eq(r->made, 0);
        return take_transport(tt, r, f);
}

static loop_transport_t *wrap_socket(struct tt *tt, const struct loop_protocol_ops *ops, struct rec *r, int fd) {
        loop_future_t *f = NULL;

        g_in_call++;
        ck_assert_int_eq(loop_connect_accepted_socket(tt->loop, ops, r, fd, &f), 0);
        g_in_call--;
        ck_assert_ptr_ne(f, NULL);
        ck_assert_int_eq(r->made, 0);
        return take_transport(tt, r, f);
}

/* A raw listening socket on 127.0.0.1 (non-blocking) with a small receive
 * buffer, so that the accepted peer holds little when it does not read. */
static int raw_listener(char port[16]) {
        struct sockaddr_in sin = {.sin_family = AF_INET};
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0), small = 32768;

        ck_assert_int_ge(fd, 0);
#ifdef _WIN32
        tu_set_nonblock(fd);    /* SOCK_NONBLOCK and SOCK_CLOEXEC are 0 there */
#endif
        ck_assert_int_eq(setsockopt(fd, SOL_SOCKET, SO_RCVBUF, (const void *) &small, sizeof(small)), 0);
        sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        ck_assert_int_eq(bind(fd, (struct sockaddr *) &sin, sizeof(sin)), 0);
        ck_assert_int_eq(listen(fd, 16), 0);
        snprintf(port, 16, "%u", (unsigned) port_of_fd(fd));
        return fd;
}

/* accept4(lfd, NULL, NULL, flags): SOCK_CLOEXEC, and SOCK_NONBLOCK if
 * nonblock; -1 and errno (EAGAIN: nobody waits on a non-blocking lfd). */
static int accept_cloexec(int lfd, int nonblock) {
#ifdef _WIN32
        SOCKET s = accept((SOCKET) lfd, NULL, NULL);

        if (s == INVALID_SOCKET) {
                errno = tu_win_errno(WSAGetLastError());
                return -1;
        }
        /* The accepted socket has the listener's mode: set it either way. */
        if (nonblock) {
                tu_set_nonblock((int) s);
        } else {
                u_long off = 0;

                ck_assert_int_eq(ioctlsocket(s, FIONBIO, &off), 0);
                ck_assert(SetHandleInformation((HANDLE) s, HANDLE_FLAG_INHERIT, 0));
        }
        return (int) s;
#else
        return accept4(lfd, NULL, NULL, (nonblock ? SOCK_NONBLOCK : 0) | SOCK_CLOEXEC);
#endif
}

static int raw_accept(loop_t *loop, int lfd) {
        int64_t deadline = tu_now_ns() + 10 * TU_SEC;
        int fd;

        while ((fd = accept_cloexec(lfd, 1)) < 0 && errno == EAGAIN && tu_now_ns() < deadline)
                ck_assert_int_ge(loop_run_once(loop, 10 * TU_MSEC), 0);
        ck_assert_msg(fd >= 0, "accept: %s", strerror(errno));
        return fd;
}

/* A small send buffer on the transport's socket: what the kernel takes at
 * once stays small, whatever the system's autotuning. */
static void small_sndbuf(loop_transport_t *t) {
        int fd = loop_transport_get_fd(t), small = 32768;

        ck_assert_int_ge(fd, 0);
        ck_assert_int_eq(setsockopt(fd, SOL_SOCKET, SO_SNDBUF, (const void *) &small, sizeof(small)), 0);
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

/* The first index where buf differs from the pattern at offset off, or n. */
static size_t pattern_mismatch(const unsigned char *buf, size_t n, size_t off) {
        for (size_t i = 0; i < n; i++)
                if (buf[i] != pat(off + i))
                        return i;
        return n;
}

/*
 * Reads fd (non-blocking) while running the loop, until EOF, an error, or
 * max bytes. Checks the bytes against the pattern when check is set.
 * *end: 0 EOF, a negative errno value, 1 max reached; -ETIMEDOUT after 20 s.
 */
static size_t peer_read(loop_t *loop, int fd, size_t max, int check, int *end) {
        static unsigned char buf[65536];
        int64_t deadline = tu_now_ns() + 20 * TU_SEC;
        size_t got = 0;

        *end = -ETIMEDOUT;
        while (got < max && tu_now_ns() < deadline) {
                size_t want = max - got < sizeof(buf) ? max - got : sizeof(buf);
                ssize_t n = read(fd, buf, want);

                if (n > 0) {
                        if (check) {
                                size_t bad = pattern_mismatch(buf, (size_t) n, got);

                                ck_assert_msg(bad == (size_t) n, "byte %zu differs from what was written",
                                              got + bad);
                        }
                        got += (size_t) n;
                        continue;
                }
                if (n == 0) {
                        *end = 0;
                        return got;
                }
                if (errno != EAGAIN && errno != EWOULDBLOCK) {
                        *end = -errno;
                        return got;
                }
                ck_assert_int_ge(loop_run_once(loop, TU_MSEC), 0);
        }
        if (got == max)
                *end = 1;
        return got;
}

/* Exactly n bytes from fd into buf, running the loop meanwhile. */
static void peer_read_exact(loop_t *loop, int fd, void *buf, size_t n) {
        int64_t deadline = tu_now_ns() + 10 * TU_SEC;
        size_t got = 0;

        while (got < n && tu_now_ns() < deadline) {
                ssize_t k = read(fd, (char *) buf + got, n - got);

                if (k > 0) {
                        got += (size_t) k;
                        continue;
                }
                ck_assert_msg(k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK), "peer: %s after %zu of %zu bytes",
                              k == 0 ? "EOF" : strerror(errno), got, n);
                ck_assert_int_ge(loop_run_once(loop, TU_MSEC), 0);
        }
        ck_assert_uint_eq(got, n);
}

/* A socket's EOF, after whatever it still has to read. */
static void assert_peer_eof(loop_t *loop, int fd) {
        int end;

        peer_read(loop, fd, SIZE_MAX, 0, &end);
        ck_assert_msg(end == 0, "peer: %s, not EOF", end < 0 ? strerror(-end) : "more data");
}

/* The same, or ECONNRESET: an AF_UNIX peer closed with bytes it had not
 * read resets the connection (Linux's unix_release_sock). */
static void assert_peer_eof_or_reset(loop_t *loop, int fd) {
        int end;

        peer_read(loop, fd, SIZE_MAX, 0, &end);
        ck_assert_msg(end == 0 || end == -ECONNRESET, "peer: %s, not EOF", end < 0 ? strerror(-end) : "more data");
}

/* get_protocol gives callbacks equal to ops' (maybe in a copy) and ud. */
static void assert_protocol(loop_transport_t *t, const struct loop_protocol_ops *ops, void *ud) {
        void *got_ud = NULL;
        const struct loop_protocol_ops *got = loop_transport_get_protocol(t, &got_ud);

        ck_assert_ptr_ne(got, NULL);
        ck_assert_ptr_eq(got_ud, ud);
        ck_assert(got->connection_made == ops->connection_made);
        ck_assert(got->data_received == ops->data_received);
        ck_assert(got->eof_received == ops->eof_received);
        ck_assert(got->connection_lost == ops->connection_lost);
        ck_assert(got->pause_writing == ops->pause_writing);
        ck_assert(got->resume_writing == ops->resume_writing);
        ck_assert(got->get_buffer == ops->get_buffer);
        ck_assert(got->buffer_updated == ops->buffer_updated);
}

static int fd_is_open(int fd) {
        return fcntl(fd, F_GETFD) >= 0;
}

/* ---- streams: order and echo ----------------------------------------- */

START_TEST(test_echo) {
        struct tt tt;
        struct srv v;
        struct rec c;
        char port[16];
        struct sockaddr_in a, b;
        socklen_t la = sizeof(a), lb = sizeof(b);
        loop_server_t *s;
        loop_transport_t *t;

        tt_begin(&tt);
        srv_init(&v);
        v.echo = 1;
        rec_init(&c);
        s = start_server(&tt, &v, NULL, port);
        ck_assert_int_eq(loop_server_is_serving(s), 1);
        ck_assert_uint_eq(loop_server_get_connections(s), 0);
        t = connect_tcp(&tt, &c, port);
        ck_assert_ptr_eq(loop_transport_get_loop(t), tt.loop);
        assert_protocol(t, &rec_ops, &c);
        ck_assert_int_eq(loop_transport_can_write_eof(t), 1);
        ck_assert_int_eq(loop_transport_is_closing(t), 0);
        ck_assert_int_eq(loop_transport_is_reading(t), 1);
        ck_assert_int_ge(loop_transport_get_fd(t), 0);
        ck_assert_uint_eq(loop_transport_get_write_buffer_size(t), 0);
        RUN_UNTIL(tt.loop, v.nconn == 1 && v.conn[0].made == 1);
        ck_assert_int_eq(v.factory_calls, 1);
        ck_assert_uint_eq(loop_server_get_connections(s), 1);

        /* Both ends name each other. */
        ck_assert_int_eq(loop_transport_get_sockname(t, (struct sockaddr *) &a, &la), 0);
        ck_assert_int_eq(loop_transport_get_peername(v.conn[0].t, (struct sockaddr *) &b, &lb), 0);
        ck_assert_int_eq(la, sizeof(a));
        ck_assert_int_eq(lb, sizeof(b));
        ck_assert_int_eq(a.sin_family, AF_INET);
        ck_assert_uint_eq(a.sin_port, b.sin_port);
        la = sizeof(a);
        ck_assert_int_eq(loop_transport_get_peername(t, (struct sockaddr *) &a, &la), 0);
        ck_assert_uint_eq(ntohs(a.sin_port), (unsigned) atoi(port));

        ck_assert_int_eq(tt_write(t, "hello, ", 7), 0);
        ck_assert_int_eq(tt_write(t, NULL, 0), 0);
        ck_assert_int_eq(tt_write(t, "world", 5), 0);
        ck_assert_int_eq(tt_write_eof(t), 0);
        /* The server echoes, sees EOF, closes (eof_received returns 0): the
         * client sees the echo, then EOF, and closes too. */
        RUN_UNTIL(tt.loop, c.lost && v.conn[0].lost);
        tu_run_for(tt.loop, 20 * TU_MSEC);
        EVENTS(&c, EV_MADE, EV_DATA, EV_EOF, EV_LOST);
        EVENTS(&v.conn[0], EV_MADE, EV_DATA, EV_EOF, EV_LOST);
        ck_assert_int_eq(c.lost_error, 0);
        ck_assert_int_eq(v.conn[0].lost_error, 0);
        ck_assert_uint_eq(v.conn[0].nin, 12);
        ck_assert_mem_eq(v.conn[0].in, "hello, world", 12);
        ck_assert_uint_eq(c.nin, 12);
        ck_assert_mem_eq(c.in, "hello, world", 12);
        ck_assert_int_eq(c.closing_at_lost, 1);
        /* A lost transport: closing, no fd; after write_eof, a write is
         * -ESHUTDOWN first (asyncio checks _eof before _conn_lost). */
        ck_assert_int_eq(loop_transport_is_closing(t), 1);
        ck_assert_int_eq(loop_transport_is_reading(t), 0);
        ck_assert_int_eq(loop_transport_get_fd(t), -EBADF);
        ck_assert_int_eq(tt_write(t, "x", 1), -ESHUTDOWN);
        ck_assert_uint_eq(loop_server_get_connections(s), 0);
        ck_assert_int_eq(loop_server_is_serving(s), 1);

        finish_server(&tt, s);
        rec_free(&c);
        srv_free(&v);
        tt_end(&tt, 0);
}
END_TEST

/* The same over IPv6 (::1), where the system has it. */
START_TEST(test_echo_ipv6) {
        struct tt tt;
        struct srv v;
        struct rec c;
        struct sockaddr_in6 a;
        socklen_t la = sizeof(a);
        loop_future_t *f = NULL;
        loop_server_t *s;
        loop_transport_t *t;
        int fd = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0), fds[2], r;
        char port[16];

        if (fd >= 0) {
                struct sockaddr_in6 any = {.sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT};

                r = bind(fd, (struct sockaddr *) &any, sizeof(any));
                close(fd);
        }
        if (fd < 0 || r < 0) {
                printf("%s: SKIP: no IPv6 loopback here\n", __func__);
                return;
        }
        tt_begin(&tt);
        srv_init(&v);
        v.echo = 1;
        rec_init(&c);
        ck_assert_int_eq(loop_create_server(tt.loop, srv_factory, &v, "::1", "0", NULL, &f), 0);
        wait_done(tt.loop, f);
        s = loop_server_ref(result_of(f));
        loop_future_unref(f);
        v.server = s;
        ck_assert_int_eq(loop_server_get_fds(s, fds, 2), 1);
        ck_assert_int_eq(getsockname(fds[0], (struct sockaddr *) &a, &la), 0);
        ck_assert_int_eq(a.sin6_family, AF_INET6);
        snprintf(port, sizeof(port), "%u", (unsigned) ntohs(a.sin6_port));
        f = NULL;
        ck_assert_int_eq(loop_create_connection(tt.loop, &rec_ops, &c, "::1", port, NULL, &f), 0);
        t = take_transport(&tt, &c, f);
        la = sizeof(a);
        ck_assert_int_eq(loop_transport_get_peername(t, (struct sockaddr *) &a, &la), 0);
        ck_assert_int_eq(a.sin6_family, AF_INET6);
        ck_assert_int_eq(la, sizeof(a));
        ck_assert_int_eq(tt_write(t, "six", 3), 0);
        ck_assert_int_eq(tt_write_eof(t), 0);
        RUN_UNTIL(tt.loop, c.lost && v.conn[0].lost);
        ck_assert_uint_eq(c.nin, 3);
        ck_assert_mem_eq(c.in, "six", 3);
        EVENTS(&c, EV_MADE, EV_DATA, EV_EOF, EV_LOST);
        EVENTS(&v.conn[0], EV_MADE, EV_DATA, EV_EOF, EV_LOST);
        finish_server(&tt, s);
        rec_free(&c);
        srv_free(&v);
        tt_end(&tt, 0);
}
END_TEST

/* connection_made comes from the loop, never from loop_create_connection,
 * and before the future completes (take_transport checks the latter). */
START_TEST(test_made_from_loop) {
        struct tt tt;
        struct srv v;
        struct rec c;
        char port[16];
        loop_future_t *f = NULL;
        loop_server_t *s;
        loop_transport_t *t;

        tt_begin(&tt);
        srv_init(&v);
        rec_init(&c);
        s = start_server(&tt, &v, NULL, port);
        g_in_call++;
        ck_assert_int_eq(loop_create_connection(tt.loop, &rec_ops, &c, "127.0.0.1", port, NULL, &f), 0);
        g_in_call--;
        ck_assert_int_eq(c.made, 0);
        ck_assert_int_eq(loop_future_done(f), 0);
        /* The factory too runs from the loop. */
        ck_assert_int_eq(v.factory_calls, 0);
        t = take_transport(&tt, &c, f);
        ck_assert_int_eq(loop_transport_is_closing(t), 0);
        RUN_UNTIL(tt.loop, v.conn[0].made == 1);
        ck_assert_int_eq(tt_close(t), 0);
        ck_assert_int_eq(c.lost, 0);
        ck_assert_int_eq(loop_transport_is_closing(t), 1);
        ck_assert_int_eq(loop_transport_is_reading(t), 0);
        ck_assert_int_eq(tt_close(t), 0);
        RUN_UNTIL(tt.loop, c.lost && v.conn[0].lost);
        EVENTS(&c, EV_MADE, EV_LOST);
        EVENTS(&v.conn[0], EV_MADE, EV_EOF, EV_LOST);
        ck_assert_int_eq(c.lost_error, 0);
        ck_assert_int_eq(v.conn[0].lost_error, 0);
        /* Lost: the bytes are dropped. */
        ck_assert_int_eq(tt_write(t, "x", 1), -EPIPE);
        ck_assert_int_eq(loop_transport_get_fd(t), -EBADF);
        finish_server(&tt, s);
        rec_free(&c);
        srv_free(&v);
        tt_end(&tt, 0);
}
END_TEST

/* The transport keeps itself alive until connection_lost: no reference
 * held by the test, the future dropped before the loop ever ran. */
START_TEST(test_self_owned) {
        struct tt tt;
        struct rec r;
        loop_future_t *f = NULL;
        int sv[2];
        char buf[8];

        tt_begin(&tt);
        rec_init(&r);
        r.noref = 1;
        r.echo = 1;
        tu_socketpair(sv);
        g_in_call++;
        ck_assert_int_eq(loop_connect_accepted_socket(tt.loop, &rec_ops, &r, sv[0], &f), 0);
        g_in_call--;
        loop_future_unref(f);
        ck_assert_int_eq(write(sv[1], "ping", 4), 4);
        RUN_UNTIL(tt.loop, r.nin == 4);
        ck_assert_int_eq(shutdown(sv[1], SHUT_WR), 0);
        RUN_UNTIL(tt.loop, r.lost);
        ck_assert_int_eq(read(sv[1], buf, sizeof(buf)), 4);
        ck_assert_mem_eq(buf, "ping", 4);
        assert_peer_eof(tt.loop, sv[1]);
        EVENTS(&r, EV_MADE, EV_DATA, EV_EOF, EV_LOST);
        ck_assert_int_eq(r.lost_error, 0);
        ck_assert_int_eq(fd_is_open(sv[0]), 0);
        sv[0] = -1;
        tu_close_pair(sv);
        rec_free(&r);
        tt_end(&tt, 0);
}
END_TEST

/* ---- flow control ------------------------------------------------------ */

START_TEST(test_flow_control) {
        const size_t total = 8u << 20, chunk = 128u << 10;
        struct tt tt;
        struct rec c;
        char port[16];
        size_t low = 0, high = 0, got;
        unsigned char *src = pattern(total);
        int lfd, afd, end;
        loop_transport_t *t;

        tt_begin(&tt);
        rec_init(&c);
        lfd = raw_listener(port);
        t = connect_tcp(&tt, &c, port);
        afd = raw_accept(tt.loop, lfd);
        small_sndbuf(t);
        ck_assert_int_eq(loop_transport_get_write_buffer_limits(t, &low, &high), 0);
        ck_assert_uint_eq(low, 16384);
        ck_assert_uint_eq(high, 65536);

        /* The peer does not read: every write returns 0 at once; the one
         * that takes the buffer above high calls pause_writing, inside it. */
        for (size_t off = 0; off < total; off += chunk) {
                int paused = c.pause;
                size_t after;

                ck_assert_int_eq(tt_write(t, src + off, chunk), 0);
                after = loop_transport_get_write_buffer_size(t);
                if (!paused)
                        ck_assert_msg(c.pause == (after > high),
                                      "pause_writing called %d times by a write that left %zu bytes (high %zu)",
                                      c.pause, after, high);
                else
                        ck_assert_int_eq(c.pause, 1);
        }
        ck_assert_uint_gt(loop_transport_get_write_buffer_size(t), high);
        ck_assert_int_eq(c.pause, 1);
        ck_assert_int_eq(c.pause_in_call, 1);
        ck_assert_uint_gt(c.size_at_pause, high);
        ck_assert_int_eq(c.resume, 0);
        tu_run_for(tt.loop, 20 * TU_MSEC);
        ck_assert_int_eq(c.pause, 1);
        ck_assert_int_eq(c.resume, 0);

        /* The peer reads: everything arrives in order, and resume_writing
         * comes once, from the loop, with the buffer at low or below. */
        got = peer_read(tt.loop, afd, total, 1, &end);
        ck_assert_uint_eq(got, total);
        RUN_UNTIL(tt.loop, loop_transport_get_write_buffer_size(t) == 0 && c.resume == 1);
        ck_assert_int_eq(c.pause, 1);
        ck_assert_int_eq(c.resume, 1);
        ck_assert_int_eq(c.resume_in_call, 0);
        ck_assert_uint_le(c.size_at_resume, low);
        EVENTS(&c, EV_MADE, EV_PAUSE, EV_RESUME);

        ck_assert_int_eq(tt_close(t), 0);
        assert_peer_eof(tt.loop, afd);
        RUN_UNTIL(tt.loop, c.lost);
        ck_assert_int_eq(c.lost_error, 0);
        EVENTS(&c, EV_MADE, EV_PAUSE, EV_RESUME, EV_LOST);
        free(src);
        ck_assert_int_eq(close(afd), 0);
        ck_assert_int_eq(close(lfd), 0);
        rec_free(&c);
        tt_end(&tt, 0);
}
END_TEST

START_TEST(test_limits) {
        const size_t D = LOOP_TRANSPORT_DEFAULT_LIMIT;
        struct tt tt;
        struct rec r;
        size_t low = 1, high = 1, got;
        int sv[2], end;
        loop_transport_t *t;
        unsigned char in[11];

        tt_begin(&tt);
        rec_init(&r);
        tu_socketpair(sv);
        t = wrap_socket(&tt, &rec_ops, &r, sv[0]);
        ck_assert_int_eq(loop_transport_get_write_buffer_limits(t, &low, &high), 0);
        ck_assert_uint_eq(high, 65536);
        ck_assert_uint_eq(low, 16384);
        /* asyncio's rules: high alone, low = high / 4; low alone, high =
         * 4 * low; neither, the defaults; low > high refused. */
        ck_assert_int_eq(loop_transport_set_write_buffer_limits(t, 1000, D), 0);
        ck_assert_int_eq(loop_transport_get_write_buffer_limits(t, &low, &high), 0);
        ck_assert_uint_eq(high, 1000);
        ck_assert_uint_eq(low, 250);
        ck_assert_int_eq(loop_transport_set_write_buffer_limits(t, D, 100), 0);
        ck_assert_int_eq(loop_transport_get_write_buffer_limits(t, &low, &high), 0);
        ck_assert_uint_eq(high, 400);
        ck_assert_uint_eq(low, 100);
        ck_assert_int_eq(loop_transport_set_write_buffer_limits(t, 500, 600), -EINVAL);
        ck_assert_int_eq(loop_transport_get_write_buffer_limits(t, &low, &high), 0);
        ck_assert_uint_eq(high, 400);
        ck_assert_uint_eq(low, 100);
        ck_assert_int_eq(loop_transport_set_write_buffer_limits(t, D, D), 0);
        ck_assert_int_eq(loop_transport_get_write_buffer_limits(t, &low, &high), 0);
        ck_assert_uint_eq(high, 65536);
        ck_assert_uint_eq(low, 16384);
        ck_assert_int_eq(loop_transport_set_write_buffer_limits(t, 0, D), 0);
        ck_assert_int_eq(loop_transport_get_write_buffer_limits(t, &low, &high), 0);
        ck_assert_uint_eq(high, 0);
        ck_assert_uint_eq(low, 0);
        ck_assert_int_eq(loop_transport_set_write_buffer_limits(t, 300, 300), 0);
        ck_assert_int_eq(loop_transport_get_write_buffer_limits(t, &low, &high), 0);
        ck_assert_uint_eq(high, 300);
        ck_assert_uint_eq(low, 300);

        /* The limits are the ones flow control uses: high 10, low 5. With
         * the kernel's buffer full, 11 bytes pause, 10 would not. */
        ck_assert_int_eq(loop_transport_set_write_buffer_limits(t, 10, 5), 0);
        size_t filled = tu_fill(sv[0]);
        ck_assert_int_eq(tt_write(t, "0123456789", 10), 0);
        ck_assert_uint_eq(loop_transport_get_write_buffer_size(t), 10);
        ck_assert_int_eq(r.pause, 0);
        ck_assert_int_eq(tt_write(t, "A", 1), 0);
        ck_assert_uint_eq(loop_transport_get_write_buffer_size(t), 11);
        ck_assert_int_eq(r.pause, 1);
        ck_assert_int_eq(r.pause_in_call, 1);
        got = peer_read(tt.loop, sv[1], filled, 0, &end);
        ck_assert_uint_eq(got, filled);
        /* Then the bytes written through the transport, in order. */
        peer_read_exact(tt.loop, sv[1], in, 11);
        ck_assert_mem_eq(in, "0123456789A", 11);
        RUN_UNTIL(tt.loop, r.resume == 1);
        ck_assert_uint_le(r.size_at_resume, 5);
        ck_assert_int_eq(r.resume_in_call, 0);

        ck_assert_int_eq(tt_close(t), 0);
        RUN_UNTIL(tt.loop, r.lost);
        EVENTS(&r, EV_MADE, EV_PAUSE, EV_RESUME, EV_LOST);
        assert_peer_eof(tt.loop, sv[1]);
        sv[0] = -1;
        tu_close_pair(sv);
        rec_free(&r);
        tt_end(&tt, 0);
}
END_TEST

/* ---- EOF: write_eof, half close ---------------------------------------- */

START_TEST(test_write_eof_half_close) {
        struct tt tt;
        struct srv v;
        struct rec c;
        char port[16];
        struct loop_iovec iov = {"y", 1};
        loop_server_t *s;
        loop_transport_t *t;

        tt_begin(&tt);
        srv_init(&v);
        v.eof_ret = 1;  /* the server keeps its side open */
        rec_init(&c);
        s = start_server(&tt, &v, NULL, port);
        t = connect_tcp(&tt, &c, port);
        RUN_UNTIL(tt.loop, v.conn[0].made);
        ck_assert_int_eq(tt_write(t, "ping", 4), 0);
        ck_assert_int_eq(tt_write_eof(t), 0);
        ck_assert_int_eq(tt_write(t, "x", 1), -ESHUTDOWN);
        ck_assert_int_eq(tt_writev(t, &iov, 1), -ESHUTDOWN);
        ck_assert_int_eq(tt_write_eof(t), 0);
        ck_assert_int_eq(loop_transport_is_closing(t), 0);

        RUN_UNTIL(tt.loop, v.conn[0].eof);
        ck_assert_uint_eq(v.conn[0].nin, 4);
        ck_assert_mem_eq(v.conn[0].in, "ping", 4);
        tu_run_for(tt.loop, 20 * TU_MSEC);
        /* Half closed: the server still writes, the client still reads. */
        ck_assert_int_eq(v.conn[0].lost, 0);
        ck_assert_int_eq(loop_transport_is_closing(v.conn[0].t), 0);
        ck_assert_int_eq(tt_write(v.conn[0].t, "pong", 4), 0);
        RUN_UNTIL(tt.loop, c.nin == 4);
        ck_assert_mem_eq(c.in, "pong", 4);
        ck_assert_int_eq(c.lost, 0);
        ck_assert_int_eq(tt_write(v.conn[0].t, "!", 1), 0);
        RUN_UNTIL(tt.loop, c.nin == 5);

        /* The server closes: the client sees EOF and closes (returns 0). */
        ck_assert_int_eq(tt_close(v.conn[0].t), 0);
        RUN_UNTIL(tt.loop, c.lost && v.conn[0].lost);
        EVENTS(&v.conn[0], EV_MADE, EV_DATA, EV_EOF, EV_LOST);
        EVENTS(&c, EV_MADE, EV_DATA, EV_EOF, EV_LOST);
        ck_assert_int_eq(c.lost_error, 0);
        ck_assert_int_eq(v.conn[0].lost_error, 0);
        finish_server(&tt, s);
        rec_free(&c);
        srv_free(&v);
        tt_end(&tt, 0);
}
END_TEST

/* write_eof with a large buffer: the peer gets every byte, then EOF; the
 * transport still reads, and ends when the peer closes. */
START_TEST(test_write_eof_flushes) {
        const size_t total = 1u << 20;
        struct tt tt;
        struct rec c;
        char port[16];
        unsigned char *src = pattern(total);
        size_t got;
        int lfd, afd, end;
        loop_transport_t *t;

        tt_begin(&tt);
        rec_init(&c);
        lfd = raw_listener(port);
        t = connect_tcp(&tt, &c, port);
        afd = raw_accept(tt.loop, lfd);
        small_sndbuf(t);
        ck_assert_int_eq(tt_write(t, src, total), 0);
        ck_assert_uint_gt(loop_transport_get_write_buffer_size(t), 0);
        ck_assert_int_eq(tt_write_eof(t), 0);
        ck_assert_int_eq(loop_transport_is_closing(t), 0);
        got = peer_read(tt.loop, afd, SIZE_MAX, 1, &end);
        ck_assert_msg(end == 0, "peer: %s after %zu bytes", end < 0 ? strerror(-end) : "?", got);
        ck_assert_uint_eq(got, total);
        ck_assert_int_eq(c.lost, 0);
        /* The other direction still works. */
        ck_assert_int_eq(write(afd, "back", 4), 4);
        RUN_UNTIL(tt.loop, c.nin == 4);
        ck_assert_mem_eq(c.in, "back", 4);
        ck_assert_int_eq(close(afd), 0);
        RUN_UNTIL(tt.loop, c.lost);
        ck_assert_int_eq(c.lost_error, 0);
        ck_assert_int_eq(c.ev[0], EV_MADE);
        ck_assert_int_eq(c.ev[c.nev - 2], EV_EOF);
        ck_assert_int_eq(c.ev[c.nev - 1], EV_LOST);
        rec_assert_sane(&c);
        free(src);
        ck_assert_int_eq(close(lfd), 0);
        rec_free(&c);
        tt_end(&tt, 0);
}
END_TEST

/* eof_received returning 0, or NULL (_i = 1): the transport closes and
 * connection_lost(0); the other side, returning 1, stays open. */
START_TEST(test_eof_closes) {
        struct tt tt;
        struct srv v;
        struct rec c;
        char port[16];
        loop_server_t *s;
        loop_transport_t *t;

        tt_begin(&tt);
        srv_init(&v);
        v.ops = _i ? &rec_ops_noeof : &rec_ops;
        rec_init(&c);
        c.eof_ret = 1;
        s = start_server(&tt, &v, NULL, port);
        t = connect_tcp(&tt, &c, port);
        RUN_UNTIL(tt.loop, v.conn[0].made);
        ck_assert_int_eq(tt_write_eof(t), 0);
        RUN_UNTIL(tt.loop, v.conn[0].lost && c.eof);
        ck_assert_int_eq(v.conn[0].lost_error, 0);
        if (_i)
                EVENTS(&v.conn[0], EV_MADE, EV_LOST);
        else
                EVENTS(&v.conn[0], EV_MADE, EV_EOF, EV_LOST);
        tu_run_for(tt.loop, 20 * TU_MSEC);
        ck_assert_int_eq(c.lost, 0);
        ck_assert_int_eq(loop_transport_is_closing(t), 0);
        ck_assert_int_eq(tt_close(t), 0);
        RUN_UNTIL(tt.loop, c.lost);
        EVENTS(&c, EV_MADE, EV_EOF, EV_LOST);
        ck_assert_int_eq(c.lost_error, 0);
        finish_server(&tt, s);
        rec_free(&c);
        srv_free(&v);
        tt_end(&tt, 0);
}
END_TEST

/* ---- close, abort, resets ---------------------------------------------- */

START_TEST(test_close_flushes) {
        const size_t total = 1u << 20;
        struct tt tt;
        struct rec c;
        char port[16];
        unsigned char *src = pattern(total + 5);
        size_t got, expect = total;
        int lfd, afd, end;
        loop_transport_t *t;

        tt_begin(&tt);
        rec_init(&c);
        lfd = raw_listener(port);
        t = connect_tcp(&tt, &c, port);
        afd = raw_accept(tt.loop, lfd);
        small_sndbuf(t);
        ck_assert_int_eq(tt_write(t, src, total), 0);
        ck_assert_uint_gt(loop_transport_get_write_buffer_size(t), 0);
        ck_assert_int_eq(tt_close(t), 0);
        ck_assert_int_eq(c.lost, 0);
        ck_assert_int_eq(loop_transport_is_closing(t), 1);
        ck_assert_int_eq(loop_transport_is_reading(t), 0);
        ck_assert_int_eq(tt_close(t), 0);
        /* Still flushing: a write is accepted (asyncio's rule) and sent. */
        ck_assert_uint_gt(loop_transport_get_write_buffer_size(t), 0);
        ck_assert_int_eq(tt_write(t, src + total, 5), 0);
        expect += 5;

        got = peer_read(tt.loop, afd, SIZE_MAX, 1, &end);
        ck_assert_msg(end == 0, "peer: %s after %zu bytes", end < 0 ? strerror(-end) : "?", got);
        ck_assert_uint_eq(got, expect);
        RUN_UNTIL(tt.loop, c.lost);
        tu_run_for(tt.loop, 20 * TU_MSEC);
        ck_assert_int_eq(c.lost, 1);
        ck_assert_int_eq(c.lost_error, 0);
        rec_assert_made_lost_only(&c);
        ck_assert_int_eq(loop_transport_get_fd(t), -EBADF);
        free(src);
        ck_assert_int_eq(close(afd), 0);
        ck_assert_int_eq(close(lfd), 0);
        rec_free(&c);
        tt_end(&tt, 0);
}
END_TEST

/* close() stops reading at once: bytes already in the socket (and, on the
 * proactor, a receive already done) are not delivered. */
START_TEST(test_close_stops_reading) {
        struct tt tt;
        struct rec r;
        int sv[2];
        loop_transport_t *t;

        tt_begin(&tt);
        rec_init(&r);
        tu_socketpair(sv);
        t = wrap_socket(&tt, &rec_ops, &r, sv[0]);
        tu_run_for(tt.loop, 5 * TU_MSEC);
        ck_assert_int_eq(write(sv[1], "late", 4), 4);
        ck_assert_int_eq(shutdown(sv[1], SHUT_WR), 0);
        ck_assert_int_eq(tt_close(t), 0);
        RUN_UNTIL(tt.loop, r.lost);
        tu_run_for(tt.loop, 20 * TU_MSEC);
        EVENTS(&r, EV_MADE, EV_LOST);
        ck_assert_int_eq(r.lost_error, 0);
        assert_peer_eof_or_reset(tt.loop, sv[1]);
        ck_assert_int_eq(fd_is_open(sv[0]), 0);
        sv[0] = -1;
        tu_close_pair(sv);
        rec_free(&r);
        tt_end(&tt, 0);
}
END_TEST

START_TEST(test_abort) {
        const size_t total = 8u << 20;
        struct tt tt;
        struct rec c;
        char port[16];
        unsigned char *src = pattern(total);
        struct loop_iovec iov = {"z", 1};
        size_t got;
        int lfd, afd, end;
        loop_transport_t *t;

        tt_begin(&tt);
        rec_init(&c);
        lfd = raw_listener(port);
        t = connect_tcp(&tt, &c, port);
        afd = raw_accept(tt.loop, lfd);
        small_sndbuf(t);
        ck_assert_int_eq(tt_write(t, src, total), 0);
        ck_assert_uint_gt(loop_transport_get_write_buffer_size(t), 0);
        ck_assert_int_eq(tt_abort(t), 0);
        /* Scheduled, not called inside abort. */
        ck_assert_int_eq(c.lost, 0);
        ck_assert_int_eq(loop_transport_is_closing(t), 1);
        ck_assert_int_eq(loop_transport_is_reading(t), 0);
        ck_assert_int_eq(tt_write(t, "x", 1), -EPIPE);
        ck_assert_int_eq(tt_writev(t, &iov, 1), -EPIPE);
        RUN_UNTIL(tt.loop, c.lost);
        tu_run_for(tt.loop, 20 * TU_MSEC);
        ck_assert_int_eq(c.lost, 1);
        ck_assert_int_eq(c.lost_error, 0);
        rec_assert_made_lost_only(&c);
        ck_assert_int_eq(tt_write(t, "x", 1), -EPIPE);
        ck_assert_int_eq(loop_transport_get_fd(t), -EBADF);

        /* The peer gets what the kernel had, then EOF or a reset: not the
         * whole buffer, and nothing out of order. */
        got = peer_read(tt.loop, afd, SIZE_MAX, 1, &end);
        ck_assert_msg(end == 0 || end == -ECONNRESET, "peer: %s", strerror(-end));
        ck_assert_uint_lt(got, total);
        free(src);
        ck_assert_int_eq(close(afd), 0);
        ck_assert_int_eq(close(lfd), 0);
        rec_free(&c);
        tt_end(&tt, 0);
}
END_TEST

/* The peer resets (SO_LINGER 0), the transport idle (_i = 0) or with
 * writes buffered (_i = 1): connection_lost exactly once, last. */
START_TEST(test_peer_reset) {
        const size_t total = 4u << 20;
        struct tt tt;
        struct rec c;
        char port[16];
        struct linger lg = {.l_onoff = 1, .l_linger = 0};
        unsigned char *src = pattern(total);
        int lfd, afd;
        loop_transport_t *t;

        tt_begin(&tt);
        rec_init(&c);
        lfd = raw_listener(port);
        t = connect_tcp(&tt, &c, port);
        afd = raw_accept(tt.loop, lfd);
        if (_i) {
                small_sndbuf(t);
                ck_assert_int_eq(tt_write(t, src, total), 0);
        }
        tu_run_for(tt.loop, 5 * TU_MSEC);
        ck_assert_int_eq(setsockopt(afd, SOL_SOCKET, SO_LINGER, (const void *) &lg, sizeof(lg)), 0);
        ck_assert_int_eq(close(afd), 0);
        RUN_UNTIL(tt.loop, c.lost);
        tu_run_for(tt.loop, 30 * TU_MSEC);
        ck_assert_int_eq(c.lost, 1);
        ck_assert_int_eq(c.ev[c.nev - 1], EV_LOST);
        ck_assert_int_le(c.lost_error, 0);
        /* The peer's address, as asyncio's peername, after the reset. */
        ck_assert_int_eq(c.lost_peer, 0);
        ck_assert_uint_eq(c.lost_peer_port, (unsigned) atoi(port));
        rec_assert_sane(&c);
        ck_assert_int_eq(loop_transport_is_closing(t), 1);
        ck_assert_int_eq(tt_write(t, "x", 1), -EPIPE);
        free(src);
        ck_assert_int_eq(close(lfd), 0);
        rec_free(&c);
        tt_end(&tt, -1);        /* a reset may or may not be reported */
}
END_TEST

/* ---- reading paused ----------------------------------------------------- */

START_TEST(test_pause_reading) {
        struct tt tt;
        struct rec r;
        int sv[2];
        loop_transport_t *t;

        tt_begin(&tt);
        rec_init(&r);
        r.eof_ret = 1;
        tu_socketpair(sv);
        t = wrap_socket(&tt, &rec_ops, &r, sv[0]);
        ck_assert_int_eq(loop_transport_is_reading(t), 1);
        ck_assert_int_eq(tt_resume_reading(t), 0);      /* not paused: nothing */
        ck_assert_int_eq(loop_transport_is_reading(t), 1);
        ck_assert_int_eq(tt_pause_reading(t), 0);
        ck_assert_int_eq(loop_transport_is_reading(t), 0);
        ck_assert_int_eq(tt_pause_reading(t), 0);
        ck_assert_int_eq(loop_transport_is_reading(t), 0);

        /* Data and EOF wait while paused. */
        ck_assert_int_eq(write(sv[1], "abc", 3), 3);
        ck_assert_int_eq(shutdown(sv[1], SHUT_WR), 0);
        for (int i = 0; i < 5; i++)
                ck_assert_int_ge(loop_run_once(tt.loop, 10 * TU_MSEC), 0);
        tu_run_for(tt.loop, 20 * TU_MSEC);
        ck_assert_int_eq(r.data, 0);
        ck_assert_int_eq(r.eof, 0);

        ck_assert_int_eq(tt_resume_reading(t), 0);
        ck_assert_int_eq(loop_transport_is_reading(t), 1);
        ck_assert_int_eq(tt_resume_reading(t), 0);
        ck_assert_int_eq(r.data, 0);    /* from the loop, not from resume */
        RUN_UNTIL(tt.loop, r.eof);
        ck_assert_uint_eq(r.nin, 3);
        ck_assert_mem_eq(r.in, "abc", 3);
        EVENTS(&r, EV_MADE, EV_DATA, EV_EOF);
        /* Half closed (eof_received returned 1): still writable. */
        ck_assert_int_eq(loop_transport_is_closing(t), 0);
        ck_assert_int_eq(tt_write(t, "ok", 2), 0);
        RUN_UNTIL(tt.loop, loop_transport_get_write_buffer_size(t) == 0);

        ck_assert_int_eq(tt_close(t), 0);
        ck_assert_int_eq(loop_transport_is_reading(t), 0);
        ck_assert_int_eq(tt_pause_reading(t), 0);
        ck_assert_int_eq(tt_resume_reading(t), 0);
        ck_assert_int_eq(loop_transport_is_reading(t), 0);
        RUN_UNTIL(tt.loop, r.lost);
        EVENTS(&r, EV_MADE, EV_DATA, EV_EOF, EV_LOST);
        {
                char buf[8];
                ck_assert_int_eq(read(sv[1], buf, sizeof(buf)), 2);
                ck_assert_mem_eq(buf, "ok", 2);
        }
        assert_peer_eof(tt.loop, sv[1]);
        sv[0] = -1;
        tu_close_pair(sv);
        rec_free(&r);
        tt_end(&tt, 0);
}
END_TEST

/* ---- callbacks that raise ---------------------------------------------- */

START_TEST(test_data_raises) {
        struct tt tt;
        struct rec r;
        int sv[2], fd;
        loop_transport_t *t;

        tt_begin(&tt);
        rec_init(&r);
        r.data_ret = -EIO;
        tu_socketpair(sv);
        t = wrap_socket(&tt, &rec_ops, &r, sv[0]);
        fd = loop_transport_get_fd(t);
        ck_assert_int_eq(fd, sv[0]);
        ck_assert_int_eq(write(sv[1], "x", 1), 1);
        RUN_UNTIL(tt.loop, r.lost);
        tu_run_for(tt.loop, 20 * TU_MSEC);
        ck_assert_int_eq(tt.nexc, 1);
        ck_assert_int_eq(tt.exc_error[0], -EIO);
        ck_assert_int_eq(tt.exc_fd[0], fd);
        ck_assert_int_eq(r.lost_error, -EIO);
        EVENTS(&r, EV_MADE, EV_DATA, EV_LOST);
        ck_assert_int_eq(tt_write(t, "x", 1), -EPIPE);
        assert_peer_eof(tt.loop, sv[1]);
        sv[0] = -1;
        tu_close_pair(sv);
        rec_free(&r);
        tt_end(&tt, 1);
}
END_TEST

START_TEST(test_made_raises) {
        struct tt tt;
        struct rec r;
        loop_future_t *f = NULL;
        int sv[2];

        tt_begin(&tt);
        rec_init(&r);
        r.made_ret = -ENOMEM;
        tu_socketpair(sv);
        ck_assert_int_eq(loop_connect_accepted_socket(tt.loop, &rec_ops, &r, sv[0], &f), 0);
        RUN_UNTIL(tt.loop, r.lost && loop_future_done(f));
        ck_assert_int_eq(tt.nexc, 1);
        ck_assert_int_eq(tt.exc_error[0], -ENOMEM);
        ck_assert_int_eq(r.lost_error, -ENOMEM);
        EVENTS(&r, EV_MADE, EV_LOST);
        assert_peer_eof(tt.loop, sv[1]);
        loop_future_unref(f);
        sv[0] = -1;
        tu_close_pair(sv);
        rec_free(&r);
        tt_end(&tt, 1);
}
END_TEST

/* A negative return from connection_lost only goes to the handler. */
START_TEST(test_lost_raises) {
        struct tt tt;
        struct rec r;
        int sv[2];
        loop_transport_t *t;

        tt_begin(&tt);
        rec_init(&r);
        r.lost_ret = -EIO;
        tu_socketpair(sv);
        t = wrap_socket(&tt, &rec_ops, &r, sv[0]);
        ck_assert_int_eq(tt_close(t), 0);
        RUN_UNTIL(tt.loop, r.lost);
        tu_run_for(tt.loop, 20 * TU_MSEC);
        ck_assert_int_eq(r.lost_error, 0);
        ck_assert_int_eq(tt.nexc, 1);
        ck_assert_int_eq(tt.exc_error[0], -EIO);
        EVENTS(&r, EV_MADE, EV_LOST);
        assert_peer_eof(tt.loop, sv[1]);
        sv[0] = -1;
        tu_close_pair(sv);
        rec_free(&r);
        tt_end(&tt, 1);
}
END_TEST

/* ---- buffered protocols -------------------------------------------------- */

START_TEST(test_buffered) {
        const size_t total = 100u << 10;
        struct tt tt;
        struct rec r;
        unsigned char *src = pattern(total);
        size_t sent = 0;
        int sv[2];
        int64_t deadline;

        tt_begin(&tt);
        rec_init(&r);
        r.small_size = 7;
        tu_socketpair(sv);
        wrap_socket(&tt, &buf_ops, &r, sv[0]);
        deadline = tu_now_ns() + 10 * TU_SEC;
        while (sent < total && tu_now_ns() < deadline) {
                ssize_t n = write(sv[1], src + sent, total - sent);

                if (n > 0)
                        sent += (size_t) n;
                else
                        ck_assert_int_eq(errno, EAGAIN);
                ck_assert_int_ge(loop_run_once(tt.loop, TU_MSEC), 0);
        }
        ck_assert_uint_eq(sent, total);
        ck_assert_int_eq(shutdown(sv[1], SHUT_WR), 0);
        RUN_UNTIL(tt.loop, r.lost);
        ck_assert_int_eq(r.lost_error, 0);
        ck_assert_int_eq(r.data, 0);    /* data_received is not used */
        ck_assert_uint_eq(r.nin, total);
        ck_assert_uint_eq(pattern_mismatch(r.in, r.nin, 0), total);
        ck_assert_int_ge(r.bufupd, (int) ((total + 6) / 7));
        ck_assert_int_ge(r.getbuf, r.bufupd);
        EVENTS(&r, EV_MADE, EV_DATA, EV_EOF, EV_LOST);
        assert_peer_eof(tt.loop, sv[1]);
        free(src);
        sv[0] = -1;
        tu_close_pair(sv);
        rec_free(&r);
        tt_end(&tt, 0);
}
END_TEST

/* get_buffer giving no room has "raised" -EINVAL. */
START_TEST(test_buffered_size0) {
        struct tt tt;
        struct rec r;
        int sv[2];

        tt_begin(&tt);
        rec_init(&r);
        r.small_size = 0;
        tu_socketpair(sv);
        ck_assert_int_eq(write(sv[1], "abc", 3), 3);
        wrap_socket(&tt, &buf_ops, &r, sv[0]);
        RUN_UNTIL(tt.loop, r.lost);
        tu_run_for(tt.loop, 20 * TU_MSEC);
        ck_assert_int_eq(r.lost_error, -EINVAL);
        ck_assert_int_ge(r.getbuf, 1);
        ck_assert_int_eq(r.bufupd, 0);
        ck_assert_int_eq(r.data, 0);
        ck_assert_int_eq(tt.nexc, 1);
        ck_assert_int_eq(tt.exc_error[0], -EINVAL);
        EVENTS(&r, EV_MADE, EV_LOST);
        assert_peer_eof_or_reset(tt.loop, sv[1]);
        sv[0] = -1;
        tu_close_pair(sv);
        rec_free(&r);
        tt_end(&tt, 1);
}
END_TEST

/* A protocol table of an older, smaller size: the missing members are
 * NULL. Too small to hold connection_made, or get_buffer without
 * buffer_updated (or the reverse): -EINVAL, and the fd stays the caller's. */
START_TEST(test_ops_checks) {
        struct tt tt;
        struct rec r;
        struct loop_protocol_ops ops = rec_ops, half = buf_ops;
        loop_future_t *f = NULL;
        int sv[2];
        loop_transport_t *t;

        tt_begin(&tt);
        rec_init(&r);
        tu_socketpair(sv);
        ops.size = offsetof(struct loop_protocol_ops, connection_made) + sizeof(ops.connection_made) - 1;
        ck_assert_int_eq(loop_connect_accepted_socket(tt.loop, &ops, &r, sv[0], &f), -EINVAL);
        ops.size = 0;
        ck_assert_int_eq(loop_connect_accepted_socket(tt.loop, &ops, &r, sv[0], &f), -EINVAL);
        half.buffer_updated = NULL;
        ck_assert_int_eq(loop_connect_accepted_socket(tt.loop, &half, &r, sv[0], &f), -EINVAL);
        half = buf_ops;
        half.get_buffer = NULL;
        ck_assert_int_eq(loop_connect_accepted_socket(tt.loop, &half, &r, sv[0], &f), -EINVAL);
        ck_assert_ptr_eq(f, NULL);
        ck_assert_int_eq(fd_is_open(sv[0]), 1);
        tu_run_for(tt.loop, 10 * TU_MSEC);
        rec_assert_nothing(&r);

        /* Only connection_made within size: data dropped, EOF closes (as
         * a NULL eof_received), no connection_lost. */
        ops = rec_ops;
        ops.size = offsetof(struct loop_protocol_ops, connection_made) + sizeof(ops.connection_made);
        t = wrap_socket(&tt, &ops, &r, sv[0]);
        /* set_protocol checks the table as well. */
        ck_assert_int_eq(loop_transport_set_protocol(t, &half, &r), -EINVAL);
        half.size = 0;
        ck_assert_int_eq(loop_transport_set_protocol(t, &half, &r), -EINVAL);
        ck_assert_int_eq(write(sv[1], "dropped", 7), 7);
        ck_assert_int_eq(shutdown(sv[1], SHUT_WR), 0);
        assert_peer_eof(tt.loop, sv[1]);
        RUN_UNTIL(tt.loop, loop_transport_get_fd(t) == -EBADF);
        tu_run_for(tt.loop, 20 * TU_MSEC);
        EVENTS(&r, EV_MADE);
        ck_assert_int_eq(r.data, 0);
        ck_assert_int_eq(loop_transport_is_closing(t), 1);
        ck_assert_int_eq(fd_is_open(sv[0]), 0);
        sv[0] = -1;
        tu_close_pair(sv);
        rec_free(&r);
        tt_end(&tt, 0);
}
END_TEST

/* set_protocol: the new callbacks get what comes next. */
START_TEST(test_set_protocol) {
        struct tt tt;
        struct rec r1, r2;
        int sv[2];
        loop_transport_t *t;

        tt_begin(&tt);
        rec_init(&r1);
        rec_init(&r2);
        tu_socketpair(sv);
        t = wrap_socket(&tt, &rec_ops, &r1, sv[0]);
        ck_assert_int_eq(write(sv[1], "one", 3), 3);
        RUN_UNTIL(tt.loop, r1.nin == 3);
        ck_assert_int_eq(loop_transport_set_protocol(t, &rec_ops, &r2), 0);
        assert_protocol(t, &rec_ops, &r2);
        /* r2 never sees connection_made (asyncio's set_protocol). */
        r2.made = 1;
        r2.tp = t;
        r2.t = loop_transport_ref(t);
        r2.ev[r2.nev++] = EV_MADE;
        ck_assert_int_eq(write(sv[1], "two", 3), 3);
        RUN_UNTIL(tt.loop, r2.nin == 3);
        ck_assert_mem_eq(r2.in, "two", 3);
        ck_assert_int_eq(tt_close(t), 0);
        RUN_UNTIL(tt.loop, r2.lost);
        EVENTS(&r1, EV_MADE, EV_DATA);
        EVENTS(&r2, EV_MADE, EV_DATA, EV_LOST);
        ck_assert_uint_eq(r1.nin, 3);
        sv[0] = -1;
        tu_close_pair(sv);
        rec_free(&r1);
        rec_free(&r2);
        tt_end(&tt, 0);
}
END_TEST

START_TEST(test_writev) {
        struct tt tt;
        struct rec r;
        struct loop_iovec iov[4] = {{"ab", 2}, {NULL, 0}, {"", 0}, {"cdef", 4}};
        char buf[16];
        int sv[2];
        loop_transport_t *t;

        tt_begin(&tt);
        rec_init(&r);
        tu_socketpair(sv);
        t = wrap_socket(&tt, &rec_ops, &r, sv[0]);
        ck_assert_int_eq(tt_writev(t, iov, 0), 0);
        ck_assert_int_eq(tt_writev(t, iov, 4), 0);
        ck_assert_int_eq(tt_write(t, "g", 1), 0);
        RUN_UNTIL(tt.loop, loop_transport_get_write_buffer_size(t) == 0);
        ck_assert_int_eq(read(sv[1], buf, sizeof(buf)), 7);
        ck_assert_mem_eq(buf, "abcdefg", 7);
        ck_assert_int_eq(tt_close(t), 0);
        RUN_UNTIL(tt.loop, r.lost);
        EVENTS(&r, EV_MADE, EV_LOST);
        sv[0] = -1;
        tu_close_pair(sv);
        rec_free(&r);
        tt_end(&tt, 0);
}
END_TEST

/* ---- connecting ------------------------------------------------------- */

START_TEST(test_connect_refused) {
        struct tt tt;
        struct rec c;
        struct sockaddr_in sin = {.sin_family = AF_INET};
        loop_future_t *f = NULL;
        char port[16];
        void *p = NULL;
        int bfd;

        tt_begin(&tt);
        rec_init(&c);
        /* Bound, not listening: the port is ours and nobody accepts. */
        bfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        ck_assert_int_ge(bfd, 0);
        sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        ck_assert_int_eq(bind(bfd, (struct sockaddr *) &sin, sizeof(sin)), 0);
        snprintf(port, sizeof(port), "%u", (unsigned) port_of_fd(bfd));
        ck_assert_int_eq(loop_create_connection(tt.loop, &rec_ops, &c, "127.0.0.1", port, NULL, &f), 0);
        wait_done(tt.loop, f);
        ck_assert_int_eq(loop_future_error(f), -ECONNREFUSED);
        ck_assert_int_eq(loop_future_result(f, &p), -ECONNREFUSED);
        tu_run_for(tt.loop, 20 * TU_MSEC);
        rec_assert_nothing(&c);
        loop_future_unref(f);
        ck_assert_int_eq(close(bfd), 0);
        tt_end(&tt, 0);
}
END_TEST

/* Cancelled after _i iterations: if the cancel took, nothing is called on
 * the protocol and the socket is closed; else the connection is there. */
START_TEST(test_cancel_connect) {
        struct tt tt;
        struct rec c;
        loop_future_t *f = NULL, *g = NULL;
        char port[16];
        int lfd, fds_mid, cancelled, afd;

        tt_begin(&tt);
        rec_init(&c);
        lfd = raw_listener(port);
        /* The resolver's first use may set up what stays (warm it up). */
        ck_assert_int_eq(loop_getaddrinfo(tt.loop, "127.0.0.1", port, NULL, &g), 0);
        wait_done(tt.loop, g);
        loop_future_unref(g);
        fds_mid = tu_count_fds();

        ck_assert_int_eq(loop_create_connection(tt.loop, &rec_ops, &c, "127.0.0.1", port, NULL, &f), 0);
        for (int k = 0; k < _i; k++)
                ck_assert_int_ge(loop_run_once(tt.loop, _i > 3 ? TU_MSEC : 0), 0);
        cancelled = loop_future_cancel(f);
        if (_i == 0)
                ck_assert_int_eq(cancelled, 1);
        tu_run_for(tt.loop, 100 * TU_MSEC);
        if (cancelled) {
                ck_assert_int_eq(loop_future_cancelled(f), 1);
                rec_assert_nothing(&c);
                if (fds_mid >= 0)
                        ck_assert_msg(tu_count_fds() == fds_mid, "descriptors: %d before the connection, %d after",
                                      fds_mid, tu_count_fds());
        } else {
                ck_assert_int_eq(c.made, 1);
                ck_assert_ptr_eq(result_of(f), c.tp);
                ck_assert_int_eq(tt_close(c.t), 0);
                RUN_UNTIL(tt.loop, c.lost);
                EVENTS(&c, EV_MADE, EV_LOST);
        }
        /* What the kernel queued on the listener. */
        while ((afd = accept_cloexec(lfd, 0)) >= 0)
                ck_assert_int_eq(close(afd), 0);
        loop_future_unref(f);
        ck_assert_int_eq(close(lfd), 0);
        rec_free(&c);
        tt_end(&tt, 0);
}
END_TEST

/* A name that does not resolve: the resolver's error, no callbacks. */
START_TEST(test_connect_bad_name) {
        struct tt tt;
        struct rec c;
        loop_future_t *f = NULL;

        tt_begin(&tt);
        rec_init(&c);
        ck_assert_int_eq(loop_create_connection(tt.loop, &rec_ops, &c, "127.0.0.1", "no-such-service-name-x", NULL, &f),
                         0);
        wait_done(tt.loop, f);
        ck_assert_int_lt(loop_future_error(f), 0);
        rec_assert_nothing(&c);
        loop_future_unref(f);
        tt_end(&tt, 0);
}
END_TEST

START_TEST(test_accepted_socket) {
        struct tt tt;
        struct rec r;
        char buf[8];
        int sv[2];
        loop_transport_t *t;

        tt_begin(&tt);
        rec_init(&r);
        ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);       /* blocking */
        tu_set_nonblock(sv[1]);
        /* Already there: still connection_made first, then the data. */
        ck_assert_int_eq(write(sv[1], "early", 5), 5);
        t = wrap_socket(&tt, &rec_ops, &r, sv[0]);
        ck_assert_int_eq(loop_transport_get_fd(t), sv[0]);
#ifndef _WIN32 /* winsock cannot tell whether a socket is non-blocking */
        ck_assert_int_ne(fcntl(sv[0], F_GETFL) & O_NONBLOCK, 0);
#endif
        RUN_UNTIL(tt.loop, r.nin == 5);
        ck_assert_mem_eq(r.in, "early", 5);
        ck_assert_int_eq(tt_write(t, "reply", 5), 0);
        RUN_UNTIL(tt.loop, loop_transport_get_write_buffer_size(t) == 0);
        ck_assert_int_eq(read(sv[1], buf, sizeof(buf)), 5);
        ck_assert_mem_eq(buf, "reply", 5);
        ck_assert_int_eq(tt_close(t), 0);
        RUN_UNTIL(tt.loop, r.lost);
        EVENTS(&r, EV_MADE, EV_DATA, EV_LOST);
        ck_assert_int_eq(r.lost_error, 0);
        assert_peer_eof(tt.loop, sv[1]);
        /* The transport owned the fd: closed. */
        ck_assert_int_eq(fd_is_open(sv[0]), 0);
        sv[0] = -1;
        tu_close_pair(sv);
        rec_free(&r);
        tt_end(&tt, 0);
}
END_TEST

START_TEST(test_accepted_errors) {
        struct tt tt;
        struct rec r;
        loop_future_t *f = NULL;
        int p[2], sv[2], was, u, d[2];

        tt_begin(&tt);
        rec_init(&r);
#ifdef _WIN32
        /* A descriptor is a handle there (loop.h): a pipe's ends are open
         * handles that are no sockets, and stay the caller's. */
        {
                HANDLE h[2];
                DWORD flags;

                (void) p;
                ck_assert(CreatePipe(&h[0], &h[1], NULL, 0));
                for (int i = 0; i < 2; i++) {
                        ck_assert_int_eq(loop_connect_accepted_socket(tt.loop, &rec_ops, &r, (int) (intptr_t) h[i], &f),
                                         -ENOTSOCK);
                        ck_assert(GetHandleInformation(h[i], &flags));
                        ck_assert(CloseHandle(h[i]));
                }
        }
#else
        tu_pipe(p);
        ck_assert_int_eq(loop_connect_accepted_socket(tt.loop, &rec_ops, &r, p[0], &f), -ENOTSOCK);
        ck_assert_int_eq(loop_connect_accepted_socket(tt.loop, &rec_ops, &r, p[1], &f), -ENOTSOCK);
        ck_assert_int_eq(fd_is_open(p[0]), 1);
        ck_assert_int_eq(fd_is_open(p[1]), 1);
        tu_close_pair(p);
#endif

        tu_socketpair(sv);
        was = sv[0];
        tu_close_pair(sv);
        ck_assert_int_eq(loop_connect_accepted_socket(tt.loop, &rec_ops, &r, was, &f), -EBADF);

        u = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        ck_assert_int_ge(u, 0);
        ck_assert_int_eq(loop_connect_accepted_socket(tt.loop, &rec_ops, &r, u, &f), -EINVAL);
        ck_assert_int_eq(fd_is_open(u), 1);
        ck_assert_int_eq(close(u), 0);
        ck_assert_int_eq(socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, d), 0);
        ck_assert_int_eq(loop_connect_accepted_socket(tt.loop, &rec_ops, &r, d[0], &f), -EINVAL);
        ck_assert_int_eq(fd_is_open(d[0]), 1);
        tu_close_pair(d);

        ck_assert_ptr_eq(f, NULL);
        tu_run_for(tt.loop, 10 * TU_MSEC);
        rec_assert_nothing(&r);
        tu_assert_usable(tt.loop);
        tt_end(&tt, 0);
}
END_TEST

/* ---- AF_UNIX ---------------------------------------------------------- */

#ifdef _WIN32
START_TEST(test_unix) {
        TU_SKIP_ON_WINDOWS("AF_UNIX path sockets (loop_create_unix_server and loop_create_unix_connection "
                           "say -EOPNOTSUPP there: test_unix_errors checks that)");
}
END_TEST

/* No Unix-domain sockets on Windows: -EOPNOTSUPP, and nothing is called
 * or opened. */
START_TEST(test_unix_errors) {
        struct tt tt;
        struct srv v;
        struct rec c;
        loop_future_t *f = NULL;

        tt_begin(&tt);
        srv_init(&v);
        rec_init(&c);
        ck_assert_int_eq(loop_create_unix_server(tt.loop, srv_factory, &v, "libloop-tt-sock", NULL, &f), -EOPNOTSUPP);
        ck_assert_int_eq(loop_create_unix_connection(tt.loop, &rec_ops, &c, "libloop-tt-sock", &f), -EOPNOTSUPP);
        ck_assert_ptr_eq(f, NULL);
        tu_run_for(tt.loop, 10 * TU_MSEC);
        rec_assert_nothing(&c);
        ck_assert_int_eq(v.factory_calls, 0);
        rec_free(&c);
        srv_free(&v);
        tt_end(&tt, 0);
}
END_TEST
#else
/* A temporary directory and the socket path in it. */
struct tmp_path {
        char dir[64];
        char path[96];
};

static void tmp_path_init(struct tmp_path *tp) {
        snprintf(tp->dir, sizeof(tp->dir), "/tmp/libloop-tt-XXXXXX");
        ck_assert_ptr_ne(mkdtemp(tp->dir), NULL);
        snprintf(tp->path, sizeof(tp->path), "%s/sock", tp->dir);
}

static void tmp_path_free(struct tmp_path *tp) {
        unlink(tp->path);
        ck_assert_int_eq(rmdir(tp->dir), 0);
}

START_TEST(test_unix) {
        struct tt tt;
        struct srv v;
        struct rec c;
        struct tmp_path tp;
        struct sockaddr_un sun = {.sun_family = AF_UNIX};
        struct stat st;
        loop_future_t *f = NULL;
        loop_server_t *s;
        loop_transport_t *t;
        int fd, fds[2];

        tt_begin(&tt);
        srv_init(&v);
        v.echo = 1;
        rec_init(&c);
        tmp_path_init(&tp);
        /* A stale socket file: bound, then closed. */
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        ck_assert_int_ge(fd, 0);
        snprintf(sun.sun_path, sizeof(sun.sun_path), "%s", tp.path);
        ck_assert_int_eq(bind(fd, (struct sockaddr *) &sun, sizeof(sun)), 0);
        ck_assert_int_eq(close(fd), 0);
        ck_assert_int_eq(stat(tp.path, &st), 0);
        ck_assert(S_ISSOCK(st.st_mode));

        ck_assert_int_eq(loop_create_unix_server(tt.loop, srv_factory, &v, tp.path, NULL, &f), 0);
        wait_done(tt.loop, f);
        s = loop_server_ref(result_of(f));
        loop_future_unref(f);
        v.server = s;
        ck_assert_int_eq(loop_server_get_fds(s, fds, 2), 1);
        ck_assert_int_eq(loop_server_is_serving(s), 1);
        ck_assert_int_eq(stat(tp.path, &st), 0);
        ck_assert(S_ISSOCK(st.st_mode));

        f = NULL;
        g_in_call++;
        ck_assert_int_eq(loop_create_unix_connection(tt.loop, &rec_ops, &c, tp.path, &f), 0);
        g_in_call--;
        ck_assert_int_eq(c.made, 0);
        t = take_transport(&tt, &c, f);
        ck_assert_int_eq(tt_write(t, "over unix", 9), 0);
        ck_assert_int_eq(tt_write_eof(t), 0);
        RUN_UNTIL(tt.loop, c.lost && v.conn[0].lost);
        ck_assert_uint_eq(c.nin, 9);
        ck_assert_mem_eq(c.in, "over unix", 9);
        EVENTS(&c, EV_MADE, EV_DATA, EV_EOF, EV_LOST);
        EVENTS(&v.conn[0], EV_MADE, EV_DATA, EV_EOF, EV_LOST);

        /* The file goes with the server. */
        ck_assert_int_eq(loop_server_close(s), 0);
        ck_assert_int_eq(stat(tp.path, &st), -1);
        ck_assert_int_eq(errno, ENOENT);
        ck_assert_int_eq(loop_server_get_fds(s, fds, 2), 0);
        finish_server(&tt, s);
        tmp_path_free(&tp);
        rec_free(&c);
        srv_free(&v);
        tt_end(&tt, 0);
}
END_TEST

/* Only a stale socket file is removed (asyncio's rule): a regular file at
 * the path stays and the server fails. A missing path: connect fails. */
START_TEST(test_unix_errors) {
        struct tt tt;
        struct srv v;
        struct rec c;
        struct tmp_path tp;
        struct stat st;
        loop_future_t *f = NULL;
        int fd, r;

        tt_begin(&tt);
        srv_init(&v);
        rec_init(&c);
        tmp_path_init(&tp);
        fd = open(tp.path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        ck_assert_int_ge(fd, 0);
        ck_assert_int_eq(close(fd), 0);
        r = loop_create_unix_server(tt.loop, srv_factory, &v, tp.path, NULL, &f);
        if (r == 0) {
                wait_done(tt.loop, f);
                r = loop_future_error(f);
                loop_future_unref(f);
                f = NULL;
        }
        ck_assert_msg(r < 0, "a server over a regular file");
        ck_assert_int_eq(stat(tp.path, &st), 0);
        ck_assert(S_ISREG(st.st_mode));
        ck_assert_int_eq(unlink(tp.path), 0);

        r = loop_create_unix_connection(tt.loop, &rec_ops, &c, tp.path, &f);
        if (r == 0) {
                wait_done(tt.loop, f);
                r = loop_future_error(f);
                loop_future_unref(f);
        }
        ck_assert_int_eq(r, -ENOENT);
        tu_run_for(tt.loop, 10 * TU_MSEC);
        rec_assert_nothing(&c);
        ck_assert_int_eq(v.factory_calls, 0);
        tmp_path_free(&tp);
        rec_free(&c);
        srv_free(&v);
        tt_end(&tt, 0);
}
END_TEST
#endif /* _WIN32 */

/* ---- servers ----------------------------------------------------------- */

START_TEST(test_factory_error) {
        struct tt tt;
        struct srv v;
        struct rec c1, c2;
        char port[16];
        loop_server_t *s;
        loop_transport_t *t2;

        tt_begin(&tt);
        srv_init(&v);
        v.echo = 1;
        v.fail_next = -ENOMEM;
        rec_init(&c1);
        rec_init(&c2);
        s = start_server(&tt, &v, NULL, port);
        connect_tcp(&tt, &c1, port);
        /* The server closes the connection it could not make a protocol for. */
        RUN_UNTIL(tt.loop, c1.lost);
        ck_assert_int_eq(v.factory_calls, 1);
        ck_assert_int_eq(v.nconn, 0);
        ck_assert_int_eq(tt.nexc, 1);
        ck_assert_int_eq(tt.exc_error[0], -ENOMEM);
        ck_assert_int_eq(c1.data, 0);
        ck_assert_int_le(c1.lost_error, 0);
        ck_assert_uint_eq(loop_server_get_connections(s), 0);
        ck_assert_int_eq(loop_server_is_serving(s), 1);

        /* It keeps serving. */
        t2 = connect_tcp(&tt, &c2, port);
        RUN_UNTIL(tt.loop, v.nconn == 1 && v.conn[0].made);
        ck_assert_uint_eq(loop_server_get_connections(s), 1);
        ck_assert_int_eq(tt_write(t2, "again", 5), 0);
        RUN_UNTIL(tt.loop, c2.nin == 5);
        ck_assert_mem_eq(c2.in, "again", 5);
        ck_assert_int_eq(tt_write_eof(t2), 0);
        RUN_UNTIL(tt.loop, c2.lost && v.conn[0].lost);
        EVENTS(&c2, EV_MADE, EV_DATA, EV_EOF, EV_LOST);
        finish_server(&tt, s);
        rec_assert_sane(&c1);
        rec_free(&c1);
        rec_free(&c2);
        srv_free(&v);
        tt_end(&tt, 1);
}
END_TEST

/* wait_closed waits for close() and for every connection: close() first,
 * then close_clients (_i = 0) or abort_clients (_i = 1). */
START_TEST(test_wait_closed_clients) {
        struct tt tt;
        struct srv v;
        struct rec c[2], late;
        char port[16];
        int fds[2];
        void *p = (void *) 1;
        loop_future_t *w = NULL, *w2 = NULL, *f = NULL;
        loop_server_t *s;
        loop_transport_t *t0;

        tt_begin(&tt);
        srv_init(&v);
        v.echo = 1;
        rec_init(&c[0]);
        rec_init(&c[1]);
        rec_init(&late);
        s = start_server(&tt, &v, NULL, port);
        t0 = connect_tcp(&tt, &c[0], port);
        connect_tcp(&tt, &c[1], port);
        RUN_UNTIL(tt.loop, v.nconn == 2 && v.conn[0].made && v.conn[1].made);
        ck_assert_uint_eq(loop_server_get_connections(s), 2);

        ck_assert_int_eq(loop_server_wait_closed(s, &w), 0);
        tu_run_for(tt.loop, 10 * TU_MSEC);
        ck_assert_int_eq(loop_future_done(w), 0);

        /* close(): no more accepting, the connections go on. */
        ck_assert_int_eq(loop_server_close(s), 0);
        ck_assert_int_eq(loop_server_is_serving(s), 0);
        ck_assert_int_eq(loop_server_get_fds(s, fds, 2), 0);
        ck_assert_int_eq(loop_server_close(s), 0);
        tu_run_for(tt.loop, 10 * TU_MSEC);
        ck_assert_int_eq(loop_future_done(w), 0);
        ck_assert_uint_eq(loop_server_get_connections(s), 2);
        ck_assert_int_eq(tt_write(t0, "still", 5), 0);
        RUN_UNTIL(tt.loop, c[0].nin == 5);
        ck_assert_int_eq(loop_create_connection(tt.loop, &rec_ops, &late, "127.0.0.1", port, NULL, &f), 0);
        wait_done(tt.loop, f);
        ck_assert_int_eq(loop_future_error(f), -ECONNREFUSED);
        loop_future_unref(f);
        ck_assert_int_eq(v.factory_calls, 2);

        g_in_call++;
        ck_assert_int_eq(_i ? loop_server_abort_clients(s) : loop_server_close_clients(s), 0);
        g_in_call--;
        ck_assert_int_eq(v.conn[0].lost + v.conn[1].lost, 0);
        ck_assert_int_eq(loop_future_done(w), 0);
        RUN_UNTIL(tt.loop, v.conn[0].lost && v.conn[1].lost && c[0].lost && c[1].lost);
        for (int i = 0; i < 2; i++) {
                ck_assert_int_eq(v.conn[i].lost_error, 0);
                ck_assert_int_eq(v.conn[i].ev[v.conn[i].nev - 1], EV_LOST);
                ck_assert_int_eq(c[i].ev[c[i].nev - 1], EV_LOST);
                rec_assert_sane(&c[i]);
        }
        RUN_UNTIL(tt.loop, loop_future_done(w));
        ck_assert_int_eq(loop_future_result(w, &p), 0);
        ck_assert_ptr_eq(p, NULL);
        ck_assert_uint_eq(loop_server_get_connections(s), 0);
        /* Already closed: done at once. */
        ck_assert_int_eq(loop_server_wait_closed(s, &w2), 0);
        ck_assert_int_eq(loop_future_done(w2), 1);
        loop_future_unref(w2);
        loop_future_unref(w);
        ck_assert_ptr_eq(loop_server_unref(s), NULL);
        rec_assert_nothing(&late);
        rec_free(&c[0]);
        rec_free(&c[1]);
        rec_free(&late);
        srv_free(&v);
        tt_end(&tt, -1);        /* an abort may be reported as a reset */
}
END_TEST

/* The connections end first: wait_closed still waits for close(). */
START_TEST(test_wait_closed_order) {
        struct tt tt;
        struct srv v;
        struct rec c;
        char port[16];
        loop_future_t *w = NULL;
        loop_server_t *s;
        loop_transport_t *t;

        tt_begin(&tt);
        srv_init(&v);
        rec_init(&c);
        s = start_server(&tt, &v, NULL, port);
        t = connect_tcp(&tt, &c, port);
        RUN_UNTIL(tt.loop, v.conn[0].made);
        ck_assert_int_eq(loop_server_wait_closed(s, &w), 0);
        ck_assert_int_eq(tt_close(t), 0);
        RUN_UNTIL(tt.loop, c.lost && v.conn[0].lost);
        ck_assert_uint_eq(loop_server_get_connections(s), 0);
        tu_run_for(tt.loop, 10 * TU_MSEC);
        ck_assert_int_eq(loop_future_done(w), 0);
        ck_assert_int_eq(loop_server_is_serving(s), 1);
        ck_assert_int_eq(loop_server_close(s), 0);
        RUN_UNTIL(tt.loop, loop_future_done(w));
        ck_assert_int_eq(loop_future_error(w), 0);
        loop_future_unref(w);
        ck_assert_ptr_eq(loop_server_unref(s), NULL);
        rec_free(&c);
        srv_free(&v);
        tt_end(&tt, 0);
}
END_TEST

/* loop_server_new over a listening socket of the caller's: the server
 * owns it; and defer_serving with start_serving. */
START_TEST(test_server_new) {
        struct tt tt;
        struct srv v;
        struct rec c;
        struct loop_server_options o = {.size = sizeof(o), .defer_serving = 1};
        char port[16];
        int lfd, got;
        loop_server_t *s = NULL;
        loop_transport_t *t;

        tt_begin(&tt);
        srv_init(&v);
        v.echo = 1;
        rec_init(&c);
        lfd = raw_listener(port);
        ck_assert_int_eq(loop_server_new(tt.loop, srv_factory, &v, &lfd, 1, &o, &s), 0);
        ck_assert_ptr_ne(s, NULL);
        v.server = s;
        ck_assert_int_eq(loop_server_is_serving(s), 0);
        ck_assert_int_eq(loop_server_get_fds(s, &got, 1), 1);
        ck_assert_int_eq(got, lfd);
        ck_assert_int_eq(loop_server_start_serving(s), 0);
        ck_assert_int_eq(loop_server_is_serving(s), 1);
        ck_assert_int_eq(loop_server_start_serving(s), 0);
        t = connect_tcp(&tt, &c, port);
        ck_assert_int_eq(tt_write(t, "new", 3), 0);
        ck_assert_int_eq(tt_write_eof(t), 0);
        RUN_UNTIL(tt.loop, c.lost && v.nconn == 1 && v.conn[0].lost);
        ck_assert_uint_eq(c.nin, 3);
        ck_assert_mem_eq(c.in, "new", 3);
        finish_server(&tt, s);
        ck_assert_int_eq(fd_is_open(lfd), 0);
        rec_free(&c);
        srv_free(&v);
        tt_end(&tt, 0);
}
END_TEST

#ifndef _WIN32
/* The lowest descriptor number free now: with RLIMIT_NOFILE there, no
 * descriptor can be opened (the limit bounds the numbers). */
static int lowest_free_fd(void) {
        int fd = dup(0);

        ck_assert_int_ge(fd, 0);
        ck_assert_int_eq(close(fd), 0);
        return fd;
}
#endif

/* Out of descriptors (RLIMIT_NOFILE): the exception handler hears -EMFILE,
 * the listener stays, and accepting resumes (after asyncio's 1 s). */
START_TEST(test_accept_emfile) {
#ifdef _WIN32
        TU_SKIP_ON_WINDOWS("RLIMIT_NOFILE (winsock has no per-process descriptor limit to run out of)");
#else
        struct tt tt;
        struct srv v;
        char port[16];
        struct sockaddr_in sin = {.sin_family = AF_INET};
        struct rlimit saved, low;
        loop_server_t *s;
        int cfd, cfd2, nexc, nconn;
        int64_t deadline;

        tt_begin(&tt);
        srv_init(&v);
        s = start_server(&tt, &v, NULL, port);
        /* A raw client, connected through the backlog before any accept. */
        cfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        ck_assert_int_ge(cfd, 0);
        sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        sin.sin_port = htons((uint16_t) atoi(port));
        ck_assert_int_eq(connect(cfd, (struct sockaddr *) &sin, sizeof(sin)), 0);
        ck_assert_int_eq(getrlimit(RLIMIT_NOFILE, &saved), 0);
        low = saved;
        low.rlim_cur = (rlim_t) lowest_free_fd();
        ck_assert_int_eq(setrlimit(RLIMIT_NOFILE, &low), 0);
        /* No assertion until the limit is back. */
        deadline = tu_now_ns() + 5 * TU_SEC;
        while (tt.nexc == 0 && tu_now_ns() < deadline && loop_run_once(tt.loop, 10 * TU_MSEC) >= 0)
                ;
        nexc = tt.nexc;
        nconn = v.nconn;
        ck_assert_int_eq(setrlimit(RLIMIT_NOFILE, &saved), 0);
        ck_assert_int_ge(nexc, 1);
        ck_assert_int_eq(tt.exc_error[0], -EMFILE);
        ck_assert_int_eq(nconn, 0);
        ck_assert_int_eq(loop_server_is_serving(s), 1);
        ck_assert_int_eq(loop_server_get_fds(s, NULL, 0), 1);

        /* A second client: accepted once accepting is back. (The first
         * one too, normally; under valgrind, whose RLIMIT_NOFILE is its
         * own, the kernel accepted it and valgrind closed it.) */
        cfd2 = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        ck_assert_int_ge(cfd2, 0);
        ck_assert_int_eq(connect(cfd2, (struct sockaddr *) &sin, sizeof(sin)), 0);
        ck_assert_int_eq(write(cfd2, "hi", 2), 2);
        RUN_UNTIL(tt.loop, v.nconn >= 1 && v.conn[v.nconn - 1].nin == 2);
        ck_assert_mem_eq(v.conn[v.nconn - 1].in, "hi", 2);
        ck_assert_int_eq(close(cfd), 0);
        ck_assert_int_eq(close(cfd2), 0);
        RUN_UNTIL(tt.loop, v.conn[0].lost && v.conn[v.nconn - 1].lost);
        EVENTS(&v.conn[v.nconn - 1], EV_MADE, EV_DATA, EV_EOF, EV_LOST);
        finish_server(&tt, s);
        for (int i = 0; i < tt.nexc && i < MAX_EXC; i++)
                ck_assert_int_eq(tt.exc_error[i], -EMFILE);
        srv_free(&v);
        tt_end(&tt, -1);
#endif
}
END_TEST

/* host NULL: every interface, one socket per address; AF_INET6 ones are
 * IPV6_V6ONLY and SO_REUSEADDR is on (asyncio's defaults on POSIX). */
START_TEST(test_server_all_interfaces) {
        struct tt tt;
        struct srv v;
        struct rec c;
        loop_future_t *f = NULL;
        loop_server_t *s;
        int fds[8], n, inet = -1;
        char port[16];

        tt_begin(&tt);
        srv_init(&v);
        rec_init(&c);
        ck_assert_int_eq(loop_create_server(tt.loop, srv_factory, &v, NULL, "0", NULL, &f), 0);
        wait_done(tt.loop, f);
        s = loop_server_ref(result_of(f));
        loop_future_unref(f);
        v.server = s;
        n = loop_server_get_fds(s, fds, 8);
        ck_assert_int_ge(n, 1);
        ck_assert_int_le(n, 8);
        for (int i = 0; i < n; i++) {
                struct sockaddr_storage ss;
                socklen_t len = sizeof(ss);
                int on = 0;
                socklen_t olen = sizeof(on);

                ck_assert_int_eq(getsockname(fds[i], (struct sockaddr *) &ss, &len), 0);
                ck_assert_int_eq(getsockopt(fds[i], SOL_SOCKET, SO_ACCEPTCONN, (void *) &on, &olen), 0);
                ck_assert_int_eq(on, 1);
                ck_assert_int_eq(getsockopt(fds[i], SOL_SOCKET, SO_REUSEADDR, (void *) &on, &olen), 0);
#ifdef _WIN32
                /* Off by default there, as asyncio: on Windows SO_REUSEADDR
                 * lets another socket take a port that is in use. */
                ck_assert_int_eq(on, 0);
#else
                ck_assert_int_ne(on, 0);
#endif
                if (ss.ss_family == AF_INET6) {
                        ck_assert_int_eq(getsockopt(fds[i], IPPROTO_IPV6, IPV6_V6ONLY, (void *) &on, &olen), 0);
                        ck_assert_int_eq(on, 1);
                } else {
                        const struct sockaddr_in *sin = (const struct sockaddr_in *) &ss;

                        ck_assert_int_eq(ss.ss_family, AF_INET);
                        ck_assert_uint_eq(ntohl(sin->sin_addr.s_addr), INADDR_ANY);
                        inet = i;
                }
        }
        ck_assert_msg(inet >= 0, "no AF_INET listener among %d", n);
        {
                struct sockaddr_in sin;
                socklen_t len = sizeof(sin);

                ck_assert_int_eq(getsockname(fds[inet], (struct sockaddr *) &sin, &len), 0);
                snprintf(port, sizeof(port), "%u", (unsigned) ntohs(sin.sin_port));
        }
        connect_tcp(&tt, &c, port);
        RUN_UNTIL(tt.loop, v.nconn == 1 && v.conn[0].made);
        ck_assert_int_eq(tt_close(c.t), 0);
        RUN_UNTIL(tt.loop, c.lost && v.conn[0].lost);
        finish_server(&tt, s);
        rec_free(&c);
        srv_free(&v);
        tt_end(&tt, 0);
}
END_TEST

/* ---- loop_close with open transports ---------------------------------- */

START_TEST(test_loop_close_transport) {
        struct tt tt;
        struct rec r;
        int sv[2];
        loop_transport_t *t;

        tt_begin(&tt);
        rec_init(&r);
        tu_socketpair(sv);
        t = wrap_socket(&tt, &rec_ops, &r, sv[0]);
        /* With writes buffered too. */
        tu_fill(sv[0]);
        ck_assert_int_eq(tt_write(t, "pending", 7), 0);
        ck_assert_int_eq(loop_close(tt.loop), 0);
        /* Within loop_close. */
        ck_assert_int_eq(r.lost, 1);
        ck_assert_int_eq(r.lost_error, -ECANCELED);
        EVENTS(&r, EV_MADE, EV_LOST);
        ck_assert_int_eq(fd_is_open(sv[0]), 0);
        ck_assert_int_eq(loop_transport_get_fd(t), -EBADF);
        ck_assert_int_eq(loop_transport_is_closing(t), 1);
        {
                int w = tt_write(t, "x", 1);
                ck_assert_msg(w == -EPIPE || w == -ESHUTDOWN, "write after loop_close: %s", loop_strerror(w));
        }
        {
                int c = tt_close(t);
                ck_assert_msg(c == 0 || c == -ESHUTDOWN, "close after loop_close: %s", loop_strerror(c));
        }
        ck_assert_int_eq(r.lost, 1);
        tu_drain(sv[1]);
        ck_assert_int_eq(read(sv[1], (char[4]){0}, 4), 0);
        sv[0] = -1;
        tu_close_pair(sv);
        rec_free(&r);
        tt_end(&tt, 0);
}
END_TEST

START_TEST(test_loop_close_server) {
        struct tt tt;
        struct srv v;
        struct rec c;
        char port[16];
        loop_future_t *w = NULL;
        loop_server_t *s;

        tt_begin(&tt);
        srv_init(&v);
        rec_init(&c);
        s = start_server(&tt, &v, NULL, port);
        connect_tcp(&tt, &c, port);
        RUN_UNTIL(tt.loop, v.conn[0].made);
        ck_assert_int_eq(loop_server_wait_closed(s, &w), 0);
        ck_assert_int_eq(loop_close(tt.loop), 0);
        ck_assert_int_eq(c.lost, 1);
        ck_assert_int_eq(c.lost_error, -ECANCELED);
        ck_assert_int_eq(v.conn[0].lost, 1);
        ck_assert_int_eq(v.conn[0].lost_error, -ECANCELED);
        EVENTS(&c, EV_MADE, EV_LOST);
        EVENTS(&v.conn[0], EV_MADE, EV_LOST);
        loop_future_unref(w);
        ck_assert_ptr_eq(loop_server_unref(s), NULL);
        rec_free(&c);
        srv_free(&v);
        tt_end(&tt, 0);
}
END_TEST

/* ---- argument errors --------------------------------------------------- */

/* A path that cannot be created, should a call go ahead by mistake. */
#define BAD_PATH "/nonexistent/libloop-check-transport"

/* What loop_create_unix_* answer where POSIX answers e: on Windows they
 * say -EOPNOTSUPP whatever the arguments (no Unix-domain sockets there). */
#ifdef _WIN32
#define UNIX_ERR(e) (-EOPNOTSUPP)
#else
#define UNIX_ERR(e) (e)
#endif

/* NULL arguments to the calls that take a loop: -EINVAL, nothing taken. */
START_TEST(test_bad_args_loop) {
        struct tt tt;
        struct rec r;
        loop_future_t *f = NULL;
        loop_server_t *s = NULL;
        int sv[2], lfd;
        char port[16];

        tt_begin(&tt);
        rec_init(&r);
        tu_socketpair(sv);
        lfd = raw_listener(port);
        ck_assert_int_eq(loop_create_connection(NULL, &rec_ops, &r, "127.0.0.1", "9", NULL, &f), -EINVAL);
        ck_assert_int_eq(loop_create_connection(tt.loop, NULL, &r, "127.0.0.1", "9", NULL, &f), -EINVAL);
        ck_assert_int_eq(loop_create_connection(tt.loop, &rec_ops, &r, NULL, "9", NULL, &f), -EINVAL);
        ck_assert_int_eq(loop_create_connection(tt.loop, &rec_ops, &r, "127.0.0.1", NULL, NULL, &f), -EINVAL);
        ck_assert_int_eq(loop_create_connection(tt.loop, &rec_ops, &r, "127.0.0.1", "9", NULL, NULL), -EINVAL);
        ck_assert_int_eq(loop_create_unix_connection(NULL, &rec_ops, &r, BAD_PATH, &f), UNIX_ERR(-EINVAL));
        ck_assert_int_eq(loop_create_unix_connection(tt.loop, NULL, &r, BAD_PATH, &f), UNIX_ERR(-EINVAL));
        ck_assert_int_eq(loop_create_unix_connection(tt.loop, &rec_ops, &r, NULL, &f), UNIX_ERR(-EINVAL));
        ck_assert_int_eq(loop_create_unix_connection(tt.loop, &rec_ops, &r, BAD_PATH, NULL), UNIX_ERR(-EINVAL));
        ck_assert_int_eq(loop_connect_accepted_socket(NULL, &rec_ops, &r, sv[0], &f), -EINVAL);
        ck_assert_int_eq(loop_connect_accepted_socket(tt.loop, NULL, &r, sv[0], &f), -EINVAL);
        ck_assert_int_eq(loop_connect_accepted_socket(tt.loop, &rec_ops, &r, sv[0], NULL), -EINVAL);
        ck_assert_int_eq(loop_create_server(NULL, srv_factory, NULL, "127.0.0.1", "0", NULL, &f), -EINVAL);
        ck_assert_int_eq(loop_create_server(tt.loop, NULL, NULL, "127.0.0.1", "0", NULL, &f), -EINVAL);
        ck_assert_int_eq(loop_create_server(tt.loop, srv_factory, NULL, "127.0.0.1", "0", NULL, NULL), -EINVAL);
        ck_assert_int_eq(loop_create_unix_server(NULL, srv_factory, NULL, BAD_PATH, NULL, &f), UNIX_ERR(-EINVAL));
        ck_assert_int_eq(loop_create_unix_server(tt.loop, NULL, NULL, BAD_PATH, NULL, &f), UNIX_ERR(-EINVAL));
        ck_assert_int_eq(loop_create_unix_server(tt.loop, srv_factory, NULL, NULL, NULL, &f), UNIX_ERR(-EINVAL));
        ck_assert_int_eq(loop_create_unix_server(tt.loop, srv_factory, NULL, BAD_PATH, NULL, NULL), UNIX_ERR(-EINVAL));
        ck_assert_int_eq(loop_server_new(NULL, srv_factory, NULL, &lfd, 1, NULL, &s), -EINVAL);
        ck_assert_int_eq(loop_server_new(tt.loop, NULL, NULL, &lfd, 1, NULL, &s), -EINVAL);
        ck_assert_int_eq(loop_server_new(tt.loop, srv_factory, NULL, NULL, 1, NULL, &s), -EINVAL);
        ck_assert_int_eq(loop_server_new(tt.loop, srv_factory, NULL, &lfd, 1, NULL, NULL), -EINVAL);
        ck_assert_ptr_eq(f, NULL);
        ck_assert_ptr_eq(s, NULL);
        ck_assert_int_eq(fd_is_open(sv[0]), 1);
        ck_assert_int_eq(fd_is_open(lfd), 1);
        tu_run_for(tt.loop, 10 * TU_MSEC);
        rec_assert_nothing(&r);
        tu_assert_usable(tt.loop);
        ck_assert_int_eq(close(lfd), 0);
        tu_close_pair(sv);
        tt_end(&tt, 0);
}
END_TEST

/* NULL transport, and NULL pointers beside a live one: -EINVAL. */
START_TEST(test_bad_args_transport) {
        struct tt tt;
        struct rec r;
        size_t low, high;
        struct sockaddr_storage ss;
        socklen_t sl = sizeof(ss);
        struct loop_iovec bad = {NULL, 3};
        void *ud;
        int sv[2];
        loop_transport_t *t;

        tt_begin(&tt);
        rec_init(&r);
        tu_socketpair(sv);
        ck_assert_ptr_eq(loop_transport_ref(NULL), NULL);
        ck_assert_ptr_eq(loop_transport_unref(NULL), NULL);
        ck_assert_ptr_eq(loop_transport_get_loop(NULL), NULL);
        ck_assert_int_eq(loop_transport_get_fd(NULL), -EINVAL);
        ck_assert_int_eq(loop_transport_get_peername(NULL, (struct sockaddr *) &ss, &sl), -EINVAL);
        ck_assert_int_eq(loop_transport_get_sockname(NULL, (struct sockaddr *) &ss, &sl), -EINVAL);
        ck_assert_int_eq(loop_transport_set_protocol(NULL, &rec_ops, &r), -EINVAL);
        ck_assert_ptr_eq(loop_transport_get_protocol(NULL, &ud), NULL);
        ck_assert_int_eq(loop_transport_write(NULL, "x", 1), -EINVAL);
        ck_assert_int_eq(loop_transport_writev(NULL, &bad, 0), -EINVAL);
        ck_assert_int_eq(loop_transport_write_eof(NULL), -EINVAL);
        ck_assert_int_eq(loop_transport_can_write_eof(NULL), -EINVAL);
        ck_assert_int_eq(loop_transport_close(NULL), -EINVAL);
        ck_assert_int_eq(loop_transport_abort(NULL), -EINVAL);
        ck_assert_int_eq(loop_transport_is_closing(NULL), -EINVAL);
        ck_assert_int_eq(loop_transport_pause_reading(NULL), -EINVAL);
        ck_assert_int_eq(loop_transport_resume_reading(NULL), -EINVAL);
        ck_assert_int_eq(loop_transport_is_reading(NULL), -EINVAL);
        ck_assert_int_eq(loop_transport_set_write_buffer_limits(NULL, 10, 5), -EINVAL);
        ck_assert_int_eq(loop_transport_get_write_buffer_limits(NULL, &low, &high), -EINVAL);
        ck_assert_uint_eq(loop_transport_get_write_buffer_size(NULL), 0);

        t = wrap_socket(&tt, &rec_ops, &r, sv[0]);
        ck_assert_int_eq(loop_transport_write(t, NULL, 1), -EINVAL);
        ck_assert_int_eq(loop_transport_write(t, NULL, 0), 0);
        ck_assert_int_eq(loop_transport_writev(t, NULL, 1), -EINVAL);
        ck_assert_int_eq(loop_transport_writev(t, NULL, 0), 0);
        ck_assert_int_eq(loop_transport_writev(t, &bad, 1), -EINVAL);
        ck_assert_int_eq(loop_transport_set_protocol(t, NULL, &r), -EINVAL);
        ck_assert_int_eq(loop_transport_get_peername(t, NULL, &sl), -EINVAL);
        ck_assert_int_eq(loop_transport_get_peername(t, (struct sockaddr *) &ss, NULL), -EINVAL);
        ck_assert_int_eq(loop_transport_get_sockname(t, NULL, &sl), -EINVAL);
        ck_assert_int_eq(loop_transport_get_sockname(t, (struct sockaddr *) &ss, NULL), -EINVAL);
        /* loop_transport_write(3), ERRORS: "low, high, addr or addrlen is NULL". */
        ck_assert_int_eq(loop_transport_get_write_buffer_limits(t, NULL, &high), -EINVAL);
        ck_assert_int_eq(loop_transport_get_write_buffer_limits(t, &low, NULL), -EINVAL);
        ck_assert_uint_eq(loop_transport_get_write_buffer_size(t), 0);
        tu_run_for(tt.loop, 10 * TU_MSEC);
        ck_assert_uint_eq(tu_drain(sv[1]), 0);  /* nothing was written */
        ck_assert_int_eq(tt_close(t), 0);
        RUN_UNTIL(tt.loop, r.lost);
        EVENTS(&r, EV_MADE, EV_LOST);
        sv[0] = -1;
        tu_close_pair(sv);
        rec_free(&r);
        tt_end(&tt, 0);
}
END_TEST

/* NULL server, and NULL pointers beside a live one: -EINVAL. */
START_TEST(test_bad_args_server) {
        struct tt tt;
        loop_future_t *f = NULL;
        loop_server_t *s = NULL;
        int lfd, fds[2];
        char port[16];

        tt_begin(&tt);
        ck_assert_ptr_eq(loop_server_ref(NULL), NULL);
        ck_assert_ptr_eq(loop_server_unref(NULL), NULL);
        ck_assert_ptr_eq(loop_server_get_loop(NULL), NULL);
        ck_assert_int_eq(loop_server_start_serving(NULL), -EINVAL);
        ck_assert_int_eq(loop_server_is_serving(NULL), -EINVAL);
        ck_assert_int_eq(loop_server_close(NULL), -EINVAL);
        ck_assert_int_eq(loop_server_close_clients(NULL), -EINVAL);
        ck_assert_int_eq(loop_server_abort_clients(NULL), -EINVAL);
        ck_assert_int_eq(loop_server_wait_closed(NULL, &f), -EINVAL);
        ck_assert_int_eq(loop_server_get_fds(NULL, fds, 2), -EINVAL);
        ck_assert_uint_eq(loop_server_get_connections(NULL), 0);
        lfd = raw_listener(port);
        ck_assert_int_eq(loop_server_new(tt.loop, srv_factory, NULL, &lfd, 1, NULL, &s), 0);
        ck_assert_int_eq(loop_server_wait_closed(s, NULL), -EINVAL);
        ck_assert_int_eq(loop_server_get_fds(s, NULL, 2), -EINVAL);
        ck_assert_int_eq(loop_server_get_fds(s, NULL, 0), 1);
        ck_assert_ptr_eq(f, NULL);
        ck_assert_int_eq(loop_server_close(s), 0);
        ck_assert_int_eq(fd_is_open(lfd), 0);
        ck_assert_ptr_eq(loop_server_unref(s), NULL);
        tu_assert_usable(tt.loop);
        tt_end(&tt, 0);
}
END_TEST

START_TEST(test_closed_loop) {
        struct tt tt;
        struct rec r;
        loop_future_t *f = NULL;
        loop_server_t *s = NULL;
        int sv[2], lfd;
        char port[16];

        tt_begin(&tt);
        rec_init(&r);
        tu_socketpair(sv);
        lfd = raw_listener(port);
        ck_assert_int_eq(loop_close(tt.loop), 0);
        ck_assert_int_eq(loop_create_connection(tt.loop, &rec_ops, &r, "127.0.0.1", port, NULL, &f), -ESHUTDOWN);
        ck_assert_int_eq(loop_create_unix_connection(tt.loop, &rec_ops, &r, "/nonexistent/x", &f),
                         UNIX_ERR(-ESHUTDOWN));
        ck_assert_int_eq(loop_connect_accepted_socket(tt.loop, &rec_ops, &r, sv[0], &f), -ESHUTDOWN);
        ck_assert_int_eq(loop_create_server(tt.loop, srv_factory, NULL, "127.0.0.1", "0", NULL, &f), -ESHUTDOWN);
        ck_assert_int_eq(loop_create_unix_server(tt.loop, srv_factory, NULL, "/nonexistent/x", NULL, &f),
                         UNIX_ERR(-ESHUTDOWN));
        ck_assert_int_eq(loop_server_new(tt.loop, srv_factory, NULL, &lfd, 1, NULL, &s), -ESHUTDOWN);
        ck_assert_ptr_eq(f, NULL);
        ck_assert_ptr_eq(s, NULL);
        /* The fds stay the caller's. */
        ck_assert_int_eq(fd_is_open(sv[0]), 1);
        ck_assert_int_eq(fd_is_open(lfd), 1);
        rec_assert_nothing(&r);
        ck_assert_int_eq(close(lfd), 0);
        tu_close_pair(sv);
        tt_end(&tt, 0);
}
END_TEST

static Suite *transport_suite(void) {
        Suite *s = suite_create("transport");
        TCase *tc;

        tc = tu_tcase(s, "stream");
        tcase_add_test(tc, test_echo);
        tcase_add_test(tc, test_echo_ipv6);
        tcase_add_test(tc, test_made_from_loop);
        tcase_add_test(tc, test_self_owned);
        tcase_add_test(tc, test_writev);
        tcase_add_test(tc, test_set_protocol);

        tc = tu_tcase(s, "flow");
        tcase_add_test(tc, test_flow_control);
        tcase_add_test(tc, test_limits);

        tc = tu_tcase(s, "eof");
        tcase_add_test(tc, test_write_eof_half_close);
        tcase_add_test(tc, test_write_eof_flushes);
        tcase_add_loop_test(tc, test_eof_closes, 0, 2);

        tc = tu_tcase(s, "close");
        tcase_add_test(tc, test_close_flushes);
        tcase_add_test(tc, test_close_stops_reading);
        tcase_add_test(tc, test_abort);
        tcase_add_loop_test(tc, test_peer_reset, 0, 2);

        tc = tu_tcase(s, "reading");
        tcase_add_test(tc, test_pause_reading);

        tc = tu_tcase(s, "raise");
        tcase_add_test(tc, test_data_raises);
        tcase_add_test(tc, test_made_raises);
        tcase_add_test(tc, test_lost_raises);

        tc = tu_tcase(s, "buffered");
        tcase_add_test(tc, test_buffered);
        tcase_add_test(tc, test_buffered_size0);
        tcase_add_test(tc, test_ops_checks);

        tc = tu_tcase(s, "connect");
        tcase_add_test(tc, test_connect_refused);
        tcase_add_loop_test(tc, test_cancel_connect, 0, 8);
        tcase_add_test(tc, test_connect_bad_name);
        tcase_add_test(tc, test_accepted_socket);
        tcase_add_test(tc, test_accepted_errors);

        tc = tu_tcase(s, "unix");
        tcase_add_test(tc, test_unix);
        tcase_add_test(tc, test_unix_errors);

        tc = tu_tcase(s, "server");
        tcase_add_test(tc, test_factory_error);
        tcase_add_loop_test(tc, test_wait_closed_clients, 0, 2);
        tcase_add_test(tc, test_wait_closed_order);
        tcase_add_test(tc, test_server_new);
        tcase_add_test(tc, test_accept_emfile);
        tcase_add_test(tc, test_server_all_interfaces);

        tc = tu_tcase(s, "lifetime");
        tcase_add_test(tc, test_loop_close_transport);
        tcase_add_test(tc, test_loop_close_server);
        tcase_add_test(tc, test_bad_args_loop);
        tcase_add_test(tc, test_bad_args_transport);
        tcase_add_test(tc, test_bad_args_server);
        tcase_add_test(tc, test_closed_loop);
        return s;
}

int main(void) {
#ifndef _WIN32
        /* A write to a closed peer must fail a test, not kill the run. */
        signal(SIGPIPE, SIG_DFL);
#endif
        return tu_run_suite(transport_suite());
}
