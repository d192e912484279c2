/* SPDX-License-Identifier: MIT */
/*
 * The kqueue emulation (tests/kqueue/kqueue.c) against the behaviours the
 * FreeBSD kevent(2) manual page documents, one test per behaviour. Built
 * straight from kqueue.c (no libloop, no libkqueue.so) and run once by
 * tests/run-backends (a check-* name).
 */
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <poll.h>
#include <netinet/in.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>

#include <sys/event.h>

#include "testutil.h"

/* ---- helpers -------------------------------------------------------------- */

static int kq_new(void) {
        int kq = kqueue();

        ck_assert_int_ge(kq, 0);
        return kq;
}

/* Applies one change with no event list: 0 or the errno value. */
static int change(int kq, uintptr_t ident, short filter, unsigned short flags, unsigned int fflags, int64_t data,
                  void *udata) {
        struct kevent c;

        EV_SET(&c, ident, filter, flags, fflags, data, udata);
        if (kevent(kq, &c, 1, NULL, 0, NULL) == 0)
                return 0;
        ck_assert_int_ne(errno, 0);
        return errno;
}

static void change_ok(int kq, uintptr_t ident, short filter, unsigned short flags, unsigned int fflags,
                      int64_t data, void *udata) {
        int r = change(kq, ident, filter, flags, fflags, data, udata);

        ck_assert_msg(r == 0, "change of %d/%d: %s", (int) ident, filter, strerror(r));
}

/* kevent() with no changes and a timeout in nanoseconds (-1: none). */
static int wait_events(int kq, struct kevent *ev, int n, int64_t timeout_ns) {
        struct timespec ts = {.tv_sec = timeout_ns / TU_SEC, .tv_nsec = timeout_ns % TU_SEC};

        return kevent(kq, NULL, 0, ev, n, timeout_ns < 0 ? NULL : &ts);
}

static void assert_none(int kq) {
        struct kevent ev[4];

        ck_assert_int_eq(wait_events(kq, ev, 4, 0), 0);
}

static void assert_one(int kq, uintptr_t ident, short filter, struct kevent *out) {
        struct kevent ev[4];
        int n = wait_events(kq, ev, 4, 0);

        ck_assert_int_eq(n, 1);
        ck_assert_uint_eq(ev[0].ident, ident);
        ck_assert_int_eq(ev[0].filter, filter);
        ck_assert(!(ev[0].flags & EV_ERROR));
        if (out)
                *out = ev[0];
}

static bool fd_readable(int fd) {
        struct pollfd p = {.fd = fd, .events = POLLIN};

        return poll(&p, 1, 0) == 1 && (p.revents & POLLIN);
}

static void write_n(int fd, size_t n) {
        char buf[256];

        ck_assert_uint_le(n, sizeof(buf));
        memset(buf, 'x', n);
        ck_assert_int_eq(write(fd, buf, n), (ssize_t) n);
}

/* ---- the descriptor ------------------------------------------------------- */

START_TEST(test_kqueue_cloexec) {
        int kq = kq_new();

        ck_assert_int_eq(fcntl(kq, F_GETFD) & FD_CLOEXEC, FD_CLOEXEC);
        ck_assert_int_eq(close(kq), 0);
}
END_TEST

/* ---- EVFILT_READ / EVFILT_WRITE ------------------------------------------- */

START_TEST(test_read_pipe_data) {
        int kq = kq_new(), p[2], tag;
        struct kevent ev;

        tu_pipe(p);
        change_ok(kq, p[0], EVFILT_READ, EV_ADD, 0, 0, &tag);
        assert_none(kq);
        write_n(p[1], 5);
        assert_one(kq, p[0], EVFILT_READ, &ev);
        ck_assert_int_eq(ev.data, 5);
        ck_assert_ptr_eq(ev.udata, &tag);
        ck_assert(!(ev.flags & EV_EOF));
        tu_drain(p[0]);
        assert_none(kq);
        tu_close_pair(p);
        ck_assert_int_eq(close(kq), 0);
}
END_TEST

START_TEST(test_write_pipe_space) {
        int kq = kq_new(), p[2];
        struct kevent ev;
        int64_t empty;

        tu_pipe(p);
        change_ok(kq, p[1], EVFILT_WRITE, EV_ADD, 0, 0, NULL);
        assert_one(kq, p[1], EVFILT_WRITE, &ev);
        empty = ev.data;
        ck_assert_int_gt(empty, 0);
        write_n(p[1], 100);
        assert_one(kq, p[1], EVFILT_WRITE, &ev);
        ck_assert_int_eq(ev.data, empty - 100);
        tu_fill(p[1]);
        assert_none(kq);
        tu_drain(p[0]);
        assert_one(kq, p[1], EVFILT_WRITE, &ev);
        ck_assert_int_eq(ev.data, empty);
        tu_close_pair(p);
        ck_assert_int_eq(close(kq), 0);
}
END_TEST

START_TEST(test_socketpair_read_write) {
        int kq = kq_new(), sv[2];
        struct kevent ev[4];
        int n, got_r = 0, got_w = 0;

        tu_socketpair(sv);
        change_ok(kq, sv[0], EVFILT_READ, EV_ADD, 0, 0, NULL);
        change_ok(kq, sv[0], EVFILT_WRITE, EV_ADD, 0, 0, NULL);
        write_n(sv[1], 42);
        n = wait_events(kq, ev, 4, 0);
        ck_assert_int_eq(n, 2);
        for (int i = 0; i < n; i++) {
                ck_assert_uint_eq(ev[i].ident, (uintptr_t) sv[0]);
                if (ev[i].filter == EVFILT_READ) {
                        ck_assert_int_eq(ev[i].data, 42);
                        got_r++;
                } else {
                        ck_assert_int_eq(ev[i].filter, EVFILT_WRITE);
                        ck_assert_int_gt(ev[i].data, 0);
                        got_w++;
                }
        }
        ck_assert_int_eq(got_r, 1);
        ck_assert_int_eq(got_w, 1);
        tu_close_pair(sv);
        ck_assert_int_eq(close(kq), 0);
}
END_TEST

START_TEST(test_level_triggered_repeat) {
        int kq = kq_new(), p[2];
        struct kevent ev;

        tu_pipe(p);
        change_ok(kq, p[0], EVFILT_READ, EV_ADD, 0, 0, NULL);
        write_n(p[1], 3);
        for (int i = 0; i < 3; i++) {
                assert_one(kq, p[0], EVFILT_READ, &ev);
                ck_assert_int_eq(ev.data, 3);
        }
        tu_close_pair(p);
        ck_assert_int_eq(close(kq), 0);
}
END_TEST

