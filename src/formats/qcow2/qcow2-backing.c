/*
 * qcow2: rewriting the header cluster (spec "Header", "Header extensions")
 * when the backing file or the bitmaps extension changes, and emptying the
 * image after a commit.
 *
 * The header cluster is rebuilt from the state: the header fields, the
 * backing format extension first (as QEMU writes it), every other extension
 * kept as read, the bitmaps extension from the state, the end marker and the
 * backing file name. It is written with one write.
 *
 * Emptying a version 3 image without snapshots, bitmaps or data file brings it
 * back to the layout of a new image (header, refcount table, one refcount
 * block, L1 table) and truncates the file, as QEMU does; the dirty bit is set
 * meanwhile, so a crash leaves an image whose refcounts are rebuilt on open.
 * Other images get every L2 entry cleared instead.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "formats/qcow2/qcow2.h"

#define QCOW2_BITMAPS_EXT_SIZE 24

/* Bytes the extensions take (with the end marker), with the new ones from the state. */
static uint64_t
qcow2_exts_bytes(const struct qcow2_state *s)
{
    uint64_t n = 8;

    if (s->backing_format)
        n += 8 + qcow2_align_up(strlen(s->backing_format), 8);
    if (s->has_bitmaps_ext)
        n += 8 + QCOW2_BITMAPS_EXT_SIZE;
    for (size_t i = 0; i < s->n_exts; i++)
        if (s->exts[i].type != QCOW2_EXT_BACKING_FORMAT && s->exts[i].type != QCOW2_EXT_BITMAPS)
            n += 8 + qcow2_align_up(s->exts[i].len, 8);
    return n;
}

static uint32_t
qcow2_put_exts(const struct qcow2_state *s, uint8_t *buf, uint32_t at)
{
    uint8_t bm[QCOW2_BITMAPS_EXT_SIZE] = { 0 };
    bool has_put_bitmaps = false;

    if (s->backing_format)
        at = qcow2_put_ext(buf, at, QCOW2_EXT_BACKING_FORMAT, s->backing_format,
                           (uint32_t)strlen(s->backing_format));
    qcow2_put_be32(bm, s->nb_bitmaps);
    qcow2_put_be64(bm + 8, s->bitmaps_dir_size);
    qcow2_put_be64(bm + 16, s->bitmaps_dir_offset);
    for (size_t i = 0; i < s->n_exts; i++) {
        const struct qcow2_ext *e = &s->exts[i];
        if (e->type == QCOW2_EXT_BACKING_FORMAT)
            continue;
        if (e->type == QCOW2_EXT_BITMAPS) {
            if (s->has_bitmaps_ext && !has_put_bitmaps)
                at = qcow2_put_ext(buf, at, QCOW2_EXT_BITMAPS, bm, sizeof(bm));
            has_put_bitmaps = true;
            continue;
        }
        at = qcow2_put_ext(buf, at, e->type, e->data, e->len);
    }
    if (s->has_bitmaps_ext && !has_put_bitmaps)
        at = qcow2_put_ext(buf, at, QCOW2_EXT_BITMAPS, bm, sizeof(bm));
    return at + 8;
}

int
qcow2_write_header(struct vimg_node *node, struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    const char *name = node->backing_filename;
    uint64_t name_len = name ? strlen(name) : 0;
    uint32_t hdr_len = s->hdr.version < 3 ? QCOW2_V2_HEADER_LENGTH : s->hdr.header_length;
    uint8_t *buf;
    uint32_t at;
    int ret;

    if (name_len > QCOW2_MAX_BACKING_NAME)
        return vimg_error_set(err, EINVAL, "Backing file name too long");
    if (hdr_len + qcow2_exts_bytes(s) + name_len > s->cluster_size)
        return vimg_error_set(err, ENOSPC, "No space left on device");
    if (!(buf = calloc(1, s->cluster_size)))
        return vimg_error_set(err, ENOMEM, "Out of memory");
    at = qcow2_put_exts(s, buf, hdr_len);
    s->hdr.backing_file_offset = name ? at : 0;
    s->hdr.backing_file_size = (uint32_t)name_len;
    if (name)
        memcpy(buf + at, name, name_len);
    qcow2_encode_header(&s->hdr, buf);
    if (s->hdr.version >= 3 && hdr_len > QCOW2_V3_HEADER_LENGTH)
        memset(buf + QCOW2_V3_HEADER_LENGTH, 0, hdr_len - QCOW2_V3_HEADER_LENGTH);
    ret = vimg_node_pwrite(node->file, 0, buf, s->cluster_size, 0, err);
    if (ret == 0)
        ret = vimg_node_flush(node->file, err);
    free(buf);
    return ret;
}

