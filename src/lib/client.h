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
#include <pthread.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>

#include "common/proto.h"

typedef struct {
    const char *agent;      /* HOST:PORT */
    const char *agent_name; /* name the agent's certificate must carry; NULL: HOST */
    const char *ca, *cert, *key;
    int timeout_ms;
} xr_client_conf_t;

/* Storage for what xr_client_conf_fill finds (cf's strings point here). */
typedef struct {
    char agent[256], agent_name[256];
    char cert[4096], key[4096], ca[4096];
    char file[4096]; /* the client file read, or "" */
} xr_client_conf_buf_t;

/* Fill in what cf leaves NULL (the caller's flags win): from the
 * environment, XRAY_AGENT, XRAY_AGENT_NAME, XRAY_CERT, XRAY_KEY and
 * XRAY_CA; then from one client file, $XRAY_CONFIG if set, else the first
 * of ~/.config/xray/client.yaml and /etc/xray/client.yaml that exists (a
 * YAML mapping of agent, agent_name, cert, key and ca; relative paths
 * are the file's directory's); then the agent from /etc/xray/agent.  0,
 * or -1 with err (a file's error says file:line:column; a setting still
 * missing says where it could come from). */
int xr_client_conf_fill(xr_client_conf_t *cf, xr_client_conf_buf_t *b, char *err, size_t errlen);
/* The flag that names a setting of cf (--agent, --agent-name, --cert,
 * --key, --ca): where its value goes, or NULL for another flag. */
const char **xr_client_conf_flag(xr_client_conf_t *cf, const char *flag);

/* The same for a client file's text alone (for its fuzz target): what
 * cf leaves NULL is filled from it; 0, or -1 with err. */
int xr_client_conf_parse(const void *text, size_t len, xr_client_conf_t *cf,
                         xr_client_conf_buf_t *b, char *err, size_t errlen);

typedef struct xr_client_s xr_client_t;

/* Load the certificates; NULL with the reason in err. */
xr_client_t *xr_client_new(const xr_client_conf_t *cf, char *err, size_t errlen);
void xr_client_free(xr_client_t *c);

/* The TLS sessions c holds with its agent (the control connection's and
 * the relay points'), serialized into buf: their length, or 0 if buf is
 * too small.  Another client of the same agent loads them to resume
 * instead of doing full handshakes (a session that does not resume costs
 * a full handshake, nothing else). */
size_t xr_client_sessions_save(const xr_client_t *c, unsigned char *buf, size_t cap);
void xr_client_sessions_load(xr_client_t *c, const unsigned char *buf, size_t len);

/* The same kept in a file between processes: path is the user's file
 * for cf's agent and certificate ($XDG_CACHE_HOME/xray, else
 * ~/.cache/xray; 0, or -1 when there is no home to keep it in).  Reading
 * ignores a file that is missing, broken, or not the user's alone
 * (0600); writing replaces it whole. */
int xr_client_sessions_path(const xr_client_conf_t *cf, char *path, size_t n);
void xr_client_sessions_read(xr_client_t *c, const char *path);
void xr_client_sessions_write(const xr_client_t *c, const char *path);

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

/* An overlay link to a relay point, after LINK, LINK_OK and the
 * end-to-end ACK: a TLS stream of the application's bytes. */
typedef struct xr_link_s xr_link_t;

/* Connect to official address dst through the agent (XRAY §5.2).  A
 * server in the agent's own network is reached directly: *fd is a
 * connected TCP socket and *link NULL.  Otherwise *link is the relay
 * link (its certificate checked against CONNECT_OK's key) and *fd -1.
 * 0, or -1 with *perr/err as for xr_client_call. */
int xr_client_dial(xr_client_t *c, const xr_paddr_t *dst, xr_link_t **link, int *fd, int *perr,
                   char *err, size_t errlen);
/* The same for proto XR_PROTO_TCP or XR_PROTO_UDP.  UDP (XRAY §5.2): a
 * direct association is a UDP socket connected to the server's local
 * address (*fd); a relayed one is a link that carries datagrams, each a
 * u16 length and its bytes (xr_link_send_dgram, xr_link_recv_dgram). */
int xr_client_dial_proto(xr_client_t *c, int proto, const xr_paddr_t *dst, xr_link_t **link,
                         int *fd, int *perr, char *err, size_t errlen);

/* The same in steps, for a client shared by threads under their lock:
 * xr_client_route (lock held) asks the agent and, for a relayed route,
 * brings up the TLS part of the link (*tls); xr_link_join (no lock: it
 * touches only the link) presents the token and waits for the end-to-end
 * acknowledgement, which may take as long as the far side does. */
