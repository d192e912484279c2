/* SPDX-License-Identifier: MIT */
/*
 * The transports beside streams: pipe transports (loop_connect_read_pipe,
 * loop_connect_write_pipe), datagram endpoints
 * (loop_create_datagram_endpoint, loop_transport_sendto), loop_sendfile
 * over TCP (and TLS when the openssl command can make a certificate), and
 * subprocesses (loop_subprocess_exec and its pipes). Each case counts the
 * process's descriptors before and after, and bounds every loop run.
 * tests/run-backends reruns this once per backend, the proactor (io_uring)
 * included.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "testutil.h"
#include "protocol-events.h"

/* ---- the test's loop, exception handler and descriptor count --------- */

#define MAX_EXC 8

struct tt {
        loop_t *loop;
        int fds_before;
        int nexc;
        int exc_error[MAX_EXC];
        char exc_message[MAX_EXC][128];
};

static void exc_handler(loop_t *loop, const struct loop_exception_context *c, void *userdata) {
        struct tt *tt = userdata;

        (void) loop;
        if (tt->nexc < MAX_EXC) {
                tt->exc_error[tt->nexc] = c->error;
                snprintf(tt->exc_message[tt->nexc], sizeof(tt->exc_message[0]), "%s", c->message ? c->message : "(null)");
        }
        tt->nexc++;
}

static void tt_begin(struct tt *tt) {
        memset(tt, 0, sizeof(*tt));
        tt->fds_before = tu_count_fds();
        ck_assert_int_ge(tt->fds_before, 0);
        tt->loop = tu_loop_new();
        ck_assert_int_eq(loop_set_exception_handler(tt->loop, exc_handler, tt), 0);
}

