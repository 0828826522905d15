/*
 * relay_door.c: the `relay:` front door - blocks that accept on their
 * listen addresses (plain or TLS) and relay to fixed upstream servers.
 */
#include "core/xrayd.h"
#include "core/frontdoor.h"
#include "relay/conn.h"
#include "relay/relay.h"
#include "tls/tls.h"

static const char *const xr_balance_names[] = {"round_robin", "least_conn", "random", "source_hash",
                                               NULL};

static int xr_relay_set_blocks(xr_conf_t *cf, const xr_node_t *n, void *conf,
                               const xr_directive_t *d);

#define R     XR_CTX_RELAY
#define RO(f) offsetof(xr_relay_conf_t, f)

static const xr_directive_t xr_relay_main_directives[] = {
    {"relay", XR_CTX_MAIN, XR_T_CUSTOM, 0, NULL, 0, 0, (const char *const[]){"relay blocks", NULL},
     xr_relay_set_blocks, XR_DIR_MULTI, "Relay blocks: listeners and the upstreams they relay to."},
    XR_DIRECTIVES_END};

static const xr_directive_t xr_relay_block_directives[] = {
    {"upstream", R, XR_T_ADDR_LIST, RO(upstream), NULL, 0, 0, NULL, NULL, XR_DIR_REQUIRED,
     "Servers to relay to, one address or a list."},
    {"balance", R, XR_T_ENUM, RO(balance), "round_robin", 0, 0, xr_balance_names, NULL, 0,
     "How a connection picks its upstream server."},
    {"upstream_tries", R, XR_T_INT, RO(upstream_tries), "0", 0, 100, NULL, NULL, 0,
     "Connect attempts per connection across servers (0: each server once)."},
    {"upstream_max_fails", R, XR_T_INT, RO(upstream_max_fails), "1", 1, 1000, NULL, NULL, 0,
     "Failed connects that mark a server down for upstream_fail_timeout."},
    {"upstream_fail_timeout", R, XR_T_DURATION, RO(upstream_fail_timeout), "10s", 0, 86400000, NULL,
     NULL, 0, "How long a failed server is skipped."},
    {"tls", R, XR_T_CUSTOM, RO(tls), NULL, 0, 0, (const char *const[]){"tls block", NULL},
     xr_tls_set_server, 0,
     "Accept TLS on the listen addresses: certificate, key, client_ca, allow ..."},
    {"upstream_tls", R, XR_T_CUSTOM, RO(upstream_tls), NULL, 0, 0,
     (const char *const[]){"tls block", NULL}, xr_tls_set_client, 0,
     "Speak TLS to the upstream servers: ca, verify, certificate, key, server_name ..."},
    {"continuity", R, XR_T_FLAG, RO(continuity), "off", 0, 0, NULL, NULL, 0,
     "Keep live connections across worker crashes and binary upgrades (snapshots in "
     "state_dir), TLS ends included once their handshakes are done."},
    XR_DIRECTIVES_END};

#undef R
#undef RO

static const xr_frontdoor_table_t xr_relay_tables[] = {
    {"tls", xr_tls_server_directives, XR_CTX_TLS_SERVER},
    {"upstream_tls", xr_tls_client_directives, XR_CTX_TLS_CLIENT},
    {NULL, NULL, 0}};

extern const xr_frontdoor_t xr_relay_frontdoor;

static int xr_relay_set_blocks(xr_conf_t *cf, const xr_node_t *n, void *conf,
                               const xr_directive_t *d)
{
    return xr_gen_blocks(cf, n, &xr_relay_frontdoor, 0, NULL);
}

static void xr_relay_accept(uv_loop_t *loop, xr_relay_rt_t *rt, int fd,
                            const struct sockaddr_storage *client, uint64_t id)
{
    /* TLS handshakes run in relay.c, which hands a connection with
     * continuity to the ring engine once they are done. */
    if (rt->rc->continuity && rt->rc->tls == NULL && rt->rc->upstream_tls == NULL)
        xr_conn_start(loop, rt, fd, client, id, NULL, 0);
    else
        xr_relay_start(loop, rt, fd, client, id);
}

/* A connection with continuity picks its servers as a relay does: the
 * block's balance, skipping servers it tried, up to upstream_tries. */
static const struct sockaddr_storage *xr_relay_conn_target(xr_conn_t *c, socklen_t *len)
{
    const xr_relay_conf_t *rc = c->conf;
    xr_pslot_t *p = c->p;
    int64_t max_tries = rc->upstream_tries ? rc->upstream_tries : (int64_t) rc->upstream.n;
    if ((int64_t) p->tries >= max_tries)
        return NULL;
    int i = xr_upstream_pick(c->rt, p->tried, &p->client);
    if (i < 0 && p->tried != 0) {
        p->tried = 0; /* upstream_tries above the server count: go round again */
        i = xr_upstream_pick(c->rt, p->tried, &p->client);
    }
    if (i < 0)
        return NULL;
    p->peer = i;
    if (i < 64)
        p->tried |= (uint64_t) 1 << i;
    c->upstream_idx = (int64_t) p->tries + 1 < max_tries ? i : -1;
    *len = rc->upstream.items[i].len;
    return &rc->upstream.items[i].sa;
}

/* Health, and the count of connections on each server least_conn reads. */
static void xr_relay_conn_result(xr_conn_t *c, int ok)
{
    if (c->p->peer < 0)
        return;
    xr_upstream_result(c->rt, c->p->peer, ok, xr_mono_ms());
    if (ok && !c->peer_held) {
        c->rt->peers[c->p->peer].active++;
        c->peer_held = 1;
    }
}

static void xr_relay_conn_closed(xr_conn_t *c)
{
    if (c->peer_held)
        c->rt->peers[c->p->peer].active--;
    c->peer_held = 0;
}

static const char *xr_relay_block_kind(const xr_relay_conf_t *rc)
{
    return rc->tls != NULL ? "tls" : "relay";
}

const xr_frontdoor_t xr_relay_frontdoor = {
    .name = "relay",
    .directives = xr_relay_main_directives,
    .block_ctx = XR_CTX_RELAY,
    .block_directives = xr_relay_block_directives,
    .tables = xr_relay_tables,
    .block_kind = xr_relay_block_kind,
    .accept = xr_relay_accept,
    .conn_target = xr_relay_conn_target,
    .conn_target_result = xr_relay_conn_result,
    .conn_closed = xr_relay_conn_closed,
};
