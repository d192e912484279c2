/* SPDX-License-Identifier: MIT */
/*
 * Linux's conveniences and their POSIX fallbacks, for the calls several
 * files make: accepting a connection, making a pipe, sending on a socket.
 * configure says what this system has (HAVE_*); --enable-posix-fallbacks
 * says "nothing", so that every fallback below is compiled and tested on
 * Linux too, not first on the Mac of the first user who tries.
 *
 * The traps, by system:
 * - macOS has no accept4(), no SOCK_NONBLOCK or SOCK_CLOEXEC, no pipe2()
 *   and no MSG_NOSIGNAL (nor eventfd, pidfds, epoll). It has SO_NOSIGPIPE.
 * - The BSDs have accept4(), pipe2() and MSG_NOSIGNAL, and SO_NOSIGPIPE too.
 * - Where a flag cannot be given atomically, the fallback sets it with
 *   fcntl() right after the call: another thread's fork+exec in between
 *   inherits the descriptor. Nothing portable closes that window (macOS and
 *   CPython's os.pipe have the same one); it is one reason to spawn with
 *   loop_spawn(), whose child closes what it does not need.
 *
 * Each function behaves like the system call it replaces (-1 and errno),
 * so callers keep their EINTR and EAGAIN loops.
 */
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

#if defined(HAVE_ACCEPT4) && defined(HAVE_SOCK_NONBLOCK_CLOEXEC)
#define USE_ACCEPT4 1
#endif

#if !defined(USE_ACCEPT4) || !defined(HAVE_PIPE2) || !defined(HAVE_SOCK_NONBLOCK_CLOEXEC)
/* FD_CLOEXEC, and O_NONBLOCK if asked; -1 and errno if fcntl failed. */
static int set_fd_flags(int fd, bool nonblock) {
        if (fcntl(fd, F_SETFD, FD_CLOEXEC) < 0)
                return -1;
        if (nonblock) {
                int fl = fcntl(fd, F_GETFL);
                if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
                        return -1;
        }
        return 0;
}

/* Closes fd without letting close() change errno. */
static void close_keep_errno(int fd) {
        int e = errno;

        close(fd);
        errno = e;
}
#endif

int loop__accept_nonblock(int fd, struct sockaddr *addr, socklen_t *addrlen) {
#ifdef USE_ACCEPT4
        return accept4(fd, addr, addrlen, SOCK_NONBLOCK | SOCK_CLOEXEC);
#else
        /* Whether accept() passes the listener's O_NONBLOCK on differs
         * (Linux: no; the BSDs: yes): both flags are set everywhere. */
        int nfd = accept(fd, addr, addrlen);

        if (nfd < 0)
                return -1;
        if (set_fd_flags(nfd, true) < 0) {
                close_keep_errno(nfd);
                return -1;
        }
        return nfd;
#endif
}

int loop__socket_nonblock(int domain, int type, int protocol) {
#ifdef HAVE_SOCK_NONBLOCK_CLOEXEC
        int fd = socket(domain, type | SOCK_NONBLOCK | SOCK_CLOEXEC, protocol);
        return fd < 0 ? -errno : fd;
#else
        int fd = socket(domain, type, protocol);

        if (fd < 0)
                return -errno;
        if (set_fd_flags(fd, true) < 0) {
                int e = errno;
                close(fd);
                return -e;
        }
        return fd;
#endif
}

int loop__set_nonblock(int fd) {
        int fl = fcntl(fd, F_GETFL);

        if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
                return -1;
        return 0;
}

int loop__pipe_cloexec(int p[2], bool nonblock) {
#ifdef HAVE_PIPE2
        return pipe2(p, O_CLOEXEC | (nonblock ? O_NONBLOCK : 0));
#else
        if (pipe(p) < 0)
                return -1;
        if (set_fd_flags(p[0], nonblock) < 0 || set_fd_flags(p[1], nonblock) < 0) {
                close_keep_errno(p[0]);
                close_keep_errno(p[1]);
                return -1;
        }
        return 0;
#endif
}

