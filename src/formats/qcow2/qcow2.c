/*
 * The qcow2 format driver (SPECS.md "qcow2": docs/interop/qcow2.rst):
 * probing, open/close, the request callbacks, block status, resize and
 * `info`. The work is done in qcow2-header.c (header and extensions),
 * qcow2-cluster.c (mapping, reads, writes), qcow2-refcount.c (allocation),
 * qcow2-create.c, qcow2-check.c and qcow2-crypt.c (AES and LUKS encryption).
 *
 * Left out for now: the VM state of internal snapshots (the snapshot table
 * is in qcow2-snapshot.c). Persistent bitmaps,
 * and recording writes in them, are in qcow2-bitmap.c; resizing is in
 * qcow2-resize.c.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "formats/qcow2/qcow2.h"

#define QCOW2_MAX_BITMAP_DIR_BYTES (64u << 20)

static int
qcow2_probe(const uint8_t *buf, size_t len, const char *filename)
{
    (void)filename;
    if (len < 8 || qcow2_be32(buf) != QCOW2_MAGIC)
        return 0;
    return qcow2_be32(buf + QCOW2_OFF_VERSION) >= 2 ? 100 : 0;
}

static void
qcow2_free_state(struct qcow2_state *s)
{
    qcow2_cache_free(&s->l2_cache);
    qcow2_cache_free(&s->rb_cache);
    free(s->l1);
    s->l1 = NULL;
    free(s->rt);
    s->rt = NULL;
    qcow2_crypt_close(s);
    qcow2_free_header(s);
}

static int
qcow2_load_l1(struct vimg_node *node, struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t bytes = (uint64_t)s->hdr.l1_size * 8;
    uint8_t *buf;
    int ret;

    s->l1_size = s->hdr.l1_size;
    /* At most 32 MiB: the header check bounded l1_size. */
    s->l1 = calloc(s->l1_size ? s->l1_size : 1, sizeof(uint64_t));
    buf = malloc(bytes ? bytes : 1);
    if (!s->l1 || !buf) {
        free(buf);
        return vimg_error_set(err, ENOMEM, "Out of memory");
    }
    ret = qcow2_read_meta(node->file, s->hdr.l1_table_offset, buf, bytes, err);
    if (ret == 0)
        for (uint32_t i = 0; i < s->l1_size; i++)
            s->l1[i] = qcow2_be64(buf + (uint64_t)i * 8);
    free(buf);
    if (ret < 0)
        vimg_error_prefix(err, "Could not read L1 table: ");
    return ret;
}

/* Runtime options (QEMU's BlockdevOptionsQcow2) as parsed; sizes in bytes, 0 = default. */
struct qcow2_runtime_opts {
    uint64_t cache_size, l2_cache_size, refcount_cache_size;
};

static int
qcow2_check_overlap_opts(struct vimg_opts *opts, struct vimg_error *err)
{
    static const char *const modes[] = { "none", "constant", "cached", "all", NULL };
    static const char *const kinds[] = {
        "main-header", "active-l1", "active-l2", "refcount-table", "refcount-block",
        "snapshot-table", "inactive-l1", "inactive-l2", "bitmap-directory", NULL,
    };
    struct vimg_opts *dict = vimg_opts_get_dict(opts, "overlap-check");
    const char *mode = dict ? vimg_opts_get(dict, "template") : vimg_opts_get(opts,
                                                                               "overlap-check");
    bool flag;
    int ret, i;

    for (i = 0; mode && modes[i] && strcmp(mode, modes[i]) != 0; i++)
        ;
    if (mode && !modes[i])
        return vimg_error_set(err, EINVAL, "Unsupported value '%s' for qcow2 option '%s'. "
                              "Allowed are any of the following: none, constant, cached, all",
                              mode, "overlap-check");
    for (i = 0; dict && kinds[i]; i++)
        if ((ret = vimg_opts_get_bool(dict, kinds[i], false, &flag, err)) < 0)
            return ret;
    return 0;
}

