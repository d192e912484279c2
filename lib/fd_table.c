/* SPDX-License-Identifier: MIT */
/*
 * Tables indexed by file descriptor (the selector loop's registrations, the
 * proactor's, the pending socket operations): libev's anfds layout, grown
 * by doubling and zero-filled.
 */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

int loop__fd_table_grow(void **table, size_t *n, size_t elem_size, int fd) {
        size_t cap;

        /* loop__fd_table_reserve() checked that it does not fit already. */
        if (fd < 0)
                return -EBADF;
        /* Only grow for a descriptor that exists: it is below RLIMIT_NOFILE,
         * so fd 1000000000 fails with EBADF instead of allocating gigabytes. */
        int r = loop__fd_valid(fd);
        if (r < 0)
                return r;
        cap = *n ? *n : 64;
        while (cap <= (size_t) fd)
                cap *= 2;
        if (cap > SIZE_MAX / elem_size)
                return -ENOMEM;
        char *p = realloc(*table, cap * elem_size);
        if (!p)
                return -ENOMEM;
        memset(p + *n * elem_size, 0, (cap - *n) * elem_size);
        *table = p;
        *n = cap;
        return 0;
}
