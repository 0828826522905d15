/*
 * test_gcm.c: the vector AES-256-GCM (src/common/gcm.c) against the NIST
 * test vectors and against libsodium's implementation, byte for byte, at
 * every length around the 16-, 32-, 64- and 256-byte steps the code
 * branches on, in place and not, with and without additional data, and in
 * buffers that end at an inaccessible page.  Each test runs every
 * implementation this CPU has (vaes-avx512 and vaes-avx2 on an AVX-512
 * machine, vaes-avx2 alone on Zen 3), whatever XRAYD_AES says.
 */
#include "common/gcm.h"

#include <sys/mman.h>

#include <sodium.h>

#include "unit.h"

/* The implementations to test, into impls[]; how many.  Each is named in
 * a TAP comment, so a failure's diagnostic follows the name it is for. */
static int need_gcm(xr_gcm_impl_t impls[2])
{
    if (sodium_init() < 0)
        FAIL("sodium_init");
    if (!crypto_aead_aes256gcm_is_available())
        SKIP("libsodium's AES-GCM, the reference, is unavailable");
    int n = 0;
    if (xr_gcm_runs(XR_GCM_AVX512))
        impls[n++] = XR_GCM_AVX512;
    if (xr_gcm_runs(XR_GCM_AVX2))
        impls[n++] = XR_GCM_AVX2;
    if (n == 0)
        SKIP("this CPU has no VAES/VPCLMULQDQ (libsodium carries the records)");
    return n;
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
    xr_gcm_impl_t impls[2];
    int nimpl = need_gcm(impls);
    for (int im = 0; im < nimpl; im++) {
        printf("# %s\n", xr_gcm_impl_name(impls[im]));
        for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
            unsigned char key[32], iv[12], pt[64], aad[32], ct[64], tag[16], out[64], t[16];
            size_t kl, il, pl, al, cl, tl;
            unhex(v[i].key, key, &kl);
            unhex(v[i].iv, iv, &il);
            unhex(v[i].pt, pt, &pl);
            unhex(v[i].aad, aad, &al);
            unhex(v[i].ct, ct, &cl);
            unhex(v[i].tag, tag, &tl);
            xr_gcm_key_t *k = xr_gcm_new_impl(key, impls[im]);
            ASSERT_NOT_NULL(k);
            xr_gcm_seal(k, out, t, pt, pl, aad, al, iv);
            ASSERT_MEMEQ(out, ct, cl);
            ASSERT_MEMEQ(t, tag, 16);
            ASSERT_EQ(xr_gcm_open(k, out, ct, cl, tag, aad, al, iv), 0);
            ASSERT_MEMEQ(out, pt, pl);
            xr_gcm_free(k);
        }
    }
}

/* Every length 0..1100 (all tail shapes, one to four 256-byte steps) and
 * record-sized ones, with AAD lengths 0, 13 (TLS) and 35. */
static void matches_libsodium(xr_gcm_impl_t impl)
{
    static const size_t big[] = {16383, 16384, 16385, 16384 + 255, 2048 + 7};
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
        xr_gcm_key_t *k = xr_gcm_new_impl(key, impl);
        ASSERT_NOT_NULL(k);
        crypto_aead_aes256gcm_beforenm(st, key);

        crypto_aead_aes256gcm_encrypt_detached_afternm(a, ta, NULL, m, n, aad, al, NULL, nonce, st);
        xr_gcm_seal(k, b, tb, m, n, aad, al, nonce);
        if (memcmp(a, b, n) != 0 || memcmp(ta, tb, 16) != 0)
            FAIL("%s: seal differs from libsodium at length %zu, aad %zu", xr_gcm_impl_name(impl),
                 n, al);

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
                FAIL("%s: output not wiped after a bad tag (length %zu)", xr_gcm_impl_name(impl),
                     n);
        xr_gcm_free(k);
    }
    sodium_free(st);
    free(m);
    free(a);
    free(b);
}

TEST(gcm_matches_libsodium)
{
    xr_gcm_impl_t impls[2];
    int nimpl = need_gcm(impls);
    for (int im = 0; im < nimpl; im++) {
        printf("# %s\n", xr_gcm_impl_name(impls[im]));
        matches_libsodium(impls[im]);
    }
}

/* n bytes (at least one page mapped) that end where an inaccessible page
 * begins, so a read or write past them faults even without the
 * sanitizers; unmap with unguard(). */
static unsigned char *guarded(size_t n)
{
    size_t pg = (size_t) sysconf(_SC_PAGESIZE), len = (n + pg - 1) / pg * pg + pg;
    unsigned char *b = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (b == MAP_FAILED || mprotect(b + len - pg, pg, PROT_NONE) != 0)
        FAIL("mmap: %s", strerror(errno));
    return b + len - pg - n;
}