/* want_exc: how many calls of the exception handler, or -1 for any. */
static void tt_end(struct tt *tt, int want_exc) {
        if (want_exc >= 0)
                ck_assert_msg(tt->nexc == want_exc, "%d exception(s), expected %d; first: %s (%s)", tt->nexc,
                              want_exc, tt->nexc ? tt->exc_message[0] : "-",
                              tt->nexc ? loop_strerror(tt->exc_error[0]) : "-");
        if (!loop_is_closed(tt->loop))
                ck_assert_int_eq(loop_close(tt->loop), 0);
        tt->loop = loop_unref(tt->loop);
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

/* The result of a future that succeeded. */
static void *result_of(loop_future_t *f) {
        void *p = NULL;
        int r = loop_future_result(f, &p);

        ck_assert_msg(r == 0, "future failed: %s", loop_strerror(r));
        return p;
}

static int fd_is_open(int fd) {
        return fcntl(fd, F_GETFD) >= 0;
}

/* Byte i of a stream that shows lost, repeated or reordered pieces. */
static unsigned char pat(size_t i) {
        return (unsigned char) ((uint32_t) ((uint32_t) i * 2654435761u) >> 24);
}

static unsigned char *pattern(size_t n) {
        unsigned char *p = malloc(n ? n : 1);

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

/* No child of ours is left a zombie: none at all, or only running ones. */
static void assert_no_zombie(void) {
        int st;
        pid_t w = waitpid(-1, &st, WNOHANG);

        ck_assert_msg(w == 0 || (w < 0 && errno == ECHILD), "waitpid(-1, WNOHANG): %d (%s)", (int) w,
                      w < 0 ? strerror(errno) : "a zombie was left");
}

/* ---- recording stream protocol (pipes, sendfile) --------------------- */

#define MAX_EVENTS 64

struct rec {
        loop_transport_t *t;            /* connection_made's, with a reference */
        int ev[MAX_EVENTS];
        int nev;
        int made, data, eof, lost, pause, resume;
        int lost_error;
        int after_lost, before_made, other_transport;
        int eof_ret;
        int fd_at_made;
        int fd_open_at_lost;            /* the fd was still open during connection_lost */
        unsigned char *in;
        size_t nin, capin;
};

static void rec_init(struct rec *r) {
        memset(r, 0, sizeof(*r));
        r->fd_at_made = -1;
}

static void rec_free(struct rec *r) {
        r->t = loop_transport_unref(r->t);
        free(r->in);
        r->in = NULL;
}

static void rec_event(struct rec *r, loop_transport_t *t, int ev) {
        if (r->lost)
                r->after_lost++;
        if (!r->made && ev != EV_MADE)
                r->before_made++;
        if (r->t && t != r->t)
                r->other_transport++;
        if (ev == EV_DATA && r->nev > 0 && r->ev[r->nev - 1] == EV_DATA)
                return;
        /* pause/resume repeat in a long transfer: counted, not listed. */
        if (ev == EV_PAUSE || ev == EV_RESUME)
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
        r->fd_at_made = loop_transport_get_fd(t);
        return 0;
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

static int on_data(loop_transport_t *t, const void *data, size_t size, void *userdata) {
        struct rec *r = userdata;

        rec_event(r, t, EV_DATA);
        r->data++;
        rec_append(r, data, size);
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
        r->fd_open_at_lost = r->fd_at_made >= 0 && fd_is_open(r->fd_at_made);
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
}

static void rec_assert_events(const struct rec *r, const int *want) {
        ev_assert_exact(r->ev, r->nev, want);
        rec_assert_sane(r);
}

static loop_transport_t *take_transport(struct tt *tt, struct rec *r, loop_future_t *f) {
        loop_transport_t *t;

        ck_assert_ptr_ne(f, NULL);
        ck_assert_int_eq(r->made, 0);   /* never from inside the call */
        wait_done(tt->loop, f);
        t = result_of(f);
        ck_assert_ptr_ne(t, NULL);
        ck_assert_int_eq(r->made, 1);
        ck_assert_ptr_eq(r->t, t);
        loop_future_unref(f);
        return t;
}

static loop_transport_t *read_pipe(struct tt *tt, struct rec *r, int fd) {
        loop_future_t *f = NULL;

        ck_assert_int_eq(loop_connect_read_pipe(tt->loop, &rec_ops, r, fd, &f), 0);
        return take_transport(tt, r, f);
}

static loop_transport_t *write_pipe(struct tt *tt, struct rec *r, int fd) {
        loop_future_t *f = NULL;

        ck_assert_int_eq(loop_connect_write_pipe(tt->loop, &rec_ops, r, fd, &f), 0);
        return take_transport(tt, r, f);
}

/* ---- read pipes -------------------------------------------------------- */

/* Bytes in order; at EOF eof_received, then connection_lost(0), whatever
 * eof_received returns (_i: 0 or 1); the fd is closed after it. */
START_TEST(test_rpipe_data) {
        struct tt tt;
        struct rec r;
        int p[2];
        loop_transport_t *t;
        unsigned char *want = pattern(100000);
        size_t off = 0;

        tt_begin(&tt);
        rec_init(&r);
        r.eof_ret = _i;
        tu_pipe(p);
        t = read_pipe(&tt, &r, p[0]);
        ck_assert_int_eq(loop_transport_get_fd(t), p[0]);
        ck_assert_int_eq(loop_transport_is_reading(t), 1);
        ck_assert_int_eq(loop_transport_can_write_eof(t), 0);
        /* Pieces of growing sizes, each written once the last was read. */
        for (size_t n = 1; off < 100000; n = n * 3 + 1) {
                size_t k = n < 100000 - off ? n : 100000 - off;
                size_t w = 0;

                while (w < k) {
                        ssize_t m = write(p[1], want + off + w, k - w);
                        if (m < 0) {
                                ck_assert_int_eq(errno, EAGAIN);
                                ck_assert_int_ge(loop_run_once(tt.loop, TU_MSEC), 0);
                                continue;
                        }
                        w += (size_t) m;
                }
                off += k;
                RUN_UNTIL(tt.loop, r.nin == off);
        }
        ck_assert_uint_eq(r.nin, 100000);
        ck_assert_uint_eq(pattern_mismatch(r.in, r.nin, 0), r.nin);
        ck_assert_int_eq(r.eof, 0);
        ck_assert_int_eq(close(p[1]), 0);
        RUN_UNTIL(tt.loop, r.lost);
        EVENTS(&r, EV_MADE, EV_DATA, EV_EOF, EV_LOST);
        ck_assert_int_eq(r.lost_error, 0);
        /* Still open during connection_lost, closed after it. */
        ck_assert_int_eq(r.fd_open_at_lost, 1);
        ck_assert_int_eq(fd_is_open(p[0]), 0);
        ck_assert_int_eq(errno, EBADF);
        ck_assert_int_eq(loop_transport_get_fd(t), -EBADF);
        ck_assert_int_eq(loop_transport_is_closing(t), 1);
        rec_free(&r);
        free(want);
        tt_end(&tt, 0);
}
END_TEST

/* A read pipe does not write. */
START_TEST(test_rpipe_no_write) {
        struct tt tt;
        struct rec r;
        int p[2];
        loop_transport_t *t;
        struct loop_iovec iov[2] = {{"a", 1}, {"b", 1}};

        tt_begin(&tt);
        rec_init(&r);
        tu_pipe(p);
        t = read_pipe(&tt, &r, p[0]);
        ck_assert_int_eq(loop_transport_write(t, "x", 1), -EOPNOTSUPP);
        ck_assert_int_eq(loop_transport_writev(t, iov, 2), -EOPNOTSUPP);
        ck_assert_int_eq(loop_transport_write_eof(t), -EOPNOTSUPP);
        ck_assert_int_eq(loop_transport_sendto(t, "x", 1, NULL, 0), -EOPNOTSUPP);
        ck_assert_uint_eq(loop_transport_get_write_buffer_size(t), 0);
        /* Nothing went anywhere; the transport still reads. */
        tu_write_byte(p[1]);
        RUN_UNTIL(tt.loop, r.nin == 1);
        ck_assert_int_eq(loop_transport_close(t), 0);
        RUN_UNTIL(tt.loop, r.lost);
        EVENTS(&r, EV_MADE, EV_DATA, EV_LOST);
        ck_assert_int_eq(r.lost_error, 0);
        ck_assert_int_eq(fd_is_open(p[0]), 0);
        ck_assert_int_eq(close(p[1]), 0);
        rec_free(&r);
        tt_end(&tt, 0);
}
END_TEST

/* pause_reading holds the bytes back until resume_reading. */
START_TEST(test_rpipe_pause) {
        struct tt tt;
        struct rec r;
        int p[2];
        loop_transport_t *t;

        tt_begin(&tt);
        rec_init(&r);
        tu_pipe(p);
        t = read_pipe(&tt, &r, p[0]);
        ck_assert_int_eq(loop_transport_pause_reading(t), 0);
        ck_assert_int_eq(loop_transport_is_reading(t), 0);
        ck_assert_int_eq(write(p[1], "paused", 6), 6);
        tu_run_for(tt.loop, 50 * TU_MSEC);
        ck_assert_int_eq(r.data, 0);
        /* An EOF waits too. */
        ck_assert_int_eq(close(p[1]), 0);
        tu_run_for(tt.loop, 20 * TU_MSEC);
        ck_assert_int_eq(r.data, 0);
        ck_assert_int_eq(r.eof, 0);
        ck_assert_int_eq(r.lost, 0);
        ck_assert_int_eq(loop_transport_resume_reading(t), 0);
        ck_assert_int_eq(loop_transport_is_reading(t), 1);
        RUN_UNTIL(tt.loop, r.lost);
        EVENTS(&r, EV_MADE, EV_DATA, EV_EOF, EV_LOST);
        ck_assert_uint_eq(r.nin, 6);
        ck_assert_mem_eq(r.in, "paused", 6);
        ck_assert_int_eq(r.lost_error, 0);
        rec_free(&r);
        tt_end(&tt, 0);
}
END_TEST

/* Only pipes, sockets and character devices; a closed fd is -EBADF. */
START_TEST(test_rpipe_bad_fd) {
        struct tt tt;
        struct rec r;
        loop_future_t *f = NULL;
        char path[] = "/tmp/check_endpoints.XXXXXX";
        int fd;

        tt_begin(&tt);
        rec_init(&r);
        fd = mkstemp(path);
        ck_assert_int_ge(fd, 0);
        ck_assert_int_eq(unlink(path), 0);
        ck_assert_int_eq(loop_connect_read_pipe(tt.loop, &rec_ops, &r, fd, &f), -EINVAL);
        ck_assert_int_eq(loop_connect_write_pipe(tt.loop, &rec_ops, &r, fd, &f), -EINVAL);
        ck_assert_ptr_eq(f, NULL);
        /* The caller's fd stays the caller's. */
        ck_assert_int_eq(fd_is_open(fd), 1);
        ck_assert_int_eq(close(fd), 0);
        ck_assert_int_eq(loop_connect_read_pipe(tt.loop, &rec_ops, &r, fd, &f), -EBADF);
        ck_assert_int_eq(loop_connect_write_pipe(tt.loop, &rec_ops, &r, fd, &f), -EBADF);
        ck_assert_int_eq(loop_connect_read_pipe(tt.loop, &rec_ops, &r, -1, &f), -EINVAL);
        ck_assert_int_eq(loop_connect_read_pipe(tt.loop, NULL, &r, 0, &f), -EINVAL);
        ck_assert_ptr_eq(f, NULL);
        tu_run_for(tt.loop, 10 * TU_MSEC);
        ck_assert_int_eq(r.nev, 0);
        rec_free(&r);
        tt_end(&tt, 0);
}
END_TEST

/* ---- write pipes ------------------------------------------------------- */

/* 4 MiB through a pipe that the test reads slowly: the protocol is paused
 * and resumed, every byte arrives in order; write_eof then ends it. */
START_TEST(test_wpipe_flow) {
        enum { TOTAL = 4 * 1024 * 1024, PIECE = 96 * 1024 };
        struct tt tt;
        struct rec r;
        int p[2];
        loop_transport_t *t;
        unsigned char *data = pattern(TOTAL);
        static unsigned char buf[16384];
        size_t sent = 0, got = 0;
        int64_t deadline;
        int eof = 0;

        tt_begin(&tt);
        rec_init(&r);
        tu_pipe(p);
        t = write_pipe(&tt, &r, p[1]);
        ck_assert_int_eq(loop_transport_can_write_eof(t), 1);
        ck_assert_int_eq(loop_transport_is_reading(t), 0);
        deadline = tu_now_ns() + 60 * TU_SEC;
        while (!eof && tu_now_ns() < deadline) {
                /* The protocol's side: write while not paused. */
                while (sent < TOTAL && r.pause == r.resume) {
                        size_t k = TOTAL - sent < PIECE ? TOTAL - sent : PIECE;
                        ck_assert_int_eq(loop_transport_write(t, data + sent, k), 0);
                        sent += k;
                        if (sent == TOTAL)
                                ck_assert_int_eq(loop_transport_write_eof(t), 0);
                }
                /* The slow reader: a little at a time. */
                ssize_t n = read(p[0], buf, sizeof(buf));
                if (n > 0) {
                        size_t bad = pattern_mismatch(buf, (size_t) n, got);
                        ck_assert_msg(bad == (size_t) n, "byte %zu differs", got + bad);
                        got += (size_t) n;
                } else if (n == 0)
                        eof = 1;
                else
                        ck_assert_int_eq(errno, EAGAIN);
                ck_assert_int_ge(loop_run_once(tt.loop, n > 0 ? 0 : TU_MSEC), 0);
        }
        ck_assert_msg(eof, "no EOF after %zu of %d bytes", got, TOTAL);
        ck_assert_uint_eq(got, TOTAL);
        RUN_UNTIL(tt.loop, r.lost);
        ck_assert_int_ge(r.pause, 1);
        ck_assert_int_eq(r.pause, r.resume);
        ck_assert_int_eq(r.ev[0], EV_MADE);
        ck_assert_int_eq(r.ev[r.nev - 1], EV_LOST);
        rec_assert_sane(&r);
        ck_assert_int_eq(r.lost_error, 0);
        ck_assert_int_eq(r.eof, 0);
        ck_assert_int_eq(r.data, 0);
        ck_assert_int_eq(fd_is_open(p[1]), 0);
        ck_assert_int_eq(close(p[0]), 0);
        free(data);
        rec_free(&r);
        tt_end(&tt, 0);
}
END_TEST

/* write_eof: what is buffered goes, the reader sees EOF, connection_lost(0). */
START_TEST(test_wpipe_write_eof) {
        struct tt tt;
        struct rec r;
        int p[2], end;
        char buf[16];
        loop_transport_t *t;

        tt_begin(&tt);
        rec_init(&r);
        tu_pipe(p);
        t = write_pipe(&tt, &r, p[1]);
        ck_assert_int_eq(loop_transport_write(t, "hello", 5), 0);
        ck_assert_int_eq(loop_transport_write_eof(t), 0);
        ck_assert_int_eq(loop_transport_write(t, "x", 1), -ESHUTDOWN);
        RUN_UNTIL(tt.loop, r.lost);
        EVENTS(&r, EV_MADE, EV_LOST);
        ck_assert_int_eq(r.lost_error, 0);
        ck_assert_int_eq(fd_is_open(p[1]), 0);
        ck_assert_int_eq(read(p[0], buf, sizeof(buf)), 5);
        ck_assert_mem_eq(buf, "hello", 5);
        end = (int) read(p[0], buf, sizeof(buf));
        ck_assert_int_eq(end, 0);
        ck_assert_int_eq(close(p[0]), 0);
        rec_free(&r);
        tt_end(&tt, 0);
}
END_TEST

/* The reader goes away with bytes buffered: connection_lost(-EPIPE), and
 * no SIGPIPE (main() leaves it at its default: it would kill the run). */
START_TEST(test_wpipe_epipe) {
        struct tt tt;
        struct rec r;
        int p[2];
        loop_transport_t *t;
        unsigned char *data = pattern(512 * 1024);

        tt_begin(&tt);
        rec_init(&r);
        tu_pipe(p);
        t = write_pipe(&tt, &r, p[1]);
        ck_assert_int_eq(loop_transport_pause_reading(t), -EOPNOTSUPP);
        ck_assert_int_eq(loop_transport_resume_reading(t), -EOPNOTSUPP);
        ck_assert_int_eq(loop_transport_is_reading(t), 0);
        ck_assert_int_eq(loop_transport_write(t, data, 512 * 1024), 0);
        ck_assert_uint_gt(loop_transport_get_write_buffer_size(t), 0);
        tu_run_for(tt.loop, 5 * TU_MSEC);
        ck_assert_uint_gt(loop_transport_get_write_buffer_size(t), 0);
        ck_assert_int_eq(close(p[0]), 0);
        RUN_UNTIL(tt.loop, r.lost);
        ck_assert_int_eq(r.lost_error, -EPIPE);
        ck_assert_int_eq(r.ev[0], EV_MADE);
        ck_assert_int_eq(r.ev[r.nev - 1], EV_LOST);
        rec_assert_sane(&r);
        ck_assert_int_eq(fd_is_open(p[1]), 0);
        ck_assert_int_eq(loop_transport_write(t, "x", 1), -EPIPE);
        free(data);
        rec_free(&r);
        tt_end(&tt, 0);
}
END_TEST

/* The reader goes away with nothing buffered: connection_lost(0). On
 * kqueue a pipe's write end reports nothing when its reader leaves
 * (FreeBSD's filters; tests/kqueue models them): there the next write
 * finds out, with EPIPE. */
START_TEST(test_wpipe_reader_gone) {
        const char *sel = getenv("LIBLOOP_SELECTOR");
        bool kqueue = sel && strcmp(sel, "kqueue") == 0;
        struct tt tt;
        struct rec r;
        int p[2];
        loop_transport_t *t;

        tt_begin(&tt);
        rec_init(&r);
        tu_pipe(p);
        t = write_pipe(&tt, &r, p[1]);
        ck_assert_int_eq(loop_transport_write(t, "x", 1), 0);
        ck_assert_uint_eq(loop_transport_get_write_buffer_size(t), 0);
        ck_assert_int_eq(close(p[0]), 0);
        if (kqueue) {
                tu_run_for(tt.loop, 20 * TU_MSEC);
                ck_assert_int_eq(r.lost, 0);
                ck_assert_int_eq(loop_transport_write(t, "y", 1), 0);
        }
        RUN_UNTIL(tt.loop, r.lost);
        EVENTS(&r, EV_MADE, EV_LOST);
        ck_assert_int_eq(r.lost_error, kqueue ? -EPIPE : 0);
        ck_assert_int_eq(fd_is_open(p[1]), 0);
        rec_free(&r);
        tt_end(&tt, 0);
}
END_TEST

/* ---- datagrams -------------------------------------------------------- */

#define MAX_DG 128

struct drec {
        loop_transport_t *t;
        int made, lost, lost_error, nrecv, nerr, after_lost, before_made;
        int err[8];
        size_t size[MAX_DG];
        int bad_data;                   /* a datagram that is not pat() from 0 */
        int no_addr;                    /* datagram_received without an address */
        struct sockaddr_storage addr;   /* the last sender */
        socklen_t addrlen;
        int echo;                       /* send each datagram back to its sender */
        int echo_error;
        int pauses, resumes;
};

static void drec_init(struct drec *d) {
        memset(d, 0, sizeof(*d));
}

static int dg_made(loop_transport_t *t, void *userdata) {
        struct drec *d = userdata;

        if (d->lost)
                d->after_lost++;
        d->made++;
        d->t = loop_transport_ref(t);
        return 0;
}

static int dg_received(loop_transport_t *t, const void *data, size_t size, const struct sockaddr *addr,
                       socklen_t addrlen, void *userdata) {
        struct drec *d = userdata;

        if (d->lost)
                d->after_lost++;
        if (!d->made)
                d->before_made++;
        if (d->nrecv < MAX_DG)
                d->size[d->nrecv] = size;
        d->nrecv++;
        if (pattern_mismatch(data, size, 0) != size)
                d->bad_data++;
        if (!addr || addrlen == 0) {
                d->no_addr++;
                return 0;
        }
        memcpy(&d->addr, addr, addrlen);
        d->addrlen = addrlen;
        if (d->echo && loop_transport_sendto(t, data, size, addr, addrlen) != 0)
                d->echo_error++;
        return 0;
}

static int dg_error(loop_transport_t *t, int error, void *userdata) {
        struct drec *d = userdata;

        (void) t;
        if (d->lost)
                d->after_lost++;
        if (d->nerr < 8)
                d->err[d->nerr] = error;
        d->nerr++;
        return 0;
}

static int dg_lost(loop_transport_t *t, int error, void *userdata) {
        struct drec *d = userdata;

        (void) t;
        if (d->lost)
                d->after_lost++;
        d->lost++;
        d->lost_error = error;
        return 0;
}

static int dg_pause(loop_transport_t *t, void *userdata) {
        (void) t;
        ((struct drec *) userdata)->pauses++;
        return 0;
}

static int dg_resume(loop_transport_t *t, void *userdata) {
        (void) t;
        ((struct drec *) userdata)->resumes++;
        return 0;
}

static const struct loop_datagram_protocol_ops dg_ops = {
        .size = sizeof(struct loop_datagram_protocol_ops),
        .connection_made = dg_made,
        .datagram_received = dg_received,
        .error_received = dg_error,
        .connection_lost = dg_lost,
        .pause_writing = dg_pause,
        .resume_writing = dg_resume,
};

static void drec_free(struct drec *d) {
        ck_assert_int_le(d->made, 1);
        ck_assert_int_le(d->lost, 1);
        ck_assert_int_eq(d->after_lost, 0);
        ck_assert_int_eq(d->before_made, 0);
        ck_assert_int_eq(d->echo_error, 0);
        d->t = loop_transport_unref(d->t);
}

static loop_transport_t *endpoint(struct tt *tt, struct drec *d, const char *lhost, const char *lport,
                                  const char *rhost, const char *rport, int family) {
        struct loop_datagram_options o = {.size = sizeof(o), .family = family};
        loop_future_t *f = NULL;
        loop_transport_t *t;

        ck_assert_int_eq(loop_create_datagram_endpoint(tt->loop, &dg_ops, d, lhost, lport, rhost, rport, &o, &f), 0);
        ck_assert_ptr_ne(f, NULL);
        ck_assert_int_eq(d->made, 0);
        wait_done(tt->loop, f);
        t = result_of(f);
        ck_assert_ptr_ne(t, NULL);
        ck_assert_int_eq(d->made, 1);
        ck_assert_ptr_eq(d->t, t);
        loop_future_unref(f);
        return t;
}

static void port_of(loop_transport_t *t, char port[16], int family) {
        struct sockaddr_storage ss;
        socklen_t len = sizeof(ss);
        unsigned p;

        ck_assert_int_eq(loop_transport_get_sockname(t, (struct sockaddr *) &ss, &len), 0);
        ck_assert_int_eq(ss.ss_family, family);
        p = family == AF_INET ? ntohs(((struct sockaddr_in *) &ss)->sin_port)
                              : ntohs(((struct sockaddr_in6 *) &ss)->sin6_port);
        ck_assert_uint_ne(p, 0);
        snprintf(port, 16, "%u", p);
}

static unsigned port_in(const struct sockaddr_storage *ss) {
        return ss->ss_family == AF_INET ? ntohs(((const struct sockaddr_in *) ss)->sin_port)
                                        : ntohs(((const struct sockaddr_in6 *) ss)->sin6_port);
}

/* An echo server and a connected client, n datagrams of different sizes
 * one after the other (loopback UDP may drop what overflows a buffer). */
static void echo_round_trips(struct tt *tt, const char *host, int family, int n) {
        struct drec sd, cd;
        loop_transport_t *s, *c;
        char port[16], cport[16];
        unsigned char *data = pattern(2000);
        struct sockaddr_storage peer;
        socklen_t plen = sizeof(peer);

        drec_init(&sd);
        drec_init(&cd);
        sd.echo = 1;
        s = endpoint(tt, &sd, host, "0", NULL, NULL, family);
        port_of(s, port, family);
        c = endpoint(tt, &cd, NULL, NULL, host, port, family);
        port_of(c, cport, family);
        ck_assert_int_eq(loop_transport_get_peername(c, (struct sockaddr *) &peer, &plen), 0);
        ck_assert_int_eq(peer.ss_family, family);
        ck_assert_uint_eq(port_in(&peer), (unsigned) atoi(port));
        ck_assert_int_eq(loop_transport_get_peername(s, (struct sockaddr *) &peer, &plen), -ENOTCONN);
        for (int i = 0; i < n; i++) {
                size_t size = (size_t) (i * 37) % 1400 + (size_t) (i & 1);     /* 0 first: an empty datagram */
                /* Both ways of a connected endpoint. */
                if (i & 2)
                        ck_assert_int_eq(loop_transport_write(c, data, size), 0);
                else
                        ck_assert_int_eq(loop_transport_sendto(c, data, size, NULL, 0), 0);
                RUN_UNTIL(tt->loop, cd.nrecv == i + 1);
                ck_assert_int_eq(sd.nrecv, i + 1);
                ck_assert_uint_eq(sd.size[i], size);
                ck_assert_uint_eq(cd.size[i], size);
        }
        ck_assert_int_eq(sd.bad_data, 0);
        ck_assert_int_eq(cd.bad_data, 0);
        ck_assert_int_eq(sd.no_addr, 0);
        ck_assert_int_eq(cd.no_addr, 0);
        ck_assert_int_eq(sd.nerr, 0);
        ck_assert_int_eq(cd.nerr, 0);
        /* The server saw the client's address, the client the server's. */
        ck_assert_int_eq(sd.addr.ss_family, family);
        ck_assert_uint_eq(port_in(&sd.addr), (unsigned) atoi(cport));
        ck_assert_int_eq(cd.addr.ss_family, family);
        ck_assert_uint_eq(port_in(&cd.addr), (unsigned) atoi(port));
        /* close: connection_lost(0), from the loop. */
        ck_assert_int_eq(loop_transport_close(c), 0);
        ck_assert_int_eq(loop_transport_close(s), 0);
        ck_assert_int_eq(cd.lost, 0);
        ck_assert_int_eq(loop_transport_is_closing(c), 1);
        ck_assert_int_eq(loop_transport_sendto(c, "x", 1, NULL, 0), -EPIPE);
        RUN_UNTIL(tt->loop, cd.lost && sd.lost);
        ck_assert_int_eq(cd.lost_error, 0);
        ck_assert_int_eq(sd.lost_error, 0);
        ck_assert_int_eq(loop_transport_get_fd(c), -EBADF);
        drec_free(&sd);
        drec_free(&cd);
        free(data);
}

START_TEST(test_dgram_echo) {
        struct tt tt;

        tt_begin(&tt);
        echo_round_trips(&tt, "127.0.0.1", AF_INET, 100);
        tt_end(&tt, 0);
}
END_TEST

START_TEST(test_dgram_ipv6) {
        struct tt tt;
        struct sockaddr_in6 sin6 = {.sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT};
        int fd = socket(AF_INET6, SOCK_DGRAM | SOCK_CLOEXEC, 0);

        if (fd < 0 || bind(fd, (struct sockaddr *) &sin6, sizeof(sin6)) < 0) {
                if (fd >= 0)
                        close(fd);
                printf("%s:%d: %s: SKIP: no IPv6 loopback\n", __FILE__, __LINE__, __func__);
                fflush(stdout);
                return;
        }
        close(fd);
        tt_begin(&tt);
        echo_round_trips(&tt, "::1", AF_INET6, 10);
        tt_end(&tt, 0);
}
END_TEST

/* What a datagram endpoint refuses. */
START_TEST(test_dgram_errors) {
        struct tt tt;
        struct drec sd, cd;
        loop_transport_t *s, *c;
        char port[16];
        struct sockaddr_storage ss;
        socklen_t len = sizeof(ss);
        struct loop_iovec iov[1] = {{"x", 1}};
        loop_future_t *f = NULL;
        int p[2];

        tt_begin(&tt);
        drec_init(&sd);
        drec_init(&cd);
        s = endpoint(&tt, &sd, "127.0.0.1", "0", NULL, NULL, 0);
        port_of(s, port, AF_INET);
        c = endpoint(&tt, &cd, NULL, NULL, "127.0.0.1", port, 0);
        ck_assert_int_eq(loop_transport_get_sockname(s, (struct sockaddr *) &ss, &len), 0);
        /* A connected endpoint takes no address, an unconnected one needs one. */
        ck_assert_int_eq(loop_transport_sendto(c, "x", 1, (struct sockaddr *) &ss, len), -EISCONN);
        ck_assert_int_eq(loop_transport_sendto(s, "x", 1, NULL, 0), -EDESTADDRREQ);
        ck_assert_int_eq(loop_transport_write(s, "x", 1), -EDESTADDRREQ);
        ck_assert_int_eq(loop_transport_writev(c, iov, 1), -EOPNOTSUPP);
        ck_assert_int_eq(loop_transport_writev(s, iov, 1), -EOPNOTSUPP);
        ck_assert_int_eq(loop_transport_write_eof(c), -EOPNOTSUPP);
        ck_assert_int_eq(loop_transport_can_write_eof(c), 0);
        tu_pipe(p);
        ck_assert_int_eq(loop_sendfile(c, p[0], 0, 0, &f), -EOPNOTSUPP);
        ck_assert_ptr_eq(f, NULL);
        tu_close_pair(p);
        /* Nothing was sent by any of these. */
        tu_run_for(tt.loop, 20 * TU_MSEC);
        ck_assert_int_eq(sd.nrecv, 0);
        ck_assert_int_eq(cd.nerr, 0);
        ck_assert_int_eq(sd.nerr, 0);
        ck_assert_int_eq(loop_transport_abort(c), 0);
        ck_assert_int_eq(loop_transport_close(s), 0);
        RUN_UNTIL(tt.loop, cd.lost && sd.lost);
        ck_assert_int_eq(cd.lost_error, 0);
        ck_assert_int_eq(sd.lost_error, 0);
        drec_free(&sd);
        drec_free(&cd);
        tt_end(&tt, 0);
}
END_TEST

/* A remote host needs a port, and a port a host. */
START_TEST(test_dgram_bad_args) {
        struct tt tt;
        struct drec d;
        loop_future_t *f = NULL;
        struct loop_datagram_options small = {.size = 1};

        tt_begin(&tt);
        drec_init(&d);
        ck_assert_int_eq(loop_create_datagram_endpoint(tt.loop, &dg_ops, &d, NULL, NULL, "127.0.0.1", NULL, NULL, &f),
                         -EINVAL);
        ck_assert_int_eq(loop_create_datagram_endpoint(tt.loop, &dg_ops, &d, NULL, NULL, NULL, "9", NULL, &f),
                         -EINVAL);
        ck_assert_int_eq(loop_create_datagram_endpoint(tt.loop, NULL, &d, "127.0.0.1", "0", NULL, NULL, NULL, &f),
                         -EINVAL);
        ck_assert_int_eq(loop_create_datagram_endpoint(tt.loop, &dg_ops, &d, "127.0.0.1", "0", NULL, NULL, NULL, NULL),
                         -EINVAL);
        ck_assert_int_eq(
                loop_create_datagram_endpoint(tt.loop, &dg_ops, &d, "127.0.0.1", "0", NULL, NULL, &small, &f),
                -EINVAL);
        ck_assert_ptr_eq(f, NULL);
        tu_run_for(tt.loop, 10 * TU_MSEC);
        ck_assert_int_eq(d.made + d.lost + d.nerr + d.nrecv, 0);
        drec_free(&d);
        tt_end(&tt, 0);
}
END_TEST

/* A connected endpoint whose peer's port is closed: error_received
 * (-ECONNREFUSED) after a write, and it stays open. */
START_TEST(test_dgram_refused) {
        struct tt tt;
        struct drec d;
        loop_transport_t *c;
        struct sockaddr_in sin = {.sin_family = AF_INET};
        socklen_t len = sizeof(sin);
        char port[16];
        int fd, i;

        tt_begin(&tt);
        drec_init(&d);
        /* A port that was just free: bound, then closed. */
        fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        ck_assert_int_ge(fd, 0);
        sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        ck_assert_int_eq(bind(fd, (struct sockaddr *) &sin, sizeof(sin)), 0);
        ck_assert_int_eq(getsockname(fd, (struct sockaddr *) &sin, &len), 0);
        snprintf(port, sizeof(port), "%u", (unsigned) ntohs(sin.sin_port));
        ck_assert_int_eq(close(fd), 0);
        c = endpoint(&tt, &d, NULL, NULL, "127.0.0.1", port, AF_INET);
        /* One write, then another now and then until the error shows
         * (the kernel reports the ICMP refusal once, on the next call). */
        for (i = 0; i < 50 && d.nerr == 0; i++) {
                ck_assert_int_eq(loop_transport_write(c, "ping", 4), 0);
                tu_run_until(tt.loop, &d.nerr, 1, 100 * TU_MSEC);
        }
        ck_assert_int_ge(d.nerr, 1);
        ck_assert_msg(d.err[0] == -ECONNREFUSED, "error_received(%s)", loop_strerror(d.err[0]));
        ck_assert_int_eq(d.lost, 0);
        ck_assert_int_eq(loop_transport_is_closing(c), 0);
        ck_assert_int_ge(loop_transport_get_fd(c), 0);
        ck_assert_int_eq(loop_transport_write(c, "again", 5), 0);
        tu_run_for(tt.loop, 10 * TU_MSEC);
        ck_assert_int_eq(d.lost, 0);
        ck_assert_int_eq(loop_transport_close(c), 0);
        RUN_UNTIL(tt.loop, d.lost);
        ck_assert_int_eq(d.lost_error, 0);
        ck_assert_int_eq(d.nrecv, 0);
        drec_free(&d);
        tt_end(&tt, 0);
}
END_TEST

/* An executor job that holds the only worker until g_release is set (10 s at most). */
static int g_release;

static int blocker(void *arg, void **result) {
        int64_t end = tu_now_ns() + 10 * TU_SEC;

        (void) arg;
        while (!__atomic_load_n(&g_release, __ATOMIC_ACQUIRE) && tu_now_ns() < end)
                tu_sleep_ns(TU_MSEC);
        *result = NULL;
        return 0;
}

/*
 * The future cancelled before the loop runs: no callback, no socket left
 * (tt_end counts the descriptors). _i 0: the job may be queued or running;
 * 1: the loop closed at once instead; 2: the job surely still queued (the
 * executor's only worker is busy), so that the cancel takes it out of the
 * queue.
 */
START_TEST(test_dgram_cancel) {
        struct tt tt;
        struct drec d;
        loop_future_t *f = NULL, *bf = NULL;

        tt_begin(&tt);
        drec_init(&d);
        if (_i == 2) {
                __atomic_store_n(&g_release, 0, __ATOMIC_RELEASE);
                ck_assert_int_eq(loop_set_executor_max_workers(tt.loop, 1), 0);
                ck_assert_int_eq(loop_run_in_executor(tt.loop, blocker, NULL, &bf), 0);
        }
        ck_assert_int_eq(
                loop_create_datagram_endpoint(tt.loop, &dg_ops, &d, "127.0.0.1", "0", NULL, NULL, NULL, &f), 0);
        if (_i != 1) {
                ck_assert_int_eq(loop_future_cancel(f), 1);
                ck_assert_int_eq(loop_future_cancelled(f), 1);
                if (bf) {
                        __atomic_store_n(&g_release, 1, __ATOMIC_RELEASE);
                        wait_done(tt.loop, bf);
                        ck_assert_int_eq(loop_future_error(bf), 0);
                }
                /* Long enough for the job to end, usually; loop_close
                 * joins the worker and ends it otherwise. */
                tu_run_for(tt.loop, 200 * TU_MSEC);
        }
        ck_assert_int_eq(loop_close(tt.loop), 0);
        ck_assert_int_eq(d.made + d.lost + d.nerr + d.nrecv, 0);
        ck_assert_int_eq(loop_future_done(f), 1);
        ck_assert_int_eq(loop_future_cancelled(f), 1);
        loop_future_unref(f);
        loop_future_unref(bf);
        drec_free(&d);
        tt_end(&tt, 0);
}
END_TEST

/* ---- sendfile --------------------------------------------------------- */

#define SF_SIZE (5 * 1024 * 1024 + 4321)

/* A file of n pattern bytes, unlinked: the descriptor is all there is. */
static int pattern_file(size_t n) {
        char path[] = "/tmp/check_endpoints.XXXXXX";
        unsigned char *data = pattern(n);
        int fd = mkstemp(path);
        size_t off = 0;

        ck_assert_int_ge(fd, 0);
        ck_assert_int_eq(unlink(path), 0);
        while (off < n) {
                ssize_t k = write(fd, data + off, n - off);
                ck_assert_int_gt(k, 0);
                off += (size_t) k;
        }
        free(data);
        return fd;
}

struct sfsrv {
        struct rec conn;
        int calls;
};

static int sf_factory(loop_server_t *server, const struct loop_protocol_ops **ops, void **userdata,
                      void *factory_userdata) {
        struct sfsrv *v = factory_userdata;

        (void) server;
        if (v->calls++)
                return -EMFILE;
        *ops = &rec_ops;
        *userdata = &v->conn;
        return 0;
}

struct sfpair {
        loop_server_t *server;
        struct sfsrv srv;               /* the server's side: its connection's bytes */
        struct rec cli;                 /* the client's side */
        loop_transport_t *t;            /* the client's transport */
};

/* A server on 127.0.0.1 and a client connected to it (TLS with tls_srv
 * and tls_cli, when given), both transports made. */
static void sf_connect(struct tt *tt, struct sfpair *pr, loop_tls_context_t *tls_srv, loop_tls_context_t *tls_cli) {
        struct loop_server_options so = {.size = sizeof(so), .tls = tls_srv};
        struct loop_connection_options co = {.size = sizeof(co), .tls = tls_cli};
        loop_future_t *f = NULL;
        int fds[1] = {-1};
        struct sockaddr_in sin;
        socklen_t len = sizeof(sin);
        char port[16];

        memset(pr, 0, sizeof(*pr));
        rec_init(&pr->srv.conn);
        rec_init(&pr->cli);
        ck_assert_int_eq(loop_create_server(tt->loop, sf_factory, &pr->srv, "127.0.0.1", "0", &so, &f), 0);
        wait_done(tt->loop, f);
        pr->server = loop_server_ref(result_of(f));
        loop_future_unref(f);
        ck_assert_int_eq(loop_server_get_fds(pr->server, fds, 1), 1);
        ck_assert_int_eq(getsockname(fds[0], (struct sockaddr *) &sin, &len), 0);
        snprintf(port, sizeof(port), "%u", (unsigned) ntohs(sin.sin_port));
        f = NULL;
        ck_assert_int_eq(loop_create_connection(tt->loop, &rec_ops, &pr->cli, "127.0.0.1", port, &co, &f), 0);
        pr->t = take_transport(tt, &pr->cli, f);
        RUN_UNTIL(tt->loop, pr->srv.conn.made == 1);
}

static void sf_finish(struct tt *tt, struct sfpair *pr) {
        loop_future_t *w = NULL;

        if (!pr->cli.lost)
                ck_assert_int_eq(loop_transport_close(pr->t), 0);
        RUN_UNTIL(tt->loop, pr->cli.lost && pr->srv.conn.lost);
        ck_assert_int_eq(loop_server_close(pr->server), 0);
        ck_assert_int_eq(loop_server_wait_closed(pr->server, &w), 0);
        wait_done(tt->loop, w);
        loop_future_unref(w);
        pr->server = loop_server_unref(pr->server);
        rec_assert_sane(&pr->cli);
        rec_assert_sane(&pr->srv.conn);
        rec_free(&pr->cli);
        rec_free(&pr->srv.conn);
}

/* A sendfile that succeeded: its byte count. */
static size_t sf_nbytes(struct tt *tt, loop_future_t *f) {
        struct loop_sock_result *res;

        wait_done(tt->loop, f);
        res = result_of(f);
        ck_assert_ptr_ne(res, NULL);
        return res->nbytes;
}

static void sf_whole(struct tt *tt, struct sfpair *pr, size_t size) {
        loop_future_t *f = NULL;
        int fd = pattern_file(size);

        /* The file's offset is left alone. */
        ck_assert_int_eq(lseek(fd, 17, SEEK_SET), 17);
        ck_assert_int_eq(loop_sendfile(pr->t, fd, 0, 0, &f), 0);
        ck_assert_ptr_ne(f, NULL);
        ck_assert_uint_eq(sf_nbytes(tt, f), size);
        loop_future_unref(f);
        ck_assert_int_eq(lseek(fd, 0, SEEK_CUR), 17);
        RUN_UNTIL(tt->loop, pr->srv.conn.nin >= size);
        ck_assert_uint_eq(pr->srv.conn.nin, size);
        ck_assert_uint_eq(pattern_mismatch(pr->srv.conn.in, size, 0), size);
        /* Whatever paused the protocol meanwhile resumed it. */
        RUN_UNTIL(tt->loop, pr->cli.pause == pr->cli.resume);
        /* The transport writes again afterwards, after the file's bytes. */
        ck_assert_int_eq(loop_transport_write(pr->t, "tail", 4), 0);
        RUN_UNTIL(tt->loop, pr->srv.conn.nin == size + 4);
        ck_assert_mem_eq(pr->srv.conn.in + size, "tail", 4);
        ck_assert_int_eq(fd_is_open(fd), 1);
        ck_assert_int_eq(close(fd), 0);
}

/* A whole file, 5 MiB and an odd size, intact. */
START_TEST(test_sendfile_whole) {
        struct tt tt;
        struct sfpair pr;

        tt_begin(&tt);
        sf_connect(&tt, &pr, NULL, NULL);
        sf_whole(&tt, &pr, SF_SIZE);
        sf_finish(&tt, &pr);
        EVENTS(&pr.cli, EV_MADE, EV_LOST);
        tt_end(&tt, 0);
}
END_TEST

/* offset and count; a count past the end stops at the end. */
START_TEST(test_sendfile_range) {
        struct tt tt;
        struct sfpair pr;
        loop_future_t *f = NULL;
        int fd;
        size_t n;

        tt_begin(&tt);
        fd = pattern_file(300000);
        sf_connect(&tt, &pr, NULL, NULL);
        ck_assert_int_eq(loop_sendfile(pr.t, fd, 1000, 100001, &f), 0);
        ck_assert_uint_eq(sf_nbytes(&tt, f), 100001);
        loop_future_unref(f);
        RUN_UNTIL(tt.loop, pr.srv.conn.nin >= 100001);
        ck_assert_uint_eq(pr.srv.conn.nin, 100001);
        ck_assert_uint_eq(pattern_mismatch(pr.srv.conn.in, 100001, 1000), 100001);
        f = NULL;
        ck_assert_int_eq(loop_sendfile(pr.t, fd, 300000 - 10, 100, &f), 0);
        n = sf_nbytes(&tt, f);
        loop_future_unref(f);
        ck_assert_uint_eq(n, 10);
        RUN_UNTIL(tt.loop, pr.srv.conn.nin >= 100011);
        ck_assert_uint_eq(pattern_mismatch(pr.srv.conn.in + 100001, 10, 300000 - 10), 10);
        /* At the end of the file: nothing to send. */
        f = NULL;
        ck_assert_int_eq(loop_sendfile(pr.t, fd, 300000, 0, &f), 0);
        n = sf_nbytes(&tt, f);
        loop_future_unref(f);
        ck_assert_uint_eq(n, 0);
        ck_assert_int_eq(close(fd), 0);
        sf_finish(&tt, &pr);
        tt_end(&tt, 0);
}
END_TEST

/* A sendfile of SF_SIZE bytes that cannot finish: the receiver does not
 * read and the sender's buffer is small. The file in *fd. */
static loop_future_t *sf_start_stalled(struct tt *tt, struct sfpair *pr, int *fd) {
        loop_future_t *f = NULL;
        int small = 32768;

        *fd = pattern_file(SF_SIZE);
        sf_connect(tt, pr, NULL, NULL);
        ck_assert_int_eq(setsockopt(loop_transport_get_fd(pr->t), SOL_SOCKET, SO_SNDBUF, &small, sizeof(small)), 0);
        ck_assert_int_eq(loop_transport_pause_reading(pr->srv.conn.t), 0);
        ck_assert_int_eq(loop_sendfile(pr->t, *fd, 0, 0, &f), 0);
        tu_run_for(tt->loop, 20 * TU_MSEC);
        ck_assert_int_eq(loop_future_done(f), 0);
        return f;
}

/* While a sendfile is under way (the receiver does not read), writes and
 * another sendfile are -EBUSY; once it is over, they work. */
START_TEST(test_sendfile_busy) {
        struct tt tt;
        struct sfpair pr;
        loop_future_t *f = NULL, *g = NULL;
        struct loop_iovec iov[1] = {{"x", 1}};
        int fd;

        tt_begin(&tt);
        f = sf_start_stalled(&tt, &pr, &fd);
        ck_assert_int_eq(loop_transport_write(pr.t, "x", 1), -EBUSY);
        ck_assert_int_eq(loop_transport_writev(pr.t, iov, 1), -EBUSY);
        ck_assert_int_eq(loop_sendfile(pr.t, fd, 0, 0, &g), -EBUSY);
        ck_assert_ptr_eq(g, NULL);
        ck_assert_int_eq(loop_transport_resume_reading(pr.srv.conn.t), 0);
        ck_assert_uint_eq(sf_nbytes(&tt, f), SF_SIZE);
        loop_future_unref(f);
        ck_assert_int_eq(loop_transport_write(pr.t, "x", 1), 0);
        RUN_UNTIL(tt.loop, pr.srv.conn.nin >= SF_SIZE + 1);
        ck_assert_uint_eq(pr.srv.conn.nin, SF_SIZE + 1);
        ck_assert_uint_eq(pattern_mismatch(pr.srv.conn.in, SF_SIZE, 0), SF_SIZE);
        ck_assert_int_eq(pr.srv.conn.in[SF_SIZE], 'x');
        ck_assert_int_eq(close(fd), 0);
        sf_finish(&tt, &pr);
        tt_end(&tt, 0);
}
END_TEST

/* A file that is not regular is -EINVAL; a read pipe -EOPNOTSUPP. */
START_TEST(test_sendfile_refused) {
        struct tt tt;
        struct sfpair pr;
        struct rec r;
        loop_future_t *f = NULL;
        loop_transport_t *rt;
        int p[2], q[2], fd;

        tt_begin(&tt);
        fd = pattern_file(100);
        sf_connect(&tt, &pr, NULL, NULL);
        tu_pipe(p);
        ck_assert_int_eq(loop_sendfile(pr.t, p[0], 0, 0, &f), -EINVAL);
        ck_assert_int_eq(loop_sendfile(pr.t, -1, 0, 0, &f), -EINVAL);
        ck_assert_int_eq(loop_sendfile(pr.t, fd, -1, 0, &f), -EINVAL);
        ck_assert_int_eq(loop_sendfile(pr.t, fd, 0, 0, NULL), -EINVAL);
        ck_assert_int_eq(loop_sendfile(NULL, fd, 0, 0, &f), -EINVAL);
        ck_assert_ptr_eq(f, NULL);
        /* None of these blocked the transport. */
        ck_assert_int_eq(loop_transport_write(pr.t, "ok", 2), 0);
        RUN_UNTIL(tt.loop, pr.srv.conn.nin == 2);
        rec_init(&r);
        tu_pipe(q);
        rt = read_pipe(&tt, &r, q[0]);
        ck_assert_int_eq(loop_sendfile(rt, fd, 0, 0, &f), -EOPNOTSUPP);
        ck_assert_ptr_eq(f, NULL);
        ck_assert_int_eq(loop_transport_close(rt), 0);
        RUN_UNTIL(tt.loop, r.lost);
        ck_assert_int_eq(close(q[1]), 0);
        tu_close_pair(p);
        ck_assert_int_eq(close(fd), 0);
        rec_free(&r);
        sf_finish(&tt, &pr);
        tt_end(&tt, 0);
}
END_TEST

/* The transport aborted (_i 0) or closed (_i 1) during a sendfile: its
 * future fails (or is cancelled), and ends. */
START_TEST(test_sendfile_abort) {
        struct tt tt;
        struct sfpair pr;
        loop_future_t *f = NULL;
        int fd, e;

        tt_begin(&tt);
        f = sf_start_stalled(&tt, &pr, &fd);
        if (_i == 0)
                ck_assert_int_eq(loop_transport_abort(pr.t), 0);
        else
                ck_assert_int_eq(loop_transport_close(pr.t), 0);
        tu_run_for(tt.loop, 20 * TU_MSEC);
        ck_assert_msg(loop_future_done(f), "sendfile's future still pending after %s",
                      _i == 0 ? "abort" : "close");
        e = loop_future_error(f);
        ck_assert_msg(e < 0, "sendfile's future: %s", loop_strerror(e));
        loop_future_unref(f);
        ck_assert_int_eq(loop_transport_resume_reading(pr.srv.conn.t), 0);
        RUN_UNTIL(tt.loop, pr.cli.lost);
        ck_assert_int_eq(pr.cli.lost_error, 0);
        ck_assert_int_eq(close(fd), 0);
        sf_finish(&tt, &pr);
        tt_end(&tt, 0);
}
END_TEST

/* Cancelling the future stops the sending; the transport goes on. */
START_TEST(test_sendfile_cancel) {
        struct tt tt;
        struct sfpair pr;
        loop_future_t *f = NULL;
        int fd;
        size_t before;

        tt_begin(&tt);
        f = sf_start_stalled(&tt, &pr, &fd);
        ck_assert_int_eq(loop_future_cancel(f), 1);
        ck_assert_int_eq(loop_future_cancelled(f), 1);
        loop_future_unref(f);
        ck_assert_int_eq(loop_transport_resume_reading(pr.srv.conn.t), 0);
        /* Writes work again; the file stopped short of its end. */
        ck_assert_int_eq(loop_transport_write(pr.t, "end", 3), 0);
        ck_assert_int_eq(loop_transport_write_eof(pr.t), 0);
        RUN_UNTIL(tt.loop, pr.srv.conn.eof);
        before = pr.srv.conn.nin;
        ck_assert_uint_lt(before, SF_SIZE + 3);
        ck_assert_mem_eq(pr.srv.conn.in + before - 3, "end", 3);
        ck_assert_uint_eq(pattern_mismatch(pr.srv.conn.in, before - 3, 0), before - 3);
        ck_assert_int_eq(close(fd), 0);
        sf_finish(&tt, &pr);
        tt_end(&tt, 0);
}
END_TEST

/* write_eof during a sendfile is held back until the file is out: every
 * byte arrives, then the EOF. */
START_TEST(test_sendfile_write_eof) {
        struct tt tt;
        struct sfpair pr;
        loop_future_t *f = NULL;
        int fd;

        tt_begin(&tt);
        f = sf_start_stalled(&tt, &pr, &fd);
        ck_assert_int_eq(loop_transport_write_eof(pr.t), 0);
        ck_assert_int_eq(loop_transport_resume_reading(pr.srv.conn.t), 0);
        ck_assert_uint_eq(sf_nbytes(&tt, f), SF_SIZE);
        loop_future_unref(f);
        RUN_UNTIL(tt.loop, pr.srv.conn.eof);
        ck_assert_uint_eq(pr.srv.conn.nin, SF_SIZE);
        ck_assert_uint_eq(pattern_mismatch(pr.srv.conn.in, SF_SIZE, 0), SF_SIZE);
        ck_assert_int_eq(close(fd), 0);
        sf_finish(&tt, &pr);
        tt_end(&tt, 0);
}
END_TEST

/* The peer goes (its transport aborted) during a sendfile: the future
 * fails, connection_lost gets the error, and no SIGPIPE kills the run
 * (main() leaves SIGPIPE at its default). */
START_TEST(test_sendfile_peer_gone) {
        struct tt tt;
        struct sfpair pr;
        loop_future_t *f = NULL;
        int fd, e;

        tt_begin(&tt);
        f = sf_start_stalled(&tt, &pr, &fd);
        ck_assert_int_eq(loop_transport_abort(pr.srv.conn.t), 0);
        wait_done(tt.loop, f);
        e = loop_future_error(f);
        ck_assert_msg(e == -EPIPE || e == -ECONNRESET || e == -ECANCELED, "sendfile's future: %s",
                      loop_strerror(e));
        loop_future_unref(f);
        RUN_UNTIL(tt.loop, pr.cli.lost);
        ck_assert_msg(pr.cli.lost_error == -EPIPE || pr.cli.lost_error == -ECONNRESET,
                      "connection_lost(%s)", loop_strerror(pr.cli.lost_error));
        ck_assert_int_eq(close(fd), 0);
        sf_finish(&tt, &pr);
        tt_end(&tt, 0);
}
END_TEST

/* loop_close during a sendfile: the future is done (cancelled), the
 * transports end, nothing is left. */
START_TEST(test_sendfile_loop_close) {
        struct tt tt;
        struct sfpair pr;
        loop_future_t *f = NULL;
        int fd;

        tt_begin(&tt);
        f = sf_start_stalled(&tt, &pr, &fd);
        ck_assert_int_eq(loop_close(tt.loop), 0);
        ck_assert_int_eq(loop_future_done(f), 1);
        ck_assert_int_eq(loop_future_cancelled(f), 1);
        loop_future_unref(f);
        ck_assert_int_eq(pr.cli.lost, 1);
        ck_assert_int_eq(pr.cli.lost_error, -ECANCELED);
        pr.server = loop_server_unref(pr.server);
        rec_assert_sane(&pr.cli);
        rec_assert_sane(&pr.srv.conn);
        rec_free(&pr.cli);
        rec_free(&pr.srv.conn);
        ck_assert_int_eq(close(fd), 0);
        tt_end(&tt, 0);
}
END_TEST

/* TLS: the fallback path (pread and write), when OpenSSL and the openssl
 * command are there. */
static char g_pki[64];
static const char *g_no_pki;

static int sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int sh(const char *fmt, ...) {
        char cmd[1024];
        va_list ap;
        int n;

        va_start(ap, fmt);
        n = vsnprintf(cmd, sizeof(cmd), fmt, ap);
        va_end(ap);
        if (n < 0 || (size_t) n >= sizeof(cmd))
                return -1;
        return system(cmd) == 0 ? 0 : -1;
}

static void pki_create(void) {
        if (sh("openssl version >/dev/null 2>&1") < 0) {
                g_no_pki = "no `openssl` command to make a certificate";
                return;
        }
        snprintf(g_pki, sizeof(g_pki), "/tmp/check_endpoints.XXXXXX");
        if (!mkdtemp(g_pki)) {
                g_pki[0] = '\0';
                g_no_pki = "mkdtemp failed";
                return;
        }
        if (sh("cd %s && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout k.pem "
               "-out c.pem -days 2 -subj /CN=localhost >pki.log 2>&1",
               g_pki) < 0)
                g_no_pki = "`openssl` failed to make a certificate";
}

static void pki_remove(void) {
        if (g_pki[0])
                (void) sh("rm -rf %s", g_pki);
}

START_TEST(test_sendfile_tls) {
        struct tt tt;
        struct sfpair pr;
        loop_tls_context_t *srv = NULL, *cli = NULL;
        char cert[128], key[128];
        int r;

        if (g_no_pki) {
                printf("%s:%d: %s: SKIP: %s\n", __FILE__, __LINE__, __func__, g_no_pki);
                fflush(stdout);
                return;
        }
        snprintf(cert, sizeof(cert), "%s/c.pem", g_pki);
        snprintf(key, sizeof(key), "%s/k.pem", g_pki);
        r = loop_tls_context_new_server(cert, key, &srv);
        if (r == -EOPNOTSUPP) {
                printf("%s:%d: %s: SKIP: no TLS in this build\n", __FILE__, __LINE__, __func__);
                fflush(stdout);
                return;
        }
        ck_assert_msg(r == 0, "loop_tls_context_new_server: %s", loop_strerror(r));
        ck_assert_int_eq(loop_tls_context_new_client(&cli), 0);
        ck_assert_int_eq(loop_tls_context_set_verify(cli, 0), 0);
        tt_begin(&tt);
        sf_connect(&tt, &pr, srv, cli);
        ck_assert_ptr_ne(loop_transport_get_ssl(pr.t), NULL);
        sf_whole(&tt, &pr, 1024 * 1024 + 777);
        sf_finish(&tt, &pr);
        tt_end(&tt, 0);
        loop_tls_context_unref(srv);
        loop_tls_context_unref(cli);
}
END_TEST

/* ---- subprocesses ----------------------------------------------------- */

enum { SP_MADE = 1, SP_DATA, SP_PIPE_LOST, SP_EXITED, SP_LOST };

struct srec {
        loop_subprocess_t *p;
        int ev[64];
        int nev;
        int made, exited, lost, lost_error;
        int pipe_lost[3], pipe_lost_error[3];
        int after_lost, before_made, other;
        int rc_at_exited, has_rc_at_exited;
        loop_future_t *fut;
        int fut_done_at_made;
        char out[3][256];
        size_t nout[3];
        int bad_fd;
};

static void srec_event(struct srec *s, loop_subprocess_t *p, int ev) {
        if (s->lost)
                s->after_lost++;
        if (!s->made && ev != SP_MADE)
                s->before_made++;
        if (s->p && p != s->p)
                s->other++;
        if (ev == SP_DATA && s->nev > 0 && s->ev[s->nev - 1] == SP_DATA)
                return;
        if (s->nev < 64)
                s->ev[s->nev++] = ev;
}

static int sp_made(loop_subprocess_t *p, void *userdata) {
        struct srec *s = userdata;

        srec_event(s, p, SP_MADE);
        s->made++;
        s->p = loop_subprocess_ref(p);
        if (s->fut)
                s->fut_done_at_made = loop_future_done(s->fut);
        return 0;
}

static int sp_data(loop_subprocess_t *p, int fd, const void *data, size_t size, void *userdata) {
        struct srec *s = userdata;

        srec_event(s, p, SP_DATA);
        if (fd != 1 && fd != 2) {
                s->bad_fd++;
                return 0;
        }
        if (s->nout[fd] + size <= sizeof(s->out[fd]) - 1) {
                memcpy(s->out[fd] + s->nout[fd], data, size);
                s->nout[fd] += size;
        }
        return 0;
}

static int sp_pipe_lost(loop_subprocess_t *p, int fd, int error, void *userdata) {
        struct srec *s = userdata;

        srec_event(s, p, SP_PIPE_LOST);
        if (fd < 0 || fd > 2) {
                s->bad_fd++;
                return 0;
        }
        s->pipe_lost[fd]++;
        s->pipe_lost_error[fd] = error;
        return 0;
}

static int sp_exited(loop_subprocess_t *p, void *userdata) {
        struct srec *s = userdata;

        srec_event(s, p, SP_EXITED);
        s->exited++;
        s->has_rc_at_exited = loop_subprocess_get_returncode(p, &s->rc_at_exited);
        return 0;
}

static int sp_lost(loop_subprocess_t *p, int error, void *userdata) {
        struct srec *s = userdata;

        srec_event(s, p, SP_LOST);
        s->lost++;
        s->lost_error = error;
        return 0;
}

static const struct loop_subprocess_protocol_ops sp_ops = {
        .size = sizeof(struct loop_subprocess_protocol_ops),
        .connection_made = sp_made,
        .pipe_data_received = sp_data,
        .pipe_connection_lost = sp_pipe_lost,
        .process_exited = sp_exited,
        .connection_lost = sp_lost,
};

static void srec_assert_sane(const struct srec *s) {
        ck_assert_int_le(s->made, 1);
        ck_assert_int_le(s->lost, 1);
        ck_assert_int_le(s->exited, 1);
        for (int i = 0; i < 3; i++)
                ck_assert_int_le(s->pipe_lost[i], 1);
        ck_assert_int_eq(s->after_lost, 0);
        ck_assert_int_eq(s->before_made, 0);
        ck_assert_int_eq(s->other, 0);
        ck_assert_int_eq(s->bad_fd, 0);
}

/* The whole life: made first, the three pipes and the exit, lost last. */
static void srec_assert_complete(const struct srec *s) {
        srec_assert_sane(s);
        ck_assert_int_eq(s->made, 1);
        ck_assert_int_eq(s->exited, 1);
        ck_assert_int_eq(s->lost, 1);
        for (int i = 0; i < 3; i++)
                ck_assert_msg(s->pipe_lost[i] == 1, "pipe_connection_lost(%d) called %d times", i, s->pipe_lost[i]);
        ck_assert_int_ge(s->nev, 6);
        ck_assert_int_eq(s->ev[0], SP_MADE);
        ck_assert_int_eq(s->ev[s->nev - 1], SP_LOST);
        ck_assert_int_eq(s->has_rc_at_exited, 1);
}

static void srec_free(struct srec *s) {
        s->p = loop_subprocess_unref(s->p);
}

/* Starts argv[0] (through PATH if it has no slash); the subprocess with
 * connection_made already run. */
static loop_subprocess_t *spawn(struct tt *tt, struct srec *s, char *const argv[]) {
        loop_future_t *f = NULL;
        loop_subprocess_t *p;

        ck_assert_int_eq(loop_subprocess_exec(tt->loop, &sp_ops, s, argv[0], argv, NULL, &f), 0);
        ck_assert_ptr_ne(f, NULL);
        ck_assert_int_eq(s->made, 0);
        s->fut = f;
        wait_done(tt->loop, f);
        p = result_of(f);
        ck_assert_ptr_ne(p, NULL);
        ck_assert_int_eq(s->made, 1);
        ck_assert_ptr_eq(s->p, p);
        ck_assert_int_eq(s->fut_done_at_made, 0);
        s->fut = NULL;
        loop_future_unref(f);
        ck_assert_int_gt(loop_subprocess_get_pid(p), 0);
        return p;
}

START_TEST(test_sub_tr) {
        struct tt tt;
        struct srec s = {0};
        char *argv[] = {"/bin/sh", "-c", "tr a-z A-Z; exit 3", NULL};
        loop_subprocess_t *p;
        loop_transport_t *in;
        int rc = -1234, st;
        pid_t pid;

        tt_begin(&tt);
        p = spawn(&tt, &s, argv);
        pid = loop_subprocess_get_pid(p);
        ck_assert_int_eq(loop_subprocess_get_returncode(p, &rc), 0);
        ck_assert_int_eq(rc, -1234);
        ck_assert_int_eq(loop_subprocess_is_closing(p), 0);
        ck_assert_ptr_eq(loop_subprocess_get_pipe_transport(p, 3), NULL);
        ck_assert_ptr_eq(loop_subprocess_get_pipe_transport(p, -1), NULL);
        ck_assert_ptr_ne(loop_subprocess_get_pipe_transport(p, 1), NULL);
        ck_assert_ptr_ne(loop_subprocess_get_pipe_transport(p, 2), NULL);
        in = loop_subprocess_get_pipe_transport(p, 0);
        ck_assert_ptr_ne(in, NULL);
        ck_assert_int_eq(loop_transport_can_write_eof(in), 1);
        ck_assert_int_eq(loop_transport_write(in, "hello, ", 7), 0);
        ck_assert_int_eq(loop_transport_write(in, "world\n", 6), 0);
        ck_assert_int_eq(loop_transport_write_eof(in), 0);
        RUN_UNTIL(tt.loop, s.lost);
        srec_assert_complete(&s);
        ck_assert_int_eq(s.lost_error, 0);
        for (int i = 0; i < 3; i++)
                ck_assert_int_eq(s.pipe_lost_error[i], 0);
        ck_assert_uint_eq(s.nout[1], 13);
        ck_assert_mem_eq(s.out[1], "HELLO, WORLD\n", 13);
        ck_assert_uint_eq(s.nout[2], 0);
        ck_assert_int_eq(s.rc_at_exited, 3);
        ck_assert_int_eq(loop_subprocess_get_returncode(p, &rc), 1);
        ck_assert_int_eq(rc, 3);
        ck_assert_int_eq(loop_subprocess_is_closing(p), 1);
        for (int i = 0; i < 4; i++)
                ck_assert_ptr_eq(loop_subprocess_get_pipe_transport(p, i), NULL);
        /* Known to be gone: its pid may be someone else's by now. */
        ck_assert_int_eq(loop_subprocess_send_signal(p, SIGTERM), -ESRCH);
        ck_assert_int_eq(loop_subprocess_kill(p), -ESRCH);
        ck_assert_int_eq(loop_subprocess_terminate(p), -ESRCH);
        ck_assert_int_eq(loop_subprocess_close(p), 0);
        /* Reaped by the loop. */
        ck_assert_int_eq(waitpid(pid, &st, WNOHANG), -1);
        ck_assert_int_eq(errno, ECHILD);
        srec_free(&s);
        tt_end(&tt, 0);
        assert_no_zombie();
}
END_TEST

/* stdout and stderr apart, each with its fd. */
START_TEST(test_sub_stderr) {
        struct tt tt;
        struct srec s = {0};
        char *argv[] = {"/bin/sh", "-c", "echo out; echo err >&2", NULL};
        int rc = -1;

        tt_begin(&tt);
        spawn(&tt, &s, argv);
        RUN_UNTIL(tt.loop, s.lost);
        srec_assert_complete(&s);
        ck_assert_uint_eq(s.nout[1], 4);
        ck_assert_mem_eq(s.out[1], "out\n", 4);
        ck_assert_uint_eq(s.nout[2], 4);
        ck_assert_mem_eq(s.out[2], "err\n", 4);
        ck_assert_int_eq(loop_subprocess_get_returncode(s.p, &rc), 1);
        ck_assert_int_eq(rc, 0);
        ck_assert_int_eq(s.lost_error, 0);
        srec_free(&s);
        tt_end(&tt, 0);
        assert_no_zombie();
}
END_TEST

/* Killed by SIGKILL: return code -9. */
START_TEST(test_sub_kill) {
        struct tt tt;
        struct srec s = {0};
        char *argv[] = {"sleep", "100", NULL};
        loop_subprocess_t *p;
        int rc = 0;

        tt_begin(&tt);
        p = spawn(&tt, &s, argv);
        ck_assert_int_eq(loop_subprocess_kill(p), 0);
        ck_assert_int_eq(s.exited, 0);  /* from the loop */
        RUN_UNTIL(tt.loop, s.lost);
        srec_assert_complete(&s);
        ck_assert_int_eq(s.rc_at_exited, -SIGKILL);
        ck_assert_int_eq(loop_subprocess_get_returncode(p, &rc), 1);
        ck_assert_int_eq(rc, -9);
        ck_assert_int_eq(s.lost_error, 0);
        srec_free(&s);
        tt_end(&tt, 0);
        assert_no_zombie();
}
END_TEST

/* close() on a child that runs on kills it, and the subprocess ends. */
START_TEST(test_sub_close) {
        struct tt tt;
        struct srec s = {0};
        char *argv[] = {"sleep", "100", NULL};
        loop_subprocess_t *p;
        int rc = 0;

        tt_begin(&tt);
        p = spawn(&tt, &s, argv);
        ck_assert_int_eq(loop_subprocess_close(p), 0);
        ck_assert_int_eq(loop_subprocess_is_closing(p), 1);
        ck_assert_int_eq(loop_subprocess_close(p), 0);
        RUN_UNTIL(tt.loop, s.lost);
        srec_assert_complete(&s);
        ck_assert_int_eq(loop_subprocess_get_returncode(p, &rc), 1);
        ck_assert_int_eq(rc, -SIGKILL);
        ck_assert_int_eq(s.lost_error, 0);
        srec_free(&s);
        tt_end(&tt, 0);
        assert_no_zombie();
}
END_TEST

/* A program that does not exist: the call fails (or its future), nothing
 * is called, nothing leaks, no zombie. _i: a path, or a name for PATH. */
START_TEST(test_sub_missing) {
        struct tt tt;
        struct srec s = {0};
        char *argv_path[] = {"/nonexistent/check-endpoints-no-such-program", NULL};
        char *argv_name[] = {"check-endpoints-no-such-program", NULL};
        char **argv = _i ? argv_name : argv_path;
        loop_future_t *f = NULL;
        int r;

        tt_begin(&tt);
        r = loop_subprocess_exec(tt.loop, &sp_ops, &s, argv[0], argv, NULL, &f);
        if (r == 0 && (wait_done(tt.loop, f), loop_future_error(f) == 0)) {
                /* posix_spawn could not tell (valgrind runs it as a
                 * fork): the child exits at once with a status, never
                 * from a signal, and is reaped. */
                int rc = 0;
                loop_future_unref(f);
                RUN_UNTIL(tt.loop, s.lost);
                srec_assert_complete(&s);
                ck_assert_int_eq(loop_subprocess_get_returncode(s.p, &rc), 1);
                ck_assert_int_gt(rc, 0);
                printf("%s:%d: %s: note: posix_spawn did not report the missing program (status %d)\n", __FILE__,
                       __LINE__, __func__, rc);
                fflush(stdout);
                s.nev = 0;
        } else if (r == 0) {
                ck_assert_int_lt(loop_future_error(f), 0);
                loop_future_unref(f);
        } else {
                ck_assert_msg(r == -ENOENT, "loop_subprocess_exec: %s", loop_strerror(r));
                ck_assert_ptr_eq(f, NULL);
        }
        tu_run_for(tt.loop, 20 * TU_MSEC);
        ck_assert_int_eq(s.nev, 0);
        srec_free(&s);
        tt_end(&tt, 0);
        assert_no_zombie();
}
END_TEST

/* loop_close with a live subprocess: connection_lost(-ECANCELED), once,
 * last; the child is killed, as loop_subprocess_close() kills it, and
 * reaped (no zombie). _i 1: the caller holds no reference to the
 * subprocess across loop_close (the loop's hooks must not use it freed). */
START_TEST(test_sub_loop_close) {
        struct tt tt;
        struct srec s = {0};
        char *argv[] = {"sleep", "100", NULL};
        loop_subprocess_t *p;
        pid_t pid;
        int st = 0;

        tt_begin(&tt);
        p = spawn(&tt, &s, argv);
        pid = loop_subprocess_get_pid(p);
        if (_i == 1)
                s.p = loop_subprocess_unref(s.p);       /* spawn()'s future was the other */
        ck_assert_int_eq(loop_close(tt.loop), 0);
        ck_assert_int_eq(s.lost, 1);
        ck_assert_int_eq(s.lost_error, -ECANCELED);
        ck_assert_int_eq(s.ev[s.nev - 1], SP_LOST);
        ck_assert_int_eq(s.exited, 0);
        srec_assert_sane(&s);
        /* Reaped: not ours to wait for any more. */
        ck_assert_int_eq(waitpid(pid, &st, WNOHANG), -1);
        ck_assert_int_eq(errno, ECHILD);
        if (_i == 0) {
                int rc = 0;

                ck_assert_int_eq(loop_subprocess_is_closing(p), 1);
                ck_assert_int_eq(loop_subprocess_kill(p), -ESRCH);
                ck_assert_int_eq(loop_subprocess_get_returncode(p, &rc), 1);
                ck_assert_int_eq(rc, -SIGKILL);
        }
        srec_free(&s);
        tt_end(&tt, 0);
        assert_no_zombie();
}
END_TEST

static Suite *endpoints_suite(void) {
        Suite *s = suite_create("endpoints");
        TCase *tc;

        tc = tu_tcase(s, "read_pipe");
        tcase_add_loop_test(tc, test_rpipe_data, 0, 2);
        tcase_add_test(tc, test_rpipe_no_write);
        tcase_add_test(tc, test_rpipe_pause);
        tcase_add_test(tc, test_rpipe_bad_fd);

        tc = tu_tcase(s, "write_pipe");
        tcase_set_timeout(tc, 120);     /* 4 MiB read slowly, maybe under valgrind */
        tcase_add_test(tc, test_wpipe_flow);
        tcase_add_test(tc, test_wpipe_write_eof);
        tcase_add_test(tc, test_wpipe_epipe);
        tcase_add_test(tc, test_wpipe_reader_gone);

        tc = tu_tcase(s, "datagram");
        tcase_add_test(tc, test_dgram_echo);
        tcase_add_test(tc, test_dgram_ipv6);
        tcase_add_test(tc, test_dgram_errors);
        tcase_add_test(tc, test_dgram_bad_args);
        tcase_add_test(tc, test_dgram_refused);
        tcase_add_loop_test(tc, test_dgram_cancel, 0, 3);

        tc = tu_tcase(s, "sendfile");
        tcase_set_timeout(tc, 120);
        tcase_add_test(tc, test_sendfile_whole);
        tcase_add_test(tc, test_sendfile_range);
        tcase_add_test(tc, test_sendfile_busy);
        tcase_add_test(tc, test_sendfile_refused);
        tcase_add_loop_test(tc, test_sendfile_abort, 0, 2);
        tcase_add_test(tc, test_sendfile_cancel);
        tcase_add_test(tc, test_sendfile_write_eof);
        tcase_add_test(tc, test_sendfile_peer_gone);
        tcase_add_test(tc, test_sendfile_loop_close);
        tcase_add_test(tc, test_sendfile_tls);

        tc = tu_tcase(s, "subprocess");
        tcase_add_test(tc, test_sub_tr);
        tcase_add_test(tc, test_sub_stderr);
        tcase_add_test(tc, test_sub_kill);
        tcase_add_test(tc, test_sub_close);
        tcase_add_loop_test(tc, test_sub_missing, 0, 2);
        tcase_add_loop_test(tc, test_sub_loop_close, 0, 2);
        return s;
}

int main(void) {
        int r;

        /* A write to a closed pipe must fail a test, not kill the run:
         * SIGPIPE stays at its default, and the library must guard. */
        signal(SIGPIPE, SIG_DFL);
        pki_create();
        r = tu_run_suite(endpoints_suite());
        pki_remove();
        return r;
}
