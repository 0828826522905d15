/*
 * relay.c: the relay engine.
 *
 * Bytes move in pump(): write what is pending, then read more into the
 * same buffer, run the new bytes through the filter chain, repeat a few
 * times.  Sockets are edge-triggered (event/reactor.h): an end remembers
 * it is readable or writable until a call says EAGAIN.  A direction stops
 * reading when its buffer is full (backpressure) and its buffer goes back
 * to the pool as soon as it is empty, so an idle relay holds no buffer.
 */
#include "core/xrayd.h"
#include "core/log.h"
#include "core/worker.h"
#include "relay/conn.h"
#include "relay/relay.h"
#include "tls/tls.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdio.h>
#include <sys/socket.h>
#include <unistd.h>

#define XR_PUMP_ROUNDS 8

static void xr_relay_io_cb(xr_io_t *io, uint32_t events);
static void xr_relay_open(xr_relay_t *r);
static void xr_relay_connect(xr_relay_t *r);
static void xr_relay_attempt_failed(xr_relay_t *r);

/* ---- plain TCP ends ------------------------------------------------------ */

/* Each end keeps its own readiness flags: only it knows what a short
 * count means (for TLS, fewer cleartext bytes than asked is normal). */
static ssize_t xr_tcp_read(xr_end_t *e, void *buf, size_t len)
{
    ssize_t n = read(e->io.fd, buf, len);
    /* A short read drained the socket; after a FIN keep reading until
     * read() says 0, or the EOF would never be seen. */
    if (n > 0 && (size_t) n < len && !e->rdhup)
        e->readable = 0;
    return n;
}

static ssize_t xr_tcp_write(xr_end_t *e, const void *buf, size_t len)
{
    ssize_t n = send(e->io.fd, buf, len, MSG_NOSIGNAL);
    /* A short write means the socket is full: the next EPOLLOUT edge says
     * when it has room. */
    if (n >= 0 && (size_t) n < len)
        e->writable = 0;
    return n;
}

static int xr_tcp_shutdown_wr(xr_end_t *e)
{
    return shutdown(e->io.fd, SHUT_WR);
}

const xr_end_ops_t xr_end_tcp_ops = {xr_tcp_read, xr_tcp_write, xr_tcp_shutdown_wr, NULL, NULL,
                                     NULL,        "tcp"};

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

/* The timer is the relay's last handle: free when it is closed, which is
 * after the current batch of socket events, so none can point at freed
 * memory. */
static void xr_relay_timer_closed(uv_handle_t *h)
{
    free(h->data);
}

/* Close an end's socket.  cut: the relay ended on an error, so the peer
 * gets a reset, not a FIN it could take for a normal end of stream. */
static void xr_end_close_how(xr_end_t *e, int cut)
{
    if (e->io.fd >= 0) {
        xr_sock_before_close(e->io.fd, cut);
        close(e->io.fd); /* also leaves the epoll set */
        e->io.fd = -1;
    }
    e->readable = e->writable = e->rdhup = 0;
}

static void xr_end_close(xr_end_t *e)
{
    xr_end_close_how(e, 0);
}

/* Release the end's own state (TLS); after the log hooks, which may read
 * the identity it holds. */
static void xr_end_free(xr_end_t *e)
{
    if (e->ops->free != NULL)
        e->ops->free(e);
    e->ops = &xr_end_tcp_ops;
}

static void xr_dir_release(xr_dir_t *d)
{
    xr_buf_put(d->buf);
    d->buf = NULL;
    xr_chain_release(&d->chain);
}

/* Add what the relay read since the last call to its block's shared
 * counters: once per pump, not per read, so the atomics stay off the hot
 * path while `xray status` still sees a live connection's bytes. */
