/*
 * stage_filter.c: the cleartext stage between a connection's rings - TLS
 * records opened, the filter chain, records sealed (see stage_filter.h).
 *
 * Per direction d the source is end d and the destination end 1 - d.
 * Input is taken from IN[d] at rd[d] into a buffer; a TLS source's
 * records are opened from the ring into it.  The filters run over the new
 * cleartext; what they pass goes to OUT[d], sealed for a TLS destination
 * (with no filter to run, plain bytes are sealed straight from IN).
 * c->in_done[d] is the committed point: it moves up to rd[d] only when the
 * buffer is empty, so every input byte before it is out and the ring keeps
 * every byte after it (the pump reads no further than in_done allows).
 */
#include "core/xrayd.h"
#include "core/log.h"
#include "relay/stage_filter.h"
#include "relay/filter.h"

#include <stdio.h>
#include <string.h>

#define XR_FS_IDENTITY 256
/* Room kept for a sealed close_notify. */
#define XR_FS_ALERT_ROOM 64

static const unsigned char xr_fs_close_notify[2] = {1, 0}; /* warning, close_notify */

/* The committed record. */
typedef struct {
    uint64_t in_commit[2]; /* the cleartext of input before here is in OUT */
    uint64_t out_made[2];
    uint64_t skip[2];   /* cleartext after in_commit that is in OUT too */
    uint64_t rx_seq[2]; /* end d's next record number to open, at in_commit[d] */
    uint32_t held[2];   /* a filter held bytes past in_commit */
    uint32_t answered;
    uint32_t tls;          /* bit e: end e speaks TLS */
    uint32_t closed[2];    /* the source of d sent close_notify */
    uint32_t notified[2];  /* a close_notify for end 1 - d is in OUT[d] */
    uint64_t clear_in[2];  /* cleartext taken from direction d's source, at in_commit */
    uint64_t clear_out[2]; /* cleartext put into OUT[d] */
    uint64_t raw_end[2];   /* the protocol's cleartext before here passes unfiltered */
    xr_rec_state_t rec[2];
    char identity[XR_FS_IDENTITY];
} xr_frec_t;

_Static_assert(sizeof(xr_frec_t) <= XR_PSTATE_MAX, "the stage's record fits its slot");

/* Working state. */
typedef struct {
    xr_buf_t *buf[2]; /* cleartext in the chain: [start, filt) passed, [filt, end) held */
    xr_chain_t chain[2];
    uint64_t rd[2];      /* input taken into buf; >= c->in_done[d] */
    uint64_t rx_seq[2];  /* end d's record number at c->in_done[d] */
    uint64_t emitted[2]; /* cleartext after c->in_done[d] that is in OUT */
    uint64_t drop[2];    /* of that, what a resumed stage has still to skip */
    uint64_t clear_in[2], clear_in_done[2], clear_out[2]; /* cleartext counts (the log's) */
    uint64_t raw_end[2];
    xr_rec_t rec[2];
    unsigned tls;
    int closed[2], notified[2];
    int answered; /* a filter answered: the connection ends once its output is out */
    char identity[XR_FS_IDENTITY];
} xr_fstage_t;

static const char *xr_fs_end_name(int e)
{
    return e == 0 ? "client" : "upstream";
}

static xr_rec_t *xr_fs_rec(xr_fstage_t *st, int e)
{
    return st->tls & (1u << e) ? &st->rec[e] : NULL;
}

static int xr_fs_holds(const xr_fstage_t *st, int d)
{
    const xr_buf_t *b = st->buf[d];
    return b != NULL && (st->chain[d].nholds > 0 || b->filt < b->end);
}

static void xr_fs_commit(xr_conn_t *c)
{
    xr_fstage_t *st = c->hs;
    xr_frec_t r;
    memset(&r, 0, sizeof(r));
    for (int d = 0; d < 2; d++) {
        r.in_commit[d] = c->in_done[d];
        r.out_made[d] = c->out_made[d];
        r.skip[d] = st->emitted[d];
        r.rx_seq[d] = st->rx_seq[d];
        r.held[d] = (uint32_t) xr_fs_holds(st, d);
        /* close_notify counts once the cleartext before it is out: until
         * then a replacement opens it again from in_commit. */
        r.closed[d] = (uint32_t) (st->closed[d] && st->buf[d] == NULL && st->drop[d] == 0);
        r.notified[d] = (uint32_t) st->notified[d];
        r.clear_in[d] = st->clear_in_done[d];
        r.clear_out[d] = st->clear_out[d];
        r.raw_end[d] = st->raw_end[d];
    }
    r.answered = (uint32_t) st->answered;
    r.tls = st->tls;
    for (int e = 0; e < 2; e++)
        if (xr_fs_rec(st, e) != NULL) {
            xr_rec_export(&st->rec[e], &r.rec[e]);
            r.rec[e].rx.seq = st->rx_seq[e];
        }
    memcpy(r.identity, st->identity, sizeof(r.identity));
    xr_conn_commit(c, &r, sizeof(r));
    explicit_bzero(r.rec, sizeof(r.rec));
}

