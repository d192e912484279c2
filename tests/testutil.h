/* SPDX-License-Identifier: MIT */
/*
 * Shared helpers for the Check suites. Everything is static inline so that
 * each check_*.c stays one translation unit and unused helpers cost nothing.
 *
 * Rules the suites follow (they also run under CK_FORK=no for valgrind):
 * every loop is created inside the test (never in an unchecked fixture:
 * with CK_FORK the test runs in a child, and a loop created in the parent
 * would be an inherited one that answers -ECHILD), every fd is closed and
 * every reference dropped before the test ends, and ck_assert is only used
 * in the test's own thread.
 *
 * Windows (mingw-w64, run under wine by tests/windows/run-wine): descriptors
 * are winsock SOCKETs carried in an int, as in loop.h. The helpers below
 * have Windows versions (a loopback TCP pair stands in for socketpair), and
 * close/read/write/socketpair are redirected to socket-aware versions so
 * that the suites' own calls work on sockets. What Windows lacks (fork,
 * pipes on the select loop, POSIX signals, /proc) is skipped, with a
 * message, by TU_SKIP_ON_WINDOWS inside the case; tu_pipe does that itself.
 */
#ifndef LIBLOOP_TESTUTIL_H
#define LIBLOOP_TESTUTIL_H

#ifdef _WIN32
/* winsock2.h must come before windows.h (which would pull in winsock 1). */
#include <winsock2.h>
#include <ws2tcpip.h>
#include <windows.h>
#include <io.h>
/* minwindef.h's empty far/near macros would eat variables of those names. */
#undef far
#undef near
#endif
#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifndef _WIN32
#include <sys/resource.h>
#include <sys/socket.h>
#endif
#include <time.h>
#include <unistd.h>

#include "loop.h"         /* on Windows also ESHUTDOWN and ESTALE, which mingw's errno.h lacks */

#define TU_USEC INT64_C(1000)
#define TU_MSEC INT64_C(1000000)
#define TU_SEC INT64_C(1000000000)

/* The platform's completion backend (LIBLOOP_PROACTOR's value). */
#ifdef _WIN32
#define TU_PROACTOR "iocp"
#else
#define TU_PROACTOR "io_uring"
#endif

/* Timeout for test cases: generous, tests never assert speed. */
#define TU_TIMEOUT 30

/*
 * TU_CHECK(cond) for loops that assert per element or per operation: a
 * passing ck_assert is not free, Check writes its location to the parent
 * (one system call), which made a byte-by-byte comparison of 8 MiB take
 * 20 s. This one reports only when it fails, with the same message.
 */
#define TU_CHECK(cond) TU_CHECK_MSG(cond, "Assertion '%s' failed", #cond)
#define TU_CHECK_MSG(cond, ...)                         \
        do {                                            \
                if (!(cond))                            \
                        ck_abort_msg(__VA_ARGS__);      \
        } while (0)

/*
 * TU_SKIP_ON_WINDOWS("why"): first statement of a case that tests what
 * Windows does not have; there it prints why and ends the case (it passes,
 * as a skipped case does in Check). Wrap the POSIX-only body in
 * #ifndef _WIN32 so that it still compiles for mingw. Nothing on POSIX.
 */
#ifdef _WIN32
#define TU_SKIP_ON_WINDOWS(why)                                                          \
        do {                                                                             \
                printf("%s:%d: %s: SKIP on Windows: %s\n", __FILE__, __LINE__, __func__, \
                       (why));                                                            \
                fflush(stdout);                                                          \
                return;                                                                  \
        } while (0)
#else
#define TU_SKIP_ON_WINDOWS(why) \
        do {                    \
        } while (0)
#endif

/*
 * TU_SKIP_UNDER_WINE("why"): the same for what wine does unlike Windows
 * (each use names the behaviour, seen with a plain winsock program).
 */
#ifdef _WIN32
static inline int tu_under_wine(void) {
        HMODULE ntdll = GetModuleHandleA("ntdll.dll");

        return ntdll && GetProcAddress(ntdll, "wine_get_version") != NULL;
}
#define TU_SKIP_UNDER_WINE(why)                                                                 \
        do {                                                                                    \
                if (tu_under_wine()) {                                                          \
                        printf("%s:%d: %s: SKIP under wine: %s\n", __FILE__, __LINE__, __func__, \
                               (why));                                                           \
                        fflush(stdout);                                                         \
                        return;                                                                 \
                }                                                                               \
        } while (0)
