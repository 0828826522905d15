/*
 * identity.c: a certificate's identity as plain strings (see identity.h).
 */
#include "common/common.h"
#include "common/identity.h"

#include <arpa/inet.h>
#include <fnmatch.h>
#include <mbedtls/asn1.h>
#include <mbedtls/ecp.h>
#include <mbedtls/oid.h>
#include <mbedtls/pk.h>
#include <mbedtls/sha256.h>
#include <stdio.h>

/* An append-only string in a caller's fixed array.  Overflow is sticky:
 * the text is cut at the last byte that fitted and the result is
 * XR_ERROR. */
typedef struct {
    char *buf;
    size_t size, len;
    int overflow;
} xr_strbuf_t;

static void xr_sb_init(xr_strbuf_t *sb, char *buf, size_t size)
{
    sb->buf = buf;
    sb->size = size;
    sb->len = 0;
    sb->overflow = size == 0;
    if (size > 0)
        buf[0] = '\0';
}

static void xr_sb_add(xr_strbuf_t *sb, const void *data, size_t n)
{
    if (sb->overflow)
        return;
    if (n >= sb->size - sb->len) {
        n = sb->size - sb->len - 1;
        sb->overflow = 1;
    }
    memcpy(sb->buf + sb->len, data, n);
    sb->len += n;
    sb->buf[sb->len] = '\0';
}

static void xr_sb_str(xr_strbuf_t *sb, const char *s)
{
    xr_sb_add(sb, s, strlen(s));
}

static void xr_sb_char(xr_strbuf_t *sb, char c)
{
    xr_sb_add(sb, &c, 1);
}

static void xr_sb_hexbyte(xr_strbuf_t *sb, unsigned char c, int escape)
{
    static const char hex[] = "0123456789abcdef";
    char t[3] = {'\\', hex[c >> 4], hex[c & 15]};
    xr_sb_add(sb, escape ? t : t + 1, escape ? 3 : 2);
}

/* One attribute value, escaped as RFC 4514 2.4 asks.  Bytes above 0x7f
 * pass through in a UTF8String (they are UTF-8); in any other string type
 * they, like control bytes, are written as \xx so the text stays ASCII. */
static void xr_sb_dn_value(xr_strbuf_t *sb, const mbedtls_asn1_buf *val)
{
    for (size_t i = 0; i < val->len; i++) {
        unsigned char c = val->p[i];
        int edge = (i == 0 && (c == ' ' || c == '#')) || (i == val->len - 1 && c == ' ');
        if (c < 0x20 || c == 0x7f || (c >= 0x80 && val->tag != MBEDTLS_ASN1_UTF8_STRING))
            xr_sb_hexbyte(sb, c, 1);
        else if (edge || strchr("\"+,;<>\\", c) != NULL) {
            xr_sb_char(sb, '\\');
            xr_sb_char(sb, (char) c);
        } else
            xr_sb_char(sb, (char) c);
    }
}

static void xr_sb_dn_attr(xr_strbuf_t *sb, const mbedtls_x509_name *n)
{
    const char *short_name;
    char dotted[64];
    if (mbedtls_oid_get_attr_short_name(&n->oid, &short_name) == 0)
        xr_sb_str(sb, short_name);
    else if (mbedtls_oid_get_numeric_string(dotted, sizeof(dotted), &n->oid) > 0)
        xr_sb_str(sb, dotted);
    else
        xr_sb_str(sb, "?");
    xr_sb_char(sb, '=');
    xr_sb_dn_value(sb, &n->val);
}

/* The certificate holds RDNs most general first (C, O, ..., CN); RFC 4514
 * prints them most specific first.  An entry with next_merged set shares
 * its RDN with the entry after it. */
#define XR_DN_MAX_ATTRS 64

