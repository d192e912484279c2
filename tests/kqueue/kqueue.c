/* SPDX-License-Identifier: MIT */
/*
 * A test-only emulation of FreeBSD's kqueue(2) and kevent(2) on Linux, so
 * that libloop's kqueue selector can be compiled and tested here. Written
 * from the kevent(2) manual page; tests/kqueue/README lists what is and
 * what is not emulated.
 *
 * Design:
 * - The kqueue descriptor IS an epoll instance, so that it polls readable
 *   the way a BSD kqueue does (libloop hands it out: loop_fileno). Closing
 *   it must release everything, as on BSD, and Linux says nothing when a
 *   descriptor is closed: so a queue owns no other descriptor of its own.
 *   What it registers is either the program's descriptors or a few
 *   eventfds of the emulation's, made when the library is loaded and kept
 *   for good: an identity one (registered in every queue, never written:
 *   EPOLL_CTL_MOD on it tells whether a number still is one of our
 *   queues), an always-readable one registered in a queue while a child's
 *   exit is pending (EVFILT_PROC: a helper thread looks at the children),
 *   and a pool of wake-up ones lent to the queues that need one
 *   (EVFILT_USER, EVFILT_SIGNAL, events epoll cannot watch). Past the pool
 *   a queue makes its own, closed when the queue is found gone (at the
 *   next kqueue() or kevent() call).
 * - close() of a watched descriptor: kcmp(KCMP_EPOLL_TFD) tells whether
 *   the number still names the file epoll registered (fdrec_check()).
 * - Epoll only says "look at this again"; what is reported is computed at
 *   each kevent() with poll(2), ioctl(2), fstat(2), waitid(WNOWAIT). The
 *   events to look at sit on an "active" list.
 * - A watched descriptor has one epoll registration. Level-triggered
 *   events (the default) use EPOLLONESHOT, re-armed after each look: the
 *   epoll instance then reflects the descriptor's state exactly (drained
 *   data makes the queue quiet again), and a registration epoll keeps for
 *   a file closed behind our back (a dup of it lives on, EPOLL_CTL_DEL can
 *   no longer reach it) fires at most once more. A descriptor that epoll
 *   reports while nothing is to be reported (EVFILT_READ on a pipe's write
 *   end whose reader left: EPOLLERR for good) is registered edge-triggered
 *   until something changes, instead of waking us again and again.
 *   EV_CLEAR needs edges: a descriptor with an EV_CLEAR event is
 *   registered edge-triggered, and its events stay on the active list.
 * - The wake-up eventfd is raised when kevent() leaves events pending that
 *   epoll does not show (EVFILT_USER triggered, signals counted), by a
 *   trigger from another thread and by the signal handler.
 * - fork(): a pthread_atfork child handler closes every queue and forgets
 *   it (FreeBSD does not pass a queue to a fork child), puts back the
 *   signal dispositions, and replaces the emulation's eventfds with fresh
 *   ones at the same numbers.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <linux/kcmp.h>
#include <linux/sockios.h>

#include "sys/event.h"

#define EMU_EXPORT __attribute__((visibility("default")))

/* epoll_data.u64: kind in the top 2 bits, a generation, an index. */
#define TAG_OWN UINT64_C(0)             /* identity and wake-up eventfds */
#define TAG_FD UINT64_C(1)
#define TAG_PROC UINT64_C(2)
#define TAG(kind, gen, idx) (((uint64_t) (kind) << 62) | (((uint64_t) (gen) & 0x3fffffff) << 32) | (uint32_t) (idx))
#define TAG_KIND(t) ((t) >> 62)
#define TAG_GEN(t) ((uint32_t) (((t) >> 32) & 0x3fffffff))
#define TAG_IDX(t) ((uint32_t) (t))

/* Wake-up eventfds made at load time (see the top comment). */
#define POOL_SIZE 16
/* Queues that may watch signals at once. */
#define SIGW_MAX 1024
/* How often a blocked kevent() looks again at what epoll cannot watch:
 * regular files, processes that are not our children (ms). */
#define RECHECK_MS 20

/* The flags an event keeps from its EV_ADD. */
#define KEPT_FLAGS (EV_ONESHOT | EV_CLEAR | EV_RECEIPT | EV_DISPATCH)

enum fd_kind { FK_REG, FK_FIFO, FK_SOCK, FK_OTHER };

struct knote {
        struct kevent kev;      /* ident, filter, kept flags, fflags, data, udata */
        bool disabled;
        bool deleted;           /* on the graveyard, freed at the end of the call */
        bool in_act;
        bool always;            /* stays on the active list (nothing wakes us) */
        bool last_ready;        /* for always-events: true at the last look */
        bool fresh;             /* put on the active list, not looked at since */
        size_t act_pos;
        struct knote *next;     /* others list, or graveyard */
        /* EVFILT_READ/WRITE */
        struct fdrec *rec;
        int64_t last_data;      /* EV_CLEAR on an always-event: what was reported */
        bool reported;          /* last_data is set */
        /* EVFILT_USER */
        bool triggered;
        /* EVFILT_SIGNAL */
        uint64_t sig_seen;
        /* EVFILT_PROC */
        bool child;             /* a child of ours: the helper thread wakes us */
};

struct fdrec {
        int fd;
        uint32_t gen;
        dev_t dev;
        ino_t ino;
        enum fd_kind kind;
        bool epollable;
        uint32_t reg;           /* the registered epoll events, 0: none yet */
        bool armed;             /* EPOLLONESHOT: not consumed since the last arming */
        bool quiet;             /* reported with nothing to report: edge-triggered */
        bool touched;           /* on the queue's touched list */
        bool fired;             /* an event of it was ready in this call */
        struct knote *kn[2];    /* [0] EVFILT_READ, [1] EVFILT_WRITE */
};

struct kq {
        int fd;                 /* the epoll instance handed out */
        int wakefd;             /* -1 until needed */
        bool wake_pooled;
        int n_child;            /* EVFILT_PROC events on children */
        bool had_child;         /* g_proc_fd may be registered */
        uint64_t serial;        /* unique: the memory of a freed queue may come back */
        int sigw;               /* slot in g_sigw, -1: none */
        bool dead;              /* left the table; freed at refs == 0 */
        int refs;               /* under g_lock */
        pthread_mutex_t lock;
        struct fdrec **fds;     /* by descriptor number */
        size_t n_fds;
        size_t n_recs;
        int *touched;           /* descriptors epoll reported in this call */
        size_t n_touched, cap_touched;
        struct knote *others;   /* EVFILT_USER, SIGNAL, PROC */
        struct knote **act;
        size_t n_act, cap_act;
        struct knote *graveyard;
        size_t sweep_next;      /* where sweep_closed() goes on */
};

/* ---- global state ------------------------------------------------------ */

/*
 * Lock order: g_lock, a queue's lock, g_sig_lock, g_pool_lock, g_proc_lock
 * (the order atfork_prepare takes them in).
 */
static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static struct kq **g_kqs;       /* by descriptor number, under g_lock */
static size_t g_n_kqs;
static atomic_uint g_gen;
static uint64_t g_serial;       /* under g_lock */
static pthread_once_t g_once = PTHREAD_ONCE_INIT;

static pthread_mutex_t g_pool_lock = PTHREAD_MUTEX_INITIALIZER;
static int g_pool[POOL_SIZE];
static bool g_pool_used[POOL_SIZE];
static int g_ident_fd = -1;     /* in every queue, never written */
static int g_proc_fd = -1;      /* always readable: registered in a queue while a child's exit is pending */

/* Signals: under g_sig_lock, except what the handler reads (atomics). */
static pthread_mutex_t g_sig_lock = PTHREAD_MUTEX_INITIALIZER;
static int g_sig_watchers[NSIG];        /* EVFILT_SIGNAL events */
static struct sigaction g_sig_saved[NSIG];
static atomic_int g_sig_installed;      /* signals with our handler */
static atomic_uint_fast64_t g_sig_count[NSIG];
static struct {
        atomic_int fd;
        atomic_uint_fast64_t mask; /* bit sig - 1 */
} g_sigw[SIGW_MAX];
static atomic_int g_sigw_hi;            /* slots in use are below */
static atomic_int g_handlers_running;
static atomic_uint g_sig_caught;        /* the program's handler was called */
static atomic_uint g_sig_ignored;       /* only counted (SIG_IGN, SIG_DFL) */