START_TEST(test_ev_clear) {
        int kq = kq_new(), p[2];
        struct kevent ev;

        tu_pipe(p);
        change_ok(kq, p[0], EVFILT_READ, EV_ADD | EV_CLEAR, 0, 0, NULL);
        write_n(p[1], 3);
        assert_one(kq, p[0], EVFILT_READ, &ev);
        ck_assert_int_eq(ev.data, 3);
        ck_assert(ev.flags & EV_CLEAR);
        /* Nothing new: not again, though the data is still there. */
        assert_none(kq);
        assert_none(kq);
        write_n(p[1], 2);
        assert_one(kq, p[0], EVFILT_READ, &ev);
        ck_assert_int_eq(ev.data, 5);
        assert_none(kq);
        tu_close_pair(p);
        ck_assert_int_eq(close(kq), 0);
}
END_TEST

START_TEST(test_ev_oneshot) {
        int kq = kq_new(), p[2];

        tu_pipe(p);
        change_ok(kq, p[0], EVFILT_READ, EV_ADD | EV_ONESHOT, 0, 0, NULL);
        write_n(p[1], 1);
        assert_one(kq, p[0], EVFILT_READ, NULL);
        assert_none(kq);
        /* Deleted after it was returned. */
        ck_assert_int_eq(change(kq, p[0], EVFILT_READ, EV_DELETE, 0, 0, NULL), ENOENT);
        tu_close_pair(p);
        ck_assert_int_eq(close(kq), 0);
}
END_TEST

START_TEST(test_ev_dispatch) {
        int kq = kq_new(), p[2];

        tu_pipe(p);
        change_ok(kq, p[0], EVFILT_READ, EV_ADD | EV_DISPATCH, 0, 0, NULL);
        write_n(p[1], 1);
        assert_one(kq, p[0], EVFILT_READ, NULL);
        /* Disabled, not deleted. */
        assert_none(kq);
        change_ok(kq, p[0], EVFILT_READ, EV_ENABLE, 0, 0, NULL);
        assert_one(kq, p[0], EVFILT_READ, NULL);
        assert_none(kq);
        change_ok(kq, p[0], EVFILT_READ, EV_DELETE, 0, 0, NULL);
        tu_close_pair(p);
        ck_assert_int_eq(close(kq), 0);
}
END_TEST

START_TEST(test_disable_enable) {
        int kq = kq_new(), p[2];

        tu_pipe(p);
        change_ok(kq, p[0], EVFILT_READ, EV_ADD | EV_DISABLE, 0, 0, NULL);
        write_n(p[1], 1);
        assert_none(kq);
        change_ok(kq, p[0], EVFILT_READ, EV_ENABLE, 0, 0, NULL);
        assert_one(kq, p[0], EVFILT_READ, NULL);
        change_ok(kq, p[0], EVFILT_READ, EV_DISABLE, 0, 0, NULL);
        assert_none(kq);
        /* EV_ADD of an existing event enables it. */
        change_ok(kq, p[0], EVFILT_READ, EV_ADD, 0, 0, NULL);
        assert_one(kq, p[0], EVFILT_READ, NULL);
        tu_close_pair(p);
        ck_assert_int_eq(close(kq), 0);
}
END_TEST

START_TEST(test_eof_peer_close) {
        int kq = kq_new(), sv[2], p[2];
        struct kevent ev;

        tu_socketpair(sv);
        change_ok(kq, sv[0], EVFILT_READ, EV_ADD, 0, 0, NULL);
        write_n(sv[1], 3);
        ck_assert_int_eq(close(sv[1]), 0);
        sv[1] = -1;
        assert_one(kq, sv[0], EVFILT_READ, &ev);
        ck_assert(ev.flags & EV_EOF);
        ck_assert_int_eq(ev.data, 3);
        ck_assert_uint_eq(tu_drain(sv[0]), 3);
        /* Still returned at EOF, with data 0. */
        assert_one(kq, sv[0], EVFILT_READ, &ev);
        ck_assert(ev.flags & EV_EOF);
        ck_assert_int_eq(ev.data, 0);
        tu_close_pair(sv);

        /* A pipe whose writer is gone. */
        tu_pipe(p);
        change_ok(kq, p[0], EVFILT_READ, EV_ADD, 0, 0, NULL);
        ck_assert_int_eq(close(p[1]), 0);
        p[1] = -1;
        assert_one(kq, p[0], EVFILT_READ, &ev);
        ck_assert(ev.flags & EV_EOF);
        ck_assert_int_eq(ev.data, 0);
        tu_close_pair(p);
        ck_assert_int_eq(close(kq), 0);
}
END_TEST

START_TEST(test_write_eof_reader_gone) {
        int kq = kq_new(), p[2], sv[2];
        struct kevent ev;

        tu_pipe(p);
        change_ok(kq, p[1], EVFILT_WRITE, EV_ADD, 0, 0, NULL);
        assert_one(kq, p[1], EVFILT_WRITE, &ev);
        ck_assert(!(ev.flags & EV_EOF));
        ck_assert_int_eq(close(p[0]), 0);
        p[0] = -1;
        assert_one(kq, p[1], EVFILT_WRITE, &ev);
        ck_assert(ev.flags & EV_EOF);
        tu_close_pair(p);

        tu_socketpair(sv);
        change_ok(kq, sv[0], EVFILT_WRITE, EV_ADD, 0, 0, NULL);
        tu_fill(sv[0]);
        assert_none(kq);
        ck_assert_int_eq(close(sv[1]), 0);
        sv[1] = -1;
        assert_one(kq, sv[0], EVFILT_WRITE, &ev);
        ck_assert(ev.flags & EV_EOF);
        tu_close_pair(sv);
        ck_assert_int_eq(close(kq), 0);
}
END_TEST

/* A refused TCP connect: EV_EOF, and the socket error is left to the program. */
START_TEST(test_eof_keeps_socket_error) {
        int kq = kq_new(), s, c, err = 0;
        struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        socklen_t len = sizeof(sin);
        struct kevent ev[2];

        /* A port nobody listens on: bound, then closed. */
        s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        ck_assert_int_ge(s, 0);
        ck_assert_int_eq(bind(s, (struct sockaddr *) &sin, sizeof(sin)), 0);
        ck_assert_int_eq(getsockname(s, (struct sockaddr *) &sin, &len), 0);
        ck_assert_int_eq(close(s), 0);
        c = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        ck_assert_int_ge(c, 0);
        if (connect(c, (struct sockaddr *) &sin, sizeof(sin)) < 0)
                ck_assert_int_eq(errno, EINPROGRESS);
        change_ok(kq, c, EVFILT_WRITE, EV_ADD, 0, 0, NULL);
        ck_assert_int_eq(wait_events(kq, ev, 2, 5 * TU_SEC), 1);
        ck_assert_int_eq(ev[0].filter, EVFILT_WRITE);
        ck_assert(ev[0].flags & EV_EOF);
        len = sizeof(err);
        ck_assert_int_eq(getsockopt(c, SOL_SOCKET, SO_ERROR, &err, &len), 0);
        ck_assert_int_eq(err, ECONNREFUSED);
        ck_assert_int_eq(close(c), 0);
        ck_assert_int_eq(close(kq), 0);
}
END_TEST

