/*
 * listener.h: listening sockets.  The master opens them and keeps them
 * across reloads (same address, same socket), so connections queued
 * during a reload are never refused; workers inherit them over fork().
 */
#ifndef XR_LISTENER_H
#define XR_LISTENER_H

#include "core/gen.h"

/* Open (or reuse) a socket for every listen address of g.  XR_ERROR with
 * a message like "bind() to 127.0.0.1:80 failed (98: Address in use)". */
int xr_listeners_open(xr_gen_t *g, char *err, size_t errsize);
/* The socket for an address, or -1. */
int xr_listeners_fd(const xr_addr_t *a);
/* Close every socket that none of gens[0..n) listens on. */
void xr_listeners_close_unused(xr_gen_t *const *gens, size_t n);
/* Binary upgrade: every socket (the old master passes them on), and the
 * new master's side (XR_ERROR if it has one for that address). */
size_t xr_listeners_each(void (*fn)(const struct sockaddr_storage *sa, socklen_t len, int fd,
                                    int backlog, void *arg),
                         void *arg);
int xr_listeners_adopt(const struct sockaddr_storage *sa, socklen_t len, int fd, int backlog);
/* The old master, its sockets handed over. */
void xr_listeners_close_all(void);
/* In a worker: close the inherited sockets g does not use. */
void xr_listeners_close_foreign(const xr_gen_t *g);

#endif
