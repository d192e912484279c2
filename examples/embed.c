/* SPDX-License-Identifier: MIT */
/*
 * Embedding a libloop loop in another program's poll(2) loop, the way
 * sd_event_get_fd() or uv_backend_fd() are used: the host waits on its own
 * descriptors plus loop_fileno(), for at most loop_get_timeout_ns(), then
 * lets libloop do one non-blocking iteration with loop_run_once(loop, 0).
 *
 * The libloop side has a timer, a call from another thread
 * (loop_call_soon_threadsafe) and a reader on a socketpair; the host side
 * has a pipe of its own. The program ends, with status 0, once all four
 * have fired.
 *
 * loop_fileno() exists on epoll only. With LIBLOOP_SELECTOR=poll or select
 * it fails with -EOPNOTSUPP, and the host falls back to waking up every
 * 10 ms to give the loop a turn.
 */
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <loop.h>

#define MSEC INT64_C(1000000)
#define FALLBACK_TICK_MS 10

struct state {
        loop_t *loop;
        int sv[2];              /* libloop reads sv[0]; the timer writes sv[1] */
        int host_pipe[2];       /* the host's own descriptor */
        int timer, posted, read, host;
};

static void check(int r, const char *what) {
        if (r < 0) {
                fprintf(stderr, "embed: %s: %s\n", what, loop_strerror(r));
                exit(EXIT_FAILURE);
        }
}

static int on_timer(loop_t *loop, void *userdata) {
        struct state *s = userdata;

        (void) loop;
        s->timer++;
        printf("libloop: timer fired, writing to the socket\n");
        return write(s->sv[1], "ping", 4) == 4 ? 0 : -errno;
}

static int on_readable(loop_t *loop, int fd, void *userdata) {
        struct state *s = userdata;
        char buf[16];
        ssize_t n = read(fd, buf, sizeof(buf));

        (void) loop;
        if (n < 0)
                return -errno;
        s->read++;
        printf("libloop: reader got %zd bytes\n", n);
        return 0;
}

static int from_thread(loop_t *loop, void *userdata) {
        struct state *s = userdata;

        (void) loop;
        s->posted++;
        printf("libloop: call from the worker thread\n");
        return 0;
}

static void *worker(void *userdata) {
        struct state *s = userdata;
        struct timespec ts = {.tv_sec = 0, .tv_nsec = 20 * MSEC};

        nanosleep(&ts, NULL);
        /* Wakes the host's poll(2): loop_fileno() becomes readable. */
        check(loop_call_soon_threadsafe(s->loop, from_thread, s, NULL), "loop_call_soon_threadsafe");
        /* And something for the host itself. */
        if (write(s->host_pipe[1], "h", 1) != 1)
                abort();
        return NULL;
}

/* poll(2) takes milliseconds: round up, so the loop is never woken early
 * for a timer (which would cost an idle turn); -1 (no limit) stays -1. */
static int to_poll_ms(int64_t timeout_ns) {
        if (timeout_ns < 0)
                return -1;
        timeout_ns = (timeout_ns + MSEC - 1) / MSEC;
        return timeout_ns > INT_MAX ? INT_MAX : (int) timeout_ns;
}

int main(void) {
        struct state s = {.timer = 0};
        pthread_t thread;
        int loop_fd, r;

        check(loop_new(&s.loop), "loop_new");
        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, s.sv) < 0 ||
            pipe(s.host_pipe) < 0)
                check(-errno, "socketpair/pipe");

        loop_fd = loop_fileno(s.loop);
        if (loop_fd == -EOPNOTSUPP)
                printf("host: the %s selector has no descriptor, polling every %d ms\n",
                       loop_selector_name(loop_get_selector(s.loop)), FALLBACK_TICK_MS);
        else
                check(loop_fd, "loop_fileno");

        check(loop_add_reader(s.loop, s.sv[0], on_readable, &s), "loop_add_reader");
        check(loop_call_later_ns(s.loop, 50 * MSEC, on_timer, &s, NULL), "loop_call_later_ns");
        check(-pthread_create(&thread, NULL, worker, &s), "pthread_create");

        while (!(s.timer && s.posted && s.read && s.host)) {
                struct pollfd pfd[2] = {
                        {.fd = s.host_pipe[0], .events = POLLIN},
                        {.fd = loop_fd, .events = POLLIN},      /* ignored by poll(2) when negative */
                };
                /* Also applies the registrations made since the last
                 * iteration, so that loop_fd reflects them. */
                int64_t timeout_ns = loop_get_timeout_ns(s.loop);
                int timeout_ms;

                check(timeout_ns < -1 ? (int) timeout_ns : 0, "loop_get_timeout_ns");
                timeout_ms = to_poll_ms(timeout_ns);
                if (loop_fd < 0 && (timeout_ms < 0 || timeout_ms > FALLBACK_TICK_MS))
                        timeout_ms = FALLBACK_TICK_MS;

                r = poll(pfd, 2, timeout_ms);
                if (r < 0 && errno != EINTR)
                        check(-errno, "poll");

                if (r > 0 && (pfd[0].revents & POLLIN)) {
                        char c;
                        if (read(s.host_pipe[0], &c, 1) == 1) {
                                s.host++;
                                printf("host: its own descriptor is readable\n");
                        }
                }
                /* Whether or not loop_fd was readable: timers may be due. */
                check(loop_run_once(s.loop, 0), "loop_run_once");
        }

        pthread_join(thread, NULL);
        check(loop_remove_reader(s.loop, s.sv[0]), "loop_remove_reader");
        s.loop = loop_unref(s.loop);
        close(s.sv[0]);
        close(s.sv[1]);
        close(s.host_pipe[0]);
        close(s.host_pipe[1]);
        printf("host: done\n");
        return EXIT_SUCCESS;
}
