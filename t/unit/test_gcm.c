/*
 * test_gcm.c: the vector AES-256-GCM (src/tls/gcm.c) against the NIST
 * test vectors and against libsodium's implementation, byte for byte, at
 * every length around the 16-byte, 64-byte and 256-byte steps the code
 * branches on, in place and not, with and without additional data.
 */
#include "tls/gcm.h"

#include <sodium.h>

#include "unit.h"

static void need_gcm(void)
{
    if (sodium_init() < 0)
        FAIL("sodium_init");
    if (!xr_gcm_available())
        SKIP("this CPU has no VAES/VPCLMULQDQ (libsodium carries the records)");
    if (!crypto_aead_aes256gcm_is_available())
        SKIP("libsodium's AES-GCM, the reference, is unavailable");
}

static void unhex(const char *h, unsigned char *out, size_t *n)
{
    size_t i = 0;
    for (; h[2 * i] != '\0'; i++) {
        unsigned v;
        if (sscanf(h + 2 * i, "%2x", &v) != 1)
            FAIL("bad hex");
        out[i] = (unsigned char) v;
    }
    *n = i;
}

/* The GCM specification's test cases 13-16 (256-bit key). */
TEST(gcm_nist_vectors)
{
    static const struct {
        const char *key, *iv, *pt, *aad, *ct, *tag;
    } v[] = {
        {"0000000000000000000000000000000000000000000000000000000000000000",
         "000000000000000000000000", "", "", "", "530f8afbc74536b9a963b4f1c4cb738b"},
        {"0000000000000000000000000000000000000000000000000000000000000000",
         "000000000000000000000000", "00000000000000000000000000000000", "",
         "cea7403d4d606b6e074ec5d3baf39d18", "d0d1c8a799996bf0265b98b5d48ab919"},
        {"feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308",
         "cafebabefacedbaddecaf888",
         "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72"
         "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b391aafd255",
         "",
         "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa"
         "8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662898015ad",
         "b094dac5d93471bdec1a502270e3cc6c"},
        {"feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308",
         "cafebabefacedbaddecaf888",
         "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72"
         "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39",
         "feedfacedeadbeeffeedfacedeadbeefabaddad2",
         "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa"
         "8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662",
         "76fc6ece0f4e1768cddf8853bb2d551b"},
    };
    need_gcm();
    for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
        unsigned char key[32], iv[12], pt[64], aad[32], ct[64], tag[16], out[64], t[16];
        size_t kl, il, pl, al, cl, tl;
        unhex(v[i].key, key, &kl);
        unhex(v[i].iv, iv, &il);
        unhex(v[i].pt, pt, &pl);
        unhex(v[i].aad, aad, &al);
        unhex(v[i].ct, ct, &cl);
        unhex(v[i].tag, tag, &tl);
        xr_gcm_key_t *k = xr_gcm_new(key);
        ASSERT_NOT_NULL(k);
        xr_gcm_seal(k, out, t, pt, pl, aad, al, iv);
        ASSERT_MEMEQ(out, ct, cl);
        ASSERT_MEMEQ(t, tag, 16);
        ASSERT_EQ(xr_gcm_open(k, out, ct, cl, tag, aad, al, iv), 0);
        ASSERT_MEMEQ(out, pt, pl);
        xr_gcm_free(k);
    }
}

/* Every length 0..1100 (all tail shapes, one to four 256-byte steps) and
 * record-sized ones, with AAD lengths 0, 13 (TLS) and 35. */
TEST(gcm_matches_libsodium)
{
    static const size_t big[] = {16383, 16384, 16385, 16384 + 255, 2048 + 7};
    need_gcm();
    size_t cap = 16384 + 256;
    unsigned char *m = malloc(cap), *a = malloc(cap), *b = malloc(cap);
    unsigned char key[32], nonce[12], aad[35], ta[16], tb[16];
    crypto_aead_aes256gcm_state *st = sodium_malloc(sizeof(*st));
    ASSERT_TRUE(m != NULL && a != NULL && b != NULL && st != NULL);
    randombytes_buf(m, cap);
    randombytes_buf(aad, sizeof(aad));

    for (size_t i = 0; i < 1101 + sizeof(big) / sizeof(big[0]); i++) {
        size_t n = i <= 1100 ? i : big[i - 1101];
        size_t al = (size_t[]){0, 13, 35}[i % 3];
        if (i % 97 == 0) {
            randombytes_buf(key, sizeof(key));
        }
        randombytes_buf(nonce, sizeof(nonce));
        xr_gcm_key_t *k = xr_gcm_new(key);
        ASSERT_NOT_NULL(k);
        crypto_aead_aes256gcm_beforenm(st, key);

        crypto_aead_aes256gcm_encrypt_detached_afternm(a, ta, NULL, m, n, aad, al, NULL, nonce, st);
        xr_gcm_seal(k, b, tb, m, n, aad, al, nonce);
        if (memcmp(a, b, n) != 0 || memcmp(ta, tb, 16) != 0)
            FAIL("seal differs from libsodium at length %zu, aad %zu", n, al);

        /* In place, then open in place. */
        memcpy(b, m, n);
        xr_gcm_seal(k, b, tb, b, n, aad, al, nonce);
        ASSERT_MEMEQ(b, a, n);
        ASSERT_EQ(xr_gcm_open(k, b, b, n, tb, aad, al, nonce), 0);
        ASSERT_MEMEQ(b, m, n);

        /* A flipped bit anywhere (ciphertext, tag, AAD) is refused and the
         * output wiped. */
        memcpy(b, a, n);
        size_t which = n > 0 ? (i * 7919) % (n + 16 + al) : (i % 16);
        unsigned char tag[16];
        memcpy(tag, ta, 16);
        unsigned char ad[35];
        memcpy(ad, aad, sizeof(ad));
        if (which < n)
            b[which] ^= 0x20;
        else if (which < n + 16)
            tag[which - n] ^= 1;
        else
            ad[which - n - 16] ^= 0x80;
        ASSERT_EQ(xr_gcm_open(k, b, b, n, tag, ad, al, nonce), -1);
        for (size_t j = 0; j < n; j++)
            if (b[j] != 0)
                FAIL("output not wiped after a bad tag (length %zu)", n);
        xr_gcm_free(k);
    }
    sodium_free(st);
    free(m);
    free(a);
    free(b);
}

/* Refusing is an answer the caller must be able to ask for. */
TEST(gcm_env_off_switch)
{
    if (sodium_init() < 0)
        FAIL("sodium_init");
    setenv("XRAYD_AES", "sodium", 1);
    ASSERT_EQ(xr_gcm_available(), 0);
    unsigned char key[32] = {0};
    ASSERT_NULL(xr_gcm_new(key));
}
