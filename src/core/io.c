/*
 * The request path every driver shares: bounds checks, read-modify-write of
 * requests that are not aligned to the node's request_alignment, bounce
 * buffers for memory the driver cannot use, splitting to max_transfer,
 * reading through the backing chain where a layer is unallocated, and
 * block-status aggregation.
 */
#include <errno.h>
#include <stdlib.h>
#include <stdatomic.h>
#include <string.h>

#include "core/driver.h"

#define MAX_REQUEST_BYTES ((uint64_t)1 << 62)

static int
unsupported(struct vimg_node *node, const char *what, struct vimg_error *err)
{
    (void)what;
    return vimg_error_set(err, ENOTSUP, "Operation not supported by %s", node->drv->name);
}

/*
 * Only requests on the image a caller opened are checked against its size;
 * a driver may read or write its children past their end (reads there
 * return zeros, writes grow the file).
 */
/* After a fatal corruption event nothing reaches the driver, as in QEMU. */
static int
check_usable(struct vimg_node *node, struct vimg_error *err)
{
    if (atomic_load(&node->is_unusable))
        return vimg_error_set(err, ENOMEDIUM, "%s", strerror(ENOMEDIUM));
    return 0;
}

static int
check_range(struct vimg_node *node, uint64_t offset, uint64_t bytes, struct vimg_error *err)
{
    int ret;

    if ((ret = check_usable(node, err)) < 0)
        return ret;
    if (offset > MAX_REQUEST_BYTES || bytes > MAX_REQUEST_BYTES)
        return vimg_error_set(err, EIO, "Input/output error");
    if (!node->is_root)
        return 0;
    if (offset > (uint64_t)node->cached_length || bytes > (uint64_t)node->cached_length - offset)
        return vimg_error_set(err, EIO, "Input/output error");
    return 0;
}

static bool
iov_is_aligned(const struct iovec *iov, int n_iov, uint32_t mem_align, uint32_t len_align)
{
    for (int i = 0; i < n_iov; i++) {
        if (((uintptr_t)iov[i].iov_base % mem_align) || (iov[i].iov_len % len_align))
            return false;
    }
    return true;
}

void
vimg_iov_to_buf(const struct iovec *iov, int n_iov, uint64_t skip, void *buf, uint64_t bytes)
{
    unsigned char *out = buf;

    for (int i = 0; i < n_iov && bytes; i++) {
        uint64_t len = iov[i].iov_len;
        if (skip >= len) {
            skip -= len;
            continue;
        }
        len -= skip;
        if (len > bytes)
            len = bytes;
        memcpy(out, (unsigned char *)iov[i].iov_base + skip, len);
        out += len;
        bytes -= len;
        skip = 0;
    }
}

void
vimg_buf_to_iov(const void *buf, uint64_t bytes, const struct iovec *iov, int n_iov, uint64_t skip)
{
    const unsigned char *in = buf;

    for (int i = 0; i < n_iov && bytes; i++) {
        uint64_t len = iov[i].iov_len;
        if (skip >= len) {
            skip -= len;
            continue;
        }
        len -= skip;
        if (len > bytes)
            len = bytes;
        memcpy((unsigned char *)iov[i].iov_base + skip, in, len);
        in += len;
        bytes -= len;
        skip = 0;
    }
}

void
vimg_iov_memset(const struct iovec *iov, int n_iov, uint64_t skip, uint64_t bytes)
{
    for (int i = 0; i < n_iov && bytes; i++) {
        uint64_t len = iov[i].iov_len;
        if (skip >= len) {
            skip -= len;
            continue;
        }
        len -= skip;
        if (len > bytes)
            len = bytes;
        memset((unsigned char *)iov[i].iov_base + skip, 0, len);
        bytes -= len;
        skip = 0;
    }
}

int
vimg_iov_slice(const struct iovec *iov, int n_iov, uint64_t skip, uint64_t bytes,
          struct iovec **out, int *n_out)
{
    struct iovec *v = malloc((size_t)(n_iov > 0 ? n_iov : 1) * sizeof(*v));
    int n = 0;

