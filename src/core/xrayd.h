/*
 * xrayd.h: what every daemon source file includes first.
 */
#ifndef XR_XRAYD_H
#define XR_XRAYD_H

#include "common/common.h"
#include "xrayd_module.h"

#define xr_container_of(ptr, type, member) ((type *) ((char *) (ptr) -offsetof(type, member)))

/* Allocation that cannot fail: xrayd aborts on out-of-memory rather than
 * limping on with half-built state. */
void *xr_malloc(size_t size);
void *xr_calloc(size_t n, size_t size);
void *xr_realloc(void *p, size_t size);
char *xr_strdup(const char *s);
/* Say so on stderr and abort: what the above do when memory runs out. */
void xr_oom(size_t size) __attribute__((noreturn));

/* Milliseconds since the epoch. */
int64_t xr_wall_ms(void);
/* Monotonic milliseconds. */
int64_t xr_mono_ms(void);

/* Intrusive doubly linked list (as libuv's QUEUE, with names). */
typedef struct xr_list_s {
    struct xr_list_s *next, *prev;
} xr_list_t;

static inline void xr_list_init(xr_list_t *h)
{
    h->next = h->prev = h;
}
static inline int xr_list_empty(const xr_list_t *h)
{
    return h->next == h;
}
static inline void xr_list_insert_tail(xr_list_t *h, xr_list_t *n)
{
    n->prev = h->prev;
    n->next = h;
    h->prev->next = n;
    h->prev = n;
}
static inline void xr_list_remove(xr_list_t *n)
{
    n->prev->next = n->next;
    n->next->prev = n->prev;
    n->next = n->prev = n;
}

#endif /* XR_XRAYD_H */
