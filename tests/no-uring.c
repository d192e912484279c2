/* SPDX-License-Identifier: MIT */
/*
 * no-uring COMMAND [ARG...]: runs COMMAND with io_uring refused, the way
 * container runtimes' default seccomp profiles and
 * sysctl kernel.io_uring_disabled=2 refuse it: io_uring_setup(),
 * io_uring_enter() and io_uring_register() fail with EPERM. The filter is
 * inherited by every process COMMAND starts, so `tests/no-uring make
 * check` runs the whole suite on such a system. No privileges needed
 * (PR_SET_NO_NEW_PRIVS).
 */
#include <errno.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#if defined(__x86_64__) && !defined(__ILP32__)
#define ARCH AUDIT_ARCH_X86_64
#elif defined(__aarch64__)
#define ARCH AUDIT_ARCH_AARCH64
#elif defined(__i386__)
#define ARCH AUDIT_ARCH_I386
#endif

#define REFUSE(nr) \
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (nr), 0, 1), \
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (EPERM & SECCOMP_RET_DATA))

int main(int argc, char **argv) {
        struct sock_filter filter[] = {
#ifdef ARCH
                /* Another ABI's numbers mean other calls: let them through. */
                BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
                BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, ARCH, 1, 0),
                BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
#endif
                BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
                REFUSE(__NR_io_uring_setup),
                REFUSE(__NR_io_uring_enter),
                REFUSE(__NR_io_uring_register),
                BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        };
        struct sock_fprog prog = {
                .len = sizeof(filter) / sizeof(filter[0]),
                .filter = filter,
        };

        if (argc < 2) {
                fprintf(stderr, "usage: %s COMMAND [ARG...]\n", argv[0]);
                return 2;
        }
        if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 || prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) < 0) {
                fprintf(stderr, "%s: cannot install the seccomp filter: %s\n", argv[0], strerror(errno));
                return 2;
        }
        execvp(argv[1], argv + 1);
        fprintf(stderr, "%s: %s: %s\n", argv[0], argv[1], strerror(errno));
        return 127;
}
