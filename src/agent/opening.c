/*
 * opening.c: traversal `open` (CODO §4.2-4.3) - instead of relaying a
 * connection, the agents on the two firewall hosts let it through.
 *
 *   1  the client's library sends OPEN: the server's official address S1
 *      and its socket's own port (C1);
 *   2  the client agent reserves a public port C2 for it (SNAT) when the
 *      client is in a private network, and asks the server's agent with
 *      PEER_OPEN (C2 -> S1) on the standing session;
 *   3  the server agent opens C2 -> S1 in its firewall with a DNAT binding
 *      to the server's local address S2, and answers OPENED with how long
 *      its firewall keeps an idle connection;
 *   4  the client agent opens C1 -> S1 with the SNAT binding to C2, and
 *      answers OPENED with the shorter of the two idle times, which the
 *      client's heartbeats stay within;
 *   5  the client connects to S1 directly;
 *   6  the openings expire by themselves (core/firewall.h), while the
 *      connection lives on in the firewalls' connection tracking.
 *
 * Without a peer agent for S1 (a public server), step 4 alone runs.
 */
#include "agent/agent_int.h"
#include "agent/lease.h"
#include "core/admin.h"
#include "core/log.h"
#include "relay/relay.h"

#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define XR_OPENINGS_MAX 4096

static void xr_open_str(const xr_fw_open_t *o, char *buf, size_t size)
{
    char s[80], d[80], n[80];
    int len = snprintf(buf, size, "%s %s -> %s", o->proto == XR_PROTO_UDP ? "udp" : "tcp",
                       xr_paddr_str(&o->src, s, sizeof(s)), xr_paddr_str(&o->dst, d, sizeof(d)));
    if (o->nat != XR_FW_NAT_NONE && len > 0 && (size_t) len < size)
        snprintf(buf + len, size - (size_t) len, " (%s %s)", o->nat == XR_FW_NAT_DNAT ? "to" : "as",
                 xr_paddr_str(&o->nat_addr, n, sizeof(n)));
}

/* Forget openings the firewall has expired. */
static void xr_open_prune(int64_t now)
{
    size_t k = 0;
    for (size_t i = 0; i < xr__ag.nopenings; i++)
        if (xr__ag.openings[i].expires > now)
            xr__ag.openings[k++] = xr__ag.openings[i];
    xr__ag.nopenings = k;
}

/* Open o in this host's firewall for app's who: XR_OK, or XR_ERROR with
 * why (logged). */
static int xr_open_make(const xr_fw_open_t *o, const char *app, const char *who, char *why,
                        size_t whylen)
{
    const xr_firewall_t *fw = xr_firewall();
    char t[300];
    xr_open_str(o, t, sizeof(t));
    if (fw == NULL) {
        snprintf(why, whylen, "this agent's firewall is not running");
    } else if (fw->open(o, fw->opening_timeout(), why, whylen) == XR_OK) {
        int64_t now = xr_wall_ms();
        xr_open_prune(now);
        if (xr__ag.nopenings == xr__ag.capopenings && xr__ag.capopenings < XR_OPENINGS_MAX) {
            size_t cap = xr__ag.capopenings ? xr__ag.capopenings * 2 : 64;
            xr_opening_t *n = realloc(xr__ag.openings, cap * sizeof(*n));
            if (n != NULL) {
                xr__ag.openings = n;
                xr__ag.capopenings = cap;
            }
        }
        if (xr__ag.nopenings == xr__ag.capopenings && xr__ag.nopenings > 0) {
            /* full: the oldest record goes (its opening is in the firewall) */
            memmove(xr__ag.openings, xr__ag.openings + 1,
                    (xr__ag.nopenings - 1) * sizeof(*xr__ag.openings));
            xr__ag.nopenings--;
        }
        if (xr__ag.nopenings < xr__ag.capopenings) {
            xr_opening_t *r = &xr__ag.openings[xr__ag.nopenings++];
            r->o = *o;
            snprintf(r->app, sizeof(r->app), "%s", app);
            snprintf(r->who, sizeof(r->who), "%s", who);
            r->created = now;
            r->expires = now + fw->opening_timeout();
        }
        xr__ag.n.opened++;
        xr_log(XR_LOG_INFO, "agent: opened %s in %s for %s (%s), for %lld ms", t, fw->where, app,
               who, (long long) fw->opening_timeout());
        return XR_OK;
    }
    xr__ag.n.open_failed++;
    xr_log(XR_LOG_ERR, "agent: cannot open %s for %s (%s): %s", t, app, who, why);
    return XR_ERROR;
}

