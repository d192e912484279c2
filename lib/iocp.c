/* SPDX-License-Identifier: MIT */
/*
 * The IOCP completion backend (Windows): struct loop_proactor_ops on one
 * I/O completion port, the counterpart of uring.c.
 *
 * - Requests. Each is a struct req whose first member is the OVERLAPPED
 *   given to the system, so a completion's lpOverlapped is the request.
 *   The primitives only queue a request (the table's contract: nothing
 *   reaches the kernel before wait()); wait() issues the queue in order
 *   (WSARecv, WSASend, WSARecvFrom, WSASendTo, AcceptEx, ConnectEx,
 *   IOCTL_AFD_POLL), then applies the cancellations asked for meanwhile
 *   (CancelIoEx), then waits. Every request is found by its user_data in
 *   a hash table (cancel, poll_remove, withdraw name it so).
 * - A socket is associated with the port when a request on it is issued.
 *   The association is made every time and ERROR_INVALID_PARAMETER taken
 *   for "already associated": a cache keyed by the SOCKET value would go
 *   stale when a socket is closed and its value reused, and a request on
 *   an unassociated socket would complete nowhere. (A cache fed by the
 *   loop's io_closed would save that system call; later.)
 *   FILE_SKIP_SET_EVENT_ON_HANDLE is set, FILE_SKIP_COMPLETION_PORT_ON_SUCCESS
 *   is not: every issued request completes through the port, even when
 *   the call succeeded at once, so there is one completion path (and
 *   layered service providers that lie about synchronous success do no
 *   harm). Only a call that fails at once completes here, without the port.
 * - Completions taken from the port (GetQueuedCompletionStatusEx, many per
 *   call) go to a ready list first, and are delivered from it one by one,
 *   each consumed before complete() runs: a complete() that waits again
 *   (the proactor loop's recv_into cancellation) is served from that list
 *   before the port, so a completion already taken off the port is never
 *   waited for in vain. keep() leaves the rest of the list for later.
 * - Timeouts: the port takes milliseconds. The timeout is rounded up and
 *   the wait repeated against a QueryPerformanceCounter deadline, so a
 *   wait never ends before timeout_ns has passed (unless something
 *   completed or wake() was called).
 * - wake(): a packet with no OVERLAPPED posted to the port
 *   (PostQueuedCompletionStatus), coalesced: at most one is in the port.
 * - Readiness (poll_add): AFD polling, the technique of wepoll and libuv's
 *   uv_poll (written here from the documented behaviour, not their code):
 *   IOCTL_AFD_POLL, issued through NtDeviceIoControlFile on a handle of
 *   the AFD driver (\Device\Afd\libloop, opened once and associated with
 *   the port), names the socket's base handle (SIO_BASE_HANDLE: past any
 *   layered provider) and completes through the port once one of the
 *   conditions holds, at once if one holds already. It is one-shot, and
 *   level-triggered: a multishot poll is issued again in the wait after
 *   each completion, so it completes at most once per wait while the
 *   socket stays ready, where io_uring's completes once per wake-up (an
 *   edge). If the AFD handle cannot be opened, or refuses the poll, the
 *   poll is issued on the socket's own handle (which is an AFD handle
 *   too).
 * - free() cancels everything in flight and reaps until it all has
 *   completed (bounded: memory the kernel may still write is leaked
 *   rather than freed).
 */
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "proactor.h"

#include <mswsock.h>
#include <winternl.h>

/* Completions taken from the port per call, and handled per wait at most. */
#define IOCP_ENTRIES 64
#define IOCP_REAP_MAX 4096
/* WSABUFs per recvmsg/sendmsg (the iovecs), on the stack. */
#define IOCP_IOV_MAX 64
/* free(): how long to wait for cancelled requests to complete. */
#define IOCP_DRAIN_MS 5000

/* The AFD driver's poll interface (as documented by wepoll and libuv). */
#define IOCTL_AFD_POLL 0x00012024
#define AFD_POLL_RECEIVE 0x0001
#define AFD_POLL_RECEIVE_EXPEDITED 0x0002
#define AFD_POLL_SEND 0x0004
#define AFD_POLL_DISCONNECT 0x0008
#define AFD_POLL_ABORT 0x0010
#define AFD_POLL_LOCAL_CLOSE 0x0020
#define AFD_POLL_ACCEPT 0x0080
#define AFD_POLL_CONNECT_FAIL 0x0100

typedef struct {
        HANDLE Handle;
        ULONG Events;
        NTSTATUS Status;
} AFD_POLL_HANDLE_INFO;

typedef struct {
        LARGE_INTEGER Timeout;
        ULONG NumberOfHandles;
        ULONG Exclusive;
        AFD_POLL_HANDLE_INFO Handles[1];
} AFD_POLL_INFO;

#ifndef STATUS_PENDING
#define STATUS_PENDING ((NTSTATUS) 0x00000103L)
#endif
#ifndef STATUS_CANCELLED
#define STATUS_CANCELLED ((NTSTATUS) 0xC0000120L)
#endif

typedef NTSTATUS(NTAPI *nt_create_file_t)(PHANDLE, ACCESS_MASK, POBJECT_ATTRIBUTES, PIO_STATUS_BLOCK, PLARGE_INTEGER,
                                          ULONG, ULONG, ULONG, ULONG, PVOID, ULONG);
