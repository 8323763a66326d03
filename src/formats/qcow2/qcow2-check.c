/*
 * qcow2 consistency check, as `qemu-img check` does it: count every
 * reference to each host cluster (header, L1/L2 tables, data, refcount
 * structures, snapshot tables, bitmaps, encryption header), compare with the
 * stored refcounts, and report leaks (stored > referenced) and corruptions
 * (stored < referenced, wrong COPIED flags). With fix, stored refcounts are
 * set to the counted ones.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "formats/qcow2/qcow2.h"

/* At most this many clusters are counted: 2^28 references use 1 GiB. */
#define QCOW2_CHECK_MAX_CLUSTERS (UINT64_C(1) << 28)

struct qcow2_check_ctx {
    struct vimg_node *node;
    struct qcow2_state *s;
    uint32_t *refs;
    uint64_t n_refs;
    struct vimg_check_result *res;
    uint64_t last_host;         /* for fragmentation: host offset of the last data cluster */
};

static int
qcow2_check_ref(struct qcow2_check_ctx *c, uint64_t offset, uint64_t bytes,
                struct vimg_error *err)
{
    uint64_t first = offset / c->s->cluster_size;
    uint64_t end = bytes ? (offset + bytes - 1) / c->s->cluster_size + 1 : first;

    if (end > QCOW2_CHECK_MAX_CLUSTERS) {
        c->res->corruptions++;
        return 0;
    }
    if (end > c->n_refs) {
        uint64_t n = end * 2 < QCOW2_CHECK_MAX_CLUSTERS ? end * 2 : QCOW2_CHECK_MAX_CLUSTERS;
        uint32_t *r = realloc(c->refs, n * sizeof(*r));
        if (!r)
            return vimg_error_set(err, ENOMEM, "Out of memory");
        memset(r + c->n_refs, 0, (n - c->n_refs) * sizeof(*r));
        c->refs = r;
        c->n_refs = n;
    }
    for (uint64_t i = first; i < end; i++)
        if (c->refs[i] < UINT32_MAX)
            c->refs[i]++;
    return 0;
}

static int
qcow2_check_read_table(struct qcow2_check_ctx *c, uint64_t offset, uint64_t bytes,
                       uint8_t **out, struct vimg_error *err)
{
    uint8_t *buf = malloc(bytes ? bytes : 1);
    int ret;

    if (!buf)
        return vimg_error_set(err, ENOMEM, "Out of memory");
    if ((ret = qcow2_read_meta(c->node->file, offset, buf, bytes, err)) < 0) {
        free(buf);
        return ret;
    }
    *out = buf;
    return 0;
}

static int
qcow2_check_l2_entry(struct qcow2_check_ctx *c, uint64_t entry, uint64_t bitmap,
                     bool is_active, struct vimg_error *err)
{
    struct qcow2_state *s = c->s;
    uint64_t host = entry & QCOW2_OFFSET_MASK, coff, csize, rc;
    bool has_data;
    int ret;

    if (entry & QCOW2_OFLAG_COMPRESSED) {
        qcow2_compressed_extent(s, entry, &coff, &csize);
        if (is_active) {
            c->res->allocated_clusters++;
            c->res->compressed_clusters++;
            c->last_host = 0;
        }
        return qcow2_check_ref(c, coff, csize, err);
    }
    has_data = host != 0 && !s->has_data_file;
    if (!has_data)
        return 0;
    if (is_active) {
        if (!s->has_extended_l2 || (bitmap & 0xffffffffu)) {
            c->res->allocated_clusters++;
            if (c->last_host && host != c->last_host + s->cluster_size)
                c->res->fragmented_clusters++;
            c->last_host = host;
        }
        if ((ret = qcow2_get_refcount(c->node, host / s->cluster_size, &rc, err)) < 0)
            return ret;
        if ((rc == 1) != !!(entry & QCOW2_OFLAG_COPIED))
            c->res->corruptions++;
    }
    if (host % s->cluster_size) {
        c->res->corruptions++;
        return 0;
    }
    return qcow2_check_ref(c, host, s->cluster_size, err);
}

static int
qcow2_check_l1(struct qcow2_check_ctx *c, uint64_t l1_offset, uint32_t l1_size, bool is_active,
               struct vimg_error *err)
{
    struct qcow2_state *s = c->s;
    uint8_t *l1 = NULL, *l2 = NULL;
    int ret;

