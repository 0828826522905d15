/*
 * socks.c: `xray socks [ADDR:]PORT` - a local SOCKS5 front (RFC 1928)
 * holding the application's certificate, for programs the preload shim
 * cannot reach: static binaries (Go programs), setuid programs, and any
 * program with a proxy setting (curl --socks5, ALL_PROXY).
 *
 * CONNECT and UDP ASSOCIATE; a destination goes through the agent as
 * libxray's connect does (carrier.c: relayed, direct in the agent's
 * network, or direct when the agent is down); a CONNECT is answered once
 * the connection stands end to end, an association's datagrams take a
 * channel per destination (a link, or a connected socket), made on the
 * first datagram, gone after a minute without one.  No authentication on loopback; on
 * any other address a user name and password (RFC 1929, --user and
 * --password-file: a password on the command line is anyone's to read
 * in ps) are required, since the front lends the certificate to whoever
 * connects.
 */
#include "core/xrayd.h"
#include "cli/carrier.h"
#include "cli/socks.h"
#include "lib/client.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sodium.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define XR_SOCKS_MAX_DEFAULT 256
#define XR_SOCKS_IO_MS       10000

/* RFC 1928 commands and replies. */
enum { XR_SOCKS_CONNECT = 1, XR_SOCKS_UDP = 3 };
enum {
    XR_SOCKS_OK = 0,
    XR_SOCKS_FAILURE = 1,
    XR_SOCKS_NOT_ALLOWED = 2,
    XR_SOCKS_NET_UNREACHABLE = 3,
    XR_SOCKS_HOST_UNREACHABLE = 4,
    XR_SOCKS_REFUSED = 5,
    XR_SOCKS_TTL = 6,
    XR_SOCKS_COMMAND = 7,
    XR_SOCKS_ATYP = 8
};

typedef struct {
    xr_client_conf_t cf;
    int max;
    const char *user, *pass; /* RFC 1929, or NULL */
} xr_socks_t;

static void xr_socks_usage(FILE *out)
{
    fprintf(out,
            "usage: xray socks [[ADDR:]PORT] [--user NAME --password-file FILE] [--max N]\n"
            "                  [--agent HOST:PORT] [--agent-name NAME] [--cert FILE --key FILE "
            "--ca FILE]\n"
            "\n"
            "A SOCKS5 front (CONNECT, UDP ASSOCIATE) on ADDR:PORT (127.0.0.1:1080 unless given) "
            "that carries\n"
            "each connection to its destination through the XRAY agent, as libxray's connect\n"
            "does.  On an address other than loopback --user is required (the front lends\n"
            "the certificate to whoever it lets in), with the password the first line of\n"
            "FILE.  --max (256) connections at once.\n"
            "Agent and certificates as for 'xray connect'.\n");
}

/* Exactly n bytes within the I/O timeout; 0 or -1. */
static int xr_socks_read(int fd, void *buf, size_t n)
{
    size_t have = 0;
    while (have < n) {
        struct pollfd p = {fd, POLLIN, 0};
        if (poll(&p, 1, XR_SOCKS_IO_MS) != 1)
            return -1;
        ssize_t r = read(fd, (char *) buf + have, n - have);
        if (r <= 0)
            return -1;
        have += (size_t) r;
    }
    return 0;
}

static int xr_socks_write(int fd, const void *buf, size_t n)
{
    return write(fd, buf, n) == (ssize_t) n ? 0 : -1;
}

/* ATYP, address and port of a (IPv4 or IPv6) into p: their length. */
static size_t xr_socks_put_addr(unsigned char *p, const struct sockaddr_storage *a)
{
    if (a->ss_family == AF_INET6) {
        const struct sockaddr_in6 *s = (const struct sockaddr_in6 *) a;
        p[0] = 4;
        memcpy(p + 1, &s->sin6_addr, 16);
        memcpy(p + 17, &s->sin6_port, 2);
        return 19;
    }
    const struct sockaddr_in *s = (const struct sockaddr_in *) a;
    p[0] = 1;
    memcpy(p + 1, a->ss_family == AF_INET ? (const void *) &s->sin_addr : "\0\0\0\0", 4);
    memcpy(p + 5, a->ss_family == AF_INET ? (const void *) &s->sin_port : "\0\0", 2);
    return 7;
}