/* Put cleartext p[0..n) into OUT[d] as records of `type` for a TLS
 * destination, as they are for a plain one, as far as there is room.
 * Returns the cleartext taken. */
static size_t xr_fs_put(xr_conn_t *c, int d, uint8_t type, const unsigned char *p, size_t n)
{
    xr_fstage_t *st = c->hs;
    xr_rec_t *r = xr_fs_rec(st, 1 - d);
    if (r == NULL) {
        size_t k = (size_t) XR_MIN((uint64_t) n, xr_conn_out_room(c, d));
        xr_conn_emit(c, d, p, k);
        st->clear_out[d] += k;
        return k;
    }
    /* Records are sealed straight into the ring; where its free space
     * wraps, through a record-sized bounce buffer. */
    static unsigned char bounce[XR_REC_HEADER + XR_REC_MAX_PLAIN + 64];
    size_t done = 0;
    while (done < n) {
        uint64_t room = xr_conn_out_room(c, d);
        uint32_t at = (uint32_t) (c->out_made[d] % c->rsize);
        size_t flat = (size_t) XR_MIN(room, (uint64_t) (c->rsize - at));
        size_t took = 0;
        if (flat < room && flat < XR_MIN(n - done + r->overhead, (size_t) 4096)) {
            size_t w = xr_rec_seal(r, type, p + done, n - done, bounce,
                                   (size_t) XR_MIN(room, (uint64_t) sizeof(bounce)), &took);
            xr_conn_emit(c, d, bounce, w);
        } else {
            c->out_made[d] +=
                xr_rec_seal(r, type, p + done, n - done, c->v[d].out + at, flat, &took);
        }
        if (took == 0)
            break;
        done += took;
    }
    if (type == XR_REC_TYPE_APPDATA)
        st->clear_out[d] += done;
    return done;
}

/* Emit what the chain passed, as far as OUT has room; once nothing is
 * left inside, the committed point moves up to what was taken.  1 when
 * all that passed went. */
static int xr_fs_emit(xr_conn_t *c, int d)
{
    xr_fstage_t *st = c->hs;
    xr_buf_t *b = st->buf[d];
    if (b != NULL && b->filt > b->start) {
        size_t k = xr_fs_put(c, d, XR_REC_TYPE_APPDATA, b->data + b->start, b->filt - b->start);
        b->start += (uint32_t) k;
        st->emitted[d] += k;
    }
    if (b != NULL && b->start == b->end && st->chain[d].nholds == 0) {
        xr_buf_put(b);
        st->buf[d] = b = NULL;
    }
    if (b == NULL && st->drop[d] == 0) {
        c->in_done[d] = st->rd[d];
        st->clear_in_done[d] = st->clear_in[d];
        st->emitted[d] = 0;
        if (xr_fs_rec(st, d) != NULL)
            st->rx_seq[d] = st->rec[d].rx.seq;
    }
    return b == NULL || b->start == b->filt;
}

/* Direction d's source has ended (EOF, or close_notify): once all its
 * cleartext is out, a TLS destination gets close_notify.  XR_OK when
 * done, XR_AGAIN while output waits for room. */
static int xr_fs_notify(xr_conn_t *c, int d)
{
    xr_fstage_t *st = c->hs;
    if (st->buf[d] != NULL)
        return XR_AGAIN;
    if (xr_fs_rec(st, 1 - d) != NULL && !st->notified[d]) {
        if (xr_conn_out_room(c, d) < XR_FS_ALERT_ROOM)
            return XR_AGAIN;
        xr_fs_put(c, d, XR_REC_TYPE_ALERT, xr_fs_close_notify, sizeof(xr_fs_close_notify));
        st->notified[d] = 1;
    }
    return XR_OK;
}

/* A record from end d could not be opened: tell that end why (an alert,
 * sent before the reset), then cut the connection. */
