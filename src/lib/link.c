/*
 * link.c: overlay links (see client.h): dialing a destination through
 * the agent (CONNECT, then TLS to the relay point, LINK, LINK_OK and
 * the end-to-end ACK), and moving the application's bytes and datagrams
 * on a link.
 */
#include "common/common.h"
#include "lib/client_int.h"
#include "common/identity.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <strings.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <mbedtls/platform_util.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Room for a few sealed records per write. */
#define XR_LINK_OBUF (4 * (XR_REC_MAX_PLAIN + 64))

int xr_tcp_to(const xr_paddr_t *a, int timeout_ms, char *err, size_t errlen)
{
    return xr_tcp_on(-1, a, timeout_ms, err, errlen);
}

int xr_tcp_on(int fd, const xr_paddr_t *a, int timeout_ms, char *err, size_t errlen)
{
    struct sockaddr_storage ss;
    socklen_t len = xr_paddr_to_sockaddr(a, &ss);
    char at[80];
    if (len == 0) {
        snprintf(err, errlen, "bad address");
        if (fd >= 0)
            close(fd);
        return -1;
    }
    if (fd < 0)
        fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
    if (fd >= 0)
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)); /* bounds connect() too */
    if (fd < 0 || connect(fd, (struct sockaddr *) &ss, len) != 0) {
        snprintf(err, errlen, "cannot connect to %s: %s", xr_paddr_str(a, at, sizeof(at)),
                 strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    xr__nodelay(fd);
    return fd;
}

/* Read exactly one frame from a link: nothing after it may be consumed,
 * it is the application's stream.  0, or -1 with err. */
int xr__link_frame(xr_link_t *l, xr_msg_t *r, const char *what, char *err, size_t errlen)
{
    uint8_t in[XR_PROTO_MAX_FRAME];
    size_t have = 0, used = 0, need = XR_PROTO_HEADER;
    const char *why = NULL;
    for (;;) {
        while (have < need) {
            int rc = mbedtls_ssl_read(&l->ssl, in + have, need - have);
            if (rc == MBEDTLS_ERR_SSL_WANT_READ)
                continue;
            if (rc <= 0) {
                snprintf(err, errlen, "the %s closed the link%s", what,
                         rc == MBEDTLS_ERR_SSL_TIMEOUT ? " (timeout)" : "");
                return -1;
            }
            have += (size_t) rc;
        }
        xr_proto_status_t st = xr_proto_decode(in, have, r, &used, &why);
        if (st == XR_PROTO_OK)
            return 0;
        if (st != XR_PROTO_AGAIN) {
            snprintf(err, errlen, "the %s sent an invalid frame (bad %s)", what, why);
            return -1;
        }
        need = XR_PROTO_HEADER + ((size_t) in[2] << 8 | in[3]);
    }
}

int xr__link_send(xr_link_t *l, const xr_msg_t *m, const char *what, char *err, size_t errlen)
{
    uint8_t f[XR_PROTO_MAX_FRAME];
    size_t n = xr_proto_encode(m, f, sizeof(f));
    if (n == 0 || mbedtls_ssl_write(&l->ssl, f, n) != (int) n) {
        snprintf(err, errlen, "sending to the %s failed", what);
        return -1;
    }
    return 0;
}

/* Expect a frame of type want; an ERROR becomes the reason. */
int xr__link_expect(xr_link_t *l, int want, const char *what, char *err, size_t errlen)
{
    xr_msg_t r;
    if (xr__link_frame(l, &r, what, err, errlen) < 0)
        return -1;
    if (r.type == XR_MSG_ERROR) {
        snprintf(err, errlen, "%s: %s", xr_proto_err_name(r.u.error.code), r.u.error.message.s);
        return -1;
    }
    if ((int) r.type != want) {
        snprintf(err, errlen, "the %s answered %s", what, xr_proto_type_name(r.type));
        return -1;
    }
    return 0;
}

void xr__link_free(xr_link_t *l)
{
    mbedtls_ssl_free(&l->ssl);
    mbedtls_net_free(&l->net);
    xr_rec_free(&l->rec);
    free(l->rbuf);
    free(l->pbuf);
    free(l->obuf);
    mbedtls_platform_zeroize(l->kb, sizeof(l->kb));
    free(l);
}

/* ---- the record layer once a link's frames are done ---------------------- */

static __thread xr_link_t *xr_link_current; /* whose handshake runs on this thread */

int xr__link_export(void *p, const unsigned char *ms, const unsigned char *kb, size_t maclen,
                    size_t keylen, size_t ivlen, const unsigned char client_random[32],
                    const unsigned char server_random[32], mbedtls_tls_prf_types prf)
{
    xr_link_t *l = xr_link_current;
    /* The control connection's handshake has no link and keeps mbedTLS's
     * records. */
    if (l != NULL)
        l->have_kb = xr_rec_keyblock(l->kb, &l->keylen, &l->ivlen, kb, maclen, keylen, ivlen);
    return 0;
}

int xr__link_handshake(xr_link_t *l)
{
    int rc;
    xr_link_current = l;
    while ((rc = mbedtls_ssl_handshake(&l->ssl)) == MBEDTLS_ERR_SSL_WANT_READ ||
           rc == MBEDTLS_ERR_SSL_WANT_WRITE)
        ;
    xr_link_current = NULL;
    l->is_server = l->ssl.conf->endpoint == MBEDTLS_SSL_IS_SERVER;
    return rc;
}

/* Records sealed and opened by the record layer from here on, as the
 * agents do (about twice the throughput of mbedTLS's GCM), when the
 * suite is an AEAD one and mbedTLS holds nothing unread. */
void xr__link_fast(xr_link_t *l)
{
    const char *no = getenv("XRAY_LINK_MBEDTLS"); /* for comparisons */
    int suite = mbedtls_ssl_get_ciphersuite_id(mbedtls_ssl_get_ciphersuite(&l->ssl));
    xr_aead_t aead = xr_rec_suite_aead(suite);
    int clean = mbedtls_ssl_get_bytes_avail(&l->ssl) == 0 && !mbedtls_ssl_check_pending(&l->ssl);
    if ((no == NULL || no[0] == '\0') && l->have_kb && aead != XR_AEAD_NONE && clean &&
        xr_rec_available(aead) && l->keylen == 32 &&
        l->ivlen == (aead == XR_AEAD_AES256GCM ? 4u : 12u)) {
        l->rbuf = malloc(XR_REC_MAX_CIPHER * 2);
        l->pbuf = malloc(XR_REC_MAX_CIPHER * 2);
        l->obuf = malloc(XR_LINK_OBUF);
        uint64_t rx = xr_rec_seq(l->ssl.in_ctr), tx = xr_rec_seq(l->ssl.cur_out_ctr);
        if (l->rbuf != NULL && l->pbuf != NULL && l->obuf != NULL &&
            xr_rec_init(&l->rec, aead, l->is_server, l->kb, l->keylen, l->ivlen, rx, tx) == 0) {
            l->fast = 1;
            mbedtls_ssl_free(&l->ssl);
            mbedtls_ssl_init(&l->ssl);
        }
    }
    mbedtls_platform_zeroize(l->kb, sizeof(l->kb));
    l->have_kb = 0;
}

/* After a send or recv on the link's socket that returned r: 1 when it
 * is to be tried again (interrupted, or the socket's timeout - it bounded
 * the connect - ran out: then after waiting for events), else 0. */
static int xr_link_again(const xr_link_t *l, ssize_t r, short events)
{
    if (r >= 0 || (errno != EINTR && errno != EAGAIN && errno != EWOULDBLOCK))
        return 0;
    if (errno != EINTR) {
        struct pollfd pf = {l->net.fd, events, 0};
        poll(&pf, 1, -1);
    }
    return 1;
}

/* All of p to the link's socket: 0, or -1. */
static int xr_link_send_all(xr_link_t *l, const unsigned char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = send(l->net.fd, p, n, MSG_NOSIGNAL);
        if (xr_link_again(l, w, POLLOUT))
            continue;
        if (w <= 0)
            return -1;
        p += w;
        n -= (size_t) w;
    }
    return 0;
}

