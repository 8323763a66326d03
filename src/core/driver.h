/*
 * What drivers see: the driver table, the node structure and the core
 * helpers. Tools never include this file.
 */
#ifndef VIMG_CORE_DRIVER_H
#define VIMG_CORE_DRIVER_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include <jansson.h>

#include <vimg/error.h>
#include <vimg/image.h>
#include <vimg/node.h>
#include <vimg/opts.h>

enum vimg_driver_kind {
    VIMG_DRIVER_FORMAT,
    VIMG_DRIVER_PROTOCOL,
};

/* Permissions, as QEMU's file locking numbers them (lock bytes 100+i / 200+i). */
#define VIMG_PERM_CONSISTENT_READ  0x01u
#define VIMG_PERM_WRITE            0x02u
#define VIMG_PERM_WRITE_UNCHANGED  0x04u
#define VIMG_PERM_RESIZE           0x08u
#define VIMG_PERM_ALL              0x0fu
#define VIMG_PERM_BITS             4

enum vimg_opt_type {
    VIMG_OPT_STRING,
    VIMG_OPT_BOOL,
    VIMG_OPT_SIZE,
    VIMG_OPT_NUMBER,
};

/* One creation option: drives `create -o help`, validation and measure. */
struct vimg_opt_desc {
    const char *name;
    enum vimg_opt_type type;
    const char *help;
    const char *def;            /* printed in "Formatting ..." when set; may be NULL */
};

struct vimg_node;

struct vimg_driver {
    const char *name;
    enum vimg_driver_kind kind;
    size_t state_size;                    /* node->state, allocated zeroed by the core */
    const char *const *protocols;         /* URI prefixes a protocol claims ("nbd", ...) */
    bool is_filter;                       /* passes its parent's permissions to "file" */
    bool has_zero_init;                   /* a new image reads as zeros */
    bool supports_backing;
    bool lacks_get_info;                  /* QEMU's has no get_info: info omits "dirty-flag" */
    /* Options that change what the guest sees; when given, `info` names the node json:{...}. */
    const char *const *strong_opts;

    /* Score 0..100 for a header; filename may help (vpc, vvfat). */
    int (*probe)(const uint8_t *buf, size_t len, const char *filename);
    /* Protocols: score for a filename that names no protocol (host_device). */
    int (*probe_device)(const char *filename);
    /*
     * Formats: node->file is open; protocols: the filename is in opts
     * ("filename") and other keys are theirs. Keys not read are rejected by
     * the core afterwards.
     */
    int (*open)(struct vimg_node *node, struct vimg_opts *opts, unsigned flags,
                struct vimg_error *err);
    void (*close)(struct vimg_node *node);
    const struct vimg_opt_desc *create_opts;   /* NULL-name terminated */
    /* opts holds validated creation options; formats create their file first. */
    int (*create)(const char *filename, struct vimg_opts *opts, struct vimg_error *err);

