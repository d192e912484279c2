/* SPDX-License-Identifier: MIT */
/*
 * Handles and scheduling: call_soon, call_later, call_at, the ready queue
 * and the timer heap, and running what is ready (asyncio's Handle,
 * TimerHandle and the second half of BaseEventLoop._run_once).
 */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "internal.h"

/* Built with AddressSanitizer: gcc says so with a macro, clang with a feature. */
#if defined(__SANITIZE_ADDRESS__)
#define LOOP_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define LOOP_ASAN 1
#endif
#endif
#ifdef LOOP_ASAN
#include <sanitizer/asan_interface.h>
#endif

/*
 * The handle pool: handles are carved out of chunks the loop allocates, so
 * scheduling costs no malloc, and a burst of timers gets handles that sit
 * next to each other in memory. The chunks live as long as the pool: the
 * memory of a burst stays with the loop for its next one (sd-event's
 * mempool does the same) and goes when the loop is freed.
 *
 * A handle's last reference may be dropped by a user after the loop let go
 * of it, in any thread, even after the loop is gone. Such a handle holds a
 * reference to the pool and goes back through an atomic stack that the
 * loop's thread takes over when its own free list runs dry.
 *
 * Misuse. A free slot has a count of 0, so an unref one too many finds 0
 * instead of wrapping (loop_handle_unref: a compare); debug mode reports
 * it. Under AddressSanitizer a free slot is poisoned, but for the words
 * the pool itself uses (pool_index, next_free), so that any use of a
 * handle after its last reference is an ASan report in the user's build:
 * the pool hides handles from ASan's malloc checks otherwise. Neither
 * catches a slot that was handed out again meanwhile.
 */
#define CHUNK_HANDLES TIMER_CHUNK_HANDLES       /* a pool index is also a timer id */

/* A chunk's bytes: its head and its handles, rounded up to a cache line
 * (aligned_alloc() wants a multiple of the alignment). */
#define CHUNK_BYTES (((1 + CHUNK_HANDLES) * sizeof(loop_handle_t) + 63) & ~(size_t) 63)

/*
 * A big pool's chunks come from slabs (loop__slab_alloc), SLAB_CHUNKS to
 * a slab, one after the other: where the kernel gives huge pages, a burst
 * of handles costs one page fault per slab rather than one per 4 KiB. Not
 * before the pool holds SLAB_AFTER chunks (about 2 MB), because a huge
 * page is resident whole: a slab's unused tail then costs at most as much
 * memory as the pool already holds, and a small loop none.
 */
#define SLAB_CHUNKS ((uint32_t) (LOOP__SLAB_BYTES / CHUNK_BYTES))
#define SLAB_AFTER 48u

_Static_assert(LOOP__SLAB_BYTES / CHUNK_BYTES >= 1, "a chunk fits in a slab");

/* References on the pool the loop takes at a time, for handles it will
 * let go of while users hold them (loop__handle_drop): one locked add per
 * this many instead of one each, which was a fifth of a timer cancel. */
#define POOL_CREDIT_BATCH 64u

struct loop__handle_pool {
        unsigned n_ref;                 /* atomic: the loop's, its credit, one per handle held past the loop */
        unsigned credit;                /* the loop's thread only: references taken, not yet handed out */
        loop_t *loop;                   /* atomic: the loop until it lets go of the pool (cancel, debug reports) */
        loop_handle_t *free;            /* the loop's thread only */
        loop_handle_t *remote;          /* atomic: released by users */
        uint32_t n_chunks, cap_chunks;
        loop_handle_t **chunks;         /* chunk c holds pool indices c * CHUNK_HANDLES on */
};

/*
 * A chunk's allocation starts with one handle-sized head, then its
 * CHUNK_HANDLES handles (chunks[c] points past the head). The head names
 * the pool, so that a handle, even a free one, leads to its pool through
 * its pool index: nothing per handle, and nothing on a fast path.
 */
struct chunk_head {
        struct loop__handle_pool *pool;
        /* The pool's loop, for a pending timer's cancel: one load fewer
         * than pool->loop. Never cleared; read only for a timer in the
         * loop's heap, which the loop empties before it goes. */
        loop_t *loop;
};

