/*
 * agent.c: the agent in its worker (see agent.h): starting and stopping
 * the control service, and the lease table over time.
 *
 * Leases live in one table owned by this process; a 1 s tick expires them
 * and writes the state file when something changed.  The sessions are in
 * ctl.c, relay points in relay_point.c, setup between agents in peer.c.
 */
#include "agent/agent_int.h"
#include "core/admin.h"
#include "core/log.h"

#include <errno.h>
#include <ifaddrs.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* One per process: see agent_int.h. */
xr__ag_t xr__ag;

/* ---- leases over time ---------------------------------------------------- */

static void xr_agent_expired(xr_lease_t *l, void *arg)
{
    char oa[80];
    xr__ag.n.expired++;
    xr_log(XR_LOG_INFO, "agent: lease of %s (%s) expired without a heartbeat",
           xr_paddr_str(&l->official, oa, sizeof(oa)), l->app);
}

static void xr_agent_save(void)
{
    if (!xr__ag.dirty || xr__ag.conf->state_file == NULL)
        return;
    if (xr_leases_save(&xr__ag.leases, xr__ag.conf->state_file) != 0) {
        /* Keep serving from memory and try again on the next tick. */
        xr_log(XR_LOG_ERR, "agent: cannot write state_file %s: %s", xr__ag.conf->state_file,
               strerror(errno));
        return;
    }
    xr__ag.dirty = 0;
}

static void xr_agent_tick(uv_timer_t *t)
{
    if (xr_leases_expire(&xr__ag.leases, xr_wall_ms(), xr_agent_expired, NULL) > 0)
        xr__ag.dirty = 1;
    xr_agent_save();
}

int xr_agent_start(uv_loop_t *loop, xr_gen_t *g, int listen_fd)
{
    memset(&xr__ag, 0, sizeof(xr__ag));
    xr__ag.loop = loop;
    xr__ag.gen = g;
    xr__ag.conf = xr_agent_gen(g)->agent;
    xr_list_init(&xr__ag.sessions);
    xr_list_init(&xr__ag.rps);
    xr__ag.psess = calloc(xr__ag.conf->npeers + 1, sizeof(*xr__ag.psess));
    if (xr__ag.psess == NULL)
        return XR_ERROR;
    /* What CONNECT_OK tells a library to expect of our certificate, and
     * our own addresses, which no outbound rule reaches and no server
     * registers unless a rule names them. */
    xr_identity_t me;
    if (xr_identity_from_crt(&xr__ag.conf->tls->crt, &me) == XR_OK)
        snprintf(xr__ag.own_key, sizeof(xr__ag.own_key), "%s", me.pubkey_sha256);
    struct ifaddrs *ifs = NULL;
    if (getifaddrs(&ifs) == 0) {
        for (struct ifaddrs *i = ifs; i != NULL && xr__ag.nself < XR_ARRAY_SIZE(xr__ag.self);
             i = i->ifa_next)
            if (i->ifa_addr != NULL &&
                (i->ifa_addr->sa_family == AF_INET || i->ifa_addr->sa_family == AF_INET6))
                xr_paddr_from_sockaddr(&xr__ag.self[xr__ag.nself++],
                                       (struct sockaddr_storage *) i->ifa_addr);
        freeifaddrs(ifs);
    }
    if (xr__ag.nself < XR_ARRAY_SIZE(xr__ag.self)) {
        /* Usually an interface's address already, unless bound before the
         * interface came up (ip_nonlocal_bind). */
        xr_paddr_t *a = &xr__ag.self[xr__ag.nself++];
        xr_paddr_from_sockaddr(a, &xr__ag.conf->listen.sa);
        a->port = 0;
    }
    for (size_t i = 0; i < xr__ag.conf->npool && xr__ag.nself < XR_ARRAY_SIZE(xr__ag.self); i++) {
        xr_paddr_t *a = &xr__ag.self[xr__ag.nself++];
        memset(a, 0, sizeof(*a));
        a->family = xr__ag.conf->pool[i].family;
        memcpy(a->addr, xr__ag.conf->pool[i].addr, 16);
    }
    xr_leases_init(&xr__ag.leases, xr__ag.conf->pool, xr__ag.conf->npool);
    if (xr__ag.conf->state_file != NULL) {
        char why[256];
        int n =
            xr_leases_load(&xr__ag.leases, xr__ag.conf->state_file, xr_wall_ms(), why, sizeof(why));
        if (n < 0)
            xr_log(XR_LOG_ERR, "agent: %s; starting with no leases", why);
        else if (n > 0)
            xr_log(XR_LOG_NOTICE, "agent: %d lease(s) from %s held for their holders", n,
                   xr__ag.conf->state_file);
    }
    if (xr_io_add(&xr__ag.lio, listen_fd, xr__agent_accept) != XR_OK) {
        xr_log(XR_LOG_ERR, "agent: cannot watch %s: %s", xr__ag.conf->listen.text, strerror(errno));
        return XR_ERROR;
    }
    xr__ag.running = 1;
    xr__ag.started = xr_wall_ms();
    xr__ag.admin.fd = -1;
    if (xr__ag.conf->admin_socket != NULL) {
        int afd = xr_admin_open(xr__ag.conf->admin_socket);
        struct stat st;
        if (afd >= 0 && stat(xr__ag.conf->admin_socket, &st) == 0)
            xr__ag.admin_ino = st.st_ino;
        if (afd < 0 || xr_io_add(&xr__ag.admin, afd, xr__agent_admin) != XR_OK) {
            /* Status is a convenience: the agent serves without it. */
            xr_log(XR_LOG_ERR, "agent: cannot open admin_socket %s: %s", xr__ag.conf->admin_socket,
                   strerror(errno));
            if (afd >= 0)
                close(afd);
            xr__ag.admin.fd = -1;
        }
    }
    uv_timer_init(loop, &xr__ag.tick);
    uv_timer_start(&xr__ag.tick, xr_agent_tick, 1000, 1000);
    uv_unref((uv_handle_t *) &xr__ag.tick);
    xr_log(XR_LOG_NOTICE, "agent: serving on %s (%zu application(s), %zu pool range(s))",
           xr__ag.conf->listen.text, xr_agent_gen(g)->policy ? xr_agent_gen(g)->policy->napps : 0,
           xr__ag.conf->npool);
    /* The listener was readable before we watched it: take what waits. */
    xr__agent_accept(&xr__ag.lio, EPOLLIN);
    return XR_OK;
}