static void unguard(unsigned char *p, size_t n)
{
    size_t pg = (size_t) sysconf(_SC_PAGESIZE), len = (n + pg - 1) / pg * pg + pg;
    munmap(p + n + pg - len, len);
}

/* The tails are where a vector load or store could reach past the data:
 * every length up to two steps and a bit, with every AAD length up to 40,
 * each buffer ending at a guard page (plaintext, ciphertext, AAD, nonce,
 * tag). */
TEST(gcm_stays_in_its_buffers)
{
    xr_gcm_impl_t impls[2];
    int nimpl = need_gcm(impls);
    crypto_aead_aes256gcm_state *st = sodium_malloc(sizeof(*st));
    unsigned char key[32], want_tag[16];
    ASSERT_NOT_NULL(st);
    randombytes_buf(key, sizeof(key));
    crypto_aead_aes256gcm_beforenm(st, key);
    unsigned char *nonce = guarded(12), *tag = guarded(16);
    randombytes_buf(nonce, 12);
    for (int im = 0; im < nimpl; im++) {
        printf("# %s\n", xr_gcm_impl_name(impls[im]));
        xr_gcm_key_t *k = xr_gcm_new_impl(key, impls[im]);
        ASSERT_NOT_NULL(k);
        for (size_t n = 0; n <= 560; n++) {
            size_t al = n % 41;
            unsigned char *m = guarded(n), *c = guarded(n), *aad = guarded(al);
            unsigned char *want = malloc(n + 1);
            ASSERT_NOT_NULL(want);
            randombytes_buf(m, n);
            randombytes_buf(aad, al);
            crypto_aead_aes256gcm_encrypt_detached_afternm(want, want_tag, NULL, m, n, aad, al,
                                                           NULL, nonce, st);
            xr_gcm_seal(k, c, tag, m, n, aad, al, nonce);
            if (memcmp(c, want, n) != 0 || memcmp(tag, want_tag, 16) != 0)
                FAIL("%s: seal differs from libsodium at length %zu, aad %zu",
                     xr_gcm_impl_name(impls[im]), n, al);
            ASSERT_EQ(xr_gcm_open(k, c, c, n, tag, aad, al, nonce), 0);
            ASSERT_MEMEQ(c, m, n);
            unguard(m, n);
            unguard(c, n);
            unguard(aad, al);
            free(want);
        }
        xr_gcm_free(k);
    }
    unguard(nonce, 12);
    unguard(tag, 16);
    sodium_free(st);
}

/* Refusing is an answer the caller must be able to ask for. */
TEST(gcm_env_off_switch)
{
    if (sodium_init() < 0)
        FAIL("sodium_init");
    setenv("XRAYD_AES", "sodium", 1);
    ASSERT_EQ(xr_gcm_impl(), XR_GCM_SODIUM);
    ASSERT_EQ(xr_gcm_available(), 0);
    ASSERT_STREQ(xr_gcm_impl_name(xr_gcm_impl()), "libsodium");
    unsigned char key[32] = {0};
    ASSERT_NULL(xr_gcm_new(key));
}

/* Unasked, the widest code the CPU runs carries the records. */
TEST(gcm_default_is_the_widest)
{
    unsetenv("XRAYD_AES");
    xr_gcm_impl_t want = xr_gcm_runs(XR_GCM_AVX512) ? XR_GCM_AVX512
                         : xr_gcm_runs(XR_GCM_AVX2) ? XR_GCM_AVX2
                                                    : XR_GCM_SODIUM;
    printf("# %s\n", xr_gcm_impl_name(want));
    ASSERT_EQ(xr_gcm_impl(), want);
    ASSERT_EQ(xr_gcm_available(), want != XR_GCM_SODIUM);
    /* A CPU that runs the 512-bit code runs the 256-bit code too. */
    ASSERT_TRUE(!xr_gcm_runs(XR_GCM_AVX512) || xr_gcm_runs(XR_GCM_AVX2));
    ASSERT_EQ(xr_gcm_runs(XR_GCM_SODIUM), 0);
    unsigned char key[32] = {0};
    ASSERT_NULL(xr_gcm_new_impl(key, XR_GCM_SODIUM));
}

/* XRAYD_AES=avx2 makes an AVX-512 machine test the 256-bit code. */
TEST(gcm_env_avx2)
{
    setenv("XRAYD_AES", "avx2", 1);
    xr_gcm_impl_t want = xr_gcm_runs(XR_GCM_AVX2) ? XR_GCM_AVX2 : XR_GCM_SODIUM;
    ASSERT_EQ(xr_gcm_impl(), want);
    ASSERT_STREQ(xr_gcm_impl_name(xr_gcm_impl()), want == XR_GCM_AVX2 ? "vaes-avx2" : "libsodium");
    unsigned char key[32] = {0};
    xr_gcm_key_t *k = xr_gcm_new(key);
    ASSERT_EQ(k != NULL, want == XR_GCM_AVX2);
    xr_gcm_free(k);
}
