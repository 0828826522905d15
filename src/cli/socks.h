/*
 * socks.h: `xray socks`, a local SOCKS5 front that carries connections
 * through the XRAY agents.
 */
#ifndef XR_SOCKS_H
#define XR_SOCKS_H

/* argv[0] is "socks".  Runs until killed; 1 (failure), 2 (bad usage). */
int xr_socks_main(int argc, char **argv);

#endif /* XR_SOCKS_H */
