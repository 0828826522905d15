/*
 * acct.h: what the kernel counted on a TCP socket - the bytes the process
 * took from it and gave to it - for resuming a connection another process
 * was serving (see conn.c).  Its own file: <linux/tcp.h>, which has the
 * counters, cannot share a file with glibc's <netinet/tcp.h>.
 */
#ifndef XR_ACCT_H
#define XR_ACCT_H

#include <stdint.h>

typedef struct {
    uint64_t taken; /* tcpi_bytes_received - SIOCINQ - a received FIN */
    uint64_t given; /* tcpi_bytes_acked + SIOCOUTQ - our FIN */
    int state;      /* TCP_ESTABLISHED, ... */
    int fin_in;     /* the peer's FIN arrived */
    int fin_out;    /* ours went out */
} xr_acct_t;

/* XR_OK, or XR_ERROR with errno. */
int xr_acct(int fd, xr_acct_t *a);
/* Is state that of a connection still being set up (SYN sent)? */
int xr_acct_connecting(int state);
int xr_acct_established(int state);

#endif