/*
 * Sending without SIGPIPE. send() on a stream whose peer is gone raises
 * SIGPIPE, which kills a program by default; asyncio sees EPIPE because
 * Python ignores SIGPIPE process-wide, and a library must not change the
 * process's dispositions. Three ways, best first:
 *
 * - MSG_NOSIGNAL (Linux, the BSDs): per call, free.
 * - SO_NOSIGPIPE (macOS, the BSDs): per socket. The socket is the caller's
 *   and may be new on every call, so it is set before every send; one
 *   setsockopt() more, as in libuv on macOS (which sets it once, when it
 *   opens or adopts the socket).
 * - Neither (the forced fallback on Linux; Solaris before 11.4): block
 *   SIGPIPE in this thread, send, and if the send failed with EPIPE, take
 *   back with sigtimedwait() the SIGPIPE it raised, which the kernel
 *   directs at the sending thread; then restore the mask. A SIGPIPE that
 *   was already pending before (the program raised it while blocking it)
 *   is left alone: ours merged into it, and it is the program's. Three
 *   system calls more per send (four after EPIPE), on systems that have
 *   nothing better.
 */
/* Pipes have neither flag: loop__write_nosigpipe() always guards. */
struct sigpipe_guard {
        sigset_t old_mask;
        bool was_pending;
};

static void sigpipe_block(struct sigpipe_guard *g) {
        sigset_t set, pending;

        sigemptyset(&set);
        sigaddset(&set, SIGPIPE);
        pthread_sigmask(SIG_BLOCK, &set, &g->old_mask);
        /* Blocked first: one arriving now is pending, not delivered. */
        g->was_pending = sigpending(&pending) == 0 && sigismember(&pending, SIGPIPE) == 1;
}

/* n and errno: what the send said; errno is kept. */
static void sigpipe_unblock(struct sigpipe_guard *g, ssize_t n) {
        int e = errno;

        if (n < 0 && e == EPIPE && !g->was_pending) {
                static const struct timespec zero = {0, 0};
                sigset_t set;

                sigemptyset(&set);
                sigaddset(&set, SIGPIPE);
                while (sigtimedwait(&set, NULL, &zero) < 0 && errno == EINTR)
                        ;
        }
        pthread_sigmask(SIG_SETMASK, &g->old_mask, NULL);
        errno = e;
}

#ifdef HAVE_LINUX_SENDFILE
#include <sys/sendfile.h>
/* sendfile(2) takes no MSG_NOSIGNAL: the guard, as for pipes. */
ssize_t loop__sendfile_nosigpipe(int out_fd, int in_fd, off_t *offset, size_t count) {
        struct sigpipe_guard g;

        sigpipe_block(&g);
        ssize_t n = sendfile(out_fd, in_fd, offset, count);
        sigpipe_unblock(&g, n);
        return n;
}
#endif

ssize_t loop__write_nosigpipe(int fd, const void *buf, size_t len) {
        struct sigpipe_guard g;

        sigpipe_block(&g);
        ssize_t n = write(fd, buf, len);
        sigpipe_unblock(&g, n);
        return n;
}

#if !defined(HAVE_MSG_NOSIGNAL) && defined(HAVE_SO_NOSIGPIPE)
/* A failure here (not a socket) is the send's to report. */
static void set_nosigpipe(int fd) {
        int on = 1;

        (void) setsockopt(fd, SOL_SOCKET, SO_NOSIGPIPE, &on, sizeof(on));
}
#endif

ssize_t loop__sendto(int fd, const void *buf, size_t len, int flags, const struct sockaddr *to, socklen_t tolen) {
#if defined(HAVE_MSG_NOSIGNAL)
        return sendto(fd, buf, len, flags | MSG_NOSIGNAL, to, tolen);
#elif defined(HAVE_SO_NOSIGPIPE)
        set_nosigpipe(fd);
        return sendto(fd, buf, len, flags, to, tolen);
#else
        struct sigpipe_guard g;

        sigpipe_block(&g);
        ssize_t n = sendto(fd, buf, len, flags, to, tolen);
        sigpipe_unblock(&g, n);
        return n;
#endif
}

ssize_t loop__send(int fd, const void *buf, size_t len, int flags) {
        /* POSIX: send() is sendto() with no address. */
        return loop__sendto(fd, buf, len, flags, NULL, 0);
}

