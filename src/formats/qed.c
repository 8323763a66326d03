/*
 * The qed format, read-write with create and check, as in
 * docs/interop/qed_spec.rst of qemu/qemu (SPECS.md, "QED"): header, L1 and
 * L2 tables of LE64 cluster offsets (1 = a zero cluster), backing file name
 * in the header cluster, and the need-check feature bit, which is set while
 * allocating writes may leave tables inconsistent and cleared at close.
 *
 * Table entries are read and written one at a time through a small cache
 * of 4 KiB table chunks (table-cache.h; check reads tables in bounded
 * chunks), so that no table size from disk (up to 1 GiB) sizes an
 * allocation; reads of clusters stored one after another go to the file as
 * one request.
 *
 * Zero writes of whole clusters set unallocated entries to 1 and overwrite
 * allocated clusters with zeros, as qemu-img does; unaligned ends are
 * written as data. An image opened read-write with need-check set (not
 * closed cleanly) is checked and repaired first, as QEMU does.
 *
 * Left out: discard, which qemu-img accepts and ignores for qed (the core
 * does the same for a driver without it).
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/driver.h"
#include "formats/table-cache.h"

#define QED_MAGIC               UINT32_C(0x00444551)    /* "QED\0" */
#define QED_HEADER_BYTES        64
#define QED_SECTOR_SIZE         512
#define QED_MIN_CLUSTER_SIZE    UINT32_C(4096)
#define QED_MAX_CLUSTER_SIZE    UINT32_C(67108864)
#define QED_DEFAULT_CLUSTER     UINT32_C(65536)
#define QED_MAX_TABLE_SIZE      16
#define QED_DEFAULT_TABLE_SIZE  4
#define QED_ZERO_CLUSTER        UINT64_C(1)
#define QED_CHUNK_ENTRIES       8192    /* table entries check reads at a time */

#define QED_F_BACKING_FILE      UINT64_C(0x01)
#define QED_F_NEED_CHECK        UINT64_C(0x02)
#define QED_F_BACKING_NO_PROBE  UINT64_C(0x04)
#define QED_FEATURE_MASK        (QED_F_BACKING_FILE | QED_F_NEED_CHECK | QED_F_BACKING_NO_PROBE)

/* Header field offsets (spec "Header"). */
#define QED_OFF_MAGIC           0       /* LE32 */
#define QED_OFF_CLUSTER_SIZE    4       /* LE32 */
#define QED_OFF_TABLE_SIZE      8       /* LE32, in clusters */
#define QED_OFF_HEADER_SIZE     12      /* LE32, in clusters */
#define QED_OFF_FEATURES        16      /* LE64 */
#define QED_OFF_COMPAT          24      /* LE64 */
#define QED_OFF_AUTOCLEAR       32      /* LE64 */
#define QED_OFF_L1_OFFSET       40      /* LE64 */
#define QED_OFF_IMAGE_SIZE      48      /* LE64 */
#define QED_OFF_BACKING_OFFSET  56      /* LE32 */
#define QED_OFF_BACKING_SIZE    60      /* LE32 */

struct qed_header {
    uint32_t magic;
    uint32_t cluster_size;
    uint32_t table_size;
    uint32_t header_size;
    uint64_t features;
    uint64_t autoclear_features;
    uint64_t l1_table_offset;
    uint64_t image_size;
    uint32_t backing_filename_offset;
    uint32_t backing_filename_size;
};

struct qed_state {
    struct qed_header h;
    uint64_t table_entries;     /* entries per table */
    uint64_t file_end;          /* where the next cluster goes */
    bool is_need_check_set;     /* by this open: cleared at close */
    struct vimg_table_cache tables;     /* L1 and L2 entries */
    pthread_mutex_t lock;       /* protects tables, the table cache, file_end and the header */
};

static uint32_t
qed_le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t
qed_le64(const uint8_t *p)
{
    return (uint64_t)qed_le32(p) | (uint64_t)qed_le32(p + 4) << 32;
}

static void
qed_put_le32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void
qed_put_le64(uint8_t *p, uint64_t v)
{
    qed_put_le32(p, (uint32_t)v);
    qed_put_le32(p + 4, (uint32_t)(v >> 32));
}

static void
qed_decode_header(const uint8_t *b, struct qed_header *h)
{
    h->magic = qed_le32(b + QED_OFF_MAGIC);
    h->cluster_size = qed_le32(b + QED_OFF_CLUSTER_SIZE);
    h->table_size = qed_le32(b + QED_OFF_TABLE_SIZE);
    h->header_size = qed_le32(b + QED_OFF_HEADER_SIZE);
    h->features = qed_le64(b + QED_OFF_FEATURES);
    h->autoclear_features = qed_le64(b + QED_OFF_AUTOCLEAR);
    h->l1_table_offset = qed_le64(b + QED_OFF_L1_OFFSET);
    h->image_size = qed_le64(b + QED_OFF_IMAGE_SIZE);
    h->backing_filename_offset = qed_le32(b + QED_OFF_BACKING_OFFSET);
    h->backing_filename_size = qed_le32(b + QED_OFF_BACKING_SIZE);
}

