/* SPDX-License-Identifier: MIT */
/*
 * The proactor loop (asyncio's BaseProactorEventLoop): the base loop on a
 * completion backend (struct loop_proactor_ops: io_uring on Linux, IOCP
 * on Windows).
 *
 * Batching. Every request the callbacks make (a socket operation, a poll
 * for a reader, a cancellation) is only queued; the whole batch reaches the
 * kernel in the one system call that also waits, at the start of the next
 * iteration (loop->impl->poll). An echo server therefore costs one
 * io_uring_enter per iteration, however many connections it serves.
 *
 * Readers and writers. asyncio's proactor has none; here the whole library
 * needs them (the wake-up descriptor, signals, the executor, child pidfds)
 * and users keep theirs, so each is a multishot poll request
 * (IORING_POLL_ADD_MULTI) that completes once per wake-up of the file. A
 * wake-up is an edge, while readers are level-triggered (a callback that
 * does not drain its fd runs again next iteration, as on the selector
 * loop). So every callback that was queued gets a one-shot poll, a
 * "probe", in the next batch: poll requests check readiness when they are
 * armed, so the probe completes at once if the fd is still ready and the
 * callback runs again; otherwise it waits like the multishot one (both
 * completing in one iteration queue the callback once). A multishot
 * request the kernel ends (a last completion without IORING_CQE_F_MORE,
 * which it does when the completion queue is full) is armed again in the
 * next batch while its callback is registered, never while completions
 * are being reaped. Removal is IORING_OP_POLL_REMOVE; the request's
 * memory lives until its last completion, the callback ends at once.
 *
 * I/O watchers (loop_add_io, io.c) are done the way readers are: each
 * enabled watcher has a multishot poll request of its own for its mask
 * (POLLIN, POLLOUT, both or neither, with POLLERR and POLLHUP), and a probe
 * after each dispatch. One request per watcher rather than one per
 * descriptor for the union: the kernel then reports each watcher exactly
 * what it asks for, a change to one watcher (its mask, disabling it)
 * replaces its own request and never disturbs another's, and poll
 * requests on one file are independent wait-queue entries, so nothing is
 * shared that could go wrong; descriptors with several watchers are few.
 * A ready watcher is marked with its conditions, and one entry per
 * descriptor (run_watchers) runs the marked ones, so a multishot
 * completion and a probe in one iteration make one call with both.
 * Changing a mask or enabling ends the request and arms a new one.
 *
 * Socket operations (sock_call, called by sock.c after its checks) try the
 * system call first, as the selector loop does and loop_sock_recv(3)
 * promises: what can complete at once completes before the call returns,
 * and a send that fits needs no copy of the caller's bytes. Only EAGAIN
 * turns into a request (IORING_OP_RECV, SEND, ACCEPT, RECVMSG, SENDMSG;
 * connect on TCP goes straight to IORING_OP_CONNECT, which never
 * completes at once anyway). The kernel may hold a request's memory (our
 * state, our buffers, the result the accept address goes to) until its
 * completion, so that memory belongs to the request, not to the future: a
 * cancelled or orphaned request lives on until its completion arrives.
 *
 * Cancellation (loop_future_cancel) queues IORING_OP_ASYNC_CANCEL and
 * completes the future as cancelled at once. A receive can race with it:
 * the kernel may have filled the buffer already. Those bytes are not
 * reported by the cancelled future (it is cancelled) and not lost either:
 * they are kept for the fd and handed to the next recv or recv_into on
 * it. (asyncio's proactor loses them.) A datagram so caught (recvfrom) is
 * dropped, as is a connection an accept took (closed): a datagram socket
 * may lose datagrams anyway, and the peer of such a connection sees a
 * reset. recv_into receives into the caller's buffer, which the caller may
 * reuse once the future is cancelled, so its cancellation also waits for
 * the request's completion before it returns.
 *
 * loop_close() cancels every request, then waits for all their
 * completions (reaping them) before anything is freed, so no kernel write
 * can land in freed memory. In a fork child it frees memory only: the ring
 * is the parent's (see uring.c).
 *
 * Quirks:
 * - A poll request holds a reference to the file. Closing an fd that has
 *   a reader does not close the socket until the POLL_REMOVE of the next
 *   iteration (or loop_close) has gone through: remove readers, then
 *   close, then let the loop run, as epoll requires anyway.
 * - Regular files are always ready to io_uring's poll, as to poll(2);
 *   epoll refuses them (EPERM).
 * - Windows: a backend with a wake op (IOCP posts a packet to its port)
 *   wakes the loop itself; there is no wake-up descriptor, and the posts
 *   are taken after every wait. A socket has no identity beyond its
 *   number (loop__file_id), so a number closed and reused is not told
 *   apart there.
 */
#include <stdlib.h>
#include <string.h>
#ifndef LOOP_WINDOWS
#include <poll.h>               /* Windows: winsock2.h's WSAPoll flags */
#include <sys/socket.h>
#endif

#include "internal.h"
#include "io.h"
#include "proactor.h"
#include "selector.h"

/* Every transfer is non-blocking by itself, whatever the socket's O_NONBLOCK
 * says: a blocking socket cannot stall the loop. The tries made here go
 * through loop__send() and loop__sendto() (posix.c), which keep SIGPIPE
 * away where there is no MSG_NOSIGNAL (macOS); a completion backend's own
 * requests are its business (io_uring: MSG_NOSIGNAL, Linux's). */
#define RECV_FLAGS MSG_DONTWAIT
#define SEND_FLAGS MSG_DONTWAIT

/* The compiled-in completion backends, best first: the only list of them. */
static const struct loop_proactor_ops *const proactors[] = {
#ifdef ENABLE_URING
        &loop_proactor_uring,
#endif
#ifdef LOOP_WINDOWS
        &loop_proactor_iocp,
#endif
        NULL
};

/* user_data is a pointer with its kind in the two low bits (our objects
 * are malloc'd, so at least 8-aligned); 0 is never one of ours. */
enum {
        TAG_OP = 1,     /* struct pop: a socket operation */
        TAG_POLL = 2,   /* struct poll_req: the multishot poll */
        TAG_PROBE = 3,  /* struct poll_req: its one-shot probe */
        TAG_MASK = 3,
};

#define OP_CACHE_MAX 64
#define CLOSE_WAIT_NS (5 * INT64_C(1000000000))

struct proactor_loop;

/* A reader or writer, an I/O watcher, or the loop's own wake-up descriptor. */
struct poll_req {
        struct proactor_loop *pl;
        loop_handle_t *h;               /* the callback; NULL once removed */
        loop_io_t *io;                  /* or the watcher; NULL once removed */
        struct poll_req *prev, *next;   /* pl->reqs: every live request */
        int fd;
        struct loop__file_id id;        /* the file it watches: fd may name another one later */
        uint32_t events;                /* POLLIN or POLLOUT (a watcher: either, both or none) */
        bool wake;                      /* the wake-up fd: drained, no callback */
        bool armed;                     /* the multishot request is in the kernel */
        bool probing;                   /* a probe is in the kernel */
        bool dispatched;                /* on pl->dispatched */
        bool rearm;                     /* the kernel ended the multishot request: arm it in the next batch */
        uint64_t queued_iteration;      /* when its callback was last queued */
};

/* A pending socket operation. */
struct pop {
        struct proactor_loop *pl;
        loop_future_t *future;          /* a reference; NULL once cancelled */
        struct loop_sock_result *res;   /* handed to the future on success */
        struct pop *prev, *next;        /* pl->ops: every live operation */
        uint8_t kind;                   /* LOOP__SOCK_* */
        bool writing;                   /* its fd slot: sending/connecting side */
        bool inflight;                  /* the kernel holds it */
        bool cancelled;                 /* the future is gone: complete into the void */
        bool poll_connect;              /* connect in progress: a POLLOUT request */
        bool unsafe_buf;                /* recv_into cancelled without its completion */
        int fd;
        char *buf;                      /* recv_into: the caller's; otherwise ours */
        size_t size;                    /* bytes wanted, or left to send */
        size_t off;                     /* sendall: where in buf the rest starts */
        size_t total;                   /* sendall: the caller's size */
        struct sockaddr_storage addr;   /* connect, sendto: the destination */
        socklen_t addrlen;
        struct msghdr msg;              /* recvfrom, sendto */
        struct iovec iov;
};

