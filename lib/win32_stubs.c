/* SPDX-License-Identifier: MIT */
/*
 * The calls Windows has no model for, on Windows: they check their
 * arguments as the POSIX ones do and then say EOPNOTSUPP, so that a
 * program written for POSIX fails cleanly instead of not linking.
 *
 * - Child processes (child.c): no fork, no waitpid(); processes and their
 *   exit would be waited for as handles (RegisterWaitForSingleObject
 *   posting to the IOCP port), which this release does not do.
 */
#include "internal.h"

LOOP_EXPORT int loop_add_child_handler(loop_t *loop, pid_t pid, loop_child_callback_t cb, void *userdata) {
        int r = loop__usable(loop);

        if (r < 0)
                return r;
        return_if_fail(pid > 0 && cb, -EINVAL);
        return -EOPNOTSUPP;
}

LOOP_EXPORT int loop_remove_child_handler(loop_t *loop, pid_t pid) {
        int r = loop__usable(loop);

        if (r < 0)
                return r;
        return_if_fail(pid > 0, -EINVAL);
        return 0;
}

LOOP_EXPORT int loop_spawn(loop_t *loop, const char *path, char *const argv[], char *const envp[], pid_t *pid,
                           int fds[3]) {
        int r = loop__usable(loop);

        if (r < 0)
                return r;
        return_if_fail(path && argv, -EINVAL);
        return -EOPNOTSUPP;
}
