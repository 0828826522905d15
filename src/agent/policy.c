/*
 * policy.c: the agent's applications - parsing, matching an identity,
 * and deciding outbound destinations (see policy.h).
 */
#include "agent/policy.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define AO(f) offsetof(xr_app_conf_t, f)

static int xr_set_outbound(xr_conf_t *cf, const xr_node_t *n, void *conf, const xr_directive_t *d);
static int xr_set_servers(xr_conf_t *cf, const xr_node_t *n, void *conf, const xr_directive_t *d);
static int xr_set_app_filters(xr_conf_t *cf, const xr_node_t *n, void *conf,
                              const xr_directive_t *d);

const xr_directive_t xr_app_directives[] = {
    {"name", XR_CTX_APP, XR_T_STRING, AO(name), NULL, 0, 0, NULL, NULL, XR_DIR_REQUIRED,
     "Name of the application in logs and status."},
    {"match", XR_CTX_APP, XR_T_STR_LIST, AO(match), NULL, 0, 0, NULL, NULL, XR_DIR_REQUIRED,
     "Certificates that are this application: subject, RDN, SAN or sha256:KEY patterns."},
    {"inbound", XR_CTX_APP, XR_T_FLAG, AO(inbound), "off", 0, 0, NULL, NULL, 0,
     "May register servers that accept connections from other networks."},
    {"servers", XR_CTX_APP, XR_T_CUSTOM, 0, NULL, 0, 0, (const char *const[]){"rules", NULL},
     xr_set_servers, 0,
     "Local addresses it may register servers at besides the one it connects from: "
     "ADDR[/PREFIX][:PORTS] rules."},
    {"outbound", XR_CTX_APP, XR_T_CUSTOM, 0, NULL, 0, 0, (const char *const[]){"rules", NULL},
     xr_set_outbound, 0,
     "Destinations it may connect to: ADDR[/PREFIX][:PORTS] rules (none: no connections)."},
    {"filters", XR_CTX_APP, XR_T_CUSTOM, 0, NULL, 0, 0,
     (const char *const[]){"filter entries", NULL}, xr_set_app_filters, 0,
     "Filter chain of its relay points: module names, or NAME: {options}."},
    {"max_relays", XR_CTX_APP, XR_T_INT, AO(max_relays), "1000", 0, 1000000, NULL, NULL, 0,
     "Relay points it may hold at once."},
    {"max_registrations", XR_CTX_APP, XR_T_INT, AO(max_registrations), "100", 0, 1000000, NULL,
     NULL, 0, "Server sockets it may register at once."},
    {"traversal", XR_CTX_APP, XR_T_ENUM, AO(traversal_set), "inherit", 0, 0,
     (const char *const[]){"inherit", "relay", "open", NULL}, NULL, 0,
     "How its connections cross the firewalls: relay (through the agents), open (directly, "
     "through openings the agents make in their firewalls), or inherit (the agent's "
     "traversal)."},
    XR_DIRECTIVES_END};

/* ---- outbound rules ------------------------------------------------------ */

static int xr_port_range(const char *s, uint16_t *lo, uint16_t *hi)
{
    if (strcmp(s, "*") == 0) {
        *lo = 1;
        *hi = 65535;
        return 0;
    }
    char *e;
    long a = strtol(s, &e, 10), b = a;
    if (e == s || a < 1 || a > 65535)
        return -1;
    if (*e == '-') {
        const char *s2 = e + 1;
        b = strtol(s2, &e, 10);
        if (e == s2 || b < a || b > 65535)
            return -1;
    }
    if (*e != '\0')
        return -1;
    *lo = (uint16_t) a;
    *hi = (uint16_t) b;
    return 0;
}

