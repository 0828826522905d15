/*
 * http.c: the HTTP stage's machinery (see http.h): the committed record,
 * the queue of pending requests, the phases of each direction, what goes
 * from the IN rings to the OUT rings and when, and the access records.
 * What a head says and how it is rewritten is http_head.c's.
 *
 * Each direction is in one of three phases.  HEAD: bytes wait in the IN
 * ring until a whole head has come; it is parsed in one go (so the
 * committed parser is always at a message boundary or inside a body),
 * checked, and written rewritten into the OUT ring.  BODY: bytes go
 * through the parser (which finds where the message ends, chunked or
 * counted) and are copied to OUT unchanged.  CLOSED: after a refusal, the
 * client's further bytes are read and dropped; the connection ends once
 * the error page is out.
 *
 * Protocol upgrades (WebSocket) are not passed: Upgrade is a hop-by-hop
 * header, so the server answers as to a plain request.  A port that
 * carries upgrades belongs to a proxy block with mode: circuit.
 *
 * A refused request is answered in its turn: the queue of pending
 * requests holds forwarded and refused ones in order, and the error page
 * goes into the client's OUT ring only when every response before it is
 * complete.  The request is never forwarded: the head is checked, and
 * whatever of the body has already arrived is parsed, before a byte goes
 * upstream.
 */
#include "core/xrayd.h"
#include "core/log.h"
#include "proxy/http.h"
#include "proxy/http_head.h"
#include "relay/sock.h"
#include "relay/stage_pair.h"
#include "proxy/proxy_conf.h"

#include <http_parser.h>
#include <limits.h>
#include <stdio.h>
#include <sys/socket.h>

#define XR_HTTP_PIPELINE 8 /* requests awaiting their responses */

enum { XR_H_HEAD = 0, XR_H_BODY, XR_H_CLOSED };

/* A request awaiting its response (or its refusal's turn). */
typedef struct {
    uint16_t status; /* 0: forwarded; else the proxy's answer */
    uint8_t head;    /* a HEAD request: its response has no body */
    uint8_t pad;
    char method[12];
    char host[64];
    char uri[96];
    char why[112]; /* a refusal's reason, for the page and the log */
    uint64_t req_bytes;
} xr_hpend_t;

/* What a request's access record counts, beside its queue entry: where
 * its bytes are in the OUT rings (sent is what of that span the far end
 * was given), and of its response what the upstream sent. */
typedef struct {
    uint64_t up_start, up_end;     /* the request as forwarded, in OUT[UP] */
    uint64_t down_start, down_end; /* its response or error page, in OUT[DOWN] */
    uint64_t resp_read;            /* response bytes read from the upstream */
    uint64_t resp_bytes;           /* the record's response_bytes */
    uint16_t code;                 /* the status logged */
} xr_hacct_t;

/* The committed record (in the slot; see snapshot.h). */
typedef struct {
    uint64_t in_done[2], out_made[2];
    http_parser parser[2]; /* data pointer unused: set on every run */
    uint8_t phase[2];
    uint8_t npend, first;
    uint8_t close_after; /* an error page, or a response the close ended, went out: end after it */
    uint8_t keep_alive;  /* of the response being passed */
    uint16_t status;     /* of the response being passed */
    uint64_t resp_bytes; /* of the response being passed */
    xr_hpend_t pend[XR_HTTP_PIPELINE];
    /* After pend[], so that a record an older binary committed reads with
     * these zero: no answered request waiting for its access record.
     * Answered requests stay in the queue, the nlog entries before first,
     * until the client has been given their whole response: the record
     * then says what it really got. */
    uint64_t down_mark; /* where the response being produced starts in OUT[DOWN] */
    uint8_t nlog;
    xr_hacct_t acct[XR_HTTP_PIPELINE];
} xr_hrec_t;

_Static_assert(sizeof(xr_hrec_t) <= XR_PSTATE_MAX, "the HTTP record must fit its slot");

typedef struct {
    xr_hrec_t r; /* working copy; committed after each step */
} xr_hstate_t;

/* The head being parsed and the head being written: one connection's
 * step at a time, so one of each per worker. */
static struct {
    char *p;
    size_t cap;
} xr_scratch[2];

