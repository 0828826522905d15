/*
 * proto.c: encode and decode XRAY protocol frames (see proto.h and
 * html-docs/protocol.html).
 *
 * Each message layout is written once, in xr_proto_body(), against a
 * cursor that either reads (decode) or writes (encode); the same checks
 * run in both directions, so what one side can send the other accepts and
 * nothing else.
 */
#include "common/proto.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

typedef struct {
    int encode;
    uint8_t *p;       /* encode: where to write */
    const uint8_t *q; /* decode: where to read */
    size_t left;
    const char *why; /* the first failure */
    int truncated;   /* it was the body running out */
} xr_cur_t;

static int xr_fail(xr_cur_t *c, const char *why)
{
    if (c->why == NULL)
        c->why = why;
    return -1;
}

static int xr_bytes(xr_cur_t *c, void *v, size_t n, const char *what)
{
    if (c->why != NULL)
        return -1;
    if (c->left < n) {
        c->truncated = 1;
        return xr_fail(c, what);
    }
    if (c->encode) {
        memcpy(c->p, v, n);
        c->p += n;
    } else {
        memcpy(v, c->q, n);
        c->q += n;
    }
    c->left -= n;
    return 0;
}

static int xr_uint(xr_cur_t *c, uint64_t *v, size_t n, const char *what)
{
    uint8_t b[8];
    if (c->encode)
        for (size_t i = 0; i < n; i++)
            b[i] = (uint8_t) (*v >> (8 * (n - 1 - i)));
    if (xr_bytes(c, b, n, what) < 0)
        return -1;
    if (!c->encode) {
        *v = 0;
        for (size_t i = 0; i < n; i++)
            *v = *v << 8 | b[i];
    }
    return 0;
}

#define XR_UINT_FIELD(name, type, n)                                                               \
    static int name(xr_cur_t *c, type *v, const char *what)                                        \
    {                                                                                              \
        uint64_t x = *v;                                                                           \
        int rc = xr_uint(c, &x, n, what);                                                          \
        *v = (type) x;                                                                             \
        return rc;                                                                                 \
    }
XR_UINT_FIELD(xr_u8, uint8_t, 1)
XR_UINT_FIELD(xr_u16, uint16_t, 2)
XR_UINT_FIELD(xr_u32, uint32_t, 4)
XR_UINT_FIELD(xr_u64, uint64_t, 8)

/* A value that must be one of a few. */
static int xr_check(xr_cur_t *c, int ok, const char *what)
{
    return ok || c->why != NULL ? 0 : xr_fail(c, what);
}

static int xr_addr(xr_cur_t *c, xr_paddr_t *a, int optional, const char *what)
{
    xr_u8(c, &a->family, what);
    xr_u16(c, &a->port, what);
    xr_bytes(c, a->addr, sizeof(a->addr), what);
    if (c->why != NULL)
        return -1;
    static const uint8_t zero[16];
    switch (a->family) {
    case 4:
        /* the padding is part of the canonical form */
        return xr_check(c, a->port != 0 && memcmp(a->addr + 4, zero, 12) == 0, what);
    case 6: return xr_check(c, a->port != 0, what);
    case 0: return xr_check(c, optional && a->port == 0 && memcmp(a->addr, zero, 16) == 0, what);
    default: return xr_fail(c, what);
    }
}

static int xr_printable(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if ((unsigned char) s[i] < 0x20 || s[i] == 0x7f)
            return 0;
    return 1;
}

static int xr_str(xr_cur_t *c, xr_pstr_t *s, const char *what)
{
    xr_u8(c, &s->len, what);
    if (xr_bytes(c, s->s, s->len, what) < 0)
        return -1;
    if (!c->encode)
        s->s[s->len] = '\0';
    /* Strings end up in logs: no control characters, no NUL. */
    return xr_check(c, xr_printable(s->s, s->len), what);
}

static int xr_proto_ok(uint8_t p)
{
    return p == XR_PROTO_TCP || p == XR_PROTO_UDP;
}

