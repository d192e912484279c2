/* SPDX-License-Identifier: MIT */
/*
 * Event-loop policies (asyncio's AbstractEventLoopPolicy and
 * DefaultEventLoopPolicy) and the global shortcuts.
 *
 * A policy is an ops table plus user data, optionally on top of a base
 * policy: an op left NULL is the base's ("subclassing"), and an override
 * can call the base explicitly with loop_policy_get_base(). Each op is
 * called with self = the policy that defines it, so loop_policy_get_userdata(self)
 * is always that policy's own data.
 *
 * Python's self is the derived object even inside the base's code, so
 * DefaultEventLoopPolicy.get_event_loop creating a loop calls the derived
 * new_event_loop. To keep that (it is how policies like uvloop's change the
 * loop class), the outermost policy of the current call chain is remembered
 * per thread, and the default get_event_loop creates and installs through it.
 *
 * The global policy is swapped under a mutex and handed out with a
 * reference taken under the same mutex, so a thread still using the old
 * policy keeps it alive until it is done.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

struct loop_policy {
        unsigned n_ref;         /* atomic */
        bool immortal;          /* the built-in default: never freed */
        uint64_t id;            /* never reused: keys the per-thread "set called" records */
        struct loop_policy_ops ops;
        void *userdata;
        loop_policy_t *base;
};

/* The policy a thread's outermost loop_policy_*() call was made on. */
static __thread loop_policy_t *outermost;
static __thread unsigned depth;

static inline void enter(loop_policy_t *p) {
        if (depth++ == 0)
                outermost = p;
}

static inline void leave(void) {
        if (--depth == 0)
                outermost = NULL;
}

/* ---- the default policy: one loop per thread, on the two primitives ------ */

/*
 * asyncio's _set_called: once a default policy's set_event_loop has been
 * called in a thread (explicitly, or by get_event_loop creating a loop),
 * that policy no longer creates one on demand in that thread, so
 * set_event_loop(NULL) forbids any implicit loop. Per policy and thread,
 * as CPython keeps it in the policy's threading.local; forgotten in a fork
 * child, whose policy starts afresh (CPython resets _local at fork). A
 * thread remembers the built-in policy's record for good and those of the
 * last few policy objects it set a loop through.
 */
#define SET_CALLED_MAX 8

static uint64_t last_policy_id = 1;     /* 1: builtin_default */
static __thread struct {
        uint64_t fork_generation;
        bool builtin;                   /* the built-in policy's: never forgotten */
        unsigned n;
        uint64_t ids[SET_CALLED_MAX];   /* policy objects', the latest last */
} set_called;

static bool was_set(const loop_policy_t *p) {
        if (set_called.fork_generation != __atomic_load_n(&loop__fork_generation, __ATOMIC_RELAXED))
                return false;
        if (p->id == 1)
                return set_called.builtin;
        for (unsigned i = 0; i < set_called.n; i++)
                if (set_called.ids[i] == p->id)
                        return true;
        return false;
}

static void mark_set(const loop_policy_t *p) {
        uint64_t gen = __atomic_load_n(&loop__fork_generation, __ATOMIC_RELAXED);

        if (set_called.fork_generation != gen) {
                set_called.fork_generation = gen;
                set_called.builtin = false;
                set_called.n = 0;
        }
        if (p->id == 1) {
                set_called.builtin = true;
                return;
        }
        if (was_set(p))
                return;
        if (set_called.n == SET_CALLED_MAX) {
                memmove(set_called.ids, set_called.ids + 1, (SET_CALLED_MAX - 1) * sizeof(set_called.ids[0]));
                set_called.n--;
        }
        set_called.ids[set_called.n++] = p->id;
}

