/* SPDX-License-Identifier: MIT */
/*
 * The proactor loop (loop_proactor_loop_new, io_uring): what is specific
 * to it. Every other suite also runs on it (tests/run-backends,
 * LIBLOOP_PROACTOR=io_uring). Each test skips where the proactor is not
 * available (not compiled in, or io_uring disabled in this kernel).
 */
#ifndef _WIN32
#include <netinet/in.h>
#endif
#include <pthread.h>
#include <signal.h>
#ifndef _WIN32
#include <sys/wait.h>
#endif

#include "testutil.h"

/* A proactor loop, or NULL where there is none (then the test returns). */
static loop_t *proactor_or_skip(void) {
        loop_t *loop = NULL;
        int r = loop_proactor_loop_new(&loop);

        if (r == -EOPNOTSUPP || r == -ENOSYS || r == -EPERM)
                return NULL;
        ck_assert_msg(r == 0, "loop_proactor_loop_new: %s", loop_strerror(r));
        return loop;
}

static void *result_of(loop_future_t *f) {
        void *res = NULL;

        ck_assert_int_eq(loop_future_result(f, &res), 0);
        return res;
}

static void run_until_done(loop_t *loop, loop_future_t *f) {
        int64_t deadline = tu_now_ns() + 5 * TU_SEC;

        while (!loop_future_done(f) && tu_now_ns() < deadline)
                ck_assert_int_ge(loop_run_once(loop, 10 * TU_MSEC), 0);
        ck_assert_int_eq(loop_future_done(f), 1);
}

START_TEST(test_new) {
        loop_t *loop = proactor_or_skip();

        ck_assert_int_eq(loop_proactor_loop_new(NULL), -EINVAL);
        if (!loop)
                return;
        ck_assert_ptr_eq(loop_get_selector(loop), NULL);
#ifdef _WIN32
        ck_assert_int_eq(loop_fileno(loop), -EOPNOTSUPP);       /* IOCP: a port is no socket */
#else
        ck_assert_int_ge(loop_fileno(loop), 0);
#endif
        tu_assert_usable(loop);
        ck_assert_int_eq(loop_close(loop), 0);
        ck_assert_int_eq(loop_add_reader(loop, 0, tu_io_count_cb, NULL), -ESHUTDOWN);
        ck_assert_int_eq(loop_remove_reader(loop, 0), -ESHUTDOWN);
        ck_assert_ptr_eq(loop_unref(loop), NULL);
}
END_TEST

START_TEST(test_environment) {
        const char *env = getenv("LIBLOOP_PROACTOR");
        char *saved = env ? strdup(env) : NULL;
        loop_t *loop = proactor_or_skip(), *l2 = NULL;
        int r;

        if (!loop)
                return;
        loop_unref(loop);
        ck_assert_int_eq(setenv("LIBLOOP_PROACTOR", TU_PROACTOR, 1), 0);
        ck_assert_int_eq(loop_new(&l2), 0);
        ck_assert_ptr_eq(loop_get_selector(l2), NULL);
        l2 = loop_unref(l2);
        ck_assert_int_eq(setenv("LIBLOOP_PROACTOR", "no-such-proactor", 1), 0);
        r = loop_new(&l2);
        if (saved) {
                setenv("LIBLOOP_PROACTOR", saved, 1);
                free(saved);
        } else
                unsetenv("LIBLOOP_PROACTOR");
        ck_assert_int_eq(r, -ENOENT);
}
END_TEST

/* A reader that does not drain its fd runs again next iteration, and
 * again, for as long as the data is there. */
