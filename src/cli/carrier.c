/*
 * carrier.c: the state the connection-carrying tools share (carrier.h).
 *
 * One control connection serves every thread's CONNECT under one lock,
 * held only for the request and its answer (and the TLS of the link,
 * which resumes): the end-to-end wait of a link happens outside it, in
 * the caller.  When the agent cannot be reached, destinations are tried
 * directly for a second before the agent is tried again (XRAY §6).
 */
#include "core/xrayd.h"
#include "cli/carrier.h"

#include <errno.h>
#include <netdb.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define XR_CARRIER_CACHE    64
#define XR_CARRIER_CACHE_MS 10000
#define XR_CARRIER_RETRY_MS 1000

static struct {
    xr_client_conf_t cf;
    pthread_mutex_t lock; /* ctl and retry_at */
    xr_client_t *ctl;
    int64_t retry_at;
    pthread_mutex_t cache_lock;
    struct {
        int proto;
        xr_paddr_t dst, to;
        int64_t until;
    } cache[XR_CARRIER_CACHE];
    size_t cache_next;
} xr_carrier = {.lock = PTHREAD_MUTEX_INITIALIZER, .cache_lock = PTHREAD_MUTEX_INITIALIZER};

static int64_t xr_carrier_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int xr_carrier_init(const xr_client_conf_t *cf, char *err, size_t errlen)
{
    xr_carrier.cf = *cf;
    xr_carrier.ctl = xr_client_new(cf, err, errlen);
    if (xr_carrier.ctl == NULL)
        return -1;
    char path[4096];
    if (xr_client_sessions_path(cf, path, sizeof(path)) == 0)
        xr_client_sessions_read(xr_carrier.ctl, path);
    return 0;
}

const xr_client_conf_t *xr_carrier_conf(void)
{
    return &xr_carrier.cf;
}

void xr_carrier_save(void)
{
    char path[4096];
    pthread_mutex_lock(&xr_carrier.lock);
    if (xr_client_sessions_path(&xr_carrier.cf, path, sizeof(path)) == 0)
        xr_client_sessions_write(xr_carrier.ctl, path);
    pthread_mutex_unlock(&xr_carrier.lock);
}

xr_client_t *xr_carrier_client(char *err, size_t errlen)
{
    unsigned char sessions[8192];
    xr_client_t *c = xr_client_new(&xr_carrier.cf, err, errlen);
    if (c == NULL)
        return NULL;
    pthread_mutex_lock(&xr_carrier.lock);
    size_t n = xr_client_sessions_save(xr_carrier.ctl, sessions, sizeof(sessions));
    pthread_mutex_unlock(&xr_carrier.lock);
    xr_client_sessions_load(c, sessions, n);
    return c;
}

int xr_carrier_errno(int perr, const char *why)
{
    switch (perr) {
    case XR_PERR_NOT_AUTHORIZED: return EACCES;
    case XR_PERR_NO_SUCH_ADDRESS: return ECONNREFUSED;
    case XR_PERR_UNREACHABLE: return EHOSTUNREACH;
    case XR_PERR_OVER_LIMIT: return EAGAIN;
    case 0: return strstr(why, "timeout") || strstr(why, "within") ? ETIMEDOUT : ECONNREFUSED;
    default: return ECONNREFUSED;
    }
}

static int xr_carrier_cached(int proto, const xr_paddr_t *dst, xr_paddr_t *to)
{
    int64_t now = xr_carrier_now();
    int hit = 0;
    pthread_mutex_lock(&xr_carrier.cache_lock);
    for (size_t i = 0; i < XR_CARRIER_CACHE && !hit; i++)
        if (xr_carrier.cache[i].until > now && xr_carrier.cache[i].proto == proto &&
            memcmp(&xr_carrier.cache[i].dst, dst, sizeof(*dst)) == 0) {
            *to = xr_carrier.cache[i].to;
            hit = 1;
        }
    pthread_mutex_unlock(&xr_carrier.cache_lock);
    return hit;
}

