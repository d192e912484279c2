/* SPDX-License-Identifier: MIT */
/*
 * The selector object and the one table of compiled-in backends, best
 * first. This is the only place that knows which backends exist.
 */
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "selector.h"

static const struct loop_selector_ops *const backends[] = {
#ifdef ENABLE_KQUEUE
        &loop_selector_kqueue,
#endif
#ifdef ENABLE_EPOLL
        &loop_selector_epoll,
#endif
#ifdef ENABLE_POLL
        &loop_selector_poll,
#endif
#ifdef ENABLE_SELECT
        &loop_selector_select,
#endif
};

static const char *const backend_names[] = {
#ifdef ENABLE_KQUEUE
        "kqueue",
#endif
#ifdef ENABLE_EPOLL
        "epoll",
#endif
#ifdef ENABLE_POLL
        "poll",
#endif
#ifdef ENABLE_SELECT
        "select",
#endif
        NULL
};

_Static_assert(ELEMENTSOF(backends) + 1 == ELEMENTSOF(backend_names), "one name per backend");

LOOP_EXPORT const char *const *loop_selector_names(void) {
        return backend_names;
}

static const struct loop_selector_ops *find_backend(const char *name) {
        for (size_t i = 0; i < ELEMENTSOF(backends); i++)
                if (strcmp(backends[i]->name, name) == 0)
                        return backends[i];
        return NULL;
}

LOOP_EXPORT int loop_selector_new(const char *name, loop_selector_t **ret) {
        const struct loop_selector_ops *ops;
        loop_selector_t *sel;
        int r;

        return_if_fail(ret, -EINVAL);

        if (!name) {
                name = loop__getenv("LIBLOOP_SELECTOR");
                if (name && !*name)
                        name = NULL;
        }
        /* An explicit choice that cannot be honoured is an error, not a
         * silent fallback: tests and users rely on getting what they named. */
        ops = name ? find_backend(name) : backends[0];
        if (!ops)
                return -ENOENT;

        sel = malloc(sizeof(*sel));
        if (!sel)
                return -ENOMEM;
        *sel = (loop_selector_t) { .n_ref = 1, .ops = ops };
        r = ops->init(&sel->state);
        if (r < 0) {
                free(sel);
                return r;
        }
        *ret = sel;
        return 0;
}

LOOP_EXPORT loop_selector_t *loop_selector_ref(loop_selector_t *sel) {
        if (sel)
                __atomic_add_fetch(&sel->n_ref, 1, __ATOMIC_RELAXED);
        return sel;
}

LOOP_EXPORT loop_selector_t *loop_selector_unref(loop_selector_t *sel) {
        if (sel && __atomic_sub_fetch(&sel->n_ref, 1, __ATOMIC_ACQ_REL) == 0) {
                sel->ops->free(sel->state);
                free(sel);
        }
        return NULL;
}

LOOP_EXPORT const char *loop_selector_name(const loop_selector_t *sel) {
        return sel ? sel->ops->name : NULL;
}

/* Environment variables are read with secure_getenv: a setuid program
 * must not let its caller pick its backend or turn on debug output. */
const char *loop__getenv(const char *name) {
#ifdef HAVE_SECURE_GETENV
        return secure_getenv(name);
#else
        return getenv(name);
#endif
}

/* Set, not empty, and not "0". */
bool loop__getenv_bool(const char *name) {
        const char *v = loop__getenv(name);

        return v && *v && strcmp(v, "0") != 0;
}

int loop__timeout_ms(int64_t timeout_ns) {
        if (timeout_ns < 0)
                return -1;
        /* Rounded up without adding first: timeout_ns + 999999 overflows
         * for the last milliseconds below INT64_MAX. */
        int64_t ms = timeout_ns / 1000000 + (timeout_ns % 1000000 != 0);
        return ms > INT_MAX ? INT_MAX : (int) ms;
}
