/*
 * agent.c: the `agent:` block and the control service (see agent.h).
 *
 * A control session is a TLS end (mutual authentication, the identity
 * kept) read into a frame buffer; every complete frame is decoded by
 * proto.c and answered in order.  The application is found from the
 * certificate once, at HELLO: an identity no application matches is
 * refused there, with the reason logged.  Leases live in one table owned
 * by this process; a 1 s tick expires them and writes the state file when
 * something changed.
 */
#include "agent/agent.h"
#include "core/log.h"
#include "event/reactor.h"
#include "relay/relay.h"
#include "tls/tls.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define GO(f) offsetof(xr_agent_conf_t, f)
#define A     XR_CTX_AGENT

const xr_directive_t xr_agent_directives[] = {
    {"listen", A, XR_T_ADDR, GO(listen), NULL, 0, 0, NULL, NULL, XR_DIR_REQUIRED,
     "Address libraries and other agents connect to (TLS, mutual authentication)."},
    {"tls", A, XR_T_CUSTOM, GO(tls), NULL, 0, 0, NULL, xr_tls_set_server, XR_DIR_REQUIRED,
     "The agent's certificate and key, and client_ca: the CA of applications and agents."},
    {"networks", A, XR_T_STR_LIST, GO(networks_text), NULL, 0, 0, NULL, NULL, 0,
     "The private networks this agent serves: their servers get official addresses."},
    {"official_pool", A, XR_T_STR_LIST, GO(pool_text), NULL, 0, 0, NULL, NULL, 0,
     "Public addresses and ports leased to servers: ADDR:PORT-PORT entries."},
    {"lease_time", A, XR_T_DURATION, GO(lease_time), "30s", 1000, 86400000, NULL, NULL, 0,
     "How long a registration lives without a heartbeat."},
    {"state_file", A, XR_T_PATH, GO(state_file), NULL, 0, 0, NULL, NULL, 0,
     "Where leases are kept across restarts (none: in memory only)."},
    {"handshake_timeout", A, XR_T_DURATION, GO(handshake_timeout), "10s", 100, 600000, NULL, NULL,
     0, "Time a new control connection has for TLS and HELLO."},
    {"admin_socket", A, XR_T_PATH, GO(admin_socket), NULL, 0, 0, NULL, NULL, 0,
     "UNIX socket (mode 0600) that `xray status` reads the agent's state from."},
    XR_DIRECTIVES_END};

#undef A

/* ---- configuration ------------------------------------------------------- */

int xr_agent_set(xr_conf_t *cf, const xr_node_t *n, void *conf, const xr_directive_t *d)
{
    xr_gen_t *g = cf->user;
    if (n->type != XR_NODE_MAP)
        return xr_conf_error(cf, n, "expected a mapping of agent settings");
    if (g->agent != NULL)
        return xr_conf_error(cf, n, "agent is already defined");
    xr_agent_conf_t *a = xr_conf_alloc(cf, sizeof(*a));
    a->node = n;
    if (xr_conf_defaults(cf, xr_agent_directives, XR_CTX_AGENT, a, NULL) != XR_OK ||
        xr_conf_block(cf, n, xr_agent_directives, XR_CTX_AGENT, a, NULL, NULL) != XR_OK)
        return XR_ERROR;
    if (a->tls->verify != XR_VERIFY_REQUIRED)
        return xr_conf_error(cf, xr_node_get(n, "tls"),
                             "the agent identifies applications by certificate: its tls needs "
                             "client_ca and verify_client: required");
    a->tls->keep_peer = 1;
    a->networks = xr_conf_alloc(cf, (a->networks_text.n + 1) * sizeof(xr_net_rule_t));
    const xr_node_t *nn = xr_node_get(n, "networks");
    for (size_t i = 0; i < a->networks_text.n; i++) {
        char why[160];
        xr_net_rule_t *r = &a->networks[a->nnetworks];
        if (xr_net_rule_parse(a->networks_text.items[i], r, why, sizeof(why)) != XR_OK ||
            r->family == 0 || r->port_lo != 1 || r->port_hi != 65535) {
            return xr_conf_error(cf, nn, "\"%s\": %s", a->networks_text.items[i],
                                 r->family == 0 ? "expected a network such as 198.18.2.0/24" : why);
        }
        a->nnetworks++;
    }
    a->pool = xr_conf_alloc(cf, (a->pool_text.n + 1) * sizeof(xr_pool_range_t));
    const xr_node_t *pn = xr_node_get(n, "official_pool");
    for (size_t i = 0; i < a->pool_text.n; i++) {
        char why[160];
        if (xr_pool_range_parse(a->pool_text.items[i], &a->pool[a->npool], why, sizeof(why)) !=
            XR_OK)
            return xr_conf_error(cf, pn, "\"%s\": %s", a->pool_text.items[i], why);
        a->npool++;
    }
    if (a->nnetworks > 0 && a->npool == 0)
        return xr_conf_error(cf, n,
                             "servers in networks need official addresses: add official_pool");
    g->agent = a;
    return XR_OK;
}