/* The layout of every body, in field order. */
static void xr_proto_body(xr_cur_t *c, xr_msg_t *m)
{
    switch (m->type) {
    case XR_MSG_HELLO:
        xr_u16(c, &m->u.hello.min_version, "min_version");
        xr_u16(c, &m->u.hello.max_version, "max_version");
        xr_check(c, m->u.hello.min_version >= 1 && m->u.hello.min_version <= m->u.hello.max_version,
                 "version range");
        xr_u8(c, &m->u.hello.role, "role");
        xr_check(c, m->u.hello.role == XR_ROLE_LIBRARY || m->u.hello.role == XR_ROLE_AGENT, "role");
        xr_str(c, &m->u.hello.software, "software");
        break;
    case XR_MSG_HELLO_OK:
        xr_u16(c, &m->u.hello_ok.version, "version");
        xr_check(c, m->u.hello_ok.version >= 1, "version");
        xr_u32(c, &m->u.hello_ok.heartbeat_ms, "heartbeat_ms");
        xr_check(c, m->u.hello_ok.heartbeat_ms >= 100, "heartbeat_ms");
        xr_str(c, &m->u.hello_ok.software, "software");
        break;
    case XR_MSG_REGISTER:
        xr_u32(c, &m->u.reg.id, "id");
        xr_u8(c, &m->u.reg.proto, "proto");
        xr_check(c, xr_proto_ok(m->u.reg.proto), "proto");
        xr_addr(c, &m->u.reg.local, 0, "local");
        xr_addr(c, &m->u.reg.prior, 1, "prior");
        xr_addr(c, &m->u.reg.direct, 1, "direct");
        break;
    case XR_MSG_REGISTERED:
        xr_u32(c, &m->u.registered.id, "id");
        xr_u64(c, &m->u.registered.handle, "handle");
        xr_check(c, m->u.registered.handle != 0, "handle");
        xr_u32(c, &m->u.registered.lease_ms, "lease_ms");
        xr_check(c, m->u.registered.lease_ms >= 100, "lease_ms");
        xr_addr(c, &m->u.registered.official, 0, "official");
        break;
    case XR_MSG_REFRESH:
    case XR_MSG_UNREGISTER:
        xr_u32(c, &m->u.refresh.id, "id");
        xr_u64(c, &m->u.refresh.handle, "handle");
        xr_check(c, m->u.refresh.handle != 0, "handle");
        break;
    case XR_MSG_REFRESHED:
        xr_u32(c, &m->u.refreshed.id, "id");
        xr_u32(c, &m->u.refreshed.lease_ms, "lease_ms");
        xr_check(c, m->u.refreshed.lease_ms >= 100, "lease_ms");
        break;
    case XR_MSG_UNREGISTERED:
    case XR_MSG_INCOMING_OK: xr_u32(c, &m->u.done.id, "id"); break;
    case XR_MSG_CONNECT:
    case XR_MSG_OPEN:
        xr_u32(c, &m->u.connect.id, "id");
        xr_u8(c, &m->u.connect.proto, "proto");
        xr_check(c, xr_proto_ok(m->u.connect.proto), "proto");
        xr_addr(c, &m->u.connect.dst, 0, "dst");
        if (m->type == XR_MSG_OPEN)
            xr_addr(c, &m->u.connect.src, 0, "src");
        break;
    case XR_MSG_OPENED:
        xr_u32(c, &m->u.opened.id, "id");
        xr_addr(c, &m->u.opened.addr, 0, "addr");
        xr_u32(c, &m->u.opened.state_ms, "state_ms");
        xr_check(c, m->u.opened.state_ms >= 1000, "state_ms");
        break;
    case XR_MSG_CONNECT_OK:
        xr_u32(c, &m->u.connect_ok.id, "id");
        xr_u8(c, &m->u.connect_ok.mode, "mode");
        xr_check(c,
                 m->u.connect_ok.mode == XR_CONNECT_DIRECT ||
                     m->u.connect_ok.mode == XR_CONNECT_RELAY,
                 "mode");
        xr_addr(c, &m->u.connect_ok.addr, 0, "addr");
        xr_bytes(c, m->u.connect_ok.token, XR_PROTO_TOKEN, "token");
        xr_bytes(c, m->u.connect_ok.peer_key, XR_PROTO_KEYHASH, "peer_key");
        if (m->u.connect_ok.mode == XR_CONNECT_DIRECT) {
            /* a direct answer names no relay point */
            static const uint8_t zero[XR_PROTO_TOKEN];
            xr_check(c, memcmp(m->u.connect_ok.token, zero, sizeof(zero)) == 0, "token");
            xr_check(c, memcmp(m->u.connect_ok.peer_key, zero, sizeof(zero)) == 0, "peer_key");
        }
        break;
    case XR_MSG_PEER_CONNECT:
    case XR_MSG_PEER_OPEN:
        xr_u32(c, &m->u.peer_connect.id, "id");
        xr_u8(c, &m->u.peer_connect.proto, "proto");
        xr_check(c, xr_proto_ok(m->u.peer_connect.proto), "proto");
        xr_addr(c, &m->u.peer_connect.dst, 0, "dst");
        xr_addr(c, &m->u.peer_connect.src, 1, "src");
        xr_bytes(c, m->u.peer_connect.client_key, XR_PROTO_KEYHASH, "client_key");
        xr_str(c, &m->u.peer_connect.client_subject, "client_subject");
        break;
    case XR_MSG_RELAY_READY:
        xr_u32(c, &m->u.relay_ready.id, "id");
        xr_addr(c, &m->u.relay_ready.addr, 0, "addr");
        xr_bytes(c, m->u.relay_ready.token, XR_PROTO_TOKEN, "token");
        break;
    case XR_MSG_INCOMING:
        xr_u32(c, &m->u.incoming.id, "id");
        xr_u64(c, &m->u.incoming.handle, "handle");
        xr_check(c, m->u.incoming.handle != 0, "handle");
        xr_u8(c, &m->u.incoming.mode, "mode");
        xr_check(c,
                 m->u.incoming.mode == XR_INCOMING_INBOUND ||
                     m->u.incoming.mode == XR_INCOMING_CONNECT_OUT,
                 "mode");
        /* only a library that must connect out needs the relay point's address */
        xr_addr(c, &m->u.incoming.addr, m->u.incoming.mode == XR_INCOMING_INBOUND, "addr");
        xr_check(c, m->u.incoming.mode == XR_INCOMING_CONNECT_OUT || m->u.incoming.addr.family == 0,
                 "addr");
        xr_bytes(c, m->u.incoming.token, XR_PROTO_TOKEN, "token");
        xr_addr(c, &m->u.incoming.peer, 1, "peer");
        xr_str(c, &m->u.incoming.client_subject, "client_subject");
        break;
    case XR_MSG_LINK: xr_bytes(c, m->u.link.token, XR_PROTO_TOKEN, "token"); break;
    case XR_MSG_LINK_OK:
    case XR_MSG_ACK: break;
    case XR_MSG_ERROR:
        xr_u16(c, &m->u.error.code, "code");
        xr_check(c, m->u.error.code >= 1 && m->u.error.code <= XR_PERR_MAX, "code");
        xr_u32(c, &m->u.error.id, "id");
        xr_str(c, &m->u.error.message, "message");
        break;
    default: xr_fail(c, "type");
    }
}