static int default_get_event_loop(loop_policy_t *self, loop_t **ret) {
        int r = loop_thread_get_loop(ret);

        if (r != -ENOENT)
                return r;
        /* asyncio creates a loop on demand in the main thread only, and
         * only until a loop has been set there through this policy; any
         * other thread must have set one (RuntimeError there, -ENOENT here). */
        if (!loop__is_main_thread() || was_set(self))
                return -ENOENT;
        /* self.set_event_loop(self.new_event_loop()), with Python's self. */
        loop_policy_t *creator = outermost ? outermost : self;
        loop_t *loop;
        r = loop_policy_new_event_loop(creator, &loop);
        if (r < 0)
                return r;
        r = loop_policy_set_event_loop(creator, loop);
        if (r < 0) {
                loop_unref(loop);
                return r;
        }
        *ret = loop;
        return 0;
}

static int default_set_event_loop(loop_policy_t *self, loop_t *loop) {
        int r = loop_thread_set_loop(loop);

        if (r >= 0)
                mark_set(self);
        return r;
}

static int default_new_event_loop(loop_policy_t *self, loop_t **ret) {
        return loop_new(ret);
}

/* The table is written out in the built-in policy itself: C does not take
 * another object (even a const one) as a constant initializer, and clang
 * refuses what gcc accepts as an extension. */
static loop_policy_t builtin_default = {
        .n_ref = 1,
        .immortal = true,
        .id = 1,
        .ops = {
                .size = sizeof(struct loop_policy_ops),
                .get_event_loop = default_get_event_loop,
                .set_event_loop = default_set_event_loop,
                .new_event_loop = default_new_event_loop,
        },
};

/* ---- policy objects ------------------------------------------------------- */

LOOP_EXPORT int loop_policy_new(const struct loop_policy_ops *ops, void *userdata, loop_policy_t *base,
                                loop_policy_t **ret) {
        return_if_fail(ops && ret, -EINVAL);
        return_if_fail(ops->size >= sizeof(ops->size), -EINVAL);

        loop_policy_t *p = calloc(1, sizeof(*p));
        if (!p)
                return -ENOMEM;
        /* A caller built against an older, shorter table: the members it
         * did not know about stay NULL. */
        memcpy(&p->ops, ops, ops->size < sizeof(p->ops) ? ops->size : sizeof(p->ops));
        p->ops.size = sizeof(p->ops);
        if (!base && (!p->ops.get_event_loop || !p->ops.set_event_loop || !p->ops.new_event_loop)) {
                free(p);
                return -EINVAL;         /* nothing to fall back to */
        }
        p->n_ref = 1;
        p->id = __atomic_add_fetch(&last_policy_id, 1, __ATOMIC_RELAXED);
        p->userdata = userdata;
        p->base = loop_policy_ref(base);
        *ret = p;
        return 0;
}

LOOP_EXPORT int loop_policy_new_default(loop_policy_t **ret) {
        return loop_policy_new(&builtin_default.ops, NULL, NULL, ret);
}

LOOP_EXPORT loop_policy_t *loop_policy_ref(loop_policy_t *p) {
        if (p && !p->immortal)
                __atomic_add_fetch(&p->n_ref, 1, __ATOMIC_RELAXED);
        return p;
}

LOOP_EXPORT loop_policy_t *loop_policy_unref(loop_policy_t *p) {
        if (p && !p->immortal && __atomic_sub_fetch(&p->n_ref, 1, __ATOMIC_ACQ_REL) == 0) {
                if (p->ops.free)
                        p->ops.free(p->userdata);
                loop_policy_unref(p->base);
                free(p);
        }
        return NULL;
}

LOOP_EXPORT void *loop_policy_get_userdata(const loop_policy_t *p) {
        return p ? p->userdata : NULL;
}

LOOP_EXPORT loop_policy_t *loop_policy_get_base(const loop_policy_t *p) {
        return p ? p->base : NULL;
}

/* The first policy up the chain that defines the op. loop_policy_new()
 * made sure the chain ends in one that defines them all. */
#define FIND_OP(p, op) ({                               \
        loop_policy_t *_q = (p);                        \
        while (!_q->ops.op)                             \
                _q = _q->base;                          \
        _q;                                             \
})

