/* SPDX-License-Identifier: MIT */
/*
 * call_soon_threadsafe: the only way in from other threads.
 *
 * A post is one compare-and-swap: producers claim the next slot of a ring
 * by advancing a tail word that also holds the flags, write the callback
 * into the slot and publish it by storing the slot's position + 1 in its
 * sequence word (unique per lap, so the loop never has to reset it: the
 * loop only reads slots, and hands them back by advancing one head word
 * per batch). Every call gets its own slot, so calls never coalesce
 * (uv_async_send's do); only the wake-up does. The SLEEPING flag in the
 * tail word says the loop is about to wait, or waiting: the producer whose
 * claim clears it writes the wake-up descriptor after publishing, and
 * everybody else writes nothing. A loop that is awake (running callbacks,
 * or waiting with timeout 0) takes posts after each wait without being
 * written to, so a flood costs one write per time the loop went to sleep,
 * not one per post, however fast the loop drains. (It used to be one per
 * drain: the loop cleared a WAKE flag whenever it took, and the next post
 * wrote again; a loop faster than its producer went to sleep after each
 * drain and cost its producer a system call every few hundred posts, a
 * context switch each.) The write is non-blocking: a full pipe already
 * means "wake up".
 *
 * The tail's cache line is the producers'. The loop takes the slots
 * published in a row from head on (it reads those lines anyway) and reads
 * the tail only when it is about to sleep with nothing published, or on
 * call_soon's slow path; producers read head only once its copy in the
 * tail's line says the ring may be full. A loop that keeps up with a flood
 * would still take a few posts per iteration, each look taking the line a
 * producer is writing, and it would sleep whenever it ran dry, so that the
 * next post paid for a wake-up: after taking many posts it lingers a few
 * microseconds before it sleeps instead, and looks at the ring about once
 * a microsecond meanwhile (loop__threadsafe_linger). Measured with 10^6
 * posts from one thread: 13-15 ns a post, against 27-44 for the loop that
 * read the tail after every wait and slept when dry (and 33 for libuv's
 * uv_async_send with a mutex-protected queue).
 *
 * Deciding who wakes in the same atomic step as the claim is what keeps a
 * fence out of the post: the loop sets SLEEPING (one atomic step, which
 * also reads how far producers have claimed) and waits only if nothing
 * was claimed before that; a claim after it sees the flag. After the wait
 * it clears the flag and takes every slot claimed. A slot claimed but not
 * yet published belongs to a producer that will not write again, so the
 * loop waits for it briefly and, if it is still not there, wakes itself
 * for another try.
 *
 * When the ring is full a producer sets OVERFLOW and appends under a mutex
 * instead, and so does every producer after it until the loop has taken
 * the whole ring and then the overflow: a thread's posts keep their order.
 * CLOSED, set by loop_close() under the same mutex, turns posts away with
 * -ESHUTDOWN: a post either fails, or got in before the close (and is then
 * dropped with the loop, never run).
 *
 * Posts keep their place among call_soon's entries (asyncio appends both
 * to one queue): the soon window's generation pointer (loop.h) points at
 * the tail word, and open_generation is the tail as it was when the loop
 * last took everything. Any post changes the tail, so the next
 * loop_call_soon, inline or not, leaves its fast path, and the slow path
 * takes the posts into the ready queue before its own entry. A post that
 * happens before a call_soon (from the loop's own thread, or from a thread
 * that was joined or handed off through a mutex) is therefore seen by it
 * and runs first; the fast path costs nothing more (one compare it made
 * anyway, against another word).
 */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* The tail word: the claim position above the flags. LIVE is always set:
 * a tail word is never 0 (see the soon window below). */
#define TS_SLEEPING     UINT64_C(1)
#define TS_OVERFLOW     UINT64_C(2)
#define TS_CLOSED       UINT64_C(4)
#define TS_LIVE         UINT64_C(8)
#define TS_POS_SHIFT    4

