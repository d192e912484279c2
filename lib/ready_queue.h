/* SPDX-License-Identifier: MIT */
#pragma once

/*
 * The ready queue: what call_soon, expired timers and ready descriptors
 * queue for the next pass. Two flat arrays take turns: a pass takes the
 * whole array as its batch and gives the loop the other one to fill, so
 * running a batch writes nothing per callback and the callbacks it runs
 * can queue more (for the next pass, as asyncio's _run_once) without
 * touching the batch. An entry is two words, a function and its
 * argument; a handle rides in the userdata word with
 * loop__run_handle_entry as its function, so the run loop calls every
 * entry alike and tests nothing before the call. An entry is the
 * public header's struct loop__ready_entry: loop_call_soon's inline path
 * (loop.h) stores entries itself, through the window that starts every
 * loop; the array being filled is that window's room.
 */

#include <stdlib.h>
#include <string.h>

/* Run a queued handle (handle.c). Reports a failing callback itself and
 * returns 0, so the run loop reports nothing twice. */
int loop__run_handle_entry(loop_t *loop, void *h);

/* Pointers rather than a count and a capacity: the room test and the
 * store then need no index arithmetic, which is most of call_soon. */
struct ready_queue {
        /* First: the first member of every loop (loop.h). window.tail is
         * the array's first free entry, window.end one past its last. */
        struct loop__soon_window window;
        struct loop__ready_entry *items;      /* the array being filled */
        /* The array the running batch came from, or the idle one. */
        struct loop__ready_entry *spare;
        size_t spare_cap;
};

int loop__ready_grow(struct ready_queue *q);

static inline size_t ready_count(const struct ready_queue *q) {
        return (size_t) (q->window.tail - q->items);
}

static inline size_t ready_cap(const struct ready_queue *q) {
        return (size_t) (q->window.end - q->items);
}

/* Make `items`, holding n entries out of cap, the array being filled.
 * NULL (no array yet, or none left after close) has n == cap == 0, and is
 * kept apart: even NULL + 0 is undefined in C (clang's UBSan says so). */
static inline void ready_set(struct ready_queue *q, struct loop__ready_entry *items, size_t n, size_t cap) {
        q->items = items;
        q->window.tail = items ? items + n : NULL;
        q->window.end = items ? items + cap : NULL;
}

static inline int ready_push(struct ready_queue *q, loop_callback_t cb, void *userdata, loop_handle_t *h) {
        if (unlikely(q->window.tail == q->window.end)) {
                int r = loop__ready_grow(q);
                if (r < 0)
                        return r;
        }
        *q->window.tail++ = h ? (struct loop__ready_entry) { .cb = loop__run_handle_entry, .userdata = h }
                              : (struct loop__ready_entry) { .cb = cb, .userdata = userdata };
        return 0;
}

static inline loop_handle_t *ready_entry_handle(const struct loop__ready_entry *e) {
        return e->cb == loop__run_handle_entry ? (loop_handle_t *) e->userdata : NULL;
}
