/*
 * fuzz_client_conf.c: libFuzzer target for the XRAY client file
 * (~/.config/xray/client.yaml) as libxray parses it: YAML of any shape,
 * keys known and unknown, values of any length.  What it sets must be a
 * string that fits its buffer.
 */
#include "lib/client.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[512];
    if (size > 65536)
        return 0;
    xr_client_conf_t cf;
    static xr_client_conf_buf_t b;
    memset(&cf, 0, sizeof(cf));
    memset(&b, 0, sizeof(b));
    int rc = xr_client_conf_parse(data, size, &cf, &b, err, sizeof(err));
    const char *set[] = {cf.agent, cf.agent_name, cf.cert, cf.key, cf.ca};
    for (size_t i = 0; i < sizeof(set) / sizeof(set[0]); i++)
        if (set[i] != NULL && (set[i] < (const char *) &b ||
                               set[i] >= (const char *) &b + sizeof(b) || set[i][0] == '\0'))
            abort();
    if (rc < 0 && err[0] == '\0')
        abort(); /* an error says what */
    return 0;
}