/* Open what rbuf holds: cleartext to pbuf, a partial record kept. */
static void xr_link_open_buffered(xr_link_t *l)
{
    size_t plain = 0, used = 0;
    uint8_t alert[2];
    xr_rec_status_t st = xr_rec_open(&l->rec, l->rbuf, l->rlen, &plain, &used, alert);
    memcpy(l->pbuf, l->rbuf, plain);
    l->poff = 0;
    l->plen = plain;
    memmove(l->rbuf, l->rbuf + used, l->rlen - used);
    l->rlen -= used;
    if (st == XR_REC_CLOSE_NOTIFY)
        l->eof = 1;
    else if (st != XR_REC_OK)
        l->bad = 1;
}

/* Is a whole record waiting in rbuf? */
static int xr_link_whole(const xr_link_t *l)
{
    return l->rlen >= XR_REC_HEADER &&
           l->rlen >= XR_REC_HEADER + ((size_t) l->rbuf[3] << 8 | l->rbuf[4]);
}

static ssize_t xr_link_read_fast(xr_link_t *l, void *buf, size_t len)
{
    for (;;) {
        if (l->poff < l->plen) {
            size_t n = l->plen - l->poff < len ? l->plen - l->poff : len;
            memcpy(buf, l->pbuf + l->poff, n);
            l->poff += n;
            return (ssize_t) n;
        }
        if (l->eof)
            return 0;
        if (l->bad)
            return -1;
        if (xr_link_whole(l)) {
            xr_link_open_buffered(l);
            continue;
        }
        if (l->rlen == XR_REC_MAX_CIPHER * 2)
            return -1;
        ssize_t r = recv(l->net.fd, l->rbuf + l->rlen, XR_REC_MAX_CIPHER * 2 - l->rlen, 0);
        if (xr_link_again(l, r, POLLIN))
            continue;
        if (r < 0)
            return -1;
        if (r == 0)
            return l->rlen > 0 ? -1 : 0; /* a record cut short, or the end */
        l->rlen += (size_t) r;
    }
}

