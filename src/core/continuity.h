/*
 * continuity.h: the master's duplicates of connections with continuity' sockets
 * (DESIGN "crash continuity").
 *
 * A worker that proxies with continuity sends the master a duplicate of
 * every socket it opens (SCM_RIGHTS over a SOCK_SEQPACKET pair made at
 * fork) and says when a connection is done.  The kernel keeps a socket
 * open while any process holds it, so when a worker dies - even by
 * SIGKILL - its connections stay established, their unread bytes stay
 * queued, and the replacement - the standby worker below, which the
 * master sends the duplicates, or else a worker it forks, which inherits
 * them with the rest of its memory - maps the dead worker's snapshot and
 * carries on.  A normal close therefore uses
 * shutdown(): close() alone would not send the FIN while the master
 * holds the socket.
 */
#ifndef XR_CONTINUITY_H
#define XR_CONTINUITY_H

#include <stdint.h>
#include <sys/types.h>

#define XR_CONT_ENDS 2 /* a connection's sockets: 0 the client, 1 the upstream */

/* One connection's sockets as the master holds them. */
typedef struct {
    uint64_t id;
    pid_t owner; /* the worker that serves it */
    int fd[XR_CONT_ENDS];
} xr_cont_entry_t;

/* ---- master ---------------------------------------------------------- */

/* Before fork: a channel for the worker about to start.  Returns the
 * master's end (for xr_cont_master_poll), *child_end the worker's; -1. */
int xr_cont_channel(int *child_end);
/* After fork, in the master: the channel now belongs to worker pid. */
void xr_cont_attach(int master_end, pid_t pid);
/* The channels to poll (at most cap), and what to do when one is
 * readable. */
size_t xr_cont_fds(int *fds, size_t cap);
void xr_cont_master_read(int fd);
/* Worker pid died: read what it still said, close its channel.  Returns
 * how many connections it leaves to adopt. */
size_t xr_cont_reap(pid_t pid);
/* Worker pid (a forked replacement, or the standby) now serves dead
 * worker dead's connections. */
void xr_cont_adopted(pid_t dead, pid_t pid);
/* Close and forget every connection of pid (nobody will adopt them). */
void xr_cont_forget(pid_t pid);
/* Close every descriptor held (an upgrade passed them on). */
void xr_cont_clear(void);
/* Live connections held, all workers. */
size_t xr_cont_count(void);
size_t xr_cont_count_of(pid_t pid);
/* For upgrade: every entry (pointers valid until the next change). */
size_t xr_cont_entries(const xr_cont_entry_t **out);
/* Has every worker said it froze (binary upgrade)? */
int xr_cont_all_frozen(void);
/* The new master's side of an upgrade: hold these (fds are ours now). */
void xr_cont_add(uint64_t id, pid_t owner, const int fd[XR_CONT_ENDS]);

/* ---- the standby worker ---------------------------------------------------
 *
 * A takeover's pause is mostly its first touches of memory: the dead
 * worker's snapshots, mapped anew, and the new process's own heap.  So
 * the master keeps one worker forked ahead, the standby, that has done
 * its start-up, keeps every running worker's snapshots mapped with the
 * pages a takeover reads in its page tables (relay/snapshot.h,
 * xr_store_warm), and waits on its channel.  When a worker dies the
 * master sends the standby the order below, then the dead worker's
 * descriptors from its table, XR_CONT_BATCH connections a message; the
 * standby becomes the replacement, and the master forks a new standby
 * once the takeover is over. */

typedef struct {
    pid_t dead;       /* the worker whose connections it takes over */
    int slot;         /* its slot in the shared segment */
    unsigned singles; /* single-worker front doors it serves too */
    uint32_t n;       /* connections that follow */
    char dir[512];    /* where the dead worker's snapshots are */
} xr_cont_order_t;

/* Master: send order o (o->n filled in here) and the descriptors of
 * worker o->dead's connections on channel master_end.  XR_OK, or
 * XR_ERROR: the standby is of no use (the caller kills it). */
int xr_cont_send_order(int master_end, xr_cont_order_t *o);
/* Standby: wait up to ms for the order.  1: *o is filled in and the dead
 * worker's descriptors are in the table (xr_cont_take); 0: none came;
 * -1: the channel broke (the master is gone). */
int xr_cont_wait_order(int ms, xr_cont_order_t *o);

/* ---- worker ------------------------------------------------------------ */

/* In the new worker: keep channel fd, close every descriptor of the
 * master's table (with dead, the worker this one adopts, not yet: see
 * xr_cont_release_unclaimed). */
void xr_cont_child_init(int fd, pid_t dead);
/* The dead worker this one adopts (0: none), and its connections. */
pid_t xr_cont_adopting(void);
/* The adopted sockets of connection id (-1 where none), or 0 if the
 * master held nothing for it. */
int xr_cont_take(uint64_t id, int fd[XR_CONT_ENDS]);
/* Adopted connections nobody claimed (their snapshot slot was free):
 * closed and dropped; and every other descriptor inherited from the
 * master's table closed. */
void xr_cont_release_unclaimed(void);
/* Hand the master a duplicate of socket fd, end `which` of connection
 * id.  XR_OK, or XR_ERROR (the connection then has no continuity). */
int xr_cont_hold(uint64_t id, int which, int fd);
/* The connection is done: the master closes its duplicates. */
void xr_cont_drop(uint64_t id);
/* Upgrade: this worker no longer touches any connection with continuity. */
void xr_cont_frozen(void);

#endif
