/* SPDX-License-Identifier: MIT */
/*
 * Wake-up descriptors: how another thread (call_soon_threadsafe) or a
 * signal handler (signal.c) makes a sleeping loop return from its wait.
 * An eventfd where configure found one (Linux, FreeBSD 13+: one
 * descriptor, a counter that never fills up in practice), a non-blocking
 * self-pipe elsewhere (macOS, --enable-posix-fallbacks). Writing is
 * async-signal-safe and never blocks: a full pipe already means "wake up".
 *
 * Windows: select() takes sockets only, so the pair is a connected pair of
 * loopback TCP sockets (win32.c's loop__socketpair), non-blocking both ways
 * for the same reasons. There are no signal handlers to write from there.
 */
#include <stdint.h>
#include <unistd.h>
#if defined(HAVE_SYS_EVENTFD_H) && defined(HAVE_EVENTFD) && !defined(LOOP_WINDOWS)
#include <sys/eventfd.h>
#define USE_EVENTFD 1
#endif

#include "internal.h"

#ifdef LOOP_WINDOWS
int loop__wakeup_new(int *read_fd, int *write_fd) {
        int fds[2];
        int r = loop__socketpair(fds);

        if (r < 0)
                return r;
        *read_fd = fds[0];
        *write_fd = fds[1];
        return 0;
}

void loop__wakeup_write(int write_fd) {
        char c = 0;

        /* WSAEWOULDBLOCK: the socket's buffer is full, which already wakes the loop. */
        (void) send((SOCKET) write_fd, &c, 1, 0);
}

void loop__wakeup_drain(int read_fd) {
        char buf[256];

        while (recv((SOCKET) read_fd, buf, sizeof(buf), 0) == (int) sizeof(buf))
                ;
}

void loop__wakeup_close(int read_fd, int write_fd) {
        if (read_fd >= 0)
                closesocket((SOCKET) read_fd);
        if (write_fd >= 0 && write_fd != read_fd)
                closesocket((SOCKET) write_fd);
}

#else

int loop__wakeup_new(int *read_fd, int *write_fd) {
#ifdef USE_EVENTFD
        int fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (fd < 0)
                return -errno;
        *read_fd = *write_fd = fd;
        return 0;
#else
        int p[2];

        /* Non-blocking both ways: a full pipe must not block a signal
         * handler's write, nor an empty one the drain. */
        if (loop__pipe_cloexec(p, true) < 0)
                return -errno;
        *read_fd = p[0];
        *write_fd = p[1];
        return 0;
#endif
}

/* Async-signal-safe; preserves nothing itself, so a signal handler saves errno. */
void loop__wakeup_write(int write_fd) {
#ifdef USE_EVENTFD
        uint64_t one = 1;
        ssize_t n = write(write_fd, &one, sizeof(one));
#else
        char c = 0;
        ssize_t n = write(write_fd, &c, 1);
#endif
        /* EAGAIN: the counter or pipe is full, which already wakes the loop. */
        (void) n;
}

void loop__wakeup_drain(int read_fd) {
#ifdef USE_EVENTFD
        uint64_t n;
        ssize_t k = read(read_fd, &n, sizeof(n));       /* one read resets the counter */
        (void) k;
#else
        char buf[256];
        while (read(read_fd, buf, sizeof(buf)) == (ssize_t) sizeof(buf))
                ;
#endif
}

void loop__wakeup_close(int read_fd, int write_fd) {
        if (read_fd >= 0)
                close(read_fd);
        if (write_fd >= 0 && write_fd != read_fd)
                close(write_fd);
}
#endif