static ssize_t xr_link_write_fast(xr_link_t *l, const void *buf, size_t len)
{
    const unsigned char *p = buf;
    size_t off = 0;
    while (off < len) {
        size_t used = 0;
        size_t n = xr_rec_seal(&l->rec, XR_REC_TYPE_APPDATA, p + off, len - off, l->obuf,
                               XR_LINK_OBUF, &used);
        if (n == 0 || xr_link_send_all(l, l->obuf, n) < 0)
            return -1;
        off += used;
    }
    return (ssize_t) len;
}

int xr__key_is(const mbedtls_ssl_context *ssl, const char *want)
{
    xr_identity_t id;
    const mbedtls_x509_crt *crt = mbedtls_ssl_get_peer_cert(ssl);
    return crt != NULL && want[0] != '\0' && xr_identity_from_crt(crt, &id) == XR_OK &&
           strcasecmp(id.pubkey_sha256, want) == 0;
}

xr_link_t *xr_link_tls(xr_client_t *c, const xr_paddr_t *rp, int check_name, char *err,
                       size_t errlen)
{
    xr_link_t *l = calloc(1, sizeof(*l));
    if (l == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    mbedtls_net_init(&l->net);
    mbedtls_ssl_init(&l->ssl);
    int rc;
    l->net.fd = xr_tcp_to(rp, c->cf.timeout_ms, err, errlen);
    if (l->net.fd < 0)
        goto fail;
    if (mbedtls_ssl_setup(&l->ssl, &c->conf) != 0 ||
        (check_name &&
         mbedtls_ssl_set_hostname(&l->ssl, c->cf.agent_name ? c->cf.agent_name : c->host) != 0)) {
        snprintf(err, errlen, "TLS setup failed");
        goto fail;
    }
    pthread_mutex_lock(&c->session_lock);
    if (c->has_link_session)
        mbedtls_ssl_set_session(&l->ssl, &c->link_session); /* a failed offer is a full one */
    pthread_mutex_unlock(&c->session_lock);
    mbedtls_ssl_set_bio(&l->ssl, &l->net, mbedtls_net_send, NULL, mbedtls_net_recv_timeout);
    if ((rc = xr__link_handshake(l)) != 0) {
        char why[128];
        xr__mberr(rc, why, sizeof(why));
        snprintf(err, errlen, "TLS with the relay point failed: %s", why);
        goto fail;
    }
    /* The relay points of one agent share its session: the next link
     * resumes. */
    pthread_mutex_lock(&c->session_lock);
    if (c->has_link_session)
        mbedtls_ssl_session_free(&c->link_session);
    mbedtls_ssl_session_init(&c->link_session);
    c->has_link_session = mbedtls_ssl_get_session(&l->ssl, &c->link_session) == 0;
    pthread_mutex_unlock(&c->session_lock);
    return l;
fail:
    xr__link_free(l);
    return NULL;
}

xr_link_t *xr_link_join(xr_link_t *l, const uint8_t *token, const char *want_key, char *err,
                        size_t errlen)
{
    if (want_key != NULL && !xr__key_is(&l->ssl, want_key)) {
        snprintf(err, errlen, "the relay point's certificate is not the agent's");
        goto fail;
    }
    /* LINK and our end-to-end ACK in one write: the ACK need not wait
     * for LINK_OK (the relay point holds it until it joins the link), so
     * the far side's ACK can be on its way one round trip sooner.  Then
     * LINK_OK and the far ACK; the rest is the stream. */
    xr_msg_t m = {.type = XR_MSG_LINK}, ack = {.type = XR_MSG_ACK};
    memcpy(m.u.link.token, token, XR_PROTO_TOKEN);
    uint8_t f[2 * XR_PROTO_MAX_FRAME];
    size_t n = xr_proto_encode(&m, f, XR_PROTO_MAX_FRAME), k;
    k = n ? xr_proto_encode(&ack, f + n, XR_PROTO_MAX_FRAME) : 0;
    if (n == 0 || k == 0 || xr_link_write(l, f, n + k) != (ssize_t) (n + k)) {
        snprintf(err, errlen, "sending to the relay point failed");
        goto fail;
    }
    if (xr__link_expect(l, XR_MSG_LINK_OK, "relay point", err, errlen) < 0 ||
        xr__link_expect(l, XR_MSG_ACK, "relay point", err, errlen) < 0)
        goto fail;
    xr__link_fast(l);
    return l;
fail:
    xr__link_free(l);
    return NULL;
}

xr_link_t *xr__link_open(xr_client_t *c, const xr_paddr_t *rp, const uint8_t *token,
                         const char *want_key, char *err, size_t errlen)
{
    xr_link_t *l = xr_link_tls(c, rp, want_key == NULL, err, errlen);
    return l ? xr_link_join(l, token, want_key, err, errlen) : NULL;
}

static int xr_udp_to(const xr_paddr_t *a, char *err, size_t errlen)
{
    struct sockaddr_storage ss;
    socklen_t len = xr_paddr_to_sockaddr(a, &ss);
    char at[80];
    int fd = len ? socket(ss.ss_family, SOCK_DGRAM | SOCK_CLOEXEC, 0) : -1;
    if (fd < 0 || connect(fd, (struct sockaddr *) &ss, len) != 0) {
        snprintf(err, errlen, "cannot reach %s: %s", xr_paddr_str(a, at, sizeof(at)),
                 strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    return fd;
}

int xr_client_dial(xr_client_t *c, const xr_paddr_t *dst, xr_link_t **link, int *fd, int *perr,
                   char *err, size_t errlen)
{
    return xr_client_dial_proto(c, XR_PROTO_TCP, dst, link, fd, perr, err, errlen);
}

int xr_client_route(xr_client_t *c, int proto, const xr_paddr_t *dst, const xr_paddr_t *src,
                    xr_route_t *rt, xr_link_t **tls, int *perr, char *err, size_t errlen)
{
    *tls = NULL;
    *perr = 0;
    if (!c->open) {
        snprintf(err, errlen, "not connected to the agent");
        return -1;
    }
    xr_msg_t req = {.type = src != NULL ? XR_MSG_OPEN : XR_MSG_CONNECT}, r;
    uint32_t id = ++c->next_id;
    req.u.connect.id = id;
    req.u.connect.proto = (uint8_t) proto;
    req.u.connect.dst = *dst;
    if (src != NULL)
        req.u.connect.src = *src;
    if (xr__client_send(c, &req, err, errlen) < 0) {
        xr_client_close(c);
        return -1;
    }
    /* The link to our agent's relay point comes up while the agent
     * answers (XRAY §8: the links of a connection are set up in
     * parallel): its relay points are at the address the control
     * connection reaches.  A direct answer or another address wastes one
     * (resumed) handshake. */
    xr_paddr_t at;
    xr_paddr_from_sockaddr(&at, &c->agent_addr);
    char e2[200];
    /* An agent that opened the firewalls last time will again: no link. */
    xr_link_t *early =
        at.family && !(src != NULL && c->opens) ? xr_link_tls(c, &at, 0, e2, sizeof(e2)) : NULL;
    if (xr__client_answer(c, id, &r, perr, err, errlen) < 0) {
        if (early)
            xr__link_free(early);
        return -1;
    }
    if (src != NULL)
        c->opens = r.type == XR_MSG_OPENED;
    if (r.type == XR_MSG_OPENED) {
        if (early)
            xr__link_free(early);
        rt->mode = XR_ROUTE_OPEN;
        rt->addr = r.u.opened.addr;
        rt->state_ms = r.u.opened.state_ms;
        return 0;
    }
    if (r.type != XR_MSG_CONNECT_OK) {
        if (early)
            xr__link_free(early);
        snprintf(err, errlen, "the agent answered CONNECT with %s", xr_proto_type_name(r.type));
        return -1;
    }
    rt->mode = r.u.connect_ok.mode;
    rt->addr = r.u.connect_ok.addr;
    memcpy(rt->token, r.u.connect_ok.token, XR_PROTO_TOKEN);
    sodium_bin2hex(rt->key, sizeof(rt->key), r.u.connect_ok.peer_key,
                   sizeof(r.u.connect_ok.peer_key));
    if (early != NULL &&
        (rt->mode != XR_CONNECT_RELAY || memcmp(&rt->addr, &at, sizeof(at)) != 0)) {
        xr__link_free(early);
        early = NULL;
    }
    if (rt->mode != XR_CONNECT_RELAY)
        return 0;
    *tls = early ? early : xr_link_tls(c, &rt->addr, 0, err, errlen);
    return *tls != NULL ? 0 : -1;
}

int xr_open_src(int fd, xr_paddr_t *src)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);
    if (getsockname(fd, (struct sockaddr *) &ss, &len) != 0)
        return -1;
    if ((ss.ss_family == AF_INET && ((struct sockaddr_in *) &ss)->sin_port == 0) ||
        (ss.ss_family == AF_INET6 && ((struct sockaddr_in6 *) &ss)->sin6_port == 0)) {
        /* The opening is for this socket's port: it needs one now. */
        struct sockaddr_storage any;
        memset(&any, 0, sizeof(any));
        any.ss_family = ss.ss_family;
        socklen_t alen =
            ss.ss_family == AF_INET ? sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6);
        len = sizeof(ss);
        if (bind(fd, (struct sockaddr *) &any, alen) != 0 ||
            getsockname(fd, (struct sockaddr *) &ss, &len) != 0)
            return -1;
    }
    xr_paddr_from_sockaddr(src, &ss);
    if (src->family == 0) {
        errno = EAFNOSUPPORT;
        return -1;
    }
    return 0;
}

