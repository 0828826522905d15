/*
 * upstream.c: server choice and passive health checks.
 */
#include "core/xrayd.h"
#include "relay/upstream.h"

#include <netinet/in.h>

void xr_relay_rt_init(xr_relay_rt_t *rt, const xr_relay_conf_t *rc)
{
    memset(rt, 0, sizeof(*rt));
    rt->rc = rc;
    rt->peers = xr_calloc(rc->upstream.n, sizeof(xr_peer_t));
    rt->state_off = xr_calloc(rc->nfilters + 1, sizeof(size_t));
    size_t off = 0;
    for (size_t i = 0; i < rc->nfilters; i++) {
        rt->state_off[i] = off;
        off += (rc->filters[i].module->state_size + 15) & ~(size_t) 15;
        if (rc->filters[i].module->data != NULL)
            rt->has_data_filters = 1;
        if (rc->filters[i].module->log != NULL)
            rt->has_log_hooks = 1;
    }
    rt->state_total = off;
    /* Workers start at different servers so round robin spreads at once. */
    rt->rr = (size_t) xr_mono_ms();
    rt->ctr = (xr_counters_t){&rt->own.active, &rt->own.worker_active, &rt->own.accepted,
                              &rt->own.resumed, rt->own.bytes};
}

void xr_relay_rt_free(xr_relay_rt_t *rt)
{
    free(rt->peers);
    free(rt->state_off);
    rt->peers = NULL;
    rt->state_off = NULL;
}

static uint32_t xr_addr_hash(const struct sockaddr_storage *sa)
{
    const unsigned char *p;
    size_t n;
    if (sa->ss_family == AF_INET) {
        p = (const unsigned char *) &((const struct sockaddr_in *) sa)->sin_addr;
        n = 4;
    } else {
        p = (const unsigned char *) &((const struct sockaddr_in6 *) sa)->sin6_addr;
        n = 16;
    }
    uint32_t h = 2166136261u; /* FNV-1a */
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 16777619u;
    return h;
}

int xr_upstream_pick(xr_relay_rt_t *rt, uint64_t tried, const struct sockaddr_storage *client)
{
    size_t n = rt->rc->upstream.n;
    int64_t now = xr_mono_ms();
    int best = -1, fallback = -1;
    size_t start;

    switch (rt->rc->balance) {
    case XR_BALANCE_RANDOM: start = (size_t) random(); break;
    case XR_BALANCE_SOURCE_HASH: start = xr_addr_hash(client); break;
    default: start = rt->rr++; break;
    }
    for (size_t k = 0; k < n; k++) {
        size_t i = (start + k) % n;
        if (i < 64 && (tried >> i) & 1)
            continue;
        if (fallback < 0)
            fallback = (int) i;
        if (rt->peers[i].down_until > now)
            continue;
        if (rt->rc->balance != XR_BALANCE_LEAST_CONN) {
            best = (int) i;
            break;
        }
        if (best < 0 || rt->peers[i].active < rt->peers[best].active)
            best = (int) i;
    }
    /* Every untried server is marked down: try one anyway rather than fail
     * a client because of old news. */
    return best >= 0 ? best : fallback;
}

void xr_upstream_result(xr_relay_rt_t *rt, int i, int ok, int64_t now)
{
    xr_peer_t *p = &rt->peers[i];
    if (ok) {
        p->fails = 0;
        p->down_until = 0;
        return;
    }
    if (++p->fails >= rt->rc->upstream_max_fails) {
        p->down_until = now + rt->rc->upstream_fail_timeout;
        p->fails = 0;
    }
}
