/*
 * fw_nft.c: the nftables backend of the firewall (fw.h), on libnftables.
 *
 * xrayd owns one table, `inet <table>`, and touches nothing else:
 *
 *   set open4    the openings: saddr . daddr . l4proto . sport . dport,
 *                each with a timeout and a counter;
 *   map dnat4    the same key (as the packet arrives) to the server's
 *                local address . port, consulted in prerouting;
 *   map snat4    the same key to the public address . port reserved for
 *                a client, consulted in postrouting;
 *   forward      a packet of an opening marks its connection (ct mark).
 *
 * An accept in one table does not stop another table's chain from
 * dropping, so the administrator's forward chain accepts what carries the
 * mark - one rule, `ct mark & MARK == MARK accept` (html-docs/codo.html).
 * The mark lives in the connection's conntrack entry: once the opening
 * expired, the connection it admitted still passes, and a crash of
 * xrayd, which flushes the table on restart, leaves it passing too.
 *
 * Our NAT chains run just before the usual ones (priority dstnat - 10,
 * srcnat - 10): a connection takes the first NAT mapping made for it, so
 * a binding here wins over the box's masquerade.
 *
 * IPv4 only: the pool addresses of the agent are IPv4 in every deployment
 * this was built for; an IPv6 opening is refused with a clear error.
 */
#include "fw/fw.h"
#include "core/xrayd.h"
#include "core/log.h"

#include <inttypes.h>
#include <nftables/libnftables.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static struct nft_ctx *xr_nft;
static char xr_nft_table[64];

/* Run cmd: XR_OK, or XR_ERROR with nft's first error line in err. */
static int xr_nft_run(const char *cmd, char *err, size_t errlen)
{
    if (nft_run_cmd_from_buffer(xr_nft, cmd) == 0)
        return XR_OK;
    const char *e = nft_ctx_get_error_buffer(xr_nft);
    size_t n = e ? strcspn(e, "\n") : 0;
    snprintf(err, errlen, "nftables: %.*s", (int) XR_MIN(n, 200), n ? e : "command failed");
    return XR_ERROR;
}

static int xr_nft_list(xr_fw_entry_t *out, int max, char *err, size_t errlen);

/* What a previous run left in the table (a crash, or a stop: its
 * openings had not expired yet), said before it goes (CODO §5). */
static void xr_nft_left_behind(void)
{
    static xr_fw_entry_t e[64];
    char err[256];
    int n = xr_nft_list(e, (int) XR_ARRAY_SIZE(e), err, sizeof(err));
    if (n <= 0)
        return;
    for (int i = 0; i < n; i++) {
        char s[80], d[80];
        xr_log(XR_LOG_NOTICE,
               "firewall: flushing an opening a previous run left: %s %s -> %s, %lld ms left",
               e[i].proto == XR_PROTO_UDP ? "udp" : "tcp", xr_paddr_str(&e[i].src, s, sizeof(s)),
               xr_paddr_str(&e[i].dst, d, sizeof(d)), (long long) e[i].expires_ms);
    }
}

