/*
 * carrier.h: what the xray tools that carry many connections share
 * (`xray helper`, `xray socks`, `xray forward`): one client
 * configuration, one control connection to the agent shared by every
 * thread, the TLS sessions (read from and left in the session file), and
 * the agent's routes to destinations that need no link, kept a while.
 */
#ifndef XR_CARRIER_H
#define XR_CARRIER_H

#include <sys/socket.h>

#include "lib/client.h"

/* cf filled (xr_client_conf_fill): load the certificates and the
 * sessions.  0, or -1 with err. */
int xr_carrier_init(const xr_client_conf_t *cf, char *err, size_t errlen);
const xr_client_conf_t *xr_carrier_conf(void);
/* Leave the sessions for the next process (the session file). */
void xr_carrier_save(void);
/* A client of its own for a thread that needs one (a server's
 * registration), resuming the shared sessions; NULL with err. */
xr_client_t *xr_carrier_client(char *err, size_t errlen);

typedef enum {
    XR_CARRY_DIRECT = 0,   /* connect to *to yourself */
    XR_CARRY_RELAY = 1,    /* *tls and *rt: xr_link_join finishes the link */
    XR_CARRY_NO_AGENT = 2, /* the agent cannot be reached: *to is dst (XRAY §6) */
    XR_CARRY_OPEN = 3,     /* the firewalls are open for src: connect to *to from it,
                              with heartbeats within rt->state_ms (CODO) */
    XR_CARRY_REFUSED = -1  /* *eno and err say why */
} xr_carry_t;

/* The agent's route to dst (proto XR_PROTO_TCP or XR_PROTO_UDP), on the
 * shared control connection, for the socket at src (NULL: none yet; the
 * answer is then never OPEN).  A destination no agent serves is an
 * ordinary one: DIRECT to itself. */
xr_carry_t xr_carrier_route(int proto, const xr_paddr_t *dst, const xr_paddr_t *src, xr_paddr_t *to,
                            xr_route_t *rt, xr_link_t **tls, int *eno, char *err, size_t errlen);

/* The whole of a TCP connection to dst: 0 with *link (relayed) or *fd
 * (a connected socket), or -1 with *eno and err. */
int xr_carrier_dial(const xr_paddr_t *dst, xr_link_t **link, int *fd, int *eno, char *err,
                    size_t errlen);

/* The errno an application gets for an agent's refusal (perr) or a
 * failure described by why. */
int xr_carrier_errno(int perr, const char *why);

/* [ADDR:]PORT (ADDR 127.0.0.1 unless given) into a listening socket;
 * -1 with err. */
int xr_carrier_listen(const char *spec, char *err, size_t errlen);
/* Accept on lfd for ever: each connection goes to fn on a thread of its
 * own (closed after), at most max at once (more are closed at once, with
 * a line on stderr that begins with who).  Returns 1 when accept fails
 * for good. */
int xr_carrier_accept_loop(int lfd, int max, const char *who,
                           void (*fn)(int fd, const char *peer, void *arg), void *arg);

#endif /* XR_CARRIER_H */
