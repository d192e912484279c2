/* SPDX-License-Identifier: MIT */
/*
 * proactor-probe [NAME]: exits 0 if a proactor loop can be made here
 * (loop_proactor_loop_new, or the backend NAME through LIBLOOP_PROACTOR),
 * else 1 with the reason on standard output. tests/run-backends asks it
 * before rerunning a suite on the proactor, so that a system refusing
 * io_uring (a seccomp profile, sysctl kernel.io_uring_disabled) skips that
 * rerun instead of failing every suite.
 */
#include <stdio.h>
#include <stdlib.h>

#include "loop.h"

int main(int argc, char **argv) {
        loop_t *loop = NULL;
        int r;

        if (argc > 1) {
                if (setenv("LIBLOOP_PROACTOR", argv[1], 1) < 0)
                        return 1;
                r = loop_new(&loop);
        } else
                r = loop_proactor_loop_new(&loop);
        if (r < 0) {
                printf("%s\n", loop_strerror(r));
                return 1;
        }
        loop_unref(loop);
        return 0;
}