_Static_assert(sizeof(struct chunk_head) <= sizeof(loop_handle_t), "a chunk's head fits in a handle's room");

static struct chunk_head *chunk_head_of(const loop_handle_t *h) {
        return (struct chunk_head *) (uintptr_t) (h - h->pool_index % CHUNK_HANDLES - 1);
}

/* A slot goes back to the pool: under ASan, all of it but the pool's own
 * words is off limits until it is handed out again. ASan tracks 8-byte
 * granules, each addressable for a prefix only: the granule that holds
 * pool_index stays addressable as a whole. */
static inline void slot_poison(loop_handle_t *h) {
#ifdef LOOP_ASAN
        ASAN_POISON_MEMORY_REGION(h, offsetof(loop_handle_t, pool_index));
        ASAN_POISON_MEMORY_REGION(&h->cb, offsetof(loop_handle_t, next_free) - offsetof(loop_handle_t, cb));
#else
        (void) h;
#endif
}

static inline void slot_unpoison(loop_handle_t *h) {
#ifdef LOOP_ASAN
        ASAN_UNPOISON_MEMORY_REGION(h, sizeof(*h));
#else
        (void) h;
#endif
}

int loop__handle_pool_new(loop_t *loop) {
        loop->pool = calloc(1, sizeof(*loop->pool));
        if (!loop->pool)
                return -ENOMEM;
        loop->pool->n_ref = 1;
        loop->pool->loop = loop;
        return 0;
}

loop_handle_t *const *const *loop__handle_pool_chunks(loop_t *loop) {
        return (loop_handle_t *const *const *) &loop->pool->chunks;
}

/* Whether chunk c (from SLAB_AFTER on) is its slab's first. */
static bool chunk_starts_slab(uint32_t c) {
        return (c - SLAB_AFTER) % SLAB_CHUNKS == 0;
}

static void pool_unref_n(struct loop__handle_pool *pool, unsigned n) {
        if (__atomic_sub_fetch(&pool->n_ref, n, __ATOMIC_ACQ_REL) > 0)
                return;
        for (uint32_t c = 0; c < pool->n_chunks; c++) {
                void *head = pool->chunks[c] - 1;
                if (c < SLAB_AFTER)
                        loop__aligned_free(head);
                else if (chunk_starts_slab(c)) {
#ifdef LOOP_ASAN
                        /* Unmapped pages keep their shadow: the next mapping there is not ours. */
                        ASAN_UNPOISON_MEMORY_REGION(head, LOOP__SLAB_BYTES);
#endif
                        loop__slab_free(head);
                }
        }
        free(pool->chunks);
        free(pool);
}

void loop__handle_pool_release(loop_t *loop) {
        if (loop->pool) {
                /* Handles that outlive the loop no longer lead to it. */
                __atomic_store_n(&loop->pool->loop, NULL, __ATOMIC_RELEASE);
                pool_unref_n(loop->pool, 1 + loop->pool->credit);
        }
        loop->pool = NULL;
}

/* A reference on the pool for a handle that is to outlive the loop's hold on it. */
static inline void pool_take_ref(struct loop__handle_pool *pool) {
        if (unlikely(pool->credit == 0)) {
                __atomic_add_fetch(&pool->n_ref, POOL_CREDIT_BATCH, __ATOMIC_RELAXED);
                pool->credit = POOL_CREDIT_BATCH;
        }
        pool->credit--;
}

/*
 * The free list ran dry: take back what users released (one exchange), or
 * carve a whole new chunk onto the free list, so that the fast paths find
 * a handle there for the next thousand calls. The timer heap's cancelled
 * bitmap grows with the pool, so that scheduling a timer need not check
 * that it covers the handle's index.
 */
