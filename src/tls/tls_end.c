/*
 * tls_end.c: a TLS end of a relay.
 *
 * The handshake runs on an mbedTLS context whose I/O goes straight to the
 * non-blocking socket.  When it is over, the key block captured by the
 * export hook and the sequence numbers of the finished context become an
 * xr_rec_t and the context is freed: an idle TLS end then holds keys and
 * counters, not mbedTLS's two 16 KiB record buffers.  Received records are
 * opened in place in the relay's own buffer; sealed records wait in a
 * pooled buffer only while the socket is full.
 */
#include "core/xrayd.h"
#include "core/log.h"
#include "relay/relay.h"
#include "common/identity.h"
#include "tls/tls.h"

#include <mbedtls/error.h>
#include <mbedtls/net_sockets.h>
#include <mbedtls/ssl_internal.h>
#include <stdio.h>
#include <sys/socket.h>
#include <unistd.h>

#define XR_TLS_ALERT_WARNING    1
#define XR_TLS_ALERT_FATAL      2
#define XR_TLS_CLOSE_NOTIFY     0
#define XR_TLS_BAD_RECORD_MAC   20
#define XR_TLS_RECORD_OVERFLOW  22
#define XR_TLS_DECODE_ERROR     50
#define XR_TLS_NO_RENEGOTIATION 100

typedef struct {
    mbedtls_ssl_context *ssl; /* handshake, or the slow path */
    xr_tls_conf_t *conf;
    xr_tls_session_t *slot; /* a client's kept session, or NULL: conf's */
    xr_rec_t rec;
    int fast; /* records through record.c */
    int eof;  /* close_notify seen: read returns 0 */
    int notify_sent;
    int resumed;
    xr_buf_t *stash; /* a partial record, between reads */
    xr_buf_t *tx;    /* sealed records the socket had no room for */
    char *identity;
    xr_identity_t *peer; /* only between handshake and allow check */
    int peer_verified;
    char why[128];
    /* from the export hook, wiped once used */
    unsigned char kb[2 * 32 + 2 * 12];
    size_t keylen, ivlen;
    int have_kb;
} xr_tls_end_t;

static xr_tls_end_t *xr_tls_current; /* the end whose handshake step runs */

static xr_tls_end_t *xr_tls(xr_end_t *e)
{
    return e->data;
}

int xr_tls_export_keys(void *p, const unsigned char *ms, const unsigned char *kb, size_t maclen,
                       size_t keylen, size_t ivlen, const unsigned char client_random[32],
                       const unsigned char server_random[32], mbedtls_tls_prf_types prf)
{
    xr_tls_end_t *t = xr_tls_current;
    /* Only AEAD suites fit the record layer; others keep mbedTLS's
     * records. */
    if (t != NULL)
        t->have_kb = xr_rec_keyblock(t->kb, &t->keylen, &t->ivlen, kb, maclen, keylen, ivlen);
    return 0;
}

/* ---- socket I/O for mbedTLS ------------------------------------------------ */

static int xr_tls_bio_send(void *ctx, const unsigned char *buf, size_t len)
{
    xr_end_t *e = ctx;
    ssize_t n = send(e->io.fd, buf, len, MSG_NOSIGNAL);
    if (n >= 0)
        return (int) n;
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
        if (errno != EINTR)
            e->writable = 0;
        return MBEDTLS_ERR_SSL_WANT_WRITE;
    }
    return errno == EPIPE || errno == ECONNRESET ? MBEDTLS_ERR_NET_CONN_RESET
                                                 : MBEDTLS_ERR_NET_SEND_FAILED;
}

static int xr_tls_bio_recv(void *ctx, unsigned char *buf, size_t len)
{
    xr_end_t *e = ctx;
    ssize_t n = recv(e->io.fd, buf, len, 0);
    if (n >= 0) {
        if ((size_t) n < len && !e->rdhup)
            e->readable = 0;
        return (int) n;
    }
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
        if (errno != EINTR)
            e->readable = 0;
        return MBEDTLS_ERR_SSL_WANT_READ;
    }
    return errno == ECONNRESET ? MBEDTLS_ERR_NET_CONN_RESET : MBEDTLS_ERR_NET_RECV_FAILED;
}