typedef NTSTATUS(NTAPI *nt_device_io_control_file_t)(HANDLE, HANDLE, PIO_APC_ROUTINE, PVOID, PIO_STATUS_BLOCK, ULONG,
                                                     PVOID, ULONG, PVOID, ULONG);
typedef ULONG(NTAPI *rtl_nt_status_to_dos_error_t)(NTSTATUS);

enum { OP_NOP, OP_POLL, OP_RECV, OP_SEND, OP_RECVMSG, OP_SENDMSG, OP_ACCEPT, OP_CONNECT };
enum { ST_QUEUED, ST_INFLIGHT, ST_READY };

struct req {
        OVERLAPPED ov; /* first: a completion's lpOverlapped is the request */
        uint64_t user_data;
        uint8_t op;
        uint8_t state;
        bool multishot;
        bool armed;         /* issued at least once (withdraw no longer applies) */
        bool cancel;        /* cancel or poll_remove asked for it */
        bool cancel_listed; /* in the pending cancellations */
        SOCKET sock;        /* the socket the request is about */
        HANDLE io_handle;   /* the handle the I/O was issued on (CancelIoEx) */
        int res;
        uint32_t flags;
        DWORD wsa_flags;   /* WSARecv's in/out flags: must live as long as the I/O */
        struct req *next;  /* in the queue or the ready list */
        struct req *cnext; /* in the pending cancellations */
        struct req *hnext; /* hash chain */
        union {
                struct {
                        void *buf;
                        size_t len;
                } io;
                struct msghdr *msg;
                struct {
                        struct sockaddr *addr;
                        socklen_t *addrlen;
                        SOCKET new_sock;
                        char buf[2 * (sizeof(struct sockaddr_storage) + 16)];
                } acc;
                struct {
                        const struct sockaddr *addr;
                        socklen_t addrlen;
                } conn;
                struct {
                        uint32_t events;
                        AFD_POLL_INFO info;
                } poll;
        };
};

struct iocp {
        HANDLE port;
        HANDLE afd; /* \Device\Afd\libloop, or NULL (not opened, or refused) */
        bool afd_tried;
        /* What the AFD device said, for loop__iocp_describe: NtCreateFile's
         * status, and IOCTL_AFD_POLL's first on it and on a socket. */
        NTSTATUS afd_open_status, afd_poll_status, sock_poll_status;
        unsigned n_polls_device, n_polls_socket;
        struct req *q_head, **q_tail; /* not yet issued */
        struct req *r_head, **r_tail; /* completed, not yet delivered */
        struct req *c_head;           /* cancellations for the next wait */
        struct req **buckets;
        size_t n_buckets, n_live, n_inflight;
        LPFN_ACCEPTEX acceptex;
        LPFN_CONNECTEX connectex;
        LONG wake_posted;
        nt_create_file_t nt_create_file;
        nt_device_io_control_file_t nt_device_io_control_file;
        rtl_nt_status_to_dos_error_t rtl_nt_status_to_dos_error;
};

/* A Win32 or WSA error code as a negative errno: the codes overlapped
 * results carry that win32.c's table has not, then that table. */
static int neg_errno(DWORD e) {
        switch (e) {
        case ERROR_OPERATION_ABORTED: /* == WSA_OPERATION_ABORTED */
                return -ECANCELED;
        case ERROR_NETNAME_DELETED:
                return -ECONNRESET;
        case ERROR_CONNECTION_REFUSED:
        case ERROR_PORT_UNREACHABLE:
                return -ECONNREFUSED;
        case ERROR_CONNECTION_ABORTED:
        case ERROR_REQUEST_ABORTED:
                return -ECONNABORTED;
        case ERROR_SEM_TIMEOUT:
                return -ETIMEDOUT;
        case ERROR_NETWORK_UNREACHABLE:
                return -ENETUNREACH;
        case ERROR_HOST_UNREACHABLE:
                return -EHOSTUNREACH;
        case ERROR_INVALID_HANDLE:
                return -EBADF;
        case ERROR_INVALID_PARAMETER:
                return -EINVAL;
        case ERROR_NOT_ENOUGH_MEMORY:
        case ERROR_OUTOFMEMORY:
                return -ENOMEM;
        case ERROR_NOT_FOUND:
                return -ENOENT;
        case ERROR_ACCESS_DENIED:
                return -EACCES;
        case ERROR_NOT_SUPPORTED:
        case ERROR_INVALID_FUNCTION:
                return -EOPNOTSUPP;
        default:
                return -loop__errno_from_wsa((int) e);
        }
}

static int neg_errno_nt(struct iocp *s, NTSTATUS st) {
        if (st == STATUS_CANCELLED)
                return -ECANCELED;
        return neg_errno(s->rtl_nt_status_to_dos_error(st));
}

static int64_t now_ns(void) {
        static LARGE_INTEGER freq;
        LARGE_INTEGER c;

        if (freq.QuadPart == 0)
                QueryPerformanceFrequency(&freq);
        QueryPerformanceCounter(&c);
        /* In two parts: c * 10^9 overflows after some days of uptime. */
        return c.QuadPart / freq.QuadPart * 1000000000 + c.QuadPart % freq.QuadPart * 1000000000 / freq.QuadPart;
}

/* ---- the table of live requests, by user_data ---- */