/* Bytes a cancelled receive took from the kernel, for the next receive. */
struct stash {
        char *data;
        size_t off, len;
        struct loop__file_id id;        /* the file they came from: fd may be reused meanwhile */
};

struct fdslot {
        struct poll_req *io[2];         /* reader, writer */
        struct {                        /* a paused reader, writer (then io[d] is NULL) */
                loop_io_callback_t cb;
                void *userdata;
        } paused[2];
        struct pop *op[2];              /* receiving (recv*, accept), sending (send*, connect) */
        struct stash *stash;
        loop_io_t *watchers;            /* I/O watchers, first added first */
        bool wake;
        bool watchers_queued;           /* run_watchers is in the ready queue for this fd */
};

struct proactor_loop {
        loop_t base;                    /* first: a proactor loop is a loop */
        const struct loop_proactor_ops *ops;
        void *be;                       /* the backend's state */
        struct fdslot *fds;
        size_t n_fds;
        struct poll_req *wake;
        struct poll_req *reqs;          /* live poll requests */
        struct pop *live_ops;           /* live socket operations */
        struct poll_req **dispatched;   /* callbacks queued last iteration, requests to re-arm */
        size_t n_dispatched, cap_dispatched;
        struct pop *op_cache;           /* finished states, reused: no malloc per operation */
        unsigned n_op_cache;
        uint64_t n_inflight;            /* requests the kernel holds */
        uint64_t iteration;
        int n_events;                   /* this wait's: callbacks queued, operations completed */
        struct pop **batch;             /* operations queued since the last wait */
        size_t n_batch, cap_batch;
        struct pop *awaited;            /* a cancelled recv_into waiting for its completion */
        bool closing;
};

static inline struct proactor_loop *proactor_loop(loop_t *loop) {
        return (struct proactor_loop *) loop;
}

static inline uint64_t tag(const void *p, unsigned kind) {
        return (uint64_t) (uintptr_t) p | kind;
}

static void on_complete(void *ctx, uint64_t user_data, int res, uint32_t flags);
static int pl_wait(struct proactor_loop *pl, int64_t timeout_ns, loop_proactor_keep_t keep);

static int ensure_fd(struct proactor_loop *pl, int fd) {
        return loop__fd_table_reserve((void **) &pl->fds, &pl->n_fds, sizeof(*pl->fds), fd);
}

/* ---- readers and writers ------------------------------------------------- */

/* A callback (or the wake-up drain) still wants the request's events. */
static inline bool req_live(const struct poll_req *req) {
        return req->h || req->io || req->wake;
}

static void drop_handle(struct proactor_loop *pl, loop_handle_t *h) {
        if (!h)
                return;
        /* Cancelled first: a queued copy must not run either. */
        __atomic_store_n(&h->cancelled, 1, __ATOMIC_RELEASE);
        loop__handle_drop(&pl->base, h);
}

static int req_arm(struct poll_req *req) {
        struct proactor_loop *pl = req->pl;
        int r = pl->ops->poll_add(pl->be, req->fd, req->events | POLLERR | POLLHUP, true, tag(req, TAG_POLL));

        if (r < 0)
                return r;
        req->armed = true;
        pl->n_inflight++;
        return 0;
}

/* Free a request nobody needs: no callback, nothing in the kernel, not on
 * the dispatched list (which holds pointers until the next iteration). */
static void req_maybe_free(struct poll_req *req) {
        struct proactor_loop *pl = req->pl;

        if (req_live(req) || req->armed || req->probing || req->dispatched)
                return;
        if (req->prev)
                req->prev->next = req->next;
        else
                pl->reqs = req->next;
        if (req->next)
                req->next->prev = req->prev;
        free(req);
}

static struct poll_req *req_new(struct proactor_loop *pl, int fd, uint32_t events) {
        struct poll_req *req = calloc(1, sizeof(*req));

        if (!req)
                return NULL;
        req->pl = pl;
        req->fd = fd;
        req->events = events;
        req->next = pl->reqs;
        if (pl->reqs)
                pl->reqs->prev = req;
        pl->reqs = req;
        return req;
}

/* A new request for the file id names (fd's now), armed: it reaches
 * the kernel with the next batch. The caller gives it its callback. */
static int req_start(struct proactor_loop *pl, int fd, uint32_t events, const struct loop__file_id *id,
                     struct poll_req **ret) {
        struct poll_req *req = req_new(pl, fd, events);
        int r;

        if (!req)
                return -ENOMEM;
        req->id = *id;
        r = req_arm(req);
        if (r < 0) {
                req_maybe_free(req);
                return r;
        }
        *ret = req;
        return 0;
}

/* Put req on the list the next batch goes through (queue_probes). */
static int req_later(struct poll_req *req) {
        struct proactor_loop *pl = req->pl;

        if (req->dispatched)
                return 0;
        if (pl->n_dispatched == pl->cap_dispatched) {
                size_t cap = pl->cap_dispatched ? pl->cap_dispatched * 2 : 64;
                struct poll_req **d = realloc(pl->dispatched, cap * sizeof(*d));
                if (!d)
                        return -ENOMEM;
                pl->dispatched = d;
                pl->cap_dispatched = cap;
        }
        pl->dispatched[pl->n_dispatched++] = req;
        req->dispatched = true;
        return 0;
}

static int run_watchers(loop_t *loop, void *userdata);
static void watch_dispatch(struct poll_req *req, int res);

/* The request's fd is ready (res: the poll mask): run its callback this
 * iteration (once). */
static void req_dispatch(struct poll_req *req, int res) {
        struct proactor_loop *pl = req->pl;
        loop_handle_t *h = req->h;

        /* A closing loop runs nothing: loop_close() has already dropped
         * what was queued, and a cancelled recv_into it waits for must not
         * queue callbacks (or take threadsafe posts) behind its back. */
        if (pl->closing || pl->base.closed)
                return;
        if (req->wake) {
                loop__threadsafe_drain(&pl->base);
                pl->n_events++;
                return;
        }
        if (req->io)
                return watch_dispatch(req, res);
        if (!h || req->queued_iteration == pl->iteration)
                return;
        if (req_later(req) < 0) {
                loop__report(&pl->base, "Cannot queue an I/O callback", -ENOMEM, NULL, req->fd);
                return;
        }
        /* I/O handles never leave the loop's thread: a plain increment will do. */
        h->n_ref++;
        if (ready_push(&pl->base.ready, NULL, NULL, h) < 0) {
                h->n_ref--;
                loop__report(&pl->base, "Cannot queue an I/O callback", -ENOMEM, NULL, req->fd);
                return;
        }
        req->queued_iteration = pl->iteration;
        pl->n_events++;
}

/*
 * Before each batch. Level-triggered: every callback queued since the last
 * batch gets a probe, which completes at once if its fd is still ready.
 * A multishot request the kernel ended is armed again here, never from
 * inside the reaping: a ready fd's new request would complete at once, be
 * reaped in the same pass and armed again, and the pass would never end
 * (the kernel ends multishot polls when the completion queue is full, so
 * a few thousand ready descriptors did that). Arming checks readiness like
 * a probe does, so a re-armed request needs no probe.
 */
static void queue_probes(struct proactor_loop *pl) {
        for (size_t i = 0; i < pl->n_dispatched; i++) {
                struct poll_req *req = pl->dispatched[i];

                req->dispatched = false;
                if (pl->closing) {
                        req->rearm = false;
                } else if (req->rearm) {
                        req->rearm = false;
                        if (req_live(req) && !req->armed && req_arm(req) < 0)
                                loop__report(&pl->base, "Cannot watch file descriptor", -EAGAIN, NULL, req->fd);
                } else if ((req->h || req->io) && !req->probing &&
                           pl->ops->poll_add(pl->be, req->fd, req->events | POLLERR | POLLHUP, false,
                                             tag(req, TAG_PROBE)) >= 0) {
                        req->probing = true;
                        pl->n_inflight++;
                }
                req_maybe_free(req);
        }
        pl->n_dispatched = 0;
}

