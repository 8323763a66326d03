/*
 * qcow2 persistent dirty bitmaps (spec "Bitmaps extension", "Bitmap
 * directory", "Bitmap table", "Bitmap data"; docs/interop/bitmaps.rst for
 * what the actions mean): the driver's bitmap op, with qemu-img 7.2's error
 * texts (observed).
 *
 * Each action loads the directory, changes it in memory, writes every new
 * table and data cluster, then the new directory, then the header pointing at
 * it, and only then frees the clusters the old directory used: a crash leaks
 * clusters instead of leaving the header pointing at freed ones. A bitmap
 * whose data changes (clear, merge) gets new clusters; all-zero data clusters
 * are stored as zero table entries.
 *
 * A writable open keeps the autoclear "bitmaps" bit: guest writes are
 * recorded in the enabled bitmaps (see "Recording guest writes" below). An
 * action sets the bit again when the image keeps bitmaps (or clears it with
 * the extension when none are left), also when the action fails.
 *
 * Left out: bitmaps of types other than dirty tracking (refused).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "formats/qcow2/qcow2.h"

/* Bitmap directory entry (spec "Bitmap directory"). */
#define QCOW2_BME_OFF_TABLE_OFFSET  0
#define QCOW2_BME_OFF_TABLE_SIZE    8
#define QCOW2_BME_OFF_FLAGS         12
#define QCOW2_BME_OFF_TYPE          16
#define QCOW2_BME_OFF_GRAN_BITS     17
#define QCOW2_BME_OFF_NAME_SIZE     18
#define QCOW2_BME_OFF_EXTRA_SIZE    20
#define QCOW2_BME_HEADER_SIZE       24

#define QCOW2_BME_FLAG_IN_USE       (UINT32_C(1) << 0)
#define QCOW2_BME_FLAG_AUTO         (UINT32_C(1) << 1)
#define QCOW2_BME_TYPE_DIRTY        1
#define QCOW2_BME_TABLE_ALL_ONES    UINT64_C(1)

/* QEMU's limits, which decide what it (and so we) will store. */
#define QCOW2_BM_MAX_NAME           1023
#define QCOW2_BM_MAX_COUNT          65535
#define QCOW2_BM_MAX_DIR_BYTES      (64u << 20)
#define QCOW2_BM_MAX_TABLE_SIZE     (UINT32_C(1) << 27)
#define QCOW2_BM_MIN_GRAN           512
#define QCOW2_BM_DEFAULT_MIN_GRAN   4096
#define QCOW2_BM_DEFAULT_MAX_GRAN   65536

/* One directory entry, decoded. */
struct qcow2_bitmap {
    char *name;
    uint64_t bitmap_table_offset;
    uint32_t bitmap_table_size;     /* entries */
    uint32_t flags;
    uint8_t type;
    uint8_t granularity_bits;
    uint8_t *extra_data;
    uint32_t extra_data_size;
};

struct qcow2_bitmap_dir {
    struct qcow2_bitmap *bm;
    uint32_t n;
};

/* Host extents that lose one reference once the new directory is on disk. */
struct qcow2_extents {
    uint64_t *offset;
    uint64_t *bytes;
    size_t n, cap;
};

static int qcow2_track_disarm(struct vimg_node *node, struct vimg_error *err);

static void
qcow2_bitmap_dir_free(struct qcow2_bitmap_dir *d)
{
    for (uint32_t i = 0; i < d->n; i++) {
        free(d->bm[i].name);
        free(d->bm[i].extra_data);
    }
    free(d->bm);
    d->bm = NULL;
    d->n = 0;
}

static int
qcow2_extents_add(struct qcow2_extents *x, uint64_t offset, uint64_t bytes,
                  struct vimg_error *err)
{
    if (x->n == x->cap) {
        size_t cap = x->cap ? x->cap * 2 : 16;
        uint64_t *o = realloc(x->offset, cap * sizeof(*o));
        if (o)
            x->offset = o;
        uint64_t *b = o ? realloc(x->bytes, cap * sizeof(*b)) : NULL;
        if (!b)
            return vimg_error_set(err, ENOMEM, "Out of memory");
        x->bytes = b;
        x->cap = cap;
    }
    x->offset[x->n] = offset;
    x->bytes[x->n] = bytes;
    x->n++;
    return 0;
}

/* Bytes of bitmap data for a bitmap of granularity 2^bits over the disk. */
static uint64_t
qcow2_bitmap_bytes(const struct qcow2_state *s, uint8_t bits)
{
    uint64_t n_bits = (s->hdr.size >> bits) + ((s->hdr.size & ((UINT64_C(1) << bits) - 1)) != 0);

    return n_bits / 8 + (n_bits % 8 != 0);
}

static uint64_t
qcow2_bitmap_table_entries(const struct qcow2_state *s, uint8_t bits)
{
    return qcow2_align_up(qcow2_bitmap_bytes(s, bits), s->cluster_size) / s->cluster_size;
}

/* One entry at p (avail bytes left); *used is its size with padding. */
static int
qcow2_decode_bitmap_entry(const struct qcow2_state *s, const uint8_t *p, uint64_t avail,
                          struct qcow2_bitmap *bm, uint64_t *used, struct vimg_error *err)
{
    uint16_t name_size;

