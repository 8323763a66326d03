/*
 * qcow2 internal snapshots (spec "Snapshots"): the snapshot table, and
 * create, list, apply and delete as QEMU 7.2 does them. A snapshot owns a
 * copy of the L1 table; its L2 tables and data clusters are shared with the
 * active image, each L1 table that reaches a cluster counting one reference
 * to it, and an entry has the COPIED flag exactly when its cluster's
 * refcount is one. The table is always rewritten whole at a new place: it is
 * on disk before the header names it, and the old one is freed after.
 *
 * Left out: VM state (qemu-img never saves any; its size is kept as read).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "formats/qcow2/qcow2.h"

/* Snapshot table entry fields (spec "Snapshot table entry"). */
#define QCOW2_SN_OFF_L1_TABLE_OFFSET   0
#define QCOW2_SN_OFF_L1_SIZE           8
#define QCOW2_SN_OFF_ID_LEN            12
#define QCOW2_SN_OFF_NAME_LEN          14
#define QCOW2_SN_OFF_DATE_SEC          16
#define QCOW2_SN_OFF_DATE_NSEC         20
#define QCOW2_SN_OFF_VM_CLOCK_NSEC     24
#define QCOW2_SN_OFF_VM_STATE_SIZE     32
#define QCOW2_SN_OFF_EXTRA_SIZE        36
#define QCOW2_SN_FIXED                 40
/* Extra data: vm_state_size_large, disk_size, icount. */
#define QCOW2_SN_EXTRA_SIZE            24
#define QCOW2_SN_MAX_EXTRA             1024
#define QCOW2_SN_MAX_TABLE             (64u << 20)

struct qcow2_snapshot {
    uint64_t l1_table_offset;
    uint32_t l1_size;
    char *id;
    char *name;
    uint32_t date_sec;
    uint32_t date_nsec;
    uint64_t vm_clock_nsec;
    uint64_t vm_state_size;
    uint64_t disk_size;
    uint64_t icount;            /* UINT64_MAX: none */
    uint32_t extra_size;
    uint8_t *extra;             /* as read, so unknown extra data survives a rewrite */
};

static void
qcow2_free_snapshots(struct qcow2_snapshot *sn, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++) {
        free(sn[i].id);
        free(sn[i].name);
        free(sn[i].extra);
    }
    free(sn);
}

static char *
qcow2_sn_strndup(const uint8_t *p, size_t len)
{
    char *s = malloc(len + 1);

    if (s) {
        memcpy(s, p, len);
        s[len] = '\0';
    }
    return s;
}

