/*
 * worker.c: a worker process: one libuv loop that accepts on the
 * generation's listeners and runs relays until told to stop.
 */
#include "core/xrayd.h"
#include "core/continuity.h"
#include "core/frontdoor.h"
#include "core/log.h"
#include "core/proctitle.h"
#include "core/shm.h"
#include "core/worker.h"
#include "event/listener.h"
#include "event/reactor.h"
#include "relay/conn.h"
#include "relay/relay.h"
#include "tls/tls.h"

#include <malloc.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define XR_ACCEPT_BATCH    64
#define XR_ACCEPT_RETRY_MS 50
/* A worker with more than its share of a listener's connections stops
 * polling it for XR_ACCEPT_DEFER_MS so a lighter sibling takes the next one;
 * after XR_ACCEPT_DEFERS such pauses with connections still waiting it takes
 * one itself (the sibling may be stuck in a long callback or gone). */
#define XR_ACCEPT_DEFER_MS 1
#define XR_ACCEPT_DEFERS   3

int xr_worker_slot;

typedef struct {
    uv_poll_t poll;
    int fd;
    int active;
    xr_relay_rt_t *rt;
    uv_timer_t defer; /* polling again after a pause for a lighter sibling */
    int defers;       /* pauses in a row with connections still waiting */
} xr_wlistener_t;

static struct {
    uv_loop_t loop;
    xr_gen_t *gen;
    xr_relay_rt_t *rts;
    xr_wlistener_t *ls;
    size_t nls;
    xr_list_t relays;
    size_t nrelays;
    size_t nconns; /* front doors' connections outside the relay list */
    int stopping;  /* 1: graceful, 2: fast */
    uv_signal_t sig[6];
    uv_timer_t drain, retry;
    int retry_armed;
    uv_check_t adopted; /* the first turn after taking connections over */
    pid_t adopting;
    double t_start, t_adopt, t_adopted; /* ms on the monotonic clock */
    double cpu_start;                   /* ms of CPU time at t_start */
    int standby;                        /* started as the standby */
} xr_w;

/* ms on clock id, for the log of a takeover's timings. */
static double xr_worker_clock_ms(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (double) ts.tv_sec * 1e3 + (double) ts.tv_nsec / 1e6;
}

static void xr_worker_accept_cb(uv_poll_t *h, int status, int events);

static void xr_worker_finish(void)
{
    uv_stop(&xr_w.loop);
}

xr_relay_rt_t *xr_worker_rt(const xr_relay_conf_t *rc)
{
    return &xr_w.rts[rc->index];
}

void xr_worker_relay_added(xr_relay_t *r)
{
    xr_list_insert_tail(&xr_w.relays, &r->link);
    xr_w.nrelays++;
}

void xr_worker_relay_removed(xr_relay_t *r)
{
    xr_list_remove(&r->link);
    xr_w.nrelays--;
    if (xr_w.stopping && xr_w.nrelays == 0 && xr_w.nconns == 0)
        xr_worker_finish();
}

void xr_worker_conn_added(void)
{
    xr_w.nconns++;
}

void xr_worker_conn_removed(void)
{
    xr_w.nconns--;
    if (xr_w.stopping && xr_w.nrelays == 0 && xr_w.nconns == 0)
        xr_worker_finish();
}

/* Every front door's close_all. */
/* The engine's connections with continuity, then every front door's own. */
static void xr_worker_doors_close_all(const char *why)
{
    const xr_frontdoor_t *fd;
    xr_conn_close_all(why);
    xr_frontdoor_each(fd, i) if (fd->close_all) fd->close_all(why);
}

static void xr_worker_listen(xr_wlistener_t *l, int on)
{
    if (l->fd < 0 || l->active == on)
        return;
    l->active = on;
    if (on)
        uv_poll_start(&l->poll, UV_READABLE, xr_worker_accept_cb);
    else
        uv_poll_stop(&l->poll);
}

static void xr_worker_retry_cb(uv_timer_t *t)
{
    xr_w.retry_armed = 0;
    if (xr_w.stopping)
        return;
    atomic_store(&xr_shm->accepting[xr_worker_slot], xr_w.gen->number);
    for (size_t i = 0; i < xr_w.nls; i++)
        xr_worker_listen(&xr_w.ls[i], 1);
}

