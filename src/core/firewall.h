/*
 * firewall.h: the firewall a front door may open pinholes in (CODO §3-6),
 * as the rest of xrayd sees it: an interface, filled in at run time by
 * the front door that drives a real firewall (src/fw, on nftables), so
 * that the agent, which asks for openings, and the core name no backend.
 *
 * The agent runs on the firewall host and, for applications whose
 * traversal is `open`, lets one connection through directly instead of
 * relaying it: an opening for its exact 5-tuple, and where the network
 * is behind NAT a binding for it (DNAT to a server's local address, SNAT
 * of a client to an address reserved for it).  Openings and bindings
 * expire by themselves, and the connection they admitted goes on under
 * the firewall's connection tracking.  All of it runs in the one worker
 * that serves the agent.
 */
#ifndef XR_FIREWALL_H
#define XR_FIREWALL_H

#include <stddef.h>
#include <stdint.h>

#include "common/proto.h"

/* How an opening's traffic is translated at this box. */
typedef enum {
    XR_FW_NAT_NONE = 0,
    XR_FW_NAT_DNAT = 1, /* to nat_addr: a server's local address behind the box */
    XR_FW_NAT_SNAT = 2  /* as nat_addr: the public address reserved for a client */
} xr_fw_nat_t;

/* One opening: the 5-tuple of the first packet as it reaches the box
 * (before any translation), and the translation it gets. */
typedef struct {
    uint8_t proto; /* XR_PROTO_TCP or XR_PROTO_UDP */
    xr_paddr_t src, dst;
    int nat; /* xr_fw_nat_t */
    xr_paddr_t nat_addr;
} xr_fw_open_t;

/* An opening as the firewall shows it (list). */
typedef struct {
    uint8_t proto;
    xr_paddr_t src, dst; /* as the filter sees them (after DNAT) */
    uint64_t packets, bytes;
    int64_t expires_ms;
} xr_fw_entry_t;

typedef struct {
    const char *name;  /* "nftables" */
    const char *where; /* "table inet xrayd" */
    uint32_t mark;     /* the conntrack mark of admitted connections */
    /* Add opening o for timeout_ms: XR_OK, or XR_ERROR with err. */
    int (*open)(const xr_fw_open_t *o, int64_t timeout_ms, char *err, size_t errlen);
    int (*remove)(const xr_fw_open_t *o, char *err, size_t errlen);
    /* Up to max openings into out; how many, or -1 with err. */
    int (*list)(xr_fw_entry_t *out, int max, char *err, size_t errlen);
    /* How long an opening waits for its connection (ms). */
    int64_t (*opening_timeout)(void);
    /* How long the box's connection tracking keeps an idle connection of
     * proto (ms). */
    int64_t (*state_timeout)(uint8_t proto);
} xr_firewall_t;

/* The firewall of this worker, or NULL (none configured, or it failed to
 * start: nothing is opened then). */
const xr_firewall_t *xr_firewall(void);
void xr_firewall_set(const xr_firewall_t *fw);

#endif