/* Keys QEMU accepts that change nothing here: validated, then ignored. */
static int
qcow2_check_ignored_opts(struct qcow2_state *s, struct vimg_opts *opts, struct vimg_error *err)
{
    static const char *const bools[] = {
        "lazy-refcounts", "pass-discard-request", "pass-discard-snapshot",
        "pass-discard-other", NULL,
    };
    struct vimg_opts *enc = vimg_opts_get_dict(opts, "encrypt");
    const char *fmt = enc ? vimg_opts_get(enc, "format") : NULL;
    uint64_t v;
    bool flag;
    int ret;

    for (int i = 0; bools[i]; i++)
        if ((ret = vimg_opts_get_bool(opts, bools[i], false, &flag, err)) < 0)
            return ret;
    if (vimg_opts_get_bool(opts, "lazy-refcounts", false, &flag, NULL) == 0 && flag &&
        s->hdr.version < 3)
        return vimg_error_set(err, EINVAL, "Lazy refcounts require a qcow2 image with at "
                              "least qemu 1.1 compatibility level");
    if ((ret = vimg_opts_get_number(opts, "cache-clean-interval", 0, &v, err)) < 0)
        return ret;
    if (v > UINT32_MAX)
        return vimg_error_set(err, EINVAL, "Cache clean interval too big");
    if ((ret = vimg_opts_get_size(opts, "l2-cache-entry-size", s->cluster_size, &v, err)) < 0)
        return ret;
    if (v < 512 || v > s->cluster_size || (v & (v - 1)))
        return vimg_error_set(err, EINVAL, "L2 cache entry size must be a power of two "
                              "between 512 and the cluster size (%" PRIu32 ")",
                              s->cluster_size);
    if (fmt && s->hdr.crypt_method == 0)
        return vimg_error_set(err, EINVAL, "No encryption in image header, but options "
                              "specified format '%s'", fmt);
    /* An encrypted image's encrypt.* options are qcow2_crypt_open's. */
    for (size_t i = 0; enc && s->hdr.crypt_method == 0 && i < vimg_opts_count(enc); i++)
        (void)vimg_opts_get(enc, vimg_opts_key_at(enc, i));
    return qcow2_check_overlap_opts(opts, err);
}

static int
qcow2_parse_cache_opts(struct vimg_opts *opts, struct qcow2_runtime_opts *r,
                       struct vimg_error *err)
{
    bool has_all = vimg_opts_has(opts, "cache-size");
    bool has_l2 = vimg_opts_has(opts, "l2-cache-size");
    bool has_rc = vimg_opts_has(opts, "refcount-cache-size");
    int ret;

    if ((ret = vimg_opts_get_size(opts, "cache-size", 0, &r->cache_size, err)) < 0 ||
        (ret = vimg_opts_get_size(opts, "l2-cache-size", 0, &r->l2_cache_size, err)) < 0 ||
        (ret = vimg_opts_get_size(opts, "refcount-cache-size", 0, &r->refcount_cache_size,
                                  err)) < 0)
        return ret;
    if (has_all && has_l2 && has_rc)
        return vimg_error_set(err, EINVAL, "cache-size, l2-cache-size and refcount-cache-size "
                              "may not be set at the same time");
    if (has_all && has_l2 && r->l2_cache_size > r->cache_size)
        return vimg_error_set(err, EINVAL, "l2-cache-size may not exceed cache-size");
    if (has_all && has_rc && r->refcount_cache_size > r->cache_size)
        return vimg_error_set(err, EINVAL, "refcount-cache-size may not exceed cache-size");
    if (has_all && has_l2)
        r->refcount_cache_size = r->cache_size - r->l2_cache_size;
    else if (has_all && has_rc)
        r->l2_cache_size = r->cache_size - r->refcount_cache_size;
    else if (has_all)
        r->l2_cache_size = r->cache_size;
    return 0;
}

/* Tables per cache: the sizes asked for (at least QEMU's minimums), else ours. */
static unsigned
qcow2_cache_entries(const struct qcow2_state *s, uint64_t bytes, unsigned min)
{
    uint64_t n = bytes ? bytes / s->cluster_size : (4u << 20) / s->cluster_size;

    if (!bytes && n > 64)
        n = 64;
    if (n > 65536)
        n = 65536;
    return n < min ? min : (unsigned)n;
}