/* Decodes one entry at *offset of the file, advancing *offset past it. */
static int
qcow2_decode_snapshot(struct vimg_node *node, uint64_t *offset, struct qcow2_snapshot *sn,
                      struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint8_t h[QCOW2_SN_FIXED], *var;
    uint32_t id_len, name_len;
    int ret;

    if ((ret = qcow2_read_meta(node->file, *offset, h, sizeof(h), err)) < 0)
        return ret;
    sn->l1_table_offset = qcow2_be64(h + QCOW2_SN_OFF_L1_TABLE_OFFSET);
    sn->l1_size = qcow2_be32(h + QCOW2_SN_OFF_L1_SIZE);
    id_len = qcow2_be16(h + QCOW2_SN_OFF_ID_LEN);
    name_len = qcow2_be16(h + QCOW2_SN_OFF_NAME_LEN);
    sn->date_sec = qcow2_be32(h + QCOW2_SN_OFF_DATE_SEC);
    sn->date_nsec = qcow2_be32(h + QCOW2_SN_OFF_DATE_NSEC);
    sn->vm_clock_nsec = qcow2_be64(h + QCOW2_SN_OFF_VM_CLOCK_NSEC);
    sn->vm_state_size = qcow2_be32(h + QCOW2_SN_OFF_VM_STATE_SIZE);
    sn->extra_size = qcow2_be32(h + QCOW2_SN_OFF_EXTRA_SIZE);
    if (sn->extra_size > QCOW2_SN_MAX_EXTRA)
        return vimg_error_set(err, EFBIG, "Too much extra metadata in snapshot table entry "
                              "(%" PRIu32 " bytes, at most %u)", sn->extra_size,
                              QCOW2_SN_MAX_EXTRA);
    if (sn->l1_size > QCOW2_MAX_L1_BYTES / 8 || sn->l1_table_offset % s->cluster_size)
        return vimg_error_set(err, EFBIG, "Snapshot L1 table offset 0x%" PRIx64 " or size %"
                              PRIu32 " invalid", sn->l1_table_offset, sn->l1_size);
    if (!(var = malloc((size_t)sn->extra_size + id_len + name_len + 1)))
        return vimg_error_set(err, ENOMEM, "Out of memory");
    ret = qcow2_read_meta(node->file, *offset + QCOW2_SN_FIXED, var,
                          (uint64_t)sn->extra_size + id_len + name_len, err);
    if (ret == 0) {
        sn->extra = malloc(sn->extra_size ? sn->extra_size : 1);
        sn->id = qcow2_sn_strndup(var + sn->extra_size, id_len);
        sn->name = qcow2_sn_strndup(var + sn->extra_size + id_len, name_len);
        if (!sn->extra || !sn->id || !sn->name)
            ret = vimg_error_set(err, ENOMEM, "Out of memory");
        else
            memcpy(sn->extra, var, sn->extra_size);
    }
    free(var);
    if (ret < 0)
        return ret;
    if (sn->extra_size >= 8)
        sn->vm_state_size = qcow2_be64(sn->extra);
    sn->disk_size = sn->extra_size >= 16 ? qcow2_be64(sn->extra + 8) : s->hdr.size;
    sn->icount = sn->extra_size >= 24 ? qcow2_be64(sn->extra + 16) : UINT64_MAX;
    *offset += qcow2_align_up(QCOW2_SN_FIXED + (uint64_t)sn->extra_size + id_len + name_len, 8);
    return 0;
}

static int
qcow2_read_snapshots(struct vimg_node *node, struct qcow2_snapshot **out, uint32_t *n_out,
                     struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint32_t n = s->hdr.nb_snapshots;
    uint64_t offset = s->hdr.snapshots_offset;
    struct qcow2_snapshot *sn = calloc(n ? n : 1, sizeof(*sn));
    int ret = 0;

    if (!sn)
        return vimg_error_set(err, ENOMEM, "Out of memory");
    for (uint32_t i = 0; i < n && ret == 0; i++) {
        ret = qcow2_decode_snapshot(node, &offset, &sn[i], err);
        if (ret == 0 && offset - s->hdr.snapshots_offset > QCOW2_SN_MAX_TABLE)
            ret = vimg_error_set(err, EFBIG, "Snapshot table too large");
    }
    if (ret < 0) {
        qcow2_free_snapshots(sn, n);
        return ret;
    }
    *out = sn;
    *n_out = n;
    return 0;
}

/* The table as QEMU writes it: entries 8-byte aligned, the last one unpadded. */
static uint64_t
qcow2_snapshots_bytes(const struct qcow2_snapshot *sn, uint32_t n)
{
    uint64_t size = 0;

    for (uint32_t i = 0; i < n; i++) {
        size = qcow2_align_up(size, 8);
        size += QCOW2_SN_FIXED + (uint64_t)sn[i].extra_size + strlen(sn[i].id) +
                strlen(sn[i].name);
    }
    return size;
}

