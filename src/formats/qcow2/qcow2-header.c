/*
 * qcow2 header: decoding, validation with QEMU's error texts (observed from
 * qemu-img 7.2), header extensions (spec "Header extensions"). Unknown
 * extensions are kept; the header is only ever rewritten field by field, so
 * whatever we do not understand stays on disk as it was.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "formats/qcow2/qcow2.h"

void
qcow2_decode_header(const uint8_t *buf, struct qcow2_header *h)
{
    memset(h, 0, sizeof(*h));
    h->version = qcow2_be32(buf + QCOW2_OFF_VERSION);
    h->backing_file_offset = qcow2_be64(buf + QCOW2_OFF_BACKING_FILE_OFFSET);
    h->backing_file_size = qcow2_be32(buf + QCOW2_OFF_BACKING_FILE_SIZE);
    h->cluster_bits = qcow2_be32(buf + QCOW2_OFF_CLUSTER_BITS);
    h->size = qcow2_be64(buf + QCOW2_OFF_SIZE);
    h->crypt_method = qcow2_be32(buf + QCOW2_OFF_CRYPT_METHOD);
    h->l1_size = qcow2_be32(buf + QCOW2_OFF_L1_SIZE);
    h->l1_table_offset = qcow2_be64(buf + QCOW2_OFF_L1_TABLE_OFFSET);
    h->refcount_table_offset = qcow2_be64(buf + QCOW2_OFF_REFCOUNT_TABLE_OFFSET);
    h->refcount_table_clusters = qcow2_be32(buf + QCOW2_OFF_REFCOUNT_TABLE_CLUSTERS);
    h->nb_snapshots = qcow2_be32(buf + QCOW2_OFF_NB_SNAPSHOTS);
    h->snapshots_offset = qcow2_be64(buf + QCOW2_OFF_SNAPSHOTS_OFFSET);
    if (h->version < 3) {
        h->refcount_order = 4;
        h->header_length = QCOW2_V2_HEADER_LENGTH;
        return;
    }
    h->incompatible_features = qcow2_be64(buf + QCOW2_OFF_INCOMPATIBLE_FEATURES);
    h->compatible_features = qcow2_be64(buf + QCOW2_OFF_COMPATIBLE_FEATURES);
    h->autoclear_features = qcow2_be64(buf + QCOW2_OFF_AUTOCLEAR_FEATURES);
    h->refcount_order = qcow2_be32(buf + QCOW2_OFF_REFCOUNT_ORDER);
    h->header_length = qcow2_be32(buf + QCOW2_OFF_HEADER_LENGTH);
    if (h->header_length > QCOW2_OFF_COMPRESSION_TYPE)
        h->compression_type = buf[QCOW2_OFF_COMPRESSION_TYPE];
}

/* Writes h->header_length bytes (72 for version 2) into buf, padding zeroed. */
void
qcow2_encode_header(const struct qcow2_header *h, uint8_t *buf)
{
    memset(buf, 0, h->version < 3 ? QCOW2_V2_HEADER_LENGTH : h->header_length);
    qcow2_put_be32(buf + QCOW2_OFF_MAGIC, QCOW2_MAGIC);
    qcow2_put_be32(buf + QCOW2_OFF_VERSION, h->version);
    qcow2_put_be64(buf + QCOW2_OFF_BACKING_FILE_OFFSET, h->backing_file_offset);
    qcow2_put_be32(buf + QCOW2_OFF_BACKING_FILE_SIZE, h->backing_file_size);
    qcow2_put_be32(buf + QCOW2_OFF_CLUSTER_BITS, h->cluster_bits);
    qcow2_put_be64(buf + QCOW2_OFF_SIZE, h->size);
    qcow2_put_be32(buf + QCOW2_OFF_CRYPT_METHOD, h->crypt_method);
    qcow2_put_be32(buf + QCOW2_OFF_L1_SIZE, h->l1_size);
    qcow2_put_be64(buf + QCOW2_OFF_L1_TABLE_OFFSET, h->l1_table_offset);
    qcow2_put_be64(buf + QCOW2_OFF_REFCOUNT_TABLE_OFFSET, h->refcount_table_offset);
    qcow2_put_be32(buf + QCOW2_OFF_REFCOUNT_TABLE_CLUSTERS, h->refcount_table_clusters);
    qcow2_put_be32(buf + QCOW2_OFF_NB_SNAPSHOTS, h->nb_snapshots);
    qcow2_put_be64(buf + QCOW2_OFF_SNAPSHOTS_OFFSET, h->snapshots_offset);
    if (h->version < 3)
        return;
    qcow2_put_be64(buf + QCOW2_OFF_INCOMPATIBLE_FEATURES, h->incompatible_features);
    qcow2_put_be64(buf + QCOW2_OFF_COMPATIBLE_FEATURES, h->compatible_features);
    qcow2_put_be64(buf + QCOW2_OFF_AUTOCLEAR_FEATURES, h->autoclear_features);
    qcow2_put_be32(buf + QCOW2_OFF_REFCOUNT_ORDER, h->refcount_order);
    qcow2_put_be32(buf + QCOW2_OFF_HEADER_LENGTH, h->header_length);
    if (h->header_length > QCOW2_OFF_COMPRESSION_TYPE)
        buf[QCOW2_OFF_COMPRESSION_TYPE] = h->compression_type;
}

