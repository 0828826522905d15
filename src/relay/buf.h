/*
 * buf.h: relay I/O buffers.  A direction holds one only while bytes are in
 * flight; idle relays hold none.  Buffers are mmap'd so memory goes back
 * to the system when the pool trims, and recycled through a small pool
 * whose size follows the number in use.
 *
 * Layout: data[start, filt) passed the filters and waits to be written;
 * data[filt, end) is held by filters; data[end, cap) is free.
 */
#ifndef XR_BUF_H
#define XR_BUF_H

#include <stddef.h>
#include <stdint.h>

typedef struct xr_buf_s {
    struct xr_buf_s *next; /* pool free list */
    uint32_t cap;
    uint32_t start, filt, end;
    int32_t cls; /* pool class that counts it, or -1 (unpooled) */
    uint32_t _pad[2];
    unsigned char data[];
} xr_buf_t;

/* A buffer with cap bytes of data, start = filt = end = 0.  NULL if the
 * system is out of memory (the relay then closes with a logged reason). */
xr_buf_t *xr_buf_get(size_t cap);
/* Return a buffer to the pool (or the system). */
void xr_buf_put(xr_buf_t *b);
/* Move pending and held bytes to the front.  Returns how far they moved. */
uint32_t xr_buf_compact(xr_buf_t *b);
/* Give every pooled buffer back to the system. */
void xr_buf_trim(void);

/* Statistics: buffers in use, pooled, and bytes mapped. */
typedef struct {
    size_t in_use, pooled, bytes;
} xr_buf_stats_t;
void xr_buf_stats(xr_buf_stats_t *st);

#endif