static int
qcow2_init_caches(struct qcow2_state *s, const struct qcow2_runtime_opts *r,
                  struct vimg_error *err)
{
    if (qcow2_cache_init(&s->l2_cache, qcow2_cache_entries(s, r->l2_cache_size, 4),
                         s->cluster_size) < 0 ||
        qcow2_cache_init(&s->rb_cache, qcow2_cache_entries(s, r->refcount_cache_size, 4),
                         s->cluster_size) < 0)
        return vimg_error_set(err, ENOMEM, "Out of memory");
    return 0;
}

static int
qcow2_open_data_file(struct vimg_node *node, struct vimg_opts *opts, unsigned flags,
                     struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    struct vimg_opts *child = vimg_opts_get_dict(opts, "data-file");
    const char *ref = vimg_opts_get(opts, "data-file");
    const char *name = ref ? ref : s->data_file_name;

    if (!s->has_data_file) {
        if (child || ref)
            return vimg_error_set(err, EINVAL, "'data-file' can only be set for images with an "
                                  "external data file");
        return 0;
    }
    if (flags & VIMG_OPEN_NO_IO)
        return 0;
    if (!child && !name)
        return vimg_error_set(err, EINVAL, "'data-file' is required for this image");
    return vimg_open_child(&node->data_file, node, "data-file", child ? NULL : name, NULL,
                           child, (flags & ~VIMG_OPEN_NO_BACKING) | VIMG_OPEN_PROTOCOL, err);
}

static int
qcow2_clear_autoclear(struct vimg_node *node, struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t keep = s->hdr.autoclear_features & (QCOW2_AUTOCLEAR_DATA_FILE_RAW |
                                                 QCOW2_AUTOCLEAR_BITMAPS);
    uint8_t buf[8];

    if (s->hdr.version < 3 || keep == s->hdr.autoclear_features)
        return 0;
    qcow2_put_be64(buf, keep);
    s->hdr.autoclear_features = keep;
    return qcow2_write_header_field(node, QCOW2_OFF_AUTOCLEAR_FEATURES, buf, 8, err);
}

/*
 * A dirty image (lazy refcounts, not closed cleanly) may have wrong
 * refcounts: as QEMU, a read-write open repairs them (rebuilding if need be)
 * and clears the dirty bit, with check's report on the way.
 */
static int
qcow2_repair_dirty(struct vimg_node *node, struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    struct vimg_check_result r = { 0 };
    int ret;

    pthread_mutex_lock(&s->lock);
    ret = qcow2_check_locked(node, VIMG_CHECK_FIX_LEAKS | VIMG_CHECK_FIX_ERRORS, &r, err);
    pthread_mutex_unlock(&s->lock);
    if (ret < 0) {
        vimg_error_prefix(err, "Could not repair dirty image");
        return ret;
    }
    if (s->hdr.incompatible_features & QCOW2_INCOMPAT_DIRTY)
        return vimg_error_set(err, EIO, "Could not repair dirty image: %" PRId64 " errors "
                              "remain", r.corruptions + r.check_errors);
    return 0;
}

