/*
 * pki_file.c: the helpers under every `xray pki` command (see pki_int.h):
 * messages, randomness, files, time, and loading keys and certificates.
 *
 * Files are written so that a key is never readable by anyone else, not
 * even for a moment, and an existing one is never lost by a slip of the
 * keyboard; what a file holds is checked before mbedTLS is asked to parse
 * it, so a message says what is wrong.
 */
#include "core/xrayd.h"
#include "cli/pki_int.h"

#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#include <mbedtls/ecp.h>
#include <mbedtls/error.h>
#include <mbedtls/platform_util.h>
#include <mbedtls/rsa.h>

const char xr__pki_cmd[] = "xray pki"; /* prefix of every message */

void xr__pki_err(const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "%s: ", xr__pki_cmd);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

/* mbedTLS's own sentence for an error code, in a static buffer. */
const char *xr__pki_mbed_err(int ret)
{
    static char buf[160];
    mbedtls_strerror(ret, buf, sizeof(buf));
    return buf;
}

/* ---- randomness ------------------------------------------------------ */

int xr__pki_rng_init(xr_pki_rng_t *rng)
{
    static const char pers[] = "xray pki key and serial generator";
    mbedtls_entropy_init(&rng->entropy);
    mbedtls_ctr_drbg_init(&rng->drbg);
    int ret = mbedtls_ctr_drbg_seed(&rng->drbg, mbedtls_entropy_func, &rng->entropy,
                                    (const unsigned char *) pers, sizeof(pers) - 1);
    if (ret != 0) {
        xr__pki_err("cannot seed the random generator: %s", xr__pki_mbed_err(ret));
        return XR_ERROR;
    }
    return XR_OK;
}

void xr__pki_rng_free(xr_pki_rng_t *rng)
{
    mbedtls_ctr_drbg_free(&rng->drbg);
    mbedtls_entropy_free(&rng->entropy);
}

/* ---- files ----------------------------------------------------------- */

