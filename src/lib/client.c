/*
 * client.c: the client core (see client.h).
 */
#include "lib/client.h"
#include "core/xrayd.h"

#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mbedtls/ctr_drbg.h>
#include <mbedtls/entropy.h>
#include <mbedtls/error.h>
#include <mbedtls/net_sockets.h>
#include <mbedtls/ssl.h>
#include <mbedtls/x509_crt.h>

struct xr_client_s {
    xr_client_conf_t cf;
    char host[256], port[16];
    mbedtls_entropy_context entropy;
    mbedtls_ctr_drbg_context drbg;
    mbedtls_x509_crt ca, crt;
    mbedtls_pk_context pk;
    mbedtls_ssl_config conf;
    mbedtls_ssl_context ssl;
    mbedtls_net_context net;
    int open;
    uint32_t next_id;
    uint32_t heartbeat_ms;
    uint8_t in[XR_PROTO_MAX_FRAME * 2];
    size_t inlen;
};

static void xr_mberr(int rc, char *buf, size_t n)
{
    mbedtls_strerror(rc, buf, n);
}

xr_client_t *xr_client_new(const xr_client_conf_t *cf, char *err, size_t errlen)
{
    xr_client_t *c = calloc(1, sizeof(*c));
    char why[160];
    int rc;
    if (c == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    c->cf = *cf;
    if (c->cf.timeout_ms <= 0)
        c->cf.timeout_ms = 10000;
    const char *colon = strrchr(cf->agent, ':');
    const char *h = cf->agent;
    size_t hl = colon ? (size_t) (colon - cf->agent) : 0;
    if (hl > 1 && h[0] == '[' && h[hl - 1] == ']') {
        h++;
        hl -= 2;
    }
    if (colon == NULL || hl == 0 || hl >= sizeof(c->host) || strlen(colon + 1) == 0 ||
        strlen(colon + 1) >= sizeof(c->port)) {
        snprintf(err, errlen, "agent address \"%s\": expected HOST:PORT", cf->agent);
        free(c);
        return NULL;
    }
    memcpy(c->host, h, hl);
    snprintf(c->port, sizeof(c->port), "%s", colon + 1);

    mbedtls_entropy_init(&c->entropy);
    mbedtls_ctr_drbg_init(&c->drbg);
    mbedtls_x509_crt_init(&c->ca);
    mbedtls_x509_crt_init(&c->crt);
    mbedtls_pk_init(&c->pk);
    mbedtls_ssl_config_init(&c->conf);
    mbedtls_ssl_init(&c->ssl);
    mbedtls_net_init(&c->net);
    static const char pers[] = "xray client";
    if ((rc = mbedtls_ctr_drbg_seed(&c->drbg, mbedtls_entropy_func, &c->entropy,
                                    (const unsigned char *) pers, sizeof(pers) - 1)) != 0) {
        snprintf(err, errlen, "cannot seed the random generator");
        goto fail;
    }
    if ((rc = mbedtls_x509_crt_parse_file(&c->ca, cf->ca)) != 0) {
        xr_mberr(rc, why, sizeof(why));
        snprintf(err, errlen, "cannot load CA %s: %s", cf->ca, why);
        goto fail;
    }
    if ((rc = mbedtls_x509_crt_parse_file(&c->crt, cf->cert)) != 0) {
        xr_mberr(rc, why, sizeof(why));
        snprintf(err, errlen, "cannot load certificate %s: %s", cf->cert, why);
        goto fail;
    }
    if ((rc = mbedtls_pk_parse_keyfile(&c->pk, cf->key, NULL)) != 0 ||
        (rc = mbedtls_pk_check_pair(&c->crt.pk, &c->pk)) != 0) {
        xr_mberr(rc, why, sizeof(why));
        snprintf(err, errlen, "cannot use key %s: %s", cf->key, why);
        goto fail;
    }
    if ((rc = mbedtls_ssl_config_defaults(&c->conf, MBEDTLS_SSL_IS_CLIENT,
                                          MBEDTLS_SSL_TRANSPORT_STREAM,
                                          MBEDTLS_SSL_PRESET_DEFAULT)) != 0) {
        snprintf(err, errlen, "TLS configuration failed");
        goto fail;
    }
    mbedtls_ssl_conf_rng(&c->conf, mbedtls_ctr_drbg_random, &c->drbg);
    mbedtls_ssl_conf_min_version(&c->conf, MBEDTLS_SSL_MAJOR_VERSION_3,
                                 MBEDTLS_SSL_MINOR_VERSION_3);
    mbedtls_ssl_conf_max_version(&c->conf, MBEDTLS_SSL_MAJOR_VERSION_3,
                                 MBEDTLS_SSL_MINOR_VERSION_3);
    mbedtls_ssl_conf_authmode(&c->conf, MBEDTLS_SSL_VERIFY_REQUIRED);
    mbedtls_ssl_conf_ca_chain(&c->conf, &c->ca, NULL);
    mbedtls_ssl_conf_read_timeout(&c->conf, (uint32_t) c->cf.timeout_ms);
    if ((rc = mbedtls_ssl_conf_own_cert(&c->conf, &c->crt, &c->pk)) != 0) {
        snprintf(err, errlen, "cannot use certificate %s", cf->cert);
        goto fail;
    }
    return c;
fail:
    xr_client_free(c);
    return NULL;
}

void xr_client_close(xr_client_t *c)
{
    if (c->open)
        mbedtls_ssl_close_notify(&c->ssl);
    mbedtls_net_free(&c->net);
    mbedtls_ssl_free(&c->ssl);
    mbedtls_ssl_init(&c->ssl);
    c->open = 0;
    c->inlen = 0;
}

void xr_client_free(xr_client_t *c)
{
    if (c == NULL)
        return;
    xr_client_close(c);
    mbedtls_ssl_config_free(&c->conf);
    mbedtls_pk_free(&c->pk);
    mbedtls_x509_crt_free(&c->crt);
    mbedtls_x509_crt_free(&c->ca);
    mbedtls_ctr_drbg_free(&c->drbg);
    mbedtls_entropy_free(&c->entropy);
    free(c);
}

int xr_client_is_open(const xr_client_t *c)
{
    return c->open;
}

uint32_t xr_client_heartbeat_ms(const xr_client_t *c)
{
    return c->heartbeat_ms;
}

int xr_client_local(const xr_client_t *c, struct sockaddr_storage *ss)
{
    socklen_t len = sizeof(*ss);
    return c->open ? getsockname(c->net.fd, (struct sockaddr *) ss, &len) : -1;
}

void xr_paddr_from_sockaddr(xr_paddr_t *a, const struct sockaddr_storage *ss)
{
    memset(a, 0, sizeof(*a));
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *s = (const struct sockaddr_in *) ss;
        a->family = 4;
        a->port = ntohs(s->sin_port);
        memcpy(a->addr, &s->sin_addr, 4);
    } else if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *s = (const struct sockaddr_in6 *) ss;
        a->family = 6;
        a->port = ntohs(s->sin6_port);
        memcpy(a->addr, &s->sin6_addr, 16);
    }
}