/* 1024 slots of 24 bytes: a burst between two wake-ups rarely needs more. */
#define TS_RING_SLOTS   1024u

/* How long the loop waits for a claimed slot to be published before it
 * wakes itself up to look again (a producer between its two steps). */
#define TS_PUBLISH_SPINS 256

struct loop__ts_slot {
        uint64_t seq;           /* atomic: position + 1 once published for that position */
        loop_callback_t cb;     /* a struct loop__ready_entry's two words */
        void *userdata;
};

/*
 * Its own allocation, cache-line aligned: the tail word, which producers
 * hammer, shares a line with nothing the loop's thread uses per callback.
 * The loop never writes a slot: it publishes how far it has taken (head)
 * once per drain, and a slot's sequence number is unique per lap, so a
 * slot's line only travels producer -> loop.
 */
struct loop__ts_ring {
        _Alignas(64) uint64_t tail;     /* atomic: claim position << TS_POS_SHIFT | TS_* flags */
        /* atomic: a head some producer read, so at most head: producers
         * read head itself only when this says the ring may be full. */
        uint64_t head_seen;
        _Alignas(64) uint64_t head;     /* atomic: every position below it is taken */
        /* atomic: TS_OVERFLOW's copy for the loop, which reads it after
         * each wait instead of the tail. Set and cleared under ts_lock. */
        bool overflowed;
        struct loop__ts_slot slots[TS_RING_SLOTS] __attribute__((aligned(64)));
};

/* Lingering before a sleep (loop__threadsafe_linger): after this many
 * posts taken since the last time, for this long, looking this often. */
#define TS_LINGER_AFTER 16
#define TS_LINGER_NS 5000
#define TS_LINGER_LOOK_NS 1000

/* How far ahead of its slot a producer takes ownership of the ring's
 * memory, in slots: a few cache lines. */
#define TS_PREFETCH_AHEAD 16

/*
 * Ask for the line with intent to write. The loop read it last (a lap
 * ago), so without this the producer's store waits for the line to come
 * back, and its next compare-and-swap waits for that store. On x86-64 the
 * compiler emits PREFETCHW only when told the processor has it (-mprfchw),
 * so it is asked at start-up instead (CPUID 0x80000001, ECX bit 8); a plain
 * prefetch is the fallback.
 */
#if defined(__x86_64__)
#include <cpuid.h>

static bool have_prefetchw;     /* written once, before main() */

__attribute__((constructor)) static void detect_prefetchw(void) {
        unsigned a, b, c, d;

        have_prefetchw = __get_cpuid(0x80000001, &a, &b, &c, &d) && (c & (1u << 8));
}

static inline void prefetch_for_write(const void *p) {
        if (have_prefetchw)
                __asm__ __volatile__("prefetchw %0" : : "m"(*(const char *) p));
        else
                __builtin_prefetch(p, 1);
}
#else
static inline void prefetch_for_write(const void *p) {
        __builtin_prefetch(p, 1);
}
#endif

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#elif defined(__aarch64__)
        __asm__ __volatile__("yield");
#endif
}

/* Any thread. Not async-signal-safe with a backend's wake-up: signal.c
 * has descriptors of its own. */
static void wake_up(loop_t *loop) {
        if (loop->wake)
                loop->wake(loop->wake_ctx);
        else
                loop__wakeup_write(loop->wake_write_fd);
}

/*
 * The backend wakes the loop itself (kqueue's EVFILT_USER, a packet posted
 * to an IOCP port): wake(ctx) from now on, and no descriptor to read.
 * Called once, while the loop is being made, before any other thread can
 * know it. A poster that claimed its slot before loop_close() may call
 * wake(ctx) after it, so ctx must outlive the close: release(ctx) is
 * called when the loop's memory goes, once every poster has returned.
 */
