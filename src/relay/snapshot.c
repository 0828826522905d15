/*
 * snapshot.c: the store file (see snapshot.h).
 */
#include "core/xrayd.h"
#include "relay/snapshot.h"

#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define XR_PAGE 4096u

typedef struct {
    uint32_t magic, version;
    uint32_t nslots, ring;
    uint64_t slot_size;
    char made_by[64]; /* xrayd version, for the log of whoever adopts it */
} xr_store_header_t;

/* The file: a header page, a map of one byte per slot saying which are
 * live (so that whoever adopts the file reads a few pages, not one per
 * slot), then the slots. */
struct xr_store_s {
    char path[512];
    unsigned char *base;
    unsigned char *live; /* the map */
    size_t slots_at;     /* offset of slot 0 */
    size_t len;
    uint64_t slot_size;
    uint32_t nslots, ring, used;
    uint32_t nrings; /* per slot */
    uint32_t *free;  /* a stack of free slot indexes */
    uint32_t nfree;
    /* Per slot: when a free slot whose ring pages were kept was released
     * (ms, never 0), or 0 (its pages are given back, or it is live). */
    uint32_t *kept_since;
    uint32_t nkept;
    int warm; /* mapped by xr_store_warm: its pages are in already */
};

/* A store another worker runs, mapped ahead of its death (see
 * xr_store_warm). */
typedef struct {
    dev_t dev;
    ino_t ino;
    unsigned char *base;
    size_t len;
    int seen;
} xr_warm_map_t;

static struct {
    xr_warm_map_t *m;
    size_t n, cap;
} xr_warm;

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23 /* Linux 5.14; older kernels say EINVAL */
#endif

/* Map the pages at [p, p + len) in now, in one call.  Whoever adopts a
 * store touches a few pages of every live slot while its clients wait,
 * and on a virtual machine a page fault is expensive: 13-20 us on the
 * benchmark host, against about 2 us a page for this call and 6 for the
 * first touch after it, so 1,000 connections' three pages each come in
 * 15-30 ms sooner.  Where the kernel cannot, they fault in as before. */
static void xr_store_populate(void *p, size_t len)
{
    uintptr_t at = (uintptr_t) p & ~(uintptr_t) (XR_PAGE - 1);
    madvise((void *) at, len + ((uintptr_t) p - at), MADV_POPULATE_WRITE);
}

static uint64_t xr_store_head_size(void)
{
    return (sizeof(xr_pslot_t) + XR_PAGE - 1) / XR_PAGE * XR_PAGE;
}

static uint64_t xr_store_slot_size(uint32_t ring, uint32_t nrings)
{
    return xr_store_head_size() + (uint64_t) nrings * ring;
}

/* How many rings a store's slots have: XR_RINGS, or XR_RINGS_OLD in a
 * store an older binary made (0: neither, not a store this code wrote). */
static uint32_t xr_store_nrings(uint64_t slot_size, uint32_t ring)
{
    if (slot_size == xr_store_slot_size(ring, XR_RINGS))
        return XR_RINGS;
    return slot_size == xr_store_slot_size(ring, XR_RINGS_OLD) ? XR_RINGS_OLD : 0;
}

static size_t xr_store_slots_at(uint32_t nslots)
{
    return XR_PAGE + ((size_t) nslots + XR_PAGE - 1) / XR_PAGE * XR_PAGE;
}

static xr_store_t *xr_store_map(const char *path, int fd, size_t len, char *err, size_t errlen)
{
    void *m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (m == MAP_FAILED) {
        snprintf(err, errlen, "cannot map %s: %s", path, strerror(errno));
        return NULL;
    }
    xr_store_t *s = xr_calloc(1, sizeof(*s));
    snprintf(s->path, sizeof(s->path), "%s", path);
    s->base = m;
    s->len = len;
    return s;
}