static void
qed_encode_header(const struct qed_header *h, uint8_t *b)
{
    memset(b, 0, QED_HEADER_BYTES);
    qed_put_le32(b + QED_OFF_MAGIC, h->magic);
    qed_put_le32(b + QED_OFF_CLUSTER_SIZE, h->cluster_size);
    qed_put_le32(b + QED_OFF_TABLE_SIZE, h->table_size);
    qed_put_le32(b + QED_OFF_HEADER_SIZE, h->header_size);
    qed_put_le64(b + QED_OFF_FEATURES, h->features);
    qed_put_le64(b + QED_OFF_AUTOCLEAR, h->autoclear_features);
    qed_put_le64(b + QED_OFF_L1_OFFSET, h->l1_table_offset);
    qed_put_le64(b + QED_OFF_IMAGE_SIZE, h->image_size);
    qed_put_le32(b + QED_OFF_BACKING_OFFSET, h->backing_filename_offset);
    qed_put_le32(b + QED_OFF_BACKING_SIZE, h->backing_filename_size);
}

static bool
qed_is_pow2(uint64_t v)
{
    return v && !(v & (v - 1));
}

static int
qed_probe(const uint8_t *buf, size_t len, const char *filename)
{
    (void)filename;
    if (len < QED_HEADER_BYTES)
        return 0;
    return qed_le32(buf + QED_OFF_MAGIC) == QED_MAGIC ? 100 : 0;
}

/* The largest image the tables can map. */
static uint64_t
qed_max_image_size(uint32_t cluster_size, uint32_t table_size)
{
    uint64_t entries = (uint64_t)table_size * cluster_size / 8;

    return entries * entries * cluster_size;
}

/* A cluster offset qemu-img accepts: aligned, past the header, inside the file. */
static bool
qed_is_valid_offset(const struct qed_state *s, uint64_t offset)
{
    return offset % s->h.cluster_size == 0 &&
           offset >= (uint64_t)s->h.header_size * s->h.cluster_size && offset < s->file_end;
}

/*
 * As qemu-img: the table's first and last clusters must be valid and the
 * last must lie past the first, so qemu-img accepts no table of one cluster.
 */
static bool
qed_is_valid_table(const struct qed_state *s, uint64_t offset)
{
    uint64_t last = offset + ((uint64_t)s->h.table_size - 1) * s->h.cluster_size;

    return last > offset && qed_is_valid_offset(s, offset) && qed_is_valid_offset(s, last);
}

/* The checks and their order are qemu-img's, so that the messages match. */
static int
qed_check_header(const struct qed_state *s, struct vimg_error *err)
{
    const struct qed_header *h = &s->h;

    if (h->magic != QED_MAGIC)
        return vimg_error_set(err, EINVAL, "Image not in QED format");
    if (!qed_is_pow2(h->cluster_size) || h->cluster_size < QED_MIN_CLUSTER_SIZE ||
        h->cluster_size > QED_MAX_CLUSTER_SIZE)
        return vimg_error_set(err, EINVAL, "QED cluster size is invalid");
    if (!qed_is_pow2(h->table_size) || h->table_size > QED_MAX_TABLE_SIZE)
        return vimg_error_set(err, EINVAL, "QED table size is invalid");
    if (h->features & ~QED_FEATURE_MASK)
        return vimg_error_set(err, ENOTSUP, "Unsupported QED features: %" PRIx64,
                              h->features & ~QED_FEATURE_MASK);
    if (!qed_is_valid_table(s, h->l1_table_offset))
        return vimg_error_set(err, EINVAL, "QED table offset is invalid");
    if (h->image_size % QED_SECTOR_SIZE ||
        h->image_size > qed_max_image_size(h->cluster_size, h->table_size))
        return vimg_error_set(err, EINVAL, "QED image size is invalid");
    return 0;
}

static int
qed_read_backing_name(struct vimg_node *node, struct vimg_error *err)
{
    struct qed_state *s = node->state;
    uint64_t end = (uint64_t)s->h.backing_filename_offset + s->h.backing_filename_size;
    char *name;
    int ret;

    if (!(s->h.features & QED_F_BACKING_FILE))
        return 0;
    if (end > (uint64_t)s->h.header_size * s->h.cluster_size)
        return vimg_error_set(err, EINVAL, "QED backing filename offset is invalid");
    if (!(name = calloc(1, (size_t)s->h.backing_filename_size + 1)))
        return vimg_error_set(err, ENOMEM, "Out of memory");
    ret = vimg_node_pread_padded(node->file, s->h.backing_filename_offset, name,
                                 s->h.backing_filename_size, err);
    if (ret < 0) {
        free(name);
        return ret;
    }
    node->backing_filename = name;
    if (s->h.features & QED_F_BACKING_NO_PROBE && !(node->backing_format = strdup("raw")))
        return vimg_error_set(err, ENOMEM, "Out of memory");
    return 0;
}

static int
qed_write_header(struct vimg_node *node, struct vimg_error *err)
{
    struct qed_state *s = node->state;
    uint8_t b[QED_HEADER_BYTES];
    int ret;

    /* Bytes past the 64 of the header (backing file name) are kept. */
    qed_encode_header(&s->h, b);
    if ((ret = vimg_node_pwrite(node->file, 0, b, QED_OFF_BACKING_OFFSET, 0, err)) < 0)
        return ret;
    return vimg_node_flush(node->file, err);
}

static void
qed_close(struct vimg_node *node)
{
    struct qed_state *s = node->state;
    struct vimg_error err;

    if (s->is_need_check_set && vimg_node_flush(node->file, &err) == 0) {
        s->h.features &= ~QED_F_NEED_CHECK;
        (void)qed_write_header(node, &err);
    }
    vimg_table_cache_free(&s->tables);
    pthread_mutex_destroy(&s->lock);
}

