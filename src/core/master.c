/*
 * master.c: the master process.
 *
 * It runs no relay traffic and no libuv loop: signals arrive on a
 * signalfd and poll() waits for them or for the next respawn, so a worker
 * forked from here inherits no event-loop state.
 */
#include "core/xrayd.h"
#include "core/continuity.h"
#include "core/log.h"
#include "core/master.h"
#include "core/shm.h"
#include "core/worker.h"
#include "event/listener.h"
#include "proxy/proxy.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <sys/signalfd.h>
#include <sys/wait.h>
#include <unistd.h>

#define XR_MAX_GENS        16
#define XR_RESPAWN_FAST_MS 2000 /* a worker that dies younger backs off */
#define XR_RESPAWN_MAX_MS  5000
#define XR_FAST_STOP_MS    5000

typedef struct {
    pid_t pid;
    xr_gen_t *gen;
    int retiring;
    int agent; /* serves the generation's agent */
    int64_t started;
    int cont_fd; /* the master's end of its continuity channel */
} xr_proc_t;

/* A dead worker whose proxied connections wait for a replacement. */
typedef struct {
    pid_t pid;
    xr_gen_t *gen;
} xr_orphan_t;

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
    char pid_path[4096];
    xr_orphan_t orphans[XR_MAX_ORPHANS];
    size_t norphans;
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
static int xr_master_spawn_for(xr_gen_t *g, pid_t adopt, int retiring)
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
    /* One worker of a generation serves its agent, so the agent's tables
     * live in one process; a replacement for it takes the role over. */
    int agent = g->agent != NULL && !retiring;
    for (int i = 0; i < XR_SHM_WORKERS && agent; i++)
        if (xr_m.procs[i].pid > 0 && xr_m.procs[i].gen == g && xr_m.procs[i].agent)
            agent = 0;
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
    if (pid == 0)
        xr_worker_main(g, slot, agent, xr_m.sigfd, child_end, adopt, retiring);
    close(child_end);
    xr_cont_attach(cont_fd, pid);
    if (adopt > 0)
        xr_cont_adopted(adopt, pid);
    xr_m.procs[slot].cont_fd = cont_fd;
    xr_m.procs[slot].agent = agent;
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
            pid_t dead = xr_m.orphans[i].pid;
            xr_m.orphans[i] = xr_m.orphans[--xr_m.norphans];
            return xr_master_spawn_for(g, dead, 0);
        }
    return xr_master_spawn_for(g, 0, 0);
}

/* Worker pid of g died with proxied connections: they wait for the next
 * worker of g (the respawn), or - g retiring - for a replacement that only
 * finishes them. */
