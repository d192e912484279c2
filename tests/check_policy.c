/* SPDX-License-Identifier: MIT */
/*
 * Event-loop policies, the thread's current loop and the running loop:
 * the default policy (one loop per thread, created on demand in the main
 * thread only), custom policies derived from it, short ops tables, the
 * global policy swapped under concurrent readers, thread-exit cleanup and
 * fork.
 *
 * Under CK_FORK=no every test shares one process and its main thread, so
 * the fixture puts the global policy and the thread's current loop back to
 * their defaults around each test. With CK_FORK each test runs in a child
 * whose only thread is its main thread (gettid() == getpid()), which is
 * what the main-thread tests rely on.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#ifndef _WIN32
#include <sys/syscall.h>
#include <sys/wait.h>
#endif

#include "testutil.h"

/* ---- fixture --------------------------------------------------------- */

static void reset_globals(void)
{
        ck_assert_int_eq(loop_set_event_loop_policy(NULL), 0);
        ck_assert_int_eq(loop_thread_set_loop(NULL), 0);
}

static int is_main_thread(void)
{
#ifdef _WIN32
        return tu_win_is_main_thread();
#else
        return syscall(SYS_gettid) == getpid();
#endif
}

/* ---- helpers: a counting policy (the seed's MyEventLoopPolicy) ------- */

#define COUNTING_MAGIC 0x706f6c69u

struct counting {
        unsigned magic;
        atomic_int get_calls;
        atomic_int new_calls;
        atomic_int free_calls;
        _Atomic(loop_policy_t *) last_self;
};

/* Frees that reached a userdata which is not a struct counting. */
static atomic_int bad_frees;

/* Plain reads of the counters, for readable assertion messages. */
static int counted(atomic_int *n)
{
        return atomic_load(n);
}

static loop_policy_t *last_self(struct counting *c)
{
        return atomic_load(&c->last_self);
}


static void counting_init(struct counting *c)
{
        memset(c, 0, sizeof(*c));
        c->magic = COUNTING_MAGIC;
        atomic_init(&c->get_calls, 0);
        atomic_init(&c->new_calls, 0);
        atomic_init(&c->free_calls, 0);
        atomic_init(&c->last_self, NULL);
}

static struct counting *counting_of(loop_policy_t *self)
{
        struct counting *c = loop_policy_get_userdata(self);

        if (!c || c->magic != COUNTING_MAGIC)
                abort(); /* self is not the policy that defines the method */
        return c;
}

/* get_event_loop: count, then defer to the base ("super().get_event_loop()"). */
static int counting_get(loop_policy_t *self, loop_t **ret)
{
        struct counting *c = counting_of(self);

        atomic_fetch_add(&c->get_calls, 1);
        atomic_store(&c->last_self, self);
        return loop_policy_get_event_loop(loop_policy_get_base(self), ret);
}

static int counting_new(loop_policy_t *self, loop_t **ret)
{
        struct counting *c = counting_of(self);

        atomic_fetch_add(&c->new_calls, 1);
        atomic_store(&c->last_self, self);
        return loop_policy_new_event_loop(loop_policy_get_base(self), ret);
}

static void counting_free(void *userdata)
{
        struct counting *c = userdata;

        if (!c || c->magic != COUNTING_MAGIC) {
                atomic_fetch_add(&bad_frees, 1);
                return;
        }
        atomic_fetch_add(&c->free_calls, 1);
}

static const struct loop_policy_ops counting_ops = {
        .size = sizeof(struct loop_policy_ops),
        .get_event_loop = counting_get,
        .free = counting_free,
};

static loop_policy_t *default_policy_new(void)
{
        loop_policy_t *p = NULL;

        ck_assert_int_eq(loop_policy_new_default(&p), 0);
        ck_assert_ptr_ne(p, NULL);
        return p;
}

/* A MyEventLoopPolicy on a fresh default policy; the caller owns one ref. */
static loop_policy_t *counting_policy_new(struct counting *c)
{
        loop_policy_t *base = default_policy_new();
        loop_policy_t *p = NULL;

        counting_init(c);
        ck_assert_int_eq(loop_policy_new(&counting_ops, c, base, &p), 0);
        ck_assert_ptr_ne(p, NULL);
        ck_assert_ptr_eq(loop_policy_get_base(p), base);
        ck_assert_ptr_eq(loop_policy_get_userdata(p), c);
        /* The derived policy holds its own reference on the base. */
        loop_policy_unref(base);
        return p;
}

/* ---- helpers: threads and children ----------------------------------- */

static void run_thread(void *(*fn)(void *), void *arg)
{
        pthread_t t;

        ck_assert_int_eq(pthread_create(&t, NULL, fn, arg), 0);
        ck_assert_int_eq(pthread_join(t, NULL), 0);
}

/*
 * Fork children report the line of the first failed check through a pipe
 * and _exit(); ck_assert must not run in a child of the test.
 */
#ifndef _WIN32
static int child_report_fd = -1;

static void child_fail(int line)
{
        ssize_t n = write(child_report_fd, &line, sizeof(line));

        (void) n;
        _exit(1);
}

#define CHILD_CHECK(cond)                        \
        do {                                     \
                if (!(cond))                     \
                        child_fail(__LINE__);    \
        } while (0)

/* Waits at most timeout_ns for the child; kills it if it hangs. */
static void wait_child(pid_t pid, int report_fd, int64_t timeout_ns)
{
        int64_t deadline = tu_now_ns() + timeout_ns;
        int status = 0, line = 0;
        pid_t r;

        while ((r = waitpid(pid, &status, WNOHANG)) == 0 && tu_now_ns() < deadline)
                tu_sleep_ns(TU_MSEC);
        if (r == 0) {
                kill(pid, SIGKILL);
                ck_assert_int_eq(waitpid(pid, &status, 0), pid);
                ck_abort_msg("fork child hung (killed)");
        }
        ck_assert_int_eq(r, pid);
        if (read(report_fd, &line, sizeof(line)) == (ssize_t) sizeof(line))
                ck_abort_msg("fork child failed the check at line %d", line);
        ck_assert_msg(WIFEXITED(status), "fork child died (status 0x%x)", status);
        ck_assert_msg(WEXITSTATUS(status) == 0, "fork child exited with %d",
                      WEXITSTATUS(status));
}
#endif

/* ---- the default policy in the main thread --------------------------- */

START_TEST(test_main_thread_autocreate)
{
        int fds = tu_count_fds();
        loop_t *a = NULL, *b = NULL, *cur = NULL;

        ck_assert_msg(is_main_thread(), "Check must run the test in the process's main thread");
        ck_assert_int_ge(fds, 0);
        ck_assert_int_eq(loop_thread_get_loop(&cur), -ENOENT);
        ck_assert_int_eq(loop_get_event_loop(NULL), -EINVAL);

        ck_assert_int_eq(loop_get_event_loop(&a), 0);
        ck_assert_ptr_ne(a, NULL);
        ck_assert_int_eq(loop_is_closed(a), 0);
        ck_assert_int_gt(tu_count_fds(), fds);
        /* The second call returns the loop the first one created and installed. */
        ck_assert_int_eq(loop_get_event_loop(&b), 0);
        ck_assert_ptr_eq(b, a);
        ck_assert_int_eq(loop_thread_get_loop(&cur), 0);
        ck_assert_ptr_eq(cur, a);
        tu_assert_usable(a);

        /* Three references handed out, one kept by the thread: dropping ours
         * leaves a working loop; clearing the thread's slot releases it. */
        loop_unref(cur);
        loop_unref(b);
        loop_unref(a);
        ck_assert_int_eq(loop_thread_get_loop(&cur), 0);
        tu_assert_usable(cur);
        loop_unref(cur);
        ck_assert_int_eq(loop_set_event_loop(NULL), 0);
        ck_assert_int_eq(loop_thread_get_loop(&cur), -ENOENT);
        ck_assert_int_eq(tu_count_fds(), fds);

        /* Cleared after a loop was set (here by the creation on demand):
         * no implicit loop any more (CPython's
         * test_get_event_loop_after_set_none). */
        ck_assert_int_eq(loop_get_event_loop(&a), -ENOENT);
        ck_assert_int_eq(loop_thread_get_loop(&cur), -ENOENT);
        /* A policy of its own has its own record: it creates one again. */
        loop_policy_t *p = NULL;
        ck_assert_int_eq(loop_policy_new_default(&p), 0);
        ck_assert_int_eq(loop_policy_get_event_loop(p, &a), 0);
        tu_assert_usable(a);
        loop_unref(a);
        ck_assert_int_eq(loop_policy_set_event_loop(p, NULL), 0);
        ck_assert_int_eq(loop_policy_get_event_loop(p, &a), -ENOENT);
        loop_policy_unref(p);
        ck_assert_int_eq(tu_count_fds(), fds);
}
END_TEST

