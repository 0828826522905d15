/*
 * sock.c: how the engine's sockets end (see sock.h).
 */
#include "core/xrayd.h"
#include "relay/sock.h"

#include <sys/socket.h>

/* Read and drop what a peer sent after we stopped reading: closing a
 * socket with unread bytes resets it, which could throw away an answer
 * still on its way to that peer. */
void xr_drain_unread(int fd)
{
    char sink[4096];
    for (int i = 0; i < 16 && recv(fd, sink, sizeof(sink), MSG_DONTWAIT) > 0; i++) {
    }
}

void xr_sock_before_close(int fd, int cut)
{
    if (cut) {
        struct linger lg = {1, 0};
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    } else {
        xr_drain_unread(fd);
    }
}