    if (!v)
        return -ENOMEM;
    for (int i = 0; i < n_iov && bytes; i++) {
        uint64_t len = iov[i].iov_len;
        if (skip >= len) {
            skip -= len;
            continue;
        }
        len -= skip;
        if (len > bytes)
            len = bytes;
        v[n].iov_base = (unsigned char *)iov[i].iov_base + skip;
        v[n].iov_len = len;
        n++;
        bytes -= len;
        skip = 0;
    }
    *out = v;
    *n_out = n;
    return 0;
}

static void *
bounce_alloc(struct vimg_node *node, uint64_t bytes)
{
    size_t align = node->mem_alignment > 64 ? node->mem_alignment : 64;
    void *p = NULL;

    if (posix_memalign(&p, align, bytes ? bytes : align) != 0)
        return NULL;
    return p;
}

/* A read through the driver's preadv, or through its pread and a gathering buffer. */
static int
driver_preadv(struct vimg_node *node, uint64_t offset, uint64_t bytes, const struct iovec *iov,
              int n_iov, unsigned flags, struct vimg_error *err)
{
    uint8_t *buf;
    int ret;

    if (node->drv->preadv)
        return node->drv->preadv(node, offset, bytes, iov, n_iov, flags, err);
    if (n_iov == 1)
        return node->drv->pread(node, offset, iov[0].iov_base, bytes, err);
    if (!(buf = malloc(bytes ? bytes : 1)))
        return vimg_error_set(err, ENOMEM, "Out of memory");
    ret = node->drv->pread(node, offset, buf, bytes, err);
    if (ret == 0)
        vimg_buf_to_iov(buf, bytes, iov, n_iov, 0);
    free(buf);
    return ret;
}

int
vimg_node_pread_padded(struct vimg_node *child, uint64_t offset, void *buf, uint64_t bytes,
                       struct vimg_error *err)
{
    int64_t len = vimg_node_length(child, err);
    uint64_t avail;

    if (len < 0)
        return (int)len;
    avail = offset >= (uint64_t)len ? 0 : (uint64_t)len - offset;
    if (avail > bytes)
        avail = bytes;
    memset((uint8_t *)buf + avail, 0, bytes - avail);
    return avail ? vimg_node_pread(child, offset, buf, avail, 0, err) : 0;
}

/* Calls the driver in chunks of at most max_transfer bytes. */
static int
driver_rw_split(struct vimg_node *node, bool is_write, uint64_t offset, uint64_t bytes,
                const struct iovec *iov, int n_iov, unsigned flags, struct vimg_error *err)
{
    uint64_t max = node->max_transfer ? node->max_transfer : bytes;
    uint64_t done = 0;

    if (bytes <= max)
        return is_write ? node->drv->pwritev(node, offset, bytes, iov, n_iov, flags, err)
                        : driver_preadv(node, offset, bytes, iov, n_iov, flags, err);
    while (done < bytes) {
        uint64_t len = bytes - done < max ? bytes - done : max;
        struct iovec *sub;
        int n_sub, ret;

        if (vimg_iov_slice(iov, n_iov, done, len, &sub, &n_sub) < 0)
            return vimg_error_set(err, ENOMEM, "Out of memory");
        ret = is_write ? node->drv->pwritev(node, offset + done, len, sub, n_sub, flags, err)
                       : driver_preadv(node, offset + done, len, sub, n_sub, flags, err);
        free(sub);
        if (ret < 0)
            return ret;
        done += len;
    }
    return 0;
}

/* Reads [offset, +bytes) where alignment and memory suit the driver, bouncing otherwise. */
static int
driver_read_aligned(struct vimg_node *node, uint64_t offset, uint64_t bytes,
                    const struct iovec *iov, int n_iov, unsigned flags, struct vimg_error *err)
{
    uint32_t align = node->request_alignment;
    uint64_t start, end;
    unsigned char *bounce;
    struct iovec biov;
    int ret;

    if (offset % align == 0 && bytes % align == 0 &&
        iov_is_aligned(iov, n_iov, node->mem_alignment, align))
        return driver_rw_split(node, false, offset, bytes, iov, n_iov, flags, err);
    start = offset - offset % align;
    end = offset + bytes;
    end = end % align ? end + align - end % align : end;
    if (!(bounce = bounce_alloc(node, end - start)))
        return vimg_error_set(err, ENOMEM, "Out of memory");
    biov.iov_base = bounce;
    biov.iov_len = end - start;
    ret = driver_rw_split(node, false, start, end - start, &biov, 1, flags, err);
    if (ret == 0)
        vimg_buf_to_iov(bounce + (offset - start), bytes, iov, n_iov, 0);
    free(bounce);
    return ret;
}

