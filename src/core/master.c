/*
 * master.c: the master process.
 *
 * It runs no relay traffic and no libuv loop: signals arrive on a
 * signalfd and poll() waits for them, the workers' continuity channels,
 * the admin socket, an upgrade's channel, or the next respawn, so a
 * worker forked from here inherits no event-loop state.
 */
#include "core/xrayd.h"
#include "core/admin.h"
#include "core/continuity.h"
#include "core/log.h"
#include "core/master.h"
#include "core/shm.h"
#include "core/upgrade.h"
#include "core/worker.h"
#include "core/frontdoor.h"
#include "event/listener.h"
#include "relay/conn.h"

#include <fcntl.h>
#include <glob.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define XR_MAX_GENS        16
#define XR_RESPAWN_FAST_MS 2000 /* a worker that dies younger backs off */
#define XR_RESPAWN_MAX_MS  5000
#define XR_FAST_STOP_MS    5000
#define XR_FREEZE_MS       5000 /* old workers' time to freeze in an upgrade */
/* Workers of the current generation dying young this many times in a row,
 * with none of them up for longer, is a master that cannot keep a worker
 * alive: an alert each time, and `xray status` says so. */
#define XR_FAILING_STARTS 3

typedef struct {
    pid_t pid;
    xr_gen_t *gen;
    int retiring;
    unsigned singles; /* single-worker front doors it serves (bit: table index) */
    int64_t started;
    int cont_fd; /* the master's end of its continuity channel */
    int frozen;  /* told to hand its proxied connections over (upgrade) */
} xr_proc_t;

/* A dead worker whose proxied connections wait for a replacement; dir
 * holds its stores (an old binary's may differ from ours). */
typedef struct {
    pid_t pid;
    xr_gen_t *gen;
    char dir[512];
} xr_orphan_t;

enum { XR_UP_NONE = 0, XR_UP_STARTED, XR_UP_FREEZING };

#define XR_MAX_ORPHANS 64

static struct {
    xr_proc_t procs[XR_SHM_WORKERS];
    xr_gen_t *gens[XR_MAX_GENS]; /* gens[0] is current; others are retiring */
    const char *conf_path;
    int sigfd;
    int stopping; /* 1: graceful (QUIT), 2: fast (TERM/INT) */
    int64_t stop_deadline;
    int pending_respawn;
    int64_t respawn_at;
    int64_t respawn_delay;
    /* Workers of gens[0] that exited within XR_RESPAWN_FAST_MS, in a row;
     * how the last one ended, and since when (wall ms) they have. */
    int failed_starts;
    char failed_how[128];
    int64_t failing_since;
    char pid_path[4096];
    xr_orphan_t orphans[XR_MAX_ORPHANS];
    size_t norphans;
    int admin_fd;
    char admin_path[512];
    char exe[4096];  /* the binary started, for SIGUSR2 to run again */
    int64_t started; /* wall ms */
    pid_t upgraded_from;
    int handed_over; /* an upgrade took our connections: we only finish relays */
    struct {
        int phase;
        pid_t pid; /* the new master */
        int fd;
        int64_t deadline;
    } up;
} xr_m;

static int xr_master_nprocs(const xr_gen_t *g)
{
    int n = 0;
    for (int i = 0; i < XR_SHM_WORKERS; i++)
        if (xr_m.procs[i].pid > 0 && (g == NULL || xr_m.procs[i].gen == g))
            n++;
    return n;
}

/* Start a worker of g; with adopt, it takes over that dead worker's
 * proxied connections, and with retiring only those. */
static int xr_master_spawn_for(xr_gen_t *g, pid_t adopt, const char *adopt_dir, int retiring)
{
    int slot = -1;
    for (int i = 0; i < XR_SHM_WORKERS; i++)
        if (xr_m.procs[i].pid == 0) {
            slot = i;
            break;
        }
    if (slot < 0) {
        xr_log(XR_LOG_ALERT, "no free worker slot (more than %d workers alive)", XR_SHM_WORKERS);
        return XR_ERROR;
    }
    /* One worker of a generation serves each single-worker front door (the
     * agent), so its tables live in one process; a replacement for that
     * worker takes the role over. */
    unsigned singles = 0;
    const xr_frontdoor_t *fd;
    xr_frontdoor_each(fd, k) if (fd->single && !retiring && fd->active && fd->active(g)) singles |=
        1u << k;
    for (int i = 0; i < XR_SHM_WORKERS && singles; i++)
        if (xr_m.procs[i].pid > 0 && xr_m.procs[i].gen == g)
            singles &= ~xr_m.procs[i].singles;
    int child_end = -1;
    int cont_fd = xr_cont_channel(&child_end);
    if (cont_fd < 0) {
        xr_log_errno(XR_LOG_ALERT, errno, "cannot make a continuity channel");
        return XR_ERROR;
    }
    pid_t pid = fork();
    if (pid < 0) {
        xr_log_errno(XR_LOG_ALERT, errno, "fork() failed");
        close(cont_fd);
        close(child_end);
        return XR_ERROR;
    }
    if (pid == 0) {
        if (xr_m.admin_fd >= 0)
            close(xr_m.admin_fd);
        if (xr_m.up.fd >= 0)
            close(xr_m.up.fd);
        xr_worker_main(g, slot, singles, xr_m.sigfd, child_end, adopt,
                       adopt_dir ? adopt_dir : g->main.state_dir, retiring);
    }
    close(child_end);
    xr_cont_attach(cont_fd, pid);
    if (adopt > 0)
        xr_cont_adopted(adopt, pid);
    xr_m.procs[slot].cont_fd = cont_fd;
    xr_m.procs[slot].singles = singles;
    xr_m.procs[slot].pid = pid;
    xr_m.procs[slot].gen = g;
    xr_m.procs[slot].retiring = retiring;
    xr_m.procs[slot].started = xr_mono_ms();
    if (adopt > 0)
        xr_log(XR_LOG_NOTICE, "start worker process %d, taking over worker %d's connections",
               (int) pid, (int) adopt);
    else
        xr_log(XR_LOG_NOTICE, "start worker process %d", (int) pid);
    return XR_OK;
}

