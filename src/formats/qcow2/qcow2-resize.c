/*
 * qcow2 resize (qemu-img resize, qemu-io truncate), with QEMU's rules:
 * sizes are multiples of 512; shrinking unmaps every cluster past the new
 * end (allocated or not), frees the L2 tables wholly past it, keeps the L1
 * size and truncates the file after the last cluster in use; growing over
 * a backing file longer than the old size makes the new area read as zeros.
 *
 * Left out: QEMU also drops refcount blocks that count no used cluster
 * when shrinking; ours stay (the image is as valid, its file may be longer).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>

#include "formats/qcow2/qcow2.h"

static int
qcow2_check_resize(struct vimg_node *node, uint64_t size, int prealloc, struct vimg_error *err)
{
    struct qcow2_state *s = node->state;

    if (size % 512)
        return vimg_error_set(err, EINVAL, "The new size must be a multiple of 512");
    if (s->hdr.nb_snapshots && s->hdr.version < 3)
        return vimg_error_set(err, ENOTSUP, "Can't resize a v2 image which has snapshots");
    if (size < s->hdr.size && prealloc != VIMG_PREALLOC_OFF)
        return vimg_error_set(err, ENOTSUP, "Preallocation can't be used for shrinking an "
                              "image");
    return 0;
}

/* Cuts the image file (or the data file) after what the image still uses. */
static int
qcow2_trim_storage(struct vimg_node *node, uint64_t size, struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    struct vimg_node *file = s->has_data_file ? node->data_file : node->file;
    uint64_t end = size, end_index;
    int64_t len;
    int ret;

    if (!file)
        return 0;
    if (!s->has_data_file) {
        if ((ret = qcow2_used_end(node, &end_index, err)) < 0)
            return ret;
        s->alloc_end = end_index;
        end = end_index * s->cluster_size;
    }
    if ((len = vimg_node_length(file, err)) < 0)
        return (int)len;
    if ((uint64_t)len <= end)
        return 0;
    ret = vimg_node_truncate(file, end, true, "off", err);
    /* As QEMU, a file that cannot be cut keeps its tail: the image is valid either way. */
    return ret == -ENOTSUP ? 0 : ret;
}

static int
qcow2_shrink(struct vimg_node *node, uint64_t size, struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    int ret;

    if ((ret = qcow2_discard_tail(node, qcow2_align_up(size, s->cluster_size), err)) < 0 ||
        (ret = qcow2_flush_metadata(node, err)) < 0)
        return ret;
    return qcow2_trim_storage(node, size, err);
}

static int
qcow2_set_size(struct vimg_node *node, uint64_t size, struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t cover = (uint64_t)s->l2_entries * s->cluster_size;
    uint8_t buf[8];
    int ret;

    if ((ret = qcow2_grow_l1(node, size / cover + (size % cover ? 1 : 0), err)) < 0)
        return ret;
    qcow2_put_be64(buf, size);
    if ((ret = qcow2_write_header_field(node, QCOW2_OFF_SIZE, buf, 8, err)) < 0)
        return ret;
    s->hdr.size = size;
    return 0;
}

/* Whether a backing file would show through [old_size, new end): QEMU zero-fills it then. */
static int
qcow2_backing_shows(struct vimg_node *node, uint64_t old_size, bool *shows,
                    struct vimg_error *err)
{
    int64_t len;

    *shows = false;
    if (!node->backing)
        return 0;
    if ((len = vimg_node_length(node->backing, err)) < 0)
        return (int)len;
    *shows = (uint64_t)len > old_size;
    return 0;
}

/*
 * Zero clusters from the first subcluster boundary on (the last one whole:
 * it ends the image); zeros written as data in the piece before it.
 */
static int
qcow2_zero_fill(struct vimg_node *node, uint64_t old_size, uint64_t size,
                struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t zero_start = qcow2_align_up(old_size, s->subcluster_size);
    uint64_t head_end = zero_start < size ? zero_start : size;
    uint8_t *zeros;
    int ret = 0;

    if (size > zero_start &&
        (ret = qcow2_zero(node, zero_start, size - zero_start, 0, err)) < 0)
        return ret;
    if (head_end <= old_size)
        return 0;
    if (!(zeros = calloc(1, head_end - old_size)))
        return vimg_error_set(err, ENOMEM, "Out of memory");
    ret = qcow2_write(node, old_size, head_end - old_size,
                      &(struct iovec){ .iov_base = zeros, .iov_len = head_end - old_size }, 1,
                      err);
    free(zeros);
    return ret;
}

int
qcow2_resize(struct vimg_node *node, uint64_t size, int prealloc, struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t old_size = s->hdr.size;
    bool must_zero = false;
    int ret;

    if ((ret = qcow2_check_resize(node, size, prealloc, err)) < 0)
        return ret;
    if (size > old_size && (ret = qcow2_backing_shows(node, old_size, &must_zero, err)) < 0)
        return ret;
    if (must_zero && s->hdr.version < 3)
        return vimg_error_set(err, ENOTSUP, "Failed to zero out new clusters: Operation not "
                              "supported");
    pthread_mutex_lock(&s->lock);
    if (size < old_size)
        ret = qcow2_shrink(node, size, err);
    if (ret == 0)
        ret = qcow2_set_size(node, size, err);
    pthread_mutex_unlock(&s->lock);
    if (ret == 0 && must_zero)
        ret = qcow2_zero_fill(node, old_size, size, err);
    return ret;
}
