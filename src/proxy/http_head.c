/*
 * http_head.c: HTTP heads, as the proxy's HTTP stage reads, judges and
 * writes them (see http_head.h): the parser's callbacks that note where
 * the request line or status line and every header are, the checks of a
 * request against a block's rules, the rewritten head that goes on, and
 * the proxy's own error pages.  Nothing here knows rings or connections.
 */
#include "core/xrayd.h"
#include "proxy/http_head.h"

#include <ctype.h>
#include <stdio.h>
#include <strings.h>

/* ---- head parsing ----------------------------------------------------------- */

static xr_head_t *xr_hd(http_parser *p)
{
    return p->data;
}

/* The parser may hand a span over in pieces: keep where it starts. */
static void xr_span_grow(const xr_head_t *h, uint32_t *off, uint32_t *len, const char *at, size_t n)
{
    if (*len == 0)
        *off = (uint32_t) (at - h->base);
    *len += (uint32_t) n;
}

static int xr_on_url(http_parser *p, const char *at, size_t n)
{
    xr_head_t *h = xr_hd(p);
    xr_span_grow(h, &h->url, &h->ulen, at, n);
    return 0;
}

static int xr_on_status(http_parser *p, const char *at, size_t n)
{
    xr_head_t *h = xr_hd(p);
    xr_span_grow(h, &h->status_at, &h->slen, at, n);
    return 0;
}

static int xr_on_field(http_parser *p, const char *at, size_t n)
{
    xr_head_t *h = xr_hd(p);
    if (memchr(at, ' ', n) != NULL) {
        /* The lenient parser takes "Transfer-Encoding : chunked"; a server
         * must refuse it (RFC 9112 5.1), and one that reads it otherwise
         * than the proxy did frames the body otherwise: refused here. */
        h->bad = "whitespace in a header name";
        return 1;
    }
    if (h->in_value || h->n == 0 || h->h[h->n - 1].vlen > 0 || h->h[h->n - 1].nlen == 0) {
        if (h->n == XR_HTTP_HEADERS) {
            h->overflow = 1;
            return 1;
        }
        if (!(h->n > 0 && !h->in_value && h->h[h->n - 1].vlen == 0 && h->h[h->n - 1].nlen > 0)) {
            h->h[h->n].name = (uint32_t) (at - h->base);
            h->h[h->n].nlen = 0;
            h->h[h->n].vlen = 0;
            h->n++;
        }
    }
    h->in_value = 0;
    h->h[h->n - 1].nlen += (uint32_t) n;
    return 0;
}

static int xr_on_value(http_parser *p, const char *at, size_t n)
{
    xr_head_t *h = xr_hd(p);
    if (h->n == 0)
        return 1;
    if (h->in_value) {
        /* A head is parsed in one run, so a value comes in one piece but
         * for a continuation line: its pieces are not contiguous, and the
         * value written out would carry the CRLF between them. */
        h->bad = "a header value folded over lines (obs-fold)";
        return 1;
    }
    if (h->h[h->n - 1].vlen == 0)
        h->h[h->n - 1].value = (uint32_t) (at - h->base);
    h->h[h->n - 1].vlen += (uint32_t) n;
    h->in_value = 1;
    return 0;
}

static int xr_on_headers_complete(http_parser *p)
{
    xr_head_t *h = xr_hd(p);
    h->done = 1;
    http_parser_pause(p, 1);
    return h->skip_body ? 1 : 0;
}

static int xr_on_message_complete(http_parser *p)
{
    xr_head_t *h = xr_hd(p);
    if (h != NULL)
        h->done = 2;
    http_parser_pause(p, 1);
    return 0;
}

static const http_parser_settings xr_head_settings = {
    .on_url = xr_on_url,
    .on_status = xr_on_status,
    .on_header_field = xr_on_field,
    .on_header_value = xr_on_value,
    .on_headers_complete = xr_on_headers_complete,
    .on_message_complete = xr_on_message_complete,
};

/* Body runs need only the end of the message. */
static const http_parser_settings xr_body_settings = {
    .on_message_complete = xr_on_message_complete,
};

