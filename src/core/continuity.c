/*
 * continuity.c: the master's table of continuity connections' sockets and
 * the channel each worker reports on (see continuity.h).
 */
#include "core/xrayd.h"
#include "core/continuity.h"
#include "core/log.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

enum { XR_CONT_HOLD = 1, XR_CONT_DROP, XR_CONT_FROZEN, XR_CONT_ORDER, XR_CONT_BATCH_MSG };

/* Connections a message of an order carries: two descriptors each, under
 * the kernel's limit of 253 a message (SCM_MAX_FD). */
#define XR_CONT_BATCH 120

typedef struct {
    uint32_t type; /* XR_CONT_ORDER */
    uint32_t pad;
    xr_cont_order_t o;
} xr_cont_order_msg_t;

typedef struct {
    uint32_t type; /* XR_CONT_BATCH_MSG */
    uint32_t n;
    uint64_t id[XR_CONT_BATCH];
    uint8_t has[XR_CONT_BATCH][XR_CONT_ENDS]; /* which ends' descriptors follow, in order */
} xr_cont_batch_t;

typedef struct {
    uint32_t type;
    uint32_t which; /* HOLD: the end */
    uint64_t id;
} xr_cont_msg_t;

#define XR_CONT_CHANNELS 160

typedef struct {
    int fd;
    pid_t pid; /* 0: attached to nobody yet */
    int frozen;
} xr_channel_t;

static struct {
    /* the table: entries packed, and an open-addressing index by id */
    xr_cont_entry_t *e;
    size_t n, cap;
    uint32_t *idx; /* entry index + 1; 0 empty, UINT32_MAX deleted */
    size_t icap;
    size_t iused; /* index slots not empty: live entries and tombstones */
    xr_channel_t ch[XR_CONT_CHANNELS];
    /* in a worker */
    int wfd;
    pid_t adopting;
} xr_ct = {.wfd = -1};

/* ---- the table ------------------------------------------------------------ */

static size_t xr_cont_hash(uint64_t id, size_t cap)
{
    id ^= id >> 33;
    id *= 0xff51afd7ed558ccdULL;
    id ^= id >> 33;
    return (size_t) id & (cap - 1);
}

/* Rebuild the index without tombstones, with room for n + room entries. */
static void xr_cont_reindex(size_t room)
{
    size_t cap = 64;
    while (cap < (xr_ct.n + room) * 2 + 16)
        cap *= 2;
    free(xr_ct.idx);
    xr_ct.idx = xr_calloc(cap, sizeof(uint32_t));
    xr_ct.icap = cap;
    for (size_t i = 0; i < xr_ct.n; i++) {
        size_t h = xr_cont_hash(xr_ct.e[i].id, cap);
        while (xr_ct.idx[h] != 0)
            h = (h + 1) & (cap - 1);
        xr_ct.idx[h] = (uint32_t) i + 1;
    }
    xr_ct.iused = xr_ct.n;
}

/* The index slot of id, or of where it would go (*found 0). */
static size_t xr_cont_slot(uint64_t id, int *found)
{
    size_t h = xr_cont_hash(id, xr_ct.icap), tomb = SIZE_MAX;
    for (;;) {
        uint32_t v = xr_ct.idx[h];
        if (v == 0) {
            *found = 0;
            return tomb != SIZE_MAX ? tomb : h;
        }
        if (v == UINT32_MAX) {
            if (tomb == SIZE_MAX)
                tomb = h;
        } else if (xr_ct.e[v - 1].id == id) {
            *found = 1;
            return h;
        }
        h = (h + 1) & (xr_ct.icap - 1);
    }
}

static xr_cont_entry_t *xr_cont_find(uint64_t id)
{
    if (xr_ct.icap == 0)
        return NULL;
    int found;
    size_t h = xr_cont_slot(id, &found);
    return found ? &xr_ct.e[xr_ct.idx[h] - 1] : NULL;
}

