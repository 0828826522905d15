/*
 * listen.h: `xray listen PORT`, a netcat-like server whose socket binds
 * through the XRAY agent (XRAY §5.1).
 */
#ifndef XR_LISTEN_H
#define XR_LISTEN_H

#include <stddef.h>

/* argv[0] is "listen".  0, 1 (failure or refusal), 2 (bad usage). */
int xr_listen_main(int argc, char **argv);

#endif /* XR_LISTEN_H */
