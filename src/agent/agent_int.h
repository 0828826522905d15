/*
 * agent_int.h: what the agent's files share, for src/agent only.
 *
 * The agent is split by job: ctl.c runs the control sessions and answers
 * their frames, relay_point.c joins two links into one relay, peer.c sets
 * connections up between agents, agent_status.c answers `xray status`,
 * agent.c starts and stops the whole, and agent_conf.c reads the
 * configuration.  The running parts share the session and relay point
 * types below and one state, xr__ag.
 *
 * xr__ag is one per process, not passed around, because one worker of a
 * generation serves the agent (agent.h): every session, relay point and
 * lease of the agent lives in that process, and nothing else there needs
 * another copy.  agent.c defines it; xr_agent_start fills it in.
 */
#ifndef XR_AGENT_INT_H
#define XR_AGENT_INT_H

#include <uv.h>

#include "agent/agent.h"
#include "core/admin.h"
#include "core/firewall.h"
#include "event/reactor.h"
#include "relay/relay.h"
#include "tls/tls.h"

/* A session's buffers: input for a frame not yet complete plus a whole
 * TLS record, output for 16 frames of answers. */
#define XR_CTL_IN  (XR_REC_MAX_CIPHER + XR_REC_HEADER + XR_PROTO_MAX_FRAME)
#define XR_CTL_OUT (3 * XR_PROTO_MAX_FRAME)

/* Where a session is in its life. */
typedef enum {
    XR_CTL_CONNECTING, /* outgoing: TCP connect in progress */
    XR_CTL_HANDSHAKE,  /* TLS */
    XR_CTL_FIRST,      /* waiting for the first frame (HELLO or LINK) */
    XR_CTL_READY,      /* a control session after HELLO */
    XR_CTL_LINKED      /* a link attached to its relay point: frames are over */
} xr_ctl_state_t;

/* What a session is, known once its first frame came (or from the start
 * for the ones we dial). */
typedef enum {
    XR_KIND_UNKNOWN,
    XR_KIND_LIBRARY,  /* a library's control session */
    XR_KIND_AGENT,    /* another agent's control session */
    XR_KIND_LINK,     /* an overlay link that connected to us */
    XR_KIND_PEER_OUT, /* our control session to another agent */
    XR_KIND_LINK_OUT  /* our overlay link to another agent's relay point */
} xr_ctl_kind_t;

typedef struct xr_rp_s xr_rp_t;

/* A control session or an overlay link: a TLS end read into a frame
 * buffer, on the agent's list of sessions until it closes or becomes half
 * of a relay. */
typedef struct {
    xr_end_t end;
    xr_ctl_state_t state;
    xr_ctl_kind_t kind;
    uv_timer_t timer;
    xr_list_t link;
    const xr_app_conf_t *app;   /* library sessions */
    const xr_peer_conf_t *peer; /* agent sessions, both ways */
    xr_rp_t *rp;                /* links */
    int side;                   /* links: the relay point's side */
    struct sockaddr_storage local, remote;
    char peer_addr[64]; /* remote address, for logs */
    char who[160];      /* identity for logs */
    char key[65];       /* the peer's public-key SHA-256 */
    int closing;
    int fail_code; /* what relay points waiting on this session fail with */
    int early;     /* a link dialed before its token is known (RELAY_READY) */
    int out_full;  /* input waits until answers drain */
    size_t inlen, outlen;
    uint8_t in[XR_CTL_IN];
    uint8_t out[XR_CTL_OUT];
} xr_ctl_t;

/* A relay point (XRAY §5.2 step 4): two sides, each bound to the
 * certificate expected there; side 0 faces the client, side 1 the
 * server.  A side is linked when a link presenting the token from the
 * right certificate arrived (or, for the side we dial, when our link got
 * LINK_OK).  Both linked: LINK_OK to the incoming ones, and the two links
 * become one relay through the application's filters. */