int xr_identity_format_name(const mbedtls_x509_name *name, char *buf, size_t size)
{
    const mbedtls_x509_name *attr[XR_DN_MAX_ATTRS];
    size_t rdn_start[XR_DN_MAX_ATTRS + 1];
    size_t nattr = 0, nrdn = 0;
    int too_many = 0;
    xr_strbuf_t sb;

    xr_sb_init(&sb, buf, size);
    for (const mbedtls_x509_name *n = name; n != NULL; n = n->next) {
        if (n->oid.p == NULL)
            continue; /* the empty head of an empty name */
        if (nattr == XR_DN_MAX_ATTRS) {
            too_many = 1;
            break;
        }
        if (nattr == 0 || !attr[nattr - 1]->next_merged)
            rdn_start[nrdn++] = nattr;
        attr[nattr++] = n;
    }
    rdn_start[nrdn] = nattr;

    for (size_t r = nrdn; r-- > 0;) {
        if (r != nrdn - 1)
            xr_sb_char(&sb, ',');
        for (size_t i = rdn_start[r]; i < rdn_start[r + 1]; i++) {
            if (i != rdn_start[r])
                xr_sb_char(&sb, '+');
            xr_sb_dn_attr(&sb, attr[i]);
        }
    }
    return sb.overflow || too_many ? XR_ERROR : XR_OK;
}

/* GeneralName tags (RFC 5280 4.2.1.6), context-specific, implicit. */
#define XR_SAN_EMAIL 1
#define XR_SAN_DNS   2
#define XR_SAN_URI   6
#define XR_SAN_IP    7

int xr_identity_format_sans(const mbedtls_x509_crt *crt, char *buf, size_t size)
{
    xr_strbuf_t sb;
    int bad = 0;

    xr_sb_init(&sb, buf, size);
    /* mbedTLS 2.28 keeps every GeneralName raw in subject_alt_names (it
     * decodes only dNSName itself), so IP, URI and email are read here. */
    for (const mbedtls_x509_sequence *s = &crt->subject_alt_names; s != NULL; s = s->next) {
        const mbedtls_x509_buf *b = &s->buf;
        if (b->p == NULL)
            continue;
        if ((b->tag & MBEDTLS_ASN1_TAG_CLASS_MASK) != MBEDTLS_ASN1_CONTEXT_SPECIFIC ||
            (b->tag & MBEDTLS_ASN1_CONSTRUCTED))
            continue; /* otherName, directoryName and the like */
        const char *prefix;
        switch (b->tag & MBEDTLS_ASN1_TAG_VALUE_MASK) {
        case XR_SAN_DNS: prefix = "DNS:"; break;
        case XR_SAN_IP: prefix = "IP:"; break;
        case XR_SAN_URI: prefix = "URI:"; break;
        case XR_SAN_EMAIL: prefix = "email:"; break;
        default: continue;
        }
        if (sb.len > 0)
            xr_sb_char(&sb, ',');
        xr_sb_str(&sb, prefix);
        if ((b->tag & MBEDTLS_ASN1_TAG_VALUE_MASK) == XR_SAN_IP) {
            char text[INET6_ADDRSTRLEN];
            int af = b->len == 4 ? AF_INET : b->len == 16 ? AF_INET6 : 0;
            if (af != 0 && inet_ntop(af, b->p, text, sizeof(text)) != NULL)
                xr_sb_str(&sb, text);
            else {
                bad = 1;
                xr_sb_str(&sb, "?");
            }
            continue;
        }
        /* IA5String: ASCII; anything else is escaped so that a comma or a
         * control byte cannot forge a second entry in the list. */
        for (size_t i = 0; i < b->len; i++) {
            unsigned char c = b->p[i];
            if (c < 0x21 || c > 0x7e || c == ',' || c == '\\')
                xr_sb_hexbyte(&sb, c, 1);
            else
                xr_sb_char(&sb, (char) c);
        }
    }
    return sb.overflow || bad ? XR_ERROR : XR_OK;
}

void xr_identity_pubkey_sha256(const mbedtls_x509_crt *crt, unsigned char digest[32])
{
    /* pk_raw is the SubjectPublicKeyInfo exactly as the certificate
     * carries it, so the hash needs no re-encoding and matches OpenSSL's. */
    mbedtls_sha256_ret(crt->pk_raw.p, crt->pk_raw.len, digest, 0);
}

