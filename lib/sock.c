/* SPDX-License-Identifier: MIT */
/*
 * Socket operations that return futures (asyncio's loop.sock_recv,
 * sock_recv_into, sock_sendall, sock_accept, sock_connect, sock_sendto and
 * sock_recvfrom), built on readers and writers the way
 * BaseSelectorEventLoop builds them.
 *
 * A loop kind that does them natively (the proactor loop, with io_uring's
 * RECV, SEND, ACCEPT...) takes each call through loop->impl->sock_call
 * once the arguments and the socket are checked here: see start() and
 * proactor_loop.c. Everything below start() is the selector loop's way.
 *
 * Each call first tries the system call at once, as asyncio does: data that
 * is already there, a connection already queued or room in the send buffer
 * completes the future before the call returns (its done callbacks still
 * wait for call_soon, which is the future's business). Only EAGAIN makes an
 * operation pending: it gets a heap state (struct sock_op) and a reader
 * (receiving, accepting) or a writer (sending, connecting) on its fd, and
 * retries each time the fd is ready. Completion and cancellation both
 * remove the reader or writer and free the state; cancellation goes through
 * loop__future_on_cancel, so it happens inside loop_future_cancel() and a
 * cancelled receive can never consume data afterwards.
 *
 * One operation per direction per fd: a second receive while one is
 * pending on the same fd fails with EBUSY instead of replacing the reader
 * the way asyncio's add_reader would (the first future would then never
 * complete). Pending operations are found through a per-loop table indexed
 * by fd (loop->sockets), created on first use. The table is also a close
 * hook, and loop_close() hands it back to us: the
 * selector loop drops readers and writers on close without calling them,
 * so the hook cancels every pending future and frees the states. In a fork
 * child it only frees memory: futures of an inherited loop cannot be
 * completed there (they answer ECHILD) and the kernel state is the
 * parent's.
 *
 * Ownership: a pending state holds one reference to its future and the
 * future holds one to the loop, so a loop with pending operations lives
 * until loop_close() (which ends them) even if the caller dropped every
 * reference. Results are heap structs owned by the future; a received
 * buffer too. The fd an accept returns belongs to the caller from the
 * moment the future completes: nothing here ever closes it.
 *
 * Platform quirks:
 * - send() on a stream whose peer is gone raises SIGPIPE, which kills a
 *   program by default. Python ignores SIGPIPE process-wide, so asyncio
 *   sees EPIPE; we get the same per call through loop__send() and
 *   loop__sendto() (posix.c): MSG_NOSIGNAL on Linux and the BSDs,
 *   SO_NOSIGPIPE on macOS, which has no MSG_NOSIGNAL, and a blocked and
 *   consumed SIGPIPE where there is neither.
 * - accept4() gives the new fd O_NONBLOCK and FD_CLOEXEC atomically, so a
 *   concurrent fork+exec in another thread cannot inherit it. macOS has no
 *   accept4() and no SOCK_CLOEXEC: loop__accept_nonblock() (posix.c) falls
 *   back to accept() and fcntl() there.
 * - A connection that was reset before accept() took it fails with
 *   ECONNABORTED; it is skipped and the accept goes on waiting, as libuv
 *   does: the listener is fine and the caller could do nothing else.
 * - connect() interrupted by a signal (EINTR) goes on in the background
 *   (POSIX), exactly like EINPROGRESS: both wait for writability, then read
 *   the outcome with SO_ERROR. Any other error, including the EAGAIN that
 *   Linux gives for a full AF_UNIX backlog, fails the future, as in libuv.
 * - Readiness can be spurious (select and poll after another thread read,
 *   a datagram dropped for a bad checksum): EAGAIN in a callback simply
 *   keeps the operation pending.
 * - epoll forgets a descriptor that is closed, so an operation pending on
 *   a closed fd never completes there (select reports it, and the retry
 *   fails with EBADF). Cancel before closing.
 */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"

/* Every transfer is non-blocking by itself, whatever the socket's O_NONBLOCK
 * says: a blocking socket cannot stall the loop. Sends go through
 * loop__send() and loop__sendto(), which add what keeps SIGPIPE away. */
#define RECV_FLAGS MSG_DONTWAIT
#define SEND_FLAGS MSG_DONTWAIT

enum {
        OP_RECV = LOOP__SOCK_RECV,
        OP_RECV_INTO = LOOP__SOCK_RECV_INTO,
        OP_RECVFROM = LOOP__SOCK_RECVFROM,
        OP_ACCEPT = LOOP__SOCK_ACCEPT,
        OP_SENDALL = LOOP__SOCK_SENDALL,
        OP_SENDTO = LOOP__SOCK_SENDTO,
        OP_CONNECT = LOOP__SOCK_CONNECT,
};