static int xr_client_send(xr_client_t *c, const xr_msg_t *m, char *err, size_t errlen)
{
    uint8_t buf[XR_PROTO_MAX_FRAME];
    size_t n = xr_proto_encode(m, buf, sizeof(buf));
    if (n == 0) {
        snprintf(err, errlen, "cannot encode %s", xr_proto_type_name(m->type));
        return -1;
    }
    for (size_t off = 0; off < n;) {
        int rc = mbedtls_ssl_write(&c->ssl, buf + off, n - off);
        if (rc == MBEDTLS_ERR_SSL_WANT_WRITE)
            continue;
        if (rc < 0) {
            char why[128];
            xr_mberr(rc, why, sizeof(why));
            snprintf(err, errlen, "sending to the agent failed: %s", why);
            return -1;
        }
        off += (size_t) rc;
    }
    return 0;
}

/* The next frame from the agent. */
static int xr_client_recv(xr_client_t *c, xr_msg_t *m, char *err, size_t errlen)
{
    for (;;) {
        size_t used;
        const char *why;
        xr_proto_status_t st = xr_proto_decode(c->in, c->inlen, m, &used, &why);
        if (st == XR_PROTO_OK) {
            memmove(c->in, c->in + used, c->inlen - used);
            c->inlen -= used;
            return 0;
        }
        if (st != XR_PROTO_AGAIN) {
            snprintf(err, errlen, "the agent sent an invalid frame (bad %s)", why);
            return -1;
        }
        int rc = mbedtls_ssl_read(&c->ssl, c->in + c->inlen, sizeof(c->in) - c->inlen);
        if (rc == MBEDTLS_ERR_SSL_WANT_READ)
            continue;
        if (rc == MBEDTLS_ERR_SSL_TIMEOUT) {
            snprintf(err, errlen, "the agent did not answer within %d ms", c->cf.timeout_ms);
            return -1;
        }
        if (rc == 0 || rc == MBEDTLS_ERR_SSL_PEER_CLOSE_NOTIFY) {
            snprintf(err, errlen, "the agent closed the connection");
            return -1;
        }
        if (rc < 0) {
            char e[128];
            xr_mberr(rc, e, sizeof(e));
            snprintf(err, errlen, "reading from the agent failed: %s", e);
            return -1;
        }
        c->inlen += (size_t) rc;
    }
}

