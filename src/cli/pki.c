/*
 * pki.c: `xray pki init|issue|show` (see pki.h and html-docs/pki.html).
 *
 * mbedTLS does the cryptography and the DER; this file decides what goes
 * into a certificate, and writes files so that a key is never readable by
 * anyone else, not even for a moment, and an existing CA is never lost by
 * a slip of the keyboard.
 */
#include "core/xrayd.h"
#include "cli/pki.h"
#include "common/identity.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <mbedtls/asn1write.h>
#include <mbedtls/ctr_drbg.h>
#include <mbedtls/ecp.h>
#include <mbedtls/entropy.h>
#include <mbedtls/error.h>
#include <mbedtls/oid.h>
#include <mbedtls/pk.h>
#include <mbedtls/platform.h>
#include <mbedtls/platform_util.h>
#include <mbedtls/rsa.h>
#include <mbedtls/x509_crt.h>

/* Exit codes. */
#define XR_PKI_EXIT_OK    0
#define XR_PKI_EXIT_FAIL  1
#define XR_PKI_EXIT_USAGE 2

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

static const char xr_pki_cmd[] = "xray pki"; /* prefix of every message */

static void xr_pki_err(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void xr_pki_err(const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "%s: ", xr_pki_cmd);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

/* mbedTLS's own sentence for an error code, in a static buffer. */
static const char *xr_pki_mbed_err(int ret)
{
    static char buf[160];
    mbedtls_strerror(ret, buf, sizeof(buf));
    return buf;
}

/* ---- randomness ------------------------------------------------------ */

typedef struct {
    mbedtls_entropy_context entropy;
    mbedtls_ctr_drbg_context drbg;
} xr_pki_rng_t;

static int xr_pki_rng_init(xr_pki_rng_t *rng)
{
    static const char pers[] = "xray pki key and serial generator";
    mbedtls_entropy_init(&rng->entropy);
    mbedtls_ctr_drbg_init(&rng->drbg);
    int ret = mbedtls_ctr_drbg_seed(&rng->drbg, mbedtls_entropy_func, &rng->entropy,
                                    (const unsigned char *) pers, sizeof(pers) - 1);
    if (ret != 0) {
        xr_pki_err("cannot seed the random generator: %s", xr_pki_mbed_err(ret));
        return XR_ERROR;
    }
    return XR_OK;
}

static void xr_pki_rng_free(xr_pki_rng_t *rng)
{
    mbedtls_ctr_drbg_free(&rng->drbg);
    mbedtls_entropy_free(&rng->entropy);
}

/* ---- files ----------------------------------------------------------- */

/* dir/name, or name alone when dir is "." so messages stay short. */
static int xr_pki_path(char *buf, size_t size, const char *dir, const char *name)
{
    int n = strcmp(dir, ".") == 0 ? snprintf(buf, size, "%s", name)
                                  : snprintf(buf, size, "%s/%s", dir, name);
    if (n < 0 || (size_t) n >= size) {
        xr_pki_err("path too long: %s/%s", dir, name);
        return XR_ERROR;
    }
    return XR_OK;
}

/* Read a whole file ("-" is standard input) into a NUL-terminated heap
 * buffer; *len excludes the NUL.  The caller frees it (and wipes it first
 * if it held a key). */
static int xr_pki_read(const char *path, unsigned char **data, size_t *len)
{
    int fd = strcmp(path, "-") == 0 ? STDIN_FILENO : open(path, O_RDONLY | O_CLOEXEC);
    unsigned char *buf = NULL;
    size_t n = 0;

    if (fd < 0) {
        xr_pki_err("cannot read %s: %s", path, strerror(errno));
        return XR_ERROR;
    }
    buf = xr_malloc(XR_PKI_MAX_FILE + 1);
    for (;;) {
        ssize_t r = read(fd, buf + n, XR_PKI_MAX_FILE + 1 - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            xr_pki_err("cannot read %s: %s", path, strerror(errno));
            goto fail;
        }
        if (r == 0)
            break;
        n += (size_t) r;
        if (n > XR_PKI_MAX_FILE) {
            xr_pki_err("cannot read %s: larger than %d bytes", path, XR_PKI_MAX_FILE);
            goto fail;
        }
    }
    if (fd != STDIN_FILENO)
        close(fd);
    buf[n] = '\0';
    *data = buf;
    *len = n;
    return XR_OK;

fail:
    if (fd != STDIN_FILENO)
        close(fd);
    free(buf);
    return XR_ERROR;
}

static int xr_pki_exists(const char *path)
{
    struct stat st;
    return lstat(path, &st) == 0;
}

/* Write data to path with exactly this mode, whatever the umask.  Without
 * force the file is created with O_EXCL (an existing one is an error);
 * with force the data goes to a temporary file that replaces path
 * atomically.  Either way the file is born 0600 and only widened by
 * fchmod once it is ours, and a failed write leaves nothing behind. */
static int xr_pki_write(const char *path, const void *data, size_t len, mode_t mode, int force)
{
    char tmp[PATH_MAX];
    const char *target = path;
    const unsigned char *p = data;
    int fd;

    if (force) {
        int n = snprintf(tmp, sizeof(tmp), "%s.XXXXXX", path);
        if (n < 0 || (size_t) n >= sizeof(tmp)) {
            xr_pki_err("cannot create %s: %s", path, strerror(ENAMETOOLONG));
            return XR_ERROR;
        }
        fd = mkostemp(tmp, O_CLOEXEC);
        target = tmp;
    } else {
        fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    }
    if (fd < 0) {
        if (errno == EEXIST)
            xr_pki_err("%s already exists (use --force to replace it)", path);
        else
            xr_pki_err("cannot create %s: %s", path, strerror(errno));
        return XR_ERROR;
    }
    if (fchmod(fd, mode) != 0)
        goto fail;
    while (len > 0) {
        ssize_t w = write(fd, p, len);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0)
            goto fail;
        p += w;
        len -= (size_t) w;
    }
    if (fsync(fd) != 0)
        goto fail;
    if (close(fd) != 0) {
        fd = -1;
        goto fail;
    }
    fd = -1;
    if (force && rename(tmp, path) != 0)
        goto fail;
    return XR_OK;

fail:
    xr_pki_err("cannot write %s: %s", path, strerror(errno));
    if (fd >= 0)
        close(fd);
    unlink(target);
    return XR_ERROR;
}

