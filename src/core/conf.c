/*
 * conf.c: the YAML node tree and the directive framework.
 */
#include "core/xrayd.h"
#include "core/conf.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <sys/stat.h>
#include <yaml.h>

#define XR_CONF_MAX_DEPTH 64
#define XR_CONF_MAX_NODES 200000
#define XR_CONF_MAX_FILE  (16u << 20)

void xr_conf_init(xr_conf_t *cf, xr_pool_t *p)
{
    memset(cf, 0, sizeof(*cf));
    cf->pool = p;
}

int xr_conf_error(xr_conf_t *cf, const xr_node_t *n, const char *fmt, ...)
{
    if (cf->failed)
        return XR_ERROR; /* keep the first error: later ones are fallout */
    size_t off = 0;
    if (n != NULL) {
        off = (size_t) snprintf(cf->err, sizeof(cf->err), "%s:%d:%d: ", n->file, n->line, n->col);
        if (n->key != NULL && off < sizeof(cf->err))
            off += (size_t) snprintf(cf->err + off, sizeof(cf->err) - off, "\"%s\": ", n->key);
    }
    if (off < sizeof(cf->err)) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(cf->err + off, sizeof(cf->err) - off, fmt, ap);
        va_end(ap);
    }
    cf->failed = 1;
    return XR_ERROR;
}

void *xr_conf_alloc(xr_conf_t *cf, size_t size)
{
    return xr_pool_alloc(cf->pool, size);
}

int xr_conf_dry_run(const xr_conf_t *cf)
{
    return cf->dry_run;
}

char *xr_conf_strdup(xr_conf_t *cf, const char *s, size_t len)
{
    return xr_pool_strndup(cf->pool, s, len);
}

/* ---- node accessors ------------------------------------------------------ */

xr_node_type_t xr_node_type(const xr_node_t *n)
{
    return n->type;
}
const char *xr_node_str(const xr_node_t *n)
{
    return n->type == XR_NODE_SCALAR ? n->str : NULL;
}
size_t xr_node_slen(const xr_node_t *n)
{
    return n->type == XR_NODE_SCALAR ? n->slen : 0;
}
size_t xr_node_len(const xr_node_t *n)
{
    return n->type == XR_NODE_SCALAR ? 0 : n->n;
}

const xr_node_t *xr_node_item(const xr_node_t *n, size_t i)
{
    return n->type == XR_NODE_SEQ && i < n->n ? n->items[i] : NULL;
}

const xr_node_t *xr_node_key(const xr_node_t *n, size_t i)
{
    return n->type == XR_NODE_MAP && i < n->n ? n->items[2 * i] : NULL;
}

const xr_node_t *xr_node_value(const xr_node_t *n, size_t i)
{
    return n->type == XR_NODE_MAP && i < n->n ? n->items[2 * i + 1] : NULL;
}

const xr_node_t *xr_node_get(const xr_node_t *map, const char *key)
{
    if (map->type != XR_NODE_MAP)
        return NULL;
    for (size_t i = 0; i < map->n; i++)
        if (strcmp(map->items[2 * i]->str, key) == 0)
            return map->items[2 * i + 1];
    return NULL;
}

/* ---- YAML parsing -------------------------------------------------------- */

typedef struct {
    xr_node_t *node;
    size_t cap;
    size_t raw; /* items appended; a mapping holds raw / 2 pairs */
} xr_build_frame_t;

static xr_node_t *xr_node_new(xr_conf_t *cf, xr_node_type_t type, const char *file,
                              const yaml_mark_t *m)
{
    xr_node_t *n = xr_pool_alloc(cf->pool, sizeof(*n));
    n->type = type;
    n->file = file;
    n->line = (int) m->line + 1;
    n->col = (int) m->column + 1;
    cf->nodes++;
    return n;
}

