/* SPDX-License-Identifier: MIT */
/*
 * I/O watchers (loop_add_io): conditions reported in one call (both ways,
 * hang-up, error), several watchers per descriptor, changing the mask,
 * enabling and disabling, removal and unref from callbacks, coexistence
 * with readers, descriptors closed behind the loop's back, regular files,
 * select's FD_SETSIZE, bad arguments, closed and inherited loops.
 * tests/run-backends reruns this once per backend.
 */
#ifndef _WIN32
#include <sys/select.h>
#include <sys/wait.h>
#endif

#ifndef _WIN32
#include <netinet/in.h>
#endif
#include <signal.h>
#include <stdbool.h>

#include "testutil.h"

/* ---- a recording watcher callback ----------------------------------------- */

struct wrec {
        int calls;
        int fd;                 /* the fd the callback was given */
        uint32_t last;          /* revents of the last call */
        uint32_t all;           /* every condition seen */
        loop_io_t *io;          /* the watcher the callback was given */
        int drain;              /* read everything on each call */
        int ret;                /* what the callback returns */
        /* Done from the callback: */
        loop_io_t *remove;      /* loop_io_remove() this one */
        loop_io_t *unref;       /* loop_io_unref() this one */
        loop_io_t *disable;     /* loop_io_set_enabled(0) this one */
        int remove_result;
};

static int wrec_cb(loop_io_t *io, int fd, uint32_t revents, void *userdata) {
        struct wrec *w = userdata;

        w->calls++;
        w->fd = fd;
        w->last = revents;
        w->all |= revents;
        w->io = io;
        if (w->drain)
                tu_drain(fd);
        if (w->remove) {
                w->remove_result = loop_io_remove(w->remove);
                w->remove = NULL;
        }
        if (w->disable) {
                ck_assert_int_eq(loop_io_set_enabled(w->disable, 0), 0);
                w->disable = NULL;
        }
        if (w->unref) {
                loop_io_t *u = w->unref;
                w->unref = NULL;
                loop_io_unref(u);
        }
        return w->ret;
}

/* ---- conditions --------------------------------------------------------------- */

/* A socket ready both ways is reported both ways in one call. */
START_TEST(test_both_ways) {
        loop_t *loop = tu_loop_new();
        struct wrec w = {.fd = -1};
        loop_io_t *io = NULL;
        int sv[2];

        tu_socketpair(sv);
        ck_assert_int_eq(loop_add_io(loop, sv[0], LOOP_IO_READABLE | LOOP_IO_WRITABLE, wrec_cb, &w, &io), 0);
        ck_assert_ptr_ne(io, NULL);
        /* Writable at once. */
        ck_assert_int_eq(loop_run_once(loop, 2 * TU_SEC), 1);
        ck_assert_int_eq(w.calls, 1);
        ck_assert_uint_eq(w.last, LOOP_IO_WRITABLE);
        ck_assert_int_eq(w.fd, sv[0]);
        ck_assert_ptr_eq(w.io, io);
        tu_write_byte(sv[1]);
        ck_assert_int_eq(loop_run_once(loop, 2 * TU_SEC), 1);
        ck_assert_int_eq(w.calls, 2);
        ck_assert_uint_eq(w.last, LOOP_IO_READABLE | LOOP_IO_WRITABLE);
        /* Level-triggered. */
        ck_assert_int_eq(loop_run_once(loop, 0), 1);
        ck_assert_uint_eq(w.last, LOOP_IO_READABLE | LOOP_IO_WRITABLE);
        ck_assert_int_eq(w.calls, 3);
        /* A mask of READABLE alone hears nothing of writability. */
        ck_assert_int_eq(loop_io_set_events(io, LOOP_IO_READABLE), 0);
        ck_assert_int_eq(loop_io_get_events(io), (int) LOOP_IO_READABLE);
        ck_assert_int_eq(loop_run_once(loop, 0), 1);
        ck_assert_uint_eq(w.last, LOOP_IO_READABLE);
        tu_drain(sv[0]);
        ck_assert_int_eq(loop_run_once(loop, 20 * TU_MSEC), 0);
        ck_assert_int_eq(w.calls, 4);
        ck_assert_int_eq(loop_io_remove(io), 1);
        ck_assert_int_eq(loop_io_remove(io), 0);
        ck_assert_ptr_eq(loop_io_unref(io), NULL);
        loop_unref(loop);
        tu_close_pair(sv);
}
END_TEST

/* _i: 0 a pipe, 1 a socketpair. The peer goes: HANGUP (and READABLE
 * where the kernel says so), whatever the mask. */
START_TEST(test_hangup) {
        loop_t *loop = tu_loop_new();
        struct wrec w = {.fd = -1};
        loop_io_t *io = NULL;
        int p[2];

        if (_i)
                tu_socketpair(p);
        else
                tu_pipe(p);
        ck_assert_int_eq(loop_add_io(loop, p[0], LOOP_IO_READABLE, wrec_cb, &w, &io), 0);
        ck_assert_int_eq(loop_run_once(loop, 20 * TU_MSEC), 0);
        ck_assert_int_eq(close(p[1]), 0);
        p[1] = -1;
        ck_assert_int_eq(loop_run_once(loop, 2 * TU_SEC), 1);
        ck_assert_int_eq(w.calls, 1);
        ck_assert_msg(w.last & LOOP_IO_HANGUP, "%s: revents %#x without HANGUP", tu_selector_name(loop), w.last);
        ck_assert_uint_eq(w.last & (LOOP_IO_ERROR | LOOP_IO_WRITABLE), 0);
        ck_assert_int_eq(loop_io_remove(io), 1);
        loop_io_unref(io);
        loop_unref(loop);
        tu_close_pair(p);
}
END_TEST

/* The write end of a full pipe whose read end went: ERROR, and not
 * WRITABLE (the pipe is full). */
