/*
 * fw_door.c: the firewall's front door - the `firewall:` block, and in
 * the worker that serves the agent, the backend's table made anew at
 * start (CODO §5: rules a crash left behind go; soft state, the servers'
 * registrations coming back, rebuilds what is still wanted), then handed
 * to the rest of xrayd through core/firewall.h.
 */
#include "fw/fw.h"
#include "core/xrayd.h"
#include "core/conf.h"
#include "core/frontdoor.h"
#include "core/log.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define XR_CTX_FIREWALL 0x20000
#define FO(f)           offsetof(xr_fw_conf_t, f)

extern const xr_frontdoor_t xr_firewall_frontdoor;

static const char *const xr_fw_backends[] = {"nftables", NULL};

static const xr_directive_t xr_fw_directives[] = {
    {"backend", XR_CTX_FIREWALL, XR_T_ENUM, FO(backend), "nftables", 0, 0, xr_fw_backends, NULL, 0,
     "The firewall the agent opens pinholes in: nftables."},
    {"table", XR_CTX_FIREWALL, XR_T_STRING, FO(table), "xrayd", 0, 0, NULL, NULL, 0,
     "The table xrayd owns (inet family); it is made anew at every start and nothing else is "
     "touched."},
    {"mark", XR_CTX_FIREWALL, XR_T_STRING, FO(mark_text), "0x00005852", 0, 0, NULL, NULL, 0,
     "Conntrack mark bits set on every connection an opening admits: the administrator's "
     "forward chain accepts them with `ct mark & MARK == MARK accept`."},
    {"opening_timeout", XR_CTX_FIREWALL, XR_T_DURATION, FO(opening_timeout), "10s", 100, 3600000,
     NULL, NULL, 0,
     "How long an opening (and its NAT binding) waits for the connection it is for; then it is "
     "gone, and the connection, once made, lives on in connection tracking."},
    {"tcp_state_timeout", XR_CTX_FIREWALL, XR_T_DURATION, FO(tcp_state_timeout), "0", 0, 864000000,
     NULL, NULL, 0,
     "How long this firewall keeps an idle TCP connection (0: the kernel's "
     "nf_conntrack_tcp_timeout_established); clients send heartbeats well within it."},
    {"udp_state_timeout", XR_CTX_FIREWALL, XR_T_DURATION, FO(udp_state_timeout), "0", 0, 864000000,
     NULL, NULL, 0, "The same for UDP sessions (0: the kernel's nf_conntrack_udp_timeout_stream)."},
    XR_DIRECTIVES_END};

