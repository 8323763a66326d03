/*
 * qcow2 amend (qemu-img amend -o): lazy_refcounts, size, compat=1.1 upgrade
 * and compat=0.10 downgrade, with qemu-img's checks and texts (observed from
 * qemu-img 7.2). Spec: docs/interop/qcow2.rst of qemu/qemu (SPECS.md,
 * "qcow2"), "Header", "Header extensions" and "Cluster mapping".
 *
 * The order of the changes is QEMU's: upgrade, size, lazy refcounts, then
 * downgrade last, so that a downgrade sees the image as it ends up.
 *
 * A downgrade writes zero clusters out: a zero cluster with a host cluster
 * gets zeros written there; one without becomes unallocated, or over a
 * backing file gets a new cluster of zeros, so that it still reads as zeros.
 *
 * Left out: refcount_bits changes, downgrading images with snapshots, bitmaps
 * or zstd compression, data_file renames and encrypt.* (all refused).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "formats/qcow2/qcow2.h"

/* What amend asked for; has_* says a key was given. */
struct qcow2_amend_params {
    uint32_t version;
    bool has_lazy_refcounts;
    bool has_lazy;
    bool has_size;
    uint64_t size;
    uint64_t refcount_bits;
};

static const char qcow2_lazy_v3_text[] = "Lazy refcounts only supported with compatibility "
    "level 1.1 and above (use compat=1.1 or greater)";

static int
qcow2_amend_parse_compat(const char *compat, uint32_t *version, struct vimg_error *err)
{
    if (strcmp(compat, "0.10") == 0 || strcmp(compat, "v2") == 0)
        *version = 2;
    else if (strcmp(compat, "1.1") == 0 || strcmp(compat, "v3") == 0)
        *version = 3;
    else
        return vimg_error_set(err, EINVAL, "Unknown compatibility level %s", compat);
    return 0;
}

/* One key of the -o list; keys not handled here are refused. */
static int
qcow2_amend_parse_key(struct vimg_node *node, struct vimg_opts *opts, const char *key,
                      struct qcow2_amend_params *p, struct vimg_error *err)
{
    struct qcow2_state *s = node->state;

    if (strcmp(key, "compat") == 0)
        return qcow2_amend_parse_compat(vimg_opts_get(opts, key), &p->version, err);
    if (strcmp(key, "lazy_refcounts") == 0) {
        p->has_lazy = true;
        return vimg_opts_get_bool(opts, key, false, &p->has_lazy_refcounts, err);
    }
    if (strcmp(key, "size") == 0) {
        p->has_size = true;
        return vimg_opts_get_size(opts, key, 0, &p->size, err);
    }
    if (strcmp(key, "refcount_bits") == 0)
        return vimg_opts_get_number(opts, key, 16, &p->refcount_bits, err);
    if (strcmp(key, "backing_file") == 0 || strcmp(key, "backing_fmt") == 0)
        return vimg_error_set(err, EINVAL, "Cannot amend the backing file\n"
                              "You can use 'qemu-img rebase' instead.");
    if (strcmp(key, "data_file") == 0 && !s->has_data_file)
        return vimg_error_set(err, EINVAL, "data-file can only be set for images that use "
                              "an external data file");
    if (strcmp(key, "data_file_raw") == 0 && !s->has_data_file)
        return vimg_error_set(err, EINVAL, "data-file-raw cannot be set on existing images");
    return vimg_error_set(err, ENOTSUP, "Changing option '%s' is not supported", key);
}

static int
qcow2_amend_parse(struct vimg_node *node, struct vimg_opts *opts, struct qcow2_amend_params *p,
                  struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    int ret;

    p->version = s->hdr.version;
    p->refcount_bits = s->refcount_bits;
    for (size_t i = 0; i < vimg_opts_count(opts); i++) {
        if ((ret = qcow2_amend_parse_key(node, opts, vimg_opts_key_at(opts, i), p, err)) < 0)
            return ret;
    }
    if (p->refcount_bits == 0 || p->refcount_bits > 64 ||
        (p->refcount_bits & (p->refcount_bits - 1)))
        return vimg_error_set(err, EINVAL, "Refcount width must be a power of two and may "
                              "not exceed 64 bits");
    /* As QEMU, only a change is checked: lazy refcounts already on go with a downgrade. */
    if (p->has_lazy && p->has_lazy_refcounts && p->version < 3 &&
        !(s->hdr.compatible_features & QCOW2_COMPAT_LAZY_REFCOUNTS))
        return vimg_error_set(err, EINVAL, "%s", qcow2_lazy_v3_text);
    if (p->refcount_bits != s->refcount_bits && p->version < 3)
        return vimg_error_set(err, EINVAL, "Refcount widths other than 16 bits require "
                              "compatibility level 1.1 or above (use compat=1.1 or greater)");
    if (p->refcount_bits != s->refcount_bits)
        return vimg_error_set(err, ENOTSUP, "Changing the refcount width is not supported");
    return 0;
}