/* Read-modify-write of the partial blocks at the ends of an unaligned write. */
static int
driver_write_aligned(struct vimg_node *node, uint64_t offset, uint64_t bytes,
                     const struct iovec *iov, int n_iov, unsigned flags, struct vimg_error *err)
{
    uint32_t align = node->request_alignment;
    uint64_t start, end;
    unsigned char *bounce;
    struct iovec biov;
    int ret;

    if (offset % align == 0 && bytes % align == 0 &&
        iov_is_aligned(iov, n_iov, node->mem_alignment, align))
        return driver_rw_split(node, true, offset, bytes, iov, n_iov, flags, err);
    start = offset - offset % align;
    end = offset + bytes;
    end = end % align ? end + align - end % align : end;
    if (!(bounce = bounce_alloc(node, end - start)))
        return vimg_error_set(err, ENOMEM, "Out of memory");
    biov.iov_len = align;
    pthread_mutex_lock(&node->rmw_lock);
    ret = 0;
    if (offset != start) {
        biov.iov_base = bounce;
        ret = driver_rw_split(node, false, start, align, &biov, 1, 0, err);
    }
    if (ret == 0 && offset + bytes != end && !(offset != start && end - align == start)) {
        biov.iov_base = bounce + (end - align - start);
        ret = driver_rw_split(node, false, end - align, align, &biov, 1, 0, err);
    }
    if (ret == 0) {
        vimg_iov_to_buf(iov, n_iov, 0, bounce + (offset - start), bytes);
        biov.iov_base = bounce;
        biov.iov_len = end - start;
        ret = driver_rw_split(node, true, start, end - start, &biov, 1, flags, err);
    }
    pthread_mutex_unlock(&node->rmw_lock);
    free(bounce);
    return ret;
}

/*
 * Reads a range that may be partly unallocated in this layer: allocated runs
 * come from the driver, the rest from the backing node (zeros past its end).
 */
static int
read_through_backing(struct vimg_node *node, uint64_t offset, uint64_t bytes,
                     const struct iovec *iov, int n_iov, unsigned flags, struct vimg_error *err)
{
    uint64_t done = 0;
    int64_t backing_len = vimg_node_length(node->backing, err);

    if (backing_len < 0)
        return (int)backing_len;
    while (done < bytes) {
        struct vimg_block_status bs;
        struct iovec *sub;
        int n_sub, ret;
        uint64_t len;

        ret = node->drv->block_status(node, offset + done, bytes - done, &bs, err);
        if (ret < 0)
            return ret;
        len = bs.bytes < bytes - done ? bs.bytes : bytes - done;
        if (len == 0)
            return vimg_error_set(err, EIO, "Block status returned an empty range");
        if (vimg_iov_slice(iov, n_iov, done, len, &sub, &n_sub) < 0)
            return vimg_error_set(err, ENOMEM, "Out of memory");
        if (bs.flags & VIMG_BS_ALLOCATED) {
            ret = driver_read_aligned(node, offset + done, len, sub, n_sub, flags, err);
        } else {
            uint64_t pos = offset + done;
            uint64_t in_backing = pos >= (uint64_t)backing_len ? 0
                                  : ((uint64_t)backing_len - pos < len
                                     ? (uint64_t)backing_len - pos : len);
            ret = node->drv->check_backing ? node->drv->check_backing(node, err) : 0;
            if (ret == 0 && in_backing)
                ret = vimg_node_preadv(node->backing, pos, in_backing, sub, n_sub, flags, err);
            if (ret == 0 && in_backing < len)
                vimg_iov_memset(sub, n_sub, in_backing, len - in_backing);
        }
        free(sub);
        if (ret < 0)
            return ret;
        done += len;
    }
    return 0;
}

