/* SPDX-License-Identifier: MIT */
#pragma once

/*
 * Stream transports (transport.c) and the two ways of moving their bytes:
 * readiness (transport_sel.c: readers, writers and non-blocking send/recv,
 * asyncio's _SelectorSocketTransport) and completions (transport_pro.c:
 * the proactor loop's receive and send operations,
 * _ProactorSocketTransport). transport.c owns everything the protocol
 * sees (the write buffer, the water marks, the order of callbacks, closing);
 * a driver only moves bytes and tells the core what happened.
 */

#include <stdbool.h>
#include <stddef.h>
#ifndef LOOP_WINDOWS
#include <netinet/in.h>
#endif

#include "internal.h"

/* A peer's address as accept() or connect() had it, for a transport to
 * keep (see peer in struct loop_transport). */
struct loop__peer {
        const struct sockaddr *addr;
        socklen_t len;
};

/* Bytes accepted by write() and not yet given to the kernel: [head, head+len). */
struct loop__wbuf {
        char *base;
        size_t head, len, cap;
};

struct loop__transport_driver {
        /* Start receiving (connection_made has run, reading is wanted). */
        int (*start)(loop_transport_t *t);
        /* Stop or go on receiving; the core calls it on changes only. */
        int (*set_reading)(loop_transport_t *t, bool on);
        /* Nothing is buffered or in flight: send what can be sent of data
         * now and return how much was taken; the core buffers the rest in
         * t->wbuf, which the driver then flushes by itself. An error goes
         * to loop__transport_fatal (and everything counts as taken). */
        size_t (*write)(loop_transport_t *t, const void *data, size_t n);
        /* t->wbuf holds bytes and nothing is in flight: as write, from t->wbuf. */
        void (*flush)(loop_transport_t *t);
        /* Bytes the kernel has not confirmed yet beyond t->wbuf (a send in flight). */
        size_t (*inflight)(const loop_transport_t *t);
        /* Stop every operation on t->fd for good (before it is closed). */
        void (*stop)(loop_transport_t *t);
        /* Release the driver's memory (last reference gone). */
        void (*free)(loop_transport_t *t);
        /* Optional. Closing, and everything is written: end the stream the
         * driver's way (TLS: close_notify, then the socket's transport
         * closes), and call loop__transport_fatal(t, 0) when it has. NULL:
         * the core ends the transport at once. */
        void (*shutdown)(loop_transport_t *t);
        /* Optional: bytes written and not yet sent beyond t->wbuf and what
         * inflight says, for get_write_buffer_size() and the water marks
         * only (TLS: its socket's transport's buffer). NULL: inflight. */
        size_t (*buffered)(const loop_transport_t *t);
        /* Optional: the write buffer limits changed (TLS passes them on). */
        void (*limits)(loop_transport_t *t);
        bool foreign_fd;                /* t->fd is someone else's: never closed here */
        bool no_write_eof;              /* write_eof() is -EOPNOTSUPP (TLS has no half-close) */
};

extern LOOP_HIDDEN const struct loop__transport_driver loop__transport_sel;
extern LOOP_HIDDEN const struct loop__transport_driver loop__transport_pro;
#ifdef ENABLE_OPENSSL
extern LOOP_HIDDEN const struct loop__transport_driver loop__transport_tls;
#endif

struct loop__transports;

/* What a transport carries (asyncio's socket transport, and the Unix pipe
 * transports of connect_read_pipe/connect_write_pipe). Pipes use read(2)
 * and write(2), on readiness, on both loop families. */
enum {
        LOOP__T_STREAM,
        LOOP__T_READ_PIPE,
        LOOP__T_WRITE_PIPE,
        LOOP__T_DATAGRAM,               /* datagram.c's driver */
};

struct loop_transport {
        unsigned n_ref;
        loop_t *loop;
        int fd;                         /* -1 once closed */
        const struct loop__transport_driver *drv;
        void *drv_state;

        struct loop_protocol_ops proto; /* the caller's, missing members NULL */
        void *userdata;

        struct loop__wbuf wbuf;
        size_t high, low;

        bool made;                      /* connection_made has run */
        bool reading;                   /* the driver receives */
        bool paused;                    /* pause_reading() */
        bool closing;                   /* close() or abort(), or lost */
        bool lost;                      /* connection_lost is scheduled or ran */
        bool lost_done;                 /* connection_lost ran (or never will) */
        bool eof_wanted;                /* write_eof() */
        bool eof_sent;
        bool writing_paused;            /* pause_writing() called, resume_writing() not yet */
        bool shutting;                  /* the driver's shutdown is under way */
        bool deferred;                  /* created, not started yet (loop__transport_start) */
        bool skip_made;                 /* start_tls: no connection_made */
        bool lost_always;               /* connection_lost even if connection_made never ran (our own protocols) */
        bool peer_eof;                  /* eof received */
        bool reader_on, writer_on;      /* transport_sel.c: registered with the loop */
        uint8_t kind;                   /* LOOP__T_* */
        int lost_error;
        /* The peer's address from the accept or connect that made the
         * socket (asyncio keeps its 'peername' from the start): a
         * connection_lost after the peer reset the connection can still
         * ask. peer_len 0: not known, the socket is asked. */
        socklen_t peer_len;
        union {
                struct sockaddr sa;
                struct sockaddr_in in;
                struct sockaddr_in6 in6;
        } peer;

