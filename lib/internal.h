/* SPDX-License-Identifier: MIT */
#pragma once

/*
 * The base loop: what asyncio's BaseEventLoop holds (ready queue, timers,
 * run/stop/close, exception handler, debug), shared by every loop kind.
 * A loop kind (the selector loop today) plugs in through struct loop__impl,
 * the way BaseSelectorEventLoop sits on BaseEventLoop.
 */

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#ifdef LOOP_WINDOWS
#include "win32.h"
#else
#include <sys/socket.h>
/* Sockets are descriptors here: win32.h's wrappers are the calls themselves. */
#define loop__recv recv
#define loop__recvfrom recvfrom
#define loop__connect connect
#define loop__getsockopt getsockopt
#define loop__close_socket close
/* C11's, and free() for what it returns. */
#define loop__aligned_alloc aligned_alloc
#define loop__aligned_free free
#endif

#include "loop.h"
#include "macro.h"

enum {
        HANDLE_SOON,    /* call_soon / call_soon_threadsafe */
        HANDLE_TIMER,   /* call_later / call_at */
        HANDLE_IO,      /* a proactor loop's reader or writer; never given to the user */
};

/* A handle's first word as one value: a new timer sets it with one store. */
struct loop_handle_head {
        unsigned n_ref;
        uint8_t kind, cancelled, exposed, in_heap;
};

/* A head as the word a new handle gets in one store (gcc stores a struct
 * copy field by field, five stores for a timer's). */
static inline uint64_t loop__head_word(struct loop_handle_head head) {
        union {
                struct loop_handle_head head;
                uint64_t word;
        } u = { .head = head };
        return u.word;
}

/* kind, cancelled, exposed and in_heap as struct loop_handle's flags word
 * holds them, whatever the byte order. */
static inline uint32_t loop__flags_word(uint8_t kind, uint8_t cancelled, uint8_t exposed, uint8_t in_heap) {
        union {
                uint8_t byte[4];
                uint32_t word;
        } u = { .byte = { kind, cancelled, exposed, in_heap } };
        return u.word;
}

struct loop_handle {
        union {
                struct loop_handle_head head;
                struct {
                        unsigned n_ref;         /* atomic: call_soon_threadsafe hands handles across threads */
                        union {
                                struct {
                                        uint8_t kind;
                                        uint8_t cancelled;      /* atomic: cancel is allowed from any thread for HANDLE_SOON */
                                        uint8_t exposed;        /* the user was given this handle */
                                        uint8_t in_heap;        /* timers: in the loop's timer heap */
                                };
                                /* The four as one word (loop__flags_word):
                                 * a timer's cancel tests three in one compare. */
                                uint32_t flags;
                        };
                };
                uint64_t head_word;     /* all of the above: a new handle's in one store */
        };
        /* The handle's place in its loop's pool, for life (the timer heap
         * names timers by it, see timer_heap.h); LOOP__UNPOOLED for a
         * handle from malloc() (call_soon_threadsafe's). */
        uint32_t pool_index;
        union {
                loop_callback_t cb;
                loop_io_callback_t io_cb;
        };
        void *userdata;
        /* One word whose meaning follows the kind: 40 bytes a handle, so
         * that a pending timer (its handle and a 16-byte heap slot) and the
         * pointer its caller keeps cost no more memory than libev's
         * ev_timer and its heap entry. (No loop pointer: the one reader,
         * a timer's cancel, finds the loop through the handle's pool.) */
        union {
                int64_t when;           /* HANDLE_TIMER: deadline in ns, for life */
                /* HANDLE_SOON: called with userdata instead of the callback
                 * when the callback will never run (cancelled, or dropped
                 * by close), so that internal users free what userdata
                 * holds. NULL for handles made by the public API. */
                void (*discard)(void *userdata);
                int fd;                 /* HANDLE_IO */
                loop_handle_t *next_free; /* a free slot in a handle pool */
        };
};

_Static_assert(sizeof(struct loop_handle) == 40, "a handle is 40 bytes (see above)");

#define LOOP__UNPOOLED UINT32_MAX       /* pool indices stop short of it (handle.c) */

static inline bool loop__handle_pooled(const struct loop_handle *h) {
        return h->pool_index != LOOP__UNPOOLED;
}

#include "ready_queue.h"
#include "timer_heap.h"       /* after struct loop_handle: its inline push fills one in */

/* What a ready entry will call: loop_dump and debug mode's slow callback
 * warning show the user's function, not a trampoline. */
