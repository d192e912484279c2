/* SPDX-License-Identifier: MIT */
/*
 * libloop: asyncio's event-loop model for C.
 *
 * This header is the whole contract. Every type is opaque; every call that
 * can fail returns 0 (or a count) on success and a negative errno value on
 * failure. loop_strerror() turns an error into text. The same header serves
 * every architecture and every configuration: which backends were compiled
 * in is asked at run time (loop_selector_names()).
 */
#ifndef LOOP_H
#define LOOP_H

#include <stddef.h>
#include <stdint.h>
#ifdef _WIN32
/*
 * Windows: descriptors are winsock SOCKETs. Every `int fd` of this header
 * carries one: a SOCKET is a UINT_PTR, but Windows' socket handles are
 * kernel handles, whose values fit in 32 bits (so that 32-bit and 64-bit
 * processes can share them), so (int) s and back is lossless.
 */
#include <errno.h>
#include <winsock2.h>
#include <ws2tcpip.h>
/* Error codes libloop returns that the C runtime's <errno.h> lacks: winsock's,
 * as Python's errno module has them on Windows. */
#ifndef ESHUTDOWN
#define ESHUTDOWN WSAESHUTDOWN
#endif
#ifndef ESTALE
#define ESTALE WSAESTALE
#endif
#ifndef ESOCKTNOSUPPORT
#define ESOCKTNOSUPPORT WSAESOCKTNOSUPPORT
#endif
#else
#include <sys/socket.h>
#endif
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct loop loop_t;
typedef struct loop_handle loop_handle_t;
typedef struct loop_selector loop_selector_t;
typedef struct loop_future loop_future_t;

/*
 * Callbacks take the user's pointer last. A callback that returns a
 * negative errno value has "raised": the loop passes the error to its
 * exception handler and goes on. Any other return value is ignored.
 */
typedef int (*loop_callback_t)(loop_t *loop, void *userdata);
typedef int (*loop_io_callback_t)(loop_t *loop, int fd, void *userdata);

/* Errors */
const char *loop_strerror(int error);

/* Selectors: the readiness backends (asyncio's selectors module). */
int loop_selector_new(const char *name, loop_selector_t **ret);
loop_selector_t *loop_selector_ref(loop_selector_t *sel);
loop_selector_t *loop_selector_unref(loop_selector_t *sel);
const char *loop_selector_name(const loop_selector_t *sel);
const char *const *loop_selector_names(void);

/* Loops */
int loop_new(loop_t **ret);
int loop_selector_loop_new(loop_selector_t *sel, loop_t **ret);
/*
 * asyncio's ProactorEventLoop: a loop on a completion backend (io_uring).
 * -EOPNOTSUPP when none is compiled in, or the kernel's error when it
 * refuses (-ENOSYS, -EPERM: see loop_proactor_loop_new(3)).
 */
int loop_proactor_loop_new(loop_t **ret);
loop_t *loop_ref(loop_t *loop);
loop_t *loop_unref(loop_t *loop);
loop_selector_t *loop_get_selector(loop_t *loop);
int loop_close(loop_t *loop);
int loop_is_closed(const loop_t *loop);
int loop_is_running(const loop_t *loop);

/* Running */
int loop_run_forever(loop_t *loop);
int loop_run_once(loop_t *loop, int64_t timeout_ns);
int loop_stop(loop_t *loop);

/* Time: a monotonic clock, in seconds (as asyncio) or nanoseconds. */
double loop_time(const loop_t *loop);
int64_t loop_time_ns(const loop_t *loop);

/* Scheduling callbacks. ret may be NULL when no handle is wanted. */
int loop_call_soon(loop_t *loop, loop_callback_t cb, void *userdata,
                   loop_handle_t **ret);
int loop_call_soon_threadsafe(loop_t *loop, loop_callback_t cb, void *userdata,
                              loop_handle_t **ret);
int loop_call_later(loop_t *loop, double delay, loop_callback_t cb,
                    void *userdata, loop_handle_t **ret);
int loop_call_later_ns(loop_t *loop, int64_t delay_ns, loop_callback_t cb,
                       void *userdata, loop_handle_t **ret);
int loop_call_at(loop_t *loop, double when, loop_callback_t cb, void *userdata,
                 loop_handle_t **ret);