/* A new worker of g, adopting an orphan of g if one waits. */
static int xr_master_spawn(xr_gen_t *g)
{
    for (size_t i = 0; i < xr_m.norphans; i++)
        if (xr_m.orphans[i].gen == g) {
            xr_orphan_t o = xr_m.orphans[i];
            xr_m.orphans[i] = xr_m.orphans[--xr_m.norphans];
            return xr_master_spawn_for(g, o.pid, o.dir, 0);
        }
    return xr_master_spawn_for(g, 0, NULL, 0);
}

/* Worker pid of g died with proxied connections: they wait for the next
 * worker of g (the respawn), or - g retiring - for a replacement that only
 * finishes them. */
/* Remove every snapshot of dead worker pid (nobody adopts them). */
static void xr_master_unlink_stores(const char *dir, pid_t pid)
{
    const xr_frontdoor_t *fd;
    xr_conn_forget(dir, pid);
    xr_frontdoor_each(fd, i) if (fd->forget) fd->forget(dir, pid);
}

static void xr_master_orphan(pid_t pid, xr_gen_t *g, const char *dir, size_t n)
{
    if (xr_m.handed_over)
        return; /* its stores are the new master's now */
    if (xr_m.stopping || n == 0) {
        xr_cont_forget(pid);
        xr_master_unlink_stores(dir, pid);
        return;
    }
    xr_log(XR_LOG_NOTICE, "worker %d left %zu proxied connection(s) to take over", (int) pid, n);
    if (g != xr_m.gens[0]) {
        if (xr_master_spawn_for(g, pid, dir, 1) != XR_OK)
            xr_cont_forget(pid);
        return;
    }
    if (xr_m.norphans == XR_MAX_ORPHANS) {
        xr_log(XR_LOG_ALERT, "too many dead workers waiting; worker %d's connections are closed",
               (int) pid);
        xr_cont_forget(pid);
        xr_master_unlink_stores(dir, pid);
        return;
    }
    xr_orphan_t *o = &xr_m.orphans[xr_m.norphans++];
    o->pid = pid;
    o->gen = g;
    snprintf(o->dir, sizeof(o->dir), "%s", dir);
}

static void xr_master_signal_gen(const xr_gen_t *g, int sig, int only_live)
{
    for (int i = 0; i < XR_SHM_WORKERS; i++) {
        xr_proc_t *p = &xr_m.procs[i];
        if (p->pid > 0 && (g == NULL || p->gen == g) && !(only_live && p->retiring))
            kill(p->pid, sig);
    }
}

/* Drop generations no worker runs any more, and their listeners. */
static void xr_master_collect_gens(void)
{
    for (int k = 1; k < XR_MAX_GENS; k++) {
        xr_gen_t *g = xr_m.gens[k];
        if (g == NULL || xr_master_nprocs(g) > 0)
            continue;
        xr_log(XR_LOG_INFO, "configuration generation %llu retired",
               (unsigned long long) g->number);
        xr_gen_free(g);
        xr_m.gens[k] = NULL;
    }
}

static void xr_master_upgrade_failed(int status);

/* Does a worker of the current generation run past its start-up?  One
 * such worker means the generation can be served: the count of failed
 * starts begins anew. */
static int xr_master_workers_failing(void)
{
    if (xr_m.failed_starts < XR_FAILING_STARTS)
        return 0;
    int64_t now = xr_mono_ms();
    for (int i = 0; i < XR_SHM_WORKERS; i++) {
        const xr_proc_t *p = &xr_m.procs[i];
        if (p->pid > 0 && p->gen == xr_m.gens[0] && !p->retiring &&
            now - p->started >= XR_RESPAWN_FAST_MS) {
            xr_log(XR_LOG_NOTICE, "worker process %d is up after %d failed starts", (int) p->pid,
                   xr_m.failed_starts);
            xr_m.failed_starts = 0;
            return 0;
        }
    }
    return 1;
}

/* ---- the admin socket: `xray status` ------------------------------------------ */

static const char *xr_block_kind(const xr_relay_conf_t *rc)
{
    const xr_frontdoor_t *fd = rc->frontdoor;
    if (fd == NULL)
        return "-";
    return fd->block_kind ? fd->block_kind(rc) : fd->name;
}