/* ---- fast path: record.c ------------------------------------------------- */

static int xr_tls_flush(xr_end_t *e)
{
    xr_tls_end_t *t = xr_tls(e);
    xr_buf_t *b = t->tx;
    while (b != NULL && b->start < b->end) {
        ssize_t n = send(e->io.fd, b->data + b->start, b->end - b->start, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1; /* EAGAIN included: the caller waits for writable */
        }
        b->start += (uint32_t) n;
    }
    if (b != NULL) {
        xr_buf_put(b);
        t->tx = NULL;
    }
    return 0;
}

/* Queue sealed bytes: an alert, or records. */
static int xr_tls_txbuf(xr_tls_end_t *t, size_t want)
{
    if (t->tx == NULL) {
        t->tx = xr_buf_get(XR_MAX(want, (size_t) 65536));
        if (t->tx == NULL) {
            errno = ENOMEM;
            return -1;
        }
    }
    return 0;
}

static void xr_tls_send_alert(xr_end_t *e, uint8_t level, uint8_t desc)
{
    xr_tls_end_t *t = xr_tls(e);
    if (!t->fast || xr_tls_txbuf(t, 64) != 0)
        return;
    xr_buf_t *b = t->tx;
    b->end += (uint32_t) xr_rec_alert(&t->rec, level, desc, b->data + b->end, b->cap - b->end);
    xr_tls_flush(e); /* best effort: the relay is about to close */
}

/* Fail a read: remember why, tell the peer (alert 0: no alert), set errno. */
static ssize_t xr_tls_fail_read(xr_end_t *e, int err, uint8_t alert, const char *why)
{
    xr_tls_end_t *t = xr_tls(e);
    snprintf(t->why, sizeof(t->why), "%s", why);
    if (alert != 0)
        xr_tls_send_alert(e, XR_TLS_ALERT_FATAL, alert);
    errno = err;
    return -1;
}

static ssize_t xr_tls_read(xr_end_t *e, void *buf, size_t len)
{
    xr_tls_end_t *t = xr_tls(e);
    unsigned char *area = buf;
    size_t stashed = t->stash ? t->stash->end : 0;

    if (t->eof)
        return 0;
    for (;;) {
        /* Read behind where the partial record will go, then put it in
         * front: the records stay contiguous and are opened in place. */
        if (len <= stashed + XR_REC_HEADER) {
            errno = ENOBUFS;
            return -1;
        }
        size_t want = len - stashed;
        ssize_t n = recv(e->io.fd, area + stashed, want, 0);
        if (n < 0)
            return -1;
        if (n == 0) {
            if (stashed > 0)
                return xr_tls_fail_read(e, EPROTO, 0, "connection closed inside a record");
            /* No close_notify: the peer may have been cut off.  The FIN
             * still ends the stream, and the log says how it ended. */
            snprintf(t->why, sizeof(t->why), "closed without close_notify");
            return 0;
        }
        if ((size_t) n < want && !e->rdhup)
            e->readable = 0;
        if (stashed > 0) {
            memcpy(area, t->stash->data, stashed);
            xr_buf_put(t->stash);
            t->stash = NULL;
        }
        size_t total = stashed + (size_t) n, plain = 0, used = 0;
        uint8_t alert[2] = {0, 0};
        xr_rec_status_t st = xr_rec_open(&t->rec, area, total, &plain, &used, alert);
        if (st == XR_REC_OK && used < total) {
            size_t rest = total - used;
            t->stash = xr_buf_get(XR_REC_HEADER + XR_REC_MAX_CIPHER);
            if (t->stash == NULL) {
                errno = ENOMEM;
                return -1;
            }
            memcpy(t->stash->data, area + used, rest);
            t->stash->end = (uint32_t) rest;
        }
        switch (st) {
        case XR_REC_OK:
            if (plain > 0)
                return (ssize_t) plain;
            if (!e->readable) {
                errno = EAGAIN;
                return -1;
            }
            stashed = t->stash ? t->stash->end : 0;
            continue; /* only part of a record so far: read on */
        case XR_REC_CLOSE_NOTIFY:
            t->eof = 1;
            /* No edge will come for an end already seen: the next read
             * must run and return 0. */
            e->readable = 1;
            return (ssize_t) plain; /* 0 when nothing came before it */
        case XR_REC_ALERT: {
            char why[32];
            snprintf(why, sizeof(why), "peer sent alert %d", alert[1]);
            return xr_tls_fail_read(e, ECONNRESET, 0, why);
        }
        case XR_REC_HANDSHAKE:
            /* Renegotiation: refuse it, then end the connection. */
            xr_tls_send_alert(e, XR_TLS_ALERT_WARNING, XR_TLS_NO_RENEGOTIATION);
            return xr_tls_fail_read(e, EPROTO, 0, "renegotiation refused");
        case XR_REC_ERR_MAC:
            return xr_tls_fail_read(e, EBADMSG, XR_TLS_BAD_RECORD_MAC,
                                    "bad record MAC (tampered or corrupt record)");
        case XR_REC_ERR_OVERSIZE: {
            char why[48];
            snprintf(why, sizeof(why), "record longer than %d bytes", XR_REC_MAX_CIPHER);
            return xr_tls_fail_read(e, EMSGSIZE, XR_TLS_RECORD_OVERFLOW, why);
        }
        case XR_REC_ERR_FORMAT:
        default: return xr_tls_fail_read(e, EPROTO, XR_TLS_DECODE_ERROR, "malformed record");
        }
    }
}