/* ---- header ---- */

/* The feature name table qemu-img writes into version 3 images (clusters above 4k). */
static int
qcow2_amend_add_feature_table(struct qcow2_state *s, struct vimg_error *err)
{
    struct qcow2_ext *exts;
    uint8_t *table;

    for (size_t i = 0; i < s->n_exts; i++)
        if (s->exts[i].type == QCOW2_EXT_FEATURE_TABLE)
            return 0;
    if (!(table = malloc(QCOW2_FEATURE_TABLE_SIZE)))
        return vimg_error_set(err, ENOMEM, "Out of memory");
    if (!(exts = realloc(s->exts, (s->n_exts + 1) * sizeof(*exts)))) {
        free(table);
        return vimg_error_set(err, ENOMEM, "Out of memory");
    }
    qcow2_fill_feature_table(table);
    s->exts = exts;
    s->exts[s->n_exts++] = (struct qcow2_ext){
        .type = QCOW2_EXT_FEATURE_TABLE,
        .len = QCOW2_FEATURE_TABLE_SIZE,
        .data = table,
    };
    return 0;
}

/* Drops the extensions version 2 has no use for (the feature name table). */
static void
qcow2_amend_drop_v3_exts(struct qcow2_state *s)
{
    size_t kept = 0;

    for (size_t i = 0; i < s->n_exts; i++) {
        if (s->exts[i].type == QCOW2_EXT_FEATURE_TABLE)
            free(s->exts[i].data);
        else
            s->exts[kept++] = s->exts[i];
    }
    s->n_exts = kept;
}

static int
qcow2_amend_upgrade(struct vimg_node *node, struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    int ret;

    if ((ret = qcow2_flush_metadata(node, err)) < 0)
        return ret;
    if (s->cluster_size > 4096 && (ret = qcow2_amend_add_feature_table(s, err)) < 0)
        return ret;
    s->hdr.version = 3;
    s->hdr.incompatible_features = 0;
    s->hdr.compatible_features = 0;
    s->hdr.autoclear_features = 0;
    s->hdr.refcount_order = 4;
    s->hdr.header_length = QCOW2_V3_HEADER_LENGTH;
    s->hdr.compression_type = QCOW2_COMPRESSION_ZLIB;
    return qcow2_write_header(node, err);
}

static int
qcow2_amend_set_lazy(struct vimg_node *node, bool is_lazy, struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint8_t buf[8];
    int ret;

    if ((ret = qcow2_flush_metadata(node, err)) < 0)
        return ret;
    if (is_lazy)
        s->hdr.compatible_features |= QCOW2_COMPAT_LAZY_REFCOUNTS;
    else
        s->hdr.compatible_features &= ~QCOW2_COMPAT_LAZY_REFCOUNTS;
    qcow2_put_be64(buf, s->hdr.compatible_features);
    if ((ret = qcow2_write_header_field(node, QCOW2_OFF_COMPATIBLE_FEATURES, buf, 8, err)) < 0)
        return ret;
    return vimg_node_flush(node->file, err);
}

/* ---- downgrade ---- */

static int
qcow2_amend_check_downgrade(struct vimg_node *node, struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t incompat = s->hdr.incompatible_features & ~QCOW2_INCOMPAT_DIRTY;

    if (s->has_data_file)
        return vimg_error_set(err, ENOTSUP, "Cannot downgrade an image with a data file");
    if (incompat)
        return vimg_error_set(err, ENOTSUP, "Cannot downgrade an image with incompatible "
                              "features 0x%" PRIx64 " set", incompat);
    if (s->refcount_bits != 16)
        return vimg_error_set(err, ENOTSUP, "compat=0.10 requires refcount_bits=16");
    if (s->hdr.nb_snapshots || s->has_bitmaps_ext)
        return vimg_error_set(err, ENOTSUP, "Downgrading an image with snapshots or bitmaps "
                              "is not supported");
    return 0;
}

