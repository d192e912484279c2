/* SPDX-License-Identifier: MIT */
/*
 * Readers and writers on socketpairs and pipes, registration changes inside
 * an iteration, fd reuse, hang-ups, many fds, bad fds, and the selector
 * objects themselves. tests/run-backends reruns this once per backend.
 */
#ifndef _WIN32
#include <sys/select.h>
#endif

#ifndef _WIN32
#include <poll.h>
#endif
#include <stdbool.h>

#include "testutil.h"

/* ---- a recording I/O callback --------------------------------------- */

struct io_rec {
        loop_t *loop;
        int fd; /* the fd the callback was given */
        int count;
        int drain; /* read everything on each call */
};

static int rec_cb(loop_t *loop, int fd, void *userdata) {
        struct io_rec *r = userdata;

        r->loop = loop;
        r->fd = fd;
        r->count++;
        if (r->drain)
                tu_drain(fd);
        return 0;
}

/* ---- readers -------------------------------------------------------- */

static void check_reader_on(int rfd, int wfd) {
        loop_t *loop = tu_loop_new();
        struct io_rec r = {.fd = -1};

        ck_assert_int_eq(loop_add_reader(loop, rfd, rec_cb, &r), 0);
        /* Not before there is data. */
        ck_assert_int_eq(loop_run_once(loop, 0), 0);
        ck_assert_int_eq(loop_run_once(loop, 20 * TU_MSEC), 0);
        ck_assert_int_eq(r.count, 0);

        tu_write_byte(wfd);
        ck_assert_int_eq(loop_run_once(loop, 2 * TU_SEC), 1);
        ck_assert_int_eq(r.count, 1);
        ck_assert_int_eq(r.fd, rfd);
        ck_assert_ptr_eq(r.loop, loop);

        /* Level-triggered: still readable, fires again. */
        ck_assert_int_eq(loop_run_once(loop, 0), 1);
        ck_assert_int_eq(r.count, 2);

        /* Drained: quiet again. */
        ck_assert_uint_eq(tu_drain(rfd), 1);
        ck_assert_int_eq(loop_run_once(loop, 0), 0);
        ck_assert_int_eq(r.count, 2);

        ck_assert_int_eq(loop_remove_reader(loop, rfd), 1);
        ck_assert_int_eq(loop_remove_reader(loop, rfd), 0);
        tu_write_byte(wfd);
        ck_assert_int_eq(loop_run_once(loop, 0), 0);
        ck_assert_int_eq(r.count, 2);
        loop_unref(loop);
}

START_TEST(test_reader_socketpair) {
        int sv[2];

        tu_socketpair(sv);
        check_reader_on(sv[0], sv[1]);
        tu_close_pair(sv);
}
END_TEST

START_TEST(test_reader_pipe) {
        int p[2];

        tu_pipe(p);
        check_reader_on(p[0], p[1]);
        tu_close_pair(p);
}
END_TEST

/* Reader on wfd side's peer, writer on wfd; rfd drains what wfd filled. */
static void check_writer_on(int wfd, int rfd) {
        loop_t *loop = tu_loop_new();
        struct io_rec w = {.fd = -1};

        ck_assert_int_eq(loop_add_writer(loop, wfd, rec_cb, &w), 0);
        ck_assert_int_eq(loop_run_once(loop, 2 * TU_SEC), 1);
        ck_assert_int_eq(w.count, 1);
        ck_assert_int_eq(w.fd, wfd);

        /* Full: not writable, the writer stays quiet. */
        ck_assert_uint_gt(tu_fill(wfd), 0);
        ck_assert_int_eq(loop_run_once(loop, 0), 0);
        ck_assert_int_eq(loop_run_once(loop, 20 * TU_MSEC), 0);
        ck_assert_int_eq(w.count, 1);

        /* Room again: it fires. */
        ck_assert_uint_gt(tu_drain(rfd), 0);
        ck_assert_int_eq(loop_run_once(loop, 2 * TU_SEC), 1);
        ck_assert_int_eq(w.count, 2);

        ck_assert_int_eq(loop_remove_writer(loop, wfd), 1);
        ck_assert_int_eq(loop_remove_writer(loop, wfd), 0);
        ck_assert_int_eq(loop_run_once(loop, 0), 0);
        ck_assert_int_eq(w.count, 2);
        loop_unref(loop);
}

START_TEST(test_writer_socketpair) {
        int sv[2];

        tu_socketpair(sv);
        check_writer_on(sv[0], sv[1]);
        tu_close_pair(sv);
}
END_TEST

START_TEST(test_writer_pipe) {
        int p[2];

        tu_pipe(p);
        check_writer_on(p[1], p[0]);
        tu_close_pair(p);
}
END_TEST

START_TEST(test_remove_return_values) {
        loop_t *loop = tu_loop_new();
        struct io_rec r = {.fd = -1}, w = {.fd = -1};
        int sv[2];

        tu_socketpair(sv);
        ck_assert_int_eq(loop_remove_reader(loop, sv[0]), 0);
        ck_assert_int_eq(loop_remove_writer(loop, sv[0]), 0);

        ck_assert_int_eq(loop_add_reader(loop, sv[0], rec_cb, &r), 0);
        ck_assert_int_eq(loop_remove_writer(loop, sv[0]), 0);
        ck_assert_int_eq(loop_remove_reader(loop, sv[0]), 1);
        ck_assert_int_eq(loop_remove_reader(loop, sv[0]), 0);

        /* Reader and writer on one fd are independent. */
        ck_assert_int_eq(loop_add_reader(loop, sv[0], rec_cb, &r), 0);
        ck_assert_int_eq(loop_add_writer(loop, sv[0], rec_cb, &w), 0);
        tu_write_byte(sv[1]);
        ck_assert_int_eq(loop_run_once(loop, 2 * TU_SEC), 2);
        ck_assert_int_eq(r.count, 1);
        ck_assert_int_eq(w.count, 1);

        ck_assert_int_eq(loop_remove_writer(loop, sv[0]), 1);
        ck_assert_int_eq(loop_run_once(loop, 2 * TU_SEC), 1);
        ck_assert_int_eq(r.count, 2);
        ck_assert_int_eq(w.count, 1);

        ck_assert_int_eq(loop_add_writer(loop, sv[0], rec_cb, &w), 0);
        ck_assert_int_eq(loop_remove_reader(loop, sv[0]), 1);
        ck_assert_int_eq(loop_run_once(loop, 2 * TU_SEC), 1);
        ck_assert_int_eq(r.count, 2);
        ck_assert_int_eq(w.count, 2);
        ck_assert_int_eq(loop_remove_writer(loop, sv[0]), 1);
        ck_assert_int_eq(loop_remove_reader(loop, sv[0]), 0);
        ck_assert_int_eq(loop_remove_writer(loop, sv[0]), 0);
        loop_unref(loop);
        tu_close_pair(sv);
}
END_TEST

START_TEST(test_replace_reader) {
        loop_t *loop = tu_loop_new();
        struct io_rec r1 = {.fd = -1}, r2 = {.fd = -1};
        int sv[2];

        tu_socketpair(sv);
        /* Replaced before the loop ever ran. */
        ck_assert_int_eq(loop_add_reader(loop, sv[0], rec_cb, &r1), 0);
        ck_assert_int_eq(loop_add_reader(loop, sv[0], rec_cb, &r2), 0);
        tu_write_byte(sv[1]);
        ck_assert_int_eq(loop_run_once(loop, 2 * TU_SEC), 1);
        ck_assert_int_eq(r1.count, 0);
        ck_assert_int_eq(r2.count, 1);

        /* Replaced once registered with the kernel. */
        ck_assert_int_eq(loop_add_reader(loop, sv[0], rec_cb, &r1), 0);
        ck_assert_int_eq(loop_run_once(loop, 2 * TU_SEC), 1);
        ck_assert_int_eq(r1.count, 1);
        ck_assert_int_eq(r2.count, 1);

        /* Only one reader per fd: one removal removes it. */
        ck_assert_int_eq(loop_remove_reader(loop, sv[0]), 1);
        ck_assert_int_eq(loop_remove_reader(loop, sv[0]), 0);
        loop_unref(loop);
        tu_close_pair(sv);
}
END_TEST

