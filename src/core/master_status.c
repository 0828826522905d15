/*
 * master_status.c: what `xray status` shows of the daemon (see
 * master_int.h): the master, its workers, and each block's counters from
 * the shared segment, as text for people or JSON for scripts, on the
 * admin socket named by admin_socket.
 *
 * The master serves it between signals, from its own poll() loop: a
 * request is answered at once from the shared counters, never by asking
 * a worker.
 */
#include "core/master_int.h"
#include "core/continuity.h"
#include "core/frontdoor.h"
#include "core/log.h"

#include <stdio.h>
#include <unistd.h>

static const char *xr_block_kind(const xr_relay_conf_t *rc)
{
    const xr_frontdoor_t *fd = rc->frontdoor;
    if (fd == NULL)
        return "-";
    return fd->block_kind ? fd->block_kind(rc) : fd->name;
}

void xr__master_status(xr_sb_t *b, int json)
{
    xr_gen_t *g = xr__m.gens[0];
    int64_t up = xr_wall_ms() - xr__m.started;
    uint64_t resumed = 0;
    for (size_t i = 0; i < g->nrelays; i++)
        resumed += atomic_load(&xr_shm->resumed[g->relays[i]->slot]);
    int failing = xr__master_workers_failing();
    if (json) {
        xr_sb_add(b,
                  "{\"version\":\"%s\",\"pid\":%ld,\"generation\":%llu,\"uptime_ms\":%lld,"
                  "\"upgraded_from\":%ld,\"held\":%zu,\"resumed\":%llu,\"state\":\"%s\","
                  "\"workers_failing\":%s,\"failed_starts\":%d,\"last_failure\":",
                  XR_VERSION, (long) getpid(), (unsigned long long) g->number, (long long) up,
                  (long) xr__m.upgraded_from, xr_cont_count(), (unsigned long long) resumed,
                  failing ? "workers_failing" : "running", failing ? "true" : "false",
                  xr__m.failed_starts);
        if (xr__m.failed_starts > 0)
            xr_sb_json(b, xr__m.failed_how);
        else
            xr_sb_add(b, "null");
        xr_sb_add(b, ",\"workers\":[");
        int first = 1;
        for (int i = 0; i < XR_SHM_WORKERS; i++) {
            const xr_proc_t *p = &xr__m.procs[i];
            if (p->pid <= 0)
                continue;
            xr_sb_add(b, "%s{\"pid\":%ld,\"generation\":%llu,\"retiring\":%s,\"held\":%zu}",
                      first ? "" : ",", (long) p->pid, (unsigned long long) p->gen->number,
                      p->retiring ? "true" : "false", xr_cont_count_of(p->pid));
            first = 0;
        }
        xr_sb_add(b, "],\"standby\":");
        if (xr__m.standby.pid > 0)
            xr_sb_add(b, "%ld", (long) xr__m.standby.pid);
        else
            xr_sb_add(b, "null");
        xr_sb_add(b, ",\"blocks\":[");
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
    if (xr__m.upgraded_from)
        xr_sb_add(b, "  (binary upgrade from pid %ld)", (long) xr__m.upgraded_from);
    xr_sb_add(b, "\nworkers:");
    for (int i = 0; i < XR_SHM_WORKERS; i++)
        if (xr__m.procs[i].pid > 0)
            xr_sb_add(b, " %ld%s", (long) xr__m.procs[i].pid,
                      xr__m.procs[i].retiring ? " (retiring)" : "");
    if (xr__m.standby.pid > 0)
        xr_sb_add(b, "  standby: %ld", (long) xr__m.standby.pid);
    if (failing)
        xr_sb_add(b,
                  "\nWORKERS FAILING: %d workers in a row exited during start-up (the last %s), "
                  "for %lld s; respawning with back-off, see the error log",
                  xr__m.failed_starts, xr__m.failed_how,
                  (long long) ((xr_wall_ms() - xr__m.failing_since) / 1000));
    xr_sb_add(b,
              "\nconnections held for continuity: %zu; taken over after a crash "
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

void xr__master_admin_open(const xr_gen_t *g)
{
    if (g->main.admin_socket == NULL || strcmp(g->main.admin_socket, xr__m.admin_path) == 0)
        return;
    if (xr__m.admin_fd >= 0) {
        close(xr__m.admin_fd);
        unlink(xr__m.admin_path);
    }
    xr__m.admin_fd = xr_admin_open(g->main.admin_socket);
    if (xr__m.admin_fd < 0) {
        /* Status is a convenience: the daemon serves without it. */
        xr_log_errno(XR_LOG_ERR, errno, "cannot open admin_socket %s", g->main.admin_socket);
        xr__m.admin_path[0] = '\0';
        return;
    }
    snprintf(xr__m.admin_path, sizeof(xr__m.admin_path), "%s", g->main.admin_socket);
}
