/*
 * pki_show.c: `xray pki show` (see pki.h): a certificate's identity
 * exactly as xrayd logs and matches it, and optionally whether it
 * verifies against a CA as xrayd would verify it.
 *
 * It only reads: the identity comes from common/identity.c, the same
 * code the daemon uses, so what it prints is what a match: pattern sees.
 */
#include "core/xrayd.h"
#include "cli/pki_int.h"
#include "common/identity.h"

#include <getopt.h>
#include <stdio.h>

#include <mbedtls/oid.h>

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
    time_t t_nb = xr__pki_x509_time(&crt->valid_from), t_na = xr__pki_x509_time(&crt->valid_to);
    const char *sig = NULL;

    if (xr_identity_from_crt(crt, &id) != XR_OK)
        fprintf(stderr,
                "%s: warning: a field was too long or malformed; xrayd will not match "
                "this certificate\n",
                xr__pki_cmd);
    xr__pki_time_text(t_nb, nb, sizeof(nb));
    xr__pki_time_text(t_na, na, sizeof(na));
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

int xr__pki_show(int argc, char **argv)
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
        default: return xr__pki_bad_option(c, argv, "show");
        }
    }
    if (optind >= argc)
        return xr__pki_usage_error("show", "show needs a certificate FILE");
    if (optind + 1 < argc)
        return xr__pki_usage_error("show", "unexpected argument \"%s\"", argv[optind + 1]);
    file = argv[optind];

    mbedtls_x509_crt_init(&chain);
    mbedtls_x509_crt_init(&ca);
    if (xr__pki_load_crt(file, &chain, NULL, NULL) != XR_OK)
        goto out;
    if (ca_file != NULL && xr__pki_load_crt(ca_file, &ca, NULL, NULL) != XR_OK)
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
                snprintf(why, sizeof(why), "%s", xr__pki_mbed_err(ret));
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
