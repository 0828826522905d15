/*
 * fuzz_http.c: libFuzzer target for the transparent proxy's HTTP stage
 * (src/proxy/http.c), run by the relay engine's own code: one detached
 * connection (relay/conn.h: heap rings, a heap snapshot slot, continuity
 * off, no sockets, nothing of the worker process) of a proxy block with
 * mode: http, whose stage is the one the proxy front door names.  This
 * file plays only what the kernel and the event loop would: it fills the
 * IN rings with what the peers send, calls the stage's process, eof and
 * delivered hooks as relay/conn.c's pump does, and drains the OUT rings as
 * if the sockets took them.  Log records come back through a filter of
 * the block with a log hook, as an access log's would.
 *
 * The input is one configuration byte, then operations, each a byte whose
 * value modulo 8 says what happens (so the seeds use the digits '0'..'7');
 * N is the two bytes after it, big-endian:
 *
 *   '0' N data   the client sends N bytes       '4'   the client closes
 *   '1' N data   the server sends N bytes       '5'   the server closes
 *   '2' N        the client reads up to N bytes '6'   the worker dies and a
 *   '3' N        the server reads up to N bytes       new one resumes it
 *   '7'          the worker dies in the next step that changes anything,
 *                before its commit: the step must do the same again
 *
 * The configuration byte: bits 0-1 make the rings 8, 12, 16 or 20 KiB,
 * bit 2 sends everything through a parent proxy (absolute-form requests).
 * After the last operation both peers read until nothing moves.
 *
 * Bytes sent wait in a "socket" until the IN ring has room, as in the
 * kernel; a close reaches the stage once they are read.  After every
 * operation the pump runs for the ends it concerns (read what fits, call
 * process, and eof once the source ended after an XR_OK, half-close, end
 * the connection when the stage is finished or both directions are
 * done).  A resumption is the engine's own (xr_conn_detached_resume): the
 * working state is dropped, the stage rebuilds it from the committed
 * record, and the counters must fit the snapshot.
 *
 * Checked (abort() on violation, beside ASan and UBSan):
 *   - the stage reads IN[d] only in [in_done, taken) (the rest of the
 *     ring is ASan-poisoned); what it made in OUT[d] and not yet sent
 *     never exceeds the ring; no counter goes backwards; after every step
 *     the committed record holds exactly the live counters, so no peer is
 *     ever given output that was not committed;
 *   - a step that dies before its commit, done again from the record
 *     before it, gives the same status, counters, output bytes and logs;
 *   - XR_AGAIN is a promise: the next call produces, consumes or waits
 *     again (XR_AGAIN), it does not return XR_OK having done nothing;
 *   - what goes upstream is HTTP that an independent parser (a fresh
 *     http-parser over the OUT[UP] stream) reads without error, and every
 *     request in it obeys the rules: method allowed, no Host header and no
 *     absolute-form target naming a denied host (compared as a server
 *     would: whitespace and port off), no denied or removed header, no
 *     hop-by-hop header but the proxy's own Connection, a Via, not both
 *     Content-Length and Transfer-Encoding, a head below the rewrite limit;
 *   - what goes to the client is, between two log records (one per
 *     request: a response complete, or a refusal sent), interim responses
 *     and then exactly one response, ending exactly at the record (or at
 *     the server's close, for one that runs until it), framed for the
 *     request's method; hop-by-hop headers dropped there too;
 *   - a refused request gets an HTTP error response with the status the
 *     record says, in its turn: every request forwarded before it has its
 *     response (a 502 stands for the response of the first one); after
 *     it, nothing more goes upstream.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <http_parser.h>

#include "core/xrayd.h"
#include "core/log.h"
#include "core/frontdoor.h"
#include "proxy/http.h"
#include "proxy/proxy_conf.h"
#include "relay/conn.h"

#include "wire.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define XR_FZ_MAX_INPUT (1u << 16)
#define XR_FZ_MAX_OUT   (1u << 22) /* per direction; more ends the run */
#define XR_FZ_HEADER    4096       /* max_header_size */
#define XR_FZ_HEAD_CAP  (XR_FZ_HEADER + 512)
#define XR_FZ_ROUNDS    8 /* conn.c's XR_PUMP_ROUNDS */

/* XR_FUZZ_TRACE=1 in the environment prints every step (for a reproducer),
 * XR_FUZZ_TRACE=2 every byte produced as well. */
static int xr_fz_trace = -1;

#define XR_FZ_TRACE(...)                                                                           \
    do {                                                                                           \
        if (xr_fz_trace > 0)                                                                       \
            fprintf(stderr, __VA_ARGS__);                                                          \
    } while (0)

/* ---- the proxy block ---------------------------------------------------------- */

static char *xr_fz_methods[] = {"GET", "HEAD", "POST"};
static char *xr_fz_deny[] = {"denied.example", "*.evil.example"};
static char *xr_fz_deny_h[] = {"X-Forbidden"};
static char *xr_fz_remove_h[] = {"X-Internal"};
static size_t xr_fz_methods_l[] = {3, 4, 4};
static size_t xr_fz_deny_l[] = {14, 14};
static size_t xr_fz_deny_h_l[] = {11};
static size_t xr_fz_remove_h_l[] = {10};

static xr_http_conf_t xr_fz_hc;
static xr_relay_conf_t xr_fz_rc;
static xr_proxy_conf_t xr_fz_pc;
static xr_relay_rt_t xr_fz_rt;

extern const xr_frontdoor_t xr_proxy_frontdoor;

/* The block's one filter: a log hook that checks every record. */
static void xr_fz_log_hook(void *conf, void *state, xr_session_t *s);
static const xr_module_t xr_fz_logger = {XR_MODULE_HEAD, .name = "fuzz_log", .version = "1",
                                         .log = xr_fz_log_hook};
static xr_filter_conf_t xr_fz_filter = {.module = &xr_fz_logger};

