/*
 * sock.h: how the engine's sockets end: a cut connection's peer gets a
 * reset, a finished one a FIN that no unread bytes turn into a reset.
 */
#ifndef XR_SOCK_H
#define XR_SOCK_H

/* Read and drop (a little of) what a peer sent that nobody will read, so
 * that closing the socket sends a FIN, not a reset. */
void xr_drain_unread(int fd);
/* Before closing fd: cut, make the close a reset (linger 0; it applies to
 * the socket, so whichever close is last sends it); else drain it. */
void xr_sock_before_close(int fd, int cut);

#endif
