/*
 * incoming.c: connections to the application (see client.h): INCOMING
 * frames taken (mode 2: we dial the relay point) or expected (mode 1:
 * the agent dials our server socket, and accept_link checks who it is
 * before the application's stream starts).
 */
#include "common/common.h"
#include "lib/client_int.h"
#include "common/identity.h"

#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <strings.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Remember a mode 1 INCOMING until its link comes (or it is too old). */
static void xr_client_expect(xr_client_t *c, const xr_msg_t *in)
{
    int64_t now = xr__client_now_ms();
    size_t j = 0;
    for (size_t i = 0; i < c->nexpect; i++)
        if (c->expect[i].until > now)
            c->expect[j++] = c->expect[i];
    c->nexpect = j;
    if (c->nexpect == XR_EXPECT_MAX) { /* the oldest gives way */
        memmove(c->expect, c->expect + 1, (XR_EXPECT_MAX - 1) * sizeof(c->expect[0]));
        c->nexpect--;
    }
    c->expect[c->nexpect].in = *in;
    c->expect[c->nexpect].until = now + XR_EXPECT_MS;
    c->nexpect++;
}

/* Take the mode 1 INCOMING with this token out of the expected ones. */
static int xr_client_expected(xr_client_t *c, const uint8_t *token, xr_msg_t *in)
{
    for (size_t i = 0; i < c->nexpect; i++)
        if (sodium_memcmp(c->expect[i].in.u.incoming.token, token, XR_PROTO_TOKEN) == 0) {
            if (in != NULL)
                *in = c->expect[i].in;
            memmove(c->expect + i, c->expect + i + 1, (c->nexpect - i - 1) * sizeof(c->expect[0]));
            c->nexpect--;
            return 1;
        }
    return 0;
}

int xr_client_take_begin(xr_client_t *c, const xr_msg_t *in, xr_link_t **tls, char *err,
                         size_t errlen)
{
    if (tls != NULL)
        *tls = NULL;
    xr_msg_t ok = {.type = XR_MSG_INCOMING_OK};
    ok.u.done.id = in->u.incoming.id;
    if (xr__client_send(c, &ok, err, errlen) < 0) {
        xr_client_close(c);
        return -1;
    }
    if (in->u.incoming.mode == XR_INCOMING_INBOUND) {
        xr_client_expect(c, in); /* the agent's link comes to the server socket */
        return 0;
    }
    /* Mode 2, maybe after a mode 1 whose link the agent could not open. */
    xr_client_expected(c, in->u.incoming.token, NULL);
    if (tls == NULL)
        return 0; /* the caller opens it */
    *tls = xr_link_tls(c, &in->u.incoming.addr, 1, err, errlen);
    return *tls != NULL ? 0 : -1;
}

int xr_client_take(xr_client_t *c, const xr_msg_t *in, xr_link_t **link, char *err, size_t errlen)
{
    xr_link_t *tls;
    *link = NULL;
    if (xr_client_take_begin(c, in, &tls, err, errlen) < 0)
        return -1;
    if (tls != NULL && (*link = xr_link_join(tls, in->u.incoming.token, NULL, err, errlen)) == NULL)
        return -1;
    return 0;
}

int xr_client_from_agent(const xr_client_t *c, const struct sockaddr_storage *peer)
{
    const struct sockaddr_storage *a = &c->agent_addr;
    if (!c->open || peer->ss_family != a->ss_family)
        return 0;
    if (a->ss_family == AF_INET)
        return ((const struct sockaddr_in *) peer)->sin_addr.s_addr ==
               ((const struct sockaddr_in *) a)->sin_addr.s_addr;
    if (a->ss_family == AF_INET6)
        return memcmp(&((const struct sockaddr_in6 *) peer)->sin6_addr,
                      &((const struct sockaddr_in6 *) a)->sin6_addr, 16) == 0;
    return 0;
}

/* Read what the agent sent meanwhile: mode 1 INCOMINGs are answered and
 * expected, others queued for xr_client_next.  Waits up to wait_ms for
 * the first frame.  -1 when the control connection failed. */
