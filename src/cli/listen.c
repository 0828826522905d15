/*
 * listen.c: `xray listen PORT` - a server socket that binds through its
 * agent (XRAY §5.1) and serves connections like netcat: one at a time on
 * stdin/stdout, or a command per connection with --exec.
 *
 * The socket's binding state follows §5.1.  Fully bound: registered,
 * holding an official address, refreshed every heartbeat.  When the agent
 * is lost it becomes half bound: it keeps its official address and serves
 * what needs no agent, and retries REGISTER naming that address until the
 * agent takes it back (an agent that restarted gives it back from its
 * state file).  Locally bound: the agent was unreachable at start and the
 * local address is private, so there is no official address, and there
 * is none until the agent answers; then it is fully bound with the
 * address the agent gives (XRAY §5.1 keeps a locally bound socket local;
 * the socket here is the tool's, and a server that gains reach is what
 * its user wants).
 * Lines on stderr report every transition; "official ADDR" is the line a
 * script waits for.
 */
#include "core/xrayd.h"
#include "agent/policy.h"
#include "cli/carrier.h"
#include "cli/helper.h"
#include "cli/listen.h"
#include "lib/helper_msg.h"
#include "lib/client.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

typedef enum { XR_LOCALLY_BOUND, XR_HALF_BOUND, XR_FULLY_BOUND } xr_bound_t;

static volatile sig_atomic_t xr_listen_stop;

static void xr_listen_signal(int sig)
{
    xr_listen_stop = sig;
}

static int64_t xr_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void xr_listen_usage(FILE *out)
{
    fprintf(out,
            "usage: xray listen PORT [--bind ADDR] [--agent HOST:PORT] [--agent-name NAME]\n"
            "                   [--cert FILE --key FILE --ca FILE] [--exec CMD | --to HOST:PORT]\n"
            "                   [--private CIDR[,CIDR...]] [--udp [--idle MS]]\n"
            "\n"
            "Listen on PORT, register the socket with the XRAY agent and report its official\n"
            "address; serve connections on stdin/stdout, or run CMD (sh -c) per connection\n"
            "with the connection as its stdin and stdout, or hand each to the running\n"
            "server at HOST:PORT (--to: connections are served at once, side by side).\n"
            "\n"
            "  --agent     the agent; --agent-name the name its certificate carries\n"
            "              (default: its host).  What no flag gives comes from\n"
            "              $XRAY_AGENT, $XRAY_AGENT_NAME, $XRAY_CERT, $XRAY_KEY, $XRAY_CA,\n"
            "              then the client file ($XRAY_CONFIG, else\n"
            "              ~/.config/xray/client.yaml, else /etc/xray/client.yaml), then\n"
            "              the agent from /etc/xray/agent\n"
            "  --private   networks whose addresses are private, for the binding state when\n"
            "              the agent cannot be reached (default: 10/8, 172.16/12,\n"
            "              192.168/16, 100.64/10, fc00::/7)\n"
            "  --udp       a UDP server: each peer (relayed, or a direct source address)\n"
            "              is an association, ended after --idle ms (60000) without a\n"
            "              datagram; with --exec, CMD runs per association and each of\n"
            "              its writes is one datagram back; without, datagrams go to\n"
            "              stdout and each read from stdin answers the last peer\n");
}

typedef struct {
    xr_net_rule_t rules[16];
    size_t n;
    char text[1024]; /* the rules point into it */
} xr_private_t;