/* An explicit set_event_loop(NULL) before any loop existed forbids the
 * implicit one too; setting a loop makes it the answer again. */
START_TEST(test_set_none_forbids_implicit_loop)
{
        loop_t *a = NULL, *got = NULL;

        ck_assert_int_eq(loop_set_event_loop(NULL), 0);
        ck_assert_int_eq(loop_get_event_loop(&got), -ENOENT);
        ck_assert_int_eq(loop_new_event_loop(&a), 0);
        ck_assert_int_eq(loop_set_event_loop(a), 0);
        ck_assert_int_eq(loop_get_event_loop(&got), 0);
        ck_assert_ptr_eq(got, a);
        loop_unref(got);
        ck_assert_int_eq(loop_set_event_loop(NULL), 0);
        ck_assert_int_eq(loop_get_event_loop(&got), -ENOENT);
        loop_unref(a);
}
END_TEST

START_TEST(test_new_event_loop_not_installed)
{
#ifdef _WIN32
        TU_SKIP_ON_WINDOWS("needs a process of its own (no fork): an earlier case set the builtin policy's loop, and asyncio's _set_called then forbids the implicit loop");
#else
        loop_t *n = NULL, *cur = NULL, *got = NULL;

        ck_assert_int_eq(loop_new_event_loop(NULL), -EINVAL);
        ck_assert_int_eq(loop_new_event_loop(&n), 0);
        ck_assert_ptr_ne(n, NULL);
        ck_assert_int_eq(loop_thread_get_loop(&cur), -ENOENT);
        /* get_event_loop then creates a different loop: n was not installed. */
        ck_assert_int_eq(loop_get_event_loop(&got), 0);
        ck_assert_ptr_ne(got, n);
        ck_assert_int_eq(loop_set_event_loop(n), 0);
        ck_assert_int_eq(loop_thread_get_loop(&cur), 0);
        ck_assert_ptr_eq(cur, n);
        loop_unref(cur);
        loop_unref(got);
        loop_unref(n);
#endif
}
END_TEST

/* ---- the default policy in other threads ------------------------------ */

struct thread_result {
        loop_t *sentinel;
        int get_event_loop, thread_get, policy_get;
        loop_t *got, *thread_got, *policy_got;
};

static void *get_in_thread_main(void *arg)
{
        struct thread_result *tr = arg;
        loop_policy_t *p = loop_get_event_loop_policy();

        tr->got = tr->thread_got = tr->policy_got = tr->sentinel;
        tr->get_event_loop = loop_get_event_loop(&tr->got);
        tr->thread_get = loop_thread_get_loop(&tr->thread_got);
        tr->policy_get = loop_policy_get_event_loop(p, &tr->policy_got);
        loop_policy_unref(p);
        return NULL;
}

static void assert_no_loop_in_thread(struct thread_result *tr)
{
        ck_assert_int_eq(tr->get_event_loop, -ENOENT);
        ck_assert_msg(tr->got == tr->sentinel || tr->got == NULL,
                      "loop_get_event_loop failed but handed out %p", (void *) tr->got);
        ck_assert_int_eq(tr->thread_get, -ENOENT);
        ck_assert_msg(tr->thread_got == tr->sentinel || tr->thread_got == NULL,
                      "loop_thread_get_loop failed but handed out %p", (void *) tr->thread_got);
        ck_assert_int_eq(tr->policy_get, -ENOENT);
        ck_assert_msg(tr->policy_got == tr->sentinel || tr->policy_got == NULL,
                      "loop_policy_get_event_loop failed but handed out %p",
                      (void *) tr->policy_got);
}

START_TEST(test_non_main_thread_enoent)
{
        loop_t *mine = tu_loop_new();
        struct thread_result tr = { .sentinel = mine };

        /* Even with a loop current in the main thread: the slot is per thread. */
        ck_assert_int_eq(loop_set_event_loop(mine), 0);
        run_thread(get_in_thread_main, &tr);
        assert_no_loop_in_thread(&tr);
        tu_assert_usable(mine);
        loop_unref(mine);
}
END_TEST

struct set_get_result {
        int new_r, before_thread, before_get, set_r, get_r, thread_r;
        int same_get, same_thread, usable, cleared_r, after_clear_r;
        loop_t *created;
};

static void *set_get_thread_main(void *arg)
{
        struct set_get_result *res = arg;
        loop_t *l = NULL, *g = NULL, *t = NULL, *x = NULL;
        int count = 0;

        res->new_r = loop_new_event_loop(&l);
        if (res->new_r < 0)
                return NULL;
        res->created = l;
        /* new_event_loop does not install: nothing is current yet. */
        res->before_thread = loop_thread_get_loop(&x);
        res->before_get = loop_get_event_loop(&x);
        res->set_r = loop_set_event_loop(l);
        res->get_r = loop_get_event_loop(&g);
        res->same_get = res->get_r == 0 && g == l;
        res->thread_r = loop_thread_get_loop(&t);
        res->same_thread = res->thread_r == 0 && t == l;
        if (loop_call_soon(l, tu_count_cb, &count, NULL) == 0 && loop_run_once(l, 0) == 1)
                res->usable = count == 1;
        if (res->get_r == 0)
                loop_unref(g);
        if (res->thread_r == 0)
                loop_unref(t);
        loop_unref(l);
        res->cleared_r = loop_set_event_loop(NULL);
        res->after_clear_r = loop_get_event_loop(&x);
        return NULL;
}

START_TEST(test_thread_set_then_get)
{
        struct set_get_result res = { 0 };

        run_thread(set_get_thread_main, &res);
        ck_assert_int_eq(res.new_r, 0);
        ck_assert_ptr_ne(res.created, NULL);
        ck_assert_int_eq(res.before_thread, -ENOENT);
        ck_assert_int_eq(res.before_get, -ENOENT);
        ck_assert_int_eq(res.set_r, 0);
        ck_assert_int_eq(res.get_r, 0);
        ck_assert_int_eq(res.same_get, 1);
        ck_assert_int_eq(res.thread_r, 0);
        ck_assert_int_eq(res.same_thread, 1);
        ck_assert_int_eq(res.usable, 1);
        ck_assert_int_eq(res.cleared_r, 0);
        ck_assert_int_eq(res.after_clear_r, -ENOENT);
}
END_TEST

