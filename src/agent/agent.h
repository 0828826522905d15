/*
 * agent.h: the XRAY agent (DESIGN "The agent"): the `agent:` block and
 * the control service that libraries talk to (html-docs/protocol.html).
 *
 * Server binding (XRAY §5.1): HELLO, REGISTER, REFRESH, UNREGISTER, with
 * official addresses leased from the pool, soft state kept alive by
 * heartbeats and persisted in the state file.  Connection setup (§5.2):
 * CONNECT from a library, PEER_CONNECT between agents, relay points bound
 * to a token and the certificates expected on each side, joined into a
 * relay with the application's filters once both sides are linked.  One
 * worker of a generation serves the agent, so its tables need no sharing.
 */
#ifndef XR_AGENT_H
#define XR_AGENT_H

#include <uv.h>

#include "agent/lease.h"
#include "agent/policy.h"
#include "core/gen.h"

#define XR_CTX_AGENT 0x40
#define XR_CTX_PEER  0x80

/* Another agent: the official networks it serves, where to reach it, the
 * certificates that are it, and the TLS to speak to it. */
typedef struct {
    xr_str_list_t networks_text;
    xr_net_rule_t *networks;
    size_t nnetworks;
    xr_addr_t agent;
    xr_str_list_t match;
    struct xr_tls_conf_s *tls;
    const xr_node_t *node;
} xr_peer_conf_t;

extern const xr_directive_t xr_peer_directives[];

typedef struct xr_agent_conf_s {
    xr_addr_t listen;
    struct xr_tls_conf_s *tls;
    xr_str_list_t networks_text;
    xr_str_list_t pool_text;
    int64_t lease_time;
    char *state_file;
    int64_t handshake_timeout;
    int64_t idle_session_timeout;
    char *admin_socket;
    int incoming;   /* xr_incoming_t */
    int continuity; /* relay points survive a worker's crash */
    int traversal;  /* applications' default: 0 relay, 1 open */
    xr_str_list_t open_pool_text;
    /* parsed */
    xr_net_rule_t *networks;
    size_t nnetworks;
    xr_pool_range_t *pool;
    size_t npool;
    xr_pool_range_t *open_pool; /* public ports reserved for clients' openings (SNAT) */
    size_t nopen_pool;
    xr_peer_conf_t *peers;
    size_t npeers;
    struct xr_tls_conf_s *dial_tls; /* the agent's certificate, as a client of servers */
    const xr_node_t *node;
} xr_agent_conf_t;

/* How a server agent reaches a server for a relayed connection (XRAY
 * §5.2 step 6): dial its local address (INCOMING mode 1), have its
 * library connect out to the relay point (mode 2, GCB), or dial first and
 * fall back to mode 2 when the server cannot be reached. */
typedef enum { XR_REACH_AUTO = 0, XR_REACH_INBOUND, XR_REACH_CONNECT_OUT } xr_reach_t;

extern const xr_directive_t xr_agent_directives[];

/* What the agent keeps of a generation (its front door's slot in it). */
typedef struct {
    xr_agent_conf_t *agent;     /* the agent: block, or NULL */
    struct xr_policy_s *policy; /* applications:, or NULL */
    const xr_node_t *policy_node;
} xr_agent_gen_t;

extern const struct xr_frontdoor_s xr_agent_frontdoor;

/* g's agent settings (all NULL when g has none). */
const xr_agent_gen_t *xr_agent_gen(const xr_gen_t *g);
/* The same while parsing, made on first use. */
xr_agent_gen_t *xr_agent_gen_mut(xr_conf_t *cf);

/* Setters of the top-level `agent` and `applications` keys. */
int xr_agent_set(xr_conf_t *cf, const xr_node_t *n, void *conf, const xr_directive_t *d);
int xr_agent_set_applications(xr_conf_t *cf, const xr_node_t *n, void *conf,
                              const xr_directive_t *d);
/* Checks across keys, after the whole file is read. */
int xr_agent_validate(xr_conf_t *cf, xr_gen_t *g);

/* In the agent's worker: serve the control protocol on listen_fd. */
int xr_agent_start(uv_loop_t *loop, xr_gen_t *g, int listen_fd);
/* Stop accepting; close every control session (leases stay in the state
 * file for the next agent). */
void xr_agent_stop(void);
/* Sessions still open (the worker waits for none when stopping). */
size_t xr_agent_sessions(void);

#endif