static void xr_master_status(xr_sb_t *b, int json)
{
    xr_gen_t *g = xr_m.gens[0];
    int64_t up = xr_wall_ms() - xr_m.started;
    uint64_t resumed = 0;
    for (size_t i = 0; i < g->nrelays; i++)
        resumed += atomic_load(&xr_shm->resumed[g->relays[i]->slot]);
    int failing = xr_master_workers_failing();
    if (json) {
        xr_sb_add(b,
                  "{\"version\":\"%s\",\"pid\":%ld,\"generation\":%llu,\"uptime_ms\":%lld,"
                  "\"upgraded_from\":%ld,\"held\":%zu,\"resumed\":%llu,\"state\":\"%s\","
                  "\"workers_failing\":%s,\"failed_starts\":%d,\"last_failure\":",
                  XR_VERSION, (long) getpid(), (unsigned long long) g->number, (long long) up,
                  (long) xr_m.upgraded_from, xr_cont_count(), (unsigned long long) resumed,
                  failing ? "workers_failing" : "running", failing ? "true" : "false",
                  xr_m.failed_starts);
        if (xr_m.failed_starts > 0)
            xr_sb_json(b, xr_m.failed_how);
        else
            xr_sb_add(b, "null");
        xr_sb_add(b, ",\"workers\":[");
        int first = 1;
        for (int i = 0; i < XR_SHM_WORKERS; i++) {
            const xr_proc_t *p = &xr_m.procs[i];
            if (p->pid <= 0)
                continue;
            xr_sb_add(b, "%s{\"pid\":%ld,\"generation\":%llu,\"retiring\":%s,\"held\":%zu}",
                      first ? "" : ",", (long) p->pid, (unsigned long long) p->gen->number,
                      p->retiring ? "true" : "false", xr_cont_count_of(p->pid));
            first = 0;
        }
        xr_sb_add(b, "],\"blocks\":[");
        for (size_t i = 0; i < g->nrelays; i++) {
            const xr_relay_conf_t *rc = g->relays[i];
            xr_sb_add(b, "%s{\"name\":", i ? "," : "");
            xr_sb_json(b, rc->name);
            xr_sb_add(b,
                      ",\"kind\":\"%s\",\"live\":%lld,\"accepted\":%lld,\"resumed\":%llu,"
                      "\"bytes_up\":%llu,\"bytes_down\":%llu,\"listen\":[",
                      xr_block_kind(rc), (long long) atomic_load(&xr_shm->active[rc->slot]),
                      (long long) atomic_load(&xr_shm->accepted[rc->slot]),
                      (unsigned long long) atomic_load(&xr_shm->resumed[rc->slot]),
                      (unsigned long long) atomic_load(&xr_shm->bytes[rc->slot][0]),
                      (unsigned long long) atomic_load(&xr_shm->bytes[rc->slot][1]));
            for (size_t k = 0; k < rc->listen.n; k++) {
                xr_sb_add(b, "%s", k ? "," : "");
                xr_sb_json(b, rc->listen.items[k].text);
            }
            xr_sb_add(b, "]}");
        }
        xr_sb_add(b, "]}\n");
        return;
    }
    xr_sb_add(b, "xrayd %s  pid %ld  generation %llu  up %lld s", XR_VERSION, (long) getpid(),
              (unsigned long long) g->number, (long long) (up / 1000));
    if (xr_m.upgraded_from)
        xr_sb_add(b, "  (binary upgrade from pid %ld)", (long) xr_m.upgraded_from);
    xr_sb_add(b, "\nworkers:");
    for (int i = 0; i < XR_SHM_WORKERS; i++)
        if (xr_m.procs[i].pid > 0)
            xr_sb_add(b, " %ld%s", (long) xr_m.procs[i].pid,
                      xr_m.procs[i].retiring ? " (retiring)" : "");
    if (failing)
        xr_sb_add(b,
                  "\nWORKERS FAILING: %d workers in a row exited during start-up (the last %s), "
                  "for %lld s; respawning with back-off, see the error log",
                  xr_m.failed_starts, xr_m.failed_how,
                  (long long) ((xr_wall_ms() - xr_m.failing_since) / 1000));
    xr_sb_add(b,
              "\nproxied connections held for continuity: %zu; taken over after a crash "
              "or an upgrade: %llu\n",
              xr_cont_count(), (unsigned long long) resumed);
    xr_sb_add(b, "  %-16s %-8s %8s %10s %8s %14s %14s  %s\n", "BLOCK", "KIND", "LIVE", "ACCEPTED",
              "RESUMED", "BYTES UP", "BYTES DOWN", "LISTEN");
    for (size_t i = 0; i < g->nrelays; i++) {
        const xr_relay_conf_t *rc = g->relays[i];
        xr_sb_add(b, "  %-16s %-8s %8lld %10lld %8llu %14llu %14llu  %s%s\n", rc->name,
                  xr_block_kind(rc), (long long) atomic_load(&xr_shm->active[rc->slot]),
                  (long long) atomic_load(&xr_shm->accepted[rc->slot]),
                  (unsigned long long) atomic_load(&xr_shm->resumed[rc->slot]),
                  (unsigned long long) atomic_load(&xr_shm->bytes[rc->slot][0]),
                  (unsigned long long) atomic_load(&xr_shm->bytes[rc->slot][1]),
                  rc->listen.n ? rc->listen.items[0].text : "-", rc->listen.n > 1 ? " ..." : "");
    }
    xr_sb_add(b, "(bytes: read from the clients (up) and the upstreams (down), live "
                 "connections included)\n");
}