START_TEST(test_replace_writer) {
        loop_t *loop = tu_loop_new();
        struct io_rec w1 = {.fd = -1}, w2 = {.fd = -1};
        int sv[2];

        tu_socketpair(sv);
        ck_assert_int_eq(loop_add_writer(loop, sv[0], rec_cb, &w1), 0);
        ck_assert_int_eq(loop_run_once(loop, 2 * TU_SEC), 1);
        ck_assert_int_eq(loop_add_writer(loop, sv[0], rec_cb, &w2), 0);
        ck_assert_int_eq(loop_run_once(loop, 2 * TU_SEC), 1);
        ck_assert_int_eq(w1.count, 1);
        ck_assert_int_eq(w2.count, 1);
        ck_assert_int_eq(loop_remove_writer(loop, sv[0]), 1);
        loop_unref(loop);
        tu_close_pair(sv);
}
END_TEST

/* ---- registration changes within an iteration --------------------------- */

struct swap {
        int fd;
        struct io_rec *rec;     /* NULL: remove only */
        bool remove_first;
};

static int swap_reader_cb(loop_t *loop, void *userdata) {
        struct swap *sw = userdata;

        if (sw->remove_first)
                ck_assert_int_eq(loop_remove_reader(loop, sw->fd), 1);
        if (sw->rec)
                ck_assert_int_eq(loop_add_reader(loop, sw->fd, rec_cb, sw->rec), 0);
        return 0;
}

/*
 * The descriptor is ready and its reader queued behind a callback that
 * replaces it (or removes and re-adds it, or removes it): the queued
 * reader does not run, is not counted, and the new one runs from the next
 * iteration on (asyncio cancels the old handle).
 */
START_TEST(test_changed_while_queued) {
        static const struct { bool remove_first, readd; } cases[] = {
                { false, true }, { true, true }, { true, false },
        };

        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
                loop_t *loop = tu_loop_new();
                struct io_rec r1 = {.fd = -1}, r2 = {.fd = -1};
                struct swap sw = {.rec = cases[i].readd ? &r2 : NULL, .remove_first = cases[i].remove_first};
                int sv[2];

                tu_socketpair(sv);
                sw.fd = sv[0];
                ck_assert_int_eq(loop_add_reader(loop, sv[0], rec_cb, &r1), 0);
                tu_write_byte(sv[1]);
                /* Registered and seen ready: run once with nothing else to do. */
                ck_assert_int_eq(loop_call_soon(loop, swap_reader_cb, &sw, NULL), 0);
                ck_assert_int_eq(loop_run_once(loop, 2 * TU_SEC), 1);
                ck_assert_int_eq(r1.count, 0);
                ck_assert_int_eq(r2.count, 0);
                if (cases[i].readd) {
                        ck_assert_int_eq(loop_run_once(loop, 2 * TU_SEC), 1);
                        ck_assert_int_eq(r2.count, 1);
                        ck_assert_int_eq(loop_remove_reader(loop, sv[0]), 1);
                } else {
                        ck_assert_int_eq(loop_run_once(loop, 0), 0);
                        ck_assert_int_eq(loop_remove_reader(loop, sv[0]), 0);
                }
                ck_assert_int_eq(r1.count, 0);
                loop_unref(loop);
                tu_close_pair(sv);
        }
}
END_TEST


struct mutual {
        int fd[2]; /* the two watched fds */
        int ran[2];
        int removed[2]; /* loop_remove_reader's result for the other one */
};

static int mutual_cb(loop_t *loop, int fd, void *userdata) {
        struct mutual *m = userdata;
        int me = fd == m->fd[0] ? 0 : 1;

        m->ran[me]++;
        m->removed[me] = loop_remove_reader(loop, m->fd[!me]);
        return 0;
}

/* Two fds ready at once; whichever callback runs first removes the other. */
START_TEST(test_removed_reader_never_runs) {
        loop_t *loop = tu_loop_new();
        struct mutual m = {.removed = {-100, -100}};
        int a[2], b[2], first, second;

        tu_socketpair(a);
        tu_socketpair(b);
        m.fd[0] = a[0];
        m.fd[1] = b[0];
        ck_assert_int_eq(loop_add_reader(loop, a[0], mutual_cb, &m), 0);
        ck_assert_int_eq(loop_add_reader(loop, b[0], mutual_cb, &m), 0);
        tu_write_byte(a[1]);
        tu_write_byte(b[1]);

        /* (the count of callbacks run is test_run_once_count's business) */
        ck_assert_int_ge(loop_run_once(loop, 2 * TU_SEC), 1);
        ck_assert_int_eq(m.ran[0] + m.ran[1], 1);
        first = m.ran[0] ? 0 : 1;
        second = !first;
        ck_assert_int_eq(m.removed[first], 1);

        /* Level-triggered: the survivor fires again, the removed one never. */
        ck_assert_int_eq(loop_run_once(loop, 0), 1);
        ck_assert_int_eq(m.ran[first], 2);
        ck_assert_int_eq(m.ran[second], 0);
        ck_assert_int_eq(m.removed[first], 0);
        ck_assert_int_eq(loop_remove_reader(loop, m.fd[first]), 1);
        ck_assert_int_eq(loop_remove_reader(loop, m.fd[second]), 0);
        loop_unref(loop);
        tu_close_pair(a);
        tu_close_pair(b);
}
END_TEST

struct remover {
        int fd;
        int reader_ret, writer_ret;
};

static int remove_both_cb(loop_t *loop, void *userdata) {
        struct remover *rm = userdata;

        rm->reader_ret = loop_remove_reader(loop, rm->fd);
        rm->writer_ret = loop_remove_writer(loop, rm->fd);
        return 0;
}

/*
 * A callback already in the ready queue removes a reader and a writer whose
 * fd becomes ready in the same iteration: their callbacks must not run.
 */
START_TEST(test_removed_by_earlier_callback) {
        loop_t *loop = tu_loop_new();
        struct io_rec r = {.fd = -1}, w = {.fd = -1};
        struct remover rm = {.reader_ret = -100, .writer_ret = -100};
        int sv[2];

        tu_socketpair(sv);
        rm.fd = sv[0];
        ck_assert_int_eq(loop_add_reader(loop, sv[0], rec_cb, &r), 0);
        ck_assert_int_eq(loop_add_writer(loop, sv[0], rec_cb, &w), 0);
        tu_write_byte(sv[1]);
        ck_assert_int_eq(loop_call_soon(loop, remove_both_cb, &rm, NULL), 0);
        ck_assert_int_ge(loop_run_once(loop, 2 * TU_SEC), 1);
        ck_assert_int_eq(rm.reader_ret, 1);
        ck_assert_int_eq(rm.writer_ret, 1);
        ck_assert_int_eq(r.count, 0);
        ck_assert_int_eq(w.count, 0);
        ck_assert_int_eq(loop_run_once(loop, 0), 0);
        ck_assert_int_eq(r.count, 0);
        ck_assert_int_eq(w.count, 0);
        loop_unref(loop);
        tu_close_pair(sv);
}
END_TEST

struct readd {
        int fd;
        struct io_rec *rec;
        int remove_ret, add_ret;
};

static int remove_readd_cb(loop_t *loop, void *userdata) {
        struct readd *ra = userdata;

        ra->remove_ret = loop_remove_reader(loop, ra->fd);
        ra->add_ret = loop_add_reader(loop, ra->fd, rec_cb, ra->rec);
        return 0;
}