static int xr_name_is(const xr_head_t *h, int i, const char *name)
{
    size_t n = strlen(name);
    return h->h[i].nlen == n && strncasecmp(h->base + h->h[i].name, name, n) == 0;
}

static int xr_find(const xr_head_t *h, const char *name)
{
    for (int i = 0; i < h->n; i++)
        if (xr_name_is(h, i, name))
            return i;
    return -1;
}

/* Header i's value without the trailing whitespace the parser leaves. */
static size_t xr_value_len(const xr_head_t *h, int i)
{
    size_t n = h->h[i].vlen;
    while (n > 0 &&
           (h->base[h->h[i].value + n - 1] == ' ' || h->base[h->h[i].value + n - 1] == '\t'))
        n--;
    return n;
}

/* Is v[0..n) a host and optional port as Host carries them (RFC 9110
 * 7.2): a name of letters, digits, '-', '.' and '_', or an IPv6 address
 * in brackets, then ":" and digits?  Anything else ("ok@denied.example",
 * spaces, "/", '%'-escapes) a server or a parent proxy reads otherwise
 * than the rules did. */
static int xr_host_ok(const char *v, size_t n)
{
    size_t i = 0;
    if (n > 0 && v[0] == '[') {
        for (i = 1; i < n && v[i] != ']'; i++)
            if (!isxdigit((unsigned char) v[i]) && v[i] != ':' && v[i] != '.')
                return 0;
        if (i++ == n)
            return 0;
    } else {
        for (; i < n && v[i] != ':'; i++)
            if (!isalnum((unsigned char) v[i]) && v[i] != '-' && v[i] != '.' && v[i] != '_')
                return 0;
    }
    if (i < n && v[i++] != ':')
        return 0;
    for (; i < n; i++)
        if (!isdigit((unsigned char) v[i]))
            return 0;
    return 1;
}

/* Does the comma-separated value list v[0..n) hold token t? */
static int xr_list_has(const char *v, size_t n, const char *t, size_t tl)
{
    size_t i = 0;
    while (i < n) {
        while (i < n && (v[i] == ' ' || v[i] == '\t' || v[i] == ','))
            i++;
        size_t s = i;
        while (i < n && v[i] != ',')
            i++;
        size_t e = i;
        while (e > s && (v[e - 1] == ' ' || v[e - 1] == '\t'))
            e--;
        if (e - s == tl && strncasecmp(v + s, t, tl) == 0)
            return 1;
    }
    return 0;
}

/* Is header i hop-by-hop (RFC 9110 7.6.1), named by a Connection header,
 * or one the rules remove? */
static int xr_drop_header(const xr_head_t *h, int i, const xr_http_conf_t *hc)
{
    static const char *const hop[] = {"connection", "keep-alive",          "proxy-connection",
                                      "te",         "proxy-authorization", "proxy-authenticate",
                                      "upgrade"};
    for (size_t k = 0; k < XR_ARRAY_SIZE(hop); k++)
        if (xr_name_is(h, i, hop[k]))
            return 1;
    /* A Connection header cannot make these hop-by-hop: without them the
     * server would read another message (no Host, another framing). */
    if (xr_name_is(h, i, "host") || xr_name_is(h, i, "content-length") ||
        xr_name_is(h, i, "transfer-encoding"))
        return 0;
    for (int j = 0; j < h->n; j++)
        if (xr_name_is(h, j, "connection") && xr_list_has(h->base + h->h[j].value, h->h[j].vlen,
                                                          h->base + h->h[i].name, h->h[i].nlen))
            return 1;
    for (size_t k = 0; hc && k < hc->remove_headers.n; k++)
        if (xr_name_is(h, i, hc->remove_headers.items[k]))
            return 1;
    return 0;
}

void xr_http_copy_field(char *dst, size_t cap, const char *src, size_t n)
{
    size_t k = 0;
    for (size_t i = 0; i < n && k + 1 < cap; i++)
        dst[k++] = (src[i] >= 0x20 && src[i] < 0x7f) ? src[i] : '?';
    dst[k] = '\0';
}

/* ---- requests and responses ------------------------------------------------ */