int loop_call_at_ns(loop_t *loop, int64_t when_ns, loop_callback_t cb,
                    void *userdata, loop_handle_t **ret);

/*
 * loop_call_soon() without a handle is inline: it stores the callback in
 * the loop's ready queue itself and calls the function only when it
 * cannot (no room left, a handle wanted, the loop closed or inherited
 * across fork(), a loop_call_soon_threadsafe() call waiting to be taken in
 * first, debug mode, a NULL argument); the function then does the rest or
 * returns the error. A call into a shared library costs more than the
 * store does (bench/RESULTS.md in the source tree).
 *
 * What the inline code relies on is ABI, kept within this SONAME: a loop
 * begins with a struct loop__soon_window. While *generation equals
 * open_generation and tail != end, a caller in the loop's thread may store
 * an entry at tail and advance tail. The library shuts that window
 * whenever a call must go through the function (and may keep it shut for
 * good); nothing else about a loop is visible. Define LOOP_NO_INLINE
 * before including this header to call the function every time;
 * (loop_call_soon)(...) calls it once.
 */
struct loop__ready_entry {
        loop_callback_t cb;
        void *userdata;
};

struct loop__soon_window {
        struct loop__ready_entry *tail;         /* the first free entry */
        struct loop__ready_entry *end;          /* one past the last free entry */
        const uint64_t *generation;             /* changes with a threadsafe post */
        uint64_t open_generation;               /* *generation while the window is open */
};

#if defined(__GNUC__)
#define LOOP__LIKELY(x) __builtin_expect(!!(x), 1)
/* Other threads change *generation (atomically): read it as an atomic
 * too, which is the same plain load on every processor. */
#define LOOP__LOAD(p) __atomic_load_n((p), __ATOMIC_RELAXED)
#else
#define LOOP__LIKELY(x) (x)
#define LOOP__LOAD(p) (*(p))
#endif

static inline int loop__call_soon_inline(loop_t *loop, loop_callback_t cb, void *userdata,
                                         loop_handle_t **ret) {
        struct loop__soon_window *w = (struct loop__soon_window *) (void *) loop;

        if (LOOP__LIKELY(loop && cb && !ret && w->tail != w->end && LOOP__LOAD(w->generation) == w->open_generation)) {
                w->tail->cb = cb;
                w->tail->userdata = userdata;
                w->tail++;
                return 0;
        }
        return (loop_call_soon)(loop, cb, userdata, ret);
}

#ifndef LOOP_NO_INLINE
#define loop_call_soon(loop, cb, userdata, ret) loop__call_soon_inline(loop, cb, userdata, ret)
#endif

/* Handles (asyncio's Handle and TimerHandle) */
loop_handle_t *loop_handle_ref(loop_handle_t *handle);
loop_handle_t *loop_handle_unref(loop_handle_t *handle);
int loop_handle_cancel(loop_handle_t *handle);
int loop_handle_cancelled(const loop_handle_t *handle);
double loop_handle_when(const loop_handle_t *handle);
int64_t loop_handle_when_ns(const loop_handle_t *handle);

/* Watching file descriptors */
int loop_add_reader(loop_t *loop, int fd, loop_io_callback_t cb, void *userdata);
int loop_remove_reader(loop_t *loop, int fd);
int loop_add_writer(loop_t *loop, int fd, loop_io_callback_t cb, void *userdata);
int loop_remove_writer(loop_t *loop, int fd);
int loop_pause_reader(loop_t *loop, int fd);
int loop_resume_reader(loop_t *loop, int fd);
int loop_pause_writer(loop_t *loop, int fd);
int loop_resume_writer(loop_t *loop, int fd);

/*
 * I/O watchers (sd_event_add_io, ev_io): any number per descriptor, beside
 * its reader and writer, each an object with a mask of events, enabled or
 * not. The callback gets every condition that holds in one call;
 * LOOP_IO_ERROR and LOOP_IO_HANGUP are reported whatever the mask, as
 * poll(2) reports POLLERR and POLLHUP. ret NULL: the loop owns the watcher
 * until it is removed or the loop closed; otherwise the caller's reference,
 * and dropping the last one removes the watcher.
 */
typedef struct loop_io loop_io_t;

#define LOOP_IO_READABLE 0x1u
#define LOOP_IO_WRITABLE 0x2u
#define LOOP_IO_ERROR 0x4u
#define LOOP_IO_HANGUP 0x8u

