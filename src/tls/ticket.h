/*
 * ticket.h: session tickets (RFC 5077) that every worker can open.
 *
 * mbedTLS's own ticket module draws a fresh random key at each rotation,
 * so once the first rotation has passed every worker holds a different
 * key and a ticket minted by one worker costs a full handshake on the
 * next.  Here the key of each period is derived from one secret the master
 * draws before it forks (and keeps across reloads): every worker of every
 * generation computes the same key for the same period, and rotation
 * needs no coordination.  The derivation also covers the listener's
 * identity (its relay, certificate, CA, verification and allow list), so a
 * ticket from one listener never resumes on another, nor on the same one
 * after its trust settings changed.
 *
 * Ticket: version(1) = 1 | period(8, big-endian) | nonce(24) |
 * XChaCha20-Poly1305(mbedtls_ssl_session_save()) | tag(16); the first 9
 * bytes are the additional data.  A ticket opens during its own period
 * and the next, and mbedTLS's session start time bounds it to one
 * session_timeout.
 */
#ifndef XR_TICKET_H
#define XR_TICKET_H

#include <stdint.h>

#include <mbedtls/ssl.h>

typedef struct {
    unsigned char label[32]; /* hash of what the listener trusts */
    uint32_t lifetime;       /* seconds */
    /* the keys of the last two periods asked for, derived on demand */
    uint64_t period[2];
    unsigned char key[2][32];
    int have[2];
} xr_ticket_t;

/* Set up t for a listener whose identity is described by `what` (any
 * bytes that change when its trust settings do).  Draws the process's
 * ticket secret on first use: call it in the master, before forking.
 * XR_OK, or XR_ERROR if lifetime is 0. */
int xr_ticket_init(xr_ticket_t *t, const void *what, size_t len, uint32_t lifetime);
void xr_ticket_free(xr_ticket_t *t);

/* mbedTLS's callbacks (mbedtls_ssl_conf_session_tickets_cb), p = t. */
int xr_ticket_write(void *p, const mbedtls_ssl_session *session, unsigned char *start,
                    const unsigned char *end, size_t *tlen, uint32_t *lifetime);
int xr_ticket_parse(void *p, mbedtls_ssl_session *session, unsigned char *buf, size_t len);

#endif