int
qcow2_read_meta(struct vimg_node *file, uint64_t offset, void *buf, uint64_t len,
                struct vimg_error *err)
{
    int64_t file_len = vimg_node_length(file, err);
    uint64_t in_file;

    if (file_len < 0)
        return (int)file_len;
    in_file = offset >= (uint64_t)file_len ? 0
              : ((uint64_t)file_len - offset < len ? (uint64_t)file_len - offset : len);
    if (in_file < len)
        memset((uint8_t *)buf + in_file, 0, len - in_file);
    if (in_file == 0)
        return 0;
    return vimg_node_pread(file, offset, buf, in_file, 0, err);
}

/*
 * Only ever called under the state's lock (or before the image is shared),
 * so growth is ordered. Writes done outside the lock (in-place writes, the
 * data of a run of new clusters) stay inside a part of the file grown under
 * it, so no fstat here can miss one and no ftruncate here can cut one;
 * writes under the lock may extend the file themselves.
 */
int
qcow2_grow_file(struct vimg_node *file, uint64_t end, struct vimg_error *err)
{
    int64_t len = vimg_node_length(file, err);

    if (len < 0)
        return (int)len;
    if (end <= (uint64_t)len)
        return 0;
    return vimg_node_truncate(file, end, false, NULL, err);
}

int
qcow2_pwrite_file(struct vimg_node *file, uint64_t offset, const void *buf, uint64_t len,
                  struct vimg_error *err)
{
    int ret = qcow2_grow_file(file, offset + len, err);

    if (ret < 0)
        return ret;
    return vimg_node_pwrite(file, offset, buf, len, 0, err);
}

int
qcow2_write_header_field(struct vimg_node *node, uint32_t off, const void *buf, size_t len,
                         struct vimg_error *err)
{
    return qcow2_pwrite_file(node->file, off, buf, len, err);
}

/* Writes the header's incompatible feature bits as the state has them, and syncs. */
int
qcow2_write_incompatible_features(struct vimg_node *node, struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint8_t buf[8];
    int ret;

    qcow2_put_be64(buf, s->hdr.incompatible_features);
    if ((ret = qcow2_write_header_field(node, QCOW2_OFF_INCOMPATIBLE_FEATURES, buf, 8,
                                        err)) < 0)
        return ret;
    return vimg_node_flush(node->file, err);
}

