/* SPDX-License-Identifier: MIT */
/*
 * libssl loaded at run time (openssl.h says why). The file is named after
 * the headers' major version, the name a distribution's runtime package
 * installs (libssl.so.3 for OpenSSL 3) or, on Windows, OpenSSL's own build
 * (libssl-3-x64.dll). LIBLOOP_LIBSSL and LIBLOOP_LIBCRYPTO override the
 * names (tests point the first at a missing file to see TLS refused). The
 * handles are never closed: OpenSSL keeps per-thread state that outlives
 * any context, and unloading it under a running thread is not safe.
 */
#include <pthread.h>
#include <stdio.h>

#include "internal.h"
#include "openssl.h"

#define STR2(x) #x
#define STR(x) STR2(x)
#if defined(_WIN32)
/* A DLL's GetProcAddress() sees only its own exports, so libcrypto (BIO_,
 * ERR_, X509_) is opened by name as well. */
#ifdef _WIN64
#define WIN_ARCH "-x64"
#else
#define WIN_ARCH ""
#endif
#define LIBSSL_NAME "libssl-" STR(OPENSSL_VERSION_MAJOR) WIN_ARCH ".dll"
#define LIBCRYPTO_NAME "libcrypto-" STR(OPENSSL_VERSION_MAJOR) WIN_ARCH ".dll"
#elif defined(__APPLE__)
#define LIBSSL_NAME "libssl." STR(OPENSSL_VERSION_MAJOR) ".dylib"
#define LIBCRYPTO_NAME NULL
#else
/* dlsym() on libssl's handle also finds what libcrypto, its dependency,
 * defines: no second handle unless LIBLOOP_LIBCRYPTO names one. */
#define LIBSSL_NAME "libssl.so." STR(OPENSSL_VERSION_MAJOR)
#define LIBCRYPTO_NAME NULL
#endif

static struct loop__openssl table;
static int load_result;
static pthread_once_t once = PTHREAD_ONCE_INIT;

static const char *name_or(const char *variable, const char *fallback) {
        const char *name = loop__getenv(variable);

        return name && *name ? name : fallback;
}

static void load(void) {
        const char *crypto_name = name_or("LIBLOOP_LIBCRYPTO", LIBCRYPTO_NAME);
        void *ssl = loop__shlib_open(name_or("LIBLOOP_LIBSSL", LIBSSL_NAME));
        void *crypto = NULL;

        if (!ssl || (crypto_name && !(crypto = loop__shlib_open(crypto_name)))) {
                load_result = -EOPNOTSUPP;
                return;
        }
#define LOOP_OPENSSL_LOOKUP(name)                                                       \
        {                                                                               \
                void *p = loop__shlib_sym(ssl, #name);                                  \
                if (!p && crypto)                                                       \
                        p = loop__shlib_sym(crypto, #name);                             \
                if (!p) {                                                               \
                        load_result = -EOPNOTSUPP;                                      \
                        return;                                                         \
                }                                                                       \
                table.name = (__typeof__(&name)) p;                                     \
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
