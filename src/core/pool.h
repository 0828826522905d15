/*
 * pool.h: an arena for memory that lives exactly as long as one
 * configuration generation; it is dropped whole after a reload.
 */
#ifndef XR_POOL_H
#define XR_POOL_H

#include <stddef.h>

typedef struct xr_pool_s xr_pool_t;

/* Create an empty arena.  Never NULL (aborts on out-of-memory). */
xr_pool_t *xr_pool_create(void);
/* Zeroed memory, 16-byte aligned, valid until xr_pool_destroy(). */
void *xr_pool_alloc(xr_pool_t *p, size_t size);
/* Copy len bytes of s and add a NUL. */
char *xr_pool_strndup(xr_pool_t *p, const char *s, size_t len);
/* Free everything allocated from p, and p. */
void xr_pool_destroy(xr_pool_t *p);

#endif
