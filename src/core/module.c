/*
 * module.c: the module loader (STYLE 4): one known symbol per .so, the
 * ABI compared by number and the build signature by text, refused by name.
 */
#include "core/xrayd.h"
#include "core/module.h"
#include "core/conf.h"

#include <dlfcn.h>
#include <stdio.h>

extern xr_module_t xr_log_module;
extern xr_module_t xr_signature_module;

const xr_module_t *const xr_builtin_modules[] = {&xr_log_module, &xr_signature_module, NULL};

int xr_module_check(const xr_module_t *m, char *buf, size_t size)
{
    if (m->abi != XR_MODULE_ABI) {
        snprintf(buf, size, "module \"%s\" was built for ABI %u, this xrayd is ABI %d",
                 m->name ? m->name : "?", m->abi, XR_MODULE_ABI);
        return XR_ERROR;
    }
    if (m->signature == NULL || strcmp(m->signature, XR_BUILD_SIGNATURE) != 0) {
        snprintf(buf, size, "module \"%s\" has build signature \"%s\", this xrayd has \"%s\"",
                 m->name ? m->name : "?", m->signature ? m->signature : "(none)",
                 XR_BUILD_SIGNATURE);
        return XR_ERROR;
    }
    if (m->name == NULL || m->name[0] == '\0') {
        snprintf(buf, size, "module has no name");
        return XR_ERROR;
    }
    for (const xr_directive_t *d = m->directives; d && d->name; d++) {
        /* A slot must lie wholly inside the conf the core allocates. */
        if (!(d->contexts & XR_CTX_FILTER) ||
            d->offset + xr_directive_slot_size(d) > m->conf_size ||
            (d->type == XR_T_CUSTOM && d->set == NULL) ||
            (d->type == XR_T_ENUM && d->enums == NULL)) {
            snprintf(buf, size, "module \"%s\": directive \"%s\" is malformed", m->name, d->name);
            return XR_ERROR;
        }
    }
    return XR_OK;
}

int xr_module_load(xr_conf_t *cf, const xr_node_t *at, const char *path, xr_dynmod_t **out)
{
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (h == NULL)
        return xr_conf_error(cf, at, "cannot load module: %s", dlerror());
    xr_module_t **entry = dlsym(h, XR_MODULE_ENTRY_SYMBOL);
    if (entry == NULL || *entry == NULL) {
        dlclose(h);
        return xr_conf_error(cf, at, "\"%s\" is not an xrayd module (no %s symbol)", path,
                             XR_MODULE_ENTRY_SYMBOL);
    }
    char why[256];
    if (xr_module_check(*entry, why, sizeof(why)) != XR_OK) {
        dlclose(h);
        return xr_conf_error(cf, at, "%s: %s", path, why);
    }
    xr_dynmod_t *m = xr_conf_alloc(cf, sizeof(*m));
    m->handle = h;
    m->module = *entry;
    m->path = xr_conf_strdup(cf, path, strlen(path));
    *out = m;
    return XR_OK;
}

void xr_module_unload(xr_dynmod_t *m)
{
    if (m->handle)
        dlclose(m->handle);
    m->handle = NULL;
}

const xr_module_t *xr_module_find(const xr_dynmod_t *dyn, const char *name)
{
    for (; dyn; dyn = dyn->next)
        if (strcmp(dyn->module->name, name) == 0)
            return dyn->module;
    for (size_t i = 0; xr_builtin_modules[i]; i++)
        if (strcmp(xr_builtin_modules[i]->name, name) == 0)
            return xr_builtin_modules[i];
    return NULL;
}
