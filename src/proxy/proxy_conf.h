/*
 * proxy_conf.h: the `proxy:` blocks (transparent proxies, thesis ch. 7)
 * and their `http:` rules.  A proxy block is a block of the proxy front
 * door: it shares listen, buffer and timeout directives with every
 * block, and adds mode, intercept, upstream, continuity and http (its
 * own settings are the block's ext, an xr_proxy_conf_t).
 */
#ifndef XR_PROXY_CONF_H
#define XR_PROXY_CONF_H

#include "core/conf.h"
#include "core/gen.h"

/* The context bits of a proxy block and of its http: rules. */
#define XR_CTX_PROXY      0x100
#define XR_CTX_PROXY_HTTP 0x10000

typedef enum { XR_PROXY_CIRCUIT = 0, XR_PROXY_HTTP } xr_proxy_mode_t;
typedef enum { XR_INTERCEPT_REDIRECT = 0, XR_INTERCEPT_TPROXY } xr_intercept_t;

extern const char *const xr_proxy_mode_names[];
extern const char *const xr_intercept_names[];

/* A host pattern: an exact name, "*.example.com" (any subdomain, not the
 * name itself), or "*". */
typedef struct xr_http_conf_s {
    xr_str_list_t methods;        /* allowed; none given: the common ones */
    xr_str_list_t hosts_allow;    /* none given: every host */
    xr_str_list_t hosts_deny;     /* checked first */
    xr_str_list_t remove_headers; /* dropped from requests, beside hop-by-hop ones */
    xr_str_list_t deny_headers;   /* a request carrying one is refused */
    int64_t max_header_size;
    char *via; /* the pseudonym in Via */
} xr_http_conf_t;

/* A proxy block's own settings (rc->ext). */
typedef struct {
    int mode;      /* xr_proxy_mode_t */
    int intercept; /* xr_intercept_t */
    xr_http_conf_t *http;
} xr_proxy_conf_t;

static inline const xr_proxy_conf_t *xr_proxy_conf(const xr_relay_conf_t *rc)
{
    return (const xr_proxy_conf_t *) rc->ext;
}

extern const xr_directive_t xr_http_directives[];
extern const xr_directive_t xr_proxy_block_directives[];

/* The `http` directive's setter. */
int xr_proxy_set_http(xr_conf_t *cf, const xr_node_t *n, void *conf, const xr_directive_t *d);
/* Checks of a parsed proxy block (mode against http, limits).  XR_OK or
 * XR_ERROR after xr_conf_error(). */
int xr_proxy_check(xr_conf_t *cf, xr_relay_conf_t *rc);

/* Does host (no port, any case) match one of the patterns? */
int xr_http_host_match(const xr_str_list_t *patterns, const char *host, size_t len);

#endif
