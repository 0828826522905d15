/*
 * ticket.c: session tickets with keys derived per period from one
 * process-wide secret (see ticket.h for why and for the format).
 */
#include "tls/ticket.h"

#include <string.h>
#include <time.h>

#include <sodium.h>

#include "core/xrayd.h"

#define XR_TICKET_VERSION 1
#define XR_TICKET_AD      9 /* version + period */
#define XR_TICKET_NONCE   crypto_aead_xchacha20poly1305_ietf_NPUBBYTES
#define XR_TICKET_TAG     crypto_aead_xchacha20poly1305_ietf_ABYTES
#define XR_TICKET_HEAD    (XR_TICKET_AD + XR_TICKET_NONCE)

/* Drawn once, in the master before it forks; reloads keep it, so tickets
 * survive SIGHUP.  It never leaves memory. */
static unsigned char xr_ticket_secret[32];
static int xr_ticket_have_secret;

int xr_ticket_init(xr_ticket_t *t, const void *what, size_t len, uint32_t lifetime)
{
    memset(t, 0, sizeof(*t));
    if (lifetime == 0)
        return XR_ERROR;
    if (!xr_ticket_have_secret) {
        randombytes_buf(xr_ticket_secret, sizeof(xr_ticket_secret));
        xr_ticket_have_secret = 1;
    }
    crypto_generichash(t->label, sizeof(t->label), what, len, NULL, 0);
    t->lifetime = lifetime;
    return XR_OK;
}

void xr_ticket_free(xr_ticket_t *t)
{
    sodium_memzero(t, sizeof(*t));
}

static void xr_be64(unsigned char *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--, v >>= 8)
        p[i] = (unsigned char) v;
}

static uint64_t xr_get_be64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | p[i];
    return v;
}

/* The key of `period`: BLAKE2b keyed with the secret over label || period.
 * Two slots, so the current and the previous period cost one derivation
 * each per worker. */
static const unsigned char *xr_ticket_key(xr_ticket_t *t, uint64_t period)
{
    int slot = (int) (period & 1);
    if (!t->have[slot] || t->period[slot] != period) {
        unsigned char msg[sizeof(t->label) + 8];
        memcpy(msg, t->label, sizeof(t->label));
        xr_be64(msg + sizeof(t->label), period);
        crypto_generichash(t->key[slot], sizeof(t->key[slot]), msg, sizeof(msg), xr_ticket_secret,
                           sizeof(xr_ticket_secret));
        t->period[slot] = period;
        t->have[slot] = 1;
    }
    return t->key[slot];
}

int xr_ticket_write(void *p, const mbedtls_ssl_session *session, unsigned char *start,
                    const unsigned char *end, size_t *tlen, uint32_t *lifetime)
{
    xr_ticket_t *t = p;
    uint64_t now = (uint64_t) time(NULL), period = now / t->lifetime;
    size_t room = (size_t) (end - start), plen;

    *tlen = 0;
    if (room < XR_TICKET_HEAD + XR_TICKET_TAG)
        return MBEDTLS_ERR_SSL_BUFFER_TOO_SMALL;
    unsigned char *plain = start + XR_TICKET_HEAD;
    int rc = mbedtls_ssl_session_save(session, plain, room - XR_TICKET_HEAD - XR_TICKET_TAG, &plen);
    if (rc != 0)
        return rc;

    start[0] = XR_TICKET_VERSION;
    xr_be64(start + 1, period);
    randombytes_buf(start + XR_TICKET_AD, XR_TICKET_NONCE);
    crypto_aead_xchacha20poly1305_ietf_encrypt_detached(
        plain, plain + plen, NULL, plain, plen, start, XR_TICKET_AD, NULL, start + XR_TICKET_AD,
        xr_ticket_key(t, period));
    *tlen = XR_TICKET_HEAD + plen + XR_TICKET_TAG;
    *lifetime = t->lifetime;
    return 0;
}

int xr_ticket_parse(void *p, mbedtls_ssl_session *session, unsigned char *buf, size_t len)
{
    xr_ticket_t *t = p;
    uint64_t now = (uint64_t) time(NULL), cur = now / t->lifetime;

    if (len < XR_TICKET_HEAD + XR_TICKET_TAG || buf[0] != XR_TICKET_VERSION)
        return MBEDTLS_ERR_SSL_BAD_INPUT_DATA;
    uint64_t period = xr_get_be64(buf + 1);
    if (period != cur && period + 1 != cur)
        return MBEDTLS_ERR_SSL_SESSION_TICKET_EXPIRED;

    unsigned char *c = buf + XR_TICKET_HEAD;
    size_t clen = len - XR_TICKET_HEAD - XR_TICKET_TAG;
    if (crypto_aead_xchacha20poly1305_ietf_decrypt_detached(c, NULL, c, clen, c + clen, buf,
                                                            XR_TICKET_AD, buf + XR_TICKET_AD,
                                                            xr_ticket_key(t, period)) != 0)
        return MBEDTLS_ERR_SSL_INVALID_MAC;

    int rc = mbedtls_ssl_session_load(session, c, clen);
    sodium_memzero(c, clen); /* the master secret, in the clear */
    if (rc != 0)
        return rc;
#if defined(MBEDTLS_HAVE_TIME)
    if (session->start > (mbedtls_time_t) now ||
        (uint64_t) ((mbedtls_time_t) now - session->start) > t->lifetime)
        return MBEDTLS_ERR_SSL_SESSION_TICKET_EXPIRED;
#endif
    return 0;
}
