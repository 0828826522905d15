/*
 * record.c: TLS 1.2 application-data records sealed and opened with
 * libsodium (DESIGN "TLS"), or for AES-256-GCM with xrayd's vector
 * implementation (gcm.c) where the CPU has VAES and VPCLMULQDQ.
 *
 * The data path does no allocation and no copy beyond the one memmove that
 * makes opened plaintext contiguous: seal encrypts straight from the
 * caller's input into its output buffer, open decrypts each record where
 * it lies and slides the plaintext down over the headers and tags already
 * consumed.
 */
#include "common/record.h"

#include "common/gcm.h"

#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#define XR_REC_GCM_EXPLICIT 8 /* RFC 5288: the explicit nonce sent in the record */
#define XR_REC_TAG          16
#define XR_REC_AAD          13 /* seq(8) type(1) version(2) length(2) */

static void xr__be64(unsigned char *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--) {
        p[i] = (unsigned char) v;
        v >>= 8;
    }
}

static void xr__aad(unsigned char aad[XR_REC_AAD], uint64_t seq, uint8_t type, size_t n)
{
    xr__be64(aad, seq);
    aad[8] = type;
    aad[9] = 3;
    aad[10] = 3;
    aad[11] = (unsigned char) (n >> 8);
    aad[12] = (unsigned char) n;
}

/* RFC 7905: the per-record nonce is the 12-byte IV with the big-endian
 * sequence number XORed into its last 8 bytes. */
static void xr__chacha_nonce(unsigned char nonce[12], const unsigned char iv[12], uint64_t seq)
{
    memcpy(nonce, iv, 4);
    for (int i = 11; i >= 4; i--) {
        nonce[i] = iv[i] ^ (unsigned char) seq;
        seq >>= 8;
    }
}

/* Bytes a record body carries besides its plaintext. */
static size_t xr__body_overhead(xr_aead_t aead)
{
    return aead == XR_AEAD_AES256GCM ? XR_REC_GCM_EXPLICIT + XR_REC_TAG : XR_REC_TAG;
}

xr_aead_t xr_rec_suite_aead(int suite)
{
    switch (suite) {
    case 0xC02C: /* TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384 */
    case 0xC030: /* TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 */ return XR_AEAD_AES256GCM;
    case 0xCCA9: /* TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256 */
    case 0xCCA8: /* TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256 */ return XR_AEAD_CHACHA20;
    default: return XR_AEAD_NONE;
    }
}

int xr_rec_keyblock(unsigned char *to, size_t *to_keylen, size_t *to_ivlen, const unsigned char *kb,
                    size_t maclen, size_t keylen, size_t ivlen)
{
    if (maclen != 0 || keylen > 32 || ivlen > 12)
        return 0;
    memcpy(to, kb, 2 * keylen + 2 * ivlen);
    *to_keylen = keylen;
    *to_ivlen = ivlen;
    return 1;
}

uint64_t xr_rec_seq(const unsigned char *ctr)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | ctr[i];
    return v;
}

int xr_rec_available(xr_aead_t aead)
{
    /* sodium_init() detects the CPU features that the AES-GCM check reads;
     * it is idempotent and thread-safe, and this is not the data path. */
    if (sodium_init() < 0)
        return 0;
    switch (aead) {
    case XR_AEAD_AES256GCM: return crypto_aead_aes256gcm_is_available();
    case XR_AEAD_CHACHA20: return 1;
    default: return 0;
    }
}

static int xr__dir_init(xr_rec_dir_t *d, xr_aead_t aead, const unsigned char *key,
                        const unsigned char *iv, size_t ivlen, uint64_t seq)
{
    d->seq = seq;
    memcpy(d->key, key, 32);
    memcpy(d->iv, iv, ivlen);
    if (aead != XR_AEAD_AES256GCM)
        return 0;
    /* The expanded key schedule and GHASH powers are computed once per
     * connection. */
    if (xr_gcm_available()) {
        d->vgcm = xr_gcm_new(d->key);
        return d->vgcm != NULL ? 0 : -1;
    }
    /* libsodium wants its state 16-byte aligned, which malloc does not
     * promise everywhere.  512 is a multiple of 16, as aligned_alloc
     * requires. */
    d->gcm = aligned_alloc(16, sizeof(crypto_aead_aes256gcm_state));
    if (d->gcm == NULL)
        return -1;
    crypto_aead_aes256gcm_beforenm(d->gcm, d->key);
    return 0;
}

