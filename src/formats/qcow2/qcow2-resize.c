/*
 * qcow2 resize (qemu-img resize, qemu-io truncate), with QEMU's rules:
 * sizes are multiples of 512; shrinking unmaps every cluster past the new
 * end (allocated or not; as QEMU's discard, an L2 table is made for each L1
 * entry of the cut part that has none, and those past the end go again),
 * discards the clusters that frees, keeps the L1 size and truncates the file
 * after the last cluster in use; growing over a backing file longer than the
 * old size makes the new area read as zeros. Growing with preallocation lays
 * the image out as QEMU 7.2 does (observed): falloc/full put a refcount area
 * (new blocks, then a new table) at the end of what is in use, the new
 * clusters right after it, then the L2 tables; metadata allocates per L2
 * table the table, then one run, a refcount block it needs right after the
 * run. Persistent dirty bitmaps take the new size (stored at close).
 *
 * Left out: QEMU also drops refcount blocks that count no used cluster
 * when shrinking; ours stay (the image is as valid, its file may be longer).
 * A metadata preallocation that must grow the refcount table grows it as our
 * allocator does, not at QEMU's place.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "formats/qcow2/qcow2.h"

/* What gives an L2 entry a host cluster (a preallocated growth leaves it as it is). */
#define QCOW2_HOST_BITS     (QCOW2_OFFSET_MASK | QCOW2_OFLAG_COMPRESSED)
/* Extended L2 bitmap word: every subcluster allocated, none zero. */
#define QCOW2_EXT_ALL_ALLOC 0xffffffffULL

static int
qcow2_check_resize(struct vimg_node *node, uint64_t size, int prealloc, struct vimg_error *err)
{
    struct qcow2_state *s = node->state;

    if (size % 512)
        return vimg_error_set(err, EINVAL, "The new size must be a multiple of 512");
    if (s->hdr.nb_snapshots && s->hdr.version < 3)
        return vimg_error_set(err, ENOTSUP, "Can't resize a v2 image which has snapshots");
    if (size < s->hdr.size && prealloc != VIMG_PREALLOC_OFF)
        return vimg_error_set(err, ENOTSUP, "Preallocation can't be used for shrinking an "
                              "image");
    return 0;
}

/* Cuts the image file (or the data file) after what the image still uses. */
static int
qcow2_trim_storage(struct vimg_node *node, uint64_t size, struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    struct vimg_node *file = s->has_data_file ? node->data_file : node->file;
    uint64_t end = size, end_index;
    int64_t len;
    int ret;

    if (!file)
        return 0;
    if (!s->has_data_file) {
        if ((ret = qcow2_used_end(node, &end_index, err)) < 0)
            return ret;
        s->alloc_end = end_index;
        end = end_index * s->cluster_size;
    }
    /* As QEMU: cut when longer than that, its length counted in whole sectors. */
    if ((len = vimg_node_length(file, err)) < 0)
        return (int)len;
    if ((uint64_t)len <= end)
        return 0;
    ret = vimg_node_truncate(file, end, true, "off", err);
    /* As QEMU, a file that cannot be cut keeps its tail: the image is valid either way. */
    return ret == -ENOTSUP ? 0 : ret;
}

/* Host clusters the active tables reach from guest offset start on (their tables included). */
static int
qcow2_tail_hosts(struct vimg_node *node, uint64_t start, uint64_t **out, size_t *n_out,
                 struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t cover = (uint64_t)s->l2_entries * s->cluster_size, *v = NULL;
    size_t n = 0, cap = 0;
    int ret = 0;

    for (uint64_t i = start / cover; i < s->l1_size && ret == 0; i++) {
        uint64_t first = i * cover >= start ? 0 : (start - i * cover) / s->cluster_size;
        uint8_t *l2;
        if (!(s->l1[i] & QCOW2_OFFSET_MASK))
            continue;
        for (uint64_t j = first == 0 ? 0 : first + 1; j <= s->l2_entries; j++) {
            uint64_t host, e;
            if (j == 0) {
                host = s->l1[i] & QCOW2_OFFSET_MASK;
            } else {
                if ((ret = qcow2_get_l2(node, i * cover, false, &l2, err)) < 0 || !l2)
                    break;
                e = qcow2_be64(l2 + (j - 1) * s->l2_entry_size);
                host = e & QCOW2_OFLAG_COMPRESSED ? 0 : e & QCOW2_OFFSET_MASK;
                if (!host)
                    continue;
            }
            if (n == cap) {
                uint64_t *p = realloc(v, (cap = cap ? cap * 2 : 64) * sizeof(*v));
                if (!p) {
                    ret = vimg_error_set(err, ENOMEM, "Out of memory");
                    break;
                }
                v = p;
            }
            v[n++] = host;
        }
    }
    if (ret < 0 || s->has_data_file) {
        free(v);
        v = NULL;
        n = 0;
    }
    *out = v;
    *n_out = n;
    return ret;
}

