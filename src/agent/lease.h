/*
 * lease.h: registrations and official addresses (XRAY §5.1).
 *
 * A registration binds a server socket's local address to an official
 * address: the local address itself when it is public, else an address
 * and port leased from the agent's official pool.  Leases are soft state:
 * a heartbeat (REFRESH) extends them, UNREGISTER or expiry ends them.
 * They are also written to the state file, so that an agent that restarts
 * keeps every official address reserved for its holder (recognised by its
 * public key) until the holder registers again naming it as `prior`, or
 * the lease runs out.
 *
 * Pure bookkeeping: no I/O except xr_leases_save/load, time passed in.
 */
#ifndef XR_LEASE_H
#define XR_LEASE_H

#include "common/proto.h"

typedef struct {
    uint8_t family;
    uint8_t addr[16];
    uint16_t lo, hi;
} xr_pool_range_t;

typedef struct {
    uint64_t handle; /* 0: reserved from the state file, not yet claimed */
    uint8_t proto;
    uint8_t leased; /* official address from the pool (else the local one) */
    xr_paddr_t official, local;
    xr_paddr_t direct; /* where direct clients go: the server's own socket */
    char key[65];      /* holder's public-key SHA-256, hex */
    char app[64];      /* application name */
    int64_t expires;   /* wall clock, ms */
    void *owner;       /* the control session, NULL when none */
} xr_lease_t;

typedef struct {
    xr_pool_range_t *ranges;
    size_t nranges;
    xr_lease_t *l;
    size_t n, cap;
    uint64_t next_handle;
} xr_leases_t;

/* Parse an official_pool entry "ADDR:PORT-PORT" (IPv6 in brackets). */
int xr_pool_range_parse(const char *text, xr_pool_range_t *r, char *why, size_t whylen);

void xr_leases_init(xr_leases_t *L, xr_pool_range_t *ranges, size_t nranges);
void xr_leases_free(xr_leases_t *L);

/* Register: official address for (proto, local); is_private says whether
 * local lies in one of the agent's private networks.  prior, if family
 * != 0, is the official address the holder had.  Returns the lease, or
 * NULL with an error code (XR_PERR_*) in *err and a reason in why. */
xr_lease_t *xr_leases_register(xr_leases_t *L, uint8_t proto, const xr_paddr_t *local,
                               int is_private, const xr_paddr_t *prior, const char *key,
                               const char *app, void *owner, int64_t now, int64_t lease_ms,
                               int *err, char *why, size_t whylen);
/* The lease with this handle held by owner, or NULL. */
xr_lease_t *xr_leases_find(xr_leases_t *L, uint64_t handle, const void *owner);
/* The live lease holding official address a for proto, or NULL. */
xr_lease_t *xr_leases_by_official(xr_leases_t *L, uint8_t proto, const xr_paddr_t *a);
void xr_leases_release(xr_leases_t *L, xr_lease_t *l);
/* Count the leases of app (for max_registrations). */
size_t xr_leases_count(const xr_leases_t *L, const char *app);
/* Count the leases owner holds. */
size_t xr_leases_owned(const xr_leases_t *L, const void *owner);
/* End leases that expired before now; calls cb for each first. */
size_t xr_leases_expire(xr_leases_t *L, int64_t now, void (*cb)(xr_lease_t *, void *), void *arg);
/* A session went away: its leases stay until they expire (the library
 * may come back), but no longer belong to it. */
void xr_leases_orphan(xr_leases_t *L, const void *owner);

/* Write every lease to path (tmp file, fsync, rename).  0, or -1 with
 * errno. */
int xr_leases_save(const xr_leases_t *L, const char *path);
/* Load reservations from path (missing file: 0 leases).  Returns the
 * number loaded, or -1 with a reason in why (file:line). */
int xr_leases_load(xr_leases_t *L, const char *path, int64_t now, char *why, size_t whylen);

#endif