struct xr_rp_s {
    xr_list_t link;
    uint64_t id;
    uint8_t token[XR_PROTO_TOKEN];
    const xr_app_conf_t *app;
    char key[2][65];
    xr_ctl_t *side[2];
    int linked[2];
    int dial_side; /* the side we connect out for, or -1 */
    uv_timer_t timer;
    xr_ctl_t *requester; /* the library whose CONNECT waits */
    uint32_t req_id;
    xr_paddr_t dst, src; /* the client agent's: for PEER_CONNECT */
    uint8_t proto;       /* XR_PROTO_TCP or _UDP: a UDP link carries datagrams */
    char subject[160];   /* the client's identity, for PEER_CONNECT */
    const xr_peer_conf_t *peer;
    /* Client agent: the PEER_CONNECT on the standing session to the peer
     * agent, until RELAY_READY or ERROR answers it.  retry: it went out on
     * a session opened earlier, which may have died unseen; if that
     * session closes unanswered, ask once more on a fresh one. */
    xr_ctl_t *via;
    uint32_t via_id;
    int asked, retry;
    /* Server agent: the server's control session (for INCOMING) and what
     * a fall back from dialing the server to mode 2 needs. */
    xr_ctl_t *srv;
    uint64_t handle;
    xr_paddr_t client_src;
    char client_subject[256];
    int fallback;   /* dialing the server; mode 2 if that fails */
    char what[512]; /* for logs: who to what */
    int dead;
    /* The client was told CONNECT_OK before the server's agent answered
     * (the links come up in parallel): a failure is kept to answer the
     * client's link with, until the relay point expires. */
    int early, failed, fail_code;
    char fail_why[256];
    /* Client agent, traversal open: PEER_OPEN, not PEER_CONNECT; the
     * client socket's address (src is what the peer sees: open_src, or
     * the public port reserved for it). */
    int open;
    xr_paddr_t open_src;
};

/* An opening this agent made (core/firewall.h), with who it is for. */
typedef struct {
    xr_fw_open_t o;
    char app[64];
    char who[160];
    int64_t created, expires; /* wall clock, ms */
} xr_opening_t;

/* A kept TLS session with a server this agent dialed (INCOMING mode 1),
 * so that the next link to it resumes. */
typedef struct {
    xr_paddr_t addr;
    char key[65];
    xr_tls_session_t s;
    uint64_t used;
} xr_srv_session_t;

#define XR_SRV_SESSIONS 64

/* The running agent: its configuration, sessions, relay points, leases,
 * admin socket and counters. */
typedef struct {
    uv_loop_t *loop;
    xr_gen_t *gen;
    const xr_agent_conf_t *conf;
    xr_ctl_t **psess; /* the standing control session to each peer agent */
    uint32_t next_req;
    xr_srv_session_t srvs[XR_SRV_SESSIONS];
    uint64_t srv_clock;
    xr_io_t lio;
    uv_timer_t tick;
    xr_list_t sessions;
    size_t nsessions;
    xr_list_t rps;
    size_t nrps;
    uint64_t next_rp;
    xr_leases_t leases;
    char own_key[65];
    xr_paddr_t self[64];
    size_t nself;
    int dirty;
    int running;
    int64_t started;
    xr_io_t admin;
    ino_t admin_ino; /* of the path we bound, to remove only our own */
    /* Openings made in this host's firewall (CODO), the latest last, for
     * status and logs; the firewall expires them, this list follows. */
    xr_opening_t *openings;
    size_t nopenings, capopenings;
    size_t open_cursor; /* the next port of open_pool to hand out */
    struct {
        uint64_t sessions, full, resumed, registered, refreshed, unregistered, expired, refused,
            protocol_errors, connects, direct, relayed, rp_expired, inbound, connect_out,
            peer_sessions, opened, open_failed;
    } n;
} xr__ag_t;

/* The running agent's state (agent.c). */
extern xr__ag_t xr__ag;

/* ---- control sessions (ctl.c) ---- */

/* Take a new connection queued on the agent's listening socket (the
 * reactor's callback for it). */
void xr__agent_accept(xr_io_t *io, uint32_t events);
/* Close c, saying why in the log: whatever waited on it (a relay point, a
 * CONNECT, a PEER_CONNECT) learns it is gone.  c is freed later. */
void xr__ctl_close(xr_ctl_t *c, const char *why);
/* Forget c without closing its socket (a relay took it over). */
void xr__ctl_free(xr_ctl_t *c);
/* Send what is queued: XR_OK (perhaps in part, the rest waits for
 * EPOLLOUT) or XR_ERROR. */
