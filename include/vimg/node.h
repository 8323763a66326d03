/*
 * Open images: a graph of nodes (format over protocol, with optional backing
 * and data-file children). Every call is blocking and thread-safe.
 */
#ifndef VIMG_NODE_H
#define VIMG_NODE_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/uio.h>

#include <vimg/error.h>
#include <vimg/opts.h>

struct vimg_node;

/* vimg_open() flags */
#define VIMG_OPEN_RDWR          0x0001u  /* read-write (else read-only) */
#define VIMG_OPEN_NO_BACKING    0x0002u  /* do not open backing files */
#define VIMG_OPEN_FORCE_SHARE   0x0004u  /* -U: share every permission */
#define VIMG_OPEN_RESIZE        0x0008u  /* take the resize permission */
#define VIMG_OPEN_NO_SHARE      0x0010u  /* let nobody else write or resize */
#define VIMG_OPEN_NOCACHE       0x0020u  /* cache.direct=on: bypass the host cache */
#define VIMG_OPEN_NO_FLUSH      0x0040u  /* cache.no-flush=on: flushes do nothing */
#define VIMG_OPEN_WRITETHROUGH  0x0080u  /* flush after every write */
#define VIMG_OPEN_PROTOCOL      0x0100u  /* the filename names storage: no format probing */
#define VIMG_OPEN_NO_IO         0x0200u  /* metadata only (info of an image in use) */
#define VIMG_OPEN_NO_SHARE_RESIZE 0x0400u  /* let nobody else resize (qemu-nbd) */
#define VIMG_OPEN_AIO_NATIVE    0x0800u  /* default aio=native for file protocols */
#define VIMG_OPEN_AIO_IO_URING  0x1000u  /* default aio=io_uring for file protocols */
#define VIMG_OPEN_REOPEN        0x2000u  /* opening again what was open: skip the checks QEMU
                                            makes only at first open (aio=native without
                                            O_DIRECT, O_DIRECT writes to an unaligned size) */
#define VIMG_OPEN_CHECK         0x4000u  /* opened by check: no repair on open, damage is
                                            left for the check to report */

/* Request flags */
#define VIMG_REQ_FUA            0x0001u  /* data reaches stable storage before return */
#define VIMG_REQ_MAY_UNMAP      0x0002u  /* a zero write may deallocate */
#define VIMG_REQ_NO_FALLBACK    0x0004u  /* fail with ENOTSUP rather than write zeros */

/* Block status flags */
#define VIMG_BS_DATA            0x0001u  /* reads come from data in this node's file */
#define VIMG_BS_ZERO            0x0002u  /* reads return zeros */
#define VIMG_BS_OFFSET_VALID    0x0004u  /* offset and file say where the data is */
#define VIMG_BS_ALLOCATED       0x0008u  /* this layer (not a backing file) decides */
#define VIMG_BS_RAW             0x0010u  /* driver: ask file at offset for the rest */
#define VIMG_BS_COMPRESSED      0x0020u  /* data is stored compressed */
#define VIMG_BS_RECURSE         0x0040u  /* driver: data may sit over a hole in file; ask it */

struct vimg_block_status {
    unsigned flags;              /* VIMG_BS_* */
    uint64_t bytes;              /* length of the run that has these flags */
    uint64_t offset;             /* host offset in file, with VIMG_BS_OFFSET_VALID */
    struct vimg_node *file;      /* the node holding the data */
    int depth;                   /* layers above the one that decides (0 = this one) */
};

/*
 * Sends warnings the library has for the user (raw probing, lock fallback) to
 * fn; without one they are dropped. Only tools print.
 */
typedef void (*vimg_warning_fn)(const char *msg);
void vimg_set_warning_handler(vimg_warning_fn fn);

/*
 * Opens filename (a path, a URI or "json:{...}") and/or opts (the
 * --image-opts form). format NULL means probe. The node takes no ownership of
 * opts. The error message does not repeat the filename's outer framing
 * ("Could not open 'x': "), which is the tool's to add.
 */
int vimg_open(struct vimg_node **out, const char *filename, const char *format,
              const struct vimg_opts *opts, unsigned flags, struct vimg_error *err);
void vimg_close(struct vimg_node *node);

/* Creates an image; opts carries "size" and the format's creation options. */
int vimg_create(const char *filename, const char *format, struct vimg_opts *opts,
                struct vimg_error *err);