int xr_agent_set_applications(xr_conf_t *cf, const xr_node_t *n, void *conf,
                              const xr_directive_t *d)
{
    xr_gen_t *g = cf->user;
    g->policy = xr_conf_alloc(cf, sizeof(*g->policy));
    g->policy_node = n;
    return xr_policy_parse(cf, n, g->policy);
}

int xr_agent_validate(xr_conf_t *cf, xr_gen_t *g)
{
    if (g->policy != NULL && g->agent == NULL)
        return xr_conf_error(cf, g->policy_node,
                             "applications are the agent's policy: add an agent block");
    return XR_OK;
}

/* ---- control sessions ---------------------------------------------------- */

#define XR_CTL_IN  (XR_REC_MAX_CIPHER + XR_REC_HEADER + XR_PROTO_MAX_FRAME)
#define XR_CTL_OUT (16 * XR_PROTO_MAX_FRAME)

typedef enum { XR_CTL_HANDSHAKE, XR_CTL_HELLO, XR_CTL_READY } xr_ctl_state_t;

typedef struct {
    xr_end_t end;
    xr_ctl_state_t state;
    uv_timer_t timer;
    xr_list_t link;
    const xr_app_conf_t *app;
    char peer[64]; /* address */
    char who[160]; /* identity for logs */
    char key[65];  /* public-key SHA-256 */
    int closing;
    size_t inlen, outlen;
    uint8_t in[XR_CTL_IN];
    uint8_t out[XR_CTL_OUT];
} xr_ctl_t;

static struct {
    uv_loop_t *loop;
    xr_gen_t *gen;
    const xr_agent_conf_t *conf;
    xr_io_t lio;
    uv_timer_t tick;
    xr_list_t sessions;
    size_t nsessions;
    xr_leases_t leases;
    int dirty;
    int running;
    int64_t started;
    xr_io_t admin;
    ino_t admin_ino; /* of the path we bound, to remove only our own */
    struct {
        uint64_t sessions, full, resumed, registered, refreshed, unregistered, expired, refused,
            protocol_errors;
    } n;
} xr_ag;

static int xr_ctl_flush(xr_ctl_t *c);

static void xr_ctl_timer_closed(uv_handle_t *h)
{
    xr_ctl_t *c = h->data;
    free(c);
}

static void xr_ctl_close(xr_ctl_t *c, const char *why)
{
    if (c->closing)
        return;
    c->closing = 1;
    xr_log(XR_LOG_INFO, "agent: control connection from %s%s%s closed: %s", c->peer,
           c->who[0] ? ", " : "", c->who, why);
    xr_leases_orphan(&xr_ag.leases, c);
    if (c->state != XR_CTL_HANDSHAKE && c->outlen > 0)
        xr_ctl_flush(c); /* best effort: the ERROR that explains the close */
    if (c->end.ops != NULL && c->end.ops->free != NULL)
        c->end.ops->free(&c->end);
    if (c->end.io.fd >= 0)
        close(c->end.io.fd);
    c->end.io.fd = -1;
    xr_list_remove(&c->link);
    xr_ag.nsessions--;
    uv_timer_stop(&c->timer);
    uv_close((uv_handle_t *) &c->timer, xr_ctl_timer_closed);
}

/* Send what is queued; XR_OK (maybe partly, the rest waits for EPOLLOUT)
 * or XR_ERROR. */
static int xr_ctl_flush(xr_ctl_t *c)
{
    while (c->outlen > 0) {
        ssize_t n = c->end.ops->write(&c->end, c->out, c->outlen);
        if (n < 0) {
            if (errno == EAGAIN)
                break;
            return XR_ERROR;
        }
        memmove(c->out, c->out + n, c->outlen - (size_t) n);
        c->outlen -= (size_t) n;
        if (n == 0)
            break;
    }
    if (c->end.ops->flush != NULL && c->end.ops->flush(&c->end) < 0 && errno != EAGAIN)
        return XR_ERROR;
    return XR_OK;
}