/* All default policy objects share the per-thread slot. */
START_TEST(test_default_policies_share_slot)
{
        loop_policy_t *p1 = default_policy_new(), *p2 = default_policy_new();
        loop_policy_t *global = loop_get_event_loop_policy();
        loop_t *l = NULL, *n = NULL, *g = NULL;

        ck_assert_ptr_ne(p1, p2);
        ck_assert_ptr_eq(loop_policy_get_base(p1), NULL);
        ck_assert_ptr_eq(loop_policy_get_userdata(p1), NULL);
        ck_assert_int_eq(loop_policy_new_event_loop(p1, &n), 0);
        ck_assert_ptr_ne(n, NULL);
        ck_assert_int_eq(loop_thread_get_loop(&g), -ENOENT);
        ck_assert_int_eq(loop_policy_set_event_loop(p1, n), 0);
        ck_assert_int_eq(loop_policy_get_event_loop(p2, &l), 0);
        ck_assert_ptr_eq(l, n);
        loop_unref(l);
        ck_assert_int_eq(loop_policy_get_event_loop(global, &l), 0);
        ck_assert_ptr_eq(l, n);
        loop_unref(l);
        ck_assert_int_eq(loop_thread_get_loop(&l), 0);
        ck_assert_ptr_eq(l, n);
        loop_unref(l);
        /* NULL clears, through any of them. */
        ck_assert_int_eq(loop_policy_set_event_loop(p2, NULL), 0);
        ck_assert_int_eq(loop_thread_get_loop(&l), -ENOENT);
        loop_unref(n);
        loop_policy_unref(global);
        loop_policy_unref(p2);
        loop_policy_unref(p1);
}
END_TEST

/* ---- loop_thread_set_loop / loop_thread_get_loop ----------------------- */

START_TEST(test_thread_set_get_primitives)
{
        int fds = tu_count_fds();
        loop_t *a = tu_loop_new(), *b = tu_loop_new(), *l = NULL;
        int per_loop;

        ck_assert_int_ge(fds, 0);
        per_loop = (tu_count_fds() - fds) / 2;
        ck_assert_int_gt(per_loop, 0);

        ck_assert_int_eq(loop_thread_get_loop(NULL), -EINVAL);
        ck_assert_int_eq(loop_thread_get_loop(&l), -ENOENT);
        ck_assert_int_eq(loop_thread_set_loop(NULL), 0); /* clearing nothing is fine */
        ck_assert_int_eq(loop_thread_get_loop(&l), -ENOENT);

        ck_assert_int_eq(loop_thread_set_loop(a), 0);
        ck_assert_int_eq(loop_thread_set_loop(a), 0); /* again: still one reference */
        /* The slot holds its own reference: ours can go. */
        loop_unref(a);
        ck_assert_int_eq(loop_thread_get_loop(&l), 0);
        ck_assert_ptr_eq(l, a);
        tu_assert_usable(l);
        /* Each get is a new reference. */
        ck_assert_ptr_eq(loop_unref(l), NULL);
        ck_assert_int_eq(loop_thread_get_loop(&l), 0);
        ck_assert_ptr_eq(l, a);
        loop_unref(l);
        ck_assert_int_eq(tu_count_fds(), fds + 2 * per_loop);

        /* Setting b releases a (the last reference: its fds close). */
        ck_assert_int_eq(loop_thread_set_loop(b), 0);
        ck_assert_int_eq(tu_count_fds(), fds + per_loop);
        ck_assert_int_eq(loop_thread_get_loop(&l), 0);
        ck_assert_ptr_eq(l, b);
        loop_unref(l);

        /* NULL clears; b survives on the caller's reference. */
        ck_assert_int_eq(loop_thread_set_loop(NULL), 0);
        ck_assert_int_eq(loop_thread_get_loop(&l), -ENOENT);
        tu_assert_usable(b);
        loop_unref(b);
        ck_assert_int_eq(tu_count_fds(), fds);
}
END_TEST

/* ---- loop_get_running_loop -------------------------------------------- */

struct running_seen {
        int running_r, event_r;
        loop_t *running, *event;
};

static int see_running_cb(loop_t *loop, void *userdata)
{
        struct running_seen *s = userdata;

        (void) loop;
        s->running_r = loop_get_running_loop(&s->running);
        s->event_r = loop_get_event_loop(&s->event);
        return 0;
}

START_TEST(test_get_running_loop)
{
        loop_t *loop = tu_loop_new(), *l = NULL;
        struct running_seen s = { .running_r = 1, .event_r = 1 };

        ck_assert_int_eq(loop_get_running_loop(NULL), -EINVAL);
        ck_assert_int_eq(loop_get_running_loop(&l), -ENOENT);
        ck_assert_ptr_eq(l, NULL);

        ck_assert_int_eq(loop_call_soon(loop, see_running_cb, &s, NULL), 0);
        ck_assert_int_eq(loop_run_once(loop, 0), 1);
        ck_assert_int_eq(s.running_r, 0);
        ck_assert_ptr_eq(s.running, loop);
        ck_assert_int_eq(s.event_r, 0);
        ck_assert_ptr_eq(s.event, loop);
        /* Both were new references. */
        loop_unref(s.running);
        loop_unref(s.event);
        tu_assert_usable(loop);

        ck_assert_int_eq(loop_get_running_loop(&l), -ENOENT);
        /* The running loop was not installed as the current one. */
        ck_assert_int_eq(loop_thread_get_loop(&l), -ENOENT);
        loop_unref(loop);
}
END_TEST

/* ---- loop_set_event_loop_policy(NULL) ---------------------------------- */

START_TEST(test_set_policy_null_restores_default)
{
#ifdef _WIN32
        TU_SKIP_ON_WINDOWS("needs a process of its own (no fork): an earlier case set the builtin policy's loop, and asyncio's _set_called then forbids the implicit loop");
#else
        struct counting c;
        loop_policy_t *builtin = loop_get_event_loop_policy();
        loop_policy_t *custom = counting_policy_new(&c), *p;
        loop_t *l = NULL;
        struct thread_result tr = { .sentinel = (loop_t *) &tr };

        ck_assert_ptr_ne(builtin, NULL);
        ck_assert_ptr_ne(builtin, custom);
        ck_assert_int_eq(loop_set_event_loop_policy(custom), 0);
        p = loop_get_event_loop_policy();
        ck_assert_ptr_eq(p, custom);
        loop_policy_unref(p);

        ck_assert_int_eq(loop_set_event_loop_policy(NULL), 0);
        p = loop_get_event_loop_policy();
        ck_assert_ptr_ne(p, NULL);
        ck_assert_ptr_ne(p, custom);
        ck_assert_ptr_eq(p, builtin);
        loop_policy_unref(p);
        /* The global policy dropped its reference; ours keeps custom alive. */
        ck_assert_int_eq(counted(&c.free_calls), 0);

        /* It behaves as the default: -ENOENT in another thread, without
         * ever reaching the custom policy... */
        run_thread(get_in_thread_main, &tr);
        assert_no_loop_in_thread(&tr);
        /* ...and a loop created on demand in the main thread. */
        ck_assert_int_eq(loop_get_event_loop(&l), 0);
        ck_assert_ptr_ne(l, NULL);
        loop_unref(l);
        ck_assert_int_eq(counted(&c.get_calls), 0);

        loop_policy_unref(builtin);
        loop_policy_unref(custom);
        ck_assert_int_eq(counted(&c.free_calls), 1);
#endif
}
END_TEST

/* ---- a custom policy: MyEventLoopPolicy -------------------------------- */

struct inside_seen {
        int calls_before, calls_after, event_r;
        loop_t *event;
        struct counting *c;
};

