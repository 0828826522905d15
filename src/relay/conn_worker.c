/*
 * conn_worker.c: a worker's continuity service (see conn.h): its own
 * snapshot store, taking over the stores and sockets of a dead worker
 * (or of the old binary's, after an upgrade) and resuming each connection
 * where the kernel says its bytes are, freezing everything for a binary
 * upgrade, and closing everything at exit.
 */
#include "core/xrayd.h"
#include "core/continuity.h"
#include "core/log.h"
#include "core/worker.h"
#include "relay/acct.h"
#include "relay/conn.h"
#include "relay/conn_int.h"
#include "relay/relay.h"

#include <glob.h>
#include <pthread.h>
#include <stdio.h>
#include <sys/socket.h>
#include <unistd.h>

/* ---- the worker's service ---------------------------------------------------- */

void xr_conn_store_path(char *buf, size_t n, const char *state_dir, pid_t pid)
{
    snprintf(buf, n, "%s/conn-%d.snap", state_dir, (int) pid);
}

int xr_conn_worker_init(uv_loop_t *loop, xr_gen_t *g, int retiring)
{
    memset(&xr__cx, 0, sizeof(xr__cx));
    xr__cx.loop = loop;
    xr__cx.gen = g;
    xr_list_init(&xr__cx.conns);
    uint64_t slots = 0, ring = 4096;
    for (size_t i = 0; i < g->nrelays; i++) {
        const xr_relay_conf_t *rc = g->relays[i];
        if (!rc->continuity)
            continue;
        slots += (uint64_t) rc->max_connections;
        ring = XR_MAX(ring, (uint64_t) (rc->buffer_size + 4095) / 4096 * 4096);
    }
    if (slots == 0 || retiring)
        return XR_OK;
    char path[600], err[800];
    xr_conn_store_path(path, sizeof(path), g->main.state_dir, getpid());
    xr__cx.own = xr_store_create(path, (uint32_t) XR_MIN(slots, 1u << 20), (uint32_t) ring, err,
                                 sizeof(err));
    if (xr__cx.own == NULL) {
        xr_log(XR_LOG_EMERG, "continuity: %s", err);
        return XR_ERROR;
    }
    uv_timer_init(loop, &xr__cx.sweep);
    uv_unref((uv_handle_t *) &xr__cx.sweep); /* it keeps no worker alive */
    return XR_OK;
}

/* How long a free slot keeps its ring pages.  A slot is taken again
 * last-freed first, so under a steady rate of short connections the same
 * few slots go round with their pages mapped: giving the pages back at
 * every close and faulting fresh zeroed ones in for the next connection
 * cost more than the relaying itself (a third of a worker's time at
 * 4,500 connections a second on the benchmark host).  What they hold
 * is an ended connection's bytes, in the store only this worker reads. */
#define XR_KEEP_FREED_MS 1000

static void xr_cn_sweep_cb(uv_timer_t *t)
{
    if (xr__cx.own != NULL && xr_store_sweep(xr__cx.own, uv_now(xr__cx.loop), XR_KEEP_FREED_MS) > 0)
        uv_timer_start(t, xr_cn_sweep_cb, XR_KEEP_FREED_MS, 0);
}

void xr__cn_slot_freed(xr_pslot_t *p)
{
    xr_store_release(xr__cx.own, p, uv_now(xr__cx.loop));
    if (!uv_is_active((uv_handle_t *) &xr__cx.sweep))
        uv_timer_start(&xr__cx.sweep, xr_cn_sweep_cb, XR_KEEP_FREED_MS, 0);
}

void xr_conn_worker_exit(void)
{
    if (xr__cx.own != NULL && xr_store_used(xr__cx.own) == 0) {
        xr_store_close(xr__cx.own, 1);
        xr__cx.own = NULL;
    }
}

static xr_relay_rt_t *xr_px_block(const char *name)
{
    for (size_t i = 0; i < xr__cx.gen->nrelays; i++) {
        const xr_relay_conf_t *rc = xr__cx.gen->relays[i];
        if (rc->continuity && strcmp(rc->name, name) == 0)
            return xr_worker_rt(rc);
    }
    return NULL;
}

/* Do the counters of a resumed connection fit its snapshot?  What was
 * read but not yet sent (or consumed) must still be in the ring: anything
 * else is a snapshot this code did not write.  Sets why if not. */