xr_store_t *xr_store_create(const char *path, uint32_t nslots, uint32_t ring, char *err,
                            size_t errlen)
{
    if (ring == 0 || ring % XR_PAGE != 0 || nslots == 0) {
        snprintf(err, errlen, "bad snapshot geometry (%u slots of %u-byte rings)", nslots, ring);
        return NULL;
    }
    uint64_t slot = xr_store_slot_size(ring, XR_RINGS);
    size_t len = xr_store_slots_at(nslots) + (size_t) (slot * nslots);
    /* A new file, then a rename: an adopter never sees one half made. */
    char tmp[600];
    snprintf(tmp, sizeof(tmp), "%s.new", path);
    int fd = open(tmp, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) {
        snprintf(err, errlen, "cannot create snapshot %s: %s", tmp, strerror(errno));
        return NULL;
    }
    /* Sparse: pages take memory (or disk) only once a connection uses
     * them. */
    if (ftruncate(fd, (off_t) len) != 0) {
        snprintf(err, errlen, "cannot size snapshot %s to %zu bytes: %s", tmp, len,
                 strerror(errno));
        close(fd);
        unlink(tmp);
        return NULL;
    }
    xr_store_t *s = xr_store_map(tmp, fd, len, err, errlen);
    close(fd);
    if (s == NULL) {
        unlink(tmp);
        return NULL;
    }
    xr_store_header_t *h = (xr_store_header_t *) s->base;
    h->magic = XR_SNAP_MAGIC;
    h->version = XR_SNAP_VERSION;
    h->nslots = nslots;
    h->ring = ring;
    h->slot_size = slot;
    snprintf(h->made_by, sizeof(h->made_by), "xrayd/%s", XR_VERSION);
    if (rename(tmp, path) != 0) {
        snprintf(err, errlen, "cannot rename %s to %s: %s", tmp, path, strerror(errno));
        xr_store_close(s, 1);
        return NULL;
    }
    snprintf(s->path, sizeof(s->path), "%s", path);
    s->slot_size = slot;
    s->nslots = nslots;
    s->ring = ring;
    s->nrings = XR_RINGS;
    s->live = s->base + XR_PAGE;
    s->slots_at = xr_store_slots_at(nslots);
    s->free = xr_malloc(nslots * sizeof(uint32_t));
    for (uint32_t i = 0; i < nslots; i++)
        s->free[i] = nslots - 1 - i; /* slot 0 first */
    s->nfree = nslots;
    s->kept_since = xr_calloc(nslots, sizeof(uint32_t));
    return s;
}

/* Is slot i live?  Opening a store is adopting it, so the pages a
 * resumed connection touches first come in with the answer: the
 * header's, and the page each IN ring is read into next. */
static int xr_store_slot_live(xr_store_t *s, uint32_t i)
{
    xr_pslot_t *p = xr_store_slot(s, i);
    if (s->warm)
        return p->live == XR_PSLOT_LIVE;
    xr_store_populate(p, offsetof(xr_pslot_t, state));
    if (p->live != XR_PSLOT_LIVE)
        return 0;
    for (int d = 0; d < 2; d++)
        xr_store_populate(xr_store_ring(s, p, XR_RING_IN_UP + d) + p->taken[d] % s->ring, 1);
    return 1;
}

/* Open path and read its header: the descriptor, or -1 with err. */
static int xr_store_open_file(const char *path, xr_store_header_t *h, struct stat *st, size_t *len,
                              char *err, size_t errlen)
{
    int fd = open(path, O_RDWR | O_CLOEXEC);
    if (fd < 0) {
        snprintf(err, errlen, "cannot open snapshot %s: %s", path, strerror(errno));
        return -1;
    }
    if (fstat(fd, st) != 0 || st->st_size < (off_t) XR_PAGE ||
        pread(fd, h, sizeof(*h), 0) != (ssize_t) sizeof(*h) || h->magic != XR_SNAP_MAGIC ||
        h->version != XR_SNAP_VERSION || h->ring == 0 || h->ring % XR_PAGE != 0 ||
        xr_store_nrings(h->slot_size, h->ring) == 0 ||
        (uint64_t) st->st_size < xr_store_slots_at(h->nslots) + h->slot_size * h->nslots) {
        snprintf(err, errlen, "%s is not a snapshot this xrayd can read", path);
        close(fd);
        return -1;
    }
    *len = xr_store_slots_at(h->nslots) + (size_t) (h->slot_size * h->nslots);
    return fd;
}

static xr_warm_map_t *xr_warm_find(const struct stat *st)
{
    for (size_t i = 0; i < xr_warm.n; i++)
        if (xr_warm.m[i].dev == st->st_dev && xr_warm.m[i].ino == st->st_ino)
            return &xr_warm.m[i];
    return NULL;
}

static void xr_warm_remove(xr_warm_map_t *w)
{
    *w = xr_warm.m[--xr_warm.n];
}