/* The version 2 form of one zero L2 entry: zeros written to a host cluster, or unallocated. */
static int
qcow2_amend_unzero_entry(struct vimg_node *node, uint64_t entry, uint64_t *out,
                         struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t host = entry & QCOW2_OFFSET_MASK;
    int ret;

    if (!host && !node->backing_filename) {
        *out = 0;
        return 0;
    }
    if (!host && (ret = qcow2_alloc_clusters(node, 1, &host, err)) < 0)
        return ret;
    if ((ret = qcow2_grow_file(node->file, host + s->cluster_size, err)) < 0 ||
        (ret = vimg_node_pwrite_zeroes(node->file, host, s->cluster_size, 0, err)) < 0)
        return ret;
    *out = host | QCOW2_OFLAG_COPIED;
    return 0;
}

static int
qcow2_amend_unzero_l2(struct vimg_node *node, uint64_t l2_offset, struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint8_t *l2;
    int ret;

    if ((ret = qcow2_cache_get(node, &s->l2_cache, l2_offset, false, &l2, err)) < 0)
        return ret;
    for (uint32_t i = 0; i < s->l2_entries; i++) {
        uint64_t entry = qcow2_be64(l2 + (uint64_t)i * s->l2_entry_size), fixed;
        if ((entry & QCOW2_OFLAG_COMPRESSED) || !(entry & QCOW2_OFLAG_ZERO))
            continue;
        if ((ret = qcow2_amend_unzero_entry(node, entry, &fixed, err)) < 0)
            return ret;
        /* A refcount block allocated meanwhile may have pushed the table out of the cache. */
        if ((ret = qcow2_cache_get(node, &s->l2_cache, l2_offset, false, &l2, err)) < 0)
            return ret;
        qcow2_put_be64(l2 + (uint64_t)i * s->l2_entry_size, fixed);
        qcow2_cache_mark_dirty(&s->l2_cache, l2);
    }
    return 0;
}

static int
qcow2_amend_downgrade(struct vimg_node *node, struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    int ret;

    if ((ret = qcow2_amend_check_downgrade(node, err)) < 0)
        return ret;
    for (uint32_t i = 0; i < s->l1_size; i++) {
        uint64_t l2_offset = s->l1[i] & QCOW2_OFFSET_MASK;
        if (l2_offset && (ret = qcow2_amend_unzero_l2(node, l2_offset, err)) < 0)
            return ret;
    }
    if ((ret = qcow2_flush_metadata(node, err)) < 0)
        return ret;
    qcow2_amend_drop_v3_exts(s);
    s->hdr.version = 2;
    s->hdr.incompatible_features = 0;
    s->hdr.compatible_features = 0;
    s->hdr.autoclear_features = 0;
    s->hdr.header_length = QCOW2_V2_HEADER_LENGTH;
    s->hdr.compression_type = QCOW2_COMPRESSION_ZLIB;
    return qcow2_write_header(node, err);
}

/* ---- the op ---- */

static int
qcow2_amend_header(struct vimg_node *node, const struct qcow2_amend_params *p, bool is_before,
                   struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    bool is_lazy = s->hdr.compatible_features & QCOW2_COMPAT_LAZY_REFCOUNTS;
    int ret = 0;

    pthread_mutex_lock(&s->lock);
    if (is_before && p->version > s->hdr.version)
        ret = qcow2_amend_upgrade(node, err);
    else if (!is_before && p->has_lazy && p->has_lazy_refcounts != is_lazy &&
             s->hdr.version >= 3)
        ret = qcow2_amend_set_lazy(node, p->has_lazy_refcounts, err);
    if (ret == 0 && !is_before && p->version < s->hdr.version)
        ret = qcow2_amend_downgrade(node, err);
    pthread_mutex_unlock(&s->lock);
    return ret;
}

int
qcow2_amend(struct vimg_node *node, struct vimg_opts *opts, bool is_forced,
            struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    struct qcow2_amend_params p = { 0 };
    int ret;

    (void)is_forced;
    if ((ret = qcow2_amend_parse(node, opts, &p, err)) < 0 ||
        (ret = qcow2_amend_header(node, &p, true, err)) < 0)
        return ret;
    if (p.has_size && p.size != s->hdr.size &&
        (ret = qcow2_resize(node, p.size, VIMG_PREALLOC_OFF, err)) < 0)
        return ret;
    return qcow2_amend_header(node, &p, false, err);
}