#else
#define TU_SKIP_UNDER_WINE(why) \
        do {                    \
        } while (0)
#endif

#ifdef _WIN32
/* The C library's errno for the last winsock error. */
static inline int tu_win_errno(int wsa) {
        switch (wsa) {
        case WSAEWOULDBLOCK:
                return EAGAIN;
        case WSAEINTR:
                return EINTR;
        case WSAEBADF:
        case WSAENOTSOCK:
                return EBADF;
        case WSAEINVAL:
                return EINVAL;
        case WSAEMFILE:
                return EMFILE;
        case WSAECONNRESET:
        case WSAECONNABORTED:
                return ECONNRESET;
        case WSAESHUTDOWN:
                return EPIPE;
        case WSAENOTCONN:
                return ENOTCONN;
        case WSAECONNREFUSED:
                return ECONNREFUSED;
        case WSAEMSGSIZE:
                return EMSGSIZE;
        case WSAEINPROGRESS:
                return EINPROGRESS;
        case WSAEALREADY:
                return EALREADY;
        case WSAEADDRINUSE:
                return EADDRINUSE;
        case WSAETIMEDOUT:
                return ETIMEDOUT;
        default:
                return EIO;
        }
}

/* Winsock must be started before the first socket call; it counts starts. */
static inline void tu_win_startup(void) {
        static int started;
        WSADATA wsa;

        if (!started && WSAStartup(MAKEWORD(2, 2), &wsa) == 0)
                started = 1;
}

/* close, read and write for a SOCKET, or else a C library descriptor. */
static inline int tu_win_close(int fd) {
        if (closesocket((SOCKET) fd) == 0)
                return 0;
        if (WSAGetLastError() == WSAENOTSOCK)
                return _close(fd);
        errno = tu_win_errno(WSAGetLastError());
        return -1;
}

static inline long tu_win_read(int fd, void *buf, size_t n) {
        int r = recv((SOCKET) fd, (char *) buf, (int) n, 0);

        if (r != SOCKET_ERROR)
                return r;
        if (WSAGetLastError() == WSAENOTSOCK)
                return _read(fd, buf, (unsigned) n);
        errno = tu_win_errno(WSAGetLastError());
        return -1;
}

static inline long tu_win_write(int fd, const void *buf, size_t n) {
        int r = send((SOCKET) fd, (const char *) buf, (int) n, 0);

        if (r != SOCKET_ERROR)
                return r;
        if (WSAGetLastError() == WSAENOTSOCK)
                return _write(fd, buf, (unsigned) n);
        errno = tu_win_errno(WSAGetLastError());
        return -1;
}

/*
 * socketpair for Windows: a connected pair of loopback sockets (TCP for a
 * stream pair, two connected UDP sockets for a datagram one), blocking, as
 * socketpair's are. The domain is ignored: AF_UNIX's semantics that the
 * suites rely on (bytes in order, EOF on close) are TCP's.
 */
