/*
 * helper.c: `xray helper` - the process that carries an application's
 * XRAY connections for libxray and its preload shim (helper_msg.h has
 * the protocol, html-docs/library.html the why).
 *
 * The library starts one per user and client configuration when it first
 * needs it, and the helper leaves when it has had nothing to do for
 * --idle seconds.  It holds what an application should not have to: the
 * certificate and key, the TLS sessions with the agent, one shared
 * control connection for CONNECT, and every relayed connection's link.
 * The application gets kernel descriptors (a connected socket, or one end
 * of a socket pair whose other end is the link), so read, write, poll,
 * select, epoll, fork and exec work on them unchanged.
 *
 * Threads: one per request, which for a relayed connection goes on to
 * copy its bytes until it ends; one per server socket (its registration,
 * with a control connection of its own), and one per connection handed
 * to a server socket.
 */
#include "core/xrayd.h"
#include "cli/carrier.h"
#include "cli/helper.h"
#include "common/sockaddr.h"
#include "lib/client.h"
#include "lib/helper_msg.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define XR_HELPER_RETRY_MS  1000
#define XR_HELPER_WHO       1024
#define XR_HELPER_IDLE_SECS 600

typedef struct {
    xr_client_conf_t cf;
    xr_client_conf_buf_t found;
    /* Connections handed to server sockets: the source the application
     * sees, and who it really is (WHO). */
    struct {
        struct sockaddr_storage from, peer;
    } who[XR_HELPER_WHO];
    size_t who_next;
    atomic_int busy; /* threads at work: the helper is idle when none are */
} xr_helper_t;

static xr_helper_t xr_helper;
static pthread_mutex_t xr_helper_tables = PTHREAD_MUTEX_INITIALIZER;
static volatile sig_atomic_t xr_helper_stop;

static int64_t xr_helper_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void xr_helper_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void xr_helper_log(const char *fmt, ...)
{
    char line[800];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    time_t now = time(NULL);
    struct tm tm;
    char ts[32];
    strftime(ts, sizeof(ts), "%Y/%m/%d %H:%M:%S", localtime_r(&now, &tm));
    fprintf(stderr, "%s xray helper[%d]: %s\n", ts, (int) getpid(), line);
}

static void xr_helper_answer(int sock, int type, int code, const struct sockaddr_storage *addr,
                             const char *text, int fd)
{
    xr_hmsg_t a = {.type = (uint8_t) type, .code = code};
    if (addr != NULL)
        a.addr = *addr;
    size_t n = text ? strnlen(text, XR_HMSG_TEXT) : 0; /* a long reason is cut */
    memcpy(a.text, text ? text : "", n);
    a.text[n] = '\0';
    xr_hmsg_send(sock, &a, fd);
}

static void xr_helper_answer_paddr(int sock, int type, const xr_paddr_t *p, const char *text)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    xr_paddr_to_sockaddr(p, &ss);
    xr_helper_answer(sock, type, 0, &ss, text, -1);
}

/* ---- CONNECT ------------------------------------------------------------ */

/* Make a's side unwritable (its send buffer full): the application's
 * poll, select or epoll must not see a non-blocking connect complete
 * before the end-to-end acknowledgement.  The bytes written, which the
 * other end reads back before anything else. */
static size_t xr_helper_fill(int a, int *sndbuf)
{
    socklen_t sl = sizeof(*sndbuf);
    int small = 1;
    char zero[4096] = {0};
    size_t n = 0;
    ssize_t w;
    getsockopt(a, SOL_SOCKET, SO_SNDBUF, sndbuf, &sl);
    setsockopt(a, SOL_SOCKET, SO_SNDBUF, &small, sizeof(small)); /* the kernel's least */
    while ((w = send(a, zero, sizeof(zero), MSG_DONTWAIT | MSG_NOSIGNAL)) > 0)
        n += (size_t) w;
    return n;
}

/* Read the filler back (a becomes writable, and its writers are woken),
 * then give a its send buffer again (the kernel doubles what it is
 * given: half of what getsockopt said). */
static int xr_helper_unfill(int a, int b, size_t n, int sndbuf)
{
    char buf[4096];
    while (n > 0) {
        ssize_t r = read(b, buf, n < sizeof(buf) ? n : sizeof(buf));
        if (r <= 0)
            return -1;
        n -= (size_t) r;
    }
    int half = sndbuf / 2;
    setsockopt(a, SOL_SOCKET, SO_SNDBUF, &half, sizeof(half));
    return 0;
}

/* ---- UDP: CODO §4.3's mapping table ----------------------------------- */

#define XR_HELPER_UDP_IDLE_MS 60000

/* One mapping: the application sends dst's datagrams to a socket of ours
 * on loopback (the first source it hears from is the application's, and
 * the only one it takes), and they go on over the link; the answers come
 * back from that socket, which the library presents as dst. */