    if (avail < QCOW2_BME_HEADER_SIZE)
        return vimg_error_set(err, EBADMSG, "Bitmap directory entry is truncated");
    bm->bitmap_table_offset = qcow2_be64(p + QCOW2_BME_OFF_TABLE_OFFSET);
    bm->bitmap_table_size = qcow2_be32(p + QCOW2_BME_OFF_TABLE_SIZE);
    bm->flags = qcow2_be32(p + QCOW2_BME_OFF_FLAGS);
    bm->type = p[QCOW2_BME_OFF_TYPE];
    bm->granularity_bits = p[QCOW2_BME_OFF_GRAN_BITS];
    name_size = qcow2_be16(p + QCOW2_BME_OFF_NAME_SIZE);
    bm->extra_data_size = qcow2_be32(p + QCOW2_BME_OFF_EXTRA_SIZE);
    if (name_size == 0 || name_size > QCOW2_BM_MAX_NAME ||
        bm->extra_data_size > avail - QCOW2_BME_HEADER_SIZE ||
        name_size > avail - QCOW2_BME_HEADER_SIZE - bm->extra_data_size)
        return vimg_error_set(err, EBADMSG, "Bitmap directory entry is invalid (name size %u, "
                              "extra data size %" PRIu32 ")", name_size, bm->extra_data_size);
    if (bm->type != QCOW2_BME_TYPE_DIRTY || bm->granularity_bits < 9 ||
        bm->granularity_bits > 31)
        return vimg_error_set(err, ENOTSUP, "Bitmap directory entry has unsupported type %u "
                              "or granularity 2^%u", bm->type, bm->granularity_bits);
    if (bm->bitmap_table_offset % s->cluster_size ||
        bm->bitmap_table_size != qcow2_bitmap_table_entries(s, bm->granularity_bits))
        return vimg_error_set(err, EBADMSG, "Bitmap table of %" PRIu32 " entries at 0x%"
                              PRIx64 " is invalid", bm->bitmap_table_size,
                              bm->bitmap_table_offset);
    bm->extra_data = malloc(bm->extra_data_size + 1u);
    bm->name = malloc(name_size + 1u);
    if (!bm->extra_data || !bm->name)
        return vimg_error_set(err, ENOMEM, "Out of memory");
    memcpy(bm->extra_data, p + QCOW2_BME_HEADER_SIZE, bm->extra_data_size);
    memcpy(bm->name, p + QCOW2_BME_HEADER_SIZE + bm->extra_data_size, name_size);
    bm->name[name_size] = '\0';
    *used = qcow2_align_up(QCOW2_BME_HEADER_SIZE + (uint64_t)bm->extra_data_size + name_size,
                           8);
    return 0;
}

static int
qcow2_decode_bitmap_dir(const struct qcow2_state *s, const uint8_t *buf, uint64_t size,
                        struct qcow2_bitmap_dir *d, struct vimg_error *err)
{
    uint64_t at = 0;
    int ret;

    if (!(d->bm = calloc(s->nb_bitmaps ? s->nb_bitmaps : 1, sizeof(*d->bm))))
        return vimg_error_set(err, ENOMEM, "Out of memory");
    for (uint32_t i = 0; i < s->nb_bitmaps; i++) {
        uint64_t used = 0;
        d->n++;
        if ((ret = qcow2_decode_bitmap_entry(s, buf + at, size - at, &d->bm[i], &used,
                                             err)) < 0)
            return ret;
        at = used > size - at ? size : at + used;
    }
    return 0;
}

/* The directory as the image had it when opened; empty when its bitmaps are not valid. */
static int
qcow2_load_bitmap_dir(struct vimg_node *node, struct qcow2_bitmap_dir *d,
                      struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t size = s->bitmaps_dir_size;
    uint8_t *buf;
    int ret;

    memset(d, 0, sizeof(*d));
    if (!s->has_bitmaps_ext || !s->has_valid_bitmaps || s->nb_bitmaps == 0)
        return 0;
    if (s->nb_bitmaps > QCOW2_BM_MAX_COUNT || size > QCOW2_BM_MAX_DIR_BYTES ||
        s->bitmaps_dir_offset % s->cluster_size)
        return vimg_error_set(err, EBADMSG, "Bitmap directory of %" PRIu32 " entries (%"
                              PRIu64 " bytes) at 0x%" PRIx64 " is invalid", s->nb_bitmaps,
                              size, s->bitmaps_dir_offset);
    if (!(buf = malloc(size ? size : 1)))
        return vimg_error_set(err, ENOMEM, "Out of memory");
    ret = qcow2_read_meta(node->file, s->bitmaps_dir_offset, buf, size, err);
    if (ret == 0)
        ret = qcow2_decode_bitmap_dir(s, buf, size, d, err);
    free(buf);
    if (ret < 0)
        qcow2_bitmap_dir_free(d);
    return ret;
}

static struct qcow2_bitmap *
qcow2_find_bitmap(struct qcow2_bitmap_dir *d, const char *name)
{
    for (uint32_t i = 0; i < d->n; i++)
        if (strcmp(d->bm[i].name, name) == 0)
            return &d->bm[i];
    return NULL;
}

static int
qcow2_read_bitmap_table(struct vimg_node *node, const struct qcow2_bitmap *bm,
                        uint64_t **table, struct vimg_error *err)
{
    uint64_t n = bm->bitmap_table_size;
    uint8_t *buf = malloc(n ? n * 8 : 1);
    int ret;

    *table = calloc(n ? n : 1, sizeof(uint64_t));
    if (!buf || !*table) {
        free(buf);
        free(*table);
        return vimg_error_set(err, ENOMEM, "Out of memory");
    }
    ret = qcow2_read_meta(node->file, bm->bitmap_table_offset, buf, n * 8, err);
    for (uint64_t i = 0; ret == 0 && i < n; i++)
        (*table)[i] = qcow2_be64(buf + i * 8);
    free(buf);
    if (ret < 0) {
        free(*table);
        *table = NULL;
    }
    return ret;
}