START_TEST(test_remove_then_add) {
        loop_t *loop = tu_loop_new();
        struct io_rec r1 = {.fd = -1}, r2 = {.fd = -1}, r3 = {.fd = -1};
        struct readd ra = {.rec = &r2};
        int sv[2];

        tu_socketpair(sv);
        ra.fd = sv[0];

        /* add, remove, add before the loop ever ran */
        ck_assert_int_eq(loop_add_reader(loop, sv[0], rec_cb, &r1), 0);
        ck_assert_int_eq(loop_remove_reader(loop, sv[0]), 1);
        ck_assert_int_eq(loop_add_reader(loop, sv[0], rec_cb, &r1), 0);
        tu_write_byte(sv[1]);
        ck_assert_int_eq(loop_run_once(loop, 2 * TU_SEC), 1);
        ck_assert_int_eq(r1.count, 1);
        tu_drain(sv[0]);

        /* remove + add from a callback, once registered with the kernel */
        ck_assert_int_eq(loop_call_soon(loop, remove_readd_cb, &ra, NULL), 0);
        ck_assert_int_eq(loop_run_once(loop, 0), 1);
        ck_assert_int_eq(ra.remove_ret, 1);
        ck_assert_int_eq(ra.add_ret, 0);
        ck_assert_int_eq(loop_run_once(loop, 0), 0);
        tu_write_byte(sv[1]);
        ck_assert_int_eq(loop_run_once(loop, 2 * TU_SEC), 1);
        ck_assert_int_eq(r1.count, 1);
        ck_assert_int_eq(r2.count, 1);

        /*
         * remove + add (another callback) while the fd is ready in this very
         * iteration: the removed reader's event is dropped; the new reader
         * may run now or in the next iteration, but it runs.
         */
        ra.rec = &r3;
        ck_assert_int_eq(loop_call_soon(loop, remove_readd_cb, &ra, NULL), 0);
        ck_assert_int_ge(loop_run_once(loop, 2 * TU_SEC), 1);
        ck_assert_int_eq(r2.count, 1);
        ck_assert_int_ge(loop_run_once(loop, 2 * TU_SEC), 1);
        ck_assert_int_eq(r2.count, 1);
        ck_assert_int_ge(r3.count, 1);
        tu_drain(sv[0]);

        /* remove, run (applied), add again */
        ck_assert_int_eq(loop_remove_reader(loop, sv[0]), 1);
        ck_assert_int_eq(loop_run_once(loop, 0), 0);
        ck_assert_int_eq(loop_add_reader(loop, sv[0], rec_cb, &r1), 0);
        ck_assert_int_eq(loop_run_once(loop, 0), 0);
        tu_write_byte(sv[1]);
        ck_assert_int_eq(loop_run_once(loop, 2 * TU_SEC), 1);
        ck_assert_int_eq(r1.count, 2);

        ck_assert_int_eq(loop_remove_reader(loop, sv[0]), 1);
        loop_unref(loop);
        tu_close_pair(sv);
}
END_TEST

/*
 * An fd number is closed and reused by a new socket while the loop still
 * believes (lazily) something about the old one. Variants:
 *  0: add, remove, close, reopen, add (no iteration in between)
 *  1: add, run, remove, close, reopen, add
 *  2: add, run, remove, run, close, reopen, add
 *  3: add, run, close, remove, reopen, add (closed while registered)
 * (Not removing at all before reusing the number is outside the contract:
 * asyncio's selectors lose such an fd too.)
 */
static void check_fd_reuse(int variant, int writer) {
        loop_t *loop = tu_loop_new();
        struct io_rec r1 = {.fd = -1}, r2 = {.fd = -1};
        int (*add)(loop_t *, int, loop_io_callback_t, void *) = writer ? loop_add_writer : loop_add_reader;
        int (*rem)(loop_t *, int) = writer ? loop_remove_writer : loop_remove_reader;
        int sv[2], nv[2], old, ran;

        tu_socketpair(sv);
        old = sv[0];
        ck_assert_int_eq(add(loop, sv[0], rec_cb, &r1), 0);
        if (variant >= 1)
                ck_assert_int_eq(loop_run_once(loop, 0), writer ? 1 : 0);
        if (variant != 3)
                ck_assert_int_eq(rem(loop, sv[0]), 1);
        if (variant == 2)
                ck_assert_int_eq(loop_run_once(loop, 0), 0);
        tu_close_pair(sv);
        if (variant == 3)
                ck_assert_int_eq(rem(loop, old), 1);

        tu_socketpair(nv);
#ifdef _WIN32
        if (nv[0] != old && nv[1] != old) {
                loop_unref(loop);
                tu_close_pair(nv);
                TU_SKIP_ON_WINDOWS("the closed socket's number was not given again (Windows, unlike POSIX, "
                                   "does not hand out the lowest free number)");
        }
#endif
        ck_assert_msg(nv[0] == old || nv[1] == old, "fd %d was not reused (got %d, %d)", old, nv[0], nv[1]);
        if (nv[0] != old) {
                int t = nv[0];

                nv[0] = nv[1];
                nv[1] = t;
        }
        ck_assert_int_eq(add(loop, nv[0], rec_cb, &r2), 0);
        if (!writer)
                tu_write_byte(nv[1]);
        ran = loop_run_once(loop, 2 * TU_SEC);
        ck_assert_msg(r2.count == 1, "variant %d (%s): the new %s on reused fd %d did not fire", variant,
                      tu_selector_name(loop), writer ? "writer" : "reader", old);
        ck_assert_int_eq(ran, 1);
        ck_assert_int_eq(r2.fd, nv[0]);
        ck_assert_int_eq(r1.count, writer && variant >= 1 ? 1 : 0);
        ck_assert_int_eq(rem(loop, nv[0]), 1);
        loop_unref(loop);
        tu_close_pair(nv);
}

START_TEST(test_fd_reuse_reader) {
        check_fd_reuse(_i, 0);
}
END_TEST

START_TEST(test_fd_reuse_writer) {
        check_fd_reuse(_i, 1);
}
END_TEST

/* ---- descriptors closed behind the loop's back --------------------------- */

/*
 * loop_add_reader(3) asks callers to remove a callback before closing its
 * fd. When one does not, the loop must say so (once, through the exception
 * handler, naming the fd), drop what is dead, and go on blocking: on every
 * backend it used to spin (epoll and io_uring with the file alive in a
 * dup(), poll and select on POLLNVAL/EBADF).
 */
struct dead_rec {
        int fd;         /* the number watched */
        int writer;     /* the callback writes, else reads */
        int reports;    /* exception handler calls naming fd */
        int error;      /* the last such call's error */
        int runs;       /* callback runs */
};

static void dead_handler(loop_t *loop, const struct loop_exception_context *ctx, void *userdata) {
        struct dead_rec *d = userdata;

        (void) loop;
        if (ctx->fd != d->fd)
                return;
        d->reports++;
        d->error = ctx->error;
}

/* What a user's callback does: read or write, and fail as the system says. */
static int dead_io_cb(loop_t *loop, int fd, void *userdata) {
        struct dead_rec *d = userdata;
        char c = 'x';
        ssize_t n;

        (void) loop;
        d->runs++;
        n = d->writer ? write(fd, &c, 1) : read(fd, &c, 1);
        return n < 0 && errno != EAGAIN ? -errno : 0;
}

/* Loop iterations in about ns of wall time, each allowed to block 20 ms:
 * a loop that blocks makes a handful, one that spins thousands. */
static int iterations_for(loop_t *loop, int64_t ns) {
        int64_t end = tu_now_ns() + ns;
        int n = 0;

        while (tu_now_ns() < end) {
                (void) loop_run_once(loop, 20 * TU_MSEC);
                n++;
        }
        return n;
}

/* _i: 0 reader, 1 writer. The file lives on in a dup() and is ready. */
START_TEST(test_closed_behind_dup) {
        loop_t *loop = tu_loop_new();
        struct dead_rec d = {.writer = _i};
        int sv[2], keep;

        tu_socketpair(sv);
        d.fd = sv[0];
        ck_assert_int_eq(loop_set_exception_handler(loop, dead_handler, &d), 0);
        ck_assert_int_eq((_i ? loop_add_writer : loop_add_reader)(loop, sv[0], dead_io_cb, &d), 0);
        ck_assert_int_ge(loop_run_once(loop, 0), 0);
        d.runs = 0;
        keep = dup(sv[0]);
        ck_assert_int_ge(keep, 0);
        ck_assert_int_eq(close(sv[0]), 0);
        if (!_i)
                tu_write_byte(sv[1]);
        int n = iterations_for(loop, 200 * TU_MSEC);
        ck_assert_msg(n < 40, "%s: %d iterations in 200 ms: the loop spins", tu_selector_name(loop), n);
        ck_assert_msg(d.runs <= 3, "%s: the callback ran %d times", tu_selector_name(loop), d.runs);
        ck_assert_msg(d.reports >= 1 && d.reports <= 2, "%s: %d reports for fd %d", tu_selector_name(loop),
                      d.reports, d.fd);
        ck_assert_int_eq(d.error, -EBADF);
        /* Dropped: nothing is left to remove. */
        ck_assert_int_eq((_i ? loop_remove_writer : loop_remove_reader)(loop, d.fd), 0);
        tu_assert_usable(loop);
        loop_unref(loop);
        ck_assert_int_eq(close(keep), 0);
        ck_assert_int_eq(close(sv[1]), 0);
}
END_TEST

