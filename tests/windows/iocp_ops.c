/* SPDX-License-Identifier: MIT */
/*
 * lib/iocp.c driven through its ops table, without the proactor loop: a
 * plain program (TAP-like "ok N - what" lines, exit status 1 on any
 * failure) cross-built with mingw-w64 and run under wine. It is linked
 * with lib/iocp.c and lib/win32.c themselves (the DLL exports neither).
 *
 *   x86_64-w64-mingw32-gcc -include BUILD/config.h -I SRC/include -iquote SRC/lib \
 *       SRC/tests/windows/iocp_ops.c SRC/lib/iocp.c SRC/lib/win32.c -lws2_32 -static -o iocp_ops.exe
 *   WINEDEBUG=-all wine64 iocp_ops.exe
 */
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "proactor.h"
#include <mswsock.h>

static const struct loop_proactor_ops *ops = &loop_proactor_iocp;
static void *be;
static int n_test, n_fail;

static void ok(bool cond, const char *fmt, ...) {
        va_list ap;

        n_test++;
        if (!cond)
                n_fail++;
        printf("%s %d - ", cond ? "ok" : "not ok", n_test);
        va_start(ap, fmt);
        vprintf(fmt, ap);
        va_end(ap);
        printf("\n");
        fflush(stdout);
}

/* The completions of one wait, recorded. */
#define MAX_DONE 64
static struct done {
        uint64_t user_data;
        int res;
        uint32_t flags;
} done[MAX_DONE];
static int n_done;

static void on_complete(void *ctx, uint64_t user_data, int res, uint32_t flags) {
        if (n_done < MAX_DONE)
                done[n_done++] = (struct done){user_data, res, flags};
}

static struct done *find(uint64_t user_data) {
        for (int i = 0; i < n_done; i++)
                if (done[i].user_data == user_data)
                        return &done[i];
        return NULL;
}

static int64_t now_ns(void) {
        LARGE_INTEGER f, c;

        QueryPerformanceFrequency(&f);
        QueryPerformanceCounter(&c);
        return (int64_t) ((double) c.QuadPart * 1e9 / (double) f.QuadPart);
}

/* Wait (100 ms at a time, 5 s at most) until user_data has completed;
 * what completed meanwhile stays in done[]. */
static struct done *wait_for(uint64_t user_data) {
        int64_t end = now_ns() + 5000000000LL;

        n_done = 0;
        while (!find(user_data) && now_ns() < end) {
                int r = ops->wait(be, 100000000, on_complete, NULL, NULL);
                if (r < 0) {
                        printf("# wait: %d\n", r);
                        return NULL;
                }
        }
        return find(user_data);
}

static SOCKET tcp_socket(void) {
        return WSASocketW(AF_INET, SOCK_STREAM, IPPROTO_TCP, NULL, 0, WSA_FLAG_OVERLAPPED);
}

static struct sockaddr_in loopback(unsigned short port) {
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};

        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        return a;
}

struct waker {
        int delay_ms;
};

static void *wake_later(void *arg) {
        struct waker *w = arg;

        Sleep((DWORD) w->delay_ms);
        ops->wake(be);
        return NULL;
}

