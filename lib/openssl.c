/* SPDX-License-Identifier: MIT */
/*
 * libssl through dlopen() (openssl.h says why). The file is named after
 * the headers' major version (libssl.so.3 for OpenSSL 3), the name a
 * distribution's runtime package installs; LIBLOOP_LIBSSL overrides it
 * (tests point it at a missing file to see TLS refused). The handle is
 * never closed: OpenSSL keeps per-thread state that outlives any context,
 * and unloading it under a running thread is not safe.
 */
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>

#include "internal.h"
#include "openssl.h"

#define STR2(x) #x
#define STR(x) STR2(x)
#ifdef __APPLE__
#define LIBSSL_NAME "libssl." STR(OPENSSL_VERSION_MAJOR) ".dylib"
#else
#define LIBSSL_NAME "libssl.so." STR(OPENSSL_VERSION_MAJOR)
#endif

static struct loop__openssl table;
static int load_result;
static pthread_once_t once = PTHREAD_ONCE_INIT;

static void load(void) {
        const char *name = loop__getenv("LIBLOOP_LIBSSL");
        void *h = dlopen(name && *name ? name : LIBSSL_NAME, RTLD_NOW | RTLD_LOCAL);

        if (!h) {
                load_result = -EOPNOTSUPP;
                return;
        }
        /* dlsym() on libssl's handle also finds what libcrypto, its
         * dependency, defines (BIO_, ERR_, X509_). */
#define LOOP_OPENSSL_LOOKUP(name)                                       \
        table.name = (__typeof__(&name)) dlsym(h, #name);               \
        if (!table.name) {                                              \
                load_result = -EOPNOTSUPP;                              \
                return;                                                 \
        }
        LOOP_OPENSSL_FUNCTIONS(LOOP_OPENSSL_LOOKUP)
#undef LOOP_OPENSSL_LOOKUP
        if (table.OPENSSL_init_ssl(0, NULL) != 1)
                load_result = -EOPNOTSUPP;
}

int loop__openssl(const struct loop__openssl **ret) {
        pthread_once(&once, load);
        if (load_result < 0)
                return load_result;
        *ret = &table;
        return 0;
}