static int xr_nft_start(const xr_fw_conf_t *conf, int keep, char *err, size_t errlen)
{
    if (xr_nft == NULL) {
        xr_nft = nft_ctx_new(NFT_CTX_DEFAULT);
        if (xr_nft == NULL) {
            snprintf(err, errlen, "nftables: cannot make a context");
            return XR_ERROR;
        }
        nft_ctx_buffer_output(xr_nft);
        nft_ctx_buffer_error(xr_nft);
    }
    snprintf(xr_nft_table, sizeof(xr_nft_table), "%s", conf->table);
    static const char key[] = "ipv4_addr . ipv4_addr . inet_proto . inet_service . inet_service";
    static const char tuple[] = "ip saddr . ip daddr . meta l4proto . th sport . th dport";
    char body[1024], cmd[2560];
    snprintf(
        body, sizeof(body),
        " chain prerouting { type nat hook prerouting priority dstnat - 10; policy accept; }\n"
        " chain postrouting { type nat hook postrouting priority srcnat - 10; policy accept; }\n"
        " chain forward { type filter hook forward priority filter - 10; policy accept; }\n"
        " set open4 { type %1$s; flags timeout; counter; }\n"
        " map dnat4 { type %1$s : ipv4_addr . inet_service; flags timeout; }\n"
        " map snat4 { type %1$s : ipv4_addr . inet_service; flags timeout; }\n",
        key);
    char rules[600];
    snprintf(rules, sizeof(rules),
             "flush chain inet %1$s prerouting\n"
             "flush chain inet %1$s postrouting\n"
             "flush chain inet %1$s forward\n"
             "add rule inet %1$s prerouting dnat ip to %2$s map @dnat4\n"
             "add rule inet %1$s postrouting snat ip to %2$s map @snat4\n"
             "add rule inet %1$s forward %2$s @open4 ct mark set ct mark | 0x%3$08" PRIx32 "\n",
             conf->table, tuple, conf->mark);
    if (keep) {
        /* A reload: the table and its elements stay (openings in flight
         * are not lost), the rules are made anew (the mark may change),
         * all in one transaction. */
        snprintf(cmd, sizeof(cmd), "table inet %s {\n%s}\n%s", conf->table, body, rules);
        if (xr_nft_run(cmd, err, errlen) == XR_OK)
            return XR_OK;
        xr_log(XR_LOG_NOTICE, "firewall: cannot keep table inet %s (%s): making it anew",
               conf->table, err);
    }
    xr_nft_left_behind();
    /* "add table; delete table; table {...}" in one transaction: the old
     * table goes (if a crash left one) and the new one comes, atomically. */
    snprintf(cmd, sizeof(cmd),
             "add table inet %1$s\ndelete table inet %1$s\ntable inet %1$s {\n%2$s}\n%3$s",
             conf->table, body, rules);
    return xr_nft_run(cmd, err, errlen);
}

static const char *xr_nft_proto(uint8_t p)
{
    return p == XR_PROTO_UDP ? "udp" : "tcp";
}

/* "198.18.1.2 . 198.19.0.2 . tcp . 40000 . 20001" */
static int xr_nft_key(char *buf, size_t size, uint8_t proto, const xr_paddr_t *src,
                      const xr_paddr_t *dst)
{
    char s[64], d[64];
    if (src->family != 4 || dst->family != 4)
        return XR_ERROR;
    snprintf(buf, size, "%s . %s . %s . %u . %u", xr_paddr_host(src, s, sizeof(s)),
             xr_paddr_host(dst, d, sizeof(d)), xr_nft_proto(proto), src->port, dst->port);
    return XR_OK;
}

/* The elements of opening o: 0 or more "add"/"delete" commands into cmd. */
static int xr_nft_elements(const xr_fw_open_t *o, const char *verb, int64_t timeout_ms, char *cmd,
                           size_t size, char *err, size_t errlen)
{
    char in[160], fwd[160], nat[64], tmo[32] = "";
    /* The filter sees a DNAT'd packet with its new destination. */
    const xr_paddr_t *fdst = o->nat == XR_FW_NAT_DNAT ? &o->nat_addr : &o->dst;
    if (xr_nft_key(in, sizeof(in), o->proto, &o->src, &o->dst) != XR_OK ||
        xr_nft_key(fwd, sizeof(fwd), o->proto, &o->src, fdst) != XR_OK ||
        (o->nat != XR_FW_NAT_NONE && o->nat_addr.family != 4)) {
        snprintf(err, errlen, "openings are IPv4 only");
        return XR_ERROR;
    }
    if (timeout_ms > 0)
        snprintf(tmo, sizeof(tmo), " timeout %" PRId64 "ms", timeout_ms);
    int n =
        snprintf(cmd, size, "%s element inet %s open4 { %s%s }\n", verb, xr_nft_table, fwd, tmo);
    if (o->nat != XR_FW_NAT_NONE) {
        char h[64];
        snprintf(nat, sizeof(nat), "%s . %u", xr_paddr_host(&o->nat_addr, h, sizeof(h)),
                 o->nat_addr.port);
        if (timeout_ms > 0)
            n += snprintf(cmd + n, size - (size_t) n, "%s element inet %s %s { %s%s : %s }\n", verb,
                          xr_nft_table, o->nat == XR_FW_NAT_DNAT ? "dnat4" : "snat4", in, tmo, nat);
        else
            n += snprintf(cmd + n, size - (size_t) n, "%s element inet %s %s { %s }\n", verb,
                          xr_nft_table, o->nat == XR_FW_NAT_DNAT ? "dnat4" : "snat4", in);
    }
    return (size_t) n < size ? XR_OK : XR_ERROR;
}

