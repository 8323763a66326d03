/*
 * qcow2 refcounts (spec "Host cluster management"): the refcount table,
 * refcount blocks of 1..64-bit entries, cluster allocation and freeing, and
 * growing the refcount table. Callers hold the state's lock.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "formats/qcow2/qcow2.h"

uint64_t
qcow2_refcount_get_raw(const struct qcow2_state *s, const uint8_t *block, uint64_t index)
{
    uint32_t bits = s->refcount_bits;
    uint64_t v = 0;

    if (bits < 8) {
        uint64_t bit = index * bits;
        return (uint64_t)(block[bit / 8] >> (bit % 8)) & ((1u << bits) - 1);
    }
    for (uint32_t i = 0; i < bits / 8; i++)
        v = v << 8 | block[index * (bits / 8) + i];
    return v;
}

void
qcow2_refcount_set_raw(struct qcow2_state *s, uint8_t *block, uint64_t index, uint64_t value)
{
    uint32_t bits = s->refcount_bits;

    if (bits < 8) {
        uint64_t bit = index * bits;
        uint8_t mask = (uint8_t)(((1u << bits) - 1) << (bit % 8));
        block[bit / 8] = (uint8_t)((block[bit / 8] & ~mask) | ((value << (bit % 8)) & mask));
        return;
    }
    for (uint32_t i = bits / 8; i-- > 0;) {
        block[index * (bits / 8) + i] = (uint8_t)value;
        value >>= 8;
    }
}

int
qcow2_load_refcount_table(struct vimg_node *node, struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t bytes = (uint64_t)s->hdr.refcount_table_clusters * s->cluster_size;
    uint8_t *buf;
    int ret;

    /* bytes is at most 8 MiB: the header check bounded refcount_table_clusters. */
    if (!(buf = malloc(bytes)) || !(s->rt = calloc(bytes / 8, sizeof(uint64_t)))) {
        free(buf);
        return vimg_error_set(err, ENOMEM, "Out of memory");
    }
    ret = qcow2_read_meta(node->file, s->hdr.refcount_table_offset, buf, bytes, err);
    if (ret == 0) {
        s->rt_size = (uint32_t)(bytes / 8);
        for (uint32_t i = 0; i < s->rt_size; i++)
            s->rt[i] = qcow2_be64(buf + (uint64_t)i * 8);
    }
    free(buf);
    return ret;
}

/* The refcount block for a cluster, or *block = NULL when none is allocated. */
static int
qcow2_find_refblock(struct vimg_node *node, uint64_t cluster_index, uint8_t **block,
                    struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t ti = cluster_index / s->rb_entries;
    uint64_t off;

    *block = NULL;
    if (ti >= s->rt_size || !(off = s->rt[ti] & QCOW2_RT_OFFSET_MASK))
        return 0;
    if (off % s->cluster_size)
        return vimg_error_set(err, EIO, "Refblock offset %#" PRIx64 " unaligned (reftable "
                              "index: %#" PRIx64 ")", off, ti);
    return qcow2_cache_get(node, &s->rb_cache, off, false, block, err);
}

int
qcow2_get_refcount(struct vimg_node *node, uint64_t cluster_index, uint64_t *refcount,
                   struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint8_t *block;
    int ret;

    if ((ret = qcow2_find_refblock(node, cluster_index, &block, err)) < 0)
        return ret;
    *refcount = block ? qcow2_refcount_get_raw(s, block, cluster_index % s->rb_entries) : 0;
    return 0;
}

/*
 * Whether the image looks preallocated with preallocation=metadata, as QEMU
 * decides it: at least max(10/9 of, 2 more than) the clusters the file has
 * storage for are in use. Only then can a data cluster be a hole in the file,
 * so only then does block status ask the file (a cost of two lseeks per run).
 * Any failure counts as "no".
 */