static xr_cont_entry_t *xr_cont_get(uint64_t id, pid_t owner)
{
    xr_cont_entry_t *x = xr_cont_find(id);
    if (x != NULL)
        return x;
    if (xr_ct.n == xr_ct.cap) {
        xr_ct.cap = xr_ct.cap ? xr_ct.cap * 2 : 256;
        xr_ct.e = xr_realloc(xr_ct.e, xr_ct.cap * sizeof(*xr_ct.e));
    }
    /* Tombstones count against the load too: under steady churn the
     * table never empties, and an index with no empty slot left would
     * make every miss probe forever. */
    if ((xr_ct.iused + 1) * 2 > xr_ct.icap)
        xr_cont_reindex(1);
    int found;
    size_t h = xr_cont_slot(id, &found);
    if (xr_ct.idx[h] == 0)
        xr_ct.iused++;
    x = &xr_ct.e[xr_ct.n];
    x->id = id;
    x->owner = owner;
    x->fd[0] = x->fd[1] = -1;
    xr_ct.idx[h] = (uint32_t) ++xr_ct.n;
    return x;
}

/* Remove x (closing nothing); the last entry moves into its place. */
static void xr_cont_remove(xr_cont_entry_t *x)
{
    int found;
    size_t h = xr_cont_slot(x->id, &found);
    xr_ct.idx[h] = UINT32_MAX;
    size_t i = (size_t) (x - xr_ct.e), last = xr_ct.n - 1;
    if (i != last) {
        xr_ct.e[i] = xr_ct.e[last];
        size_t hl = xr_cont_slot(xr_ct.e[i].id, &found);
        xr_ct.idx[hl] = (uint32_t) i + 1;
    }
    xr_ct.n--;
    if (xr_ct.n == 0)
        xr_cont_reindex(0); /* sweep the tombstones while it is cheap */
}

static void xr_cont_close_entry(xr_cont_entry_t *x)
{
    for (int k = 0; k < XR_CONT_ENDS; k++)
        if (x->fd[k] >= 0)
            close(x->fd[k]);
    xr_cont_remove(x);
}

void xr_cont_add(uint64_t id, pid_t owner, const int fd[XR_CONT_ENDS])
{
    xr_cont_entry_t *x = xr_cont_get(id, owner);
    x->owner = owner;
    for (int k = 0; k < XR_CONT_ENDS; k++) {
        if (x->fd[k] >= 0 && x->fd[k] != fd[k])
            close(x->fd[k]);
        x->fd[k] = fd[k];
    }
}

size_t xr_cont_count(void)
{
    return xr_ct.n;
}

size_t xr_cont_count_of(pid_t pid)
{
    size_t c = 0;
    for (size_t i = 0; i < xr_ct.n; i++)
        c += xr_ct.e[i].owner == pid;
    return c;
}

size_t xr_cont_entries(const xr_cont_entry_t **out)
{
    *out = xr_ct.e;
    return xr_ct.n;
}

void xr_cont_clear(void)
{
    while (xr_ct.n > 0)
        xr_cont_close_entry(&xr_ct.e[xr_ct.n - 1]);
}

void xr_cont_forget(pid_t pid)
{
    for (size_t i = 0; i < xr_ct.n;) {
        if (xr_ct.e[i].owner == pid)
            xr_cont_close_entry(&xr_ct.e[i]); /* the last one moved here */
        else
            i++;
    }
}

/* ---- channels, master side ------------------------------------------------- */

int xr_cont_channel(int *child_end)
{
    int sp[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sp) != 0)
        return -1;
    int big = 1 << 20; /* a burst of new connections must not block a worker */
    setsockopt(sp[0], SOL_SOCKET, SO_RCVBUF, &big, sizeof(big));
    setsockopt(sp[1], SOL_SOCKET, SO_SNDBUF, &big, sizeof(big));
    for (int i = 0; i < XR_CONT_CHANNELS; i++)
        if (xr_ct.ch[i].fd <= 0 && xr_ct.ch[i].pid == 0) {
            xr_ct.ch[i].fd = sp[0];
            xr_ct.ch[i].frozen = 0;
            *child_end = sp[1];
            return sp[0];
        }
    close(sp[0]);
    close(sp[1]);
    errno = EMFILE;
    return -1;
}

static xr_channel_t *xr_cont_channel_of_fd(int fd)
{
    for (int i = 0; i < XR_CONT_CHANNELS; i++)
        if (xr_ct.ch[i].fd == fd && fd > 0)
            return &xr_ct.ch[i];
    return NULL;
}

void xr_cont_attach(int master_end, pid_t pid)
{
    xr_channel_t *c = xr_cont_channel_of_fd(master_end);
    if (c != NULL)
        c->pid = pid;
}