static void xr_socks_reply_at(int fd, int code, const struct sockaddr_storage *bnd)
{
    unsigned char r[3 + 19] = {5, (unsigned char) code, 0};
    struct sockaddr_storage none;
    memset(&none, 0, sizeof(none));
    size_t n = xr_socks_put_addr(r + 3, bnd ? bnd : &none);
    xr_socks_write(fd, r, 3 + n);
}

static void xr_socks_reply(int fd, int code)
{
    /* BND.ADDR 0.0.0.0:0: the clients we serve do not use it. */
    xr_socks_reply_at(fd, code, NULL);
}

/* The method negotiation, and RFC 1929 when asked for: 0 or -1. */
static int xr_socks_hello(int fd, const xr_socks_t *s, const char *peer)
{
    unsigned char h[2], methods[255];
    if (xr_socks_read(fd, h, 2) < 0 || h[0] != 5 || xr_socks_read(fd, methods, h[1]) < 0)
        return -1;
    int want = s->user ? 2 : 0;
    if (memchr(methods, want, h[1]) == NULL) {
        const unsigned char no[2] = {5, 0xff};
        xr_socks_write(fd, no, 2);
        fprintf(stderr, "xray socks: %s: refused: %s\n", peer,
                want ? "no user name and password offered" : "no method without authentication");
        return -1;
    }
    const unsigned char yes[2] = {5, (unsigned char) want};
    if (xr_socks_write(fd, yes, 2) < 0)
        return -1;
    if (!want)
        return 0;
    unsigned char v, ul, pl;
    char user[256], pass[256];
    if (xr_socks_read(fd, &v, 1) < 0 || v != 1 || xr_socks_read(fd, &ul, 1) < 0 ||
        xr_socks_read(fd, user, ul) < 0 || xr_socks_read(fd, &pl, 1) < 0 ||
        xr_socks_read(fd, pass, pl) < 0)
        return -1;
    user[ul] = pass[pl] = '\0';
    size_t su = strlen(s->user), sp = strlen(s->pass);
    /* Compared in constant time: the password is a secret. */
    int ok = ul == su && pl == sp && sodium_memcmp(user, s->user, su) == 0 &&
             sodium_memcmp(pass, s->pass, sp) == 0;
    sodium_memzero(pass, sizeof(pass));
    const unsigned char r[2] = {1, (unsigned char) (ok ? 0 : 1)};
    xr_socks_write(fd, r, 2);
    if (!ok)
        fprintf(stderr, "xray socks: %s: refused: wrong user name or password\n", peer);
    return ok ? 0 : -1;
}

/* The request's destination; a SOCKS reply code. */
static int xr_socks_request(int fd, int *cmd, xr_paddr_t *dst, char *d, size_t dn)
{
    unsigned char h[4], a[256], port[2];
    if (xr_socks_read(fd, h, 4) < 0 || h[0] != 5)
        return -1;
    *cmd = h[1];
    if (h[1] != XR_SOCKS_CONNECT && h[1] != XR_SOCKS_UDP)
        return XR_SOCKS_COMMAND; /* BIND is not carried */
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    if (h[3] == 1 || h[3] == 4) {
        size_t n = h[3] == 1 ? 4 : 16;
        if (xr_socks_read(fd, a, n) < 0 || xr_socks_read(fd, port, 2) < 0)
            return -1;
        if (n == 4) {
            struct sockaddr_in *s = (struct sockaddr_in *) &ss;
            s->sin_family = AF_INET;
            memcpy(&s->sin_addr, a, 4);
            memcpy(&s->sin_port, port, 2);
        } else {
            struct sockaddr_in6 *s = (struct sockaddr_in6 *) &ss;
            s->sin6_family = AF_INET6;
            memcpy(&s->sin6_addr, a, 16);
            memcpy(&s->sin6_port, port, 2);
        }
    } else if (h[3] == 3) {
        unsigned char n;
        if (xr_socks_read(fd, &n, 1) < 0 || xr_socks_read(fd, a, n) < 0 ||
            xr_socks_read(fd, port, 2) < 0)
            return -1;
        a[n] = '\0';
        char ps[8];
        snprintf(ps, sizeof(ps), "%u", (unsigned) (port[0] << 8 | port[1]));
        struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV}, *ai;
        if (getaddrinfo((char *) a, ps, &hints, &ai) != 0) {
            snprintf(d, dn, "%s:%s", a, ps);
            return XR_SOCKS_HOST_UNREACHABLE;
        }
        memcpy(&ss, ai->ai_addr, ai->ai_addrlen);
        freeaddrinfo(ai);
    } else {
        return XR_SOCKS_ATYP;
    }
    xr_paddr_from_sockaddr(dst, &ss);
    xr_paddr_str(dst, d, dn);
    return XR_SOCKS_OK;
}