static void req_remove(struct poll_req *req) {
        struct proactor_loop *pl = req->pl;

        drop_handle(pl, req->h);
        req->h = NULL;
        if (req->io) {
                req->io->priv = NULL;
                req->io = NULL;
        }
        /* Failing to queue the removal leaves the request armed; its
         * completions find no callback, and loop_close() tries again. */
        if (req->armed)
                (void) pl->ops->poll_remove(pl->be, tag(req, TAG_POLL));
        if (req->probing)
                (void) pl->ops->poll_remove(pl->be, tag(req, TAG_PROBE));
        req_maybe_free(req);
}

/* Take req's callback off its fd slot and end the request. */
static void req_unlink(struct poll_req *req) {
        struct fdslot *s = &req->pl->fds[req->fd];

        for (int d = 0; d < 2; d++)
                if (s->io[d] == req)
                        s->io[d] = NULL;
        req_remove(req);
}

/* A poll result that says what req waits for. The kernel adds POLLRDHUP
 * to io_uring's poll results: a full socket whose peer shut down its
 * sending side completes a POLLOUT poll with POLLRDHUP alone, and it is
 * not writable. */
static inline bool is_ready(const struct poll_req *req, int res) {
        return res > 0 && (res & (int) (req->events | POLLERR | POLLHUP | POLLNVAL));
}

static void on_poll(struct poll_req *req, int res, uint32_t flags) {
        struct proactor_loop *pl = req->pl;

        if (!(flags & LOOP_PROACTOR_MORE)) {
                req->armed = false;
                pl->n_inflight--;
        }
        /* While a probe is in the kernel, it says whether the fd is ready
         * now; this completion may be older than the callback's last run
         * (a wake-up posted before the callback drained the fd), and would
         * call it with nothing to read. */
        if (is_ready(req, res) && !req->probing)
                req_dispatch(req, res);
        if (req->armed && !req_live(req) && !pl->closing)
                /* Removed, yet still armed: the POLL_REMOVE met the
                 * request while it was posting this completion and failed.
                 * Ask again. */
                (void) pl->ops->poll_remove(pl->be, tag(req, TAG_POLL));
        if (!req->armed && req_live(req) && !pl->closing) {
                if (res < 0 && res != -ECANCELED) {
                        /* The descriptor went bad (closed before the batch
                         * went in): asyncio would raise in add_reader; here
                         * the add was deferred, so the exception handler
                         * hears it, as on the selector loop. */
                        loop__report(&pl->base, "Cannot watch file descriptor", res, NULL, req->fd);
                        if (!req->wake) {
                                if (req->io)
                                        loop__io_lost(req->io);
                                req_unlink(req);
                                return;
                        }
                } else {
                        req->rearm = true;
                        if (req_later(req) < 0 && req_arm(req) < 0)
                                loop__report(&pl->base, "Cannot watch file descriptor", -ENOMEM, NULL, req->fd);
                }
        }
        req_maybe_free(req);
}

/* End the request of an enabled watcher (disabled, removed, changed). */
static void watch_end(loop_io_t *io) {
        struct poll_req *req = io->priv;

        if (req)
                req_remove(req);        /* clears io->priv */
}

/*
 * fd was found closed behind the loop's back (loop_add_reader(3): remove,
 * then close) while its requests keep the file, and its readiness, alive:
 * said once; its readers and writers go, its watchers are disabled.
 */
static void fd_closed(struct proactor_loop *pl, int fd) {
        struct fdslot *s = &pl->fds[fd];
        bool any = s->io[0] || s->io[1];

        for (loop_io_t *io = s->watchers; io; io = io->next)
                any |= io->enabled;
        if (!any)
                return;
        loop__report(&pl->base, "File descriptor closed while watched; its callbacks were removed", -EBADF, NULL, fd);
        for (int d = 0; d < 2; d++) {
                s->paused[d].cb = NULL;
                if (s->io[d])
                        req_unlink(s->io[d]);
        }
        for (loop_io_t *io = s->watchers; io; io = io->next) {
                watch_end(io);
                loop__io_lost(io);
        }
}

/*
 * A probe polls the fd by its number, the multishot request holds the
 * file: a probe failing with EBADF means the number was closed behind our
 * back (loop_add_reader(3): remove, then close) while the request keeps
 * the file, and its readiness, alive. Said once; the callback goes.
 */
static void on_probe(struct poll_req *req, int res) {
        struct proactor_loop *pl = req->pl;

        req->probing = false;
        pl->n_inflight--;
        if (is_ready(req, res))
                req_dispatch(req, res);
        else if (res == -EBADF && (req->h || req->io) && !pl->closing) {
                /* Every callback of the number goes, said once. */
                fd_closed(pl, req->fd);
                return;
        }
        req_maybe_free(req);
}

/* A callback for fd returned -EBADF and fd is closed (handle.c): the
 * request holds the file, whose readiness would go on running it. */
static void proactor_io_closed(loop_t *loop, int fd) {
        struct proactor_loop *pl = proactor_loop(loop);

        if ((size_t) fd >= pl->n_fds)
                return;
        fd_closed(pl, fd);
}

static int proactor_add_io(loop_t *loop, int fd, uint32_t event, loop_io_callback_t cb, void *userdata) {
        struct proactor_loop *pl = proactor_loop(loop);
        int d = event == LOOP_EVENT_READ ? 0 : 1;
        int r;

        if (fd < 0)
                return -EBADF;
        /* The poll goes in with the next batch: check the fd now, so a bad
         * one is the caller's error as on the selector loop. */
        struct loop__file_id id;
        r = loop__file_id(fd, &id);
        if (r < 0)
                return r;
        r = ensure_fd(pl, fd);
        if (r < 0)
                return r;
        struct fdslot *s = &pl->fds[fd];
        if (s->wake)
                return -EBUSY;
        struct poll_req *req = s->io[d];
        if (req && (req->id.dev != id.dev || req->id.ino != id.ino)) {
                /* fd was closed without a removal and the number now names
                 * another file, while the request still holds the old one. */
                loop__report(loop, "File descriptor closed while watched; the file it names now is watched instead",
                             -EBADF, NULL, fd);
                req_unlink(req);
                req = NULL;
        }

        loop_handle_t *h = loop__handle_new(loop, HANDLE_IO);
        if (!h)
                return -ENOMEM;
        h->io_cb = cb;
        h->userdata = userdata;
        h->fd = fd;

        if (req) {
                /* Replacing a callback, as asyncio does: the old one is
                 * cancelled, so it does not run even if already queued.
                 * The poll request stays. */
                drop_handle(pl, req->h);
                req->h = h;
                return 0;
        }
        r = req_start(pl, fd, d == 0 ? POLLIN : POLLOUT, &id, &req);
        if (r < 0) {
                loop__handle_drop(loop, h);
                return r;
        }
        req->h = h;
        s->io[d] = req;
        s->paused[d].cb = NULL;         /* a paused callback is replaced by an active one */
        return 0;
}

static int proactor_remove_io(loop_t *loop, int fd, uint32_t event) {
        struct proactor_loop *pl = proactor_loop(loop);
        int d = event == LOOP_EVENT_READ ? 0 : 1;

        if (fd < 0)
                return -EBADF;
        if ((size_t) fd >= pl->n_fds)
                return 0;
        struct fdslot *s = &pl->fds[fd];
        if (s->paused[d].cb) {
                s->paused[d].cb = NULL;
                return 1;
        }
        if (!s->io[d])
                return 0;
        struct poll_req *req = s->io[d];
        s->io[d] = NULL;
        req_remove(req);
        return 1;
}

/* A multishot poll left armed on a paused descriptor would complete
 * again and again while it stays ready, so pausing cancels the request
 * and keeps only the callback; resuming adds it again. */
static int proactor_pause_io(loop_t *loop, int fd, uint32_t event, bool pause) {
        struct proactor_loop *pl = proactor_loop(loop);
        int d = event == LOOP_EVENT_READ ? 0 : 1;
        int r;

        if (fd < 0)
                return -EBADF;
        if ((size_t) fd >= pl->n_fds)
                return -ENOENT;
        struct fdslot *s = &pl->fds[fd];
        bool paused = s->paused[d].cb != NULL;
        if (!paused && !s->io[d])
                return -ENOENT;
        if (paused == pause)
                return 0;               /* already so */
        if (pause) {
                loop_handle_t *h = s->io[d]->h;
                loop_io_callback_t cb = h->io_cb;
                void *userdata = h->userdata;
                (void) proactor_remove_io(loop, fd, event);
                s->paused[d].cb = cb;
                s->paused[d].userdata = userdata;
                return 0;
        }
        /* add_io clears the paused slot once it succeeds; on failure the
         * callback stays paused. */
        r = proactor_add_io(loop, fd, event, s->paused[d].cb, s->paused[d].userdata);
        return r < 0 ? r : 0;
}

