/*
 * sockaddr.h: comparing socket addresses, for the daemon and for libxray
 * (which links nothing of the tree: this is header-only).
 */
#ifndef XR_SOCKADDR_H
#define XR_SOCKADDR_H

#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>

/* The same IPv4 or IPv6 address and port? */
static inline int xr_sockaddr_same(const struct sockaddr_storage *a,
                                   const struct sockaddr_storage *b)
{
    if (a->ss_family != b->ss_family)
        return 0;
    if (a->ss_family == AF_INET) {
        const struct sockaddr_in *x = (const void *) a, *y = (const void *) b;
        return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
    }
    const struct sockaddr_in6 *x = (const void *) a, *y = (const void *) b;
    return a->ss_family == AF_INET6 && x->sin6_port == y->sin6_port &&
           memcmp(&x->sin6_addr, &y->sin6_addr, 16) == 0;
}

#endif /* XR_SOCKADDR_H */