static void xr_relay_count(xr_relay_t *r)
{
    for (int d = 0; d < 2; d++) {
        uint64_t n = r->s.read_total[d] - r->counted[d];
        if (n == 0)
            continue;
        atomic_fetch_add_explicit(&r->rt->ctr.bytes[d], n, memory_order_relaxed);
        r->counted[d] = r->s.read_total[d];
    }
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
    xr_reactor_unpost(&r->posted);
    xr_end_close_how(&r->end[0], r->cut);
    xr_end_close_how(&r->end[1], r->cut);

    if (!r->moved) {
        xr_chain_close(r->rt, r->fstate, &r->s, r->opened);
        xr_debug_session(
            &r->s, "relay closed: %s, up %llu/%llu, down %llu/%llu", r->s.close_reason,
            (unsigned long long) r->s.read_total[0], (unsigned long long) r->s.written_total[0],
            (unsigned long long) r->s.read_total[1], (unsigned long long) r->s.written_total[1]);
    }
    free(r->fstate);
    r->fstate = NULL;
    r->s.identity = NULL;
    xr_end_free(&r->end[0]);
    xr_end_free(&r->end[1]);
    xr_dir_release(&r->dir[0]);
    xr_dir_release(&r->dir[1]);
    /* A moved connection's server count and its reserved slot in
     * the block's active count went with it. */
    if (r->peer >= 0 && r->s.upstream.ss_family != 0 && !r->moved)
        r->rt->peers[r->peer].active--;
    r->rt->active--;
    xr_relay_count(r); /* the remainder since the last pump */
    if (r->shm_counted) {
        if (!r->moved)
            atomic_fetch_sub(r->rt->ctr.active, 1);
        atomic_fetch_sub(r->rt->ctr.worker_active, 1);
    }
    uv_close((uv_handle_t *) &r->timer, xr_relay_timer_closed);
    xr_worker_relay_removed(r);
}

