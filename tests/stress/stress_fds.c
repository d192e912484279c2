/* SPDX-License-Identifier: MIT */
/*
 * make check-stress: descriptors, all ready at once.
 *
 * RLIMIT_NOFILE's soft limit is raised to the hard limit (capped at
 * STRESS_MAX_FDS: 32,768 pipes), a pipe is opened for every descriptor that
 * leaves, a reader watches each read end, and rounds of growing size make
 * that many read ends readable at once (one byte each). In each round every
 * reader must run exactly once (its callback drains the pipe, so by the
 * level-triggered rule it must not run again), never twice in one
 * iteration, and every loop_run_once(loop, 100 ms) must return: a call that
 * does not return within ST_RUN_TIMEOUT seconds fails the test through the
 * watchdog (issue 18's defect 1: the io_uring loop spun forever at about
 * 1,030 ready descriptors). A second kind of round lets each callback leave
 * its byte twice before draining: each reader then runs three times, in
 * three different iterations.
 *
 * On select, descriptors at or above FD_SETSIZE are refused with -ERANGE
 * (lib/select.c, loop_add_reader(3)); the write ends are moved above
 * FD_SETSIZE so that the read ends fill everything below it.
 *
 * Limits reached (2026-12-06, a hard limit of 20,000 descriptors): 9,972
 * read ends ready at once (19,944 pipe descriptors) on epoll, poll and
 * io_uring, 1,017 on select (FD_SETSIZE 1,024); the log's "stress: BACKEND:"
 * lines say what a run reached. Before commit 35588e4 the io_uring loop
 * hung in the 1,024 round (after rounds of 16 and 256): the watchdog
 * failed the test after 15 s.
 */
#include <sys/select.h>

#include "stress.h"

#define STRESS_MAX_FDS 65536
/* Descriptors left for the loop (wake-up, signal, ring), Check and stdio. */
#define RESERVE_FDS 48
#define ST_RUN_TIMEOUT 15

struct reader {
        struct stress *st;
        int index;
        int runs;               /* this round */
        uint64_t last_iter;     /* the iteration it last ran in */
};

struct stress {
        int n;                  /* pipes */
        int (*p)[2];
        struct reader *r;
        uint64_t iter;          /* numbered by the test, from 1 */
        int keep;               /* runs that leave the byte in the pipe */
        int ran;                /* callbacks this iteration */
        int twice;              /* a reader ran twice in one iteration */
        int empty;              /* a drain found nothing */
        int wrong_fd;
};

static int on_readable(loop_t *loop, int fd, void *userdata) {
        struct reader *r = userdata;
        struct stress *st = r->st;

        (void) loop;
        if (fd != st->p[r->index][0])
                st->wrong_fd++;
        if (r->runs > 0 && r->last_iter == st->iter)
                st->twice++;
        r->last_iter = st->iter;
        r->runs++;
        st->ran++;
        if (r->runs > st->keep && tu_drain(fd) == 0)
                st->empty++;
        return 0;
}

static long raise_nofile(void) {
        struct rlimit rl;

        ck_assert_int_eq(getrlimit(RLIMIT_NOFILE, &rl), 0);
        if (rl.rlim_max == RLIM_INFINITY || rl.rlim_max > STRESS_MAX_FDS)
                rl.rlim_cur = STRESS_MAX_FDS;
        else
                rl.rlim_cur = rl.rlim_max;
        ck_assert_int_eq(setrlimit(RLIMIT_NOFILE, &rl), 0);
        return (long) rl.rlim_cur;
}

/*
 * One round: the first k pipes become readable at once; every reader must
 * run keep + 1 times, at most once per iteration, then never again.
 */