static void
qcow2_encode_snapshots(const struct qcow2_snapshot *sn, uint32_t n, uint8_t *buf)
{
    uint64_t at = 0;

    for (uint32_t i = 0; i < n; i++) {
        uint8_t *h;
        size_t id_len = strlen(sn[i].id), name_len = strlen(sn[i].name);
        at = qcow2_align_up(at, 8);
        h = buf + at;
        qcow2_put_be64(h + QCOW2_SN_OFF_L1_TABLE_OFFSET, sn[i].l1_table_offset);
        qcow2_put_be32(h + QCOW2_SN_OFF_L1_SIZE, sn[i].l1_size);
        qcow2_put_be16(h + QCOW2_SN_OFF_ID_LEN, (uint16_t)id_len);
        qcow2_put_be16(h + QCOW2_SN_OFF_NAME_LEN, (uint16_t)name_len);
        qcow2_put_be32(h + QCOW2_SN_OFF_DATE_SEC, sn[i].date_sec);
        qcow2_put_be32(h + QCOW2_SN_OFF_DATE_NSEC, sn[i].date_nsec);
        qcow2_put_be64(h + QCOW2_SN_OFF_VM_CLOCK_NSEC, sn[i].vm_clock_nsec);
        qcow2_put_be32(h + QCOW2_SN_OFF_VM_STATE_SIZE, sn[i].vm_state_size > UINT32_MAX
                       ? 0 : (uint32_t)sn[i].vm_state_size);
        qcow2_put_be32(h + QCOW2_SN_OFF_EXTRA_SIZE, sn[i].extra_size);
        memcpy(h + QCOW2_SN_FIXED, sn[i].extra, sn[i].extra_size);
        memcpy(h + QCOW2_SN_FIXED + sn[i].extra_size, sn[i].id, id_len);
        memcpy(h + QCOW2_SN_FIXED + sn[i].extra_size + id_len, sn[i].name, name_len);
        at += QCOW2_SN_FIXED + sn[i].extra_size + id_len + name_len;
    }
}

static int qcow2_snapshot_unref(struct vimg_node *node, uint64_t offset, uint64_t bytes,
                                struct vimg_error *err);

/* Writes the table at a new place, points the header at it, then frees the old one. */
static int
qcow2_write_snapshots(struct vimg_node *node, const struct qcow2_snapshot *sn, uint32_t n,
                      struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t size = qcow2_snapshots_bytes(sn, n), offset = 0;
    uint64_t old_offset = s->hdr.snapshots_offset;
    uint64_t old_size = 0;
    uint8_t *buf, hdr[12];
    int ret;

    if (size > QCOW2_SN_MAX_TABLE)
        return vimg_error_set(err, EFBIG, "Snapshot table too large");
    if (s->hdr.nb_snapshots) {
        struct qcow2_snapshot *old;
        uint32_t n_old;
        if ((ret = qcow2_read_snapshots(node, &old, &n_old, err)) < 0)
            return ret;
        old_size = qcow2_snapshots_bytes(old, n_old);
        qcow2_free_snapshots(old, n_old);
    }
    if (!(buf = calloc(1, size ? size : 1)))
        return vimg_error_set(err, ENOMEM, "Out of memory");
    qcow2_encode_snapshots(sn, n, buf);
    /* An empty table has offset 0, as QEMU writes it. */
    ret = n ? qcow2_alloc_clusters(node, (size + s->cluster_size - 1) / s->cluster_size,
                                   &offset, err) : 0;
    if (ret == 0)
        ret = qcow2_flush_metadata(node, err);
    if (ret == 0 && size)
        ret = qcow2_pwrite_file(node->file, offset, buf, size, err);
    free(buf);
    if (ret == 0)
        ret = vimg_node_flush(node->file, err);
    if (ret < 0)
        return ret;
    qcow2_put_be32(hdr, n);
    qcow2_put_be64(hdr + 4, offset);
    if ((ret = qcow2_write_header_field(node, QCOW2_OFF_NB_SNAPSHOTS, hdr, 12, err)) < 0 ||
        (ret = vimg_node_flush(node->file, err)) < 0)
        return ret;
    s->hdr.nb_snapshots = n;
    s->hdr.snapshots_offset = offset;
    if (old_size)
        return qcow2_snapshot_unref(node, old_offset, old_size, err);
    return 0;
}

/*
 * Drops one reference to each cluster of [offset, +bytes); those left
 * unused are discarded in the file, as QEMU's pass-discard-snapshot (on by
 * default) does.
 */