START_TEST(test_level_triggered) {
        loop_t *loop = proactor_or_skip();
        int sv[2], n = 0;

        if (!loop)
                return;
        tu_socketpair(sv);
        ck_assert_int_eq(loop_add_reader(loop, sv[0], tu_io_count_cb, &n), 0);
        ck_assert_int_eq(loop_run_once(loop, 0), 0);
        ck_assert_int_eq(n, 0);
        tu_write_byte(sv[1]);
        for (int i = 1; i <= 5; i++) {
                ck_assert_int_eq(loop_run_once(loop, 2 * TU_SEC), 1);
                ck_assert_int_eq(n, i);
        }
        ck_assert_uint_eq(tu_drain(sv[0]), 1);
        /* Drained: a probe may still be pending, but no more calls. */
        tu_run_for(loop, 20 * TU_MSEC);
        int after = n;
        tu_run_for(loop, 20 * TU_MSEC);
        ck_assert_int_eq(n, after);
        ck_assert_int_le(after, 7);

        /* A writer on a socket with room: every iteration. */
        int w = 0;
        ck_assert_int_eq(loop_add_writer(loop, sv[1], tu_io_count_cb, &w), 0);
        for (int i = 1; i <= 5; i++) {
                ck_assert_int_ge(loop_run_once(loop, 2 * TU_SEC), 1);
                ck_assert_int_eq(w, i);
        }
        ck_assert_int_eq(loop_remove_writer(loop, sv[1]), 1);
        ck_assert_int_eq(loop_remove_reader(loop, sv[0]), 1);
        ck_assert_int_eq(loop_remove_reader(loop, sv[0]), 0);
        loop_unref(loop);
        tu_close_pair(sv);
}
END_TEST

static int drain_count_cb(loop_t *loop, int fd, void *userdata) {
        (void) loop;
        tu_drain(fd);
        (*(int *) userdata)++;
        return 0;
}

/* Many wake-ups in a row: the multishot request keeps delivering (and is
 * armed again whenever the kernel ends it). */
START_TEST(test_multishot_many) {
        loop_t *loop = proactor_or_skip();
        int sv[2], n = 0;

        if (!loop)
                return;
        tu_socketpair(sv);
        ck_assert_int_eq(loop_add_reader(loop, sv[0], drain_count_cb, &n), 0);
        for (int i = 1; i <= 2000; i++) {
                tu_write_byte(sv[1]);
                tu_run_until(loop, &n, i, 2 * TU_SEC);
                ck_assert_int_eq(n, i);
        }
        /* Replacing the callback keeps the request. */
        int m = 0;
        ck_assert_int_eq(loop_add_reader(loop, sv[0], drain_count_cb, &m), 0);
        tu_write_byte(sv[1]);
        tu_run_until(loop, &m, 1, 2 * TU_SEC);
        ck_assert_int_eq(m, 1);
        ck_assert_int_eq(n, 2000);
        /* Removed and added again in the same iteration. */
        ck_assert_int_eq(loop_remove_reader(loop, sv[0]), 1);
        ck_assert_int_eq(loop_add_reader(loop, sv[0], drain_count_cb, &m), 0);
        tu_write_byte(sv[1]);
        tu_run_until(loop, &m, 2, 2 * TU_SEC);
        ck_assert_int_eq(m, 2);
        loop_unref(loop);
        tu_close_pair(sv);
}
END_TEST

/*
 * Thousands of descriptors ready at once, more than the completion ring
 * holds: the kernel ends multishot polls on overflow. Every iteration must
 * return and run each callback exactly once (level-triggered). It used to
 * re-arm the ended polls while reaping and never return from the wait.
 */
static int count_only_cb(loop_t *loop, int fd, void *userdata) {
        (void) loop;
        (void) fd;
        (*(int *) userdata)++;
        return 0;
}