static void round_of(loop_t *loop, struct stress *st, int k, int keep) {
        static char what[128];
        int done = 0;
        int64_t deadline = tu_now_ns() + 60 * TU_SEC;

        st_note("%d descriptors ready at once%s", k, keep ? " (callbacks drain on their third run)" : "");
        snprintf(what, sizeof(what), "loop_run_once(100 ms) with %d descriptors ready", k);
        st->keep = keep;
        for (int i = 0; i < st->n; i++)
                st->r[i].runs = 0;
        for (int i = 0; i < k; i++)
                tu_write_byte(st->p[i][1]);
        while (done < k * (keep + 1) && tu_now_ns() < deadline) {
                int r;

                st->iter++;
                st->ran = 0;
                st_watchdog(ST_RUN_TIMEOUT, what);
                r = loop_run_once(loop, 100 * TU_MSEC);
                st_watchdog(0, NULL);
                ck_assert_msg(r >= 0, "loop_run_once: %s", loop_strerror(r));
                ck_assert_int_eq(r, st->ran);
                done += st->ran;
        }
        ck_assert_int_eq(st->wrong_fd, 0);
        ck_assert_msg(st->twice == 0, "%d readers ran twice in one iteration", st->twice);
        ck_assert_msg(st->empty == 0, "%d readers ran on a drained pipe", st->empty);
        for (int i = 0; i < st->n; i++) {
                int want = i < k ? keep + 1 : 0;

                ck_assert_msg(st->r[i].runs == want, "reader %d of %d (fd %d) ran %d times, not %d", i, k,
                              st->p[i][0], st->r[i].runs, want);
        }
        /* Drained: nothing runs any more (the io_uring loop's probes settle). */
        for (int j = 0; j < 3; j++) {
                st->iter++;
                st->ran = 0;
                st_watchdog(ST_RUN_TIMEOUT, what);
                ck_assert_int_eq(loop_run_once(loop, j == 2 ? 10 * TU_MSEC : 0), 0);
                st_watchdog(0, NULL);
        }
}

START_TEST(test_all_ready) {
        struct stress st = { 0 };
        loop_t *loop;
        long limit = raise_nofile();
        int is_select, max_pipes, refused = 0;
        int sizes[] = { 16, 256, 1024, 1025, 1030, 1100, 2048, 4096, 8192, 16384, 32768 };

        loop = tu_loop_new();
        is_select = tu_selector_is(loop, "select");
        max_pipes = (int) (limit - tu_count_fds() - RESERVE_FDS) / 2;
        st.p = calloc(max_pipes, sizeof(*st.p));
        st.r = calloc(max_pipes, sizeof(*st.r));
        ck_assert(st.p && st.r);

        for (int i = 0; i < max_pipes; i++) {
                int p[2];

                ck_assert_msg(pipe2(p, O_NONBLOCK | O_CLOEXEC) == 0, "pipe %d of %d: %s", i, max_pipes,
                              strerror(errno));
                if (is_select) {
                        int w;

                        if (p[0] >= FD_SETSIZE) {
                                /* Beyond fd_set: refused, nothing registered. */
                                ck_assert_int_eq(loop_add_reader(loop, p[0], on_readable, NULL), -ERANGE);
                                ck_assert_int_eq(loop_add_writer(loop, p[1], on_readable, NULL), -ERANGE);
                                refused += 2;
                                tu_close_pair(p);
                                break;
                        }
                        /* The write end goes above FD_SETSIZE, leaving the
                         * numbers below it to read ends. */
                        w = fcntl(p[1], F_DUPFD_CLOEXEC, FD_SETSIZE);
                        ck_assert_int_ge(w, FD_SETSIZE);
                        ck_assert_int_eq(close(p[1]), 0);
                        p[1] = w;
                        ck_assert_int_eq(loop_add_writer(loop, w, on_readable, NULL), -ERANGE);
                        refused++;
                }
                st.p[i][0] = p[0];
                st.p[i][1] = p[1];
                st.r[i] = (struct reader) { .st = &st, .index = i };
                ck_assert_int_eq(loop_add_reader(loop, p[0], on_readable, &st.r[i]), 0);
                st.n++;
        }
        st_note("RLIMIT_NOFILE %ld, %d pipes watched (%d read ends)%s", limit, st.n, st.n,
                is_select ? ", select refused the descriptors >= FD_SETSIZE with -ERANGE" : "");
        ck_assert_int_gt(st.n, is_select ? FD_SETSIZE / 2 : 1024);
        if (is_select)
                ck_assert_int_gt(refused, 0);

        for (size_t s = 0; s < sizeof(sizes) / sizeof(sizes[0]) && sizes[s] < st.n; s++)
                round_of(loop, &st, sizes[s], 0);
        round_of(loop, &st, st.n, 0);
        round_of(loop, &st, st.n, 2);
        round_of(loop, &st, st.n, 0);
        st_note("reached: %d descriptors ready at once, every reader once per round", st.n);

        for (int i = 0; i < st.n; i++) {
                ck_assert_int_eq(loop_remove_reader(loop, st.p[i][0]), 1);
                tu_close_pair(st.p[i]);
        }
        tu_assert_usable(loop);
        loop_unref(loop);
        free(st.p);
        free(st.r);
}
END_TEST

int main(void) {
        Suite *s = suite_create("stress_fds");
        TCase *tc = st_tcase(s, "all_ready", ST_TCASE_TIMEOUT);

        tcase_add_test(tc, test_all_ready);
        return tu_run_suite(s);
}
