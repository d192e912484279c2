/* SPDX-License-Identifier: MIT */
#pragma once

/*
 * The ready queue: a power-of-two ring of (callback, userdata, handle)
 * slots. call_soon with no handle is a store of three words and an index
 * bump; no allocation once the ring has grown to the working size.
 */

#include <stdlib.h>
#include <string.h>

struct ready_queue {
        struct ready_entry *slots;
        size_t mask;            /* capacity - 1; capacity is 0 or a power of two */
        size_t head;            /* next slot to pop */
        size_t count;
};

int loop__ready_grow(struct ready_queue *q);

static inline int ready_push(struct ready_queue *q, loop_callback_t cb, void *userdata, loop_handle_t *h) {
        if (unlikely(!q->slots || q->count > q->mask)) {
                int r = loop__ready_grow(q);
                if (r < 0)
                        return r;
        }
        struct ready_entry *e = &q->slots[(q->head + q->count) & q->mask];
        e->cb = cb;
        e->userdata = userdata;
        e->handle = h;
        q->count++;
        return 0;
}

static inline struct ready_entry ready_pop(struct ready_queue *q) {
        struct ready_entry e = q->slots[q->head];
        q->head = (q->head + 1) & q->mask;
        q->count--;
        return e;
}