void xr__cn_check_resumed(const xr_conn_t *c, const uint64_t was_taken[2], char *why, size_t wl)
{
    const xr_pslot_t *p = c->p;
    for (int d = 0; d < 2; d++) {
        uint64_t floor = c->h ? c->in_done[d] : p->given[1 - d];
        uint64_t end = xr__cn_out_end(c, d);
        if (p->taken[d] < floor || p->taken[d] - floor > c->rsize || end < p->given[1 - d] ||
            p->taken[d] + c->rsize < was_taken[d]) {
            snprintf(why, wl,
                     "the kernel's counters do not fit the snapshot (%s: read %llu, sent on "
                     "%llu)",
                     d == XR_DIR_UP ? "up" : "down", (unsigned long long) p->taken[d],
                     (unsigned long long) p->given[1 - d]);
            return;
        }
    }
}

/* A connection being taken over: its slot, its sockets, and where the
 * kernel says their bytes are. */
typedef struct {
    xr_pslot_t *p;
    int fd[2];
    xr_conn_t *c; /* NULL until made, and if it was closed on the way */
    xr_acct_t acct[2];
    int acct_ok[2];
} xr_px_taking_t;

/* Resume, first half: the connection object around slot t->p and its
 * sockets watched; nothing read or written yet. */
static void xr_px_resume_open(xr_store_t *s, xr_px_taking_t *t)
{
    xr_pslot_t *p = t->p;
    const int *fd = t->fd;
    xr_relay_rt_t *rt = xr_px_block(p->block);
    if (rt == NULL) {
        xr_log(XR_LOG_WARN, "*%llu block \"%s\" is gone from the configuration; closing",
               (unsigned long long) p->id, p->block);
        for (int i = 0; i < 2; i++)
            if (fd[i] >= 0) {
                shutdown(fd[i], SHUT_RDWR);
                close(fd[i]);
            }
        uint64_t id = p->id;
        xr_store_release(s, p, 0);
        xr_cont_drop(id);
        return;
    }
    atomic_fetch_add(rt->ctr.active, 1);
    xr_conn_t *c = xr__cn_new(rt, s, p);
    p->resumed++;
    atomic_fetch_add(rt->ctr.resumed, 1);
    if (xr__cn_open_filters(c) != XR_OK)
        return;
    c->end[0].io.fd = fd[0];
    c->end[1].io.fd = fd[1];
    for (int i = 0; i < 2; i++)
        if (fd[i] >= 0 && xr_io_add(&c->end[i].io, fd[i], xr__cn_io_cb) != XR_OK) {
            xr_conn_close(c, "cannot watch a resumed socket");
            return;
        }
    if (fd[0] < 0) {
        xr_conn_close(c, "the client socket was not handed over");
        return;
    }
    t->c = c;
}

/* Resume, second half: carry on where the kernel's counters (t->acct)
 * say every byte is (see the comment at the top). */
