/*
 * relay.c: the relay engine.
 *
 * Bytes move in pump(): write what is pending, then read more into the
 * same buffer, run the new bytes through the filter chain, repeat a few
 * times.  A direction stops reading when its buffer is full
 * (backpressure) and its buffer goes back to the pool as soon as it is
 * empty, so an idle relay holds no buffer at all.
 */
#include "core/xrayd.h"
#include "core/log.h"
#include "core/shm.h"
#include "relay/relay.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdio.h>
#include <sys/socket.h>
#include <unistd.h>

#define XR_PUMP_ROUNDS 8

static void xr_relay_poll_cb(uv_poll_t *h, int status, int events);
static void xr_relay_connect(xr_relay_t *r);
static void xr_relay_attempt_failed(xr_relay_t *r);
static void xr_relay_update(xr_relay_t *r);

/* ---- plain TCP ends ------------------------------------------------------ */

static ssize_t xr_tcp_read(xr_end_t *e, void *buf, size_t len)
{
    return read(e->fd, buf, len);
}

static ssize_t xr_tcp_write(xr_end_t *e, const void *buf, size_t len)
{
    return send(e->fd, buf, len, MSG_NOSIGNAL);
}

static int xr_tcp_shutdown_wr(xr_end_t *e)
{
    return shutdown(e->fd, SHUT_WR);
}

const xr_end_ops_t xr_end_tcp_ops = {xr_tcp_read, xr_tcp_write, xr_tcp_shutdown_wr, "tcp"};

/* ---- logging context ----------------------------------------------------- */

size_t xr__log_session_context(const xr_session_t *s, char *buf, size_t size)
{
    const xr_relay_t *r = s->_core;
    char c[64], u[64];
    int n;
    xr_addr_format(&s->client, c, sizeof(c));
    if (s->upstream.ss_family != 0)
        n = snprintf(buf, size, ", client: %s, relay: %s, upstream: %s%s%s", c, s->listener,
                     xr_addr_format(&s->upstream, u, sizeof(u)), r && r->action ? ", while " : "",
                     r && r->action ? r->action : "");
    else
        n = snprintf(buf, size, ", client: %s, relay: %s%s%s", c, s->listener,
                     r && r->action ? ", while " : "", r && r->action ? r->action : "");
    return n < 0 ? 0 : XR_MIN((size_t) n, size);
}

/* ---- life cycle ---------------------------------------------------------- */

static void *xr_relay_fstate(xr_relay_t *r, size_t i)
{
    return r->fstate ? r->fstate + r->rt->state_off[i] : NULL;
}

static void xr_relay_handle_closed(uv_handle_t *h)
{
    xr_relay_t *r = h->data;
    if (--r->pending_closes == 0)
        free(r);
}

static void xr_end_close(xr_relay_t *r, xr_end_t *e)
{
    if (e->inited) {
        uv_poll_stop(&e->poll);
        e->events = 0;
    }
    if (e->fd >= 0) {
        close(e->fd);
        e->fd = -1;
    }
    if (e->inited) {
        e->inited = 0;
        r->pending_closes++;
        uv_close((uv_handle_t *) &e->poll, xr_relay_handle_closed);
    }
}

static void xr_dir_release(xr_dir_t *d)
{
    xr_buf_put(d->buf);
    d->buf = NULL;
    free(d->holds);
    d->holds = NULL;
    d->nholds = 0;
}