static void xr_relay_timer_cb(uv_timer_t *t)
{
    xr_relay_t *r = t->data;
    if (r->state == XR_RELAY_CONNECTING) {
        char a[64];
        xr_log_session(XR_LOG_WARN, &r->s, "upstream %s timed out (connect_timeout %lldms)",
                       xr_addr_format(&r->conf->upstream.items[r->peer].sa, a, sizeof(a)),
                       (long long) r->conf->connect_timeout);
        xr_relay_attempt_failed(r);
        return;
    }
    if (r->state == XR_RELAY_TLS_ACCEPT || r->state == XR_RELAY_TLS_CONNECT) {
        int up = r->state == XR_RELAY_TLS_CONNECT;
        xr_log_session(XR_LOG_INFO, &r->s, "TLS handshake with the %s timed out",
                       up ? "upstream" : "client");
        xr_relay_close(r, "TLS handshake timeout");
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

/* A relay of rt's block for a client, counted in the worker and in the
 * shared counters (the caller reserved its place in rt->ctr.active). */
static xr_relay_t *xr_relay_new(uv_loop_t *loop, xr_relay_rt_t *rt,
                                const struct sockaddr_storage *client, uint64_t id)
{
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
    for (int i = 0; i < 2; i++) {
        r->end[i].io.fd = -1;
        r->end[i].relay = r;
        r->end[i].ops = &xr_end_tcp_ops;
    }
    r->last_active = (int64_t) uv_now(loop);
    uv_timer_init(loop, &r->timer);
    r->timer.data = r;
    rt->active++;
    atomic_fetch_add(rt->ctr.worker_active, 1);
    atomic_fetch_add(rt->ctr.accepted, 1);
    r->shm_counted = 1;
    xr_worker_relay_added(r);
    return r;
}

void xr_relay_start(uv_loop_t *loop, xr_relay_rt_t *rt, int fd,
                    const struct sockaddr_storage *client, uint64_t id)
{
    const xr_relay_conf_t *rc = rt->rc;
    xr_relay_t *r = xr_relay_new(loop, rt, client, id);
    r->state = XR_RELAY_CONNECTING;
    if (rt->has_log_hooks) {
        socklen_t len = sizeof(r->s.local);
        getsockname(fd, (struct sockaddr *) &r->s.local, &len);
    }
    if (rc->tcp_nodelay) {
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    }

    if (xr_io_add(&r->end[0].io, fd, xr_relay_io_cb) != XR_OK) {
        /* end[0] holds fd now: xr_relay_close closes it. */
        int err = errno;
        xr_log_session(XR_LOG_ERR, &r->s, "cannot watch the client socket (%d: %s)", err,
                       strerror(err));
        xr_relay_close(r, "cannot watch client socket");
        return;
    }

    if (rc->tls != NULL) {
        r->state = XR_RELAY_TLS_ACCEPT;
        r->action = "TLS handshake with the client";
        if (xr_tls_end_start(&r->end[0], rc->tls) != XR_OK) {
            xr_relay_close(r, "out of memory");
            return;
        }
        uv_timer_start(&r->timer, xr_relay_timer_cb, (uint64_t) rc->connect_timeout, 0);
        return; /* the ClientHello's edge continues in xr_relay_io_cb */
    }
    xr_relay_open(r);
}

/* The client is known (and authenticated, with TLS): run the filters'
 * open hooks, then go upstream. */
static int xr_relay_open_filters(xr_relay_t *r)
{
    r->fstate = xr_chain_state_new(r->rt);
    r->action = "opening filters";
    if (xr_chain_open(r->rt, r->fstate, &r->s, &r->opened) != XR_OK) {
        xr_log_session(XR_LOG_NOTICE, &r->s, "connection denied: %s", r->s.close_reason);
        xr_relay_close(r, NULL);
        return XR_ERROR;
    }
    return XR_OK;
}

static void xr_relay_open(xr_relay_t *r)
{
    if (xr_relay_open_filters(r) == XR_OK)
        xr_relay_connect(r);
}

/* ---- connecting upstream ------------------------------------------------- */

static int xr_relay_pump(xr_relay_t *r, int d);

/* Move bytes both ways, `first` first, stopping if the relay closes. */
static void xr_relay_pump_both(xr_relay_t *r, int first)
{
    if (xr_relay_pump(r, first) == XR_OK)
        xr_relay_pump(r, 1 - first);
}

static void xr_relay_running(xr_relay_t *r);
static int xr_relay_tls_step(xr_relay_t *r, int which);

static void xr_relay_connected(xr_relay_t *r)
{
    const xr_addr_t *a = &r->conf->upstream.items[r->peer];
    xr_upstream_result(r->rt, r->peer, 1, xr_mono_ms());
    memcpy(&r->s.upstream, &a->sa, a->len);
    r->rt->peers[r->peer].active++;
    if (r->conf->upstream_tls != NULL) {
        r->state = XR_RELAY_TLS_CONNECT;
        r->action = "TLS handshake with the upstream";
        if (xr_tls_end_start(&r->end[1], r->conf->upstream_tls) != XR_OK) {
            xr_relay_close(r, "out of memory");
            return;
        }
        uv_timer_start(&r->timer, xr_relay_timer_cb, (uint64_t) r->conf->connect_timeout, 0);
        xr_relay_tls_step(r, 1); /* the ClientHello goes out now */
        return;
    }
    xr_relay_running(r);
}

/* A block with continuity whose TLS handshakes are done goes on in the
 * ring engine (conn.c), whose snapshot carries it across a worker's
 * death; h (may be NULL) brings the cleartext already read and the
 * protocol's unfiltered prefix.  1 when it moved (r is closed, quietly);
 * 0 when it cannot (it stays here, without continuity, and the log says
 * why). */
static int xr_relay_move(xr_relay_t *r, const xr_conn_handoff_t *with)
{
    char why[96];
    for (int i = 0; i < 2; i++)
        if (r->end[i].ops != &xr_end_tcp_ops && !xr_tls_end_movable(&r->end[i], why, sizeof(why))) {
            xr_log_session(XR_LOG_INFO, &r->s, "no continuity for this connection: %s", why);
            return 0;
        }
    xr_rec_t rec[2];
    xr_conn_handoff_t h = {0};
    if (with != NULL)
        h = *with;
    h.s = &r->s;
    h.fstate = r->fstate;
    h.opened = r->opened;
    h.peer = r->peer;
    h.tried = r->tried;
    h.tries = (uint32_t) r->tries;
    for (int i = 0; i < 2; i++) {
        xr_end_t *e = &r->end[i];
        if (e->ops != &xr_end_tcp_ops) {
            xr_tls_end_detach(e, &rec[i]);
            h.rec[i] = &rec[i];
        }
        xr_io_del(&e->io);
        h.fd[i] = e->io.fd;
        e->io.fd = -1;
    }
    r->fstate = NULL;
    r->opened = 0;
    r->moved = 1;
    xr_conn_take(r->timer.loop, r->rt, &h); /* copies the identity the TLS end holds */
    xr_relay_close(r, NULL);
    return 1;
}

static void xr_relay_running(xr_relay_t *r)
{
    if (r->conf->continuity && xr_relay_move(r, NULL))
        return;
    r->state = XR_RELAY_RUNNING;
    r->action = "relaying";
    r->last_active = (int64_t) uv_now(r->timer.loop);
    uv_timer_start(&r->timer, xr_relay_timer_cb, (uint64_t) r->conf->idle_timeout, 0);
    xr_debug_session(&r->s, "connected to upstream");
    /* The client may have sent while we connected: its edge is long gone. */
    r->end[0].readable = 1;
    xr_relay_pump_both(r, XR_DIR_UP);
}

/* The attempt on end[1] failed: drop its socket, try the next server. */
static void xr_relay_attempt_failed(xr_relay_t *r)
{
    xr_upstream_result(r->rt, r->peer, 0, xr_mono_ms());
    uv_timer_stop(&r->timer);
    xr_end_close(&r->end[1]);
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
        e->io.fd = fd;
        e->readable = e->writable = e->rdhup = 0;
        if (connect(fd, (const struct sockaddr *) &a->sa, a->len) != 0 && errno != EINPROGRESS) {
            xr_relay_connect_failed(r, errno);
            return; /* it moved on to the next server */
        }
        if (xr_io_add(&e->io, fd, xr_relay_io_cb) != XR_OK) {
            int err = errno;
            xr_end_close(e);
            xr_log_session(XR_LOG_ERR, &r->s, "cannot watch the upstream socket (%d: %s)", err,
                           strerror(err));
            xr_relay_close(r, "cannot watch upstream socket");
            return;
        }
        /* Connected or not, the edge for EPOLLOUT tells. */
        uv_timer_start(&r->timer, xr_relay_timer_cb, (uint64_t) rc->connect_timeout, 0);
        return;
    }
    xr_log_session(XR_LOG_ERR, &r->s, "no upstream server could be reached after %d tries",
                   r->tries);
    xr_relay_close(r, "upstream connect failed");
}

/* ---- the filter chain ---------------------------------------------------- */

static void xr_relay_posted_cb(xr_posted_t *p);

/* A filter answered the sender of direction d: the answer (the end of
 * d's buffer) goes back after what was already on its way there, what
 * passed before it goes on, and neither side is read again, so both get
 * their bytes and then a FIN.  XR_OK, or XR_ERROR if the relay closed. */
static int xr_relay_answer(xr_relay_t *r, int d)
{
    xr_buf_t *b = r->dir[d].buf;
    xr_dir_t *back = &r->dir[1 - d];
    uint32_t alen = b->end - b->filt;
    if (back->buf == NULL)
        back->buf = xr_buf_get((size_t) r->conf->buffer_size);
    xr_buf_t *k = back->buf;
    if (k != NULL) {
        xr_chain_eof(&back->chain, k); /* held there: never passed, never sent */
        if (k->cap - k->end < alen)
            xr_chain_moved(&back->chain, xr_buf_compact(k));
    }
    if (k == NULL || k->cap - k->end < alen) {
        xr_log_session(XR_LOG_WARN, &r->s, "no room to send a filter's answer of %u bytes", alen);
        r->cut = 1;
        xr_relay_close(r, NULL);
        return XR_ERROR;
    }
    memcpy(k->data + k->end, b->data + b->filt, alen);
    k->end += alen;
    k->filt = k->end;
    b->end = b->filt;
    r->end[0].rd_eof = r->end[1].rd_eof = 1;
    xr_log_session(XR_LOG_INFO, &r->s, "%s: %u bytes back to the %s, then closing",
                   r->s.close_reason, alen, d == XR_DIR_UP ? "client" : "upstream");
    /* The other direction may not be pumped again in this batch. */
    xr_reactor_post(&r->posted, xr_relay_posted_cb);
    return XR_OK;
}

/* Run the chain over the bytes that just arrived at data[off, end).
 * Returns XR_OK, or XR_ERROR if the relay was closed. */
static int xr_relay_filter(xr_relay_t *r, int d, uint32_t off)
{
    xr_dir_t *dr = &r->dir[d];
    if (dr->raw > 0) {
        /* The protocol's own bytes open the stream, before any filter
         * held anything: they pass unseen, the application's start after. */
        uint32_t k = XR_MIN(dr->raw, dr->buf->end - off);
        dr->raw -= k;
        off += k;
        if (off == dr->buf->end) {
            dr->buf->filt = dr->buf->end;
            return XR_OK;
        }
    }
    int rc = xr_chain_run(r->rt, r->fstate, &r->s, d, &dr->chain, dr->buf, off);
    if (rc == XR_CHAIN_ANSWER)
        return xr_relay_answer(r, d);
    if (rc != XR_OK) {
        r->cut = 1;
        xr_relay_close(r, NULL);
        return XR_ERROR;
    }
    return XR_OK;
}

/* ---- moving bytes -------------------------------------------------------- */

static const char *xr_end_name(int which)
{
    return which == 0 ? "client" : "upstream";
}

static void xr_relay_io_error(xr_relay_t *r, const char *op, int which, int err)
{
    xr_end_t *e = &r->end[which];
    const char *why = e->ops->why ? e->ops->why(e) : NULL;
    /* Peers that vanish or misbehave are the peers' business: info.  A
     * failure of our own making is an error. */
    int level = (err == ECONNRESET || err == EPIPE || why != NULL) ? XR_LOG_INFO : XR_LOG_ERR;
    r->cut = 1;
    if (why != NULL) {
        xr_log_session((xr_log_level_t) level, &r->s, "%s %s failed: %s", op, xr_end_name(which),
                       why);
        xr_relay_close(r, "%s %s: %s", op, xr_end_name(which), why);
        return;
    }
    xr_log_session((xr_log_level_t) level, &r->s, "%s %s failed (%d: %s)", op, xr_end_name(which),
                   err, strerror(err));
    xr_relay_close(r, "%s %s: %s", op, xr_end_name(which), strerror(err));
}

static void xr_dir_compact(xr_dir_t *dr)
{
    xr_chain_moved(&dr->chain, xr_buf_compact(dr->buf));
}

static void xr_relay_posted_cb(xr_posted_t *p)
{
    xr_relay_t *r = xr_container_of(p, xr_relay_t, posted);
    if (r->state == XR_RELAY_RUNNING)
        xr_relay_pump_both(r, XR_DIR_UP);
}

/* Move bytes in direction d as far as the sockets allow.  Returns XR_ERROR
 * if the relay closed. */
static int xr_relay_pump(xr_relay_t *r, int d)
{
    xr_dir_t *dr = &r->dir[d];
    xr_end_t *src = &r->end[d], *dst = &r->end[1 - d];
    int round;

    if (dst->ops->flush != NULL && dst->writable && dst->ops->flush(dst) != 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK) {
            xr_relay_io_error(r, "writing to", 1 - d, errno);
            return XR_ERROR;
        }
        dst->writable = 0;
    }
    for (round = 0; round < XR_PUMP_ROUNDS; round++) {
        xr_buf_t *b = dr->buf;
        if (b != NULL && b->filt > b->start && dst->writable) {
            ssize_t n = dst->ops->write(dst, b->data + b->start, b->filt - b->start);
            if (n < 0) {
                if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
                    xr_relay_io_error(r, "writing to", 1 - d, errno);
                    return XR_ERROR;
                }
                if (errno != EINTR)
                    dst->writable = 0;
            } else {
                b->start += (uint32_t) n;
                r->s.written_total[d] += (uint64_t) n;
                r->last_active = (int64_t) uv_now(r->timer.loop);
            }
        }
        if (b != NULL && b->start == b->end) {
            xr_buf_put(b);
            dr->buf = b = NULL;
        }
        if (!src->readable || src->rd_eof)
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
            continue;
        }
        if (n == 0 && src->err != 0) {
            xr_relay_io_error(r, "reading from", d, src->err);
            return XR_ERROR;
        }
        if (n == 0) {
            src->rd_eof = 1;
            continue; /* one more round writes what is pending */
        }
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            src->readable = 0;
            continue;
        }
        if (errno == ENOBUFS) {
            /* Not room for one more record: make room, or wait for the far
             * side to drain (the socket stays readable). */
            if (b->start > 0 && b->filt == b->end) {
                xr_dir_compact(dr);
                continue;
            }
            break;
        }
        if (errno == EINTR)
            continue;
        xr_relay_io_error(r, "reading from", d, errno);
        return XR_ERROR;
    }
    /* Out of rounds while still moving: let other relays run first, then
     * come back.  No new edge arrives for bytes already in a socket, nor
     * for a socket that is still writable. */
    if (round == XR_PUMP_ROUNDS)
        xr_reactor_post(&r->posted, xr_relay_posted_cb);
    xr_relay_count(r);

    if (src->rd_eof && !dr->done) {
        xr_buf_t *b = dr->buf;
        /* Bytes a filter still holds were never passed: they are not
         * forwarded unchecked. */
        uint32_t held = xr_chain_eof(&dr->chain, b);
        if (held > 0)
            xr_log_session(XR_LOG_INFO, &r->s, "%u held bytes discarded at end of stream from %s",
                           held, xr_end_name(d));
        if (b == NULL || b->start == b->end) {
            xr_buf_put(b);
            dr->buf = NULL;
            if (!dst->wr_shut) {
                if (dst->ops->shutdown_wr(dst) != 0 && errno != ENOTCONN) {
                    if (errno == EAGAIN || errno == EWOULDBLOCK) {
                        dst->writable = 0; /* close_notify waits for room */
                        goto out;
                    }
                    xr_relay_io_error(r, "shutting down", 1 - d, errno);
                    return XR_ERROR;
                }
                dst->wr_shut = 1;
            }
            dr->done = 1;
        }
    }