LOOP_EXPORT int loop_policy_get_event_loop(loop_policy_t *p, loop_t **ret) {
        return_if_fail(p && ret, -EINVAL);

        loop_policy_t *q = FIND_OP(p, get_event_loop);
        loop_t *loop = NULL;
        enter(p);
        int r = q->ops.get_event_loop(q, &loop);
        leave();
        if (r < 0)
                return r;
        /* "It must never return None": a policy that claims success without
         * a loop is reported as having none. */
        if (!loop)
                return -ENOENT;
        *ret = loop;
        return 0;
}

LOOP_EXPORT int loop_policy_set_event_loop(loop_policy_t *p, loop_t *loop) {
        return_if_fail(p, -EINVAL);

        loop_policy_t *q = FIND_OP(p, set_event_loop);
        enter(p);
        int r = q->ops.set_event_loop(q, loop);
        leave();
        return r;
}

LOOP_EXPORT int loop_policy_new_event_loop(loop_policy_t *p, loop_t **ret) {
        return_if_fail(p && ret, -EINVAL);

        loop_policy_t *q = FIND_OP(p, new_event_loop);
        loop_t *loop = NULL;
        enter(p);
        int r = q->ops.new_event_loop(q, &loop);
        leave();
        if (r < 0)
                return r;
        if (!loop)
                return -ENOENT;
        *ret = loop;
        return 0;
}

/* ---- the global policy ---------------------------------------------------- */

static pthread_mutex_t global_lock = PTHREAD_MUTEX_INITIALIZER;
static loop_policy_t *global_policy;    /* NULL: the built-in default */
static pthread_once_t global_atfork_once = PTHREAD_ONCE_INIT;

/* A fork while another thread holds the lock would leave it locked in the
 * child forever: hold it across fork() instead. */
static void global_prepare(void) {
        pthread_mutex_lock(&global_lock);
}

static void global_release(void) {
        pthread_mutex_unlock(&global_lock);
}

static void global_atfork(void) {
        loop__atfork(global_prepare, global_release, global_release);
}

LOOP_EXPORT loop_policy_t *loop_get_event_loop_policy(void) {
        pthread_once(&global_atfork_once, global_atfork);
        pthread_mutex_lock(&global_lock);
        loop_policy_t *p = loop_policy_ref(global_policy ? global_policy : &builtin_default);
        pthread_mutex_unlock(&global_lock);
        return p;
}

LOOP_EXPORT int loop_set_event_loop_policy(loop_policy_t *policy) {
        pthread_once(&global_atfork_once, global_atfork);
        loop_policy_ref(policy);
        pthread_mutex_lock(&global_lock);
        loop_policy_t *old = global_policy;
        global_policy = policy;
        pthread_mutex_unlock(&global_lock);
        loop_policy_unref(old);
        return 0;
}

LOOP_EXPORT int loop_get_event_loop(loop_t **ret) {
        return_if_fail(ret, -EINVAL);

        /* Inside a callback the running loop wins, before any policy is
         * asked (asyncio since 3.5.3). */
        if (loop_get_running_loop(ret) == 0)
                return 0;
        loop_policy_t *p = loop_get_event_loop_policy();
        int r = loop_policy_get_event_loop(p, ret);
        loop_policy_unref(p);
        return r;
}

LOOP_EXPORT int loop_set_event_loop(loop_t *loop) {
        loop_policy_t *p = loop_get_event_loop_policy();
        int r = loop_policy_set_event_loop(p, loop);
        loop_policy_unref(p);
        return r;
}

LOOP_EXPORT int loop_new_event_loop(loop_t **ret) {
        return_if_fail(ret, -EINVAL);

        loop_policy_t *p = loop_get_event_loop_policy();
        int r = loop_policy_new_event_loop(p, ret);
        loop_policy_unref(p);
        return r;
}