static int
qcow2_open(struct vimg_node *node, struct vimg_opts *opts, unsigned flags,
           struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    struct qcow2_runtime_opts r = { 0 };
    int ret;

    pthread_mutex_init(&s->lock, NULL);
    pthread_rwlock_init(&s->io_lock, NULL);
    s->is_check_open = flags & VIMG_OPEN_CHECK;
    if ((ret = qcow2_read_header(node, s, err)) < 0)
        goto fail;
    if (s->is_corrupt && (flags & VIMG_OPEN_RDWR) && !(flags & VIMG_OPEN_CHECK)) {
        ret = vimg_error_set(err, EACCES, "qcow2: Image is corrupt; cannot be opened "
                             "read/write");
        goto fail;
    }
    node->cluster_size = s->cluster_size;
    node->is_dirty = s->is_dirty;
    if ((ret = qcow2_load_l1(node, err)) < 0 ||
        (ret = qcow2_load_refcount_table(node, err)) < 0 ||
        (ret = qcow2_check_ignored_opts(s, opts, err)) < 0 ||
        (ret = qcow2_crypt_open(node, opts, flags, err)) < 0 ||
        (ret = qcow2_parse_cache_opts(opts, &r, err)) < 0 ||
        (ret = qcow2_init_caches(s, &r, err)) < 0 ||
        (ret = qcow2_open_data_file(node, opts, flags, err)) < 0)
        goto fail;
    if (s->is_data_file_raw && node->backing_filename) {
        ret = vimg_error_set(err, EINVAL, "data-file-raw cannot be used with a backing file");
        goto fail;
    }
    if ((flags & VIMG_OPEN_RDWR) && (ret = qcow2_clear_autoclear(node, err)) < 0)
        goto fail;
    if ((flags & VIMG_OPEN_RDWR) && !(flags & (VIMG_OPEN_CHECK | VIMG_OPEN_NO_IO)) &&
        (s->hdr.incompatible_features & QCOW2_INCOMPAT_DIRTY) &&
        (ret = qcow2_repair_dirty(node, err)) < 0)
        goto fail;
    return 0;
fail:
    qcow2_free_state(s);
    pthread_rwlock_destroy(&s->io_lock);
    pthread_mutex_destroy(&s->lock);
    return ret;
}

/* As QEMU, a clean close clears the dirty bit: the metadata on disk is complete. */
static void
qcow2_mark_clean_on_close(struct vimg_node *node)
{
    struct qcow2_state *s = node->state;
    uint8_t buf[8];

    if (vimg_node_flush(node->file, NULL) < 0)
        return;
    qcow2_put_be64(buf, s->hdr.incompatible_features & ~QCOW2_INCOMPAT_DIRTY);
    if (qcow2_write_header_field(node, QCOW2_OFF_INCOMPATIBLE_FEATURES, buf, 8, NULL) == 0)
        vimg_node_flush(node->file, NULL);
}

static void
qcow2_close(struct vimg_node *node)
{
    struct qcow2_state *s = node->state;
    /* Made unusable by a corruption event: nothing more is written, as in QEMU. */
    bool is_writing = !node->is_read_only && !atomic_load(&node->is_unusable);

    if (is_writing)
        qcow2_bitmaps_store(node, NULL);
    qcow2_bitmaps_forget(s);    /* an unusable node stores nothing: its bitmaps stay in use */
    if (is_writing && qcow2_flush_metadata(node, NULL) == 0 &&
        (s->hdr.incompatible_features & QCOW2_INCOMPAT_DIRTY))
        qcow2_mark_clean_on_close(node);
    qcow2_free_state(s);
    pthread_rwlock_destroy(&s->io_lock);
    pthread_mutex_destroy(&s->lock);
}

static int64_t
qcow2_length(struct vimg_node *node, struct vimg_error *err)
{
    struct qcow2_state *s = node->state;

    (void)err;
    return (int64_t)s->hdr.size;
}

/* Only the image file: QEMU leaves the data file out of "disk size". */
static int64_t
qcow2_allocated_size(struct vimg_node *node, struct vimg_error *err)
{
    return vimg_node_allocated_size(node->file, err);
}

static int
qcow2_preadv(struct vimg_node *node, uint64_t offset, uint64_t bytes, const struct iovec *iov,
             int n_iov, unsigned flags, struct vimg_error *err)
{
    (void)flags;
    return qcow2_read(node, offset, bytes, iov, n_iov, err);
}

static int
qcow2_pwritev(struct vimg_node *node, uint64_t offset, uint64_t bytes, const struct iovec *iov,
              int n_iov, unsigned flags, struct vimg_error *err)
{
    int ret = qcow2_bitmaps_mark_dirty(node, offset, bytes, err);

    if (ret == 0)
        ret = qcow2_write(node, offset, bytes, iov, n_iov, err);
    if (ret == 0 && (flags & VIMG_REQ_FUA))
        ret = vimg_node_flush(node, err);
    return ret;
}

