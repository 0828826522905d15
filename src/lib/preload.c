/*
 * preload.c: libxray-preload.so - the socket calls of an unmodified,
 * dynamically linked program, taken over by libxray:
 *
 *   LD_PRELOAD=/usr/local/lib/libxray-preload.so curl http://OFFICIAL/
 *
 * Only the calls whose meaning changes are taken: connect, bind (a UDP
 * server's), listen, accept, the address and option queries, those that copy or close
 * descriptors (the library's table follows them), and for UDP the calls
 * that name a datagram's address (sendto, sendmsg, recvfrom, recvmsg);
 * getaddrinfo, for names of official addresses (the XRAY hosts file).  Reading, writing,
 * poll, select, epoll, fork and exec work on the kernel's descriptors
 * as they are (api.c says why), so they are not touched.
 */
#include "lib/xray.h"

#include <fcntl.h>
#include <netdb.h>
#include <stdarg.h>
#include <unistd.h>

#define XR_EXPORT __attribute__((visibility("default")))

XR_EXPORT int connect(int fd, const struct sockaddr *addr, socklen_t len)
{
    return xray_connect(fd, addr, len);
}

XR_EXPORT int bind(int fd, const struct sockaddr *addr, socklen_t len)
{
    return xray_bind(fd, addr, len);
}

XR_EXPORT int listen(int fd, int backlog)
{
    return xray_listen(fd, backlog);
}

XR_EXPORT int accept(int fd, struct sockaddr *addr, socklen_t *len)
{
    return xray_accept(fd, addr, len);
}

XR_EXPORT int accept4(int fd, struct sockaddr *addr, socklen_t *len, int flags)
{
    return xray_accept4(fd, addr, len, flags);
}

XR_EXPORT int getsockname(int fd, struct sockaddr *addr, socklen_t *len)
{
    return xray_getsockname(fd, addr, len);
}

XR_EXPORT int getpeername(int fd, struct sockaddr *addr, socklen_t *len)
{
    return xray_getpeername(fd, addr, len);
}

XR_EXPORT int getsockopt(int fd, int level, int name, void *val, socklen_t *len)
{
    return xray_getsockopt(fd, level, name, val, len);
}

XR_EXPORT int setsockopt(int fd, int level, int name, const void *val, socklen_t len)
{
    return xray_setsockopt(fd, level, name, val, len);
}

XR_EXPORT ssize_t sendto(int fd, const void *buf, size_t n, int flags, const struct sockaddr *to,
                         socklen_t tolen)
{
    return xray_sendto(fd, buf, n, flags, to, tolen);
}

XR_EXPORT ssize_t sendmsg(int fd, const struct msghdr *msg, int flags)
{
    return xray_sendmsg(fd, msg, flags);
}

XR_EXPORT ssize_t recvfrom(int fd, void *buf, size_t n, int flags, struct sockaddr *from,
                           socklen_t *fromlen)
{
    return xray_recvfrom(fd, buf, n, flags, from, fromlen);
}

XR_EXPORT ssize_t recvmsg(int fd, struct msghdr *msg, int flags)
{
    return xray_recvmsg(fd, msg, flags);
}

XR_EXPORT int getaddrinfo(const char *node, const char *service, const struct addrinfo *hints,
                          struct addrinfo **res)
{
    return xray_getaddrinfo(node, service, hints, res);
}

XR_EXPORT int close(int fd)
{
    return xray_close(fd);
}

XR_EXPORT int dup(int fd)
{
    return xray_dup(fd);
}

XR_EXPORT int dup2(int fd, int to)
{
    return xray_dup2(fd, to);
}

XR_EXPORT int dup3(int fd, int to, int flags)
{
    return xray_dup3(fd, to, flags);
}

XR_EXPORT int fcntl(int fd, int cmd, ...)
{
    va_list ap;
    va_start(ap, cmd);
    void *arg = va_arg(ap, void *);
    va_end(ap);
    return xray_fcntl(fd, cmd, arg);
}

/* glibc's name for fcntl in programs built with 64-bit file offsets. */
XR_EXPORT int fcntl64(int fd, int cmd, ...)
{
    va_list ap;
    va_start(ap, cmd);
    void *arg = va_arg(ap, void *);
    va_end(ap);
    return xray_fcntl(fd, cmd, arg);
}