static int qed_check_image(struct vimg_node *node, bool fix, struct vimg_check_result *result,
                           struct vimg_error *err);

/* QEMU's repair at open of an image that was not closed cleanly. */
static int
qed_repair_at_open(struct vimg_node *node, struct vimg_error *err)
{
    struct vimg_check_result result = { 0 };

    return qed_check_image(node, true, &result, err);
}

static int
qed_open(struct vimg_node *node, struct vimg_opts *opts, unsigned flags,
         struct vimg_error *err)
{
    struct qed_state *s = node->state;
    uint8_t b[QED_HEADER_BYTES];
    int64_t file_len;
    int ret;

    (void)opts;
    if ((ret = vimg_node_pread_padded(node->file, 0, b, sizeof(b), err)) < 0)
        return ret;
    if ((file_len = vimg_node_length(node->file, err)) < 0)
        return (int)file_len;
    qed_decode_header(b, &s->h);
    s->table_entries = (uint64_t)s->h.table_size * s->h.cluster_size / 8;
    if (s->h.cluster_size)
        s->file_end = ((uint64_t)file_len + s->h.cluster_size - 1) / s->h.cluster_size *
                      s->h.cluster_size;
    if ((ret = qed_check_header(s, err)) < 0 || (ret = qed_read_backing_name(node, err)) < 0 ||
        (ret = vimg_table_cache_init(&s->tables, node->file, err)) < 0)
        return ret;
    pthread_mutex_init(&s->lock, NULL);
    if ((flags & VIMG_OPEN_RDWR) && s->h.autoclear_features) {
        s->h.autoclear_features = 0;
        if ((ret = qed_write_header(node, err)) < 0)
            goto fail;
    }
    if ((flags & VIMG_OPEN_RDWR) && !(flags & (VIMG_OPEN_CHECK | VIMG_OPEN_NO_IO)) &&
        (s->h.features & QED_F_NEED_CHECK) && (ret = qed_repair_at_open(node, err)) < 0)
        goto fail;
    node->request_alignment = 1;
    node->cluster_size = s->h.cluster_size;
    return 0;
fail:
    vimg_table_cache_free(&s->tables);
    pthread_mutex_destroy(&s->lock);
    return ret;
}

static int64_t
qed_length(struct vimg_node *node, struct vimg_error *err)
{
    struct qed_state *s = node->state;

    (void)err;
    return (int64_t)((s->h.image_size + QED_SECTOR_SIZE - 1) / QED_SECTOR_SIZE *
                     QED_SECTOR_SIZE);
}

/* Growing only, without preallocation: QEMU's checks, in its order and words. */
static int
qed_truncate(struct vimg_node *node, uint64_t size, bool is_exact, int prealloc,
             struct vimg_error *err)
{
    struct qed_state *s = node->state;
    uint64_t old;
    int ret;

    (void)is_exact;
    if (prealloc != VIMG_PREALLOC_OFF)
        return vimg_error_set(err, ENOTSUP, "Unsupported preallocation mode '%s'",
                              vimg_prealloc_name(prealloc));
    if (size % QED_SECTOR_SIZE || size > qed_max_image_size(s->h.cluster_size, s->h.table_size))
        return vimg_error_set(err, EINVAL, "Invalid image size specified");
    pthread_mutex_lock(&s->lock);
    if (size < s->h.image_size) {
        pthread_mutex_unlock(&s->lock);
        return vimg_error_set(err, ENOTSUP, "Shrinking images is currently not supported");
    }
    old = s->h.image_size;
    s->h.image_size = size;
    if ((ret = qed_write_header(node, err)) < 0) {
        s->h.image_size = old;
        vimg_error_prefix(err, "Failed to update the image size: ");
    }
    pthread_mutex_unlock(&s->lock);
    return ret;
}

static int
qed_read_entry(struct vimg_node *node, uint64_t table, uint64_t index, uint64_t *out,
               struct vimg_error *err)
{
    struct qed_state *s = node->state;
    uint8_t raw[8];
    int ret;

    if ((ret = vimg_table_cache_read(&s->tables, table, s->table_entries * 8, index, raw,
                                     err)) < 0)
        return ret;
    *out = qed_le64(raw);
    return 0;
}

static int
qed_write_entry(struct vimg_node *node, uint64_t table, uint64_t index, uint64_t value,
                struct vimg_error *err)
{
    struct qed_state *s = node->state;
    uint8_t raw[8];

    qed_put_le64(raw, value);
    return vimg_table_cache_write(&s->tables, table, index, raw, err);
}

/* Writes to the file outside the tables' entries: cached chunks there are stale. */
static int
qed_pwrite_file(struct vimg_node *node, uint64_t offset, const void *buf, uint64_t bytes,
                struct vimg_error *err)
{
    struct qed_state *s = node->state;

    vimg_table_cache_drop(&s->tables, offset, bytes);
    return vimg_node_pwrite(node->file, offset, buf, bytes, 0, err);
}

/* The L2 table for cluster index (0: none) and the cluster's entry (0: none). */
static int
qed_lookup(struct vimg_node *node, uint64_t cluster, uint64_t *l2, uint64_t *entry,
           struct vimg_error *err)
{
    struct qed_state *s = node->state;
    int ret;