static void xr_helper_udp_carry(int *psock, const xr_hmsg_t *q, xr_link_t *link, const char *d)
{
    int sock = *psock, hold = (q->flags & XR_HMSG_HOLD) != 0;
    int idle = q->code > 0 ? q->code : XR_HELPER_UDP_IDLE_MS;
    struct sockaddr_in lo = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t ll = sizeof(lo);
    int u = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (u < 0 || bind(u, (struct sockaddr *) &lo, sizeof(lo)) != 0 ||
        getsockname(u, (struct sockaddr *) &lo, &ll) != 0) {
        xr_helper_answer(sock, XR_HMSG_ERROR, errno, NULL, "no socket for the mapping", -1);
        if (u >= 0)
            close(u);
        xr_link_close(link);
        return;
    }
    struct sockaddr_storage via;
    memset(&via, 0, sizeof(via));
    memcpy(&via, &lo, sizeof(lo));
    xr_helper_answer(sock, XR_HMSG_MAPPED, idle, &via, "", -1);
    if (!hold) {
        close(sock);
        *psock = sock = -1;
    }
    xr_helper_log("udp %s: mapped at 127.0.0.1:%u (%s)", d, ntohs(lo.sin_port),
                  hold ? "while the socket is connected" : "until idle");
    struct sockaddr_storage app;
    socklen_t al = 0;
    static char buf[XR_UDP_MAX];
    int64_t last = xr_helper_now();
    const char *why = "the application's socket closed";
    for (;;) {
        struct pollfd p[3] = {{u, POLLIN, 0}, {xr_link_fd(link), POLLIN, 0}, {sock, POLLIN, 0}};
        int ready = xr_link_pending(link) > 0;
        int64_t left = hold ? 1000 : idle - (xr_helper_now() - last);
        if (!hold && left <= 0) {
            why = "idle";
            break;
        }
        int n = ready ? 0 : poll(p, 3, (int) left);
        if (n < 0 && errno != EINTR) {
            why = strerror(errno);
            break;
        }
        if (p[0].revents & POLLIN) {
            struct sockaddr_storage src;
            socklen_t sl = sizeof(src);
            ssize_t r = recvfrom(u, buf, sizeof(buf), 0, (struct sockaddr *) &src, &sl);
            if (r >= 0 && al == 0) { /* the application, from now on */
                app = src;
                al = sl;
            }
            if (r >= 0 && sl == al && memcmp(&src, &app, sl) == 0) {
                if (xr_link_send_dgram(link, buf, (size_t) r) < 0) {
                    why = "the link failed";
                    break;
                }
                last = xr_helper_now();
            }
        }
        if (ready || (p[1].revents & (POLLIN | POLLHUP | POLLERR))) {
            size_t len;
            int r = xr_link_recv_dgram(link, buf, sizeof(buf), &len);
            if (r <= 0) {
                why = r == 0 ? "the server ended the association" : "the link failed";
                break;
            }
            if (al > 0)
                sendto(u, buf, len, 0, (struct sockaddr *) &app, al);
            last = xr_helper_now();
        }
        if (sock >= 0 && (p[2].revents & (POLLIN | POLLHUP | POLLERR))) {
            xr_hmsg_t m;
            if (xr_hmsg_recv(sock, &m, NULL) <= 0)
                break;
        }
    }
    xr_helper_log("udp %s: mapping at 127.0.0.1:%u ended: %s", d, ntohs(lo.sin_port), why);
    close(u);
    xr_link_close(link);
}

/* The application's socket, sent with CONNECT: its address for OPEN
 * (NULL without one). */
static const xr_paddr_t *xr_helper_src(int fd, xr_paddr_t *src)
{
    return fd >= 0 && xr_open_src(fd, src) == 0 ? src : NULL;
}

static void xr_helper_udp(int *psock, const xr_hmsg_t *q, const xr_paddr_t *dst, const char *d,
                          int fd)
{
    int sock = *psock, eno = 0;
    xr_paddr_t to, src;
    xr_route_t rt;
    xr_link_t *tls = NULL, *link;
    char err[400];
    switch (xr_carrier_route(XR_PROTO_UDP, dst, xr_helper_src(fd, &src), &to, &rt, &tls, &eno, err,
                             sizeof(err))) {
    case XR_CARRY_DIRECT:
    case XR_CARRY_NO_AGENT: xr_helper_answer_paddr(sock, XR_HMSG_DIRECT, &to, ""); return;
    case XR_CARRY_OPEN: {
        /* The mapping (to the official address itself) ends well before
         * the firewalls forget the session: the next datagram opens anew. */
        xr_hmsg_t a = {.type = XR_HMSG_OPEN, .proto = IPPROTO_UDP};
        a.code = (int32_t) XR_MIN((int64_t) rt.state_ms / 2, (int64_t) q->code);
        xr_paddr_to_sockaddr(&to, &a.addr);
        xr_helper_log("udp %s: the firewalls are open for its port %u, for %d ms idle", d, src.port,
                      a.code);
        xr_hmsg_send(sock, &a, -1);
        return;
    }
    case XR_CARRY_REFUSED:
        xr_helper_log("udp %s: %s", d, err);
        xr_helper_answer(sock, XR_HMSG_ERROR, eno, NULL, err, -1);
        return;
    case XR_CARRY_RELAY: break;
    }
    link = xr_link_join(tls, rt.token, rt.key, err, sizeof(err));
    if (link == NULL) {
        xr_helper_log("udp %s: %s", d, err);
        xr_helper_answer(sock, XR_HMSG_ERROR, xr_carrier_errno(0, err), NULL, err, -1);
        return;
    }
    xr_helper_udp_carry(psock, q, link, d);
}