/* Sets the corrupt bit in the header and syncs it, as QEMU's qcow2_mark_corrupt. */
int
qcow2_mark_corrupt(struct vimg_node *node, struct vimg_error *err)
{
    struct qcow2_state *s = node->state;

    s->hdr.incompatible_features |= QCOW2_INCOMPAT_CORRUPT;
    s->is_corrupt = true;
    return qcow2_write_incompatible_features(node, err);
}

/*
 * A corruption event as QEMU reports one: said once (a fatal one after a
 * non-fatal one is said again). A fatal one on a writable image marks the
 * image corrupt and makes the node unusable, so that nothing more is written
 * through metadata found broken; on a read-only image every event is
 * non-fatal.
 */
void
qcow2_signal_corruption(struct vimg_node *node, bool fatal, const char *fmt, ...)
{
    struct qcow2_state *s = node->state;
    struct vimg_error event = { 0 };
    va_list ap;

    fatal = fatal && !node->is_read_only;
    if (s->has_signalled_corruption && (!fatal || s->is_corrupt))
        return;
    va_start(ap, fmt);
    vimg_error_setv(&event, EIO, fmt, ap);
    va_end(ap);
    if (fatal)
        vimg_warn("qcow2: Marking image as corrupt: %s; further corruption events will be "
                  "suppressed", event.msg);
    else
        vimg_warn("qcow2: Image is corrupt: %s; further non-fatal corruption events will be "
                  "suppressed", event.msg);
    if (fatal) {
        (void)qcow2_mark_corrupt(node, &(struct vimg_error){ 0 });
        atomic_store(&node->is_unusable, true);
    }
    s->has_signalled_corruption = true;
}

/* A fatal corruption event and the EIO error of the request that met it, one text for both. */
int
qcow2_corruption_error(struct vimg_node *node, struct vimg_error *err, const char *fmt, ...)
{
    struct vimg_error e = { 0 };
    va_list ap;
    int ret;

    va_start(ap, fmt);
    ret = vimg_error_setv(&e, EIO, fmt, ap);
    va_end(ap);
    qcow2_signal_corruption(node, true, "%s", e.msg);
    if (err)
        *err = e;
    return ret;
}

static int
qcow2_check_basic_header(const struct qcow2_header *h, const uint8_t *buf,
                         struct vimg_error *err)
{
    if (qcow2_be32(buf + QCOW2_OFF_MAGIC) != QCOW2_MAGIC)
        return vimg_error_set(err, EINVAL, "Image is not in qcow2 format");
    if (h->version < 2 || h->version > 3)
        return vimg_error_set(err, ENOTSUP, "Unsupported qcow2 version %" PRIu32, h->version);
    if (h->cluster_bits < QCOW2_MIN_CLUSTER_BITS || h->cluster_bits > QCOW2_MAX_CLUSTER_BITS)
        return vimg_error_set(err, EINVAL, "Unsupported cluster size: 2^%" PRIu32,
                              h->cluster_bits);
    if (h->version >= 3 && h->header_length < QCOW2_V3_MIN_HEADER_LENGTH)
        return vimg_error_set(err, EINVAL, "qcow2 header too short");
    if (h->header_length > (UINT32_C(1) << h->cluster_bits))
        return vimg_error_set(err, EINVAL, "qcow2 header exceeds cluster size");
    if (h->backing_file_offset > (UINT64_C(1) << h->cluster_bits))
        return vimg_error_set(err, EINVAL, "Invalid backing file offset");
    return 0;
}

static char *
qcow2_strndup(const uint8_t *p, size_t len)
{
    char *s = malloc(len + 1);

    if (!s)
        return NULL;
    memcpy(s, p, len);
    s[len] = '\0';
    return s;
}

static int
qcow2_keep_ext(struct qcow2_state *s, uint32_t type, const uint8_t *data, uint32_t len,
               struct vimg_error *err)
{
    struct qcow2_ext *e = realloc(s->exts, (s->n_exts + 1) * sizeof(*e));