int xr_net_rule_parse(const char *text, xr_net_rule_t *r, char *why, size_t whylen)
{
    char buf[128], *host, *rest;
    memset(r, 0, sizeof(*r));
    r->text = text;
    r->port_lo = 1;
    r->port_hi = 65535;
    if (strlen(text) >= sizeof(buf)) {
        snprintf(why, whylen, "rule too long");
        return XR_ERROR;
    }
    strcpy(buf, text);

    if (buf[0] == '[') { /* [v6](/prefix)(:ports) */
        char *close = strchr(buf, ']');
        if (close == NULL) {
            snprintf(why, whylen, "missing ] after an IPv6 address");
            return XR_ERROR;
        }
        *close = '\0';
        host = buf + 1;
        rest = close + 1;
        r->family = 6;
    } else { /* v4(/prefix)(:ports), or * */
        host = buf;
        rest = buf + strcspn(buf, "/:");
        r->family = 4;
    }
    char *slash = NULL, *colon = NULL;
    if (*rest == '/') {
        slash = rest + 1;
        colon = strchr(slash, ':');
    } else if (*rest == ':') {
        colon = rest;
    } else if (*rest != '\0') {
        snprintf(why, whylen, "expected /PREFIX or :PORTS after the address");
        return XR_ERROR;
    }
    if (colon != NULL) {
        *colon = '\0';
        if (xr_port_range(colon + 1, &r->port_lo, &r->port_hi) < 0) {
            snprintf(why, whylen, "bad port or port range \"%s\" (1-65535, LO-HI or *)", colon + 1);
            return XR_ERROR;
        }
    }
    if (slash != NULL)
        slash[-1] = '\0';
    else if (r->family == 4)
        host[strcspn(host, ":")] = '\0';

    int bits = r->family == 4 ? 32 : 128;
    if (strcmp(host, "*") == 0 && r->family == 4 && slash == NULL) {
        r->family = 0; /* every address of both families */
        r->prefix = 0;
        return XR_OK;
    }
    if (inet_pton(r->family == 4 ? AF_INET : AF_INET6, host, r->addr) != 1) {
        snprintf(why, whylen, "\"%s\" is not an IPv%d address", host, r->family);
        return XR_ERROR;
    }
    r->prefix = (uint8_t) bits;
    if (slash != NULL) {
        char *e;
        long p = strtol(slash, &e, 10);
        if (e == slash || *e != '\0' || p < 0 || p > bits) {
            snprintf(why, whylen, "bad prefix length \"%s\" (0-%d)", slash, bits);
            return XR_ERROR;
        }
        r->prefix = (uint8_t) p;
    }
    /* Host bits set below the prefix are almost always a typo for another
     * network: refuse rather than silently widen or narrow. */
    for (int i = r->prefix; i < bits; i++)
        if (r->addr[i / 8] & (0x80 >> (i % 8))) {
            snprintf(why, whylen, "%s has host bits set beyond /%d", host, r->prefix);
            return XR_ERROR;
        }
    return XR_OK;
}

/* A rule or a list of rules (outbound, servers) into *rules and *n. */
static int xr_set_rules(xr_conf_t *cf, const xr_node_t *n, xr_net_rule_t **rules, size_t *nrules)
{
    size_t count = n->type == XR_NODE_SEQ ? n->n : 1;
    if (n->type == XR_NODE_MAP)
        return xr_conf_error(cf, n, "expected a rule or a list of rules (ADDR[/PREFIX][:PORTS])");
    *rules = xr_conf_alloc(cf, (count ? count : 1) * sizeof(xr_net_rule_t));
    *nrules = 0;
    for (size_t i = 0; i < count; i++) {
        const xr_node_t *item = n->type == XR_NODE_SEQ ? n->items[i] : n;
        char why[160];
        if (item->type != XR_NODE_SCALAR)
            return xr_conf_error(cf, item, "expected a rule such as 198.18.2.0/24:443");
        const char *text = xr_conf_strdup(cf, item->str, item->slen);
        if (xr_net_rule_parse(text, &(*rules)[*nrules], why, sizeof(why)) != XR_OK)
            return xr_conf_error(cf, item, "%s", why);
        (*nrules)++;
    }
    return XR_OK;
}

static int xr_set_outbound(xr_conf_t *cf, const xr_node_t *n, void *conf, const xr_directive_t *d)
{
    xr_app_conf_t *app = conf;
    return xr_set_rules(cf, n, &app->outbound, &app->noutbound);
}

static int xr_set_servers(xr_conf_t *cf, const xr_node_t *n, void *conf, const xr_directive_t *d)
{
    xr_app_conf_t *app = conf;
    return xr_set_rules(cf, n, &app->servers, &app->nservers);
}

static int xr_set_app_filters(xr_conf_t *cf, const xr_node_t *n, void *conf,
                              const xr_directive_t *d)
{
    xr_app_conf_t *app = conf;
    return xr_gen_filters(cf, n, &app->filters, &app->nfilters);
}