static int xr_private_parse(xr_private_t *p, const char *list, char *err, size_t errlen)
{
    snprintf(p->text, sizeof(p->text), "%s", list);
    p->n = 0;
    char *save = NULL;
    for (char *tok = strtok_r(p->text, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        if (p->n == XR_ARRAY_SIZE(p->rules)) {
            snprintf(err, errlen, "at most %zu networks", XR_ARRAY_SIZE(p->rules));
            return -1;
        }
        if (xr_net_rule_parse(tok, &p->rules[p->n], err, errlen) != XR_OK)
            return -1;
        p->n++;
    }
    return 0;
}

typedef struct {
    xr_client_t *client;
    xr_bound_t state;
    int listen_fd;
    xr_paddr_t local, official;
    uint64_t handle;
    uint32_t lease_ms;
    int64_t next; /* next heartbeat or retry */
    int64_t retry_ms;
    int bound_to_any;
    uint16_t port;
    uint8_t proto;
} xr_listen_t;

/* The local address to register: the bound one, or, for a wildcard bind,
 * the address of the interface that reaches the agent. */
static void xr_listen_local(xr_listen_t *l)
{
    struct sockaddr_storage ss;
    if (l->bound_to_any && xr_client_local(l->client, &ss) == 0) {
        xr_paddr_from_sockaddr(&l->local, &ss);
        l->local.port = l->port;
    }
}

/* REGISTER (naming prior when we have an official address).  1 when bound,
 * 0 when the agent could not be reached, -1 when it refused. */
static int xr_listen_register(xr_listen_t *l, char *err, size_t errlen)
{
    int perr = 0;
    if (!xr_client_is_open(l->client) && xr_client_open(l->client, &perr, err, errlen) < 0)
        return perr ? -1 : 0;
    xr_listen_local(l);
    xr_msg_t req = {.type = XR_MSG_REGISTER}, r;
    req.u.reg.proto = l->proto;
    req.u.reg.local = l->local;
    if (l->state == XR_HALF_BOUND)
        req.u.reg.prior = l->official;
    if (xr_client_call(l->client, &req, &r, &perr, err, errlen) < 0)
        return perr ? -1 : 0;
    if (r.type != XR_MSG_REGISTERED) {
        snprintf(err, errlen, "the agent answered REGISTER with %s", xr_proto_type_name(r.type));
        return -1;
    }
    char a[80], b[80];
    if (l->state == XR_HALF_BOUND &&
        memcmp(&r.u.registered.official, &l->official, sizeof(l->official)) != 0)
        fprintf(stderr,
                "xray listen: warning: the agent moved the official address from %s to %s\n",
                xr_paddr_str(&l->official, a, sizeof(a)),
                xr_paddr_str(&r.u.registered.official, b, sizeof(b)));
    l->official = r.u.registered.official;
    l->handle = r.u.registered.handle;
    l->lease_ms = r.u.registered.lease_ms;
    return 1;
}

static void xr_listen_report(const xr_listen_t *l, const char *how)
{
    char a[80], b[80];
    xr_paddr_str(&l->local, b, sizeof(b));
    if (l->state == XR_LOCALLY_BOUND)
        fprintf(stderr, "xray listen: locally bound to %s: %s\n", b, how);
    else
        fprintf(stderr, "xray listen: %s bound%s: official %s (local %s)\n",
                l->state == XR_FULLY_BOUND ? "fully" : "half", how,
                xr_paddr_str(&l->official, a, sizeof(a)), b);
    fflush(stderr);
}

/* Heartbeats and retries; returns -1 to exit (a refusal). */
static int xr_listen_tick(xr_listen_t *l)
{
    char err[300];
    int64_t now = xr_now_ms();
    if (now < l->next)
        return 0;
    if (l->state == XR_FULLY_BOUND) {
        int perr = 0;
        xr_msg_t req = {.type = XR_MSG_REFRESH}, r;
        req.u.refresh.handle = l->handle;
        if (xr_client_call(l->client, &req, &r, &perr, err, sizeof(err)) == 0) {
            l->next = now + xr_client_heartbeat_ms(l->client);
            return 0;
        }
        /* Lost the agent, or it forgot us: keep the address, win it back. */
        fprintf(stderr, "xray listen: heartbeat failed: %s\n", err);
        l->state = XR_HALF_BOUND;
        l->retry_ms = 250;
        xr_listen_report(l, " (agent lost, retrying)");
        if (perr == XR_PERR_NO_SUCH_ADDRESS)
            l->next = now; /* re-register at once on this connection */
        else
            l->next = now + l->retry_ms;
        return 0;
    }
    int was = l->state;
    int rc = xr_listen_register(l, err, sizeof(err));
    if (rc > 0) {
        l->state = XR_FULLY_BOUND;
        l->next = now + xr_client_heartbeat_ms(l->client);
        xr_listen_report(l, was == XR_LOCALLY_BOUND ? " (the agent is there now)" : " again");
        return 0;
    }
    if (rc < 0) {
        fprintf(stderr, "xray listen: the agent refused: %s\n", err);
        return -1;
    }
    l->retry_ms = l->retry_ms < 5000 ? l->retry_ms * 2 : 5000;
    l->next = now + l->retry_ms;
    return 0;
}

/* Copy between the connection and stdin/stdout until it ends, keeping the
 * binding alive meanwhile. */
static int xr_listen_serve(xr_listen_t *l, int fd)
{
    char buf[16384];
    int in_open = 1;
    for (;;) {
        if (xr_listen_stop)
            return 0;
        struct pollfd p[2] = {{fd, POLLIN, 0}, {in_open ? 0 : -1, POLLIN, 0}};
        int64_t wait = l->state == XR_LOCALLY_BOUND ? 1000 : l->next - xr_now_ms();
        int n = poll(p, 2, (int) (wait < 0 ? 0 : wait > 1000 ? 1000 : wait));
        if (n < 0 && errno != EINTR)
            return -1;
        if (xr_listen_tick(l) < 0)
            return -1;
        if (n <= 0)
            continue;
        if (p[0].revents & (POLLIN | POLLHUP | POLLERR)) {
            ssize_t r = read(fd, buf, sizeof(buf));
            if (r <= 0)
                return 0;
            if (write(1, buf, (size_t) r) != r)
                return -1;
        }
        if (in_open && (p[1].revents & (POLLIN | POLLHUP | POLLERR))) {
            ssize_t r = read(0, buf, sizeof(buf));
            if (r <= 0) {
                in_open = 0;
                shutdown(fd, SHUT_WR);
            } else {
                for (ssize_t off = 0; off < r;) {
                    ssize_t w = write(fd, buf + off, (size_t) (r - off));
                    if (w <= 0)
                        return 0;
                    off += w;
                }
            }
        }
    }
}

static void xr_listen_exec(int fd, const char *cmd);

static void xr_listen_tick_cb(void *arg)
{
    xr_listen_tick(arg);
}

/* Did an answer-awaiting call queue an INCOMING? */
static int xr_listen_queued(xr_listen_t *l)
{
    return xr_client_is_open(l->client) && xr_client_pending_incoming(l->client);
}

static int xr_listen_link(xr_listen_t *l, xr_link_t *link, const char *subject, const char *cmd);

/* The control connection failed: half bound, win the address back. */
static void xr_listen_lost(xr_listen_t *l, const char *why)
{
    fprintf(stderr, "xray listen: control connection lost: %s\n", why);
    l->state = XR_HALF_BOUND;
    l->retry_ms = 250;
    l->next = xr_now_ms();
    xr_listen_report(l, " (agent lost, retrying)");
}

/* A relayed connection is announced (XRAY §5.2, the server's side): link
 * to the agent's relay point (mode 2), or expect the agent's link on the
 * server socket (mode 1). */
static int xr_listen_incoming(xr_listen_t *l, const char *cmd)
{
    char err[300];
    xr_msg_t m;
    int rc = xr_client_next(l->client, &m, 0, err, sizeof(err));
    if (rc < 0) {
        xr_listen_lost(l, err);
        return 0;
    }
    if (rc == 0 || m.type != XR_MSG_INCOMING)
        return 0;
    xr_link_t *link = NULL;
    if (xr_client_take(l->client, &m, &link, err, sizeof(err)) < 0) {
        fprintf(stderr, "xray listen: relayed connection from %s failed: %s\n",
                m.u.incoming.client_subject.s, err);
        return 0;
    }
    if (link == NULL)
        return 0; /* mode 1: the agent's link comes to the server socket */
    return xr_listen_link(l, link, m.u.incoming.client_subject.s, cmd);
}

/* A relayed connection is linked: serve it like a direct one.  With
 * --exec a child process owns the link and feeds the command through a
 * socket pair. */
static int xr_listen_link(xr_listen_t *l, xr_link_t *link, const char *subject, const char *cmd)
{
    fprintf(stderr, "xray listen: relayed connection from %s\n", subject);
    fflush(stderr);
    if (cmd == NULL) {
        int r = xr_link_pump(link, -1, 0, 1, 0, xr_listen_tick_cb, l);
        xr_link_close(link);
        return r;
    }
    int sp[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp) != 0) {
        xr_link_close(link);
        return 0;
    }
    pid_t pid = fork();
    if (pid == 0) {
        /* the proxy: the command on one end of the pair, the link here */
        close(l->listen_fd);
        close(xr_client_fd(l->client));
        xr_listen_exec(sp[1], cmd);
        int r = xr_link_pump(link, -1, sp[0], sp[0], 1, NULL, NULL);
        xr_link_close(link);
        _exit(r == 0 ? 0 : 1);
    }
    close(sp[0]);
    close(sp[1]);
    xr_link_drop(link); /* the child speaks for it now */
    return 0;
}

