/* SPDX-License-Identifier: MIT */
#pragma once

/*
 * A 4-ary min-heap of timers. Each slot holds the deadline by value next to
 * the handle pointer, so sifting compares without touching the handles
 * (libev's layout); the handle records its slot so cancel is O(log n).
 * Equal deadlines are ordered by the handle's sequence number: timers due
 * at the same time run in the order they were scheduled.
 */

#include <stddef.h>
#include <stdint.h>

#include "loop.h"

#define TIMER_HEAP_NONE UINT32_MAX

struct timer_slot {
        int64_t when;
        loop_handle_t *handle;
};

struct timer_heap {
        struct timer_slot *slots;
        uint32_t n, cap;
};

int loop__timer_heap_push(struct timer_heap *heap, loop_handle_t *h);
void loop__timer_heap_remove(struct timer_heap *heap, loop_handle_t *h);
loop_handle_t *loop__timer_heap_pop(struct timer_heap *heap);
void loop__timer_heap_free(struct timer_heap *heap);

static inline const struct timer_slot *timer_heap_top(const struct timer_heap *heap) {
        return heap->n ? &heap->slots[3] : NULL;      /* HEAP0, see timer_heap.c */
}
