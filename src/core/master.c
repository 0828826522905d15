/*
 * master.c: the master process (see master.h): its loop, and the
 * supervision of the workers - spawning them, reaping them, respawning
 * with back-off, keeping a dead worker's connections for the next one,
 * reloads and signals.
 *
 * It runs no relay traffic and no libuv loop: signals arrive on a
 * signalfd and poll() waits for them, the workers' continuity channels,
 * the admin socket, an upgrade's channel, or the next respawn, so a
 * worker forked from here inherits no event-loop state.  The admin
 * socket's answer is in master_status.c, the binary upgrade in
 * master_upgrade.c.
 */
#include "core/xrayd.h"
#include "core/admin.h"
#include "core/continuity.h"
#include "core/log.h"
#include "core/master_int.h"
#include "core/shm.h"
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

#define XR_RESPAWN_FAST_MS 2000 /* a worker that dies younger backs off */
#define XR_RESPAWN_MAX_MS  5000
#define XR_FAST_STOP_MS    5000
/* Workers of the current generation dying young this many times in a row,
 * with none of them up for longer, is a master that cannot keep a worker
 * alive: an alert each time, and `xray status` says so. */
#define XR_FAILING_STARTS 3

/* One per process: see master_int.h. */
xr__m_t xr__m;

static int xr_master_nprocs(const xr_gen_t *g)
{
    int n = 0;
    for (int i = 0; i < XR_SHM_WORKERS; i++)
        if (xr__m.procs[i].pid > 0 && (g == NULL || xr__m.procs[i].gen == g))
            n++;
    return n;
}

/* Fork a worker (or the standby) with a continuity channel of its own:
 * -1 (logged) on failure; in the child 0, with *child_end its end of the
 * channel and the master's own descriptors closed; in the master the
 * child's pid, with *cont_fd the master's end, attached to it. */
static pid_t xr_master_fork(int *cont_fd, int *child_end)
{
    *cont_fd = xr_cont_channel(child_end);
    if (*cont_fd < 0) {
        xr_log_errno(XR_LOG_ALERT, errno, "cannot make a continuity channel");
        return -1;
    }
    pid_t pid = fork();
    if (pid < 0) {
        xr_log_errno(XR_LOG_ALERT, errno, "fork() failed");
        close(*cont_fd);
        close(*child_end);
        return -1;
    }
    if (pid == 0) {
        if (xr__m.admin_fd >= 0)
            close(xr__m.admin_fd);
        if (xr__m.up.fd >= 0)
            close(xr__m.up.fd);
        return 0;
    }
    close(*child_end);
    xr_cont_attach(*cont_fd, pid);
    return pid;
}

/* Does g want a standby worker: does a block of it keep its connections
 * across a worker's death? */
static int xr_master_wants_standby(const xr_gen_t *g)
{
    if (xr__m.stopping || xr__m.handed_over || xr__m.up.phase != XR_UP_NONE)
        return 0;
    for (size_t i = 0; i < g->nrelays; i++)
        if (g->relays[i]->continuity)
            return 1;
    return 0;
}

static void xr_master_standby_spawn(xr_gen_t *g)
{
    int cont_fd, child_end;
    pid_t pid = xr_master_fork(&cont_fd, &child_end);
    if (pid < 0) {
        xr__m.standby.due = xr_mono_ms() + XR_RESPAWN_MAX_MS;
        return;
    }
    if (pid == 0)
        xr_worker_standby_main(g, xr__m.sigfd, child_end);
    xr__m.standby.pid = pid;
    xr__m.standby.gen = g;
    xr__m.standby.cont_fd = cont_fd;
    xr__m.standby.started = xr_mono_ms();
    xr_log(XR_LOG_INFO, "start standby worker process %d", (int) pid);
}

void xr__master_standby_stop(int64_t delay_ms)
{
    xr__m.standby.due = xr_mono_ms() + delay_ms;
    pid_t pid = xr__m.standby.pid;
    if (pid <= 0)
        return;
    kill(pid, SIGTERM);
    xr_cont_reap(pid); /* its channel; it held nothing */
    xr__m.standby.pid = 0;
    xr__m.standby.gen = NULL;
}