int
vimg_node_preadv(struct vimg_node *node, uint64_t offset, uint64_t bytes,
                 const struct iovec *iov, int n_iov, unsigned flags, struct vimg_error *err)
{
    int ret;

    if ((ret = check_range(node, offset, bytes, err)) < 0)
        return ret;
    if (bytes == 0)
        return 0;
    if (!node->drv->preadv && !node->drv->pread)
        return unsupported(node, "read", err);
    if (node->backing && node->drv->block_status)
        return read_through_backing(node, offset, bytes, iov, n_iov, flags, err);
    return driver_read_aligned(node, offset, bytes, iov, n_iov, flags, err);
}

int
vimg_node_pread(struct vimg_node *node, uint64_t offset, void *buf, uint64_t bytes,
                unsigned flags, struct vimg_error *err)
{
    struct iovec iov = { .iov_base = buf, .iov_len = bytes };

    return vimg_node_preadv(node, offset, bytes, &iov, 1, flags, err);
}

static int
check_writable(struct vimg_node *node, struct vimg_error *err)
{
    int ret;

    if ((ret = check_usable(node, err)) < 0)
        return ret;
    if (node->is_read_only)
        return vimg_error_set(err, EACCES, "Permission denied");
    return 0;
}

int
vimg_node_pwritev(struct vimg_node *node, uint64_t offset, uint64_t bytes,
                  const struct iovec *iov, int n_iov, unsigned flags, struct vimg_error *err)
{
    int ret;

    if ((ret = check_writable(node, err)) < 0)
        return ret;
    if ((ret = check_range(node, offset, bytes, err)) < 0)
        return ret;
    if (bytes == 0)
        return 0;
    if (!node->drv->pwritev)
        return unsupported(node, "write", err);
    ret = driver_write_aligned(node, offset, bytes, iov, n_iov, flags, err);
    /* Writethrough: the write is only complete once it is on stable storage. */
    if (ret == 0 && node->is_root && (node->open_flags & VIMG_OPEN_WRITETHROUGH))
        ret = vimg_node_flush(node, err);
    return ret;
}

int
vimg_node_pwrite(struct vimg_node *node, uint64_t offset, const void *buf, uint64_t bytes,
                 unsigned flags, struct vimg_error *err)
{
    struct iovec iov = { .iov_base = (void *)buf, .iov_len = bytes };

    return vimg_node_pwritev(node, offset, bytes, &iov, 1, flags, err);
}

/* Writes zeros from a buffer, for drivers without a zero operation. */
static int
zeroes_by_writing(struct vimg_node *node, uint64_t offset, uint64_t bytes, unsigned flags,
                  struct vimg_error *err)
{
    uint64_t chunk = bytes < (1u << 20) ? bytes : (1u << 20);
    void *buf = bounce_alloc(node, chunk);
    int ret = 0;

    if (!buf)
        return vimg_error_set(err, ENOMEM, "Out of memory");
    memset(buf, 0, chunk);
    while (bytes && ret == 0) {
        uint64_t len = bytes < chunk ? bytes : chunk;
        ret = vimg_node_pwrite(node, offset, buf, len, flags & VIMG_REQ_FUA, err);
        offset += len;
        bytes -= len;
    }
    free(buf);
    return ret;
}

int
vimg_node_pwrite_zeroes(struct vimg_node *node, uint64_t offset, uint64_t bytes,
                        unsigned flags, struct vimg_error *err)
{
    uint32_t align = node->request_alignment;
    int ret;

    if ((ret = check_writable(node, err)) < 0)
        return ret;
    if ((ret = check_range(node, offset, bytes, err)) < 0)
        return ret;
    if (bytes == 0)
        return 0;
    if (!node->drv->pwrite_zeroes || offset % align || bytes % align) {
        uint64_t head, tail, mid_start, mid_len;
        if (!node->drv->pwrite_zeroes) {
            if (flags & VIMG_REQ_NO_FALLBACK)
                return unsupported(node, "write zeroes", err);
            return zeroes_by_writing(node, offset, bytes, flags, err);
        }
        /* Unaligned ends are written as data; the aligned middle goes to the driver. */
        mid_start = offset % align ? offset + align - offset % align : offset;
        if (mid_start >= offset + bytes)
            return zeroes_by_writing(node, offset, bytes, flags, err);
        head = mid_start - offset;
        mid_len = (offset + bytes - mid_start) / align * align;
        tail = bytes - head - mid_len;
        if (head && (ret = zeroes_by_writing(node, offset, head, flags, err)) < 0)
            return ret;
        if (mid_len && (ret = node->drv->pwrite_zeroes(node, mid_start, mid_len, flags,
                                                         err)) < 0)
            return ret;
        if (tail)
            return zeroes_by_writing(node, mid_start + mid_len, tail, flags, err);
        return 0;
    }
    ret = node->drv->pwrite_zeroes(node, offset, bytes, flags, err);
    if (ret == -ENOTSUP && !(flags & VIMG_REQ_NO_FALLBACK))
        return zeroes_by_writing(node, offset, bytes, flags, err);
    return ret;
}

