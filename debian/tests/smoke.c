/* SPDX-License-Identifier: MIT */
/*
 * autopkgtest for libloop-dev: built with `pkg-config --cflags --libs
 * libloop' against the installed package, then run. On every selector the
 * installed library was built with, it checks that
 *   - loop_call_soon callbacks run first in, first out;
 *   - a loop_call_later timer does not fire early, and timers fire in
 *     deadline order whatever order they were scheduled in;
 *   - a reader on one end of a socketpair gets what was written on the other;
 *   - a callback posted with loop_call_soon_threadsafe from another thread
 *     runs in the loop.
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

static void run_on(const char *name) {
        struct state s = { .fds = { -1, -1 } };
        struct tagged soon_tags[3], timer_tags[NTIMERS];
        /* Scheduled out of deadline order on purpose. */
        static const double delays[NTIMERS] = { 0.030, 0.010, 0.020 };
        loop_selector_t *sel = NULL;
        pthread_t thread;
        int thread_started = 0;
        int r;

        r = loop_selector_new(name, &sel);
        check(r == 0, name, "loop_selector_new");
        if (r < 0)
                return;
        r = loop_selector_loop_new(sel, &s.loop);
        sel = loop_selector_unref(sel);
        check(r == 0, name, "loop_selector_loop_new");
        if (r < 0)
                return;

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

        check(loop_close(s.loop) == 0, name, "loop_close");
        s.loop = loop_unref(s.loop);
        if (s.fds[0] >= 0)
                close(s.fds[0]);
        if (s.fds[1] >= 0)
                close(s.fds[1]);
}

int main(void) {
        const char *const *names = loop_selector_names();
        int n = 0;

        alarm(10);
        if (!names || !names[0]) {
                printf("FAIL: loop_selector_names() lists no selector\n");
                return 1;
        }
        for (; names[n]; n++)
                run_on(names[n]);
        printf("%d selector(s) tested, %d failure(s)\n", n, failures);
        return failures ? 1 : 0;
}