/* Direction d's source ended: what filters still hold is discarded (never
 * passed unchecked), what passed goes out, then close_notify.  XR_OK
 * when all of it is in OUT, XR_AGAIN while it waits for room. */
static int xr_fs_ended(xr_conn_t *c, int d)
{
    xr_fstage_t *st = c->hs;
    uint32_t held = xr_chain_eof(&st->chain[d], st->buf[d]);
    if (held > 0)
        xr_log_session(XR_LOG_INFO, &c->s, "%u held bytes discarded at end of stream from %s", held,
                       xr_fs_end_name(d));
    xr_fs_emit(c, d);
    return xr_fs_notify(c, d);
}

static int xr_fs_tls_failed(xr_conn_t *c, int d, xr_rec_status_t rst, const uint8_t alert[2])
{
    char why[96];
    unsigned char answer[2] = {2, 0}; /* fatal; description below, 0: none */
    /* The words are the TLS ends' (tls_end.c), whichever engine ran it. */
    switch (rst) {
    case XR_REC_ALERT: snprintf(why, sizeof(why), "peer sent alert %u", alert[1]); break;
    case XR_REC_HANDSHAKE:
        snprintf(why, sizeof(why), "renegotiation refused");
        answer[0] = 1;
        answer[1] = 100; /* no_renegotiation */
        break;
    case XR_REC_ERR_MAC:
        snprintf(why, sizeof(why), "bad record MAC (tampered or corrupt record)");
        answer[1] = 20; /* bad_record_mac */
        break;
    case XR_REC_ERR_OVERSIZE:
        snprintf(why, sizeof(why), "record longer than %d bytes", XR_REC_MAX_CIPHER);
        answer[1] = 22; /* record_overflow */
        break;
    default:
        snprintf(why, sizeof(why), "malformed record");
        answer[1] = 50; /* decode_error */
        break;
    }
    if (answer[1] != 0 && xr_conn_out_room(c, 1 - d) >= XR_FS_ALERT_ROOM) {
        xr_fs_put(c, 1 - d, XR_REC_TYPE_ALERT, answer, sizeof(answer));
        xr_conn_flush(c, 1 - d);
    }
    xr_log_session(XR_LOG_INFO, &c->s, "reading from %s failed: %s", xr_fs_end_name(d), why);
    c->cut = 1;
    xr_conn_close(c, "reading from %s: %s", xr_fs_end_name(d), why);
    return XR_ERROR;
}

/* A filter answered the sender of direction d (see relay/filter.h):
 * the answer goes back through OUT[1-d], what passed before it goes on,
 * and nothing more is read or filtered either way. */
static int xr_fs_answer(xr_conn_t *c, int d)
{
    xr_fstage_t *st = c->hs;
    xr_buf_t *b = st->buf[d];
    uint32_t alen = b->end - b->filt;
    xr_rec_t *back = xr_fs_rec(st, d);
    uint64_t need = alen + (back ? (alen / XR_REC_MAX_PLAIN + 3) * back->overhead + 2 : 0);
    if (xr_conn_out_room(c, 1 - d) < need) {
        xr_log_session(XR_LOG_WARN, &c->s, "no room to send a filter's answer of %u bytes", alen);
        c->cut = 1;
        xr_conn_close(c, NULL);
        return XR_ERROR;
    }
    xr_fs_put(c, 1 - d, XR_REC_TYPE_APPDATA, b->data + b->filt, alen);
    b->end = b->filt;
    st->answered = 1;
    if (back != NULL) {
        xr_fs_put(c, 1 - d, XR_REC_TYPE_ALERT, xr_fs_close_notify, sizeof(xr_fs_close_notify));
        st->notified[1 - d] = 1;
    }
    for (int x = 0; x < 2; x++) {
        c->in_done[x] = st->rd[x] = xr_conn_in_end(c, x); /* read after the answer: dropped */
        c->end[x].rd_eof = 1;
        xr_chain_eof(&st->chain[x], st->buf[x]);
    }
    xr_log_session(XR_LOG_INFO, &c->s, "%s: %u bytes back to the %s, then closing",
                   c->s.close_reason, alen, xr_fs_end_name(d));
    xr_fs_emit(c, d);
    xr_fs_commit(c);
    return XR_OK;
}

/* New cleartext of direction d at buf[off, off + n): what a resumed stage
 * had already sent is dropped, the protocol's own bytes pass unseen, the
 * rest goes through the filter chain.  XR_OK; XR_AGAIN when a filter
 * answered (the connection ends once the answer is out); XR_ERROR when
 * the connection was closed (c->hs is gone). */
