/*
 * pki.c: `xray pki init|issue|show` (see pki.h and html-docs/pki.html):
 * the command line, `init` (the CA) and `issue`.
 *
 * Each command refuses what it can before the slow part (making a key),
 * writes the key before the certificate, and when a later step fails
 * removes what it wrote (unless --force replaced files in place), so that
 * no key is left without its certificate.  What goes into a certificate
 * is pki_cert.c's, `show` is pki_show.c's, files and keys pki_file.c's.
 */
#include "core/xrayd.h"
#include "cli/pki.h"
#include "cli/pki_int.h"
#include "common/identity.h"

#include <getopt.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <unistd.h>

#include <mbedtls/oid.h>
#include <mbedtls/platform_util.h>

/* ---- option parsing -------------------------------------------------- */

static int xr_pki_number(const char *opt, const char *s, long min, long max, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v < min || v > max) {
        xr__pki_err("%s wants a number from %ld to %ld, not \"%s\"", opt, min, max, s);
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
    xr__pki_err("--rsa wants 2048, 3072 or 4096 bits, not \"%s\"", s);
    return XR_ERROR;
}

static const char *xr_pki_default_dir(void)
{
    const char *d = getenv("XRAY_PKI_DIR");
    return d != NULL && d[0] != '\0' ? d : ".";
}

/* getopt_long's complaint, in our words.  Returns XR_PKI_EXIT_USAGE. */
int xr__pki_bad_option(int c, char **argv, const char *sub)
{
    const char *arg = argv[optind - 1];
    if (c == ':')
        xr__pki_err("option %s needs a value", arg);
    else if (optopt != 0)
        xr__pki_err("unknown option -%c", optopt);
    else
        xr__pki_err("unknown option %s", arg);
    fprintf(stderr, "Try 'xray pki %s --help'.\n", sub);
    return XR_PKI_EXIT_USAGE;
}