int xr_rec_init(xr_rec_t *r, xr_aead_t aead, int is_server, const unsigned char *keyblock,
                size_t keylen, size_t ivlen, uint64_t rx_seq, uint64_t tx_seq)
{
    memset(r, 0, sizeof(*r));
    if (!xr_rec_available(aead) || keylen != 32)
        return -1;
    if (ivlen != (aead == XR_AEAD_AES256GCM ? 4u : 12u))
        return -1;

    const unsigned char *ckey = keyblock, *skey = keyblock + keylen;
    const unsigned char *civ = keyblock + 2 * keylen, *siv = civ + ivlen;
    r->aead = aead;
    r->overhead = XR_REC_HEADER + xr__body_overhead(aead);
    if (xr__dir_init(&r->rx, aead, is_server ? ckey : skey, is_server ? civ : siv, ivlen, rx_seq) <
            0 ||
        xr__dir_init(&r->tx, aead, is_server ? skey : ckey, is_server ? siv : civ, ivlen, tx_seq) <
            0) {
        xr_rec_free(r);
        return -1;
    }
    return 0;
}

void xr_rec_export(const xr_rec_t *r, xr_rec_state_t *st)
{
    memset(st, 0, sizeof(*st));
    st->aead = (uint32_t) r->aead;
    st->rx.seq = r->rx.seq;
    memcpy(st->rx.key, r->rx.key, sizeof(st->rx.key));
    memcpy(st->rx.iv, r->rx.iv, sizeof(st->rx.iv));
    st->tx.seq = r->tx.seq;
    memcpy(st->tx.key, r->tx.key, sizeof(st->tx.key));
    memcpy(st->tx.iv, r->tx.iv, sizeof(st->tx.iv));
}

int xr_rec_import(xr_rec_t *r, const xr_rec_state_t *st)
{
    memset(r, 0, sizeof(*r));
    xr_aead_t aead = (xr_aead_t) st->aead;
    if ((aead != XR_AEAD_AES256GCM && aead != XR_AEAD_CHACHA20) || !xr_rec_available(aead))
        return -1;
    size_t ivlen = aead == XR_AEAD_AES256GCM ? 4 : 12;
    r->aead = aead;
    r->overhead = XR_REC_HEADER + xr__body_overhead(aead);
    if (xr__dir_init(&r->rx, aead, st->rx.key, st->rx.iv, ivlen, st->rx.seq) < 0 ||
        xr__dir_init(&r->tx, aead, st->tx.key, st->tx.iv, ivlen, st->tx.seq) < 0) {
        xr_rec_free(r);
        return -1;
    }
    return 0;
}

static void xr__dir_free(xr_rec_dir_t *d)
{
    if (d->gcm != NULL) {
        /* The state holds the expanded key: as secret as the key. */
        sodium_memzero(d->gcm, sizeof(crypto_aead_aes256gcm_state));
        free(d->gcm);
    }
    xr_gcm_free(d->vgcm);
    sodium_memzero(d, sizeof(*d));
}

void xr_rec_free(xr_rec_t *r)
{
    xr__dir_free(&r->rx);
    xr__dir_free(&r->tx);
    r->aead = XR_AEAD_NONE;
    r->overhead = 0;
}

/* Seal one record of n <= XR_REC_MAX_PLAIN bytes; out has room for
 * n + r->overhead.  Returns the record's length. */
