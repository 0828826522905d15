/*
 * test_proto.c: the XRAY control-protocol codec (src/common/proto.c).
 *
 * Every type round-trips field for field and byte for byte; a few frames
 * are pinned against hand-written bytes, so an accidental change to the
 * wire format fails here; partial frames ask for more; each refusal
 * comes with its status and names its field; the encoder refuses what the
 * decoder would.  Frames are decoded out of buffers allocated at their
 * exact length, so a sanitizer build sees any read past the end.
 */
#include "common/proto.h"

#include "unit.h"

#define NTYPES 21

static const xr_msg_type_t all_types[NTYPES] = {
    XR_MSG_HELLO,    XR_MSG_HELLO_OK,    XR_MSG_REGISTER,     XR_MSG_REGISTERED,
    XR_MSG_REFRESH,  XR_MSG_REFRESHED,   XR_MSG_UNREGISTER,   XR_MSG_UNREGISTERED,
    XR_MSG_CONNECT,  XR_MSG_CONNECT_OK,  XR_MSG_PEER_CONNECT, XR_MSG_RELAY_READY,
    XR_MSG_INCOMING, XR_MSG_INCOMING_OK, XR_MSG_LINK,         XR_MSG_LINK_OK,
    XR_MSG_ACK,      XR_MSG_ERROR,       XR_MSG_OPEN,         XR_MSG_PEER_OPEN,
    XR_MSG_OPENED};

/* ---- fixtures ------------------------------------------------------------ */

static void addr4(xr_paddr_t *a, uint16_t port, uint8_t a0, uint8_t a1, uint8_t a2, uint8_t a3)
{
    memset(a, 0, sizeof(*a));
    a->family = 4;
    a->port = port;
    a->addr[0] = a0;
    a->addr[1] = a1;
    a->addr[2] = a2;
    a->addr[3] = a3;
}

/* 2001:db8::<salt>:<salt+1>... : every byte differs, so a swap shows. */
static void addr6(xr_paddr_t *a, uint16_t port, uint8_t salt)
{
    memset(a, 0, sizeof(*a));
    a->family = 6;
    a->port = port;
    a->addr[0] = 0x20;
    a->addr[1] = 0x01;
    a->addr[2] = 0x0d;
    a->addr[3] = 0xb8;
    for (int i = 4; i < 16; i++)
        a->addr[i] = (uint8_t) (salt + i);
}

static void fill(uint8_t *p, size_t n, uint8_t salt)
{
    for (size_t i = 0; i < n; i++)
        p[i] = (uint8_t) (salt + 37 * i);
}

/* A string of n printable bytes (n <= 255). */
static void str_n(xr_pstr_t *s, size_t n, char first)
{
    char tmp[XR_PROTO_STR_MAX + 1];
    for (size_t i = 0; i < n; i++)
        tmp[i] = (char) (first + i % 60);
    tmp[n] = '\0';
    xr_pstr_set(s, tmp);
    ASSERT_EQ(s->len, n);
}

/*
 * A fully populated, valid message of the given type.  Variant 0 uses
 * IPv4 addresses and short strings, 1 IPv6 addresses and 255-byte
 * strings, 2 the other optional forms (absent addresses, empty strings).
 */
static void make_msg(xr_msg_t *m, xr_msg_type_t type, int variant)
{
    int v6 = variant == 1;
    size_t slen = variant == 0 ? 11 : variant == 1 ? XR_PROTO_STR_MAX : 0;
    memset(m, 0, sizeof(*m));
    m->type = type;
    switch (type) {
    case XR_MSG_HELLO:
        m->u.hello.min_version = 1;
        m->u.hello.max_version = variant == 2 ? 1 : 0x0203;
        m->u.hello.role = variant == 0 ? XR_ROLE_LIBRARY : XR_ROLE_AGENT;
        str_n(&m->u.hello.software, slen, 'a');
        break;
    case XR_MSG_HELLO_OK:
        m->u.hello_ok.version = variant == 2 ? 1 : 0xfffe;
        m->u.hello_ok.heartbeat_ms = variant == 2 ? 100 : 0x89abcdef;
        str_n(&m->u.hello_ok.software, slen, 'A');
        break;
    case XR_MSG_REGISTER:
        m->u.reg.id = 0xdeadbeef;
        m->u.reg.proto = v6 ? XR_PROTO_UDP : XR_PROTO_TCP;
        if (v6) {
            addr6(&m->u.reg.local, 8443, 1);
            addr6(&m->u.reg.prior, 65535, 2);
            addr6(&m->u.reg.direct, 8444, 1);
        } else {
            addr4(&m->u.reg.local, 8080, 10, 0, 0, 5);
            if (variant == 0) {
                addr4(&m->u.reg.prior, 1, 192, 0, 2, 200);
                addr4(&m->u.reg.direct, 5001, 10, 0, 0, 5);
            }
        }
        break;
    case XR_MSG_REGISTERED:
        m->u.registered.id = 0x01020304;
        m->u.registered.handle = variant == 2 ? 1 : 0x1122334455667788;
        m->u.registered.lease_ms = variant == 2 ? 100 : 30000;
        if (v6)
            addr6(&m->u.registered.official, 443, 3);
        else
            addr4(&m->u.registered.official, 443, 100, 64, 1, 2);
        break;
    case XR_MSG_REFRESH:
    case XR_MSG_UNREGISTER:
        m->u.refresh.id = 0xfffffffe;
        m->u.refresh.handle = variant == 2 ? UINT64_MAX : 0x8000000000000001;
        break;
    case XR_MSG_REFRESHED:
        m->u.refreshed.id = 77;
        m->u.refreshed.lease_ms = UINT32_MAX;
        break;
    case XR_MSG_UNREGISTERED:
    case XR_MSG_INCOMING_OK: m->u.done.id = variant == 2 ? 0 : 0xa5a5a5a5; break;
    case XR_MSG_CONNECT:
    case XR_MSG_OPEN:
        m->u.connect.id = 9;
        m->u.connect.proto = v6 ? XR_PROTO_TCP : XR_PROTO_UDP;
        if (v6)
            addr6(&m->u.connect.dst, 53, 4);
        else
            addr4(&m->u.connect.dst, 53, 8, 8, 4, 4);
        if (type == XR_MSG_OPEN)
            addr4(&m->u.connect.src, 40001, 0, 0, 0, 0); /* "as you see me" */
        break;
    case XR_MSG_OPENED:
        m->u.opened.id = 19;
        if (v6)
            addr6(&m->u.opened.addr, 8080, 5);
        else
            addr4(&m->u.opened.addr, 20001, 198, 19, 0, 2);
        m->u.opened.state_ms = 432000000;
        break;
    case XR_MSG_CONNECT_OK:
        m->u.connect_ok.id = 10;
        m->u.connect_ok.mode = variant == 0 ? XR_CONNECT_DIRECT : XR_CONNECT_RELAY;
        if (v6)
            addr6(&m->u.connect_ok.addr, 7000, 5);
        else
            addr4(&m->u.connect_ok.addr, 7000, 172, 16, 0, 1);
        if (m->u.connect_ok.mode == XR_CONNECT_RELAY) { /* zeros when direct */
            fill(m->u.connect_ok.token, XR_PROTO_TOKEN, 1);
            fill(m->u.connect_ok.peer_key, XR_PROTO_KEYHASH, 2);
        }
        break;
    case XR_MSG_PEER_CONNECT:
    case XR_MSG_PEER_OPEN:
        m->u.peer_connect.id = 11;
        m->u.peer_connect.proto = XR_PROTO_TCP;
        if (v6) {
            addr6(&m->u.peer_connect.dst, 22, 6);
            addr6(&m->u.peer_connect.src, 40000, 7);
        } else {
            addr4(&m->u.peer_connect.dst, 22, 10, 1, 2, 3);
            if (variant == 0)
                addr4(&m->u.peer_connect.src, 40000, 10, 9, 8, 7);
        }
        fill(m->u.peer_connect.client_key, XR_PROTO_KEYHASH, 3);
        str_n(&m->u.peer_connect.client_subject, slen, '0');
        break;
    case XR_MSG_RELAY_READY:
        m->u.relay_ready.id = 12;
        if (v6)
            addr6(&m->u.relay_ready.addr, 9000, 8);
        else
            addr4(&m->u.relay_ready.addr, 9000, 203, 0, 113, 9);
        fill(m->u.relay_ready.token, XR_PROTO_TOKEN, 4);
        break;
    case XR_MSG_INCOMING:
        m->u.incoming.id = 13;
        m->u.incoming.handle = 0x0102030405060708;
        if (variant == 2) {
            m->u.incoming.mode = XR_INCOMING_INBOUND; /* addr absent */
        } else {
            m->u.incoming.mode = XR_INCOMING_CONNECT_OUT;
            if (v6)
                addr6(&m->u.incoming.addr, 9001, 9);
            else
                addr4(&m->u.incoming.addr, 9001, 198, 51, 100, 1);
        }
        fill(m->u.incoming.token, XR_PROTO_TOKEN, 5);
        if (v6)
            addr6(&m->u.incoming.peer, 1234, 10);
        else if (variant == 0)
            addr4(&m->u.incoming.peer, 1234, 10, 20, 30, 40);
        str_n(&m->u.incoming.client_subject, slen, 'K');
        break;
    case XR_MSG_LINK: fill(m->u.link.token, XR_PROTO_TOKEN, 6); break;
    case XR_MSG_LINK_OK:
    case XR_MSG_ACK: break;
    case XR_MSG_ERROR:
        m->u.error.code = variant == 0 ? XR_PERR_NOT_AUTHORIZED : XR_PERR_MAX;
        m->u.error.id = 0x7fffffff;
        str_n(&m->u.error.message, slen, ' ');
        break;
    }
}

