/*
 * gen.c: the core directive table and the building of a generation.
 */
#include "core/xrayd.h"
#include "core/gen.h"
#include "core/frontdoor.h"
#include "core/log.h"

#include <fcntl.h>
#include <glob.h>
#include <netinet/in.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#define XR_MAX_INCLUDE_DEPTH 8

static int xr_set_workers(xr_conf_t *cf, const xr_node_t *n, void *conf, const xr_directive_t *d);
static int xr_set_load_module(xr_conf_t *cf, const xr_node_t *n, void *conf,
                              const xr_directive_t *d);
static int xr_set_include(xr_conf_t *cf, const xr_node_t *n, void *conf, const xr_directive_t *d);
static int xr_set_filters(xr_conf_t *cf, const xr_node_t *n, void *conf, const xr_directive_t *d);
static int xr_set_error_log(xr_conf_t *cf, const xr_node_t *n, void *conf, const xr_directive_t *d);

#define M        XR_CTX_MAIN
#define B        XR_CTX_BLOCKS
#define SHAPE(s) ((const char *const[]){s, NULL})
#define MO(f)    offsetof(xr_main_conf_t, f)
#define RO(f)    offsetof(xr_relay_conf_t, f)

/* The core's directives, declared once: the parser, -t, --list-directives
 * and html-docs/directives.html all read this table.  The rows of blocks
 * (B) apply to the blocks of every front door; a front door's own rows
 * are in its descriptor. */
const xr_directive_t xr_core_directives[] = {
    {"include", M, XR_T_CUSTOM, 0, NULL, 0, 0, SHAPE("paths"), xr_set_include, XR_DIR_MULTI,
     "Merge other YAML files (paths or globs) into the top level."},
    {"load_module", M, XR_T_CUSTOM, 0, NULL, 0, 0, SHAPE("paths"), xr_set_load_module,
     XR_DIR_EARLY | XR_DIR_MULTI, "Load filter modules from .so files."},
    {"daemon", M, XR_T_FLAG, MO(daemon), "off", 0, 0, NULL, NULL, 0,
     "Detach from the terminal and run in the background."},
    {"workers", M, XR_T_CUSTOM, MO(workers), "auto", 0, 0, SHAPE("auto|number"), xr_set_workers, 0,
     "Number of worker processes, or auto for one per CPU."},
    {"pid", M, XR_T_PATH, MO(pid), "/run/xrayd.pid", 0, 0, NULL, NULL, 0,
     "File the master writes its process id to; -s reads it."},
    {"error_log", M, XR_T_CUSTOM, MO(error_log), "stderr", 0, 0, SHAPE("stderr|path"),
     xr_set_error_log, 0, "Where the error log goes: stderr or a file path."},
    {"log_level", M, XR_T_ENUM, MO(log_level), "info", 0, 0, xr_log_level_names, NULL, 0,
     "Least severe level written to the error log."},
    {"drain_timeout", M, XR_T_DURATION, MO(drain_timeout), "1m", 0, 86400000, NULL, NULL, 0,
     "How long retiring workers may keep relaying after reload or quit."},
    {"state_dir", M, XR_T_PATH, MO(state_dir), "/run/xrayd", 0, 0, NULL, NULL, 0,
     "Where each worker keeps the snapshot of its connections with continuity (tmpfs is best)."},
    {"admin_socket", M, XR_T_PATH, MO(admin_socket), NULL, 0, 0, NULL, NULL, 0,
     "UNIX socket (mode 0600) the master answers `xray status` on: proxies, live "
     "connections, resumptions."},

    {"name", B, XR_T_STRING, RO(name), NULL, 0, 0, NULL, NULL, 0,
     "Name of the block in logs and statistics (default: first listen address)."},
    {"listen", B, XR_T_ADDR_LIST, RO(listen), NULL, 0, 0, NULL, NULL, XR_DIR_REQUIRED,
     "Addresses to accept connections on: host:port, [v6]:port or *:port."},
    {"backlog", B, XR_T_INT, RO(backlog), "511", 1, 65535, NULL, NULL, 0, "Listen queue length."},
    {"filters", B, XR_T_CUSTOM, 0, NULL, 0, 0, SHAPE("filter entries"), xr_set_filters, 0,
     "The filter chain: module names, or NAME: {options}, in order."},
    {"buffer_size", M | B, XR_T_SIZE, RO(buffer_size), "64k", 1024, 16 << 20, NULL, NULL, 0,
     "Bytes buffered per direction of a relay while the far side is slow."},
    {"connect_timeout", M | B, XR_T_DURATION, RO(connect_timeout), "5s", 1, 3600000, NULL, NULL, 0,
     "Time allowed to connect to an upstream server."},
    {"idle_timeout", M | B, XR_T_DURATION, RO(idle_timeout), "10m", 1, 604800000, NULL, NULL, 0,
     "A relay with no bytes in either direction for this long is closed."},
    {"max_connections", M | B, XR_T_INT, RO(max_connections), "10000", 1, 1000000, NULL, NULL, 0,
     "Concurrent connections per relay block, across workers; more wait in the backlog."},
    {"tcp_nodelay", M | B, XR_T_FLAG, RO(tcp_nodelay), "on", 0, 0, NULL, NULL, 0,
     "Disable Nagle's algorithm on both ends."},
    XR_DIRECTIVES_END};