static char *xr_http_scratch(int which, size_t n)
{
    if (n > xr_scratch[which].cap) {
        free(xr_scratch[which].p);
        xr_scratch[which].cap = n;
        xr_scratch[which].p = xr_malloc(n);
    }
    return xr_scratch[which].p;
}

static xr_hrec_t *xr_rec(const xr_conn_t *c)
{
    return &((xr_hstate_t *) c->hs)->r;
}

static void xr_http_commit(xr_conn_t *c)
{
    xr_hrec_t *r = xr_rec(c);
    for (int d = 0; d < 2; d++) {
        r->in_done[d] = c->in_done[d];
        r->out_made[d] = c->out_made[d];
    }
    /* Commits come several times a request: copy the queue's live entries
     * only (a reader looks at no other), not all XR_HTTP_PIPELINE of them. */
    xr_hrec_t *to = xr_pslot_next(c->p);
    memcpy(to, r, offsetof(xr_hrec_t, pend));
    to->down_mark = r->down_mark;
    to->nlog = r->nlog;
    int oldest = r->first + XR_HTTP_PIPELINE - r->nlog;
    for (int i = 0; i < r->nlog + r->npend && i < XR_HTTP_PIPELINE; i++) {
        int k = (oldest + i) % XR_HTTP_PIPELINE;
        to->pend[k] = r->pend[k];
        to->acct[k] = r->acct[k];
    }
    xr_pslot_publish(c->p);
}

/* ---- answers of the proxy's own ---------------------------------------------- */

static size_t xr_error_page(const xr_conn_t *c, const xr_hpend_t *e, char *out, size_t cap)
{
    return xr_http_error_page(e->status, e->why, xr_proxy_conf(c->conf)->http->via, out, cap);
}

static uint64_t xr_span_sent(uint64_t given, uint64_t start, uint64_t end)
{
    return given <= start ? 0 : XR_MIN(given, end) - start;
}

/* Write the access record of queue entry k: its request, and what each
 * side was given of it and of its response. */
static void xr_http_log(xr_conn_t *c, int k)
{
    const xr_hrec_t *r = xr_rec(c);
    const xr_hpend_t *e = &r->pend[k];
    const xr_hacct_t *a = &r->acct[k];
    const xr_field_t f[] = {
        {"method", XR_FIELD_STR, e->method, 0, 0},
        {"host", XR_FIELD_STR, e->host, 0, 0},
        {"uri", XR_FIELD_STR, e->uri, 0, 0},
        {"status", XR_FIELD_INT, NULL, a->code, 0},
        {"refused", XR_FIELD_BOOL, NULL, e->status != 0, 0},
        {"request_bytes", XR_FIELD_UINT, NULL, 0, e->req_bytes},
        {"response_bytes", XR_FIELD_UINT, NULL, 0, a->resp_bytes},
    };
    const xr_record_t rec = {"http", f, XR_ARRAY_SIZE(f)};
    c->s.record = &rec;
    c->s.read_total[XR_DIR_UP] = e->req_bytes;
    c->s.read_total[XR_DIR_DOWN] = a->resp_read;
    c->s.written_total[XR_DIR_UP] = xr_span_sent(c->p->given[1], a->up_start, a->up_end);
    c->s.written_total[XR_DIR_DOWN] = xr_span_sent(c->p->given[0], a->down_start, a->down_end);
    xr_conn_log(c);
    c->s.record = NULL;
}

/* Write the records of answered requests whose responses the client has
 * been given whole (closing: all of them, with what it got).  1 when it
 * wrote any.  The caller commits. */
static int xr_http_write_logs(xr_conn_t *c, int closing)
{
    xr_hrec_t *r = xr_rec(c);
    int freed = 0;
    while (r->nlog > 0) {
        int k = (r->first + XR_HTTP_PIPELINE - r->nlog) % XR_HTTP_PIPELINE;
        if (!closing && c->p->given[0] < r->acct[k].down_end)
            break;
        xr_http_log(c, k);
        r->nlog--;
        freed = 1;
    }
    return freed;
}

/* The engine's delivered hook, between steps: records as above, committed
 * at once so a replacement does not write them again.  1 when that made
 * room in the queue for more requests. */
