/*
 * filter.c: the filter chain (see filter.h).
 */
#include "core/xrayd.h"
#include "core/log.h"
#include "relay/filter.h"

#include <stdio.h>

static void *xr_chain_fstate(const xr_relay_rt_t *rt, unsigned char *fstate, size_t i)
{
    return fstate ? fstate + rt->state_off[i] : NULL;
}

unsigned char *xr_chain_state_new(const xr_relay_rt_t *rt)
{
    return rt->state_total > 0 ? xr_calloc(1, rt->state_total) : NULL;
}

int xr_chain_open(const xr_relay_rt_t *rt, unsigned char *fstate, xr_session_t *s, int *opened)
{
    const xr_relay_conf_t *rc = rt->rc;
    for (size_t i = 0; i < rc->nfilters; i++) {
        const xr_module_t *m = rc->filters[i].module;
        *opened = (int) i + 1;
        if (m->open != NULL &&
            m->open(rc->filters[i].conf, xr_chain_fstate(rt, fstate, i), s) != XR_OK) {
            if (s->close_reason[0] == '\0')
                snprintf(s->close_reason, sizeof(s->close_reason), "denied by %s", m->name);
            return XR_ERROR;
        }
    }
    return XR_OK;
}

/* A filter that holds keeps its region; bytes arriving later pass the
 * filters before it and are then appended to its region, so every filter
 * sees every byte once, except what it holds, which it sees again with
 * more. */
int xr_chain_run(const xr_relay_rt_t *rt, unsigned char *fstate, xr_session_t *s, int d,
                 xr_chain_t *ch, xr_buf_t *b, uint32_t off)
{
    const xr_relay_conf_t *rc = rt->rc;
    int nf = (int) rc->nfilters;

    if (!rt->has_data_filters) {
        b->filt = b->end;
        return XR_OK;
    }
    uint32_t rstart = off;
    int idx = 0;
    for (;;) {
        int limit = ch->nholds ? ch->holds[ch->nholds - 1].idx : nf;
        for (int i = idx; i < limit && b->end > rstart; i++) {
            const xr_filter_conf_t *f = &rc->filters[i];
            if (f->module->data == NULL)
                continue;
            xr_chunk_t c = {b->data + rstart, b->end - rstart, b->cap - rstart};
            xr_filter_rc_t frc =
                f->module->data(f->conf, xr_chain_fstate(rt, fstate, (size_t) i), s, d, &c);
            if (c.len > c.cap) {
                xr_log_session(XR_LOG_ALERT, s, "filter \"%s\" overran its chunk", f->module->name);
                snprintf(s->close_reason, sizeof(s->close_reason), "filter %s failed",
                         f->module->name);
                return XR_ERROR;
            }
            b->end = rstart + (uint32_t) c.len;
            switch (frc) {
            case XR_FILTER_PASS: break;
            case XR_FILTER_HOLD:
                if (ch->holds == NULL)
                    ch->holds = xr_calloc((size_t) nf, sizeof(xr_hold_t));
                ch->holds[ch->nholds].off = rstart;
                ch->holds[ch->nholds].idx = i;
                ch->nholds++;
                b->filt = ch->holds[0].off;
                return XR_OK;
            case XR_FILTER_DROP: b->end = rstart; break;
            case XR_FILTER_ANSWER:
                if (s->close_reason[0] == '\0')
                    snprintf(s->close_reason, sizeof(s->close_reason), "answered by %s",
                             f->module->name);
                /* Held bytes after this chunk's start are the answer's now;
                 * those before it were passed by every filter up to here
                 * but not by the holders: they are not sent either. */
                b->filt = ch->nholds ? XR_MIN(ch->holds[0].off, rstart) : rstart;
                if (b->filt < rstart) {
                    memmove(b->data + b->filt, b->data + rstart, b->end - rstart);
                    b->end -= rstart - b->filt;
                }
                ch->nholds = 0;
                return XR_CHAIN_ANSWER;
            case XR_FILTER_CLOSE:
            default:
                if (s->close_reason[0] == '\0')
                    snprintf(s->close_reason, sizeof(s->close_reason), "closed by %s",
                             f->module->name);
                return XR_ERROR;
            }
        }
        if (ch->nholds == 0 || b->end == rstart)
            break;
        /* Reached the filter that holds older bytes: it now gets those
         * and these together. */
        xr_hold_t *h = &ch->holds[--ch->nholds];
        rstart = h->off;
        idx = h->idx;
    }
    b->filt = ch->nholds ? ch->holds[0].off : b->end;
    return XR_OK;
}

uint32_t xr_chain_eof(xr_chain_t *ch, xr_buf_t *b)
{
    uint32_t n = 0;
    if (b != NULL && b->filt < b->end) {
        n = b->end - b->filt;
        b->end = b->filt;
    }
    ch->nholds = 0;
    return n;
}

void xr_chain_moved(xr_chain_t *ch, uint32_t moved)
{
    for (int i = 0; i < ch->nholds; i++)
        ch->holds[i].off -= moved;
}

void xr_chain_log(const xr_relay_rt_t *rt, unsigned char *fstate, xr_session_t *s)
{
    const xr_relay_conf_t *rc = rt->rc;
    for (size_t i = 0; i < rc->nfilters; i++)
        if (rc->filters[i].module->log)
            rc->filters[i].module->log(rc->filters[i].conf, xr_chain_fstate(rt, fstate, i), s);
}

void xr_chain_close_hooks(const xr_relay_rt_t *rt, unsigned char *fstate, xr_session_t *s,
                          int opened)
{
    const xr_relay_conf_t *rc = rt->rc;
    for (int i = 0; i < opened; i++)
        if (rc->filters[i].module->close)
            rc->filters[i].module->close(rc->filters[i].conf,
                                         xr_chain_fstate(rt, fstate, (size_t) i), s);
}

void xr_chain_close(const xr_relay_rt_t *rt, unsigned char *fstate, xr_session_t *s, int opened)
{
    xr_chain_close_hooks(rt, fstate, s, opened);
    xr_chain_log(rt, fstate, s);
}

void xr_chain_release(xr_chain_t *ch)
{
    free(ch->holds);
    ch->holds = NULL;
    ch->nholds = 0;
}