static int xr_fs_chain(xr_conn_t *c, int d, uint32_t off, size_t n)
{
    xr_fstage_t *st = c->hs;
    xr_buf_t *b = st->buf[d];
    uint64_t pos = st->clear_in[d];
    st->clear_in[d] += n;
    if (st->drop[d] > 0) {
        /* Resumed: this much of the cleartext was out before the crash. */
        size_t k = (size_t) XR_MIN(st->drop[d], (uint64_t) n);
        memmove(b->data + off, b->data + off + k, n - k);
        n -= k;
        pos += k;
        st->drop[d] -= k;
    }
    b->end = off + (uint32_t) n;
    if (pos < st->raw_end[d] && n > 0) {
        /* They open the stream, before any filter held anything. */
        uint32_t k = (uint32_t) XR_MIN(st->raw_end[d] - pos, (uint64_t) n);
        off += k;
        b->filt = off;
    }
    if (off == b->end)
        return XR_OK;
    int crc = xr_chain_run(c->rt, c->fstate, &c->s, d, &st->chain[d], b, off);
    if (crc == XR_CHAIN_ANSWER)
        return xr_fs_answer(c, d) == XR_OK ? XR_AGAIN : XR_ERROR;
    if (crc != XR_OK) {
        xr_log_session(XR_LOG_NOTICE, &c->s, "closed by a filter: %s", c->s.close_reason);
        c->cut = 1;
        xr_conn_close(c, NULL);
        return XR_ERROR;
    }
    return XR_OK;
}

/* Plain bytes for a TLS end with no filter to run: seal them straight
 * from IN into OUT, committed as they go.  XR_OK when all are in,
 * XR_DECLINED while OUT has no room for more. */
static int xr_fs_seal_direct(xr_conn_t *c, int d)
{
    xr_fstage_t *st = c->hs;
    uint64_t avail = xr_conn_in_end(c, d) - st->rd[d];
    struct iovec iov[2];
    int k = xr_ring_iov(xr_conn_in_ring(c, d), c->rsize, st->rd[d], (size_t) avail, iov);
    for (int i = 0; i < k; i++) {
        size_t took = xr_fs_put(c, d, XR_REC_TYPE_APPDATA, iov[i].iov_base, iov[i].iov_len);
        st->rd[d] += took;
        st->clear_in[d] += took;
        c->in_done[d] = st->rd[d];
        st->clear_in_done[d] = st->clear_in[d];
        if (took < iov[i].iov_len)
            return XR_DECLINED;
    }
    return XR_OK;
}

/* Take more of IN[d] into the buffer (opening records) and run the
 * chain over it.  XR_OK (more may follow), XR_AGAIN (nothing more to
 * take now), XR_ERROR (c was closed). */