START_TEST(test_regular_file) {
        char path[] = "/tmp/kqemu-XXXXXX";
        int kq = kq_new(), fd = mkstemp(path);
        struct kevent ev;
        int64_t t0;

        ck_assert_int_ge(fd, 0);
        ck_assert_int_eq(unlink(path), 0);
        write_n(fd, 10);
        ck_assert_int_eq(lseek(fd, 4, SEEK_SET), 4);
        change_ok(kq, fd, EVFILT_READ, EV_ADD, 0, 0, NULL);
        /* FreeBSD's vnode filter: data = size - offset. */
        assert_one(kq, fd, EVFILT_READ, &ev);
        ck_assert_int_eq(ev.data, 6);
        ck_assert_int_eq(lseek(fd, 0, SEEK_END), 10);
        t0 = tu_now_ns();
        ck_assert_int_eq(wait_events(kq, &ev, 1, 60 * TU_MSEC), 0);
        ck_assert_int_ge(tu_now_ns() - t0, 60 * TU_MSEC);
        change_ok(kq, fd, EVFILT_READ, EV_DELETE, 0, 0, NULL);
        change_ok(kq, fd, EVFILT_WRITE, EV_ADD, 0, 0, NULL);
        assert_one(kq, fd, EVFILT_WRITE, &ev);
        ck_assert_int_eq(ev.data, 0);
        ck_assert_int_eq(close(fd), 0);
        ck_assert_int_eq(close(kq), 0);
}
END_TEST

START_TEST(test_listen_socket) {
        int kq = kq_new(), l, c;
        struct sockaddr_un sun = {.sun_family = AF_UNIX};
        struct kevent ev;

        /* An abstract name: nothing to clean up. */
        snprintf(sun.sun_path + 1, sizeof(sun.sun_path) - 1, "kqemu-%d", (int) getpid());
        l = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        ck_assert_int_ge(l, 0);
        ck_assert_int_eq(bind(l, (struct sockaddr *) &sun, sizeof(sun)), 0);
        ck_assert_int_eq(listen(l, 8), 0);
        change_ok(kq, l, EVFILT_READ, EV_ADD, 0, 0, NULL);
        assert_none(kq);
        c = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        ck_assert_int_ge(c, 0);
        ck_assert_int_eq(connect(c, (struct sockaddr *) &sun, sizeof(sun)), 0);
        assert_one(kq, l, EVFILT_READ, &ev);
        ck_assert_int_eq(ev.data, 1);
        ck_assert_int_eq(close(c), 0);
        ck_assert_int_eq(close(l), 0);
        ck_assert_int_eq(close(kq), 0);
}
END_TEST

/* ---- change errors ---------------------------------------------------------- */

START_TEST(test_receipt) {
        int kq = kq_new(), p[2], closed;
        struct kevent ch[2], ev[4];
        int64_t t0;

        tu_pipe(p);
        closed = dup(p[0]);
        ck_assert_int_ge(closed, 0);
        ck_assert_int_eq(close(closed), 0);
        write_n(p[1], 1);
        EV_SET(&ch[0], p[0], EVFILT_READ, EV_ADD | EV_RECEIPT, 0, 0, &kq);
        EV_SET(&ch[1], closed, EVFILT_READ, EV_ADD | EV_RECEIPT, 0, 0, &kq);
        t0 = tu_now_ns();
        /* Entries for changes: returned without waiting, no events. */
        ck_assert_int_eq(kevent(kq, ch, 2, ev, 4, NULL), 2);
        ck_assert_int_lt(tu_now_ns() - t0, TU_SEC);
        ck_assert(ev[0].flags & EV_ERROR);
        ck_assert_int_eq(ev[0].data, 0);
        ck_assert_uint_eq(ev[0].ident, (uintptr_t) p[0]);
        ck_assert_int_eq(ev[0].filter, EVFILT_READ);
        ck_assert_ptr_eq(ev[0].udata, &kq);
        ck_assert(ev[1].flags & EV_ERROR);
        ck_assert_int_eq(ev[1].data, EBADF);
        ck_assert_uint_eq(ev[1].ident, (uintptr_t) closed);
        /* The successful one was added. */
        assert_one(kq, p[0], EVFILT_READ, NULL);
        tu_close_pair(p);
        ck_assert_int_eq(close(kq), 0);
}
END_TEST

START_TEST(test_error_entry_with_room) {
        int kq = kq_new(), p[2];
        struct kevent ch[3], ev[4];

        tu_pipe(p);
        write_n(p[1], 1);
        EV_SET(&ch[0], p[0], EVFILT_READ, EV_ADD, 0, 0, NULL);
        EV_SET(&ch[1], 777, EVFILT_USER, EV_DELETE, 0, 0, NULL);
        EV_SET(&ch[2], p[1], EVFILT_WRITE, EV_ADD, 0, 0, NULL);
        /* Only the failure gets an entry; no events are collected. */
        ck_assert_int_eq(kevent(kq, ch, 3, ev, 4, NULL), 1);
        ck_assert(ev[0].flags & EV_ERROR);
        ck_assert_int_eq(ev[0].data, ENOENT);
        ck_assert_uint_eq(ev[0].ident, 777);
        ck_assert_int_eq(ev[0].filter, EVFILT_USER);
        /* The changes around it were applied. */
        ck_assert_int_eq(wait_events(kq, ev, 4, 0), 2);
        tu_close_pair(p);
        ck_assert_int_eq(close(kq), 0);
}
END_TEST

START_TEST(test_error_no_room) {
        int kq = kq_new(), p[2];
        struct kevent ch[3], ev[4];

        tu_pipe(p);
        write_n(p[1], 1);
        EV_SET(&ch[0], p[0], EVFILT_READ, EV_ADD, 0, 0, NULL);
        EV_SET(&ch[1], 777, EVFILT_USER, EV_DELETE, 0, 0, NULL);
        EV_SET(&ch[2], p[1], EVFILT_WRITE, EV_ADD, 0, 0, NULL);
        errno = 0;
        ck_assert_int_eq(kevent(kq, ch, 3, ev, 0, NULL), -1);
        ck_assert_int_eq(errno, ENOENT);
        /* Before it: applied; after it: not. */
        ck_assert_int_eq(change(kq, p[1], EVFILT_WRITE, EV_DELETE, 0, 0, NULL), ENOENT);
        assert_one(kq, p[0], EVFILT_READ, NULL);
        tu_close_pair(p);
        ck_assert_int_eq(close(kq), 0);
}
END_TEST

START_TEST(test_enoent) {
        int kq = kq_new(), p[2];

        tu_pipe(p);
        ck_assert_int_eq(change(kq, p[0], EVFILT_READ, EV_DELETE, 0, 0, NULL), ENOENT);
        ck_assert_int_eq(change(kq, p[0], EVFILT_READ, EV_ENABLE, 0, 0, NULL), ENOENT);
        ck_assert_int_eq(change(kq, p[0], EVFILT_READ, EV_DISABLE, 0, 0, NULL), ENOENT);
        ck_assert_int_eq(change(kq, 5, EVFILT_USER, 0, NOTE_TRIGGER, 0, NULL), ENOENT);
        ck_assert_int_eq(change(kq, SIGUSR1, EVFILT_SIGNAL, EV_DELETE, 0, 0, NULL), ENOENT);
        ck_assert_int_eq(change(kq, (uintptr_t) getpid(), EVFILT_PROC, EV_DELETE, 0, 0, NULL), ENOENT);
        /* Deleted: gone. */
        change_ok(kq, p[0], EVFILT_READ, EV_ADD, 0, 0, NULL);
        change_ok(kq, p[0], EVFILT_READ, EV_DELETE, 0, 0, NULL);
        ck_assert_int_eq(change(kq, p[0], EVFILT_READ, EV_DELETE, 0, 0, NULL), ENOENT);
        tu_close_pair(p);
        ck_assert_int_eq(close(kq), 0);
}
END_TEST

