/*
 * helper.h: `xray helper`, the process that carries an application's
 * XRAY connections for libxray and its preload shim.
 */
#ifndef XR_HELPER_H
#define XR_HELPER_H

/* argv[0] is "helper".  0 when it leaves (idle, signalled, or another
 * helper serves the socket), 1 (failure), 2 (bad usage). */
int xr_helper_main(int argc, char **argv);

#endif /* XR_HELPER_H */
