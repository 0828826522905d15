/*
 * relay.h: the relay engine (DESIGN "The relay engine").  A relay joins
 * two ends (0: the client, 1: the upstream) with one bounded buffer per
 * direction, runs the filter chain on every byte, honours half-close and
 * accounts every byte.  Every front door ends in xr_relay_start().
 */
#ifndef XR_RELAY_H
#define XR_RELAY_H

#include <sys/types.h>
#include <uv.h>

#include "core/xrayd.h"
#include "event/reactor.h"
#include "relay/buf.h"
#include "relay/filter.h"
#include "relay/sock.h"
#include "relay/upstream.h"

typedef struct xr_end_s xr_end_t;
typedef struct xr_relay_s xr_relay_t;

/* How bytes move through an end: plain TCP now, TLS records later.  read
 * and write return bytes, 0 for EOF (read), or -1 with errno (EAGAIN when
 * the socket is not ready). */
typedef struct {
    /* read: errno ENOBUFS when len cannot hold one more record. */
    ssize_t (*read)(xr_end_t *e, void *buf, size_t len);
    /* write: returns the cleartext taken; an end may keep some of it
     * queued (sealed) and send it from flush. */
    ssize_t (*write)(xr_end_t *e, const void *buf, size_t len);
    /* shutdown_wr: -1 with EAGAIN while queued bytes wait for room. */
    int (*shutdown_wr)(xr_end_t *e);
    /* flush: send what write queued; 0 when nothing is left, -1 with
     * errno (EAGAIN: wait for writable).  NULL: nothing is ever queued. */
    int (*flush)(xr_end_t *e);
    /* why: a better reason than strerror(errno) for the last failure, or
     * NULL. */
    const char *(*why)(xr_end_t *e);
    /* free: release the end's own state (the fd is closed by the relay). */
    void (*free)(xr_end_t *e);
    const char *name; /* "tcp", "tls" */
} xr_end_ops_t;

extern const xr_end_ops_t xr_end_tcp_ops;

struct xr_end_s {
    xr_io_t io; /* io.fd is the socket, -1 when none */
    xr_relay_t *relay;
    unsigned readable : 1; /* an edge said so and no EAGAIN since */
    unsigned writable : 1;
    unsigned rdhup : 1;   /* the peer's FIN arrived: read until 0 */
    unsigned rd_eof : 1;  /* read returned 0 */
    unsigned wr_shut : 1; /* shutdown_wr done */
    int err;              /* a reset taken by SO_ERROR: reported after the bytes before it */
    const xr_end_ops_t *ops;
    void *data; /* the end's own state (TLS) */
};

typedef struct {
    xr_buf_t *buf;     /* NULL while nothing is in flight */
    xr_chain_t chain;  /* regions held by filters */
    uint32_t raw;      /* bytes still to come that are the protocol's, not filtered */
    unsigned done : 1; /* source ended and the far side was shut down */
} xr_dir_t;

typedef enum {
    XR_RELAY_TLS_ACCEPT = 0, /* TLS handshake with the client */
    XR_RELAY_CONNECTING,     /* connecting to an upstream server */
    XR_RELAY_TLS_CONNECT,    /* TLS handshake with the upstream */
    XR_RELAY_RUNNING,
    XR_RELAY_CLOSED
} xr_relay_state_t;

struct xr_relay_s {
    xr_session_t s; /* what modules see; s._core points here */
    xr_end_t end[2];
    xr_dir_t dir[2];  /* XR_DIR_UP: end 0 -> end 1; XR_DIR_DOWN: back */
    uv_timer_t timer; /* connect, then idle timeout */
    xr_relay_rt_t *rt;
    const xr_relay_conf_t *conf;
    xr_list_t link;        /* in the worker's list of relays */
    xr_posted_t posted;    /* queued to read more after this batch */
    unsigned char *fstate; /* filter states, rt->state_off apart */
    const char *action;    /* for the log: "connecting to upstream" ... */
    uint64_t tried;        /* upstream servers tried */
    int64_t last_active;   /* uv_now() of the last byte moved */
    int peer;              /* upstream server index, -1 before */
    int tries;
    int opened; /* filters whose open hook ran */
    int cut;    /* ended on an error: the ends get a reset, not a FIN */
    int moved;  /* went on in the ring engine (continuity) */
    xr_relay_state_t state;
    int shm_counted;
    /* Of s.read_total[d], what is already in xr_shm->bytes: a live relay
     * adds what it read once per pump, the rest at close. */
    uint64_t counted[2];
};

/* Take an accepted client socket (non-blocking) into a new relay of rt's
 * block and start connecting upstream.  The relay owns fd from here on,
 * also on failure, and the slot the caller reserved in xr_shm->active. */
void xr_relay_start(uv_loop_t *loop, xr_relay_rt_t *rt, int fd,
                    const struct sockaddr_storage *client, uint64_t id);

/* Join two ends whose TLS handshakes are done (an agent's relay point:
 * end 0 the client's side, end 1 the server's) into a running relay of
 * rt's block, with its filters.  Takes over both ends (descriptor and
 * TLS state; src[i] is left empty); pending[i] holds bytes already read
 * from end i, relayed first.  The first raw[d] bytes of direction d are
 * the protocol's (the XRAY end-to-end ACK), relayed but not filtered. */
void xr_relay_join(uv_loop_t *loop, xr_relay_rt_t *rt, xr_end_t *src[2],
                   const unsigned char *pending[2], const size_t npending[2], const uint32_t raw[2],
                   const struct sockaddr_storage *client, uint64_t id);

/* Close with a reason (printf format), run close and log hooks, free when
 * the handles are closed.  Safe to call twice. */
void xr_relay_close(xr_relay_t *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Hooks the worker provides. */
xr_relay_rt_t *xr_worker_rt(const xr_relay_conf_t *rc);
void xr_worker_relay_added(xr_relay_t *r);
void xr_worker_relay_removed(xr_relay_t *r);

#endif
