/*
 * filter.h: a relay block's filter chain, run over one direction's bytes
 * (internals.html, "Filters").  Every front door calls these four, so a
 * filter behaves the same wherever bytes enter: open hooks may deny, data
 * hooks see every cleartext byte once in chain order (a holding filter
 * sees its region again with more appended), close and log hooks get the
 * session's counters.
 */
#ifndef XR_FILTER_H
#define XR_FILTER_H

#include "relay/buf.h"
#include "relay/upstream.h"

typedef struct {
    uint32_t off; /* start of the held region */
    int idx;      /* filter that holds it */
} xr_hold_t;

/* One direction's place in the chain: the regions filters hold. */
typedef struct {
    xr_hold_t *holds; /* oldest first; NULL until a filter first holds */
    int nholds;
} xr_chain_t;

/* Per-connection filter state: rt->state_total bytes, zeroed, or NULL
 * when no filter of rt's block keeps any.  Free with free(). */
unsigned char *xr_chain_state_new(const xr_relay_rt_t *rt);

/* Run the open hooks in order.  *opened counts the hooks that ran (the
 * close hooks of exactly those run later).  XR_OK, or XR_ERROR when a
 * filter denied: s->close_reason says why. */
int xr_chain_open(const xr_relay_rt_t *rt, unsigned char *fstate, xr_session_t *s, int *opened);

/* xr_chain_run's answer: a filter answered the peer that sent the bytes. */
#define XR_CHAIN_ANSWER 1

/* Run the data hooks over b->data[off, b->end), the bytes that just
 * arrived.  On return b->data[b->filt, b->end) is what filters hold and
 * b->data[b->start, b->filt) may be sent.  XR_OK; XR_ERROR when a
 * filter closed the connection or misbehaved (s->close_reason says why;
 * the caller cuts it); or XR_CHAIN_ANSWER: a filter answered, the answer
 * is b->data[b->filt, b->end) (nothing is held any more), and the caller
 * sends what passed, sends the answer back to the sender and closes. */
int xr_chain_run(const xr_relay_rt_t *rt, unsigned char *fstate, xr_session_t *s, int d,
                 xr_chain_t *ch, xr_buf_t *b, uint32_t off);

/* The source of direction d ended: bytes still held were never passed
 * and are discarded (never forwarded unchecked).  Returns how many. */
uint32_t xr_chain_eof(xr_chain_t *ch, xr_buf_t *b);

/* The buffer's bytes moved `moved` towards its start (xr_buf_compact). */
void xr_chain_moved(xr_chain_t *ch, uint32_t moved);

/* Run the close hooks of the `opened` filters (a front door that logs
 * per request runs the log hooks itself). */
void xr_chain_close_hooks(const xr_relay_rt_t *rt, unsigned char *fstate, xr_session_t *s,
                          int opened);
/* Run the close hooks of the `opened` filters, then every log hook. */
void xr_chain_close(const xr_relay_rt_t *rt, unsigned char *fstate, xr_session_t *s, int opened);

/* Run the log hooks alone (a front door that logs each request). */
void xr_chain_log(const xr_relay_rt_t *rt, unsigned char *fstate, xr_session_t *s);

void xr_chain_release(xr_chain_t *ch);

#endif