/* Queues bm's table in x and its data clusters in xd (freed, then discarded). */
static int
qcow2_drop_bitmap_data(struct vimg_node *node, const struct qcow2_bitmap *bm,
                       struct qcow2_extents *x, struct qcow2_extents *xd,
                       struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t *table;
    int ret;

    if (bm->bitmap_table_offset == 0)
        return 0;
    if ((ret = qcow2_read_bitmap_table(node, bm, &table, err)) < 0)
        return ret;
    for (uint32_t i = 0; ret == 0 && i < bm->bitmap_table_size; i++)
        if (table[i] & QCOW2_OFFSET_MASK)
            ret = qcow2_extents_add(xd, table[i] & QCOW2_OFFSET_MASK, s->cluster_size, err);
    free(table);
    if (ret < 0)
        return ret;
    return qcow2_extents_add(x, bm->bitmap_table_offset,
                             qcow2_align_up((uint64_t)bm->bitmap_table_size * 8,
                                            s->cluster_size), err);
}

/* Queues the table and data clusters of bm to be freed. */
static int
qcow2_drop_bitmap_clusters(struct vimg_node *node, const struct qcow2_bitmap *bm,
                           struct qcow2_extents *x, struct vimg_error *err)
{
    return qcow2_drop_bitmap_data(node, bm, x, x, err);
}

/* The bitmap's data (qcow2_bitmap_bytes long, malloc'd). */
static int
qcow2_read_bitmap_data(struct vimg_node *node, const struct qcow2_bitmap *bm, uint8_t **data,
                       struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t bytes = qcow2_bitmap_bytes(s, bm->granularity_bits), *table;
    int ret;

    if ((ret = qcow2_read_bitmap_table(node, bm, &table, err)) < 0)
        return ret;
    if (!(*data = calloc(1, bytes ? bytes : 1))) {
        free(table);
        return vimg_error_set(err, ENOMEM, "Out of memory");
    }
    for (uint64_t i = 0; ret == 0 && i < bm->bitmap_table_size; i++) {
        uint64_t at = i * s->cluster_size;
        uint64_t len = bytes - at < s->cluster_size ? bytes - at : s->cluster_size;
        if (table[i] & QCOW2_OFFSET_MASK)
            ret = qcow2_read_meta(node->file, table[i] & QCOW2_OFFSET_MASK, *data + at, len,
                                  err);
        else if (table[i] & QCOW2_BME_TABLE_ALL_ONES)
            memset(*data + at, 0xff, len);
    }
    free(table);
    if (ret < 0) {
        free(*data);
        *data = NULL;
    }
    return ret;
}

static bool
qcow2_is_zero(const uint8_t *p, uint64_t len)
{
    return len == 0 || (p[0] == 0 && memcmp(p, p + 1, len - 1) == 0);
}

/* Writes one data cluster of the bitmap unless it is all zeros; *entry is its table entry. */
static int
qcow2_write_bitmap_cluster(struct vimg_node *node, const uint8_t *p, uint64_t len,
                           uint64_t *entry, struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint8_t *buf;
    int ret;

    *entry = 0;
    if (qcow2_is_zero(p, len))
        return 0;
    if ((ret = qcow2_alloc_clusters(node, 1, entry, err)) < 0)
        return ret;
    if (!(buf = calloc(1, s->cluster_size)))
        return vimg_error_set(err, ENOMEM, "Out of memory");
    memcpy(buf, p, len);
    ret = qcow2_pwrite_file(node->file, *entry, buf, s->cluster_size, err);
    free(buf);
    return ret;
}

/* Stores data (NULL: all zeros) in new clusters and points bm at the new table. */
static int
qcow2_write_bitmap_data(struct vimg_node *node, struct qcow2_bitmap *bm, const uint8_t *data,
                        struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t bytes = qcow2_bitmap_bytes(s, bm->granularity_bits);
    uint64_t n = qcow2_bitmap_table_entries(s, bm->granularity_bits);
    uint64_t table_bytes = qcow2_align_up(n * 8, s->cluster_size), offset = 0;
    uint8_t *table;
    int ret = 0;

    if (n > QCOW2_BM_MAX_TABLE_SIZE)
        return vimg_error_set(err, EFBIG, "Bitmap table of %" PRIu64 " entries exceeds %"
                              PRIu32, n, QCOW2_BM_MAX_TABLE_SIZE);
    if (!(table = calloc(1, table_bytes ? table_bytes : 1)))
        return vimg_error_set(err, ENOMEM, "Out of memory");
    for (uint64_t i = 0; data && ret == 0 && i < n; i++) {
        uint64_t at = i * s->cluster_size, entry;
        uint64_t len = bytes - at < s->cluster_size ? bytes - at : s->cluster_size;
        ret = qcow2_write_bitmap_cluster(node, data + at, len, &entry, err);
        qcow2_put_be64(table + i * 8, entry);
    }
    if (ret == 0 && n)
        ret = qcow2_alloc_clusters(node, table_bytes / s->cluster_size, &offset, err);
    /* As QEMU, the table's own bytes: the rest of its last cluster keeps what it held. */
    if (ret == 0 && n)
        ret = qcow2_pwrite_file(node->file, offset, table, n * 8, err);
    free(table);
    if (ret < 0)
        return ret;
    bm->bitmap_table_offset = offset;
    bm->bitmap_table_size = (uint32_t)n;
    return 0;
}

static uint64_t
qcow2_bitmap_dir_bytes(const struct qcow2_bitmap_dir *d)
{
    uint64_t n = 0;

    for (uint32_t i = 0; i < d->n; i++)
        n += qcow2_align_up(QCOW2_BME_HEADER_SIZE + (uint64_t)d->bm[i].extra_data_size +
                            strlen(d->bm[i].name), 8);
    return n;
}