bool
qcow2_detect_metadata_prealloc(struct vimg_node *node)
{
    struct qcow2_state *s = node->state;
    struct vimg_error ignored = { 0 };
    int64_t len = vimg_node_length(node->file, &ignored);
    int64_t allocated = vimg_node_allocated_size(node->file, &ignored);
    uint64_t real, threshold, hits = 0, end;

    if (len < 0 || allocated < 0)
        return false;
    real = (uint64_t)allocated / s->cluster_size;
    threshold = real * 10 / 9 > real + 2 ? real * 10 / 9 : real + 2;
    end = ((uint64_t)len + s->cluster_size - 1) / s->cluster_size;
    for (uint64_t i = 0; i < end && hits < threshold; i++) {
        uint64_t rc;
        if (qcow2_get_refcount(node, i, &rc, &ignored) < 0)
            return false;
        hits += rc > 0;
    }
    return hits >= threshold;
}

/*
 * Refcounts that call a cluster of the header, the active L1 table, the
 * refcount table or the bitmap directory free are corrupt: handing it out
 * would overwrite that metadata. As QEMU's overlap check, this is a fatal
 * corruption event (image marked corrupt, the request fails with EIO).
 */
static int
qcow2_check_free_run(struct vimg_node *node, uint64_t first, uint64_t n,
                     struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t start = first * s->cluster_size, end = (first + n) * s->cluster_size;
    const struct { const char *name; uint64_t off, len; } meta[] = {
        { "qcow2_header", 0, s->cluster_size },
        { "active L1 table", s->hdr.l1_table_offset, (uint64_t)s->l1_size * 8 },
        { "refcount table", s->hdr.refcount_table_offset,
          (uint64_t)s->hdr.refcount_table_clusters * s->cluster_size },
        { "bitmap directory", s->bitmaps_dir_offset, s->bitmaps_dir_size },
    };

    for (size_t i = 0; i < sizeof(meta) / sizeof(meta[0]); i++) {
        if (meta[i].len && meta[i].off < end && start < meta[i].off + meta[i].len)
            return qcow2_corruption_error(node, err, "Preventing invalid write on metadata "
                                          "(overlaps with %s)", meta[i].name);
    }
    return 0;
}

/* First run of n clusters with refcount 0, from free_cluster_index on. */
static int
qcow2_find_free(struct vimg_node *node, uint64_t n, uint64_t *first, struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t i = s->free_cluster_index, run = 0;
    bool is_first = true;
    int ret;

    for (;; i++) {
        uint64_t rc;
        if (i / s->rb_entries >= s->rt_size) {
            /* Nothing past the table's reach is in use. */
            *first = i - run;
            return qcow2_check_free_run(node, *first, n, err);
        }
        if ((ret = qcow2_get_refcount(node, i, &rc, err)) < 0)
            return ret;
        if (rc) {
            run = 0;
            continue;
        }
        if (is_first) {
            s->free_cluster_index = i;
            is_first = false;
        }
        if (++run == n) {
            *first = i + 1 - n;
            return qcow2_check_free_run(node, *first, n, err);
        }
    }
}

static int
qcow2_write_rt_entry(struct vimg_node *node, uint64_t ti, struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint8_t buf[8];

    qcow2_put_be64(buf, s->rt[ti]);
    return qcow2_pwrite_file(node->file, s->hdr.refcount_table_offset + ti * 8, buf, 8, err);
}

static void
qcow2_note_alloc(struct qcow2_state *s, uint64_t end_index)
{
    if (end_index > s->alloc_end)
        s->alloc_end = end_index;
}

/* Sizes of a table growth area: nb new blocks then tc table clusters from start. */
static int
qcow2_plan_rt_growth(const struct qcow2_state *s, uint64_t ti_needed, uint64_t start,
                     uint64_t *nb_out, uint64_t *tc_out, uint64_t *entries_out,
                     struct vimg_error *err)
{
    uint64_t per_cluster = s->cluster_size / 8;
    uint64_t entries = ti_needed + 1, nb = 0, tc;