START_TEST(test_error_pipe) {
        loop_t *loop = tu_loop_new();
        struct wrec w = {.fd = -1};
        loop_io_t *io = NULL;
        int p[2];

        tu_pipe(p);
        ck_assert_uint_gt(tu_fill(p[1]), 0);
        ck_assert_int_eq(loop_add_io(loop, p[1], LOOP_IO_WRITABLE, wrec_cb, &w, &io), 0);
        ck_assert_int_eq(loop_run_once(loop, 20 * TU_MSEC), 0);
        ck_assert_int_eq(close(p[0]), 0);
        p[0] = -1;
        ck_assert_int_eq(loop_run_once(loop, 2 * TU_SEC), 1);
        ck_assert_int_eq(w.calls, 1);
        ck_assert_msg(w.last & LOOP_IO_ERROR, "%s: revents %#x without ERROR", tu_selector_name(loop), w.last);
        ck_assert_uint_eq(w.last & (LOOP_IO_READABLE | LOOP_IO_WRITABLE), 0);
        loop_io_unref(io);
        ck_assert_int_eq(loop_run_once(loop, 20 * TU_MSEC), 0);
        ck_assert_int_eq(w.calls, 1);
        loop_unref(loop);
        tu_close_pair(p);
}
END_TEST

/* A connection refused: the socket has SO_ERROR set, and says ERROR. */
START_TEST(test_error_connect_refused) {
        loop_t *loop = tu_loop_new();
        struct wrec w = {.fd = -1};
        struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        socklen_t len = sizeof(sin);
        loop_io_t *io = NULL;
        int s, err = 0;

        /* A port nobody listens on: bound, then let go. */
        s = socket(AF_INET, SOCK_STREAM, 0);
        ck_assert_int_ge(s, 0);
        ck_assert_int_eq(bind(s, (struct sockaddr *) &sin, sizeof(sin)), 0);
        ck_assert_int_eq(getsockname(s, (struct sockaddr *) &sin, &len), 0);
        ck_assert_int_eq(close(s), 0);
        s = socket(AF_INET, SOCK_STREAM, 0);
        ck_assert_int_ge(s, 0);
        tu_set_nonblock(s);
        if (connect(s, (struct sockaddr *) &sin, sizeof(sin)) == 0 || errno != EINPROGRESS) {
                fprintf(stderr, "test_error_connect_refused: connect: %s, skipped\n", strerror(errno));
                ck_assert_int_eq(close(s), 0);
                loop_unref(loop);
                return;
        }
        ck_assert_int_eq(loop_add_io(loop, s, LOOP_IO_WRITABLE, wrec_cb, &w, &io), 0);
        tu_run_until(loop, &w.calls, 1, 2 * TU_SEC);
        ck_assert_int_eq(w.calls, 1);
        ck_assert_msg(w.last & LOOP_IO_ERROR, "%s: revents %#x without ERROR", tu_selector_name(loop), w.last);
        len = sizeof(err);
#ifdef _WIN32
        ck_assert_int_eq(getsockopt(s, SOL_SOCKET, SO_ERROR, (char *) &err, &len), 0);
        ck_assert_int_eq(err, WSAECONNREFUSED);
#else
        ck_assert_int_eq(getsockopt(s, SOL_SOCKET, SO_ERROR, &err, &len), 0);
        ck_assert_int_eq(err, ECONNREFUSED);
#endif
        loop_io_unref(io);
        loop_unref(loop);
        ck_assert_int_eq(close(s), 0);
}
END_TEST

/* A mask of 0 still hears errors and hang-ups, as poll(2) does; select
 * cannot wait for them alone (loop_add_io(3)). */
START_TEST(test_mask_zero) {
        loop_t *loop = tu_loop_new();
        struct wrec w = {.fd = -1};
        loop_io_t *io = NULL;
        int p[2];

        tu_pipe(p);
        ck_assert_int_eq(loop_add_io(loop, p[0], 0, wrec_cb, &w, &io), 0);
        tu_write_byte(p[1]);
        ck_assert_int_eq(loop_run_once(loop, 20 * TU_MSEC), 0);
        ck_assert_int_eq(w.calls, 0);
        tu_drain(p[0]);
        ck_assert_int_eq(close(p[1]), 0);
        p[1] = -1;
        if (tu_selector_is(loop, "select") || tu_selector_is(loop, "kqueue")) {
                ck_assert_int_eq(loop_run_once(loop, 20 * TU_MSEC), 0);
                ck_assert_int_eq(w.calls, 0);
        } else {
                ck_assert_int_eq(loop_run_once(loop, 2 * TU_SEC), 1);
                ck_assert_uint_eq(w.last, LOOP_IO_HANGUP);
        }
        loop_io_unref(io);
        loop_unref(loop);
        tu_close_pair(p);
}
END_TEST

/* ---- several watchers ------------------------------------------------------- */

/* Three masks on one descriptor: each called once per iteration with its
 * own share, in the order added. */
static int order[8], n_order;

static int order_cb(loop_io_t *io, int fd, uint32_t revents, void *userdata) {
        struct wrec *w = userdata;

        (void) io;
        (void) fd;
        if (n_order < 8)
                order[n_order++] = w->ret;      /* ret doubles as a name here */
        w->calls++;
        w->last = revents;
        return 0;
}

