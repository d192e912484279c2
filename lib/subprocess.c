/* SPDX-License-Identifier: MIT */
/*
 * Subprocesses with pipe transports: asyncio's loop.subprocess_exec,
 * SubprocessProtocol and SubprocessTransport (base_subprocess.py).
 *
 * loop_spawn() starts the child with its stdin, stdout and stderr on pipes;
 * each of our ends becomes a pipe transport (pipe.c's kinds) whose
 * protocol is ours: it passes the child's output to pipe_data_received,
 * and each pipe's end to pipe_connection_lost. The child's exit comes
 * through a child handler (process_exited). As in asyncio:
 * - connection_made comes first, once the pipes are connected; the
 *   future completes after it with the subprocess;
 * - connection_lost(0) comes last, once the child has exited and every
 *   pipe has ended (_try_finish);
 * - close() closes the pipes and kills a child that still runs.
 * The child's return code is asyncio's: its exit status, or minus the
 * signal that ended it.
 *
 * Ownership: a subprocess holds a reference to itself until
 * connection_lost has run, and each pipe holds one until its
 * connection_lost (loop_close() ends the subprocess before its pipes:
 * hooks run newest first). loop_close() with a
 * subprocess alive ends its pipes (the transports' hook) and it
 * (connection_lost(-ECANCELED), from our hook), and kills and reaps a
 * child that still runs.
 */
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#ifndef LOOP_WINDOWS
#include <sys/wait.h>
#endif

#include "transport.h"

#ifdef LOOP_WINDOWS
/* No such signals there; signal_child() says EOPNOTSUPP to every one. */
#define SIGKILL 9
#define SIGTERM 15
#endif

struct pipe_end {
        loop_subprocess_t *p;
        int index;                      /* 0, 1, 2: the child's descriptor */
        loop_transport_t *t;            /* a reference, or NULL once lost */
};

struct loop_subprocess {
        struct loop__close_hook hook;
        bool hooked;
        unsigned n_ref;
        loop_t *loop;
        struct loop_subprocess_protocol_ops ops;
        void *userdata;
        pid_t pid;
        bool exited;
        int returncode;
        bool made, lost;
        bool closed;
        bool orphan;                    /* its start failed: only the child handler still holds it */
        struct pipe_end pipes[3];
        unsigned n_pipes;               /* pipes not lost yet */
        loop_future_t *waiter;
};

LOOP_EXPORT loop_subprocess_t *loop_subprocess_ref(loop_subprocess_t *p) {
        if (p)
                p->n_ref++;
        return p;
}

LOOP_EXPORT loop_subprocess_t *loop_subprocess_unref(loop_subprocess_t *p) {
        if (p && --p->n_ref == 0) {
                if (p->hooked)
                        loop__remove_close_hook(p->loop, &p->hook);
                for (int i = 0; i < 3; i++)
                        loop_transport_unref(p->pipes[i].t);
                loop_future_unref(p->waiter);
                loop_unref(p->loop);
                free(p);
        }
        return NULL;
}

static void unref_discard(void *userdata) {
        loop_subprocess_unref(userdata);
}

static void report(loop_subprocess_t *p, const char *what, int r) {
        char msg[128];

        snprintf(msg, sizeof(msg), "Exception in callback %s of a subprocess protocol", what);
        loop__report(p->loop, msg, r, NULL, -1);
}

/* asyncio's _call_connection_lost: last, once. */
static void finish(loop_subprocess_t *p, int error) {
        if (p->lost)
                return;
        p->lost = true;
        if (p->hooked) {
                loop__remove_close_hook(p->loop, &p->hook);
                p->hooked = false;
        }
        if (p->waiter && !loop_future_done(p->waiter))
                (void) loop_future_cancel(p->waiter);
        if (p->made && p->ops.connection_lost) {
                int r = p->ops.connection_lost(p, error, p->userdata);
                if (r < 0)
                        report(p, "connection_lost", r);
        }
        loop_subprocess_unref(p);       /* its own */
}

static int finish_cb(loop_t *loop, void *userdata) {
        loop_subprocess_t *p = userdata;

        (void) loop;
        finish(p, 0);
        loop_subprocess_unref(p);
        return 0;
}

/* asyncio's _try_finish: the end once the child exited and the pipes ended. */
static void try_finish(loop_subprocess_t *p) {
        if (p->lost || !p->exited || p->n_pipes > 0)
                return;
        if (loop__call_soon_discard(p->loop, finish_cb, loop_subprocess_ref(p), unref_discard) < 0) {
                loop_subprocess_unref(p);
                finish(p, 0);
        }
}

/* ---- the pipes' protocol ---------------------------------------------------------- */

static int pipe_data(loop_transport_t *t, const void *data, size_t size, void *userdata) {
        struct pipe_end *e = userdata;
        loop_subprocess_t *p = e->p;

        (void) t;
        if (p->lost || !p->ops.pipe_data_received)
                return 0;
        int r = p->ops.pipe_data_received(p, e->index, data, size, p->userdata);
        if (r < 0)
                report(p, "pipe_data_received", r);
        return 0;
}

