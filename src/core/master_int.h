/*
 * master_int.h: what the master's files share, for src/core only.
 *
 * The master is split by job: master.c supervises the workers (spawning,
 * reaping, respawn back-off, orphaned connections, reloads and signals),
 * master_status.c answers `xray status` on the admin socket, and
 * master_upgrade.c plays both masters' parts in a binary upgrade.  They
 * share the worker table and the rest of the state below, xr__m.
 *
 * xr__m is one per process, not passed around, because it is the master
 * process itself: there is one master, xr_master_run fills xr__m in once
 * and runs until it exits, and a worker forked from it never touches it.
 */
#ifndef XR_MASTER_INT_H
#define XR_MASTER_INT_H

#include <sys/types.h>

#include "core/xrayd.h"
#include "core/admin.h"
#include "core/gen.h"
#include "core/master.h"
#include "core/shm.h"

#define XR_MAX_GENS    16
#define XR_MAX_ORPHANS 64
/* The next standby worker forks this long after the last one became a
 * worker (so that it takes no CPU from the takeover), after a reload, or
 * after an upgrade that failed. */
#define XR_STANDBY_AFTER_MS 1000

/* A worker the master started, by its slot in the shared segment. */
typedef struct {
    pid_t pid;
    xr_gen_t *gen;
    int retiring;
    unsigned singles; /* single-worker front doors it serves (bit: table index) */
    int64_t started;
    int cont_fd; /* the master's end of its continuity channel */
    int frozen;  /* told to hand its connections with continuity over (upgrade) */
} xr_proc_t;

/* A dead worker whose connections with continuity wait for a replacement; dir
 * holds its stores (an old binary's may differ from ours). */
typedef struct {
    pid_t pid;
    xr_gen_t *gen;
    char dir[512];
} xr_orphan_t;

/* Where the old master is in a binary upgrade (xr__m.up.phase). */
enum { XR_UP_NONE = 0, XR_UP_STARTED, XR_UP_FREEZING };

/* The master: its workers, the generations they serve, what waits for a
 * respawn, the admin socket and a binary upgrade under way. */
typedef struct {
    xr_proc_t procs[XR_SHM_WORKERS];
    xr_gen_t *gens[XR_MAX_GENS]; /* gens[0] is current; others are retiring */
    const char *conf_path;
    int sigfd;
    int stopping; /* 1: graceful (QUIT), 2: fast (TERM/INT) */
    int64_t stop_deadline;
    int pending_respawn;
    int64_t respawn_at;
    int64_t respawn_delay;
    int64_t reaped_at; /* when the last worker's death was seen (ms, monotonic) */
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
    /* The standby worker (core/continuity.h): forked ahead of a worker's
     * death, it is the replacement that takes over its connections. */
    struct {
        pid_t pid;
        xr_gen_t *gen;
        int cont_fd;     /* the master's end of its channel */
        int64_t started; /* ms, monotonic */
        int64_t due;     /* when to fork the next one (ms, monotonic) */
    } standby;
    struct {
        int phase;
        pid_t pid; /* the new master */
        int fd;
        int64_t deadline;
    } up;
} xr__m_t;

/* The master's state (master.c). */
extern xr__m_t xr__m;

/* ---- supervision (master.c) ---- */

/* Start a worker of g; with adopt, it takes over that dead worker's
 * connections with continuity (their stores in adopt_dir), and with retiring
 * only those.  XR_OK or XR_ERROR. */
int xr__master_spawn_for(xr_gen_t *g, pid_t adopt, const char *adopt_dir, int retiring);
/* End the standby worker, if any; the next is forked after delay_ms. */
void xr__master_standby_stop(int64_t delay_ms);
/* Do workers of the current generation keep dying during start-up?  One
 * that runs past it resets the count. */
int xr__master_workers_failing(void);

/* ---- `xray status` (master_status.c) ---- */

/* The answer to "status" (json 0) or "status json" (1), in b. */
void xr__master_status(xr_sb_t *b, int json);
/* Open g's admin_socket when it names another path than the one open. */
void xr__master_admin_open(const xr_gen_t *g);

/* ---- binary upgrade (master_upgrade.c) ---- */

/* Old master, on SIGUSR2: start the new binary with one end of a channel. */
void xr__master_upgrade_begin(void);
/* Old master: a message from the new master on the channel, or its loss. */
void xr__master_upgrade_read(void);
/* Old master, every turn of the loop: once every worker froze (or had its
 * time), hand their connections over and step down. */
void xr__master_upgrade_tick(void);
/* Old master: the new master exited with status; serve on if it had not
 * taken over. */
void xr__master_upgrade_failed(int status);
/* New master: take the old master's listening sockets and, after READY,
 * its connections with continuity over fd; *old is its pid.  XR_OK, or XR_ERROR:
 * the old master goes on serving. */
int xr__master_upgrade_receive(xr_gen_t *g, int fd, pid_t *old);

#endif