/* ---- small helpers ------------------------------------------------------ */

static void fd_drain(int fd) {
        uint64_t v;

        while (read(fd, &v, sizeof(v)) < 0 && errno == EINTR)
                ;
}

static void fd_raise(int fd) {
        uint64_t one = 1;

        while (write(fd, &one, sizeof(one)) < 0 && errno == EINTR)
                ;
}

static int64_t now_ns(void) {
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (int64_t) ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static uint64_t sig_bit(int sig) {
        return (uint64_t) 1 << (sig - 1);
}

/* Whether descriptor kq->fd still is this queue's epoll instance. */
static bool kq_alive(struct kq *kq) {
        struct epoll_event ev = {.events = 0, .data.u64 = TAG(TAG_OWN, 0, 0)};

        return epoll_ctl(kq->fd, EPOLL_CTL_MOD, g_ident_fd, &ev) == 0;
}

/* ---- the active list ---------------------------------------------------- */

static void act_add(struct kq *kq, struct knote *kn) {
        if (kn->in_act || kn->deleted || kn->disabled)
                return;
        if (kq->n_act == kq->cap_act) {
                size_t cap = kq->cap_act ? 2 * kq->cap_act : 16;
                struct knote **a = realloc(kq->act, cap * sizeof(*a));
                if (!a)
                        abort(); /* a test emulation: no half-done states */
                kq->act = a;
                kq->cap_act = cap;
        }
        kn->act_pos = kq->n_act;
        kq->act[kq->n_act++] = kn;
        kn->in_act = true;
        kn->fresh = true;
}

/* Lazy: the entry is dropped by act_compact(). */
static void act_remove(struct knote *kn) {
        kn->in_act = false;
}

static bool act_valid(struct kq *kq, size_t i) {
        struct knote *kn = kq->act[i];

        return kn->in_act && !kn->deleted && kn->act_pos == i;
}

static void act_compact(struct kq *kq) {
        size_t j = 0;

        for (size_t i = 0; i < kq->n_act; i++) {
                if (!act_valid(kq, i))
                        continue;
                kq->act[j] = kq->act[i];
                kq->act[j]->act_pos = j;
                j++;
        }
        kq->n_act = j;
}

/* Moves a still-active event to the end: no event starves the others. */
static void act_requeue(struct kq *kq, struct knote *kn) {
        kn->in_act = false;
        act_add(kq, kn);
}

/* ---- the wake-up eventfd ------------------------------------------------ */

/* Gives kq a wake-up eventfd if it has none; an errno value or 0. */
static int wake_need(struct kq *kq) {
        struct epoll_event ev = {.events = EPOLLIN, .data.u64 = TAG(TAG_OWN, 0, 0)};
        int fd = -1;
        bool pooled = false;

        if (kq->wakefd >= 0)
                return 0;
        pthread_mutex_lock(&g_pool_lock);
        for (int i = 0; i < POOL_SIZE; i++) {
                if (!g_pool_used[i] && g_pool[i] >= 0) {
                        g_pool_used[i] = true;
                        fd = g_pool[i];
                        pooled = true;
                        break;
                }
        }
        pthread_mutex_unlock(&g_pool_lock);
        if (fd < 0 && (fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) < 0)
                return errno;
        fd_drain(fd);
        if (epoll_ctl(kq->fd, EPOLL_CTL_ADD, fd, &ev) < 0) {
                int r = errno;
                if (pooled) {
                        pthread_mutex_lock(&g_pool_lock);
                        for (int i = 0; i < POOL_SIZE; i++)
                                if (g_pool[i] == fd)
                                        g_pool_used[i] = false;
                        pthread_mutex_unlock(&g_pool_lock);
                } else {
                        close(fd);
                }
                return r;
        }
        kq->wakefd = fd;
        kq->wake_pooled = pooled;
        return 0;
}

static void wake_put(struct kq *kq) {
        if (kq->wakefd < 0)
                return;
        if (kq->wake_pooled) {
                fd_drain(kq->wakefd);
                pthread_mutex_lock(&g_pool_lock);
                for (int i = 0; i < POOL_SIZE; i++)
                        if (g_pool[i] == kq->wakefd)
                                g_pool_used[i] = false;
                pthread_mutex_unlock(&g_pool_lock);
        } else {
                /* A signal handler may be writing to it: let it finish. */
                while (atomic_load(&g_handlers_running) > 0)
                        sched_yield();
                close(kq->wakefd);
        }
        kq->wakefd = -1;
}

/* ---- signals ------------------------------------------------------------ */

static void emu_sig_handler(int sig, siginfo_t *si, void *uc) {
        int saved_errno = errno;
        struct sigaction *sa = &g_sig_saved[sig];
        uint64_t bit = sig_bit(sig);
        int hi;

        atomic_fetch_add(&g_handlers_running, 1);
        atomic_fetch_add(&g_sig_count[sig], 1);
        hi = atomic_load(&g_sigw_hi);
        for (int i = 0; i < hi; i++) {
                if (atomic_load(&g_sigw[i].mask) & bit) {
                        int fd = atomic_load(&g_sigw[i].fd);
                        if (fd >= 0)
                                fd_raise(fd);
                }
        }
        atomic_fetch_sub(&g_handlers_running, 1);
        if (sa->sa_flags & SA_SIGINFO) {
                atomic_fetch_add(&g_sig_caught, 1);
                errno = saved_errno;
                sa->sa_sigaction(sig, si, uc);
        } else if (sa->sa_handler != SIG_IGN && sa->sa_handler != SIG_DFL) {
                atomic_fetch_add(&g_sig_caught, 1);
                errno = saved_errno;
                sa->sa_handler(sig);
        } else {
                /* SIG_DFL is treated as SIG_IGN: see the README. */
                atomic_fetch_add(&g_sig_ignored, 1);
        }
        errno = saved_errno;
}

static bool is_ours(const struct sigaction *sa) {
        return (sa->sa_flags & SA_SIGINFO) && sa->sa_sigaction == emu_sig_handler;
}

/* Under g_sig_lock: our handler in front of old (saved, to be chained). */
static int sig_install(int sig, const struct sigaction *old) {
        struct sigaction sa;

        memset(&sa, 0, sizeof(sa));
        sa.sa_sigaction = emu_sig_handler;
        sa.sa_mask = old->sa_mask;
        sa.sa_flags = SA_SIGINFO | (old->sa_flags & (SA_RESTART | SA_ONSTACK | SA_NOCLDSTOP));
        if (!(old->sa_flags & SA_SIGINFO) && (old->sa_handler == SIG_IGN || old->sa_handler == SIG_DFL))
                sa.sa_flags |= SA_RESTART;
        /* The saved disposition first: the handler reads it. */
        g_sig_saved[sig] = *old;
        return sigaction(sig, &sa, NULL) < 0 ? errno : 0;
}

/* Under g_sig_lock: one more watcher of sig (an errno value or 0). */
static int sig_hold(int sig) {
        if (g_sig_watchers[sig] == 0) {
                struct sigaction old;
                int r;

                if (sigaction(sig, NULL, &old) < 0)
                        return errno;
                if ((r = sig_install(sig, &old)) != 0)
                        return r;
                atomic_fetch_add(&g_sig_installed, 1);
        }
        g_sig_watchers[sig]++;
        return 0;
}

/* Under g_sig_lock: the last watcher gone, the saved disposition is back. */
static void sig_release(int sig) {
        if (--g_sig_watchers[sig] > 0)
                return;
        (void) sigaction(sig, &g_sig_saved[sig], NULL);
        atomic_fetch_sub(&g_sig_installed, 1);
}

/* Under g_sig_lock: kq's slot in g_sigw says whether it counts sig. */
static int sigw_set(struct kq *kq, int sig, bool on) {
        if (kq->sigw < 0) {
                int i;

                if (!on)
                        return 0;
                for (i = 0; i < SIGW_MAX; i++)
                        if (atomic_load(&g_sigw[i].fd) < 0)
                                break;
                if (i == SIGW_MAX)
                        return ENOMEM;
                atomic_store(&g_sigw[i].mask, 0);
                atomic_store(&g_sigw[i].fd, kq->wakefd);
                if (i >= atomic_load(&g_sigw_hi))
                        atomic_store(&g_sigw_hi, i + 1);
                kq->sigw = i;
        }
        if (on)
                atomic_fetch_or(&g_sigw[kq->sigw].mask, sig_bit(sig));
        else
                atomic_fetch_and(&g_sigw[kq->sigw].mask, ~sig_bit(sig));
        if (atomic_load(&g_sigw[kq->sigw].mask) == 0) {
                atomic_store(&g_sigw[kq->sigw].fd, -1);
                kq->sigw = -1;
        }
        return 0;
}

static int sig_watch(struct kq *kq, int sig) {
        int r;

        pthread_mutex_lock(&g_sig_lock);
        if ((r = sig_hold(sig)) == 0 && (r = sigw_set(kq, sig, true)) != 0)
                sig_release(sig);
        pthread_mutex_unlock(&g_sig_lock);
        return r;
}

static void sig_unwatch(struct kq *kq, int sig) {
        pthread_mutex_lock(&g_sig_lock);
        (void) sigw_set(kq, sig, false);
        sig_release(sig);
        pthread_mutex_unlock(&g_sig_lock);
}

/* ---- children ----------------------------------------------------------- */

/*
 * A child's exit. One helper thread looks at the watched children every
 * PROC_POLL_NS (waitid with WNOHANG | WNOWAIT: nobody is reaped); when one
 * has exited it registers g_proc_fd, which is always readable, in the
 * queue that watches it: that queue, and only that one, polls readable.
 * The queue's kevent() takes the registration out again once no exit is
 * left to report (finish_children()). Neither a pidfd (a descriptor that
 * would outlive a queue closed with the child still running), nor SIGCHLD
 * (it stays the program's), nor a thread blocked in waitid() per child
 * (which the program may count as its own waiters). The thread ends when
 * no child is watched.
 */
#define PROC_POLL_NS 2000000

struct proc_watch {
        pid_t pid;
        struct kq *kq;
        uint64_t serial;        /* kq's */
};

static pthread_mutex_t g_proc_lock = PTHREAD_MUTEX_INITIALIZER;
static struct proc_watch *g_procs;      /* watched children, until they exit */
static size_t g_n_procs, g_cap_procs;
static bool g_proc_thread;             /* running */
static pthread_t g_proc_tid;
static bool g_proc_joinable;            /* running, not detached: proc_atexit() joins it */
static bool g_proc_stop;                /* exit(): the thread ends */

static void proc_signal(struct kq *kq) {
        struct epoll_event ev = {.events = EPOLLIN, .data.u64 = TAG(TAG_PROC, 0, 0)};

        (void) epoll_ctl(kq->fd, EPOLL_CTL_ADD, g_proc_fd, &ev); /* EEXIST: already */
}

static void *proc_thread_main(void *arg) {
        /* On the stack, not malloc()ed: a fork child has no such thread. */
        struct proc_watch exited[64];
        size_t cap = sizeof(exited) / sizeof(exited[0]);

        (void) arg;
        for (;;) {
                struct timespec ts = {0, PROC_POLL_NS};
                size_t n = 0;

                pthread_mutex_lock(&g_proc_lock);
                if (g_n_procs == 0 || g_proc_stop) {
                        g_proc_thread = false;
                        /* Ending on its own: nobody will join it (proc_atexit
                         * joins it if it got there first). */
                        if (g_proc_joinable) {
                                g_proc_joinable = false;
                                pthread_detach(pthread_self());
                        }
                        pthread_mutex_unlock(&g_proc_lock);
                        return NULL;
                }
                for (size_t i = 0; i < g_n_procs;) {
                        siginfo_t si;
                        memset(&si, 0, sizeof(si));
                        if (waitid(P_PID, (id_t) g_procs[i].pid, &si, WEXITED | WNOHANG | WNOWAIT) == 0 &&
                            si.si_pid == 0) {
                                i++;
                                continue;
                        }
                        /* Exited (or reaped by the program already). */
                        if (n == cap)
                                break; /* the others next time */
                        exited[n++] = g_procs[i];
                        g_procs[i] = g_procs[--g_n_procs];
                }
                pthread_mutex_unlock(&g_proc_lock);
                if (n > 0) {
                        /* Only queues still in the table: their memory is alive. */
                        pthread_mutex_lock(&g_lock);
                        for (size_t i = 0; i < n; i++)
                                for (size_t j = 0; j < g_n_kqs; j++)
                                        if (g_kqs[j] == exited[i].kq && g_kqs[j]->serial == exited[i].serial &&
                                            kq_alive(g_kqs[j]))
                                                proc_signal(g_kqs[j]);
                        pthread_mutex_unlock(&g_lock);
                }
                nanosleep(&ts, NULL);
        }
}

static int proc_watch(struct kq *kq, pid_t pid) {
        int r = 0;

        pthread_mutex_lock(&g_proc_lock);
        if (g_n_procs == g_cap_procs) {
                size_t cap = g_cap_procs ? 2 * g_cap_procs : 16;
                struct proc_watch *a = realloc(g_procs, cap * sizeof(*a));
                if (!a) {
                        pthread_mutex_unlock(&g_proc_lock);
                        return ENOMEM;
                }
                g_procs = a;
                g_cap_procs = cap;
        }
        g_procs[g_n_procs++] = (struct proc_watch) {.pid = pid, .kq = kq, .serial = kq->serial};
        if (!g_proc_thread) {
                sigset_t all, old;

                /* The program's signals are not for this thread. */
                sigfillset(&all);
                pthread_sigmask(SIG_SETMASK, &all, &old);
                r = pthread_create(&g_proc_tid, NULL, proc_thread_main, NULL);
                pthread_sigmask(SIG_SETMASK, &old, NULL);
                if (r == 0)
                        g_proc_thread = g_proc_joinable = true;
                else
                        g_n_procs--;
        }
        pthread_mutex_unlock(&g_proc_lock);
        return r;
}

/* At exit() the helper thread ends first (valgrind: no thread left running). */
static void proc_atexit(void) {
        bool join;

        pthread_mutex_lock(&g_proc_lock);
        g_proc_stop = true;
        join = g_proc_joinable;
        g_proc_joinable = false;
        pthread_mutex_unlock(&g_proc_lock);
        if (join)
                pthread_join(g_proc_tid, NULL);
}

/* Forgets kq's watch of pid (pid 0: all of kq's). */
static void proc_unwatch(struct kq *kq, pid_t pid) {
        pthread_mutex_lock(&g_proc_lock);
        for (size_t i = 0; i < g_n_procs;) {
                if (g_procs[i].kq == kq && (pid == 0 || g_procs[i].pid == pid)) {
                        g_procs[i] = g_procs[--g_n_procs];
                        if (pid != 0)
                                break;
                        continue;
                }
                i++;
        }
        pthread_mutex_unlock(&g_proc_lock);
}

/*
 * A sigaction() by the program replaces our handler. Seen here (at each
 * kevent()), the program's disposition becomes the chained one, and every
 * watcher is woken in case a signal went by unseen.
 */
static void sig_repair(void) {
        if (atomic_load(&g_sig_installed) == 0)
                return;
        pthread_mutex_lock(&g_sig_lock);
        for (int s = 1; s < NSIG; s++) {
                struct sigaction cur;

                if (g_sig_watchers[s] == 0 || sigaction(s, NULL, &cur) < 0 || is_ours(&cur))
                        continue;
                if (sig_install(s, &cur) != 0)
                        continue;
                for (int i = 0; i < atomic_load(&g_sigw_hi); i++)
                        if ((atomic_load(&g_sigw[i].mask) & sig_bit(s)) && atomic_load(&g_sigw[i].fd) >= 0)
                                fd_raise(atomic_load(&g_sigw[i].fd));
        }
        pthread_mutex_unlock(&g_sig_lock);
}

/* ---- descriptors -------------------------------------------------------- */

static struct knote **fdrec_slot(struct fdrec *rec, short filter) {
        return &rec->kn[filter == EVFILT_READ ? 0 : 1];
}

static bool fdrec_edge(struct fdrec *rec) {
        for (int i = 0; i < 2; i++)
                if (rec->kn[i] && !rec->kn[i]->disabled && (rec->kn[i]->kev.flags & EV_CLEAR))
                        return true;
        return rec->quiet;
}

/* The epoll events rec should be registered with. */
static uint32_t fdrec_events(struct fdrec *rec) {
        uint32_t m = 0;

        if (rec->kn[0] && !rec->kn[0]->disabled)
                m |= EPOLLIN | EPOLLRDHUP;
        if (rec->kn[1] && !rec->kn[1]->disabled)
                m |= EPOLLOUT;
        return m | (fdrec_edge(rec) ? EPOLLET : EPOLLONESHOT);
}

/*
 * Brings the registration in line (EPOLL_CTL_MOD), and re-arms a
 * level-triggered one that epoll has reported (or when rearm says so: a
 * MOD of a ready descriptor queues it again, which is how an enabled or
 * re-added event is looked at).
 */
static void fdrec_sync(struct kq *kq, struct fdrec *rec, bool rearm) {
        uint32_t want;
        struct epoll_event ev;

        if (!rec->epollable)
                return;
        want = fdrec_events(rec);
        if (want == rec->reg && !rearm && (rec->armed || (want & EPOLLET)))
                return;
        ev.events = want;
        ev.data.u64 = TAG(TAG_FD, rec->gen, rec->fd);
        if (epoll_ctl(kq->fd, EPOLL_CTL_MOD, rec->fd, &ev) == 0) {
                rec->reg = want;
                rec->armed = true;
        }
}

static void fdrec_free(struct kq *kq, struct fdrec *rec, bool stale) {
        /* A stale number may now be another file: not ours to delete. */
        if (rec->epollable && !stale)
                (void) epoll_ctl(kq->fd, EPOLL_CTL_DEL, rec->fd, NULL);
        kq->fds[rec->fd] = NULL;
        kq->n_recs--;
        free(rec);
}

/* Notes rec on the touched list: settled (re-armed) before the next wait. */
static void touch(struct kq *kq, struct fdrec *rec) {
        if (rec->touched)
                return;
        if (kq->n_touched == kq->cap_touched) {
                size_t cap = kq->cap_touched ? 2 * kq->cap_touched : 16;
                int *a = realloc(kq->touched, cap * sizeof(*a));
                if (!a)
                        abort();
                kq->touched = a;
                kq->cap_touched = cap;
        }
        kq->touched[kq->n_touched++] = rec->fd;
        rec->touched = true;
}

/*
 * After a look at what epoll reported: a descriptor with something ready
 * goes back to (or stays) level-triggered and is re-armed; one reported
 * with nothing to report goes edge-triggered ("quiet") until it changes.
 */
static void settle(struct kq *kq) {
        for (size_t i = 0; i < kq->n_touched; i++) {
                int fd = kq->touched[i];
                struct fdrec *rec = (size_t) fd < kq->n_fds ? kq->fds[fd] : NULL;

                if (!rec || !rec->touched)
                        continue;
                rec->touched = false;
                rec->quiet = !rec->fired;
                rec->fired = false;
                fdrec_sync(kq, rec, false);
        }
        kq->n_touched = 0;
}

/* ---- knotes ------------------------------------------------------------- */

/* Unlinks kn; the memory lives until the end of the kevent() call. */
static void knote_delete(struct kq *kq, struct knote *kn, bool stale) {
        if (kn->deleted)
                return;
        kn->deleted = true;
        kn->in_act = false;
        switch (kn->kev.filter) {
        case EVFILT_READ:
        case EVFILT_WRITE: {
                struct fdrec *rec = kn->rec;
                *fdrec_slot(rec, kn->kev.filter) = NULL;
                if (!rec->kn[0] && !rec->kn[1])
                        fdrec_free(kq, rec, stale);
                else if (!stale)
                        fdrec_sync(kq, rec, false);
                goto bury;
        }
        case EVFILT_SIGNAL:
                sig_unwatch(kq, (int) kn->kev.ident);
                break;
        case EVFILT_PROC:
                if (kn->child) {
                        proc_unwatch(kq, (pid_t) kn->kev.ident);
                        kq->n_child--;
                }
                break;
        default:
                break;
        }
        for (struct knote **p = &kq->others; *p; p = &(*p)->next) {
                if (*p == kn) {
                        *p = kn->next;
                        break;
                }
        }
bury:
        kn->next = kq->graveyard;
        kq->graveyard = kn;
}

static void graveyard_free(struct kq *kq) {
        while (kq->graveyard) {
                struct knote *kn = kq->graveyard;
                kq->graveyard = kn->next;
                free(kn);
        }
}

static struct knote *find_other(struct kq *kq, uintptr_t ident, short filter) {
        for (struct knote *kn = kq->others; kn; kn = kn->next)
                if (kn->kev.ident == ident && kn->kev.filter == filter)
                        return kn;
        return NULL;
}

/* Whether kn's state comes from a level-triggered epoll registration. */
static bool epoll_level(const struct knote *kn) {
        return kn->rec && kn->rec->epollable && !(kn->rec->reg & EPOLLET);
}

static void knote_disable(struct kq *kq, struct knote *kn) {
        kn->disabled = true;
        act_remove(kn);
        if (kn->rec)
                fdrec_sync(kq, kn->rec, false);
}

/* Enabled (or added, or re-added): looked at again, as FreeBSD does. */
static void knote_enable(struct kq *kq, struct knote *kn) {
        kn->disabled = false;
        if (kn->rec) {
                kn->rec->quiet = false;
                fdrec_sync(kq, kn->rec, true);
                /* A level-triggered registration queues itself if ready. */
                if (epoll_level(kn))
                        return;
        }
        if (kn->kev.filter != EVFILT_USER || kn->triggered)
                act_add(kq, kn);
}

/* ---- the sweep for closed descriptors ----------------------------------- */

static atomic_bool g_no_kcmp;

/*
 * Whether rec's number still names the file it was registered for. For a
 * descriptor in epoll, kcmp(KCMP_EPOLL_TFD) compares the file at the
 * number with the file epoll registered under it: exact, also for the
 * anonymous-inode files (eventfds, epoll and kqueue descriptors) that all
 * share one inode. Otherwise (or without kcmp) st_dev and st_ino.
 */
static bool fdrec_same_file(struct kq *kq, struct fdrec *rec) {
        struct stat st;

        if (rec->epollable && !atomic_load(&g_no_kcmp)) {
                pid_t pid = getpid();

                /*
                 * Epoll may hold several registrations under the number:
                 * ours, and those of files closed behind our back that
                 * live on in a dup(). toff walks them.
                 */
                for (uint32_t toff = 0;; toff++) {
                        struct kcmp_epoll_slot slot = {.efd = (uint32_t) kq->fd, .tfd = (uint32_t) rec->fd,
                                                       .toff = toff};
                        long r = syscall(SYS_kcmp, pid, pid, KCMP_EPOLL_TFD, rec->fd, (unsigned long) &slot);

                        if (r == 0)
                                return true;
                        if (r > 0)
                                continue;
                        if (errno == EBADF || errno == ENOENT)
                                return false;
                        break;
                }
                atomic_store(&g_no_kcmp, true); /* ENOSYS, EPERM: not here */
        }
        return fstat(rec->fd, &st) == 0 && st.st_dev == rec->dev && st.st_ino == rec->ino;
}

/*
 * BSD deletes a descriptor's events when it is closed. Linux says nothing,
 * so a descriptor is checked before anything is done with it (reported,
 * changed, added: fdrec_check()) and its events go, silently, if it was
 * closed or its number names another file now. Besides, every kevent()
 * call sweeps SWEEP_MAX descriptors in turn (all of them while there are
 * no more), before its changelist, so that dead ones do not pile up.
 */
#define SWEEP_MAX 256

/* Whether rec is still good; if not its events are deleted (rec freed). */
static bool fdrec_check(struct kq *kq, struct fdrec *rec) {
        struct knote *r, *w;

        if (fdrec_same_file(kq, rec))
                return true;
        /* The last delete frees rec. */
        r = rec->kn[0];
        w = rec->kn[1];
        if (r)
                knote_delete(kq, r, true);
        if (w)
                knote_delete(kq, w, true);
        return false;
}

static void sweep_closed(struct kq *kq) {
        size_t todo = kq->n_recs < SWEEP_MAX ? kq->n_recs : SWEEP_MAX;

        if (kq->n_fds == 0)
                return;
        for (size_t i = 0; i < kq->n_fds && todo > 0; i++) {
                size_t fd = (kq->sweep_next + i) % kq->n_fds;
                struct fdrec *rec = kq->fds[fd];

                if (!rec)
                        continue;
                todo--;
                (void) fdrec_check(kq, rec);
                kq->sweep_next = fd + 1;
        }
}

/* ---- changes ------------------------------------------------------------ */

static bool refuse_chr(void) {
        const char *v = getenv("KQUEUE_EMU_REFUSE_CHR");

        return v && strcmp(v, "1") == 0;
}

static enum fd_kind kind_of(mode_t mode) {
        if (S_ISREG(mode) || S_ISDIR(mode))
                return FK_REG;
        if (S_ISFIFO(mode))
                return FK_FIFO;
        if (S_ISSOCK(mode))
                return FK_SOCK;
        return FK_OTHER;
}

static struct knote *knote_new(const struct kevent *kev) {
        struct knote *kn = calloc(1, sizeof(*kn));

        if (!kn)
                return NULL;
        kn->kev = *kev;
        kn->kev.flags = kev->flags & KEPT_FLAGS;
        memset(kn->kev.ext, 0, sizeof(kn->kev.ext));
        kn->disabled = true; /* until knote_enable() */
        return kn;
}

static void others_push(struct kq *kq, struct knote *kn) {
        kn->next = kq->others;
        kq->others = kn;
}

static int add_fd_knote(struct kq *kq, const struct kevent *kev, const struct stat *st, struct knote **ret) {
        int fd = (int) kev->ident;
        struct fdrec *rec = (size_t) fd < kq->n_fds ? kq->fds[fd] : NULL;
        struct knote *kn;

        if (!rec) {
                struct epoll_event ev;

                if ((size_t) fd >= kq->n_fds) {
                        size_t n = kq->n_fds ? kq->n_fds : 64;
                        while (n <= (size_t) fd)
                                n *= 2;
                        struct fdrec **a = realloc(kq->fds, n * sizeof(*a));
                        if (!a)
                                return ENOMEM;
                        memset(a + kq->n_fds, 0, (n - kq->n_fds) * sizeof(*a));
                        kq->fds = a;
                        kq->n_fds = n;
                }
                rec = calloc(1, sizeof(*rec));
                if (!rec)
                        return ENOMEM;
                rec->fd = fd;
                rec->dev = st->st_dev;
                rec->ino = st->st_ino;
                rec->kind = kind_of(st->st_mode);
                /* No g_lock here: queue lock, then g_lock, would deadlock a fork. */
                rec->gen = atomic_fetch_add(&g_gen, 1) + 1;
                /* Registered with no events yet; knote_enable() sets them. */
                ev.events = EPOLLONESHOT;
                ev.data.u64 = TAG(TAG_FD, rec->gen, fd);
                if (epoll_ctl(kq->fd, EPOLL_CTL_ADD, fd, &ev) == 0 ||
                    (errno == EEXIST && epoll_ctl(kq->fd, EPOLL_CTL_MOD, fd, &ev) == 0)) {
                        rec->epollable = true;
                        rec->reg = EPOLLONESHOT;
                        rec->armed = true;
                } else if (errno != EPERM) {
                        int r = errno;
                        free(rec);
                        return r;
                }
                /* EPERM: regular files, /dev/null; looked at on every call. */
                kq->fds[fd] = rec;
                kq->n_recs++;
        }
        if (!rec->epollable && wake_need(kq) != 0) {
                if (!rec->kn[0] && !rec->kn[1])
                        fdrec_free(kq, rec, false);
                return ENOMEM;
        }
        kn = knote_new(kev);
        if (!kn) {
                if (!rec->kn[0] && !rec->kn[1])
                        fdrec_free(kq, rec, false);
                return ENOMEM;
        }
        kn->rec = rec;
        kn->always = !rec->epollable;
        *fdrec_slot(rec, kev->filter) = kn;
        *ret = kn;
        return 0;
}

/* Whether pid is our child; ESRCH if there is no such process. */
static int proc_probe(pid_t pid, bool *child) {
        siginfo_t si;

        memset(&si, 0, sizeof(si));
        if (waitid(P_PID, (id_t) pid, &si, WEXITED | WNOHANG | WNOWAIT) == 0) {
                *child = true;
                return 0;
        }
        *child = false;
        if (kill(pid, 0) < 0 && errno == ESRCH)
                return ESRCH;
        return 0;
}

static int add_proc_knote(struct kq *kq, const struct kevent *kev, struct knote **ret) {
        struct knote *kn;
        bool child;
        int r;

        if (kev->ident == 0 || kev->ident > INT_MAX)
                return ESRCH;
        if (kev->fflags & ~(NOTE_EXIT | NOTE_EXITSTATUS))
                return EINVAL; /* NOTE_FORK, NOTE_EXEC, NOTE_TRACK: not emulated */
        if ((r = proc_probe((pid_t) kev->ident, &child)) != 0)
                return r;
        if (!child && (r = wake_need(kq)) != 0)
                return r;
        if (!(kn = knote_new(kev)))
                return ENOMEM;
        if (child && (r = proc_watch(kq, (pid_t) kev->ident)) != 0) {
                free(kn);
                return r;
        }
        kn->child = child;
        kq->n_child += child;
        kq->had_child |= child;
        /*
         * Looked at on every call. The helper thread wakes us for a
         * child; for another process nothing does: a blocked kevent()
         * looks every few ms.
         */
        kn->always = true;
        others_push(kq, kn);
        *ret = kn;
        return 0;
}

static void user_touch(struct knote *kn, const struct kevent *kev) {
        unsigned int ff = kev->fflags & NOTE_FFLAGSMASK;

        if (kev->fflags & NOTE_TRIGGER)
                kn->triggered = true;
        switch (kev->fflags & NOTE_FFCTRLMASK) {
        case NOTE_FFAND:
                kn->kev.fflags &= ff;
                break;
        case NOTE_FFOR:
                kn->kev.fflags |= ff;
                break;
        case NOTE_FFCOPY:
                kn->kev.fflags = ff;
                break;
        default:
                break;
        }
        kn->kev.data = kev->data;
        /* FreeBSD: EV_CLEAR in a change resets the trigger. */
        if (kev->flags & EV_CLEAR)
                kn->triggered = false;
}

/* Applies one change; 0 or an errno value. */
static int apply_change(struct kq *kq, const struct kevent *kev) {
        struct knote *kn = NULL;
        struct stat st;
        bool created = false;
        int r;

        switch (kev->filter) {
        case EVFILT_READ:
        case EVFILT_WRITE:
                if (kev->ident > INT_MAX || fstat((int) kev->ident, &st) < 0)
                        return EBADF;
                if (kev->ident < kq->n_fds && kq->fds[kev->ident] && fdrec_check(kq, kq->fds[kev->ident]))
                        kn = *fdrec_slot(kq->fds[kev->ident], kev->filter);
                if ((kev->flags & EV_ADD) && S_ISCHR(st.st_mode) && refuse_chr())
                        return EINVAL; /* Mac OS X 10.6 to 10.8 */
                if (!kn && (kev->flags & EV_ADD)) {
                        if ((r = add_fd_knote(kq, kev, &st, &kn)) != 0)
                                return r;
                        created = true;
                }
                break;
        case EVFILT_SIGNAL:
                if (kev->ident < 1 || kev->ident >= NSIG)
                        return EINVAL;
                kn = find_other(kq, kev->ident, kev->filter);
                if (!kn && (kev->flags & EV_ADD)) {
                        if ((r = wake_need(kq)) != 0)
                                return r;
                        if (!(kn = knote_new(kev)))
                                return ENOMEM;
                        kn->sig_seen = atomic_load(&g_sig_count[kev->ident]);
                        if ((r = sig_watch(kq, (int) kev->ident)) != 0) {
                                free(kn);
                                return r;
                        }
                        kn->always = true;
                        others_push(kq, kn);
                        created = true;
                }
                break;
        case EVFILT_PROC:
                kn = find_other(kq, kev->ident, kev->filter);
                if (!kn && (kev->flags & EV_ADD)) {
                        if ((r = add_proc_knote(kq, kev, &kn)) != 0)
                                return r;
                        created = true;
                }
                break;
        case EVFILT_USER:
                kn = find_other(kq, kev->ident, kev->filter);
                if (!kn && (kev->flags & EV_ADD)) {
                        if ((r = wake_need(kq)) != 0)
                                return r;
                        if (!(kn = knote_new(kev)))
                                return ENOMEM;
                        kn->kev.fflags = 0;
                        others_push(kq, kn);
                        created = true;
                }
                break;
        default:
                return EINVAL;
        }
        if (!kn)
                return ENOENT;
        if (kev->flags & EV_DELETE) {
                knote_delete(kq, kn, false);
                return 0;
        }
        /* FreeBSD updates these on every change of an existing event. */
        kn->kev.udata = kev->udata;
        if (kev->filter == EVFILT_USER) {
                user_touch(kn, kev);
        } else if (!created) {
                kn->kev.fflags = kev->fflags;
                kn->kev.data = kev->data;
        }
        if (kev->flags & EV_ADD) {
                kn->kev.flags = kev->flags & KEPT_FLAGS;
                if (kev->filter == EVFILT_SIGNAL)
                        kn->kev.flags |= EV_CLEAR;
                if (kev->filter == EVFILT_PROC)
                        kn->kev.fflags &= NOTE_EXIT | NOTE_EXITSTATUS;
        }
        if (kev->flags & EV_DISABLE)
                knote_disable(kq, kn);
        else if (kev->flags & (EV_ADD | EV_ENABLE))
                knote_enable(kq, kn);
        else if (kev->filter == EVFILT_USER && kn->triggered)
                act_add(kq, kn);
        return 0;
}

/* ---- evaluation --------------------------------------------------------- */

static int64_t fionread(int fd) {
        int n = 0;

        return ioctl(fd, FIONREAD, &n) == 0 && n > 0 ? n : 0;
}

/* Fills *out for a READ/WRITE event; whether it is ready. */
static bool eval_fd(struct knote *kn, struct kevent *out) {
        struct fdrec *rec = kn->rec;
        int fd = rec->fd;
        struct pollfd p = {.fd = fd, .events = POLLIN | POLLOUT | POLLRDHUP};
        short rv = 0;
        bool ready = false, eof = false;
        int64_t data = 0;

        if (rec->kind != FK_REG) {
                while (poll(&p, 1, 0) < 0 && errno == EINTR)
                        ;
                rv = p.revents;
        }
        if (kn->kev.filter == EVFILT_READ) {
                switch (rec->kind) {
                case FK_REG: {
                        /* FreeBSD's vnode filter: readable before the end. */
                        struct stat st;
                        off_t off = lseek(fd, 0, SEEK_CUR);
                        if (fstat(fd, &st) == 0 && off >= 0)
                                data = (int64_t) st.st_size - (int64_t) off;
                        ready = data > 0;
                        break;
                }
                case FK_FIFO:
                        ready = rv & (POLLIN | POLLHUP);
                        eof = rv & POLLHUP;
                        data = fionread(fd);
                        break;
                case FK_SOCK: {
                        int listening = 0;
                        socklen_t len = sizeof(listening);
                        if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &len) == 0 && listening) {
                                ready = rv & POLLIN;
                                data = 1; /* the backlog length: not known */
                                break;
                        }
                        ready = rv & (POLLIN | POLLRDHUP | POLLHUP | POLLERR);
                        eof = rv & (POLLRDHUP | POLLHUP);
                        data = fionread(fd);
                        break;
                }
                default:
                        ready = rv & (POLLIN | POLLHUP | POLLERR);
                        eof = rv & POLLHUP;
                        data = fionread(fd);
                        break;
                }
        } else {
                switch (rec->kind) {
                case FK_REG:
                        ready = true; /* FreeBSD: always, data 0 */
                        break;
                case FK_FIFO:
                        /* Only a write end sees POLLOUT or (reader gone) POLLERR. */
                        ready = rv & (POLLOUT | POLLERR);
                        eof = rv & POLLERR;
                        if (rv & POLLOUT) {
                                int size = fcntl(fd, F_GETPIPE_SZ);
                                data = size > 0 ? size - fionread(fd) : 1;
                                if (data < 1)
                                        data = 1;
                        }
                        break;
                case FK_SOCK:
                        ready = rv & (POLLOUT | POLLHUP | POLLERR);
                        eof = rv & POLLHUP;
                        if (rv & POLLOUT) {
                                int sndbuf = 0, outq = 0;
                                socklen_t len = sizeof(sndbuf);
                                if (getsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, &len) == 0 &&
                                    ioctl(fd, SIOCOUTQ, &outq) == 0)
                                        data = (int64_t) sndbuf - outq;
                                if (data < 1)
                                        data = 1;
                        }
                        break;
                default:
                        ready = rv & (POLLOUT | POLLHUP | POLLERR);
                        eof = rv & (POLLHUP | POLLERR);
                        break;
                }
        }
        if (!ready)
                return false;
        *out = kn->kev;
        out->fflags = 0; /* the socket error: see the README */
        out->data = data;
        if (eof)
                out->flags |= EV_EOF;
        return true;
}

