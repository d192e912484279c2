/* SPDX-License-Identifier: MIT */
/*
 * Child processes: loop_add_child_handler() and loop_spawn().
 *
 * The rule this file is built around: the loop reaps exactly the children
 * it was asked about, and no other. It never calls waitpid(-1) and never
 * installs a SIGCHLD handler, so a program (or another library) that waits
 * for its own children keeps working. That is the complaint users make of
 * libuv and uvloop, whose SIGCHLD handler reaps every child in sight.
 *
 * Two mechanisms, chosen per call at run time (asyncio's PidfdChildWatcher
 * and ThreadedChildWatcher):
 *
 * - pidfd (Linux 5.3+): pidfd_open(pid) gives a descriptor that polls
 *   readable once the process has exited; it is watched with an ordinary
 *   reader, and the reader reaps with waitid(P_PIDFD), which names the
 *   process by its descriptor, so even a recycled pid cannot be confused
 *   with ours. Linux 5.3 has pidfd_open but not P_PIDFD (5.4): there
 *   waitpid(pid, WNOHANG) reaps instead, which is as safe because a zombie's
 *   pid cannot be reused before it is reaped.
 *
 * - a kqueue per child (macOS, the BSDs: no pidfds there): a queue of its
 *   own with an EVFILT_PROC event for the child's exit (NOTE_EXIT), which
 *   polls readable once the child has exited, just as a pidfd does, and
 *   is watched and reaped the same way (waitpid(pid, WNOHANG)). It does
 *   not reap (the kernel only reports the exit), and it works on every
 *   selector, since a kqueue descriptor can itself be polled. macOS
 *   refuses a process that is already a zombie (ESRCH): a thread then
 *   finds it at once.
 *
 * - a waiter thread per child, when pidfd_open() fails with ENOSYS (old
 *   kernels, valgrind 3.19 and older) or EPERM (seccomp filters that refuse
 *   system calls they do not know), on systems without pidfds, when a
 *   select loop cannot watch the pidfd (fd >= FD_SETSIZE), and when the
 *   environment variable LIBLOOP_NO_PIDFD is set (read on every call, so a
 *   test can switch). The thread blocks in waitid(P_PID, pid, WEXITED |
 *   WNOWAIT): it learns that the child exited WITHOUT reaping it, and posts
 *   to the loop with loop_call_soon_threadsafe(); the loop's thread then
 *   reaps with waitpid(pid, WNOHANG), but only if the handler is still
 *   registered. So removing a handler or closing the loop never loses a
 *   child's status to a thread, and a zombie cannot be recycled while the
 *   post is in flight.
 *
 * A waiter thread cannot be interrupted (waitid has no timeout and we send
 * no signals), so loop_close() and loop_remove_child_handler() never join
 * one: the thread is detached and may outlive the handler and the loop.
 * Threads reach the loop through a per-loop mailbox that is reference
 * counted (the loop holds one reference, each thread one) and locked: a
 * thread posts only while the mailbox still names the loop, under the
 * mailbox's lock, and the close hook clears the name under the same lock,
 * so a late thread never touches a freed loop. The loop is closed (posts
 * fail with -ESHUTDOWN) before the hook runs; the lock order is always
 * mailbox lock, then the loop's ts_lock. A waiter whose child exited is
 * queued on the mailbox and one wake-up is posted for the whole queue.
 *
 * Both mechanisms give the callback waitpid()'s status word. A child that
 * somebody else reaped first (the program's own waitpid(), SIGCHLD set to
 * SIG_IGN) is reported to the exception handler and its callback gets exit
 * status 255, as asyncio does: a caller waiting for the callback must not
 * wait forever.
 *
 * loop_spawn() is posix_spawn() with the child's stdin, stdout and stderr
 * on fresh pipes; it does not watch the child (the caller adds a handler).
 *
 * In a fork child an inherited loop's handlers are dropped without any
 * system call on the parent's children (they are not the child's children)
 * and without waiting for the mailbox lock, which a parent thread may have
 * held at the time of the fork: it is only tried, and the mailbox leaked
 * if it is taken.
 */
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#ifdef HAVE_PTHREAD_NP_H
#include <pthread_np.h>
#endif
#ifdef HAVE_PIDFD
#include <sys/syscall.h>
#elif defined(ENABLE_KQUEUE)
#include <sys/types.h>
#include <sys/event.h>
#include <sys/time.h>
#define CHILD_KQUEUE 1
#endif
#ifdef __APPLE__
/* A shared library on macOS cannot link against environ directly. */
#include <crt_externs.h>
#define environ (*_NSGetEnviron())
#endif

