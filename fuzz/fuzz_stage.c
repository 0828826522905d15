/*
 * fuzz_stage.c: libFuzzer target for the cleartext stage
 * (src/relay/stage_filter.c) with TLS on both ends, run by the relay
 * engine's own code: one detached connection (relay/conn.h: heap rings,
 * a heap snapshot slot, no sockets, nothing of the worker process) of a
 * relay block, started as a TLS take-over starts it
 * (xr_filter_stage_take() with both ends' record layers, a session and
 * pending cleartext).  This file plays the two TLS peers - the client on
 * the far side of end 0 and the upstream server on the far side of end 1,
 * each with a record layer made from the same fixed key blocks as the
 * stage's - the kernel (IN rings filled, OUT rings drained, taken and
 * given) and the event loop (the stage's process and eof hooks called as
 * relay/conn.c's pump calls them).  A crash is the engine's own
 * resumption (xr_conn_detached_resume) from the committed record.
 *
 * The input is one configuration byte, optional pending cleartext, then
 * operations.  The configuration byte:
 *   bits 0-1  the block's filters: 0, 3 none; 1 a data filter that passes
 *             every chunk; 2 one that holds a chunk until it ends in '\n'
 *   bit 2     AES-256-GCM (when the CPU has it), else ChaCha20-Poly1305
 *   bits 3-4  buffer_size 32, 36, 40 or 48 KiB (a TLS block needs 32k)
 *   bit 5     record numbers start at 2^32 - 2, not 1
 *   bit 6, 7  the client's, the upstream's pending cleartext follows: a
 *             length byte L, a byte of raw[d] (the first raw[d] bytes pass
 *             unfiltered), L bytes
 * Operations: a byte whose value modulo 16 says what happens (bit 7 of a
 * sending one: no event yet, the bytes wait in the "socket"); N is two
 * bytes big-endian, capped to what is left of the input:
 *   0 N R data  the client seals N bytes as records of at most size(R)
 *   1 N R data  the upstream does the same
 *   2 N data    the client sends N raw bytes (garbage)
 *   3 N data    the upstream sends N raw bytes
 *   4 N A data  the client seals N bytes and flips bit A%8 of byte A/8
 *   5 N A data  the upstream does the same
 *   6 K         the client sends a sealed control record: K%4 = 0
 *               close_notify, 1 fatal alert, 2 handshake, 3 warning alert
 *   7 K         the upstream does the same
 *   8 N, 9 N    the client, the upstream reads up to N bytes
 *   10, 11      the client, the upstream closes (EOF after what it sent)
 *   12          the worker dies; a new one resumes from the record
 *   13          the worker dies in the next step that changes anything,
 *               before its commit; a new one resumes from the record before
 *   14, 15      an event at the client, the upstream (the pump runs)
 * After the last operation both peers read until nothing moves.
 *
 * Checked (abort() on violation, beside ASan and UBSan):
 *   - the stage reads IN[d] only in [in_done, taken) (the rest of the
 *     ring is ASan-poisoned); what it made in OUT[d] and not yet sent
 *     never exceeds the ring; no counter goes backwards; after every step
 *     the committed record resumes to exactly the live counters (or is
 *     refused only while a filter holds bytes);
 *   - every byte a peer is given opens with its record layer as one
 *     unbroken TLS stream (no bad MAC: no record repeated, skipped or
 *     sealed with the wrong keys), across any crash and resumption; a
 *     close_notify ends it, and nothing follows it;
 *   - the cleartext a peer opens is a prefix of what the other peer sealed
 *     before the first bad record (garbage, tampered, an alert, a
 *     handshake) or close_notify it sent: in order, never repeated, never
 *     altered, nothing from after the bad record;
 *   - a direction ends (the far end is shut down) only after close_notify;
 *   - when no bad record was sent either way and the connection was not
 *     cut: after the final reads each peer has all the cleartext the other
 *     sent (unless a filter holds), and close_notify once the sender ended;
 *   - a resumption fails only where a filter held bytes at the crash.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/xrayd.h"
#include "core/log.h"
#include "core/frontdoor.h"
#include "relay/conn.h"

#include "wire.h"
#include "relay/stage_filter.h"
#include "common/record.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define XR_FZ_MAX_INPUT (1u << 16)
#define XR_FZ_ROUNDS    8 /* conn.c's XR_PUMP_ROUNDS */