/* A route's mode besides XR_CONNECT_DIRECT and _RELAY: the firewalls
 * are open for the socket whose address went with the request (CODO). */
#define XR_ROUTE_OPEN 3
typedef struct {
    int mode;          /* XR_CONNECT_DIRECT, XR_CONNECT_RELAY or XR_ROUTE_OPEN */
    uint32_t state_ms; /* OPEN: heartbeats keep within this (xr_heartbeat) */
    xr_paddr_t addr;   /* DIRECT: the server's local address; RELAY: the relay point;
                          OPEN: where to connect (the official address) */
    uint8_t token[XR_PROTO_TOKEN];
    char key[65]; /* the relay point's key (hex) */
} xr_route_t;
int xr_client_route(xr_client_t *c, int proto, const xr_paddr_t *dst, const xr_paddr_t *src,
                    xr_route_t *rt, xr_link_t **tls, int *perr, char *err, size_t errlen);
/* src, when not NULL, is the local address of the socket that will
 * connect (0.0.0.0:PORT: the agent takes the address it sees): the
 * request is OPEN, and an application whose traversal is open gets
 * XR_ROUTE_OPEN. */

/* The local address of socket fd for an OPEN request (binding it to an
 * ephemeral port first if it has none): 0, or -1 (errno). */
int xr_open_src(int fd, xr_paddr_t *src);
/* Keep the firewalls' state of TCP connection fd alive when it idles
 * (CODO §3): TCP keepalive well within state_ms. */
void xr_heartbeat(int fd, uint32_t state_ms);
/* TCP and TLS to a relay point, offering the session of the last link
 * (check_name: the agent's name must be on its certificate; else the
 * caller checks its key when joining); NULL with err.  Threads may open
 * links of one client at once. */
xr_link_t *xr_link_tls(xr_client_t *c, const xr_paddr_t *rp, int check_name, char *err,
                       size_t errlen);
/* On a link whose TLS is up: the relay point's key (hex; NULL: its name
 * was checked), LINK with token, LINK_OK, ACK both ways.  Frees tls on
 * failure. */
xr_link_t *xr_link_join(xr_link_t *tls, const uint8_t *token, const char *want_key, char *err,
                        size_t errlen);

/* A TCP connection to a (blocking, no delay), given up after
 * timeout_ms; the socket, or -1 with err. */
int xr_tcp_to(const xr_paddr_t *a, int timeout_ms, char *err, size_t errlen);
/* The same on socket fd (-1: a new one), which is closed on failure. */
int xr_tcp_on(int fd, const xr_paddr_t *a, int timeout_ms, char *err, size_t errlen);

/* The largest UDP payload (IPv4's). */
#define XR_UDP_MAX 65507

/* One datagram over a UDP link: 0, or -1 (errno EMSGSIZE over
 * XR_UDP_MAX). */
int xr_link_send_dgram(xr_link_t *l, const void *p, size_t n);
/* The next whole datagram into buf: 1 with its length in *len (0 is a
 * datagram too), 0 when the link ended cleanly, -1 on an error or a
 * datagram larger than cap (EMSGSIZE). */
int xr_link_recv_dgram(xr_link_t *l, void *buf, size_t cap, size_t *len);

/* Servers: the next frame the agent sent unasked (INCOMING), waiting at
 * most timeout_ms.  1 with *m, 0 when none came, -1 when the control
 * connection failed (it is then closed). */
int xr_client_next(xr_client_t *c, xr_msg_t *m, int timeout_ms, char *err, size_t errlen);
/* Answer an INCOMING with INCOMING_OK.  Mode 2: connect out to its relay
 * point; *link is the link.  Mode 1: the agent will dial the server
 * socket; *link is NULL and the connection comes to accept() (see
 * xr_client_from_agent).  0, or -1 with err. */
int xr_client_take(xr_client_t *c, const xr_msg_t *incoming, xr_link_t **link, char *err,
                   size_t errlen);
/* The same in steps, for a client shared by threads: under the lock,
 * the answer and, in mode 2, the TLS part of the link (*tls, else NULL;
 * with tls NULL the caller opens it, xr_link_tls(c, incoming's addr, 1,
 * ...), which needs no lock); then xr_link_join(tls, incoming's token,
 * NULL, ...) without it. */
int xr_client_take_begin(xr_client_t *c, const xr_msg_t *incoming, xr_link_t **tls, char *err,
                         size_t errlen);
