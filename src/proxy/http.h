/*
 * http.h: the HTTP handler of a proxy block with mode: http (thesis 7.2
 * step 8; internals.html, "Front doors"): requests and responses parsed with http-parser, heads
 * checked against the block's rules and rewritten (Via added, hop-by-hop headers removed), bodies
 * passed through as streams, pipelining kept in order by a queue of pending requests so that a
 * refused one is answered with its error page in its turn.  Its progress is a record committed in
 * the connection's snapshot slot after every step.
 */
#ifndef XR_HTTP_H
#define XR_HTTP_H

#include "relay/conn.h"

/* The stages of a proxy block in mode: http, by the mode its connections
 * record (xr_conn_start): the HTTP stage alone, or, for a block with data
 * filters, the filters first and then the HTTP stage (relay/stage_pair.h),
 * so that filters see the bytes each peer sent. */
enum { XR_HTTP_STAGE_PLAIN = 1, XR_HTTP_STAGE_FILTERED = 2 };

extern const xr_stage_t xr_http_handler;
extern const xr_stage_t xr_http_filtered_handler;

/* A new connection's handler (fresh state, committed). */
int xr_http_start(xr_conn_t *c);
/* No upstream could be reached: tell the client so (502), best effort,
 * before the connection closes. */
void xr_http_unreachable(xr_conn_t *c);

#endif