int
vimg_node_pwrite_compressed(struct vimg_node *node, uint64_t offset, const void *buf,
                            uint64_t bytes, struct vimg_error *err)
{
    int ret;

    if ((ret = check_writable(node, err)) < 0)
        return ret;
    if ((ret = check_range(node, offset, bytes, err)) < 0)
        return ret;
    if (!node->drv->pwrite_compressed)
        return vimg_error_set(err, ENOTSUP, "Compression is not supported for this drive %s",
                              node->drv->name);
    return node->drv->pwrite_compressed(node, offset, buf, bytes, err);
}

int
vimg_node_discard(struct vimg_node *node, uint64_t offset, uint64_t bytes,
                  struct vimg_error *err)
{
    int ret;

    if ((ret = check_writable(node, err)) < 0)
        return ret;
    if ((ret = check_range(node, offset, bytes, err)) < 0)
        return ret;
    /* Discard is advisory: a driver without it simply keeps the data. */
    if (!node->drv->discard || bytes == 0)
        return 0;
    return node->drv->discard(node, offset, bytes, err);
}

int
vimg_node_flush(struct vimg_node *node, struct vimg_error *err)
{
    int ret = 0;

    if (!node)
        return 0;
    if (atomic_load(&node->is_unusable))
        return 0;       /* QEMU's flush of a node without a driver succeeds */
    if (node->drv->flush && !(node->open_flags & VIMG_OPEN_NO_FLUSH))
        ret = node->drv->flush(node, err);
    if (ret == 0 && node->drv->kind == VIMG_DRIVER_FORMAT) {
        if ((ret = vimg_node_flush(node->data_file, err)) == 0)
            ret = vimg_node_flush(node->file, err);
    }
    return ret;
}

/* Lengths count whole 512-byte sectors, as QEMU's do: a 1000-byte file is 1 KiB. */
int64_t
vimg_node_length(struct vimg_node *node, struct vimg_error *err)
{
    int64_t len;

    if (!node->drv->length) {
        if (node->file)
            return vimg_node_length(node->file, err);
        return unsupported(node, "length", err);
    }
    len = node->drv->length(node, err);
    if (len < 0)
        return len;
    if (len > INT64_MAX - 511)
        return vimg_error_set(err, EFBIG, "Image size is too large");
    return (len + 511) & ~(int64_t)511;
}

int64_t
vimg_node_allocated_size(struct vimg_node *node, struct vimg_error *err)
{
    int64_t total = 0, n;

    if (node->drv->allocated_size)
        return node->drv->allocated_size(node, err);
    if (node->file) {
        if ((n = vimg_node_allocated_size(node->file, err)) < 0)
            return n;
        total += n;
    }
    if (node->data_file) {
        if ((n = vimg_node_allocated_size(node->data_file, err)) < 0)
            return n;
        total += n;
    }
    if (!node->file && !node->data_file)
        return unsupported(node, "allocated size", err);
    return total;
}

int
vimg_node_truncate(struct vimg_node *node, uint64_t size, bool is_exact, const char *prealloc,
                   struct vimg_error *err)
{
    int mode = VIMG_PREALLOC_OFF, ret;

