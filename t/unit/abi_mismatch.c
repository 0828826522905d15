/*
 * abi_mismatch.c: a module that claims a future ABI, so the loader's
 * refusal is tested through the real binary.
 */
#include "xrayd_module.h"

static xr_module_t xr_abi_mismatch_module = {XR_MODULE_ABI + 1,
                                             XR_BUILD_SIGNATURE,
                                             "abi_mismatch",
                                             "1.0",
                                             NULL,
                                             0,
                                             NULL,
                                             NULL,
                                             NULL,
                                             NULL,
                                             NULL,
                                             0,
                                             NULL,
                                             NULL,
                                             NULL,
                                             NULL,
                                             {0}};

XR_MODULE_EXPORT(xr_abi_mismatch_module);