static void xr_helper_connect(int *psock, const xr_hmsg_t *q, int fd)
{
    int sock = *psock, eno = 0;
    xr_paddr_t dst, to, src;
    xr_route_t rt;
    xr_link_t *tls = NULL, *link = NULL;
    char err[400], d[80];
    xr_paddr_from_sockaddr(&dst, &q->addr);
    xr_paddr_str(&dst, d, sizeof(d));
    if (dst.family == 0 || (q->proto != IPPROTO_TCP && q->proto != IPPROTO_UDP)) {
        xr_helper_answer(sock, XR_HMSG_ERROR, EAFNOSUPPORT, NULL, "only TCP or UDP to IPv4 or IPv6",
                         -1);
        return;
    }
    if (q->proto == IPPROTO_UDP) {
        xr_helper_udp(psock, q, &dst, d, fd);
        return;
    }
    switch (xr_carrier_route(XR_PROTO_TCP, &dst, xr_helper_src(fd, &src), &to, &rt, &tls, &eno, err,
                             sizeof(err))) {
    case XR_CARRY_DIRECT: xr_helper_answer_paddr(sock, XR_HMSG_DIRECT, &to, ""); return;
    case XR_CARRY_OPEN:
        /* The application connects its own socket; its heartbeats are
         * the kernel's, set here on the socket we share with it. */
        xr_heartbeat(fd, rt.state_ms);
        xr_helper_answer_paddr(sock, XR_HMSG_OPEN, &to, "");
        return;
    case XR_CARRY_NO_AGENT: /* XRAY §6: inside one network this still works */
        xr_helper_log("connect %s: the agent cannot be reached (%s): directly", d, err);
        xr_helper_answer_paddr(sock, XR_HMSG_DIRECT, &to, "the agent cannot be reached");
        return;
    case XR_CARRY_REFUSED:
        xr_helper_log("connect %s: %s", d, err);
        xr_helper_answer(sock, XR_HMSG_ERROR, eno, NULL, err, -1);
        return;
    case XR_CARRY_RELAY: break;
    }
    int sp[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp) != 0) {
        int e = errno;
        xr_link_close(tls);
        xr_helper_answer(sock, XR_HMSG_ERROR, e, NULL, "socketpair failed", -1);
        return;
    }
    int sndbuf = 0;
    size_t filler = (q->flags & XR_HMSG_NONBLOCK) ? xr_helper_fill(sp[0], &sndbuf) : 0;
    xr_helper_answer(sock, XR_HMSG_RELAY, 0, NULL, "", sp[0]);
    link = xr_link_join(tls, rt.token, rt.key, err, sizeof(err));
    if (link == NULL) {
        xr_helper_log("connect %s: %s", d, err);
        xr_helper_answer(sock, XR_HMSG_STATUS, xr_carrier_errno(0, err), NULL, err, -1);
        close(sp[0]);
        close(sp[1]);
        return;
    }
    xr_helper_answer(sock, XR_HMSG_STATUS, 0, NULL, "", -1);
    close(sock); /* the library has all it needs; the connection may last */
    *psock = -1;
    if (filler > 0 && xr_helper_unfill(sp[0], sp[1], filler, sndbuf) < 0) {
        close(sp[0]);
        close(sp[1]);
        xr_link_close(link);
        return;
    }
    close(sp[0]);
    if (xr_link_pump(link, -1, sp[1], sp[1], 1, NULL, NULL) < 0)
        xr_helper_log("connection to %s ended on an error: %s", d, strerror(errno));
    xr_link_close(link);
    close(sp[1]);
}

/* ---- WHO ---------------------------------------------------------------- */

static void xr_helper_who_add(const struct sockaddr_storage *from,
                              const struct sockaddr_storage *peer)
{
    pthread_mutex_lock(&xr_helper_tables);
    size_t i = xr_helper.who_next++ % XR_HELPER_WHO;
    xr_helper.who[i].from = *from;
    xr_helper.who[i].peer = *peer;
    pthread_mutex_unlock(&xr_helper_tables);
}

static void xr_helper_who(int sock, const xr_hmsg_t *q)
{
    struct sockaddr_storage peer;
    int found = 0;
    pthread_mutex_lock(&xr_helper_tables);
    for (size_t i = 0; i < XR_HELPER_WHO && !found; i++)
        if (xr_sockaddr_same(&xr_helper.who[i].from, &q->addr)) {
            peer = xr_helper.who[i].peer;
            found = 1;
        }
    pthread_mutex_unlock(&xr_helper_tables);
    if (found)
        xr_helper_answer(sock, XR_HMSG_PEER, 0, &peer, "", -1);
    else
        xr_helper_answer(sock, XR_HMSG_ERROR, ENOENT, NULL, "not a connection of the helper", -1);
}

/* ---- LISTEN: a server socket bound through the agent ------------------- */