#include "internal.h"

/* A pidfd is Linux's (configure's HAVE_PIDFD: SYS_pidfd_open); waitid's
 * P_PIDFD (idtype 3) came with Linux 5.4 and is missing from older C
 * library headers. */
#ifdef HAVE_PIDFD
#define CHILD_P_PIDFD ((idtype_t) 3)
#endif

/* The status word of a child that exited with status 255. */
#define STATUS_UNKNOWN (255 << 8)

struct child_mailbox;

/* One waiter thread's state. Owned by the thread until it queues it on
 * the mailbox, then by the loop (or by the close hook). */
struct child_waiter {
        struct child_waiter *next;      /* in the mailbox's done queue */
        struct child_mailbox *mailbox;  /* the thread's reference */
        pid_t pid;
};

/* Shared by the loop and its waiter threads. */
struct child_mailbox {
        unsigned n_ref;                 /* atomic: the loop's and one per thread */
        pthread_mutex_t lock;
        loop_t *loop;                   /* under lock: NULL once the loop closed */
        struct child_waiter *done;      /* under lock: waiters whose child exited, FIFO */
        struct child_waiter **done_tail;
        bool post_pending;              /* under lock: a wake-up is on its way to the loop */
};

struct child_watch {
        struct child_watch *next;
        pid_t pid;
        loop_child_callback_t cb;
        void *userdata;
        int pidfd;                      /* pidfd mechanism: watched with a reader; else -1 */
        /* Thread mechanism: the waiter serving this watch. Compared, never
         * dereferenced: the thread owns it until it reports the exit. */
        const struct child_waiter *waiter;
};

struct loop__children {
        struct loop__close_hook hook;   /* first: the hook leads to the state */
        struct child_watch *watches;    /* a list: a loop watches a handful of children */
        struct child_mailbox *mailbox;  /* created with the first waiter thread */
};

#ifdef HAVE_PIDFD
/* Set once pidfd_open() turned out not to exist here: no more tries. */
static bool pidfd_unavailable;
#endif

/* ---- reaping ---------------------------------------------------------- */

#ifdef HAVE_PIDFD
/* waitid() describes the exit in a siginfo; callers want the status word.
 * This is the encoding of every Unix: exit code in bits 8-15, signal in
 * the low 7 bits, 0x80 for a core dump. */
static int status_from_siginfo(const siginfo_t *info) {
        switch (info->si_code) {
        case CLD_EXITED:
                return (info->si_status & 0xff) << 8;
        case CLD_DUMPED:
                return (info->si_status & 0x7f) | 0x80;
        default:        /* CLD_KILLED; WEXITED reports nothing else */
                return info->si_status & 0x7f;
        }
}
#endif

/*
 * Reaps the watched child, which is known to have exited (its pidfd polled
 * readable, or its waiter thread saw it): 0 and *status; -EAGAIN if
 * waitid(P_PIDFD) says it is running after all; -ECHILD if somebody else
 * reaped it; another negative errno on failure.
 */