typedef int (*loop_io_handler_t)(loop_io_t *io, int fd, uint32_t revents, void *userdata);

int loop_add_io(loop_t *loop, int fd, uint32_t events, loop_io_handler_t cb, void *userdata, loop_io_t **ret);
loop_io_t *loop_io_ref(loop_io_t *io);
loop_io_t *loop_io_unref(loop_io_t *io);
int loop_io_remove(loop_io_t *io);
int loop_io_set_events(loop_io_t *io, uint32_t events);
int loop_io_get_events(const loop_io_t *io);
int loop_io_set_enabled(loop_io_t *io, int enabled);
int loop_io_get_enabled(const loop_io_t *io);
int loop_io_get_fd(const loop_io_t *io);
loop_t *loop_io_get_loop(const loop_io_t *io);

/* Error handling */
struct loop_exception_context {
        size_t size;            /* sizeof(struct loop_exception_context) */
        const char *message;    /* what went wrong, never NULL */
        int error;              /* negative errno value, or 0 */
        loop_handle_t *handle;  /* the handle whose callback failed, or NULL */
        int fd;                 /* the file descriptor involved, or -1 */
};

typedef void (*loop_exception_handler_t)(loop_t *loop,
                                         const struct loop_exception_context *context,
                                         void *userdata);

int loop_set_exception_handler(loop_t *loop, loop_exception_handler_t handler,
                               void *userdata);
loop_exception_handler_t loop_get_exception_handler(const loop_t *loop,
                                                    void **userdata);
int loop_call_exception_handler(loop_t *loop,
                                const struct loop_exception_context *context);
int loop_default_exception_handler(loop_t *loop,
                                   const struct loop_exception_context *context);

/* Debug mode */
int loop_set_debug(loop_t *loop, int enabled);
int loop_get_debug(const loop_t *loop);
int loop_set_slow_callback_duration(loop_t *loop, double seconds);
double loop_get_slow_callback_duration(const loop_t *loop);

/*
 * The thread's current loop and the running loop: the two primitives
 * asyncio 3.14 keeps when it deprecates policies. The default policy is
 * built on them. Loops handed out through a loop_t ** are new references.
 */
int loop_thread_get_loop(loop_t **ret);
int loop_thread_set_loop(loop_t *loop);
int loop_get_running_loop(loop_t **ret);

/* A loop factory, as asyncio.Runner(loop_factory=...) takes. */
typedef int (*loop_factory_t)(loop_t **ret, void *userdata);

/* Runners (asyncio.Runner and asyncio.run) */
typedef struct loop_runner loop_runner_t;

int loop_runner_new(loop_factory_t factory, void *userdata, loop_runner_t **ret);
loop_runner_t *loop_runner_ref(loop_runner_t *runner);
loop_runner_t *loop_runner_unref(loop_runner_t *runner);
int loop_runner_get_loop(loop_runner_t *runner, loop_t **ret);
int loop_runner_run(loop_runner_t *runner, loop_callback_t main, void *userdata);
int loop_runner_run_until_complete(loop_runner_t *runner, loop_future_t *future);
int loop_runner_close(loop_runner_t *runner);
int loop_run(loop_factory_t factory, void *factory_userdata, loop_callback_t main, void *userdata);

/* Event-loop policies (asyncio's AbstractEventLoopPolicy) */
typedef struct loop_policy loop_policy_t;

struct loop_policy_ops {
        size_t size;    /* sizeof(struct loop_policy_ops) as the caller knew it */
        int (*get_event_loop)(loop_policy_t *self, loop_t **ret);
        int (*set_event_loop)(loop_policy_t *self, loop_t *loop);
        int (*new_event_loop)(loop_policy_t *self, loop_t **ret);
        void (*free)(void *userdata);
};

int loop_policy_new(const struct loop_policy_ops *ops, void *userdata, loop_policy_t *base,
                    loop_policy_t **ret);
int loop_policy_new_default(loop_policy_t **ret);
loop_policy_t *loop_policy_ref(loop_policy_t *policy);
loop_policy_t *loop_policy_unref(loop_policy_t *policy);
void *loop_policy_get_userdata(const loop_policy_t *policy);
loop_policy_t *loop_policy_get_base(const loop_policy_t *policy);
int loop_policy_get_event_loop(loop_policy_t *policy, loop_t **ret);
int loop_policy_set_event_loop(loop_policy_t *policy, loop_t *loop);
int loop_policy_new_event_loop(loop_policy_t *policy, loop_t **ret);

