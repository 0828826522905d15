/*
 * client.c: the client core's control connection (see client.h): loading
 * the application's certificates, the TLS connection to the agent and
 * HELLO, request/answer pairs, and INCOMING frames queued for
 * xr_client_next.  Links are in link.c, links the agent dials to us in
 * incoming.c.
 */
#include "common/common.h"
#include "lib/client_int.h"
#include "common/identity.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <strings.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int64_t xr__client_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void xr__mberr(int rc, char *buf, size_t n)
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
    pthread_mutex_init(&c->session_lock, NULL);
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
        xr__mberr(rc, why, sizeof(why));
        snprintf(err, errlen, "cannot load CA %s: %s", cf->ca, why);
        goto fail;
    }
    if ((rc = mbedtls_x509_crt_parse_file(&c->crt, cf->cert)) != 0) {
        xr__mberr(rc, why, sizeof(why));
        snprintf(err, errlen, "cannot load certificate %s: %s", cf->cert, why);
        goto fail;
    }
    if ((rc = mbedtls_pk_parse_keyfile(&c->pk, cf->key, NULL)) != 0 ||
        (rc = mbedtls_pk_check_pair(&c->crt.pk, &c->pk)) != 0) {
        xr__mberr(rc, why, sizeof(why));
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
    mbedtls_ssl_conf_session_tickets(&c->conf, MBEDTLS_SSL_SESSION_TICKETS_ENABLED);
    mbedtls_ssl_conf_export_keys_ext_cb(&c->conf, xr__link_export, NULL);

    /* The server side of links the agent dials (INCOMING mode 1). */
    mbedtls_ssl_config_init(&c->sconf);
    mbedtls_ssl_ticket_init(&c->ticket);
    c->sconf_ready = 1;
    if (mbedtls_ssl_config_defaults(&c->sconf, MBEDTLS_SSL_IS_SERVER, MBEDTLS_SSL_TRANSPORT_STREAM,
                                    MBEDTLS_SSL_PRESET_DEFAULT) != 0 ||
        mbedtls_ssl_ticket_setup(&c->ticket, mbedtls_ctr_drbg_random, &c->drbg,
                                 MBEDTLS_CIPHER_AES_256_GCM, 3600) != 0) {
        snprintf(err, errlen, "TLS server configuration failed");
        goto fail;
    }
    mbedtls_ssl_conf_rng(&c->sconf, mbedtls_ctr_drbg_random, &c->drbg);
    mbedtls_ssl_conf_min_version(&c->sconf, MBEDTLS_SSL_MAJOR_VERSION_3,
                                 MBEDTLS_SSL_MINOR_VERSION_3);
    mbedtls_ssl_conf_max_version(&c->sconf, MBEDTLS_SSL_MAJOR_VERSION_3,
                                 MBEDTLS_SSL_MINOR_VERSION_3);
    mbedtls_ssl_conf_authmode(&c->sconf, MBEDTLS_SSL_VERIFY_REQUIRED);
    mbedtls_ssl_conf_ca_chain(&c->sconf, &c->ca, NULL);
    mbedtls_ssl_conf_read_timeout(&c->sconf, (uint32_t) c->cf.timeout_ms);
    mbedtls_ssl_conf_session_tickets_cb(&c->sconf, mbedtls_ssl_ticket_write,
                                        mbedtls_ssl_ticket_parse, &c->ticket);
    mbedtls_ssl_conf_export_keys_ext_cb(&c->sconf, xr__link_export, NULL);
    if (mbedtls_ssl_conf_own_cert(&c->sconf, &c->crt, &c->pk) != 0) {
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
    c->nqueued = 0;
    c->nexpect = 0;
}

void xr_client_free(xr_client_t *c)
{
    if (c == NULL)
        return;
    xr_client_close(c);
    if (c->has_link_session)
        mbedtls_ssl_session_free(&c->link_session);
    if (c->has_ctl_session)
        mbedtls_ssl_session_free(&c->ctl_session);
    if (c->sconf_ready) {
        mbedtls_ssl_config_free(&c->sconf);
        mbedtls_ssl_ticket_free(&c->ticket);
    }
    mbedtls_ssl_config_free(&c->conf);
    mbedtls_pk_free(&c->pk);
    mbedtls_x509_crt_free(&c->crt);
    mbedtls_x509_crt_free(&c->ca);
    mbedtls_ctr_drbg_free(&c->drbg);
    mbedtls_entropy_free(&c->entropy);
    pthread_mutex_destroy(&c->session_lock);
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

int xr__client_send(xr_client_t *c, const xr_msg_t *m, char *err, size_t errlen)
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
            xr__mberr(rc, why, sizeof(why));
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
            xr__mberr(rc, e, sizeof(e));
            snprintf(err, errlen, "reading from the agent failed: %s", e);
            return -1;
        }
        c->inlen += (size_t) rc;
    }
}