void xr_relay_close(xr_relay_t *r, const char *fmt, ...)
{
    if (r->state == XR_RELAY_CLOSED)
        return;
    r->state = XR_RELAY_CLOSED;
    if (fmt != NULL && r->s.close_reason[0] == '\0') {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(r->s.close_reason, sizeof(r->s.close_reason), fmt, ap);
        va_end(ap);
    }
    r->s.end_ms = xr_wall_ms();
    uv_timer_stop(&r->timer);
    xr_end_close(r, &r->end[0]);
    xr_end_close(r, &r->end[1]);

    const xr_relay_conf_t *rc = r->conf;
    for (int i = 0; i < r->opened; i++)
        if (rc->filters[i].module->close)
            rc->filters[i].module->close(rc->filters[i].conf, xr_relay_fstate(r, (size_t) i),
                                         &r->s);
    for (size_t i = 0; i < rc->nfilters; i++)
        if (rc->filters[i].module->log)
            rc->filters[i].module->log(rc->filters[i].conf, xr_relay_fstate(r, i), &r->s);

    xr_debug_session(
        &r->s, "relay closed: %s, up %llu/%llu, down %llu/%llu", r->s.close_reason,
        (unsigned long long) r->s.read_total[0], (unsigned long long) r->s.written_total[0],
        (unsigned long long) r->s.read_total[1], (unsigned long long) r->s.written_total[1]);
    free(r->fstate);
    r->fstate = NULL;
    xr_dir_release(&r->dir[0]);
    xr_dir_release(&r->dir[1]);
    if (r->peer >= 0 && r->s.upstream.ss_family != 0)
        r->rt->peers[r->peer].active--;
    r->rt->active--;
    if (r->shm_counted) {
        extern int xr_worker_slot;
        atomic_fetch_sub(&xr_shm->active[r->conf->slot], 1);
        atomic_fetch_sub(&xr_shm->worker_active[xr_worker_slot][r->conf->slot], 1);
    }
    r->pending_closes++;
    uv_close((uv_handle_t *) &r->timer, xr_relay_handle_closed);
    xr_worker_relay_removed(r);
}

static void xr_relay_timer_cb(uv_timer_t *t)
{
    xr_relay_t *r = t->data;
    if (r->state == XR_RELAY_CONNECTING) {
        char a[64];
        xr_log_session(
            XR_LOG_WARN, &r->s, "upstream %s timed out (connect_timeout %lldms)",
            xr_addr_format((const struct sockaddr_storage *) &r->conf->upstream.items[r->peer].sa,
                           a, sizeof(a)),
            (long long) r->conf->connect_timeout);
        xr_relay_attempt_failed(r);
        return;
    }
    if (r->state != XR_RELAY_RUNNING)
        return;
    uint64_t now = uv_now(t->loop);
    int64_t idle = (int64_t) (now - (uint64_t) r->last_active);
    if (idle >= r->conf->idle_timeout) {
        xr_log_session(XR_LOG_INFO, &r->s, "idle for %lldms, closing", (long long) idle);
        xr_relay_close(r, "idle timeout");
        return;
    }
    uv_timer_start(&r->timer, xr_relay_timer_cb, (uint64_t) (r->conf->idle_timeout - idle), 0);
}