out:
    if (r->dir[0].done && r->dir[1].done) {
        xr_relay_close(r, "done");
        return XR_ERROR;
    }
    return XR_OK;
}

static void xr_relay_io_cb(xr_io_t *io, uint32_t events)
{
    xr_end_t *e = xr_container_of(io, xr_end_t, io);
    xr_relay_t *r = e->relay;
    int which = e == &r->end[1];

    if (r->state == XR_RELAY_CLOSED)
        return;
    if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))
        e->readable = 1;
    if (events & (EPOLLOUT | EPOLLHUP | EPOLLERR))
        e->writable = 1;
    if (events & (EPOLLRDHUP | EPOLLHUP))
        e->rdhup = 1;

    if (r->state == XR_RELAY_TLS_ACCEPT || r->state == XR_RELAY_TLS_CONNECT) {
        if (which == (r->state == XR_RELAY_TLS_CONNECT))
            xr_relay_tls_step(r, which);
        return;
    }
    if (r->state == XR_RELAY_CONNECTING) {
        if (!which || !e->writable)
            return; /* client bytes wait in the kernel until we are connected */
        int err = 0;
        socklen_t len = sizeof(err);
        if (getsockopt(e->io.fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0)
            err = errno;
        if (err != 0) {
            xr_relay_connect_failed(r, err);
            return;
        }
        uv_timer_stop(&r->timer);
        xr_relay_connected(r);
        return;
    }
    if (events & EPOLLERR) {
        int err = 0;
        socklen_t len = sizeof(err);
        getsockopt(e->io.fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err != 0 && err != ECONNRESET && err != EPIPE) {
            xr_relay_io_error(r, "connection to", which, err);
            return;
        }
        /* Reading SO_ERROR cleared the reset: the read below that reaches
         * the end of the bytes before it reports it. */
        if (err != 0)
            e->err = err;
    }
    /* Bytes from this end, and bytes waiting for it. */
    xr_relay_pump_both(r, which);
}