void xr_agent_stop(void)
{
    if (!xr__ag.running)
        return;
    xr__ag.running = 0;
    xr_io_del(&xr__ag.lio);
    if (xr__ag.admin.fd >= 0) {
        /* Remove the path only if it is still ours (a reload's new agent
         * may have bound it already). */
        struct stat there;
        if (stat(xr__ag.conf->admin_socket, &there) == 0 && there.st_ino == xr__ag.admin_ino)
            unlink(xr__ag.conf->admin_socket);
        close(xr__ag.admin.fd);
        xr__ag.admin.fd = -1;
    }
    while (!xr_list_empty(&xr__ag.rps)) {
        xr_rp_t *rp = xr_container_of(xr__ag.rps.next, xr_rp_t, link);
        xr__rp_fail(rp, XR_PERR_UNREACHABLE, "agent stopping");
    }
    while (!xr_list_empty(&xr__ag.sessions)) {
        xr_ctl_t *c = xr_container_of(xr__ag.sessions.next, xr_ctl_t, link);
        xr__ctl_close(c, "agent stopping");
    }
    for (size_t i = 0; i < XR_SRV_SESSIONS; i++)
        xr_tls_session_free(&xr__ag.srvs[i].s);
    free(xr__ag.psess);
    xr__ag.psess = NULL;
    xr__ag.dirty = 1;
    xr_agent_save();
    uv_timer_stop(&xr__ag.tick);
    uv_close((uv_handle_t *) &xr__ag.tick, NULL);
    xr_leases_free(&xr__ag.leases);
    free(xr__ag.openings);
    xr__ag.openings = NULL;
    xr__ag.nopenings = xr__ag.capopenings = 0;
}

size_t xr_agent_sessions(void)
{
    return xr__ag.nsessions;
}
