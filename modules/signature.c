/*
 * signature.c: the auxiliary test of XRAY section 2: close a relay whose
 * bytes contain any configured pattern, also when the pattern is split
 * across reads.  The last (longest pattern - 1) bytes of each direction
 * are kept so a match across a boundary is seen.  With `answer`, the
 * sender of the matching bytes gets that text back before the close (an
 * HTTP 403, say) instead of a reset.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* memmem */
#endif
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "xrayd_module.h"

#define XR_SIG_MAX_LEN 1024

typedef struct {
    unsigned char *bytes;
    size_t len;
    const char *label;
} xr_sig_pattern_t;

typedef struct {
    xr_sig_pattern_t *p;
    size_t n;
    size_t maxlen;
    int direction; /* 0 up, 1 down, 2 both */
    char *answer;  /* sent back to the sender of a match, or NULL: reset */
} xr_sig_conf_t;

typedef struct {
    unsigned char *tail[2];
    size_t tail_len[2];
} xr_sig_state_t;

static const char *const xr_sig_directions[] = {"up", "down", "both", NULL};

static int xr_sig_hex(xr_conf_t *cf, const xr_node_t *n, const char *s, xr_sig_pattern_t *p)
{
    size_t len = strlen(s);
    p->bytes = xr_conf_alloc(cf, len / 2 + 1);
    p->len = 0;
    int half = -1;
    for (; *s; s++) {
        if (isspace((unsigned char) *s) || *s == ':')
            continue;
        int v = isdigit((unsigned char) *s) ? *s - '0'
                : (tolower((unsigned char) *s) >= 'a' && tolower((unsigned char) *s) <= 'f')
                    ? tolower((unsigned char) *s) - 'a' + 10
                    : -1;
        if (v < 0)
            return xr_conf_error(cf, n, "invalid hex digit '%c'", *s);
        if (half < 0) {
            half = v;
        } else {
            p->bytes[p->len++] = (unsigned char) (half << 4 | v);
            half = -1;
        }
    }
    if (half >= 0)
        return xr_conf_error(cf, n, "odd number of hex digits");
    return XR_OK;
}

static int xr_sig_set_patterns(xr_conf_t *cf, const xr_node_t *n, void *conf,
                               const xr_directive_t *d)
{
    xr_sig_conf_t *c = conf;
    if (xr_node_type(n) != XR_NODE_SEQ || xr_node_len(n) == 0)
        return xr_conf_error(cf, n, "expected a non-empty sequence of patterns");
    c->n = xr_node_len(n);
    c->p = xr_conf_alloc(cf, c->n * sizeof(*c->p));
    for (size_t i = 0; i < c->n; i++) {
        const xr_node_t *it = xr_node_item(n, i);
        xr_sig_pattern_t *p = &c->p[i];
        const char *name = NULL;
        if (xr_node_type(it) == XR_NODE_SCALAR) {
            p->bytes = (unsigned char *) xr_node_str(it);
            p->len = xr_node_slen(it);
        } else if (xr_node_type(it) == XR_NODE_MAP) {
            const xr_node_t *hex = NULL, *lit = NULL, *nm = NULL;
            for (size_t k = 0; k < xr_node_len(it); k++) {
                const char *key = xr_node_str(xr_node_key(it, k));
                const xr_node_t *v = xr_node_value(it, k);
                if (xr_node_type(v) != XR_NODE_SCALAR)
                    return xr_conf_error(cf, v, "expected a string");
                if (strcmp(key, "hex") == 0)
                    hex = v;
                else if (strcmp(key, "literal") == 0)
                    lit = v;
                else if (strcmp(key, "name") == 0)
                    nm = v;
                else
                    return xr_conf_error(cf, xr_node_key(it, k),
                                         "unknown pattern key (use hex, literal or name)");
            }
            if ((hex == NULL) == (lit == NULL))
                return xr_conf_error(cf, it, "a pattern has exactly one of hex or literal");
            if (hex != NULL) {
                if (xr_sig_hex(cf, hex, xr_node_str(hex), p) != XR_OK)
                    return XR_ERROR;
                if (nm == NULL) {
                    size_t ll = strlen(xr_node_str(hex)) + 5;
                    char *l = xr_conf_alloc(cf, ll);
                    snprintf(l, ll, "hex:%s", xr_node_str(hex));
                    name = l;
                }
            } else {
                p->bytes = (unsigned char *) xr_node_str(lit);
                p->len = xr_node_slen(lit);
            }
            if (nm != NULL)
                name = xr_node_str(nm);
        } else {
            return xr_conf_error(cf, it, "a pattern is a string or {hex: ...} / {literal: ...}");
        }
        if (p->len == 0)
            return xr_conf_error(cf, it, "empty pattern");
        if (p->len > XR_SIG_MAX_LEN)
            return xr_conf_error(cf, it, "pattern longer than %d bytes", XR_SIG_MAX_LEN);
        p->label = name ? name : (const char *) p->bytes;
        if (p->len > c->maxlen)
            c->maxlen = p->len;
    }
    return XR_OK;
}

static const char *const xr_sig_patterns_shape[] = {"patterns", NULL};

