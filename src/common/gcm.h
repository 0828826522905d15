/*
 * gcm.h: AES-256-GCM on VAES and VPCLMULQDQ, with 512-bit (AVX-512) or
 * 256-bit (AVX2) registers, for the record layer's bulk data.
 *
 * Why xrayd carries its own: crypto is 70% of a TLS relay's CPU, and
 * libsodium 1.0.18 (Debian 12) seals AES-256-GCM at 1.6 GB/s on this
 * project's machines against 3.7 GB/s for the OpenSSL its peers use.  Most
 * CPUs here have 512-bit AES and carry-less multiply, which seal four
 * blocks per instruction.  Others (AMD's Zen 3) have the same instructions
 * on 256-bit registers only, two blocks per instruction, and run the same
 * algorithm at that width.  Where neither is there (older x86, other
 * architectures) record.c stays on libsodium, which is also the reference
 * the unit tests compare against.
 */
#ifndef XR_GCM_H
#define XR_GCM_H

#include <stddef.h>

/* The expanded key: 15 AES round keys and H^16..H^1 for GHASH, in the
 * byte-reflected form the multiplier works in, and which implementation
 * runs it.  Allocate with xr_gcm_new(); it is as secret as the key. */
typedef struct xr_gcm_key xr_gcm_key_t;

/* The implementations, the preferred one last. */
typedef enum {
    XR_GCM_SODIUM = 0, /* libsodium's, in record.c: not this file's */
    XR_GCM_AVX2,       /* VAES/VPCLMULQDQ on 256-bit registers */
    XR_GCM_AVX512,     /* VAES/VPCLMULQDQ on 512-bit registers */
} xr_gcm_impl_t;

/* The one xr_gcm_new() uses: the fastest this CPU (and OS) runs.  The
 * environment variable XRAYD_AES=sodium chooses libsodium, for tests and
 * for an operator who wants the library implementation; XRAYD_AES=avx2
 * chooses the 256-bit code where the CPU has it, so that an AVX-512
 * machine can test it.  Cheap after the first call. */
xr_gcm_impl_t xr_gcm_impl(void);

/* "libsodium", "vaes-avx2" or "vaes-avx512", for xrayd -V and tests. */
const char *xr_gcm_impl_name(xr_gcm_impl_t impl);

/* Is xr_gcm_impl() one of this file's, i.e. will xr_gcm_new() succeed? */
int xr_gcm_available(void);

/* Does this CPU (and OS) run impl's code, whatever XRAYD_AES says?  0 for
 * XR_GCM_SODIUM.  With xr_gcm_new_impl(), this lets the tests and the
 * fuzzer check every implementation the machine has. */
int xr_gcm_runs(xr_gcm_impl_t impl);

/* NULL on allocation failure or if !xr_gcm_available(). */
xr_gcm_key_t *xr_gcm_new(const unsigned char key[32]);
/* The same with impl's code; NULL also if !xr_gcm_runs(impl). */
xr_gcm_key_t *xr_gcm_new_impl(const unsigned char key[32], xr_gcm_impl_t impl);
/* Wipes and frees; NULL is fine. */
void xr_gcm_free(xr_gcm_key_t *k);

/* Encrypt m[0..n) into c (c == m allowed) and write the 16-byte tag. */
void xr_gcm_seal(const xr_gcm_key_t *k, unsigned char *c, unsigned char tag[16],
                 const unsigned char *m, size_t n, const unsigned char *aad, size_t aadlen,
                 const unsigned char nonce[12]);

/* Decrypt c[0..n) into m (m == c allowed) and check the tag in constant
 * time.  Returns 0, or -1 with m[0..n) zeroed if the tag does not match. */
int xr_gcm_open(const xr_gcm_key_t *k, unsigned char *m, const unsigned char *c, size_t n,
                const unsigned char tag[16], const unsigned char *aad, size_t aadlen,
                const unsigned char nonce[12]);

#endif