static void xr_listen_exec(int fd, const char *cmd)
{
    pid_t pid = fork();
    if (pid == 0) {
        dup2(fd, 0);
        dup2(fd, 1);
        close(fd);
        signal(SIGPIPE, SIG_DFL);
        execl("/bin/sh", "sh", "-c", cmd, (char *) NULL);
        _exit(127);
    }
    if (pid < 0)
        fprintf(stderr, "xray listen: fork() failed: %s\n", strerror(errno));
    close(fd);
}

/* ---- --exec: relayed connections side by side ---------------------------

 * With --exec, links are taken on threads of their own: a burst of relayed
 * connections is as many TLS handshakes at once, and one at a time they
 * outlasted the agent's patience.  The lock guards the control connection,
 * which the main loop shares with these threads (it holds it for every
 * call it makes on the client). */
static pthread_mutex_t xr_listen_lock = PTHREAD_MUTEX_INITIALIZER;
static atomic_int xr_listen_jobs; /* threads at work */

typedef struct {
    xr_listen_t *l;
    int fd;      /* accepted from the agent's address (mode 1, or direct), or -1 */
    xr_msg_t in; /* mode 2: the INCOMING to connect out for */
    const char *cmd;
} xr_listen_job_t;

static void *xr_listen_job_run(void *arg);

static void *xr_listen_job(void *arg)
{
    xr_listen_job_run(arg);
    atomic_fetch_sub(&xr_listen_jobs, 1);
    return NULL;
}