static int
qcow2_snapshot_unref(struct vimg_node *node, uint64_t offset, uint64_t bytes,
                     struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t first = offset / s->cluster_size;
    uint64_t end = bytes ? (offset + bytes - 1) / s->cluster_size + 1 : first;
    int ret;

    if ((ret = qcow2_update_refcount(node, offset, bytes, -1, err)) < 0)
        return ret;
    for (uint64_t ci = first; ci < end; ci++) {
        uint64_t rc;
        if ((ret = qcow2_get_refcount(node, ci, &rc, err)) < 0)
            return ret;
        if (rc == 0 && (ret = vimg_node_discard(node->file, ci * s->cluster_size,
                                                s->cluster_size, NULL)) < 0 &&
            ret != -ENOTSUP)
            return vimg_error_set(err, -ret, "Could not discard cluster 0x%" PRIx64,
                                  ci * s->cluster_size);
    }
    return 0;
}

/* Adds delta to the refcount of a host range (if delta) and reads back the first cluster's. */
static int
qcow2_ref_adjust(struct vimg_node *node, uint64_t offset, uint64_t bytes, int delta,
                 uint64_t *rc, struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    int ret;

    if (delta > 0 && (ret = qcow2_update_refcount(node, offset, bytes, delta, err)) < 0)
        return ret;
    if (delta < 0 && (ret = qcow2_snapshot_unref(node, offset, bytes, err)) < 0)
        return ret;
    return qcow2_get_refcount(node, offset / s->cluster_size, rc, err);
}

/* One L2 table: refcounts of what it reaches, and COPIED flags that follow them. */
static int
qcow2_walk_l2(struct vimg_node *node, uint64_t l2_offset, int delta, struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint8_t *l2 = malloc(s->cluster_size), *table;
    bool is_modified = false;
    int ret;

    if (!l2)
        return vimg_error_set(err, ENOMEM, "Out of memory");
    if ((ret = qcow2_cache_get(node, &s->l2_cache, l2_offset, false, &table, err)) < 0)
        goto out;
    memcpy(l2, table, s->cluster_size);
    for (uint32_t j = 0; j < s->l2_entries && ret == 0; j++) {
        uint8_t *p = l2 + (uint64_t)j * s->l2_entry_size;
        uint64_t e = qcow2_be64(p), host = e & QCOW2_OFFSET_MASK, coff, csize, rc, ne;
        if (e & QCOW2_OFLAG_COMPRESSED) {
            qcow2_compressed_extent(s, e, &coff, &csize);
            if (delta > 0)
                ret = qcow2_update_refcount(node, coff, csize, delta, err);
            else if (delta < 0)
                ret = qcow2_snapshot_unref(node, coff, csize, err);
            continue;
        }
        if (!host || s->has_data_file)
            continue;
        if ((ret = qcow2_ref_adjust(node, host, s->cluster_size, delta, &rc, err)) < 0)
            break;
        ne = rc == 1 ? e | QCOW2_OFLAG_COPIED : e & ~QCOW2_OFLAG_COPIED;
        if (ne != e) {
            qcow2_put_be64(p, ne);
            is_modified = true;
        }
    }
    if (ret == 0 && is_modified &&
        (ret = qcow2_cache_get(node, &s->l2_cache, l2_offset, false, &table, err)) == 0) {
        memcpy(table, l2, s->cluster_size);
        qcow2_cache_mark_dirty(&s->l2_cache, table);
    }
out:
    free(l2);
    return ret;
}

/*
 * Adds delta (+1, -1 or 0) to the refcount of every cluster reachable from
 * the L1 table l1 (host order) and sets the COPIED flags in it and its L2
 * tables to match; *is_modified says whether l1 changed.
 */
static int
qcow2_walk_l1(struct vimg_node *node, uint64_t *l1, uint32_t l1_size, int delta,
              bool *is_modified, struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    int ret;

    *is_modified = false;
    for (uint32_t i = 0; i < l1_size; i++) {
        uint64_t off = l1[i] & QCOW2_OFFSET_MASK, rc, ne;
        if (!off)
            continue;
        if ((ret = qcow2_walk_l2(node, off, delta, err)) < 0 ||
            (ret = qcow2_ref_adjust(node, off, s->cluster_size, delta, &rc, err)) < 0)
            return ret;
        ne = rc == 1 ? l1[i] | QCOW2_OFLAG_COPIED : l1[i] & ~QCOW2_OFLAG_COPIED;
        if (ne != l1[i]) {
            l1[i] = ne;
            *is_modified = true;
        }
    }
    return 0;
}