static void addr_eq(const xr_paddr_t *a, const xr_paddr_t *b)
{
    ASSERT_EQ(a->family, b->family);
    ASSERT_EQ(a->port, b->port);
    ASSERT_MEMEQ(a->addr, b->addr, sizeof(a->addr));
}

static void str_eq(const xr_pstr_t *a, const xr_pstr_t *b)
{
    ASSERT_EQ(a->len, b->len);
    ASSERT_MEMEQ(a->s, b->s, a->len);
    ASSERT_EQ(a->s[a->len], '\0');
    ASSERT_EQ(b->s[b->len], '\0');
}

/* The fields the type defines must be equal. */
static void msg_eq(const xr_msg_t *a, const xr_msg_t *b)
{
    ASSERT_EQ(a->type, b->type);
    switch (a->type) {
    case XR_MSG_HELLO:
        ASSERT_EQ(a->u.hello.min_version, b->u.hello.min_version);
        ASSERT_EQ(a->u.hello.max_version, b->u.hello.max_version);
        ASSERT_EQ(a->u.hello.role, b->u.hello.role);
        str_eq(&a->u.hello.software, &b->u.hello.software);
        break;
    case XR_MSG_HELLO_OK:
        ASSERT_EQ(a->u.hello_ok.version, b->u.hello_ok.version);
        ASSERT_EQ(a->u.hello_ok.heartbeat_ms, b->u.hello_ok.heartbeat_ms);
        str_eq(&a->u.hello_ok.software, &b->u.hello_ok.software);
        break;
    case XR_MSG_REGISTER:
        ASSERT_EQ(a->u.reg.id, b->u.reg.id);
        ASSERT_EQ(a->u.reg.proto, b->u.reg.proto);
        addr_eq(&a->u.reg.local, &b->u.reg.local);
        addr_eq(&a->u.reg.prior, &b->u.reg.prior);
        addr_eq(&a->u.reg.direct, &b->u.reg.direct);
        break;
    case XR_MSG_REGISTERED:
        ASSERT_EQ(a->u.registered.id, b->u.registered.id);
        ASSERT_TRUE(a->u.registered.handle == b->u.registered.handle);
        ASSERT_EQ(a->u.registered.lease_ms, b->u.registered.lease_ms);
        addr_eq(&a->u.registered.official, &b->u.registered.official);
        break;
    case XR_MSG_REFRESH:
    case XR_MSG_UNREGISTER:
        ASSERT_EQ(a->u.refresh.id, b->u.refresh.id);
        ASSERT_TRUE(a->u.refresh.handle == b->u.refresh.handle);
        break;
    case XR_MSG_REFRESHED:
        ASSERT_EQ(a->u.refreshed.id, b->u.refreshed.id);
        ASSERT_EQ(a->u.refreshed.lease_ms, b->u.refreshed.lease_ms);
        break;
    case XR_MSG_UNREGISTERED:
    case XR_MSG_INCOMING_OK: ASSERT_EQ(a->u.done.id, b->u.done.id); break;
    case XR_MSG_CONNECT:
    case XR_MSG_OPEN:
        ASSERT_EQ(a->u.connect.id, b->u.connect.id);
        ASSERT_EQ(a->u.connect.proto, b->u.connect.proto);
        addr_eq(&a->u.connect.dst, &b->u.connect.dst);
        if (a->type == XR_MSG_OPEN)
            addr_eq(&a->u.connect.src, &b->u.connect.src);
        break;
    case XR_MSG_OPENED:
        ASSERT_EQ(a->u.opened.id, b->u.opened.id);
        addr_eq(&a->u.opened.addr, &b->u.opened.addr);
        ASSERT_EQ(a->u.opened.state_ms, b->u.opened.state_ms);
        break;
    case XR_MSG_CONNECT_OK:
        ASSERT_EQ(a->u.connect_ok.id, b->u.connect_ok.id);
        ASSERT_EQ(a->u.connect_ok.mode, b->u.connect_ok.mode);
        addr_eq(&a->u.connect_ok.addr, &b->u.connect_ok.addr);
        ASSERT_MEMEQ(a->u.connect_ok.token, b->u.connect_ok.token, XR_PROTO_TOKEN);
        ASSERT_MEMEQ(a->u.connect_ok.peer_key, b->u.connect_ok.peer_key, XR_PROTO_KEYHASH);
        break;
    case XR_MSG_PEER_CONNECT:
    case XR_MSG_PEER_OPEN:
        ASSERT_EQ(a->u.peer_connect.id, b->u.peer_connect.id);
        ASSERT_EQ(a->u.peer_connect.proto, b->u.peer_connect.proto);
        addr_eq(&a->u.peer_connect.dst, &b->u.peer_connect.dst);
        addr_eq(&a->u.peer_connect.src, &b->u.peer_connect.src);
        ASSERT_MEMEQ(a->u.peer_connect.client_key, b->u.peer_connect.client_key, XR_PROTO_KEYHASH);
        str_eq(&a->u.peer_connect.client_subject, &b->u.peer_connect.client_subject);
        break;
    case XR_MSG_RELAY_READY:
        ASSERT_EQ(a->u.relay_ready.id, b->u.relay_ready.id);
        addr_eq(&a->u.relay_ready.addr, &b->u.relay_ready.addr);
        ASSERT_MEMEQ(a->u.relay_ready.token, b->u.relay_ready.token, XR_PROTO_TOKEN);
        break;
    case XR_MSG_INCOMING:
        ASSERT_EQ(a->u.incoming.id, b->u.incoming.id);
        ASSERT_TRUE(a->u.incoming.handle == b->u.incoming.handle);
        ASSERT_EQ(a->u.incoming.mode, b->u.incoming.mode);
        addr_eq(&a->u.incoming.addr, &b->u.incoming.addr);
        ASSERT_MEMEQ(a->u.incoming.token, b->u.incoming.token, XR_PROTO_TOKEN);
        addr_eq(&a->u.incoming.peer, &b->u.incoming.peer);
        str_eq(&a->u.incoming.client_subject, &b->u.incoming.client_subject);
        break;
    case XR_MSG_LINK: ASSERT_MEMEQ(a->u.link.token, b->u.link.token, XR_PROTO_TOKEN); break;
    case XR_MSG_LINK_OK:
    case XR_MSG_ACK: break;
    case XR_MSG_ERROR:
        ASSERT_EQ(a->u.error.code, b->u.error.code);
        ASSERT_EQ(a->u.error.id, b->u.error.id);
        str_eq(&a->u.error.message, &b->u.error.message);
        break;
    default: FAIL("unexpected type %d", (int) a->type);
    }
}

