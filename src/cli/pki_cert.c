/*
 * pki_cert.c: what goes into a certificate `xray pki` makes, and its
 * signature (see pki_int.h).
 *
 * mbedTLS does the cryptography and the DER; this file decides the
 * names, the subjectAltNames and the extensions, and checks that what it
 * made verifies before anything is written.
 */
#include "core/xrayd.h"
#include "cli/pki_int.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <strings.h>

#include <mbedtls/asn1write.h>
#include <mbedtls/oid.h>
#include <mbedtls/platform.h>

/* ---- names ----------------------------------------------------------- */

/* The x509write context keeps names as a list of mbedtls_asn1_named_data
 * that it frees itself, and writes them head last.  Building the list here
 * (rather than through mbedtls_x509_string_to_names(), which accepts only
 * "\," as an escape in 2.28) takes any value as it is, and lets an issuer
 * name be copied from the CA certificate attribute by attribute, string
 * types included, so it matches the CA's subject byte for byte. */
static int xr_pki_name_prepend(mbedtls_asn1_named_data **head, const mbedtls_asn1_buf *oid, int tag,
                               const unsigned char *val, size_t len)
{
    mbedtls_asn1_named_data *n = mbedtls_calloc(1, sizeof(*n));
    unsigned char *o = mbedtls_calloc(1, oid->len);
    unsigned char *v = mbedtls_calloc(1, len > 0 ? len : 1);
    if (n == NULL || o == NULL || v == NULL) {
        mbedtls_free(n);
        mbedtls_free(o);
        mbedtls_free(v);
        xr__pki_err("out of memory");
        return XR_ERROR;
    }
    memcpy(o, oid->p, oid->len);
    memcpy(v, val, len);
    n->oid.tag = MBEDTLS_ASN1_OID;
    n->oid.p = o;
    n->oid.len = oid->len;
    n->val.tag = tag;
    n->val.p = v;
    n->val.len = len;
    n->next = *head;
    *head = n;
    return XR_OK;
}

int xr__pki_name_cn(mbedtls_asn1_named_data **head, const char *cn)
{
    mbedtls_asn1_buf oid = {MBEDTLS_ASN1_OID, MBEDTLS_OID_SIZE(MBEDTLS_OID_AT_CN),
                            (unsigned char *) MBEDTLS_OID_AT_CN};
    return xr_pki_name_prepend(head, &oid, MBEDTLS_ASN1_UTF8_STRING, (const unsigned char *) cn,
                               strlen(cn));
}

/* Copy a parsed name (certificate order) into a write list. */
int xr__pki_name_copy(mbedtls_asn1_named_data **head, const mbedtls_x509_name *name)
{
    for (const mbedtls_x509_name *n = name; n != NULL; n = n->next) {
        if (n->oid.p == NULL)
            continue;
        if (xr_pki_name_prepend(head, &n->oid, n->val.tag, n->val.p, n->val.len) != XR_OK)
            return XR_ERROR;
    }
    return XR_OK;
}

/* A common name we are willing to put in a certificate: 1..64 bytes, no
 * control characters. */
int xr__pki_check_cn(const char *what, const char *cn)
{
    size_t n = strlen(cn);
    if (n == 0 || n > XR_PKI_CN_MAX) {
        xr__pki_err("%s must be 1 to %d bytes long", what, XR_PKI_CN_MAX);
        return XR_ERROR;
    }
    for (size_t i = 0; i < n; i++)
        if ((unsigned char) cn[i] < 0x20 || cn[i] == 0x7f) {
            xr__pki_err("%s contains a control character", what);
            return XR_ERROR;
        }
    return XR_OK;
}

/* ---- subject alternative names --------------------------------------- */

