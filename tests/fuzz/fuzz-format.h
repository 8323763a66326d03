/*
 * Shared body of the format-driver fuzz targets (fuzz-qed.c, fuzz-dmg.c...):
 * the input is a whole image file, held in a memfd and opened read-only
 * through the file protocol with the format forced and backing files left
 * closed, so that only the driver's own header and table parsers run.
 *
 * A failed open must come with an errno and a message. An open image must
 * answer length, block status and reads at its start, middle and end (each
 * either succeeding or failing with a message), and `check` where the
 * driver has one. libFuzzer's -malloc_limit_mb turns any allocation sized
 * by an untrusted field (a table or chunk count claiming gigabytes) into a
 * reported failure.
 */
#ifndef VIMG_FUZZ_FORMAT_H
#define VIMG_FUZZ_FORMAT_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <vimg/image.h>
#include <vimg/node.h>

#define FUZZ_READ_BYTES (256u << 10)

static void
fuzz_expect_error(int ret, const struct vimg_error *err)
{
    if (ret < 0 && (err->errnum <= 0 || err->msg[0] == '\0'))
        abort();
}

static void
fuzz_exercise(struct vimg_node *node, uint8_t *buf)
{
    struct vimg_error err = { 0 };
    struct vimg_check_result result;
    int64_t len = vimg_node_length(node, &err);
    uint64_t starts[3];

    if (len < 0) {
        fuzz_expect_error((int)len, &err);
        return;
    }
    starts[0] = 0;
    starts[1] = (uint64_t)len / 2 / 512 * 512;
    starts[2] = (uint64_t)len > FUZZ_READ_BYTES ? ((uint64_t)len - FUZZ_READ_BYTES) / 512 * 512
                                                : 0;
    for (int i = 0; i < 3; i++) {
        uint64_t n = (uint64_t)len - starts[i] < FUZZ_READ_BYTES ? (uint64_t)len - starts[i]
                                                                 : FUZZ_READ_BYTES;
        struct vimg_block_status bs;
        int ret;

        memset(&err, 0, sizeof(err));
        ret = vimg_node_pread(node, starts[i], buf, n, 0, &err);
        fuzz_expect_error(ret, &err);
        memset(&err, 0, sizeof(err));
        if (n && (ret = vimg_node_block_status(node, starts[i], n, &bs, &err)) == 0 &&
            (bs.bytes == 0 || bs.bytes > n))
            abort();
        fuzz_expect_error(ret, &err);
    }
    memset(&err, 0, sizeof(err));
    fuzz_expect_error(vimg_image_check(node, 0, &result, &err), &err);
}

static int
fuzz_format(const char *format, const uint8_t *data, size_t size)
{
    static int fd = -1;
    static uint8_t *buf;
    struct vimg_error err = { 0 };
    struct vimg_node *node;
    char name[64];

    if (fd < 0 && (fd = memfd_create("fuzz-image", 0)) < 0)
        abort();
    if (!buf && !(buf = malloc(FUZZ_READ_BYTES)))
        abort();
    if (ftruncate(fd, 0) < 0 || (size && pwrite(fd, data, size, 0) != (ssize_t)size))
        abort();
    snprintf(name, sizeof(name), "/proc/self/fd/%d", fd);
    if (vimg_open(&node, name, format, NULL, VIMG_OPEN_NO_BACKING |
                  VIMG_OPEN_FORCE_SHARE, &err) < 0) {
        fuzz_expect_error(-1, &err);
        return 0;
    }
    fuzz_exercise(node, buf);
    vimg_close(node);
    return 0;
}

/*
 * Writes the input to the file at `input` (a file in a private directory,
 * beside others the target made), then opens `image` (that file or a
 * descriptor naming it) read-only as `format` and exercises it.
 */
static inline int
fuzz_file(const char *input, const char *image, const char *format, const uint8_t *data,
          size_t size)
{
    static uint8_t *buf;
    struct vimg_error err = { 0 };
    struct vimg_node *node;
    FILE *f;

    if (!buf && !(buf = malloc(FUZZ_READ_BYTES)))
        abort();
    if (!(f = fopen(input, "wb")) || (size && fwrite(data, 1, size, f) != size) ||
        fclose(f) != 0)
        abort();
    if (vimg_open(&node, image, format, NULL, VIMG_OPEN_NO_BACKING | VIMG_OPEN_FORCE_SHARE,
                  &err) < 0) {
        fuzz_expect_error(-1, &err);
        return 0;
    }
    fuzz_exercise(node, buf);
    vimg_close(node);
    return 0;
}

#define FUZZ_FORMAT_TARGET(fmt)                                         \
    int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);       \
    int                                                                 \
    LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)            \
    {                                                                   \
        return fuzz_format(fmt, data, size);                            \
    }

#endif