static int
qcow2_pwrite_zeroes(struct vimg_node *node, uint64_t offset, uint64_t bytes, unsigned flags,
                    struct vimg_error *err)
{
    int ret = qcow2_bitmaps_mark_dirty(node, offset, bytes, err);

    if (ret == 0)
        ret = qcow2_zero(node, offset, bytes, flags, err);
    if (ret == 0 && (flags & VIMG_REQ_FUA))
        ret = vimg_node_flush(node, err);
    return ret;
}

static int
qcow2_discard(struct vimg_node *node, uint64_t offset, uint64_t bytes, struct vimg_error *err)
{
    int ret = qcow2_bitmaps_mark_dirty(node, offset, bytes, err);

    return ret < 0 ? ret : qcow2_discard_range(node, offset, bytes, err);
}

static int
qcow2_write_compressed(struct vimg_node *node, uint64_t offset, const void *buf,
                       uint64_t bytes, struct vimg_error *err)
{
    int ret = qcow2_bitmaps_mark_dirty(node, offset, bytes, err);

    return ret < 0 ? ret : qcow2_pwrite_compressed(node, offset, buf, bytes, err);
}

static int
qcow2_flush(struct vimg_node *node, struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    int ret;

    if (node->is_read_only)
        return 0;
    pthread_mutex_lock(&s->lock);
    ret = qcow2_flush_metadata(node, err);
    pthread_mutex_unlock(&s->lock);
    return ret;
}

static int
qcow2_block_status(struct vimg_node *node, uint64_t offset, uint64_t bytes,
                   struct vimg_block_status *bs, struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    struct qcow2_mapping m;
    int ret;

    pthread_mutex_lock(&s->lock);
    if (!s->is_prealloc_checked) {
        s->is_metadata_prealloc = qcow2_detect_metadata_prealloc(node);
        s->is_prealloc_checked = true;
    }
    ret = qcow2_get_mapping(node, offset, bytes, &m, err);
    pthread_mutex_unlock(&s->lock);
    if (ret < 0)
        return ret;
    memset(bs, 0, sizeof(*bs));
    bs->bytes = m.bytes;
    switch (m.kind) {
    case QCOW2_UNALLOCATED:
    case QCOW2_ZERO:
        /* As QEMU: a zeroed or unallocated (sub)cluster that keeps its host cluster shows it. */
        if (m.kind == QCOW2_ZERO)
            bs->flags = VIMG_BS_ALLOCATED | VIMG_BS_ZERO;
        if (m.has_host && !s->crypt) {
            bs->flags |= VIMG_BS_OFFSET_VALID;
            bs->offset = m.host_offset;
            bs->file = qcow2_data_node(node);
        }
        break;
    case QCOW2_COMPRESSED:
        bs->flags = VIMG_BS_ALLOCATED | VIMG_BS_DATA | VIMG_BS_COMPRESSED;
        break;
    case QCOW2_NORMAL:
        /* As QEMU, encrypted data has no offset to show: its file's zeros are not the guest's. */
        if (s->crypt) {
            bs->flags = VIMG_BS_ALLOCATED | VIMG_BS_DATA;
            break;
        }
        /* Preallocated metadata can point at holes: let the core ask the file. */
        bs->flags = VIMG_BS_ALLOCATED | VIMG_BS_DATA | VIMG_BS_OFFSET_VALID;
        if (s->is_metadata_prealloc)
            bs->flags |= VIMG_BS_RECURSE;
        bs->offset = m.host_offset;
        bs->file = qcow2_data_node(node);
        break;
    }
    return 0;
}