/* Closed without a removal, the number given to another file (its old
 * file alive in a dup() and readable), the reader added again for the new
 * one: only the new file's readiness runs it. */
START_TEST(test_closed_behind_reused) {
        loop_t *loop = tu_loop_new();
        struct dead_rec d = {.writer = 0};
        struct io_rec r = {.fd = -1, .drain = 1};
        int a[2], b[2], keep, n;

        tu_pipe(a);
        tu_pipe(b);
        d.fd = a[0];
        ck_assert_int_eq(loop_set_exception_handler(loop, dead_handler, &d), 0);
        ck_assert_int_eq(loop_add_reader(loop, a[0], dead_io_cb, &d), 0);
        ck_assert_int_ge(loop_run_once(loop, 0), 0);
        keep = dup(a[0]);
        ck_assert_int_ge(keep, 0);
        /* a[0] now names b's read end. */
        ck_assert_int_eq(dup2(b[0], a[0]), a[0]);
        ck_assert_int_eq(close(b[0]), 0);
        ck_assert_int_eq(loop_add_reader(loop, a[0], rec_cb, &r), 0);
        tu_write_byte(a[1]);            /* the old file: nobody's */
        n = iterations_for(loop, 100 * TU_MSEC);
        ck_assert_msg(n < 40, "%s: %d iterations in 100 ms: the loop spins", tu_selector_name(loop), n);
        ck_assert_msg(r.count == 0, "%s: the old file's readiness ran the new reader %d times",
                      tu_selector_name(loop), r.count);
        ck_assert_int_eq(d.runs, 0);
        ck_assert_int_le(d.reports, 1);
        tu_write_byte(b[1]);            /* the new file */
        tu_run_until(loop, &r.count, 1, 2 * TU_SEC);
        ck_assert_msg(r.count == 1, "%s: the new file is not watched", tu_selector_name(loop));
        ck_assert_int_eq(r.fd, a[0]);
        ck_assert_int_eq(loop_remove_reader(loop, a[0]), 1);
        loop_unref(loop);
        ck_assert_int_eq(close(keep), 0);
        tu_close_pair(a);
        ck_assert_int_eq(close(b[1]), 0);
}
END_TEST

/* Closed with no dup left: whatever the backend can tell, the loop blocks,
 * and the number can be watched again once reused. */
START_TEST(test_closed_behind_plain) {
        loop_t *loop = tu_loop_new();
        struct dead_rec d = {.writer = 0};
        struct io_rec r = {.fd = -1, .drain = 1};
        int a[2], b[2], n;

        tu_socketpair(a);
        d.fd = a[0];
        ck_assert_int_eq(loop_set_exception_handler(loop, dead_handler, &d), 0);
        ck_assert_int_eq(loop_add_reader(loop, a[0], dead_io_cb, &d), 0);
        ck_assert_int_ge(loop_run_once(loop, 0), 0);
        ck_assert_int_eq(close(a[0]), 0);
        /* Reaches the file only where the loop keeps it alive (io_uring's
         * poll request holds it); elsewhere the peer is gone. */
        (void) send(a[1], "x", 1, MSG_NOSIGNAL);
        n = iterations_for(loop, 100 * TU_MSEC);
        ck_assert_msg(n < 40, "%s: %d iterations in 100 ms: the loop spins", tu_selector_name(loop), n);
        ck_assert_int_le(d.runs, 2);
        ck_assert_int_le(d.reports, 2);
        tu_pipe(b);
        if (b[0] != d.fd) {
                ck_assert_int_eq(dup2(b[0], d.fd), d.fd);
                ck_assert_int_eq(close(b[0]), 0);
                b[0] = d.fd;
        }
        ck_assert_int_eq(loop_add_reader(loop, b[0], rec_cb, &r), 0);
        tu_write_byte(b[1]);
        tu_run_until(loop, &r.count, 1, 2 * TU_SEC);
        ck_assert_int_eq(r.count, 1);
        ck_assert_int_eq(loop_remove_reader(loop, b[0]), 1);
        loop_unref(loop);
        ck_assert_int_eq(close(a[1]), 0);
        tu_close_pair(b);
}
END_TEST

/* Found by tests/fuzz (crashes/epoll-dup-readd-empty-spin): a reader
 * replaced (its re-check queued), the file kept alive in a dup(), data
 * arriving, then the descriptor closed before the queued change is
 * applied. The change fails (EBADF) and the callbacks go, but epoll's
 * registration lives on: it must not make every wait return at once. */
START_TEST(test_closed_behind_queued_change) {
        loop_t *loop = tu_loop_new();
        struct dead_rec d = {.writer = 0};
        int sv[2], keep, n;

        tu_socketpair(sv);
        d.fd = sv[0];
        ck_assert_int_eq(loop_set_exception_handler(loop, dead_handler, &d), 0);
        ck_assert_int_eq(loop_add_reader(loop, sv[0], dead_io_cb, &d), 0);
        ck_assert_int_ge(loop_run_once(loop, 0), 0);
        ck_assert_int_eq(loop_add_reader(loop, sv[0], dead_io_cb, &d), 0);
        keep = dup(sv[0]);
        ck_assert_int_ge(keep, 0);
        tu_write_byte(sv[1]);
        ck_assert_int_eq(close(sv[0]), 0);
        n = iterations_for(loop, 100 * TU_MSEC);
        ck_assert_msg(n < 40, "%s: %d iterations in 100 ms: the loop spins", tu_selector_name(loop), n);
        ck_assert_int_ge(d.reports, 1);
        ck_assert_int_le(d.runs, 1);
        tu_assert_usable(loop);
        loop_unref(loop);
        ck_assert_int_eq(close(keep), 0);
        ck_assert_int_eq(close(sv[1]), 0);
}
END_TEST

/* Changes batched for one system call (kqueue's changelist) with one of
 * them for a descriptor closed meanwhile: only that one fails, reported
 * for its own descriptor; the others' writers run. */
START_TEST(test_closed_behind_batch) {
        loop_t *loop = tu_loop_new();
        struct dead_rec d = {.writer = 1};
        struct io_rec w[2] = {{.fd = -1}, {.fd = -1}};
        int a[2], b[2], c[2];

        tu_socketpair(a);
        tu_socketpair(b);
        tu_socketpair(c);
        d.fd = b[0];
        ck_assert_int_eq(loop_set_exception_handler(loop, dead_handler, &d), 0);
        /* Readers first, so the writers are changes, not first additions. */
        ck_assert_int_eq(loop_add_reader(loop, a[0], rec_cb, &w[0]), 0);
        ck_assert_int_eq(loop_add_reader(loop, b[0], dead_io_cb, &d), 0);
        ck_assert_int_eq(loop_add_reader(loop, c[0], rec_cb, &w[1]), 0);
        ck_assert_int_ge(loop_run_once(loop, 0), 0);
        ck_assert_int_eq(loop_add_writer(loop, a[0], rec_cb, &w[0]), 0);
        ck_assert_int_eq(loop_add_writer(loop, b[0], dead_io_cb, &d), 0);
        ck_assert_int_eq(loop_add_writer(loop, c[0], rec_cb, &w[1]), 0);
        ck_assert_int_eq(close(b[0]), 0);
        tu_run_until(loop, &w[1].count, 1, 2 * TU_SEC);
        tu_run_until(loop, &w[0].count, 1, 2 * TU_SEC);
        ck_assert_int_ge(w[0].count, 1);
        ck_assert_int_ge(w[1].count, 1);
        ck_assert_int_eq(w[0].fd, a[0]);
        ck_assert_int_eq(w[1].fd, c[0]);
        tu_run_until(loop, &d.reports, 1, 2 * TU_SEC);
        ck_assert_int_eq(d.error, -EBADF);
        ck_assert_int_le(d.runs, 1);
        ck_assert_int_eq(loop_remove_writer(loop, a[0]), 1);
        ck_assert_int_eq(loop_remove_writer(loop, c[0]), 1);
        ck_assert_int_eq(loop_remove_reader(loop, a[0]), 1);
        ck_assert_int_eq(loop_remove_reader(loop, c[0]), 1);
        tu_assert_usable(loop);
        loop_unref(loop);
        tu_close_pair(a);
        tu_close_pair(c);
        ck_assert_int_eq(close(b[1]), 0);
}
END_TEST