    *entry = 0;
    if ((ret = qed_read_entry(node, s->h.l1_table_offset, cluster / s->table_entries, l2,
                              err)) < 0 || *l2 == 0)
        return ret;
    if (!qed_is_valid_table(s, *l2))
        return vimg_error_set(err, EINVAL, "QED L2 table offset 0x%" PRIx64 " is invalid",
                              *l2);
    if ((ret = qed_read_entry(node, *l2, cluster % s->table_entries, entry, err)) < 0)
        return ret;
    if (*entry > QED_ZERO_CLUSTER && !qed_is_valid_offset(s, *entry))
        return vimg_error_set(err, EINVAL, "QED cluster offset 0x%" PRIx64 " is invalid",
                              *entry);
    return 0;
}

/*
 * Extends *len (the part of the request in the cluster at offset, stored at
 * entry) over the following clusters stored right after it, up to bytes,
 * so that they are read at once. Called with s->lock held.
 */
static int
qed_extend_run(struct vimg_node *node, uint64_t offset, uint64_t bytes, uint64_t entry,
               uint64_t *len, struct vimg_error *err)
{
    struct qed_state *s = node->state;
    uint64_t cs = s->h.cluster_size, l2, next;
    int ret;

    while (*len < bytes) {
        uint64_t pos = offset + *len;

        if ((ret = qed_lookup(node, pos / cs, &l2, &next, err)) < 0)
            return ret;
        if (next != entry + (pos / cs - offset / cs) * cs)
            break;
        *len += bytes - *len < cs ? bytes - *len : cs;
    }
    return 0;
}

static int
qed_read(struct vimg_node *node, uint64_t offset, uint8_t *out, uint64_t bytes,
         struct vimg_error *err)
{
    struct qed_state *s = node->state;

    while (bytes) {
        uint64_t in_cluster = offset % s->h.cluster_size, l2, entry;
        uint64_t len = s->h.cluster_size - in_cluster < bytes ? s->h.cluster_size - in_cluster
                                                              : bytes;
        int ret;

        pthread_mutex_lock(&s->lock);
        ret = qed_lookup(node, offset / s->h.cluster_size, &l2, &entry, err);
        if (ret == 0 && entry > QED_ZERO_CLUSTER)
            ret = qed_extend_run(node, offset, bytes, entry, &len, err);
        pthread_mutex_unlock(&s->lock);
        if (ret < 0)
            return ret;
        if (entry <= QED_ZERO_CLUSTER)
            memset(out, 0, len);
        else if ((ret = vimg_node_pread_padded(node->file, entry + in_cluster, out, len,
                                               err)) < 0)
            return ret;
        offset += len;
        out += len;
        bytes -= len;
    }
    return 0;
}

static int
qed_set_need_check(struct vimg_node *node, struct vimg_error *err)
{
    struct qed_state *s = node->state;

    if (s->h.features & QED_F_NEED_CHECK)
        return 0;
    s->h.features |= QED_F_NEED_CHECK;
    s->is_need_check_set = true;
    return qed_write_header(node, err);
}

/*
 * Fills a new cluster: what the backing file (or a zero cluster) holds,
 * with data at in_cluster on top, and writes it at the end of the file.
 */
static int
qed_alloc_cluster(struct vimg_node *node, uint64_t cluster, uint64_t entry, uint64_t in_cluster,
                  const uint8_t *data, uint64_t len, uint64_t *host, struct vimg_error *err)
{
    struct qed_state *s = node->state;
    uint64_t cs = s->h.cluster_size;
    uint8_t *buf;
    int ret = 0;

    if (!(buf = calloc(1, cs)))
        return vimg_error_set(err, ENOMEM, "Out of memory");
    if (len < cs && entry != QED_ZERO_CLUSTER && node->backing)
        ret = vimg_node_pread_padded(node->backing, cluster * cs, buf, cs, err);
    memcpy(buf + in_cluster, data, len);
    *host = s->file_end;
    if (ret == 0)
        ret = qed_pwrite_file(node, *host, buf, cs, err);
    free(buf);
    if (ret == 0)
        s->file_end += cs;
    return ret;
}

/* A new L2 table at the end of the file holding value where is_set, then its L1 entry. */
static int
qed_new_l2(struct vimg_node *node, uint64_t first, uint64_t n, const bool *is_set,
           const uint64_t *values, struct vimg_error *err)
{
    struct qed_state *s = node->state;
    uint64_t table_bytes = s->table_entries * 8, l2 = s->file_end;
    uint8_t *table = calloc(1, table_bytes);
    int ret;

    if (!table)
        return vimg_error_set(err, ENOMEM, "Out of memory");
    for (uint64_t i = 0; i < n; i++)
        if (is_set[i])
            qed_put_le64(table + ((first + i) % s->table_entries) * 8, values[i]);
    ret = qed_pwrite_file(node, l2, table, table_bytes, err);
    free(table);
    if (ret < 0)
        return ret;
    s->file_end += table_bytes;
    if ((ret = vimg_node_flush(node->file, err)) < 0)
        return ret;
    return qed_write_entry(node, s->h.l1_table_offset, first / s->table_entries, l2, err);
}

/*
 * Writes [offset, +bytes) inside one L2 table's range. New data clusters go
 * first, then a new L2 table if needed, then the L2 entries and the L1
 * entry, each level flushed before the one that points to it: a crash leaks
 * clusters at worst.
 */
