/*
 * stage_pair.c: the filter chain, then a front door's stage, meeting at
 * the MID rings (see stage_pair.h).
 *
 * Each stage runs on the connection as if it were alone: before a call
 * the pair points the connection's stage views, counters, record and
 * working state at that stage's (enter), and takes them back after it
 * (leave).  Between calls the engine sees the pair as one stage: its
 * input consumed is the filters', its output made the second stage's.
 */
#include "core/xrayd.h"
#include "core/log.h"
#include "relay/stage_filter.h"
#include "relay/stage_pair.h"

#include <stdio.h>

enum { XR_PAIR_FILTERS = 0, XR_PAIR_NEXT = 1 };

#define XR_PAIR_ROUNDS 8 /* filters, then the next stage, while either moves */

typedef struct {
    void *hs[2];                            /* each stage's working state */
    uint64_t in_done[2][2], out_made[2][2]; /* [stage][direction] */
    int running;                            /* the stage entered, or -1 */
    int answered;                           /* a filter answered: the next stage runs no more */
    int eof_done[2]; /* the next stage was told its input in direction d ended */
} xr_pair_t;

static const xr_stage_t *xr_pair_stage(const xr_conn_t *c, int k)
{
    return k == XR_PAIR_FILTERS ? &xr_filter_handler : c->h->next;
}

static void xr_pair_leave(xr_conn_t *c, xr_pair_t *pr);

/* The pair's state with no stage entered: a hook the engine calls while a
 * stage runs (closing from inside it) first takes that stage's back. */
static xr_pair_t *xr_pair_settle(xr_conn_t *c)
{
    if (c->outer != NULL)
        xr_pair_leave(c, c->outer);
    return c->hs;
}

static void xr_pair_enter(xr_conn_t *c, xr_pair_t *pr, int k)
{
    c->outer = pr;
    c->hs = pr->hs[k];
    pr->running = k;
    c->aux_record = k == XR_PAIR_FILTERS;
    for (int d = 0; d < 2; d++) {
        c->in_done[d] = pr->in_done[k][d];
        c->out_made[d] = pr->out_made[k][d];
        xr_sview_t *v = &c->v[d];
        if (k == XR_PAIR_FILTERS) {
            v->in = c->ring[XR_RING_IN_UP + d];
            v->in_end = &c->p->taken[d];
            v->out = c->ring[XR_RING_MID_UP + d];
            v->out_taken = &pr->in_done[XR_PAIR_NEXT][d];
        } else {
            v->in = c->ring[XR_RING_MID_UP + d];
            v->in_end = &pr->out_made[XR_PAIR_FILTERS][d];
            v->out = c->ring[XR_RING_OUT_UP + d];
            v->out_taken = &c->p->given[1 - d];
        }
    }
}

/* What the engine sees of the pair between calls.  Input is consumed
 * once the filters took it, but a direction's input is not over (the
 * engine would end the direction's output) until the next stage was told
 * its own input ended: one byte is kept unconsumed till then. */
static void xr_pair_outer(xr_conn_t *c, xr_pair_t *pr)
{
    for (int d = 0; d < 2; d++) {
        c->in_done[d] = pr->in_done[XR_PAIR_FILTERS][d];
        if (c->end[d].rd_eof && !pr->eof_done[d] && c->in_done[d] > 0 &&
            c->in_done[d] == c->p->taken[d])
            c->in_done[d]--;
        c->out_made[d] = pr->out_made[XR_PAIR_NEXT][d];
    }
}

static void xr_pair_leave(xr_conn_t *c, xr_pair_t *pr)
{
    int k = pr->running;
    pr->hs[k] = c->hs;
    for (int d = 0; d < 2; d++) {
        pr->in_done[k][d] = c->in_done[d];
        pr->out_made[k][d] = c->out_made[d];
    }
    pr->running = -1;
    c->hs = pr;
    c->outer = NULL;
    c->aux_record = 0;
    xr_conn_view_default(c);
    xr_pair_outer(c, pr);
}

/* A filter answered the sender of direction d: its answer went into
 * MID[1-d] from `from` on; it goes to the sender through OUT[1-d] after
 * what the next stage made there, and the next stage runs no more. */
