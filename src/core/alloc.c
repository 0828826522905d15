/*
 * alloc.c: allocation that aborts on failure, and clocks.
 */
#include "core/xrayd.h"

#include <stdio.h>
#include <time.h>
#include <unistd.h>

void xr_oom(size_t size)
{
    /* The log may need memory; write(2) does not. */
    char msg[96];
    int n = snprintf(msg, sizeof(msg), "xrayd: out of memory allocating %zu bytes\n", size);
    if (write(STDERR_FILENO, msg, (size_t) n) < 0) {
        /* nothing left to try */
    }
    abort();
}

void *xr_malloc(size_t size)
{
    void *p = malloc(size ? size : 1);
    if (p == NULL)
        xr_oom(size);
    return p;
}

void *xr_calloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (p == NULL)
        xr_oom(n * size);
    return p;
}

void *xr_realloc(void *p, size_t size)
{
    p = realloc(p, size ? size : 1);
    if (p == NULL)
        xr_oom(size);
    return p;
}

char *xr_strdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *d = xr_malloc(n);
    memcpy(d, s, n);
    return d;
}

int64_t xr_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t xr_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}
