/*
 * tls_conf.c: the `tls` and `upstream_tls` blocks of a relay, and the
 * mbedTLS configuration built from them at load time, so -t checks
 * certificates, keys and suite names like everything else.
 */
#include "core/xrayd.h"
#include "core/gen.h"
#include "core/log.h"
#include "tls/session_cache.h"
#include "tls/tls.h"

#include <mbedtls/entropy.h>
#include <mbedtls/error.h>
#include <mbedtls/ssl_ciphersuites.h>
#include <sodium.h>
#include <stdio.h>
#include <unistd.h>

#define S     XR_CTX_TLS_SERVER
#define C     XR_CTX_TLS_CLIENT
#define TO(f) offsetof(xr_tls_conf_t, f)

static const char *const xr_verify_names[] = {"off", "optional", "required", NULL};

const xr_directive_t xr_tls_server_directives[] = {
    {"certificate", S, XR_T_PATH, TO(certificate), NULL, 0, 0, NULL, NULL, XR_DIR_REQUIRED,
     "PEM certificate chain presented to clients (leaf first)."},
    {"key", S, XR_T_PATH, TO(key), NULL, 0, 0, NULL, NULL, XR_DIR_REQUIRED,
     "PEM private key of the certificate."},
    {"client_ca", S, XR_T_PATH, TO(ca), NULL, 0, 0, NULL, NULL, 0,
     "PEM CA certificates that client certificates must chain to."},
    {"verify_client", S, XR_T_ENUM, TO(verify), "required", 0, 0, xr_verify_names, NULL, 0,
     "Client certificates: required, optional or off (required needs client_ca)."},
    {"ciphers", S | C, XR_T_STR_LIST, TO(ciphers), NULL, 0, 0, NULL, NULL, 0,
     "TLS 1.2 suites in order of preference (mbedTLS or OpenSSL names)."},
    {"allow", S, XR_T_STR_LIST, TO(allow), NULL, 0, 0, NULL, NULL, 0,
     "Client identities let in: subject patterns (CN=app-*) or sha256:KEYHASH."},
    {"session_tickets", S, XR_T_FLAG, TO(session_tickets), "on", 0, 0, NULL, NULL, 0,
     "Issue session tickets so returning clients resume without public-key work."},
    {"session_cache", S, XR_T_FLAG, TO(session_cache), "on", 0, 0, NULL, NULL, 0,
     "Keep sessions for resumption by session id."},
    {"session_timeout", S | C, XR_T_DURATION, TO(session_timeout), "1h", 1000, 604800000, NULL,
     NULL, 0, "How long a session (ticket key, cache entry, client session) may be resumed."},
    XR_DIRECTIVES_END};

const xr_directive_t xr_tls_client_directives[] = {
    {"ca", C, XR_T_PATH, TO(ca), NULL, 0, 0, NULL, NULL, 0,
     "PEM CA certificates the upstream's certificate must chain to."},
    {"verify", C, XR_T_ENUM, TO(verify), "required", 0, 0, xr_verify_names, NULL, 0,
     "Upstream certificate check: required (default), optional or off."},
    {"certificate", C, XR_T_PATH, TO(certificate), NULL, 0, 0, NULL, NULL, 0,
     "PEM client certificate chain presented to the upstream."},
    {"key", C, XR_T_PATH, TO(key), NULL, 0, 0, NULL, NULL, 0,
     "PEM private key of the client certificate."},
    {"server_name", C, XR_T_STRING, TO(server_name), NULL, 0, 0, NULL, NULL, 0,
     "Name sent as SNI and checked against the upstream's certificate."},
    {"ciphers", S | C, XR_T_STR_LIST, TO(ciphers), NULL, 0, 0, NULL, NULL, 0,
     "TLS 1.2 suites in order of preference (mbedTLS or OpenSSL names)."},
    {"session_timeout", S | C, XR_T_DURATION, TO(session_timeout), "1h", 1000, 604800000, NULL,
     NULL, 0, "How long a session (ticket key, cache entry, client session) may be resumed."},
    {"session_reuse", C, XR_T_FLAG, TO(session_tickets), "on", 0, 0, NULL, NULL, 0,
     "Resume earlier sessions with the upstream (ticket or session id)."},
    XR_DIRECTIVES_END};

