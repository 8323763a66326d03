/*
 * I/O on a POSIX file descriptor for the file and host_device protocols:
 * open flags from the cache mode, O_DIRECT alignment probing, full-length
 * preadv/pwritev (short reads at the end of a file read as zeros), io_uring
 * for aio=io_uring where the kernel allows it, and QEMU-compatible lock bytes.
 */
#include <errno.h>
#include <limits.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <linux/magic.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#include "config.h"
#include "protocols/posix.h"

#ifdef VIMG_HAVE_LIBURING
#include <liburing.h>

#define URING_RINGS   64
#define URING_ENTRIES 4

/*
 * A pool of rings, created as requests in flight need them: a blocking
 * request borrows one for its lifetime, so up to URING_RINGS run at once.
 */
struct posix_uring {
    pthread_mutex_t lock;           /* protects is_busy */
    pthread_cond_t cond;
    struct io_uring rings[URING_RINGS];
    bool is_busy[URING_RINGS];
    int n_rings;
};

static struct posix_uring *
uring_new(void)
{
    struct posix_uring *u = calloc(1, sizeof(*u));

    if (!u)
        return NULL;
    /* The first ring tells whether the kernel lets us have io_uring at all. */
    if (io_uring_queue_init(URING_ENTRIES, &u->rings[0], 0) < 0) {
        free(u);
        return NULL;
    }
    u->n_rings = 1;
    pthread_mutex_init(&u->lock, NULL);
    pthread_cond_init(&u->cond, NULL);
    return u;
}

static void
uring_free(struct posix_uring *u)
{
    if (!u)
        return;
    for (int i = 0; i < u->n_rings; i++)
        io_uring_queue_exit(&u->rings[i]);
    pthread_mutex_destroy(&u->lock);
    pthread_cond_destroy(&u->cond);
    free(u);
}

static int
uring_acquire(struct posix_uring *u)
{
    int index = -1;

    pthread_mutex_lock(&u->lock);
    while (index < 0) {
        for (int i = 0; i < u->n_rings; i++) {
            if (!u->is_busy[i]) {
                u->is_busy[i] = true;
                index = i;
                break;
            }
        }
        if (index < 0 && u->n_rings < URING_RINGS &&
            io_uring_queue_init(URING_ENTRIES, &u->rings[u->n_rings], 0) == 0) {
            index = u->n_rings++;
            u->is_busy[index] = true;
        }
        if (index < 0)
            pthread_cond_wait(&u->cond, &u->lock);
    }
    pthread_mutex_unlock(&u->lock);
    return index;
}

static void
uring_release(struct posix_uring *u, int index)
{
    pthread_mutex_lock(&u->lock);
    u->is_busy[index] = false;
    pthread_cond_signal(&u->cond);
    pthread_mutex_unlock(&u->lock);
}

/* One readv/writev/fsync through a borrowed ring; returns bytes or -errno. */
static ssize_t
uring_rw(struct posix_uring *u, int fd, int op, const struct iovec *iov, int n_iov,
         uint64_t offset)
{
    int index = uring_acquire(u);
    struct io_uring *ring = &u->rings[index];
    struct io_uring_sqe *sqe = io_uring_get_sqe(ring);
    struct io_uring_cqe *cqe;
    ssize_t ret;

    if (op == 0)
        io_uring_prep_readv(sqe, fd, iov, (unsigned)n_iov, offset);
    else if (op == 1)
        io_uring_prep_writev(sqe, fd, iov, (unsigned)n_iov, offset);
    else
        io_uring_prep_fsync(sqe, fd, IORING_FSYNC_DATASYNC);
    ret = io_uring_submit_and_wait(ring, 1);
    if (ret >= 0) {
        ret = io_uring_wait_cqe(ring, &cqe);
        if (ret == 0) {
            ret = cqe->res;
            io_uring_cqe_seen(ring, cqe);
        }
    }
    uring_release(u, index);
    return ret;
}
#else
static struct posix_uring *uring_new(void) { return NULL; }
static void uring_free(struct posix_uring *u) { (void)u; }
#endif

static const char *const aio_names[] = { "threads", "native", "io_uring", NULL };
static const char *const lock_names[] = { "auto", "on", "off", NULL };