static inline int tu_win_socketpair(int domain, int type, int protocol, int sv[2]) {
        struct sockaddr_in addr;
        int len = sizeof(addr), dgram = (type & 0xf) == SOCK_DGRAM, one = 1, bufsize = 64 * 1024;
        SOCKET a = INVALID_SOCKET, b = INVALID_SOCKET, l = INVALID_SOCKET;

        (void) domain;
        (void) protocol;
        tu_win_startup();
        memset(&addr, 0, sizeof(addr));
        addr.sin_family = AF_INET;
        addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        if (dgram) {
                struct sockaddr_in aaddr, baddr;
                int alen = sizeof(aaddr), blen = sizeof(baddr);

                a = socket(AF_INET, SOCK_DGRAM, 0);
                b = socket(AF_INET, SOCK_DGRAM, 0);
                if (a == INVALID_SOCKET || b == INVALID_SOCKET || bind(a, (struct sockaddr *) &addr, len) ||
                    bind(b, (struct sockaddr *) &addr, len) || getsockname(a, (struct sockaddr *) &aaddr, &alen) ||
                    getsockname(b, (struct sockaddr *) &baddr, &blen) ||
                    connect(a, (struct sockaddr *) &baddr, blen) || connect(b, (struct sockaddr *) &aaddr, alen))
                        goto fail;
        } else {
                l = socket(AF_INET, SOCK_STREAM, 0);
                a = socket(AF_INET, SOCK_STREAM, 0);
                if (l == INVALID_SOCKET || a == INVALID_SOCKET || bind(l, (struct sockaddr *) &addr, len) ||
                    getsockname(l, (struct sockaddr *) &addr, &len) || listen(l, 1) ||
                    connect(a, (struct sockaddr *) &addr, len))
                        goto fail;
                b = accept(l, NULL, NULL);
                if (b == INVALID_SOCKET)
                        goto fail;
                closesocket(l);
                /* A byte written is readable at once, as on a socketpair. */
                setsockopt(a, IPPROTO_TCP, TCP_NODELAY, (const char *) &one, sizeof(one));
                setsockopt(b, IPPROTO_TCP, TCP_NODELAY, (const char *) &one, sizeof(one));
                /* Bounded buffers, as a socketpair's: loopback TCP's grow to
                 * megabytes, and the suites' "fill it up" cases never fill. */
                setsockopt(a, SOL_SOCKET, SO_SNDBUF, (const char *) &bufsize, sizeof(bufsize));
                setsockopt(a, SOL_SOCKET, SO_RCVBUF, (const char *) &bufsize, sizeof(bufsize));
                setsockopt(b, SOL_SOCKET, SO_SNDBUF, (const char *) &bufsize, sizeof(bufsize));
                setsockopt(b, SOL_SOCKET, SO_RCVBUF, (const char *) &bufsize, sizeof(bufsize));
        }
        sv[0] = (int) a;
        sv[1] = (int) b;
        return 0;
fail:
        errno = tu_win_errno(WSAGetLastError());
        if (l != INVALID_SOCKET)
                closesocket(l);
        if (a != INVALID_SOCKET)
                closesocket(a);
        if (b != INVALID_SOCKET)
                closesocket(b);
        return -1;
}

/* setenv/unsetenv: the C runtime's environment, which the DLL's getenv reads. */
static inline int tu_win_setenv(const char *name, const char *value, int overwrite) {
        if (!overwrite && getenv(name))
                return 0;
        return _putenv_s(name, value) == 0 ? 0 : -1;
}

static inline int tu_win_unsetenv(const char *name) {
        return _putenv_s(name, "") == 0 ? 0 : -1;
}

#ifndef AF_UNIX
#define AF_UNIX 1
#endif
/*
 * fcntl(fd, F_GETFD): whether fd is open, and FD_CLOEXEC for a socket that
 * child processes do not inherit. Winsock cannot tell whether a socket is
 * non-blocking, so there is no F_GETFL: such checks are POSIX-only.
 */
#ifndef F_GETFD
#define F_GETFD 1
#endif
#ifndef FD_CLOEXEC
#define FD_CLOEXEC 1
#endif
static inline int tu_win_fcntl(int fd, int cmd) {
        DWORD flags = 0;
        int type, len = sizeof(type);

        if (cmd != F_GETFD) {
                errno = EINVAL;
                return -1;
        }
        if (getsockopt((SOCKET) fd, SOL_SOCKET, SO_TYPE, (char *) &type, &len) == 0)
                return GetHandleInformation((HANDLE) (intptr_t) fd, &flags) && !(flags & HANDLE_FLAG_INHERIT)
                               ? FD_CLOEXEC
                               : 0;
        if (fd >= 0 && _get_osfhandle(fd) != -1)
                return 0;
        errno = EBADF;
        return -1;
}

/* A C runtime pipe: read and write work on it, the select loop does not. */
static inline int tu_win_pipe(int p[2]) {
        return _pipe(p, 65536, _O_BINARY);
}

/* No SIGPIPE on Windows: a send to a closed peer just fails. */
#ifndef MSG_NOSIGNAL
#define MSG_NOSIGNAL 0
#endif
#ifndef SHUT_RD
#define SHUT_RD SD_RECEIVE
#define SHUT_WR SD_SEND
#define SHUT_RDWR SD_BOTH
#endif
/* socket()'s flags: tu_set_nonblock does both on Windows; recv with no
 * flag on the suites' non-blocking sockets does not wait either. */
#ifndef SOCK_CLOEXEC
#define SOCK_CLOEXEC 0
#endif
/* socket(..., type | SOCK_NONBLOCK, ...) compiles; on Windows the caller
 * must still tu_set_nonblock() the socket. */