    if ((ret = check_writable(node, err)) < 0)
        return ret;
    if (prealloc && (ret = vimg_prealloc_parse(prealloc, &mode, err)) < 0)
        return ret;
    if (!node->drv->truncate)
        return vimg_error_set(err, ENOTSUP, "Image format driver does not support resize");
    if (size > (uint64_t)INT64_MAX)
        return vimg_error_set(err, EINVAL, "Image size is too large");
    ret = node->drv->truncate(node, size, is_exact, mode, err);
    if (ret == 0 && node->is_root) {
        int64_t len = vimg_node_length(node, err);
        if (len < 0)
            return (int)len;
        node->cached_length = len;
    }
    return ret;
}

int
vimg_node_block_status(struct vimg_node *node, uint64_t offset, uint64_t bytes,
                       struct vimg_block_status *bs, struct vimg_error *err)
{
    int ret;
    int64_t len = vimg_node_length(node, err);

    if (len < 0)
        return (int)len;
    memset(bs, 0, sizeof(*bs));
    if ((ret = check_usable(node, err)) < 0)
        return ret;
    if (offset >= (uint64_t)len)
        return vimg_error_set(err, EINVAL, "Offset past the end of the image");
    if (bytes > (uint64_t)len - offset)
        bytes = (uint64_t)len - offset;
    if (!node->drv->block_status) {
        bs->flags = VIMG_BS_DATA | VIMG_BS_ALLOCATED;
        bs->bytes = bytes;
        if (node->drv->kind == VIMG_DRIVER_PROTOCOL) {
            bs->flags |= VIMG_BS_OFFSET_VALID;
            bs->offset = offset;
            bs->file = node;
        }
        return 0;
    }
    if ((ret = node->drv->block_status(node, offset, bytes, bs, err)) < 0)
        return ret;
    if (bs->bytes > bytes)
        bs->bytes = bytes;
    if (bs->bytes == 0)
        return vimg_error_set(err, EIO, "Block status of %s returned an empty range",
                              node->drv->name);
    if ((bs->flags & VIMG_BS_RAW) && bs->file) {
        /* A pass-through layer: the file below says whether it is data or zeros. */
        struct vimg_block_status below;
        struct vimg_node *file = bs->file;
        uint64_t map = bs->offset;
        if ((ret = vimg_node_block_status(file, map, bs->bytes, &below, err)) < 0)
            return ret;
        bs->flags = (below.flags & (VIMG_BS_DATA | VIMG_BS_ZERO | VIMG_BS_OFFSET_VALID)) |
                    VIMG_BS_ALLOCATED;
        bs->bytes = below.bytes;
        bs->offset = (below.flags & VIMG_BS_OFFSET_VALID) ? below.offset : map;
        bs->file = (below.flags & VIMG_BS_OFFSET_VALID) ? below.file : file;
    } else if ((bs->flags & VIMG_BS_RECURSE) && (bs->flags & VIMG_BS_OFFSET_VALID) &&
               (bs->flags & VIMG_BS_DATA) &&
               !(bs->flags & VIMG_BS_ZERO) && bs->file && bs->file != node) {
        /*
         * Data the driver marks may still be a hole in the file below
         * (preallocation): the answer covers as much as the file's does, as in
         * QEMU. Errors there only lose the extra information.
         */
        struct vimg_block_status below;
        if (vimg_node_block_status(bs->file, bs->offset, bs->bytes, &below, err) == 0) {
            if ((below.flags & VIMG_BS_ZERO) && !(below.flags & VIMG_BS_DATA))
                bs->flags |= VIMG_BS_ZERO;
            if (below.bytes < bs->bytes)
                bs->bytes = below.bytes;
        }
    }
    return 0;
}

int
vimg_node_block_status_above(struct vimg_node *node, struct vimg_node *base, uint64_t offset,
                             uint64_t bytes, struct vimg_block_status *bs,
                             struct vimg_error *err)
{
    struct vimg_node *n = node;
    int depth = 0, ret;

