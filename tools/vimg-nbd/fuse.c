/*
 * vimg-nbd --fuse MOUNTPOINT: exposes the image's guest view as one raw file
 * through libfuse3 (beyond qemu-nbd; QEMU has this only in its storage
 * daemon). MOUNTPOINT must be an existing regular file, which the export
 * covers until it is unmounted (fusermount3 -u MOUNTPOINT) or the process
 * gets SIGTERM/SIGINT/SIGHUP.
 *
 * The file reads and writes the image; fsync flushes it; SEEK_DATA and
 * SEEK_HOLE, and st_blocks, show where the image has holes; fallocate with
 * PUNCH_HOLE discards and with ZERO_RANGE writes zeros. The size is fixed:
 * truncating to another size fails with EPERM (O_TRUNC included).
 */
#define FUSE_USE_VERSION 312

#include <errno.h>
#include <fcntl.h>
#include <fuse.h>
#include <linux/falloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <vimg/node.h>

#include "vimg-nbd.h"

#define FUSE_EXPORT_THREADS 16

struct fuse_export {
    struct vimg_node *node;
    bool is_read_only;
    struct stat mount_st;           /* the covered file: owner and times */
};

static struct fuse_export *
export_of_context(void)
{
    return fuse_get_context()->private_data;
}

/* vimg errors carry a positive errno; FUSE wants it negated. */
static int
fuse_errno(const struct vimg_error *err, int ret)
{
    int e = err->errnum ? err->errnum : -ret;

    return -(e > 0 ? e : EIO);
}

static bool
is_root(const char *path)
{
    return strcmp(path, "/") == 0;
}

static int
fexp_getattr(const char *path, struct stat *st, struct fuse_file_info *fi)
{
    struct fuse_export *e = export_of_context();
    struct vimg_error err = { 0 };
    int64_t len, alloc;

    (void)fi;
    if (!is_root(path))
        return -ENOENT;
    if ((len = vimg_node_length(e->node, &err)) < 0)
        return fuse_errno(&err, (int)len);
    memset(st, 0, sizeof(*st));
    st->st_mode = S_IFREG | (e->is_read_only ? 0444 : 0644);
    st->st_nlink = 1;
    st->st_uid = e->mount_st.st_uid;
    st->st_gid = e->mount_st.st_gid;
    st->st_size = len;
    st->st_blksize = 4096;
    alloc = vimg_node_allocated_size(e->node, &err);
    st->st_blocks = alloc >= 0 ? (alloc + 511) / 512 : (len + 511) / 512;
    st->st_atim = e->mount_st.st_atim;
    st->st_mtim = e->mount_st.st_mtim;
    st->st_ctim = e->mount_st.st_ctim;
    return 0;
}

static int
fexp_open(const char *path, struct fuse_file_info *fi)
{
    struct fuse_export *e = export_of_context();

    if (!is_root(path))
        return -ENOENT;
    if (e->is_read_only && (fi->flags & O_ACCMODE) != O_RDONLY)
        return -EROFS;
    fi->direct_io = 0;
    fi->keep_cache = 0;
    return 0;
}

/* Clamps [offset, +size) to the image; returns the bytes left (0 at or past the end). */
static int64_t
clamp_to_image(struct fuse_export *e, off_t offset, size_t size, int *errp)
{
    struct vimg_error err = { 0 };
    int64_t len = vimg_node_length(e->node, &err);

    *errp = 0;
    if (len < 0) {
        *errp = fuse_errno(&err, (int)len);
        return 0;
    }
    if (offset < 0) {
        *errp = -EINVAL;
        return 0;
    }
    if (offset >= len)
        return 0;
    return (int64_t)size < len - offset ? (int64_t)size : len - offset;
}

static int
fexp_read(const char *path, char *buf, size_t size, off_t offset, struct fuse_file_info *fi)
{
    struct fuse_export *e = export_of_context();
    struct vimg_error err = { 0 };
    int64_t n;
    int ret;

    (void)path;
    (void)fi;
    n = clamp_to_image(e, offset, size, &ret);
    if (n <= 0)
        return ret;
    if ((ret = vimg_node_pread(e->node, (uint64_t)offset, buf, (uint64_t)n, 0, &err)) < 0)
        return fuse_errno(&err, ret);
    return (int)n;
}

