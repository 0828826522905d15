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
 * singles: bit i set, it also serves front door i of the table, one that
 * runs in a single worker (core/frontdoor.h).  close_fd is a master-only
 * descriptor to close (its signalfd); cont_fd its continuity channel
 * (core/continuity.h); adopt a dead worker whose connections it takes
 * over (0: none), their snapshots in adopt_dir; retiring: only that, no
 * listening. */
void xr_worker_main(xr_gen_t *g, int slot, unsigned singles, int close_fd, int cont_fd, pid_t adopt,
                    const char *adopt_dir, int retiring) __attribute__((noreturn));

/* Run the standby worker of generation g in a freshly forked child
 * (core/continuity.h): start up, keep the running workers' snapshots
 * warm, and on the master's order on cont_fd become the replacement of
 * a dead worker.  Never returns. */
void xr_worker_standby_main(xr_gen_t *g, int close_fd, int cont_fd) __attribute__((noreturn));

/* A front door took on (or ended) a connection that is not in the relay
 * engine's list: a stopping worker waits for these too. */
void xr_worker_conn_added(void);
void xr_worker_conn_removed(void);

#endif