#ifndef SOCK_NONBLOCK
#define SOCK_NONBLOCK 0
#endif
#ifndef MSG_DONTWAIT
#define MSG_DONTWAIT 0
#endif
#ifndef O_CLOEXEC
#define O_CLOEXEC _O_NOINHERIT
#endif
/* connect with errno, EINPROGRESS for a non-blocking one under way. */
static inline int tu_win_connect(int fd, const struct sockaddr *addr, int len) {
        int e;

        if (connect((SOCKET) fd, addr, len) == 0)
                return 0;
        e = WSAGetLastError();
        errno = e == WSAEWOULDBLOCK ? EINPROGRESS : tu_win_errno(e);
        return -1;
}

/* dup: a socket's duplicate is a second SOCKET for the same socket (it
 * keeps the connection open when the first is closed); else the C
 * library's. dup2 returns the new descriptor, not the C library's 0. */
static inline int tu_win_dup(int fd) {
        WSAPROTOCOL_INFOW info;
        SOCKET s;

        if (WSADuplicateSocketW((SOCKET) fd, GetCurrentProcessId(), &info) != 0) {
                if (WSAGetLastError() == WSAENOTSOCK)
                        return _dup(fd);
                errno = tu_win_errno(WSAGetLastError());
                return -1;
        }
        s = WSASocketW(FROM_PROTOCOL_INFO, FROM_PROTOCOL_INFO, FROM_PROTOCOL_INFO, &info, 0, 0);
        if (s == INVALID_SOCKET) {
                errno = tu_win_errno(WSAGetLastError());
                return -1;
        }
        return (int) s;
}

static inline int tu_win_dup2(int fd, int to) {
        return _dup2(fd, to) == 0 ? to : -1;
}

#define dup(fd) tu_win_dup(fd)
#define dup2(fd, to) tu_win_dup2((fd), (to))
#define connect(fd, addr, len) tu_win_connect((fd), (addr), (len))
#define fcntl(fd, cmd) tu_win_fcntl((fd), (cmd))
#define pipe(p) tu_win_pipe(p)
#define poll(fds, n, timeout) WSAPoll((fds), (n), (timeout))
#define setenv(n, v, o) tu_win_setenv((n), (v), (o))
#define unsetenv(n) tu_win_unsetenv(n)
#define close(fd) tu_win_close(fd)
#define read(fd, buf, n) tu_win_read((fd), (buf), (n))
#define write(fd, buf, n) tu_win_write((fd), (buf), (n))
#define socketpair(d, t, p, sv) tu_win_socketpair((d), (t), (p), (sv))
#endif /* _WIN32 */

#ifdef _WIN32
/* QueryPerformanceCounter in nanoseconds (loop_time_ns's clock there). */
static inline int64_t tu_now_ns(void) {
        static LARGE_INTEGER freq;
        LARGE_INTEGER now;

        if (!freq.QuadPart)
                QueryPerformanceFrequency(&freq);
        QueryPerformanceCounter(&now);
        return (int64_t) (now.QuadPart / freq.QuadPart) * TU_SEC +
               (int64_t) (now.QuadPart % freq.QuadPart) * TU_SEC / freq.QuadPart;
}

/* Sleep takes milliseconds: round up, so that it never sleeps less. */
static inline void tu_sleep_ns(int64_t ns) {
        Sleep((DWORD) ((ns + TU_MSEC - 1) / TU_MSEC));
}

/* Non-blocking and not inherited by child processes (close-on-exec). */
static inline void tu_set_nonblock(int fd) {
        u_long on = 1;

        ck_assert_int_eq(ioctlsocket((SOCKET) fd, FIONBIO, &on), 0);
        ck_assert(SetHandleInformation((HANDLE) (intptr_t) fd, HANDLE_FLAG_INHERIT, 0));
}
#else
/* CLOCK_MONOTONIC in nanoseconds; usable from any thread (no ck_assert). */
static inline int64_t tu_now_ns(void) {
        struct timespec ts;

        if (clock_gettime(CLOCK_MONOTONIC, &ts) < 0)
                abort();
        return (int64_t) ts.tv_sec * TU_SEC + ts.tv_nsec;
}

static inline void tu_sleep_ns(int64_t ns) {
        struct timespec ts = {.tv_sec = ns / TU_SEC, .tv_nsec = ns % TU_SEC};

        while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
                ;
}