static void xr_master_orphan(pid_t pid, xr_gen_t *g, size_t n)
{
    char path[600];
    xr_proxy_store_path(path, sizeof(path), g->main.state_dir, pid);
    if (xr_m.stopping || n == 0) {
        xr_cont_forget(pid);
        unlink(path);
        return;
    }
    xr_log(XR_LOG_NOTICE, "worker %d left %zu proxied connection(s) to take over", (int) pid, n);
    if (g != xr_m.gens[0]) {
        if (xr_master_spawn_for(g, pid, 1) != XR_OK)
            xr_cont_forget(pid);
        return;
    }
    if (xr_m.norphans == XR_MAX_ORPHANS) {
        xr_log(XR_LOG_ALERT, "too many dead workers waiting; worker %d's connections are closed",
               (int) pid);
        xr_cont_forget(pid);
        unlink(path);
        return;
    }
    xr_m.orphans[xr_m.norphans].pid = pid;
    xr_m.orphans[xr_m.norphans].gen = g;
    xr_m.norphans++;
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

static void xr_master_reap(void)
{
    int status;
    pid_t pid;
    while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
        int slot = -1;
        for (int i = 0; i < XR_SHM_WORKERS; i++)
            if (xr_m.procs[i].pid == pid)
                slot = i;
        if (slot < 0)
            continue;
        xr_proc_t *p = &xr_m.procs[slot];
        int expected = p->retiring || xr_m.stopping;
        if (WIFSIGNALED(status))
            xr_log(expected && WTERMSIG(status) == SIGTERM ? XR_LOG_NOTICE : XR_LOG_ALERT,
                   "worker process %d exited on signal %d%s", (int) pid, WTERMSIG(status),
                   WCOREDUMP(status) ? " (core dumped)" : "");
        else
            xr_log(WEXITSTATUS(status) == 0 && expected ? XR_LOG_NOTICE : XR_LOG_ALERT,
                   "worker process %d exited with code %d", (int) pid, WEXITSTATUS(status));
        xr_shm_reap_worker(slot);
        int respawn = !expected && p->gen == xr_m.gens[0];
        int64_t lived = xr_mono_ms() - p->started;
        xr_gen_t *g = p->gen;
        size_t left = xr_cont_reap(pid);
        memset(p, 0, sizeof(*p));
        xr_master_orphan(pid, g, left);
        if (respawn) {
            /* A worker that keeps dying young must not turn the master
             * into a fork loop (its connections wait no longer than the
             * back-off). */
            if (lived < XR_RESPAWN_FAST_MS)
                xr_m.respawn_delay =
                    xr_m.respawn_delay ? XR_MIN(xr_m.respawn_delay * 2, XR_RESPAWN_MAX_MS) : 100;
            else
                xr_m.respawn_delay = 0;
            xr_m.pending_respawn++;
            xr_m.respawn_at = xr_mono_ms() + xr_m.respawn_delay;
            if (xr_m.respawn_delay)
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

    xr_gen_t *old = xr_m.gens[0];
    g->number = old->number + 1;
    xr_m.gens[free_slot] = old;
    xr_m.gens[0] = g;
    xr_m.pending_respawn = 0;
    xr_m.respawn_delay = 0;

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
        xr_log(XR_LOG_NOTICE,
               "binary upgrade (SIGUSR2) is not implemented in this version; ignored");
        break;
    default: break;
    }
}

int xr_master_run(xr_gen_t *g, const char *conf_path)
{
    memset(&xr_m, 0, sizeof(xr_m));
    xr_m.conf_path = xr_strdup(conf_path); /* gen 1 and argv do not last */
    xr_m.gens[0] = g;
    g->number = 1;
    snprintf(xr_m.pid_path, sizeof(xr_m.pid_path), "%s", g->main.pid);

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

    xr_log(XR_LOG_NOTICE, "xrayd/%s started, %d workers, configuration %s", XR_VERSION,
           xr_gen_workers(g), conf_path);
    int n = xr_gen_workers(g);
    for (int i = 0; i < n; i++)
        xr_master_spawn(g);

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
        struct pollfd pfd[1 + XR_SHM_WORKERS];
        int chans[XR_SHM_WORKERS];
        size_t nch = xr_cont_fds(chans, XR_SHM_WORKERS);
        pfd[0] = (struct pollfd){xr_m.sigfd, POLLIN, 0};
        for (size_t i = 0; i < nch; i++)
            pfd[1 + i] = (struct pollfd){chans[i], POLLIN, 0};
        int rc = poll(pfd, (nfds_t) (1 + nch), timeout);
        if (rc < 0 && errno != EINTR) {
            xr_log_errno(XR_LOG_ALERT, errno, "poll() failed in the master");
            sleep(1);
            continue;
        }
        /* Descriptors first: a HOLD sent just before a worker died must be
         * in the table when its SIGCHLD is handled. */
        for (size_t i = 0; rc > 0 && i < nch; i++)
            if (pfd[1 + i].revents & POLLIN)
                xr_cont_master_read(pfd[1 + i].fd);
        struct signalfd_siginfo si;
        while (read(xr_m.sigfd, &si, sizeof(si)) == (ssize_t) sizeof(si))
            xr_master_handle_signal((int) si.ssi_signo);
    }

    xr_log(XR_LOG_NOTICE, "exiting");
    unlink(xr_m.pid_path);
    for (int k = 0; k < XR_MAX_GENS; k++)
        if (xr_m.gens[k] != NULL)
            xr_gen_free(xr_m.gens[k]);
    close(xr_m.sigfd);
    return 0;
}
