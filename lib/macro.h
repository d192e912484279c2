/* SPDX-License-Identifier: MIT */
#pragma once

#include <errno.h>

#ifdef _WIN32
/* PE has no symbol visibility: the DLL exports what lib/libloop.sym lists,
 * through the version script where ld takes one, else through libtool's
 * -export-symbols (a .def file). */
#define LOOP_EXPORT
#define LOOP_HIDDEN
#else
#define LOOP_EXPORT __attribute__((visibility("default")))
/* For extern declarations of the library's own data: -fvisibility=hidden
 * covers definitions only, and without this every access goes through the GOT. */
#define LOOP_HIDDEN __attribute__((visibility("hidden")))
#endif

#define likely(x) __builtin_expect(!!(x), 1)
#define unlikely(x) __builtin_expect(!!(x), 0)

/* For a helper shared by a hot path and a cold one, which gcc would
 * otherwise keep out of line. */
#define LOOP_ALWAYS_INLINE inline __attribute__((always_inline))

#define ELEMENTSOF(a) (sizeof(a) / sizeof((a)[0]))

/*
 * Public arguments are checked with these instead of assert(): a caller's
 * mistake gets an error code back, never an abort (sd-event's
 * assert_return). Plain assert() is kept for the library's own invariants.
 */
#define return_if_fail(expr, err)              \
        do {                                    \
                if (unlikely(!(expr)))          \
                        return (err);           \
        } while (0)