static void xr_master_admin_open(const xr_gen_t *g)
{
    if (g->main.admin_socket == NULL || strcmp(g->main.admin_socket, xr_m.admin_path) == 0)
        return;
    if (xr_m.admin_fd >= 0) {
        close(xr_m.admin_fd);
        unlink(xr_m.admin_path);
    }
    xr_m.admin_fd = xr_admin_open(g->main.admin_socket);
    if (xr_m.admin_fd < 0) {
        /* Status is a convenience: the daemon serves without it. */
        xr_log_errno(XR_LOG_ERR, errno, "cannot open admin_socket %s", g->main.admin_socket);
        xr_m.admin_path[0] = '\0';
        return;
    }
    snprintf(xr_m.admin_path, sizeof(xr_m.admin_path), "%s", g->main.admin_socket);
}

/* ---- binary upgrade: the old master's side ------------------------------------- */

static void xr_master_upgrade_begin(void)
{
    int sp[2];
    if (xr_m.up.phase != XR_UP_NONE) {
        xr_log(XR_LOG_WARN, "binary upgrade already in progress (new master %d)",
               (int) xr_m.up.pid);
        return;
    }
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sp) != 0) {
        xr_log_errno(XR_LOG_ALERT, errno, "binary upgrade: socketpair() failed");
        return;
    }
    pid_t pid = fork();
    if (pid < 0) {
        xr_log_errno(XR_LOG_ALERT, errno, "binary upgrade: fork() failed");
        close(sp[0]);
        close(sp[1]);
        return;
    }
    if (pid == 0) {
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        fcntl(sp[1], F_SETFD, 0); /* the one descriptor the new binary keeps */
        char env[64];
        snprintf(env, sizeof(env), "XRAYD_UPGRADE_FD=%d", sp[1]);
        putenv(env);
        execl(xr_m.exe, xr_m.exe, "-c", xr_m.conf_path, (char *) NULL);
        fprintf(stderr, "xrayd: binary upgrade: cannot run %s: %s\n", xr_m.exe, strerror(errno));
        _exit(127);
    }
    close(sp[1]);
    xr_m.up.phase = XR_UP_STARTED;
    xr_m.up.pid = pid;
    xr_m.up.fd = sp[0];
    /* nginx's dance: the new master writes the pid file, ours moves aside. */
    char old[sizeof(xr_m.pid_path)];
    snprintf(old, sizeof(old), "%.4088s.oldbin", xr_m.pid_path);
    if (rename(xr_m.pid_path, old) == 0)
        snprintf(xr_m.pid_path, sizeof(xr_m.pid_path), "%s", old);
    xr_log(XR_LOG_NOTICE, "binary upgrade: started %s as pid %d", xr_m.exe, (int) pid);
}

static void xr_master_send_listener(const struct sockaddr_storage *sa, socklen_t len, int fd,
                                    int backlog, void *arg)
{
    xr_up_msg_t m = {.type = XR_UP_LISTENER, .backlog = backlog, .salen = len};
    memcpy(&m.sa, sa, len);
    if (xr_up_send(xr_m.up.fd, &m, &fd, 1) != XR_OK)
        *(int *) arg = XR_ERROR;
}

/* The new master's answer, or its loss. */
static void xr_master_upgrade_read(void)
{
    xr_up_msg_t m;
    int fds[2];
    int r = xr_up_recv(xr_m.up.fd, &m, fds, 0);
    if (r <= 0) {
        if (r < 0) {
            close(xr_m.up.fd);
            xr_m.up.fd = -1; /* its exit status follows (SIGCHLD) */
        }
        return;
    }
    for (int i = 0; i < 2; i++)
        if (fds[i] >= 0)
            close(fds[i]);
    if (m.type == XR_UP_HELLO && xr_m.up.phase == XR_UP_STARTED) {
        int rc = XR_OK;
        size_t n = xr_listeners_each(xr_master_send_listener, &rc);
        xr_up_msg_t done = {.type = XR_UP_LISTENERS_DONE};
        if (rc != XR_OK || xr_up_send(xr_m.up.fd, &done, NULL, 0) != XR_OK)
            xr_log(XR_LOG_ALERT, "binary upgrade: cannot pass the listening sockets on");
        else
            xr_log(XR_LOG_NOTICE, "binary upgrade: passed %zu listening socket(s) on", n);
        return;
    }
    if (m.type == XR_UP_READY && xr_m.up.phase == XR_UP_STARTED) {
        /* The new binary runs with our configuration: our workers stop
         * touching their proxied connections, then it takes them. */
        xr_m.up.phase = XR_UP_FREEZING;
        xr_m.up.deadline = xr_mono_ms() + XR_FREEZE_MS;
        xr_m.pending_respawn = 0;
        for (int i = 0; i < XR_SHM_WORKERS; i++)
            if (xr_m.procs[i].pid > 0) {
                xr_m.procs[i].frozen = 1;
                xr_m.procs[i].retiring = 1;
                kill(xr_m.procs[i].pid, SIGUSR2);
            }
        xr_log(XR_LOG_NOTICE, "binary upgrade: the new master is ready; handing over");
    }
}

static void xr_master_send_store(pid_t pid, const char *dir)
{
    xr_up_msg_t m = {.type = XR_UP_STORE, .owner = pid};
    snprintf(m.dir, sizeof(m.dir), "%s", dir);
    xr_up_send(xr_m.up.fd, &m, NULL, 0);
}

/* Every worker froze (or had its time): hand every proxied connection and
 * every store over, then step down. */
