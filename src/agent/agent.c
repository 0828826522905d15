/*
 * agent.c: the `agent:` block and the control service (see agent.h).
 *
 * A control session is a TLS end (mutual authentication, the identity
 * kept) read into a frame buffer; every complete frame is decoded by
 * proto.c and answered in order.  The application is found from the
 * certificate once, at HELLO: an identity no application matches is
 * refused there, with the reason logged.  Leases live in one table owned
 * by this process; a 1 s tick expires them and writes the state file when
 * something changed.
 */
#include "agent/agent.h"
#include "core/admin.h"
#include "core/log.h"
#include "event/reactor.h"
#include "relay/relay.h"
#include "tls/tls.h"

#include <errno.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <ifaddrs.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define GO(f) offsetof(xr_agent_conf_t, f)
#define A     XR_CTX_AGENT

static int xr_agent_set_peers(xr_conf_t *cf, const xr_node_t *n, void *conf,
                              const xr_directive_t *d);

#define PO(f) offsetof(xr_peer_conf_t, f)
const xr_directive_t xr_peer_directives[] = {
    {"networks", XR_CTX_PEER, XR_T_STR_LIST, PO(networks_text), NULL, 0, 0, NULL, NULL,
     XR_DIR_REQUIRED, "Official addresses this agent serves (its official_pool, as networks)."},
    {"agent", XR_CTX_PEER, XR_T_ADDR, PO(agent), NULL, 0, 0, NULL, NULL, XR_DIR_REQUIRED,
     "Where to reach it (its agent listen address)."},
    {"match", XR_CTX_PEER, XR_T_STR_LIST, PO(match), NULL, 0, 0, NULL, NULL, XR_DIR_REQUIRED,
     "Its certificates, when it connects to us: subject, RDN, SAN or sha256:KEY patterns."},
    {"tls", XR_CTX_PEER, XR_T_CUSTOM, PO(tls), NULL, 0, 0, (const char *const[]){"tls block", NULL},
     xr_tls_set_client, XR_DIR_REQUIRED,
     "How to speak TLS to it: ca, certificate, key, server_name."},
    XR_DIRECTIVES_END};

static const char *const xr_reach_names[] = {"auto", "inbound", "connect_out", NULL};

const xr_directive_t xr_agent_directives[] = {
    {"listen", A, XR_T_ADDR, GO(listen), NULL, 0, 0, NULL, NULL, XR_DIR_REQUIRED,
     "Address libraries and other agents connect to (TLS, mutual authentication)."},
    {"tls", A, XR_T_CUSTOM, GO(tls), NULL, 0, 0, (const char *const[]){"tls block", NULL},
     xr_tls_set_server, XR_DIR_REQUIRED,
     "The agent's certificate and key, and client_ca: the CA of applications and agents."},
    {"networks", A, XR_T_STR_LIST, GO(networks_text), NULL, 0, 0, NULL, NULL, 0,
     "The private networks this agent serves: their servers get official addresses."},
    {"official_pool", A, XR_T_STR_LIST, GO(pool_text), NULL, 0, 0, NULL, NULL, 0,
     "Public addresses and ports leased to servers: ADDR:PORT-PORT entries."},
    {"lease_time", A, XR_T_DURATION, GO(lease_time), "30s", 1000, 86400000, NULL, NULL, 0,
     "How long a registration lives without a heartbeat."},
    {"state_file", A, XR_T_PATH, GO(state_file), NULL, 0, 0, NULL, NULL, 0,
     "Where leases are kept across restarts (none: in memory only)."},
    {"handshake_timeout", A, XR_T_DURATION, GO(handshake_timeout), "10s", 100, 600000, NULL, NULL,
     0, "Time a new control connection has for TLS and HELLO."},
    {"idle_session_timeout", A, XR_T_DURATION, GO(idle_session_timeout), "60s", 100, 86400000, NULL,
     NULL, 0,
     "Time a library's control session may go without a request while it holds no "
     "registration and waits on no answer; then it is closed."},
    {"peers", A, XR_T_CUSTOM, 0, NULL, 0, 0, (const char *const[]){"peer agents", NULL},
     xr_agent_set_peers, 0,
     "Other agents: the official networks each serves, its address, certificate and TLS."},
    {"admin_socket", A, XR_T_PATH, GO(admin_socket), NULL, 0, 0, NULL, NULL, 0,
     "UNIX socket (mode 0600) that `xray status` reads the agent's state from."},
    {"incoming", A, XR_T_ENUM, GO(incoming), "auto", 0, 0, xr_reach_names, NULL, 0,
     "How relayed connections reach servers: auto (dial the server, else ask it to connect "
     "out), inbound (dial only) or connect_out (ask only)."},
    XR_DIRECTIVES_END};

#undef A

/* ---- configuration ------------------------------------------------------- */

int xr_agent_set(xr_conf_t *cf, const xr_node_t *n, void *conf, const xr_directive_t *d)
{
    xr_gen_t *g = cf->user;
    if (n->type != XR_NODE_MAP)
        return xr_conf_error(cf, n, "expected a mapping of agent settings");
    if (xr_agent_gen(g)->agent != NULL)
        return xr_conf_error(cf, n, "agent is already defined");
    xr_agent_conf_t *a = xr_conf_alloc(cf, sizeof(*a));
    a->node = n;
    if (xr_conf_defaults(cf, xr_agent_directives, XR_CTX_AGENT, a, NULL) != XR_OK ||
        xr_conf_block(cf, n, xr_agent_directives, XR_CTX_AGENT, a, NULL, NULL) != XR_OK)
        return XR_ERROR;
    if (a->tls->verify != XR_VERIFY_REQUIRED)
        return xr_conf_error(cf, xr_node_get(n, "tls"),
                             "the agent identifies applications by certificate: its tls needs "
                             "client_ca and verify_client: required");
    a->tls->keep_peer = 1;
    if (a->incoming != XR_REACH_CONNECT_OUT && (a->dial_tls = xr_tls_client_of(cf, a->tls)) == NULL)
        return XR_ERROR;
    a->networks = xr_conf_alloc(cf, (a->networks_text.n + 1) * sizeof(xr_net_rule_t));
    const xr_node_t *nn = xr_node_get(n, "networks");
    for (size_t i = 0; i < a->networks_text.n; i++) {
        char why[160];
        xr_net_rule_t *r = &a->networks[a->nnetworks];
        if (xr_net_rule_parse(a->networks_text.items[i], r, why, sizeof(why)) != XR_OK ||
            r->family == 0 || r->port_lo != 1 || r->port_hi != 65535) {
            return xr_conf_error(cf, nn, "\"%s\": %s", a->networks_text.items[i],
                                 r->family == 0 ? "expected a network such as 198.18.2.0/24" : why);
        }
        a->nnetworks++;
    }
    a->pool = xr_conf_alloc(cf, (a->pool_text.n + 1) * sizeof(xr_pool_range_t));
    const xr_node_t *pn = xr_node_get(n, "official_pool");
    for (size_t i = 0; i < a->pool_text.n; i++) {
        char why[160];
        if (xr_pool_range_parse(a->pool_text.items[i], &a->pool[a->npool], why, sizeof(why)) !=
            XR_OK)
            return xr_conf_error(cf, pn, "\"%s\": %s", a->pool_text.items[i], why);
        a->npool++;
    }
    if (a->nnetworks > 0 && a->npool == 0)
        return xr_conf_error(cf, n,
                             "servers in networks need official addresses: add official_pool");
    xr_agent_gen_mut(cf)->agent = a;
    return XR_OK;
}

static int xr_agent_set_peers(xr_conf_t *cf, const xr_node_t *n, void *conf,
                              const xr_directive_t *d)
{
    xr_agent_conf_t *a = conf;
    if (n->type != XR_NODE_SEQ)
        return xr_conf_error(cf, n, "expected a sequence of peer agents (\"- agent: ...\")");
    a->peers = xr_conf_alloc(cf, (n->n ? n->n : 1) * sizeof(xr_peer_conf_t));
    for (size_t i = 0; i < n->n; i++) {
        const xr_node_t *b = n->items[i];
        xr_peer_conf_t *p = &a->peers[a->npeers];
        if (b->type != XR_NODE_MAP)
            return xr_conf_error(cf, b,
                                 "expected a peer agent (a mapping with networks, agent, "
                                 "match and tls)");
        p->node = b;
        if (xr_conf_defaults(cf, xr_peer_directives, XR_CTX_PEER, p, NULL) != XR_OK ||
            xr_conf_block(cf, b, xr_peer_directives, XR_CTX_PEER, p, NULL, NULL) != XR_OK)
            return XR_ERROR;
        if (p->tls->certificate == NULL)
            return xr_conf_error(cf, xr_node_get(b, "tls"),
                                 "agents authenticate each other: the peer's tls needs the "
                                 "agent's certificate and key");
        p->tls->keep_peer = 1;
        p->networks = xr_conf_alloc(cf, (p->networks_text.n + 1) * sizeof(xr_net_rule_t));
        for (size_t j = 0; j < p->networks_text.n; j++) {
            char why[160];
            xr_net_rule_t *r = &p->networks[p->nnetworks];
            if (xr_net_rule_parse(p->networks_text.items[j], r, why, sizeof(why)) != XR_OK ||
                r->family == 0)
                return xr_conf_error(cf, xr_node_get(b, "networks"), "\"%s\": %s",
                                     p->networks_text.items[j],
                                     r->family == 0 ? "expected a network" : why);
            p->nnetworks++;
        }
        a->npeers++;
    }
    return XR_OK;
}

int xr_agent_set_applications(xr_conf_t *cf, const xr_node_t *n, void *conf,
                              const xr_directive_t *d)
{
    xr_agent_gen_t *ag = xr_agent_gen_mut(cf);
    ag->policy = xr_conf_alloc(cf, sizeof(*ag->policy));
    ag->policy_node = n;
    return xr_policy_parse(cf, n, ag->policy);
}

int xr_agent_validate(xr_conf_t *cf, xr_gen_t *g)
{
    const xr_agent_gen_t *ag = xr_agent_gen(g);
    if (ag->policy != NULL && ag->agent == NULL)
        return xr_conf_error(cf, ag->policy_node,
                             "applications are the agent's policy: add an agent block");
    /* Each application's relay points run as a relay block of their own:
     * its filters, the top-level buffer and timeout settings, counters in
     * the shared segment under "agent:NAME". */
    for (size_t i = 0; ag->policy != NULL && i < ag->policy->napps; i++) {
        xr_app_conf_t *app = ag->policy->apps[i];
        xr_relay_conf_t *rc = xr_gen_add_relay(cf, g);
        rc->frontdoor = &xr_agent_frontdoor;
        if (xr_conf_defaults(cf, xr_core_directives, XR_CTX_RELAY, rc, NULL) != XR_OK)
            return XR_ERROR;
        size_t len = strlen(app->name) + sizeof("agent:");
        rc->name = xr_conf_alloc(cf, len);
        snprintf(rc->name, len, "agent:%s", app->name);
        rc->filters = app->filters;
        rc->nfilters = app->nfilters;
        rc->node = app->node;
        app->relay = rc;
    }
    return XR_OK;
}