static int
qed_write_l2_range(struct vimg_node *node, uint64_t offset, const uint8_t *data,
                   uint64_t bytes, struct vimg_error *err)
{
    struct qed_state *s = node->state;
    uint64_t cs = s->h.cluster_size, first = offset / cs, last = (offset + bytes - 1) / cs;
    uint64_t n = last - first + 1, l2 = 0, *hosts;
    bool *is_new;
    int ret = 0;

    hosts = calloc(n, sizeof(*hosts));
    is_new = calloc(n, sizeof(*is_new));
    if (!hosts || !is_new) {
        ret = vimg_error_set(err, ENOMEM, "Out of memory");
        goto out;
    }
    for (uint64_t i = 0; i < n && ret == 0; i++) {
        uint64_t pos = i == 0 ? offset : (first + i) * cs, in_cluster = pos % cs;
        uint64_t len = cs - in_cluster < offset + bytes - pos ? cs - in_cluster
                                                              : offset + bytes - pos;
        const uint8_t *p = data + (pos - offset);
        uint64_t entry;

        if ((ret = qed_lookup(node, first + i, &l2, &entry, err)) < 0)
            break;
        if (entry > QED_ZERO_CLUSTER) {
            ret = qed_pwrite_file(node, entry + in_cluster, p, len, err);
            continue;
        }
        if ((ret = qed_set_need_check(node, err)) == 0)
            ret = qed_alloc_cluster(node, first + i, entry, in_cluster, p, len, &hosts[i], err);
        is_new[i] = ret == 0;
    }
    if (ret < 0)
        goto out;
    for (uint64_t i = 0; i < n; i++)
        if (is_new[i])
            break;
        else if (i == n - 1)
            goto out;
    if ((ret = vimg_node_flush(node->file, err)) < 0)
        goto out;
    if (l2 == 0) {
        ret = qed_new_l2(node, first, n, is_new, hosts, err);
        goto out;
    }
    for (uint64_t i = 0; i < n && ret == 0; i++)
        if (is_new[i])
            ret = qed_write_entry(node, l2, (first + i) % s->table_entries, hosts[i], err);
out:
    free(hosts);
    free(is_new);
    return ret;
}

static int
qed_pwritev(struct vimg_node *node, uint64_t offset, uint64_t bytes, const struct iovec *iov,
            int n_iov, unsigned flags, struct vimg_error *err);

/* Part of one cluster written with zero bytes, as data. */
static int
qed_write_zero_data(struct vimg_node *node, uint64_t offset, uint64_t bytes,
                    struct vimg_error *err)
{
    struct iovec iov;
    int ret;

    if (!(iov.iov_base = calloc(1, bytes)))
        return vimg_error_set(err, ENOMEM, "Out of memory");
    iov.iov_len = bytes;
    ret = qed_pwritev(node, offset, bytes, &iov, 1, 0, err);
    free(iov.iov_base);
    return ret;
}

static int
qed_pwritev(struct vimg_node *node, uint64_t offset, uint64_t bytes, const struct iovec *iov,
            int n_iov, unsigned flags, struct vimg_error *err)
{
    struct qed_state *s = node->state;
    uint64_t span = (uint64_t)s->h.cluster_size * s->table_entries, copied = 0;
    uint8_t *buf;
    int ret = 0;

    (void)flags;
    if (!(buf = malloc(bytes ? bytes : 1)))
        return vimg_error_set(err, ENOMEM, "Out of memory");
    for (int i = 0; i < n_iov && copied < bytes; i++) {
        uint64_t k = iov[i].iov_len < bytes - copied ? iov[i].iov_len : bytes - copied;
        memcpy(buf + copied, iov[i].iov_base, k);
        copied += k;
    }
    pthread_mutex_lock(&s->lock);
    for (uint64_t done = 0; done < bytes && ret == 0;) {
        uint64_t pos = offset + done, len = span - pos % span;

        if (len > bytes - done)
            len = bytes - done;
        ret = qed_write_l2_range(node, pos, buf + done, len, err);
        done += len;
    }
    pthread_mutex_unlock(&s->lock);
    free(buf);
    return ret;
}

/*
 * Zeroes whole clusters inside one L2 table's range, as qemu-img: clusters
 * with data are overwritten with zeros, unallocated ones become zero
 * clusters (entry 1), zero clusters stay.
 */
static int
qed_zero_l2_range(struct vimg_node *node, uint64_t offset, uint64_t bytes,
                  struct vimg_error *err)
{
    struct qed_state *s = node->state;
    uint64_t cs = s->h.cluster_size, first = offset / cs, n = bytes / cs, l2 = 0, *ones;
    bool *is_set, has_set = false;
    uint8_t *zeros;
    int ret = 0;

    is_set = calloc(n, sizeof(*is_set));
    ones = malloc(n * sizeof(*ones));
    zeros = calloc(1, cs);
    if (!is_set || !ones || !zeros) {
        ret = vimg_error_set(err, ENOMEM, "Out of memory");
        goto out;
    }
    for (uint64_t i = 0; i < n && ret == 0; i++) {
        uint64_t entry;

        ones[i] = QED_ZERO_CLUSTER;
        if ((ret = qed_lookup(node, first + i, &l2, &entry, err)) < 0)
            break;
        if (entry > QED_ZERO_CLUSTER)
            ret = qed_pwrite_file(node, entry, zeros, cs, err);
        else if (entry == 0)
            has_set = is_set[i] = true;
    }
    if (ret < 0 || !has_set || (ret = qed_set_need_check(node, err)) < 0)
        goto out;
    if (l2 == 0) {
        ret = qed_new_l2(node, first, n, is_set, ones, err);
        goto out;
    }
    for (uint64_t i = 0; i < n && ret == 0; i++)
        if (is_set[i])
            ret = qed_write_entry(node, l2, (first + i) % s->table_entries, QED_ZERO_CLUSTER, err);
out:
    free(is_set);
    free(ones);
    free(zeros);
    return ret;
}

