/*
 * gen.c: the core directive table and the building of a generation.
 */
#include "core/xrayd.h"
#include "core/gen.h"
#include "agent/agent.h"
#include "core/log.h"
#include "proxy/proxy_conf.h"
#include "tls/tls.h"

#include <glob.h>
#include <netinet/in.h>
#include <stdio.h>
#include <unistd.h>

#define XR_MAX_INCLUDE_DEPTH 8

static int xr_set_workers(xr_conf_t *cf, const xr_node_t *n, void *conf, const xr_directive_t *d);
static int xr_set_load_module(xr_conf_t *cf, const xr_node_t *n, void *conf,
                              const xr_directive_t *d);
static int xr_set_include(xr_conf_t *cf, const xr_node_t *n, void *conf, const xr_directive_t *d);
static int xr_set_relay(xr_conf_t *cf, const xr_node_t *n, void *conf, const xr_directive_t *d);
static int xr_set_proxy(xr_conf_t *cf, const xr_node_t *n, void *conf, const xr_directive_t *d);
static int xr_set_filters(xr_conf_t *cf, const xr_node_t *n, void *conf, const xr_directive_t *d);
static int xr_set_error_log(xr_conf_t *cf, const xr_node_t *n, void *conf, const xr_directive_t *d);

static const char *const xr_balance_names[] = {"round_robin", "least_conn", "random", "source_hash",
                                               NULL};

#define M     XR_CTX_MAIN
#define R     XR_CTX_RELAY
#define P     XR_CTX_PROXY
#define MO(f) offsetof(xr_main_conf_t, f)
#define RO(f) offsetof(xr_relay_conf_t, f)

/* The core's directives, declared once: the parser, -t, --list-directives
 * and html-docs/directives.html all read this table. */