static __attribute__((noinline)) loop_handle_t *pool_refill(loop_t *loop) {
        struct loop__handle_pool *pool = loop->pool;
        loop_handle_t *h = __atomic_exchange_n(&pool->remote, NULL, __ATOMIC_ACQUIRE);

        if (h) {
                pool->free = h->next_free;
                return h;
        }
        if (pool->n_chunks == UINT32_MAX / CHUNK_HANDLES)
                return NULL;    /* four billion handles */
        uint32_t base = pool->n_chunks * CHUNK_HANDLES;
        if (loop__timer_heap_cover(&loop->timers, base + CHUNK_HANDLES) < 0)
                return NULL;
        if (pool->n_chunks == pool->cap_chunks) {
                uint32_t cap = pool->cap_chunks ? pool->cap_chunks * 2 : 16;
                loop_handle_t **chunks = realloc(pool->chunks, cap * sizeof(*chunks));
                if (!chunks)
                        return NULL;
                pool->chunks = chunks;
                pool->cap_chunks = cap;
        }
        uint32_t n = pool->n_chunks;
        loop_handle_t *c;
        if (n < SLAB_AFTER)
                c = loop__aligned_alloc(64, CHUNK_BYTES);
        else if (chunk_starts_slab(n))
                c = loop__slab_alloc();
        else
                c = (loop_handle_t *) (void *) ((char *) (pool->chunks[n - 1] - 1) + CHUNK_BYTES);
        if (!c)
                return NULL;
        *(struct chunk_head *) (uintptr_t) c = (struct chunk_head) { .pool = pool, .loop = loop };
        c++;
        pool->chunks[pool->n_chunks++] = c;
        /* In address order, so a burst of timers gets neighbouring handles. */
        for (uint32_t i = 0; i < CHUNK_HANDLES; i++) {
                c[i].n_ref = 0;
                c[i].pool_index = base + i;
                c[i].next_free = i + 1 < CHUNK_HANDLES ? &c[i + 1] : NULL;
                slot_poison(&c[i]);
        }
        pool->free = &c[1];
        return &c[0];
}

static inline loop_handle_t *handle_alloc(loop_t *loop, int kind) {
        struct loop__handle_pool *pool = loop->pool;
        loop_handle_t *h = pool->free;

        if (likely(h))
                pool->free = h->next_free;
        else if (!(h = pool_refill(loop)))
                return NULL;
        slot_unpoison(h);
        *h = (loop_handle_t) {
                .n_ref = 1,
                .kind = (uint8_t) kind,
                .pool_index = h->pool_index,
        };
        return h;
}

loop_handle_t *loop__handle_new(loop_t *loop, int kind) {
        return handle_alloc(loop, kind);
}

/* A user dropped the last reference of a pooled handle the loop let go of. */
static void pool_give_back(loop_handle_t *h) {
        struct loop__handle_pool *pool = chunk_head_of(h)->pool;

        /* Before the push: once pushed, the loop's thread may hand it out. */
        slot_poison(h);
        h->next_free = __atomic_load_n(&pool->remote, __ATOMIC_RELAXED);
        while (!__atomic_compare_exchange_n(&pool->remote, &h->next_free, h, true, __ATOMIC_RELEASE,
                                            __ATOMIC_RELAXED))
                ;
        pool_unref_n(pool, 1);
}

/* A handle nobody else holds goes on a free list before next: no
 * reference left, and poisoned. Returns the list's new head. */
static inline loop_handle_t *slot_recycle(loop_handle_t *h, loop_handle_t *next) {
        __atomic_store_n(&h->n_ref, 0, __ATOMIC_RELAXED);
        h->next_free = next;
        slot_poison(h);
        return h;
}

/*
 * The loop lets go of a handle it scheduled. If nobody else holds it, it
 * goes back to the pool; if the user still does, it stays theirs, and
 * holds a reference on the pool so that it can outlive the loop. (An I/O
 * handle's other reference is the ready queue's, never a user's.)
 */