static int
qcow2_replace_string(char **dst, const char *src, struct vimg_error *err)
{
    char *copy = NULL;

    if (src && !(copy = strdup(src)))
        return vimg_error_set(err, ENOMEM, "Out of memory");
    free(*dst);
    *dst = copy;
    return 0;
}

int
qcow2_change_backing_file(struct vimg_node *node, const char *backing_file,
                          const char *backing_fmt, struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    int ret;

    if (backing_file && s->is_data_file_raw)
        return vimg_error_set(err, EINVAL, "Invalid argument");
    if (backing_fmt && strlen(backing_fmt) > QCOW2_MAX_BACKING_NAME)
        return vimg_error_set(err, EINVAL, "Invalid argument");
    pthread_mutex_lock(&s->lock);
    ret = qcow2_flush_metadata(node, err);
    if (ret == 0 && ((ret = qcow2_replace_string(&node->backing_filename, backing_file,
                                                 err)) < 0 ||
                     (ret = qcow2_replace_string(&node->backing_format, backing_fmt,
                                                 err)) < 0 ||
                     (ret = qcow2_replace_string(&s->backing_format, backing_fmt, err)) < 0))
        goto out;
    if (ret == 0)
        ret = qcow2_write_header(node, err);
out:
    pthread_mutex_unlock(&s->lock);
    return ret;
}

/* ---- emptying ---- */

static void
qcow2_cache_drop_all(struct qcow2_cache *c)
{
    for (unsigned i = 0; i < c->n_entries; i++) {
        c->entries[i].offset = 0;
        c->entries[i].is_dirty = false;
    }
}

static int
qcow2_set_dirty_bit(struct vimg_node *node, bool is_dirty, struct vimg_error *err)
{
    struct qcow2_state *s = node->state;

    if (is_dirty)
        s->hdr.incompatible_features |= QCOW2_INCOMPAT_DIRTY;
    else
        s->hdr.incompatible_features &= ~QCOW2_INCOMPAT_DIRTY;
    return qcow2_write_incompatible_features(node, err);
}

/* Writes n zero bytes at offset of the image file. */
static int
qcow2_write_zeros(struct vimg_node *node, uint64_t offset, uint64_t n, struct vimg_error *err)
{
    uint8_t *buf = calloc(1, n ? n : 1);
    int ret;

    if (!buf)
        return vimg_error_set(err, ENOMEM, "Out of memory");
    ret = qcow2_pwrite_file(node->file, offset, buf, n, err);
    free(buf);
    return ret;
}

/* Refcount table at cluster 1 naming one block at cluster 2 that counts clusters [0, n). */
static int
qcow2_write_fresh_refcounts(struct vimg_node *node, uint64_t n, struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t cs = s->cluster_size;
    uint8_t *buf = calloc(1, cs);
    uint8_t hdr[12];
    int ret;

    if (!buf)
        return vimg_error_set(err, ENOMEM, "Out of memory");
    for (uint64_t i = 0; i < n; i++)
        qcow2_refcount_set_raw(s, buf, i, 1);
    ret = qcow2_pwrite_file(node->file, 2 * cs, buf, cs, err);
    memset(buf, 0, cs);
    qcow2_put_be64(buf, 2 * cs);
    if (ret == 0)
        ret = qcow2_pwrite_file(node->file, cs, buf, cs, err);
    free(buf);
    if (ret < 0)
        return ret;
    qcow2_put_be64(hdr, cs);
    qcow2_put_be32(hdr + 8, 1);
    s->hdr.refcount_table_offset = cs;
    s->hdr.refcount_table_clusters = 1;
    return qcow2_write_header_field(node, QCOW2_OFF_REFCOUNT_TABLE_OFFSET, hdr, 12, err);
}