/* ---- sessions: control connections and overlay links ---------------------- */

#define XR_CTL_IN  (XR_REC_MAX_CIPHER + XR_REC_HEADER + XR_PROTO_MAX_FRAME)
#define XR_CTL_OUT (16 * XR_PROTO_MAX_FRAME)

typedef enum {
    XR_CTL_CONNECTING, /* outgoing: TCP connect in progress */
    XR_CTL_HANDSHAKE,  /* TLS */
    XR_CTL_FIRST,      /* waiting for the first frame (HELLO or LINK) */
    XR_CTL_READY,      /* a control session after HELLO */
    XR_CTL_LINKED      /* a link attached to its relay point: frames are over */
} xr_ctl_state_t;

typedef enum {
    XR_KIND_UNKNOWN,
    XR_KIND_LIBRARY,  /* a library's control session */
    XR_KIND_AGENT,    /* another agent's control session */
    XR_KIND_LINK,     /* an overlay link that connected to us */
    XR_KIND_PEER_OUT, /* our control session to another agent */
    XR_KIND_LINK_OUT  /* our overlay link to another agent's relay point */
} xr_ctl_kind_t;

typedef struct xr_rp_s xr_rp_t;

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
};

/* A kept TLS session with a server this agent dialed (INCOMING mode 1),
 * so that the next link to it resumes. */
typedef struct {
    xr_paddr_t addr;
    char key[65];
    xr_tls_session_t s;
    uint64_t used;
} xr_srv_session_t;

#define XR_SRV_SESSIONS 64

static struct {
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
    struct {
        uint64_t sessions, full, resumed, registered, refreshed, unregistered, expired, refused,
            protocol_errors, connects, direct, relayed, rp_expired, inbound, connect_out,
            peer_sessions;
    } n;
} xr_ag;

static int xr_ctl_flush(xr_ctl_t *c);
static void xr_rp_fail(xr_rp_t *rp, int code, const char *why);
static int xr_peer_ask(xr_rp_t *rp);
static void xr_rp_connect_out(xr_rp_t *rp, const char *why);

static void xr_ctl_timer_closed(uv_handle_t *h)
{
    xr_ctl_t *c = h->data;
    free(c);
}

static void xr_ctl_free(xr_ctl_t *c)
{
    /* Freed when the timer's close completes, after this batch of events:
     * one still queued for c must find it closed, not act on it. */
    c->closing = 1;
    xr_list_remove(&c->link);
    xr_ag.nsessions--;
    uv_timer_stop(&c->timer);
    uv_close((uv_handle_t *) &c->timer, xr_ctl_timer_closed);
}

static void xr_ctl_close(xr_ctl_t *c, const char *why)
{
    if (c->closing)
        return;
    c->closing = 1;
    static const char *const kinds[] = {
        "connection", "control session",       "agent session",
        "link",       "session to peer agent", "link to peer agent"};
    xr_log(XR_LOG_INFO, "agent: %s %s %s%s%s closed: %s", kinds[c->kind],
           c->kind >= XR_KIND_PEER_OUT ? "to" : "from", c->peer_addr, c->who[0] ? ", " : "", c->who,
           why);
    xr_leases_orphan(&xr_ag.leases, c);
    if (c->state >= XR_CTL_FIRST && c->outlen > 0)
        xr_ctl_flush(c); /* best effort: the ERROR that explains the close */
    if (c->end.ops != NULL && c->end.ops->free != NULL)
        c->end.ops->free(&c->end);
    if (c->end.io.fd >= 0)
        close(c->end.io.fd);
    c->end.io.fd = -1;
    /* Whoever waited on this session learns it is gone. */
    xr_rp_t *rp = c->rp;
    c->rp = NULL;
    if (rp != NULL && !rp->dead) {
        if (rp->side[0] == c)
            rp->side[0] = NULL;
        if (rp->side[1] == c)
            rp->side[1] = NULL;
        if (c->kind == XR_KIND_LINK_OUT && rp->fallback)
            xr_rp_connect_out(rp, why); /* the server could not be dialed */
        else if (!c->early)
            xr_rp_fail(rp, XR_PERR_UNREACHABLE, why);
        /* an early link that failed is dialed again at RELAY_READY */
    }
    if (c->kind == XR_KIND_PEER_OUT)
        for (size_t i = 0; i < xr_ag.conf->npeers; i++)
            if (xr_ag.psess[i] == c)
                xr_ag.psess[i] = NULL;
    xr_list_t *next;
    for (xr_list_t *q = xr_ag.rps.next; q != &xr_ag.rps; q = next) {
        next = q->next; /* a failed relay point leaves the list (only itself) */
        xr_rp_t *r = xr_container_of(q, xr_rp_t, link);
        if (r->requester == c)
            r->requester = NULL;
        if (r->srv == c)
            r->srv = NULL;
        if (r->via != c)
            continue;
        r->via = NULL;
        if (r->dead)
            continue;
        if (r->retry && xr_peer_ask(r) == XR_OK)
            continue; /* asked again on a new session */
        char msg[300];
        snprintf(msg, sizeof(msg), "session to peer agent %s closed: %s", r->peer->agent.text, why);
        xr_rp_fail(r, c->fail_code ? c->fail_code : XR_PERR_UNREACHABLE, msg);
    }
    xr_ctl_free(c);
}

/* Send what is queued; XR_OK (maybe partly, the rest waits for EPOLLOUT)
 * or XR_ERROR. */
static int xr_ctl_flush(xr_ctl_t *c)
{
    while (c->outlen > 0) {
        ssize_t n = c->end.ops->write(&c->end, c->out, c->outlen);
        if (n < 0) {
            if (errno == EAGAIN)
                break;
            return XR_ERROR;
        }
        memmove(c->out, c->out + n, c->outlen - (size_t) n);
        c->outlen -= (size_t) n;
        if (n == 0)
            break;
    }
    if (c->end.ops->flush != NULL && c->end.ops->flush(&c->end) < 0 && errno != EAGAIN)
        return XR_ERROR;
    return XR_OK;
}

static void xr_ctl_send(xr_ctl_t *c, const xr_msg_t *m)
{
    size_t n = xr_proto_encode(m, c->out + c->outlen, sizeof(c->out) - c->outlen);
    if (n == 0) {
        /* Only a peer that never reads fills 16 frames of answers. */
        xr_ctl_close(c, "the peer does not read its answers");
        return;
    }
    c->outlen += n;
}