START_TEST(test_ebadf) {
        int kq = kq_new(), p[2], closed;
        struct kevent ev;

        tu_pipe(p);
        closed = dup(p[0]);
        ck_assert_int_ge(closed, 0);
        ck_assert_int_eq(close(closed), 0);
        ck_assert_int_eq(change(kq, closed, EVFILT_READ, EV_ADD, 0, 0, NULL), EBADF);
        ck_assert_int_eq(change(kq, closed, EVFILT_WRITE, EV_ADD, 0, 0, NULL), EBADF);
        /* Bad queue descriptors: closed, or not a queue. */
        errno = 0;
        ck_assert_int_eq(kevent(closed, NULL, 0, &ev, 1, NULL), -1);
        ck_assert_int_eq(errno, EBADF);
        errno = 0;
        ck_assert_int_eq(kevent(p[0], NULL, 0, &ev, 1, NULL), -1);
        ck_assert_int_eq(errno, EBADF);
        errno = 0;
        ck_assert_int_eq(kevent(-1, NULL, 0, &ev, 1, NULL), -1);
        ck_assert_int_eq(errno, EBADF);
        tu_close_pair(p);
        ck_assert_int_eq(close(kq), 0);
        /* A queue closed by the program. */
        errno = 0;
        ck_assert_int_eq(kevent(kq, NULL, 0, &ev, 1, NULL), -1);
        ck_assert_int_eq(errno, EBADF);
}
END_TEST

START_TEST(test_einval) {
        int kq = kq_new();
        struct kevent ev;

        ck_assert_int_eq(change(kq, 0, -100, EV_ADD, 0, 0, NULL), EINVAL);
        ck_assert_int_eq(change(kq, 0, 3, EV_ADD, 0, 0, NULL), EINVAL);
        ck_assert_int_eq(change(kq, 0, EVFILT_SIGNAL, EV_ADD, 0, 0, NULL), EINVAL);
        ck_assert_int_eq(change(kq, NSIG + 5, EVFILT_SIGNAL, EV_ADD, 0, 0, NULL), EINVAL);
        errno = 0;
        ck_assert_int_eq(kevent(kq, NULL, -1, &ev, 1, NULL), -1);
        ck_assert_int_eq(errno, EINVAL);
        errno = 0;
        ck_assert_int_eq(kevent(kq, NULL, 0, &ev, -1, NULL), -1);
        ck_assert_int_eq(errno, EINVAL);
        ck_assert_int_eq(close(kq), 0);
}
END_TEST

/* ---- close() ---------------------------------------------------------------- */

START_TEST(test_close_removes_knotes) {
        int kq = kq_new(), p[2], rfd;

        tu_pipe(p);
        rfd = p[0];
        change_ok(kq, rfd, EVFILT_READ, EV_ADD, 0, 0, NULL);
        write_n(p[1], 1);
        assert_one(kq, rfd, EVFILT_READ, NULL);
        ck_assert_int_eq(close(rfd), 0);
        p[0] = -1;
        assert_none(kq);
        /* The number is closed: EBADF, not a stale event. */
        ck_assert_int_eq(change(kq, rfd, EVFILT_READ, EV_DELETE, 0, 0, NULL), EBADF);
        tu_close_pair(p);
        ck_assert_int_eq(close(kq), 0);
}
END_TEST

START_TEST(test_close_with_dup_no_spin) {
        int kq = kq_new(), sv[2], d, num;
        struct kevent ev[4];
        int64_t t0;

        tu_socketpair(sv);
        num = sv[0];
        change_ok(kq, num, EVFILT_READ, EV_ADD, 0, 0, NULL);
        change_ok(kq, num, EVFILT_WRITE, EV_ADD, 0, 0, NULL);
        write_n(sv[1], 1);
        ck_assert_int_eq(wait_events(kq, ev, 4, 0), 2);
        /* The file lives on in d: the events go all the same. */
        d = dup(num);
        ck_assert_int_ge(d, 0);
        ck_assert_int_eq(close(num), 0);
        sv[0] = -1;
        for (int i = 0; i < 2; i++) {
                t0 = tu_now_ns();
                ck_assert_int_eq(wait_events(kq, ev, 4, 50 * TU_MSEC), 0);
                ck_assert_int_ge(tu_now_ns() - t0, 40 * TU_MSEC);
                /* Activity on the surviving file wakes nothing up for good. */
                write_n(sv[1], 1);
        }
        ck_assert(!fd_readable(kq) || wait_events(kq, ev, 4, 0) == 0);
        t0 = tu_now_ns();
        ck_assert_int_eq(wait_events(kq, ev, 4, 50 * TU_MSEC), 0);
        ck_assert_int_ge(tu_now_ns() - t0, 40 * TU_MSEC);
        ck_assert(!fd_readable(kq));
        ck_assert_int_eq(close(d), 0);
        tu_close_pair(sv);
        ck_assert_int_eq(close(kq), 0);
}
END_TEST

START_TEST(test_number_reused) {
        int kq = kq_new(), p[2], sv[2], num;
        struct kevent ev;

        tu_pipe(p);
        tu_socketpair(sv);
        num = p[0];
        change_ok(kq, num, EVFILT_READ, EV_ADD, 0, 0, NULL);
        write_n(p[1], 1);
        /* num now names the socket: the pipe's event is gone. */
        ck_assert_int_eq(dup2(sv[0], num), num);
        p[0] = -1;
        assert_none(kq);
        write_n(sv[1], 7);
        assert_none(kq);
        ck_assert_int_eq(change(kq, num, EVFILT_READ, EV_DELETE, 0, 0, NULL), ENOENT);
        change_ok(kq, num, EVFILT_READ, EV_ADD, 0, 0, NULL);
        assert_one(kq, num, EVFILT_READ, &ev);
        ck_assert_int_eq(ev.data, 7);
        ck_assert_int_eq(close(num), 0);
        tu_close_pair(p);
        tu_close_pair(sv);
        ck_assert_int_eq(close(kq), 0);
}
END_TEST

/* ---- EVFILT_USER ------------------------------------------------------------ */

struct waiter {
        int kq;
        int n;
        struct kevent ev;
        int64_t waited;
};

static void *waiter_main(void *arg) {
        struct waiter *w = arg;
        int64_t t0 = tu_now_ns();
        struct timespec ts = {.tv_sec = 10};

        w->n = kevent(w->kq, NULL, 0, &w->ev, 1, &ts);
        w->waited = tu_now_ns() - t0;
        return NULL;
}

