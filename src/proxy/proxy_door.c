/*
 * proxy_door.c: the `proxy:` front door - transparent proxies that take
 * connections REDIRECTed (or TPROXYed) to them and relay each to its
 * original destination, as a circuit or as HTTP, with crash continuity.
 */
#include "core/xrayd.h"
#include "core/frontdoor.h"
#include "proxy/proxy.h"
#include "proxy/proxy_conf.h"

extern const xr_frontdoor_t xr_proxy_frontdoor;

static int xr_proxy_set_blocks(xr_conf_t *cf, const xr_node_t *n, void *conf,
                               const xr_directive_t *d)
{
    return xr_gen_blocks(cf, n, &xr_proxy_frontdoor, sizeof(xr_proxy_conf_t), xr_proxy_check);
}

static const xr_directive_t xr_proxy_main_directives[] = {
    {"proxy", XR_CTX_MAIN, XR_T_CUSTOM, 0, NULL, 0, 0, (const char *const[]){"proxy blocks", NULL},
     xr_proxy_set_blocks, XR_DIR_MULTI,
     "Transparent proxy blocks: REDIRECT or TPROXY targets that relay to each connection's "
     "original destination."},
    XR_DIRECTIVES_END};

static const xr_frontdoor_table_t xr_proxy_tables[] = {
    {"http", xr_http_directives, XR_CTX_PROXY_HTTP}, {NULL, NULL, 0}};

static const char *xr_proxy_block_kind(const xr_relay_conf_t *rc)
{
    return xr_proxy_conf(rc)->mode == XR_PROXY_HTTP ? "http" : "circuit";
}

const xr_frontdoor_t xr_proxy_frontdoor = {
    .name = "proxy",
    .directives = xr_proxy_main_directives,
    .block_ctx = XR_CTX_PROXY,
    .block_directives = xr_proxy_block_directives,
    .tables = xr_proxy_tables,
    .block_kind = xr_proxy_block_kind,
    .accept = xr_proxy_start,
    .conn_target = xr_proxy_target,
    .conn_stage = xr_proxy_stage,
};