START_TEST(test_several_per_fd) {
        loop_t *loop = tu_loop_new();
        struct wrec a = {.ret = 0}, b = {.ret = 1}, c = {.ret = 2};
        loop_io_t *ia = NULL, *ib = NULL;
        int sv[2];

        n_order = 0;
        tu_socketpair(sv);
        ck_assert_int_eq(loop_add_io(loop, sv[0], LOOP_IO_READABLE, order_cb, &a, &ia), 0);
        ck_assert_int_eq(loop_add_io(loop, sv[0], LOOP_IO_WRITABLE, order_cb, &b, &ib), 0);
        ck_assert_int_eq(loop_add_io(loop, sv[0], LOOP_IO_READABLE | LOOP_IO_WRITABLE, order_cb, &c, NULL), 0);
        tu_write_byte(sv[1]);
        ck_assert_int_eq(loop_run_once(loop, 2 * TU_SEC), 3);
        ck_assert_int_eq(a.calls, 1);
        ck_assert_int_eq(b.calls, 1);
        ck_assert_int_eq(c.calls, 1);
        ck_assert_uint_eq(a.last, LOOP_IO_READABLE);
        ck_assert_uint_eq(b.last, LOOP_IO_WRITABLE);
        ck_assert_uint_eq(c.last, LOOP_IO_READABLE | LOOP_IO_WRITABLE);
        ck_assert_int_eq(n_order, 3);
        ck_assert_int_eq(order[0], 0);
        ck_assert_int_eq(order[1], 1);
        ck_assert_int_eq(order[2], 2);
        ck_assert_int_eq(loop_run_once(loop, 0), 3);
        ck_assert_int_eq(a.calls + b.calls + c.calls, 6);
        /* Independent: disabling one leaves the others. */
        ck_assert_int_eq(loop_io_set_enabled(ib, 0), 0);
        ck_assert_int_eq(loop_run_once(loop, 0), 2);
        ck_assert_int_eq(b.calls, 2);
        /* The metrics count the descriptor once. */
        struct loop_metrics m = {.size = sizeof(m)};
        ck_assert_int_eq(loop_get_metrics(loop, &m), 0);
        ck_assert_uint_eq(m.fds, 1);
        loop_io_unref(ia);
        loop_io_unref(ib);
        tu_drain(sv[0]);
        ck_assert_int_eq(loop_run_once(loop, 0), 1);    /* the floating one: writable */
        ck_assert_uint_eq(c.last, LOOP_IO_WRITABLE);
        loop_unref(loop);                               /* frees the floating one */
        tu_close_pair(sv);
}
END_TEST

/* ---- changing a watcher ----------------------------------------------------- */

START_TEST(test_set_events) {
        loop_t *loop = tu_loop_new();
        struct wrec w = {.fd = -1};
        loop_io_t *io = NULL;
        int sv[2];

        tu_socketpair(sv);
        tu_write_byte(sv[1]);
        ck_assert_int_eq(loop_add_io(loop, sv[0], LOOP_IO_READABLE, wrec_cb, &w, &io), 0);
        ck_assert_int_eq(loop_run_once(loop, 2 * TU_SEC), 1);
        ck_assert_uint_eq(w.last, LOOP_IO_READABLE);
        ck_assert_int_eq(loop_io_set_events(io, 0), 0);
        ck_assert_int_eq(loop_io_get_events(io), 0);
        ck_assert_int_eq(loop_io_get_enabled(io), 1);
        ck_assert_int_eq(loop_run_once(loop, 20 * TU_MSEC), 0);
        ck_assert_int_eq(w.calls, 1);
        ck_assert_int_eq(loop_io_set_events(io, LOOP_IO_WRITABLE), 0);
        ck_assert_int_eq(loop_run_once(loop, 2 * TU_SEC), 1);
        ck_assert_uint_eq(w.last, LOOP_IO_WRITABLE);
        /* ERROR and HANGUP may be asked for; they change nothing. */
        ck_assert_int_eq(loop_io_set_events(io, LOOP_IO_READABLE | LOOP_IO_HANGUP | LOOP_IO_ERROR), 0);
        ck_assert_int_eq(loop_io_get_events(io), (int) (LOOP_IO_READABLE | LOOP_IO_HANGUP | LOOP_IO_ERROR));
        ck_assert_int_eq(loop_run_once(loop, 2 * TU_SEC), 1);
        ck_assert_uint_eq(w.last, LOOP_IO_READABLE);
        ck_assert_int_eq(loop_io_set_events(io, 0x100), -EINVAL);
        ck_assert_int_eq(loop_io_get_events(io), (int) (LOOP_IO_READABLE | LOOP_IO_HANGUP | LOOP_IO_ERROR));
        ck_assert_int_eq(w.calls, 3);
        loop_io_unref(io);
        loop_unref(loop);
        tu_close_pair(sv);
}
END_TEST

START_TEST(test_enable_disable) {
        loop_t *loop = tu_loop_new();
        struct wrec w = {.fd = -1};
        loop_io_t *io = NULL;
        int sv[2];

        tu_socketpair(sv);
        tu_write_byte(sv[1]);
        ck_assert_int_eq(loop_add_io(loop, sv[0], LOOP_IO_READABLE, wrec_cb, &w, &io), 0);
        ck_assert_int_eq(loop_io_get_enabled(io), 1);
        ck_assert_int_eq(loop_io_set_enabled(io, 0), 0);
        ck_assert_int_eq(loop_io_get_enabled(io), 0);
        ck_assert_int_eq(loop_io_set_enabled(io, 0), 0);
        ck_assert_int_eq(loop_run_once(loop, 20 * TU_MSEC), 0);
        ck_assert_int_eq(w.calls, 0);
        ck_assert_int_eq(loop_io_set_enabled(io, 42), 0);
        ck_assert_int_eq(loop_io_get_enabled(io), 1);
        ck_assert_int_eq(loop_run_once(loop, 2 * TU_SEC), 1);
        ck_assert_int_eq(w.calls, 1);
        /* Off and on again within an iteration: still watched. */
        ck_assert_int_eq(loop_io_set_enabled(io, 0), 0);
        ck_assert_int_eq(loop_io_set_enabled(io, 1), 0);
        ck_assert_int_eq(loop_run_once(loop, 2 * TU_SEC), 1);
        ck_assert_int_eq(loop_io_set_enabled(io, 0), 0);
        ck_assert_int_eq(loop_run_once(loop, 0), 0);
        ck_assert_int_eq(loop_io_set_enabled(io, 1), 0);
        ck_assert_int_eq(loop_run_once(loop, 2 * TU_SEC), 1);
        ck_assert_int_eq(w.calls, 3);
        ck_assert_int_eq(loop_io_get_fd(io), sv[0]);
        ck_assert_ptr_eq(loop_io_get_loop(io), loop);
        loop_io_unref(io);
        loop_unref(loop);
        tu_close_pair(sv);
}
END_TEST