/* ---- I/O watchers (io.c) ------------------------------------------------------ */

static uint32_t poll_events_of(uint32_t events) {
        return (events & LOOP_IO_READABLE ? POLLIN : 0) | (events & LOOP_IO_WRITABLE ? POLLOUT : 0);
}

/* A watcher's request completed with the poll mask res: mark the watcher,
 * queue its descriptor's entry (once), and probe next batch. */
static void watch_dispatch(struct poll_req *req, int res) {
        struct proactor_loop *pl = req->pl;
        struct fdslot *s = &pl->fds[req->fd];
        loop_io_t *io = req->io;
        uint32_t cond = (res & POLLIN ? LOOP_IO_READABLE : 0) | (res & POLLOUT ? LOOP_IO_WRITABLE : 0) |
                        (res & POLLERR ? LOOP_IO_ERROR : 0) | (res & POLLHUP ? LOOP_IO_HANGUP : 0);
        bool was_marked = io->revents != 0;

        if (!loop__io_mark(io, cond))
                return;
        if (req_later(req) < 0)
                goto nomem;
        if (!s->watchers_queued) {
                if (ready_push(&pl->base.ready, run_watchers, (void *) (intptr_t) req->fd, NULL) < 0)
                        goto nomem;
                s->watchers_queued = true;
        }
        if (!was_marked)
                pl->n_events++;
        return;
nomem:
        io->revents = 0;
        loop__report(&pl->base, "Cannot queue an I/O callback", -ENOMEM, NULL, req->fd);
}

/* Run fd's watchers that were marked ready, each once, in the order
 * added; one removed or disabled meanwhile is no longer marked. */
static int run_watchers(loop_t *loop, void *userdata) {
        struct proactor_loop *pl = proactor_loop(loop);
        int fd = (int) (intptr_t) userdata;
        uint32_t revents;
        unsigned k = 0;
        loop_io_t *io;

        pl->fds[fd].watchers_queued = false;
        /* The list head is read again after each callback: the table may
         * have moved, the list changed. */
        while ((io = loop__io_take(pl->fds[fd].watchers, &revents))) {
                loop__io_call(loop, io, revents);
                k++;
        }
        loop__io_ran(loop, k);
        return 0;
}

/* Arm a request for io (enabled), checking its descriptor first: the
 * request only reaches the kernel with the next batch. */
static int watch_start(struct proactor_loop *pl, loop_io_t *io) {
        struct poll_req *req;
        struct loop__file_id id;
        int r;

        r = loop__file_id(io->fd, &id);
        if (r < 0)
                return r;
        r = req_start(pl, io->fd, poll_events_of(io->events), &id, &req);
        if (r < 0)
                return r;
        req->io = io;
        io->priv = req;
        return 0;
}

static int proactor_io_attach(loop_t *loop, loop_io_t *io) {
        struct proactor_loop *pl = proactor_loop(loop);
        int fd = io->fd;
        int r;

        r = ensure_fd(pl, fd);
        if (r < 0)
                return r;
        struct fdslot *s = &pl->fds[fd];
        if (s->wake)
                return -EBUSY;
        r = watch_start(pl, io);
        if (r < 0)
                return r;
        /* Last on the list: watchers of a descriptor run in the order added. */
        loop_io_t *last = s->watchers;
        while (last && last->next)
                last = last->next;
        io->prev = last;
        io->next = NULL;
        *(last ? &last->next : &s->watchers) = io;
        return 0;
}

static int proactor_io_update(loop_t *loop, loop_io_t *io, uint32_t old_events, bool was_enabled) {
        struct proactor_loop *pl = proactor_loop(loop);
        struct poll_req *old = io->priv;
        int r;

        if (!io->enabled) {
                watch_end(io);
                return 0;
        }
        if (was_enabled && poll_events_of(old_events) == poll_events_of(io->events))
                return 0;
        /* A new request for the new mask, then the old one goes (a
         * multishot request's mask cannot change). */
        io->priv = NULL;
        r = watch_start(pl, io);
        if (r < 0) {
                io->priv = old;
                return r;
        }
        if (old) {
                old->io = NULL;
                req_remove(old);
        }
        return 0;
}

static void proactor_io_detach(loop_t *loop, loop_io_t *io) {
        struct proactor_loop *pl = proactor_loop(loop);
        struct fdslot *s = &pl->fds[io->fd];

        if (io->prev)
                io->prev->next = io->next;
        else
                s->watchers = io->next;
        if (io->next)
                io->next->prev = io->prev;
        io->prev = io->next = NULL;
        if (loop__inherited(loop)) {
                /* The ring is the parent's too: nothing is submitted; the
                 * request's memory goes with the loop's. */
                struct poll_req *req = io->priv;
                if (req)
                        req->io = NULL;
                io->priv = NULL;
                return;
        }
        watch_end(io);
}

static bool proactor_describe(const loop_t *loop, const struct loop__ready_entry *e, struct loop__entry_info *info) {
        const struct proactor_loop *pl = (const struct proactor_loop *) loop;

        if (e->cb != run_watchers)
                return false;
        int fd = (int) (intptr_t) e->userdata;
        /* Named after the first watcher it will run. */
        const loop_io_t *io = pl->fds[fd].watchers;
        while (io && !io->revents)
                io = io->next;
        *info = (struct loop__entry_info) {
                .fn = io ? (void *) (uintptr_t) io->cb : (void *) (uintptr_t) run_watchers,
                .userdata = io ? io->userdata : NULL,
                .fd = fd,
                .cancelled = !io,
        };
        return true;
}

/* ---- socket operations ------------------------------------------------------- */

static bool would_block(int e) {
        return e == EAGAIN || e == EWOULDBLOCK;
}

/* recv and recvfrom give their buffer to the future. */
static bool owns_data(int kind) {
        return kind == LOOP__SOCK_RECV || kind == LOOP__SOCK_RECVFROM;
}

static struct pop *pop_new(struct proactor_loop *pl, int kind, int fd) {
        struct pop *op = pl->op_cache;

        if (op) {
                pl->op_cache = op->next;
                pl->n_op_cache--;
        } else {
                op = malloc(sizeof(*op));
                if (!op)
                        return NULL;
        }
        /* Not a compound literal of the whole struct: the address storage
         * and the msghdr need no zeroing for the common operations. */
        op->pl = pl;
        op->future = NULL;
        op->res = NULL;
        op->kind = (uint8_t) kind;
        op->writing = kind == LOOP__SOCK_SENDALL || kind == LOOP__SOCK_SENDTO || kind == LOOP__SOCK_CONNECT;
        op->inflight = op->cancelled = op->poll_connect = op->unsafe_buf = false;
        op->fd = fd;
        op->buf = NULL;
        op->size = op->off = op->total = 0;
        op->addrlen = 0;
        op->prev = NULL;
        op->next = pl->live_ops;
        if (pl->live_ops)
                pl->live_ops->prev = op;
        pl->live_ops = op;
        return op;
}

static void pop_free(struct pop *op) {
        struct proactor_loop *pl = op->pl;

        if (op->kind != LOOP__SOCK_RECV_INTO)
                free(op->buf);
        if (op->res) {
                /* An accepted fd that no future took is still ours. */
                if (op->res->fd >= 0)
                        loop__close_socket(op->res->fd);
                free(op->res);
        }
        if (op->prev)
                op->prev->next = op->next;
        else
                pl->live_ops = op->next;
        if (op->next)
                op->next->prev = op->prev;
        if (pl->n_op_cache < OP_CACHE_MAX && !pl->closing) {
                op->next = pl->op_cache;
                pl->op_cache = op;
                pl->n_op_cache++;
                return;
        }
        free(op);
}

static struct pop **slot_of(struct pop *op) {
        return &op->pl->fds[op->fd].op[op->writing];
}

/* Forget the fd slot; nothing new is started for op after this. */
static void pop_detach(struct pop *op) {
        struct pop **slot = slot_of(op);

        if (*slot == op)
                *slot = NULL;
}

/* Complete the future with r (1: op->res is the result; < 0: an error)
 * and free op. */
