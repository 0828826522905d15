/*
 * upgrade.c: messages of the binary upgrade (see upgrade.h).
 */
#include "core/xrayd.h"
#include "core/upgrade.h"

#include <poll.h>
#include <unistd.h>

int xr_up_send(int fd, const xr_up_msg_t *m, const int *fds, int nfds)
{
    union {
        char buf[CMSG_SPACE(2 * sizeof(int))];
        struct cmsghdr align;
    } u;
    memset(&u, 0, sizeof(u));
    xr_up_msg_t copy = *m;
    copy.nfds = (uint32_t) nfds;
    struct iovec iov = {&copy, sizeof(copy)};
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
    if (nfds > 0) {
        mh.msg_control = u.buf;
        mh.msg_controllen = CMSG_SPACE((size_t) nfds * sizeof(int));
        struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
        cm->cmsg_level = SOL_SOCKET;
        cm->cmsg_type = SCM_RIGHTS;
        cm->cmsg_len = CMSG_LEN((size_t) nfds * sizeof(int));
        memcpy(CMSG_DATA(cm), fds, (size_t) nfds * sizeof(int));
    }
    for (;;) {
        ssize_t n = sendmsg(fd, &mh, MSG_NOSIGNAL);
        if (n == (ssize_t) sizeof(copy))
            return XR_OK;
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN) {
            struct pollfd p = {fd, POLLOUT, 0};
            if (poll(&p, 1, 5000) == 1)
                continue;
        }
        return XR_ERROR;
    }
}

int xr_up_recv(int fd, xr_up_msg_t *m, int fds[2], int timeout_ms)
{
    fds[0] = fds[1] = -1;
    struct pollfd p = {fd, POLLIN, 0};
    int r = poll(&p, 1, timeout_ms);
    if (r == 0)
        return 0;
    if (r < 0)
        return errno == EINTR ? 0 : -1;
    union {
        char buf[CMSG_SPACE(2 * sizeof(int))];
        struct cmsghdr align;
    } u;
    struct iovec iov = {m, sizeof(*m)};
    struct msghdr mh = {
        .msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf, .msg_controllen = sizeof(u.buf)};
    ssize_t n = recvmsg(fd, &mh, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR))
        return -1;
    if (n < 0)
        return 0;
    int got = 0;
    for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); cm != NULL; cm = CMSG_NXTHDR(&mh, cm))
        if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS) {
            got = (int) ((cm->cmsg_len - CMSG_LEN(0)) / sizeof(int));
            memcpy(fds, CMSG_DATA(cm), (size_t) XR_MIN(got, 2) * sizeof(int));
        }
    if ((size_t) n != sizeof(*m) || m->nfds > 2 || (int) m->nfds != got ||
        (mh.msg_flags & (MSG_TRUNC | MSG_CTRUNC))) {
        for (int i = 0; i < 2; i++)
            if (fds[i] >= 0)
                close(fds[i]);
        fds[0] = fds[1] = -1;
        return -1;
    }
    m->dir[sizeof(m->dir) - 1] = '\0';
    return 1;
}