START_TEST(test_many_ready) {
#ifdef _WIN32
        TU_SKIP_ON_WINDOWS("5,000 pipes (select and IOCP on Windows take sockets only)");
#else
        loop_t *loop = proactor_or_skip();
        long nofile;
        int n;

        if (!loop)
                return;
        /* 5,000 pipes when the limit allows (completion ring: 4,096). */
        nofile = tu_ensure_nofile(2 * 5000 + 64);
        n = (int) ((nofile - 64) / 2);
        if (n > 5000)
                n = 5000;
        ck_assert_int_ge(n, 100);
        int (*p)[2] = calloc((size_t) n, sizeof(*p));
        int *count = calloc((size_t) n, sizeof(*count));
        ck_assert_ptr_ne(p, NULL);
        ck_assert_ptr_ne(count, NULL);
        for (int i = 0; i < n; i++) {
                tu_pipe(p[i]);
                tu_write_byte(p[i][1]);
                ck_assert_int_eq(loop_add_reader(loop, p[i][0], count_only_cb, &count[i]), 0);
        }
        for (int k = 1; k <= 3; k++) {
                ck_assert_int_eq(loop_run_once(loop, 100 * TU_MSEC), n);
                for (int i = 0; i < n; i++)
                        ck_assert_msg(count[i] == k, "iteration %d: reader %d ran %d times", k, i, count[i]);
        }
        for (int i = 0; i < n; i++)
                ck_assert_uint_eq(tu_drain(p[i][0]), 1);
        /* Drained: the probes and re-armed polls of the last batch find
         * nothing, and the loop blocks again. */
        ck_assert_int_ge(loop_run_once(loop, 10 * TU_MSEC), 0);
        ck_assert_int_eq(loop_run_once(loop, 10 * TU_MSEC), 0);
        for (int i = 0; i < n; i++)
                ck_assert_int_le(count[i], 4);
        /* And every reader still works. */
        tu_write_byte(p[n - 1][1]);
        tu_write_byte(p[0][1]);
        ck_assert_int_eq(loop_run_once(loop, 2 * TU_SEC), 2);
        for (int i = 0; i < n; i++) {
                ck_assert_int_eq(loop_remove_reader(loop, p[i][0]), 1);
                tu_close_pair(p[i]);
        }
        loop_unref(loop);
        free(p);
        free(count);
#endif
}
END_TEST

/* A closed fd added as a reader: the caller hears it at once. */
START_TEST(test_bad_fd) {
        loop_t *loop = proactor_or_skip();
        int p[2];

        if (!loop)
                return;
        tu_pipe(p);
        tu_close_pair(p);
        ck_assert_int_eq(loop_add_reader(loop, p[0], tu_io_count_cb, NULL), -EBADF);
        ck_assert_int_eq(loop_add_writer(loop, -1, tu_io_count_cb, NULL), -EBADF);
        ck_assert_int_eq(loop_add_reader(loop, 0, NULL, NULL), -EINVAL);
        tu_assert_usable(loop);
        loop_unref(loop);
}
END_TEST

/* Pending receives (library buffer and caller's buffer) when the loop
 * closes: cancelled, their completions reaped before anything is freed
 * (run under ASan: a kernel write into freed memory would show). */
START_TEST(test_close_with_pending_recv) {
        loop_t *loop = proactor_or_skip();
        loop_future_t *f = NULL, *g = NULL;
        int a[2], b[2];
        char *buf = malloc(65536);

        ck_assert_ptr_ne(buf, NULL);
        if (!loop) {
                free(buf);
                return;
        }
        tu_socketpair(a);
        tu_socketpair(b);
        ck_assert_int_eq(loop_sock_recv(loop, a[0], 65536, &f), 0);
        ck_assert_int_eq(loop_sock_recv_into(loop, b[0], buf, 65536, &g), 0);
        ck_assert_int_eq(loop_run_once(loop, 0), 0);    /* the requests are in the kernel */
        ck_assert_int_eq(loop_future_done(f), 0);
        ck_assert_int_eq(loop_close(loop), 0);
        ck_assert_int_eq(loop_future_cancelled(f), 1);
        ck_assert_int_eq(loop_future_cancelled(g), 1);
        free(buf);
        /* Data arriving now finds no request. */
        ck_assert_int_eq(write(a[1], "late", 4), 4);
        ck_assert_int_eq(write(b[1], "late", 4), 4);
        tu_sleep_ns(10 * TU_MSEC);
        char tmp[8];
        ck_assert_int_eq(read(a[0], tmp, sizeof(tmp)), 4);
        ck_assert_int_eq(read(b[0], tmp, sizeof(tmp)), 4);
        loop_future_unref(f);
        loop_future_unref(g);
        loop_unref(loop);
        tu_close_pair(a);
        tu_close_pair(b);
}
END_TEST

