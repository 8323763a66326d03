/*
 * qcow2: what the driver's files share. The on-disk layout is in
 * docs/interop/qcow2.rst of qemu/qemu (SPECS.md, "qcow2"); names of fields
 * follow that document.
 */
#ifndef VIMG_FORMATS_QCOW2_H
#define VIMG_FORMATS_QCOW2_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/uio.h>

#include "core/driver.h"

#define QCOW2_MAGIC 0x514649fbu

/* Header field offsets (spec "Header"). */
#define QCOW2_OFF_MAGIC                    0
#define QCOW2_OFF_VERSION                  4
#define QCOW2_OFF_BACKING_FILE_OFFSET      8
#define QCOW2_OFF_BACKING_FILE_SIZE        16
#define QCOW2_OFF_CLUSTER_BITS             20
#define QCOW2_OFF_SIZE                     24
#define QCOW2_OFF_CRYPT_METHOD             32
#define QCOW2_OFF_L1_SIZE                  36
#define QCOW2_OFF_L1_TABLE_OFFSET          40
#define QCOW2_OFF_REFCOUNT_TABLE_OFFSET    48
#define QCOW2_OFF_REFCOUNT_TABLE_CLUSTERS  56
#define QCOW2_OFF_NB_SNAPSHOTS             60
#define QCOW2_OFF_SNAPSHOTS_OFFSET         64
#define QCOW2_OFF_INCOMPATIBLE_FEATURES    72
#define QCOW2_OFF_COMPATIBLE_FEATURES      80
#define QCOW2_OFF_AUTOCLEAR_FEATURES       88
#define QCOW2_OFF_REFCOUNT_ORDER           96
#define QCOW2_OFF_HEADER_LENGTH            100
#define QCOW2_OFF_COMPRESSION_TYPE         104

#define QCOW2_V2_HEADER_LENGTH      72
#define QCOW2_V3_MIN_HEADER_LENGTH  104
#define QCOW2_V3_HEADER_LENGTH      112     /* what we write: with compression_type */

/* Header extension types (spec "Header extensions"). */
#define QCOW2_EXT_END               0x00000000u
#define QCOW2_EXT_BACKING_FORMAT    0xe2792acau
#define QCOW2_EXT_FEATURE_TABLE     0x6803f857u
#define QCOW2_EXT_BITMAPS           0x23852875u
#define QCOW2_EXT_CRYPTO            0x0537be77u
#define QCOW2_EXT_DATA_FILE         0x44415441u

#define QCOW2_FEATURE_ENTRY_SIZE    48
#define QCOW2_FEATURE_NAME_SIZE     46

#define QCOW2_INCOMPAT_DIRTY        (UINT64_C(1) << 0)
#define QCOW2_INCOMPAT_CORRUPT      (UINT64_C(1) << 1)
#define QCOW2_INCOMPAT_DATA_FILE    (UINT64_C(1) << 2)
#define QCOW2_INCOMPAT_COMPRESSION  (UINT64_C(1) << 3)
#define QCOW2_INCOMPAT_EXTL2        (UINT64_C(1) << 4)
#define QCOW2_INCOMPAT_KNOWN        UINT64_C(0x1f)
#define QCOW2_COMPAT_LAZY_REFCOUNTS (UINT64_C(1) << 0)
#define QCOW2_AUTOCLEAR_BITMAPS     (UINT64_C(1) << 0)
#define QCOW2_AUTOCLEAR_DATA_FILE_RAW (UINT64_C(1) << 1)

#define QCOW2_COMPRESSION_ZLIB      0
#define QCOW2_COMPRESSION_ZSTD      1

/* L1/L2/refcount table entries (spec "Cluster mapping", "Host cluster management"). */
#define QCOW2_OFLAG_COPIED          (UINT64_C(1) << 63)
#define QCOW2_OFLAG_COMPRESSED      (UINT64_C(1) << 62)
#define QCOW2_OFLAG_ZERO            UINT64_C(1)
#define QCOW2_OFFSET_MASK           UINT64_C(0x00fffffffffffe00)
#define QCOW2_RT_OFFSET_MASK        UINT64_C(0xfffffffffffffe00)