static void xr_fz_conf(void)
{
    static int done;
    if (done)
        return;
    done = 1;
    xr_fz_trace = getenv("XR_FUZZ_TRACE") ? atoi(getenv("XR_FUZZ_TRACE")) : 0;
    /* What xr_proxy_set_http and xr_proxy_check leave for such a block. */
    xr_fz_hc.methods = (xr_str_list_t){3, xr_fz_methods, xr_fz_methods_l};
    xr_fz_hc.hosts_deny = (xr_str_list_t){2, xr_fz_deny, xr_fz_deny_l};
    xr_fz_hc.deny_headers = (xr_str_list_t){1, xr_fz_deny_h, xr_fz_deny_h_l};
    xr_fz_hc.remove_headers = (xr_str_list_t){1, xr_fz_remove_h, xr_fz_remove_h_l};
    xr_fz_hc.max_header_size = XR_FZ_HEADER;
    xr_fz_hc.via = "xrayd";
    xr_fz_rc.name = "fuzz";
    xr_fz_rc.frontdoor = &xr_proxy_frontdoor;
    xr_fz_rc.filters = &xr_fz_filter;
    xr_fz_rc.nfilters = 1;
    xr_fz_pc.mode = XR_PROXY_HTTP;
    xr_fz_pc.http = &xr_fz_hc;
    xr_fz_rc.ext = &xr_fz_pc;
    xr_fz_rc.buffer_size = 2 * XR_FZ_HEADER;
    XR_FZ_CHECK(xr_fz_hc.max_header_size <= xr_fz_rc.buffer_size / 2);
    xr_relay_rt_init(&xr_fz_rt, &xr_fz_rc);
    /* Log lines are formatted (peers' bytes go into them) but not kept. */
    if (xr_log_open("/dev/null", XR_LOG_INFO) != XR_OK)
        xr_log_set_level(XR_LOG_EMERG);
}

/* ---- heads, as an independent reader sees them ------------------------------------ */

#define XR_FZ_HEADS_MAX 256
#define XR_FZ_HEAD_BUF  (2 * XR_FZ_HEAD_CAP)

typedef struct {
    char buf[XR_FZ_HEAD_BUF];
    size_t used;
    struct {
        uint32_t name, nlen, value, vlen;
    } h[XR_FZ_HEADS_MAX];
    int n, cur; /* cur: 1 url, 2 field, 3 value, 4 status */
    uint32_t url, ulen;
    int overflow;
} xr_fz_head_t;

static void xr_fz_head_reset(xr_fz_head_t *h)
{
    h->used = 0;
    h->n = h->cur = 0;
    h->url = h->ulen = 0;
    h->overflow = 0;
}

static int xr_fz_head_add(xr_fz_head_t *h, int what, const char *at, size_t n)
{
    if (h->overflow || h->used + n > sizeof(h->buf)) {
        h->overflow = 1;
        return 1;
    }
    if (what != h->cur) {
        if (what == 2) {
            if (h->n == XR_FZ_HEADS_MAX) {
                h->overflow = 1;
                return 1;
            }
            h->h[h->n].name = (uint32_t) h->used;
            h->h[h->n].nlen = 0;
            h->h[h->n].value = (uint32_t) h->used;
            h->h[h->n].vlen = 0;
            h->n++;
        } else if (what == 3 && h->n > 0) {
            h->h[h->n - 1].value = (uint32_t) h->used;
        } else if (what == 1) {
            h->url = (uint32_t) h->used;
        }
        h->cur = what;
    }
    memcpy(h->buf + h->used, at, n);
    h->used += n;
    if (what == 1)
        h->ulen += (uint32_t) n;
    else if (what == 2)
        h->h[h->n - 1].nlen += (uint32_t) n;
    else if (what == 3 && h->n > 0)
        h->h[h->n - 1].vlen += (uint32_t) n;
    return 0;
}

static int xr_fz_is(const xr_fz_head_t *h, int i, const char *name)
{
    size_t n = strlen(name);
    return h->h[i].nlen == n && strncasecmp(h->buf + h->h[i].name, name, n) == 0;
}

static int xr_fz_count(const xr_fz_head_t *h, const char *name)
{
    int k = 0;
    for (int i = 0; i < h->n; i++)
        k += xr_fz_is(h, i, name);
    return k;
}

/* Is s[0..n) a token (RFC 9110 5.6.2)?  The lenient parser lets a space
 * into a header name, which a server must refuse (RFC 9112 5.1). */
static int xr_fz_token(const char *s, size_t n)
{
    static const char tchar[] = "!#$%&'*+-.^_`|~";
    if (n == 0)
        return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char) s[i];
        if (!(c >= '0' && c <= '9') && !(c >= 'a' && c <= 'z') && !(c >= 'A' && c <= 'Z') &&
            (c == '\0' || strchr(tchar, c) == NULL))
            return 0;
    }
    return 1;
}

/* Header names are tokens; hop-by-hop headers may not pass; Connection
 * only as the proxy's own; the proxy's Via is there. */
static void xr_fz_check_hop(const xr_fz_head_t *h, const char *where)
{
    for (int i = 0; i < h->n; i++)
        if (!xr_fz_token(h->buf + h->h[i].name, h->h[i].nlen))
            XR_FZ_FAIL("%s head carries header name [%.*s]", where, (int) h->h[i].nlen,
                       h->buf + h->h[i].name);
    static const char *const hop[] = {"keep-alive",          "proxy-connection",   "te",
                                      "proxy-authorization", "proxy-authenticate", "upgrade"};
    for (int i = 0; i < h->n; i++) {
        for (size_t k = 0; k < XR_ARRAY_SIZE(hop); k++)
            if (xr_fz_is(h, i, hop[k]))
                XR_FZ_FAIL("%s head carries hop-by-hop header %s", where, hop[k]);
        if (xr_fz_is(h, i, "connection")) {
            const char *v = h->buf + h->h[i].value;
            size_t vl = h->h[i].vlen;
            if (!(vl == 5 && strncasecmp(v, "close", 5) == 0) &&
                !(vl == 10 && strncasecmp(v, "keep-alive", 10) == 0))
                XR_FZ_FAIL("%s head carries Connection: %.*s", where, (int) vl, v);
        }
    }
    int via = 0;
    for (int i = 0; i < h->n; i++)
        if (xr_fz_is(h, i, "via") && h->h[i].vlen >= 6 &&
            memcmp(h->buf + h->h[i].value + h->h[i].vlen - 6, " xrayd", 6) == 0)
            via = 1;
    if (!via)
        XR_FZ_FAIL("%s head has no Via of the proxy", where);
}