/* Advance the TLS handshake on end `which`.  Returns XR_ERROR if the relay
 * closed. */
static int xr_relay_tls_step(xr_relay_t *r, int which)
{
    xr_end_t *e = &r->end[which];
    int rc = xr_tls_end_handshake(e);
    if (rc == XR_AGAIN)
        return XR_OK;
    if (rc != XR_OK) {
        xr_log_session(XR_LOG_INFO, &r->s, "TLS handshake with the %s failed: %s",
                       xr_end_name(which), xr_tls_end_why(e));
        xr_relay_close(r, "TLS %s: %s", xr_end_name(which), xr_tls_end_why(e));
        return XR_ERROR;
    }
    uv_timer_stop(&r->timer);
    xr_log_session(XR_LOG_INFO, &r->s, "TLS with the %s established (%s, %s)%s%s",
                   xr_end_name(which), e->ops->name,
                   xr_tls_end_resumed(e) ? "resumed" : "full handshake",
                   xr_tls_end_identity(e) ? ", peer " : "",
                   xr_tls_end_identity(e) ? xr_tls_end_identity(e) : "");
    if (which == 0) {
        r->s.identity = xr_tls_end_identity(e);
        if (xr_tls_end_allowed(e, r->conf->tls) != XR_OK) {
            xr_log_session(XR_LOG_NOTICE, &r->s, "connection denied: %s", xr_tls_end_why(e));
            xr_relay_close(r, "denied: %s", xr_tls_end_why(e));
            return XR_ERROR;
        }
        r->state = XR_RELAY_CONNECTING;
        xr_relay_open(r);
        return r->state == XR_RELAY_CLOSED ? XR_ERROR : XR_OK;
    }
    xr_relay_running(r);
    return r->state == XR_RELAY_CLOSED ? XR_ERROR : XR_OK;
}

