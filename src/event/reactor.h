/*
 * reactor.h: edge-triggered socket readiness for the relay engine.
 *
 * libuv's uv_poll re-registers a descriptor on every change of interest
 * (EPOLL_CTL_DEL + ADD) and probes it at init; at ~15 epoll_ctl calls per
 * relayed connection that dominated the connection rate.  Here sockets
 * live in an inner epoll set, registered once for EPOLLIN | EPOLLOUT |
 * EPOLLRDHUP edge-triggered (as nginx does); the inner epoll descriptor is
 * itself one uv_poll handle in the worker's loop, so timers and signals
 * stay libuv's.  Owners keep readiness flags and clear them on EAGAIN.
 */
#ifndef XR_REACTOR_H
#define XR_REACTOR_H

#include <stdint.h>
#include <sys/epoll.h>
#include <uv.h>

#include "core/xrayd.h"

typedef struct xr_io_s xr_io_t;
/* Called with the epoll event bits (EPOLLIN, EPOLLOUT, EPOLLRDHUP,
 * EPOLLHUP, EPOLLERR) that arrived for io. */
typedef void (*xr_io_cb)(xr_io_t *io, uint32_t events);

struct xr_io_s {
    int fd;
    xr_io_cb cb;
};

/* Something that asked to run again after the current batch of events:
 * a relay that stopped reading while its socket may hold more bytes. */
typedef struct xr_posted_s xr_posted_t;
typedef void (*xr_posted_cb)(xr_posted_t *p);
struct xr_posted_s {
    xr_list_t link;
    xr_posted_cb cb;
    int queued;
};

/* Create the inner epoll set and watch it from loop.  XR_OK or XR_ERROR
 * with errno. */
int xr_reactor_init(uv_loop_t *loop);
/* Register fd (non-blocking) for edge-triggered events.  XR_OK or
 * XR_ERROR with errno.  io->fd is fd from this call on, whether or not
 * epoll took it: io's owner closes it through its usual close path, once,
 * and a caller must not close fd by hand as well (that second close()
 * would hit whatever took the number in between). */
int xr_io_add(xr_io_t *io, int fd, xr_io_cb cb);
/* Remove before close when another descriptor may share the socket (a
 * plain close removes it otherwise). */
void xr_io_del(xr_io_t *io);
/* Run p->cb once after the current events (idempotent while queued). */
void xr_reactor_post(xr_posted_t *p, xr_posted_cb cb);
/* Forget p if queued (its owner is going away). */
void xr_reactor_unpost(xr_posted_t *p);

#endif