static void pop_finish(struct pop *op, int r) {
        loop_future_t *f = op->future;

        pop_detach(op);
        op->future = NULL;
        /* Before anything can complete f: cancel must not come back here. */
        loop__future_on_cancel(f, NULL, NULL);
        if (r > 0) {
                if (loop_future_set_result(f, op->res,
                                           owns_data(op->kind) ? loop__sock_result_free_data
                                                               : loop__sock_result_free) >= 0) {
                        op->res = NULL;
                        if (owns_data(op->kind))
                                op->buf = NULL;
                }
        } else if (loop_future_set_error(f, r) < 0)
                /* -ECANCELED from the kernel: the future must not stay pending. */
                loop_future_cancel(f);
        loop_future_unref(f);
        pop_free(op);
}

/* Queue op's request; on failure (the ring is unusable) op fails with it. */
static int pop_queue(struct pop *op) {
        struct proactor_loop *pl = op->pl;
        const struct loop_proactor_ops *ops = pl->ops;
        uint64_t ud = tag(op, TAG_OP);
        int r;

        switch (op->kind) {
        case LOOP__SOCK_RECV:
        case LOOP__SOCK_RECV_INTO:
                r = ops->recv(pl->be, op->fd, op->buf, op->size, ud);
                break;
        case LOOP__SOCK_RECVFROM:
                op->res->addrlen = 0;
                op->iov = (struct iovec) { .iov_base = op->buf, .iov_len = op->size };
                op->msg = (struct msghdr) {
                        .msg_name = &op->res->addr,
                        .msg_namelen = sizeof(op->res->addr),
                        .msg_iov = &op->iov,
                        .msg_iovlen = 1,
                };
                r = ops->recvmsg(pl->be, op->fd, &op->msg, ud);
                break;
        case LOOP__SOCK_ACCEPT:
                op->res->addrlen = sizeof(op->res->addr);
                r = ops->accept(pl->be, op->fd, (struct sockaddr *) &op->res->addr, &op->res->addrlen, ud);
                break;
        case LOOP__SOCK_SENDALL:
                r = ops->send(pl->be, op->fd, op->buf + op->off, op->size, ud);
                break;
        case LOOP__SOCK_SENDTO:
                op->iov = (struct iovec) { .iov_base = op->buf, .iov_len = op->size };
                op->msg = (struct msghdr) {
                        .msg_name = op->addrlen ? &op->addr : NULL,
                        .msg_namelen = op->addrlen,
                        .msg_iov = &op->iov,
                        .msg_iovlen = 1,
                };
                r = ops->sendmsg(pl->be, op->fd, &op->msg, ud);
                break;
        case LOOP__SOCK_CONNECT:
                if (op->poll_connect)
                        r = ops->poll_add(pl->be, op->fd, POLLOUT, false, ud);
                else
                        r = ops->connect(pl->be, op->fd, (const struct sockaddr *) &op->addr, op->addrlen, ud);
                break;
        default:
                r = -EINVAL;
        }
        if (r < 0)
                return r;
        op->inflight = true;
        pl->n_inflight++;
        /* Remembered until the batch goes in: a future completed by hand
         * meanwhile withdraws its request (see pl_wait). Without room the
         * request simply goes in. */
        if (pl->n_batch == pl->cap_batch) {
                size_t cap = pl->cap_batch ? pl->cap_batch * 2 : 64;
                struct pop **b = realloc(pl->batch, cap * sizeof(*b));
                if (!b)
                        return 0;
                pl->batch = b;
                pl->cap_batch = cap;
        }
        pl->batch[pl->n_batch++] = op;
        return 0;
}

/* The bytes a cancelled receive had already taken: kept for the next one. */
static void stash_bytes(struct proactor_loop *pl, int fd, const char *data, size_t n) {
        struct fdslot *s = &pl->fds[fd];
        struct stash *st = s->stash;
        struct loop__file_id id;

        if (loop__file_id(fd, &id) < 0)
                return;         /* closed meanwhile: nobody can read them */
        if (st && (st->id.dev != id.dev || st->id.ino != id.ino)) {
                free(st->data);
                free(st);
                st = s->stash = NULL;
        }
        if (!st) {
                st = calloc(1, sizeof(*st));
                if (!st)
                        goto lost;
                st->id = id;
                s->stash = st;
        }
        char *d = realloc(st->data, st->len - st->off + n);
        if (!d)
                goto lost;
        memmove(d, d + st->off, st->len - st->off);
        memcpy(d + st->len - st->off, data, n);
        st->data = d;
        st->len = st->len - st->off + n;
        st->off = 0;
        return;
lost:
        loop__report(&pl->base, "Cannot keep the data a cancelled receive took", -ENOMEM, NULL, fd);
}

/* Serve a receive from the stash; 1 if it did, 0 if there is none. */
static int stash_take(struct proactor_loop *pl, struct pop *op) {
        struct fdslot *s = &pl->fds[op->fd];
        struct stash *st = s->stash;
        struct loop__file_id id;

        if (!st)
                return 0;
        if (loop__file_id(op->fd, &id) < 0 || st->id.dev != id.dev || st->id.ino != id.ino) {
                /* The fd number now names another file: the bytes are not its. */
                free(st->data);
                free(st);
                s->stash = NULL;
                return 0;
        }
        size_t n = st->len - st->off;
        if (n > op->size)
                n = op->size;
        if (op->kind == LOOP__SOCK_RECV) {
                op->buf = malloc(n ? n : 1);
                if (!op->buf)
                        return -ENOMEM;
        }
        memcpy(op->buf, st->data + st->off, n);
        st->off += n;
        if (st->off == st->len) {
                free(st->data);
                free(st);
                s->stash = NULL;
        }
        op->res->data = op->buf;
        op->res->nbytes = n;
        return 1;
}

/* A completion for an operation whose future is gone. */
static void salvage(struct pop *op, int res) {
        struct proactor_loop *pl = op->pl;

        if (res <= 0)
                return;
        switch (op->kind) {
        case LOOP__SOCK_RECV:
        case LOOP__SOCK_RECV_INTO:
                /* recv_into's buffer is the caller's: only read while its
                 * cancellation waits for this completion. A closing loop
                 * has no next receive. */
                if (!op->unsafe_buf && !pl->closing)
                        stash_bytes(pl, op->fd, op->buf, (size_t) res);
                break;
        case LOOP__SOCK_ACCEPT:
                loop__close_socket(res);
                break;
        }
}

/* Shrink a receive buffer to what arrived: the future may live long. */
static void shrink(struct pop *op, size_t n) {
        if (n < op->size) {
                char *b = realloc(op->buf, n ? n : 1);
                if (b)
                        op->buf = b;
        }
}

