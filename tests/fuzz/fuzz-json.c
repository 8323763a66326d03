/*
 * libFuzzer target for vimg_opts_parse_json (src/core/opts-json.c): the text
 * of json:{...} pseudo-filenames. A parsed tree goes through the typed
 * getters, dup, merge, del and the to_json round trip (fuzz-common.h).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <vimg/opts.h>

#include "fuzz-common.h"

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct vimg_opts *opts = vimg_opts_new();
    char *str = malloc(size + 1);
    struct vimg_error err;
    int ret;

    FUZZ_CHECK(str && opts);
    memcpy(str, data, size);
    str[size] = '\0';
    ret = vimg_opts_parse_json(opts, str, &err);
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