/* mkdir -p, new directories 0700: they will hold a private key. */
static int xr_pki_mkdirs(const char *dir)
{
    char buf[PATH_MAX];
    size_t n = strlen(dir);

    if (n == 0 || n >= sizeof(buf)) {
        xr_pki_err("bad directory \"%s\"", dir);
        return XR_ERROR;
    }
    memcpy(buf, dir, n + 1);
    for (size_t i = 1; i <= n; i++) {
        if (buf[i] != '/' && buf[i] != '\0')
            continue;
        char c = buf[i];
        buf[i] = '\0';
        if (mkdir(buf, 0700) != 0 && errno != EEXIST) {
            xr_pki_err("cannot create directory %s: %s", buf, strerror(errno));
            return XR_ERROR;
        }
        buf[i] = c;
    }
    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
        xr_pki_err("%s is not a directory", dir);
        return XR_ERROR;
    }
    return XR_OK;
}

/* ---- time ------------------------------------------------------------ */

/* "YYYY-MM-DD", "YYYY-MM-DDThh:mm:ss" (with an optional Z) or
 * "YYYYMMDDhhmmss", all UTC. */
static int xr_pki_parse_time(const char *s, time_t *out)
{
    static const char *formats[] = {"%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y%m%d%H%M%S",
                                    "%Y-%m-%d"};
    for (size_t i = 0; i < XR_ARRAY_SIZE(formats); i++) {
        struct tm tm;
        memset(&tm, 0, sizeof(tm));
        const char *end = strptime(s, formats[i], &tm);
        if (end == NULL || (end[0] != '\0' && strcmp(end, "Z") != 0))
            continue;
        if (tm.tm_year + 1900 < 1950 || tm.tm_year + 1900 > 9999)
            return XR_ERROR;
        *out = timegm(&tm);
        return XR_OK;
    }
    return XR_ERROR;
}

/* The form mbedtls_x509write_crt_set_validity() takes. */
static void xr_pki_time_mbed(time_t t, char buf[16])
{
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(buf, 16, "%Y%m%d%H%M%S", &tm);
}

static void xr_pki_time_text(time_t t, char *buf, size_t size)
{
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(buf, size, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

static time_t xr_pki_x509_time(const mbedtls_x509_time *xt)
{
    struct tm tm;
    memset(&tm, 0, sizeof(tm));
    tm.tm_year = xt->year - 1900;
    tm.tm_mon = xt->mon - 1;
    tm.tm_mday = xt->day;
    tm.tm_hour = xt->hour;
    tm.tm_min = xt->min;
    tm.tm_sec = xt->sec;
    return timegm(&tm);
}

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
        xr_pki_err("out of memory");
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

static int xr_pki_name_cn(mbedtls_asn1_named_data **head, const char *cn)
{
    mbedtls_asn1_buf oid = {MBEDTLS_ASN1_OID, MBEDTLS_OID_SIZE(MBEDTLS_OID_AT_CN),
                            (unsigned char *) MBEDTLS_OID_AT_CN};
    return xr_pki_name_prepend(head, &oid, MBEDTLS_ASN1_UTF8_STRING, (const unsigned char *) cn,
                               strlen(cn));
}

/* Copy a parsed name (certificate order) into a write list. */
static int xr_pki_name_copy(mbedtls_asn1_named_data **head, const mbedtls_x509_name *name)
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
static int xr_pki_check_cn(const char *what, const char *cn)
{
    size_t n = strlen(cn);
    if (n == 0 || n > XR_PKI_CN_MAX) {
        xr_pki_err("%s must be 1 to %d bytes long", what, XR_PKI_CN_MAX);
        return XR_ERROR;
    }
    for (size_t i = 0; i < n; i++)
        if ((unsigned char) cn[i] < 0x20 || cn[i] == 0x7f) {
            xr_pki_err("%s contains a control character", what);
            return XR_ERROR;
        }
    return XR_OK;
}

/* ---- subject alternative names --------------------------------------- */

typedef struct {
    int tag; /* GeneralName tag number: 1 email, 2 DNS, 6 URI, 7 IP */
    size_t len;
    unsigned char data[256];
} xr_pki_san_t;

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
            xr_pki_err(__VA_ARGS__);                                                               \
    } while (0)

/* One SAN: DNS:name, IP:addr, URI:uri, email:addr, or a bare value (an IP
 * address if it parses as one, else a DNS name). */
static int xr_pki_parse_san(const char *s, xr_pki_san_t *san, int quiet)
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

/* ---- keys ------------------------------------------------------------ */

static void xr_pki_key_desc(const mbedtls_pk_context *pk, char *buf, size_t size)
{
    if (mbedtls_pk_get_type(pk) == MBEDTLS_PK_RSA)
        snprintf(buf, size, "RSA %u", (unsigned) mbedtls_pk_get_bitlen(pk));
    else
        snprintf(buf, size, "ECDSA P-256");
}

/* A fresh key: ECDSA P-256, or RSA with rsa_bits bits when that is not 0. */
static int xr_pki_gen_key(mbedtls_pk_context *pk, unsigned rsa_bits, xr_pki_rng_t *rng)
{
    int ret;
    if (rsa_bits != 0) {
        ret = mbedtls_pk_setup(pk, mbedtls_pk_info_from_type(MBEDTLS_PK_RSA));
        if (ret == 0)
            ret = mbedtls_rsa_gen_key(mbedtls_pk_rsa(*pk), mbedtls_ctr_drbg_random, &rng->drbg,
                                      rsa_bits, 65537);
    } else {
        ret = mbedtls_pk_setup(pk, mbedtls_pk_info_from_type(MBEDTLS_PK_ECKEY));
        if (ret == 0)
            ret = mbedtls_ecp_gen_key(MBEDTLS_ECP_DP_SECP256R1, mbedtls_pk_ec(*pk),
                                      mbedtls_ctr_drbg_random, &rng->drbg);
    }
    if (ret != 0) {
        xr_pki_err("cannot generate a key: %s", xr_pki_mbed_err(ret));
        return XR_ERROR;
    }
    return XR_OK;
}

/* The key in PEM (SEC 1 for EC, PKCS#1 for RSA), as OpenSSL and mbedTLS
 * both read it.  buf must hold XR_PKI_PEM_MAX bytes; the caller wipes it. */
static int xr_pki_key_pem(mbedtls_pk_context *pk, unsigned char *buf, size_t *len)
{
    int ret = mbedtls_pk_write_key_pem(pk, buf, XR_PKI_PEM_MAX);
    if (ret != 0) {
        xr_pki_err("cannot encode the key: %s", xr_pki_mbed_err(ret));
        return XR_ERROR;
    }
    *len = strlen((char *) buf);
    return XR_OK;
}

static int xr_pki_load_key(const char *path, mbedtls_pk_context *pk)
{
    unsigned char *data;
    size_t len;
    struct stat st;

    if (xr_pki_read(path, &data, &len) != XR_OK)
        return XR_ERROR;
    if (stat(path, &st) == 0 && (st.st_mode & 077) != 0)
        fprintf(stderr, "%s: warning: %s is readable by others (mode %04o); chmod 600 it\n",
                xr_pki_cmd, path, (unsigned) (st.st_mode & 07777));
    /* A PEM buffer is parsed with its NUL, DER without. */
    size_t parse_len = strstr((char *) data, "-----BEGIN") != NULL ? len + 1 : len;
    int ret = mbedtls_pk_parse_key(pk, data, parse_len, NULL, 0);
    mbedtls_platform_zeroize(data, len);
    free(data);
    if (ret == MBEDTLS_ERR_PK_PASSWORD_REQUIRED) {
        xr_pki_err("cannot use %s: the key is encrypted (only unencrypted keys are supported)",
                   path);
        return XR_ERROR;
    }
    if (ret != 0) {
        xr_pki_err("cannot parse %s: %s", path, xr_pki_mbed_err(ret));
        return XR_ERROR;
    }
    return XR_OK;
}

/* Every certificate in path (PEM, possibly several, or one DER).  *raw
 * receives the file's bytes when not NULL (caller frees). */
static int xr_pki_load_crt(const char *path, mbedtls_x509_crt *crt, unsigned char **raw,
                           size_t *raw_len)
{
    unsigned char *data;
    size_t len;
    int ret;

    if (xr_pki_read(path, &data, &len) != XR_OK)
        return XR_ERROR;
    int pem = strstr((char *) data, "-----BEGIN") != NULL;
    if ((pem && strstr((char *) data, "-----BEGIN CERTIFICATE-----") == NULL) ||
        (!pem && (len == 0 || data[0] != (MBEDTLS_ASN1_CONSTRUCTED | MBEDTLS_ASN1_SEQUENCE)))) {
        /* A key, a CSR, or no PEM or DER at all: say so, not "invalid format". */
        xr_pki_err("no certificate in %s", path);
        free(data);
        return XR_ERROR;
    }
    if (pem)
        ret = mbedtls_x509_crt_parse(crt, data, len + 1);
    else
        ret = mbedtls_x509_crt_parse_der(crt, data, len);
    if (ret < 0 || crt->raw.p == NULL) {
        if (ret >= 0)
            xr_pki_err("no certificate in %s", path);
        else
            xr_pki_err("cannot parse %s: %s", path, xr_pki_mbed_err(ret));
        free(data);
        return XR_ERROR;
    }
    if (ret > 0)
        fprintf(stderr, "%s: warning: %d certificate(s) in %s could not be parsed\n", xr_pki_cmd,
                ret, path);
    if (raw != NULL) {
        *raw = data;
        *raw_len = len;
    } else {
        free(data);
    }
    return XR_OK;
}

/* ---- certificates ---------------------------------------------------- */

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
static int xr_pki_make_cert(xr_pki_cert_t *c, xr_pki_rng_t *rng, unsigned char *pem)
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

    xr_pki_time_mbed(c->not_before, nb);
    xr_pki_time_mbed(c->not_after, na);
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
    xr_pki_err("cannot make the certificate (%s): %s", step, xr_pki_mbed_err(ret));
    mbedtls_x509write_crt_free(&w);
    return XR_ERROR;
}