    if (entries < (uint64_t)s->rt_size * 3 / 2)
        entries = (uint64_t)s->rt_size * 3 / 2;
    for (;;) {
        uint64_t end, need, nb2;
        tc = (entries + per_cluster - 1) / per_cluster;
        end = start + nb + tc;
        need = (end + s->rb_entries - 1) / s->rb_entries;
        nb2 = (end - 1) / s->rb_entries - start / s->rb_entries + 1;
        if (need > entries) {
            entries = need;
            continue;
        }
        if (nb2 != nb) {
            nb = nb2;
            continue;
        }
        break;
    }
    if (tc * s->cluster_size > QCOW2_MAX_REFTABLE_BYTES)
        return vimg_error_set(err, EFBIG, "Refcount table too large: %" PRIu64 " clusters "
                              "(at most %u bytes)", tc, QCOW2_MAX_REFTABLE_BYTES);
    *nb_out = nb;
    *tc_out = tc;
    *entries_out = tc * per_cluster;
    return 0;
}

/* Writes the new refcount blocks of a growth area; each counts the area's clusters it covers. */
static int
qcow2_write_area_blocks(struct vimg_node *node, uint64_t start, uint64_t nb, uint64_t end,
                        uint64_t *new_rt, struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint8_t *block = calloc(1, s->cluster_size);
    int ret = 0;

    if (!block)
        return vimg_error_set(err, ENOMEM, "Out of memory");
    for (uint64_t j = 0; j < nb && ret == 0; j++) {
        uint64_t ti = start / s->rb_entries + j;
        uint64_t first = ti * s->rb_entries, last = first + s->rb_entries;
        memset(block, 0, s->cluster_size);
        for (uint64_t c = first > start ? first : start; c < end && c < last; c++)
            qcow2_refcount_set_raw(s, block, c - first, 1);
        new_rt[ti] = (start + j) * s->cluster_size;
        ret = qcow2_pwrite_file(node->file, (start + j) * s->cluster_size, block,
                               s->cluster_size, err);
    }
    free(block);
    return ret;
}

/*
 * Moves the refcount table to a bigger one at the end of the image, with
 * new refcount blocks for the clusters the move itself uses. The header
 * points at the new table only once it is on disk; the old one is freed last.
 */
static int
qcow2_grow_refcount_table(struct vimg_node *node, uint64_t ti_needed, struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    int64_t file_len = vimg_node_length(node->file, err);
    uint64_t start, nb = 0, tc = 0, entries = 0, old_off = s->hdr.refcount_table_offset;
    uint64_t old_clusters = s->hdr.refcount_table_clusters;
    uint64_t *new_rt = NULL;
    uint8_t *buf = NULL, hdr[12];
    int ret;

    if (file_len < 0)
        return (int)file_len;
    start = (uint64_t)s->rt_size * s->rb_entries;
    if (start < s->alloc_end)
        start = s->alloc_end;
    if (start < qcow2_align_up((uint64_t)file_len, s->cluster_size) / s->cluster_size)
        start = qcow2_align_up((uint64_t)file_len, s->cluster_size) / s->cluster_size;
    if ((ret = qcow2_plan_rt_growth(s, ti_needed, start, &nb, &tc, &entries, err)) < 0)
        return ret;
    new_rt = calloc(entries, sizeof(*new_rt));
    buf = calloc(entries, 8);
    if (!new_rt || !buf) {
        ret = vimg_error_set(err, ENOMEM, "Out of memory");
        goto out;
    }
    memcpy(new_rt, s->rt, (size_t)s->rt_size * sizeof(*new_rt));
    if ((ret = qcow2_write_area_blocks(node, start, nb, start + nb + tc, new_rt, err)) < 0)
        goto out;
    for (uint64_t i = 0; i < entries; i++)
        qcow2_put_be64(buf + i * 8, new_rt[i]);
    if ((ret = qcow2_pwrite_file(node->file, (start + nb) * s->cluster_size, buf, entries * 8,
                                 err)) < 0 ||
        (ret = vimg_node_flush(node->file, err)) < 0)
        goto out;
    qcow2_put_be64(hdr, (start + nb) * s->cluster_size);
    qcow2_put_be32(hdr + 8, (uint32_t)tc);
    if ((ret = qcow2_write_header_field(node, QCOW2_OFF_REFCOUNT_TABLE_OFFSET, hdr, 12,
                                        err)) < 0 ||
        (ret = vimg_node_flush(node->file, err)) < 0)
        goto out;
    free(s->rt);
    s->rt = new_rt;
    new_rt = NULL;
    s->rt_size = (uint32_t)entries;
    s->hdr.refcount_table_offset = (start + nb) * s->cluster_size;
    s->hdr.refcount_table_clusters = (uint32_t)tc;
    qcow2_note_alloc(s, start + nb + tc);
    ret = qcow2_update_refcount(node, old_off, old_clusters * s->cluster_size, -1, err);
out:
    free(new_rt);
    free(buf);
    return ret;
}