void xr_heartbeat(int fd, uint32_t state_ms)
{
    /* A probe every third of the state's life, 1 s at least and at most
     * what TCP_KEEPIDLE takes; three unanswered end the connection, as
     * its state in the firewalls would have ended. */
    int on = 1, cnt = 3;
    int every = (int) XR_MIN(XR_MAX(state_ms / 3000, 1u), 32767u);
    setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &on, sizeof(on));
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &every, sizeof(every));
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &every, sizeof(every));
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof(cnt));
}

int xr_client_dial_proto(xr_client_t *c, int proto, const xr_paddr_t *dst, xr_link_t **link,
                         int *fd, int *perr, char *err, size_t errlen)
{
    xr_route_t rt;
    xr_link_t *tls;
    xr_paddr_t src;
    *link = NULL;
    *fd = -1;
    /* TCP: a socket of our own, bound first, so that an application whose
     * traversal is open gets its openings (UDP here is relayed or direct). */
    int s = proto == XR_PROTO_TCP
                ? socket(dst->family == 6 ? AF_INET6 : AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)
                : -1;
    if (s >= 0 && xr_open_src(s, &src) < 0) {
        close(s);
        s = -1;
    }
    if (xr_client_route(c, proto, dst, s >= 0 ? &src : NULL, &rt, &tls, perr, err, errlen) < 0) {
        if (s >= 0)
            close(s);
        return -1;
    }
    if (rt.mode == XR_ROUTE_OPEN) {
        xr_heartbeat(s, rt.state_ms);
        *fd = xr_tcp_on(s, &rt.addr, c->cf.timeout_ms, err, errlen);
        return *fd < 0 ? -1 : 0;
    }
    if (s >= 0)
        close(s);
    if (rt.mode == XR_CONNECT_DIRECT) {
        *fd = proto == XR_PROTO_UDP ? xr_udp_to(&rt.addr, err, errlen)
                                    : xr_tcp_to(&rt.addr, c->cf.timeout_ms, err, errlen);
        return *fd < 0 ? -1 : 0;
    }
    *link = xr_link_join(tls, rt.token, rt.key, err, errlen);
    return *link != NULL ? 0 : -1;
}