const xr_directive_t xr_core_directives[] = {
    {"include", M, XR_T_CUSTOM, 0, NULL, 0, 0, NULL, xr_set_include, XR_DIR_MULTI,
     "Merge other YAML files (paths or globs) into the top level."},
    {"load_module", M, XR_T_CUSTOM, 0, NULL, 0, 0, NULL, xr_set_load_module,
     XR_DIR_EARLY | XR_DIR_MULTI, "Load filter modules from .so files."},
    {"daemon", M, XR_T_FLAG, MO(daemon), "off", 0, 0, NULL, NULL, 0,
     "Detach from the terminal and run in the background."},
    {"workers", M, XR_T_CUSTOM, MO(workers), "auto", 0, 0, NULL, xr_set_workers, 0,
     "Number of worker processes, or auto for one per CPU."},
    {"pid", M, XR_T_PATH, MO(pid), "/run/xrayd.pid", 0, 0, NULL, NULL, 0,
     "File the master writes its process id to; -s reads it."},
    {"error_log", M, XR_T_CUSTOM, MO(error_log), "stderr", 0, 0, NULL, xr_set_error_log, 0,
     "Where the error log goes: stderr or a file path."},
    {"log_level", M, XR_T_ENUM, MO(log_level), "info", 0, 0, xr_log_level_names, NULL, 0,
     "Least severe level written to the error log."},
    {"drain_timeout", M, XR_T_DURATION, MO(drain_timeout), "1m", 0, 86400000, NULL, NULL, 0,
     "How long retiring workers may keep relaying after reload or quit."},
    {"relay", M, XR_T_CUSTOM, 0, NULL, 0, 0, NULL, xr_set_relay, XR_DIR_MULTI,
     "Relay blocks: listeners and the upstreams they relay to."},
    {"proxy", M, XR_T_CUSTOM, 0, NULL, 0, 0, NULL, xr_set_proxy, XR_DIR_MULTI,
     "Transparent proxy blocks: REDIRECT or TPROXY targets that relay to each connection's "
     "original destination."},
    {"state_dir", M, XR_T_PATH, MO(state_dir), "/run/xrayd", 0, 0, NULL, NULL, 0,
     "Where each worker keeps the snapshot of its proxied connections (tmpfs is best)."},
    {"admin_socket", M, XR_T_PATH, MO(admin_socket), NULL, 0, 0, NULL, NULL, 0,
     "UNIX socket (mode 0600) the master answers `xray status` on: proxies, live "
     "connections, resumptions."},
    {"agent", M, XR_T_CUSTOM, 0, NULL, 0, 0, NULL, xr_agent_set, 0,
     "Run the XRAY agent: its control address, TLS, networks and official pool."},
    {"applications", M, XR_T_CUSTOM, 0, NULL, 0, 0, NULL, xr_agent_set_applications, 0,
     "The agent's policy: applications by certificate, what each may do."},

    {"name", R | P, XR_T_STRING, RO(name), NULL, 0, 0, NULL, NULL, 0,
     "Name of the block in logs and statistics (default: first listen address)."},
    {"listen", R | P, XR_T_ADDR_LIST, RO(listen), NULL, 0, 0, NULL, NULL, XR_DIR_REQUIRED,
     "Addresses to accept connections on: host:port, [v6]:port or *:port."},
    {"upstream", R, XR_T_ADDR_LIST, RO(upstream), NULL, 0, 0, NULL, NULL, XR_DIR_REQUIRED,
     "Servers to relay to, one address or a list."},
    {"balance", R, XR_T_ENUM, RO(balance), "round_robin", 0, 0, xr_balance_names, NULL, 0,
     "How a connection picks its upstream server."},
    {"upstream_tries", R, XR_T_INT, RO(upstream_tries), "0", 0, 100, NULL, NULL, 0,
     "Connect attempts per connection across servers (0: each server once)."},
    {"upstream_max_fails", R, XR_T_INT, RO(upstream_max_fails), "1", 1, 1000, NULL, NULL, 0,
     "Failed connects that mark a server down for upstream_fail_timeout."},
    {"upstream_fail_timeout", R, XR_T_DURATION, RO(upstream_fail_timeout), "10s", 0, 86400000, NULL,
     NULL, 0, "How long a failed server is skipped."},
    {"backlog", R | P, XR_T_INT, RO(backlog), "511", 1, 65535, NULL, NULL, 0,
     "Listen queue length."},
    {"filters", R | P, XR_T_CUSTOM, 0, NULL, 0, 0, NULL, xr_set_filters, 0,
     "The filter chain: module names, or NAME: {options}, in order."},
    {"tls", R, XR_T_CUSTOM, RO(tls), NULL, 0, 0, NULL, xr_tls_set_server, 0,
     "Accept TLS on the listen addresses: certificate, key, client_ca, allow ..."},
    {"upstream_tls", R, XR_T_CUSTOM, RO(upstream_tls), NULL, 0, 0, NULL, xr_tls_set_client, 0,
     "Speak TLS to the upstream servers: ca, verify, certificate, key, server_name ..."},
    {"buffer_size", M | R | P, XR_T_SIZE, RO(buffer_size), "64k", 1024, 16 << 20, NULL, NULL, 0,
     "Bytes buffered per direction of a relay while the far side is slow."},
    {"connect_timeout", M | R | P, XR_T_DURATION, RO(connect_timeout), "5s", 1, 3600000, NULL, NULL,
     0, "Time allowed to connect to an upstream server."},
    {"idle_timeout", M | R | P, XR_T_DURATION, RO(idle_timeout), "10m", 1, 604800000, NULL, NULL, 0,
     "A relay with no bytes in either direction for this long is closed."},
    {"max_connections", M | R | P, XR_T_INT, RO(max_connections), "10000", 1, 1000000, NULL, NULL,
     0, "Concurrent connections per relay block, across workers; more wait in the backlog."},
    {"tcp_nodelay", M | R | P, XR_T_FLAG, RO(tcp_nodelay), "on", 0, 0, NULL, NULL, 0,
     "Disable Nagle's algorithm on both ends."},
    {"mode", P, XR_T_ENUM, RO(proxy_mode), "circuit", 0, 0, xr_proxy_mode_names, NULL, 0,
     "circuit relays bytes as they are; http parses and checks every request."},
    {"intercept", P, XR_T_ENUM, RO(intercept), "redirect", 0, 0, xr_intercept_names, NULL, 0,
     "How connections arrive: redirect (iptables/nftables REDIRECT) or tproxy (TPROXY)."},
    {"upstream", P, XR_T_ADDR_LIST, RO(upstream), NULL, 0, 0, NULL, NULL, 0,
     "Parent proxies to try first; the original destination when none answers."},
    {"continuity", P, XR_T_FLAG, RO(continuity), "on", 0, 0, NULL, NULL, 0,
     "Keep live connections across worker crashes and binary upgrades (snapshots)."},
    {"http", P, XR_T_CUSTOM, RO(http), NULL, 0, 0, NULL, xr_proxy_set_http, 0,
     "HTTP rules of a mode: http proxy: methods, hosts, headers, limits."},
    XR_DIRECTIVES_END};

#undef M
#undef R
#undef P

static const xr_directive_t *const xr_hint_tables[] = {xr_core_directives,
                                                       xr_tls_server_directives,
                                                       xr_tls_client_directives,
                                                       xr_agent_directives,
                                                       xr_app_directives,
                                                       xr_http_directives,
                                                       NULL};