struct loop__entry_info {
        void *fn;
        void *userdata;
        int fd;                 /* -1: not a descriptor's callback */
        bool cancelled;
};

void loop__entry_info(const loop_t *loop, const struct loop__ready_entry *e, struct loop__entry_info *info);

struct loop__sock_call;

struct loop__impl {
        /*
         * Wait for I/O for at most timeout_ns (< 0: no limit, 0: do not
         * block) after applying pending registration changes, and append
         * the callbacks of ready descriptors to the ready queue. Returns the
         * number of events or a negative errno; EINTR is not an error.
         */
        int (*poll)(loop_t *loop, int64_t timeout_ns);

        /* Descriptors watched now, for metrics. */
        uint64_t (*count_fds)(loop_t *loop);

        /* Write the registrations to f, one line each (loop_dump). */
        void (*dump)(loop_t *loop, FILE *f);

        /* Apply pending registration changes now (before an outside wait). */
        void (*prepare)(loop_t *loop);

        /* A descriptor that becomes readable when poll would not block, or
         * -EOPNOTSUPP (loop_fileno). */
        int (*fileno)(loop_t *loop);

        /*
         * Drop every registration and release the backend. Called once, by
         * loop_close() or the last unref; also in a fork child, where it
         * must leave kernel state shared with the parent alone.
         */
        void (*close)(loop_t *loop);

        /*
         * loop_add_reader/loop_add_writer (event is LOOP_EVENT_READ or
         * LOOP_EVENT_WRITE from selector.h): register cb for fd, replacing
         * (and cancelling) a callback already registered for that fd and
         * direction. The loop was checked with loop__usable() and cb is not
         * NULL. A bad descriptor is the caller's error (-EBADF). The
         * callback is queued each iteration the descriptor is ready
         * (level-triggered), as a HANDLE_IO handle or a trampoline entry
         * (see describe).
         */
        int (*add_io)(loop_t *loop, int fd, uint32_t event, loop_io_callback_t cb, void *userdata);

        /* loop_remove_reader/loop_remove_writer: 1 if a callback was
         * removed, 0 if there was none, or a negative errno. */
        int (*remove_io)(loop_t *loop, int fd, uint32_t event);

        /*
         * loop_pause_reader/loop_resume_reader and the writer pair: stop
         * or start watching for fd's callback of that direction, keeping
         * it. -ENOENT if there is none; 0 if it already was so. A paused
         * callback does not run, even if already queued. Resuming may
         * fail like add_io (the descriptor is checked again only if the
         * loop has to ask the kernel to watch it).
         */
        int (*pause_io)(loop_t *loop, int fd, uint32_t event, bool pause);

        /*
         * Socket operations (sock.c) done natively by the loop kind, or
         * NULL: sock.c then builds them on readers and writers. Called after
         * sock.c checked the loop, the arguments and that fd is a
         * non-blocking socket; same contract as the public calls (0 and a
         * future in *ret, or a negative errno before any I/O). May return
         * -EOPNOTSUPP for a kind it does not do: sock.c then does it.
         */
        int (*sock_call)(loop_t *loop, const struct loop__sock_call *call, loop_future_t **ret);

        /*
         * For a ready entry the loop kind queued with a callback of its own
         * (a trampoline), fill *info with what it will call, and return
         * true; false for any other entry. NULL if the kind queues none.
         */
        bool (*describe)(const loop_t *loop, const struct loop__ready_entry *e, struct loop__entry_info *info);

        /*
         * An I/O callback for fd returned -EBADF and fd is indeed closed:
         * it was closed behind the loop's back, and the file may live on
         * (a dup, a child) and keep being reported. Drop fd's callbacks
         * and say so once. NULL if the kind needs nothing. Called from the
         * error path only, so the callbacks' fast path pays nothing.
         */
        void (*io_closed)(loop_t *loop, int fd);

        /*
         * I/O watchers (io.c, io.h). io_attach: start watching io->fd (not
         * negative, not checked otherwise) for io, enabled, with
         * io->events; fails like add_io, leaving nothing behind.
         * io_update: io->events and io->enabled hold new values, old_events
         * and was_enabled the previous ones; may fail like add_io where the
         * descriptor must be checked again (enabled again; a new mask on a
         * proactor), and io.c then restores both. io_detach: let go of io
         * for good (removed, last reference gone); in a fork child, memory
         * only. Never NULL.
         */
        int (*io_attach)(loop_t *loop, loop_io_t *io);
        int (*io_update)(loop_t *loop, loop_io_t *io, uint32_t old_events, bool was_enabled);
        void (*io_detach)(loop_t *loop, loop_io_t *io);
};