loop_policy_t *loop_get_event_loop_policy(void);
int loop_set_event_loop_policy(loop_policy_t *policy);
int loop_get_event_loop(loop_t **ret);
int loop_set_event_loop(loop_t *loop);
int loop_new_event_loop(loop_t **ret);

/* Futures (asyncio.Future) */
typedef int (*loop_future_callback_t)(loop_future_t *future, void *userdata);

int loop_create_future(loop_t *loop, loop_future_t **ret);
loop_future_t *loop_future_ref(loop_future_t *future);
loop_future_t *loop_future_unref(loop_future_t *future);
loop_t *loop_future_get_loop(const loop_future_t *future);
int loop_future_set_result(loop_future_t *future, void *result, void (*destroy)(void *result));
int loop_future_set_error(loop_future_t *future, int error);
int loop_future_cancel(loop_future_t *future);
int loop_future_done(const loop_future_t *future);
int loop_future_cancelled(const loop_future_t *future);
int loop_future_result(const loop_future_t *future, void **ret);
int loop_future_error(const loop_future_t *future);
int loop_future_add_done_callback(loop_future_t *future, loop_future_callback_t cb, void *userdata);
int loop_future_remove_done_callback(loop_future_t *future, loop_future_callback_t cb, void *userdata);
int loop_run_until_complete(loop_t *loop, loop_future_t *future);

/* Signals, delivered in the loop (never in signal context) */
typedef int (*loop_signal_callback_t)(loop_t *loop, int signum, void *userdata);

int loop_add_signal_handler(loop_t *loop, int signum, loop_signal_callback_t cb, void *userdata);
int loop_remove_signal_handler(loop_t *loop, int signum);

/*
 * Signal watchers (sd_event_add_signal, ev_signal): any number per signal
 * in one loop, beside its asyncio-style handler, run in the order added.
 * ret NULL: the loop owns the watcher until it is closed; otherwise the
 * caller's reference, and dropping the last one removes the watcher.
 */
typedef struct loop_signal loop_signal_t;

typedef int (*loop_signal_handler_t)(loop_signal_t *watcher, int signum, void *userdata);

int loop_add_signal(loop_t *loop, int signum, loop_signal_handler_t handler, void *userdata, loop_signal_t **ret);
loop_signal_t *loop_signal_ref(loop_signal_t *watcher);
loop_signal_t *loop_signal_unref(loop_signal_t *watcher);
int loop_signal_remove(loop_signal_t *watcher);
int loop_signal_get_signum(const loop_signal_t *watcher);
int loop_signal_set_enabled(loop_signal_t *watcher, int enabled);
int loop_signal_get_enabled(const loop_signal_t *watcher);
loop_t *loop_signal_get_loop(const loop_signal_t *watcher);

/* The executor: a bounded thread pool owned by the loop */
typedef int (*loop_executor_fn_t)(void *arg, void **result);

int loop_run_in_executor(loop_t *loop, loop_executor_fn_t fn, void *arg, loop_future_t **ret);
int loop_run_in_executor_full(loop_t *loop, loop_executor_fn_t fn, void *arg, void (*destroy)(void *result),
                              loop_future_t **ret);
int loop_set_executor_max_workers(loop_t *loop, unsigned max_workers);
int loop_shutdown_default_executor(loop_t *loop);

/* Name resolution through the executor; results are owned by the future */
struct addrinfo;
struct loop_nameinfo {
        char host[1025];        /* NI_MAXHOST */
        char service[32];       /* NI_MAXSERV */
};

int loop_getaddrinfo(loop_t *loop, const char *host, const char *service, const struct addrinfo *hints,
                     loop_future_t **ret);
int loop_getnameinfo(loop_t *loop, const struct sockaddr *addr, socklen_t addrlen, int flags,
                     loop_future_t **ret);

/* Socket operations returning futures (the proactor surface, on selector loops too) */
struct loop_sock_result {
        size_t nbytes;          /* bytes received or sent */
        void *data;             /* recv, recvfrom: the bytes (owned by the future); recv_into: the caller's buffer */
        int fd;                 /* accept: the new connection, owned by the caller; otherwise -1 */
        socklen_t addrlen;      /* accept, recvfrom: the peer's address; otherwise 0 */
        struct sockaddr_storage addr;
};

