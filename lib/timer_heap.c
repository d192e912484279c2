/* SPDX-License-Identifier: MIT */
#include <assert.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "timer_heap.h"

#define ARITY TIMER_HEAP_ARITY
#define HEAP0 TIMER_HEAP0
#define CACHELINE 64
/* Purge cancelled timers once they are more than half the heap and at
 * least this many (asyncio: 100 and half). */
#define PURGE_MIN 64u

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

void loop__timer_heap_init(struct timer_heap *heap) {
        *heap = (struct timer_heap) {
                .seq_limit = UINT32_MAX,
        };
}

static int grow_slots(struct timer_heap *heap) {
        uint32_t cap = heap->cap ? heap->cap * 2 : 64;

        if (cap <= heap->cap || cap >= TIMER_ID_NONE / 2)
                return -ENOMEM;
        /* realloc() does not keep the alignment: copy by hand. */
        struct timer_slot *slots = aligned_alloc(CACHELINE, ((size_t) cap + HEAP0 + 1) * sizeof(*slots));
        if (!slots)
                return -ENOMEM;
        if (heap->slots)
                memcpy(slots + HEAP0, heap->slots + HEAP0, (size_t) heap->n * sizeof(*slots));
        free(heap->slots);
        heap->slots = slots;
        heap->cap = cap;
        return 0;
}

static int grow_bits(uint64_t **bits, uint32_t old_cap, uint32_t cap) {
        uint64_t *p = realloc(*bits, (size_t) cap / 64 * sizeof(*p));

        if (!p)
                return -ENOMEM;
        memset(p + old_cap / 64, 0, (size_t) (cap - old_cap) / 64 * sizeof(*p));
        *bits = p;
        return 0;
}

static int grow_ids(struct timer_heap *heap) {
        uint32_t cap = heap->ids_cap ? heap->ids_cap * 2 : 64;

        if (cap <= heap->ids_cap || cap >= TIMER_ID_NONE / 2)
                return -ENOMEM;
        loop_handle_t **by_id = realloc(heap->by_id, (size_t) cap * sizeof(*by_id));
        if (!by_id)
                return -ENOMEM;
        heap->by_id = by_id;
        /* A failure leaves the arrays larger than ids_cap says: harmless. */
        if (grow_bits(&heap->used, heap->ids_cap, cap) < 0 || grow_bits(&heap->cancelled, heap->ids_cap, cap) < 0)
                return -ENOMEM;
        heap->ids_cap = cap;
        return 0;
}

/* The lowest free id. */
static int alloc_id(struct timer_heap *heap, uint32_t *ret) {
        uint32_t w = heap->first_free_word, words = heap->ids_cap / 64;

        while (w < words && heap->used[w] == UINT64_MAX)
                w++;
        heap->first_free_word = w;
        if (w == words) {
                int r = grow_ids(heap);
                if (r < 0)
                        return r;
        }
        uint32_t bit = (uint32_t) __builtin_ctzll(~heap->used[w]);
        heap->used[w] |= UINT64_C(1) << bit;
        *ret = w * 64 + bit;
        return 0;
}

static inline void free_id(struct timer_heap *heap, uint32_t id) {
        heap->used[id / 64] &= ~(UINT64_C(1) << (id % 64));
        if (id / 64 < heap->first_free_word)
                heap->first_free_word = id / 64;
}

static inline void clear_cancelled(struct timer_heap *heap, uint32_t id) {
        heap->cancelled[id / 64] &= ~(UINT64_C(1) << (id % 64));
}

static int cmp_seq(const void *a, const void *b) {
        const struct timer_slot *x = *(struct timer_slot *const *) a, *y = *(struct timer_slot *const *) b;

        return x->seq < y->seq ? -1 : x->seq > y->seq;
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
                order[i]->seq = i;
        heap->next_seq = heap->n;
        free(order);
        return 0;
}

int loop__timer_heap_push(struct timer_heap *heap, loop_handle_t *h, int64_t when) {
        int r;

        if (unlikely(heap->n == heap->cap) && (r = grow_slots(heap)) < 0)
                return r;
        if (unlikely(heap->next_seq >= heap->seq_limit) && (r = renumber(heap)) < 0)
                return r;
        uint32_t id;
        if ((r = alloc_id(heap, &id)) < 0)
                return r;
        heap->by_id[id] = h;
        h->timer_id = id;
        sift_up(heap, HEAP0 + heap->n++, (struct timer_slot) { .when = when, .seq = heap->next_seq++, .id = id });
        return 0;
}

loop_handle_t *loop__timer_heap_pop(struct timer_heap *heap) {
        if (heap->n == 0)
                return NULL;
        uint32_t id = heap->slots[HEAP0].id;
        loop_handle_t *h = timer_heap_handle(heap, id);
        struct timer_slot last = heap->slots[HEAP0 + --heap->n];
        if (heap->n > 0)
                sift_down(heap, HEAP0, last);
        if (unlikely(timer_heap_is_cancelled(heap, id))) {
                clear_cancelled(heap, id);
                heap->n_cancelled--;
        }
        free_id(heap, id);
        h->timer_id = TIMER_ID_NONE;
        /* Expiring timers pop one after another: fetch the next one's handle pointer. */
        if (heap->n > 0)
                __builtin_prefetch(&heap->by_id[heap->slots[HEAP0].id]);
        return h;
}

/*
 * Drop every cancelled timer and rebuild the heap from what is left
 * (Floyd). The dropping goes by id, not by heap position: ids follow the
 * order timers were scheduled in, which is usually the order their handles
 * sit in memory, so the pass streams instead of missing on every handle.
 */
static void purge(struct timer_heap *heap, timer_heap_drop_t drop, void *ctx) {
        uint32_t kept = 0;

        for (uint32_t i = 0; i < heap->n; i++) {
                struct timer_slot s = heap->slots[HEAP0 + i];
                if (!timer_heap_is_cancelled(heap, s.id))
                        heap->slots[HEAP0 + kept++] = s;
        }
        heap->n = kept;
        heap->n_cancelled = 0;
        if (kept > 1)
                for (uint32_t i = parent_of(HEAP0 + kept - 1) + 1; i-- > HEAP0;)
                        sift_down(heap, i, heap->slots[i]);

        for (uint32_t w = 0; w < heap->ids_cap / 64; w++)
                while (heap->cancelled[w]) {
                        uint32_t id = w * 64 + (uint32_t) __builtin_ctzll(heap->cancelled[w]);
                        loop_handle_t *h = heap->by_id[id];
                        clear_cancelled(heap, id);
                        free_id(heap, id);
                        h->timer_id = TIMER_ID_NONE;
                        drop(ctx, h);
                }
}

void loop__timer_heap_cancel(struct timer_heap *heap, loop_handle_t *h, timer_heap_drop_t drop, void *ctx) {
        uint32_t id = h->timer_id;

        assert(id < heap->ids_cap && heap->by_id[id] == h);
        if (timer_heap_is_cancelled(heap, id))
                return;
        heap->cancelled[id / 64] |= UINT64_C(1) << (id % 64);
        heap->n_cancelled++;
        if (heap->n_cancelled >= PURGE_MIN && heap->n_cancelled > heap->n / 2)
                purge(heap, drop, ctx);
}

void loop__timer_heap_free(struct timer_heap *heap) {
        free(heap->slots);
        free(heap->by_id);
        free(heap->used);
        free(heap->cancelled);
        loop__timer_heap_init(heap);
}