static const xr_directive_t xr_sig_directives[] = {
    {"patterns", XR_CTX_FILTER, XR_T_CUSTOM, 0, NULL, 0, 0, xr_sig_patterns_shape,
     xr_sig_set_patterns, XR_DIR_REQUIRED,
     "Byte patterns that close the relay: \"literal\", {hex: \"..\"}, optional name."},
    {"direction", XR_CTX_FILTER, XR_T_ENUM, offsetof(xr_sig_conf_t, direction), "both", 0, 0,
     xr_sig_directions, NULL, 0, "Which direction is inspected: up, down or both."},
    {"answer", XR_CTX_FILTER, XR_T_STRING, offsetof(xr_sig_conf_t, answer), NULL, 0, 0, NULL, NULL,
     0,
     "Text sent back to the sender of a match before the connection closes with a FIN (C "
     "escapes \\r \\n \\t \\\\); none: the connection is reset."},
    XR_DIRECTIVES_END};

/* `answer` with \r, \n, \t and \\ turned into their bytes, in place. */
static int xr_sig_init_conf(xr_conf_t *cf, const xr_node_t *node, void *conf)
{
    xr_sig_conf_t *c = conf;
    if (c->answer == NULL)
        return XR_OK;
    char *w = c->answer;
    for (const char *r = c->answer; *r; r++) {
        if (*r != '\\' || r[1] == '\0') {
            *w++ = *r;
            continue;
        }
        r++;
        *w++ = *r == 'r' ? '\r' : *r == 'n' ? '\n' : *r == 't' ? '\t' : *r;
    }
    *w = '\0';
    if (w - c->answer > XR_SIG_MAX_LEN)
        return xr_conf_error(cf, node, "answer longer than %d bytes", XR_SIG_MAX_LEN);
    return XR_OK;
}

static const xr_sig_pattern_t *xr_sig_find(const xr_sig_conf_t *c, const unsigned char *buf,
                                           size_t len)
{
    for (size_t i = 0; i < c->n; i++)
        if (c->p[i].len <= len && memmem(buf, len, c->p[i].bytes, c->p[i].len) != NULL)
            return &c->p[i];
    return NULL;
}

static xr_filter_rc_t xr_sig_data(void *conf, void *state, xr_session_t *s, int dir, xr_chunk_t *c)
{
    xr_sig_conf_t *sc = conf;
    xr_sig_state_t *st = state;
    if (sc->direction != 2 && sc->direction != dir)
        return XR_FILTER_PASS;
    size_t keep = sc->maxlen - 1;
    const xr_sig_pattern_t *hit = NULL;

    if (keep > 0 && st->tail_len[dir] > 0) {
        /* The seam: the kept tail and the start of this chunk. */
        unsigned char seam[2 * XR_SIG_MAX_LEN];
        size_t head = c->len < keep ? c->len : keep;
        memcpy(seam, st->tail[dir], st->tail_len[dir]);
        memcpy(seam + st->tail_len[dir], c->data, head);
        hit = xr_sig_find(sc, seam, st->tail_len[dir] + head);
    }
    if (hit == NULL)
        hit = xr_sig_find(sc, c->data, c->len);
    if (hit != NULL) {
        snprintf(s->close_reason, sizeof(s->close_reason), "signature \"%.60s\" matched",
                 hit->label);
        xr_log_session(XR_LOG_WARN, s, "signature \"%s\" matched in the %s direction", hit->label,
                       dir == XR_DIR_UP ? "client-to-upstream" : "upstream-to-client");
        size_t alen = sc->answer ? strlen(sc->answer) : 0;
        if (alen > 0 && alen <= c->cap) {
            memcpy(c->data, sc->answer, alen);
            c->len = alen;
            return XR_FILTER_ANSWER;
        }
        return XR_FILTER_CLOSE;
    }
    if (keep > 0) {
        if (st->tail[dir] == NULL) {
            st->tail[dir] = malloc(keep);
            if (st->tail[dir] == NULL) {
                snprintf(s->close_reason, sizeof(s->close_reason), "signature: out of memory");
                return XR_FILTER_CLOSE;
            }
        }
        if (c->len >= keep) {
            memcpy(st->tail[dir], c->data + c->len - keep, keep);
            st->tail_len[dir] = keep;
        } else {
            size_t total = st->tail_len[dir] + c->len;
            size_t drop = total > keep ? total - keep : 0;
            memmove(st->tail[dir], st->tail[dir] + drop, st->tail_len[dir] - drop);
            memcpy(st->tail[dir] + st->tail_len[dir] - drop, c->data, c->len);
            st->tail_len[dir] = total - drop;
        }
    }
    return XR_FILTER_PASS;
}

static void xr_sig_close(void *conf, void *state, xr_session_t *s)
{
    xr_sig_state_t *st = state;
    free(st->tail[0]);
    free(st->tail[1]);
    st->tail[0] = st->tail[1] = NULL;
}

xr_module_t xr_signature_module = {XR_MODULE_HEAD,
                                   "signature",
                                   "1.0",
                                   xr_sig_directives,
                                   sizeof(xr_sig_conf_t),
                                   xr_sig_init_conf,
                                   NULL,
                                   NULL,
                                   NULL,
                                   NULL,
                                   sizeof(xr_sig_state_t),
                                   NULL,
                                   xr_sig_data,
                                   xr_sig_close,
                                   NULL,
                                   {0}};

XR_MODULE_EXPORT(xr_signature_module);