/* ---- removal and unref from callbacks ---------------------------------------- */

/* _i: 0 remove, 1 unref (the last reference), 2 remove a floating one. */
START_TEST(test_remove_self) {
        loop_t *loop = tu_loop_new();
        struct wrec w = {.fd = -1};
        loop_io_t *io = NULL;
        int sv[2];

        tu_socketpair(sv);
        tu_write_byte(sv[1]);
        ck_assert_int_eq(loop_add_io(loop, sv[0], LOOP_IO_READABLE, wrec_cb, &w, _i == 2 ? NULL : &io), 0);
        ck_assert_int_eq(loop_run_once(loop, 2 * TU_SEC), 1);
        ck_assert_int_eq(w.calls, 1);
        if (_i == 1)
                w.unref = w.io;
        else
                w.remove = w.io;
        ck_assert_int_eq(loop_run_once(loop, 2 * TU_SEC), 1);
        ck_assert_int_eq(w.calls, 2);
        if (_i != 1)
                ck_assert_int_eq(w.remove_result, 1);
        ck_assert_int_eq(loop_run_once(loop, 20 * TU_MSEC), 0);
        ck_assert_int_eq(w.calls, 2);
        if (_i == 0) {
                ck_assert_int_eq(loop_io_get_enabled(io), 0);
                ck_assert_ptr_eq(loop_io_get_loop(io), NULL);
                ck_assert_int_eq(loop_io_set_enabled(io, 1), -ESTALE);
                ck_assert_int_eq(loop_io_set_events(io, 0), -ESTALE);
                ck_assert_int_eq(loop_io_remove(io), 0);
                ck_assert_int_eq(loop_io_get_fd(io), sv[0]);
                loop_io_unref(io);
        }
        tu_assert_usable(loop);
        loop_unref(loop);
        tu_close_pair(sv);
}
END_TEST

/*
 * Two watchers ready in the same iteration, on one descriptor (_i even)
 * or two (_i odd); the first to run removes (_i 0, 1), unrefs (2, 3) or
 * disables (4, 5) the other, which then must not run.
 */
START_TEST(test_remove_other) {
        loop_t *loop = tu_loop_new();
        struct wrec a = {.fd = -1}, b = {.fd = -1};
        loop_io_t *ia = NULL, *ib = NULL;
        int s1[2], s2[2];
        int other_fd = _i % 2;
        int action = _i / 2;

        tu_socketpair(s1);
        tu_socketpair(s2);
        ck_assert_int_eq(loop_add_io(loop, s1[0], LOOP_IO_READABLE, wrec_cb, &a, &ia), 0);
        ck_assert_int_eq(loop_add_io(loop, other_fd ? s2[0] : s1[0], LOOP_IO_READABLE, wrec_cb, &b, &ib), 0);
        tu_write_byte(s1[1]);
        tu_write_byte(s2[1]);
        /* Make sure both are ready before the iteration that matters. */
        tu_sleep_ns(10 * TU_MSEC);
        /* Whichever runs first acts on the other. */
        if (action == 0) {
                a.remove = ib;
                b.remove = ia;
        } else if (action == 1) {
                a.unref = ib;
                b.unref = ia;
        } else {
                a.disable = ib;
                b.disable = ia;
        }
        ck_assert_int_eq(loop_run_once(loop, 2 * TU_SEC), 1);
        ck_assert_msg(a.calls + b.calls == 1, "%s: %d and %d calls", tu_selector_name(loop), a.calls, b.calls);
        if (!other_fd)
                ck_assert_int_eq(a.calls, 1);   /* the order added */
        struct wrec *ran = a.calls ? &a : &b;
        loop_io_t *survivor = a.calls ? ia : ib, *victim = a.calls ? ib : ia;
        if (action == 0)
                ck_assert_int_eq(ran->remove_result, 1);
        ran->remove = ran->unref = ran->disable = NULL;
        ck_assert_int_eq(loop_run_once(loop, 2 * TU_SEC), 1);
        ck_assert_int_eq(a.calls + b.calls, 2);
        ck_assert_int_eq(ran->calls, 2);
        if (action == 1) {
                /* Freed (ASan would say otherwise); only the survivor is left. */
                loop_io_unref(survivor);
        } else {
                loop_io_unref(survivor);
                loop_io_unref(victim);
        }
        loop_unref(loop);
        tu_close_pair(s1);
        tu_close_pair(s2);
}
END_TEST

/* ---- beside readers ------------------------------------------------------------ */