/* One socket operation as sock.c hands it to a loop kind (sock_call). */
enum {
        LOOP__SOCK_RECV,
        LOOP__SOCK_RECV_INTO,
        LOOP__SOCK_RECVFROM,
        LOOP__SOCK_ACCEPT,
        LOOP__SOCK_SENDALL,
        LOOP__SOCK_SENDTO,
        LOOP__SOCK_CONNECT,
};

struct loop__sock_call {
        int kind;                       /* LOOP__SOCK_* */
        int fd;
        void *buf;                      /* recv_into: the caller's buffer */
        const void *data;               /* sendall, sendto: the caller's bytes, valid during the call only */
        void *give;                     /* sendall, proactor loop only: data is at the start of this
                                         * malloc'd block, which the operation takes over (frees) once
                                         * sock_call returns 0; NULL: data is copied as needed */
        bool no_try;                    /* recv_into, proactor loop only: queue it without a recv() first */
        size_t size;                    /* bytes wanted, or to send */
        const struct sockaddr *addr;    /* sendto (may be NULL), connect */
        socklen_t addrlen;
};

struct loop {
        /* First, at offset 0: its window is loop_call_soon's inline path
         * (loop.h), whose layout is ABI. window.generation points at the
         * call_soon_threadsafe ring's tail word (threadsafe.c), or at
         * debug_gate in debug mode; window.open_generation is that tail as
         * the loop last took everything posted, LOOP__CLOSED once the loop
         * is closed, LOOP__INHERITED in a fork child. So "open, made here,
         * nothing posted meanwhile, not in debug mode" is one compare,
         * inline or not (atomic: other threads read it in loop__usable). */
        struct ready_queue ready;
        unsigned n_ref;                 /* atomic */
        loop_t *registry_prev, *registry_next;  /* every loop of the process (loop.c), for fork */
        const struct loop__impl *impl;

        struct timer_heap timers;

        /* Where handles come from: scheduling a timer costs no malloc. */
        struct loop__handle_pool *pool;

        /* call_soon_threadsafe (threadsafe.c): producers claim slots of the
         * ring; when it is full they append to ts_items under ts_lock. */
        struct loop__ts_ring *ts_ring;
        pthread_mutex_t ts_lock;
        struct loop__ready_entry *ts_items;
        size_t ts_n, ts_cap;
        bool ts_sleeping;               /* the loop's thread: it set the SLEEPING flag */
        bool ts_may_linger;             /* more than one CPU online (loop__threadsafe_linger) */
        size_t ts_taken;                /* the loop's thread: posts taken since it last lingered */
        int wake_read_fd, wake_write_fd;  /* the same eventfd on Linux, a pipe elsewhere */
        void (*wake)(void *ctx);        /* the backend's wake-up, or NULL (a write to wake_write_fd) */
        void (*wake_release)(void *ctx);
        void *wake_ctx;

        unsigned running;               /* atomic: 1 while some thread runs the loop */
        uint64_t n_runs;                /* run_forever/run_once calls so far */
        bool stopping;                  /* atomic: loop_stop() may be called from any thread */
        bool closed;
        uint64_t fork_generation;       /* loop__fork_generation when the loop was made */

        struct loop__close_hook *close_hooks;
        /* Per-loop state of optional components, created on first use. */
        struct loop__signals *signals;
        struct loop__executor *executor;
        struct loop__children *children;
        struct loop__sockets *sockets;
        struct loop__transports *transports;

        /* Metrics (loop_get_metrics) */
        uint64_t n_iterations, n_callbacks, n_events;
        uint64_t n_stale;               /* entries of this batch that did not run: callback gone, handle cancelled */
        int64_t wait_ns, run_ns;
        int64_t run_started_ns, run_wait_ns;    /* at the start of the current run */

        loop_exception_handler_t exception_handler;
        void *exception_userdata;
        bool debug;
        int64_t slow_callback_ns;
        /* In debug mode the soon window's generation points here: a value
         * no open_generation ever has, so every call that is not
         * thread-safe leaves its fast path (the header's inline
         * loop_call_soon too) for the slow one, where the thread is
         * checked. Debug off, nothing extra is paid. */
        uint64_t debug_gate;
};