/* Found by tests/fuzz (crashes/epoll-dup-reuse-stale): the number of a
 * reader's descriptor closed behind the loop's back goes to a new file,
 * the old file lives on in a dup() and is readable, and the reader is not
 * added again. epoll keeps reporting the old file under the number, so
 * the reader would run on every iteration for a file that is not ready;
 * the loop finds the registration dead within about a hundred events,
 * says so once, and blocks again. */
START_TEST(test_closed_behind_reused_not_readded) {
#ifdef _WIN32
        TU_SKIP_ON_WINDOWS("dup2 onto a socket's number: winsock has no descriptor numbers to reuse");
#else
        loop_t *loop = tu_loop_new();
        struct io_rec r = {.fd = -1};
        struct dead_rec d = {.writer = 0};
        int a[2], b[2], keep, n;

        tu_socketpair(a);
        tu_socketpair(b);
        d.fd = a[0];
        ck_assert_int_eq(loop_set_exception_handler(loop, dead_handler, &d), 0);
        ck_assert_int_eq(loop_add_reader(loop, a[0], rec_cb, &r), 0);
        ck_assert_int_ge(loop_run_once(loop, 0), 0);
        keep = dup(a[0]);
        ck_assert_int_ge(keep, 0);
        tu_write_byte(a[1]);
        ck_assert_int_eq(dup2(b[0], a[0]), a[0]);      /* the number, for another file */
        ck_assert_int_eq(close(b[0]), 0);
        (void) iterations_for(loop, 50 * TU_MSEC);
        int runs = r.count;
        ck_assert_msg(runs <= 200, "%s: the reader ran %d times for a file that is not ready",
                      tu_selector_name(loop), runs);
        n = iterations_for(loop, 100 * TU_MSEC);
        ck_assert_msg(n < 40, "%s: %d iterations in 100 ms: the loop still spins", tu_selector_name(loop), n);
        ck_assert_int_le(r.count - runs, 1);
        ck_assert_int_le(d.reports, 1);
        if (tu_selector_is(loop, "epoll"))
                ck_assert_int_eq(d.reports, 1);
        /* The number's new file is what the reader watches now. */
        tu_write_byte(b[1]);
        tu_run_until(loop, &r.count, runs + 1, 2 * TU_SEC);
        ck_assert_int_ge(r.count, runs + 1);
        ck_assert_int_eq(loop_remove_reader(loop, a[0]), 1);
        loop_unref(loop);
        ck_assert_int_eq(close(keep), 0);
        tu_close_pair(a);
        ck_assert_int_eq(close(b[1]), 0);
#endif
}
END_TEST

/* Found by tests/fuzz (crashes/uring-writer-rdhup-spin): a writer on a full
 * socket whose peer shut down its sending side is not writable, although
 * the kernel adds POLLRDHUP to io_uring's poll result: no call, no spin. */
START_TEST(test_writer_full_after_peer_shutdown) {
        loop_t *loop = tu_loop_new();
        struct io_rec w = {.fd = -1};
        int sv[2];

        /* wine 8's select() calls a full socket writable once its peer has
         * shut down sending (a plain winsock program shows it). */
        TU_SKIP_UNDER_WINE("select() says a full socket is writable after the peer's shutdown(SD_SEND)");
        tu_socketpair(sv);
        tu_fill(sv[0]);
        ck_assert_int_eq(shutdown(sv[1], SHUT_WR), 0);
        ck_assert_int_eq(loop_add_writer(loop, sv[0], rec_cb, &w), 0);
        int n = iterations_for(loop, 60 * TU_MSEC);
        ck_assert_msg(n < 40, "%s: %d iterations in 60 ms: the loop spins", tu_selector_name(loop), n);
        ck_assert_msg(w.count == 0, "%s: the writer ran %d times on a full socket", tu_selector_name(loop),
                      w.count);
        ck_assert_int_eq(loop_remove_writer(loop, sv[0]), 1);
        loop_unref(loop);
        tu_close_pair(sv);
}
END_TEST

/* Found by tests/fuzz (crashes/uring-reader-stale-readiness): a byte sent
 * in every iteration by a callback that runs before the reader, which
 * drains the socket. A reader is called only when there is something to
 * read: never with a readiness that predates its last run. */
struct trickle {
        int fd;                 /* written to */
        int left;
};

static int trickle_cb(loop_t *loop, void *userdata) {
        struct trickle *t = userdata;

        if (t->left-- <= 0)
                return 0;
        tu_write_byte(t->fd);
        return loop_call_soon(loop, trickle_cb, t, NULL);
}

struct drain_rec {
        int calls, empty;
};

static int drain_rec_cb(loop_t *loop, int fd, void *userdata) {
        struct drain_rec *r = userdata;

        (void) loop;
        r->calls++;
        if (tu_drain(fd) == 0)
                r->empty++;
        return 0;
}

START_TEST(test_reader_never_called_stale) {
        loop_t *loop = tu_loop_new();
        struct drain_rec r = {0};
        int sv[2];

        tu_socketpair(sv);
        struct trickle t = {.fd = sv[1], .left = 300};
        ck_assert_int_eq(loop_call_soon(loop, trickle_cb, &t, NULL), 0);
        ck_assert_int_eq(loop_add_reader(loop, sv[0], drain_rec_cb, &r), 0);
        for (int i = 0; i < 400 && (t.left > 0 || i < 310); i++)
                ck_assert_int_ge(loop_run_once(loop, 2 * TU_MSEC), 0);
        ck_assert_int_ge(r.calls, 100);
        ck_assert_msg(r.empty == 0, "%s: %d of %d reader calls found nothing to read", tu_selector_name(loop),
                      r.empty, r.calls);
        ck_assert_int_eq(loop_remove_reader(loop, sv[0]), 1);
        loop_unref(loop);
        tu_close_pair(sv);
}
END_TEST

/* ---- hang-ups and errors ------------------------------------------------ */

START_TEST(test_hangup_wakes_reader_socketpair) {
        loop_t *loop = tu_loop_new();
        struct io_rec r = {.fd = -1};
        int sv[2];
        char c;

        tu_socketpair(sv);
        ck_assert_int_eq(loop_add_reader(loop, sv[0], rec_cb, &r), 0);
        ck_assert_int_eq(loop_run_once(loop, 0), 0);
        ck_assert_int_eq(close(sv[1]), 0);
        sv[1] = -1;
        ck_assert_int_eq(loop_run_once(loop, 2 * TU_SEC), 1);
        ck_assert_int_eq(r.count, 1);
        ck_assert_int_eq(read(sv[0], &c, 1), 0); /* EOF */
        ck_assert_int_eq(loop_remove_reader(loop, sv[0]), 1);
        loop_unref(loop);
        tu_close_pair(sv);
}
END_TEST

START_TEST(test_hangup_wakes_reader_pipe) {
        loop_t *loop = tu_loop_new();
        struct io_rec r = {.fd = -1};
        int p[2];
        char c;

        tu_pipe(p);
        ck_assert_int_eq(loop_add_reader(loop, p[0], rec_cb, &r), 0);
        ck_assert_int_eq(loop_run_once(loop, 0), 0);
        ck_assert_int_eq(close(p[1]), 0);
        p[1] = -1;
        ck_assert_int_eq(loop_run_once(loop, 2 * TU_SEC), 1);
        ck_assert_int_eq(r.count, 1);
        ck_assert_int_eq(read(p[0], &c, 1), 0);
        ck_assert_int_eq(loop_remove_reader(loop, p[0]), 1);
        loop_unref(loop);
        tu_close_pair(p);
}
END_TEST

