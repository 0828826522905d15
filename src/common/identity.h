/*
 * identity.h: a certificate's identity, as xrayd logs and matches it.
 *
 * One function turns a parsed mbedtls_x509_crt into plain strings, so the
 * daemon (when it logs and authorizes a peer) and `xray pki show` (when an
 * administrator checks what a certificate will match) can never disagree:
 *
 *   subject, issuer   RFC 4514 order and escaping, most specific RDN first:
 *                     "CN=alice,O=Example" (attribute short names as
 *                     mbedTLS knows them, else the dotted OID; values of
 *                     a multi-valued RDN joined with '+');
 *   sans              the subjectAltName entries, comma-separated, each
 *                     "DNS:name", "IP:192.0.2.1", "IP:2001:db8::1",
 *                     "URI:...", "email:..." (other kinds are skipped);
 *   pubkey_sha256     lowercase hex SHA-256 of the DER SubjectPublicKeyInfo,
 *                     the same value as
 *                     `openssl x509 -pubkey -noout | openssl pkey -pubin
 *                     -outform DER | sha256sum`; it survives re-issuing
 *                     a certificate for the same key.
 *
 * Nothing here allocates or keeps a pointer into the certificate.
 */
#ifndef XR_IDENTITY_H
#define XR_IDENTITY_H

#include <stddef.h>

#include <mbedtls/x509_crt.h>

#define XR_IDENTITY_NAME_MAX   512  /* subject, issuer (with the NUL) */
#define XR_IDENTITY_CN_MAX     128  /* ub-common-name is 64 characters */
#define XR_IDENTITY_SANS_MAX   1024 /* all SANs, comma-separated */
#define XR_IDENTITY_SERIAL_MAX 41   /* 20 bytes (RFC 5280 4.1.2.2) in hex */
#define XR_IDENTITY_KEY_MAX    32   /* "ECDSA P-256", "RSA 2048" */

typedef struct {
    char subject[XR_IDENTITY_NAME_MAX];
    char issuer[XR_IDENTITY_NAME_MAX];
    char common_name[XR_IDENTITY_CN_MAX]; /* the subject's last CN (escaped as above), or "" */
    char sans[XR_IDENTITY_SANS_MAX];
    char serial[XR_IDENTITY_SERIAL_MAX]; /* lowercase hex, no separators */
    char key[XR_IDENTITY_KEY_MAX];
    unsigned key_bits;
    char pubkey_sha256[65]; /* 64 hex digits */
} xr_identity_t;

/* Fill out from crt (the first certificate of the chain; the rest is not
 * looked at).  Returns XR_OK, or XR_ERROR if a field did not fit its array
 * or could not be decoded.  On XR_ERROR every field is still a
 * NUL-terminated string (truncated), good for a log line but never for
 * matching: a caller that authorizes must refuse the peer. */
int xr_identity_from_crt(const mbedtls_x509_crt *crt, xr_identity_t *out);

/* Format one distinguished name as described above into buf (size bytes,
 * always NUL-terminated when size > 0).  Returns XR_OK or XR_ERROR if it
 * was truncated. */
int xr_identity_format_name(const mbedtls_x509_name *name, char *buf, size_t size);

/* Format crt's subjectAltName entries as described above.  Returns XR_OK
 * or XR_ERROR if truncated. */
int xr_identity_format_sans(const mbedtls_x509_crt *crt, char *buf, size_t size);

/* SHA-256 of crt's DER SubjectPublicKeyInfo, raw (32 bytes). */
void xr_identity_pubkey_sha256(const mbedtls_x509_crt *crt, unsigned char digest[32]);

/* Does pattern match id?  A pattern is the key ("sha256:HEX", a prefix of
 * at least 16 digits), the whole subject, one of its RDNs ("CN=app-*"), or
 * one SAN ("DNS:*.example"), with shell wildcards.  Used by a listener's
 * allow and by the agent's applications. */
int xr_identity_match(const xr_identity_t *id, const char *pattern);

#endif /* XR_IDENTITY_H */