/* Is host[0..n) denied, as a server would read it: optional whitespace
 * around it and the port off? */
static int xr_fz_host_denied(const char *v, size_t n)
{
    while (n > 0 && (v[0] == ' ' || v[0] == '\t'))
        v++, n--;
    while (n > 0 && (v[n - 1] == ' ' || v[n - 1] == '\t'))
        n--;
    size_t e = n;
    if (n > 0 && v[0] == '[') {
        const char *rb = memchr(v, ']', n);
        e = rb ? (size_t) (rb - v) + 1 : n;
    } else {
        const char *colon = memchr(v, ':', n);
        if (colon)
            e = (size_t) (colon - v);
    }
    return xr_http_host_match(&xr_fz_hc.hosts_deny, v, e);
}

/* ---- the upstream's reader -------------------------------------------------------- */

typedef struct {
    http_parser p;
    xr_fz_head_t h;
    uint64_t pos;   /* OUT[UP] bytes read */
    uint64_t heads; /* request heads read */
} xr_fz_up_t;

static xr_fz_up_t *xr_fz_upr(http_parser *p)
{
    return p->data;
}

static int xr_fz_up_begin(http_parser *p)
{
    xr_fz_head_reset(&xr_fz_upr(p)->h);
    return 0;
}

static int xr_fz_up_url(http_parser *p, const char *at, size_t n)
{
    return xr_fz_head_add(&xr_fz_upr(p)->h, 1, at, n);
}

static int xr_fz_up_field(http_parser *p, const char *at, size_t n)
{
    return xr_fz_head_add(&xr_fz_upr(p)->h, 2, at, n);
}

static int xr_fz_up_value(http_parser *p, const char *at, size_t n)
{
    return xr_fz_head_add(&xr_fz_upr(p)->h, 3, at, n);
}

/* A whole request head went upstream: it must obey the rules. */
static int xr_fz_up_head(http_parser *p)
{
    xr_fz_up_t *u = xr_fz_upr(p);
    const xr_fz_head_t *h = &u->h;
    const char *method = http_method_str((enum http_method) p->method);
    int ok = 0;
    for (size_t i = 0; i < xr_fz_hc.methods.n; i++)
        ok |= strcmp(method, xr_fz_hc.methods.items[i]) == 0;
    if (!ok)
        XR_FZ_FAIL("a %s request went upstream", method);
    for (int i = 0; i < h->n; i++)
        if (xr_fz_is(h, i, "host") && xr_fz_host_denied(h->buf + h->h[i].value, h->h[i].vlen))
            XR_FZ_FAIL("a request for denied Host [%.*s] went upstream", (int) h->h[i].vlen,
                       h->buf + h->h[i].value);
    if (h->ulen > 0 && h->buf[h->url] != '/' && h->buf[h->url] != '*') {
        struct http_parser_url pu;
        http_parser_url_init(&pu);
        if (http_parser_parse_url(h->buf + h->url, h->ulen, 0, &pu) == 0 &&
            (pu.field_set & (1 << UF_HOST)) &&
            xr_fz_host_denied(h->buf + h->url + pu.field_data[UF_HOST].off,
                              pu.field_data[UF_HOST].len))
            XR_FZ_FAIL("a request for denied target [%.*s] went upstream", (int) h->ulen,
                       h->buf + h->url);
    }
    if ((p->http_major > 1 || (p->http_major == 1 && p->http_minor >= 1)) &&
        xr_fz_count(h, "host") == 0)
        XR_FZ_FAIL("an HTTP/1.1 request without Host went upstream");
    for (size_t i = 0; i < xr_fz_hc.deny_headers.n; i++)
        if (xr_fz_count(h, xr_fz_hc.deny_headers.items[i]) > 0)
            XR_FZ_FAIL("a request with %s went upstream", xr_fz_hc.deny_headers.items[i]);
    for (size_t i = 0; i < xr_fz_hc.remove_headers.n; i++)
        if (xr_fz_count(h, xr_fz_hc.remove_headers.items[i]) > 0)
            XR_FZ_FAIL("%s was not removed", xr_fz_hc.remove_headers.items[i]);
    if (xr_fz_count(h, "content-length") > 0 && xr_fz_count(h, "transfer-encoding") > 0)
        XR_FZ_FAIL("Content-Length and Transfer-Encoding went upstream together");
    xr_fz_check_hop(h, "request");
    if (h->used >= XR_FZ_HEAD_CAP)
        XR_FZ_FAIL("a request head of more than %zu bytes went upstream", h->used);
    u->heads++;
    return 0;
}

static const http_parser_settings xr_fz_up_settings = {
    .on_message_begin = xr_fz_up_begin,
    .on_url = xr_fz_up_url,
    .on_header_field = xr_fz_up_field,
    .on_header_value = xr_fz_up_value,
    .on_headers_complete = xr_fz_up_head,
};

static void xr_fz_up_init(xr_fz_up_t *u)
{
    memset(u, 0, sizeof(*u));
    http_parser_init(&u->p, HTTP_REQUEST);
}

/* Read OUT[UP] bytes [pos, end) of stream s. */
static void xr_fz_up_feed(xr_fz_up_t *u, const xr_fz_buf_t *s, uint64_t end)
{
    while (u->pos < end) {
        const char *at = (const char *) s->p + u->pos;
        size_t len = (size_t) (end - u->pos);
        u->p.data = u;
        size_t n = http_parser_execute(&u->p, &xr_fz_up_settings, at, len);
        enum http_errno err = HTTP_PARSER_ERRNO(&u->p);
        u->pos += n;
        if (err == HPE_OK)
            continue;
        if (err == HPE_CLOSED_CONNECTION) {
            /* After a Connection: close the proxy may still forward what
             * the client sent; each message is read on its own. */
            http_parser_init(&u->p, HTTP_REQUEST);
            continue;
        }
        XR_FZ_FAIL("the upstream reads invalid HTTP at byte %llu: %s (%.*s)",
                   (unsigned long long) u->pos, http_errno_name(err), (int) XR_MIN(len - n, 40),
                   at + n);
    }
}