static inline void tu_set_nonblock(int fd) {
        int flags = fcntl(fd, F_GETFL);

        ck_assert_int_ge(flags, 0);
        ck_assert_int_eq(fcntl(fd, F_SETFL, flags | O_NONBLOCK), 0);
        ck_assert_int_eq(fcntl(fd, F_SETFD, FD_CLOEXEC), 0);
}
#endif

/* A non-blocking, close-on-exec AF_UNIX stream socketpair. */
static inline void tu_socketpair(int sv[2]) {
        ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
        tu_set_nonblock(sv[0]);
        tu_set_nonblock(sv[1]);
}

#ifdef _WIN32
/*
 * Windows' select takes sockets only: a case that needs a pipe cannot run
 * there, so tu_pipe ends the case with a message (it must be called from
 * the case's own body, which it returns from).
 */
#define tu_pipe(p)                                                                       \
        do {                                                                             \
                (void) (p);                                                              \
                TU_SKIP_ON_WINDOWS("a pipe (select on Windows takes sockets only)");     \
        } while (0)
#else
/* A non-blocking, close-on-exec pipe: p[0] reads, p[1] writes. */
static inline void tu_pipe(int p[2]) {
        ck_assert_int_eq(pipe(p), 0);
        tu_set_nonblock(p[0]);
        tu_set_nonblock(p[1]);
}
#endif

static inline void tu_close_pair(int fds[2]) {
        if (fds[0] >= 0)
                ck_assert_int_eq(close(fds[0]), 0);
        if (fds[1] >= 0)
                ck_assert_int_eq(close(fds[1]), 0);
        fds[0] = fds[1] = -1;
}

static inline void tu_write_byte(int fd) {
        ck_assert_int_eq(write(fd, "x", 1), 1);
}

/* Reads everything there is; returns the byte count (0 at EOF or EAGAIN). */
static inline size_t tu_drain(int fd) {
        char buf[4096];
        size_t total = 0;
        ssize_t n;

        while ((n = read(fd, buf, sizeof(buf))) > 0)
                total += (size_t) n;
        return total;
}

/* Writes until the kernel buffer is full (EAGAIN); returns the byte count. */
static inline size_t tu_fill(int fd) {
        static const char buf[4096];
        size_t total = 0;
        ssize_t n;

        while ((n = write(fd, buf, sizeof(buf))) > 0)
                total += (size_t) n;
        ck_assert_msg(n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK), "filling fd %d: %s", fd, strerror(errno));
        return total;
}

#ifdef _WIN32
/*
 * Windows: this process's handles of a socket's kernel type ("File":
 * sockets, files, pipes, what a POSIX fd would be), counted in
 * NtQuerySystemInformation(SystemExtendedHandleInformation) since wine's
 * GetProcessHandleCount answers 0. Events and threads are left out: the
 * threads library makes events of its own for its static mutexes on first
 * use, and keeps them.
 */
struct tu_win_handle_entry {
        PVOID object;
        ULONG_PTR pid;
        ULONG_PTR handle;
        ULONG access;
        USHORT backtrace_index;
        USHORT type_index;
        ULONG attributes;
        ULONG reserved;
};

struct tu_win_handle_info {
        ULONG_PTR count;
        ULONG_PTR reserved;
        struct tu_win_handle_entry handles[1];
};

/* This process's handles of type type_index (or the type of handle `of`,
 * stored in *type_index, when `of` is not 0); -1 if unknown. */
static inline int tu_win_count_handles(int *type_index, ULONG_PTR of) {
        typedef LONG(WINAPI * query_fn)(int, PVOID, ULONG, PULONG);
        query_fn query = (query_fn) (void (*)(void)) GetProcAddress(GetModuleHandleA("ntdll.dll"),
                                                                    "NtQuerySystemInformation");
        ULONG size = 1 << 20, got = 0;
        struct tu_win_handle_info *info;
        DWORD pid = GetCurrentProcessId();
        LONG status;
        int n = 0;

        if (!query)
                return -1;
        for (;;) {
                info = malloc(size);
                if (!info)
                        return -1;
                status = query(64 /* SystemExtendedHandleInformation */, info, size, &got);
                if (status != (LONG) 0xC0000004 /* STATUS_INFO_LENGTH_MISMATCH */)
                        break;
                free(info);
                size *= 2;
        }
        if (status == 0)
                for (ULONG_PTR i = 0; i < info->count; i++) {
                        if (info->handles[i].pid != pid)
                                continue;
                        if (of && info->handles[i].handle == of)
                                *type_index = info->handles[i].type_index;
                        if (!of && info->handles[i].type_index == *type_index)
                                n++;
                }
        free(info);
        return status == 0 ? n : -1;
}