#undef M
#undef B
#undef SHAPE

/* ---- the tables front doors add -------------------------------------------- */

static size_t xr_table_len(const xr_directive_t *t)
{
    size_t n = 0;
    while (t && t[n].name)
        n++;
    return n;
}

/* a, then b, in one table (static: tables are built once and live as
 * long as the process). */
static const xr_directive_t *xr_table_join(const xr_directive_t *a, const xr_directive_t *b)
{
    size_t na = xr_table_len(a), nb = xr_table_len(b);
    xr_directive_t *t = xr_calloc(na + nb + 1, sizeof(*t));
    if (na)
        memcpy(t, a, na * sizeof(*t));
    if (nb)
        memcpy(t + na, b, nb * sizeof(*t));
    return t;
}

/* The top level: the core's rows first (their indices are those of
 * xr_core_directives, which inheritance relies on), then each front
 * door's. */
static const xr_directive_t *xr_main_table(void)
{
    static xr_directive_t *t;
    const xr_frontdoor_t *fd;
    if (t != NULL)
        return t;
    size_t n = xr_table_len(xr_core_directives);
    xr_frontdoor_each(fd, i) n += xr_table_len(fd->directives);
    t = xr_calloc(n + 1, sizeof(*t)); /* lives as long as the process */
    n = xr_table_len(xr_core_directives);
    memcpy(t, xr_core_directives, n * sizeof(*t));
    xr_frontdoor_each(fd, i)
    {
        size_t k = xr_table_len(fd->directives);
        if (k)
            memcpy(t + n, fd->directives, k * sizeof(*t));
        n += k;
    }
    return t;
}

/* A block of front door fd: the core's rows, then fd's own. */
static const xr_directive_t *xr_block_table(const xr_frontdoor_t *fd)
{
    static const xr_directive_t *t[XR_MAX_FRONTDOORS];
    const xr_frontdoor_t *f;
    xr_frontdoor_each(f, i) if (f == fd)
    {
        if (t[i] == NULL)
            t[i] = xr_table_join(xr_core_directives, fd->block_directives);
        return t[i];
    }
    return xr_core_directives;
}

/* Every table, for "not allowed here (it belongs in ...)" hints. */
static const xr_directive_t *const *xr_hint_tables(void)
{
    static const xr_directive_t *t[64];
    const xr_frontdoor_t *fd;
    if (t[0] != NULL)
        return t;
    size_t n = 0;
    t[n++] = xr_core_directives;
    xr_frontdoor_each(fd, i)
    {
        if (fd->directives && n < XR_ARRAY_SIZE(t) - 1)
            t[n++] = fd->directives;
        if (fd->block_directives && n < XR_ARRAY_SIZE(t) - 1)
            t[n++] = fd->block_directives;
        for (const xr_frontdoor_table_t *ft = fd->tables; ft && ft->table; ft++)
            if (n < XR_ARRAY_SIZE(t) - 1)
                t[n++] = ft->table;
    }
    return t;
}

const xr_frontdoor_t *xr_frontdoor_find(const char *name)
{
    const xr_frontdoor_t *fd;
    xr_frontdoor_each(fd, i) if (strcmp(fd->name, name) == 0) return fd;
    return NULL;
}

const xr_frontdoor_t *xr_frontdoor_of(const xr_relay_conf_t *rc)
{
    return rc->frontdoor;
}