static void xr_node_append(xr_conf_t *cf, xr_build_frame_t *f, xr_node_t *child)
{
    xr_node_t *p = f->node;
    if (f->raw + 1 > f->cap) {
        size_t ncap = f->cap ? f->cap * 2 : 8;
        xr_node_t **items = xr_pool_alloc(cf->pool, ncap * sizeof(*items));
        if (f->raw)
            memcpy(items, p->items, f->raw * sizeof(*items));
        p->items = items;
        f->cap = ncap;
    }
    p->items[f->raw++] = child;
    p->n = p->type == XR_NODE_MAP ? f->raw / 2 : f->raw;
}

static xr_node_t *xr_conf_parse_yaml(xr_conf_t *cf, const char *name, const unsigned char *buf,
                                     size_t len)
{
    yaml_parser_t parser;
    yaml_event_t ev;
    xr_build_frame_t stack[XR_CONF_MAX_DEPTH + 1];
    int depth = 0;
    xr_node_t *root = NULL;
    const char *file = xr_pool_strndup(cf->pool, name, strlen(name));
    int done = 0;

    if (!yaml_parser_initialize(&parser)) {
        xr_conf_error(cf, NULL, "%s: cannot initialise the YAML parser", name);
        return NULL;
    }
    yaml_parser_set_input_string(&parser, buf, len);

    while (!done) {
        if (!yaml_parser_parse(&parser, &ev)) {
            xr_node_t at = {.file = file,
                            .line = (int) parser.problem_mark.line + 1,
                            .col = (int) parser.problem_mark.column + 1};
            xr_conf_error(cf, &at, "YAML syntax error: %s%s%s",
                          parser.problem ? parser.problem : "unknown problem",
                          parser.context ? " " : "", parser.context ? parser.context : "");
            goto fail;
        }
        xr_node_t *n = NULL;
        switch (ev.type) {
        case YAML_STREAM_END_EVENT: done = 1; break;
        case YAML_DOCUMENT_START_EVENT:
            if (root != NULL) {
                xr_node_t at = {.file = file,
                                .line = (int) ev.start_mark.line + 1,
                                .col = (int) ev.start_mark.column + 1};
                xr_conf_error(cf, &at, "a configuration file holds one YAML document");
                yaml_event_delete(&ev);
                goto fail;
            }
            break;
        case YAML_ALIAS_EVENT: {
            xr_node_t at = {.file = file,
                            .line = (int) ev.start_mark.line + 1,
                            .col = (int) ev.start_mark.column + 1};
            xr_conf_error(cf, &at, "YAML aliases are not supported");
            yaml_event_delete(&ev);
            goto fail;
        }
        case YAML_SCALAR_EVENT:
            n = xr_node_new(cf, XR_NODE_SCALAR, file, &ev.start_mark);
            n->str = xr_pool_strndup(cf->pool, (const char *) ev.data.scalar.value,
                                     ev.data.scalar.length);
            n->slen = ev.data.scalar.length;
            n->quoted = ev.data.scalar.style != YAML_PLAIN_SCALAR_STYLE;
            break;
        case YAML_SEQUENCE_START_EVENT:
            n = xr_node_new(cf, XR_NODE_SEQ, file, &ev.start_mark);
            break;
        case YAML_MAPPING_START_EVENT:
            n = xr_node_new(cf, XR_NODE_MAP, file, &ev.start_mark);
            break;
        case YAML_SEQUENCE_END_EVENT:
        case YAML_MAPPING_END_EVENT: depth--; break;
        default: break;
        }
        yaml_event_delete(&ev);

        if (cf->nodes > XR_CONF_MAX_NODES) {
            xr_node_t at = {.file = file, .line = 1, .col = 1};
            xr_conf_error(cf, &at, "configuration too large (over %d nodes)", XR_CONF_MAX_NODES);
            goto fail;
        }
        if (n == NULL)
            continue;

        if (depth == 0) {
            root = n;
        } else {
            xr_build_frame_t *f = &stack[depth - 1];
            xr_node_t *p = f->node;
            if (p->type == XR_NODE_MAP) {
                if (f->raw % 2 == 0) {
                    if (n->type != XR_NODE_SCALAR) {
                        xr_conf_error(cf, n, "mapping keys must be plain names");
                        goto fail;
                    }
                    n->key = n->str; /* errors about a key name the key itself */
                } else {
                    n->key = p->items[f->raw - 1]->str;
                }
            } else {
                n->key = p->key;
            }
            xr_node_append(cf, f, n);
        }
        if (n->type != XR_NODE_SCALAR) {
            if (depth >= XR_CONF_MAX_DEPTH) {
                xr_conf_error(cf, n, "nesting deeper than %d levels", XR_CONF_MAX_DEPTH);
                goto fail;
            }
            stack[depth].node = n;
            stack[depth].cap = 0;
            stack[depth].raw = 0;
            depth++;
        }
    }
    yaml_parser_delete(&parser);
    if (root == NULL) {
        /* An empty file is an empty mapping. */
        yaml_mark_t m = {0, 0, 0};
        root = xr_node_new(cf, XR_NODE_MAP, file, &m);
    }
    return root;

fail:
    yaml_parser_delete(&parser);
    return NULL;
}