static int wait_status(const siginfo_t *si) {
        switch (si->si_code) {
        case CLD_EXITED:
                return (si->si_status & 0xff) << 8;
        case CLD_KILLED:
                return si->si_status & 0x7f;
        case CLD_DUMPED:
                return (si->si_status & 0x7f) | 0x80;
        default:
                return 0;
        }
}

static bool eval_proc(struct knote *kn, struct kevent *out) {
        pid_t pid = (pid_t) kn->kev.ident;
        siginfo_t si;
        int status = 0;

        memset(&si, 0, sizeof(si));
        if (waitid(P_PID, (id_t) pid, &si, WEXITED | WNOHANG | WNOWAIT) == 0) {
                if (si.si_pid == 0)
                        return false;
                status = wait_status(&si);
        } else if (kn->child ? errno != ECHILD : kill(pid, 0) == 0 || errno != ESRCH) {
                /* A child reaped by the program since: gone. Another
                 * process: gone when kill() says so. */
                return false;
        }
        *out = kn->kev;
        out->fflags = NOTE_EXIT;
        out->data = status;
        out->flags |= EV_EOF | EV_ONESHOT;
        return true;
}

/* Whether kn is ready now; fills *out if so. */
static bool evaluate(struct knote *kn, struct kevent *out) {
        bool ready = false;

        switch (kn->kev.filter) {
        case EVFILT_READ:
        case EVFILT_WRITE:
                ready = eval_fd(kn, out);
                if (ready && kn->always && (kn->kev.flags & EV_CLEAR) && kn->reported &&
                    out->data == kn->last_data)
                        ready = false; /* nothing new since it was reported */
                if (ready)
                        kn->rec->fired = true;
                break;
        case EVFILT_SIGNAL: {
                uint64_t c = atomic_load(&g_sig_count[kn->kev.ident]);
                ready = c != kn->sig_seen;
                if (ready) {
                        *out = kn->kev;
                        out->data = (int64_t) (c - kn->sig_seen);
                }
                break;
        }
        case EVFILT_USER:
                ready = kn->triggered;
                if (ready)
                        *out = kn->kev;
                break;
        case EVFILT_PROC:
                ready = eval_proc(kn, out);
                break;
        default:
                break;
        }
        kn->last_ready = ready;
        kn->fresh = false;
        return ready;
}