#define LOOP__DEBUG_GATE (UINT64_MAX - 1)       /* no open_generation ever has it */
#define LOOP__INHERITED (UINT64_MAX - 2)        /* open_generation of a loop a fork child inherited */

/* Bumped in every fork child: a loop created under another value was inherited. */
extern LOOP_HIDDEN uint64_t loop__fork_generation;
#define LOOP__CLOSED UINT64_MAX         /* no threadsafe ring tail is ever this */

/* The inline path's layout is compiled into programs (loop.h): within
 * libloop.so.1 it stays where it is, field for field. */
_Static_assert(offsetof(struct loop, ready.window) == 0, "loop.h: a loop begins with its soon window");
_Static_assert(offsetof(struct loop__soon_window, tail) == 0 &&
                       offsetof(struct loop__soon_window, end) == sizeof(void *) &&
                       offsetof(struct loop__soon_window, generation) == 2 * sizeof(void *) &&
                       offsetof(struct loop__soon_window, open_generation) ==
                               (3 * sizeof(void *) + _Alignof(uint64_t) - 1) / _Alignof(uint64_t) * _Alignof(uint64_t),
               "loop.h: struct loop__soon_window moved; that breaks programs built against libloop.so.1");
_Static_assert(offsetof(struct loop__ready_entry, cb) == 0 &&
                       offsetof(struct loop__ready_entry, userdata) == sizeof(void *) &&
                       sizeof(struct loop__ready_entry) == 2 * sizeof(void *),
               "loop.h: struct loop__ready_entry changed; that breaks programs built against libloop.so.1");

/* Open, made in this process, and not in debug mode: through the window's
 * generation pointer, as the header's inline loop_call_soon tests it. */
static inline bool loop__open_here(const loop_t *loop) {
        return __atomic_load_n(&loop->ready.window.open_generation, __ATOMIC_RELAXED) ==
               __atomic_load_n(loop->ready.window.generation, __ATOMIC_RELAXED);
}

static inline bool loop__inherited(const loop_t *loop) {
        /* Relaxed: the value only changes in a fork child, before any thread exists. */
        return unlikely(loop->fork_generation != __atomic_load_n(&loop__fork_generation, __ATOMIC_RELAXED));
}

/* The usual checks of a public call on a loop, as one error code or 0.
 * "Open and not inherited" is one compare; which error it is, is not hot. */
static inline int loop__usable(const loop_t *loop) {
        if (likely(loop && loop__open_here(loop)))
                return 0;
        if (!loop)
                return -EINVAL;
        if (loop__inherited(loop))
                return -ECHILD;
        if (loop->closed)
                return -ESHUTDOWN;
        return 0;
}

/* loop.c */
extern LOOP_HIDDEN __thread loop_t *loop__running_loop;   /* the loop running in this thread */
int loop__wrong_thread(loop_t *loop, const char *call);
void loop__set_debug(loop_t *loop, bool enabled);

/*
 * asyncio's _check_thread, in debug mode only: a call that is not
 * thread-safe, made while the loop runs in another thread, fails (-EPERM)
 * and is reported in the loop's thread. Called by those calls' slow paths,
 * which debug mode sends every call to (debug_gate).
 */
static inline int loop__check_thread(loop_t *loop, const char *call) {
        if (likely(!loop->debug))
                return 0;
        if (loop__running_loop == loop || !__atomic_load_n(&loop->running, __ATOMIC_ACQUIRE))
                return 0;
        return loop__wrong_thread(loop, call);
}
int loop__init(loop_t *loop, const struct loop__impl *impl);
void loop__report(loop_t *loop, const char *message, int error, loop_handle_t *handle, int fd);

/* selector.c */
const char *loop__getenv(const char *name);
bool loop__getenv_bool(const char *name);

/* fd_table.c: make room for fd in a table of elem_size entries indexed by
 * fd, zero-filling what is new; -EBADF for a descriptor that is not open.
 * The check that it fits already is inline: it is on every add_reader. */
int loop__fd_table_grow(void **table, size_t *n, size_t elem_size, int fd);

static inline int loop__fd_table_reserve(void **table, size_t *n, size_t elem_size, int fd) {
        if (likely(fd >= 0 && (size_t) fd < *n))
                return 0;
        return loop__fd_table_grow(table, n, elem_size, fd);
}

/* current.c */
bool loop__is_main_thread(void);

/* clock.c */
int64_t loop__now(void);
int loop__seconds_to_ns(double seconds, int64_t *ret);