static void xr_ctl_send(xr_ctl_t *c, const xr_msg_t *m)
{
    size_t n = xr_proto_encode(m, c->out + c->outlen, sizeof(c->out) - c->outlen);
    if (n == 0) {
        /* Only a peer that never reads fills 16 frames of answers. */
        xr_ctl_close(c, "the peer does not read its answers");
        return;
    }
    c->outlen += n;
}

static void xr_ctl_error(xr_ctl_t *c, uint32_t id, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void xr_ctl_error(xr_ctl_t *c, uint32_t id, int code, const char *fmt, ...)
{
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    xr_msg_t m = {.type = XR_MSG_ERROR};
    m.u.error.code = (uint16_t) code;
    m.u.error.id = id;
    xr_pstr_set(&m.u.error.message, msg);
    xr_ctl_send(c, &m);
}

/* Is a in one of the private networks this agent serves? */
static int xr_is_private(const xr_paddr_t *a)
{
    xr_paddr_t probe = *a;
    probe.port = 1; /* network rules cover every port */
    for (size_t i = 0; i < xr_ag.conf->nnetworks; i++)
        if (xr_net_rule_covers(&xr_ag.conf->networks[i], &probe))
            return 1;
    return 0;
}

static void xr_ctl_register(xr_ctl_t *c, const xr_msg_t *m)
{
    char la[80], oa[80], why[200];
    uint32_t id = m->u.reg.id;
    xr_paddr_str(&m->u.reg.local, la, sizeof(la));
    if (!c->app->inbound) {
        xr_ag.n.refused++;
        xr_log(XR_LOG_NOTICE,
               "agent: REGISTER %s by %s refused: application \"%s\" has inbound off", la, c->who,
               c->app->name);
        xr_ctl_error(c, id, XR_PERR_NOT_AUTHORIZED,
                     "application \"%s\" may not register servers (inbound: off)", c->app->name);
        return;
    }
    if (xr_leases_count(&xr_ag.leases, c->app->name) >= (size_t) c->app->max_registrations) {
        xr_ag.n.refused++;
        xr_log(XR_LOG_NOTICE, "agent: REGISTER %s by %s refused: max_registrations %lld reached",
               la, c->who, (long long) c->app->max_registrations);
        xr_ctl_error(c, id, XR_PERR_OVER_LIMIT, "max_registrations (%lld) reached",
                     (long long) c->app->max_registrations);
        return;
    }
    int err = 0;
    int priv = xr_is_private(&m->u.reg.local);
    if (priv && xr_ag.conf->npool == 0) {
        xr_ctl_error(c, id, XR_PERR_OVER_LIMIT, "no official_pool");
        return;
    }
    xr_lease_t *l = xr_leases_register(&xr_ag.leases, m->u.reg.proto, &m->u.reg.local, priv,
                                       &m->u.reg.prior, c->key, c->app->name, c, xr_wall_ms(),
                                       xr_ag.conf->lease_time, &err, why, sizeof(why));
    if (l == NULL) {
        xr_ag.n.refused++;
        xr_log(XR_LOG_NOTICE, "agent: REGISTER %s by %s refused: %s", la, c->who, why);
        xr_ctl_error(c, id, err, "%s", why);
        return;
    }
    xr_ag.dirty = 1;
    xr_ag.n.registered++;
    xr_log(XR_LOG_INFO, "agent: %s %s registered %s/%s as %s (handle %llu, %s)", c->app->name,
           c->who, la, m->u.reg.proto == XR_PROTO_TCP ? "tcp" : "udp",
           xr_paddr_str(&l->official, oa, sizeof(oa)), (unsigned long long) l->handle,
           l->leased ? "leased" : "public");
    xr_msg_t r = {.type = XR_MSG_REGISTERED};
    r.u.registered.id = id;
    r.u.registered.handle = l->handle;
    r.u.registered.lease_ms = (uint32_t) xr_ag.conf->lease_time;
    r.u.registered.official = l->official;
    xr_ctl_send(c, &r);
}

static void xr_ctl_frame(xr_ctl_t *c, const xr_msg_t *m)
{
    if (c->state == XR_CTL_HELLO) {
        if (m->type != XR_MSG_HELLO) {
            xr_ctl_error(c, 0, XR_PERR_PROTOCOL, "expected HELLO, got %s",
                         xr_proto_type_name(m->type));
            xr_ctl_close(c, "no HELLO");
            return;
        }
        if (m->u.hello.min_version > XR_PROTO_VERSION) {
            xr_ctl_error(c, 0, XR_PERR_VERSION, "this agent speaks version %d only",
                         XR_PROTO_VERSION);
            xr_ctl_close(c, "no common protocol version");
            return;
        }
        xr_msg_t r = {.type = XR_MSG_HELLO_OK};
        r.u.hello_ok.version = XR_PROTO_VERSION;
        r.u.hello_ok.heartbeat_ms = (uint32_t) (xr_ag.conf->lease_time / 3);
        xr_pstr_set(&r.u.hello_ok.software, "xrayd/" XR_VERSION);
        xr_ctl_send(c, &r);
        c->state = XR_CTL_READY;
        uv_timer_stop(&c->timer);
        return;
    }
    xr_lease_t *l;
    xr_msg_t r = {0};
    switch (m->type) {
    case XR_MSG_REGISTER: xr_ctl_register(c, m); break;
    case XR_MSG_REFRESH:
        l = xr_leases_find(&xr_ag.leases, m->u.refresh.handle, c);
        if (l == NULL) {
            xr_ctl_error(c, m->u.refresh.id, XR_PERR_NO_SUCH_ADDRESS,
                         "no registration %llu on this connection",
                         (unsigned long long) m->u.refresh.handle);
            break;
        }
        l->expires = xr_wall_ms() + xr_ag.conf->lease_time;
        xr_ag.dirty = 1;
        xr_ag.n.refreshed++;
        r.type = XR_MSG_REFRESHED;
        r.u.refreshed.id = m->u.refresh.id;
        r.u.refreshed.lease_ms = (uint32_t) xr_ag.conf->lease_time;
        xr_ctl_send(c, &r);
        break;
    case XR_MSG_UNREGISTER:
        l = xr_leases_find(&xr_ag.leases, m->u.refresh.handle, c);
        if (l == NULL) {
            xr_ctl_error(c, m->u.refresh.id, XR_PERR_NO_SUCH_ADDRESS,
                         "no registration %llu on this connection",
                         (unsigned long long) m->u.refresh.handle);
            break;
        }
        char oa[80];
        xr_log(XR_LOG_INFO, "agent: %s unregistered %s", c->app->name,
               xr_paddr_str(&l->official, oa, sizeof(oa)));
        xr_leases_release(&xr_ag.leases, l);
        xr_ag.dirty = 1;
        xr_ag.n.unregistered++;
        r.type = XR_MSG_UNREGISTERED;
        r.u.done.id = m->u.refresh.id;
        xr_ctl_send(c, &r);
        break;
    case XR_MSG_CONNECT:
        /* Connection setup (XRAY §5.2) is the next step of this agent; a
         * library learns that plainly instead of waiting. */
        xr_ctl_error(c, m->u.connect.id, XR_PERR_UNREACHABLE,
                     "this agent does not set up connections yet");
        break;
    default:
        xr_ctl_error(c, 0, XR_PERR_PROTOCOL, "%s is not a request a library sends to its agent",
                     xr_proto_type_name(m->type));
        xr_ctl_close(c, "unexpected frame");
    }
}

static void xr_ctl_input(xr_ctl_t *c)
{
    size_t off = 0;
    while (!c->closing) {
        xr_msg_t m;
        size_t used;
        const char *why;
        xr_proto_status_t st = xr_proto_decode(c->in + off, c->inlen - off, &m, &used, &why);
        if (st == XR_PROTO_AGAIN)
            break;
        if (st != XR_PROTO_OK) {
            xr_log(XR_LOG_NOTICE, "agent: invalid frame from %s%s%s (type 0x%02x): bad %s", c->peer,
                   c->who[0] ? ", " : "", c->who, c->in[off], why);
            xr_ag.n.protocol_errors++;
            xr_ctl_error(c, 0, XR_PERR_PROTOCOL, "invalid frame: bad %s", why);
            xr_ctl_flush(c);
            xr_ctl_close(c, "protocol error");
            return;
        }
        off += used;
        xr_ctl_frame(c, &m);
    }
    if (!c->closing && off > 0) {
        memmove(c->in, c->in + off, c->inlen - off);
        c->inlen -= off;
    }
}

static void xr_ctl_io(xr_io_t *io, uint32_t events);

static void xr_ctl_run(xr_ctl_t *c)
{
    if (c->state == XR_CTL_HANDSHAKE) {
        int rc = xr_tls_end_handshake(&c->end);
        if (rc == XR_AGAIN)
            return;
        if (rc != XR_OK) {
            xr_log(XR_LOG_NOTICE, "agent: TLS handshake with %s failed: %s", c->peer,
                   xr_tls_end_why(&c->end));
            xr_ctl_close(c, "TLS handshake failed");
            return;
        }
        if (xr_tls_end_resumed(&c->end))
            xr_ag.n.resumed++;
        else
            xr_ag.n.full++;
        const xr_identity_t *id = xr_tls_end_peer(&c->end);
        const char *ident = xr_tls_end_identity(&c->end);
        snprintf(c->who, sizeof(c->who), "%s", ident ? ident : "no certificate");
        c->app =
            id != NULL && xr_ag.gen->policy != NULL ? xr_policy_find(xr_ag.gen->policy, id) : NULL;
        if (c->app == NULL) {
            xr_ag.n.refused++;
            xr_log(XR_LOG_NOTICE, "agent: %s (%s) refused: no application matches its certificate",
                   c->peer, c->who);
            c->state = XR_CTL_READY;
            xr_ctl_error(c, 0, XR_PERR_NOT_AUTHORIZED,
                         "no application of this agent matches your certificate");
            xr_ctl_flush(c);
            xr_ctl_close(c, "not authorized");
            return;
        }
        snprintf(c->key, sizeof(c->key), "%s", id->pubkey_sha256);
        c->state = XR_CTL_HELLO;
        c->end.readable = 1; /* a frame may have come with the handshake */
    }
    while (!c->closing && c->end.readable) {
        if (c->inlen == sizeof(c->in)) {
            xr_ctl_close(c, "input buffer full");
            return;
        }
        ssize_t n = c->end.ops->read(&c->end, c->in + c->inlen, sizeof(c->in) - c->inlen);
        if (n > 0) {
            c->inlen += (size_t) n;
            xr_ctl_input(c);
            continue;
        }
        if (n == 0) {
            xr_ctl_close(c, "closed by the peer");
            return;
        }
        if (errno == EAGAIN) {
            c->end.readable = 0;
            break;
        }
        const char *why = c->end.ops->why ? c->end.ops->why(&c->end) : NULL;
        xr_ctl_close(c, why ? why : strerror(errno));
        return;
    }
    if (!c->closing && xr_ctl_flush(c) != XR_OK)
        xr_ctl_close(c, "write failed");
}

static void xr_ctl_io(xr_io_t *io, uint32_t events)
{
    xr_ctl_t *c = xr_container_of(io, xr_ctl_t, end.io);
    if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))
        c->end.readable = 1;
    if (events & EPOLLOUT)
        c->end.writable = 1;
    xr_ctl_run(c);
}

