/* tests/fuzz/fuzz_config.c — libFuzzer target: a config file's text through the key table. A
 * file that is accepted must leave every key within its range (checked by printing the result
 * and reading it back through the same parser); none may crash or leak. Built by `make fuzz`. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "config/config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    vs_cfg c, again;
    vs_err err;
    vs_cfg_defaults(&c);
    if (vs_cfg_load_text(&c, (const char *)data, size, "fuzz", &err) != VS_OK) {
        if (!err.msg[0])
            abort(); /* a refusal always says why */
        return 0;
    }
    if (vs_cfg_validate(&c, &err) != VS_OK)
        return 0;
    char *json = vs_cfg_to_json(&c);
    if (!json)
        return 0;
    /* the printed configuration is itself a valid config file, except the masked api_key */
    vs_cfg_defaults(&again);
    if (!c.api_key[0] && vs_cfg_load_text(&again, json, strlen(json), "printed", &err) != VS_OK)
        abort();
    free(json);
    return 0;
}