void loop__handle_drop(loop_t *loop, loop_handle_t *h) {
        struct loop__handle_pool *pool = loop->pool;
        bool user_held;

        /* Atomic: a user may be dropping its reference in another thread. */
        if (likely(__atomic_load_n(&h->n_ref, __ATOMIC_ACQUIRE) == 1))
                /* The only reference: no other thread can be touching it. */
                goto recycle;
        if (h->kind == HANDLE_IO) {
                /* Its other reference is the ready queue's, in this thread:
                 * no atomic operation, and it stays the loop's. */
                h->n_ref--;
                return;
        }
        user_held = loop__handle_pooled(h) && h->exposed;
        if (user_held)
                /* Before the decrement publishes the handle to its holder:
                 * its last unref gives it back through the chunk's head. */
                pool_take_ref(pool);
        if (__atomic_sub_fetch(&h->n_ref, 1, __ATOMIC_ACQ_REL) > 0)
                return;
        /* The holder let go meanwhile: the handle is ours again, and the
         * reference goes back to the credit. */
        if (user_held)
                pool->credit++;
recycle:
        if (!loop__handle_pooled(h)) {
                free(h);        /* made by call_soon_threadsafe in another thread */
                return;
        }
        /* A free slot holds no reference (the fast path above left the
         * loop's): a user's unref one too many then finds 0. Relaxed: no
         * other thread holds the handle. */
        pool->free = slot_recycle(h, pool->free);
}

/* The loop is done with a handle whose callback will not run. */
static void drop_unrun(loop_t *loop, loop_handle_t *h) {
        if (h->kind == HANDLE_SOON && h->discard) {
                h->discard(h->userdata);
                h->discard = NULL;
        }
        loop__handle_drop(loop, h);
}

int loop__ready_grow(struct ready_queue *q) {
        size_t n = ready_count(q), old_cap = ready_cap(q);
        size_t cap = old_cap ? old_cap * 2 : 256;

        if (cap < old_cap || cap > SIZE_MAX / sizeof(*q->items))
                return -ENOMEM;
        struct loop__ready_entry *items = realloc(q->items, cap * sizeof(*items));
        if (!items)
                return -ENOMEM;
        ready_set(q, items, n, cap);
        return 0;
}

static __attribute__((noinline)) int call_soon_slow(loop_t *loop, loop_callback_t cb, void *userdata,
                                                    loop_handle_t **ret) {
        int r = loop__usable(loop);

        if (r == 0)
                r = loop__check_thread(loop, "loop_call_soon");
        if (r < 0)
                return r;
        return_if_fail(cb, -EINVAL);
        /* Posted from any thread before this call: queued first, as
         * asyncio's one ready queue has it (threadsafe.c). */
        loop__threadsafe_take(loop);

        if (!ret)
                return ready_push(&loop->ready, cb, userdata, NULL);

        loop_handle_t *h = loop__handle_new(loop, HANDLE_SOON);
        if (!h)
                return -ENOMEM;
        h->cb = cb;
        h->userdata = userdata;
        r = ready_push(&loop->ready, NULL, NULL, h);
        if (r < 0) {
                loop__handle_drop(loop, h);
                return r;
        }
        /* One reference for the queue, one for the caller. */
        h->n_ref = 2;
        h->exposed = 1;
        *ret = h;
        return 0;
}

/*
 * Callers built with loop.h mostly store their entry inline and come here
 * only when that cannot be done; callers built with LOOP_NO_INLINE, or
 * through a function pointer, come every time. The parentheses keep the
 * header's macro off this definition.
 *
 * The fast path is a leaf: no handle wanted, a loop open in this process
 * (one compare covers closed and inherited), room in the array. Everything
 * else (errors, handles, growing) is out of line, so this needs no stack
 * frame and no saved registers.
 */
LOOP_EXPORT int (loop_call_soon)(loop_t *loop, loop_callback_t cb, void *userdata, loop_handle_t **ret) {
        /* One branch per test, with a load between tests of registers:
         * gcc turns adjacent register tests into setcc and one combined
         * test, an instruction more each. */
        if (unlikely(!loop) || unlikely(!loop__open_here(loop)) || unlikely(!cb))
                return call_soon_slow(loop, cb, userdata, ret);
        struct ready_queue *q = &loop->ready;
        if (unlikely(q->window.tail == q->window.end) || unlikely(ret))
                return call_soon_slow(loop, cb, userdata, ret);
        *q->window.tail++ = (struct loop__ready_entry) { .cb = cb, .userdata = userdata };
        return 0;
}

int loop__call_soon_discard(loop_t *loop, loop_callback_t cb, void *userdata, void (*discard)(void *userdata)) {
        /* Nothing queued on a closed loop is ever run or dropped again. */
        if (loop->closed)
                return -ESHUTDOWN;
        loop_handle_t *h = loop__handle_new(loop, HANDLE_SOON);

        if (!h)
                return -ENOMEM;
        h->cb = cb;
        h->userdata = userdata;
        h->discard = discard;
        int r = ready_push(&loop->ready, NULL, NULL, h);
        if (r < 0)
                loop__handle_drop(loop, h);
        return r;
}

