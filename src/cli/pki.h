/*
 * pki.h: `xray pki`, a small certificate authority for xrayd.
 *
 *   xray pki init   make a CA: DIR/ca.crt (0644) and DIR/ca.key (0600)
 *   xray pki issue  issue an agent or application certificate from it
 *   xray pki show   print a certificate's identity as xrayd matches it
 *
 * Keys are ECDSA P-256 unless --rsa BITS asks otherwise; certificates are
 * signed with SHA-256.  Files are never overwritten without --force, and
 * keys are created 0600 whatever the umask.
 */
#ifndef XR_PKI_H
#define XR_PKI_H

/* Run `xray pki ...`: argv[0] is "pki".  Prints its own messages and
 * returns the process exit code: 0 success, 1 failure (including a
 * certificate that does not verify), 2 bad usage. */
int xr_pki_main(int argc, char **argv);

#endif /* XR_PKI_H */
