/*
 * module.h: the module registry: built-ins plus .so files named by
 * load_module.  A loaded module belongs to the generation that loaded it.
 */
#ifndef XR_MODULE_H
#define XR_MODULE_H

#include "core/conf.h"

typedef struct xr_dynmod_s {
    void *handle;
    const xr_module_t *module;
    const char *path;
    struct xr_dynmod_s *next;
} xr_dynmod_t;

/* NULL-terminated list of modules compiled into the daemon. */
extern const xr_module_t *const xr_builtin_modules[];

/* Load a module file and check its ABI and signature.  On success *out is
 * a new entry (pool memory; the handle must be closed by xr_module_unload).
 * On failure reports the error at `at` and returns XR_ERROR. */
int xr_module_load(xr_conf_t *cf, const xr_node_t *at, const char *path, xr_dynmod_t **out);
void xr_module_unload(xr_dynmod_t *m);

/* Check a module definition; XR_OK or XR_ERROR with the reason in buf. */
int xr_module_check(const xr_module_t *m, char *buf, size_t size);

/* Find by name: dynamic ones (newest first) shadow the built-ins. */
const xr_module_t *xr_module_find(const xr_dynmod_t *dyn, const char *name);

#endif
