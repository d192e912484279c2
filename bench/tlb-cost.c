/* SPDX-License-Identifier: MIT */
/*
 * tlb-cost: what a page costs a callback when every system call flushes
 * the TLB (page-table isolation without PCID, as on the machines of
 * bench/RESULTS.md).
 *
 * An event loop's callback sits between system calls (the read, the
 * write, the wait). If each system call drops the user's TLB entries,
 * every distinct page the way back into the loop touches costs a page
 * walk per callback, however few instructions it runs there. This program
 * times a loop of send + recv of one byte on a socketpair that also
 * touches K distinct pages per iteration, and the same touches without
 * the system calls, for K = 0, 4, 8, 16 and 32. The K values take turns
 * within each round, so load from elsewhere hits them alike; each cell is
 * the median of the rounds.
 *
 *   bench/tlb-cost [ITERATIONS]        (default 20000 per measurement)
 */
#include "bench.h"

#define PAGE 4096
#define MAX_PAGES 32
#define ROUNDS 7

static const int page_counts[] = { 0, 4, 8, 16, MAX_PAGES };
#define N_COUNTS (int) (sizeof(page_counts) / sizeof(page_counts[0]))

/* One cache line per page, a different one each iteration, so that the
 * touches miss the TLB without the same line staying hot in L1. */
static unsigned long touch(volatile const unsigned char *mem, int pages, int i) {
        unsigned long sum = 0;

        for (int p = 0; p < pages; p++)
                sum += mem[(size_t) p * PAGE + (size_t) (i & 63) * 64];
        return sum;
}

static double measure(int sv[2], const unsigned char *mem, int pages, int iterations, int syscalls) {
        unsigned long sum = 0;
        char c = 'x';
        uint64_t t0 = bench_now_ns();

        for (int i = 0; i < iterations; i++) {
                if (syscalls && send(sv[1], &c, 1, 0) != 1)
                        bench_die("send: %s", strerror(errno));
                sum += touch(mem, pages, i);
                if (syscalls && recv(sv[0], &c, 1, 0) != 1)
                        bench_die("recv: %s", strerror(errno));
        }
        uint64_t t = bench_now_ns() - t0;
        /* Keep the sum alive without printing it. */
        __asm__ volatile("" : : "r"(sum));
        return (double) t / iterations;
}

int main(int argc, char **argv) {
        int iterations = argc > 1 ? atoi(argv[1]) : 20000;
        int sv[2];

        if (iterations <= 0)
                bench_die("usage: tlb-cost [ITERATIONS > 0]");
        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
                bench_die("socketpair: %s", strerror(errno));
        unsigned char *mem = aligned_alloc(PAGE, (size_t) MAX_PAGES * PAGE);
        if (!mem)
                bench_die("out of memory");
        memset(mem, 1, (size_t) MAX_PAGES * PAGE);

        double with[N_COUNTS][ROUNDS], without[N_COUNTS][ROUNDS];
        for (int k = 0; k < N_COUNTS; k++)      /* warm-up, untimed */
                measure(sv, mem, page_counts[k], iterations, 1);
        for (int r = 0; r < ROUNDS; r++)
                for (int k = 0; k < N_COUNTS; k++) {
                        with[k][r] = measure(sv, mem, page_counts[k], iterations, 1);
                        without[k][r] = measure(sv, mem, page_counts[k], iterations, 0);
                }

        printf("%d iterations, median of %d rounds; ns per iteration\n", iterations, ROUNDS);
        printf("%-6s %18s %10s %18s\n", "pages", "send+recv+touch", "+ vs 0", "touch alone");
        double base = 0;
        for (int k = 0; k < N_COUNTS; k++) {
                double w = bench_median(with[k], ROUNDS), wo = bench_median(without[k], ROUNDS);
                if (k == 0)
                        base = w;
                printf("%-6d %18.1f %10.1f %18.1f\n", page_counts[k], w, w - base, wo);
        }
        free(mem);
        close(sv[0]);
        close(sv[1]);
        return 0;
}