static size_t bucket(const struct iocp *s, uint64_t user_data) {
        uint64_t h = user_data * UINT64_C(0x9E3779B97F4A7C15);

        return (size_t) (h >> 32) & (s->n_buckets - 1);
}

static int hash_add(struct iocp *s, struct req *r) {
        if (s->n_live >= s->n_buckets) {
                size_t n = s->n_buckets ? s->n_buckets * 2 : 64;
                struct req **b = calloc(n, sizeof(*b));
                if (!b)
                        return -ENOMEM;
                struct req **old = s->buckets;
                size_t n_old = s->n_buckets;
                s->buckets = b;
                s->n_buckets = n;
                for (size_t i = 0; i < n_old; i++)
                        for (struct req *q = old[i], *nx; q; q = nx) {
                                nx = q->hnext;
                                size_t k = bucket(s, q->user_data);
                                q->hnext = b[k];
                                b[k] = q;
                        }
                free(old);
        }
        size_t k = bucket(s, r->user_data);
        r->hnext = s->buckets[k];
        s->buckets[k] = r;
        s->n_live++;
        return 0;
}

static struct req *hash_find(struct iocp *s, uint64_t user_data) {
        if (!s->n_buckets || user_data == 0)
                return NULL;
        for (struct req *r = s->buckets[bucket(s, user_data)]; r; r = r->hnext)
                if (r->user_data == user_data)
                        return r;
        return NULL;
}

static void hash_del(struct iocp *s, struct req *r) {
        for (struct req **p = &s->buckets[bucket(s, r->user_data)]; *p; p = &(*p)->hnext)
                if (*p == r) {
                        *p = r->hnext;
                        s->n_live--;
                        return;
                }
}

/* ---- queues ---- */

static void enqueue(struct iocp *s, struct req *r) {
        r->state = ST_QUEUED;
        r->next = NULL;
        *s->q_tail = r;
        s->q_tail = &r->next;
}

static void make_ready(struct iocp *s, struct req *r, int res, uint32_t flags) {
        r->state = ST_READY;
        r->res = res;
        r->flags = flags;
        r->next = NULL;
        *s->r_tail = r;
        s->r_tail = &r->next;
}

static void req_free(struct iocp *s, struct req *r) {
        hash_del(s, r);
        if (r->op == OP_ACCEPT && r->acc.new_sock != INVALID_SOCKET)
                closesocket(r->acc.new_sock);
        free(r);
}

static int queue_new(struct iocp *s, int op, int fd, uint64_t user_data, struct req **ret) {
        struct req *r = calloc(1, sizeof(*r));

        if (!r)
                return -ENOMEM;
        r->op = (uint8_t) op;
        r->sock = (SOCKET) fd;
        r->user_data = user_data;
        if (op == OP_ACCEPT)
                r->acc.new_sock = INVALID_SOCKET;
        if (hash_add(s, r) < 0) {
                free(r);
                return -ENOMEM;
        }
        enqueue(s, r);
        *ret = r;
        return 0;
}

/* ---- init / free ---- */

static int iocp_init(void **ret) {
        struct iocp *s;
        HMODULE ntdll;
        int r = loop__winsock_init();

        if (r < 0)
                return r;
        ntdll = GetModuleHandleW(L"ntdll.dll");
        if (!ntdll)
                return -ENOSYS;
        s = calloc(1, sizeof(*s));
        if (!s)
                return -ENOMEM;
        s->nt_create_file = (nt_create_file_t) (void (*)(void)) GetProcAddress(ntdll, "NtCreateFile");
        s->nt_device_io_control_file =
                (nt_device_io_control_file_t) (void (*)(void)) GetProcAddress(ntdll, "NtDeviceIoControlFile");
        s->rtl_nt_status_to_dos_error =
                (rtl_nt_status_to_dos_error_t) (void (*)(void)) GetProcAddress(ntdll, "RtlNtStatusToDosError");
        if (!s->nt_create_file || !s->nt_device_io_control_file || !s->rtl_nt_status_to_dos_error) {
                free(s);
                return -ENOSYS;
        }
        s->port = CreateIoCompletionPort(INVALID_HANDLE_VALUE, NULL, 0, 1);
        if (!s->port) {
                r = neg_errno(GetLastError());
                free(s);
                return r;
        }
        s->q_tail = &s->q_head;
        s->r_tail = &s->r_head;
        /* For tests: AFD polls on the sockets' own handles, the fallback
         * for a system without \Device\Afd (see afd_handle). */
        const char *via = getenv("LIBLOOP_IOCP_AFD");
        if (via && strcmp(via, "socket") == 0)
                s->afd_tried = true;
        *ret = s;
        return 0;
}

static int reap(struct iocp *s, int64_t timeout_ns, bool *woken);

/* free(): a completion nobody will see; an accepted socket is closed. */
static void drop_ready(struct iocp *s) {
        for (struct req *r = s->r_head, *nx; r; r = nx) {
                nx = r->next;
                if (r->op == OP_ACCEPT && r->res >= 0)
                        closesocket((SOCKET) r->res);
                req_free(s, r);
        }
        s->r_head = NULL;
        s->r_tail = &s->r_head;
}