/* What happens to kn once it has been returned. */
static void after_report(struct kq *kq, struct knote *kn, const struct kevent *ev) {
        if (kn->kev.filter == EVFILT_PROC || (kn->kev.flags & EV_ONESHOT)) {
                /* EVFILT_PROC: EV_ONESHOT with the exit. */
                knote_delete(kq, kn, false);
                return;
        }
        if (kn->kev.flags & EV_CLEAR) {
                switch (kn->kev.filter) {
                case EVFILT_SIGNAL:
                        kn->sig_seen += (uint64_t) ev->data;
                        kn->last_ready = false;
                        break;
                case EVFILT_USER:
                        kn->triggered = false;
                        break;
                default:
                        kn->last_data = ev->data;
                        kn->reported = true;
                        kn->last_ready = false;
                        break;
                }
                if (!kn->always)
                        act_remove(kn);
        } else if (epoll_level(kn)) {
                /* Re-armed by settle(); epoll says whether it still holds. */
                act_remove(kn);
        }
        if (kn->kev.flags & EV_DISPATCH) {
                knote_disable(kq, kn);
                return;
        }
        if (kn->in_act)
                act_requeue(kq, kn);
}

/* One look at every active event; the count written to out. */
static int scan(struct kq *kq, struct kevent *out, int nevents) {
        size_t n0 = kq->n_act;
        int n = 0;

        for (size_t i = 0; i < n0 && n < nevents; i++) {
                struct knote *kn;

                if (!act_valid(kq, i))
                        continue;
                kn = kq->act[i];
                if (kn->rec && !fdrec_check(kq, kn->rec))
                        continue; /* closed behind our back: gone */
                if (!evaluate(kn, &out[n])) {
                        if (!kn->always)
                                act_remove(kn);
                        continue;
                }
                if (kn->kev.filter == EVFILT_PROC && !(kn->kev.fflags & NOTE_EXIT)) {
                        /* FreeBSD drops it silently at the exit. */
                        knote_delete(kq, kn, false);
                        continue;
                }
                memset(out[n].ext, 0, sizeof(out[n].ext));
                after_report(kq, kn, &out[n]);
                n++;
        }
        return n;
}