/* Unaligned ends are written as zero data, the whole clusters between as zero clusters. */
static int
qed_pwrite_zeroes(struct vimg_node *node, uint64_t offset, uint64_t bytes, unsigned flags,
                  struct vimg_error *err)
{
    struct qed_state *s = node->state;
    uint64_t cs = s->h.cluster_size, span = cs * s->table_entries;
    uint64_t head = offset % cs ? cs - offset % cs : 0, mid, tail;
    int ret = 0;

    (void)flags;
    if (head >= bytes)
        return qed_write_zero_data(node, offset, bytes, err);
    mid = (bytes - head) / cs * cs;
    tail = bytes - head - mid;
    if (head && (ret = qed_write_zero_data(node, offset, head, err)) < 0)
        return ret;
    pthread_mutex_lock(&s->lock);
    for (uint64_t pos = offset + head; pos < offset + head + mid && ret == 0;) {
        uint64_t len = span - pos % span;

        if (len > offset + head + mid - pos)
            len = offset + head + mid - pos;
        ret = qed_zero_l2_range(node, pos, len, err);
        pos += len;
    }
    pthread_mutex_unlock(&s->lock);
    if (ret == 0 && tail)
        ret = qed_write_zero_data(node, offset + head + mid, tail, err);
    return ret;
}

static int
qed_flush(struct vimg_node *node, struct vimg_error *err)
{
    return vimg_node_flush(node->file, err);
}

/* A run of clusters of one kind: data contiguous in the file, zero, or unallocated. */
static int
qed_block_status(struct vimg_node *node, uint64_t offset, uint64_t bytes,
                 struct vimg_block_status *bs, struct vimg_error *err)
{
    struct qed_state *s = node->state;
    uint64_t cs = s->h.cluster_size, run = cs - offset % cs, l2, entry = 0, next, expect;
    int ret;

    pthread_mutex_lock(&s->lock);
    ret = qed_lookup(node, offset / cs, &l2, &entry, err);
    expect = entry + cs;
    while (ret == 0 && run < bytes) {
        if ((ret = qed_lookup(node, (offset + run) / cs, &l2, &next, err)) < 0)
            break;
        if (entry > QED_ZERO_CLUSTER ? next != expect : next != entry)
            break;
        run += cs;
        expect += cs;
    }
    pthread_mutex_unlock(&s->lock);
    if (ret < 0)
        return ret;
    bs->bytes = run < bytes ? run : bytes;
    bs->flags = 0;
    if (entry == QED_ZERO_CLUSTER) {
        bs->flags = VIMG_BS_ZERO | VIMG_BS_ALLOCATED;
    } else if (entry) {
        bs->flags = VIMG_BS_DATA | VIMG_BS_ALLOCATED | VIMG_BS_OFFSET_VALID;
        bs->offset = entry + offset % cs;
        bs->file = node->file;
    }
    return 0;
}

/* What one check run carries from table to table. */
struct qed_check_run {
    struct vimg_check_result *result;
    bool fix;
    uint64_t n_clusters;        /* the file's length in clusters */
    uint8_t *used;              /* one bit per cluster of the file */
    uint64_t *chunk;            /* QED_CHUNK_ENTRIES entries */
};

/* Marks n clusters from offset used; each one already used is a corruption. */
static bool
qed_mark_used(struct qed_check_run *r, const struct qed_state *s, uint64_t offset, uint64_t n)
{
    uint64_t cluster = offset / s->h.cluster_size, dup = 0;

    for (; n--; cluster++) {
        if (cluster >= r->n_clusters)
            continue;
        if (r->used[cluster / 8] & (1u << (cluster % 8)))
            dup++;
        r->used[cluster / 8] |= (uint8_t)(1u << (cluster % 8));
    }
    r->result->corruptions += (int64_t)dup;
    return dup == 0;
}

static int
qed_read_chunk(struct vimg_node *node, uint64_t table, uint64_t first, uint64_t n,
               uint64_t *out, struct vimg_error *err)
{
    uint8_t *raw = (uint8_t *)out;
    int ret;

    if ((ret = vimg_node_pread_padded(node->file, table + first * 8, raw, n * 8, err)) < 0)
        return ret;
    for (uint64_t i = 0; i < n; i++)
        out[i] = qed_le64(raw + i * 8);
    return 0;
}

/*
 * One L2 table, as qemu-img counts it: every entry past 1 is allocated (and
 * may be fragmented) even when its offset is invalid; invalid ones are
 * corruptions, or with fix are cleared.
 */
static int
qed_check_l2(struct vimg_node *node, struct qed_check_run *r, uint64_t l2,
             struct vimg_error *err)
{
    struct qed_state *s = node->state;
    uint64_t last = 0;
    int ret;

