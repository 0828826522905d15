/*
 * ctl.c: the agent's control sessions (see agent_int.h): accepting and
 * dialing them, TLS, reading frames, and answering them in order.
 *
 * A control session is a TLS end (mutual authentication, the identity
 * kept) read into a frame buffer; every complete frame is decoded by
 * proto.c and answered in order.  The application is found from the
 * certificate once, at HELLO: an identity no application matches is
 * refused there, with the reason logged.  Overlay links start as the same
 * kind of session and leave it for a relay point once linked.
 */
#include "agent/agent_int.h"
#include "core/log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

static void xr_ctl_timer_closed(uv_handle_t *h)
{
    xr_ctl_t *c = h->data;
    free(c);
}

void xr__ctl_free(xr_ctl_t *c)
{
    /* Freed when the timer's close completes, after this batch of events:
     * one still queued for c must find it closed, not act on it. */
    c->closing = 1;
    xr_list_remove(&c->link);
    xr__ag.nsessions--;
    uv_timer_stop(&c->timer);
    uv_close((uv_handle_t *) &c->timer, xr_ctl_timer_closed);
}

void xr__ctl_close(xr_ctl_t *c, const char *why)
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
    xr_leases_orphan(&xr__ag.leases, c);
    if (c->state >= XR_CTL_FIRST && c->outlen > 0)
        xr__ctl_flush(c); /* best effort: the ERROR that explains the close */
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
            xr__rp_connect_out(rp, why); /* the server could not be dialed */
        else if (!c->early)
            xr__rp_fail(rp, XR_PERR_UNREACHABLE, why);
        /* an early link that failed is dialed again at RELAY_READY */
    }
    if (c->kind == XR_KIND_PEER_OUT)
        for (size_t i = 0; i < xr__ag.conf->npeers; i++)
            if (xr__ag.psess[i] == c)
                xr__ag.psess[i] = NULL;
    xr_list_t *next;
    for (xr_list_t *q = xr__ag.rps.next; q != &xr__ag.rps; q = next) {
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
        if (r->retry && xr__peer_ask(r) == XR_OK)
            continue; /* asked again on a new session */
        char msg[300];
        snprintf(msg, sizeof(msg), "session to peer agent %s closed: %s", r->peer->agent.text, why);
        xr__rp_fail(r, c->fail_code ? c->fail_code : XR_PERR_UNREACHABLE, msg);
    }
    xr__ctl_free(c);
}

/* Send what is queued; XR_OK (maybe partly, the rest waits for EPOLLOUT)
 * or XR_ERROR. */
int xr__ctl_flush(xr_ctl_t *c)
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

void xr__ctl_send(xr_ctl_t *c, const xr_msg_t *m)
{
    size_t n = xr_proto_encode(m, c->out + c->outlen, sizeof(c->out) - c->outlen);
    if (n == 0 && xr__ctl_flush(c) == XR_OK)
        n = xr_proto_encode(m, c->out + c->outlen, sizeof(c->out) - c->outlen);
    if (n == 0) {
        /* Only a peer that never reads fills its socket and 16 frames of
         * answers: whatever sends a burst checks for room first
         * (xr__ctl_room). */
        xr__ctl_close(c, "the peer does not read its answers");
        return;
    }
    c->outlen += n;
}

/* Is there room for two more frames, after writing what the socket
 * takes?  When not, c->out_full is set: c reads nothing more until
 * EPOLLOUT drains it, and then sends what waited (xr_ctl_run). */
int xr__ctl_room(xr_ctl_t *c)
{
    if (sizeof(c->out) - c->outlen >= 2 * XR_PROTO_MAX_FRAME)
        return 1;
    if (xr__ctl_flush(c) != XR_OK)
        return 0; /* the error edge closes c */
    c->out_full = sizeof(c->out) - c->outlen < 2 * XR_PROTO_MAX_FRAME;
    return !c->out_full;
}

void xr__ctl_error(xr_ctl_t *c, uint32_t id, int code, const char *fmt, ...)
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
    xr__ctl_send(c, &m);
}

/* Is a in one of the private networks this agent serves? */
static int xr_is_private(const xr_paddr_t *a)
{
    return xr_net_rules_cover_addr(xr__ag.conf->networks, xr__ag.conf->nnetworks, a);
}

