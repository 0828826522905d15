/*
 * agent_conf.c: the agent's configuration (see agent.h): the `agent:`
 * block with its peer agents, the `applications:` policy, and the checks
 * made once the whole file is read.
 *
 * It runs in the master while a generation is loaded, never in the
 * agent's worker, so it shares nothing with the running agent but the
 * structures it fills in.
 */
#include "agent/agent.h"
#include "core/frontdoor.h"
#include "relay/relay.h"
#include "tls/tls.h"

#include <stdio.h>
#include <string.h>

#define GO(f) offsetof(xr_agent_conf_t, f)
#define A     XR_CTX_AGENT

static int xr_agent_set_peers(xr_conf_t *cf, const xr_node_t *n, void *conf,
                              const xr_directive_t *d);

#define PO(f) offsetof(xr_peer_conf_t, f)
const xr_directive_t xr_peer_directives[] = {
    {"networks", XR_CTX_PEER, XR_T_STR_LIST, PO(networks_text), NULL, 0, 0, NULL, NULL,
     XR_DIR_REQUIRED, "Official addresses this agent serves (its official_pool, as networks)."},
    {"agent", XR_CTX_PEER, XR_T_ADDR, PO(agent), NULL, 0, 0, NULL, NULL, XR_DIR_REQUIRED,
     "Where to reach it (its agent listen address)."},
    {"match", XR_CTX_PEER, XR_T_STR_LIST, PO(match), NULL, 0, 0, NULL, NULL, XR_DIR_REQUIRED,
     "Its certificates, when it connects to us: subject, RDN, SAN or sha256:KEY patterns."},
    {"tls", XR_CTX_PEER, XR_T_CUSTOM, PO(tls), NULL, 0, 0, (const char *const[]){"tls block", NULL},
     xr_tls_set_client, XR_DIR_REQUIRED,
     "How to speak TLS to it: ca, certificate, key, server_name."},
    XR_DIRECTIVES_END};

static const char *const xr_reach_names[] = {"auto", "inbound", "connect_out", NULL};

const xr_directive_t xr_agent_directives[] = {
    {"listen", A, XR_T_ADDR, GO(listen), NULL, 0, 0, NULL, NULL, XR_DIR_REQUIRED,
     "Address libraries and other agents connect to (TLS, mutual authentication)."},
    {"tls", A, XR_T_CUSTOM, GO(tls), NULL, 0, 0, (const char *const[]){"tls block", NULL},
     xr_tls_set_server, XR_DIR_REQUIRED,
     "The agent's certificate and key, and client_ca: the CA of applications and agents."},
    {"networks", A, XR_T_STR_LIST, GO(networks_text), NULL, 0, 0, NULL, NULL, 0,
     "The private networks this agent serves: their servers get official addresses."},
    {"official_pool", A, XR_T_STR_LIST, GO(pool_text), NULL, 0, 0, NULL, NULL, 0,
     "Public addresses and ports leased to servers: ADDR:PORT-PORT entries."},
    {"lease_time", A, XR_T_DURATION, GO(lease_time), "30s", 1000, 86400000, NULL, NULL, 0,
     "How long a registration lives without a heartbeat."},
    {"state_file", A, XR_T_PATH, GO(state_file), NULL, 0, 0, NULL, NULL, 0,
     "Where leases are kept across restarts (none: in memory only)."},
    {"handshake_timeout", A, XR_T_DURATION, GO(handshake_timeout), "10s", 100, 600000, NULL, NULL,
     0, "Time a new control connection has for TLS and HELLO."},
    {"idle_session_timeout", A, XR_T_DURATION, GO(idle_session_timeout), "60s", 100, 86400000, NULL,
     NULL, 0,
     "Time a library's control session may go without a request while it holds no "
     "registration and waits on no answer; then it is closed."},
    {"peers", A, XR_T_CUSTOM, 0, NULL, 0, 0, (const char *const[]){"peer agents", NULL},
     xr_agent_set_peers, 0,
     "Other agents: the official networks each serves, its address, certificate and TLS."},
    {"admin_socket", A, XR_T_PATH, GO(admin_socket), NULL, 0, 0, NULL, NULL, 0,
     "UNIX socket (mode 0600) that `xray status` reads the agent's state from."},
    {"incoming", A, XR_T_ENUM, GO(incoming), "auto", 0, 0, xr_reach_names, NULL, 0,
     "How relayed connections reach servers: auto (dial the server, else ask it to connect "
     "out), inbound (dial only) or connect_out (ask only)."},
    {"continuity", A, XR_T_FLAG, GO(continuity), "off", 0, 0, NULL, NULL, 0,
     "Keep linked relay points across worker crashes and binary upgrades (snapshots in "
     "state_dir, their TLS record layers included)."},
    {"traversal", A, XR_T_ENUM, GO(traversal), "relay", 0, 0,
     (const char *const[]){"relay", "open", NULL}, NULL, 0,
     "How applications' connections cross the firewalls unless an application says: relay "
     "(through the agents, XRAY) or open (directly through openings in the firewall of this "
     "host, CODO; needs a firewall block)."},
    {"open_pool", A, XR_T_STR_LIST, GO(open_pool_text), NULL, 0, 0, NULL, NULL, 0,
     "Public addresses and ports a client in networks is translated to for an opening, one "
     "per connection: ADDR:PORT-PORT entries, apart from official_pool and from the ports "
     "the firewall's own masquerading uses."},
    XR_DIRECTIVES_END};

