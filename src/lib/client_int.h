/*
 * client_int.h: what the client core's files share (client.c, link.c,
 * incoming.c): the client and link structures and the few calls one
 * file makes into another.  Not for the library's users: client.h is.
 */
#ifndef XR_CLIENT_INT_H
#define XR_CLIENT_INT_H

#include "common/record.h"
#include "lib/client.h"

#include <pthread.h>

#include <mbedtls/ctr_drbg.h>
#include <mbedtls/entropy.h>
#include <mbedtls/error.h>
#include <mbedtls/net_sockets.h>
#include <mbedtls/ssl.h>
#include <mbedtls/ssl_ticket.h>
#include <mbedtls/x509_crt.h>

/* INCOMING mode 1 frames whose link has not come yet (a burst of
 * relayed connections announces them all before the first link is
 * taken), and how long one waits (a relay point lives 2 x
 * handshake_timeout, 20 s by default). */
#define XR_EXPECT_MAX 1024
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
    int opens; /* the agent answered the last OPEN with OPENED */
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
    /* The last session with the agent's relay points (mode 2 links),
     * and with the agent itself (the control connection). */
    mbedtls_ssl_session link_session;
    int has_link_session;
    /* link_session, for links opened by several threads at once */
    pthread_mutex_t session_lock;
    mbedtls_ssl_session ctl_session;
    int has_ctl_session;
};

struct xr_link_s {
    mbedtls_net_context net;
    mbedtls_ssl_context ssl; /* the handshake and the link's frames */
    /* Then, for an AEAD suite, the record layer (common/record.h), as
     * the agents seal: the ssl context is freed. */
    int fast, is_server;
    xr_rec_t rec;
    unsigned char *rbuf, *pbuf, *obuf; /* records read, cleartext opened, records sealed */
    size_t rlen, poff, plen;
    int eof, bad; /* close_notify came; a record failed or an alert came */
    /* from the key export hook, wiped once used */
    unsigned char kb[2 * 32 + 2 * 12];
    size_t keylen, ivlen;
    int have_kb;
};

/* client.c */
int64_t xr__client_now_ms(void);
/* TCP_NODELAY on fd: a handshake's flights and the protocol's small
 * frames are written in pieces, and Nagle's algorithm holds the last
 * piece back until the peer's delayed ACK (about 40 ms) - three times
 * per connection before this was set. */
void xr__nodelay(int fd);
void xr__mberr(int rc, char *buf, size_t n);
/* Send one frame on the control connection.  0, or -1 with err. */
int xr__client_send(xr_client_t *c, const xr_msg_t *m, char *err, size_t errlen);
/* Wait for the answer to request id (INCOMING frames meanwhile are
 * queued for xr_client_next).  As xr_client_call. */
int xr__client_answer(xr_client_t *c, uint32_t id, xr_msg_t *reply, int *perr, char *err,
                      size_t errlen);

/* link.c: one frame on a link, sent, read exactly, or expected of a
 * type; a link dialed to a relay point and joined with token (want_key:
 * the relay point's key to check, NULL: its name was checked); freeing
 * one that never became the caller's. */
int xr__link_send(xr_link_t *l, const xr_msg_t *m, const char *what, char *err, size_t errlen);
int xr__link_frame(xr_link_t *l, xr_msg_t *r, const char *what, char *err, size_t errlen);
int xr__link_expect(xr_link_t *l, int want, const char *what, char *err, size_t errlen);
xr_link_t *xr__link_open(xr_client_t *c, const xr_paddr_t *rp, const uint8_t *token,
                         const char *want_key, char *err, size_t errlen);
void xr__link_free(xr_link_t *l);
/* link.c: the key export hook of both configurations (it fills the link
 * whose handshake runs on this thread: xr__link_handshake), and the
 * switch to the record layer once the link's frames are done. */
int xr__link_export(void *p, const unsigned char *ms, const unsigned char *kb, size_t maclen,
                    size_t keylen, size_t ivlen, const unsigned char client_random[32],
                    const unsigned char server_random[32], mbedtls_tls_prf_types prf);
int xr__link_handshake(xr_link_t *l);
void xr__link_fast(xr_link_t *l);
/* Is the peer's public key of ssl the key want (hex)? */
int xr__key_is(const mbedtls_ssl_context *ssl, const char *want);

#endif
