/* SPDX-License-Identifier: MIT */
#pragma once

/*
 * OpenSSL, loaded at run time (openssl.c): the functions tls.c calls, as
 * pointers with the types of OpenSSL's own prototypes. libloop does not
 * link libssl, so a program that never makes a TLS context neither links
 * nor loads it; the first context loads (dlopen, LoadLibrary) the libssl
 * whose headers libloop was built with (its major version names the file).
 */

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#define LOOP_OPENSSL_FUNCTIONS(X)               \
        X(OPENSSL_init_ssl)                     \
        X(TLS_client_method)                    \
        X(TLS_server_method)                    \
        X(SSL_CTX_new)                          \
        X(SSL_CTX_free)                         \
        X(SSL_CTX_up_ref)                       \
        X(SSL_CTX_ctrl)                         \
        X(SSL_CTX_set_options)                  \
        X(SSL_CTX_set_verify)                   \
        X(SSL_CTX_get_verify_mode)              \
        X(SSL_CTX_set_default_verify_paths)     \
        X(SSL_CTX_load_verify_locations)        \
        X(SSL_CTX_use_certificate_chain_file)   \
        X(SSL_CTX_use_PrivateKey_file)          \
        X(SSL_CTX_check_private_key)            \
        X(SSL_CTX_set_alpn_protos)              \
        X(SSL_CTX_set_alpn_select_cb)           \
        X(SSL_select_next_proto)                \
        X(SSL_new)                              \
        X(SSL_free)                             \
        X(SSL_set_bio)                          \
        X(SSL_ctrl)                             \
        X(SSL_set1_host)                        \
        X(SSL_set_hostflags)                    \
        X(SSL_set_connect_state)                \
        X(SSL_set_accept_state)                 \
        X(SSL_do_handshake)                     \
        X(SSL_is_init_finished)                 \
        X(SSL_read_ex)                          \
        X(SSL_write_ex)                         \
        X(SSL_get_error)                        \
        X(SSL_shutdown)                         \
        X(SSL_get0_alpn_selected)               \
        X(SSL_get_verify_result)                \
        X(SSL_get_version)                      \
        X(SSL_get0_param)                       \
        X(X509_VERIFY_PARAM_set1_ip_asc)        \
        X(BIO_s_mem)                            \
        X(BIO_new)                              \
        X(BIO_free)                             \
        X(BIO_read)                             \
        X(BIO_write)                            \
        X(BIO_ctrl)                             \
        X(BIO_ctrl_pending)                     \
        X(ERR_get_error)                        \
        X(ERR_peek_error)                       \
        X(ERR_clear_error)                      \
        X(ERR_error_string_n)                   \
        X(X509_verify_cert_error_string)

struct loop__openssl {
#define LOOP_OPENSSL_MEMBER(name) __typeof__(&name) name;
        LOOP_OPENSSL_FUNCTIONS(LOOP_OPENSSL_MEMBER)
#undef LOOP_OPENSSL_MEMBER
};

/* The table, loading libssl the first time (thread-safe); 0 or
 * -EOPNOTSUPP when libssl cannot be loaded or lacks a function. */
int loop__openssl(const struct loop__openssl **ret);
