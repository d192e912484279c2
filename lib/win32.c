/* SPDX-License-Identifier: MIT */
/*
 * The Windows port: winsock in place of the POSIX calls posix.c makes
 * (declared in win32.h and internal.h). Compiled on Windows only.
 *
 * - WSAStartup() runs once, from the first selector or wake-up pair
 *   (pthread_once). WSACleanup() is never called: the library cannot know
 *   when the last user of winsock in the process is done (the program's
 *   own sockets, another library's, a loop still held by some thread), and
 *   a WSACleanup() under them fails every later socket call with
 *   WSANOTINITIALISED. The process's exit releases winsock anyway.
 * - Winsock reports its errors through WSAGetLastError(), not errno, with
 *   codes of its own: each wrapper maps the code to the errno a POSIX
 *   system gives for it, so the callers' errno tests are the same.
 */
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>

#include "internal.h"

static pthread_once_t winsock_once = PTHREAD_ONCE_INIT;
static int winsock_error;

static void winsock_startup(void) {
        WSADATA data;
        int r = WSAStartup(MAKEWORD(2, 2), &data);

        if (r != 0)
                winsock_error = loop__errno_from_wsa(r);
}

int loop__winsock_init(void) {
        pthread_once(&winsock_once, winsock_startup);
        return winsock_error ? -winsock_error : 0;
}

int loop__errno_from_wsa(int e) {
        switch (e) {
        case WSAEWOULDBLOCK:
                return EAGAIN;
        case WSAEINPROGRESS:
        case WSAEALREADY:
                return EINPROGRESS;
        case WSAEINTR:
                return EINTR;
        case WSAEBADF:
                return EBADF;
        case WSAENOTSOCK:
                return ENOTSOCK;
        case WSAEACCES:
                return EACCES;
        case WSAEFAULT:
                return EFAULT;
        case WSAEINVAL:
                return EINVAL;
        case WSAEMFILE:
                return EMFILE;
        case WSAENOBUFS:
                return ENOBUFS;
        case WSAEMSGSIZE:
                return EMSGSIZE;
        case WSAEPROTOTYPE:
                return EPROTOTYPE;
        case WSAENOPROTOOPT:
                return ENOPROTOOPT;
        case WSAEPROTONOSUPPORT:
                return EPROTONOSUPPORT;
        case WSAEOPNOTSUPP:
                return EOPNOTSUPP;
        case WSAEAFNOSUPPORT:
        case WSAEPFNOSUPPORT:
                return EAFNOSUPPORT;
        case WSAEADDRINUSE:
                return EADDRINUSE;
        case WSAEADDRNOTAVAIL:
                return EADDRNOTAVAIL;
        case WSAENETDOWN:
                return ENETDOWN;
        case WSAENETUNREACH:
                return ENETUNREACH;
        case WSAENETRESET:
                return ENETRESET;
        case WSAECONNABORTED:
                return ECONNABORTED;
        case WSAECONNRESET:
                return ECONNRESET;
        case WSAEISCONN:
                return EISCONN;
        case WSAENOTCONN:
                return ENOTCONN;
        case WSAESHUTDOWN:
                return EPIPE;   /* sending after shutdown(SD_SEND): POSIX says EPIPE */
        case WSAETIMEDOUT:
                return ETIMEDOUT;
        case WSAECONNREFUSED:
                return ECONNREFUSED;
        case WSAEHOSTUNREACH:
        case WSAEHOSTDOWN:
                return EHOSTUNREACH;
        case WSAENAMETOOLONG:
                return ENAMETOOLONG;
        case WSANOTINITIALISED:
        case WSASYSNOTREADY:
        case WSAVERNOTSUPPORTED:
                return ENOSYS;
        case WSA_NOT_ENOUGH_MEMORY:
                return ENOMEM;
        default:
                return EIO;
        }
}

int loop__wsa_fail(void) {
        errno = loop__errno_from_wsa(WSAGetLastError());
        return -1;
}

/* A length as winsock takes it (an int): a larger request reads or sends
 * less, as a short transfer, which callers handle anyway. */
static int clamp_len(size_t len) {
        return len > INT_MAX ? INT_MAX : (int) len;
}

/* A datagram longer than the buffer: winsock fills the buffer and fails
 * with WSAEMSGSIZE, where recv(2) returns the truncated length. */
static ssize_t received(int n, size_t len) {
        if (n != SOCKET_ERROR)
                return n;
        if (WSAGetLastError() == WSAEMSGSIZE)
                return (ssize_t) clamp_len(len);
        return loop__wsa_fail();
}

ssize_t loop__recv(int fd, void *buf, size_t len, int flags) {
        return received(recv((SOCKET) fd, buf, clamp_len(len), flags), len);
}

