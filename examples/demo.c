/* SPDX-License-Identifier: MIT */
/*
 * A tour of libloop's main job: timers that fire in deadline order, a
 * request and reply over a socketpair driven by readers, and a callback
 * posted from another thread. Build against an installed libloop with
 *     cc demo.c $(pkg-config --cflags --libs libloop)
 * (on Windows, with mingw-w64: add -pthread -lws2_32).
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifndef _WIN32
#include <sys/socket.h>
#include <unistd.h>
#endif

#include <loop.h>

#ifdef _WIN32
/* Windows: the loop watches winsock sockets only, and winsock has no
 * socketpair(): a connected pair over loopback TCP instead. */
static int make_pair(int fds[2]) {
        struct sockaddr_in addr = { .sin_family = AF_INET };
        int len = sizeof(addr);
        u_long on = 1;
        SOCKET lst, a, b;

        addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        lst = socket(AF_INET, SOCK_STREAM, 0);
        if (lst == INVALID_SOCKET || bind(lst, (struct sockaddr *) &addr, sizeof(addr)) ||
            getsockname(lst, (struct sockaddr *) &addr, &len) || listen(lst, 1))
                return -1;
        a = socket(AF_INET, SOCK_STREAM, 0);
        if (a == INVALID_SOCKET || connect(a, (struct sockaddr *) &addr, sizeof(addr)))
                return -1;
        b = accept(lst, NULL, NULL);
        closesocket(lst);
        if (b == INVALID_SOCKET || ioctlsocket(a, FIONBIO, &on) || ioctlsocket(b, FIONBIO, &on))
                return -1;
        fds[0] = (int) a;
        fds[1] = (int) b;
        return 0;
}
#define close_pair_end(fd) closesocket((SOCKET) (fd))
#define sleep_ms(ms) Sleep(ms)
#else
static int make_pair(int fds[2]) {
        return socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, fds);
}
#define close_pair_end(fd) close(fd)
#define sleep_ms(ms) usleep((ms) * 1000)
#endif

struct demo {
        loop_t *loop;
        int fds[2];
        double start;
        int pending;            /* things still to happen before we stop */
};

static void done_one(struct demo *d) {
        if (--d->pending == 0)
                loop_stop(d->loop);
}

static int on_timer(loop_t *loop, void *userdata) {
        struct demo *d = userdata;
        printf("[%6.1f ms] timer fired\n", (loop_time(loop) - d->start) * 1e3);
        done_one(d);
        return 0;
}

static int on_reply(loop_t *loop, int fd, void *userdata) {
        struct demo *d = userdata;
        char buf[64];
        ssize_t n = recv(fd, buf, sizeof(buf) - 1, 0);

        if (n < 0)
                return -EIO;            /* reaches the exception handler */
        buf[n] = '\0';
        printf("[%6.1f ms] client got \"%s\"\n", (loop_time(loop) - d->start) * 1e3, buf);
        loop_remove_reader(loop, fd);
        done_one(d);
        return 0;
}

static int on_request(loop_t *loop, int fd, void *userdata) {
        struct demo *d = userdata;
        char buf[64];
        ssize_t n = recv(fd, buf, sizeof(buf) - 1, 0);

        if (n < 0)
                return -EIO;
        buf[n] = '\0';
        printf("[%6.1f ms] server got \"%s\", replying\n", (loop_time(loop) - d->start) * 1e3, buf);
        if (send(fd, "pong", 4, 0) != 4)
                return -EIO;
        loop_remove_reader(loop, fd);
        return 0;
}

static int send_request(loop_t *loop, void *userdata) {
        struct demo *d = userdata;
        return send(d->fds[0], "ping", 4, 0) == 4 ? 0 : -EIO;
}

static int from_thread(loop_t *loop, void *userdata) {
        struct demo *d = userdata;
        printf("[%6.1f ms] callback posted by another thread ran in the loop's thread\n",
               (loop_time(loop) - d->start) * 1e3);
        done_one(d);
        return 0;
}

static void *worker(void *userdata) {
        struct demo *d = userdata;
        sleep_ms(20);
        loop_call_soon_threadsafe(d->loop, from_thread, d, NULL);
        return NULL;
}

int main(void) {
        struct demo d = { .pending = 0 };
        pthread_t thread;
        int r;

        r = loop_new(&d.loop);
        if (r < 0) {
                fprintf(stderr, "loop_new: %s\n", loop_strerror(r));
                return EXIT_FAILURE;
        }
        /* A proactor loop (LIBLOOP_PROACTOR=io_uring) has no selector. */
        loop_selector_t *sel = loop_get_selector(d.loop);
        if (sel)
                printf("libloop demo on the %s selector\n", loop_selector_name(sel));
        else
                printf("libloop demo on a proactor loop\n");
        d.start = loop_time(d.loop);

        /* Scheduled out of order; they fire in deadline order. */
        double delays[] = { 0.030, 0.010, 0.020 };
        for (size_t i = 0; i < 3; i++, d.pending++)
                loop_call_later(d.loop, delays[i], on_timer, &d, NULL);

        if (make_pair(d.fds) < 0) {
                fprintf(stderr, "cannot make a socket pair\n");
                return EXIT_FAILURE;
        }
        loop_add_reader(d.loop, d.fds[1], on_request, &d);
        loop_add_reader(d.loop, d.fds[0], on_reply, &d);
        loop_call_soon(d.loop, send_request, &d, NULL);
        d.pending++;

        pthread_create(&thread, NULL, worker, &d);
        d.pending++;

        r = loop_run_forever(d.loop);
        pthread_join(thread, NULL);
        close_pair_end(d.fds[0]);
        close_pair_end(d.fds[1]);
        loop_close(d.loop);
        loop_unref(d.loop);
        if (r < 0) {
                fprintf(stderr, "loop_run_forever: %s\n", loop_strerror(r));
                return EXIT_FAILURE;
        }
        printf("done\n");
        return EXIT_SUCCESS;
}