static void xr_ctl_timeout(uv_timer_t *t)
{
    xr_ctl_t *c = t->data;
    xr_log(XR_LOG_NOTICE, "agent: %s did not finish TLS and HELLO within %lld ms", c->peer,
           (long long) xr_ag.conf->handshake_timeout);
    xr_ctl_close(c, "handshake timeout");
}

static void xr_agent_accept(xr_io_t *io, uint32_t events)
{
    for (int i = 0; i < 64 && xr_ag.running; i++) {
        struct sockaddr_storage sa;
        socklen_t len = sizeof(sa);
        int fd = accept4(io->fd, (struct sockaddr *) &sa, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED)
                xr_log(XR_LOG_ERR, "agent: accept() failed: %s", strerror(errno));
            return;
        }
        xr_ctl_t *c = calloc(1, sizeof(*c));
        if (c == NULL) {
            close(fd);
            xr_log(XR_LOG_ERR, "agent: out of memory for a control connection");
            continue;
        }
        xr_addr_format(&sa, c->peer, sizeof(c->peer));
        c->end.io.fd = -1;
        uv_timer_init(xr_ag.loop, &c->timer);
        c->timer.data = c;
        xr_list_insert_tail(&xr_ag.sessions, &c->link);
        xr_ag.nsessions++;
        xr_ag.n.sessions++;
        if (xr_io_add(&c->end.io, fd, xr_ctl_io) != XR_OK) {
            close(fd);
            xr_ctl_close(c, "cannot watch the socket");
            continue;
        }
        if (xr_tls_end_start(&c->end, xr_ag.conf->tls) != XR_OK) {
            xr_ctl_close(c, "out of memory");
            continue;
        }
        uv_timer_start(&c->timer, xr_ctl_timeout, (uint64_t) xr_ag.conf->handshake_timeout, 0);
        c->end.readable = c->end.writable = 1;
        xr_ctl_run(c);
    }
}