/* The descriptors a loop can hold on Windows: sockets (the select loop's
 * wake-up pair, AFD handles) and I/O completion ports (the IOCP loop's). */
static inline int tu_count_fds(void) {
        static int sock_type = -1, port_type = -1;
        int n, ports = 0;

        if (sock_type < 0) {
                SOCKET s;
                HANDLE port;

                /* Winsock's first socket opens handles that stay: before counting. */
                tu_win_startup();
                s = socket(AF_INET, SOCK_STREAM, 0);
                if (s == INVALID_SOCKET)
                        return -1;
                tu_win_count_handles(&sock_type, (ULONG_PTR) s);
                closesocket(s);
                if (sock_type < 0)
                        return -1;
                port = CreateIoCompletionPort(INVALID_HANDLE_VALUE, NULL, 0, 1);
                if (port) {
                        tu_win_count_handles(&port_type, (ULONG_PTR) port);
                        CloseHandle(port);
                }
        }
        n = tu_win_count_handles(&sock_type, 0);
        if (port_type >= 0 && port_type != sock_type)
                ports = tu_win_count_handles(&port_type, 0);
        return n < 0 || ports < 0 ? -1 : n + ports;
}

/* Winsock has no per-process descriptor limit (select's sets are sized). */
static inline long tu_ensure_nofile(long want) {
        return want;
}
#else
/* Number of open fds of this process (/proc/self/fd), or -1 if unknown. */
static inline int tu_count_fds(void) {
        DIR *d = opendir("/proc/self/fd");
        struct dirent *de;
        int n = 0;

        if (!d)
                return -1;
        while ((de = readdir(d)))
                if (de->d_name[0] != '.')
                        n++;
        closedir(d);
        return n - 1; /* the directory stream's own fd */
}

/*
 * Makes sure the soft RLIMIT_NOFILE is at least want (raising it up to the
 * hard limit if needed) and returns the resulting soft limit.
 */
static inline long tu_ensure_nofile(long want) {
        struct rlimit rl;

        if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
                return 0;
        if (rl.rlim_cur != RLIM_INFINITY && (long) rl.rlim_cur < want) {
                struct rlimit nrl = rl;

                nrl.rlim_cur =
                        (rl.rlim_max == RLIM_INFINITY || (long) rl.rlim_max >= want) ? (rlim_t) want : rl.rlim_max;
                if (setrlimit(RLIMIT_NOFILE, &nrl) == 0)
                        rl = nrl;
        }
        return rl.rlim_cur == RLIM_INFINITY ? want : (long) rl.rlim_cur;
}
#endif

/*
 * stderr capture: everything written to fd 2 between tu_capture_start and
 * tu_capture_stop lands in a temporary file, which stop reads back into buf
 * (NUL-terminated) before restoring the real stderr. Keep ck_asserts out of
 * the captured region: a failure there would leave stderr redirected.
 */
struct tu_capture {
        FILE *file;
        int saved_fd;
};

static inline void tu_capture_start(struct tu_capture *c) {
        fflush(stderr);
        c->file = tmpfile();
        ck_assert_ptr_ne(c->file, NULL);
        c->saved_fd = dup(STDERR_FILENO);
        ck_assert_int_ge(c->saved_fd, 0);
        ck_assert_int_eq(dup2(fileno(c->file), STDERR_FILENO), STDERR_FILENO);
}

static inline size_t tu_capture_stop(struct tu_capture *c, char *buf, size_t size) {
        size_t n;

        fflush(stderr);
        ck_assert_int_eq(dup2(c->saved_fd, STDERR_FILENO), STDERR_FILENO);
        ck_assert_int_eq(close(c->saved_fd), 0);
        rewind(c->file);
        n = fread(buf, 1, size - 1, c->file);
        buf[n] = '\0';
        ck_assert_int_eq(fclose(c->file), 0);
        c->file = NULL;
        return n;
}

/*
 * A loop on the selector named by LIBLOOP_SELECTOR (tests/run-backends sets
 * it once per compiled-in backend; loop_new honours it).
 */