/* Parse what we just made and verify it against ca (itself for a root):
 * a certificate that would not verify is never written.  A certificate
 * made to be expired or not yet valid (--not-before, --not-after) must
 * still chain, so those two flags are forgiven. */
static int xr_pki_self_check(const unsigned char *pem, mbedtls_x509_crt *ca)
{
    const uint32_t forgiven = MBEDTLS_X509_BADCERT_EXPIRED | MBEDTLS_X509_BADCERT_FUTURE;
    mbedtls_x509_crt crt;
    uint32_t flags = 0;
    char why[512];
    int ret;

    mbedtls_x509_crt_init(&crt);
    ret = mbedtls_x509_crt_parse(&crt, pem, strlen((const char *) pem) + 1);
    if (ret != 0) {
        xr_pki_err("the new certificate does not parse: %s", xr_pki_mbed_err(ret));
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
        xr_pki_err("the new certificate does not verify against its CA: %s",
                   why[0] ? why : xr_pki_mbed_err(ret));
    }
out:
    mbedtls_x509_crt_free(&crt);
    return ret == 0 ? XR_OK : XR_ERROR;
}

/* ---- option parsing -------------------------------------------------- */

static int xr_pki_number(const char *opt, const char *s, long min, long max, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v < min || v > max) {
        xr_pki_err("%s wants a number from %ld to %ld, not \"%s\"", opt, min, max, s);
        return XR_ERROR;
    }
    *out = v;
    return XR_OK;
}

static int xr_pki_rsa_bits(const char *s, unsigned *bits)
{
    if (strcmp(s, "2048") == 0 || strcmp(s, "3072") == 0 || strcmp(s, "4096") == 0) {
        *bits = (unsigned) atoi(s);
        return XR_OK;
    }
    xr_pki_err("--rsa wants 2048, 3072 or 4096 bits, not \"%s\"", s);
    return XR_ERROR;
}

static const char *xr_pki_default_dir(void)
{
    const char *d = getenv("XRAY_PKI_DIR");
    return d != NULL && d[0] != '\0' ? d : ".";
}

/* getopt_long's complaint, in our words.  Returns XR_PKI_EXIT_USAGE. */
static int xr_pki_bad_option(int c, char **argv, const char *sub)
{
    const char *arg = argv[optind - 1];
    if (c == ':')
        xr_pki_err("option %s needs a value", arg);
    else if (optopt != 0)
        xr_pki_err("unknown option -%c", optopt);
    else
        xr_pki_err("unknown option %s", arg);
    fprintf(stderr, "Try 'xray pki %s --help'.\n", sub);
    return XR_PKI_EXIT_USAGE;
}

static int xr_pki_usage_error(const char *sub, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static int xr_pki_usage_error(const char *sub, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "%s: ", xr_pki_cmd);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\nTry 'xray pki %s --help'.\n", sub);
    return XR_PKI_EXIT_USAGE;
}

/* ---- xray pki init --------------------------------------------------- */