static void *xr_listen_job_run(void *arg)
{
    xr_listen_job_t *j = arg;
    xr_listen_t *l = j->l;
    xr_link_t *tls = NULL, *link = NULL;
    xr_msg_t in = j->in;
    char err[300] = "";
    if (j->fd >= 0) {
        /* From the agent's host: its link opens with a TLS handshake
         * record at once; anything else is a direct client there. */
        if (!xr_link_opens_with_hello(j->fd, 1000)) {
            xr_listen_exec(j->fd, j->cmd);
            free(j);
            return NULL;
        }
        uint8_t token[XR_PROTO_TOKEN];
        if (xr_link_accept_begin(l->client, j->fd, &tls, token, err, sizeof(err)) == 0) {
            int rc = xr_client_link_claim_shared(l->client, &xr_listen_lock, tls, token, &in, err,
                                                 sizeof(err));
            if (rc == 0 && xr_link_accept_finish(tls, err, sizeof(err)) == 0)
                link = tls;
        }
    } else {
        tls = xr_link_tls(l->client, &in.u.incoming.addr, 1, err, sizeof(err));
        if (tls != NULL)
            link = xr_link_join(tls, in.u.incoming.token, NULL, err, sizeof(err));
    }
    if (link == NULL) {
        fprintf(stderr, "xray listen: relayed connection failed: %s\n", err);
        free(j);
        return NULL;
    }
    fprintf(stderr, "xray listen: relayed connection from %s\n", in.u.incoming.client_subject.s);
    fflush(stderr);
    int sp[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp) == 0) {
        xr_listen_exec(sp[1], j->cmd); /* the command on one end, the link here */
        xr_link_pump(link, -1, sp[0], sp[0], 1, NULL, NULL);
        close(sp[0]);
    }
    xr_link_close(link);
    free(j);
    return NULL;
}

static void xr_listen_spawn(xr_listen_t *l, int fd, const xr_msg_t *in, const char *cmd)
{
    xr_listen_job_t *j = xr_calloc(1, sizeof(*j));
    pthread_attr_t attr;
    pthread_t th;
    j->l = l;
    j->fd = fd;
    j->cmd = cmd;
    if (in != NULL)
        j->in = *in;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    atomic_fetch_add(&xr_listen_jobs, 1);
    if (pthread_create(&th, &attr, xr_listen_job, j) != 0) {
        atomic_fetch_sub(&xr_listen_jobs, 1);
        fprintf(stderr, "xray listen: no thread for a connection: %s\n", strerror(errno));
        if (fd >= 0)
            close(fd);
        free(j);
    }
    pthread_attr_destroy(&attr);
}

/* The INCOMING frames that came, with --exec: answered under the lock,
 * their links made on threads. */
static void xr_listen_incoming_threaded(xr_listen_t *l, const char *cmd)
{
    char err[300];
    for (;;) {
        xr_msg_t m;
        int rc = xr_client_next(l->client, &m, 0, err, sizeof(err));
        if (rc < 0) {
            xr_listen_lost(l, err);
            return;
        }
        if (rc == 0)
            return;
        if (m.type != XR_MSG_INCOMING)
            continue;
        if (xr_client_take_begin(l->client, &m, NULL, err, sizeof(err)) < 0) {
            fprintf(stderr, "xray listen: relayed connection from %s failed: %s\n",
                    m.u.incoming.client_subject.s, err);
            continue;
        }
        if (m.u.incoming.mode != XR_INCOMING_INBOUND)
            xr_listen_spawn(l, -1, &m, cmd);
    }
}

/* ---- UDP: xray listen --udp --------------------------------------------- */

/* An association: the datagrams of one peer, relayed (a link from an
 * INCOMING) or direct (a source address on the socket), with the
 * command --exec runs for it.  A SOCK_SEQPACKET pair keeps each datagram
 * one read and one write for the command. */
typedef struct {
    int used;
    xr_link_t *link;
    struct sockaddr_storage peer;
    socklen_t peerlen;
    int child;    /* our end of the command's pair, or -1 */
    int link_eof; /* the client ended: the command's last answers still go */
    int64_t last;
    char who[160];
} xr_assoc_t;

#define XR_ASSOC_MAX 128

static xr_assoc_t xr_assocs[XR_ASSOC_MAX];

static void xr_assoc_close(xr_assoc_t *a, const char *why)
{
    fprintf(stderr, "xray listen: %s association with %s ended (%s)\n",
            a->link ? "relayed" : "direct", a->who, why);
    if (a->link)
        xr_link_close(a->link);
    if (a->child >= 0)
        close(a->child); /* the command reads its end of input */
    memset(a, 0, sizeof(*a));
    a->child = -1;
}

