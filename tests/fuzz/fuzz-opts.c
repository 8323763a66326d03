/*
 * libFuzzer target for vimg_opts_parse (src/core/opts.c): "key=value,a.b=c"
 * strings with ",," escapes, an optional implied key and bare keys. A parsed
 * tree goes through the typed getters, dup, merge, del and the to_json round
 * trip (fuzz-common.h). The first byte chooses the implied key.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <vimg/opts.h>

#include "fuzz-common.h"

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct vimg_opts *opts;
    struct vimg_error err;
    const char *implied;
    char *str;
    int ret;

    if (size == 0)
        return 0;
    implied = data[0] & 1 ? "filename" : NULL;
    str = malloc(size);
    opts = vimg_opts_new();
    FUZZ_CHECK(str && opts);
    memcpy(str, data + 1, size - 1);
    str[size - 1] = '\0';
    ret = vimg_opts_parse(opts, str, implied, &err);
    if (ret == 0) {
        fuzz_check_tree(opts);
        fuzz_check_del(opts);
    } else {
        FUZZ_CHECK(ret == -err.errnum && err.errnum == EINVAL);
        FUZZ_CHECK(err.msg[0] != '\0');
    }
    vimg_opts_free(opts);
    free(str);
    return 0;
}