int xr__pki_usage_error(const char *sub, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "%s: ", xr__pki_cmd);
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
        default: return xr__pki_bad_option(c, argv, "init");
        }
    }
    if (optind < argc)
        return xr__pki_usage_error("init", "unexpected argument \"%s\"", argv[optind]);
    if (xr__pki_check_cn("--name", name) != XR_OK)
        return XR_PKI_EXIT_USAGE;

    if (xr__pki_path(key_path, sizeof(key_path), dir, "ca.key") != XR_OK ||
        xr__pki_path(crt_path, sizeof(crt_path), dir, "ca.crt") != XR_OK)
        return XR_PKI_EXIT_FAIL;
    /* Refuse before the (possibly slow) key generation, not after. */
    if (!force && (xr__pki_exists(key_path) || xr__pki_exists(crt_path))) {
        xr__pki_err("a CA already exists in %s (use --force to replace it and invalidate "
                    "every certificate it issued)",
                    dir);
        return XR_PKI_EXIT_FAIL;
    }
    if (xr__pki_mkdirs(dir) != XR_OK)
        return XR_PKI_EXIT_FAIL;

    mbedtls_pk_init(&key);
    mbedtls_x509_crt_init(&crt);
    memset(&cert, 0, sizeof(cert));
    if (xr__pki_rng_init(&rng) != XR_OK)
        goto out;
    if (xr__pki_gen_key(&key, rsa_bits, &rng) != XR_OK)
        goto out;

    time_t now = time(NULL);
    cert.subject_key = cert.issuer_key = &key;
    cert.not_before = now - XR_PKI_BACKDATE;
    cert.not_after = now + (time_t) days * 86400;
    cert.is_ca = 1;
    cert.key_usage = MBEDTLS_X509_KU_KEY_CERT_SIGN | MBEDTLS_X509_KU_CRL_SIGN;
    if (xr__pki_name_cn(&cert.subject, name) != XR_OK ||
        xr__pki_name_cn(&cert.issuer, name) != XR_OK)
        goto out;
    pem = xr_malloc(XR_PKI_PEM_MAX);
    key_pem = xr_malloc(XR_PKI_PEM_MAX);
    if (xr__pki_make_cert(&cert, &rng, pem) != XR_OK || xr__pki_self_check(pem, NULL) != XR_OK)
        goto out;
    if (xr__pki_key_pem(&key, key_pem, &key_len) != XR_OK)
        goto out;

    /* The key first: a CA certificate without its key would be useless. */
    if (xr__pki_write(key_path, key_pem, key_len, 0600, force) != XR_OK)
        goto out;
    if (xr__pki_write(crt_path, pem, strlen((char *) pem), 0644, force) != XR_OK) {
        if (!force)
            unlink(key_path);
        goto out;
    }

    xr__pki_key_desc(&key, desc, sizeof(desc));
    xr__pki_time_text(cert.not_after, until, sizeof(until));
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
    xr__pki_rng_free(&rng);
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
        xr__pki_err("--san value too long");
        return XR_ERROR;
    }
    strcpy(buf, arg);
    for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok != NULL;
         tok = strtok_r(NULL, ",", &save)) {
        if (*nsans == XR_PKI_MAX_SANS) {
            xr__pki_err("at most %d subjectAltNames", XR_PKI_MAX_SANS);
            return XR_ERROR;
        }
        if (xr__pki_parse_san(tok, &sans[*nsans], 0) != XR_OK)
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
            if (xr__pki_parse_time(optarg, c == O_NB ? &not_before : &not_after) != XR_OK)
                return xr__pki_usage_error("issue",
                                           "--%s wants YYYY-MM-DD[Thh:mm:ss][Z], not \"%s\"",
                                           c == O_NB ? "not-before" : "not-after", optarg);
            *(c == O_NB ? &have_nb : &have_na) = 1;
            break;
        case 'h': xr_pki_issue_usage(stdout); return XR_PKI_EXIT_OK;
        default: return xr__pki_bad_option(c, argv, "issue");
        }
    }
    if (optind >= argc)
        return xr__pki_usage_error("issue", "issue needs a NAME (the certificate's common name)");
    if (optind + 1 < argc)
        return xr__pki_usage_error("issue", "unexpected argument \"%s\"", argv[optind + 1]);
    name = argv[optind];
    if (xr__pki_check_cn("NAME", name) != XR_OK)
        return XR_PKI_EXIT_USAGE;
    if (eku == 0)
        eku = XR_PKI_EKU_SERVER | XR_PKI_EKU_CLIENT;
    if (days >= 0 && have_na)
        return xr__pki_usage_error("issue", "give --days or --not-after, not both");
    if (!have_nb)
        not_before = now - XR_PKI_BACKDATE;
    if (!have_na)
        not_after = now + (time_t) (days >= 0 ? days : XR_PKI_LEAF_DAYS) * 86400;
    if (not_after <= not_before)
        return xr__pki_usage_error("issue", "the certificate would expire before it is valid "
                                            "(check --not-before and --not-after)");
    /* By default the name is also the SAN, when it can be one: TLS clients
     * check SANs, not the CN. */
    if (nsans == 0 && xr__pki_parse_san(name, &sans[0], 1) == XR_OK)
        nsans = 1;
    else if (nsans == 0)
        fprintf(stderr,
                "%s: note: \"%s\" is not a host name or address, so the certificate "
                "has no subjectAltName (add --san to give it one)\n",
                xr__pki_cmd, name);

    char prefix[PATH_MAX], key_path[PATH_MAX], crt_path[PATH_MAX], chain_path[PATH_MAX];
    char ca_key_path[PATH_MAX], ca_crt_path[PATH_MAX];
    if (out == NULL) {
        if (strchr(name, '/') != NULL || name[0] == '.' || name[0] == '-')
            return xr__pki_usage_error("issue", "\"%s\" cannot be a file name: give --out PREFIX",
                                       name);
        if (xr__pki_path(prefix, sizeof(prefix), dir, name) != XR_OK)
            return XR_PKI_EXIT_FAIL;
        out = prefix;
    }
    if (snprintf(key_path, sizeof(key_path), "%s.key", out) >= (int) sizeof(key_path) ||
        snprintf(crt_path, sizeof(crt_path), "%s.crt", out) >= (int) sizeof(crt_path) ||
        snprintf(chain_path, sizeof(chain_path), "%s-chain.crt", out) >= (int) sizeof(chain_path) ||
        xr__pki_path(ca_key_path, sizeof(ca_key_path), dir, "ca.key") != XR_OK ||
        xr__pki_path(ca_crt_path, sizeof(ca_crt_path), dir, "ca.crt") != XR_OK) {
        xr__pki_err("path too long: %s", out);
        return XR_PKI_EXIT_FAIL;
    }
    if (!force) {
        const char *outs[] = {key_path, crt_path, chain ? chain_path : NULL};
        for (size_t i = 0; i < XR_ARRAY_SIZE(outs); i++)
            if (outs[i] != NULL && xr__pki_exists(outs[i])) {
                xr__pki_err("%s already exists (use --force to replace it)", outs[i]);
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
    if (xr__pki_rng_init(&rng) != XR_OK)
        goto out;

    if (xr__pki_load_crt(ca_crt_path, &ca, &ca_raw, &ca_len) != XR_OK ||
        xr__pki_load_key(ca_key_path, &ca_key) != XR_OK)
        goto out;
    if (!ca.ca_istrue || ((ca.ext_types & MBEDTLS_X509_EXT_KEY_USAGE) &&
                          !(ca.key_usage & MBEDTLS_X509_KU_KEY_CERT_SIGN))) {
        xr__pki_err("%s is not a CA certificate", ca_crt_path);
        goto out;
    }
    if (mbedtls_pk_check_pair(&ca.pk, &ca_key) != 0) {
        xr__pki_err("%s does not belong to %s", ca_key_path, ca_crt_path);
        goto out;
    }
    time_t ca_until = xr__pki_x509_time(&ca.valid_to);
    char when[32];
    xr__pki_time_text(ca_until, when, sizeof(when));
    if (ca_until <= now) {
        xr__pki_err("the CA in %s expired at %s", ca_crt_path, when);
        goto out;
    }
    if (not_after > ca_until) {
        not_after = ca_until;
        fprintf(stderr, "%s: note: validity cut to the CA's own expiry, %s\n", xr__pki_cmd, when);
    }

    if (xr__pki_gen_key(&key, rsa_bits, &rng) != XR_OK)
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
    if (xr__pki_name_cn(&cert.subject, name) != XR_OK ||
        xr__pki_name_copy(&cert.issuer, &ca.subject) != XR_OK)
        goto out;

    pem = xr_malloc(XR_PKI_PEM_MAX);
    key_pem = xr_malloc(XR_PKI_PEM_MAX);
    if (xr__pki_make_cert(&cert, &rng, pem) != XR_OK)
        goto out;
    if (xr__pki_self_check(pem, &ca) != XR_OK)
        goto out;
    if (xr__pki_key_pem(&key, key_pem, &key_len) != XR_OK)
        goto out;

    size_t pem_len = strlen((char *) pem);
    if (xr__pki_write(key_path, key_pem, key_len, 0600, force) != XR_OK)
        goto out;
    wrote_key = 1;
    if (xr__pki_write(crt_path, pem, pem_len, 0644, force) != XR_OK)
        goto out;
    wrote_crt = 1;
    if (chain) {
        unsigned char *both = xr_malloc(pem_len + ca_len + 1);
        memcpy(both, pem, pem_len);
        memcpy(both + pem_len, ca_raw, ca_len);
        int ok = xr__pki_write(chain_path, both, pem_len + ca_len, 0644, force);
        free(both);
        if (ok != XR_OK)
            goto out;
    }

    if (mbedtls_x509_crt_parse(&crt, pem, pem_len + 1) == 0) {
        xr_identity_t id;
        char desc[32], until[32];
        xr_identity_from_crt(&crt, &id);
        xr__pki_key_desc(&key, desc, sizeof(desc));
        xr__pki_time_text(not_after, until, sizeof(until));
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
    xr__pki_rng_free(&rng);
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
    } cmds[] = {{"init", xr_pki_init}, {"issue", xr_pki_issue}, {"show", xr__pki_show}};

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
    xr__pki_err("unknown command \"%s\" (use init, issue or show)", argv[1]);
    fprintf(stderr, "Try 'xray pki --help'.\n");
    return XR_PKI_EXIT_USAGE;
}
