/* SPDX-License-Identifier: MIT */
/*
 * The inline loop_call_soon path (include/loop.h) is compiled into
 * programs: they store through struct loop__soon_window and struct
 * loop__ready_entry themselves, so the two structs' layouts are ABI of
 * libloop.so.1 although no exported function takes them (abidiff cannot
 * see them, and lib/internal.h's static asserts pin offsets, not sizes).
 *
 * This test compares every member's offset and size (and the size of what
 * generation points to), each struct's size and alignment, with the values
 * recorded in abi/soon-window.txt for this platform's data model. Any
 * difference fails `make check': a change to the window is a new SONAME,
 * or a mistake.
 *
 * The data model is "pP-aA": pointers of P bytes, uint64_t aligned on A
 * bytes inside a struct (p8-a8 on every 64-bit Debian architecture, p4-a4
 * on i386, p4-a8 on armhf, x32 and most other 32-bit ones). A data model
 * with no values recorded is skipped (exit 77) after printing the lines
 * to record. Plain C, no Check: nothing here runs a loop.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <loop.h>

struct value {
        const char *name;
        size_t value;
        int seen;               /* recorded in the file for this data model */
};

/* Alignment inside a struct, which is what a layout depends on (on i386,
 * _Alignof(uint64_t) is not the 4 that struct members get). */
struct align_u64 { char c; uint64_t member; };
struct align_window { char c; struct loop__soon_window member; };
struct align_entry { char c; struct loop__ready_entry member; };
#define ALIGNOF(s) offsetof(struct s, member)
#define MEMBER(type, m)                                                        \
        { #type "." #m ".offset", offsetof(struct type, m), 0 },               \
        { #type "." #m ".size", sizeof(((struct type *) 0)->m), 0 }

static struct value values[] = {
        { "loop__soon_window.sizeof", sizeof(struct loop__soon_window), 0 },
        { "loop__soon_window.alignof", ALIGNOF(align_window), 0 },
        MEMBER(loop__soon_window, tail),
        MEMBER(loop__soon_window, end),
        MEMBER(loop__soon_window, generation),
        { "loop__soon_window.generation.pointee_size", sizeof(*((struct loop__soon_window *) 0)->generation), 0 },
        MEMBER(loop__soon_window, open_generation),
        { "loop__ready_entry.sizeof", sizeof(struct loop__ready_entry), 0 },
        { "loop__ready_entry.alignof", ALIGNOF(align_entry), 0 },
        MEMBER(loop__ready_entry, cb),
        MEMBER(loop__ready_entry, userdata),
};
#define NVALUES (sizeof(values) / sizeof(values[0]))

static struct value *find(const char *name) {
        for (size_t i = 0; i < NVALUES; i++)
                if (strcmp(values[i].name, name) == 0)
                        return &values[i];
        return NULL;
}

static void print_record(const char *model) {
        for (size_t i = 0; i < NVALUES; i++)
                printf("%s %s %zu\n", model, values[i].name, values[i].value);
}

int main(void) {
        const char *srcdir = getenv("top_srcdir");
        char path[4096], line[512], model[32];
        unsigned lineno = 0, recorded = 0, failures = 0;
        FILE *f;

        snprintf(model, sizeof(model), "p%zu-a%zu", sizeof(void *), ALIGNOF(align_u64));
        snprintf(path, sizeof(path), "%s/abi/soon-window.txt", srcdir && *srcdir ? srcdir : ".");
        f = fopen(path, "r");
        if (!f) {
                perror(path);
                return 99;
        }
        while (fgets(line, sizeof(line), f)) {
                char m[32], name[128];
                unsigned long long v;
                struct value *val;

                lineno++;
                if (line[0] == '#' || line[strspn(line, " \t\n")] == '\0')
                        continue;
                if (sscanf(line, "%31s %127s %llu", m, name, &v) != 3) {
                        fprintf(stderr, "%s:%u: not \"MODEL NAME VALUE\": %s", path, lineno, line);
                        failures++;
                        continue;
                }
                if (strcmp(m, model) != 0)
                        continue;
                recorded++;
                val = find(name);
                if (!val) {
                        printf("FAIL: %s:%u: %s is recorded but not checked by this test\n", path, lineno, name);
                        failures++;
                } else if (val->seen) {
                        printf("FAIL: %s:%u: %s recorded twice\n", path, lineno, name);
                        failures++;
                } else if ((val->seen = 1, val->value != v)) {
                        printf("FAIL: %s %s is %zu; %s:%u records %llu\n", model, name, val->value, path, lineno,
                               v);
                        failures++;
                } else {
                        printf("ok: %s %s %zu\n", model, name, val->value);
                }
        }
        fclose(f);

        if (recorded == 0 && failures == 0) {
                printf("SKIP: %s records no layout for data model %s; these are its values:\n", path, model);
                print_record(model);
                return 77;
        }
        for (size_t i = 0; i < NVALUES; i++) {
                if (!values[i].seen) {
                        printf("FAIL: %s %s (%zu) is not recorded in %s\n", model, values[i].name,
                               values[i].value, path);
                        failures++;
                }
        }
        if (failures) {
                printf("check-abi-window: %u difference(s). The inline loop_call_soon window is ABI of\n"
                       "libloop.so.1 (loop_call_soon(3)): programs built against the old layout would\n"
                       "store through the wrong offsets. Restore it, or make the change with a new\n"
                       "SONAME and record the new values in abi/soon-window.txt.\n",
                       failures);
                return 1;
        }
        printf("check-abi-window: %zu values match %s for %s\n", NVALUES, path, model);
        return 0;
}
