/*
 * conn.c: the relay engine's connections with continuity (see conn.h).
 *
 * Life of a connection: accepted on a listener of a block with
 * continuity (a transparent proxy's front door first reads its original
 * destination); a slot taken in the store and a duplicate of the socket
 * handed to the master; the targets its front door names tried in turn
 * (a proxy's parents then the destination, a relay block's servers by
 * its balance); both ends' kernel counters noted; bytes pumped through
 * the rings (and the stage: filters, HTTP) until both directions have
 * ended.
 *
 * Exactness across a worker's death.  Data is in one of these places,
 * and the replacement finds each (thesis 7.4 lists where the thesis lost
 * it):
 *   - in a socket's receive queue, acknowledged or not: the socket lives
 *     on in the master, the bytes are still there to read;
 *   - read by the dead process: in the IN ring, which the kernel wrote
 *     into the shared mapping; how far it read is tcpi_bytes_received
 *     minus what is still queued (SIOCINQ), minus the FIN if one came;
 *   - written by the dead process: in a send queue or already received;
 *     how far it wrote is tcpi_bytes_acked plus what is queued
 *     (SIOCOUTQ), minus our FIN if we sent one;
 *   - in between: in a ring, from what was written to what was read.
 * Nothing the process believed is trusted, only what the kernel counted,
 * so a crash between a read() and the update of a counter changes
 * nothing.  The HTTP handler commits its progress as a record; output
 * is only ever written up to a committed point, and input past the
 * committed point is still in the IN ring to be parsed again.
 */
#include "core/xrayd.h"
#include "core/continuity.h"
#include "core/log.h"
#include "core/worker.h"
#include "relay/acct.h"
#include "relay/conn.h"
#include "relay/conn_int.h"
#include "relay/sock.h"
#include "core/frontdoor.h"
#include "relay/stage_filter.h"
#include "relay/relay.h"

#include <linux/netfilter_ipv4.h>
#include <linux/netfilter_ipv6/ip6_tables.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdio.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#define XR_PUMP_ROUNDS 8
/* A connection idle this long with nothing in its rings gives their pages
 * back: an idle connection then keeps its slot's header, not the rings'
 * worth of memory that its last burst touched. */
#define XR_TRIM_IDLE_MS 1000

xr_conn_worker_t xr__cx;

static int xr_cn_pump(xr_conn_t *c, int d);
static void xr_cn_posted_cb(xr_posted_t *ps);
static void xr_cn_target_result(xr_conn_t *c, int ok);

/* ---- rings ------------------------------------------------------------------ */

void xr_ring_put(unsigned char *ring, uint32_t size, uint64_t off, const void *p, size_t n)
{
    uint32_t at = (uint32_t) (off % size);
    size_t first = XR_MIN(n, (size_t) (size - at));
    memcpy(ring + at, p, first);
    memcpy(ring, (const unsigned char *) p + first, n - first);
}

void xr_ring_get(const unsigned char *ring, uint32_t size, uint64_t off, void *p, size_t n)
{
    uint32_t at = (uint32_t) (off % size);
    size_t first = XR_MIN(n, (size_t) (size - at));
    memcpy(p, ring + at, first);
    memcpy((unsigned char *) p + first, ring, n - first);
}

int xr_ring_iov(unsigned char *ring, uint32_t size, uint64_t off, size_t n, struct iovec iov[2])
{
    uint32_t at = (uint32_t) (off % size);
    size_t first = XR_MIN(n, (size_t) (size - at));
    iov[0].iov_base = ring + at;
    iov[0].iov_len = first;
    iov[1].iov_base = ring;
    iov[1].iov_len = n - first;
    return n - first > 0 ? 2 : 1;
}

static unsigned char *xr_cn_out_ring(const xr_conn_t *c, int d)
{
    return c->h ? c->ring[XR_RING_OUT_UP + d] : c->ring[XR_RING_IN_UP + d];
}

/* Output of direction d ready to go: up to what the handler committed
 * (a circuit: everything read). */
uint64_t xr__cn_out_end(const xr_conn_t *c, int d)
{
    return c->h ? c->out_made[d] : c->p->taken[d];
}

void xr_conn_view_default(xr_conn_t *c)
{
    for (int d = 0; d < 2; d++) {
        c->v[d].in = c->ring[XR_RING_IN_UP + d];
        c->v[d].out = c->ring[XR_RING_OUT_UP + d];
        c->v[d].in_end = &c->p->taken[d];
        c->v[d].out_taken = &c->p->given[1 - d];
    }
}

void xr_conn_commit(xr_conn_t *c, const void *rec, size_t len)
{
    if (c->aux_record)
        xr_pslot_aux_commit(c->p, rec, len);
    else
        xr_pslot_commit(c->p, rec, len);
}