static __attribute__((noinline)) int call_at_slow(loop_t *loop, int64_t when_ns, loop_callback_t cb,
                                                  void *userdata, loop_handle_t **ret) {
        int r = loop__usable(loop);

        if (r == 0)
                r = loop__check_thread(loop, "loop_call_at/loop_call_later");
        if (r < 0)
                return r;
        return_if_fail(cb, -EINVAL);

        loop_handle_t *h = handle_alloc(loop, HANDLE_TIMER);
        if (!h)
                return -ENOMEM;
        h->cb = cb;
        h->userdata = userdata;
        h->when = when_ns;
        r = loop__timer_heap_push(&loop->timers, h, when_ns);
        if (r < 0) {
                loop__handle_drop(loop, h);
                return r;
        }
        if (ret) {
                h->n_ref = 2;
                h->exposed = 1;
                *ret = h;
        }
        return 0;
}

/* A new timer's first word, without and with a reference for the caller
 * (in_heap: timer_heap_insert below). */
#define TIMER_HEAD loop__head_word((struct loop_handle_head) { .n_ref = 1, .kind = HANDLE_TIMER, .in_heap = 1 })
#define TIMER_HEAD_HELD \
        loop__head_word((struct loop_handle_head) { .n_ref = 2, .kind = HANDLE_TIMER, .exposed = 1, .in_heap = 1 })

/*
 * The fast path calls nothing (anything unusual is a tail call to
 * call_at_slow), so it needs no stack frame: a handle from the free list,
 * room in the heap, the sift-up inline.
 */
LOOP_EXPORT int loop_call_at_ns(loop_t *loop, int64_t when_ns, loop_callback_t cb, void *userdata,
                                loop_handle_t **ret) {
        if (unlikely(!loop || !cb || !loop__open_here(loop)))
                return call_at_slow(loop, when_ns, cb, userdata, ret);
        struct timer_heap *heap = &loop->timers;
        loop_handle_t *h = loop->pool->free;
        if (unlikely(!h || !timer_heap_has_room(heap)))
                return call_at_slow(loop, when_ns, cb, userdata, ret);

        loop->pool->free = h->next_free;
        slot_unpoison(h);
        /* Field by field, not a compound literal: that zeroes the whole
         * handle and then writes most of it again. Every field a timer
         * reads is set; the counts and flags in one store. */
        h->cb = cb;
        h->userdata = userdata;
        h->when = when_ns;
        timer_heap_insert(heap, h, when_ns);
        /* The first word in the branch that hands out the handle or not:
         * a constant each, no table to index. */
        if (ret) {
                h->head_word = TIMER_HEAD_HELD;
                *ret = h;
        } else {
                h->head_word = TIMER_HEAD;
        }
        return 0;
}

LOOP_EXPORT int loop_call_later_ns(loop_t *loop, int64_t delay_ns, loop_callback_t cb, void *userdata,
                                   loop_handle_t **ret) {
        int64_t now = loop__now(), when;

        if (__builtin_add_overflow(now, delay_ns, &when))
                return delay_ns > 0 ? -ERANGE : -EINVAL;
        return loop_call_at_ns(loop, when, cb, userdata, ret);
}

LOOP_EXPORT int loop_call_later(loop_t *loop, double delay, loop_callback_t cb, void *userdata,
                                loop_handle_t **ret) {
        int64_t ns;
        int r = loop__seconds_to_ns(delay, &ns);

        if (r < 0)
                return r;
        return loop_call_later_ns(loop, ns, cb, userdata, ret);
}

LOOP_EXPORT int loop_call_at(loop_t *loop, double when, loop_callback_t cb, void *userdata,
                             loop_handle_t **ret) {
        int64_t ns;
        int r = loop__seconds_to_ns(when, &ns);

        if (r < 0)
                return r;
        return loop_call_at_ns(loop, ns, cb, userdata, ret);
}

/* ---- the handle object ---------------------------------------------------- */