static void xr_pki_init_usage(FILE *out)
{
    fprintf(out,
            "usage: xray pki init [--dir DIR] [--name NAME] [--days N] [--rsa BITS] [--force]\n"
            "\n"
            "Create a certificate authority: DIR/ca.key, its private key (mode 0600), and\n"
            "DIR/ca.crt, its certificate (mode 0644), which every agent and application\n"
            "trusts.  Keep ca.key offline when you can.\n"
            "\n"
            "  --dir DIR     where the CA lives (default: $XRAY_PKI_DIR, else the current\n"
            "                directory); created with mode 0700 if missing\n"
            "  --name NAME   the CA's common name (default \"%s\")\n"
            "  --days N      validity in days (default %d)\n"
            "  --rsa BITS    an RSA key of 2048, 3072 or 4096 bits instead of ECDSA P-256\n"
            "  --force       replace an existing CA: every certificate it issued stops\n"
            "                verifying\n",
            XR_PKI_DEFAULT_CA_NAME, XR_PKI_CA_DAYS);
}

static int xr_pki_init(int argc, char **argv)
{
    static const struct option opts[] = {{"dir", required_argument, NULL, 'd'},
                                         {"name", required_argument, NULL, 'n'},
                                         {"days", required_argument, NULL, 'D'},
                                         {"rsa", required_argument, NULL, 'r'},
                                         {"force", no_argument, NULL, 'f'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    const char *dir = xr_pki_default_dir(), *name = XR_PKI_DEFAULT_CA_NAME;
    long days = XR_PKI_CA_DAYS;
    unsigned rsa_bits = 0;
    int force = 0, c, rc = XR_PKI_EXIT_FAIL;
    char key_path[PATH_MAX], crt_path[PATH_MAX], desc[32], until[32];
    unsigned char *pem = NULL, *key_pem = NULL;
    size_t key_len = 0;
    mbedtls_pk_context key;
    mbedtls_x509_crt crt;
    xr_pki_rng_t rng;
    xr_pki_cert_t cert;

    optind = 0;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
        switch (c) {
        case 'd': dir = optarg; break;
        case 'n': name = optarg; break;
        case 'D':
            if (xr_pki_number("--days", optarg, 1, XR_PKI_MAX_DAYS, &days) != XR_OK)
                return XR_PKI_EXIT_USAGE;
            break;
        case 'r':
            if (xr_pki_rsa_bits(optarg, &rsa_bits) != XR_OK)
                return XR_PKI_EXIT_USAGE;
            break;
        case 'f': force = 1; break;
        case 'h': xr_pki_init_usage(stdout); return XR_PKI_EXIT_OK;
        default: return xr_pki_bad_option(c, argv, "init");
        }
    }
    if (optind < argc)
        return xr_pki_usage_error("init", "unexpected argument \"%s\"", argv[optind]);
    if (xr_pki_check_cn("--name", name) != XR_OK)
        return XR_PKI_EXIT_USAGE;

    if (xr_pki_path(key_path, sizeof(key_path), dir, "ca.key") != XR_OK ||
        xr_pki_path(crt_path, sizeof(crt_path), dir, "ca.crt") != XR_OK)
        return XR_PKI_EXIT_FAIL;
    /* Refuse before the (possibly slow) key generation, not after. */
    if (!force && (xr_pki_exists(key_path) || xr_pki_exists(crt_path))) {
        xr_pki_err("a CA already exists in %s (use --force to replace it and invalidate "
                   "every certificate it issued)",
                   dir);
        return XR_PKI_EXIT_FAIL;
    }
    if (xr_pki_mkdirs(dir) != XR_OK)
        return XR_PKI_EXIT_FAIL;

    mbedtls_pk_init(&key);
    mbedtls_x509_crt_init(&crt);
    memset(&cert, 0, sizeof(cert));
    if (xr_pki_rng_init(&rng) != XR_OK)
        goto out;
    if (xr_pki_gen_key(&key, rsa_bits, &rng) != XR_OK)
        goto out;

    time_t now = time(NULL);
    cert.subject_key = cert.issuer_key = &key;
    cert.not_before = now - XR_PKI_BACKDATE;
    cert.not_after = now + (time_t) days * 86400;
    cert.is_ca = 1;
    cert.key_usage = MBEDTLS_X509_KU_KEY_CERT_SIGN | MBEDTLS_X509_KU_CRL_SIGN;
    if (xr_pki_name_cn(&cert.subject, name) != XR_OK || xr_pki_name_cn(&cert.issuer, name) != XR_OK)
        goto out;
    pem = xr_malloc(XR_PKI_PEM_MAX);
    key_pem = xr_malloc(XR_PKI_PEM_MAX);
    if (xr_pki_make_cert(&cert, &rng, pem) != XR_OK || xr_pki_self_check(pem, NULL) != XR_OK)
        goto out;
    if (xr_pki_key_pem(&key, key_pem, &key_len) != XR_OK)
        goto out;

    /* The key first: a CA certificate without its key would be useless. */
    if (xr_pki_write(key_path, key_pem, key_len, 0600, force) != XR_OK)
        goto out;
    if (xr_pki_write(crt_path, pem, strlen((char *) pem), 0644, force) != XR_OK) {
        if (!force)
            unlink(key_path);
        goto out;
    }

    xr_pki_key_desc(&key, desc, sizeof(desc));
    xr_pki_time_text(cert.not_after, until, sizeof(until));
    if (mbedtls_x509_crt_parse(&crt, pem, strlen((char *) pem) + 1) == 0) {
        xr_identity_t id;
        xr_identity_from_crt(&crt, &id);
        printf("created CA \"%s\" (%s), valid until %s\n", id.subject, desc, until);
        printf("  certificate: %s\n  private key: %s (keep it secret)\n", crt_path, key_path);
        printf("  sha256 pubkey: %s\n", id.pubkey_sha256);
    }
    rc = XR_PKI_EXIT_OK;

out:
    mbedtls_asn1_free_named_data_list(&cert.subject);
    mbedtls_asn1_free_named_data_list(&cert.issuer);
    if (key_pem != NULL)
        mbedtls_platform_zeroize(key_pem, XR_PKI_PEM_MAX);
    free(key_pem);
    free(pem);
    mbedtls_x509_crt_free(&crt);
    mbedtls_pk_free(&key);
    xr_pki_rng_free(&rng);
    return rc;
}

/* ---- xray pki issue -------------------------------------------------- */

static void xr_pki_issue_usage(FILE *out)
{
    fprintf(out,
            "usage: xray pki issue NAME [--dir DIR] [--san SAN]... [--days N] [--rsa BITS]\n"
            "                      [--server | --client | --both] [--out PREFIX] [--chain]\n"
            "                      [--force]\n"
            "\n"
            "Issue a certificate with subject CN=NAME, signed by the CA in DIR (ca.crt and\n"
            "ca.key): PREFIX.crt (mode 0644) and PREFIX.key (mode 0600).\n"
            "\n"
            "  --dir DIR       the CA's directory (default: $XRAY_PKI_DIR, else .)\n"
            "  --san SAN       a subjectAltName: DNS:host, IP:address, URI:uri or\n"
            "                  email:address; a bare value is an IP address if it parses\n"
            "                  as one, else a DNS name.  Repeat it, or separate with commas.\n"
            "                  Default: NAME itself, when it is a host name or an address\n"
            "  --server        extendedKeyUsage serverAuth only (an agent's listening side)\n"
            "  --client        extendedKeyUsage clientAuth only (an application)\n"
            "  --both          serverAuth and clientAuth (the default)\n"
            "  --days N        validity in days from now (default %d), never past the\n"
            "                  CA's own expiry\n"
            "  --not-before T, --not-after T\n"
            "                  exact validity instead; T is YYYY-MM-DD[Thh:mm:ss][Z], UTC\n"
            "  --rsa BITS      an RSA key of 2048, 3072 or 4096 bits instead of ECDSA P-256\n"
            "  --out PREFIX    where to write (default DIR/NAME)\n"
            "  --chain         also write PREFIX-chain.crt: the certificate, then the CA's\n"
            "  --force         replace existing output files\n",
            XR_PKI_LEAF_DAYS);
}

/* Split a --san value on commas into sans[]. */
static int xr_pki_add_sans(const char *arg, xr_pki_san_t *sans, size_t *nsans)
{
    char buf[1024];
    if (strlen(arg) >= sizeof(buf)) {
        xr_pki_err("--san value too long");
        return XR_ERROR;
    }
    strcpy(buf, arg);
    for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok != NULL;
         tok = strtok_r(NULL, ",", &save)) {
        if (*nsans == XR_PKI_MAX_SANS) {
            xr_pki_err("at most %d subjectAltNames", XR_PKI_MAX_SANS);
            return XR_ERROR;
        }
        if (xr_pki_parse_san(tok, &sans[*nsans], 0) != XR_OK)
            return XR_ERROR;
        ++*nsans;
    }
    return XR_OK;
}