    for (;;) {
        int64_t len = vimg_node_length(n, err);
        if (len < 0)
            return (int)len;
        if (offset >= (uint64_t)len) {
            /* Past the end of a shorter backing file: reads return zeros. */
            memset(bs, 0, sizeof(*bs));
            bs->flags = VIMG_BS_ZERO;
            bs->bytes = bytes;
            bs->depth = depth;
            return 0;
        }
        if ((ret = vimg_node_block_status(n, offset, bytes, bs, err)) < 0)
            return ret;
        bs->depth = depth;
        if ((bs->flags & VIMG_BS_ALLOCATED) || !n->backing || n->backing == base) {
            if (!(bs->flags & VIMG_BS_ALLOCATED) && !n->backing) {
                bs->flags |= VIMG_BS_ZERO;
                bs->flags &= ~VIMG_BS_DATA;
            }
            return 0;
        }
        /* Unallocated past the end of a shorter backing file: this layer reads zeros. */
        if ((len = vimg_node_length(n->backing, err)) < 0)
            return (int)len;
        if (offset >= (uint64_t)len) {
            bs->flags = (bs->flags | VIMG_BS_ZERO) & ~VIMG_BS_DATA;
            return 0;
        }
        bytes = bs->bytes;
        n = n->backing;
        depth++;
    }
}

/* Where the bytes of a raw-over-protocol stack really are: the protocol node and its offset. */
static struct vimg_node *
copy_range_endpoint(struct vimg_node *node, uint64_t *offset)
{
    while (node->drv->kind == VIMG_DRIVER_FORMAT) {
        struct vimg_block_status bs;
        if (!node->drv->is_filter || !node->drv->block_status || !node->file ||
            node->drv->block_status(node, *offset, 1, &bs, NULL) < 0 ||
            !(bs.flags & VIMG_BS_RAW))
            return NULL;
        *offset = bs.offset;
        node = bs.file;
    }
    return node;
}

int
vimg_node_copy_range(struct vimg_node *src, uint64_t offset, struct vimg_node *dst,
                     uint64_t dst_offset, uint64_t bytes, struct vimg_error *err)
{
    struct vimg_node *from, *to;
    int ret;

    if ((ret = check_writable(dst, err)) < 0)
        return ret;
    if ((ret = check_range(src, offset, bytes, err)) < 0 ||
        (ret = check_range(dst, dst_offset, bytes, err)) < 0)
        return ret;
    from = copy_range_endpoint(src, &offset);
    to = copy_range_endpoint(dst, &dst_offset);
    if (!from || !to || !from->drv->copy_range_to)
        return vimg_error_set(err, ENOTSUP, "Copy offloading is not supported");
    return from->drv->copy_range_to(from, offset, to, dst_offset, bytes, err);
}

/* QEMU's BDRV_MAX_LENGTH: no request, VM state included, may end past it. */
#define MAX_LENGTH UINT64_C(0x7fffffffc0000000)

/*
 * As QEMU, a layer without VM state hands the request to its file child, so
 * a format over a qcow2 node reaches it; the protocol at the bottom has none.
 */
static int
vmstate_rw(struct vimg_node *node, uint64_t offset, uint64_t bytes, void *buf, bool is_write,
           struct vimg_error *err)
{
    struct iovec iov = { .iov_base = buf, .iov_len = bytes };
    struct vimg_node *n;
    int ret;

    if (is_write && (ret = check_writable(node, err)) < 0)
        return ret;
    if (offset > MAX_LENGTH || bytes > MAX_LENGTH - offset)
        return vimg_error_set(err, EIO, "VM state range 0x%llx+%llu ends past the maximum "
                              "image length (0x%llx)", (unsigned long long)offset,
                              (unsigned long long)bytes, (unsigned long long)MAX_LENGTH);
    for (n = node; n; n = n->file) {
        if (n->drv->rw_vmstate)
            return n->drv->rw_vmstate(n, offset, bytes, &iov, 1, is_write, err);
    }
    return unsupported(node, "vmstate", err);
}

int
vimg_node_pread_vmstate(struct vimg_node *node, uint64_t offset, void *buf, uint64_t bytes,
                        struct vimg_error *err)
{
    return vmstate_rw(node, offset, bytes, buf, false, err);
}

int
vimg_node_pwrite_vmstate(struct vimg_node *node, uint64_t offset, const void *buf,
                         uint64_t bytes, struct vimg_error *err)
{
    return vmstate_rw(node, offset, bytes, (void *)buf, true, err);
}