static void xr_px_resume_run(xr_px_taking_t *t)
{
    char why[160] = "";
    xr_conn_t *c = t->c;
    xr_pslot_t *p = t->p;
    const int *fd = t->fd;
    if (p->phase == XR_PHASE_CONNECTING) {
        const xr_acct_t *a = &t->acct[1];
        if (fd[1] >= 0 && t->acct_ok[1] && xr_acct_established(a->state)) {
            xr_log_session(XR_LOG_NOTICE, &c->s, "resumed (%u), upstream connected meanwhile",
                           p->resumed);
            xr__cn_connected(c);
            return;
        }
        if (fd[1] >= 0 && t->acct_ok[1] && xr_acct_connecting(a->state)) {
            c->state = XR_PC_CONNECTING;
            uv_timer_start(&c->timer, xr__cn_timer_cb, (uint64_t) c->conf->connect_timeout, 0);
            c->end[1].writable = 1; /* the edge may be gone: look now */
            xr_log_session(XR_LOG_NOTICE, &c->s, "resumed (%u) while connecting", p->resumed);
            xr__cn_io_cb(&c->end[1].io, EPOLLOUT);
            return;
        }
        if (fd[1] >= 0) {
            xr_io_del(&c->end[1].io);
            close(fd[1]);
            c->end[1].io.fd = -1;
        }
        if (p->tries > 0)
            p->tries--; /* that attempt never went out */
        xr_log_session(XR_LOG_NOTICE, &c->s, "resumed (%u) before the upstream connected",
                       p->resumed);
        xr__cn_connect(c);
        return;
    }
    if (fd[1] < 0) {
        xr_conn_close(c, "the upstream socket was not handed over");
        return;
    }
    uint64_t was_taken[2] = {p->taken[0], p->taken[1]};
    for (int e = 0; e < 2; e++) {
        const xr_acct_t *a = &t->acct[e];
        if (!t->acct_ok[e]) {
            snprintf(why, sizeof(why), "cannot read the kernel's counters of the %s socket",
                     xr__cn_end_name(e));
            break;
        }
        p->taken[e] = a->taken - p->rx_base[e];
        p->given[e] = a->given - p->tx_base[e];
        c->end[e].wr_shut = a->fin_out;
        /* What the dead worker read after its last count is lost to the
         * statistics, not counted twice. */
        c->counted[e] = XR_MAX(c->counted[e], p->taken[e]);
    }
    if (why[0] == '\0' && c->h != NULL && c->h->resume(c) != XR_OK)
        snprintf(why, sizeof(why), "%s",
                 c->s.close_reason[0] ? c->s.close_reason
                                      : "the stage's state in the "
                                        "snapshot is not usable");
    if (why[0] == '\0' && c->h != NULL && c->h->counts != NULL) {
        /* Its counts are the stage's (cleartext), from its record. */
        uint64_t written[2];
        xr__cn_counts(c, c->counted, written);
    }
    if (why[0] == '\0')
        xr__cn_check_resumed(c, was_taken, why, sizeof(why));
    if (why[0] != '\0') {
        xr_log_session(XR_LOG_ERR, &c->s, "cannot resume: %s", why);
        xr_conn_close(c, "resume failed");
        return;
    }
    xr_log_session(XR_LOG_INFO, &c->s,
                   "resumed (%u): up %llu read, %llu sent; down %llu read, %llu sent", p->resumed,
                   (unsigned long long) p->taken[0], (unsigned long long) p->given[1],
                   (unsigned long long) p->taken[1], (unsigned long long) p->given[0]);
    xr__cn_running(c, 0);
}

typedef struct {
    xr_px_taking_t *t;
    size_t n;
} xr_px_acct_job_t;

/* The kernel's counters of every socket taken over.  Nobody reads or
 * writes them until every connection is resumed, so the readings hold
 * whenever they are taken. */
static void *xr_px_acct_all(void *arg)
{
    xr_px_acct_job_t *job = arg;
    for (size_t i = 0; i < job->n; i++)
        for (int e = 0; e < 2; e++)
            job->t[i].acct_ok[e] =
                job->t[i].fd[e] >= 0 && xr_acct(job->t[i].fd[e], &job->t[i].acct[e]) == XR_OK;
    return NULL;
}

/* Take over one store file of a dead worker. */
static size_t xr_px_adopt_store(pid_t dead, const char *found, const char *state_dir)
{
    /* Renamed ours first: if this worker dies too, its own replacement
     * finds every store it held by its pid. */
    static unsigned seq;
    char path[600], err[800];
    snprintf(path, sizeof(path), "%s/conn-%d.%u.snap", state_dir, (int) getpid(), ++seq);
    if (rename(found, path) != 0) {
        xr_log(XR_LOG_ERR, "continuity: cannot take %s: %s", found, strerror(errno));
        return 0;
    }
    xr_store_t *s = xr_store_open(path, err, sizeof(err));
    if (s == NULL) {
        xr_log(XR_LOG_ERR, "continuity: cannot adopt worker %d's connections: %s", (int) dead, err);
        return 0;
    }
    xr_astore_t *a = xr_calloc(1, sizeof(*a));
    a->store = s;
    a->next = xr__cx.adopted;
    xr__cx.adopted = a;
    uint32_t live = xr_store_used(s), seen = 0;
    xr_px_taking_t *t = xr_calloc(XR_MAX(live, 1u), sizeof(*t));
    size_t n = 0;
    for (uint32_t i = 0; i < xr_store_nslots(s) && seen < live; i++) {
        if (!xr_store_is_live(s, i))
            continue;
        xr_pslot_t *p = xr_store_slot(s, i);
        if (p->live != XR_PSLOT_LIVE)
            continue;
        seen++;
        if (!xr_cont_take(p->id, t[n].fd)) {
            /* It died between taking the slot and handing the socket over. */
            xr_log(XR_LOG_NOTICE, "*%llu %s: no socket survived the crash; dropped",
                   (unsigned long long) p->id, p->block);
            xr_store_release(s, p, 0);
            continue;
        }
        t[n++].p = p;
    }
    /* Three system calls a socket read its counters, and as many make and
     * watch its connection: with a thousand connections waiting, the
     * counters are read on the other core meanwhile. */
    xr_px_acct_job_t job = {t, n};
    pthread_t th;
    int threaded = n >= 64 && pthread_create(&th, NULL, xr_px_acct_all, &job) == 0;
    for (size_t i = 0; i < n; i++)
        xr_px_resume_open(s, &t[i]);
    if (threaded)
        pthread_join(th, NULL);
    else
        xr_px_acct_all(&job);
    for (size_t i = 0; i < n; i++)
        if (t[i].c != NULL)
            xr_px_resume_run(&t[i]);
    free(t);
    if (xr_store_used(s) == 0) {
        xr__cx.adopted = a->next;
        xr_store_close(s, 1);
        free(a);
    }
    return n;
}