static void iocp_free(void *state, bool inherited) {
        struct iocp *s = state;
        struct req *r, *nx;

        if (!s)
                return;
        /* Never issued: nothing of theirs is in the kernel. */
        for (r = s->q_head; r; r = nx) {
                nx = r->next;
                req_free(s, r);
        }
        s->q_head = NULL;
        s->q_tail = &s->q_head;
        s->c_head = NULL;
        drop_ready(s);
        /* In flight: cancel each, then reap until all have completed. */
        if (s->n_inflight > 0) {
                for (size_t i = 0; i < s->n_buckets; i++)
                        for (r = s->buckets[i]; r; r = r->hnext)
                                if (r->state == ST_INFLIGHT) {
                                        r->cancel = true; /* no poll is issued again */
                                        (void) CancelIoEx(r->io_handle, &r->ov);
                                }
                int64_t deadline = now_ns() + (int64_t) IOCP_DRAIN_MS * 1000000;
                bool woken;
                while (s->n_inflight > 0 && now_ns() < deadline) {
                        if (reap(s, 10 * 1000000, &woken) < 0)
                                break;
                        drop_ready(s);
                }
        }
        /* Whatever is still in flight keeps its memory: the kernel may
         * still write to it. Everything else goes. */
        if (s->n_inflight == 0) {
                for (size_t i = 0; i < s->n_buckets; i++)
                        for (r = s->buckets[i]; r; r = nx) {
                                nx = r->hnext;
                                free(r);
                        }
                free(s->buckets);
        }
        if (s->afd)
                CloseHandle(s->afd);
        CloseHandle(s->port);
        if (s->n_inflight == 0)
                free(s);
}

/* ---- the primitives: queue only ---- */

static int iocp_poll_add(void *state, int fd, uint32_t events, bool multishot, uint64_t user_data) {
        struct req *r;
        int k = queue_new(state, OP_POLL, fd, user_data, &r);

        if (k < 0)
                return k;
        r->multishot = multishot;
        r->poll.events = events;
        return 0;
}

/* Cancellation of r, as cancel and poll_remove ask: applied in the next
 * wait (a queued request is then never issued; one in flight gets
 * CancelIoEx; a completed one keeps its result, but a multishot poll's
 * next completion is its last, -ECANCELED). */
static void mark_cancel(struct iocp *s, struct req *r) {
        if (r->cancel)
                return;
        r->cancel = true;
        if (r->state == ST_INFLIGHT && !r->cancel_listed) {
                r->cancel_listed = true;
                r->cnext = s->c_head;
                s->c_head = r;
        }
}

static int iocp_poll_remove(void *state, uint64_t target) {
        struct req *r = hash_find(state, target);

        if (r && r->op == OP_POLL)
                mark_cancel(state, r);
        return 0;
}

static int iocp_cancel(void *state, uint64_t target) {
        struct req *r = hash_find(state, target);

        if (r)
                mark_cancel(state, r);
        return 0;
}

static bool iocp_withdraw(void *state, uint64_t target) {
        struct req *r = hash_find(state, target);

        if (!r || r->state != ST_QUEUED || r->armed || r->op == OP_NOP)
                return false;
        if (r->op == OP_ACCEPT && r->acc.new_sock != INVALID_SOCKET) {
                closesocket(r->acc.new_sock);
                r->acc.new_sock = INVALID_SOCKET;
        }
        r->op = OP_NOP;
        r->multishot = false;
        return true;
}

static int iocp_recv(void *state, int fd, void *buf, size_t len, uint64_t user_data) {
        struct req *r;
        int k = queue_new(state, OP_RECV, fd, user_data, &r);

        if (k < 0)
                return k;
        r->io.buf = buf;
        r->io.len = len;
        return 0;
}

static int iocp_send(void *state, int fd, const void *buf, size_t len, uint64_t user_data) {
        struct req *r;
        int k = queue_new(state, OP_SEND, fd, user_data, &r);

        if (k < 0)
                return k;
        r->io.buf = (void *) buf;
        r->io.len = len;
        return 0;
}

static int iocp_recvmsg(void *state, int fd, struct msghdr *msg, uint64_t user_data) {
        struct req *r;
        int k = queue_new(state, OP_RECVMSG, fd, user_data, &r);

        if (k < 0)
                return k;
        r->msg = msg;
        return 0;
}

static int iocp_sendmsg(void *state, int fd, const struct msghdr *msg, uint64_t user_data) {
        struct req *r;
        int k = queue_new(state, OP_SENDMSG, fd, user_data, &r);

        if (k < 0)
                return k;
        r->msg = (struct msghdr *) msg;
        return 0;
}

static int iocp_accept(void *state, int fd, struct sockaddr *addr, socklen_t *addrlen, uint64_t user_data) {
        struct req *r;
        int k = queue_new(state, OP_ACCEPT, fd, user_data, &r);

        if (k < 0)
                return k;
        r->acc.addr = addr;
        r->acc.addrlen = addrlen;
        return 0;
}

static int iocp_connect(void *state, int fd, const struct sockaddr *addr, socklen_t addrlen, uint64_t user_data) {
        struct req *r;
        int k = queue_new(state, OP_CONNECT, fd, user_data, &r);

        if (k < 0)
                return k;
        r->conn.addr = addr;
        r->conn.addrlen = addrlen;
        return 0;
}