    if (!e)
        return vimg_error_set(err, ENOMEM, "Out of memory");
    s->exts = e;
    e[s->n_exts].type = type;
    e[s->n_exts].len = len;
    e[s->n_exts].data = malloc(len ? len : 1);
    if (!e[s->n_exts].data)
        return vimg_error_set(err, ENOMEM, "Out of memory");
    memcpy(e[s->n_exts].data, data, len);
    s->n_exts++;
    return 0;
}

static int
qcow2_apply_ext(struct qcow2_state *s, uint32_t type, const uint8_t *data, uint32_t len,
                struct vimg_error *err)
{
    switch (type) {
    case QCOW2_EXT_BACKING_FORMAT:
        if (len > QCOW2_MAX_BACKING_NAME)
            return vimg_error_set(err, EINVAL, "ERROR: ext_backing_format: len=%" PRIu32
                                  " too large (>=%d)", len, QCOW2_MAX_BACKING_NAME + 1);
        free(s->backing_format);
        if (!(s->backing_format = qcow2_strndup(data, len)))
            return vimg_error_set(err, ENOMEM, "Out of memory");
        break;
    case QCOW2_EXT_DATA_FILE:
        free(s->data_file_name);
        if (!(s->data_file_name = qcow2_strndup(data, len)))
            return vimg_error_set(err, ENOMEM, "Out of memory");
        break;
    case QCOW2_EXT_CRYPTO:
        /* The rest is checked by qcow2_crypt_open, after the options, as QEMU does. */
        if (len != 16)
            return vimg_error_set(err, EINVAL, "CRYPTO header extension size %" PRIu32 ", but "
                                  "expected size 16", len);
        s->crypto_offset = qcow2_be64(data);
        s->crypto_length = qcow2_be64(data + 8);
        break;
    case QCOW2_EXT_BITMAPS:
        if (len != 24)
            return vimg_error_set(err, EINVAL, "bitmaps_ext: Invalid extension length");
        s->has_bitmaps_ext = true;
        s->has_valid_bitmaps = s->hdr.autoclear_features & QCOW2_AUTOCLEAR_BITMAPS;
        s->nb_bitmaps = qcow2_be32(data);
        s->bitmaps_dir_size = qcow2_be64(data + 8);
        s->bitmaps_dir_offset = qcow2_be64(data + 16);
        break;
    default:
        break;
    }
    return 0;
}

/* Walks the extensions in [start, end) of the first cluster (in buf). */
static int
qcow2_parse_exts(struct qcow2_state *s, const uint8_t *buf, uint64_t start, uint64_t end,
                 struct vimg_error *err)
{
    uint64_t offset = start;
    int ret;

    while (offset < end) {
        uint32_t type, len;
        if (end - offset < 8)
            return vimg_error_set(err, EINVAL, "Header extension too large");
        type = qcow2_be32(buf + offset);
        len = qcow2_be32(buf + offset + 4);
        offset += 8;
        if (len > end - offset)
            return vimg_error_set(err, EINVAL, "Header extension too large");
        if (type == QCOW2_EXT_END)
            return 0;
        if ((ret = qcow2_keep_ext(s, type, buf + offset, len, err)) < 0)
            return ret;
        if ((ret = qcow2_apply_ext(s, type, buf + offset, len, err)) < 0)
            return ret;
        offset += qcow2_align_up(len, 8);
    }
    return 0;
}

