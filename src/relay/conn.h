/*
 * conn.h: the relay engine's connections with crash continuity
 * (internals.html, "Crash continuity"): both ends' bytes live in rings in
 * the worker's memory-mapped snapshot, a stage (the filter chain, the
 * proxy's HTTP handler) may sit between a direction's IN and OUT rings,
 * and a replacement worker - after a crash or a binary upgrade - carries
 * every connection on without losing or repeating a byte.  Any front
 * door's block with `continuity: on` runs its connections here: the
 * transparent proxy's, and plain relay blocks'.  Where to connect is the
 * block's front door's business (its conn_target hook).
 */
#ifndef XR_CONN_H
#define XR_CONN_H

#include <sys/socket.h>
#include <sys/uio.h>
#include <uv.h>

#include "core/gen.h"
#include "event/reactor.h"
#include "relay/snapshot.h"
#include "relay/filter.h"
#include "relay/upstream.h"

typedef struct xr_conn_s xr_conn_t;

/* One end of a connection: 0 the client, 1 the upstream. */
typedef struct {
    xr_io_t io;
    xr_conn_t *c;
    unsigned readable : 1, writable : 1, rdhup : 1, rd_eof : 1, wr_shut : 1;
} xr_cend_t;

/* A stage: what runs between a connection's IN and OUT rings.  A plain
 * circuit has none: its IN rings are its OUT rings. */
typedef struct xr_stage_s {
    const char *name;  /* for the log: "http", "filter" */
    int logs_requests; /* calls the log hooks itself, once per request */
    /* New input in direction d: consume from IN[d] (from in_done[d] to
     * taken[d]), produce into OUT[d] (and, for an answer of its own,
     * OUT[1-d]), commit.  XR_OK, XR_AGAIN (no room to produce: call again
     * when the far side drained), XR_ERROR (c was closed). */
    int (*process)(xr_conn_t *c, int d);
    /* Direction d's source ended (EOF read).  XR_OK or XR_ERROR. */
    int (*eof)(xr_conn_t *c, int d);
    /* Fresh working state for a new connection, committed. */
    int (*start)(xr_conn_t *c);
    /* Build working state from the committed record (a resumption). */
    int (*resume)(xr_conn_t *c);
    void (*free)(xr_conn_t *c);
    /* Has the stage ended the connection (a refusal answered and sent)?
     * NULL: only the ends' EOFs end it. */
    int (*finished)(const xr_conn_t *c);
    /* The client was given more of OUT[DOWN] (closing: the connection
     * ends, not frozen, and will be given nothing more): the stage may
     * account for what it has now got.  1: that made room for input the
     * stage had left waiting (run it again).  NULL: nothing to do. */
    int (*delivered)(xr_conn_t *c, int closing);
    /* No upstream could be reached: answer the client if the protocol
     * can (an HTTP 502), before the connection closes.  NULL: nothing. */
    void (*unreachable)(xr_conn_t *c);
    /* The connection's byte counts as its users know them, when they are
     * not the sockets' (TLS: cleartext): read[d] from direction d's
     * source, written[d] to its destination.  NULL: the sockets'. */
    void (*counts)(const xr_conn_t *c, uint64_t read[2], uint64_t written[2]);
    /* A chain of stages (stage_pair.h): the one after the filters. */
    const struct xr_stage_s *next;
} xr_stage_t;

/* Where the running stage reads and writes direction d.  conn.c points
 * them at IN[d] up to what was read and OUT[d] up to what was sent; two
 * chained stages (stage_pair.h) each see their side of a middle ring. */
typedef struct {
    unsigned char *in, *out;
    const uint64_t *in_end;    /* input there so far */
    const uint64_t *out_taken; /* output the next one has taken */
} xr_sview_t;