static int xr_fw_set(xr_conf_t *cf, const xr_node_t *n, void *conf, const xr_directive_t *d)
{
    xr_gen_t *g = cf->user;
    void **slot = xr_gen_fdconf(g, &xr_firewall_frontdoor);
    if (*slot != NULL)
        return xr_conf_error(cf, n, "firewall is already defined");
    if (n->type != XR_NODE_MAP)
        return xr_conf_error(cf, n, "expected a mapping of firewall settings");
    xr_fw_conf_t *f = xr_conf_alloc(cf, sizeof(*f));
    f->node = n;
    if (xr_conf_defaults(cf, xr_fw_directives, XR_CTX_FIREWALL, f, NULL) != XR_OK ||
        xr_conf_block(cf, n, xr_fw_directives, XR_CTX_FIREWALL, f, NULL, NULL) != XR_OK)
        return XR_ERROR;
    const xr_node_t *tn = xr_node_get(n, "table");
    if (f->table[0] == '\0' || strlen(f->table) > 32 ||
        strspn(f->table, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-") !=
            strlen(f->table))
        return xr_conf_error(cf, tn ? tn : n,
                             "\"%s\": a table name is 1-32 letters, digits, '_' or '-'", f->table);
    char *e;
    errno = 0;
    unsigned long m = strtoul(f->mark_text, &e, 0);
    if (errno != 0 || *e != '\0' || m == 0 || m > 0xffffffffUL) {
        const xr_node_t *mn = xr_node_get(n, "mark");
        return xr_conf_error(cf, mn ? mn : n,
                             "\"%s\": expected a non-zero 32-bit mark such as 0x5852",
                             f->mark_text);
    }
    f->mark = (uint32_t) m;
    *slot = f;
    return XR_OK;
}

static const xr_directive_t xr_fw_main_directives[] = {
    {"firewall", XR_CTX_MAIN, XR_T_CUSTOM, 0, NULL, 0, 0,
     (const char *const[]){"firewall block", NULL}, xr_fw_set, 0,
     "The firewall on this host that the agent opens pinholes in (traversal: open)."},
    XR_DIRECTIVES_END};

static const xr_frontdoor_table_t xr_fw_tables[] = {{"firewall", xr_fw_directives, XR_CTX_FIREWALL},
                                                    {NULL, NULL, 0}};

static const xr_fw_conf_t *xr_fw_conf(const xr_gen_t *g)
{
    return xr_gen_fdconf_get(g, &xr_firewall_frontdoor);
}

static const xr_fw_backend_t *xr_fw_backend;
static const xr_fw_conf_t *xr_fw_running;
static xr_firewall_t xr_fw_iface;

static int64_t xr_fw_sysctl_ms(const char *name, int64_t fallback)
{
    char path[160];
    snprintf(path, sizeof(path), "/proc/sys/net/netfilter/%s", name);
    FILE *f = fopen(path, "r");
    long long s = 0;
    if (f == NULL)
        return fallback;
    if (fscanf(f, "%lld", &s) != 1 || s <= 0)
        s = fallback / 1000;
    fclose(f);
    return (int64_t) s * 1000;
}

static int64_t xr_fw_state_timeout(uint8_t proto)
{
    const xr_fw_conf_t *c = xr_fw_running;
    if (proto == XR_PROTO_UDP)
        return c->udp_state_timeout ? c->udp_state_timeout
                                    : xr_fw_sysctl_ms("nf_conntrack_udp_timeout_stream", 120000);
    return c->tcp_state_timeout
               ? c->tcp_state_timeout
               : xr_fw_sysctl_ms("nf_conntrack_tcp_timeout_established", 432000000);
}

static int64_t xr_fw_opening_timeout(void)
{
    return xr_fw_running->opening_timeout;
}

static int xr_fw_active(const xr_gen_t *g)
{
    return xr_fw_conf(g) != NULL;
}

static int xr_fw_start(uv_loop_t *loop, xr_gen_t *g)
{
    const xr_fw_conf_t *c = xr_fw_conf(g);
    const xr_fw_backend_t *b = &xr_fw_nft;
    char err[300];
    /* Generation 1 is a start of xrayd (or a worker that crashed in it):
     * what is in the table was left by a dead run.  A reload keeps it. */
    int keep = g->number > 1;
    if (b->start(c, keep, err, sizeof(err)) != XR_OK) {
        /* Closed by default: nothing will be opened; the agent says so to
         * each application that asks. */
        xr_log(XR_LOG_ERR, "firewall: cannot make table inet %s: %s; no openings will be made",
               c->table, err);
        return XR_OK;
    }
    static char where[80];
    snprintf(where, sizeof(where), "table inet %s", c->table);
    xr_fw_backend = b;
    xr_fw_running = c;
    xr_fw_iface = (xr_firewall_t){.name = b->name,
                                  .where = where,
                                  .mark = c->mark,
                                  .open = b->open,
                                  .remove = b->remove,
                                  .list = b->list,
                                  .opening_timeout = xr_fw_opening_timeout,
                                  .state_timeout = xr_fw_state_timeout};
    xr_firewall_set(&xr_fw_iface);
    xr_log(XR_LOG_NOTICE, "firewall: %s %s (%s, mark 0x%08x, openings live %lld ms)", where,
           keep ? "kept across the reload" : "made anew", b->name, c->mark,
           (long long) c->opening_timeout);
    return XR_OK;
}

static void xr_fw_exit(void)
{
    xr_firewall_set(NULL);
    if (xr_fw_backend != NULL)
        xr_fw_backend->stop();
    xr_fw_backend = NULL;
}

const xr_frontdoor_t xr_firewall_frontdoor = {
    .name = "firewall",
    .directives = xr_fw_main_directives,
    .tables = xr_fw_tables,
    .active = xr_fw_active,
    .single = 1,
    .start = xr_fw_start,
    .exit_worker = xr_fw_exit,
};
