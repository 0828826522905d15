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
 * The algorithm is written twice, for two register widths.  With AVX-512
 * each 512-bit register carries four blocks; with AVX2 (CPUs that have
 * VAES and VPCLMULQDQ but not AVX-512, such as AMD's Zen 3) each 256-bit
 * register carries two.  Both process a record 256 bytes (16 blocks) per
 * step: the counter blocks through the 14 AES rounds, XORed with the
 * input, and 256 bytes of ciphertext folded into GHASH between the rounds,
 * so that the multiplier and the AES unit work at once.  The tail (under
 * 256 bytes) must not read or write past the caller's buffers: AVX-512
 * masks its loads and stores byte by byte; AVX2's masks go by 4-byte
 * words, so its last partial 32 bytes pass through a stack buffer that is
 * wiped afterwards.  The key schedule and the 128-bit helpers are shared,
 * built for the instructions both paths have.
 */
#include "common/gcm.h"

#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

struct xr_gcm_key {
    unsigned char rk[15][16];
    unsigned char hpow[16][16]; /* hpow[i] = H^(16-i), byte-reflected */
    xr_gcm_impl_t impl;         /* whose code seals and opens with it */
};

#if defined(__x86_64__) && defined(__GNUC__)

#include <cpuid.h>
#include <immintrin.h>

/* A function is inlined only into one whose instruction set includes its
 * own.  The helpers both paths share are built for what both have, so
 * either can inline them and none, on a CPU without AVX-512, issues an
 * AVX-512 instruction. */
#define XR_GCM_TARGET_BASE __attribute__((target("aes,pclmul,ssse3,sse4.1,avx2")))
#define XR_GCM_TARGET_256  __attribute__((target("aes,pclmul,ssse3,sse4.1,avx2,vaes,vpclmulqdq")))
#define XR_GCM_TARGET_512                                                                          \
    __attribute__((target("aes,pclmul,ssse3,sse4.1,avx2,avx512f,avx512bw,avx512vl,avx512dq,"       \
                          "vaes,vpclmulqdq")))

static int xr__gcm_cpu(xr_gcm_impl_t impl)
{
    /* clang 14 knows no "vaes" for __builtin_cpu_supports: read VAES
     * (bit 9) and VPCLMULQDQ (bit 10) of CPUID.(EAX=7,ECX=0):ECX directly.
     * The builtins for AVX2 and AVX-512 also check that the OS saves the
     * registers (XGETBV). */
    unsigned a, b, c, d;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d) || !(c & (1u << 9)) || !(c & (1u << 10)))
        return 0;
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("aes") || !__builtin_cpu_supports("pclmul") ||
        !__builtin_cpu_supports("avx2"))
        return 0;
    if (impl == XR_GCM_AVX2)
        return 1;
    return impl == XR_GCM_AVX512 && __builtin_cpu_supports("avx512f") &&
           __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("avx512dq");
}