static void xr_ctl_register(xr_ctl_t *c, const xr_msg_t *m)
{
    char la[80], oa[80], why[256];
    uint32_t id = m->u.reg.id;
    xr_paddr_str(&m->u.reg.local, la, sizeof(la));
    if (!c->app->inbound) {
        xr__ag.n.refused++;
        xr_log(XR_LOG_NOTICE,
               "agent: REGISTER %s by %s refused: application \"%s\" has inbound off", la, c->who,
               c->app->name);
        xr__ctl_error(c, id, XR_PERR_NOT_AUTHORIZED,
                      "application \"%s\" may not register servers (inbound: off)", c->app->name);
        return;
    }
    /* The agent dials this address for relayed connections (INCOMING mode
     * 1): taken on trust, it would let an application aim the agent at any
     * host and port, around the checks CONNECT makes. */
    xr_paddr_t from;
    xr_paddr_from_sockaddr(&from, &c->remote);
    /* Direct clients and openings go to `direct`: the same rules. */
    const xr_paddr_t *direct = m->u.reg.direct.family != 0 ? &m->u.reg.direct : &m->u.reg.local;
    if (xr_policy_register(c->app, &m->u.reg.local, &from, xr__ag.self, xr__ag.nself, why,
                           sizeof(why)) != XR_OK ||
        xr_policy_register(c->app, direct, &from, xr__ag.self, xr__ag.nself, why, sizeof(why)) !=
            XR_OK) {
        xr__ag.n.refused++;
        xr_log(XR_LOG_NOTICE, "agent: REGISTER %s by %s from %s refused: %s", la, c->who,
               c->peer_addr, why);
        xr__ctl_error(c, id, XR_PERR_NOT_AUTHORIZED, "%s", why);
        return;
    }
    if (xr_leases_count(&xr__ag.leases, c->app->name) >= (size_t) c->app->max_registrations) {
        xr__ag.n.refused++;
        xr_log(XR_LOG_NOTICE, "agent: REGISTER %s by %s refused: max_registrations %lld reached",
               la, c->who, (long long) c->app->max_registrations);
        xr__ctl_error(c, id, XR_PERR_OVER_LIMIT, "max_registrations (%lld) reached",
                      (long long) c->app->max_registrations);
        return;
    }
    int err = 0;
    int priv = xr_is_private(&m->u.reg.local);
    if (priv && xr__ag.conf->npool == 0) {
        xr__ctl_error(c, id, XR_PERR_OVER_LIMIT, "no official_pool");
        return;
    }
    xr_lease_t *l = xr_leases_register(&xr__ag.leases, m->u.reg.proto, &m->u.reg.local, priv,
                                       &m->u.reg.prior, c->key, c->app->name, c, xr_wall_ms(),
                                       xr__ag.conf->lease_time, &err, why, sizeof(why));
    if (l == NULL) {
        xr__ag.n.refused++;
        xr_log(XR_LOG_NOTICE, "agent: REGISTER %s by %s refused: %s", la, c->who, why);
        xr__ctl_error(c, id, err, "%s", why);
        return;
    }
    l->direct = *direct;
    xr__ag.dirty = 1;
    xr__ag.n.registered++;
    xr_log(XR_LOG_INFO, "agent: %s %s registered %s/%s as %s (handle %llu, %s)", c->app->name,
           c->who, la, m->u.reg.proto == XR_PROTO_TCP ? "tcp" : "udp",
           xr_paddr_str(&l->official, oa, sizeof(oa)), (unsigned long long) l->handle,
           l->leased ? "leased" : "public");
    xr_msg_t r = {.type = XR_MSG_REGISTERED};
    r.u.registered.id = id;
    r.u.registered.handle = l->handle;
    r.u.registered.lease_ms = (uint32_t) xr__ag.conf->lease_time;
    r.u.registered.official = l->official;
    xr__ctl_send(c, &r);
}

/* ---- outgoing sessions ------------------------------------------------------ */

static void xr_ctl_io(xr_io_t *io, uint32_t events);
static void xr_ctl_run(xr_ctl_t *c);

void xr__ctl_timeout(uv_timer_t *t)
{
    xr_ctl_t *c = t->data;
    if (c->kind == XR_KIND_LINK_OUT && c->rp != NULL && c->rp->fallback) {
        xr_log(XR_LOG_INFO, "agent: server %s did not take a link in time (%s)", c->peer_addr,
               c->state == XR_CTL_CONNECTING ? "no answer within 1 s" : "TLS unfinished");
        xr__ctl_close(c, "no link to the server in time");
        return;
    }
    xr_log(XR_LOG_NOTICE, "agent: %s did not finish TLS and HELLO within %lld ms", c->peer_addr,
           (long long) xr__ag.conf->handshake_timeout);
    xr__ctl_close(c, "handshake timeout");
}