size_t xr_cont_fds(int *fds, size_t cap)
{
    size_t n = 0;
    for (int i = 0; i < XR_CONT_CHANNELS && n < cap; i++)
        if (xr_ct.ch[i].fd > 0 && xr_ct.ch[i].pid > 0)
            fds[n++] = xr_ct.ch[i].fd;
    return n;
}

/* One message from c; 1 if one was read, 0 when none waits. */
static int xr_cont_read_one(xr_channel_t *c)
{
    xr_cont_msg_t m;
    union {
        char buf[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } u;
    struct iovec iov = {&m, sizeof(m)};
    struct msghdr mh = {
        .msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf, .msg_controllen = sizeof(u.buf)};
    ssize_t n = recvmsg(c->fd, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
    if (n <= 0)
        return 0;
    int fd = -1;
    for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); cm != NULL; cm = CMSG_NXTHDR(&mh, cm))
        if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS)
            memcpy(&fd, CMSG_DATA(cm), sizeof(int));
    if ((size_t) n != sizeof(m) || (m.type == XR_CONT_HOLD && (fd < 0 || m.which >= 2))) {
        xr_log(XR_LOG_ALERT, "continuity: malformed message from worker %d", (int) c->pid);
        if (fd >= 0)
            close(fd);
        return 1;
    }
    xr_cont_entry_t *x;
    switch (m.type) {
    case XR_CONT_HOLD:
        x = xr_cont_get(m.id, c->pid);
        if (x->fd[m.which] >= 0)
            close(x->fd[m.which]);
        x->fd[m.which] = fd;
        x->owner = c->pid;
        break;
    case XR_CONT_DROP:
        x = xr_cont_find(m.id);
        if (x != NULL)
            xr_cont_close_entry(x);
        break;
    case XR_CONT_FROZEN: c->frozen = 1; break;
    default: break;
    }
    return 1;
}

void xr_cont_master_read(int fd)
{
    xr_channel_t *c = xr_cont_channel_of_fd(fd);
    for (int i = 0; c != NULL && i < 4096 && xr_cont_read_one(c); i++) {
    }
}

size_t xr_cont_reap(pid_t pid)
{
    for (int i = 0; i < XR_CONT_CHANNELS; i++) {
        xr_channel_t *c = &xr_ct.ch[i];
        if (c->pid != pid || c->fd <= 0)
            continue;
        /* What the worker sent before it died is still in the socket. */
        while (xr_cont_read_one(c)) {
        }
        close(c->fd);
        memset(c, 0, sizeof(*c));
    }
    return xr_cont_count_of(pid);
}

void xr_cont_adopted(pid_t dead, pid_t pid)
{
    for (size_t i = 0; i < xr_ct.n; i++)
        if (xr_ct.e[i].owner == dead)
            xr_ct.e[i].owner = pid;
}

/* ---- the standby ----------------------------------------------------------- */

/* One message on a channel, with nfds descriptors (at most a batch's).
 * The channels are blocking with a 1 MiB buffer and a 1 s send timeout:
 * a master that cannot keep up slows new connections down rather than
 * losing their continuity. */
static int xr_cont_sendfds(int fd, const void *buf, size_t len, const int *fds, size_t nfds)
{
    union {
        char buf[CMSG_SPACE(sizeof(int) * XR_CONT_BATCH * XR_CONT_ENDS)];
        struct cmsghdr align;
    } u;
    struct iovec iov = {(void *) buf, len};
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
    if (nfds > 0) {
        memset(u.buf, 0, CMSG_SPACE(sizeof(int) * nfds));
        mh.msg_control = u.buf;
        mh.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
        struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
        cm->cmsg_level = SOL_SOCKET;
        cm->cmsg_type = SCM_RIGHTS;
        cm->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
        memcpy(CMSG_DATA(cm), fds, sizeof(int) * nfds);
    }
    for (;;) {
        ssize_t n = sendmsg(fd, &mh, MSG_NOSIGNAL);
        if (n == (ssize_t) len)
            return XR_OK;
        if (n < 0 && errno == EINTR)
            continue;
        return XR_ERROR;
    }
}