/*
 * loop_close() while a recv_into is in the kernel (close waits for its
 * completion), with a writer whose fd is ready and a threadsafe post not
 * yet taken: what completes during that wait queues no callback (it used
 * to push them onto a ready queue that nothing freed: LeakSanitizer), and
 * the post is dropped, not run.
 */
static int must_not_run_cb(loop_t *loop, void *userdata) {
        (void) loop;
        (*(int *) userdata)++;
        return 0;
}

START_TEST(test_close_reaps_quietly) {
        loop_t *loop = proactor_or_skip();
        loop_future_t *g = NULL;
        loop_handle_t *h = NULL;
        int a[2], b[2], w = 0, ran = 0;
        char *buf = malloc(4096);

        ck_assert_ptr_ne(buf, NULL);
        if (!loop) {
                free(buf);
                return;
        }
        tu_socketpair(a);
        tu_socketpair(b);
        ck_assert_int_eq(loop_add_writer(loop, b[0], tu_io_count_cb, &w), 0);
        ck_assert_int_eq(loop_sock_recv_into(loop, a[0], buf, 4096, &g), 0);
        ck_assert_int_ge(loop_run_once(loop, 0), 0);    /* in the kernel */
        ck_assert_int_ge(loop_run_once(loop, TU_SEC), 1);
        ck_assert_int_ge(w, 1);                         /* the writer's probe goes in at close */
        ck_assert_int_eq(loop_future_done(g), 0);
        ck_assert_int_eq(loop_call_soon_threadsafe(loop, must_not_run_cb, &ran, &h), 0);
        ck_assert_int_eq(loop_close(loop), 0);
        ck_assert_int_eq(loop_future_cancelled(g), 1);
        ck_assert_int_eq(ran, 0);
        free(buf);
        loop_handle_unref(h);
        loop_future_unref(g);
        loop_unref(loop);
        ck_assert_int_eq(ran, 0);
        tu_close_pair(a);
        tu_close_pair(b);
}
END_TEST

/* A receive cancelled while in the kernel; data arriving later is read by
 * the next receive. And the race: a receive whose request already took
 * data when it is cancelled hands the bytes to the next receive. */
START_TEST(test_cancel_then_data) {
        loop_t *loop = proactor_or_skip();
        loop_future_t *f = NULL, *g = NULL;
        struct loop_sock_result *res;
        int sv[2];

        if (!loop)
                return;
        tu_socketpair(sv);
        ck_assert_int_eq(loop_sock_recv(loop, sv[0], 16, &f), 0);
        ck_assert_int_eq(loop_run_once(loop, 0), 0);
        ck_assert_int_eq(loop_future_cancel(f), 1);
        ck_assert_int_eq(loop_future_error(f), -ECANCELED);
        tu_run_for(loop, 10 * TU_MSEC);
        ck_assert_int_eq(write(sv[1], "later", 5), 5);
        ck_assert_int_eq(loop_sock_recv(loop, sv[0], 16, &g), 0);
        run_until_done(loop, g);
        res = result_of(g);
        ck_assert_uint_eq(res->nbytes, 5);
        ck_assert_mem_eq(res->data, "later", 5);
        f = loop_future_unref(f);
        g = loop_future_unref(g);

        /* The race, made certain: the request is in the kernel, the data
         * arrives and is taken, and the future is cancelled before the
         * loop has looked at the completion. */
        char buf[16];
        ck_assert_int_eq(loop_sock_recv_into(loop, sv[0], buf, sizeof(buf), &f), 0);
        ck_assert_int_eq(loop_run_once(loop, 0), 0);
        ck_assert_int_eq(write(sv[1], "raced", 5), 5);
        tu_sleep_ns(10 * TU_MSEC);
        ck_assert_int_eq(loop_future_cancel(f), 1);
        memset(buf, 0, sizeof(buf));    /* the caller's buffer is free to reuse */
        ck_assert_int_eq(write(sv[1], "+more", 5), 5);
        ck_assert_int_eq(loop_sock_recv(loop, sv[0], 16, &g), 0);
        run_until_done(loop, g);
        res = result_of(g);
        /* Never reported by the cancelled future, never lost. */
        ck_assert_uint_ge(res->nbytes, 5);
        ck_assert_mem_eq(res->data, "raced", 5);
        size_t got = res->nbytes;
        loop_future_unref(g);
        if (got < 10) {
                ck_assert_int_eq(loop_sock_recv(loop, sv[0], 16, &g), 0);
                run_until_done(loop, g);
                res = result_of(g);
                ck_assert_uint_eq(res->nbytes, 5);
                ck_assert_mem_eq(res->data, "+more", 5);
                loop_future_unref(g);
        }
        loop_future_unref(f);
        loop_unref(loop);
        tu_close_pair(sv);
}
END_TEST

