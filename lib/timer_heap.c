/* SPDX-License-Identifier: MIT */
#include <assert.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "timer_heap.h"

/*
 * Four children per node: half the depth of a binary heap. The root sits at
 * index HEAP0 = 3 and the array is 64-byte aligned, so the four 16-byte
 * children of any node fill exactly one cache line (libev's trick): one
 * miss per level while sifting down instead of two.
 */
#define ARITY 4
#define HEAP0 3u
#define CACHELINE 64

static inline uint32_t parent_of(uint32_t i) {
        return i / ARITY + (HEAP0 - 1);
}

static inline uint32_t first_child(uint32_t i) {
        return ARITY * (i - HEAP0) + HEAP0 + 1;
}

static inline int slot_before(const struct timer_slot *a, const struct timer_slot *b) {
        if (a->when != b->when)
                return a->when < b->when;
        return a->handle->seq < b->handle->seq;
}

static inline void place(struct timer_heap *heap, uint32_t i, struct timer_slot s) {
        heap->slots[i] = s;
        s.handle->heap_index = i;
}

static void sift_up(struct timer_heap *heap, uint32_t i, struct timer_slot s) {
        while (i > HEAP0) {
                uint32_t p = parent_of(i);
                if (!slot_before(&s, &heap->slots[p]))
                        break;
                place(heap, i, heap->slots[p]);
                i = p;
        }
        place(heap, i, s);
}

static void sift_down(struct timer_heap *heap, uint32_t i, struct timer_slot s) {
        for (;;) {
                uint32_t first = first_child(i), end = HEAP0 + heap->n;
                if (first >= end)
                        break;
                uint32_t best;
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
                place(heap, i, heap->slots[best]);
                i = best;
        }
        place(heap, i, s);
}

static int grow(struct timer_heap *heap) {
        uint32_t cap = heap->cap ? heap->cap * 2 : 64;

        if (cap <= heap->cap || cap >= TIMER_HEAP_NONE / 2)
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

int loop__timer_heap_push(struct timer_heap *heap, loop_handle_t *h) {
        if (heap->n == heap->cap) {
                int r = grow(heap);
                if (r < 0)
                        return r;
        }
        sift_up(heap, HEAP0 + heap->n++, (struct timer_slot) { .when = h->when, .handle = h });
        return 0;
}

void loop__timer_heap_remove(struct timer_heap *heap, loop_handle_t *h) {
        uint32_t i = h->heap_index;

        assert(i >= HEAP0 && i < HEAP0 + heap->n && heap->slots[i].handle == h);
        h->heap_index = TIMER_HEAP_NONE;
        uint32_t last_i = HEAP0 + --heap->n;
        struct timer_slot last = heap->slots[last_i];
        if (i == last_i)
                return;
        /* The former last slot may belong above or below the hole. */
        if (i > HEAP0 && slot_before(&last, &heap->slots[parent_of(i)]))
                sift_up(heap, i, last);
        else
                sift_down(heap, i, last);
}

loop_handle_t *loop__timer_heap_pop(struct timer_heap *heap) {
        if (heap->n == 0)
                return NULL;
        loop_handle_t *h = heap->slots[HEAP0].handle;
        loop__timer_heap_remove(heap, h);
        return h;
}

void loop__timer_heap_free(struct timer_heap *heap) {
        free(heap->slots);
        *heap = (struct timer_heap) {};
}
