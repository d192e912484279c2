/* SPDX-License-Identifier: MIT */
/*
 * autopkgtest for libloop-dev: built with `pkg-config --cflags --libs
 * libloop' against the installed package (and once more statically, with
 * --static, against libloop.a), then run. On every selector the installed
 * library was built with, and on the io_uring proactor loop, it checks that
 *   - loop_call_soon callbacks run first in, first out;
 *   - a loop_call_later timer does not fire early, and timers fire in
 *     deadline order whatever order they were scheduled in;
 *   - a reader on one end of a socketpair gets what was written on the other;
 *   - a callback posted with loop_call_soon_threadsafe from another thread
 *     runs in the loop;
 *   - loop_sock_recv's future (run_until_complete) holds what was sent on
 *     a socketpair: on the proactor loop, a receive done by the kernel.
 * The proactor run is skipped, with a line saying why, where the library
 * has no proactor or the kernel refuses io_uring (-ENOSYS; -EPERM under a
 * seccomp profile or kernel.io_uring_disabled, as in many containers).
 * Exits 0 when every check passed, 1 otherwise; a 10 s alarm turns a hang
 * into a failure.
 */
#include <errno.h>
#include <stdint.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <loop.h>

#define NTIMERS 3

struct state {
        loop_t *loop;
        int fds[2];
        int soon[3];            /* order in which the call_soon callbacks ran */
        int nsoon;
        int64_t timer_due_ns[NTIMERS];
        int timer_order[NTIMERS];
        int ntimers;
        int early;              /* a timer fired before its deadline */
        char got[16];           /* what the reader read */
        int threadsafe_ran;
        int pending;            /* events still expected before stopping */
};

struct tagged {
        struct state *s;
        int tag;
};

static int failures;

static void check(int ok, const char *selector, const char *what) {
        printf("%s: %s: %s\n", ok ? "ok" : "FAIL", selector, what);
        if (!ok)
                failures++;
}

static void done_one(struct state *s) {
        if (--s->pending == 0)
                loop_stop(s->loop);
}

static int on_soon(loop_t *loop, void *userdata) {
        struct tagged *t = userdata;
        (void) loop;
        if (t->s->nsoon < 3)
                t->s->soon[t->s->nsoon++] = t->tag;
        done_one(t->s);
        return 0;
}

static int on_timer(loop_t *loop, void *userdata) {
        struct tagged *t = userdata;
        struct state *s = t->s;
        if (loop_time_ns(loop) < s->timer_due_ns[t->tag])
                s->early = 1;
        if (s->ntimers < NTIMERS)
                s->timer_order[s->ntimers++] = t->tag;
        done_one(s);
        return 0;
}

static int on_readable(loop_t *loop, int fd, void *userdata) {
        struct state *s = userdata;
        ssize_t n = read(fd, s->got, sizeof(s->got) - 1);
        if (n < 0)
                return -errno;
        s->got[n] = '\0';
        loop_remove_reader(loop, fd);
        done_one(s);
        return 0;
}

static int on_threadsafe(loop_t *loop, void *userdata) {
        struct state *s = userdata;
        (void) loop;
        s->threadsafe_ran = 1;
        done_one(s);
        return 0;
}

static void *worker(void *userdata) {
        struct state *s = userdata;
        int r = loop_call_soon_threadsafe(s->loop, on_threadsafe, s, NULL);
        if (r < 0)
                fprintf(stderr, "loop_call_soon_threadsafe: %s\n", loop_strerror(r));
        return NULL;
}

/* A future-returning socket operation: the proactor loop's own surface. */
static void sock_future(loop_t *loop, const char *name) {
        int fds[2];
        loop_future_t *fut = NULL;
        void *res = NULL;
        const struct loop_sock_result *got;
        int r;

        r = socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, fds);
        check(r == 0, name, "socketpair for loop_sock_recv");
        if (r < 0)
                return;
        r = loop_sock_recv(loop, fds[1], 16, &fut);
        check(r == 0, name, "loop_sock_recv");
        if (r == 0) {
                check(write(fds[0], "pong", 4) == 4, name, "write to the socketpair");
                r = loop_run_until_complete(loop, fut);
                check(r == 0, name, "loop_run_until_complete on the receive");
                r = loop_future_result(fut, &res);
                got = res;
                check(r == 0 && got && got->nbytes == 4 && memcmp(got->data, "pong", 4) == 0, name,
                      "loop_sock_recv's future holds \"pong\"");
                fut = loop_future_unref(fut);
        }
        close(fds[0]);
        close(fds[1]);
}