/* Is a connection accepted on the server socket from the agent (a mode
 * 1 link) rather than from a direct client?  By its source address: the
 * agent dials from the address the control connection reaches it at. */
int xr_client_from_agent(const xr_client_t *c, const struct sockaddr_storage *peer);
/* Is it such a link?  From the agent's address, announced by a mode 1
 * INCOMING (waiting up to 100 ms for one), and opening with a TLS
 * handshake record (peeked, up to 1 s): a direct client on the agent's
 * own host is none of these and is served as direct. */
int xr_client_is_link(xr_client_t *c, int fd, const struct sockaddr_storage *peer);
/* Does the connection on fd open with a TLS ClientHello record (peeked,
 * waiting up to timeout_ms for its first six bytes)?  An agent's link
 * does at once; a direct client whose first byte happens to be 0x16 does
 * not.  1 or 0. */
int xr_link_opens_with_hello(int fd, int timeout_ms);
/* Take such a connection (fd, blocking; owned from here on): TLS as the
 * server, the agent's key checked, LINK with the token of a mode 1
 * INCOMING (read from the control connection for up to 2 s if it has not
 * come yet; other INCOMINGs read meanwhile are queued), LINK_OK, ACK both
 * ways.  *incoming gets the INCOMING.  0, or -1 with err. */
int xr_client_accept_link(xr_client_t *c, int fd, xr_link_t **link, xr_msg_t *incoming, char *err,
                          size_t errlen);
/* The same in steps, for a client shared by threads: the TLS and the
 * LINK frame (no lock; the token into token[XR_PROTO_TOKEN]); matching
 * the token to its INCOMING (under the lock: it may read the control
 * connection); LINK_OK and the ACKs (no lock).  Each frees the link on
 * failure.  xr_client_link_claim waits up to 2 s for the INCOMING, lock
 * held; xr_client_link_match does not wait: 1 matched, 0 not yet (the
 * caller drops the lock, waits a moment and asks again, and after 2 s
 * gives up with xr_link_refuse), -1 when the control connection failed. */
int xr_link_accept_begin(xr_client_t *c, int fd, xr_link_t **link, uint8_t *token, char *err,
                         size_t errlen);
int xr_client_link_claim(xr_client_t *c, xr_link_t *l, const uint8_t *token, xr_msg_t *incoming,
                         char *err, size_t errlen);
int xr_client_link_match(xr_client_t *c, const uint8_t *token, xr_msg_t *incoming, char *err,
                         size_t errlen);
/* xr_client_link_claim for a client shared under lock: the lock is
 * taken for each look, never held while waiting. */
int xr_client_link_claim_shared(xr_client_t *c, pthread_mutex_t *lock, xr_link_t *l,
                                const uint8_t *token, xr_msg_t *incoming, char *err, size_t errlen);
/* Tell the agent no INCOMING named the link's token (ERROR BAD_TOKEN),
 * and free it. */
void xr_link_refuse(xr_link_t *l);
int xr_link_accept_finish(xr_link_t *l, char *err, size_t errlen);
int xr_client_fd(const xr_client_t *c);
/* INCOMING frames queued while a call awaited its answer. */
int xr_client_pending_incoming(const xr_client_t *c);

/* Bytes of a link: read returns 0 at the peer's close_notify or EOF, -1
 * on an error; shutdown sends close_notify (reading goes on). */
ssize_t xr_link_read(xr_link_t *l, void *buf, size_t len);
ssize_t xr_link_write(xr_link_t *l, const void *buf, size_t len);
void xr_link_shutdown(xr_link_t *l);
int xr_link_fd(const xr_link_t *l);
/* Cleartext already decrypted and waiting (poll() cannot see it). */
size_t xr_link_pending(xr_link_t *l);
/* close: send close_notify and free; drop: free without a word (a forked
 * process that hands the link to its child). */
void xr_link_close(xr_link_t *l);
void xr_link_drop(xr_link_t *l);

/* Move bytes between a connection (link, or plain socket sock when link
 * is NULL) and the descriptors in (to the connection) and out (from it).
 * EOF on in is passed on (close_notify or shutdown), the connection's end
 * is passed to out (shutdown, when out is a socket).  Returns when the
 * connection ends, or with both, when both directions have.  tick, if not
 * NULL, runs about every second.  0, or -1 on an error. */
int xr_link_pump(xr_link_t *link, int sock, int in, int out, int both, void (*tick)(void *),
                 void *arg);

#endif