static xr_assoc_t *xr_assoc_new(const char *cmd, const char *who, xr_link_t *link)
{
    xr_assoc_t *a = NULL, *idlest = &xr_assocs[0];
    for (int i = 0; i < XR_ASSOC_MAX && a == NULL; i++) {
        if (!xr_assocs[i].used)
            a = &xr_assocs[i];
        else if (xr_assocs[i].last < idlest->last)
            idlest = &xr_assocs[i];
    }
    if (a == NULL) {
        xr_assoc_close(idlest, "the longest idle, to make room");
        a = idlest;
    }
    memset(a, 0, sizeof(*a));
    a->used = 1;
    a->child = -1;
    a->link = link;
    a->last = xr_now_ms();
    snprintf(a->who, sizeof(a->who), "%s", who);
    if (cmd != NULL) {
        int sp[2];
        if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sp) != 0) {
            fprintf(stderr, "xray listen: socketpair() failed: %s\n", strerror(errno));
            return a;
        }
        xr_listen_exec(sp[1], cmd);
        a->child = sp[0];
    }
    fprintf(stderr, "xray listen: %s association with %s\n", a->link ? "relayed" : "direct", who);
    fflush(stderr);
    return a;
}

/* A datagram from the peer: to the command, or to stdout. */
static void xr_assoc_deliver(xr_assoc_t *a, const void *p, size_t n)
{
    a->last = xr_now_ms();
    if (a->child >= 0) {
        if (send(a->child, p, n, MSG_NOSIGNAL | MSG_DONTWAIT) < 0 && errno != EAGAIN)
            xr_assoc_close(a, "the command is gone");
    } else if (write(1, p, n) != (ssize_t) n) {
        xr_listen_stop = SIGPIPE;
    }
}

/* A datagram to the peer. */
static void xr_assoc_reply(xr_assoc_t *a, int udp_fd, const void *p, size_t n)
{
    a->last = xr_now_ms();
    if (a->link != NULL) {
        if (xr_link_send_dgram(a->link, p, n) < 0)
            xr_assoc_close(a, "the link failed");
    } else {
        sendto(udp_fd, p, n, 0, (struct sockaddr *) &a->peer, a->peerlen);
    }
}

static int xr_listen_udp(xr_listen_t *l, const char *cmd, int64_t idle_ms)
{
    static unsigned char buf[XR_UDP_MAX];
    struct pollfd p[3 + 2 * XR_ASSOC_MAX];
    int owner[3 + 2 * XR_ASSOC_MAX];
    xr_assoc_t *last = NULL; /* stdin answers the last peer heard from */
    int in_open = cmd == NULL;
    char err[300];
    for (int i = 0; i < XR_ASSOC_MAX; i++)
        xr_assocs[i].child = -1;
    while (!xr_listen_stop) {
        int np = 0;
        p[np++] = (struct pollfd){l->listen_fd, POLLIN, 0};
        p[np++] =
            (struct pollfd){l->state == XR_FULLY_BOUND ? xr_client_fd(l->client) : -1, POLLIN, 0};
        p[np++] = (struct pollfd){in_open ? 0 : -1, POLLIN, 0};
        int ready = 0;
        for (int i = 0; i < XR_ASSOC_MAX; i++) {
            xr_assoc_t *a = &xr_assocs[i];
            if (!a->used)
                continue;
            if (a->link != NULL && !a->link_eof) {
                ready |= xr_link_pending(a->link) > 0;
                owner[np] = i;
                p[np++] = (struct pollfd){xr_link_fd(a->link), POLLIN, 0};
            }
            if (a->child >= 0) {
                owner[np] = i;
                p[np++] = (struct pollfd){a->child, POLLIN, 0};
            }
        }
        int64_t wait = l->state == XR_LOCALLY_BOUND ? 1000 : l->next - xr_now_ms();
        int n = poll(p, (nfds_t) np, ready ? 0 : (int) (wait < 0 ? 0 : wait > 1000 ? 1000 : wait));
        if (n < 0 && errno != EINTR)
            return -1;
        if (xr_listen_tick(l) < 0)
            return -1;
        int64_t now = xr_now_ms();
        for (int i = 0; i < XR_ASSOC_MAX; i++)
            if (xr_assocs[i].used && now - xr_assocs[i].last > idle_ms)
                xr_assoc_close(&xr_assocs[i], "idle");
        if (p[0].revents & POLLIN) {
            struct sockaddr_storage from;
            socklen_t flen = sizeof(from);
            ssize_t r =
                recvfrom(l->listen_fd, buf, sizeof(buf), 0, (struct sockaddr *) &from, &flen);
            if (r >= 0) {
                xr_assoc_t *a = NULL;
                for (int i = 0; i < XR_ASSOC_MAX && a == NULL; i++)
                    if (xr_assocs[i].used && xr_assocs[i].link == NULL &&
                        xr_assocs[i].peerlen == flen &&
                        memcmp(&xr_assocs[i].peer, &from, flen) == 0)
                        a = &xr_assocs[i];
                if (a == NULL) {
                    char who[80];
                    xr_addr_format(&from, who, sizeof(who));
                    a = xr_assoc_new(cmd, who, NULL);
                    a->peer = from;
                    a->peerlen = flen;
                }
                xr_assoc_deliver(a, buf, (size_t) r);
                last = a;
            }
        }
        if (l->state == XR_FULLY_BOUND &&
            ((p[1].revents & (POLLIN | POLLHUP)) || xr_listen_queued(l))) {
            xr_msg_t m;
            int rc = xr_client_next(l->client, &m, 0, err, sizeof(err));
            if (rc < 0) {
                xr_listen_lost(l, err);
            } else if (rc > 0 && m.type == XR_MSG_INCOMING) {
                xr_link_t *link = NULL;
                if (xr_client_take(l->client, &m, &link, err, sizeof(err)) < 0)
                    fprintf(stderr, "xray listen: relayed association from %s failed: %s\n",
                            m.u.incoming.client_subject.s, err);
                else if (link != NULL)
                    xr_assoc_new(cmd, m.u.incoming.client_subject.s, link);
            }
        }
        if (in_open && (p[2].revents & (POLLIN | POLLHUP | POLLERR))) {
            ssize_t r = read(0, buf, sizeof(buf));
            if (r <= 0)
                in_open = 0;
            else if (last != NULL && last->used)
                xr_assoc_reply(last, l->listen_fd, buf, (size_t) r);
        }
        for (int k = 3; k < np; k++) {
            xr_assoc_t *a = &xr_assocs[owner[k]];
            int is_link =
                a->used && a->link != NULL && !a->link_eof && p[k].fd == xr_link_fd(a->link);
            if (!a->used || !((p[k].revents & (POLLIN | POLLHUP | POLLERR)) ||
                              (is_link && xr_link_pending(a->link) > 0)))
                continue;
            if (is_link) {
                size_t len;
                int r = xr_link_recv_dgram(a->link, buf, sizeof(buf), &len);
                if (r == 0 && a->child >= 0) {
                    shutdown(a->child, SHUT_WR); /* the command's end of input */
                    a->link_eof = 1;
                    continue;
                }
                if (r <= 0) {
                    xr_assoc_close(a, r == 0 ? "the client ended it" : "the link failed");
                    continue;
                }
                xr_assoc_deliver(a, buf, len);
                last = a;
            } else {
                ssize_t r = recv(a->child, buf, sizeof(buf), 0);
                if (r <= 0) {
                    xr_assoc_close(a, "the command ended");
                    continue;
                }
                xr_assoc_reply(a, l->listen_fd, buf, (size_t) r);
            }
        }
    }
    for (int i = 0; i < XR_ASSOC_MAX; i++)
        if (xr_assocs[i].used)
            xr_assoc_close(&xr_assocs[i], "stopping");
    return 0;
}