/* Parse the head at the start of what waits.  1: whole (*used its
 * length), 0: not yet, -1: invalid (the reason in why, the status in
 * *status). */
int xr_http_head_parse(const char *buf, size_t avail, size_t max, int d, int skip_body,
                       xr_head_t *h, http_parser *p, size_t *used, int *status, char *why,
                       size_t wl)
{
    memset(h, 0, sizeof(*h));
    h->base = buf;
    h->skip_body = skip_body;
    http_parser_init(p, d == XR_DIR_UP ? HTTP_REQUEST : HTTP_RESPONSE);
    p->data = h;
    size_t n = http_parser_execute(p, &xr_head_settings, buf, avail);
    enum http_errno err = HTTP_PARSER_ERRNO(p);
    if (h->done) {
        /* Paused on the head's last LF, which the parser reads again as it
         * goes on: feed it now, so the head ends after it and the body
         * (or the next message) starts clean.  Whatever the byte is: the
         * lenient parser takes any byte after the last CR for that LF, and
         * left in place it would go on as body (one byte more than the
         * rewritten head's framing says). */
        http_parser_pause(p, 0);
        if (n < avail) {
            xr_head_t none = {0};
            p->data = &none;
            http_parser_execute(p, &xr_body_settings, buf + n, 1);
            if (HTTP_PARSER_ERRNO(p) == HPE_PAUSED)
                http_parser_pause(p, 0);
            p->data = NULL;
            n++;
        }
        /* Some heads are refused only on that byte (a request whose
         * Transfer-Encoding does not end in chunked): invalid as any. */
        err = HTTP_PARSER_ERRNO(p);
        if (err == HPE_OK) {
            *used = n;
            return 1;
        }
    }
    if (h->bad != NULL) {
        *status = d == XR_DIR_UP ? 400 : 502;
        snprintf(why, wl, "invalid %s head: %s", d == XR_DIR_UP ? "request" : "response", h->bad);
        return -1;
    }
    if (h->overflow || (err == HPE_OK && avail == max)) {
        *status = d == XR_DIR_UP ? 431 : 502;
        snprintf(why, wl, "the %s head is larger than %lld bytes",
                 d == XR_DIR_UP ? "request" : "response", (long long) max);
        return -1;
    }
    if (err != HPE_OK) {
        *status = d == XR_DIR_UP ? 400 : 502;
        snprintf(why, wl, "invalid %s head: %s", d == XR_DIR_UP ? "request" : "response",
                 http_errno_description(err));
        return -1;
    }
    return 0;
}

/* Body runs need only the end of the message. */
size_t xr_http_body_run(http_parser *p, const char *at, size_t n, int *complete)
{
    xr_head_t none = {0};
    p->data = &none;
    size_t used = http_parser_execute(p, &xr_body_settings, at, n);
    *complete = none.done == 2 || HTTP_PARSER_ERRNO(p) == HPE_PAUSED;
    if (*complete)
        http_parser_pause(p, 0);
    p->data = NULL;
    return used;
}

void xr_http_body_end(http_parser *p, int *complete)
{
    xr_head_t none = {0};
    p->data = &none;
    http_parser_execute(p, &xr_body_settings, NULL, 0);
    p->data = NULL;
    *complete = none.done == 2;
}

/* ---- rewritten heads -------------------------------------------------------- */

/* The head being rewritten: bytes past cap are counted, not written. */
typedef struct {
    char *out;
    size_t n, cap;
} xr_emit_t;

/* memcpy, not snprintf: formatting every line was the proxy's costliest
 * code after the parser. */
static void xr_cat(xr_emit_t *e, const char *s, size_t len)
{
    if (e->n + len < e->cap)
        memcpy(e->out + e->n, s, len);
    e->n += len;
}

static void xr_cats(xr_emit_t *e, const char *s)
{
    xr_cat(e, s, strlen(s));
}

static void xr_cat_uint(xr_emit_t *e, unsigned v)
{
    char digits[12];
    size_t k = sizeof(digits);
    do
        digits[--k] = (char) ('0' + v % 10);
    while ((v /= 10) != 0 && k > 0);
    xr_cat(e, digits + k, sizeof(digits) - k);
}