/*
 * A loop that never blocks (a call_soon chain, no system call in it) must
 * still see its completions: data that another thread sends completes the
 * pending receive. (io_uring with COOP_TASKRUN leaves such a completion in
 * task work that runs at the thread's next transition into the kernel;
 * uring.c enters it when the ring's TASKRUN flag says so, rather than
 * leave it to the next timer interrupt.)
 */
struct busy_chain {
        loop_future_t *f;
        int64_t deadline;
        long turns;
};

static int busy_chain_cb(loop_t *loop, void *userdata) {
        struct busy_chain *b = userdata;

        b->turns++;
        if (loop_future_done(b->f) || tu_now_ns() > b->deadline)
                return loop_stop(loop);
        return loop_call_soon(loop, busy_chain_cb, b, NULL);
}

struct late_writer {
        int fd;
        int ret;
};

static void *late_writer_main(void *arg) {
        struct late_writer *w = arg;

        tu_sleep_ns(50 * TU_MSEC);
        w->ret = (int) write(w->fd, "busy", 4);
        return NULL;
}

START_TEST(test_busy_loop_completes) {
        loop_t *loop = proactor_or_skip();
        struct busy_chain b = {0};
        struct late_writer w = {.ret = -1};
        pthread_t t;
        int sv[2];

        if (!loop)
                return;
        tu_socketpair(sv);
        ck_assert_int_eq(loop_sock_recv(loop, sv[0], 16, &b.f), 0);
        ck_assert_int_eq(loop_run_once(loop, 0), 0);    /* the request is in the kernel */
        w.fd = sv[1];
        b.deadline = tu_now_ns() + 10 * TU_SEC;
        ck_assert_int_eq(pthread_create(&t, NULL, late_writer_main, &w), 0);
        ck_assert_int_eq(loop_call_soon(loop, busy_chain_cb, &b, NULL), 0);
        ck_assert_int_eq(loop_run_forever(loop), 0);
        ck_assert_int_eq(pthread_join(t, NULL), 0);
        ck_assert_int_eq(w.ret, 4);
        ck_assert_msg(loop_future_done(b.f), "the receive did not complete in a busy loop (%ld turns)", b.turns);
        ck_assert_uint_eq(((struct loop_sock_result *) result_of(b.f))->nbytes, 4);
        loop_future_unref(b.f);
        loop_unref(loop);
        tu_close_pair(sv);
}
END_TEST