/* Hand dead worker adopt's connections to the standby, as worker slot of
 * g.  XR_OK, or XR_ERROR when there is none that can (the caller forks). */
static int xr_master_wake_standby(xr_gen_t *g, int slot, unsigned singles, pid_t adopt,
                                  const char *adopt_dir)
{
    if (xr__m.standby.pid <= 0 || xr__m.standby.gen != g)
        return XR_ERROR;
    xr_cont_order_t o = {.dead = adopt, .slot = slot, .singles = singles};
    snprintf(o.dir, sizeof(o.dir), "%s", adopt_dir);
    pid_t pid = xr__m.standby.pid;
    if (xr_cont_send_order(xr__m.standby.cont_fd, &o) != XR_OK) {
        xr_log_errno(XR_LOG_ALERT, errno, "cannot wake standby worker %d; forking a replacement",
                     (int) pid);
        xr__master_standby_stop(XR_STANDBY_AFTER_MS);
        return XR_ERROR;
    }
    xr_cont_adopted(adopt, pid);
    xr_proc_t *p = &xr__m.procs[slot];
    p->cont_fd = xr__m.standby.cont_fd;
    p->singles = singles;
    p->pid = pid;
    p->gen = g;
    p->retiring = 0;
    p->started = xr__m.standby.started;
    memset(&xr__m.standby, 0, sizeof(xr__m.standby));
    xr__m.standby.due = xr_mono_ms() + XR_STANDBY_AFTER_MS;
    xr_log(XR_LOG_NOTICE,
           "standby worker process %d is the new worker, taking over worker %d's %u "
           "connection(s), %lld ms after its death was seen",
           (int) pid, (int) adopt, o.n, (long long) (xr_mono_ms() - xr__m.reaped_at));
    xr__m.reaped_at = 0;
    return XR_OK;
}

/* Start a worker of g; with adopt, it takes over that dead worker's
 * connections with continuity, and with retiring only those. */
int xr__master_spawn_for(xr_gen_t *g, pid_t adopt, const char *adopt_dir, int retiring)
{
    int slot = -1;
    for (int i = 0; i < XR_SHM_WORKERS; i++)
        if (xr__m.procs[i].pid == 0) {
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
        if (xr__m.procs[i].pid > 0 && xr__m.procs[i].gen == g)
            singles &= ~xr__m.procs[i].singles;
    if (adopt > 0 && !retiring &&
        xr_master_wake_standby(g, slot, singles, adopt,
                               adopt_dir ? adopt_dir : g->main.state_dir) == XR_OK)
        return XR_OK;
    int cont_fd, child_end;
    pid_t pid = xr_master_fork(&cont_fd, &child_end);
    if (pid < 0)
        return XR_ERROR;
    if (pid == 0)
        xr_worker_main(g, slot, singles, xr__m.sigfd, child_end, adopt,
                       adopt_dir ? adopt_dir : g->main.state_dir, retiring);
    if (adopt > 0)
        xr_cont_adopted(adopt, pid);
    xr__m.procs[slot].cont_fd = cont_fd;
    xr__m.procs[slot].singles = singles;
    xr__m.procs[slot].pid = pid;
    xr__m.procs[slot].gen = g;
    xr__m.procs[slot].retiring = retiring;
    xr__m.procs[slot].started = xr_mono_ms();
    if (adopt > 0) {
        xr_log(XR_LOG_NOTICE, "start worker process %d, taking over worker %d's connections",
               (int) pid, (int) adopt);
        /* With the replacement's own timings (debug), where a takeover's
         * time went. */
        if (xr__m.reaped_at > 0)
            xr_log(XR_LOG_DEBUG, "worker %d's replacement forked %lld ms after its death was seen",
                   (int) adopt, (long long) (xr_mono_ms() - xr__m.reaped_at));
        xr__m.reaped_at = 0;
    } else
        xr_log(XR_LOG_NOTICE, "start worker process %d", (int) pid);
    return XR_OK;
}

/* A new worker of g, adopting an orphan of g if one waits. */
static int xr_master_spawn(xr_gen_t *g)
{
    for (size_t i = 0; i < xr__m.norphans; i++)
        if (xr__m.orphans[i].gen == g) {
            xr_orphan_t o = xr__m.orphans[i];
            xr__m.orphans[i] = xr__m.orphans[--xr__m.norphans];
            return xr__master_spawn_for(g, o.pid, o.dir, 0);
        }
    return xr__master_spawn_for(g, 0, NULL, 0);
}

/* Worker pid of g died with connections with continuity: they wait for the next
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
    if (xr__m.handed_over)
        return; /* its stores are the new master's now */
    if (xr__m.stopping || n == 0) {
        xr_cont_forget(pid);
        xr_master_unlink_stores(dir, pid);
        return;
    }
    xr_log(XR_LOG_NOTICE, "worker %d left %zu connection(s) to take over", (int) pid, n);
    if (g != xr__m.gens[0]) {
        if (xr__master_spawn_for(g, pid, dir, 1) != XR_OK)
            xr_cont_forget(pid);
        return;
    }
    if (xr__m.norphans == XR_MAX_ORPHANS) {
        xr_log(XR_LOG_ALERT, "too many dead workers waiting; worker %d's connections are closed",
               (int) pid);
        xr_cont_forget(pid);
        xr_master_unlink_stores(dir, pid);
        return;
    }
    xr_orphan_t *o = &xr__m.orphans[xr__m.norphans++];
    o->pid = pid;
    o->gen = g;
    snprintf(o->dir, sizeof(o->dir), "%s", dir);
}

