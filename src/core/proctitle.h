/*
 * proctitle.h: what ps shows, as nginx does: "xrayd: master process ...",
 * "xrayd: worker process".
 */
#ifndef XR_PROCTITLE_H
#define XR_PROCTITLE_H

/* Call once from main() before anything reads environ; moves the
 * environment so argv's memory can hold a longer title. */
void xr_proctitle_init(int argc, char **argv);
/* Set the title (truncated to what argv and environ occupied). */
void xr_proctitle_set(const char *title);

#endif