static int reap(const struct child_watch *w, int *status) {
        int r;

#ifdef HAVE_PIDFD
        if (w->pidfd >= 0) {
                siginfo_t info;

                memset(&info, 0, sizeof(info));
                do
                        r = waitid(CHILD_P_PIDFD, (id_t) w->pidfd, &info, WEXITED | WNOHANG);
                while (r < 0 && errno == EINTR);
                if (r == 0) {
                        if (info.si_pid == 0)
                                return -EAGAIN;
                        *status = status_from_siginfo(&info);
                        return 0;
                }
                /* EINVAL: Linux 5.3, pidfds without P_PIDFD. The child is a
                 * zombie (its pidfd polled readable), so its pid is still its own. */
                if (errno != EINVAL)
                        return -errno;
        }
#endif
        do
                r = waitpid(w->pid, status, WNOHANG);
        while (r < 0 && errno == EINTR);
        if (r < 0)
                return -errno;
        /* We only get here once the child is known to have exited; still
         * running means the pid was reaped elsewhere and reused. */
        if (r == 0)
                return -ECHILD;
        return 0;
}

/* ---- the watch list --------------------------------------------------- */

static struct child_watch **find_watch(struct loop__children *c, pid_t pid) {
        struct child_watch **p;

        for (p = &c->watches; *p; p = &(*p)->next)
                if ((*p)->pid == pid)
                        break;
        return p;
}

/* Frees an unlinked watch and its pidfd; the child itself is left alone. */
static void watch_free(loop_t *loop, struct child_watch *w) {
        if (w->pidfd >= 0) {
                /* Not on a closed loop: the selector drops the reader itself. */
                if (!loop->closed)
                        loop_remove_reader(loop, w->pidfd);
                close(w->pidfd);
        }
        free(w);
}

static void watch_unlink(struct loop__children *c, struct child_watch *w) {
        for (struct child_watch **p = &c->watches; *p; p = &(*p)->next)
                if (*p == w) {
                        *p = w->next;
                        return;
                }
}

/*
 * The child of w has exited: reap it, forget the watch and run the
 * callback. The watch goes first, so the callback may add a handler for
 * a new child that happens to get the same pid.
 */
static void finish(loop_t *loop, struct loop__children *c, struct child_watch *w) {
        loop_child_callback_t cb = w->cb;
        void *userdata = w->userdata;
        pid_t pid = w->pid;
        int status = 0, r;

        r = reap(w, &status);
        if (r == -EAGAIN)
                return;         /* P_PIDFD says it is still running: keep watching */
        watch_unlink(c, w);
        watch_free(loop, w);
        if (r < 0) {
                /* Collected behind our back (waitpid elsewhere, SIGCHLD
                 * ignored). asyncio reports it and says 255; so do we. */
                loop__report(loop, "Child process exit status already collected", r, NULL, -1);
                status = STATUS_UNKNOWN;
        }
        r = cb(loop, pid, status, userdata);
        if (r < 0)
                loop__report(loop, "Exception in callback", r, NULL, -1);
}

/* ---- the pidfd (or kqueue) mechanism ---------------------------------- */

static int on_pidfd(loop_t *loop, int fd, void *userdata) {
        (void) fd;
        finish(loop, loop->children, userdata);
        return 0;
}

/* A pidfd for pid (a kqueue watching its exit where kqueue exists), or a
 * negative errno (-ENOSYS: use a thread). */
static int open_pidfd(pid_t pid) {
#ifdef HAVE_PIDFD
        if (__atomic_load_n(&pidfd_unavailable, __ATOMIC_RELAXED))
                return -ENOSYS;
        /* Close-on-exec by definition. */
        int fd = (int) syscall(SYS_pidfd_open, pid, 0);
        if (fd >= 0)
                return fd;
        if (errno == ENOSYS || errno == EPERM) {
                __atomic_store_n(&pidfd_unavailable, true, __ATOMIC_RELAXED);
                return -ENOSYS;
        }
        /* Reaped by another thread since we checked: no child of ours. */
        if (errno == ESRCH)
                return -ECHILD;
        return -errno;
#elif defined(CHILD_KQUEUE)
        struct kevent ev;
        int kq = kqueue();

        if (kq < 0)
                return -errno;
        (void) fcntl(kq, F_SETFD, FD_CLOEXEC);
        EV_SET(&ev, (uintptr_t) pid, EVFILT_PROC, EV_ADD, NOTE_EXIT, 0, 0);
        if (kevent(kq, &ev, 1, NULL, 0, NULL) < 0) {
                int r = errno;
                close(kq);
                /* A zombie already (macOS): the thread sees it at once. */
                return r == ESRCH ? -ENOSYS : -r;
        }
        return kq;
#else
        (void) pid;
        return -ENOSYS;
#endif
}