xr_store_t *xr_store_open(const char *path, char *err, size_t errlen)
{
    xr_store_header_t h;
    struct stat st;
    size_t len;
    int fd = xr_store_open_file(path, &h, &st, &len, err, errlen);
    if (fd < 0)
        return NULL;
    xr_store_t *s;
    xr_warm_map_t *w = xr_warm_find(&st);
    if (w != NULL && w->len == len) {
        /* The standby's mapping, its pages in already: the takeover
         * skips the faults it was made for. */
        s = xr_calloc(1, sizeof(*s));
        snprintf(s->path, sizeof(s->path), "%s", path);
        s->base = w->base;
        s->len = len;
        s->warm = 1;
        xr_warm_remove(w);
    } else
        s = xr_store_map(path, fd, len, err, errlen);
    close(fd);
    if (s == NULL)
        return NULL;
    s->slot_size = h.slot_size;
    s->nslots = h.nslots;
    s->ring = h.ring;
    s->nrings = xr_store_nrings(h.slot_size, h.ring);
    s->live = s->base + XR_PAGE;
    s->slots_at = xr_store_slots_at(h.nslots);
    s->free = xr_malloc(h.nslots * sizeof(uint32_t));
    for (uint32_t i = h.nslots; i-- > 0;) {
        /* The map may say live for a slot whose header was not yet
         * marked: the header decides. */
        if (s->live[i] && xr_store_slot_live(s, i))
            s->used++;
        else
            s->free[s->nfree++] = i;
    }
    s->kept_since = xr_calloc(h.nslots, sizeof(uint32_t));
    return s;
}

/* Read one byte of every page in [p, p + len): its page table entry is
 * made now, not when a takeover's clients wait for it. */
static void xr_warm_touch(const unsigned char *p, size_t len)
{
    uintptr_t at = (uintptr_t) p & ~(uintptr_t) (XR_PAGE - 1);
    for (; at < (uintptr_t) p + len; at += XR_PAGE)
        (void) __atomic_load_n((const unsigned char *) at, __ATOMIC_RELAXED);
}

/* The pages of w's live slots that a takeover touches first: the
 * header, and where each ring is read from and written to next.  The
 * worker that runs the store writes them meanwhile: what is read here
 * only picks pages. */
static size_t xr_warm_slots(xr_warm_map_t *w)
{
    const xr_store_header_t *h = (const xr_store_header_t *) w->base;
    uint32_t nslots = h->nslots, ring = h->ring;
    uint64_t slot_size = h->slot_size;
    size_t slots_at = xr_store_slots_at(nslots);
    if (ring == 0 || slots_at + slot_size * nslots > w->len)
        return 0;
    const unsigned char *live = w->base + XR_PAGE;
    size_t n = 0;
    for (uint32_t i = 0; i < nslots; i++) {
        if (__atomic_load_n(&live[i], __ATOMIC_RELAXED) == 0)
            continue;
        const xr_pslot_t *p = (const xr_pslot_t *) (w->base + slots_at + slot_size * i);
        xr_warm_touch((const unsigned char *) p, xr_store_head_size());
        if (__atomic_load_n(&p->live, __ATOMIC_RELAXED) != XR_PSLOT_LIVE)
            continue;
        n++;
        const unsigned char *rings = (const unsigned char *) p + xr_store_head_size();
        for (int d = 0; d < 2; d++) {
            const unsigned char *in = rings + (size_t) d * ring;
            xr_warm_touch(in + __atomic_load_n(&p->taken[d], __ATOMIC_RELAXED) % ring, 1);
            xr_warm_touch(in + __atomic_load_n(&p->given[1 - d], __ATOMIC_RELAXED) % ring, 1);
        }
    }
    return n;
}

size_t xr_store_warm(char *const *paths, size_t npaths)
{
    for (size_t i = 0; i < xr_warm.n; i++)
        xr_warm.m[i].seen = 0;
    size_t live = 0;
    for (size_t k = 0; k < npaths; k++) {
        xr_store_header_t h;
        struct stat st;
        size_t len;
        char err[800];
        if (stat(paths[k], &st) != 0)
            continue;
        xr_warm_map_t *w = xr_warm_find(&st);
        if (w == NULL) {
            int fd = xr_store_open_file(paths[k], &h, &st, &len, err, sizeof(err));
            if (fd < 0)
                continue; /* still being made, or not ours: looked at again next time */
            void *m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
            close(fd);
            if (m == MAP_FAILED)
                continue;
            if (xr_warm.n == xr_warm.cap) {
                xr_warm.cap = xr_warm.cap ? xr_warm.cap * 2 : 8;
                xr_warm.m = xr_realloc(xr_warm.m, xr_warm.cap * sizeof(*xr_warm.m));
            }
            w = &xr_warm.m[xr_warm.n++];
            *w = (xr_warm_map_t){st.st_dev, st.st_ino, m, len, 0};
        }
        w->seen = 1;
        live += xr_warm_slots(w);
    }
    for (size_t i = 0; i < xr_warm.n;) {
        if (xr_warm.m[i].seen) {
            i++;
            continue;
        }
        munmap(xr_warm.m[i].base, xr_warm.m[i].len); /* its worker ended */
        xr_warm_remove(&xr_warm.m[i]);
    }
    return live;
}

void xr_store_unwarm(void)
{
    for (size_t i = 0; i < xr_warm.n; i++)
        munmap(xr_warm.m[i].base, xr_warm.m[i].len);
    free(xr_warm.m);
    memset(&xr_warm, 0, sizeof(xr_warm));
}

