/* SPDX-License-Identifier: MIT */
/*
 * I/O watchers (sd_event_add_io, libev's ev_io): a watcher on a descriptor
 * for a mask of events, whose callback gets every condition that holds in
 * one call, several per descriptor, each enabled, disabled, changed and
 * freed on its own. asyncio's readers and writers stay as they are beside
 * them (one callback per direction, replaced on add): both sit on the
 * loop kind's per-descriptor table, and the backend watches the union.
 * Readers are not built on watchers: their path is benchmarked against
 * libev's, and a watcher object per reader would cost it an allocation
 * and a pointer chase per event.
 *
 * Life of a watcher. n_ref counts the caller's references; a floating
 * watcher (loop_add_io with ret NULL) has none and belongs to the loop.
 * It is attached (io->loop set) until loop_io_remove(), the last
 * reference going (not for a floating one), or loop_close(); detached, it
 * never runs again, and it is freed once nobody references it and its
 * callback is not running. The loop kinds queue entries that name the
 * descriptor, not the watcher (io.h), so nothing else points at it.
 *
 * Changes (events, enabled) take effect for the backend lazily, like
 * readers' (at the next wait), but at once for the callback: a watcher
 * disabled or removed does not run, even if already marked ready in this
 * iteration, and a marked watcher whose mask shrinks is told only what
 * it still asks for.
 */
#include <stdlib.h>

#include "internal.h"
#include "io.h"

static void io_maybe_free(loop_io_t *io) {
        if (!io->loop && io->n_ref == 0 && !io->running)
                free(io);
}

static void io_detach(loop_io_t *io) {
        loop_t *loop = io->loop;

        io->revents = 0;
        io->enabled = false;
        loop->impl->io_detach(loop, io);
        io->loop = NULL;
}

/* 0 if io is attached to a usable loop, else why not. */
static int io_usable(const loop_io_t *io) {
        if (io->loop)
                return loop__usable(io->loop);
        return io->closed ? -ESHUTDOWN : -ESTALE;
}

LOOP_EXPORT int loop_add_io(loop_t *loop, int fd, uint32_t events, loop_io_handler_t cb, void *userdata,
                            loop_io_t **ret) {
        int r = loop__usable(loop);

        if (r < 0)
                return r;
        return_if_fail(cb && !(events & ~LOOP__IO_VALID), -EINVAL);
        if (fd < 0)
                return -EBADF;

        loop_io_t *io = malloc(sizeof(*io));
        if (!io)
                return -ENOMEM;
        *io = (loop_io_t) {
                .n_ref = ret ? 1 : 0,
                .fd = fd,
                .events = events,
                .enabled = true,
                .floating = !ret,
                .loop = loop,
                .cb = cb,
                .userdata = userdata,
        };
        r = loop->impl->io_attach(loop, io);
        if (r < 0) {
                free(io);
                return r;
        }
        if (ret)
                *ret = io;
        return 0;
}

LOOP_EXPORT loop_io_t *loop_io_ref(loop_io_t *io) {
        if (io)
                io->n_ref++;
        return io;
}

LOOP_EXPORT loop_io_t *loop_io_unref(loop_io_t *io) {
        if (!io || io->n_ref == 0)
                return NULL;            /* a floating watcher: the loop's */
        if (--io->n_ref > 0)
                return NULL;
        /* The last reference removes it, as sd_event_source_unref() does;
         * a floating one the caller had taken a reference to stays the
         * loop's. */
        if (io->loop && !io->floating)
                io_detach(io);
        io_maybe_free(io);
        return NULL;
}

LOOP_EXPORT int loop_io_remove(loop_io_t *io) {
        int r;

        return_if_fail(io, -EINVAL);
        r = io_usable(io);
        if (r == -ESTALE)
                return 0;
        if (r < 0)
                return r;
        io_detach(io);
        io_maybe_free(io);
        return 1;
}

/* Apply a change of events or enabled through the loop kind; on failure
 * the watcher stays as it was. */
static int io_change(loop_io_t *io, uint32_t events, bool enabled) {
        uint32_t old_events = io->events;
        bool was_enabled = io->enabled;
        int r;

        if (events == old_events && enabled == was_enabled)
                return 0;
        io->events = events;
        io->enabled = enabled;
        /* Now, not at the next wait: a disabled watcher does not run, and
         * a marked one is told only what it still asks for. */
        io->revents &= loop__io_wants(io);
        r = io->loop->impl->io_update(io->loop, io, old_events, was_enabled);
        if (r < 0) {
                io->events = old_events;
                io->enabled = was_enabled;
        }
        return r;
}

LOOP_EXPORT int loop_io_set_events(loop_io_t *io, uint32_t events) {
        int r;

        return_if_fail(io && !(events & ~LOOP__IO_VALID), -EINVAL);
        r = io_usable(io);
        if (r < 0)
                return r;
        return io_change(io, events, io->enabled);
}

LOOP_EXPORT int loop_io_get_events(const loop_io_t *io) {
        return_if_fail(io, -EINVAL);
        if (io->loop && loop__inherited(io->loop))
                return -ECHILD;
        return (int) io->events;
}

LOOP_EXPORT int loop_io_set_enabled(loop_io_t *io, int enabled) {
        int r;

        return_if_fail(io, -EINVAL);
        r = io_usable(io);
        if (r < 0)
                return r;
        return io_change(io, io->events, enabled != 0);
}

LOOP_EXPORT int loop_io_get_enabled(const loop_io_t *io) {
        return_if_fail(io, -EINVAL);
        if (io->loop && loop__inherited(io->loop))
                return -ECHILD;
        return io->enabled;
}

LOOP_EXPORT int loop_io_get_fd(const loop_io_t *io) {
        return_if_fail(io, -EINVAL);
        if (io->loop && loop__inherited(io->loop))
                return -ECHILD;
        return io->fd;
}

LOOP_EXPORT loop_t *loop_io_get_loop(const loop_io_t *io) {
        return io ? io->loop : NULL;
}

/* ---- for the loop kinds (io.h) ------------------------------------------ */

loop_io_t *loop__io_take(loop_io_t *head, uint32_t *revents) {
        for (loop_io_t *io = head; io; io = io->next)
                if (io->revents) {
                        *revents = io->revents;
                        io->revents = 0;
                        return io;
                }
        return NULL;
}

void loop__io_call(loop_t *loop, loop_io_t *io, uint32_t revents) {
        int fd = io->fd;
        int r;

        /* A callback never runs inside another of the same loop (the loop
         * cannot be run from its own callbacks), so a flag will do. */
        io->running = true;
        r = io->cb(io, fd, revents, io->userdata);
        io->running = false;
        io_maybe_free(io);
        if (likely(r >= 0))
                return;
        /* As a reader's failure is reported (handle.c): with the
         * descriptor, and a closed one is let go of. */
        loop__report(loop, "Exception in callback", r, NULL, fd);
        if (r == -EBADF && loop->impl->io_closed && loop__fd_valid(fd) == -EBADF)
                loop->impl->io_closed(loop, fd);
}

void loop__io_loop_closed(loop_io_t *io) {
        io->revents = 0;
        io->enabled = false;
        io->closed = true;
        io->loop = NULL;
        io->prev = io->next = NULL;
        io->priv = NULL;
        io_maybe_free(io);
}