/* ---- the thread mechanism --------------------------------------------- */

static void mailbox_unref(struct child_mailbox *mb) {
        if (__atomic_sub_fetch(&mb->n_ref, 1, __ATOMIC_ACQ_REL) > 0)
                return;
        /* The last one out: the loop closed (its hook emptied the queue)
         * and every thread has queued or freed its waiter. */
        pthread_mutex_destroy(&mb->lock);
        free(mb);
}

/* In the loop's thread, woken by a waiter thread: handles every child
 * that exited since the last time. */
static int on_mailbox(loop_t *loop, void *userdata) {
        struct loop__children *c = loop->children;
        struct child_mailbox *mb = c->mailbox;
        struct child_waiter *list;

        (void) userdata;
        pthread_mutex_lock(&mb->lock);
        list = mb->done;
        mb->done = NULL;
        mb->done_tail = &mb->done;
        mb->post_pending = false;
        pthread_mutex_unlock(&mb->lock);

        while (list) {
                struct child_waiter *waiter = list;
                struct child_watch *w;

                list = waiter->next;
                /* A removed (or replaced-after-removal) handler no longer
                 * names this waiter: then the child is not ours to reap. */
                for (w = c->watches; w; w = w->next)
                        if (w->waiter == waiter)
                                break;
                free(waiter);
                if (w)
                        finish(loop, c, w);
        }
        return 0;
}

static void sleep_ms(long ms) {
        struct timespec ts = { .tv_sec = 0, .tv_nsec = ms * 1000000L };

        while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
                ;
}

/* In the waiter thread: queue the waiter for the loop and wake the loop. */
static void mailbox_deliver(struct child_mailbox *mb, struct child_waiter *waiter) {
        pthread_mutex_lock(&mb->lock);
        if (!mb->loop) {
                /* The loop closed: nobody wants to hear it. */
                pthread_mutex_unlock(&mb->lock);
                free(waiter);
                return;
        }
        waiter->next = NULL;
        *mb->done_tail = waiter;
        mb->done_tail = &waiter->next;
        /* From here on the waiter is the loop's (or the close hook's). */

        for (;;) {
                int r = 0;

                /* Posting under the lock: the close hook cannot clear
                 * mb->loop, let alone free the loop, while we use it. */
                if (mb->loop && !mb->post_pending) {
                        r = loop_call_soon_threadsafe(mb->loop, on_mailbox, NULL, NULL);
                        if (r >= 0)
                                mb->post_pending = true;
                }
                pthread_mutex_unlock(&mb->lock);
                /* -ESHUTDOWN: the loop is closing, its hook frees the queue. */
                if (r != -ENOMEM)
                        return;
                sleep_ms(10);
                pthread_mutex_lock(&mb->lock);
        }
}