struct loop__sockets;

struct sock_op {
        loop_t *loop;
        struct loop__sockets *table;
        loop_future_t *future;          /* a reference while pending */
        struct loop_sock_result *res;   /* handed to the future on success */
        uint8_t kind;
        bool writing;                   /* a writer, not a reader */
        bool registered;                /* the reader/writer is ours now */
        int fd;
        void *buf;                      /* recv_into: the caller's; send*: our copy */
        size_t size;                    /* bytes wanted, or to send */
        size_t sent;                    /* sendall: progress */
        socklen_t addrlen;              /* sendto, connect: the destination */
        struct sockaddr_storage addr;
};

struct sock_slot {
        struct sock_op *reader, *writer;
};

/* The pending operations of one loop, by fd (loop->sockets). */
struct loop__sockets {
        struct loop__close_hook hook;
        struct sock_slot *slots;
        size_t n_slots;
};

static void table_close(loop_t *loop, struct loop__close_hook *hook);

static int table_get(loop_t *loop, int fd, struct loop__sockets **ret) {
        struct loop__sockets *t = loop->sockets;

        if (!t) {
                t = calloc(1, sizeof(*t));
                if (!t)
                        return -ENOMEM;
                t->hook.fn = table_close;
                loop__add_close_hook(loop, &t->hook);
                loop->sockets = t;
        }
        int r = loop__fd_table_reserve((void **) &t->slots, &t->n_slots, sizeof(*t->slots), fd);
        if (r < 0)
                return r;
        *ret = t;
        return 0;
}

static struct sock_op **slot_of(struct sock_op *op) {
        struct sock_slot *s = &op->table->slots[op->fd];

        return op->writing ? &s->writer : &s->reader;
}

/* ---- results --------------------------------------------------------- */

void loop__sock_result_free(void *p) {
        free(p);
}

/* recv and recvfrom: the bytes belong to the future too. */
void loop__sock_result_free_data(void *p) {
        struct loop_sock_result *res = p;

        free(res->data);
        free(res);
}

/* ---- the system calls ------------------------------------------------ */

static bool would_block(int e) {
        return e == EAGAIN || e == EWOULDBLOCK;
}

/* Receive into a fresh buffer of op->size bytes; it is only allocated when
 * there may be something to read, so a pending receive holds no buffer. */
static int try_recv(struct sock_op *op, bool from) {
        struct loop_sock_result *res = op->res;
        /* Never NULL, even for size 0, so memcpy(dst, data, size) is valid. */
        char *buf = malloc(op->size ? op->size : 1);
        ssize_t n;

        if (!buf)
                return -ENOMEM;
        do {
                if (from) {
                        res->addrlen = sizeof(res->addr);
                        n = loop__recvfrom(op->fd, buf, op->size, RECV_FLAGS, (struct sockaddr *) &res->addr, &res->addrlen);
                } else
                        n = loop__recv(op->fd, buf, op->size, RECV_FLAGS);
        } while (n < 0 && errno == EINTR);
        if (n < 0) {
                int r = would_block(errno) ? 0 : -errno;
                free(buf);
                res->addrlen = 0;
                return r;
        }
        if ((size_t) n < op->size) {
                /* Give back what the peer did not fill: the future may live long. */
                char *shrunk = realloc(buf, n ? (size_t) n : 1);
                if (shrunk)
                        buf = shrunk;
        }
        res->data = buf;
        res->nbytes = (size_t) n;
        return 1;
}

static int try_recv_into(struct sock_op *op) {
        ssize_t n;

        do
                n = loop__recv(op->fd, op->buf, op->size, RECV_FLAGS);
        while (n < 0 && errno == EINTR);
        if (n < 0)
                return would_block(errno) ? 0 : -errno;
        op->res->data = op->buf;
        op->res->nbytes = (size_t) n;
        return 1;
}

static int try_accept(struct sock_op *op) {
        struct loop_sock_result *res = op->res;
        int fd;

        for (;;) {
                res->addrlen = sizeof(res->addr);
                fd = loop__accept_nonblock(op->fd, (struct sockaddr *) &res->addr, &res->addrlen);
                if (fd >= 0)
                        break;
                if (errno == EINTR || errno == ECONNABORTED)
                        continue;
                res->addrlen = 0;
                return would_block(errno) ? 0 : -errno;
        }
        res->fd = fd;
        return 1;
}