ssize_t xr_link_read(xr_link_t *l, void *buf, size_t len)
{
    if (l->fast)
        return xr_link_read_fast(l, buf, len);
    for (;;) {
        int rc = mbedtls_ssl_read(&l->ssl, buf, len);
        if (rc == MBEDTLS_ERR_SSL_WANT_READ || rc == MBEDTLS_ERR_SSL_TIMEOUT)
            continue;
        if (rc == MBEDTLS_ERR_SSL_PEER_CLOSE_NOTIFY || rc == 0)
            return 0;
        return rc < 0 ? -1 : rc;
    }
}

ssize_t xr_link_write(xr_link_t *l, const void *buf, size_t len)
{
    if (l->fast)
        return xr_link_write_fast(l, buf, len);
    size_t off = 0;
    while (off < len) {
        int rc = mbedtls_ssl_write(&l->ssl, (const unsigned char *) buf + off, len - off);
        if (rc == MBEDTLS_ERR_SSL_WANT_WRITE)
            continue;
        if (rc < 0)
            return -1;
        off += (size_t) rc;
    }
    return (ssize_t) off;
}

int xr_link_send_dgram(xr_link_t *l, const void *p, size_t n)
{
    if (n > XR_UDP_MAX) {
        errno = EMSGSIZE;
        return -1;
    }
    /* One write, so that the datagram is one record (or a few), never
     * split around another's. */
    unsigned char f[2 + XR_UDP_MAX];
    f[0] = (unsigned char) (n >> 8);
    f[1] = (unsigned char) n;
    memcpy(f + 2, p, n);
    return xr_link_write(l, f, n + 2) == (ssize_t) (n + 2) ? 0 : -1;
}