const char *xr_proto_type_name(int type)
{
    switch (type) {
    case XR_MSG_HELLO: return "HELLO";
    case XR_MSG_HELLO_OK: return "HELLO_OK";
    case XR_MSG_REGISTER: return "REGISTER";
    case XR_MSG_REGISTERED: return "REGISTERED";
    case XR_MSG_REFRESH: return "REFRESH";
    case XR_MSG_REFRESHED: return "REFRESHED";
    case XR_MSG_UNREGISTER: return "UNREGISTER";
    case XR_MSG_UNREGISTERED: return "UNREGISTERED";
    case XR_MSG_CONNECT: return "CONNECT";
    case XR_MSG_CONNECT_OK: return "CONNECT_OK";
    case XR_MSG_PEER_CONNECT: return "PEER_CONNECT";
    case XR_MSG_RELAY_READY: return "RELAY_READY";
    case XR_MSG_OPEN: return "OPEN";
    case XR_MSG_PEER_OPEN: return "PEER_OPEN";
    case XR_MSG_OPENED: return "OPENED";
    case XR_MSG_INCOMING: return "INCOMING";
    case XR_MSG_INCOMING_OK: return "INCOMING_OK";
    case XR_MSG_LINK: return "LINK";
    case XR_MSG_LINK_OK: return "LINK_OK";
    case XR_MSG_ACK: return "ACK";
    case XR_MSG_ERROR: return "ERROR";
    default: return "?";
    }
}

static const struct {
    const char *name;
    int err;
} xr_perr[] = {
    [XR_PERR_NOT_AUTHORIZED] = {"NOT_AUTHORIZED", EACCES},
    [XR_PERR_NO_SUCH_ADDRESS] = {"NO_SUCH_ADDRESS", ECONNREFUSED},
    [XR_PERR_UNREACHABLE] = {"UNREACHABLE", EHOSTUNREACH},
    [XR_PERR_TIMEOUT] = {"TIMEOUT", ETIMEDOUT},
    [XR_PERR_OVER_LIMIT] = {"OVER_LIMIT", EAGAIN},
    [XR_PERR_PROTOCOL] = {"PROTOCOL", EPROTO},
    [XR_PERR_VERSION] = {"VERSION", EPROTONOSUPPORT},
    [XR_PERR_BAD_TOKEN] = {"BAD_TOKEN", EACCES},
    [XR_PERR_INTERNAL] = {"INTERNAL", EIO},
};

const char *xr_proto_err_name(int code)
{
    return code >= 1 && code <= XR_PERR_MAX ? xr_perr[code].name : "?";
}

int xr_proto_err_errno(int code)
{
    return code >= 1 && code <= XR_PERR_MAX ? xr_perr[code].err : EIO;
}