static int xr_pki_dns_ok(const char *s)
{
    size_t n = strlen(s), label = 0;
    if (n == 0 || n > 253 || s[0] == '.' || s[n - 1] == '.')
        return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char) s[i];
        if (c == '.') {
            if (label == 0)
                return 0;
            label = 0;
            continue;
        }
        if (!(isalnum(c) || c == '-' || c == '_' || (c == '*' && i == 0 && s[1] == '.')))
            return 0;
        if (++label > 63)
            return 0;
    }
    return 1;
}

#define XR_PKI_SAN_ERR(...)                                                                        \
    do {                                                                                           \
        if (!quiet)                                                                                \
            xr__pki_err(__VA_ARGS__);                                                              \
    } while (0)

/* One SAN: DNS:name, IP:addr, URI:uri, email:addr, or a bare value (an IP
 * address if it parses as one, else a DNS name). */
int xr__pki_parse_san(const char *s, xr_pki_san_t *san, int quiet)
{
    const char *v = s;
    int tag = 0;

    if (strncasecmp(s, "DNS:", 4) == 0)
        tag = 2, v = s + 4;
    else if (strncasecmp(s, "IP:", 3) == 0)
        tag = 7, v = s + 3;
    else if (strncasecmp(s, "URI:", 4) == 0)
        tag = 6, v = s + 4;
    else if (strncasecmp(s, "email:", 6) == 0)
        tag = 1, v = s + 6;

    memset(san, 0, sizeof(*san));
    if (tag == 7 || tag == 0) {
        if (inet_pton(AF_INET, v, san->data) == 1) {
            san->tag = 7;
            san->len = 4;
            return XR_OK;
        }
        if (inet_pton(AF_INET6, v, san->data) == 1) {
            san->tag = 7;
            san->len = 16;
            return XR_OK;
        }
        if (tag == 7) {
            XR_PKI_SAN_ERR("--san %s: not an IPv4 or IPv6 address", s);
            return XR_ERROR;
        }
        tag = 2;
    }
    size_t n = strlen(v);
    if (tag == 2 && !xr_pki_dns_ok(v)) {
        XR_PKI_SAN_ERR("--san %s: not a valid DNS name", s);
        return XR_ERROR;
    }
    if (n == 0 || n >= sizeof(san->data)) {
        XR_PKI_SAN_ERR("--san %s: empty or longer than %zu bytes", s, sizeof(san->data) - 1);
        return XR_ERROR;
    }
    for (size_t i = 0; i < n; i++)
        if ((unsigned char) v[i] <= 0x20 || (unsigned char) v[i] >= 0x7f) {
            XR_PKI_SAN_ERR("--san %s: only printable ASCII without spaces is allowed", s);
            return XR_ERROR;
        }
    if (tag == 1 && strchr(v, '@') == NULL) {
        XR_PKI_SAN_ERR("--san %s: an email address needs an @", s);
        return XR_ERROR;
    }
    san->tag = tag;
    san->len = n;
    memcpy(san->data, v, n);
    return XR_OK;
}

/* ---- certificates ---------------------------------------------------- */

/* subjectAltName ::= SEQUENCE OF GeneralName, each [tag] IMPLICIT, built
 * back to front as asn1write does (mbedTLS 2.28 has no SAN writer). */
static int xr_pki_san_ext(const xr_pki_san_t *sans, size_t nsans, unsigned char *buf, size_t size,
                          unsigned char **start)
{
    unsigned char *p = buf + size;
    size_t len = 0;
    int ret;

    for (size_t i = nsans; i-- > 0;) {
        size_t one = 0;
        MBEDTLS_ASN1_CHK_ADD(one,
                             mbedtls_asn1_write_raw_buffer(&p, buf, sans[i].data, sans[i].len));
        MBEDTLS_ASN1_CHK_ADD(one, mbedtls_asn1_write_len(&p, buf, one));
        MBEDTLS_ASN1_CHK_ADD(
            one, mbedtls_asn1_write_tag(&p, buf, MBEDTLS_ASN1_CONTEXT_SPECIFIC | sans[i].tag));
        len += one;
    }
    MBEDTLS_ASN1_CHK_ADD(len, mbedtls_asn1_write_len(&p, buf, len));
    MBEDTLS_ASN1_CHK_ADD(
        len, mbedtls_asn1_write_tag(&p, buf, MBEDTLS_ASN1_CONSTRUCTED | MBEDTLS_ASN1_SEQUENCE));
    *start = p;
    return (int) len;
}

