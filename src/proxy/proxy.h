/*
 * proxy.h: the transparent proxy front door (thesis ch. 7): connections
 * that iptables or nftables REDIRECT (or TPROXY) sent here are relayed to
 * their original destination, or through a parent proxy, as a circuit or
 * as HTTP, on the relay engine's connections with continuity.
 */
#ifndef XR_PROXY_H
#define XR_PROXY_H

#include "relay/conn.h"

/* The front door (proxy_door.c). */
extern const struct xr_frontdoor_s xr_proxy_frontdoor;

/* An accepted connection of proxy block rt (the caller reserved its slot
 * in xr_shm->active): found its original destination and start it. */
void xr_proxy_start(uv_loop_t *loop, xr_relay_rt_t *rt, int fd,
                    const struct sockaddr_storage *client, uint64_t id);
/* Where c goes next: its parent proxies in order, then its original
 * destination; NULL when all were tried. */
const struct sockaddr_storage *xr_proxy_target(xr_conn_t *c, socklen_t *len);
/* The stage of mode (XR_PROXY_HTTP: the HTTP handler). */
const xr_stage_t *xr_proxy_stage(uint32_t mode);

#endif