static int
fexp_write(const char *path, const char *buf, size_t size, off_t offset,
           struct fuse_file_info *fi)
{
    struct fuse_export *e = export_of_context();
    struct vimg_error err = { 0 };
    int64_t n;
    int ret;

    (void)path;
    if (e->is_read_only)
        return -EROFS;
    n = clamp_to_image(e, offset, size, &ret);
    if (ret < 0)
        return ret;
    if (n <= 0)
        return size ? -ENOSPC : 0;
    ret = vimg_node_pwrite(e->node, (uint64_t)offset, buf, (uint64_t)n,
                           (fi->flags & (O_SYNC | O_DSYNC)) ? VIMG_REQ_FUA : 0, &err);
    if (ret < 0)
        return fuse_errno(&err, ret);
    return (int)n;
}

static int
fexp_fsync(const char *path, int datasync, struct fuse_file_info *fi)
{
    struct fuse_export *e = export_of_context();
    struct vimg_error err = { 0 };
    int ret;

    (void)path;
    (void)datasync;
    (void)fi;
    if (e->is_read_only)
        return 0;
    if ((ret = vimg_node_flush(e->node, &err)) < 0)
        return fuse_errno(&err, ret);
    return 0;
}

static int
fexp_truncate(const char *path, off_t size, struct fuse_file_info *fi)
{
    struct fuse_export *e = export_of_context();
    struct vimg_error err = { 0 };
    int64_t len;

    (void)fi;
    if (!is_root(path))
        return -ENOENT;
    if (e->is_read_only)
        return -EROFS;
    if ((len = vimg_node_length(e->node, &err)) < 0)
        return fuse_errno(&err, (int)len);
    return size == len ? 0 : -EPERM;
}

/* Owner, mode and times stay those of the export: accept what would not change them. */
static int
fexp_chmod(const char *path, mode_t mode, struct fuse_file_info *fi)
{
    (void)fi;
    (void)mode;
    return is_root(path) ? -EPERM : -ENOENT;
}

static int
fexp_utimens(const char *path, const struct timespec tv[2], struct fuse_file_info *fi)
{
    (void)tv;
    (void)fi;
    return is_root(path) ? 0 : -ENOENT;
}

static int
fexp_fallocate(const char *path, int mode, off_t offset, off_t length,
               struct fuse_file_info *fi)
{
    struct fuse_export *e = export_of_context();
    struct vimg_error err = { 0 };
    int64_t n;
    int ret;

    (void)path;
    (void)fi;
    if (e->is_read_only)
        return -EROFS;
    if (length <= 0)
        return -EINVAL;
    n = clamp_to_image(e, offset, (size_t)length, &ret);
    if (ret < 0)
        return ret;
    if (mode & FALLOC_FL_PUNCH_HOLE) {
        if (!(mode & FALLOC_FL_KEEP_SIZE))
            return -EINVAL;
        if (n <= 0)
            return 0;
        /* A punched hole must read as zeros, which a discard alone does not promise. */
        ret = vimg_node_pwrite_zeroes(e->node, (uint64_t)offset, (uint64_t)n,
                                      VIMG_REQ_MAY_UNMAP, &err);
    } else if (mode & FALLOC_FL_ZERO_RANGE) {
        if (n < length && !(mode & FALLOC_FL_KEEP_SIZE))
            return -EPERM;
        if (n <= 0)
            return 0;
        ret = vimg_node_pwrite_zeroes(e->node, (uint64_t)offset, (uint64_t)n, 0, &err);
    } else if (mode == 0 || mode == FALLOC_FL_KEEP_SIZE) {
        /* Allocating inside the image changes nothing the guest sees; growing is refused. */
        if (n < length && mode == 0)
            return -EPERM;
        return 0;
    } else {
        return -EOPNOTSUPP;
    }
    return ret < 0 ? fuse_errno(&err, ret) : 0;
}