static int iocp_wake(void *state) {
        struct iocp *s = state;

        /* One wake-up packet in the port is enough. */
        if (InterlockedExchange(&s->wake_posted, 1) != 0)
                return 0;
        if (!PostQueuedCompletionStatus(s->port, 0, 0, NULL)) {
                InterlockedExchange(&s->wake_posted, 0);
                return neg_errno(GetLastError());
        }
        return 0;
}

static int iocp_fileno(void *state) {
        /* A port is no descriptor anything can poll. */
        return -EOPNOTSUPP;
}

/* ---- issuing ---- */

static int associate(struct iocp *s, HANDLE h) {
        if (CreateIoCompletionPort(h, s->port, 0, 0))
                /* Nothing waits on the handle itself: spare the kernel
                 * signalling it. Failing costs that only. */
                (void) SetFileCompletionNotificationModes(h, FILE_SKIP_SET_EVENT_ON_HANDLE);
        else if (GetLastError() != ERROR_INVALID_PARAMETER)
                /* ERROR_INVALID_PARAMETER: associated already (see above). */
                return neg_errno(GetLastError());
        return 0;
}

static int extension(SOCKET sock, GUID guid, void *fn, size_t size) {
        DWORD bytes;

        if (WSAIoctl(sock, SIO_GET_EXTENSION_FUNCTION_POINTER, &guid, sizeof(guid), fn, (DWORD) size, &bytes, NULL,
                     NULL) == SOCKET_ERROR)
                return -loop__errno_from_wsa(WSAGetLastError());
        return 0;
}

static int wsa_pending(int ret) {
        if (ret == 0)
                return 0;
        int e = WSAGetLastError();
        return e == WSA_IO_PENDING ? 0 : neg_errno((DWORD) e);
}

static size_t iov_to_wsabuf(const struct msghdr *msg, WSABUF *b) {
        size_t n = msg->msg_iovlen < IOCP_IOV_MAX ? msg->msg_iovlen : IOCP_IOV_MAX;

        for (size_t i = 0; i < n; i++) {
                size_t len = msg->msg_iov[i].iov_len;
                b[i].len = len > ULONG_MAX ? ULONG_MAX : (ULONG) len;
                b[i].buf = msg->msg_iov[i].iov_base;
        }
        return n;
}

static ULONG afd_events(uint32_t events) {
        ULONG a = AFD_POLL_ABORT | AFD_POLL_LOCAL_CLOSE | AFD_POLL_CONNECT_FAIL;

        if (events & POLLIN)
                a |= AFD_POLL_RECEIVE | AFD_POLL_ACCEPT | AFD_POLL_DISCONNECT;
        if (events & POLLPRI)
                a |= AFD_POLL_RECEIVE_EXPEDITED;
        if (events & POLLOUT)
                a |= AFD_POLL_SEND;
        return a;
}

static uint32_t poll_mask(ULONG a) {
        uint32_t m = 0;

        if (a & (AFD_POLL_RECEIVE | AFD_POLL_ACCEPT))
                m |= POLLIN;
        /* The peer's end of stream: readable, as on POSIX, and a hang-up,
         * as WSAPoll() reports it (and so select_win.c): both Windows
         * loops then say the same. */
        if (a & AFD_POLL_DISCONNECT)
                m |= POLLIN | POLLHUP;
        if (a & AFD_POLL_RECEIVE_EXPEDITED)
                m |= POLLPRI;
        if (a & AFD_POLL_SEND)
                m |= POLLOUT;
        if (a & AFD_POLL_ABORT)
                m |= POLLIN | POLLERR | POLLHUP; /* a reset, as Linux reports it */
        if (a & AFD_POLL_CONNECT_FAIL)
                m |= POLLOUT | POLLERR; /* the connect's end; SO_ERROR says why */
        if (a & AFD_POLL_LOCAL_CLOSE)
                m |= POLLNVAL;
        return m;
}

/* \Device\Afd\libloop, once: a handle of the AFD driver that polls any
 * socket; NULL if it cannot be had (then the socket's own handle polls). */
static HANDLE afd_handle(struct iocp *s) {
        if (s->afd_tried)
                return s->afd;
        s->afd_tried = true;

        static const WCHAR path[] = L"\\Device\\Afd\\libloop";
        UNICODE_STRING name = {
                .Length = sizeof(path) - sizeof(WCHAR),
                .MaximumLength = sizeof(path),
                .Buffer = (PWSTR) path,
        };
        OBJECT_ATTRIBUTES attr = {.Length = sizeof(attr), .ObjectName = &name};
        IO_STATUS_BLOCK iosb;
        HANDLE h = NULL;
        NTSTATUS st = s->nt_create_file(&h, SYNCHRONIZE, &attr, &iosb, NULL, 0, FILE_SHARE_READ | FILE_SHARE_WRITE,
                                        FILE_OPEN, 0, NULL, 0);
        s->afd_open_status = st;
        if (st != 0)
                return NULL;
        if (associate(s, h) < 0) {
                CloseHandle(h);
                return NULL;
        }
        s->afd = h;
        return h;
}

