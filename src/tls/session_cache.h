/*
 * session_cache.h: the server's TLS session cache (resumption by session
 * id), shared by every worker: a client that reconnects lands on any
 * worker, and mbedTLS's own cache lives in one process.
 */
#ifndef XR_SESSION_CACHE_H
#define XR_SESSION_CACHE_H

#include <mbedtls/ssl.h>

/* Map the shared table (in the master, before workers fork; idempotent).
 * XR_OK or XR_ERROR with errno. */
int xr_session_cache_init(void);

/* mbedTLS's cache callbacks (mbedtls_ssl_conf_session_cache); p is the
 * xr_tls_conf_t, whose session_timeout bounds an entry's life. */
int xr_session_cache_get(void *p, mbedtls_ssl_session *session);
int xr_session_cache_set(void *p, const mbedtls_ssl_session *session);

#endif