/* ExtKeyUsageSyntax ::= SEQUENCE SIZE (1..MAX) OF KeyPurposeId. */
static int xr_pki_eku_ext(unsigned eku, unsigned char *buf, size_t size, unsigned char **start)
{
    unsigned char *p = buf + size;
    size_t len = 0;
    int ret;

    if (eku & XR_PKI_EKU_CLIENT)
        MBEDTLS_ASN1_CHK_ADD(len,
                             mbedtls_asn1_write_oid(&p, buf, MBEDTLS_OID_CLIENT_AUTH,
                                                    MBEDTLS_OID_SIZE(MBEDTLS_OID_CLIENT_AUTH)));
    if (eku & XR_PKI_EKU_SERVER)
        MBEDTLS_ASN1_CHK_ADD(len,
                             mbedtls_asn1_write_oid(&p, buf, MBEDTLS_OID_SERVER_AUTH,
                                                    MBEDTLS_OID_SIZE(MBEDTLS_OID_SERVER_AUTH)));
    MBEDTLS_ASN1_CHK_ADD(len, mbedtls_asn1_write_len(&p, buf, len));
    MBEDTLS_ASN1_CHK_ADD(
        len, mbedtls_asn1_write_tag(&p, buf, MBEDTLS_ASN1_CONSTRUCTED | MBEDTLS_ASN1_SEQUENCE));
    *start = p;
    return (int) len;
}

/* A random positive serial of XR_PKI_SERIAL_BYTES bytes, top bits 01 so it
 * is never zero and always DER-encodes at full length (RFC 5280 4.1.2.2). */
static int xr_pki_serial(mbedtls_mpi *serial, xr_pki_rng_t *rng)
{
    unsigned char b[XR_PKI_SERIAL_BYTES];
    int ret = mbedtls_ctr_drbg_random(&rng->drbg, b, sizeof(b));
    if (ret == 0) {
        b[0] = (unsigned char) ((b[0] & 0x3f) | 0x40);
        ret = mbedtls_mpi_read_binary(serial, b, sizeof(b));
    }
    return ret;
}