/*
 * Unmaps everything past the new end; as QEMU, the clusters that frees are
 * discarded in the file, then the file is cut after what is still in use.
 */
static int
qcow2_shrink(struct vimg_node *node, uint64_t size, struct vimg_error *err)
{
    uint64_t old_size = ((struct qcow2_state *)node->state)->hdr.size;
    struct qcow2_state *s = node->state;
    uint64_t start = qcow2_align_up(size, s->cluster_size), *hosts;
    uint64_t cover = (uint64_t)s->l2_entries * s->cluster_size;
    size_t n_hosts;
    int ret;

    /*
     * As QEMU's discard of the cut part: each L2 table it spans is made when
     * missing (the one the new end falls in stays, the others go again).
     */
    for (uint64_t i = start / cover; i < s->l1_size && i * cover < old_size; i++) {
        uint8_t *l2;
        if (!(s->l1[i] & QCOW2_OFFSET_MASK) &&
            (ret = qcow2_get_l2(node, i * cover, true, &l2, err)) < 0)
            return ret;
    }
    if ((ret = qcow2_tail_hosts(node, start, &hosts, &n_hosts, err)) < 0)
        return ret;
    if ((ret = qcow2_discard_tail(node, start, err)) < 0 ||
        (ret = qcow2_flush_metadata(node, err)) < 0) {
        free(hosts);
        return ret;
    }
    for (size_t i = 0; i < n_hosts && ret == 0; i++) {
        uint64_t rc;
        if ((ret = qcow2_get_refcount(node, hosts[i] / s->cluster_size, &rc, err)) < 0)
            break;
        if (rc == 0 && (ret = vimg_node_discard(node->file, hosts[i], s->cluster_size,
                                                NULL)) < 0 && ret != -ENOTSUP)
            ret = vimg_error_set(err, -ret, "Could not discard cluster 0x%" PRIx64, hosts[i]);
        else
            ret = 0;
    }
    free(hosts);
    if (ret < 0)
        return ret;
    return qcow2_trim_storage(node, size, err);
}

static int
qcow2_set_size(struct vimg_node *node, uint64_t size, struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t cover = (uint64_t)s->l2_entries * s->cluster_size;
    uint8_t buf[8];
    int ret;

    if ((ret = qcow2_grow_l1(node, size / cover + (size % cover ? 1 : 0), err)) < 0)
        return vimg_error_set(err, -ret, "Failed to grow the L1 table: %s", strerror(-ret));
    qcow2_put_be64(buf, size);
    if ((ret = qcow2_write_header_field(node, QCOW2_OFF_SIZE, buf, 8, err)) < 0)
        return ret;
    s->hdr.size = size;
    return 0;
}

/* ---- preallocation=falloc|full: QEMU's layout ---- */

/*
 * A refcount area at cluster start, as QEMU lays it out before a
 * preallocated growth: refcount blocks for every index that has none up to
 * what start + extra clusters (and the area itself) need, then a new
 * refcount table holding the old entries and theirs. The old table is
 * freed. *area_end: the first cluster after the area.
 */
