/*
 * agent_door.c: the XRAY agent's front door - its control port (where
 * libraries and peer agents speak the control protocol and overlay links
 * arrive) and the relay blocks it makes, one per application.
 */
#include "core/xrayd.h"
#include "agent/agent.h"
#include "core/conf.h"
#include "core/frontdoor.h"
#include "event/listener.h"
#include "core/log.h"

const xr_agent_gen_t *xr_agent_gen(const xr_gen_t *g)
{
    static const xr_agent_gen_t none;
    const xr_agent_gen_t *ag = xr_gen_fdconf_get(g, &xr_agent_frontdoor);
    return ag != NULL ? ag : &none;
}

xr_agent_gen_t *xr_agent_gen_mut(xr_conf_t *cf)
{
    void **slot = xr_gen_fdconf(cf->user, &xr_agent_frontdoor);
    if (*slot == NULL)
        *slot = xr_conf_alloc(cf, sizeof(xr_agent_gen_t));
    return *slot;
}

static const xr_directive_t xr_agent_main_directives[] = {
    {"agent", XR_CTX_MAIN, XR_T_CUSTOM, 0, NULL, 0, 0, (const char *const[]){"agent block", NULL},
     xr_agent_set, 0, "Run the XRAY agent: its control address, TLS, networks and official pool."},
    {"applications", XR_CTX_MAIN, XR_T_CUSTOM, 0, NULL, 0, 0,
     (const char *const[]){"application entries", NULL}, xr_agent_set_applications, 0,
     "The agent's policy: applications by certificate, what each may do."},
    XR_DIRECTIVES_END};

static const xr_frontdoor_table_t xr_agent_tables[] = {
    {"agent", xr_agent_directives, XR_CTX_AGENT},
    {"application", xr_app_directives, XR_CTX_APP},
    {"peer", xr_peer_directives, XR_CTX_PEER},
    {NULL, NULL, 0}};

static int xr_agent_active(const xr_gen_t *g)
{
    return xr_agent_gen(g)->agent != NULL;
}

static const xr_addr_t *xr_agent_listen_addr(const xr_gen_t *g)
{
    const xr_agent_conf_t *a = xr_agent_gen(g)->agent;
    return a != NULL ? &a->listen : NULL;
}

static int xr_agent_door_start(uv_loop_t *loop, xr_gen_t *g)
{
    const xr_agent_conf_t *a = xr_agent_gen(g)->agent;
    int fd = xr_listeners_fd(&a->listen);
    if (fd < 0 || xr_agent_start(loop, g, fd) != XR_OK) {
        xr_log(XR_LOG_EMERG, "cannot start the agent on %s", a->listen.text);
        return XR_ERROR;
    }
    return XR_OK;
}

static const char *xr_agent_block_kind(const xr_relay_conf_t *rc)
{
    return "agent";
}

const xr_frontdoor_t xr_agent_frontdoor = {
    .name = "agent",
    .directives = xr_agent_main_directives,
    .tables = xr_agent_tables,
    .validate = xr_agent_validate,
    .active = xr_agent_active,
    .block_kind = xr_agent_block_kind,
    .listen_addr = xr_agent_listen_addr,
    .single = 1,
    .start = xr_agent_door_start,
    .stop = xr_agent_stop,
};
