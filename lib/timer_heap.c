/* SPDX-License-Identifier: MIT */
#include <assert.h>
#include <stdlib.h>

#include "internal.h"
#include "timer_heap.h"

/* Four children per node: shallower than a binary heap, and the children
 * of one node share a cache line or two. */
#define ARITY 4

static inline uint32_t parent_of(uint32_t i) {
        return (i - 1) / ARITY;
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
        while (i > 0) {
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
                uint32_t first = i * ARITY + 1;
                if (first >= heap->n)
                        break;
                uint32_t last = first + ARITY < heap->n ? first + ARITY : heap->n;
                uint32_t best = first;
                for (uint32_t c = first + 1; c < last; c++)
                        if (slot_before(&heap->slots[c], &heap->slots[best]))
                                best = c;
                if (!slot_before(&heap->slots[best], &s))
                        break;
                place(heap, i, heap->slots[best]);
                i = best;
        }
        place(heap, i, s);
}

int loop__timer_heap_push(struct timer_heap *heap, loop_handle_t *h) {
        if (heap->n == heap->cap) {
                uint32_t cap = heap->cap ? heap->cap * 2 : 64;
                if (cap <= heap->cap || cap >= TIMER_HEAP_NONE)
                        return -ENOMEM;
                struct timer_slot *slots = realloc(heap->slots, (size_t) cap * sizeof(*slots));
                if (!slots)
                        return -ENOMEM;
                heap->slots = slots;
                heap->cap = cap;
        }
        sift_up(heap, heap->n++, (struct timer_slot) { .when = h->when, .handle = h });
        return 0;
}

void loop__timer_heap_remove(struct timer_heap *heap, loop_handle_t *h) {
        uint32_t i = h->heap_index;

        assert(i < heap->n && heap->slots[i].handle == h);
        h->heap_index = TIMER_HEAP_NONE;
        struct timer_slot last = heap->slots[--heap->n];
        if (i == heap->n)
                return;
        /* The former last slot may belong above or below the hole. */
        if (i > 0 && slot_before(&last, &heap->slots[parent_of(i)]))
                sift_up(heap, i, last);
        else
                sift_down(heap, i, last);
}

loop_handle_t *loop__timer_heap_pop(struct timer_heap *heap) {
        if (heap->n == 0)
                return NULL;
        loop_handle_t *h = heap->slots[0].handle;
        loop__timer_heap_remove(heap, h);
        return h;
}

void loop__timer_heap_free(struct timer_heap *heap) {
        free(heap->slots);
        *heap = (struct timer_heap) {};
}