#undef A

/* ---- configuration ------------------------------------------------------- */

int xr_agent_set(xr_conf_t *cf, const xr_node_t *n, void *conf, const xr_directive_t *d)
{
    xr_gen_t *g = cf->user;
    if (n->type != XR_NODE_MAP)
        return xr_conf_error(cf, n, "expected a mapping of agent settings");
    if (xr_agent_gen(g)->agent != NULL)
        return xr_conf_error(cf, n, "agent is already defined");
    xr_agent_conf_t *a = xr_conf_alloc(cf, sizeof(*a));
    a->node = n;
    if (xr_conf_defaults(cf, xr_agent_directives, XR_CTX_AGENT, a, NULL) != XR_OK ||
        xr_conf_block(cf, n, xr_agent_directives, XR_CTX_AGENT, a, NULL, NULL) != XR_OK)
        return XR_ERROR;
    if (a->tls->verify != XR_VERIFY_REQUIRED)
        return xr_conf_error(cf, xr_node_get(n, "tls"),
                             "the agent identifies applications by certificate: its tls needs "
                             "client_ca and verify_client: required");
    a->tls->keep_peer = 1;
    if (a->incoming != XR_REACH_CONNECT_OUT && (a->dial_tls = xr_tls_client_of(cf, a->tls)) == NULL)
        return XR_ERROR;
    a->networks = xr_conf_alloc(cf, (a->networks_text.n + 1) * sizeof(xr_net_rule_t));
    const xr_node_t *nn = xr_node_get(n, "networks");
    for (size_t i = 0; i < a->networks_text.n; i++) {
        char why[160];
        xr_net_rule_t *r = &a->networks[a->nnetworks];
        if (xr_net_rule_parse(a->networks_text.items[i], r, why, sizeof(why)) != XR_OK ||
            r->family == 0 || r->port_lo != 1 || r->port_hi != 65535) {
            return xr_conf_error(cf, nn, "\"%s\": %s", a->networks_text.items[i],
                                 r->family == 0 ? "expected a network such as 198.18.2.0/24" : why);
        }
        a->nnetworks++;
    }
    a->pool = xr_conf_alloc(cf, (a->pool_text.n + 1) * sizeof(xr_pool_range_t));
    const xr_node_t *pn = xr_node_get(n, "official_pool");
    for (size_t i = 0; i < a->pool_text.n; i++) {
        char why[160];
        if (xr_pool_range_parse(a->pool_text.items[i], &a->pool[a->npool], why, sizeof(why)) !=
            XR_OK)
            return xr_conf_error(cf, pn, "\"%s\": %s", a->pool_text.items[i], why);
        a->npool++;
    }
    a->open_pool = xr_conf_alloc(cf, (a->open_pool_text.n + 1) * sizeof(xr_pool_range_t));
    const xr_node_t *on = xr_node_get(n, "open_pool");
    for (size_t i = 0; i < a->open_pool_text.n; i++) {
        char why[160];
        if (xr_pool_range_parse(a->open_pool_text.items[i], &a->open_pool[a->nopen_pool], why,
                                sizeof(why)) != XR_OK)
            return xr_conf_error(cf, on, "\"%s\": %s", a->open_pool_text.items[i], why);
        if (a->open_pool[a->nopen_pool].family != 4)
            return xr_conf_error(cf, on, "\"%s\": openings are IPv4 only",
                                 a->open_pool_text.items[i]);
        a->nopen_pool++;
    }
    if (a->nnetworks > 0 && a->npool == 0)
        return xr_conf_error(cf, n,
                             "servers in networks need official addresses: add official_pool");
    xr_agent_gen_mut(cf)->agent = a;
    return XR_OK;
}

