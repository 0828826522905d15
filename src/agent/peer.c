/*
 * peer.c: connection setup between agents (XRAY §5.2, see agent_int.h).
 *
 * The client agent takes a library's CONNECT, answers it directly within
 * its own network, or asks the peer agent that serves the destination
 * for a relay point on the standing session to that agent (one TLS
 * session for many connections).  The server agent answers PEER_CONNECT
 * with a relay point and reaches the server for it: by dialing it, or by
 * asking its library to connect out.
 */
#include "agent/agent_int.h"
#include "core/log.h"

#include <sodium.h>
#include <stdio.h>
#include <string.h>

/* ---- connection setup (XRAY §5.2) ------------------------------------------- */

static const xr_peer_conf_t *xr_peer_for(const xr_paddr_t *dst)
{
    for (size_t i = 0; i < xr__ag.conf->npeers; i++)
        if (xr_net_rules_cover_addr(xr__ag.conf->peers[i].networks, xr__ag.conf->peers[i].nnetworks,
                                    dst))
            return &xr__ag.conf->peers[i];
    return NULL;
}

/* ---- the standing sessions to peer agents ------------------------------------ */

static void xr_peer_send_connect(xr_ctl_t *s, xr_rp_t *rp)
{
    xr_msg_t pc = {.type = rp->open ? XR_MSG_PEER_OPEN : XR_MSG_PEER_CONNECT};
    pc.u.peer_connect.id = rp->via_id;
    pc.u.peer_connect.proto = rp->proto;
    pc.u.peer_connect.dst = rp->dst;
    pc.u.peer_connect.src = rp->src;
    sodium_hex2bin(pc.u.peer_connect.client_key, sizeof(pc.u.peer_connect.client_key), rp->key[0],
                   strlen(rp->key[0]), NULL, NULL, NULL);
    xr_pstr_set(&pc.u.peer_connect.client_subject, rp->subject);
    xr__ctl_send(s, &pc);
    rp->asked = 1;
}

/* Ask rp's peer agent for the server's side (step 3) on the standing
 * session to it, dialing one when there is none: with many connections
 * the agents talk over one TLS session, and a connection costs the two
 * agents no handshake of its own but its link.  XR_OK, or XR_ERROR when
 * the peer cannot be dialed. */
int xr__peer_ask(xr_rp_t *rp)
{
    size_t i = (size_t) (rp->peer - xr__ag.conf->peers);
    xr_ctl_t *s = xr__ag.psess[i];
    rp->retry = s != NULL && s->state == XR_CTL_READY;
    if (s == NULL) {
        xr_paddr_t to;
        xr_paddr_from_sockaddr(&to, &rp->peer->agent.sa);
        s = xr__ctl_dial(rp->peer, &to, XR_KIND_PEER_OUT, NULL);
        if (s == NULL)
            return XR_ERROR;
        xr__ctl_keepalive(s->end.io.fd);
        xr__ag.psess[i] = s;
        xr__ag.n.peer_sessions++;
    }
    rp->via = s;
    if (++xr__ag.next_req == 0)
        xr__ag.next_req = 1;
    rp->via_id = xr__ag.next_req;
    rp->asked = 0;
    if (s->state == XR_CTL_READY && !s->out_full)
        xr__peer_send_asks(s);
    return XR_OK;
}

/* Send the requests waiting on session s while its buffer has room; the
 * rest go once EPOLLOUT drains it, so a burst of connections is paced by
 * the peer agent's reading, never refused for it.  A write failure shows
 * as an error edge on s, which closes it and fails or re-asks what waits
 * on it. */
void xr__peer_send_asks(xr_ctl_t *s)
{
    for (xr_list_t *q = xr__ag.rps.next; q != &xr__ag.rps && !s->closing; q = q->next) {
        xr_rp_t *rp = xr_container_of(q, xr_rp_t, link);
        if (rp->via != s || rp->asked)
            continue;
        if (!xr__ctl_room(s))
            return;
        xr_peer_send_connect(s, rp);
    }
    xr__ctl_flush(s);
}

