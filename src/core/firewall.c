/*
 * firewall.c: the slot the firewall front door fills (firewall.h).
 */
#include "core/firewall.h"

static const xr_firewall_t *xr_firewall_current;

const xr_firewall_t *xr_firewall(void)
{
    return xr_firewall_current;
}

void xr_firewall_set(const xr_firewall_t *fw)
{
    xr_firewall_current = fw;
}