START_TEST(test_user_trigger_from_thread) {
        struct waiter w = {.kq = kq_new()};
        pthread_t t;

        change_ok(w.kq, 1, EVFILT_USER, EV_ADD | EV_CLEAR, 0, 0, &w);
        assert_none(w.kq);
        ck_assert_int_eq(pthread_create(&t, NULL, waiter_main, &w), 0);
        tu_sleep_ns(50 * TU_MSEC);
        change_ok(w.kq, 1, EVFILT_USER, 0, NOTE_TRIGGER, 0, &w);
        ck_assert_int_eq(pthread_join(t, NULL), 0);
        ck_assert_int_eq(w.n, 1);
        ck_assert_uint_eq(w.ev.ident, 1);
        ck_assert_int_eq(w.ev.filter, EVFILT_USER);
        ck_assert_ptr_eq(w.ev.udata, &w);
        ck_assert_int_lt(w.waited, 5 * TU_SEC);
        /* EV_CLEAR: returned once per trigger. */
        assert_none(w.kq);
        ck_assert_int_eq(close(w.kq), 0);
}
END_TEST

START_TEST(test_user_fflags) {
        int kq = kq_new();
        struct kevent ev;

        change_ok(kq, 2, EVFILT_USER, EV_ADD, NOTE_FFCOPY | 0x10, 0, NULL);
        assert_none(kq);
        change_ok(kq, 2, EVFILT_USER, 0, NOTE_TRIGGER | NOTE_FFOR | 0x3, 0, NULL);
        assert_one(kq, 2, EVFILT_USER, &ev);
        ck_assert_uint_eq(ev.fflags, 0x13);
        /* Without EV_CLEAR: triggered until deleted or cleared. */
        assert_one(kq, 2, EVFILT_USER, &ev);
        change_ok(kq, 2, EVFILT_USER, 0, NOTE_FFAND | 0x11, 0, NULL);
        assert_one(kq, 2, EVFILT_USER, &ev);
        ck_assert_uint_eq(ev.fflags, 0x11);
        change_ok(kq, 2, EVFILT_USER, 0, NOTE_FFCOPY | 0xabcdef, 0, NULL);
        assert_one(kq, 2, EVFILT_USER, &ev);
        ck_assert_uint_eq(ev.fflags, 0xabcdef);
        change_ok(kq, 2, EVFILT_USER, 0, NOTE_FFNOP | 0x1, 0, NULL);
        assert_one(kq, 2, EVFILT_USER, &ev);
        ck_assert_uint_eq(ev.fflags, 0xabcdef);
        /* A change with EV_CLEAR resets the trigger (FreeBSD). */
        change_ok(kq, 2, EVFILT_USER, EV_CLEAR, 0, 0, NULL);
        assert_none(kq);
        change_ok(kq, 2, EVFILT_USER, 0, NOTE_TRIGGER, 0, NULL);
        assert_one(kq, 2, EVFILT_USER, NULL);
        change_ok(kq, 2, EVFILT_USER, EV_DELETE, 0, 0, NULL);
        assert_none(kq);
        ck_assert_int_eq(close(kq), 0);
}
END_TEST

/* ---- EVFILT_SIGNAL ---------------------------------------------------------- */

static volatile sig_atomic_t prev_calls;

static void prev_handler(int sig) {
        (void) sig;
        prev_calls++;
}

START_TEST(test_signal_counts_with_handler) {
        int kq = kq_new();
        struct sigaction sa = {.sa_handler = prev_handler}, old, cur;
        struct kevent ev;

        sigemptyset(&sa.sa_mask);
        ck_assert_int_eq(sigaction(SIGUSR1, &sa, &old), 0);
        prev_calls = 0;
        change_ok(kq, SIGUSR1, EVFILT_SIGNAL, EV_ADD, 0, 0, NULL);
        assert_none(kq);
        ck_assert_int_eq(raise(SIGUSR1), 0);
        ck_assert_int_eq(raise(SIGUSR1), 0);
        assert_one(kq, SIGUSR1, EVFILT_SIGNAL, &ev);
        ck_assert_int_eq(ev.data, 2);
        ck_assert(ev.flags & EV_CLEAR);
        ck_assert_int_eq(prev_calls, 2);
        assert_none(kq);
        ck_assert_int_eq(raise(SIGUSR1), 0);
        assert_one(kq, SIGUSR1, EVFILT_SIGNAL, &ev);
        ck_assert_int_eq(ev.data, 1);
        ck_assert_int_eq(prev_calls, 3);
        /* The last watcher gone: the program's handler is back. */
        change_ok(kq, SIGUSR1, EVFILT_SIGNAL, EV_DELETE, 0, 0, NULL);
        ck_assert_int_eq(sigaction(SIGUSR1, NULL, &cur), 0);
        ck_assert(cur.sa_handler == prev_handler);
        ck_assert_int_eq(close(kq), 0);
        ck_assert_int_eq(sigaction(SIGUSR1, &old, NULL), 0);
}
END_TEST

static void *kill_later(void *arg) {
        (void) arg;
        tu_sleep_ns(50 * TU_MSEC);
        kill(getpid(), SIGUSR2);
        return NULL;
}

START_TEST(test_signal_ignored) {
        int kq = kq_new();
        struct sigaction sa = {.sa_handler = SIG_IGN}, old, cur;
        struct kevent ev;
        pthread_t t;

        sigemptyset(&sa.sa_mask);
        ck_assert_int_eq(sigaction(SIGUSR2, &sa, &old), 0);
        change_ok(kq, SIGUSR2, EVFILT_SIGNAL, EV_ADD, 0, 0, NULL);
        ck_assert_int_eq(raise(SIGUSR2), 0);
        ck_assert_int_eq(raise(SIGUSR2), 0);
        assert_one(kq, SIGUSR2, EVFILT_SIGNAL, &ev);
        ck_assert_int_eq(ev.data, 2);
        /* An ignored signal wakes a blocked kevent() with its event, not EINTR. */
        ck_assert_int_eq(pthread_create(&t, NULL, kill_later, NULL), 0);
        ck_assert_int_eq(wait_events(kq, &ev, 1, 10 * TU_SEC), 1);
        ck_assert_int_eq(ev.filter, EVFILT_SIGNAL);
        ck_assert_int_eq(ev.data, 1);
        ck_assert_int_eq(pthread_join(t, NULL), 0);
        change_ok(kq, SIGUSR2, EVFILT_SIGNAL, EV_DELETE, 0, 0, NULL);
        ck_assert_int_eq(sigaction(SIGUSR2, NULL, &cur), 0);
        ck_assert(cur.sa_handler == SIG_IGN);
        ck_assert_int_eq(close(kq), 0);
        ck_assert_int_eq(sigaction(SIGUSR2, &old, NULL), 0);
}
END_TEST

/* ---- EVFILT_PROC ------------------------------------------------------------ */

