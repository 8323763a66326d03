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
 * A refcount_bits change builds new refcount structures (see
 * qcow2_amend_refcount_order) right after an upgrade, before anything else.
 *
 * data_file renames the external data file the header names (the file
 * itself is not opened, as in QEMU; an empty name drops the extension, and
 * the image then needs a data-file option to open); data_file_raw=off clears
 * the raw bit. Both are written right after an upgrade, before the rest, so
 * that a failing downgrade keeps them, as in qemu-img.
 *
 * encrypt.* (LUKS key slots) is qcow2-crypt.c's.
 *
 * Progress is reported as qemu-img reports it, so that `amend -p` prints the
 * same figures: the operations that take time (upgrade, refcount width,
 * downgrade, and a key slot change, which reports nothing) each count their
 * own work units; the total is projected from the operations done so far.
 * An upgrade is 2 units; a refcount width change is 3 passes over every
 * refcount table entry, as QEMU walks the table (twice to allocate, once to
 * write; QEMU needs a fourth pass now and then, which vimg does not mimic);
 * a downgrade is one unit per L1 entry, active table then snapshots.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "formats/qcow2/qcow2.h"

/* The operations that report progress, and how much of it is theirs. */
enum qcow2_amend_op { AMEND_OP_NONE, AMEND_OP_UPGRADE, AMEND_OP_REFCOUNT, AMEND_OP_DOWNGRADE };

struct qcow2_amend_progress {
    vimg_progress_fn *fn;
    void *opaque;
    unsigned total_ops;
    unsigned ops_done;          /* operations finished before the current one */
    enum qcow2_amend_op current, last;
    uint64_t done_before;       /* units of the finished operations */
    uint64_t last_size;         /* units of the operation last reported */
};

/* Reports done of size units of the current operation, the total projected. */
static void
qcow2_amend_report(struct qcow2_amend_progress *pr, uint64_t done, uint64_t size)
{
    uint64_t so_far, projected;

    if (!pr->fn || !pr->total_ops)
        return;
    if (pr->current != pr->last) {
        if (pr->last != AMEND_OP_NONE) {
            pr->done_before += pr->last_size;
            pr->ops_done++;
        }
        pr->last = pr->current;
    }
    pr->last_size = size;
    so_far = pr->done_before + size;
    /* The operations still to come are guessed as large as the average so far. */
    projected = so_far * (pr->total_ops - pr->ops_done - 1) / (pr->ops_done + 1);
    pr->fn(pr->done_before + done, so_far + projected, pr->opaque);
}

/* What amend asked for; has_* says a key was given. */
struct qcow2_amend_params {
    uint32_t version;
    bool has_lazy_refcounts;
    bool has_lazy;
    bool has_size;
    uint64_t size;
    uint64_t refcount_bits;
    const char *data_file;      /* NULL when not given */
    bool has_data_file_raw;
    bool is_data_file_raw;
    bool has_encrypt;           /* encrypt.* keys: a key slot change */
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