static void
qcow2_encode_bitmap_dir(const struct qcow2_bitmap_dir *d, uint8_t *buf)
{
    uint64_t at = 0;

    for (uint32_t i = 0; i < d->n; i++) {
        const struct qcow2_bitmap *bm = &d->bm[i];
        size_t name_size = strlen(bm->name);
        uint8_t *p = buf + at;
        qcow2_put_be64(p + QCOW2_BME_OFF_TABLE_OFFSET, bm->bitmap_table_offset);
        qcow2_put_be32(p + QCOW2_BME_OFF_TABLE_SIZE, bm->bitmap_table_size);
        qcow2_put_be32(p + QCOW2_BME_OFF_FLAGS, bm->flags);
        p[QCOW2_BME_OFF_TYPE] = bm->type;
        p[QCOW2_BME_OFF_GRAN_BITS] = bm->granularity_bits;
        qcow2_put_be16(p + QCOW2_BME_OFF_NAME_SIZE, (uint16_t)name_size);
        qcow2_put_be32(p + QCOW2_BME_OFF_EXTRA_SIZE, bm->extra_data_size);
        memcpy(p + QCOW2_BME_HEADER_SIZE, bm->extra_data, bm->extra_data_size);
        memcpy(p + QCOW2_BME_HEADER_SIZE + bm->extra_data_size, bm->name, name_size);
        at += qcow2_align_up(QCOW2_BME_HEADER_SIZE + (uint64_t)bm->extra_data_size + name_size,
                             8);
    }
}

/* Writes d in new clusters and points the header at it; the old directory is queued. */
static int
qcow2_store_bitmap_dir(struct vimg_node *node, const struct qcow2_bitmap_dir *d,
                       struct qcow2_extents *x, struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t size = qcow2_bitmap_dir_bytes(d), offset = 0;
    uint64_t alloc = qcow2_align_up(size, s->cluster_size);
    uint8_t *buf;
    int ret = 0;

    if (size > QCOW2_BM_MAX_DIR_BYTES)
        return vimg_error_set(err, EFBIG, "Bitmap directory of %" PRIu64 " bytes exceeds %u",
                              size, QCOW2_BM_MAX_DIR_BYTES);
    if (!(buf = calloc(1, alloc ? alloc : 1)))
        return vimg_error_set(err, ENOMEM, "Out of memory");
    qcow2_encode_bitmap_dir(d, buf);
    if (d->n && (ret = qcow2_alloc_clusters(node, alloc / s->cluster_size, &offset, err)) == 0)
        ret = qcow2_pwrite_file(node->file, offset, buf, size, err);
    free(buf);
    if (ret == 0)
        ret = qcow2_flush_metadata(node, err);
    if (ret == 0 && s->has_valid_bitmaps && s->nb_bitmaps && s->bitmaps_dir_offset)
        ret = qcow2_extents_add(x, s->bitmaps_dir_offset,
                                qcow2_align_up(s->bitmaps_dir_size, s->cluster_size), err);
    if (ret < 0)
        return ret;
    s->has_bitmaps_ext = d->n > 0;
    s->has_valid_bitmaps = d->n > 0;
    s->nb_bitmaps = d->n;
    s->bitmaps_dir_offset = offset;
    s->bitmaps_dir_size = size;
    if (d->n)
        s->hdr.autoclear_features |= QCOW2_AUTOCLEAR_BITMAPS;
    else
        s->hdr.autoclear_features &= ~QCOW2_AUTOCLEAR_BITMAPS;
    return qcow2_write_header(node, err);
}

/* Drops the queued references, the metadata no longer pointing there. */
static int
qcow2_free_extents(struct vimg_node *node, const struct qcow2_extents *x,
                   struct vimg_error *err)
{
    int ret;

    if (x->n == 0)
        return 0;
    if ((ret = qcow2_flush_metadata(node, err)) < 0)
        return ret;
    for (size_t i = 0; i < x->n; i++)
        if ((ret = qcow2_update_refcount(node, x->offset[i], x->bytes[i], -1, err)) < 0)
            return ret;
    return qcow2_flush_metadata(node, err);
}

static int
qcow2_check_bitmap_usable(const struct qcow2_bitmap *bm, struct vimg_error *err)
{
    if (bm->flags & QCOW2_BME_FLAG_IN_USE)
        return vimg_error_set(err, EINVAL, "Bitmap '%s' is inconsistent and cannot be used",
                              bm->name);
    return 0;
}

static int
qcow2_bitmap_not_found(const char *name, struct vimg_error *err)
{
    return vimg_error_set(err, ENOENT, "Dirty bitmap '%s' not found", name);
}

static int
qcow2_bitmap_granularity(const struct qcow2_state *s, uint64_t asked, uint8_t *bits,
                         struct vimg_error *err)
{
    /* QEMU takes the granularity as 32 bits: larger values wrap. */
    uint32_t g = (uint32_t)asked;

    if (asked == 0) {
        g = s->cluster_size;
        if (g < QCOW2_BM_DEFAULT_MIN_GRAN)
            g = QCOW2_BM_DEFAULT_MIN_GRAN;
        if (g > QCOW2_BM_DEFAULT_MAX_GRAN)
            g = QCOW2_BM_DEFAULT_MAX_GRAN;
    }
    if (g < QCOW2_BM_MIN_GRAN || (g & (g - 1)))
        return vimg_error_set(err, EINVAL, "Granularity must be power of 2 and at least 512");
    *bits = (uint8_t)__builtin_ctz(g);
    return 0;
}

static int
qcow2_check_storable(struct vimg_node *node, const struct qcow2_bitmap_dir *d,
                     const char *name, struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    const char *why = NULL;

    if (s->hdr.version < 3)
        why = "Cannot store dirty bitmaps in qcow2 v2 files";
    else if (strlen(name) > QCOW2_BM_MAX_NAME)
        why = "Name length exceeds maximum (1023 characters)";
    else if (d->n >= QCOW2_BM_MAX_COUNT)
        why = "Maximum number of persistent bitmaps is already reached";
    if (why)
        return vimg_error_set(err, EINVAL, "Can't make bitmap '%s' persistent in '%s': %s",
                              name, node->filename, why);
    return 0;
}