/* "Unsupported qcow2 feature(s): " with names from the feature table where it has them. */
static int
qcow2_report_features(const struct qcow2_state *s, uint64_t unknown, struct vimg_error *err)
{
    char msg[VIMG_ERROR_MSG_MAX] = "";
    size_t used = 0;

    for (size_t i = 0; i < s->n_exts; i++) {
        const struct qcow2_ext *e = &s->exts[i];
        if (e->type != QCOW2_EXT_FEATURE_TABLE)
            continue;
        for (uint32_t at = 0; at + QCOW2_FEATURE_ENTRY_SIZE <= e->len;
             at += QCOW2_FEATURE_ENTRY_SIZE) {
            uint8_t bit = e->data[at + 1];
            char name[QCOW2_FEATURE_NAME_SIZE + 1];
            if (e->data[at] != 0 || bit > 63 || !(unknown & (UINT64_C(1) << bit)))
                continue;
            memcpy(name, e->data + at + 2, QCOW2_FEATURE_NAME_SIZE);
            name[QCOW2_FEATURE_NAME_SIZE] = '\0';
            used += (size_t)snprintf(msg + used, used < sizeof(msg) ? sizeof(msg) - used : 0,
                                     "%s%s", used ? ", " : "", name);
            if (used >= sizeof(msg))
                used = sizeof(msg) - 1;
            unknown &= ~(UINT64_C(1) << bit);
        }
    }
    if (unknown)
        snprintf(msg + used, sizeof(msg) - used, "%sUnknown incompatible feature: %" PRIx64,
                 used ? ", " : "", unknown);
    return vimg_error_set(err, ENOTSUP, "Unsupported qcow2 feature(s): %s", msg);
}

static int
qcow2_check_features(struct qcow2_state *s, struct vimg_error *err)
{
    const struct qcow2_header *h = &s->hdr;

    if (h->incompatible_features & ~QCOW2_INCOMPAT_KNOWN)
        return qcow2_report_features(s, h->incompatible_features & ~QCOW2_INCOMPAT_KNOWN,
                                     err);
    if (h->refcount_order > 6)
        return vimg_error_set(err, EINVAL, "Reference count entry width too large; may not "
                              "exceed 64 bits");
    if (h->incompatible_features & QCOW2_INCOMPAT_COMPRESSION) {
        if (h->compression_type == QCOW2_COMPRESSION_ZLIB)
            return vimg_error_set(err, EINVAL, "qcow2: Compression type incompatible feature "
                                  "bit must not be set");
    } else if (h->compression_type != QCOW2_COMPRESSION_ZLIB) {
        return vimg_error_set(err, EINVAL, "qcow2: Compression type incompatible feature bit "
                              "must be set");
    }
    if (h->compression_type > QCOW2_COMPRESSION_ZSTD)
        return vimg_error_set(err, ENOTSUP, "qcow2: unknown compression type: %u",
                              h->compression_type);
    if (h->crypt_method > 2)
        return vimg_error_set(err, EINVAL, "Unsupported encryption method %" PRIu32,
                              h->crypt_method);
    return 0;
}

/* Sizes derived from the header. */
static int
qcow2_derive_geometry(struct qcow2_state *s, struct vimg_error *err)
{
    const struct qcow2_header *h = &s->hdr;

    s->cluster_bits = h->cluster_bits;
    s->cluster_size = UINT32_C(1) << h->cluster_bits;
    s->has_extended_l2 = h->incompatible_features & QCOW2_INCOMPAT_EXTL2;
    s->l2_entry_size = s->has_extended_l2 ? 16 : 8;
    s->l2_entries = s->cluster_size / s->l2_entry_size;
    s->n_subclusters = s->has_extended_l2 ? QCOW2_EXTL2_SUBCLUSTERS : 1;
    s->subcluster_size = s->cluster_size / s->n_subclusters;
    s->subcluster_bits = s->cluster_bits - (s->has_extended_l2 ? 5 : 0);
    if (s->subcluster_size < 512)
        return vimg_error_set(err, EINVAL, "Unsupported subcluster size: %" PRIu32,
                              s->subcluster_size);
    s->refcount_bits = UINT32_C(1) << h->refcount_order;
    s->rb_entries = (uint32_t)((uint64_t)s->cluster_size * 8 / s->refcount_bits);
    s->refcount_max = s->refcount_bits == 64 ? UINT64_MAX
                      : (UINT64_C(1) << s->refcount_bits) - 1;
    s->has_data_file = h->incompatible_features & QCOW2_INCOMPAT_DATA_FILE;
    s->is_data_file_raw = s->has_data_file &&
                          (h->autoclear_features & QCOW2_AUTOCLEAR_DATA_FILE_RAW);
    s->is_corrupt = h->incompatible_features & QCOW2_INCOMPAT_CORRUPT;
    s->is_dirty = h->incompatible_features & QCOW2_INCOMPAT_DIRTY;
    s->compression_type = h->compression_type;
    return 0;
}

