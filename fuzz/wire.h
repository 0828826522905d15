/*
 * wire.h: what a fuzz target plays around a detached connection of the
 * relay engine (relay/conn.h) in place of the kernel: the bytes each end
 * has sent and the engine not yet read, each end's close, and the read
 * into the IN rings as conn.c's pump does it.  While the stage runs,
 * each IN ring is ASan-poisoned outside [in_done, taken), so a stage
 * that reads what it may not is caught where it reads.  Shared by
 * fuzz_http.c and fuzz_stage.c; included, not linked, so every build of
 * a target (libFuzzer, the replay driver, the unit test's) stays one
 * file and replay.c.
 */
#ifndef XR_FUZZ_WIRE_H
#define XR_FUZZ_WIRE_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/xrayd.h"
#include "relay/conn.h"

#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define XR_FZ_ASAN 1
#endif
#endif
#if !defined(XR_FZ_ASAN) && defined(__SANITIZE_ADDRESS__)
#define XR_FZ_ASAN 1
#endif
#ifdef XR_FZ_ASAN
#include <sanitizer/asan_interface.h>
#define XR_FZ_POISON(p, n)   ASAN_POISON_MEMORY_REGION(p, n)
#define XR_FZ_UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION(p, n)
#else
#define XR_FZ_POISON(p, n)   ((void) (p), (void) (n))
#define XR_FZ_UNPOISON(p, n) ((void) (p), (void) (n))
#endif

#define XR_FZ_CHECK(c)                                                                             \
    do {                                                                                           \
        if (!(c)) {                                                                                \
            fprintf(stderr, "%s:%d: invariant failed: %s\n", __FILE__, __LINE__, #c);              \
            abort();                                                                               \
        }                                                                                          \
    } while (0)
#define XR_FZ_FAIL(...)                                                                            \
    do {                                                                                           \
        fprintf(stderr, "%s:%d: ", __FILE__, __LINE__);                                            \
        fprintf(stderr, __VA_ARGS__);                                                              \
        fputc('\n', stderr);                                                                       \
        abort();                                                                                   \
    } while (0)

/* ---- growable byte strings ------------------------------------------------------ */

typedef struct {
    unsigned char *p;
    size_t len, cap;
} xr_fz_buf_t;

__attribute__((unused)) static void xr_fz_buf_reserve(xr_fz_buf_t *b, size_t n)
{
    if (n <= b->cap)
        return;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < n)
        cap *= 2;
    b->p = xr_realloc(b->p, cap);
    b->cap = cap;
}

__attribute__((unused)) static void xr_fz_buf_add(xr_fz_buf_t *b, const void *p, size_t n)
{
    xr_fz_buf_reserve(b, b->len + n + 1);
    if (n > 0)
        memcpy(b->p + b->len, p, n);
    b->len += n;
}

__attribute__((unused)) static void xr_fz_buf_free(xr_fz_buf_t *b)
{
    free(b->p);
    memset(b, 0, sizeof(*b));
}

/* ---- the connection's sockets ------------------------------------------------------ */

typedef struct {
    xr_conn_t *c;
    xr_fz_buf_t sock[2]; /* sent by end d, not yet read (from sock_off) */
    size_t sock_off[2];
    int peer_fin[2]; /* end d closed after what it sent */
} xr_fz_wire_t;

/* Poison (or open) both IN rings whole. */
__attribute__((unused)) static void xr_fz_in_poison(xr_fz_wire_t *w, int poison)
{
    for (int d = 0; d < 2; d++) {
        unsigned char *ring = w->c->ring[XR_RING_IN_UP + d];
        if (poison)
            XR_FZ_POISON(ring, w->c->rsize);
        else
            XR_FZ_UNPOISON(ring, w->c->rsize);
    }
}

/* IN[d] may be read by the stage only in [in_done, taken). */
__attribute__((unused)) static void xr_fz_poison_in(xr_fz_wire_t *w)
{
    xr_conn_t *c = w->c;
    xr_fz_in_poison(w, 1);
    for (int d = 0; d < 2; d++) {
        unsigned char *ring = c->ring[XR_RING_IN_UP + d];
        uint64_t from = c->in_done[d], n = c->p->taken[d] - c->in_done[d];
        if (n == 0)
            continue;
        XR_FZ_CHECK(n <= c->rsize);
        uint32_t at = (uint32_t) (from % c->rsize);
        size_t first = (size_t) XR_MIN(n, (uint64_t) (c->rsize - at));
        XR_FZ_UNPOISON(ring + at, first);
        if (n > first)
            XR_FZ_UNPOISON(ring, (size_t) (n - first));
    }
}

/* The engine reads what end d sent into IN[d], as far as there is room
 * above in_done (conn.c's floor for a connection with a stage); a close
 * once everything before it was read.  1 if anything changed. */
__attribute__((unused)) static int xr_fz_read(xr_fz_wire_t *w, int d)
{
    xr_conn_t *c = w->c;
    xr_cend_t *src = &c->end[d];
    if (src->rd_eof)
        return 0;
    uint64_t room = c->rsize - (c->p->taken[d] - c->in_done[d]);
    size_t queued = w->sock[d].len - w->sock_off[d];
    if (queued == 0) {
        if (!w->peer_fin[d])
            return 0;
        src->rd_eof = 1;
        return 1;
    }
    size_t n = (size_t) XR_MIN((uint64_t) queued, room);
    if (n == 0)
        return 0;
    unsigned char *ring = c->ring[XR_RING_IN_UP + d];
    XR_FZ_UNPOISON(ring, c->rsize);
    xr_ring_put(ring, c->rsize, c->p->taken[d], w->sock[d].p + w->sock_off[d], n);
    w->sock_off[d] += n;
    c->p->taken[d] += n;
    xr_fz_poison_in(w);
    return 1;
}

#endif