void **xr_gen_fdconf(xr_gen_t *g, const xr_frontdoor_t *fd)
{
    const xr_frontdoor_t *f;
    xr_frontdoor_each(f, i) if (f == fd) return &g->fdconf[i];
    abort(); /* a front door missing from the table is a build error */
}

void *xr_gen_fdconf_get(const xr_gen_t *g, const xr_frontdoor_t *fd)
{
    return *xr_gen_fdconf((xr_gen_t *) g, fd);
}

/* Where the directives of ctx belong, as a phrase, for the parser's
 * "not allowed here (it belongs in ...)". */
static const char *xr_gen_ctx_name(unsigned ctx, char *buf)
{
    const xr_frontdoor_t *fd;
    if (ctx & XR_CTX_TLS_SERVER)
        return "a tls block";
    if (ctx & XR_CTX_TLS_CLIENT)
        return "an upstream_tls block";
    xr_frontdoor_each(fd, i)
    {
        const char *an = strchr("aeiou", fd->name[0]) ? "an" : "a";
        for (const xr_frontdoor_table_t *t = fd->tables; t && t->table; t++) {
            if (!(t->ctx & ctx))
                continue;
            if (strcmp(t->label, fd->name) == 0)
                snprintf(buf, 96, "%s %s block", an, fd->name);
            else
                snprintf(buf, 96, "%s %s's %s block", an, fd->name, t->label);
            return buf;
        }
    }
    xr_frontdoor_each(fd, i) if (fd->block_ctx & ctx)
    {
        snprintf(buf, 96, "%s %s block", strchr("aeiou", fd->name[0]) ? "an" : "a", fd->name);
        return buf;
    }
    if (ctx & XR_CTX_MAIN)
        return "the top level";
    return "a filter's options";
}

static void *xr_gen_target(xr_conf_t *cf, const xr_directive_t *d, void *block)
{
    xr_gen_t *g = cf->user;
    if (cf->ctx == XR_CTX_MAIN)
        return (d->contexts & XR_CTX_BLOCKS) ? (void *) &g->defaults : (void *) &g->main;
    return block;
}

static void *xr_block_target(xr_conf_t *cf, const xr_directive_t *d, void *block)
{
    xr_relay_conf_t *rc = block;
    return (d->flags & XR_DIR_EXT) ? rc->ext : rc;
}

/* ---- setters ------------------------------------------------------------- */

static int xr_set_workers(xr_conf_t *cf, const xr_node_t *n, void *conf, const xr_directive_t *d)
{
    int64_t *slot = (int64_t *) ((char *) conf + d->offset);
    if (n->type == XR_NODE_SCALAR && strcmp(n->str, "auto") == 0) {
        *slot = 0;
        return XR_OK;
    }
    xr_directive_t num = *d;
    num.type = XR_T_INT;
    num.min = 1;
    num.max = 512;
    if (n->type == XR_NODE_SCALAR) {
        char *e;
        errno = 0;
        long long v = strtoll(n->str, &e, 10);
        if (e == n->str || *e != '\0' || errno)
            return xr_conf_error(cf, n, "expected auto or a number of workers, got \"%s\"", n->str);
        (void) v;
    }
    return xr_conf_set(cf, &num, n, conf);
}

static int xr_set_error_log(xr_conf_t *cf, const xr_node_t *n, void *conf, const xr_directive_t *d)
{
    if (n->type == XR_NODE_SCALAR && strcmp(n->str, "stderr") == 0) {
        *(char **) ((char *) conf + d->offset) = n->str;
        return XR_OK;
    }
    xr_directive_t path = *d;
    path.type = XR_T_PATH;
    return xr_conf_set(cf, &path, n, conf);
}

static int xr_set_load_module(xr_conf_t *cf, const xr_node_t *n, void *conf,
                              const xr_directive_t *d)
{
    xr_gen_t *g = cf->user;
    size_t cnt = n->type == XR_NODE_SEQ ? n->n : 1;
    if (n->type == XR_NODE_MAP)
        return xr_conf_error(cf, n, "expected a path or a sequence of paths");
    for (size_t i = 0; i < cnt; i++) {
        const xr_node_t *it = n->type == XR_NODE_SEQ ? n->items[i] : n;
        if (it->type != XR_NODE_SCALAR || it->slen == 0)
            return xr_conf_error(cf, it, "expected a path to a module .so");
        char *path = xr_conf_path(cf, it, it->str);
        xr_dynmod_t *m;
        if (xr_module_load(cf, it, path, &m) != XR_OK)
            return XR_ERROR;
        for (xr_dynmod_t *o = g->modules; o; o = o->next)
            if (strcmp(o->module->name, m->module->name) == 0) {
                xr_module_unload(m);
                return xr_conf_error(cf, it, "module \"%s\" is already loaded from %s",
                                     o->module->name, o->path);
            }
        m->next = g->modules;
        g->modules = m;
    }
    return XR_OK;
}