/* handle.c */
loop_handle_t *loop__handle_new(loop_t *loop, int kind);
int loop__call_soon_discard(loop_t *loop, loop_callback_t cb, void *userdata, void (*discard)(void *userdata));
void loop__handle_drop(loop_t *loop, loop_handle_t *h);
int loop__handle_pool_new(loop_t *loop);
loop_handle_t *const *const *loop__handle_pool_chunks(loop_t *loop);
void loop__handle_pool_release(loop_t *loop);
int loop__run_ready(loop_t *loop);
void loop__expire_timers(loop_t *loop, int64_t now);
void loop__timers_init(loop_t *loop);
const struct timer_slot *loop__first_timer(loop_t *loop);
void loop__discard_scheduled(loop_t *loop);

/* future.c */
void loop__future_on_cancel(loop_future_t *f, void (*fn)(loop_future_t *f, void *data), void *data);

/*
 * Components that own per-loop state (signals, executor, child watchers)
 * register a hook that loop_close() calls first, before it drops the
 * scheduled callbacks. In a fork child the hook must leave shared state
 * (threads, kernel objects) alone: check loop__inherited().
 */
struct loop__close_hook {
        void (*fn)(loop_t *loop, struct loop__close_hook *hook);
        struct loop__close_hook *next;
};
void loop__add_close_hook(loop_t *loop, struct loop__close_hook *hook);
void loop__remove_close_hook(loop_t *loop, struct loop__close_hook *hook);

/*
 * executor.c: loop_run_in_executor(), and in addition free_arg(arg) runs (in
 * the loop's thread, or in loop_close()) once the job is over, and
 * destroy(result) runs on a successful result that no future took
 * (cancelled meanwhile, or dropped by close). On failure the caller keeps arg.
 */
int loop__executor_submit(loop_t *loop, loop_executor_fn_t fn, void *arg, void (*free_arg)(void *arg),
                          void (*destroy)(void *result), loop_future_t **ret);

/* posix.c: Linux's accept4, pipe2 and MSG_NOSIGNAL where configure found
 * them, their POSIX fallbacks elsewhere. Like the system calls they
 * replace: -1 and errno. */
int loop__accept_nonblock(int fd, struct sockaddr *addr, socklen_t *addrlen); /* O_NONBLOCK, FD_CLOEXEC */
int loop__pipe_cloexec(int p[2], bool nonblock);
/* posix.c, win32.c: a socket with O_NONBLOCK and FD_CLOEXEC (overlapped
 * on Windows), or a negative errno. */
int loop__socket_nonblock(int domain, int type, int protocol);
#ifndef LOOP_WINDOWS
/* posix.c (win32.h has Windows' one): O_NONBLOCK on; 0 or -1 and errno. */
int loop__set_nonblock(int fd);
#endif
/* posix.c, win32.c: 0 if fd is open (fcntl F_GETFD; on Windows, a socket),
 * else a negative errno (-EBADF; on Windows -ENOTSOCK for a handle that is
 * open but no socket). */
int loop__fd_valid(int fd);
/* posix.c, win32.c: sock.c's check of the fd a socket operation is given:
 * 0 for a non-blocking socket, else -EBADF, -ENOTSOCK or -EINVAL. */
int loop__check_socket(int fd);
/* posix.c, win32.c: pthread_create() of a library thread that takes no
 * asynchronous signal (all blocked but the synchronous ones, which must
 * stay deliverable); 0 or an errno value, as pthread_create(). */
int loop__thread_create_nosignals(pthread_t *thread, void *(*fn)(void *), void *arg);
/* posix.c, win32.c: what fd names, so that a number closed and reused for
 * another file can be told apart (fstat's device and inode); 0 or a
 * negative errno (loop__fd_valid's). Windows: a socket has no such
 * identity, every socket's is 0, and other handles are -ENOTSOCK. */
struct loop__file_id {
        uint64_t dev, ino;
};
int loop__file_id(int fd, struct loop__file_id *id);
/* posix.c, win32.c: loop_new()'s default is the proactor loop (Windows,
 * as asyncio's since 3.8), not the selector loop. */
bool loop__proactor_by_default(void);
/* posix.c, win32.c: the processors online, or -1. */
long loop__online_cpus(void);
/* posix.c, win32.c: a slab for the handle pool, LOOP__SLAB_BYTES long and
 * aligned to it, in pages of its own (huge ones where the kernel has
 * them); NULL when there is no memory. */