typedef struct {
    int shim;                    /* the library's connection: its end ends the registration */
    struct sockaddr_storage app; /* the server socket's address */
    struct sockaddr_storage to;  /* where its connections are handed (app, or loopback) */
    xr_client_t *c;              /* its own control connection (INCOMING comes on it) */
    pthread_mutex_t lock;        /* c, shared with the connection threads */
    int lfd;                     /* where the agent's links and direct clients come (TCP) */
    int udp;                     /* a UDP server: its associations connect out */
    xr_paddr_t official;
    uint64_t handle;
    int state, have_official;
    int64_t refresh_at, retry_at;
    atomic_int refs;
} xr_reg_t;

typedef struct {
    xr_reg_t *r;
    int fd;                       /* accepted on lfd, or -1 */
    struct sockaddr_storage peer; /* its source */
    xr_msg_t in;                  /* or an INCOMING to connect out for */
} xr_handoff_t;

static void xr_reg_unref(xr_reg_t *r)
{
    if (atomic_fetch_sub(&r->refs, 1) != 1)
        return;
    xr_client_free(r->c);
    pthread_mutex_destroy(&r->lock);
    free(r);
}

/* Hand a connection to the server socket: a TCP connection from the
 * helper, whose source the WHO table maps to the real peer. */
static void xr_helper_handoff(xr_reg_t *r, xr_link_t *link, int plain,
                              const struct sockaddr_storage *peer)
{
    struct sockaddr_storage from = r->to;
    socklen_t len =
        r->to.ss_family == AF_INET ? sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6);
    if (from.ss_family == AF_INET)
        ((struct sockaddr_in *) &from)->sin_port = 0;
    else
        ((struct sockaddr_in6 *) &from)->sin6_port = 0;
    int s = socket(r->to.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    socklen_t fl = sizeof(from);
    if (s < 0) {
        xr_helper_log("cannot make a connection to the server: %s", strerror(errno));
        goto done;
    }
    /* From the server's own address (or loopback), known before the
     * connection is, so that WHO has the answer before accept returns.
     * A server on another host (listen --to) gets no WHO. */
    if (bind(s, (struct sockaddr *) &from, len) == 0 &&
        getsockname(s, (struct sockaddr *) &from, &fl) == 0)
        xr_helper_who_add(&from, peer);
    if (connect(s, (struct sockaddr *) &r->to, len) != 0) {
        xr_helper_log("the server socket refused a connection: %s", strerror(errno));
        goto done;
    }
    int one = 1; /* small writes of the relayed peer go out at once */
    setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (xr_link_pump(link, plain, s, s, 1, NULL, NULL) < 0)
        xr_helper_log("a connection to the server ended on an error: %s", strerror(errno));
done:
    if (s >= 0)
        close(s);
}

/* Hand an association to a UDP server socket: its datagrams come from a
 * socket of ours (WHO maps it to the real peer; the library sends the
 * server's answers to the peer back to it), until a minute without one. */
static void xr_helper_handoff_udp(xr_reg_t *r, xr_link_t *link, const struct sockaddr_storage *peer)
{
    struct sockaddr_storage from = r->to;
    socklen_t len =
        r->to.ss_family == AF_INET ? sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6);
    socklen_t fl = sizeof(from);
    if (from.ss_family == AF_INET)
        ((struct sockaddr_in *) &from)->sin_port = 0;
    else
        ((struct sockaddr_in6 *) &from)->sin6_port = 0;
    int s = socket(r->to.ss_family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0 || bind(s, (struct sockaddr *) &from, len) != 0 ||
        getsockname(s, (struct sockaddr *) &from, &fl) != 0 ||
        connect(s, (struct sockaddr *) &r->to, len) != 0) {
        xr_helper_log("no socket for an association: %s", strerror(errno));
        if (s >= 0)
            close(s);
        return;
    }
    xr_helper_who_add(&from, peer);
    char *buf = xr_malloc(XR_UDP_MAX);
    int64_t last = xr_helper_now();
    for (;;) {
        struct pollfd p[2] = {{s, POLLIN, 0}, {xr_link_fd(link), POLLIN, 0}};
        int ready = xr_link_pending(link) > 0;
        int64_t left = XR_HELPER_UDP_IDLE_MS - (xr_helper_now() - last);
        if (left <= 0)
            break;
        if (!ready && poll(p, 2, (int) left) < 0 && errno != EINTR)
            break;
        if (p[0].revents & POLLIN) {
            ssize_t n = recv(s, buf, XR_UDP_MAX, 0);
            if (n >= 0 && xr_link_send_dgram(link, buf, (size_t) n) < 0)
                break;
            last = xr_helper_now();
        }
        if (ready || (p[1].revents & (POLLIN | POLLHUP | POLLERR))) {
            size_t n;
            if (xr_link_recv_dgram(link, buf, XR_UDP_MAX, &n) <= 0)
                break;
            send(s, buf, n, 0);
            last = xr_helper_now();
        }
    }
    free(buf);
    close(s);
}

/* Is a connection to lfd the agent's link (INCOMING mode 1) rather than
 * a direct client?  It comes from the agent's address and opens with a
 * TLS ClientHello (a direct client on the agent's host that does is
 * taken for a link: html-docs/protocol.html says so). */