static void xr_master_signal_gen(const xr_gen_t *g, int sig, int only_live)
{
    for (int i = 0; i < XR_SHM_WORKERS; i++) {
        xr_proc_t *p = &xr__m.procs[i];
        if (p->pid > 0 && (g == NULL || p->gen == g) && !(only_live && p->retiring))
            kill(p->pid, sig);
    }
}

/* Drop generations no worker runs any more, and their listeners. */
static void xr_master_collect_gens(void)
{
    for (int k = 1; k < XR_MAX_GENS; k++) {
        xr_gen_t *g = xr__m.gens[k];
        if (g == NULL || xr_master_nprocs(g) > 0)
            continue;
        xr_log(XR_LOG_INFO, "configuration generation %llu retired",
               (unsigned long long) g->number);
        xr_gen_free(g);
        xr__m.gens[k] = NULL;
    }
}

/* Does a worker of the current generation run past its start-up?  One
 * such worker means the generation can be served: the count of failed
 * starts begins anew. */
int xr__master_workers_failing(void)
{
    if (xr__m.failed_starts < XR_FAILING_STARTS)
        return 0;
    int64_t now = xr_mono_ms();
    for (int i = 0; i < XR_SHM_WORKERS; i++) {
        const xr_proc_t *p = &xr__m.procs[i];
        if (p->pid > 0 && p->gen == xr__m.gens[0] && !p->retiring &&
            now - p->started >= XR_RESPAWN_FAST_MS) {
            xr_log(XR_LOG_NOTICE, "worker process %d is up after %d failed starts", (int) p->pid,
                   xr__m.failed_starts);
            xr__m.failed_starts = 0;
            return 0;
        }
    }
    return 1;
}

