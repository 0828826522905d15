/*
 * stage_pair.h: two stages chained on one connection: the block's filter
 * chain (stage_filter.c) first, then a front door's own stage (the
 * proxy's HTTP stage), so that filters see each direction's bytes as the
 * peer sent them, before the front door's stage reads them.
 *
 * The two meet at the slot's MID rings (snapshot.h): the filters read
 * IN[d] and write MID[d], the second stage reads MID[d] and writes
 * OUT[d].  Each commits its own record (the filters the slot's second
 * record, the second stage the main one), and each record describes only
 * its own stage's rings, whose bytes are all in the snapshot: so a
 * replacement worker resumes both exactly, as it resumes either alone.
 * The filters write into MID only what the second stage has committed
 * having consumed, and the second stage reads only what the filters have
 * committed having made.
 *
 * A filter's answer goes to the peer that sent the bytes after what the
 * second stage had already made for it, and the connection ends once it
 * is out; what the filters passed just before it and the second stage had
 * not taken is dropped (the second stage runs no more).
 */
#ifndef XR_STAGE_PAIR_H
#define XR_STAGE_PAIR_H

#include "relay/conn.h"

int xr_pair_process(xr_conn_t *c, int d);
int xr_pair_eof(xr_conn_t *c, int d);
int xr_pair_start(xr_conn_t *c);
int xr_pair_resume(xr_conn_t *c);
void xr_pair_free(xr_conn_t *c);
int xr_pair_finished(const xr_conn_t *c);
int xr_pair_delivered(xr_conn_t *c, int closing);
void xr_pair_unreachable(xr_conn_t *c);

/* The stage that runs the filters, then stage `after`; logs: after's
 * logs_requests. */
#define XR_STAGE_AFTER_FILTERS(stage_name, after, logs)                                            \
    {                                                                                              \
        .name = stage_name, .logs_requests = logs, .process = xr_pair_process, .eof = xr_pair_eof, \
        .start = xr_pair_start, .resume = xr_pair_resume, .free = xr_pair_free,                    \
        .finished = xr_pair_finished, .delivered = xr_pair_delivered,                              \
        .unreachable = xr_pair_unreachable, .next = (after)                                        \
    }

#endif