    if (strcmp(key, "encrypt") == 0) {
        p->has_encrypt = true;
        return 0;   /* key slots: qcow2_crypt_amend */
    }
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
    if (strcmp(key, "data_file") == 0) {
        if (!s->has_data_file)
            return vimg_error_set(err, EINVAL, "data-file can only be set for images that "
                                  "use an external data file");
        p->data_file = vimg_opts_get(opts, key);
        return 0;
    }
    if (strcmp(key, "data_file_raw") == 0) {
        int ret = vimg_opts_get_bool(opts, key, s->is_data_file_raw, &p->is_data_file_raw, err);
        if (ret < 0)
            return ret;
        if (p->is_data_file_raw && !s->is_data_file_raw)
            return vimg_error_set(err, EINVAL, "data-file-raw cannot be set on existing "
                                  "images");
        p->has_data_file_raw = true;
        return 0;
    }
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
    if (p->refcount_bits != s->refcount_bits && p->refcount_bits != 16 && p->version < 3)
        return vimg_error_set(err, EINVAL, "Refcount widths other than 16 bits require "
                              "compatibility level 1.1 or above (use compat=1.1 or greater)");
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
qcow2_amend_upgrade(struct vimg_node *node, struct qcow2_amend_progress *pr,
                    struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    int ret;

    pr->current = AMEND_OP_UPGRADE;
    qcow2_amend_report(pr, 0, 2);
    if ((ret = qcow2_flush_metadata(node, err)) < 0)
        return ret;
    qcow2_amend_report(pr, 1, 2);
    if (s->cluster_size > 4096 && (ret = qcow2_amend_add_feature_table(s, err)) < 0)
        return ret;
    s->hdr.version = 3;
    s->hdr.incompatible_features = 0;
    s->hdr.compatible_features = 0;
    s->hdr.autoclear_features = 0;
    s->hdr.refcount_order = 4;
    s->hdr.header_length = QCOW2_V3_HEADER_LENGTH;
    s->hdr.compression_type = QCOW2_COMPRESSION_ZLIB;
    if ((ret = qcow2_write_header(node, err)) < 0)
        return ret;
    qcow2_amend_report(pr, 2, 2);
    return 0;
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

/* ---- refcount width ---- */

/*
 * The refcount of every cluster below end, in the current width; fails with
 * qemu-img's text when one does not fit into new_bits.
 */
static int
qcow2_amend_read_refcounts(struct vimg_node *node, uint64_t end, uint32_t new_bits,
                           uint64_t **out, struct vimg_error *err)
{
    uint64_t max = new_bits == 64 ? UINT64_MAX : (UINT64_C(1) << new_bits) - 1;
    uint64_t *rc = calloc(end ? end : 1, sizeof(*rc));
    struct qcow2_state *s = node->state;
    int ret = 0;

    if (!rc)
        return vimg_error_set(err, ENOMEM, "Out of memory");
    for (uint64_t i = 0; i < end && ret == 0; i++) {
        if ((ret = qcow2_get_refcount(node, i, &rc[i], err)) == 0 && rc[i] > max)
            ret = vimg_error_set(err, EINVAL, "Cannot decrease refcount entry width to %"
                                 PRIu32 " bits: Cluster at offset %#" PRIx64 " has a "
                                 "refcount of %" PRIu64, new_bits,
                                 i << s->cluster_bits, rc[i]);
    }
    if (ret < 0) {
        free(rc);
        return ret;
    }
    *out = rc;
    return 0;
}

/* Sizes the new structures: n_blocks refcount blocks and n_table table clusters at end. */
static void
qcow2_amend_size_refcounts(const struct qcow2_state *s, uint64_t end, uint64_t rb_entries,
                           uint64_t *n_blocks, uint64_t *n_table)
{
    uint64_t nb = 0, nt = 0, total;

    for (;;) {
        total = end + nb + nt;
        uint64_t nb2 = (total + rb_entries - 1) / rb_entries;
        uint64_t nt2 = qcow2_align_up(nb2 * 8, s->cluster_size) / s->cluster_size;
        if (nb2 == nb && nt2 == nt)
            break;
        nb = nb2;
        nt = nt2;
    }
    *n_blocks = nb;
    *n_table = nt;
}

/*
 * Writes rc (n clusters) as refcount blocks of width 2^order at clusters
 * first.. and their table (n_table clusters) right after them.
 */
static int
qcow2_amend_write_refcounts(struct vimg_node *node, const uint64_t *rc, uint64_t n,
                            uint32_t order, uint64_t first, uint64_t n_blocks, uint64_t n_table,
                            struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    struct qcow2_state w = *s;
    uint64_t table_bytes = n_table * s->cluster_size;
    uint8_t *block = malloc(s->cluster_size), *table = calloc(1, table_bytes);
    int ret = 0;

    w.refcount_bits = UINT32_C(1) << order;
    w.rb_entries = (uint32_t)((uint64_t)s->cluster_size * 8 / w.refcount_bits);
    if (!block || !table)
        ret = vimg_error_set(err, ENOMEM, "Out of memory");
    for (uint64_t b = 0; b < n_blocks && ret == 0; b++) {
        uint64_t base = b * w.rb_entries;
        memset(block, 0, s->cluster_size);
        for (uint64_t i = 0; i < w.rb_entries && base + i < n; i++)
            qcow2_refcount_set_raw(&w, block, i, rc[base + i]);
        qcow2_put_be64(table + b * 8, (first + b) << s->cluster_bits);
        ret = qcow2_pwrite_file(node->file, (first + b) << s->cluster_bits, block,
                                s->cluster_size, err);
    }
    if (ret == 0)
        ret = qcow2_pwrite_file(node->file, (first + n_blocks) << s->cluster_bits, table,
                                table_bytes, err);
    free(block);
    free(table);
    return ret;
}

/* Points the header and the state at the new structures; the old ones' clusters are free. */
static int
qcow2_amend_switch_refcounts(struct vimg_node *node, uint32_t order, uint64_t table_offset,
                             uint64_t n_table, struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    int ret;

    s->hdr.refcount_order = order;
    s->hdr.refcount_table_offset = table_offset;
    s->hdr.refcount_table_clusters = (uint32_t)n_table;
    if ((ret = qcow2_write_header(node, err)) < 0 ||
        (ret = vimg_node_flush(node->file, err)) < 0)
        return ret;
    s->refcount_bits = UINT32_C(1) << order;
    s->rb_entries = (uint32_t)((uint64_t)s->cluster_size * 8 / s->refcount_bits);
    s->refcount_max = s->refcount_bits == 64 ? UINT64_MAX
                                             : (UINT64_C(1) << s->refcount_bits) - 1;
    for (unsigned i = 0; i < s->rb_cache.n_entries; i++) {
        s->rb_cache.entries[i].offset = 0;
        s->rb_cache.entries[i].is_dirty = false;
    }
    free(s->rt);
    s->rt = NULL;
    s->rt_size = 0;
    s->free_cluster_index = 0;
    return qcow2_load_refcount_table(node, err);
}

/* Reports refcount table passes [first, last) of 3 as done, entry by entry. */
static void
qcow2_amend_report_passes(struct qcow2_amend_progress *pr, uint64_t rt_entries,
                          unsigned first, unsigned last)
{
    for (unsigned pass = first; pass < last; pass++) {
        for (uint64_t i = 0; i < rt_entries; i++)
            qcow2_amend_report(pr, pass * rt_entries + i, 3 * rt_entries);
        qcow2_amend_report(pr, (pass + 1) * rt_entries, 3 * rt_entries);
    }
}

/*
 * New refcount structures of width 2^order, built after the last cluster in
 * use; the header switches to them in one write, and with it the clusters of
 * the old ones become free (the new counts say so already). A crash before
 * that leaves the old structures in charge and the new ones as clusters
 * nothing counts or references.
 */
static int
qcow2_amend_refcount_order(struct vimg_node *node, uint32_t order,
                           struct qcow2_amend_progress *pr, struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t rb_entries = (uint64_t)s->cluster_size * 8 >> order;
    uint64_t old_table = s->hdr.refcount_table_offset >> s->cluster_bits;
    uint64_t rt_entries = (uint64_t)s->hdr.refcount_table_clusters * s->cluster_size / 8;
    uint64_t end, n_blocks, n_table, total, *rc = NULL, *grown;
    int ret;

    pr->current = AMEND_OP_REFCOUNT;

    if ((ret = qcow2_flush_metadata(node, err)) < 0 ||
        (ret = qcow2_used_end(node, &end, err)) < 0 ||
        (ret = qcow2_amend_read_refcounts(node, end, UINT32_C(1) << order, &rc, err)) < 0)
        return ret;
    /* Counts that miss the header itself are garbage: new ones built from them would be too. */
    if (end == 0 || rc[0] == 0) {
        free(rc);
        return vimg_error_set(err, EIO, "Cannot change the refcount width of '%s': its refcount "
                              "structures are corrupt (the header cluster has refcount 0); "
                              "repair it with 'check -r all' first", node->filename);
    }
    for (uint32_t i = 0; i < s->rt_size; i++) {
        uint64_t block = (s->rt[i] & QCOW2_RT_OFFSET_MASK) >> s->cluster_bits;
        if (block && block < end)
            rc[block] = 0;
    }
    for (uint64_t i = 0; i < s->hdr.refcount_table_clusters && old_table + i < end; i++)
        rc[old_table + i] = 0;
    /* Reading the counts and sizing the new structures: QEMU's two allocating passes. */
    qcow2_amend_report_passes(pr, rt_entries, 0, 2);
    qcow2_amend_size_refcounts(s, end, rb_entries, &n_blocks, &n_table);
    total = end + n_blocks + n_table;
    if (!(grown = realloc(rc, total * sizeof(*rc)))) {
        free(rc);
        return vimg_error_set(err, ENOMEM, "Out of memory");
    }
    rc = grown;
    for (uint64_t i = end; i < total; i++)
        rc[i] = 1;
    ret = qcow2_amend_write_refcounts(node, rc, total, order, end, n_blocks, n_table, err);
    free(rc);
    if (ret < 0 || (ret = vimg_node_flush(node->file, err)) < 0)
        return ret;
    qcow2_amend_report_passes(pr, rt_entries, 2, 3);
    return qcow2_amend_switch_refcounts(node, order, (end + n_blocks) << s->cluster_bits,
                                        n_table, err);
}

/* ---- downgrade ---- */

/* Calls fn with the active L1 table, then with each snapshot's. */
static int
qcow2_amend_for_each_l1(struct vimg_node *node, qcow2_l1_fn fn, void *opaque,
                        struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    int ret;

    if ((ret = fn(node, s->l1, s->l1_size, opaque, err)) < 0)
        return ret;
    return qcow2_snapshot_for_each_l1(node, fn, opaque, err);
}

/* Sets *(bool *)opaque when an L2 table that l1 reaches holds a compressed cluster. */
static int
qcow2_amend_find_compressed(struct vimg_node *node, const uint64_t *l1, uint32_t l1_size,
                            void *opaque, struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    bool *has_compressed = opaque;
    uint8_t *l2;
    int ret;

    for (uint32_t i = 0; i < l1_size && !*has_compressed; i++) {
        uint64_t l2_offset = l1[i] & QCOW2_OFFSET_MASK;
        if (!l2_offset)
            continue;
        if ((ret = qcow2_cache_get(node, &s->l2_cache, l2_offset, false, &l2, err)) < 0)
            return ret;
        for (uint32_t j = 0; j < s->l2_entries && !*has_compressed; j++)
            *has_compressed = qcow2_be64(l2 + (uint64_t)j * s->l2_entry_size) &
                              QCOW2_OFLAG_COMPRESSED;
    }
    return 0;
}

/*
 * qemu-img's refusals, in its order. Snapshots are kept (their zero clusters
 * are written out too); a zstd image without compressed clusters becomes a
 * zlib one.
 */
static int
qcow2_amend_check_downgrade(struct vimg_node *node, struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t incompat = s->hdr.incompatible_features & ~QCOW2_INCOMPAT_DIRTY;
    bool has_compressed = false;
    int ret;

    if (s->has_data_file)
        return vimg_error_set(err, ENOTSUP, "Cannot downgrade an image with a data file");
    if (s->compression_type != QCOW2_COMPRESSION_ZLIB) {
        /* qemu-img looks at the active layer only, and leaves snapshots unreadable. */
        if ((ret = qcow2_amend_for_each_l1(node, qcow2_amend_find_compressed,
                                           &has_compressed, err)) < 0)
            return ret;
        if (has_compressed)
            return vimg_error_set(err, ENOTSUP, "Cannot downgrade an image with zstd "
                                  "compression type and existing compressed clusters");
        incompat &= ~QCOW2_INCOMPAT_COMPRESSION;
    }
    if (incompat)
        return vimg_error_set(err, ENOTSUP, "Cannot downgrade an image with incompatible "
                              "features 0x%" PRIx64 " set", incompat);
    if (s->refcount_bits != 16)
        return vimg_error_set(err, ENOTSUP, "compat=0.10 requires refcount_bits=16");
    return 0;
}

/* Adds delta to the refcount of the cluster at offset, n times. */
static int
qcow2_amend_ref(struct vimg_node *node, uint64_t offset, int delta, uint64_t n,
                struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    int ret = 0;

    for (uint64_t i = 0; i < n && ret == 0; i++)
        ret = qcow2_update_refcount(node, offset, s->cluster_size, delta, err);
    return ret;
}

/*
 * The version 2 form of one zero L2 entry of a table that l2_refs L1 tables
 * reach (each counts one reference to the clusters it maps): zeros written
 * to its host cluster, or unallocated. A host cluster that other tables map
 * too keeps its data, and the zeros go to a new cluster.
 */
static int
qcow2_amend_unzero_entry(struct vimg_node *node, uint64_t entry, uint64_t l2_refs,
                         uint64_t *out, struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t host = entry & QCOW2_OFFSET_MASK, refcount = 0;
    int ret;

    if (!host && !node->backing_filename) {
        *out = 0;
        return 0;
    }
    if (host && (ret = qcow2_get_refcount(node, host >> s->cluster_bits, &refcount, err)) < 0)
        return ret;
    if (host && refcount > l2_refs) {
        if ((ret = qcow2_amend_ref(node, host, -1, l2_refs, err)) < 0)
            return ret;
        host = 0;
    }
    if (!host && ((ret = qcow2_alloc_clusters(node, 1, &host, err)) < 0 ||
                  (ret = qcow2_amend_ref(node, host, 1, l2_refs - 1, err)) < 0))
        return ret;
    if ((ret = qcow2_grow_file(node->file, host + s->cluster_size, err)) < 0 ||
        (ret = vimg_node_pwrite_zeroes(node->file, host, s->cluster_size, 0, err)) < 0)
        return ret;
    *out = host | (l2_refs == 1 ? QCOW2_OFLAG_COPIED : 0);
    return 0;
}

static int
qcow2_amend_unzero_l2(struct vimg_node *node, uint64_t l2_offset, struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t l2_refs;
    uint8_t *l2;
    int ret;

    if ((ret = qcow2_get_refcount(node, l2_offset >> s->cluster_bits, &l2_refs, err)) < 0 ||
        (ret = qcow2_cache_get(node, &s->l2_cache, l2_offset, false, &l2, err)) < 0)
        return ret;
    if (l2_refs == 0)
        l2_refs = 1;
    for (uint32_t i = 0; i < s->l2_entries; i++) {
        uint64_t entry = qcow2_be64(l2 + (uint64_t)i * s->l2_entry_size), fixed;
        if ((entry & QCOW2_OFLAG_COMPRESSED) || !(entry & QCOW2_OFLAG_ZERO))
            continue;
        if ((ret = qcow2_amend_unzero_entry(node, entry, l2_refs, &fixed, err)) < 0)
            return ret;
        /* A refcount block allocated meanwhile may have pushed the table out of the cache. */
        if ((ret = qcow2_cache_get(node, &s->l2_cache, l2_offset, false, &l2, err)) < 0)
            return ret;
        qcow2_put_be64(l2 + (uint64_t)i * s->l2_entry_size, fixed);
        qcow2_cache_mark_dirty(&s->l2_cache, l2);
    }
    return 0;
}

/* A downgrade's walk over the L1 entries, reported entry by entry. */
struct qcow2_amend_walk {
    struct qcow2_amend_progress *pr;
    uint64_t visited, total;
};

static int
qcow2_amend_unzero_l1(struct vimg_node *node, const uint64_t *l1, uint32_t l1_size,
                      void *opaque, struct vimg_error *err)
{
    struct qcow2_amend_walk *w = opaque;
    int ret;

    for (uint32_t i = 0; i < l1_size; i++) {
        uint64_t l2_offset = l1[i] & QCOW2_OFFSET_MASK;
        if (l2_offset && (ret = qcow2_amend_unzero_l2(node, l2_offset, err)) < 0)
            return ret;
        qcow2_amend_report(w->pr, ++w->visited, w->total);
    }
    return 0;
}

/* Counts the L1 entries: a downgrade's work units. */
static int
qcow2_amend_count_l1(struct vimg_node *node, const uint64_t *l1, uint32_t l1_size,
                     void *opaque, struct vimg_error *err)
{
    struct qcow2_amend_walk *w = opaque;

    (void)node;
    (void)l1;
    (void)err;
    w->total += l1_size;
    return 0;
}

/*
 * Bitmaps cannot live in a version 2 image: qemu-img leaves their extension
 * and clusters behind (leaked, and the bitmaps inconsistent on the next
 * open); they are removed here instead, so that the image checks clean.
 */
static int
qcow2_amend_downgrade(struct vimg_node *node, struct qcow2_amend_progress *pr,
                      struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    struct qcow2_amend_walk w = { .pr = pr };
    int ret;

    pr->current = AMEND_OP_DOWNGRADE;
    if ((ret = qcow2_amend_check_downgrade(node, err)) < 0 ||
        (ret = qcow2_bitmaps_drop_all(node, err)) < 0 ||
        (ret = qcow2_amend_for_each_l1(node, qcow2_amend_count_l1, &w, err)) < 0 ||
        (ret = qcow2_amend_for_each_l1(node, qcow2_amend_unzero_l1, &w, err)) < 0 ||
        (ret = qcow2_flush_metadata(node, err)) < 0)
        return ret;
    qcow2_amend_drop_v3_exts(s);
    s->hdr.version = 2;
    s->hdr.incompatible_features = 0;
    s->hdr.compatible_features = 0;
    s->hdr.autoclear_features = 0;
    s->hdr.header_length = QCOW2_V2_HEADER_LENGTH;
    s->hdr.compression_type = QCOW2_COMPRESSION_ZLIB;
    s->compression_type = QCOW2_COMPRESSION_ZLIB;
    return qcow2_write_header(node, err);
}

/* ---- data file ---- */

/* Sets the data file extension to name, dropping it for "", placed where QEMU writes it. */
static int
qcow2_amend_set_data_file_ext(struct qcow2_state *s, const char *name, struct vimg_error *err)
{
    size_t i, len = strlen(name);
    char *copy = NULL, *ext_copy = NULL;

    for (i = 0; i < s->n_exts && s->exts[i].type != QCOW2_EXT_DATA_FILE; i++)
        ;
    if (len && (!(copy = strdup(name)) || !(ext_copy = strdup(name)))) {
        free(copy);
        return vimg_error_set(err, ENOMEM, "Out of memory");
    }
    if (i == s->n_exts && len) {
        struct qcow2_ext *exts = realloc(s->exts, (s->n_exts + 1) * sizeof(*exts));
        if (!exts) {
            free(copy);
            free(ext_copy);
            return vimg_error_set(err, ENOMEM, "Out of memory");
        }
        s->exts = exts;
        /* First after the backing format, as QEMU orders the extensions. */
        memmove(s->exts + 1, s->exts, s->n_exts++ * sizeof(*exts));
        i = 0;
    } else if (i < s->n_exts) {
        free(s->exts[i].data);
        if (!len)
            memmove(s->exts + i, s->exts + i + 1, (--s->n_exts - i) * sizeof(*s->exts));
    }
    if (len)
        s->exts[i] = (struct qcow2_ext){
            .type = QCOW2_EXT_DATA_FILE, .len = (uint32_t)len, .data = (uint8_t *)ext_copy,
        };
    free(s->data_file_name);
    s->data_file_name = copy;
    return 0;
}

static int
qcow2_amend_data_file(struct vimg_node *node, const struct qcow2_amend_params *p,
                      struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    int ret;

    if ((ret = qcow2_flush_metadata(node, err)) < 0)
        return ret;
    if (p->data_file && (ret = qcow2_amend_set_data_file_ext(s, p->data_file, err)) < 0)
        return ret;
    if (p->has_data_file_raw && !p->is_data_file_raw) {
        s->hdr.autoclear_features &= ~QCOW2_AUTOCLEAR_DATA_FILE_RAW;
        s->is_data_file_raw = false;
    }
    if ((ret = qcow2_write_header(node, err)) < 0)
        vimg_error_prefix(err, "Failed to update the image header: ");
    return ret;
}

/* ---- the op ---- */

static int
qcow2_amend_header(struct vimg_node *node, const struct qcow2_amend_params *p, bool is_before,
                   struct qcow2_amend_progress *pr, struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    bool is_lazy = s->hdr.compatible_features & QCOW2_COMPAT_LAZY_REFCOUNTS;
    int ret = 0;

    pthread_mutex_lock(&s->lock);
    if (is_before && p->version > s->hdr.version)
        ret = qcow2_amend_upgrade(node, pr, err);
    if (ret == 0 && is_before && p->refcount_bits != s->refcount_bits)
        ret = qcow2_amend_refcount_order(node, (uint32_t)__builtin_ctzll(p->refcount_bits),
                                         pr, err);
    if (ret == 0 && is_before && (p->data_file || (p->has_data_file_raw &&
                                                   p->is_data_file_raw != s->is_data_file_raw)))
        ret = qcow2_amend_data_file(node, p, err);
    if (ret == 0 && !is_before && p->has_lazy && p->has_lazy_refcounts != is_lazy &&
        s->hdr.version >= 3)
        ret = qcow2_amend_set_lazy(node, p->has_lazy_refcounts, err);
    if (ret == 0 && !is_before && p->version < s->hdr.version)
        ret = qcow2_amend_downgrade(node, pr, err);
    pthread_mutex_unlock(&s->lock);
    return ret;
}

int
qcow2_amend(struct vimg_node *node, struct vimg_opts *opts, bool is_forced,
            vimg_progress_fn *progress, void *opaque, struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    struct qcow2_amend_params p = { 0 };
    struct qcow2_amend_progress pr = { .fn = progress, .opaque = opaque };
    int ret;

    if ((ret = qcow2_amend_parse(node, opts, &p, err)) < 0)
        return ret;
    pr.total_ops = (p.version != s->hdr.version) + (p.refcount_bits != s->refcount_bits) +
                   p.has_encrypt;
    if ((ret = qcow2_crypt_amend(node, opts, is_forced, err)) < 0 ||
        (ret = qcow2_amend_header(node, &p, true, &pr, err)) < 0)
        return ret;
    if (p.has_size && p.size != s->hdr.size &&
        (ret = qcow2_truncate(node, p.size, false, VIMG_PREALLOC_OFF, err)) < 0)
        return ret;
    return qcow2_amend_header(node, &p, false, &pr, err);
}