void xr_relay_start(uv_loop_t *loop, xr_relay_rt_t *rt, int fd,
                    const struct sockaddr_storage *client, uint64_t id)
{
    extern int xr_worker_slot;
    const xr_relay_conf_t *rc = rt->rc;
    xr_relay_t *r = xr_calloc(1, sizeof(*r));
    r->s.id = id;
    r->s._core = r;
    r->s.listener = rc->name;
    r->s.client = *client;
    r->s.start_ms = xr_wall_ms();
    r->rt = rt;
    r->conf = rc;
    r->peer = -1;
    r->end[0].fd = fd;
    r->end[1].fd = -1;
    r->end[0].ops = &xr_end_tcp_ops;
    r->end[1].ops = &xr_end_tcp_ops;
    r->last_active = (int64_t) uv_now(loop);
    socklen_t len = sizeof(r->s.local);
    getsockname(fd, (struct sockaddr *) &r->s.local, &len);
    if (rc->tcp_nodelay) {
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    }
    uv_timer_init(loop, &r->timer);
    r->timer.data = r;
    rt->active++;
    atomic_fetch_add(&xr_shm->active[rc->slot], 1);
    atomic_fetch_add(&xr_shm->worker_active[xr_worker_slot][rc->slot], 1);
    atomic_fetch_add(&xr_shm->accepted[rc->slot], 1);
    r->shm_counted = 1;
    xr_worker_relay_added(r);

    if (uv_poll_init_socket(loop, &r->end[0].poll, fd) != 0) {
        xr_relay_close(r, "cannot watch client socket");
        return;
    }
    r->end[0].poll.data = r;
    r->end[0].inited = 1;

    if (rt->state_total > 0)
        r->fstate = xr_calloc(1, rt->state_total);
    r->action = "opening filters";
    for (size_t i = 0; i < rc->nfilters; i++) {
        const xr_module_t *m = rc->filters[i].module;
        r->opened = (int) i + 1;
        if (m->open != NULL &&
            m->open(rc->filters[i].conf, xr_relay_fstate(r, i), &r->s) != XR_OK) {
            if (r->s.close_reason[0] == '\0')
                snprintf(r->s.close_reason, sizeof(r->s.close_reason), "denied by %s", m->name);
            xr_log_session(XR_LOG_NOTICE, &r->s, "connection denied: %s", r->s.close_reason);
            xr_relay_close(r, NULL);
            return;
        }
    }
    xr_relay_connect(r);
}

/* ---- connecting upstream ------------------------------------------------- */

static void xr_relay_connected(xr_relay_t *r)
{
    const xr_addr_t *a = &r->conf->upstream.items[r->peer];
    xr_upstream_result(r->rt, r->peer, 1, xr_mono_ms());
    memcpy(&r->s.upstream, &a->sa, a->len);
    r->rt->peers[r->peer].active++;
    r->state = XR_RELAY_RUNNING;
    r->action = "relaying";
    r->last_active = (int64_t) uv_now(r->timer.loop);
    uv_timer_start(&r->timer, xr_relay_timer_cb, (uint64_t) r->conf->idle_timeout, 0);
    xr_debug_session(&r->s, "connected to upstream");
    xr_relay_update(r);
}

static void xr_relay_retry_closed_cb(uv_handle_t *h)
{
    xr_relay_t *r = h->data;
    r->pending_closes--;
    if (r->state == XR_RELAY_CONNECTING)
        xr_relay_connect(r);
    else if (r->pending_closes == 0)
        free(r);
}

/* The attempt on end[1] failed: drop its socket, then try the next server
 * once the poll handle is closed (libuv cannot re-point a handle). */
static void xr_relay_attempt_failed(xr_relay_t *r)
{
    xr_end_t *e = &r->end[1];
    xr_upstream_result(r->rt, r->peer, 0, xr_mono_ms());
    uv_timer_stop(&r->timer);
    if (e->inited) {
        uv_poll_stop(&e->poll);
        close(e->fd);
        e->fd = -1;
        e->inited = 0;
        e->events = 0;
        r->pending_closes++;
        uv_close((uv_handle_t *) &e->poll, xr_relay_retry_closed_cb);
        return;
    }
    if (e->fd >= 0) {
        close(e->fd);
        e->fd = -1;
    }
    xr_relay_connect(r);
}

static void xr_relay_connect_failed(xr_relay_t *r, int err)
{
    char a[64];
    xr_addr_format(&r->conf->upstream.items[r->peer].sa, a, sizeof(a));
    xr_log_session(XR_LOG_ERR, &r->s, "connect() to upstream %s failed (%d: %s)", a, err,
                   strerror(err));
    xr_relay_attempt_failed(r);
}

