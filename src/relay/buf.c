/*
 * buf.c: the buffer pool.
 */
#include "core/xrayd.h"
#include "relay/buf.h"

#include <sys/mman.h>

#define XR_BUF_CLASSES  4
#define XR_BUF_POOL_MIN 8

typedef struct {
    uint32_t cap;
    size_t pooled, in_use;
    xr_buf_t *free;
} xr_buf_class_t;

static xr_buf_class_t xr_buf_classes[XR_BUF_CLASSES];
static size_t xr_buf_unpooled; /* buffers of a size no class had room for */

static size_t xr_buf_map_size(uint32_t cap)
{
    size_t s = sizeof(xr_buf_t) + cap;
    return (s + 4095) & ~(size_t) 4095;
}

static xr_buf_class_t *xr_buf_class(uint32_t cap)
{
    xr_buf_class_t *empty = NULL;
    for (int i = 0; i < XR_BUF_CLASSES; i++) {
        if (xr_buf_classes[i].cap == cap)
            return &xr_buf_classes[i];
        if (empty == NULL && xr_buf_classes[i].in_use == 0 && xr_buf_classes[i].pooled == 0)
            empty = &xr_buf_classes[i];
    }
    if (empty != NULL)
        empty->cap = cap;
    return empty; /* NULL: too many sizes at once; unpooled */
}

xr_buf_t *xr_buf_get(size_t cap)
{
    /* The usable size is what the mapping gives anyway. */
    uint32_t c = (uint32_t) (xr_buf_map_size((uint32_t) cap) - sizeof(xr_buf_t));
    xr_buf_class_t *k = xr_buf_class(c);
    xr_buf_t *b;
    if (k != NULL && k->free != NULL) {
        b = k->free;
        k->free = b->next;
        k->pooled--;
    } else {
        void *p = mmap(NULL, xr_buf_map_size(c), PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED)
            return NULL;
        b = p;
        b->cap = c;
    }
    if (k != NULL)
        k->in_use++;
    else
        xr_buf_unpooled++;
    b->cls = k != NULL ? (int32_t) (k - xr_buf_classes) : -1;
    b->next = NULL;
    b->start = b->filt = b->end = 0;
    return b;
}

void xr_buf_put(xr_buf_t *b)
{
    if (b == NULL)
        return;
    /* Only the class that counted a buffer may take it back: the size it
     * was got at may since belong to another class. */
    xr_buf_class_t *k = b->cls >= 0 ? &xr_buf_classes[b->cls] : NULL;
    if (k == NULL)
        xr_buf_unpooled--;
    if (k != NULL) {
        k->in_use--;
        /* Keep about half as many spare as are in use: enough to absorb
         * churn, little enough that idle workers give memory back. */
        if (k->pooled < XR_MAX(XR_BUF_POOL_MIN, k->in_use / 2)) {
            b->next = k->free;
            k->free = b;
            k->pooled++;
            return;
        }
    }
    munmap(b, xr_buf_map_size(b->cap));
}

uint32_t xr_buf_compact(xr_buf_t *b)
{
    uint32_t moved = b->start;
    if (moved == 0)
        return 0;
    memmove(b->data, b->data + b->start, b->end - b->start);
    b->filt -= moved;
    b->end -= moved;
    b->start = 0;
    return moved;
}

void xr_buf_trim(void)
{
    for (int i = 0; i < XR_BUF_CLASSES; i++) {
        xr_buf_class_t *k = &xr_buf_classes[i];
        while (k->free) {
            xr_buf_t *b = k->free;
            k->free = b->next;
            munmap(b, xr_buf_map_size(b->cap));
        }
        k->pooled = 0;
    }
}

void xr_buf_stats(xr_buf_stats_t *st)
{
    memset(st, 0, sizeof(*st));
    st->in_use = xr_buf_unpooled;
    for (int i = 0; i < XR_BUF_CLASSES; i++) {
        st->in_use += xr_buf_classes[i].in_use;
        st->pooled += xr_buf_classes[i].pooled;
        st->bytes += (xr_buf_classes[i].in_use + xr_buf_classes[i].pooled) *
                     xr_buf_map_size(xr_buf_classes[i].cap);
    }
}