/*
 * Makes sure table index ti has a refcount block. A new block takes the
 * first free cluster; when no block counts that cluster yet, it becomes the
 * block that counts itself and we look again.
 */
static int
qcow2_ensure_refblock(struct vimg_node *node, uint64_t ti, struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint8_t *block;
    int ret;

    for (;;) {
        uint64_t new_off, ci, ti2;
        if (ti >= s->rt_size) {
            if ((ret = qcow2_grow_refcount_table(node, ti, err)) < 0)
                return ret;
            continue;
        }
        if (s->rt[ti] & QCOW2_RT_OFFSET_MASK)
            return 0;
        if ((ret = qcow2_find_free(node, 1, &new_off, err)) < 0)
            return ret;
        ci = new_off;
        new_off *= s->cluster_size;
        ti2 = ci / s->rb_entries;
        if (ti2 >= s->rt_size) {
            if ((ret = qcow2_grow_refcount_table(node, ti2, err)) < 0)
                return ret;
            continue;
        }
        if (!(s->rt[ti2] & QCOW2_RT_OFFSET_MASK)) {
            /* A block that counts itself. */
            if ((ret = qcow2_cache_get(node, &s->rb_cache, new_off, true, &block, err)) < 0)
                return ret;
            qcow2_refcount_set_raw(s, block, ci % s->rb_entries, 1);
            qcow2_cache_mark_dirty(&s->rb_cache, block);
        } else {
            if ((ret = qcow2_find_refblock(node, ci, &block, err)) < 0)
                return ret;
            qcow2_refcount_set_raw(s, block, ci % s->rb_entries, 1);
            qcow2_cache_mark_dirty(&s->rb_cache, block);
            if ((ret = qcow2_cache_get(node, &s->rb_cache, new_off, true, &block, err)) < 0)
                return ret;
            qcow2_cache_mark_dirty(&s->rb_cache, block);
            ti2 = ti;
        }
        qcow2_note_alloc(s, ci + 1);
        /* The block (and the count of its own cluster) reaches disk before the table entry. */
        if ((ret = qcow2_cache_write_dirty(node, &s->rb_cache, err)) < 0 ||
            (ret = vimg_node_flush(node->file, err)) < 0)
            return ret;
        s->rt[ti2] = new_off;
        if ((ret = qcow2_write_rt_entry(node, ti2, err)) < 0)
            return ret;
    }
}