static int xr_client_answer(xr_client_t *c, uint32_t id, xr_msg_t *reply, int *perr, char *err,
                            size_t errlen)
{
    for (;;) {
        if (xr_client_recv(c, reply, err, errlen) < 0) {
            xr_client_close(c);
            return -1;
        }
        if (reply->type == XR_MSG_ERROR) {
            if (reply->u.error.id != id && reply->u.error.id != 0)
                continue; /* an answer to a request we gave up on */
            *perr = reply->u.error.code;
            snprintf(err, errlen, "%s: %s", xr_proto_err_name(reply->u.error.code),
                     reply->u.error.message.s);
            if (reply->u.error.id == 0)
                xr_client_close(c); /* the agent closes after such an error */
            return -1;
        }
        return 0;
    }
}

int xr_client_open(xr_client_t *c, int *perr, char *err, size_t errlen)
{
    char why[160];
    int rc;
    *perr = 0;
    xr_client_close(c);
    if ((rc = mbedtls_net_connect(&c->net, c->host, c->port, MBEDTLS_NET_PROTO_TCP)) != 0) {
        xr_mberr(rc, why, sizeof(why));
        snprintf(err, errlen, "cannot connect to the agent at %s: %s", c->cf.agent, why);
        return -1;
    }
    if ((rc = mbedtls_ssl_setup(&c->ssl, &c->conf)) != 0 ||
        (rc = mbedtls_ssl_set_hostname(&c->ssl, c->cf.agent_name ? c->cf.agent_name : c->host)) !=
            0) {
        snprintf(err, errlen, "TLS setup failed");
        xr_client_close(c);
        return -1;
    }
    mbedtls_ssl_set_bio(&c->ssl, &c->net, mbedtls_net_send, NULL, mbedtls_net_recv_timeout);
    while ((rc = mbedtls_ssl_handshake(&c->ssl)) != 0) {
        if (rc == MBEDTLS_ERR_SSL_WANT_READ || rc == MBEDTLS_ERR_SSL_WANT_WRITE)
            continue;
        uint32_t flags = mbedtls_ssl_get_verify_result(&c->ssl);
        if (flags != 0 && flags != (uint32_t) -1) {
            char info[256];
            mbedtls_x509_crt_verify_info(info, sizeof(info), "", flags);
            info[strcspn(info, "\n")] = '\0';
            snprintf(err, errlen, "the agent's certificate is not trusted: %s", info);
        } else {
            xr_mberr(rc, why, sizeof(why));
            snprintf(err, errlen, "TLS handshake with the agent failed: %s", why);
        }
        xr_client_close(c);
        return -1;
    }
    c->open = 1;
    xr_msg_t m = {.type = XR_MSG_HELLO}, r;
    m.u.hello.min_version = m.u.hello.max_version = XR_PROTO_VERSION;
    m.u.hello.role = XR_ROLE_LIBRARY;
    xr_pstr_set(&m.u.hello.software, "xray/" XR_VERSION);
    if (xr_client_send(c, &m, err, errlen) < 0 ||
        xr_client_answer(c, 0, &r, perr, err, errlen) < 0) {
        xr_client_close(c);
        return -1;
    }
    if (r.type != XR_MSG_HELLO_OK) {
        snprintf(err, errlen, "the agent answered HELLO with %s", xr_proto_type_name(r.type));
        xr_client_close(c);
        return -1;
    }
    c->heartbeat_ms = r.u.hello_ok.heartbeat_ms;
    return 0;
}

int xr_client_call(xr_client_t *c, xr_msg_t *req, xr_msg_t *reply, int *perr, char *err,
                   size_t errlen)
{
    *perr = 0;
    if (!c->open) {
        snprintf(err, errlen, "not connected to the agent");
        return -1;
    }
    uint32_t id = ++c->next_id;
    switch (req->type) {
    case XR_MSG_REGISTER: req->u.reg.id = id; break;
    case XR_MSG_REFRESH:
    case XR_MSG_UNREGISTER: req->u.refresh.id = id; break;
    case XR_MSG_CONNECT: req->u.connect.id = id; break;
    default: snprintf(err, errlen, "%s is not a request", xr_proto_type_name(req->type)); return -1;
    }
    if (xr_client_send(c, req, err, errlen) < 0) {
        xr_client_close(c);
        return -1;
    }
    return xr_client_answer(c, id, reply, perr, err, errlen);
}