int main(void) {
        int r;

        setvbuf(stdout, NULL, _IONBF, 0);
        r = ops->init(&be);
        ok(r == 0, "init (%d)", r);
        if (r < 0)
                return 1;
        ok(ops->fileno(be) == -EOPNOTSUPP, "fileno says EOPNOTSUPP");

        /* A loopback TCP listener. */
        SOCKET lst = tcp_socket();
        struct sockaddr_in la = loopback(0);
        int len = sizeof(la);
        r = bind(lst, (struct sockaddr *) &la, sizeof(la)) == 0 &&
            getsockname(lst, (struct sockaddr *) &la, &len) == 0 && listen(lst, 16) == 0;
        ok(r, "loopback listener on port %u", ntohs(la.sin_port));

        /* accept + connect (the client not bound: ConnectEx needs the
         * backend to bind it). */
        struct sockaddr_storage peer;
        socklen_t peerlen = sizeof(peer);
        SOCKET cli = tcp_socket();
        ok(ops->accept(be, (int) lst, (struct sockaddr *) &peer, &peerlen, 1) == 0, "accept queued");
        ok(ops->connect(be, (int) cli, (struct sockaddr *) &la, sizeof(la), 2) == 0, "connect queued");
        struct done *dc = wait_for(2);
        struct done *da = find(1) ? find(1) : wait_for(1);
        ok(dc && dc->res == 0, "connect completes 0 (%d)", dc ? dc->res : 999);
        ok(da && da->res > 0, "accept completes with a socket (%d)", da ? da->res : 999);
        SOCKET srv = da && da->res > 0 ? (SOCKET) da->res : INVALID_SOCKET;
        struct sockaddr_in cl;
        len = sizeof(cl);
        getsockname(cli, (struct sockaddr *) &cl, &len);
        ok(peerlen == sizeof(struct sockaddr_in) && ((struct sockaddr_in *) &peer)->sin_port == cl.sin_port,
           "accept's address is the client's (port %u)", ntohs(cl.sin_port));
        struct sockaddr_in pn;
        len = sizeof(pn);
        ok(getpeername(cli, (struct sockaddr *) &pn, &len) == 0, "getpeername works after ConnectEx "
                                                                 "(SO_UPDATE_CONNECT_CONTEXT)");

        /* A connect nobody listens for: the port of a listener closed. */
        SOCKET gone = tcp_socket(), cli2 = tcp_socket();
        struct sockaddr_in ga = loopback(0);
        len = sizeof(ga);
        bind(gone, (struct sockaddr *) &ga, sizeof(ga));
        getsockname(gone, (struct sockaddr *) &ga, &len);
        closesocket(gone);
        ok(ops->connect(be, (int) cli2, (struct sockaddr *) &ga, sizeof(ga), 40) == 0,
           "connect to a closed port queued");
        struct done *dref = wait_for(40);
        ok(dref && dref->res == -ECONNREFUSED, "it completes -ECONNREFUSED (%d)", dref ? dref->res : 999);
        closesocket(cli2);

        /* An accept cancelled: -ECANCELED (and its socket closed). */
        ok(ops->accept(be, (int) lst, NULL, NULL, 41) == 0, "accept queued");
        n_done = 0;
        ops->wait(be, 0, on_complete, NULL, NULL);
        ops->cancel(be, 41);
        struct done *dac = wait_for(41);
        ok(dac && dac->res == -ECANCELED, "cancelled accept completes -ECANCELED (%d)", dac ? dac->res : 999);

        /* send/recv round trip. */
        char out[] = "hello, iocp", in[64] = {0};
        ok(ops->recv(be, (int) srv, in, sizeof(in), 3) == 0 && ops->send(be, (int) cli, out, strlen(out), 4) == 0,
           "recv and send queued");
        struct done *ds = wait_for(4);
        ok(ds && ds->res == (int) strlen(out), "send completes with %d bytes", ds ? ds->res : -999);
        struct done *dr = find(3) ? find(3) : wait_for(3);
        ok(dr && dr->res == (int) strlen(out) && memcmp(in, out, strlen(out)) == 0, "recv gets them (%d)",
           dr ? dr->res : -999);

        /* A recv nothing arrives for, cancelled. */
        ok(ops->recv(be, (int) srv, in, sizeof(in), 5) == 0, "recv queued");
        n_done = 0;
        r = ops->wait(be, 20000000, on_complete, NULL, NULL);
        ok(r == 0 && !find(5), "nothing for it in 20 ms (%d)", r);
        ok(ops->cancel(be, 5) == 0, "cancel queued");
        struct done *dx = wait_for(5);
        ok(dx && dx->res == -ECANCELED && dx->flags == 0, "cancelled recv completes -ECANCELED (%d)",
           dx ? dx->res : 999);

        /* Withdraw: a queued request becomes a no-op completing 0; the
         * byte sent after it is for the next recv. */
        ok(ops->recv(be, (int) srv, in, sizeof(in), 6) == 0, "recv queued");
        ok(ops->withdraw(be, 6), "withdraw of a queued request says true");
        ok(!ops->withdraw(be, 77), "withdraw of an unknown one says false");
        struct done *dw = wait_for(6);
        ok(dw && dw->res == 0, "the withdrawn request completes 0 (%d)", dw ? dw->res : 999);
        ok(send(cli, "x", 1, 0) == 1, "a byte sent");
        ok(ops->recv(be, (int) srv, in, sizeof(in), 7) == 0, "recv queued");
        struct done *d7 = wait_for(7);
        ok(d7 && d7->res == 1 && in[0] == 'x', "the next recv has it (%d)", d7 ? d7->res : -999);
        ok(ops->recv(be, (int) srv, in, sizeof(in), 8) == 0, "recv queued");
        n_done = 0;
        r = ops->wait(be, 0, on_complete, NULL, NULL);
        ok(r == 0 && !find(8), "a wait with timeout 0 issues it (%d)", r);
        ok(!ops->withdraw(be, 8), "withdraw of an issued request says false");
        ops->cancel(be, 8);
        dx = wait_for(8);
        ok(dx && dx->res == -ECANCELED, "and it is cancelled (%d)", dx ? dx->res : 999);

        /* UDP: sendmsg/recvmsg with addresses. */
        SOCKET u1 = WSASocketW(AF_INET, SOCK_DGRAM, IPPROTO_UDP, NULL, 0, WSA_FLAG_OVERLAPPED);
        SOCKET u2 = WSASocketW(AF_INET, SOCK_DGRAM, IPPROTO_UDP, NULL, 0, WSA_FLAG_OVERLAPPED);
        struct sockaddr_in a1 = loopback(0), a2 = loopback(0);
        len = sizeof(a1);
        bind(u1, (struct sockaddr *) &a1, sizeof(a1));
        getsockname(u1, (struct sockaddr *) &a1, &len);
        len = sizeof(a2);
        bind(u2, (struct sockaddr *) &a2, sizeof(a2));
        getsockname(u2, (struct sockaddr *) &a2, &len);
        char dgram[] = "datagram", part1[4], part2[32] = {0};
        struct iovec siov = {dgram, sizeof(dgram)};
        struct msghdr smsg = {.msg_name = &a2, .msg_namelen = sizeof(a2), .msg_iov = &siov, .msg_iovlen = 1};
        struct sockaddr_storage from;
        struct iovec riov[2] = {{part1, sizeof(part1)}, {part2, sizeof(part2)}};
        struct msghdr rmsg = {.msg_name = &from, .msg_namelen = sizeof(from), .msg_iov = riov, .msg_iovlen = 2};
        ok(ops->recvmsg(be, (int) u2, &rmsg, 9) == 0 && ops->sendmsg(be, (int) u1, &smsg, 10) == 0,
           "recvmsg and sendmsg queued");
        struct done *d10 = wait_for(10);
        ok(d10 && d10->res == (int) sizeof(dgram), "sendmsg completes with %d bytes", d10 ? d10->res : -999);
        struct done *d9 = find(9) ? find(9) : wait_for(9);
        ok(d9 && d9->res == (int) sizeof(dgram) && memcmp(part1, "data", 4) == 0 && strcmp(part2, "gram") == 0,
           "recvmsg gathers it into two buffers (%d)", d9 ? d9->res : -999);
        ok(rmsg.msg_namelen == sizeof(struct sockaddr_in) && ((struct sockaddr_in *) &from)->sin_port == a1.sin_port,
           "recvmsg gives the sender's address (port %u)", ntohs(((struct sockaddr_in *) &from)->sin_port));
        /* Truncation: MSG_TRUNC, the bytes that fit. */
        struct iovec tiov = {part1, sizeof(part1)};
        struct msghdr tmsg = {.msg_name = &from, .msg_namelen = sizeof(from), .msg_iov = &tiov, .msg_iovlen = 1};
        ok(ops->recvmsg(be, (int) u2, &tmsg, 11) == 0 && ops->sendmsg(be, (int) u1, &smsg, 12) == 0,
           "recvmsg into 4 bytes queued");
        struct done *d11 = wait_for(11);
        ok(d11 && d11->res == 4 && (tmsg.msg_flags & MSG_TRUNC), "a longer datagram: 4 bytes and MSG_TRUNC (%d, %#x)",
           d11 ? d11->res : -999, tmsg.msg_flags);

        /* Timeouts never end early: 20 waits of 5 ms, nothing to complete. */
        int early = 0;
        int64_t shortest = INT64_MAX, longest = 0;
        for (int i = 0; i < 20; i++) {
                int64_t t0 = now_ns();
                n_done = 0;
                r = ops->wait(be, 5000000, on_complete, NULL, NULL);
                int64_t dt = now_ns() - t0;
                if (dt < 5000000 || n_done > 0 || r != 0)
                        early++;
                if (dt < shortest)
                        shortest = dt;
                if (dt > longest)
                        longest = dt;
        }
        ok(early == 0, "20 waits of 5 ms: none early (shortest %.3f ms, longest %.3f ms)", shortest / 1e6,
           longest / 1e6);

        /* A wake-up from another thread ends a blocked wait. */
        pthread_t th;
        struct waker w = {50};
        pthread_create(&th, NULL, wake_later, &w);
        int64_t t0 = now_ns();
        n_done = 0;
        r = ops->wait(be, -1, on_complete, NULL, NULL);
        double waited = (now_ns() - t0) / 1e6;
        pthread_join(th, NULL);
        ok(r == 0 && n_done == 0 && waited >= 40 && waited < 2000,
           "wake from another thread ends a wait with no "
           "limit (%.1f ms, %d)",
           waited, r);
        /* Coalesced: two wakes, one packet; the next wait times out. */
        ops->wake(be);
        ops->wake(be);
        n_done = 0;
        r = ops->wait(be, 1000000, on_complete, NULL, NULL);
        t0 = now_ns();
        r = ops->wait(be, 10000000, on_complete, NULL, NULL);
        waited = (now_ns() - t0) / 1e6;
        ok(r == 0 && waited >= 10, "two wakes end one wait only (then %.1f ms)", waited);

        /* poll_add: POLLIN when data arrives, multishot re-armed, then
         * poll_remove. */
        ok(ops->poll_add(be, (int) srv, POLLIN, true, 20) == 0, "multishot POLLIN poll queued");
        n_done = 0;
        r = ops->wait(be, 50000000, on_complete, NULL, NULL);
        struct done *dp = find(20);
        if (dp)
                printf("# early poll completion: res %d flags %u\n", dp->res, dp->flags);
        ok(r >= 0 && !dp, "no POLLIN while nothing is there");
        if (dp && dp->res < 0)
                printf("# AFD poll failed: %d (%s)\n", dp->res, strerror(-dp->res));
        send(cli, "ab", 2, 0);
        dp = wait_for(20);
        ok(dp && dp->res > 0 && (dp->res & POLLIN) && (dp->flags & LOOP_PROACTOR_MORE),
           "POLLIN when data arrives, with MORE (res %#x, flags %u)", dp ? dp->res : 0, dp ? dp->flags : 0);
        recv(srv, in, sizeof(in), 0);
        n_done = 0;
        r = ops->wait(be, 50000000, on_complete, NULL, NULL);
        ok(r >= 0 && !find(20), "drained: no completion for 50 ms");
        send(cli, "c", 1, 0);
        dp = wait_for(20);
        ok(dp && (dp->res & POLLIN) && (dp->flags & LOOP_PROACTOR_MORE), "re-armed: POLLIN again (res %#x)",
           dp ? dp->res : 0);
        recv(srv, in, sizeof(in), 0);
        ok(ops->poll_remove(be, 20) == 0, "poll_remove queued");
        dp = wait_for(20);
        ok(dp && dp->res == -ECANCELED && dp->flags == 0, "removed poll completes -ECANCELED, last (%d, %u)",
           dp ? dp->res : 999, dp ? dp->flags : 0);
        /* One-shot POLLOUT: at once on a writable socket. */
        ok(ops->poll_add(be, (int) cli, POLLOUT, false, 21) == 0, "one-shot POLLOUT poll queued");
        dp = wait_for(21);
        ok(dp && (dp->res & POLLOUT) && dp->flags == 0, "POLLOUT at once, no MORE (res %#x)", dp ? dp->res : 0);
        /* The peer closing: POLLIN (end of stream) on the other side. */
        ok(ops->poll_add(be, (int) srv, POLLIN, false, 22) == 0, "POLLIN poll before the peer closes");
        closesocket(cli);
        dp = wait_for(22);
        ok(dp && (dp->res & (POLLIN | POLLHUP)), "peer closed: POLLIN/POLLHUP (res %#x)", dp ? dp->res : 0);

        char how[512];
        loop__iocp_describe(be, how, sizeof(how));
        printf("# %s\n", how);

        /* free with requests in flight: on a fresh quiet connection a recv
         * and a multishot POLLIN poll, an accept, plus one still queued. */
        SOCKET c2 = tcp_socket(), s2;
        ok(connect(c2, (struct sockaddr *) &la, sizeof(la)) == 0 && (s2 = accept(lst, NULL, NULL)) != INVALID_SOCKET,
           "a second connection (blocking calls)");
        char in2[16];
        ops->recv(be, (int) s2, in2, sizeof(in2), 30);
        ops->poll_add(be, (int) c2, POLLIN, true, 31);
        ops->accept(be, (int) lst, NULL, NULL, 32);
        n_done = 0;
        r = ops->wait(be, 0, on_complete, NULL, NULL);
        size_t inflight = loop__iocp_inflight(be);
        ok(r == 0 && n_done == 0 && inflight == 3, "3 requests in flight (%zu), nothing completed (%d)", inflight,
           n_done);
        ops->recv(be, (int) s2, in2, sizeof(in2), 33);
        t0 = now_ns();
        ops->free(be, false);
        ok(true, "free with requests in flight returns (%.1f ms)", (now_ns() - t0) / 1e6);
        closesocket(c2);
        closesocket(s2);

        /* A second backend after that works. */
        r = ops->init(&be);
        ok(r == 0, "init again (%d)", r);
        if (r == 0) {
                ops->wake(be);
                n_done = 0;
                r = ops->wait(be, 1000000000, on_complete, NULL, NULL);
                ok(r == 0, "and its wait works (%d)", r);
                ops->free(be, false);
        }

        /* AFD polls issued on the socket's own handle (the fallback when
         * \Device\Afd cannot be opened), forced for a new backend. */
        _putenv("LIBLOOP_IOCP_AFD=socket");
        r = ops->init(&be);
        _putenv("LIBLOOP_IOCP_AFD=");
        SOCKET c3 = tcp_socket(), s3 = INVALID_SOCKET;
        ok(r == 0 && connect(c3, (struct sockaddr *) &la, sizeof(la)) == 0 &&
                   (s3 = accept(lst, NULL, NULL)) != INVALID_SOCKET,
           "a backend polling through the sockets; a connection");
        if (r == 0) {
                ops->poll_add(be, (int) s3, POLLIN, true, 50);
                n_done = 0;
                ops->wait(be, 20000000, on_complete, NULL, NULL);
                ok(!find(50), "socket-handle poll: nothing while nothing is there");
                send(c3, "z", 1, 0);
                dp = wait_for(50);
                ok(dp && (dp->res & POLLIN) && (dp->flags & LOOP_PROACTOR_MORE), "socket-handle poll: POLLIN (res %#x)",
                   dp ? dp->res : 0);
                ops->poll_remove(be, 50);
                dp = wait_for(50);
                ok(dp && dp->res == -ECANCELED && dp->flags == 0, "socket-handle poll: removed, -ECANCELED (%d)",
                   dp ? dp->res : 999);
                loop__iocp_describe(be, how, sizeof(how));
                printf("# %s\n", how);
                ops->free(be, false);
        }
        closesocket(c3);
        closesocket(s3);
        closesocket(srv);
        closesocket(lst);
        closesocket(u1);
        closesocket(u2);
        printf("1..%d\n", n_test);
        printf("# %d failed\n", n_fail);
        return n_fail ? 1 : 0;
}