/* Build, sign and PEM-encode one certificate into pem (XR_PKI_PEM_MAX). */
int xr__pki_make_cert(xr_pki_cert_t *c, xr_pki_rng_t *rng, unsigned char *pem)
{
    mbedtls_x509write_cert w;
    unsigned char ext[2048], *start;
    char nb[16], na[16];
    const char *step = "set up";
    int ret, len;

    mbedtls_x509write_crt_init(&w);
    w.subject = c->subject;
    w.issuer = c->issuer;
    c->subject = c->issuer = NULL;
    mbedtls_x509write_crt_set_version(&w, MBEDTLS_X509_CRT_VERSION_3);
    mbedtls_x509write_crt_set_md_alg(&w, MBEDTLS_MD_SHA256);
    mbedtls_x509write_crt_set_subject_key(&w, c->subject_key);
    mbedtls_x509write_crt_set_issuer_key(&w, c->issuer_key);

    xr__pki_time_mbed(c->not_before, nb);
    xr__pki_time_mbed(c->not_after, na);
    step = "serial";
    if ((ret = xr_pki_serial(&w.serial, rng)) != 0)
        goto fail;
    step = "validity";
    if ((ret = mbedtls_x509write_crt_set_validity(&w, nb, na)) != 0)
        goto fail;
    step = "basicConstraints";
    if ((ret = mbedtls_x509write_crt_set_basic_constraints(&w, c->is_ca,
                                                           c->is_ca ? XR_PKI_CA_PATHLEN : -1)) != 0)
        goto fail;
    step = "keyUsage";
    if ((ret = mbedtls_x509write_crt_set_key_usage(&w, c->key_usage)) != 0)
        goto fail;
    step = "subjectKeyIdentifier";
    if ((ret = mbedtls_x509write_crt_set_subject_key_identifier(&w)) != 0)
        goto fail;
    step = "authorityKeyIdentifier";
    if ((ret = mbedtls_x509write_crt_set_authority_key_identifier(&w)) != 0)
        goto fail;
    if (c->eku != 0) {
        step = "extendedKeyUsage";
        if ((ret = len = xr_pki_eku_ext(c->eku, ext, sizeof(ext), &start)) < 0)
            goto fail;
        if ((ret = mbedtls_x509write_crt_set_extension(
                 &w, MBEDTLS_OID_EXTENDED_KEY_USAGE,
                 MBEDTLS_OID_SIZE(MBEDTLS_OID_EXTENDED_KEY_USAGE), 0, start, (size_t) len)) != 0)
            goto fail;
    }
    if (c->nsans > 0) {
        step = "subjectAltName";
        if ((ret = len = xr_pki_san_ext(c->sans, c->nsans, ext, sizeof(ext), &start)) < 0)
            goto fail;
        /* Not critical: the subject is never empty here (RFC 5280 4.2.1.6). */
        if ((ret = mbedtls_x509write_crt_set_extension(
                 &w, MBEDTLS_OID_SUBJECT_ALT_NAME, MBEDTLS_OID_SIZE(MBEDTLS_OID_SUBJECT_ALT_NAME),
                 0, start, (size_t) len)) != 0)
            goto fail;
    }
    step = "sign";
    if ((ret = mbedtls_x509write_crt_pem(&w, pem, XR_PKI_PEM_MAX, mbedtls_ctr_drbg_random,
                                         &rng->drbg)) != 0)
        goto fail;
    mbedtls_x509write_crt_free(&w);
    return XR_OK;

fail:
    xr__pki_err("cannot make the certificate (%s): %s", step, xr__pki_mbed_err(ret));
    mbedtls_x509write_crt_free(&w);
    return XR_ERROR;
}

/* Parse what we just made and verify it against ca (itself for a root):
 * a certificate that would not verify is never written.  A certificate
 * made to be expired or not yet valid (--not-before, --not-after) must
 * still chain, so those two flags are forgiven. */
int xr__pki_self_check(const unsigned char *pem, mbedtls_x509_crt *ca)
{
    const uint32_t forgiven = MBEDTLS_X509_BADCERT_EXPIRED | MBEDTLS_X509_BADCERT_FUTURE;
    mbedtls_x509_crt crt;
    uint32_t flags = 0;
    char why[512];
    int ret;

    mbedtls_x509_crt_init(&crt);
    ret = mbedtls_x509_crt_parse(&crt, pem, strlen((const char *) pem) + 1);
    if (ret != 0) {
        xr__pki_err("the new certificate does not parse: %s", xr__pki_mbed_err(ret));
        goto out;
    }
    ret = mbedtls_x509_crt_verify(&crt, ca != NULL ? ca : &crt, NULL, NULL, &flags, NULL, NULL);
    if (ret == MBEDTLS_ERR_X509_CERT_VERIFY_FAILED && flags != 0 && (flags & ~forgiven) == 0)
        ret = 0;
    if (ret != 0) {
        why[0] = '\0';
        if (flags != 0)
            mbedtls_x509_crt_verify_info(why, sizeof(why), "", flags);
        why[strcspn(why, "\n")] = '\0';
        xr__pki_err("the new certificate does not verify against its CA: %s",
                    why[0] ? why : xr__pki_mbed_err(ret));
    }
out:
    mbedtls_x509_crt_free(&crt);
    return ret == 0 ? XR_OK : XR_ERROR;
}