static int
qcow2_empty_completely(struct vimg_node *node, struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t cs = s->cluster_size;
    uint64_t l1_bytes = (uint64_t)s->l1_size * 8;
    uint64_t l1_clusters = qcow2_align_up(l1_bytes ? l1_bytes : 1, cs) / cs;
    uint8_t buf[8];
    int ret;

    if ((ret = qcow2_set_dirty_bit(node, true, err)) < 0 ||
        (ret = qcow2_write_zeros(node, s->hdr.l1_table_offset, l1_bytes, err)) < 0 ||
        (ret = vimg_node_flush(node->file, err)) < 0 ||
        (ret = qcow2_grow_file(node->file, (3 + l1_clusters) * cs, err)) < 0 ||
        (ret = vimg_node_pwrite_zeroes(node->file, 3 * cs, l1_clusters * cs, 0, err)) < 0)
        return ret;
    qcow2_put_be64(buf, 3 * cs);
    if ((ret = qcow2_write_header_field(node, QCOW2_OFF_L1_TABLE_OFFSET, buf, 8, err)) < 0 ||
        (ret = vimg_node_flush(node->file, err)) < 0)
        return ret;
    s->hdr.l1_table_offset = 3 * cs;
    memset(s->l1, 0, l1_bytes);
    qcow2_cache_drop_all(&s->l2_cache);
    qcow2_cache_drop_all(&s->rb_cache);
    if ((ret = qcow2_write_fresh_refcounts(node, 3 + l1_clusters, err)) < 0 ||
        (ret = vimg_node_flush(node->file, err)) < 0 ||
        (ret = vimg_node_truncate(node->file, (3 + l1_clusters) * cs, true, "off", err)) < 0)
        return ret;
    free(s->rt);
    s->rt = NULL;
    if ((ret = qcow2_load_refcount_table(node, err)) < 0)
        return ret;
    s->free_cluster_index = 0;
    s->alloc_end = 3 + l1_clusters;
    return qcow2_set_dirty_bit(node, false, err);
}

/* Clears one L2 table; the clusters it pointed at are freed once it is on disk. */
static int
qcow2_empty_l2(struct vimg_node *node, uint64_t l2_offset, struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t *extents = calloc(2 * (size_t)s->l2_entries, sizeof(uint64_t));
    size_t n = 0;
    uint8_t *l2;
    int ret;

    if (!extents)
        return vimg_error_set(err, ENOMEM, "Out of memory");
    if ((ret = qcow2_cache_get(node, &s->l2_cache, l2_offset, false, &l2, err)) < 0)
        goto out;
    for (uint32_t i = 0; i < s->l2_entries; i++) {
        uint64_t entry = qcow2_be64(l2 + (uint64_t)i * s->l2_entry_size);
        if (entry & QCOW2_OFLAG_COMPRESSED) {
            qcow2_compressed_extent(s, entry, &extents[n], &extents[n + 1]);
            n += 2;
        } else if ((entry & QCOW2_OFFSET_MASK) && !s->has_data_file) {
            extents[n++] = entry & QCOW2_OFFSET_MASK;
            extents[n++] = s->cluster_size;
        }
    }
    memset(l2, 0, s->cluster_size);
    qcow2_cache_mark_dirty(&s->l2_cache, l2);
    if ((ret = qcow2_cache_write_dirty(node, &s->l2_cache, err)) < 0 ||
        (ret = vimg_node_flush(node->file, err)) < 0)
        goto out;
    for (size_t i = 0; i < n && ret == 0; i += 2)
        ret = qcow2_free_clusters(node, extents[i], extents[i + 1], err);
out:
    free(extents);
    return ret;
}

int
qcow2_make_empty(struct vimg_node *node, struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t l1_clusters = qcow2_align_up((uint64_t)s->l1_size * 8 + 1, s->cluster_size) /
                           s->cluster_size;
    int ret;

    pthread_mutex_lock(&s->lock);
    if ((ret = qcow2_flush_metadata(node, err)) < 0)
        goto out;
    if (s->hdr.version >= 3 && !s->hdr.nb_snapshots && !s->nb_bitmaps && !s->has_data_file &&
        3 + l1_clusters <= s->rb_entries) {
        ret = qcow2_empty_completely(node, err);
        goto out;
    }
    for (uint32_t i = 0; i < s->l1_size && ret == 0; i++) {
        uint64_t l2_offset = s->l1[i] & QCOW2_OFFSET_MASK;
        if (l2_offset)
            ret = qcow2_empty_l2(node, l2_offset, err);
    }
    if (ret == 0)
        ret = qcow2_flush_metadata(node, err);
out:
    pthread_mutex_unlock(&s->lock);
    return ret;
}