static int xr_pki_issue(int argc, char **argv)
{
    enum { O_SERVER = 256, O_CLIENT, O_BOTH, O_NB, O_NA, O_CHAIN };
    static const struct option opts[] = {{"dir", required_argument, NULL, 'd'},
                                         {"san", required_argument, NULL, 's'},
                                         {"days", required_argument, NULL, 'D'},
                                         {"rsa", required_argument, NULL, 'r'},
                                         {"out", required_argument, NULL, 'o'},
                                         {"force", no_argument, NULL, 'f'},
                                         {"server", no_argument, NULL, O_SERVER},
                                         {"client", no_argument, NULL, O_CLIENT},
                                         {"both", no_argument, NULL, O_BOTH},
                                         {"not-before", required_argument, NULL, O_NB},
                                         {"not-after", required_argument, NULL, O_NA},
                                         {"chain", no_argument, NULL, O_CHAIN},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    const char *dir = xr_pki_default_dir(), *out = NULL, *name;
    long days = -1;
    unsigned rsa_bits = 0, eku = 0;
    int force = 0, chain = 0, c, rc = XR_PKI_EXIT_FAIL;
    time_t not_before = 0, not_after = 0, now = time(NULL);
    int have_nb = 0, have_na = 0;
    static xr_pki_san_t sans[XR_PKI_MAX_SANS];
    size_t nsans = 0;

    optind = 0;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
        switch (c) {
        case 'd': dir = optarg; break;
        case 's':
            if (xr_pki_add_sans(optarg, sans, &nsans) != XR_OK)
                return XR_PKI_EXIT_USAGE;
            break;
        case 'D':
            if (xr_pki_number("--days", optarg, 1, XR_PKI_MAX_DAYS, &days) != XR_OK)
                return XR_PKI_EXIT_USAGE;
            break;
        case 'r':
            if (xr_pki_rsa_bits(optarg, &rsa_bits) != XR_OK)
                return XR_PKI_EXIT_USAGE;
            break;
        case 'o': out = optarg; break;
        case 'f': force = 1; break;
        case O_SERVER: eku |= XR_PKI_EKU_SERVER; break;
        case O_CLIENT: eku |= XR_PKI_EKU_CLIENT; break;
        case O_BOTH: eku |= XR_PKI_EKU_SERVER | XR_PKI_EKU_CLIENT; break;
        case O_CHAIN: chain = 1; break;
        case O_NB:
        case O_NA:
            if (xr_pki_parse_time(optarg, c == O_NB ? &not_before : &not_after) != XR_OK)
                return xr_pki_usage_error("issue",
                                          "--%s wants YYYY-MM-DD[Thh:mm:ss][Z], not \"%s\"",
                                          c == O_NB ? "not-before" : "not-after", optarg);
            *(c == O_NB ? &have_nb : &have_na) = 1;
            break;
        case 'h': xr_pki_issue_usage(stdout); return XR_PKI_EXIT_OK;
        default: return xr_pki_bad_option(c, argv, "issue");
        }
    }
    if (optind >= argc)
        return xr_pki_usage_error("issue", "issue needs a NAME (the certificate's common name)");
    if (optind + 1 < argc)
        return xr_pki_usage_error("issue", "unexpected argument \"%s\"", argv[optind + 1]);
    name = argv[optind];
    if (xr_pki_check_cn("NAME", name) != XR_OK)
        return XR_PKI_EXIT_USAGE;
    if (eku == 0)
        eku = XR_PKI_EKU_SERVER | XR_PKI_EKU_CLIENT;
    if (days >= 0 && have_na)
        return xr_pki_usage_error("issue", "give --days or --not-after, not both");
    if (!have_nb)
        not_before = now - XR_PKI_BACKDATE;
    if (!have_na)
        not_after = now + (time_t) (days >= 0 ? days : XR_PKI_LEAF_DAYS) * 86400;
    if (not_after <= not_before)
        return xr_pki_usage_error("issue", "the certificate would expire before it is valid "
                                           "(check --not-before and --not-after)");
    /* By default the name is also the SAN, when it can be one: TLS clients
     * check SANs, not the CN. */
    if (nsans == 0 && xr_pki_parse_san(name, &sans[0], 1) == XR_OK)
        nsans = 1;
    else if (nsans == 0)
        fprintf(stderr,
                "%s: note: \"%s\" is not a host name or address, so the certificate "
                "has no subjectAltName (add --san to give it one)\n",
                xr_pki_cmd, name);

    char prefix[PATH_MAX], key_path[PATH_MAX], crt_path[PATH_MAX], chain_path[PATH_MAX];
    char ca_key_path[PATH_MAX], ca_crt_path[PATH_MAX];
    if (out == NULL) {
        if (strchr(name, '/') != NULL || name[0] == '.' || name[0] == '-')
            return xr_pki_usage_error("issue", "\"%s\" cannot be a file name: give --out PREFIX",
                                      name);
        if (xr_pki_path(prefix, sizeof(prefix), dir, name) != XR_OK)
            return XR_PKI_EXIT_FAIL;
        out = prefix;
    }
    if (snprintf(key_path, sizeof(key_path), "%s.key", out) >= (int) sizeof(key_path) ||
        snprintf(crt_path, sizeof(crt_path), "%s.crt", out) >= (int) sizeof(crt_path) ||
        snprintf(chain_path, sizeof(chain_path), "%s-chain.crt", out) >= (int) sizeof(chain_path) ||
        xr_pki_path(ca_key_path, sizeof(ca_key_path), dir, "ca.key") != XR_OK ||
        xr_pki_path(ca_crt_path, sizeof(ca_crt_path), dir, "ca.crt") != XR_OK) {
        xr_pki_err("path too long: %s", out);
        return XR_PKI_EXIT_FAIL;
    }
    if (!force) {
        const char *outs[] = {key_path, crt_path, chain ? chain_path : NULL};
        for (size_t i = 0; i < XR_ARRAY_SIZE(outs); i++)
            if (outs[i] != NULL && xr_pki_exists(outs[i])) {
                xr_pki_err("%s already exists (use --force to replace it)", outs[i]);
                return XR_PKI_EXIT_FAIL;
            }
    }

    mbedtls_pk_context key, ca_key;
    mbedtls_x509_crt ca, crt;
    xr_pki_rng_t rng;
    xr_pki_cert_t cert;
    unsigned char *pem = NULL, *key_pem = NULL, *ca_raw = NULL;
    size_t key_len = 0, ca_len = 0;
    int wrote_key = 0, wrote_crt = 0;

    mbedtls_pk_init(&key);
    mbedtls_pk_init(&ca_key);
    mbedtls_x509_crt_init(&ca);
    mbedtls_x509_crt_init(&crt);
    memset(&cert, 0, sizeof(cert));
    if (xr_pki_rng_init(&rng) != XR_OK)
        goto out;

    if (xr_pki_load_crt(ca_crt_path, &ca, &ca_raw, &ca_len) != XR_OK ||
        xr_pki_load_key(ca_key_path, &ca_key) != XR_OK)
        goto out;
    if (!ca.ca_istrue || ((ca.ext_types & MBEDTLS_X509_EXT_KEY_USAGE) &&
                          !(ca.key_usage & MBEDTLS_X509_KU_KEY_CERT_SIGN))) {
        xr_pki_err("%s is not a CA certificate", ca_crt_path);
        goto out;
    }
    if (mbedtls_pk_check_pair(&ca.pk, &ca_key) != 0) {
        xr_pki_err("%s does not belong to %s", ca_key_path, ca_crt_path);
        goto out;
    }
    time_t ca_until = xr_pki_x509_time(&ca.valid_to);
    char when[32];
    xr_pki_time_text(ca_until, when, sizeof(when));
    if (ca_until <= now) {
        xr_pki_err("the CA in %s expired at %s", ca_crt_path, when);
        goto out;
    }
    if (not_after > ca_until) {
        not_after = ca_until;
        fprintf(stderr, "%s: note: validity cut to the CA's own expiry, %s\n", xr_pki_cmd, when);
    }

    if (xr_pki_gen_key(&key, rsa_bits, &rng) != XR_OK)
        goto out;
    cert.subject_key = &key;
    cert.issuer_key = &ca_key;
    cert.not_before = not_before;
    cert.not_after = not_after;
    cert.is_ca = 0;
    /* keyEncipherment is how an RSA key does TLS 1.2 RSA key exchange;
     * an EC key only signs (ECDHE_ECDSA). */
    cert.key_usage =
        MBEDTLS_X509_KU_DIGITAL_SIGNATURE | (rsa_bits != 0 ? MBEDTLS_X509_KU_KEY_ENCIPHERMENT : 0);
    cert.eku = eku;
    cert.sans = sans;
    cert.nsans = nsans;
    if (xr_pki_name_cn(&cert.subject, name) != XR_OK ||
        xr_pki_name_copy(&cert.issuer, &ca.subject) != XR_OK)
        goto out;

    pem = xr_malloc(XR_PKI_PEM_MAX);
    key_pem = xr_malloc(XR_PKI_PEM_MAX);
    if (xr_pki_make_cert(&cert, &rng, pem) != XR_OK)
        goto out;
    if (xr_pki_self_check(pem, &ca) != XR_OK)
        goto out;
    if (xr_pki_key_pem(&key, key_pem, &key_len) != XR_OK)
        goto out;

    size_t pem_len = strlen((char *) pem);
    if (xr_pki_write(key_path, key_pem, key_len, 0600, force) != XR_OK)
        goto out;
    wrote_key = 1;
    if (xr_pki_write(crt_path, pem, pem_len, 0644, force) != XR_OK)
        goto out;
    wrote_crt = 1;
    if (chain) {
        unsigned char *both = xr_malloc(pem_len + ca_len + 1);
        memcpy(both, pem, pem_len);
        memcpy(both + pem_len, ca_raw, ca_len);
        int ok = xr_pki_write(chain_path, both, pem_len + ca_len, 0644, force);
        free(both);
        if (ok != XR_OK)
            goto out;
    }

    if (mbedtls_x509_crt_parse(&crt, pem, pem_len + 1) == 0) {
        xr_identity_t id;
        char desc[32], until[32];
        xr_identity_from_crt(&crt, &id);
        xr_pki_key_desc(&key, desc, sizeof(desc));
        xr_pki_time_text(not_after, until, sizeof(until));
        printf("issued \"%s\" (%s, %s%s%s), valid until %s\n", id.subject, desc,
               eku & XR_PKI_EKU_SERVER ? "server" : "",
               eku == (XR_PKI_EKU_SERVER | XR_PKI_EKU_CLIENT) ? "+" : "",
               eku & XR_PKI_EKU_CLIENT ? "client" : "", until);
        printf("  certificate: %s\n  private key: %s\n", crt_path, key_path);
        if (chain)
            printf("  chain: %s\n", chain_path);
        printf("  sans: %s\n  sha256 pubkey: %s\n", id.sans[0] ? id.sans : "(none)",
               id.pubkey_sha256);
    }
    rc = XR_PKI_EXIT_OK;

out:
    /* All or nothing: do not leave a key without its certificate. */
    if (rc != XR_PKI_EXIT_OK && !force) {
        if (wrote_key)
            unlink(key_path);
        if (wrote_crt)
            unlink(crt_path);
    }
    mbedtls_asn1_free_named_data_list(&cert.subject);
    mbedtls_asn1_free_named_data_list(&cert.issuer);
    if (key_pem != NULL)
        mbedtls_platform_zeroize(key_pem, XR_PKI_PEM_MAX);
    free(key_pem);
    free(pem);
    free(ca_raw);
    mbedtls_x509_crt_free(&crt);
    mbedtls_x509_crt_free(&ca);
    mbedtls_pk_free(&key);
    mbedtls_pk_free(&ca_key);
    xr_pki_rng_free(&rng);
    return rc;
}