static void xr_cat_version(xr_emit_t *e, const http_parser *p)
{
    xr_cat_uint(e, p->http_major);
    xr_cat(e, ".", 1);
    xr_cat_uint(e, p->http_minor);
}

size_t xr_http_head_rewrite(const xr_head_t *h, const http_parser *p, int d, int absolute,
                            const xr_http_conf_t *hc, char *out, size_t cap)
{
    xr_emit_t e = {.out = out, .cap = cap};
    if (d == XR_DIR_UP) {
        xr_cats(&e, http_method_str((enum http_method) p->method));
        xr_cat(&e, " ", 1);
        /* A parent proxy wants the absolute form (the thesis' web cache). */
        int hi = absolute && h->ulen > 0 && h->base[h->url] == '/' ? xr_find(h, "host") : -1;
        if (hi >= 0) {
            xr_cat(&e, "http://", 7);
            xr_cat(&e, h->base + h->h[hi].value, xr_value_len(h, hi));
        }
        xr_cat(&e, h->base + h->url, h->ulen);
        xr_cat(&e, " HTTP/", 6);
        xr_cat_version(&e, p);
    } else {
        xr_cat(&e, "HTTP/", 5);
        xr_cat_version(&e, p);
        xr_cat(&e, " ", 1);
        xr_cat_uint(&e, p->status_code);
        xr_cat(&e, " ", 1);
        xr_cat(&e, h->base + h->status_at, h->slen);
    }
    xr_cat(&e, "\r\n", 2);
    for (int i = 0; i < h->n; i++) {
        if (xr_drop_header(h, i, d == XR_DIR_UP ? hc : NULL))
            continue;
        xr_cat(&e, h->base + h->h[i].name, h->h[i].nlen);
        xr_cat(&e, ": ", 2);
        xr_cat(&e, h->base + h->h[i].value, h->h[i].vlen);
        xr_cat(&e, "\r\n", 2);
    }
    xr_cat(&e, "Via: ", 5);
    xr_cat_version(&e, p);
    xr_cat(&e, " ", 1);
    xr_cats(&e, hc->via);
    xr_cat(&e, "\r\n", 2);
    if (!http_should_keep_alive(p))
        xr_cats(&e, "Connection: close\r\n");
    else if (p->http_major == 1 && p->http_minor == 0)
        xr_cats(&e, "Connection: keep-alive\r\n");
    xr_cat(&e, "\r\n", 2);
    return e.n;
}

/* ---- the rules -------------------------------------------------------------- */

/* The host a request's target names (absolute-form, or CONNECT's
 * authority-form), which a server takes over Host (RFC 9112 3.2.2): 1
 * with it in *name, 0 for none (origin-form, "*"), -1 for a target that
 * does not parse or carries userinfo (RFC 9110 4.2.4). */
static int xr_target_host(const xr_head_t *h, const http_parser *p, const char **name, size_t *len)
{
    int connect = p->method == HTTP_CONNECT;
    if (h->ulen == 0 || (!connect && (h->base[h->url] == '/' || h->base[h->url] == '*')))
        return 0;
    struct http_parser_url u;
    http_parser_url_init(&u);
    if (http_parser_parse_url(h->base + h->url, h->ulen, connect, &u) != 0 ||
        !(u.field_set & (1 << UF_HOST)) || (u.field_set & (1 << UF_USERINFO)))
        return -1;
    *name = h->base + h->url + u.field_data[UF_HOST].off;
    *len = u.field_data[UF_HOST].len;
    return 1;
}

/* Check a request head against the rules: 0 to forward, else the status
 * of the refusal (why says what). */