/* XR_FUZZ_TRACE=1 in the environment prints every step. */
static int xr_fz_trace;

#define XR_FZ_TRACE(...)                                                                           \
    do {                                                                                           \
        if (xr_fz_trace > 0)                                                                       \
            fprintf(stderr, __VA_ARGS__);                                                          \
    } while (0)

/* ---- the relay blocks ------------------------------------------------------------ */

enum { XR_FZ_NONE = 0, XR_FZ_PASS, XR_FZ_HOLD, XR_FZ_KINDS };

/* The data filters: every chunk passes, or a chunk that does not end in
 * a newline is held (t/modules/casefilter.c's pass and hold). */
static xr_filter_rc_t xr_fz_pass_data(void *conf, void *state, xr_session_t *s, int dir,
                                      xr_chunk_t *c)
{
    return XR_FILTER_PASS;
}

static xr_filter_rc_t xr_fz_hold_data(void *conf, void *state, xr_session_t *s, int dir,
                                      xr_chunk_t *c)
{
    return c->len > 0 && c->data[c->len - 1] == '\n' ? XR_FILTER_PASS : XR_FILTER_HOLD;
}

static const xr_module_t xr_fz_pass_mod = {XR_MODULE_HEAD, .name = "fuzz_pass", .version = "1",
                                           .data = xr_fz_pass_data};
static const xr_module_t xr_fz_hold_mod = {XR_MODULE_HEAD, .name = "fuzz_hold", .version = "1",
                                           .data = xr_fz_hold_data};
static xr_filter_conf_t xr_fz_filter[XR_FZ_KINDS] = {
    {.module = NULL}, {.module = &xr_fz_pass_mod}, {.module = &xr_fz_hold_mod}};

static xr_relay_conf_t xr_fz_rc[XR_FZ_KINDS];
static xr_relay_rt_t xr_fz_rt[XR_FZ_KINDS];

extern const xr_frontdoor_t xr_relay_frontdoor;

/* The key blocks the handshakes would have made: client write key,
 * server write key, client IV, server IV (12 bytes each, ChaCha's). */
#define XR_FZ_KB 88
static unsigned char xr_fz_kb[2][XR_FZ_KB];

static void xr_fz_conf(void)
{
    static int done;
    if (done)
        return;
    done = 1;
    xr_fz_trace = getenv("XR_FUZZ_TRACE") ? atoi(getenv("XR_FUZZ_TRACE")) : 0;
    for (int k = 0; k < XR_FZ_KINDS; k++) {
        xr_fz_rc[k].name = "fuzz";
        xr_fz_rc[k].frontdoor = &xr_relay_frontdoor;
        xr_fz_rc[k].continuity = 1;
        xr_fz_rc[k].buffer_size = 32768;
        xr_fz_rc[k].idle_timeout = 60000;
        xr_fz_rc[k].connect_timeout = 1000;
        xr_fz_rc[k].filters = k == XR_FZ_NONE ? NULL : &xr_fz_filter[k];
        xr_fz_rc[k].nfilters = k == XR_FZ_NONE ? 0 : 1;
        xr_relay_rt_init(&xr_fz_rt[k], &xr_fz_rc[k]);
    }
    for (int e = 0; e < 2; e++)
        for (int i = 0; i < XR_FZ_KB; i++)
            xr_fz_kb[e][i] = (unsigned char) (e == 0 ? i * 7 + 1 : i * 13 + 5);
    /* Log lines are formatted (peers' bytes go into them) but not kept. */
    if (xr_log_open("/dev/null", XR_LOG_INFO) != XR_OK)
        xr_log_set_level(XR_LOG_EMERG);
}

/* ---- the connection --------------------------------------------------------------- */