static int xr_nft_open(const xr_fw_open_t *o, int64_t timeout_ms, char *err, size_t errlen)
{
    char cmd[600];
    if (xr_nft_elements(o, "add", timeout_ms, cmd, sizeof(cmd), err, errlen) != XR_OK)
        return XR_ERROR;
    return xr_nft_run(cmd, err, errlen);
}

static int xr_nft_remove(const xr_fw_open_t *o, char *err, size_t errlen)
{
    char cmd[600];
    if (xr_nft_elements(o, "delete", 0, cmd, sizeof(cmd), err, errlen) != XR_OK)
        return XR_ERROR;
    return xr_nft_run(cmd, err, errlen);
}

/* "9s952ms", "1m3s", "250ms" in ms. */
static int64_t xr_nft_duration(const char *s)
{
    int64_t total = 0;
    while (*s >= '0' && *s <= '9') {
        char *e;
        long long v = strtoll(s, &e, 10);
        if (strncmp(e, "ms", 2) == 0)
            total += v, e += 2;
        else if (*e == 'd')
            total += v * 86400000, e++;
        else if (*e == 'h')
            total += v * 3600000, e++;
        else if (*e == 'm')
            total += v * 60000, e++;
        else if (*e == 's')
            total += v * 1000, e++;
        else
            break;
        s = e;
    }
    return total;
}

static int xr_nft_ipv4(const char *s, xr_paddr_t *a)
{
    unsigned b[4];
    if (sscanf(s, "%u.%u.%u.%u", &b[0], &b[1], &b[2], &b[3]) != 4)
        return XR_ERROR;
    memset(a, 0, sizeof(*a));
    a->family = 4;
    for (int i = 0; i < 4; i++)
        a->addr[i] = (uint8_t) b[i];
    return XR_OK;
}

static int xr_nft_list(xr_fw_entry_t *out, int max, char *err, size_t errlen)
{
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "list set inet %s open4", xr_nft_table);
    if (xr_nft_run(cmd, err, errlen) != XR_OK)
        return -1;
    const char *p = strstr(nft_ctx_get_output_buffer(xr_nft), "elements = {");
    int n = 0;
    if (p == NULL)
        return 0;
    p += strlen("elements = {");
    /* Each element: "S . D . tcp . SP . DP counter packets N bytes M
     * timeout T expires E", separated by commas. */
    while (n < max && *p != '\0' && *p != '}') {
        char s[64], d[64], proto[8], exp[32] = "0ms";
        unsigned sp, dp;
        unsigned long long pk = 0, by = 0;
        int used = 0;
        while (*p == ' ' || *p == '\t' || *p == '\n' || *p == ',')
            p++;
        if (*p == '}' || *p == '\0')
            break;
        if (sscanf(p, "%63s . %63s . %7s . %u . %u%n", s, d, proto, &sp, &dp, &used) != 5)
            break;
        const char *end = p + used;
        size_t len = strcspn(end, ",}");
        char rest[256];
        snprintf(rest, sizeof(rest), "%.*s", (int) XR_MIN(len, sizeof(rest) - 1), end);
        const char *c = strstr(rest, "counter packets ");
        if (c != NULL)
            sscanf(c, "counter packets %llu bytes %llu", &pk, &by);
        const char *x = strstr(rest, "expires ");
        if (x != NULL)
            sscanf(x, "expires %31s", exp);
        xr_fw_entry_t *e = &out[n];
        memset(e, 0, sizeof(*e));
        if (xr_nft_ipv4(s, &e->src) == XR_OK && xr_nft_ipv4(d, &e->dst) == XR_OK) {
            e->src.port = (uint16_t) sp;
            e->dst.port = (uint16_t) dp;
            e->proto = strcmp(proto, "udp") == 0 ? XR_PROTO_UDP : XR_PROTO_TCP;
            e->packets = pk;
            e->bytes = by;
            e->expires_ms = xr_nft_duration(exp);
            n++;
        }
        p = end + len;
    }
    return n;
}

/* The table stays: a reload's new worker has already made it anew, and
 * what is in it expires by itself. */
static void xr_nft_stop(void)
{
    if (xr_nft != NULL)
        nft_ctx_free(xr_nft);
    xr_nft = NULL;
}

const xr_fw_backend_t xr_fw_nft = {
    .name = "nftables",
    .start = xr_nft_start,
    .open = xr_nft_open,
    .remove = xr_nft_remove,
    .list = xr_nft_list,
    .stop = xr_nft_stop,
};