/* Makes the file (or data file) cover every allocated cluster, preallocating its new part. */
static int
qcow2_extend_storage(struct vimg_node *node, uint64_t old_size, int prealloc,
                     struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    struct vimg_node *data = qcow2_data_node(node);
    uint64_t end = s->has_data_file ? s->hdr.size : s->alloc_end * s->cluster_size;
    int64_t len = vimg_node_length(data, err);
    const char *mode = prealloc == VIMG_PREALLOC_FULL ? "full"
                       : prealloc == VIMG_PREALLOC_FALLOC ? "falloc" : "off";
    int ret;

    (void)old_size;
    if (len < 0)
        return (int)len;
    if ((uint64_t)len >= end)
        return 0;
    /* Growing: not exact, as QEMU asks (an NBD export long enough is fine). */
    ret = vimg_node_truncate(data, end, false, mode, err);
    /* As QEMU's words for falloc and full in the image file (not a data file). */
    if (ret < 0 && !s->has_data_file &&
        (prealloc == VIMG_PREALLOC_FALLOC || prealloc == VIMG_PREALLOC_FULL))
        vimg_error_prefix(err, "Failed to resize underlying file: ");
    return ret;
}

/* Is the cluster at guest offset cl without a host cluster (lock not held)? */
static int
qcow2_is_unallocated(struct vimg_node *node, uint64_t cl, bool *is_unalloc,
                     struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    struct qcow2_mapping m;
    int ret;

    pthread_mutex_lock(&s->lock);
    ret = qcow2_get_mapping(node, cl, 1, &m, err);
    pthread_mutex_unlock(&s->lock);
    *is_unalloc = ret == 0 && m.kind == QCOW2_UNALLOCATED && !(m.l2_entry & QCOW2_OFFSET_MASK);
    return ret;
}

/* Writes len bytes of buf at in of the host cluster of the guest cluster at cl, if it has one. */
static int
qcow2_write_in_host_cluster(struct vimg_node *node, uint64_t cl, uint64_t in, const void *buf,
                            uint64_t len, struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    struct qcow2_mapping m;
    int ret;

    pthread_mutex_lock(&s->lock);
    ret = qcow2_get_mapping(node, cl, 1, &m, err);
    if (ret == 0 && m.kind == QCOW2_NORMAL)
        ret = qcow2_pwrite_file(node->file, m.host_offset + in, buf, len, err);
    pthread_mutex_unlock(&s->lock);
    return ret;
}

/*
 * Growth with preallocation=metadata and no subclusters: QEMU's copy-on-write
 * writes the parts of the clusters it allocates that lie outside the new
 * range, so the file holds them (and its map shows them as data): what the
 * guest read before the old end in the first one, zeros past the new end in
 * the last one. Before the growth, *head gets the guest's data of a first
 * cluster that has no host cluster yet, and *tail whether the last one needs
 * its zeros.
 */
static int
qcow2_prealloc_cow_prepare(struct vimg_node *node, uint64_t old_size, uint64_t size,
                           uint8_t **head, bool *tail, struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t cs = s->cluster_size, head_len = old_size % cs;
    bool is_unalloc;
    int ret;

    *head = NULL;
    *tail = false;
    if (size <= old_size || s->has_data_file || s->has_extended_l2 || s->crypt)
        return 0;
    if (head_len) {
        if ((ret = qcow2_is_unallocated(node, old_size - head_len, &is_unalloc, err)) < 0)
            return ret;
        if (is_unalloc) {
            if (!(*head = malloc(head_len)))
                return vimg_error_set(err, ENOMEM, "Out of memory");
            ret = qcow2_read(node, old_size - head_len, head_len,
                             &(struct iovec){ .iov_base = *head, .iov_len = head_len }, 1,
                             err);
            if (ret < 0) {
                free(*head);
                *head = NULL;
                return ret;
            }
        }
    }
    if (size % cs)
        *tail = (size - 1) / cs * cs >= old_size || *head;
    return 0;
}

static int
qcow2_prealloc_cow_finish(struct vimg_node *node, uint64_t old_size, uint64_t size,
                          const uint8_t *head, bool tail, struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t cs = s->cluster_size;
    uint8_t *zeros;
    int ret;

    if (head && (ret = qcow2_write_in_host_cluster(node, old_size / cs * cs, 0, head,
                                                   old_size % cs, err)) < 0)
        return ret;
    if (!tail)
        return 0;
    if (!(zeros = calloc(1, cs - size % cs)))
        return vimg_error_set(err, ENOMEM, "Out of memory");
    ret = qcow2_write_in_host_cluster(node, (size - 1) / cs * cs, size % cs, zeros,
                                      cs - size % cs, err);
    free(zeros);
    return ret;
}