/* Runs every check on loop (which it takes over); name says which loop. */
static void run_on(const char *name, loop_t *loop) {
        struct state s = { .loop = loop, .fds = { -1, -1 } };
        struct tagged soon_tags[3], timer_tags[NTIMERS];
        /* Scheduled out of deadline order on purpose. */
        static const double delays[NTIMERS] = { 0.030, 0.010, 0.020 };
        pthread_t thread;
        int thread_started = 0;
        int r;

        for (int i = 0; i < 3; i++) {
                soon_tags[i] = (struct tagged) { .s = &s, .tag = i };
                r = loop_call_soon(s.loop, on_soon, &soon_tags[i], NULL);
                check(r == 0, name, "loop_call_soon");
                s.pending++;
        }

        for (int i = 0; i < NTIMERS; i++) {
                timer_tags[i] = (struct tagged) { .s = &s, .tag = i };
                /* Truncated: the library may round the delay up, never down. */
                s.timer_due_ns[i] = loop_time_ns(s.loop) + (int64_t) (delays[i] * 1e9);
                r = loop_call_later(s.loop, delays[i], on_timer, &timer_tags[i], NULL);
                check(r == 0, name, "loop_call_later");
                s.pending++;
        }

        r = socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, s.fds);
        check(r == 0, name, "socketpair");
        if (r == 0) {
                r = loop_add_reader(s.loop, s.fds[1], on_readable, &s);
                check(r == 0, name, "loop_add_reader");
                s.pending++;
                check(write(s.fds[0], "ping", 4) == 4, name, "write to the socketpair");
        }

        s.pending++;
        thread_started = pthread_create(&thread, NULL, worker, &s) == 0;
        check(thread_started, name, "pthread_create");

        r = loop_run_forever(s.loop);
        check(r == 0, name, "loop_run_forever returns 0");
        if (thread_started)
                pthread_join(thread, NULL);

        check(s.nsoon == 3 && s.soon[0] == 0 && s.soon[1] == 1 && s.soon[2] == 2,
              name, "call_soon callbacks ran first in, first out");
        check(s.ntimers == NTIMERS && s.timer_order[0] == 1 && s.timer_order[1] == 2 &&
              s.timer_order[2] == 0, name, "timers fired in deadline order");
        check(!s.early, name, "no timer fired early");
        check(strcmp(s.got, "ping") == 0, name, "reader got \"ping\" from the socketpair");
        check(s.threadsafe_ran, name, "call_soon_threadsafe callback ran");

        sock_future(s.loop, name);

        check(loop_close(s.loop) == 0, name, "loop_close");
        s.loop = loop_unref(s.loop);
        if (s.fds[0] >= 0)
                close(s.fds[0]);
        if (s.fds[1] >= 0)
                close(s.fds[1]);
}

static void run_on_selector(const char *name) {
        loop_selector_t *sel = NULL;
        loop_t *loop = NULL;
        int r;

        r = loop_selector_new(name, &sel);
        check(r == 0, name, "loop_selector_new");
        if (r < 0)
                return;
        r = loop_selector_loop_new(sel, &loop);
        sel = loop_selector_unref(sel);
        check(r == 0, name, "loop_selector_loop_new");
        if (r < 0)
                return;
        run_on(name, loop);
}

/* Returns 1 if the proactor loop ran, 0 if this system has none. */
static int run_on_proactor(void) {
        loop_t *loop = NULL;
        int r = loop_proactor_loop_new(&loop);

        if (r == -EOPNOTSUPP || r == -ENOSYS || r == -EPERM) {
                printf("skip: proactor: loop_proactor_loop_new: %s\n", loop_strerror(r));
                return 0;
        }
        check(r == 0, "proactor", "loop_proactor_loop_new");
        if (r < 0)
                return 1;
        check(loop_get_selector(loop) == NULL, "proactor", "loop_get_selector is NULL on a proactor loop");
        run_on("proactor", loop);
        return 1;
}

int main(void) {
        const char *const *names = loop_selector_names();
        int n = 0, proactors;

        alarm(10);
        if (!names || !names[0]) {
                printf("FAIL: loop_selector_names() lists no selector\n");
                return 1;
        }
        for (; names[n]; n++)
                run_on_selector(names[n]);
        proactors = run_on_proactor();
        printf("%d selector(s) and %d proactor(s) tested, %d failure(s)\n", n, proactors, failures);
        return failures ? 1 : 0;
}
