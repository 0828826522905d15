/*
 * pool.c: a bump allocator over a list of blocks.
 */
#include "core/xrayd.h"
#include "core/pool.h"

#define XR_POOL_BLOCK 16384

typedef struct xr_pool_block_s {
    struct xr_pool_block_s *next;
    size_t used, size;
    _Alignas(16) unsigned char data[];
} xr_pool_block_t;

struct xr_pool_s {
    xr_pool_block_t *head;
};

xr_pool_t *xr_pool_create(void)
{
    return xr_calloc(1, sizeof(xr_pool_t));
}

void *xr_pool_alloc(xr_pool_t *p, size_t size)
{
    size = (size + 15) & ~(size_t) 15;
    xr_pool_block_t *b = p->head;
    if (b == NULL || b->size - b->used < size) {
        size_t bs = size > XR_POOL_BLOCK / 4 ? size : XR_POOL_BLOCK;
        b = xr_malloc(sizeof(*b) + bs);
        b->size = bs;
        b->used = 0;
        if (size > XR_POOL_BLOCK / 4 && p->head != NULL) {
            /* A big allocation gets its own block behind the current one, so
             * the current block's free space is not wasted. */
            b->next = p->head->next;
            p->head->next = b;
        } else {
            b->next = p->head;
            p->head = b;
        }
    }
    void *r = b->data + b->used;
    b->used += size;
    memset(r, 0, size);
    return r;
}

char *xr_pool_strndup(xr_pool_t *p, const char *s, size_t len)
{
    char *d = xr_pool_alloc(p, len + 1);
    memcpy(d, s, len);
    d[len] = '\0';
    return d;
}

void xr_pool_destroy(xr_pool_t *p)
{
    if (p == NULL)
        return;
    xr_pool_block_t *b = p->head;
    while (b) {
        xr_pool_block_t *n = b->next;
        free(b);
        b = n;
    }
    free(p);
}