/* The smallest request size O_DIRECT accepts on this file, found by trying. */
static void
probe_alignment(struct vimg_node *node, int fd)
{
    static const uint32_t sizes[] = { 1, 512, 1024, 2048, 4096 };
    void *buf;

    if (posix_memalign(&buf, 4096, 4096) != 0) {
        node->request_alignment = 4096;
        node->mem_alignment = 4096;
        return;
    }
    node->request_alignment = 4096;
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        if (pread(fd, buf, sizes[i], 0) >= 0) {
            node->request_alignment = sizes[i];
            break;
        }
    }
    node->mem_alignment = 4096;
    for (uint32_t a = 512; a <= 4096; a *= 2) {
        uint32_t len = node->request_alignment > 1 ? node->request_alignment : 512;
        if (len + a <= 4096 && pread(fd, (char *)buf + a, len, 0) >= 0) {
            node->mem_alignment = a;
            break;
        }
    }
    /* A read of a hole succeeds at any size, so 1 may only mean the probe hit a hole:
     * as QEMU, assume the largest block size then (a page, at least 4096). */
    if (node->request_alignment == 1) {
        long page = sysconf(_SC_PAGESIZE);
        node->request_alignment = page > 4096 ? (uint32_t)page : 4096;
    }
    free(buf);
}

static int
posix_read_opts(struct vimg_node *node, struct vimg_opts *opts, int *aio,
                struct vimg_error *err)
{
    struct vimg_posix_state *s = node->state;
    uint64_t batch;
    int lock, ret;

    int def_aio = (node->open_flags & VIMG_OPEN_AIO_NATIVE) ? 1
                  : (node->open_flags & VIMG_OPEN_AIO_IO_URING) ? 2 : 0;

    if ((ret = vimg_opts_get_enum(opts, "aio", aio_names, def_aio, aio, err)) < 0)
        return ret;
    if ((ret = vimg_opts_get_enum(opts, "locking", lock_names, VIMG_LOCK_AUTO, &lock, err)) < 0)
        return ret;
    s->lock_mode = (enum vimg_lock_mode)lock;
    if ((ret = vimg_opts_get_number(opts, "aio-max-batch", 0, &batch, err)) < 0)
        return ret;
    vimg_opts_get(opts, "filename");
    vimg_opts_get(opts, "drop-cache");
    vimg_opts_get(opts, "x-check-cache-dropped");
    if (*aio == 1 && !(node->open_flags & (VIMG_OPEN_NOCACHE | VIMG_OPEN_REOPEN)))
        return vimg_error_set(err, EINVAL, "aio=native was specified, but it requires "
                              "cache.direct=on, which was not specified.");
    return 0;
}

int
vimg_posix_open(struct vimg_node *node, struct vimg_opts *opts, unsigned flags,
                bool is_device, struct vimg_error *err)
{
    struct vimg_posix_state *s = node->state;
    int aio = 0, oflags, ret;
    struct statfs fs;
    struct stat st;

    s->fd = -1;
    s->is_device = is_device;
    node->open_flags = flags;
    if ((ret = posix_read_opts(node, opts, &aio, err)) < 0)
        return ret;
    oflags = O_CLOEXEC | ((flags & VIMG_OPEN_RDWR) ? O_RDWR : O_RDONLY);
    if (flags & VIMG_OPEN_NOCACHE)
        oflags |= O_DIRECT;
    s->fd = open(node->filename, oflags);
    if (s->fd < 0)
        return vimg_error_set_errno(err, errno, "Could not open '%s'", node->filename);
    if (fstat(s->fd, &st) < 0) {
        ret = vimg_error_set_errno(err, errno, "Could not stat '%s'", node->filename);
        goto fail;
    }
    if (!is_device && !S_ISREG(st.st_mode)) {
        ret = vimg_error_set(err, EINVAL, "'file' driver requires '%s' to be a regular file",
                             node->filename);
        goto fail;
    }
    if (flags & VIMG_OPEN_NOCACHE)
        probe_alignment(node, s->fd);
    /* O_DIRECT allocates as it writes: no delayed allocation to save. */
    s->no_reserve = is_device || (flags & VIMG_OPEN_NOCACHE) || !(flags & VIMG_OPEN_RDWR) ||
                    fstatfs(s->fd, &fs) < 0 || fs.f_type != EXT4_SUPER_MAGIC;
    if (aio == 2)
        s->uring = uring_new();
    s->use_ofd = vimg_lock_ofd_available(s->fd);
    if (s->lock_mode == VIMG_LOCK_ON && !s->use_ofd)
        vimg_warn("warning: File lock requested but OFD locking syscall is unavailable, falling back "
                  "to POSIX file locks.\nDue to the implementation, locks can be lost "
                  "unexpectedly.");
    return 0;
fail:
    close(s->fd);
    s->fd = -1;
    return ret;
}

