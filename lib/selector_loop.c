/* SPDX-License-Identifier: MIT */
/*
 * The selector loop (asyncio's BaseSelectorEventLoop): readers and writers
 * on top of a readiness backend.
 *
 * Registrations are kept per descriptor in a table indexed by fd (libev's
 * anfds). Changes reach the backend lazily: a changed descriptor is queued
 * and the queue is applied once, right before the next wait, so removing
 * and re-adding a callback in one iteration costs nothing (one MOD at most
 * on epoll, see below). The first registration of a descriptor is the
 * exception: it goes to the backend at once so that a bad descriptor is
 * reported to the caller of loop_add_reader(), as asyncio does.
 *
 * When the last callback of a descriptor is removed, the descriptor may be
 * closed and its number reused before the next wait (accept() returns the
 * lowest free number, so under load it usually is). Such a descriptor is
 * marked "reset": if a callback is added again in the same iteration the
 * backend is told to re-check it, which on epoll is one EPOLL_CTL_ADD (it
 * fails with EEXIST, changing nothing, when the file is still the same).
 * Without that the new file would never be watched.
 */
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "selector.h"

struct fdinfo {
        loop_handle_t *reader;
        loop_handle_t *writer;
        uint32_t registered;    /* what the backend watches now */
        bool queued;            /* on the change queue */
        bool reset;             /* all callbacks were removed since the last flush */
        bool wake;              /* the loop's own wake-up descriptor */
};

struct selector_loop {
        loop_t base;            /* first: a selector loop is a loop */
        loop_selector_t *sel;
        struct fdinfo *fds;
        size_t n_fds;
        int *changes;
        size_t n_changes, cap_changes;
};

static inline struct selector_loop *selector_loop(loop_t *loop) {
        return (struct selector_loop *) loop;
}

static inline uint32_t wanted(const struct fdinfo *fi) {
        return (fi->reader || fi->wake ? LOOP_EVENT_READ : 0) | (fi->writer ? LOOP_EVENT_WRITE : 0);
}

static int ensure_fd(struct selector_loop *sl, int fd) {
        return loop__fd_table_reserve((void **) &sl->fds, &sl->n_fds, sizeof(*sl->fds), fd);
}

static int queue_change(struct selector_loop *sl, int fd) {
        struct fdinfo *fi = &sl->fds[fd];

        if (fi->queued)
                return 0;
        if (sl->n_changes == sl->cap_changes) {
                size_t cap = sl->cap_changes ? sl->cap_changes * 2 : 64;
                int *changes = realloc(sl->changes, cap * sizeof(*changes));
                if (!changes)
                        return -ENOMEM;
                sl->changes = changes;
                sl->cap_changes = cap;
        }
        sl->changes[sl->n_changes++] = fd;
        fi->queued = true;
        return 0;
}

static void drop_callbacks(struct selector_loop *sl, struct fdinfo *fi) {
        loop_handle_t **slots[] = { &fi->reader, &fi->writer };

        for (size_t i = 0; i < ELEMENTSOF(slots); i++) {
                loop_handle_t *h = *slots[i];
                if (!h)
                        continue;
                *slots[i] = NULL;
                __atomic_store_n(&h->cancelled, 1, __ATOMIC_RELEASE);
                loop__handle_drop(&sl->base, h);
        }
}

/* Apply the queued changes: once per iteration, right before waiting. */
static void flush_changes(struct selector_loop *sl) {
        const struct loop_selector_ops *ops = sl->sel->ops;

        for (size_t i = 0; i < sl->n_changes; i++) {
                int fd = sl->changes[i];
                struct fdinfo *fi = &sl->fds[fd];
                uint32_t w = wanted(fi);
                bool reset = fi->reset && w != 0;

                fi->queued = false;
                fi->reset = false;
                if (w == fi->registered && !reset)
                        continue;
                int r = ops->modify(sl->sel->state, fd, fi->registered, w, reset);
                if (r < 0) {
                        /* The descriptor went bad behind our back (closed while
                         * watched): asyncio would raise in add_reader; here the
                         * add was deferred, so the exception handler hears it. */
                        fi->registered = 0;
                        loop__report(&sl->base, "Cannot watch file descriptor", r, NULL, fd);
                        drop_callbacks(sl, fi);
                        continue;
                }
                fi->registered = w;
        }
        sl->n_changes = 0;
}