/* A copy of p[0..n) at the exact length (a sanitizer sees one byte past). */
static uint8_t *exact(const uint8_t *p, size_t n)
{
    uint8_t *q = malloc(n > 0 ? n : 1);
    ASSERT_NOT_NULL(q);
    if (n > 0)
        memcpy(q, p, n);
    return q;
}

/* Encode m (which must be valid); returns its length, frame in out. */
static size_t enc(const xr_msg_t *m, uint8_t out[XR_PROTO_MAX_FRAME])
{
    size_t n = xr_proto_encode(m, out, XR_PROTO_MAX_FRAME);
    if (n == 0)
        FAIL("encode of %s refused", xr_proto_type_name(m->type));
    ASSERT_GE(n, XR_PROTO_HEADER);
    ASSERT_EQ(out[0], m->type);
    ASSERT_EQ(out[1], 0);
    ASSERT_EQ((size_t) out[2] << 8 | out[3], n - XR_PROTO_HEADER);
    return n;
}

/* Decode p[0..n) out of an exact copy. */
static xr_proto_status_t dec(const uint8_t *p, size_t n, xr_msg_t *m, size_t *used,
                             const char **why)
{
    uint8_t *q = exact(p, n);
    xr_proto_status_t st = xr_proto_decode(q, n, m, used, why);
    free(q);
    return st;
}

/* The frame p[0..n) must be refused with st, naming `field`. */
static void refused(const uint8_t *p, size_t n, xr_proto_status_t st, const char *field)
{
    xr_msg_t m;
    size_t used = 12345;
    const char *why = NULL;
    ASSERT_EQ(dec(p, n, &m, &used, &why), st);
    ASSERT_EQ(used, 0);
    ASSERT_STREQ(why, field);
}

/* A valid frame of `type` (variant 0), ready to spoil. */
static size_t frame_of(xr_msg_type_t type, uint8_t out[XR_PROTO_MAX_FRAME])
{
    xr_msg_t m;
    make_msg(&m, type, 0);
    return enc(&m, out);
}

/* Refused once byte `off` of the body (header excluded) is set to v. */
static void refused_with(xr_msg_type_t type, size_t off, uint8_t v, const char *field)
{
    uint8_t f[XR_PROTO_MAX_FRAME];
    size_t n = frame_of(type, f);
    ASSERT_LT(XR_PROTO_HEADER + off, n);
    f[XR_PROTO_HEADER + off] = v;
    refused(f, n, XR_PROTO_E_FIELD, field);
}

/* ---- round trips --------------------------------------------------------- */

TEST(every_type_round_trips)
{
    for (int variant = 0; variant < 3; variant++) {
        for (int i = 0; i < NTYPES; i++) {
            xr_msg_t m, d;
            uint8_t f[XR_PROTO_MAX_FRAME], g[XR_PROTO_MAX_FRAME];
            make_msg(&m, all_types[i], variant);
            size_t n = enc(&m, f);
            size_t used = 0;
            const char *why = "unset";
            xr_proto_status_t st = dec(f, n, &d, &used, &why);
            if (st != XR_PROTO_OK)
                FAIL("%s variant %d: status %d (%s)", xr_proto_type_name(all_types[i]), variant,
                     (int) st, why ? why : "(null)");
            ASSERT_EQ(used, n);
            msg_eq(&m, &d);
            /* encode(decode(f)) == f, into a buffer of exactly its size */
            uint8_t *o = malloc(n);
            ASSERT_NOT_NULL(o);
            ASSERT_EQ(xr_proto_encode(&d, o, n), n);
            ASSERT_MEMEQ(o, f, n);
            free(o);
            ASSERT_EQ(enc(&d, g), n);
            ASSERT_MEMEQ(g, f, n);
        }
    }
}

TEST(body_lengths)
{
    /* The fixed part of every layout, from the field list in proto.h;
     * strings add 1 + len. */
    static const struct {
        xr_msg_type_t type;
        size_t fixed, strings;
    } want[] = {
        {XR_MSG_HELLO, 5, 1},       {XR_MSG_HELLO_OK, 6, 1},      {XR_MSG_REGISTER, 62, 0},
        {XR_MSG_REGISTERED, 35, 0}, {XR_MSG_REFRESH, 12, 0},      {XR_MSG_REFRESHED, 8, 0},
        {XR_MSG_UNREGISTER, 12, 0}, {XR_MSG_UNREGISTERED, 4, 0},  {XR_MSG_CONNECT, 24, 0},
        {XR_MSG_CONNECT_OK, 88, 0}, {XR_MSG_PEER_CONNECT, 75, 1}, {XR_MSG_RELAY_READY, 55, 0},
        {XR_MSG_INCOMING, 83, 1},   {XR_MSG_INCOMING_OK, 4, 0},   {XR_MSG_LINK, 32, 0},
        {XR_MSG_LINK_OK, 0, 0},     {XR_MSG_ACK, 0, 0},           {XR_MSG_ERROR, 6, 1},
        {XR_MSG_OPEN, 43, 0},       {XR_MSG_PEER_OPEN, 75, 1},    {XR_MSG_OPENED, 27, 0},
    };
    ASSERT_EQ(sizeof(want) / sizeof(want[0]), NTYPES);
    for (size_t i = 0; i < NTYPES; i++) {
        for (int variant = 0; variant < 3; variant++) {
            xr_msg_t m;
            uint8_t f[XR_PROTO_MAX_FRAME];
            make_msg(&m, want[i].type, variant);
            size_t slen = variant == 0 ? 11 : variant == 1 ? XR_PROTO_STR_MAX : 0;
            size_t body = want[i].fixed + want[i].strings * (1 + slen);
            ASSERT_EQ(enc(&m, f), XR_PROTO_HEADER + body);
        }
    }
}