/* The next port of open_pool, in turn: a port comes round again only
 * after every other one did, long after a connection that used it for the
 * same server has ended (the pool's size says how long). */
static int xr_open_reserve(xr_paddr_t *out)
{
    const xr_agent_conf_t *a = xr__ag.conf;
    size_t total = 0;
    for (size_t i = 0; i < a->nopen_pool; i++)
        total += (size_t) (a->open_pool[i].hi - a->open_pool[i].lo) + 1;
    if (total == 0)
        return XR_ERROR;
    size_t k = xr__ag.open_cursor++ % total;
    for (size_t i = 0; i < a->nopen_pool; i++) {
        const xr_pool_range_t *r = &a->open_pool[i];
        size_t n = (size_t) (r->hi - r->lo) + 1;
        if (k < n) {
            memset(out, 0, sizeof(*out));
            out->family = r->family;
            memcpy(out->addr, r->addr, 16);
            out->port = (uint16_t) (r->lo + k);
            return XR_OK;
        }
        k -= n;
    }
    return XR_ERROR;
}

static void xr_open_answer(xr_ctl_t *c, uint32_t id, const xr_paddr_t *addr, int64_t state_ms)
{
    xr_msg_t r = {.type = XR_MSG_OPENED};
    r.u.opened.id = id;
    r.u.opened.addr = *addr;
    r.u.opened.state_ms = (uint32_t) XR_MAX(XR_MIN(state_ms, (int64_t) UINT32_MAX), 1000);
    xr__ctl_send(c, &r);
    xr__ctl_flush(c);
}

/* Step 4, at the client agent: our side of the opening for c1 -> s1, as
 * c2 when that is not c1. */
static void xr_open_ours(xr_fw_open_t *o, uint8_t proto, const xr_paddr_t *c1, const xr_paddr_t *c2,
                         const xr_paddr_t *s1)
{
    memset(o, 0, sizeof(*o));
    o->proto = proto;
    o->src = *c1;
    o->dst = *s1;
    if (memcmp(c1, c2, sizeof(*c1)) != 0) {
        o->nat = XR_FW_NAT_SNAT;
        o->nat_addr = *c2;
    }
}