xr_node_t *xr_conf_parse_buffer(xr_conf_t *cf, const char *name, const unsigned char *buf,
                                size_t len)
{
    return xr_conf_parse_yaml(cf, name, buf, len);
}

xr_node_t *xr_conf_parse_file(xr_conf_t *cf, const char *path, const xr_node_t *at)
{
    FILE *fp = fopen(path, "rb");
    xr_node_t top = {.file = path, .line = 1, .col = 1};
    if (fp == NULL) {
        int err = errno;
        if (at != NULL)
            xr_conf_error(cf, at, "cannot open \"%s\": %s", path, strerror(err));
        else
            xr_conf_error(cf, NULL, "%s: cannot open: %s", path, strerror(err));
        return NULL;
    }
    struct stat st;
    if (fstat(fileno(fp), &st) != 0 || !S_ISREG(st.st_mode) ||
        st.st_size > (off_t) XR_CONF_MAX_FILE) {
        fclose(fp);
        if (at != NULL)
            return xr_conf_error(cf, at, "\"%s\" is not a regular file under 16 MiB", path), NULL;
        xr_conf_error(cf, &top, "not a regular file under 16 MiB");
        return NULL;
    }
    size_t size = (size_t) st.st_size;
    unsigned char *buf = xr_malloc(size + 1);
    size_t got = fread(buf, 1, size, fp);
    fclose(fp);
    if (got != size) {
        free(buf);
        xr_conf_error(cf, &top, "read error");
        return NULL;
    }
    xr_node_t *root = xr_conf_parse_yaml(cf, path, buf, size);
    free(buf);
    return root;
}

/* ---- typed parsers ------------------------------------------------------- */

static int xr_conf_need_scalar(xr_conf_t *cf, const xr_node_t *n, const char *what)
{
    if (n->type != XR_NODE_SCALAR)
        return xr_conf_error(cf, n, "expected %s, got a %s", what,
                             n->type == XR_NODE_SEQ ? "sequence" : "mapping");
    return XR_OK;
}

static int xr_parse_number(const char *s, int64_t *out, const char **end)
{
    errno = 0;
    char *e;
    long long v = strtoll(s, &e, 10);
    if (e == s || errno == ERANGE)
        return XR_ERROR;
    *out = v;
    *end = e;
    return XR_OK;
}

