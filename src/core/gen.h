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
struct xr_http_conf_s;

/* What a block is: a relay to fixed upstreams, or a transparent proxy to
 * each connection's original destination. */
typedef enum { XR_BLOCK_RELAY = 0, XR_BLOCK_PROXY } xr_block_kind_t;
typedef enum { XR_PROXY_CIRCUIT = 0, XR_PROXY_HTTP } xr_proxy_mode_t;
typedef enum { XR_INTERCEPT_REDIRECT = 0, XR_INTERCEPT_TPROXY } xr_intercept_t;

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
    /* proxy blocks */
    int kind; /* xr_block_kind_t */
    int proxy_mode;
    int intercept;
    int continuity;
    struct xr_http_conf_s *http;
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
    xr_dynmod_t *modules;          /* loaded with load_module, newest first */
    xr_filter_conf_t *filters;     /* every filter instance */
    xr_cleanup_t *cleanups;        /* run by xr_gen_free, newest first */
    struct xr_agent_conf_s *agent; /* the agent: block, or NULL */
    struct xr_policy_s *policy;    /* applications:, or NULL */
    const xr_node_t *policy_node;
} xr_gen_t;

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