#undef S
#undef C

/* ---- randomness ---------------------------------------------------------- */

static mbedtls_entropy_context xr_entropy;
static mbedtls_ctr_drbg_context xr_drbg;
static int xr_drbg_ready;

mbedtls_ctr_drbg_context *xr_tls_drbg(void)
{
    if (!xr_drbg_ready) {
        static const char pers[] = "xrayd tls";
        mbedtls_entropy_init(&xr_entropy);
        mbedtls_ctr_drbg_init(&xr_drbg);
        if (mbedtls_ctr_drbg_seed(&xr_drbg, mbedtls_entropy_func, &xr_entropy,
                                  (const unsigned char *) pers, sizeof(pers) - 1) != 0) {
            xr_log(XR_LOG_EMERG, "cannot seed the random generator");
            abort(); /* no randomness, no TLS */
        }
        xr_drbg_ready = 1;
    }
    return &xr_drbg;
}

int xr_tls_worker_init(void)
{
    if (!xr_drbg_ready)
        return XR_OK;
    /* A forked worker holds a copy of the master's generator state: mix in
     * fresh entropy and the pid before it makes a single key. */
    pid_t pid = getpid();
    return mbedtls_ctr_drbg_reseed(&xr_drbg, (const unsigned char *) &pid, sizeof(pid)) == 0
               ? XR_OK
               : XR_ERROR;
}

/* ---- suites -------------------------------------------------------------- */

/* OpenSSL's names for the suites people ask for, beside mbedTLS's own. */
static const struct {
    const char *openssl;
    int id;
} xr_suite_alias[] = {
    {"ECDHE-ECDSA-AES256-GCM-SHA384", MBEDTLS_TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384},
    {"ECDHE-RSA-AES256-GCM-SHA384", MBEDTLS_TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384},
    {"ECDHE-ECDSA-CHACHA20-POLY1305", MBEDTLS_TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256},
    {"ECDHE-RSA-CHACHA20-POLY1305", MBEDTLS_TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256},
    {"ECDHE-ECDSA-AES128-GCM-SHA256", MBEDTLS_TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256},
    {"ECDHE-RSA-AES128-GCM-SHA256", MBEDTLS_TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256},
};

static int xr_tls_suites(xr_conf_t *cf, xr_tls_conf_t *t)
{
    const xr_node_t *n = xr_node_get(t->node, "ciphers");
    if (t->ciphers.n == 0) {
        /* AEADs the record layer seals itself; ChaCha first where
         * AES-GCM has no hardware support. */
        static const int aes_first[] = {MBEDTLS_TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
                                        MBEDTLS_TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
                                        MBEDTLS_TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
                                        MBEDTLS_TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256, 0};
        static const int chacha_first[] = {MBEDTLS_TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
                                           MBEDTLS_TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
                                           MBEDTLS_TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
                                           MBEDTLS_TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384, 0};
        const int *src = xr_rec_available(XR_AEAD_AES256GCM) ? aes_first : chacha_first;
        t->suites = xr_conf_alloc(cf, sizeof(aes_first));
        memcpy(t->suites, src, sizeof(aes_first));
        return XR_OK;
    }
    t->suites = xr_conf_alloc(cf, (t->ciphers.n + 1) * sizeof(int));
    for (size_t i = 0; i < t->ciphers.n; i++) {
        const char *name = t->ciphers.items[i];
        int id = mbedtls_ssl_get_ciphersuite_id(name);
        for (size_t k = 0; id == 0 && k < XR_ARRAY_SIZE(xr_suite_alias); k++)
            if (strcmp(name, xr_suite_alias[k].openssl) == 0)
                id = xr_suite_alias[k].id;
        if (id == 0) {
            const xr_node_t *at = n && n->type == XR_NODE_SEQ ? n->items[i] : n;
            return xr_conf_error(cf, at ? at : t->node,
                                 "unknown cipher suite \"%s\" (e.g. "
                                 "TLS-ECDHE-ECDSA-WITH-AES-256-GCM-SHA384 or "
                                 "ECDHE-ECDSA-AES256-GCM-SHA384)",
                                 name);
        }
        t->suites[i] = id;
    }
    return XR_OK;
}