int xr_policy_parse(xr_conf_t *cf, const xr_node_t *seq, xr_policy_t *p)
{
    if (seq->type != XR_NODE_SEQ)
        return xr_conf_error(cf, seq, "expected a sequence of applications (\"- name: ...\")");
    p->apps = xr_conf_alloc(cf, (seq->n ? seq->n : 1) * sizeof(*p->apps));
    p->napps = 0;
    unsigned saved = cf->ctx;
    for (size_t i = 0; i < seq->n; i++) {
        const xr_node_t *b = seq->items[i];
        if (b->type != XR_NODE_MAP)
            return xr_conf_error(cf, b, "expected an application (a mapping with name and match)");
        xr_app_conf_t *app = xr_conf_alloc(cf, sizeof(*app));
        app->node = b;
        cf->ctx = XR_CTX_APP;
        int rc = xr_conf_defaults(cf, xr_app_directives, XR_CTX_APP, app, NULL) == XR_OK &&
                 xr_conf_block(cf, b, xr_app_directives, XR_CTX_APP, app, NULL, NULL) == XR_OK;
        cf->ctx = saved;
        if (!rc)
            return XR_ERROR;
        for (size_t j = 0; j < p->napps; j++)
            if (strcmp(p->apps[j]->name, app->name) == 0)
                return xr_conf_error(cf, xr_node_get(b, "name"),
                                     "application \"%s\" is already defined at line %d", app->name,
                                     p->apps[j]->node->line);
        p->apps[p->napps++] = app;
    }
    return XR_OK;
}

/* ---- decisions ----------------------------------------------------------- */

const xr_app_conf_t *xr_policy_find(const xr_policy_t *p, const xr_identity_t *id)
{
    for (size_t i = 0; i < p->napps; i++)
        for (size_t j = 0; j < p->apps[i]->match.n; j++)
            if (xr_identity_match(id, p->apps[i]->match.items[j]))
                return p->apps[i];
    return NULL;
}

/* a's address alone, "?" when it has none. */

/* Does the network family/prefix/net contain addr (of that family)? */
static int xr_in_net(uint8_t family, const uint8_t *net, int prefix, const xr_paddr_t *a)
{
    if (family != a->family)
        return 0;
    for (int i = 0; i < prefix; i++) {
        uint8_t bit = 0x80 >> (i % 8);
        if ((net[i / 8] & bit) != (a->addr[i / 8] & bit))
            return 0;
    }
    return 1;
}

int xr_net_rule_covers(const xr_net_rule_t *r, const xr_paddr_t *a)
{
    if (a->port < r->port_lo || a->port > r->port_hi)
        return 0;
    return r->family == 0 || xr_in_net(r->family, r->addr, r->prefix, a);
}

int xr_net_rules_cover_addr(const xr_net_rule_t *rules, size_t n, const xr_paddr_t *a)
{
    xr_paddr_t probe = *a;
    for (size_t i = 0; i < n; i++) {
        probe.port = rules[i].port_lo; /* the port is not the question */
        if (xr_net_rule_covers(&rules[i], &probe))
            return 1;
    }
    return 0;
}

int xr_paddr_parse(const char *text, xr_paddr_t *a)
{
    xr_net_rule_t r;
    char why[160];
    if (xr_net_rule_parse(text, &r, why, sizeof(why)) != XR_OK || r.family == 0 ||
        r.prefix != (r.family == 4 ? 32 : 128) || r.port_lo != r.port_hi ||
        strchr(text, '/') != NULL)
        return -1;
    memset(a, 0, sizeof(*a));
    a->family = r.family;
    a->port = r.port_lo;
    memcpy(a->addr, r.addr, 16);
    return 0;
}

typedef struct {
    uint8_t family, prefix;
    uint8_t net[16];
    const char *what;
} xr_special_t;

static const xr_special_t xr_specials[] = {
    {4, 8, {127}, "a loopback address"},
    {4, 8, {0}, "an unspecified address"},
    {4, 16, {169, 254}, "a link-local address"},
    {4, 4, {224}, "a multicast address"},
    {4, 32, {255, 255, 255, 255}, "the broadcast address"},
    {6, 128, {[15] = 1}, "a loopback address"},
    {6, 128, {0}, "an unspecified address"},
    {6, 10, {0xfe, 0x80}, "a link-local address"},
    {6, 8, {0xff}, "a multicast address"},
};

/* An IPv4-mapped IPv6 address is judged as the IPv4 address it maps. */
static xr_paddr_t xr_unmap(const xr_paddr_t *a)
{
    static const uint8_t mapped[12] = {[10] = 0xff, [11] = 0xff};
    xr_paddr_t v = *a;
    if (a->family == 6 && memcmp(a->addr, mapped, 12) == 0) {
        memset(&v, 0, sizeof(v));
        v.family = 4;
        v.port = a->port;
        memcpy(v.addr, a->addr + 12, 4);
    }
    return v;
}

/* Is a (unmapped) an address that would turn the agent into an attack
 * tool: loopback, unspecified, link-local, multicast, broadcast, or one of
 * self (the agent's own)?  1 with the range it lies in in *s, else 0. */