static void xr_master_reap(void)
{
    int status;
    pid_t pid;
    while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
        xr__m.reaped_at = xr_mono_ms();
        if (pid == xr__m.up.pid) {
            xr__master_upgrade_failed(status);
            continue;
        }
        if (pid == xr__m.standby.pid) {
            int64_t lived = xr_mono_ms() - xr__m.standby.started;
            xr_log(XR_LOG_ALERT, "standby worker process %d exited %s", (int) pid,
                   WIFSIGNALED(status) ? "on a signal" : "by itself");
            xr_cont_reap(pid);
            memset(&xr__m.standby, 0, sizeof(xr__m.standby));
            xr__m.standby.due = xr_mono_ms() + (lived < XR_RESPAWN_FAST_MS ? XR_RESPAWN_MAX_MS
                                                                           : XR_STANDBY_AFTER_MS);
            continue;
        }
        int slot = -1;
        for (int i = 0; i < XR_SHM_WORKERS; i++)
            if (xr__m.procs[i].pid == pid)
                slot = i;
        if (slot < 0)
            continue;
        xr_proc_t *p = &xr__m.procs[slot];
        int expected = p->retiring || xr__m.stopping;
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
        int respawn = !expected && p->gen == xr__m.gens[0];
        int64_t lived = xr_mono_ms() - p->started;
        xr_gen_t *g = p->gen;
        size_t left = xr_cont_reap(pid);
        memset(p, 0, sizeof(*p));
        xr_master_orphan(pid, g, g->main.state_dir, left);
        if (respawn) {
            /* A worker that keeps dying young must not turn the master
             * into a fork loop (its connections wait no longer than the
             * back-off).  One young death is no loop yet: its
             * replacement starts at once, since the connections it takes
             * over are stalled until it runs; the back-off starts with
             * the second death in a row. */
            if (lived < XR_RESPAWN_FAST_MS) {
                if (xr__m.failed_starts == 0)
                    xr__m.respawn_delay = 0;
                else
                    xr__m.respawn_delay = xr__m.respawn_delay
                                              ? XR_MIN(xr__m.respawn_delay * 2, XR_RESPAWN_MAX_MS)
                                              : 100;
                if (xr__m.failed_starts++ == 0)
                    xr__m.failing_since = xr_wall_ms();
                snprintf(xr__m.failed_how, sizeof(xr__m.failed_how), "exited %s after %lld ms", how,
                         (long long) lived);
            } else {
                xr__m.respawn_delay = 0;
                xr__m.failed_starts = 0;
            }
            xr__m.pending_respawn++;
            xr__m.respawn_at = xr_mono_ms() + xr__m.respawn_delay;
            if (xr__master_workers_failing())
                /* Silence here would leave a master serving nobody while
                 * clients wait in the listen queues. */
                xr_log(XR_LOG_ALERT,
                       "no worker stays up: %d workers in a row exited during start-up (the "
                       "last, process %d, %s); respawning in %lldms",
                       xr__m.failed_starts, (int) pid, xr__m.failed_how,
                       (long long) xr__m.respawn_delay);
            else if (xr__m.respawn_delay)
                xr_log(XR_LOG_NOTICE, "respawning a worker in %lldms",
                       (long long) xr__m.respawn_delay);
        }
    }
    xr_master_collect_gens();
}

