/*
 * fuzz_gcm.c: differential libFuzzer target for the vector AES-256-GCM
 * (src/common/gcm.c) against libsodium's crypto_aead_aes256gcm, the fallback
 * the record layer uses on other CPUs and the reference for this one.
 *
 * Input layout:
 *   32 bytes    the key
 *   12 bytes    the nonce; its first four bytes also choose the bit that
 *               is flipped below (bytes 0-2 the position, byte 3 the bit)
 *   1 byte      a = byte % 65, the length of the additional data
 *   a bytes     the additional data
 *   the rest    the plaintext (up to XR_FUZZ_GCM_MAX bytes; longer
 *               inputs are ignored)
 * Shorter inputs are ignored.
 *
 * Checked on every input, for each implementation in gcm.c that the CPU
 * runs (vaes-avx512 and vaes-avx2, or vaes-avx2 alone): xr_gcm_seal gives
 * libsodium's ciphertext and tag, out of place and in place; xr_gcm_open
 * in place gives back the plaintext; with one bit flipped in the
 * ciphertext, the tag or the additional data, xr_gcm_open returns -1 and
 * zeroes its output.  Every buffer is allocated at its exact length, so
 * the sanitizers see a read or write past one.  XRAYD_AES=avx2 narrows the
 * run to vaes-avx2, so an AVX-512 machine spends it all on that code.  On
 * a CPU without VAES/VPCLMULQDQ, or with XRAYD_AES=sodium, or without
 * libsodium's AES-GCM, there is nothing to compare and every input is a
 * no-op.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "common/gcm.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define XR_FUZZ_GCM_MAX  20000
#define XR_FUZZ_GCM_AAD  64
#define XR_FUZZ_GCM_HEAD (32 + 12 + 1)

/* What was being checked, for the report when a check fails. */
static size_t xr_fuzz_n, xr_fuzz_aadlen;
static const char *xr_fuzz_impl = "";