/* Client agent: a library asks for a connection (steps 2-3, 5). */
void xr__ctl_connect(xr_ctl_t *c, const xr_msg_t *m)
{
    char d[80], why[300];
    uint32_t id = m->u.connect.id;
    xr_paddr_str(&m->u.connect.dst, d, sizeof(d));
    xr__ag.n.connects++;
    if (xr_policy_outbound(c->app, &m->u.connect.dst, xr__ag.self, xr__ag.nself, why,
                           sizeof(why)) != XR_OK) {
        xr__ag.n.refused++;
        xr_log(XR_LOG_NOTICE, "agent: CONNECT %s by %s refused: %s", d, c->who, why);
        xr__ctl_error(c, id, XR_PERR_NOT_AUTHORIZED, "%s", why);
        return;
    }
    /* Within the network: the server's local address, no relay. */
    xr_lease_t *l = xr_leases_by_official(&xr__ag.leases, m->u.connect.proto, &m->u.connect.dst);
    if (l != NULL) {
        char la[80];
        xr__ag.n.direct++;
        xr_log(XR_LOG_INFO, "agent: CONNECT %s/%s by %s: same network, direct to %s", d,
               m->u.connect.proto == XR_PROTO_UDP ? "udp" : "tcp", c->who,
               xr_paddr_str(&l->local, la, sizeof(la)));
        xr_msg_t r = {.type = XR_MSG_CONNECT_OK};
        r.u.connect_ok.id = id;
        r.u.connect_ok.mode = XR_CONNECT_DIRECT;
        r.u.connect_ok.addr = l->direct.family ? l->direct : l->local;
        xr__ctl_send(c, &r);
        return;
    }
    const xr_peer_conf_t *peer = xr_peer_for(&m->u.connect.dst);
    if (m->type == XR_MSG_OPEN && c->app->open) {
        xr__open_connect(c, m, peer);
        return;
    }
    if (peer == NULL) {
        xr_log(XR_LOG_NOTICE, "agent: CONNECT %s by %s: no peer agent serves it", d, c->who);
        xr__ctl_error(c, id, XR_PERR_UNREACHABLE, "no agent is known for %s", d);
        return;
    }
    if (xr__rp_count(c->app) >= (size_t) c->app->max_relays) {
        xr__ag.n.refused++;
        xr_log(XR_LOG_NOTICE, "agent: CONNECT %s by %s refused: max_relays %lld reached", d, c->who,
               (long long) c->app->max_relays);
        xr__ctl_error(c, id, XR_PERR_OVER_LIMIT, "max_relays (%lld) reached",
                      (long long) c->app->max_relays);
        return;
    }
    char what[512];
    snprintf(what, sizeof(what), "%s (%s) to %s%s via %s", c->app->name, c->who, d,
             m->u.connect.proto == XR_PROTO_UDP ? "/udp" : "", peer->agent.text);
    xr_rp_t *rp = xr__rp_new(c->app, what);
    if (rp == NULL) {
        xr__ctl_error(c, id, XR_PERR_INTERNAL, "out of memory");
        return;
    }
    snprintf(rp->key[0], sizeof(rp->key[0]), "%s", c->key);
    rp->dial_side = 1;
    rp->dst = m->u.connect.dst;
    rp->proto = m->u.connect.proto;
    rp->peer = peer;
    xr_paddr_from_sockaddr(&rp->src, &c->remote);
    snprintf(rp->subject, sizeof(rp->subject), "%s", c->who);
    if (xr__peer_ask(rp) != XR_OK) {
        rp->requester = c;
        rp->req_id = id;
        xr__rp_fail(rp, XR_PERR_UNREACHABLE, "cannot connect to the peer agent");
        return;
    }
    /* The link to the peer's relay point (at its agent address, as a
     * rule) comes up while the peer answers; LINK waits for the token. */
    xr_paddr_t to;
    xr_paddr_from_sockaddr(&to, &peer->agent.sa);
    xr_ctl_t *early = xr__ctl_dial(peer, &to, XR_KIND_LINK_OUT, rp);
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
    sodium_hex2bin(r.u.connect_ok.peer_key, sizeof(r.u.connect_ok.peer_key), xr__ag.own_key,
                   strlen(xr__ag.own_key), NULL, NULL, NULL);
    xr__ctl_send(c, &r);
}