int xr_conf_parse_size(xr_conf_t *cf, const xr_node_t *n, int64_t *out)
{
    if (xr_conf_need_scalar(cf, n, "a size such as 64k") != XR_OK)
        return XR_ERROR;
    const char *e;
    int64_t v;
    if (!isdigit((unsigned char) n->str[0]) || xr_parse_number(n->str, &v, &e) != XR_OK)
        return xr_conf_error(cf, n, "invalid size \"%s\" (use e.g. 4096, 64k, 1m, 1g)", n->str);
    int64_t mul = 1;
    switch (tolower((unsigned char) *e)) {
    case '\0': break;
    case 'k':
        mul = 1024;
        e++;
        break;
    case 'm':
        mul = 1024 * 1024;
        e++;
        break;
    case 'g':
        mul = 1024 * 1024 * 1024;
        e++;
        break;
    default:
        return xr_conf_error(cf, n, "invalid size \"%s\" (use e.g. 4096, 64k, 1m, 1g)", n->str);
    }
    if (mul > 1 && (strcasecmp(e, "ib") == 0 || strcasecmp(e, "b") == 0))
        e += strlen(e);
    if (*e != '\0')
        return xr_conf_error(cf, n, "invalid size \"%s\" (use e.g. 4096, 64k, 1m, 1g)", n->str);
    if (v > INT64_MAX / mul)
        return xr_conf_error(cf, n, "size \"%s\" is too large", n->str);
    *out = v * mul;
    return XR_OK;
}

int xr_conf_parse_duration(xr_conf_t *cf, const xr_node_t *n, int64_t *out)
{
    if (xr_conf_need_scalar(cf, n, "a duration such as 5s") != XR_OK)
        return XR_ERROR;
    const char *e;
    int64_t v;
    if (!isdigit((unsigned char) n->str[0]) || xr_parse_number(n->str, &v, &e) != XR_OK)
        goto bad;
    int64_t mul;
    if (*e == '\0' || strcmp(e, "s") == 0)
        mul = 1000;
    else if (strcmp(e, "ms") == 0)
        mul = 1;
    else if (strcmp(e, "m") == 0)
        mul = 60 * 1000;
    else if (strcmp(e, "h") == 0)
        mul = 3600 * 1000;
    else if (strcmp(e, "d") == 0)
        mul = 86400 * 1000;
    else
        goto bad;
    if (v > INT64_MAX / mul)
        return xr_conf_error(cf, n, "duration \"%s\" is too large", n->str);
    *out = v * mul;
    return XR_OK;
bad:
    return xr_conf_error(cf, n, "invalid duration \"%s\" (use e.g. 500ms, 5s, 2m, 1h, 1d)", n->str);
}

char *xr_conf_path(xr_conf_t *cf, const xr_node_t *n, const char *path)
{
    if (path[0] == '/' || n == NULL || n->file == NULL || n->file[0] == '<')
        return xr_conf_strdup(cf, path, strlen(path));
    const char *slash = strrchr(n->file, '/');
    if (slash == NULL)
        return xr_conf_strdup(cf, path, strlen(path));
    size_t dl = (size_t) (slash - n->file), pl = strlen(path);
    char *r = xr_conf_alloc(cf, dl + 1 + pl + 1);
    memcpy(r, n->file, dl);
    r[dl] = '/';
    memcpy(r + dl + 1, path, pl);
    return r;
}