static int xr_http_delivered(xr_conn_t *c, int closing)
{
    if (c->hs == NULL)
        return 0;
    xr_hrec_t *r = xr_rec(c);
    int freed = xr_http_write_logs(c, closing);
    if (freed && !closing)
        xr_http_commit(c);
    return freed && r->npend + r->nlog < XR_HTTP_PIPELINE;
}

/* The request at the head of the queue has its answer in OUT[DOWN] whole
 * (a response of code, resp_read bytes from the upstream, or the proxy's
 * own page): its record waits for the client to be given it. */
static void xr_http_answered(xr_conn_t *c, int code, uint64_t resp_read, uint64_t resp_bytes)
{
    xr_hrec_t *r = xr_rec(c);
    xr_hacct_t *a = &r->acct[r->first];
    a->code = (uint16_t) code;
    a->resp_read = resp_read;
    a->resp_bytes = resp_bytes;
    a->down_start = r->down_mark;
    a->down_end = c->out_made[XR_DIR_DOWN];
    r->down_mark = a->down_end;
    r->first = (uint8_t) ((r->first + 1) % XR_HTTP_PIPELINE);
    r->npend--;
    r->nlog++;
    /* Inside a step, which commits once at its end (a second commit in one
     * step would overwrite the record a crash falls back to). */
    xr_http_write_logs(c, 0);
}

/* Answer refused requests whose turn it is: the client's output is at a
 * response boundary (DOWN is not in a body; CLOSED after a bad response
 * head, none of which went out) and no forwarded request precedes them. */
static int xr_http_refusals(xr_conn_t *c)
{
    xr_hrec_t *r = xr_rec(c);
    while (r->npend > 0 && r->phase[XR_DIR_DOWN] != XR_H_BODY && !r->close_after) {
        xr_hpend_t *e = &r->pend[r->first];
        if (e->status == 0)
            return XR_OK;
        char page[1024];
        size_t n = xr_error_page(c, e, page, sizeof(page));
        if (xr_conn_out_room(c, XR_DIR_DOWN) < n)
            return XR_AGAIN;
        xr_conn_emit(c, XR_DIR_DOWN, page, n);
        xr_log_session(XR_LOG_NOTICE, &c->s, "HTTP %s %s%s refused with %d: %s", e->method, e->host,
                       e->uri, e->status, e->why);
        xr_http_answered(c, e->status, 0, n);
        r->close_after = 1; /* what the client sent after it is dropped */
    }
    return XR_OK;
}

/* Queue request e, as forwarded from up_start to up_end of OUT[UP]. */
static void xr_pend_push(xr_hrec_t *r, const xr_hpend_t *e, uint64_t up_start, uint64_t up_end)
{
    int k = (r->first + r->npend) % XR_HTTP_PIPELINE;
    r->pend[k] = *e;
    r->acct[k] = (xr_hacct_t){.up_start = up_start, .up_end = up_end};
    r->npend++;
}

static void xr_pend_names(xr_hpend_t *e, const char *method, const char *host, const char *uri,
                          size_t ulen)
{
    xr_http_copy_field(e->method, sizeof(e->method), method, strlen(method));
    xr_http_copy_field(e->host, sizeof(e->host), host, strlen(host));
    xr_http_copy_field(e->uri, sizeof(e->uri), uri, ulen);
}

/* ---- requests (up) and responses (down) --------------------------------------- */

/* Copy what waits in IN[d] (at most cap bytes) into the scratch buffer. */
static size_t xr_http_peek(xr_conn_t *c, int d, size_t cap, char **buf)
{
    size_t avail = (size_t) XR_MIN(xr_conn_in_end(c, d) - c->in_done[d], (uint64_t) cap);
    *buf = xr_http_scratch(0, cap + 1);
    xr_ring_get(xr_conn_in_ring(c, d), c->rsize, c->in_done[d], *buf, avail);
    return avail;
}

/* Parse the head at the start of what waits.  1: whole (*used its
 * length), 0: not yet, -1: invalid (the reason in why, the status in
 * *status). */
