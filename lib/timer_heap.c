/* SPDX-License-Identifier: MIT */
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "timer_heap.h"

#define ARITY TIMER_HEAP_ARITY
#define HEAP0 TIMER_HEAP0
#define CACHELINE 64

#define parent_of timer_heap_parent
#define slot_before timer_slot_before
#define sift_up timer_heap_sift_up

static inline uint32_t first_child(uint32_t i) {
        return ARITY * (i - HEAP0) + HEAP0 + 1;
}

static void sift_down(struct timer_heap *heap, uint32_t i, struct timer_slot s) {
        uint32_t end = HEAP0 + heap->n;

        for (;;) {
                uint32_t first = first_child(i);
                if (first >= end)
                        break;
                uint32_t best;
                /* The children's children are four lines in a row: ask for
                 * them now, so the next level does not wait for memory
                 * (a heap of a million timers does not fit in cache). */
                if (first_child(first) < end) {
                        const char *gc = (const char *) &heap->slots[first_child(first)];
                        __builtin_prefetch(gc);
                        __builtin_prefetch(gc + CACHELINE);
                        __builtin_prefetch(gc + 2 * CACHELINE);
                        __builtin_prefetch(gc + 3 * CACHELINE);
                }
                if (likely(first + ARITY <= end)) {
                        /* All four children: a tournament, two rounds. */
                        const struct timer_slot *c = &heap->slots[first];
                        uint32_t a = slot_before(&c[1], &c[0]) ? 1 : 0;
                        uint32_t b = slot_before(&c[3], &c[2]) ? 3 : 2;
                        best = first + (slot_before(&c[b], &c[a]) ? b : a);
                } else {
                        best = first;
                        for (uint32_t c = first + 1; c < end; c++)
                                if (slot_before(&heap->slots[c], &heap->slots[best]))
                                        best = c;
                }
                if (!slot_before(&heap->slots[best], &s))
                        break;
                heap->slots[i] = heap->slots[best];
                i = best;
        }
        heap->slots[i] = s;
}

void loop__timer_heap_init(struct timer_heap *heap, loop_handle_t *const *const *chunks, timer_heap_drop_t drop,
                           void *drop_ctx) {
        *heap = (struct timer_heap) {
                .seq_limit = UINT32_MAX,
                .chunks = chunks,
                .drop = drop,
                .drop_ctx = drop_ctx,
        };
}

static int grow_slots(struct timer_heap *heap) {
        uint32_t cap = heap->cap ? heap->cap * 2 : 64;

        if (cap <= heap->cap || cap >= UINT32_MAX / 2)
                return -ENOMEM;
        /*
         * realloc(), with room to align the slots within the block: a large
         * block is moved by remapping its pages (glibc's mremap), so a
         * growing heap is neither copied nor faulted in twice, which is
         * most of what a cold burst of timers costs. realloc() does not
         * keep the alignment, so the slots move within the block only
         * when the block's offset to a cache line changed (a small block).
         */
        size_t old_off = heap->mem ? (size_t) ((char *) heap->slots - (char *) heap->mem) : 0;
        char *mem = realloc(heap->mem, ((size_t) cap + HEAP0 + 1) * sizeof(struct timer_slot) + CACHELINE);
        if (!mem)
                return -ENOMEM;
        size_t off = (size_t) (-(uintptr_t) mem & (CACHELINE - 1));
        if (heap->mem && off != old_off)
                memmove(mem + off + HEAP0 * sizeof(struct timer_slot), mem + old_off + HEAP0 * sizeof(struct timer_slot),
                        (size_t) heap->n * sizeof(struct timer_slot));
        heap->mem = mem;
        heap->slots = (struct timer_slot *) (void *) (mem + off);
        heap->cap = cap;
        return 0;
}

/* The cancelled bitmap covers every id up to the pool's size. */
static int grow_bits(struct timer_heap *heap, uint32_t id) {
        uint64_t cap = heap->bits_cap ? heap->bits_cap : 1024;

        while (cap <= id)
                cap *= 2;
        if (cap > UINT32_MAX)
                cap = (UINT64_C(1) << 32) - 64;
        if (cap <= id)
                return -ENOMEM;
        uint64_t *bits = realloc(heap->cancelled, (size_t) cap / 64 * sizeof(*bits));
        if (!bits)
                return -ENOMEM;
        memset(bits + heap->bits_cap / 64, 0, (size_t) (cap - heap->bits_cap) / 64 * sizeof(*bits));
        heap->cancelled = bits;
        heap->bits_cap = (uint32_t) cap;
        return 0;
}

int loop__timer_heap_cover(struct timer_heap *heap, uint32_t n) {
        return n <= heap->bits_cap ? 0 : grow_bits(heap, n - 1);
}

static inline void clear_cancelled(struct timer_heap *heap, uint32_t id) {
        heap->cancelled[id / 64] &= ~(UINT64_C(1) << (id % 64));
}