static void xr_master_reload(void)
{
    char err[1024];
    xr_log(XR_LOG_NOTICE, "reloading configuration from %s", xr__m.conf_path);
    xr_gen_t *g = xr_gen_load(xr__m.conf_path, err, sizeof(err));
    if (g == NULL) {
        xr_log(XR_LOG_ERR, "reload failed, keeping the running configuration: %s", err);
        return;
    }
    int free_slot = -1;
    for (int k = 1; k < XR_MAX_GENS; k++)
        if (xr__m.gens[k] == NULL) {
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
        xr_listeners_close_unused(xr__m.gens, 1);
        return;
    }
    if (strcmp(g->main.error_log, xr__m.gens[0]->main.error_log) != 0 ||
        g->main.log_level != xr__m.gens[0]->main.log_level) {
        if (xr_log_open(g->main.error_log, (xr_log_level_t) g->main.log_level) != XR_OK)
            xr_log_errno(XR_LOG_ERR, errno, "cannot open error log \"%s\", keeping the old one",
                         g->main.error_log);
    }
    if (strcmp(g->main.pid, xr__m.pid_path) != 0)
        xr_log(XR_LOG_WARN, "a new pid file path takes effect after a restart, not a reload");
    xr__master_admin_open(g);

    xr_gen_t *old = xr__m.gens[0];
    g->number = old->number + 1;
    xr__m.gens[free_slot] = old;
    xr__m.gens[0] = g;
    xr__m.pending_respawn = 0;
    xr__m.respawn_delay = 0;
    xr__m.failed_starts = 0; /* the new configuration gets a fresh count */

    /* The standby serves the old configuration: the next serves g. */
    xr__master_standby_stop(XR_STANDBY_AFTER_MS);
    /* New workers first: the listening sockets never stop accepting. */
    int n = xr_gen_workers(g);
    for (int i = 0; i < n; i++)
        xr_master_spawn(g);
    for (int i = 0; i < XR_SHM_WORKERS; i++)
        if (xr__m.procs[i].pid > 0 && xr__m.procs[i].gen == old)
            xr__m.procs[i].retiring = 1;
    xr_master_signal_gen(old, SIGQUIT, 0);
    /* A listener the new configuration dropped must refuse at once, not
     * queue connections nobody will accept while old workers drain. */
    xr_listeners_close_unused(xr__m.gens, 1);
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
        if (!xr__m.stopping)
            xr_master_reload();
        break;
    case SIGQUIT:
        if (xr__m.stopping)
            break;
        xr_log(XR_LOG_NOTICE, "graceful shutdown requested");
        xr__m.stopping = 1;
        xr__master_standby_stop(0);
        xr_master_signal_gen(NULL, SIGQUIT, 0);
        xr_listeners_close_unused(NULL, 0); /* new connections are refused */
        break;
    case SIGTERM:
    case SIGINT:
        if (xr__m.stopping == 2)
            break;
        xr_log(XR_LOG_NOTICE, "shutting down (signal %d)", sig);
        xr__m.stopping = 2;
        xr__master_standby_stop(0);
        xr__m.stop_deadline = xr_mono_ms() + XR_FAST_STOP_MS;
        xr_master_signal_gen(NULL, SIGTERM, 0);
        xr_listeners_close_unused(NULL, 0);
        break;
    case SIGUSR1:
        xr_log(XR_LOG_NOTICE, "reopening logs");
        xr_log_reopen();
        for (xr_filter_conf_t *f = xr__m.gens[0]->filters; f; f = f->next_in_gen)
            if (f->module->reopen)
                f->module->reopen(f->conf);
        xr_master_signal_gen(NULL, SIGUSR1, 0);
        break;
    case SIGUSR2:
        if (!xr__m.stopping)
            xr__master_upgrade_begin();
        break;
    default: break;
    }
}