LOOP_EXPORT loop_handle_t *loop_handle_ref(loop_handle_t *h) {
        if (h)
                __atomic_add_fetch(&h->n_ref, 1, __ATOMIC_RELAXED);
        return h;
}

/*
 * An unref one too many: the handle had no reference left (its slot is
 * free, see loop__handle_drop). The count goes back to 0 rather than wrap
 * (the slot would never be freed, and the next unref of a handle given
 * the slot would not free it either), and debug mode reports it to the
 * exception handler of the handle's loop, in the calling thread.
 */
static __attribute__((noinline, cold)) void unref_underflow(loop_handle_t *h) {
        __atomic_add_fetch(&h->n_ref, 1, __ATOMIC_RELAXED);
        if (!loop__handle_pooled(h))
                return;         /* call_soon_threadsafe's own, already freed: nothing to trust */
        loop_t *loop = __atomic_load_n(&chunk_head_of(h)->pool->loop, __ATOMIC_ACQUIRE);
        if (loop && loop->debug)
                loop__report(loop, "loop_handle_unref() on a handle with no reference left", -EINVAL, h, -1);
}

LOOP_EXPORT loop_handle_t *loop_handle_unref(loop_handle_t *h) {
        if (!h)
                return NULL;
        unsigned old = __atomic_fetch_sub(&h->n_ref, 1, __ATOMIC_ACQ_REL);
        if (likely(old > 1))
                return NULL;
        if (unlikely(old == 0)) {
                unref_underflow(h);
                return NULL;
        }
        /* A handle the user releases last is no longer scheduled: no loop
         * refers to it. */
        if (loop__handle_pooled(h))
                pool_give_back(h);
        else
                free(h);
        return NULL;
}

LOOP_EXPORT int loop_handle_cancel(loop_handle_t *h) {
        return_if_fail(h, -EINVAL);

        /* A timer is cancelled in its loop's thread (the man page says so;
         * its heap is not locked either), the only one that reads the
         * flag: no locked instruction, which was an eighth of a cancel's
         * time. A pending timer is only marked: it leaves the heap when it
         * gets to the top or when cancelled ones are half the heap
         * (timer_heap.h). The common case, a timer in the heap and not
         * cancelled yet, is one compare of the flags word. (Atomic: a
         * call_soon handle's cancelled byte in it may be written by
         * another thread meanwhile.) */
        const uint32_t mask = loop__flags_word(0xff, 0xff, 0, 0xff);
        uint32_t flags = __atomic_load_n(&h->flags, __ATOMIC_RELAXED);
        if (likely((flags & mask) == loop__flags_word(HANDLE_TIMER, 0, 0, 1))) {
                __atomic_store_n(&h->cancelled, 1, __ATOMIC_RELAXED);
                /* In the heap, so the loop is there: timers are pooled. */
                loop__timer_heap_cancel(&chunk_head_of(h)->loop->timers, h);
                return 0;
        }
        if (h->kind == HANDLE_TIMER) {
                /* Run, dropped, or cancelled already. */
                __atomic_store_n(&h->cancelled, 1, __ATOMIC_RELAXED);
                return 0;
        }
        /* call_soon handles may be cancelled from any thread; a queued
         * one is skipped when its turn comes. */
        __atomic_exchange_n(&h->cancelled, 1, __ATOMIC_ACQ_REL);
        return 0;
}

LOOP_EXPORT int loop_handle_cancelled(const loop_handle_t *h) {
        return_if_fail(h, -EINVAL);
        return __atomic_load_n(&h->cancelled, __ATOMIC_ACQUIRE);
}

LOOP_EXPORT int64_t loop_handle_when_ns(const loop_handle_t *h) {
        return_if_fail(h, -EINVAL);
        return_if_fail(h->kind == HANDLE_TIMER, -ENODATA);
        return h->when;
}

LOOP_EXPORT double loop_handle_when(const loop_handle_t *h) {
        if (!h || h->kind != HANDLE_TIMER)
                return NAN;
        return (double) h->when / 1e9;
}

/* ---- running what is ready ------------------------------------------------ */