static int
qcow2_write_l1_at(struct vimg_node *node, uint64_t offset, const uint64_t *l1, uint32_t n,
                  struct vimg_error *err)
{
    uint8_t *buf = malloc(n ? (size_t)n * 8 : 1);
    int ret;

    if (!buf)
        return vimg_error_set(err, ENOMEM, "Out of memory");
    for (uint32_t i = 0; i < n; i++)
        qcow2_put_be64(buf + (uint64_t)i * 8, l1[i]);
    ret = qcow2_pwrite_file(node->file, offset, buf, (uint64_t)n * 8, err);
    free(buf);
    return ret;
}

static int
qcow2_read_l1_at(struct vimg_node *node, uint64_t offset, uint32_t n, uint32_t alloc_n,
                 uint64_t **out, struct vimg_error *err)
{
    uint64_t *l1 = calloc(alloc_n ? alloc_n : 1, sizeof(*l1));
    uint8_t *buf = malloc(n ? (size_t)n * 8 : 1);
    int ret = 0;

    if (!l1 || !buf)
        ret = vimg_error_set(err, ENOMEM, "Out of memory");
    if (ret == 0)
        ret = qcow2_read_meta(node->file, offset, buf, (uint64_t)n * 8, err);
    for (uint32_t i = 0; ret == 0 && i < n; i++)
        l1[i] = qcow2_be64(buf + (uint64_t)i * 8);
    free(buf);
    if (ret < 0) {
        free(l1);
        return ret;
    }
    *out = l1;
    return 0;
}

/* The active L1 table: COPIED flags after refcounts changed elsewhere, written if changed. */
static int
qcow2_fix_active_flags(struct vimg_node *node, struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    bool is_modified;
    int ret;

    if ((ret = qcow2_walk_l1(node, s->l1, s->l1_size, 0, &is_modified, err)) < 0)
        return ret;
    if (is_modified)
        return qcow2_write_l1_at(node, s->hdr.l1_table_offset, s->l1, s->l1_size, err);
    return 0;
}

int
qcow2_snapshot_list(struct vimg_node *node, struct vimg_snapshot **list, size_t *n,
                    struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    struct qcow2_snapshot *sn;
    struct vimg_snapshot *out;
    uint32_t count;
    int ret;

    pthread_mutex_lock(&s->lock);
    ret = qcow2_read_snapshots(node, &sn, &count, err);
    pthread_mutex_unlock(&s->lock);
    if (ret < 0)
        return ret;
    if (!(out = calloc(count ? count : 1, sizeof(*out)))) {
        qcow2_free_snapshots(sn, count);
        return vimg_error_set(err, ENOMEM, "Out of memory");
    }
    for (uint32_t i = 0; i < count; i++) {
        out[i].id = sn[i].id;
        out[i].name = sn[i].name;
        sn[i].id = sn[i].name = NULL;
        out[i].vm_state_size = sn[i].vm_state_size;
        out[i].date_sec = sn[i].date_sec;
        out[i].date_nsec = sn[i].date_nsec;
        out[i].vm_clock_nsec = sn[i].vm_clock_nsec;
        out[i].icount = sn[i].icount;
    }
    qcow2_free_snapshots(sn, count);
    *list = out;
    *n = count;
    return 0;
}

/* The next id: one more than the largest numeric id. */
static void
qcow2_next_snapshot_id(const struct qcow2_snapshot *sn, uint32_t n, char *buf, size_t size)
{
    unsigned long max = 0;

    for (uint32_t i = 0; i < n; i++) {
        unsigned long v = strtoul(sn[i].id, NULL, 10);
        if (v > max)
            max = v;
    }
    snprintf(buf, size, "%lu", max + 1);
}