typedef struct {
    xr_fz_wire_t w; /* the connection and its sockets */
    int kind;       /* XR_FZ_NONE, _PASS, _HOLD */
    /* The peers: peer[0] the client (of end 0), peer[1] the upstream. */
    xr_rec_t peer[2];
    int posted; /* a pump ran out of rounds */
    /* Direction d: what end d's peer sealed as cleartext before anything
     * that ends the stream (the only bytes end 1 - d may ever open) ... */
    xr_fz_buf_t sent[2];
    int bad[2];      /* ... end d sent a bad record (garbage, tampered, alert, handshake) */
    int notified[2]; /* ... or close_notify: later bytes do not count */
    /* What end 1 - d's peer was given of OUT[d] and has not opened yet
     * (a partial record), what it opened, and whether it had
     * close_notify. */
    xr_fz_buf_t rbuf[2];
    uint64_t opened[2];
    int got_notify[2];
    int torn;        /* '13': the next step that changes anything dies */
    int resume_fail; /* a resumption was refused (a filter held bytes) */
} xr_fz_conn_t;

static int xr_fz_closed(const xr_fz_conn_t *f)
{
    return xr_conn_is_closed(f->w.c);
}

static const char *xr_fz_end(int e)
{
    return e == 0 ? "client" : "upstream";
}

/* ---- steps ---------------------------------------------------------------------- */

/* After a step that returned: the committed record must resume to the
 * live counters, so whatever a peer is given was committed.  A record
 * made while a filter holds bytes is refused (those bytes' filter state
 * is not in it): only then. */
static void xr_fz_check_record(xr_fz_conn_t *f)
{
    static xr_conn_t twin;
    twin = *f->w.c;
    twin.hs = NULL;
    if (twin.h->resume(&twin) != XR_OK) {
        if (f->kind != XR_FZ_HOLD ||
            (!xr_filter_stage_pending(f->w.c->hs, 0) && !xr_filter_stage_pending(f->w.c->hs, 1)))
            XR_FZ_FAIL("resume() refused the record just committed: %s", twin.s.close_reason);
        twin.h->free(&twin);
        return;
    }
    for (int d = 0; d < 2; d++) {
        if (twin.in_done[d] != f->w.c->in_done[d] || twin.out_made[d] != f->w.c->out_made[d])
            XR_FZ_FAIL(
                "committed %s counters %llu/%llu, live %llu/%llu", d == XR_DIR_UP ? "up" : "down",
                (unsigned long long) twin.in_done[d], (unsigned long long) twin.out_made[d],
                (unsigned long long) f->w.c->in_done[d], (unsigned long long) f->w.c->out_made[d]);
    }
    twin.h->free(&twin);
}

/* The worker is gone: the engine's resumption from the slot.  XR_OK, or
 * XR_ERROR when it was refused (and the connection closed) because a
 * filter held bytes. */
static int xr_fz_resume(xr_fz_conn_t *f)
{
    xr_conn_t *c = f->w.c;
    for (int d = 0; d < 2; d++)
        c->in_done[d] = c->out_made[d] = 0xdeadbeefdeadbeefull; /* resume must set them */
    xr_fz_in_poison(&f->w, 0);
    if (xr_conn_detached_resume(c) != XR_OK) {
        XR_FZ_TRACE("  resume refused: %s\n", c->s.close_reason);
        if (f->kind != XR_FZ_HOLD || strstr(c->s.close_reason, "held") == NULL)
            XR_FZ_FAIL("the committed record does not resume: %s", c->s.close_reason);
        f->resume_fail = 1;
        return XR_ERROR;
    }
    xr_fz_poison_in(&f->w);
    return XR_OK;
}

static int xr_fz_call(xr_fz_conn_t *f, int is_eof, int d)
{
    xr_conn_t *c = f->w.c;
    return is_eof ? c->h->eof(c, d) : c->h->process(c, d);
}