static int issue_poll(struct iocp *s, struct req *r) {
        SOCKET base = r->sock;
        DWORD bytes;
        NTSTATUS st;

        /* The base provider's socket: what AFD knows. */
        if (WSAIoctl(r->sock, SIO_BASE_HANDLE, NULL, 0, &base, sizeof(base), &bytes, NULL, NULL) == SOCKET_ERROR)
                base = r->sock;
        for (int via_socket = 0; via_socket < 2; via_socket++) {
                HANDLE h = via_socket ? (HANDLE) base : afd_handle(s);
                if (!h)
                        continue;
                if (via_socket) {
                        int k = associate(s, h);
                        if (k < 0)
                                return k;
                }
                memset(&r->ov, 0, sizeof(r->ov));
                r->poll.info = (AFD_POLL_INFO){
                        .Timeout.QuadPart = INT64_MAX,
                        .NumberOfHandles = 1,
                        .Exclusive = FALSE,
                        .Handles[0] = {.Handle = (HANDLE) base, .Events = afd_events(r->poll.events)},
                };
                /* The OVERLAPPED's Internal/InternalHigh are the
                 * IO_STATUS_BLOCK, and the APC context is what the port
                 * gives back as lpOverlapped. */
                st = s->nt_device_io_control_file(h, NULL, NULL, &r->ov, (PIO_STATUS_BLOCK) &r->ov, IOCTL_AFD_POLL,
                                                  &r->poll.info, sizeof(r->poll.info), &r->poll.info,
                                                  sizeof(r->poll.info));
                if (via_socket ? s->n_polls_socket == 0 : s->n_polls_device == 0) {
                        if (via_socket)
                                s->sock_poll_status = st;
                        else
                                s->afd_poll_status = st;
                }
                if (st == STATUS_PENDING || NT_SUCCESS(st)) {
                        r->io_handle = h;
                        if (via_socket)
                                s->n_polls_socket++;
                        else
                                s->n_polls_device++;
                        return 0;
                }
                if (via_socket || s->n_polls_device > 0)
                        /* Polls work: this socket is the problem. */
                        return neg_errno_nt(s, st);
                /* The AFD handle refuses polls (never took one, so none
                 * is in flight on it): the sockets' own from now on. */
                CloseHandle(s->afd);
                s->afd = NULL;
        }
        return -EOPNOTSUPP;
}

static int issue_accept(struct iocp *s, struct req *r) {
        struct sockaddr_storage ss;
        int len = sizeof(ss);
        DWORD bytes;
        int k;

        if (!s->acceptex && (k = extension(r->sock, (GUID) WSAID_ACCEPTEX, &s->acceptex, sizeof(s->acceptex))) < 0)
                return k;
        /* The accepted socket is made beforehand, of the listener's family. */
        if (getsockname(r->sock, (struct sockaddr *) &ss, &len) == SOCKET_ERROR)
                return -loop__errno_from_wsa(WSAGetLastError());
        r->acc.new_sock = WSASocketW(ss.ss_family, SOCK_STREAM, IPPROTO_TCP, NULL, 0, WSA_FLAG_OVERLAPPED);
        if (r->acc.new_sock == INVALID_SOCKET)
                return -loop__errno_from_wsa(WSAGetLastError());
        if (!s->acceptex(r->sock, r->acc.new_sock, r->acc.buf, 0, sizeof(struct sockaddr_storage) + 16,
                         sizeof(struct sockaddr_storage) + 16, &bytes, &r->ov))
                return wsa_pending(SOCKET_ERROR);
        return 0;
}

static int issue_connect(struct iocp *s, struct req *r) {
        struct sockaddr_storage ss;
        int len = sizeof(ss);
        int k;

        if (!s->connectex && (k = extension(r->sock, (GUID) WSAID_CONNECTEX, &s->connectex, sizeof(s->connectex))) < 0)
                return k;
        /* ConnectEx wants a bound socket: the wildcard address, any port,
         * which is what connect() does implicitly. */
        if (getsockname(r->sock, (struct sockaddr *) &ss, &len) == SOCKET_ERROR) {
                if (WSAGetLastError() != WSAEINVAL)
                        return -loop__errno_from_wsa(WSAGetLastError());
                memset(&ss, 0, sizeof(ss));
                ss.ss_family = r->conn.addr->sa_family;
                len = ss.ss_family == AF_INET6 ? (int) sizeof(struct sockaddr_in6) : (int) sizeof(struct sockaddr_in);
                if (bind(r->sock, (struct sockaddr *) &ss, len) == SOCKET_ERROR)
                        return -loop__errno_from_wsa(WSAGetLastError());
        }
        if (!s->connectex(r->sock, r->conn.addr, r->conn.addrlen, NULL, 0, NULL, &r->ov))
                return wsa_pending(SOCKET_ERROR);
        return 0;
}

