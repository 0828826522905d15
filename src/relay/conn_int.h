/*
 * conn_int.h: what the two halves of the ring engine share - conn.c (a
 * connection's life: accept or take, connect, pump, close) and
 * conn_worker.c (the worker's store, adoption and freeze).  Not for
 * other parts: they use conn.h.
 */
#ifndef XR_CONN_INT_H
#define XR_CONN_INT_H

#include "relay/conn.h"

enum { XR_PC_CONNECTING = 1, XR_PC_RUNNING, XR_PC_CLOSED, XR_PC_FROZEN };

typedef struct xr_astore_s {
    xr_store_t *store;
    struct xr_astore_s *next;
} xr_astore_t;

/* The engine's state in this worker. */
typedef struct {
    uv_loop_t *loop;
    xr_gen_t *gen;
    xr_store_t *own;      /* new connections go here */
    xr_astore_t *adopted; /* stores of dead workers, until their last connection ends */
    xr_list_t conns;
    size_t n;
    int frozen;
    uv_timer_t sweep; /* gives back the pages of the own store's free slots */
} xr_conn_worker_t;

extern xr_conn_worker_t xr__cx;

/* Slot p of the own store is free: its pages stay for the next
 * connection, and go back a while later if none takes it. */
void xr__cn_slot_freed(xr_pslot_t *p);

/* A connection object around slot p (new or adopted), in the worker's
 * service: timed, listed, counted. */
xr_conn_t *xr__cn_new(xr_relay_rt_t *rt, xr_store_t *store, xr_pslot_t *p);
/* Run the filters' open hooks.  XR_OK, or XR_ERROR (c was closed). */
int xr__cn_open_filters(xr_conn_t *c);
void xr__cn_connect(xr_conn_t *c);
void xr__cn_connected(xr_conn_t *c);
/* Running from here; fresh: the stage starts and bytes move now, else
 * (resumed) they move on the next turn. */
void xr__cn_running(xr_conn_t *c, int fresh);
void xr__cn_io_cb(xr_io_t *io, uint32_t events);
void xr__cn_timer_cb(uv_timer_t *t);
uint64_t xr__cn_out_end(const xr_conn_t *c, int d);
void xr__cn_counts(const xr_conn_t *c, uint64_t read[2], uint64_t written[2]);
const char *xr__cn_end_name(int e);
/* Do a resumed connection's counters fit its snapshot?  Sets why if not. */
void xr__cn_check_resumed(const xr_conn_t *c, const uint64_t was_taken[2], char *why, size_t wl);

#endif
