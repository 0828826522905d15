/*
 * master.h: the master process: opens listeners, runs and supervises
 * workers, and turns signals into reloads and stops.
 */
#ifndef XR_MASTER_H
#define XR_MASTER_H

#include "core/gen.h"

/* Serve generation g (loaded from conf_path) until stopped.  upgrade_fd:
 * the old master's channel when this is a binary upgrade (SIGUSR2), else
 * -1.  Returns the process exit status. */
int xr_master_run(xr_gen_t *g, const char *conf_path, int upgrade_fd);

#endif