START_TEST(test_with_reader) {
        loop_t *loop = tu_loop_new();
        struct wrec w = {.fd = -1};
        int reads = 0;
        loop_io_t *io = NULL;
        int sv[2];

        tu_socketpair(sv);
        ck_assert_int_eq(loop_add_reader(loop, sv[0], tu_io_count_cb, &reads), 0);
        ck_assert_int_eq(loop_add_io(loop, sv[0], LOOP_IO_READABLE, wrec_cb, &w, &io), 0);
        ck_assert_int_eq(loop_run_once(loop, 20 * TU_MSEC), 0);
        tu_write_byte(sv[1]);
        ck_assert_int_eq(loop_run_once(loop, 2 * TU_SEC), 2);
        ck_assert_int_eq(reads, 1);
        ck_assert_int_eq(w.calls, 1);
        /* The reader goes: the watcher stays watched. */
        ck_assert_int_eq(loop_remove_reader(loop, sv[0]), 1);
        ck_assert_int_eq(loop_run_once(loop, 2 * TU_SEC), 1);
        ck_assert_int_eq(w.calls, 2);
        ck_assert_int_eq(reads, 1);
        tu_drain(sv[0]);
        ck_assert_int_eq(loop_run_once(loop, 20 * TU_MSEC), 0);
        tu_write_byte(sv[1]);
        ck_assert_int_eq(loop_run_once(loop, 2 * TU_SEC), 1);
        ck_assert_int_eq(w.calls, 3);
        /* The reader again, and the watcher goes: the reader stays watched. */
        ck_assert_int_eq(loop_add_reader(loop, sv[0], tu_io_count_cb, &reads), 0);
        ck_assert_int_eq(loop_io_remove(io), 1);
        ck_assert_int_eq(loop_run_once(loop, 2 * TU_SEC), 1);
        ck_assert_int_eq(reads, 2);
        tu_drain(sv[0]);
        ck_assert_int_eq(loop_run_once(loop, 20 * TU_MSEC), 0);
        tu_write_byte(sv[1]);
        ck_assert_int_eq(loop_run_once(loop, 2 * TU_SEC), 1);
        ck_assert_int_eq(reads, 3);
        ck_assert_int_eq(w.calls, 3);
        /* A writer beside a watcher asking for READABLE only. */
        int writes = 0;
        ck_assert_int_eq(loop_remove_reader(loop, sv[0]), 1);
        loop_io_unref(io);
        io = NULL;
        ck_assert_int_eq(loop_add_io(loop, sv[0], LOOP_IO_READABLE, wrec_cb, &w, &io), 0);
        ck_assert_int_eq(loop_add_writer(loop, sv[0], tu_io_count_cb, &writes), 0);
        ck_assert_int_eq(loop_run_once(loop, 2 * TU_SEC), 2);
        ck_assert_int_eq(writes, 1);
        ck_assert_uint_eq(w.last, LOOP_IO_READABLE);
        ck_assert_int_eq(loop_remove_writer(loop, sv[0]), 1);
        loop_io_unref(io);
        loop_unref(loop);
        tu_close_pair(sv);
}
END_TEST

/* A hang-up: the reader hears it (asyncio's mapping, unchanged), the
 * watcher hears HANGUP. */
START_TEST(test_hangup_with_reader_and_writer) {
        loop_t *loop = tu_loop_new();
        struct wrec w = {.fd = -1};
        int reads = 0, writes = 0;
        loop_io_t *io = NULL;
        int p[2];

        tu_pipe(p);
        ck_assert_int_eq(loop_add_reader(loop, p[0], tu_io_count_cb, &reads), 0);
        ck_assert_int_eq(loop_add_io(loop, p[0], LOOP_IO_READABLE, wrec_cb, &w, &io), 0);
        ck_assert_int_eq(close(p[1]), 0);
        p[1] = -1;
        ck_assert_int_eq(loop_run_once(loop, 2 * TU_SEC), 2);
        ck_assert_int_eq(reads, 1);
        ck_assert_uint_ne(w.last & LOOP_IO_HANGUP, 0);
        ck_assert_int_eq(writes, 0);
        ck_assert_int_eq(loop_remove_reader(loop, p[0]), 1);
        loop_io_unref(io);
        loop_unref(loop);
        tu_close_pair(p);
}
END_TEST

/* ---- closed behind the loop's back ------------------------------------------------ */

struct dead_rec {
        int fd;
        int reports;
        int error;
};

static void dead_handler(loop_t *loop, const struct loop_exception_context *ctx, void *userdata) {
        struct dead_rec *d = userdata;

        (void) loop;
        if (ctx->fd != d->fd)
                return;
        d->reports++;
        d->error = ctx->error;
}

static int read_cb(loop_io_t *io, int fd, uint32_t revents, void *userdata) {
        struct wrec *w = userdata;
        char c;

        (void) io;
        (void) revents;
        w->calls++;
        if (read(fd, &c, 1) < 0 && errno != EAGAIN)
                return -errno;
        return 0;
}

static int iterations_for(loop_t *loop, int64_t ns) {
        int64_t end = tu_now_ns() + ns;
        int n = 0;

        while (tu_now_ns() < end) {
                (void) loop_run_once(loop, 20 * TU_MSEC);
                n++;
        }
        return n;
}

/* The file lives on in a dup() and is readable: the exception handler is
 * told (fd, -EBADF), the watcher is disabled, the loop blocks again. */
START_TEST(test_closed_behind) {
        loop_t *loop = tu_loop_new();
        struct dead_rec d = {.fd = -1};
        struct wrec w = {.fd = -1}, other = {.fd = -1};
        loop_io_t *io = NULL, *io2 = NULL;
        int sv[2], keep, n;

        tu_socketpair(sv);
        d.fd = sv[0];
        ck_assert_int_eq(loop_set_exception_handler(loop, dead_handler, &d), 0);
        ck_assert_int_eq(loop_add_io(loop, sv[0], LOOP_IO_READABLE, read_cb, &w, &io), 0);
        ck_assert_int_eq(loop_add_io(loop, sv[0], LOOP_IO_READABLE, read_cb, &other, &io2), 0);
        ck_assert_int_ge(loop_run_once(loop, 0), 0);
        keep = dup(sv[0]);
        ck_assert_int_ge(keep, 0);
        ck_assert_int_eq(close(sv[0]), 0);
        tu_write_byte(sv[1]);
        n = iterations_for(loop, 200 * TU_MSEC);
        ck_assert_msg(n < 40, "%s: %d iterations in 200 ms: the loop spins", tu_selector_name(loop), n);
        ck_assert_msg(w.calls <= 3, "%s: the callback ran %d times", tu_selector_name(loop), w.calls);
        ck_assert_msg(d.reports >= 1 && d.reports <= 3, "%s: %d reports for fd %d", tu_selector_name(loop),
                      d.reports, d.fd);
        ck_assert_int_eq(d.error, -EBADF);
        ck_assert_int_eq(loop_io_get_enabled(io), 0);
        ck_assert_int_eq(loop_io_get_enabled(io2), 0);
        /* Disabled, not removed: the caller still holds them. */
        ck_assert_int_eq(loop_io_remove(io), 1);
        loop_io_unref(io);
        loop_io_unref(io2);
        tu_assert_usable(loop);
        loop_unref(loop);
        ck_assert_int_eq(close(keep), 0);
        ck_assert_int_eq(close(sv[1]), 0);
}
END_TEST