TEST(empty_and_longest_strings)
{
    xr_msg_t m, d;
    uint8_t f[XR_PROTO_MAX_FRAME];
    size_t used;
    make_msg(&m, XR_MSG_ERROR, 2);
    ASSERT_EQ(m.u.error.message.len, 0);
    size_t n = enc(&m, f);
    ASSERT_EQ(n, XR_PROTO_HEADER + 7);
    ASSERT_EQ(f[n - 1], 0); /* the length byte, nothing after it */
    ASSERT_EQ(dec(f, n, &d, &used, NULL), XR_PROTO_OK);
    ASSERT_STREQ(d.u.error.message.s, "");

    make_msg(&m, XR_MSG_ERROR, 1);
    ASSERT_EQ(m.u.error.message.len, 255);
    n = enc(&m, f);
    ASSERT_EQ(n, XR_PROTO_HEADER + 7 + 255);
    ASSERT_EQ(f[XR_PROTO_HEADER + 6], 255);
    ASSERT_EQ(dec(f, n, &d, &used, NULL), XR_PROTO_OK);
    ASSERT_EQ(strlen(d.u.error.message.s), 255);
    ASSERT_STREQ(d.u.error.message.s, m.u.error.message.s);

    /* the largest body of all: INCOMING with a 255-byte subject */
    make_msg(&m, XR_MSG_INCOMING, 1);
    n = enc(&m, f);
    ASSERT_EQ(n, XR_PROTO_HEADER + 83 + 1 + 255);
    ASSERT_LE(n, XR_PROTO_MAX_FRAME);
}

TEST(bytes_above_0x7f_are_printable)
{
    /* UTF-8 passes; only C0 controls and DEL are refused. */
    xr_msg_t m, d;
    uint8_t f[XR_PROTO_MAX_FRAME];
    size_t used;
    make_msg(&m, XR_MSG_HELLO, 0);
    xr_pstr_set(&m.u.hello.software, "caf\xc3\xa9 \xff~");
    ASSERT_EQ(m.u.hello.software.len, 8);
    size_t n = enc(&m, f);
    ASSERT_EQ(dec(f, n, &d, &used, NULL), XR_PROTO_OK);
    ASSERT_STREQ(d.u.hello.software.s, "caf\xc3\xa9 \xff~");
}

/* ---- golden bytes -------------------------------------------------------- */

/* Encode m, compare with the hand-written frame, decode that back. */
static void golden(const xr_msg_t *m, const uint8_t *want, size_t n)
{
    uint8_t f[XR_PROTO_MAX_FRAME];
    size_t got = xr_proto_encode(m, f, sizeof(f));
    ASSERT_EQ(got, n);
    for (size_t i = 0; i < n; i++)
        if (f[i] != want[i])
            FAIL("byte %zu: encoded 0x%02x, want 0x%02x", i, f[i], want[i]);
    xr_msg_t d;
    size_t used;
    ASSERT_EQ(dec(want, n, &d, &used, NULL), XR_PROTO_OK);
    ASSERT_EQ(used, n);
    msg_eq(m, &d);
}

TEST(golden_hello)
{
    static const uint8_t want[] = {
        0x01, 0x00, 0x00, 0x0e,                         /* HELLO, flags, body 14 */
        0x00, 0x01,                                     /* min_version 1 */
        0x00, 0x03,                                     /* max_version 3 */
        0x02,                                           /* role AGENT */
        0x08, 'x',  'r',  'a',  'y', '/', '0', '.', '1' /* software */
    };
    xr_msg_t m;
    memset(&m, 0, sizeof(m));
    m.type = XR_MSG_HELLO;
    m.u.hello.min_version = 1;
    m.u.hello.max_version = 3;
    m.u.hello.role = XR_ROLE_AGENT;
    xr_pstr_set(&m.u.hello.software, "xray/0.1");
    golden(&m, want, sizeof(want));

    /* html-docs/protocol.html's example: version 1 only, library, "lib" */
    static const uint8_t spec[] = {0x01, 0x00, 0x00, 0x09, 0x00, 0x01, 0x00,
                                   0x01, 0x01, 0x03, 0x6c, 0x69, 0x62};
    m.u.hello.max_version = 1;
    m.u.hello.role = XR_ROLE_LIBRARY;
    xr_pstr_set(&m.u.hello.software, "lib");
    golden(&m, spec, sizeof(spec));
}

TEST(golden_register_ipv4)
{
    static const uint8_t want[] = {
        0x10, 0x00, 0x00, 0x3e, /* REGISTER, flags, body 62 */
        0x01, 0x02, 0x03, 0x04, /* id */
        0x06,                   /* proto TCP */
        /* local: family 4, port 8080, 10.0.0.5 and 12 bytes of padding */
        0x04, 0x1f, 0x90, 0x0a, 0x00, 0x00, 0x05, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00,
        /* prior: family 4, port 65534, 192.0.2.1 */
        0x04, 0xff, 0xfe, 0xc0, 0x00, 0x02, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00,
        /* direct: family 4, port 5001, 10.0.0.5 */
        0x04, 0x13, 0x89, 0x0a, 0x00, 0x00, 0x05, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00};
    xr_msg_t m;
    memset(&m, 0, sizeof(m));
    m.type = XR_MSG_REGISTER;
    m.u.reg.id = 0x01020304;
    m.u.reg.proto = XR_PROTO_TCP;
    addr4(&m.u.reg.local, 8080, 10, 0, 0, 5);
    addr4(&m.u.reg.prior, 65534, 192, 0, 2, 1);
    addr4(&m.u.reg.direct, 5001, 10, 0, 0, 5);
    golden(&m, want, sizeof(want));

    /* without a prior or direct address: family 0 and 18 zero bytes each */
    uint8_t want0[66];
    memset(want0, 0, sizeof(want0));
    memcpy(want0, want, 4 + 4 + 1 + 19);
    memset(&m.u.reg.prior, 0, sizeof(m.u.reg.prior));
    memset(&m.u.reg.direct, 0, sizeof(m.u.reg.direct));
    golden(&m, want0, sizeof(want0));
}

TEST(golden_registered_ipv6)
{
    static const uint8_t want[] = {0x11, 0x00, 0x00, 0x23, /* REGISTERED, flags, body 35 */
                                   0x00, 0x00, 0x00, 0x07, /* id */
                                   0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, /* handle */
                                   0x00, 0x00, 0x75, 0x30, /* lease_ms 30000 */
                                   /* official: family 6, port 443, 2001:db8::1 */
                                   0x06, 0x01, 0xbb, 0x20, 0x01, 0x0d, 0xb8, 0x00, 0x00, 0x00, 0x00,
                                   0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01};
    xr_msg_t m;
    memset(&m, 0, sizeof(m));
    m.type = XR_MSG_REGISTERED;
    m.u.registered.id = 7;
    m.u.registered.handle = 0x1122334455667788;
    m.u.registered.lease_ms = 30000;
    m.u.registered.official.family = 6;
    m.u.registered.official.port = 443;
    static const uint8_t a6[16] = {0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1};
    memcpy(m.u.registered.official.addr, a6, 16);
    golden(&m, want, sizeof(want));
}