int xr__ctl_flush(xr_ctl_t *c);
/* Queue frame m on c (a peer that does not read is closed). */
void xr__ctl_send(xr_ctl_t *c, const xr_msg_t *m);
int xr__ctl_room(xr_ctl_t *c);
/* Queue an ERROR answering request id with code and a message. */
void xr__ctl_error(xr_ctl_t *c, uint32_t id, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* The timer callback of a session that did not finish TLS and HELLO (or
 * of a server that did not take a link) in time. */
void xr__ctl_timeout(uv_timer_t *t);
/* TCP keepalive on a session that stays open between requests. */
void xr__ctl_keepalive(int fd);
/* Dial a control session or a link to another agent or a server with
 * TLS conf tls, offering the session in slot (NULL: the conf's own), from
 * local address from (NULL: any).  NULL when it cannot start. */
xr_ctl_t *xr__ctl_dial_tls(xr_tls_conf_t *tls, xr_tls_session_t *slot,
                           const struct sockaddr_storage *from, const xr_paddr_t *to,
                           xr_ctl_kind_t kind, xr_rp_t *rp);
/* The same to peer agent peer, with its TLS. */
xr_ctl_t *xr__ctl_dial(const xr_peer_conf_t *peer, const xr_paddr_t *to, xr_ctl_kind_t kind,
                       xr_rp_t *rp);

/* ---- relay points (relay_point.c) ---- */

/* A new relay point of app (what: who to what, for logs), waiting for
 * its links until it expires; NULL when out of memory. */
xr_rp_t *xr__rp_new(const xr_app_conf_t *app, const char *what);
/* Tear rp down: close the links still attached and answer a waiting
 * CONNECT with code and why. */
void xr__rp_fail(xr_rp_t *rp, int code, const char *why);
/* Relay points and running relays of app: what max_relays bounds. */
size_t xr__rp_count(const xr_app_conf_t *app);
/* rp served its purpose without links (an opening was made): it goes. */
void xr__rp_end(xr_rp_t *rp);
/* c is rp's link on side: with both sides linked, they become a relay. */
void xr__rp_linked(xr_rp_t *rp, int side, xr_ctl_t *c);
/* A LINK frame on a connection that came to us. */
void xr__ctl_link(xr_ctl_t *c, const xr_msg_t *m);

/* ---- connection setup between agents (peer.c) ---- */

/* A library's CONNECT (the client agent's steps 2-3 and 5). */
void xr__ctl_connect(xr_ctl_t *c, const xr_msg_t *m);
/* Another agent's PEER_CONNECT (the server agent's steps 4 and 6). */
void xr__ctl_peer_connect(xr_ctl_t *c, const xr_msg_t *m);
/* The lease of the server PEER_CONNECT or PEER_OPEN m names, with its
 * control session up; else NULL, the peer agent answered and it logged. */
xr_lease_t *xr__peer_server(xr_ctl_t *c, const xr_msg_t *m);

/* ---- opening.c: traversal open (CODO) ---- */
/* Client agent: OPEN by an application whose traversal is open, to dst
 * behind peer (NULL: no agent there, only our side opens). */
void xr__open_connect(xr_ctl_t *c, const xr_msg_t *m, const xr_peer_conf_t *peer);
/* Client agent: the peer agent answered rp's PEER_OPEN with OPENED. */
void xr__open_answered(xr_rp_t *rp, const xr_msg_t *m);
/* Client agent: rp's PEER_OPEN failed: our side of the opening goes. */
void xr__open_abandon(xr_rp_t *rp);
/* Server agent: PEER_OPEN from a peer agent. */
void xr__ctl_peer_open(xr_ctl_t *c, const xr_msg_t *m);
/* The openings, for `xray status` (JSON: fields to add to the object). */
void xr__open_status(xr_sb_t *b, int json);
/* Ask rp's peer agent for the server's side on the standing session to
 * it: XR_OK, or XR_ERROR when the peer cannot be dialed. */
int xr__peer_ask(xr_rp_t *rp);
void xr__peer_send_asks(xr_ctl_t *s);
/* Our standing session to a peer agent finished TLS: say HELLO. */
void xr__peer_out_ready(xr_ctl_t *c);
/* A frame on our standing session to a peer agent. */
void xr__peer_out_frame(xr_ctl_t *c, const xr_msg_t *m);
/* The server could not be dialed: ask its library to connect out to the
 * relay point instead. */
void xr__rp_connect_out(xr_rp_t *rp, const char *why);

/* ---- `xray status` (agent_status.c) ---- */

/* The reactor's callback for the agent's admin socket. */
void xr__agent_admin(xr_io_t *io, uint32_t events);

#endif