static int inside_cb(loop_t *loop, void *userdata)
{
        struct inside_seen *s = userdata;

        (void) loop;
        s->calls_before = atomic_load(&s->c->get_calls);
        s->event_r = loop_get_event_loop(&s->event);
        s->calls_after = atomic_load(&s->c->get_calls);
        return 0;
}

START_TEST(test_custom_policy_counts_and_delegates)
{
        struct counting c;
        loop_policy_t *p = counting_policy_new(&c);
        loop_t *l = NULL, *l2 = NULL, *n = NULL, *cur = NULL, *other;
        struct inside_seen s = { .c = &c, .event_r = 1 };

        ck_assert_int_eq(loop_set_event_loop_policy(p), 0);

        /* No loop running: loop_get_event_loop asks the policy, whose override
         * delegates to the default (creating the main thread's loop). */
        ck_assert_int_eq(loop_get_event_loop(&l), 0);
        ck_assert_ptr_ne(l, NULL);
        ck_assert_int_eq(counted(&c.get_calls), 1);
        ck_assert_ptr_eq(last_self(&c), p);
        ck_assert_int_eq(loop_get_event_loop(&l2), 0);
        ck_assert_ptr_eq(l2, l);
        ck_assert_int_eq(counted(&c.get_calls), 2);
        ck_assert_int_eq(loop_policy_get_event_loop(p, &cur), 0);
        ck_assert_ptr_eq(cur, l);
        ck_assert_int_eq(counted(&c.get_calls), 3);
        loop_unref(cur);
        loop_unref(l2);

        /* new/set are not overridden: the base's, which do not call get. */
        ck_assert_int_eq(loop_new_event_loop(&n), 0);
        ck_assert_ptr_ne(n, NULL);
        ck_assert_ptr_ne(n, l);
        ck_assert_int_eq(loop_thread_get_loop(&cur), 0);
        ck_assert_ptr_eq(cur, l); /* not installed */
        loop_unref(cur);
        ck_assert_int_eq(loop_set_event_loop(n), 0);
        ck_assert_int_eq(loop_thread_get_loop(&cur), 0);
        ck_assert_ptr_eq(cur, n);
        loop_unref(cur);
        ck_assert_int_eq(counted(&c.get_calls), 3);
        ck_assert_int_eq(loop_get_event_loop(&cur), 0);
        ck_assert_ptr_eq(cur, n);
        loop_unref(cur);
        ck_assert_int_eq(counted(&c.get_calls), 4);

        /* Inside a running loop's callback the running loop wins and the
         * policy is not asked (the running loop is not the current one). */
        other = tu_loop_new();
        ck_assert_int_eq(loop_call_soon(other, inside_cb, &s, NULL), 0);
        ck_assert_int_eq(loop_run_once(other, 0), 1);
        ck_assert_int_eq(s.event_r, 0);
        ck_assert_ptr_eq(s.event, other);
        ck_assert_int_eq(s.calls_before, 4);
        ck_assert_int_eq(s.calls_after, 4);
        loop_unref(s.event);

        /* Not running any more: back through the policy. */
        ck_assert_int_eq(loop_get_event_loop(&cur), 0);
        ck_assert_ptr_eq(cur, n);
        loop_unref(cur);
        ck_assert_int_eq(counted(&c.get_calls), 5);

        loop_unref(other);
        loop_unref(n);
        loop_unref(l);
        ck_assert_int_eq(loop_set_event_loop(NULL), 0);
        ck_assert_int_eq(loop_set_event_loop_policy(NULL), 0);
        ck_assert_int_eq(counted(&c.free_calls), 0);
        loop_policy_unref(p);
        ck_assert_int_eq(counted(&c.free_calls), 1);
        ck_assert_int_eq(counted(&bad_frees), 0);
}
END_TEST

/*
 * A chain: derived (no methods of its own) -> middle (overrides get and
 * new) -> default. Each method gets self = the policy that defines it.
 */
START_TEST(test_policy_chain_self)
{
        struct counting mid, leaf;
        loop_policy_t *middle, *derived = NULL;
        static const struct loop_policy_ops mid_ops = {
                .size = sizeof(struct loop_policy_ops),
                .get_event_loop = counting_get,
                .new_event_loop = counting_new,
                .free = counting_free,
        };
        static const struct loop_policy_ops empty_ops = {
                .size = sizeof(struct loop_policy_ops),
                .free = counting_free,
        };
        loop_policy_t *base = default_policy_new();
        loop_t *n = NULL, *g = NULL;

        counting_init(&mid);
        counting_init(&leaf);
        ck_assert_int_eq(loop_policy_new(&mid_ops, &mid, base, &middle), 0);
        loop_policy_unref(base);
        ck_assert_int_eq(loop_policy_new(&empty_ops, &leaf, middle, &derived), 0);
        ck_assert_ptr_eq(loop_policy_get_base(derived), middle);
        ck_assert_ptr_eq(loop_policy_get_userdata(derived), &leaf);
        /* derived keeps middle alive. */
        loop_policy_unref(middle);
        ck_assert_int_eq(counted(&mid.free_calls), 0);

        ck_assert_int_eq(loop_policy_new_event_loop(derived, &n), 0);
        ck_assert_ptr_ne(n, NULL);
        ck_assert_int_eq(counted(&mid.new_calls), 1);
        ck_assert_ptr_eq(last_self(&mid), middle);
        ck_assert_int_eq(loop_thread_get_loop(&g), -ENOENT);
        ck_assert_int_eq(loop_policy_set_event_loop(derived, n), 0);
        ck_assert_int_eq(loop_policy_get_event_loop(derived, &g), 0);
        ck_assert_ptr_eq(g, n);
        ck_assert_int_eq(counted(&mid.get_calls), 1);
        ck_assert_ptr_eq(last_self(&mid), middle);
        ck_assert_int_eq(counted(&leaf.get_calls), 0);
        ck_assert_int_eq(counted(&leaf.new_calls), 0);
        loop_unref(g);
        loop_unref(n);

        loop_policy_unref(derived);
        ck_assert_int_eq(counted(&leaf.free_calls), 1);
        ck_assert_int_eq(counted(&mid.free_calls), 1);
        ck_assert_int_eq(counted(&bad_frees), 0);
}
END_TEST

/*
 * Overriding only new_event_loop changes the loops the default
 * get_event_loop creates on demand, as in asyncio where the default
 * policy's get_event_loop calls self.new_event_loop() (Python's self being
 * the derived policy): it is how a policy picks the loop class.
 */
START_TEST(test_derived_new_used_on_demand)
{
        static const struct loop_policy_ops new_only = {
                .size = sizeof(struct loop_policy_ops),
                .new_event_loop = counting_new,
                .free = counting_free,
        };
        struct counting c;
        loop_policy_t *base = default_policy_new(), *p = NULL;
        loop_t *l = NULL, *again = NULL;

        counting_init(&c);
        ck_assert_int_eq(loop_policy_new(&new_only, &c, base, &p), 0);
        loop_policy_unref(base);
        ck_assert_int_eq(loop_set_event_loop_policy(p), 0);
        ck_assert_int_eq(loop_get_event_loop(&l), 0);
        ck_assert_ptr_ne(l, NULL);
        ck_assert_int_eq(counted(&c.new_calls), 1);
        ck_assert_ptr_eq(last_self(&c), p);
        /* Created once, installed: the next call finds it. */
        ck_assert_int_eq(loop_get_event_loop(&again), 0);
        ck_assert_ptr_eq(again, l);
        ck_assert_int_eq(counted(&c.new_calls), 1);
        loop_unref(again);
        loop_unref(l);
        ck_assert_int_eq(loop_set_event_loop_policy(NULL), 0);
        loop_policy_unref(p);
        ck_assert_int_eq(counted(&c.free_calls), 1);
}
END_TEST