static int xr_set_include(xr_conf_t *cf, const xr_node_t *n, void *conf, const xr_directive_t *d)
{
    /* Includes are expanded before dispatch (xr_gen_expand); reaching
     * here means one was nested where it cannot apply. */
    return xr_conf_error(cf, n, "internal error: include was not expanded");
}

xr_relay_conf_t *xr_gen_add_relay(xr_conf_t *cf, xr_gen_t *g)
{
    if (g->nrelays == g->relays_cap) {
        size_t ncap = g->relays_cap ? g->relays_cap * 2 : 8;
        xr_relay_conf_t **r = xr_conf_alloc(cf, ncap * sizeof(*r));
        if (g->nrelays)
            memcpy(r, g->relays, g->nrelays * sizeof(*r));
        g->relays = r;
        g->relays_cap = ncap;
    }
    xr_relay_conf_t *rc = xr_conf_alloc(cf, sizeof(*rc));
    rc->index = g->nrelays;
    rc->slot = -1;
    g->relays[g->nrelays++] = rc;
    return rc;
}

int xr_gen_blocks(xr_conf_t *cf, const xr_node_t *n, const xr_frontdoor_t *fd, size_t ext_size,
                  int (*check)(xr_conf_t *cf, xr_relay_conf_t *rc))
{
    xr_gen_t *g = cf->user;
    const xr_directive_t *table = xr_block_table(fd);
    if (n->type != XR_NODE_SEQ)
        return xr_conf_error(
            cf, n, "expected a sequence of %s blocks (each item starts with \"- \")", fd->name);
    for (size_t i = 0; i < n->n; i++) {
        const xr_node_t *b = n->items[i];
        if (b->type != XR_NODE_MAP)
            return xr_conf_error(cf, b, "expected a %s block (a mapping with listen)", fd->name);
        xr_relay_conf_t *rc = xr_gen_add_relay(cf, g);
        rc->node = b;
        rc->frontdoor = fd;
        if (ext_size > 0)
            rc->ext = xr_conf_alloc(cf, ext_size);
        if (xr_conf_defaults(cf, table, fd->block_ctx, rc, xr_block_target) != XR_OK ||
            xr_conf_block(cf, b, table, fd->block_ctx, rc, xr_block_target, &rc->set) != XR_OK)
            return XR_ERROR;
        if (rc->name == NULL)
            rc->name = rc->listen.items[0].text;
        if (check != NULL && check(cf, rc) != XR_OK)
            return XR_ERROR;
    }
    return XR_OK;
}

static int xr_set_filters(xr_conf_t *cf, const xr_node_t *n, void *conf, const xr_directive_t *d)
{
    xr_relay_conf_t *rc = conf;
    return xr_gen_filters(cf, n, &rc->filters, &rc->nfilters);
}