/* ---- leases over time ---------------------------------------------------- */

static void xr_agent_expired(xr_lease_t *l, void *arg)
{
    char oa[80];
    xr_ag.n.expired++;
    xr_log(XR_LOG_INFO, "agent: lease of %s (%s) expired without a heartbeat",
           xr_paddr_str(&l->official, oa, sizeof(oa)), l->app);
}

static void xr_agent_save(void)
{
    if (!xr_ag.dirty || xr_ag.conf->state_file == NULL)
        return;
    if (xr_leases_save(&xr_ag.leases, xr_ag.conf->state_file) != 0) {
        /* Keep serving from memory and try again on the next tick. */
        xr_log(XR_LOG_ERR, "agent: cannot write state_file %s: %s", xr_ag.conf->state_file,
               strerror(errno));
        return;
    }
    xr_ag.dirty = 0;
}

static void xr_agent_tick(uv_timer_t *t)
{
    if (xr_leases_expire(&xr_ag.leases, xr_wall_ms(), xr_agent_expired, NULL) > 0)
        xr_ag.dirty = 1;
    xr_agent_save();
}

/* ---- the admin socket: `xray status` --------------------------------------- */

typedef struct {
    char *p;
    size_t len, cap;
    int failed;
} xr_sb_t;

static void xr_sb_add(xr_sb_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void xr_sb_add(xr_sb_t *b, const char *fmt, ...)
{
    for (int attempt = 0; attempt < 2 && !b->failed; attempt++) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(b->p ? b->p + b->len : NULL, b->p ? b->cap - b->len : 0, fmt, ap);
        va_end(ap);
        if (n < 0) {
            b->failed = 1;
            return;
        }
        if (b->p != NULL && b->len + (size_t) n < b->cap) {
            b->len += (size_t) n;
            return;
        }
        size_t ncap = (b->cap ? b->cap * 2 : 4096) + (size_t) n;
        char *np = realloc(b->p, ncap);
        if (np == NULL) {
            b->failed = 1;
            return;
        }
        b->p = np;
        b->cap = ncap;
    }
}