static int xr_client_absorb(xr_client_t *c, int wait_ms, char *err, size_t errlen)
{
    for (int first = 1;; first = 0) {
        xr_msg_t in;
        size_t q = c->nqueued;
        c->nqueued = 0; /* xr_client_next must read the connection, not the queue */
        int got = xr_client_next(c, &in, first ? wait_ms : 0, err, errlen);
        if (got <= 0) {
            c->nqueued = got < 0 ? 0 : q;
            return got;
        }
        c->nqueued = q;
        if (in.type != XR_MSG_INCOMING)
            continue;
        if (in.u.incoming.mode == XR_INCOMING_INBOUND) {
            xr_msg_t ok = {.type = XR_MSG_INCOMING_OK};
            ok.u.done.id = in.u.incoming.id;
            if (xr__client_send(c, &ok, err, errlen) < 0) {
                xr_client_close(c);
                return -1;
            }
            xr_client_expect(c, &in);
        } else if (c->nqueued < XR_ARRAY_SIZE(c->queued)) {
            c->queued[c->nqueued++] = in;
        }
    }
}

int xr_client_is_link(xr_client_t *c, int fd, const struct sockaddr_storage *peer)
{
    if (!xr_client_from_agent(c, peer))
        return 0;
    /* The agent announces a link before it dials: with nothing announced
     * (after a moment for the INCOMING to arrive) this is a direct client
     * on the agent's host. */
    char err[200];
    if (c->nexpect == 0 && xr_client_absorb(c, 100, err, sizeof(err)) < 0)
        return 0;
    if (c->nexpect == 0)
        return 0;
    return xr_link_opens_with_hello(fd, 1000);
}

int xr_link_opens_with_hello(int fd, int timeout_ms)
{
    /* The record header and the handshake type: 16 03 0x LL LL 01. */
    unsigned char b[6];
    ssize_t n = 0;
    int64_t until = xr__client_now_ms() + timeout_ms;
    for (;;) {
        int64_t left = until - xr__client_now_ms();
        struct pollfd p = {fd, POLLIN, 0};
        if (left <= 0 || poll(&p, 1, (int) left) != 1)
            return 0;
        n = recv(fd, b, sizeof(b), MSG_PEEK);
        if (n <= 0 || b[0] != 0x16)
            return 0; /* closed, or a direct client's first byte */
        if (n == (ssize_t) sizeof(b))
            break;
        /* A partial header (a slow or split segment): the peek sees the
         * same bytes until more come, so wait a moment, not a spin. */
        poll(NULL, 0, 5);
    }
    return b[1] == 0x03 && b[2] <= 0x04 && b[5] == 0x01;
}

