/* SPDX-License-Identifier: MIT */
/*
 * epoll-ctl-cost: what re-checking a registration costs, the price of the
 * pipe ring's re-setup (bench/RESULTS.md).
 *
 * A loop that removes a reader and adds it back in one pass cannot know
 * whether the descriptor was closed and its number reused in between, so
 * it asks the kernel once: EPOLL_CTL_ADD, which fails with EEXIST when the
 * same file is still registered (libloop and libev both do this). This
 * program registers N socketpairs with an epoll instance, then times that
 * EEXIST round for every fd as plain system calls, and again submitted in
 * one batch through io_uring's IORING_OP_EPOLL_CTL (is it the system call
 * or the work behind it that costs?).
 *
 *   bench/epoll-ctl-cost [N]        (default 9900, the pipe ring's largest N)
 */
#include <errno.h>
#include <liburing.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static long long now_ns(void) {
        struct timespec t;

        clock_gettime(CLOCK_MONOTONIC, &t);
        return t.tv_sec * 1000000000LL + t.tv_nsec;
}

static void die(const char *what, int e) {
        fprintf(stderr, "epoll-ctl-cost: %s: %s\n", what, strerror(e));
        exit(1);
}

int main(int argc, char **argv) {
        int n = argc > 1 ? atoi(argv[1]) : 9900;
        struct rlimit rl;

        if (n <= 0)
                die("N", EINVAL);
        if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
                rl.rlim_cur = rl.rlim_max;
                setrlimit(RLIMIT_NOFILE, &rl);
        }
        int *fds = calloc((size_t) n, sizeof(*fds));
        struct epoll_event *evs = calloc((size_t) n, sizeof(*evs));
        int ep = epoll_create1(EPOLL_CLOEXEC);
        if (!fds || !evs)
                die("calloc", ENOMEM);
        if (ep < 0)
                die("epoll_create1", errno);
        for (int i = 0; i < n; i++) {
                int sv[2];
                if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
                        die("socketpair (raise RLIMIT_NOFILE or lower N)", errno);
                fds[i] = sv[0];
                evs[i] = (struct epoll_event) { .events = EPOLLIN, .data.fd = sv[0] };
                if (epoll_ctl(ep, EPOLL_CTL_ADD, sv[0], &evs[i]) < 0)
                        die("epoll_ctl", errno);
        }
        struct io_uring ring;
        int r = io_uring_queue_init(4096, &ring, 0);
        if (r < 0)
                die("io_uring_queue_init", -r);

        printf("%d registered socketpairs; ns per fd for EPOLL_CTL_ADD -> EEXIST\n", n);
        printf("%-6s %14s %20s\n", "round", "system call", "io_uring batch");
        for (int round = 0; round < 5; round++) {
                long long t0 = now_ns();
                for (int i = 0; i < n; i++)
                        if (epoll_ctl(ep, EPOLL_CTL_ADD, fds[i], &evs[i]) == 0 || errno != EEXIST)
                                die("epoll_ctl did not say EEXIST", errno);
                long long t1 = now_ns();
                int queued = 0, done = 0;
                for (int i = 0; i < n; i++) {
                        struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
                        if (!sqe) {
                                io_uring_submit(&ring);
                                sqe = io_uring_get_sqe(&ring);
                        }
                        io_uring_prep_epoll_ctl(sqe, ep, fds[i], EPOLL_CTL_ADD, &evs[i]);
                        queued++;
                        struct io_uring_cqe *cqe;
                        while (io_uring_peek_cqe(&ring, &cqe) == 0) {
                                if (cqe->res != -EEXIST)
                                        die("IORING_OP_EPOLL_CTL did not say EEXIST", -cqe->res);
                                io_uring_cqe_seen(&ring, cqe);
                                done++;
                        }
                }
                while (done < queued) {
                        struct io_uring_cqe *cqe;
                        io_uring_submit_and_wait(&ring, 1);
                        while (io_uring_peek_cqe(&ring, &cqe) == 0) {
                                if (cqe->res != -EEXIST)
                                        die("IORING_OP_EPOLL_CTL did not say EEXIST", -cqe->res);
                                io_uring_cqe_seen(&ring, cqe);
                                done++;
                        }
                }
                long long t2 = now_ns();
                printf("%-6d %14.1f %20.1f\n", round + 1, (double) (t1 - t0) / n, (double) (t2 - t1) / n);
        }
        io_uring_queue_exit(&ring);
        return 0;
}
