/* SPDX-License-Identifier: MIT */
/*
 * loop_sendfile: asyncio's loop.sendfile(transport, file, offset, count).
 *
 * The transport's write buffer goes out first; writes meanwhile are
 * -EBUSY (asyncio: "unable to write; sendfile is in progress"). Then:
 * - on a TCP or Unix stream of the selector loop, where configure found
 *   Linux's sendfile(2), the kernel copies from the file to the socket,
 *   as much as the socket takes, again each time it has room;
 * - everywhere else (the proactor loop, TLS, pipes, other systems, or a
 *   file sendfile(2) refuses with EINVAL) asyncio's fallback: blocks of
 *   the file read with pread(2) and written to the transport, while its
 *   buffer is under the high-water mark, resumed when it drains.
 * The future's result is a struct loop_sock_result whose nbytes says how
 * many bytes went. An error of the socket ends the transport as well
 * (connection_lost gets it) and fails the future; an error reading the
 * file fails the future only. Cancelling the future stops sending; what
 * is already in the write buffer still goes. The file's offset (lseek)
 * is left alone; the caller's file descriptor stays the caller's.
 */
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#ifdef HAVE_LINUX_SENDFILE
#include <sys/sendfile.h>
#endif
#ifndef LOOP_WINDOWS
#include <fcntl.h>
#include <unistd.h>
#endif

#include "transport.h"

#define BLOCK (64 * 1024)               /* a fallback read */
#define KERNEL_STEP (8 * 1024 * 1024)   /* at most per readiness, so the loop goes on */

struct loop__sendfile {
        loop_transport_t *t;
        loop_future_t *f;
        int file_fd;
        off_t offset;
        size_t remaining;               /* SIZE_MAX: to the end of the file */
        size_t sent;
        bool kernel;
        char *block;
};

static void job_end(struct loop__sendfile *j, int error) {
        loop_transport_t *t = j->t;

        t->sendfile = NULL;
        loop__future_on_cancel(j->f, NULL, NULL);
        if (!loop_future_done(j->f)) {
                if (error < 0)
                        (void) loop_future_set_error(j->f, error);
                else {
                        struct loop_sock_result *res = calloc(1, sizeof(*res));
                        if (!res)
                                (void) loop_future_set_error(j->f, -ENOMEM);
                        else {
                                res->nbytes = j->sent;
                                res->fd = -1;
                                if (loop_future_set_result(j->f, res, free) < 0)
                                        free(res);
                        }
                }
        }
        loop_future_unref(j->f);
        free(j->block);
        free(j);
        /* What the end of sending may have held back: a close, a write_eof. */
        loop__transport_sent(t);
}

void loop__sendfile_abort(loop_transport_t *t, int error) {
        struct loop__sendfile *j = t->sendfile;

        t->sendfile = NULL;
        loop__future_on_cancel(j->f, NULL, NULL);
        /* set_error() refuses -ECANCELED: that is a cancellation. */
        if (!loop_future_done(j->f) && error == -ECANCELED)
                (void) loop_future_cancel(j->f);
        else if (!loop_future_done(j->f))
                (void) loop_future_set_error(j->f, error);
        loop_future_unref(j->f);
        free(j->block);
        free(j);
}

static __attribute__((unused)) void on_cancel(loop_future_t *f, void *data) {
        struct loop__sendfile *j = data;

        (void) f;
        j->t->sendfile = NULL;
        loop_future_unref(j->f);
        free(j->block);
        free(j);
}

#ifdef HAVE_LINUX_SENDFILE
/* 1: done or ended; 0: waits for room; -EINVAL: the kernel path does not
 * take this file, fall back. */
static int kernel_step(struct loop__sendfile *j) {
        loop_transport_t *t = j->t;
        size_t budget = KERNEL_STEP;

        while (j->remaining > 0 && budget > 0) {
                size_t want = j->remaining < budget ? j->remaining : budget;
                ssize_t n = loop__sendfile_nosigpipe(t->fd, j->file_fd, &j->offset, want);
                if (n > 0) {
                        j->sent += (size_t) n;
                        budget -= (size_t) n;
                        if (j->remaining != SIZE_MAX)
                                j->remaining -= (size_t) n;
                        continue;
                }
                if (n == 0)
                        break;          /* the end of the file */
                if (errno == EINTR)
                        continue;
                if (errno == EAGAIN || errno == EWOULDBLOCK) {
                        loop__transport_sel_want_write(t);
                        return 0;
                }
                if ((errno == EINVAL || errno == ENOSYS || errno == EOVERFLOW) && j->sent == 0)
                        return -EINVAL;
                int e = -errno;
                job_end(j, e);
                loop__transport_fatal(t, e);
                return 1;
        }
        if (j->remaining > 0 && budget == 0) {
                /* More to go: after the loop's other work. */
                loop__transport_sel_want_write(t);
                return 0;
        }
        job_end(j, 0);
        return 1;
}
#endif