    int (*preadv)(struct vimg_node *node, uint64_t offset, uint64_t bytes,
                  const struct iovec *iov, int n_iov, unsigned flags, struct vimg_error *err);
    /* Instead of preadv, for drivers that read into one buffer; the core gathers. */
    int (*pread)(struct vimg_node *node, uint64_t offset, uint8_t *buf, uint64_t bytes,
                 struct vimg_error *err);
    int (*pwritev)(struct vimg_node *node, uint64_t offset, uint64_t bytes,
                   const struct iovec *iov, int n_iov, unsigned flags, struct vimg_error *err);
    int (*pwrite_zeroes)(struct vimg_node *node, uint64_t offset, uint64_t bytes,
                         unsigned flags, struct vimg_error *err);
    int (*pwrite_compressed)(struct vimg_node *node, uint64_t offset, const void *buf,
                             uint64_t bytes, struct vimg_error *err);
    int (*discard)(struct vimg_node *node, uint64_t offset, uint64_t bytes,
                   struct vimg_error *err);
    int (*flush)(struct vimg_node *node, struct vimg_error *err);
    int (*block_status)(struct vimg_node *node, uint64_t offset, uint64_t bytes,
                        struct vimg_block_status *bs, struct vimg_error *err);
    /*
     * Optional: called before a read of a range block_status calls unallocated
     * falls through to node->backing (core/io.c). A negative errno (err set)
     * fails that read instead, as QEMU's vmdk does when the parent's CID does
     * not match. Map, block status and allocation queries are not affected.
     */
    int (*check_backing)(struct vimg_node *node, struct vimg_error *err);
    int64_t (*length)(struct vimg_node *node, struct vimg_error *err);
    int64_t (*allocated_size)(struct vimg_node *node, struct vimg_error *err);
    int (*truncate)(struct vimg_node *node, uint64_t size, bool is_exact, int prealloc,
                    struct vimg_error *err);
    /* Applies lock bytes for perm/shared and checks others' (protocols with files). */
    int (*set_perm)(struct vimg_node *node, unsigned perm, unsigned shared,
                    struct vimg_error *err);
    /* Adds "format-specific" data for info; format-specific may stay NULL. */
    int (*info)(struct vimg_node *node, json_t **format_specific, struct vimg_error *err);
    int (*check)(struct vimg_node *node, int fix, struct vimg_check_result *result,
                 struct vimg_error *err);
    int (*measure)(struct vimg_opts *opts, struct vimg_node *in, uint64_t size,
                   struct vimg_measure *out, struct vimg_error *err);
    /* Copies [offset, +bytes) to dst at dst_offset without passing through memory. */
    int (*copy_range_to)(struct vimg_node *node, uint64_t offset, struct vimg_node *dst,
                         uint64_t dst_offset, uint64_t bytes, struct vimg_error *err);
    /* The file descriptor behind a protocol node, for copy_range; -1 if none. */
    int (*get_fd)(struct vimg_node *node);
    /* Records backing_file and backing_fmt (NULL: none) in the image's metadata. */
    int (*change_backing_file)(struct vimg_node *node, const char *backing_file,
                               const char *backing_fmt, struct vimg_error *err);
    /* Drops every cluster of the image's own layer, so reads fall through to the backing. */
    int (*make_empty)(struct vimg_node *node, struct vimg_error *err);
    /* Applies one action to the image's persistent dirty bitmaps. */
    int (*bitmap)(struct vimg_node *node, const struct vimg_bitmap_op *op,
                  struct vimg_error *err);
    /* One persistent bitmap's bits (*bits malloc'd; bit i, LSB first, covers granularity
     * bytes at i * granularity); ENOENT: no such bitmap. */
    int (*bitmap_read)(struct vimg_node *node, const char *name, uint8_t **bits,
                       uint64_t *granularity, struct vimg_error *err);
    /* The persistent bitmaps (*list malloc'd, vimg_bitmap_list_free); ENOTSUP: none storable. */
    int (*bitmap_list)(struct vimg_node *node, struct vimg_bitmap_info **list, size_t *n,
                       struct vimg_error *err);
    /* Internal snapshots: *list is malloc'd (vimg_snapshot_list_free), in table order. */
    int (*snapshot_list)(struct vimg_node *node, struct vimg_snapshot **list, size_t *n,
                         struct vimg_error *err);
    /* Takes id (NULL: the next free one), name, dates and sizes from sn. */
    int (*snapshot_create)(struct vimg_node *node, const struct vimg_snapshot *sn,
                           struct vimg_error *err);
    /* Reverts to the snapshot whose id, else whose name, is id_or_name; ENOENT if none. */
    int (*snapshot_apply)(struct vimg_node *node, const char *id_or_name,
                          struct vimg_error *err);
    /*
     * Reads of a read-only node show the snapshot with this id and this name
     * (either may be NULL, not both) until it is closed; ENOENT if none.
     */
    int (*snapshot_load_tmp)(struct vimg_node *node, const char *id, const char *name,
                             struct vimg_error *err);
    /* Deletes the snapshot with this id and this name; ENOENT if none. */
    int (*snapshot_delete)(struct vimg_node *node, const char *id, const char *name,
                           struct vimg_error *err);
    /* Changes creation options of an open image (`amend`); keys not read are rejected. */
    int (*amend)(struct vimg_node *node, struct vimg_opts *opts, bool is_forced,
                 vimg_progress_fn *progress, void *opaque, struct vimg_error *err);
    /*
     * Reads (or with is_write writes) [offset, +bytes) of the VM state the
     * image keeps beside the guest disk. The core has checked the range
     * against QEMU's maximum length and the write permission.
     */
    int (*rw_vmstate)(struct vimg_node *node, uint64_t offset, uint64_t bytes,
                      const struct iovec *iov, int n_iov, bool is_write,
                      struct vimg_error *err);
};

struct vimg_node {
    const struct vimg_driver *drv;
    void *state;
    char *filename;                 /* what messages and `info` call this node */
    json_t *strong_opts;            /* the strong options given at open, typed as given */
    struct vimg_node *file;         /* child role "file" */
    struct vimg_node *backing;      /* child role "backing" */
    struct vimg_node *data_file;    /* child role "data-file" */
    char *backing_filename;         /* as the image records it; set by format open */
    char *backing_format;           /* as the image records it, or NULL */
    char *full_backing_filename;    /* resolved against the image's directory */
    unsigned open_flags;            /* VIMG_OPEN_* */
    bool is_read_only;
    bool is_probed_raw;             /* block 0 writes restricted */
    uint32_t request_alignment;     /* driver sets in open; 1 = byte granular */
    uint32_t mem_alignment;         /* buffer alignment the driver needs */
    uint64_t max_transfer;          /* 0 = unlimited */
    uint32_t cluster_size;          /* formats: allocation unit, 0 = none */
    unsigned perm, shared_perm;     /* what the core asked of set_perm */
    bool is_root;                   /* opened by vimg_open: requests are checked against
                                       cached_length; children may be written past their
                                       end (a format growing its file) */
    int64_t cached_length;          /* root only: the guest-visible size */
    pthread_mutex_t rmw_lock;       /* serialises read-modify-write of partial blocks */
    bool is_dirty;                  /* formats: not closed cleanly ("dirty-flag" in info) */
    bool lacks_get_info;            /* formats: set at open when QEMU's get_info fails
                                       for this image alone; info omits "dirty-flag" */
    bool is_encrypted;              /* formats: data is encrypted ("encrypted" in info) */
    bool needs_compressed_writes;   /* formats: writes must be whole compressed clusters */
    _Atomic bool is_unusable;       /* formats: made unusable by the driver after a fatal
                                       corruption event (QEMU's drv = NULL): every
                                       request fails with ENOMEDIUM */
};