static void xr_master_upgrade_handover(void)
{
    /* What a worker said before freezing is in its channel: read it all. */
    int chans[XR_SHM_WORKERS];
    size_t nch = xr_cont_fds(chans, XR_SHM_WORKERS);
    for (size_t i = 0; i < nch; i++)
        xr_cont_master_read(chans[i]);
    const xr_cont_entry_t *e;
    size_t n = xr_cont_entries(&e);
    size_t sent = 0;
    for (size_t i = 0; i < n; i++) {
        xr_up_msg_t m = {.type = XR_UP_CONN, .id = e[i].id, .owner = e[i].owner};
        int fds[2], k = 0;
        for (int j = 0; j < XR_CONT_ENDS; j++)
            if (e[i].fd[j] >= 0)
                fds[k++] = e[i].fd[j];
        /* A connection without an upstream socket yet sends a -1 marker
         * by having one fd only; the receiver knows by m.nfds. */
        if (xr_up_send(xr_m.up.fd, &m, fds, k) == XR_OK)
            sent++;
    }
    for (int i = 0; i < XR_SHM_WORKERS; i++)
        if (xr_m.procs[i].pid > 0)
            xr_master_send_store(xr_m.procs[i].pid, xr_m.procs[i].gen->main.state_dir);
    for (size_t i = 0; i < xr_m.norphans; i++)
        xr_master_send_store(xr_m.orphans[i].pid, xr_m.orphans[i].dir);
    xr_m.norphans = 0;
    xr_up_msg_t done = {.type = XR_UP_DONE};
    xr_up_send(xr_m.up.fd, &done, NULL, 0);
    xr_log(XR_LOG_NOTICE,
           "binary upgrade: handed %zu proxied connection(s) to pid %d; finishing the relays "
           "left and exiting",
           sent, (int) xr_m.up.pid);
    /* Ours to close, not to shut down: they live on in the new master. */
    xr_cont_clear();
    xr_listeners_close_all();
    if (xr_m.admin_fd >= 0) {
        close(xr_m.admin_fd); /* the new master has bound the path anew */
        xr_m.admin_fd = -1;
        xr_m.admin_path[0] = '\0';
    }
    close(xr_m.up.fd);
    xr_m.up.fd = -1;
    xr_m.up.phase = XR_UP_NONE;
    xr_m.up.pid = 0;
    xr_m.handed_over = 1;
    xr_m.stopping = 1;
}

static void xr_master_upgrade_tick(void)
{
    if (xr_m.up.phase != XR_UP_FREEZING)
        return;
    if (!xr_cont_all_frozen()) {
        if (xr_mono_ms() < xr_m.up.deadline)
            return;
        /* A worker that does not answer is stopped the hard way: its
         * snapshot is exact whenever it stops. */
        for (int i = 0; i < XR_SHM_WORKERS; i++)
            if (xr_m.procs[i].pid > 0 && xr_cont_count_of(xr_m.procs[i].pid) > 0) {
                xr_log(XR_LOG_WARN, "binary upgrade: worker %d did not freeze in %d ms; killing it",
                       (int) xr_m.procs[i].pid, XR_FREEZE_MS);
                kill(xr_m.procs[i].pid, SIGKILL);
            }
    }
    xr_master_upgrade_handover();
}

static void xr_master_upgrade_failed(int status)
{
    char how[64];
    if (WIFSIGNALED(status))
        snprintf(how, sizeof(how), "signal %d", WTERMSIG(status));
    else
        snprintf(how, sizeof(how), "code %d", WEXITSTATUS(status));
    if (xr_m.up.phase == XR_UP_NONE) {
        xr_m.up.pid = 0; /* it took over, then exited: its own business */
        return;
    }
    xr_log(XR_LOG_ALERT,
           "binary upgrade failed: the new master (pid %d) exited with %s; "
           "still serving with this binary",
           (int) xr_m.up.pid, how);
    char orig[sizeof(xr_m.pid_path)];
    snprintf(orig, sizeof(orig), "%s", xr_m.pid_path);
    char *dot = strstr(orig, ".oldbin");
    if (dot != NULL) {
        *dot = '\0';
        if (rename(xr_m.pid_path, orig) == 0)
            snprintf(xr_m.pid_path, sizeof(xr_m.pid_path), "%s", orig);
    }
    if (xr_m.up.phase == XR_UP_FREEZING) {
        /* Our workers let go of their proxied connections: new ones of
         * ours take them back, as after a crash. */
        for (int i = 0; i < XR_SHM_WORKERS; i++) {
            xr_proc_t *p = &xr_m.procs[i];
            if (p->pid > 0 && p->frozen && p->gen == xr_m.gens[0] && !xr_m.stopping) {
                pid_t was = p->pid;
                xr_master_spawn_for(p->gen, was, p->gen->main.state_dir, 0);
            }
        }
    }
    if (xr_m.up.fd >= 0)
        close(xr_m.up.fd);
    xr_m.up.fd = -1;
    xr_m.up.phase = XR_UP_NONE;
    xr_m.up.pid = 0;
}

/* ---- binary upgrade: the new master's side ------------------------------------- */

/* Take the old master's listening sockets, then (after READY) its proxied
 * connections.  XR_OK, or XR_ERROR: the old master goes on serving. */
