/* SPDX-License-Identifier: MIT */
/*
 * A TEST EMULATION of FreeBSD's kqueue(2)/kevent(2) API for Linux, built
 * only so that libloop's kqueue selector (lib/kqueue.c) compiles and runs
 * on a Linux test machine (./configure --with-kqueue=PREFIX, PREFIX made
 * by `make kqueue-emu'). It is never installed and is not part of libloop.
 *
 * Covered (tests/kqueue/README has the details and what is NOT emulated):
 * EVFILT_READ and EVFILT_WRITE on sockets, pipes, FIFOs, regular files and
 * other descriptors; EVFILT_USER; EVFILT_SIGNAL; EVFILT_PROC with NOTE_EXIT
 * for child processes; EV_ADD, EV_DELETE, EV_ENABLE, EV_DISABLE,
 * EV_ONESHOT, EV_CLEAR, EV_RECEIPT, EV_DISPATCH, EV_ERROR and EV_EOF. The
 * structure layout and the numeric values are FreeBSD 12's.
 */
#ifndef KQUEUE_EMU_SYS_EVENT_H
#define KQUEUE_EMU_SYS_EVENT_H

#include <stdint.h>
#include <time.h>

#ifdef __cplusplus
extern "C" {
#endif

#define EVFILT_READ (-1)
#define EVFILT_WRITE (-2)
#define EVFILT_PROC (-5)
#define EVFILT_SIGNAL (-6)
#define EVFILT_USER (-11)

/* Actions (input). */
#define EV_ADD 0x0001
#define EV_DELETE 0x0002
#define EV_ENABLE 0x0004
#define EV_DISABLE 0x0008
/* Flags (input, kept by the event). */
#define EV_ONESHOT 0x0010
#define EV_CLEAR 0x0020
#define EV_RECEIPT 0x0040
#define EV_DISPATCH 0x0080
/* Returned values. */
#define EV_ERROR 0x4000
#define EV_EOF 0x8000

/* EVFILT_PROC */
#define NOTE_EXIT 0x80000000u
#define NOTE_EXITSTATUS 0x04000000u

/* EVFILT_USER */
#define NOTE_FFNOP 0x00000000u
#define NOTE_FFAND 0x40000000u
#define NOTE_FFOR 0x80000000u
#define NOTE_FFCOPY 0xc0000000u
#define NOTE_FFCTRLMASK 0xc0000000u
#define NOTE_FFLAGSMASK 0x00ffffffu
#define NOTE_TRIGGER 0x01000000u

struct kevent {
        uintptr_t ident;        /* identifier for this event */
        short filter;           /* filter for event */
        unsigned short flags;   /* action flags for kqueue */
        unsigned int fflags;    /* filter flag value */
        int64_t data;           /* filter data value */
        void *udata;            /* opaque user data identifier */
        uint64_t ext[4];        /* extensions (zero here) */
};

#define EV_SET(kevp, a, b, c, d, e, f)                                  \
        do {                                                            \
                struct kevent *ev_set_kevp_ = (kevp);                   \
                ev_set_kevp_->ident = (a);                              \
                ev_set_kevp_->filter = (b);                             \
                ev_set_kevp_->flags = (c);                              \
                ev_set_kevp_->fflags = (d);                             \
                ev_set_kevp_->data = (e);                               \
                ev_set_kevp_->udata = (f);                              \
                ev_set_kevp_->ext[0] = 0;                               \
                ev_set_kevp_->ext[1] = 0;                               \
                ev_set_kevp_->ext[2] = 0;                               \
                ev_set_kevp_->ext[3] = 0;                               \
        } while (0)

int kqueue(void);
int kevent(int kq, const struct kevent *changelist, int nchanges, struct kevent *eventlist, int nevents,
           const struct timespec *timeout);

#ifdef __cplusplus
}
#endif

#endif /* KQUEUE_EMU_SYS_EVENT_H */