/* ---- building ------------------------------------------------------------ */

static int xr_tls_fail(xr_conf_t *cf, const xr_tls_conf_t *t, const char *key, int rc,
                       const char *what, const char *path)
{
    char msg[160];
    mbedtls_strerror(rc, msg, sizeof(msg));
    const xr_node_t *at = xr_node_get(t->node, key);
    return xr_conf_error(cf, at ? at : t->node, "%s \"%s\": %s", what, path, msg);
}

/* What a session resumed on this listener was trusted under: its own
 * certificate, the CAs and verification it checks clients with, and its
 * allow list.  Tickets are bound to it (ticket.h). */
static void xr_tls_trust_digest(const xr_tls_conf_t *t, unsigned char out[32])
{
    crypto_generichash_state h;
    crypto_generichash_init(&h, NULL, 0, 32);
    for (const mbedtls_x509_crt *c = t->has_crt ? &t->crt : NULL; c != NULL; c = c->next)
        crypto_generichash_update(&h, c->raw.p, c->raw.len);
    crypto_generichash_update(&h, (const unsigned char *) "|ca|", 4);
    for (const mbedtls_x509_crt *c = t->has_ca ? &t->ca_chain : NULL; c != NULL; c = c->next)
        crypto_generichash_update(&h, c->raw.p, c->raw.len);
    unsigned char v = (unsigned char) t->verify;
    crypto_generichash_update(&h, &v, 1);
    for (size_t i = 0; i < t->allow.n; i++)
        crypto_generichash_update(&h, (const unsigned char *) t->allow.items[i],
                                  strlen(t->allow.items[i]) + 1);
    crypto_generichash_final(&h, out, 32);
}

