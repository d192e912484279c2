/* SPDX-License-Identifier: MIT */
/*
 * loop_dump(): everything the loop holds, one line each, for a human
 * (libuv's uv_print_all_handles, libevent's event_base_dump_events). The
 * format is documented in loop_dump(3) and stable: "kind key=value ...".
 */
#include <inttypes.h>
#include <stdlib.h>
#include <unistd.h>

#include "internal.h"
#include "selector.h"

static void *callback_address(const loop_handle_t *h) {
        return (void *) (uintptr_t) (h->kind == HANDLE_IO ? (uintptr_t) h->io_cb : (uintptr_t) h->cb);
}

/* when - now, saturated: a deadline may be any int64 (loop_call_at_ns), and
 * one far in the past is overdue by "as much as can be said", not in the
 * future by a wrapped difference. */
static int64_t time_until(int64_t when, int64_t now) {
        int64_t d;

        if (__builtin_sub_overflow(when, now, &d))
                return when < now ? INT64_MIN : INT64_MAX;
        return d;
}

static int by_deadline(const void *a, const void *b) {
        const struct timer_slot *x = a, *y = b;

        if (x->when != y->when)
                return x->when < y->when ? -1 : 1;
        return x->order < y->order ? -1 : x->order > y->order;
}

LOOP_EXPORT int loop_dump(loop_t *loop, int fd) {
        int r = loop__usable(loop);

        if (r < 0)
                return r;
        if (fd < 0)
                return -EBADF;
        int copy = dup(fd);
        if (copy < 0)
                return -errno;
        FILE *f = fdopen(copy, "w");
        if (!f) {
                r = -errno;
                close(copy);
                return r;
        }

        int64_t now = loop__now();
        const char *proactor = loop__proactor_name(loop);
        fprintf(f, "loop %p selector=%s%s%s running=%u stopping=%d debug=%d ready=%zu timers=%u\n",
                (void *) loop, loop_selector_name(loop_get_selector(loop)) ?: "none",
                proactor ? " proactor=" : "", proactor ?: "",
                __atomic_load_n(&loop->running, __ATOMIC_RELAXED), __atomic_load_n(&loop->stopping, __ATOMIC_RELAXED),
                loop->debug, ready_count(&loop->ready), timer_heap_live(&loop->timers));

        for (const struct loop__ready_entry *e = loop->ready.items; e != loop->ready.window.tail; e++) {
                struct loop__entry_info info;
                loop__entry_info(loop, e, &info);
                fprintf(f, "ready callback=%p userdata=%p cancelled=%d\n", info.fn, info.userdata, info.cancelled);
        }

        /* The heap is in heap order; a reader wants deadline order. */
        uint32_t n = loop->timers.n;
        struct timer_slot *sorted = n ? malloc(n * sizeof(*sorted)) : NULL;
        if (n && !sorted) {
                fclose(f);
                return -ENOMEM;
        }
        uint32_t live = 0;
        for (uint32_t i = 0; i < n; i++) {
                const struct timer_slot *slot = timer_heap_top(&loop->timers) + i;
                if (!timer_heap_is_cancelled(&loop->timers, timer_slot_id(slot)))
                        sorted[live++] = *slot;
        }
        if (live)
                qsort(sorted, live, sizeof(*sorted), by_deadline);
        for (uint32_t i = 0; i < live; i++) {
                const loop_handle_t *h = timer_heap_handle(&loop->timers, timer_slot_id(&sorted[i]));
                fprintf(f, "timer when_ns=%" PRId64 " in_ns=%" PRId64 " callback=%p userdata=%p\n",
                        sorted[i].when, time_until(sorted[i].when, now), callback_address(h), h->userdata);
        }
        free(sorted);

        loop->impl->dump(loop, f);
        if (fclose(f) != 0)
                return -errno;
        return 0;
}