static size_t xr__seal_one(xr_rec_t *r, uint8_t type, const unsigned char *in, size_t n,
                           unsigned char *out)
{
    xr_rec_dir_t *d = &r->tx;
    unsigned char aad[XR_REC_AAD];
    size_t body = n + xr__body_overhead(r->aead);

    xr__aad(aad, d->seq, type, n);
    out[0] = type;
    out[1] = 3;
    out[2] = 3;
    out[3] = (unsigned char) (body >> 8);
    out[4] = (unsigned char) body;
    if (r->aead == XR_AEAD_AES256GCM) {
        unsigned char nonce[12];
        /* The explicit nonce only has to be unique per key; the sequence
         * number is, and it is what OpenSSL and mbedTLS send too. */
        memcpy(nonce, d->iv, 4);
        memcpy(nonce + 4, aad, 8);
        memcpy(out + XR_REC_HEADER, aad, 8);
        unsigned char *c = out + XR_REC_HEADER + XR_REC_GCM_EXPLICIT;
        if (d->vgcm != NULL)
            xr_gcm_seal(d->vgcm, c, c + n, in, n, aad, XR_REC_AAD, nonce);
        else
            crypto_aead_aes256gcm_encrypt_detached_afternm(c, c + n, NULL, in, n, aad, XR_REC_AAD,
                                                           NULL, nonce, d->gcm);
    } else {
        unsigned char nonce[12];
        xr__chacha_nonce(nonce, d->iv, d->seq);
        unsigned char *c = out + XR_REC_HEADER;
        crypto_aead_chacha20poly1305_ietf_encrypt_detached(c, c + n, NULL, in, n, aad, XR_REC_AAD,
                                                           NULL, nonce, d->key);
    }
    d->seq++;
    return XR_REC_HEADER + body;
}

size_t xr_rec_seal(xr_rec_t *r, uint8_t type, const unsigned char *in, size_t len,
                   unsigned char *out, size_t cap, size_t *consumed)
{
    size_t done = 0, w = 0;
    if (r->aead != XR_AEAD_NONE) {
        while (done < len && cap - w > r->overhead) {
            /* A short output buffer gets a short record rather than none, so
             * the caller always makes progress while any byte fits. */
            size_t n = len - done;
            if (n > XR_REC_MAX_PLAIN)
                n = XR_REC_MAX_PLAIN;
            if (n > cap - w - r->overhead)
                n = cap - w - r->overhead;
            w += xr__seal_one(r, type, in + done, n, out + w);
            done += n;
        }
    }
    *consumed = done;
    return w;
}

size_t xr_rec_alert(xr_rec_t *r, uint8_t level, uint8_t desc, unsigned char *out, size_t cap)
{
    unsigned char a[2] = {level, desc};
    if (r->aead == XR_AEAD_NONE || cap < r->overhead + 2)
        return 0;
    return xr__seal_one(r, XR_REC_TYPE_ALERT, a, 2, out);
}

/* Judge the header of the record at h (left bytes from h on): XR_REC_OK
 * with its type and body length, or why it is refused.  The header is
 * judged before the body arrives, so garbage is refused at once rather
 * than after waiting for up to 64 KiB. */
static xr_rec_status_t xr__header(const xr_rec_t *r, const unsigned char *h, uint8_t *type,
                                  size_t *body)
{
    size_t extra = xr__body_overhead(r->aead);
    *type = h[0];
    *body = (size_t) h[3] << 8 | h[4];
    if (h[1] != 3 || h[2] != 3 || *type < XR_REC_TYPE_ALERT || *type > XR_REC_TYPE_APPDATA)
        return XR_REC_ERR_FORMAT; /* change_cipher_spec (20) has no place once keys are in use */
    /* RFC 5246 6.2: record_overflow for a ciphertext over 2^14+2048 or for
     * one that would decrypt to more than 2^14 bytes. */
    if (*body > XR_REC_MAX_CIPHER || (*body >= extra && *body - extra > XR_REC_MAX_PLAIN))
        return XR_REC_ERR_OVERSIZE;
    /* An alert is exactly level and description; fragmenting one across
     * records is legal in theory and done by no implementation. */
    if (*body < extra || (*type == XR_REC_TYPE_ALERT && *body != extra + 2))
        return XR_REC_ERR_FORMAT;
    return XR_REC_OK;
}

/* Decrypt the whole record at h (type, body bytes after the header) into
 * m (where its ciphertext is, or elsewhere), checking its tag.  0, or -1
 * for a bad record MAC. */