static void xr_ctl_error(xr_ctl_t *c, uint32_t id, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void xr_ctl_error(xr_ctl_t *c, uint32_t id, int code, const char *fmt, ...)
{
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    xr_msg_t m = {.type = XR_MSG_ERROR};
    m.u.error.code = (uint16_t) code;
    m.u.error.id = id;
    xr_pstr_set(&m.u.error.message, msg);
    xr_ctl_send(c, &m);
}

/* Is a in one of the private networks this agent serves? */
static int xr_is_private(const xr_paddr_t *a)
{
    return xr_net_rules_cover_addr(xr_ag.conf->networks, xr_ag.conf->nnetworks, a);
}

static void xr_ctl_register(xr_ctl_t *c, const xr_msg_t *m)
{
    char la[80], oa[80], why[256];
    uint32_t id = m->u.reg.id;
    xr_paddr_str(&m->u.reg.local, la, sizeof(la));
    if (!c->app->inbound) {
        xr_ag.n.refused++;
        xr_log(XR_LOG_NOTICE,
               "agent: REGISTER %s by %s refused: application \"%s\" has inbound off", la, c->who,
               c->app->name);
        xr_ctl_error(c, id, XR_PERR_NOT_AUTHORIZED,
                     "application \"%s\" may not register servers (inbound: off)", c->app->name);
        return;
    }
    /* The agent dials this address for relayed connections (INCOMING mode
     * 1): taken on trust, it would let an application aim the agent at any
     * host and port, around the checks CONNECT makes. */
    xr_paddr_t from;
    xr_paddr_from_sockaddr(&from, &c->remote);
    if (xr_policy_register(c->app, &m->u.reg.local, &from, xr_ag.self, xr_ag.nself, why,
                           sizeof(why)) != XR_OK) {
        xr_ag.n.refused++;
        xr_log(XR_LOG_NOTICE, "agent: REGISTER %s by %s from %s refused: %s", la, c->who,
               c->peer_addr, why);
        xr_ctl_error(c, id, XR_PERR_NOT_AUTHORIZED, "%s", why);
        return;
    }
    if (xr_leases_count(&xr_ag.leases, c->app->name) >= (size_t) c->app->max_registrations) {
        xr_ag.n.refused++;
        xr_log(XR_LOG_NOTICE, "agent: REGISTER %s by %s refused: max_registrations %lld reached",
               la, c->who, (long long) c->app->max_registrations);
        xr_ctl_error(c, id, XR_PERR_OVER_LIMIT, "max_registrations (%lld) reached",
                     (long long) c->app->max_registrations);
        return;
    }
    int err = 0;
    int priv = xr_is_private(&m->u.reg.local);
    if (priv && xr_ag.conf->npool == 0) {
        xr_ctl_error(c, id, XR_PERR_OVER_LIMIT, "no official_pool");
        return;
    }
    xr_lease_t *l = xr_leases_register(&xr_ag.leases, m->u.reg.proto, &m->u.reg.local, priv,
                                       &m->u.reg.prior, c->key, c->app->name, c, xr_wall_ms(),
                                       xr_ag.conf->lease_time, &err, why, sizeof(why));
    if (l == NULL) {
        xr_ag.n.refused++;
        xr_log(XR_LOG_NOTICE, "agent: REGISTER %s by %s refused: %s", la, c->who, why);
        xr_ctl_error(c, id, err, "%s", why);
        return;
    }
    xr_ag.dirty = 1;
    xr_ag.n.registered++;
    xr_log(XR_LOG_INFO, "agent: %s %s registered %s/%s as %s (handle %llu, %s)", c->app->name,
           c->who, la, m->u.reg.proto == XR_PROTO_TCP ? "tcp" : "udp",
           xr_paddr_str(&l->official, oa, sizeof(oa)), (unsigned long long) l->handle,
           l->leased ? "leased" : "public");
    xr_msg_t r = {.type = XR_MSG_REGISTERED};
    r.u.registered.id = id;
    r.u.registered.handle = l->handle;
    r.u.registered.lease_ms = (uint32_t) xr_ag.conf->lease_time;
    r.u.registered.official = l->official;
    xr_ctl_send(c, &r);
}

/* ---- relay points ---------------------------------------------------------- */

static void xr_rp_timer_closed(uv_handle_t *h)
{
    free(h->data);
}

/* Tear down: close the links still attached, answer a waiting CONNECT. */
static void xr_rp_fail(xr_rp_t *rp, int code, const char *why)
{
    if (rp->dead)
        return;
    if (!rp->failed)
        xr_log(XR_LOG_NOTICE, "agent: relay point %llu (%s) failed: %s",
               (unsigned long long) rp->id, rp->what, why);
    if (rp->early && !rp->failed && rp->side[0] == NULL) {
        /* The client's link has not come yet: keep the reason for it. */
        rp->failed = 1;
        rp->fail_code = code;
        rp->via = NULL; /* an answer still to come finds no relay point */
        snprintf(rp->fail_why, sizeof(rp->fail_why), "%s", why);
        xr_ctl_t *d = rp->side[1];
        rp->side[1] = NULL;
        for (xr_list_t *q = xr_ag.sessions.next; q != &xr_ag.sessions; q = q->next) {
            xr_ctl_t *x = xr_container_of(q, xr_ctl_t, link);
            if (x->rp == rp)
                x->rp = NULL;
        }
        if (d != NULL)
            xr_ctl_close(d, "its relay point failed");
        return;
    }
    rp->dead = 1;
    rp->via = NULL;
    if (rp->requester != NULL) {
        xr_ctl_error(rp->requester, rp->req_id, code, "%s", why);
        xr_ctl_flush(rp->requester);
        rp->requester = NULL;
    }
    for (int i = 0; i < 2; i++) {
        xr_ctl_t *s = rp->side[i];
        rp->side[i] = NULL;
        if (s != NULL) {
            s->rp = NULL;
            if (s->kind == XR_KIND_LINK) /* a link waiting for LINK_OK learns why */
                xr_ctl_error(s, 0, code, "%s", why);
            xr_ctl_close(s, "its relay point failed");
        }
    }
    for (xr_list_t *q = xr_ag.sessions.next; q != &xr_ag.sessions; q = q->next) {
        xr_ctl_t *s = xr_container_of(q, xr_ctl_t, link);
        if (s->rp == rp)
            s->rp = NULL;
    }
    xr_list_remove(&rp->link);
    xr_ag.nrps--;
    uv_timer_stop(&rp->timer);
    uv_close((uv_handle_t *) &rp->timer, xr_rp_timer_closed);
}

static void xr_rp_expire(uv_timer_t *t)
{
    xr_rp_t *rp = t->data;
    if (!rp->failed)
        xr_ag.n.rp_expired++;
    rp->early = 0; /* nobody to keep a reason for any more */
    xr_rp_fail(rp, XR_PERR_TIMEOUT, "not linked on both sides in time");
}

static xr_rp_t *xr_rp_new(const xr_app_conf_t *app, const char *what)
{
    xr_rp_t *rp = calloc(1, sizeof(*rp));
    if (rp == NULL)
        return NULL;
    rp->id = ++xr_ag.next_rp;
    rp->app = app;
    rp->dial_side = -1;
    randombytes_buf(rp->token, sizeof(rp->token));
    snprintf(rp->what, sizeof(rp->what), "%s", what);
    uv_timer_init(xr_ag.loop, &rp->timer);
    rp->timer.data = rp;
    /* Unused relay points expire (XRAY §5.2: bound to a token and a peer,
     * not a standing opening). */
    uv_timer_start(&rp->timer, xr_rp_expire, (uint64_t) xr_ag.conf->handshake_timeout * 2, 0);
    xr_list_insert_tail(&xr_ag.rps, &rp->link);
    xr_ag.nrps++;
    return rp;
}

static xr_rp_t *xr_rp_find(const uint8_t *token)
{
    for (xr_list_t *q = xr_ag.rps.next; q != &xr_ag.rps; q = q->next) {
        xr_rp_t *rp = xr_container_of(q, xr_rp_t, link);
        if (!rp->dead && sodium_memcmp(rp->token, token, XR_PROTO_TOKEN) == 0)
            return rp;
    }
    return NULL;
}

/* Relay points and running relays of app: what max_relays bounds. */
static size_t xr_rp_count(const xr_app_conf_t *app)
{
    size_t n = (size_t) xr_worker_rt(app->relay)->active;
    for (xr_list_t *q = xr_ag.rps.next; q != &xr_ag.rps; q = q->next) {
        const xr_rp_t *rp = xr_container_of(q, xr_rp_t, link);
        n += rp->app == app && !rp->dead && !rp->failed;
    }
    return n;
}

/* Both sides linked: LINK_OK to the links that came to us, then one relay. */
static void xr_rp_complete(xr_rp_t *rp)
{
    xr_ctl_t *s[2] = {rp->side[0], rp->side[1]};
    for (int i = 0; i < 2; i++)
        if (i != rp->dial_side) {
            xr_msg_t ok = {.type = XR_MSG_LINK_OK};
            xr_ctl_send(s[i], &ok);
            if (xr_ctl_flush(s[i]) != XR_OK || s[i]->outlen > 0) {
                /* a LINK_OK that does not fit the socket at once is a
                 * peer not reading: give up rather than buffer */
                xr_rp_fail(rp, XR_PERR_UNREACHABLE, "a link does not read");
                return;
            }
        }
    xr_end_t *ends[2] = {&s[0]->end, &s[1]->end};
    const unsigned char *pend[2] = {s[0]->in, s[1]->in};
    size_t npend[2] = {s[0]->inlen, s[1]->inlen};
    struct sockaddr_storage client = s[0]->remote;
    uint64_t id = rp->id;
    xr_relay_rt_t *rt = xr_worker_rt(rp->app->relay);
    xr_log(XR_LOG_INFO, "agent: relay point %llu linked: %s", (unsigned long long) id, rp->what);
    xr_ag.n.relayed++;
    rp->side[0] = rp->side[1] = NULL;
    s[0]->rp = s[1]->rp = NULL;
    rp->requester = NULL;
    rp->via = NULL;
    rp->dead = 1;
    xr_list_remove(&rp->link);
    xr_ag.nrps--;
    uv_timer_stop(&rp->timer);
    uv_close((uv_handle_t *) &rp->timer, xr_rp_timer_closed);
    xr_relay_join(xr_ag.loop, rt, ends, pend, npend, &client, id);
    xr_ctl_free(s[0]);
    xr_ctl_free(s[1]);
}

static void xr_rp_linked(xr_rp_t *rp, int side, xr_ctl_t *c)
{
    if (side == rp->dial_side)
        rp->fallback = 0; /* the server took our link */
    rp->side[side] = c;
    rp->linked[side] = 1;
    c->rp = rp;
    c->side = side;
    c->state = XR_CTL_LINKED;
    uv_timer_stop(&c->timer);
    if (rp->linked[0] && rp->linked[1])
        xr_rp_complete(rp);
}

/* A LINK arrived on a connection that came to us. */
static void xr_ctl_link(xr_ctl_t *c, const xr_msg_t *m)
{
    xr_rp_t *rp = xr_rp_find(m->u.link.token);
    if (rp != NULL && rp->failed && strcmp(rp->key[0], c->key) == 0) {
        xr_ctl_error(c, 0, rp->fail_code, "%s", rp->fail_why);
        rp->early = 0;
        xr_rp_fail(rp, rp->fail_code, rp->fail_why); /* told: now it can go */
        xr_ctl_close(c, "its relay point had failed");
        return;
    }
    int side = -1;
    for (int i = 0; rp != NULL && i < 2; i++)
        if (i != rp->dial_side && !rp->linked[i] && strcmp(rp->key[i], c->key) == 0)
            side = i;
    if (rp == NULL || side < 0) {
        xr_ag.n.refused++;
        xr_log(XR_LOG_NOTICE, "agent: link from %s (%s) refused: %s", c->peer_addr, c->who,
               rp == NULL ? "no relay point has that token"
                          : "not the certificate the relay point expects");
        xr_ctl_error(c, 0, XR_PERR_BAD_TOKEN, "%s",
                     rp == NULL ? "no such relay point" : "wrong certificate for this relay point");
        xr_ctl_close(c, "bad link");
        return;
    }
    c->kind = XR_KIND_LINK;
    xr_rp_linked(rp, side, c);
}

/* ---- outgoing sessions ------------------------------------------------------ */

static void xr_ctl_io(xr_io_t *io, uint32_t events);
static void xr_ctl_run(xr_ctl_t *c);

static void xr_ctl_timeout(uv_timer_t *t)
{
    xr_ctl_t *c = t->data;
    if (c->kind == XR_KIND_LINK_OUT && c->rp != NULL && c->rp->fallback) {
        xr_log(XR_LOG_INFO, "agent: server %s did not take a link within 1 s", c->peer_addr);
        xr_ctl_close(c, "no link to the server in time");
        return;
    }
    xr_log(XR_LOG_NOTICE, "agent: %s did not finish TLS and HELLO within %lld ms", c->peer_addr,
           (long long) xr_ag.conf->handshake_timeout);
    xr_ctl_close(c, "handshake timeout");
}

/* Does library session c still need its connection: a registration it
 * holds (kept alive by its heartbeats), or a relay point that will answer
 * it or send it INCOMING? */
static int xr_ctl_in_use(const xr_ctl_t *c)
{
    if (xr_leases_owned(&xr_ag.leases, c) > 0)
        return 1;
    for (xr_list_t *q = xr_ag.rps.next; q != &xr_ag.rps; q = q->next) {
        const xr_rp_t *rp = xr_container_of(q, xr_rp_t, link);
        if (rp->requester == c || rp->srv == c)
            return 1;
    }
    return 0;
}

static void xr_ctl_idle(uv_timer_t *t)
{
    xr_ctl_t *c = t->data;
    uint64_t ms = (uint64_t) xr_ag.conf->idle_session_timeout;
    if (xr_ctl_in_use(c)) {
        uv_timer_start(&c->timer, xr_ctl_idle, ms, 0);
        return;
    }
    /* Otherwise a session that said HELLO and nothing more would hold a
     * socket and its buffers for good. */
    char why[128];
    snprintf(why, sizeof(why), "idle for %llu ms with no registration and no request",
             (unsigned long long) ms);
    xr_ctl_error(c, 0, XR_PERR_TIMEOUT, "%s", why);
    xr_ctl_close(c, why);
}

/* A library's session after HELLO: (re)start its idle time. */
static void xr_ctl_idle_arm(xr_ctl_t *c)
{
    uv_timer_start(&c->timer, xr_ctl_idle, (uint64_t) xr_ag.conf->idle_session_timeout, 0);
}

static xr_ctl_t *xr_ctl_new(int fd, xr_ctl_kind_t kind)
{
    /* Frames are small and answered: Nagle would hold each behind the
     * peer's delayed ACK (~40 ms a round trip).  The relay a link becomes
     * keeps the setting. */
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    xr_ctl_t *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        close(fd);
        xr_log(XR_LOG_ERR, "agent: out of memory for a connection");
        return NULL;
    }
    c->kind = kind;
    c->end.io.fd = -1;
    uv_timer_init(xr_ag.loop, &c->timer);
    c->timer.data = c;
    xr_list_insert_tail(&xr_ag.sessions, &c->link);
    xr_ag.nsessions++;
    xr_ag.n.sessions++;
    if (xr_io_add(&c->end.io, fd, xr_ctl_io) != XR_OK) {
        /* c->end holds fd now: xr_ctl_close closes it. */
        xr_ctl_close(c, "cannot watch the socket");
        return NULL;
    }
    uv_timer_start(&c->timer, xr_ctl_timeout, (uint64_t) xr_ag.conf->handshake_timeout, 0);
    return c;
}