int xr_gen_filters(xr_conf_t *cf, const xr_node_t *n, xr_filter_conf_t **filters, size_t *nfilters)
{
    xr_gen_t *g = cf->user;
    if (n->type != XR_NODE_SEQ)
        return xr_conf_error(cf, n,
                             "expected a sequence of filters (each item starts with \"- \")");
    xr_filter_conf_t *fs = xr_conf_alloc(cf, (n->n ? n->n : 1) * sizeof(xr_filter_conf_t));
    *filters = fs;
    *nfilters = 0;
    for (size_t i = 0; i < n->n; i++) {
        const xr_node_t *e = n->items[i], *name, *opts = NULL;
        if (e->type == XR_NODE_SCALAR) {
            name = e;
        } else if (e->type == XR_NODE_MAP && e->n == 1) {
            name = e->items[0];
            opts = e->items[1];
            if (opts->type == XR_NODE_SCALAR &&
                (opts->slen == 0 || strcmp(opts->str, "~") == 0 || strcmp(opts->str, "null") == 0))
                opts = NULL;
        } else {
            return xr_conf_error(cf, e, "a filter is NAME or NAME: {options}");
        }
        const xr_module_t *m = xr_module_find(g->modules, name->str);
        if (m == NULL) {
            char list[256];
            size_t off = 0;
            for (size_t j = 0; xr_builtin_modules[j] && off < sizeof(list); j++)
                off += (size_t) snprintf(list + off, sizeof(list) - off, "%s%s", j ? ", " : "",
                                         xr_builtin_modules[j]->name);
            return xr_conf_error(
                cf, name,
                "unknown filter module \"%s\" (built in: %s; load others with load_module)",
                name->str, list);
        }
        xr_filter_conf_t *f = &fs[(*nfilters)++];
        f->module = m;
        f->node = e;
        f->conf = xr_conf_alloc(cf, m->conf_size ? m->conf_size : 1);
        static const xr_directive_t none[] = {XR_DIRECTIVES_END};
        const xr_directive_t *dirs = m->directives ? m->directives : none;
        if (xr_conf_defaults(cf, dirs, XR_CTX_FILTER, f->conf, NULL) != XR_OK)
            return XR_ERROR;
        if (opts != NULL) {
            if (xr_conf_block(cf, opts, dirs, XR_CTX_FILTER, f->conf, NULL, NULL) != XR_OK)
                return XR_ERROR;
        } else {
            for (const xr_directive_t *md = dirs; md->name; md++)
                if (md->flags & XR_DIR_REQUIRED)
                    return xr_conf_error(cf, name, "filter \"%s\" needs \"%s\"", m->name, md->name);
        }
        if (m->init_conf != NULL && m->init_conf(cf, e, f->conf) != XR_OK) {
            if (!cf->failed)
                xr_conf_error(cf, e, "filter \"%s\" refused its configuration", m->name);
            f->module = NULL; /* free_conf must not run on a half-built conf */
            (*nfilters)--;
            return XR_ERROR;
        }
        f->next_in_gen = g->filters;
        g->filters = f;
    }
    return XR_OK;
}

/* ---- includes ------------------------------------------------------------ */

typedef struct {
    xr_node_t **items; /* key, value pairs */
    size_t n, cap;
} xr_pairs_t;

static void xr_pairs_add(xr_conf_t *cf, xr_pairs_t *p, xr_node_t *k, xr_node_t *v)
{
    if (p->n + 2 > p->cap) {
        size_t ncap = p->cap ? p->cap * 2 : 32;
        xr_node_t **items = xr_conf_alloc(cf, ncap * sizeof(*items));
        if (p->n)
            memcpy(items, p->items, p->n * sizeof(*items));
        p->items = items;
        p->cap = ncap;
    }
    p->items[p->n++] = k;
    p->items[p->n++] = v;
}

static int xr_gen_expand(xr_conf_t *cf, const xr_node_t *map, xr_pairs_t *out, int depth)
{
    if (map->type != XR_NODE_MAP)
        return xr_conf_error(cf, map, "the top level of a configuration file must be a mapping");
    for (size_t i = 0; i < map->n; i++) {
        xr_node_t *k = map->items[2 * i], *v = map->items[2 * i + 1];
        if (strcmp(k->str, "include") != 0) {
            xr_pairs_add(cf, out, k, v);
            continue;
        }
        if (depth >= XR_MAX_INCLUDE_DEPTH)
            return xr_conf_error(cf, k, "includes nested deeper than %d (a loop?)",
                                 XR_MAX_INCLUDE_DEPTH);
        size_t cnt = v->type == XR_NODE_SEQ ? v->n : 1;
        if (v->type == XR_NODE_MAP)
            return xr_conf_error(cf, v, "expected a path or a sequence of paths");
        for (size_t j = 0; j < cnt; j++) {
            const xr_node_t *it = v->type == XR_NODE_SEQ ? v->items[j] : v;
            if (it->type != XR_NODE_SCALAR || it->slen == 0)
                return xr_conf_error(cf, it, "expected a path");
            char *pattern = xr_conf_path(cf, it, it->str);
            glob_t gl;
            int rc = glob(pattern, GLOB_ERR, NULL, &gl);
            if (rc == GLOB_NOMATCH && strpbrk(it->str, "*?[") != NULL)
                continue; /* an empty conf.d/ is fine */
            if (rc == GLOB_NOMATCH) {
                xr_node_t *root = xr_conf_parse_file(cf, pattern, it); /* reports ENOENT */
                (void) root;
                return XR_ERROR;
            }
            if (rc != 0)
                return xr_conf_error(cf, it, "cannot read \"%s\"", pattern);
            for (size_t f = 0; f < gl.gl_pathc; f++) {
                xr_node_t *root = xr_conf_parse_file(cf, gl.gl_pathv[f], it);
                if (root == NULL || xr_gen_expand(cf, root, out, depth + 1) != XR_OK) {
                    globfree(&gl);
                    return XR_ERROR;
                }
            }
            globfree(&gl);
        }
    }
    return XR_OK;
}