int xr_conf_parse_addr(xr_conf_t *cf, const xr_node_t *n, xr_addr_t *out)
{
    if (xr_conf_need_scalar(cf, n, "an address such as 127.0.0.1:8080") != XR_OK)
        return XR_ERROR;
    const char *s = n->str;
    char host[256];
    const char *port;
    memset(out, 0, sizeof(*out));
    if (s[0] == '[') {
        const char *rb = strchr(s, ']');
        if (rb == NULL || rb[1] != ':' || (size_t) (rb - s - 1) >= sizeof(host))
            goto bad;
        memcpy(host, s + 1, (size_t) (rb - s - 1));
        host[rb - s - 1] = '\0';
        port = rb + 2;
    } else {
        const char *colon = strrchr(s, ':');
        if (colon == NULL || (size_t) (colon - s) >= sizeof(host) || strchr(s, ':') != colon)
            goto bad;
        memcpy(host, s, (size_t) (colon - s));
        host[colon - s] = '\0';
        port = colon + 1;
    }
    char *pe;
    long p = strtol(port, &pe, 10);
    if (*port == '\0' || *pe != '\0' || p < 1 || p > 65535)
        return xr_conf_error(cf, n, "invalid port in \"%s\" (1-65535)", s);
    if (strcmp(host, "*") == 0 || host[0] == '\0')
        strcpy(host, "0.0.0.0");

    struct sockaddr_in *sin = (struct sockaddr_in *) &out->sa;
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *) &out->sa;
    if (inet_pton(AF_INET, host, &sin->sin_addr) == 1) {
        sin->sin_family = AF_INET;
        sin->sin_port = htons((uint16_t) p);
        out->len = sizeof(*sin);
    } else if (inet_pton(AF_INET6, host, &sin6->sin6_addr) == 1) {
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons((uint16_t) p);
        out->len = sizeof(*sin6);
    } else {
        struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *res = NULL;
        if (cf->dry_run)
            hints.ai_flags = AI_NUMERICHOST; /* the fuzz target must not do DNS */
        int rc = getaddrinfo(host, NULL, &hints, &res);
        if (rc != 0 || res == NULL)
            return xr_conf_error(cf, n, "host \"%s\" not found: %s", host, gai_strerror(rc));
        memcpy(&out->sa, res->ai_addr, res->ai_addrlen);
        out->len = res->ai_addrlen;
        if (res->ai_family == AF_INET)
            sin->sin_port = htons((uint16_t) p);
        else
            sin6->sin6_port = htons((uint16_t) p);
        freeaddrinfo(res);
    }
    xr_addr_format(&out->sa, out->text, sizeof(out->text));
    return XR_OK;
bad:
    return xr_conf_error(cf, n, "invalid address \"%s\" (use host:port, [ipv6]:port or *:port)", s);
}

const char *xr_addr_format(const struct sockaddr_storage *sa, char *buf, size_t size)
{
    char ip[INET6_ADDRSTRLEN];
    if (sa->ss_family == AF_INET) {
        const struct sockaddr_in *s = (const struct sockaddr_in *) sa;
        inet_ntop(AF_INET, &s->sin_addr, ip, sizeof(ip));
        snprintf(buf, size, "%s:%u", ip, ntohs(s->sin_port));
    } else if (sa->ss_family == AF_INET6) {
        const struct sockaddr_in6 *s = (const struct sockaddr_in6 *) sa;
        inet_ntop(AF_INET6, &s->sin6_addr, ip, sizeof(ip));
        snprintf(buf, size, "[%s]:%u", ip, ntohs(s->sin6_port));
    } else if (sa->ss_family == AF_UNIX) {
        snprintf(buf, size, "unix:");
    } else {
        snprintf(buf, size, "-");
    }
    return buf;
}

/* ---- directives ---------------------------------------------------------- */

const char *xr_dir_type_name(xr_dir_type_t t)
{
    switch (t) {
    case XR_T_FLAG: return "flag";
    case XR_T_INT: return "number";
    case XR_T_SIZE: return "size";
    case XR_T_DURATION: return "duration";
    case XR_T_STRING: return "string";
    case XR_T_PATH: return "path";
    case XR_T_ENUM: return "enum";
    case XR_T_ADDR: return "address";
    case XR_T_ADDR_LIST: return "addresses";
    case XR_T_STR_LIST: return "strings";
    case XR_T_CUSTOM: return "block";
    }
    return "?";
}

size_t xr_directive_slot_size(const xr_directive_t *d)
{
    switch (d->type) {
    case XR_T_FLAG:
    case XR_T_ENUM: return sizeof(int);
    case XR_T_INT:
    case XR_T_SIZE:
    case XR_T_DURATION: return sizeof(int64_t);
    case XR_T_STRING:
    case XR_T_PATH: return sizeof(char *);
    case XR_T_ADDR: return sizeof(xr_addr_t);
    case XR_T_ADDR_LIST: return sizeof(xr_addr_list_t);
    case XR_T_STR_LIST: return sizeof(xr_str_list_t);
    case XR_T_CUSTOM: return 0;
    }
    return 0;
}

