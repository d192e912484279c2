/* SPDX-License-Identifier: MIT */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/*
 * strerror() may write to a static buffer and strerror_r() wants one from
 * the caller; the description table itself is static and thread-safe, so
 * return that (strerrordesc_np, glibc 2.32). The few codes libloop gives a
 * specific meaning get a text that says so.
 */
LOOP_EXPORT const char *loop_strerror(int error) {
        /* -INT_MIN does not exist; no errno is anywhere near it anyway. */
        if (error == INT32_MIN)
                return "Unknown error";
        int e = error < 0 ? -error : error;

        switch (e) {
        case 0:
                return "Success";
        case ESHUTDOWN:
                return "Event loop is closed";
        case ECHILD:
                return "Event loop was inherited from the parent process";
        }
#ifdef HAVE_STRERRORDESC_NP
        const char *s = strerrordesc_np(e);
        return s ? s : "Unknown error";
#else
#ifdef LOOP_WINDOWS
        /* The C runtime's strerror() knows the classic codes only. */
        const char *w = loop__win32_strerror(e);
        if (w)
                return w;
#endif
        /* Without the table, strerror is the portable fallback. */
        return strerror(e);
#endif
}