ssize_t loop__recvfrom(int fd, void *buf, size_t len, int flags, struct sockaddr *from, socklen_t *fromlen) {
        return received(recvfrom((SOCKET) fd, buf, clamp_len(len), flags, from, fromlen), len);
}

ssize_t loop__send(int fd, const void *buf, size_t len, int flags) {
        /* No SIGPIPE on Windows: nothing to keep away. */
        int n = send((SOCKET) fd, buf, clamp_len(len), flags);

        return n == SOCKET_ERROR ? loop__wsa_fail() : n;
}

ssize_t loop__sendto(int fd, const void *buf, size_t len, int flags, const struct sockaddr *to, socklen_t tolen) {
        int n = sendto((SOCKET) fd, buf, clamp_len(len), flags, to, tolen);

        return n == SOCKET_ERROR ? loop__wsa_fail() : n;
}

int loop__connect(int fd, const struct sockaddr *addr, socklen_t addrlen) {
        if (connect((SOCKET) fd, addr, addrlen) == 0)
                return 0;
        /* A non-blocking connect under way says WSAEWOULDBLOCK (not
         * WSAEINPROGRESS, which is about blocking calls): POSIX's EINPROGRESS. */
        if (WSAGetLastError() == WSAEWOULDBLOCK) {
                errno = EINPROGRESS;
                return -1;
        }
        return loop__wsa_fail();
}

int loop__getsockopt(int fd, int level, int name, void *value, socklen_t *len) {
        int r = getsockopt((SOCKET) fd, level, name, value, len);

        if (r == SOCKET_ERROR)
                return loop__wsa_fail();
        /* SO_ERROR holds a WSAE* code: the caller reads it as an errno. */
        if (level == SOL_SOCKET && name == SO_ERROR && *len >= (socklen_t) sizeof(int) && *(int *) value != 0)
                *(int *) value = loop__errno_from_wsa(*(int *) value);
        return 0;
}

int loop__close_socket(int fd) {
        return closesocket((SOCKET) fd) == SOCKET_ERROR ? loop__wsa_fail() : 0;
}

int loop__set_nonblock(int fd) {
        u_long on = 1;

        return ioctlsocket((SOCKET) fd, FIONBIO, &on) == SOCKET_ERROR ? loop__wsa_fail() : 0;
}

int loop__socket_nonblock(int domain, int type, int protocol) {
        /* Overlapped (for the completion port) and not inheritable. */
        SOCKET s = WSASocketW(domain, type, protocol, NULL, 0, WSA_FLAG_OVERLAPPED | WSA_FLAG_NO_HANDLE_INHERIT);

        if (s == INVALID_SOCKET)
                return -loop__errno_from_wsa(WSAGetLastError());
        if (loop__set_nonblock((int) s) < 0) {
                int e = errno;
                closesocket(s);
                return -e;
        }
        return (int) s;
}

int loop__accept_nonblock(int fd, struct sockaddr *addr, socklen_t *addrlen) {
        /* An accepted socket has the listener's properties, non-blocking
         * among them, but only if the listener is: set it anyway. Sockets
         * are inheritable by default (accept() takes no
         * WSA_FLAG_NO_HANDLE_INHERIT): not inheritable is FD_CLOEXEC's
         * counterpart. */
        SOCKET s = accept((SOCKET) fd, addr, addrlen);

        if (s == INVALID_SOCKET)
                return loop__wsa_fail();
        if (!SetHandleInformation((HANDLE) s, HANDLE_FLAG_INHERIT, 0) || loop__set_nonblock((int) s) < 0) {
                int e = errno;
                closesocket(s);
                errno = e;
                return -1;
        }
        return (int) s;
}

/*
 * Open and a socket: 0. A socket's handle answers SO_TYPE; a closed one
 * (or a number that was never one) says WSAENOTSOCK, as does a handle of
 * another kind (a file, a pipe), which GetHandleInformation() tells apart:
 * that one is open and the answer is ENOTSOCK, not EBADF.
 */
int loop__fd_valid(int fd) {
        int type;
        int len = sizeof(type);
        DWORD flags;

        if (fd < 0)
                return -EBADF;
        if (getsockopt((SOCKET) fd, SOL_SOCKET, SO_TYPE, (char *) &type, &len) == 0)
                return 0;
        HANDLE h = (HANDLE) (intptr_t) fd;
        if (WSAGetLastError() == WSAENOTSOCK && GetHandleInformation(h, &flags)) {
                /* Some numbers that are no handle pass that test (wine:
                 * 0x7fffffff); an open handle has a file type, or at least
                 * no error for asking. */
                SetLastError(NO_ERROR);
                if (GetFileType(h) != FILE_TYPE_UNKNOWN || GetLastError() == NO_ERROR)
                        return -ENOTSOCK;
        }
        return -EBADF;
}

