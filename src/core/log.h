/*
 * log.h: the error log.  One line per event:
 *   2026-11-22T02:10:00.123Z [warn] 4242: *17 message, client: A, relay: R, while ACTION
 * Debug lines are compiled in only with ./configure --with-debug.
 */
#ifndef XR_LOG_H
#define XR_LOG_H

#include "core/xrayd.h"

/* Open the error log: "stderr" or a path (opened O_APPEND).  Returns XR_OK,
 * or XR_ERROR with errno set; the old log stays in place on failure. */
int xr_log_open(const char *path, xr_log_level_t level);
/* Reopen the current path (SIGUSR1).  Keeps the old fd on failure. */
int xr_log_reopen(void);
/* Change the level only. */
void xr_log_set_level(xr_log_level_t level);
xr_log_level_t xr_log_get_level(void);
/* The fd currently logged to (for redirecting stderr when daemonized). */
int xr_log_fd(void);
/* Refresh the cached pid after fork(). */
void xr_log_set_pid(void);
/* Names: "emerg" .. "debug"; index = level. */
extern const char *const xr_log_level_names[];

void xr_log(xr_log_level_t level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* As xr_log, appending ": strerror(err) (err)" like nginx. */
void xr_log_errno(xr_log_level_t level, int err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* The relay engine supplies a session's context suffix. */
size_t xr__log_session_context(const xr_session_t *s, char *buf, size_t size);

#define xr_log_enabled(level) ((level) <= xr_log_get_level())

#ifdef XR_DEBUG
#define xr_debug(...)            xr_log(XR_LOG_DEBUG, __VA_ARGS__)
#define xr_debug_session(s, ...) xr_log_session(XR_LOG_DEBUG, s, __VA_ARGS__)
#else
#define xr_debug(...)            ((void) 0)
#define xr_debug_session(s, ...) ((void) 0)
#endif

#endif