static int xr_http_parse_head(xr_conn_t *c, int d, xr_head_t *h, http_parser *p, size_t *used,
                              int *status, char *why, size_t wl)
{
    const xr_http_conf_t *hc = xr_proxy_conf(c->conf)->http;
    char *buf;
    size_t avail = xr_http_peek(c, d, (size_t) hc->max_header_size, &buf);
    const xr_hrec_t *r = xr_rec(c);
    int skip_body = d == XR_DIR_DOWN && r->npend > 0 && r->pend[r->first].head;
    return xr_http_head_parse(buf, avail, (size_t) hc->max_header_size, d, skip_body, h, p, used,
                              status, why, wl);
}

/* Run the body part of what waits (at most max bytes) through p: how
 * many bytes belong to this message; *complete when it ended there;
 * *err set on invalid input. */
static size_t xr_http_body(xr_conn_t *c, int d, http_parser *p, uint64_t from, size_t max,
                           int *complete, enum http_errno *err)
{
    struct iovec iov[2];
    int k = xr_ring_iov(xr_conn_in_ring(c, d), c->rsize, from, max, iov);
    size_t total = 0;
    *complete = 0;
    *err = HPE_OK;
    for (int i = 0; i < k && iov[i].iov_len > 0; i++) {
        total += xr_http_body_run(p, iov[i].iov_base, iov[i].iov_len, complete);
        if (*complete)
            break;
        if (HTTP_PARSER_ERRNO(p) != HPE_OK) {
            *err = HTTP_PARSER_ERRNO(p);
            break;
        }
    }
    return total;
}

/* Write the rewritten head of h into OUT[d].  XR_AGAIN when OUT has no
 * room for it, XR_ERROR when it is too large. */
static int xr_http_emit_head(xr_conn_t *c, int d, const xr_head_t *h, const http_parser *p)
{
    const xr_http_conf_t *hc = xr_proxy_conf(c->conf)->http;
    size_t cap = (size_t) hc->max_header_size + 512;
    char *out = xr_http_scratch(1, cap);
    size_t n = xr_http_head_rewrite(h, p, d, c->upstream_idx >= 0, hc, out, cap);
    if (n >= cap)
        return XR_ERROR;
    if (xr_conn_out_room(c, d) < n)
        return XR_AGAIN;
    xr_conn_emit(c, d, out, n);
    return XR_OK;
}

/* Refuse the request whose head starts IN[UP]: queued for its turn; the
 * rest of what the client sends is dropped. */
static void xr_http_refuse(xr_conn_t *c, int status, const char *host, const char *method,
                           const char *uri, size_t ulen, const char *why)
{
    xr_hrec_t *r = xr_rec(c);
    xr_hpend_t e = {0};
    e.status = (uint16_t) status;
    xr_pend_names(&e, method, host, uri, ulen);
    snprintf(e.why, sizeof(e.why), "%.111s", why);
    e.req_bytes = xr_conn_in_end(c, XR_DIR_UP) - c->in_done[XR_DIR_UP];
    if (r->npend + r->nlog >= XR_HTTP_PIPELINE) { /* cannot happen: checked before parsing */
        xr_conn_close(c, "refused: %s", why);
        return;
    }
    xr_pend_push(r, &e, c->out_made[XR_DIR_UP], c->out_made[XR_DIR_UP]); /* none forwarded */
    r->phase[XR_DIR_UP] = XR_H_CLOSED;
    c->in_done[XR_DIR_UP] = xr_conn_in_end(c, XR_DIR_UP);
}