static int xr_pair_answer(xr_conn_t *c, xr_pair_t *pr, int d, uint64_t from)
{
    int b = 1 - d;
    uint64_t n = pr->out_made[XR_PAIR_FILTERS][b] - from;
    uint64_t at = pr->out_made[XR_PAIR_NEXT][b];
    if (c->rsize - (at - c->p->given[d]) < n) {
        xr_log_session(XR_LOG_WARN, &c->s, "no room to send a filter's answer of %llu bytes",
                       (unsigned long long) n);
        c->cut = 1;
        xr_conn_close(c, NULL);
        return XR_ERROR;
    }
    struct iovec iov[2];
    int k = xr_ring_iov(c->ring[XR_RING_MID_UP + b], c->rsize, from, (size_t) n, iov);
    for (int i = 0; i < k; i++) {
        xr_ring_put(c->ring[XR_RING_OUT_UP + b], c->rsize, at, iov[i].iov_base, iov[i].iov_len);
        at += iov[i].iov_len;
    }
    pr->out_made[XR_PAIR_NEXT][b] = at;
    pr->out_made[XR_PAIR_FILTERS][b] = from; /* not the next stage's input */
    pr->answered = 1;
    pr->eof_done[0] = pr->eof_done[1] = 1;
    xr_pair_outer(c, pr);
    return XR_OK;
}

/* One call of the filters in direction d. */
static int xr_pair_filters(xr_conn_t *c, xr_pair_t *pr, int d, int eof)
{
    uint64_t answer_from = pr->out_made[XR_PAIR_FILTERS][1 - d];
    xr_pair_enter(c, pr, XR_PAIR_FILTERS);
    int rc = eof ? xr_filter_handler.eof(c, d) : xr_filter_handler.process(c, d);
    if (rc == XR_ERROR)
        return XR_ERROR; /* closed: the pair's state went with it */
    xr_pair_leave(c, pr);
    if (xr_filter_stage_answered(pr->hs[XR_PAIR_FILTERS]) && !pr->answered &&
        xr_pair_answer(c, pr, d, answer_from) != XR_OK)
        return XR_ERROR;
    return rc;
}

/* One call of the next stage in direction d. */
static int xr_pair_next(xr_conn_t *c, xr_pair_t *pr, int d, int eof)
{
    const xr_stage_t *next = c->h->next;
    xr_pair_enter(c, pr, XR_PAIR_NEXT);
    int rc = eof ? next->eof(c, d) : next->process(c, d);
    if (rc == XR_ERROR)
        return XR_ERROR;
    xr_pair_leave(c, pr);
    return rc;
}

/* Once the filters have read direction d to its end and passed all of it
 * into MID, and the next stage has taken all of that, the next stage's
 * input has ended too. */
static int xr_pair_finish_dir(xr_conn_t *c, xr_pair_t *pr, int d)
{
    if (pr->eof_done[d] || !c->end[d].rd_eof || pr->in_done[XR_PAIR_FILTERS][d] != c->p->taken[d] ||
        xr_filter_stage_pending(pr->hs[XR_PAIR_FILTERS], d) ||
        pr->in_done[XR_PAIR_NEXT][d] != pr->out_made[XR_PAIR_FILTERS][d])
        return XR_OK;
    if (xr_pair_next(c, pr, d, 1) != XR_OK)
        return XR_ERROR;
    pr->eof_done[d] = 1;
    xr_pair_outer(c, pr);
    return XR_OK;
}

/* Filters, then the next stage, while either moves. */
static int xr_pair_run(xr_conn_t *c, xr_pair_t *pr, int d, int eof)
{
    int rc_f = XR_OK, rc_n = XR_OK;
    for (int round = 0; round < XR_PAIR_ROUNDS; round++) {
        uint64_t before = pr->in_done[0][d] + pr->out_made[0][d] + pr->in_done[1][d] +
                          pr->out_made[1][0] + pr->out_made[1][1];
        if (!pr->answered) {
            rc_f = xr_pair_filters(c, pr, d, eof && round == 0);
            if (rc_f == XR_ERROR)
                return XR_ERROR;
        }
        if (pr->answered)
            return XR_OK;
        rc_n = xr_pair_next(c, pr, d, 0);
        if (rc_n == XR_ERROR || xr_pair_finish_dir(c, pr, d) != XR_OK)
            return XR_ERROR;
        uint64_t after = pr->in_done[0][d] + pr->out_made[0][d] + pr->in_done[1][d] +
                         pr->out_made[1][0] + pr->out_made[1][1];
        if (after == before)
            break;
    }
    return rc_f == XR_AGAIN || rc_n == XR_AGAIN ? XR_AGAIN : XR_OK;
}