/* One send per readiness, as asyncio's _sock_sendall: a fast peer cannot
 * keep the loop in here while other callbacks wait. */
static int try_sendall(struct sock_op *op) {
        ssize_t n;

        if (op->sent < op->size) {
                do
                        n = loop__send(op->fd, (const char *) op->buf + op->sent, op->size - op->sent, SEND_FLAGS);
                while (n < 0 && errno == EINTR);
                if (n < 0)
                        return would_block(errno) ? 0 : -errno;
                op->sent += (size_t) n;
                if (op->sent < op->size)
                        return 0;
        }
        op->res->nbytes = op->size;
        return 1;
}

static int try_sendto(struct sock_op *op) {
        const struct sockaddr *to = op->addrlen ? (const struct sockaddr *) &op->addr : NULL;
        ssize_t n;

        do
                n = loop__sendto(op->fd, op->buf, op->size, SEND_FLAGS, to, op->addrlen);
        while (n < 0 && errno == EINTR);
        if (n < 0)
                return would_block(errno) ? 0 : -errno;
        op->res->nbytes = (size_t) n;
        return 1;
}

/* Writable after EINPROGRESS: the outcome is in SO_ERROR. */
static int try_connect_done(struct sock_op *op) {
        int err = 0;
        socklen_t len = sizeof(err);

        if (loop__getsockopt(op->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
                return -errno;
        if (err == EINPROGRESS || err == EALREADY)
                return 0;
        return err ? -err : 1;
}

/* 1: done (op->res is filled), 0: would block, < 0: failed. */
static int attempt(struct sock_op *op) {
        switch (op->kind) {
        case OP_RECV:
                return try_recv(op, false);
        case OP_RECVFROM:
                return try_recv(op, true);
        case OP_RECV_INTO:
                return try_recv_into(op);
        case OP_ACCEPT:
                return try_accept(op);
        case OP_SENDALL:
                return try_sendall(op);
        case OP_SENDTO:
                return try_sendto(op);
        case OP_CONNECT:
                return try_connect_done(op);
        }
        return -EINVAL;
}

/* ---- life cycle of an operation -------------------------------------- */

static bool owns_data(const struct sock_op *op) {
        return op->kind == OP_RECV || op->kind == OP_RECVFROM;
}

static void op_free(struct sock_op *op) {
        if (op->kind == OP_SENDALL || op->kind == OP_SENDTO)
                free(op->buf);
        if (op->res) {
                /* A result the future never took: what it holds is still ours. */
                if (owns_data(op))
                        free(op->res->data);
                if (op->res->fd >= 0)
                        loop__close_socket(op->res->fd);
                free(op->res);
        }
        free(op);
}

/* Forget the reader/writer and the table slot; nothing runs for op after this. */
static void op_unregister(struct sock_op *op) {
        if (!op->registered)
                return;
        op->registered = false;
        *slot_of(op) = NULL;
        /* Fails harmlessly on a closing loop, whose close drops the
         * registration itself. */
        if (op->writing)
                loop_remove_writer(op->loop, op->fd);
        else
                loop_remove_reader(op->loop, op->fd);
}

/* End op without touching its future's state. */
static void op_drop(struct sock_op *op) {
        op_unregister(op);
        loop__future_on_cancel(op->future, NULL, NULL);
        loop_future_unref(op->future);
        op_free(op);
}

/* Complete the future with the outcome r of attempt() and free op. */
static void op_finish(struct sock_op *op, int r) {
        loop_future_t *f = op->future;

        op_unregister(op);
        /* Before anything can complete f: cancel must not come back here. */
        loop__future_on_cancel(f, NULL, NULL);
        if (r > 0) {
                if (loop_future_set_result(f, op->res, owns_data(op) ? loop__sock_result_free_data : loop__sock_result_free) >= 0)
                        op->res = NULL;
        } else if (loop_future_set_error(f, r) < 0)
                /* -ECANCELED from a system call: the future must not stay pending. */
                loop_future_cancel(f);
        loop_future_unref(f);
        op_free(op);
}

static int on_ready(loop_t *loop, int fd, void *userdata) {
        struct sock_op *op = userdata;

        /* Someone completed the future by hand (asyncio's callbacks check
         * fut.done() too): leave the data for the next reader. */
        if (loop_future_done(op->future)) {
                op_drop(op);
                return 0;
        }
        int r = attempt(op);
        if (r != 0)
                op_finish(op, r);
        return 0;
}

/* Inside loop_future_cancel(), which completes f as cancelled once this
 * returns: its caller holds a reference, so dropping ours is safe. */
static void on_cancel(loop_future_t *f, void *data) {
        op_drop(data);
}

static void table_close(loop_t *loop, struct loop__close_hook *hook) {
        struct loop__sockets *t = (struct loop__sockets *) hook;
        bool child = loop__inherited(loop);

        for (size_t fd = 0; fd < t->n_slots; fd++) {
                struct sock_op *ops[] = { t->slots[fd].reader, t->slots[fd].writer };
                for (size_t i = 0; i < ELEMENTSOF(ops); i++) {
                        struct sock_op *op = ops[i];
                        if (!op)
                                continue;
                        /* In a fork child, memory only: the fds and the
                         * selector are the parent's too, and the future
                         * cannot be completed there. A future completed by
                         * hand has no cancel hook left to free op. */
                        if (child || loop_future_done(op->future)) {
                                op_drop(op);
                                continue;
                        }
                        /* Our reference may be the last: keep f alive through cancel. */
                        loop_future_t *f = loop_future_ref(op->future);
                        loop_future_cancel(f);
                        loop_future_unref(f);
                }
        }
        loop->sockets = NULL;
        free(t->slots);
        free(t);
}

/* ---- the common path ------------------------------------------------- */

/*
 * Start op (kind, fd and its arguments filled in, the rest zero): errors
 * before any I/O are returned; from the first system call on, every outcome
 * goes through the future. Takes op in all cases.
 */
static int submit(loop_t *loop, struct sock_op *op, loop_future_t **ret) {
        loop_future_t *f = NULL;
        struct loop__sockets *t;
        int r;

        r = table_get(loop, op->fd, &t);
        if (r < 0)
                goto fail;
        op->loop = loop;
        op->table = t;
        if (*slot_of(op)) {
                r = -EBUSY;
                goto fail;
        }
        op->res = malloc(sizeof(*op->res));
        if (!op->res) {
                r = -ENOMEM;
                goto fail;
        }
        *op->res = (struct loop_sock_result) { .fd = -1 };
        r = loop_create_future(loop, &f);
        if (r < 0)
                goto fail;
        op->future = loop_future_ref(f);

        if (op->kind == OP_CONNECT) {
                /* The first try is connect() itself, later ones read
                 * SO_ERROR. Not retried on EINTR: the attempt goes on in
                 * the background and a second connect() would say EALREADY. */
                if (loop__connect(op->fd, (const struct sockaddr *) &op->addr, op->addrlen) == 0)
                        r = 1;
                else if (errno == EINPROGRESS || errno == EINTR)
                        r = 0;
                else
                        r = -errno;
        } else
                r = attempt(op);
        if (r == -ENOTSOCK || r == -EBADF) {
                /* Not a socket, not open: nothing happened, so it is the
                 * caller's error, not the operation's outcome. */
                loop_future_unref(op->future);
                op->future = NULL;
                goto fail;
        }
        if (r == 0) {
                r = op->writing ? loop_add_writer(loop, op->fd, on_ready, op)
                                : loop_add_reader(loop, op->fd, on_ready, op);
                if (r >= 0) {
                        op->registered = true;
                        *slot_of(op) = op;
                        loop__future_on_cancel(f, on_cancel, op);
                        *ret = f;
                        return 0;
                }
                /* The operation may have begun (a partial send, a connection
                 * in progress): report it as its failure. */
        }
        op_finish(op, r);
        *ret = f;
        return 0;

fail:
        loop_future_unref(f);
        op_free(op);
        return r;
}

static struct sock_op *op_new(int kind, int fd) {
        struct sock_op *op = calloc(1, sizeof(*op));

        if (op) {
                op->kind = (uint8_t) kind;
                op->fd = fd;
                op->writing = kind == OP_SENDALL || kind == OP_SENDTO || kind == OP_CONNECT;
        }
        return op;
}

/*
 * Every public call ends here once its arguments are checked: the socket is
 * checked, then a loop kind that does socket operations natively (the
 * proactor loop) takes the call; otherwise it is built on readers and
 * writers below.
 */
static int start(loop_t *loop, const struct loop__sock_call *call, loop_future_t **ret) {
        struct sock_op *op;
        int r;

        /* A transfer finds out for itself (ENOTSOCK, EBADF from its first
         * try, before any future); accept and connect are checked first:
         * on a blocking socket their first try would block. So would a
         * sendall of nothing, which makes no system call at all. */
        if (call->kind == OP_ACCEPT || call->kind == OP_CONNECT || (call->kind == OP_SENDALL && call->size == 0))
                r = loop__check_socket(call->fd);
        else
                r = call->fd < 0 ? -EBADF : 0;
        if (r < 0)
                return r;
        if (loop->impl->sock_call) {
                r = loop->impl->sock_call(loop, call, ret);
                if (r != -EOPNOTSUPP)
                        return r;
        }
        op = op_new(call->kind, call->fd);
        if (!op)
                return -ENOMEM;
        op->size = call->size;
        switch (call->kind) {
        case OP_RECV_INTO:
                op->buf = call->buf;
                break;
        case OP_SENDALL:
        case OP_SENDTO:
                /* A copy: the caller's buffer is only read during the
                 * call, so it may be a stack array or freed at once. */
                if (call->size > 0) {
                        op->buf = malloc(call->size);
                        if (!op->buf) {
                                free(op);
                                return -ENOMEM;
                        }
                        memcpy(op->buf, call->data, call->size);
                }
                break;
        }
        if (call->addr) {
                memcpy(&op->addr, call->addr, call->addrlen);
                op->addrlen = call->addrlen;
        }
        return submit(loop, op, ret);
}

/* The checks before any allocation. */
static int check_call(loop_t *loop, loop_future_t **ret) {
        int r = loop__usable(loop);

        if (r < 0)
                return r;
        return_if_fail(ret, -EINVAL);
        return 0;
}

/* ---- the public calls ------------------------------------------------ */

static int recv_common(loop_t *loop, int kind, int fd, size_t nbytes, loop_future_t **ret) {
        int r = check_call(loop, ret);

        if (r < 0)
                return r;
        return start(loop, &(struct loop__sock_call) { .kind = kind, .fd = fd, .size = nbytes }, ret);
}

LOOP_EXPORT int loop_sock_recv(loop_t *loop, int fd, size_t nbytes, loop_future_t **ret) {
        return recv_common(loop, OP_RECV, fd, nbytes, ret);
}

LOOP_EXPORT int loop_sock_recvfrom(loop_t *loop, int fd, size_t nbytes, loop_future_t **ret) {
        return recv_common(loop, OP_RECVFROM, fd, nbytes, ret);
}

LOOP_EXPORT int loop_sock_recv_into(loop_t *loop, int fd, void *buf, size_t nbytes, loop_future_t **ret) {
        int r = check_call(loop, ret);

        if (r < 0)
                return r;
        return_if_fail(buf || nbytes == 0, -EINVAL);
        return start(loop, &(struct loop__sock_call) { .kind = OP_RECV_INTO, .fd = fd, .buf = buf, .size = nbytes },
                     ret);
}

LOOP_EXPORT int loop_sock_accept(loop_t *loop, int fd, loop_future_t **ret) {
        int r = check_call(loop, ret);

        if (r < 0)
                return r;
        return start(loop, &(struct loop__sock_call) { .kind = OP_ACCEPT, .fd = fd }, ret);
}

LOOP_EXPORT int loop_sock_sendall(loop_t *loop, int fd, const void *data, size_t size, loop_future_t **ret) {
        int r = check_call(loop, ret);

        if (r < 0)
                return r;
        return_if_fail(data || size == 0, -EINVAL);
        return start(loop, &(struct loop__sock_call) { .kind = OP_SENDALL, .fd = fd, .data = data, .size = size },
                     ret);
}

LOOP_EXPORT int loop_sock_sendto(loop_t *loop, int fd, const void *data, size_t size, const struct sockaddr *addr,
                                 socklen_t addrlen, loop_future_t **ret) {
        int r = check_call(loop, ret);

        if (r < 0)
                return r;
        return_if_fail(data || size == 0, -EINVAL);
        /* No address is fine on a connected socket; a length without one is not. */
        return_if_fail(addr ? addrlen > 0 : addrlen == 0, -EINVAL);
        return_if_fail((size_t) addrlen <= sizeof(struct sockaddr_storage), -EINVAL);
        return start(loop,
                     &(struct loop__sock_call) { .kind = OP_SENDTO, .fd = fd, .data = data, .size = size,
                                                 .addr = addr, .addrlen = addrlen },
                     ret);
}

LOOP_EXPORT int loop_sock_connect(loop_t *loop, int fd, const struct sockaddr *addr, socklen_t addrlen,
                                  loop_future_t **ret) {
        int r = check_call(loop, ret);

        if (r < 0)
                return r;
        return_if_fail(addr && addrlen > 0, -EINVAL);
        return_if_fail((size_t) addrlen <= sizeof(struct sockaddr_storage), -EINVAL);
        return start(loop, &(struct loop__sock_call) { .kind = OP_CONNECT, .fd = fd, .addr = addr, .addrlen = addrlen },
                     ret);
}