static int xr_helper_is_link(xr_reg_t *r, int fd, const struct sockaddr_storage *peer)
{
    pthread_mutex_lock(&r->lock);
    int from = xr_client_from_agent(r->c, peer);
    pthread_mutex_unlock(&r->lock);
    return from && xr_link_opens_with_hello(fd, 1000);
}

static void *xr_reg_conn(void *arg)
{
    xr_handoff_t *ho = arg;
    xr_reg_t *r = ho->r;
    xr_link_t *link = NULL, *tls = NULL;
    char err[400];
    struct sockaddr_storage peer = ho->peer;
    if (ho->fd < 0) { /* INCOMING mode 2: we connect out to the relay point */
        pthread_mutex_lock(&r->lock);
        int rc = xr_client_take_begin(r->c, &ho->in, NULL, err, sizeof(err));
        pthread_mutex_unlock(&r->lock);
        if (rc == 0)
            tls = xr_link_tls(r->c, &ho->in.u.incoming.addr, 1, err, sizeof(err));
        if (tls != NULL)
            link = xr_link_join(tls, ho->in.u.incoming.token, NULL, err, sizeof(err));
        if (link == NULL)
            xr_helper_log("a relayed connection failed: %s", err);
        memset(&peer, 0, sizeof(peer));
        xr_paddr_to_sockaddr(&ho->in.u.incoming.peer, &peer);
    } else if (xr_helper_is_link(r, ho->fd, &ho->peer)) {
        /* The agent's link: TLS side by side with the others, the lock
         * only to match its token (the agent gives a link 1 s). */
        uint8_t token[XR_PROTO_TOKEN];
        xr_msg_t in;
        int fd = ho->fd;
        ho->fd = -1; /* the link's now, whatever comes of it */
        if (xr_link_accept_begin(r->c, fd, &tls, token, err, sizeof(err)) == 0) {
            int rc = xr_client_link_claim_shared(r->c, &r->lock, tls, token, &in, err, sizeof(err));
            if (rc == 0 && xr_link_accept_finish(tls, err, sizeof(err)) == 0)
                link = tls;
        }
        if (link == NULL)
            xr_helper_log("a relayed connection failed: %s", err);
        else {
            memset(&peer, 0, sizeof(peer));
            xr_paddr_to_sockaddr(&in.u.incoming.peer, &peer);
        }
    }
    if (link != NULL && r->udp)
        xr_helper_handoff_udp(r, link, &peer);
    else if (link != NULL || ho->fd >= 0)
        xr_helper_handoff(r, link, ho->fd, &peer);
    if (link != NULL)
        xr_link_close(link);
    if (ho->fd >= 0)
        close(ho->fd);
    free(ho);
    xr_reg_unref(r);
    atomic_fetch_sub(&xr_helper.busy, 1);
    return NULL;
}

static void xr_reg_spawn(xr_reg_t *r, int fd, const struct sockaddr_storage *peer,
                         const xr_msg_t *in)
{
    xr_handoff_t *ho = xr_calloc(1, sizeof(*ho));
    pthread_attr_t attr;
    pthread_t th;
    ho->r = r;
    ho->fd = fd;
    if (peer != NULL)
        ho->peer = *peer;
    if (in != NULL)
        ho->in = *in;
    atomic_fetch_add(&r->refs, 1);
    atomic_fetch_add(&xr_helper.busy, 1);
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    if (pthread_create(&th, &attr, xr_reg_conn, ho) != 0) {
        xr_helper_log("no thread for a connection: %s", strerror(errno));
        if (fd >= 0)
            close(fd);
        free(ho);
        xr_reg_unref(r);
        atomic_fetch_sub(&xr_helper.busy, 1);
    }
    pthread_attr_destroy(&attr);
}

static void xr_reg_tell(xr_reg_t *r, int state)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    if (r->have_official)
        xr_paddr_to_sockaddr(&r->official, &ss);
    r->state = state;
    xr_helper_answer(r->shim, XR_HMSG_BOUND, state, &ss, "", -1);
}

/* REGISTER: the address the agent's links and direct clients come to is
 * ours (lfd, at the interface that faces the agent), not the server's:
 * the server socket speaks the application's protocol, not TLS. */