/* ---- the client's reader ---------------------------------------------------------- */

typedef struct {
    xr_fz_head_t h;
    int skip, done, status;
} xr_fz_down_t;

static int xr_fz_dn_begin(http_parser *p)
{
    xr_fz_head_reset(&((xr_fz_down_t *) p->data)->h);
    return 0;
}

static int xr_fz_dn_status(http_parser *p, const char *at, size_t n)
{
    return xr_fz_head_add(&((xr_fz_down_t *) p->data)->h, 4, at, n);
}

static int xr_fz_dn_field(http_parser *p, const char *at, size_t n)
{
    return xr_fz_head_add(&((xr_fz_down_t *) p->data)->h, 2, at, n);
}

static int xr_fz_dn_value(http_parser *p, const char *at, size_t n)
{
    return xr_fz_head_add(&((xr_fz_down_t *) p->data)->h, 3, at, n);
}

static int xr_fz_dn_head(http_parser *p)
{
    xr_fz_down_t *r = p->data;
    xr_fz_check_hop(&r->h, "response");
    r->status = p->status_code;
    /* RFC 9112 6.3: these end with their head, whatever they say. */
    return r->skip || (p->status_code >= 100 && p->status_code < 200) || p->status_code == 204 ||
           p->status_code == 304;
}

static int xr_fz_dn_done(http_parser *p)
{
    ((xr_fz_down_t *) p->data)->done = 1;
    http_parser_pause(p, 1);
    return 0;
}

static const http_parser_settings xr_fz_dn_settings = {
    .on_message_begin = xr_fz_dn_begin,
    .on_status = xr_fz_dn_status,
    .on_header_field = xr_fz_dn_field,
    .on_header_value = xr_fz_dn_value,
    .on_headers_complete = xr_fz_dn_head,
    .on_message_complete = xr_fz_dn_done,
};

/* The client's bytes [from, to) answer one request: interim responses,
 * then one response that ends at to (or at the server's close), of the
 * given status if that is not 0. */
static void xr_fz_down_segment(const xr_fz_buf_t *s, uint64_t from, uint64_t to, int head,
                               int at_eof, int status)
{
    static xr_fz_down_t r;
    uint64_t at = from;
    if (from == to)
        XR_FZ_FAIL("a log record with no response before it");
    for (;;) {
        http_parser p;
        http_parser_init(&p, HTTP_RESPONSE);
        memset(&r.h, 0, sizeof(r.h));
        r.skip = head;
        r.done = 0;
        r.status = 0;
        p.data = &r;
        size_t n = http_parser_execute(&p, &xr_fz_dn_settings, (const char *) s->p + at,
                                       (size_t) (to - at));
        at += n;
        if (!r.done && HTTP_PARSER_ERRNO(&p) == HPE_OK && at == to && at_eof)
            http_parser_execute(&p, &xr_fz_dn_settings, NULL, 0);
        if (!r.done)
            XR_FZ_FAIL("the client reads a response that does not end where the proxy "
                       "says (%s, %llu of %llu bytes)",
                       http_errno_name(HTTP_PARSER_ERRNO(&p)), (unsigned long long) (at - from),
                       (unsigned long long) (to - from));
        if (r.status >= 100 && r.status < 200) {
            if (at == to)
                XR_FZ_FAIL("a log record right after an interim response");
            continue;
        }
        if (at != to)
            XR_FZ_FAIL("the response ends %llu bytes before the proxy's record of it",
                       (unsigned long long) (to - at));
        if (status != 0 && r.status != status)
            XR_FZ_FAIL("a request refused with %d got a response of status %d", status, r.status);
        return;
    }
}

/* ---- the connection ------------------------------------------------------------- */

typedef struct {
    uint64_t hash;
    uint64_t n;
} xr_fz_logs_t;

/* What a step leaves, to be compared when it is done again. */
typedef struct {
    int rc, closed;
    uint64_t in_done[2], out_made[2];
    xr_fz_logs_t logs;
    char reason[96];
} xr_fz_result_t;

typedef struct {
    xr_fz_wire_t w;     /* the connection and its sockets */
    int owed[2];        /* process(d) said XR_AGAIN, and nothing has happened since */
    int posted;         /* a pump ran out of rounds */
    xr_fz_buf_t out[2]; /* every byte the stage produced into OUT[d] ... */
    uint64_t seen[2];   /* ... as far as it has been copied from the ring */
    uint64_t seg_start; /* the client's stream since the last log record */
    uint64_t answered;  /* responses logged (not refusals) */
    int refused;        /* a refusal went out */
    uint64_t up_frozen; /* OUT[UP] after it */
    uint64_t eof_end;   /* 1 + OUT[DOWN]'s end after eof(DOWN) ran (0: it has not) */
    int in_eof_down;    /* eof(DOWN) is running: a record it writes may end at the close */
    xr_fz_logs_t logs;  /* every log record */
    xr_fz_up_t up;      /* the upstream's reader */
    int torn;           /* '7': the next step that changes anything dies */
} xr_fz_conn_t;

static xr_fz_conn_t *xr_fz_cur;

static int xr_fz_closed(const xr_fz_conn_t *f)
{
    return xr_conn_is_closed(f->w.c);
}

/* Copy what the stage made in the OUT rings since the last look: it is
 * still there, since what is made and not sent never exceeds a ring. */