void loop__threadsafe_use_wake(loop_t *loop, void (*wake)(void *ctx), void (*release)(void *ctx), void *ctx) {
        loop__wakeup_close(loop->wake_read_fd, loop->wake_write_fd);
        loop->wake_read_fd = loop->wake_write_fd = -1;
        loop->wake = wake;
        loop->wake_release = release;
        loop->wake_ctx = ctx;
}

int loop__threadsafe_init(loop_t *loop) {
        /* The size is a multiple of 64: the struct's alignment. */
        loop->ts_ring = loop__aligned_alloc(64, sizeof(struct loop__ts_ring));
        if (!loop->ts_ring)
                return -ENOMEM;
        /* seq 0 is "published" for no position (position + 1 >= 1). */
        memset(loop->ts_ring, 0, sizeof(*loop->ts_ring));
        loop->ts_ring->tail = TS_LIVE;
        int r = loop__wakeup_new(&loop->wake_read_fd, &loop->wake_write_fd);
        if (r < 0) {
                loop__aligned_free(loop->ts_ring);
                loop->ts_ring = NULL;
                return r;
        }
        pthread_mutex_init(&loop->ts_lock, NULL);
        loop->ts_may_linger = loop__online_cpus() > 1;
        return 0;
}

void loop__threadsafe_free(loop_t *loop) {
        /* After fork() another thread of the parent may have held the lock:
         * destroying it would be undefined, and leaking it is harmless. */
        if (!loop__inherited(loop))
                pthread_mutex_destroy(&loop->ts_lock);
        /* Posts the loop never took. Every poster has returned (a poster
         * holds a reference), so every claimed slot is published. */
        uint64_t end = __atomic_load_n(&loop->ts_ring->tail, __ATOMIC_ACQUIRE) >> TS_POS_SHIFT;
        for (uint64_t pos = loop->ts_ring->head; pos != end; pos++) {
                struct loop__ts_slot *s = &loop->ts_ring->slots[pos % TS_RING_SLOTS];
                if (__atomic_load_n(&s->seq, __ATOMIC_ACQUIRE) == pos + 1 && s->cb == loop__run_handle_entry)
                        loop_handle_unref(s->userdata);
        }
        for (size_t i = 0; i < loop->ts_n; i++)
                loop_handle_unref(ready_entry_handle(&loop->ts_items[i]));
        loop__aligned_free(loop->ts_ring);
        free(loop->ts_items);
        if (!loop->wake)
                loop__wakeup_close(loop->wake_read_fd, loop->wake_write_fd);
        else if (loop->wake_release)
                loop->wake_release(loop->wake_ctx);
        loop->wake_read_fd = loop->wake_write_fd = -1;
}

/* The ring was full (or another producer found it so): append under the
 * lock until the loop has caught up. Returns 1 if this post must wake the
 * loop, 0 if not, or a negative errno. */
static int post_overflow(loop_t *loop, struct loop__ready_entry e) {
        int r;

        pthread_mutex_lock(&loop->ts_lock);
        uint64_t t = __atomic_load_n(&loop->ts_ring->tail, __ATOMIC_ACQUIRE);
        if (t & TS_CLOSED) {
                r = -ESHUTDOWN;
                goto unlock;
        }
        if (loop->ts_n == loop->ts_cap) {
                size_t cap = loop->ts_cap ? loop->ts_cap * 2 : 1024;
                struct loop__ready_entry *items = realloc(loop->ts_items, cap * sizeof(*items));
                if (!items) {
                        r = -ENOMEM;
                        goto unlock;
                }
                loop->ts_items = items;
                loop->ts_cap = cap;
        }
        loop->ts_items[loop->ts_n++] = e;
        /* From now on no producer claims a ring slot (the CAS sees the flag).
         * Only the loop clears OVERFLOW, under the lock we hold: once it is
         * set, the next posts here write the tail word only to wake a
         * sleeping loop, not to set it again (a contended line). */
        t = __atomic_load_n(&loop->ts_ring->tail, __ATOMIC_SEQ_CST);
        if (!(t & TS_OVERFLOW)) {
                t = __atomic_fetch_or(&loop->ts_ring->tail, TS_OVERFLOW, __ATOMIC_SEQ_CST);
                __atomic_store_n(&loop->ts_ring->overflowed, true, __ATOMIC_RELEASE);
        }
        r = 0;
        if (t & TS_SLEEPING)
                r = (__atomic_fetch_and(&loop->ts_ring->tail, ~TS_SLEEPING, __ATOMIC_SEQ_CST) & TS_SLEEPING) != 0;
unlock:
        pthread_mutex_unlock(&loop->ts_lock);
        return r;
}