/* Fills the new table entry (extra data as QEMU writes it) from sn. */
static int
qcow2_fill_snapshot(struct qcow2_state *s, const struct vimg_snapshot *in, const char *id,
                    struct qcow2_snapshot *out, struct vimg_error *err)
{
    memset(out, 0, sizeof(*out));
    out->id = strdup(id);
    out->name = strdup(in->name ? in->name : "");
    out->extra = calloc(1, QCOW2_SN_EXTRA_SIZE);
    if (!out->id || !out->name || !out->extra)
        return vimg_error_set(err, ENOMEM, "Out of memory");
    if (strlen(out->id) > UINT16_MAX || strlen(out->name) > UINT16_MAX)
        return vimg_error_set(err, EINVAL, "Snapshot name too long");
    out->date_sec = (uint32_t)in->date_sec;
    out->date_nsec = (uint32_t)in->date_nsec;
    out->vm_clock_nsec = in->vm_clock_nsec;
    out->vm_state_size = in->vm_state_size;
    out->disk_size = s->hdr.size;
    out->icount = in->icount;
    out->extra_size = QCOW2_SN_EXTRA_SIZE;
    qcow2_put_be64(out->extra, in->vm_state_size);
    qcow2_put_be64(out->extra + 8, s->hdr.size);
    qcow2_put_be64(out->extra + 16, in->icount);
    out->l1_size = s->l1_size;
    return 0;
}

static int
qcow2_snapshot_create_locked(struct vimg_node *node, const struct vimg_snapshot *in,
                             struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    struct qcow2_snapshot *sn = NULL, *grown;
    uint32_t n = 0;
    uint64_t l1_bytes = (uint64_t)s->l1_size * 8;
    char id[32];
    bool is_modified;
    int ret;

    if ((ret = qcow2_flush_metadata(node, err)) < 0 ||
        (ret = qcow2_read_snapshots(node, &sn, &n, err)) < 0)
        return ret;
    if (n >= 65536) {
        ret = vimg_error_set(err, EFBIG, "Too many snapshots");
        goto out;
    }
    if (!(grown = realloc(sn, (n + 1) * sizeof(*sn)))) {
        ret = vimg_error_set(err, ENOMEM, "Out of memory");
        goto out;
    }
    sn = grown;
    qcow2_next_snapshot_id(sn, n, id, sizeof(id));
    ret = qcow2_fill_snapshot(s, in, in->id ? in->id : id, &sn[n], err);
    n++;
    if (ret < 0)
        goto out;
    /* The copy of the L1 table, then one more reference to all it reaches. */
    if ((ret = qcow2_alloc_clusters(node, qcow2_align_up(l1_bytes, s->cluster_size) /
                                    s->cluster_size, &sn[n - 1].l1_table_offset, err)) < 0 ||
        (ret = qcow2_write_l1_at(node, sn[n - 1].l1_table_offset, s->l1, s->l1_size,
                                 err)) < 0 ||
        (ret = qcow2_walk_l1(node, s->l1, s->l1_size, 1, &is_modified, err)) < 0)
        goto out;
    if (is_modified &&
        (ret = qcow2_write_l1_at(node, s->hdr.l1_table_offset, s->l1, s->l1_size, err)) < 0)
        goto out;
    if ((ret = qcow2_flush_metadata(node, err)) < 0 ||
        (ret = vimg_node_flush(node->file, err)) < 0)
        goto out;
    ret = qcow2_write_snapshots(node, sn, n, err);
out:
    qcow2_free_snapshots(sn, n);
    return ret;
}

int
qcow2_snapshot_create(struct vimg_node *node, const struct vimg_snapshot *sn,
                      struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    int ret;

    pthread_mutex_lock(&s->lock);
    ret = qcow2_snapshot_create_locked(node, sn, err);
    /* A refcount that would pass refcount_max: QEMU reports EINVAL. */
    if (ret == -ERANGE)
        ret = vimg_error_set(err, EINVAL, "%s", err->msg);
    if (ret == 0)
        ret = qcow2_flush_metadata(node, err);
    pthread_mutex_unlock(&s->lock);
    return ret;
}