/* ---- xray pki show --------------------------------------------------- */

static void xr_pki_show_usage(FILE *out)
{
    fprintf(out,
            "usage: xray pki show FILE [--ca CAFILE] [--all]\n"
            "\n"
            "Print the identity of the first certificate in FILE (PEM or DER; - reads\n"
            "standard input) exactly as xrayd logs and matches it: subject and issuer\n"
            "(RFC 4514), subjectAltNames, and the SHA-256 of the public key, with the\n"
            "serial, validity, key, and key usages.\n"
            "\n"
            "  --ca CAFILE   also verify the certificate (with any others in FILE as\n"
            "                intermediates) against the CA certificates in CAFILE, as xrayd\n"
            "                does; print \"verify: ok\" or the reason, and exit 1 if it fails\n"
            "  --all         print every certificate in FILE, not only the first\n");
}

static void xr_pki_show_key_usage(const mbedtls_x509_crt *crt)
{
    static const struct {
        unsigned bit;
        const char *name;
    } ku[] = {{MBEDTLS_X509_KU_DIGITAL_SIGNATURE, "digitalSignature"},
              {MBEDTLS_X509_KU_NON_REPUDIATION, "nonRepudiation"},
              {MBEDTLS_X509_KU_KEY_ENCIPHERMENT, "keyEncipherment"},
              {MBEDTLS_X509_KU_DATA_ENCIPHERMENT, "dataEncipherment"},
              {MBEDTLS_X509_KU_KEY_AGREEMENT, "keyAgreement"},
              {MBEDTLS_X509_KU_KEY_CERT_SIGN, "keyCertSign"},
              {MBEDTLS_X509_KU_CRL_SIGN, "cRLSign"},
              {MBEDTLS_X509_KU_ENCIPHER_ONLY, "encipherOnly"},
              {MBEDTLS_X509_KU_DECIPHER_ONLY, "decipherOnly"}};
    static const struct {
        const char *oid;
        size_t len;
        const char *name;
    } eku[] = {
        {MBEDTLS_OID_SERVER_AUTH, MBEDTLS_OID_SIZE(MBEDTLS_OID_SERVER_AUTH), "serverAuth"},
        {MBEDTLS_OID_CLIENT_AUTH, MBEDTLS_OID_SIZE(MBEDTLS_OID_CLIENT_AUTH), "clientAuth"},
        {MBEDTLS_OID_CODE_SIGNING, MBEDTLS_OID_SIZE(MBEDTLS_OID_CODE_SIGNING), "codeSigning"},
        {MBEDTLS_OID_EMAIL_PROTECTION, MBEDTLS_OID_SIZE(MBEDTLS_OID_EMAIL_PROTECTION),
         "emailProtection"},
        {MBEDTLS_OID_TIME_STAMPING, MBEDTLS_OID_SIZE(MBEDTLS_OID_TIME_STAMPING), "timeStamping"},
        {MBEDTLS_OID_OCSP_SIGNING, MBEDTLS_OID_SIZE(MBEDTLS_OID_OCSP_SIGNING), "OCSPSigning"},
        {MBEDTLS_OID_ANY_EXTENDED_KEY_USAGE, MBEDTLS_OID_SIZE(MBEDTLS_OID_ANY_EXTENDED_KEY_USAGE),
         "anyExtendedKeyUsage"}};
    const char *sep = "";

    printf("key usage: ");
    if (!(crt->ext_types & MBEDTLS_X509_EXT_KEY_USAGE))
        printf("(any)");
    for (size_t i = 0; i < XR_ARRAY_SIZE(ku) && (crt->ext_types & MBEDTLS_X509_EXT_KEY_USAGE); i++)
        if (crt->key_usage & ku[i].bit) {
            printf("%s%s", sep, ku[i].name);
            sep = ", ";
        }
    printf("\nextended key usage: ");
    if (!(crt->ext_types & MBEDTLS_X509_EXT_EXTENDED_KEY_USAGE))
        printf("(any)");
    sep = "";
    for (const mbedtls_x509_sequence *s = &crt->ext_key_usage;
         s != NULL && (crt->ext_types & MBEDTLS_X509_EXT_EXTENDED_KEY_USAGE); s = s->next) {
        const char *n = NULL;
        char dotted[64];
        for (size_t i = 0; i < XR_ARRAY_SIZE(eku); i++)
            if (s->buf.len == eku[i].len && memcmp(s->buf.p, eku[i].oid, eku[i].len) == 0)
                n = eku[i].name;
        if (n == NULL && mbedtls_oid_get_numeric_string(dotted, sizeof(dotted), &s->buf) > 0)
            n = dotted;
        printf("%s%s", sep, n != NULL ? n : "?");
        sep = ", ";
    }
    printf("\n");
}