static void handle_events(struct kq *kq, const struct epoll_event *evs, int n) {
        for (int i = 0; i < n; i++) {
                uint64_t t = evs[i].data.u64;
                uint32_t e = evs[i].events;

                if (TAG_KIND(t) == TAG_FD) {
                        uint32_t fd = TAG_IDX(t);
                        struct fdrec *rec = fd < kq->n_fds ? kq->fds[fd] : NULL;
                        if (!rec || (rec->gen & 0x3fffffff) != TAG_GEN(t))
                                continue; /* a registration left by a closed file */
                        if (rec->reg & EPOLLONESHOT)
                                rec->armed = false;
                        touch(kq, rec);
                        if (rec->kn[0] && (e & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)))
                                act_add(kq, rec->kn[0]);
                        if (rec->kn[1] && (e & (EPOLLOUT | EPOLLHUP | EPOLLERR)))
                                act_add(kq, rec->kn[1]);
                } else if (TAG_KIND(t) == TAG_PROC) {
                        for (struct knote *kn = kq->others; kn; kn = kn->next)
                                if (kn->kev.filter == EVFILT_PROC && kn->child)
                                        act_add(kq, kn);
                }
        }
}

/* Takes whatever epoll has, without waiting. */
static void harvest(struct kq *kq) {
        struct epoll_event evs[64];
        int n;

        do {
                n = epoll_wait(kq->fd, evs, 64, 0);
                if (n > 0)
                        handle_events(kq, evs, n);
        } while (n == 64);
}