int loop__file_id(int fd, struct loop__file_id *id) {
        int r = loop__fd_valid(fd);

        if (r < 0)
                return r;
        id->dev = id->ino = 0;
        return 0;
}

bool loop__proactor_by_default(void) {
        return true;
}

/* Winsock cannot say whether a socket is in non-blocking mode (FIONBIO
 * sets, nothing gets): a socket given to a socket operation is put in
 * that mode here, which the POSIX build asks of the caller. */
int loop__check_socket(int fd) {
        int r = loop__fd_valid(fd);

        if (r < 0)
                return r;
        return loop__set_nonblock(fd) < 0 ? -errno : 0;
}

/*
 * Winsock has no socketpair(): a listener on 127.0.0.1, an ephemeral port,
 * one connection, and the listener closed. The accepted end is checked to
 * be the connecting one (the same port pair), so that another process
 * connecting to the port in between cannot take its place.
 */
int loop__socketpair(int fds[2]) {
        struct sockaddr_in addr = { .sin_family = AF_INET };
        struct sockaddr_in local, peer;
        int len = sizeof(addr), r;
        SOCKET lst = INVALID_SOCKET, a = INVALID_SOCKET, b = INVALID_SOCKET;
        u_long on = 1;
        BOOL nodelay = TRUE;

        r = loop__winsock_init();
        if (r < 0)
                return r;
        addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        lst = socket(AF_INET, SOCK_STREAM, IPPROTO_TCP);
        if (lst == INVALID_SOCKET)
                goto fail;
        if (bind(lst, (struct sockaddr *) &addr, sizeof(addr)) == SOCKET_ERROR ||
            getsockname(lst, (struct sockaddr *) &addr, &len) == SOCKET_ERROR || listen(lst, 1) == SOCKET_ERROR)
                goto fail;
        a = socket(AF_INET, SOCK_STREAM, IPPROTO_TCP);
        if (a == INVALID_SOCKET || connect(a, (struct sockaddr *) &addr, sizeof(addr)) == SOCKET_ERROR)
                goto fail;
        len = sizeof(local);
        if (getsockname(a, (struct sockaddr *) &local, &len) == SOCKET_ERROR)
                goto fail;
        len = sizeof(peer);
        b = accept(lst, (struct sockaddr *) &peer, &len);
        if (b == INVALID_SOCKET)
                goto fail;
        if (peer.sin_port != local.sin_port || peer.sin_addr.s_addr != local.sin_addr.s_addr) {
                WSASetLastError(WSAECONNABORTED);
                goto fail;
        }
        closesocket(lst);
        lst = INVALID_SOCKET;
        /* One byte at a time, and at once: no Nagle delay for a wake-up. */
        setsockopt(a, IPPROTO_TCP, TCP_NODELAY, (const char *) &nodelay, sizeof(nodelay));
        if (ioctlsocket(a, FIONBIO, &on) == SOCKET_ERROR || ioctlsocket(b, FIONBIO, &on) == SOCKET_ERROR)
                goto fail;
        fds[0] = (int) b;
        fds[1] = (int) a;
        return 0;

fail:
        r = -loop__errno_from_wsa(WSAGetLastError());
        if (lst != INVALID_SOCKET)
                closesocket(lst);
        if (a != INVALID_SOCKET)
                closesocket(a);
        if (b != INVALID_SOCKET)
                closesocket(b);
        return r;
}

/* No asynchronous signals on Windows: a plain thread. */
int loop__thread_create_nosignals(pthread_t *thread, void *(*fn)(void *), void *arg) {
        return pthread_create(thread, NULL, fn, arg);
}

/* Windows has no huge pages without a privilege (SeLockMemoryPrivilege):
 * a slab is plain committed pages, 64 KiB-aligned, which the pool's
 * 64-byte chunks need no more than. */
void *loop__slab_alloc(void) {
        return VirtualAlloc(NULL, LOOP__SLAB_BYTES, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE);
}

void loop__slab_free(void *slab) {
        VirtualFree(slab, 0, MEM_RELEASE);
}

long loop__online_cpus(void) {
        /* Every processor group's (more than 64 processors). */
        DWORD n = GetActiveProcessorCount(ALL_PROCESSOR_GROUPS);

        return n ? (long) n : -1;
}

/* No fork() on Windows: no loop is ever inherited, nothing to do. */
int loop__atfork(void (*prepare)(void), void (*parent)(void), void (*child)(void)) {
        return 0;
}

/*
 * Signals: Windows has none to wait for but the console's Ctrl-C and
 * Ctrl-Break, which the C runtime calls SIGINT and SIGBREAK. They come as
 * a call of the console control handler, in a thread the system starts
 * for it (so signal.c's handler runs outside any loop's thread, which its
 * atomics allow). Ctrl-C and Ctrl-Break are both given to SIGINT, as
 * CPython's asyncio does on Windows; returning TRUE keeps the process
 * alive, as a POSIX handler does. The other console events (close,
 * logoff, shutdown) end the process whatever the handler says: not
 * signals here.
 */