/* ---- ops tables: sizes, NULL methods, bad results ---------------------- */

static atomic_int must_not_run_calls;

static int must_not_get(loop_policy_t *self, loop_t **ret)
{
        (void) self;
        (void) ret;
        atomic_fetch_add(&must_not_run_calls, 1);
        return -EPROTO;
}

static int must_not_new(loop_policy_t *self, loop_t **ret)
{
        (void) self;
        (void) ret;
        atomic_fetch_add(&must_not_run_calls, 1);
        return -EPROTO;
}

static void must_not_free(void *userdata)
{
        (void) userdata;
        atomic_fetch_add(&must_not_run_calls, 1);
}

/* A complete policy without a base, on the primitives. */
static int own_get(loop_policy_t *self, loop_t **ret)
{
        (void) self;
        return loop_thread_get_loop(ret);
}

static int own_set(loop_policy_t *self, loop_t *loop)
{
        (void) self;
        return loop_thread_set_loop(loop);
}

static int own_new(loop_policy_t *self, loop_t **ret)
{
        (void) self;
        return loop_new(ret);
}

START_TEST(test_ops_short_table)
{
        /* An older caller knew the table up to new_event_loop: what follows
         * (free) is not its to give and must not be read. */
        struct loop_policy_ops old = {
                .size = offsetof(struct loop_policy_ops, free),
                .get_event_loop = own_get,
                .set_event_loop = own_set,
                .new_event_loop = own_new,
                .free = must_not_free,
        };
        struct counting c;
        loop_policy_t *p = NULL;
        loop_t *n = NULL, *g = NULL;

        atomic_store(&must_not_run_calls, 0);
        counting_init(&c);
        ck_assert_int_eq(loop_policy_new(&old, &c, NULL, &p), 0);
        ck_assert_ptr_ne(p, NULL);
        ck_assert_ptr_eq(loop_policy_get_base(p), NULL);
        ck_assert_ptr_eq(loop_policy_get_userdata(p), &c);
        ck_assert_int_eq(loop_set_event_loop_policy(p), 0);
        ck_assert_int_eq(loop_new_event_loop(&n), 0);
        ck_assert_int_eq(loop_set_event_loop(n), 0);
        ck_assert_int_eq(loop_get_event_loop(&g), 0);
        ck_assert_ptr_eq(g, n);
        loop_unref(g);
        loop_unref(n);
        ck_assert_int_eq(loop_set_event_loop(NULL), 0);
        ck_assert_int_eq(loop_get_event_loop(&g), -ENOENT); /* own_get never creates */
        ck_assert_int_eq(loop_set_event_loop_policy(NULL), 0);
        loop_policy_unref(p);
        ck_assert_int_eq(counted(&must_not_run_calls), 0);
        ck_assert_int_eq(counted(&c.free_calls), 0);
}
END_TEST

START_TEST(test_ops_short_table_falls_back)
{
        /* Only get_event_loop was known: new_event_loop and free, though the
         * table's memory holds something there, count as NULL. */
        struct loop_policy_ops old = {
                .size = offsetof(struct loop_policy_ops, set_event_loop),
                .get_event_loop = counting_get,
                .set_event_loop = own_set,
                .new_event_loop = must_not_new,
                .free = must_not_free,
        };
        struct loop_policy_ops only_size = {
                .size = sizeof(size_t),
                .get_event_loop = must_not_get,
                .set_event_loop = own_set,
                .new_event_loop = must_not_new,
                .free = must_not_free,
        };
        struct counting c;
        loop_policy_t *base = default_policy_new(), *p = NULL, *q = NULL;
        loop_t *n = NULL, *g = NULL;

        atomic_store(&must_not_run_calls, 0);
        counting_init(&c);
        /* Without a base, the missing members leave nothing to fall back to. */
        ck_assert_int_eq(loop_policy_new(&old, &c, NULL, &p), -EINVAL);
        ck_assert_int_eq(loop_policy_new(&only_size, &c, NULL, &p), -EINVAL);
        ck_assert_ptr_eq(p, NULL);

        ck_assert_int_eq(loop_policy_new(&old, &c, base, &p), 0);
        ck_assert_int_eq(loop_policy_new_event_loop(p, &n), 0);
        ck_assert_ptr_ne(n, NULL);
        ck_assert_int_eq(loop_policy_set_event_loop(p, n), 0);
        ck_assert_int_eq(loop_policy_get_event_loop(p, &g), 0);
        ck_assert_ptr_eq(g, n);
        ck_assert_int_eq(counted(&c.get_calls), 1);
        loop_unref(g);

        /* size = sizeof(size_t): every method is the base's. */
        ck_assert_int_eq(loop_policy_new(&only_size, NULL, base, &q), 0);
        ck_assert_int_eq(loop_policy_get_event_loop(q, &g), 0);
        ck_assert_ptr_eq(g, n);
        loop_unref(g);
        ck_assert_int_eq(loop_policy_set_event_loop(q, NULL), 0);
        ck_assert_int_eq(loop_thread_get_loop(&g), -ENOENT);
        loop_unref(n);

        loop_policy_unref(q);
        loop_policy_unref(p);
        loop_policy_unref(base);
        ck_assert_int_eq(counted(&must_not_run_calls), 0);
        ck_assert_int_eq(counted(&c.free_calls), 0);
}
END_TEST

START_TEST(test_ops_invalid)
{
        struct loop_policy_ops ops = {
                .size = sizeof(struct loop_policy_ops),
                .get_event_loop = own_get,
                .set_event_loop = own_set,
                .new_event_loop = own_new,
        };
        loop_policy_t *base = default_policy_new(), *p = NULL;
        loop_t *l = NULL;

        ck_assert_int_eq(loop_policy_new(NULL, NULL, base, &p), -EINVAL);
        ck_assert_int_eq(loop_policy_new(&ops, NULL, base, NULL), -EINVAL);
        ops.size = 0;
        ck_assert_int_eq(loop_policy_new(&ops, NULL, base, &p), -EINVAL);
        ops.size = sizeof(size_t) - 1;
        ck_assert_int_eq(loop_policy_new(&ops, NULL, base, &p), -EINVAL);
        ck_assert_ptr_eq(p, NULL);

        /* No base: each of the three methods is required. */
        ops.size = sizeof(ops);
        ops.get_event_loop = NULL;
        ck_assert_int_eq(loop_policy_new(&ops, NULL, NULL, &p), -EINVAL);
        ops.get_event_loop = own_get;
        ops.set_event_loop = NULL;
        ck_assert_int_eq(loop_policy_new(&ops, NULL, NULL, &p), -EINVAL);
        ops.set_event_loop = own_set;
        ops.new_event_loop = NULL;
        ck_assert_int_eq(loop_policy_new(&ops, NULL, NULL, &p), -EINVAL);
        ck_assert_ptr_eq(p, NULL);
        ops.new_event_loop = own_new;
        ck_assert_int_eq(loop_policy_new(&ops, NULL, NULL, &p), 0);
        ck_assert_ptr_ne(p, NULL);

        ck_assert_int_eq(loop_policy_new_default(NULL), -EINVAL);
        ck_assert_int_eq(loop_policy_get_event_loop(NULL, &l), -EINVAL);
        ck_assert_int_eq(loop_policy_get_event_loop(p, NULL), -EINVAL);
        ck_assert_int_eq(loop_policy_set_event_loop(NULL, NULL), -EINVAL);
        ck_assert_int_eq(loop_policy_new_event_loop(NULL, &l), -EINVAL);
        ck_assert_int_eq(loop_policy_new_event_loop(p, NULL), -EINVAL);
        ck_assert_ptr_eq(l, NULL);
        ck_assert_ptr_eq(loop_policy_ref(NULL), NULL);
        ck_assert_ptr_eq(loop_policy_unref(NULL), NULL);
        ck_assert_ptr_eq(loop_policy_get_userdata(NULL), NULL);
        ck_assert_ptr_eq(loop_policy_get_base(NULL), NULL);
        ck_assert_ptr_eq(loop_policy_ref(p), p);
        ck_assert_ptr_eq(loop_policy_unref(p), NULL);
        ck_assert_ptr_eq(loop_policy_unref(p), NULL);
        loop_policy_unref(base);
}
END_TEST