    for (uint64_t base = 0; base < s->table_entries; base += QED_CHUNK_ENTRIES) {
        uint64_t n = s->table_entries - base < QED_CHUNK_ENTRIES ? s->table_entries - base
                                                                : QED_CHUNK_ENTRIES;

        if ((ret = qed_read_chunk(node, l2, base, n, r->chunk, err)) < 0)
            return ret;
        for (uint64_t i = 0; i < n; i++) {
            uint64_t entry = r->chunk[i];

            if (entry <= QED_ZERO_CLUSTER)
                continue;
            r->result->allocated_clusters++;
            if (last && last + s->h.cluster_size != entry)
                r->result->fragmented_clusters++;
            last = entry;
            if (qed_is_valid_offset(s, entry)) {
                qed_mark_used(r, s, entry, 1);
            } else if (!r->fix) {
                r->result->corruptions++;
            } else if ((ret = qed_write_entry(node, l2, base + i, 0, err)) < 0) {
                return ret;
            } else {
                r->result->corruptions_fixed++;
            }
        }
    }
    return 0;
}

static int
qed_check_l1(struct vimg_node *node, struct qed_check_run *r, struct vimg_error *err)
{
    struct qed_state *s = node->state;
    uint64_t l1 = s->h.l1_table_offset;
    uint64_t l2s[64];
    int ret;

    qed_mark_used(r, s, l1, s->h.table_size);
    for (uint64_t base = 0; base < s->table_entries; base += 64) {
        uint64_t n = s->table_entries - base < 64 ? s->table_entries - base : 64;

        if ((ret = qed_read_chunk(node, l1, base, n, l2s, err)) < 0)
            return ret;
        for (uint64_t i = 0; i < n; i++) {
            if (l2s[i] == 0)
                continue;
            if (!qed_is_valid_table(s, l2s[i])) {
                if (!r->fix) {
                    r->result->corruptions++;
                    continue;
                }
                if ((ret = qed_write_entry(node, l1, base + i, 0, err)) < 0)
                    return ret;
                r->result->corruptions_fixed++;
                continue;
            }
            if (!qed_mark_used(r, s, l2s[i], s->h.table_size))
                continue;
            if ((ret = qed_check_l2(node, r, l2s[i], err)) < 0)
                r->result->check_errors++;
        }
    }
    return 0;
}

/*
 * qemu-img's check: tables and clusters that point outside the file or into
 * the header are corruptions, clusters used twice too, and clusters of the
 * file that nothing uses are leaks (never repaired). With fix, bad entries
 * are cleared and a clean result clears need-check.
 */
static int
qed_check_image(struct vimg_node *node, bool fix, struct vimg_check_result *result,
                struct vimg_error *err)
{
    struct qed_state *s = node->state;
    struct qed_check_run r = { .result = result, .fix = fix };
    int ret;

    r.n_clusters = s->file_end / s->h.cluster_size;
    r.used = calloc(r.n_clusters / 8 + 1, 1);
    r.chunk = malloc(QED_CHUNK_ENTRIES * sizeof(*r.chunk));
    if (!r.used || !r.chunk) {
        ret = vimg_error_set(err, ENOMEM, "Out of memory");
        goto out;
    }
    result->total_clusters = (int64_t)((s->h.image_size + s->h.cluster_size - 1) /
                                       s->h.cluster_size);
    pthread_mutex_lock(&s->lock);
    ret = qed_check_l1(node, &r, err);
    for (uint64_t i = s->h.header_size; ret == 0 && i < r.n_clusters; i++)
        if (!(r.used[i / 8] & (1u << (i % 8))))
            result->leaks++;
    if (ret == 0 && fix && !result->corruptions && !result->check_errors &&
        (s->h.features & QED_F_NEED_CHECK) && (ret = vimg_node_flush(node->file, err)) == 0) {
        s->h.features &= ~QED_F_NEED_CHECK;
        s->is_need_check_set = false;
        ret = qed_write_header(node, err);
    }
    pthread_mutex_unlock(&s->lock);
out:
    free(r.used);
    free(r.chunk);
    return ret;
}

static int
qed_check(struct vimg_node *node, int fix, struct vimg_check_result *result,
          struct vimg_error *err)
{
    return qed_check_image(node, fix != 0, result, err);
}

/* Creation */

static const struct vimg_opt_desc qed_create_opts[] = {
    { "size", VIMG_OPT_SIZE, "Virtual disk size", NULL },
    { "backing_file", VIMG_OPT_STRING, "File name of a base image", NULL },
    { "backing_fmt", VIMG_OPT_STRING, "Image format of the base image", NULL },
    { "cluster_size", VIMG_OPT_SIZE, "Cluster size (in bytes)", "65536" },
    { "table_size", VIMG_OPT_SIZE, "L1/L2 table size (in clusters)", NULL },
    { NULL, 0, NULL, NULL },
};

struct qed_create_params {
    uint64_t size;
    bool has_size;
    uint64_t cluster_size;
    uint64_t table_size;
    const char *backing_file;
    const char *backing_fmt;
};

/*
 * table_size reaches qemu-img's QED code as a 32-bit integer: the text must
 * be a plain (decimal, octal or hex) integer, and is cut to 32 bits.
 */
static int
qed_parse_table_size(struct vimg_opts *opts, uint64_t *out, struct vimg_error *err)
{
    const char *v = vimg_opts_get(opts, "table_size");
    char *end;
    int ret;

    if ((ret = vimg_opts_get_size(opts, "table_size", QED_DEFAULT_TABLE_SIZE, out, err)) < 0 ||
        !v)
        return ret;
    errno = 0;
    *out = strtoull(v, &end, 0);
    if (errno || end == v || *end || *v == '-')
        return vimg_error_set(err, EINVAL, "Parameter 'table-size' expects integer");
    *out = (uint32_t)*out;
    return 0;
}