static int
qcow2_find_snapshot(const struct qcow2_snapshot *sn, uint32_t n, const char *id,
                    const char *name)
{
    for (uint32_t i = 0; i < n; i++) {
        if (id && strcmp(sn[i].id, id) != 0)
            continue;
        if (name && strcmp(sn[i].name, name) != 0)
            continue;
        return (int)i;
    }
    return -1;
}

/* Sets the virtual size to the snapshot's (the L1 table grows as needed). */
static int
qcow2_snapshot_set_size(struct vimg_node *node, uint64_t size, struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t cover = (uint64_t)s->l2_entries * s->cluster_size;
    uint8_t buf[8];
    int ret;

    if (size == s->hdr.size)
        return 0;
    if ((ret = qcow2_grow_l1(node, size / cover + (size % cover ? 1 : 0), err)) < 0)
        return ret;
    qcow2_put_be64(buf, size);
    if ((ret = qcow2_write_header_field(node, QCOW2_OFF_SIZE, buf, 8, err)) < 0)
        return ret;
    s->hdr.size = size;
    return 0;
}

/*
 * The snapshot's L1 table replaces the active one: its clusters gain a
 * reference before the active table is overwritten; the old active
 * table's lose theirs only after.
 */
static int
qcow2_apply_locked(struct vimg_node *node, const struct qcow2_snapshot *sn,
                   struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t *copy = NULL, *sn_l1 = NULL, *old;
    bool is_modified;
    int ret;

    if ((ret = qcow2_flush_metadata(node, err)) < 0 ||
        (ret = qcow2_snapshot_set_size(node, sn->disk_size, err)) < 0 ||
        (ret = qcow2_grow_l1(node, sn->l1_size, err)) < 0 ||
        (ret = qcow2_read_l1_at(node, sn->l1_table_offset, sn->l1_size, s->l1_size, &copy,
                                err)) < 0 ||
        (ret = qcow2_read_l1_at(node, sn->l1_table_offset, sn->l1_size, sn->l1_size, &sn_l1,
                                err)) < 0)
        goto out;
    if ((ret = qcow2_walk_l1(node, sn_l1, sn->l1_size, 1, &is_modified, err)) < 0 ||
        (is_modified && (ret = qcow2_write_l1_at(node, sn->l1_table_offset, sn_l1,
                                                 sn->l1_size, err)) < 0) ||
        (ret = qcow2_flush_metadata(node, err)) < 0 ||
        (ret = qcow2_write_l1_at(node, s->hdr.l1_table_offset, copy, s->l1_size, err)) < 0 ||
        (ret = vimg_node_flush(node->file, err)) < 0)
        goto out;
    old = s->l1;
    s->l1 = copy;
    copy = old;
    if ((ret = qcow2_walk_l1(node, old, s->l1_size, -1, &is_modified, err)) < 0)
        goto out;
    ret = qcow2_fix_active_flags(node, err);
out:
    free(copy);
    free(sn_l1);
    return ret;
}

int
qcow2_snapshot_apply(struct vimg_node *node, const char *id_or_name, struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    struct qcow2_snapshot *sn;
    uint32_t n;
    int ret, i;

    pthread_mutex_lock(&s->lock);
    if ((ret = qcow2_read_snapshots(node, &sn, &n, err)) < 0)
        goto unlock;
    if ((i = qcow2_find_snapshot(sn, n, id_or_name, NULL)) < 0)
        i = qcow2_find_snapshot(sn, n, NULL, id_or_name);
    if (i < 0)
        ret = vimg_error_set(err, ENOENT, "Can't find snapshot '%s'", id_or_name);
    else
        ret = qcow2_apply_locked(node, &sn[i], err);
    if (ret == 0)
        ret = qcow2_flush_metadata(node, err);
    qcow2_free_snapshots(sn, n);
unlock:
    pthread_mutex_unlock(&s->lock);
    return ret;
}