static int xr_agent_set_peers(xr_conf_t *cf, const xr_node_t *n, void *conf,
                              const xr_directive_t *d)
{
    xr_agent_conf_t *a = conf;
    if (n->type != XR_NODE_SEQ)
        return xr_conf_error(cf, n, "expected a sequence of peer agents (\"- agent: ...\")");
    a->peers = xr_conf_alloc(cf, (n->n ? n->n : 1) * sizeof(xr_peer_conf_t));
    for (size_t i = 0; i < n->n; i++) {
        const xr_node_t *b = n->items[i];
        xr_peer_conf_t *p = &a->peers[a->npeers];
        if (b->type != XR_NODE_MAP)
            return xr_conf_error(cf, b,
                                 "expected a peer agent (a mapping with networks, agent, "
                                 "match and tls)");
        p->node = b;
        if (xr_conf_defaults(cf, xr_peer_directives, XR_CTX_PEER, p, NULL) != XR_OK ||
            xr_conf_block(cf, b, xr_peer_directives, XR_CTX_PEER, p, NULL, NULL) != XR_OK)
            return XR_ERROR;
        if (p->tls->certificate == NULL)
            return xr_conf_error(cf, xr_node_get(b, "tls"),
                                 "agents authenticate each other: the peer's tls needs the "
                                 "agent's certificate and key");
        p->tls->keep_peer = 1;
        p->networks = xr_conf_alloc(cf, (p->networks_text.n + 1) * sizeof(xr_net_rule_t));
        for (size_t j = 0; j < p->networks_text.n; j++) {
            char why[160];
            xr_net_rule_t *r = &p->networks[p->nnetworks];
            if (xr_net_rule_parse(p->networks_text.items[j], r, why, sizeof(why)) != XR_OK ||
                r->family == 0)
                return xr_conf_error(cf, xr_node_get(b, "networks"), "\"%s\": %s",
                                     p->networks_text.items[j],
                                     r->family == 0 ? "expected a network" : why);
            p->nnetworks++;
        }
        a->npeers++;
    }
    return XR_OK;
}

int xr_agent_set_applications(xr_conf_t *cf, const xr_node_t *n, void *conf,
                              const xr_directive_t *d)
{
    xr_agent_gen_t *ag = xr_agent_gen_mut(cf);
    ag->policy = xr_conf_alloc(cf, sizeof(*ag->policy));
    ag->policy_node = n;
    return xr_policy_parse(cf, n, ag->policy);
}

int xr_agent_validate(xr_conf_t *cf, xr_gen_t *g)
{
    const xr_agent_gen_t *ag = xr_agent_gen(g);
    if (ag->policy != NULL && ag->agent == NULL)
        return xr_conf_error(cf, ag->policy_node,
                             "applications are the agent's policy: add an agent block");
    /* Each application's relay points run as a relay block of their own:
     * its filters, the top-level buffer and timeout settings, counters in
     * the shared segment under "agent:NAME". */
    const xr_frontdoor_t *fw = xr_frontdoor_find("firewall");
    int have_fw = fw != NULL && xr_gen_fdconf_get(g, fw) != NULL;
    for (size_t i = 0; ag->policy != NULL && i < ag->policy->napps; i++) {
        xr_app_conf_t *app = ag->policy->apps[i];
        app->open = app->traversal_set == XR_TRAVERSAL_OPEN ||
                    (app->traversal_set == XR_TRAVERSAL_INHERIT && ag->agent != NULL &&
                     ag->agent->traversal == 1);
        if (app->open) {
            const xr_node_t *tn = xr_node_get(app->node, "traversal");
            if (tn == NULL)
                tn = xr_node_get(ag->agent->node, "traversal");
            if (!have_fw)
                return xr_conf_error(cf, tn,
                                     "traversal: open makes openings in this host's firewall: "
                                     "add a firewall block");
            if (ag->agent->nnetworks > 0 && ag->agent->nopen_pool == 0 && app->noutbound > 0)
                return xr_conf_error(cf, tn,
                                     "traversal: open for clients in networks translates each "
                                     "to a reserved public port: add open_pool to the agent");
        }
        xr_relay_conf_t *rc = xr_gen_add_relay(cf, g);
        rc->frontdoor = &xr_agent_frontdoor;
        if (xr_conf_defaults(cf, xr_core_directives, XR_CTX_RELAY, rc, NULL) != XR_OK)
            return XR_ERROR;
        size_t len = strlen(app->name) + sizeof("agent:");
        rc->name = xr_conf_alloc(cf, len);
        snprintf(rc->name, len, "agent:%s", app->name);
        rc->filters = app->filters;
        rc->nfilters = app->nfilters;
        rc->continuity = ag->agent != NULL && ag->agent->continuity;
        rc->node = app->node;
        app->relay = rc;
    }
    return XR_OK;
}