/* dir/name, or name alone when dir is "." so messages stay short. */
int xr__pki_path(char *buf, size_t size, const char *dir, const char *name)
{
    int n = strcmp(dir, ".") == 0 ? snprintf(buf, size, "%s", name)
                                  : snprintf(buf, size, "%s/%s", dir, name);
    if (n < 0 || (size_t) n >= size) {
        xr__pki_err("path too long: %s/%s", dir, name);
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
        xr__pki_err("cannot read %s: %s", path, strerror(errno));
        return XR_ERROR;
    }
    buf = xr_malloc(XR_PKI_MAX_FILE + 1);
    for (;;) {
        ssize_t r = read(fd, buf + n, XR_PKI_MAX_FILE + 1 - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            xr__pki_err("cannot read %s: %s", path, strerror(errno));
            goto fail;
        }
        if (r == 0)
            break;
        n += (size_t) r;
        if (n > XR_PKI_MAX_FILE) {
            xr__pki_err("cannot read %s: larger than %d bytes", path, XR_PKI_MAX_FILE);
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

int xr__pki_exists(const char *path)
{
    struct stat st;
    return lstat(path, &st) == 0;
}

/* Write data to path with exactly this mode, whatever the umask.  Without
 * force the file is created with O_EXCL (an existing one is an error);
 * with force the data goes to a temporary file that replaces path
 * atomically.  Either way the file is born 0600 and only widened by
 * fchmod once it is ours, and a failed write leaves nothing behind. */
int xr__pki_write(const char *path, const void *data, size_t len, mode_t mode, int force)
{
    char tmp[PATH_MAX];
    const char *target = path;
    const unsigned char *p = data;
    int fd;

    if (force) {
        int n = snprintf(tmp, sizeof(tmp), "%s.XXXXXX", path);
        if (n < 0 || (size_t) n >= sizeof(tmp)) {
            xr__pki_err("cannot create %s: %s", path, strerror(ENAMETOOLONG));
            return XR_ERROR;
        }
        fd = mkostemp(tmp, O_CLOEXEC);
        target = tmp;
    } else {
        fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    }
    if (fd < 0) {
        if (errno == EEXIST)
            xr__pki_err("%s already exists (use --force to replace it)", path);
        else
            xr__pki_err("cannot create %s: %s", path, strerror(errno));
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
    xr__pki_err("cannot write %s: %s", path, strerror(errno));
    if (fd >= 0)
        close(fd);
    unlink(target);
    return XR_ERROR;
}

/* mkdir -p, new directories 0700: they will hold a private key. */
int xr__pki_mkdirs(const char *dir)
{
    char buf[PATH_MAX];
    size_t n = strlen(dir);

    if (n == 0 || n >= sizeof(buf)) {
        xr__pki_err("bad directory \"%s\"", dir);
        return XR_ERROR;
    }
    memcpy(buf, dir, n + 1);
    for (size_t i = 1; i <= n; i++) {
        if (buf[i] != '/' && buf[i] != '\0')
            continue;
        char c = buf[i];
        buf[i] = '\0';
        if (mkdir(buf, 0700) != 0 && errno != EEXIST) {
            xr__pki_err("cannot create directory %s: %s", buf, strerror(errno));
            return XR_ERROR;
        }
        buf[i] = c;
    }
    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
        xr__pki_err("%s is not a directory", dir);
        return XR_ERROR;
    }
    return XR_OK;
}

/* ---- time ------------------------------------------------------------ */

/* "YYYY-MM-DD", "YYYY-MM-DDThh:mm:ss" (with an optional Z) or
 * "YYYYMMDDhhmmss", all UTC. */
int xr__pki_parse_time(const char *s, time_t *out)
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
void xr__pki_time_mbed(time_t t, char buf[16])
{
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(buf, 16, "%Y%m%d%H%M%S", &tm);
}

void xr__pki_time_text(time_t t, char *buf, size_t size)
{
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(buf, size, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

time_t xr__pki_x509_time(const mbedtls_x509_time *xt)
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

/* ---- keys ------------------------------------------------------------ */

void xr__pki_key_desc(const mbedtls_pk_context *pk, char *buf, size_t size)
{
    if (mbedtls_pk_get_type(pk) == MBEDTLS_PK_RSA)
        snprintf(buf, size, "RSA %u", (unsigned) mbedtls_pk_get_bitlen(pk));
    else
        snprintf(buf, size, "ECDSA P-256");
}

/* A fresh key: ECDSA P-256, or RSA with rsa_bits bits when that is not 0. */
int xr__pki_gen_key(mbedtls_pk_context *pk, unsigned rsa_bits, xr_pki_rng_t *rng)
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
        xr__pki_err("cannot generate a key: %s", xr__pki_mbed_err(ret));
        return XR_ERROR;
    }
    return XR_OK;
}

/* The key in PEM (SEC 1 for EC, PKCS#1 for RSA), as OpenSSL and mbedTLS
 * both read it.  buf must hold XR_PKI_PEM_MAX bytes; the caller wipes it. */
int xr__pki_key_pem(mbedtls_pk_context *pk, unsigned char *buf, size_t *len)
{
    int ret = mbedtls_pk_write_key_pem(pk, buf, XR_PKI_PEM_MAX);
    if (ret != 0) {
        xr__pki_err("cannot encode the key: %s", xr__pki_mbed_err(ret));
        return XR_ERROR;
    }
    *len = strlen((char *) buf);
    return XR_OK;
}

int xr__pki_load_key(const char *path, mbedtls_pk_context *pk)
{
    unsigned char *data;
    size_t len;
    struct stat st;

    if (xr_pki_read(path, &data, &len) != XR_OK)
        return XR_ERROR;
    if (stat(path, &st) == 0 && (st.st_mode & 077) != 0)
        fprintf(stderr, "%s: warning: %s is readable by others (mode %04o); chmod 600 it\n",
                xr__pki_cmd, path, (unsigned) (st.st_mode & 07777));
    /* A PEM buffer is parsed with its NUL, DER without. */
    size_t parse_len = strstr((char *) data, "-----BEGIN") != NULL ? len + 1 : len;
    int ret = mbedtls_pk_parse_key(pk, data, parse_len, NULL, 0);
    mbedtls_platform_zeroize(data, len);
    free(data);
    if (ret == MBEDTLS_ERR_PK_PASSWORD_REQUIRED) {
        xr__pki_err("cannot use %s: the key is encrypted (only unencrypted keys are supported)",
                    path);
        return XR_ERROR;
    }
    if (ret != 0) {
        xr__pki_err("cannot parse %s: %s", path, xr__pki_mbed_err(ret));
        return XR_ERROR;
    }
    return XR_OK;
}

/* Every certificate in path (PEM, possibly several, or one DER).  *raw
 * receives the file's bytes when not NULL (caller frees). */
int xr__pki_load_crt(const char *path, mbedtls_x509_crt *crt, unsigned char **raw, size_t *raw_len)
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
        xr__pki_err("no certificate in %s", path);
        free(data);
        return XR_ERROR;
    }
    if (pem)
        ret = mbedtls_x509_crt_parse(crt, data, len + 1);
    else
        ret = mbedtls_x509_crt_parse_der(crt, data, len);
    if (ret < 0 || crt->raw.p == NULL) {
        if (ret >= 0)
            xr__pki_err("no certificate in %s", path);
        else
            xr__pki_err("cannot parse %s: %s", path, xr__pki_mbed_err(ret));
        free(data);
        return XR_ERROR;
    }
    if (ret > 0)
        fprintf(stderr, "%s: warning: %d certificate(s) in %s could not be parsed\n", xr__pki_cmd,
                ret, path);
    if (raw != NULL) {
        *raw = data;
        *raw_len = len;
    } else {
        free(data);
    }
    return XR_OK;
}