/* ---- connection setup (XRAY §5.2) ------------------------------------------- */

static const xr_peer_conf_t *xr_peer_for(const xr_paddr_t *dst)
{
    for (size_t i = 0; i < xr_ag.conf->npeers; i++)
        if (xr_net_rules_cover_addr(xr_ag.conf->peers[i].networks, xr_ag.conf->peers[i].nnetworks,
                                    dst))
            return &xr_ag.conf->peers[i];
    return NULL;
}

/* TCP keepalive on sessions that stay open between requests (standing
 * sessions to peer agents, libraries' control sessions): a peer that
 * vanished without a FIN is noticed in about a minute, not never. */
static void xr_ctl_keepalive(int fd)
{
    int on = 1, idle = 30, intvl = 10, cnt = 3;
    setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &on, sizeof(on));
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle));
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof(intvl));
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof(cnt));
}

/* Connect to another agent or to a server (a control session or a
 * link), with TLS conf tls, offering the session in slot (NULL: the
 * conf's own), from local address from (NULL: any). */
static xr_ctl_t *xr_ctl_dial_tls(xr_tls_conf_t *tls, xr_tls_session_t *slot,
                                 const struct sockaddr_storage *from, const xr_paddr_t *to,
                                 xr_ctl_kind_t kind, xr_rp_t *rp)
{
    struct sockaddr_storage ss;
    socklen_t len = xr_paddr_to_sockaddr(to, &ss);
    if (len == 0)
        return NULL;
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return NULL;
    if (from != NULL && from->ss_family == ss.ss_family) {
        /* The server tells the agent's links from direct clients by their
         * source: the address it reaches the agent at. */
        struct sockaddr_storage b = *from;
        socklen_t blen =
            b.ss_family == AF_INET ? sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6);
        if (b.ss_family == AF_INET)
            ((struct sockaddr_in *) &b)->sin_port = 0;
        else
            ((struct sockaddr_in6 *) &b)->sin6_port = 0;
        int one = 1;
        setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one));
        if (bind(fd, (struct sockaddr *) &b, blen) != 0) {
            close(fd);
            return NULL;
        }
    }
    if (connect(fd, (struct sockaddr *) &ss, len) != 0 && errno != EINPROGRESS) {
        close(fd);
        return NULL;
    }
    xr_ctl_t *c = xr_ctl_new(fd, kind);
    if (c == NULL)
        return NULL;
    c->rp = rp;
    c->remote = ss;
    xr_paddr_str(to, c->peer_addr, sizeof(c->peer_addr));
    c->state = XR_CTL_CONNECTING;
    if (xr_tls_end_start_session(&c->end, tls, slot) != XR_OK) {
        xr_ctl_close(c, "out of memory");
        return NULL;
    }
    return c;
}

static xr_ctl_t *xr_ctl_dial(const xr_peer_conf_t *peer, const xr_paddr_t *to, xr_ctl_kind_t kind,
                             xr_rp_t *rp)
{
    xr_ctl_t *c = xr_ctl_dial_tls(peer->tls, NULL, NULL, to, kind, rp);
    if (c != NULL)
        c->peer = peer;
    return c;
}

/* ---- the standing sessions to peer agents ------------------------------------ */

static void xr_peer_send_connect(xr_ctl_t *s, xr_rp_t *rp)
{
    xr_msg_t pc = {.type = XR_MSG_PEER_CONNECT};
    pc.u.peer_connect.id = rp->via_id;
    pc.u.peer_connect.proto = rp->proto;
    pc.u.peer_connect.dst = rp->dst;
    pc.u.peer_connect.src = rp->src;
    sodium_hex2bin(pc.u.peer_connect.client_key, sizeof(pc.u.peer_connect.client_key), rp->key[0],
                   strlen(rp->key[0]), NULL, NULL, NULL);
    xr_pstr_set(&pc.u.peer_connect.client_subject, rp->subject);
    xr_ctl_send(s, &pc);
    rp->asked = 1;
}

/* Ask rp's peer agent for the server's side (step 3) on the standing
 * session to it, dialing one when there is none: with many connections
 * the agents talk over one TLS session, and a connection costs the two
 * agents no handshake of its own but its link.  XR_OK, or XR_ERROR when
 * the peer cannot be dialed. */
static int xr_peer_ask(xr_rp_t *rp)
{
    size_t i = (size_t) (rp->peer - xr_ag.conf->peers);
    xr_ctl_t *s = xr_ag.psess[i];
    rp->retry = s != NULL && s->state == XR_CTL_READY;
    if (s == NULL) {
        xr_paddr_t to;
        xr_paddr_from_sockaddr(&to, &rp->peer->agent.sa);
        s = xr_ctl_dial(rp->peer, &to, XR_KIND_PEER_OUT, NULL);
        if (s == NULL)
            return XR_ERROR;
        xr_ctl_keepalive(s->end.io.fd);
        xr_ag.psess[i] = s;
        xr_ag.n.peer_sessions++;
    }
    rp->via = s;
    if (++xr_ag.next_req == 0)
        xr_ag.next_req = 1;
    rp->via_id = xr_ag.next_req;
    rp->asked = 0;
    if (s->state == XR_CTL_READY) {
        xr_peer_send_connect(s, rp);
        /* A failure shows as an error edge on s, which closes it and
         * fails or re-asks what waits on it. */
        xr_ctl_flush(s);
    }
    return XR_OK;
}

/* Client agent: a library asks for a connection (steps 2-3, 5). */
static void xr_ctl_connect(xr_ctl_t *c, const xr_msg_t *m)
{
    char d[80], why[300];
    uint32_t id = m->u.connect.id;
    xr_paddr_str(&m->u.connect.dst, d, sizeof(d));
    xr_ag.n.connects++;
    if (xr_policy_outbound(c->app, &m->u.connect.dst, xr_ag.self, xr_ag.nself, why, sizeof(why)) !=
        XR_OK) {
        xr_ag.n.refused++;
        xr_log(XR_LOG_NOTICE, "agent: CONNECT %s by %s refused: %s", d, c->who, why);
        xr_ctl_error(c, id, XR_PERR_NOT_AUTHORIZED, "%s", why);
        return;
    }
    /* Within the network: the server's local address, no relay. */
    xr_lease_t *l = xr_leases_by_official(&xr_ag.leases, m->u.connect.proto, &m->u.connect.dst);
    if (l != NULL) {
        char la[80];
        xr_ag.n.direct++;
        xr_log(XR_LOG_INFO, "agent: CONNECT %s/%s by %s: same network, direct to %s", d,
               m->u.connect.proto == XR_PROTO_UDP ? "udp" : "tcp", c->who,
               xr_paddr_str(&l->local, la, sizeof(la)));
        xr_msg_t r = {.type = XR_MSG_CONNECT_OK};
        r.u.connect_ok.id = id;
        r.u.connect_ok.mode = XR_CONNECT_DIRECT;
        r.u.connect_ok.addr = l->local;
        xr_ctl_send(c, &r);
        return;
    }
    const xr_peer_conf_t *peer = xr_peer_for(&m->u.connect.dst);
    if (peer == NULL) {
        xr_log(XR_LOG_NOTICE, "agent: CONNECT %s by %s: no peer agent serves it", d, c->who);
        xr_ctl_error(c, id, XR_PERR_UNREACHABLE, "no agent is known for %s", d);
        return;
    }
    if (xr_rp_count(c->app) >= (size_t) c->app->max_relays) {
        xr_ag.n.refused++;
        xr_log(XR_LOG_NOTICE, "agent: CONNECT %s by %s refused: max_relays %lld reached", d, c->who,
               (long long) c->app->max_relays);
        xr_ctl_error(c, id, XR_PERR_OVER_LIMIT, "max_relays (%lld) reached",
                     (long long) c->app->max_relays);
        return;
    }
    char what[512];
    snprintf(what, sizeof(what), "%s (%s) to %s%s via %s", c->app->name, c->who, d,
             m->u.connect.proto == XR_PROTO_UDP ? "/udp" : "", peer->agent.text);
    xr_rp_t *rp = xr_rp_new(c->app, what);
    if (rp == NULL) {
        xr_ctl_error(c, id, XR_PERR_INTERNAL, "out of memory");
        return;
    }
    snprintf(rp->key[0], sizeof(rp->key[0]), "%s", c->key);
    rp->dial_side = 1;
    rp->dst = m->u.connect.dst;
    rp->proto = m->u.connect.proto;
    rp->peer = peer;
    xr_paddr_from_sockaddr(&rp->src, &c->remote);
    snprintf(rp->subject, sizeof(rp->subject), "%s", c->who);
    if (xr_peer_ask(rp) != XR_OK) {
        rp->requester = c;
        rp->req_id = id;
        xr_rp_fail(rp, XR_PERR_UNREACHABLE, "cannot connect to the peer agent");
        return;
    }
    /* The link to the peer's relay point (at its agent address, as a
     * rule) comes up while the peer answers; LINK waits for the token. */
    xr_paddr_t to;
    xr_paddr_from_sockaddr(&to, &peer->agent.sa);
    xr_ctl_t *early = xr_ctl_dial(peer, &to, XR_KIND_LINK_OUT, rp);
    if (early != NULL) {
        early->early = 1;
        early->side = 1;
        rp->side[1] = early;
    }
    /* Step 5 without waiting for step 4's answer: the client's link comes
     * up while the agents talk; a refusal reaches it on that link. */
    rp->early = 1;
    xr_msg_t r = {.type = XR_MSG_CONNECT_OK};
    r.u.connect_ok.id = id;
    r.u.connect_ok.mode = XR_CONNECT_RELAY;
    xr_paddr_from_sockaddr(&r.u.connect_ok.addr, &c->local);
    memcpy(r.u.connect_ok.token, rp->token, XR_PROTO_TOKEN);
    sodium_hex2bin(r.u.connect_ok.peer_key, sizeof(r.u.connect_ok.peer_key), xr_ag.own_key,
                   strlen(xr_ag.own_key), NULL, NULL, NULL);
    xr_ctl_send(c, &r);
}