static int
qed_parse_create(struct vimg_opts *opts, struct qed_create_params *p,
                 struct vimg_error *err)
{
    uint64_t max;
    int ret;

    memset(p, 0, sizeof(*p));
    p->backing_file = vimg_opts_get(opts, "backing_file");
    p->backing_fmt = vimg_opts_get(opts, "backing_fmt");
    p->has_size = vimg_opts_has(opts, "size");
    if ((ret = vimg_opts_get_size(opts, "size", 0, &p->size, err)) < 0 ||
        (ret = vimg_opts_get_size(opts, "cluster_size", QED_DEFAULT_CLUSTER, &p->cluster_size,
                                  err)) < 0 ||
        (ret = qed_parse_table_size(opts, &p->table_size, err)) < 0)
        return ret;
    if (!qed_is_pow2(p->cluster_size) || p->cluster_size < QED_MIN_CLUSTER_SIZE ||
        p->cluster_size > QED_MAX_CLUSTER_SIZE)
        return vimg_error_set(err, EINVAL, "QED cluster size must be within range [%" PRIu32
                              ", %" PRIu32 "] and power of 2", QED_MIN_CLUSTER_SIZE,
                              QED_MAX_CLUSTER_SIZE);
    if (!qed_is_pow2(p->table_size) || p->table_size > QED_MAX_TABLE_SIZE)
        return vimg_error_set(err, EINVAL, "QED table size must be within range [1, %d] and "
                              "power of 2", QED_MAX_TABLE_SIZE);
    /* `create` checked the backing file and took the size from it, unless -u. */
    if (!p->has_size)
        return vimg_error_set(err, EINVAL, "Image creation needs a size parameter");
    if (p->size % QED_SECTOR_SIZE &&
        __builtin_add_overflow(p->size, QED_SECTOR_SIZE - p->size % QED_SECTOR_SIZE, &p->size))
        p->size = UINT64_MAX;
    max = qed_max_image_size((uint32_t)p->cluster_size, (uint32_t)p->table_size);
    if (p->size > max)
        return vimg_error_set(err, EINVAL, "QED image size must be a non-zero multiple of "
                              "cluster size and less than %" PRIu64 " bytes", max);
    return 0;
}

/* Header cluster (with the backing file name after the header), then an empty L1 table. */
static int
qed_write_new(struct vimg_node *file, const struct qed_create_params *p, struct vimg_error *err)
{
    uint64_t len = p->cluster_size * (1 + p->table_size);
    size_t name_len = p->backing_file ? strlen(p->backing_file) : 0;
    struct qed_header h = {
        .magic = QED_MAGIC,
        .cluster_size = (uint32_t)p->cluster_size,
        .table_size = (uint32_t)p->table_size,
        .header_size = 1,
        .l1_table_offset = p->cluster_size,
        .image_size = p->size,
    };
    uint8_t *buf;
    int ret;

    if (name_len > p->cluster_size - QED_HEADER_BYTES)
        return vimg_error_set(err, EINVAL, "Backing file name too long");
    if (p->backing_file) {
        h.features = QED_F_BACKING_FILE;
        if (p->backing_fmt && strcmp(p->backing_fmt, "raw") == 0)
            h.features |= QED_F_BACKING_NO_PROBE;
        h.backing_filename_offset = QED_HEADER_BYTES;
        h.backing_filename_size = (uint32_t)name_len;
    }
    if (!(buf = calloc(1, p->cluster_size)))
        return vimg_error_set(err, ENOMEM, "Out of memory");
    qed_encode_header(&h, buf);
    if (name_len)
        memcpy(buf + QED_HEADER_BYTES, p->backing_file, name_len);
    ret = vimg_node_truncate(file, len, false, NULL, err);
    if (ret == 0)
        ret = vimg_node_pwrite(file, 0, buf, p->cluster_size, 0, err);
    free(buf);
    return ret;
}

static int
qed_create(const char *filename, struct vimg_opts *opts, struct vimg_error *err)
{
    struct qed_create_params p;
    struct vimg_node *file;
    int ret;

    if ((ret = qed_parse_create(opts, &p, err)) < 0 ||
        (ret = vimg_create_file_empty(filename, opts, err)) < 0)
        return ret;
    ret = vimg_open(&file, filename, NULL, NULL, VIMG_OPEN_RDWR | VIMG_OPEN_PROTOCOL, err);
    if (ret < 0)
        return ret;
    ret = qed_write_new(file, &p, err);
    if (ret == 0)
        ret = vimg_node_flush(file, err);
    vimg_close(file);
    return ret;
}

const struct vimg_driver vimg_qed_driver = {
    .name = "qed",
    .kind = VIMG_DRIVER_FORMAT,
    .state_size = sizeof(struct qed_state),
    .has_zero_init = true,
    .supports_backing = true,
    .probe = qed_probe,
    .open = qed_open,
    .close = qed_close,
    .create_opts = qed_create_opts,
    .create = qed_create,
    .pread = qed_read,
    .pwritev = qed_pwritev,
    .pwrite_zeroes = qed_pwrite_zeroes,
    .flush = qed_flush,
    .block_status = qed_block_status,
    .check = qed_check,
    .length = qed_length,
    .truncate = qed_truncate,
};
