/*
 * policy.h: the agent's `applications:` - who an application is (its
 * certificate), what it may do (register servers, connect where), which
 * filters its relay points run, and its limits (XRAY §4, DESIGN "The
 * agent").
 *
 * Closed by default: an identity no entry matches may do nothing, and an
 * outbound destination must be allowed by a rule.  Destinations that would
 * turn a relay into an attack tool - loopback, unspecified, link-local,
 * multicast, broadcast, the agent's own addresses - are refused even when a
 * wide rule covers them, unless a rule names them (lies inside them): a
 * TURN server was abused exactly this way (CVE-2020-26262).  A server's
 * registered local address is held to the same rule, since the agent dials
 * it: besides that, an application registers only the address its control
 * connection comes from, or one a `servers` rule allows.
 */
#ifndef XR_POLICY_H
#define XR_POLICY_H

#include "common/proto.h"
#include "core/conf.h"
#include "core/gen.h"
#include "common/identity.h"

/* An outbound rule: ADDR[/PREFIX][:PORTS] (see html-docs). */
typedef struct {
    uint8_t family; /* 4 or 6 */
    uint8_t prefix; /* bits */
    uint8_t addr[16];
    uint16_t port_lo, port_hi;
    const char *text; /* as written, for logs */
} xr_net_rule_t;

typedef struct xr_app_conf_s {
    char *name;
    xr_str_list_t match;
    int inbound;
    xr_net_rule_t *outbound;
    size_t noutbound;
    xr_net_rule_t *servers; /* local addresses beyond its own it may register */
    size_t nservers;
    int64_t max_relays;
    int64_t max_registrations;
    int traversal_set; /* XR_TRAVERSAL_*: as written (INHERIT: the agent's) */
    int open;          /* effective: its connections go through openings (CODO) */
    xr_filter_conf_t *filters;
    size_t nfilters;
    const xr_node_t *node;
    struct xr_relay_conf_s *relay; /* the block its relay points run as */
} xr_app_conf_t;

typedef struct xr_policy_s {
    xr_app_conf_t **apps;
    size_t napps;
} xr_policy_t;

/* The directives of one `applications:` entry (context "application"). */
#define XR_CTX_APP 0x20 /* an entry of applications: */

/* How an application's connections cross the firewalls: relayed through
 * the agents (XRAY), or straight through openings (CODO). */
enum { XR_TRAVERSAL_INHERIT = 0, XR_TRAVERSAL_RELAY = 1, XR_TRAVERSAL_OPEN = 2 };

extern const xr_directive_t xr_app_directives[];

/* Parse the value of `applications:` (a sequence of entries) into p,
 * allocating from cf's pool.  XR_OK, or XR_ERROR with cf->err set. */
int xr_policy_parse(xr_conf_t *cf, const xr_node_t *seq, xr_policy_t *p);

/* Parse one outbound rule; XR_OK, or XR_ERROR with a reason in why. */
int xr_net_rule_parse(const char *text, xr_net_rule_t *r, char *why, size_t whylen);

/* Does rule r cover address and port a? */
int xr_net_rule_covers(const xr_net_rule_t *r, const xr_paddr_t *a);

/* Does one of rules[0..n) cover address a, whatever its port (networks
 * such as an agent's `networks` or a peer's)? */
int xr_net_rules_cover_addr(const xr_net_rule_t *rules, size_t n, const xr_paddr_t *a);

/* Parse "ADDR:PORT" or "[V6]:PORT" (one address, one port).  0 or -1. */
int xr_paddr_parse(const char *text, xr_paddr_t *a);

/* The first application whose match patterns match id, or NULL. */
const xr_app_conf_t *xr_policy_find(const xr_policy_t *p, const xr_identity_t *id);

/* May app connect to dst?  XR_OK with the allowing rule in why, or
 * XR_DECLINED with a sentence naming the application, the destination and
 * the rule (or its absence) in why.  self lists the agent's own addresses
 * (port 0 in each: any port). */
int xr_policy_outbound(const xr_app_conf_t *app, const xr_paddr_t *dst, const xr_paddr_t *self,
                       size_t nself, char *why, size_t whylen);

/* May app register a server at local, over a control connection from
 * peer?  Its own address (peer's) is allowed, and any a servers rule
 * covers; the addresses xr_policy_outbound denies are refused unless a
 * servers rule names them, even when they are peer's.  XR_OK with what
 * allowed it in why, or XR_DECLINED with a sentence naming the
 * application, the address and the reason in why.  self as for
 * xr_policy_outbound. */
int xr_policy_register(const xr_app_conf_t *app, const xr_paddr_t *local, const xr_paddr_t *peer,
                       const xr_paddr_t *self, size_t nself, char *why, size_t whylen);

#endif