static pid_t fork_exit(int status, int64_t delay_ns) {
        pid_t pid = fork();

        ck_assert_int_ge(pid, 0);
        if (pid == 0) {
                if (delay_ns > 0)
                        tu_sleep_ns(delay_ns);
                _exit(status);
        }
        return pid;
}

START_TEST(test_proc_exit) {
        int kq = kq_new(), status = 0;
        pid_t pid = fork_exit(7, 50 * TU_MSEC);
        struct kevent ev;

        change_ok(kq, pid, EVFILT_PROC, EV_ADD, NOTE_EXIT | NOTE_EXITSTATUS, 0, &status);
        ck_assert_int_eq(wait_events(kq, &ev, 1, 10 * TU_SEC), 1);
        ck_assert_uint_eq(ev.ident, (uintptr_t) pid);
        ck_assert_int_eq(ev.filter, EVFILT_PROC);
        ck_assert(ev.fflags & NOTE_EXIT);
        ck_assert_int_eq(ev.flags & (EV_EOF | EV_ONESHOT), EV_EOF | EV_ONESHOT);
        ck_assert(WIFEXITED((int) ev.data));
        ck_assert_int_eq(WEXITSTATUS((int) ev.data), 7);
        ck_assert_ptr_eq(ev.udata, &status);
        /* Deleted, and the child was not reaped. */
        ck_assert_int_eq(change(kq, pid, EVFILT_PROC, EV_DELETE, 0, 0, NULL), ENOENT);
        ck_assert_int_eq(waitpid(pid, &status, 0), pid);
        ck_assert_int_eq(status, (int) ev.data);
        ck_assert_int_eq(close(kq), 0);
}
END_TEST

START_TEST(test_proc_killed_status) {
        int kq = kq_new(), status;
        pid_t pid = fork_exit(0, 10 * TU_SEC);
        struct kevent ev;

        change_ok(kq, pid, EVFILT_PROC, EV_ADD, NOTE_EXIT, 0, NULL);
        assert_none(kq);
        ck_assert_int_eq(kill(pid, SIGKILL), 0);
        ck_assert_int_eq(wait_events(kq, &ev, 1, 10 * TU_SEC), 1);
        ck_assert(WIFSIGNALED((int) ev.data));
        ck_assert_int_eq(WTERMSIG((int) ev.data), SIGKILL);
        ck_assert_int_eq(waitpid(pid, &status, 0), pid);
        ck_assert_int_eq(status, (int) ev.data);
        ck_assert_int_eq(close(kq), 0);
}
END_TEST

START_TEST(test_proc_zombie_fires_at_once) {
        int kq = kq_new(), status;
        pid_t pid = fork_exit(3, 0);
        siginfo_t si;
        struct kevent ev;

        /* A zombie before the EV_ADD. */
        ck_assert_int_eq(waitid(P_PID, (id_t) pid, &si, WEXITED | WNOWAIT), 0);
        change_ok(kq, pid, EVFILT_PROC, EV_ADD, NOTE_EXIT, 0, NULL);
        assert_one(kq, pid, EVFILT_PROC, &ev);
        ck_assert_int_eq(WEXITSTATUS((int) ev.data), 3);
        ck_assert_int_eq(waitpid(pid, &status, 0), pid);
        ck_assert_int_eq(close(kq), 0);
}
END_TEST

START_TEST(test_proc_esrch) {
        int kq = kq_new(), status;
        pid_t pid = fork_exit(0, 0);

        ck_assert_int_eq(waitpid(pid, &status, 0), pid);
        ck_assert_int_eq(change(kq, pid, EVFILT_PROC, EV_ADD, NOTE_EXIT, 0, NULL), ESRCH);
        ck_assert_int_eq(close(kq), 0);
}
END_TEST

/* EVFILT_READ on a pipe's write end whose reader left (poll: POLLERR for
 * good): never fires, and neither spins nor makes the queue readable. */
START_TEST(test_wrong_direction_no_spin) {
        int kq = kq_new(), p[2];
        struct kevent ev;
        int64_t t0;

        tu_pipe(p);
        change_ok(kq, p[1], EVFILT_READ, EV_ADD, 0, 0, NULL);
        change_ok(kq, p[0], EVFILT_WRITE, EV_ADD, 0, 0, NULL);
        assert_none(kq);
        ck_assert_int_eq(close(p[0]), 0);
        p[0] = -1;
        for (int i = 0; i < 2; i++) {
                t0 = tu_now_ns();
                ck_assert_int_eq(wait_events(kq, &ev, 1, 50 * TU_MSEC), 0);
                ck_assert_int_ge(tu_now_ns() - t0, 40 * TU_MSEC);
        }
        ck_assert(!fd_readable(kq));
        tu_close_pair(p);
        ck_assert_int_eq(close(kq), 0);
}
END_TEST

/* A queue within a queue (how libloop watches a per-child kqueue). */
START_TEST(test_kqueue_in_kqueue) {
        int outer = kq_new(), inner = kq_new();
        struct kevent ev;

        change_ok(inner, 4, EVFILT_USER, EV_ADD | EV_CLEAR, 0, 0, NULL);
        change_ok(outer, inner, EVFILT_READ, EV_ADD, 0, 0, NULL);
        assert_none(outer);
        change_ok(inner, 4, EVFILT_USER, 0, NOTE_TRIGGER, 0, NULL);
        assert_one(outer, inner, EVFILT_READ, NULL);
        assert_one(inner, 4, EVFILT_USER, &ev);
        assert_none(outer);
        ck_assert_int_eq(close(inner), 0);
        ck_assert_int_eq(close(outer), 0);
}
END_TEST

/* One kqueue descriptor closed and its number given to another: all such
 * descriptors share one inode, the emulation still tells them apart. */
START_TEST(test_number_reused_same_inode_kind) {
        int outer = kq_new(), a = kq_new(), b;

        change_ok(outer, a, EVFILT_READ, EV_ADD, 0, 0, NULL);
        ck_assert_int_eq(close(a), 0);
        b = kq_new();
        ck_assert_int_eq(b, a);
        ck_assert_int_eq(change(outer, b, EVFILT_READ, EV_DELETE, 0, 0, NULL), ENOENT);
        change_ok(outer, b, EVFILT_READ, EV_ADD, 0, 0, NULL);
        change_ok(b, 1, EVFILT_USER, EV_ADD, NOTE_TRIGGER, 0, NULL);
        assert_one(outer, b, EVFILT_READ, NULL);
        ck_assert_int_eq(close(b), 0);
        ck_assert_int_eq(close(outer), 0);
}
END_TEST

/* Closing the queue releases everything at once, as on BSD: the program
 * may count its descriptors right after. */