void xr__open_connect(xr_ctl_t *c, const xr_msg_t *m, const xr_peer_conf_t *peer)
{
    uint32_t id = m->u.connect.id;
    char d[80], why[300];
    xr_paddr_str(&m->u.connect.dst, d, sizeof(d));
    /* An opening is for the client's own host: its socket's port at the
     * address its library reaches us from (a library cannot open for
     * another host). */
    xr_paddr_t c1, seen;
    xr_paddr_from_sockaddr(&seen, &c->remote);
    static const uint8_t zero[16];
    c1 = m->u.connect.src;
    if (c1.family == 4 && memcmp(c1.addr, zero, 16) == 0) {
        memcpy(c1.addr, seen.addr, 16);
        c1.family = seen.family;
    }
    if (c1.family != seen.family || memcmp(c1.addr, seen.addr, 16) != 0) {
        char s[80];
        xr__ag.n.refused++;
        xr_log(XR_LOG_NOTICE, "agent: OPEN %s by %s refused: %s is not its own address", d, c->who,
               xr_paddr_str(&c1, s, sizeof(s)));
        xr__ctl_error(c, id, XR_PERR_NOT_AUTHORIZED, "an opening is for the client's own address");
        return;
    }
    const xr_firewall_t *fw = xr_firewall();
    if (fw == NULL) {
        xr__ctl_error(c, id, XR_PERR_INTERNAL, "the agent's firewall is not running");
        return;
    }
    if (c1.family != 4 || m->u.connect.dst.family != 4) {
        xr__ctl_error(c, id, XR_PERR_UNREACHABLE, "openings are IPv4 only");
        return;
    }
    xr_paddr_t c2 = c1;
    if (xr_net_rules_cover_addr(xr__ag.conf->networks, xr__ag.conf->nnetworks, &c1) &&
        xr_open_reserve(&c2) != XR_OK) {
        xr__ctl_error(c, id, XR_PERR_INTERNAL, "the agent has no open_pool");
        return;
    }
    xr_fw_open_t o;
    xr_open_ours(&o, m->u.connect.proto, &c1, &c2, &m->u.connect.dst);
    xr_rp_t *rp = NULL;
    if (peer != NULL) {
        /* The server's agent first (step 2), our side while it works. */
        char what[512];
        snprintf(what, sizeof(what), "%s (%s) opening to %s%s via %s", c->app->name, c->who, d,
                 m->u.connect.proto == XR_PROTO_UDP ? "/udp" : "", peer->agent.text);
        rp = xr__rp_new(c->app, what);
        if (rp == NULL) {
            xr__ctl_error(c, id, XR_PERR_INTERNAL, "out of memory");
            return;
        }
        rp->open_src = c1;
        snprintf(rp->key[0], sizeof(rp->key[0]), "%s", c->key);
        rp->dst = m->u.connect.dst;
        rp->proto = m->u.connect.proto;
        rp->peer = peer;
        rp->src = c2;
        rp->requester = c;
        rp->req_id = id;
        rp->open = 1;
        snprintf(rp->subject, sizeof(rp->subject), "%s", c->who);
        if (xr__peer_ask(rp) != XR_OK) {
            rp->open = 0; /* nothing of ours to take back yet */
            xr__rp_fail(rp, XR_PERR_UNREACHABLE, "cannot connect to the peer agent");
            return;
        }
    }
    if (xr_open_make(&o, c->app->name, c->who, why, sizeof(why)) != XR_OK) {
        if (rp != NULL) {
            rp->open = 0; /* nothing of ours to take back */
            xr__rp_fail(rp, XR_PERR_INTERNAL, why);
        } else {
            xr__ctl_error(c, id, XR_PERR_INTERNAL, "the client's firewall: %s", why);
        }
        return;
    }
    if (rp == NULL) /* no agent on the far side: ours was the only one */
        xr_open_answer(c, id, &m->u.connect.dst, fw->state_timeout(o.proto));
}

void xr__open_answered(xr_rp_t *rp, const xr_msg_t *m)
{
    if (rp->requester != NULL)
        xr_open_answer(
            rp->requester, rp->req_id, &rp->dst,
            XR_MIN(xr_firewall()->state_timeout(rp->proto), (int64_t) m->u.opened.state_ms));
    rp->open = 0; /* its opening stays: the client connects now */
    xr__rp_end(rp);
}

void xr__open_abandon(xr_rp_t *rp)
{
    const xr_firewall_t *fw = xr_firewall();
    char why[300];
    xr_fw_open_t o;
    rp->open = 0;
    if (fw == NULL)
        return;
    xr_open_ours(&o, rp->proto, &rp->open_src, &rp->src, &rp->dst);
    if (fw->remove(&o, why, sizeof(why)) != XR_OK)
        xr_log(XR_LOG_NOTICE, "agent: cannot take back an opening the peer did not match: %s", why);
}