void
vimg_posix_close(struct vimg_node *node)
{
    struct vimg_posix_state *s = node->state;

    uring_free(s->uring);
    s->uring = NULL;
    if (s->fd >= 0)
        close(s->fd);
    s->fd = -1;
}

static ssize_t
do_rw(struct vimg_posix_state *s, bool is_write, const struct iovec *iov, int n_iov,
      uint64_t offset)
{
    ssize_t n;

#ifdef VIMG_HAVE_LIBURING
    if (s->uring)
        return uring_rw(s->uring, s->fd, is_write ? 1 : 0, iov, n_iov, offset);
#endif
    do {
        n = is_write ? pwritev(s->fd, iov, n_iov, (off_t)offset)
                     : preadv(s->fd, iov, n_iov, (off_t)offset);
    } while (n < 0 && errno == EINTR);
    return n < 0 ? -errno : n;
}

/* Moves past n bytes of an iovec copy (in place). */
static void
iov_advance(struct iovec **iov, int *n_iov, size_t n)
{
    while (n && *n_iov) {
        if (n >= (*iov)->iov_len) {
            n -= (*iov)->iov_len;
            (*iov)++;
            (*n_iov)--;
        } else {
            (*iov)->iov_base = (char *)(*iov)->iov_base + n;
            (*iov)->iov_len -= n;
            n = 0;
        }
    }
}

/*
 * Large buffered writes to a regular file reserve their blocks first with
 * fallocate(): ext4's delayed allocation otherwise reserves, looks up and
 * records every 4 KiB block of the write one by one, which is about a third
 * of the kernel time of a convert (measured on Linux 6.18: 1 GiB in 1 MiB
 * writes took 0.27 s, 0.17 s with the range allocated first). The blocks are
 * the ones the write allocates anyway, so the file holds the same blocks.
 * The price: ext4 places separately fallocate'd ranges less contiguously than
 * one writeback does (a 2 GiB convert with 1024 data runs: 111 extents
 * against 34; a 256 MiB full one: 5 against 3), so a fragmented file can need
 * an extent tree block more. Only on ext4, where it was measured; where
 * fallocate fails as unsupported it is not tried again.
 */
#define RESERVE_MIN_BYTES (256 * 1024)

static void
reserve_blocks(struct vimg_posix_state *s, uint64_t offset, uint64_t bytes)
{
    if (s->no_reserve || bytes < RESERVE_MIN_BYTES)
        return;
    if (fallocate(s->fd, 0, (off_t)offset, (off_t)bytes) < 0 &&
        (errno == EOPNOTSUPP || errno == ENOSYS || errno == EINVAL))
        s->no_reserve = true;
}

static int
posix_rw(struct vimg_node *node, bool is_write, uint64_t offset, uint64_t bytes,
         const struct iovec *iov, int n_iov, struct vimg_error *err)
{
    struct vimg_posix_state *s = node->state;
    struct iovec stack[16], *copy = n_iov <= 16 ? stack : malloc(sizeof(*copy) * (size_t)n_iov);
    struct iovec *cur = copy;
    int n_cur = n_iov, ret = 0;

    if (!copy)
        return vimg_error_set(err, ENOMEM, "Out of memory");
    if (is_write)
        reserve_blocks(s, offset, bytes);
    memcpy(copy, iov, sizeof(*copy) * (size_t)n_iov);
    while (bytes > 0 && n_cur > 0) {
        ssize_t n = do_rw(s, is_write, cur, n_cur > IOV_MAX ? IOV_MAX : n_cur, offset);
        if (n < 0) {
            ret = vimg_error_set(err, (int)-n, "%s", strerror((int)-n));
            break;
        }
        if (n == 0) {
            if (is_write) {
                ret = vimg_error_set(err, ENOSPC, "%s", strerror(ENOSPC));
                break;
            }
            /* Past the end of the file: the rest reads as zeros. */
            for (int i = 0; i < n_cur; i++)
                memset(cur[i].iov_base, 0, cur[i].iov_len);
            break;
        }
        iov_advance(&cur, &n_cur, (size_t)n);
        offset += (uint64_t)n;
        bytes -= (uint64_t)n;
    }
    if (copy != stack)
        free(copy);
    return ret;
}