/* ---- --to: hand each connection to a running server ---------------- */

typedef struct {
    int sock;
    struct sockaddr_storage to, at;
} xr_listen_to_t;

static void *xr_listen_to_serve(void *arg)
{
    xr_listen_to_t *t = arg;
    xr_helper_serve(t->sock, &t->to, &t->at, 0);
    close(t->sock);
    return NULL;
}

/* The helper's server (helper.c) in this process: its links and direct
 * clients are taken side by side, each on a thread, and handed to to_s;
 * this thread reports the binding state. */
static int xr_listen_to(const xr_client_conf_t *cf, const struct sockaddr_storage *at,
                        const char *to_s)
{
    static xr_listen_to_t t;
    xr_paddr_t to;
    char err[400], o[80];
    if (xr_paddr_parse(to_s, &to) < 0 || to.port == 0) {
        fprintf(stderr, "xray listen: --to %s: expected IP:PORT\n", to_s);
        return 2;
    }
    memset(&t.to, 0, sizeof(t.to));
    xr_paddr_to_sockaddr(&to, &t.to);
    t.at = *at;
    int sp[2];
    if (xr_carrier_init(cf, err, sizeof(err)) < 0 ||
        socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sp) != 0) {
        fprintf(stderr, "xray listen: %s\n", err);
        return 1;
    }
    t.sock = sp[1];
    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa = {.sa_handler = xr_listen_signal};
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    pthread_t th;
    if (pthread_create(&th, NULL, xr_listen_to_serve, &t) != 0) {
        fprintf(stderr, "xray listen: no thread: %s\n", strerror(errno));
        return 1;
    }
    int status = 0;
    while (!xr_listen_stop) {
        struct pollfd p = {sp[0], POLLIN, 0};
        if (poll(&p, 1, 500) <= 0)
            continue;
        xr_hmsg_t m;
        if (xr_hmsg_recv(sp[0], &m, NULL) <= 0) {
            status = 1;
            break;
        }
        xr_paddr_t off;
        xr_paddr_from_sockaddr(&off, &m.addr);
        if (m.type == XR_HMSG_ERROR) {
            fprintf(stderr, "xray listen: %s\n", m.text);
            status = 1;
            break;
        }
        if (m.code == XR_BOUND_FULL)
            fprintf(stderr, "xray listen: fully bound: official %s (to %s)\n",
                    xr_paddr_str(&off, o, sizeof(o)), to_s);
        else if (m.code == XR_BOUND_HALF)
            fprintf(stderr, "xray listen: half bound: official %s (the agent is lost; retrying)\n",
                    xr_paddr_str(&off, o, sizeof(o)));
        else
            fprintf(stderr, "xray listen: locally bound: the agent cannot be reached (retrying)\n");
        fflush(stderr);
    }
    close(sp[0]); /* the server unregisters and leaves */
    pthread_join(th, NULL);
    xr_carrier_save();
    return status;
}