void xr__ctl_peer_open(xr_ctl_t *c, const xr_msg_t *m)
{
    char d[80], why[300];
    uint32_t id = m->u.peer_connect.id;
    xr_paddr_str(&m->u.peer_connect.dst, d, sizeof(d));
    xr_lease_t *l = xr__peer_server(c, m);
    if (l == NULL)
        return;
    const xr_app_conf_t *app = ((xr_ctl_t *) l->owner)->app;
    if (app == NULL || !app->inbound || !app->open) {
        xr__ag.n.refused++;
        const char *r = app == NULL || !app->inbound
                            ? "the server may not accept connections"
                            : "the server's application takes relayed connections only";
        xr_log(XR_LOG_NOTICE, "agent: PEER_OPEN %s from %s refused: %s", d, c->who, r);
        xr__ctl_error(c, id, XR_PERR_NOT_AUTHORIZED, "%s", r);
        return;
    }
    xr_fw_open_t o = {.proto = m->u.peer_connect.proto,
                      .src = m->u.peer_connect.src,
                      .dst = m->u.peer_connect.dst};
    if (l->leased) { /* to the server's own socket: nothing of ours in the path */
        o.nat = XR_FW_NAT_DNAT;
        o.nat_addr = l->direct.family ? l->direct : l->local;
    }
    char who[440];
    snprintf(who, sizeof(who), "%s via %s", m->u.peer_connect.client_subject.s, c->who);
    if (xr_open_make(&o, app->name, who, why, sizeof(why)) != XR_OK) {
        xr__ctl_error(c, id, XR_PERR_INTERNAL, "the server's firewall: %s", why);
        return;
    }
    xr_open_answer(c, id, &m->u.peer_connect.dst, xr_firewall()->state_timeout(o.proto));
}

void xr__open_status(xr_sb_t *b, int json)
{
    const xr_firewall_t *fw = xr_firewall();
    int64_t now = xr_wall_ms();
    xr_open_prune(now);
    static xr_fw_entry_t live[XR_OPENINGS_MAX];
    char err[300];
    int nlive = fw != NULL ? fw->list(live, XR_OPENINGS_MAX, err, sizeof(err)) : 0;
    if (json)
        xr_sb_add(b, ",\"firewall\":");
    if (json && fw == NULL)
        xr_sb_add(b, "null");
    else if (json)
        xr_sb_json(b, fw->where);
    if (json)
        xr_sb_add(b, ",\"openings\":[");
    else if (fw != NULL)
        xr_sb_add(b, "openings (%s): %zu\n", fw->where, xr__ag.nopenings);
    for (size_t i = 0; i < xr__ag.nopenings; i++) {
        const xr_opening_t *r = &xr__ag.openings[i];
        /* The filter sees a DNAT'd packet with its new destination. */
        const xr_paddr_t *fd = r->o.nat == XR_FW_NAT_DNAT ? &r->o.nat_addr : &r->o.dst;
        const xr_fw_entry_t *e = NULL;
        for (int k = 0; k < nlive && e == NULL; k++)
            if (live[k].proto == r->o.proto &&
                memcmp(&live[k].src, &r->o.src, sizeof(r->o.src)) == 0 &&
                memcmp(&live[k].dst, fd, sizeof(*fd)) == 0)
                e = &live[k];
        char t[300];
        xr_open_str(&r->o, t, sizeof(t));
        if (json) {
            xr_sb_add(b, "%s{\"opening\":", i ? "," : "");
            xr_sb_json(b, t);
            xr_sb_add(b, ",\"application\":");
            xr_sb_json(b, r->app);
            xr_sb_add(b, ",\"identity\":");
            xr_sb_json(b, r->who);
            xr_sb_add(b,
                      ",\"created_ms_ago\":%lld,\"expires_in_ms\":%lld,\"in_firewall\":%s,"
                      "\"packets\":%llu,\"bytes\":%llu}",
                      (long long) (now - r->created), (long long) (r->expires - now),
                      e ? "true" : "false", e ? (unsigned long long) e->packets : 0ULL,
                      e ? (unsigned long long) e->bytes : 0ULL);
        } else {
            xr_sb_add(b, "  %s  %s (%s)  expires in %lld ms  %llu packets %llu bytes\n", t, r->app,
                      r->who, (long long) (r->expires - now),
                      e ? (unsigned long long) e->packets : 0ULL,
                      e ? (unsigned long long) e->bytes : 0ULL);
        }
    }
    if (json)
        xr_sb_add(b, "]");
}
