/*
 * connect.h: `xray connect OFFICIAL:PORT`, a netcat-like client that
 * reaches a server through the XRAY agents (XRAY §5.2).
 */
#ifndef XR_CONNECT_H
#define XR_CONNECT_H

/* argv[0] is "connect".  0, 1 (failure or refusal), 2 (bad usage). */
int xr_connect_main(int argc, char **argv);

#endif /* XR_CONNECT_H */
