/*
 * stage_filter.h: the cleartext stage of a connection with continuity.
 * Between a direction's IN ring and its OUT ring it opens the source
 * end's TLS records (when that end speaks TLS), runs the block's filters
 * over the cleartext with every result (pass, modify, hold, drop, close,
 * answer), as they run on every other front door, and seals what passed
 * into records for the far end (when that end speaks TLS).
 *
 * Continuity: the stage commits a point per direction, in_commit, where
 * the cleartext of every input byte before it is out (in OUT), together
 * with what it takes to go on from there: each TLS end's keys and record
 * numbers at that point, how much cleartext after it is already out (a
 * partly written buffer), and whether a filter holds bytes.  Opening and
 * sealing are deterministic given the keys and record numbers, so a
 * replacement that opens the same records again makes the same
 * cleartext, drops what is already out, and seals the rest with the next
 * record numbers: the peers see one unbroken TLS stream.
 *
 * A replacement resumes with fresh filter state (open hooks run again).
 * A connection whose filters held bytes at the crash is closed: those
 * bytes' filter state died with the worker and passing them unchecked
 * would fail open.
 */
#ifndef XR_STAGE_FILTER_H
#define XR_STAGE_FILTER_H

#include "relay/conn.h"
#include "common/record.h"

extern const xr_stage_t xr_filter_handler;

/* Start the stage on a connection taken over after its TLS handshakes
 * (xr_conn_take): with h's record layers (moved into the stage) and the
 * client's identity, and h's pending cleartext first in OUT (the first
 * raw[d] bytes of direction d pass unfiltered).  Commits.  XR_OK, or
 * XR_ERROR when c was closed (a filter refused the pending bytes). */
int xr_filter_stage_take(xr_conn_t *c, xr_conn_handoff_t *h);

/* Of the stage's working state hs (c->hs while it runs): has a filter
 * answered?  Does direction d have bytes inside the chain (held, or
 * passed and not yet out)? */
int xr_filter_stage_answered(const void *hs);
int xr_filter_stage_pending(const void *hs, int d);

#endif