int
vimg_posix_preadv(struct vimg_node *node, uint64_t offset, uint64_t bytes,
                  const struct iovec *iov, int n_iov, unsigned flags, struct vimg_error *err)
{
    (void)flags;
    return posix_rw(node, false, offset, bytes, iov, n_iov, err);
}

int
vimg_posix_pwritev(struct vimg_node *node, uint64_t offset, uint64_t bytes,
                   const struct iovec *iov, int n_iov, unsigned flags, struct vimg_error *err)
{
    int ret = posix_rw(node, true, offset, bytes, iov, n_iov, err);

    if (ret == 0 && (flags & VIMG_REQ_FUA))
        ret = vimg_posix_flush(node, err);
    return ret;
}

int
vimg_posix_flush(struct vimg_node *node, struct vimg_error *err)
{
    struct vimg_posix_state *s = node->state;

#ifdef VIMG_HAVE_LIBURING
    if (s->uring) {
        ssize_t r = uring_rw(s->uring, s->fd, 2, NULL, 0, 0);
        if (r < 0)
            return vimg_error_set(err, (int)-r, "%s", strerror((int)-r));
        return 0;
    }
#endif
    if (fdatasync(s->fd) < 0)
        return vimg_error_set(err, errno, "%s", strerror(errno));
    return 0;
}

int
vimg_posix_set_perm(struct vimg_node *node, unsigned perm, unsigned shared,
                    struct vimg_error *err)
{
    struct vimg_posix_state *s = node->state;
    int ret;

    if (s->lock_mode == VIMG_LOCK_OFF)
        return 0;
    if (s->lock_mode == VIMG_LOCK_AUTO && !s->use_ofd)
        return 0;
    s->has_lock = true;
    if ((ret = vimg_lock_apply(s->fd, s->use_ofd, perm, shared, err)) < 0)
        return ret;
    return vimg_lock_check(s->fd, s->use_ofd, perm, shared, node->filename, err);
}

int
vimg_posix_get_fd(struct vimg_node *node)
{
    struct vimg_posix_state *s = node->state;

    return s->fd;
}

int64_t
vimg_posix_allocated_size(struct vimg_node *node, struct vimg_error *err)
{
    struct vimg_posix_state *s = node->state;
    struct stat st;

    if (fstat(s->fd, &st) < 0)
        return vimg_error_set(err, errno, "%s", strerror(errno));
    return (int64_t)st.st_blocks * 512;
}

int
vimg_posix_copy_range_to(struct vimg_node *node, uint64_t offset, struct vimg_node *dst,
                         uint64_t dst_offset, uint64_t bytes, struct vimg_error *err)
{
    struct vimg_posix_state *s = node->state;
    int dst_fd = dst->drv->get_fd ? dst->drv->get_fd(dst) : -1;

    if (dst_fd < 0)
        return vimg_error_set(err, ENOTSUP, "Operation not supported");
    while (bytes > 0) {
        loff_t in = (loff_t)offset, out = (loff_t)dst_offset;
        ssize_t n = copy_file_range(s->fd, &in, dst_fd, &out, bytes, 0);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return vimg_error_set(err, errno, "%s", strerror(errno));
        }
        if (n == 0)
            return vimg_error_set(err, EIO, "Input/output error");
        offset += (uint64_t)n;
        dst_offset += (uint64_t)n;
        bytes -= (uint64_t)n;
    }
    return 0;
}