static int
qcow2_bitmap_add(struct vimg_node *node, struct qcow2_bitmap_dir *d,
                 const struct vimg_bitmap_op *op, struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    struct qcow2_bitmap bm = { .type = QCOW2_BME_TYPE_DIRTY, .flags = QCOW2_BME_FLAG_AUTO };
    struct qcow2_bitmap *grown;
    int ret;

    if ((ret = qcow2_bitmap_granularity(s, op->granularity, &bm.granularity_bits, err)) < 0)
        return ret;
    if (qcow2_find_bitmap(d, op->name))
        return vimg_error_set(err, EEXIST, "Bitmap already exists: %s", op->name);
    if ((ret = qcow2_check_storable(node, d, op->name, err)) < 0)
        return ret;
    if (!(grown = realloc(d->bm, (d->n + 1) * sizeof(*grown))))
        return vimg_error_set(err, ENOMEM, "Out of memory");
    d->bm = grown;
    bm.name = strdup(op->name);
    bm.extra_data = malloc(1);
    if (!bm.name || !bm.extra_data) {
        free(bm.name);
        free(bm.extra_data);
        return vimg_error_set(err, ENOMEM, "Out of memory");
    }
    d->bm[d->n++] = bm;
    return qcow2_write_bitmap_data(node, &d->bm[d->n - 1], NULL, err);
}

static int
qcow2_bitmap_remove(struct vimg_node *node, struct qcow2_bitmap_dir *d, struct qcow2_bitmap *bm,
                    struct qcow2_extents *x, struct vimg_error *err)
{
    uint32_t i = (uint32_t)(bm - d->bm);
    int ret;

    if ((ret = qcow2_drop_bitmap_clusters(node, bm, x, err)) < 0)
        return ret;
    free(bm->name);
    free(bm->extra_data);
    memmove(bm, bm + 1, (d->n - i - 1) * sizeof(*bm));
    d->n--;
    return 0;
}

/* ORs the bits of src (granularity 2^src_bits) into dst (2^dst_bits), both over size bytes. */
static void
qcow2_merge_bits(uint8_t *dst, uint8_t dst_bits, const uint8_t *src, uint8_t src_bits,
                 uint64_t src_bytes, uint64_t size)
{
    for (uint64_t byte = 0; byte < src_bytes; byte++) {
        if (!src[byte])
            continue;
        if (dst_bits == src_bits) {
            dst[byte] |= src[byte];
            continue;
        }
        for (unsigned b = 0; b < 8; b++) {
            uint64_t start = (byte * 8 + b) << src_bits, end;
            if (!(src[byte] & (1u << b)) || start >= size)
                continue;
            end = start + (UINT64_C(1) << src_bits);
            end = end > size ? size : end;
            for (uint64_t i = start >> dst_bits; i <= (end - 1) >> dst_bits; i++)
                dst[i / 8] |= (uint8_t)(1u << (i % 8));
        }
    }
}

/* The source bitmap's data and granularity, from node or another qcow2 image. */
static int
qcow2_read_merge_source(struct vimg_node *node, struct qcow2_bitmap_dir *d,
                        const struct vimg_bitmap_op *op, uint8_t **data, uint8_t *bits,
                        struct vimg_error *err)
{
    struct vimg_node *src = op->source_node ? op->source_node : node;
    struct qcow2_state *ss = src->state;
    struct qcow2_bitmap_dir sd = { 0 };
    struct qcow2_bitmap *bm;
    int ret;

    if (src == node)
        bm = qcow2_find_bitmap(d, op->source);
    else if (src->drv != node->drv)
        return qcow2_bitmap_not_found(op->source, err);
    else {
        pthread_mutex_lock(&ss->lock);
        if ((ret = qcow2_load_bitmap_dir(src, &sd, err)) < 0)
            goto out;
        bm = qcow2_find_bitmap(&sd, op->source);
    }
    if (!bm)
        ret = qcow2_bitmap_not_found(op->source, err);
    else if ((ret = qcow2_check_bitmap_usable(bm, err)) == 0 &&
             (ret = qcow2_read_bitmap_data(src, bm, data, err)) == 0)
        *bits = bm->granularity_bits;
out:
    if (src != node) {
        qcow2_bitmap_dir_free(&sd);
        pthread_mutex_unlock(&ss->lock);
    }
    return ret;
}

static int
qcow2_bitmap_merge(struct vimg_node *node, struct qcow2_bitmap_dir *d, struct qcow2_bitmap *bm,
                   const struct vimg_bitmap_op *op, struct qcow2_extents *x,
                   struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    struct vimg_node *src = op->source_node ? op->source_node : node;
    uint64_t src_size = src->drv == node->drv ? ((struct qcow2_state *)src->state)->hdr.size
                                               : 0;
    uint8_t *src_data = NULL, *data = NULL, src_bits = 0;
    int ret;

    if ((ret = qcow2_read_merge_source(node, d, op, &src_data, &src_bits, err)) < 0)
        return ret;
    if (src_size != s->hdr.size) {
        ret = vimg_error_set(err, EINVAL, "Bitmaps are of different sizes (destination size "
                             "is %" PRIu64 ", source size is %" PRIu64 ") and can't be merged",
                             s->hdr.size, src_size);
        goto out;
    }
    if ((ret = qcow2_read_bitmap_data(node, bm, &data, err)) < 0)
        goto out;
    qcow2_merge_bits(data, bm->granularity_bits, src_data, src_bits,
                     qcow2_bitmap_bytes(s, src_bits), s->hdr.size);
    if ((ret = qcow2_drop_bitmap_clusters(node, bm, x, err)) == 0)
        ret = qcow2_write_bitmap_data(node, bm, data, err);
out:
    free(src_data);
    free(data);
    return ret;
}

/* Applies op to d in memory and in new clusters; d is then to be stored. */
static int
qcow2_bitmap_apply(struct vimg_node *node, struct qcow2_bitmap_dir *d,
                   const struct vimg_bitmap_op *op, struct qcow2_extents *x,
                   struct vimg_error *err)
{
    struct qcow2_bitmap *bm;
    int ret;

