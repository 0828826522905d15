/*
 * master_upgrade.c: the masters' parts in a binary upgrade (SIGUSR2, see
 * upgrade.h for the conversation and upgrade.c for its messages).
 *
 * The old master starts the new binary, passes it the listening sockets,
 * and once it is READY freezes its workers and hands every
 * connection over before it steps down; the new master, at start-up,
 * takes all of that.  Both sides are here so that the conversation reads
 * in one place.  A new binary that fails before READY changes nothing:
 * the old master serves on.
 */
#include "core/master_int.h"
#include "core/continuity.h"
#include "core/log.h"
#include "core/upgrade.h"
#include "event/listener.h"

#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>

#define XR_FREEZE_MS 5000 /* old workers' time to freeze in an upgrade */

/* ---- binary upgrade: the old master's side ------------------------------------- */

void xr__master_upgrade_begin(void)
{
    int sp[2];
    if (xr__m.up.phase != XR_UP_NONE) {
        xr_log(XR_LOG_WARN, "binary upgrade already in progress (new master %d)",
               (int) xr__m.up.pid);
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
        execl(xr__m.exe, xr__m.exe, "-c", xr__m.conf_path, (char *) NULL);
        fprintf(stderr, "xrayd: binary upgrade: cannot run %s: %s\n", xr__m.exe, strerror(errno));
        _exit(127);
    }
    close(sp[1]);
    /* The new binary's master keeps a standby of its own; ours comes
     * back only if the upgrade fails. */
    xr__master_standby_stop(XR_STANDBY_AFTER_MS);
    xr__m.up.phase = XR_UP_STARTED;
    xr__m.up.pid = pid;
    xr__m.up.fd = sp[0];
    /* nginx's dance: the new master writes the pid file, ours moves aside. */
    char old[sizeof(xr__m.pid_path)];
    snprintf(old, sizeof(old), "%.4088s.oldbin", xr__m.pid_path);
    if (rename(xr__m.pid_path, old) == 0)
        snprintf(xr__m.pid_path, sizeof(xr__m.pid_path), "%s", old);
    xr_log(XR_LOG_NOTICE, "binary upgrade: started %s as pid %d", xr__m.exe, (int) pid);
}

static void xr_master_send_listener(const struct sockaddr_storage *sa, socklen_t len, int fd,
                                    int backlog, void *arg)
{
    xr_up_msg_t m = {.type = XR_UP_LISTENER, .backlog = backlog, .salen = len};
    memcpy(&m.sa, sa, len);
    if (xr_up_send(xr__m.up.fd, &m, &fd, 1) != XR_OK)
        *(int *) arg = XR_ERROR;
}

/* The new master's answer, or its loss. */
void xr__master_upgrade_read(void)
{
    xr_up_msg_t m;
    int fds[2];
    int r = xr_up_recv(xr__m.up.fd, &m, fds, 0);
    if (r <= 0) {
        if (r < 0) {
            close(xr__m.up.fd);
            xr__m.up.fd = -1; /* its exit status follows (SIGCHLD) */
        }
        return;
    }
    for (int i = 0; i < 2; i++)
        if (fds[i] >= 0)
            close(fds[i]);
    if (m.type == XR_UP_HELLO && xr__m.up.phase == XR_UP_STARTED) {
        int rc = XR_OK;
        size_t n = xr_listeners_each(xr_master_send_listener, &rc);
        xr_up_msg_t done = {.type = XR_UP_LISTENERS_DONE};
        if (rc != XR_OK || xr_up_send(xr__m.up.fd, &done, NULL, 0) != XR_OK)
            xr_log(XR_LOG_ALERT, "binary upgrade: cannot pass the listening sockets on");
        else
            xr_log(XR_LOG_NOTICE, "binary upgrade: passed %zu listening socket(s) on", n);
        return;
    }
    if (m.type == XR_UP_READY && xr__m.up.phase == XR_UP_STARTED) {
        /* The new binary runs with our configuration: our workers stop
         * touching their connections, then it takes them. */
        xr__m.up.phase = XR_UP_FREEZING;
        xr__m.up.deadline = xr_mono_ms() + XR_FREEZE_MS;
        xr__m.pending_respawn = 0;
        for (int i = 0; i < XR_SHM_WORKERS; i++)
            if (xr__m.procs[i].pid > 0) {
                xr__m.procs[i].frozen = 1;
                xr__m.procs[i].retiring = 1;
                kill(xr__m.procs[i].pid, SIGUSR2);
            }
        xr_log(XR_LOG_NOTICE, "binary upgrade: the new master is ready; handing over");
    }
}

static void xr_master_send_store(pid_t pid, const char *dir)
{
    xr_up_msg_t m = {.type = XR_UP_STORE, .owner = pid};
    snprintf(m.dir, sizeof(m.dir), "%s", dir);
    xr_up_send(xr__m.up.fd, &m, NULL, 0);
}