/* ---- validation ---------------------------------------------------------- */

static const xr_node_t *xr_listen_node(const xr_relay_conf_t *rc, size_t i)
{
    const xr_node_t *l = xr_node_get(rc->node, "listen");
    if (l == NULL)
        return rc->node;
    return l->type == XR_NODE_SEQ ? l->items[i] : l;
}

static int xr_addr_port(const struct sockaddr_storage *sa)
{
    return sa->ss_family == AF_INET ? ntohs(((const struct sockaddr_in *) sa)->sin_port)
                                    : ntohs(((const struct sockaddr_in6 *) sa)->sin6_port);
}

static int xr_addr_wild(const struct sockaddr_storage *sa)
{
    if (sa->ss_family == AF_INET)
        return ((const struct sockaddr_in *) sa)->sin_addr.s_addr == htonl(INADDR_ANY);
    return IN6_IS_ADDR_UNSPECIFIED(&((const struct sockaddr_in6 *) sa)->sin6_addr);
}

static int xr_listen_conflict(const xr_addr_t *a, const xr_addr_t *b)
{
    if (a->sa.ss_family != b->sa.ss_family || xr_addr_port(&a->sa) != xr_addr_port(&b->sa))
        return 0;
    return a->len == b->len &&
           (memcmp(&a->sa, &b->sa, a->len) == 0 || xr_addr_wild(&a->sa) || xr_addr_wild(&b->sa));
}

static int xr_gen_validate(xr_conf_t *cf, xr_gen_t *g)
{
    for (size_t r = 0; r < g->nrelays; r++) {
        xr_relay_conf_t *rc = g->relays[r];
        /* Inherit the top-level values this block did not set. */
        size_t i = 0;
        for (const xr_directive_t *d = xr_core_directives; d->name; d++, i++) {
            if (!(d->contexts & XR_CTX_MAIN) || !(d->contexts & XR_CTX_BLOCKS))
                continue;
            if (!((rc->set >> i) & 1) && ((g->defaults.set >> i) & 1))
                memcpy((char *) rc + d->offset, (char *) &g->defaults + d->offset,
                       xr_directive_slot_size(d));
        }
        if ((rc->tls != NULL || rc->upstream_tls != NULL) && rc->buffer_size < 32768) {
            /* A whole TLS record (16 KiB + overhead) must fit a buffer. */
            const xr_node_t *bs = xr_node_get(rc->node, "buffer_size");
            return xr_conf_error(cf, bs ? bs : rc->node,
                                 "a relay with TLS needs buffer_size of at least 32k");
        }
        for (size_t a = 0; a < rc->listen.n; a++) {
            for (size_t r2 = 0; r2 <= r; r2++) {
                xr_relay_conf_t *o = g->relays[r2];
                size_t lim = r2 == r ? a : o->listen.n;
                for (size_t b = 0; b < lim; b++)
                    if (xr_listen_conflict(&rc->listen.items[a], &o->listen.items[b])) {
                        const xr_node_t *first = xr_listen_node(o, b);
                        return xr_conf_error(cf, xr_listen_node(rc, a),
                                             "duplicate listen address %s (already at %s:%d:%d)",
                                             rc->listen.items[a].text, first->file, first->line,
                                             first->col);
                    }
            }
        }
        for (size_t r2 = 0; r2 < r; r2++)
            if (strcmp(g->relays[r2]->name, rc->name) == 0) {
                const xr_node_t *nn = xr_node_get(rc->node, "name");
                return xr_conf_error(cf, nn ? nn : rc->node, "duplicate %s name \"%s\"",
                                     rc->frontdoor ? rc->frontdoor->name : "block", rc->name);
            }
    }
    return XR_OK;
}

/* A block with continuity (a proxy's) keeps its connections' snapshots in
 * state_dir: every worker creates its store file there at start, and one
 * that cannot exits at once (over and over, on every respawn).  So the
 * directory must exist, be one and be writable (and searchable) by the
 * workers, who run as this process does; -t, start-up and a reload all
 * refuse a configuration that would make every worker die.  merged is
 * the top level, includes expanded. */