XR_GCM_TARGET_BASE static inline __m128i xr__rev(__m128i x)
{
    return _mm_shuffle_epi8(x, _mm_set_epi8(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
}

/* ------------------------------------------------------------ key schedule */

XR_GCM_TARGET_BASE static inline __m128i xr__expand_a(__m128i a, __m128i assist)
{
    assist = _mm_shuffle_epi32(assist, 0xff);
    a = _mm_xor_si128(a, _mm_slli_si128(a, 4));
    a = _mm_xor_si128(a, _mm_slli_si128(a, 8));
    return _mm_xor_si128(a, assist);
}

XR_GCM_TARGET_BASE static inline __m128i xr__expand_b(__m128i a, __m128i b)
{
    __m128i assist = _mm_shuffle_epi32(_mm_aeskeygenassist_si128(a, 0), 0xaa);
    b = _mm_xor_si128(b, _mm_slli_si128(b, 4));
    b = _mm_xor_si128(b, _mm_slli_si128(b, 8));
    return _mm_xor_si128(b, assist);
}

/* FIPS-197 key expansion for a 256-bit key; aeskeygenassist needs its
 * round constant as an immediate, hence the unrolled steps. */
XR_GCM_TARGET_BASE static void xr__expand(const unsigned char key[32], __m128i rk[15])
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

XR_GCM_TARGET_BASE static inline __m128i xr__aes1(const __m128i rk[15], __m128i x)
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
XR_GCM_TARGET_BASE static inline __m128i xr__reduce(__m128i lo, __m128i mid, __m128i hi)
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

XR_GCM_TARGET_BASE static inline __m128i xr__gfmul(__m128i a, __m128i b)
{
    __m128i lo = _mm_clmulepi64_si128(a, b, 0x00);
    __m128i hi = _mm_clmulepi64_si128(a, b, 0x11);
    __m128i mid = _mm_xor_si128(_mm_clmulepi64_si128(a, b, 0x01), _mm_clmulepi64_si128(a, b, 0x10));
    return xr__reduce(lo, mid, hi);
}

/* J0 for a 96-bit nonce: the nonce, then the 32-bit counter 1. */
XR_GCM_TARGET_BASE static inline __m128i xr__j0(const unsigned char nonce[12])
{
    unsigned char j0b[16];
    memcpy(j0b, nonce, 12);
    j0b[12] = j0b[13] = j0b[14] = 0;
    j0b[15] = 1;
    return _mm_loadu_si128((const __m128i *) j0b);
}

/* GHASH of the additional data, from y = 0.  It is public, so its last
 * partial block may go through a buffer that is not wiped. */
XR_GCM_TARGET_BASE static inline __m128i xr__ghash_aad(__m128i h, const unsigned char *aad,
                                                       size_t aadlen)
{
    __m128i y = _mm_setzero_si128();
    size_t i = 0;
    for (; aadlen - i >= 16; i += 16)
        y = xr__gfmul(_mm_xor_si128(y, xr__rev(_mm_loadu_si128((const __m128i *) (aad + i)))), h);
    if (i < aadlen) {
        unsigned char ab[16] = {0};
        memcpy(ab, aad + i, aadlen - i);
        y = xr__gfmul(_mm_xor_si128(y, xr__rev(_mm_loadu_si128((const __m128i *) ab))), h);
    }
    return y;
}

/* The tag: the lengths block folded in, then E(K, J0) added. */
XR_GCM_TARGET_BASE static inline void xr__tag(__m128i y, __m128i h, size_t aadlen, size_t total,
                                              __m128i ekj0, unsigned char tag[16])
{
    __m128i lens =
        _mm_set_epi64x((long long) ((uint64_t) aadlen * 8), (long long) ((uint64_t) total * 8));
    y = xr__gfmul(_mm_xor_si128(y, lens), h);
    _mm_storeu_si128((__m128i *) tag, _mm_xor_si128(xr__rev(y), ekj0));
}

XR_GCM_TARGET_BASE static int xr__gcm_init(xr_gcm_key_t *k, const unsigned char key[32])
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

/* ------------------------------------------- 512-bit registers (AVX-512) */

XR_GCM_TARGET_512 static inline __m512i xr__rev4(__m512i x)
{
    /* vpshufb works within each 128-bit lane: every block is reversed. */
    return _mm512_shuffle_epi8(x, _mm512_broadcast_i32x4(_mm_set_epi8(0, 1, 2, 3, 4, 5, 6, 7, 8, 9,
                                                                      10, 11, 12, 13, 14, 15)));
}

XR_GCM_TARGET_512 static inline __m128i xr__fold(__m512i v)
{
    __m256i t = _mm256_xor_si256(_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64(v, 1));
    return _mm_xor_si128(_mm256_castsi256_si128(t), _mm256_extracti128_si256(t, 1));
}

/* Accumulate the unreduced products of four blocks and four powers. */
XR_GCM_TARGET_512 static inline void xr__clmul4(__m512i x, __m512i h, __m512i *lo, __m512i *mid,
                                                __m512i *hi)
{
    *lo = _mm512_xor_si512(*lo, _mm512_clmulepi64_epi128(x, h, 0x00));
    *hi = _mm512_xor_si512(*hi, _mm512_clmulepi64_epi128(x, h, 0x11));
    *mid = _mm512_ternarylogic_epi64(*mid, _mm512_clmulepi64_epi128(x, h, 0x01),
                                     _mm512_clmulepi64_epi128(x, h, 0x10), 0x96);
}

/* y <- (y ^ X1) H^m ^ X2 H^(m-1) ^ ... ^ Xm H for the m (1..16) reflected
 * blocks in x[0..3], four per register; lanes past m must be zero. */
XR_GCM_TARGET_512 static inline __m128i xr__ghash(const xr_gcm_key_t *k, __m128i y, __m512i x[4],
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

/* Keystream for four blocks of counters (reflected) in c. */
XR_GCM_TARGET_512 static inline __m512i xr__aes4(const __m512i rk[15], __m512i c, __m512i rev)
{
    __m512i b = _mm512_xor_si512(_mm512_shuffle_epi8(c, rev), rk[0]);
#pragma GCC unroll 16
    for (int r = 1; r < 14; r++)
        b = _mm512_aesenc_epi128(b, rk[r]);
    return _mm512_aesenclast_epi128(b, rk[14]);
}

XR_GCM_TARGET_512 static void xr__gcm_crypt512(const xr_gcm_key_t *k, unsigned char *out,
                                               const unsigned char *in, size_t n,
                                               const unsigned char *aad, size_t aadlen,
                                               const unsigned char nonce[12], int decrypt,
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

    __m128i j0 = xr__j0(nonce);
    __m128i ekj0 = xr__aes1(rk1, j0);

    /* Reflected, the 32-bit big-endian counter is the low dword of each
     * lane, so a 32-bit add is GCM's inc32; data blocks start at J0 + 1. */
    __m512i ctr =
        _mm512_add_epi32(_mm512_broadcast_i32x4(xr__rev(j0)),
                         _mm512_set_epi32(0, 0, 0, 4, 0, 0, 0, 3, 0, 0, 0, 2, 0, 0, 0, 1));
    const __m512i four = _mm512_set_epi32(0, 0, 0, 4, 0, 0, 0, 4, 0, 0, 0, 4, 0, 0, 0, 4);

    __m128i y = xr__ghash_aad(h, aad, aadlen);

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

    xr__tag(y, h, aadlen, total, ekj0, tag);
    sodium_memzero(rk1, sizeof(rk1));
}

/* --------------------------------------------- 256-bit registers (AVX2) */

XR_GCM_TARGET_256 static inline __m256i xr__rev2(__m256i x)
{
    /* vpshufb works within each 128-bit lane: both blocks are reversed. */
    return _mm256_shuffle_epi8(x, _mm256_broadcastsi128_si256(_mm_set_epi8(
                                      0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15)));
}

/* y in the low lane, zero in the high one. */
XR_GCM_TARGET_256 static inline __m256i xr__lane0(__m128i y)
{
    return _mm256_inserti128_si256(_mm256_setzero_si256(), y, 0);
}

XR_GCM_TARGET_256 static inline __m128i xr__fold2(__m256i v)
{
    return _mm_xor_si128(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
}

/* Accumulate the unreduced products of two blocks and two powers: four
 * multiplications as on AVX-512, since Karatsuba's three measured no
 * faster on Zen 3. */
XR_GCM_TARGET_256 static inline void xr__clmul2(__m256i x, __m256i h, __m256i *lo, __m256i *mid,
                                                __m256i *hi)
{
    *lo = _mm256_xor_si256(*lo, _mm256_clmulepi64_epi128(x, h, 0x00));
    *hi = _mm256_xor_si256(*hi, _mm256_clmulepi64_epi128(x, h, 0x11));
    *mid = _mm256_xor_si256(*mid, _mm256_xor_si256(_mm256_clmulepi64_epi128(x, h, 0x01),
                                                   _mm256_clmulepi64_epi128(x, h, 0x10)));
}

/* y <- (y ^ X1) H^m ^ X2 H^(m-1) ^ ... ^ Xm H for the m (1..16) reflected
 * blocks in x[0..7], two per register; lanes past m must be zero. */
XR_GCM_TARGET_256 static inline __m128i xr__ghash2(const xr_gcm_key_t *k, __m128i y, __m256i x[8],
                                                   unsigned m)
{
    const unsigned char *pw = k->hpow[16 - m];
    __m256i lo = _mm256_setzero_si256(), mid = lo, hi = lo;
    x[0] = _mm256_xor_si256(x[0], xr__lane0(y));
#pragma GCC unroll 8
    for (unsigned g = 0; g * 2 < m; g++) {
        /* For an odd m the last group takes one power, so as not to read
         * past hpow[15]. */
        __m256i h = m - g * 2 >= 2 ? _mm256_loadu_si256((const __m256i *) (pw + 32 * g))
                                   : xr__lane0(_mm_loadu_si128((const __m128i *) (pw + 32 * g)));
        xr__clmul2(x[g], h, &lo, &mid, &hi);
    }
    return xr__reduce(xr__fold2(lo), xr__fold2(mid), xr__fold2(hi));
}

/* Keystream for two blocks of counters (reflected) in c. */
XR_GCM_TARGET_256 static inline __m256i xr__aes2(const __m256i rk[15], __m256i c)
{
    __m256i b = _mm256_xor_si256(xr__rev2(c), rk[0]);
#pragma GCC unroll 16
    for (int r = 1; r < 14; r++)
        b = _mm256_aesenc_epi128(b, rk[r]);
    return _mm256_aesenclast_epi128(b, rk[14]);
}

/* One 256-byte step, stitched as on AVX-512: eight registers of counters
 * go through the rounds together and, if hash, the GHASH of the 256 bytes
 * at gh runs between them, a register after each of the first eight
 * rounds.  hash is a constant wherever this is inlined: a test of it
 * between the rounds let the compiler hoist every multiplication ahead of
 * them, and the two units no longer overlapped. */
XR_GCM_TARGET_256 static inline __attribute__((always_inline)) void
xr__step2(const xr_gcm_key_t *k, const __m256i rk[15], __m256i *ctr, __m128i *y, unsigned char *out,
          const unsigned char *in, const unsigned char *gh, int hash)
{
    const __m256i two = _mm256_set_epi32(0, 0, 0, 2, 0, 0, 0, 2);
    __m256i ks[8], lo = _mm256_setzero_si256(), mid = lo, hi = lo;
#pragma GCC unroll 16
    for (int g = 0; g < 8; g++) {
        ks[g] = _mm256_xor_si256(xr__rev2(*ctr), rk[0]);
        *ctr = _mm256_add_epi32(*ctr, two);
    }
#pragma GCC unroll 16
    for (int r = 1; r < 14; r++) {
#pragma GCC unroll 16
        for (int g = 0; g < 8; g++)
            ks[g] = _mm256_aesenc_epi128(ks[g], rk[r]);
        if (hash && r <= 8) {
            __m256i x = xr__rev2(_mm256_loadu_si256((const __m256i *) (gh + 32 * (r - 1))));
            if (r == 1)
                x = _mm256_xor_si256(x, xr__lane0(*y));
            xr__clmul2(x, _mm256_loadu_si256((const __m256i *) k->hpow[2 * (r - 1)]), &lo, &mid,
                       &hi);
        }
        if (hash && r == 10)
            *y = xr__reduce(xr__fold2(lo), xr__fold2(mid), xr__fold2(hi));
    }
#pragma GCC unroll 16
    for (int g = 0; g < 8; g++) {
        ks[g] = _mm256_aesenclast_epi128(ks[g], rk[14]);
        __m256i d = _mm256_loadu_si256((const __m256i *) (in + 32 * g));
        _mm256_storeu_si256((__m256i *) (out + 32 * g), _mm256_xor_si256(d, ks[g]));
    }
}

XR_GCM_TARGET_256 static void xr__gcm_crypt256(const xr_gcm_key_t *k, unsigned char *out,
                                               const unsigned char *in, size_t n,
                                               const unsigned char *aad, size_t aadlen,
                                               const unsigned char nonce[12], int decrypt,
                                               unsigned char tag[16])
{
    __m256i rk[15];
    __m128i rk1[15];
#pragma GCC unroll 16
    for (int i = 0; i < 15; i++) {
        rk1[i] = _mm_loadu_si128((const __m128i *) k->rk[i]);
        rk[i] = _mm256_broadcastsi128_si256(rk1[i]);
    }
    const __m128i h = _mm_loadu_si128((const __m128i *) k->hpow[15]);
    const size_t total = n;

    __m128i j0 = xr__j0(nonce);
    __m128i ekj0 = xr__aes1(rk1, j0);

    /* Reflected, the 32-bit big-endian counter is the low dword of each
     * lane, so a 32-bit add is GCM's inc32; data blocks start at J0 + 1. */
    __m256i ctr = _mm256_add_epi32(_mm256_broadcastsi128_si256(xr__rev(j0)),
                                   _mm256_set_epi32(0, 0, 0, 2, 0, 0, 0, 1));
    const __m256i two = _mm256_set_epi32(0, 0, 0, 2, 0, 0, 0, 2);

    __m128i y = xr__ghash_aad(h, aad, aadlen);

    if (decrypt) {
        /* Opening hashes each step's own input, read before the step
         * writes its output over it (in place). */
        for (; n >= 256; in += 256, out += 256, n -= 256)
            xr__step2(k, rk, &ctr, &y, out, in, in, 1);
    } else if (n >= 256) {
        /* Sealing hashes the previous step's output, loaded again: with
         * sixteen registers there is no room to keep it. */
        xr__step2(k, rk, &ctr, &y, out, in, NULL, 0);
        for (in += 256, out += 256, n -= 256; n >= 256; in += 256, out += 256, n -= 256)
            xr__step2(k, rk, &ctr, &y, out, in, out - 256, 1);
        __m256i x[8];
#pragma GCC unroll 8
        for (int g = 0; g < 8; g++)
            x[g] = xr__rev2(_mm256_loadu_si256((const __m256i *) (out - 256 + 32 * g)));
        y = xr__ghash2(k, y, x, 16);
    }
    if (n > 0) {
        __m256i x[8];
        unsigned m = (unsigned) ((n + 15) / 16);
        for (unsigned g = 0; g < 8; g++)
            x[g] = _mm256_setzero_si256();
        for (unsigned g = 0; g * 32 < n; g++) {
            size_t bytes = n - g * 32 < 32 ? n - g * 32 : 32;
            __m256i ks = xr__aes2(rk, ctr), d, o;
            ctr = _mm256_add_epi32(ctr, two);
            if (bytes == 32) {
                d = _mm256_loadu_si256((const __m256i *) (in + 32 * g));
                o = _mm256_xor_si256(d, ks);
                _mm256_storeu_si256((__m256i *) (out + 32 * g), o);
            } else {
                /* AVX2 masks by 4-byte words: the last bytes go through a
                 * zero-padded buffer, wiped after since it held plaintext. */
                unsigned char b[32] = {0};
                memcpy(b, in + 32 * g, bytes);
                d = _mm256_loadu_si256((const __m256i *) b);
                /* GHASH pads the last block with zeros, not keystream. */
                __m256i keep = _mm256_cmpgt_epi8(
                    _mm256_set1_epi8((char) bytes),
                    _mm256_setr_epi8(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17,
                                     18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31));
                o = _mm256_and_si256(_mm256_xor_si256(d, ks), keep);
                _mm256_storeu_si256((__m256i *) b, o);
                memcpy(out + 32 * g, b, bytes);
                sodium_memzero(b, sizeof(b));
            }
            x[g] = xr__rev2(decrypt ? d : o);
        }
        y = xr__ghash2(k, y, x, m);
    }

    xr__tag(y, h, aadlen, total, ekj0, tag);
    sodium_memzero(rk1, sizeof(rk1));
    sodium_memzero(rk, sizeof(rk));
}

/* ------------------------------------------------------------ dispatch */

int xr_gcm_runs(xr_gcm_impl_t impl)
{
    /* Bit i set: this CPU runs implementation i.  Relaxed atomics make the
     * race between threads that find it out at once harmless. */
    static atomic_int cached = -1;
    int c = atomic_load_explicit(&cached, memory_order_relaxed);
    if (c < 0) {
        c = (xr__gcm_cpu(XR_GCM_AVX2) << XR_GCM_AVX2) |
            (xr__gcm_cpu(XR_GCM_AVX512) << XR_GCM_AVX512);
        atomic_store_explicit(&cached, c, memory_order_relaxed);
    }
    return (impl == XR_GCM_AVX2 || impl == XR_GCM_AVX512) && ((c >> impl) & 1);
}

static void xr__gcm_crypt(const xr_gcm_key_t *k, unsigned char *out, const unsigned char *in,
                          size_t n, const unsigned char *aad, size_t aadlen,
                          const unsigned char nonce[12], int decrypt, unsigned char tag[16])
{
    if (k->impl == XR_GCM_AVX512)
        xr__gcm_crypt512(k, out, in, n, aad, aadlen, nonce, decrypt, tag);
    else
        xr__gcm_crypt256(k, out, in, n, aad, aadlen, nonce, decrypt, tag);
}

#else /* not x86-64 with GNU C: libsodium does all the work */

int xr_gcm_runs(xr_gcm_impl_t impl)
{
    (void) impl;
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

xr_gcm_impl_t xr_gcm_impl(void)
{
    static atomic_int cached = -1;
    int c = atomic_load_explicit(&cached, memory_order_relaxed);
    if (c < 0) {
        const char *e = getenv("XRAYD_AES");
        if (e != NULL && strcmp(e, "sodium") == 0)
            c = XR_GCM_SODIUM;
        else if (xr_gcm_runs(XR_GCM_AVX512) && !(e != NULL && strcmp(e, "avx2") == 0))
            c = XR_GCM_AVX512;
        else if (xr_gcm_runs(XR_GCM_AVX2))
            c = XR_GCM_AVX2;
        else
            c = XR_GCM_SODIUM;
        atomic_store_explicit(&cached, c, memory_order_relaxed);
    }
    return (xr_gcm_impl_t) c;
}

const char *xr_gcm_impl_name(xr_gcm_impl_t impl)
{
    switch (impl) {
    case XR_GCM_AVX2: return "vaes-avx2";
    case XR_GCM_AVX512: return "vaes-avx512";
    default: return "libsodium";
    }
}

int xr_gcm_available(void)
{
    return xr_gcm_impl() != XR_GCM_SODIUM;
}

xr_gcm_key_t *xr_gcm_new_impl(const unsigned char key[32], xr_gcm_impl_t impl)
{
    if (!xr_gcm_runs(impl))
        return NULL;
    /* Rounded up to the 64-byte alignment that suits 512-bit loads, as
     * aligned_alloc wants a multiple of it. */
    xr_gcm_key_t *k = aligned_alloc(64, (sizeof(*k) + 63) / 64 * 64);
    if (k == NULL)
        return NULL;
    if (xr__gcm_init(k, key) < 0) {
        free(k);
        return NULL;
    }
    k->impl = impl;
    return k;
}

xr_gcm_key_t *xr_gcm_new(const unsigned char key[32])
{
    return xr_gcm_new_impl(key, xr_gcm_impl());
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
