/*
 * shm.h: counters shared by the master and every worker, in one anonymous
 * shared mapping made before the first fork.  A relay block's slot is
 * kept by name across reloads so limits hold while generations overlap.
 */
#ifndef XR_SHM_H
#define XR_SHM_H

#include <stdatomic.h>

#include "core/gen.h"
#include "relay/upstream.h"

#define XR_SHM_WORKERS 160
#define XR_SHM_RELAYS  256

typedef struct {
    _Atomic uint64_t next_id;                /* connection ids */
    _Atomic int64_t active[XR_SHM_RELAYS];   /* live relays, all workers */
    _Atomic int64_t accepted[XR_SHM_RELAYS]; /* ever accepted */
    /* Proxies: connections a replacement worker took over.  Every block:
     * bytes read from the client (up) and the upstream (down), live
     * connections' included (added once per pump). */
    _Atomic uint64_t resumed[XR_SHM_RELAYS];
    _Atomic uint64_t bytes[XR_SHM_RELAYS][2];
    /* Per worker slot, so the master can take back a dead worker's share. */
    _Atomic int64_t worker_active[XR_SHM_WORKERS][XR_SHM_RELAYS];
    /* Per worker slot: the generation number while that worker accepts,
     * else 0; siblings compare their shares of a listener by it. */
    _Atomic uint64_t accepting[XR_SHM_WORKERS];
} xr_shm_t;

extern xr_shm_t *xr_shm;

/* Map the counters (master, once).  XR_OK or XR_ERROR with errno. */
int xr_shm_init(void);
/* Give every relay block of g its slot by name.  XR_ERROR if full. */
int xr_shm_assign(xr_gen_t *g, char *err, size_t errsize);
/* Count rt's connections here, as worker slot w (relay/upstream.h). */
void xr_shm_bind(xr_relay_rt_t *rt, int w);
/* The master's cleanup after worker slot w died: subtract its share. */
void xr_shm_reap_worker(int w);

#endif