/* Returns 1 if this post must wake the loop, 0 if not, or a negative errno. */
static int post(loop_t *loop, struct loop__ready_entry e) {
        uint64_t t = __atomic_load_n(&loop->ts_ring->tail, __ATOMIC_RELAXED);
        uint64_t pos;
        struct loop__ts_slot *s;

        for (;;) {
                if (t & (TS_CLOSED | TS_OVERFLOW))
                        return post_overflow(loop, e);
                pos = t >> TS_POS_SHIFT;
                /* Acquire (both): the loop's reads of the slot's last lap
                 * are done. head_seen sits in the tail's line, which the
                 * claim owns anyway; head's line is the loop's, and is
                 * read once a lap rather than once a post. */
                if (pos - __atomic_load_n(&loop->ts_ring->head_seen, __ATOMIC_ACQUIRE) >= TS_RING_SLOTS) {
                        uint64_t head = __atomic_load_n(&loop->ts_ring->head, __ATOMIC_ACQUIRE);
                        if (pos - head >= TS_RING_SLOTS) {
                                uint64_t now = __atomic_load_n(&loop->ts_ring->tail, __ATOMIC_RELAXED);
                                if (now == t)
                                        return post_overflow(loop, e);  /* full */
                                t = now;
                                continue;
                        }
                        /* Another producer may store an older head: a
                         * lower bound all the same. */
                        __atomic_store_n(&loop->ts_ring->head_seen, head, __ATOMIC_RELEASE);
                }
                /* The claim clears SLEEPING: this post wakes the loop. */
                if (__atomic_compare_exchange_n(&loop->ts_ring->tail, &t, ((pos + 1) << TS_POS_SHIFT) | TS_LIVE,
                                                true, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED))
                        break;
        }
        s = &loop->ts_ring->slots[pos % TS_RING_SLOTS];
        prefetch_for_write(&loop->ts_ring->slots[(pos + TS_PREFETCH_AHEAD) % TS_RING_SLOTS]);
        s->cb = e.cb;
        s->userdata = e.userdata;
        __atomic_store_n(&s->seq, pos + 1, __ATOMIC_RELEASE);
        return (t & TS_SLEEPING) != 0;
}

LOOP_EXPORT int loop_call_soon_threadsafe(loop_t *loop, loop_callback_t cb, void *userdata,
                                          loop_handle_t **ret) {
        loop_handle_t *h = NULL;

        return_if_fail(loop && cb, -EINVAL);
        if (loop__inherited(loop))
                return -ECHILD;

        if (ret) {
                /* Not from the loop's handle cache: that belongs to the loop's thread. */
                h = malloc(sizeof(*h));
                if (!h)
                        return -ENOMEM;
                *h = (loop_handle_t) {
                        .n_ref = 2,     /* the queue's and the caller's */
                        .kind = HANDLE_SOON,
                        .exposed = 1,
                        .pool_index = LOOP__UNPOOLED,
                        .cb = cb,
                        .userdata = userdata,
                };
        }

        /* Already in the ready queue's form, so the loop queues it as is. */
        int r = post(loop, h ? (struct loop__ready_entry) { .cb = loop__run_handle_entry, .userdata = h }
                             : (struct loop__ready_entry) { .cb = cb, .userdata = userdata });
        if (r < 0) {
                free(h);
                return r;
        }
        if (r > 0)
                wake_up(loop);
        if (ret)
                *ret = h;
        return 0;
}

