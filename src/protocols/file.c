/*
 * The file protocol: images in regular files. Holes come from
 * SEEK_DATA/SEEK_HOLE, zero writes and discards from fallocate(2), and
 * creation follows qemu-img's file driver (size rounded up to 512 bytes,
 * preallocation=off|falloc|full, nocow, extent_size_hint).
 *
 * The length is fstat'ed once and then kept, moved by our own truncates and
 * writes past the end (as QEMU keeps a node's length): block status and
 * the formats above ask for it per request.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <linux/fs.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "protocols/posix.h"

static const char *const file_protocols[] = { "file", NULL };

/* posix.c's helpers take the state as theirs: it comes first. */
struct file_state {
    struct vimg_posix_state posix;
    /* The file's size in bytes, or -1 when it is to be fstat'ed again (after
       a failed write or resize, or a copy into the file). Growth by other
       processes goes unseen, as in QEMU. */
    _Atomic int64_t length;
    /* Where the last SEEK_DATA from inside a hole found data, or -1: block status
       asks next from there, and need not seek to it again. Dropped by anything
       that can make a hole (discard, zero write, truncate). */
    _Atomic int64_t next_data;
};

/* After a write that ended at end: the file is at least that long. */
static void
file_grown_to(struct vimg_node *node, uint64_t end)
{
    struct file_state *s = node->state;
    int64_t len = atomic_load(&s->length);

    while (len >= 0 && (uint64_t)len < end &&
           !atomic_compare_exchange_weak(&s->length, &len, (int64_t)end))
        ;
}

static int
file_open(struct vimg_node *node, struct vimg_opts *opts, unsigned flags,
          struct vimg_error *err)
{
    /* A filename string's "file:" prefix was dropped by the core; as an option it is part
     * of the name, as in QEMU. */
    atomic_store(&((struct file_state *)node->state)->length, -1);
    atomic_store(&((struct file_state *)node->state)->next_data, -1);
    return vimg_posix_open(node, opts, flags, false, err);
}

static int64_t
file_length(struct vimg_node *node, struct vimg_error *err)
{
    struct file_state *s = node->state;
    int64_t len = atomic_load(&s->length);
    struct stat st;

    if (len >= 0)
        return len;
    if (fstat(s->posix.fd, &st) < 0)
        return vimg_error_set(err, errno, "%s", strerror(errno));
    /* A writer that moved it meanwhile wins. */
    atomic_compare_exchange_strong(&s->length, &len, (int64_t)st.st_size);
    return st.st_size;
}

static int
file_pwritev(struct vimg_node *node, uint64_t offset, uint64_t bytes, const struct iovec *iov,
             int n_iov, unsigned flags, struct vimg_error *err)
{
    int ret = vimg_posix_pwritev(node, offset, bytes, iov, n_iov, flags, err);

    if (ret < 0)
        atomic_store(&((struct file_state *)node->state)->length, -1);
    else
        file_grown_to(node, offset + bytes);
    return ret;
}

static int
file_fallocate(struct vimg_node *node, int mode, uint64_t offset, uint64_t bytes,
               struct vimg_error *err)
{
    struct vimg_posix_state *s = node->state;

    if (fallocate(s->fd, mode, (off_t)offset, (off_t)bytes) == 0) {
        if (!(mode & FALLOC_FL_KEEP_SIZE))
            file_grown_to(node, offset + bytes);
        return 0;
    }
    if (errno == EOPNOTSUPP || errno == ENOSYS || errno == EINVAL)
        return vimg_error_set(err, ENOTSUP, "%s", strerror(EOPNOTSUPP));
    return vimg_error_set(err, errno, "%s", strerror(errno));
}

static int
file_pwrite_zeroes(struct vimg_node *node, uint64_t offset, uint64_t bytes, unsigned flags,
                   struct vimg_error *err)
{
    struct vimg_posix_state *s = node->state;
    int64_t len = file_length(node, err);
    int ret;