int xr_pair_process(xr_conn_t *c, int d)
{
    return xr_pair_run(c, c->hs, d, 0);
}

int xr_pair_eof(xr_conn_t *c, int d)
{
    xr_pair_t *pr = c->hs;
    if (pr->answered) {
        pr->eof_done[d] = 1;
        xr_pair_outer(c, pr);
        return XR_OK;
    }
    return xr_pair_run(c, pr, d, 1) == XR_ERROR ? XR_ERROR : XR_OK;
}

static xr_pair_t *xr_pair_new(xr_conn_t *c)
{
    if (c->ring[XR_RING_MID_UP] == NULL || c->ring[XR_RING_MID_DOWN] == NULL) {
        snprintf(c->s.close_reason, sizeof(c->s.close_reason),
                 "the snapshot has no middle rings for filters before the %s stage",
                 c->h->next->name);
        return NULL;
    }
    xr_pair_t *pr = xr_calloc(1, sizeof(*pr));
    pr->running = -1;
    c->hs = pr;
    return pr;
}

int xr_pair_start(xr_conn_t *c)
{
    xr_pair_t *pr = xr_pair_new(c);
    if (pr == NULL)
        return XR_ERROR;
    memset(c->p->aux, 0, sizeof(c->p->aux));
    c->p->aux_seq = 0;
    for (int k = 0; k < 2; k++) {
        xr_pair_enter(c, pr, k);
        if (xr_pair_stage(c, k)->start(c) != XR_OK) {
            xr_pair_leave(c, pr);
            return XR_ERROR;
        }
        xr_pair_leave(c, pr);
    }
    return XR_OK;
}

int xr_pair_resume(xr_conn_t *c)
{
    xr_pair_t *pr = xr_pair_new(c);
    if (pr == NULL)
        return XR_ERROR;
    for (int k = 0; k < 2; k++) {
        xr_pair_enter(c, pr, k);
        int rc = xr_pair_stage(c, k)->resume(c);
        xr_pair_leave(c, pr);
        if (rc != XR_OK)
            return XR_ERROR;
    }
    /* What the next stage has not consumed must still be in MID. */
    for (int d = 0; d < 2; d++) {
        uint64_t made = pr->out_made[XR_PAIR_FILTERS][d], taken = pr->in_done[XR_PAIR_NEXT][d];
        if (taken > made || made - taken > c->rsize) {
            snprintf(c->s.close_reason, sizeof(c->s.close_reason),
                     "the stages' records do not fit each other (%s: made %llu, taken %llu)",
                     d == XR_DIR_UP ? "up" : "down", (unsigned long long) made,
                     (unsigned long long) taken);
            return XR_ERROR;
        }
    }
    return XR_OK;
}

void xr_pair_free(xr_conn_t *c)
{
    xr_pair_t *pr = xr_pair_settle(c);
    if (pr == NULL)
        return;
    for (int k = 0; k < 2; k++) {
        c->hs = pr->hs[k];
        if (c->hs != NULL)
            xr_pair_stage(c, k)->free(c);
    }
    free(pr);
    c->hs = c->outer = NULL;
    c->aux_record = 0;
    xr_conn_view_default(c);
}

int xr_pair_finished(const xr_conn_t *cc)
{
    xr_conn_t *c = (xr_conn_t *) cc; /* entering the next stage changes no byte */
    xr_pair_t *pr = xr_pair_settle(c);
    if (pr == NULL)
        return 0;
    if (pr->answered)
        return pr->out_made[XR_PAIR_NEXT][0] == c->p->given[1] &&
               pr->out_made[XR_PAIR_NEXT][1] == c->p->given[0];
    const xr_stage_t *next = c->h->next;
    if (next->finished == NULL)
        return 0;
    xr_pair_enter(c, pr, XR_PAIR_NEXT);
    int done = next->finished(c);
    xr_pair_leave(c, pr);
    return done;
}

int xr_pair_delivered(xr_conn_t *c, int closing)
{
    xr_pair_t *pr = xr_pair_settle(c);
    const xr_stage_t *next = c->h->next;
    if (pr == NULL || next->delivered == NULL)
        return 0;
    xr_pair_enter(c, pr, XR_PAIR_NEXT);
    int more = next->delivered(c, closing);
    xr_pair_leave(c, pr);
    return more;
}

void xr_pair_unreachable(xr_conn_t *c)
{
    if (c->h->next->unreachable != NULL)
        c->h->next->unreachable(c);
}
