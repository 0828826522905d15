/*
 * shm.c: shared counters.
 */
#include "core/xrayd.h"
#include "core/shm.h"

#include <stdio.h>
#include <sys/mman.h>

xr_shm_t *xr_shm;
static char *xr_shm_names[XR_SHM_RELAYS];

int xr_shm_init(void)
{
    void *p =
        mmap(NULL, sizeof(xr_shm_t), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return XR_ERROR;
    xr_shm = p;
    return XR_OK;
}

int xr_shm_assign(xr_gen_t *g, char *err, size_t errsize)
{
    for (size_t r = 0; r < g->nrelays; r++) {
        xr_relay_conf_t *rc = g->relays[r];
        int free_slot = -1;
        rc->slot = -1;
        for (int i = 0; i < XR_SHM_RELAYS; i++) {
            if (xr_shm_names[i] == NULL) {
                if (free_slot < 0)
                    free_slot = i;
            } else if (strcmp(xr_shm_names[i], rc->name) == 0) {
                rc->slot = i;
                break;
            }
        }
        if (rc->slot < 0) {
            if (free_slot < 0) {
                snprintf(err, errsize, "more than %d relay names used since start", XR_SHM_RELAYS);
                return XR_ERROR;
            }
            xr_shm_names[free_slot] = xr_strdup(rc->name);
            rc->slot = free_slot;
        }
    }
    return XR_OK;
}

void xr_shm_bind(xr_relay_rt_t *rt, int w)
{
    int b = rt->rc->slot;
    rt->ctr = (xr_counters_t){&xr_shm->active[b], &xr_shm->worker_active[w][b],
                              &xr_shm->accepted[b], &xr_shm->resumed[b], xr_shm->bytes[b]};
}

void xr_shm_reap_worker(int w)
{
    if (w < 0 || w >= XR_SHM_WORKERS)
        return;
    atomic_store(&xr_shm->accepting[w], 0);
    for (int r = 0; r < XR_SHM_RELAYS; r++) {
        int64_t v = atomic_exchange(&xr_shm->worker_active[w][r], 0);
        if (v != 0)
            atomic_fetch_sub(&xr_shm->active[r], v);
    }
}