static void xr_worker_pause(xr_relay_rt_t *rt, uint64_t ms)
{
    /* Out of descriptors: siblings must not leave connections to us. */
    if (rt == NULL)
        atomic_store(&xr_shm->accepting[xr_worker_slot], 0);
    for (size_t i = 0; i < xr_w.nls; i++)
        if (rt == NULL || xr_w.ls[i].rt == rt)
            xr_worker_listen(&xr_w.ls[i], 0);
    if (!xr_w.retry_armed) {
        xr_w.retry_armed = 1;
        uv_timer_start(&xr_w.retry, xr_worker_retry_cb, ms, 0);
    }
}

/* Whether a sibling worker of this generation holds clearly fewer of rt's
 * connections.  The listening socket is shared and the kernel wakes every
 * worker, so left alone the one idle at that instant takes a whole burst:
 * wrk's 50 keep-alive clients came out 35/15, and one core then did 70% of
 * the work for their whole lives (HAProxy's threads hand each accepted
 * connection to the least loaded one; processes cannot, so the heavier
 * worker lets it pass instead). */
static int xr_worker_heavier(const xr_relay_rt_t *rt)
{
    int r = rt->rc->slot;
    uint64_t gen = xr_w.gen->number;
    int64_t mine = atomic_load(&xr_shm->worker_active[xr_worker_slot][r]);
    for (int s = 0; s < XR_SHM_WORKERS; s++) {
        if (s == xr_worker_slot || atomic_load(&xr_shm->accepting[s]) != gen)
            continue;
        if (mine > atomic_load(&xr_shm->worker_active[s][r]) + 1 + mine / 32)
            return 1;
    }
    return 0;
}

static void xr_worker_defer_cb(uv_timer_t *t)
{
    xr_wlistener_t *l = t->data;
    if (l->fd < 0 || xr_w.stopping)
        return;
    /* Nothing waits: the sibling took it, and the next pause starts anew. */
    struct pollfd pfd = {.fd = l->fd, .events = POLLIN};
    if (poll(&pfd, 1, 0) == 0)
        l->defers = 0;
    if (!xr_w.retry_armed)
        xr_worker_listen(l, 1);
}

/* 1: leave the waiting connection to a lighter sibling for now.  The
 * listener stops being polled meanwhile: spinning on it would take the core
 * the sibling needs to wake up and accept (on two cores it often did). */
static int xr_worker_defer(xr_wlistener_t *l)
{
    if (!xr_worker_heavier(l->rt))
        return 0;
    if (l->defers >= XR_ACCEPT_DEFERS) {
        l->defers = 0;
        return 0;
    }
    l->defers++;
    xr_worker_listen(l, 0);
    uv_timer_start(&l->defer, xr_worker_defer_cb, XR_ACCEPT_DEFER_MS, 0);
    return 1;
}

static void xr_worker_accept_cb(uv_poll_t *h, int status, int events)
{
    xr_wlistener_t *l = xr_container_of(h, xr_wlistener_t, poll);
    xr_relay_rt_t *rt = l->rt;
    const xr_relay_conf_t *rc = rt->rc;

    if (xr_w.stopping)
        return;
    for (int i = 0; i < XR_ACCEPT_BATCH; i++) {
        if (xr_worker_defer(l))
            return;
        /* Reserve the slot before accepting: a check-then-count would let
         * two workers both take the last one. */
        if (atomic_fetch_add(rt->ctr.active, 1) >= rc->max_connections) {
            atomic_fetch_sub(rt->ctr.active, 1);
            /* Leave the rest queued in the backlog: waiting beats refusing. */
            xr_worker_pause(rt, XR_ACCEPT_RETRY_MS);
            return;
        }
        struct sockaddr_storage sa;
        socklen_t len = sizeof(sa);
        int fd = accept4(l->fd, (struct sockaddr *) &sa, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            int err = errno;
            atomic_fetch_sub(rt->ctr.active, 1);
            if (err == EAGAIN || err == EWOULDBLOCK)
                return;
            if (err == EINTR || err == ECONNABORTED)
                continue;
            if (err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM) {
                xr_log_errno(XR_LOG_ERR, err, "accept() on relay %s failed; pausing 500ms",
                             rc->name);
                xr_worker_pause(NULL, 500);
                return;
            }
            xr_log_errno(XR_LOG_ERR, err, "accept() on relay %s failed", rc->name);
            return;
        }
        uint64_t id = atomic_fetch_add(&xr_shm->next_id, 1) + 1;
        /* The front door takes over fd and the reserved slot. */
        rc->frontdoor->accept(&xr_w.loop, rt, fd, &sa, id);
    }
}