/* Exactly n bytes, or 0 at a clean end before the first, or -1. */
static ssize_t xr_link_read_exact(xr_link_t *l, unsigned char *p, size_t n)
{
    size_t have = 0;
    while (have < n) {
        ssize_t r = xr_link_read(l, p + have, n - have);
        if (r <= 0)
            return r < 0 || have > 0 ? -1 : 0;
        have += (size_t) r;
    }
    return (ssize_t) n;
}

int xr_link_recv_dgram(xr_link_t *l, void *buf, size_t cap, size_t *len)
{
    unsigned char h[2];
    ssize_t r = xr_link_read_exact(l, h, 2);
    if (r <= 0)
        return (int) r;
    size_t n = (size_t) h[0] << 8 | h[1];
    if (n > XR_UDP_MAX || n > cap) {
        errno = EMSGSIZE;
        return -1;
    }
    if (n > 0 && xr_link_read_exact(l, buf, n) != (ssize_t) n)
        return -1;
    *len = n;
    return 1;
}

void xr_link_shutdown(xr_link_t *l)
{
    if (!l->fast) {
        mbedtls_ssl_close_notify(&l->ssl);
        return;
    }
    size_t n = xr_rec_alert(&l->rec, 1, 0, l->obuf, XR_LINK_OBUF); /* close_notify */
    if (n > 0)
        xr_link_send_all(l, l->obuf, n);
}