    if (len < 0)
        return (int)len;
    atomic_store(&((struct file_state *)node->state)->next_data, -1);
    /* A punched hole reads as zeros and frees the space. */
    if ((flags & VIMG_REQ_MAY_UNMAP) && !s->no_discard) {
        ret = file_fallocate(node, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, bytes,
                             err);
        if (ret != -ENOTSUP)
            return ret;
    }
    if (!s->no_zero_range) {
        ret = file_fallocate(node, FALLOC_FL_ZERO_RANGE, offset, bytes, err);
        if (ret != -ENOTSUP)
            return ret;
        s->no_zero_range = true;
    }
    return vimg_error_set(err, ENOTSUP, "%s", strerror(EOPNOTSUPP));
}

static int
file_discard(struct vimg_node *node, uint64_t offset, uint64_t bytes, struct vimg_error *err)
{
    struct vimg_posix_state *s = node->state;
    int ret;

    if (s->no_discard)
        return 0;
    atomic_store(&((struct file_state *)node->state)->next_data, -1);
    ret = file_fallocate(node, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, bytes, err);
    if (ret == -ENOTSUP) {
        s->no_discard = true;
        return 0;
    }
    return ret;
}

static int
file_block_status(struct vimg_node *node, uint64_t offset, uint64_t bytes,
                  struct vimg_block_status *bs, struct vimg_error *err)
{
    struct vimg_posix_state *s = node->state;
    struct file_state *fs = node->state;
    uint32_t align = node->request_alignment;
    off_t data, hole;

    (void)err;
    bs->flags = VIMG_BS_OFFSET_VALID | VIMG_BS_ALLOCATED;
    bs->offset = offset;
    bs->file = node;
    data = atomic_load(&fs->next_data);
    if (data < 0 || (uint64_t)data != offset)
        data = lseek(s->fd, (off_t)offset, SEEK_DATA);
    if (data < 0 && errno == ENXIO) {
        /* Only a hole up to the end of the file. */
        bs->flags |= VIMG_BS_ZERO;
        bs->bytes = bytes;
        return 0;
    }
    if (data < 0) {
        bs->flags |= VIMG_BS_DATA;
        bs->bytes = bytes;
        return 0;
    }
    if ((uint64_t)data > offset) {
        atomic_store(&fs->next_data, data);
        bs->flags |= VIMG_BS_ZERO;
        bs->bytes = (uint64_t)data - offset;
    } else {
        hole = lseek(s->fd, (off_t)offset, SEEK_HOLE);
        bs->flags |= VIMG_BS_DATA;
        bs->bytes = hole > (off_t)offset ? (uint64_t)hole - offset : bytes;
    }
    if (bs->bytes > bytes)
        bs->bytes = bytes;
    /* Keep runs aligned to what the node can address (O_DIRECT). */
    if (align > 1 && bs->bytes < bytes && (offset + bs->bytes) % align) {
        uint64_t end = offset + bs->bytes;
        end = end - end % align;
        if (end > offset) {
            bs->bytes = end - offset;
        } else {
            bs->flags = (bs->flags & ~VIMG_BS_ZERO) | VIMG_BS_DATA;
            bs->bytes = align - offset % align;
        }
    }
    return 0;
}

/* Writes zeros into [from, to) so that the blocks are really allocated. */
static int
file_fill_zeros(int fd, uint64_t from, uint64_t to, struct vimg_error *err)
{
    size_t chunk = 1u << 20;
    int fl = fcntl(fd, F_GETFL);
    char *buf;

    /*
     * QEMU's zero buffer is a plain 1 MiB allocation, not aligned for O_DIRECT
     * with glibc, so its fill fails with EINVAL there: fail the same way here
     * whatever alignment this allocator (ASan's, say) happens to give.
     */
    if (fl >= 0 && (fl & O_DIRECT))
        return vimg_error_set(err, EINVAL, "Could not write zeros for preallocation: %s",
                              strerror(EINVAL));
    if (!(buf = calloc(1, chunk)))
        return vimg_error_set(err, ENOMEM, "Out of memory");
    while (from < to) {
        size_t len = to - from < chunk ? (size_t)(to - from) : chunk;
        ssize_t n = pwrite(fd, buf, len, (off_t)from);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            int e = n < 0 ? errno : ENOSPC;
            free(buf);
            return vimg_error_set(err, e, "Could not write zeros for preallocation: %s",
                                  strerror(e));
        }
        from += (uint64_t)n;
    }
    free(buf);
    return 0;
}

