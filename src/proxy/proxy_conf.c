/*
 * proxy_conf.c: proxy blocks' own checks and the `http:` rules.
 */
#include "core/xrayd.h"
#include "proxy/proxy_conf.h"

#include <stdio.h>
#include <strings.h>

const char *const xr_proxy_mode_names[] = {"circuit", "http", NULL};
const char *const xr_intercept_names[] = {"redirect", "tproxy", NULL};

#define H     XR_CTX_PROXY_HTTP
#define HO(f) offsetof(xr_http_conf_t, f)

const xr_directive_t xr_http_directives[] = {
    {"methods", H, XR_T_STR_LIST, HO(methods), NULL, 0, 0, NULL, NULL, 0,
     "Request methods let through (default: GET HEAD POST PUT DELETE OPTIONS PATCH)."},
    {"hosts_allow", H, XR_T_STR_LIST, HO(hosts_allow), NULL, 0, 0, NULL, NULL, 0,
     "Hosts requests may name: exact names, *.domain or * (default: any)."},
    {"hosts_deny", H, XR_T_STR_LIST, HO(hosts_deny), NULL, 0, 0, NULL, NULL, 0,
     "Hosts refused even when hosts_allow lets them in."},
    {"remove_headers", H, XR_T_STR_LIST, HO(remove_headers), NULL, 0, 0, NULL, NULL, 0,
     "Request headers dropped before forwarding (hop-by-hop ones always are)."},
    {"deny_headers", H, XR_T_STR_LIST, HO(deny_headers), NULL, 0, 0, NULL, NULL, 0,
     "A request carrying any of these headers is refused with 403."},
    {"max_header_size", H, XR_T_SIZE, HO(max_header_size), "16k", 1024, 1 << 20, NULL, NULL, 0,
     "Largest request or response head; a larger one is refused (431 or 502)."},
    {"via", H, XR_T_STRING, HO(via), "xrayd", 0, 0, NULL, NULL, 0,
     "Pseudonym this proxy adds to Via on requests and responses."},
    XR_DIRECTIVES_END};

#undef H

static const char *const xr_default_methods[] = {"GET",    "HEAD",    "POST", "PUT",
                                                 "DELETE", "OPTIONS", "PATCH"};

static int xr_token_ok(const char *s, size_t n)
{
    static const char tchar[] = "!#$%&'*+-.^_`|~";
    if (n == 0)
        return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char) s[i];
        if (!(c >= '0' && c <= '9') && !(c >= 'a' && c <= 'z') && !(c >= 'A' && c <= 'Z') &&
            strchr(tchar, c) == NULL)
            return 0;
    }
    return 1;
}

int xr_proxy_set_http(xr_conf_t *cf, const xr_node_t *n, void *conf, const xr_directive_t *d)
{
    if (n->type != XR_NODE_MAP)
        return xr_conf_error(cf, n, "expected a mapping of HTTP rules");
    xr_http_conf_t *h = xr_conf_alloc(cf, sizeof(*h));
    if (xr_conf_defaults(cf, xr_http_directives, XR_CTX_PROXY_HTTP, h, NULL) != XR_OK ||
        xr_conf_block(cf, n, xr_http_directives, XR_CTX_PROXY_HTTP, h, NULL, NULL) != XR_OK)
        return XR_ERROR;
    const xr_str_list_t *lists[] = {&h->methods, &h->remove_headers, &h->deny_headers};
    const char *names[] = {"methods", "remove_headers", "deny_headers"};
    for (size_t k = 0; k < XR_ARRAY_SIZE(lists); k++)
        for (size_t i = 0; i < lists[k]->n; i++)
            if (!xr_token_ok(lists[k]->items[i], lists[k]->lens[i]))
                return xr_conf_error(cf, xr_node_get(n, names[k]), "\"%s\" is not an HTTP token",
                                     lists[k]->items[i]);
    /* Removing these would send the server another message than the one
     * checked (no Host, another framing). */
    static const char *const kept[] = {"host", "content-length", "transfer-encoding"};
    for (size_t i = 0; i < h->remove_headers.n; i++)
        for (size_t k = 0; k < XR_ARRAY_SIZE(kept); k++)
            if (strcasecmp(h->remove_headers.items[i], kept[k]) == 0)
                return xr_conf_error(cf, xr_node_get(n, "remove_headers"),
                                     "\"%s\" cannot be removed: the server would read another "
                                     "request",
                                     h->remove_headers.items[i]);
    *(xr_http_conf_t **) ((char *) conf + d->offset) = h;
    return XR_OK;
}