static int null_get(loop_policy_t *self, loop_t **ret)
{
        (void) self;
        *ret = NULL;
        return 0;
}

/* Success without touching *ret at all. */
static int untouched_new(loop_policy_t *self, loop_t **ret)
{
        (void) self;
        (void) ret;
        return 0;
}

static int failing_get(loop_policy_t *self, loop_t **ret)
{
        (void) self;
        (void) ret;
        return -EPERM;
}

START_TEST(test_policy_success_without_loop)
{
        static const struct loop_policy_ops null_ops = {
                .size = sizeof(struct loop_policy_ops),
                .get_event_loop = null_get,
                .new_event_loop = untouched_new,
        };
        static const struct loop_policy_ops failing_ops = {
                .size = sizeof(struct loop_policy_ops),
                .get_event_loop = failing_get,
        };
        loop_policy_t *base = default_policy_new(), *p = NULL, *f = NULL;
        loop_t *l = NULL, *other = tu_loop_new();
        struct running_seen s = { .running_r = 1, .event_r = 1 };

        ck_assert_int_eq(loop_policy_new(&null_ops, NULL, base, &p), 0);
        ck_assert_int_eq(loop_policy_get_event_loop(p, &l), -ENOENT);
        ck_assert_int_eq(loop_policy_new_event_loop(p, &l), -ENOENT);
        ck_assert_int_eq(loop_set_event_loop_policy(p), 0);
        ck_assert_int_eq(loop_get_event_loop(&l), -ENOENT);
        ck_assert_int_eq(loop_new_event_loop(&l), -ENOENT);
        ck_assert_ptr_eq(l, NULL);

        /* Inside a callback the policy is not asked at all. */
        ck_assert_int_eq(loop_call_soon(other, see_running_cb, &s, NULL), 0);
        ck_assert_int_eq(loop_run_once(other, 0), 1);
        ck_assert_int_eq(s.event_r, 0);
        ck_assert_ptr_eq(s.event, other);
        loop_unref(s.event);
        loop_unref(s.running);

        /* A method's error is passed on as it is. */
        ck_assert_int_eq(loop_policy_new(&failing_ops, NULL, base, &f), 0);
        ck_assert_int_eq(loop_set_event_loop_policy(f), 0);
        ck_assert_int_eq(loop_get_event_loop(&l), -EPERM);
        ck_assert_ptr_eq(l, NULL);
        ck_assert_int_eq(loop_new_event_loop(&l), 0); /* the base's */
        ck_assert_ptr_ne(l, NULL);
        loop_unref(l);

        ck_assert_int_eq(loop_set_event_loop_policy(NULL), 0);
        loop_policy_unref(f);
        loop_policy_unref(p);
        loop_policy_unref(base);
        loop_unref(other);
}
END_TEST

START_TEST(test_policy_free_once)
{
        struct counting a, b;
        loop_policy_t *pa = counting_policy_new(&a), *pb = counting_policy_new(&b), *g;

        /* Extra references delay the free. */
        ck_assert_ptr_eq(loop_policy_ref(pa), pa);
        loop_policy_unref(pa);
        ck_assert_int_eq(counted(&a.free_calls), 0);

        /* Installed globally, then our reference dropped: the global one
         * keeps it. */
        ck_assert_int_eq(loop_set_event_loop_policy(pa), 0);
        loop_policy_unref(pa);
        ck_assert_int_eq(counted(&a.free_calls), 0);
        g = loop_get_event_loop_policy();
        ck_assert_ptr_eq(g, pa);
        ck_assert_int_eq(loop_set_event_loop_policy(pa), 0); /* same one again */
        loop_policy_unref(g);
        ck_assert_int_eq(counted(&a.free_calls), 0);

        /* Replaced: the last reference goes, free runs once. */
        ck_assert_int_eq(loop_set_event_loop_policy(pb), 0);
        ck_assert_int_eq(counted(&a.free_calls), 1);
        loop_policy_unref(pb);
        ck_assert_int_eq(counted(&b.free_calls), 0);
        /* A reference taken from the global survives the swap. */
        g = loop_get_event_loop_policy();
        ck_assert_ptr_eq(g, pb);
        ck_assert_int_eq(loop_set_event_loop_policy(NULL), 0);
        ck_assert_int_eq(counted(&b.free_calls), 0);
        ck_assert_ptr_eq(loop_policy_get_userdata(g), &b);
        loop_policy_unref(g);
        ck_assert_int_eq(counted(&b.free_calls), 1);
        ck_assert_int_eq(counted(&a.free_calls), 1);
        ck_assert_int_eq(counted(&bad_frees), 0);
}
END_TEST

/* ---- swapping the global policy under concurrent readers ---------------- */

#define SWAP_READERS 4
#define SWAP_ROUNDS 3000
#define READER_MIN_ITERATIONS 2000

struct swap_shared {
        pthread_barrier_t start;
        atomic_int stop;
        atomic_int failures;    /* wrong answers seen by readers */
        atomic_long get_calls;  /* loop_get_event_loop calls by readers */
};

struct swap_reader {
        struct swap_shared *shared;
        int setup;
        long iterations;
};

static void *swap_reader_main(void *arg)
{
        struct swap_reader *rd = arg;
        struct swap_shared *sh = rd->shared;
        loop_t *mine = NULL;
        long i;

        rd->setup = loop_new(&mine);
        if (rd->setup == 0) {
                rd->setup = loop_thread_set_loop(mine);
                if (rd->setup < 0)
                        loop_unref(mine);
        }
        pthread_barrier_wait(&sh->start);
        if (rd->setup < 0)
                return NULL;
        for (i = 0; i < READER_MIN_ITERATIONS || !atomic_load(&sh->stop); i++) {
                loop_policy_t *p = loop_get_event_loop_policy();
                loop_t *l = NULL;

                if (!p)
                        atomic_fetch_add(&sh->failures, 1);
                loop_policy_unref(p);
                if (loop_get_event_loop(&l) < 0 || l != mine)
                        atomic_fetch_add(&sh->failures, 1);
                loop_unref(l);
                atomic_fetch_add(&sh->get_calls, 1);
        }
        rd->iterations = i;
        /* The thread's exit releases the current loop. */
        loop_unref(mine);
        return NULL;
}