static int
qcow2_refcount_area(struct vimg_node *node, uint64_t start, uint64_t extra,
                    uint64_t *area_end, struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t per_cluster = s->cluster_size / 8, old_tc = s->hdr.refcount_table_clusters;
    uint64_t old_off = s->hdr.refcount_table_offset, nb = 0, tc = old_tc, n_ti = 0;
    uint64_t *rt = NULL, entries, b;
    uint8_t *block = NULL, *table = NULL, hdr[12];
    int ret = 0;

    /* Blocks to cover everything, the area included; new ones for indexes without. */
    for (;;) {
        uint64_t end = start + extra + nb + tc, nb2 = 0, tc2;
        n_ti = (end + s->rb_entries - 1) / s->rb_entries;
        for (uint64_t ti = 0; ti < n_ti; ti++)
            if (ti >= s->rt_size || !(s->rt[ti] & QCOW2_RT_OFFSET_MASK))
                nb2++;
        tc2 = (n_ti + per_cluster - 1) / per_cluster;
        if (tc2 < old_tc)
            tc2 = old_tc;
        if (nb2 == nb && tc2 == tc)
            break;
        nb = nb2;
        tc = tc2;
    }
    if (tc * s->cluster_size > QCOW2_MAX_REFTABLE_BYTES)
        return vimg_error_set(err, EFBIG, "Refcount table too large: %" PRIu64 " clusters "
                              "(at most %u bytes)", tc, QCOW2_MAX_REFTABLE_BYTES);
    entries = tc * per_cluster;
    rt = calloc(entries, sizeof(*rt));
    block = malloc(s->cluster_size);
    table = malloc(tc * s->cluster_size);
    if (!rt || !block || !table) {
        ret = vimg_error_set(err, ENOMEM, "Out of memory");
        goto out;
    }
    for (uint64_t ti = 0; ti < s->rt_size && ti < entries; ti++)
        rt[ti] = s->rt[ti];
    b = start;
    for (uint64_t ti = 0; ti < n_ti; ti++)
        if (!(rt[ti] & QCOW2_RT_OFFSET_MASK))
            rt[ti] = b++ * s->cluster_size;
    /* The area's own clusters counted, in old blocks first, then in the new ones. */
    for (uint64_t ci = start; ci < start + nb + tc && ret == 0; ci++) {
        uint64_t ti = ci / s->rb_entries;
        if (ti < s->rt_size && (s->rt[ti] & QCOW2_RT_OFFSET_MASK))
            ret = qcow2_update_refcount(node, ci * s->cluster_size, s->cluster_size, 1, err);
    }
    if (ret == 0)
        ret = qcow2_flush_metadata(node, err);
    for (uint64_t ti = 0; ti < n_ti && ret == 0; ti++) {
        uint64_t off = rt[ti];
        if (ti < s->rt_size && (s->rt[ti] & QCOW2_RT_OFFSET_MASK))
            continue;
        memset(block, 0, s->cluster_size);
        for (uint64_t ci = start; ci < start + nb + tc; ci++)
            if (ci / s->rb_entries == ti)
                qcow2_refcount_set_raw(s, block, ci % s->rb_entries, 1);
        ret = qcow2_pwrite_file(node->file, off, block, s->cluster_size, err);
    }
    for (uint64_t ti = 0; ti < entries; ti++)
        qcow2_put_be64(table + ti * 8, rt[ti]);
    if (ret == 0)
        ret = qcow2_pwrite_file(node->file, (start + nb) * s->cluster_size, table,
                                tc * s->cluster_size, err);
    if (ret == 0)
        ret = vimg_node_flush(node->file, err);
    if (ret < 0)
        goto out;
    qcow2_put_be64(hdr, (start + nb) * s->cluster_size);
    qcow2_put_be32(hdr + 8, (uint32_t)tc);
    if ((ret = qcow2_write_header_field(node, QCOW2_OFF_REFCOUNT_TABLE_OFFSET, hdr, 12,
                                        err)) < 0 ||
        (ret = vimg_node_flush(node->file, err)) < 0)
        goto out;
    s->hdr.refcount_table_offset = (start + nb) * s->cluster_size;
    s->hdr.refcount_table_clusters = (uint32_t)tc;
    free(s->rt);
    s->rt = rt;
    s->rt_size = (uint32_t)entries;
    rt = NULL;
    if (start + nb + tc > s->alloc_end)
        s->alloc_end = start + nb + tc;
    *area_end = start + nb + tc;
    ret = qcow2_update_refcount(node, old_off, old_tc * s->cluster_size, -1, err);
    if (old_off / s->cluster_size < s->free_cluster_index)
        s->free_cluster_index = old_off / s->cluster_size;
out:
    free(rt);
    free(block);
    free(table);
    return ret;
}

/*
 * Growth with preallocation=falloc|full as QEMU lays it out: a refcount
 * area at the end of what is in use, the new clusters right after it in
 * guest order (one slot per guest cluster from the one holding the old end;
 * slots of clusters that already have one stay unused), the file grown over
 * them in the given mode, then the L2 tables, first fit.
 */