static int xr_tls_build(xr_conf_t *cf, xr_tls_conf_t *t)
{
    int rc;
    mbedtls_ssl_config_init(&t->ssl);
    mbedtls_x509_crt_init(&t->crt);
    mbedtls_x509_crt_init(&t->ca_chain);
    mbedtls_pk_init(&t->pk);
    t->built = 1;

    if (t->certificate != NULL) {
        if ((rc = mbedtls_x509_crt_parse_file(&t->crt, t->certificate)) != 0)
            return xr_tls_fail(cf, t, "certificate", rc, "cannot load certificate", t->certificate);
        if ((rc = mbedtls_pk_parse_keyfile(&t->pk, t->key, NULL)) != 0)
            return xr_tls_fail(cf, t, "key", rc, "cannot load key", t->key);
        if ((rc = mbedtls_pk_check_pair(&t->crt.pk, &t->pk)) != 0)
            return xr_tls_fail(cf, t, "key", rc, "key does not match the certificate of", t->key);
        t->has_crt = 1;
    }
    if (t->ca != NULL) {
        if ((rc = mbedtls_x509_crt_parse_file(&t->ca_chain, t->ca)) != 0)
            return xr_tls_fail(cf, t, t->is_server ? "client_ca" : "ca", rc,
                               "cannot load CA certificates", t->ca);
        t->has_ca = 1;
    }
    if (xr_tls_suites(cf, t) != XR_OK)
        return XR_ERROR;

    rc = mbedtls_ssl_config_defaults(&t->ssl,
                                     t->is_server ? MBEDTLS_SSL_IS_SERVER : MBEDTLS_SSL_IS_CLIENT,
                                     MBEDTLS_SSL_TRANSPORT_STREAM, MBEDTLS_SSL_PRESET_DEFAULT);
    if (rc != 0)
        return xr_conf_error(cf, t->node, "mbedtls_ssl_config_defaults() failed (-0x%04x)", -rc);
    mbedtls_ssl_conf_rng(&t->ssl, mbedtls_ctr_drbg_random, xr_tls_drbg());
    mbedtls_ssl_conf_min_version(&t->ssl, MBEDTLS_SSL_MAJOR_VERSION_3, MBEDTLS_SSL_MINOR_VERSION_3);
    mbedtls_ssl_conf_max_version(&t->ssl, MBEDTLS_SSL_MAJOR_VERSION_3, MBEDTLS_SSL_MINOR_VERSION_3);
    mbedtls_ssl_conf_ciphersuites(&t->ssl, t->suites);
    /* mbedTLS 2.28 prefers P-521 (slow) and still offers 192/224-bit
     * curves; use the fast, strong ones, as OpenSSL does. */
    static const mbedtls_ecp_group_id curves[] = {MBEDTLS_ECP_DP_CURVE25519,
                                                  MBEDTLS_ECP_DP_SECP256R1,
                                                  MBEDTLS_ECP_DP_SECP384R1, MBEDTLS_ECP_DP_NONE};
    mbedtls_ssl_conf_curves(&t->ssl, curves);
    mbedtls_ssl_conf_export_keys_ext_cb(&t->ssl, xr_tls_export_keys, NULL);
#if defined(MBEDTLS_SSL_RENEGOTIATION)
    mbedtls_ssl_conf_renegotiation(&t->ssl, MBEDTLS_SSL_RENEGOTIATION_DISABLED);
#endif
    static const int authmode[] = {MBEDTLS_SSL_VERIFY_NONE, MBEDTLS_SSL_VERIFY_OPTIONAL,
                                   MBEDTLS_SSL_VERIFY_REQUIRED};
    mbedtls_ssl_conf_authmode(&t->ssl, authmode[t->verify]);
    if (t->has_ca)
        mbedtls_ssl_conf_ca_chain(&t->ssl, &t->ca_chain, NULL);
    if (t->has_crt && (rc = mbedtls_ssl_conf_own_cert(&t->ssl, &t->crt, &t->pk)) != 0)
        return xr_tls_fail(cf, t, "certificate", rc, "cannot use certificate", t->certificate);
    if (t->is_server && t->session_tickets) {
        unsigned char what[32];
        xr_tls_trust_digest(t, what);
        if (xr_ticket_init(&t->ticket, what, sizeof(what),
                           (uint32_t) (t->session_timeout / 1000)) != XR_OK)
            return xr_conf_error(cf, t->node, "session_timeout must be at least 1s for tickets");
        mbedtls_ssl_conf_session_tickets_cb(&t->ssl, xr_ticket_write, xr_ticket_parse, &t->ticket);
        t->has_ticket = 1;
    }
    if (t->is_server && t->session_cache) {
        if (xr_session_cache_init() != XR_OK)
            return xr_conf_error(cf, t->node, "cannot map the session cache: %s", strerror(errno));
        mbedtls_ssl_conf_session_cache(&t->ssl, t, xr_session_cache_get, xr_session_cache_set);
    }
    if (!t->is_server)
        mbedtls_ssl_conf_session_tickets(&t->ssl, t->session_tickets
                                                      ? MBEDTLS_SSL_SESSION_TICKETS_ENABLED
                                                      : MBEDTLS_SSL_SESSION_TICKETS_DISABLED);
    return XR_OK;
}