void xr_pstr_set(xr_pstr_t *p, const char *s)
{
    size_t n = strlen(s);
    if (n > XR_PROTO_STR_MAX)
        n = XR_PROTO_STR_MAX;
    for (size_t i = 0; i < n; i++)
        p->s[i] = ((unsigned char) s[i] < 0x20 || s[i] == 0x7f) ? '?' : s[i];
    p->s[n] = '\0';
    p->len = (uint8_t) n;
}

xr_proto_status_t xr_proto_decode(const uint8_t *buf, size_t len, xr_msg_t *m, size_t *used,
                                  const char **why)
{
    const char *dummy;
    if (why == NULL)
        why = &dummy;
    *why = NULL;
    *used = 0;
    if (len < XR_PROTO_HEADER)
        return XR_PROTO_AGAIN;
    size_t body = (size_t) buf[2] << 8 | buf[3];
    /* The header is judged before the body arrives: a peer announcing a
     * huge or unknown frame is refused at once. */
    if (body > XR_PROTO_MAX_BODY) {
        *why = "length";
        return XR_PROTO_E_TOO_BIG;
    }
    if (xr_proto_type_name(buf[0])[0] == '?') {
        *why = "type";
        return XR_PROTO_E_TYPE;
    }
    if (buf[1] != 0) {
        *why = "flags";
        return XR_PROTO_E_FLAGS;
    }
    if (len - XR_PROTO_HEADER < body)
        return XR_PROTO_AGAIN;

    memset(m, 0, sizeof(*m));
    m->type = (xr_msg_type_t) buf[0];
    xr_cur_t c = {.encode = 0, .q = buf + XR_PROTO_HEADER, .left = body};
    xr_proto_body(&c, m);
    if (c.why != NULL) {
        *why = c.why;
        return c.truncated ? XR_PROTO_E_LENGTH : XR_PROTO_E_FIELD;
    }
    if (c.left != 0) {
        *why = "trailing bytes";
        return XR_PROTO_E_LENGTH;
    }
    *used = XR_PROTO_HEADER + body;
    return XR_PROTO_OK;
}

size_t xr_proto_encode(const xr_msg_t *m, uint8_t *out, size_t cap)
{
    if (cap < XR_PROTO_HEADER)
        return 0;
    size_t room = cap - XR_PROTO_HEADER;
    if (room > XR_PROTO_MAX_BODY)
        room = XR_PROTO_MAX_BODY;
    /* The codec reads the message through a non-const pointer only when
     * decoding; encoding leaves it as it is. */
    xr_msg_t copy = *m;
    xr_cur_t c = {.encode = 1, .p = out + XR_PROTO_HEADER, .left = room};
    xr_proto_body(&c, &copy);
    if (c.why != NULL)
        return 0;
    size_t body = (size_t) (c.p - (out + XR_PROTO_HEADER));
    out[0] = (uint8_t) m->type;
    out[1] = 0;
    out[2] = (uint8_t) (body >> 8);
    out[3] = (uint8_t) body;
    return XR_PROTO_HEADER + body;
}

void xr_paddr_from_sockaddr(xr_paddr_t *a, const struct sockaddr_storage *ss)
{
    memset(a, 0, sizeof(*a));
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *s = (const struct sockaddr_in *) ss;
        a->family = 4;
        a->port = ntohs(s->sin_port);
        memcpy(a->addr, &s->sin_addr, 4);
    } else if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *s = (const struct sockaddr_in6 *) ss;
        a->family = 6;
        a->port = ntohs(s->sin6_port);
        memcpy(a->addr, &s->sin6_addr, 16);
    }
}

unsigned xr_paddr_to_sockaddr(const xr_paddr_t *a, struct sockaddr_storage *ss)
{
    memset(ss, 0, sizeof(*ss));
    if (a->family == 4) {
        struct sockaddr_in *s4 = (struct sockaddr_in *) ss;
        s4->sin_family = AF_INET;
        s4->sin_port = htons(a->port);
        memcpy(&s4->sin_addr, a->addr, 4);
        return sizeof(*s4);
    }
    if (a->family == 6) {
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *) ss;
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons(a->port);
        memcpy(&s6->sin6_addr, a->addr, 16);
        return sizeof(*s6);
    }
    return 0;
}

const char *xr_paddr_host(const xr_paddr_t *a, char *buf, size_t size)
{
    snprintf(buf, size, "?");
    if (a->family == 4 || a->family == 6)
        inet_ntop(a->family == 4 ? AF_INET : AF_INET6, a->addr, buf, (socklen_t) size);
    return buf;
}

const char *xr_paddr_str(const xr_paddr_t *a, char *buf, size_t size)
{
    char host[INET6_ADDRSTRLEN];
    snprintf(buf, size, a->family == 6 ? "[%s]:%u" : "%s:%u", xr_paddr_host(a, host, sizeof(host)),
             a->port);
    return buf;
}