const void *xr_conn_record(const xr_conn_t *c)
{
    return c->aux_record ? xr_pslot_aux_record(c->p) : xr_pslot_record(c->p);
}

uint64_t xr_conn_out_room(const xr_conn_t *c, int d)
{
    return c->rsize - (c->out_made[d] - *c->v[d].out_taken);
}

void xr_conn_emit(xr_conn_t *c, int d, const void *p, size_t n)
{
    xr_ring_put(c->v[d].out, c->rsize, c->out_made[d], p, n);
    c->out_made[d] += n;
}

void xr_conn_pass(xr_conn_t *c, int d, uint64_t from, size_t n)
{
    /* At most two pieces each way: copy through the source's pieces. */
    struct iovec iov[2];
    int k = xr_ring_iov(c->v[d].in, c->rsize, from, n, iov);
    for (int i = 0; i < k; i++)
        xr_conn_emit(c, d, iov[i].iov_base, iov[i].iov_len);
}

/* ---- the kernel's accounting ------------------------------------------------ */

/* Note end e's counters now, before anything is read or written. */
static void xr_cn_base(xr_conn_t *c, int e)
{
    xr_acct_t a = {0};
    xr_acct(c->end[e].io.fd, &a);
    c->p->rx_base[e] = a.taken;
    c->p->tx_base[e] = a.given;
    c->p->taken[e] = c->p->given[e] = 0;
}

/* ---- life cycle ------------------------------------------------------------- */

static void xr_cn_free(xr_conn_t *c)
{
    if (c->heap_slot)
        free(c->p);
    if (c->heap_rings)
        munmap(c->ring[0], (size_t) XR_RINGS * c->rsize);
    free(c);
}

static void xr_cn_timer_closed(uv_handle_t *h)
{
    xr_cn_free(h->data);
}

/* A connection object around slot p, outside the worker's service: its
 * session, rings and stage, nothing counted, listed or timed. */
