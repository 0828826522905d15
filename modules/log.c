/*
 * log.c: the access log filter: one JSON object per line for every
 * finished relay, and for every request through an HTTP proxy.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "xrayd_module.h"

typedef struct {
    char *path;
    int fd;
} xr_accesslog_conf_t;

static const xr_directive_t xr_accesslog_directives[] = {
    {"path", XR_CTX_FILTER, XR_T_PATH, offsetof(xr_accesslog_conf_t, path), NULL, 0, 0, NULL, NULL,
     XR_DIR_REQUIRED, "File the JSON lines are appended to."},
    XR_DIRECTIVES_END};

static int xr_accesslog_open(const char *path)
{
    return open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
}

static int xr_accesslog_init_conf(xr_conf_t *cf, const xr_node_t *node, void *conf)
{
    xr_accesslog_conf_t *c = conf;
    c->fd = -1;
    if (xr_conf_dry_run(cf))
        return XR_OK;
    c->fd = xr_accesslog_open(c->path);
    if (c->fd < 0) {
        /* Point at the path's value: that is what the operator fixes. */
        const xr_node_t *opts = xr_node_get(node, "log");
        const xr_node_t *at = opts ? xr_node_get(opts, "path") : NULL;
        return xr_conf_error(cf, at ? at : node, "cannot open access log \"%s\": %s", c->path,
                             strerror(errno));
    }
    return XR_OK;
}

static void xr_accesslog_free_conf(void *conf)
{
    xr_accesslog_conf_t *c = conf;
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
}

static void xr_accesslog_reopen(void *conf)
{
    xr_accesslog_conf_t *c = conf;
    int fd = xr_accesslog_open(c->path);
    if (fd < 0) {
        xr_log_session(XR_LOG_ALERT, NULL, "cannot reopen access log \"%s\": %s", c->path,
                       strerror(errno));
        return;
    }
    if (c->fd >= 0)
        close(c->fd);
    c->fd = fd;
}

/* Append s as a JSON string (or null). */
static size_t xr_json_str(char *out, size_t size, size_t off, const char *s)
{
    if (s == NULL)
        return off + (size_t) snprintf(out + off, off < size ? size - off : 0, "null");
    if (off < size)
        out[off] = '"';
    off++;
    for (; *s && off + 8 < size; s++) {
        unsigned char ch = (unsigned char) *s;
        if (ch == '"' || ch == '\\') {
            out[off++] = '\\';
            out[off++] = (char) ch;
        } else if (ch < 0x20) {
            off += (size_t) snprintf(out + off, size - off, "\\u%04x", ch);
        } else {
            out[off++] = (char) ch;
        }
    }
    if (off < size)
        out[off] = '"';
    return off + 1;
}

static void xr_accesslog_log(void *conf, void *state, xr_session_t *s)
{
    xr_accesslog_conf_t *c = conf;
    char line[2048], a[64];
    size_t off = 0, cap = sizeof(line) - 2;
    time_t secs = (time_t) (s->end_ms / 1000);
    struct tm tm;
    gmtime_r(&secs, &tm);
    off += strftime(line, cap, "{\"time\":\"%Y-%m-%dT%H:%M:%S", &tm);
    off += (size_t) snprintf(line + off, cap - off,
                             ".%03dZ\",\"listener\":", (int) (s->end_ms % 1000));
    off = xr_json_str(line, cap, off, s->listener);
    off += (size_t) snprintf(line + off, off < cap ? cap - off : 0, ",\"client\":");
    off = xr_json_str(line, cap, off, xr_addr_format(&s->client, a, sizeof(a)));
    off += (size_t) snprintf(line + off, off < cap ? cap - off : 0, ",\"local\":");
    off = xr_json_str(line, cap, off, xr_addr_format(&s->local, a, sizeof(a)));
    off += (size_t) snprintf(line + off, off < cap ? cap - off : 0, ",\"upstream\":");
    off = xr_json_str(line, cap, off,
                      s->upstream.ss_family ? xr_addr_format(&s->upstream, a, sizeof(a)) : NULL);
    off += (size_t) snprintf(line + off, off < cap ? cap - off : 0, ",\"identity\":");
    off = xr_json_str(line, cap, off, s->identity);
    off += (size_t) snprintf(line + off, off < cap ? cap - off : 0,
                             ",\"bytes_up\":%llu,\"bytes_down\":%llu,\"sent_up\":%llu,"
                             "\"sent_down\":%llu,\"duration_ms\":%lld,\"reason\":",
                             (unsigned long long) s->read_total[XR_DIR_UP],
                             (unsigned long long) s->read_total[XR_DIR_DOWN],
                             (unsigned long long) s->written_total[XR_DIR_UP],
                             (unsigned long long) s->written_total[XR_DIR_DOWN],
                             (long long) (s->end_ms - s->start_ms));
    off = xr_json_str(line, cap, off, s->close_reason[0] ? s->close_reason : "done");
    if (s->record != NULL && s->record->kind != NULL) {
        /* A front door's record (an HTTP proxy's request): "kind":{...}. */
        const xr_record_t *r = s->record;
        off += (size_t) snprintf(line + off, off < cap ? cap - off : 0, ",");
        off = xr_json_str(line, cap, off, r->kind);
        off += (size_t) snprintf(line + off, off < cap ? cap - off : 0, ":{");
        for (size_t i = 0; i < r->nfields; i++) {
            const xr_field_t *f = &r->fields[i];
            if (i > 0)
                off += (size_t) snprintf(line + off, off < cap ? cap - off : 0, ",");
            off = xr_json_str(line, cap, off, f->name);
            off += (size_t) snprintf(line + off, off < cap ? cap - off : 0, ":");
            switch (f->type) {
            case XR_FIELD_STR: off = xr_json_str(line, cap, off, f->str); break;
            case XR_FIELD_INT:
                off += (size_t) snprintf(line + off, off < cap ? cap - off : 0, "%lld",
                                         (long long) f->i);
                break;
            case XR_FIELD_UINT:
                off += (size_t) snprintf(line + off, off < cap ? cap - off : 0, "%llu",
                                         (unsigned long long) f->u);
                break;
            case XR_FIELD_BOOL:
                off += (size_t) snprintf(line + off, off < cap ? cap - off : 0, "%s",
                                         f->i ? "true" : "false");
                break;
            default: off += (size_t) snprintf(line + off, off < cap ? cap - off : 0, "null");
            }
        }
        off += (size_t) snprintf(line + off, off < cap ? cap - off : 0, "}");
    }
    if (off > cap)
        off = cap;
    line[off++] = '}';
    line[off++] = '\n';
    if (c->fd >= 0 && write(c->fd, line, off) < 0) {
        /* A full disk loses access records, never relayed bytes. */
    }
}

xr_module_t xr_log_module = {XR_MODULE_HEAD,
                             "log",
                             "1.0",
                             xr_accesslog_directives,
                             sizeof(xr_accesslog_conf_t),
                             xr_accesslog_init_conf,
                             xr_accesslog_free_conf,
                             NULL,
                             NULL,
                             xr_accesslog_reopen,
                             0,
                             NULL,
                             NULL,
                             NULL,
                             xr_accesslog_log,
                             {0}};

XR_MODULE_EXPORT(xr_log_module);