static int pipe_lost(loop_transport_t *t, int error, void *userdata) {
        struct pipe_end *e = userdata;
        loop_subprocess_t *p = e->p;

        (void) t;
        loop_subprocess_ref(p);
        if (!p->lost && p->made && p->ops.pipe_connection_lost) {
                int r = p->ops.pipe_connection_lost(p, e->index, error, p->userdata);
                if (r < 0)
                        report(p, "pipe_connection_lost", r);
        }
        p->n_pipes--;
        try_finish(p);
        loop_subprocess_unref(p);
        /* The pipe's own: loop_close() may have ended p before its pipes
         * (close hooks run newest first), and p must outlive them. */
        loop_subprocess_unref(p);
        return 0;
}

static const struct loop_protocol_ops pipe_protocol = {
        .size = sizeof(struct loop_protocol_ops),
        .data_received = pipe_data,
        .connection_lost = pipe_lost,
        /* eof_received NULL: a read pipe ends at EOF in any case. */
};

/* ---- the child ---------------------------------------------------------------------- */

static int signal_child(pid_t pid, int signum) {
#ifdef LOOP_WINDOWS
        (void) pid, (void) signum;
        return -EOPNOTSUPP;
#else
        return kill(pid, signum) < 0 ? -errno : 0;
#endif
}

static int child_exited(loop_t *loop, pid_t pid, int status, void *userdata) {
        loop_subprocess_t *p = userdata;

        (void) loop;
        (void) pid;
        if (p->orphan) {
                loop_subprocess_unref(p);       /* reaped: the last of it */
                return 0;
        }
#ifdef LOOP_WINDOWS
        p->returncode = status;
#else
        p->returncode = WIFSIGNALED(status) ? -WTERMSIG(status) : WEXITSTATUS(status);
#endif
        p->exited = true;
        loop_subprocess_ref(p);
        if (!p->lost && p->made && p->ops.process_exited) {
                int r = p->ops.process_exited(p, p->userdata);
                if (r < 0)
                        report(p, "process_exited", r);
        }
        /* Nobody reads the child's stdin any more: close it (asyncio
         * closes its pipes at the exit), flushing into EPIPE if bytes were
         * left. Where the loop cannot see a pipe's reader go (kqueue), the
         * subprocess would otherwise never end. Its stdout and stderr end
         * by themselves, at EOF, with nothing of the output lost. */
        if (p->pipes[0].t && !p->pipes[0].t->lost)
                (void) loop_transport_close(p->pipes[0].t);
        try_finish(p);
        loop_subprocess_unref(p);
        return 0;
}

static int made_cb(loop_t *loop, void *userdata) {
        loop_subprocess_t *p = userdata;

        (void) loop;
        if (!p->lost) {
                p->made = true;
                if (p->ops.connection_made) {
                        int r = p->ops.connection_made(p, p->userdata);
                        if (r < 0)
                                report(p, "connection_made", r);
                }
                if (p->waiter && !loop_future_done(p->waiter) &&
                    loop_future_set_result(p->waiter, loop_subprocess_ref(p), unref_discard) < 0)
                        loop_subprocess_unref(p);
                p->waiter = loop_future_unref(p->waiter);       /* it holds us: no cycle */
        }
        loop_subprocess_unref(p);
        return 0;
}

static void on_loop_close(loop_t *loop, struct loop__close_hook *hook) {
        loop_subprocess_t *p = (loop_subprocess_t *) hook;

        (void) loop;
        p->hooked = false;      /* off the list already */
        /* The loop that would reap the child goes: kill it, as close()
         * does, and reap it here (the child handler is going too, and it
         * never reaps behind our back: its threads wait with WNOWAIT), so
         * that no zombie is left. SIGKILL ends it promptly. */
        if (!p->exited) {
                p->exited = true;
                (void) signal_child(p->pid, SIGKILL);
#ifndef LOOP_WINDOWS
                int status;
                pid_t w;
                while ((w = waitpid(p->pid, &status, 0)) < 0 && errno == EINTR)
                        ;
                /* Reaped by the program itself meanwhile (ECHILD): asyncio
                 * reports 255 for a status it could not learn. */
                p->returncode = w < 0 ? 255 : WIFSIGNALED(status) ? -WTERMSIG(status) : WEXITSTATUS(status);
#endif
        }
        finish(p, -ECANCELED);
}