/* Client agent: the standing session to a peer agent is up (TLS done). */
void xr__peer_out_ready(xr_ctl_t *c)
{
    xr_msg_t h = {.type = XR_MSG_HELLO};
    h.u.hello.min_version = h.u.hello.max_version = XR_PROTO_VERSION;
    h.u.hello.role = XR_ROLE_AGENT;
    xr_pstr_set(&h.u.hello.software, "xrayd/" XR_VERSION);
    xr__ctl_send(c, &h);
    c->state = XR_CTL_FIRST; /* waiting for HELLO_OK */
}

static xr_rp_t *xr_rp_asked(const xr_ctl_t *via, uint32_t id)
{
    for (xr_list_t *q = xr__ag.rps.next; q != &xr__ag.rps; q = q->next) {
        xr_rp_t *rp = xr_container_of(q, xr_rp_t, link);
        if (rp->via == via && rp->via_id == id && rp->asked)
            return rp;
    }
    return NULL;
}

void xr__peer_out_frame(xr_ctl_t *c, const xr_msg_t *m)
{
    char why[512];
    if (m->type == XR_MSG_ERROR && (m->u.error.id == 0 || c->state == XR_CTL_FIRST)) {
        /* The session itself was refused (HELLO, or a frame it found
         * invalid): what waits on it fails with the peer's reason. */
        snprintf(why, sizeof(why), "%s: %s", xr_proto_err_name(m->u.error.code),
                 m->u.error.message.s);
        xr_log(XR_LOG_NOTICE, "agent: peer agent %s refused: %s", c->peer_addr, why);
        c->fail_code = m->u.error.code;
        xr__ctl_close(c, why);
        return;
    }
    if (c->state == XR_CTL_FIRST) {
        if (m->type != XR_MSG_HELLO_OK) {
            c->fail_code = XR_PERR_PROTOCOL;
            xr__ctl_close(c, "the peer agent did not answer HELLO");
            return;
        }
        c->state = XR_CTL_READY;
        uv_timer_stop(&c->timer);
        xr__peer_send_asks(c);
        return;
    }
    if (m->type != XR_MSG_RELAY_READY && m->type != XR_MSG_ERROR && m->type != XR_MSG_OPENED) {
        xr__ctl_error(c, 0, XR_PERR_PROTOCOL, "%s is not an answer to PEER_CONNECT",
                      xr_proto_type_name(m->type));
        c->fail_code = XR_PERR_PROTOCOL;
        xr__ctl_close(c, "unexpected frame from the peer agent");
        return;
    }
    uint32_t id = m->type == XR_MSG_ERROR    ? m->u.error.id
                  : m->type == XR_MSG_OPENED ? m->u.opened.id
                                             : m->u.relay_ready.id;
    xr_rp_t *rp = xr_rp_asked(c, id);
    if (rp == NULL)
        return; /* it expired meanwhile; so will the peer's relay point */
    rp->via = NULL;
    if (m->type == XR_MSG_ERROR) {
        snprintf(why, sizeof(why), "peer agent %s: %s: %s", rp->peer->agent.text,
                 xr_proto_err_name(m->u.error.code), m->u.error.message.s);
        xr__rp_fail(rp, m->u.error.code, why);
        return;
    }
    if ((m->type == XR_MSG_OPENED) != (rp->open != 0)) {
        snprintf(why, sizeof(why), "peer agent %s answered %s to %s", rp->peer->agent.text,
                 xr_proto_type_name(m->type), rp->open ? "PEER_OPEN" : "PEER_CONNECT");
        xr__rp_fail(rp, XR_PERR_PROTOCOL, why);
        return;
    }
    if (m->type == XR_MSG_OPENED) {
        xr__open_answered(rp, m);
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
        xr__ctl_close(link, "the peer's relay point is elsewhere");
        link = NULL;
    }
    if (link == NULL) {
        link = xr__ctl_dial(rp->peer, &m->u.relay_ready.addr, XR_KIND_LINK_OUT, rp);
        if (link == NULL) {
            xr__rp_fail(rp, XR_PERR_UNREACHABLE, "cannot connect to the peer's relay point");
            return;
        }
        link->side = 1;
        rp->side[1] = link; /* the client already has CONNECT_OK (xr__ctl_connect) */
    }
    memcpy(link->in, m->u.relay_ready.token, XR_PROTO_TOKEN); /* kept until TLS is up */
    if (link->early) {
        link->early = 0;
        if (link->state == XR_CTL_FIRST) { /* its TLS is already up */
            xr_msg_t lk = {.type = XR_MSG_LINK};
            memcpy(lk.u.link.token, link->in, XR_PROTO_TOKEN);
            memset(link->in, 0, XR_PROTO_TOKEN);
            xr__ctl_send(link, &lk);
            xr__ctl_flush(link);
        }
    }
}