static void xr_fz_capture(xr_fz_conn_t *f)
{
    xr_conn_t *c = f->w.c;
    for (int d = 0; d < 2; d++) {
        uint64_t made = c->out_made[d];
        XR_FZ_CHECK(made >= c->p->given[1 - d]);
        if (made - c->p->given[1 - d] > c->rsize)
            XR_FZ_FAIL("OUT[%d] holds %llu bytes not sent, in a ring of %u", d,
                       (unsigned long long) (made - c->p->given[1 - d]), c->rsize);
        if (made <= f->seen[d])
            continue;
        if (made > XR_FZ_MAX_OUT)
            XR_FZ_FAIL("more than %u bytes of output", XR_FZ_MAX_OUT);
        xr_fz_buf_t *s = &f->out[d];
        xr_fz_buf_reserve(s, (size_t) made);
        xr_ring_get(c->ring[XR_RING_OUT_UP + d], c->rsize, f->seen[d], s->p + f->seen[d],
                    (size_t) (made - f->seen[d]));
        if (xr_fz_trace > 1) {
            fprintf(stderr, "  made %s [", d == XR_DIR_UP ? "up" : "down");
            for (uint64_t k = f->seen[d]; k < made; k++) {
                unsigned char ch = s->p[k];
                fprintf(stderr, ch >= 0x20 && ch < 0x7f && ch != '\\' ? "%c" : "\\x%02x", ch);
            }
            fprintf(stderr, "]\n");
        }
        f->seen[d] = s->len = (size_t) made;
    }
}

/* ---- log records ---------------------------------------------------------------- */

static void xr_fz_logs_add(xr_fz_logs_t *l, const void *p, size_t n)
{
    const unsigned char *b = p;
    uint64_t h = l->hash ? l->hash : 14695981039346656037ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ b[i]) * 1099511628211ull;
    l->hash = h;
}

/* An HTTP request's record, read back from its fields by name. */
typedef struct {
    const char *method, *host, *uri;
    int status, refused;
    uint64_t request_bytes, response_bytes;
} xr_fz_http_t;

static const xr_fz_http_t *xr_fz_http_of(const xr_record_t *r, xr_fz_http_t *h)
{
    if (r == NULL)
        return NULL;
    XR_FZ_CHECK(r->kind != NULL && strcmp(r->kind, "http") == 0);
    memset(h, 0, sizeof(*h));
    for (size_t i = 0; i < r->nfields; i++) {
        const xr_field_t *f = &r->fields[i];
        if (strcmp(f->name, "method") == 0)
            h->method = f->str;
        else if (strcmp(f->name, "host") == 0)
            h->host = f->str;
        else if (strcmp(f->name, "uri") == 0)
            h->uri = f->str;
        else if (strcmp(f->name, "status") == 0)
            h->status = (int) f->i;
        else if (strcmp(f->name, "refused") == 0)
            h->refused = (int) f->i;
        else if (strcmp(f->name, "request_bytes") == 0)
            h->request_bytes = f->u;
        else if (strcmp(f->name, "response_bytes") == 0)
            h->response_bytes = f->u;
    }
    return h;
}

/* A refusal's record: in its turn (every request forwarded before it is
 * answered, or a 502 answers the first one not yet answered). */
static void xr_fz_check_refusal(xr_fz_conn_t *f, const xr_fz_http_t *l)
{
    static const int statuses[] = {400, 403, 405, 431, 502};
    int known = 0;
    for (size_t i = 0; i < XR_ARRAY_SIZE(statuses); i++)
        known |= l->status == statuses[i];
    if (!known)
        XR_FZ_FAIL("refused with status %d", l->status);
    if (l->status == 502 ? f->answered >= f->up.heads : f->answered != f->up.heads)
        XR_FZ_FAIL("a %d went out with %llu of %llu forwarded requests answered", l->status,
                   (unsigned long long) f->answered, (unsigned long long) f->up.heads);
    f->refused = 1;
    f->up_frozen = f->w.c->out_made[XR_DIR_UP];
}

/* The block's log hook: every request's record, written once the client
 * has been given its whole response (the engine's delivered hook), or
 * when the connection closes with what it got by then. */
static void xr_fz_log_hook(void *conf, void *state, xr_session_t *s)
{
    xr_fz_conn_t *f = xr_fz_cur;
    XR_FZ_CHECK(f != NULL && f->w.c != NULL && s == &f->w.c->s);
    xr_conn_t *c = f->w.c;
    xr_fz_capture(f);
    xr_fz_http_t rec;
    const xr_fz_http_t *l = xr_fz_http_of(s->record, &rec);
    if (l == NULL)
        return; /* the connection's own record, after a cut */
    XR_FZ_CHECK(l->method != NULL && l->host != NULL && l->uri != NULL);
    xr_fz_logs_add(&f->logs, l->method, strlen(l->method) + 1);
    xr_fz_logs_add(&f->logs, l->host, strlen(l->host) + 1);
    xr_fz_logs_add(&f->logs, l->uri, strlen(l->uri) + 1);
    /* What it says was sent down ends that response. */
    uint64_t end = f->seg_start + s->written_total[XR_DIR_DOWN];
    XR_FZ_CHECK(end <= c->p->given[0] && end <= c->out_made[XR_DIR_DOWN]);
    uint64_t nums[5] = {(uint64_t) l->status, (uint64_t) l->refused, l->request_bytes,
                        l->response_bytes, end};
    xr_fz_logs_add(&f->logs, nums, sizeof(nums));
    f->logs.n++;
    XR_FZ_TRACE("  log: %s %s%s %d%s req %llu resp %llu\n", l->method, l->host, l->uri, l->status,
                l->refused ? " refused" : "", (unsigned long long) l->request_bytes,
                (unsigned long long) l->response_bytes);
    if (xr_fz_closed(f)) {
        /* Closing: the client may have got part of it only. */
        f->seg_start = end;
        return;
    }
    /* Every log record closes what the client got since the last one. */
    int head = !l->refused && strcmp(l->method, "HEAD") == 0;
    int at_close = f->eof_end == end + 1 || (f->in_eof_down && end == c->out_made[XR_DIR_DOWN]);
    xr_fz_down_segment(&f->out[XR_DIR_DOWN], f->seg_start, end, head, at_close && !l->refused,
                       l->refused ? l->status : 0);
    f->seg_start = end;
    xr_fz_up_feed(&f->up, &f->out[XR_DIR_UP], c->out_made[XR_DIR_UP]);
    XR_FZ_CHECK(!f->refused);
    if (l->refused) {
        xr_fz_check_refusal(f, l);
    } else {
        f->answered++;
        XR_FZ_CHECK(f->answered <= f->up.heads);
    }
}

