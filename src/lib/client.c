/*
 * client.c: the client core (see client.h).
 */
#include "common/common.h"
#include "lib/client.h"
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

#include <mbedtls/ctr_drbg.h>
#include <mbedtls/entropy.h>
#include <mbedtls/error.h>
#include <mbedtls/net_sockets.h>
#include <mbedtls/ssl.h>
#include <mbedtls/ssl_ticket.h>
#include <mbedtls/x509_crt.h>

/* INCOMING mode 1 frames whose link has not come yet, and how long one
 * waits (a relay point lives 2 x handshake_timeout, 20 s by default). */
#define XR_EXPECT_MAX 64
#define XR_EXPECT_MS  30000

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
    /* INCOMING frames that arrived while an answer was awaited */
    xr_msg_t queued[16];
    size_t nqueued;
    /* The agent as the control connection saw it: links it dials to us
     * (INCOMING mode 1) come from this address with this key. */
    char agent_key[65];
    struct sockaddr_storage agent_addr;
    /* Those links: we are the TLS server, with tickets so the agent's
     * next link resumes. */
    mbedtls_ssl_config sconf;
    mbedtls_ssl_ticket_context ticket;
    int sconf_ready;
    struct {
        xr_msg_t in;
        int64_t until;
    } expect[XR_EXPECT_MAX];
    size_t nexpect;
    /* The last session with the agent's relay points (mode 2 links). */
    mbedtls_ssl_session link_session;
    int has_link_session;
};

static int64_t xr_client_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

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
    mbedtls_ssl_conf_session_tickets(&c->conf, MBEDTLS_SSL_SESSION_TICKETS_ENABLED);

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

/* ---- links ------------------------------------------------------------------ */

struct xr_link_s {
    mbedtls_net_context net;
    mbedtls_ssl_context ssl;
};

int xr_client_pending_incoming(const xr_client_t *c)
{
    return c->nqueued > 0;
}

int xr_client_fd(const xr_client_t *c)
{
    return c->open ? c->net.fd : -1;
}

static int xr_tcp_to(const xr_paddr_t *a, int timeout_ms, char *err, size_t errlen)
{
    struct sockaddr_storage ss;
    socklen_t len = xr_paddr_to_sockaddr(a, &ss);
    char at[80];
    if (len == 0) {
        snprintf(err, errlen, "bad address");
        return -1;
    }
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
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
    return fd;
}

/* Read exactly one frame from a link: nothing after it may be consumed,
 * it is the application's stream.  0, or -1 with err. */
static int xr_link_frame(xr_link_t *l, xr_msg_t *r, const char *what, char *err, size_t errlen)
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