static int xr_http_up_head(xr_conn_t *c)
{
    xr_hrec_t *r = xr_rec(c);
    xr_head_t h;
    http_parser p;
    size_t used = 0;
    int status = 0;
    char why[160], host[64];
    int got = xr_http_parse_head(c, XR_DIR_UP, &h, &p, &used, &status, why, sizeof(why));
    if (got == 0)
        return XR_OK; /* not a whole head yet: nothing waits for room */
    if (r->npend + r->nlog >= XR_HTTP_PIPELINE)
        return XR_AGAIN; /* wait for responses (and their delivery) before taking it */
    if (got < 0) {
        xr_http_refuse(c, status, "-", "-", "", 0, why);
        return XR_OK;
    }
    const char *method = http_method_str((enum http_method) p.method);
    status = xr_http_head_check(&h, &p, xr_proxy_conf(c->conf)->http, host, sizeof(host), why,
                                sizeof(why));
    /* Whatever of the body has come is checked before the head goes
     * upstream: a bad chunk size is refused, not half-forwarded. */
    int has_body =
        (p.flags & F_CHUNKED) || (p.content_length > 0 && p.content_length != ULLONG_MAX);
    http_parser trial = p;
    int complete = 0;
    enum http_errno perr = HPE_OK;
    size_t rest = (size_t) (xr_conn_in_end(c, XR_DIR_UP) - c->in_done[XR_DIR_UP]) - used;
    if (status == 0 && has_body && rest > 0)
        xr_http_body(c, XR_DIR_UP, &trial, c->in_done[XR_DIR_UP] + used, rest, &complete, &perr);
    if (status == 0 && perr != HPE_OK) {
        status = 400;
        snprintf(why, sizeof(why), "invalid request body: %s", http_errno_description(perr));
    }
    if (status != 0) {
        xr_http_refuse(c, status, host[0] ? host : "-", method, h.base + h.url, h.ulen, why);
        return XR_OK;
    }
    uint64_t up_start = c->out_made[XR_DIR_UP];
    int rc = xr_http_emit_head(c, XR_DIR_UP, &h, &p);
    if (rc != XR_OK) {
        if (rc == XR_ERROR)
            xr_http_refuse(c, 431, host, method, h.base + h.url, h.ulen,
                           "rewritten head too large");
        return rc == XR_ERROR ? XR_OK : XR_AGAIN;
    }
    xr_hpend_t e = {0};
    xr_pend_names(&e, method, host[0] ? host : "-", h.base + h.url, h.ulen);
    e.head = p.method == HTTP_HEAD;
    e.req_bytes = used;
    xr_pend_push(r, &e, up_start, c->out_made[XR_DIR_UP]);
    c->in_done[XR_DIR_UP] += used;
    r->parser[XR_DIR_UP] = p;
    /* The head's parser is paused at its end; a message without a body
     * ends right there, with the head's last LF. */
    r->phase[XR_DIR_UP] = has_body ? XR_H_BODY : XR_H_HEAD;
    return XR_OK;
}

static int xr_http_down_head(xr_conn_t *c)
{
    xr_hrec_t *r = xr_rec(c);
    xr_head_t h;
    http_parser p;
    size_t used = 0;
    int status = 0;
    char why[160];
    if (r->npend == 0 || r->pend[r->first].status != 0) {
        xr_log_session(XR_LOG_NOTICE, &c->s, "the upstream sent a response nobody asked for");
        xr_conn_close(c, "unsolicited response");
        return XR_ERROR;
    }
    int got = xr_http_parse_head(c, XR_DIR_DOWN, &h, &p, &used, &status, why, sizeof(why));
    if (got == 0)
        return XR_OK;
    if (got < 0) {
        /* The client gets a 502 in place of what the server sent (none
         * of it has gone on), and the connection ends after it. */
        xr_hpend_t *e = &r->pend[r->first];
        e->status = (uint16_t) status;
        snprintf(e->why, sizeof(e->why), "%.111s", why);
        r->phase[XR_DIR_UP] = XR_H_CLOSED;
        c->in_done[XR_DIR_UP] = xr_conn_in_end(c, XR_DIR_UP);
        c->in_done[XR_DIR_DOWN] = xr_conn_in_end(c, XR_DIR_DOWN);
        int rc = xr_http_refusals(c);
        r->phase[XR_DIR_DOWN] = XR_H_CLOSED;
        return rc;
    }
    int rc = xr_http_emit_head(c, XR_DIR_DOWN, &h, &p);
    if (rc != XR_OK)
        return rc == XR_AGAIN ? XR_AGAIN : XR_ERROR;
    c->in_done[XR_DIR_DOWN] += used;
    r->parser[XR_DIR_DOWN] = p;
    r->status = (uint16_t) p.status_code;
    r->keep_alive = (uint8_t) http_should_keep_alive(&p);
    r->resp_bytes = used;
    int bodiless = h.skip_body || (p.status_code >= 100 && p.status_code < 200) ||
                   p.status_code == 204 || p.status_code == 304;
    int framed = (p.flags & F_CHUNKED) || p.content_length != ULLONG_MAX;
    if (bodiless || (framed && !(p.flags & F_CHUNKED) && p.content_length == 0)) {
        if (p.status_code >= 100 && p.status_code < 200)
            return XR_OK; /* an interim response: the final one follows */
        xr_http_answered(c, p.status_code, used, used);
        r->phase[XR_DIR_DOWN] = XR_H_HEAD;
        return xr_http_refusals(c);
    }
    r->phase[XR_DIR_DOWN] = XR_H_BODY; /* counted, chunked, or until the server closes */
    return XR_OK;
}