static void (*sigint_handler)(int signum);

static BOOL WINAPI console_ctrl(DWORD type) {
        void (*h)(int) = __atomic_load_n(&sigint_handler, __ATOMIC_SEQ_CST);

        if ((type != CTRL_C_EVENT && type != CTRL_BREAK_EVENT) || !h)
                return FALSE;
        h(SIGINT);
        return TRUE;
}

bool loop__signal_valid(int signum) {
        return signum > 0 && signum < NSIG;
}

int loop__signal_take(int signum, void (*handler)(int signum), loop__sig_saved_t *saved) {
        if (signum != SIGINT)
                return -EOPNOTSUPP;
        __atomic_store_n(&sigint_handler, handler, __ATOMIC_SEQ_CST);
        if (!SetConsoleCtrlHandler(console_ctrl, TRUE)) {
                __atomic_store_n(&sigint_handler, NULL, __ATOMIC_SEQ_CST);
                return -EIO;
        }
        *saved = 0;
        return 0;
}

void loop__signal_give(int signum, const loop__sig_saved_t *saved) {
        if (signum != SIGINT)
                return;
        SetConsoleCtrlHandler(console_ctrl, FALSE);
        __atomic_store_n(&sigint_handler, NULL, __ATOMIC_SEQ_CST);
}

/* The C runtime's texts of the classic codes, kept (see below). */
#define N_TEXTS 64
static char texts[N_TEXTS][96];
static pthread_once_t texts_once = PTHREAD_ONCE_INIT;

static void fill_texts(void) {
        for (int e = 0; e < N_TEXTS; e++)
                if (strerror_s(texts[e], sizeof(texts[e]), e) != 0)
                        texts[e][0] = '\0';
}

/* glibc's texts for the codes msvcrt's strerror() calls "Unknown error";
 * the C runtime's own, in storage that stays, for the others it knows. */
const char *loop__win32_strerror(int e) {
        switch (e) {
        case EADDRINUSE:
                return "Address already in use";
        case EADDRNOTAVAIL:
                return "Cannot assign requested address";
        case EAFNOSUPPORT:
                return "Address family not supported by protocol";
        case EALREADY:
                return "Operation already in progress";
        case ECANCELED:
                return "Operation canceled";
        case ECONNABORTED:
                return "Software caused connection abort";
        case ECONNREFUSED:
                return "Connection refused";
        case ECONNRESET:
                return "Connection reset by peer";
        case EDESTADDRREQ:
                return "Destination address required";
        case EHOSTUNREACH:
                return "No route to host";
        case EINPROGRESS:
                return "Operation now in progress";
        case EISCONN:
                return "Transport endpoint is already connected";
        case ELOOP:
                return "Too many levels of symbolic links";
        case EMSGSIZE:
                return "Message too long";
        case ENETDOWN:
                return "Network is down";
        case ENETRESET:
                return "Network dropped connection on reset";
        case ENETUNREACH:
                return "Network is unreachable";
        case ENOBUFS:
                return "No buffer space available";
        case ENODATA:
                return "No data available";
        case ENOPROTOOPT:
                return "Protocol not available";
        case ENOTCONN:
                return "Transport endpoint is not connected";
        case ENOTSOCK:
                return "Socket operation on non-socket";
        case EOPNOTSUPP:
                return "Operation not supported";
        case EOVERFLOW:
                return "Value too large for defined data type";
        case EPROTO:
                return "Protocol error";
        case EPROTONOSUPPORT:
                return "Protocol not supported";
        case EPROTOTYPE:
                return "Protocol wrong type for socket";
        case ETIMEDOUT:
                return "Connection timed out";
        case EWOULDBLOCK:
                return "Resource temporarily unavailable";
        case ESTALE:
                return "Stale file handle";
        case ESOCKTNOSUPPORT:
                return "Socket type not supported";
        default:
                break;
        }
        /* msvcrt's strerror() writes one buffer, so a second call would
         * change the first one's text: copies, made once. */
        pthread_once(&texts_once, fill_texts);
        return e >= 0 && e < N_TEXTS && texts[e][0] ? texts[e] : NULL;
}

void *loop__shlib_open(const char *name) {
        return (void *) LoadLibraryA(name);
}

void *loop__shlib_sym(void *lib, const char *symbol) {
        /* FARPROC to a data pointer: through an integer, as POSIX's
         * dlsym() does the other way round. */
        return (void *) (intptr_t) GetProcAddress((HMODULE) lib, symbol);
}