static int xr_socks_code(int eno)
{
    switch (eno) {
    case EACCES: return XR_SOCKS_NOT_ALLOWED;
    case EHOSTUNREACH: return XR_SOCKS_HOST_UNREACHABLE;
    case ENETUNREACH: return XR_SOCKS_NET_UNREACHABLE;
    case ECONNREFUSED: return XR_SOCKS_REFUSED;
    case ETIMEDOUT: return XR_SOCKS_TTL;
    default: return XR_SOCKS_FAILURE;
    }
}

/* ---- UDP ASSOCIATE (RFC 1928 §7) ---------------------------------------- */

#define XR_SOCKS_CHANNELS 64
#define XR_SOCKS_UDP_IDLE 60000

/* One destination of an association: a connected socket (same network,
 * or no agent serves it) or a link that carries datagrams. */
typedef struct {
    struct sockaddr_storage dst; /* as the client named it */
    xr_link_t *link;
    int fd;
    int64_t used;
} xr_socks_chan_t;

static int64_t xr_socks_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void xr_socks_chan_close(xr_socks_chan_t *c)
{
    if (c->link != NULL)
        xr_link_close(c->link);
    if (c->fd >= 0)
        close(c->fd);
    memset(c, 0, sizeof(*c));
    c->fd = -1;
}

/* A client datagram's header: RSV RSV FRAG ATYP DST.ADDR DST.PORT.  The
 * data's offset, or 0 when it is not one we carry. */
static size_t xr_socks_udp_header(const unsigned char *p, size_t n, struct sockaddr_storage *dst)
{
    memset(dst, 0, sizeof(*dst));
    if (n < 4 || p[0] != 0 || p[1] != 0 || p[2] != 0) /* fragments are not reassembled */
        return 0;
    if (p[3] == 1 && n >= 10) {
        struct sockaddr_in *s = (struct sockaddr_in *) dst;
        s->sin_family = AF_INET;
        memcpy(&s->sin_addr, p + 4, 4);
        memcpy(&s->sin_port, p + 8, 2);
        return 10;
    }
    if (p[3] == 4 && n >= 22) {
        struct sockaddr_in6 *s = (struct sockaddr_in6 *) dst;
        s->sin6_family = AF_INET6;
        memcpy(&s->sin6_addr, p + 4, 16);
        memcpy(&s->sin6_port, p + 20, 2);
        return 22;
    }
    if (p[3] == 3 && n >= 5 && n >= 7u + p[4]) {
        char name[256], ps[8];
        memcpy(name, p + 5, p[4]);
        name[p[4]] = '\0';
        snprintf(ps, sizeof(ps), "%u", (unsigned) (p[5 + p[4]] << 8 | p[6 + p[4]]));
        struct addrinfo hints = {.ai_socktype = SOCK_DGRAM, .ai_flags = AI_NUMERICSERV}, *ai;
        if (getaddrinfo(name, ps, &hints, &ai) != 0)
            return 0;
        memcpy(dst, ai->ai_addr, ai->ai_addrlen);
        freeaddrinfo(ai);
        return 7u + p[4];
    }
    return 0;
}

