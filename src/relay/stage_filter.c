/*
 * stage_filter.c: the filter chain between a circuit's rings (see
 * stage_filter.h).
 */
#include "core/xrayd.h"
#include "core/log.h"
#include "relay/stage_filter.h"
#include "relay/filter.h"

#include <stdio.h>

/* The committed record. */
typedef struct {
    uint64_t in_commit[2]; /* input up to here is filtered and in OUT */
    uint64_t out_made[2];
    uint32_t held[2]; /* a filter held bytes past in_commit */
    uint32_t answered;
} xr_frec_t;

/* Working state. */
typedef struct {
    xr_buf_t *buf[2]; /* bytes inside the chain: [start, filt) passed, [filt, end) held */
    xr_chain_t chain[2];
    uint64_t in_commit[2];
    int answered; /* a filter answered: the connection ends once its output is out */
} xr_fstage_t;

static void xr_fs_commit(xr_conn_t *c)
{
    xr_fstage_t *st = c->hs;
    xr_frec_t r;
    memset(&r, 0, sizeof(r));
    for (int d = 0; d < 2; d++) {
        if (st->buf[d] == NULL)
            st->in_commit[d] = c->in_done[d];
        r.in_commit[d] = st->in_commit[d];
        r.out_made[d] = c->out_made[d];
        r.held[d] = st->buf[d] != NULL;
    }
    r.answered = (uint32_t) st->answered;
    xr_conn_commit(c, &r, sizeof(r));
}

/* Emit what the chain passed, as far as OUT has room.  1 when all of it
 * went. */
static int xr_fs_emit(xr_conn_t *c, int d)
{
    xr_fstage_t *st = c->hs;
    xr_buf_t *b = st->buf[d];
    if (b == NULL)
        return 1;
    uint64_t n = XR_MIN((uint64_t) (b->filt - b->start), xr_conn_out_room(c, d));
    xr_conn_emit(c, d, b->data + b->start, (size_t) n);
    b->start += (uint32_t) n;
    if (b->start == b->end && st->chain[d].nholds == 0) {
        xr_buf_put(b);
        st->buf[d] = NULL;
    }
    return b->start == b->filt || st->buf[d] == NULL;
}

/* A filter answered the sender of direction d (see relay/filter.h):
 * the answer goes back through OUT[1-d], what passed before it goes on,
 * and nothing more is read or filtered either way. */
static int xr_fs_answer(xr_conn_t *c, int d)
{
    xr_fstage_t *st = c->hs;
    xr_buf_t *b = st->buf[d];
    uint32_t alen = b->end - b->filt;
    if (xr_conn_out_room(c, 1 - d) < alen) {
        xr_log_session(XR_LOG_WARN, &c->s, "no room to send a filter's answer of %u bytes", alen);
        c->cut = 1;
        xr_conn_close(c, NULL);
        return XR_ERROR;
    }
    xr_conn_emit(c, 1 - d, b->data + b->filt, alen);
    b->end = b->filt;
    st->answered = 1;
    for (int x = 0; x < 2; x++) {
        c->in_done[x] = xr_conn_in_end(c, x); /* read after the answer: dropped */
        c->end[x].rd_eof = 1;
        xr_chain_eof(&st->chain[x], st->buf[x]);
    }
    xr_log_session(XR_LOG_INFO, &c->s, "%s: %u bytes back to the %s, then closing",
                   c->s.close_reason, alen, d == XR_DIR_UP ? "client" : "upstream");
    xr_fs_emit(c, d);
    xr_fs_commit(c);
    return XR_OK;
}