START_TEST(test_policy_swap_concurrent)
{
        struct swap_shared sh;
        struct swap_reader rd[SWAP_READERS];
        pthread_t t[SWAP_READERS];
        struct counting a, b;
        loop_policy_t *pa = counting_policy_new(&a), *pb = counting_policy_new(&b);
        long total = 0, calls;
        int i;

        memset(&sh, 0, sizeof(sh));
        atomic_init(&sh.stop, 0);
        atomic_init(&sh.failures, 0);
        atomic_init(&sh.get_calls, 0);
        ck_assert_int_eq(pthread_barrier_init(&sh.start, NULL, SWAP_READERS + 1), 0);
        for (i = 0; i < SWAP_READERS; i++) {
                rd[i] = (struct swap_reader) { .shared = &sh };
                ck_assert_int_eq(pthread_create(&t[i], NULL, swap_reader_main, &rd[i]), 0);
        }
        pthread_barrier_wait(&sh.start);
        for (i = 0; i < SWAP_ROUNDS; i++) {
                ck_assert_int_eq(loop_set_event_loop_policy(pa), 0);
                ck_assert_int_eq(loop_set_event_loop_policy(pb), 0);
                ck_assert_int_eq(loop_set_event_loop_policy(NULL), 0);
        }
        atomic_store(&sh.stop, 1);
        for (i = 0; i < SWAP_READERS; i++) {
                ck_assert_int_eq(pthread_join(t[i], NULL), 0);
                ck_assert_int_eq(rd[i].setup, 0);
                ck_assert_int_ge(rd[i].iterations, READER_MIN_ITERATIONS);
                total += rd[i].iterations;
        }
        ck_assert_int_eq(pthread_barrier_destroy(&sh.start), 0);
        ck_assert_int_eq(counted(&sh.failures), 0);
        calls = atomic_load(&sh.get_calls);
        ck_assert_int_eq(calls, total);
        /* Every counted call came from a reader (the main thread never asked). */
        ck_assert_int_le(counted(&a.get_calls) + counted(&b.get_calls), total);

        /* The global slot holds neither now: ours are the last references. */
        ck_assert_int_eq(counted(&a.free_calls), 0);
        ck_assert_int_eq(counted(&b.free_calls), 0);
        loop_policy_unref(pa);
        loop_policy_unref(pb);
        ck_assert_int_eq(counted(&a.free_calls), 1);
        ck_assert_int_eq(counted(&b.free_calls), 1);
        ck_assert_int_eq(counted(&bad_frees), 0);
}
END_TEST

/* ---- thread exit releases the current loop ----------------------------- */

#define EXIT_THREADS 1000
#define EXIT_BATCH 8

struct exit_slot {
        int keep;               /* keep an extra reference in loop */
        int r;                  /* first error, or 0 */
        int same;               /* loop_thread_get_loop gave the loop back */
        loop_t *loop;
};

static void *exit_thread_main(void *arg)
{
        struct exit_slot *slot = arg;
        loop_t *l = NULL, *g = NULL;

        slot->r = loop_new(&l);
        if (slot->r < 0)
                return NULL;
        slot->r = loop_thread_set_loop(l);
        if (slot->r == 0 && (slot->r = loop_thread_get_loop(&g)) == 0) {
                slot->same = g == l;
                loop_unref(g);
        }
        if (slot->keep)
                slot->loop = loop_ref(l);
        loop_unref(l);
        return NULL; /* the pthread key's destructor drops the last reference */
}

static void run_exit_batch(struct exit_slot *slots, int n)
{
        pthread_t t[EXIT_BATCH];
        int i;

        for (i = 0; i < n; i++)
                ck_assert_int_eq(pthread_create(&t[i], NULL, exit_thread_main, &slots[i]), 0);
        for (i = 0; i < n; i++) {
                ck_assert_int_eq(pthread_join(t[i], NULL), 0);
                ck_assert_msg(slots[i].r == 0, "thread: %s", loop_strerror(slots[i].r));
                ck_assert_int_eq(slots[i].same, 1);
        }
}

START_TEST(test_thread_exit_releases_loop)
{
        struct exit_slot slots[EXIT_BATCH];
        int fds = tu_count_fds(), done, i;
        struct thread_result tr = { .sentinel = (loop_t *) &tr };

        ck_assert_int_ge(fds, 0);

        /* First batch: keep a reference. The exit dropped only the thread's:
         * the loop is alive and open, and ours is now the last one. */
        for (i = 0; i < EXIT_BATCH; i++)
                slots[i] = (struct exit_slot) { .keep = 1 };
        run_exit_batch(slots, EXIT_BATCH);
        ck_assert_int_gt(tu_count_fds(), fds);
        for (i = 0; i < EXIT_BATCH; i++) {
                ck_assert_ptr_ne(slots[i].loop, NULL);
                ck_assert_int_eq(loop_is_closed(slots[i].loop), 0);
                tu_assert_usable(slots[i].loop);
                loop_unref(slots[i].loop);
        }
        /* Had an exiting thread kept its reference, its loop's fds would
         * still be open. */
        ck_assert_int_eq(tu_count_fds(), fds);

        /* The rest: nothing kept, nothing may accumulate. */
        for (done = EXIT_BATCH; done < EXIT_THREADS; done += EXIT_BATCH) {
                int n = EXIT_THREADS - done < EXIT_BATCH ? EXIT_THREADS - done : EXIT_BATCH;

                for (i = 0; i < n; i++)
                        slots[i] = (struct exit_slot) { .keep = 0 };
                run_exit_batch(slots, n);
                ck_assert_int_eq(tu_count_fds(), fds);
        }

        /* A new thread starts with no current loop. */
        run_thread(get_in_thread_main, &tr);
        assert_no_loop_in_thread(&tr);
}
END_TEST

/* ---- fork ------------------------------------------------------------- */

static int never_cb(loop_t *loop, void *userdata)
{
        (void) loop;
        (void) userdata;
        _exit(99);
}

struct fork_ctx {
        loop_t *parent;         /* the parent's current loop */
        int fd;                 /* the parent's reader fd */
        int count;
};

#ifndef _WIN32
/* Forks; the child runs fn (which reports failures with CHILD_CHECK) and
 * exits; the parent waits for it and fails the test if the child did. */
static void in_child(void (*fn)(struct fork_ctx *), struct fork_ctx *ctx)
{
        int report[2];
        pid_t pid;

        ck_assert_int_eq(pipe(report), 0);
        fflush(NULL);
        pid = fork();
        ck_assert_int_ge(pid, 0);
        if (pid == 0) {
                close(report[0]);
                child_report_fd = report[1];
                fn(ctx);
                _exit(0);
        }
        ck_assert_int_eq(close(report[1]), 0);
        wait_child(pid, report[0], 10 * TU_SEC);
        ck_assert_int_eq(close(report[0]), 0);
}

/* Every call on the inherited loop answers -ECHILD except close and unref,
 * which release the child's copy (and, for epoll, must not EPOLL_CTL_DEL
 * the parent's registrations from the shared epoll instance). */
static void child_check_inherited(struct fork_ctx *ctx)
{
        loop_t *parent = ctx->parent;

        CHILD_CHECK(loop_call_soon(parent, never_cb, NULL, NULL) == -ECHILD);
        CHILD_CHECK(loop_call_soon_threadsafe(parent, never_cb, NULL, NULL) == -ECHILD);
        CHILD_CHECK(loop_call_later(parent, 0.0, never_cb, NULL, NULL) == -ECHILD);
        CHILD_CHECK(loop_run_once(parent, 0) == -ECHILD);
        CHILD_CHECK(loop_run_forever(parent) == -ECHILD);
        CHILD_CHECK(loop_remove_reader(parent, ctx->fd) == -ECHILD);
        CHILD_CHECK(loop_add_reader(parent, ctx->fd, tu_io_count_cb, &ctx->count) == -ECHILD);
        CHILD_CHECK(loop_thread_set_loop(parent) == -ECHILD);
        CHILD_CHECK(loop_set_event_loop(parent) == -ECHILD);
        CHILD_CHECK(loop_close(parent) == 0);
        CHILD_CHECK(loop_close(parent) == 0);
        CHILD_CHECK(loop_unref(parent) == NULL);
}