/* ---- the server's side (steps 4 and 6) --------------------------------------- */

/* The kept session for dialing the server at addr with key, or a slot
 * to keep one in (the least recently used). */
static xr_tls_session_t *xr_srv_session(const xr_paddr_t *addr, const char *key)
{
    xr_srv_session_t *old = &xr__ag.srvs[0];
    for (size_t i = 0; i < XR_SRV_SESSIONS; i++) {
        xr_srv_session_t *e = &xr__ag.srvs[i];
        if (e->used != 0 && memcmp(&e->addr, addr, sizeof(*addr)) == 0 &&
            strcmp(e->key, key) == 0) {
            e->used = ++xr__ag.srv_clock;
            return &e->s;
        }
        if (e->used < old->used)
            old = e;
    }
    xr_tls_session_free(&old->s);
    old->addr = *addr;
    snprintf(old->key, sizeof(old->key), "%s", key);
    old->used = ++xr__ag.srv_clock;
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
    xr__ctl_send(rp->srv, &in);
    xr__ctl_flush(rp->srv);
    if (mode == XR_INCOMING_CONNECT_OUT)
        xr__ag.n.connect_out++;
}

/* The server could not be dialed (or refused our link): ask its library
 * to connect out to the relay point instead (the GCB technique). */
void xr__rp_connect_out(xr_rp_t *rp, const char *why)
{
    rp->fallback = 0;
    rp->dial_side = -1;
    rp->linked[1] = 0;
    if (rp->srv == NULL) {
        xr__rp_fail(rp, XR_PERR_UNREACHABLE, "the server's control session is gone");
        return;
    }
    xr_log(XR_LOG_INFO,
           "agent: relay point %llu: cannot dial the server (%s); asking it to connect out",
           (unsigned long long) rp->id, why);
    xr_rp_incoming(rp, XR_INCOMING_CONNECT_OUT);
}

xr_lease_t *xr__peer_server(xr_ctl_t *c, const xr_msg_t *m)
{
    char d[80];
    xr_paddr_str(&m->u.peer_connect.dst, d, sizeof(d));
    xr_lease_t *l =
        xr_leases_by_official(&xr__ag.leases, m->u.peer_connect.proto, &m->u.peer_connect.dst);
    if (l != NULL && l->owner != NULL)
        return l;
    xr_log(XR_LOG_NOTICE, "agent: %s %s from %s: %s", xr_proto_type_name(m->type), d, c->who,
           l == NULL ? "no server holds it" : "its server is not connected");
    xr__ctl_error(c, m->u.peer_connect.id,
                  l == NULL ? XR_PERR_NO_SUCH_ADDRESS : XR_PERR_UNREACHABLE,
                  l == NULL ? "no server holds %s" : "the server of %s is not connected", d);
    return NULL;
}

/* Server agent: another agent asks for a connection to one of our servers
 * (step 4). */
