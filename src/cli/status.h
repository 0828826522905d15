/*
 * status.h: `xray status`, the agent's state read from its admin socket
 * (the agent's admin_socket directive): registrations, leases, sessions,
 * handshakes and counters.
 */
#ifndef XR_STATUS_H
#define XR_STATUS_H

/* argv[0] is "status".  Returns 0, 1 (the agent cannot be reached), or 2
 * (bad usage). */
int xr_status_main(int argc, char **argv);

#endif /* XR_STATUS_H */
