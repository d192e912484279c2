/* SPDX-License-Identifier: MIT */
#pragma once

/*
 * A 4-ary min-heap of timers. A slot is 16 bytes: the deadline, a sequence
 * number that orders equal deadlines first-scheduled first, and the timer's
 * id. Sifting compares and moves slots only: it never touches a handle, so
 * a level costs one cache line and no miss on a handle (libev writes each
 * moved watcher's heap index; we do not keep one).
 *
 * The id is the handle's index in the loop's handle pool (handle.c), fixed
 * for the handle's life: it names the handle (chunk id / 1024, slot
 * id % 1024) and its "cancelled" bit, with no table to keep. Cancelling
 * only sets that bit (asyncio's TimerHandle.cancel does the same with a
 * flag): cancelled timers leave the heap when they reach the top, or all at
 * once when they are more than half of it and the loop iterates (asyncio's
 * _run_once does the same) or the heap would have to grow. So the heap
 * grows only while at least half of it is live, and a cancel followed by
 * the caller's unref leaves the handle to the purge alone: no handle goes
 * through the atomic give-back for it.
 */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "loop.h"

/* Handles per pool chunk: a timer id is chunk << TIMER_CHUNK_SHIFT | slot. */
#define TIMER_CHUNK_SHIFT 10
#define TIMER_CHUNK_HANDLES (1u << TIMER_CHUNK_SHIFT)

struct timer_slot {
        int64_t when;
        /* The sequence number above the id: one compare orders equal
         * deadlines (sequence numbers are unique), one store writes both. */
        uint64_t order;
};

static inline uint32_t timer_slot_id(const struct timer_slot *s) {
        return (uint32_t) s->order;
}

static inline uint64_t timer_slot_order(uint32_t seq, uint32_t id) {
        return (uint64_t) seq << 32 | id;
}

/*
 * What a purge does with the cancelled timers it removed, called once per
 * word of the bitmap: the timers are first + i for each bit i set in ids
 * (64 ids share a chunk of the pool). They are out of the heap; the drop
 * clears in_heap of any it does not take back into the pool.
 */
typedef void (*timer_heap_drop_t)(void *ctx, loop_handle_t *first, uint64_t ids);

struct timer_heap {
        struct timer_slot *slots;       /* from index HEAP0, 64-byte aligned, in mem */
        void *mem;                      /* the allocation slots is in (realloc's) */
        uint32_t n, cap;
        uint32_t n_cancelled;
        uint32_t next_seq;
        /* next_seq at which the live sequence numbers are renumbered from
         * 0 (they are compared as plain integers); UINT32_MAX but for tests. */
        uint32_t seq_limit;
        /* Inserts need no growing and no renumbering while next_seq is
         * below this: the slow push sets it min(cap - n, seq_limit -
         * next_seq) ahead. Pops and purges only lower n, so it stays safe;
         * the test is a compare with a word the insert loads anyway. */
        uint32_t seq_stop;
        /* The pool's chunk table: (*chunks)[c] is chunk c's first handle. */
        loop_handle_t *const *const *chunks;
        uint64_t *cancelled;            /* bit per id */
        uint32_t bits_cap;              /* ids the bitmap covers, a multiple of 64 */
        timer_heap_drop_t drop;         /* what a purge does with a cancelled timer */
        void *drop_ctx;
};

/*
 * Four children per node: half the depth of a binary heap. The root sits at
 * index HEAP0 = 3 and the array is 64-byte aligned, so the four 16-byte
 * children of any node fill exactly one cache line (libev's trick): one
 * miss per level while sifting down instead of two.
 */
#define TIMER_HEAP_ARITY 4
#define TIMER_HEAP0 3u

/* Word-sized: no zero-extension of the index on each level of a sift. */
static inline size_t timer_heap_parent(size_t i) {
        return i / TIMER_HEAP_ARITY + (TIMER_HEAP0 - 1);
}

static inline bool timer_slot_before(const struct timer_slot *a, const struct timer_slot *b) {
        if (a->when != b->when)
                return a->when < b->when;
        return a->order < b->order;
}

