/*
 * agent_status.c: what `xray status` shows of a running agent (see
 * agent_int.h): its counters, registrations, relay points and peers, as
 * text for people or JSON for scripts, on the agent's admin socket.
 *
 * It only reads the agent's state, at the moment a request comes.
 */
#include "agent/agent_int.h"
#include "core/admin.h"

#include <unistd.h>

/* Relays running through this agent's relay points. */
static size_t xr_agent_relays(void)
{
    size_t n = 0;
    for (size_t i = 0;
         xr_agent_gen(xr__ag.gen)->policy != NULL && i < xr_agent_gen(xr__ag.gen)->policy->napps;
         i++)
        n += (size_t) xr_worker_rt(xr_agent_gen(xr__ag.gen)->policy->apps[i]->relay)->active;
    return n;
}

static size_t xr_pool_size(void)
{
    size_t n = 0;
    for (size_t i = 0; i < xr__ag.conf->npool; i++)
        n += (size_t) (xr__ag.conf->pool[i].hi - xr__ag.conf->pool[i].lo) + 1;
    return n;
}

/* The standing session to peer i: "up", "opening" or "none". */
static const char *xr_peer_state(size_t i)
{
    const xr_ctl_t *s = xr__ag.psess[i];
    return s == NULL ? "none" : s->state == XR_CTL_READY ? "up" : "opening";
}

static void xr_agent_status(xr_sb_t *b, int json)
{
    int64_t now = xr_wall_ms();
    size_t leased = 0;
    for (size_t i = 0; i < xr__ag.leases.n; i++)
        leased += xr__ag.leases.l[i].leased;
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
                                           "peer_sessions_opened",
                                           "openings_made",
                                           "openings_failed"};
    uint64_t values[] = {xr__ag.n.sessions,      xr__ag.n.full,      xr__ag.n.resumed,
                         xr__ag.n.registered,    xr__ag.n.refreshed, xr__ag.n.unregistered,
                         xr__ag.n.expired,       xr__ag.n.refused,   xr__ag.n.protocol_errors,
                         xr__ag.n.connects,      xr__ag.n.direct,    xr__ag.n.relayed,
                         xr__ag.n.rp_expired,    xr__ag.n.inbound,   xr__ag.n.connect_out,
                         xr__ag.n.peer_sessions, xr__ag.n.opened,    xr__ag.n.open_failed};
    if (json) {
        xr_sb_add(b, "{\"version\":\"%s\",\"pid\":%ld,\"generation\":%llu,\"listen\":", XR_VERSION,
                  (long) getpid(), (unsigned long long) xr__ag.gen->number);
        xr_sb_json(b, xr__ag.conf->listen.text);
        xr_sb_add(b,
                  ",\"uptime_ms\":%lld,\"open_sessions\":%zu,\"pool\":{\"size\":%zu,"
                  "\"leased\":%zu},\"counters\":{",
                  (long long) (now - xr__ag.started), xr__ag.nsessions, xr_pool_size(), leased);
        for (size_t i = 0; i < XR_ARRAY_SIZE(values); i++)
            xr_sb_add(b, "%s\"%s\":%llu", i ? "," : "", counters[i],
                      (unsigned long long) values[i]);
        xr_sb_add(b, "},\"registrations\":[");
        for (size_t i = 0; i < xr__ag.leases.n; i++) {
            const xr_lease_t *l = &xr__ag.leases.l[i];
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
        for (xr_list_t *q = xr__ag.rps.next; q != &xr__ag.rps; q = q->next, first = 0) {
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
        for (size_t i = 0; i < xr__ag.conf->npeers; i++) {
            xr_sb_add(b, "%s{\"agent\":", i ? "," : "");
            xr_sb_json(b, xr__ag.conf->peers[i].agent.text);
            xr_sb_add(b, ",\"session\":\"%s\"}", xr_peer_state(i));
        }
        xr_sb_add(b, "]");
        xr__open_status(b, 1);
        xr_sb_add(b, "}\n");
        return;
    }
    xr_sb_add(b, "agent %s  pid %ld  generation %llu  up %lld s\n", xr__ag.conf->listen.text,
              (long) getpid(), (unsigned long long) xr__ag.gen->number,
              (long long) ((now - xr__ag.started) / 1000));
    xr_sb_add(b,
              "control sessions: %zu open, %llu in all; TLS handshakes: %llu full, %llu "
              "resumed\n",
              xr__ag.nsessions, (unsigned long long) xr__ag.n.sessions,
              (unsigned long long) xr__ag.n.full, (unsigned long long) xr__ag.n.resumed);
    xr_sb_add(b, "official pool: %zu addresses, %zu leased\n", xr_pool_size(), leased);
    xr_sb_add(b, "counters:");
    for (size_t i = 3; i < XR_ARRAY_SIZE(values); i++)
        xr_sb_add(b, " %s %llu%s", counters[i], (unsigned long long) values[i],
                  i + 1 < XR_ARRAY_SIZE(values) ? "," : "\n");
    xr_sb_add(b, "registrations: %zu\n", xr__ag.leases.n);
    if (xr__ag.leases.n > 0)
        xr_sb_add(b, "  %-24s %-24s %-5s %-16s %-10s %s\n", "OFFICIAL", "LOCAL", "PROTO",
                  "APPLICATION", "HOLDER", "EXPIRES");
    for (size_t i = 0; i < xr__ag.leases.n; i++) {
        const xr_lease_t *l = &xr__ag.leases.l[i];
        char o[80], lo[80];
        xr_sb_add(b, "  %-24s %-24s %-5s %-16s %-10s in %lld s\n",
                  xr_paddr_str(&l->official, o, sizeof(o)), xr_paddr_str(&l->local, lo, sizeof(lo)),
                  l->proto == XR_PROTO_TCP ? "tcp" : "udp", l->app,
                  l->owner ? "connected" : "reserved", (long long) ((l->expires - now) / 1000));
    }
    xr_sb_add(b, "relay points: %zu being linked; relays running: %zu\n", xr__ag.nrps,
              xr_agent_relays());
    for (xr_list_t *q = xr__ag.rps.next; q != &xr__ag.rps; q = q->next) {
        xr_rp_t *rp = xr_container_of(q, xr_rp_t, link);
        xr_sb_add(b, "  %llu %s (linked: client side %s, server side %s)\n",
                  (unsigned long long) rp->id, rp->what, rp->linked[0] ? "yes" : "no",
                  rp->linked[1] ? "yes" : "no");
    }
    xr_sb_add(b, "peers: %zu\n", xr__ag.conf->npeers);
    for (size_t i = 0; i < xr__ag.conf->npeers; i++)
        xr_sb_add(b, "  %s (session %s)\n", xr__ag.conf->peers[i].agent.text, xr_peer_state(i));
    xr__open_status(b, 0);
}

void xr__agent_admin(xr_io_t *io, uint32_t events)
{
    xr_admin_serve(io->fd, xr_agent_status);
}