static void xr_carrier_cache(int proto, const xr_paddr_t *dst, const xr_paddr_t *to)
{
    pthread_mutex_lock(&xr_carrier.cache_lock);
    size_t i = xr_carrier.cache_next++ % XR_CARRIER_CACHE;
    xr_carrier.cache[i].proto = proto;
    xr_carrier.cache[i].dst = *dst;
    xr_carrier.cache[i].to = *to;
    xr_carrier.cache[i].until = xr_carrier_now() + XR_CARRIER_CACHE_MS;
    pthread_mutex_unlock(&xr_carrier.cache_lock);
}

xr_carry_t xr_carrier_route(int proto, const xr_paddr_t *dst, const xr_paddr_t *src, xr_paddr_t *to,
                            xr_route_t *rt, xr_link_t **tls, int *eno, char *err, size_t errlen)
{
    int perr = 0, rc = 1;
    *tls = NULL;
    *eno = 0;
    if (xr_carrier_cached(proto, dst, to))
        return XR_CARRY_DIRECT;
    pthread_mutex_lock(&xr_carrier.lock);
    for (int attempt = 0; attempt < 2; attempt++) {
        if (!xr_client_is_open(xr_carrier.ctl)) {
            if (xr_carrier_now() < xr_carrier.retry_at)
                break;
            if (xr_client_open(xr_carrier.ctl, &perr, err, errlen) < 0) {
                xr_carrier.retry_at = xr_carrier_now() + XR_CARRIER_RETRY_MS;
                break;
            }
        }
        rc = xr_client_route(xr_carrier.ctl, proto, dst, src, rt, tls, &perr, err, errlen);
        if (rc == 0 || perr != 0)
            break;
        rc = 1; /* the control connection failed under us: once more on a new one */
    }
    pthread_mutex_unlock(&xr_carrier.lock);
    if (rc == 1 && perr == 0) {
        *to = *dst;
        return XR_CARRY_NO_AGENT;
    }
    if (rc != 0 && perr == XR_PERR_UNREACHABLE && strstr(err, "no agent is known") != NULL) {
        /* Not behind an XRAY agent at all: an ordinary destination. */
        *to = *dst;
        xr_carrier_cache(proto, dst, to);
        return XR_CARRY_DIRECT;
    }
    if (rc != 0) {
        *eno = xr_carrier_errno(perr, err);
        return XR_CARRY_REFUSED;
    }
    if (rt->mode == XR_CONNECT_DIRECT) {
        *to = rt->addr;
        xr_carrier_cache(proto, dst, to);
        return XR_CARRY_DIRECT;
    }
    if (rt->mode == XR_ROUTE_OPEN) {
        *to = rt->addr; /* never cached: each opening is for one socket */
        return XR_CARRY_OPEN;
    }
    return XR_CARRY_RELAY;
}

int xr_carrier_dial(const xr_paddr_t *dst, xr_link_t **link, int *fd, int *eno, char *err,
                    size_t errlen)
{
    xr_paddr_t to, src;
    xr_route_t rt;
    xr_link_t *tls;
    *link = NULL;
    *fd = -1;
    /* A socket of our own first, bound: an agent whose application goes
     * through openings opens the firewalls for its port. */
    int s = socket(dst->family == 6 ? AF_INET6 : AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s >= 0 && xr_open_src(s, &src) < 0) {
        close(s);
        s = -1;
    }
    xr_carry_t how =
        xr_carrier_route(XR_PROTO_TCP, dst, s >= 0 ? &src : NULL, &to, &rt, &tls, eno, err, errlen);
    if (how == XR_CARRY_OPEN) {
        xr_heartbeat(s, rt.state_ms);
        *fd = xr_tcp_on(s, &to, xr_carrier.cf.timeout_ms, err, errlen);
        if (*fd < 0)
            *eno = errno;
        return *fd >= 0 ? 0 : -1;
    }
    if (s >= 0)
        close(s);
    switch (how) {
    case XR_CARRY_RELAY:
        *link = xr_link_join(tls, rt.token, rt.key, err, errlen);
        if (*link == NULL)
            *eno = xr_carrier_errno(0, err);
        return *link != NULL ? 0 : -1;
    case XR_CARRY_DIRECT:
    case XR_CARRY_NO_AGENT:
        *fd = xr_tcp_to(&to, xr_carrier.cf.timeout_ms, err, errlen);
        if (*fd < 0)
            *eno = errno;
        return *fd >= 0 ? 0 : -1;
    default: return -1;
    }
}