/* ---- steps ---------------------------------------------------------------------- */

static void xr_fz_result(const xr_fz_conn_t *f, int rc, xr_fz_result_t *r)
{
    memset(r, 0, sizeof(*r));
    r->rc = rc;
    r->closed = xr_fz_closed(f);
    for (int d = 0; d < 2; d++) {
        r->in_done[d] = f->w.c->in_done[d];
        r->out_made[d] = f->w.c->out_made[d];
    }
    r->logs = f->logs;
    snprintf(r->reason, sizeof(r->reason), "%s", f->w.c->s.close_reason);
}

static int xr_fz_call(xr_fz_conn_t *f, int is_eof, int d)
{
    xr_conn_t *c = f->w.c;
    int rc;
    if (is_eof) {
        /* eof(DOWN) may write the record of a response that runs until the
         * server's close itself, when the client already has all of it. */
        f->in_eof_down = d == XR_DIR_DOWN;
        rc = c->h->eof(c, d);
        f->in_eof_down = 0;
        if (d == XR_DIR_DOWN)
            f->eof_end = c->out_made[XR_DIR_DOWN] + 1;
    } else {
        rc = c->h->process(c, d);
    }
    xr_fz_capture(f);
    return rc;
}

/* After a step that returned: the record must hold the live counters, so
 * whatever a peer is given was committed. */
static void xr_fz_check_record(xr_fz_conn_t *f)
{
    static xr_conn_t twin;
    twin = *f->w.c;
    twin.hs = NULL;
    if (twin.h->resume(&twin) != XR_OK)
        XR_FZ_FAIL("resume() refused the record just committed");
    for (int d = 0; d < 2; d++) {
        if (twin.in_done[d] != f->w.c->in_done[d] || twin.out_made[d] != f->w.c->out_made[d])
            XR_FZ_FAIL(
                "committed %s counters %llu/%llu, live %llu/%llu", d == XR_DIR_UP ? "up" : "down",
                (unsigned long long) twin.in_done[d], (unsigned long long) twin.out_made[d],
                (unsigned long long) f->w.c->in_done[d], (unsigned long long) f->w.c->out_made[d]);
    }
    twin.h->free(&twin);
}

/* The worker is gone: the engine's resumption from the slot. */
static void xr_fz_resume(xr_fz_conn_t *f)
{
    xr_conn_t *c = f->w.c;
    for (int d = 0; d < 2; d++) {
        c->in_done[d] = c->out_made[d] = 0xdeadbeefdeadbeefull; /* resume must set them */
        f->owed[d] = 0;
    }
    xr_fz_in_poison(&f->w, 0);
    if (xr_conn_detached_resume(c) != XR_OK)
        XR_FZ_FAIL("the committed record does not resume: %s", c->s.close_reason);
    xr_fz_poison_in(&f->w);
}

/* Everything the checks keep across a step, to put back when the step
 * is undone. */
typedef struct {
    xr_fz_result_t r;
    uint64_t seq, seg_start, answered, up_frozen, seen[2];
    int refused, again[2];
    xr_fz_up_t up;
} xr_fz_saved_t;

static void xr_fz_save(xr_fz_conn_t *f, xr_fz_saved_t *s)
{
    xr_fz_result(f, 0, &s->r);
    s->seq = f->w.c->p->commit_seq;
    s->seg_start = f->seg_start;
    s->answered = f->answered;
    s->up_frozen = f->up_frozen;
    s->refused = f->refused;
    s->up = f->up;
    for (int d = 0; d < 2; d++) {
        s->seen[d] = f->seen[d];
        s->again[d] = f->w.c->again[d];
    }
}

/* The worker died in the step just done, before its commit: the record
 * before it is intact, the output past it never went anywhere, and a new
 * worker does the step again from the same input; it must do the same. */
static int xr_fz_redo(xr_fz_conn_t *f, const xr_fz_saved_t *pre, const unsigned char *pre_rec,
                      int is_eof, int d, const xr_fz_result_t *post)
{
    xr_conn_t *c = f->w.c;
    static unsigned char made[2][XR_FZ_MAX_OUT / 64];
    size_t made_n[2];
    for (int k = 0; k < 2; k++) {
        made_n[k] = XR_MIN((size_t) (post->out_made[k] - pre->r.out_made[k]), sizeof(made[k]));
        if (made_n[k] > 0)
            memcpy(made[k], f->out[k].p + pre->r.out_made[k], made_n[k]);
    }
    c->p->commit_seq = pre->seq;
    if (memcmp(pre_rec, xr_pslot_record(c->p), XR_PSTATE_MAX) != 0)
        XR_FZ_FAIL("a commit overwrote the record in use");
    f->logs = pre->r.logs;
    f->seg_start = pre->seg_start;
    f->answered = pre->answered;
    f->refused = pre->refused;
    f->up_frozen = pre->up_frozen;
    f->up = pre->up;
    xr_fz_resume(f);
    for (int k = 0; k < 2; k++) {
        XR_FZ_CHECK(c->in_done[k] == pre->r.in_done[k] && c->out_made[k] == pre->r.out_made[k]);
        f->seen[k] = pre->seen[k];
        c->again[k] = pre->again[k];
    }
    int rc = xr_fz_call(f, is_eof, d);
    xr_fz_result_t again_r;
    xr_fz_result(f, rc, &again_r);
    if (again_r.rc != post->rc || again_r.closed != post->closed ||
        strcmp(again_r.reason, post->reason) != 0 || again_r.logs.n != post->logs.n ||
        again_r.logs.hash != post->logs.hash)
        XR_FZ_FAIL("the step done again differs: rc %d/%d closed %d/%d logs %llu/%llu", post->rc,
                   again_r.rc, post->closed, again_r.closed, (unsigned long long) post->logs.n,
                   (unsigned long long) again_r.logs.n);
    for (int k = 0; k < 2; k++) {
        if (again_r.in_done[k] != post->in_done[k] || again_r.out_made[k] != post->out_made[k])
            XR_FZ_FAIL(
                "the step done again moved %d to %llu/%llu, not %llu/%llu", k,
                (unsigned long long) again_r.in_done[k], (unsigned long long) again_r.out_made[k],
                (unsigned long long) post->in_done[k], (unsigned long long) post->out_made[k]);
        if (made_n[k] > 0 && memcmp(made[k], f->out[k].p + pre->r.out_made[k], made_n[k]) != 0)
            XR_FZ_FAIL("the step done again produced other bytes (direction %d)", k);
    }
    return rc;
}

