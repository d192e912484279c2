/* SPDX-License-Identifier: MIT */
/*
 * The timer heap on its own (lib/timer_heap.c compiled into the test):
 * random pushes, pops and cancellations checked step by step against a
 * plain list, with many equal deadlines so the first-scheduled-first rule
 * is exercised; purging of cancelled timers, at the loop's iteration and
 * before the heap grows; and the renumbering of
 * sequence numbers when they run out, forced early through seq_limit.
 */
#include <check.h>
#include <stdlib.h>

#include "internal.h"
#include "timer_heap.h"
#include "testutil.h"

/* A timer of the model: its deadline and scheduling order. */
struct entry {
        int64_t when;
        uint64_t order;
        bool in_heap, cancelled;
};

/*
 * The handles live in chunks of TIMER_CHUNK_HANDLES, as in the loop's
 * handle pool: a handle's pool index is its timer id, and entry i of the
 * model goes with handle i.
 */
struct model {
        struct timer_heap heap;
        struct entry *e;
        loop_handle_t **chunks;
        size_t n, n_chunks;
        uint64_t next_order;
        size_t dropped;
        uint32_t rng;
};

static void on_drop(void *ctx, loop_handle_t *first, uint64_t ids);

static void model_init(struct model *m, size_t max_entries, uint32_t seed) {
        *m = (struct model) { .rng = seed };
        m->e = calloc(max_entries, sizeof(*m->e));
        m->n_chunks = (max_entries + TIMER_CHUNK_HANDLES - 1) / TIMER_CHUNK_HANDLES;
        m->chunks = calloc(m->n_chunks, sizeof(*m->chunks));
        ck_assert_ptr_nonnull(m->e);
        ck_assert_ptr_nonnull(m->chunks);
        for (size_t c = 0; c < m->n_chunks; c++) {
                m->chunks[c] = calloc(TIMER_CHUNK_HANDLES, sizeof(loop_handle_t));
                ck_assert_ptr_nonnull(m->chunks[c]);
                for (uint32_t i = 0; i < TIMER_CHUNK_HANDLES; i++)
                        m->chunks[c][i].pool_index = (uint32_t) c * TIMER_CHUNK_HANDLES + i;
        }
        loop__timer_heap_init(&m->heap, (loop_handle_t *const *const *) &m->chunks, on_drop, m);
}

static void model_free(struct model *m) {
        loop__timer_heap_free(&m->heap);
        for (size_t c = 0; c < m->n_chunks; c++)
                free(m->chunks[c]);
        free(m->chunks);
        free(m->e);
}

static loop_handle_t *handle_of(struct model *m, size_t i) {
        return &m->chunks[i / TIMER_CHUNK_HANDLES][i % TIMER_CHUNK_HANDLES];
}

static struct entry *entry_of(struct model *m, loop_handle_t *h) {
        return &m->e[h->pool_index];
}

static uint32_t rnd(struct model *m) {
        m->rng = m->rng * 1664525u + 1013904223u;
        return m->rng >> 8;
}

static void on_drop(void *ctx, loop_handle_t *first, uint64_t ids) {
        struct model *m = ctx;

        /* 64 ids from a multiple of 64, in one chunk. */
        TU_CHECK(first->pool_index % 64 == 0);
        TU_CHECK(ids != 0);
        for (; ids; ids &= ids - 1) {
                loop_handle_t *h = first + __builtin_ctzll(ids);
                struct entry *e = entry_of(m, h);
                TU_CHECK(e->in_heap && e->cancelled);
                TU_CHECK(h->in_heap);
                h->in_heap = 0;
                e->in_heap = false;
                m->dropped++;
        }
}

/* The entry the heap must give next: least deadline, then first scheduled. */
static struct entry *model_min(struct model *m) {
        struct entry *best = NULL;

        for (size_t i = 0; i < m->n; i++) {
                struct entry *e = &m->e[i];
                if (e->in_heap && (!best || e->when < best->when || (e->when == best->when && e->order < best->order)))
                        best = e;
        }
        return best;
}