static int xr_gen_check_state_dir(xr_conf_t *cf, xr_gen_t *g, const xr_node_t *merged)
{
    if (cf->dry_run)
        return XR_OK; /* parse only: nothing on disk is looked at */
    const xr_relay_conf_t *need = NULL;
    for (size_t r = 0; r < g->nrelays && need == NULL; r++)
        if (g->relays[r]->continuity)
            need = g->relays[r];
    if (need == NULL)
        return XR_OK;
    const char *dir = g->main.state_dir;
    char why[160];
    struct stat st;
    if (stat(dir, &st) != 0)
        snprintf(why, sizeof(why), "%s", errno == ENOENT ? "does not exist" : strerror(errno));
    else if (!S_ISDIR(st.st_mode))
        snprintf(why, sizeof(why), "is not a directory");
    else if (faccessat(AT_FDCWD, dir, W_OK | X_OK, AT_EACCESS) != 0)
        snprintf(why, sizeof(why), "is not writable by the workers (uid %ld): %s", (long) geteuid(),
                 strerror(errno));
    else
        return XR_OK;
    const xr_node_t *at = xr_node_get(merged, "state_dir");
    if (at != NULL)
        return xr_conf_error(cf, at,
                             "\"%s\" %s; the workers keep the snapshots of %s \"%s\" "
                             "(continuity: on) there",
                             dir, why, need->frontdoor->name, need->name);
    return xr_conf_error(cf, need->node,
                         "state_dir \"%s\" (the default) %s, and this %s block keeps its "
                         "connections' snapshots there (continuity: on): create it, set "
                         "state_dir, or set continuity: off",
                         dir, why, need->frontdoor->name);
}

/* ---- generations --------------------------------------------------------- */

static xr_gen_t *xr_gen_build(xr_conf_t *cf, xr_gen_t *g, xr_node_t *root)
{
    xr_pairs_t pairs = {0};
    if (root == NULL || xr_gen_expand(cf, root, &pairs, 0) != XR_OK)
        return NULL;
    xr_node_t merged = *root;
    merged.type = XR_NODE_MAP;
    merged.items = pairs.items;
    merged.n = pairs.n / 2;
    const xr_directive_t *table = xr_main_table();
    if (xr_conf_defaults(cf, table, XR_CTX_MAIN, g, xr_gen_target) != XR_OK)
        return NULL;
    g->defaults.set = 0; /* defaults are not "set by the user" */
    uint64_t seen = 0;
    cf->ctx = XR_CTX_MAIN;
    if (xr_conf_block(cf, &merged, table, XR_CTX_MAIN, g, xr_gen_target, &seen) != XR_OK)
        return NULL;
    g->defaults.set = seen;
    /* Front doors may add blocks of their own first (the agent, one per
     * application): the checks and inheritance of blocks then apply to
     * them too. */
    const xr_frontdoor_t *fd;
    int active = g->nrelays > 0;
    xr_frontdoor_each(fd, i)
    {
        if (fd->validate != NULL && fd->validate(cf, g) != XR_OK)
            return NULL;
        if (fd->active != NULL && fd->active(g))
            active = 1;
    }
    if (xr_gen_validate(cf, g) != XR_OK || xr_gen_check_state_dir(cf, g, &merged) != XR_OK)
        return NULL;
    if (!active) {
        xr_conf_error(cf, root,
                      "no relay or proxy blocks and no agent: nothing to do (add a \"relay:\" "
                      "list)");
        return NULL;
    }
    return g;
}

static xr_gen_t *xr_gen_new(xr_conf_t *cf)
{
    xr_pool_t *pool = xr_pool_create();
    xr_gen_t *g = xr_pool_alloc(pool, sizeof(*g));
    g->pool = pool;
    xr_conf_init(cf, pool);
    cf->user = g;
    cf->hint_tables = xr_hint_tables();
    cf->ctx_name = xr_gen_ctx_name;
    return g;
}

static xr_gen_t *xr_gen_finish(xr_conf_t *cf, xr_gen_t *g, xr_gen_t *ok, char *err, size_t errsize)
{
    if (ok != NULL)
        return g;
    snprintf(err, errsize, "%s", cf->err[0] ? cf->err : "configuration error");
    xr_gen_free(g);
    return NULL;
}

