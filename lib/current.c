/* SPDX-License-Identifier: MIT */
/*
 * The two primitives asyncio keeps once policies are gone: the running
 * loop of this thread (set by loop_run_forever in loop.c) and the thread's
 * current loop (asyncio.set_event_loop). The default policy is built on
 * them.
 *
 * The current loop is held in a pthread key, not just a __thread variable,
 * so that the thread's exit releases it: a thread that sets a loop and
 * exits leaks nothing.
 */
#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>
#ifdef HAVE_PTHREAD_NP_H
#include <pthread_np.h>         /* pthread_main_np() on FreeBSD and OpenBSD */
#endif

#include "internal.h"

static pthread_key_t current_key;
static pthread_once_t current_once = PTHREAD_ONCE_INIT;
static int current_key_error;

static void release_current(void *value) {
        loop_unref(value);
}

static void make_key(void) {
        current_key_error = -pthread_key_create(&current_key, release_current);
}

static int current_init(void) {
        pthread_once(&current_once, make_key);
        return current_key_error;
}

/* The current loop, borrowed; a loop inherited across fork() is dropped
 * first, so a child never sees its parent's loop here. */
static loop_t *current_get(void) {
        loop_t *loop = pthread_getspecific(current_key);

        if (loop && loop__inherited(loop)) {
                pthread_setspecific(current_key, NULL);
                loop_unref(loop);       /* frees our copy; the parent's kernel state is untouched */
                loop = NULL;
        }
        return loop;
}

LOOP_EXPORT int loop_thread_get_loop(loop_t **ret) {
        int r = current_init();

        if (r < 0)
                return r;
        return_if_fail(ret, -EINVAL);
        loop_t *loop = current_get();
        if (!loop)
                return -ENOENT;
        *ret = loop_ref(loop);
        return 0;
}

LOOP_EXPORT int loop_thread_set_loop(loop_t *loop) {
        int r = current_init();

        if (r < 0)
                return r;
        if (loop && loop__inherited(loop))
                return -ECHILD;
        loop_t *old = current_get();
        if (old == loop)
                return 0;
        r = -pthread_setspecific(current_key, loop_ref(loop));
        if (r < 0) {
                loop_unref(loop);
                return r;
        }
        loop_unref(old);
        return 0;
}

LOOP_EXPORT int loop_get_running_loop(loop_t **ret) {
        return_if_fail(ret, -EINVAL);
        if (!loop__running_loop)
                return -ENOENT;
        *ret = loop_ref(loop__running_loop);
        return 0;
}

/*
 * Which thread is "the main thread" (where the default policy creates a
 * loop on demand)? Where there is gettid() (Linux): the thread whose id
 * equals the process id, which is the thread that called main(), and in
 * a fork child the thread that forked. Else, where there is
 * pthread_main_np() (macOS, FreeBSD, OpenBSD): the system's own answer,
 * the thread that called main(). Elsewhere (--enable-posix-fallbacks
 * too): the thread that loaded the library, recorded by a constructor
 * (exact for a library linked at start-up; for a dlopen() it is the thread
 * that called dlopen; in the child of a fork made by another thread, no
 * thread at all). syscall(SYS_gettid) would be no fallback: it is Linux.
 */
#if defined(HAVE_GETTID)
bool loop__is_main_thread(void) {
        return gettid() == getpid();
}
#elif defined(HAVE_PTHREAD_MAIN_NP)
bool loop__is_main_thread(void) {
        return pthread_main_np() == 1;
}
#else
static pthread_t main_thread;

__attribute__((constructor)) static void record_main_thread(void) {
        main_thread = pthread_self();
}

bool loop__is_main_thread(void) {
        return pthread_equal(pthread_self(), main_thread);
}
#endif