void xr__ctl_peer_connect(xr_ctl_t *c, const xr_msg_t *m)
{
    char d[80];
    uint32_t id = m->u.peer_connect.id;
    xr_paddr_str(&m->u.peer_connect.dst, d, sizeof(d));
    xr_lease_t *l = xr__peer_server(c, m);
    if (l == NULL)
        return;
    xr_ctl_t *srv = l->owner;
    const xr_app_conf_t *app = srv->app;
    if (app == NULL || !app->inbound) {
        xr__ag.n.refused++;
        xr_log(XR_LOG_NOTICE, "agent: PEER_CONNECT %s from %s refused: application has inbound off",
               d, c->who);
        xr__ctl_error(c, id, XR_PERR_NOT_AUTHORIZED, "the server may not accept connections");
        return;
    }
    if (xr__rp_count(app) >= (size_t) app->max_relays) {
        xr__ag.n.refused++;
        xr_log(XR_LOG_NOTICE, "agent: PEER_CONNECT %s from %s refused: max_relays %lld reached", d,
               c->who, (long long) app->max_relays);
        xr__ctl_error(c, id, XR_PERR_OVER_LIMIT, "max_relays (%lld) reached",
                      (long long) app->max_relays);
        return;
    }
    char what[512];
    snprintf(what, sizeof(what), "%s via %s to %s%s (%s)", m->u.peer_connect.client_subject.s,
             c->who, d, m->u.peer_connect.proto == XR_PROTO_UDP ? "/udp" : "", app->name);
    xr_rp_t *rp = xr__rp_new(app, what);
    if (rp == NULL) {
        xr__ctl_error(c, id, XR_PERR_INTERNAL, "out of memory");
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
        m->u.peer_connect.proto == XR_PROTO_UDP ? XR_REACH_CONNECT_OUT : xr__ag.conf->incoming;
    xr_msg_t r = {.type = XR_MSG_RELAY_READY};
    r.u.relay_ready.id = id;
    xr_paddr_from_sockaddr(&r.u.relay_ready.addr, &c->local);
    memcpy(r.u.relay_ready.token, rp->token, XR_PROTO_TOKEN);
    if (reach != XR_REACH_INBOUND) {
        /* The client's agent links while we reach the server: answer first
         * (a server we cannot dial still has the fallback). */
        xr__ctl_send(c, &r);
        xr__ctl_flush(c);
    }
    xr_ctl_t *link = NULL;
    if (reach != XR_REACH_CONNECT_OUT) {
        /* Step 6 from this side: dial the server's local address, from the
         * address its library reaches us at, and tell the library which
         * token the link will present (mode 1). */
        xr_rp_incoming(rp, XR_INCOMING_INBOUND);
        link = xr__ctl_dial_tls(xr__ag.conf->dial_tls, xr_srv_session(&l->local, l->key),
                                &srv->local, &l->local, XR_KIND_LINK_OUT, rp);
        if (link != NULL) {
            xr__ag.n.inbound++;
            link->side = 1;
            memcpy(link->in, rp->token, XR_PROTO_TOKEN);
            rp->dial_side = 1;
            rp->side[1] = link;
            if (reach == XR_REACH_AUTO) {
                rp->fallback = 1;
                /* A server that drops our SYN must not cost the client the
                 * whole handshake timeout before the fallback. */
                uv_timer_start(&link->timer, xr__ctl_timeout,
                               (uint64_t) XR_MIN(xr__ag.conf->handshake_timeout, 1000), 0);
            }
        }
    }
    if (link == NULL && reach == XR_REACH_INBOUND) {
        xr__rp_fail(rp, XR_PERR_UNREACHABLE, "cannot dial the server");
        xr__ctl_error(c, id, XR_PERR_UNREACHABLE, "the server cannot be reached");
        return;
    }
    if (link == NULL)
        xr_rp_incoming(rp, XR_INCOMING_CONNECT_OUT);
    if (reach == XR_REACH_INBOUND)
        xr__ctl_send(c, &r);
    xr_log(XR_LOG_INFO, "agent: relay point %llu for %s (%s)", (unsigned long long) rp->id, what,
           link != NULL ? "dialing the server" : "the server connects out");
}
