/*
 * worker.h: worker processes.
 */
#ifndef XR_WORKER_H
#define XR_WORKER_H

#include <sys/types.h>

#include "core/gen.h"

/* The shared-memory slot of this worker (set in the child). */
extern int xr_worker_slot;

/* Run a worker on generation g in a freshly forked child; never returns.
 * With agent, it also serves g's agent.  close_fd is a master-only
 * descriptor to close (its signalfd); cont_fd its continuity channel
 * (core/continuity.h); adopt a dead worker whose proxied connections it
 * takes over (0: none), their stores in adopt_dir; retiring: only that,
 * no listening. */
void xr_worker_main(xr_gen_t *g, int slot, int agent, int close_fd, int cont_fd, pid_t adopt,
                    const char *adopt_dir, int retiring) __attribute__((noreturn));

#endif
