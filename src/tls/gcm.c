/*
 * gcm.c: AES-256-GCM with VAES and VPCLMULQDQ (see gcm.h for why).
 *
 * The algorithm is NIST SP 800-38D; the GHASH arithmetic is the one of
 * Gueron and Kounavis, "Intel Carry-Less Multiplication Instruction and
 * its Usage for Computing the GCM Mode" (2014): blocks are byte-reversed,
 * multiplied with PCLMULQDQ, the 256-bit product shifted left by one bit
 * and reduced modulo x^128 + x^7 + x^2 + x + 1.  Multiplication is linear,
 * so sixteen products are summed unreduced and reduced once ("aggregated
 * reduction"), using the precomputed powers H^16..H^1.
 *
 * Each 512-bit register carries four blocks.  A record is processed 256
 * bytes (16 blocks) per step: four counter registers through the 14 AES
 * rounds, XORed with the input, and the ciphertext folded into GHASH.  The
 * tail (under 256 bytes) uses byte-masked loads and stores, so nothing
 * reads or writes past the caller's buffers.
 */
#include "tls/gcm.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

struct xr_gcm_key {
    unsigned char rk[15][16];
    unsigned char hpow[16][16]; /* hpow[i] = H^(16-i), byte-reflected */
};

#if defined(__x86_64__) && defined(__GNUC__)

#include <cpuid.h>
#include <immintrin.h>

#define XR_GCM_TARGET                                                                              \
    __attribute__((target("aes,pclmul,ssse3,sse4.1,avx2,avx512f,avx512bw,avx512vl,avx512dq,"       \
                          "vaes,vpclmulqdq")))

static int xr__gcm_cpu(void)
{
    /* clang 14 knows no "vaes" for __builtin_cpu_supports: read VAES
     * (bit 9) and VPCLMULQDQ (bit 10) of CPUID.(EAX=7,ECX=0):ECX directly.
     * The builtins for AVX-512 also check that the OS saves the registers. */
    unsigned a, b, c, d;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d) || !(c & (1u << 9)) || !(c & (1u << 10)))
        return 0;
    __builtin_cpu_init();
    return __builtin_cpu_supports("aes") && __builtin_cpu_supports("pclmul") &&
           __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
}