/* Client agent: the standing session to a peer agent is up (TLS done). */
static void xr_peer_out_ready(xr_ctl_t *c)
{
    xr_msg_t h = {.type = XR_MSG_HELLO};
    h.u.hello.min_version = h.u.hello.max_version = XR_PROTO_VERSION;
    h.u.hello.role = XR_ROLE_AGENT;
    xr_pstr_set(&h.u.hello.software, "xrayd/" XR_VERSION);
    xr_ctl_send(c, &h);
    c->state = XR_CTL_FIRST; /* waiting for HELLO_OK */
}

static xr_rp_t *xr_rp_asked(const xr_ctl_t *via, uint32_t id)
{
    for (xr_list_t *q = xr_ag.rps.next; q != &xr_ag.rps; q = q->next) {
        xr_rp_t *rp = xr_container_of(q, xr_rp_t, link);
        if (rp->via == via && rp->via_id == id && rp->asked)
            return rp;
    }
    return NULL;
}

static void xr_peer_out_frame(xr_ctl_t *c, const xr_msg_t *m)
{
    char why[512];
    if (m->type == XR_MSG_ERROR && (m->u.error.id == 0 || c->state == XR_CTL_FIRST)) {
        /* The session itself was refused (HELLO, or a frame it found
         * invalid): what waits on it fails with the peer's reason. */
        snprintf(why, sizeof(why), "%s: %s", xr_proto_err_name(m->u.error.code),
                 m->u.error.message.s);
        xr_log(XR_LOG_NOTICE, "agent: peer agent %s refused: %s", c->peer_addr, why);
        c->fail_code = m->u.error.code;
        xr_ctl_close(c, why);
        return;
    }
    if (c->state == XR_CTL_FIRST) {
        if (m->type != XR_MSG_HELLO_OK) {
            c->fail_code = XR_PERR_PROTOCOL;
            xr_ctl_close(c, "the peer agent did not answer HELLO");
            return;
        }
        c->state = XR_CTL_READY;
        uv_timer_stop(&c->timer);
        for (xr_list_t *q = xr_ag.rps.next; q != &xr_ag.rps; q = q->next) {
            xr_rp_t *rp = xr_container_of(q, xr_rp_t, link);
            if (rp->via == c && !rp->asked)
                xr_peer_send_connect(c, rp);
        }
        return;
    }
    if (m->type != XR_MSG_RELAY_READY && m->type != XR_MSG_ERROR) {
        xr_ctl_error(c, 0, XR_PERR_PROTOCOL, "%s is not an answer to PEER_CONNECT",
                     xr_proto_type_name(m->type));
        c->fail_code = XR_PERR_PROTOCOL;
        xr_ctl_close(c, "unexpected frame from the peer agent");
        return;
    }
    uint32_t id = m->type == XR_MSG_ERROR ? m->u.error.id : m->u.relay_ready.id;
    xr_rp_t *rp = xr_rp_asked(c, id);
    if (rp == NULL)
        return; /* it expired meanwhile; so will the peer's relay point */
    rp->via = NULL;
    if (m->type == XR_MSG_ERROR) {
        snprintf(why, sizeof(why), "peer agent %s: %s: %s", rp->peer->agent.text,
                 xr_proto_err_name(m->u.error.code), m->u.error.message.s);
        xr_rp_fail(rp, m->u.error.code, why);
        return;
    }
    /* Step 5-6: our relay point is ready, the links go up in parallel.
     * The link dialed early, to the peer's usual address, takes the token
     * now; to another address we dial again. */
    xr_ctl_t *link = rp->side[1];
    struct sockaddr_storage want;
    xr_paddr_to_sockaddr(&m->u.relay_ready.addr, &want);
    if (link != NULL && link->early &&
        !(link->remote.ss_family == want.ss_family &&
          memcmp(&link->remote, &want,
                 want.ss_family == AF_INET ? sizeof(struct sockaddr_in)
                                           : sizeof(struct sockaddr_in6)) == 0)) {
        rp->side[1] = NULL;
        link->rp = NULL;
        xr_ctl_close(link, "the peer's relay point is elsewhere");
        link = NULL;
    }
    if (link == NULL) {
        link = xr_ctl_dial(rp->peer, &m->u.relay_ready.addr, XR_KIND_LINK_OUT, rp);
        if (link == NULL) {
            xr_rp_fail(rp, XR_PERR_UNREACHABLE, "cannot connect to the peer's relay point");
            return;
        }
        link->side = 1;
        rp->side[1] = link; /* the client already has CONNECT_OK (xr_ctl_connect) */
    }
    memcpy(link->in, m->u.relay_ready.token, XR_PROTO_TOKEN); /* kept until TLS is up */
    if (link->early) {
        link->early = 0;
        if (link->state == XR_CTL_FIRST) { /* its TLS is already up */
            xr_msg_t lk = {.type = XR_MSG_LINK};
            memcpy(lk.u.link.token, link->in, XR_PROTO_TOKEN);
            memset(link->in, 0, XR_PROTO_TOKEN);
            xr_ctl_send(link, &lk);
            xr_ctl_flush(link);
        }
    }
}

/* ---- the server's side (steps 4 and 6) --------------------------------------- */

/* The kept session for dialing the server at addr with key, or a slot
 * to keep one in (the least recently used). */
static xr_tls_session_t *xr_srv_session(const xr_paddr_t *addr, const char *key)
{
    xr_srv_session_t *old = &xr_ag.srvs[0];
    for (size_t i = 0; i < XR_SRV_SESSIONS; i++) {
        xr_srv_session_t *e = &xr_ag.srvs[i];
        if (e->used != 0 && memcmp(&e->addr, addr, sizeof(*addr)) == 0 &&
            strcmp(e->key, key) == 0) {
            e->used = ++xr_ag.srv_clock;
            return &e->s;
        }
        if (e->used < old->used)
            old = e;
    }
    xr_tls_session_free(&old->s);
    old->addr = *addr;
    snprintf(old->key, sizeof(old->key), "%s", key);
    old->used = ++xr_ag.srv_clock;
    return &old->s;
}

static void xr_rp_incoming(xr_rp_t *rp, int mode)
{
    xr_msg_t in = {.type = XR_MSG_INCOMING};
    in.u.incoming.id = (uint32_t) rp->id;
    in.u.incoming.handle = rp->handle;
    in.u.incoming.mode = (uint8_t) mode;
    if (mode == XR_INCOMING_CONNECT_OUT)
        xr_paddr_from_sockaddr(&in.u.incoming.addr, &rp->srv->local);
    memcpy(in.u.incoming.token, rp->token, XR_PROTO_TOKEN);
    in.u.incoming.peer = rp->client_src;
    xr_pstr_set(&in.u.incoming.client_subject, rp->client_subject);
    xr_ctl_send(rp->srv, &in);
    xr_ctl_flush(rp->srv);
    if (mode == XR_INCOMING_CONNECT_OUT)
        xr_ag.n.connect_out++;
}

/* The server could not be dialed (or refused our link): ask its library
 * to connect out to the relay point instead (the GCB technique). */
static void xr_rp_connect_out(xr_rp_t *rp, const char *why)
{
    rp->fallback = 0;
    rp->dial_side = -1;
    rp->linked[1] = 0;
    if (rp->srv == NULL) {
        xr_rp_fail(rp, XR_PERR_UNREACHABLE, "the server's control session is gone");
        return;
    }
    xr_log(XR_LOG_INFO,
           "agent: relay point %llu: cannot dial the server (%s); asking it to connect out",
           (unsigned long long) rp->id, why);
    xr_rp_incoming(rp, XR_INCOMING_CONNECT_OUT);
}

/* Server agent: another agent asks for a connection to one of our servers
 * (step 4). */
static void xr_ctl_peer_connect(xr_ctl_t *c, const xr_msg_t *m)
{
    char d[80];
    uint32_t id = m->u.peer_connect.id;
    xr_paddr_str(&m->u.peer_connect.dst, d, sizeof(d));
    xr_lease_t *l =
        xr_leases_by_official(&xr_ag.leases, m->u.peer_connect.proto, &m->u.peer_connect.dst);
    if (l == NULL || l->owner == NULL) {
        xr_log(XR_LOG_NOTICE, "agent: PEER_CONNECT %s from %s: %s", d, c->who,
               l == NULL ? "no server holds it" : "its server is not connected");
        xr_ctl_error(c, id, l == NULL ? XR_PERR_NO_SUCH_ADDRESS : XR_PERR_UNREACHABLE,
                     l == NULL ? "no server holds %s" : "the server of %s is not connected", d);
        return;
    }
    xr_ctl_t *srv = l->owner;
    const xr_app_conf_t *app = srv->app;
    if (app == NULL || !app->inbound) {
        xr_ag.n.refused++;
        xr_log(XR_LOG_NOTICE, "agent: PEER_CONNECT %s from %s refused: application has inbound off",
               d, c->who);
        xr_ctl_error(c, id, XR_PERR_NOT_AUTHORIZED, "the server may not accept connections");
        return;
    }
    if (xr_rp_count(app) >= (size_t) app->max_relays) {
        xr_ag.n.refused++;
        xr_log(XR_LOG_NOTICE, "agent: PEER_CONNECT %s from %s refused: max_relays %lld reached", d,
               c->who, (long long) app->max_relays);
        xr_ctl_error(c, id, XR_PERR_OVER_LIMIT, "max_relays (%lld) reached",
                     (long long) app->max_relays);
        return;
    }
    char what[512];
    snprintf(what, sizeof(what), "%s via %s to %s%s (%s)", m->u.peer_connect.client_subject.s,
             c->who, d, m->u.peer_connect.proto == XR_PROTO_UDP ? "/udp" : "", app->name);
    xr_rp_t *rp = xr_rp_new(app, what);
    if (rp == NULL) {
        xr_ctl_error(c, id, XR_PERR_INTERNAL, "out of memory");
        return;
    }
    snprintf(rp->key[0], sizeof(rp->key[0]), "%s", c->key);
    snprintf(rp->key[1], sizeof(rp->key[1]), "%s", l->key);
    rp->srv = srv;
    rp->handle = l->handle;
    rp->client_src = m->u.peer_connect.src;
    snprintf(rp->client_subject, sizeof(rp->client_subject), "%s",
             m->u.peer_connect.client_subject.s);
    /* A UDP server's local address takes no TCP link: it connects out. */
    int reach =
        m->u.peer_connect.proto == XR_PROTO_UDP ? XR_REACH_CONNECT_OUT : xr_ag.conf->incoming;
    xr_msg_t r = {.type = XR_MSG_RELAY_READY};
    r.u.relay_ready.id = id;
    xr_paddr_from_sockaddr(&r.u.relay_ready.addr, &c->local);
    memcpy(r.u.relay_ready.token, rp->token, XR_PROTO_TOKEN);
    if (reach != XR_REACH_INBOUND) {
        /* The client's agent links while we reach the server: answer first
         * (a server we cannot dial still has the fallback). */
        xr_ctl_send(c, &r);
        xr_ctl_flush(c);
    }
    xr_ctl_t *link = NULL;
    if (reach != XR_REACH_CONNECT_OUT) {
        /* Step 6 from this side: dial the server's local address, from the
         * address its library reaches us at, and tell the library which
         * token the link will present (mode 1). */
        xr_rp_incoming(rp, XR_INCOMING_INBOUND);
        link = xr_ctl_dial_tls(xr_ag.conf->dial_tls, xr_srv_session(&l->local, l->key), &srv->local,
                               &l->local, XR_KIND_LINK_OUT, rp);
        if (link != NULL) {
            xr_ag.n.inbound++;
            link->side = 1;
            memcpy(link->in, rp->token, XR_PROTO_TOKEN);
            rp->dial_side = 1;
            rp->side[1] = link;
            if (reach == XR_REACH_AUTO) {
                rp->fallback = 1;
                /* A server that drops our SYN must not cost the client the
                 * whole handshake timeout before the fallback. */
                uv_timer_start(&link->timer, xr_ctl_timeout,
                               (uint64_t) XR_MIN(xr_ag.conf->handshake_timeout, 1000), 0);
            }
        }
    }
    if (link == NULL && reach == XR_REACH_INBOUND) {
        xr_rp_fail(rp, XR_PERR_UNREACHABLE, "cannot dial the server");
        xr_ctl_error(c, id, XR_PERR_UNREACHABLE, "the server cannot be reached");
        return;
    }
    if (link == NULL)
        xr_rp_incoming(rp, XR_INCOMING_CONNECT_OUT);
    if (reach == XR_REACH_INBOUND)
        xr_ctl_send(c, &r);
    xr_log(XR_LOG_INFO, "agent: relay point %llu for %s (%s)", (unsigned long long) rp->id, what,
           link != NULL ? "dialing the server" : "the server connects out");
}