/* A body (or tunnel) step in direction d: as much as OUT has room for. */
static int xr_http_pass(xr_conn_t *c, int d)
{
    xr_hrec_t *r = xr_rec(c);
    uint64_t avail = xr_conn_in_end(c, d) - c->in_done[d];
    size_t max = (size_t) XR_MIN(avail, xr_conn_out_room(c, d));
    if (max == 0)
        return avail > 0 ? XR_AGAIN : XR_OK;
    int complete;
    enum http_errno err;
    http_parser *p = &r->parser[d];
    size_t n = xr_http_body(c, d, p, c->in_done[d], max, &complete, &err);
    xr_conn_pass(c, d, c->in_done[d], n);
    c->in_done[d] += n;
    if (d == XR_DIR_DOWN) {
        r->resp_bytes += n;
    } else if (r->npend > 0) {
        int k = (r->first + r->npend - 1) % XR_HTTP_PIPELINE;
        r->pend[k].req_bytes += n;
        r->acct[k].up_end = c->out_made[XR_DIR_UP];
    }
    if (err != HPE_OK) {
        /* The head went on already: all that can be done is to stop. */
        xr_log_session(XR_LOG_NOTICE, &c->s, "invalid %s body: %s",
                       d == XR_DIR_UP ? "request" : "response", http_errno_description(err));
        xr_conn_close(c, "invalid %s body", d == XR_DIR_UP ? "request" : "response");
        return XR_ERROR;
    }
    if (!complete)
        return XR_OK;
    r->phase[d] = XR_H_HEAD;
    if (d == XR_DIR_DOWN) {
        xr_http_answered(c, r->status, r->resp_bytes, r->resp_bytes);
        return xr_http_refusals(c);
    }
    return XR_OK;
}

static int xr_http_process(xr_conn_t *c, int d)
{
    xr_hrec_t *r = xr_rec(c);
    /* An error page that found the client's ring full (XR_AGAIN) goes out
     * now: no step below would try it again when there is no new input. */
    int rc = xr_http_refusals(c);
    for (int steps = 0; steps < 64 && rc == XR_OK; steps++) {
        uint64_t before = c->in_done[d] + c->out_made[0] + c->out_made[1];
        switch (r->phase[d]) {
        case XR_H_CLOSED:
            c->in_done[d] = xr_conn_in_end(c, d); /* read and dropped */
            rc = XR_OK;
            break;
        case XR_H_HEAD:
            if (c->in_done[d] == xr_conn_in_end(c, d))
                break;
            rc = d == XR_DIR_UP ? xr_http_up_head(c) : xr_http_down_head(c);
            if (rc == XR_OK && d == XR_DIR_UP)
                rc = xr_http_refusals(c);
            break;
        default: rc = xr_http_pass(c, d); break;
        }
        if (rc == XR_ERROR)
            return XR_ERROR;
        if (c->in_done[d] + c->out_made[0] + c->out_made[1] == before)
            break;
    }
    xr_http_commit(c);
    return rc == XR_AGAIN ? XR_AGAIN : XR_OK;
}