/* An error returned by the callback goes to the exception handler, with
 * the descriptor, as a reader's does. */
struct exc_rec {
        int calls;
        int fd;
        int error;
        char message[64];
};

static void exc_handler(loop_t *loop, const struct loop_exception_context *ctx, void *userdata) {
        struct exc_rec *e = userdata;

        (void) loop;
        e->calls++;
        e->fd = ctx->fd;
        e->error = ctx->error;
        snprintf(e->message, sizeof(e->message), "%s", ctx->message);
}

START_TEST(test_callback_error) {
        loop_t *loop = tu_loop_new();
        struct exc_rec e = {.fd = -2};
        struct wrec w = {.fd = -1, .ret = -EIO};
        loop_io_t *io = NULL;
        int sv[2];

        tu_socketpair(sv);
        ck_assert_int_eq(loop_set_exception_handler(loop, exc_handler, &e), 0);
        ck_assert_int_eq(loop_add_io(loop, sv[0], LOOP_IO_WRITABLE, wrec_cb, &w, &io), 0);
        ck_assert_int_eq(loop_run_once(loop, 2 * TU_SEC), 1);
        ck_assert_int_eq(e.calls, 1);
        ck_assert_int_eq(e.fd, sv[0]);
        ck_assert_int_eq(e.error, -EIO);
        ck_assert_str_eq(e.message, "Exception in callback");
        /* It stays. */
        ck_assert_int_eq(loop_run_once(loop, 2 * TU_SEC), 1);
        ck_assert_int_eq(w.calls, 2);
        loop_io_unref(io);
        loop_unref(loop);
        tu_close_pair(sv);
}
END_TEST

/* ---- regular files, select's limit, bad arguments ---------------------------------- */

START_TEST(test_regular_file) {
        loop_t *loop = tu_loop_new();
        struct wrec w = {.fd = -1}, r = {.fd = -1};
        loop_io_t *io = NULL, *ir = NULL;
        FILE *f = tmpfile();
        int fd;

        ck_assert_ptr_ne(f, NULL);
        fd = fileno(f);
#ifdef _WIN32
        /* Windows' select takes sockets only: a file (its handle, which is
         * what libloop's descriptors are there) is refused, clearly. */
        (void) ir;
        fd = (int) _get_osfhandle(fd);
        ck_assert_int_eq(loop_add_io(loop, fd, LOOP_IO_READABLE | LOOP_IO_WRITABLE, wrec_cb, &w, &io), -ENOTSOCK);
        ck_assert_ptr_eq(io, NULL);
        ck_assert_int_eq(loop_run_once(loop, 0), 0);
        ck_assert_int_eq(w.calls + r.calls, 0);
        loop_unref(loop);
        ck_assert_int_eq(fclose(f), 0);
        return;
#endif
        ck_assert_int_eq(loop_add_io(loop, fd, LOOP_IO_READABLE | LOOP_IO_WRITABLE, wrec_cb, &w, &io), 0);
        ck_assert_int_eq(loop_add_io(loop, fd, LOOP_IO_READABLE, wrec_cb, &r, &ir), 0);
        ck_assert_int_eq(loop_run_once(loop, 2 * TU_SEC), 2);
        ck_assert_int_eq(loop_run_once(loop, 2 * TU_SEC), 2);
        ck_assert_int_eq(w.calls, 2);
        ck_assert_uint_eq(w.last, LOOP_IO_READABLE | LOOP_IO_WRITABLE);
        ck_assert_int_eq(r.calls, 2);
        ck_assert_uint_eq(r.last, LOOP_IO_READABLE);
        ck_assert_int_eq(loop_io_set_enabled(io, 0), 0);
        ck_assert_int_eq(loop_io_set_enabled(ir, 0), 0);
        ck_assert_int_eq(loop_run_once(loop, 20 * TU_MSEC), 0);
        loop_io_unref(io);
        loop_io_unref(ir);
        loop_unref(loop);
        ck_assert_int_eq(fclose(f), 0);
}
END_TEST

START_TEST(test_high_fd) {
        loop_t *loop = tu_loop_new();
        struct wrec w = {.fd = -1};
        loop_io_t *io = NULL;
        long limit = tu_ensure_nofile(FD_SETSIZE + 16);
        int sv[2], high = FD_SETSIZE;

        if (limit < FD_SETSIZE + 1) {
                fprintf(stderr, "test_high_fd: RLIMIT_NOFILE %ld too low, skipped\n", limit);
                loop_unref(loop);
                return;
        }
        tu_socketpair(sv);
        if (dup2(sv[0], high) != high) {
                fprintf(stderr, "test_high_fd: dup2 to %d: %s, skipped\n", high, strerror(errno));
                tu_close_pair(sv);
                loop_unref(loop);
                return;
        }
        if (tu_selector_is(loop, "select")) {
                ck_assert_int_eq(loop_add_io(loop, high, LOOP_IO_READABLE, wrec_cb, &w, &io), -ERANGE);
                ck_assert_ptr_eq(io, NULL);
                tu_assert_usable(loop);
        } else {
                ck_assert_int_eq(loop_add_io(loop, high, LOOP_IO_READABLE, wrec_cb, &w, &io), 0);
                tu_write_byte(sv[1]);
                ck_assert_int_eq(loop_run_once(loop, 2 * TU_SEC), 1);
                ck_assert_int_eq(w.fd, high);
                loop_io_unref(io);
        }
        loop_unref(loop);
        ck_assert_int_eq(close(high), 0);
        tu_close_pair(sv);
}
END_TEST