    if ((ret = qcow2_check_ref(c, l1_offset, (uint64_t)l1_size * 8, err)) < 0 ||
        (ret = qcow2_check_read_table(c, l1_offset, (uint64_t)l1_size * 8, &l1, err)) < 0)
        return ret;
    for (uint32_t i = 0; i < l1_size && ret == 0; i++) {
        uint64_t e = qcow2_be64(l1 + (uint64_t)i * 8), off = e & QCOW2_OFFSET_MASK, rc;
        if (!off)
            continue;
        if (off % s->cluster_size) {
            c->res->corruptions++;
            continue;
        }
        if (is_active && (ret = qcow2_get_refcount(c->node, off / s->cluster_size, &rc,
                                                     err)) == 0 &&
            (rc == 1) != !!(e & QCOW2_OFLAG_COPIED))
            c->res->corruptions++;
        if (ret == 0)
            ret = qcow2_check_ref(c, off, s->cluster_size, err);
        if (ret == 0)
            ret = qcow2_check_read_table(c, off, s->cluster_size, &l2, err);
        for (uint32_t j = 0; ret == 0 && j < s->l2_entries; j++) {
            uint8_t *p = l2 + (uint64_t)j * s->l2_entry_size;
            ret = qcow2_check_l2_entry(c, qcow2_be64(p),
                                       s->has_extended_l2 ? qcow2_be64(p + 8) : 0,
                                       is_active, err);
        }
        free(l2);
        l2 = NULL;
    }
    free(l1);
    return ret;
}

/* Snapshot table entries: their L1 tables and what those reach. */
static int
qcow2_check_snapshots(struct qcow2_check_ctx *c, struct vimg_error *err)
{
    struct qcow2_state *s = c->s;
    uint64_t off = s->hdr.snapshots_offset, start = off;
    uint8_t e[40];
    int ret;

    for (uint32_t i = 0; i < s->hdr.nb_snapshots; i++) {
        uint64_t l1_off;
        uint32_t l1_size, extra;
        uint16_t id_len, name_len;
        if ((ret = qcow2_read_meta(c->node->file, off, e, sizeof(e), err)) < 0)
            return ret;
        l1_off = qcow2_be64(e);
        l1_size = qcow2_be32(e + 8);
        id_len = qcow2_be16(e + 12);
        name_len = qcow2_be16(e + 14);
        extra = qcow2_be32(e + 36);
        if (l1_size > QCOW2_MAX_L1_BYTES / 8 || extra > 1024)
            return vimg_error_set(err, EINVAL, "Snapshot %" PRIu32 " is invalid (L1 size %"
                                  PRIu32 ", extra data %" PRIu32 " bytes)", i, l1_size, extra);
        off += qcow2_align_up(40 + (uint64_t)extra + id_len + name_len, 8);
        if ((ret = qcow2_check_l1(c, l1_off, l1_size, false, err)) < 0)
            return ret;
    }
    return s->hdr.nb_snapshots ? qcow2_check_ref(c, start, off - start, err) : 0;
}

static int
qcow2_check_bitmaps(struct qcow2_check_ctx *c, struct vimg_error *err)
{
    struct qcow2_state *s = c->s;
    uint64_t at = 0;
    uint8_t *dir, *table;
    int ret;

    if (!s->has_bitmaps_ext || s->bitmaps_dir_size > (64u << 20))
        return 0;
    if ((ret = qcow2_check_ref(c, s->bitmaps_dir_offset, s->bitmaps_dir_size, err)) < 0 ||
        (ret = qcow2_check_read_table(c, s->bitmaps_dir_offset, s->bitmaps_dir_size, &dir,
                                      err)) < 0)
        return ret;
    for (uint32_t i = 0; i < s->nb_bitmaps && ret == 0 && at + 24 <= s->bitmaps_dir_size;
         i++) {
        uint64_t t_off = qcow2_be64(dir + at);
        uint32_t t_size = qcow2_be32(dir + at + 8);
        at += qcow2_align_up(24 + (uint64_t)qcow2_be32(dir + at + 20) +
                             qcow2_be16(dir + at + 18), 8);
        if (t_size > QCOW2_MAX_L1_BYTES / 8)
            continue;
        if ((ret = qcow2_check_ref(c, t_off, (uint64_t)t_size * 8, err)) < 0 ||
            (ret = qcow2_check_read_table(c, t_off, (uint64_t)t_size * 8, &table, err)) < 0)
            break;
        for (uint32_t j = 0; j < t_size && ret == 0; j++) {
            uint64_t e = qcow2_be64(table + (uint64_t)j * 8) & QCOW2_OFFSET_MASK;
            if (e)
                ret = qcow2_check_ref(c, e, s->cluster_size, err);
        }
        free(table);
    }
    free(dir);
    return ret;
}

