/*
 * proxy_conf.h: the `proxy:` blocks (transparent proxies, thesis ch. 7)
 * and their `http:` rules.  A proxy block is a relay block of kind
 * XR_BLOCK_PROXY: it shares listen, buffer and timeout directives with
 * relay blocks, and adds mode, intercept, continuity and http.
 */
#ifndef XR_PROXY_CONF_H
#define XR_PROXY_CONF_H

#include "core/conf.h"
#include "core/gen.h"

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

extern const xr_directive_t xr_http_directives[];

/* The `http` directive's setter. */
int xr_proxy_set_http(xr_conf_t *cf, const xr_node_t *n, void *conf, const xr_directive_t *d);
/* Checks of a parsed proxy block (mode against http, limits).  XR_OK or
 * XR_ERROR after xr_conf_error(). */
int xr_proxy_check(xr_conf_t *cf, xr_relay_conf_t *rc);

/* Does host (no port, any case) match one of the patterns? */
int xr_http_host_match(const xr_str_list_t *patterns, const char *host, size_t len);

#endif