START_TEST(test_bad_args) {
        loop_t *loop = tu_loop_new();
        struct wrec w = {.fd = -1};
        loop_io_t *io = NULL;
        int p[2], rfd;

        tu_pipe(p);
        ck_assert_int_eq(loop_add_io(NULL, p[0], LOOP_IO_READABLE, wrec_cb, &w, &io), -EINVAL);
        ck_assert_int_eq(loop_add_io(loop, p[0], LOOP_IO_READABLE, NULL, &w, &io), -EINVAL);
        ck_assert_int_eq(loop_add_io(loop, p[0], 0x10, wrec_cb, &w, &io), -EINVAL);
        ck_assert_int_eq(loop_add_io(loop, -1, LOOP_IO_READABLE, wrec_cb, &w, &io), -EBADF);
        ck_assert_ptr_eq(io, NULL);
        rfd = p[0];
        tu_close_pair(p);
        ck_assert_int_eq(loop_add_io(loop, rfd, LOOP_IO_READABLE, wrec_cb, &w, &io), -EBADF);
        ck_assert_int_eq(loop_add_io(loop, rfd, 0, wrec_cb, &w, NULL), -EBADF);
        ck_assert_ptr_eq(io, NULL);
        tu_assert_usable(loop);

        ck_assert_int_eq(loop_io_remove(NULL), -EINVAL);
        ck_assert_int_eq(loop_io_set_events(NULL, 0), -EINVAL);
        ck_assert_int_eq(loop_io_get_events(NULL), -EINVAL);
        ck_assert_int_eq(loop_io_set_enabled(NULL, 1), -EINVAL);
        ck_assert_int_eq(loop_io_get_enabled(NULL), -EINVAL);
        ck_assert_int_eq(loop_io_get_fd(NULL), -EINVAL);
        ck_assert_ptr_eq(loop_io_get_loop(NULL), NULL);
        ck_assert_ptr_eq(loop_io_ref(NULL), NULL);
        ck_assert_ptr_eq(loop_io_unref(NULL), NULL);
        ck_assert_int_eq(w.calls, 0);
        loop_unref(loop);
}
END_TEST

/* A watcher enabled again after its descriptor was closed: -EBADF, and it
 * stays disabled. */
START_TEST(test_enable_closed_fd) {
        loop_t *loop = tu_loop_new();
        struct wrec w = {.fd = -1};
        loop_io_t *io = NULL;
        int p[2];

        tu_pipe(p);
        ck_assert_int_eq(loop_add_io(loop, p[0], LOOP_IO_READABLE, wrec_cb, &w, &io), 0);
        ck_assert_int_eq(loop_io_set_enabled(io, 0), 0);
        ck_assert_int_eq(loop_run_once(loop, 0), 0);    /* the backend lets go */
        ck_assert_int_eq(close(p[0]), 0);
        ck_assert_int_eq(loop_io_set_enabled(io, 1), -EBADF);
        ck_assert_int_eq(loop_io_get_enabled(io), 0);
        p[0] = -1;
        loop_io_unref(io);
        tu_assert_usable(loop);
        loop_unref(loop);
        tu_close_pair(p);
}
END_TEST

/* Disabled, its number closed and given to another file, enabled again in
 * the same iteration: the new file is watched, not the old one (enabling
 * has the backend check which file the number names). */
START_TEST(test_reenable_reused) {
        loop_t *loop = tu_loop_new();
        struct wrec w = {.fd = -1, .drain = 1};
        loop_io_t *io = NULL;
        int a[2], b[2], num;

        tu_pipe(a);
        tu_pipe(b);
        num = a[0];
        ck_assert_int_eq(loop_add_io(loop, num, LOOP_IO_READABLE, wrec_cb, &w, &io), 0);
        ck_assert_int_eq(loop_run_once(loop, 0), 0);
        ck_assert_int_eq(loop_io_set_enabled(io, 0), 0);
        ck_assert_int_eq(dup2(b[0], num), num);         /* closes a's read end */
        ck_assert_int_eq(close(b[0]), 0);
        b[0] = num;
        a[0] = -1;
        ck_assert_int_eq(loop_io_set_enabled(io, 1), 0);
        tu_write_byte(b[1]);
        tu_run_until(loop, &w.calls, 1, 2 * TU_SEC);
        ck_assert_msg(w.calls == 1, "%s: the new file is not watched", tu_selector_name(loop));
        ck_assert_uint_eq(w.last, LOOP_IO_READABLE);
        loop_io_unref(io);
        loop_unref(loop);
        tu_close_pair(a);
        tu_close_pair(b);
}
END_TEST

/* loop_dump names the watchers. */
START_TEST(test_dump) {
        loop_t *loop = tu_loop_new();
        struct wrec w = {.fd = -1};
        loop_io_t *io = NULL;
        char buf[4096], want[64];
        FILE *f = tmpfile();
        size_t n;
        int sv[2];

        ck_assert_ptr_ne(f, NULL);
        tu_socketpair(sv);
        ck_assert_int_eq(loop_add_io(loop, sv[0], LOOP_IO_WRITABLE, wrec_cb, &w, &io), 0);
        ck_assert_int_eq(loop_io_set_enabled(io, 0), 0);
        ck_assert_int_eq(loop_dump(loop, fileno(f)), 0);
        rewind(f);
        n = fread(buf, 1, sizeof(buf) - 1, f);
        buf[n] = '\0';
        snprintf(want, sizeof(want), "fd %d ", sv[0]);
        ck_assert_msg(strstr(buf, want) && strstr(buf, "io_events=w io_disabled"), "dump: %s", buf);
        loop_io_unref(io);
        loop_unref(loop);
        ck_assert_int_eq(fclose(f), 0);
        tu_close_pair(sv);
}
END_TEST

/* ---- closed and inherited loops ---------------------------------------------------- */

