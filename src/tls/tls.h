/*
 * tls.h: TLS ends of a relay.  mbedTLS does what it is good at - X.509,
 * the TLS 1.2 handshake, tickets and the session cache - and once the
 * handshake is done its context is freed and records are sealed and
 * opened by record.c (libsodium).  A suite record.c does not know stays on
 * mbedTLS's own records (the slow path).
 */
#ifndef XR_TLS_H
#define XR_TLS_H

#include <mbedtls/ctr_drbg.h>
#include <mbedtls/ssl.h>
#include <mbedtls/x509_crt.h>

#include "core/conf.h"
#include "relay/buf.h"
#include "common/identity.h"
#include "common/record.h"
#include "tls/ticket.h"

typedef enum { XR_VERIFY_OFF = 0, XR_VERIFY_OPTIONAL, XR_VERIFY_REQUIRED } xr_verify_t;

typedef struct xr_tls_conf_s {
    int is_server;
    /* from the configuration */
    char *certificate;
    char *key;
    char *ca;   /* server: client_ca; client: ca */
    int verify; /* xr_verify_t (server: verify_client; client: verify on/off) */
    xr_str_list_t ciphers;
    xr_str_list_t allow;
    char *server_name;
    int session_tickets;
    int session_cache;
    int64_t session_timeout;
    uint64_t set; /* which directives were written */
    const xr_node_t *node;
    /* built at load */
    mbedtls_ssl_config ssl;
    mbedtls_x509_crt crt;
    mbedtls_pk_context pk;
    mbedtls_x509_crt ca_chain;
    xr_ticket_t ticket;
    int *suites;
    int built;
    int has_crt, has_ca, has_ticket;
    int keep_peer; /* keep the peer's parsed identity (the agent matches on it) */
    /* Client side, per worker (each has its own copy after fork): the
     * last session with this upstream, offered for resumption. */
    mbedtls_ssl_session client_session;
    int has_client_session;
} xr_tls_conf_t;

/* A client's resumable session with one server, owned by the caller (an
 * agent keeps one per server it dials; a configuration's single
 * client_session serves one upstream). */
typedef struct {
    mbedtls_ssl_session s;
    int has;
} xr_tls_session_t;

/* Forget a kept session (the slot may be used again). */
void xr_tls_session_free(xr_tls_session_t *slot);

extern const xr_directive_t xr_tls_server_directives[];
extern const xr_directive_t xr_tls_client_directives[];

/* Custom setters for the relay block's `tls` and `upstream_tls`. */
int xr_tls_set_server(xr_conf_t *cf, const xr_node_t *n, void *conf, const xr_directive_t *d);
int xr_tls_set_client(xr_conf_t *cf, const xr_node_t *n, void *conf, const xr_directive_t *d);
/* A client configuration with the certificate, key, CA and suites of a
 * server one: what an agent presents when it dials an application (the
 * peer is then checked by key hash, so no server_name).  Allocated from
 * the generation; NULL after reporting the error on cf. */
xr_tls_conf_t *xr_tls_client_of(xr_conf_t *cf, const xr_tls_conf_t *srv);
/* Free what xr_tls_set_* built (the generation is going away). */
void xr_tls_conf_free(xr_tls_conf_t *t);

struct xr_end_s;

/* Make e (its fd registered with the reactor) a TLS end of conf t and
 * start the handshake.  XR_OK or XR_ERROR (out of memory). */
int xr_tls_end_start(struct xr_end_s *e, xr_tls_conf_t *t);
/* The same for a client end that offers the session kept in slot and
 * keeps the new one there (slot outlives the handshake). */
int xr_tls_end_start_session(struct xr_end_s *e, xr_tls_conf_t *t, xr_tls_session_t *slot);
/* Advance the handshake: XR_OK when done (e's ops now move cleartext),
 * XR_AGAIN to wait for readiness, XR_ERROR with the reason in
 * xr_tls_end_why(e). */
int xr_tls_end_handshake(struct xr_end_s *e);
/* The peer's identity for logs ("CN=...,O=... sha256:..."), or NULL. */
const char *xr_tls_end_identity(struct xr_end_s *e);
/* Check the peer against the listener's allow list; XR_OK or XR_DECLINED
 * with the reason in xr_tls_end_why(e). */
int xr_tls_end_allowed(struct xr_end_s *e, const xr_tls_conf_t *t);
const char *xr_tls_end_why(struct xr_end_s *e);
/* The peer's verified identity, when the configuration keeps it
 * (keep_peer, or a listener's allow list before the check), else NULL. */
const xr_identity_t *xr_tls_end_peer(struct xr_end_s *e);
/* Was the last handshake an abbreviated (resumed) one? */
int xr_tls_end_resumed(struct xr_end_s *e);
/* Can e's record layer move out of it (xr_tls_end_detach)?  Only an end
 * on record.c's records, with no partial record read and no sealed
 * bytes waiting: otherwise why says what keeps it. */
int xr_tls_end_movable(struct xr_end_s *e, char *why, size_t n);
/* Move e's record layer into rec (the caller frees it with xr_rec_free);
 * e keeps its descriptor and identity and can only be freed after. */
void xr_tls_end_detach(struct xr_end_s *e, xr_rec_t *rec);

/* mbedTLS's key export hook (registered on every TLS configuration). */
int xr_tls_export_keys(void *p, const unsigned char *ms, const unsigned char *kb, size_t maclen,
                       size_t keylen, size_t ivlen, const unsigned char client_random[32],
                       const unsigned char server_random[32], mbedtls_tls_prf_types prf);

/* The process's random generator (seeded on first use). */
mbedtls_ctr_drbg_context *xr_tls_drbg(void);
/* In a new worker: reseed, so forked workers never share a random stream. */
int xr_tls_worker_init(void);

#endif