static int xr__decrypt(xr_rec_t *r, const unsigned char *h, uint8_t type, size_t body,
                       unsigned char *m)
{
    xr_rec_dir_t *d = &r->rx;
    size_t n = body - xr__body_overhead(r->aead);
    unsigned char aad[XR_REC_AAD], nonce[12];
    int rc;
    xr__aad(aad, d->seq, type, n);
    if (r->aead == XR_AEAD_AES256GCM) {
        const unsigned char *c = h + XR_REC_HEADER + XR_REC_GCM_EXPLICIT;
        memcpy(nonce, d->iv, 4);
        memcpy(nonce + 4, h + XR_REC_HEADER, XR_REC_GCM_EXPLICIT);
        if (d->vgcm != NULL)
            rc = xr_gcm_open(d->vgcm, m, c, n, c + n, aad, XR_REC_AAD, nonce);
        else
            rc = crypto_aead_aes256gcm_decrypt_detached_afternm(m, NULL, c, n, c + n, aad,
                                                                XR_REC_AAD, nonce, d->gcm);
    } else {
        const unsigned char *c = h + XR_REC_HEADER;
        xr__chacha_nonce(nonce, d->iv, d->seq);
        rc = crypto_aead_chacha20poly1305_ietf_decrypt_detached(m, NULL, c, n, c + n, aad,
                                                                XR_REC_AAD, nonce, d->key);
    }
    if (rc != 0)
        return -1;
    d->seq++;
    return 0;
}

/* Where a record's ciphertext starts, after the header (and GCM's
 * explicit nonce). */
static size_t xr__cipher_at(const xr_rec_t *r)
{
    return XR_REC_HEADER + (r->aead == XR_AEAD_AES256GCM ? XR_REC_GCM_EXPLICIT : 0);
}

/* Both opens: to == NULL opens in place (buf is written; the cleartext
 * is moved to its front, and any record is taken), else out of place into
 * to[0..cap) (buf is only read; it stops before a record that is not
 * application data or does not fit). */
static xr_rec_status_t xr__open(xr_rec_t *r, unsigned char *buf, size_t len, unsigned char *to,
                                size_t cap, size_t *plain, size_t *used, uint8_t alert[2])
{
    size_t pos = 0, out = 0;
    xr_rec_status_t st = XR_REC_OK;

    if (r->aead == XR_AEAD_NONE) {
        st = XR_REC_ERR_FORMAT;
        goto done;
    }
    while (len - pos >= XR_REC_HEADER) {
        unsigned char *h = buf + pos;
        uint8_t type;
        size_t body;
        if ((st = xr__header(r, h, &type, &body)) != XR_REC_OK)
            goto done;
        size_t n = body - xr__body_overhead(r->aead);
        if (len - pos - XR_REC_HEADER < body)
            break; /* a partial record: the caller appends and calls again */
        if (to != NULL && (type != XR_REC_TYPE_APPDATA || cap - out < n))
            break; /* the caller's business (xr_rec_open_to) */
        unsigned char *m = to != NULL ? to + out : h + xr__cipher_at(r);
        if (xr__decrypt(r, h, type, body, m) != 0) {
            st = XR_REC_ERR_MAC;
            goto done;
        }
        pos += XR_REC_HEADER + body;

        if (type == XR_REC_TYPE_APPDATA) {
            if (to == NULL)
                memmove(buf + out, m, n);
            out += n;
            continue;
        }
        if (type == XR_REC_TYPE_HANDSHAKE) {
            st = XR_REC_HANDSHAKE;
            goto done;
        }
        if (alert != NULL) {
            alert[0] = m[0];
            alert[1] = m[1];
        }
        st = m[1] == 0 ? XR_REC_CLOSE_NOTIFY : XR_REC_ALERT;
        goto done;
    }

done:
    *plain = out;
    *used = pos;
    return st;
}

xr_rec_status_t xr_rec_open(xr_rec_t *r, unsigned char *buf, size_t len, size_t *plain,
                            size_t *used, uint8_t alert[2])
{
    return xr__open(r, buf, len, NULL, 0, plain, used, alert);
}

xr_rec_status_t xr_rec_open_to(xr_rec_t *r, const unsigned char *in, size_t len, unsigned char *to,
                               size_t cap, size_t *plain, size_t *used)
{
    /* Out of place, in[] is only read. */
    return xr__open(r, (unsigned char *) in, len, to, cap, plain, used, NULL);
}