static void on_ready(void *ctx, int fd, uint32_t events) {
        struct selector_loop *sl = ctx;
        loop_handle_t *hs[2];
        size_t n = 0;

        if (fd < 0 || (size_t) fd >= sl->n_fds)
                return;
        struct fdinfo *fi = &sl->fds[fd];
        if (fi->wake) {
                loop__threadsafe_drain(&sl->base);
                return;
        }
        if ((events & LOOP_EVENT_READ) && fi->reader)
                hs[n++] = fi->reader;
        if ((events & LOOP_EVENT_WRITE) && fi->writer)
                hs[n++] = fi->writer;
        for (size_t i = 0; i < n; i++) {
                /* I/O handles never leave the loop's thread: a plain increment will do. */
                hs[i]->n_ref++;
                if (ready_push(&sl->base.ready, NULL, NULL, hs[i]) < 0) {
                        hs[i]->n_ref--;
                        loop__report(&sl->base, "Cannot queue an I/O callback", -ENOMEM, NULL, fd);
                }
        }
}

static int selector_poll(loop_t *loop, int64_t timeout_ns) {
        struct selector_loop *sl = selector_loop(loop);

        flush_changes(sl);
        return sl->sel->ops->select(sl->sel->state, timeout_ns, on_ready, sl);
}

static void selector_close(loop_t *loop) {
        struct selector_loop *sl = selector_loop(loop);

        for (size_t fd = 0; fd < sl->n_fds; fd++)
                drop_callbacks(sl, &sl->fds[fd]);
        free(sl->fds);
        free(sl->changes);
        sl->fds = NULL;
        sl->changes = NULL;
        sl->n_fds = sl->n_changes = sl->cap_changes = 0;
        /* The selector stays marked as used: its kernel object still holds
         * this loop's registrations (they are never removed one by one, see
         * selector.h), so it cannot serve another loop. */
        sl->sel = loop_selector_unref(sl->sel);
}

static uint64_t selector_count_fds(loop_t *loop) {
        struct selector_loop *sl = selector_loop(loop);
        uint64_t n = 0;

        for (size_t fd = 0; fd < sl->n_fds; fd++)
                n += sl->fds[fd].reader || sl->fds[fd].writer;
        return n;
}

static void selector_dump(loop_t *loop, FILE *f) {
        struct selector_loop *sl = selector_loop(loop);

        for (size_t fd = 0; fd < sl->n_fds; fd++) {
                const struct fdinfo *fi = &sl->fds[fd];
                if (!fi->reader && !fi->writer)
                        continue;
                fprintf(f, "fd %zu registered=%s%s", fd, fi->registered & LOOP_EVENT_READ ? "r" : "",
                        fi->registered & LOOP_EVENT_WRITE ? "w" : "");
                if (fi->reader)
                        fprintf(f, " reader=%p reader_userdata=%p", (void *) (uintptr_t) fi->reader->io_cb,
                                fi->reader->userdata);
                if (fi->writer)
                        fprintf(f, " writer=%p writer_userdata=%p", (void *) (uintptr_t) fi->writer->io_cb,
                                fi->writer->userdata);
                fputc('\n', f);
        }
}

static void selector_prepare(loop_t *loop) {
        flush_changes(selector_loop(loop));
}

static int selector_fileno(loop_t *loop) {
        struct selector_loop *sl = selector_loop(loop);

        if (!sl->sel->ops->fileno)
                return -EOPNOTSUPP;
        return sl->sel->ops->fileno(sl->sel->state);
}

static int add_io(loop_t *loop, int fd, uint32_t event, loop_io_callback_t cb, void *userdata);
static int remove_io(loop_t *loop, int fd, uint32_t event);

const struct loop__impl loop__selector_impl = {
        .poll = selector_poll,
        .count_fds = selector_count_fds,
        .dump = selector_dump,
        .prepare = selector_prepare,
        .fileno = selector_fileno,
        .close = selector_close,
        .add_io = add_io,
        .remove_io = remove_io,
};