static int xr_master_upgrade_receive(xr_gen_t *g, int fd, pid_t *old)
{
    char err[1024];
    xr_up_msg_t m = {.type = XR_UP_HELLO, .owner = getpid()};
    int fds[2];
    *old = getppid();
    if (xr_up_send(fd, &m, NULL, 0) != XR_OK)
        return XR_ERROR;
    size_t nl = 0;
    for (;;) {
        int r = xr_up_recv(fd, &m, fds, 10000);
        if (r <= 0) {
            xr_log(XR_LOG_EMERG, "binary upgrade: no listening sockets from the old master");
            return XR_ERROR;
        }
        if (m.type == XR_UP_LISTENERS_DONE)
            break;
        if (m.type == XR_UP_LISTENER && m.nfds == 1 && m.salen <= sizeof(m.sa) &&
            xr_listeners_adopt(&m.sa, m.salen, fds[0], m.backlog) == XR_OK) {
            nl++;
            continue;
        }
        if (fds[0] >= 0)
            close(fds[0]);
    }
    /* Addresses the configuration adds are opened; those it drops close
     * once the old workers are gone. */
    if (xr_listeners_open(g, err, sizeof(err)) != XR_OK) {
        xr_log(XR_LOG_EMERG, "binary upgrade: %s", err);
        return XR_ERROR;
    }
    m = (xr_up_msg_t){.type = XR_UP_READY};
    if (xr_up_send(fd, &m, NULL, 0) != XR_OK)
        return XR_ERROR;
    size_t nc = 0;
    for (;;) {
        int r = xr_up_recv(fd, &m, fds, 30000);
        if (r <= 0) {
            xr_log(XR_LOG_ALERT,
                   "binary upgrade: the old master stopped before handing over "
                   "(%zu connections received)",
                   nc);
            break;
        }
        if (m.type == XR_UP_DONE)
            break;
        if (m.type == XR_UP_CONN) {
            int ends[XR_CONT_ENDS] = {fds[0], m.nfds > 1 ? fds[1] : -1};
            xr_cont_add(m.id, m.owner, ends);
            nc++;
        } else if (m.type == XR_UP_STORE && xr_m.norphans < XR_MAX_ORPHANS) {
            xr_orphan_t *o = &xr_m.orphans[xr_m.norphans++];
            o->pid = m.owner;
            o->gen = g;
            snprintf(o->dir, sizeof(o->dir), "%s", m.dir);
        } else {
            for (int i = 0; i < 2; i++)
                if (fds[i] >= 0)
                    close(fds[i]);
        }
    }
    close(fd);
    xr_log(XR_LOG_NOTICE,
           "binary upgrade from pid %d: %zu listening socket(s), %zu proxied "
           "connection(s) taken over",
           (int) *old, nl, nc);
    return XR_OK;
}

static void xr_master_reap(void)
{
    int status;
    pid_t pid;
    while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
        if (pid == xr_m.up.pid) {
            xr_master_upgrade_failed(status);
            continue;
        }
        int slot = -1;
        for (int i = 0; i < XR_SHM_WORKERS; i++)
            if (xr_m.procs[i].pid == pid)
                slot = i;
        if (slot < 0)
            continue;
        xr_proc_t *p = &xr_m.procs[slot];
        int expected = p->retiring || xr_m.stopping;
        char how[64];
        if (WIFSIGNALED(status))
            snprintf(how, sizeof(how), "on signal %d%s", WTERMSIG(status),
                     WCOREDUMP(status) ? " (core dumped)" : "");
        else
            snprintf(how, sizeof(how), "with code %d", WEXITSTATUS(status));
        int clean = WIFSIGNALED(status) ? WTERMSIG(status) == SIGTERM : WEXITSTATUS(status) == 0;
        xr_log(expected && clean ? XR_LOG_NOTICE : XR_LOG_ALERT, "worker process %d exited %s",
               (int) pid, how);
        xr_shm_reap_worker(slot);
        int respawn = !expected && p->gen == xr_m.gens[0];
        int64_t lived = xr_mono_ms() - p->started;
        xr_gen_t *g = p->gen;
        size_t left = xr_cont_reap(pid);
        memset(p, 0, sizeof(*p));
        xr_master_orphan(pid, g, g->main.state_dir, left);
        if (respawn) {
            /* A worker that keeps dying young must not turn the master
             * into a fork loop (its connections wait no longer than the
             * back-off). */
            if (lived < XR_RESPAWN_FAST_MS) {
                xr_m.respawn_delay =
                    xr_m.respawn_delay ? XR_MIN(xr_m.respawn_delay * 2, XR_RESPAWN_MAX_MS) : 100;
                if (xr_m.failed_starts++ == 0)
                    xr_m.failing_since = xr_wall_ms();
                snprintf(xr_m.failed_how, sizeof(xr_m.failed_how), "exited %s after %lld ms", how,
                         (long long) lived);
            } else {
                xr_m.respawn_delay = 0;
                xr_m.failed_starts = 0;
            }
            xr_m.pending_respawn++;
            xr_m.respawn_at = xr_mono_ms() + xr_m.respawn_delay;
            if (xr_master_workers_failing())
                /* Silence here would leave a master serving nobody while
                 * clients wait in the listen queues. */
                xr_log(XR_LOG_ALERT,
                       "no worker stays up: %d workers in a row exited during start-up (the "
                       "last, process %d, %s); respawning in %lldms",
                       xr_m.failed_starts, (int) pid, xr_m.failed_how,
                       (long long) xr_m.respawn_delay);
            else if (xr_m.respawn_delay)
                xr_log(XR_LOG_NOTICE, "respawning a worker in %lldms",
                       (long long) xr_m.respawn_delay);
        }
    }
    xr_master_collect_gens();
}

