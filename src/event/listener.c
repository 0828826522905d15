/*
 * listener.c: the master's table of listening sockets.
 */
#include "core/xrayd.h"
#include "event/listener.h"
#include "core/frontdoor.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <sys/socket.h>
#include <unistd.h>

#define XR_MAX_LISTENERS 1024

typedef struct {
    struct sockaddr_storage sa;
    socklen_t len;
    int fd;
    int backlog;
    char text[64];
} xr_listen_sock_t;

static xr_listen_sock_t xr_ls[XR_MAX_LISTENERS];
static size_t xr_nls;

static xr_listen_sock_t *xr_ls_find(const xr_addr_t *a)
{
    for (size_t i = 0; i < xr_nls; i++)
        if (xr_ls[i].fd >= 0 && xr_ls[i].len == a->len && memcmp(&xr_ls[i].sa, &a->sa, a->len) == 0)
            return &xr_ls[i];
    return NULL;
}

int xr_listeners_fd(const xr_addr_t *a)
{
    xr_listen_sock_t *l = xr_ls_find(a);
    return l ? l->fd : -1;
}

static int xr_listen_one(const xr_addr_t *a, int backlog, int transparent, char *err,
                         size_t errsize)
{
    int fd = socket(a->sa.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(err, errsize, "socket() for %s failed (%d: %s)", a->text, errno, strerror(errno));
        return -1;
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    /* TPROXY: accept connections to addresses that are not ours (the
     * original destinations); needs CAP_NET_ADMIN. */
    if (transparent && setsockopt(fd, a->sa.ss_family == AF_INET6 ? SOL_IPV6 : SOL_IP,
                                  a->sa.ss_family == AF_INET6 ? IPV6_TRANSPARENT : IP_TRANSPARENT,
                                  &one, sizeof(one)) != 0) {
        snprintf(err, errsize,
                 "IP_TRANSPARENT on %s failed (%d: %s); intercept: tproxy needs "
                 "CAP_NET_ADMIN",
                 a->text, errno, strerror(errno));
        close(fd);
        return -1;
    }
    if (a->sa.ss_family == AF_INET6)
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
    if (bind(fd, (const struct sockaddr *) &a->sa, a->len) != 0) {
        snprintf(err, errsize, "bind() to %s failed (%d: %s)", a->text, errno, strerror(errno));
        close(fd);
        return -1;
    }
    if (listen(fd, backlog) != 0) {
        snprintf(err, errsize, "listen() on %s failed (%d: %s)", a->text, errno, strerror(errno));
        close(fd);
        return -1;
    }
    return fd;
}

/* One address a generation listens on. */
typedef struct {
    const xr_addr_t *addr;
    int backlog;
    int transparent; /* IP_TRANSPARENT (TPROXY) */
} xr_listen_want_t;

/* Every address g listens on: its blocks', then each front door's own.
 * Returns how many (at most cap). */
static size_t xr_gen_listens(const xr_gen_t *g, xr_listen_want_t *w, size_t cap)
{
    const xr_frontdoor_t *fd;
    size_t n = 0;
    for (size_t r = 0; r < g->nrelays; r++)
        for (size_t i = 0; i < g->relays[r]->listen.n && n < cap; i++)
            w[n++] = (xr_listen_want_t){&g->relays[r]->listen.items[i], (int) g->relays[r]->backlog,
                                        g->relays[r]->transparent};
    xr_frontdoor_each(fd, i)
    {
        const xr_addr_t *a = fd->listen_addr ? fd->listen_addr(g) : NULL;
        if (a != NULL && n < cap)
            w[n++] = (xr_listen_want_t){a, 511, 0};
    }
    return n;
}

int xr_listeners_open(xr_gen_t *g, char *err, size_t errsize)
{
    xr_listen_want_t w[XR_MAX_LISTENERS + 1];
    size_t count = xr_gen_listens(g, w, XR_MAX_LISTENERS + 1);
    if (count > XR_MAX_LISTENERS) {
        snprintf(err, errsize, "more than %d listen addresses", XR_MAX_LISTENERS);
        return XR_ERROR;
    }
    for (size_t i = 0; i < count; i++) {
        const xr_addr_t *a = w[i].addr;
        int transparent = w[i].transparent;
        int backlog = w[i].backlog;
        xr_listen_sock_t *l = xr_ls_find(a);
        if (l != NULL) {
            if (l->backlog != backlog) {
                listen(l->fd, backlog); /* Linux resizes the queue in place */
                l->backlog = backlog;
            }
            continue;
        }
        int fd = xr_listen_one(a, backlog, transparent, err, errsize);
        if (fd < 0)
            return XR_ERROR;
        size_t slot = xr_nls;
        for (size_t k = 0; k < xr_nls; k++)
            if (xr_ls[k].fd < 0) {
                slot = k;
                break;
            }
        if (slot == XR_MAX_LISTENERS) {
            close(fd);
            snprintf(err, errsize, "more than %d listen addresses", XR_MAX_LISTENERS);
            return XR_ERROR;
        }
        if (slot == xr_nls)
            xr_nls++;
        l = &xr_ls[slot];
        memcpy(&l->sa, &a->sa, a->len);
        l->len = a->len;
        l->fd = fd;
        l->backlog = backlog;
        snprintf(l->text, sizeof(l->text), "%s", a->text);
    }
    return XR_OK;
}

static int xr_gen_uses(const xr_gen_t *g, const xr_listen_sock_t *l)
{
    xr_listen_want_t w[XR_MAX_LISTENERS + 1];
    size_t count = xr_gen_listens(g, w, XR_MAX_LISTENERS + 1);
    for (size_t i = 0; i < count; i++)
        if (w[i].addr->len == l->len && memcmp(&w[i].addr->sa, &l->sa, w[i].addr->len) == 0)
            return 1;
    return 0;
}

void xr_listeners_close_unused(xr_gen_t *const *gens, size_t n)
{
    for (size_t k = 0; k < xr_nls; k++) {
        if (xr_ls[k].fd < 0)
            continue;
        int used = 0;
        for (size_t g = 0; g < n && !used; g++)
            used = gens[g] != NULL && xr_gen_uses(gens[g], &xr_ls[k]);
        if (!used) {
            close(xr_ls[k].fd);
            xr_ls[k].fd = -1;
        }
    }
}

size_t xr_listeners_each(void (*fn)(const struct sockaddr_storage *sa, socklen_t len, int fd,
                                    int backlog, void *arg),
                         void *arg)
{
    size_t n = 0;
    for (size_t k = 0; k < xr_nls; k++)
        if (xr_ls[k].fd >= 0) {
            fn(&xr_ls[k].sa, xr_ls[k].len, xr_ls[k].fd, xr_ls[k].backlog, arg);
            n++;
        }
    return n;
}

int xr_listeners_adopt(const struct sockaddr_storage *sa, socklen_t len, int fd, int backlog)
{
    xr_addr_t a;
    memcpy(&a.sa, sa, len);
    a.len = len;
    if (xr_ls_find(&a) != NULL || xr_nls == XR_MAX_LISTENERS)
        return XR_ERROR;
    xr_listen_sock_t *l = &xr_ls[xr_nls++];
    memset(l, 0, sizeof(*l));
    memcpy(&l->sa, sa, len);
    l->len = len;
    l->fd = fd;
    l->backlog = backlog;
    xr_addr_format(sa, l->text, sizeof(l->text));
    return XR_OK;
}

void xr_listeners_close_all(void)
{
    for (size_t k = 0; k < xr_nls; k++)
        if (xr_ls[k].fd >= 0) {
            close(xr_ls[k].fd);
            xr_ls[k].fd = -1;
        }
}

void xr_listeners_close_foreign(const xr_gen_t *g)
{
    for (size_t k = 0; k < xr_nls; k++)
        if (xr_ls[k].fd >= 0 && !xr_gen_uses(g, &xr_ls[k])) {
            close(xr_ls[k].fd);
            xr_ls[k].fd = -1;
        }
}