static void xr_identity_key(const mbedtls_x509_crt *crt, xr_identity_t *out)
{
    mbedtls_pk_type_t type = mbedtls_pk_get_type(&crt->pk);

    out->key_bits = (unsigned) mbedtls_pk_get_bitlen(&crt->pk);
    if (type == MBEDTLS_PK_RSA) {
        snprintf(out->key, sizeof(out->key), "RSA %u", out->key_bits);
    } else if (type == MBEDTLS_PK_ECKEY || type == MBEDTLS_PK_ECDSA) {
        const mbedtls_ecp_group_id gid = mbedtls_pk_ec(crt->pk)->grp.id;
        const mbedtls_ecp_curve_info *ci = mbedtls_ecp_curve_info_from_grp_id(gid);
        const char *curve = gid == MBEDTLS_ECP_DP_SECP256R1   ? "P-256"
                            : gid == MBEDTLS_ECP_DP_SECP384R1 ? "P-384"
                            : gid == MBEDTLS_ECP_DP_SECP521R1 ? "P-521"
                            : ci != NULL                      ? ci->name
                                                              : "?";
        snprintf(out->key, sizeof(out->key), "ECDSA %s", curve);
    } else {
        snprintf(out->key, sizeof(out->key), "%s %u", mbedtls_pk_get_name(&crt->pk), out->key_bits);
    }
}

int xr_identity_from_crt(const mbedtls_x509_crt *crt, xr_identity_t *out)
{
    int rc = XR_OK;
    unsigned char digest[32];
    xr_strbuf_t sb;

    memset(out, 0, sizeof(*out));
    if (crt == NULL || crt->raw.p == NULL)
        return XR_ERROR;

    if (xr_identity_format_name(&crt->subject, out->subject, sizeof(out->subject)) != XR_OK)
        rc = XR_ERROR;
    if (xr_identity_format_name(&crt->issuer, out->issuer, sizeof(out->issuer)) != XR_OK)
        rc = XR_ERROR;
    if (xr_identity_format_sans(crt, out->sans, sizeof(out->sans)) != XR_OK)
        rc = XR_ERROR;

    /* The last CN in the certificate's order is the most specific one. */
    const mbedtls_x509_name *cn = NULL;
    for (const mbedtls_x509_name *n = &crt->subject; n != NULL; n = n->next)
        if (n->oid.p != NULL && MBEDTLS_OID_CMP(MBEDTLS_OID_AT_CN, &n->oid) == 0)
            cn = n;
    if (cn != NULL) {
        xr_sb_init(&sb, out->common_name, sizeof(out->common_name));
        xr_sb_dn_value(&sb, &cn->val);
        if (sb.overflow)
            rc = XR_ERROR;
    }

    xr_sb_init(&sb, out->serial, sizeof(out->serial));
    for (size_t i = 0; i < crt->serial.len; i++)
        xr_sb_hexbyte(&sb, crt->serial.p[i], 0);
    if (sb.overflow)
        rc = XR_ERROR;

    xr_identity_key(crt, out);

    xr_identity_pubkey_sha256(crt, digest);
    xr_sb_init(&sb, out->pubkey_sha256, sizeof(out->pubkey_sha256));
    for (size_t i = 0; i < sizeof(digest); i++)
        xr_sb_hexbyte(&sb, digest[i], 0);
    return rc;
}

int xr_identity_match(const xr_identity_t *id, const char *pat)
{
    if (strncmp(pat, "sha256:", 7) == 0) {
        size_t n = strlen(pat + 7);
        return n >= 16 && strncasecmp(pat + 7, id->pubkey_sha256, n) == 0;
    }
    if (fnmatch(pat, id->subject, 0) == 0)
        return 1;
    for (int which = 0; which < 2; which++) {
        char list[XR_IDENTITY_SANS_MAX];
        snprintf(list, sizeof(list), "%s", which == 0 ? id->subject : id->sans);
        char *save = NULL;
        for (char *tok = strtok_r(list, ",", &save); tok; tok = strtok_r(NULL, ",", &save))
            if (fnmatch(pat, tok, 0) == 0)
                return 1;
    }
    return 0;
}
