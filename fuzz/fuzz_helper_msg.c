/*
 * fuzz_helper_msg.c: libFuzzer target for what libxray reads inside an
 * application: the helper's answers (helper_msg.h), decoded with
 * xr_hmsg_decode and, whole, through xr_hmsg_recv on a real
 * SOCK_SEQPACKET pair with descriptors attached.  A packet that is
 * accepted must encode back to the same bytes; one that is refused must
 * leave no descriptor open.
 */
#include "lib/helper_msg.h"

#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int xr_open_fds(void)
{
    int n = 0;
    for (int fd = 0; fd < 256; fd++)
        n += fcntl(fd, F_GETFD) >= 0;
    return n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    xr_hmsg_t m;
    uint8_t back[XR_HMSG_MAX];
    if (xr_hmsg_decode(data, size, &m) == 0) {
        if (strlen(m.text) > XR_HMSG_TEXT)
            abort();
        size_t n = xr_hmsg_encode(&m, back);
        /* Bytes the address does not use are not kept; all else is. */
        size_t used = data[8] == 4 ? 2 + 4 : data[8] == 6 ? 2 + 16 : 0;
        if (n != size || memcmp(back, data, 9 + used) != 0 ||
            memcmp(back + 27, data + 27, n - 27) != 0)
            abort();
    }
    /* The same bytes as a packet on a socket, with a descriptor riding
     * along (the first byte chooses whether). */
    int sp[2], before = xr_open_fds();
    if (size > XR_HMSG_MAX + 64 || socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sp) != 0)
        return 0;
    int extra = size > 0 && (data[0] & 1) ? dup(0) : -1;
    char cbuf[CMSG_SPACE(sizeof(int))];
    struct iovec iov = {(void *) data, size};
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
    if (extra >= 0) {
        memset(cbuf, 0, sizeof(cbuf));
        mh.msg_control = cbuf;
        mh.msg_controllen = sizeof(cbuf);
        struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(c), &extra, sizeof(int));
    }
    if (sendmsg(sp[0], &mh, MSG_DONTWAIT) >= 0) {
        int fd = -1;
        int got = xr_hmsg_recv(sp[1], &m, &fd);
        if (got == 1 && fd >= 0)
            close(fd);
        if (got != 1 && fd != -1)
            abort(); /* a refused packet hands out nothing */
    }
    if (extra >= 0)
        close(extra);
    close(sp[0]);
    close(sp[1]);
    if (xr_open_fds() != before)
        abort(); /* a descriptor leaked */
    return 0;
}