static int
qcow2_check_collect(struct qcow2_check_ctx *c, struct vimg_error *err)
{
    struct qcow2_state *s = c->s;
    int ret;

    if ((ret = qcow2_check_ref(c, 0, s->cluster_size, err)) < 0 ||
        (ret = qcow2_check_l1(c, s->hdr.l1_table_offset, s->l1_size, true, err)) < 0 ||
        (ret = qcow2_check_snapshots(c, err)) < 0 ||
        (ret = qcow2_check_bitmaps(c, err)) < 0)
        return ret;
    if (s->crypto_length && (ret = qcow2_check_ref(c, s->crypto_offset, s->crypto_length,
                                                   err)) < 0)
        return ret;
    if ((ret = qcow2_check_ref(c, s->hdr.refcount_table_offset,
                               (uint64_t)s->hdr.refcount_table_clusters * s->cluster_size,
                               err)) < 0)
        return ret;
    for (uint32_t i = 0; i < s->rt_size; i++) {
        uint64_t off = s->rt[i] & QCOW2_RT_OFFSET_MASK;
        if (off && (ret = qcow2_check_ref(c, off, s->cluster_size, err)) < 0)
            return ret;
    }
    return 0;
}

/* Sets the stored refcount of cluster i to value (under repair). */
static int
qcow2_check_set(struct qcow2_check_ctx *c, uint64_t i, uint64_t stored, uint64_t value,
                struct vimg_error *err)
{
    int ret = 0;

    while (stored < value && ret == 0) {
        ret = qcow2_update_refcount(c->node, i * c->s->cluster_size, c->s->cluster_size, 1,
                                    err);
        stored++;
    }
    while (stored > value && ret == 0) {
        ret = qcow2_update_refcount(c->node, i * c->s->cluster_size, c->s->cluster_size, -1,
                                    err);
        stored--;
    }
    return ret;
}

static int
qcow2_check_compare(struct qcow2_check_ctx *c, int fix, struct vimg_error *err)
{
    struct qcow2_state *s = c->s;
    uint64_t end = (uint64_t)s->rt_size * s->rb_entries;
    int ret;

    if (end < c->n_refs)
        end = c->n_refs;
    for (uint64_t i = 0; i < end; i++) {
        uint64_t stored, counted = i < c->n_refs ? c->refs[i] : 0;
        if ((i % s->rb_entries) == 0 && i / s->rb_entries < s->rt_size &&
            !(s->rt[i / s->rb_entries] & QCOW2_RT_OFFSET_MASK) && i + s->rb_entries <= end) {
            bool has_refs = false;
            for (uint64_t j = i; j < i + s->rb_entries && j < c->n_refs && !has_refs; j++)
                has_refs = c->refs[j] != 0;
            if (!has_refs) {
                i += s->rb_entries - 1;
                continue;
            }
        }
        if ((ret = qcow2_get_refcount(c->node, i, &stored, err)) < 0)
            return ret;
        if (stored || counted)
            c->res->image_end_offset = (int64_t)((i + 1) * s->cluster_size);
        if (stored == counted)
            continue;
        if (stored > counted && (fix & VIMG_CHECK_FIX_LEAKS)) {
            if ((ret = qcow2_check_set(c, i, stored, counted, err)) < 0)
                return ret;
            c->res->leaks_fixed++;
        } else if (stored < counted && (fix & VIMG_CHECK_FIX_ERRORS)) {
            if ((ret = qcow2_check_set(c, i, stored, counted, err)) < 0)
                return ret;
            c->res->corruptions_fixed++;
        } else if (stored > counted) {
            c->res->leaks++;
        } else {
            c->res->corruptions++;
        }
    }
    return 0;
}

int
qcow2_check(struct vimg_node *node, int fix, struct vimg_check_result *result,
            struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    struct qcow2_check_ctx c = { .node = node, .s = s, .res = result };
    int ret;

    pthread_mutex_lock(&s->lock);
    if (!node->is_read_only && (ret = qcow2_flush_metadata(node, err)) < 0)
        goto out;
    result->total_clusters = (int64_t)((s->hdr.size + s->cluster_size - 1) / s->cluster_size);
    if ((ret = qcow2_check_collect(&c, err)) < 0)
        goto out;
    ret = qcow2_check_compare(&c, node->is_read_only ? 0 : fix, err);
    if (ret == 0 && !node->is_read_only)
        ret = qcow2_flush_metadata(node, err);
out:
    pthread_mutex_unlock(&s->lock);
    free(c.refs);
    return ret;
}