static void xr_master_reload(void)
{
    char err[1024];
    xr_log(XR_LOG_NOTICE, "reloading configuration from %s", xr_m.conf_path);
    xr_gen_t *g = xr_gen_load(xr_m.conf_path, err, sizeof(err));
    if (g == NULL) {
        xr_log(XR_LOG_ERR, "reload failed, keeping the running configuration: %s", err);
        return;
    }
    int free_slot = -1;
    for (int k = 1; k < XR_MAX_GENS; k++)
        if (xr_m.gens[k] == NULL) {
            free_slot = k;
            break;
        }
    if (free_slot < 0) {
        xr_log(XR_LOG_ERR, "reload refused: %d generations are still draining", XR_MAX_GENS - 1);
        xr_gen_free(g);
        return;
    }
    if (xr_shm_assign(g, err, sizeof(err)) != XR_OK ||
        xr_listeners_open(g, err, sizeof(err)) != XR_OK) {
        xr_log(XR_LOG_ERR, "reload failed, keeping the running configuration: %s", err);
        xr_gen_free(g);
        xr_listeners_close_unused(xr_m.gens, 1);
        return;
    }
    if (strcmp(g->main.error_log, xr_m.gens[0]->main.error_log) != 0 ||
        g->main.log_level != xr_m.gens[0]->main.log_level) {
        if (xr_log_open(g->main.error_log, (xr_log_level_t) g->main.log_level) != XR_OK)
            xr_log_errno(XR_LOG_ERR, errno, "cannot open error log \"%s\", keeping the old one",
                         g->main.error_log);
    }
    if (strcmp(g->main.pid, xr_m.pid_path) != 0)
        xr_log(XR_LOG_WARN, "a new pid file path takes effect after a restart, not a reload");
    xr_master_admin_open(g);

    xr_gen_t *old = xr_m.gens[0];
    g->number = old->number + 1;
    xr_m.gens[free_slot] = old;
    xr_m.gens[0] = g;
    xr_m.pending_respawn = 0;
    xr_m.respawn_delay = 0;
    xr_m.failed_starts = 0; /* the new configuration gets a fresh count */

    /* New workers first: the listening sockets never stop accepting. */
    int n = xr_gen_workers(g);
    for (int i = 0; i < n; i++)
        xr_master_spawn(g);
    for (int i = 0; i < XR_SHM_WORKERS; i++)
        if (xr_m.procs[i].pid > 0 && xr_m.procs[i].gen == old)
            xr_m.procs[i].retiring = 1;
    xr_master_signal_gen(old, SIGQUIT, 0);
    /* A listener the new configuration dropped must refuse at once, not
     * queue connections nobody will accept while old workers drain. */
    xr_listeners_close_unused(xr_m.gens, 1);
    xr_log(XR_LOG_NOTICE, "configuration generation %llu is live", (unsigned long long) g->number);
}

static int xr_master_write_pid(const char *path)
{
    char tmp[4200], buf[32];
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        return XR_ERROR;
    int n = snprintf(buf, sizeof(buf), "%d\n", (int) getpid());
    if (write(fd, buf, (size_t) n) != n || close(fd) != 0 || rename(tmp, path) != 0) {
        unlink(tmp);
        return XR_ERROR;
    }
    return XR_OK;
}

static void xr_master_handle_signal(int sig)
{
    switch (sig) {
    case SIGCHLD: xr_master_reap(); break;
    case SIGHUP:
        if (!xr_m.stopping)
            xr_master_reload();
        break;
    case SIGQUIT:
        if (xr_m.stopping)
            break;
        xr_log(XR_LOG_NOTICE, "graceful shutdown requested");
        xr_m.stopping = 1;
        xr_master_signal_gen(NULL, SIGQUIT, 0);
        xr_listeners_close_unused(NULL, 0); /* new connections are refused */
        break;
    case SIGTERM:
    case SIGINT:
        if (xr_m.stopping == 2)
            break;
        xr_log(XR_LOG_NOTICE, "shutting down (signal %d)", sig);
        xr_m.stopping = 2;
        xr_m.stop_deadline = xr_mono_ms() + XR_FAST_STOP_MS;
        xr_master_signal_gen(NULL, SIGTERM, 0);
        xr_listeners_close_unused(NULL, 0);
        break;
    case SIGUSR1:
        xr_log(XR_LOG_NOTICE, "reopening logs");
        xr_log_reopen();
        for (xr_filter_conf_t *f = xr_m.gens[0]->filters; f; f = f->next_in_gen)
            if (f->module->reopen)
                f->module->reopen(f->conf);
        xr_master_signal_gen(NULL, SIGUSR1, 0);
        break;
    case SIGUSR2:
        if (!xr_m.stopping)
            xr_master_upgrade_begin();
        break;
    default: break;
    }
}