static int xr_link_send(xr_link_t *l, const xr_msg_t *m, const char *what, char *err, size_t errlen)
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
static int xr_link_expect(xr_link_t *l, int want, const char *what, char *err, size_t errlen)
{
    xr_msg_t r;
    if (xr_link_frame(l, &r, what, err, errlen) < 0)
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

static void xr_link_free(xr_link_t *l)
{
    mbedtls_ssl_free(&l->ssl);
    mbedtls_net_free(&l->net);
    free(l);
}

static int xr_key_is(const mbedtls_ssl_context *ssl, const char *want)
{
    xr_identity_t id;
    const mbedtls_x509_crt *crt = mbedtls_ssl_get_peer_cert(ssl);
    return crt != NULL && want[0] != '\0' && xr_identity_from_crt(crt, &id) == XR_OK &&
           strcasecmp(id.pubkey_sha256, want) == 0;
}

/* TCP and TLS to a relay point (offering the session of the last
 * link); NULL with err. */
static xr_link_t *xr_link_tls(xr_client_t *c, const xr_paddr_t *rp, int check_name, char *err,
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
    if (c->has_link_session)
        mbedtls_ssl_set_session(&l->ssl, &c->link_session); /* a failed offer is a full one */
    mbedtls_ssl_set_bio(&l->ssl, &l->net, mbedtls_net_send, NULL, mbedtls_net_recv_timeout);
    while ((rc = mbedtls_ssl_handshake(&l->ssl)) != 0)
        if (rc != MBEDTLS_ERR_SSL_WANT_READ && rc != MBEDTLS_ERR_SSL_WANT_WRITE) {
            char why[128];
            xr_mberr(rc, why, sizeof(why));
            snprintf(err, errlen, "TLS with the relay point failed: %s", why);
            goto fail;
        }
    /* The relay points of one agent share its session: the next link
     * resumes. */
    if (c->has_link_session)
        mbedtls_ssl_session_free(&c->link_session);
    mbedtls_ssl_session_init(&c->link_session);
    c->has_link_session = mbedtls_ssl_get_session(&l->ssl, &c->link_session) == 0;
    return l;
fail:
    xr_link_free(l);
    return NULL;
}

/* On a link whose TLS is up: the relay point's key (hex, from
 * CONNECT_OK; NULL: its name was checked), LINK, LINK_OK, ACK both ways.
 * Frees l on failure. */
static xr_link_t *xr_link_join(xr_link_t *l, const uint8_t *token, const char *want_key, char *err,
                               size_t errlen)
{
    if (want_key != NULL && !xr_key_is(&l->ssl, want_key)) {
        snprintf(err, errlen, "the relay point's certificate is not the agent's");
        goto fail;
    }
    /* The link's frames, then one ACK each way; the rest is the stream. */
    xr_msg_t m = {.type = XR_MSG_LINK}, ack = {.type = XR_MSG_ACK};
    memcpy(m.u.link.token, token, XR_PROTO_TOKEN);
    if (xr_link_send(l, &m, "relay point", err, errlen) < 0 ||
        xr_link_expect(l, XR_MSG_LINK_OK, "relay point", err, errlen) < 0 ||
        xr_link_send(l, &ack, "relay point", err, errlen) < 0 ||
        xr_link_expect(l, XR_MSG_ACK, "relay point", err, errlen) < 0)
        goto fail;
    return l;
fail:
    xr_link_free(l);
    return NULL;
}

static xr_link_t *xr_link_open(xr_client_t *c, const xr_paddr_t *rp, const uint8_t *token,
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

int xr_client_dial_proto(xr_client_t *c, int proto, const xr_paddr_t *dst, xr_link_t **link,
                         int *fd, int *perr, char *err, size_t errlen)
{
    *link = NULL;
    *fd = -1;
    *perr = 0;
    if (!c->open) {
        snprintf(err, errlen, "not connected to the agent");
        return -1;
    }
    xr_msg_t req = {.type = XR_MSG_CONNECT}, r;
    uint32_t id = ++c->next_id;
    req.u.connect.id = id;
    req.u.connect.proto = (uint8_t) proto;
    req.u.connect.dst = *dst;
    if (xr_client_send(c, &req, err, errlen) < 0) {
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
    xr_link_t *early = at.family ? xr_link_tls(c, &at, 0, e2, sizeof(e2)) : NULL;
    if (xr_client_answer(c, id, &r, perr, err, errlen) < 0) {
        if (early)
            xr_link_free(early);
        return -1;
    }
    if (r.type != XR_MSG_CONNECT_OK) {
        if (early)
            xr_link_free(early);
        snprintf(err, errlen, "the agent answered CONNECT with %s", xr_proto_type_name(r.type));
        return -1;
    }
    if (early != NULL && (r.u.connect_ok.mode != XR_CONNECT_RELAY ||
                          memcmp(&r.u.connect_ok.addr, &at, sizeof(at)) != 0)) {
        xr_link_free(early);
        early = NULL;
    }
    if (r.u.connect_ok.mode == XR_CONNECT_DIRECT) {
        *fd = proto == XR_PROTO_UDP
                  ? xr_udp_to(&r.u.connect_ok.addr, err, errlen)
                  : xr_tcp_to(&r.u.connect_ok.addr, c->cf.timeout_ms, err, errlen);
        return *fd < 0 ? -1 : 0;
    }
    char key[65];
    sodium_bin2hex(key, sizeof(key), r.u.connect_ok.peer_key, sizeof(r.u.connect_ok.peer_key));
    *link = early ? xr_link_join(early, r.u.connect_ok.token, key, err, errlen)
                  : xr_link_open(c, &r.u.connect_ok.addr, r.u.connect_ok.token, key, err, errlen);
    return *link != NULL ? 0 : -1;
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

/* Remember a mode 1 INCOMING until its link comes (or it is too old). */
static void xr_client_expect(xr_client_t *c, const xr_msg_t *in)
{
    int64_t now = xr_client_now_ms();
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

int xr_client_take(xr_client_t *c, const xr_msg_t *in, xr_link_t **link, char *err, size_t errlen)
{
    *link = NULL;
    xr_msg_t ok = {.type = XR_MSG_INCOMING_OK};
    ok.u.done.id = in->u.incoming.id;
    if (xr_client_send(c, &ok, err, errlen) < 0) {
        xr_client_close(c);
        return -1;
    }
    if (in->u.incoming.mode == XR_INCOMING_INBOUND) {
        xr_client_expect(c, in); /* the agent's link comes to the server socket */
        return 0;
    }
    /* Mode 2, maybe after a mode 1 whose link the agent could not open. */
    xr_client_expected(c, in->u.incoming.token, NULL);
    *link = xr_link_open(c, &in->u.incoming.addr, in->u.incoming.token, NULL, err, errlen);
    return *link != NULL ? 0 : -1;
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
            if (xr_client_send(c, &ok, err, errlen) < 0) {
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
    /* A link opens with a TLS ClientHello at once: a handshake record. */
    struct pollfd p = {fd, POLLIN, 0};
    unsigned char b;
    return poll(&p, 1, 1000) == 1 && recv(fd, &b, 1, MSG_PEEK) == 1 && b == 0x16;
}

int xr_client_accept_link(xr_client_t *c, int fd, xr_link_t **link, xr_msg_t *incoming, char *err,
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
    int rc;
    if (mbedtls_ssl_setup(&l->ssl, &c->sconf) != 0) {
        snprintf(err, errlen, "TLS setup failed");
        goto fail;
    }
    mbedtls_ssl_set_bio(&l->ssl, &l->net, mbedtls_net_send, NULL, mbedtls_net_recv_timeout);
    while ((rc = mbedtls_ssl_handshake(&l->ssl)) != 0)
        if (rc != MBEDTLS_ERR_SSL_WANT_READ && rc != MBEDTLS_ERR_SSL_WANT_WRITE) {
            char why[128];
            xr_mberr(rc, why, sizeof(why));
            snprintf(err, errlen, "TLS with the agent failed: %s", why);
            goto fail;
        }
    if (!xr_key_is(&l->ssl, c->agent_key)) {
        snprintf(err, errlen, "the link's certificate is not the agent's");
        goto fail;
    }
    xr_msg_t m;
    if (xr_link_frame(l, &m, "agent", err, errlen) < 0)
        goto fail;
    if (m.type != XR_MSG_LINK) {
        snprintf(err, errlen, "the agent's link began with %s", xr_proto_type_name(m.type));
        goto fail;
    }
    /* The INCOMING may still be on its way on the control connection. */
    int64_t until = xr_client_now_ms() + 2000;
    while (!xr_client_expected(c, m.u.link.token, incoming)) {
        char e2[200];
        int64_t left = until - xr_client_now_ms();
        int got = left > 0 ? xr_client_absorb(c, (int) left, e2, sizeof(e2)) : 0;
        if (got < 0) {
            snprintf(err, errlen, "control connection lost: %s", e2);
            goto fail;
        }
        if (got == 0 && left <= 0) {
            xr_msg_t no = {.type = XR_MSG_ERROR};
            no.u.error.code = XR_PERR_BAD_TOKEN;
            xr_pstr_set(&no.u.error.message, "no INCOMING names that token");
            xr_link_send(l, &no, "agent", e2, sizeof(e2));
            snprintf(err, errlen, "a link with a token no INCOMING named");
            goto fail;
        }
    }
    xr_msg_t ok = {.type = XR_MSG_LINK_OK}, ack = {.type = XR_MSG_ACK};
    if (xr_link_send(l, &ok, "agent", err, errlen) < 0 ||
        xr_link_send(l, &ack, "agent", err, errlen) < 0 ||
        xr_link_expect(l, XR_MSG_ACK, "agent", err, errlen) < 0)
        goto fail;
    *link = l;
    return 0;
fail:
    xr_link_free(l);
    return -1;
}

ssize_t xr_link_read(xr_link_t *l, void *buf, size_t len)
{
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
    mbedtls_ssl_close_notify(&l->ssl);
}

int xr_link_fd(const xr_link_t *l)
{
    return l->net.fd;
}

size_t xr_link_pending(xr_link_t *l)
{
    return mbedtls_ssl_get_bytes_avail(&l->ssl);
}

void xr_link_close(xr_link_t *l)
{
    if (l == NULL)
        return;
    mbedtls_ssl_close_notify(&l->ssl);
    xr_link_free(l);
}

void xr_link_drop(xr_link_t *l)
{
    if (l == NULL)
        return;
    mbedtls_ssl_free(&l->ssl);
    /* Not mbedtls_net_free(): its shutdown() would end the socket for a
     * child process that shares it too. */
    if (l->net.fd >= 0)
        close(l->net.fd);
    free(l);
}

int xr_link_pump(xr_link_t *link, int sock, int in, int out, int both, void (*tick)(void *),
                 void *arg)
{
    char buf[16384];
    int cfd = link ? xr_link_fd(link) : sock, in_open = 1, conn_open = 1;
    while (conn_open || (both && in_open)) {
        struct pollfd p[2] = {{conn_open ? cfd : -1, POLLIN, 0}, {in_open ? in : -1, POLLIN, 0}};
        int ready = conn_open && link != NULL && xr_link_pending(link) > 0;
        int n = ready ? 1 : poll(p, 2, 1000);
        if (n < 0 && errno != EINTR)
            return -1;
        if (tick != NULL)
            tick(arg);
        if (n <= 0)
            continue;
        if (ready || (p[0].revents & (POLLIN | POLLHUP | POLLERR))) {
            ssize_t r = link ? xr_link_read(link, buf, sizeof(buf)) : read(cfd, buf, sizeof(buf));
            if (r < 0)
                return -1;
            if (r == 0) {
                conn_open = 0;
                shutdown(out, SHUT_WR); /* a socket's reader sees the end too */
                continue;
            }
            for (ssize_t off = 0; off < r;) {
                ssize_t w = write(out, buf + off, (size_t) (r - off));
                if (w <= 0)
                    return -1;
                off += w;
            }
        }
        if (in_open && (p[1].revents & (POLLIN | POLLHUP | POLLERR))) {
            ssize_t r = read(in, buf, sizeof(buf));
            if (r <= 0) {
                in_open = 0;
                if (link)
                    xr_link_shutdown(link);
                else
                    shutdown(cfd, SHUT_WR);
            } else if ((link ? xr_link_write(link, buf, (size_t) r)
                             : write(cfd, buf, (size_t) r)) != r) {
                return -1;
            }
        }
    }
    return 0;
}
