/* SPDX-License-Identifier: MIT */
#pragma once

/*
 * The Windows port (mingw-w64), lib/win32.c: what the POSIX files get from
 * <sys/socket.h>, fcntl() and errno, on winsock. Included by internal.h
 * instead of <sys/socket.h> when configure defined LOOP_WINDOWS.
 *
 * - A descriptor is a winsock SOCKET carried in an int (see loop.h): the
 *   select selector takes sockets only.
 * - Winsock does not set errno: every wrapper below sets errno from
 *   WSAGetLastError() (loop__errno_from_wsa) and returns -1 as the POSIX
 *   call would, so the callers' EINTR and EAGAIN loops stay as they are.
 */
#include <winsock2.h>
#include <ws2tcpip.h>
#include <windows.h>
#include <errno.h>
#include <stdbool.h>
#include <sys/types.h>

/*
 * POSIX's scatter/gather and message header, which winsock has not (it has
 * WSABUF and WSAMSG, with other field names and orders): the completion
 * backends' table (proactor.h) takes a struct msghdr on every platform, and
 * iocp.c turns one into WSARecvFrom()/WSASendTo() arguments (msg_name,
 * msg_namelen, the iovecs; no control data).
 */
struct iovec {
        void *iov_base;
        size_t iov_len;
};

struct msghdr {
        void *msg_name;
        socklen_t msg_namelen;
        struct iovec *msg_iov;
        size_t msg_iovlen;
        void *msg_control;
        size_t msg_controllen;
        int msg_flags;
};

/* No such flag: sock.c's sockets are non-blocking (loop__check_socket sets
 * FIONBIO, since winsock cannot say whether a socket is blocking). */
#define MSG_DONTWAIT 0

/* The C runtime has no aligned_alloc(): _aligned_malloc(), whose blocks
 * only _aligned_free() frees. */
#include <malloc.h>
#define loop__aligned_alloc(alignment, size) _aligned_malloc((size), (alignment))
#define loop__aligned_free _aligned_free

/* WSAStartup(), once per process; 0 or a negative errno. */
int loop__winsock_init(void);

/* A WSAE* code as an errno value (EIO for one with no counterpart). */
int loop__errno_from_wsa(int wsa_error);

/* Sets errno from WSAGetLastError(); returns -1. */
int loop__wsa_fail(void);

/* The socket calls sock.c makes, with errno set. */
ssize_t loop__recv(int fd, void *buf, size_t len, int flags);
ssize_t loop__recvfrom(int fd, void *buf, size_t len, int flags, struct sockaddr *from, socklen_t *fromlen);
int loop__connect(int fd, const struct sockaddr *addr, socklen_t addrlen);
int loop__getsockopt(int fd, int level, int name, void *value, socklen_t *len);
int loop__close_socket(int fd);

/* ioctlsocket(FIONBIO): 0 or -1 and errno. */
int loop__set_nonblock(int fd);

/* A connected pair of loopback TCP sockets, non-blocking (wakeup.c: select()
 * takes sockets only, so no pipe); 0 or a negative errno. */
int loop__socketpair(int fds[2]);

/* The text of an errno value the C runtime's strerror() does not know
 * (mingw's POSIX additions: ECONNREFUSED, ENOTSOCK, EOPNOTSUPP...; the
 * winsock codes loop.h names), or NULL. */
const char *loop__win32_strerror(int e);