/* A JSON string; the fields are printable already (addresses, names,
 * hex), but a name from the configuration may hold a quote. */
static void xr_sb_json(xr_sb_t *b, const char *s)
{
    xr_sb_add(b, "\"");
    for (; *s; s++) {
        unsigned char ch = (unsigned char) *s;
        if (ch == '"' || ch == '\\')
            xr_sb_add(b, "\\%c", ch);
        else if (ch < 0x20)
            xr_sb_add(b, "\\u%04x", ch);
        else
            xr_sb_add(b, "%c", ch);
    }
    xr_sb_add(b, "\"");
}

static size_t xr_pool_size(void)
{
    size_t n = 0;
    for (size_t i = 0; i < xr_ag.conf->npool; i++)
        n += (size_t) (xr_ag.conf->pool[i].hi - xr_ag.conf->pool[i].lo) + 1;
    return n;
}

static void xr_agent_status(xr_sb_t *b, int json)
{
    int64_t now = xr_wall_ms();
    size_t leased = 0;
    for (size_t i = 0; i < xr_ag.leases.n; i++)
        leased += xr_ag.leases.l[i].leased;
    static const char *const counters[] = {"sessions",   "full_handshakes", "resumed_handshakes",
                                           "registered", "refreshed",       "unregistered",
                                           "expired",    "refused",         "protocol_errors"};
    uint64_t values[] = {xr_ag.n.sessions,   xr_ag.n.full,      xr_ag.n.resumed,
                         xr_ag.n.registered, xr_ag.n.refreshed, xr_ag.n.unregistered,
                         xr_ag.n.expired,    xr_ag.n.refused,   xr_ag.n.protocol_errors};
    if (json) {
        xr_sb_add(b, "{\"version\":\"%s\",\"pid\":%ld,\"generation\":%llu,\"listen\":", XR_VERSION,
                  (long) getpid(), (unsigned long long) xr_ag.gen->number);
        xr_sb_json(b, xr_ag.conf->listen.text);
        xr_sb_add(b,
                  ",\"uptime_ms\":%lld,\"open_sessions\":%zu,\"pool\":{\"size\":%zu,"
                  "\"leased\":%zu},\"counters\":{",
                  (long long) (now - xr_ag.started), xr_ag.nsessions, xr_pool_size(), leased);
        for (size_t i = 0; i < XR_ARRAY_SIZE(values); i++)
            xr_sb_add(b, "%s\"%s\":%llu", i ? "," : "", counters[i],
                      (unsigned long long) values[i]);
        xr_sb_add(b, "},\"registrations\":[");
        for (size_t i = 0; i < xr_ag.leases.n; i++) {
            const xr_lease_t *l = &xr_ag.leases.l[i];
            char o[80], lo[80];
            xr_sb_add(b, "%s{\"official\":", i ? "," : "");
            xr_sb_json(b, xr_paddr_str(&l->official, o, sizeof(o)));
            xr_sb_add(b, ",\"local\":");
            xr_sb_json(b, xr_paddr_str(&l->local, lo, sizeof(lo)));
            xr_sb_add(b, ",\"proto\":\"%s\",\"leased\":%s,\"application\":",
                      l->proto == XR_PROTO_TCP ? "tcp" : "udp", l->leased ? "true" : "false");
            xr_sb_json(b, l->app);
            xr_sb_add(b, ",\"key\":\"%s\",\"holder\":\"%s\",\"expires_in_ms\":%lld}", l->key,
                      l->owner ? "connected" : "reserved", (long long) (l->expires - now));
        }
        /* Relay points and peers come with connection setup (XRAY §5.2). */
        xr_sb_add(b, "],\"relay_points\":[],\"peers\":[]}\n");
        return;
    }
    xr_sb_add(b, "agent %s  pid %ld  generation %llu  up %lld s\n", xr_ag.conf->listen.text,
              (long) getpid(), (unsigned long long) xr_ag.gen->number,
              (long long) ((now - xr_ag.started) / 1000));
    xr_sb_add(b,
              "control sessions: %zu open, %llu in all; TLS handshakes: %llu full, %llu "
              "resumed\n",
              xr_ag.nsessions, (unsigned long long) xr_ag.n.sessions,
              (unsigned long long) xr_ag.n.full, (unsigned long long) xr_ag.n.resumed);
    xr_sb_add(b, "official pool: %zu addresses, %zu leased\n", xr_pool_size(), leased);
    xr_sb_add(b, "counters:");
    for (size_t i = 3; i < XR_ARRAY_SIZE(values); i++)
        xr_sb_add(b, " %s %llu%s", counters[i], (unsigned long long) values[i],
                  i + 1 < XR_ARRAY_SIZE(values) ? "," : "\n");
    xr_sb_add(b, "registrations: %zu\n", xr_ag.leases.n);
    if (xr_ag.leases.n > 0)
        xr_sb_add(b, "  %-24s %-24s %-5s %-16s %-10s %s\n", "OFFICIAL", "LOCAL", "PROTO",
                  "APPLICATION", "HOLDER", "EXPIRES");
    for (size_t i = 0; i < xr_ag.leases.n; i++) {
        const xr_lease_t *l = &xr_ag.leases.l[i];
        char o[80], lo[80];
        xr_sb_add(b, "  %-24s %-24s %-5s %-16s %-10s in %lld s\n",
                  xr_paddr_str(&l->official, o, sizeof(o)), xr_paddr_str(&l->local, lo, sizeof(lo)),
                  l->proto == XR_PROTO_TCP ? "tcp" : "udp", l->app,
                  l->owner ? "connected" : "reserved", (long long) ((l->expires - now) / 1000));
    }
    xr_sb_add(b, "relay points: 0 (connection setup is not served yet)\npeers: 0\n");
}