static int xr_reg_register(xr_reg_t *r, char *err, size_t errlen)
{
    int perr = 0;
    struct sockaddr_storage local, ss;
    socklen_t sl = sizeof(ss);
    if (!xr_client_is_open(r->c) && xr_client_open(r->c, &perr, err, errlen) < 0)
        return -1;
    if (xr_client_local(r->c, &local) != 0)
        return -1;
    if (r->udp) /* the agent does not dial UDP: direct clients reach the server itself */
        memcpy(&ss, &r->app, sizeof(ss));
    else if (getsockname(r->lfd, (struct sockaddr *) &ss, &sl) != 0)
        return -1;
    if (local.ss_family == AF_INET)
        ((struct sockaddr_in *) &local)->sin_port = ((struct sockaddr_in *) &ss)->sin_port;
    else
        ((struct sockaddr_in6 *) &local)->sin6_port = ((struct sockaddr_in6 *) &ss)->sin6_port;
    xr_msg_t m = {.type = XR_MSG_REGISTER}, a;
    m.u.reg.proto = r->udp ? XR_PROTO_UDP : XR_PROTO_TCP;
    xr_paddr_from_sockaddr(&m.u.reg.local, &local);
    /* Direct clients (the same network, or through openings in the
     * firewalls) go to the server socket itself, at that interface. */
    if (local.ss_family == AF_INET)
        ((struct sockaddr_in *) &local)->sin_port = ((struct sockaddr_in *) &r->app)->sin_port;
    else
        ((struct sockaddr_in6 *) &local)->sin6_port = ((struct sockaddr_in6 *) &r->app)->sin6_port;
    xr_paddr_from_sockaddr(&m.u.reg.direct, &local);
    if (r->have_official)
        m.u.reg.prior = r->official;
    if (xr_client_call(r->c, &m, &a, &perr, err, errlen) < 0)
        return -1;
    if (a.type != XR_MSG_REGISTERED) {
        snprintf(err, errlen, "the agent answered REGISTER with %s", xr_proto_type_name(a.type));
        return -1;
    }
    r->official = a.u.registered.official;
    r->handle = a.u.registered.handle;
    r->have_official = 1;
    uint32_t hb = xr_client_heartbeat_ms(r->c);
    r->refresh_at = xr_helper_now() + (hb > 0 ? hb : 10000);
    return 0;
}

static int xr_reg_refresh(xr_reg_t *r, char *err, size_t errlen)
{
    xr_msg_t m = {.type = XR_MSG_REFRESH}, a;
    int perr = 0;
    m.u.refresh.handle = r->handle;
    if (xr_client_call(r->c, &m, &a, &perr, err, errlen) < 0)
        return -1;
    uint32_t hb = xr_client_heartbeat_ms(r->c);
    r->refresh_at = xr_helper_now() + (hb > 0 ? hb : 10000);
    return 0;
}