void xr_store_close(xr_store_t *s, int unlink_it)
{
    if (s == NULL)
        return;
    munmap(s->base, s->len);
    if (unlink_it)
        unlink(s->path);
    free(s->free);
    free(s->kept_since);
    free(s);
}

uint32_t xr_store_nslots(const xr_store_t *s)
{
    return s->nslots;
}

uint32_t xr_store_ring_size(const xr_store_t *s)
{
    return s->ring;
}

const char *xr_store_path(const xr_store_t *s)
{
    return s->path;
}

uint32_t xr_store_used(const xr_store_t *s)
{
    return s->used;
}

xr_pslot_t *xr_store_slot(xr_store_t *s, uint32_t i)
{
    return (xr_pslot_t *) (s->base + s->slots_at + s->slot_size * i);
}

int xr_store_is_live(const xr_store_t *s, uint32_t i)
{
    return s->live[i] != 0;
}

unsigned char *xr_store_ring(xr_store_t *s, xr_pslot_t *p, int which)
{
    if (which < 0 || (uint32_t) which >= s->nrings)
        return NULL;
    return (unsigned char *) p + xr_store_head_size() + (uint64_t) which * s->ring;
}

xr_pslot_t *xr_store_alloc(xr_store_t *s)
{
    if (s->nfree == 0)
        return NULL;
    uint32_t i = s->free[--s->nfree];
    if (s->kept_since[i] != 0) {
        s->kept_since[i] = 0; /* its pages serve the new connection */
        s->nkept--;
    }
    xr_pslot_t *p = xr_store_slot(s, i);
    /* Only the header: the rings are written before they are read. */
    memset(p, 0, offsetof(xr_pslot_t, state));
    s->live[i] = 1; /* before the header can say live */
    s->used++;
    return p;
}

static uint32_t xr_store_index(const xr_store_t *s, const xr_pslot_t *p)
{
    return (uint32_t) (((const unsigned char *) p - s->base - s->slots_at) / s->slot_size);
}

void xr_store_release(xr_store_t *s, xr_pslot_t *p, uint64_t keep_from_ms)
{
    atomic_store_explicit((_Atomic uint32_t *) &p->live, 0, memory_order_release);
    uint32_t i = xr_store_index(s, p);
    s->live[i] = 0;
    s->free[s->nfree++] = i;
    s->used--;
    if (keep_from_ms == 0) {
        xr_store_trim(s, p);
        return;
    }
    s->kept_since[i] = (uint32_t) keep_from_ms ? (uint32_t) keep_from_ms : 1;
    s->nkept++;
}

uint32_t xr_store_sweep(xr_store_t *s, uint64_t now_ms, uint32_t age_ms)
{
    for (uint32_t k = 0; k < s->nfree && s->nkept > 0; k++) {
        uint32_t i = s->free[k];
        if (s->kept_since[i] == 0 || (uint32_t) now_ms - s->kept_since[i] < age_ms)
            continue;
        xr_store_trim(s, xr_store_slot(s, i));
        s->kept_since[i] = 0;
        s->nkept--;
    }
    return s->nkept;
}

void xr_store_trim(xr_store_t *s, xr_pslot_t *p)
{
    madvise(xr_store_ring(s, p, 0), (size_t) s->nrings * s->ring, MADV_REMOVE);
}

void *xr_pslot_next(xr_pslot_t *p)
{
    return p->state[(p->commit_seq + 1) & 1];
}

void xr_pslot_publish(xr_pslot_t *p)
{
    /* The record is whole before the sequence says so (another process
     * reads it after this one died: the mapping is the same memory). */
    atomic_store_explicit((_Atomic uint64_t *) &p->commit_seq, p->commit_seq + 1,
                          memory_order_release);
}

void xr_pslot_commit(xr_pslot_t *p, const void *rec, size_t len)
{
    memcpy(xr_pslot_next(p), rec, XR_MIN(len, (size_t) XR_PSTATE_MAX));
    xr_pslot_publish(p);
}

const void *xr_pslot_record(const xr_pslot_t *p)
{
    return p->state[p->commit_seq & 1];
}

void xr_pslot_aux_commit(xr_pslot_t *p, const void *rec, size_t len)
{
    memcpy(p->aux[(p->aux_seq + 1) & 1], rec, XR_MIN(len, (size_t) XR_PAUX_MAX));
    atomic_store_explicit((_Atomic uint64_t *) &p->aux_seq, p->aux_seq + 1, memory_order_release);
}

const void *xr_pslot_aux_record(const xr_pslot_t *p)
{
    return p->aux[p->aux_seq & 1];
}