/* One short request line ("status" or "status json"), one answer, close.
 * The socket is 0600, so only root (or the agent's user) asks. */
static void xr_agent_admin(xr_io_t *io, uint32_t events)
{
    for (int k = 0; k < 16; k++) {
        int fd = accept4(io->fd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0)
            return;
        struct timeval tv = {1, 0};
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
        char req[64];
        ssize_t n = recv(fd, req, sizeof(req) - 1, 0);
        req[n > 0 ? n : 0] = '\0';
        req[strcspn(req, "\r\n")] = '\0';
        xr_sb_t b = {0};
        if (strcmp(req, "status") == 0 || strcmp(req, "status json") == 0)
            xr_agent_status(&b, strcmp(req, "status json") == 0);
        else
            xr_sb_add(&b, "error: unknown request \"%.40s\" (try \"status\")\n", req);
        for (size_t off = 0; !b.failed && off < b.len;) {
            ssize_t w = send(fd, b.p + off, b.len - off, MSG_NOSIGNAL);
            if (w <= 0)
                break;
            off += (size_t) w;
        }
        free(b.p);
        close(fd);
    }
}

static int xr_agent_admin_open(const char *path)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof(sa.sun_path)) {
        errno = ENAMETOOLONG;
        return -1;
    }
    strcpy(sa.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    /* A reload's new agent takes the path over from the old one. */
    unlink(path);
    mode_t old = umask(0177);
    int rc = bind(fd, (struct sockaddr *) &sa, sizeof(sa));
    umask(old);
    if (rc != 0 || listen(fd, 16) != 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    return fd;
}

int xr_agent_start(uv_loop_t *loop, xr_gen_t *g, int listen_fd)
{
    memset(&xr_ag, 0, sizeof(xr_ag));
    xr_ag.loop = loop;
    xr_ag.gen = g;
    xr_ag.conf = g->agent;
    xr_list_init(&xr_ag.sessions);
    xr_leases_init(&xr_ag.leases, g->agent->pool, g->agent->npool);
    if (g->agent->state_file != NULL) {
        char why[256];
        int n = xr_leases_load(&xr_ag.leases, g->agent->state_file, xr_wall_ms(), why, sizeof(why));
        if (n < 0)
            xr_log(XR_LOG_ERR, "agent: %s; starting with no leases", why);
        else if (n > 0)
            xr_log(XR_LOG_NOTICE, "agent: %d lease(s) from %s held for their holders", n,
                   g->agent->state_file);
    }
    if (xr_io_add(&xr_ag.lio, listen_fd, xr_agent_accept) != XR_OK) {
        xr_log(XR_LOG_ERR, "agent: cannot watch %s: %s", g->agent->listen.text, strerror(errno));
        return XR_ERROR;
    }
    xr_ag.running = 1;
    xr_ag.started = xr_wall_ms();
    xr_ag.admin.fd = -1;
    if (g->agent->admin_socket != NULL) {
        int afd = xr_agent_admin_open(g->agent->admin_socket);
        struct stat st;
        if (afd >= 0 && stat(g->agent->admin_socket, &st) == 0)
            xr_ag.admin_ino = st.st_ino;
        if (afd < 0 || xr_io_add(&xr_ag.admin, afd, xr_agent_admin) != XR_OK) {
            /* Status is a convenience: the agent serves without it. */
            xr_log(XR_LOG_ERR, "agent: cannot open admin_socket %s: %s", g->agent->admin_socket,
                   strerror(errno));
            if (afd >= 0)
                close(afd);
            xr_ag.admin.fd = -1;
        }
    }
    uv_timer_init(loop, &xr_ag.tick);
    uv_timer_start(&xr_ag.tick, xr_agent_tick, 1000, 1000);
    uv_unref((uv_handle_t *) &xr_ag.tick);
    xr_log(XR_LOG_NOTICE, "agent: serving on %s (%zu application(s), %zu pool range(s))",
           g->agent->listen.text, g->policy ? g->policy->napps : 0, g->agent->npool);
    /* The listener was readable before we watched it: take what waits. */
    xr_agent_accept(&xr_ag.lio, EPOLLIN);
    return XR_OK;
}

void xr_agent_stop(void)
{
    if (!xr_ag.running)
        return;
    xr_ag.running = 0;
    xr_io_del(&xr_ag.lio);
    if (xr_ag.admin.fd >= 0) {
        /* Remove the path only if it is still ours (a reload's new agent
         * may have bound it already). */
        struct stat there;
        if (stat(xr_ag.conf->admin_socket, &there) == 0 && there.st_ino == xr_ag.admin_ino)
            unlink(xr_ag.conf->admin_socket);
        close(xr_ag.admin.fd);
        xr_ag.admin.fd = -1;
    }
    while (!xr_list_empty(&xr_ag.sessions)) {
        xr_ctl_t *c = xr_container_of(xr_ag.sessions.next, xr_ctl_t, link);
        xr_ctl_close(c, "agent stopping");
    }
    xr_ag.dirty = 1;
    xr_agent_save();
    uv_timer_stop(&xr_ag.tick);
    uv_close((uv_handle_t *) &xr_ag.tick, NULL);
    xr_leases_free(&xr_ag.leases);
}

size_t xr_agent_sessions(void)
{
    return xr_ag.nsessions;
}