/* One call of the stage, with every check around it. */
static int xr_fz_step(xr_fz_conn_t *f, int is_eof, int d)
{
    xr_conn_t *c = f->w.c;
    XR_FZ_CHECK(!xr_fz_closed(f));
    static unsigned char pre_rec[XR_PSTATE_MAX];
    static xr_fz_saved_t pre;
    xr_fz_result_t post;
    xr_fz_save(f, &pre);
    int owed = f->owed[d];
    memcpy(pre_rec, xr_pslot_record(c->p), XR_PSTATE_MAX);

    int rc = xr_fz_call(f, is_eof, d);
    xr_fz_result(f, rc, &post);
    XR_FZ_TRACE("  %s(%s) = %d: in %llu/%llu out %llu/%llu taken %llu/%llu given %llu/%llu%s\n",
                is_eof ? "eof" : "process", d ? "down" : "up", rc,
                (unsigned long long) c->in_done[0], (unsigned long long) c->in_done[1],
                (unsigned long long) c->out_made[0], (unsigned long long) c->out_made[1],
                (unsigned long long) c->p->taken[0], (unsigned long long) c->p->taken[1],
                (unsigned long long) c->p->given[0], (unsigned long long) c->p->given[1],
                post.closed ? " closed" : "");

    int changed = post.closed || memcmp(pre_rec, xr_pslot_record(c->p), XR_PSTATE_MAX) != 0;
    for (int k = 0; k < 2; k++)
        changed |= post.in_done[k] != pre.r.in_done[k] || post.out_made[k] != pre.r.out_made[k];
    if (f->torn && changed) {
        f->torn = 0;
        /* A step that closed the connection cannot be undone here (its
         * state is gone): only the others are done again. */
        if (!post.closed)
            rc = xr_fz_redo(f, &pre, pre_rec, is_eof, d, &post);
    }

    for (int k = 0; k < 2; k++) {
        XR_FZ_CHECK(c->in_done[k] <= c->p->taken[k]);
        XR_FZ_CHECK(post.in_done[k] >= pre.r.in_done[k]);
        XR_FZ_CHECK(post.out_made[k] >= pre.r.out_made[k]);
    }
    if (f->refused && c->out_made[XR_DIR_UP] != f->up_frozen)
        XR_FZ_FAIL("%llu bytes went upstream after a refusal",
                   (unsigned long long) (c->out_made[XR_DIR_UP] - f->up_frozen));
    if (xr_fz_closed(f))
        return XR_ERROR;
    XR_FZ_CHECK(rc == XR_OK || rc == XR_AGAIN);
    XR_FZ_CHECK(is_eof ? rc == XR_OK : 1);
    if (!is_eof && owed && rc == XR_OK && !changed)
        XR_FZ_FAIL("process(%s) said XR_AGAIN, then XR_OK having done nothing",
                   d == XR_DIR_UP ? "up" : "down");
    if (changed)
        f->owed[0] = f->owed[1] = 0;
    if (!is_eof) {
        c->again[d] = rc == XR_AGAIN;
        if (rc == XR_AGAIN)
            f->owed[d] = 1;
    }
    xr_fz_poison_in(&f->w);
    xr_fz_check_record(f);
    return rc;
}

/* ---- the engine's pump, without sockets ----------------------------------------------- */

/* conn.c after a pump: half-close once a direction's output is out, end
 * the connection when the stage is finished or both directions are done. */
static void xr_fz_end_check(xr_fz_conn_t *f)
{
    xr_conn_t *c = f->w.c;
    if (xr_fz_closed(f))
        return;
    for (int d = 0; d < 2; d++)
        if (c->out_closed[d] && c->out_made[d] == c->p->given[1 - d])
            c->end[1 - d].wr_shut = 1;
    if (c->h->finished != NULL && c->h->finished(c)) {
        xr_conn_close(c, NULL);
        return;
    }
    int done = 1;
    for (int d = 0; d < 2; d++)
        done &= c->end[d].rd_eof && c->end[1 - d].wr_shut && c->out_made[d] == c->p->given[1 - d];
    if (done)
        xr_conn_close(c, NULL);
}

/* conn.c's xr_cn_pump for direction d, writing aside (the peers read
 * when the input says so). */
static void xr_fz_pump(xr_fz_conn_t *f, int d)
{
    xr_conn_t *c = f->w.c;
    int round;
    for (round = 0; round < XR_FZ_ROUNDS && !xr_fz_closed(f); round++) {
        int moved = xr_fz_read(&f->w, d);
        int rd_eof = c->end[d].rd_eof;
        if (c->in_done[d] < c->p->taken[d] || (rd_eof && !c->out_closed[d]) || c->again[d]) {
            uint64_t before = c->out_made[0] + c->out_made[1] + c->in_done[d];
            int rc = xr_fz_step(f, 0, d);
            if (rc == XR_ERROR)
                return;
            if (rd_eof && !c->out_closed[d] && rc == XR_OK) {
                if (xr_fz_step(f, 1, d) != XR_OK)
                    return;
                if (c->in_done[d] == c->p->taken[d])
                    c->out_closed[d] = 1;
            }
            if (c->out_made[0] + c->out_made[1] + c->in_done[d] != before)
                moved = 1;
        }
        if (!moved)
            break;
    }
    if (round == XR_FZ_ROUNDS)
        f->posted = 1;
    xr_fz_end_check(f);
}

/* Something happened at end e: conn.c pumps e's direction, then the
 * other; then the posted callbacks run. */
