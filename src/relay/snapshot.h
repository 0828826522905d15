/*
 * snapshot.h: a worker's memory-mapped file of its connections with continuity
 * (thesis 7.2, footnote 37; internals.html, "Crash continuity").
 *
 * One fixed-size slot per connection: the durable header below, then its
 * ring buffers.  The worker reads from its sockets straight into the
 * rings and writes to them straight from there, and the file is mapped
 * MAP_SHARED, so whatever the kernel copied in is in the file the moment
 * read() returns, even if the process dies on the next instruction.
 * Rings never move bytes (no compaction), so no half-done memmove can be
 * caught by a crash: a byte at stream offset x lives at x % ring.
 *
 * What the process has taken from and given to each socket is not
 * trusted from the file but asked of the kernel at resumption (see
 * conn.c); the file must only say where the bytes are.  A handler with
 * state of its own (HTTP) commits it as a record in one of two halves
 * and then flips commit_seq, so a torn record is never read.
 */
#ifndef XR_SNAPSHOT_H
#define XR_SNAPSHOT_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#define XR_SNAP_MAGIC   0x78725350u /* "xrSP" */
#define XR_SNAP_VERSION 1
#define XR_PSLOT_LIVE   0x4c495645u /* "LIVE" */
#define XR_PSTATE_MAX   3072        /* a handler's commit record */

#define XR_PAUX_MAX 128 /* the first of two chained stages' record */

/* Rings of a slot: what each end sent (IN) and what goes to each end
 * after the handler (OUT); a circuit uses its IN rings as OUT.  Two
 * chained stages (relay/stage_pair.h: filters, then a front door's own)
 * meet at the MID rings.  A store written before the MID rings existed
 * has slots of XR_RINGS_OLD rings (xr_store_ring() gives NULL for MID). */
enum {
    XR_RING_IN_UP = 0,
    XR_RING_IN_DOWN,
    XR_RING_OUT_UP,
    XR_RING_OUT_DOWN,
    XR_RING_MID_UP,
    XR_RING_MID_DOWN,
    XR_RINGS
};
#define XR_RINGS_OLD 4

typedef enum { XR_PHASE_CONNECTING = 0, XR_PHASE_RUNNING } xr_phase_t;

typedef struct {
    uint32_t live; /* XR_PSLOT_LIVE while a connection owns the slot */
    uint32_t mode; /* the front door's stage (conn_stage), 0: none but filters */
    uint64_t id;   /* the connection id, the master's key */
    char block[64];
    struct sockaddr_storage client, local, dst, upstream;
    int64_t start_ms;
    uint32_t phase; /* xr_phase_t */
    uint32_t tries; /* upstream attempts made */
    /* Per end (0 client, 1 upstream): the kernel's counters when the
     * connection started, so taken = received - queued - base. */
    uint64_t rx_base[2], tx_base[2];
    uint64_t taken[2], given[2]; /* bytes read from / written to each end */
    uint32_t resumed;            /* times a replacement took it over */
    uint32_t filtered;           /* a circuit whose filters run as a stage */
    int32_t peer;                /* a relay block's upstream server, or -1 */
    uint32_t pad;
    uint64_t tried;      /* a relay block's servers tried (bit i: server i) */
    uint64_t commit_seq; /* state[commit_seq & 1] is the committed record */
    _Alignas(8) unsigned char state[2][XR_PSTATE_MAX]; /* handlers write records in place */
    /* The first of two chained stages commits here, as the second does in
     * state[]: each record describes its own stage's rings.  Zero in a
     * slot an older binary wrote (the header page's unused end). */
    uint64_t aux_seq;
    _Alignas(8) unsigned char aux[2][XR_PAUX_MAX];
} xr_pslot_t;

typedef struct xr_store_s xr_store_t;

/* Create path (replacing any file there) for nslots slots with rings of
 * ring bytes (a multiple of the page size).  NULL with err. */
xr_store_t *xr_store_create(const char *path, uint32_t nslots, uint32_t ring, char *err,
                            size_t errlen);
/* Map an existing store (a dead worker's, an old binary's).  NULL with
 * err if it is missing or not one. */
xr_store_t *xr_store_open(const char *path, char *err, size_t errlen);
/* A standby worker's preparation for a takeover (see core/continuity.h):
 * map the stores at paths that other workers run, keep their mappings,
 * and bring into its page tables the pages of their live slots that a
 * takeover touches first.  A page's first touch in a process is a fault
 * (13-20 us on a virtual machine, and it does not run faster on two
 * cores), and a takeover of a thousand connections touches thousands:
 * done here, beforehand, instead of while their clients wait.  Call it
 * again and again: connections come and go, and a store no path names
 * any more is unmapped.  xr_store_open of one of these files uses the
 * mapping made here.  Returns the live slots seen. */
size_t xr_store_warm(char *const *paths, size_t npaths);
/* Unmap every store xr_store_warm mapped and xr_store_open did not take. */
void xr_store_unwarm(void);
/* Unmap; with unlink_it, remove the file too. */
void xr_store_close(xr_store_t *s, int unlink_it);

uint32_t xr_store_nslots(const xr_store_t *s);
uint32_t xr_store_ring_size(const xr_store_t *s);
const char *xr_store_path(const xr_store_t *s);
xr_pslot_t *xr_store_slot(xr_store_t *s, uint32_t i);
/* Does the store's map say slot i may be live (its header decides)? */
int xr_store_is_live(const xr_store_t *s, uint32_t i);
/* Ring which of slot p, or NULL if the store's slots have no such ring. */
unsigned char *xr_store_ring(xr_store_t *s, xr_pslot_t *p, int which);
/* A free slot, zeroed (not yet live), or NULL when all are taken. */
xr_pslot_t *xr_store_alloc(xr_store_t *s);
/* The slot is free again (its connection ended).  Its ring pages are
 * given back now (keep_from_ms 0), or kept for the next connection to
 * take it, until xr_store_sweep gives them back: keep_from_ms is now. */
void xr_store_release(xr_store_t *s, xr_pslot_t *p, uint64_t keep_from_ms);
/* Give back the pages of free slots kept since at least age_ms before
 * now_ms.  Returns how many free slots still keep theirs. */
uint32_t xr_store_sweep(xr_store_t *s, uint64_t now_ms, uint32_t age_ms);
/* Give the pages of slot p's rings back (they read as zeros after): its
 * connection has nothing in them. */
void xr_store_trim(xr_store_t *s, xr_pslot_t *p);
/* Slots in use. */
uint32_t xr_store_used(const xr_store_t *s);

/* Commit a handler record: write it into the half not in use, then flip. */
void xr_pslot_commit(xr_pslot_t *p, const void *rec, size_t len);
/* The same in two steps, for a handler that writes only the parts of its
 * record that are live: the half not in use (XR_PSTATE_MAX bytes, holding
 * whatever an older commit left), then the flip that publishes it. */
void *xr_pslot_next(xr_pslot_t *p);
void xr_pslot_publish(xr_pslot_t *p);
/* The committed record (XR_PSTATE_MAX bytes). */
const void *xr_pslot_record(const xr_pslot_t *p);
/* The same for the second record (XR_PAUX_MAX bytes). */
void xr_pslot_aux_commit(xr_pslot_t *p, const void *rec, size_t len);
const void *xr_pslot_aux_record(const xr_pslot_t *p);

#endif