    if (op->action == VIMG_BITMAP_ADD)
        return qcow2_bitmap_add(node, d, op, err);
    if (!(bm = qcow2_find_bitmap(d, op->name)))
        return qcow2_bitmap_not_found(op->name, err);
    if (op->action == VIMG_BITMAP_REMOVE)
        return qcow2_bitmap_remove(node, d, bm, x, err);
    if ((ret = qcow2_check_bitmap_usable(bm, err)) < 0)
        return ret;
    switch (op->action) {
    case VIMG_BITMAP_CLEAR:
        if ((ret = qcow2_drop_bitmap_clusters(node, bm, x, err)) < 0)
            return ret;
        return qcow2_write_bitmap_data(node, bm, NULL, err);
    case VIMG_BITMAP_ENABLE:
        bm->flags |= QCOW2_BME_FLAG_AUTO;
        return 0;
    case VIMG_BITMAP_DISABLE:
        bm->flags &= ~QCOW2_BME_FLAG_AUTO;
        return 0;
    case VIMG_BITMAP_MERGE:
        return qcow2_bitmap_merge(node, d, bm, op, x, err);
    default:
        return vimg_error_set(err, EINVAL, "Unknown bitmap action %d", (int)op->action);
    }
}

/* Sets the autoclear bit again when the image still has valid bitmaps. */
static int
qcow2_restore_bitmaps_bit(struct vimg_node *node, struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint8_t buf[8];

    if (!s->has_bitmaps_ext || !s->has_valid_bitmaps || s->nb_bitmaps == 0 ||
        (s->hdr.autoclear_features & QCOW2_AUTOCLEAR_BITMAPS))
        return 0;
    s->hdr.autoclear_features |= QCOW2_AUTOCLEAR_BITMAPS;
    qcow2_put_be64(buf, s->hdr.autoclear_features);
    return qcow2_write_header_field(node, QCOW2_OFF_AUTOCLEAR_FEATURES, buf, 8, err);
}

int
qcow2_bitmap(struct vimg_node *node, const struct vimg_bitmap_op *op, struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    struct qcow2_bitmap_dir d;
    struct qcow2_extents x = { 0 };
    int ret;

    pthread_mutex_lock(&s->lock);
    if ((ret = qcow2_track_disarm(node, err)) < 0 ||
        (ret = qcow2_load_bitmap_dir(node, &d, err)) < 0)
        goto out;
    ret = qcow2_bitmap_apply(node, &d, op, &x, err);
    if (ret == 0 && (ret = qcow2_store_bitmap_dir(node, &d, &x, err)) == 0)
        ret = qcow2_free_extents(node, &x, err);
    qcow2_bitmap_dir_free(&d);
out:
    if (ret < 0)
        qcow2_restore_bitmaps_bit(node, NULL);
    free(x.offset);
    free(x.bytes);
    pthread_mutex_unlock(&s->lock);
    return ret;
}

int
qcow2_bitmap_read(struct vimg_node *node, const char *name, uint8_t **bits,
                  uint64_t *granularity, struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    struct qcow2_bitmap_dir d;
    struct qcow2_bitmap *bm;
    int ret;

    pthread_mutex_lock(&s->lock);
    if ((ret = qcow2_load_bitmap_dir(node, &d, err)) < 0)
        goto out;
    if (!(bm = qcow2_find_bitmap(&d, name)))
        ret = qcow2_bitmap_not_found(name, err);
    else if ((ret = qcow2_check_bitmap_usable(bm, err)) == 0 &&
             (ret = qcow2_read_bitmap_data(node, bm, bits, err)) == 0)
        *granularity = UINT64_C(1) << bm->granularity_bits;
    qcow2_bitmap_dir_free(&d);
out:
    pthread_mutex_unlock(&s->lock);
    return ret;
}

int
qcow2_bitmap_list(struct vimg_node *node, struct vimg_bitmap_info **list, size_t *n,
                  struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    struct qcow2_bitmap_dir d;
    int ret;

    if (s->hdr.version < 3)
        return vimg_error_set(err, ENOTSUP, "Format driver 'qcow2' does not support bitmaps");
    pthread_mutex_lock(&s->lock);
    if ((ret = qcow2_track_disarm(node, err)) == 0)
        ret = qcow2_load_bitmap_dir(node, &d, err);
    pthread_mutex_unlock(&s->lock);
    if (ret < 0)
        return ret;
    if (!(*list = calloc(d.n ? d.n : 1, sizeof(**list)))) {
        qcow2_bitmap_dir_free(&d);
        return vimg_error_set(err, ENOMEM, "Out of memory");
    }
    for (uint32_t i = 0; i < d.n; i++) {
        (*list)[i].name = d.bm[i].name;
        d.bm[i].name = NULL;
        (*list)[i].granularity = UINT64_C(1) << d.bm[i].granularity_bits;
        (*list)[i].is_enabled = d.bm[i].flags & QCOW2_BME_FLAG_AUTO;
        (*list)[i].is_in_use = d.bm[i].flags & QCOW2_BME_FLAG_IN_USE;
    }
    *n = d.n;
    qcow2_bitmap_dir_free(&d);
    return 0;
}

/*
 * Recording guest writes, as QEMU keeps bitmaps while an image is open for
 * writing. The first write after the open (or after a bitmap action) arms
 * the tracking: every consistent bitmap is loaded into memory and flagged in
 * use in the directory, rewritten where it is, durably, before that write
 * goes ahead, so that a crash leaves those bitmaps inconsistent rather than
 * wrong. Writes set their bits in the enabled ones; a resize resizes them.
 * Disarming (close, any bitmap action or listing) stores each loaded bitmap
 * in new clusters, in directory order (its data, then its table), then the
 * directory with the flags cleared; the old clusters are freed after, the
 * data clusters discarded, as QEMU does.
 */