static void *waiter_main(void *arg) {
        struct child_waiter *waiter = arg;
        struct child_mailbox *mb = waiter->mailbox;
        siginfo_t info;
        int r;

        /* For ps and debuggers (and the tests, which count us). */
#if defined(HAVE_PTHREAD_SETNAME_NP)
        pthread_setname_np(pthread_self(), "libloop-child");
#elif defined(HAVE_PTHREAD_SETNAME_NP_SELF)
        pthread_setname_np("libloop-child");   /* macOS: names the calling thread */
#endif
        /* WNOWAIT: learn that it exited, leave the reaping to the loop.
         * ECHILD (reaped elsewhere) ends the wait too: the loop finds out. */
        do
                r = waitid(P_PID, (id_t) waiter->pid, &info, WEXITED | WNOWAIT);
        while (r < 0 && errno == EINTR);
        mailbox_deliver(mb, waiter);
        mailbox_unref(mb);
        return NULL;
}

static int mailbox_get(loop_t *loop, struct loop__children *c, struct child_mailbox **ret) {
        struct child_mailbox *mb = c->mailbox;

        if (!mb) {
                mb = calloc(1, sizeof(*mb));
                if (!mb)
                        return -ENOMEM;
                mb->n_ref = 1;
                mb->loop = loop;
                mb->done_tail = &mb->done;
                pthread_mutex_init(&mb->lock, NULL);
                c->mailbox = mb;
        }
        *ret = mb;
        return 0;
}

static int start_waiter(loop_t *loop, struct loop__children *c, struct child_watch *w) {
        struct child_mailbox *mb;
        struct child_waiter *waiter;
        pthread_attr_t attr;
        pthread_t thread;
        sigset_t all, old;
        size_t stack = 64 * 1024;
        long min;
        int r;

        r = mailbox_get(loop, c, &mb);
        if (r < 0)
                return r;
        waiter = calloc(1, sizeof(*waiter));
        if (!waiter)
                return -ENOMEM;
        waiter->pid = w->pid;
        waiter->mailbox = mb;
        __atomic_add_fetch(&mb->n_ref, 1, __ATOMIC_RELAXED);

        r = -pthread_attr_init(&attr);
        if (r < 0)
                goto fail;
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        /* The thread only waits: a small stack keeps many children cheap. */
        min = sysconf(_SC_THREAD_STACK_MIN);
        if (min > 0 && stack < (size_t) min)
                stack = (size_t) min;
        pthread_attr_setstacksize(&attr, stack);
        /* Signals are the program's business: none is delivered to our thread. */
        sigfillset(&all);
        pthread_sigmask(SIG_SETMASK, &all, &old);
        r = -pthread_create(&thread, &attr, waiter_main, waiter);
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        pthread_attr_destroy(&attr);
        if (r < 0)
                goto fail;
        w->waiter = waiter;
        return 0;

fail:
        __atomic_sub_fetch(&mb->n_ref, 1, __ATOMIC_RELAXED);
        free(waiter);
        return r;
}

/* ---- per-loop state and close ----------------------------------------- */

static void children_close(loop_t *loop, struct loop__close_hook *hook) {
        struct loop__children *c = (struct loop__children *) hook;
        struct child_mailbox *mb = c->mailbox;

        /* Handlers go, children stay: whoever wants them may still wait. */
        while (c->watches) {
                struct child_watch *w = c->watches;
                c->watches = w->next;
                watch_free(loop, w);
        }
        if (mb && loop__inherited(loop)) {
                /* Fork child: the threads stayed in the parent, and one may
                 * have held the lock when it forked. Free only what is
                 * provably consistent; the rest is a small, one-off leak. */
                if (pthread_mutex_trylock(&mb->lock) == 0) {
                        while (mb->done) {
                                struct child_waiter *waiter = mb->done;
                                mb->done = waiter->next;
                                free(waiter);
                        }
                        pthread_mutex_unlock(&mb->lock);
                        pthread_mutex_destroy(&mb->lock);
                        free(mb);
                }
        } else if (mb) {
                struct child_waiter *list;

                pthread_mutex_lock(&mb->lock);
                mb->loop = NULL;
                list = mb->done;
                mb->done = NULL;
                mb->done_tail = &mb->done;
                pthread_mutex_unlock(&mb->lock);
                while (list) {
                        struct child_waiter *waiter = list;
                        list = waiter->next;
                        free(waiter);
                }
                /* Threads still waiting keep the mailbox; the last one frees it. */
                mailbox_unref(mb);
        }
        free(c);
        loop->children = NULL;
}