int loop_sock_recv(loop_t *loop, int fd, size_t nbytes, loop_future_t **ret);
int loop_sock_recv_into(loop_t *loop, int fd, void *buf, size_t nbytes, loop_future_t **ret);
int loop_sock_sendall(loop_t *loop, int fd, const void *data, size_t size, loop_future_t **ret);
int loop_sock_accept(loop_t *loop, int fd, loop_future_t **ret);
int loop_sock_connect(loop_t *loop, int fd, const struct sockaddr *addr, socklen_t addrlen, loop_future_t **ret);
int loop_sock_sendto(loop_t *loop, int fd, const void *data, size_t size, const struct sockaddr *addr,
                     socklen_t addrlen, loop_future_t **ret);
int loop_sock_recvfrom(loop_t *loop, int fd, size_t nbytes, loop_future_t **ret);

/*
 * Transports and protocols (asyncio's Transport/Protocol pair, over both
 * loop families): see loop_transport(7).
 *
 * A protocol is a table of callbacks and the caller's pointer. The loop
 * calls them, never from inside the call that caused them (but for
 * pause_writing, which the write that crosses the high-water mark calls,
 * as in asyncio): connection_made
 * first, exactly once; then data_received (or, for a buffered protocol,
 * get_buffer and buffer_updated), eof_received, pause_writing and
 * resume_writing; and connection_lost exactly once, last. Every member may
 * be NULL (asyncio's base class: nothing; a NULL eof_received closes), but
 * get_buffer and buffer_updated go together. A callback that returns a
 * negative errno value has "raised": the error goes to the loop's exception
 * handler and the transport is aborted, and connection_lost gets the error.
 */
typedef struct loop_transport loop_transport_t;
typedef struct loop_server loop_server_t;

struct loop_protocol_ops {
        size_t size;    /* sizeof(struct loop_protocol_ops) as the caller knew it */
        int (*connection_made)(loop_transport_t *transport, void *userdata);
        /* The bytes are valid during the call only. */
        int (*data_received)(loop_transport_t *transport, const void *data, size_t size, void *userdata);
        /* The peer will send no more. Return > 0 to keep the transport
         * open for writing, 0 to close it (flushing what is buffered). */
        int (*eof_received)(loop_transport_t *transport, void *userdata);
        /* error: 0 after an EOF, close or abort; else the negative errno
         * value that ended the connection. The transport is still valid
         * during the call; nothing is called after it. */
        int (*connection_lost)(loop_transport_t *transport, int error, void *userdata);
        int (*pause_writing)(loop_transport_t *transport, void *userdata);
        int (*resume_writing)(loop_transport_t *transport, void *userdata);
        /* Buffered protocol (asyncio.BufferedProtocol): get_buffer hands
         * out memory for at least one byte (size_hint is what the transport
         * would like, 0 for no preference); buffer_updated says how many
         * bytes arrived at its start. */
        int (*get_buffer)(loop_transport_t *transport, size_t size_hint, void **buf, size_t *size, void *userdata);
        int (*buffer_updated)(loop_transport_t *transport, size_t nbytes, void *userdata);
};

/* One piece of a loop_transport_writev(). */
struct loop_iovec {
        const void *base;
        size_t len;
};

/* loop_transport_set_write_buffer_limits(): asyncio's None. */
#define LOOP_TRANSPORT_DEFAULT_LIMIT ((size_t) -1)