#define LOOP__SLAB_BYTES ((size_t) 2 << 20)
void *loop__slab_alloc(void);
void loop__slab_free(void *slab);
/* posix.c (dlopen), win32.c (LoadLibrary): a shared library by file name,
 * and a function in it; NULL when either is not there. Only openssl.c
 * loads one, so posix.c has them where configure linked dlopen(). */
void *loop__shlib_open(const char *name);
void *loop__shlib_sym(void *lib, const char *symbol);
/* posix.c, win32.c: pthread_atfork(), 0 or an errno value; nothing on
 * Windows, which has no fork(). */
int loop__atfork(void (*prepare)(void), void (*parent)(void), void (*child)(void));
/*
 * posix.c, win32.c: the process-wide side of signal.c. signal_valid: may
 * signum be asked for at all (else EINVAL). signal_take: handler(signum)
 * from now on, what was there saved in *saved; 0 or a negative errno
 * (Windows: SIGINT only, from the console's Ctrl-C and Ctrl-Break, in a
 * thread of the system's; -EOPNOTSUPP for the rest). signal_give: put
 * *saved back.
 */
#ifdef LOOP_WINDOWS
typedef int loop__sig_saved_t;
#else
#include <signal.h>
typedef struct sigaction loop__sig_saved_t;
#endif
bool loop__signal_valid(int signum);
int loop__signal_take(int signum, void (*handler)(int signum), loop__sig_saved_t *saved);
void loop__signal_give(int signum, const loop__sig_saved_t *saved);
/* send(2) and sendto(2) that never raise SIGPIPE: EPIPE instead. */
ssize_t loop__send(int fd, const void *buf, size_t len, int flags);
#ifndef LOOP_WINDOWS
/* posix.c: write(2) that never raises SIGPIPE (a pipe's reader gone): EPIPE. */
ssize_t loop__write_nosigpipe(int fd, const void *buf, size_t len);
/* posix.c: Linux's sendfile(2) without SIGPIPE, where configure found it. */
ssize_t loop__sendfile_nosigpipe(int out_fd, int in_fd, off_t *offset, size_t count);
#endif
ssize_t loop__sendto(int fd, const void *buf, size_t len, int flags, const struct sockaddr *to, socklen_t tolen);

/* wakeup.c: an eventfd (a self-pipe elsewhere) that wakes a waiting loop */
int loop__wakeup_new(int *read_fd, int *write_fd);
void loop__wakeup_write(int write_fd);         /* async-signal-safe, never blocks */
void loop__wakeup_drain(int read_fd);
void loop__wakeup_close(int read_fd, int write_fd);

/* threadsafe.c */
int loop__threadsafe_init(loop_t *loop);
void loop__threadsafe_drain(loop_t *loop);
void loop__threadsafe_poll(loop_t *loop);      /* after each wait: take what was posted meanwhile */
bool loop__threadsafe_linger(loop_t *loop, int64_t max_ns); /* before that: true if posts came */
bool loop__threadsafe_sleep(loop_t *loop);     /* before a wait that may block: false if posts wait */
void loop__threadsafe_awake(loop_t *loop);     /* after it */
void loop__threadsafe_close(loop_t *loop);
void loop__threadsafe_wake(loop_t *loop);      /* any thread: make a waiting loop return */
void loop__threadsafe_take(loop_t *loop);      /* loop's thread: take the posts now, if any */
const uint64_t *loop__threadsafe_gate(const loop_t *loop);
void loop__threadsafe_free(loop_t *loop);
void loop__threadsafe_use_wake(loop_t *loop, void (*wake)(void *ctx), void (*release)(void *ctx), void *ctx);

/* selector_loop.c */
extern LOOP_HIDDEN const struct loop__impl loop__selector_impl;

/* proactor_loop.c: a proactor loop on the backend LIBLOOP_PROACTOR names
 * (loop_new), -ENOENT for a name that is not compiled in. */
int loop__proactor_loop_new_named(const char *name, loop_t **ret);
/* The completion backend's name for a proactor loop, NULL for others (loop_dump). */
const char *loop__proactor_name(loop_t *loop);

/* resolve.c: an EAI_* code (and errno, for EAI_SYSTEM) as a negative errno value. */
int loop__eai_to_errno(int eai, int saved_errno);

/* sock.c: the results a future of a socket operation owns. */
void loop__sock_result_free(void *result);
void loop__sock_result_free_data(void *result);