int xr_master_run(xr_gen_t *g, const char *conf_path, int upgrade_fd)
{
    memset(&xr__m, 0, sizeof(xr__m));
    xr__m.conf_path = xr_strdup(conf_path); /* gen 1 and argv do not last */
    xr__m.gens[0] = g;
    xr__m.admin_fd = -1;
    xr__m.up.fd = -1;
    xr__m.started = xr_wall_ms();
    g->number = 1;
    snprintf(xr__m.pid_path, sizeof(xr__m.pid_path), "%s", g->main.pid);
    /* The binary as started: SIGUSR2 runs whatever is at that path then. */
    ssize_t el = readlink("/proc/self/exe", xr__m.exe, sizeof(xr__m.exe) - 1);
    xr__m.exe[el > 0 ? el : 0] = '\0';
    char *deleted = strstr(xr__m.exe, " (deleted)");
    if (deleted != NULL)
        *deleted = '\0';
    if (upgrade_fd >= 0 && xr__master_upgrade_receive(g, upgrade_fd, &xr__m.upgraded_from) != XR_OK)
        return 1;

    sigset_t set;
    sigemptyset(&set);
    int sigs[] = {SIGCHLD, SIGHUP, SIGQUIT, SIGTERM, SIGINT, SIGUSR1, SIGUSR2};
    for (size_t i = 0; i < XR_ARRAY_SIZE(sigs); i++)
        sigaddset(&set, sigs[i]);
    sigprocmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);
    xr__m.sigfd = signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
    if (xr__m.sigfd < 0) {
        xr_log_errno(XR_LOG_EMERG, errno, "signalfd() failed");
        return 1;
    }
    if (xr_master_write_pid(xr__m.pid_path) != XR_OK) {
        xr_log_errno(XR_LOG_EMERG, errno, "cannot write pid file \"%s\"", xr__m.pid_path);
        return 1;
    }

    if (xr__m.upgraded_from)
        xr_log(XR_LOG_NOTICE,
               "xrayd/%s started (binary upgrade from pid %d), %d workers, "
               "configuration %s",
               XR_VERSION, (int) xr__m.upgraded_from, xr_gen_workers(g), conf_path);
    else
        xr_log(XR_LOG_NOTICE, "xrayd/%s started, %d workers, configuration %s", XR_VERSION,
               xr_gen_workers(g), conf_path);
    xr__master_admin_open(g);
    int n = xr_gen_workers(g);
    for (int i = 0; i < n; i++)
        xr_master_spawn(g);
    xr__m.standby.due = xr_mono_ms() + XR_STANDBY_AFTER_MS; /* after the workers' start-up */
    /* An old binary had more workers than we start: the rest of its
     * connections get replacements of their own that finish them. */
    while (xr__m.norphans > 0) {
        xr_orphan_t o = xr__m.orphans[--xr__m.norphans];
        xr__master_spawn_for(g, o.pid, o.dir, 1);
    }

    for (;;) {
        if (xr__m.stopping && xr_master_nprocs(NULL) == 0)
            break;
        int64_t now = xr_mono_ms();
        if (xr__m.pending_respawn > 0 && !xr__m.stopping && now >= xr__m.respawn_at) {
            while (xr__m.pending_respawn > 0) {
                xr__m.pending_respawn--;
                xr_master_spawn(xr__m.gens[0]);
            }
        }
        int standby_wanted = xr__m.standby.pid == 0 && xr__m.pending_respawn == 0 &&
                             xr_master_wants_standby(xr__m.gens[0]);
        if (standby_wanted && now >= xr__m.standby.due) {
            xr_master_standby_spawn(xr__m.gens[0]);
            standby_wanted = 0;
        }
        if (xr__m.stopping == 2 && now >= xr__m.stop_deadline) {
            xr_log(XR_LOG_WARN, "workers did not stop in %dms, killing them", XR_FAST_STOP_MS);
            xr_master_signal_gen(NULL, SIGKILL, 0);
            xr__m.stop_deadline = now + 1000;
        }
        int timeout = -1;
        if (xr__m.pending_respawn > 0 && !xr__m.stopping)
            timeout = (int) XR_MAX(0, xr__m.respawn_at - now);
        if (standby_wanted) {
            int64_t wait = XR_MAX(0, xr__m.standby.due - now);
            timeout = timeout < 0 ? (int) wait : XR_MIN(timeout, (int) wait);
        }
        if (xr__m.stopping == 2)
            timeout = (int) XR_MAX(0, xr__m.stop_deadline - now);
        if (xr__m.up.phase == XR_UP_FREEZING)
            timeout = 50; /* watch the workers freeze */
        struct pollfd pfd[3 + XR_SHM_WORKERS];
        int chans[XR_SHM_WORKERS];
        size_t nch = xr_cont_fds(chans, XR_SHM_WORKERS);
        pfd[0] = (struct pollfd){xr__m.sigfd, POLLIN, 0};
        pfd[1] = (struct pollfd){xr__m.admin_fd, POLLIN, 0};
        pfd[2] = (struct pollfd){xr__m.up.fd, POLLIN, 0};
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
        if (rc > 0 && xr__m.admin_fd >= 0 && (pfd[1].revents & POLLIN))
            xr_admin_serve(xr__m.admin_fd, xr__master_status);
        if (rc > 0 && xr__m.up.fd >= 0 && (pfd[2].revents & (POLLIN | POLLHUP)))
            xr__master_upgrade_read();
        xr__master_upgrade_tick();
        struct signalfd_siginfo si;
        while (read(xr__m.sigfd, &si, sizeof(si)) == (ssize_t) sizeof(si))
            xr_master_handle_signal((int) si.ssi_signo);
    }

    xr_log(XR_LOG_NOTICE, "exiting");
    unlink(xr__m.pid_path);
    if (xr__m.admin_fd >= 0) {
        close(xr__m.admin_fd);
        unlink(xr__m.admin_path);
    }
    for (int k = 0; k < XR_MAX_GENS; k++)
        if (xr__m.gens[k] != NULL)
            xr_gen_free(xr__m.gens[k]);
    close(xr__m.sigfd);
    return 0;
}
