/* SPDX-License-Identifier: MIT */
/*
 * The recording protocols of check_transport, check_endpoints and check_tls
 * log each callback as an event; these name, print and compare the logs.
 * Each suite keeps its own recorder (struct rec) and defines
 * rec_assert_events(r, want), which EVENTS() calls.
 */
#ifndef LIBLOOP_PROTOCOL_EVENTS_H
#define LIBLOOP_PROTOCOL_EVENTS_H

#include <check.h>
#include <stdio.h>
#include <string.h>

enum {
        EV_END = 0,     /* ends an expected list */
        EV_MADE,
        EV_DATA,        /* data_received or buffer_updated */
        EV_EOF,
        EV_LOST,
        EV_PAUSE,
        EV_RESUME,
};

static inline const char *ev_name(int ev) {
        static const char *const names[] = {"end", "made", "data", "eof", "lost", "pause", "resume"};

        return ev >= 0 && ev <= EV_RESUME ? names[ev] : "?";
}

/* "made,data,lost": the first n events, cut at size. */
static inline void ev_format(const int *ev, int n, char *buf, size_t size) {
        size_t len = 0;

        buf[0] = '\0';
        for (int i = 0; i < n && len < size; i++)
                len += (size_t) snprintf(buf + len, size - len, "%s%s", i ? "," : "", ev_name(ev[i]));
}

/* The n events logged are exactly want (a list that EV_END ends). */
static inline void ev_assert_exact(const int *ev, int n, const int *want) {
        char got[256], exp[256];
        int n_want = 0;

        while (want[n_want] != EV_END)
                n_want++;
        ev_format(ev, n, got, sizeof(got));
        ev_format(want, n_want, exp, sizeof(exp));
        ck_assert_msg(n == n_want && memcmp(ev, want, (size_t) n * sizeof(int)) == 0,
                      "callbacks: got [%s], expected [%s]", got, exp);
}

#define EVENTS(r, ...)                                            \
        do {                                                      \
                static const int want_[] = {__VA_ARGS__, EV_END}; \
                rec_assert_events((r), want_);                    \
        } while (0)

#endif