LOOP_EXPORT int loop_subprocess_exec(loop_t *loop, const struct loop_subprocess_protocol_ops *ops, void *userdata,
                                     const char *path, char *const argv[], char *const envp[],
                                     loop_future_t **ret) {
        loop_subprocess_t *p;
        loop_future_t *f;
        int fds[3] = { -1, -1, -1 };
        int r = loop__usable(loop);

        if (r < 0)
                return r;
        return_if_fail(ops && path && argv && ret, -EINVAL);
        return_if_fail(ops->size >= offsetof(struct loop_subprocess_protocol_ops, connection_made) + sizeof(void *),
                       -EINVAL);
        p = calloc(1, sizeof(*p));
        if (!p)
                return -ENOMEM;
        memcpy(&p->ops, ops, ops->size < sizeof(p->ops) ? ops->size : sizeof(p->ops));
        p->ops.size = sizeof(p->ops);
        p->userdata = userdata;
        p->n_ref = 1;           /* its own, until connection_lost */
        p->loop = loop_ref(loop);
        r = loop_create_future(loop, &f);
        if (r < 0) {
                loop_subprocess_unref(p);
                return r;
        }
        r = loop_spawn(loop, path, argv, envp, &p->pid, fds);
        if (r < 0) {
                loop_future_unref(f);
                loop_subprocess_unref(p);
                return r;
        }
        /* From here the child runs: every failure below still reaps it. */
        r = loop_add_child_handler(loop, p->pid, child_exited, p);
        bool handled = r >= 0;
        for (int i = 0; i < 3 && r >= 0; i++) {
                struct pipe_end *e = &p->pipes[i];
                struct loop__transport_args a = {
                        .fd = fds[i],
                        .ops = &pipe_protocol,
                        .userdata = e,
                        .kind = i == 0 ? LOOP__T_WRITE_PIPE : LOOP__T_READ_PIPE,
                        .lost_always = true,    /* pipe_lost lets go of p */
                };
                e->p = p;
                e->index = i;
                r = loop__transport_new_full(loop, &a, &e->t);
                if (r < 0)
                        break;
                loop_transport_ref(e->t);
                loop_subprocess_ref(p);         /* the pipe's, until its pipe_lost */
                fds[i] = -1;
                p->n_pipes++;
        }
        if (r >= 0)
                r = loop__call_soon_discard(loop, made_cb, loop_subprocess_ref(p), unref_discard);
        if (r < 0) {
                /* The pipes made end by themselves (no protocol call reaches
                 * the caller: made is false); the child is killed, and
                 * reaped by its handler, which keeps p until then. */
                p->lost = true;
                for (int i = 0; i < 3; i++) {
                        if (fds[i] >= 0)
                                loop__close_socket(fds[i]);
                        if (p->pipes[i].t)
                                (void) loop_transport_abort(p->pipes[i].t);
                }
                (void) signal_child(p->pid, SIGKILL);
                if (handled)
                        p->orphan = true;
                else {
#ifndef LOOP_WINDOWS
                        while (waitpid(p->pid, NULL, 0) < 0 && errno == EINTR)
                                ;
#endif
                        loop_subprocess_unref(p);
                }
                loop_future_unref(f);
                return r;
        }
        p->waiter = loop_future_ref(f);
        p->hook.fn = on_loop_close;
        loop__add_close_hook(loop, &p->hook);
        p->hooked = true;
        *ret = f;
        return 0;
}

LOOP_EXPORT pid_t loop_subprocess_get_pid(const loop_subprocess_t *p) {
        return p ? p->pid : -EINVAL;
}

LOOP_EXPORT int loop_subprocess_get_returncode(const loop_subprocess_t *p, int *returncode) {
        return_if_fail(p && returncode, -EINVAL);
        if (!p->exited)
                return 0;       /* asyncio: None */
        *returncode = p->returncode;
        return 1;
}

LOOP_EXPORT loop_transport_t *loop_subprocess_get_pipe_transport(const loop_subprocess_t *p, int fd) {
        if (!p || fd < 0 || fd > 2 || !p->pipes[fd].t || p->pipes[fd].t->lost_done)
                return NULL;
        return p->pipes[fd].t;
}

LOOP_EXPORT int loop_subprocess_send_signal(loop_subprocess_t *p, int signum) {
        return_if_fail(p, -EINVAL);
        /* asyncio: ProcessLookupError once the child is known to be gone
         * (its pid may be someone else's by now). */
        if (p->exited)
                return -ESRCH;
        return signal_child(p->pid, signum);
}

LOOP_EXPORT int loop_subprocess_terminate(loop_subprocess_t *p) {
        return loop_subprocess_send_signal(p, SIGTERM);
}

LOOP_EXPORT int loop_subprocess_kill(loop_subprocess_t *p) {
        return loop_subprocess_send_signal(p, SIGKILL);
}

LOOP_EXPORT int loop_subprocess_close(loop_subprocess_t *p) {
        return_if_fail(p, -EINVAL);
        if (p->closed)
                return 0;
        p->closed = true;
        for (int i = 0; i < 3; i++)
                if (p->pipes[i].t)
                        (void) loop_transport_close(p->pipes[i].t);
        /* asyncio's close(): a child still running is killed. */
        if (!p->exited)
                (void) signal_child(p->pid, SIGKILL);
        return 0;
}

LOOP_EXPORT int loop_subprocess_is_closing(const loop_subprocess_t *p) {
        return_if_fail(p, -EINVAL);
        return p->closed || p->lost;
}
