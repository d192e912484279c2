/* SPDX-License-Identifier: MIT */
#pragma once

/*
 * A 4-ary min-heap of timers. A slot is 16 bytes: the deadline, a sequence
 * number that orders equal deadlines first-scheduled first, and the timer's
 * id. Sifting compares and moves slots only: it never touches a handle, so
 * a level costs one cache line and no miss on a handle (libev writes each
 * moved watcher's heap index; we do not keep one).
 *
 * The id is a small integer, stable while the timer is in the heap, that
 * indexes the handle and its "cancelled" bit. Cancelling only sets that
 * bit (asyncio's TimerHandle.cancel does the same with a flag): cancelled
 * timers leave the heap when they reach the top, or all at once when they
 * are more than half of it, so the heap never holds more than twice its
 * live timers.
 */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "loop.h"

#define TIMER_ID_NONE UINT32_MAX

struct timer_slot {
        int64_t when;
        uint32_t seq;
        uint32_t id;
};

struct timer_heap {
        struct timer_slot *slots;       /* from index HEAP0, 64-byte aligned */
        uint32_t n, cap;
        uint32_t n_cancelled;
        uint32_t next_seq;
        /* next_seq at which the live sequence numbers are renumbered from
         * 0 (they are compared as plain integers); UINT32_MAX but for tests. */
        uint32_t seq_limit;
        /*
         * By id: the handle. Ids are handed out lowest first (a bit per id
         * says which are taken), so the ids of a burst of timers are
         * consecutive and by_id is walked in order, not at random.
         */
        loop_handle_t **by_id;
        uint64_t *used;                 /* bit per id */
        uint64_t *cancelled;            /* bit per id */
        uint32_t ids_cap;               /* a multiple of 64 */
        uint32_t first_free_word;       /* no free id in the words before it */
};

/* The loop's handle drop, called for each cancelled timer a purge removes. */
typedef void (*timer_heap_drop_t)(void *ctx, loop_handle_t *h);

void loop__timer_heap_init(struct timer_heap *heap);
int loop__timer_heap_push(struct timer_heap *heap, loop_handle_t *h, int64_t when);
loop_handle_t *loop__timer_heap_pop(struct timer_heap *heap);
/* Marks a timer that is in the heap as cancelled; may purge (drop is then
 * called for every cancelled timer removed, this one included). */
void loop__timer_heap_cancel(struct timer_heap *heap, loop_handle_t *h, timer_heap_drop_t drop, void *ctx);
void loop__timer_heap_free(struct timer_heap *heap);

static inline const struct timer_slot *timer_heap_top(const struct timer_heap *heap) {
        return heap->n ? &heap->slots[3] : NULL;      /* HEAP0, see timer_heap.c */
}

static inline bool timer_heap_is_cancelled(const struct timer_heap *heap, uint32_t id) {
        return heap->cancelled[id / 64] >> (id % 64) & 1;
}

static inline loop_handle_t *timer_heap_handle(const struct timer_heap *heap, uint32_t id) {
        return heap->by_id[id];
}

/* Live (not cancelled) timers. */
static inline uint32_t timer_heap_live(const struct timer_heap *heap) {
        return heap->n - heap->n_cancelled;
}