int xr_listen_main(int argc, char **argv)
{
    xr_client_conf_t cf = {.timeout_ms = 5000};
    const char *bind_addr = "0.0.0.0", *exec_cmd = NULL, *port_s = NULL, *idle_s = "60000";
    const char *to_s = NULL;
    int udp = 0;
    const char *private_list = "10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,100.64.0.0/10,"
                               "[fc00::]/7";
    char err[300];
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char **slot = xr_client_conf_flag(&cf, a);
        if (slot == NULL)
            slot = strcmp(a, "--bind") == 0      ? &bind_addr
                   : strcmp(a, "--exec") == 0    ? &exec_cmd
                   : strcmp(a, "--to") == 0      ? &to_s
                   : strcmp(a, "--private") == 0 ? &private_list
                   : strcmp(a, "--idle") == 0    ? &idle_s
                                                 : NULL;
        if (slot != NULL && i + 1 < argc) {
            *slot = argv[++i];
        } else if (strcmp(a, "--udp") == 0 || strcmp(a, "-u") == 0) {
            udp = 1;
        } else if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            xr_listen_usage(stdout);
            return 0;
        } else if (a[0] != '-' && port_s == NULL) {
            port_s = a;
        } else {
            fprintf(stderr, "xray listen: unexpected argument \"%s\"\n", a);
            xr_listen_usage(stderr);
            return 2;
        }
    }
    char *end;
    long port = port_s ? strtol(port_s, &end, 10) : 0;
    if (port_s == NULL || *end != '\0' || port < 1 || port > 65535) {
        fprintf(stderr, "xray listen: give a PORT (1-65535)\n");
        return 2;
    }
    static xr_client_conf_buf_t found;
    if (xr_client_conf_fill(&cf, &found, err, sizeof(err)) < 0) {
        fprintf(stderr, "xray listen: %s\n", err);
        return 2;
    }
    xr_private_t priv;
    if (xr_private_parse(&priv, private_list, err, sizeof(err)) < 0) {
        fprintf(stderr, "xray listen: --private: %s\n", err);
        return 2;
    }

    long idle_ms = strtol(idle_s, &end, 10);
    if (*end != '\0' || idle_ms < 100 || idle_ms > 86400000) {
        fprintf(stderr, "xray listen: --idle takes milliseconds (100-86400000)\n");
        return 2;
    }
    xr_listen_t l = {
        .retry_ms = 250, .port = (uint16_t) port, .proto = udp ? XR_PROTO_UDP : XR_PROTO_TCP};
    struct sockaddr_storage ss = {0};
    socklen_t sslen;
    if (strchr(bind_addr, ':') != NULL) {
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *) &ss;
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons((uint16_t) port);
        sslen = sizeof(*s6);
        if (inet_pton(AF_INET6, bind_addr, &s6->sin6_addr) != 1)
            sslen = 0;
        l.bound_to_any = IN6_IS_ADDR_UNSPECIFIED(&s6->sin6_addr);
    } else {
        struct sockaddr_in *s4 = (struct sockaddr_in *) &ss;
        s4->sin_family = AF_INET;
        s4->sin_port = htons((uint16_t) port);
        sslen = sizeof(*s4);
        if (inet_pton(AF_INET, bind_addr, &s4->sin_addr) != 1)
            sslen = 0;
        l.bound_to_any = s4->sin_addr.s_addr == htonl(INADDR_ANY);
    }
    if (sslen == 0) {
        fprintf(stderr, "xray listen: --bind %s is not an IP address\n", bind_addr);
        return 2;
    }
    if (to_s != NULL) {
        if (exec_cmd != NULL || udp) {
            fprintf(stderr, "xray listen: --to goes with neither --exec nor --udp\n");
            return 2;
        }
        return xr_listen_to(&cf, &ss, to_s);
    }
    int one = 1;
    l.listen_fd = socket(ss.ss_family, (udp ? SOCK_DGRAM : SOCK_STREAM) | SOCK_CLOEXEC, 0);
    if (l.listen_fd < 0 ||
        setsockopt(l.listen_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
        bind(l.listen_fd, (struct sockaddr *) &ss, sslen) != 0 ||
        (!udp && listen(l.listen_fd, 511) != 0)) {
        fprintf(stderr, "xray listen: cannot listen on %s port %ld: %s\n", bind_addr, port,
                strerror(errno));
        return 1;
    }
    xr_paddr_from_sockaddr(&l.local, &ss);

    l.client = xr_client_new(&cf, err, sizeof(err));
    if (l.client == NULL) {
        fprintf(stderr, "xray listen: %s\n", err);
        return 1;
    }
    signal(SIGPIPE, SIG_IGN);
    signal(SIGCHLD, SIG_IGN); /* --exec children reap themselves */
    struct sigaction sa = {.sa_handler = xr_listen_signal};
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    int rc = xr_listen_register(&l, err, sizeof(err));
    if (rc < 0) {
        fprintf(stderr, "xray listen: the agent refused: %s\n", err);
        xr_client_free(l.client);
        return 1;
    }
    if (rc > 0) {
        l.state = XR_FULLY_BOUND;
        l.next = xr_now_ms() + xr_client_heartbeat_ms(l.client);
        xr_listen_report(&l, "");
    } else {
        fprintf(stderr, "xray listen: %s\n", err);
        xr_listen_local(&l);
        if (xr_net_rules_cover_addr(priv.rules, priv.n, &l.local)) {
            l.state = XR_LOCALLY_BOUND;
            l.next = xr_now_ms() + l.retry_ms;
            xr_listen_report(&l, "no agent, so no official address yet; connections from "
                                 "this network only until it comes");
        } else {
            l.state = XR_HALF_BOUND;
            l.official = l.local;
            l.next = xr_now_ms() + l.retry_ms;
            xr_listen_report(&l, " (no agent yet, retrying)");
        }
    }

    int status = 0, threaded = !udp && exec_cmd != NULL;
    if (udp && xr_listen_udp(&l, exec_cmd, idle_ms) < 0)
        status = 1;
    while (!udp && !xr_listen_stop) {
        struct pollfd p[2] = {{l.listen_fd, POLLIN, 0},
                              {l.state == XR_FULLY_BOUND ? xr_client_fd(l.client) : -1, POLLIN, 0}};
        int64_t wait = l.state == XR_LOCALLY_BOUND ? 1000 : l.next - xr_now_ms();
        int n = poll(p, 2, (int) (wait < 0 ? 0 : wait > 1000 ? 1000 : wait));
        pthread_mutex_lock(&xr_listen_lock);
        int ticked = xr_listen_tick(&l);
        if (ticked == 0 && threaded && l.state == XR_FULLY_BOUND)
            xr_listen_incoming_threaded(&l, exec_cmd);
        pthread_mutex_unlock(&xr_listen_lock);
        if (ticked < 0) {
            status = 1;
            break;
        }
        if (!threaded && l.state == XR_FULLY_BOUND &&
            (n > 0 && (p[1].revents & (POLLIN | POLLHUP)))) {
            if (xr_listen_incoming(&l, exec_cmd) < 0)
                status = 1;
            continue;
        }
        if (!threaded && l.state == XR_FULLY_BOUND && xr_listen_queued(&l)) {
            xr_listen_incoming(&l, exec_cmd);
            continue;
        }
        if (n <= 0 || !(p[0].revents & POLLIN))
            continue;
        struct sockaddr_storage peer;
        socklen_t plen = sizeof(peer);
        int fd = accept4(l.listen_fd, (struct sockaddr *) &peer, &plen, SOCK_CLOEXEC);
        if (fd < 0)
            continue;
        if (threaded) { /* from the agent's address: a thread sorts it out */
            pthread_mutex_lock(&xr_listen_lock);
            int from = l.state == XR_FULLY_BOUND && xr_client_from_agent(l.client, &peer);
            pthread_mutex_unlock(&xr_listen_lock);
            if (from)
                xr_listen_spawn(&l, fd, NULL, exec_cmd);
            else
                xr_listen_exec(fd, exec_cmd);
            continue;
        }
        if (l.state == XR_FULLY_BOUND && xr_client_is_link(l.client, fd, &peer)) {
            /* The agent's link for a relayed connection (INCOMING mode 1). */
            xr_link_t *link = NULL;
            xr_msg_t in;
            if (xr_client_accept_link(l.client, fd, &link, &in, err, sizeof(err)) < 0) {
                fprintf(stderr, "xray listen: link from the agent failed: %s\n", err);
                continue;
            }
            if (xr_listen_link(&l, link, in.u.incoming.client_subject.s, exec_cmd) < 0)
                status = 1;
            continue;
        }
        if (exec_cmd != NULL) {
            xr_listen_exec(fd, exec_cmd);
        } else {
            if (xr_listen_serve(&l, fd) < 0)
                status = 1;
            close(fd);
        }
    }
    pthread_mutex_lock(&xr_listen_lock); /* kept: threads still at work stop with us */
    if (l.state == XR_FULLY_BOUND && xr_client_is_open(l.client)) {
        int perr;
        xr_msg_t req = {.type = XR_MSG_UNREGISTER}, r;
        req.u.refresh.handle = l.handle;
        if (xr_client_call(l.client, &req, &r, &perr, err, sizeof(err)) == 0)
            fprintf(stderr, "xray listen: unregistered\n");
    }
    /* Threads still carrying a connection use the client: give them a
     * moment, and leave it to the exit if they do not end. */
    for (int i = 0; i < 200 && atomic_load(&xr_listen_jobs) > 0; i++)
        usleep(10 * 1000);
    if (atomic_load(&xr_listen_jobs) == 0)
        xr_client_free(l.client);
    close(l.listen_fd);
    return status;
}