struct xr_conn_s {
    xr_session_t s; /* what filters' log hooks see */
    xr_cend_t end[2];
    xr_relay_rt_t *rt;
    const xr_relay_conf_t *conf;
    xr_store_t *store; /* NULL: continuity off (the slot is then on the heap) */
    xr_pslot_t *p;     /* durable state */
    unsigned char *ring[XR_RINGS];
    uint32_t rsize;
    /* Handler progress (from its committed record): input bytes consumed,
     * output bytes produced, per direction. */
    uint64_t in_done[2], out_made[2];
    int out_closed[2]; /* the handler ends direction d after its output */
    int again[2];      /* the handler waits for room in an OUT ring */
    const xr_stage_t *h;
    void *hs;              /* handler working state */
    xr_sview_t v[2];       /* the running stage's rings (see xr_sview_t) */
    int aux_record;        /* the running stage commits to the slot's second record */
    void *outer;           /* a chain's own state while one of its stages runs */
    unsigned char *fstate; /* the filters' per-connection state */
    int opened;            /* filters whose open hook ran */
    int cut;               /* ended on an error: the ends get a reset, not a FIN */
    uv_timer_t timer;
    xr_list_t link;
    xr_posted_t posted;
    int state;        /* XR_PC_* */
    int upstream_idx; /* >= 0: other targets may follow this one (the log says so) */
    int64_t last_active;
    int shm_counted;
    /* Of p->taken[d], what is already in xr_shm->bytes: added once per
     * pump while the connection lives, the rest at close. */
    uint64_t counted[2];
    int heap_slot, heap_rings; /* continuity off: freed with the connection */
    /* Timed, listed, counted in the worker and the shared memory: every
     * connection the worker accepted or adopted, not a detached one. */
    int in_service;
    int peer_held; /* its front door counts it on an upstream server */
    int trimmed;   /* its rings' pages were given back while it idled */
    const char *action;
};

/* Ring helpers: stream offset x lives at x % size. */
void xr_ring_put(unsigned char *ring, uint32_t size, uint64_t off, const void *p, size_t n);
void xr_ring_get(const unsigned char *ring, uint32_t size, uint64_t off, void *p, size_t n);
/* The one or two pieces of ring holding [off, off + n): how many. */
int xr_ring_iov(unsigned char *ring, uint32_t size, uint64_t off, size_t n, struct iovec iov[2]);

/* The running stage's input in direction d: its ring, and how far it is
 * filled (IN[d]: what was read). */
static inline unsigned char *xr_conn_in_ring(const xr_conn_t *c, int d)
{
    return c->v[d].in;
}
static inline uint64_t xr_conn_in_end(const xr_conn_t *c, int d)
{
    return *c->v[d].in_end;
}
/* Point the stage views at IN and OUT (what a single stage sees). */
void xr_conn_view_default(xr_conn_t *c);
/* Commit a stage's record, or read the committed one: the slot's main
 * record, or its second one while c->aux_record is set. */
void xr_conn_commit(xr_conn_t *c, const void *rec, size_t len);
const void *xr_conn_record(const xr_conn_t *c);

/* Space left in OUT[d] for the handler. */
uint64_t xr_conn_out_room(const xr_conn_t *c, int d);
/* Append to OUT[d] (the caller checked the room). */
void xr_conn_emit(xr_conn_t *c, int d, const void *p, size_t n);
/* Copy n bytes of IN[d] at offset from into OUT[d]. */
void xr_conn_pass(xr_conn_t *c, int d, uint64_t from, size_t n);
/* Write what OUT[d] holds to its destination now, as far as the socket
 * takes it (a last alert before a connection is cut). */