/*
 * g_proc_fd stays registered while a child's exit is left to report. Taken
 * out first, then the children looked at: an exit the helper thread
 * reports meanwhile registers it again, and is never lost.
 */
static void finish_children(struct kq *kq) {
        bool exited = false;

        if (!kq->had_child)
                return;
        (void) epoll_ctl(kq->fd, EPOLL_CTL_DEL, g_proc_fd, NULL);
        if (kq->n_child == 0)
                return;
        for (struct knote *kn = kq->others; kn && !exited; kn = kn->next) {
                struct kevent scratch;
                if (kn->kev.filter == EVFILT_PROC && kn->child && !kn->disabled && !kn->deleted)
                        exited = evaluate(kn, &scratch);
        }
        if (exited)
                proc_signal(kq);
}

/*
 * At the end of a call: events made active by this call's changes (or left
 * over from a full list) are looked at, level-triggered registrations are
 * re-armed, and the wake-up is raised while events epoll does not show are
 * pending, so that the descriptor polls readable exactly then.
 */
static void finish(struct kq *kq) {
        bool pending = false;

        for (size_t i = 0; i < kq->n_act; i++) {
                struct knote *kn;
                struct kevent scratch;

                if (!act_valid(kq, i))
                        continue;
                kn = kq->act[i];
                if (kn->rec && kn->fresh && !fdrec_check(kq, kn->rec)) {
                        continue;
                } else if (epoll_level(kn)) {
                        /* Not looked at (the list was full): epoll keeps it. */
                        kn->rec->fired = true;
                        act_remove(kn);
                } else if (kn->fresh && !evaluate(kn, &scratch) && !kn->always) {
                        act_remove(kn);
                }
        }
        settle(kq);
        act_compact(kq);
        for (size_t i = 0; i < kq->n_act && !pending; i++) {
                struct knote *kn = kq->act[i];
                if (kn->always && !kn->last_ready)
                        continue;
                /* A child's exit: finish_children() below. */
                if (!(kn->kev.filter == EVFILT_PROC && kn->child))
                        pending = true;
        }
        if (pending && wake_need(kq) == 0)
                fd_raise(kq->wakefd);
        finish_children(kq);
        graveyard_free(kq);
}