LOOP_EXPORT int loop_selector_loop_new(loop_selector_t *sel, loop_t **ret) {
        struct selector_loop *sl;
        int r;

        return_if_fail(sel && ret, -EINVAL);
        if (sel->owner)
                return -EBUSY;

        sl = calloc(1, sizeof(*sl));
        if (!sl)
                return -ENOMEM;
        r = loop__init(&sl->base, &loop__selector_impl);
        if (r < 0) {
                free(sl);
                return r;
        }
        sl->sel = loop_selector_ref(sel);
        sel->owner = &sl->base;

        int wfd = sl->base.wake_read_fd;
        r = ensure_fd(sl, wfd);
        if (r >= 0)
                r = sel->ops->modify(sel->state, wfd, 0, LOOP_EVENT_READ, 0);
        if (r < 0) {
                loop_unref(&sl->base);
                return r;
        }
        sl->fds[wfd].wake = true;
        sl->fds[wfd].registered = LOOP_EVENT_READ;
        *ret = &sl->base;
        return 0;
}

LOOP_EXPORT loop_selector_t *loop_get_selector(loop_t *loop) {
        if (!loop || loop->impl != &loop__selector_impl)
                return NULL;
        return selector_loop(loop)->sel;
}

static int add_io(loop_t *loop, int fd, uint32_t event, loop_io_callback_t cb, void *userdata) {
        struct selector_loop *sl = selector_loop(loop);
        int r;

        if (fd < 0)
                return -EBADF;
        const struct loop_selector_ops *ops = sl->sel->ops;
        if (ops->check_fd) {
                r = ops->check_fd(sl->sel->state, fd);
                if (r < 0)
                        return r;
        }
        r = ensure_fd(sl, fd);
        if (r < 0)
                return r;

        struct fdinfo *fi = &sl->fds[fd];
        if (fi->wake)
                return -EBUSY;
        loop_handle_t **slot = event == LOOP_EVENT_READ ? &fi->reader : &fi->writer;

        if (fi->registered == 0) {
                /* First registration: now, so a bad descriptor is the caller's error. */
                r = ops->modify(sl->sel->state, fd, 0, wanted(fi) | event, 0);
                if (r < 0)
                        return r;
                fi->registered = wanted(fi) | event;
        } else if ((wanted(fi) | event) != fi->registered || fi->reset) {
                r = queue_change(sl, fd);
                if (r < 0)
                        return r;
        }

        loop_handle_t *h = loop__handle_new(loop, HANDLE_IO);
        if (!h)
                return -ENOMEM;
        h->io_cb = cb;
        h->userdata = userdata;
        h->fd = fd;
        /* Replacing a callback, as asyncio does: the old one is cancelled,
         * so it does not run even if it was already queued. */
        if (*slot) {
                __atomic_store_n(&(*slot)->cancelled, 1, __ATOMIC_RELEASE);
                loop__handle_drop(loop, *slot);
        }
        *slot = h;
        return 0;
}

static int remove_io(loop_t *loop, int fd, uint32_t event) {
        struct selector_loop *sl = selector_loop(loop);
        int r;

        if (fd < 0)
                return -EBADF;
        if ((size_t) fd >= sl->n_fds)
                return 0;

        struct fdinfo *fi = &sl->fds[fd];
        loop_handle_t **slot = event == LOOP_EVENT_READ ? &fi->reader : &fi->writer;
        loop_handle_t *h = *slot;
        if (!h)
                return 0;
        *slot = NULL;
        __atomic_store_n(&h->cancelled, 1, __ATOMIC_RELEASE);
        loop__handle_drop(loop, h);

        if (wanted(fi) == 0)
                fi->reset = true;
        r = queue_change(sl, fd);
        if (r < 0) {
                /* No room to defer the change: apply it now instead. */
                uint32_t w = wanted(fi);
                if (w != fi->registered && sl->sel->ops->modify(sl->sel->state, fd, fi->registered, w, 0) >= 0)
                        fi->registered = w;
        }
        return 1;
}