static int connect_outcome(int fd) {
        int err = 0;
        socklen_t len = sizeof(err);

        if (loop__getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
                return -errno;
        if (err == EINPROGRESS || err == EALREADY)
                return 0;
        return err ? -err : 1;
}

static void on_op(struct pop *op, int res) {
        struct proactor_loop *pl = op->pl;
        int r;

        op->inflight = false;
        pl->n_inflight--;
        if (pl->awaited == op)
                pl->awaited = NULL;
        if (!op->cancelled && loop_future_done(op->future)) {
                /* Someone completed the future by hand (asyncio's callbacks
                 * check fut.done() too): what arrived goes to the next one. */
                pop_detach(op);
                loop__future_on_cancel(op->future, NULL, NULL);
                op->future = loop_future_unref(op->future);
                op->cancelled = true;
        }
        if (op->cancelled) {
                salvage(op, res);
                pop_free(op);
                return;
        }
        if (res == -EINTR || res == -EAGAIN)
                goto again;
        if (res < 0) {
                if (op->kind == LOOP__SOCK_ACCEPT && res == -ECONNABORTED)
                        goto again;     /* the listener is fine (see sock.c) */
                pop_finish(op, res);
                return;
        }
        switch (op->kind) {
        case LOOP__SOCK_RECV:
                shrink(op, (size_t) res);
                __attribute__((fallthrough));
        case LOOP__SOCK_RECV_INTO:
                op->res->data = op->buf;
                op->res->nbytes = (size_t) res;
                break;
        case LOOP__SOCK_RECVFROM:
                shrink(op, (size_t) res);
                op->res->data = op->buf;
                op->res->nbytes = (size_t) res;
                op->res->addrlen = op->msg.msg_namelen;
                break;
        case LOOP__SOCK_ACCEPT:
                op->res->fd = res;
                break;
        case LOOP__SOCK_SENDALL:
                op->off += (size_t) res;
                op->size -= (size_t) res;
                if (op->size > 0)
                        goto again;
                op->res->nbytes = op->total;
                break;
        case LOOP__SOCK_SENDTO:
                op->res->nbytes = (size_t) res;
                break;
        case LOOP__SOCK_CONNECT:
                if (op->poll_connect) {
                        r = connect_outcome(op->fd);
                        if (r == 0)
                                goto again;
                        if (r < 0) {
                                pop_finish(op, r);
                                return;
                        }
                }
                break;
        }
        pop_finish(op, 1);
        pl->n_events++;
        return;

again:
        if (pl->closing) {
                pop_finish(op, -ECANCELED);
                return;
        }
        r = pop_queue(op);
        if (r < 0)
                pop_finish(op, r);
}

/* Inside loop_future_cancel(), which completes f as cancelled once this
 * returns; its caller holds a reference, so dropping ours is safe. */
static void pop_on_cancel(loop_future_t *f, void *data) {
        struct pop *op = data;
        struct proactor_loop *pl = op->pl;

        pop_detach(op);
        op->future = NULL;
        op->cancelled = true;
        loop_future_unref(f);
        if (!op->inflight) {
                pop_free(op);
                return;
        }
        /* Not yet in the kernel: it never will be, nothing was consumed.
         * The no-op's completion frees op. */
        if (pl->ops->withdraw(pl->be, tag(op, TAG_OP)))
                return;
        if (op->poll_connect)
                (void) pl->ops->poll_remove(pl->be, tag(op, TAG_OP));
        else
                (void) pl->ops->cancel(pl->be, tag(op, TAG_OP));
        if (op->kind != LOOP__SOCK_RECV_INTO)
                return;
        /* The buffer is the caller's, who may reuse it as soon as we
         * return: wait until the kernel is done with it. The completion
         * frees op and clears pl->awaited. (Completions only run loop
         * internals, never user code, so nothing can start another
         * operation meanwhile.) */
        struct pop *outer = pl->awaited;
        pl->awaited = op;
        while (pl->awaited == op)
                if (pl_wait(pl, -1, NULL) < 0)
                        break;
        if (pl->awaited == op)
                /* The ring failed under us: never touch the buffer again. */
                op->unsafe_buf = true;
        pl->awaited = outer;
}

/*
 * Every wait goes through here. A future completed by hand (not through
 * cancel, so we were not told) whose request is still queued: the request
 * is withdrawn, so it consumes nothing, as on the selector loop where the
 * operation notices at its next readiness.
 */
static int pl_wait(struct proactor_loop *pl, int64_t timeout_ns, loop_proactor_keep_t keep) {
        for (size_t i = 0; i < pl->n_batch; i++) {
                struct pop *op = pl->batch[i];
                /* Queued ops stay alive (inflight) until their completion,
                 * which only a wait delivers: the pointers are good. */
                if (op->cancelled || !op->inflight || !loop_future_done(op->future))
                        continue;
                if (!pl->ops->withdraw(pl->be, tag(op, TAG_OP)))
                        continue;
                pop_detach(op);
                loop__future_on_cancel(op->future, NULL, NULL);
                op->future = loop_future_unref(op->future);
                op->cancelled = true;
        }
        pl->n_batch = 0;
        /* A new batch of completions: a callback queued by an earlier one
         * (and run since) may be queued again. */
        pl->iteration++;
        return pl->ops->wait(pl->be, timeout_ns, on_complete, keep, pl);
}

/* 1: done now (op->res filled), 0: would block, < 0: failed. */
static int try_now(struct pop *op, const struct loop__sock_call *call) {
        ssize_t n;
        int fd = op->fd;

        switch (op->kind) {
        case LOOP__SOCK_RECV:
        case LOOP__SOCK_RECV_INTO: {
                int r = stash_take(op->pl, op);
                if (r != 0)
                        return r;
                /* The caller knows the socket was just drained (a
                 * transport's next receive): a recv() now would only say
                 * EAGAIN. */
                if (call->no_try)
                        return 0;
                if (op->kind == LOOP__SOCK_RECV) {
                        /* Never NULL, even for size 0, so memcpy(dst, data, size) is valid. */
                        op->buf = malloc(op->size ? op->size : 1);
                        if (!op->buf)
                                return -ENOMEM;
                }
                do
                        n = loop__recv(fd, op->buf, op->size, RECV_FLAGS);
                while (n < 0 && errno == EINTR);
                if (n < 0)
                        return would_block(errno) ? 0 : -errno;
                if (op->kind == LOOP__SOCK_RECV)
                        shrink(op, (size_t) n);
                op->res->data = op->buf;
                op->res->nbytes = (size_t) n;
                return 1;
        }
        case LOOP__SOCK_RECVFROM:
                op->buf = malloc(op->size ? op->size : 1);
                if (!op->buf)
                        return -ENOMEM;
                do {
                        op->res->addrlen = sizeof(op->res->addr);
                        n = loop__recvfrom(fd, op->buf, op->size, RECV_FLAGS,
                                           (struct sockaddr *) &op->res->addr, &op->res->addrlen);
                } while (n < 0 && errno == EINTR);
                if (n < 0) {
                        op->res->addrlen = 0;
                        return would_block(errno) ? 0 : -errno;
                }
                shrink(op, (size_t) n);
                op->res->data = op->buf;
                op->res->nbytes = (size_t) n;
                return 1;
        case LOOP__SOCK_ACCEPT:
                for (;;) {
                        op->res->addrlen = sizeof(op->res->addr);
                        int nfd = loop__accept_nonblock(fd, (struct sockaddr *) &op->res->addr, &op->res->addrlen);
                        if (nfd >= 0) {
                                op->res->fd = nfd;
                                return 1;
                        }
                        if (errno == EINTR || errno == ECONNABORTED)
                                continue;
                        op->res->addrlen = 0;
                        return would_block(errno) ? 0 : -errno;
                }
        case LOOP__SOCK_SENDALL:
                op->total = call->size;
                n = 0;
                if (call->size > 0) {
                        do
                                n = loop__send(fd, call->data, call->size, SEND_FLAGS);
                        while (n < 0 && errno == EINTR);
                        if (n < 0 && !would_block(errno)) {
                                int e = errno;
                                /* Other errors fail the future (sock_call
                                 * returns 0): give is ours to free then. */
                                if (e != EBADF && e != ENOTSOCK)
                                        free(call->give);
                                return -e;
                        }
                        if (n < 0)
                                n = 0;
                }
                if ((size_t) n == call->size) {
                        op->res->nbytes = call->size;
                        free(call->give);
                        return 1;
                }
                op->size = call->size - (size_t) n;
                if (call->give) {
                        /* A transport's buffer, ours now: no copy. */
                        op->buf = call->give;
                        op->off = (size_t) n;
                        return 0;
                }
                /* Only the rest is copied: the caller's buffer is only
                 * valid during the call. */
                op->buf = malloc(op->size);
                if (!op->buf)
                        return -ENOMEM;
                memcpy(op->buf, (const char *) call->data + n, op->size);
                return 0;
        case LOOP__SOCK_SENDTO:
                do
                        n = loop__sendto(fd, call->data, call->size, SEND_FLAGS, call->addr, call->addrlen);
                while (n < 0 && errno == EINTR);
                if (n >= 0) {
                        op->res->nbytes = (size_t) n;
                        return 1;
                }
                if (!would_block(errno))
                        return -errno;
                op->size = call->size;
                op->buf = malloc(call->size ? call->size : 1);
                if (!op->buf)
                        return -ENOMEM;
                memcpy(op->buf, call->data, call->size);
                if (call->addr)
                        memcpy(&op->addr, call->addr, call->addrlen);
                op->addrlen = call->addrlen;
                return 0;
        case LOOP__SOCK_CONNECT:
                memcpy(&op->addr, call->addr, call->addrlen);
                op->addrlen = call->addrlen;
                /* A TCP connect never completes at once on a non-blocking
                 * socket: straight to IORING_OP_CONNECT, no connect(2) first. */
                if (call->addr->sa_family == AF_INET || call->addr->sa_family == AF_INET6)
                        return 0;
                /* Others (AF_UNIX) usually do: tried now, as on the selector
                 * loop. Not retried on EINTR: the attempt goes on in the
                 * background, and a second connect() would say EALREADY;
                 * in progress, the request is a POLLOUT poll, then SO_ERROR. */
                if (loop__connect(fd, call->addr, call->addrlen) == 0)
                        return 1;
                if (errno == EINPROGRESS || errno == EINTR) {
                        op->poll_connect = true;
                        return 0;
                }
                return -errno;
        }
        return -EINVAL;
}

static int proactor_sock_call(loop_t *loop, const struct loop__sock_call *call, loop_future_t **ret) {
        struct proactor_loop *pl = proactor_loop(loop);
        loop_future_t *f = NULL;
        struct pop *op;
        int r;

        r = ensure_fd(pl, call->fd);
        if (r < 0)
                return r;
        op = pop_new(pl, call->kind, call->fd);
        if (!op)
                return -ENOMEM;
        if (*slot_of(op)) {
                /* One operation per direction per fd, as on the selector loop. */
                r = -EBUSY;
                goto fail;
        }
        if (call->kind == LOOP__SOCK_RECV_INTO)
                op->buf = call->buf;
        op->size = call->size;
        op->res = malloc(sizeof(*op->res));
        if (!op->res) {
                r = -ENOMEM;
                goto fail;
        }
        op->res->fd = -1;
        op->res->nbytes = 0;
        op->res->data = NULL;
        op->res->addrlen = 0;
        r = loop_create_future(loop, &f);
        if (r < 0)
                goto fail;
        op->future = loop_future_ref(f);

        /* From the first system call on, every outcome goes through the future. */
        r = try_now(op, call);
        if (r == -ENOTSOCK || r == -EBADF) {
                /* Nothing happened: the caller's error (as in sock.c). */
                loop_future_unref(op->future);
                op->future = NULL;
                goto fail;
        }
        if (r == 0)
                r = pop_queue(op);
        if (r != 0) {
                pop_finish(op, r);
                *ret = f;
                return 0;
        }
        *slot_of(op) = op;
        loop__future_on_cancel(f, pop_on_cancel, op);
        *ret = f;
        return 0;

fail:
        loop_future_unref(f);
        pop_free(op);
        return r;
}

/* ---- the loop kind --------------------------------------------------------- */

static void on_complete(void *ctx, uint64_t user_data, int res, uint32_t flags) {
        void *p = (void *) (uintptr_t) (user_data & ~(uint64_t) TAG_MASK);

        (void) ctx;
        switch (user_data & TAG_MASK) {
        case TAG_OP:
                on_op(p, res);
                break;
        case TAG_POLL:
                on_poll(p, res, flags);
                break;
        case TAG_PROBE:
                on_probe(p, res);
                break;
        }
}

/* A completion the next iteration must see: one that runs a callback,
 * completes a future or re-arms a request. */
static bool is_live(void *ctx, uint64_t user_data, int res, uint32_t flags) {
        void *p = (void *) (uintptr_t) (user_data & ~(uint64_t) TAG_MASK);
        const struct poll_req *req = p;
        const struct pop *op = p;

        (void) ctx;
        switch (user_data & TAG_MASK) {
        case TAG_OP:
                return !op->cancelled;
        case TAG_POLL:
        case TAG_PROBE:
                return req_live(req);
        }
        return false;
}

static int proactor_poll(loop_t *loop, int64_t timeout_ns) {
        struct proactor_loop *pl = proactor_loop(loop);

        pl->n_events = 0;
        queue_probes(pl);
        /* A backend that wakes the loop itself (IOCP's posted packet) gives
         * no completion for it: iterate() takes the posts after every wait. */
        int r = pl_wait(pl, timeout_ns, NULL);
        /* The loop's metrics count readiness events: callbacks queued and
         * operations completed, not raw completions (a probe and its
         * multishot request completing together are one event). */
        return r < 0 ? r : pl->n_events;
}

static void proactor_prepare(loop_t *loop) {
        struct proactor_loop *pl = proactor_loop(loop);

        queue_probes(pl);
        /* Submit, and take the completions there are at once that mean
         * nothing (those of removed requests): the caller is about to wait
         * on loop_fileno(), which must not turn readable for nothing. The
         * others stay for the iteration the caller runs when it does. */
        int r = pl_wait(pl, 0, is_live);
        if (r < 0)
                loop__report(loop, "Cannot submit I/O requests", r, NULL, -1);
}

static int proactor_fileno(loop_t *loop) {
        struct proactor_loop *pl = proactor_loop(loop);

        if (!pl->ops->fileno)
                return -EOPNOTSUPP;
        return pl->ops->fileno(pl->be);
}

static uint64_t proactor_count_fds(loop_t *loop) {
        struct proactor_loop *pl = proactor_loop(loop);
        uint64_t n = 0;

        for (size_t fd = 0; fd < pl->n_fds; fd++)
                n += pl->fds[fd].io[0] || pl->fds[fd].io[1] || pl->fds[fd].paused[0].cb ||
                     pl->fds[fd].paused[1].cb || pl->fds[fd].watchers;
        return n;
}

static void proactor_dump(loop_t *loop, FILE *f) {
        struct proactor_loop *pl = proactor_loop(loop);

        for (size_t fd = 0; fd < pl->n_fds; fd++) {
                const struct fdslot *s = &pl->fds[fd];
                if (!s->io[0] && !s->io[1] && !s->op[0] && !s->op[1] && !s->paused[0].cb && !s->paused[1].cb &&
                    !s->watchers)
                        continue;
                /* "registered": what the kernel has a poll request for. */
                fprintf(f, "fd %zu registered=%s%s", fd, s->io[0] && s->io[0]->armed ? "r" : "",
                        s->io[1] && s->io[1]->armed ? "w" : "");
                for (int d = 0; d < 2; d++) {
                        static const char *const name[2] = { "reader", "writer" };
                        if (s->io[d])
                                fprintf(f, " %s=%p %s_userdata=%p", name[d], (void *) (uintptr_t) s->io[d]->h->io_cb,
                                        name[d], s->io[d]->h->userdata);
                        else if (s->paused[d].cb)
                                fprintf(f, " %s=%p %s_userdata=%p %s_paused", name[d],
                                        (void *) (uintptr_t) s->paused[d].cb, name[d], s->paused[d].userdata, name[d]);
                }
                for (const loop_io_t *io = s->watchers; io; io = io->next)
                        fprintf(f, " io=%p io_userdata=%p io_events=%s%s%s", (void *) (uintptr_t) io->cb, io->userdata,
                                io->events & LOOP_IO_READABLE ? "r" : "", io->events & LOOP_IO_WRITABLE ? "w" : "",
                                io->enabled ? "" : " io_disabled");
                if (s->op[0])
                        fprintf(f, " receiving=%p", (void *) s->op[0]->future);
                if (s->op[1])
                        fprintf(f, " sending=%p", (void *) s->op[1]->future);
                fputc('\n', f);
        }
}

/* Ask the kernel to end every request it holds (loop_close). */
static void end_requests(struct proactor_loop *pl) {
        for (struct poll_req *req = pl->reqs; req; req = req->next) {
                if (req->armed)
                        (void) pl->ops->poll_remove(pl->be, tag(req, TAG_POLL));
                if (req->probing)
                        (void) pl->ops->poll_remove(pl->be, tag(req, TAG_PROBE));
        }
        for (struct pop *op = pl->live_ops; op; op = op->next) {
                if (!op->inflight || pl->ops->withdraw(pl->be, tag(op, TAG_OP)))
                        continue;
                if (op->poll_connect)
                        (void) pl->ops->poll_remove(pl->be, tag(op, TAG_OP));
                else
                        (void) pl->ops->cancel(pl->be, tag(op, TAG_OP));
        }
}

/* Fork child: memory only. The requests are the parent's, in the parent's
 * ring; the futures cannot be completed here (they answer ECHILD). */
static void close_inherited(struct proactor_loop *pl) {
        while (pl->live_ops) {
                struct pop *op = pl->live_ops;
                if (op->future) {
                        loop__future_on_cancel(op->future, NULL, NULL);
                        loop_future_unref(op->future);
                        op->future = NULL;
                }
                /* No accepted fd can be pending here; res->fd is -1. */
                pl->live_ops = op->next;
                if (op->kind != LOOP__SOCK_RECV_INTO)
                        free(op->buf);
                free(op->res);
                free(op);
        }
        while (pl->reqs) {
                struct poll_req *req = pl->reqs;
                pl->reqs = req->next;
                if (req->h) {
                        __atomic_store_n(&req->h->cancelled, 1, __ATOMIC_RELEASE);
                        loop__handle_drop(&pl->base, req->h);
                }
                free(req);
        }
        pl->ops->free(pl->be, true);
        pl->be = NULL;
}

static void proactor_close(loop_t *loop) {
        struct proactor_loop *pl = proactor_loop(loop);

        pl->n_dispatched = 0;
        if (loop__inherited(loop)) {
                pl->closing = true;
                pl->n_batch = 0;
                close_inherited(pl);
                goto free_memory;
        }

        /* The futures first, while the loop still takes requests: each
         * cancellation queues its IORING_OP_ASYNC_CANCEL (a recv_into's
         * waits for its completion). */
        for (size_t fd = 0; fd < pl->n_fds; fd++)
                for (int d = 0; d < 2; d++) {
                        struct pop *op = pl->fds[fd].op[d];
                        if (!op || !op->future)
                                continue;
                        /* Our reference may be the last: keep f alive through cancel. */
                        loop_future_t *f = loop_future_ref(op->future);
                        if (loop_future_cancel(f) <= 0) {
                                /* Completed by hand: no cancel hook ran. */
                                pop_detach(op);
                                loop__future_on_cancel(f, NULL, NULL);
                                loop_future_unref(op->future);
                                op->future = NULL;
                                op->cancelled = true;
                                if (op->inflight)
                                        (void) pl->ops->cancel(pl->be, tag(op, TAG_OP));
                        }
                        loop_future_unref(f);
                }
        pl->closing = true;
        for (size_t fd = 0; fd < pl->n_fds; fd++) {
                struct fdslot *s = &pl->fds[fd];
                for (int d = 0; d < 2; d++) {
                        if (s->io[d]) {
                                drop_handle(pl, s->io[d]->h);
                                s->io[d]->h = NULL;
                                s->io[d] = NULL;
                        }
                }
                /* Their requests end below with the others. */
                for (loop_io_t *io = s->watchers; io; io = io->next) {
                        struct poll_req *req = io->priv;
                        if (req)
                                req->io = NULL;
                        io->priv = NULL;
                }
        }
        if (pl->wake)
                pl->wake->wake = false;
        for (struct poll_req *req = pl->reqs; req; req = req->next)
                req->dispatched = false;
        /* Every request still in the kernel is asked to end, and its
         * completion is reaped before any memory goes: a receive the
         * cancellation did not stop would write into it. The requests are
         * asked again each round: a removal that meets a poll request
         * while it is posting a completion fails (ENOENT, EALREADY) and
         * the request stays armed. */
        int64_t deadline = loop__now() + CLOSE_WAIT_NS;
        while (pl->n_inflight > 0 && loop__now() < deadline) {
                end_requests(pl);
                if (pl_wait(pl, 10 * INT64_C(1000000), NULL) < 0)
                        break;
        }
        if (pl->n_inflight > 0) {
                /* Never seen with sockets; a request that will not end
                 * keeps its memory (leaked on purpose, not freed under the
                 * kernel's feet). The ring's teardown cancels it. */
                loop__report(loop, "I/O requests did not end at close; their memory is left allocated", -EBUSY,
                             NULL, -1);
                pl->reqs = NULL;
                pl->live_ops = NULL;
        }
        while (pl->reqs) {
                struct poll_req *req = pl->reqs;
                pl->reqs = req->next;
                free(req);
        }
        while (pl->live_ops)
                pop_free(pl->live_ops);
        /* A backend that wakes the loop itself stays until the loop's
         * memory goes (proactor_wake_release): a poster may still wake it. */
        if (!loop->wake) {
                pl->ops->free(pl->be, false);
                pl->be = NULL;
        }

free_memory:
        pl->wake = NULL;
        for (size_t fd = 0; fd < pl->n_fds; fd++) {
                if (pl->fds[fd].stash) {
                        free(pl->fds[fd].stash->data);
                        free(pl->fds[fd].stash);
                }
                /* Watchers outlive the loop as detached objects while the
                 * caller holds them; the loop's own go now. */
                while (pl->fds[fd].watchers) {
                        loop_io_t *io = pl->fds[fd].watchers;
                        pl->fds[fd].watchers = io->next;
                        loop__io_loop_closed(io);
                }
        }
        free(pl->fds);
        pl->fds = NULL;
        pl->n_fds = 0;
        free(pl->dispatched);
        pl->dispatched = NULL;
        pl->cap_dispatched = 0;
        free(pl->batch);
        pl->batch = NULL;
        pl->n_batch = pl->cap_batch = 0;
        while (pl->op_cache) {
                struct pop *op = pl->op_cache;
                pl->op_cache = op->next;
                free(op);
        }
        pl->n_op_cache = 0;
}

static const struct loop__impl proactor_impl = {
        .poll = proactor_poll,
        .count_fds = proactor_count_fds,
        .dump = proactor_dump,
        .prepare = proactor_prepare,
        .fileno = proactor_fileno,
        .close = proactor_close,
        .add_io = proactor_add_io,
        .remove_io = proactor_remove_io,
        .pause_io = proactor_pause_io,
        .sock_call = proactor_sock_call,
        .describe = proactor_describe,
        .io_closed = proactor_io_closed,
        .io_attach = proactor_io_attach,
        .io_update = proactor_io_update,
        .io_detach = proactor_io_detach,
};

/* loop_call_soon_threadsafe's wake-up on a backend that has its own (IOCP),
 * from any thread. */
static void proactor_wake(void *ctx) {
        struct proactor_loop *pl = ctx;

        (void) pl->ops->wake(pl->be);
}

/* The loop's memory goes (threadsafe.c): every poster has returned, every
 * request ended at loop_close(). */
static void proactor_wake_release(void *ctx) {
        struct proactor_loop *pl = ctx;

        if (pl->be)
                pl->ops->free(pl->be, false);
        pl->be = NULL;
}

static int proactor_loop_new(const struct loop_proactor_ops *ops, loop_t **ret) {
        struct proactor_loop *pl;
        int r;

        pl = calloc(1, sizeof(*pl));
        if (!pl)
                return -ENOMEM;
        pl->ops = ops;
        r = ops->init(&pl->be);
        if (r < 0) {
                free(pl);
                return r;
        }
        r = loop__init(&pl->base, &proactor_impl);
        if (r < 0) {
                ops->free(pl->be, false);
                free(pl);
                return r;
        }

        if (ops->wake) {
                loop__threadsafe_use_wake(&pl->base, proactor_wake, proactor_wake_release, pl);
                *ret = &pl->base;
                return 0;
        }
        int wfd = pl->base.wake_read_fd;
        r = ensure_fd(pl, wfd);
        if (r < 0)
                goto fail;
        pl->wake = req_new(pl, wfd, POLLIN);
        if (!pl->wake) {
                r = -ENOMEM;
                goto fail;
        }
        pl->wake->wake = true;
        r = req_arm(pl->wake);
        if (r < 0)
                goto fail;
        pl->fds[wfd].wake = true;
        *ret = &pl->base;
        return 0;

fail:
        loop_unref(&pl->base);
        return r;
}

int loop__proactor_loop_new_named(const char *name, loop_t **ret) {
        if (!proactors[0])
                return -EOPNOTSUPP;
        for (size_t i = 0; proactors[i]; i++)
                if (strcmp(proactors[i]->name, name) == 0)
                        return proactor_loop_new(proactors[i], ret);
        /* As for LIBLOOP_SELECTOR: a choice that cannot be honoured is an
         * error, not a silent fallback. */
        return -ENOENT;
}

const char *loop__proactor_name(loop_t *loop) {
        if (!loop || loop->impl != &proactor_impl)
                return NULL;
        return proactor_loop(loop)->ops->name;
}

LOOP_EXPORT int loop_proactor_loop_new(loop_t **ret) {
        return_if_fail(ret, -EINVAL);
        if (!proactors[0])
                return -EOPNOTSUPP;
        return proactor_loop_new(proactors[0], ret);
}