/* TCP: accept and connect through the kernel, then 1 MiB each way. */
START_TEST(test_accept_connect_sendall) {
        loop_t *loop = proactor_or_skip();
        struct sockaddr_in sa = {.sin_family = AF_INET};
        socklen_t len = sizeof(sa);
        loop_future_t *fa = NULL, *fc = NULL, *fs = NULL;
        struct loop_sock_result *res;
        size_t big = 1u << 20;
        int lfd, cfd, sfd;

        if (!loop)
                return;
        sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        ck_assert_int_ge(lfd, 0);
#ifdef _WIN32
        tu_set_nonblock(lfd);
#endif
        ck_assert_int_eq(bind(lfd, (struct sockaddr *) &sa, sizeof(sa)), 0);
        ck_assert_int_eq(listen(lfd, 4), 0);
        ck_assert_int_eq(getsockname(lfd, (struct sockaddr *) &sa, &len), 0);
        cfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        ck_assert_int_ge(cfd, 0);
#ifdef _WIN32
        tu_set_nonblock(cfd);
#endif

        ck_assert_int_eq(loop_sock_accept(loop, lfd, &fa), 0);
        ck_assert_int_eq(loop_future_done(fa), 0);
        ck_assert_int_eq(loop_sock_connect(loop, cfd, (struct sockaddr *) &sa, sizeof(sa), &fc), 0);
        run_until_done(loop, fc);
        ck_assert_int_eq(loop_future_error(fc), 0);
        run_until_done(loop, fa);
        res = result_of(fa);
        sfd = res->fd;
        ck_assert_int_ge(sfd, 0);
        ck_assert_int_eq(res->addrlen, sizeof(struct sockaddr_in));
#ifndef _WIN32 /* winsock cannot tell whether a socket is non-blocking */
        ck_assert(fcntl(sfd, F_GETFL) & O_NONBLOCK);
#endif
        ck_assert(fcntl(sfd, F_GETFD) & FD_CLOEXEC);

        char *data = malloc(big), *in = malloc(big);
        ck_assert_ptr_ne(data, NULL);
        ck_assert_ptr_ne(in, NULL);
        for (size_t i = 0; i < big; i++)
                data[i] = (char) (i * 7 + i / 4096);
        ck_assert_int_eq(loop_sock_sendall(loop, cfd, data, big, &fs), 0);
        /* The caller's buffer is only read during the call. */
        memset(data, 0, big);
        size_t got = 0;
        while (got < big) {
                loop_future_t *fr = NULL;
                ck_assert_int_eq(loop_sock_recv_into(loop, sfd, in + got, big - got, &fr), 0);
                run_until_done(loop, fr);
                res = result_of(fr);
                ck_assert_uint_gt(res->nbytes, 0);
                got += res->nbytes;
                loop_future_unref(fr);
        }
        run_until_done(loop, fs);
        res = result_of(fs);
        ck_assert_uint_eq(res->nbytes, big);
        for (size_t i = 0; i < big; i++)
                if (in[i] != (char) (i * 7 + i / 4096))
                        ck_abort_msg("byte %zu differs", i);

        /* Refused: the connection's error, through the kernel's connect. */
        loop_future_t *fx = NULL;
        int xfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        ck_assert_int_eq(close(lfd), 0);
        ck_assert_int_eq(loop_sock_connect(loop, xfd, (struct sockaddr *) &sa, sizeof(sa), &fx), 0);
        run_until_done(loop, fx);
        ck_assert_int_eq(loop_future_error(fx), -ECONNREFUSED);

        free(data);
        free(in);
        loop_future_unref(fa);
        loop_future_unref(fc);
        loop_future_unref(fs);
        loop_future_unref(fx);
        loop_unref(loop);
        close(xfd);
        close(cfd);
        close(sfd);
}
END_TEST

/* A fork child closing its inherited proactor loop leaves the parent's
 * requests alone: the parent's pending receive still completes. */