int
qcow2_truncate(struct vimg_node *node, uint64_t size, bool is_exact, int prealloc,
               struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t old_size = s->hdr.size;
    uint8_t *head = NULL;
    bool tail = false;
    int ret = 0;

    (void)is_exact;
    /* A raw data file stays mapped one to one: QEMU grows it with its metadata. */
    if (s->is_data_file_raw && size > old_size && prealloc == VIMG_PREALLOC_OFF)
        prealloc = VIMG_PREALLOC_METADATA;
    if (prealloc == VIMG_PREALLOC_METADATA)
        ret = qcow2_prealloc_cow_prepare(node, old_size, size, &head, &tail, err);
    if (ret == 0)
        ret = qcow2_resize(node, size, prealloc, err);
    if (ret == 0 && prealloc != VIMG_PREALLOC_OFF && size > old_size)
        ret = qcow2_preallocate_metadata(node, old_size, size - old_size, err);
    if (ret == 0 && (head || tail))
        ret = qcow2_prealloc_cow_finish(node, old_size, size, head, tail, err);
    free(head);
    if (ret == 0 && (prealloc != VIMG_PREALLOC_OFF || s->has_data_file))
        ret = qcow2_extend_storage(node, old_size, prealloc, err);
    return ret;
}

/* One bitmap directory entry as `info` lists it; *used is the entry's size. */
static int
qcow2_decode_bitmap(const uint8_t *p, uint64_t avail, json_t *list, uint64_t *used,
                    struct vimg_error *err)
{
    uint32_t flags, extra;
    uint16_t name_size;
    json_t *bm, *fl;
    char name[1024];

    if (avail < 24)
        return vimg_error_set(err, EINVAL, "Bitmap directory entry is truncated");
    flags = qcow2_be32(p + 12);
    name_size = qcow2_be16(p + 18);
    extra = qcow2_be32(p + 20);
    if (name_size == 0 || name_size >= sizeof(name) || extra > avail - 24 ||
        name_size > avail - 24 - extra)
        return vimg_error_set(err, EINVAL, "Bitmap directory entry is invalid (name size %u, "
                              "extra data size %" PRIu32 ")", name_size, extra);
    memcpy(name, p + 24 + extra, name_size);
    name[name_size] = '\0';
    *used = qcow2_align_up(24 + (uint64_t)extra + name_size, 8);
    bm = json_object();
    fl = json_array();
    if (flags & 1)
        json_array_append_new(fl, json_string("in-use"));
    if (flags & 2)
        json_array_append_new(fl, json_string("auto"));
    json_object_set_new(bm, "flags", fl);
    json_object_set_new(bm, "name", json_string(name));
    json_object_set_new(bm, "granularity", json_integer((json_int_t)1 << (p[17] & 63)));
    json_array_append_new(list, bm);
    return 0;
}

static int
qcow2_info_bitmaps(struct vimg_node *node, json_t *data, struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t size = s->bitmaps_dir_size, at = 0;
    json_t *list;
    uint8_t *dir;
    int ret = 0;

    if (!s->has_bitmaps_ext || !(s->hdr.autoclear_features & QCOW2_AUTOCLEAR_BITMAPS))
        return 0;
    if (size > QCOW2_MAX_BITMAP_DIR_BYTES)
        return vimg_error_set(err, EINVAL, "Bitmap directory size %" PRIu64 " is too large "
                              "(at most %u)", size, QCOW2_MAX_BITMAP_DIR_BYTES);
    if (!(dir = malloc(size ? size : 1)))
        return vimg_error_set(err, ENOMEM, "Out of memory");
    if ((ret = qcow2_read_meta(node->file, s->bitmaps_dir_offset, dir, size, err)) < 0) {
        free(dir);
        return ret;
    }
    list = json_array();
    for (uint32_t i = 0; i < s->nb_bitmaps && ret == 0; i++) {
        uint64_t used;
        ret = qcow2_decode_bitmap(dir + at, size - at, list, &used, err);
        at += used;
        if (ret == 0 && at > size)
            at = size;
    }
    free(dir);
    if (ret < 0) {
        json_decref(list);
        return ret;
    }
    json_object_set_new(data, "bitmaps", list);
    return 0;
}