/* One call of the stage, with the checks around it. */
static int xr_fz_step(xr_fz_conn_t *f, int is_eof, int d)
{
    xr_conn_t *c = f->w.c;
    XR_FZ_CHECK(!xr_fz_closed(f));
    static unsigned char pre_rec[XR_PSTATE_MAX];
    uint64_t pre_in[2], pre_out[2], pre_seq = c->p->commit_seq;
    for (int k = 0; k < 2; k++) {
        pre_in[k] = c->in_done[k];
        pre_out[k] = c->out_made[k];
    }
    memcpy(pre_rec, xr_pslot_record(c->p), XR_PSTATE_MAX);

    int rc = xr_fz_call(f, is_eof, d);
    int changed = xr_fz_closed(f) || c->p->commit_seq != pre_seq;
    for (int k = 0; k < 2; k++)
        changed |= c->in_done[k] != pre_in[k] || c->out_made[k] != pre_out[k];
    if (f->torn && changed && !xr_fz_closed(f) && c->p->commit_seq == pre_seq + 1) {
        /* The worker died after the step's work and before its commit
         * was published: the record before it is in use, what the step
         * made in OUT went nowhere, and a new worker takes over. */
        f->torn = 0;
        XR_FZ_TRACE("  torn: %s(%s) undone\n", is_eof ? "eof" : "process", d ? "down" : "up");
        c->p->commit_seq = pre_seq;
        if (memcmp(pre_rec, xr_pslot_record(c->p), XR_PSTATE_MAX) != 0)
            XR_FZ_FAIL("a commit overwrote the record in use");
        if (xr_fz_resume(f) != XR_OK)
            return XR_ERROR;
        for (int k = 0; k < 2; k++)
            XR_FZ_CHECK(c->in_done[k] == pre_in[k] && c->out_made[k] == pre_out[k]);
        c->again[d] = 0;
        rc = xr_fz_call(f, is_eof, d);
    }
    XR_FZ_TRACE("  %s(%s) = %d: in %llu/%llu out %llu/%llu taken %llu/%llu given %llu/%llu%s%s\n",
                is_eof ? "eof" : "process", d ? "down" : "up", rc,
                (unsigned long long) c->in_done[0], (unsigned long long) c->in_done[1],
                (unsigned long long) c->out_made[0], (unsigned long long) c->out_made[1],
                (unsigned long long) c->p->taken[0], (unsigned long long) c->p->taken[1],
                (unsigned long long) c->p->given[0], (unsigned long long) c->p->given[1],
                xr_fz_closed(f) ? " closed: " : "", xr_fz_closed(f) ? c->s.close_reason : "");
    if (xr_fz_closed(f))
        return XR_ERROR;
    for (int k = 0; k < 2; k++) {
        XR_FZ_CHECK(c->in_done[k] <= c->p->taken[k]);
        XR_FZ_CHECK(c->in_done[k] >= pre_in[k]);
        XR_FZ_CHECK(c->out_made[k] >= pre_out[k]);
        XR_FZ_CHECK(c->out_made[k] >= c->p->given[1 - k]);
        if (c->out_made[k] - c->p->given[1 - k] > c->rsize)
            XR_FZ_FAIL("OUT[%d] holds %llu bytes not sent, in a ring of %u", k,
                       (unsigned long long) (c->out_made[k] - c->p->given[1 - k]), c->rsize);
    }
    XR_FZ_CHECK(rc == XR_OK || rc == XR_AGAIN);
    xr_fz_poison_in(&f->w);
    xr_fz_check_record(f);
    return rc;
}

/* ---- the engine's pump, without sockets ------------------------------------------ */

/* conn.c after a pump: half-close once a direction's output is out, end
 * the connection when the stage is finished or both directions are
 * done. */
