/* SPDX-License-Identifier: MIT */
/*
 * The asyncio documentation's policy example, in C:
 *
 *     class MyEventLoopPolicy(asyncio.DefaultEventLoopPolicy):
 *         def get_event_loop(self):
 *             loop = super().get_event_loop()
 *             # Do something with loop ...
 *             return loop
 *
 *     asyncio.set_event_loop_policy(MyEventLoopPolicy())
 *
 * The derived policy overrides get_event_loop only; the NULL members fall
 * back to the base, the default policy.
 */
#include <stdio.h>
#include <stdlib.h>

#include <loop.h>

static int my_get_event_loop(loop_policy_t *self, loop_t **ret) {
        int *calls = loop_policy_get_userdata(self);
        int r = loop_policy_get_event_loop(loop_policy_get_base(self), ret);   /* super() */

        if (r < 0)
                return r;
        /* Do something with loop ... */
        (*calls)++;
        loop_set_debug(*ret, 1);
        return 0;
}

static const struct loop_policy_ops my_policy_ops = {
        .size = sizeof(struct loop_policy_ops),
        .get_event_loop = my_get_event_loop,
};

static int hello(loop_t *loop, void *userdata) {
        printf("hello from the loop, debug mode %s\n", loop_get_debug(loop) ? "on" : "off");
        loop_stop(loop);
        return 0;
}

int main(void) {
        loop_policy_t *base, *mine;
        loop_t *loop;
        int calls = 0, r;

        r = loop_policy_new_default(&base);
        if (r >= 0)
                r = loop_policy_new(&my_policy_ops, &calls, base, &mine);
        loop_policy_unref(base);        /* mine holds its own reference */
        if (r < 0) {
                fprintf(stderr, "policy: %s\n", loop_strerror(r));
                return EXIT_FAILURE;
        }
        loop_set_event_loop_policy(mine);
        loop_policy_unref(mine);

        r = loop_get_event_loop(&loop);
        if (r < 0) {
                fprintf(stderr, "loop_get_event_loop: %s\n", loop_strerror(r));
                return EXIT_FAILURE;
        }
        loop_call_soon(loop, hello, NULL, NULL);
        loop_run_forever(loop);
        printf("the policy's get_event_loop ran %d time(s)\n", calls);

        loop_set_event_loop(NULL);      /* the thread lets go of its loop */
        loop_unref(loop);
        loop_set_event_loop_policy(NULL);
        return EXIT_SUCCESS;
}