/* QEMU's implementation limits, which decide what it (and so we) will open. */
#define QCOW2_MAX_L1_BYTES          (32u << 20)
#define QCOW2_MAX_REFTABLE_BYTES    (8u << 20)
#define QCOW2_MIN_CLUSTER_BITS      9
#define QCOW2_MAX_CLUSTER_BITS      21
#define QCOW2_MAX_BACKING_NAME      1023
#define QCOW2_EXTL2_SUBCLUSTERS     32

/* The header fields, decoded. */
struct qcow2_header {
    uint32_t version;
    uint64_t backing_file_offset;
    uint32_t backing_file_size;
    uint32_t cluster_bits;
    uint64_t size;
    uint32_t crypt_method;
    uint32_t l1_size;
    uint64_t l1_table_offset;
    uint64_t refcount_table_offset;
    uint32_t refcount_table_clusters;
    uint32_t nb_snapshots;
    uint64_t snapshots_offset;
    uint64_t incompatible_features;
    uint64_t compatible_features;
    uint64_t autoclear_features;
    uint32_t refcount_order;
    uint32_t header_length;
    uint8_t compression_type;
};

/* One header extension kept as read, so a rewrite can preserve it. */
struct qcow2_ext {
    uint32_t type;
    uint32_t len;
    uint8_t *data;
};

/* What a guest range maps to, at subcluster granularity. */
enum qcow2_kind {
    QCOW2_UNALLOCATED,      /* read the backing file (or zeros) */
    QCOW2_ZERO,             /* reads as zeros */
    QCOW2_NORMAL,           /* data at host_offset */
    QCOW2_COMPRESSED,       /* one whole compressed cluster */
};

struct qcow2_mapping {
    enum qcow2_kind kind;
    uint64_t bytes;         /* run length from the asked offset, same kind, contiguous host */
    uint64_t host_offset;   /* if has_host: host offset of the asked byte */
    bool has_host;          /* NORMAL, or ZERO/UNALLOCATED keeping a host cluster (QEMU's
                               ZERO_ALLOC, UNALLOCATED_ALLOC) */
    uint64_t l2_entry;      /* first 64 bits of the entry of the asked cluster */
    uint64_t l2_bitmap;     /* extended L2 bitmap of that entry (0 without) */
};

/* A small cache of cluster-sized tables (L2 tables, refcount blocks). */
struct qcow2_cache_entry {
    uint64_t offset;        /* 0 = free slot */
    uint8_t *table;
    uint64_t last_use;
    bool is_dirty;
};

struct qcow2_cache {
    struct qcow2_cache_entry *entries;
    unsigned n_entries;
    uint64_t use_counter;
    bool needs_barrier;     /* written since the last flush of the file */
};

struct qcow2_state {
    struct qcow2_header hdr;
    uint32_t cluster_size;
    uint32_t cluster_bits;
    uint32_t l2_entries;            /* entries per L2 table */
    uint32_t l2_entry_size;         /* 8, or 16 with extended L2 */
    uint32_t subcluster_size;
    uint32_t subcluster_bits;
    uint32_t n_subclusters;         /* 32 with extended L2, else 1 */
    uint32_t refcount_bits;
    uint32_t rb_entries;            /* refcounts per refcount block */
    uint64_t refcount_max;
    bool has_extended_l2;
    bool has_data_file;             /* incompatible bit 2 */
    bool is_data_file_raw;          /* autoclear bit 1 */
    bool is_corrupt;
    bool has_signalled_corruption;  /* a corruption event was reported (said once) */
    bool is_prealloc_checked;       /* is_metadata_prealloc is known (block status asked once) */
    bool is_metadata_prealloc;      /* data clusters may be file holes: ask the file */
    bool is_dirty;                  /* as opened */
    bool is_check_open;             /* opened by check: damaged refcounts are its to report */
    bool has_bitmaps_ext;
    bool has_valid_bitmaps;         /* autoclear bit 0 as opened, or as we last wrote it */
    uint8_t compression_type;
    char *data_file_name;           /* from the header extension, or NULL */
    char *backing_format;
    struct qcow2_ext *exts;         /* every extension read, in order */
    size_t n_exts;
    uint64_t crypto_offset, crypto_length;
    struct qcow2_crypt *crypt;      /* qcow2-crypt.c: NULL for an image without encryption */
    uint64_t bitmaps_dir_offset, bitmaps_dir_size;
    uint32_t nb_bitmaps;