int xr_cont_send_order(int master_end, xr_cont_order_t *o)
{
    xr_cont_order_msg_t m = {.type = XR_CONT_ORDER, .o = *o};
    m.o.n = (uint32_t) xr_cont_count_of(o->dead);
    o->n = m.o.n;
    if (xr_cont_sendfds(master_end, &m, sizeof(m), NULL, 0) != XR_OK)
        return XR_ERROR;
    static xr_cont_batch_t b;
    int fds[XR_CONT_BATCH * XR_CONT_ENDS];
    size_t nfds = 0;
    b.type = XR_CONT_BATCH_MSG;
    b.n = 0;
    for (size_t i = 0; i < xr_ct.n; i++) {
        const xr_cont_entry_t *x = &xr_ct.e[i];
        if (x->owner != o->dead)
            continue;
        b.id[b.n] = x->id;
        for (int k = 0; k < XR_CONT_ENDS; k++) {
            b.has[b.n][k] = x->fd[k] >= 0;
            if (x->fd[k] >= 0)
                fds[nfds++] = x->fd[k];
        }
        if (++b.n == XR_CONT_BATCH) {
            if (xr_cont_sendfds(master_end, &b, sizeof(b), fds, nfds) != XR_OK)
                return XR_ERROR;
            b.n = 0;
            nfds = 0;
        }
    }
    if (b.n > 0 && xr_cont_sendfds(master_end, &b, sizeof(b), fds, nfds) != XR_OK)
        return XR_ERROR;
    return XR_OK;
}

/* One batch of an order into the table.  XR_OK or XR_ERROR. */
static int xr_cont_recv_batch(pid_t dead, uint32_t *left)
{
    static xr_cont_batch_t b;
    union {
        char buf[CMSG_SPACE(sizeof(int) * XR_CONT_BATCH * XR_CONT_ENDS)];
        struct cmsghdr align;
    } u;
    struct iovec iov = {&b, sizeof(b)};
    struct msghdr mh = {
        .msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf, .msg_controllen = sizeof(u.buf)};
    ssize_t got = recvmsg(xr_ct.wfd, &mh, MSG_CMSG_CLOEXEC);
    int fds[XR_CONT_BATCH * XR_CONT_ENDS];
    size_t nfds = 0;
    for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); got > 0 && cm != NULL; cm = CMSG_NXTHDR(&mh, cm))
        if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS) {
            size_t k = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
            memcpy(fds + nfds, CMSG_DATA(cm), sizeof(int) * XR_MIN(k, XR_ARRAY_SIZE(fds) - nfds));
            nfds += XR_MIN(k, XR_ARRAY_SIZE(fds) - nfds);
        }
    size_t want = 0;
    int ok = got == (ssize_t) sizeof(b) && b.type == XR_CONT_BATCH_MSG && b.n <= XR_CONT_BATCH &&
             b.n <= *left && !(mh.msg_flags & (MSG_CTRUNC | MSG_TRUNC));
    for (uint32_t i = 0; ok && i < b.n; i++)
        want += (size_t) b.has[i][0] + b.has[i][1];
    if (!ok || want != nfds) {
        for (size_t i = 0; i < nfds; i++)
            close(fds[i]);
        return XR_ERROR;
    }
    size_t at = 0;
    for (uint32_t i = 0; i < b.n; i++) {
        int fd[XR_CONT_ENDS];
        for (int k = 0; k < XR_CONT_ENDS; k++)
            fd[k] = b.has[i][k] ? fds[at++] : -1;
        xr_cont_add(b.id[i], dead, fd);
    }
    *left -= b.n;
    return XR_OK;
}