static ssize_t xr_tls_write(xr_end_t *e, const void *buf, size_t len)
{
    xr_tls_end_t *t = xr_tls(e);
    if (xr_tls_flush(e) != 0)
        return -1;
    if (xr_tls_txbuf(t, 0) != 0)
        return -1;
    xr_buf_t *b = t->tx;
    size_t consumed = 0;
    b->end =
        (uint32_t) xr_rec_seal(&t->rec, XR_REC_TYPE_APPDATA, buf, len, b->data, b->cap, &consumed);
    if (xr_tls_flush(e) != 0 && errno != EAGAIN && errno != EWOULDBLOCK)
        return -1;
    return (ssize_t) consumed;
}

static int xr_tls_shutdown_wr(xr_end_t *e)
{
    xr_tls_end_t *t = xr_tls(e);
    if (!t->notify_sent) {
        if (xr_tls_flush(e) != 0)
            return -1;
        if (xr_tls_txbuf(t, 64) != 0)
            return -1;
        t->tx->end += (uint32_t) xr_rec_alert(&t->rec, XR_TLS_ALERT_WARNING, XR_TLS_CLOSE_NOTIFY,
                                              t->tx->data + t->tx->end, t->tx->cap - t->tx->end);
        t->notify_sent = 1;
    }
    if (xr_tls_flush(e) != 0)
        return -1;
    return shutdown(e->io.fd, SHUT_WR);
}

static const char *xr_tls_why(xr_end_t *e)
{
    xr_tls_end_t *t = xr_tls(e);
    return t->why[0] ? t->why : NULL;
}

static void xr_tls_free(xr_end_t *e)
{
    xr_tls_end_t *t = xr_tls(e);
    if (t == NULL)
        return;
    if (t->ssl != NULL) {
        mbedtls_ssl_free(t->ssl);
        free(t->ssl);
    }
    xr_rec_free(&t->rec);
    xr_buf_put(t->stash);
    xr_buf_put(t->tx);
    free(t->identity);
    free(t->peer);
    mbedtls_platform_zeroize(t->kb, sizeof(t->kb));
    free(t);
    e->data = NULL;
}

static const xr_end_ops_t xr_end_tls_ops = {
    xr_tls_read, xr_tls_write, xr_tls_shutdown_wr, xr_tls_flush, xr_tls_why, xr_tls_free, "tls"};

/* ---- slow path: mbedTLS's own records -------------------------------------- */

