/*
 * conf.h: YAML -> a tree of nodes that carry file, line and column ->
 * directive dispatch through declared tables (STYLE 8-11).
 *
 * Errors are one sentence, made by xr_conf_error() only:
 *     file:line:column: "directive": reason
 * The first error stops the load; cf->err holds it.
 */
#ifndef XR_CONF_H
#define XR_CONF_H

#include "core/xrayd.h"
#include "core/pool.h"

struct xr_node_s {
    xr_node_type_t type;
    const char *file; /* the file the node came from */
    int line, col;    /* 1-based */
    const char *key;  /* the mapping key this node is (under), for errors */
    char *str;        /* scalar text, NUL-terminated */
    size_t slen;
    int quoted;        /* scalar was quoted in the source */
    size_t n;          /* sequence items, or mapping pairs */
    xr_node_t **items; /* sequence: n items; mapping: keys[2i], values[2i+1] */
};

/* Where TLS directives appear (beside XR_CTX_MAIN/RELAY/FILTER). */
#define XR_CTX_TLS_SERVER 0x08 /* relay: tls: {...} */
#define XR_CTX_TLS_CLIENT 0x10 /* relay: upstream_tls: {...} */
/* Front doors' blocks: XR_CTX_RELAY and one bit of 0xff00 each (the
 * front door's block_ctx); a row of every block carries all of them.
 * Sub-blocks of a front door take bits of 0xff0000. */
#define XR_CTX_BLOCKS (XR_CTX_RELAY | 0xff00u)

/* Internal directive flags, beside the public XR_DIR_REQUIRED. */
#define XR_DIR_EARLY 0x100 /* dispatched before the other keys of a block */
#define XR_DIR_MULTI 0x200 /* may repeat (across includes); setter appends */

struct xr_conf_s {
    xr_pool_t *pool;
    char err[1024];
    int failed;
    void *user;                               /* the generation being built */
    unsigned ctx;                             /* XR_CTX_* of the block being parsed */
    const xr_directive_t *const *hint_tables; /* for "did you mean" and levels */
    size_t nodes;                             /* nodes made so far (bounded) */
    int dry_run;                              /* parse only: modules open no files */
    /* Names context bits ctx as a phrase ("a relay block") in buf (96
     * bytes), for "it belongs in ..."; NULL: generic words. */
    const char *(*ctx_name)(unsigned ctx, char *buf);
};

/* Resolve where directive d of a block is stored. */
typedef void *(*xr_conf_target_cb)(xr_conf_t *cf, const xr_directive_t *d, void *block);

/* Set up a parsing context on pool p (owned by the caller). */
void xr_conf_init(xr_conf_t *cf, xr_pool_t *p);

/* Parse a YAML file or buffer into nodes.  NULL on error (cf->err set).
 * `at`, if not NULL, is the node that asked for the file (include), used
 * for the position of "cannot open" errors. */
xr_node_t *xr_conf_parse_file(xr_conf_t *cf, const char *path, const xr_node_t *at);
xr_node_t *xr_conf_parse_buffer(xr_conf_t *cf, const char *name, const unsigned char *buf,
                                size_t len);

/* Apply every default of the directives allowed in ctx to block. */
int xr_conf_defaults(xr_conf_t *cf, const xr_directive_t *table, unsigned ctx, void *block,
                     xr_conf_target_cb target);

/* Dispatch every key of map to table (entries allowed in ctx).  Unknown
 * keys, keys from another level, duplicate keys and missing required
 * directives are errors.  `set`, if not NULL, gets bit i for each table
 * entry i that the map set (table size must be <= 64). */
int xr_conf_block(xr_conf_t *cf, const xr_node_t *map, const xr_directive_t *table, unsigned ctx,
                  void *block, xr_conf_target_cb target, uint64_t *set);

/* Set one directive from a node, by its type. */
int xr_conf_set(xr_conf_t *cf, const xr_directive_t *d, const xr_node_t *n, void *slot_base);

/* Size of a directive's slot (for inheritance copies); 0 for CUSTOM. */
size_t xr_directive_slot_size(const xr_directive_t *d);

/* Parse "host:port", "[v6]:port" or "*:port".  XR_OK or XR_ERROR. */
int xr_conf_parse_addr(xr_conf_t *cf, const xr_node_t *n, xr_addr_t *out);

/* Edit distance, for hints. */
size_t xr_conf_distance(const char *a, const char *b);

/* "flag", "size", ... for --list-directives. */
const char *xr_dir_type_name(xr_dir_type_t t);

#endif