static bool needs_recheck(struct kq *kq) {
        for (size_t i = 0; i < kq->n_act; i++)
                if (act_valid(kq, i) && kq->act[i]->always &&
                    (kq->act[i]->rec || (kq->act[i]->kev.filter == EVFILT_PROC && !kq->act[i]->child)))
                        return true;
        return false;
}

/* ---- queue life --------------------------------------------------------- */

/* Frees kq's state; its descriptor is closed or no longer its own. */
static void kq_destroy(struct kq *kq, bool forked) {
        for (size_t fd = 0; fd < kq->n_fds; fd++) {
                struct fdrec *rec = kq->fds[fd];
                if (!rec)
                        continue;
                free(rec->kn[0]);
                free(rec->kn[1]);
                free(rec);
        }
        free(kq->fds);
        if (!forked && kq->n_child > 0)
                proc_unwatch(kq, 0);
        while (kq->others) {
                struct knote *kn = kq->others;
                kq->others = kn->next;
                /* In a fork child the signal tables are reset at once. */
                if (!forked && kn->kev.filter == EVFILT_SIGNAL)
                        sig_unwatch(kq, (int) kn->kev.ident);
                free(kn);
        }
        if (!forked)
                wake_put(kq);
        else if (!kq->wake_pooled && kq->wakefd >= 0)
                close(kq->wakefd);
        free(kq->touched);
        free(kq->act);
        graveyard_free(kq);
        pthread_mutex_destroy(&kq->lock);
        free(kq);
}

/* Under g_lock: forgets the queues whose descriptor was closed. */
static void sweep_dead(void) {
        for (size_t i = 0; i < g_n_kqs; i++) {
                struct kq *kq = g_kqs[i];
                if (!kq || kq->refs > 0 || kq_alive(kq))
                        continue;
                g_kqs[i] = NULL;
                kq_destroy(kq, false);
        }
}

static void unref(struct kq *kq) {
        pthread_mutex_lock(&g_lock);
        if (--kq->refs == 0 && kq->dead)
                kq_destroy(kq, false);
        pthread_mutex_unlock(&g_lock);
}

static void atfork_prepare(void);
static void atfork_parent(void);
static void atfork_child(void);

static int new_eventfd(void) {
        return eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
}

static void init_once(void) {
        for (int i = 0; i < SIGW_MAX; i++)
                atomic_store(&g_sigw[i].fd, -1);
        g_ident_fd = new_eventfd();
        g_proc_fd = eventfd(1, EFD_CLOEXEC | EFD_NONBLOCK); /* readable for good */
        for (int i = 0; i < POOL_SIZE; i++)
                g_pool[i] = new_eventfd();
        pthread_atfork(atfork_prepare, atfork_parent, atfork_child);
        atexit(proc_atexit);
}

/* The eventfds exist before the program counts its descriptors. */
__attribute__((constructor)) static void emu_init(void) {
        pthread_once(&g_once, init_once);
}

EMU_EXPORT int kqueue(void) {
        struct kq *kq;
        struct epoll_event ev = {.events = 0, .data.u64 = TAG(TAG_OWN, 0, 0)};
        int fd, err;

        pthread_once(&g_once, init_once);
        if (g_ident_fd < 0 || g_proc_fd < 0) {
                errno = EMFILE;
                return -1;
        }
        if (!(kq = calloc(1, sizeof(*kq)))) {
                errno = ENOMEM;
                return -1;
        }
        kq->wakefd = -1;
        kq->sigw = -1;
        fd = epoll_create1(EPOLL_CLOEXEC);
        if (fd < 0) {
                err = errno;
                free(kq);
                errno = err;
                return -1;
        }
        if (epoll_ctl(fd, EPOLL_CTL_ADD, g_ident_fd, &ev) < 0) {
                err = errno;
                close(fd);
                free(kq);
                errno = err;
                return -1;
        }
        kq->fd = fd;
        pthread_mutex_init(&kq->lock, NULL);
        pthread_mutex_lock(&g_lock);
        sweep_dead();
        if ((size_t) fd >= g_n_kqs) {
                size_t n = g_n_kqs ? g_n_kqs : 64;
                while (n <= (size_t) fd)
                        n *= 2;
                struct kq **a = realloc(g_kqs, n * sizeof(*a));
                if (!a) {
                        pthread_mutex_unlock(&g_lock);
                        close(fd);
                        pthread_mutex_destroy(&kq->lock);
                        free(kq);
                        errno = ENOMEM;
                        return -1;
                }
                memset(a + g_n_kqs, 0, (n - g_n_kqs) * sizeof(*a));
                g_kqs = a;
                g_n_kqs = n;
        }
        if (g_kqs[fd]) {
                /* A queue whose descriptor was closed (the number is ours now). */
                struct kq *old = g_kqs[fd];
                g_kqs[fd] = NULL;
                if (old->refs == 0)
                        kq_destroy(old, false);
                else
                        old->dead = true;
        }
        kq->serial = ++g_serial;
        g_kqs[fd] = kq;
        pthread_mutex_unlock(&g_lock);
        return fd;
}