static ssize_t xr_tls_slow_status(xr_end_t *e, int rc)
{
    xr_tls_end_t *t = xr_tls(e);
    if (rc == MBEDTLS_ERR_SSL_WANT_READ || rc == MBEDTLS_ERR_SSL_WANT_WRITE) {
        errno = EAGAIN;
        return -1;
    }
    if (rc == MBEDTLS_ERR_SSL_PEER_CLOSE_NOTIFY) {
        t->eof = 1;
        return 0;
    }
    mbedtls_strerror(rc, t->why, sizeof(t->why));
    errno = EPROTO;
    return -1;
}

static ssize_t xr_tls_slow_read(xr_end_t *e, void *buf, size_t len)
{
    xr_tls_end_t *t = xr_tls(e);
    if (t->eof)
        return 0;
    int rc = mbedtls_ssl_read(t->ssl, buf, len);
    if (rc > 0) {
        /* mbedTLS may hold decrypted bytes; keep reading until it says so. */
        e->readable = 1;
        return rc;
    }
    if (rc == 0) {
        t->eof = 1;
        return 0;
    }
    return xr_tls_slow_status(e, rc);
}

static ssize_t xr_tls_slow_write(xr_end_t *e, const void *buf, size_t len)
{
    int rc = mbedtls_ssl_write(xr_tls(e)->ssl, buf, len);
    return rc >= 0 ? rc : xr_tls_slow_status(e, rc);
}

static int xr_tls_slow_shutdown_wr(xr_end_t *e)
{
    xr_tls_end_t *t = xr_tls(e);
    if (!t->notify_sent) {
        int rc = mbedtls_ssl_close_notify(t->ssl);
        if (rc != 0)
            return (int) xr_tls_slow_status(e, rc);
        t->notify_sent = 1;
    }
    return shutdown(e->io.fd, SHUT_WR);
}

static const xr_end_ops_t xr_end_tls_slow_ops = {
    xr_tls_slow_read, xr_tls_slow_write, xr_tls_slow_shutdown_wr, NULL, xr_tls_why,
    xr_tls_free,      "tls-mbedtls"};

/* During the handshake the relay moves no bytes on this end. */
static const xr_end_ops_t xr_end_tls_handshake_ops = {NULL,       NULL,        NULL,           NULL,
                                                      xr_tls_why, xr_tls_free, "tls-handshake"};

/* ---- handshake ------------------------------------------------------------- */

void xr_tls_session_free(xr_tls_session_t *slot)
{
    if (slot->has)
        mbedtls_ssl_session_free(&slot->s);
    slot->has = 0;
}

int xr_tls_end_start(xr_end_t *e, xr_tls_conf_t *c)
{
    return xr_tls_end_start_session(e, c, NULL);
}

int xr_tls_end_start_session(xr_end_t *e, xr_tls_conf_t *c, xr_tls_session_t *slot)
{
    xr_tls_end_t *t = calloc(1, sizeof(*t));
    if (t == NULL)
        return XR_ERROR;
    t->conf = c;
    t->ssl = malloc(sizeof(mbedtls_ssl_context));
    if (t->ssl == NULL) {
        free(t);
        return XR_ERROR;
    }
    mbedtls_ssl_init(t->ssl);
    e->data = t;
    e->ops = &xr_end_tls_handshake_ops;
    if (mbedtls_ssl_setup(t->ssl, &c->ssl) != 0)
        return XR_ERROR;
    mbedtls_ssl_set_bio(t->ssl, e, xr_tls_bio_send, xr_tls_bio_recv, NULL);
    if (!c->is_server) {
        if (c->server_name != NULL && mbedtls_ssl_set_hostname(t->ssl, c->server_name) != 0)
            return XR_ERROR;
        t->slot = slot;
        if (c->session_tickets && slot != NULL && slot->has)
            mbedtls_ssl_set_session(t->ssl, &slot->s);
        else if (c->session_tickets && slot == NULL && c->has_client_session)
            mbedtls_ssl_set_session(t->ssl, &c->client_session);
    }
    return XR_OK;
}

