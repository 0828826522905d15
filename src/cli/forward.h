/*
 * forward.h: `xray forward [ADDR:]PORT OFFICIAL:PORT`, a local port that
 * carries its connections to a server through the XRAY agents.
 */
#ifndef XR_FORWARD_H
#define XR_FORWARD_H

/* argv[0] is "forward".  Runs until killed; 1 (failure), 2 (bad usage). */
int xr_forward_main(int argc, char **argv);

#endif /* XR_FORWARD_H */
