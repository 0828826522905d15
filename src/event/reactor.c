/*
 * reactor.c: the inner epoll set and the posted queue.
 */
#include "core/xrayd.h"
#include "core/log.h"
#include "event/reactor.h"

#include <unistd.h>

#define XR_REACTOR_BATCH  256
#define XR_REACTOR_ROUNDS 4

static struct {
    int epfd;
    uv_poll_t poll;
    uv_idle_t idle; /* keeps the loop from blocking while posts wait */
    xr_list_t posted;
} xr_rx;

static void xr_reactor_run_posted(void)
{
    /* Take the queue as it is now: what runs may post itself again, and
     * that belongs to the next turn. */
    xr_list_t batch;
    xr_list_init(&batch);
    if (!xr_list_empty(&xr_rx.posted)) {
        batch.next = xr_rx.posted.next;
        batch.prev = xr_rx.posted.prev;
        batch.next->prev = &batch;
        batch.prev->next = &batch;
        xr_list_init(&xr_rx.posted);
    }
    while (!xr_list_empty(&batch)) {
        xr_posted_t *p = xr_container_of(batch.next, xr_posted_t, link);
        xr_list_remove(&p->link);
        p->queued = 0;
        p->cb(p);
    }
    if (xr_list_empty(&xr_rx.posted))
        uv_idle_stop(&xr_rx.idle);
}

static void xr_reactor_idle_cb(uv_idle_t *h)
{
    xr_reactor_run_posted();
}

static void xr_reactor_poll_cb(uv_poll_t *h, int status, int events)
{
    struct epoll_event ev[XR_REACTOR_BATCH];
    for (int round = 0; round < XR_REACTOR_ROUNDS; round++) {
        int n = epoll_wait(xr_rx.epfd, ev, XR_REACTOR_BATCH, 0);
        if (n < 0) {
            if (errno != EINTR)
                xr_log_errno(XR_LOG_ALERT, errno, "epoll_wait() failed");
            break;
        }
        for (int i = 0; i < n; i++) {
            xr_io_t *io = ev[i].data.ptr;
            io->cb(io, ev[i].events);
        }
        if (n < XR_REACTOR_BATCH)
            break;
    }
    xr_reactor_run_posted();
}

int xr_reactor_init(uv_loop_t *loop)
{
    xr_rx.epfd = epoll_create1(EPOLL_CLOEXEC);
    if (xr_rx.epfd < 0)
        return XR_ERROR;
    xr_list_init(&xr_rx.posted);
    uv_idle_init(loop, &xr_rx.idle);
    if (uv_poll_init(loop, &xr_rx.poll, xr_rx.epfd) != 0)
        return XR_ERROR;
    uv_poll_start(&xr_rx.poll, UV_READABLE, xr_reactor_poll_cb);
    return XR_OK;
}

int xr_io_add(xr_io_t *io, int fd, xr_io_cb cb)
{
    /* Set before epoll_ctl() can fail: the owner's close path finds it
     * (reactor.h). */
    io->fd = fd;
    io->cb = cb;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET, .data.ptr = io};
    return epoll_ctl(xr_rx.epfd, EPOLL_CTL_ADD, fd, &ev) == 0 ? XR_OK : XR_ERROR;
}

void xr_io_del(xr_io_t *io)
{
    if (io->fd >= 0)
        epoll_ctl(xr_rx.epfd, EPOLL_CTL_DEL, io->fd, NULL);
}

void xr_reactor_post(xr_posted_t *p, xr_posted_cb cb)
{
    if (p->queued)
        return;
    p->cb = cb;
    p->queued = 1;
    xr_list_insert_tail(&xr_rx.posted, &p->link);
    uv_idle_start(&xr_rx.idle, xr_reactor_idle_cb);
}

void xr_reactor_unpost(xr_posted_t *p)
{
    if (!p->queued)
        return;
    xr_list_remove(&p->link);
    p->queued = 0;
}