TEST(golden_error)
{
    static const uint8_t want[] = {
        0x7f, 0x00, 0x00, 0x0e,                    /* ERROR, flags, body 14 */
        0x00, 0x02,                                /* code NO_SUCH_ADDRESS */
        0x0a, 0x0b, 0x0c, 0x0d,                    /* id */
        0x07, 'n',  'o',  ' ',  's', 'u', 'c', 'h' /* message */
    };
    xr_msg_t m;
    memset(&m, 0, sizeof(m));
    m.type = XR_MSG_ERROR;
    m.u.error.code = XR_PERR_NO_SUCH_ADDRESS;
    m.u.error.id = 0x0a0b0c0d;
    xr_pstr_set(&m.u.error.message, "no such");
    golden(&m, want, sizeof(want));
}

TEST(golden_bodiless)
{
    static const uint8_t ack[] = {0x42, 0x00, 0x00, 0x00};
    static const uint8_t link_ok[] = {0x41, 0x00, 0x00, 0x00};
    xr_msg_t m;
    memset(&m, 0, sizeof(m));
    m.type = XR_MSG_ACK;
    golden(&m, ack, sizeof(ack));
    m.type = XR_MSG_LINK_OK;
    golden(&m, link_ok, sizeof(link_ok));
}

/* ---- partial input ------------------------------------------------------- */

TEST(every_prefix_is_again)
{
    for (int variant = 0; variant < 3; variant++) {
        for (int i = 0; i < NTYPES; i++) {
            xr_msg_t m, d;
            uint8_t f[XR_PROTO_MAX_FRAME];
            make_msg(&m, all_types[i], variant);
            size_t n = enc(&m, f);
            for (size_t k = 0; k < n; k++) {
                size_t used = 99;
                const char *why = "unset";
                xr_proto_status_t st = dec(f, k, &d, &used, &why);
                if (st != XR_PROTO_AGAIN)
                    FAIL("%s: %zu of %zu bytes gave %d (%s)", xr_proto_type_name(m.type), k, n,
                         (int) st, why ? why : "(null)");
                ASSERT_EQ(used, 0);
            }
        }
    }
}

TEST(header_errors_need_only_the_header)
{
    static const uint8_t big[] = {0x01, 0x00, 0x04, 0x01}; /* body 1025 */
    static const uint8_t huge[] = {0x20, 0x00, 0xff, 0xff};
    static const uint8_t type[] = {0x03, 0x00, 0x00, 0x05};
    static const uint8_t flags[] = {0x42, 0x80, 0x00, 0x00};
    xr_msg_t m;
    size_t used;
    for (size_t k = 0; k < XR_PROTO_HEADER; k++) {
        ASSERT_EQ(dec(big, k, &m, &used, NULL), XR_PROTO_AGAIN);
        ASSERT_EQ(dec(type, k, &m, &used, NULL), XR_PROTO_AGAIN);
        ASSERT_EQ(dec(flags, k, &m, &used, NULL), XR_PROTO_AGAIN);
    }
    refused(big, sizeof(big), XR_PROTO_E_TOO_BIG, "length");
    refused(huge, sizeof(huge), XR_PROTO_E_TOO_BIG, "length");
    refused(type, sizeof(type), XR_PROTO_E_TYPE, "type");
    refused(flags, sizeof(flags), XR_PROTO_E_FLAGS, "flags");

    /* 1024 is allowed: a frame that long is only partial here */
    static const uint8_t max[] = {0x7f, 0x00, 0x04, 0x00};
    ASSERT_EQ(dec(max, sizeof(max), &m, &used, NULL), XR_PROTO_AGAIN);
}

TEST(two_frames_back_to_back)
{
    xr_msg_t a, b, d;
    uint8_t fa[XR_PROTO_MAX_FRAME], fb[XR_PROTO_MAX_FRAME], both[2 * XR_PROTO_MAX_FRAME];
    make_msg(&a, XR_MSG_HELLO, 0);
    make_msg(&b, XR_MSG_INCOMING, 1);
    size_t na = enc(&a, fa), nb = enc(&b, fb);
    memcpy(both, fa, na);
    memcpy(both + na, fb, nb);

    uint8_t *q = exact(both, na + nb);
    size_t used = 0;
    ASSERT_EQ(xr_proto_decode(q, na + nb, &d, &used, NULL), XR_PROTO_OK);
    ASSERT_EQ(used, na);
    msg_eq(&a, &d);
    size_t off = used;
    ASSERT_EQ(xr_proto_decode(q + off, na + nb - off, &d, &used, NULL), XR_PROTO_OK);
    ASSERT_EQ(used, nb);
    msg_eq(&b, &d);
    off += used;
    ASSERT_EQ(off, na + nb);
    ASSERT_EQ(xr_proto_decode(q + off, 0, &d, &used, NULL), XR_PROTO_AGAIN);
    free(q);

    /* the first, then only part of the second: OK, then AGAIN */
    q = exact(both, na + nb - 1);
    ASSERT_EQ(xr_proto_decode(q, na + nb - 1, &d, &used, NULL), XR_PROTO_OK);
    ASSERT_EQ(used, na);
    ASSERT_EQ(xr_proto_decode(q + na, nb - 1, &d, &used, NULL), XR_PROTO_AGAIN);
    ASSERT_EQ(used, 0);
    free(q);
}

/* ---- refusals ------------------------------------------------------------ */

TEST(unknown_types)
{
    for (int t = 0; t < 256; t++) {
        uint8_t f[4] = {(uint8_t) t, 0, 0, 0};
        int known = 0;
        for (int i = 0; i < NTYPES; i++)
            known |= (int) all_types[i] == t;
        ASSERT_EQ(strcmp(xr_proto_type_name(t), "?") != 0, known);
        if (!known)
            refused(f, sizeof(f), XR_PROTO_E_TYPE, "type");
    }
    ASSERT_STREQ(xr_proto_type_name(XR_MSG_REGISTER), "REGISTER");
    ASSERT_STREQ(xr_proto_type_name(XR_MSG_PEER_CONNECT), "PEER_CONNECT");
    ASSERT_STREQ(xr_proto_type_name(-1), "?");
    ASSERT_STREQ(xr_proto_type_name(0x101), "?");
}

TEST(nonzero_flags)
{
    for (int i = 0; i < NTYPES; i++) {
        uint8_t f[XR_PROTO_MAX_FRAME];
        size_t n = frame_of(all_types[i], f);
        for (int bit = 0; bit < 8; bit++) {
            f[1] = (uint8_t) (1 << bit);
            refused(f, n, XR_PROTO_E_FLAGS, "flags");
        }
    }
}