/*
 * The write end of a full pipe whose read end is closed reports an error:
 * it wakes both the writer and a reader watching that end.
 */
START_TEST(test_error_wakes_reader_and_writer) {
        loop_t *loop = tu_loop_new();
        struct io_rec r = {.fd = -1}, w = {.fd = -1};
        int p[2];

        tu_pipe(p);
        ck_assert_uint_gt(tu_fill(p[1]), 0);
        ck_assert_int_eq(loop_add_writer(loop, p[1], rec_cb, &w), 0);
        ck_assert_int_eq(loop_add_reader(loop, p[1], rec_cb, &r), 0);
        ck_assert_int_eq(loop_run_once(loop, 0), 0);
        ck_assert_int_eq(loop_run_once(loop, 20 * TU_MSEC), 0);
        ck_assert_int_eq(close(p[0]), 0);
        p[0] = -1;
        ck_assert_int_eq(loop_run_once(loop, 2 * TU_SEC), 2);
        ck_assert_int_eq(w.count, 1);
        ck_assert_int_eq(r.count, 1);
        ck_assert_int_eq(r.fd, p[1]);
        ck_assert_int_eq(w.fd, p[1]);
        ck_assert_int_eq(loop_remove_writer(loop, p[1]), 1);
        ck_assert_int_eq(loop_remove_reader(loop, p[1]), 1);
        loop_unref(loop);
        tu_close_pair(p);
}
END_TEST

/* ---- many fds --------------------------------------------------------------- */

#define MANY 500

struct many {
        int pairs[MANY][2];
        int count[MANY];
        int fired;
};

struct many_item {
        struct many *m;
        int i;
};

static int many_cb(loop_t *loop, int fd, void *userdata) {
        struct many_item *it = userdata;

        it->m->count[it->i]++;
        it->m->fired++;
        tu_drain(fd);
        ck_assert_int_eq(loop_remove_reader(loop, fd), 1);
        return 0;
}

START_TEST(test_many_fds) {
        static struct many m;
        static struct many_item items[MANY];
        loop_t *loop = tu_loop_new();
        int is_select = tu_selector_is(loop, "select");
        long limit = tu_ensure_nofile(2 * MANY + 64);
        int n, i, written = 0;

        memset(&m, 0, sizeof(m));
        for (n = 0; n < MANY; n++) {
                if (2 * n + 64 >= limit)
                        break;
                tu_socketpair(m.pairs[n]);
#ifndef _WIN32 /* winsock's fd_set is a list, not a bitmap indexed by fd */
                if (is_select && (m.pairs[n][0] >= FD_SETSIZE || m.pairs[n][1] >= FD_SETSIZE)) {
                        tu_close_pair(m.pairs[n]);
                        break;
                }
#endif
        }
        ck_assert_msg(n >= 50, "only %d socketpairs (RLIMIT_NOFILE %ld)", n, limit);

        for (i = 0; i < n; i++) {
                items[i] = (struct many_item){.m = &m, .i = i};
                ck_assert_int_eq(loop_add_reader(loop, m.pairs[i][0], many_cb, &items[i]), 0);
        }
        ck_assert_int_eq(loop_run_once(loop, 0), 0);
        for (i = 0; i < n; i += 3) {
                tu_write_byte(m.pairs[i][1]);
                written++;
        }
        tu_run_until(loop, &m.fired, written, 10 * TU_SEC);
        ck_assert_int_eq(m.fired, written);
        /* A second wave, on other fds, after the first ones removed themselves. */
        for (i = 1; i < n; i += 3)
                tu_write_byte(m.pairs[i][1]);
        written += (n - 1 + 2) / 3;
        tu_run_until(loop, &m.fired, written, 10 * TU_SEC);
        ck_assert_int_eq(loop_run_once(loop, 0), 0);
        ck_assert_int_eq(m.fired, written);
        for (i = 0; i < n; i++) {
                ck_assert_int_eq(m.count[i], i % 3 == 2 ? 0 : 1);
                ck_assert_int_eq(loop_remove_reader(loop, m.pairs[i][0]), i % 3 == 2 ? 1 : 0);
        }
        loop_unref(loop);
        for (i = 0; i < n; i++)
                tu_close_pair(m.pairs[i]);
}
END_TEST

/* ---- bad fds ---------------------------------------------------------------- */

START_TEST(test_bad_fds) {
        loop_t *loop = tu_loop_new();
        struct io_rec r = {.fd = -1};

        ck_assert_int_eq(loop_add_reader(loop, -1, rec_cb, &r), -EBADF);
        tu_assert_usable(loop);
        ck_assert_int_eq(loop_add_writer(loop, -1, rec_cb, &r), -EBADF);
        tu_assert_usable(loop);
        ck_assert_int_eq(loop_add_reader(loop, -42, rec_cb, &r), -EBADF);
        ck_assert_int_eq(loop_remove_reader(loop, -1), -EBADF);
        ck_assert_int_eq(loop_remove_writer(loop, -1), -EBADF);
        tu_assert_usable(loop);
        ck_assert_int_eq(r.count, 0);
        loop_unref(loop);
}
END_TEST

START_TEST(test_closed_fd) {
        loop_t *loop = tu_loop_new();
        struct io_rec r = {.fd = -1};
        int p[2], rfd, wfd;

        tu_pipe(p);
        rfd = p[0];
        wfd = p[1];
        tu_close_pair(p);
        ck_assert_int_lt(fcntl(rfd, F_GETFD), 0);
        ck_assert_int_eq(loop_add_reader(loop, rfd, rec_cb, &r), -EBADF);
        tu_assert_usable(loop);
        ck_assert_int_eq(loop_add_writer(loop, wfd, rec_cb, &r), -EBADF);
        tu_assert_usable(loop);
        /* Nothing was registered by the failed calls. */
        ck_assert_int_eq(loop_remove_reader(loop, rfd), 0);
        ck_assert_int_eq(loop_remove_writer(loop, wfd), 0);
        ck_assert_int_eq(r.count, 0);
        loop_unref(loop);
}
END_TEST

/*
 * Boundaries of the fd range: select refuses fd >= FD_SETSIZE with -ERANGE
 * and accepts FD_SETSIZE - 1; the other backends take high fds.
 */
START_TEST(test_high_fd) {
#ifdef _WIN32
        TU_SKIP_ON_WINDOWS("descriptor numbers (winsock's FD_SETSIZE counts sockets; there is no fd number to dup2 to)");
#else
        loop_t *loop = tu_loop_new();
        struct io_rec r = {.fd = -1};
        int is_select = tu_selector_is(loop, "select");
        long limit = tu_ensure_nofile(FD_SETSIZE + 16);
        int sv[2], low = FD_SETSIZE - 1, high = FD_SETSIZE;

        if (limit < FD_SETSIZE + 1) {
                fprintf(stderr, "test_high_fd: RLIMIT_NOFILE %ld too low, skipped\n", limit);
                loop_unref(loop);
                return;
        }
        ck_assert_int_lt(fcntl(low, F_GETFD), 0);
        ck_assert_int_lt(fcntl(high, F_GETFD), 0);
        tu_socketpair(sv);
        if (dup2(sv[0], low) != low || dup2(sv[0], high) != high) {
                /* e.g. valgrind keeps the top of the fd table for itself */
                fprintf(stderr, "test_high_fd: dup2 to %d: %s, skipped\n", high, strerror(errno));
                close(low);
                close(high);
                tu_close_pair(sv);
                loop_unref(loop);
                return;
        }

        /* FD_SETSIZE - 1: fine everywhere. */
        ck_assert_int_eq(loop_add_reader(loop, low, rec_cb, &r), 0);
        tu_write_byte(sv[1]);
        ck_assert_int_eq(loop_run_once(loop, 2 * TU_SEC), 1);
        ck_assert_int_eq(r.fd, low);
        ck_assert_int_eq(loop_remove_reader(loop, low), 1);

        if (is_select) {
                ck_assert_int_eq(loop_add_reader(loop, high, rec_cb, &r), -ERANGE);
                tu_assert_usable(loop);
                ck_assert_int_eq(loop_add_writer(loop, high, rec_cb, &r), -ERANGE);
                tu_assert_usable(loop);
                ck_assert_int_eq(loop_remove_reader(loop, high), 0);
                ck_assert_int_eq(r.count, 1);
        } else {
                ck_assert_int_eq(loop_add_reader(loop, high, rec_cb, &r), 0);
                ck_assert_int_eq(loop_run_once(loop, 2 * TU_SEC), 1);
                ck_assert_int_eq(r.count, 2);
                ck_assert_int_eq(r.fd, high);
                ck_assert_int_eq(loop_remove_reader(loop, high), 1);
        }
        loop_unref(loop);
        ck_assert_int_eq(close(low), 0);
        ck_assert_int_eq(close(high), 0);
        tu_close_pair(sv);
#endif
}
END_TEST