loop_transport_t *loop_transport_ref(loop_transport_t *transport);
loop_transport_t *loop_transport_unref(loop_transport_t *transport);
loop_t *loop_transport_get_loop(const loop_transport_t *transport);
int loop_transport_get_fd(const loop_transport_t *transport);
int loop_transport_get_peername(const loop_transport_t *transport, struct sockaddr *addr, socklen_t *addrlen);
int loop_transport_get_sockname(const loop_transport_t *transport, struct sockaddr *addr, socklen_t *addrlen);
int loop_transport_set_protocol(loop_transport_t *transport, const struct loop_protocol_ops *ops, void *userdata);
const struct loop_protocol_ops *loop_transport_get_protocol(const loop_transport_t *transport, void **userdata);
int loop_transport_write(loop_transport_t *transport, const void *data, size_t size);
int loop_transport_writev(loop_transport_t *transport, const struct loop_iovec *iov, size_t n);
int loop_transport_write_eof(loop_transport_t *transport);
int loop_transport_can_write_eof(const loop_transport_t *transport);
int loop_transport_close(loop_transport_t *transport);
int loop_transport_abort(loop_transport_t *transport);
int loop_transport_is_closing(const loop_transport_t *transport);
int loop_transport_pause_reading(loop_transport_t *transport);
int loop_transport_resume_reading(loop_transport_t *transport);
int loop_transport_is_reading(const loop_transport_t *transport);
int loop_transport_set_write_buffer_limits(loop_transport_t *transport, size_t high, size_t low);
int loop_transport_get_write_buffer_limits(const loop_transport_t *transport, size_t *low, size_t *high);
size_t loop_transport_get_write_buffer_size(const loop_transport_t *transport);

/* Streams: asyncio's create_connection, create_server and their kin. The
 * futures' results are a loop_transport_t * or a loop_server_t * that the
 * future owns (take a reference to keep it beyond the future). */
struct loop_connection_options {
        size_t size;                    /* sizeof(struct loop_connection_options) */
        int family;                     /* for getaddrinfo: AF_UNSPEC (0), AF_INET, AF_INET6 */
        int flags;                      /* getaddrinfo's ai_flags */
        const struct sockaddr *local_addr;      /* bind there first, or NULL */
        socklen_t local_addrlen;
        /* Happy eyeballs (RFC 8305, asyncio's happy_eyeballs_delay): > 0
         * starts the next address's attempt this long after the previous
         * one began, if none has won yet; 0 tries one address after the
         * other. interleave: 0 is asyncio's default (1 with happy
         * eyeballs: alternate the families, first family first). */
        int64_t happy_eyeballs_delay_ns;
        int interleave;
        /* TLS over the connection (see loop_tls_context_new_client(3)):
         * server_hostname (NULL: host) is sent as SNI and checked against
         * the certificate; the handshake must end within
         * tls_handshake_timeout_ns (0: 60 s, asyncio's). */
        struct loop_tls_context *tls;
        const char *server_hostname;
        int64_t tls_handshake_timeout_ns;
};

struct loop_server_options {
        size_t size;                    /* sizeof(struct loop_server_options) */
        int family;                     /* for getaddrinfo: AF_UNSPEC (0), AF_INET, AF_INET6 */
        int flags;                      /* getaddrinfo's ai_flags; AI_PASSIVE is always added */
        int backlog;                    /* listen(2)'s; 0: 100, asyncio's default */
        int reuse_address;              /* SO_REUSEADDR: < 0 off, > 0 on, 0 asyncio's default (on, but not on Windows) */
        int reuse_port;                 /* SO_REUSEPORT: > 0 on */
        int defer_serving;              /* > 0: accept only after loop_server_start_serving() */
        struct loop_tls_context *tls;   /* TLS on every connection, or NULL */
        int64_t tls_handshake_timeout_ns;       /* 0: 60 s */
};

/*
 * Datagrams (asyncio's create_datagram_endpoint and DatagramProtocol): the
 * transport is a loop_transport_t too (close, abort, is_closing, the write
 * buffer's size and limits, get_fd, get_sockname/peername); datagrams go
 * out with loop_transport_sendto(), or loop_transport_write() on a
 * connected endpoint, whole or not at all, and what the socket cannot take
 * now waits in the transport, in order. Errors of a datagram (an ICMP
 * refusal, a send that failed) go to error_received and the endpoint
 * stays open.
 */
struct loop_datagram_protocol_ops {
        size_t size;    /* sizeof(struct loop_datagram_protocol_ops) */
        int (*connection_made)(loop_transport_t *transport, void *userdata);
        int (*datagram_received)(loop_transport_t *transport, const void *data, size_t size,
                                 const struct sockaddr *addr, socklen_t addrlen, void *userdata);
        int (*error_received)(loop_transport_t *transport, int error, void *userdata);
        int (*connection_lost)(loop_transport_t *transport, int error, void *userdata);
        int (*pause_writing)(loop_transport_t *transport, void *userdata);
        int (*resume_writing)(loop_transport_t *transport, void *userdata);
};