    /*
     * Data I/O done outside lock to a host cluster it mapped (reads, in-place
     * writes) holds io_lock shared, taken before lock is dropped. Dropping a
     * refcount takes it exclusively once, with lock held, so no cluster can be
     * freed and handed out again while such I/O to it is still in flight.
     */
    pthread_rwlock_t io_lock;
    /* lock protects everything below it and the metadata on disk. */
    pthread_mutex_t lock;
    uint64_t *l1;                   /* host byte order */
    uint32_t l1_size;
    uint64_t *rt;                   /* refcount table, host byte order */
    uint32_t rt_size;               /* entries */
    struct qcow2_cache l2_cache;
    struct qcow2_cache rb_cache;
    uint64_t free_cluster_index;    /* no free cluster below this one */
    uint64_t alloc_end;             /* clusters handed out all lie below this index */
    /* Compressed clusters are packed: the next one goes at free_byte_offset (0 = in a new
       cluster) while the one before it, at guest offset free_byte_owner, still has
       L2 entry free_byte_entry (else its host cluster may have been freed). */
    uint64_t free_byte_offset;
    uint64_t free_byte_owner;
    uint64_t free_byte_entry;
    struct qcow2_bitmap_track *bitmap_track;    /* qcow2-bitmap.c: recording writes, or NULL */
};

static inline uint16_t qcow2_be16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static inline uint32_t
qcow2_be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static inline uint64_t
qcow2_be64(const uint8_t *p)
{
    return (uint64_t)qcow2_be32(p) << 32 | qcow2_be32(p + 4);
}
static inline void
qcow2_put_be16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}
static inline void
qcow2_put_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}
static inline void
qcow2_put_be64(uint8_t *p, uint64_t v)
{
    qcow2_put_be32(p, (uint32_t)(v >> 32));
    qcow2_put_be32(p + 4, (uint32_t)v);
}

static inline uint64_t
qcow2_align_up(uint64_t v, uint64_t align)
{
    return (v + align - 1) / align * align;
}