static int xr_conf_check_range(xr_conf_t *cf, const xr_directive_t *d, const xr_node_t *n,
                               int64_t v)
{
    if (d->min == 0 && d->max == 0)
        return XR_OK;
    if (v < d->min || v > d->max) {
        if (d->type == XR_T_INT)
            return xr_conf_error(cf, n, "%s is out of range (%lld..%lld)", n->str,
                                 (long long) d->min, (long long) d->max);
        if (d->type == XR_T_DURATION)
            return xr_conf_error(cf, n, "%s is out of range (%lldms..%lldms)", n->str,
                                 (long long) d->min, (long long) d->max);
        return xr_conf_error(cf, n, "%s is out of range (%lld..%lld bytes)", n->str,
                             (long long) d->min, (long long) d->max);
    }
    return XR_OK;
}

int xr_conf_set(xr_conf_t *cf, const xr_directive_t *d, const xr_node_t *n, void *base)
{
    void *slot = (char *) base + d->offset;
    int64_t v;

    switch (d->type) {
    case XR_T_FLAG: {
        if (xr_conf_need_scalar(cf, n, "on or off") != XR_OK)
            return XR_ERROR;
        static const char *const yes[] = {"on", "yes", "true", NULL};
        static const char *const no[] = {"off", "no", "false", NULL};
        for (int i = 0; yes[i]; i++)
            if (strcasecmp(n->str, yes[i]) == 0)
                return *(int *) slot = 1, XR_OK;
        for (int i = 0; no[i]; i++)
            if (strcasecmp(n->str, no[i]) == 0)
                return *(int *) slot = 0, XR_OK;
        return xr_conf_error(cf, n, "expected on or off, got \"%s\"", n->str);
    }
    case XR_T_INT: {
        if (xr_conf_need_scalar(cf, n, "a number") != XR_OK)
            return XR_ERROR;
        const char *e;
        if (xr_parse_number(n->str, &v, &e) != XR_OK || *e != '\0')
            return xr_conf_error(cf, n, "expected a number, got \"%s\"", n->str);
        if (xr_conf_check_range(cf, d, n, v) != XR_OK)
            return XR_ERROR;
        *(int64_t *) slot = v;
        return XR_OK;
    }
    case XR_T_SIZE:
        if (xr_conf_parse_size(cf, n, &v) != XR_OK || xr_conf_check_range(cf, d, n, v) != XR_OK)
            return XR_ERROR;
        *(int64_t *) slot = v;
        return XR_OK;
    case XR_T_DURATION:
        if (xr_conf_parse_duration(cf, n, &v) != XR_OK || xr_conf_check_range(cf, d, n, v) != XR_OK)
            return XR_ERROR;
        *(int64_t *) slot = v;
        return XR_OK;
    case XR_T_STRING:
        if (xr_conf_need_scalar(cf, n, "a string") != XR_OK)
            return XR_ERROR;
        if (n->slen == 0)
            return xr_conf_error(cf, n, "must not be empty");
        *(char **) slot = n->str;
        return XR_OK;
    case XR_T_PATH:
        if (xr_conf_need_scalar(cf, n, "a path") != XR_OK)
            return XR_ERROR;
        if (n->slen == 0)
            return xr_conf_error(cf, n, "must not be empty");
        *(char **) slot = xr_conf_path(cf, n, n->str);
        return XR_OK;
    case XR_T_ENUM: {
        if (xr_conf_need_scalar(cf, n, "a name") != XR_OK)
            return XR_ERROR;
        for (int i = 0; d->enums[i]; i++)
            if (strcmp(n->str, d->enums[i]) == 0)
                return *(int *) slot = i, XR_OK;
        char list[256];
        size_t off = 0;
        for (int i = 0; d->enums[i] && off < sizeof(list); i++)
            off += (size_t) snprintf(list + off, sizeof(list) - off, "%s%s", i ? ", " : "",
                                     d->enums[i]);
        return xr_conf_error(cf, n, "\"%s\" is not one of: %s", n->str, list);
    }
    case XR_T_ADDR: return xr_conf_parse_addr(cf, n, slot);
    case XR_T_ADDR_LIST: {
        xr_addr_list_t *l = slot;
        size_t cnt = n->type == XR_NODE_SEQ ? n->n : 1;
        if (n->type == XR_NODE_MAP)
            return xr_conf_error(cf, n, "expected an address or a sequence of addresses");
        if (cnt == 0)
            return xr_conf_error(cf, n, "needs at least one address");
        l->items = xr_conf_alloc(cf, cnt * sizeof(xr_addr_t));
        l->n = cnt;
        for (size_t i = 0; i < cnt; i++)
            if (xr_conf_parse_addr(cf, n->type == XR_NODE_SEQ ? n->items[i] : n, &l->items[i]) !=
                XR_OK)
                return XR_ERROR;
        return XR_OK;
    }
    case XR_T_STR_LIST: {
        xr_str_list_t *l = slot;
        size_t cnt = n->type == XR_NODE_SEQ ? n->n : 1;
        if (n->type == XR_NODE_MAP)
            return xr_conf_error(cf, n, "expected a string or a sequence of strings");
        l->items = xr_conf_alloc(cf, cnt * sizeof(char *));
        l->lens = xr_conf_alloc(cf, cnt * sizeof(size_t));
        l->n = cnt;
        for (size_t i = 0; i < cnt; i++) {
            const xr_node_t *it = n->type == XR_NODE_SEQ ? n->items[i] : n;
            if (xr_conf_need_scalar(cf, it, "a string") != XR_OK)
                return XR_ERROR;
            l->items[i] = it->str;
            l->lens[i] = it->slen;
        }
        return XR_OK;
    }
    case XR_T_CUSTOM: return d->set(cf, n, base, d);
    }
    return xr_conf_error(cf, n, "internal error: directive type %d", (int) d->type);
}