START_TEST(test_closed_loop) {
        loop_t *loop = tu_loop_new();
        struct wrec w = {.fd = -1};
        loop_io_t *io = NULL;
        int sv[2];

        tu_socketpair(sv);
        ck_assert_int_eq(loop_add_io(loop, sv[0], LOOP_IO_READABLE, wrec_cb, &w, &io), 0);
        ck_assert_int_eq(loop_add_io(loop, sv[0], LOOP_IO_WRITABLE, wrec_cb, &w, NULL), 0);
        /* A queued call is dropped by the close. */
        ck_assert_int_eq(loop_close(loop), 0);
        ck_assert_int_eq(loop_io_set_enabled(io, 1), -ESHUTDOWN);
        ck_assert_int_eq(loop_io_set_events(io, 0), -ESHUTDOWN);
        ck_assert_int_eq(loop_io_remove(io), -ESHUTDOWN);
        ck_assert_int_eq(loop_io_get_enabled(io), 0);
        ck_assert_ptr_eq(loop_io_get_loop(io), NULL);
        ck_assert_int_eq(loop_add_io(loop, sv[0], LOOP_IO_READABLE, wrec_cb, &w, NULL), -ESHUTDOWN);
        loop_unref(loop);
        /* The watcher outlives its loop. */
        ck_assert_int_eq(loop_io_get_fd(io), sv[0]);
        ck_assert_int_eq(loop_io_set_enabled(io, 0), -ESHUTDOWN);
        ck_assert_ptr_eq(loop_io_ref(io), io);
        loop_io_unref(io);
        loop_io_unref(io);
        ck_assert_int_eq(w.calls, 0);
        tu_close_pair(sv);
}
END_TEST

START_TEST(test_fork_child) {
#ifdef _WIN32
        TU_SKIP_ON_WINDOWS("fork");
#else
        loop_t *loop = tu_loop_new();
        struct wrec w = {.fd = -1};
        loop_io_t *io = NULL, *gone = NULL;
        int sv[2], status;
        pid_t pid;

        tu_socketpair(sv);
        ck_assert_int_eq(loop_add_io(loop, sv[0], LOOP_IO_READABLE, wrec_cb, &w, &io), 0);
        ck_assert_int_eq(loop_add_io(loop, sv[0], LOOP_IO_READABLE, wrec_cb, &w, &gone), 0);
        ck_assert_int_eq(loop_run_once(loop, 0), 0);
        fflush(NULL);
        pid = fork();
        ck_assert_int_ge(pid, 0);
        if (pid == 0) {
                int bad = 0;

                alarm(10);
                bad |= loop_add_io(loop, sv[0], LOOP_IO_READABLE, wrec_cb, &w, NULL) != -ECHILD;
                bad |= (loop_io_set_enabled(io, 0) != -ECHILD) << 1;
                bad |= (loop_io_set_events(io, 0) != -ECHILD) << 2;
                bad |= (loop_io_remove(io) != -ECHILD) << 3;
                bad |= (loop_io_get_enabled(io) != -ECHILD) << 4;
                /* Letting go works, and touches nothing of the parent's. */
                loop_io_unref(gone);
                loop_close(loop);
                loop_io_unref(io);
                loop_unref(loop);
                _exit(bad);
        }
        ck_assert_int_eq(waitpid(pid, &status, 0), pid);
        ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child status %#x", status);
        /* The parent's watchers still work. */
        tu_write_byte(sv[1]);
        ck_assert_int_eq(loop_run_once(loop, 2 * TU_SEC), 2);
        ck_assert_int_eq(w.calls, 2);
        loop_io_unref(io);
        loop_io_unref(gone);
        loop_unref(loop);
        tu_close_pair(sv);
#endif
}
END_TEST

/* A floating watcher lives until the loop closes (ASan checks the rest). */
START_TEST(test_floating) {
        loop_t *loop = tu_loop_new();
        struct wrec w = {.fd = -1};
        int sv[2];

        tu_socketpair(sv);
        ck_assert_int_eq(loop_add_io(loop, sv[0], LOOP_IO_WRITABLE, wrec_cb, &w, NULL), 0);
        ck_assert_int_eq(loop_run_once(loop, 2 * TU_SEC), 1);
        /* A reference taken and dropped leaves it the loop's. */
        ck_assert_ptr_eq(loop_io_ref(w.io), w.io);
        loop_io_unref(w.io);
        ck_assert_int_eq(loop_run_once(loop, 2 * TU_SEC), 1);
        ck_assert_int_eq(w.calls, 2);
        loop_unref(loop);
        tu_close_pair(sv);
}
END_TEST

int main(void) {
        Suite *s = suite_create("watch");
        TCase *tc;

#ifndef _WIN32
        /* Ignore SIGPIPE: the error tests write nothing, but be safe. */
        signal(SIGPIPE, SIG_IGN);
#endif

        tc = tu_tcase(s, "conditions");
        tcase_add_test(tc, test_both_ways);
        tcase_add_loop_test(tc, test_hangup, 0, 2);
        tcase_add_test(tc, test_error_pipe);
        tcase_add_test(tc, test_error_connect_refused);
        tcase_add_test(tc, test_mask_zero);

        tc = tu_tcase(s, "watchers");
        tcase_add_test(tc, test_several_per_fd);
        tcase_add_test(tc, test_set_events);
        tcase_add_test(tc, test_enable_disable);
        tcase_add_loop_test(tc, test_remove_self, 0, 3);
        tcase_add_loop_test(tc, test_remove_other, 0, 6);
        tcase_add_test(tc, test_floating);

        tc = tu_tcase(s, "readers");
        tcase_add_test(tc, test_with_reader);
        tcase_add_test(tc, test_hangup_with_reader_and_writer);

        tc = tu_tcase(s, "errors");
        tcase_add_test(tc, test_closed_behind);
        tcase_add_test(tc, test_callback_error);
        tcase_add_test(tc, test_regular_file);
        tcase_add_test(tc, test_high_fd);
        tcase_add_test(tc, test_bad_args);
        tcase_add_test(tc, test_enable_closed_fd);
        tcase_add_test(tc, test_reenable_reused);
        tcase_add_test(tc, test_dump);
        tcase_add_test(tc, test_closed_loop);
        tcase_add_test(tc, test_fork_child);

        return tu_run_suite(s);
}
