/*
 * common.h: what code shared by the daemon and libxray (src/common) and
 * libxray itself include first: return codes and a few macros, nothing of
 * the daemon.  The daemon's core/xrayd.h builds on it.
 */
#ifndef XR_COMMON_H
#define XR_COMMON_H

#include "xr_config.h"

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* The same codes as the public module header's (identical definitions). */
#define XR_OK       0
#define XR_ERROR    -1
#define XR_AGAIN    -2
#define XR_DECLINED -3

#define XR_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define XR_MIN(a, b)     ((a) < (b) ? (a) : (b))
#define XR_MAX(a, b)     ((a) > (b) ? (a) : (b))

#endif