/* Calls that drivers make on their children and themselves (core/node.c). */
int vimg_open_child(struct vimg_node **out, struct vimg_node *parent, const char *role,
                    const char *filename, const char *format, struct vimg_opts *opts,
                    unsigned flags, struct vimg_error *err);
const struct vimg_driver *vimg_driver_find(const char *name);
/* iovec helpers: skip bytes into iov, then bytes of it (core/io.c). */
void vimg_iov_to_buf(const struct iovec *iov, int n_iov, uint64_t skip, void *buf,
                     uint64_t bytes);
void vimg_buf_to_iov(const void *buf, uint64_t bytes, const struct iovec *iov, int n_iov,
                     uint64_t skip);
void vimg_iov_memset(const struct iovec *iov, int n_iov, uint64_t skip, uint64_t bytes);
/* A sub-vector of iov covering [skip, skip + bytes); *out must be freed. -ENOMEM or 0. */
int vimg_iov_slice(const struct iovec *iov, int n_iov, uint64_t skip, uint64_t bytes,
                   struct iovec **out, int *n_out);
/* Reads [offset, +bytes) of child; what lies past its end reads as zeros. */
int vimg_node_pread_padded(struct vimg_node *child, uint64_t offset, void *buf, uint64_t bytes,
                           struct vimg_error *err);
const struct vimg_driver *vimg_driver_at(size_t index);
const struct vimg_driver *vimg_protocol_for(const char *filename);
/* The protocol for a filename without "driver": URI prefix, device, else "file". */
const struct vimg_driver *vimg_protocol_guess(const char *filename);
void vimg_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* URI pieces (core/uri.c). The value of a hex digit, or -1. */
int vimg_hex_digit(char c);
/* A malloc'd copy of [s, s + len) with %XX escapes decoded (a bad one is kept as
 * it stands), or NULL when out of memory. */
char *vimg_uri_decode(const char *s, size_t len);
/* Splits the authority [auth, auth + len), without any user@, into HOST[:PORT] or
 * [V6HOST][:PORT]: *host and *host_len without the brackets; *port just past the
 * colon (running to auth + len, maybe empty) or NULL without one. -1 when a
 * bracket is not closed or is followed by anything but ':'. */
int vimg_uri_split_host(const char *auth, size_t len, const char **host, size_t *host_len,
                        const char **port);
/* A socket connected to HOST:PORT (TCP, close-on-exec), or a negative errno with err
 * set to qemu-img's words (core/net.c). */
int vimg_tcp_connect(const char *host, const char *port, struct vimg_error *err);

/* Preallocation modes, in the order of QEMU's PreallocMode enum. */
enum vimg_prealloc {
    VIMG_PREALLOC_OFF,
    VIMG_PREALLOC_METADATA,
    VIMG_PREALLOC_FALLOC,
    VIMG_PREALLOC_FULL,
};
int vimg_prealloc_parse(const char *s, int *out, struct vimg_error *err);
const char *vimg_prealloc_name(int mode);

/*
 * Creates the storage for an image with the protocol filename names (file by
 * default), passing it the protocol's creation options from opts.
 */
int vimg_create_file(const char *filename, struct vimg_opts *opts, struct vimg_error *err);
/*
 * Creates the empty file a format writes its image into: the protocol's
 * options from opts (nocow, ...) except size and preallocation, which the
 * format applies itself.
 */
int vimg_create_file_empty(const char *filename, struct vimg_opts *opts,
                           struct vimg_error *err);

/* Locking helpers for protocols with a file descriptor (core/lock.c). */
enum vimg_lock_mode { VIMG_LOCK_AUTO, VIMG_LOCK_ON, VIMG_LOCK_OFF };
int vimg_lock_apply(int fd, bool use_ofd, unsigned perm, unsigned shared,
                    struct vimg_error *err);
int vimg_lock_check(int fd, bool use_ofd, unsigned perm, unsigned shared,
                    const char *filename, struct vimg_error *err);
bool vimg_lock_ofd_available(int fd);

#endif