TEST(body_one_byte_short_or_long)
{
    for (int variant = 0; variant < 3; variant++) {
        for (int i = 0; i < NTYPES; i++) {
            xr_msg_t m;
            uint8_t f[XR_PROTO_MAX_FRAME + 1];
            make_msg(&m, all_types[i], variant);
            size_t n = enc(&m, f), body = n - XR_PROTO_HEADER;

            /* one byte long: a trailing zero byte, counted in the header */
            f[n] = 0;
            f[2] = (uint8_t) ((body + 1) >> 8);
            f[3] = (uint8_t) (body + 1);
            refused(f, n + 1, XR_PROTO_E_LENGTH, "trailing bytes");

            if (body == 0)
                continue;
            /* one byte short: the last byte cut off */
            f[2] = (uint8_t) ((body - 1) >> 8);
            f[3] = (uint8_t) (body - 1);
            xr_msg_t d;
            size_t used = 99;
            const char *why = NULL;
            ASSERT_EQ(dec(f, n - 1, &d, &used, &why), XR_PROTO_E_LENGTH);
            ASSERT_EQ(used, 0);
            ASSERT_NOT_NULL(why);
            ASSERT_STRNE(why, "trailing bytes");
        }
    }
    /* the field that ran out is named */
    uint8_t f[XR_PROTO_MAX_FRAME];
    size_t n = frame_of(XR_MSG_REFRESHED, f);
    f[3]--;
    refused(f, n - 1, XR_PROTO_E_LENGTH, "lease_ms");
    n = frame_of(XR_MSG_LINK, f);
    f[3]--;
    refused(f, n - 1, XR_PROTO_E_LENGTH, "token");
    n = frame_of(XR_MSG_ERROR, f);
    f[3]--;
    refused(f, n - 1, XR_PROTO_E_LENGTH, "message");
    n = frame_of(XR_MSG_REGISTER, f);
    f[3]--;
    refused(f, n - 1, XR_PROTO_E_LENGTH, "direct");
    /* a body that ends inside the header of a string */
    static const uint8_t cut[] = {0x7f, 0x00, 0x00, 0x06, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01};
    refused(cut, sizeof(cut), XR_PROTO_E_LENGTH, "message");
}

TEST(address_fields)
{
    /* REGISTER: local at body offset 5 (family, port 6-7, addr 8-23),
     * prior at 24 (family, port 25-26, addr 27-42). */
    refused_with(XR_MSG_REGISTER, 8 + 4, 1, "local");  /* IPv4 padding */
    refused_with(XR_MSG_REGISTER, 8 + 15, 1, "local"); /* its last byte */
    refused_with(XR_MSG_REGISTER, 27 + 4, 1, "prior");
    refused_with(XR_MSG_REGISTER, 5, 5, "local"); /* family 5 */
    refused_with(XR_MSG_REGISTER, 5, 0, "local"); /* none, where required */
    refused_with(XR_MSG_REGISTER, 24, 5, "prior");
    refused_with(XR_MSG_REGISTER, 24, 0xff, "prior");

    uint8_t f[XR_PROTO_MAX_FRAME];
    size_t n = frame_of(XR_MSG_REGISTER, f);
    f[XR_PROTO_HEADER + 6] = f[XR_PROTO_HEADER + 7] = 0; /* port 0 */
    refused(f, n, XR_PROTO_E_FIELD, "local");

    /* an IPv6 port 0 */
    xr_msg_t m;
    make_msg(&m, XR_MSG_CONNECT, 1);
    n = enc(&m, f);
    f[XR_PROTO_HEADER + 6] = f[XR_PROTO_HEADER + 7] = 0;
    refused(f, n, XR_PROTO_E_FIELD, "dst");

    /* an absent address must be all zero: family 0 with a port or bytes */
    make_msg(&m, XR_MSG_REGISTER, 2);
    ASSERT_EQ(m.u.reg.prior.family, 0);
    n = enc(&m, f);
    f[XR_PROTO_HEADER + 26] = 1;
    refused(f, n, XR_PROTO_E_FIELD, "prior");
    n = enc(&m, f);
    f[XR_PROTO_HEADER + 42] = 1;
    refused(f, n, XR_PROTO_E_FIELD, "prior");

    /* IPv6 addresses have no padding: any byte goes */
    make_msg(&m, XR_MSG_REGISTER, 1);
    n = enc(&m, f);
    xr_msg_t d;
    size_t used;
    f[XR_PROTO_HEADER + 23] = 0;
    ASSERT_EQ(dec(f, n, &d, &used, NULL), XR_PROTO_OK);
}

TEST(enumerations_and_ranges)
{
    refused_with(XR_MSG_REGISTER, 4, 7, "proto");
    refused_with(XR_MSG_REGISTER, 4, 0, "proto");
    refused_with(XR_MSG_CONNECT, 4, 7, "proto");
    refused_with(XR_MSG_PEER_CONNECT, 4, 7, "proto");
    refused_with(XR_MSG_CONNECT_OK, 4, 3, "mode");
    refused_with(XR_MSG_CONNECT_OK, 4, 0, "mode");
    refused_with(XR_MSG_INCOMING, 12, 3, "mode");
    refused_with(XR_MSG_INCOMING, 12, 0, "mode");
    refused_with(XR_MSG_HELLO, 4, 0, "role");
    refused_with(XR_MSG_HELLO, 4, 3, "role");

    /* HELLO: min 0, min > max */
    refused_with(XR_MSG_HELLO, 1, 0, "version range");
    uint8_t f[XR_PROTO_MAX_FRAME];
    size_t n = frame_of(XR_MSG_HELLO, f);
    memcpy(f + XR_PROTO_HEADER, "\x02\x04", 2); /* min 0x0204 > max 0x0203 */
    refused(f, n, XR_PROTO_E_FIELD, "version range");
    n = frame_of(XR_MSG_HELLO_OK, f);
    memcpy(f + XR_PROTO_HEADER, "\0\0", 2);
    refused(f, n, XR_PROTO_E_FIELD, "version");

    /* error codes: 0 and 10 are unknown */
    refused_with(XR_MSG_ERROR, 1, 0, "code");
    refused_with(XR_MSG_ERROR, 1, 10, "code");
    refused_with(XR_MSG_ERROR, 0, 1, "code"); /* 0x0101 */

    /* handle 0 */
    static const xr_msg_type_t with_handle[] = {XR_MSG_REGISTERED, XR_MSG_REFRESH,
                                                XR_MSG_UNREGISTER, XR_MSG_INCOMING};
    for (size_t i = 0; i < 4; i++) {
        n = frame_of(with_handle[i], f);
        memset(f + XR_PROTO_HEADER + 4, 0, 8);
        refused(f, n, XR_PROTO_E_FIELD, "handle");
    }

    /* leases and heartbeats under 100 ms */
    n = frame_of(XR_MSG_REFRESHED, f);
    memcpy(f + XR_PROTO_HEADER + 4, "\0\0\0\x63", 4);
    refused(f, n, XR_PROTO_E_FIELD, "lease_ms");
    n = frame_of(XR_MSG_REGISTERED, f);
    memcpy(f + XR_PROTO_HEADER + 12, "\0\0\0\0", 4);
    refused(f, n, XR_PROTO_E_FIELD, "lease_ms");
    n = frame_of(XR_MSG_HELLO_OK, f);
    memcpy(f + XR_PROTO_HEADER + 2, "\0\0\0\x63", 4);
    refused(f, n, XR_PROTO_E_FIELD, "heartbeat_ms");
}