static int children_get(loop_t *loop, struct loop__children **ret) {
        if (!loop->children) {
                struct loop__children *c = calloc(1, sizeof(*c));
                if (!c)
                        return -ENOMEM;
                c->hook.fn = children_close;
                loop__add_close_hook(loop, &c->hook);
                loop->children = c;
        }
        *ret = loop->children;
        return 0;
}

/* ---- public API ------------------------------------------------------- */

/* 0 if pid is a child of this process (running or a zombie), else -ECHILD.
 * pidfd_open() would accept any process, so ask wait itself, without
 * reaping. */
static int check_child(pid_t pid) {
        siginfo_t info;
        int r;

        memset(&info, 0, sizeof(info));
        do
                r = waitid(P_PID, (id_t) pid, &info, WEXITED | WNOHANG | WNOWAIT);
        while (r < 0 && errno == EINTR);
        return r < 0 ? -errno : 0;
}

static int watch_start(loop_t *loop, struct loop__children *c, struct child_watch *w) {
        if (!loop__getenv_bool("LIBLOOP_NO_PIDFD")) {
                int fd = open_pidfd(w->pid);

                if (fd >= 0) {
                        int r = loop_add_reader(loop, fd, on_pidfd, w);
                        if (r >= 0) {
                                w->pidfd = fd;
                                return 0;
                        }
                        close(fd);
                        /* A select loop and a pidfd above FD_SETSIZE: a thread still works. */
                        if (r != -ERANGE)
                                return r;
                } else if (fd != -ENOSYS)
                        return fd;
        }
        return start_waiter(loop, c, w);
}

LOOP_EXPORT int loop_add_child_handler(loop_t *loop, pid_t pid, loop_child_callback_t cb, void *userdata) {
        struct loop__children *c;
        struct child_watch *w;
        int r = loop__usable(loop);

        if (r < 0)
                return r;
        return_if_fail(pid > 0 && cb, -EINVAL);
        r = check_child(pid);
        if (r < 0)
                return r;
        r = children_get(loop, &c);
        if (r < 0)
                return r;

        w = *find_watch(c, pid);
        if (w) {
                /* asyncio's add_child_handler replaces, too. */
                w->cb = cb;
                w->userdata = userdata;
                return 0;
        }

        w = calloc(1, sizeof(*w));
        if (!w)
                return -ENOMEM;
        *w = (struct child_watch) {
                .pid = pid,
                .cb = cb,
                .userdata = userdata,
                .pidfd = -1,
        };
        r = watch_start(loop, c, w);
        if (r < 0) {
                free(w);
                return r;
        }
        w->next = c->watches;
        c->watches = w;
        return 0;
}

LOOP_EXPORT int loop_remove_child_handler(loop_t *loop, pid_t pid) {
        struct child_watch **p, *w;
        int r = loop__usable(loop);

        if (r < 0)
                return r;
        return_if_fail(pid > 0, -EINVAL);
        if (!loop->children)
                return 0;
        p = find_watch(loop->children, pid);
        if (!(w = *p))
                return 0;
        *p = w->next;
        /* A waiter thread keeps waiting; when the child exits, the loop
         * finds no handler naming it and leaves the child unreaped. */
        watch_free(loop, w);
        return 1;
}

/* ---- spawning ---------------------------------------------------------- */

static void close_fd(int *fd) {
        if (*fd >= 0) {
                close(*fd);
                *fd = -1;
        }
}