/* Table at offset with n entries of entry_size bytes: aligned, no overflow. */
static bool
qcow2_table_ok(const struct qcow2_state *s, uint64_t offset, uint64_t n, uint64_t entry_size)
{
    if (n > (uint64_t)INT64_MAX / entry_size)
        return false;
    if (offset > (uint64_t)INT64_MAX - n * entry_size)
        return false;
    return offset % s->cluster_size == 0;
}

static int
qcow2_check_tables(struct qcow2_state *s, struct vimg_error *err)
{
    const struct qcow2_header *h = &s->hdr;
    uint64_t per_l1 = (uint64_t)s->l2_entries * s->cluster_size;
    uint64_t needed;

    if ((uint64_t)h->refcount_table_clusters > QCOW2_MAX_REFTABLE_BYTES / s->cluster_size)
        return vimg_error_set(err, EINVAL, "Reference count table too large");
    /* check (-r) opens such an image, as QEMU does, to report or rebuild the refcounts. */
    if (h->refcount_table_clusters == 0 && !s->is_check_open)
        return vimg_error_set(err, EINVAL, "Image does not contain a reference count table");
    if (h->refcount_table_clusters &&
        !qcow2_table_ok(s, h->refcount_table_offset, h->refcount_table_clusters,
                        s->cluster_size))
        return vimg_error_set(err, EINVAL, "Reference count table offset invalid");
    /* check reports these itself, as QEMU's does. */
    if (h->nb_snapshots > 65536 && !s->is_check_open)
        return vimg_error_set(err, EFBIG, "Snapshot table too large");
    if (h->nb_snapshots && !qcow2_table_ok(s, h->snapshots_offset, h->nb_snapshots, 40) &&
        !s->is_check_open)
        return vimg_error_set(err, EINVAL, "Snapshot table offset invalid");
    if (h->l1_size > QCOW2_MAX_L1_BYTES / 8)
        return vimg_error_set(err, EFBIG, "Active L1 table too large");
    needed = h->size / per_l1 + (h->size % per_l1 ? 1 : 0);
    if (needed > INT32_MAX)
        return vimg_error_set(err, EFBIG, "Image is too big");
    if (h->l1_size < needed)
        return vimg_error_set(err, EINVAL, "L1 table is too small");
    if (h->l1_size && !qcow2_table_ok(s, h->l1_table_offset, h->l1_size, 8))
        return vimg_error_set(err, EINVAL, "Active L1 table offset invalid");
    return 0;
}

static int
qcow2_read_backing_name(struct vimg_node *node, struct qcow2_state *s, struct vimg_error *err)
{
    const struct qcow2_header *h = &s->hdr;
    char *name;
    int ret;

    if (!h->backing_file_offset)
        return 0;
    if (h->backing_file_size > QCOW2_MAX_BACKING_NAME)
        return vimg_error_set(err, EINVAL, "Backing file name too long");
    if (!(name = malloc(h->backing_file_size + 1)))
        return vimg_error_set(err, ENOMEM, "Out of memory");
    ret = qcow2_read_meta(node->file, h->backing_file_offset, name, h->backing_file_size, err);
    if (ret < 0) {
        free(name);
        vimg_error_prefix(err, "Could not read backing file name: ");
        return ret;
    }
    name[h->backing_file_size] = '\0';
    free(node->backing_filename);
    node->backing_filename = name;
    if (s->backing_format) {
        free(node->backing_format);
        if (!(node->backing_format = strdup(s->backing_format)))
            return vimg_error_set(err, ENOMEM, "Out of memory");
    }
    return 0;
}

