// OpenSSL 3.0 (Debian's libssl-dev), for rediss:// in RedisWire.
//
// Swift imports no function-like macro, so the few RedisWire needs get a static inline wrapper here.
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

/// SSL_CTX_set_min_proto_version (a macro over SSL_CTX_ctrl): 1 on success.
static inline int copenssl_ctx_set_min_proto_version(SSL_CTX *ctx, int version) {
    return (int)SSL_CTX_set_min_proto_version(ctx, version);
}

/// SSL_set_tlsext_host_name (a macro over SSL_ctrl): sends SNI; 1 on success.
static inline int copenssl_set_tlsext_host_name(SSL *ssl, const char *name) {
    return (int)SSL_set_tlsext_host_name(ssl, name);
}