/* ---- joining established ends (the agent's relay points) ----------------- */

void xr_relay_join(uv_loop_t *loop, xr_relay_rt_t *rt, xr_end_t *src[2],
                   const unsigned char *pending[2], const size_t npending[2], const uint32_t raw[2],
                   const struct sockaddr_storage *client, uint64_t id)
{
    const xr_relay_conf_t *rc = rt->rc;
    /* Nothing was accepted through a listener that reserved a slot. */
    atomic_fetch_add(rt->ctr.active, 1);
    xr_relay_t *r = xr_relay_new(loop, rt, client, id);

    int failed = 0;
    for (int i = 0; i < 2; i++) {
        xr_end_t *e = &r->end[i];
        int fd = src[i]->io.fd;
        xr_io_del(&src[i]->io);
        e->io.fd = -1;
        e->relay = r;
        e->ops = src[i]->ops;
        e->data = src[i]->data;
        src[i]->io.fd = -1;
        src[i]->data = NULL;
        src[i]->ops = NULL;
        /* e holds fd from here on, watched or not: xr_relay_close closes
         * it with the relay. */
        if (xr_io_add(&e->io, fd, xr_relay_io_cb) != XR_OK)
            failed = 1;
        e->readable = e->writable = 1;
    }
    r->s.identity = xr_tls_end_identity(&r->end[0]);
    r->dir[0].raw = raw[0];
    r->dir[1].raw = raw[1];
    if (failed) {
        xr_relay_close(r, "cannot watch a link");
        return;
    }
    if (xr_relay_open_filters(r) != XR_OK)
        return;
    if (rc->continuity) {
        xr_conn_handoff_t with = {.pending = {pending[0], pending[1]},
                                  .npending = {npending[0], npending[1]},
                                  .raw = {raw[0], raw[1]}};
        if (xr_relay_move(r, &with))
            return;
    }
    for (int d = 0; d < 2; d++) {
        if (npending[d] == 0)
            continue;
        /* Bytes that came with the link's last frame: relayed first. */
        xr_buf_t *b = r->dir[d].buf = xr_buf_get((size_t) rc->buffer_size);
        if (b == NULL || npending[d] > b->cap) {
            xr_relay_close(r, "out of memory");
            return;
        }
        memcpy(b->data, pending[d], npending[d]);
        b->end = (uint32_t) npending[d];
        r->s.read_total[d] += npending[d];
        if (xr_relay_filter(r, d, 0) != XR_OK)
            return;
    }
    xr_relay_running(r);
}
