/*
 * libFuzzer target for the LUKS1 header checks (src/crypto/luks.c): the
 * input is the start of a volume, read through the same callback the format
 * driver uses (bytes past the end read as zeros, as from a short file).
 * Opening without a passphrase must either fail with a message or give a
 * payload offset past the header and an info tree with eight key slots.
 * Unlocking is left out: its cost is the PBKDF2 iteration count, which the
 * header checks bound.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "crypto/luks.h"

struct input {
    const uint8_t *data;
    size_t size;
};

static int
read_input(void *opaque, uint64_t offset, void *buf, size_t len, struct vimg_error *err)
{
    const struct input *in = opaque;
    size_t n = offset < in->size ? in->size - (size_t)offset : 0;

    (void)err;
    if (n > len)
        n = len;
    memset(buf, 0, len);
    if (n)
        memcpy(buf, in->data + offset, n);
    return 0;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct input in = { data, size };
    struct vimg_error err = { 0 };
    struct vimg_luks *luks = NULL;
    json_t *info;

    if (vimg_luks_open(&luks, read_input, &in, NULL, 0, &err) < 0) {
        if (err.errnum <= 0 || err.msg[0] == '\0')
            abort();
        return 0;
    }
    if (vimg_luks_payload_offset(luks) < 4096 || vimg_luks_cipher(luks))
        abort();
    info = vimg_luks_info(luks);
    if (!info || json_array_size(json_object_get(info, "slots")) != VIMG_LUKS_N_SLOTS)
        abort();
    json_decref(info);
    vimg_luks_free(luks);
    return 0;
}