static void *xr_gen_target(xr_conf_t *cf, const xr_directive_t *d, void *block)
{
    xr_gen_t *g = cf->user;
    if (cf->ctx == XR_CTX_MAIN)
        return (d->contexts & XR_CTX_RELAY) ? (void *) &g->defaults : (void *) &g->main;
    return block;
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

static int xr_set_relay(xr_conf_t *cf, const xr_node_t *n, void *conf, const xr_directive_t *d)
{
    xr_gen_t *g = cf->user;
    if (n->type != XR_NODE_SEQ)
        return xr_conf_error(cf, n,
                             "expected a sequence of relay blocks (each item starts with \"- \")");
    for (size_t i = 0; i < n->n; i++) {
        const xr_node_t *b = n->items[i];
        if (b->type != XR_NODE_MAP)
            return xr_conf_error(cf, b,
                                 "expected a relay block (a mapping with listen and upstream)");
        xr_relay_conf_t *rc = xr_gen_add_relay(cf, g);
        rc->node = b;
        if (xr_conf_defaults(cf, xr_core_directives, XR_CTX_RELAY, rc, NULL) != XR_OK ||
            xr_conf_block(cf, b, xr_core_directives, XR_CTX_RELAY, rc, NULL, &rc->set) != XR_OK)
            return XR_ERROR;
        if (rc->name == NULL)
            rc->name = rc->listen.items[0].text;
    }
    return XR_OK;
}

static int xr_set_proxy(xr_conf_t *cf, const xr_node_t *n, void *conf, const xr_directive_t *d)
{
    xr_gen_t *g = cf->user;
    if (n->type != XR_NODE_SEQ)
        return xr_conf_error(cf, n,
                             "expected a sequence of proxy blocks (each item starts with \"- \")");
    for (size_t i = 0; i < n->n; i++) {
        const xr_node_t *b = n->items[i];
        if (b->type != XR_NODE_MAP)
            return xr_conf_error(cf, b, "expected a proxy block (a mapping with listen)");
        xr_relay_conf_t *rc = xr_gen_add_relay(cf, g);
        rc->node = b;
        rc->kind = XR_BLOCK_PROXY;
        if (xr_conf_defaults(cf, xr_core_directives, XR_CTX_PROXY, rc, NULL) != XR_OK ||
            xr_conf_block(cf, b, xr_core_directives, XR_CTX_PROXY, rc, NULL, &rc->set) != XR_OK)
            return XR_ERROR;
        if (rc->name == NULL)
            rc->name = rc->listen.items[0].text;
        if (xr_proxy_check(cf, rc) != XR_OK)
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
            if ((d->contexts & (XR_CTX_MAIN | XR_CTX_RELAY)) != (XR_CTX_MAIN | XR_CTX_RELAY))
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
                                     rc->kind == XR_BLOCK_PROXY ? "proxy" : "relay", rc->name);
            }
    }
    return XR_OK;
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
    if (xr_conf_defaults(cf, xr_core_directives, XR_CTX_MAIN, g, xr_gen_target) != XR_OK)
        return NULL;
    g->defaults.set = 0; /* defaults are not "set by the user" */
    uint64_t seen = 0;
    cf->ctx = XR_CTX_MAIN;
    if (xr_conf_block(cf, &merged, xr_core_directives, XR_CTX_MAIN, g, xr_gen_target, &seen) !=
        XR_OK)
        return NULL;
    g->defaults.set = seen;
    /* The agent adds a relay block per application first: the checks
     * and inheritance of relay blocks then apply to them too. */
    if (xr_agent_validate(cf, g) != XR_OK || xr_gen_validate(cf, g) != XR_OK)
        return NULL;
    if (g->nrelays == 0 && g->agent == NULL) {
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
    cf->hint_tables = xr_hint_tables;
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
        char ctx[64] = "";
        if (label != NULL) {
            snprintf(ctx, sizeof(ctx), "%s", label);
        } else {
            if (d->contexts & XR_CTX_MAIN)
                strcat(ctx, "main");
            if (d->contexts & XR_CTX_RELAY)
                strcat(ctx, ctx[0] ? ",relay" : "relay");
            if (d->contexts & XR_CTX_PROXY)
                strcat(ctx, ctx[0] ? ",proxy" : "proxy");
        }
        const char *type = xr_dir_type_name(d->type);
        /* Custom setters take shapes the generic names do not cover. */
        static const char *const shapes[][2] = {
            {"error_log", "stderr|path"}, {"workers", "auto|number"},
            {"include", "paths"},         {"load_module", "paths"},
            {"relay", "relay blocks"},    {"filters", "filter entries"},
            {"proxy", "proxy blocks"},    {"http", "http block"},
            {"tls", "tls block"},         {"upstream_tls", "tls block"},
            {"agent", "agent block"},     {"applications", "application entries"},
            {"outbound", "rules"},        {"peers", "peer agents"},
            {"patterns", "patterns"}};
        for (size_t k = 0; d->type == XR_T_CUSTOM && k < XR_ARRAY_SIZE(shapes); k++)
            if (strcmp(d->name, shapes[k][0]) == 0)
                type = shapes[k][1];
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
    xr_list_table(out, xr_core_directives, NULL);
    xr_list_table(out, xr_tls_server_directives, "tls");
    xr_list_table(out, xr_tls_client_directives, "upstream_tls");
    xr_list_table(out, xr_agent_directives, "agent");
    xr_list_table(out, xr_app_directives, "application");
    xr_list_table(out, xr_peer_directives, "peer");
    xr_list_table(out, xr_http_directives, "http");
    for (size_t i = 0; xr_builtin_modules[i]; i++) {
        char label[80];
        snprintf(label, sizeof(label), "filter:%s", xr_builtin_modules[i]->name);
        xr_list_table(out, xr_builtin_modules[i]->directives, label);
    }
}