/* A regular file is always ready, on every selector: poll and select say
 * so of it, and epoll, which refuses to watch it (EPERM), reports it ready
 * after every wait instead of failing the call. */
/*
 * Mac OS X 10.6 to 10.8: kqueue refuses character devices (asyncio's
 * platform notes), which tests/kqueue's emulation does with
 * KQUEUE_EMU_REFUSE_CHR=1. loop_add_reader says -EOPNOTSUPP, leaves
 * nothing behind, and the remedy loop_selector_new(3) shows, a loop on
 * the select selector, watches the device.
 */
START_TEST(test_kqueue_chardev_refused) {
        loop_t *loop = tu_loop_new(), *sloop = NULL;
        loop_selector_t *sel = NULL;
        struct io_rec r = {.fd = -1};
        int fd, ret;

        if (!tu_selector_is(loop, "kqueue")) {
                loop_unref(loop);
                return;
        }
        fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
        ck_assert_int_ge(fd, 0);
        ck_assert_int_eq(setenv("KQUEUE_EMU_REFUSE_CHR", "1", 1), 0);
        ret = loop_add_reader(loop, fd, rec_cb, &r);
        ck_assert_int_eq(unsetenv("KQUEUE_EMU_REFUSE_CHR"), 0);
#ifdef __linux__
        /* Linux has no kqueue of its own: this is the emulation. */
        ck_assert_int_eq(ret, -EOPNOTSUPP);
#else
        ck_assert(ret == 0 || ret == -EOPNOTSUPP);
#endif
        ck_assert_int_eq(loop_remove_reader(loop, fd), ret == 0);
        ck_assert_int_ge(loop_run_once(loop, 0), 0);
        ck_assert_int_eq(r.count, 0);
        tu_assert_usable(loop);
        loop_unref(loop);

        ck_assert_int_eq(loop_selector_new("select", &sel), 0);
        ck_assert_int_eq(loop_selector_loop_new(sel, &sloop), 0);
        sel = loop_selector_unref(sel);
        ck_assert_int_eq(loop_add_reader(sloop, fd, rec_cb, &r), 0);
        tu_run_until(sloop, &r.count, 1, 2 * TU_SEC);
        ck_assert_int_eq(r.fd, fd);
        ck_assert_int_eq(loop_remove_reader(sloop, fd), 1);
        loop_unref(sloop);
        ck_assert_int_eq(close(fd), 0);
}
END_TEST

START_TEST(test_regular_file) {
        loop_t *loop = tu_loop_new();
        struct io_rec r = {.fd = -1}, w = {.fd = -1}, p = {.fd = -1, .drain = 1};
        FILE *f = tmpfile();
        int fd, sv[2];

        ck_assert_ptr_ne(f, NULL);
        fd = fileno(f);
#ifdef _WIN32
        /* Windows' select takes sockets only: a file (its handle, which is
         * what libloop's descriptors are there) is refused, clearly. */
        (void) sv;
        (void) p;
        fd = (int) _get_osfhandle(fd);
        ck_assert_int_eq(loop_add_reader(loop, fd, rec_cb, &r), -ENOTSOCK);
        ck_assert_int_eq(loop_add_writer(loop, fd, rec_cb, &w), -ENOTSOCK);
        ck_assert_int_eq(loop_run_once(loop, 0), 0);
        ck_assert_int_eq(r.count + w.count, 0);
        loop_unref(loop);
        ck_assert_int_eq(fclose(f), 0);
        return;
#endif
        ck_assert_int_eq(loop_add_reader(loop, fd, rec_cb, &r), 0);
        ck_assert_int_eq(loop_add_writer(loop, fd, rec_cb, &w), 0);
        ck_assert_int_eq(loop_run_once(loop, 2 * TU_SEC), 2);
        ck_assert_int_eq(loop_run_once(loop, 2 * TU_SEC), 2);
        ck_assert_int_eq(r.count, 2);
        ck_assert_int_eq(w.count, 2);
        if (tu_selector_is(loop, "epoll")) {
                /* An outer loop polling loop_fileno() is woken too. */
                struct pollfd pfd = {.fd = loop_fileno(loop), .events = POLLIN};
                ck_assert_int_ge(pfd.fd, 0);
                ck_assert_int_eq(poll(&pfd, 1, 0), 1);
        }
        /* Beside a descriptor the kernel does watch. */
        tu_socketpair(sv);
        ck_assert_int_eq(loop_add_reader(loop, sv[0], rec_cb, &p), 0);
        tu_write_byte(sv[1]);
        ck_assert_int_eq(loop_run_once(loop, 2 * TU_SEC), 3);
        ck_assert_int_eq(p.count, 1);
        ck_assert_int_eq(loop_pause_writer(loop, fd), 0);
        ck_assert_int_eq(loop_run_once(loop, 2 * TU_SEC), 1);
        ck_assert_int_eq(w.count, 3);
        ck_assert_int_eq(loop_remove_reader(loop, fd), 1);
        ck_assert_int_eq(loop_remove_writer(loop, fd), 1);
        /* Gone: the loop blocks again. */
        ck_assert_int_eq(loop_run_once(loop, 20 * TU_MSEC), 0);
        tu_write_byte(sv[1]);
        ck_assert_int_eq(loop_run_once(loop, 2 * TU_SEC), 1);
        ck_assert_int_eq(p.count, 2);
        ck_assert_int_eq(r.count, 4);
        ck_assert_int_eq(loop_remove_reader(loop, sv[0]), 1);
        loop_unref(loop);
        tu_close_pair(sv);
        ck_assert_int_eq(fclose(f), 0);
}
END_TEST

/* ---- selectors ------------------------------------------------------------ */

static int known_selector(const char *name) {
        static const char *const known[] = {"epoll", "kqueue", "poll", "select"};
        size_t i;

        for (i = 0; i < sizeof(known) / sizeof(known[0]); i++)
                if (strcmp(name, known[i]) == 0)
                        return 1;
        return 0;
}

START_TEST(test_selector_names) {
        const char *const *names = loop_selector_names();
        int n, j;

        ck_assert_ptr_ne(names, NULL);
        for (n = 0; names[n]; n++) {
                ck_assert_msg(known_selector(names[n]), "unknown selector name \"%s\"", names[n]);
                for (j = 0; j < n; j++)
                        ck_assert_str_ne(names[j], names[n]);
        }
        ck_assert_int_ge(n, 1);
        ck_assert_int_le(n, 4);
        /* Static storage: the same array every time. */
        ck_assert_ptr_eq(loop_selector_names(), names);
}
END_TEST

/* A full round trip (reader fires on data) on a loop. */
static void assert_io_works(loop_t *loop) {
        struct io_rec r = {.fd = -1, .drain = 1};
        int sv[2];

        tu_socketpair(sv);
        ck_assert_int_eq(loop_add_reader(loop, sv[0], rec_cb, &r), 0);
        tu_write_byte(sv[1]);
        ck_assert_int_eq(loop_run_once(loop, 2 * TU_SEC), 1);
        ck_assert_int_eq(r.count, 1);
        ck_assert_int_eq(loop_remove_reader(loop, sv[0]), 1);
        tu_close_pair(sv);
}