static int xr_fs_take(xr_conn_t *c, int d)
{
    xr_fstage_t *st = c->hs;
    xr_rec_t *src = xr_fs_rec(st, d);
    uint64_t avail = xr_conn_in_end(c, d) - st->rd[d];
    if (avail == 0)
        return XR_AGAIN;
    xr_buf_t *b = st->buf[d];
    if (src == NULL && b == NULL && xr_fs_rec(st, 1 - d) != NULL && !c->rt->has_data_filters &&
        st->drop[d] == 0 && st->clear_in[d] >= st->raw_end[d])
        return xr_fs_seal_direct(c, d);
    if (b == NULL && (b = st->buf[d] = xr_buf_get((size_t) c->conf->buffer_size)) == NULL) {
        xr_log_session(XR_LOG_CRIT, &c->s, "cannot allocate a %lld byte buffer",
                       (long long) c->conf->buffer_size);
        xr_conn_close(c, "out of memory");
        return XR_ERROR;
    }
    if (b->start > 0)
        xr_chain_moved(&st->chain[d], xr_buf_compact(b));
    size_t space = b->cap - b->end;
    size_t n = (size_t) XR_MIN(avail, (uint64_t) space);
    uint32_t off = b->end;
    size_t plain = n;
    xr_rec_status_t rst = XR_REC_OK;
    if (src != NULL) {
        size_t used = 0;
        uint8_t alert[2] = {0, 0};
        /* Records that do not run round the ring's end open straight from
         * it into the buffer; the rest (one across the end, an alert, a
         * handshake, one without room) are copied in and opened there. */
        struct iovec iov[2];
        xr_ring_iov(xr_conn_in_ring(c, d), c->rsize, st->rd[d], (size_t) avail, iov);
        rst = xr_rec_open_to(src, iov[0].iov_base, iov[0].iov_len, b->data + off, space, &plain,
                             &used);
        if (rst == XR_REC_OK && used == 0 && n > 0) {
            xr_ring_get(xr_conn_in_ring(c, d), c->rsize, st->rd[d], b->data + off, n);
            rst = xr_rec_open(src, b->data + off, n, &plain, &used, alert);
        }
        if (rst != XR_REC_OK && rst != XR_REC_CLOSE_NOTIFY)
            return xr_fs_tls_failed(c, d, rst, alert);
        st->rd[d] += used;
        /* No room in the buffer for the next record, or none in IN for
         * its rest (held bytes pin in_done): it can never be opened. */
        if (used == 0 && (n < avail || xr_conn_in_end(c, d) - c->in_done[d] >= c->rsize)) {
            xr_log_session(XR_LOG_WARN, &c->s,
                           "filters held %u bytes, no room left for a TLS record", b->end);
            xr_conn_close(c, "filter held more than buffer_size");
            return XR_ERROR;
        }
        if (used == 0)
            return XR_AGAIN; /* part of a record: wait for the rest */
    } else if (n == 0) {
        xr_log_session(XR_LOG_WARN, &c->s,
                       "filters held a whole buffer (%u bytes) without passing it", b->cap);
        xr_conn_close(c, "filter held more than buffer_size");
        return XR_ERROR;
    } else {
        xr_ring_get(xr_conn_in_ring(c, d), c->rsize, st->rd[d], b->data + off, n);
        st->rd[d] += n;
    }
    int crc = xr_fs_chain(c, d, off, plain);
    if (crc != XR_OK)
        return crc;
    if (rst == XR_REC_CLOSE_NOTIFY) {
        xr_debug_session(&c->s, "close_notify from the %s", xr_fs_end_name(d));
        st->closed[d] = 1;
        return XR_AGAIN;
    }
    return XR_OK;
}

static int xr_fs_process(xr_conn_t *c, int d)
{
    xr_fstage_t *st = c->hs;
    int rc = XR_OK;
    while (!st->answered) {
        if (!xr_fs_emit(c, d)) {
            rc = XR_AGAIN;
            break;
        }
        if (st->closed[d]) {
            /* After close_notify nothing counts; the direction ends once
             * what came before it is out. */
            st->rd[d] = xr_conn_in_end(c, d);
            if (!c->out_closed[d] && xr_fs_ended(c, d) == XR_OK)
                c->out_closed[d] = 1;
            else if (!c->out_closed[d])
                rc = XR_AGAIN;
            break;
        }
        int trc = xr_fs_take(c, d);
        if (trc == XR_ERROR)
            return XR_ERROR;
        if (trc == XR_DECLINED) {
            rc = XR_AGAIN; /* no room in OUT */
            break;
        }
        if (trc == XR_AGAIN && !st->closed[d]) {
            xr_fs_emit(c, d);
            break;
        }
    }
    xr_fs_commit(c);
    return rc;
}

static int xr_fs_eof(xr_conn_t *c, int d)
{
    xr_fstage_t *st = c->hs;
    if (xr_fs_rec(st, d) != NULL && !st->closed[d] && st->rd[d] < xr_conn_in_end(c, d)) {
        xr_log_session(XR_LOG_NOTICE, &c->s, "the %s ended its stream inside a TLS record",
                       xr_fs_end_name(d));
        c->cut = 1;
        xr_conn_close(c, "truncated TLS record from the %s", xr_fs_end_name(d));
        return XR_ERROR;
    }
    int rc = xr_fs_ended(c, d);
    xr_fs_commit(c);
    return rc;
}

static xr_fstage_t *xr_fs_state(xr_conn_t *c)
{
    if (c->hs == NULL)
        c->hs = xr_calloc(1, sizeof(xr_fstage_t));
    return c->hs;
}

static int xr_fs_start(xr_conn_t *c)
{
    xr_fstage_t *st = xr_fs_state(c);
    for (int d = 0; d < 2; d++) {
        c->in_done[d] = c->out_made[d] = st->rd[d] = 0;
        st->emitted[d] = st->drop[d] = 0;
        st->rx_seq[d] = xr_fs_rec(st, d) != NULL ? st->rec[d].rx.seq : 0;
    }
    xr_fs_commit(c);
    return XR_OK;
}