static int make_pipe(int p[2]) {
        if (loop__pipe_cloexec(p, false) < 0)
                return -errno;
        /* Keep every pipe end off 0, 1 and 2 (a parent started with a
         * closed stdin gets fd 0 here): the child's dup2() onto 0-2 would
         * otherwise overwrite one end with another, or be a dup2(fd, fd)
         * that leaves close-on-exec set on some systems. */
        for (int i = 0; i < 2; i++)
                if (p[i] <= STDERR_FILENO) {
                        int fd = fcntl(p[i], F_DUPFD_CLOEXEC, STDERR_FILENO + 1);
                        if (fd < 0) {
                                int r = -errno;
                                close_fd(&p[0]);
                                close_fd(&p[1]);
                                return r;
                        }
                        close(p[i]);
                        p[i] = fd;
                }
        return 0;
}

static int set_nonblock(int fd) {
        int flags = fcntl(fd, F_GETFL);

        if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0)
                return -errno;
        return 0;
}

LOOP_EXPORT int loop_spawn(loop_t *loop, const char *path, char *const argv[], char *const envp[], pid_t *pid,
                           int fds[3]) {
        /* pipes[i][child_end[i]] becomes the child's descriptor i; the other end is ours. */
        static const int child_end[3] = { 0, 1, 1 };
        int pipes[3][2] = { { -1, -1 }, { -1, -1 }, { -1, -1 } };
        posix_spawn_file_actions_t actions, *actionsp = NULL;
        posix_spawnattr_t attr;
        bool attr_ready = false;
        sigset_t set;
        pid_t child;
        int r = loop__usable(loop);

        if (r < 0)
                return r;
        return_if_fail(path && argv && pid, -EINVAL);

        if (fds) {
                r = -posix_spawn_file_actions_init(&actions);
                if (r < 0)
                        return r;
                actionsp = &actions;
                for (int i = 0; i < 3; i++) {
                        r = make_pipe(pipes[i]);
                        if (r < 0)
                                goto finish;
                        /* Non-blocking for the loop; the child's end stays blocking
                         * (the flag is per open file, which dup2 shares). */
                        r = set_nonblock(pipes[i][!child_end[i]]);
                        if (r < 0)
                                goto finish;
                        /* dup2 clears close-on-exec on the copy; the originals close at exec. */
                        r = -posix_spawn_file_actions_adddup2(&actions, pipes[i][child_end[i]], i);
                        if (r < 0)
                                goto finish;
                }
        }

        r = -posix_spawnattr_init(&attr);
        if (r < 0)
                goto finish;
        attr_ready = true;
        /* The child starts clean: no signal blocked (a signalfd-based
         * handler blocks them in the parent), and SIGPIPE and SIGXFSZ back
         * to their defaults if the parent ignores them (Python's
         * restore_signals). Handled signals revert at exec anyway. */
        sigemptyset(&set);
        r = -posix_spawnattr_setsigmask(&attr, &set);
        if (r < 0)
                goto finish;
        sigaddset(&set, SIGPIPE);
#ifdef SIGXFSZ
        sigaddset(&set, SIGXFSZ);
#endif
        r = -posix_spawnattr_setsigdefault(&attr, &set);
        if (r < 0)
                goto finish;
        r = -posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
        if (r < 0)
                goto finish;

        if (strchr(path, '/'))
                r = -posix_spawn(&child, path, actionsp, &attr, argv, envp ? envp : environ);
        else
                r = -posix_spawnp(&child, path, actionsp, &attr, argv, envp ? envp : environ);
        if (r < 0)
                goto finish;

        *pid = child;
        if (fds)
                for (int i = 0; i < 3; i++) {
                        fds[i] = pipes[i][!child_end[i]];
                        pipes[i][!child_end[i]] = -1;
                }
        r = 0;

finish:
        /* The child's ends always go (it has its copies); ours only on failure. */
        for (int i = 0; i < 3; i++) {
                close_fd(&pipes[i][0]);
                close_fd(&pipes[i][1]);
        }
        if (attr_ready)
                posix_spawnattr_destroy(&attr);
        if (actionsp)
                posix_spawn_file_actions_destroy(actionsp);
        return r;
}