/* qcow2-header.c */
void qcow2_decode_header(const uint8_t *buf, struct qcow2_header *h);
void qcow2_encode_header(const struct qcow2_header *h, uint8_t *buf);
int qcow2_read_header(struct vimg_node *node, struct qcow2_state *s, struct vimg_error *err);
void qcow2_free_header(struct qcow2_state *s);
/* Rewrites len bytes of the header at off from buf (one field or a run of them). */
int qcow2_write_incompatible_features(struct vimg_node *node, struct vimg_error *err);
int qcow2_mark_corrupt(struct vimg_node *node, struct vimg_error *err);
void qcow2_signal_corruption(struct vimg_node *node, bool fatal, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
int qcow2_corruption_error(struct vimg_node *node, struct vimg_error *err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
int qcow2_write_header_field(struct vimg_node *node, uint32_t off, const void *buf,
                             size_t len, struct vimg_error *err);
/* Writes to file (image or data file), growing it first when the write ends past its end. */
int qcow2_pwrite_file(struct vimg_node *file, uint64_t offset, const void *buf, uint64_t len,
                      struct vimg_error *err);
int qcow2_grow_file(struct vimg_node *file, uint64_t end, struct vimg_error *err);
/* Reads [offset, +len) of file; the part past its end reads as zeros, as in QEMU. */
int qcow2_read_meta(struct vimg_node *file, uint64_t offset, void *buf, uint64_t len,
                    struct vimg_error *err);

/* qcow2-cache.c: callers hold s->lock. */
int qcow2_cache_init(struct qcow2_cache *c, unsigned n_entries, uint32_t table_size);
void qcow2_cache_free(struct qcow2_cache *c);
/* The table at offset, read in if needed (or zero-filled when is_new). */
int qcow2_cache_get(struct vimg_node *node, struct qcow2_cache *c, uint64_t offset,
                    bool is_new, uint8_t **table, struct vimg_error *err);
void qcow2_cache_mark_dirty(struct qcow2_cache *c, const uint8_t *table);
void qcow2_cache_forget(struct qcow2_cache *c, uint64_t offset);
int qcow2_cache_write_dirty(struct vimg_node *node, struct qcow2_cache *c,
                            struct vimg_error *err);
/* Writes every dirty refcount block, flushes the file, then every dirty L2 table. */
int qcow2_flush_metadata(struct vimg_node *node, struct vimg_error *err);

/* qcow2-refcount.c: callers hold s->lock. */
int qcow2_load_refcount_table(struct vimg_node *node, struct vimg_error *err);
bool qcow2_detect_metadata_prealloc(struct vimg_node *node);
int qcow2_get_refcount(struct vimg_node *node, uint64_t cluster_index, uint64_t *refcount,
                       struct vimg_error *err);
/* Adds delta (+1 or -1) to the refcount of every cluster of [offset, +bytes). */
int qcow2_update_refcount(struct vimg_node *node, uint64_t offset, uint64_t bytes, int delta,
                          struct vimg_error *err);
/* Allocates n contiguous clusters (refcount 1); *offset is the first one's. */
int qcow2_alloc_clusters(struct vimg_node *node, uint64_t n, uint64_t *offset,
                         struct vimg_error *err);
/* Drops one reference to each cluster of [offset, +bytes) after metadata no longer points there. */
int qcow2_free_clusters(struct vimg_node *node, uint64_t offset, uint64_t bytes,
                        struct vimg_error *err);
void qcow2_refcount_set_raw(struct qcow2_state *s, uint8_t *block, uint64_t index,
                            uint64_t value);
uint64_t qcow2_refcount_get_raw(const struct qcow2_state *s, const uint8_t *block,
                                uint64_t index);
/* *end_index: one past the last cluster in use (0 when none). */
int qcow2_used_end(struct vimg_node *node, uint64_t *end_index, struct vimg_error *err);

/* qcow2-cluster.c: the mapping; callers hold s->lock unless said otherwise. */
int qcow2_get_mapping(struct vimg_node *node, uint64_t offset, uint64_t bytes,
                      struct qcow2_mapping *m, struct vimg_error *err);
/* Compressed cluster host offset and byte count from an L2 entry. */
void qcow2_compressed_extent(const struct qcow2_state *s, uint64_t entry, uint64_t *offset,
                             uint64_t *bytes);
/* The L2 table covering guest offset; NULL without alloc when there is none. */
int qcow2_get_l2(struct vimg_node *node, uint64_t offset, bool alloc, uint8_t **l2,
                 struct vimg_error *err);
int qcow2_grow_l1(struct vimg_node *node, uint64_t min_size, struct vimg_error *err);
/* Takes s->lock itself. */
int qcow2_write(struct vimg_node *node, uint64_t offset, uint64_t bytes,
                const struct iovec *iov, int n_iov, struct vimg_error *err);
int qcow2_zero(struct vimg_node *node, uint64_t offset, uint64_t bytes, unsigned flags,
               struct vimg_error *err);
int qcow2_discard_range(struct vimg_node *node, uint64_t offset, uint64_t bytes,
                        struct vimg_error *err);
/* Reads [offset, +bytes) as this image sees it (lock not held). */
int qcow2_read(struct vimg_node *node, uint64_t offset, uint64_t bytes,
               const struct iovec *iov, int n_iov, struct vimg_error *err);
/* The driver's truncate: resize plus the preallocation and data file growth it asks for. */
int qcow2_truncate(struct vimg_node *node, uint64_t size, bool is_exact, int prealloc,
                   struct vimg_error *err);
int qcow2_preallocate_metadata(struct vimg_node *node, uint64_t offset, uint64_t bytes,
                               struct vimg_error *err);
/* Unmaps every cluster from start (cluster aligned) on; the L1 table keeps its size. */
int qcow2_discard_tail(struct vimg_node *node, uint64_t start, struct vimg_error *err);
/* Data node: the external data file or the image file. */
struct vimg_node *qcow2_data_node(struct vimg_node *node);

/* qcow2-resize.c: the driver's truncate op; takes s->lock. */
int qcow2_resize(struct vimg_node *node, uint64_t size, int prealloc, struct vimg_error *err);

/* qcow2-compress.c */
int qcow2_decompress(uint8_t type, const uint8_t *in, size_t in_len, uint8_t *out,
                     size_t out_len, struct vimg_error *err);
/* Writes whole clusters compressed (the last one may end the image); takes s->lock. */
int qcow2_pwrite_compressed(struct vimg_node *node, uint64_t offset, const void *buf,
                            uint64_t bytes, struct vimg_error *err);

/* qcow2-create.c */
extern const struct vimg_opt_desc qcow2_create_opts[];
int qcow2_create(const char *filename, struct vimg_opts *opts, struct vimg_error *err);

/* qcow2-measure.c */
int qcow2_measure(struct vimg_opts *opts, struct vimg_node *in, uint64_t size,
                  struct vimg_measure *out, struct vimg_error *err);
/* Refcount blocks plus refcount table clusters needed to count n_clusters clusters. */
uint64_t qcow2_refcount_metadata_clusters(uint64_t n_clusters, uint64_t cluster_size,
                                          uint64_t refcount_bits);

/* qcow2-backing.c */
/* Rewrites the header cluster from the state and node->backing_filename; lock held. */
int qcow2_write_header(struct vimg_node *node, struct vimg_error *err);
int qcow2_change_backing_file(struct vimg_node *node, const char *backing_file,
                              const char *backing_fmt, struct vimg_error *err);
int qcow2_make_empty(struct vimg_node *node, struct vimg_error *err);

/* qcow2-snapshot.c: the driver's snapshot ops; they take s->lock. */
int qcow2_snapshot_list(struct vimg_node *node, struct vimg_snapshot **list, size_t *n,
                        struct vimg_error *err);
int qcow2_snapshot_create(struct vimg_node *node, const struct vimg_snapshot *sn,
                          struct vimg_error *err);
int qcow2_snapshot_apply(struct vimg_node *node, const char *id_or_name,
                         struct vimg_error *err);
int qcow2_snapshot_delete(struct vimg_node *node, const char *id, const char *name,
                          struct vimg_error *err);
int qcow2_snapshot_load_tmp(struct vimg_node *node, const char *id, const char *name,
                            struct vimg_error *err);
typedef int (*qcow2_l1_fn)(struct vimg_node *node, const uint64_t *l1, uint32_t l1_size,
                           void *opaque, struct vimg_error *err);
/* Calls fn with each snapshot's L1 table; lock held. */
int qcow2_snapshot_for_each_l1(struct vimg_node *node, qcow2_l1_fn fn, void *opaque,
                               struct vimg_error *err);

/* qcow2-vmstate.c: the driver's rw_vmstate op; takes s->lock. */
int qcow2_rw_vmstate(struct vimg_node *node, uint64_t offset, uint64_t bytes,
                     const struct iovec *iov, int n_iov, bool is_write, struct vimg_error *err);

/* qcow2-amend.c: the driver's amend op; takes s->lock. */
int qcow2_amend(struct vimg_node *node, struct vimg_opts *opts, bool is_forced,
                vimg_progress_fn *progress, void *opaque, struct vimg_error *err);

/* qcow2-bitmap.c: the driver's bitmap op; takes s->lock. */
int qcow2_bitmap(struct vimg_node *node, const struct vimg_bitmap_op *op, struct vimg_error *err);
int qcow2_bitmap_list(struct vimg_node *node, struct vimg_bitmap_info **list, size_t *n,
                      struct vimg_error *err);
/* Records a guest write of [offset, +bytes) in the enabled bitmaps; call before writing. */
int qcow2_bitmaps_mark_dirty(struct vimg_node *node, uint64_t offset, uint64_t bytes,
                             struct vimg_error *err);
/* Stores the bitmaps that recorded writes (at close). */
int qcow2_bitmaps_store(struct vimg_node *node, struct vimg_error *err);
/* Drops what the bitmaps recorded without storing it (close of an unusable node). */
void qcow2_bitmaps_forget(struct qcow2_state *s);
/* After a resize from old_size: the bitmaps take the new size (stored at close); lock held. */
int qcow2_bitmaps_resize(struct vimg_node *node, uint64_t old_size, struct vimg_error *err);
/* Removes every bitmap and the bitmaps extension (amend's downgrade); lock held. */
int qcow2_bitmaps_drop_all(struct vimg_node *node, struct vimg_error *err);
int qcow2_bitmap_read(struct vimg_node *node, const char *name, uint8_t **bits,
                      uint64_t *granularity, struct vimg_error *err);
int qcow2_bitmap_list(struct vimg_node *node, struct vimg_bitmap_info **list, size_t *n,
                      struct vimg_error *err);

/* qcow2-check.c */
int qcow2_check(struct vimg_node *node, int fix, struct vimg_check_result *result,
                struct vimg_error *err);
/* The same with s->lock held (the open path's repair of a dirty image). */
int qcow2_check_locked(struct vimg_node *node, int fix, struct vimg_check_result *result,
                       struct vimg_error *err);

/* qcow2-crypt.c: crypt_method 1 (AES) and 2 (LUKS). */
struct qcow2_crypt_params;
/* Reads the header's encryption (and with I/O its key) after the header checks. */
int qcow2_crypt_open(struct vimg_node *node, struct vimg_opts *opts, unsigned flags,
                     struct vimg_error *err);
void qcow2_crypt_close(struct qcow2_state *s);
/* In place; host and guest are the offsets of buf's first byte (one picks the IV). */
int qcow2_crypt_buf(struct vimg_node *node, bool is_enc, uint64_t host, uint64_t guest,
                    uint8_t *buf, uint64_t len, struct vimg_error *err);
/* Reads (writes) [host, +bytes) of data, decrypting (encrypting) through a bounce buffer. */
int qcow2_crypt_read(struct vimg_node *node, struct vimg_node *data, uint64_t host,
                     uint64_t guest, uint64_t bytes, const struct iovec *iov, int n_iov,
                     struct vimg_error *err);
int qcow2_crypt_write(struct vimg_node *node, struct vimg_node *data, uint64_t host,
                      uint64_t guest, uint64_t bytes, const struct iovec *iov, int n_iov,
                      struct vimg_error *err);
/* The "encrypt" object of `info` (NULL without encryption). */
json_t *qcow2_crypt_info(const struct qcow2_state *s);
/* Creation: options checked and secret looked up before anything is made (*out NULL: none). */
int qcow2_crypt_parse_create(struct vimg_opts *opts, struct qcow2_crypt_params **out,
                             struct vimg_error *err);
void qcow2_crypt_params_free(struct qcow2_crypt_params *p);
/* Bytes of the LUKS header a new image with these options gets (0 without LUKS). */
int qcow2_crypt_measure(struct vimg_opts *opts, uint64_t *header_len, struct vimg_error *err);
/* amend's encrypt.* (LUKS key slots); nothing without them. */
int qcow2_crypt_amend(struct vimg_node *node, struct vimg_opts *opts, bool is_forced,
                      struct vimg_error *err);
/* Sets up encryption on a new image, open read-write without it; takes s->lock. */
int qcow2_crypt_format_new(struct vimg_node *node, const struct qcow2_crypt_params *p,
                           struct vimg_error *err);

/* Appends one header extension at buf + at; returns the offset after it (8-aligned). */
uint32_t qcow2_put_ext(uint8_t *buf, uint32_t at, uint32_t type, const void *data,
                       uint32_t len);
/* The feature name table QEMU writes into version 3 images. */
#define QCOW2_FEATURE_TABLE_ENTRIES 8
#define QCOW2_FEATURE_TABLE_SIZE (QCOW2_FEATURE_TABLE_ENTRIES * QCOW2_FEATURE_ENTRY_SIZE)
void qcow2_fill_feature_table(uint8_t *table);

#endif