/* SEEK_DATA / SEEK_HOLE from the image's block status through its backing chain. */
static off_t
fexp_lseek(const char *path, off_t off, int whence, struct fuse_file_info *fi)
{
    struct fuse_export *e = export_of_context();
    struct vimg_error err = { 0 };
    struct vimg_block_status bs;
    int64_t len;
    uint64_t pos;
    int ret;

    (void)path;
    (void)fi;
    if (whence != SEEK_DATA && whence != SEEK_HOLE)
        return -EINVAL;
    if ((len = vimg_node_length(e->node, &err)) < 0)
        return fuse_errno(&err, (int)len);
    if (off < 0 || off >= len)
        return -ENXIO;
    for (pos = (uint64_t)off; pos < (uint64_t)len; pos += bs.bytes) {
        bool is_data;

        memset(&bs, 0, sizeof(bs));
        ret = vimg_node_block_status_above(e->node, NULL, pos, (uint64_t)len - pos, &bs, &err);
        if (ret < 0)
            return fuse_errno(&err, ret);
        if (bs.bytes == 0)
            return -EIO;
        is_data = (bs.flags & VIMG_BS_DATA) && !(bs.flags & VIMG_BS_ZERO);
        if (is_data == (whence == SEEK_DATA))
            return (off_t)pos;
    }
    /* Past the last data there is no more data; the end of the file is a hole. */
    return whence == SEEK_DATA ? -ENXIO : (off_t)len;
}

static void *
fexp_init(struct fuse_conn_info *conn, struct fuse_config *cfg)
{
    (void)conn;
    /* The size and allocation change under writes; let the kernel ask each time. */
    cfg->attr_timeout = 0;
    cfg->entry_timeout = 0;
    cfg->negative_timeout = 0;
    cfg->use_ino = 0;
    return fuse_get_context()->private_data;
}

static const struct fuse_operations fexp_ops = {
    .init = fexp_init,
    .getattr = fexp_getattr,
    .open = fexp_open,
    .read = fexp_read,
    .write = fexp_write,
    .fsync = fexp_fsync,
    .truncate = fexp_truncate,
    .chmod = fexp_chmod,
    .utimens = fexp_utimens,
    .fallocate = fexp_fallocate,
    .lseek = fexp_lseek,
};

int
nbd_tool_fuse(struct vimg_node *node, const char *mountpoint, bool is_read_only,
              int ready_fd)
{
    struct fuse_export e = { .node = node, .is_read_only = is_read_only };
    char *argv[] = { (char *)tool_name, "-o", "default_permissions", NULL };
    struct fuse_args args = FUSE_ARGS_INIT(3, argv);
    struct fuse_loop_config *cfg;
    struct fuse *f;
    int ret = 1;

    if (stat(mountpoint, &e.mount_st) < 0) {
        tool_error("Failed to stat '%s': %s", mountpoint, strerror(errno));
        return 1;
    }
    if (!S_ISREG(e.mount_st.st_mode)) {
        tool_error("'%s' is not a regular file: the FUSE export covers a regular file",
                   mountpoint);
        return 1;
    }
    if (!(f = fuse_new(&args, &fexp_ops, sizeof(fexp_ops), &e))) {
        tool_error("Failed to set up the FUSE export of '%s'", mountpoint);
        fuse_opt_free_args(&args);
        return 1;
    }
    if (fuse_mount(f, mountpoint) < 0) {
        tool_error("Failed to mount a FUSE export on '%s' (is /dev/fuse available and "
                   "fusermount3 installed?)", mountpoint);
        goto out_destroy;
    }
    if (fuse_set_signal_handlers(fuse_get_session(f)) < 0) {
        tool_error("Failed to set signal handlers for the FUSE export");
        goto out_unmount;
    }
    if (ready_fd >= 0) {
        if (write(ready_fd, "r", 1) != 1)
            goto out_signals;
        close(ready_fd);
    }
    if (!(cfg = fuse_loop_cfg_create()))
        goto out_signals;
    fuse_loop_cfg_set_max_threads(cfg, FUSE_EXPORT_THREADS);
    ret = fuse_loop_mt(f, cfg) < 0 ? 1 : 0;
    fuse_loop_cfg_destroy(cfg);
out_signals:
    fuse_remove_signal_handlers(fuse_get_session(f));
out_unmount:
    fuse_unmount(f);
out_destroy:
    fuse_destroy(f);
    fuse_opt_free_args(&args);
    return ret;
}