/* ---- serving a local port ------------------------------------------------ */

/* [ADDR:]PORT into a listening socket; -1 with err. */
int xr_carrier_listen(const char *spec, char *err, size_t errlen)
{
    char host[256] = "127.0.0.1";
    const char *port = spec, *colon = strrchr(spec, ':');
    if (colon != NULL) {
        size_t n = (size_t) (colon - spec);
        if (n >= sizeof(host)) {
            snprintf(err, errlen, "address too long: %s", spec);
            return -1;
        }
        memcpy(host, spec, n);
        host[n] = '\0';
        if (host[0] == '[' && n >= 2 && host[n - 1] == ']') {
            memmove(host, host + 1, n - 2);
            host[n - 2] = '\0';
        }
        port = colon + 1;
    }
    struct addrinfo hints = {.ai_family = AF_UNSPEC,
                             .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICSERV},
                    *ai = NULL;
    int rc = getaddrinfo(host[0] ? host : NULL, port, &hints, &ai);
    if (rc != 0) {
        snprintf(err, errlen, "%s: %s", spec, gai_strerror(rc));
        return -1;
    }
    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;
    if (fd >= 0)
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (fd < 0 || bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 || listen(fd, 511) != 0) {
        snprintf(err, errlen, "cannot listen on %s: %s", spec, strerror(errno));
        if (fd >= 0)
            close(fd);
        fd = -1;
    }
    freeaddrinfo(ai);
    return fd;
}

typedef struct {
    int fd;
    char peer[80];
    const char *who;
    void (*fn)(int fd, const char *peer, void *arg);
    void *arg;
    atomic_int *active;
} xr_carrier_conn_t;

static void *xr_carrier_conn(void *p)
{
    xr_carrier_conn_t *cc = p;
    cc->fn(cc->fd, cc->peer, cc->arg);
    close(cc->fd);
    atomic_fetch_sub(cc->active, 1);
    free(cc);
    return NULL;
}

int xr_carrier_accept_loop(int lfd, int max, const char *who,
                           void (*fn)(int fd, const char *peer, void *arg), void *arg)
{
    static atomic_int active;
    pthread_attr_t attr;
    signal(SIGPIPE, SIG_IGN);
    fflush(stderr);
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    for (;;) {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof(ss);
        int fd = accept4(lfd, (struct sockaddr *) &ss, &sl, SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (errno == EMFILE || errno == ENFILE) {
                fprintf(stderr, "%s: accept(): %s; waiting\n", who, strerror(errno));
                usleep(100 * 1000);
                continue;
            }
            fprintf(stderr, "%s: accept(): %s\n", who, strerror(errno));
            return 1;
        }
        xr_carrier_conn_t *cc = xr_calloc(1, sizeof(*cc));
        cc->fd = fd;
        cc->who = who;
        cc->fn = fn;
        cc->arg = arg;
        cc->active = &active;
        xr_addr_format(&ss, cc->peer, sizeof(cc->peer));
        if (atomic_fetch_add(&active, 1) >= max) {
            fprintf(stderr, "%s: %s: refused, %d connections already (--max)\n", who, cc->peer,
                    max);
            atomic_fetch_sub(&active, 1);
            close(fd);
            free(cc);
            continue;
        }
        pthread_t th;
        if (pthread_create(&th, &attr, xr_carrier_conn, cc) != 0) {
            fprintf(stderr, "%s: %s: no thread for it: %s\n", who, cc->peer, strerror(errno));
            atomic_fetch_sub(&active, 1);
            close(fd);
            free(cc);
        }
    }
}