static inline void timer_heap_sift_up(struct timer_heap *heap, uint32_t at, struct timer_slot s) {
        struct timer_slot *slots = heap->slots;
        size_t i = at;

        while (i > TIMER_HEAP0) {
                size_t p = timer_heap_parent(i);
                if (!timer_slot_before(&s, &slots[p]))
                        break;
                slots[i] = slots[p];
                i = p;
        }
        slots[i] = s;
}

void loop__timer_heap_init(struct timer_heap *heap, loop_handle_t *const *const *chunks, timer_heap_drop_t drop,
                           void *drop_ctx);
int loop__timer_heap_push(struct timer_heap *heap, loop_handle_t *h, int64_t when);
loop_handle_t *loop__timer_heap_pop(struct timer_heap *heap);
/* Drops every cancelled timer (the heap's drop is called for each) and rebuilds the heap. */
void loop__timer_heap_purge(struct timer_heap *heap);
void loop__timer_heap_free(struct timer_heap *heap);

/* The cancelled bitmap covers ids below n from now on: the loop's handle
 * pool calls it as it grows, so that every pooled handle is covered. */
int loop__timer_heap_cover(struct timer_heap *heap, uint32_t n);

/*
 * Scheduling inline (loop_call_at_ns): when timer_heap_has_room() says
 * there is room in the heap and sequence numbers are left,
 * timer_heap_insert() needs nothing else (the bitmap covers the loop's
 * pooled handles, see above). Otherwise loop__timer_heap_push() grows or
 * renumbers first. h must be pooled.
 */
static inline bool timer_heap_has_room(const struct timer_heap *heap) {
        return heap->next_seq < heap->seq_stop;
}

/* The caller sets h->in_heap (loop_call_at_ns with the rest of the handle's first word). */
static inline void timer_heap_insert(struct timer_heap *heap, loop_handle_t *h, int64_t when) {
        timer_heap_sift_up(heap, TIMER_HEAP0 + heap->n++,
                           (struct timer_slot) { .when = when, .order = timer_slot_order(heap->next_seq++, h->pool_index) });
}

static inline const struct timer_slot *timer_heap_top(const struct timer_heap *heap) {
        return heap->n ? &heap->slots[TIMER_HEAP0] : NULL;
}

static inline bool timer_heap_is_cancelled(const struct timer_heap *heap, uint32_t id) {
        return heap->cancelled[id / 64] >> (id % 64) & 1;
}

static inline loop_handle_t *timer_heap_handle(const struct timer_heap *heap, uint32_t id) {
        return (*heap->chunks)[id >> TIMER_CHUNK_SHIFT] + (id & (TIMER_CHUNK_HANDLES - 1));
}

/* Live (not cancelled) timers. */
static inline uint32_t timer_heap_live(const struct timer_heap *heap) {
        return heap->n - heap->n_cancelled;
}

/* Purge cancelled timers once they are more than half the heap and at
 * least this many (asyncio: 100 and half). */
#define TIMER_HEAP_PURGE_MIN 64u

static inline bool timer_heap_wants_purge(const struct timer_heap *heap) {
        return heap->n_cancelled >= TIMER_HEAP_PURGE_MIN && heap->n_cancelled > heap->n / 2;
}

/* Once per loop iteration: cancelled timers go if they are more than half. */
static inline void loop__timer_heap_tidy(struct timer_heap *heap) {
        if (unlikely(timer_heap_wants_purge(heap)))
                loop__timer_heap_purge(heap);
}

/*
 * Marks a timer that is in the heap as cancelled: a bit and a count, and
 * nothing is dropped here. The purge waits for the loop's next iteration
 * (loop__timer_heap_tidy) or for a push that would grow the heap, so that
 * a caller that cancels and then lets go of its handle leaves the purge a
 * handle nobody else holds. Once per timer: the caller tests the handle's
 * own flag first (loop_handle_cancel), so the bit is not tested again.
 */
static inline void loop__timer_heap_cancel(struct timer_heap *heap, const loop_handle_t *h) {
        uint32_t id = h->pool_index;

        heap->cancelled[id / 64] |= UINT64_C(1) << (id % 64);
        heap->n_cancelled++;
}