static void xr_fz_end_check(xr_fz_conn_t *f)
{
    xr_conn_t *c = f->w.c;
    if (xr_fz_closed(f))
        return;
    for (int d = 0; d < 2; d++)
        if (c->out_closed[d] && c->out_made[d] == c->p->given[1 - d] && !c->end[1 - d].wr_shut) {
            /* A TLS end gets its FIN after close_notify, never before. */
            if (!f->got_notify[d])
                XR_FZ_FAIL("the %s gets a FIN without close_notify", xr_fz_end(1 - d));
            c->end[1 - d].wr_shut = 1;
        }
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

/* conn.c's xr_cn_pump for direction d, without the writes (the peers
 * read when the input says so). */
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
            c->again[d] = rc == XR_AGAIN;
            if (rd_eof && !c->out_closed[d] && rc == XR_OK) {
                int erc = xr_fz_step(f, 1, d);
                if (erc == XR_ERROR)
                    return;
                if (erc == XR_AGAIN)
                    c->again[d] = 1; /* its end waits for room in OUT */
                else if (c->in_done[d] == c->p->taken[d])
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
    xr_fz_end_check(f);
}

/* ---- the peers -------------------------------------------------------------------- */

/* End e's peer seals n bytes of cleartext as records of up to rs bytes
 * of `type` into its socket. */
static void xr_fz_seal(xr_fz_conn_t *f, int e, uint8_t type, const unsigned char *p, size_t n,
                       size_t rs)
{
    static unsigned char rec[XR_REC_MAX_CIPHER + XR_REC_HEADER];
    size_t done = 0;
    do {
        size_t k = XR_MIN(n - done, rs), took = 0;
        size_t w = xr_rec_seal(&f->peer[e], type, p + done, k, rec, sizeof(rec), &took);
        XR_FZ_CHECK(took == k);
        xr_fz_buf_add(&f->w.sock[e], rec, w);
        done += k;
    } while (done < n);
}

/* End e's peer sends application data: what counts is what it sent
 * before anything that ended its stream. */
static void xr_fz_send(xr_fz_conn_t *f, int e, const unsigned char *p, size_t n, size_t rs)
{
    if (n == 0)
        return;
    xr_fz_seal(f, e, XR_REC_TYPE_APPDATA, p, n, rs);
    if (!f->bad[e] && !f->notified[e])
        xr_fz_buf_add(&f->sent[e], p, n);
}

/* End e's peer is given up to n more bytes of OUT[1 - e] and opens
 * them.  1 if anything moved. */
static int xr_fz_deliver(xr_fz_conn_t *f, int e, size_t n)
{
    xr_conn_t *c = f->w.c;
    int d = 1 - e;
    if (xr_fz_closed(f))
        return 0;
    uint64_t ready = c->out_made[d] - c->p->given[e];
    size_t k = (size_t) XR_MIN((uint64_t) n, ready);
    if (k == 0)
        return 0;
    if (f->got_notify[d])
        XR_FZ_FAIL("the %s is given %zu bytes after close_notify", xr_fz_end(e), k);
    xr_fz_buf_t *r = &f->rbuf[d];
    xr_fz_buf_reserve(r, r->len + k + 1);
    xr_ring_get(c->ring[XR_RING_OUT_UP + d], c->rsize, c->p->given[e], r->p + r->len, k);
    r->len += k;
    c->p->given[e] += k;
    size_t plain = 0, used = 0;
    uint8_t alert[2] = {0, 0};
    xr_rec_status_t st = xr_rec_open(&f->peer[e], r->p, r->len, &plain, &used, alert);
    if (st != XR_REC_OK && st != XR_REC_CLOSE_NOTIFY)
        XR_FZ_FAIL("the %s cannot open what the stage sent it: status %d at byte %llu of the "
                   "stream (alert %u/%u)",
                   xr_fz_end(e), (int) st, (unsigned long long) (c->p->given[e] - r->len + used),
                   alert[0], alert[1]);
    const xr_fz_buf_t *s = &f->sent[d];
    if (f->opened[d] + plain > s->len ||
        (plain > 0 && memcmp(s->p + f->opened[d], r->p, plain) != 0))
        XR_FZ_FAIL("the %s opens %zu bytes at %llu that are not what the %s sent (%zu bytes "
                   "count)",
                   xr_fz_end(e), plain, (unsigned long long) f->opened[d], xr_fz_end(d), s->len);
    f->opened[d] += plain;
    memmove(r->p, r->p + used, r->len - used);
    r->len -= used;
    if (st == XR_REC_CLOSE_NOTIFY) {
        XR_FZ_TRACE("  the %s has close_notify after %llu bytes\n", xr_fz_end(e),
                    (unsigned long long) f->opened[d]);
        if (r->len > 0)
            XR_FZ_FAIL("%zu bytes after close_notify to the %s", r->len, xr_fz_end(e));
        if (!f->w.peer_fin[d] && !f->notified[d])
            XR_FZ_FAIL("close_notify to the %s while the %s goes on", xr_fz_end(e), xr_fz_end(d));
        f->got_notify[d] = 1;
    }
    return 1;
}

/* ---- set-up ------------------------------------------------------------------------- */

/* Length of a sealing op's records: 1 .. 2^14. */
static size_t xr_fz_recsize(uint8_t r)
{
    static const size_t sizes[] = {16384, 1, 2, 16, 100, 1000, 4096, 16383};
    return r < 8 ? sizes[r] : (size_t) r * 61 % 16384 + 1;
}

static size_t xr_fz_len(const uint8_t *data, size_t size, size_t *i)
{
    size_t n = 0;
    for (int k = 0; k < 2; k++)
        n = n << 8 | (*i < size ? data[(*i)++] : 0);
    return n;
}

static uint8_t xr_fz_byte(const uint8_t *data, size_t size, size_t *i)
{
    return *i < size ? data[(*i)++] : 0;
}

static void xr_fz_open(xr_fz_conn_t *f, const uint8_t *data, size_t size, size_t *i)
{
    unsigned cfg = data[0];
    memset(f, 0, sizeof(*f));
    f->kind = (int) (cfg & 3) == 3 ? XR_FZ_NONE : (int) (cfg & 3);
    xr_aead_t aead =
        (cfg & 4) && xr_rec_available(XR_AEAD_AES256GCM) ? XR_AEAD_AES256GCM : XR_AEAD_CHACHA20;
    size_t ivlen = aead == XR_AEAD_AES256GCM ? 4 : 12;
    uint64_t seq = (cfg & 32) ? 0xfffffffeull : 1;
    xr_fz_rc[f->kind].buffer_size = 32768 + 4096 * (int64_t) ((cfg >> 3) & 3);

    f->w.c = xr_conn_detached_new(&xr_fz_rt[f->kind], 1, 0);
    XR_FZ_CHECK(!xr_fz_closed(f));
    if (f->w.c->h == NULL) {
        /* A block without data filters: the take-over runs the stage all
         * the same (xr_conn_take makes a "filtered" slot). */
        f->w.c->p->filtered = 1;
        f->w.c->h = &xr_filter_handler;
    }
    XR_FZ_CHECK(f->w.c->h == &xr_filter_handler);

    /* The stage's ends: end 0 is the server of the client's handshake,
     * end 1 the client of the upstream's; the peers are the other sides
     * of the same key blocks. */
    static xr_rec_t rec[2];
    XR_FZ_CHECK(xr_rec_init(&rec[0], aead, 1, xr_fz_kb[0], 32, ivlen, seq, seq + 1) == 0);
    XR_FZ_CHECK(xr_rec_init(&rec[1], aead, 0, xr_fz_kb[1], 32, ivlen, seq + 2, seq) == 0);
    XR_FZ_CHECK(xr_rec_init(&f->peer[0], aead, 0, xr_fz_kb[0], 32, ivlen, seq + 1, seq) == 0);
    XR_FZ_CHECK(xr_rec_init(&f->peer[1], aead, 1, xr_fz_kb[1], 32, ivlen, seq, seq + 2) == 0);

    static xr_session_t s;
    memset(&s, 0, sizeof(s));
    s.id = 1;
    s.identity = "CN=fuzz client";
    xr_conn_handoff_t h;
    memset(&h, 0, sizeof(h));
    h.fd[0] = h.fd[1] = -1;
    h.rec[0] = &rec[0];
    h.rec[1] = &rec[1];
    h.s = &s;
    h.peer = -1;
    static unsigned char pending[2][256];
    for (int d = 0; d < 2; d++) {
        if (!(cfg & (64u << d)))
            continue;
        size_t n = xr_fz_byte(data, size, i);
        h.raw[d] = xr_fz_byte(data, size, i);
        n = XR_MIN(n, size - XR_MIN(*i, size));
        memcpy(pending[d], data + *i, n);
        *i += n;
        h.pending[d] = pending[d];
        h.npending[d] = n;
        xr_fz_buf_add(&f->sent[d], pending[d], n);
    }
    XR_FZ_TRACE("open: filter %d, %s, buffer %lld, seq %llu, pending %zu/%zu raw %u/%u\n", f->kind,
                aead == XR_AEAD_AES256GCM ? "aes-gcm" : "chacha",
                (long long) xr_fz_rc[f->kind].buffer_size, (unsigned long long) seq, h.npending[0],
                h.npending[1], h.raw[0], h.raw[1]);
    int rc = xr_filter_stage_take(f->w.c, &h);
    for (int e = 0; e < 2; e++)
        xr_rec_free(&rec[e]); /* moved into the stage: zeroed */
    if (rc != XR_OK) {
        XR_FZ_CHECK(xr_fz_closed(f));
        return;
    }
    XR_FZ_CHECK(!xr_fz_closed(f) && f->w.c->hs != NULL);
    XR_FZ_CHECK(f->w.c->s.identity != NULL && strcmp(f->w.c->s.identity, s.identity) == 0);
    xr_fz_poison_in(&f->w);
    xr_fz_check_record(f);
}

static void xr_fz_shut(xr_fz_conn_t *f)
{
    xr_fz_in_poison(&f->w, 0);
    xr_conn_detached_free(f->w.c);
    f->w.c = NULL;
    for (int e = 0; e < 2; e++) {
        xr_rec_free(&f->peer[e]);
        xr_fz_buf_free(&f->w.sock[e]);
        xr_fz_buf_free(&f->sent[e]);
        xr_fz_buf_free(&f->rbuf[e]);
    }
}

/* Operation op of the input at *i. */
static void xr_fz_op(xr_fz_conn_t *f, uint8_t opb, const uint8_t *data, size_t size, size_t *i)
{
    int op = opb % 16, e = op & 1, quiet = opb & 0x80;
    size_t n;
    switch (op) {
    case 0:
    case 1: {
        n = xr_fz_len(data, size, i);
        size_t rs = xr_fz_recsize(xr_fz_byte(data, size, i));
        n = XR_MIN(n, size - *i);
        if (!f->w.peer_fin[e])
            xr_fz_send(f, e, data + *i, n, rs);
        *i += n;
        break;
    }
    case 2:
    case 3:
        n = xr_fz_len(data, size, i);
        n = XR_MIN(n, size - *i);
        if (!f->w.peer_fin[e] && n > 0) {
            xr_fz_buf_add(&f->w.sock[e], data + *i, n);
            f->bad[e] = 1;
        }
        *i += n;
        break;
    case 4:
    case 5: {
        n = xr_fz_len(data, size, i);
        size_t at = xr_fz_len(data, size, i);
        n = XR_MIN(n, size - *i);
        if (!f->w.peer_fin[e]) {
            size_t from = f->w.sock[e].len;
            xr_fz_seal(f, e, XR_REC_TYPE_APPDATA, data + *i, n, XR_REC_MAX_PLAIN);
            size_t len = f->w.sock[e].len - from;
            if (len > 0) {
                f->w.sock[e].p[from + (at / 8) % len] ^= (unsigned char) (1u << (at % 8));
                f->bad[e] = 1;
            }
        }
        *i += n;
        break;
    }
    case 6:
    case 7: {
        int k = xr_fz_byte(data, size, i) % 4;
        if (f->w.peer_fin[e])
            break;
        static const unsigned char alerts[4][2] = {{1, 0}, {2, 40}, {0, 0}, {1, 90}};
        static const unsigned char hello[4] = {0, 0, 0, 0}; /* hello_request */
        if (k == 2)
            xr_fz_seal(f, e, XR_REC_TYPE_HANDSHAKE, hello, sizeof(hello), XR_REC_MAX_PLAIN);
        else
            xr_fz_seal(f, e, XR_REC_TYPE_ALERT, alerts[k], 2, XR_REC_MAX_PLAIN);
        if (k == 0)
            f->notified[e] = 1;
        else
            f->bad[e] = 1;
        break;
    }
    case 8:
    case 9:
        n = xr_fz_len(data, size, i);
        if (xr_fz_deliver(f, e, n))
            xr_fz_event(f, e);
        return;
    case 10:
    case 11: f->w.peer_fin[e] = 1; break;
    case 12:
        if (xr_fz_resume(f) != XR_OK)
            return;
        xr_fz_check_record(f);
        /* A resumed connection's first turn pumps both ways. */
        xr_fz_event(f, XR_DIR_UP);
        return;
    case 13: f->torn = 1; return;
    default: xr_fz_event(f, e); return;
    }
    if (!quiet)
        xr_fz_event(f, e);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size > XR_FZ_MAX_INPUT)
        return 0;
    xr_fz_conf();
    static xr_fz_conn_t f;
    size_t i = 1;
    xr_fz_open(&f, data, size, &i);
    while (i < size && !xr_fz_closed(&f)) {
        uint8_t opb = data[i++];
        static const char *const names[] = {"client sends",    "upstream sends",
                                            "client garbage",  "upstream garbage",
                                            "client tampered", "upstream tampered",
                                            "client control",  "upstream control",
                                            "client reads",    "upstream reads",
                                            "client closes",   "upstream closes",
                                            "crash",           "torn",
                                            "client event",    "upstream event"};
        XR_FZ_TRACE("%s%s\n", names[opb % 16], (opb & 0x80) && opb % 16 < 8 ? " (quiet)" : "");
        xr_fz_op(&f, opb, data, size, &i);
    }
    /* Both peers read until nothing moves (with an event at each end
     * first: bytes sent quietly are read then). */
    for (int k = 0; k < 256 && !xr_fz_closed(&f); k++) {
        xr_conn_t *c = f.w.c;
        uint64_t before = c->p->taken[0] + c->p->taken[1] + c->p->given[0] + c->p->given[1] +
                          c->out_made[0] + c->out_made[1] + c->in_done[0] + c->in_done[1];
        for (int e = 0; e < 2 && !xr_fz_closed(&f); e++)
            xr_fz_event(&f, e);
        for (int e = 0; e < 2 && !xr_fz_closed(&f); e++)
            if (xr_fz_deliver(&f, e, SIZE_MAX))
                xr_fz_event(&f, e);
        if (xr_fz_closed(&f))
            break;
        uint64_t after = c->p->taken[0] + c->p->taken[1] + c->p->given[0] + c->p->given[1] +
                         c->out_made[0] + c->out_made[1] + c->in_done[0] + c->in_done[1];
        if (after == before)
            break;
    }
    /* Nothing bad was sent and the connection was not cut: every byte
     * went through, and a direction whose sender ended is closed. */
    int clean = !f.bad[0] && !f.bad[1] && !f.resume_fail &&
                (!xr_fz_closed(&f) || (f.w.c->s.close_reason[0] == '\0' && !f.w.c->cut));
    XR_FZ_TRACE("end: %s%s%s, opened %llu/%zu up, %llu/%zu down\n",
                xr_fz_closed(&f) ? "closed " : "open", f.w.c->s.close_reason,
                clean ? " (clean)" : "", (unsigned long long) f.opened[0], f.sent[0].len,
                (unsigned long long) f.opened[1], f.sent[1].len);
    for (int d = 0; d < 2 && clean; d++) {
        if (f.kind != XR_FZ_HOLD && f.opened[d] != f.sent[d].len)
            XR_FZ_FAIL("the %s opened %llu of the %zu bytes the %s sent", xr_fz_end(1 - d),
                       (unsigned long long) f.opened[d], f.sent[d].len, xr_fz_end(d));
        if (f.kind == XR_FZ_HOLD && (f.w.peer_fin[d] || f.notified[d]) && f.sent[d].len > 0 &&
            f.sent[d].p[f.sent[d].len - 1] == '\n' && f.opened[d] != f.sent[d].len)
            XR_FZ_FAIL("the %s opened %llu of the %zu bytes the %s sent, ending in a newline",
                       xr_fz_end(1 - d), (unsigned long long) f.opened[d], f.sent[d].len,
                       xr_fz_end(d));
        if ((f.w.peer_fin[d] || f.notified[d]) && !f.got_notify[d])
            XR_FZ_FAIL("the %s ended, the %s has no close_notify", xr_fz_end(d), xr_fz_end(1 - d));
    }
    xr_fz_shut(&f);
    return 0;
}
