/*
 * proxy.c: the transparent proxy's connections: what a REDIRECTed (or
 * TPROXYed) connection's original destination is, and where it goes -
 * the parent proxies in order, then that destination (thesis 7.2 step
 * 6).  The bytes move on the relay engine's connections with continuity
 * (relay/conn.c), through the HTTP stage in mode: http.
 */
#include "core/xrayd.h"
#include "common/sockaddr.h"
#include "core/log.h"
#include "proxy/http.h"
#include "proxy/proxy.h"
#include "proxy/proxy_conf.h"
#include "relay/conn.h"

#include <linux/netfilter_ipv4.h>
#include <linux/netfilter_ipv6/ip6_tables.h>
#include <netinet/in.h>
#include <stdio.h>
#include <sys/socket.h>
#include <unistd.h>

static int xr_proxy_orig_dst(int fd, int intercept, struct sockaddr_storage *dst)
{
    socklen_t len = sizeof(*dst);
    memset(dst, 0, sizeof(*dst));
    if (intercept == XR_INTERCEPT_TPROXY)
        return getsockname(fd, (struct sockaddr *) dst, &len) == 0 ? XR_OK : XR_ERROR;
    if (getsockopt(fd, SOL_IP, SO_ORIGINAL_DST, dst, &len) == 0)
        return XR_OK;
    len = sizeof(*dst);
    if (getsockopt(fd, SOL_IPV6, IP6T_SO_ORIGINAL_DST, dst, &len) == 0)
        return XR_OK;
    return XR_ERROR;
}

static int xr_port(const struct sockaddr_storage *a)
{
    return a->ss_family == AF_INET ? ((const struct sockaddr_in *) a)->sin_port
                                   : ((const struct sockaddr_in6 *) a)->sin6_port;
}

void xr_proxy_start(uv_loop_t *loop, xr_relay_rt_t *rt, int fd,
                    const struct sockaddr_storage *client, uint64_t id)
{
    const xr_relay_conf_t *rc = rt->rc;
    char ca[64];
    struct sockaddr_storage dst, local;
    socklen_t ll = sizeof(local);
    getsockname(fd, (struct sockaddr *) &local, &ll);
    /* A connection to the proxy's own port that nobody redirected (REDIRECT
     * then gives back the local address, TPROXY always does) would loop. */
    int found = xr_proxy_orig_dst(fd, xr_proxy_conf(rc)->intercept, &dst) == XR_OK, self = 0;
    for (size_t i = 0; found && i < rc->listen.n && !self; i++)
        self =
            xr_sockaddr_same(&dst, &local) && xr_port(&local) == xr_port(&rc->listen.items[i].sa);
    if (!found || self) {
        xr_log(XR_LOG_NOTICE,
               "*%llu proxy %s: connection from %s was not redirected (no original "
               "destination), closing",
               (unsigned long long) id, rc->name, xr_addr_format(client, ca, sizeof(ca)));
        close(fd);
        atomic_fetch_sub(rt->ctr.active, 1);
        return;
    }
    uint32_t stage = 0;
    if (xr_proxy_conf(rc)->mode == XR_PROXY_HTTP)
        stage = rt->has_data_filters ? XR_HTTP_STAGE_FILTERED : XR_HTTP_STAGE_PLAIN;
    xr_conn_start(loop, rt, fd, client, id, &dst, stage);
}

const struct sockaddr_storage *xr_proxy_target(xr_conn_t *c, socklen_t *len)
{
    const xr_relay_conf_t *rc = c->conf;
    uint32_t t = c->p->tries;
    if (t < rc->upstream.n) {
        c->upstream_idx = (int) t;
        *len = rc->upstream.items[t].len;
        return &rc->upstream.items[t].sa;
    }
    if (t == rc->upstream.n) {
        c->upstream_idx = -1;
        *len = c->p->dst.ss_family == AF_INET ? sizeof(struct sockaddr_in)
                                              : sizeof(struct sockaddr_in6);
        return &c->p->dst;
    }
    return NULL;
}

const xr_stage_t *xr_proxy_stage(uint32_t mode)
{
    switch (mode) {
    case XR_HTTP_STAGE_PLAIN: return &xr_http_handler;
    case XR_HTTP_STAGE_FILTERED: return &xr_http_filtered_handler;
    default: return NULL;
    }
}
