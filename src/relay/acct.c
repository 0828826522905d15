/*
 * acct.c: the kernel's byte counters of a TCP socket (see acct.h).
 *
 * Measured on this kernel (a probe in the commit that added this file):
 * an accepted socket starts with bytes_acked 0, a connected one with 1
 * (its SYN); a received FIN adds 1 to bytes_received and never shows in
 * SIOCINQ; a FIN we send shows in SIOCOUTQ until acknowledged, then in
 * bytes_acked.  So the bytes a process read are bytes_received minus
 * what is queued minus a received FIN, and those it wrote are
 * bytes_acked plus what is queued minus its FIN, less the values at the
 * start of the connection.
 */
#include "relay/acct.h"

#include <errno.h>
#include <linux/sockios.h>
#include <linux/tcp.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>

#include "core/xrayd.h"

/* The kernel's TCP states (include/net/tcp_states.h, a stable ABI);
 * <netinet/tcp.h> has them but cannot be included with <linux/tcp.h>. */
enum {
    XR_TCP_ESTABLISHED = 1,
    XR_TCP_SYN_SENT,
    XR_TCP_SYN_RECV,
    XR_TCP_FIN_WAIT1,
    XR_TCP_FIN_WAIT2,
    XR_TCP_TIME_WAIT,
    XR_TCP_CLOSE,
    XR_TCP_CLOSE_WAIT,
    XR_TCP_LAST_ACK,
    XR_TCP_LISTEN,
    XR_TCP_CLOSING
};

/* *notsent: whether the kernel filled tcpi_notsent_bytes (4.6 on). */
static int xr_tcp_info(int fd, struct tcp_info *ti, int *notsent)
{
    socklen_t len = sizeof(*ti);
    memset(ti, 0, sizeof(*ti));
    if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, ti, &len) != 0)
        return XR_ERROR;
    if (len < offsetof(struct tcp_info, tcpi_bytes_received) + sizeof(ti->tcpi_bytes_received)) {
        errno = ENOSYS; /* a kernel older than 4.1 */
        return XR_ERROR;
    }
    *notsent =
        len >= offsetof(struct tcp_info, tcpi_notsent_bytes) + sizeof(ti->tcpi_notsent_bytes);
    return XR_OK;
}

/* Has every byte sent been acknowledged?  Then the send queue holds only
 * bytes not sent yet (SIOCOUTQ is write_seq - snd_una, and with nothing
 * in flight snd_una is snd_nxt), which TCP_INFO reports in the same
 * reading: a replacement resuming a thousand idle connections saves a
 * system call per socket, each one microseconds on a virtual machine. */
static int xr_tcp_settled(const struct tcp_info *ti)
{
    return ti->tcpi_unacked == 0 && ti->tcpi_state == XR_TCP_ESTABLISHED;
}

int xr_acct(int fd, xr_acct_t *a)
{
    /* The counters and the queue lengths come from separate calls, and the
     * peer's data and ACKs keep arriving in between: a segment that lands
     * between TCP_INFO and SIOCINQ would count as unread without counting
     * as received (and an ACK as acknowledged without leaving the queue),
     * and the connection would resume off by that many bytes.  So read the
     * counters on both sides of the queue lengths and take a reading only
     * when nothing moved. */
    struct tcp_info ti, again;
    int inq = 0, outq = 0, tries, notsent = 0;
    for (tries = 0; tries < 1000; tries++) {
        if (xr_tcp_info(fd, &ti, &notsent) != XR_OK || ioctl(fd, SIOCINQ, &inq) != 0)
            return XR_ERROR;
        /* After a first reading that moved, ask the queue itself. */
        int settled = tries == 0 && notsent && xr_tcp_settled(&ti);
        if (!settled && ioctl(fd, SIOCOUTQ, &outq) != 0)
            return XR_ERROR;
        if (xr_tcp_info(fd, &again, &notsent) != XR_OK)
            return XR_ERROR;
        if (ti.tcpi_bytes_received != again.tcpi_bytes_received ||
            ti.tcpi_bytes_acked != again.tcpi_bytes_acked || ti.tcpi_state != again.tcpi_state)
            continue;
        if (!settled)
            break;
        if (xr_tcp_settled(&again) && ti.tcpi_notsent_bytes == again.tcpi_notsent_bytes) {
            outq = (int) ti.tcpi_notsent_bytes;
            break;
        }
    }
    if (tries == 1000) {
        errno = EBUSY; /* a socket that never holds still for three calls */
        return XR_ERROR;
    }
    int st = ti.tcpi_state;
    a->state = st;
    a->fin_in = st == XR_TCP_CLOSE_WAIT || st == XR_TCP_LAST_ACK || st == XR_TCP_CLOSING ||
                st == XR_TCP_TIME_WAIT || st == XR_TCP_CLOSE;
    a->fin_out = st == XR_TCP_FIN_WAIT1 || st == XR_TCP_FIN_WAIT2 || st == XR_TCP_CLOSING ||
                 st == XR_TCP_TIME_WAIT || st == XR_TCP_LAST_ACK || st == XR_TCP_CLOSE;
    a->taken = ti.tcpi_bytes_received - (uint64_t) inq - (uint64_t) a->fin_in;
    a->given = ti.tcpi_bytes_acked + (uint64_t) outq - (uint64_t) a->fin_out;
    return XR_OK;
}

int xr_acct_connecting(int state)
{
    return state == XR_TCP_SYN_SENT;
}

int xr_acct_established(int state)
{
    return state == XR_TCP_ESTABLISHED;
}
