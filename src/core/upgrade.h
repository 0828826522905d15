/*
 * upgrade.h: the binary upgrade's conversation (SIGUSR2, DESIGN "Process
 * model"): the old master starts the new binary with one end of a
 * SOCK_SEQPACKET pair in XRAYD_UPGRADE_FD and hands it, over SCM_RIGHTS,
 * its listening sockets, then - once the new one has its configuration
 * and said READY, and the old workers have frozen their
 * connections - every continuity connection's sockets and where their
 * snapshots are.  The new master's workers take those over as they would
 * a crashed worker's.  A new binary that fails before READY changes
 * nothing: the old one goes on serving.
 */
#ifndef XR_UPGRADE_H
#define XR_UPGRADE_H

#include <stdint.h>
#include <sys/socket.h>

typedef enum {
    XR_UP_HELLO = 1,      /* new -> old: send me your sockets */
    XR_UP_LISTENER,       /* old -> new: one listening socket (1 fd) */
    XR_UP_LISTENERS_DONE, /* old -> new */
    XR_UP_READY,          /* new -> old: configuration loaded, sockets taken */
    XR_UP_CONN,           /* old -> new: a connection with continuity (its fds) */
    XR_UP_STORE,          /* old -> new: a worker whose stores are in dir */
    XR_UP_DONE            /* old -> new: that was all; I am stepping down */
} xr_up_type_t;

typedef struct {
    uint32_t type;
    uint32_t nfds;
    uint64_t id;     /* CONN */
    int32_t owner;   /* CONN, STORE: the old worker; HELLO: the new master's pid */
    int32_t backlog; /* LISTENER */
    uint32_t salen;  /* LISTENER */
    uint32_t pad;
    struct sockaddr_storage sa; /* LISTENER */
    char dir[512];              /* STORE */
} xr_up_msg_t;

/* Send m with up to 2 descriptors (blocking).  XR_OK or XR_ERROR. */
int xr_up_send(int fd, const xr_up_msg_t *m, const int *fds, int nfds);
/* The next message and its descriptors, waiting up to timeout_ms: 1,
 * 0 on timeout, -1 when the other side is gone or sent garbage. */
int xr_up_recv(int fd, xr_up_msg_t *m, int fds[2], int timeout_ms);

#endif