        loop_future_t *waiter;          /* completed after connection_made, or NULL */
        struct loop__sendfile *sendfile;        /* loop_sendfile() under way, or NULL */
        loop_server_t *server;          /* the server that accepted it, a reference, or NULL */

        loop_transport_t *prev, *next;  /* every open transport of the loop */
        loop_transport_t *sprev, *snext;        /* its server's connections */
};

/* For drivers. */
void loop__transport_received(loop_transport_t *t, const void *data, size_t n);
void loop__transport_eof(loop_transport_t *t);
void loop__transport_fatal(loop_transport_t *t, int error);
/* From the loop only, and only for a driver with no done callbacks of its
 * own pending (TLS): connection_lost(error) now, not one iteration later. */
void loop__transport_lost_now(loop_transport_t *t, int error);
void loop__transport_sent(loop_transport_t *t);
/* write() without the sendfile check (sendfile.c's fallback writes). */
int loop__transport_write(loop_transport_t *t, const void *data, size_t size);
/* sendfile.c: send on (the buffer drained, the socket has room); end with error. */
void loop__sendfile_step(loop_transport_t *t);
void loop__sendfile_abort(loop_transport_t *t, int error);
/* transport_sel.c: register (on) or remove t's reader (write false) or
 * writer with cb, once; t->reader_on/writer_on say which are. */
int loop__transport_watch(loop_transport_t *t, bool write, bool on, loop_io_callback_t cb);
/* transport_sel.c: call sendfile's step when the socket has room. */
void loop__transport_sel_want_write(loop_transport_t *t);
/* The driver queued bytes of its own: pause the protocol past the high mark. */
void loop__transport_check_pause(loop_transport_t *t);
int loop__transport_recv_buffer(loop_t *loop, void **buf, size_t *size);
bool loop__transport_buffered(const loop_transport_t *t);
int loop__transport_get_buffer(loop_transport_t *t, size_t hint, void **buf, size_t *size);
void loop__transport_buffer_updated(loop_transport_t *t, size_t n);

/* For connect.c and server.c: a transport over fd (a connected, non-blocking
 * stream socket), owned by the transport from a successful return on. The
 * protocol's connection_made is scheduled, then waiter (if not NULL) is
 * completed with the transport. */
int loop__transport_new(loop_t *loop, int fd, const struct loop_protocol_ops *ops, void *userdata,
                        loop_server_t *server, loop_future_t *waiter, const struct loop__peer *peer,
                        loop_transport_t **ret);

/* The same with a driver of one's own (TLS): drv_state is set before
 * anything can call the driver; deferred: nothing is scheduled until
 * loop__transport_start(); made: connection_made is not called (start_tls:
 * the protocol already has its connection). */
struct loop__transport_args {
        int fd;
        const struct loop_protocol_ops *ops;
        void *userdata;
        loop_server_t *server;
        loop_future_t *waiter;
        const struct loop__transport_driver *drv;       /* NULL: the loop family's */
        void *drv_state;
        bool deferred;
        bool made;
        uint8_t kind;                   /* LOOP__T_*; pipes get the readiness driver */
        bool lost_always;               /* the protocol is the library's own (TLS's socket, a
                                         * subprocess's pipes): it hears connection_lost even when
                                         * the transport ended before connection_made, to let go */
        const struct loop__peer *peer;  /* the peer's address, if known (NULL: not) */
};
int loop__transport_new_full(loop_t *loop, const struct loop__transport_args *args, loop_transport_t **ret);
int loop__transport_start(loop_transport_t *t);
int loop__protocol_check(const struct loop_protocol_ops *ops);

/* tls.c: a TLS connection over fd (a connected stream socket, owned by the
 * connection from a successful return on): a raw transport for the socket
 * and, once the handshake is over, the caller's transport (waiter then
 * completes with it; server counts it). ops NULL (servers): the server's
 * factory gives the protocol once the handshake is over. -EOPNOTSUPP
 * without OpenSSL. */
int loop__tls_wrap(loop_t *loop, int fd, struct loop_tls_context *ctx, bool server_side, const char *hostname,
                   int64_t timeout_ns, const struct loop_protocol_ops *ops, void *userdata, loop_server_t *server,
                   loop_future_t *waiter, const struct loop__peer *peer);

/* tls.c: a context for servers (false: for clients). */
bool loop__tls_context_is_server(const struct loop_tls_context *ctx);
/* tls.c: 0 if a client with ctx may ask for hostname, or -EINVAL. */
int loop__tls_check_client(const struct loop_tls_context *ctx, const char *hostname);
/* server.c: the factory's protocol for a new connection of s. */
int loop__server_make_protocol(loop_server_t *s, const struct loop_protocol_ops **ops, void **userdata);

/* server.c: a connection of server ended (connection_lost ran). */
void loop__server_connection_gone(loop_server_t *server, loop_transport_t *t);
void loop__server_connection_add(loop_server_t *server, loop_transport_t *t);

/* Write buffer */
int loop__wbuf_append(struct loop__wbuf *b, const void *data, size_t n);
void loop__wbuf_consume(struct loop__wbuf *b, size_t n);
void loop__wbuf_free(struct loop__wbuf *b);
