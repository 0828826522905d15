/*
 * proto.h: the XRAY control and link protocol (html-docs/protocol.html is
 * the specification; this is its one implementation).
 *
 * Frames travel inside mutually authenticated TLS: library <-> agent,
 * agent <-> agent, and as the first frame of every overlay link.  A frame
 * is a 4-byte header - type (1), flags (1, zero), body length (2, big
 * endian, at most XR_PROTO_MAX_BODY) - and a body whose layout the type
 * fixes.  Decoding is strict: a body must be exactly as long as its
 * fields, reserved bits and padding must be zero, every enumeration must
 * hold a known value, strings must be printable.  Anything else is refused
 * with a reason, never guessed at.  Encoding is canonical, so decode then
 * encode gives back the same bytes (the fuzz target checks this).
 *
 * Nothing here allocates or does I/O.
 */
#ifndef XR_PROTO_H
#define XR_PROTO_H

#include <stddef.h>
#include <stdint.h>

#define XR_PROTO_VERSION   1
#define XR_PROTO_HEADER    4
#define XR_PROTO_MAX_BODY  1024
#define XR_PROTO_MAX_FRAME (XR_PROTO_HEADER + XR_PROTO_MAX_BODY)
#define XR_PROTO_TOKEN     32 /* relay-point token */
#define XR_PROTO_KEYHASH   32 /* SHA-256 of a certificate's public key */
#define XR_PROTO_STR_MAX   255

typedef enum {
    XR_MSG_HELLO = 0x01,
    XR_MSG_HELLO_OK = 0x02,
    XR_MSG_REGISTER = 0x10,
    XR_MSG_REGISTERED = 0x11,
    XR_MSG_REFRESH = 0x12,
    XR_MSG_REFRESHED = 0x13,
    XR_MSG_UNREGISTER = 0x14,
    XR_MSG_UNREGISTERED = 0x15,
    XR_MSG_CONNECT = 0x20,
    XR_MSG_CONNECT_OK = 0x21,
    XR_MSG_PEER_CONNECT = 0x22,
    XR_MSG_RELAY_READY = 0x23,
    XR_MSG_OPEN = 0x24,      /* CONNECT naming the client socket's address (CODO) */
    XR_MSG_PEER_OPEN = 0x25, /* PEER_CONNECT asking for an opening, not a relay */
    XR_MSG_OPENED = 0x26,    /* connect straight to addr: the firewalls are open */
    XR_MSG_INCOMING = 0x30,
    XR_MSG_INCOMING_OK = 0x31,
    XR_MSG_LINK = 0x40,
    XR_MSG_LINK_OK = 0x41,
    XR_MSG_ACK = 0x42,
    XR_MSG_ERROR = 0x7f
} xr_msg_type_t;

typedef enum { XR_ROLE_LIBRARY = 1, XR_ROLE_AGENT = 2 } xr_proto_role_t;
typedef enum { XR_PROTO_TCP = 6, XR_PROTO_UDP = 17 } xr_proto_l4_t;
/* CONNECT_OK: connect straight to addr (same network), or to the relay
 * point at addr presenting the token. */
typedef enum { XR_CONNECT_DIRECT = 1, XR_CONNECT_RELAY = 2 } xr_connect_mode_t;
/* INCOMING: the agent will connect to the server's local address, or the
 * library must connect out to the relay point (GCB). */
typedef enum { XR_INCOMING_INBOUND = 1, XR_INCOMING_CONNECT_OUT = 2 } xr_incoming_mode_t;

/* Error codes, each with the errno a library turns it into. */
typedef enum {
    XR_PERR_NOT_AUTHORIZED = 1, /* EACCES */
    XR_PERR_NO_SUCH_ADDRESS,    /* ECONNREFUSED: no server holds that official address */
    XR_PERR_UNREACHABLE,        /* EHOSTUNREACH */
    XR_PERR_TIMEOUT,            /* ETIMEDOUT */
    XR_PERR_OVER_LIMIT,         /* EAGAIN */
    XR_PERR_PROTOCOL,           /* EPROTO */
    XR_PERR_VERSION,            /* EPROTONOSUPPORT */
    XR_PERR_BAD_TOKEN,          /* EACCES */
    XR_PERR_INTERNAL,           /* EIO */
    XR_PERR_MAX = XR_PERR_INTERNAL
} xr_proto_err_t;

/* An address on the wire: family 4 or 6 (0: none, where a field allows
 * it), port, and 16 address bytes (IPv4 in the first four, the rest 0). */
typedef struct {
    uint8_t family;
    uint16_t port;
    uint8_t addr[16];
} xr_paddr_t;

typedef struct {
    uint8_t len;
    char s[XR_PROTO_STR_MAX + 1]; /* NUL-terminated copy */
} xr_pstr_t;