struct qcow2_bitmap_track {
    uint64_t size;          /* the disk size the data covers */
    uint64_t dir_size;      /* the disk size the tables on disk were made for */
    uint32_t n;
    char **name;
    uint8_t *bits;          /* granularity_bits of each */
    uint8_t **data;         /* qcow2_bitmap_bytes each */
    bool *is_enabled;       /* records writes */
};

static void
qcow2_track_free(struct qcow2_bitmap_track *t)
{
    if (!t)
        return;
    for (uint32_t i = 0; i < t->n; i++) {
        free(t->name[i]);
        free(t->data[i]);
    }
    free(t->name);
    free(t->bits);
    free(t->data);
    free(t->is_enabled);
    free(t);
}

void
qcow2_bitmaps_forget(struct qcow2_state *s)
{
    qcow2_track_free(s->bitmap_track);
    s->bitmap_track = NULL;
}

/* Loads the consistent bitmaps of d into t and flags them in use in d. */
static int
qcow2_track_load(struct vimg_node *node, struct qcow2_bitmap_dir *d,
                 struct qcow2_bitmap_track *t, struct vimg_error *err)
{
    uint32_t n = d->n ? d->n : 1;
    int ret;

    t->name = calloc(n, sizeof(*t->name));
    t->bits = calloc(n, sizeof(*t->bits));
    t->data = calloc(n, sizeof(*t->data));
    t->is_enabled = calloc(n, sizeof(*t->is_enabled));
    if (!t->name || !t->bits || !t->data || !t->is_enabled)
        return vimg_error_set(err, ENOMEM, "Out of memory");
    for (uint32_t i = 0; i < d->n; i++) {
        struct qcow2_bitmap *bm = &d->bm[i];
        if (bm->flags & QCOW2_BME_FLAG_IN_USE)
            continue;
        if (!(t->name[t->n] = strdup(bm->name)))
            return vimg_error_set(err, ENOMEM, "Out of memory");
        t->bits[t->n] = bm->granularity_bits;
        t->is_enabled[t->n] = bm->flags & QCOW2_BME_FLAG_AUTO;
        t->n++;
        if ((ret = qcow2_read_bitmap_data(node, bm, &t->data[t->n - 1], err)) < 0)
            return ret;
        bm->flags |= QCOW2_BME_FLAG_IN_USE;
    }
    return 0;
}

/* Rewrites the directory where it is (only flags changed: same size). */
static int
qcow2_rewrite_dir_in_place(struct vimg_node *node, const struct qcow2_bitmap_dir *d,
                           struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t size = qcow2_bitmap_dir_bytes(d);
    uint8_t *buf;
    int ret;

    if (size != s->bitmaps_dir_size)
        return vimg_error_set(err, EIO, "Bitmap directory changed size");
    if (!(buf = calloc(1, size ? size : 1)))
        return vimg_error_set(err, ENOMEM, "Out of memory");
    qcow2_encode_bitmap_dir(d, buf);
    ret = qcow2_pwrite_file(node->file, s->bitmaps_dir_offset, buf, size, err);
    free(buf);
    return ret;
}

/* Arms the tracking (lock held); a failure leaves it unarmed and the image as it was. */
static int
qcow2_track_arm(struct vimg_node *node, struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    struct qcow2_bitmap_track *t = calloc(1, sizeof(*t));
    struct qcow2_bitmap_dir d;
    int ret;

    if (!t)
        return vimg_error_set(err, ENOMEM, "Out of memory");
    t->size = s->hdr.size;
    t->dir_size = s->hdr.size;
    if ((ret = qcow2_load_bitmap_dir(node, &d, err)) == 0) {
        ret = qcow2_track_load(node, &d, t, err);
        if (ret == 0 && t->n && (ret = qcow2_rewrite_dir_in_place(node, &d, err)) == 0)
            ret = vimg_node_flush(node->file, err);
        qcow2_bitmap_dir_free(&d);
    }
    if (ret < 0) {
        qcow2_restore_bitmaps_bit(node, NULL);
        qcow2_track_free(t);
        return ret;
    }
    s->bitmap_track = t;
    return 0;
}

/* Frees the extents of x and discards in the file the clusters left unused. */
static int
qcow2_discard_extents(struct vimg_node *node, const struct qcow2_extents *x,
                      struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    int ret;

    if ((ret = qcow2_free_extents(node, x, err)) < 0)
        return ret;
    for (size_t i = 0; i < x->n; i++) {
        uint64_t rc;
        if ((ret = qcow2_get_refcount(node, x->offset[i] / s->cluster_size, &rc, err)) < 0)
            return ret;
        if (rc == 0 && (ret = vimg_node_discard(node->file, x->offset[i], x->bytes[i],
                                                NULL)) < 0 && ret != -ENOTSUP)
            return vimg_error_set(err, -ret, "Could not discard cluster 0x%" PRIx64,
                                  x->offset[i]);
    }
    return 0;
}