void xr_tls_conf_free(xr_tls_conf_t *t)
{
    if (t == NULL || !t->built)
        return;
    if (t->has_client_session)
        mbedtls_ssl_session_free(&t->client_session);
    xr_ticket_free(&t->ticket);
    mbedtls_ssl_config_free(&t->ssl);
    mbedtls_x509_crt_free(&t->crt);
    mbedtls_x509_crt_free(&t->ca_chain);
    mbedtls_pk_free(&t->pk);
    t->built = 0;
}

static void xr_tls_cleanup(void *arg)
{
    xr_tls_conf_free(arg);
}

static int xr_tls_set(xr_conf_t *cf, const xr_node_t *n, void *conf, const xr_directive_t *d,
                      int is_server)
{
    xr_tls_conf_t *t = xr_conf_alloc(cf, sizeof(*t));
    const xr_directive_t *table = is_server ? xr_tls_server_directives : xr_tls_client_directives;
    unsigned ctx = is_server ? XR_CTX_TLS_SERVER : XR_CTX_TLS_CLIENT;
    t->is_server = is_server;
    t->node = n;
    if (n->type != XR_NODE_MAP)
        return xr_conf_error(cf, n, "expected a mapping of TLS settings");
    if (xr_conf_defaults(cf, table, ctx, t, NULL) != XR_OK ||
        xr_conf_block(cf, n, table, ctx, t, NULL, &t->set) != XR_OK)
        return XR_ERROR;
    if (is_server) {
        int verify_set = xr_node_get(n, "verify_client") != NULL;
        if (t->ca == NULL && !verify_set)
            t->verify = XR_VERIFY_OFF; /* no client CA given: plain server auth */
        if (t->ca == NULL && t->verify != XR_VERIFY_OFF)
            return xr_conf_error(cf, xr_node_get(n, "verify_client"),
                                 "client certificates cannot be verified without client_ca");
        if (t->allow.n > 0 && t->verify == XR_VERIFY_OFF)
            return xr_conf_error(cf, xr_node_get(n, "allow"),
                                 "allow needs client certificates (set client_ca)");
    } else {
        if ((t->certificate == NULL) != (t->key == NULL))
            return xr_conf_error(cf, n, "certificate and key go together");
        if (t->verify != XR_VERIFY_OFF && t->ca == NULL)
            return xr_conf_error(cf, n,
                                 "verifying the upstream needs \"ca\" (or verify: off, which "
                                 "lets anyone impersonate it)");
    }
    *(xr_tls_conf_t **) ((char *) conf + d->offset) = t;
    if (xr_conf_dry_run(cf))
        return XR_OK;
    xr_gen_add_cleanup(cf->user, xr_tls_cleanup, t);
    return xr_tls_build(cf, t);
}

xr_tls_conf_t *xr_tls_client_of(xr_conf_t *cf, const xr_tls_conf_t *srv)
{
    xr_tls_conf_t *t = xr_conf_alloc(cf, sizeof(*t));
    t->is_server = 0;
    t->node = srv->node;
    t->certificate = srv->certificate;
    t->key = srv->key;
    t->ca = srv->ca;
    t->verify = XR_VERIFY_REQUIRED;
    t->ciphers = srv->ciphers;
    t->session_tickets = 1;
    t->session_timeout = srv->session_timeout;
    t->keep_peer = 1;
    if (xr_conf_dry_run(cf))
        return t;
    xr_gen_add_cleanup(cf->user, xr_tls_cleanup, t);
    return xr_tls_build(cf, t) == XR_OK ? t : NULL;
}

int xr_tls_set_server(xr_conf_t *cf, const xr_node_t *n, void *conf, const xr_directive_t *d)
{
    return xr_tls_set(cf, n, conf, d, 1);
}

int xr_tls_set_client(xr_conf_t *cf, const xr_node_t *n, void *conf, const xr_directive_t *d)
{
    return xr_tls_set(cf, n, conf, d, 0);
}