typedef struct {
    xr_msg_type_t type;
    union {
        struct {
            uint16_t min_version, max_version;
            uint8_t role;
            xr_pstr_t software;
        } hello;
        struct {
            uint16_t version;
            uint32_t heartbeat_ms;
            xr_pstr_t software;
        } hello_ok;
        struct {
            uint32_t id;
            uint8_t proto;
            xr_paddr_t local;
            xr_paddr_t prior;  /* the official address held before, or family 0 */
            xr_paddr_t direct; /* where direct clients go (the application's own
                                  socket, when a helper's takes the links), or family 0 */
        } reg;
        struct {
            uint32_t id;
            uint64_t handle;
            uint32_t lease_ms;
            xr_paddr_t official;
        } registered;
        struct {
            uint32_t id;
            uint64_t handle;
        } refresh; /* REFRESH and UNREGISTER */
        struct {
            uint32_t id;
            uint32_t lease_ms;
        } refreshed;
        struct {
            uint32_t id;
        } done; /* UNREGISTERED, INCOMING_OK */
        struct {
            uint32_t id;
            uint8_t proto;
            xr_paddr_t dst;
            xr_paddr_t src; /* OPEN: the client socket's local address (0.0.0.0: as seen) */
        } connect;          /* CONNECT and OPEN */
        struct {
            uint32_t id;
            uint8_t mode;
            xr_paddr_t addr;
            uint8_t token[XR_PROTO_TOKEN];
            uint8_t peer_key[XR_PROTO_KEYHASH]; /* expected key of the next hop */
        } connect_ok;
        struct {
            uint32_t id;
            uint8_t proto;
            xr_paddr_t dst;
            xr_paddr_t src;                       /* the client's official address */
            uint8_t client_key[XR_PROTO_KEYHASH]; /* the client application's key */
            xr_pstr_t client_subject;
        } peer_connect; /* PEER_CONNECT and PEER_OPEN */
        struct {
            uint32_t id;
            xr_paddr_t addr;   /* where the client connects: the server's official address */
            uint32_t state_ms; /* the shortest idle time the firewalls keep its state */
        } opened;
        struct {
            uint32_t id;
            xr_paddr_t addr;
            uint8_t token[XR_PROTO_TOKEN];
        } relay_ready;
        struct {
            uint32_t id;
            uint64_t handle;
            uint8_t mode;
            xr_paddr_t addr; /* relay point (CONNECT_OUT), or family 0 */
            uint8_t token[XR_PROTO_TOKEN];
            xr_paddr_t peer; /* the client's official address */
            xr_pstr_t client_subject;
        } incoming;
        struct {
            uint8_t token[XR_PROTO_TOKEN];
        } link;
        struct {
            uint16_t code;
            uint32_t id;
            xr_pstr_t message;
        } error;
    } u;
} xr_msg_t;

typedef enum {
    XR_PROTO_OK = 0,
    XR_PROTO_AGAIN = 1,      /* a partial frame: read more */
    XR_PROTO_E_TOO_BIG = -1, /* body length over XR_PROTO_MAX_BODY */
    XR_PROTO_E_TYPE = -2,    /* unknown type */
    XR_PROTO_E_FLAGS = -3,   /* header flags not zero */
    XR_PROTO_E_LENGTH = -4,  /* body length does not match the type's fields */
    XR_PROTO_E_FIELD = -5    /* a field out of range */
} xr_proto_status_t;

/* Decode the frame at the start of buf[0..len).  XR_PROTO_OK with *used
 * set to the frame's length, XR_PROTO_AGAIN, or an error; on an error,
 * *why (if not NULL) names the field. */
xr_proto_status_t xr_proto_decode(const uint8_t *buf, size_t len, xr_msg_t *m, size_t *used,
                                  const char **why);

/* Encode m into out[0..cap).  Returns the frame's length, or 0 if m is not
 * valid (the same rules as decoding) or cap is too small. */
size_t xr_proto_encode(const xr_msg_t *m, uint8_t *out, size_t cap);

struct sockaddr_storage;
/* A socket address as a wire address (family 0 if neither IPv4 nor v6). */
void xr_paddr_from_sockaddr(xr_paddr_t *a, const struct sockaddr_storage *ss);
/* And back: the sockaddr's length, or 0 for family 0. */
unsigned xr_paddr_to_sockaddr(const xr_paddr_t *a, struct sockaddr_storage *ss);

/* Names for logs: "REGISTER", "NOT_AUTHORIZED"; "?" when unknown. */
const char *xr_proto_type_name(int type);
const char *xr_proto_err_name(int code);
/* The errno a library reports for an error code (EIO when unknown). */
int xr_proto_err_errno(int code);
/* Set a string field; a longer string is cut at XR_PROTO_STR_MAX bytes and
 * unprintable bytes become '?', so encoding cannot fail on it. */
void xr_pstr_set(xr_pstr_t *p, const char *s);

/* "198.18.2.1:80" or "[2001:db8::1]:443" into buf. */
const char *xr_paddr_str(const xr_paddr_t *a, char *buf, size_t size);
/* The host alone, "198.18.2.1" or "2001:db8::1" ("?" for no address). */
const char *xr_paddr_host(const xr_paddr_t *a, char *buf, size_t size);

#endif