/* The child gets a new loop of its own, and it works. */
static void child_check_new_loop(struct fork_ctx *ctx)
{
        loop_t *child = NULL, *t = NULL;
        int count = 0;

        CHILD_CHECK(loop_get_event_loop(&child) == 0);
        CHILD_CHECK(child != NULL && child != ctx->parent);
        CHILD_CHECK(loop_thread_get_loop(&t) == 0 && t == child);
        loop_unref(t);
        CHILD_CHECK(loop_call_soon(child, tu_count_cb, &count, NULL) == 0);
        CHILD_CHECK(loop_run_once(child, 0) == 1);
        CHILD_CHECK(count == 1);
        CHILD_CHECK(loop_set_event_loop(NULL) == 0);
        loop_unref(child);
}

/* First thing in the child: the parent's current loop is not handed out. */
static void child_get_first(struct fork_ctx *ctx)
{
        child_check_new_loop(ctx);
        child_check_inherited(ctx);
}

/* First thing in the child: a call on the inherited loop. Nothing had to
 * tell the library about the fork. */
static void child_call_first(struct fork_ctx *ctx)
{
        CHILD_CHECK(loop_call_soon(ctx->parent, never_cb, NULL, NULL) == -ECHILD);
        child_check_new_loop(ctx);
        child_check_inherited(ctx);
}
#endif

START_TEST(test_fork_child_gets_new_loop)
{
#ifdef _WIN32
        TU_SKIP_ON_WINDOWS("fork");
#else
        struct fork_ctx ctx = { 0 };
        loop_t *cur = NULL;
        int sv[2];

        /* The parent's current loop, created on demand by the default policy,
         * with a reader whose registration reached the kernel. */
        ck_assert_int_eq(loop_get_event_loop(&ctx.parent), 0);
        tu_socketpair(sv);
        ctx.fd = sv[0];
        ck_assert_int_eq(loop_add_reader(ctx.parent, sv[0], tu_io_count_cb, &ctx.count), 0);
        ck_assert_int_eq(loop_run_once(ctx.parent, 0), 0);
        ck_assert_int_eq(ctx.count, 0);

        in_child(child_get_first, &ctx);
        in_child(child_call_first, &ctx);

        /* The parent is untouched: same current loop, the reader still fires
         * (no EPOLL_CTL_DEL reached the shared epoll instance). */
        ck_assert_int_eq(loop_thread_get_loop(&cur), 0);
        ck_assert_ptr_eq(cur, ctx.parent);
        loop_unref(cur);
        ck_assert_int_eq(loop_is_closed(ctx.parent), 0);
        tu_write_byte(sv[1]);
        tu_run_until(ctx.parent, &ctx.count, 1, 5 * TU_SEC);
        ck_assert_int_ge(ctx.count, 1);
        ck_assert_int_eq(loop_remove_reader(ctx.parent, sv[0]), 1);
        tu_assert_usable(ctx.parent);
        loop_unref(ctx.parent);
        tu_close_pair(sv);
#endif
}
END_TEST

struct fork_in_cb {
        loop_t *loop;
        pid_t pid;
        int report[2];
};

#ifndef _WIN32
static int fork_cb(loop_t *loop, void *userdata)
{
        struct fork_in_cb *f = userdata;
        loop_t *got = NULL, *run = NULL;

        fflush(NULL);
        f->pid = fork();
        if (f->pid != 0)
                return loop_stop(loop); /* the parent (or a failed fork) */
        close(f->report[0]);
        child_report_fd = f->report[1];
        /* In the child the running loop is the parent's: not ours to use. */
        CHILD_CHECK(loop_get_running_loop(&run) == -ENOENT);
        CHILD_CHECK(loop_get_event_loop(&got) == 0);
        CHILD_CHECK(got != NULL && got != loop);
        CHILD_CHECK(loop_call_soon(loop, never_cb, NULL, NULL) == -ECHILD);
        CHILD_CHECK(loop_stop(loop) == -ECHILD);
        CHILD_CHECK(loop_set_event_loop(NULL) == 0);
        loop_unref(got);
        return 0;
}
#endif

START_TEST(test_fork_inside_callback)
{
#ifdef _WIN32
        TU_SKIP_ON_WINDOWS("fork");
#else
        struct fork_in_cb f = { .pid = -1 };
        int r;

        f.loop = tu_loop_new();
        ck_assert_int_eq(pipe(f.report), 0);
        ck_assert_int_eq(loop_call_soon(f.loop, fork_cb, &f, NULL), 0);
        r = loop_run_forever(f.loop);
        if (f.pid == 0) {
                /* The child: run_forever gives up after the iteration. */
                CHILD_CHECK(r == -ECHILD);
                CHILD_CHECK(loop_unref(f.loop) == NULL);
                _exit(0);
        }
        ck_assert_int_ge(f.pid, 0);
        ck_assert_int_eq(r, 0);
        ck_assert_int_eq(close(f.report[1]), 0);
        wait_child(f.pid, f.report[0], 10 * TU_SEC);
        ck_assert_int_eq(close(f.report[0]), 0);
        tu_assert_usable(f.loop);
        loop_unref(f.loop);
#endif
}
END_TEST

static Suite *policy_suite(void)
{
        Suite *s = suite_create("policy");
        TCase *tc;

        tc = tu_tcase(s, "default");
        tcase_add_checked_fixture(tc, reset_globals, reset_globals);
        tcase_add_test(tc, test_main_thread_autocreate);
        tcase_add_test(tc, test_set_none_forbids_implicit_loop);
        tcase_add_test(tc, test_new_event_loop_not_installed);
        tcase_add_test(tc, test_non_main_thread_enoent);
        tcase_add_test(tc, test_thread_set_then_get);
        tcase_add_test(tc, test_default_policies_share_slot);

        tc = tu_tcase(s, "primitives");
        tcase_add_checked_fixture(tc, reset_globals, reset_globals);
        tcase_add_test(tc, test_thread_set_get_primitives);
        tcase_add_test(tc, test_get_running_loop);

        tc = tu_tcase(s, "custom");
        tcase_add_checked_fixture(tc, reset_globals, reset_globals);
        tcase_add_test(tc, test_set_policy_null_restores_default);
        tcase_add_test(tc, test_custom_policy_counts_and_delegates);
        tcase_add_test(tc, test_policy_chain_self);
        tcase_add_test(tc, test_derived_new_used_on_demand);
        tcase_add_test(tc, test_policy_free_once);

        tc = tu_tcase(s, "ops");
        tcase_add_checked_fixture(tc, reset_globals, reset_globals);
        tcase_add_test(tc, test_ops_short_table);
        tcase_add_test(tc, test_ops_short_table_falls_back);
        tcase_add_test(tc, test_ops_invalid);
        tcase_add_test(tc, test_policy_success_without_loop);

        tc = tu_tcase(s, "threads");
        tcase_set_timeout(tc, 300); /* valgrind serialises the threads */
        tcase_add_checked_fixture(tc, reset_globals, reset_globals);
        tcase_add_test(tc, test_policy_swap_concurrent);
        tcase_add_test(tc, test_thread_exit_releases_loop);

        tc = tu_tcase(s, "fork");
        tcase_add_checked_fixture(tc, reset_globals, reset_globals);
        tcase_add_test(tc, test_fork_child_gets_new_loop);
        tcase_add_test(tc, test_fork_inside_callback);
        return s;
}

int main(void)
{
        return tu_run_suite(policy_suite());
}