/* The queue of descriptor fd, with a reference; NULL: EBADF. */
static struct kq *kq_get(int fd) {
        struct kq *kq = NULL;

        pthread_mutex_lock(&g_lock);
        if (fd >= 0 && (size_t) fd < g_n_kqs && g_kqs[fd]) {
                kq = g_kqs[fd];
                if (kq_alive(kq)) {
                        kq->refs++;
                } else {
                        g_kqs[fd] = NULL;
                        if (kq->refs == 0)
                                kq_destroy(kq, false);
                        else
                                kq->dead = true;
                        kq = NULL;
                }
        }
        pthread_mutex_unlock(&g_lock);
        return kq;
}

/* Applies the changelist: the entries written, or -1 (err set). */
static int apply_changes(struct kq *kq, const struct kevent *changelist, int nchanges, struct kevent *eventlist,
                         int nevents, int *err) {
        int n = 0;

        for (int i = 0; i < nchanges; i++) {
                const struct kevent *c = &changelist[i];
                int r;

                if (c->filter == 0)
                        continue; /* FreeBSD skips these */
                r = apply_change(kq, c);
                if (r == 0 && !(c->flags & EV_RECEIPT))
                        continue;
                if (n == nevents) {
                        /* No room for the entry: FreeBSD stops here. */
                        if (r == 0)
                                return n;
                        *err = r;
                        return -1;
                }
                eventlist[n] = *c;
                eventlist[n].flags = EV_ERROR; /* FreeBSD: EV_ERROR alone */
                eventlist[n].data = r;
                n++;
        }
        return n;
}

EMU_EXPORT int kevent(int kqfd, const struct kevent *changelist, int nchanges, struct kevent *eventlist, int nevents,
                      const struct timespec *timeout) {
        struct kq *kq;
        int n, err = 0;
        int64_t deadline = -1;

        pthread_once(&g_once, init_once);
        if (nchanges < 0 || nevents < 0) {
                errno = EINVAL;
                return -1;
        }
        if (timeout && (timeout->tv_sec < 0 || timeout->tv_nsec < 0 || timeout->tv_nsec >= 1000000000)) {
                errno = EINVAL;
                return -1;
        }
        if (!(kq = kq_get(kqfd))) {
                errno = EBADF;
                return -1;
        }
        if (timeout) {
                int64_t ns = timeout->tv_sec > INT64_MAX / 1000000000 - 1
                                     ? INT64_MAX / 2
                                     : (int64_t) timeout->tv_sec * 1000000000 + timeout->tv_nsec;
                int64_t now = now_ns();
                /* Saturated: a timeout of years is "forever" (libloop
                 * passes about INT64_MAX nanoseconds). */
                deadline = ns > INT64_MAX - now ? INT64_MAX : now + ns;
        }
        sig_repair();
        pthread_mutex_lock(&kq->lock);
        sweep_closed(kq);
        n = apply_changes(kq, changelist, nchanges, eventlist, nevents, &err);
        if (n != 0 || nevents == 0)
                goto done;
        for (;;) {
                struct epoll_event evs[64];
                unsigned caught, ignored;
                int64_t left;
                int ms, r;

                if (kq->wakefd >= 0)
                        fd_drain(kq->wakefd);
                harvest(kq);
                n = scan(kq, eventlist, nevents);
                if (n > 0)
                        break;
                left = timeout ? deadline - now_ns() : -1;
                if (timeout && left <= 0)
                        break;
                /* ms, rounded up: never early. */
                ms = left < 0 ? -1 : left / 1000000 >= INT_MAX ? INT_MAX : (int) ((left + 999999) / 1000000);
                if (needs_recheck(kq) && (ms < 0 || ms > RECHECK_MS))
                        ms = RECHECK_MS;
                caught = atomic_load(&g_sig_caught);
                ignored = atomic_load(&g_sig_ignored);
                settle(kq);
                finish_children(kq);
                act_compact(kq);
                graveyard_free(kq);
                pthread_mutex_unlock(&kq->lock);
                r = epoll_wait(kq->fd, evs, 64, ms);
                err = errno;
                pthread_mutex_lock(&kq->lock);
                if (r > 0) {
                        handle_events(kq, evs, r);
                } else if (r < 0 && err == EINTR) {
                        /* A signal only counted for EVFILT_SIGNAL is not a caught one. */
                        if (atomic_load(&g_sig_caught) != caught || atomic_load(&g_sig_ignored) == ignored) {
                                n = -1;
                                break;
                        }
                } else if (r < 0) {
                        n = -1;
                        break;
                }
                err = 0;
        }
done:
        finish(kq);
        pthread_mutex_unlock(&kq->lock);
        unref(kq);
        if (n < 0)
                errno = err;
        return n;
}

/* ---- fork --------------------------------------------------------------- */

static void atfork_prepare(void) {
        pthread_mutex_lock(&g_lock);
        for (size_t i = 0; i < g_n_kqs; i++)
                if (g_kqs[i])
                        pthread_mutex_lock(&g_kqs[i]->lock);
        pthread_mutex_lock(&g_sig_lock);
        pthread_mutex_lock(&g_pool_lock);
        pthread_mutex_lock(&g_proc_lock);
}

static void atfork_parent(void) {
        pthread_mutex_unlock(&g_proc_lock);
        pthread_mutex_unlock(&g_pool_lock);
        pthread_mutex_unlock(&g_sig_lock);
        for (size_t i = g_n_kqs; i-- > 0;)
                if (g_kqs[i])
                        pthread_mutex_unlock(&g_kqs[i]->lock);
        pthread_mutex_unlock(&g_lock);
}

/* A fresh eventfd at the number *fd (the parent keeps the old file). */
static void renew_eventfd(int *fd, unsigned int value) {
        int nfd = eventfd(value, EFD_CLOEXEC | EFD_NONBLOCK);

        if (nfd < 0 || *fd < 0)
                return;
        if (dup3(nfd, *fd, O_CLOEXEC) >= 0)
                close(nfd);
        else
                *fd = nfd;
}

/*
 * FreeBSD: "The queue is not inherited by a child created with fork(2)."
 * The child closes every queue descriptor still ours and forgets all.
 */
static void atfork_child(void) {
        /* The locks atfork_prepare took are this thread's: released first. */
        atfork_parent();
        for (int s = 1; s < NSIG; s++) {
                if (g_sig_watchers[s] > 0)
                        (void) sigaction(s, &g_sig_saved[s], NULL);
                g_sig_watchers[s] = 0;
        }
        for (int i = 0; i < SIGW_MAX; i++) {
                atomic_store(&g_sigw[i].fd, -1);
                atomic_store(&g_sigw[i].mask, 0);
        }
        atomic_store(&g_sigw_hi, 0);
        atomic_store(&g_sig_installed, 0);
        atomic_store(&g_handlers_running, 0);
        /* The helper thread is not in the child. */
        g_n_procs = 0;
        g_proc_thread = false;
        g_proc_joinable = false;
        for (size_t i = 0; i < g_n_kqs; i++) {
                struct kq *kq = g_kqs[i];
                if (!kq)
                        continue;
                if (kq_alive(kq))
                        close(kq->fd);
                kq_destroy(kq, true);
                g_kqs[i] = NULL;
        }
        renew_eventfd(&g_ident_fd, 0);
        renew_eventfd(&g_proc_fd, 1);
        for (int i = 0; i < POOL_SIZE; i++) {
                g_pool_used[i] = false;
                renew_eventfd(&g_pool[i], 0);
        }
}