struct loop_datagram_options {
        size_t size;                    /* sizeof(struct loop_datagram_options) */
        int family;                     /* AF_UNSPEC (0), AF_INET, AF_INET6 */
        int flags;                      /* getaddrinfo's ai_flags */
        int reuse_port;                 /* SO_REUSEPORT: > 0 on */
        int allow_broadcast;            /* SO_BROADCAST: > 0 on */
};

int loop_create_datagram_endpoint(loop_t *loop, const struct loop_datagram_protocol_ops *ops, void *userdata,
                                  const char *local_host, const char *local_port, const char *remote_host,
                                  const char *remote_port, const struct loop_datagram_options *options,
                                  loop_future_t **ret);
int loop_transport_sendto(loop_transport_t *transport, const void *data, size_t size, const struct sockaddr *addr,
                          socklen_t addrlen);

/*
 * TLS (OpenSSL, through memory BIOs: the same code on both loop families).
 * libloop loads libssl the first time a context is made; a program that
 * makes none never loads it. Without OpenSSL at build time or libssl at
 * run time, the calls that make a context say -EOPNOTSUPP.
 */
typedef struct loop_tls_context loop_tls_context_t;

int loop_tls_context_new_client(loop_tls_context_t **ret);
int loop_tls_context_new_server(const char *cert_file, const char *key_file, loop_tls_context_t **ret);
loop_tls_context_t *loop_tls_context_ref(loop_tls_context_t *ctx);
loop_tls_context_t *loop_tls_context_unref(loop_tls_context_t *ctx);
int loop_tls_context_load_verify_locations(loop_tls_context_t *ctx, const char *cafile, const char *capath);
int loop_tls_context_set_verify(loop_tls_context_t *ctx, int verify);
int loop_tls_context_set_check_hostname(loop_tls_context_t *ctx, int check);
int loop_tls_context_set_alpn_protocols(loop_tls_context_t *ctx, const char *const *protocols, size_t n);
void *loop_tls_context_get_ssl_ctx(loop_tls_context_t *ctx);
int loop_start_tls(loop_transport_t *transport, const struct loop_protocol_ops *ops, void *userdata,
                   loop_tls_context_t *ctx, int server_side, const char *server_hostname,
                   int64_t handshake_timeout_ns, loop_future_t **ret);
const char *loop_transport_get_alpn_protocol(const loop_transport_t *transport);
void *loop_transport_get_ssl(const loop_transport_t *transport);

typedef int (*loop_protocol_factory_t)(loop_server_t *server, const struct loop_protocol_ops **ops, void **userdata,
                                       void *factory_userdata);

int loop_create_connection(loop_t *loop, const struct loop_protocol_ops *ops, void *userdata, const char *host,
                           const char *port, const struct loop_connection_options *options, loop_future_t **ret);
int loop_create_unix_connection(loop_t *loop, const struct loop_protocol_ops *ops, void *userdata, const char *path,
                                loop_future_t **ret);
int loop_connect_accepted_socket(loop_t *loop, const struct loop_protocol_ops *ops, void *userdata, int fd,
                                 loop_future_t **ret);
/* asyncio's loop.sendfile: count 0 sends to the end of the file; the
 * result is a struct loop_sock_result (nbytes). */
int loop_sendfile(loop_transport_t *transport, int file_fd, off_t offset, size_t count, loop_future_t **ret);

/* Pipes, sockets and character devices, through read(2) and write(2). */
int loop_connect_read_pipe(loop_t *loop, const struct loop_protocol_ops *ops, void *userdata, int fd,
                           loop_future_t **ret);
int loop_connect_write_pipe(loop_t *loop, const struct loop_protocol_ops *ops, void *userdata, int fd,
                            loop_future_t **ret);
int loop_create_server(loop_t *loop, loop_protocol_factory_t factory, void *userdata, const char *host,
                       const char *port, const struct loop_server_options *options, loop_future_t **ret);
int loop_create_unix_server(loop_t *loop, loop_protocol_factory_t factory, void *userdata, const char *path,
                            const struct loop_server_options *options, loop_future_t **ret);
int loop_server_new(loop_t *loop, loop_protocol_factory_t factory, void *userdata, const int *fds, size_t n_fds,
                    const struct loop_server_options *options, loop_server_t **ret);
