/*
 * continuity.h: the master's duplicates of connections with continuity' sockets
 * (DESIGN "crash continuity").
 *
 * A worker that proxies with continuity sends the master a duplicate of
 * every socket it opens (SCM_RIGHTS over a SOCK_SEQPACKET pair made at
 * fork) and says when a connection is done.  The kernel keeps a socket
 * open while any process holds it, so when a worker dies - even by
 * SIGKILL - its connections stay established, their unread bytes stay
 * queued, and the replacement that the master forks inherits the
 * duplicates with the rest of the master's memory, maps the dead
 * worker's snapshot and carries on.  A normal close therefore uses
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
/* The next worker started adopts dead worker pid's connections (the
 * child finds them with xr_cont_adoptions). */
void xr_cont_will_adopt(pid_t dead);
/* The child of the fork that adopts has started as pid. */
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