int xr_conf_defaults(xr_conf_t *cf, const xr_directive_t *table, unsigned ctx, void *block,
                     xr_conf_target_cb target)
{
    unsigned saved_ctx = cf->ctx;
    cf->ctx = ctx;
    for (const xr_directive_t *d = table; d->name; d++) {
        if (!(d->contexts & ctx) || d->def == NULL)
            continue;
        xr_node_t n = {
            .type = XR_NODE_SCALAR, .file = "<default>", .line = 0, .col = 0, .key = d->name};
        n.str = (char *) d->def;
        n.slen = strlen(d->def);
        void *base = target ? target(cf, d, block) : block;
        if (xr_conf_set(cf, d, &n, base) != XR_OK) {
            cf->ctx = saved_ctx;
            return XR_ERROR;
        }
    }
    cf->ctx = saved_ctx;
    return XR_OK;
}

size_t xr_conf_distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    if (la > 63 || lb > 63)
        return 64;
    size_t row[64];
    for (size_t j = 0; j <= lb; j++)
        row[j] = j;
    for (size_t i = 1; i <= la; i++) {
        size_t prev = row[0];
        row[0] = i;
        for (size_t j = 1; j <= lb; j++) {
            size_t cur = row[j];
            size_t cost = a[i - 1] == b[j - 1] ? 0 : 1;
            size_t v = XR_MIN(row[j] + 1, row[j - 1] + 1);
            row[j] = XR_MIN(v, prev + cost);
            prev = cur;
        }
    }
    return row[lb];
}

/* Where ctx is, as a phrase ("a relay block"), in buf (96 bytes): the
 * generation being built knows its contexts' names. */
static const char *xr_ctx_name(const xr_conf_t *cf, unsigned ctx, char *buf)
{
    if (cf->ctx_name != NULL)
        return cf->ctx_name(ctx, buf);
    return (ctx & XR_CTX_MAIN) ? "the top level" : "another block";
}

