/* SPDX-License-Identifier: MIT */
/*
 * A subprocess exchange (asyncio's create_subprocess_exec and
 * communicate()): start "tr a-z A-Z", feed its stdin through a writer,
 * read its stdout through a reader, and get its exit status from a child
 * handler. The loop stops once all three are done. Build against an
 * installed libloop with
 *     cc subprocess.c $(pkg-config --cflags --libs libloop)
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <loop.h>

struct exchange {
        int fds[3];             /* the child's stdin, stdout, stderr */
        const char *input;
        size_t input_left;
        int pending;            /* stdin written, stdout at EOF, exit seen */
        int status;
};

static void done_one(loop_t *loop, struct exchange *x) {
        if (--x->pending == 0)
                loop_stop(loop);
}

static int on_stdin(loop_t *loop, int fd, void *userdata) {
        struct exchange *x = userdata;
        ssize_t n = write(fd, x->input, x->input_left);

        if (n < 0)
                return errno == EAGAIN ? 0 : -errno;
        x->input += n;
        x->input_left -= (size_t) n;
        if (x->input_left > 0)
                return 0;
        /* All written: closing stdin is the child's end of input. */
        loop_remove_writer(loop, fd);
        close(fd);
        x->fds[0] = -1;
        done_one(loop, x);
        return 0;
}

static int on_stdout(loop_t *loop, int fd, void *userdata) {
        struct exchange *x = userdata;
        char buf[4096];
        ssize_t n = read(fd, buf, sizeof(buf));

        if (n < 0)
                return errno == EAGAIN ? 0 : -errno;
        if (n > 0) {
                fwrite(buf, 1, (size_t) n, stdout);
                return 0;
        }
        loop_remove_reader(loop, fd);   /* EOF: the child closed its stdout */
        done_one(loop, x);
        return 0;
}

static int on_exit_status(loop_t *loop, pid_t pid, int status, void *userdata) {
        struct exchange *x = userdata;

        (void) pid;
        x->status = status;
        done_one(loop, x);
        return 0;
}

static void check(int r, const char *what) {
        if (r < 0) {
                fprintf(stderr, "%s: %s\n", what, loop_strerror(r));
                exit(EXIT_FAILURE);
        }
}

int main(void) {
        static const char input[] = "hello from the parent\n";
        char *argv[] = { "tr", "a-z", "A-Z", NULL };
        struct exchange x = { .input = input, .input_left = strlen(input), .pending = 3 };
        loop_t *loop = NULL;
        pid_t pid;

        check(loop_new(&loop), "loop_new");
        check(loop_spawn(loop, "tr", argv, NULL, &pid, x.fds), "loop_spawn");
        check(loop_add_writer(loop, x.fds[0], on_stdin, &x), "loop_add_writer");
        check(loop_add_reader(loop, x.fds[1], on_stdout, &x), "loop_add_reader");
        check(loop_add_child_handler(loop, pid, on_exit_status, &x), "loop_add_child_handler");
        check(loop_run_forever(loop), "loop_run_forever");

        if (WIFEXITED(x.status))
                printf("tr (pid %d) exited with status %d\n", (int) pid, WEXITSTATUS(x.status));
        else if (WIFSIGNALED(x.status))
                printf("tr (pid %d) was killed by signal %d\n", (int) pid, WTERMSIG(x.status));
        close(x.fds[1]);
        close(x.fds[2]);        /* not read here: tr writes nothing to stderr */
        loop_unref(loop);
        return WIFEXITED(x.status) && WEXITSTATUS(x.status) == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