int
qcow2_update_refcount(struct vimg_node *node, uint64_t offset, uint64_t bytes, int delta,
                      struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t first = offset / s->cluster_size;
    uint64_t end = bytes ? (offset + bytes - 1) / s->cluster_size + 1 : first;
    int ret;

    /*
     * Wait out data I/O still in flight to clusters mapped before the caller
     * changed the metadata: once their count drops they may be reused.
     */
    if (delta < 0 && end > first) {
        pthread_rwlock_wrlock(&s->io_lock);
        pthread_rwlock_unlock(&s->io_lock);
    }
    for (uint64_t ci = first; ci < end; ci++) {
        uint8_t *block;
        uint64_t rc;
        if (delta > 0 && (ret = qcow2_ensure_refblock(node, ci / s->rb_entries, err)) < 0)
            return ret;
        if ((ret = qcow2_find_refblock(node, ci, &block, err)) < 0)
            return ret;
        if (!block)
            return vimg_error_set(err, EIO, "Cannot free cluster 0x%" PRIx64 ": it has no "
                                  "refcount block", ci * s->cluster_size);
        rc = qcow2_refcount_get_raw(s, block, ci % s->rb_entries);
        if (delta < 0 && rc == 0)
            return vimg_error_set(err, EIO, "Refcount of cluster 0x%" PRIx64 " would drop "
                                  "below zero", ci * s->cluster_size);
        if (delta > 0 && rc == s->refcount_max)
            return vimg_error_set(err, ERANGE, "Refcount of cluster 0x%" PRIx64 " would "
                                  "exceed %" PRIu64, ci * s->cluster_size, s->refcount_max);
        rc = delta > 0 ? rc + 1 : rc - 1;
        qcow2_refcount_set_raw(s, block, ci % s->rb_entries, rc);
        qcow2_cache_mark_dirty(&s->rb_cache, block);
        if (rc == 0) {
            if (ci < s->free_cluster_index)
                s->free_cluster_index = ci;
            qcow2_cache_forget(&s->l2_cache, ci * s->cluster_size);
        }
    }
    return 0;
}

int
qcow2_alloc_clusters(struct vimg_node *node, uint64_t n, uint64_t *offset,
                     struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    int ret;

    for (;;) {
        uint64_t first, ti_first, ti_last;
        bool has_all = true;
        if ((ret = qcow2_find_free(node, n, &first, err)) < 0)
            return ret;
        ti_first = first / s->rb_entries;
        ti_last = (first + n - 1) / s->rb_entries;
        for (uint64_t ti = ti_first; ti <= ti_last; ti++) {
            if (ti < s->rt_size && (s->rt[ti] & QCOW2_RT_OFFSET_MASK))
                continue;
            /* A new block may land in our run: look for a run again afterwards. */
            if ((ret = qcow2_ensure_refblock(node, ti, err)) < 0)
                return ret;
            has_all = false;
        }
        if (!has_all)
            continue;
        if ((ret = qcow2_update_refcount(node, first * s->cluster_size, n * s->cluster_size,
                                         1, err)) < 0)
            return ret;
        qcow2_note_alloc(s, first + n);
        if (first == s->free_cluster_index)
            s->free_cluster_index = first + n;
        *offset = first * s->cluster_size;
        return 0;
    }
}

/*
 * The metadata that pointed at these clusters reaches disk (with a flush)
 * before their refcounts drop, so a crash cannot leave a cluster both
 * referenced and free.
 */
int
qcow2_free_clusters(struct vimg_node *node, uint64_t offset, uint64_t bytes,
                    struct vimg_error *err)
{
    int ret;

    if ((ret = qcow2_flush_metadata(node, err)) < 0 ||
        (ret = vimg_node_flush(node->file, err)) < 0)
        return ret;
    return qcow2_update_refcount(node, offset, bytes, -1, err);
}

/* *end_index: one past the last cluster with a nonzero refcount (0 when none). */
int
qcow2_used_end(struct vimg_node *node, uint64_t *end_index, struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    int ret;

    *end_index = 0;
    for (uint64_t ti = s->rt_size; ti-- > 0;) {
        uint8_t *block;
        if ((ret = qcow2_find_refblock(node, ti * s->rb_entries, &block, err)) < 0)
            return ret;
        for (uint64_t i = s->rb_entries; block && i-- > 0;) {
            if (qcow2_refcount_get_raw(s, block, i)) {
                *end_index = ti * s->rb_entries + i + 1;
                return 0;
            }
        }
    }
    return 0;
}