START_TEST(test_close_releases_descriptors) {
        int before = tu_count_fds(), kq[3], p[2], status;
        char path[] = "/tmp/kqemu-XXXXXX";
        int file = mkstemp(path);
        pid_t pid = fork_exit(0, 10 * TU_SEC);
        struct sigaction sa = {.sa_handler = SIG_IGN}, old;

        ck_assert_int_ge(file, 0);
        ck_assert_int_eq(unlink(path), 0);
        sigemptyset(&sa.sa_mask);
        ck_assert_int_eq(sigaction(SIGUSR2, &sa, &old), 0);
        tu_pipe(p);
        before += 3;
        for (int i = 0; i < 3; i++) {
                kq[i] = kq_new();
                change_ok(kq[i], 1, EVFILT_USER, EV_ADD, NOTE_TRIGGER, 0, NULL);
                change_ok(kq[i], SIGUSR2, EVFILT_SIGNAL, EV_ADD, 0, 0, NULL);
                change_ok(kq[i], file, EVFILT_READ, EV_ADD, 0, 0, NULL);
                change_ok(kq[i], p[0], EVFILT_READ, EV_ADD, 0, 0, NULL);
                change_ok(kq[i], pid, EVFILT_PROC, EV_ADD, NOTE_EXIT, 0, NULL);
        }
        for (int i = 0; i < 3; i++)
                ck_assert_int_eq(close(kq[i]), 0);
        ck_assert_int_eq(tu_count_fds(), before);
        ck_assert_int_eq(kill(pid, SIGKILL), 0);
        ck_assert_int_eq(waitpid(pid, &status, 0), pid);
        tu_close_pair(p);
        ck_assert_int_eq(close(file), 0);
        ck_assert_int_eq(sigaction(SIGUSR2, &old, NULL), 0);
}
END_TEST

/* A child's exit makes its own queue readable, and no other. */
START_TEST(test_proc_queue_pollable) {
        int ka = kq_new(), kb = kq_new(), fd[2], status;
        pid_t a, b;
        struct kevent ev;

        /* b first: it must not hold the pipe's write end. */
        b = fork_exit(0, 10 * TU_SEC);
        ck_assert_int_eq(pipe(fd), 0);
        a = fork();
        ck_assert_int_ge(a, 0);
        if (a == 0) {
                char c;
                close(fd[1]);
                (void) read(fd[0], &c, 1);
                _exit(5);
        }
        ck_assert_int_eq(close(fd[0]), 0);
        change_ok(ka, a, EVFILT_PROC, EV_ADD, NOTE_EXIT, 0, NULL);
        change_ok(kb, b, EVFILT_PROC, EV_ADD, NOTE_EXIT, 0, NULL);
        ck_assert(!fd_readable(ka));
        ck_assert(!fd_readable(kb));
        ck_assert_int_eq(close(fd[1]), 0);
        struct pollfd pf = {.fd = ka, .events = POLLIN};
        ck_assert_int_eq(poll(&pf, 1, 5000), 1);
        ck_assert(!fd_readable(kb));
        assert_one(ka, a, EVFILT_PROC, &ev);
        ck_assert_int_eq(WEXITSTATUS((int) ev.data), 5);
        ck_assert(!fd_readable(ka));
        ck_assert_int_eq(waitpid(a, &status, 0), a);
        ck_assert_int_eq(kill(b, SIGKILL), 0);
        ck_assert_int_eq(waitpid(b, &status, 0), b);
        ck_assert_int_eq(close(ka), 0);
        ck_assert_int_eq(close(kb), 0);
}
END_TEST

static volatile sig_atomic_t other_calls;

static void other_handler(int sig) {
        (void) sig;
        other_calls++;
}

/* The program replaces the handler while a queue counts the signal: seen
 * at the next kevent(), which puts the emulation's back in front of it. */
START_TEST(test_signal_handler_replaced) {
        int kq = kq_new();
        struct sigaction sa = {.sa_handler = prev_handler}, old;
        struct kevent ev;

        sigemptyset(&sa.sa_mask);
        ck_assert_int_eq(sigaction(SIGUSR1, &sa, &old), 0);
        change_ok(kq, SIGUSR1, EVFILT_SIGNAL, EV_ADD, 0, 0, NULL);
        sa.sa_handler = other_handler;
        ck_assert_int_eq(sigaction(SIGUSR1, &sa, NULL), 0);
        other_calls = 0;
        assert_none(kq);
        ck_assert_int_eq(raise(SIGUSR1), 0);
        assert_one(kq, SIGUSR1, EVFILT_SIGNAL, &ev);
        ck_assert_int_eq(ev.data, 1);
        ck_assert_int_eq(other_calls, 1);
        change_ok(kq, SIGUSR1, EVFILT_SIGNAL, EV_DELETE, 0, 0, NULL);
        ck_assert_int_eq(close(kq), 0);
        ck_assert_int_eq(sigaction(SIGUSR1, &old, NULL), 0);
}
END_TEST

/* ---- waiting ---------------------------------------------------------------- */

START_TEST(test_timeout_never_early) {
        int kq = kq_new(), p[2];
        struct kevent ev;
        int64_t t0;

        tu_pipe(p);
        change_ok(kq, p[0], EVFILT_READ, EV_ADD, 0, 0, NULL);
        static const int64_t waits[] = {1 * TU_MSEC, 30 * TU_MSEC, 100 * TU_MSEC, 1500 * TU_USEC};
        for (size_t i = 0; i < sizeof(waits) / sizeof(waits[0]); i++) {
                t0 = tu_now_ns();
                ck_assert_int_eq(wait_events(kq, &ev, 1, waits[i]), 0);
                ck_assert_int_ge(tu_now_ns() - t0, waits[i]);
        }
        /* {0, 0} polls. */
        t0 = tu_now_ns();
        ck_assert_int_eq(wait_events(kq, &ev, 1, 0), 0);
        ck_assert_int_lt(tu_now_ns() - t0, 500 * TU_MSEC);
        tu_close_pair(p);
        ck_assert_int_eq(close(kq), 0);
}
END_TEST

START_TEST(test_nevents_zero) {
        int kq = kq_new(), p[2];
        struct kevent ch;

        tu_pipe(p);
        write_n(p[1], 1);
        EV_SET(&ch, p[0], EVFILT_READ, EV_ADD, 0, 0, NULL);
        /* NULL timeout: applies the change and returns at once. */
        ck_assert_int_eq(kevent(kq, &ch, 1, NULL, 0, NULL), 0);
        assert_one(kq, p[0], EVFILT_READ, NULL);
        tu_close_pair(p);
        ck_assert_int_eq(close(kq), 0);
}
END_TEST

START_TEST(test_kqueue_fd_pollable) {
        int kq = kq_new(), p[2];
        struct kevent ev;

        tu_pipe(p);
        change_ok(kq, p[0], EVFILT_READ, EV_ADD, 0, 0, NULL);
        change_ok(kq, 9, EVFILT_USER, EV_ADD | EV_CLEAR, 0, 0, NULL);
        ck_assert(!fd_readable(kq));
        write_n(p[1], 1);
        ck_assert(fd_readable(kq));
        assert_one(kq, p[0], EVFILT_READ, NULL);
        /* Level-triggered and still true: still readable. */
        ck_assert(fd_readable(kq));
        /* Drained: quiet at once, before any other kevent() call. */
        tu_drain(p[0]);
        ck_assert(!fd_readable(kq));
        assert_none(kq);
        ck_assert(!fd_readable(kq));
        change_ok(kq, 9, EVFILT_USER, 0, NOTE_TRIGGER, 0, NULL);
        ck_assert(fd_readable(kq));
        assert_one(kq, 9, EVFILT_USER, &ev);
        ck_assert(!fd_readable(kq));
        tu_close_pair(p);
        ck_assert_int_eq(close(kq), 0);
}
END_TEST