void xr_helper_serve(int sock, const struct sockaddr_storage *app,
                     const struct sockaddr_storage *bind_at, int udp)
{
    char err[400], at[80];
    xr_reg_t *r = xr_calloc(1, sizeof(*r));
    r->shim = sock;
    r->udp = udp;
    r->app = *app;
    r->to = *app;
    atomic_init(&r->refs, 1);
    pthread_mutex_init(&r->lock, NULL);
    /* A server on every address is reached at loopback. */
    if (r->to.ss_family == AF_INET) {
        struct sockaddr_in *s = (struct sockaddr_in *) &r->to;
        if (s->sin_addr.s_addr == htonl(INADDR_ANY))
            s->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    } else if (r->to.ss_family == AF_INET6) {
        struct sockaddr_in6 *s = (struct sockaddr_in6 *) &r->to;
        if (IN6_IS_ADDR_UNSPECIFIED(&s->sin6_addr))
            s->sin6_addr = in6addr_loopback;
    } else {
        xr_helper_answer(sock, XR_HMSG_ERROR, EAFNOSUPPORT, NULL, "only IPv4 or IPv6", -1);
        xr_reg_unref(r);
        return;
    }
    xr_addr_format(&r->app, at, sizeof(at));
    r->c = xr_carrier_client(err, sizeof(err));
    struct sockaddr_storage any;
    memset(&any, 0, sizeof(any));
    any.ss_family = r->to.ss_family;
    if (bind_at == NULL)
        bind_at = &any;
    int one = 1;
    r->lfd = r->c && !udp ? socket(bind_at->ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0) : -1;
    if (r->lfd >= 0)
        setsockopt(r->lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (udp && r->c != NULL) {
        /* no socket of ours: its associations connect out */
    } else if (r->c == NULL || r->lfd < 0 ||
               bind(r->lfd, (const struct sockaddr *) bind_at,
                    bind_at->ss_family == AF_INET ? sizeof(struct sockaddr_in)
                                                  : sizeof(struct sockaddr_in6)) != 0 ||
               listen(r->lfd, 511) != 0) {
        if (r->c != NULL)
            snprintf(err, sizeof(err), "cannot listen for the agent's links: %s", strerror(errno));
        xr_helper_answer(sock, XR_HMSG_ERROR, EADDRNOTAVAIL, NULL, err, -1);
        if (r->lfd >= 0)
            close(r->lfd);
        xr_reg_unref(r);
        return;
    }
    r->state = -1;
    for (;;) {
        int64_t now = xr_helper_now();
        if (!xr_client_is_open(r->c) && now >= r->retry_at) {
            pthread_mutex_lock(&r->lock);
            int rc = xr_reg_register(r, err, sizeof(err));
            pthread_mutex_unlock(&r->lock);
            if (rc == 0) {
                char o[80];
                xr_helper_log("server %s: fully bound: official %s", at,
                              xr_paddr_str(&r->official, o, sizeof(o)));
                xr_reg_tell(r, XR_BOUND_FULL);
            } else {
                int st = r->have_official ? XR_BOUND_HALF : XR_BOUND_LOCAL;
                if (st != r->state) {
                    xr_helper_log("server %s: %s (%s)", at,
                                  st == XR_BOUND_HALF ? "half bound" : "locally bound", err);
                    xr_reg_tell(r, st);
                }
                xr_client_close(r->c);
                r->retry_at = now + XR_HELPER_RETRY_MS;
            }
        }
        int open = xr_client_is_open(r->c);
        if (open && now >= r->refresh_at) {
            pthread_mutex_lock(&r->lock);
            int rc = xr_reg_refresh(r, err, sizeof(err));
            pthread_mutex_unlock(&r->lock);
            if (rc < 0) {
                xr_helper_log("server %s: lost the agent (%s): half bound", at, err);
                pthread_mutex_lock(&r->lock);
                xr_client_close(r->c);
                pthread_mutex_unlock(&r->lock);
                xr_reg_tell(r, XR_BOUND_HALF);
                continue;
            }
        }
        struct pollfd p[3] = {
            {sock, POLLIN, 0}, {r->lfd, POLLIN, 0}, {open ? xr_client_fd(r->c) : -1, POLLIN, 0}};
        /* Another thread may have read an INCOMING off the connection and
         * queued it (xr_client_is_link does): look at least every 50 ms. */
        int n = poll(p, 3, open ? 50 : XR_HELPER_RETRY_MS);
        if (n < 0 && errno != EINTR)
            break;
        if (p[0].revents) {
            xr_hmsg_t m;
            if (xr_hmsg_recv(sock, &m, NULL) <= 0)
                break; /* the server socket is closed, or its process gone */
        }
        if (p[1].revents & POLLIN) {
            struct sockaddr_storage peer;
            socklen_t pl = sizeof(peer);
            int fd = accept4(r->lfd, (struct sockaddr *) &peer, &pl, SOCK_CLOEXEC);
            if (fd >= 0)
                xr_reg_spawn(r, fd, &peer, NULL);
        }
        if (!open)
            continue;
        pthread_mutex_lock(&r->lock);
        for (;;) {
            xr_msg_t in;
            int got = xr_client_next(r->c, &in, 0, err, sizeof(err));
            if (got <= 0) {
                if (got < 0) {
                    xr_helper_log("server %s: lost the agent (%s): half bound", at, err);
                    r->state = -1;
                }
                break;
            }
            if (in.type != XR_MSG_INCOMING)
                continue;
            if (in.u.incoming.mode == XR_INCOMING_INBOUND) {
                xr_link_t *none;
                xr_client_take_begin(r->c, &in, &none, err, sizeof(err));
            } else {
                xr_reg_spawn(r, -1, NULL, &in);
            }
        }
        int lost = !xr_client_is_open(r->c);
        pthread_mutex_unlock(&r->lock);
        if (lost && r->state != XR_BOUND_HALF)
            xr_reg_tell(r, XR_BOUND_HALF);
    }
    pthread_mutex_lock(&r->lock);
    if (xr_client_is_open(r->c)) {
        xr_msg_t m = {.type = XR_MSG_UNREGISTER}, a;
        int perr;
        m.u.refresh.handle = r->handle;
        xr_client_call(r->c, &m, &a, &perr, err, sizeof(err));
        xr_client_close(r->c);
    }
    pthread_mutex_unlock(&r->lock);
    xr_helper_log("server %s: closed", at);
    if (r->lfd >= 0)
        close(r->lfd);
    xr_reg_unref(r);
}

/* ---- the requests ------------------------------------------------------- */

static void *xr_helper_request(void *arg)
{
    int sock = (int) (intptr_t) arg;
    xr_hmsg_t q;
    int fd = -1;
    /* A request comes at once; a silent peer does not keep a thread. */
    struct timeval tv = {5, 0};
    setsockopt(sock, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    int got = xr_hmsg_recv(sock, &q, &fd);
    struct timeval none = {0, 0};
    setsockopt(sock, SOL_SOCKET, SO_RCVTIMEO, &none, sizeof(none));
    if (got == 1) {
        switch (q.type) {
        case XR_HMSG_CONNECT: xr_helper_connect(&sock, &q, fd); break;
        case XR_HMSG_LISTEN: xr_helper_serve(sock, &q.addr, NULL, q.proto == IPPROTO_UDP); break;
        case XR_HMSG_WHO: xr_helper_who(sock, &q); break;
        default: xr_helper_answer(sock, XR_HMSG_ERROR, EPROTO, NULL, "not a request", -1); break;
        }
    } else if (got < 0) {
        xr_helper_log("a malformed request: %s", strerror(errno));
    }
    if (fd >= 0)
        close(fd);
    if (sock >= 0)
        close(sock);
    atomic_fetch_sub(&xr_helper.busy, 1);
    return NULL;
}

static void xr_helper_signal(int sig)
{
    (void) sig;
    xr_helper_stop = 1;
}

static void xr_helper_usage(FILE *out)
{
    fprintf(out,
            "usage: xray helper --socket PATH [--idle SECONDS] [--detach] [--agent HOST:PORT]\n"
            "                   [--agent-name NAME] [--cert FILE --key FILE --ca FILE]\n"
            "\n"
            "Carry an application's XRAY connections for libxray and libxray-preload.so,\n"
            "which start it themselves when they first need it (one per user and client\n"
            "configuration).  It serves on the unix socket PATH and leaves after SECONDS\n"
            "(600) with nothing to do; --detach: in the background.  Agent and\n"
            "certificates as for 'xray connect'.\n");
}

/* The socket, unless another helper already serves on it: 0 serving, 1
 * another does, -1 with err. */
static int xr_helper_bind(const char *path, int *out, char *err, size_t errlen)
{
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof(sun.sun_path)) {
        snprintf(err, errlen, "socket path too long: %s", path);
        return -1;
    }
    memcpy(sun.sun_path, path, strlen(path) + 1);
    int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    mode_t old = umask(0077);
    int rc = fd >= 0 ? bind(fd, (struct sockaddr *) &sun, sizeof(sun)) : -1;
    if (rc != 0 && errno == EADDRINUSE) {
        int probe = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
        int alive = probe >= 0 && connect(probe, (struct sockaddr *) &sun, sizeof(sun)) == 0;
        if (probe >= 0)
            close(probe);
        if (alive) {
            umask(old);
            close(fd);
            return 1;
        }
        unlink(path); /* a helper that died left it */
        rc = bind(fd, (struct sockaddr *) &sun, sizeof(sun));
    }
    umask(old);
    if (rc != 0 || listen(fd, 512) != 0) {
        snprintf(err, errlen, "cannot serve on %s: %s", path, strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    *out = fd;
    return 0;
}

int xr_helper_main(int argc, char **argv)
{
    xr_helper_t *h = &xr_helper;
    const char *path = NULL, *idle_s = NULL;
    int detach = 0;
    char err[400];
    h->cf.timeout_ms = 10000;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char **slot = xr_client_conf_flag(&h->cf, a);
        if (slot == NULL)
            slot = strcmp(a, "--socket") == 0 ? &path : strcmp(a, "--idle") == 0 ? &idle_s : NULL;
        if (slot != NULL && i + 1 < argc) {
            *slot = argv[++i];
        } else if (strcmp(a, "--detach") == 0) {
            detach = 1;
        } else if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            xr_helper_usage(stdout);
            return 0;
        } else {
            fprintf(stderr, "xray helper: unexpected argument \"%s\"\n", a);
            xr_helper_usage(stderr);
            return 2;
        }
    }
    long idle = XR_HELPER_IDLE_SECS;
    if (idle_s != NULL) {
        char *end;
        idle = strtol(idle_s, &end, 10);
        if (*end != '\0' || idle < 1 || idle > 86400) {
            fprintf(stderr, "xray helper: --idle takes 1-86400 seconds\n");
            return 2;
        }
    }
    if (path == NULL) {
        fprintf(stderr, "xray helper: --socket PATH is needed\n");
        return 2;
    }
    if (xr_client_conf_fill(&h->cf, &h->found, err, sizeof(err)) < 0 ||
        xr_carrier_init(&h->cf, err, sizeof(err)) < 0) {
        xr_helper_log("%s", err);
        return 1;
    }
    /* Started by the library: its application is not our parent for
     * longer than this (it reaps the process that exits here). */
    if (detach) {
        pid_t pid = fork();
        if (pid < 0) {
            xr_helper_log("fork: %s", strerror(errno));
            return 1;
        }
        if (pid > 0)
            _exit(0);
    }
    int lfd;
    int rc = xr_helper_bind(path, &lfd, err, sizeof(err));
    if (rc != 0) {
        if (rc < 0)
            xr_helper_log("%s", err);
        return rc < 0 ? 1 : 0;
    }
    struct sigaction sa = {.sa_handler = xr_helper_signal};
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    xr_helper_log("serving on %s for %s (agent %s)", path, h->cf.cert, h->cf.agent);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    int64_t idle_since = xr_helper_now();
    while (!xr_helper_stop) {
        struct pollfd p = {lfd, POLLIN, 0};
        int n = poll(&p, 1, 1000);
        if (atomic_load(&h->busy) > 0)
            idle_since = xr_helper_now();
        else if (xr_helper_now() - idle_since > idle * 1000)
            break;
        if (n <= 0)
            continue;
        int s = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
        if (s < 0) {
            if (errno == EMFILE || errno == ENFILE)
                usleep(100 * 1000);
            continue;
        }
        /* Only this user's processes (the directory is 0700 too). */
        struct ucred cr;
        socklen_t cl = sizeof(cr);
        if (getsockopt(s, SOL_SOCKET, SO_PEERCRED, &cr, &cl) != 0 || cr.uid != geteuid()) {
            close(s);
            continue;
        }
        atomic_fetch_add(&h->busy, 1);
        pthread_t th;
        if (pthread_create(&th, &attr, xr_helper_request, (void *) (intptr_t) s) != 0) {
            xr_helper_log("no thread for a request: %s", strerror(errno));
            atomic_fetch_sub(&h->busy, 1);
            close(s);
        }
    }
    /* The sessions, for the next helper or `xray connect`. */
    xr_carrier_save();
    unlink(path);
    xr_helper_log("%s", xr_helper_stop ? "stopped" : "idle: leaving");
    return 0;
}