static int cmp_seq(const void *a, const void *b) {
        const struct timer_slot *x = *(struct timer_slot *const *) a, *y = *(struct timer_slot *const *) b;

        return x->order < y->order ? -1 : x->order > y->order;
}

/*
 * The sequence numbers ran out: number the timers in the heap 0..n-1 in
 * their current order. Order is all that matters, so the heap stays a heap.
 * Once per four billion timers.
 */
static int renumber(struct timer_heap *heap) {
        struct timer_slot **order = malloc(((size_t) heap->n + 1) * sizeof(*order));

        if (!order)
                return -ENOMEM;
        for (uint32_t i = 0; i < heap->n; i++)
                order[i] = &heap->slots[HEAP0 + i];
        qsort(order, heap->n, sizeof(*order), cmp_seq);
        for (uint32_t i = 0; i < heap->n; i++)
                order[i]->order = timer_slot_order(i, timer_slot_id(order[i]));
        heap->next_seq = heap->n;
        free(order);
        return 0;
}

int loop__timer_heap_push(struct timer_heap *heap, loop_handle_t *h, int64_t when) {
        int r;

        /* Full: make room by purging rather than by growing when more
         * than half are cancelled (a callback that schedules and cancels
         * without letting the loop iterate). */
        if (unlikely(heap->n == heap->cap) && timer_heap_wants_purge(heap))
                loop__timer_heap_purge(heap);
        if (unlikely(heap->n == heap->cap) && (r = grow_slots(heap)) < 0)
                return r;
        if (unlikely(h->pool_index >= heap->bits_cap) && (r = grow_bits(heap, h->pool_index)) < 0)
                return r;
        if (unlikely(heap->next_seq >= heap->seq_limit) && (r = renumber(heap)) < 0)
                return r;
        uint32_t seq_room = heap->next_seq < heap->seq_limit ? heap->seq_limit - heap->next_seq : 0;
        uint32_t room = heap->cap - heap->n < seq_room ? heap->cap - heap->n : seq_room;
        /* With a tiny seq_limit (tests) the renumbered heap may still be
         * over it: insert anyway, the numbers stay in order (and the next
         * insert comes here again). The sum is at most seq_limit, or n + 1
         * after a renumbering: it does not wrap. */
        if (room == 0)
                room = 1;
        heap->seq_stop = heap->next_seq + room;
        h->in_heap = 1;
        timer_heap_insert(heap, h, when);
        return 0;
}

loop_handle_t *loop__timer_heap_pop(struct timer_heap *heap) {
        if (heap->n == 0)
                return NULL;
        uint32_t id = timer_slot_id(&heap->slots[HEAP0]);
        loop_handle_t *h = timer_heap_handle(heap, id);
        struct timer_slot last = heap->slots[HEAP0 + --heap->n];
        if (heap->n > 0)
                sift_down(heap, HEAP0, last);
        if (unlikely(timer_heap_is_cancelled(heap, id))) {
                clear_cancelled(heap, id);
                heap->n_cancelled--;
        }
        h->in_heap = 0;
        /* Expiring timers pop one after another: fetch the next one's handle. */
        if (heap->n > 0)
                __builtin_prefetch(timer_heap_handle(heap, timer_slot_id(&heap->slots[HEAP0])));
        return h;
}

/*
 * Drop every cancelled timer and rebuild the heap from what is left
 * (Floyd). The dropping goes by id, not by heap position: an id is the
 * handle's place in the pool, so the pass walks the handles in memory
 * order instead of missing on every one.
 */
void loop__timer_heap_purge(struct timer_heap *heap) {
        uint32_t kept = 0;

        /* All cancelled (a batch cancelled in one go): nothing to keep. */
        if (heap->n_cancelled < heap->n)
                for (uint32_t i = 0; i < heap->n; i++) {
                        struct timer_slot s = heap->slots[HEAP0 + i];
                        if (!timer_heap_is_cancelled(heap, timer_slot_id(&s)))
                                heap->slots[HEAP0 + kept++] = s;
                }
        heap->n = kept;
        heap->n_cancelled = 0;
        if (kept > 1)
                for (uint32_t i = (uint32_t) parent_of(HEAP0 + kept - 1) + 1; i-- > HEAP0;)
                        sift_down(heap, i, heap->slots[i]);

        /* A word at a time, cleared before its drop: drop() may not touch
         * the bitmap (nothing it calls schedules or cancels a timer). */
        for (uint32_t w = 0; w < heap->bits_cap / 64; w++) {
                uint64_t word = heap->cancelled[w];
                if (!word)
                        continue;
                heap->cancelled[w] = 0;
                heap->drop(heap->drop_ctx, timer_heap_handle(heap, w * 64), word);
        }
}

void loop__timer_heap_free(struct timer_heap *heap) {
        free(heap->mem);
        free(heap->cancelled);
        loop__timer_heap_init(heap, heap->chunks, heap->drop, heap->drop_ctx);
}
