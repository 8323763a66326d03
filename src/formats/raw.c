/*
 * The raw format: the guest sees its file as is, or the window
 * [offset, offset + size) of it. Probed (score 1) only when nothing else
 * matches; a probed raw image refuses writes that would make block 0 look
 * like another format, as QEMU does.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "core/driver.h"

struct raw_state {
    uint64_t offset;      /* start of the window in the file */
    uint64_t size;        /* window length; valid when has_size */
    bool has_size;
};

static int
raw_probe(const uint8_t *buf, size_t len, const char *filename)
{
    (void)buf;
    (void)len;
    (void)filename;
    return 1;
}

static int
raw_open(struct vimg_node *node, struct vimg_opts *opts, unsigned flags,
         struct vimg_error *err)
{
    struct raw_state *s = node->state;
    int64_t file_len;
    int ret;

    (void)flags;
    if ((ret = vimg_opts_get_size(opts, "offset", 0, &s->offset, err)) < 0)
        return ret;
    s->has_size = vimg_opts_has(opts, "size");
    if ((ret = vimg_opts_get_size(opts, "size", 0, &s->size, err)) < 0)
        return ret;
    file_len = vimg_node_length(node->file, err);
    if (file_len < 0)
        return (int)file_len;
    if (s->offset > (uint64_t)file_len)
        return vimg_error_set(err, EINVAL, "Offset (%" PRIu64 ") cannot be greater than size "
                              "of the containing file (%" PRId64 ")", s->offset, file_len);
    if (s->has_size) {
        if (s->size % 512)
            return vimg_error_set(err, EINVAL, "Specified size is not multiple of 512");
        if (s->size > (uint64_t)file_len - s->offset)
            return vimg_error_set(err, EINVAL, "The sum of offset (%" PRIu64 ") and size (%"
                                  PRIu64 ") has to be smaller or equal to the  actual size "
                                  "of the containing file (%" PRId64 ")",
                                  s->offset, s->size, file_len);
    }
    node->request_alignment = node->file->request_alignment;
    node->mem_alignment = node->file->mem_alignment;
    if (s->offset % node->request_alignment)
        node->request_alignment = 1;
    return 0;
}

static int64_t
raw_length(struct vimg_node *node, struct vimg_error *err)
{
    struct raw_state *s = node->state;
    int64_t len;

    if (s->has_size)
        return (int64_t)s->size;
    len = vimg_node_length(node->file, err);
    if (len < 0)
        return len;
    return len > (int64_t)s->offset ? len - (int64_t)s->offset : 0;
}

static int
raw_preadv(struct vimg_node *node, uint64_t offset, uint64_t bytes, const struct iovec *iov,
           int n_iov, unsigned flags, struct vimg_error *err)
{
    struct raw_state *s = node->state;

    return vimg_node_preadv(node->file, s->offset + offset, bytes, iov, n_iov, flags, err);
}

/*
 * Would this first sector make a probe pick a format other than raw? Then a
 * probed raw image must refuse it, or the guest could turn its disk into,
 * say, a qcow2 with a backing file naming any host file.
 */
static bool
raw_sector0_is_dangerous(const struct iovec *iov, int n_iov, uint64_t bytes)
{
    uint8_t buf[512] = { 0 };
    const struct vimg_driver *drv;
    uint64_t len = bytes < sizeof(buf) ? bytes : sizeof(buf);
    uint64_t done = 0;

    for (int i = 0; i < n_iov && done < len; i++) {
        uint64_t n = iov[i].iov_len < len - done ? iov[i].iov_len : len - done;
        memcpy(buf + done, iov[i].iov_base, n);
        done += n;
    }
    for (size_t i = 0; (drv = vimg_driver_at(i)) != NULL; i++) {
        if (drv->kind == VIMG_DRIVER_FORMAT && drv->probe && strcmp(drv->name, "raw") != 0 &&
            drv->probe(buf, sizeof(buf), NULL) > 1)
            return true;
    }
    return false;
}

static int
raw_pwritev(struct vimg_node *node, uint64_t offset, uint64_t bytes, const struct iovec *iov,
            int n_iov, unsigned flags, struct vimg_error *err)
{
    struct raw_state *s = node->state;

    if (node->is_probed_raw && offset == 0 && raw_sector0_is_dangerous(iov, n_iov, bytes))
        return vimg_error_set(err, EPERM, "Operation not permitted");
    return vimg_node_pwritev(node->file, s->offset + offset, bytes, iov, n_iov, flags, err);
}

static int
raw_pwrite_zeroes(struct vimg_node *node, uint64_t offset, uint64_t bytes, unsigned flags,
                  struct vimg_error *err)
{
    struct raw_state *s = node->state;

    return vimg_node_pwrite_zeroes(node->file, s->offset + offset, bytes, flags, err);
}

static int
raw_discard(struct vimg_node *node, uint64_t offset, uint64_t bytes, struct vimg_error *err)
{
    struct raw_state *s = node->state;

    return vimg_node_discard(node->file, s->offset + offset, bytes, err);
}

static int
raw_block_status(struct vimg_node *node, uint64_t offset, uint64_t bytes,
                 struct vimg_block_status *bs, struct vimg_error *err)
{
    struct raw_state *s = node->state;

    (void)err;
    bs->flags = VIMG_BS_RAW | VIMG_BS_OFFSET_VALID;
    bs->offset = s->offset + offset;
    bs->bytes = bytes;
    bs->file = node->file;
    return 0;
}

static int
raw_truncate(struct vimg_node *node, uint64_t size, bool is_exact, int prealloc,
             struct vimg_error *err)
{
    struct raw_state *s = node->state;

    /* A window that starts at an offset grows and shrinks with its file's end. */
    if (s->has_size)
        return vimg_error_set(err, ENOTSUP, "Cannot resize fixed-size raw disks");
    if (size > (uint64_t)INT64_MAX - s->offset)
        return vimg_error_set(err, EINVAL, "Image size is too large");
    return vimg_node_truncate(node->file, s->offset + size, is_exact,
                              vimg_prealloc_name(prealloc), err);
}

static const struct vimg_opt_desc raw_create_opts[] = {
    { "size", VIMG_OPT_SIZE, "Virtual disk size", NULL },
    { NULL, 0, NULL, NULL },
};

/* A raw image is its file: the protocol creates it with all options. */
static int
raw_create(const char *filename, struct vimg_opts *opts, struct vimg_error *err)
{
    return vimg_create_file(filename, opts, err);
}

static const char *const raw_strong_opts[] = { "offset", "size", NULL };

const struct vimg_driver vimg_raw_driver = {
    .name = "raw",
    .kind = VIMG_DRIVER_FORMAT,
    .state_size = sizeof(struct raw_state),
    .is_filter = true,
    .strong_opts = raw_strong_opts,
    .probe = raw_probe,
    .open = raw_open,
    .create_opts = raw_create_opts,
    .create = raw_create,
    .preadv = raw_preadv,
    .pwritev = raw_pwritev,
    .pwrite_zeroes = raw_pwrite_zeroes,
    .discard = raw_discard,
    .block_status = raw_block_status,
    .length = raw_length,
    .truncate = raw_truncate,
};
