/*
 * http_head.h: HTTP heads for the proxy's HTTP stage (http.c): parsed in
 * one run with http-parser (where the start line and each header are),
 * checked against a proxy block's http: rules, and written out rewritten
 * (hop-by-hop headers removed, Via added); bodies run through the same
 * parser only to find where a message ends; the proxy's own error pages.
 * Nothing here knows rings or connections: the stage hands over bytes.
 */
#ifndef XR_HTTP_HEAD_H
#define XR_HTTP_HEAD_H

#include <http_parser.h>
#include <stddef.h>
#include <stdint.h>

#include "proxy/proxy_conf.h"

#define XR_HTTP_HEADERS 128 /* headers in one head */

/* One head being parsed: spans of base, the bytes handed to the parser. */
typedef struct {
    const char *base;
    struct {
        uint32_t name, nlen, value, vlen;
    } h[XR_HTTP_HEADERS];
    int n, overflow, in_value, done;
    const char *bad; /* why the head is refused, when the parser would take it */
    uint32_t url, ulen, status_at, slen;
    int skip_body; /* a response to HEAD */
} xr_head_t;

/* Parse the head at the start of buf[0, avail) (d: XR_DIR_UP for a
 * request, XR_DIR_DOWN for a response; skip_body for a response to HEAD;
 * max: the block's max_header_size, avail is at most that).  1: whole
 * (*used its length, p paused at its end), 0: not yet, -1: invalid (why
 * says why, *status the answer: 400 or 431 for a request, 502 for a
 * response). */
int xr_http_head_parse(const char *buf, size_t avail, size_t max, int d, int skip_body,
                       xr_head_t *h, http_parser *p, size_t *used, int *status, char *why,
                       size_t wl);

/* Run n body bytes through p: how many belong to the message; *complete
 * when it ended there, else HTTP_PARSER_ERRNO(p) says if they were bad. */
size_t xr_http_body_run(http_parser *p, const char *at, size_t n, int *complete);
/* The stream ended: *complete if that ends p's message (one read until
 * the server closes). */
void xr_http_body_end(http_parser *p, int *complete);

/* Check a request head against the rules: 0 to forward, else the status
 * of the refusal (why says what); host gets the Host header's name. */
int xr_http_head_check(const xr_head_t *h, const http_parser *p, const xr_http_conf_t *hc,
                       char *host, size_t hl, char *why, size_t wl);

/* Write h rewritten into out[0, cap): request (d XR_DIR_UP, in absolute
 * form for a parent proxy if absolute) or response.  Returns its length;
 * cap or more means it did not fit (nothing past cap was written). */
size_t xr_http_head_rewrite(const xr_head_t *h, const http_parser *p, int d, int absolute,
                            const xr_http_conf_t *hc, char *out, size_t cap);

/* The proxy's own answer: a page of status with why, signed via. */
size_t xr_http_error_page(int status, const char *why, const char *via, char *out, size_t cap);

/* n bytes of src as a C string for the log: cut to cap, and anything
 * unprintable as '?'. */
void xr_http_copy_field(char *dst, size_t cap, const char *src, size_t n);

#endif