/* Every worker froze (or had its time): hand every connection with continuity and
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
        if (xr_up_send(xr__m.up.fd, &m, fds, k) == XR_OK)
            sent++;
    }
    for (int i = 0; i < XR_SHM_WORKERS; i++)
        if (xr__m.procs[i].pid > 0)
            xr_master_send_store(xr__m.procs[i].pid, xr__m.procs[i].gen->main.state_dir);
    for (size_t i = 0; i < xr__m.norphans; i++)
        xr_master_send_store(xr__m.orphans[i].pid, xr__m.orphans[i].dir);
    xr__m.norphans = 0;
    xr_up_msg_t done = {.type = XR_UP_DONE};
    xr_up_send(xr__m.up.fd, &done, NULL, 0);
    xr_log(
        XR_LOG_NOTICE,
        "binary upgrade: handed %zu connection(s) with continuity to pid %d; finishing the relays "
        "left and exiting",
        sent, (int) xr__m.up.pid);
    /* Ours to close, not to shut down: they live on in the new master. */
    xr_cont_clear();
    xr_listeners_close_all();
    if (xr__m.admin_fd >= 0) {
        close(xr__m.admin_fd); /* the new master has bound the path anew */
        xr__m.admin_fd = -1;
        xr__m.admin_path[0] = '\0';
    }
    close(xr__m.up.fd);
    xr__m.up.fd = -1;
    xr__m.up.phase = XR_UP_NONE;
    xr__m.up.pid = 0;
    xr__m.handed_over = 1;
    xr__m.stopping = 1;
}

void xr__master_upgrade_tick(void)
{
    if (xr__m.up.phase != XR_UP_FREEZING)
        return;
    if (!xr_cont_all_frozen()) {
        if (xr_mono_ms() < xr__m.up.deadline)
            return;
        /* A worker that does not answer is stopped the hard way: its
         * snapshot is exact whenever it stops. */
        for (int i = 0; i < XR_SHM_WORKERS; i++)
            if (xr__m.procs[i].pid > 0 && xr_cont_count_of(xr__m.procs[i].pid) > 0) {
                xr_log(XR_LOG_WARN, "binary upgrade: worker %d did not freeze in %d ms; killing it",
                       (int) xr__m.procs[i].pid, XR_FREEZE_MS);
                kill(xr__m.procs[i].pid, SIGKILL);
            }
    }
    xr_master_upgrade_handover();
}

void xr__master_upgrade_failed(int status)
{
    char how[64];
    if (WIFSIGNALED(status))
        snprintf(how, sizeof(how), "signal %d", WTERMSIG(status));
    else
        snprintf(how, sizeof(how), "code %d", WEXITSTATUS(status));
    if (xr__m.up.phase == XR_UP_NONE) {
        xr__m.up.pid = 0; /* it took over, then exited: its own business */
        return;
    }
    xr_log(XR_LOG_ALERT,
           "binary upgrade failed: the new master (pid %d) exited with %s; "
           "still serving with this binary",
           (int) xr__m.up.pid, how);
    char orig[sizeof(xr__m.pid_path)];
    snprintf(orig, sizeof(orig), "%s", xr__m.pid_path);
    char *dot = strstr(orig, ".oldbin");
    if (dot != NULL) {
        *dot = '\0';
        if (rename(xr__m.pid_path, orig) == 0)
            snprintf(xr__m.pid_path, sizeof(xr__m.pid_path), "%s", orig);
    }
    if (xr__m.up.phase == XR_UP_FREEZING) {
        /* Our workers let go of their connections with continuity: new ones of
         * ours take them back, as after a crash. */
        for (int i = 0; i < XR_SHM_WORKERS; i++) {
            xr_proc_t *p = &xr__m.procs[i];
            if (p->pid > 0 && p->frozen && p->gen == xr__m.gens[0] && !xr__m.stopping) {
                pid_t was = p->pid;
                xr__master_spawn_for(p->gen, was, p->gen->main.state_dir, 0);
            }
        }
    }
    if (xr__m.up.fd >= 0)
        close(xr__m.up.fd);
    xr__m.up.fd = -1;
    xr__m.up.phase = XR_UP_NONE;
    xr__m.up.pid = 0;
}

/* ---- binary upgrade: the new master's side ------------------------------------- */

/* Take the old master's listening sockets, then (after READY) its
 * connections.  XR_OK, or XR_ERROR: the old master goes on serving. */
int xr__master_upgrade_receive(xr_gen_t *g, int fd, pid_t *old)
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
        } else if (m.type == XR_UP_STORE && xr__m.norphans < XR_MAX_ORPHANS) {
            xr_orphan_t *o = &xr__m.orphans[xr__m.norphans++];
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
           "binary upgrade from pid %d: %zu listening socket(s), %zu "
           "connection(s) with continuity taken over",
           (int) *old, nl, nc);
    return XR_OK;
}