int xr_link_fd(const xr_link_t *l)
{
    return l->net.fd;
}

size_t xr_link_pending(xr_link_t *l)
{
    if (l->fast) /* cleartext, or a whole record to open, or news to report */
        return l->plen - l->poff + (xr_link_whole(l) || l->eof || l->bad ? 1 : 0);
    return mbedtls_ssl_get_bytes_avail(&l->ssl);
}

void xr_link_close(xr_link_t *l)
{
    if (l == NULL)
        return;
    xr_link_shutdown(l);
    xr__link_free(l);
}

void xr_link_drop(xr_link_t *l)
{
    if (l == NULL)
        return;
    /* Not mbedtls_net_free(): its shutdown() would end the socket for a
     * child process that shares it too. */
    if (l->net.fd >= 0)
        close(l->net.fd);
    l->net.fd = -1;
    xr__link_free(l);
}

/* All of p to fd (blocking): 0, or -1. */
static int xr_write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        p += w;
        n -= (size_t) w;
    }
    return 0;
}

/* The direction in -> connection of a pump, on a thread of its own:
 * each direction may block on its writes without stopping the other
 * (one thread for both deadlocked: the far side's answers filled the
 * buffers while we wrote). */
typedef struct {
    xr_link_t *link;
    int sock, in, stop;
    int failed;
} xr_pump_up_t;

static void *xr_pump_up(void *arg)
{
    xr_pump_up_t *u = arg;
    char buf[16384];
    for (;;) {
        struct pollfd p[2] = {{u->in, POLLIN, 0}, {u->stop, POLLIN, 0}};
        if (poll(p, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            u->failed = 1;
            return NULL;
        }
        if (p[1].revents)
            return NULL; /* the caller is done */
        if (!p[0].revents)
            continue;
        ssize_t r = read(u->in, buf, sizeof(buf));
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) { /* the end of in: passed on */
            if (u->link)
                xr_link_shutdown(u->link);
            else
                shutdown(u->sock, SHUT_WR);
            return NULL;
        }
        if (u->link ? xr_link_write(u->link, buf, (size_t) r) != r
                    : xr_write_all(u->sock, buf, (size_t) r) < 0) {
            u->failed = 1;
            return NULL;
        }
    }
}