static int
qcow2_prealloc_grow(struct vimg_node *node, uint64_t old_size, uint64_t size, int prealloc,
                    const uint8_t *head, bool alloc_all, struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t cs = s->cluster_size, first_g = old_size / cs;
    uint64_t nb_data = (size + cs - 1) / cs - first_g;
    uint64_t nb_l2 = (nb_data + s->l2_entries - 1) / s->l2_entries;
    uint64_t used_end, start = 0;
    int ret;

    if ((ret = qcow2_flush_metadata(node, err)) < 0 ||
        (ret = qcow2_used_end(node, &used_end, err)) < 0 ||
        (ret = qcow2_refcount_area(node, used_end, nb_data + nb_l2, &start, err)) < 0)
        return ret;
    /*
     * The data slots get their counts only once the file holds them, as in QEMU.
     * The file grows, so exactness does not matter (QEMU asks for none: an NBD
     * export long enough is fine).
     */
    if ((ret = vimg_node_truncate(node->file, (start + nb_data) * cs, false,
                                  prealloc == VIMG_PREALLOC_FULL ? "full" : "falloc",
                                  err)) < 0) {
        vimg_error_prefix(err, "Failed to resize underlying file: ");
        return ret;
    }
    /* Slots counted in guest order, the clusters that already have one skipped. */
    for (uint64_t g = first_g; g < first_g + nb_data; g++) {
        uint64_t run = 0, index;
        uint8_t *l2;
        for (; g + run < first_g + nb_data; run++) {
            if (head && g + run == first_g)
                continue;
            if ((ret = qcow2_get_l2(node, (g + run) * cs, false, &l2, err)) < 0)
                return ret;
            index = (g + run) % s->l2_entries;
            if (l2 && qcow2_be64(l2 + index * s->l2_entry_size) & QCOW2_HOST_BITS)
                break;
        }
        if (run && (ret = qcow2_update_refcount(node, (start + g - first_g) * cs, run * cs, 1,
                                                err)) < 0)
            return ret;
        g += run;
    }
    if (start + nb_data > s->alloc_end)
        s->alloc_end = start + nb_data;
    if ((ret = qcow2_flush_metadata(node, err)) < 0)
        return ret;
    for (uint64_t g = first_g; g < first_g + nb_data; g++) {
        uint64_t index = g % s->l2_entries, entry;
        uint8_t *l2;
        if ((ret = qcow2_get_l2(node, g * cs, true, &l2, err)) < 0)
            return ret;
        entry = qcow2_be64(l2 + index * s->l2_entry_size);
        if ((entry & QCOW2_HOST_BITS) && !(head && g == first_g))
            continue;
        qcow2_put_be64(l2 + index * s->l2_entry_size,
                       (start + g - first_g) * cs | QCOW2_OFLAG_COPIED);
        /*
         * Subclusters: all allocated when the backing file shows past the old
         * end (the file holds the zeros); else none, the moved cluster keeping
         * its bitmap.
         */
        if (s->has_extended_l2 && (alloc_all || !(head && g == first_g)))
            qcow2_put_be64(l2 + index * s->l2_entry_size + 8,
                           alloc_all ? QCOW2_EXT_ALL_ALLOC : 0);
        qcow2_cache_mark_dirty(&s->l2_cache, l2);
        if (!(head && g == first_g))
            continue;
        /* The cluster holding the old end moves: its head copied, the old host freed. */
        if ((ret = qcow2_pwrite_file(node->file, start * cs, head, old_size % cs, err)) < 0 ||
            (ret = qcow2_flush_metadata(node, err)) < 0)
            return ret;
        if (entry & QCOW2_OFLAG_COMPRESSED) {
            uint64_t coff, csize;
            qcow2_compressed_extent(s, entry, &coff, &csize);
            ret = qcow2_free_clusters(node, coff, csize, err);
        } else if (entry & QCOW2_OFFSET_MASK) {
            ret = qcow2_free_clusters(node, entry & QCOW2_OFFSET_MASK, cs, err);
        }
        if (ret < 0)
            return ret;
    }
    return qcow2_flush_metadata(node, err);
}

/* Zeroes clusters of [offset, +n) that lie inside the file: a freed cluster keeps old data. */
static int
qcow2_zero_reused(struct vimg_node *node, uint64_t offset, uint64_t n, struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    int64_t len = vimg_node_length(node->file, err);
    uint64_t end = offset + n * s->cluster_size;

    if (len < 0)
        return (int)len;
    if ((uint64_t)len <= offset)
        return 0;
    if (end > (uint64_t)len)
        end = (uint64_t)len;
    return vimg_node_pwrite_zeroes(node->file, offset, end - offset, 0, err);
}

