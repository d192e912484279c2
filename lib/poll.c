/* SPDX-License-Identifier: MIT */
/*
 * The poll selector (POSIX).
 *
 * Quirks this file deals with:
 * - poll() keeps no kernel state: the set is an array we pass on every
 *   call, so a registration costs nothing and a closed descriptor simply
 *   shows up as POLLNVAL, at once and on every call: it is reported as
 *   CLOSED, and the loop drops it before the next call instead of spinning.
 * - The array is kept dense (removal moves the last entry into the hole)
 *   with an fd -> slot index beside it, so changes are O(1) and the kernel
 *   scans only watched descriptors.
 * - POLLERR and POLLHUP come whatever the events asked for, even none: an
 *   entry with events 0 is how a descriptor is watched for them alone
 *   (LOOP_EVENT_ERROR, see selector.h).
 * - ppoll() takes a timespec: no millisecond rounding. macOS has no
 *   ppoll() (Linux and the BSDs do): there poll() waits whole
 *   milliseconds, rounded up, so a timer is never found early and spun on.
 * - Nothing checks a descriptor at registration, so an addition checks it
 *   with loop__fd_valid() (fcntl) to report EBADF the way the other backends do.
 */
#include <poll.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "selector.h"

struct poll_state {
        struct pollfd *pfds;
        size_t n, cap;
        uint32_t *slot_of;      /* fd -> slot + 1; 0 when not watched */
        size_t n_slot_of;
};

static int poll_init(void **ret) {
        struct poll_state *st = calloc(1, sizeof(*st));

        if (!st)
                return -ENOMEM;
        *ret = st;
        return 0;
}

static void poll_free(void *state) {
        struct poll_state *st = state;

        free(st->pfds);
        free(st->slot_of);
        free(st);
}

static short to_poll(uint32_t events) {
        return (short) ((events & LOOP_EVENT_READ ? POLLIN : 0) | (events & LOOP_EVENT_WRITE ? POLLOUT : 0));
}

static int poll_add(struct poll_state *st, int fd, uint32_t events) {
        int r = loop__fd_valid(fd);

        if (r < 0)
                return r;
        if ((size_t) fd >= st->n_slot_of) {
                size_t n = st->n_slot_of ? st->n_slot_of : 64;
                while (n <= (size_t) fd)
                        n *= 2;
                uint32_t *slot_of = realloc(st->slot_of, n * sizeof(*slot_of));
                if (!slot_of)
                        return -ENOMEM;
                memset(slot_of + st->n_slot_of, 0, (n - st->n_slot_of) * sizeof(*slot_of));
                st->slot_of = slot_of;
                st->n_slot_of = n;
        }
        if (st->n == st->cap) {
                size_t cap = st->cap ? st->cap * 2 : 64;
                struct pollfd *pfds = realloc(st->pfds, cap * sizeof(*pfds));
                if (!pfds)
                        return -ENOMEM;
                st->pfds = pfds;
                st->cap = cap;
        }
        st->pfds[st->n] = (struct pollfd) { .fd = fd, .events = to_poll(events) };
        st->slot_of[fd] = (uint32_t) ++st->n;
        return 0;
}

static int poll_modify(void *state, int fd, uint32_t old_events, uint32_t new_events, int reset) {
        struct poll_state *st = state;
        uint32_t slot = (size_t) fd < st->n_slot_of ? st->slot_of[fd] : 0;

        if (slot == 0)
                return new_events ? poll_add(st, fd, new_events) : 0;
        if (new_events) {
                st->pfds[slot - 1].events = to_poll(new_events);
                return 0;
        }
        struct pollfd last = st->pfds[--st->n];
        st->slot_of[fd] = 0;
        if (slot - 1 != st->n) {
                st->pfds[slot - 1] = last;
                st->slot_of[last.fd] = slot;
        }
        return 0;
}

#ifdef HAVE_PPOLL
static int wait_fds(struct poll_state *st, int64_t timeout_ns) {
        struct timespec ts = {
                .tv_sec = timeout_ns / 1000000000,
                .tv_nsec = timeout_ns % 1000000000,
        };

        return ppoll(st->pfds, st->n, timeout_ns < 0 ? NULL : &ts, NULL);
}
#else
static int wait_fds(struct poll_state *st, int64_t timeout_ns) {
        /* Rounded up; a longer wait ends early and the loop waits again. */
        return poll(st->pfds, st->n, loop__timeout_ms(timeout_ns));
}
#endif

static int poll_select(void *state, int64_t timeout_ns, loop_selector_ready_t ready, void *ctx) {
        struct poll_state *st = state;
        int n = wait_fds(st, timeout_ns);

        if (n < 0)
                return errno == EINTR ? 0 : -errno;
        /* ready() never changes the set (changes wait for the next flush),
         * so walking the array while reporting is safe. */
        for (size_t i = 0, left = (size_t) n; i < st->n && left > 0; i++) {
                short re = st->pfds[i].revents;
                if (!re)
                        continue;
                left--;
                ready(ctx, st->pfds[i].fd, loop__poll_revents(re));
        }
        return n;
}

const struct loop_selector_ops loop_selector_poll = {
        .name = "poll",
        .init = poll_init,
        .free = poll_free,
        .modify = poll_modify,
        .select = poll_select,
};