static inline loop_t *tu_loop_new(void) {
        loop_t *loop = NULL;
        const char *env = getenv("LIBLOOP_SELECTOR");
        int r = loop_new(&loop);

        ck_assert_msg(r == 0, "loop_new (LIBLOOP_SELECTOR=%s): %s", env ? env : "(unset)", loop_strerror(r));
        ck_assert_ptr_ne(loop, NULL);
        return loop;
}

/*
 * A proactor loop (LIBLOOP_PROACTOR=io_uring: tests/run-backends sets it
 * for the io_uring pass) has no selector. Tests that are about selectors
 * skip or adapt on one; the rest run unchanged.
 */
static inline int tu_is_proactor(loop_t *loop) {
        const char *env = getenv("LIBLOOP_PROACTOR");

        if (loop_get_selector(loop))
                return 0;
        ck_assert_msg(env && *env, "a loop without a selector, but LIBLOOP_PROACTOR is not set");
        return 1;
}

/* The backend's name: the selector's, or the proactor's (LIBLOOP_PROACTOR). */
static inline const char *tu_selector_name(loop_t *loop) {
        const char *name;

        if (tu_is_proactor(loop))
                return getenv("LIBLOOP_PROACTOR");
        name = loop_selector_name(loop_get_selector(loop));
        ck_assert_ptr_ne(name, NULL);
        return name;
}

static inline int tu_selector_is(loop_t *loop, const char *name) {
        return strcmp(tu_selector_name(loop), name) == 0;
}

/*
 * Runs iterations (each blocking at most 10 ms) until *counter >= want or
 * timeout_ns has passed. The caller asserts on *counter afterwards.
 */
static inline void tu_run_until(loop_t *loop, const int *counter, int want, int64_t timeout_ns) {
        int64_t deadline = tu_now_ns() + timeout_ns;

        while (*counter < want && tu_now_ns() < deadline)
                ck_assert_int_ge(loop_run_once(loop, 10 * TU_MSEC), 0);
}

/* Runs iterations without blocking for about ns nanoseconds. */
static inline void tu_run_for(loop_t *loop, int64_t ns) {
        int64_t deadline = tu_now_ns() + ns;

        while (tu_now_ns() < deadline)
                ck_assert_int_ge(loop_run_once(loop, TU_MSEC), 0);
}

/* A callback that counts its calls in the int that userdata points to. */
static inline int tu_count_cb(loop_t *loop, void *userdata) {
        (void) loop;
        (*(int *) userdata)++;
        return 0;
}

/* The same for I/O callbacks. */
static inline int tu_io_count_cb(loop_t *loop, int fd, void *userdata) {
        (void) loop;
        (void) fd;
        (*(int *) userdata)++;
        return 0;
}

static inline int tu_stop_cb(loop_t *loop, void *userdata) {
        if (userdata)
                (*(int *) userdata)++;
        return loop_stop(loop);
}

/* The loop still works: one call_soon runs in one non-blocking iteration. */
static inline void tu_assert_usable(loop_t *loop) {
        int count = 0;

        ck_assert_int_eq(loop_call_soon(loop, tu_count_cb, &count, NULL), 0);
        ck_assert_int_eq(loop_run_once(loop, 0), 1);
        ck_assert_int_eq(count, 1);
}

#ifdef _WIN32
/* The thread that ran tu_run_suite (Windows has no gettid() == getpid()). */
static DWORD tu_win_main_tid;

static inline int tu_win_is_main_thread(void) {
        return GetCurrentThreadId() == tu_win_main_tid;
}
#endif

/* Runs the suite; CK_FORK and CK_VERBOSITY from the environment apply. */
static inline int tu_run_suite(Suite *s) {
        SRunner *sr = srunner_create(s);
        int failed;

#ifdef _WIN32
        tu_win_main_tid = GetCurrentThreadId();
#endif
        srunner_run_all(sr, CK_ENV);
        failed = srunner_ntests_failed(sr);
        srunner_free(sr);
        return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

static inline TCase *tu_tcase(Suite *s, const char *name) {
        TCase *tc = tcase_create(name);

        tcase_set_timeout(tc, TU_TIMEOUT);
        suite_add_tcase(s, tc);
        return tc;
}

#endif /* LIBLOOP_TESTUTIL_H */
