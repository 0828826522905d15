/*
 * xray.h: libxray, the XRAY socket API (installed as <xray.h>).
 *
 * Each call has the signature and the errno behaviour of its Berkeley
 * counterpart, and takes and gives ordinary descriptors: a connection
 * relayed through the XRAY agents is a kernel socket too (one end of a
 * socket pair whose other end a helper process carries over the link),
 * so xray_read, xray_poll, epoll, fork and exec need nothing of the
 * library.  What differs is where a connection goes and what the
 * addresses say:
 *
 *   xray_connect    asks the agent: in its network the socket connects
 *                   directly to the server's local address; across the
 *                   firewalls it is relayed, and a non-blocking connect
 *                   completes (poll, select, epoll: writable) only after
 *                   the end-to-end acknowledgement.  The agent down, the
 *                   destination is tried directly (XRAY §6).
 *   xray_listen     binds through the agent: the socket gets an official
 *                   address, reachable from other networks, which
 *                   xray_getsockname returns; the agent down, it is
 *                   locally bound and upgrades when the agent comes.
 *   xray_accept     returns relayed and direct connections alike;
 *                   xray_getpeername (and accept's address) say who the
 *                   peer really is.
 *   xray_sendto     (UDP) a datagram to an official address goes through
 *                   a mapping the helper keeps (CODO §4.3), made on the
 *                   first datagram and gone when idle (XRAY_UDP_IDLE ms,
 *                   60000), made again as needed; xray_recvfrom says the
 *                   answers come from the official address.
 *
 * The agent and the application's certificate come from the environment
 * (XRAY_AGENT, XRAY_CERT, XRAY_KEY, XRAY_CA) or a client file
 * (XRAY_CONFIG, ~/.config/xray/client.yaml, /etc/xray/client.yaml).
 * XRAY_DEBUG=1 writes a line to stderr for every decision.
 */
#ifndef XRAY_H
#define XRAY_H

#include <poll.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

#define XRAY_API __attribute__((visibility("default")))

#define XRAY_VERSION_MAJOR 0
#define XRAY_VERSION_MINOR 1

XRAY_API int xray_socket(int domain, int type, int protocol);
XRAY_API int xray_bind(int fd, const struct sockaddr *addr, socklen_t len);
XRAY_API int xray_listen(int fd, int backlog);
XRAY_API int xray_accept(int fd, struct sockaddr *addr, socklen_t *len);
XRAY_API int xray_accept4(int fd, struct sockaddr *addr, socklen_t *len, int flags);
XRAY_API int xray_connect(int fd, const struct sockaddr *addr, socklen_t len);
XRAY_API int xray_getsockname(int fd, struct sockaddr *addr, socklen_t *len);
XRAY_API int xray_getpeername(int fd, struct sockaddr *addr, socklen_t *len);
XRAY_API int xray_getsockopt(int fd, int level, int name, void *val, socklen_t *len);
XRAY_API int xray_setsockopt(int fd, int level, int name, const void *val, socklen_t len);
XRAY_API int xray_shutdown(int fd, int how);
XRAY_API int xray_close(int fd);
XRAY_API int xray_dup(int fd);
XRAY_API int xray_dup2(int fd, int to);
XRAY_API int xray_dup3(int fd, int to, int flags);
XRAY_API int xray_fcntl(int fd, int cmd, ...);

XRAY_API ssize_t xray_send(int fd, const void *buf, size_t n, int flags);
XRAY_API ssize_t xray_recv(int fd, void *buf, size_t n, int flags);
XRAY_API ssize_t xray_sendto(int fd, const void *buf, size_t n, int flags,
                             const struct sockaddr *to, socklen_t tolen);
XRAY_API ssize_t xray_recvfrom(int fd, void *buf, size_t n, int flags, struct sockaddr *from,
                               socklen_t *fromlen);
XRAY_API ssize_t xray_sendmsg(int fd, const struct msghdr *msg, int flags);
XRAY_API ssize_t xray_recvmsg(int fd, struct msghdr *msg, int flags);
XRAY_API ssize_t xray_read(int fd, void *buf, size_t n);
XRAY_API ssize_t xray_write(int fd, const void *buf, size_t n);
XRAY_API int xray_poll(struct pollfd *fds, nfds_t n, int timeout_ms);
XRAY_API int xray_select(int nfds, fd_set *r, fd_set *w, fd_set *e, struct timeval *timeout);
XRAY_API pid_t xray_fork(void);
XRAY_API int xray_execve(const char *path, char *const argv[], char *const envp[]);

/* getaddrinfo, with names of official addresses from the XRAY hosts
 * file ($XRAY_HOSTS, ~/.config/xray/hosts, /etc/xray/hosts: lines
 * "ADDRESS NAME...") before the system's resolver. */
struct addrinfo;
XRAY_API int xray_getaddrinfo(const char *node, const char *service, const struct addrinfo *hints,
                              struct addrinfo **res);

/* The reason behind the last failure of this thread's xray_ call when
 * errnum is its errno (the agent's words: "NOT_AUTHORIZED: ..."), else
 * strerror(errnum). */
XRAY_API const char *xray_strerror(int errnum);

#ifdef __cplusplus
}
#endif

#endif /* XRAY_H */