int xr_cont_wait_order(int ms, xr_cont_order_t *o)
{
    struct pollfd pfd = {xr_ct.wfd, POLLIN, 0};
    int rc = poll(&pfd, 1, ms);
    if (rc == 0 || (rc < 0 && errno == EINTR))
        return 0;
    xr_cont_order_msg_t m;
    if (rc < 0 || recv(xr_ct.wfd, &m, sizeof(m), 0) != (ssize_t) sizeof(m) ||
        m.type != XR_CONT_ORDER || m.o.dead <= 0)
        return -1;
    *o = m.o;
    o->dir[sizeof(o->dir) - 1] = '\0';
    /* The master sends the rest at once; a master that stops half-way
     * leaves this standby nothing to do. */
    struct timeval tv = {2, 0};
    setsockopt(xr_ct.wfd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    uint32_t left = o->n;
    while (left > 0)
        if (xr_cont_recv_batch(o->dead, &left) != XR_OK)
            return -1;
    xr_ct.adopting = o->dead;
    return 1;
}

/* ---- worker side --------------------------------------------------------- */

/* Close every entry not owned by owner (0: every entry) in one pass, and
 * index what is left once.  A replacement runs this while its dead
 * predecessor's clients wait: removing entries one by one leaves a
 * tombstone each, and with thousands of them every later probe walks
 * long runs of tombstones. */
static void xr_cont_keep_only(pid_t owner)
{
    size_t kept = 0;
    for (size_t i = 0; i < xr_ct.n; i++) {
        xr_cont_entry_t *x = &xr_ct.e[i];
        if (owner != 0 && x->owner == owner) {
            xr_ct.e[kept++] = *x;
            continue;
        }
        for (int k = 0; k < XR_CONT_ENDS; k++)
            if (x->fd[k] >= 0)
                close(x->fd[k]);
    }
    xr_ct.n = kept;
    xr_cont_reindex(0);
}

void xr_cont_child_init(int fd, pid_t dead)
{
    xr_ct.wfd = fd;
    xr_ct.adopting = dead;
    struct timeval tv = {1, 0};
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    /* The master's ends of every channel and the sockets of connections
     * other workers serve are not ours: holding them would keep those
     * sockets open after their own workers closed them. */
    for (int i = 0; i < XR_CONT_CHANNELS; i++)
        if (xr_ct.ch[i].fd > 0)
            close(xr_ct.ch[i].fd);
    memset(xr_ct.ch, 0, sizeof(xr_ct.ch));
    /* A replacement closes them after its first turn, once the
     * connections it adopts move bytes again (xr_cont_release_unclaimed):
     * a few thousand close() calls are milliseconds those connections
     * would otherwise wait. */
    if (dead == 0)
        xr_cont_keep_only(0);
}

pid_t xr_cont_adopting(void)
{
    return xr_ct.adopting;
}

int xr_cont_take(uint64_t id, int fd[XR_CONT_ENDS])
{
    xr_cont_entry_t *x = xr_cont_find(id);
    if (x == NULL || xr_ct.adopting == 0 || x->owner != xr_ct.adopting) {
        fd[0] = fd[1] = -1;
        return 0;
    }
    /* The descriptors are the caller's now.  The entry stays, owned by
     * nobody, until xr_cont_release_unclaimed sweeps the table once. */
    for (int k = 0; k < XR_CONT_ENDS; k++) {
        fd[k] = x->fd[k];
        x->fd[k] = -1;
    }
    x->owner = 0;
    return 1;
}

void xr_cont_release_unclaimed(void)
{
    for (size_t i = 0; i < xr_ct.n; i++) {
        xr_cont_entry_t *x = &xr_ct.e[i];
        if (x->owner != xr_ct.adopting || xr_ct.adopting == 0)
            continue;
        /* The dead worker had finished it (its slot was free) but died
         * before saying so: end it as it would have. */
        for (int k = 0; k < XR_CONT_ENDS; k++)
            if (x->fd[k] >= 0) {
                shutdown(x->fd[k], SHUT_RDWR);
                close(x->fd[k]);
                x->fd[k] = -1;
            }
        xr_cont_drop(x->id);
    }
    /* Nothing in the table is this worker's business any more. */
    xr_cont_keep_only(0);
}

static int xr_cont_send(const xr_cont_msg_t *m, int fd)
{
    if (xr_ct.wfd < 0)
        return XR_ERROR;
    return xr_cont_sendfds(xr_ct.wfd, m, sizeof(*m), &fd, fd >= 0);
}

int xr_cont_hold(uint64_t id, int which, int fd)
{
    xr_cont_msg_t m = {XR_CONT_HOLD, (uint32_t) which, id};
    return xr_cont_send(&m, fd);
}

void xr_cont_drop(uint64_t id)
{
    xr_cont_msg_t m = {XR_CONT_DROP, 0, id};
    if (xr_cont_send(&m, -1) != XR_OK)
        xr_log(XR_LOG_ALERT, "continuity: cannot tell the master connection %llu ended: %s",
               (unsigned long long) id, strerror(errno));
}

void xr_cont_frozen(void)
{
    xr_cont_msg_t m = {XR_CONT_FROZEN, 0, 0};
    xr_cont_send(&m, -1);
}

int xr_cont_all_frozen(void)
{
    for (int i = 0; i < XR_CONT_CHANNELS; i++)
        if (xr_ct.ch[i].fd > 0 && xr_ct.ch[i].pid > 0 && !xr_ct.ch[i].frozen)
            return 0;
    return 1;
}