/* The first timer that is not cancelled; cancelled ones before it leave the heap. */
const struct timer_slot *loop__first_timer(loop_t *loop) {
        const struct timer_slot *top;

        while ((top = timer_heap_top(&loop->timers)) && timer_heap_is_cancelled(&loop->timers, timer_slot_id(top)))
                drop_unrun(loop, loop__timer_heap_pop(&loop->timers));
        return top;
}

/* Move every timer due at or before now onto the ready queue, in deadline order. */
void loop__expire_timers(loop_t *loop, int64_t now) {
        const struct timer_slot *top;

        while ((top = timer_heap_top(&loop->timers)) && top->when <= now) {
                bool cancelled = timer_heap_is_cancelled(&loop->timers, timer_slot_id(top));
                loop_handle_t *h = loop__timer_heap_pop(&loop->timers);
                if (cancelled) {
                        drop_unrun(loop, h);
                        continue;
                }
                if (ready_push(&loop->ready, NULL, NULL, h) < 0) {
                        /* Out of memory: put it back and let the next iteration retry. */
                        if (loop__timer_heap_push(&loop->timers, h, h->when) < 0) {
                                loop__report(loop, "Cannot queue an expired timer", -ENOMEM, h, -1);
                                loop__handle_drop(loop, h);
                        }
                        return;
                }
        }
}

static int invoke(loop_t *loop, const struct loop__ready_entry *e, loop_handle_t *h) {
        if (!h)
                return e->cb(loop, e->userdata);
        if (h->kind == HANDLE_IO)
                return h->io_cb(loop, h->fd, h->userdata);
        return h->cb(loop, h->userdata);
}

void loop__entry_info(const loop_t *loop, const struct loop__ready_entry *e, struct loop__entry_info *info) {
        const loop_handle_t *h = ready_entry_handle(e);

        if (h) {
                *info = (struct loop__entry_info) {
                        .fn = (void *) (uintptr_t) (h->kind == HANDLE_IO ? (uintptr_t) h->io_cb : (uintptr_t) h->cb),
                        .userdata = h->userdata,
                        .fd = h->kind == HANDLE_IO ? h->fd : -1,
                        .cancelled = __atomic_load_n(&h->cancelled, __ATOMIC_RELAXED),
                };
                return;
        }
        if (loop->impl->describe && loop->impl->describe(loop, e, info))
                return;
        *info = (struct loop__entry_info) {
                .fn = (void *) (uintptr_t) e->cb,
                .userdata = e->userdata,
                .fd = -1,
        };
}

/* A callback returned an error: the exception handler hears of it, with
 * the descriptor if it was a reader or writer. */
static __attribute__((noinline)) void report_entry(loop_t *loop, const struct loop__ready_entry *e, int r) {
        loop_handle_t *h = ready_entry_handle(e);
        struct loop__entry_info info;

        loop__entry_info(loop, e, &info);
        /* Only a handle the user was given means anything to them. */
        loop__report(loop, "Exception in callback", r, h && h->exposed ? h : NULL, info.fd);
        if (r == -EBADF && info.fd >= 0 && loop->impl->io_closed && loop__fd_valid(info.fd) == -EBADF)
                loop->impl->io_closed(loop, info.fd);
}

/* asyncio logs "Executing <Handle cb(args)> took 0.123 seconds"; the
 * closest C has is the function's address and its user data. */
static void slow_callback_warning(const struct loop__entry_info *info, int64_t took) {
        /* Not %p: its form is the C library's (exception.c). */
        fprintf(stderr, "libloop: Executing callback 0x%" PRIxPTR " (userdata 0x%" PRIxPTR ") took %.3f seconds\n",
                (uintptr_t) info->fn, (uintptr_t) info->userdata, (double) took / 1e9);
}

/* Returns whether a callback ran (a cancelled handle's does not). */
static bool run_entry(loop_t *loop, const struct loop__ready_entry *e) {
        loop_handle_t *h = ready_entry_handle(e);
        struct loop__entry_info info;
        int64_t start = 0;
        int r;

        if (h && __atomic_load_n(&h->cancelled, __ATOMIC_ACQUIRE)) {
                drop_unrun(loop, h);
                return false;
        }
        if (unlikely(loop->debug)) {
                /* Before the call: a reader that removes itself is still named. */
                loop__entry_info(loop, e, &info);
                start = loop__now();
        }

        r = invoke(loop, e, h);

        if (unlikely(loop->debug)) {
                int64_t took = loop__now() - start;
                if (took > loop->slow_callback_ns)
                        slow_callback_warning(&info, took);
        }
        if (unlikely(r < 0))
                report_entry(loop, e, r);
        if (h)
                loop__handle_drop(loop, h);
        return true;
}