int xr_http_head_check(const xr_head_t *h, const http_parser *p, const xr_http_conf_t *hc,
                       char *host, size_t hl, char *why, size_t wl)
{
    const char *method = http_method_str((enum http_method) p->method);
    int hi = xr_find(h, "host");
    size_t n = 0, e = 0;
    const char *v = "";
    if (hi >= 0) {
        v = h->base + h->h[hi].value;
        n = xr_value_len(h, hi);
        /* the name without its port (and without IPv6 brackets) */
        e = n;
        if (n > 0 && v[0] == '[') {
            const char *rb = memchr(v, ']', n);
            e = rb ? (size_t) (rb - v) + 1 : n;
        } else {
            const char *colon = memchr(v, ':', n);
            if (colon)
                e = (size_t) (colon - v);
        }
        xr_http_copy_field(host, hl, v, e);
    } else {
        host[0] = '\0';
    }
    int ok = 0;
    for (size_t i = 0; i < hc->methods.n && !ok; i++)
        ok = strcmp(hc->methods.items[i], method) == 0;
    if (!ok) {
        snprintf(why, wl, "method %s is not allowed here", method);
        return 405;
    }
    if (hi < 0 && (p->http_major > 1 || p->http_minor >= 1)) {
        snprintf(why, wl, "an HTTP/1.1 request needs a Host header");
        return 400;
    }
    /* The rules see the first Host; the server must see the same one. */
    int nhost = 0;
    for (int i = 0; i < h->n; i++)
        nhost += xr_name_is(h, i, "host");
    if (nhost > 1 || (hi >= 0 && !xr_host_ok(h->base + h->h[hi].value, n))) {
        snprintf(why, wl, nhost > 1 ? "more than one Host header" : "an invalid Host header");
        return 400;
    }
    if (xr_find(h, "content-length") >= 0 && xr_find(h, "transfer-encoding") >= 0) {
        /* What a smuggler sends: two framings for the server to choose. */
        snprintf(why, wl, "both Content-Length and Transfer-Encoding");
        return 400;
    }
    /* An absolute target names the host the server will take: the rules
     * hold for it as for Host. */
    const char *tn = "";
    size_t tl = 0;
    int t = xr_target_host(h, p, &tn, &tl);
    if (t < 0) {
        snprintf(why, wl, "an invalid request target");
        return 400;
    }
    for (int k = 0; k < 1 + (t > 0); k++) {
        /* The whole name is matched: host is cut to fit the log. */
        const char *name = k == 0 ? v : tn;
        size_t len = k == 0 ? e : tl;
        char shown[64];
        xr_http_copy_field(shown, sizeof(shown), name, len);
        if (hc->hosts_deny.n > 0 && xr_http_host_match(&hc->hosts_deny, name, len)) {
            snprintf(why, wl, "host %s is denied", shown);
            return 403;
        }
        if (hc->hosts_allow.n > 0 && !xr_http_host_match(&hc->hosts_allow, name, len)) {
            snprintf(why, wl, "host %s is not allowed", shown);
            return 403;
        }
    }
    for (size_t i = 0; i < hc->deny_headers.n; i++)
        if (xr_find(h, hc->deny_headers.items[i]) >= 0) {
            snprintf(why, wl, "header %s is not allowed", hc->deny_headers.items[i]);
            return 403;
        }
    return 0;
}

/* ---- answers of the proxy's own ---------------------------------------------- */

static const char *xr_reason(int status)
{
    switch (status) {
    case 400: return "Bad Request";
    case 403: return "Forbidden";
    case 405: return "Method Not Allowed";
    case 431: return "Request Header Fields Too Large";
    case 502: return "Bad Gateway";
    default: return "Error";
    }
}

size_t xr_http_error_page(int status, const char *why, const char *via, char *out, size_t cap)
{
    char body[512];
    int bl = snprintf(body, sizeof(body),
                      "<!DOCTYPE html>\n<html><head><title>%d %s</title></head><body>\n"
                      "<h1>%d %s</h1>\n<p>%s</p>\n<hr><p>%s</p>\n</body></html>\n",
                      status, xr_reason(status), status, xr_reason(status), why, via);
    int n = snprintf(out, cap,
                     "HTTP/1.1 %d %s\r\nContent-Type: text/html; charset=utf-8\r\n"
                     "Content-Length: %d\r\nConnection: close\r\nCache-Control: no-store\r\n"
                     "Via: 1.1 %s\r\n\r\n%s",
                     status, xr_reason(status), bl, via, body);
    return n < 0 ? 0 : XR_MIN((size_t) n, cap);
}