static void xr_relay_connect(xr_relay_t *r)
{
    const xr_relay_conf_t *rc = r->conf;
    xr_end_t *e = &r->end[1];
    uv_loop_t *loop = r->timer.loop;
    int64_t max_tries = rc->upstream_tries ? rc->upstream_tries : (int64_t) rc->upstream.n;

    r->action = "connecting to upstream";
    while (r->tries < max_tries) {
        int p = xr_upstream_pick(r->rt, r->tried, &r->s.client);
        if (p < 0) {
            if (r->tried == 0)
                break;
            r->tried = 0; /* upstream_tries above the server count: go round again */
            continue;
        }
        r->peer = p;
        r->tries++;
        if (p < 64)
            r->tried |= (uint64_t) 1 << p;
        const xr_addr_t *a = &rc->upstream.items[p];
        int fd = socket(a->sa.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            int err = errno;
            xr_log_session(XR_LOG_ERR, &r->s, "socket() failed (%d: %s)", err, strerror(err));
            xr_relay_close(r, "cannot create upstream socket");
            return;
        }
        if (rc->tcp_nodelay) {
            int one = 1;
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        }
        e->fd = fd;
        int rv = connect(fd, (const struct sockaddr *) &a->sa, a->len);
        if (rv != 0 && errno != EINPROGRESS) {
            int err = errno;
            xr_relay_connect_failed(r, err);
            return; /* connect_failed moves on to the next server */
        }
        if (uv_poll_init_socket(loop, &e->poll, fd) != 0) {
            close(fd);
            e->fd = -1;
            xr_relay_close(r, "cannot watch upstream socket");
            return;
        }
        e->poll.data = r;
        e->inited = 1;
        if (rv == 0) {
            xr_relay_connected(r);
            return;
        }
        e->events = UV_WRITABLE;
        uv_poll_start(&e->poll, UV_WRITABLE, xr_relay_poll_cb);
        uv_timer_start(&r->timer, xr_relay_timer_cb, (uint64_t) rc->connect_timeout, 0);
        return;
    }
    xr_log_session(XR_LOG_ERR, &r->s, "no upstream server could be reached after %d tries",
                   r->tries);
    xr_relay_close(r, "upstream connect failed");
}

/* ---- the filter chain ---------------------------------------------------- */

/* Run the chain over the bytes that just arrived at data[off, end).  A
 * filter that holds keeps its region; bytes arriving later pass the
 * filters before it and are then appended to its region, so every filter
 * sees every byte once, except what it holds, which it sees again with
 * more.  Returns XR_OK, or XR_ERROR if the relay was closed. */
static int xr_relay_filter(xr_relay_t *r, int d, uint32_t off)
{
    xr_dir_t *dr = &r->dir[d];
    xr_buf_t *b = dr->buf;
    const xr_relay_conf_t *rc = r->conf;
    int nf = (int) rc->nfilters;

    if (!r->rt->has_data_filters) {
        b->filt = b->end;
        return XR_OK;
    }
    uint32_t rstart = off;
    int idx = 0;
    for (;;) {
        int limit = dr->nholds ? dr->holds[dr->nholds - 1].idx : nf;
        for (int i = idx; i < limit && b->end > rstart; i++) {
            const xr_filter_conf_t *f = &rc->filters[i];
            if (f->module->data == NULL)
                continue;
            xr_chunk_t c = {b->data + rstart, b->end - rstart, b->cap - rstart};
            xr_filter_rc_t frc =
                f->module->data(f->conf, xr_relay_fstate(r, (size_t) i), &r->s, d, &c);
            if (c.len > c.cap) {
                xr_log_session(XR_LOG_ALERT, &r->s, "filter \"%s\" overran its chunk",
                               f->module->name);
                xr_relay_close(r, "filter %s failed", f->module->name);
                return XR_ERROR;
            }
            b->end = rstart + (uint32_t) c.len;
            switch (frc) {
            case XR_FILTER_PASS: break;
            case XR_FILTER_HOLD:
                if (dr->holds == NULL)
                    dr->holds = xr_calloc((size_t) nf, sizeof(xr_hold_t));
                dr->holds[dr->nholds].off = rstart;
                dr->holds[dr->nholds].idx = i;
                dr->nholds++;
                b->filt = dr->holds[0].off;
                return XR_OK;
            case XR_FILTER_DROP: b->end = rstart; break;
            case XR_FILTER_CLOSE:
            default:
                if (r->s.close_reason[0] == '\0')
                    snprintf(r->s.close_reason, sizeof(r->s.close_reason), "closed by %s",
                             f->module->name);
                xr_relay_close(r, NULL);
                return XR_ERROR;
            }
        }
        if (dr->nholds == 0 || b->end == rstart)
            break;
        /* Reached the filter that holds older bytes: it now gets those
         * and these together. */
        xr_hold_t *h = &dr->holds[--dr->nholds];
        rstart = h->off;
        idx = h->idx;
    }
    b->filt = dr->nholds ? dr->holds[0].off : b->end;
    return XR_OK;
}