/* The channel for dst, made if need be; NULL when it cannot be. */
static xr_socks_chan_t *xr_socks_chan(xr_socks_chan_t *ch, const struct sockaddr_storage *dst,
                                      const char *peer)
{
    xr_socks_chan_t *free_one = NULL, *oldest = ch;
    for (int i = 0; i < XR_SOCKS_CHANNELS; i++) {
        if (ch[i].used == 0) {
            free_one = free_one ? free_one : &ch[i];
            continue;
        }
        if (ch[i].dst.ss_family == dst->ss_family && memcmp(&ch[i].dst, dst, sizeof(*dst)) == 0)
            return &ch[i];
        if (ch[i].used < oldest->used)
            oldest = &ch[i];
    }
    xr_socks_chan_t *c = free_one;
    if (c == NULL) { /* the least recently used gives way */
        xr_socks_chan_close(oldest);
        c = oldest;
    }
    xr_paddr_t pd, to;
    xr_route_t rt;
    xr_link_t *tls;
    char err[400], d[80];
    int eno;
    xr_paddr_from_sockaddr(&pd, dst);
    xr_paddr_str(&pd, d, sizeof(d));
    switch (xr_carrier_route(XR_PROTO_UDP, &pd, NULL, &to, &rt, &tls, &eno, err, sizeof(err))) {
    case XR_CARRY_RELAY:
        c->link = xr_link_join(tls, rt.token, rt.key, err, sizeof(err));
        if (c->link == NULL)
            goto fail;
        break;
    case XR_CARRY_DIRECT:
    case XR_CARRY_NO_AGENT: {
        struct sockaddr_storage ss;
        socklen_t sl = xr_paddr_to_sockaddr(&to, &ss);
        c->fd = socket(ss.ss_family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        if (c->fd < 0 || connect(c->fd, (struct sockaddr *) &ss, sl) != 0) {
            snprintf(err, sizeof(err), "%s", strerror(errno));
            goto fail;
        }
        break;
    }
    default: goto fail;
    }
    c->dst = *dst;
    c->used = xr_socks_now();
    fprintf(stderr, "xray socks: %s: udp to %s (%s)\n", peer, d,
            c->link ? "relayed through the agents" : "directly");
    return c;
fail:
    fprintf(stderr, "xray socks: %s: udp to %s: %s\n", peer, d, err);
    xr_socks_chan_close(c);
    return NULL;
}

static void xr_socks_udp(int fd, const char *peer)
{
    enum { cap = 22 + XR_UDP_MAX };
    unsigned char *buf = xr_malloc(cap);
    xr_socks_chan_t ch[XR_SOCKS_CHANNELS];
    struct sockaddr_storage bnd, tcp_peer, client;
    socklen_t bl = sizeof(bnd), pl = sizeof(tcp_peer), cl = 0;
    memset(ch, 0, sizeof(ch));
    for (int i = 0; i < XR_SOCKS_CHANNELS; i++)
        ch[i].fd = -1;
    /* The relay socket, on the address the client reached us at. */
    int u = -1;
    if (getsockname(fd, (struct sockaddr *) &bnd, &bl) == 0 &&
        getpeername(fd, (struct sockaddr *) &tcp_peer, &pl) == 0) {
        if (bnd.ss_family == AF_INET)
            ((struct sockaddr_in *) &bnd)->sin_port = 0;
        else
            ((struct sockaddr_in6 *) &bnd)->sin6_port = 0;
        u = socket(bnd.ss_family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    }
    bl = sizeof(bnd);
    if (u < 0 || bind(u, (struct sockaddr *) &bnd, bl) != 0 ||
        getsockname(u, (struct sockaddr *) &bnd, &bl) != 0) {
        xr_socks_reply(fd, XR_SOCKS_FAILURE);
        if (u >= 0)
            close(u);
        free(buf);
        return;
    }
    xr_socks_reply_at(fd, XR_SOCKS_OK, &bnd);
    fprintf(stderr, "xray socks: %s: udp associate\n", peer);
    for (;;) {
        struct pollfd p[2 + XR_SOCKS_CHANNELS];
        int np = 2, ready = 0;
        p[0] = (struct pollfd){fd, POLLIN, 0};
        p[1] = (struct pollfd){u, POLLIN, 0};
        int64_t now = xr_socks_now();
        for (int i = 0; i < XR_SOCKS_CHANNELS; i++) {
            if (ch[i].used != 0 && now - ch[i].used > XR_SOCKS_UDP_IDLE)
                xr_socks_chan_close(&ch[i]);
            int cfd = ch[i].link ? xr_link_fd(ch[i].link) : ch[i].fd;
            p[np++] = (struct pollfd){ch[i].used ? cfd : -1, POLLIN, 0};
            ready |= ch[i].link && xr_link_pending(ch[i].link) > 0;
        }
        if (!ready && poll(p, (nfds_t) np, 1000) < 0 && errno != EINTR)
            break;
        if (p[0].revents) { /* the association ends with its TCP connection */
            char c;
            if (read(fd, &c, 1) <= 0)
                break;
        }
        if (p[1].revents & POLLIN) {
            struct sockaddr_storage src, dst;
            socklen_t sl = sizeof(src);
            ssize_t r = recvfrom(u, buf, cap, 0, (struct sockaddr *) &src, &sl);
            /* Only the client's host (RFC 1928: from the TCP peer's
             * address); its first source port is its from then on. */
            int host_ok = r > 0 && src.ss_family == tcp_peer.ss_family &&
                          (src.ss_family == AF_INET
                               ? ((struct sockaddr_in *) &src)->sin_addr.s_addr ==
                                     ((struct sockaddr_in *) &tcp_peer)->sin_addr.s_addr
                               : memcmp(&((struct sockaddr_in6 *) &src)->sin6_addr,
                                        &((struct sockaddr_in6 *) &tcp_peer)->sin6_addr, 16) == 0);
            if (host_ok && cl == 0) {
                client = src;
                cl = sl;
            }
            size_t off = host_ok && sl == cl && memcmp(&src, &client, sl) == 0
                             ? xr_socks_udp_header(buf, (size_t) r, &dst)
                             : 0;
            xr_socks_chan_t *c = off ? xr_socks_chan(ch, &dst, peer) : NULL;
            if (c != NULL) {
                size_t n = (size_t) r - off;
                int bad = c->link ? xr_link_send_dgram(c->link, buf + off, n) < 0
                                  : send(c->fd, buf + off, n, 0) < 0;
                if (bad)
                    xr_socks_chan_close(c);
                else
                    c->used = xr_socks_now();
            }
        }
        for (int i = 0; i < XR_SOCKS_CHANNELS; i++) {
            xr_socks_chan_t *c = &ch[i];
            int pend = c->link && xr_link_pending(c->link) > 0;
            if (c->used == 0 || !(pend || (p[2 + i].revents & (POLLIN | POLLHUP | POLLERR))))
                continue;
            size_t h = xr_socks_put_addr(buf + 3, &c->dst) + 3, len = 0;
            buf[0] = buf[1] = buf[2] = 0;
            if (c->link) {
                if (xr_link_recv_dgram(c->link, buf + h, cap - h, &len) <= 0) {
                    xr_socks_chan_close(c);
                    continue;
                }
            } else {
                ssize_t r = recv(c->fd, buf + h, cap - h, 0);
                if (r < 0)
                    continue;
                len = (size_t) r;
            }
            c->used = xr_socks_now();
            if (cl > 0)
                sendto(u, buf, h + len, 0, (struct sockaddr *) &client, cl);
        }
    }
    for (int i = 0; i < XR_SOCKS_CHANNELS; i++)
        if (ch[i].used)
            xr_socks_chan_close(&ch[i]);
    close(u);
    free(buf);
    fprintf(stderr, "xray socks: %s: udp associate ended\n", peer);
}

static void xr_socks_conn(int fd, const char *peer, void *arg)
{
    const xr_socks_t *s = arg;
    xr_paddr_t dst;
    char d[300] = "?", err[400];
    if (xr_socks_hello(fd, s, peer) < 0)
        return;
    int cmd = 0;
    int code = xr_socks_request(fd, &cmd, &dst, d, sizeof(d));
    if (code == XR_SOCKS_OK && cmd == XR_SOCKS_UDP) {
        xr_socks_udp(fd, peer);
        return;
    }
    if (code != XR_SOCKS_OK) {
        if (code > 0) {
            xr_socks_reply(fd, code);
            fprintf(stderr, "xray socks: %s: request for %s refused (SOCKS reply %d)\n", peer, d,
                    code);
        }
        return;
    }
    xr_link_t *link = NULL;
    int sock = -1, eno = 0;
    if (xr_carrier_dial(&dst, &link, &sock, &eno, err, sizeof(err)) < 0) {
        xr_socks_reply(fd, xr_socks_code(eno));
        fprintf(stderr, "xray socks: %s: cannot reach %s: %s\n", peer, d, err);
        return;
    }
    xr_socks_reply(fd, XR_SOCKS_OK);
    fprintf(stderr, "xray socks: %s: connected to %s (%s)\n", peer, d,
            link ? "relayed through the agents" : "directly");
    if (xr_link_pump(link, sock, fd, fd, 1, NULL, NULL) < 0)
        fprintf(stderr, "xray socks: %s: ended on an error: %s\n", peer, strerror(errno));
    if (link != NULL)
        xr_link_close(link);
    if (sock >= 0)
        close(sock);
}

static int xr_socks_loopback(int lfd)
{
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    if (getsockname(lfd, (struct sockaddr *) &ss, &sl) != 0)
        return 0;
    if (ss.ss_family == AF_INET)
        return (ntohl(((struct sockaddr_in *) &ss)->sin_addr.s_addr) >> 24) == 127;
    return ss.ss_family == AF_INET6 &&
           IN6_IS_ADDR_LOOPBACK(&((struct sockaddr_in6 *) &ss)->sin6_addr);
}

int xr_socks_main(int argc, char **argv)
{
    static xr_socks_t s = {.cf = {.timeout_ms = 10000}, .max = XR_SOCKS_MAX_DEFAULT};
    const char *local_s = NULL, *max_s = NULL, *pwfile = NULL;
    char err[400];
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char **slot = xr_client_conf_flag(&s.cf, a);
        if (slot == NULL)
            slot = strcmp(a, "--max") == 0             ? &max_s
                   : strcmp(a, "--user") == 0          ? &s.user
                   : strcmp(a, "--password-file") == 0 ? &pwfile
                                                       : NULL;
        if (slot != NULL && i + 1 < argc) {
            *slot = argv[++i];
        } else if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            xr_socks_usage(stdout);
            return 0;
        } else if (a[0] != '-' && local_s == NULL) {
            local_s = a;
        } else {
            fprintf(stderr, "xray socks: unexpected argument \"%s\"\n", a);
            xr_socks_usage(stderr);
            return 2;
        }
    }
    if (max_s != NULL) {
        char *end;
        long m = strtol(max_s, &end, 10);
        if (*end != '\0' || m < 1 || m > 10000) {
            fprintf(stderr, "xray socks: --max takes 1-10000 connections\n");
            return 2;
        }
        s.max = (int) m;
    }
    if ((s.user != NULL) != (pwfile != NULL) ||
        (s.user != NULL && (strlen(s.user) == 0 || strlen(s.user) > 255))) {
        fprintf(stderr, "xray socks: --user NAME (1-255 bytes) goes with --password-file FILE\n");
        return 2;
    }
    if (pwfile != NULL) {
        static char pass[257];
        FILE *f = fopen(pwfile, "r");
        if (f == NULL || fgets(pass, sizeof(pass), f) == NULL) {
            fprintf(stderr, "xray socks: cannot read the password from %s: %s\n", pwfile,
                    f ? "it is empty" : strerror(errno));
            if (f)
                fclose(f);
            return 1;
        }
        fclose(f);
        pass[strcspn(pass, "\r\n")] = '\0';
        if (pass[0] == '\0' || strlen(pass) > 255) {
            fprintf(stderr, "xray socks: the password in %s must be 1-255 bytes\n", pwfile);
            return 1;
        }
        s.pass = pass;
    }
    static xr_client_conf_buf_t found;
    if (xr_client_conf_fill(&s.cf, &found, err, sizeof(err)) < 0 ||
        xr_carrier_init(&s.cf, err, sizeof(err)) < 0) {
        fprintf(stderr, "xray socks: %s\n", err);
        return 1;
    }
    if (local_s == NULL)
        local_s = "127.0.0.1:1080";
    int lfd = xr_carrier_listen(local_s, err, sizeof(err));
    if (lfd < 0) {
        fprintf(stderr, "xray socks: %s\n", err);
        return 1;
    }
    if (s.user == NULL && !xr_socks_loopback(lfd)) {
        fprintf(stderr,
                "xray socks: %s is not a loopback address: give --user and --password-file\n",
                local_s);
        return 2;
    }
    fprintf(stderr, "xray socks: listening on %s%s\n", local_s,
            s.user ? " (user name and password)" : "");
    return xr_carrier_accept_loop(lfd, s.max, "xray socks", xr_socks_conn, &s);
}