static xr_conn_t *xr_cn_object(xr_relay_rt_t *rt, xr_store_t *store, xr_pslot_t *p)
{
    xr_conn_t *c = xr_calloc(1, sizeof(*c));
    c->rt = rt;
    c->conf = rt->rc;
    c->store = store;
    c->p = p;
    c->upstream_idx = -1;
    c->s._core = NULL;
    c->s.id = p->id;
    c->s.listener = rt->rc->name;
    c->s.client = p->client;
    c->s.local = p->local;
    c->s.upstream = p->upstream; /* family 0 until one is chosen */
    c->s.start_ms = p->start_ms;
    if (store != NULL) {
        c->rsize = xr_store_ring_size(store);
        for (int i = 0; i < XR_RINGS; i++)
            c->ring[i] = xr_store_ring(store, p, i);
    } else {
        /* Continuity off: the same rings, in pages of their own (trimmed
         * like the store's). */
        c->rsize = (uint32_t) ((rt->rc->buffer_size + 4095) / 4096 * 4096);
        unsigned char *r = mmap(NULL, (size_t) XR_RINGS * c->rsize, PROT_READ | PROT_WRITE,
                                MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (r == MAP_FAILED)
            xr_oom((size_t) XR_RINGS * c->rsize);
        for (int i = 0; i < XR_RINGS; i++)
            c->ring[i] = r + (size_t) i * c->rsize;
        c->heap_rings = 1;
        c->heap_slot = 1;
    }
    for (int i = 0; i < 2; i++) {
        c->end[i].io.fd = -1;
        c->end[i].c = c;
    }
    xr_conn_view_default(c);
    if (p->mode != 0 && rt->rc->frontdoor->conn_stage != NULL)
        c->h = rt->rc->frontdoor->conn_stage(p->mode);
    else
        c->h = p->filtered ? &xr_filter_handler : NULL;
    return c;
}

/* A connection object around slot p (new or adopted), in the worker's
 * service: timed, listed, and counted in the worker and the shared
 * memory. */
xr_conn_t *xr__cn_new(xr_relay_rt_t *rt, xr_store_t *store, xr_pslot_t *p)
{
    xr_conn_t *c = xr_cn_object(rt, store, p);
    c->in_service = 1;
    uv_timer_init(xr__cx.loop, &c->timer);
    c->timer.data = c;
    c->last_active = (int64_t) uv_now(xr__cx.loop);
    xr_list_insert_tail(&xr__cx.conns, &c->link);
    xr__cx.n++;
    rt->active++;
    atomic_fetch_add(rt->ctr.worker_active, 1);
    c->shm_counted = 1;
    /* A connection taken over was counted by the worker that read its
     * bytes so far (up to that worker's last pump). */
    c->counted[0] = p->taken[0];
    c->counted[1] = p->taken[1];
    xr_worker_conn_added();
    return c;
}

/* Add what c read since the last call to its block's shared counters
 * (once per pump, and the remainder at close). */
void xr__cn_counts(const xr_conn_t *c, uint64_t read[2], uint64_t written[2])
{
    if (c->h != NULL && c->h->counts != NULL && c->hs != NULL) {
        c->h->counts(c, read, written);
        return;
    }
    for (int d = 0; d < 2; d++) {
        read[d] = c->p->taken[d];
        written[d] = c->p->given[1 - d];
    }
}

static void xr_cn_count(xr_conn_t *c)
{
    if (!c->in_service)
        return;
    uint64_t read[2], written[2];
    xr__cn_counts(c, read, written);
    for (int d = 0; d < 2; d++) {
        uint64_t taken = read[d];
        if (taken <= c->counted[d])
            continue;
        atomic_fetch_add_explicit(&c->rt->ctr.bytes[d], taken - c->counted[d],
                                  memory_order_relaxed);
        c->counted[d] = taken;
    }
}

void xr_conn_log(xr_conn_t *c)
{
    c->s.end_ms = xr_wall_ms();
    if (c->s.record == NULL) /* the connection's own record; a request's has its own counts */
        xr__cn_counts(c, c->s.read_total, c->s.written_total);
    xr_chain_log(c->rt, c->fstate, &c->s);
}

/* Run the filters' open hooks (a new connection, or one taken over:
 * filter state does not survive a worker).  XR_OK, or XR_ERROR when one
 * denied: c is closed. */
int xr__cn_open_filters(xr_conn_t *c)
{
    c->fstate = xr_chain_state_new(c->rt);
    if (xr_chain_open(c->rt, c->fstate, &c->s, &c->opened) != XR_OK) {
        xr_log_session(XR_LOG_NOTICE, &c->s, "connection denied: %s", c->s.close_reason);
        xr_conn_close(c, NULL);
        return XR_ERROR;
    }
    return XR_OK;
}

static void xr_cn_end_close_how(xr_cend_t *e, int cut)
{
    if (e->io.fd < 0)
        return;
    /* The master holds a duplicate of the same open socket: close() alone
     * would send nothing, and would not take it out of the epoll set
     * either (events would keep coming for a freed connection).  A cut
     * connection's peer gets a reset instead of a FIN: linger 0 applies
     * to the socket, so whichever close is last sends it. */
    xr_io_del(&e->io);
    xr_sock_before_close(e->io.fd, cut);
    if (!cut)
        shutdown(e->io.fd, SHUT_RDWR);
    close(e->io.fd);
    e->io.fd = -1;
}

static void xr_cn_end_close(xr_cend_t *e)
{
    xr_cn_end_close_how(e, 0);
}

static void xr_cn_release(xr_conn_t *c)
{
    if (c->store == NULL)
        return;
    uint64_t id = c->p->id;
    /* A stage's record may hold TLS keys: they go with the connection. */
    explicit_bzero(c->p->state, sizeof(c->p->state));
    if (c->store == xr__cx.own)
        xr__cn_slot_freed(c->p);
    else
        xr_store_release(c->store, c->p, 0);
    xr_cont_drop(id);
    if (c->store != xr__cx.own) {
        /* The last connection of an adopted store: the file can go. */
        for (xr_astore_t **a = &xr__cx.adopted; *a; a = &(*a)->next)
            if ((*a)->store == c->store && xr_store_used(c->store) == 0) {
                xr_astore_t *dead = *a;
                *a = dead->next;
                xr_store_close(dead->store, 1);
                free(dead);
                break;
            }
    }
}

void xr_conn_close(xr_conn_t *c, const char *fmt, ...)
{
    if (c->state == XR_PC_CLOSED)
        return;
    int frozen = c->state == XR_PC_FROZEN;
    c->state = XR_PC_CLOSED;
    if (fmt != NULL && c->s.close_reason[0] == '\0') {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(c->s.close_reason, sizeof(c->s.close_reason), fmt, ap);
        va_end(ap);
    }
    if (c->in_service) {
        uv_timer_stop(&c->timer);
        xr_reactor_unpost(&c->posted);
    }
    xr_cn_count(c); /* also when frozen: these bytes moved under this master */
    if (frozen) {
        /* Upgrade: the connection lives on in the new binary; only our
         * descriptors go. */
        for (int i = 0; i < 2; i++)
            if (c->end[i].io.fd >= 0) {
                xr_io_del(&c->end[i].io);
                close(c->end[i].io.fd);
                c->end[i].io.fd = -1;
            }
    } else {
        xr_cn_end_close_how(&c->end[0], c->cut);
        xr_cn_end_close_how(&c->end[1], c->cut);
        /* Requests answered but not yet wholly given to the client get
         * their records now, with what it got. */
        if (c->h != NULL && c->h->delivered != NULL)
            c->h->delivered(c, 1);
        xr_chain_close_hooks(c->rt, c->fstate, &c->s, c->opened);
        /* HTTP logs each request as it ends; the connection's own record
         * only says why it was cut. */
        if (c->h == NULL || !c->h->logs_requests || c->s.close_reason[0] != '\0')
            xr_conn_log(c);
        xr_log_session(XR_LOG_INFO, &c->s, "connection closed: %s, up %llu/%llu, down %llu/%llu",
                       c->s.close_reason[0] ? c->s.close_reason : "done",
                       (unsigned long long) c->p->taken[0], (unsigned long long) c->p->given[1],
                       (unsigned long long) c->p->taken[1], (unsigned long long) c->p->given[0]);
    }
    if (!frozen && c->conf->frontdoor->conn_closed != NULL)
        c->conf->frontdoor->conn_closed(c);
    if (c->h != NULL && c->h->free != NULL)
        c->h->free(c);
    free(c->fstate);
    c->fstate = NULL;
    if (!frozen)
        xr_cn_release(c); /* after this the slot (and maybe its file) is gone */
    if (!c->in_service)
        return; /* its owner frees it (xr_conn_detached_free) */
    xr_list_remove(&c->link);
    xr__cx.n--;
    c->rt->active--;
    if (c->shm_counted) {
        atomic_fetch_sub(c->rt->ctr.active, 1);
        atomic_fetch_sub(c->rt->ctr.worker_active, 1);
    }
    uv_close((uv_handle_t *) &c->timer, xr_cn_timer_closed);
    xr_worker_conn_removed();
}

/* Has c nothing in its rings that is still needed: every input byte
 * consumed for good, every output byte sent?  A pair's middle rings are
 * its own business: never. */
static int xr_cn_drained(const xr_conn_t *c)
{
    for (int d = 0; d < 2; d++) {
        uint64_t floor = c->h ? c->in_done[d] : c->p->given[1 - d];
        if (floor != c->p->taken[d] || xr__cn_out_end(c, d) != c->p->given[1 - d])
            return 0;
    }
    return c->h == NULL || c->h->next == NULL;
}

static void xr_cn_trim(xr_conn_t *c)
{
    if (c->store != NULL)
        xr_store_trim(c->store, c->p);
    else if (c->heap_rings)
        madvise(c->ring[0], (size_t) XR_RINGS * c->rsize, MADV_DONTNEED);
    c->trimmed = 1;
}

void xr__cn_timer_cb(uv_timer_t *t)
{
    xr_conn_t *c = t->data;
    if (c->state == XR_PC_CONNECTING) {
        char a[64];
        xr_log_session(XR_LOG_WARN, &c->s, "connect to %s timed out (connect_timeout %lldms)",
                       xr_addr_format(&c->p->upstream, a, sizeof(a)),
                       (long long) c->conf->connect_timeout);
        xr_cn_target_result(c, 0);
        xr_cn_end_close(&c->end[1]);
        xr__cn_connect(c);
        return;
    }
    if (c->state != XR_PC_RUNNING)
        return;
    int64_t idle = (int64_t) uv_now(t->loop) - c->last_active;
    if (idle >= c->conf->idle_timeout) {
        xr_log_session(XR_LOG_INFO, &c->s, "idle for %lldms, closing", (long long) idle);
        xr_conn_close(c, "idle timeout");
        return;
    }
    if (!c->trimmed && idle >= XR_TRIM_IDLE_MS && xr_cn_drained(c))
        xr_cn_trim(c);
    int64_t next = c->conf->idle_timeout - idle;
    if (!c->trimmed)
        next = XR_MIN(next, idle < XR_TRIM_IDLE_MS ? XR_TRIM_IDLE_MS - idle : XR_TRIM_IDLE_MS);
    uv_timer_start(&c->timer, xr__cn_timer_cb, (uint64_t) next, 0);
}

/* ---- detached connections ------------------------------------------------ */

/* Outside the worker's service (see conn.h): no socket, timer, list or
 * shared counter, so nothing of the worker process is needed. */
xr_conn_t *xr_conn_detached_new(xr_relay_rt_t *rt, uint64_t id, uint32_t mode)
{
    xr_pslot_t *p = xr_calloc(1, sizeof(*p));
    p->id = id;
    p->mode = mode;
    p->filtered = mode == 0 && rt->has_data_filters;
    snprintf(p->block, sizeof(p->block), "%s", rt->rc->name);
    p->peer = -1;
    p->start_ms = xr_wall_ms();
    p->phase = XR_PHASE_RUNNING;
    xr_conn_t *c = xr_cn_object(rt, NULL, p);
    c->state = XR_PC_RUNNING;
    c->action = "relaying";
    if (xr__cn_open_filters(c) != XR_OK)
        return c;
    if (c->h != NULL && c->h->start(c) != XR_OK)
        xr_conn_close(c, "cannot start the %s stage", c->h->name);
    return c;
}

int xr_conn_detached_resume(xr_conn_t *c)
{
    if (c->state == XR_PC_CLOSED)
        return XR_ERROR;
    /* What died with the process: the stage's working state, the filters'
     * state, the engine's own flags.  The slot and the rings remain. */
    if (c->h != NULL && c->h->free != NULL)
        c->h->free(c);
    free(c->fstate);
    c->fstate = NULL;
    c->opened = 0;
    for (int d = 0; d < 2; d++)
        c->out_closed[d] = c->again[d] = 0;
    c->p->resumed++;
    if (xr__cn_open_filters(c) != XR_OK)
        return XR_ERROR;
    char why[160] = "";
    const uint64_t taken[2] = {c->p->taken[0], c->p->taken[1]};
    if (c->h != NULL && c->h->resume(c) != XR_OK)
        snprintf(why, sizeof(why), "the stage's state in the snapshot is not usable");
    if (why[0] == '\0')
        xr__cn_check_resumed(c, taken, why, sizeof(why));
    if (why[0] != '\0') {
        xr_log_session(XR_LOG_ERR, &c->s, "cannot resume: %s", why);
        xr_conn_close(c, "resume failed");
        return XR_ERROR;
    }
    return XR_OK;
}

int xr_conn_is_closed(const xr_conn_t *c)
{
    return c->state == XR_PC_CLOSED;
}

void xr_conn_detached_free(xr_conn_t *c)
{
    xr_conn_close(c, NULL);
    xr_cn_free(c);
}

/* ---- accepting ------------------------------------------------------------ */

/* A connection of rt's block around a new slot (in the store when the
 * block has continuity and a slot is free, else on the heap), not yet
 * live; its client end is fd. */
static xr_conn_t *xr_cn_create(xr_relay_rt_t *rt, int fd, const struct sockaddr_storage *client,
                               uint64_t id, uint32_t mode, int filtered)
{
    const xr_relay_conf_t *rc = rt->rc;
    struct sockaddr_storage local;
    socklen_t ll = sizeof(local);
    getsockname(fd, (struct sockaddr *) &local, &ll);
    xr_pslot_t *p = NULL;
    xr_store_t *store = rc->continuity ? xr__cx.own : NULL;
    if (store != NULL && (p = xr_store_alloc(store)) == NULL) {
        xr_log(XR_LOG_WARN,
               "*%llu %s %s: every snapshot slot is taken; this connection has "
               "no continuity",
               (unsigned long long) id, rc->frontdoor->name, rc->name);
        store = NULL;
    }
    if (p == NULL)
        p = xr_calloc(1, sizeof(*p));
    p->id = id;
    p->mode = mode;
    p->filtered = (uint32_t) filtered;
    snprintf(p->block, sizeof(p->block), "%s", rc->name);
    p->client = *client;
    p->local = local;
    p->peer = -1;
    p->start_ms = xr_wall_ms();
    p->phase = XR_PHASE_CONNECTING;
    xr_conn_t *c = xr__cn_new(rt, store, p);
    c->end[0].io.fd = fd;
    if (rc->tcp_nodelay) {
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    }
    return c;
}

/* The slot is live from here: a replacement takes it over.  The master
 * is given the socket of end e. */
static void xr_cn_hold(xr_conn_t *c, int e)
{
    if (c->store == NULL)
        return;
    c->p->live = XR_PSLOT_LIVE;
    if (xr_cont_hold(c->p->id, e, c->end[e].io.fd) != XR_OK)
        xr_log_session(XR_LOG_ERR, &c->s,
                       "cannot hand the %s socket to the master (%s); no "
                       "continuity for this connection",
                       e == 0 ? "client" : "upstream", strerror(errno));
}

void xr_conn_start(uv_loop_t *loop, xr_relay_rt_t *rt, int fd,
                   const struct sockaddr_storage *client, uint64_t id,
                   const struct sockaddr_storage *dst, uint32_t mode)
{
    xr_conn_t *c = xr_cn_create(rt, fd, client, id, mode, mode == 0 && rt->has_data_filters);
    atomic_fetch_add(rt->ctr.accepted, 1);
    if (dst != NULL)
        c->p->dst = *dst;
    xr_cn_base(c, 0);
    xr_cn_hold(c, 0);
    if (xr_io_add(&c->end[0].io, fd, xr__cn_io_cb) != XR_OK) {
        xr_conn_close(c, "cannot watch the client socket");
        return;
    }
    if (dst != NULL)
        c->s.upstream = *dst; /* what filters see: the original destination */
    if (xr__cn_open_filters(c) != XR_OK)
        return;
    xr__cn_connect(c);
}

void xr_conn_take(uv_loop_t *loop, xr_relay_rt_t *rt, xr_conn_handoff_t *h)
{
    const xr_session_t *s = h->s;
    xr_conn_t *c = xr_cn_create(rt, h->fd[0], &s->client, s->id, 0, 1);
    xr_pslot_t *p = c->p;
    p->start_ms = s->start_ms;
    c->s.start_ms = s->start_ms;
    p->upstream = c->s.upstream = s->upstream;
    p->peer = h->peer;
    p->tried = h->tried;
    p->tries = h->tries;
    c->peer_held = h->peer >= 0;
    c->fstate = h->fstate;
    c->opened = h->opened;
    c->end[1].io.fd = h->fd[1];
    if (rt->rc->tcp_nodelay) {
        int one = 1;
        setsockopt(h->fd[1], IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    }
    xr_cn_base(c, 0);
    xr_cn_base(c, 1);
    /* The stage's first record (pending bytes in OUT) and the phase are
     * in the slot before it goes live: a replacement never finds a
     * half-made one. */
    if (xr_filter_stage_take(c, h) != XR_OK)
        return;
    atomic_store_explicit((_Atomic uint32_t *) &p->phase, XR_PHASE_RUNNING, memory_order_release);
    xr_cn_hold(c, 0);
    xr_cn_hold(c, 1);
    for (int e = 0; e < 2; e++)
        if (xr_io_add(&c->end[e].io, c->end[e].io.fd, xr__cn_io_cb) != XR_OK) {
            xr_conn_close(c, "cannot watch the %s socket", e == 0 ? "client" : "upstream");
            return;
        }
    xr__cn_running(c, 0);
}

/* ---- connecting upstream ---------------------------------------------------- */

/* Tell the block's front door how the attempt on its last target went
 * (a relay block's upstream health). */
static void xr_cn_target_result(xr_conn_t *c, int ok)
{
    if (c->conf->frontdoor->conn_target_result != NULL)
        c->conf->frontdoor->conn_target_result(c, ok);
}

void xr__cn_connect(xr_conn_t *c)
{
    const xr_relay_conf_t *rc = c->conf;
    xr_cend_t *e = &c->end[1];
    c->state = XR_PC_CONNECTING;
    c->action = "connecting upstream";
    for (;;) {
        socklen_t len;
        const struct sockaddr_storage *to = c->conf->frontdoor->conn_target(c, &len);
        if (to == NULL) {
            xr_log_session(XR_LOG_ERR, &c->s, "no upstream could be reached after %u tries",
                           c->p->tries);
            if (c->h != NULL && c->h->unreachable != NULL)
                c->h->unreachable(c); /* an HTTP 502 page, say, not a reset */
            xr_conn_close(c, "upstream connect failed");
            return;
        }
        c->p->tries++;
        memcpy(&c->p->upstream, to, len);
        c->s.upstream = c->p->upstream;
        int fd = socket(to->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            xr_log_session(XR_LOG_ERR, &c->s, "socket() failed (%d: %s)", errno, strerror(errno));
            xr_conn_close(c, "cannot create upstream socket");
            return;
        }
        if (rc->tcp_nodelay) {
            int one = 1;
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        }
        /* The master holds it before it connects: a replacement finds
         * every socket that may carry bytes. */
        if (c->store != NULL)
            xr_cont_hold(c->p->id, 1, fd);
        e->io.fd = fd;
        e->readable = e->writable = e->rdhup = e->rd_eof = e->wr_shut = 0;
        if (connect(fd, (const struct sockaddr *) to, len) != 0 && errno != EINPROGRESS) {
            char a[64];
            xr_log_session(XR_LOG_ERR, &c->s, "connect() to %s failed (%d: %s)",
                           xr_addr_format(to, a, sizeof(a)), errno, strerror(errno));
            xr_cn_target_result(c, 0);
            xr_cn_end_close(e);
            continue;
        }
        if (xr_io_add(&e->io, fd, xr__cn_io_cb) != XR_OK) {
            xr_conn_close(c, "cannot watch the upstream socket");
            return;
        }
        uv_timer_start(&c->timer, xr__cn_timer_cb, (uint64_t) rc->connect_timeout, 0);
        return;
    }
}

void xr__cn_connected(xr_conn_t *c)
{
    uv_timer_stop(&c->timer);
    xr_cn_target_result(c, 1);
    xr_cn_base(c, 1);
    if (c->h != NULL) {
        memset(c->p->state, 0, sizeof(c->p->state));
        c->p->commit_seq = 0;
    }
    /* The phase flips last: a replacement that sees RUNNING finds the
     * bases written. */
    atomic_store_explicit((_Atomic uint32_t *) &c->p->phase, XR_PHASE_RUNNING,
                          memory_order_release);
    xr__cn_running(c, 1);
}

void xr__cn_running(xr_conn_t *c, int fresh)
{
    c->state = XR_PC_RUNNING;
    c->action = "relaying";
    if (fresh && c->h != NULL && c->h->start(c) != XR_OK) {
        xr_conn_close(c, "cannot start the %s stage", c->h->name);
        return;
    }
    c->last_active = (int64_t) uv_now(xr__cx.loop);
    uv_timer_start(&c->timer, xr__cn_timer_cb,
                   (uint64_t) XR_MIN(c->conf->idle_timeout, (int64_t) XR_TRIM_IDLE_MS), 0);
    /* The client may have sent while we connected: no edge will say so. */
    for (int i = 0; i < 2; i++)
        c->end[i].readable = c->end[i].writable = 1;
    if (!fresh) {
        /* Resumed: every adopted connection is set up before any moves a
         * byte, so none waits behind another's backlog. */
        xr_reactor_post(&c->posted, xr_cn_posted_cb);
        return;
    }
    if (xr_cn_pump(c, XR_DIR_UP) == XR_OK)
        xr_cn_pump(c, XR_DIR_DOWN);
}

/* ---- moving bytes ---------------------------------------------------------- */

const char *xr__cn_end_name(int e)
{
    return e == 0 ? "client" : "upstream";
}

static void xr_cn_io_error(xr_conn_t *c, const char *op, int e, int err)
{
    int level = (err == ECONNRESET || err == EPIPE) ? XR_LOG_INFO : XR_LOG_ERR;
    c->cut = 1;
    xr_log_session((xr_log_level_t) level, &c->s, "%s %s failed (%d: %s)", op, xr__cn_end_name(e),
                   err, strerror(err));
    xr_conn_close(c, "%s %s: %s", op, xr__cn_end_name(e), strerror(err));
}

void xr_conn_flush(xr_conn_t *c, int d)
{
    xr_cend_t *dst = &c->end[1 - d];
    uint64_t ready = xr__cn_out_end(c, d) - c->p->given[1 - d];
    if (ready == 0 || dst->io.fd < 0)
        return;
    struct iovec iov[2];
    int k = xr_ring_iov(xr_cn_out_ring(c, d), c->rsize, c->p->given[1 - d], (size_t) ready, iov);
    ssize_t n = writev(dst->io.fd, iov, k);
    if (n > 0)
        c->p->given[1 - d] += (uint64_t) n;
}

static void xr_cn_posted_cb(xr_posted_t *ps)
{
    xr_conn_t *c = xr_container_of(ps, xr_conn_t, posted);
    if (c->state == XR_PC_RUNNING && xr_cn_pump(c, XR_DIR_UP) == XR_OK)
        xr_cn_pump(c, XR_DIR_DOWN);
}

/* Is direction d over: its source ended, all its output delivered, the
 * far side shut down? */
static int xr_cn_dir_done(const xr_conn_t *c, int d)
{
    return c->end[d].rd_eof && c->end[1 - d].wr_shut && xr__cn_out_end(c, d) == c->p->given[1 - d];
}

static int xr_cn_pump(xr_conn_t *c, int d)
{
    xr_cend_t *src = &c->end[d], *dst = &c->end[1 - d];
    xr_pslot_t *p = c->p;
    unsigned char *in = c->ring[XR_RING_IN_UP + d], *out = xr_cn_out_ring(c, d);
    uint64_t given_client = p->given[0];
    int round;
    for (round = 0; round < XR_PUMP_ROUNDS; round++) {
        int moved = 0;
        uint64_t ready = xr__cn_out_end(c, d) - p->given[1 - d];
        if (ready > 0 && dst->writable) {
            struct iovec iov[2];
            int k = xr_ring_iov(out, c->rsize, p->given[1 - d], (size_t) ready, iov);
            ssize_t n = writev(dst->io.fd, iov, k);
            if (n < 0) {
                if (errno != EAGAIN && errno != EINTR) {
                    xr_cn_io_error(c, "writing to", 1 - d, errno);
                    return XR_ERROR;
                }
                dst->writable = 0;
            } else {
                p->given[1 - d] += (uint64_t) n;
                if ((uint64_t) n < ready)
                    dst->writable = 0;
                moved = n > 0;
            }
        }
        /* IN bytes may be overwritten once sent (circuit) or consumed
         * by the handler (whose output holds them). */
        uint64_t floor = c->h ? c->in_done[d] : p->given[1 - d];
        uint64_t room = c->rsize - (p->taken[d] - floor);
        if (room > 0 && src->readable && !src->rd_eof) {
            struct iovec iov[2];
            int k = xr_ring_iov(in, c->rsize, p->taken[d], (size_t) room, iov);
            ssize_t n = readv(src->io.fd, iov, k);
            if (n > 0) {
                p->taken[d] += (uint64_t) n;
                if ((uint64_t) n < room && !src->rdhup)
                    src->readable = 0;
                moved = 1;
            } else if (n == 0) {
                src->rd_eof = 1;
                moved = 1;
            } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
                src->readable = 0;
            } else if (errno == ECONNRESET && c->out_closed[d]) {
                /* The stream had ended (a TLS peer's close_notify) and the
                 * peer then dropped its socket: an end, not a cut. */
                src->rd_eof = 1;
                moved = 1;
            } else if (errno != EINTR) {
                xr_cn_io_error(c, "reading from", d, errno);
                return XR_ERROR;
            }
        }
        /* The handler runs on new input, on the end of its input, and again
         * after it said XR_AGAIN (no room for its output), now that a
         * write may have made some. */
        if (c->h != NULL &&
            (c->in_done[d] < p->taken[d] || (src->rd_eof && !c->out_closed[d]) || c->again[d])) {
            uint64_t before = c->out_made[d] + c->out_made[1 - d] + c->in_done[d];
            int rc = c->h->process(c, d);
            if (rc == XR_ERROR)
                return XR_ERROR;
            c->again[d] = rc == XR_AGAIN;
            if (src->rd_eof && !c->out_closed[d] && rc == XR_OK) {
                int erc = c->h->eof(c, d);
                if (erc == XR_ERROR)
                    return XR_ERROR;
                if (erc == XR_AGAIN)
                    c->again[d] = 1; /* its end waits for room in OUT */
                else if (c->in_done[d] == p->taken[d])
                    c->out_closed[d] = 1;
            }
            if (c->out_made[d] + c->out_made[1 - d] + c->in_done[d] != before)
                moved = 1;
            /* an answer of its own goes out the other way */
            if (c->out_made[1 - d] > c->p->given[d] && c->end[d].writable) {
                if (xr_cn_pump(c, 1 - d) != XR_OK)
                    return XR_ERROR;
            }
        }
        if (moved) {
            c->last_active = (int64_t) uv_now(xr__cx.loop);
            if (c->trimmed) {
                /* Busy again: trimmed again once it idles. */
                c->trimmed = 0;
                uv_timer_start(&c->timer, xr__cn_timer_cb, XR_TRIM_IDLE_MS, 0);
            }
        }
        if (!moved)
            break;
    }
    if (round == XR_PUMP_ROUNDS)
        xr_reactor_post(&c->posted, xr_cn_posted_cb);
    xr_cn_count(c);
    /* What the client got may let the stage take more requests: the
     * other direction's pump may already have run this turn. */
    if (p->given[0] != given_client && c->h != NULL && c->h->delivered != NULL &&
        c->h->delivered(c, 0))
        xr_reactor_post(&c->posted, xr_cn_posted_cb);
    /* Half-close: the source's FIN goes on once its bytes have. */
    int drained = xr__cn_out_end(c, d) == p->given[1 - d];
    int ended = c->h ? c->out_closed[d] : src->rd_eof;
    if (ended && drained && !dst->wr_shut) {
        if (shutdown(dst->io.fd, SHUT_WR) != 0 && errno != ENOTCONN) {
            xr_cn_io_error(c, "shutting down", 1 - d, errno);
            return XR_ERROR;
        }
        dst->wr_shut = 1;
    }
    if (c->h != NULL && c->h->finished != NULL && c->h->finished(c)) {
        xr_conn_close(c, NULL);
        return XR_ERROR;
    }
    if (xr_cn_dir_done(c, 0) && xr_cn_dir_done(c, 1)) {
        xr_conn_close(c, NULL);
        return XR_ERROR;
    }
    return XR_OK;
}

void xr__cn_io_cb(xr_io_t *io, uint32_t events)
{
    xr_cend_t *e = xr_container_of(io, xr_cend_t, io);
    xr_conn_t *c = e->c;
    int which = e == &c->end[1];
    if (c->state == XR_PC_CLOSED || c->state == XR_PC_FROZEN)
        return;
    if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))
        e->readable = 1;
    if (events & (EPOLLOUT | EPOLLHUP | EPOLLERR))
        e->writable = 1;
    if (events & (EPOLLRDHUP | EPOLLHUP))
        e->rdhup = 1;
    if (c->state == XR_PC_CONNECTING) {
        if (!which || !e->writable)
            return; /* the client's bytes wait in the kernel */
        int err = 0;
        socklen_t len = sizeof(err);
        if (getsockopt(e->io.fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0)
            err = errno;
        if (err != 0) {
            char a[64];
            xr_log_session(c->upstream_idx >= 0 ? XR_LOG_WARN : XR_LOG_ERR, &c->s,
                           "connect() to %s failed (%d: %s)%s",
                           xr_addr_format(&c->p->upstream, a, sizeof(a)), err, strerror(err),
                           c->upstream_idx >= 0 ? ", trying the next" : "");
            uv_timer_stop(&c->timer);
            xr_cn_target_result(c, 0);
            xr_cn_end_close(e);
            xr__cn_connect(c);
            return;
        }
        xr__cn_connected(c);
        return;
    }
    if (xr_cn_pump(c, which) == XR_OK)
        xr_cn_pump(c, 1 - which);
}