int xr__client_answer(xr_client_t *c, uint32_t id, xr_msg_t *reply, int *perr, char *err,
                      size_t errlen)
{
    for (;;) {
        if (xr_client_recv(c, reply, err, errlen) < 0) {
            xr_client_close(c);
            return -1;
        }
        if (reply->type == XR_MSG_INCOMING) {
            if (c->nqueued < XR_ARRAY_SIZE(c->queued))
                c->queued[c->nqueued++] = *reply;
            continue; /* for xr_client_next */
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

void xr__nodelay(int fd)
{
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

int xr_client_open(xr_client_t *c, int *perr, char *err, size_t errlen)
{
    char why[160];
    int rc;
    *perr = 0;
    xr_client_close(c);
    if ((rc = mbedtls_net_connect(&c->net, c->host, c->port, MBEDTLS_NET_PROTO_TCP)) != 0) {
        xr__mberr(rc, why, sizeof(why));
        snprintf(err, errlen, "cannot connect to the agent at %s: %s", c->cf.agent, why);
        return -1;
    }
    xr__nodelay(c->net.fd);
    fcntl(c->net.fd, F_SETFD, FD_CLOEXEC); /* not for the commands a tool runs */
    if ((rc = mbedtls_ssl_setup(&c->ssl, &c->conf)) != 0 ||
        (rc = mbedtls_ssl_set_hostname(&c->ssl, c->cf.agent_name ? c->cf.agent_name : c->host)) !=
            0) {
        snprintf(err, errlen, "TLS setup failed");
        xr_client_close(c);
        return -1;
    }
    mbedtls_ssl_set_bio(&c->ssl, &c->net, mbedtls_net_send, NULL, mbedtls_net_recv_timeout);
    if (c->has_ctl_session)
        mbedtls_ssl_set_session(&c->ssl, &c->ctl_session); /* a failed offer is a full one */
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
            xr__mberr(rc, why, sizeof(why));
            snprintf(err, errlen, "TLS handshake with the agent failed: %s", why);
        }
        xr_client_close(c);
        return -1;
    }
    c->open = 1;
    if (c->has_ctl_session)
        mbedtls_ssl_session_free(&c->ctl_session);
    mbedtls_ssl_session_init(&c->ctl_session);
    c->has_ctl_session = mbedtls_ssl_get_session(&c->ssl, &c->ctl_session) == 0;
    xr_identity_t aid;
    const mbedtls_x509_crt *acrt = mbedtls_ssl_get_peer_cert(&c->ssl);
    c->agent_key[0] = '\0';
    if (acrt != NULL && xr_identity_from_crt(acrt, &aid) == XR_OK)
        snprintf(c->agent_key, sizeof(c->agent_key), "%s", aid.pubkey_sha256);
    socklen_t alen = sizeof(c->agent_addr);
    if (getpeername(c->net.fd, (struct sockaddr *) &c->agent_addr, &alen) != 0)
        memset(&c->agent_addr, 0, sizeof(c->agent_addr));
    xr_msg_t m = {.type = XR_MSG_HELLO}, r;
    m.u.hello.min_version = m.u.hello.max_version = XR_PROTO_VERSION;
    m.u.hello.role = XR_ROLE_LIBRARY;
    xr_pstr_set(&m.u.hello.software, "xray/" XR_VERSION);
    if (xr__client_send(c, &m, err, errlen) < 0 ||
        xr__client_answer(c, 0, &r, perr, err, errlen) < 0) {
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
    if (xr__client_send(c, req, err, errlen) < 0) {
        xr_client_close(c);
        return -1;
    }
    return xr__client_answer(c, id, reply, perr, err, errlen);
}

int xr_client_pending_incoming(const xr_client_t *c)
{
    return c->nqueued > 0;
}

int xr_client_fd(const xr_client_t *c)
{
    return c->open ? c->net.fd : -1;
}

int xr_client_next(xr_client_t *c, xr_msg_t *m, int timeout_ms, char *err, size_t errlen)
{
    if (!c->open) {
        snprintf(err, errlen, "not connected to the agent");
        return -1;
    }
    if (c->nqueued > 0) {
        *m = c->queued[0];
        memmove(c->queued, c->queued + 1, --c->nqueued * sizeof(c->queued[0]));
        return 1;
    }
    size_t used;
    const char *why;
    /* A whole frame already read, or decrypted bytes poll() cannot see. */
    int ready = xr_proto_decode(c->in, c->inlen, m, &used, &why) != XR_PROTO_AGAIN ||
                mbedtls_ssl_get_bytes_avail(&c->ssl) > 0;
    if (!ready) {
        struct pollfd p = {c->net.fd, POLLIN, 0};
        if (poll(&p, 1, timeout_ms) <= 0)
            return 0;
    }
    if (xr_client_recv(c, m, err, errlen) < 0) {
        xr_client_close(c);
        return -1;
    }
    return 1;
}

/* ---- sessions carried from one client to another ---------------------------- */

/* One session: its length (u16, 0: none) and mbedtls_ssl_session_save's
 * bytes. */
static size_t xr_client_session_put(const mbedtls_ssl_session *ss, int has, unsigned char *buf,
                                    size_t cap)
{
    size_t n = 0;
    if (cap < 2)
        return 0;
    if (has && mbedtls_ssl_session_save(ss, buf + 2, cap - 2, &n) != 0)
        n = 0;
    if (n > 0xffff)
        n = 0;
    buf[0] = (unsigned char) (n >> 8);
    buf[1] = (unsigned char) n;
    return 2 + n;
}

static size_t xr_client_session_get(mbedtls_ssl_session *ss, int *has, const unsigned char *buf,
                                    size_t len)
{
    if (len < 2)
        return len;
    size_t n = (size_t) buf[0] << 8 | buf[1];
    if (n == 0 || n > len - 2)
        return n > len - 2 ? len : 2;
    if (*has)
        mbedtls_ssl_session_free(ss);
    mbedtls_ssl_session_init(ss);
    *has = mbedtls_ssl_session_load(ss, buf + 2, n) == 0;
    if (!*has)
        mbedtls_ssl_session_free(ss);
    return 2 + n;
}

size_t xr_client_sessions_save(const xr_client_t *c, unsigned char *buf, size_t cap)
{
    pthread_mutex_t *lock = (pthread_mutex_t *) &c->session_lock; /* not c's state */
    size_t a = xr_client_session_put(&c->ctl_session, c->has_ctl_session, buf, cap);
    pthread_mutex_lock(lock);
    size_t b =
        a > 0 ? xr_client_session_put(&c->link_session, c->has_link_session, buf + a, cap - a) : 0;
    pthread_mutex_unlock(lock);
    return a > 0 && b > 0 ? a + b : 0;
}

void xr_client_sessions_load(xr_client_t *c, const unsigned char *buf, size_t len)
{
    size_t a = xr_client_session_get(&c->ctl_session, &c->has_ctl_session, buf, len);
    pthread_mutex_lock(&c->session_lock);
    if (a < len)
        xr_client_session_get(&c->link_session, &c->has_link_session, buf + a, len - a);
    pthread_mutex_unlock(&c->session_lock);
}
