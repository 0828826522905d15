/*
 * helper_msg.h: the messages between libxray, inside an application, and
 * its helper process (`xray helper`), which holds the application's
 * certificate, its sessions with the agent and its links.
 *
 * One message is one packet of an AF_UNIX SOCK_SEQPACKET connection; a
 * relayed connection's descriptor rides along (SCM_RIGHTS).  The library
 * opens a connection per request:
 *
 *   CONNECT dst      -> DIRECT addr (connect there yourself)
 *   [+ the socket]
 *     (UDP)           | MAPPED addr (send dst's datagrams to addr, a
 *                       helper socket on loopback: CODO §4.3's mapping
 *                       table; it lives code ms without a datagram, or,
 *                       with HOLD, while the request stays open)
 *                     | RELAY + descriptor, then STATUS code (0: the
 *                       end-to-end acknowledgement came; else errno)
 *                     | OPEN addr (the firewalls are open for the
                       socket that came with CONNECT: connect it to
                       addr yourself, now; UDP: for code ms idle)
                     | ERROR code text
 *   LISTEN local     -> BOUND state addr, again at every change of state,
 *                       for as long as the library keeps the connection
 *   WHO addr         -> PEER addr (who a connection the helper handed to
 *                       a server socket really comes from) | ERROR
 *
 * Every field has a fixed place; text is at most XR_HMSG_TEXT bytes.
 * Only libc: this file is linked into the library and the preload shim.
 */
#ifndef XR_HELPER_MSG_H
#define XR_HELPER_MSG_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#define XR_HMSG_VERSION 1
#define XR_HMSG_TEXT    200
#define XR_HMSG_MAX     (4 + 4 + 19 + 1 + XR_HMSG_TEXT)

typedef enum {
    XR_HMSG_CONNECT = 1,
    XR_HMSG_LISTEN = 2,
    XR_HMSG_WHO = 3,
    XR_HMSG_DIRECT = 16,
    XR_HMSG_RELAY = 17,
    XR_HMSG_STATUS = 18,
    XR_HMSG_BOUND = 19,
    XR_HMSG_PEER = 20,
    XR_HMSG_ERROR = 21,
    XR_HMSG_MAPPED = 22,
    XR_HMSG_OPEN = 23
} xr_hmsg_type_t;

/* CONNECT's flags: the application's socket is non-blocking (the helper
 * then makes the descriptor unwritable until STATUS, so that poll,
 * select and epoll see the connect complete when it really does). */
#define XR_HMSG_NONBLOCK 0x01
/* CONNECT (UDP): the mapping lives while the request connection is open
 * (a connected socket), not until it idles; its code is the idle ms. */
#define XR_HMSG_HOLD 0x02

/* BOUND's state (XRAY §5.1). */
typedef enum {
    XR_BOUND_LOCAL = 0, /* no official address (the agent is not reachable) */
    XR_BOUND_HALF = 1,  /* holds an official address, the agent is lost */
    XR_BOUND_FULL = 2   /* registered, the address is reachable */
} xr_bound_state_t;

typedef struct {
    uint8_t type;
    uint8_t proto; /* IPPROTO_TCP or IPPROTO_UDP */
    uint8_t flags;
    int32_t code;                 /* errno, or a BOUND state */
    struct sockaddr_storage addr; /* AF_INET, AF_INET6, or AF_UNSPEC */
    char text[XR_HMSG_TEXT + 1];
} xr_hmsg_t;

/* The packet for m: its length (at most XR_HMSG_MAX). */
size_t xr_hmsg_encode(const xr_hmsg_t *m, uint8_t *buf);
/* A packet into m: 0, or -1 when it is not a whole, valid message. */
int xr_hmsg_decode(const uint8_t *buf, size_t len, xr_hmsg_t *m);

/* Send m, with fd if it is not -1: 0, or -1 (errno). */
int xr_hmsg_send(int sock, const xr_hmsg_t *m, int fd);
/* Receive one message and the descriptor it carries (*fd, else -1;
 * closed if fd is NULL): 1, 0 at the end of the connection, -1 on an
 * error or a malformed packet (errno EBADMSG). */
int xr_hmsg_recv(int sock, xr_hmsg_t *m, int *fd);

#endif