static void xr_worker_close_listeners(void)
{
    const xr_frontdoor_t *fd;
    xr_frontdoor_each(fd, i) if (fd->stop) fd->stop();
    for (size_t i = 0; i < xr_w.nls; i++) {
        xr_wlistener_t *l = &xr_w.ls[i];
        if (l->fd < 0)
            continue;
        uv_poll_stop(&l->poll);
        atomic_store(&xr_shm->accepting[xr_worker_slot], 0);
        close(l->fd); /* our copy only: the master keeps the socket */
        l->fd = -1;
        uv_close((uv_handle_t *) &l->poll, NULL);
        uv_close((uv_handle_t *) &l->defer, NULL);
    }
    uv_timer_stop(&xr_w.retry);
}

static void xr_worker_close_all(const char *why)
{
    while (!xr_list_empty(&xr_w.relays)) {
        xr_relay_t *r = xr_container_of(xr_w.relays.next, xr_relay_t, link);
        xr_relay_close(r, "%s", why);
    }
}

static void xr_worker_drain_cb(uv_timer_t *t)
{
    xr_log(XR_LOG_NOTICE, "drain_timeout reached, closing %zu connections",
           xr_w.nrelays + xr_w.nconns);
    xr_worker_close_all("worker shutdown");
    xr_worker_doors_close_all("worker shutdown");
}

/* Stop accepting; finish once the connections have (graceful stop). */
static void xr_worker_drain(void)
{
    xr_w.stopping = 1;
    xr_worker_close_listeners();
    if (xr_w.nrelays == 0 && xr_w.nconns == 0) {
        xr_worker_finish();
        return;
    }
    uv_timer_start(&xr_w.drain, xr_worker_drain_cb, (uint64_t) xr_w.gen->main.drain_timeout, 0);
}

static void xr_worker_signal_cb(uv_signal_t *h, int signum)
{
    switch (signum) {
    case SIGQUIT:
        if (xr_w.stopping)
            return;
        xr_log(XR_LOG_NOTICE, "gracefully shutting down, %zu connections to finish",
               xr_w.nrelays + xr_w.nconns);
        xr_worker_drain();
        break;
    case SIGUSR2:
        /* Binary upgrade: connections with continuity go on in the new
         * binary's workers (from our snapshot and the master's
         * descriptors); the others finish here. */
        xr_log(XR_LOG_NOTICE,
               "binary upgrade: handing over %zu connections with continuity, %zu relays "
               "to finish",
               xr_w.nconns, xr_w.nrelays);
        xr_conn_freeze();
        {
            const xr_frontdoor_t *fd;
            xr_frontdoor_each(fd, i) if (fd->freeze) fd->freeze();
        }
        xr_cont_frozen();
        if (!xr_w.stopping)
            xr_worker_drain();
        else if (xr_w.nrelays == 0)
            xr_worker_finish();
        break;
    case SIGTERM:
    case SIGINT:
        xr_w.stopping = 2;
        xr_worker_close_listeners();
        xr_worker_close_all("worker shutdown");
        xr_worker_doors_close_all("worker shutdown");
        xr_worker_finish();
        break;
    case SIGUSR1:
        xr_log_reopen();
        for (xr_filter_conf_t *f = xr_w.gen->filters; f; f = f->next_in_gen)
            if (f->module->reopen)
                f->module->reopen(f->conf);
        break;
    default: break;
    }
}

/* The adopted connections have had their first turn: the reactor's
 * posted pumps (idle phase) and the events of their sockets (poll phase)
 * come before a check handle.  Now close what the fork brought along
 * that is not ours: a few thousand close() calls are milliseconds that
 * those connections would otherwise wait. */