XR_GCM_TARGET static inline __m128i xr__rev(__m128i x)
{
    return _mm_shuffle_epi8(x, _mm_set_epi8(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
}

XR_GCM_TARGET static inline __m512i xr__rev4(__m512i x)
{
    /* vpshufb works within each 128-bit lane: every block is reversed. */
    return _mm512_shuffle_epi8(x, _mm512_broadcast_i32x4(_mm_set_epi8(0, 1, 2, 3, 4, 5, 6, 7, 8, 9,
                                                                      10, 11, 12, 13, 14, 15)));
}

/* ------------------------------------------------------------ key schedule */

XR_GCM_TARGET static inline __m128i xr__expand_a(__m128i a, __m128i assist)
{
    assist = _mm_shuffle_epi32(assist, 0xff);
    a = _mm_xor_si128(a, _mm_slli_si128(a, 4));
    a = _mm_xor_si128(a, _mm_slli_si128(a, 8));
    return _mm_xor_si128(a, assist);
}

XR_GCM_TARGET static inline __m128i xr__expand_b(__m128i a, __m128i b)
{
    __m128i assist = _mm_shuffle_epi32(_mm_aeskeygenassist_si128(a, 0), 0xaa);
    b = _mm_xor_si128(b, _mm_slli_si128(b, 4));
    b = _mm_xor_si128(b, _mm_slli_si128(b, 8));
    return _mm_xor_si128(b, assist);
}

/* FIPS-197 key expansion for a 256-bit key; aeskeygenassist needs its
 * round constant as an immediate, hence the unrolled steps. */
XR_GCM_TARGET static void xr__expand(const unsigned char key[32], __m128i rk[15])
{
    __m128i a = _mm_loadu_si128((const __m128i *) key);
    __m128i b = _mm_loadu_si128((const __m128i *) (key + 16));
    rk[0] = a;
    rk[1] = b;
#define XR__STEP(i, rcon)                                                                          \
    a = xr__expand_a(a, _mm_aeskeygenassist_si128(b, rcon));                                       \
    rk[i] = a;                                                                                     \
    if ((i) < 14) {                                                                                \
        b = xr__expand_b(a, b);                                                                    \
        rk[(i) + 1] = b;                                                                           \
    }
    XR__STEP(2, 0x01)
    XR__STEP(4, 0x02)
    XR__STEP(6, 0x04)
    XR__STEP(8, 0x08)
    XR__STEP(10, 0x10)
    XR__STEP(12, 0x20)
    XR__STEP(14, 0x40)
#undef XR__STEP
}

XR_GCM_TARGET static inline __m128i xr__aes1(const __m128i rk[15], __m128i x)
{
    x = _mm_xor_si128(x, rk[0]);
#pragma GCC unroll 16
    for (int r = 1; r < 14; r++)
        x = _mm_aesenc_si128(x, rk[r]);
    return _mm_aesenclast_si128(x, rk[14]);
}

/* ------------------------------------------------------------------ GHASH */

/* [hi:lo] + mid * 2^64 is a 256-bit carry-less product of reflected
 * operands: shift it left by one and reduce it to 128 bits. */
XR_GCM_TARGET static inline __m128i xr__reduce(__m128i lo, __m128i mid, __m128i hi)
{
    lo = _mm_xor_si128(lo, _mm_slli_si128(mid, 8));
    hi = _mm_xor_si128(hi, _mm_srli_si128(mid, 8));

    __m128i c_lo = _mm_srli_epi32(lo, 31), c_hi = _mm_srli_epi32(hi, 31);
    lo = _mm_slli_epi32(lo, 1);
    hi = _mm_slli_epi32(hi, 1);
    hi = _mm_or_si128(hi, _mm_srli_si128(c_lo, 12));
    hi = _mm_or_si128(hi, _mm_slli_si128(c_hi, 4));
    lo = _mm_or_si128(lo, _mm_slli_si128(c_lo, 4));

    __m128i t = _mm_xor_si128(_mm_xor_si128(_mm_slli_epi32(lo, 31), _mm_slli_epi32(lo, 30)),
                              _mm_slli_epi32(lo, 25));
    __m128i carry = _mm_srli_si128(t, 4);
    lo = _mm_xor_si128(lo, _mm_slli_si128(t, 12));
    __m128i u = _mm_xor_si128(_mm_xor_si128(_mm_srli_epi32(lo, 1), _mm_srli_epi32(lo, 2)),
                              _mm_srli_epi32(lo, 7));
    u = _mm_xor_si128(u, carry);
    lo = _mm_xor_si128(lo, u);
    return _mm_xor_si128(hi, lo);
}

XR_GCM_TARGET static inline __m128i xr__gfmul(__m128i a, __m128i b)
{
    __m128i lo = _mm_clmulepi64_si128(a, b, 0x00);
    __m128i hi = _mm_clmulepi64_si128(a, b, 0x11);
    __m128i mid = _mm_xor_si128(_mm_clmulepi64_si128(a, b, 0x01), _mm_clmulepi64_si128(a, b, 0x10));
    return xr__reduce(lo, mid, hi);
}

XR_GCM_TARGET static inline __m128i xr__fold(__m512i v)
{
    __m256i t = _mm256_xor_si256(_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64(v, 1));
    return _mm_xor_si128(_mm256_castsi256_si128(t), _mm256_extracti128_si256(t, 1));
}

/* Accumulate the unreduced products of four blocks and four powers. */
XR_GCM_TARGET static inline void xr__clmul4(__m512i x, __m512i h, __m512i *lo, __m512i *mid,
                                            __m512i *hi)
{
    *lo = _mm512_xor_si512(*lo, _mm512_clmulepi64_epi128(x, h, 0x00));
    *hi = _mm512_xor_si512(*hi, _mm512_clmulepi64_epi128(x, h, 0x11));
    *mid = _mm512_ternarylogic_epi64(*mid, _mm512_clmulepi64_epi128(x, h, 0x01),
                                     _mm512_clmulepi64_epi128(x, h, 0x10), 0x96);
}

/* y <- (y ^ X1) H^m ^ X2 H^(m-1) ^ ... ^ Xm H for the m (1..16) reflected
 * blocks in x[0..3], four per register; lanes past m must be zero. */
XR_GCM_TARGET static inline __m128i xr__ghash(const xr_gcm_key_t *k, __m128i y, __m512i x[4],
                                              unsigned m)
{
    const unsigned char *pw = k->hpow[16 - m];
    __m512i lo = _mm512_setzero_si512(), mid = lo, hi = lo;
    x[0] = _mm512_xor_si512(x[0], _mm512_inserti32x4(_mm512_setzero_si512(), y, 0));
#pragma GCC unroll 4
    for (unsigned g = 0; g * 4 < m; g++) {
        unsigned left = m - g * 4;
        __mmask8 lanes = left >= 4 ? 0xff : (__mmask8) ((1u << (2 * left)) - 1);
        /* Masked, so the last group never reads past hpow[15]. */
        __m512i h = _mm512_maskz_loadu_epi64(lanes, pw + 64 * g);
        xr__clmul4(x[g], h, &lo, &mid, &hi);
    }
    return xr__reduce(xr__fold(lo), xr__fold(mid), xr__fold(hi));
}

/* ---------------------------------------------------------------- the AEAD */

XR_GCM_TARGET static int xr__gcm_init(xr_gcm_key_t *k, const unsigned char key[32])
{
    __m128i rk[15];
    xr__expand(key, rk);
    for (int i = 0; i < 15; i++)
        _mm_storeu_si128((__m128i *) k->rk[i], rk[i]);
    __m128i h = xr__rev(xr__aes1(rk, _mm_setzero_si128())), p = h;
    _mm_storeu_si128((__m128i *) k->hpow[15], h);
    for (int i = 14; i >= 0; i--) {
        p = xr__gfmul(p, h);
        _mm_storeu_si128((__m128i *) k->hpow[i], p);
    }
    sodium_memzero(rk, sizeof(rk));
    return 0;
}

/* Keystream for four blocks of counters (reflected) in c. */
XR_GCM_TARGET static inline __m512i xr__aes4(const __m512i rk[15], __m512i c, __m512i rev)
{
    __m512i b = _mm512_xor_si512(_mm512_shuffle_epi8(c, rev), rk[0]);
#pragma GCC unroll 16
    for (int r = 1; r < 14; r++)
        b = _mm512_aesenc_epi128(b, rk[r]);
    return _mm512_aesenclast_epi128(b, rk[14]);
}

XR_GCM_TARGET static void xr__gcm_crypt(const xr_gcm_key_t *k, unsigned char *out,
                                        const unsigned char *in, size_t n, const unsigned char *aad,
                                        size_t aadlen, const unsigned char nonce[12], int decrypt,
                                        unsigned char tag[16])
{
    const __m512i rev =
        _mm512_broadcast_i32x4(_mm_set_epi8(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
    __m512i rk[15];
    __m128i rk1[15];
#pragma GCC unroll 16
    for (int i = 0; i < 15; i++) {
        rk1[i] = _mm_loadu_si128((const __m128i *) k->rk[i]);
        rk[i] = _mm512_broadcast_i32x4(rk1[i]);
    }
    const __m128i h = _mm_loadu_si128((const __m128i *) k->hpow[15]);
    const size_t total = n;

    unsigned char j0b[16];
    memcpy(j0b, nonce, 12);
    j0b[12] = j0b[13] = j0b[14] = 0;
    j0b[15] = 1;
    __m128i j0 = _mm_loadu_si128((const __m128i *) j0b);
    __m128i ekj0 = xr__aes1(rk1, j0);

    /* Reflected, the 32-bit big-endian counter is the low dword of each
     * lane, so a 32-bit add is GCM's inc32; data blocks start at J0 + 1. */
    __m512i ctr =
        _mm512_add_epi32(_mm512_broadcast_i32x4(xr__rev(j0)),
                         _mm512_set_epi32(0, 0, 0, 4, 0, 0, 0, 3, 0, 0, 0, 2, 0, 0, 0, 1));
    const __m512i four = _mm512_set_epi32(0, 0, 0, 4, 0, 0, 0, 4, 0, 0, 0, 4, 0, 0, 0, 4);

    __m128i y = _mm_setzero_si128();
    for (size_t i = 0; i < aadlen; i += 16) {
        size_t l = aadlen - i < 16 ? aadlen - i : 16;
        __m128i a = _mm_maskz_loadu_epi8((__mmask16) ((1u << l) - 1), aad + i);
        y = xr__gfmul(_mm_xor_si128(y, xr__rev(a)), h);
    }

    /* Stitched: the GHASH of one 256-byte step's ciphertext runs between
     * the AES rounds of the next, so the multiplier (one port) and the AES
     * unit (another) work at once.  An AES round has a latency of several
     * cycles but issues every cycle: the rounds go outermost, four
     * registers in flight. */
    __m512i prev[4];
    int pending = 0;
    const __m512i h16[4] = {_mm512_loadu_si512(k->hpow[0]), _mm512_loadu_si512(k->hpow[4]),
                            _mm512_loadu_si512(k->hpow[8]), _mm512_loadu_si512(k->hpow[12])};
    while (n >= 256) {
        __m512i ks[4], lo = _mm512_setzero_si512(), mid = lo, hi = lo;
#pragma GCC unroll 16
        for (int g = 0; g < 4; g++) {
            ks[g] = _mm512_xor_si512(_mm512_shuffle_epi8(ctr, rev), rk[0]);
            ctr = _mm512_add_epi32(ctr, four);
        }
        if (pending)
            prev[0] = _mm512_xor_si512(prev[0], _mm512_inserti32x4(_mm512_setzero_si512(), y, 0));
#pragma GCC unroll 16
        for (int r = 1; r < 14; r++) {
#pragma GCC unroll 16
            for (int g = 0; g < 4; g++)
                ks[g] = _mm512_aesenc_epi128(ks[g], rk[r]);
            if (pending && r <= 4)
                xr__clmul4(prev[r - 1], h16[r - 1], &lo, &mid, &hi);
            if (pending && r == 8)
                y = xr__reduce(xr__fold(lo), xr__fold(mid), xr__fold(hi));
        }
#pragma GCC unroll 16
        for (int g = 0; g < 4; g++) {
            ks[g] = _mm512_aesenclast_epi128(ks[g], rk[14]);
            __m512i d = _mm512_loadu_si512(in + 64 * g);
            __m512i o = _mm512_xor_si512(d, ks[g]);
            _mm512_storeu_si512(out + 64 * g, o);
            prev[g] = _mm512_shuffle_epi8(decrypt ? d : o, rev);
        }
        pending = 1;
        in += 256;
        out += 256;
        n -= 256;
    }
    if (pending)
        y = xr__ghash(k, y, prev, 16);
    if (n > 0) {
        __m512i x[4] = {_mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512(),
                        _mm512_setzero_si512()};
        unsigned m = (unsigned) ((n + 15) / 16);
        for (unsigned g = 0; g * 64 < n; g++) {
            size_t bytes = n - g * 64 < 64 ? n - g * 64 : 64;
            __mmask64 mask = bytes == 64 ? ~(__mmask64) 0 : ((__mmask64) 1 << bytes) - 1;
            __m512i ks;
            ks = xr__aes4(rk, ctr, rev);
            ctr = _mm512_add_epi32(ctr, four);
            __m512i d = _mm512_maskz_loadu_epi8(mask, in + 64 * g);
            __m512i o = _mm512_xor_si512(d, ks);
            _mm512_mask_storeu_epi8(out + 64 * g, mask, o);
            /* GHASH pads the last block with zeros, not keystream. */
            x[g] = _mm512_shuffle_epi8(decrypt ? d : _mm512_maskz_mov_epi8(mask, o), rev);
        }
        y = xr__ghash(k, y, x, m);
    }

    __m128i lens =
        _mm_set_epi64x((long long) ((uint64_t) aadlen * 8), (long long) ((uint64_t) total * 8));
    y = xr__gfmul(_mm_xor_si128(y, lens), h);
    _mm_storeu_si128((__m128i *) tag, _mm_xor_si128(xr__rev(y), ekj0));
    sodium_memzero(rk1, sizeof(rk1));
}

int xr_gcm_available(void)
{
    static int cached = -1;
    if (cached < 0) {
        const char *e = getenv("XRAYD_AES");
        cached = (e != NULL && strcmp(e, "sodium") == 0) ? 0 : xr__gcm_cpu();
    }
    return cached;
}

#else /* not x86-64 with GNU C: libsodium does all the work */

int xr_gcm_available(void)
{
    return 0;
}

static int xr__gcm_init(xr_gcm_key_t *k, const unsigned char key[32])
{
    (void) k;
    (void) key;
    return -1;
}

static void xr__gcm_crypt(const xr_gcm_key_t *k, unsigned char *out, const unsigned char *in,
                          size_t n, const unsigned char *aad, size_t aadlen,
                          const unsigned char nonce[12], int decrypt, unsigned char tag[16])
{
    (void) k, (void) out, (void) in, (void) n, (void) aad, (void) aadlen, (void) nonce;
    (void) decrypt, (void) tag;
    abort(); /* unreachable: xr_gcm_new() never returns a key here */
}

#endif

xr_gcm_key_t *xr_gcm_new(const unsigned char key[32])
{
    if (!xr_gcm_available())
        return NULL;
    /* 496 bytes rounded to the 64-byte alignment that suits 512-bit loads. */
    xr_gcm_key_t *k = aligned_alloc(64, 512);
    if (k == NULL)
        return NULL;
    if (xr__gcm_init(k, key) < 0) {
        free(k);
        return NULL;
    }
    return k;
}

void xr_gcm_free(xr_gcm_key_t *k)
{
    if (k == NULL)
        return;
    sodium_memzero(k, sizeof(*k));
    free(k);
}

void xr_gcm_seal(const xr_gcm_key_t *k, unsigned char *c, unsigned char tag[16],
                 const unsigned char *m, size_t n, const unsigned char *aad, size_t aadlen,
                 const unsigned char nonce[12])
{
    xr__gcm_crypt(k, c, m, n, aad, aadlen, nonce, 0, tag);
}

int xr_gcm_open(const xr_gcm_key_t *k, unsigned char *m, const unsigned char *c, size_t n,
                const unsigned char tag[16], const unsigned char *aad, size_t aadlen,
                const unsigned char nonce[12])
{
    unsigned char t[16];
    xr__gcm_crypt(k, m, c, n, aad, aadlen, nonce, 1, t);
    int ok = crypto_verify_16(t, tag) == 0;
    sodium_memzero(t, sizeof(t));
    if (!ok) {
        sodium_memzero(m, n);
        return -1;
    }
    return 0;
}