loop_server_t *loop_server_ref(loop_server_t *server);
loop_server_t *loop_server_unref(loop_server_t *server);
loop_t *loop_server_get_loop(const loop_server_t *server);
int loop_server_start_serving(loop_server_t *server);
int loop_server_is_serving(const loop_server_t *server);
int loop_server_close(loop_server_t *server);
int loop_server_close_clients(loop_server_t *server);
int loop_server_abort_clients(loop_server_t *server);
int loop_server_wait_closed(loop_server_t *server, loop_future_t **ret);
int loop_server_get_fds(const loop_server_t *server, int *fds, size_t n);
size_t loop_server_get_connections(const loop_server_t *server);

/* Child processes */
typedef int (*loop_child_callback_t)(loop_t *loop, pid_t pid, int status, void *userdata);

int loop_add_child_handler(loop_t *loop, pid_t pid, loop_child_callback_t cb, void *userdata);
int loop_remove_child_handler(loop_t *loop, pid_t pid);
int loop_spawn(loop_t *loop, const char *path, char *const argv[], char *const envp[], pid_t *pid,
               int fds[3]);

/*
 * Subprocesses over pipe transports (asyncio's subprocess_exec,
 * SubprocessProtocol and SubprocessTransport): the child's stdin, stdout
 * and stderr are pipes; its output comes to pipe_data_received (fd 1 or
 * 2), its stdin is loop_subprocess_get_pipe_transport(p, 0). The future's
 * result is the loop_subprocess_t *, after connection_made; connection_lost
 * comes last, once the child exited and every pipe ended.
 */
typedef struct loop_subprocess loop_subprocess_t;

struct loop_subprocess_protocol_ops {
        size_t size;    /* sizeof(struct loop_subprocess_protocol_ops) */
        int (*connection_made)(loop_subprocess_t *process, void *userdata);
        int (*pipe_data_received)(loop_subprocess_t *process, int fd, const void *data, size_t size,
                                  void *userdata);
        int (*pipe_connection_lost)(loop_subprocess_t *process, int fd, int error, void *userdata);
        int (*process_exited)(loop_subprocess_t *process, void *userdata);
        int (*connection_lost)(loop_subprocess_t *process, int error, void *userdata);
};

int loop_subprocess_exec(loop_t *loop, const struct loop_subprocess_protocol_ops *ops, void *userdata,
                         const char *path, char *const argv[], char *const envp[], loop_future_t **ret);
loop_subprocess_t *loop_subprocess_ref(loop_subprocess_t *process);
loop_subprocess_t *loop_subprocess_unref(loop_subprocess_t *process);
pid_t loop_subprocess_get_pid(const loop_subprocess_t *process);
int loop_subprocess_get_returncode(const loop_subprocess_t *process, int *returncode);
loop_transport_t *loop_subprocess_get_pipe_transport(const loop_subprocess_t *process, int fd);
int loop_subprocess_send_signal(loop_subprocess_t *process, int signum);
int loop_subprocess_terminate(loop_subprocess_t *process);
int loop_subprocess_kill(loop_subprocess_t *process);
int loop_subprocess_close(loop_subprocess_t *process);
int loop_subprocess_is_closing(const loop_subprocess_t *process);

/* Introspection (libuv's metrics, uv_print_all_handles) */
struct loop_metrics {
        size_t size;            /* set by the caller: sizeof(struct loop_metrics) */
        uint64_t iterations;
        uint64_t callbacks;     /* callbacks run */
        uint64_t events;        /* I/O readiness events reported by the backend */
        int64_t wait_ns;        /* time spent waiting for I/O */
        int64_t run_ns;         /* time spent outside the wait, running callbacks and bookkeeping */
        uint64_t handles_ready; /* callbacks queued now */
        uint64_t timers;        /* timers pending now */
        uint64_t fds;           /* descriptors with a reader, writer or I/O watcher now */
};

int loop_get_metrics(loop_t *loop, struct loop_metrics *metrics);
int loop_dump(loop_t *loop, int fd);

/* Embedding in another main loop (sd_event_get_fd, uv_backend_fd/timeout) */
int loop_fileno(loop_t *loop);
int64_t loop_get_timeout_ns(loop_t *loop);

#ifdef __cplusplus
}
#endif

#endif /* LOOP_H */