static void queue_taken(loop_t *loop, struct loop__ready_entry e) {
        loop->ts_taken++;
        if (ready_push(&loop->ready, e.cb, e.userdata, NULL) < 0) {
                loop_handle_t *h = ready_entry_handle(&e);
                loop__report(loop, "Cannot queue a call_soon_threadsafe callback", -ENOMEM, h, -1);
                if (h)
                        loop__handle_drop(loop, h);
        }
}

/*
 * Take the ring's slots from head on while they are published, up to end,
 * handing them back to producers as it goes. A slot not yet published
 * ends the run at once (spins 0), or after `spins` looks when the caller
 * knows it is claimed. Returns where the run ended.
 */
static inline uint64_t take_slots(loop_t *loop, uint64_t end, int spins) {
        struct loop__ts_ring *ring = loop->ts_ring;
        /* Only this thread writes head: a plain read of it is current. */
        uint64_t head = __atomic_load_n(&ring->head, __ATOMIC_RELAXED), pos;

        for (pos = head; pos != end; pos++) {
                struct loop__ts_slot *s = &ring->slots[pos % TS_RING_SLOTS];
                for (int i = 0; __atomic_load_n(&s->seq, __ATOMIC_ACQUIRE) != pos + 1; i++) {
                        if (i >= spins)
                                goto out;
                        cpu_relax();
                }
                queue_taken(loop, (struct loop__ready_entry) { .cb = s->cb, .userdata = s->userdata });
                /* Hand slots back now and then, not only at the end: a long
                 * batch should not send producers to the overflow. */
                if ((pos + 1) % (TS_RING_SLOTS / 4) == 0)
                        __atomic_store_n(&ring->head, pos + 1, __ATOMIC_RELEASE);
        }
out:
        /* Release: our reads of the slots are done before producers reuse them. */
        if (pos != head)
                __atomic_store_n(&ring->head, pos, __ATOMIC_RELEASE);
        return pos;
}

/* Take the ring's slots up to end. False if one is claimed but still not
 * published: its producer will not wake us, so the caller must. */
static bool take_ring(loop_t *loop, uint64_t end) {
        return take_slots(loop, end, TS_PUBLISH_SPINS) == end;
}

/* Everything up to head is taken: the window may open again, for as long
 * as the tail stays as it is now (nothing claimed since, no flag). A slot
 * still being published, or a post since, keeps it shut: the next call
 * takes again. Never on a closed or inherited loop. */
static void reopen_window(loop_t *loop) {
        struct loop__soon_window *w = &loop->ready.window;
        uint64_t open = __atomic_load_n(&w->open_generation, __ATOMIC_RELAXED);

        if (open == LOOP__CLOSED || open == LOOP__INHERITED)
                return;
        __atomic_store_n(&w->open_generation,
                         __atomic_load_n(&loop->ts_ring->head, __ATOMIC_RELAXED) << TS_POS_SHIFT | TS_LIVE,
                         __ATOMIC_RELAXED);
}

/* Take what was posted: the ring up to where it is claimed now, then the
 * overflow. */
