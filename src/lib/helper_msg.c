/*
 * helper_msg.c: encoding and decoding the library's messages to its
 * helper (see helper_msg.h).
 *
 *   u8 version, u8 type, u8 proto, u8 flags, i32 code (big endian),
 *   u8 family (0, 4, 6), u16 port, 16 address bytes, u8 text length,
 *   the text
 */
#include "lib/helper_msg.h"

#include <errno.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

#define XR_HMSG_FIXED (4 + 4 + 19 + 1)

size_t xr_hmsg_encode(const xr_hmsg_t *m, uint8_t *b)
{
    memset(b, 0, XR_HMSG_FIXED);
    b[0] = XR_HMSG_VERSION;
    b[1] = m->type;
    b[2] = m->proto;
    b[3] = m->flags;
    uint32_t code = (uint32_t) m->code;
    b[4] = (uint8_t) (code >> 24);
    b[5] = (uint8_t) (code >> 16);
    b[6] = (uint8_t) (code >> 8);
    b[7] = (uint8_t) code;
    if (m->addr.ss_family == AF_INET) {
        const struct sockaddr_in *s = (const struct sockaddr_in *) &m->addr;
        b[8] = 4;
        memcpy(b + 9, &s->sin_port, 2);
        memcpy(b + 11, &s->sin_addr, 4);
    } else if (m->addr.ss_family == AF_INET6) {
        const struct sockaddr_in6 *s = (const struct sockaddr_in6 *) &m->addr;
        b[8] = 6;
        memcpy(b + 9, &s->sin6_port, 2);
        memcpy(b + 11, &s->sin6_addr, 16);
    }
    size_t tl = strnlen(m->text, XR_HMSG_TEXT);
    b[27] = (uint8_t) tl;
    memcpy(b + XR_HMSG_FIXED, m->text, tl);
    return XR_HMSG_FIXED + tl;
}

int xr_hmsg_decode(const uint8_t *b, size_t len, xr_hmsg_t *m)
{
    memset(m, 0, sizeof(*m));
    if (len < XR_HMSG_FIXED || b[0] != XR_HMSG_VERSION)
        return -1;
    m->type = b[1];
    switch (m->type) {
    case XR_HMSG_CONNECT:
    case XR_HMSG_LISTEN:
    case XR_HMSG_WHO:
    case XR_HMSG_DIRECT:
    case XR_HMSG_RELAY:
    case XR_HMSG_STATUS:
    case XR_HMSG_BOUND:
    case XR_HMSG_PEER:
    case XR_HMSG_ERROR:
    case XR_HMSG_MAPPED:
    case XR_HMSG_OPEN: break;
    default: return -1;
    }
    m->proto = b[2];
    m->flags = b[3];
    m->code =
        (int32_t) ((uint32_t) b[4] << 24 | (uint32_t) b[5] << 16 | (uint32_t) b[6] << 8 | b[7]);
    if (b[8] == 4) {
        struct sockaddr_in *s = (struct sockaddr_in *) &m->addr;
        s->sin_family = AF_INET;
        memcpy(&s->sin_port, b + 9, 2);
        memcpy(&s->sin_addr, b + 11, 4);
    } else if (b[8] == 6) {
        struct sockaddr_in6 *s = (struct sockaddr_in6 *) &m->addr;
        s->sin6_family = AF_INET6;
        memcpy(&s->sin6_port, b + 9, 2);
        memcpy(&s->sin6_addr, b + 11, 16);
    } else if (b[8] != 0) {
        return -1;
    }
    size_t tl = b[27];
    if (tl > XR_HMSG_TEXT || len != XR_HMSG_FIXED + tl || memchr(b + XR_HMSG_FIXED, 0, tl))
        return -1;
    memcpy(m->text, b + XR_HMSG_FIXED, tl);
    m->text[tl] = '\0';
    return 0;
}

int xr_hmsg_send(int sock, const xr_hmsg_t *m, int fd)
{
    uint8_t buf[XR_HMSG_MAX];
    struct iovec iov = {buf, xr_hmsg_encode(m, buf)};
    union {
        struct cmsghdr h;
        char space[CMSG_SPACE(sizeof(int))];
    } u;
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
    if (fd >= 0) {
        memset(&u, 0, sizeof(u));
        mh.msg_control = u.space;
        mh.msg_controllen = sizeof(u.space);
        struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(c), &fd, sizeof(int));
    }
    ssize_t n;
    while ((n = sendmsg(sock, &mh, MSG_NOSIGNAL)) < 0 && errno == EINTR)
        ;
    return n == (ssize_t) iov.iov_len ? 0 : -1;
}

int xr_hmsg_recv(int sock, xr_hmsg_t *m, int *fd)
{
    uint8_t buf[XR_HMSG_MAX + 1];
    struct iovec iov = {buf, sizeof(buf)};
    union {
        struct cmsghdr h;
        char space[CMSG_SPACE(sizeof(int) * 4)];
    } u;
    struct msghdr mh = {.msg_iov = &iov,
                        .msg_iovlen = 1,
                        .msg_control = u.space,
                        .msg_controllen = sizeof(u.space)};
    ssize_t n;
    if (fd != NULL)
        *fd = -1;
    while ((n = recvmsg(sock, &mh, MSG_CMSG_CLOEXEC)) < 0 && errno == EINTR)
        ;
    if (n <= 0)
        return (int) n;
    int got = -1;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c != NULL; c = CMSG_NXTHDR(&mh, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
            continue;
        size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t i = 0; i < k; i++) {
            int one;
            memcpy(&one, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
            if (got < 0 && fd != NULL)
                got = one;
            else
                close(one); /* more than the one a message may carry */
        }
    }
    if ((mh.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) || xr_hmsg_decode(buf, (size_t) n, m) < 0) {
        if (got >= 0)
            close(got);
        errno = EBADMSG;
        return -1;
    }
    if (fd != NULL)
        *fd = got;
    return 1;
}