static void xr_worker_adopted_cb(uv_check_t *h)
{
    if (!uv_is_active((uv_handle_t *) h))
        return;
    uv_check_stop(h);
    double now = xr_worker_clock_ms(CLOCK_MONOTONIC);
    xr_cont_release_unclaimed();
    if (xr_w.standby) {
        /* The other workers' stores and the spare heap served their
         * purpose: glibc's default thresholds again (fixed now, where
         * they would have adapted), and what is free goes back. */
        xr_conn_standby_end();
        mallopt(M_TRIM_THRESHOLD, 128 * 1024);
        mallopt(M_MMAP_THRESHOLD, 128 * 1024);
        malloc_trim(0);
    }
    /* Where a takeover's time goes, from this process's start to the
     * adopted connections' first pumps; the master logs the death and
     * the fork. */
    xr_log(XR_LOG_DEBUG,
           "takeover of worker %d: start-up %.1f ms, adoption %.1f ms, first turn %.1f ms, "
           "closing inherited descriptors %.1f ms; %.1f ms CPU",
           (int) xr_w.adopting, xr_w.t_adopt - xr_w.t_start, xr_w.t_adopted - xr_w.t_adopt,
           now - xr_w.t_adopted, xr_worker_clock_ms(CLOCK_MONOTONIC) - now,
           xr_worker_clock_ms(CLOCK_PROCESS_CPUTIME_ID) - xr_w.cpu_start);
}

/* Every front door's exit_worker. */
static void xr_worker_doors_exit(void)
{
    const xr_frontdoor_t *fd;
    xr_frontdoor_each(fd, i) if (fd->exit_worker) fd->exit_worker();
    xr_conn_worker_exit();
}

/* What a worker sets up before it knows its slot: a standby does this
 * ahead of a takeover (xr_worker_standby_main). */
static void xr_worker_prepare(xr_gen_t *g, int close_fd, int cont_fd, pid_t adopt)
{
    xr_log_set_pid();
    if (close_fd >= 0)
        close(close_fd);
    /* The master blocks signals for its signalfd; a worker takes them. */
    sigset_t all;
    sigemptyset(&all);
    sigprocmask(SIG_SETMASK, &all, NULL);
    signal(SIGPIPE, SIG_IGN);
    signal(SIGHUP, SIG_IGN);
    /* A worker without its master has nobody to supervise or reload it. */
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() == 1)
        _exit(0);
    xr_listeners_close_foreign(g);
    xr_cont_child_init(cont_fd, adopt);

    memset(&xr_w, 0, sizeof(xr_w));
    xr_w.gen = g;
    xr_list_init(&xr_w.relays);
    if (uv_loop_init(&xr_w.loop) != 0) {
        xr_log(XR_LOG_EMERG, "uv_loop_init() failed in worker");
        _exit(2);
    }
    if (xr_tls_worker_init() != XR_OK) {
        xr_log(XR_LOG_EMERG, "cannot reseed the random generator in the worker");
        _exit(2);
    }
    if (xr_reactor_init(&xr_w.loop) != XR_OK) {
        xr_log_errno(XR_LOG_EMERG, errno, "cannot create the worker's epoll set");
        _exit(2);
    }
    uv_timer_init(&xr_w.loop, &xr_w.drain);
    uv_timer_init(&xr_w.loop, &xr_w.retry);

    for (xr_filter_conf_t *f = g->filters; f; f = f->next_in_gen)
        if (f->module->init_worker && f->module->init_worker(f->conf) != XR_OK) {
            xr_log(XR_LOG_EMERG, "filter \"%s\" failed to start in the worker", f->module->name);
            _exit(2);
        }
}

/* The rest of a worker's life, as worker slot of g (see xr_worker_main). */
static void xr_worker_serve(xr_gen_t *g, int slot, unsigned singles, pid_t adopt,
                            const char *adopt_dir, int retiring) __attribute__((noreturn));
