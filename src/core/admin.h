/*
 * admin.h: the admin sockets `xray status` reads (the agent's and the
 * daemon's): a UNIX socket of mode 0600, one request line ("status" or
 * "status json"), one answer, close; and the growing string the answers
 * are built in.
 */
#ifndef XR_ADMIN_H
#define XR_ADMIN_H

#include <stddef.h>

typedef struct {
    char *p;
    size_t len, cap;
    int failed; /* out of memory: the answer is dropped */
} xr_sb_t;

void xr_sb_add(xr_sb_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* s as a JSON string (quotes and control characters escaped). */
void xr_sb_json(xr_sb_t *b, const char *s);

/* Bind path (an old socket file there is replaced) and listen,
 * non-blocking.  The descriptor, or -1 with errno. */
int xr_admin_open(const char *path);
/* Answer every connection waiting on lfd: status(b, json) builds the
 * answer to "status" / "status json". */
void xr_admin_serve(int lfd, void (*status)(xr_sb_t *b, int json));

#endif
