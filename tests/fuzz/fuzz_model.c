/* tests/fuzz/fuzz_model.c — libFuzzer target: a model file through the loader (from a memfd, as
 * serve and inspect read a file). Nothing may crash, leak or read past the file, and a refusal
 * must say why. Built by `make fuzz`; seeded with a small valid file and broken ones in
 * corpus/model. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include "runtime/model.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int fd = memfd_create("fuzz-model", MFD_CLOEXEC);
    if (fd < 0)
        return 0;
    if (write(fd, data, size) != (ssize_t)size) {
        close(fd);
        return 0;
    }
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    vs_rt_model *m = NULL;
    vs_err err = {0};
    if (vs_rt_model_load(path, &m, &err) == VS_OK) {
        vs_rt_model_free(m);
    } else if (!err.msg[0]) {
        abort();
    }
    close(fd);
    return 0;
}