/* Does library session c still need its connection: a registration it
 * holds (kept alive by its heartbeats), or a relay point that will answer
 * it or send it INCOMING? */
static int xr_ctl_in_use(const xr_ctl_t *c)
{
    if (xr_leases_owned(&xr__ag.leases, c) > 0)
        return 1;
    for (xr_list_t *q = xr__ag.rps.next; q != &xr__ag.rps; q = q->next) {
        const xr_rp_t *rp = xr_container_of(q, xr_rp_t, link);
        if (rp->requester == c || rp->srv == c)
            return 1;
    }
    return 0;
}

static void xr_ctl_idle(uv_timer_t *t)
{
    xr_ctl_t *c = t->data;
    uint64_t ms = (uint64_t) xr__ag.conf->idle_session_timeout;
    if (xr_ctl_in_use(c)) {
        uv_timer_start(&c->timer, xr_ctl_idle, ms, 0);
        return;
    }
    /* Otherwise a session that said HELLO and nothing more would hold a
     * socket and its buffers for good. */
    char why[128];
    snprintf(why, sizeof(why), "idle for %llu ms with no registration and no request",
             (unsigned long long) ms);
    xr__ctl_error(c, 0, XR_PERR_TIMEOUT, "%s", why);
    xr__ctl_close(c, why);
}

/* A library's session after HELLO: (re)start its idle time. */
static void xr_ctl_idle_arm(xr_ctl_t *c)
{
    uv_timer_start(&c->timer, xr_ctl_idle, (uint64_t) xr__ag.conf->idle_session_timeout, 0);
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
    uv_timer_init(xr__ag.loop, &c->timer);
    c->timer.data = c;
    xr_list_insert_tail(&xr__ag.sessions, &c->link);
    xr__ag.nsessions++;
    xr__ag.n.sessions++;
    if (xr_io_add(&c->end.io, fd, xr_ctl_io) != XR_OK) {
        /* c->end holds fd now: xr__ctl_close closes it. */
        xr__ctl_close(c, "cannot watch the socket");
        return NULL;
    }
    uv_timer_start(&c->timer, xr__ctl_timeout, (uint64_t) xr__ag.conf->handshake_timeout, 0);
    return c;
}

/* ---- dialing out ------------------------------------------------------------ */

/* TCP keepalive on sessions that stay open between requests (standing
 * sessions to peer agents, libraries' control sessions): a peer that
 * vanished without a FIN is noticed in about a minute, not never. */
void xr__ctl_keepalive(int fd)
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
xr_ctl_t *xr__ctl_dial_tls(xr_tls_conf_t *tls, xr_tls_session_t *slot,
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
        xr__ctl_close(c, "out of memory");
        return NULL;
    }
    return c;
}