static void take_posted(loop_t *loop) {
        uint64_t t = __atomic_load_n(&loop->ts_ring->tail, __ATOMIC_ACQUIRE);

        if (!take_ring(loop, t >> TS_POS_SHIFT))
                goto retry;
        if (!(t & TS_OVERFLOW)) {
                reopen_window(loop);
                return;
        }

        pthread_mutex_lock(&loop->ts_lock);
        /* OVERFLOW stops claims, so this end is final; the overflow comes
         * after every slot before it. */
        t = __atomic_load_n(&loop->ts_ring->tail, __ATOMIC_ACQUIRE);
        if (!take_ring(loop, t >> TS_POS_SHIFT)) {
                pthread_mutex_unlock(&loop->ts_lock);
                goto retry;
        }
        struct loop__ready_entry *items = loop->ts_items;
        size_t n = loop->ts_n;
        loop->ts_items = NULL;
        loop->ts_n = loop->ts_cap = 0;
        __atomic_store_n(&loop->ts_ring->overflowed, false, __ATOMIC_RELAXED);
        __atomic_fetch_and(&loop->ts_ring->tail, ~TS_OVERFLOW, __ATOMIC_ACQ_REL);
        pthread_mutex_unlock(&loop->ts_lock);

        for (size_t i = 0; i < n; i++)
                queue_taken(loop, items[i]);
        free(items);
        reopen_window(loop);
        return;

retry:
        /* A producer between its claim and its publish (preempted, most
         * likely): look again on the next iteration instead of waiting. */
        wake_up(loop);
}

/* loop_call_soon's slow path, in the loop's thread, when the window is
 * shut because something was posted: take it first, so it keeps its place
 * before the caller's entry. The wake-up stays readable; the next wait
 * reads it and finds nothing new. */
void loop__threadsafe_take(loop_t *loop) {
        uint64_t t = __atomic_load_n(&loop->ts_ring->tail, __ATOMIC_ACQUIRE);

        if ((t & ~TS_SLEEPING) != __atomic_load_n(&loop->ready.window.open_generation, __ATOMIC_RELAXED))
                take_posted(loop);
}

/* Where the soon window's generation points outside debug mode. */
const uint64_t *loop__threadsafe_gate(const loop_t *loop) {
        return &loop->ts_ring->tail;
}

/* Called in the loop's thread when the wake-up descriptor is readable. */
void loop__threadsafe_drain(loop_t *loop) {
        /* Read the wake-up first: one written after this is for a post
         * that take_posted() may miss, and wakes us again. */
        if (loop->wake_read_fd >= 0)
                loop__wakeup_drain(loop->wake_read_fd);
        take_posted(loop);
}

/*
 * The loop's own way in after each wait: take the slots published in a
 * row from head on. It reads the slots, which it must read anyway, and
 * not the tail: a read of the tail's line takes it from the producers,
 * whose next claim then waits for it to come back, and a loop that keeps
 * up with a flood reads after every few posts. A slot claimed but not yet
 * published ends the run; the next wait, or the sleep below, finds it.
 */
static bool take_published(loop_t *loop) {
        uint64_t head = __atomic_load_n(&loop->ts_ring->head, __ATOMIC_RELAXED);

        /* No end: the run ends at the first slot not published. */
        return take_slots(loop, UINT64_MAX, 0) != head;
}

static inline bool published(const loop_t *loop) {
        const struct loop__ts_ring *ring = loop->ts_ring;
        uint64_t head = __atomic_load_n(&ring->head, __ATOMIC_RELAXED);

        return __atomic_load_n(&ring->slots[head % TS_RING_SLOTS].seq, __ATOMIC_RELAXED) == head + 1 ||
               __atomic_load_n(&ring->overflowed, __ATOMIC_RELAXED);
}

/*
 * The loop is about to sleep, and took a flood of posts since it was last
 * here: give the posters a few microseconds before it does. A sleeping
 * loop costs the next post a system call (the wake-up's write, about a
 * microsecond of the poster's time here) and itself a wake-up; a flood
 * met awake costs neither. The slots are looked at a few times a
 * microsecond, not continuously: each look takes the line the poster is
 * writing from it. Only with more than one CPU, where the posters can run
 * meanwhile, and no longer than max_ns (the next timer; < 0: none).
 * Anything else the loop waits for (I/O, a signal) waits this long at
 * most. True if posts came.
 */
