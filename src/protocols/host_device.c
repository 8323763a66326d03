/*
 * The host_device protocol: Linux block devices. Sizes and sector sizes come
 * from ioctls, zero writes from BLKZEROOUT, discards from BLKDISCARD.
 * Chosen automatically for names of block devices (probe_device).
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "protocols/posix.h"

static const char *const host_device_protocols[] = { "host_device", NULL };

static int
host_device_probe_device(const char *filename)
{
    struct stat st;

    if (strncmp(filename, "/dev/cdrom", 10) == 0)
        return 0;
    if (stat(filename, &st) == 0 && S_ISBLK(st.st_mode))
        return 100;
    return 0;
}

static int
host_device_open(struct vimg_node *node, struct vimg_opts *opts, unsigned flags,
                 struct vimg_error *err)
{
    struct vimg_posix_state *s = node->state;
    struct stat st;
    int sector_size = 512, ret;

    if ((ret = vimg_posix_open(node, opts, flags, true, err)) < 0)
        return ret;
    if (fstat(s->fd, &st) < 0 || !S_ISBLK(st.st_mode)) {
        vimg_posix_close(node);
        return vimg_error_set(err, EINVAL, "'host_device' driver requires '%s' to be either "
                              "a character or block device", node->filename);
    }
    if (flags & VIMG_OPEN_NOCACHE) {
        /* The logical sector size is what O_DIRECT requires, in length and memory. */
        if (ioctl(s->fd, BLKSSZGET, &sector_size) == 0 && sector_size > 0) {
            node->request_alignment = (uint32_t)sector_size;
            node->mem_alignment = (uint32_t)sector_size;
        }
    }
    return 0;
}

static int64_t
host_device_length(struct vimg_node *node, struct vimg_error *err)
{
    struct vimg_posix_state *s = node->state;
    uint64_t size;

    if (ioctl(s->fd, BLKGETSIZE64, &size) < 0)
        return vimg_error_set(err, errno, "%s", strerror(errno));
    return (int64_t)size;
}

static int
host_device_pwrite_zeroes(struct vimg_node *node, uint64_t offset, uint64_t bytes,
                          unsigned flags, struct vimg_error *err)
{
    struct vimg_posix_state *s = node->state;
    uint64_t range[2] = { offset, bytes };

    (void)flags;
    if (offset % 512 || bytes % 512)
        return vimg_error_set(err, ENOTSUP, "%s", strerror(EOPNOTSUPP));
    if (ioctl(s->fd, BLKZEROOUT, range) == 0)
        return 0;
    if (errno == EOPNOTSUPP || errno == ENOTTY || errno == EINVAL)
        return vimg_error_set(err, ENOTSUP, "%s", strerror(EOPNOTSUPP));
    return vimg_error_set(err, errno, "%s", strerror(errno));
}

static int
host_device_discard(struct vimg_node *node, uint64_t offset, uint64_t bytes,
                    struct vimg_error *err)
{
    struct vimg_posix_state *s = node->state;
    uint64_t range[2] = { offset, bytes };

    if (s->no_discard || offset % 512 || bytes % 512)
        return 0;
    if (ioctl(s->fd, BLKDISCARD, range) == 0)
        return 0;
    if (errno == EOPNOTSUPP || errno == ENOTTY || errno == EINVAL) {
        s->no_discard = true;
        return 0;
    }
    return vimg_error_set(err, errno, "%s", strerror(errno));
}

static int
host_device_truncate(struct vimg_node *node, uint64_t size, bool is_exact, int mode,
                     struct vimg_error *err)
{
    int64_t len = host_device_length(node, err);

    (void)is_exact;
    if (len < 0)
        return (int)len;
    if (mode != VIMG_PREALLOC_OFF)
        return vimg_error_set(err, ENOTSUP, "Preallocation mode '%s' unsupported for this "
                              "storage", mode == VIMG_PREALLOC_FULL ? "full" : "falloc");
    if (size > (uint64_t)len)
        return vimg_error_set(err, EINVAL, "Cannot grow device files");
    return 0;
}

static const struct vimg_opt_desc host_device_create_opts[] = {
    { "size", VIMG_OPT_SIZE, "Virtual disk size", NULL },
    { NULL, 0, NULL, NULL },
};

/* Creating on a device only checks that it is one and is large enough. */
static int
host_device_create(const char *filename, struct vimg_opts *opts, struct vimg_error *err)
{
    uint64_t size, dev_size = 0;
    struct stat st;
    int fd, ret;

    if ((ret = vimg_opts_get_size(opts, "size", 0, &size, err)) < 0)
        return ret;
    fd = open(filename, O_RDWR | O_CLOEXEC);
    if (fd < 0)
        return vimg_error_set_errno(err, errno, "Could not open device");
    if (fstat(fd, &st) < 0 || !S_ISBLK(st.st_mode)) {
        close(fd);
        return vimg_error_set(err, ENODEV, "The given file is neither a block nor a "
                              "character device");
    }
    ret = ioctl(fd, BLKGETSIZE64, &dev_size);
    close(fd);
    if (ret < 0)
        return vimg_error_set_errno(err, errno, "Could not get the size of the device");
    if (size > dev_size)
        return vimg_error_set(err, ENOSPC, "Cannot grow device files");
    return 0;
}

const struct vimg_driver vimg_host_device_driver = {
    .name = "host_device",
    .kind = VIMG_DRIVER_PROTOCOL,
    .state_size = sizeof(struct vimg_posix_state),
    .protocols = host_device_protocols,
    .probe_device = host_device_probe_device,
    .open = host_device_open,
    .close = vimg_posix_close,
    .create_opts = host_device_create_opts,
    .create = host_device_create,
    .preadv = vimg_posix_preadv,
    .pwritev = vimg_posix_pwritev,
    .pwrite_zeroes = host_device_pwrite_zeroes,
    .discard = host_device_discard,
    .flush = vimg_posix_flush,
    .length = host_device_length,
    .allocated_size = vimg_posix_allocated_size,
    .truncate = host_device_truncate,
    .set_perm = vimg_posix_set_perm,
    .copy_range_to = vimg_posix_copy_range_to,
    .get_fd = vimg_posix_get_fd,
};