START_TEST(test_fork_child_ebadf) {
        int kq = kq_new(), status;
        pid_t pid;

        change_ok(kq, 1, EVFILT_USER, EV_ADD, NOTE_TRIGGER, 0, NULL);
        pid = fork();
        ck_assert_int_ge(pid, 0);
        if (pid == 0) {
                struct kevent ev;
                int n = kevent(kq, NULL, 0, &ev, 1, NULL);
                /* Not inherited: the number is not open in the child. */
                _exit(n == -1 && errno == EBADF && fcntl(kq, F_GETFD) == -1 ? 0 : 1);
        }
        ck_assert_int_eq(waitpid(pid, &status, 0), pid);
        ck_assert(WIFEXITED(status));
        ck_assert_int_eq(WEXITSTATUS(status), 0);
        /* The parent's queue is untouched. */
        assert_one(kq, 1, EVFILT_USER, NULL);
        ck_assert_int_eq(close(kq), 0);
}
END_TEST

START_TEST(test_refuse_chr) {
        int kq = kq_new(), fd = open("/dev/null", O_RDWR | O_CLOEXEC);
        struct kevent ev;
        int64_t t0;

        ck_assert_int_ge(fd, 0);
        ck_assert_int_eq(setenv("KQUEUE_EMU_REFUSE_CHR", "1", 1), 0);
        ck_assert_int_eq(change(kq, fd, EVFILT_READ, EV_ADD, 0, 0, NULL), EINVAL);
        ck_assert_int_eq(change(kq, fd, EVFILT_WRITE, EV_ADD, 0, 0, NULL), EINVAL);
        ck_assert_int_eq(unsetenv("KQUEUE_EMU_REFUSE_CHR"), 0);
        /* Without it /dev/null (which epoll refuses) is watched, and ready at once. */
        change_ok(kq, fd, EVFILT_READ, EV_ADD, 0, 0, NULL);
        t0 = tu_now_ns();
        ck_assert_int_eq(wait_events(kq, &ev, 1, 5 * TU_SEC), 1);
        ck_assert_int_lt(tu_now_ns() - t0, TU_SEC);
        ck_assert_int_eq(ev.filter, EVFILT_READ);
        ck_assert_int_eq(close(fd), 0);
        ck_assert_int_eq(close(kq), 0);
}
END_TEST

/* ---- threads ---------------------------------------------------------------- */

struct hammer {
        int kq;
        int stop;
        int fails;
};

static void *trigger_main(void *arg) {
        struct hammer *h = arg;
        struct kevent c;

        EV_SET(&c, 3, EVFILT_USER, 0, NOTE_TRIGGER, 0, NULL);
        while (!__atomic_load_n(&h->stop, __ATOMIC_ACQUIRE))
                if (kevent(h->kq, &c, 1, NULL, 0, NULL) != 0)
                        __atomic_add_fetch(&h->fails, 1, __ATOMIC_RELAXED);
        return NULL;
}

/* Changes from one thread while another waits: no lost wake-up, no crash. */
START_TEST(test_threads_share_queue) {
        struct hammer h = {.kq = kq_new()};
        pthread_t t;
        struct kevent ev;
        int got = 0;

        change_ok(h.kq, 3, EVFILT_USER, EV_ADD | EV_CLEAR, 0, 0, NULL);
        ck_assert_int_eq(pthread_create(&t, NULL, trigger_main, &h), 0);
        for (int i = 0; i < 500; i++)
                got += wait_events(h.kq, &ev, 1, 5 * TU_SEC) == 1;
        __atomic_store_n(&h.stop, 1, __ATOMIC_RELEASE);
        ck_assert_int_eq(pthread_join(t, NULL), 0);
        ck_assert_int_eq(got, 500);
        ck_assert_int_eq(h.fails, 0);
        ck_assert_int_eq(close(h.kq), 0);
}
END_TEST

static Suite *kqueue_emu_suite(void) {
        Suite *s = suite_create("kqueue-emu");
        TCase *tc = tu_tcase(s, "kqueue-emu");

        tcase_add_test(tc, test_kqueue_cloexec);
        tcase_add_test(tc, test_read_pipe_data);
        tcase_add_test(tc, test_write_pipe_space);
        tcase_add_test(tc, test_socketpair_read_write);
        tcase_add_test(tc, test_level_triggered_repeat);
        tcase_add_test(tc, test_ev_clear);
        tcase_add_test(tc, test_ev_oneshot);
        tcase_add_test(tc, test_ev_dispatch);
        tcase_add_test(tc, test_disable_enable);
        tcase_add_test(tc, test_eof_peer_close);
        tcase_add_test(tc, test_write_eof_reader_gone);
        tcase_add_test(tc, test_eof_keeps_socket_error);
        tcase_add_test(tc, test_regular_file);
        tcase_add_test(tc, test_listen_socket);
        tcase_add_test(tc, test_receipt);
        tcase_add_test(tc, test_error_entry_with_room);
        tcase_add_test(tc, test_error_no_room);
        tcase_add_test(tc, test_enoent);
        tcase_add_test(tc, test_ebadf);
        tcase_add_test(tc, test_einval);
        tcase_add_test(tc, test_close_removes_knotes);
        tcase_add_test(tc, test_close_with_dup_no_spin);
        tcase_add_test(tc, test_number_reused);
        tcase_add_test(tc, test_user_trigger_from_thread);
        tcase_add_test(tc, test_user_fflags);
        tcase_add_test(tc, test_signal_counts_with_handler);
        tcase_add_test(tc, test_signal_ignored);
        tcase_add_test(tc, test_proc_exit);
        tcase_add_test(tc, test_proc_killed_status);
        tcase_add_test(tc, test_proc_zombie_fires_at_once);
        tcase_add_test(tc, test_proc_esrch);
        tcase_add_test(tc, test_timeout_never_early);
        tcase_add_test(tc, test_nevents_zero);
        tcase_add_test(tc, test_kqueue_fd_pollable);
        tcase_add_test(tc, test_fork_child_ebadf);
        tcase_add_test(tc, test_refuse_chr);
        tcase_add_test(tc, test_threads_share_queue);
        tcase_add_test(tc, test_wrong_direction_no_spin);
        tcase_add_test(tc, test_kqueue_in_kqueue);
        tcase_add_test(tc, test_number_reused_same_inode_kind);
        tcase_add_test(tc, test_close_releases_descriptors);
        tcase_add_test(tc, test_proc_queue_pollable);
        tcase_add_test(tc, test_signal_handler_replaced);
        return s;
}

int main(void) {
        return tu_run_suite(kqueue_emu_suite());
}