static void xr_pki_show_one(const mbedtls_x509_crt *crt)
{
    xr_identity_t id;
    char nb[32], na[32];
    time_t now = time(NULL);
    time_t t_nb = xr_pki_x509_time(&crt->valid_from), t_na = xr_pki_x509_time(&crt->valid_to);
    const char *sig = NULL;

    if (xr_identity_from_crt(crt, &id) != XR_OK)
        fprintf(stderr,
                "%s: warning: a field was too long or malformed; xrayd will not match "
                "this certificate\n",
                xr_pki_cmd);
    xr_pki_time_text(t_nb, nb, sizeof(nb));
    xr_pki_time_text(t_na, na, sizeof(na));
    printf("subject: %s\n", id.subject);
    printf("issuer: %s\n", id.issuer);
    printf("sans: %s\n", id.sans[0] ? id.sans : "(none)");
    printf("serial: %s\n", id.serial);
    printf("not before: %s%s\n", nb, t_nb > now ? " (not yet valid)" : "");
    printf("not after: %s%s\n", na, t_na < now ? " (expired)" : "");
    printf("key: %s\n", id.key);
    if (mbedtls_oid_get_sig_alg_desc(&crt->sig_oid, &sig) != 0)
        sig = "?";
    printf("signature: %s\n", sig);
    if (crt->ca_istrue) {
        /* mbedTLS stores pathlen + 1, 0 meaning "no limit". */
        if (crt->max_pathlen > 0)
            printf("ca: yes, pathlen %d\n", crt->max_pathlen - 1);
        else
            printf("ca: yes\n");
    } else {
        printf("ca: no\n");
    }
    xr_pki_show_key_usage(crt);
    printf("sha256 pubkey: %s\n", id.pubkey_sha256);
}

