/*
 * fuzz_conf.c: libFuzzer target for the configuration loader: YAML
 * parsing, includes refused by position, directive dispatch, every setter.
 * In dry-run mode no module opens a file.
 */
#include "core/xrayd.h"
#include "core/gen.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[1024];
    if (size > 65536)
        return 0;
    xr_gen_t *g = xr_gen_load_buffer(data, size, err, sizeof(err));
    if (g != NULL)
        xr_gen_free(g);
    return 0;
}