int vimg_node_pread(struct vimg_node *node, uint64_t offset, void *buf, uint64_t bytes,
                    unsigned flags, struct vimg_error *err);
int vimg_node_pwrite(struct vimg_node *node, uint64_t offset, const void *buf,
                     uint64_t bytes, unsigned flags, struct vimg_error *err);
int vimg_node_preadv(struct vimg_node *node, uint64_t offset, uint64_t bytes,
                     const struct iovec *iov, int n_iov, unsigned flags,
                     struct vimg_error *err);
int vimg_node_pwritev(struct vimg_node *node, uint64_t offset, uint64_t bytes,
                      const struct iovec *iov, int n_iov, unsigned flags,
                      struct vimg_error *err);
int vimg_node_pwrite_zeroes(struct vimg_node *node, uint64_t offset, uint64_t bytes,
                            unsigned flags, struct vimg_error *err);
/* Writes one compressed cluster-aligned chunk; ENOTSUP where the format has none. */
int vimg_node_pwrite_compressed(struct vimg_node *node, uint64_t offset, const void *buf,
                                uint64_t bytes, struct vimg_error *err);
int vimg_node_discard(struct vimg_node *node, uint64_t offset, uint64_t bytes,
                      struct vimg_error *err);
int vimg_node_flush(struct vimg_node *node, struct vimg_error *err);
/*
 * Copies [offset, +bytes) of src to dst at dst_offset without passing the
 * data through memory (copy_file_range); ENOTSUP where either side cannot.
 * Both must be protocol nodes or raw formats directly over one.
 */
int vimg_node_copy_range(struct vimg_node *src, uint64_t offset, struct vimg_node *dst,
                         uint64_t dst_offset, uint64_t bytes, struct vimg_error *err);
/* Virtual size in bytes, or -errno. */
int64_t vimg_node_length(struct vimg_node *node, struct vimg_error *err);
/* Bytes the image takes on its storage (all files), or -errno. */
int64_t vimg_node_allocated_size(struct vimg_node *node, struct vimg_error *err);
int vimg_node_truncate(struct vimg_node *node, uint64_t size, bool is_exact,
                       const char *prealloc, struct vimg_error *err);

/* The status of [offset, offset + bytes) in this node alone. */
int vimg_node_block_status(struct vimg_node *node, uint64_t offset, uint64_t bytes,
                           struct vimg_block_status *bs, struct vimg_error *err);
/*
 * The status through the backing chain down to (not including) base; with
 * VIMG_BS_ALLOCATED clear the range is unallocated in every layer.
 */
int vimg_node_block_status_above(struct vimg_node *node, struct vimg_node *base,
                                 uint64_t offset, uint64_t bytes,
                                 struct vimg_block_status *bs, struct vimg_error *err);

/* Accessors for what tools print. */
const char *vimg_node_filename(const struct vimg_node *node);
const char *vimg_node_format(const struct vimg_node *node);
struct vimg_node *vimg_node_file(struct vimg_node *node);
struct vimg_node *vimg_node_backing(struct vimg_node *node);
const char *vimg_node_backing_filename(const struct vimg_node *node);
const char *vimg_node_backing_format(const struct vimg_node *node);
bool vimg_node_is_read_only(const struct vimg_node *node);
bool vimg_node_is_probed_raw(const struct vimg_node *node);
uint32_t vimg_node_cluster_size(const struct vimg_node *node);
bool vimg_node_has_zero_init(struct vimg_node *node);
bool vimg_node_can_compress(const struct vimg_node *node);
/* Whether the format encrypts the data it stores (qcow2/qcow with a key, luks). */
bool vimg_node_is_encrypted(const struct vimg_node *node);
/* Writes must be whole compressed clusters (vmdk streamOptimized): convert writes so. */
bool vimg_node_needs_compressed_writes(const struct vimg_node *node);

/* Fast test that a buffer holds only zero bytes. */
bool vimg_buffer_is_zero(const void *buf, size_t len);

/*
 * The VM state an image keeps beside its guest disk (qcow2): offsets count
 * from its start. ENOTSUP where no layer of the image has one; EIO past
 * QEMU's maximum image length.
 */
int vimg_node_pread_vmstate(struct vimg_node *node, uint64_t offset, void *buf,
                            uint64_t bytes, struct vimg_error *err);
int vimg_node_pwrite_vmstate(struct vimg_node *node, uint64_t offset, const void *buf,
                             uint64_t bytes, struct vimg_error *err);

#endif
