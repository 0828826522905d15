/*
 * helper.h: `xray helper`, the process that carries an application's
 * XRAY connections for libxray and its preload shim.
 */
#ifndef XR_HELPER_H
#define XR_HELPER_H

/* argv[0] is "helper".  0 when it leaves (idle, signalled, or another
 * helper serves the socket), 1 (failure), 2 (bad usage). */
int xr_helper_main(int argc, char **argv);

#include <sys/socket.h>

/* A server bound through the agent, until sock (a SOCK_SEQPACKET end)
 * ends: BOUND messages (helper_msg.h) go out on it at every change of
 * state.  TCP: links and direct clients come to a socket bound at
 * bind_at (NULL: any port) and are handed to app, a server's address (a
 * wildcard one: loopback).  UDP (udp): app itself is registered (direct
 * clients send to it), and each relayed association's datagrams come to
 * it from a socket of the helper's.  Needs xr_carrier_init. */
void xr_helper_serve(int sock, const struct sockaddr_storage *app,
                     const struct sockaddr_storage *bind_at, int udp);

#endif /* XR_HELPER_H */
