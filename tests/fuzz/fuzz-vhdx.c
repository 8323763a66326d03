/*
 * libFuzzer target for the vhdx driver (src/formats/vhdx.c): headers,
 * region table, metadata, BAT and the log. Each input is opened read-only
 * (where an image with a log to replay must be refused) and then read-write,
 * which replays the log into the memfd copy of the input, validates it
 * entry by entry and must leave an image that opens again.
 */
#include "fuzz-format.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int fd = -1;
    static uint8_t *buf;
    struct vimg_error err = { 0 };
    struct vimg_node *node;
    char name[64];

    fuzz_format("vhdx", data, size);
    if (fd < 0 && (fd = memfd_create("fuzz-image-rw", 0)) < 0)
        abort();
    if (!buf && !(buf = malloc(FUZZ_READ_BYTES)))
        abort();
    if (ftruncate(fd, 0) < 0 || (size && pwrite(fd, data, size, 0) != (ssize_t)size))
        abort();
    snprintf(name, sizeof(name), "/proc/self/fd/%d", fd);
    for (int i = 0; i < 2; i++) {
        memset(&err, 0, sizeof(err));
        if (vimg_open(&node, name, "vhdx", NULL, VIMG_OPEN_RDWR | VIMG_OPEN_NO_BACKING |
                      VIMG_OPEN_FORCE_SHARE, &err) < 0) {
            fuzz_expect_error(-1, &err);
            /* A replay that opened once opens again. */
            if (i == 1)
                abort();
            return 0;
        }
        fuzz_exercise(node, buf);
        vimg_close(node);
    }
    return 0;
}
