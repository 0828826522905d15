/*
 * client.h: the client core of an XRAY application - what libxray and the
 * `xray` tools use to talk to their agent (html-docs/protocol.html).
 *
 * One control connection: TCP, TLS 1.2 with the application's certificate
 * (mbedTLS, blocking with timeouts), HELLO, then request/answer pairs.
 * The agent's certificate must chain to the CA and carry the expected name
 * (the agent's host, or --agent-name).
 */
#ifndef XR_CLIENT_H
#define XR_CLIENT_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "agent/proto.h"

typedef struct {
    const char *agent;      /* HOST:PORT */
    const char *agent_name; /* name the agent's certificate must carry; NULL: HOST */
    const char *ca, *cert, *key;
    int timeout_ms;
} xr_client_conf_t;

typedef struct xr_client_s xr_client_t;

/* Load the certificates; NULL with the reason in err. */
xr_client_t *xr_client_new(const xr_client_conf_t *cf, char *err, size_t errlen);
void xr_client_free(xr_client_t *c);

/* Connect, handshake and HELLO.  0, or -1 with the reason in err and, if
 * the agent refused, its code in *perr (else 0). */
int xr_client_open(xr_client_t *c, int *perr, char *err, size_t errlen);
/* Drop the connection (xr_client_open may be called again). */
void xr_client_close(xr_client_t *c);
int xr_client_is_open(const xr_client_t *c);
/* The local address of the control connection (the interface that faces
 * the agent), for a socket bound to a wildcard address. */
int xr_client_local(const xr_client_t *c, struct sockaddr_storage *ss);
uint32_t xr_client_heartbeat_ms(const xr_client_t *c);

/* One request and its answer.  On success 0 and *reply holds the answer
 * (REGISTERED, REFRESHED, ...); on an ERROR answer -1 with *perr = its
 * code and err = its message; on a transport failure -1, *perr = 0, and
 * the connection is closed. */
int xr_client_call(xr_client_t *c, xr_msg_t *req, xr_msg_t *reply, int *perr, char *err,
                   size_t errlen);

/* sockaddr <-> wire address. */
void xr_paddr_from_sockaddr(xr_paddr_t *a, const struct sockaddr_storage *ss);

#endif
