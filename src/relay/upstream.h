/*
 * upstream.h: picking an upstream server for a relay, with per-worker
 * health: a server that failed upstream_max_fails connects is skipped for
 * upstream_fail_timeout (unless every server is down).
 */
#ifndef XR_UPSTREAM_H
#define XR_UPSTREAM_H

#include "core/gen.h"

#include <stdatomic.h>

typedef struct {
    int64_t down_until; /* monotonic ms */
    int64_t fails;
    int64_t active; /* relays of this worker on this server */
} xr_peer_t;

/* Where one worker counts a block's connections.  A worker points them
 * into the memory it shares with the master and its siblings
 * (xr_shm_bind); until then they are the block's own (`own`), so a test
 * or a fuzzer drives the engine without any process-wide state. */
typedef struct {
    _Atomic int64_t *active;        /* live, every worker's: the limit */
    _Atomic int64_t *worker_active; /* live, this worker's */
    _Atomic int64_t *accepted;      /* ever accepted */
    _Atomic uint64_t *resumed;      /* taken over from a dead worker */
    _Atomic uint64_t *bytes;        /* [2]: read from the client, from the upstream */
} xr_counters_t;

typedef struct {
    _Atomic int64_t active, worker_active, accepted;
    _Atomic uint64_t resumed, bytes[2];
} xr_counters_own_t;

/* A relay block's state in one worker. */
typedef struct xr_relay_rt_s {
    const xr_relay_conf_t *rc;
    xr_peer_t *peers;
    size_t rr;
    int64_t active;    /* this worker's relays of this block */
    size_t *state_off; /* per filter: offset of its per-relay state */
    size_t state_total;
    int has_data_filters;
    int has_log_hooks; /* then the session's local address is wanted */
    xr_counters_t ctr;
    xr_counters_own_t own;
} xr_relay_rt_t;

void xr_relay_rt_init(xr_relay_rt_t *rt, const xr_relay_conf_t *rc);
void xr_relay_rt_free(xr_relay_rt_t *rt);

/* Pick a server not in `tried` (bit i = server i), preferring live ones.
 * Returns the index, or -1 when every server was tried. */
int xr_upstream_pick(xr_relay_rt_t *rt, uint64_t tried, const struct sockaddr_storage *client);
/* Report a connect result for server i. */
void xr_upstream_result(xr_relay_rt_t *rt, int i, int ok, int64_t now_ms);

#endif
