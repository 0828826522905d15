/*
 * pki_int.h: what the files of `xray pki` share, for src/cli only.
 *
 * The command is split by job: pki.c parses the command line and runs
 * `init` (the CA) and `issue`; pki_show.c runs `show`; pki_cert.c decides
 * what goes into a certificate and signs it; pki_file.c holds the
 * helpers under all of them - messages, randomness, files written safely,
 * time, and loading keys and certificates.
 */
#ifndef XR_PKI_INT_H
#define XR_PKI_INT_H

#include <stddef.h>
#include <sys/types.h>
#include <time.h>

#include <mbedtls/asn1.h>
#include <mbedtls/ctr_drbg.h>
#include <mbedtls/entropy.h>
#include <mbedtls/pk.h>
#include <mbedtls/x509_crt.h>

/* Exit codes. */
#define XR_PKI_EXIT_OK    0
#define XR_PKI_EXIT_FAIL  1
#define XR_PKI_EXIT_USAGE 2

/* Defaults and limits of what `xray pki` makes and reads. */
#define XR_PKI_DEFAULT_CA_NAME "xrayd CA"
#define XR_PKI_CA_DAYS         3650
#define XR_PKI_LEAF_DAYS       365
#define XR_PKI_MAX_DAYS        36500
#define XR_PKI_BACKDATE        3600 /* seconds: tolerate clocks a little behind */
#define XR_PKI_CA_PATHLEN      1    /* the CA may sign one intermediate level */
#define XR_PKI_SERIAL_BYTES    16
#define XR_PKI_MAX_SANS        64
#define XR_PKI_CN_MAX          64 /* ub-common-name, RFC 5280 appendix A.1 */
#define XR_PKI_MAX_FILE        (1024 * 1024)
#define XR_PKI_PEM_MAX         16384

/* Extended key usages asked for by --server, --client, --both. */
#define XR_PKI_EKU_SERVER 1
#define XR_PKI_EKU_CLIENT 2

/* "xray pki": the prefix of every message (pki_file.c). */
extern const char xr__pki_cmd[];

/* A seeded random generator, for keys and serials. */
typedef struct {
    mbedtls_entropy_context entropy;
    mbedtls_ctr_drbg_context drbg;
} xr_pki_rng_t;

/* One subjectAltName, ready to be encoded. */
typedef struct {
    int tag; /* GeneralName tag number: 1 email, 2 DNS, 6 URI, 7 IP */
    size_t len;
    unsigned char data[256];
} xr_pki_san_t;

/* What to put into a certificate (xr__pki_make_cert). */
typedef struct {
    mbedtls_pk_context *subject_key;
    mbedtls_pk_context *issuer_key;
    mbedtls_asn1_named_data *subject; /* taken over, even on failure */
    mbedtls_asn1_named_data *issuer;  /* taken over, even on failure */
    time_t not_before, not_after;
    int is_ca;
    unsigned key_usage; /* MBEDTLS_X509_KU_* */
    unsigned eku;       /* XR_PKI_EKU_*, 0 for none */
    const xr_pki_san_t *sans;
    size_t nsans;
} xr_pki_cert_t;

/* ---- messages, randomness, files, time, keys (pki_file.c) ---- */

/* "xray pki: " and the message on standard error. */
void xr__pki_err(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* mbedTLS's own sentence for an error code, in a static buffer. */
const char *xr__pki_mbed_err(int ret);
/* Seed rng (XR_OK), or say why not (XR_ERROR). */
int xr__pki_rng_init(xr_pki_rng_t *rng);
void xr__pki_rng_free(xr_pki_rng_t *rng);
/* dir/name into buf, or name alone when dir is ".". */
int xr__pki_path(char *buf, size_t size, const char *dir, const char *name);
/* Is there anything at path (a dangling link counts)? */
int xr__pki_exists(const char *path);
/* Write data to path with exactly mode, never leaving a partial file;
 * without force an existing path is an error, with it the file is
 * replaced atomically. */
int xr__pki_write(const char *path, const void *data, size_t len, mode_t mode, int force);
/* mkdir -p, new directories 0700. */
int xr__pki_mkdirs(const char *dir);
/* A UTC time as --not-before and --not-after take it. */
int xr__pki_parse_time(const char *s, time_t *out);
/* t in the form mbedtls_x509write_crt_set_validity() takes. */
void xr__pki_time_mbed(time_t t, char buf[16]);
/* t as YYYY-MM-DDThh:mm:ssZ. */
void xr__pki_time_text(time_t t, char *buf, size_t size);
/* A certificate's time as time_t. */
time_t xr__pki_x509_time(const mbedtls_x509_time *xt);
/* "ECDSA P-256" or "RSA BITS". */
void xr__pki_key_desc(const mbedtls_pk_context *pk, char *buf, size_t size);
/* A fresh key: ECDSA P-256, or RSA of rsa_bits when that is not 0. */
int xr__pki_gen_key(mbedtls_pk_context *pk, unsigned rsa_bits, xr_pki_rng_t *rng);
/* The key in PEM into buf (XR_PKI_PEM_MAX bytes, the caller wipes it). */
int xr__pki_key_pem(mbedtls_pk_context *pk, unsigned char *buf, size_t *len);
/* An unencrypted private key from path (warning when others may read it). */
int xr__pki_load_key(const char *path, mbedtls_pk_context *pk);
/* Every certificate in path (PEM or DER); *raw, when raw is not NULL,
 * receives the file's bytes (the caller frees them). */
int xr__pki_load_crt(const char *path, mbedtls_x509_crt *crt, unsigned char **raw, size_t *raw_len);

/* ---- names, subjectAltNames, signing (pki_cert.c) ---- */

/* Put CN=cn at the head of a name list. */
int xr__pki_name_cn(mbedtls_asn1_named_data **head, const char *cn);
/* Copy a parsed name into a name list, byte for byte. */
int xr__pki_name_copy(mbedtls_asn1_named_data **head, const mbedtls_x509_name *name);
/* A common name fit for a certificate (what: the option, for messages). */
int xr__pki_check_cn(const char *what, const char *cn);
/* Parse one SAN (DNS:, IP:, URI:, email:, or a bare address or name);
 * quiet: no message when it does not parse. */
int xr__pki_parse_san(const char *s, xr_pki_san_t *san, int quiet);
/* Build, sign and PEM-encode c into pem (XR_PKI_PEM_MAX bytes). */
int xr__pki_make_cert(xr_pki_cert_t *c, xr_pki_rng_t *rng, unsigned char *pem);
/* Does the certificate in pem parse and verify against ca (itself when
 * NULL)?  Expiry set on purpose is forgiven. */
int xr__pki_self_check(const unsigned char *pem, mbedtls_x509_crt *ca);

/* ---- the command line (pki.c) ---- */

/* getopt_long's complaint about option c, in our words; returns
 * XR_PKI_EXIT_USAGE. */
int xr__pki_bad_option(int c, char **argv, const char *sub);
/* A usage error of subcommand sub; returns XR_PKI_EXIT_USAGE. */
int xr__pki_usage_error(const char *sub, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* ---- xray pki show (pki_show.c) ---- */

/* Run `xray pki show ...` (argv[0] is "show"): the exit code. */
int xr__pki_show(int argc, char **argv);

#endif /* XR_PKI_INT_H */