xr_ctl_t *xr__ctl_dial(const xr_peer_conf_t *peer, const xr_paddr_t *to, xr_ctl_kind_t kind,
                       xr_rp_t *rp)
{
    xr_ctl_t *c = xr__ctl_dial_tls(peer->tls, NULL, NULL, to, kind, rp);
    if (c != NULL)
        c->peer = peer;
    return c;
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
        xr__ctl_link(c, m);
        return;
    }
    if (m->type != XR_MSG_HELLO) {
        xr__ctl_error(c, 0, XR_PERR_PROTOCOL, "expected HELLO or LINK, got %s",
                      xr_proto_type_name(m->type));
        xr__ctl_close(c, "no HELLO");
        return;
    }
    if (m->u.hello.min_version > XR_PROTO_VERSION) {
        xr__ctl_error(c, 0, XR_PERR_VERSION, "this agent speaks version %d only", XR_PROTO_VERSION);
        xr__ctl_close(c, "no common protocol version");
        return;
    }
    if (m->u.hello.role == XR_ROLE_AGENT) {
        for (size_t i = 0; id != NULL && i < xr__ag.conf->npeers && c->peer == NULL; i++)
            if (xr_peer_matches(&xr__ag.conf->peers[i], id))
                c->peer = &xr__ag.conf->peers[i];
        c->kind = XR_KIND_AGENT;
    } else {
        c->app = id != NULL && xr_agent_gen(xr__ag.gen)->policy != NULL
                     ? xr_policy_find(xr_agent_gen(xr__ag.gen)->policy, id)
                     : NULL;
        c->kind = XR_KIND_LIBRARY;
    }
    xr__ctl_keepalive(c->end.io.fd);
    if (c->app == NULL && c->peer == NULL) {
        xr__ag.n.refused++;
        xr_log(XR_LOG_NOTICE, "agent: %s (%s) refused: no %s matches its certificate", c->peer_addr,
               c->who, c->kind == XR_KIND_AGENT ? "peer agent" : "application");
        xr__ctl_error(c, 0, XR_PERR_NOT_AUTHORIZED, "no %s of this agent matches your certificate",
                      c->kind == XR_KIND_AGENT ? "peer" : "application");
        xr__ctl_close(c, "not authorized");
        return;
    }
    xr_msg_t r = {.type = XR_MSG_HELLO_OK};
    r.u.hello_ok.version = XR_PROTO_VERSION;
    r.u.hello_ok.heartbeat_ms = (uint32_t) (xr__ag.conf->lease_time / 3);
    xr_pstr_set(&r.u.hello_ok.software, "xrayd/" XR_VERSION);
    xr__ctl_send(c, &r);
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
        xr__peer_out_frame(c, m);
        return;
    }
    if (c->kind == XR_KIND_LINK_OUT) {
        xr_rp_t *rp = c->rp;
        if (m->type != XR_MSG_LINK_OK || rp == NULL) {
            xr__ctl_close(c, m->type == XR_MSG_ERROR ? m->u.error.message.s
                                                     : "the peer's relay point refused the link");
            return;
        }
        xr__rp_linked(rp, 1, c);
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
            xr__ctl_peer_connect(c, m);
            return;
        }
        if (m->type == XR_MSG_PEER_OPEN) {
            xr__ctl_peer_open(c, m);
            return;
        }
        xr__ctl_error(c, 0, XR_PERR_PROTOCOL, "%s is not a request an agent sends to an agent",
                      xr_proto_type_name(m->type));
        xr__ctl_close(c, "unexpected frame");
        return;
    }
    xr_ctl_idle_arm(c);
    switch (m->type) {
    case XR_MSG_REGISTER: xr_ctl_register(c, m); break;
    case XR_MSG_REFRESH:
        l = xr_leases_find(&xr__ag.leases, m->u.refresh.handle, c);
        if (l == NULL) {
            xr__ctl_error(c, m->u.refresh.id, XR_PERR_NO_SUCH_ADDRESS,
                          "no registration %llu on this connection",
                          (unsigned long long) m->u.refresh.handle);
            break;
        }
        l->expires = xr_wall_ms() + xr__ag.conf->lease_time;
        xr__ag.dirty = 1;
        xr__ag.n.refreshed++;
        r.type = XR_MSG_REFRESHED;
        r.u.refreshed.id = m->u.refresh.id;
        r.u.refreshed.lease_ms = (uint32_t) xr__ag.conf->lease_time;
        xr__ctl_send(c, &r);
        break;
    case XR_MSG_UNREGISTER:
        l = xr_leases_find(&xr__ag.leases, m->u.refresh.handle, c);
        if (l == NULL) {
            xr__ctl_error(c, m->u.refresh.id, XR_PERR_NO_SUCH_ADDRESS,
                          "no registration %llu on this connection",
                          (unsigned long long) m->u.refresh.handle);
            break;
        }
        char oa[80];
        xr_log(XR_LOG_INFO, "agent: %s unregistered %s", c->app->name,
               xr_paddr_str(&l->official, oa, sizeof(oa)));
        xr_leases_release(&xr__ag.leases, l);
        xr__ag.dirty = 1;
        xr__ag.n.unregistered++;
        r.type = XR_MSG_UNREGISTERED;
        r.u.done.id = m->u.refresh.id;
        xr__ctl_send(c, &r);
        break;
    case XR_MSG_CONNECT:
    case XR_MSG_OPEN: xr__ctl_connect(c, m); break;
    case XR_MSG_INCOMING_OK: break; /* the library took it; its link will tell */
    case XR_MSG_ERROR:
        /* a library that cannot take an INCOMING: its relay point expires */
        xr_log(XR_LOG_NOTICE, "agent: %s answered %s: %s", c->who,
               xr_proto_err_name(m->u.error.code), m->u.error.message.s);
        break;
    default:
        xr__ctl_error(c, 0, XR_PERR_PROTOCOL, "%s is not a request a library sends to its agent",
                      xr_proto_type_name(m->type));
        xr__ctl_close(c, "unexpected frame");
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
        if (!xr__ctl_room(c)) {
            if (!c->out_full)
                xr__ctl_close(c, "write failed");
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
            xr__ag.n.protocol_errors++;
            xr__ctl_error(c, 0, XR_PERR_PROTOCOL, "invalid frame: bad %s", why);
            xr__ctl_flush(c);
            xr__ctl_close(c, "protocol error");
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
            xr__ctl_close(c, strerror(err));
            return;
        }
        c->state = XR_CTL_HANDSHAKE;
        /* The server answers: it is reachable, and gets the whole TLS
         * timeout (its handshakes queue behind others' in a burst). */
        if (c->kind == XR_KIND_LINK_OUT && c->rp != NULL && c->rp->fallback)
            uv_timer_start(&c->timer, xr__ctl_timeout, (uint64_t) xr__ag.conf->handshake_timeout,
                           0);
    }
    if (c->state == XR_CTL_HANDSHAKE) {
        int rc = xr_tls_end_handshake(&c->end);
        if (rc == XR_AGAIN)
            return;
        if (rc != XR_OK) {
            xr_log(XR_LOG_NOTICE, "agent: TLS handshake with %s failed: %s", c->peer_addr,
                   xr_tls_end_why(&c->end));
            xr__ctl_close(c, "TLS handshake failed");
            return;
        }
        if (xr_tls_end_resumed(&c->end))
            xr__ag.n.resumed++;
        else
            xr__ag.n.full++;
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
            xr__peer_out_ready(c);
        } else if (c->kind == XR_KIND_LINK_OUT && c->early) {
            /* TLS is up before the peer's RELAY_READY: LINK waits for its
             * token (xr__peer_out_frame). */
        } else if (c->kind == XR_KIND_LINK_OUT) {
            if (c->peer == NULL && (c->rp == NULL || strcmp(c->key, c->rp->key[1]) != 0)) {
                /* A server we dialed: it must be the registered one. */
                xr_log(XR_LOG_NOTICE,
                       "agent: server %s presented %s, not the certificate that registered",
                       c->peer_addr, c->who);
                xr__ctl_close(c, "not the registered server's certificate");
                return;
            }
            xr_msg_t lk = {.type = XR_MSG_LINK};
            memcpy(lk.u.link.token, c->in, XR_PROTO_TOKEN);
            memset(c->in, 0, XR_PROTO_TOKEN);
            xr__ctl_send(c, &lk);
        } else if (id == NULL) {
            xr__ctl_close(c, "no verified certificate");
            return;
        }
    }
    if (c->out_full && c->end.writable) {
        c->out_full = 0;
        if (c->kind == XR_KIND_PEER_OUT && c->state == XR_CTL_READY)
            xr__peer_send_asks(c); /* the requests that waited for room */
        if (!c->out_full && !c->closing)
            xr_ctl_input(c); /* the frames that waited for room */
        if (c->closing || c->state == XR_CTL_LINKED)
            return;
    }
    while (!c->closing && c->state != XR_CTL_LINKED && c->end.readable && !c->out_full) {
        if (c->inlen == sizeof(c->in)) {
            xr__ctl_close(c, "input buffer full");
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
            xr__ctl_close(c, "closed by the peer");
            return;
        }
        if (errno == EAGAIN) {
            c->end.readable = 0;
            break;
        }
        const char *why = c->end.ops->why ? c->end.ops->why(&c->end) : NULL;
        xr__ctl_close(c, why ? why : strerror(errno));
        return;
    }
    if (!c->closing && c->state != XR_CTL_LINKED && xr__ctl_flush(c) != XR_OK)
        xr__ctl_close(c, "write failed");
    else if (!c->closing && c->state == XR_CTL_LINKED && c->outlen > 0)
        xr__ctl_flush(c);
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
            xr__ctl_close(c, "link closed before its relay point was complete");
        return;
    }
    xr_ctl_run(c);
}

void xr__agent_accept(xr_io_t *io, uint32_t events)
{
    /* Edge-triggered: take every queued connection, or the rest waits for
     * the next one to arrive. */
    while (xr__ag.running) {
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
        if (xr_tls_end_start(&c->end, xr__ag.conf->tls) != XR_OK) {
            xr__ctl_close(c, "out of memory");
            continue;
        }
        c->end.readable = c->end.writable = 1;
        xr_ctl_run(c);
    }
}