static int xr_fs_process(xr_conn_t *c, int d)
{
    xr_fstage_t *st = c->hs;
    int rc = XR_OK;
    for (;;) {
        if (!xr_fs_emit(c, d)) {
            rc = XR_AGAIN;
            break;
        }
        uint64_t avail = xr_conn_in_end(c, d) - c->in_done[d];
        uint64_t room = xr_conn_out_room(c, d);
        if (avail == 0)
            break;
        if (room == 0) {
            rc = XR_AGAIN;
            break;
        }
        xr_buf_t *b = st->buf[d];
        if (b == NULL && (b = st->buf[d] = xr_buf_get((size_t) c->conf->buffer_size)) == NULL) {
            xr_log_session(XR_LOG_CRIT, &c->s, "cannot allocate a %lld byte buffer",
                           (long long) c->conf->buffer_size);
            xr_conn_close(c, "out of memory");
            return XR_ERROR;
        }
        if (b->start > 0)
            xr_chain_moved(&st->chain[d], xr_buf_compact(b));
        if (b->end == b->cap) {
            xr_log_session(XR_LOG_WARN, &c->s,
                           "filters held a whole buffer (%u bytes) without passing it", b->cap);
            xr_conn_close(c, "filter held more than buffer_size");
            return XR_ERROR;
        }
        size_t n = (size_t) XR_MIN(XR_MIN(avail, room), (uint64_t) (b->cap - b->end));
        uint32_t off = b->end;
        xr_ring_get(xr_conn_in_ring(c, d), c->rsize, c->in_done[d], b->data + off, n);
        b->end += (uint32_t) n;
        c->in_done[d] += n;
        int crc = xr_chain_run(c->rt, c->fstate, &c->s, d, &st->chain[d], b, off);
        if (crc == XR_CHAIN_ANSWER)
            return xr_fs_answer(c, d);
        if (crc != XR_OK) {
            xr_log_session(XR_LOG_NOTICE, &c->s, "closed by a filter: %s", c->s.close_reason);
            c->cut = 1;
            xr_conn_close(c, NULL);
            return XR_ERROR;
        }
    }
    xr_fs_commit(c);
    return rc;
}

static int xr_fs_eof(xr_conn_t *c, int d)
{
    xr_fstage_t *st = c->hs;
    uint32_t held = xr_chain_eof(&st->chain[d], st->buf[d]);
    if (held > 0)
        xr_log_session(XR_LOG_INFO, &c->s, "%u held bytes discarded at end of stream from %s", held,
                       d == XR_DIR_UP ? "client" : "upstream");
    xr_fs_emit(c, d);
    xr_fs_commit(c);
    return XR_OK;
}

static int xr_fs_start(xr_conn_t *c)
{
    if (c->hs == NULL)
        c->hs = xr_calloc(1, sizeof(xr_fstage_t));
    for (int d = 0; d < 2; d++)
        c->in_done[d] = c->out_made[d] = 0;
    xr_fs_commit(c);
    return XR_OK;
}

static int xr_fs_resume(xr_conn_t *c)
{
    if (c->hs == NULL)
        c->hs = xr_calloc(1, sizeof(xr_fstage_t));
    xr_fstage_t *st = c->hs;
    xr_frec_t r;
    memcpy(&r, xr_conn_record(c), sizeof(r));
    if (r.answered) {
        snprintf(c->s.close_reason, sizeof(c->s.close_reason),
                 "a filter had answered when the worker died");
        return XR_ERROR;
    }
    for (int d = 0; d < 2; d++) {
        if (r.held[d]) {
            snprintf(c->s.close_reason, sizeof(c->s.close_reason),
                     "a filter held %s bytes when the worker died",
                     d == XR_DIR_UP ? "client" : "upstream");
            return XR_ERROR;
        }
        if (r.in_commit[d] > xr_conn_in_end(c, d))
            return XR_ERROR;
        c->in_done[d] = st->in_commit[d] = r.in_commit[d];
        c->out_made[d] = r.out_made[d];
    }
    return XR_OK;
}

static void xr_fs_free(xr_conn_t *c)
{
    xr_fstage_t *st = c->hs;
    if (st == NULL)
        return;
    for (int d = 0; d < 2; d++) {
        xr_buf_put(st->buf[d]);
        xr_chain_release(&st->chain[d]);
    }
    free(st);
    c->hs = NULL;
}

int xr_filter_stage_answered(const void *hs)
{
    return hs != NULL && ((const xr_fstage_t *) hs)->answered;
}

int xr_filter_stage_pending(const void *hs, int d)
{
    return hs != NULL && ((const xr_fstage_t *) hs)->buf[d] != NULL;
}

/* After an answer: over once every byte emitted is out. */
static int xr_fs_finished(const xr_conn_t *c)
{
    const xr_fstage_t *st = c->hs;
    return st != NULL && st->answered && c->out_made[0] == c->p->given[1] &&
           c->out_made[1] == c->p->given[0];
}

const xr_stage_t xr_filter_handler = {.name = "filter",
                                      .process = xr_fs_process,
                                      .eof = xr_fs_eof,
                                      .start = xr_fs_start,
                                      .resume = xr_fs_resume,
                                      .free = xr_fs_free,
                                      .finished = xr_fs_finished};