/* Issue r: 0 if it will complete through the port, else its result. */
static int issue(struct iocp *s, struct req *r) {
        WSABUF b[IOCP_IOV_MAX];
        int k;

        memset(&r->ov, 0, sizeof(r->ov));
        r->wsa_flags = 0;
        if (r->op == OP_POLL)
                return issue_poll(s, r);
        k = associate(s, (HANDLE) r->sock);
        if (k < 0)
                return k;
        r->io_handle = (HANDLE) r->sock;
        switch (r->op) {
        case OP_RECV:
                b[0].buf = r->io.buf;
                b[0].len = r->io.len > ULONG_MAX ? ULONG_MAX : (ULONG) r->io.len;
                return wsa_pending(WSARecv(r->sock, b, 1, NULL, &r->wsa_flags, &r->ov, NULL));
        case OP_SEND:
                b[0].buf = r->io.buf;
                b[0].len = r->io.len > ULONG_MAX ? ULONG_MAX : (ULONG) r->io.len;
                return wsa_pending(WSASend(r->sock, b, 1, NULL, 0, &r->ov, NULL));
        case OP_RECVMSG: {
                /* The WSABUFs are copied by the call; the buffers and the
                 * address (msg_name, msg_namelen) are written at completion. */
                DWORD n = (DWORD) iov_to_wsabuf(r->msg, b);
                r->msg->msg_flags = 0;
                return wsa_pending(WSARecvFrom(r->sock, b, n, NULL, &r->wsa_flags, r->msg->msg_name,
                                               r->msg->msg_name ? &r->msg->msg_namelen : NULL, &r->ov, NULL));
        }
        case OP_SENDMSG: {
                DWORD n = (DWORD) iov_to_wsabuf(r->msg, b);
                return wsa_pending(
                        WSASendTo(r->sock, b, n, NULL, 0, r->msg->msg_name, r->msg->msg_namelen, &r->ov, NULL));
        }
        case OP_ACCEPT:
                return issue_accept(s, r);
        case OP_CONNECT:
                return issue_connect(s, r);
        default:
                return -EINVAL;
        }
}

/* Everything queued goes to the kernel, then the cancellations. */
static void submit(struct iocp *s) {
        struct req *r = s->q_head;

        s->q_head = NULL;
        s->q_tail = &s->q_head;
        while (r) {
                struct req *nx = r->next;
                if (r->op == OP_NOP)
                        make_ready(s, r, 0, 0);
                else if (r->cancel)
                        make_ready(s, r, -ECANCELED, 0);
                else {
                        int k = issue(s, r);
                        r->armed = true;
                        if (k < 0)
                                make_ready(s, r, k, 0);
                        else {
                                r->state = ST_INFLIGHT;
                                s->n_inflight++;
                        }
                }
                r = nx;
        }
        for (r = s->c_head; r; r = s->c_head) {
                s->c_head = r->cnext;
                r->cancel_listed = false;
                /* ERROR_NOT_FOUND: it completed already, with its result. */
                if (r->state == ST_INFLIGHT)
                        (void) CancelIoEx(r->io_handle, &r->ov);
        }
}

/* ---- completing ---- */

static int finish_accept(struct req *r) {
        SOCKET ns = r->acc.new_sock;
        SOCKET lst = r->sock;

        r->acc.new_sock = INVALID_SOCKET;
        /* accept4(SOCK_NONBLOCK | SOCK_CLOEXEC): non-blocking, not inherited. */
        if (setsockopt(ns, SOL_SOCKET, SO_UPDATE_ACCEPT_CONTEXT, (const char *) &lst, sizeof(lst)) == SOCKET_ERROR ||
            loop__set_nonblock((int) ns) < 0) {
                int e = WSAGetLastError();
                closesocket(ns);
                return neg_errno((DWORD) e);
        }
        (void) SetHandleInformation((HANDLE) ns, HANDLE_FLAG_INHERIT, 0);
        if (r->acc.addr && r->acc.addrlen) {
                struct sockaddr_storage peer;
                int len = sizeof(peer);
                if (getpeername(ns, (struct sockaddr *) &peer, &len) == 0) {
                        size_t n = (size_t) len < (size_t) *r->acc.addrlen ? (size_t) len : (size_t) *r->acc.addrlen;
                        memcpy(r->acc.addr, &peer, n);
                        *r->acc.addrlen = len;
                } else
                        *r->acc.addrlen = 0;
        }
        return (int) ns;
}

/* A completion taken from the port: r joins the ready list with its
 * result, or is issued again (a poll that reported nothing asked for). */
static void finish(struct iocp *s, struct req *r, const OVERLAPPED_ENTRY *e) {
        int res;
        uint32_t flags = 0;

        s->n_inflight--;
        if (r->op == OP_POLL) {
                NTSTATUS st = (NTSTATUS) r->ov.Internal;
                if (!NT_SUCCESS(st)) {
                        make_ready(s, r, neg_errno_nt(s, st), 0);
                        return;
                }
                if (r->multishot && r->cancel) {
                        make_ready(s, r, -ECANCELED, 0);
                        return;
                }
                uint32_t m = 0;
                if (r->poll.info.NumberOfHandles >= 1)
                        m = poll_mask(r->poll.info.Handles[0].Events);
                m &= r->poll.events | POLLERR | POLLHUP | POLLNVAL;
                if (m == 0 && r->cancel) {
                        make_ready(s, r, -ECANCELED, 0);
                        return;
                }
                if (m == 0) {
                        /* Nothing the caller asked for: wait on. */
                        enqueue(s, r);
                        return;
                }
                /* A closed socket ends a multishot poll. */
                if (r->multishot && !(m & POLLNVAL))
                        flags = LOOP_PROACTOR_MORE;
                make_ready(s, r, (int) m, flags);
                return;
        }

        DWORD bytes = 0, fl = 0;
        if (WSAGetOverlappedResult(r->sock, &r->ov, &bytes, FALSE, &fl))
                res = (int) (bytes > INT_MAX ? INT_MAX : bytes);
        else {
                int err = WSAGetLastError();
                if (err == WSAEMSGSIZE && r->op == OP_RECVMSG) {
                        /* A datagram longer than the buffers: truncated,
                         * as recvmsg(2) says with MSG_TRUNC. */
                        r->msg->msg_flags |= MSG_TRUNC;
                        res = (int) e->dwNumberOfBytesTransferred;
                } else
                        res = neg_errno((DWORD) err);
        }
        if (res >= 0 && r->op == OP_ACCEPT)
                res = finish_accept(r);
        else if (res >= 0 && r->op == OP_CONNECT) {
                /* Makes getpeername(), shutdown() and friends work. */
                if (setsockopt(r->sock, SOL_SOCKET, SO_UPDATE_CONNECT_CONTEXT, NULL, 0) == SOCKET_ERROR)
                        res = -loop__errno_from_wsa(WSAGetLastError());
                else
                        res = 0;
        }
        make_ready(s, r, res, 0);
}