void xr_conn_flush(xr_conn_t *c, int d);
/* Close with a reason (printf format); logs run once. */
void xr_conn_close(xr_conn_t *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Run the log hooks now (HTTP: one record per request). */
void xr_conn_log(xr_conn_t *c);

/* ---- detached connections ------------------------------------------------- */

/* A connection of block rt with heap rings and no sockets, outside the
 * worker's service: nothing of the worker process (its loop, list,
 * shared counters) is touched, so it needs none.  Its owner moves the
 * bytes itself (fills IN rings and taken, drains OUT rings and given) and
 * calls the stage's hooks as the engine does; fuzz/fuzz_http.c drives the
 * HTTP stage so.  Filters' open hooks and the stage's start have run (it
 * may already be closed, if one refused).  mode: as for xr_conn_start. */
xr_conn_t *xr_conn_detached_new(xr_relay_rt_t *rt, uint64_t id, uint32_t mode);
/* The process died: drop what it held (stage and filter working state),
 * rebuild from the committed record and check the counters fit, as a
 * replacement worker does.  XR_OK, or XR_ERROR (then it is closed). */
int xr_conn_detached_resume(xr_conn_t *c);
/* Has it been closed (by its stage, a filter, or an error)? */
int xr_conn_is_closed(const xr_conn_t *c);
/* Close it if still open, and free it. */
void xr_conn_detached_free(xr_conn_t *c);

/* ---- the worker's side ---------------------------------------------------- */

/* Start the worker's continuity service: its own snapshot store if a
 * block of g has continuity.  XR_OK or XR_ERROR. */
int xr_conn_worker_init(uv_loop_t *loop, xr_gen_t *g, int retiring);
/* An accepted connection of block rt (the caller reserved its slot in
 * xr_shm->active; fd and the slot pass to the connection).  dst: the
 * connection's original destination (a transparent proxy's), or NULL;
 * mode: the block's front door's stage (conn_stage), 0 for none but the
 * filter chain. */
void xr_conn_start(uv_loop_t *loop, xr_relay_rt_t *rt, int fd,
                   const struct sockaddr_storage *client, uint64_t id,
                   const struct sockaddr_storage *dst, uint32_t mode);
/* What xr_conn_take needs of a connection whose TLS handshakes ran
 * elsewhere in the engine (relay.c). */
typedef struct {
    int fd[2];               /* both ends, connected */
    struct xr_rec_s *rec[2]; /* end e's record layer, or NULL: plain TCP */
    const xr_session_t *s;   /* id, addresses, start, the client's identity */
    unsigned char *fstate;   /* the filters' state; their open hooks ran */
    int opened;
    int peer;       /* the block's upstream server (counted in its active), or -1 */
    uint64_t tried; /* servers tried, for a later reconnect's balance */
    uint32_t tries;
    /* Cleartext end d sent that was read before the hand-over: it goes
     * on first.  The first raw[d] bytes of direction d are the protocol's
     * (an XRAY end-to-end ACK): relayed, never filtered. */
    const unsigned char *pending[2];
    size_t npending[2];
    uint32_t raw[2];
} xr_conn_handoff_t;

/* Carry on, with continuity, a connection of rt's block that is past its
 * TLS handshakes: its bytes go through the cleartext stage (records
 * opened, filters, records sealed) and its state into the snapshot.
 * Takes the descriptors, the records, the filter state and the slot the
 * accept reserved in xr_shm->active. */
void xr_conn_take(uv_loop_t *loop, xr_relay_rt_t *rt, xr_conn_handoff_t *h);
/* Remove dead worker pid's snapshot files (nobody takes them over). */
void xr_conn_forget(const char *state_dir, pid_t pid);
/* Take over the connections of dead worker pid (its store in g's
 * state_dir and the sockets the master passed on).  Returns how many. */
size_t xr_conn_adopt(pid_t dead, const char *state_dir);
/* The standby worker (core/continuity.h): keep every store in state_dir
 * warm for a takeover (xr_store_warm); returns their live connections.
 * xr_conn_standby_end unmaps the ones its takeover did not adopt. */
size_t xr_conn_standby_warm(const char *state_dir);
void xr_conn_standby_end(void);
/* Stop touching every connection (binary upgrade): their state
 * is complete in the store for the new binary. */
void xr_conn_freeze(void);
/* Close every connection of the engine's with continuity. */
void xr_conn_close_all(const char *why);
/* Live such connections in this worker. */
size_t xr_conn_count(void);
/* The worker's store path for worker pid, and a glob(3) pattern of
 * every store it holds (its own, and those it adopted, renamed). */
void xr_conn_store_path(char *buf, size_t n, const char *state_dir, pid_t pid);
void xr_conn_store_glob(char *buf, size_t n, const char *state_dir, pid_t pid);
/* Unlink this worker's own store when it exits with nothing live. */
void xr_conn_worker_exit(void);

#endif /* XR_CONN_H */
