/* SPDX-License-Identifier: MIT */
/*
 * call_soon_threadsafe: the only way in from other threads.
 *
 * Producers append to a buffer under a mutex; the loop swaps the buffer for
 * an empty one and queues everything it took. Every call gets its own slot,
 * so calls never coalesce (uv_async_send's do); only the wake-up does: a
 * flag under the same lock says a wake-up is already on its way, so a flood
 * of posts costs one eventfd write, not one per post. The wake-up write is
 * non-blocking: a full pipe already means "wake up", so the caller never
 * waits on the loop.
 */
#include <stdlib.h>

#include "internal.h"

int loop__threadsafe_init(loop_t *loop) {
        int r = loop__wakeup_new(&loop->wake_read_fd, &loop->wake_write_fd);

        if (r < 0)
                return r;
        pthread_mutex_init(&loop->ts_lock, NULL);
        return 0;
}

void loop__threadsafe_free(loop_t *loop) {
        /* After fork() another thread of the parent may have held the lock:
         * destroying it would be undefined, and leaking it is harmless. */
        if (!loop__inherited(loop))
                pthread_mutex_destroy(&loop->ts_lock);
        for (size_t i = 0; i < loop->ts_n; i++)
                loop_handle_unref(ready_entry_handle(&loop->ts_items[i]));
        free(loop->ts_items);
        free(loop->ts_spare);
        loop__wakeup_close(loop->wake_read_fd, loop->wake_write_fd);
        loop->wake_read_fd = loop->wake_write_fd = -1;
}

LOOP_EXPORT int loop_call_soon_threadsafe(loop_t *loop, loop_callback_t cb, void *userdata,
                                          loop_handle_t **ret) {
        loop_handle_t *h = NULL;
        bool need_wake = false;
        int r = 0;

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
                        /* Set before the handle is published under ts_lock,
                         * so the loop's thread sees it without a pass over
                         * the drained entries. */
                        .loop = loop,
                        .cb = cb,
                        .userdata = userdata,
                };
        }

        pthread_mutex_lock(&loop->ts_lock);
        /* Checked under the lock: loop_close() takes it to mark the loop closed. */
        if (__atomic_load_n(&loop->closed, __ATOMIC_ACQUIRE)) {
                r = -ESHUTDOWN;
                goto unlock;
        }
        if (loop->ts_n == loop->ts_cap) {
                size_t cap = loop->ts_cap ? loop->ts_cap * 2 : 64;
                struct ready_entry *items = realloc(loop->ts_items, cap * sizeof(*items));
                if (!items) {
                        r = -ENOMEM;
                        goto unlock;
                }
                loop->ts_items = items;
                loop->ts_cap = cap;
        }
        loop->ts_items[loop->ts_n++] = h ? (struct ready_entry) { .userdata = h }
                                         : (struct ready_entry) { .cb = cb, .userdata = userdata };
        if (!loop->ts_wake_pending)
                need_wake = loop->ts_wake_pending = true;
unlock:
        pthread_mutex_unlock(&loop->ts_lock);

        if (r < 0) {
                free(h);
                return r;
        }
        if (need_wake)
                loop__wakeup_write(loop->wake_write_fd);
        if (ret)
                *ret = h;
        return 0;
}

/* Called in the loop's thread when the wake-up descriptor is readable. */
void loop__threadsafe_drain(loop_t *loop) {
        /* Read the wake-up first, then take the buffer: a post that lands
         * after the swap sees the flag clear and wakes us again. */
        loop__wakeup_drain(loop->wake_read_fd);

        pthread_mutex_lock(&loop->ts_lock);
        struct ready_entry *items = loop->ts_items;
        size_t n = loop->ts_n, cap = loop->ts_cap;
        loop->ts_items = loop->ts_spare;
        loop->ts_cap = loop->ts_spare_cap;
        loop->ts_n = 0;
        loop->ts_wake_pending = false;
        pthread_mutex_unlock(&loop->ts_lock);

        /* Usually nothing else is queued: adopt the batch as the ready
         * array instead of copying it, and keep the old one as the next
         * post buffer. */
        if (ready_count(&loop->ready) == 0 && n > 0) {
                struct ready_entry *old = loop->ready.items;
                size_t old_cap = ready_cap(&loop->ready);
                ready_set(&loop->ready, items, n, cap);
                loop->ts_spare = old;
                loop->ts_spare_cap = old_cap;
                return;
        }
        for (size_t i = 0; i < n; i++) {
                struct ready_entry *e = &items[i];
                loop_handle_t *h = ready_entry_handle(e);
                if (ready_push(&loop->ready, e->cb, e->userdata, h) < 0) {
                        loop__report(loop, "Cannot queue a call_soon_threadsafe callback", -ENOMEM, h, -1);
                        if (h) {
                                h->loop = NULL;
                                loop__handle_drop(loop, h);
                        }
                }
        }
        loop->ts_spare = items;
        loop->ts_spare_cap = cap;
}

/* loop_close(): no new posts are taken after this; those already taken are dropped. */
void loop__threadsafe_close(loop_t *loop) {
        pthread_mutex_lock(&loop->ts_lock);
        __atomic_store_n(&loop->closed, true, __ATOMIC_RELEASE);
        pthread_mutex_unlock(&loop->ts_lock);
}