/* Keys in the order QEMU prints them. */
static int
qcow2_info(struct vimg_node *node, json_t **format_specific, struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    json_t *spec = json_object(), *data = json_object();
    bool is_v3 = s->hdr.version >= 3;
    int ret;

    json_object_set_new(data, "compat", json_string(is_v3 ? "1.1" : "0.10"));
    json_object_set_new(data, "compression-type",
                        json_string(s->compression_type == QCOW2_COMPRESSION_ZSTD ? "zstd"
                                                                                  : "zlib"));
    if (is_v3) {
        json_object_set_new(data, "lazy-refcounts",
                            json_boolean(s->hdr.compatible_features &
                                         QCOW2_COMPAT_LAZY_REFCOUNTS));
        if ((ret = qcow2_info_bitmaps(node, data, err)) < 0) {
            json_decref(spec);
            json_decref(data);
            return ret;
        }
    }
    json_object_set_new(data, "refcount-bits", json_integer(s->refcount_bits));
    if (s->crypt)
        json_object_set_new(data, "encrypt", qcow2_crypt_info(s));
    if (is_v3) {
        if (s->data_file_name)
            json_object_set_new(data, "data-file", json_string(s->data_file_name));
        if (s->has_data_file)
            json_object_set_new(data, "data-file-raw", json_boolean(s->is_data_file_raw));
        json_object_set_new(data, "corrupt", json_boolean(s->is_corrupt));
        json_object_set_new(data, "extended-l2", json_boolean(s->has_extended_l2));
    }
    json_object_set_new(spec, "type", json_string("qcow2"));
    json_object_set_new(spec, "data", data);
    *format_specific = spec;
    return 0;
}

/* The secret decides what an encrypted image reads as: `info` names such nodes json:{...}. */
static const char *const qcow2_strong_opts[] = { "encrypt.key-secret", NULL };

const struct vimg_driver vimg_qcow2_driver = {
    .name = "qcow2",
    .kind = VIMG_DRIVER_FORMAT,
    .state_size = sizeof(struct qcow2_state),
    .strong_opts = qcow2_strong_opts,
    .has_zero_init = true,
    .supports_backing = true,
    .probe = qcow2_probe,
    .open = qcow2_open,
    .close = qcow2_close,
    .create_opts = qcow2_create_opts,
    .create = qcow2_create,
    .preadv = qcow2_preadv,
    .pwritev = qcow2_pwritev,
    .pwrite_zeroes = qcow2_pwrite_zeroes,
    .pwrite_compressed = qcow2_write_compressed,
    .discard = qcow2_discard,
    .flush = qcow2_flush,
    .block_status = qcow2_block_status,
    .length = qcow2_length,
    .allocated_size = qcow2_allocated_size,
    .truncate = qcow2_truncate,
    .info = qcow2_info,
    .check = qcow2_check,
    .change_backing_file = qcow2_change_backing_file,
    .make_empty = qcow2_make_empty,
    .measure = qcow2_measure,
    .snapshot_list = qcow2_snapshot_list,
    .snapshot_create = qcow2_snapshot_create,
    .snapshot_apply = qcow2_snapshot_apply,
    .snapshot_delete = qcow2_snapshot_delete,
    .snapshot_load_tmp = qcow2_snapshot_load_tmp,
    .bitmap = qcow2_bitmap,
    .bitmap_list = qcow2_bitmap_list,
    .bitmap_read = qcow2_bitmap_read,
    .rw_vmstate = qcow2_rw_vmstate,
    .amend = qcow2_amend,
};