static void xr_fz_event(xr_fz_conn_t *f, int e)
{
    if (xr_fz_closed(f))
        return;
    xr_fz_pump(f, e);
    if (!xr_fz_closed(f))
        xr_fz_pump(f, 1 - e);
    for (int i = 0; i < 64 && f->posted && !xr_fz_closed(f); i++) {
        f->posted = 0;
        xr_fz_pump(f, XR_DIR_UP);
        if (!xr_fz_closed(f))
            xr_fz_pump(f, XR_DIR_DOWN);
    }
    f->posted = 0;
    if (!xr_fz_closed(f)) {
        xr_fz_up_feed(&f->up, &f->out[XR_DIR_UP], f->w.c->out_made[XR_DIR_UP]);
        xr_fz_end_check(f);
    }
}

/* End e reads up to n bytes of what goes to it (OUT[1 - e]). */
static int xr_fz_drain(xr_fz_conn_t *f, int e, size_t n)
{
    xr_conn_t *c = f->w.c;
    int d = 1 - e;
    if (xr_fz_closed(f))
        return 0;
    xr_fz_capture(f);
    uint64_t ready = c->out_made[d] - c->p->given[e];
    size_t k = (size_t) XR_MIN((uint64_t) n, ready);
    if (k == 0)
        return 0;
    /* What the ring holds is what the stage made. */
    static unsigned char tmp[1 << 16];
    for (size_t done = 0; done < k;) {
        size_t m = XR_MIN(k - done, sizeof(tmp));
        xr_ring_get(c->ring[XR_RING_OUT_UP + d], c->rsize, c->p->given[e] + done, tmp, m);
        if (memcmp(tmp, f->out[d].p + c->p->given[e] + done, m) != 0)
            XR_FZ_FAIL("OUT[%d] does not hold what was made", d);
        done += m;
    }
    c->p->given[e] += k;
    /* As conn.c after a write to the client: answered requests it now has
     * whole get their records (the event that follows pumps both ways, so
     * room made in the queue is used). */
    if (e == 0 && c->h->delivered != NULL)
        c->h->delivered(c, 0);
    return 1;
}

static void xr_fz_open(xr_fz_conn_t *f, unsigned cfg)
{
    memset(f, 0, sizeof(*f));
    xr_fz_cur = f;
    xr_fz_rc.buffer_size = 2 * XR_FZ_HEADER + 4096 * (cfg & 3);
    xr_fz_up_init(&f->up);
    f->w.c = xr_conn_detached_new(&xr_fz_rt, 1, XR_HTTP_STAGE_PLAIN);
    XR_FZ_CHECK(!xr_fz_closed(f) && f->w.c->h != NULL);
    /* Through a parent proxy, as the front door's target hook says. */
    f->w.c->upstream_idx = (cfg & 4) ? 0 : -1;
    xr_fz_poison_in(&f->w);
    xr_fz_check_record(f);
}

static void xr_fz_shut(xr_fz_conn_t *f)
{
    xr_fz_in_poison(&f->w, 0);
    xr_conn_detached_free(f->w.c);
    f->w.c = NULL;
    for (int d = 0; d < 2; d++) {
        xr_fz_buf_free(&f->w.sock[d]);
        xr_fz_buf_free(&f->out[d]);
    }
    xr_fz_cur = NULL;
}

static size_t xr_fz_len(const uint8_t *data, size_t size, size_t *i)
{
    size_t n = 0;
    for (int k = 0; k < 2; k++)
        n = n << 8 | (*i < size ? data[(*i)++] : 0);
    return n;
}

/* Operation op of the input at *i. */
static void xr_fz_op(xr_fz_conn_t *f, int op, const uint8_t *data, size_t size, size_t *i)
{
    size_t n;
    switch (op) {
    case 0:
    case 1: {
        n = xr_fz_len(data, size, i);
        n = XR_MIN(n, size - *i);
        if (!f->w.peer_fin[op]) { /* nothing after a close */
            xr_fz_buf_t *s = &f->w.sock[op];
            xr_fz_buf_reserve(s, s->len + n + 1);
            memcpy(s->p + s->len, data + *i, n);
            s->len += n;
        }
        *i += n;
        if (!f->w.peer_fin[op])
            xr_fz_event(f, op);
        break;
    }
    case 2:
    case 3:
        n = xr_fz_len(data, size, i);
        if (xr_fz_drain(f, op - 2, n))
            xr_fz_event(f, op - 2);
        break;
    case 4:
    case 5:
        f->w.peer_fin[op - 4] = 1;
        xr_fz_event(f, op - 4);
        break;
    case 6:
        xr_fz_resume(f);
        xr_fz_check_record(f);
        xr_fz_event(f, XR_DIR_UP);
        break;
    default: f->torn = 1; break;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size > XR_FZ_MAX_INPUT)
        return 0;
    xr_fz_conf();
    static xr_fz_conn_t f;
    xr_fz_open(&f, data[0]);
    size_t i = 1;
    while (i < size && !xr_fz_closed(&f)) {
        int op = data[i++] % 8;
        static const char *const names[] = {"client sends", "server sends",  "client reads",
                                            "server reads", "client closes", "server closes",
                                            "crash",        "torn"};
        XR_FZ_TRACE("%s\n", names[op]);
        xr_fz_op(&f, op, data, size, &i);
    }
    /* Both peers read until nothing moves. */
    for (int k = 0; k < 64 && !xr_fz_closed(&f); k++) {
        int moved = 0;
        for (int e = 0; e < 2 && !xr_fz_closed(&f); e++)
            if (xr_fz_drain(&f, e, SIZE_MAX)) {
                moved = 1;
                xr_fz_event(&f, e);
            }
        if (!moved)
            break;
    }
    if (!xr_fz_closed(&f))
        xr_fz_up_feed(&f.up, &f.out[XR_DIR_UP], f.w.c->out_made[XR_DIR_UP]);
    XR_FZ_TRACE("end: %s%s, %llu requests up, %llu answered, %llu log records\n",
                xr_fz_closed(&f) ? "closed " : "open", f.w.c->s.close_reason,
                (unsigned long long) f.up.heads, (unsigned long long) f.answered,
                (unsigned long long) f.logs.n);
    xr_fz_shut(&f);
    return 0;
}