START_TEST(test_selector_each) {
        const char *const *names = loop_selector_names();
        int i;

        for (i = 0; names[i]; i++) {
                loop_selector_t *sel = NULL;
                loop_t *loop = NULL, *second = NULL;

                ck_assert_int_eq(loop_selector_new(names[i], &sel), 0);
                ck_assert_ptr_ne(sel, NULL);
                ck_assert_str_eq(loop_selector_name(sel), names[i]);
                ck_assert_int_eq(loop_selector_loop_new(sel, &loop), 0);
                ck_assert_ptr_ne(loop, NULL);
                ck_assert_ptr_eq(loop_get_selector(loop), sel);
                /* One loop per selector. */
                ck_assert_int_eq(loop_selector_loop_new(sel, &second), -EBUSY);
                /* The loop holds its own reference. */
                ck_assert_ptr_eq(loop_selector_unref(sel), NULL);
                ck_assert_str_eq(tu_selector_name(loop), names[i]);
                assert_io_works(loop);
                tu_assert_usable(loop);
                ck_assert_ptr_eq(loop_unref(loop), NULL);
        }
}
END_TEST

START_TEST(test_selector_unused_and_refs) {
        const char *const *names = loop_selector_names();
        loop_selector_t *sel = NULL;

        /* Created and dropped without a loop. */
        ck_assert_int_eq(loop_selector_new(names[0], &sel), 0);
        ck_assert_ptr_eq(loop_selector_ref(sel), sel);
        ck_assert_ptr_eq(loop_selector_unref(sel), NULL);
        ck_assert_str_eq(loop_selector_name(sel), names[0]);
        ck_assert_ptr_eq(loop_selector_unref(sel), NULL);

        ck_assert_ptr_eq(loop_selector_ref(NULL), NULL);
        ck_assert_ptr_eq(loop_selector_unref(NULL), NULL);
        ck_assert_ptr_eq(loop_selector_name(NULL), NULL);
        ck_assert_ptr_eq(loop_get_selector(NULL), NULL);
}
END_TEST

START_TEST(test_selector_unknown) {
        loop_selector_t *sel = NULL;
        loop_t *loop = NULL;
        const char *const *names = loop_selector_names();
        int i, has_kqueue = 0;

        ck_assert_int_eq(loop_selector_new("no-such-selector", &sel), -ENOENT);
        ck_assert_int_eq(loop_selector_new("", &sel), -ENOENT);
        for (i = 0; names[i]; i++)
                has_kqueue |= strcmp(names[i], "kqueue") == 0;
        if (!has_kqueue)
                ck_assert_int_eq(loop_selector_new("kqueue", &sel), -ENOENT);
        ck_assert_int_eq(loop_selector_new(names[0], NULL), -EINVAL);
        ck_assert_int_eq(loop_selector_loop_new(NULL, &loop), -EINVAL);
        ck_assert_ptr_eq(loop, NULL);

        ck_assert_int_eq(loop_selector_new(names[0], &sel), 0);
        ck_assert_int_eq(loop_selector_loop_new(sel, NULL), -EINVAL);
        /* The failed call did not take the selector. */
        ck_assert_int_eq(loop_selector_loop_new(sel, &loop), 0);
        loop_selector_unref(sel);
        loop_unref(loop);
}
END_TEST

/* Restores LIBLOOP_SELECTOR (CK_FORK=no runs share the environment). */
static void restore_env(const char *name, char *saved) {
        if (saved) {
                ck_assert_int_eq(setenv(name, saved, 1), 0);
                free(saved);
        } else {
                ck_assert_int_eq(unsetenv(name), 0);
        }
}

START_TEST(test_selector_default_and_environment) {
        const char *const *names = loop_selector_names();
        const char *env = getenv("LIBLOOP_SELECTOR");
        char *saved = env ? strdup(env) : NULL;
        const char *penv = getenv("LIBLOOP_PROACTOR");
        char *psaved = penv ? strdup(penv) : NULL;
        loop_selector_t *sel = NULL;
        loop_t *loop = NULL;
        int i, r1, r2;

        /* About LIBLOOP_SELECTOR: the io_uring pass's LIBLOOP_PROACTOR,
         * which loop_new() honours first, is out of the way meanwhile. */
        ck_assert_int_eq(unsetenv("LIBLOOP_PROACTOR"), 0);

        ck_assert_int_eq(loop_selector_new(NULL, &sel), 0);
        ck_assert_str_eq(loop_selector_name(sel), env && *env ? env : names[0]);
        loop_selector_unref(sel);

        ck_assert_int_eq(unsetenv("LIBLOOP_SELECTOR"), 0);
        ck_assert_int_eq(loop_selector_new(NULL, &sel), 0);
        ck_assert_str_eq(loop_selector_name(sel), names[0]);
        loop_selector_unref(sel);

        for (i = 0; names[i]; i++) {
                ck_assert_int_eq(setenv("LIBLOOP_SELECTOR", names[i], 1), 0);
                ck_assert_int_eq(loop_selector_new(NULL, &sel), 0);
                ck_assert_str_eq(loop_selector_name(sel), names[i]);
                loop_selector_unref(sel);
                ck_assert_int_eq(loop_new(&loop), 0);
                ck_assert_str_eq(tu_selector_name(loop), names[i]);
                loop = loop_unref(loop);
        }

        ck_assert_int_eq(setenv("LIBLOOP_SELECTOR", "no-such-selector", 1), 0);
        sel = NULL;
        r1 = loop_selector_new(NULL, &sel);
        r2 = loop_new(&loop);
        restore_env("LIBLOOP_SELECTOR", saved);
        restore_env("LIBLOOP_PROACTOR", psaved);
        ck_assert_int_eq(r1, -ENOENT);
        ck_assert_int_eq(r2, -ENOENT);
        /* A name given explicitly is not overridden by the environment. */
        ck_assert_int_eq(loop_selector_new(names[0], &sel), 0);
        ck_assert_str_eq(loop_selector_name(sel), names[0]);
        loop_selector_unref(sel);
}
END_TEST

static Suite *io_suite(void) {
        Suite *s = suite_create("io");
        TCase *tc;

        tc = tu_tcase(s, "readers_writers");
        tcase_add_test(tc, test_reader_socketpair);
        tcase_add_test(tc, test_reader_pipe);
        tcase_add_test(tc, test_writer_socketpair);
        tcase_add_test(tc, test_writer_pipe);
        tcase_add_test(tc, test_remove_return_values);
        tcase_add_test(tc, test_replace_reader);
        tcase_add_test(tc, test_replace_writer);

        tc = tu_tcase(s, "registration");
        tcase_add_test(tc, test_removed_reader_never_runs);
        tcase_add_test(tc, test_removed_by_earlier_callback);
        tcase_add_test(tc, test_remove_then_add);
        tcase_add_test(tc, test_changed_while_queued);
        tcase_add_loop_test(tc, test_fd_reuse_reader, 0, 4);
        tcase_add_loop_test(tc, test_fd_reuse_writer, 0, 4);

        tc = tu_tcase(s, "closed_behind");
        tcase_add_loop_test(tc, test_closed_behind_dup, 0, 2);
        tcase_add_test(tc, test_closed_behind_reused);
        tcase_add_test(tc, test_closed_behind_plain);
        tcase_add_test(tc, test_closed_behind_queued_change);
        tcase_add_test(tc, test_closed_behind_batch);
        tcase_add_test(tc, test_closed_behind_reused_not_readded);
        tcase_add_test(tc, test_writer_full_after_peer_shutdown);
        tcase_add_test(tc, test_reader_never_called_stale);

        tc = tu_tcase(s, "hangup");
        tcase_add_test(tc, test_hangup_wakes_reader_socketpair);
        tcase_add_test(tc, test_hangup_wakes_reader_pipe);
        tcase_add_test(tc, test_error_wakes_reader_and_writer);

        tc = tu_tcase(s, "limits");
        tcase_add_test(tc, test_many_fds);
        tcase_add_test(tc, test_bad_fds);
        tcase_add_test(tc, test_closed_fd);
        tcase_add_test(tc, test_high_fd);
        tcase_add_test(tc, test_regular_file);
        tcase_add_test(tc, test_kqueue_chardev_refused);

        tc = tu_tcase(s, "selector");
        tcase_add_test(tc, test_selector_names);
        tcase_add_test(tc, test_selector_each);
        tcase_add_test(tc, test_selector_unused_and_refs);
        tcase_add_test(tc, test_selector_unknown);
        tcase_add_test(tc, test_selector_default_and_environment);
        return s;
}

int main(void) {
        return tu_run_suite(io_suite());
}
