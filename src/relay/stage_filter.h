/*
 * stage_filter.h: the filter chain as a stage of a connection with continuity: the
 * block's filters see every byte between a direction's IN ring and its
 * OUT ring, in order, with every result (pass, modify, hold, drop,
 * close), as they do on every other front door.
 *
 * Continuity: the stage commits where its input is fully out (every
 * byte up to in_commit filtered and emitted) and whether a filter holds
 * bytes.  A replacement resumes a connection whose filters held nothing,
 * from that point, with fresh filter state (open hooks run again); one
 * whose filters held bytes at the crash is closed, since those bytes'
 * filter state died with the worker and passing them unchecked would
 * fail open.
 */
#ifndef XR_STAGE_FILTER_H
#define XR_STAGE_FILTER_H

#include "relay/conn.h"

extern const xr_stage_t xr_filter_handler;

/* Of the stage's working state hs (c->hs while it runs): has a filter
 * answered?  Does direction d have bytes inside the chain (held, or
 * passed and not yet out)? */
int xr_filter_stage_answered(const void *hs);
int xr_filter_stage_pending(const void *hs, int d);

#endif
