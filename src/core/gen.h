/*
 * gen.h: a configuration generation: everything one parse of the
 * configuration produced, in one arena.  The master builds a whole new
 * generation on reload or nothing (STYLE 17); workers run on exactly one.
 */
#ifndef XR_GEN_H
#define XR_GEN_H

#include <stdio.h>

#include "core/conf.h"
#include "core/module.h"

typedef enum {
    XR_BALANCE_ROUND_ROBIN = 0,
    XR_BALANCE_LEAST_CONN,
    XR_BALANCE_RANDOM,
    XR_BALANCE_SOURCE_HASH
} xr_balance_t;

/* One entry of a relay's `filters:`. */
typedef struct xr_filter_conf_s {
    const xr_module_t *module;
    void *conf; /* module->conf_size bytes */
    const xr_node_t *node;
    struct xr_filter_conf_s *next_in_gen; /* every instance, for worker hooks */
} xr_filter_conf_t;

struct xr_tls_conf_s;
struct xr_frontdoor_s;

/* The most front doors a build has (core/frontdoor.h). */
#define XR_MAX_FRONTDOORS 16

/* A directive row of a front door's block whose slot is in the block's
 * ext (the front door's own block configuration), not in the block. */
#define XR_DIR_EXT 0x400

/* A block: listen addresses and what the relay engine needs to serve
 * them.  Which front door accepts its connections, and that front door's
 * own settings, hang off it. */
typedef struct xr_relay_conf_s {
    uint64_t set; /* bit i: core directive i was written in this block */
    char *name;
    xr_addr_list_t listen;
    xr_addr_list_t upstream;
    int balance;
    int tcp_nodelay;
    int64_t upstream_tries;
    int64_t upstream_max_fails;
    int64_t upstream_fail_timeout;
    int64_t buffer_size;
    int64_t connect_timeout;
    int64_t idle_timeout;
    int64_t max_connections;
    int64_t backlog;
    const struct xr_frontdoor_s *frontdoor; /* whose block it is */
    void *ext;                              /* the front door's own settings, or NULL */
    int transparent;                        /* listen with IP_TRANSPARENT (TPROXY) */
    int continuity; /* connections live on across worker crashes and upgrades */
    xr_filter_conf_t *filters;
    size_t nfilters;
    struct xr_tls_conf_s *tls;          /* listen side, or NULL */
    struct xr_tls_conf_s *upstream_tls; /* upstream side, or NULL */
    const xr_node_t *node;              /* the block, for positions */
    size_t index;                       /* in gen->relays */
    int slot;                           /* shared-memory counter slot, set by the master */
} xr_relay_conf_t;

typedef struct {
    int daemon;
    int64_t workers; /* 0: one per CPU */
    char *pid;
    char *error_log;
    int log_level;
    int64_t drain_timeout;
    char *state_dir;    /* proxies' snapshot files */
    char *admin_socket; /* `xray status` for the daemon */
} xr_main_conf_t;

typedef struct xr_cleanup_s {
    void (*fn)(void *arg);
    void *arg;
    struct xr_cleanup_s *next;
} xr_cleanup_t;

typedef struct xr_gen_s {
    xr_pool_t *pool;
    char *file;
    uint64_t number; /* 1, 2, ... as reloads happen (master sets) */
    xr_main_conf_t main;
    xr_relay_conf_t defaults; /* top-level values relays inherit */
    xr_relay_conf_t **relays;
    size_t nrelays, relays_cap;
    xr_dynmod_t *modules;            /* loaded with load_module, newest first */
    xr_filter_conf_t *filters;       /* every filter instance */
    xr_cleanup_t *cleanups;          /* run by xr_gen_free, newest first */
    void *fdconf[XR_MAX_FRONTDOORS]; /* front doors' own generation settings */
} xr_gen_t;

/* Front door fd's settings slot in g (NULL until it stores some). */
void **xr_gen_fdconf(xr_gen_t *g, const struct xr_frontdoor_s *fd);
void *xr_gen_fdconf_get(const xr_gen_t *g, const struct xr_frontdoor_s *fd);

/* Parse a sequence of blocks of front door fd (the value of its
 * top-level directive) into g->relays.  Each block takes the core's
 * shared block directives and fd->block_directives; ext_size bytes are
 * allocated for rc->ext when not 0, and check(), if not NULL, runs on
 * each parsed block.  XR_OK or XR_ERROR. */
int xr_gen_blocks(xr_conf_t *cf, const xr_node_t *n, const struct xr_frontdoor_s *fd,
                  size_t ext_size, int (*check)(xr_conf_t *cf, xr_relay_conf_t *rc));

/* Parse a `filters:` sequence into a chain allocated from the generation
 * (relay blocks and agent applications use it).  XR_OK or XR_ERROR. */
int xr_gen_filters(xr_conf_t *cf, const xr_node_t *n, xr_filter_conf_t **filters, size_t *nfilters);

/* A new, zeroed relay block in g (the agent makes one per application for
 * its relay points). */
xr_relay_conf_t *xr_gen_add_relay(xr_conf_t *cf, xr_gen_t *g);

/* Run fn(arg) when g is freed (for what the arena cannot free). */
void xr_gen_add_cleanup(xr_gen_t *g, void (*fn)(void *), void *arg);

/* Parse, validate and prepare a whole generation from path.  On error
 * returns NULL and writes the one-sentence error into err. */
xr_gen_t *xr_gen_load(const char *path, char *err, size_t errsize);
/* Parse from a buffer (the fuzz target); no files are opened by modules. */
xr_gen_t *xr_gen_load_buffer(const unsigned char *buf, size_t len, char *err, size_t errsize);
/* Run free_conf hooks, unload modules, drop the arena. */
void xr_gen_free(xr_gen_t *g);

/* Number of workers to run: main.workers or the CPU count. */
int xr_gen_workers(const xr_gen_t *g);

/* Print every directive (core and modules): name TAB contexts TAB type TAB
 * default TAB doc. */
void xr_gen_list_directives(FILE *out);

extern const xr_directive_t xr_core_directives[];

#endif