int xr_master_run(xr_gen_t *g, const char *conf_path, int upgrade_fd)
{
    memset(&xr_m, 0, sizeof(xr_m));
    xr_m.conf_path = xr_strdup(conf_path); /* gen 1 and argv do not last */
    xr_m.gens[0] = g;
    xr_m.admin_fd = -1;
    xr_m.up.fd = -1;
    xr_m.started = xr_wall_ms();
    g->number = 1;
    snprintf(xr_m.pid_path, sizeof(xr_m.pid_path), "%s", g->main.pid);
    /* The binary as started: SIGUSR2 runs whatever is at that path then. */
    ssize_t el = readlink("/proc/self/exe", xr_m.exe, sizeof(xr_m.exe) - 1);
    xr_m.exe[el > 0 ? el : 0] = '\0';
    char *deleted = strstr(xr_m.exe, " (deleted)");
    if (deleted != NULL)
        *deleted = '\0';
    if (upgrade_fd >= 0 && xr_master_upgrade_receive(g, upgrade_fd, &xr_m.upgraded_from) != XR_OK)
        return 1;

    sigset_t set;
    sigemptyset(&set);
    int sigs[] = {SIGCHLD, SIGHUP, SIGQUIT, SIGTERM, SIGINT, SIGUSR1, SIGUSR2};
    for (size_t i = 0; i < XR_ARRAY_SIZE(sigs); i++)
        sigaddset(&set, sigs[i]);
    sigprocmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);
    xr_m.sigfd = signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
    if (xr_m.sigfd < 0) {
        xr_log_errno(XR_LOG_EMERG, errno, "signalfd() failed");
        return 1;
    }
    if (xr_master_write_pid(xr_m.pid_path) != XR_OK) {
        xr_log_errno(XR_LOG_EMERG, errno, "cannot write pid file \"%s\"", xr_m.pid_path);
        return 1;
    }

    if (xr_m.upgraded_from)
        xr_log(XR_LOG_NOTICE,
               "xrayd/%s started (binary upgrade from pid %d), %d workers, "
               "configuration %s",
               XR_VERSION, (int) xr_m.upgraded_from, xr_gen_workers(g), conf_path);
    else
        xr_log(XR_LOG_NOTICE, "xrayd/%s started, %d workers, configuration %s", XR_VERSION,
               xr_gen_workers(g), conf_path);
    xr_master_admin_open(g);
    int n = xr_gen_workers(g);
    for (int i = 0; i < n; i++)
        xr_master_spawn(g);
    /* An old binary had more workers than we start: the rest of its
     * connections get replacements of their own that finish them. */
    while (xr_m.norphans > 0) {
        xr_orphan_t o = xr_m.orphans[--xr_m.norphans];
        xr_master_spawn_for(g, o.pid, o.dir, 1);
    }

    for (;;) {
        if (xr_m.stopping && xr_master_nprocs(NULL) == 0)
            break;
        int64_t now = xr_mono_ms();
        if (xr_m.pending_respawn > 0 && !xr_m.stopping && now >= xr_m.respawn_at) {
            while (xr_m.pending_respawn > 0) {
                xr_m.pending_respawn--;
                xr_master_spawn(xr_m.gens[0]);
            }
        }
        if (xr_m.stopping == 2 && now >= xr_m.stop_deadline) {
            xr_log(XR_LOG_WARN, "workers did not stop in %dms, killing them", XR_FAST_STOP_MS);
            xr_master_signal_gen(NULL, SIGKILL, 0);
            xr_m.stop_deadline = now + 1000;
        }
        int timeout = -1;
        if (xr_m.pending_respawn > 0 && !xr_m.stopping)
            timeout = (int) XR_MAX(0, xr_m.respawn_at - now);
        if (xr_m.stopping == 2)
            timeout = (int) XR_MAX(0, xr_m.stop_deadline - now);
        if (xr_m.up.phase == XR_UP_FREEZING)
            timeout = 50; /* watch the workers freeze */
        struct pollfd pfd[3 + XR_SHM_WORKERS];
        int chans[XR_SHM_WORKERS];
        size_t nch = xr_cont_fds(chans, XR_SHM_WORKERS);
        pfd[0] = (struct pollfd){xr_m.sigfd, POLLIN, 0};
        pfd[1] = (struct pollfd){xr_m.admin_fd, POLLIN, 0};
        pfd[2] = (struct pollfd){xr_m.up.fd, POLLIN, 0};
        for (size_t i = 0; i < nch; i++)
            pfd[3 + i] = (struct pollfd){chans[i], POLLIN, 0};
        int rc = poll(pfd, (nfds_t) (3 + nch), timeout);
        if (rc < 0 && errno != EINTR) {
            xr_log_errno(XR_LOG_ALERT, errno, "poll() failed in the master");
            sleep(1);
            continue;
        }
        /* Descriptors first: a HOLD sent just before a worker died must be
         * in the table when its SIGCHLD is handled. */
        for (size_t i = 0; rc > 0 && i < nch; i++)
            if (pfd[3 + i].revents & POLLIN)
                xr_cont_master_read(pfd[3 + i].fd);
        if (rc > 0 && xr_m.admin_fd >= 0 && (pfd[1].revents & POLLIN))
            xr_admin_serve(xr_m.admin_fd, xr_master_status);
        if (rc > 0 && xr_m.up.fd >= 0 && (pfd[2].revents & (POLLIN | POLLHUP)))
            xr_master_upgrade_read();
        xr_master_upgrade_tick();
        struct signalfd_siginfo si;
        while (read(xr_m.sigfd, &si, sizeof(si)) == (ssize_t) sizeof(si))
            xr_master_handle_signal((int) si.ssi_signo);
    }

    xr_log(XR_LOG_NOTICE, "exiting");
    unlink(xr_m.pid_path);
    if (xr_m.admin_fd >= 0) {
        close(xr_m.admin_fd);
        unlink(xr_m.admin_path);
    }
    for (int k = 0; k < XR_MAX_GENS; k++)
        if (xr_m.gens[k] != NULL)
            xr_gen_free(xr_m.gens[k]);
    close(xr_m.sigfd);
    return 0;
}