/* ---- moving bytes -------------------------------------------------------- */

static const char *xr_end_name(int which)
{
    return which == 0 ? "client" : "upstream";
}

static void xr_relay_io_error(xr_relay_t *r, const char *op, int which, int err)
{
    int level = (err == ECONNRESET || err == EPIPE) ? XR_LOG_INFO : XR_LOG_ERR;
    xr_log_session((xr_log_level_t) level, &r->s, "%s %s failed (%d: %s)", op, xr_end_name(which),
                   err, strerror(err));
    xr_relay_close(r, "%s %s: %s", op, xr_end_name(which), strerror(err));
}

static void xr_dir_compact(xr_dir_t *dr)
{
    uint32_t moved = xr_buf_compact(dr->buf);
    for (int i = 0; i < dr->nholds; i++)
        dr->holds[i].off -= moved;
}

/* Room to read into: free space at the end, or enough already written at
 * the front that moving the rest down is worth it. */
static int xr_buf_has_room(const xr_buf_t *b)
{
    return b == NULL || b->end < b->cap ||
           (b->start > 0 && (b->start >= b->cap / 2 || b->filt == b->start));
}

/* Move bytes in direction d.  Returns XR_ERROR if the relay closed. */
static int xr_relay_pump(xr_relay_t *r, int d)
{
    xr_dir_t *dr = &r->dir[d];
    xr_end_t *src = &r->end[d], *dst = &r->end[1 - d];
    int short_read = 0, blocked = 0;

    for (int round = 0; round < XR_PUMP_ROUNDS; round++) {
        xr_buf_t *b = dr->buf;
        if (!blocked && b != NULL && b->filt > b->start) {
            ssize_t n = dst->ops->write(dst, b->data + b->start, b->filt - b->start);
            if (n < 0) {
                if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
                    xr_relay_io_error(r, "writing to", 1 - d, errno);
                    return XR_ERROR;
                }
                blocked = 1;
            } else {
                b->start += (uint32_t) n;
                r->s.written_total[d] += (uint64_t) n;
                r->last_active = (int64_t) uv_now(r->timer.loop);
                /* A short write means the far side is full: keep reading
                 * into the free space only. */
                if (b->filt > b->start)
                    blocked = 1;
            }
        }
        if (b != NULL && b->start == b->end) {
            xr_buf_put(b);
            dr->buf = b = NULL;
        }
        if (short_read || src->rd_eof)
            break;
        if (b == NULL) {
            b = dr->buf = xr_buf_get((size_t) r->conf->buffer_size);
            if (b == NULL) {
                xr_log_session(XR_LOG_CRIT, &r->s, "cannot allocate a %lld byte buffer",
                               (long long) r->conf->buffer_size);
                xr_relay_close(r, "out of memory");
                return XR_ERROR;
            }
        }
        if (b->end == b->cap) {
            if (b->start > 0 && (b->start >= b->cap / 2 || b->filt == b->start)) {
                xr_dir_compact(dr);
            } else if (b->filt == b->start) {
                xr_log_session(XR_LOG_WARN, &r->s,
                               "filters held a whole buffer (%u bytes) without passing it", b->cap);
                xr_relay_close(r, "filter held more than buffer_size");
                return XR_ERROR;
            } else {
                break; /* full: backpressure until the far side drains */
            }
        }
        size_t want = b->cap - b->end;
        ssize_t n = src->ops->read(src, b->data + b->end, want);
        if (n > 0) {
            uint32_t off = b->end;
            b->end += (uint32_t) n;
            r->s.read_total[d] += (uint64_t) n;
            r->last_active = (int64_t) uv_now(r->timer.loop);
            if (xr_relay_filter(r, d, off) != XR_OK)
                return XR_ERROR;
            if ((size_t) n < want)
                short_read = 1; /* drained the socket: write, then wait */
            continue;
        }
        if (n == 0) {
            src->rd_eof = 1;
            continue; /* one more round writes what is pending */
        }
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            break;
        if (errno == EINTR)
            continue;
        xr_relay_io_error(r, "reading from", d, errno);
        return XR_ERROR;
    }

    if (src->rd_eof && !dr->done) {
        xr_buf_t *b = dr->buf;
        if (b != NULL && b->filt < b->end) {
            /* A filter still holds bytes it never passed: they are not
             * forwarded unchecked. */
            xr_log_session(XR_LOG_INFO, &r->s, "%u held bytes discarded at end of stream from %s",
                           b->end - b->filt, xr_end_name(d));
            b->end = b->filt;
            dr->nholds = 0;
        }
        if (b == NULL || b->start == b->end) {
            xr_buf_put(b);
            dr->buf = NULL;
            if (!dst->wr_shut) {
                dst->wr_shut = 1;
                if (dst->ops->shutdown_wr(dst) != 0 && errno != ENOTCONN) {
                    xr_relay_io_error(r, "shutting down", 1 - d, errno);
                    return XR_ERROR;
                }
            }
            dr->done = 1;
        }
    }
    if (r->dir[0].done && r->dir[1].done) {
        xr_relay_close(r, "done");
        return XR_ERROR;
    }
    return XR_OK;
}