static int xr_special_of(const xr_paddr_t *a, const xr_paddr_t *self, size_t nself, xr_special_t *s)
{
    for (size_t i = 0; i < XR_ARRAY_SIZE(xr_specials); i++)
        if (xr_in_net(xr_specials[i].family, xr_specials[i].net, xr_specials[i].prefix, a)) {
            *s = xr_specials[i];
            return 1;
        }
    for (size_t i = 0; i < nself; i++) {
        xr_paddr_t me = xr_unmap(&self[i]);
        uint8_t bits = me.family == 4 ? 32 : 128;
        if (xr_in_net(me.family, me.addr, bits, a)) {
            s->family = me.family;
            s->prefix = bits;
            memcpy(s->net, me.addr, 16);
            s->what = "one of the agent's own addresses";
            return 1;
        }
    }
    return 0;
}

/* A rule names a special range when its whole network lies inside it. */
static int xr_rule_names(const xr_net_rule_t *r, const xr_special_t *s)
{
    if (r->family != s->family || r->prefix < s->prefix)
        return 0;
    xr_paddr_t a = {.family = s->family};
    memcpy(a.addr, r->addr, 16);
    return xr_in_net(s->family, s->net, s->prefix, &a);
}

/* The first of rules[0..n) that covers a and names the special range s,
 * or NULL: a wide rule that merely covers it is not enough. */
static const xr_net_rule_t *xr_rule_naming(const xr_net_rule_t *rules, size_t n,
                                           const xr_paddr_t *a, const xr_special_t *s)
{
    for (size_t i = 0; i < n; i++)
        if (xr_net_rule_covers(&rules[i], a) && xr_rule_names(&rules[i], s))
            return &rules[i];
    return NULL;
}

int xr_policy_outbound(const xr_app_conf_t *app, const xr_paddr_t *dst, const xr_paddr_t *self,
                       size_t nself, char *why, size_t whylen)
{
    char d[80];
    xr_paddr_t a = xr_unmap(dst);
    xr_paddr_str(dst, d, sizeof(d));

    const xr_net_rule_t *allow = NULL;
    for (size_t i = 0; i < app->noutbound && allow == NULL; i++)
        if (xr_net_rule_covers(&app->outbound[i], &a))
            allow = &app->outbound[i];
    if (allow == NULL) {
        snprintf(why, whylen, "application \"%s\": no outbound rule allows %s", app->name, d);
        return XR_DECLINED;
    }

    xr_special_t s;
    if (xr_special_of(&a, self, nself, &s)) {
        const xr_net_rule_t *named = xr_rule_naming(app->outbound, app->noutbound, &a, &s);
        if (named != NULL) {
            snprintf(why, whylen, "outbound rule \"%s\"", named->text);
            return XR_OK;
        }
        snprintf(why, whylen,
                 "application \"%s\": %s is %s, denied unless an outbound rule names it "
                 "(\"%s\" only covers it)",
                 app->name, d, s.what, allow->text);
        return XR_DECLINED;
    }
    snprintf(why, whylen, "outbound rule \"%s\"", allow->text);
    return XR_OK;
}

int xr_policy_register(const xr_app_conf_t *app, const xr_paddr_t *local, const xr_paddr_t *peer,
                       const xr_paddr_t *self, size_t nself, char *why, size_t whylen)
{
    char l[80], from[INET6_ADDRSTRLEN];
    xr_paddr_t a = xr_unmap(local), p = xr_unmap(peer);
    xr_paddr_str(local, l, sizeof(l));
    xr_paddr_host(&p, from, sizeof(from));

    /* The agent dials a registered address for relayed connections: the
     * same places CONNECT may never reach must not be registered either,
     * even the library's own address when it is one of them (a server on
     * the agent's host). */
    xr_special_t s;
    if (xr_special_of(&a, self, nself, &s)) {
        const xr_net_rule_t *named = xr_rule_naming(app->servers, app->nservers, &a, &s);
        if (named != NULL) {
            snprintf(why, whylen, "servers rule \"%s\"", named->text);
            return XR_OK;
        }
        snprintf(why, whylen,
                 "application \"%s\": %s is %s, refused unless a servers rule names it", app->name,
                 l, s.what);
        return XR_DECLINED;
    }
    if (xr_in_net(p.family, p.addr, p.family == 4 ? 32 : 128, &a)) {
        snprintf(why, whylen, "the address it connects from");
        return XR_OK;
    }
    for (size_t i = 0; i < app->nservers; i++)
        if (xr_net_rule_covers(&app->servers[i], &a)) {
            snprintf(why, whylen, "servers rule \"%s\"", app->servers[i].text);
            return XR_OK;
        }
    snprintf(why, whylen,
             "application \"%s\": %s is not the address it connects from (%s) and no servers "
             "rule allows it",
             app->name, l, from);
    return XR_DECLINED;
}