/* Stores what the tracking holds and clears the in-use flags (lock held). */
static int
qcow2_track_disarm(struct vimg_node *node, struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    struct qcow2_bitmap_track *t = s->bitmap_track;
    struct qcow2_bitmap_dir d;
    struct qcow2_extents x = { 0 }, xd = { 0 };
    int ret = 0;

    if (!t)
        return 0;
    s->bitmap_track = NULL;
    /* Resized meanwhile other than by a resize: the bitmaps stay in use. */
    if (t->n && t->size != s->hdr.size)
        ret = vimg_error_set(err, ENOTSUP, "Cannot store bitmaps of an image resized while "
                             "they recorded writes");
    else if (t->n) {
        uint64_t size = s->hdr.size;
        s->hdr.size = t->dir_size;
        ret = qcow2_load_bitmap_dir(node, &d, err);
        s->hdr.size = size;
    }
    if (t->n == 0 || ret < 0) {
        ret = t->n == 0 ? 0 : ret;
        qcow2_track_free(t);
        return ret;
    }
    for (uint32_t i = 0; i < d.n && ret == 0; i++) {
        struct qcow2_bitmap *bm = &d.bm[i];
        uint32_t j;
        for (j = 0; j < t->n && strcmp(t->name[j], bm->name) != 0; j++)
            ;
        if (j == t->n)
            continue;
        bm->flags &= ~QCOW2_BME_FLAG_IN_USE;
        if ((ret = qcow2_drop_bitmap_data(node, bm, &x, &xd, err)) == 0)
            ret = qcow2_write_bitmap_data(node, bm, t->data[j], err);
    }
    if (ret == 0 && (ret = qcow2_store_bitmap_dir(node, &d, &x, err)) == 0 &&
        (ret = qcow2_free_extents(node, &x, err)) == 0)
        ret = qcow2_discard_extents(node, &xd, err);
    qcow2_bitmap_dir_free(&d);
    free(x.offset);
    free(x.bytes);
    free(xd.offset);
    free(xd.bytes);
    qcow2_track_free(t);
    return ret;
}

static void
qcow2_track_set(struct qcow2_bitmap_track *t, uint64_t offset, uint64_t bytes)
{
    uint64_t end = offset + bytes > t->size ? t->size : offset + bytes;

    for (uint32_t i = 0; i < t->n && offset < end; i++) {
        if (!t->is_enabled[i])
            continue;
        for (uint64_t b = offset >> t->bits[i]; b <= (end - 1) >> t->bits[i]; b++)
            t->data[i][b / 8] |= (uint8_t)(1u << (b % 8));
    }
}

int
qcow2_bitmaps_mark_dirty(struct vimg_node *node, uint64_t offset, uint64_t bytes,
                         struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    int ret = 0;

    if (!__atomic_load_n(&s->has_bitmaps_ext, __ATOMIC_RELAXED) || bytes == 0)
        return 0;
    pthread_mutex_lock(&s->lock);
    if (s->has_valid_bitmaps && s->nb_bitmaps && !s->bitmap_track)
        ret = qcow2_track_arm(node, err);
    if (ret == 0 && s->bitmap_track)
        qcow2_track_set(s->bitmap_track, offset, bytes);
    pthread_mutex_unlock(&s->lock);
    return ret;
}

int
qcow2_bitmaps_store(struct vimg_node *node, struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    int ret;

    pthread_mutex_lock(&s->lock);
    ret = qcow2_track_disarm(node, err);
    pthread_mutex_unlock(&s->lock);
    return ret;
}

/* Removes every bitmap and the extension, freeing their clusters (lock held). */
int
qcow2_bitmaps_drop_all(struct vimg_node *node, struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    struct qcow2_bitmap_dir d;
    struct qcow2_extents x = { 0 };
    int ret;

    if (!s->has_bitmaps_ext)
        return 0;
    if ((ret = qcow2_track_disarm(node, err)) < 0 ||
        (ret = qcow2_load_bitmap_dir(node, &d, err)) < 0)
        return ret;
    for (uint32_t i = 0; i < d.n && ret == 0; i++)
        ret = qcow2_drop_bitmap_clusters(node, &d.bm[i], &x, err);
    qcow2_bitmap_dir_free(&d);
    if (ret == 0 && (ret = qcow2_store_bitmap_dir(node, &d, &x, err)) == 0)
        ret = qcow2_free_extents(node, &x, err);
    free(x.offset);
    free(x.bytes);
    return ret;
}

/* ---- Resizing ---- */

/* Bits of a bitmap of granularity 2^bits over size bytes. */
static uint64_t
qcow2_bitmap_bits_for(uint64_t size, uint8_t bits)
{
    return (size >> bits) + ((size & ((UINT64_C(1) << bits) - 1)) != 0);
}

/*
 * After a resize from old_size (lock held): the bitmaps, loaded as a
 * writable open of QEMU loads them, take the new size in memory (bits past
 * the new end dropped, those of a grown part clear); closing stores them.
 */
int
qcow2_bitmaps_resize(struct vimg_node *node, uint64_t old_size, struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t new_size = s->hdr.size;
    struct qcow2_bitmap_track *t;
    int ret = 0;

    if (old_size == new_size)
        return 0;
    if (!s->bitmap_track) {
        if (!s->has_bitmaps_ext || !s->has_valid_bitmaps || s->nb_bitmaps == 0)
            return 0;
        /* The directory is read at the size its tables were made for. */
        s->hdr.size = old_size;
        ret = qcow2_track_arm(node, err);
        s->hdr.size = new_size;
        if (ret < 0)
            return ret;
    }
    t = s->bitmap_track;
    if (t->size != old_size)
        return vimg_error_set(err, ENOTSUP, "Cannot resize bitmaps recorded for another size");
    for (uint32_t i = 0; i < t->n; i++) {
        uint64_t keep = qcow2_bitmap_bits_for(old_size < new_size ? old_size : new_size,
                                              t->bits[i]);
        uint64_t bytes = qcow2_bitmap_bits_for(new_size, t->bits[i]);
        uint64_t old_bytes = qcow2_bitmap_bits_for(old_size, t->bits[i]);
        uint8_t *p;
        bytes = bytes / 8 + (bytes % 8 != 0);
        old_bytes = old_bytes / 8 + (old_bytes % 8 != 0);
        if (!(p = realloc(t->data[i], bytes ? bytes : 1)))
            return vimg_error_set(err, ENOMEM, "Out of memory");
        t->data[i] = p;
        if (bytes > old_bytes)
            memset(p + old_bytes, 0, bytes - old_bytes);
        if (keep / 8 < bytes) {
            p[keep / 8] &= (uint8_t)((1u << (keep % 8)) - 1);
            memset(p + keep / 8 + 1, 0, bytes - keep / 8 - 1);
        }
    }
    t->size = new_size;
    return 0;
}
