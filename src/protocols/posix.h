/*
 * What the file and host_device drivers share: I/O on a POSIX file
 * descriptor, optionally through io_uring, and QEMU-compatible locking.
 * Not a driver: it exports helpers, and each driver file its own table.
 */
#ifndef VIMG_PROTOCOLS_POSIX_H
#define VIMG_PROTOCOLS_POSIX_H

#include <pthread.h>

#include "core/driver.h"

struct posix_uring;

struct vimg_posix_state {
    int fd;
    bool is_device;                 /* a block device: sizes come from ioctls */
    bool use_ofd;                   /* OFD locks (else POSIX locks) */
    enum vimg_lock_mode lock_mode;
    bool has_lock;                  /* lock bytes may be held: release on close */
    bool no_discard;                /* discard found unsupported: skip it from now on */
    bool no_zero_range;             /* FALLOC_FL_ZERO_RANGE found unsupported */
    bool no_reserve;                /* no fallocate before large writes (not ext4, ...) */
    struct posix_uring *uring;      /* NULL: plain preadv/pwritev from the calling thread */
};

/* Opens node->filename from opts ("filename", "aio", "locking", ...). */
int vimg_posix_open(struct vimg_node *node, struct vimg_opts *opts, unsigned flags,
                    bool is_device, struct vimg_error *err);
void vimg_posix_close(struct vimg_node *node);
int vimg_posix_preadv(struct vimg_node *node, uint64_t offset, uint64_t bytes,
                      const struct iovec *iov, int n_iov, unsigned flags,
                      struct vimg_error *err);
int vimg_posix_pwritev(struct vimg_node *node, uint64_t offset, uint64_t bytes,
                       const struct iovec *iov, int n_iov, unsigned flags,
                       struct vimg_error *err);
int vimg_posix_flush(struct vimg_node *node, struct vimg_error *err);
int vimg_posix_set_perm(struct vimg_node *node, unsigned perm, unsigned shared,
                        struct vimg_error *err);
int vimg_posix_get_fd(struct vimg_node *node);
int64_t vimg_posix_allocated_size(struct vimg_node *node, struct vimg_error *err);
int vimg_posix_copy_range_to(struct vimg_node *node, uint64_t offset, struct vimg_node *dst,
                             uint64_t dst_offset, uint64_t bytes, struct vimg_error *err);

#endif