int loop__fd_valid(int fd) {
        if (fcntl(fd, F_GETFD) < 0)
                return -errno;
        return 0;
}

int loop__file_id(int fd, struct loop__file_id *id) {
        struct stat st;

        if (fstat(fd, &st) < 0)
                return -errno;
        id->dev = (uint64_t) st.st_dev;
        id->ino = (uint64_t) st.st_ino;
        return 0;
}

bool loop__proactor_by_default(void) {
        return false;
}

int loop__check_socket(int fd) {
        struct stat st;
        int fl;

        if (fd < 0)
                return -EBADF;
        fl = fcntl(fd, F_GETFL);
        if (fl < 0)
                return -errno;
        if (fstat(fd, &st) < 0)
                return -errno;
        if (!S_ISSOCK(st.st_mode))
                return -ENOTSOCK;
        /* A blocking socket would stall the whole loop in the first try. */
        if (!(fl & O_NONBLOCK))
                return -EINVAL;
        return 0;
}

int loop__thread_create_nosignals(pthread_t *thread, void *(*fn)(void *), void *arg) {
        sigset_t all, old;
        int r;

        /* The new thread inherits the mask. */
        sigfillset(&all);
        sigdelset(&all, SIGSEGV);
        sigdelset(&all, SIGBUS);
        sigdelset(&all, SIGFPE);
        sigdelset(&all, SIGILL);
        sigdelset(&all, SIGTRAP);
        sigdelset(&all, SIGSYS);
        pthread_sigmask(SIG_SETMASK, &all, &old);
        r = pthread_create(thread, NULL, fn, arg);
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        return r;
}

long loop__online_cpus(void) {
        return sysconf(_SC_NPROCESSORS_ONLN);
}

int loop__atfork(void (*prepare)(void), void (*parent)(void), void (*child)(void)) {
        return pthread_atfork(prepare, parent, child);
}

/*
 * A slab is a mapping of its own, aligned to 2 MiB, so that Linux may back
 * it with one transparent huge page where THP is "always" or "madvise"
 * (MADV_HUGEPAGE asks; with "never" it does nothing). Then one page fault
 * maps 2 MiB instead of 4 KiB: a burst of a million new timers faults its
 * handles in with about 500 faults instead of 10,000, and a first touch of
 * memory was most of what such a burst cost, above all in a virtual
 * machine.
 */
void *loop__slab_alloc(void) {
        const size_t size = LOOP__SLAB_BYTES;
        char *p = mmap(NULL, 2 * size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

        if (p == MAP_FAILED)
                return NULL;
        /* Map twice the size, and give back what lies outside the aligned part. */
        size_t head = (size_t) (-(uintptr_t) p & (size - 1));
        if (head)
                munmap(p, head);
        munmap(p + head + size, size - head);
        p += head;
#ifdef MADV_HUGEPAGE
        (void) madvise(p, size, MADV_HUGEPAGE);
#endif
        return p;
}

void loop__slab_free(void *slab) {
        munmap(slab, LOOP__SLAB_BYTES);
}

bool loop__signal_valid(int signum) {
        /* SIGKILL and SIGSTOP cannot be caught; sigaction() rejects the
         * numbers the C library keeps for itself (glibc's 32 and 33). */
        return signum > 0 && signum < NSIG && signum != SIGKILL && signum != SIGSTOP;
}

int loop__signal_take(int signum, void (*handler)(int signum), loop__sig_saved_t *saved) {
        struct sigaction sa = {
                .sa_handler = handler,
                .sa_flags = SA_RESTART,
        };

        /* Nothing else runs in this thread's handler: no nesting to reason about. */
        sigfillset(&sa.sa_mask);
        return sigaction(signum, &sa, saved) < 0 ? -errno : 0;
}

void loop__signal_give(int signum, const loop__sig_saved_t *saved) {
        (void) sigaction(signum, saved, NULL);
}

#ifdef ENABLE_OPENSSL
#include <dlfcn.h>

void *loop__shlib_open(const char *name) {
        return dlopen(name, RTLD_NOW | RTLD_LOCAL);
}

void *loop__shlib_sym(void *lib, const char *symbol) {
        return dlsym(lib, symbol);
}
#endif
