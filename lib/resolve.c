/* SPDX-License-Identifier: MIT */
/*
 * Name resolution through the executor (asyncio's loop.getaddrinfo and
 * loop.getnameinfo, which run socket.getaddrinfo/getnameinfo in the default
 * executor).
 *
 * getaddrinfo() and getnameinfo() block (DNS, NSS modules, /etc/hosts), so
 * each call is a job on a worker thread. Everything the job reads is copied
 * into it first (the caller's strings, hints and address may be gone by the
 * time a worker gets to them), and the job owns that copy until the loop
 * thread frees it. A result no future took (the future was cancelled while
 * the lookup ran, or loop_close() dropped it) is destroyed by the executor
 * with the same function the future would have used.
 *
 * Errors: the EAI_* codes are mapped to negative errno values (table in
 * eai_to_errno and in loop_getaddrinfo(3)); EAI_SYSTEM gives the errno the
 * worker saw right after the call.
 *
 * Quirks: glibc's EAI_NODATA, EAI_ADDRFAMILY and the EAI_* of its
 * asynchronous resolver exist only with _GNU_SOURCE (config.h sets it);
 * other systems lack some of them, hence the #ifdefs, and some old ones
 * give EAI_NODATA the value of EAI_NONAME, hence the comparisons.
 * getaddrinfo() in a worker reads the resolver configuration of the
 * process, as it would in the loop's thread.
 */
#ifndef LOOP_WINDOWS
#include <netdb.h>      /* Windows: <ws2tcpip.h>, through internal.h */
#endif
#include <stdlib.h>
#include <string.h>

#include "internal.h"

int loop__eai_to_errno(int eai, int saved_errno) {
        switch (eai) {
#ifdef EAI_SYSTEM       /* not on Windows, whose EAI_* are WSA* codes */
        case EAI_SYSTEM:
                return saved_errno > 0 ? -saved_errno : -EIO;
#endif
        case EAI_NONAME:
                return -ENOENT;
#if defined(EAI_NODATA) && EAI_NODATA != EAI_NONAME
        case EAI_NODATA:
                return -ENODATA;
#endif
#if defined(EAI_ADDRFAMILY) && EAI_ADDRFAMILY != EAI_FAMILY
        case EAI_ADDRFAMILY:
                return -EADDRNOTAVAIL;
#endif
        case EAI_AGAIN:
                return -EAGAIN;
        case EAI_FAIL:
                return -EIO;
        case EAI_MEMORY:
                return -ENOMEM;
        case EAI_FAMILY:
                return -EAFNOSUPPORT;
        case EAI_SOCKTYPE:
                return -ESOCKTNOSUPPORT;
        case EAI_SERVICE:
                return -EPROTONOSUPPORT;
        case EAI_BADFLAGS:
                return -EINVAL;
#ifdef EAI_OVERFLOW
        case EAI_OVERFLOW:
                return -EOVERFLOW;
#endif
#ifdef EAI_INTR
        case EAI_INTR:
                return -EINTR;
#endif
#ifdef EAI_IDN_ENCODE
        case EAI_IDN_ENCODE:
                return -EILSEQ;
#endif
        default:
                return -EIO;
        }
}

/* ---- getaddrinfo ---------------------------------------------------------- */

struct addrinfo_job {
        char *host, *service;           /* copies, NULL when not given */
        bool has_hints;
        struct addrinfo hints;          /* the four fields hints may set; pointers NULL */
};

static void addrinfo_job_free(void *arg) {
        struct addrinfo_job *job = arg;

        free(job->host);
        free(job->service);
        free(job);
}

static void addrinfo_destroy(void *result) {
        freeaddrinfo(result);
}

/* Worker thread. */
static int addrinfo_run(void *arg, void **result) {
        struct addrinfo_job *job = arg;
        struct addrinfo *res = NULL;

        errno = 0;
        int eai = getaddrinfo(job->host, job->service, job->has_hints ? &job->hints : NULL, &res);
        if (eai != 0)
                return loop__eai_to_errno(eai, errno);
        *result = res;
        return 0;
}

static int strdup_or_null(const char *s, char **ret) {
        *ret = NULL;
        if (!s)
                return 0;
        *ret = strdup(s);
        return *ret ? 0 : -ENOMEM;
}

LOOP_EXPORT int loop_getaddrinfo(loop_t *loop, const char *host, const char *service,
                                 const struct addrinfo *hints, loop_future_t **ret) {
        struct addrinfo_job *job;
        int r = loop__usable(loop);

        if (r < 0)
                return r;
        /* getaddrinfo() itself requires one of the two. */
        return_if_fail(ret && (host || service), -EINVAL);

        job = calloc(1, sizeof(*job));
        if (!job)
                return -ENOMEM;
        r = strdup_or_null(host, &job->host);
        if (r < 0)
                goto fail;
        r = strdup_or_null(service, &job->service);
        if (r < 0)
                goto fail;
        if (hints) {
                /* POSIX: the other members of hints must be zero or NULL. */
                job->has_hints = true;
                job->hints = (struct addrinfo) {
                        .ai_flags = hints->ai_flags,
                        .ai_family = hints->ai_family,
                        .ai_socktype = hints->ai_socktype,
                        .ai_protocol = hints->ai_protocol,
                };
        }
        r = loop__executor_submit(loop, addrinfo_run, job, addrinfo_job_free, addrinfo_destroy, ret);
        if (r < 0)
                goto fail;
        return 0;

fail:
        addrinfo_job_free(job);
        return r;
}

/* ---- getnameinfo ---------------------------------------------------------- */

struct nameinfo_job {
        struct sockaddr_storage addr;
        socklen_t addrlen;
        int flags;
};

/* Worker thread. */
static int nameinfo_run(void *arg, void **result) {
        struct nameinfo_job *job = arg;
        struct loop_nameinfo *ni = calloc(1, sizeof(*ni));

        if (!ni)
                return -ENOMEM;
        errno = 0;
        int eai = getnameinfo((const struct sockaddr *) &job->addr, job->addrlen, ni->host, sizeof(ni->host),
                              ni->service, sizeof(ni->service), job->flags);
        if (eai != 0) {
                int r = loop__eai_to_errno(eai, errno);
                free(ni);
                return r;
        }
        *result = ni;
        return 0;
}

LOOP_EXPORT int loop_getnameinfo(loop_t *loop, const struct sockaddr *addr, socklen_t addrlen, int flags,
                                 loop_future_t **ret) {
        struct nameinfo_job *job;
        int r = loop__usable(loop);

        if (r < 0)
                return r;
        return_if_fail(addr && ret, -EINVAL);
        return_if_fail(addrlen > 0 && (size_t) addrlen <= sizeof(job->addr), -EINVAL);

        job = calloc(1, sizeof(*job));
        if (!job)
                return -ENOMEM;
        memcpy(&job->addr, addr, addrlen);
        job->addrlen = addrlen;
        job->flags = flags;
        r = loop__executor_submit(loop, nameinfo_run, job, free, free, ret);
        if (r < 0)
                free(job);
        return r;
}