static int xr_pki_show(int argc, char **argv)
{
    static const struct option opts[] = {{"ca", required_argument, NULL, 'c'},
                                         {"all", no_argument, NULL, 'a'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    const char *ca_file = NULL, *file;
    int all = 0, c, rc = XR_PKI_EXIT_FAIL;
    mbedtls_x509_crt chain, ca;

    optind = 0;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
        switch (c) {
        case 'c': ca_file = optarg; break;
        case 'a': all = 1; break;
        case 'h': xr_pki_show_usage(stdout); return XR_PKI_EXIT_OK;
        default: return xr_pki_bad_option(c, argv, "show");
        }
    }
    if (optind >= argc)
        return xr_pki_usage_error("show", "show needs a certificate FILE");
    if (optind + 1 < argc)
        return xr_pki_usage_error("show", "unexpected argument \"%s\"", argv[optind + 1]);
    file = argv[optind];

    mbedtls_x509_crt_init(&chain);
    mbedtls_x509_crt_init(&ca);
    if (xr_pki_load_crt(file, &chain, NULL, NULL) != XR_OK)
        goto out;
    if (ca_file != NULL && xr_pki_load_crt(ca_file, &ca, NULL, NULL) != XR_OK)
        goto out;

    size_t count = 0;
    for (const mbedtls_x509_crt *p = &chain; p != NULL && p->raw.p != NULL; p = p->next)
        count++;
    size_t i = 0;
    for (const mbedtls_x509_crt *p = &chain; p != NULL && p->raw.p != NULL; p = p->next, i++) {
        if (i > 0 && !all) {
            printf("chain: %zu more certificate(s) in %s%s\n", count - 1, file,
                   ca_file != NULL ? " (used as intermediates)" : " (--all shows them)");
            break;
        }
        if (all && count > 1)
            printf("%s# certificate %zu of %zu\n", i > 0 ? "\n" : "", i + 1, count);
        xr_pki_show_one(p);
    }

    rc = XR_PKI_EXIT_OK;
    if (ca_file != NULL) {
        uint32_t flags = 0;
        int ret = mbedtls_x509_crt_verify(&chain, &ca, NULL, NULL, &flags, NULL, NULL);
        if (ret == 0) {
            printf("verify: ok\n");
        } else {
            char why[1024];
            why[0] = '\0';
            if (flags != 0)
                mbedtls_x509_crt_verify_info(why, sizeof(why), "", flags);
            else
                snprintf(why, sizeof(why), "%s", xr_pki_mbed_err(ret));
            /* One line: the reasons mbedTLS puts on separate lines. */
            size_t n = strlen(why);
            while (n > 0 && why[n - 1] == '\n')
                why[--n] = '\0';
            for (char *nl = strchr(why, '\n'); nl != NULL; nl = strchr(nl, '\n'))
                *nl = ';';
            printf("verify: failed: %s\n", why);
            rc = XR_PKI_EXIT_FAIL;
        }
    }

out:
    mbedtls_x509_crt_free(&chain);
    mbedtls_x509_crt_free(&ca);
    return rc;
}

/* ---- dispatch -------------------------------------------------------- */

static void xr_pki_usage(FILE *out)
{
    fprintf(out,
            "usage: xray pki init  [--dir DIR] [--name NAME] [--days N] [--rsa BITS] [--force]\n"
            "       xray pki issue NAME [--dir DIR] [--san SAN]... [--days N] [--rsa BITS]\n"
            "                      [--server | --client | --both] [--out PREFIX] [--chain]\n"
            "       xray pki show  FILE [--ca CAFILE] [--all]\n"
            "\n"
            "Make a certificate authority for xrayd, issue agent and application\n"
            "certificates from it, and show a certificate's identity as xrayd matches it.\n"
            "\n"
            "  init    create a CA: DIR/ca.crt and DIR/ca.key\n"
            "  issue   issue a certificate for NAME, signed by the CA in DIR\n"
            "  show    print the identity of a certificate, optionally verifying it\n"
            "\n"
            "Keys are ECDSA P-256 unless --rsa asks for RSA.  DIR is --dir, else\n"
            "$XRAY_PKI_DIR, else the current directory.  'xray pki COMMAND --help' tells\n"
            "more.  Exit status: 0 success, 1 failure, 2 bad usage.\n");
}

int xr_pki_main(int argc, char **argv)
{
    static const struct {
        const char *name;
        int (*run)(int argc, char **argv);
    } cmds[] = {{"init", xr_pki_init}, {"issue", xr_pki_issue}, {"show", xr_pki_show}};

    if (argc < 2) {
        xr_pki_usage(stderr);
        return XR_PKI_EXIT_USAGE;
    }
    if (strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0 ||
        strcmp(argv[1], "help") == 0) {
        xr_pki_usage(stdout);
        return XR_PKI_EXIT_OK;
    }
    for (size_t i = 0; i < XR_ARRAY_SIZE(cmds); i++)
        if (strcmp(argv[1], cmds[i].name) == 0)
            return cmds[i].run(argc - 1, argv + 1);
    xr_pki_err("unknown command \"%s\" (use init, issue or show)", argv[1]);
    fprintf(stderr, "Try 'xray pki --help'.\n");
    return XR_PKI_EXIT_USAGE;
}