static void push(struct model *m, int64_t when) {
        size_t i = m->n++;
        struct entry *e = &m->e[i];
        loop_handle_t *h = handle_of(m, i);

        uint32_t cap = m->heap.cap, n_cancelled = m->heap.n_cancelled;
        bool purges = m->heap.n == cap && timer_heap_wants_purge(&m->heap);

        *e = (struct entry) { .when = when, .order = m->next_order++, .in_heap = true };
        TU_CHECK(loop__timer_heap_push(&m->heap, h, when) == 0);
        TU_CHECK(h->in_heap);
        /* A full heap grows only while at least half of it is live;
         * otherwise the push purges it first. */
        if (m->heap.cap != cap)
                TU_CHECK(!purges && (n_cancelled < TIMER_HEAP_PURGE_MIN || n_cancelled <= cap / 2));
        if (purges)
                TU_CHECK(m->heap.n_cancelled == 0);
}

static void pop_and_check(struct model *m) {
        struct entry *want = model_min(m);
        loop_handle_t *h = loop__timer_heap_pop(&m->heap);

        TU_CHECK(h == (want ? handle_of(m, (size_t) (want - m->e)) : NULL));
        if (want) {
                TU_CHECK(!h->in_heap);
                want->in_heap = false;
        }
}

/* Push n timers with deadlines 0..999. */
static void push_random(struct model *m, size_t n) {
        for (size_t i = 0; i < n; i++)
                push(m, (int64_t) (rnd(m) % 1000));
}

/* Cancel entry i in the model and in the heap: once, as loop_handle_cancel
 * does (it tests the handle's flag first). */
static void cancel(struct model *m, size_t i) {
        TU_CHECK(m->e[i].in_heap && !m->e[i].cancelled);
        m->e[i].cancelled = true;
        loop__timer_heap_cancel(&m->heap, handle_of(m, i));
}

static void cancel_random(struct model *m) {
        for (int tries = 0; tries < 8 && m->n; tries++) {
                struct entry *e = &m->e[rnd(m) % m->n];
                if (e->in_heap && !e->cancelled) {
                        cancel(m, (size_t) (e - m->e));
                        return;
                }
        }
}

static void check_counts(struct model *m) {
        uint32_t in_heap = 0, cancelled = 0;

        for (size_t i = 0; i < m->n; i++) {
                in_heap += m->e[i].in_heap;
                cancelled += m->e[i].in_heap && m->e[i].cancelled;
        }
        TU_CHECK(m->heap.n == in_heap);
        TU_CHECK(m->heap.n_cancelled == cancelled);
        TU_CHECK(timer_heap_live(&m->heap) == in_heap - cancelled);
}

/* What the loop does once per iteration: after it, cancelled timers are
 * at most half of a large heap. */
static void tidy(struct model *m) {
        loop__timer_heap_tidy(&m->heap);
        TU_CHECK(m->heap.n_cancelled < TIMER_HEAP_PURGE_MIN || m->heap.n_cancelled <= m->heap.n / 2);
}

static void run_model(uint32_t seed, size_t steps, uint32_t seq_limit, int distinct_deadlines) {
        struct model m;

        model_init(&m, steps, seed);
        if (seq_limit)
                m.heap.seq_limit = seq_limit;
        for (size_t i = 0; i < steps; i++) {
                uint32_t op = rnd(&m) % 12;
                if (op < 5)
                        push(&m, (int64_t) (rnd(&m) % (uint32_t) distinct_deadlines) - distinct_deadlines / 2);
                else if (op < 7)
                        pop_and_check(&m);
                else if (op < 11)
                        cancel_random(&m);
                else
                        tidy(&m);
                if (i % 97 == 0)
                        check_counts(&m);
        }
        check_counts(&m);
        while (m.heap.n > 0)
                pop_and_check(&m);
        ck_assert_ptr_null(loop__timer_heap_pop(&m.heap));
        model_free(&m);
}