/* ---- frames ------------------------------------------------------------------ */

static int xr_peer_matches(const xr_peer_conf_t *p, const xr_identity_t *id)
{
    for (size_t i = 0; i < p->match.n; i++)
        if (xr_identity_match(id, p->match.items[i]))
            return 1;
    return 0;
}

static void xr_ctl_first(xr_ctl_t *c, const xr_msg_t *m)
{
    const xr_identity_t *id = xr_tls_end_peer(&c->end);
    if (m->type == XR_MSG_LINK) {
        xr_ctl_link(c, m);
        return;
    }
    if (m->type != XR_MSG_HELLO) {
        xr_ctl_error(c, 0, XR_PERR_PROTOCOL, "expected HELLO or LINK, got %s",
                     xr_proto_type_name(m->type));
        xr_ctl_close(c, "no HELLO");
        return;
    }
    if (m->u.hello.min_version > XR_PROTO_VERSION) {
        xr_ctl_error(c, 0, XR_PERR_VERSION, "this agent speaks version %d only", XR_PROTO_VERSION);
        xr_ctl_close(c, "no common protocol version");
        return;
    }
    if (m->u.hello.role == XR_ROLE_AGENT) {
        for (size_t i = 0; id != NULL && i < xr_ag.conf->npeers && c->peer == NULL; i++)
            if (xr_peer_matches(&xr_ag.conf->peers[i], id))
                c->peer = &xr_ag.conf->peers[i];
        c->kind = XR_KIND_AGENT;
    } else {
        c->app = id != NULL && xr_agent_gen(xr_ag.gen)->policy != NULL
                     ? xr_policy_find(xr_agent_gen(xr_ag.gen)->policy, id)
                     : NULL;
        c->kind = XR_KIND_LIBRARY;
    }
    xr_ctl_keepalive(c->end.io.fd);
    if (c->app == NULL && c->peer == NULL) {
        xr_ag.n.refused++;
        xr_log(XR_LOG_NOTICE, "agent: %s (%s) refused: no %s matches its certificate", c->peer_addr,
               c->who, c->kind == XR_KIND_AGENT ? "peer agent" : "application");
        xr_ctl_error(c, 0, XR_PERR_NOT_AUTHORIZED, "no %s of this agent matches your certificate",
                     c->kind == XR_KIND_AGENT ? "peer" : "application");
        xr_ctl_close(c, "not authorized");
        return;
    }
    xr_msg_t r = {.type = XR_MSG_HELLO_OK};
    r.u.hello_ok.version = XR_PROTO_VERSION;
    r.u.hello_ok.heartbeat_ms = (uint32_t) (xr_ag.conf->lease_time / 3);
    xr_pstr_set(&r.u.hello_ok.software, "xrayd/" XR_VERSION);
    xr_ctl_send(c, &r);
    c->state = XR_CTL_READY;
    /* Another agent's session is the standing one for its PEER_CONNECTs
     * (a configured peer): it stays open between them. */
    if (c->kind == XR_KIND_LIBRARY)
        xr_ctl_idle_arm(c);
    else
        uv_timer_stop(&c->timer);
}

static void xr_ctl_frame(xr_ctl_t *c, const xr_msg_t *m)
{
    if (c->kind == XR_KIND_PEER_OUT) {
        xr_peer_out_frame(c, m);
        return;
    }
    if (c->kind == XR_KIND_LINK_OUT) {
        xr_rp_t *rp = c->rp;
        if (m->type != XR_MSG_LINK_OK || rp == NULL) {
            xr_ctl_close(c, m->type == XR_MSG_ERROR ? m->u.error.message.s
                                                    : "the peer's relay point refused the link");
            return;
        }
        xr_rp_linked(rp, 1, c);
        return;
    }
    if (c->state == XR_CTL_FIRST) {
        xr_ctl_first(c, m);
        return;
    }
    xr_lease_t *l;
    xr_msg_t r = {0};
    if (c->kind == XR_KIND_AGENT) {
        if (m->type == XR_MSG_PEER_CONNECT) {
            xr_ctl_peer_connect(c, m);
            return;
        }
        xr_ctl_error(c, 0, XR_PERR_PROTOCOL, "%s is not a request an agent sends to an agent",
                     xr_proto_type_name(m->type));
        xr_ctl_close(c, "unexpected frame");
        return;
    }
    xr_ctl_idle_arm(c);
    switch (m->type) {
    case XR_MSG_REGISTER: xr_ctl_register(c, m); break;
    case XR_MSG_REFRESH:
        l = xr_leases_find(&xr_ag.leases, m->u.refresh.handle, c);
        if (l == NULL) {
            xr_ctl_error(c, m->u.refresh.id, XR_PERR_NO_SUCH_ADDRESS,
                         "no registration %llu on this connection",
                         (unsigned long long) m->u.refresh.handle);
            break;
        }
        l->expires = xr_wall_ms() + xr_ag.conf->lease_time;
        xr_ag.dirty = 1;
        xr_ag.n.refreshed++;
        r.type = XR_MSG_REFRESHED;
        r.u.refreshed.id = m->u.refresh.id;
        r.u.refreshed.lease_ms = (uint32_t) xr_ag.conf->lease_time;
        xr_ctl_send(c, &r);
        break;
    case XR_MSG_UNREGISTER:
        l = xr_leases_find(&xr_ag.leases, m->u.refresh.handle, c);
        if (l == NULL) {
            xr_ctl_error(c, m->u.refresh.id, XR_PERR_NO_SUCH_ADDRESS,
                         "no registration %llu on this connection",
                         (unsigned long long) m->u.refresh.handle);
            break;
        }
        char oa[80];
        xr_log(XR_LOG_INFO, "agent: %s unregistered %s", c->app->name,
               xr_paddr_str(&l->official, oa, sizeof(oa)));
        xr_leases_release(&xr_ag.leases, l);
        xr_ag.dirty = 1;
        xr_ag.n.unregistered++;
        r.type = XR_MSG_UNREGISTERED;
        r.u.done.id = m->u.refresh.id;
        xr_ctl_send(c, &r);
        break;
    case XR_MSG_CONNECT: xr_ctl_connect(c, m); break;
    case XR_MSG_INCOMING_OK: break; /* the library took it; its link will tell */
    case XR_MSG_ERROR:
        /* a library that cannot take an INCOMING: its relay point expires */
        xr_log(XR_LOG_NOTICE, "agent: %s answered %s: %s", c->who,
               xr_proto_err_name(m->u.error.code), m->u.error.message.s);
        break;
    default:
        xr_ctl_error(c, 0, XR_PERR_PROTOCOL, "%s is not a request a library sends to its agent",
                     xr_proto_type_name(m->type));
        xr_ctl_close(c, "unexpected frame");
    }
}

static void xr_ctl_input(xr_ctl_t *c)
{
    size_t off = 0;
    /* A link's frames end with LINK / LINK_OK: what follows is relayed. */
    while (!c->closing && c->state != XR_CTL_LINKED) {
        /* Each frame is answered by at most two: with no room for them
         * (a peer that pipelines faster than its socket drains), stop and
         * take the rest once EPOLLOUT makes room, reading nothing more
         * meanwhile. */
        if (sizeof(c->out) - c->outlen < 2 * XR_PROTO_MAX_FRAME) {
            if (xr_ctl_flush(c) != XR_OK) {
                xr_ctl_close(c, "write failed");
                return;
            }
            c->out_full = sizeof(c->out) - c->outlen < 2 * XR_PROTO_MAX_FRAME;
            if (c->out_full)
                return;
        }
        xr_msg_t m;
        size_t used;
        const char *why;
        xr_proto_status_t st = xr_proto_decode(c->in + off, c->inlen - off, &m, &used, &why);
        if (st == XR_PROTO_AGAIN)
            break;
        if (st != XR_PROTO_OK) {
            xr_log(XR_LOG_NOTICE, "agent: invalid frame from %s%s%s (type 0x%02x): bad %s",
                   c->peer_addr, c->who[0] ? ", " : "", c->who, c->in[off], why);
            xr_ag.n.protocol_errors++;
            xr_ctl_error(c, 0, XR_PERR_PROTOCOL, "invalid frame: bad %s", why);
            xr_ctl_flush(c);
            xr_ctl_close(c, "protocol error");
            return;
        }
        off += used;
        /* the frame may complete a relay point, which takes over c: keep
         * what follows it first */
        memmove(c->in, c->in + off, c->inlen - off);
        c->inlen -= off;
        off = 0;
        xr_ctl_frame(c, &m);
        if (c->state == XR_CTL_LINKED)
            return; /* joined into a relay (c is being freed), or waiting */
    }
}