static void xr_worker_serve(xr_gen_t *g, int slot, unsigned singles, pid_t adopt,
                            const char *adopt_dir, int retiring)
{
    const xr_frontdoor_t *fd;
    xr_proctitle_set("xrayd: worker process");
    xr_worker_slot = slot;
    static const int sigs[] = {SIGQUIT, SIGTERM, SIGINT, SIGUSR1, SIGUSR2};
    for (size_t i = 0; i < XR_ARRAY_SIZE(sigs); i++) {
        uv_signal_init(&xr_w.loop, &xr_w.sig[i]);
        uv_signal_start(&xr_w.sig[i], xr_worker_signal_cb, sigs[i]);
    }
    xr_w.rts = xr_calloc(g->nrelays, sizeof(xr_relay_rt_t));
    size_t nls = 0;
    for (size_t r = 0; r < g->nrelays; r++) {
        xr_relay_rt_init(&xr_w.rts[r], g->relays[r]);
        xr_shm_bind(&xr_w.rts[r], slot);
        nls += g->relays[r]->listen.n;
    }
    xr_w.ls = xr_calloc(nls, sizeof(xr_wlistener_t));
    for (size_t r = 0; r < g->nrelays; r++) {
        for (size_t i = 0; i < g->relays[r]->listen.n; i++) {
            xr_wlistener_t *l = &xr_w.ls[xr_w.nls++];
            l->rt = &xr_w.rts[r];
            l->fd = xr_listeners_fd(&g->relays[r]->listen.items[i]);
            if (l->fd < 0 || uv_poll_init_socket(&xr_w.loop, &l->poll, l->fd) != 0) {
                xr_log(XR_LOG_EMERG, "no socket for %s in the worker",
                       g->relays[r]->listen.items[i].text);
                _exit(2);
            }
            uv_timer_init(&xr_w.loop, &l->defer);
            l->defer.data = l;
            xr_worker_listen(l, 1);
        }
    }
    if (!retiring && xr_w.nls > 0)
        atomic_store(&xr_shm->accepting[slot], g->number);
    if (xr_conn_worker_init(&xr_w.loop, g, retiring) != XR_OK)
        _exit(2);
    xr_frontdoor_each(fd, i)
    {
        if (fd->init_worker && fd->init_worker(&xr_w.loop, g, retiring) != XR_OK)
            _exit(2);
    }
    if (adopt > 0) {
        xr_w.adopting = adopt;
        xr_w.t_adopt = xr_worker_clock_ms(CLOCK_MONOTONIC);
        xr_conn_adopt(adopt, adopt_dir);
        xr_frontdoor_each(fd, i) if (fd->adopt) fd->adopt(adopt, adopt_dir);
        xr_w.t_adopted = xr_worker_clock_ms(CLOCK_MONOTONIC);
        uv_check_init(&xr_w.loop, &xr_w.adopted);
        uv_check_start(&xr_w.adopted, xr_worker_adopted_cb);
    }
    if (retiring) {
        /* A replacement for a worker of a retiring generation: it only
         * carries on what that one left. */
        xr_log(XR_LOG_NOTICE,
               "worker process started (generation %llu, retiring) for %zu "
               "connections of worker %d",
               (unsigned long long) g->number, xr_w.nconns, (int) adopt);
        xr_worker_drain();
        uv_run(&xr_w.loop, UV_RUN_DEFAULT);
        xr_worker_adopted_cb(&xr_w.adopted); /* the loop may end before its first turn */
        xr_worker_doors_exit();
        exit(0);
    }
    char serving[128] = "";
    xr_frontdoor_each(fd, i) if ((singles >> i) & 1)
    {
        if (fd->start(&xr_w.loop, g) != XR_OK)
            _exit(2);
        size_t n = strlen(serving);
        snprintf(serving + n, sizeof(serving) - n, ", serving the %s", fd->name);
    }
    xr_log(XR_LOG_NOTICE, "worker process started (generation %llu)%s",
           (unsigned long long) g->number, serving);

    uv_run(&xr_w.loop, UV_RUN_DEFAULT);
    xr_worker_adopted_cb(&xr_w.adopted);

    for (xr_filter_conf_t *f = g->filters; f; f = f->next_in_gen)
        if (f->module->exit_worker)
            f->module->exit_worker(f->conf);
    xr_worker_doors_exit();
    xr_log(XR_LOG_NOTICE, "worker process exiting");
    exit(0);
}