START_TEST(test_model_many_ties) {
        run_model(1 + (uint32_t) _i, 20000, 0, 16);
}
END_TEST

START_TEST(test_model_few_ties) {
        run_model(100 + (uint32_t) _i, 20000, 0, 1 << 20);
}
END_TEST

/* Sequence numbers renumbered every 50 pushes: order must survive. */
START_TEST(test_model_renumber) {
        run_model(200 + (uint32_t) _i, 20000, 50, 8);
}
END_TEST

/*
 * Cancelling most of a large heap purges it at the loop's next iteration
 * (asyncio's _run_once), not in the cancel: each cancelled timer is
 * dropped once.
 */
START_TEST(test_purge) {
        struct model m;
        size_t n = 10000;

        model_init(&m, n + 1, 7);       /* one more pushed after the purge */
        push_random(&m, n);
        for (size_t i = 0; i < n; i += 2)
                cancel(&m, i);
        /* Exactly half: not more than half yet, nothing purged. */
        tidy(&m);
        ck_assert_uint_eq(m.dropped, 0);
        ck_assert_uint_eq(m.heap.n_cancelled, n / 2);
        cancel(&m, 1);
        /* More than half, but the cancel only marks. */
        ck_assert_uint_eq(m.dropped, 0);
        ck_assert_uint_eq(m.heap.n, n);
        tidy(&m);
        ck_assert_uint_eq(m.dropped, n / 2 + 1);
        ck_assert_uint_eq(m.heap.n, n / 2 - 1);
        ck_assert_uint_eq(m.heap.n_cancelled, 0);
        cancel(&m, 3);
        ck_assert_uint_eq(m.heap.n_cancelled, 1);
        /* The rest still comes out in order. */
        push(&m, 5);
        while (m.heap.n > 0)
                pop_and_check(&m);
        model_free(&m);
}
END_TEST

/* Everything cancelled: the purge keeps nothing and drops everything. */
START_TEST(test_purge_all) {
        struct model m;
        size_t n = 3000;

        model_init(&m, n, 11);
        push_random(&m, n);
        for (size_t i = n; i-- > 0;)
                cancel(&m, i);
        tidy(&m);
        ck_assert_uint_eq(m.dropped, n);
        ck_assert_uint_eq(m.heap.n, 0);
        ck_assert_ptr_null(loop__timer_heap_pop(&m.heap));
        model_free(&m);
}
END_TEST

/*
 * Scheduling and cancelling without the loop iterating (one callback doing
 * it in a loop): a full heap with more than half cancelled is purged
 * instead of grown, so it stays at its size.
 */
START_TEST(test_purge_before_growing) {
        struct model m;
        size_t n = 100000;

        model_init(&m, n, 13);
        push(&m, 0);            /* one live timer throughout */
        for (size_t i = 1; i < n; i++) {
                push_random(&m, 1);
                cancel(&m, i);
        }
        check_counts(&m);
        ck_assert_uint_le(m.heap.cap, 2 * TIMER_HEAP_PURGE_MIN);
        ck_assert_uint_ge(m.dropped, n - 1 - m.heap.cap);
        pop_and_check(&m);
        model_free(&m);
}
END_TEST

static Suite *timer_heap_suite(void) {
        Suite *s = suite_create("timer_heap");
        TCase *tc = tcase_create("heap");

        tcase_add_loop_test(tc, test_model_many_ties, 0, 4);
        tcase_add_loop_test(tc, test_model_few_ties, 0, 4);
        tcase_add_loop_test(tc, test_model_renumber, 0, 4);
        tcase_add_test(tc, test_purge);
        tcase_add_test(tc, test_purge_all);
        tcase_add_test(tc, test_purge_before_growing);
        tcase_set_timeout(tc, 60);
        suite_add_tcase(s, tc);
        return s;
}

int main(void) {
        SRunner *sr = srunner_create(timer_heap_suite());
        int failed;

        srunner_run_all(sr, CK_NORMAL);
        failed = srunner_ntests_failed(sr);
        srunner_free(sr);
        return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