void xr_conn_forget(const char *state_dir, pid_t pid)
{
    char pattern[600];
    xr_conn_store_glob(pattern, sizeof(pattern), state_dir, pid);
    glob_t gl;
    if (glob(pattern, 0, NULL, &gl) == 0) {
        for (size_t i = 0; i < gl.gl_pathc; i++)
            unlink(gl.gl_pathv[i]);
        globfree(&gl);
    }
}

size_t xr_conn_standby_warm(const char *state_dir)
{
    char pattern[600];
    snprintf(pattern, sizeof(pattern), "%s/conn-*.snap", state_dir);
    glob_t gl;
    size_t live = 0;
    int rc = glob(pattern, 0, NULL, &gl);
    if (rc == 0 || rc == GLOB_NOMATCH)
        live = xr_store_warm(rc == 0 ? gl.gl_pathv : NULL, rc == 0 ? gl.gl_pathc : 0);
    if (rc == 0)
        globfree(&gl);
    return live;
}

void xr_conn_standby_end(void)
{
    xr_store_unwarm();
}

void xr_conn_store_glob(char *buf, size_t n, const char *state_dir, pid_t pid)
{
    snprintf(buf, n, "%s/conn-%d.*snap", state_dir, (int) pid);
}

size_t xr_conn_adopt(pid_t dead, const char *state_dir)
{
    /* The dead worker's own store, and those it had adopted itself. */
    char pattern[600];
    xr_conn_store_glob(pattern, sizeof(pattern), state_dir, dead);
    glob_t gl;
    size_t n = 0;
    int64_t t0 = xr_mono_ms();
    if (glob(pattern, 0, NULL, &gl) == 0) {
        for (size_t i = 0; i < gl.gl_pathc; i++)
            n += xr_px_adopt_store(dead, gl.gl_pathv[i], state_dir);
        globfree(&gl);
    }
    xr_log(XR_LOG_NOTICE, "took over %zu connection(s) of worker %d in %lld ms", n, (int) dead,
           (long long) (xr_mono_ms() - t0));
    return n;
}

void xr_conn_freeze(void)
{
    xr__cx.frozen = 1;
    while (!xr_list_empty(&xr__cx.conns)) {
        xr_conn_t *c = xr_container_of(xr__cx.conns.next, xr_conn_t, link);
        if (c->store == NULL) {
            /* No snapshot to carry it: it ends with this worker. */
            xr_conn_close(c, "binary upgrade (no continuity)");
            continue;
        }
        c->state = XR_PC_FROZEN;
        xr_conn_close(c, NULL);
    }
    /* The stores stay on disk for the new binary's workers. */
    if (xr__cx.own != NULL)
        xr_store_close(xr__cx.own, 0);
    xr__cx.own = NULL;
    for (xr_astore_t *a = xr__cx.adopted, *next; a; a = next) {
        next = a->next;
        xr_store_close(a->store, 0);
        free(a);
    }
    xr__cx.adopted = NULL;
}

void xr_conn_close_all(const char *why)
{
    while (!xr_list_empty(&xr__cx.conns)) {
        xr_conn_t *c = xr_container_of(xr__cx.conns.next, xr_conn_t, link);
        xr_conn_close(c, "%s", why);
    }
}

size_t xr_conn_count(void)
{
    return xr__cx.n;
}