static void xr_end_want(xr_relay_t *r, xr_end_t *e, int events)
{
    if (!e->inited || e->events == events)
        return;
    e->events = events;
    if (events == 0)
        uv_poll_stop(&e->poll);
    else
        uv_poll_start(&e->poll, events, xr_relay_poll_cb);
}

static void xr_relay_update(xr_relay_t *r)
{
    for (int w = 0; w < 2; w++) {
        xr_end_t *e = &r->end[w];
        const xr_dir_t *in = &r->dir[w], *out = &r->dir[1 - w];
        int ev = 0;
        const xr_buf_t *b = in->buf;
        if (!e->rd_eof && xr_buf_has_room(b))
            ev |= UV_READABLE;
        if (out->buf != NULL && out->buf->filt > out->buf->start)
            ev |= UV_WRITABLE;
        xr_end_want(r, e, ev);
    }
}

static void xr_relay_poll_cb(uv_poll_t *h, int status, int events)
{
    xr_relay_t *r = h->data;
    int which = h == &r->end[1].poll;
    xr_end_t *e = &r->end[which];

    if (r->state == XR_RELAY_CLOSED)
        return;
    if (r->state == XR_RELAY_CONNECTING) {
        int err = 0;
        socklen_t len = sizeof(err);
        if (status < 0)
            err = -status;
        else if (getsockopt(e->fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0)
            err = errno;
        if (err != 0) {
            xr_relay_connect_failed(r, err);
            return;
        }
        uv_timer_stop(&r->timer);
        xr_relay_connected(r);
        return;
    }
    if (status < 0) {
        xr_relay_io_error(r, "polling", which, -status);
        return;
    }
    /* Readable: bytes from this end; writable: bytes waiting for it. */
    if ((events & (UV_READABLE | UV_DISCONNECT)) && xr_relay_pump(r, which) != XR_OK)
        return;
    if ((events & UV_WRITABLE) && xr_relay_pump(r, 1 - which) != XR_OK)
        return;
    xr_relay_update(r);
}