static void xr_tls_handshake_failed(xr_tls_end_t *t, int rc)
{
    char err[96];
    mbedtls_strerror(rc, err, sizeof(err));
    uint32_t flags = t->ssl ? mbedtls_ssl_get_verify_result(t->ssl) : 0;
    /* mbedTLS reports a key usage mismatch as a bad Certificate message,
     * with the reason only in the verify flags: prefer those. */
    if (flags != 0 && flags != (uint32_t) -1) {
        char info[256];
        mbedtls_x509_crt_verify_info(info, sizeof(info), "", flags);
        for (char *p = info; *p; p++)
            if (*p == '\n')
                *p = ';';
        size_t l = strlen(info);
        if (l > 0 && info[l - 1] == ';')
            info[l - 1] = '\0';
        snprintf(t->why, sizeof(t->why), "peer certificate rejected: %s", info);
    } else if (rc == MBEDTLS_ERR_SSL_CONN_EOF) {
        snprintf(t->why, sizeof(t->why), "peer closed the connection during the handshake");
    } else if (rc == MBEDTLS_ERR_SSL_INVALID_RECORD || rc == MBEDTLS_ERR_SSL_BAD_HS_CLIENT_HELLO ||
               rc == MBEDTLS_ERR_SSL_INVALID_MAC) {
        snprintf(t->why, sizeof(t->why), "not a TLS 1.2 handshake (%s)", err);
    } else {
        snprintf(t->why, sizeof(t->why), "TLS handshake failed: %s", err);
    }
}

/* Read the peer's identity while the context still holds its certificate:
 * the log line into idbuf (empty without a certificate) and, on a listener
 * with an allow list, the parsed fields into *peer for the check. */
static void xr_tls_read_identity(xr_tls_end_t *t, char *idbuf, size_t size, xr_identity_t *peer,
                                 int *have_peer)
{
    const mbedtls_x509_crt *crt = mbedtls_ssl_get_peer_cert(t->ssl);
    idbuf[0] = '\0';
    *have_peer = 0;
    if (crt == NULL)
        return;
    t->peer_verified = mbedtls_ssl_get_verify_result(t->ssl) == 0;
    if (xr_identity_from_crt(crt, peer) != XR_OK)
        t->peer_verified = 0; /* a truncated name must never match */
    snprintf(idbuf, size, "%s sha256:%.16s%s", peer->subject, peer->pubkey_sha256,
             t->peer_verified ? "" : " (unverified)");
    *have_peer = (t->conf->is_server && t->conf->allow.n > 0) || t->conf->keep_peer;
}

int xr_tls_end_handshake(xr_end_t *e)
{
    xr_tls_end_t *t = xr_tls(e);
    mbedtls_ssl_context *ssl = t->ssl;
    int rc = 0;

    xr_tls_current = t;
    while (ssl->state != MBEDTLS_SSL_HANDSHAKE_OVER) {
        if (ssl->handshake != NULL && ssl->handshake->resume)
            t->resumed = 1;
        rc = mbedtls_ssl_handshake_step(ssl);
        if (rc != 0)
            break;
    }
    xr_tls_current = NULL;
    if (rc == MBEDTLS_ERR_SSL_WANT_READ || rc == MBEDTLS_ERR_SSL_WANT_WRITE)
        return XR_AGAIN;
    if (rc != 0) {
        xr_tls_handshake_failed(t, rc);
        return XR_ERROR;
    }

    char idbuf[XR_IDENTITY_NAME_MAX + 96];
    xr_identity_t peer;
    int have_peer;
    xr_tls_read_identity(t, idbuf, sizeof(idbuf), &peer, &have_peer);
    if (!t->conf->is_server && t->conf->session_tickets && t->slot != NULL) {
        xr_tls_session_free(t->slot);
        mbedtls_ssl_session_init(&t->slot->s);
        t->slot->has = mbedtls_ssl_get_session(ssl, &t->slot->s) == 0;
    } else if (!t->conf->is_server && t->conf->session_tickets) {
        if (t->conf->has_client_session)
            mbedtls_ssl_session_free(&t->conf->client_session);
        mbedtls_ssl_session_init(&t->conf->client_session);
        t->conf->has_client_session = mbedtls_ssl_get_session(ssl, &t->conf->client_session) == 0;
    }

    /* Take the keys and the counters; then the context can go.  It goes
     * before anything long-lived is allocated, so that what an idle
     * connection keeps does not sit between the handshake's freed blocks
     * (measured: 2 KiB per idle connection). */
    int suite = mbedtls_ssl_get_ciphersuite_id(mbedtls_ssl_get_ciphersuite(ssl));
    xr_aead_t aead = xr_rec_suite_aead(suite);
    int clean = mbedtls_ssl_get_bytes_avail(ssl) == 0 && !mbedtls_ssl_check_pending(ssl);
    int fast = aead != XR_AEAD_NONE && t->have_kb && clean && xr_rec_available(aead) &&
               t->keylen == 32 && t->ivlen == (aead == XR_AEAD_AES256GCM ? 4u : 12u);
    rc = XR_OK;
    if (fast) {
        uint64_t rx_seq = xr_rec_seq(ssl->in_ctr), tx_seq = xr_rec_seq(ssl->cur_out_ctr);
        mbedtls_ssl_free(ssl);
        free(ssl);
        t->ssl = NULL;
        if (xr_rec_init(&t->rec, aead, t->conf->is_server, t->kb, t->keylen, t->ivlen, rx_seq,
                        tx_seq) == 0) {
            t->fast = 1;
            e->ops = &xr_end_tls_ops;
        } else {
            rc = XR_ERROR;
        }
    } else {
        e->ops = &xr_end_tls_slow_ops;
    }
    mbedtls_platform_zeroize(t->kb, sizeof(t->kb));
    t->have_kb = 0;

    if (rc == XR_OK && idbuf[0] != '\0' && (t->identity = xr_strdup(idbuf)) == NULL)
        rc = XR_ERROR;
    if (rc == XR_OK && have_peer) {
        t->peer = malloc(sizeof(*t->peer));
        if (t->peer != NULL)
            memcpy(t->peer, &peer, sizeof(peer));
        else
            rc = XR_ERROR;
    }
    if (rc != XR_OK)
        snprintf(t->why, sizeof(t->why), "out of memory");
    return rc;
}