/* Grows or shrinks fd to size, preallocating the new part as mode says. */
static int
file_resize_fd(int fd, uint64_t old_size, uint64_t size, int mode, struct vimg_error *err)
{
    if (size > old_size && mode == VIMG_PREALLOC_FALLOC) {
        int r = posix_fallocate(fd, (off_t)old_size, (off_t)(size - old_size));
        if (r != 0)
            return vimg_error_set(err, r, "Could not preallocate new data: %s", strerror(r));
        return 0;
    }
    if (ftruncate(fd, (off_t)size) < 0)
        return vimg_error_set(err, errno, "Could not resize file: %s", strerror(errno));
    if (size > old_size && mode == VIMG_PREALLOC_FULL) {
        int ret = file_fill_zeros(fd, old_size, size, err);
        /* As QEMU: a failed fill leaves the file as long as it was (best effort). */
        if (ret < 0 && ftruncate(fd, (off_t)old_size) < 0) {
            /* The fill's error is the one to report. */
        }
        return ret;
    }
    return 0;
}

static int
file_truncate(struct vimg_node *node, uint64_t size, bool is_exact, int mode,
              struct vimg_error *err)
{
    struct file_state *s = node->state;
    int64_t len = file_length(node, err);
    int ret;

    if (len < 0)
        return (int)len;
    atomic_store(&s->next_data, -1);
    if (mode != VIMG_PREALLOC_OFF && size < (uint64_t)len)
        return vimg_error_set(err, ENOTSUP, "Cannot use preallocation for shrinking files");
    if (mode == VIMG_PREALLOC_METADATA)
        return vimg_error_set(err, ENOTSUP, "Unsupported preallocation mode: metadata");
    /* Growing only when !is_exact: a format may leave its file longer. */
    if (!is_exact && size <= (uint64_t)len)
        return 0;
    ret = file_resize_fd(s->posix.fd, (uint64_t)len, size, mode, err);
    atomic_store(&s->length, ret < 0 ? -1 : (int64_t)size);
    return ret;
}

/* The copy writes dst's file behind its back: its driver is to look again. */
static int
file_copy_range_to(struct vimg_node *node, uint64_t offset, struct vimg_node *dst,
                   uint64_t dst_offset, uint64_t bytes, struct vimg_error *err)
{
    int ret = vimg_posix_copy_range_to(node, offset, dst, dst_offset, bytes, err);

    if (dst->drv->length == file_length)
        atomic_store(&((struct file_state *)dst->state)->length, -1);
    return ret;
}

/* In QEMU's order, which `create` keeps when it prints the options it got. */
static const struct vimg_opt_desc file_create_opts[] = {
    { "size", VIMG_OPT_SIZE, "Virtual disk size", NULL },
    { "nocow", VIMG_OPT_BOOL, "Turn off copy-on-write (valid only on btrfs)", NULL },
    { "preallocation", VIMG_OPT_STRING,
      "Preallocation mode (allowed values: off, falloc, full)", NULL },
    { "extent_size_hint", VIMG_OPT_SIZE, "Extent size hint for the image file, 0 to disable",
      NULL },
    { NULL, 0, NULL, NULL },
};

static void
file_set_nocow(int fd)
{
    int attr;

    /* Where the filesystem has no such flag the ioctl fails, which is fine. */
    if (ioctl(fd, FS_IOC_GETFLAGS, &attr) == 0) {
        attr |= FS_NOCOW_FL;
        (void)ioctl(fd, FS_IOC_SETFLAGS, &attr);
    }
}