static int xr_http_eof(xr_conn_t *c, int d)
{
    xr_hrec_t *r = xr_rec(c);
    if (r->phase[d] == XR_H_HEAD && c->in_done[d] < xr_conn_in_end(c, d)) {
        /* A head cut short by the end of the stream goes nowhere. */
        xr_log_session(XR_LOG_INFO, &c->s, "%llu bytes of an unfinished %s head dropped at the end",
                       (unsigned long long) (xr_conn_in_end(c, d) - c->in_done[d]),
                       d == XR_DIR_UP ? "request" : "response");
        c->in_done[d] = xr_conn_in_end(c, d);
    }
    if (d == XR_DIR_DOWN && r->phase[d] == XR_H_BODY) {
        /* A response that runs until the server closes ends here. */
        int complete;
        xr_http_body_end(&r->parser[d], &complete);
        if (complete && r->npend > 0) {
            xr_http_answered(c, r->status, r->resp_bytes, r->resp_bytes);
            /* The server's close ended it, so nothing can follow it on this
             * connection (the client reads to the close): requests still
             * queued get no answer, and the connection ends once this one
             * is out. */
            r->phase[d] = XR_H_CLOSED;
            r->close_after = 1;
        }
    }
    if (d == XR_DIR_DOWN && r->phase[d] == XR_H_HEAD)
        xr_http_refusals(c);
    xr_http_commit(c);
    return XR_OK;
}

static int xr_http_resume(xr_conn_t *c)
{
    if (c->hs == NULL)
        c->hs = xr_calloc(1, sizeof(xr_hstate_t));
    xr_hrec_t *r = xr_rec(c);
    memcpy(r, xr_pslot_record(c->p), sizeof(*r));
    if (r->npend + r->nlog > XR_HTTP_PIPELINE || r->first >= XR_HTTP_PIPELINE ||
        r->phase[0] > XR_H_CLOSED || r->phase[1] > XR_H_CLOSED)
        return XR_ERROR;
    /* Entries outside the queue hold what older commits left; none is read
     * before it is written, but no string of the record may run off. */
    for (int i = 0; i < XR_HTTP_PIPELINE; i++) {
        xr_hpend_t *e = &r->pend[i];
        e->method[sizeof(e->method) - 1] = e->host[sizeof(e->host) - 1] = 0;
        e->uri[sizeof(e->uri) - 1] = e->why[sizeof(e->why) - 1] = 0;
    }
    for (int d = 0; d < 2; d++) {
        c->in_done[d] = r->in_done[d];
        c->out_made[d] = r->out_made[d];
    }
    return XR_OK;
}

static void xr_http_free(xr_conn_t *c)
{
    free(c->hs);
    c->hs = NULL;
}

int xr_http_start(xr_conn_t *c)
{
    if (c->hs == NULL)
        c->hs = xr_calloc(1, sizeof(xr_hstate_t));
    memset(xr_rec(c), 0, sizeof(xr_hrec_t));
    for (int d = 0; d < 2; d++)
        c->in_done[d] = c->out_made[d] = 0;
    xr_http_commit(c);
    return XR_OK;
}

void xr_http_unreachable(xr_conn_t *c)
{
    char page[1024], dst[64];
    xr_hpend_t e = {.status = 502};
    snprintf(e.why, sizeof(e.why), "%s cannot be reached",
             xr_addr_format(&c->p->dst, dst, sizeof(dst)));
    size_t n = xr_error_page(c, &e, page, sizeof(page));
    int fd = c->end[0].io.fd;
    if (fd < 0)
        return;
    /* Nothing was read from the client yet: the page is all it gets, and
     * a small one fits an empty socket buffer.  Its request is read and
     * dropped, or closing with it unread would reset the connection. */
    if (send(fd, page, n, MSG_NOSIGNAL | MSG_DONTWAIT) > 0)
        c->p->given[0] += n;
    xr_drain_unread(fd);
}

static int xr_http_finished(const xr_conn_t *c)
{
    const xr_hrec_t *r = c->hs ? xr_rec(c) : NULL;
    return r != NULL && r->close_after && c->p->given[0] == c->out_made[XR_DIR_DOWN];
}

const xr_stage_t xr_http_handler = {.name = "http",
                                    .logs_requests = 1,
                                    .process = xr_http_process,
                                    .eof = xr_http_eof,
                                    .start = xr_http_start,
                                    .resume = xr_http_resume,
                                    .free = xr_http_free,
                                    .finished = xr_http_finished,
                                    .delivered = xr_http_delivered,
                                    .unreachable = xr_http_unreachable};

const xr_stage_t xr_http_filtered_handler =
    XR_STAGE_AFTER_FILTERS("filters+http", &xr_http_handler, 1);