const xr_identity_t *xr_tls_end_peer(xr_end_t *e)
{
    xr_tls_end_t *t = xr_tls(e);
    return t != NULL && t->peer_verified ? t->peer : NULL;
}

const char *xr_tls_end_identity(xr_end_t *e)
{
    xr_tls_end_t *t = xr_tls(e);
    return t ? t->identity : NULL;
}

const char *xr_tls_end_why(xr_end_t *e)
{
    xr_tls_end_t *t = xr_tls(e);
    return t && t->why[0] ? t->why : "TLS failure";
}

int xr_tls_end_resumed(xr_end_t *e)
{
    xr_tls_end_t *t = xr_tls(e);
    return t ? t->resumed : 0;
}

int xr_tls_end_movable(xr_end_t *e, char *why, size_t n)
{
    xr_tls_end_t *t = xr_tls(e);
    if (t == NULL || !t->fast) {
        snprintf(why, n, "its TLS suite is on mbedTLS's own records");
        return 0;
    }
    if ((t->stash != NULL && t->stash->end > 0) || (t->tx != NULL && t->tx->start < t->tx->end) ||
        t->eof) {
        snprintf(why, n, "TLS bytes were in flight at the hand-over");
        return 0;
    }
    return 1;
}

void xr_tls_end_detach(xr_end_t *e, xr_rec_t *rec)
{
    xr_tls_end_t *t = xr_tls(e);
    /* The precomputed key state moves with the struct: t must not free it. */
    *rec = t->rec;
    memset(&t->rec, 0, sizeof(t->rec));
    t->fast = 0;
}

int xr_tls_end_allowed(xr_end_t *e, const xr_tls_conf_t *c)
{
    xr_tls_end_t *t = xr_tls(e);
    int ok = c->allow.n == 0;
    if (!ok && t->peer != NULL && t->peer_verified)
        for (size_t i = 0; i < c->allow.n && !ok; i++)
            ok = xr_identity_match(t->peer, c->allow.items[i]);
    if (!ok)
        snprintf(t->why, sizeof(t->why), "client %s is not in allow",
                 t->identity ? t->identity : "without a certificate");
    free(t->peer);
    t->peer = NULL;
    return ok ? XR_OK : XR_DECLINED;
}