/*
 * Before an allocation of n clusters, as QEMU's allocator goes: the run is
 * taken first and a refcount block it needs and lacks goes right after it
 * (counting itself when it covers itself). Blocks the table has no room for
 * are left to the allocator. *next: the first cluster after run and blocks.
 */
static int
qcow2_blocks_after_run(struct vimg_node *node, uint64_t n, uint64_t *next,
                       struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t p = s->free_cluster_index, found = 0, rc;
    uint8_t *block = NULL, buf[8];
    int ret = 0;

    for (uint64_t i = p; found < n; i++) {
        if ((ret = qcow2_get_refcount(node, i, &rc, err)) < 0)
            return ret;
        found = rc ? 0 : found + 1;
        p = i + 1 - found;
    }
    *next = p + n;
    for (uint64_t ti = p / s->rb_entries; ti <= (p + n - 1) / s->rb_entries && ret == 0; ti++) {
        uint64_t b = *next;
        if (ti >= s->rt_size || (s->rt[ti] & QCOW2_RT_OFFSET_MASK) ||
            b / s->rb_entries >= s->rt_size ||
            (b / s->rb_entries != ti && !(s->rt[b / s->rb_entries] & QCOW2_RT_OFFSET_MASK)))
            continue;
        if (!block && !(block = malloc(s->cluster_size)))
            return vimg_error_set(err, ENOMEM, "Out of memory");
        memset(block, 0, s->cluster_size);
        if (b / s->rb_entries == ti)
            qcow2_refcount_set_raw(s, block, b % s->rb_entries, 1);
        qcow2_put_be64(buf, b * s->cluster_size);
        if ((ret = qcow2_pwrite_file(node->file, b * s->cluster_size, block, s->cluster_size,
                                     err)) < 0 ||
            (ret = vimg_node_flush(node->file, err)) < 0 ||
            (ret = qcow2_pwrite_file(node->file, s->hdr.refcount_table_offset + ti * 8, buf, 8,
                                     err)) < 0)
            break;
        s->rt[ti] = b * s->cluster_size;
        if (b / s->rb_entries != ti)
            ret = qcow2_update_refcount(node, b * s->cluster_size, s->cluster_size, 1, err);
        if (b + 1 > s->alloc_end)
            s->alloc_end = b + 1;
        (*next)++;
    }
    free(block);
    return ret;
}

/*
 * Growth with preallocation=metadata as QEMU lays it out: per L2 table, the
 * table first, then one contiguous run for its clusters without a host. As
 * QEMU's allocator, a run's search leaves the holes it skipped behind.
 */
static int
qcow2_prealloc_metadata_grow(struct vimg_node *node, uint64_t old_size, uint64_t size,
                             struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t cs = s->cluster_size, end = (size + cs - 1) / cs;
    int ret = 0;

    for (uint64_t g = old_size / cs; g < end && ret == 0;) {
        uint64_t l2_end = (g / s->l2_entries + 1) * s->l2_entries, host, next;
        uint8_t *l2;
        if (l2_end > end)
            l2_end = end;
        if ((ret = qcow2_get_l2(node, g * cs, false, &l2, err)) < 0 ||
            (!l2 && (ret = qcow2_blocks_after_run(node, 1, &next, err)) < 0) ||
            (ret = qcow2_get_l2(node, g * cs, true, &l2, err)) < 0)
            break;
        while (g < l2_end && ret == 0) {
            uint64_t run = 0;
            for (; g + run < l2_end; run++)
                if (qcow2_be64(l2 + ((g + run) % s->l2_entries) * s->l2_entry_size) &
                    QCOW2_HOST_BITS)
                    break;
            if (!run) {
                g++;
                continue;
            }
            if ((ret = qcow2_blocks_after_run(node, run, &next, err)) < 0 ||
                (ret = qcow2_alloc_clusters(node, run, &host, err)) < 0 ||
                (ret = qcow2_zero_reused(node, host, run, err)) < 0 ||
                (ret = qcow2_get_l2(node, g * cs, true, &l2, err)) < 0)
                break;
            s->free_cluster_index = host / cs + run > next ? host / cs + run : next;
            for (uint64_t i = 0; i < run; i++, g++) {
                uint64_t index = g % s->l2_entries;
                qcow2_put_be64(l2 + index * s->l2_entry_size, (host + i * cs) |
                               QCOW2_OFLAG_COPIED);
                if (s->has_extended_l2)
                    qcow2_put_be64(l2 + index * s->l2_entry_size + 8, 0);
            }
            qcow2_cache_mark_dirty(&s->l2_cache, l2);
        }
    }
    if (ret == 0)
        ret = qcow2_flush_metadata(node, err);
    return ret;
}