static void
file_set_extent_hint(int fd, uint64_t hint)
{
    struct fsxattr attr;

    if (hint == 0 || hint > UINT32_MAX || ioctl(fd, FS_IOC_FSGETXATTR, &attr) < 0)
        return;
    attr.fsx_xflags |= FS_XFLAG_EXTSIZE;
    attr.fsx_extsize = (uint32_t)hint;
    (void)ioctl(fd, FS_IOC_FSSETXATTR, &attr);
}

static int
file_create(const char *filename, struct vimg_opts *opts, struct vimg_error *err)
{
    uint64_t size, hint;
    const char *prealloc = vimg_opts_get(opts, "preallocation");
    int mode = VIMG_PREALLOC_OFF, fd, ret;
    bool nocow;

    if (strncmp(filename, "file:", 5) == 0)
        filename += 5;
    if ((ret = vimg_opts_get_size(opts, "size", 0, &size, err)) < 0)
        return ret;
    if ((ret = vimg_opts_get_bool(opts, "nocow", false, &nocow, err)) < 0)
        return ret;
    if ((ret = vimg_opts_get_size(opts, "extent_size_hint", 1u << 20, &hint, err)) < 0)
        return ret;
    if (prealloc && (ret = vimg_prealloc_parse(prealloc, &mode, err)) < 0)
        return ret;
    if (mode == VIMG_PREALLOC_METADATA)
        return vimg_error_set(err, EINVAL, "Unsupported preallocation mode: metadata");
    size = (size + 511) & ~(uint64_t)511;
    if (size > (uint64_t)INT64_MAX)
        return vimg_error_set(err, EFBIG, "The image size is too large");
    fd = open(filename, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0)
        return vimg_error_set_errno(err, errno, "Could not create '%s'", filename);
    if (nocow)
        file_set_nocow(fd);
    file_set_extent_hint(fd, hint);
    /* Refuse to clobber an image another process holds open for writing. */
    if (vimg_lock_ofd_available(fd) &&
        (ret = vimg_lock_apply(fd, true, VIMG_PERM_CONSISTENT_READ | VIMG_PERM_WRITE |
                               VIMG_PERM_RESIZE, VIMG_PERM_CONSISTENT_READ, err)) == 0)
        ret = vimg_lock_check(fd, true, VIMG_PERM_CONSISTENT_READ | VIMG_PERM_WRITE |
                              VIMG_PERM_RESIZE, VIMG_PERM_CONSISTENT_READ, filename, err);
    else
        ret = 0;
    if (ret == 0 && ftruncate(fd, 0) < 0)
        ret = vimg_error_set(err, errno, "Could not clear '%s': %s", filename, strerror(errno));
    if (ret == 0)
        ret = file_resize_fd(fd, 0, size, mode, err);
    /* Like qemu-img, allocate the first block: O_DIRECT alignment probing then
     * finds data there, and `info` and `map` show the same figures. */
    if (ret == 0 && mode == VIMG_PREALLOC_OFF && size > 0)
        ret = file_fill_zeros(fd, 0, size < 4096 ? size : 4096, err);
    if (ret == 0 && mode != VIMG_PREALLOC_OFF && fsync(fd) < 0)
        ret = vimg_error_set(err, errno, "Could not flush '%s': %s", filename, strerror(errno));
    close(fd);
    return ret;
}

const struct vimg_driver vimg_file_driver = {
    .name = "file",
    .kind = VIMG_DRIVER_PROTOCOL,
    .state_size = sizeof(struct file_state),
    .protocols = file_protocols,
    .has_zero_init = true,
    .open = file_open,
    .close = vimg_posix_close,
    .create_opts = file_create_opts,
    .create = file_create,
    .preadv = vimg_posix_preadv,
    .pwritev = file_pwritev,
    .pwrite_zeroes = file_pwrite_zeroes,
    .discard = file_discard,
    .flush = vimg_posix_flush,
    .block_status = file_block_status,
    .length = file_length,
    .allocated_size = vimg_posix_allocated_size,
    .truncate = file_truncate,
    .set_perm = vimg_posix_set_perm,
    .copy_range_to = file_copy_range_to,
    .get_fd = vimg_posix_get_fd,
};