#define XR_FUZZ_CHECK(c)                                                                           \
    do {                                                                                           \
        if (!(c)) {                                                                                \
            fprintf(stderr,                                                                        \
                    "fuzz_gcm.c:%d: check failed: %s (%s, plaintext %zu bytes, aad %zu bytes)\n",  \
                    __LINE__, #c, xr_fuzz_impl, xr_fuzz_n, xr_fuzz_aadlen);                        \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

/* Compare n bytes; on a difference, say where before the check aborts. */
static int xr_fuzz_same(const char *what, const unsigned char *a, const unsigned char *b, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (a[i] != b[i]) {
            fprintf(stderr, "fuzz_gcm.c: %s differs first at byte %zu of %zu (%02x, want %02x)\n",
                    what, i, n, a[i], b[i]);
            return 0;
        }
    }
    return 1;
}

static unsigned char *xr_fuzz_alloc(size_t n)
{
    unsigned char *p = malloc(n);
    if (p == NULL && n > 0)
        abort();
    return p;
}

/* The implementations to check, preferred first; how many. */
static int xr_fuzz_impls(xr_gcm_impl_t impls[2])
{
    int n = 0;
    for (int i = XR_GCM_AVX512; i >= XR_GCM_AVX2; i--)
        if (i <= (int) xr_gcm_impl() && xr_gcm_runs((xr_gcm_impl_t) i))
            impls[n++] = (xr_gcm_impl_t) i;
    return n;
}

/* The checks listed at the top, on one input with one implementation;
 * want and want_tag are libsodium's answer. */
static void xr_fuzz_one(xr_gcm_impl_t impl, const unsigned char *key, const unsigned char *nonce,
                        unsigned char *aad, size_t aadlen, const unsigned char *m, size_t n,
                        const unsigned char *want, const unsigned char want_tag[16])
{
    unsigned char *c = xr_fuzz_alloc(n), *w = xr_fuzz_alloc(n);
    unsigned char tag[16];
    xr_fuzz_impl = xr_gcm_impl_name(impl);
    xr_gcm_key_t *k = xr_gcm_new_impl(key, impl);
    XR_FUZZ_CHECK(k != NULL);

    /* Out of place, then in place. */
    xr_gcm_seal(k, c, tag, m, n, aad, aadlen, nonce);
    XR_FUZZ_CHECK(xr_fuzz_same("ciphertext", c, want, n));
    XR_FUZZ_CHECK(xr_fuzz_same("tag", tag, want_tag, 16));
    if (n > 0)
        memcpy(w, m, n);
    memset(tag, 0, sizeof(tag));
    xr_gcm_seal(k, w, tag, w, n, aad, aadlen, nonce);
    XR_FUZZ_CHECK(xr_fuzz_same("in-place ciphertext", w, want, n));
    XR_FUZZ_CHECK(xr_fuzz_same("in-place tag", tag, want_tag, 16));

    /* Opened in place, the plaintext comes back. */
    XR_FUZZ_CHECK(xr_gcm_open(k, w, w, n, want_tag, aad, aadlen, nonce) == 0);
    XR_FUZZ_CHECK(xr_fuzz_same("opened plaintext", w, m, n));

    /* One bit flipped in the ciphertext, the tag or the additional data is
     * refused, and the output wiped.  The additional data is flipped back
     * afterwards, for the next implementation. */
    size_t span = n + 16 + aadlen;
    size_t at = ((size_t) nonce[0] | (size_t) nonce[1] << 8 | (size_t) nonce[2] << 16) % span;
    unsigned char bit = (unsigned char) (1u << (nonce[3] & 7));
    const char *region;
    size_t off;
    if (n > 0)
        memcpy(w, want, n);
    memcpy(tag, want_tag, 16);
    if (at < n) {
        region = "ciphertext", off = at;
        w[off] ^= bit;
    } else if (at < n + 16) {
        region = "tag", off = at - n;
        tag[off] ^= bit;
    } else {
        region = "aad", off = at - n - 16;
        aad[off] ^= bit;
    }
    int r = xr_gcm_open(k, w, w, n, tag, aad, aadlen, nonce);
    if (r != -1 || (n > 0 && (w[0] != 0 || memcmp(w, w + 1, n - 1) != 0)))
        fprintf(stderr, "fuzz_gcm.c: %s: bit %u of %s byte %zu flipped: open returned %d\n",
                xr_fuzz_impl, nonce[3] & 7u, region, off, r);
    XR_FUZZ_CHECK(r == -1);
    for (size_t i = 0; i < n; i++)
        XR_FUZZ_CHECK(w[i] == 0);
    if (at >= n + 16)
        aad[off] ^= bit;

    xr_gcm_free(k);
    free(c);
    free(w);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int nimpl = -1;
    static xr_gcm_impl_t impls[2];
    static crypto_aead_aes256gcm_state st;
    if (nimpl < 0) {
        if (sodium_init() < 0)
            abort();
        nimpl = crypto_aead_aes256gcm_is_available() ? xr_fuzz_impls(impls) : 0;
    }
    if (nimpl == 0 || size < XR_FUZZ_GCM_HEAD)
        return 0;

    const unsigned char *key = data, *nonce = data + 32;
    size_t aadlen = data[44] % (XR_FUZZ_GCM_AAD + 1);
    if (size - XR_FUZZ_GCM_HEAD < aadlen)
        return 0;
    size_t n = size - XR_FUZZ_GCM_HEAD - aadlen;
    if (n > XR_FUZZ_GCM_MAX)
        return 0;
    xr_fuzz_n = n;
    xr_fuzz_aadlen = aadlen;

    unsigned char *aad = xr_fuzz_alloc(aadlen), *m = xr_fuzz_alloc(n), *want = xr_fuzz_alloc(n);
    unsigned char want_tag[16];
    if (aadlen > 0)
        memcpy(aad, data + XR_FUZZ_GCM_HEAD, aadlen);
    if (n > 0)
        memcpy(m, data + XR_FUZZ_GCM_HEAD + aadlen, n);

    XR_FUZZ_CHECK(crypto_aead_aes256gcm_beforenm(&st, key) == 0);
    XR_FUZZ_CHECK(crypto_aead_aes256gcm_encrypt_detached_afternm(want, want_tag, NULL, m, n, aad,
                                                                 aadlen, NULL, nonce, &st) == 0);
    for (int i = 0; i < nimpl; i++)
        xr_fuzz_one(impls[i], key, nonce, aad, aadlen, m, n, want, want_tag);

    free(aad);
    free(m);
    free(want);
    return 0;
}