#define P     XR_CTX_PROXY
#define PO(f) offsetof(xr_proxy_conf_t, f)
#define RO(f) offsetof(xr_relay_conf_t, f)

const xr_directive_t xr_proxy_block_directives[] = {
    {"mode", P, XR_T_ENUM, PO(mode), "circuit", 0, 0, xr_proxy_mode_names, NULL, XR_DIR_EXT,
     "circuit relays bytes as they are; http parses and checks every request."},
    {"intercept", P, XR_T_ENUM, PO(intercept), "redirect", 0, 0, xr_intercept_names, NULL,
     XR_DIR_EXT,
     "How connections arrive: redirect (iptables/nftables REDIRECT) or tproxy (TPROXY)."},
    {"upstream", P, XR_T_ADDR_LIST, RO(upstream), NULL, 0, 0, NULL, NULL, 0,
     "Parent proxies to try first; the original destination when none answers."},
    {"continuity", P, XR_T_FLAG, RO(continuity), "on", 0, 0, NULL, NULL, 0,
     "Keep live connections across worker crashes and binary upgrades (snapshots)."},
    {"http", P, XR_T_CUSTOM, PO(http), NULL, 0, 0, (const char *const[]){"http block", NULL},
     xr_proxy_set_http, XR_DIR_EXT,
     "HTTP rules of a mode: http proxy: methods, hosts, headers, limits."},
    XR_DIRECTIVES_END};

#undef P
#undef PO
#undef RO

int xr_proxy_check(xr_conf_t *cf, xr_relay_conf_t *rc)
{
    xr_proxy_conf_t *pc = rc->ext;
    const xr_node_t *hn = xr_node_get(rc->node, "http");
    rc->transparent = pc->intercept == XR_INTERCEPT_TPROXY;
    if (pc->http != NULL && pc->mode != XR_PROXY_HTTP)
        return xr_conf_error(cf, hn, "http rules need mode: http");
    if (pc->mode == XR_PROXY_HTTP && pc->http == NULL) {
        xr_http_conf_t *h = xr_conf_alloc(cf, sizeof(*h));
        if (xr_conf_defaults(cf, xr_http_directives, XR_CTX_PROXY_HTTP, h, NULL) != XR_OK)
            return XR_ERROR;
        pc->http = h;
    }
    if (pc->http != NULL && pc->http->methods.n == 0) {
        xr_str_list_t *m = &pc->http->methods;
        m->n = XR_ARRAY_SIZE(xr_default_methods);
        m->items = xr_conf_alloc(cf, m->n * sizeof(char *));
        m->lens = xr_conf_alloc(cf, m->n * sizeof(size_t));
        for (size_t i = 0; i < m->n; i++) {
            m->items[i] = (char *) xr_default_methods[i];
            m->lens[i] = strlen(xr_default_methods[i]);
        }
    }
    if (pc->http != NULL && pc->http->max_header_size > rc->buffer_size / 2) {
        const xr_node_t *bs = xr_node_get(rc->node, "buffer_size");
        return xr_conf_error(cf, bs ? bs : rc->node,
                             "buffer_size must hold two request heads: at least %lld bytes "
                             "for max_header_size %lld",
                             (long long) pc->http->max_header_size * 2,
                             (long long) pc->http->max_header_size);
    }
    return XR_OK;
}

int xr_http_host_match(const xr_str_list_t *patterns, const char *host, size_t len)
{
    while (len > 0 && host[len - 1] == '.')
        len--; /* "example.com." is example.com */
    for (size_t i = 0; i < patterns->n; i++) {
        const char *p = patterns->items[i];
        size_t pl = patterns->lens[i];
        if (pl == 1 && p[0] == '*')
            return 1;
        if (pl > 2 && p[0] == '*' && p[1] == '.') {
            /* a subdomain: the name ends in ".domain" and has more before it */
            size_t sl = pl - 1;
            if (len > sl && strncasecmp(host + len - sl, p + 1, sl) == 0)
                return 1;
            continue;
        }
        if (pl == len && strncasecmp(host, p, len) == 0)
            return 1;
    }
    return 0;
}