xr_gen_t *xr_gen_load(const char *path, char *err, size_t errsize)
{
    xr_conf_t cf;
    xr_gen_t *g = xr_gen_new(&cf);
    char abs[4096];
    if (path[0] != '/' && getcwd(abs, sizeof(abs) - strlen(path) - 2) != NULL) {
        strcat(abs, "/");
        strcat(abs, path);
        path = abs;
    }
    g->file = xr_conf_strdup(&cf, path, strlen(path));
    xr_node_t *root = xr_conf_parse_file(&cf, g->file, NULL);
    return xr_gen_finish(&cf, g, xr_gen_build(&cf, g, root), err, errsize);
}

xr_gen_t *xr_gen_load_buffer(const unsigned char *buf, size_t len, char *err, size_t errsize)
{
    xr_conf_t cf;
    xr_gen_t *g = xr_gen_new(&cf);
    cf.dry_run = 1;
    g->file = "<buffer>";
    xr_node_t *root = xr_conf_parse_buffer(&cf, "<buffer>", buf, len);
    return xr_gen_finish(&cf, g, xr_gen_build(&cf, g, root), err, errsize);
}

void xr_gen_add_cleanup(xr_gen_t *g, void (*fn)(void *), void *arg)
{
    xr_cleanup_t *c = xr_pool_alloc(g->pool, sizeof(*c));
    c->fn = fn;
    c->arg = arg;
    c->next = g->cleanups;
    g->cleanups = c;
}

void xr_gen_free(xr_gen_t *g)
{
    if (g == NULL)
        return;
    for (xr_cleanup_t *c = g->cleanups; c; c = c->next)
        c->fn(c->arg);
    for (xr_filter_conf_t *f = g->filters; f; f = f->next_in_gen)
        if (f->module && f->module->free_conf)
            f->module->free_conf(f->conf);
    for (xr_dynmod_t *m = g->modules; m; m = m->next)
        xr_module_unload(m);
    xr_pool_destroy(g->pool);
}

int xr_gen_workers(const xr_gen_t *g)
{
    if (g->main.workers > 0)
        return (int) g->main.workers;
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int) XR_MIN(n, 64) : 1;
}

/* label names the block (filter:NAME, tls, upstream_tls); NULL: from
 * the directive's contexts. */
static void xr_list_table(FILE *out, const xr_directive_t *t, const char *label)
{
    for (const xr_directive_t *d = t; d && d->name; d++) {
        char ctx[128] = "";
        if (label != NULL) {
            snprintf(ctx, sizeof(ctx), "%s", label);
        } else {
            const xr_frontdoor_t *fd;
            if (d->contexts & XR_CTX_MAIN)
                strcat(ctx, "main");
            xr_frontdoor_each(fd, i) if (fd->block_ctx & d->contexts &&
                                         strlen(ctx) + strlen(fd->name) + 2 < sizeof(ctx))
            {
                strcat(ctx, ctx[0] ? "," : "");
                strcat(ctx, fd->name);
            }
        }
        const char *type = xr_dir_type_name(d->type);
        /* Custom setters take shapes the generic names do not cover: the
         * row names its own (enums[0]). */
        if (d->type == XR_T_CUSTOM && d->enums != NULL && d->enums[0] != NULL)
            type = d->enums[0];
        if (d->type == XR_T_ENUM) {
            static char buf[256];
            size_t off = 0;
            for (int i = 0; d->enums[i] && off < sizeof(buf); i++)
                off += (size_t) snprintf(buf + off, sizeof(buf) - off, "%s%s", i ? "|" : "",
                                         d->enums[i]);
            type = buf;
        }
        fprintf(out, "%s\t%s\t%s\t%s\t%s\n", d->name, ctx, type, d->def ? d->def : "-",
                d->doc ? d->doc : "");
    }
}

void xr_gen_list_directives(FILE *out)
{
    const xr_frontdoor_t *fd;
    xr_list_table(out, xr_core_directives, NULL);
    xr_frontdoor_each(fd, i)
    {
        xr_list_table(out, fd->directives, NULL);
        xr_list_table(out, fd->block_directives, fd->name);
        for (const xr_frontdoor_table_t *t = fd->tables; t && t->table; t++)
            xr_list_table(out, t->table, t->label);
    }
    for (size_t i = 0; xr_builtin_modules[i]; i++) {
        char label[80];
        snprintf(label, sizeof(label), "filter:%s", xr_builtin_modules[i]->name);
        xr_list_table(out, xr_builtin_modules[i]->directives, label);
    }
}
