/* SPDX-License-Identifier: MIT */
#pragma once

/*
 * I/O watchers (loop_add_io): the object and what the loop kinds share
 * about it. io.c owns the public calls and the watcher's life; a loop kind
 * (selector_loop.c, proactor_loop.c) keeps each descriptor's watchers in a
 * list, in the order added, tells the backend what their union needs, and
 * when the descriptor is ready marks the watchers (loop__io_mark) and
 * queues one entry for the descriptor, whose function runs the marked ones
 * (loop__io_take, loop__io_call). An entry names the descriptor, never a
 * watcher, so a watcher removed and freed meanwhile leaves nothing
 * dangling: it is simply no longer on the list.
 */

#include <stdbool.h>
#include <stdint.h>

#include "internal.h"

#define LOOP__IO_ALWAYS (LOOP_IO_ERROR | LOOP_IO_HANGUP)
#define LOOP__IO_VALID (LOOP_IO_READABLE | LOOP_IO_WRITABLE | LOOP__IO_ALWAYS)

struct loop_io {
        unsigned n_ref;                 /* the caller's references; a floating watcher has none */
        int fd;
        uint32_t events;                /* the mask asked for (LOOP_IO_*) */
        uint32_t revents;               /* conditions for its next call; 0: none (disabled, removed) */
        bool enabled;
        bool floating;                  /* the loop owns it: freed once removed */
        bool running;                   /* its callback runs: not freed under it */
        bool closed;                    /* detached because its loop was closed */
        loop_t *loop;                   /* NULL once detached */
        loop_io_handler_t cb;
        void *userdata;
        loop_io_t *prev, *next;         /* the descriptor's watchers, in the loop kind */
        void *priv;                     /* the loop kind's (the proactor's poll request) */
};

/* What io watches now: its mask and the conditions always reported, or
 * nothing while disabled. */
static inline uint32_t loop__io_wants(const loop_io_t *io) {
        return io->enabled ? (io->events & (LOOP_IO_READABLE | LOOP_IO_WRITABLE)) | LOOP__IO_ALWAYS : 0;
}

/* The descriptor is ready with cond (LOOP_IO_*): note what io asked for.
 * True if io now waits for a call. */
static inline bool loop__io_mark(loop_io_t *io, uint32_t cond) {
        io->revents |= cond & loop__io_wants(io);
        return io->revents != 0;
}

/* The first watcher of the list that waits for a call, its conditions
 * taken into *revents; NULL if none is left. */
loop_io_t *loop__io_take(loop_io_t *head, uint32_t *revents);

/* Run io's callback with revents (from the loop kind's entry function):
 * reports a failure as a reader's is reported, and frees io afterwards if
 * it was let go of meanwhile. */
void loop__io_call(loop_t *loop, loop_io_t *io, uint32_t revents);

/* The entry function ran k callbacks (loop_run_once counts callbacks, not
 * entries: see loop__run_ready). */
static inline void loop__io_ran(loop_t *loop, unsigned k) {
        /* n_stale is subtracted from the batch's entry count; unsigned
         * arithmetic makes "k - 1 more" come out right. */
        loop->n_stale -= (uint64_t) k - 1;
}

/* The descriptor's watchers can no longer be watched (closed behind the
 * loop's back, refused by the backend): disable io; it does not run even
 * if already marked. */
static inline void loop__io_lost(loop_io_t *io) {
        io->enabled = false;
        io->revents = 0;
}

/* The loop kind lets go of io because the loop closes (its lists are being
 * freed): detach it, and free it unless the caller still holds it. */
void loop__io_loop_closed(loop_io_t *io);