/* Whether a backing file would show through [old_size, new end): QEMU zero-fills it then. */
static int
qcow2_backing_shows(struct vimg_node *node, uint64_t old_size, bool *shows,
                    struct vimg_error *err)
{
    int64_t len;

    *shows = false;
    if (!node->backing)
        return 0;
    if ((len = vimg_node_length(node->backing, err)) < 0)
        return (int)len;
    *shows = (uint64_t)len > old_size;
    return 0;
}

/*
 * Zero clusters from the first subcluster boundary on (the last one whole:
 * it ends the image); zeros written as data in the piece before it.
 */
static int
qcow2_zero_fill(struct vimg_node *node, uint64_t old_size, uint64_t size,
                struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t zero_start = qcow2_align_up(old_size, s->subcluster_size);
    uint64_t head_end = zero_start < size ? zero_start : size;
    uint8_t *zeros;
    int ret = 0;

    if (size > zero_start &&
        (ret = qcow2_zero(node, zero_start, size - zero_start, 0, err)) < 0)
        return ret;
    if (head_end <= old_size)
        return 0;
    if (!(zeros = calloc(1, head_end - old_size)))
        return vimg_error_set(err, ENOMEM, "Out of memory");
    ret = qcow2_write(node, old_size, head_end - old_size,
                      &(struct iovec){ .iov_base = zeros, .iov_len = head_end - old_size }, 1,
                      err);
    free(zeros);
    return ret;
}

int
qcow2_resize(struct vimg_node *node, uint64_t size, int prealloc, struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t old_size = s->hdr.size;
    bool must_zero = false, alloc_all = false, is_laid_out;
    uint8_t *head = NULL;
    int ret;

    if ((ret = qcow2_check_resize(node, size, prealloc, err)) < 0)
        return ret;
    if (size > old_size && (ret = qcow2_backing_shows(node, old_size, &must_zero, err)) < 0)
        return ret;
    /* QEMU lays out the same size too: a new refcount table, the last cluster moved. */
    is_laid_out = size >= old_size && !s->has_data_file && !s->crypt &&
                  (prealloc == VIMG_PREALLOC_FALLOC || prealloc == VIMG_PREALLOC_FULL);
    /* Laid out, the new range is in allocated clusters reading the file's zeros. */
    if (is_laid_out) {
        alloc_all = must_zero;
        must_zero = false;
    }
    if (must_zero && s->hdr.version < 3)
        return vimg_error_set(err, ENOTSUP, "Failed to zero out new clusters: Operation not "
                              "supported");
    /* The part of the last cluster in use before the old end, as the guest reads it. */
    if (is_laid_out && old_size % s->cluster_size) {
        uint64_t n = old_size % s->cluster_size;
        if (!(head = malloc(n)))
            return vimg_error_set(err, ENOMEM, "Out of memory");
        if ((ret = qcow2_read(node, old_size - n, n,
                              &(struct iovec){ .iov_base = head, .iov_len = n }, 1, err)) < 0) {
            free(head);
            return ret;
        }
    }
    pthread_mutex_lock(&s->lock);
    if (size < old_size)
        ret = qcow2_shrink(node, size, err);
    if (ret == 0)
        ret = qcow2_set_size(node, size, err);
    if (ret == 0 && is_laid_out) {
        ret = qcow2_prealloc_grow(node, old_size, size, prealloc, head, alloc_all, err);
        /* A failed growth leaves the guest size as it was (QEMU writes it last). */
        if (ret < 0 && s->hdr.size != old_size) {
            struct vimg_error e = { 0 };
            qcow2_set_size(node, old_size, &e);
            vimg_error_clear(&e);
        }
    }
    if (ret == 0 && size > old_size && !s->has_data_file && prealloc == VIMG_PREALLOC_METADATA)
        ret = qcow2_prealloc_metadata_grow(node, old_size, size, err);
    pthread_mutex_unlock(&s->lock);
    free(head);
    if (ret == 0 && must_zero)
        ret = qcow2_zero_fill(node, old_size, size, err);
    if (ret == 0 && size != old_size) {
        pthread_mutex_lock(&s->lock);
        ret = qcow2_bitmaps_resize(node, old_size, err);
        pthread_mutex_unlock(&s->lock);
    }
    return ret;
}
