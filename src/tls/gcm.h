/*
 * gcm.h: AES-256-GCM on VAES and VPCLMULQDQ (AVX-512) for the record
 * layer's bulk data.
 *
 * Why xrayd carries its own: crypto is 70% of a TLS relay's CPU, and
 * libsodium 1.0.18 (Debian 12) seals AES-256-GCM at 1.6 GB/s on this
 * project's machines against 3.7 GB/s for the OpenSSL its peers use.  The
 * CPUs here have 512-bit AES and carry-less multiply, which seal four
 * blocks per instruction; this file uses them and nothing else.  Where they
 * are missing (older x86, other architectures) record.c stays on
 * libsodium, which is also the reference the unit tests compare against.
 */
#ifndef XR_GCM_H
#define XR_GCM_H

#include <stddef.h>

/* The expanded key: 15 AES round keys and H^16..H^1 for GHASH, in the
 * byte-reflected form the multiplier works in.  Allocate with
 * xr_gcm_new(); it is as secret as the key. */
typedef struct xr_gcm_key xr_gcm_key_t;

/* Does this CPU (and OS) run the vector code?  Cheap after the first call.
 * The environment variable XRAYD_AES=sodium answers no, for tests and for
 * an operator who wants the library implementation. */
int xr_gcm_available(void);

/* NULL on allocation failure or if !xr_gcm_available(). */
xr_gcm_key_t *xr_gcm_new(const unsigned char key[32]);
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