static void xr_ctl_run(xr_ctl_t *c)
{
    if (c->state == XR_CTL_CONNECTING) {
        if (!c->end.writable)
            return;
        int err = 0;
        socklen_t len = sizeof(err);
        if (getsockopt(c->end.io.fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0)
            err = errno;
        if (err != 0) {
            xr_log(XR_LOG_NOTICE, "agent: cannot connect to %s: %s", c->peer_addr, strerror(err));
            xr_ctl_close(c, strerror(err));
            return;
        }
        c->state = XR_CTL_HANDSHAKE;
    }
    if (c->state == XR_CTL_HANDSHAKE) {
        int rc = xr_tls_end_handshake(&c->end);
        if (rc == XR_AGAIN)
            return;
        if (rc != XR_OK) {
            xr_log(XR_LOG_NOTICE, "agent: TLS handshake with %s failed: %s", c->peer_addr,
                   xr_tls_end_why(&c->end));
            xr_ctl_close(c, "TLS handshake failed");
            return;
        }
        if (xr_tls_end_resumed(&c->end))
            xr_ag.n.resumed++;
        else
            xr_ag.n.full++;
        const xr_identity_t *id = xr_tls_end_peer(&c->end);
        const char *ident = xr_tls_end_identity(&c->end);
        snprintf(c->who, sizeof(c->who), "%s", ident ? ident : "no certificate");
        if (id != NULL)
            snprintf(c->key, sizeof(c->key), "%s", id->pubkey_sha256);
        socklen_t sl = sizeof(c->local);
        getsockname(c->end.io.fd, (struct sockaddr *) &c->local, &sl);
        c->state = XR_CTL_FIRST;
        c->end.readable = 1; /* a frame may have come with the handshake */
        if (c->kind == XR_KIND_PEER_OUT) {
            xr_peer_out_ready(c);
        } else if (c->kind == XR_KIND_LINK_OUT && c->early) {
            /* TLS is up before the peer's RELAY_READY: LINK waits for its
             * token (xr_peer_out_frame). */
        } else if (c->kind == XR_KIND_LINK_OUT) {
            if (c->peer == NULL && (c->rp == NULL || strcmp(c->key, c->rp->key[1]) != 0)) {
                /* A server we dialed: it must be the registered one. */
                xr_log(XR_LOG_NOTICE,
                       "agent: server %s presented %s, not the certificate that registered",
                       c->peer_addr, c->who);
                xr_ctl_close(c, "not the registered server's certificate");
                return;
            }
            xr_msg_t lk = {.type = XR_MSG_LINK};
            memcpy(lk.u.link.token, c->in, XR_PROTO_TOKEN);
            memset(c->in, 0, XR_PROTO_TOKEN);
            xr_ctl_send(c, &lk);
        } else if (id == NULL) {
            xr_ctl_close(c, "no verified certificate");
            return;
        }
    }
    if (c->out_full && c->end.writable) {
        c->out_full = 0;
        xr_ctl_input(c); /* the frames that waited for room */
        if (c->closing || c->state == XR_CTL_LINKED)
            return;
    }
    while (!c->closing && c->state != XR_CTL_LINKED && c->end.readable && !c->out_full) {
        if (c->inlen == sizeof(c->in)) {
            xr_ctl_close(c, "input buffer full");
            return;
        }
        ssize_t n = c->end.ops->read(&c->end, c->in + c->inlen, sizeof(c->in) - c->inlen);
        if (n > 0) {
            c->inlen += (size_t) n;
            xr_ctl_state_t before = c->state;
            xr_ctl_input(c);
            if (before != XR_CTL_LINKED && c->state == XR_CTL_LINKED)
                return; /* joined (c may be gone) or waiting for the other side */
            continue;
        }
        if (n == 0) {
            xr_ctl_close(c, "closed by the peer");
            return;
        }
        if (errno == EAGAIN) {
            c->end.readable = 0;
            break;
        }
        const char *why = c->end.ops->why ? c->end.ops->why(&c->end) : NULL;
        xr_ctl_close(c, why ? why : strerror(errno));
        return;
    }
    if (!c->closing && c->state != XR_CTL_LINKED && xr_ctl_flush(c) != XR_OK)
        xr_ctl_close(c, "write failed");
    else if (!c->closing && c->state == XR_CTL_LINKED && c->outlen > 0)
        xr_ctl_flush(c);
}

static void xr_ctl_io(xr_io_t *io, uint32_t events)
{
    xr_ctl_t *c = xr_container_of(io, xr_ctl_t, end.io);
    if (c->closing)
        return; /* joined into a relay or closed earlier in this batch */
    if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))
        c->end.readable = 1;
    if (events & (EPOLLOUT | EPOLLHUP | EPOLLERR))
        c->end.writable = 1;
    if (c->state == XR_CTL_LINKED) {
        /* waiting for the other side: a link that goes away fails it */
        if (events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR))
            xr_ctl_close(c, "link closed before its relay point was complete");
        return;
    }
    xr_ctl_run(c);
}

static void xr_agent_accept(xr_io_t *io, uint32_t events)
{
    /* Edge-triggered: take every queued connection, or the rest waits for
     * the next one to arrive. */
    while (xr_ag.running) {
        struct sockaddr_storage sa;
        socklen_t len = sizeof(sa);
        int fd = accept4(io->fd, (struct sockaddr *) &sa, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED)
                xr_log(XR_LOG_ERR, "agent: accept() failed: %s", strerror(errno));
            return;
        }
        xr_ctl_t *c = xr_ctl_new(fd, XR_KIND_UNKNOWN);
        if (c == NULL)
            continue;
        c->remote = sa;
        xr_addr_format(&sa, c->peer_addr, sizeof(c->peer_addr));
        c->state = XR_CTL_HANDSHAKE;
        if (xr_tls_end_start(&c->end, xr_ag.conf->tls) != XR_OK) {
            xr_ctl_close(c, "out of memory");
            continue;
        }
        c->end.readable = c->end.writable = 1;
        xr_ctl_run(c);
    }
}

/* ---- leases over time ---------------------------------------------------- */

static void xr_agent_expired(xr_lease_t *l, void *arg)
{
    char oa[80];
    xr_ag.n.expired++;
    xr_log(XR_LOG_INFO, "agent: lease of %s (%s) expired without a heartbeat",
           xr_paddr_str(&l->official, oa, sizeof(oa)), l->app);
}

static void xr_agent_save(void)
{
    if (!xr_ag.dirty || xr_ag.conf->state_file == NULL)
        return;
    if (xr_leases_save(&xr_ag.leases, xr_ag.conf->state_file) != 0) {
        /* Keep serving from memory and try again on the next tick. */
        xr_log(XR_LOG_ERR, "agent: cannot write state_file %s: %s", xr_ag.conf->state_file,
               strerror(errno));
        return;
    }
    xr_ag.dirty = 0;
}

static void xr_agent_tick(uv_timer_t *t)
{
    if (xr_leases_expire(&xr_ag.leases, xr_wall_ms(), xr_agent_expired, NULL) > 0)
        xr_ag.dirty = 1;
    xr_agent_save();
}

/* ---- the admin socket: `xray status` --------------------------------------- */

/* Relays running through this agent's relay points. */
static size_t xr_agent_relays(void)
{
    size_t n = 0;
    for (size_t i = 0;
         xr_agent_gen(xr_ag.gen)->policy != NULL && i < xr_agent_gen(xr_ag.gen)->policy->napps; i++)
        n += (size_t) xr_worker_rt(xr_agent_gen(xr_ag.gen)->policy->apps[i]->relay)->active;
    return n;
}

static size_t xr_pool_size(void)
{
    size_t n = 0;
    for (size_t i = 0; i < xr_ag.conf->npool; i++)
        n += (size_t) (xr_ag.conf->pool[i].hi - xr_ag.conf->pool[i].lo) + 1;
    return n;
}

/* The standing session to peer i: "up", "opening" or "none". */
static const char *xr_peer_state(size_t i)
{
    const xr_ctl_t *s = xr_ag.psess[i];
    return s == NULL ? "none" : s->state == XR_CTL_READY ? "up" : "opening";
}