bool loop__threadsafe_linger(loop_t *loop, int64_t max_ns) {
        if (loop->ts_taken < TS_LINGER_AFTER || !loop->ts_may_linger)
                return false;
        loop->ts_taken = 0;
        int64_t limit = max_ns >= 0 && max_ns < TS_LINGER_NS ? max_ns : TS_LINGER_NS;
        int64_t start = loop__now(), looked = start, now;
        do {
                cpu_relax();
                now = loop__now();
                if (now - looked >= TS_LINGER_LOOK_NS) {
                        if (published(loop))
                                return true;
                        looked = now;
                }
        } while (now - start < limit);
        return published(loop);
}

/*
 * After every wait, in the loop's thread: take what was posted while the
 * loop was awake (nobody wrote the wake-up for that). One load of the
 * next slot when nothing was. The wake-up descriptor is read only when a
 * wait reports it (loop__threadsafe_drain): it is written only while the
 * loop sleeps.
 */
void loop__threadsafe_poll(loop_t *loop) {
        bool took = take_published(loop);

        /* The overflow comes after the whole ring: the full way. */
        if (unlikely(__atomic_load_n(&loop->ts_ring->overflowed, __ATOMIC_ACQUIRE)))
                take_posted(loop);
        else if (took)
                reopen_window(loop);
}

/*
 * The loop is about to wait for longer than nothing (or an embedding
 * program on loop_fileno()): from now on the next post, or loop_stop(),
 * writes the wake-up. False if something was posted before that: the
 * caller must not block. Posts that can be seen in their slots say so
 * without the flag (a write to the producers' line, and another to clear
 * it); those claimed before the flag was set are taken now. The caller
 * also checks its stop request after this (sequentially consistent, as
 * loop_stop()'s store and loop__threadsafe_wake()'s exchange are): either
 * it sees the stop, or the stopper sees the flag.
 */
bool loop__threadsafe_sleep(loop_t *loop) {
        if (published(loop))
                return false;
        uint64_t t = __atomic_or_fetch(&loop->ts_ring->tail, TS_SLEEPING, __ATOMIC_SEQ_CST);

        loop->ts_sleeping = true;
        if (!(t & TS_OVERFLOW) && t >> TS_POS_SHIFT == __atomic_load_n(&loop->ts_ring->head, __ATOMIC_RELAXED)) {
                loop->ts_taken = 0;     /* whatever flood there was is over */
                return true;
        }
        loop__threadsafe_awake(loop);
        take_posted(loop);
        return false;
}

/* The wait is over: posts no longer need to write. Nothing to do if this
 * thread did not set the flag (no read of the producers' line either), one
 * load if a post or loop_stop() cleared it already. */
void loop__threadsafe_awake(loop_t *loop) {
        if (!loop->ts_sleeping)
                return;
        loop->ts_sleeping = false;
        if (__atomic_load_n(&loop->ts_ring->tail, __ATOMIC_RELAXED) & TS_SLEEPING)
                __atomic_fetch_and(&loop->ts_ring->tail, ~TS_SLEEPING, __ATOMIC_SEQ_CST);
}

/*
 * loop_stop() from another thread: wake the loop as a post would, with
 * nothing posted, if it sleeps; an awake loop looks at its stop request
 * before it next sleeps (loop__threadsafe_sleep). Clearing the flag is
 * the claim on the wake-up, so a flood of stops costs one write.
 */
void loop__threadsafe_wake(loop_t *loop) {
        uint64_t t = __atomic_fetch_and(&loop->ts_ring->tail, ~TS_SLEEPING, __ATOMIC_SEQ_CST);

        if (t & TS_SLEEPING)
                wake_up(loop);
}

/* loop_close(): no new posts are taken after this; those already taken are dropped. */
void loop__threadsafe_close(loop_t *loop) {
        pthread_mutex_lock(&loop->ts_lock);
        __atomic_fetch_or(&loop->ts_ring->tail, TS_CLOSED, __ATOMIC_ACQ_REL);
        __atomic_store_n(&loop->closed, true, __ATOMIC_RELEASE);
        pthread_mutex_unlock(&loop->ts_lock);
}