int
qcow2_read_header(struct vimg_node *node, struct qcow2_state *s, struct vimg_error *err)
{
    uint8_t head[QCOW2_V3_HEADER_LENGTH];
    uint8_t *cluster;
    uint64_t ext_end;
    int ret;

    if ((ret = qcow2_read_meta(node->file, 0, head, sizeof(head), err)) < 0) {
        vimg_error_prefix(err, "Could not read qcow2 header: ");
        return ret;
    }
    qcow2_decode_header(head, &s->hdr);
    if ((ret = qcow2_check_basic_header(&s->hdr, head, err)) < 0)
        return ret;
    if (!(cluster = malloc(UINT32_C(1) << s->hdr.cluster_bits)))
        return vimg_error_set(err, ENOMEM, "Out of memory");
    ret = qcow2_read_meta(node->file, 0, cluster, UINT32_C(1) << s->hdr.cluster_bits, err);
    if (ret < 0) {
        free(cluster);
        vimg_error_prefix(err, "Could not read qcow2 header: ");
        return ret;
    }
    qcow2_decode_header(cluster, &s->hdr);
    ext_end = s->hdr.backing_file_offset ? s->hdr.backing_file_offset
                                         : (UINT64_C(1) << s->hdr.cluster_bits);
    ret = qcow2_parse_exts(s, cluster, s->hdr.header_length, ext_end, err);
    free(cluster);
    if (ret < 0)
        return ret;
    if ((ret = qcow2_check_features(s, err)) < 0 ||
        (ret = qcow2_derive_geometry(s, err)) < 0 ||
        (ret = qcow2_check_tables(s, err)) < 0)
        return ret;
    return qcow2_read_backing_name(node, s, err);
}

void
qcow2_free_header(struct qcow2_state *s)
{
    for (size_t i = 0; i < s->n_exts; i++)
        free(s->exts[i].data);
    free(s->exts);
    s->exts = NULL;
    s->n_exts = 0;
    free(s->data_file_name);
    s->data_file_name = NULL;
    free(s->backing_format);
    s->backing_format = NULL;
}

uint32_t
qcow2_put_ext(uint8_t *buf, uint32_t at, uint32_t type, const void *data, uint32_t len)
{
    qcow2_put_be32(buf + at, type);
    qcow2_put_be32(buf + at + 4, len);
    memcpy(buf + at + 8, data, len);
    return at + 8 + (uint32_t)qcow2_align_up(len, 8);
}

static const struct {
    uint8_t type, bit;
    const char *name;
} qcow2_feature_names[QCOW2_FEATURE_TABLE_ENTRIES] = {
    { 0, 0, "dirty bit" }, { 0, 1, "corrupt bit" }, { 0, 2, "external data file" },
    { 0, 3, "compression type" }, { 0, 4, "extended L2 entries" },
    { 1, 0, "lazy refcounts" }, { 2, 0, "bitmaps" }, { 2, 1, "raw external data" },
};

void
qcow2_fill_feature_table(uint8_t *table)
{
    memset(table, 0, QCOW2_FEATURE_TABLE_SIZE);
    for (size_t i = 0; i < QCOW2_FEATURE_TABLE_ENTRIES; i++) {
        uint8_t *e = table + i * QCOW2_FEATURE_ENTRY_SIZE;
        e[0] = qcow2_feature_names[i].type;
        e[1] = qcow2_feature_names[i].bit;
        memcpy(e + 2, qcow2_feature_names[i].name, strlen(qcow2_feature_names[i].name));
    }
}