TEST(lower_bounds_are_inclusive)
{
    uint8_t f[XR_PROTO_MAX_FRAME];
    xr_msg_t d;
    size_t used;
    size_t n = frame_of(XR_MSG_HELLO_OK, f);
    memcpy(f + XR_PROTO_HEADER, "\0\1\0\0\0\x64", 6); /* version 1, heartbeat 100 ms */
    ASSERT_EQ(dec(f, n, &d, &used, NULL), XR_PROTO_OK);
    ASSERT_EQ(d.u.hello_ok.version, 1);
    ASSERT_EQ(d.u.hello_ok.heartbeat_ms, 100);
    n = frame_of(XR_MSG_HELLO, f);
    memcpy(f + XR_PROTO_HEADER, "\0\1\0\1", 4); /* versions 1 to 1 */
    ASSERT_EQ(dec(f, n, &d, &used, NULL), XR_PROTO_OK);
    n = frame_of(XR_MSG_ERROR, f);
    memcpy(f + XR_PROTO_HEADER, "\0\x09", 2); /* the last code */
    ASSERT_EQ(dec(f, n, &d, &used, NULL), XR_PROTO_OK);
    ASSERT_EQ(d.u.error.code, XR_PERR_INTERNAL);
}

TEST(incoming_addr_follows_mode)
{
    xr_msg_t m;
    uint8_t f[XR_PROTO_MAX_FRAME];
    /* INBOUND with an address, CONNECT_OUT without */
    make_msg(&m, XR_MSG_INCOMING, 0);
    size_t n = enc(&m, f);
    f[XR_PROTO_HEADER + 12] = XR_INCOMING_INBOUND;
    refused(f, n, XR_PROTO_E_FIELD, "addr");
    ASSERT_EQ(m.u.incoming.mode, XR_INCOMING_CONNECT_OUT);
    m.u.incoming.mode = XR_INCOMING_INBOUND;
    ASSERT_EQ(xr_proto_encode(&m, f, sizeof(f)), 0);

    make_msg(&m, XR_MSG_INCOMING, 2);
    n = enc(&m, f);
    f[XR_PROTO_HEADER + 12] = XR_INCOMING_CONNECT_OUT;
    refused(f, n, XR_PROTO_E_FIELD, "addr");
    m.u.incoming.mode = XR_INCOMING_CONNECT_OUT;
    ASSERT_EQ(xr_proto_encode(&m, f, sizeof(f)), 0);
}

TEST(strings_must_be_printable)
{
    /* HELLO's software starts at body offset 6 */
    static const uint8_t bad[] = {0x00, 0x01, 0x09, 0x0a, 0x1b, 0x1f, 0x7f};
    for (size_t i = 0; i < sizeof(bad); i++) {
        refused_with(XR_MSG_HELLO, 6, bad[i], "software");
        refused_with(XR_MSG_HELLO, 6 + 10, bad[i], "software"); /* the last byte */
        refused_with(XR_MSG_HELLO_OK, 7 + 3, bad[i], "software");
        refused_with(XR_MSG_PEER_CONNECT, 76, bad[i], "client_subject");
        refused_with(XR_MSG_INCOMING, 84 + 5, bad[i], "client_subject");
        refused_with(XR_MSG_ERROR, 7, bad[i], "message");
    }
}

TEST(first_failure_is_named)
{
    /* proto 7 and a bad local address: the earlier field is reported */
    uint8_t f[XR_PROTO_MAX_FRAME];
    size_t n = frame_of(XR_MSG_REGISTER, f);
    f[XR_PROTO_HEADER + 4] = 7;
    f[XR_PROTO_HEADER + 5] = 5;
    refused(f, n, XR_PROTO_E_FIELD, "proto");
    /* a bad field before a short body: E_FIELD, not E_LENGTH */
    n = frame_of(XR_MSG_ERROR, f);
    f[XR_PROTO_HEADER + 1] = 0;
    f[3]--;
    refused(f, n - 1, XR_PROTO_E_FIELD, "code");
    /* decoding with why == NULL is allowed */
    xr_msg_t m;
    size_t used;
    uint8_t *q = exact(f, n - 1);
    ASSERT_EQ(xr_proto_decode(q, n - 1, &m, &used, NULL), XR_PROTO_E_FIELD);
    free(q);
}

/* ---- encoding ------------------------------------------------------------ */