START_TEST(test_fork_child_close) {
#ifdef _WIN32
        TU_SKIP_ON_WINDOWS("fork");
#else
        loop_t *loop = proactor_or_skip();
        loop_future_t *f = NULL;
        struct loop_sock_result *res;
        int sv[2], status;
        pid_t pid;

        if (!loop)
                return;
        tu_socketpair(sv);
        ck_assert_int_eq(loop_sock_recv(loop, sv[0], 16, &f), 0);
        ck_assert_int_eq(loop_run_once(loop, 0), 0);    /* in the kernel now */
        pid = fork();
        ck_assert_int_ge(pid, 0);
        if (pid == 0) {
                /* Everything but unref/close answers ECHILD; closing frees
                 * memory only. Nothing may reach the parent's ring. */
                int ok = loop_run_once(loop, 0) == -ECHILD && loop_future_cancel(f) == -ECHILD &&
                         loop_close(loop) == 0;
                loop_future_unref(f);
                loop_unref(loop);
                _exit(ok ? 0 : 1);
        }
        ck_assert_int_eq(waitpid(pid, &status, 0), pid);
        ck_assert(WIFEXITED(status));
        ck_assert_int_eq(WEXITSTATUS(status), 0);
        ck_assert_int_eq(write(sv[1], "parent", 6), 6);
        run_until_done(loop, f);
        res = result_of(f);
        ck_assert_uint_eq(res->nbytes, 6);
        ck_assert_mem_eq(res->data, "parent", 6);
        loop_future_unref(f);
        tu_assert_usable(loop);
        loop_unref(loop);
        tu_close_pair(sv);
#endif
}
END_TEST

/* More requests in one iteration than the submission ring has entries. */
START_TEST(test_full_ring) {
        loop_t *loop = proactor_or_skip();
        enum { N = 600 };
        int (*sv)[2] = calloc(N, sizeof(*sv));
        loop_future_t **f = calloc(N, sizeof(*f));

        ck_assert_ptr_ne(sv, NULL);
        ck_assert_ptr_ne(f, NULL);
        if (!loop || tu_ensure_nofile(2 * N + 64) < 2 * N + 64) {
                if (loop)
                        loop_unref(loop);
                free(sv);
                free(f);
                return;
        }
        for (int i = 0; i < N; i++) {
                tu_socketpair(sv[i]);
                ck_assert_int_eq(loop_sock_recv(loop, sv[i][0], 8, &f[i]), 0);
        }
        ck_assert_int_eq(loop_run_once(loop, 0), 0);
        for (int i = 0; i < N; i++)
                ck_assert_int_eq(write(sv[i][1], "x", 1), 1);
        for (int i = 0; i < N; i++) {
                run_until_done(loop, f[i]);
                ck_assert_uint_eq(((struct loop_sock_result *) result_of(f[i]))->nbytes, 1);
                loop_future_unref(f[i]);
                tu_close_pair(sv[i]);
        }
        loop_unref(loop);
        free(sv);
        free(f);
}
END_TEST

static Suite *proactor_suite(void) {
        Suite *s = suite_create("proactor");
        TCase *tc;

        tc = tu_tcase(s, "loop");
        tcase_add_test(tc, test_new);
        tcase_add_test(tc, test_environment);
        tc = tu_tcase(s, "readers");
        tcase_add_test(tc, test_level_triggered);
        tcase_add_test(tc, test_multishot_many);
        tcase_add_test(tc, test_bad_fd);
        tcase_add_test(tc, test_many_ready);
        tc = tu_tcase(s, "sockets");
        tcase_add_test(tc, test_close_with_pending_recv);
        tcase_add_test(tc, test_close_reaps_quietly);
        tcase_add_test(tc, test_cancel_then_data);
        tcase_add_test(tc, test_busy_loop_completes);
        tcase_add_test(tc, test_accept_connect_sendall);
        tcase_add_test(tc, test_full_ring);
        tc = tu_tcase(s, "fork");
        tcase_add_test(tc, test_fork_child_close);
        return s;
}

int main(void) {
#ifndef _WIN32
        /* A peer gone mid-send must be EPIPE, not a signal. */
        signal(SIGPIPE, SIG_IGN);
#endif
        return tu_run_suite(proactor_suite());
}