int xr_link_accept_begin(xr_client_t *c, int fd, xr_link_t **link, uint8_t *token, char *err,
                         size_t errlen)
{
    *link = NULL;
    xr_link_t *l = calloc(1, sizeof(*l));
    if (l == NULL) {
        close(fd);
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    mbedtls_net_init(&l->net);
    mbedtls_ssl_init(&l->ssl);
    l->net.fd = fd;
    xr__nodelay(fd);
    int rc;
    if (mbedtls_ssl_setup(&l->ssl, &c->sconf) != 0) {
        snprintf(err, errlen, "TLS setup failed");
        goto fail;
    }
    mbedtls_ssl_set_bio(&l->ssl, &l->net, mbedtls_net_send, NULL, mbedtls_net_recv_timeout);
    if ((rc = xr__link_handshake(l)) != 0) {
        char why[128];
        xr__mberr(rc, why, sizeof(why));
        snprintf(err, errlen, "TLS with the agent failed: %s", why);
        goto fail;
    }
    if (!xr__key_is(&l->ssl, c->agent_key)) {
        snprintf(err, errlen, "the link's certificate is not the agent's");
        goto fail;
    }
    xr_msg_t m;
    if (xr__link_frame(l, &m, "agent", err, errlen) < 0)
        goto fail;
    if (m.type != XR_MSG_LINK) {
        snprintf(err, errlen, "the agent's link began with %s", xr_proto_type_name(m.type));
        goto fail;
    }
    memcpy(token, m.u.link.token, XR_PROTO_TOKEN);
    *link = l;
    return 0;
fail:
    xr__link_free(l);
    return -1;
}

int xr_client_link_match(xr_client_t *c, const uint8_t *token, xr_msg_t *incoming, char *err,
                         size_t errlen)
{
    if (xr_client_expected(c, token, incoming))
        return 1;
    /* Perhaps on its way: what the control connection has, no waiting. */
    if (xr_client_absorb(c, 0, err, errlen) < 0)
        return -1;
    return xr_client_expected(c, token, incoming);
}

void xr_link_refuse(xr_link_t *l)
{
    char e2[200];
    xr_msg_t no = {.type = XR_MSG_ERROR};
    no.u.error.code = XR_PERR_BAD_TOKEN;
    xr_pstr_set(&no.u.error.message, "no INCOMING names that token");
    xr__link_send(l, &no, "agent", e2, sizeof(e2));
    xr__link_free(l);
}

int xr_client_link_claim_shared(xr_client_t *c, pthread_mutex_t *lock, xr_link_t *l,
                                const uint8_t *token, xr_msg_t *incoming, char *err, size_t errlen)
{
    int64_t until = xr__client_now_ms() + 2000;
    for (;;) {
        pthread_mutex_lock(lock);
        int got = xr_client_link_match(c, token, incoming, err, errlen);
        pthread_mutex_unlock(lock);
        if (got > 0)
            return 0;
        if (got < 0) {
            xr__link_free(l);
            return -1;
        }
        if (xr__client_now_ms() >= until) {
            snprintf(err, errlen, "a link with a token no INCOMING named");
            xr_link_refuse(l);
            return -1;
        }
        struct timespec ts = {0, 2 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
}

int xr_client_link_claim(xr_client_t *c, xr_link_t *l, const uint8_t *token, xr_msg_t *incoming,
                         char *err, size_t errlen)
{
    /* The INCOMING may still be on its way on the control connection. */
    int64_t until = xr__client_now_ms() + 2000;
    while (!xr_client_expected(c, token, incoming)) {
        char e2[200];
        int64_t left = until - xr__client_now_ms();
        int got = left > 0 ? xr_client_absorb(c, (int) left, e2, sizeof(e2)) : 0;
        if (got < 0) {
            snprintf(err, errlen, "control connection lost: %s", e2);
            xr__link_free(l);
            return -1;
        }
        if (got == 0 && left <= 0) {
            snprintf(err, errlen, "a link with a token no INCOMING named");
            xr_link_refuse(l);
            return -1;
        }
    }
    return 0;
}

int xr_link_accept_finish(xr_link_t *l, char *err, size_t errlen)
{
    xr_msg_t ok = {.type = XR_MSG_LINK_OK}, ack = {.type = XR_MSG_ACK};
    if (xr__link_send(l, &ok, "agent", err, errlen) < 0 ||
        xr__link_send(l, &ack, "agent", err, errlen) < 0 ||
        xr__link_expect(l, XR_MSG_ACK, "agent", err, errlen) < 0) {
        xr__link_free(l);
        return -1;
    }
    xr__link_fast(l);
    return 0;
}

int xr_client_accept_link(xr_client_t *c, int fd, xr_link_t **link, xr_msg_t *incoming, char *err,
                          size_t errlen)
{
    uint8_t token[XR_PROTO_TOKEN];
    xr_link_t *l;
    *link = NULL;
    if (xr_link_accept_begin(c, fd, &l, token, err, errlen) < 0 ||
        xr_client_link_claim(c, l, token, incoming, err, errlen) < 0 ||
        xr_link_accept_finish(l, err, errlen) < 0)
        return -1;
    *link = l;
    return 0;
}