static int
qcow2_delete_locked(struct vimg_node *node, const char *id, const char *name,
                    struct vimg_error *err)
{
    struct qcow2_snapshot *sn, gone;
    uint64_t *l1 = NULL;
    uint32_t n;
    bool is_modified;
    int ret, i;

    if ((ret = qcow2_flush_metadata(node, err)) < 0 ||
        (ret = qcow2_read_snapshots(node, &sn, &n, err)) < 0)
        return ret;
    if ((i = qcow2_find_snapshot(sn, n, id, name)) < 0) {
        qcow2_free_snapshots(sn, n);
        return vimg_error_set(err, ENOENT, "Can't find the snapshot");
    }
    gone = sn[i];
    memmove(&sn[i], &sn[i + 1], (n - (uint32_t)i - 1) * sizeof(*sn));
    ret = qcow2_write_snapshots(node, sn, n - 1, err);
    qcow2_free_snapshots(sn, n - 1);
    if (ret == 0)
        ret = qcow2_read_l1_at(node, gone.l1_table_offset, gone.l1_size, gone.l1_size, &l1,
                               err);
    if (ret == 0)
        ret = qcow2_walk_l1(node, l1, gone.l1_size, -1, &is_modified, err);
    if (ret == 0 && gone.l1_size)
        ret = qcow2_snapshot_unref(node, gone.l1_table_offset, (uint64_t)gone.l1_size * 8,
                                   err);
    if (ret == 0)
        ret = qcow2_fix_active_flags(node, err);
    free(l1);
    free(gone.id);
    free(gone.name);
    free(gone.extra);
    return ret;
}

int
qcow2_snapshot_delete(struct vimg_node *node, const char *id, const char *name,
                      struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    int ret;

    pthread_mutex_lock(&s->lock);
    ret = qcow2_delete_locked(node, id, name, err);
    if (ret == 0)
        ret = qcow2_flush_metadata(node, err);
    pthread_mutex_unlock(&s->lock);
    return ret;
}

/*
 * Switches reads to the snapshot's L1 table, as QEMU's temporary load does:
 * the virtual size stays the image's, and what lies beyond the snapshot's
 * table reads as unallocated. The node is read-only, so nothing writes the
 * borrowed table back.
 */
int
qcow2_snapshot_load_tmp(struct vimg_node *node, const char *id, const char *name,
                        struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    struct qcow2_snapshot *sn;
    uint64_t *l1 = NULL;
    uint32_t n;
    int ret, i;

    pthread_mutex_lock(&s->lock);
    if ((ret = qcow2_read_snapshots(node, &sn, &n, err)) < 0)
        goto unlock;
    if ((i = qcow2_find_snapshot(sn, n, id, name)) < 0)
        ret = vimg_error_set(err, ENOENT, "Can't find snapshot");
    else if ((ret = qcow2_read_l1_at(node, sn[i].l1_table_offset, sn[i].l1_size,
                                     sn[i].l1_size, &l1, err)) < 0)
        vimg_error_prefix(err, "Failed to read l1 table for snapshot: ");
    if (ret == 0) {
        free(s->l1);
        s->l1 = l1;
        s->l1_size = sn[i].l1_size;
    }
    qcow2_free_snapshots(sn, n);
unlock:
    pthread_mutex_unlock(&s->lock);
    return ret;
}

/* Calls fn with the L1 table of every snapshot, in table order (lock held). */
int
qcow2_snapshot_for_each_l1(struct vimg_node *node, qcow2_l1_fn fn, void *opaque,
                           struct vimg_error *err)
{
    struct qcow2_snapshot *sn;
    uint32_t n;
    int ret;

    if ((ret = qcow2_read_snapshots(node, &sn, &n, err)) < 0)
        return ret;
    for (uint32_t i = 0; i < n && ret == 0; i++) {
        uint64_t *l1;
        if ((ret = qcow2_read_l1_at(node, sn[i].l1_table_offset, sn[i].l1_size,
                                    sn[i].l1_size, &l1, err)) < 0)
            break;
        ret = fn(node, l1, sn[i].l1_size, opaque, err);
        free(l1);
    }
    qcow2_free_snapshots(sn, n);
    return ret;
}