#ifndef LOOP_WINDOWS
static void fallback_step(struct loop__sendfile *j) {
        loop_transport_t *t = j->t;

        if (!j->block && !(j->block = malloc(BLOCK))) {
                job_end(j, -ENOMEM);
                return;
        }
        while (j->remaining > 0 && loop_transport_get_write_buffer_size(t) <= t->high) {
                size_t want = j->remaining < BLOCK ? j->remaining : BLOCK;
                ssize_t n = pread(j->file_fd, j->block, want, j->offset);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0) {
                        job_end(j, -errno);
                        return;
                }
                if (n == 0)
                        break;
                int r = loop__transport_write(t, j->block, (size_t) n);
                if (t->sendfile != j)
                        return;         /* ended meanwhile (the write's pause_writing closed it...): j is gone */
                if (r < 0 || t->lost) {
                        job_end(j, r < 0 ? r : -EPIPE);
                        return;
                }
                j->offset += n;
                j->sent += (size_t) n;
                if (j->remaining != SIZE_MAX)
                        j->remaining -= (size_t) n;
        }
        if (j->remaining > 0 && loop_transport_get_write_buffer_size(t) > t->high)
                return;         /* on with it when the buffer drains */
        job_end(j, 0);
}
#else
static void fallback_step(struct loop__sendfile *j) {
        job_end(j, -EOPNOTSUPP);        /* never started there */
}
#endif

/* The transport's buffer drained (or, on the kernel path, the socket has
 * room): send on. */
void loop__sendfile_step(loop_transport_t *t) {
        struct loop__sendfile *j = t->sendfile;

        if (!j)
                return;
#ifdef HAVE_LINUX_SENDFILE
        if (j->kernel) {
                if (t->wbuf.len > 0)
                        return;
                if (kernel_step(j) != -EINVAL)
                        return;
                j->kernel = false;
        }
#endif
        fallback_step(j);
}

LOOP_EXPORT int loop_sendfile(loop_transport_t *t, int file_fd, off_t offset, size_t count, loop_future_t **ret) {
        struct loop__sendfile *j;
        struct stat st;
        int r;

        return_if_fail(t && file_fd >= 0 && offset >= 0 && ret, -EINVAL);
        r = loop__usable(t->loop);
        if (r < 0)
                return r;
#ifdef LOOP_WINDOWS
        /* A file there is a C runtime descriptor, not a socket's kind of
         * handle, and has no pread(). */
        (void) j, (void) st;
        return -EOPNOTSUPP;
#else
        if (t->kind == LOOP__T_READ_PIPE || t->kind == LOOP__T_DATAGRAM)
                return -EOPNOTSUPP;
        if (t->sendfile)
                return -EBUSY;
        if (t->eof_wanted)
                return -ESHUTDOWN;
        if (t->closing || t->lost)
                return -EPIPE;
        if (fstat(file_fd, &st) < 0)
                return -errno;
        if (!S_ISREG(st.st_mode))
                return -EINVAL;         /* asyncio: a regular file opened for reading */
        int fl = fcntl(file_fd, F_GETFL);
        if (fl >= 0 && (fl & O_ACCMODE) == O_WRONLY)
                return -EBADF;          /* not for reading: say so now, not as the connection's end */
        j = calloc(1, sizeof(*j));
        if (!j)
                return -ENOMEM;
        r = loop_create_future(t->loop, &j->f);
        if (r < 0) {
                free(j);
                return r;
        }
        j->t = t;
        j->file_fd = file_fd;
        j->offset = offset;
        j->remaining = count ? count : SIZE_MAX;
#ifdef HAVE_LINUX_SENDFILE
        j->kernel = t->kind == LOOP__T_STREAM && t->drv == &loop__transport_sel;
#endif
        t->sendfile = j;
        loop__future_on_cancel(j->f, on_cancel, j);
        *ret = loop_future_ref(j->f);
        /* Idle: start now (a system call, no callback of the caller's). */
        if (t->wbuf.len == 0 && t->drv->inflight(t) == 0)
                loop__sendfile_step(t);
        return 0;
#endif
}