int loop__run_handle_entry(loop_t *loop, void *h) {
        struct loop__ready_entry e = { .cb = loop__run_handle_entry, .userdata = h };

        if (!run_entry(loop, &e))
                loop->n_stale++;
        return 0;
}

/*
 * Run exactly the callbacks that are ready now; ones they add wait for the
 * next iteration. The batch is the whole array, swapped out first, so the
 * loop over it reads two words per entry and writes nothing.
 */
int loop__run_ready(loop_t *loop) {
        struct ready_queue *q = &loop->ready;
        struct loop__ready_entry *batch = q->items;
        size_t n = ready_count(q), batch_cap = ready_cap(q), ran = 0;

        if (n == 0)
                return 0;
        ready_set(q, q->spare, 0, q->spare_cap);
        q->spare = NULL;
        q->spare_cap = 0;

        if (unlikely(loop->debug)) {
                for (size_t i = 0; i < n; i++)
                        ran += run_entry(loop, &batch[i]);
        } else {
                /* A call and a sign test per entry: handles and descriptors
                 * go through their entry's function, and what did not run
                 * counts itself in n_stale. */
                const struct loop__ready_entry *end = batch + n;
                for (const struct loop__ready_entry *e = batch; e != end; e++) {
                        int r = e->cb(loop, e->userdata);
                        if (unlikely(r < 0))
                                report_entry(loop, e, r);
                }
                ran = n;
        }
        /* Entries whose callback was removed or whose handle was cancelled. */
        ran -= loop->n_stale;
        loop->n_stale = 0;

        /* Nothing else takes the spare while a batch runs: hand it back. */
        q->spare = batch;
        q->spare_cap = batch_cap;
        return ran > INT32_MAX ? INT32_MAX : (int) ran;
}

/*
 * A purge hands back cancelled timers, up to 64 at a time: no discard
 * function (drop_unrun's) to run. Most have no other holder (the caller
 * unrefs right after the cancel); those go straight onto the free list,
 * kept in a register, with what loop__handle_drop's fast path does.
 */
static void drop_cancelled_timers(void *ctx, loop_handle_t *first, uint64_t ids) {
        loop_t *loop = ctx;
        struct loop__handle_pool *pool = loop->pool;
        loop_handle_t *free_list = pool->free;

        do {
                loop_handle_t *h = first + __builtin_ctzll(ids);
                ids &= ids - 1;
                if (likely(__atomic_load_n(&h->n_ref, __ATOMIC_ACQUIRE) == 1)) {
                        /* Only the loop's reference: nobody else can touch it. */
                        free_list = slot_recycle(h, free_list);
                        continue;
                }
                h->in_heap = 0;
                pool->free = free_list;
                loop__handle_drop(loop, h);
                free_list = pool->free;
        } while (ids);
        pool->free = free_list;
}

void loop__timers_init(loop_t *loop) {
        loop__timer_heap_init(&loop->timers, loop__handle_pool_chunks(loop), drop_cancelled_timers, loop);
}

/* Close: drop everything scheduled without running it. */
void loop__discard_scheduled(loop_t *loop) {
        struct ready_queue *q = &loop->ready;
        loop_handle_t *h;

        for (struct loop__ready_entry *e = q->items; e != q->window.tail; e++)
                if ((h = ready_entry_handle(e)))
                        drop_unrun(loop, h);
        while ((h = loop__timer_heap_pop(&loop->timers)))
                drop_unrun(loop, h);
        free(q->items);
        free(q->spare);
        /* The window's generation stays: it is what keeps the loop shut. */
        ready_set(q, NULL, 0, 0);
        q->spare = NULL;
        q->spare_cap = 0;
        /* The heap is empty now; its memory goes with the loop (loop_free). */
}