/*
 * Take completions off the port into the ready list, waiting up to
 * timeout_ns (< 0: no limit) for the first. Waits again when woken before
 * the deadline with nothing to deliver. *woken: wake() was called.
 */
static int reap(struct iocp *s, int64_t timeout_ns, bool *woken) {
        OVERLAPPED_ENTRY e[IOCP_ENTRIES];
        int64_t deadline = timeout_ns > 0 ? now_ns() + timeout_ns : 0;

        *woken = false;
        for (;;) {
                DWORD ms;
                ULONG n = 0;
                if (timeout_ns < 0)
                        ms = INFINITE;
                else if (timeout_ns == 0)
                        ms = 0;
                else {
                        int64_t left = deadline - now_ns();
                        if (left <= 0)
                                return 0;
                        /* Rounded up: never less than asked. */
                        int64_t m = (left + 999999) / 1000000;
                        ms = m >= INFINITE ? INFINITE - 1 : (DWORD) m;
                }
                if (!GetQueuedCompletionStatusEx(s->port, e, IOCP_ENTRIES, &n, ms, FALSE)) {
                        DWORD err = GetLastError();
                        if (err != WAIT_TIMEOUT)
                                return neg_errno(err);
                        if (timeout_ns > 0)
                                continue; /* the deadline decides */
                        return 0;
                }
                for (ULONG i = 0; i < n; i++) {
                        if (!e[i].lpOverlapped) {
                                InterlockedExchange(&s->wake_posted, 0);
                                *woken = true;
                                continue;
                        }
                        finish(s, (struct req *) e[i].lpOverlapped, &e[i]);
                }
                if (s->r_head || *woken || timeout_ns == 0)
                        return 0;
                /* Only polls that reported nothing of interest: issue them
                 * again and wait on. */
                submit(s);
                if (s->r_head)
                        return 0;
        }
}

static int iocp_wait(void *state, int64_t timeout_ns, loop_proactor_complete_t complete, loop_proactor_keep_t keep,
                     void *ctx) {
        struct iocp *s = state;
        bool woken;
        int n = 0, k;

        submit(s);
        /* Completions already taken (a wait inside complete, or keep's
         * leftovers) are delivered without blocking. */
        k = reap(s, s->r_head ? 0 : timeout_ns, &woken);
        if (k < 0 && !s->r_head)
                return k;
        for (int i = 0; i < IOCP_REAP_MAX && s->r_head; i++) {
                struct req *r = s->r_head;
                uint64_t user_data = r->user_data;
                int res = r->res;
                uint32_t flags = r->flags;

                /* A removed multishot poll whose completion was waiting:
                 * that completion is its last. */
                if ((flags & LOOP_PROACTOR_MORE) && r->cancel) {
                        res = -ECANCELED;
                        flags = 0;
                }
                if (keep && keep(ctx, user_data, res, flags))
                        break;
                /* Consumed first: complete may wait again. */
                s->r_head = r->next;
                if (!s->r_head)
                        s->r_tail = &s->r_head;
                if (flags & LOOP_PROACTOR_MORE)
                        enqueue(s, r); /* issued again by the next wait */
                else
                        req_free(s, r);
                complete(ctx, user_data, res, flags);
                n++;
        }
        return n;
}

size_t loop__iocp_inflight(void *state) {
        return ((struct iocp *) state)->n_inflight;
}

void loop__iocp_describe(void *state, char *buf, size_t size) {
        struct iocp *s = state;

        snprintf(buf, size,
                 "AFD polls issued on \\Device\\Afd\\libloop: %u, on the socket: %u; "
                 "NtCreateFile status %#lx, first IOCTL_AFD_POLL on the device %#lx, on a socket %#lx",
                 s->n_polls_device, s->n_polls_socket, (unsigned long) s->afd_open_status,
                 (unsigned long) s->afd_poll_status, (unsigned long) s->sock_poll_status);
}

const struct loop_proactor_ops loop_proactor_iocp = {
        .name = "iocp",
        .init = iocp_init,
        .free = iocp_free,
        .poll_add = iocp_poll_add,
        .poll_remove = iocp_poll_remove,
        .recv = iocp_recv,
        .send = iocp_send,
        .recvmsg = iocp_recvmsg,
        .sendmsg = iocp_sendmsg,
        .accept = iocp_accept,
        .connect = iocp_connect,
        .cancel = iocp_cancel,
        .withdraw = iocp_withdraw,
        .wait = iocp_wait,
        .fileno = iocp_fileno,
        .wake = iocp_wake,
};