int xr_filter_stage_take(xr_conn_t *c, xr_conn_handoff_t *h)
{
    xr_fstage_t *st = xr_fs_state(c);
    for (int e = 0; e < 2; e++)
        if (h->rec[e] != NULL) {
            st->rec[e] = *h->rec[e]; /* its key state moves with it */
            memset(h->rec[e], 0, sizeof(*h->rec[e]));
            st->tls |= 1u << e;
        }
    if (h->s->identity != NULL)
        snprintf(st->identity, sizeof(st->identity), "%s", h->s->identity);
    c->s.identity = st->identity[0] ? st->identity : NULL;
    xr_fs_start(c);
    for (int d = 0; d < 2; d++) {
        st->raw_end[d] = h->raw[d];
        if (h->npending[d] == 0)
            continue;
        /* Cleartext an end sent before the hand-over goes first; once in
         * OUT (committed below) it is the snapshot's like any output. */
        xr_buf_t *b = st->buf[d] = xr_buf_get((size_t) c->conf->buffer_size);
        if (b == NULL || h->npending[d] > b->cap || h->npending[d] > xr_conn_out_room(c, d)) {
            xr_conn_close(c, "out of memory");
            return XR_ERROR;
        }
        memcpy(b->data, h->pending[d], h->npending[d]);
        int crc = xr_fs_chain(c, d, 0, h->npending[d]);
        if (crc == XR_ERROR)
            return XR_ERROR;
        if (crc == XR_AGAIN)
            break; /* answered */
        xr_fs_emit(c, d);
    }
    xr_fs_commit(c);
    return XR_OK;
}

static int xr_fs_resume_fail(xr_conn_t *c, xr_frec_t *r, const char *why)
{
    snprintf(c->s.close_reason, sizeof(c->s.close_reason), "%s", why);
    explicit_bzero(r->rec, sizeof(r->rec));
    return XR_ERROR;
}

static int xr_fs_resume(xr_conn_t *c)
{
    xr_fstage_t *st = xr_fs_state(c);
    xr_frec_t r;
    memcpy(&r, xr_conn_record(c), sizeof(r));
    if (r.answered)
        return xr_fs_resume_fail(c, &r, "a filter had answered when the worker died");
    for (int d = 0; d < 2; d++)
        if (r.held[d])
            return xr_fs_resume_fail(c, &r,
                                     d == XR_DIR_UP ? "a filter held client bytes when the "
                                                      "worker died"
                                                    : "a filter held upstream bytes when the "
                                                      "worker died");
    for (int e = 0; e < 2; e++)
        if ((r.tls & (1u << e)) && xr_rec_import(&st->rec[e], &r.rec[e]) != 0)
            return xr_fs_resume_fail(c, &r, "cannot rebuild a TLS record layer");
    st->tls = r.tls;
    memcpy(st->identity, r.identity, sizeof(st->identity));
    st->identity[sizeof(st->identity) - 1] = '\0';
    c->s.identity = st->identity[0] ? st->identity : NULL;
    for (int d = 0; d < 2; d++) {
        if (r.in_commit[d] > xr_conn_in_end(c, d))
            return xr_fs_resume_fail(c, &r, "the stage's input point is past what was read");
        c->in_done[d] = st->rd[d] = r.in_commit[d];
        c->out_made[d] = r.out_made[d];
        st->emitted[d] = st->drop[d] = r.skip[d];
        st->rx_seq[d] = r.rx_seq[d];
        st->closed[d] = (int) r.closed[d];
        st->notified[d] = (int) r.notified[d];
        st->clear_in[d] = st->clear_in_done[d] = r.clear_in[d];
        st->clear_out[d] = r.clear_out[d];
        st->raw_end[d] = r.raw_end[d];
        /* A direction that had ended gets its end again from process. */
        c->again[d] = st->closed[d];
    }
    explicit_bzero(r.rec, sizeof(r.rec));
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
        xr_rec_free(&st->rec[d]);
    }
    if (c->s.identity == st->identity)
        c->s.identity = NULL;
    free(st);
    c->hs = NULL;
}

static void xr_fs_counts(const xr_conn_t *c, uint64_t read[2], uint64_t written[2])
{
    const xr_fstage_t *st = c->hs;
    for (int d = 0; d < 2; d++) {
        read[d] = st->clear_in[d];
        written[d] = st->clear_out[d];
    }
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
                                      .finished = xr_fs_finished,
                                      .counts = xr_fs_counts};