void xr_worker_main(xr_gen_t *g, int slot, unsigned singles, int close_fd, int cont_fd, pid_t adopt,
                    const char *adopt_dir, int retiring)
{
    double t_start = xr_worker_clock_ms(CLOCK_MONOTONIC);
    xr_proctitle_set("xrayd: worker process");
    xr_worker_prepare(g, close_fd, cont_fd, adopt);
    xr_w.t_start = t_start;
    xr_worker_serve(g, slot, singles, adopt, adopt_dir, retiring);
}

/* How often a standby brings the running workers' new connections'
 * pages in: what a takeover finds cold is at most this old.  A round
 * costs about a microsecond a live connection, so with very many the
 * rounds space out to keep the standby under 2% of a core. */
#define XR_STANDBY_WARM_MS    100
#define XR_STANDBY_CPU_FACTOR 50
/* The heap a standby keeps faulted in, per connection its takeover may
 * bring (a connection object, its handles and filter state), and at most. */
#define XR_STANDBY_HEAP_PER_CONN 3072
#define XR_STANDBY_HEAP_MAX      (16u << 20)
/* glibc's ceiling for M_MMAP_THRESHOLD on 64-bit systems (a larger value
 * is refused, and every large block would be a mapping of its own). */
#define XR_STANDBY_MMAP_THRESHOLD (32u << 20)

/* Keep at least want bytes of heap faulted in: malloc carves a takeover's
 * objects out of them instead of faulting pages in while clients wait. */
static void xr_worker_standby_heap(size_t want)
{
    static size_t kept;
    want = XR_MIN(want, (size_t) XR_STANDBY_HEAP_MAX);
    if (want <= kept)
        return;
    if (kept == 0) {
        /* From the heap, not a mapping of its own, and not given back
         * when freed. */
        mallopt(M_MMAP_THRESHOLD, (int) XR_STANDBY_MMAP_THRESHOLD);
        mallopt(M_TRIM_THRESHOLD, (int) XR_STANDBY_MMAP_THRESHOLD * 2);
    }
    char *p = malloc(want);
    if (p == NULL)
        return;
    /* Not memset: a store the compiler sees freed unread is dropped. */
    explicit_bzero(p, want);
    free(p);
    kept = want;
}

void xr_worker_standby_main(xr_gen_t *g, int close_fd, int cont_fd)
{
    xr_proctitle_set("xrayd: standby worker process");
    xr_worker_prepare(g, close_fd, cont_fd, 0);
    /* Nothing to finish: the master's SIGTERM just ends it. */
    signal(SIGTERM, SIG_DFL);
    signal(SIGINT, SIG_DFL);
    signal(SIGQUIT, SIG_DFL);
    signal(SIGUSR1, SIG_IGN);
    signal(SIGUSR2, SIG_IGN);
    xr_cont_order_t o;
    for (;;) {
        double t0 = xr_worker_clock_ms(CLOCK_MONOTONIC);
        size_t live = xr_conn_standby_warm(g->main.state_dir);
        xr_worker_standby_heap(live * XR_STANDBY_HEAP_PER_CONN);
        double took = xr_worker_clock_ms(CLOCK_MONOTONIC) - t0;
        int rc = xr_cont_wait_order(
            (int) XR_MAX((double) XR_STANDBY_WARM_MS, took * XR_STANDBY_CPU_FACTOR), &o);
        if (rc < 0)
            _exit(0);
        if (rc > 0)
            break;
    }
    /* The loop's clock stopped when it was made, maybe minutes ago: the
     * connections taken over must not start out that idle. */
    uv_update_time(&xr_w.loop);
    xr_w.t_start = xr_worker_clock_ms(CLOCK_MONOTONIC);
    xr_w.cpu_start = xr_worker_clock_ms(CLOCK_PROCESS_CPUTIME_ID);
    xr_w.standby = 1;
    xr_log_reopen(); /* the log may have been rotated meanwhile */
    xr_log(XR_LOG_NOTICE, "standby worker process takes over worker %d's %u connection(s)",
           (int) o.dead, o.n);
    xr_worker_serve(g, o.slot, o.singles, o.dead, o.dir, 0);
}