/* mbedTLS's records cannot be read and written from two threads: one
 * loop for both directions (only links of a suite the record layer does
 * not take come here). */
static int xr_link_pump_one(xr_link_t *link, int in, int out, int both, void (*tick)(void *),
                            void *arg)
{
    char buf[16384];
    int cfd = xr_link_fd(link), in_open = 1, conn_open = 1;
    while (conn_open || (both && in_open)) {
        struct pollfd p[2] = {{conn_open ? cfd : -1, POLLIN, 0}, {in_open ? in : -1, POLLIN, 0}};
        int ready = conn_open && xr_link_pending(link) > 0;
        int n = ready ? 1 : poll(p, 2, 1000);
        if (n < 0 && errno != EINTR)
            return -1;
        if (tick != NULL)
            tick(arg);
        if (n <= 0)
            continue;
        if (ready || (p[0].revents & (POLLIN | POLLHUP | POLLERR))) {
            ssize_t r = xr_link_read(link, buf, sizeof(buf));
            if (r < 0)
                return -1;
            if (r == 0) {
                conn_open = 0;
                shutdown(out, SHUT_WR); /* a socket's reader sees the end too */
                continue;
            }
            if (xr_write_all(out, buf, (size_t) r) < 0)
                return -1;
        }
        if (in_open && (p[1].revents & (POLLIN | POLLHUP | POLLERR))) {
            ssize_t r = read(in, buf, sizeof(buf));
            if (r <= 0) {
                in_open = 0;
                xr_link_shutdown(link);
            } else if (xr_link_write(link, buf, (size_t) r) != r) {
                return -1;
            }
        }
    }
    return 0;
}

int xr_link_pump(xr_link_t *link, int sock, int in, int out, int both, void (*tick)(void *),
                 void *arg)
{
    if (link != NULL && !link->fast)
        return xr_link_pump_one(link, in, out, both, tick, arg);
    int sp[2];
    xr_pump_up_t u = {.link = link, .sock = sock, .in = in, .stop = -1};
    pthread_t th;
    if (pipe2(sp, O_CLOEXEC) != 0)
        return -1;
    u.stop = sp[0];
    if (pthread_create(&th, NULL, xr_pump_up, &u) != 0) {
        close(sp[0]);
        close(sp[1]);
        return -1;
    }
    /* This thread: the connection -> out. */
    char buf[16384];
    int cfd = link ? xr_link_fd(link) : sock, rc = 0;
    for (;;) {
        struct pollfd p = {cfd, POLLIN, 0};
        int ready = link != NULL && xr_link_pending(link) > 0;
        int n = ready ? 1 : poll(&p, 1, 1000);
        if (n < 0 && errno != EINTR) {
            rc = -1;
            break;
        }
        if (tick != NULL)
            tick(arg);
        if (n <= 0)
            continue;
        ssize_t r = link ? xr_link_read(link, buf, sizeof(buf)) : read(cfd, buf, sizeof(buf));
        if (r < 0 && link == NULL && errno == EINTR)
            continue;
        if (r < 0) {
            rc = -1;
            break;
        }
        if (r == 0) {
            shutdown(out, SHUT_WR); /* a socket's reader sees the end too */
            break;
        }
        if (xr_write_all(out, buf, (size_t) r) < 0) {
            rc = -1;
            break;
        }
    }
    if (!both || rc < 0) { /* the other direction is not waited for */
        char one = 1;
        if (write(sp[1], &one, 1) < 0)
            rc = -1;
    }
    pthread_join(th, NULL);
    close(sp[0]);
    close(sp[1]);
    return rc < 0 || u.failed ? -1 : 0;
}
