/*
 * libFuzzer target for the qcow2 driver (src/formats/qcow2/): the input is a
 * whole image file. Opening it runs the header and header extension parsers
 * (backing format, feature table, bitmaps, crypto, data file) and the size
 * limits on the L1 table, refcount table and snapshot table; the shared
 * format harness then reads and maps it (the L1/L2 walk, compressed
 * clusters) and runs `check` (every L1/L2 table, snapshot table entry,
 * refcount block and bitmap table). On top of that: the snapshot list, the
 * info tree (format-specific data, bitmaps) and `check -r all` on the image
 * opened read-write (refcount fixes, COPIED flags, the refcount structure
 * rebuild, then the second check a repair is followed by). Each either
 * succeeds or fails with a message; libFuzzer's -malloc_limit_mb reports
 * any allocation sized by an untrusted field.
 */
#include "fuzz-format.h"

static void
fuzz_qcow2_extra(struct vimg_node *node)
{
    struct vimg_error err = { 0 };
    struct vimg_snapshot *list = NULL;
    size_t n = 0;
    json_t *info = NULL;
    int ret;

    ret = vimg_snapshot_list(node, &list, &n, &err);
    fuzz_expect_error(ret, &err);
    if (ret == 0)
        vimg_snapshot_list_free(list, n);
    memset(&err, 0, sizeof(err));
    ret = vimg_image_info(node, &info, &err);
    fuzz_expect_error(ret, &err);
    json_decref(info);
}

static void
fuzz_qcow2_repair(const char *name)
{
    struct vimg_error err = { 0 };
    struct vimg_check_result r;
    struct vimg_node *node;
    int ret;

    if (vimg_open(&node, name, "qcow2", NULL, VIMG_OPEN_RDWR | VIMG_OPEN_CHECK |
                  VIMG_OPEN_NO_BACKING | VIMG_OPEN_FORCE_SHARE, &err) < 0) {
        fuzz_expect_error(-1, &err);
        return;
    }
    ret = vimg_image_check(node, VIMG_CHECK_FIX_LEAKS | VIMG_CHECK_FIX_ERRORS, &r, &err);
    fuzz_expect_error(ret, &err);
    vimg_close(node);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int fd = -1;
    struct vimg_error err = { 0 };
    struct vimg_node *node;
    char name[64];

    /* Open, read, map and check: the harness every format target shares. */
    fuzz_format("qcow2", data, size);
    if (fd < 0 && (fd = memfd_create("fuzz-qcow2", 0)) < 0)
        abort();
    if (ftruncate(fd, 0) < 0 || (size && pwrite(fd, data, size, 0) != (ssize_t)size))
        abort();
    snprintf(name, sizeof(name), "/proc/self/fd/%d", fd);
    if (vimg_open(&node, name, "qcow2", NULL, VIMG_OPEN_NO_BACKING | VIMG_OPEN_FORCE_SHARE,
                  &err) < 0) {
        fuzz_expect_error(-1, &err);
        return 0;
    }
    fuzz_qcow2_extra(node);
    vimg_close(node);
    /* Repair writes: the file may grow, but only as far as the input's own clusters reach. */
    if (size <= (1u << 20))
        fuzz_qcow2_repair(name);
    return 0;
}