static void xr_agent_status(xr_sb_t *b, int json)
{
    int64_t now = xr_wall_ms();
    size_t leased = 0;
    for (size_t i = 0; i < xr_ag.leases.n; i++)
        leased += xr_ag.leases.l[i].leased;
    static const char *const counters[] = {"sessions",
                                           "full_handshakes",
                                           "resumed_handshakes",
                                           "registered",
                                           "refreshed",
                                           "unregistered",
                                           "expired",
                                           "refused",
                                           "protocol_errors",
                                           "connects",
                                           "direct",
                                           "relayed",
                                           "relay_points_expired",
                                           "servers_dialed",
                                           "servers_connected_out",
                                           "peer_sessions_opened"};
    uint64_t values[] = {
        xr_ag.n.sessions,        xr_ag.n.full,         xr_ag.n.resumed,     xr_ag.n.registered,
        xr_ag.n.refreshed,       xr_ag.n.unregistered, xr_ag.n.expired,     xr_ag.n.refused,
        xr_ag.n.protocol_errors, xr_ag.n.connects,     xr_ag.n.direct,      xr_ag.n.relayed,
        xr_ag.n.rp_expired,      xr_ag.n.inbound,      xr_ag.n.connect_out, xr_ag.n.peer_sessions};
    if (json) {
        xr_sb_add(b, "{\"version\":\"%s\",\"pid\":%ld,\"generation\":%llu,\"listen\":", XR_VERSION,
                  (long) getpid(), (unsigned long long) xr_ag.gen->number);
        xr_sb_json(b, xr_ag.conf->listen.text);
        xr_sb_add(b,
                  ",\"uptime_ms\":%lld,\"open_sessions\":%zu,\"pool\":{\"size\":%zu,"
                  "\"leased\":%zu},\"counters\":{",
                  (long long) (now - xr_ag.started), xr_ag.nsessions, xr_pool_size(), leased);
        for (size_t i = 0; i < XR_ARRAY_SIZE(values); i++)
            xr_sb_add(b, "%s\"%s\":%llu", i ? "," : "", counters[i],
                      (unsigned long long) values[i]);
        xr_sb_add(b, "},\"registrations\":[");
        for (size_t i = 0; i < xr_ag.leases.n; i++) {
            const xr_lease_t *l = &xr_ag.leases.l[i];
            char o[80], lo[80];
            xr_sb_add(b, "%s{\"official\":", i ? "," : "");
            xr_sb_json(b, xr_paddr_str(&l->official, o, sizeof(o)));
            xr_sb_add(b, ",\"local\":");
            xr_sb_json(b, xr_paddr_str(&l->local, lo, sizeof(lo)));
            xr_sb_add(b, ",\"proto\":\"%s\",\"leased\":%s,\"application\":",
                      l->proto == XR_PROTO_TCP ? "tcp" : "udp", l->leased ? "true" : "false");
            xr_sb_json(b, l->app);
            xr_sb_add(b, ",\"key\":\"%s\",\"holder\":\"%s\",\"expires_in_ms\":%lld}", l->key,
                      l->owner ? "connected" : "reserved", (long long) (l->expires - now));
        }
        xr_sb_add(b, "],\"relay_points\":[");
        int first = 1;
        for (xr_list_t *q = xr_ag.rps.next; q != &xr_ag.rps; q = q->next, first = 0) {
            xr_rp_t *rp = xr_container_of(q, xr_rp_t, link);
            xr_sb_add(b, "%s{\"id\":%llu,\"application\":", first ? "" : ",",
                      (unsigned long long) rp->id);
            xr_sb_json(b, rp->app->name);
            xr_sb_add(b, ",\"what\":");
            xr_sb_json(b, rp->what);
            xr_sb_add(b, ",\"linked\":[%s,%s]}", rp->linked[0] ? "true" : "false",
                      rp->linked[1] ? "true" : "false");
        }
        xr_sb_add(b, "],\"relays\":%zu,\"peers\":[", xr_agent_relays());
        for (size_t i = 0; i < xr_ag.conf->npeers; i++) {
            xr_sb_add(b, "%s{\"agent\":", i ? "," : "");
            xr_sb_json(b, xr_ag.conf->peers[i].agent.text);
            xr_sb_add(b, ",\"session\":\"%s\"}", xr_peer_state(i));
        }
        xr_sb_add(b, "]}\n");
        return;
    }
    xr_sb_add(b, "agent %s  pid %ld  generation %llu  up %lld s\n", xr_ag.conf->listen.text,
              (long) getpid(), (unsigned long long) xr_ag.gen->number,
              (long long) ((now - xr_ag.started) / 1000));
    xr_sb_add(b,
              "control sessions: %zu open, %llu in all; TLS handshakes: %llu full, %llu "
              "resumed\n",
              xr_ag.nsessions, (unsigned long long) xr_ag.n.sessions,
              (unsigned long long) xr_ag.n.full, (unsigned long long) xr_ag.n.resumed);
    xr_sb_add(b, "official pool: %zu addresses, %zu leased\n", xr_pool_size(), leased);
    xr_sb_add(b, "counters:");
    for (size_t i = 3; i < XR_ARRAY_SIZE(values); i++)
        xr_sb_add(b, " %s %llu%s", counters[i], (unsigned long long) values[i],
                  i + 1 < XR_ARRAY_SIZE(values) ? "," : "\n");
    xr_sb_add(b, "registrations: %zu\n", xr_ag.leases.n);
    if (xr_ag.leases.n > 0)
        xr_sb_add(b, "  %-24s %-24s %-5s %-16s %-10s %s\n", "OFFICIAL", "LOCAL", "PROTO",
                  "APPLICATION", "HOLDER", "EXPIRES");
    for (size_t i = 0; i < xr_ag.leases.n; i++) {
        const xr_lease_t *l = &xr_ag.leases.l[i];
        char o[80], lo[80];
        xr_sb_add(b, "  %-24s %-24s %-5s %-16s %-10s in %lld s\n",
                  xr_paddr_str(&l->official, o, sizeof(o)), xr_paddr_str(&l->local, lo, sizeof(lo)),
                  l->proto == XR_PROTO_TCP ? "tcp" : "udp", l->app,
                  l->owner ? "connected" : "reserved", (long long) ((l->expires - now) / 1000));
    }
    xr_sb_add(b, "relay points: %zu being linked; relays running: %zu\n", xr_ag.nrps,
              xr_agent_relays());
    for (xr_list_t *q = xr_ag.rps.next; q != &xr_ag.rps; q = q->next) {
        xr_rp_t *rp = xr_container_of(q, xr_rp_t, link);
        xr_sb_add(b, "  %llu %s (linked: client side %s, server side %s)\n",
                  (unsigned long long) rp->id, rp->what, rp->linked[0] ? "yes" : "no",
                  rp->linked[1] ? "yes" : "no");
    }
    xr_sb_add(b, "peers: %zu\n", xr_ag.conf->npeers);
    for (size_t i = 0; i < xr_ag.conf->npeers; i++)
        xr_sb_add(b, "  %s (session %s)\n", xr_ag.conf->peers[i].agent.text, xr_peer_state(i));
}

static void xr_agent_admin(xr_io_t *io, uint32_t events)
{
    xr_admin_serve(io->fd, xr_agent_status);
}

int xr_agent_start(uv_loop_t *loop, xr_gen_t *g, int listen_fd)
{
    memset(&xr_ag, 0, sizeof(xr_ag));
    xr_ag.loop = loop;
    xr_ag.gen = g;
    xr_ag.conf = xr_agent_gen(g)->agent;
    xr_list_init(&xr_ag.sessions);
    xr_list_init(&xr_ag.rps);
    xr_ag.psess = calloc(xr_ag.conf->npeers + 1, sizeof(*xr_ag.psess));
    if (xr_ag.psess == NULL)
        return XR_ERROR;
    /* What CONNECT_OK tells a library to expect of our certificate, and
     * our own addresses, which no outbound rule reaches and no server
     * registers unless a rule names them. */
    xr_identity_t me;
    if (xr_identity_from_crt(&xr_ag.conf->tls->crt, &me) == XR_OK)
        snprintf(xr_ag.own_key, sizeof(xr_ag.own_key), "%s", me.pubkey_sha256);
    struct ifaddrs *ifs = NULL;
    if (getifaddrs(&ifs) == 0) {
        for (struct ifaddrs *i = ifs; i != NULL && xr_ag.nself < XR_ARRAY_SIZE(xr_ag.self);
             i = i->ifa_next)
            if (i->ifa_addr != NULL &&
                (i->ifa_addr->sa_family == AF_INET || i->ifa_addr->sa_family == AF_INET6))
                xr_paddr_from_sockaddr(&xr_ag.self[xr_ag.nself++],
                                       (struct sockaddr_storage *) i->ifa_addr);
        freeifaddrs(ifs);
    }
    if (xr_ag.nself < XR_ARRAY_SIZE(xr_ag.self)) {
        /* Usually an interface's address already, unless bound before the
         * interface came up (ip_nonlocal_bind). */
        xr_paddr_t *a = &xr_ag.self[xr_ag.nself++];
        xr_paddr_from_sockaddr(a, &xr_ag.conf->listen.sa);
        a->port = 0;
    }
    for (size_t i = 0; i < xr_ag.conf->npool && xr_ag.nself < XR_ARRAY_SIZE(xr_ag.self); i++) {
        xr_paddr_t *a = &xr_ag.self[xr_ag.nself++];
        memset(a, 0, sizeof(*a));
        a->family = xr_ag.conf->pool[i].family;
        memcpy(a->addr, xr_ag.conf->pool[i].addr, 16);
    }
    xr_leases_init(&xr_ag.leases, xr_ag.conf->pool, xr_ag.conf->npool);
    if (xr_ag.conf->state_file != NULL) {
        char why[256];
        int n =
            xr_leases_load(&xr_ag.leases, xr_ag.conf->state_file, xr_wall_ms(), why, sizeof(why));
        if (n < 0)
            xr_log(XR_LOG_ERR, "agent: %s; starting with no leases", why);
        else if (n > 0)
            xr_log(XR_LOG_NOTICE, "agent: %d lease(s) from %s held for their holders", n,
                   xr_ag.conf->state_file);
    }
    if (xr_io_add(&xr_ag.lio, listen_fd, xr_agent_accept) != XR_OK) {
        xr_log(XR_LOG_ERR, "agent: cannot watch %s: %s", xr_ag.conf->listen.text, strerror(errno));
        return XR_ERROR;
    }
    xr_ag.running = 1;
    xr_ag.started = xr_wall_ms();
    xr_ag.admin.fd = -1;
    if (xr_ag.conf->admin_socket != NULL) {
        int afd = xr_admin_open(xr_ag.conf->admin_socket);
        struct stat st;
        if (afd >= 0 && stat(xr_ag.conf->admin_socket, &st) == 0)
            xr_ag.admin_ino = st.st_ino;
        if (afd < 0 || xr_io_add(&xr_ag.admin, afd, xr_agent_admin) != XR_OK) {
            /* Status is a convenience: the agent serves without it. */
            xr_log(XR_LOG_ERR, "agent: cannot open admin_socket %s: %s", xr_ag.conf->admin_socket,
                   strerror(errno));
            if (afd >= 0)
                close(afd);
            xr_ag.admin.fd = -1;
        }
    }
    uv_timer_init(loop, &xr_ag.tick);
    uv_timer_start(&xr_ag.tick, xr_agent_tick, 1000, 1000);
    uv_unref((uv_handle_t *) &xr_ag.tick);
    xr_log(XR_LOG_NOTICE, "agent: serving on %s (%zu application(s), %zu pool range(s))",
           xr_ag.conf->listen.text, xr_agent_gen(g)->policy ? xr_agent_gen(g)->policy->napps : 0,
           xr_ag.conf->npool);
    /* The listener was readable before we watched it: take what waits. */
    xr_agent_accept(&xr_ag.lio, EPOLLIN);
    return XR_OK;
}

void xr_agent_stop(void)
{
    if (!xr_ag.running)
        return;
    xr_ag.running = 0;
    xr_io_del(&xr_ag.lio);
    if (xr_ag.admin.fd >= 0) {
        /* Remove the path only if it is still ours (a reload's new agent
         * may have bound it already). */
        struct stat there;
        if (stat(xr_ag.conf->admin_socket, &there) == 0 && there.st_ino == xr_ag.admin_ino)
            unlink(xr_ag.conf->admin_socket);
        close(xr_ag.admin.fd);
        xr_ag.admin.fd = -1;
    }
    while (!xr_list_empty(&xr_ag.rps)) {
        xr_rp_t *rp = xr_container_of(xr_ag.rps.next, xr_rp_t, link);
        xr_rp_fail(rp, XR_PERR_UNREACHABLE, "agent stopping");
    }
    while (!xr_list_empty(&xr_ag.sessions)) {
        xr_ctl_t *c = xr_container_of(xr_ag.sessions.next, xr_ctl_t, link);
        xr_ctl_close(c, "agent stopping");
    }
    for (size_t i = 0; i < XR_SRV_SESSIONS; i++)
        xr_tls_session_free(&xr_ag.srvs[i].s);
    free(xr_ag.psess);
    xr_ag.psess = NULL;
    xr_ag.dirty = 1;
    xr_agent_save();
    uv_timer_stop(&xr_ag.tick);
    uv_close((uv_handle_t *) &xr_ag.tick, NULL);
    xr_leases_free(&xr_ag.leases);
}

size_t xr_agent_sessions(void)
{
    return xr_ag.nsessions;
}