TEST(encode_refuses_invalid)
{
    static const struct {
        xr_msg_type_t type;
        int what;
    } cases[] = {
        {XR_MSG_HELLO, 0},       {XR_MSG_HELLO, 1},        {XR_MSG_HELLO, 2},
        {XR_MSG_HELLO, 3},       {XR_MSG_HELLO_OK, 0},     {XR_MSG_HELLO_OK, 1},
        {XR_MSG_REGISTER, 0},    {XR_MSG_REGISTER, 1},     {XR_MSG_REGISTER, 2},
        {XR_MSG_REGISTER, 3},    {XR_MSG_REGISTER, 4},     {XR_MSG_REGISTER, 5},
        {XR_MSG_REGISTERED, 0},  {XR_MSG_REGISTERED, 1},   {XR_MSG_REFRESH, 0},
        {XR_MSG_UNREGISTER, 0},  {XR_MSG_REFRESHED, 0},    {XR_MSG_CONNECT, 0},
        {XR_MSG_CONNECT_OK, 0},  {XR_MSG_PEER_CONNECT, 0}, {XR_MSG_PEER_CONNECT, 1},
        {XR_MSG_RELAY_READY, 0}, {XR_MSG_INCOMING, 0},     {XR_MSG_INCOMING, 1},
        {XR_MSG_ERROR, 0},       {XR_MSG_ERROR, 1},        {XR_MSG_ERROR, 2},
        {XR_MSG_OPEN, 0},        {XR_MSG_OPEN, 1},         {XR_MSG_OPENED, 0},
        {XR_MSG_OPENED, 1},      {XR_MSG_PEER_OPEN, 0},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        xr_msg_t m;
        uint8_t f[XR_PROTO_MAX_FRAME];
        make_msg(&m, cases[i].type, 0);
        ASSERT_GT(xr_proto_encode(&m, f, sizeof(f)), 0);
        int w = cases[i].what;
        switch (m.type) {
        case XR_MSG_HELLO:
            if (w == 0)
                m.u.hello.min_version = m.u.hello.max_version + 1;
            else if (w == 1)
                m.u.hello.min_version = 0;
            else if (w == 2)
                m.u.hello.role = 3;
            else
                m.u.hello.software.s[3] = '\n';
            break;
        case XR_MSG_HELLO_OK:
            if (w == 0)
                m.u.hello_ok.version = 0;
            else
                m.u.hello_ok.heartbeat_ms = 99;
            break;
        case XR_MSG_REGISTER:
            if (w == 0)
                m.u.reg.proto = 7;
            else if (w == 1)
                m.u.reg.local.addr[4] = 1; /* IPv4 padding */
            else if (w == 2)
                m.u.reg.local.family = 5;
            else if (w == 3)
                m.u.reg.local.port = 0;
            else if (w == 4)
                memset(&m.u.reg.local, 0, sizeof(m.u.reg.local));
            else
                m.u.reg.prior.family = 0; /* with a port and bytes left */
            break;
        case XR_MSG_REGISTERED:
            if (w == 0)
                m.u.registered.handle = 0;
            else
                m.u.registered.lease_ms = 0;
            break;
        case XR_MSG_REFRESH:
        case XR_MSG_UNREGISTER: m.u.refresh.handle = 0; break;
        case XR_MSG_REFRESHED: m.u.refreshed.lease_ms = 99; break;
        case XR_MSG_CONNECT: m.u.connect.proto = 0; break;
        case XR_MSG_OPEN:
            if (w == 0)
                m.u.connect.src.port = 0; /* an opening is for one port */
            else
                m.u.connect.src.family = 0;
            break;
        case XR_MSG_OPENED:
            if (w == 0)
                m.u.opened.state_ms = 999;
            else
                m.u.opened.addr.family = 0;
            break;
        case XR_MSG_PEER_OPEN: m.u.peer_connect.src.port = 0; break;
        case XR_MSG_CONNECT_OK: m.u.connect_ok.mode = 3; break;
        case XR_MSG_PEER_CONNECT:
            if (w == 0)
                m.u.peer_connect.src.port = 0;
            else
                m.u.peer_connect.client_subject.s[0] = 0x7f;
            break;
        case XR_MSG_RELAY_READY: m.u.relay_ready.addr.family = 0; break;
        case XR_MSG_INCOMING:
            if (w == 0)
                m.u.incoming.handle = 0;
            else
                m.u.incoming.mode = 3;
            break;
        case XR_MSG_ERROR:
            if (w == 0)
                m.u.error.code = 0;
            else if (w == 1)
                m.u.error.code = XR_PERR_MAX + 1;
            else
                m.u.error.message.s[0] = '\0'; /* NUL inside the counted bytes */
            break;
        default: FAIL("no case");
        }
        uint8_t before[sizeof(xr_msg_t)];
        memcpy(before, &m, sizeof(m));
        if (xr_proto_encode(&m, f, sizeof(f)) != 0)
            FAIL("%s case %d was encoded", xr_proto_type_name(m.type), w);
        ASSERT_MEMEQ(before, &m, sizeof(m)); /* the message is left alone */
    }

    /* unknown types */
    xr_msg_t m;
    uint8_t f[XR_PROTO_MAX_FRAME];
    memset(&m, 0, sizeof(m));
    m.type = (xr_msg_type_t) 0x03;
    ASSERT_EQ(xr_proto_encode(&m, f, sizeof(f)), 0);
    m.type = (xr_msg_type_t) 0x142; /* ACK + 0x100: the wire byte would say ACK */
    ASSERT_EQ(xr_proto_encode(&m, f, sizeof(f)), 0);
}

TEST(encode_needs_room)
{
    for (int variant = 0; variant < 3; variant++) {
        for (int i = 0; i < NTYPES; i++) {
            xr_msg_t m;
            uint8_t f[XR_PROTO_MAX_FRAME];
            make_msg(&m, all_types[i], variant);
            size_t n = enc(&m, f);
            /* every cap short of the frame is refused, into exact buffers */
            for (size_t cap = 0; cap < n; cap++) {
                uint8_t *o = malloc(cap > 0 ? cap : 1);
                ASSERT_NOT_NULL(o);
                if (xr_proto_encode(&m, o, cap) != 0)
                    FAIL("%s: %zu-byte frame encoded into %zu bytes", xr_proto_type_name(m.type), n,
                         cap);
                free(o);
            }
            ASSERT_EQ(xr_proto_encode(&m, f, n), n);
        }
    }
}

/* ---- the helpers --------------------------------------------------------- */

TEST(error_codes)
{
    static const struct {
        int code;
        const char *name;
        int err;
    } want[] = {
        {XR_PERR_NOT_AUTHORIZED, "NOT_AUTHORIZED", EACCES},
        {XR_PERR_NO_SUCH_ADDRESS, "NO_SUCH_ADDRESS", ECONNREFUSED},
        {XR_PERR_UNREACHABLE, "UNREACHABLE", EHOSTUNREACH},
        {XR_PERR_TIMEOUT, "TIMEOUT", ETIMEDOUT},
        {XR_PERR_OVER_LIMIT, "OVER_LIMIT", EAGAIN},
        {XR_PERR_PROTOCOL, "PROTOCOL", EPROTO},
        {XR_PERR_VERSION, "VERSION", EPROTONOSUPPORT},
        {XR_PERR_BAD_TOKEN, "BAD_TOKEN", EACCES},
        {XR_PERR_INTERNAL, "INTERNAL", EIO},
    };
    ASSERT_EQ(sizeof(want) / sizeof(want[0]), XR_PERR_MAX);
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
        ASSERT_EQ(want[i].code, (int) i + 1);
        ASSERT_STREQ(xr_proto_err_name(want[i].code), want[i].name);
        ASSERT_EQ(xr_proto_err_errno(want[i].code), want[i].err);
    }
    static const int unknown[] = {0, XR_PERR_MAX + 1, -1, 255, 65535, -2147483647 - 1};
    for (size_t i = 0; i < sizeof(unknown) / sizeof(unknown[0]); i++) {
        ASSERT_STREQ(xr_proto_err_name(unknown[i]), "?");
        ASSERT_EQ(xr_proto_err_errno(unknown[i]), EIO);
    }
}

TEST(pstr_set_truncates_and_replaces)
{
    xr_pstr_t p;
    char in[400];
    memset(in, 'z', sizeof(in) - 1);
    in[sizeof(in) - 1] = '\0';
    in[254] = 'L';
    in[255] = 'X';
    memset(&p, 0xee, sizeof(p));
    xr_pstr_set(&p, in);
    ASSERT_EQ(p.len, 255);
    ASSERT_EQ(p.s[254], 'L');
    ASSERT_EQ(p.s[255], '\0');
    ASSERT_EQ(strlen(p.s), 255);

    in[255] = '\0';
    xr_pstr_set(&p, in);
    ASSERT_EQ(p.len, 255);
    in[254] = '\0';
    xr_pstr_set(&p, in);
    ASSERT_EQ(p.len, 254);

    xr_pstr_set(&p, "a\tb\x7f\x01\x1f c\xc3\xa9");
    ASSERT_STREQ(p.s, "a?b??? c\xc3\xa9");
    ASSERT_EQ(p.len, 10);

    xr_pstr_set(&p, "");
    ASSERT_EQ(p.len, 0);
    ASSERT_STREQ(p.s, "");

    /* what it makes always encodes */
    xr_msg_t m;
    uint8_t f[XR_PROTO_MAX_FRAME];
    make_msg(&m, XR_MSG_ERROR, 0);
    for (int c = 1; c < 256; c++)
        in[c - 1] = (char) c;
    in[255] = '\0';
    xr_pstr_set(&m.u.error.message, in);
    ASSERT_EQ(m.u.error.message.len, 255);
    ASSERT_GT(xr_proto_encode(&m, f, sizeof(f)), 0);
}
