# SPDX-License-Identifier: MIT
#
# LIBLOOP_BENCH_ANCHORS
# ---------------------
# Find the event libraries that bench/ measures libloop against. None of them
# is required: configure never fails here, a library that is missing only
# drops its benchmark program (and bench/run-bench prints
# "libuv: not installed, skipped").
#
#   libuv     pkg-config libuv                         LIBUV_CFLAGS, LIBUV_LIBS
#   libevent  pkg-config libevent libevent_pthreads    LIBEVENT_CFLAGS, LIBEVENT_LIBS
#   libev     ev.h + -lev (Debian ships no .pc file)   LIBEV_CFLAGS, LIBEV_LIBS
#   libevent_openssl  pkg-config libevent_openssl openssl  LIBEVENT_OPENSSL_CFLAGS,
#             LIBEVENT_OPENSSL_LIBS (the TLS rows of libevent's transport table)
#   OpenSSL   pkg-config openssl                       BENCH_OPENSSL_CFLAGS,
#             BENCH_OPENSSL_LIBS (bench_libloop: TLS 1.3 only, and the cipher
#             agreed, in the transport table; libloop itself needs neither)
#
# LIBEV_CFLAGS and LIBEV_LIBS may be given on the command line (Fedora keeps
# the header in /usr/include/libev: LIBEV_CFLAGS=-I/usr/include/libev).
#
# Defines the Automake conditionals HAVE_LIBUV, HAVE_LIBEV, HAVE_LIBEVENT,
# HAVE_LIBEVENT_OPENSSL and HAVE_BENCH_OPENSSL
# and substitutes LIBEV_CFLAGS and LIBEV_LIBS (pkg-config substitutes the
# others).
AC_DEFUN([LIBLOOP_BENCH_ANCHORS], [dnl
AC_REQUIRE([PKG_PROG_PKG_CONFIG])dnl
PKG_CHECK_MODULES([LIBUV], [libuv],
                  [have_libuv=yes], [have_libuv=no])
PKG_CHECK_MODULES([LIBEVENT], [libevent libevent_pthreads],
                  [have_libevent=yes], [have_libevent=no])
PKG_CHECK_MODULES([LIBEVENT_OPENSSL], [libevent_openssl openssl],
                  [have_libevent_openssl=yes], [have_libevent_openssl=no])
PKG_CHECK_MODULES([BENCH_OPENSSL], [openssl],
                  [have_bench_openssl=yes], [have_bench_openssl=no])

AC_ARG_VAR([LIBEV_CFLAGS], [C compiler flags for libev (benchmarks only)])
AC_ARG_VAR([LIBEV_LIBS], [linker flags for libev (benchmarks only), default -lev])
have_libev=no
libloop_bench_save_CPPFLAGS=$CPPFLAGS
CPPFLAGS="$CPPFLAGS $LIBEV_CFLAGS"
AC_CHECK_HEADER([ev.h], [have_libev_h=yes], [have_libev_h=no])
CPPFLAGS=$libloop_bench_save_CPPFLAGS
AS_IF([test "$have_libev_h" = yes],
      [AS_IF([test -n "$LIBEV_LIBS"],
             [have_libev=yes],
             [AC_CHECK_LIB([ev], [ev_loop_new],
                           [have_libev=yes; LIBEV_LIBS=-lev])])])
AC_SUBST([LIBEV_CFLAGS])
AC_SUBST([LIBEV_LIBS])

AM_CONDITIONAL([HAVE_LIBUV], [test "$have_libuv" = yes])
AM_CONDITIONAL([HAVE_LIBEV], [test "$have_libev" = yes])
AM_CONDITIONAL([HAVE_LIBEVENT], [test "$have_libevent" = yes])
AM_CONDITIONAL([HAVE_LIBEVENT_OPENSSL], [test "$have_libevent" = yes && test "$have_libevent_openssl" = yes])
AM_CONDITIONAL([HAVE_BENCH_OPENSSL], [test "$have_bench_openssl" = yes])

libloop_bench_anchors=
AS_IF([test "$have_libev" = yes], [libloop_bench_anchors="${libloop_bench_anchors:+$libloop_bench_anchors }libev"])
AS_IF([test "$have_libuv" = yes], [libloop_bench_anchors="${libloop_bench_anchors:+$libloop_bench_anchors }libuv"])
AS_IF([test "$have_libevent" = yes], [libloop_bench_anchors="${libloop_bench_anchors:+$libloop_bench_anchors }libevent"])
AC_MSG_CHECKING([which event libraries `make bench' compares with])
AS_IF([test -n "$libloop_bench_anchors"],
      [AC_MSG_RESULT([$libloop_bench_anchors])],
      [AC_MSG_RESULT([none (libloop and the raw epoll floor only)])])
])