static int xr_conf_unknown(xr_conf_t *cf, const xr_node_t *key, const xr_directive_t *table,
                           unsigned ctx)
{
    /* Known elsewhere?  Say where it belongs. */
    char here[96], there[96];
    if (cf->hint_tables != NULL) {
        for (size_t t = 0; cf->hint_tables[t]; t++)
            for (const xr_directive_t *d = cf->hint_tables[t]; d->name; d++)
                if (strcmp(d->name, key->str) == 0 && !(d->contexts & ctx))
                    return xr_conf_error(cf, key, "not allowed in %s (it belongs in %s)",
                                         xr_ctx_name(cf, ctx, here),
                                         xr_ctx_name(cf, d->contexts, there));
    }
    const char *best = NULL;
    size_t bestd = 3;
    for (const xr_directive_t *d = table; d->name; d++) {
        if (!(d->contexts & ctx))
            continue;
        size_t dist = xr_conf_distance(key->str, d->name);
        if (dist < bestd) {
            bestd = dist;
            best = d->name;
        }
    }
    if (best != NULL)
        return xr_conf_error(cf, key, "unknown directive (did you mean \"%s\"?)", best);
    return xr_conf_error(cf, key, "unknown directive");
}

int xr_conf_block(xr_conf_t *cf, const xr_node_t *map, const xr_directive_t *table, unsigned ctx,
                  void *block, xr_conf_target_cb target, uint64_t *set)
{
    if (map->type != XR_NODE_MAP)
        return xr_conf_error(cf, map, "expected a mapping of directives");

    size_t ntable = 0;
    while (table[ntable].name)
        ntable++;
    if (ntable > 64)
        return xr_conf_error(cf, map, "internal error: directive table over 64 entries");

    uint64_t seen = 0;
    const xr_node_t *first_at[64] = {0};
    unsigned saved_ctx = cf->ctx;
    cf->ctx = ctx;

    /* Resolve and check every key first, so an unknown key is reported
     * before any value is interpreted. */
    int idx_of[1024];
    if (map->n > XR_ARRAY_SIZE(idx_of))
        return xr_conf_error(cf, map, "too many keys in one mapping");
    for (size_t i = 0; i < map->n; i++) {
        const xr_node_t *k = map->items[2 * i];
        int found = -1;
        for (size_t j = 0; j < ntable; j++)
            if ((table[j].contexts & ctx) && strcmp(table[j].name, k->str) == 0) {
                found = (int) j;
                break;
            }
        if (found < 0)
            return xr_conf_unknown(cf, k, table, ctx);
        if ((seen >> found) & 1 && !(table[found].flags & XR_DIR_MULTI))
            return xr_conf_error(cf, k, "duplicate directive (first at %s:%d:%d)",
                                 first_at[found]->file, first_at[found]->line,
                                 first_at[found]->col);
        if (!((seen >> found) & 1))
            first_at[found] = k;
        seen |= (uint64_t) 1 << found;
        idx_of[i] = found;
    }

    for (int pass = 0; pass < 2; pass++) {
        for (size_t i = 0; i < map->n; i++) {
            const xr_directive_t *d = &table[idx_of[i]];
            if ((pass == 0) != ((d->flags & XR_DIR_EARLY) != 0))
                continue;
            void *base = target ? target(cf, d, block) : block;
            if (xr_conf_set(cf, d, map->items[2 * i + 1], base) != XR_OK) {
                cf->ctx = saved_ctx;
                return XR_ERROR;
            }
        }
    }

    for (size_t j = 0; j < ntable; j++)
        if ((table[j].flags & XR_DIR_REQUIRED) && (table[j].contexts & ctx) && !((seen >> j) & 1)) {
            cf->ctx = saved_ctx;
            return xr_conf_error(cf, map, "missing required directive \"%s\"", table[j].name);
        }
    if (set != NULL)
        *set |= seen;
    cf->ctx = saved_ctx;
    return XR_OK;
}
