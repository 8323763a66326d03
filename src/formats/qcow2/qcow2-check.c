/*
 * qcow2 consistency check and repair, as `qemu-img check` does it (spec
 * "Host cluster management"; behaviour and texts observed from qemu-img 7.2).
 *
 * Every reference to a host cluster is counted in memory: the header, the
 * active and the snapshots' L1/L2 tables and data clusters, the snapshot
 * table, the refcount table and blocks, bitmaps and the encryption header.
 * The counts are compared with the stored refcounts: stored > counted is a
 * leak, stored < counted a corruption. Then the COPIED flags of the active
 * L1/L2 entries are compared with the refcounts. Each finding is reported on
 * its own line (through vimg_warn) with qemu-img's words.
 *
 * Repair (-r): leaks and too-low refcounts are set to the counted values;
 * where a stored refcount is 0 or a refcount block is unusable, the whole
 * refcount structure is rebuilt from the counts (new blocks and table in
 * free clusters, first fit), then the old structure, now leaked, is freed.
 * With -r all the snapshot table is repaired as QEMU repairs it (overhanging
 * entries dropped, too long extra data cut, incomplete entries completed,
 * the table rewritten), QEMU's refusals included.
 * Left out: repairing unaligned preallocated clusters (reported as errors only).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "formats/qcow2/qcow2.h"

/* At most this many clusters are counted (QEMU: INT_MAX; 2^28 counts use 1 GiB). */
#define QCOW2_CHECK_MAX_CLUSTERS    (UINT64_C(1) << 28)
#define QCOW2_L1E_RESERVED          UINT64_C(0x7f000000000001ff)
#define QCOW2_L2E_RESERVED          UINT64_C(0x3f000000000001fe)
#define QCOW2_L2E_RESERVED_EXTL2    UINT64_C(0x3f000000000001ff)
#define QCOW2_RTE_RESERVED          UINT64_C(0x1ff)
#define QCOW2_SN_MIN_EXTRA          16      /* vm_state_size_large + disk_size */
#define QCOW2_SN_MAX_EXTRA          1024
#define QCOW2_SN_MAX_TABLE          (UINT64_C(64) << 20)

struct qcow2_check_ctx {
    struct vimg_node *node;
    struct qcow2_state *s;
    struct vimg_check_result *res;
    uint32_t *refs;             /* references counted per host cluster */
    uint64_t n_refs;            /* clusters in refs: the file's, or more when referenced */
    uint64_t file_len;
    uint64_t next_contig;       /* where the next data cluster of this L2 table would be
                                   unfragmented (0: none yet) */
    uint64_t highest;           /* last cluster with a stored or counted reference */
    uint64_t snapshots_size;    /* bytes of the snapshot table */
    int fix;                    /* of this counting pass (repairs of L2 entries) */
    uint64_t l2_offset;         /* the L2 table being counted */
    bool needs_rebuild;
    bool has_signalled;         /* "Image is corrupt" said once */
    struct qcow2_check_sn *sn;  /* the snapshot table as read */
    uint32_t n_sn;
    bool sn_rewrite;            /* -r all repaired entries: the table is written anew */
};

static int
qcow2_check_grow(struct qcow2_check_ctx *c, uint64_t n, struct vimg_error *err)
{
    uint32_t *r;

    if (n <= c->n_refs)
        return 0;
    if (n > QCOW2_CHECK_MAX_CLUSTERS)
        return vimg_error_set(err, EFBIG, "File too large");
    if (!(r = realloc(c->refs, n * sizeof(*r))))
        return vimg_error_set(err, ENOMEM, "Out of memory");
    memset(r + c->n_refs, 0, (n - c->n_refs) * sizeof(*r));
    c->refs = r;
    c->n_refs = n;
    return 0;
}

/* One more reference to every cluster of [offset, +bytes). */
static int
qcow2_check_inc(struct qcow2_check_ctx *c, uint64_t offset, uint64_t bytes,
                struct vimg_error *err)
{
    struct qcow2_state *s = c->s;
    uint64_t end, max = s->refcount_max < UINT32_MAX ? s->refcount_max : UINT32_MAX;
    int ret;

    if (bytes == 0)
        return 0;
    if (__builtin_add_overflow(offset, bytes, &end) ||
        (end > c->file_len && end - c->file_len >= s->cluster_size)) {
        vimg_warn("ERROR: counting reference for region exceeding the end of the file by one "
                  "cluster or more: offset 0x%" PRIx64 " size 0x%" PRIx64, offset, bytes);
        c->res->corruptions++;
        return 0;
    }
    if ((ret = qcow2_check_grow(c, (end - 1) / s->cluster_size + 1, err)) < 0)
        return ret;
    for (uint64_t i = offset / s->cluster_size; i <= (end - 1) / s->cluster_size; i++) {
        if (c->refs[i] >= max) {
            vimg_warn("ERROR: overflow cluster offset=0x%" PRIx64 "\nUse qemu-img amend to "
                      "increase the refcount entry width or qemu-img convert to create a "
                      "clean copy if the image cannot be opened for writing",
                      i * s->cluster_size);
            c->res->corruptions++;
            continue;
        }
        c->refs[i]++;
    }
    return 0;
}

static int
qcow2_check_read(struct qcow2_check_ctx *c, uint64_t offset, uint64_t bytes, uint8_t **out,
                 struct vimg_error *err)
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

static void
qcow2_check_frag(struct qcow2_check_ctx *c, uint64_t host)
{
    if (c->next_contig && host != c->next_contig)
        c->res->fragmented_clusters++;
    c->res->allocated_clusters++;
    c->next_contig = host + c->s->cluster_size;
}

static int
qcow2_check_fix_entry(struct qcow2_check_ctx *c, uint64_t table, uint64_t index,
                      uint64_t entry, struct vimg_error *err)
{
    uint8_t buf[8];

    qcow2_put_be64(buf, entry);
    return qcow2_pwrite_file(c->node->file, table + index * 8, buf, 8, err);
}

/* A preallocated zero cluster at an unaligned offset becomes a plain zero cluster. */
static int
qcow2_check_unaligned_zero(struct qcow2_check_ctx *c, uint64_t host, uint32_t index,
                           struct vimg_error *err)
{
    int ret;

    if (!(c->fix & VIMG_CHECK_FIX_ERRORS) || c->l2_offset % c->s->cluster_size) {
        vimg_warn("ERROR offset=%" PRIx64 ": Preallocated cluster is not properly aligned; "
                  "L2 entry corrupted.", host);
        c->res->corruptions++;
        return 1;
    }
    vimg_warn("Repairing offset=%" PRIx64 ": Preallocated cluster is not properly aligned; "
              "L2 entry corrupted.", host);
    qcow2_cache_forget(&c->s->l2_cache, c->l2_offset);
    if ((ret = qcow2_check_fix_entry(c, c->l2_offset, index, QCOW2_OFLAG_ZERO, err)) < 0)
        return ret;
    c->res->corruptions_fixed++;
    return 0;
}

static int
qcow2_check_l2_entry(struct qcow2_check_ctx *c, uint32_t index, uint64_t entry,
                     uint64_t bitmap, bool is_active, struct vimg_error *err)
{
    struct qcow2_state *s = c->s;
    uint64_t host = entry & QCOW2_OFFSET_MASK, coff, csize;
    uint64_t reserved = s->has_extended_l2 ? QCOW2_L2E_RESERVED_EXTL2 : QCOW2_L2E_RESERVED;

    if (entry & QCOW2_OFLAG_COMPRESSED) {
        if (s->has_extended_l2 && bitmap) {
            vimg_warn("ERROR compressed cluster %" PRIu32 " with non-zero subcluster "
                      "allocation bitmap, entry=%#" PRIx64, index / 2, entry);
            c->res->corruptions++;
            return 0;
        }
        qcow2_compressed_extent(s, entry, &coff, &csize);
        if (is_active) {
            c->res->allocated_clusters++;
            c->res->compressed_clusters++;
            /* Compressed clusters are fragmented by nature, as QEMU counts them. */
            c->res->fragmented_clusters++;
        }
        return qcow2_check_inc(c, coff, csize, err);
    }
    if (entry & reserved) {
        vimg_warn("ERROR found l2 entry with reserved bits set: %" PRIx64, entry);
        c->res->corruptions++;
    }
    if (!host) {
        if (s->has_extended_l2 && (bitmap & UINT32_MAX)) {
            vimg_warn("ERROR: Unallocated cluster has non-zero subcluster allocation map");
            c->res->corruptions++;
        }
        return 0;
    }
    if (s->has_extended_l2 && ((bitmap >> 32) & bitmap & UINT32_MAX)) {
        vimg_warn("ERROR offset=%" PRIx64 ": Allocated cluster has corrupted subcluster "
                  "allocation bitmap", host);
        c->res->corruptions++;
    }
    if (host % s->cluster_size && (entry & QCOW2_OFLAG_ZERO) && !s->has_extended_l2) {
        int ret = qcow2_check_unaligned_zero(c, host, index, err);
        if (ret <= 0)
            return ret;
    } else if (host % s->cluster_size) {
        vimg_warn("ERROR offset=%" PRIx64 ": Data cluster is not properly aligned; L2 entry "
                  "corrupted.", host);
        c->res->corruptions++;
    }
    if (is_active)
        qcow2_check_frag(c, host);
    if (s->has_data_file)
        return 0;
    return qcow2_check_inc(c, host, s->cluster_size, err);
}

static int
qcow2_check_l2(struct qcow2_check_ctx *c, uint64_t l2_offset, bool is_active,
               struct vimg_error *err)
{
    struct qcow2_state *s = c->s;
    uint8_t *l2;
    int ret;

    if ((ret = qcow2_check_read(c, l2_offset, s->cluster_size, &l2, err)) < 0) {
        vimg_warn("ERROR: I/O error in check_refcounts_l2");
        c->res->check_errors++;
        return 0;
    }
    /* As QEMU counts it, fragmentation is within one L2 table. */
    c->next_contig = 0;
    c->l2_offset = l2_offset;
    for (uint32_t j = 0; ret == 0 && j < s->l2_entries; j++) {
        uint8_t *p = l2 + (uint64_t)j * s->l2_entry_size;
        ret = qcow2_check_l2_entry(c, j * (s->l2_entry_size / 8), qcow2_be64(p),
                                   s->has_extended_l2 ? qcow2_be64(p + 8) : 0, is_active, err);
    }
    free(l2);
    return ret;
}

static int
qcow2_check_l1(struct qcow2_check_ctx *c, uint64_t l1_offset, uint32_t l1_size, bool is_active,
               struct vimg_error *err)
{
    struct qcow2_state *s = c->s;
    uint8_t *l1;
    int ret;

    if ((ret = qcow2_check_inc(c, l1_offset, (uint64_t)l1_size * 8, err)) < 0 || !l1_size)
        return ret;
    if (qcow2_check_read(c, l1_offset, (uint64_t)l1_size * 8, &l1, err) < 0) {
        vimg_warn("ERROR: I/O error in check_refcounts_l1");
        c->res->check_errors++;
        return 0;
    }
    for (uint32_t i = 0; i < l1_size && ret == 0; i++) {
        uint64_t e = qcow2_be64(l1 + (uint64_t)i * 8), off = e & QCOW2_OFFSET_MASK;
        if (e & QCOW2_L1E_RESERVED) {
            vimg_warn("ERROR found L1 entry with reserved bits set: %" PRIx64, e);
            c->res->corruptions++;
        }
        if (!off)
            continue;
        if ((ret = qcow2_check_inc(c, off, s->cluster_size, err)) < 0)
            break;
        if (off % s->cluster_size) {
            vimg_warn("ERROR l2_offset=%" PRIx64 ": Table is not cluster aligned; L1 entry "
                      "corrupted", off);
            c->res->corruptions++;
        }
        ret = qcow2_check_l2(c, off, is_active, err);
    }
    free(l1);
    return ret;
}

/* One snapshot table entry as check reads it (a too long extra part cut to its first KiB). */
struct qcow2_check_sn {
    uint8_t hdr[40];            /* the fixed part as on disk */
    uint8_t *extra;             /* the first extra_len bytes of the extra data */
    uint32_t extra_len;
    uint32_t disk_extra;        /* the extra data size on disk */
    char *id;
    char *name;
    uint16_t id_len;
    uint16_t name_len;
};

static void
qcow2_check_free_sn(struct qcow2_check_ctx *c)
{
    for (uint32_t i = 0; i < c->n_sn; i++) {
        free(c->sn[i].extra);
        free(c->sn[i].id);
        free(c->sn[i].name);
    }
    free(c->sn);
    c->sn = NULL;
    c->n_sn = 0;
}

static bool
qcow2_check_sn_incomplete(const struct qcow2_check_ctx *c, const struct qcow2_check_sn *e)
{
    return c->s->hdr.version >= 3 && e->disk_extra < QCOW2_SN_MIN_EXTRA;
}

static int
qcow2_check_read_sn(struct qcow2_check_ctx *c, uint64_t off, uint32_t i, int fix,
                    struct qcow2_check_sn *e, uint64_t *next, struct vimg_error *err)
{
    struct vimg_node *file = c->node->file;
    uint64_t var;
    int ret;

    if ((ret = qcow2_read_meta(file, off, e->hdr, sizeof(e->hdr), err)) < 0)
        return ret;
    e->disk_extra = qcow2_be32(e->hdr + 36);
    e->extra_len = e->disk_extra;
    e->id_len = qcow2_be16(e->hdr + 12);
    e->name_len = qcow2_be16(e->hdr + 14);
    if (e->disk_extra > QCOW2_SN_MAX_EXTRA) {
        if (!(fix & VIMG_CHECK_FIX_ERRORS)) {
            vimg_warn("ERROR failed to read the snapshot table: Too much extra metadata in "
                      "snapshot table entry %" PRIu32 "\nYou can force-remove this extra "
                      "metadata with qemu-img check -r all", i);
            return vimg_error_set(err, EFBIG, "%s", strerror(EFBIG));
        }
        vimg_warn("Discarding too much extra metadata in snapshot table entry %" PRIu32
                  " (%" PRIu32 " > %u)", i, e->disk_extra, QCOW2_SN_MAX_EXTRA);
        e->extra_len = QCOW2_SN_MAX_EXTRA;
        c->sn_rewrite = true;
    }
    e->extra = malloc(e->extra_len ? e->extra_len : 1);
    e->id = malloc((size_t)e->id_len + 1);
    e->name = malloc((size_t)e->name_len + 1);
    if (!e->extra || !e->id || !e->name)
        return vimg_error_set(err, ENOMEM, "Out of memory");
    var = off + 40 + e->disk_extra;
    if ((ret = qcow2_read_meta(file, off + 40, e->extra, e->extra_len, err)) < 0 ||
        (ret = qcow2_read_meta(file, var, e->id, e->id_len, err)) < 0 ||
        (ret = qcow2_read_meta(file, var + e->id_len, e->name, e->name_len, err)) < 0)
        return ret;
    e->id[e->id_len] = '\0';
    e->name[e->name_len] = '\0';
    *next = off + qcow2_align_up(40 + (uint64_t)e->disk_extra + e->id_len + e->name_len, 8);
    return 0;
}

/*
 * Reads the snapshot table. What QEMU's open refuses in it, check fails on
 * before anything else, with these words; with -r all, as QEMU, overhanging
 * entries are dropped (the header says so at once), too long extra data is
 * cut and incomplete entries are completed: the table is rewritten after
 * the refcounts are repaired.
 */
static int
qcow2_check_snapshot_table(struct qcow2_check_ctx *c, int fix, struct vimg_error *err)
{
    struct qcow2_state *s = c->s;
    uint64_t off = s->hdr.snapshots_offset;
    int ret;

    if (s->hdr.nb_snapshots > 65536) {
        uint8_t buf[4];
        if (!(fix & VIMG_CHECK_FIX_ERRORS)) {
            vimg_warn("ERROR snapshot table too large\nYou can force-remove all %" PRIu32
                      " overhanging snapshots with qemu-img check -r all",
                      s->hdr.nb_snapshots - 65536);
            return vimg_error_set(err, EFBIG, "%s", strerror(EFBIG));
        }
        vimg_warn("Discarding %" PRIu32 " overhanging snapshots", s->hdr.nb_snapshots - 65536);
        qcow2_put_be32(buf, 65536);
        if ((ret = qcow2_write_header_field(c->node, QCOW2_OFF_NB_SNAPSHOTS, buf, 4, err)) < 0 ||
            (ret = vimg_node_flush(c->node->file, err)) < 0)
            return ret;
        s->hdr.nb_snapshots = 65536;
        c->res->corruptions_fixed++;
        c->sn_rewrite = true;
    }
    if (s->hdr.nb_snapshots && (off % s->cluster_size || off > (uint64_t)INT64_MAX -
                                (uint64_t)s->hdr.nb_snapshots * 40)) {
        vimg_warn("ERROR snapshot table offset invalid");
        return vimg_error_set(err, EINVAL, "%s", strerror(EINVAL));
    }
    if (!(c->sn = calloc(s->hdr.nb_snapshots ? s->hdr.nb_snapshots : 1, sizeof(*c->sn))))
        return vimg_error_set(err, ENOMEM, "Out of memory");
    for (uint32_t i = 0; i < s->hdr.nb_snapshots; i++) {
        const struct qcow2_check_sn *e = &c->sn[i];
        uint64_t at = off;
        c->n_sn = i + 1;
        if ((ret = qcow2_check_read_sn(c, at, i, fix, &c->sn[i], &off, err)) < 0)
            return ret;
        /* QEMU's bound on the table (which also bounds what this reads). */
        if (off - s->hdr.snapshots_offset > QCOW2_SN_MAX_TABLE) {
            uint8_t buf[4];
            if (!(fix & VIMG_CHECK_FIX_ERRORS)) {
                vimg_warn("ERROR failed to read the snapshot table: Snapshot table is too "
                          "big\nYou can force-remove all %" PRIu32 " overhanging snapshots "
                          "with qemu-img check -r all", s->hdr.nb_snapshots - i);
                return vimg_error_set(err, EFBIG, "%s", strerror(EFBIG));
            }
            vimg_warn("Discarding %" PRIu32 " overhanging snapshots (snapshot table is too "
                      "big)", s->hdr.nb_snapshots - i);
            qcow2_put_be32(buf, i);
            if ((ret = qcow2_write_header_field(c->node, QCOW2_OFF_NB_SNAPSHOTS, buf, 4,
                                                err)) < 0 ||
                (ret = vimg_node_flush(c->node->file, err)) < 0)
                return ret;
            s->hdr.nb_snapshots = i;
            c->res->corruptions_fixed++;
            c->sn_rewrite = true;
            free(c->sn[i].extra);
            free(c->sn[i].id);
            free(c->sn[i].name);
            c->n_sn = i;
            off = at;
            break;
        }
        /* The table ends where its last entry does, unpadded. */
        c->snapshots_size = off - qcow2_align_up(40 + (uint64_t)e->disk_extra + e->id_len +
                                                 e->name_len, 8) +
                            40 + e->disk_extra + e->id_len + e->name_len -
                            s->hdr.snapshots_offset;
    }
    if (!(fix & VIMG_CHECK_FIX_ERRORS))
        return 0;
    for (uint32_t i = 0; i < c->n_sn; i++) {
        if (!qcow2_check_sn_incomplete(c, &c->sn[i]))
            continue;
        vimg_warn("Repairing snapshot table entry %" PRIu32 " is incomplete", i);
        c->res->corruptions_fixed++;
        c->sn_rewrite = true;
    }
    return 0;
}

/* Snapshot table entries: their L1 tables and what those reach. */
static int
qcow2_check_snapshots(struct qcow2_check_ctx *c, struct vimg_error *err)
{
    struct qcow2_state *s = c->s;
    int ret = 0;

    for (uint32_t i = 0; i < c->n_sn && ret == 0; i++) {
        const struct qcow2_check_sn *e = &c->sn[i];
        uint64_t l1_off = qcow2_be64(e->hdr);
        uint32_t l1_size = qcow2_be32(e->hdr + 8);
        if (qcow2_check_sn_incomplete(c, e) && !(c->fix & VIMG_CHECK_FIX_ERRORS)) {
            vimg_warn("ERROR snapshot table entry %" PRIu32 " is incomplete", i);
            c->res->corruptions++;
        }
        if (l1_off % s->cluster_size) {
            vimg_warn("ERROR snapshot %s (%s) l1_offset=%#" PRIx64 ": L1 table is not "
                      "cluster aligned; snapshot table entry corrupted", e->id, e->name,
                      l1_off);
            c->res->corruptions++;
            continue;
        }
        if (l1_size > QCOW2_MAX_L1_BYTES / 8) {
            vimg_warn("ERROR snapshot %s (%s) l1_size=%#" PRIx32 ": L1 table is too large; "
                      "snapshot table entry corrupted", e->id, e->name, l1_size);
            c->res->corruptions++;
            continue;
        }
        ret = qcow2_check_l1(c, l1_off, l1_size, false, err);
    }
    return ret;
}

/* Sets the corrupt bit in the header, as QEMU does with each corruption event it reports. */
static int
qcow2_check_set_corrupt(struct qcow2_check_ctx *c, struct vimg_error *err)
{
    return qcow2_mark_corrupt(c->node, err);
}

/* A write onto metadata refused, as QEMU refuses it: the first one is reported. */
static int
qcow2_check_mark_corrupt(struct qcow2_check_ctx *c, const char *what, struct vimg_error *err)
{
    if (!c->has_signalled)
        vimg_warn("qcow2: Marking image as corrupt: Preventing invalid write on metadata "
                  "(overlaps with %s); further corruption events will be suppressed", what);
    c->has_signalled = true;
    return qcow2_check_set_corrupt(c, err);
}

/* The repaired table: extra data completed (size, icount unknown), the last entry unpadded. */
static uint8_t *
qcow2_check_encode_sn(const struct qcow2_check_ctx *c, uint64_t *size_out)
{
    uint64_t size = 0, at = 0;
    uint8_t *buf;

    for (uint32_t i = 0; i < c->n_sn; i++) {
        const struct qcow2_check_sn *e = &c->sn[i];
        size = qcow2_align_up(size, 8) + 40 + (e->extra_len > 24 ? e->extra_len : 24) +
               e->id_len + e->name_len;
    }
    if (!(buf = calloc(1, size ? size : 1)))
        return NULL;
    for (uint32_t i = 0; i < c->n_sn; i++) {
        const struct qcow2_check_sn *e = &c->sn[i];
        uint32_t len = e->extra_len > 24 ? e->extra_len : 24;
        uint8_t *h = buf + (at = qcow2_align_up(at, 8)), *x = h + 40;
        memcpy(h, e->hdr, 40);
        qcow2_put_be32(h + 36, len);
        memcpy(x, e->extra, e->extra_len);
        if (e->extra_len < 8)
            qcow2_put_be64(x, qcow2_be32(e->hdr + 32));
        if (e->extra_len < 16)
            qcow2_put_be64(x + 8, c->s->hdr.size);
        if (e->extra_len < 24)
            qcow2_put_be64(x + 16, UINT64_MAX);
        memcpy(x + len, e->id, e->id_len);
        memcpy(x + len + e->id_len, e->name, e->name_len);
        at += 40 + len + e->id_len + e->name_len;
    }
    *size_out = size;
    return buf;
}

/*
 * Writes the repaired snapshot table at newly allocated clusters, then frees
 * the old one. As QEMU, a new place that overlaps the old table as its
 * entries measured it is refused (the image is marked corrupt), and an old
 * table whose clusters are not counted stays where it is.
 */
static int
qcow2_check_write_sn(struct qcow2_check_ctx *c, struct vimg_error *err)
{
    struct qcow2_state *s = c->s;
    struct vimg_node *node = c->node;
    uint64_t old_off = s->hdr.snapshots_offset, old_size = c->snapshots_size;
    uint64_t size, off = 0, cs = s->cluster_size;
    uint8_t *buf = qcow2_check_encode_sn(c, &size), hdr[12];
    bool can_free = old_size > 0;
    int ret;

    if (!buf)
        return vimg_error_set(err, ENOMEM, "Out of memory");
    ret = c->n_sn ? qcow2_alloc_clusters(node, (size + cs - 1) / cs, &off, err) : 0;
    if (ret == 0)
        ret = qcow2_flush_metadata(node, err);
    if (ret == 0 && size && old_size && off < qcow2_align_up(old_off + old_size, cs) &&
        old_off - old_off % cs < off + size) {
        if ((ret = qcow2_check_mark_corrupt(c, "snapshot table", err)) == 0) {
            vimg_warn("ERROR failed to update snapshot table: %s", strerror(EIO));
            ret = vimg_error_set(err, EIO, "%s", strerror(EIO));
        }
    }
    if (ret == 0 && size)
        ret = qcow2_pwrite_file(node->file, off, buf, size, err);
    free(buf);
    if (ret == 0)
        ret = vimg_node_flush(node->file, err);
    if (ret < 0)
        return ret;
    qcow2_put_be32(hdr, c->n_sn);
    qcow2_put_be64(hdr + 4, off);
    if ((ret = qcow2_write_header_field(node, QCOW2_OFF_NB_SNAPSHOTS, hdr, 12, err)) < 0 ||
        (ret = vimg_node_flush(node->file, err)) < 0)
        return ret;
    s->hdr.nb_snapshots = c->n_sn;
    s->hdr.snapshots_offset = off;
    for (uint64_t ci = old_off / cs; can_free && ci <= (old_off + old_size - 1) / cs; ci++) {
        uint64_t rc;
        if (qcow2_get_refcount(node, ci, &rc, NULL) < 0 || rc == 0)
            can_free = false;
    }
    if (!can_free) {
        if (old_size)
            vimg_warn("qcow2_free_clusters failed: %s", strerror(EINVAL));
        return 0;
    }
    if ((ret = qcow2_free_clusters(node, old_off, old_size, err)) < 0)
        return ret;
    for (uint64_t ci = old_off / cs; ci <= (old_off + old_size - 1) / cs; ci++) {
        uint64_t rc;
        if ((ret = qcow2_get_refcount(node, ci, &rc, err)) < 0)
            return ret;
        if (rc == 0 && (ret = vimg_node_discard(node->file, ci * cs, cs, NULL)) < 0 &&
            ret != -ENOTSUP)
            return vimg_error_set(err, -ret, "Could not discard cluster 0x%" PRIx64, ci * cs);
    }
    return qcow2_flush_metadata(node, err);
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
    if ((ret = qcow2_check_inc(c, s->bitmaps_dir_offset, s->bitmaps_dir_size, err)) < 0 ||
        (ret = qcow2_check_read(c, s->bitmaps_dir_offset, s->bitmaps_dir_size, &dir, err)) < 0)
        return ret;
    for (uint32_t i = 0; i < s->nb_bitmaps && ret == 0 && at + 24 <= s->bitmaps_dir_size;
         i++) {
        uint64_t t_off = qcow2_be64(dir + at);
        uint32_t t_size = qcow2_be32(dir + at + 8);
        at += qcow2_align_up(24 + (uint64_t)qcow2_be32(dir + at + 20) +
                             qcow2_be16(dir + at + 18), 8);
        if (t_size > QCOW2_MAX_L1_BYTES / 8)
            continue;
        if ((ret = qcow2_check_inc(c, t_off, (uint64_t)t_size * 8, err)) < 0 ||
            (ret = qcow2_check_read(c, t_off, (uint64_t)t_size * 8, &table, err)) < 0)
            break;
        for (uint32_t j = 0; j < t_size && ret == 0; j++) {
            uint64_t e = qcow2_be64(table + (uint64_t)j * 8) & QCOW2_OFFSET_MASK;
            if (e)
                ret = qcow2_check_inc(c, e, s->cluster_size, err);
        }
        free(table);
    }
    free(dir);
    return ret;
}

/* The refcount blocks themselves: each must be aligned, inside the file and counted once. */
static int
qcow2_check_refblocks(struct qcow2_check_ctx *c, int fix, struct vimg_error *err)
{
    struct qcow2_state *s = c->s;
    uint64_t n_file = qcow2_align_up(c->file_len, s->cluster_size) / s->cluster_size;
    int ret;

    for (uint32_t i = 0; i < s->rt_size; i++) {
        uint64_t off = s->rt[i] & QCOW2_RT_OFFSET_MASK, ci = off / s->cluster_size;
        if (s->rt[i] & QCOW2_RTE_RESERVED) {
            vimg_warn("ERROR refcount table entry %" PRIu32 " has reserved bits set", i);
            c->res->corruptions++;
            c->needs_rebuild = true;
            continue;
        }
        if (off % s->cluster_size) {
            vimg_warn("ERROR refcount block %" PRIu32 " is not cluster aligned; refcount "
                      "table entry corrupted", i);
            c->res->corruptions++;
            c->needs_rebuild = true;
            continue;
        }
        if (off && ci >= n_file) {
            c->res->corruptions++;
            if (!(fix & VIMG_CHECK_FIX_ERRORS)) {
                vimg_warn("ERROR refcount block %" PRIu32 " is outside image", i);
                c->needs_rebuild = true;
                continue;
            }
            /* As QEMU: the file grows to hold it, then the rebuild puts things right. */
            vimg_warn("Repairing refcount block %" PRIu32 " is outside image", i);
            if ((ret = qcow2_grow_file(c->node->file, off + s->cluster_size, err)) < 0)
                return ret;
            c->file_len = off + s->cluster_size;
            n_file = ci + 1;
        }
        if (!off)
            continue;
        if ((ret = qcow2_check_inc(c, off, s->cluster_size, err)) < 0)
            return ret;
        if (ci < c->n_refs && c->refs[ci] != 1) {
            vimg_warn("ERROR refcount block %" PRIu32 " refcount=%" PRIu32, i, c->refs[ci]);
            c->res->corruptions++;
            c->needs_rebuild = true;
        }
    }
    return 0;
}

static int
qcow2_check_calculate(struct qcow2_check_ctx *c, int fix, struct vimg_error *err)
{
    struct qcow2_state *s = c->s;
    int64_t len = vimg_node_length(c->node->file, err);
    int ret;

    if (len < 0)
        return (int)len;
    c->file_len = (uint64_t)len;
    c->fix = fix;
    if (c->refs)
        memset(c->refs, 0, c->n_refs * sizeof(*c->refs));
    c->next_contig = 0;
    if ((ret = qcow2_check_grow(c, qcow2_align_up(c->file_len, s->cluster_size) /
                                   s->cluster_size, err)) < 0 ||
        (ret = qcow2_check_inc(c, 0, s->cluster_size, err)) < 0 ||
        (ret = qcow2_check_l1(c, s->hdr.l1_table_offset, s->l1_size, true, err)) < 0 ||
        (ret = qcow2_check_snapshots(c, err)) < 0 ||
        (ret = qcow2_check_inc(c, s->hdr.snapshots_offset, c->snapshots_size, err)) < 0 ||
        (ret = qcow2_check_inc(c, s->hdr.refcount_table_offset,
                               (uint64_t)s->hdr.refcount_table_clusters * s->cluster_size,
                               err)) < 0)
        return ret;
    if (s->crypto_length && (ret = qcow2_check_inc(c, s->crypto_offset, s->crypto_length,
                                                   err)) < 0)
        return ret;
    if ((ret = qcow2_check_bitmaps(c, err)) < 0)
        return ret;
    return qcow2_check_refblocks(c, fix, err);
}

/* The stored refcount, or an error said once as QEMU says it (corruption event). */
static int
qcow2_check_stored(struct qcow2_check_ctx *c, uint64_t i, uint64_t *rc)
{
    struct vimg_error e = { 0 };
    int ret = qcow2_get_refcount(c->node, i, rc, &e);

    if (ret < 0 && !c->has_signalled) {
        if (c->node->is_read_only)
            vimg_warn("qcow2: Image is corrupt: %s; further non-fatal corruption events will "
                      "be suppressed", e.msg);
        else
            vimg_warn("qcow2: Marking image as corrupt: %s; further corruption events will "
                      "be suppressed", e.msg);
        c->has_signalled = true;
        if (!c->node->is_read_only)
            (void)qcow2_check_set_corrupt(c, NULL);
    }
    return ret;
}

static int
qcow2_check_adjust(struct qcow2_check_ctx *c, uint64_t i, uint64_t stored, uint64_t value,
                   struct vimg_error *err)
{
    int ret = 0;

    for (; stored < value && ret == 0; stored++)
        ret = qcow2_update_refcount(c->node, i * c->s->cluster_size, 1, 1, err);
    for (; stored > value && ret == 0; stored--)
        ret = qcow2_update_refcount(c->node, i * c->s->cluster_size, 1, -1, err);
    /* As QEMU, a cluster a repair frees is discarded in the file. */
    if (ret == 0 && value == 0 && stored == 0 &&
        (ret = vimg_node_discard(c->node->file, i * c->s->cluster_size, c->s->cluster_size,
                                 NULL)) < 0 && ret != -ENOTSUP)
        return vimg_error_set(err, -ret, "Could not discard cluster 0x%" PRIx64,
                              i * c->s->cluster_size);
    return ret == -ENOTSUP ? 0 : ret;
}

static int
qcow2_check_compare(struct qcow2_check_ctx *c, int fix, struct vimg_error *err)
{
    int ret;

    for (uint64_t i = 0; i < c->n_refs; i++) {
        uint64_t stored, counted = c->refs[i];
        int64_t *fixed = NULL;
        if ((ret = qcow2_check_stored(c, i, &stored)) < 0) {
            vimg_warn("Can't get refcount for cluster %" PRIu64 ": %s", i, strerror(-ret));
            c->res->check_errors++;
            continue;
        }
        if (stored || counted)
            c->highest = i;
        if (stored == counted)
            continue;
        if (stored == 0)
            c->needs_rebuild = true;
        else if (stored > counted && (fix & VIMG_CHECK_FIX_LEAKS))
            fixed = &c->res->leaks_fixed;
        else if (stored < counted && (fix & VIMG_CHECK_FIX_ERRORS))
            fixed = &c->res->corruptions_fixed;
        vimg_warn("%s cluster %" PRIu64 " refcount=%" PRIu64 " reference=%" PRIu64,
                  fixed ? "Repairing" : stored < counted ? "ERROR" : "Leaked", i, stored,
                  counted);
        if (fixed) {
            if ((ret = qcow2_check_adjust(c, i, stored, counted, err)) < 0)
                return ret;
            (*fixed)++;
        } else if (stored < counted) {
            c->res->corruptions++;
        } else {
            c->res->leaks++;
        }
    }
    return 0;
}

/* First run of n clusters free in the counts from 0 on; they become used (count 1). */
static int
qcow2_check_alloc(struct qcow2_check_ctx *c, uint64_t n, uint64_t *first,
                  struct vimg_error *err)
{
    uint64_t run = 0, i;
    int ret;

    for (i = 0; i < c->n_refs && run < n; i++)
        run = c->refs[i] ? 0 : run + 1;
    if (run < n && (ret = qcow2_check_grow(c, c->n_refs + (n - run), err)) < 0)
        return ret;
    *first = run == n ? i - n : c->n_refs - n;
    for (uint64_t j = *first; j < *first + n; j++)
        c->refs[j] = 1;
    return 0;
}

static bool
qcow2_check_range_used(const struct qcow2_check_ctx *c, uint64_t ti)
{
    uint64_t rb = c->s->rb_entries;

    for (uint64_t j = ti * rb; j < (ti + 1) * rb && j < c->n_refs; j++)
        if (c->refs[j])
            return true;
    return false;
}

/*
 * Plans a new refcount structure for the counts: a block for every range
 * with a used cluster and a table after them, each in the first free
 * clusters. Allocating may use a new range, so it goes round until stable.
 */
static bool
qcow2_check_has_blocks(const struct qcow2_check_ctx *c, const uint64_t *rb, uint64_t n_rb,
                       uint64_t first, uint64_t n)
{
    for (uint64_t ti = first / c->s->rb_entries; ti <= (first + n - 1) / c->s->rb_entries;
         ti++)
        if (ti >= n_rb || !rb[ti])
            return false;
    return true;
}

static int
qcow2_check_plan_rebuild(struct qcow2_check_ctx *c, uint64_t **rb_out, uint64_t *n_rb_out,
                         uint64_t *n_rt, uint64_t *rt_first, struct vimg_error *err)
{
    struct qcow2_state *s = c->s;
    uint64_t *rb = NULL, n_rb = 0, tc, first;
    int ret;

    for (;;) {
        uint64_t need = (c->n_refs + s->rb_entries - 1) / s->rb_entries;
        uint64_t *r;
        bool is_changed = false;
        if (need > n_rb) {
            if (!(r = realloc(rb, need * sizeof(*r)))) {
                free(rb);
                return vimg_error_set(err, ENOMEM, "Out of memory");
            }
            memset(r + n_rb, 0, (need - n_rb) * sizeof(*r));
            rb = r;
            n_rb = need;
        }
        for (uint64_t ti = 0; ti < n_rb; ti++) {
            if (rb[ti] || !qcow2_check_range_used(c, ti))
                continue;
            if ((ret = qcow2_check_alloc(c, 1, &first, err)) < 0)
                goto fail;
            rb[ti] = first * s->cluster_size;
            is_changed = true;
        }
        if (is_changed || (c->n_refs + s->rb_entries - 1) / s->rb_entries > n_rb)
            continue;
        tc = qcow2_align_up(n_rb * 8, s->cluster_size) / s->cluster_size;
        if (tc * s->cluster_size > QCOW2_MAX_REFTABLE_BYTES) {
            ret = vimg_error_set(err, EFBIG, "Refcount table too large: %" PRIu64
                                 " clusters (at most %u bytes)", tc, QCOW2_MAX_REFTABLE_BYTES);
            goto fail;
        }
        if ((ret = qcow2_check_alloc(c, tc, &first, err)) < 0)
            goto fail;
        if (qcow2_check_has_blocks(c, rb, n_rb, first, tc)) {
            *rb_out = rb;
            *n_rb_out = n_rb;
            *n_rt = tc * s->cluster_size / 8;
            *rt_first = first;
            return 0;
        }
        /* The table lies in a range without a block yet: give it back and go round. */
        for (uint64_t j = first; j < first + tc; j++)
            c->refs[j] = 0;
        for (uint64_t ti = first / s->rb_entries; ti <= (first + tc - 1) / s->rb_entries; ti++) {
            if (ti >= n_rb || rb[ti])
                continue;
            uint64_t b;
            if ((ret = qcow2_check_grow(c, (ti + 1) * s->rb_entries, err)) < 0 ||
                (ret = qcow2_check_alloc(c, 1, &b, err)) < 0)
                goto fail;
            rb[ti] = b * s->cluster_size;
        }
    }
fail:
    free(rb);
    return ret;
}

/* Whether the cluster at offset holds a refcount block the old table names (aligned or not). */
static bool
qcow2_check_on_old_refblock(const struct qcow2_check_ctx *c, uint64_t offset)
{
    const struct qcow2_state *s = c->s;

    for (uint32_t i = 0; i < s->rt_size; i++) {
        uint64_t rb = s->rt[i] & QCOW2_RT_OFFSET_MASK;
        if (rb && rb / s->cluster_size == offset / s->cluster_size)
            return true;
    }
    return false;
}

static int
qcow2_check_write_rebuild(struct qcow2_check_ctx *c, const uint64_t *rb, uint64_t n_rb,
                          uint64_t n_rt, uint64_t rt_first, struct vimg_error *err)
{
    struct qcow2_state *s = c->s;
    uint64_t max = s->refcount_max, rt_bytes = n_rt * 8;
    uint8_t *block = malloc(s->cluster_size), *table = calloc(1, rt_bytes), hdr[12];
    int ret = 0;

    if (!block || !table) {
        ret = vimg_error_set(err, ENOMEM, "Out of memory");
        goto out;
    }
    for (uint64_t ti = 0; ti < n_rb && ti < n_rt && ret == 0; ti++) {
        if (!rb[ti])
            continue;
        memset(block, 0, s->cluster_size);
        for (uint64_t j = 0; j < s->rb_entries && ti * s->rb_entries + j < c->n_refs; j++)
            qcow2_refcount_set_raw(s, block, j, c->refs[ti * s->rb_entries + j] < max
                                   ? c->refs[ti * s->rb_entries + j] : max);
        qcow2_put_be64(table + ti * 8, rb[ti]);
        if (qcow2_check_on_old_refblock(c, rb[ti])) {
            /* As QEMU: a write onto a block the old table names is refused. */
            if ((ret = qcow2_check_mark_corrupt(c, "refcount block", err)) < 0)
                break;
            vimg_warn("ERROR writing refblock: %s", strerror(EIO));
            ret = vimg_error_set(err, EIO, "%s", strerror(EIO));
            break;
        }
        if ((ret = qcow2_pwrite_file(c->node->file, rb[ti], block, s->cluster_size, err)) < 0)
            vimg_error_prefix(err, "ERROR writing refblock");
    }
    if (ret == 0 && (ret = qcow2_pwrite_file(c->node->file, rt_first * s->cluster_size, table,
                                             rt_bytes, err)) < 0)
        vimg_error_prefix(err, "ERROR writing reftable");
    if (ret < 0 || (ret = vimg_node_flush(c->node->file, err)) < 0)
        goto out;
    /* The header points at the new structure only once it is on disk. */
    qcow2_put_be64(hdr, rt_first * s->cluster_size);
    qcow2_put_be32(hdr + 8, (uint32_t)(rt_bytes / s->cluster_size));
    if ((ret = qcow2_write_header_field(c->node, QCOW2_OFF_REFCOUNT_TABLE_OFFSET, hdr, 12,
                                        err)) < 0 ||
        (ret = vimg_node_flush(c->node->file, err)) < 0)
        goto out;
    s->hdr.refcount_table_offset = rt_first * s->cluster_size;
    s->hdr.refcount_table_clusters = (uint32_t)(rt_bytes / s->cluster_size);
    free(s->rt);
    s->rt = NULL;
    s->rt_size = 0;
    for (unsigned i = 0; i < s->rb_cache.n_entries; i++)
        qcow2_cache_forget(&s->rb_cache, s->rb_cache.entries[i].offset);
    s->free_cluster_index = 0;
    if (c->n_refs > s->alloc_end)
        s->alloc_end = c->n_refs;
    ret = qcow2_load_refcount_table(c->node, err);
out:
    free(block);
    free(table);
    return ret;
}

static int
qcow2_check_rebuild(struct qcow2_check_ctx *c, struct vimg_error *err)
{
    uint64_t *rb = NULL, n_rb = 0, n_rt = 0, rt_first = 0;
    int ret;

    if ((ret = qcow2_check_plan_rebuild(c, &rb, &n_rb, &n_rt, &rt_first, err)) < 0)
        return ret;
    ret = qcow2_check_write_rebuild(c, rb, n_rb, n_rt, rt_first, err);
    free(rb);
    return ret;
}

/* After a rebuild: count again, free the old structure (now leaked), tally as QEMU does. */
static int
qcow2_check_after_rebuild(struct qcow2_check_ctx *c, int fix, struct vimg_error *err)
{
    struct vimg_check_result before = *c->res, saved;
    int64_t fresh_leaks = 0;
    int ret;

    c->res->corruptions = 0;
    c->res->leaks = 0;
    c->needs_rebuild = false;
    c->res->allocated_clusters = c->res->fragmented_clusters = 0;
    c->res->compressed_clusters = 0;
    if ((ret = qcow2_check_calculate(c, 0, err)) < 0)
        return ret;
    if (fix & VIMG_CHECK_FIX_LEAKS) {
        saved = *c->res;
        memset(c->res, 0, sizeof(*c->res));
        if ((ret = qcow2_check_compare(c, VIMG_CHECK_FIX_LEAKS, err)) < 0)
            return ret;
        if (c->needs_rebuild)
            vimg_warn("ERROR rebuilt refcount structure is still broken");
        fresh_leaks = c->res->leaks;
        *c->res = saved;
    }
    if (c->res->corruptions < before.corruptions)
        c->res->corruptions_fixed += before.corruptions - c->res->corruptions;
    if (c->res->leaks < before.leaks)
        c->res->leaks_fixed += before.leaks - c->res->leaks;
    c->res->leaks += fresh_leaks;
    return 0;
}

/* COPIED must be set exactly where the refcount is 1 (active L1 and L2 entries). */
static int
qcow2_check_copied_l2(struct qcow2_check_ctx *c, uint64_t l2_off, int fix,
                      struct vimg_error *err)
{
    struct qcow2_state *s = c->s;
    uint8_t *l2;
    int ret = 0;

    if (qcow2_check_read(c, l2_off, s->cluster_size, &l2, err) < 0)
        return 0;
    for (uint32_t j = 0; j < s->l2_entries && ret == 0; j++) {
        uint64_t e = qcow2_be64(l2 + (uint64_t)j * s->l2_entry_size);
        uint64_t host = e & QCOW2_OFFSET_MASK, rc = 1;
        if ((e & QCOW2_OFLAG_COMPRESSED) || !host)
            continue;
        if (!s->has_data_file && qcow2_check_stored(c, host / s->cluster_size, &rc) < 0)
            continue;
        if ((rc == 1) == !!(e & QCOW2_OFLAG_COPIED))
            continue;
        vimg_warn("%s OFLAG_COPIED data cluster: l2_entry=%" PRIx64 " refcount=%" PRIu64,
                  fix ? "Repairing" : "ERROR", e, rc);
        if (!fix || l2_off % s->cluster_size) {
            c->res->corruptions++;
            continue;
        }
        e = rc == 1 ? e | QCOW2_OFLAG_COPIED : e & ~QCOW2_OFLAG_COPIED;
        qcow2_cache_forget(&s->l2_cache, l2_off);
        ret = qcow2_check_fix_entry(c, l2_off, (uint64_t)j * s->l2_entry_size / 8, e, err);
        if (ret == 0)
            c->res->corruptions_fixed++;
    }
    free(l2);
    return ret;
}

static int
qcow2_check_copied(struct qcow2_check_ctx *c, int fix, struct vimg_error *err)
{
    struct qcow2_state *s = c->s;
    int ret = 0;

    /* As QEMU: -r leaks repairs flags only when the refcounts are now right. */
    if (!(fix & VIMG_CHECK_FIX_ERRORS) &&
        (c->res->check_errors || c->res->corruptions || c->res->leaks))
        fix = 0;

    for (uint32_t i = 0; i < s->l1_size && ret == 0; i++) {
        uint64_t e = s->l1[i], off = e & QCOW2_OFFSET_MASK, rc;
        if (!off || qcow2_check_stored(c, off / s->cluster_size, &rc) < 0)
            continue;
        if ((rc == 1) != !!(e & QCOW2_OFLAG_COPIED)) {
            vimg_warn("%s OFLAG_COPIED L2 cluster: l1_index=%" PRIu32 " l1_entry=%" PRIx64
                      " refcount=%" PRIu64, fix ? "Repairing"
                      : "ERROR", i, e, rc);
            if (fix) {
                s->l1[i] = rc == 1 ? e | QCOW2_OFLAG_COPIED : e & ~QCOW2_OFLAG_COPIED;
                if ((ret = qcow2_check_fix_entry(c, s->hdr.l1_table_offset, i, s->l1[i],
                                                 err)) < 0)
                    break;
                c->res->corruptions_fixed++;
            } else {
                c->res->corruptions++;
            }
        }
        ret = qcow2_check_copied_l2(c, off, fix, err);
    }
    return ret;
}

static int
qcow2_check_refcounts(struct qcow2_check_ctx *c, int fix, struct vimg_error *err)
{
    struct vimg_check_result pre;
    int ret;

    if ((ret = qcow2_check_calculate(c, fix, err)) < 0)
        return ret;
    pre = *c->res;
    if ((ret = qcow2_check_compare(c, 0, err)) < 0)
        return ret;
    if (c->needs_rebuild && (fix & VIMG_CHECK_FIX_ERRORS)) {
        vimg_warn("Rebuilding refcount structure");
        if ((ret = qcow2_check_rebuild(c, err)) < 0 ||
            (ret = qcow2_check_after_rebuild(c, fix, err)) < 0)
            return ret;
    } else if (fix) {
        if (c->needs_rebuild) {
            vimg_warn("ERROR need to rebuild refcount structures");
            c->res->check_errors++;
            return vimg_error_set(err, EIO, "%s", strerror(EIO));
        }
        if (c->res->leaks || c->res->corruptions) {
            *c->res = pre;
            if ((ret = qcow2_check_compare(c, fix, err)) < 0)
                return ret;
        }
    }
    if ((ret = qcow2_check_copied(c, fix, err)) < 0)
        return ret;
    c->res->image_end_offset = (int64_t)((c->highest + 1) * c->s->cluster_size);
    return 0;
}

/* Clears the dirty and corrupt bits once a repair left nothing wrong. */
static int
qcow2_check_mark_clean(struct vimg_node *node, struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t bits = QCOW2_INCOMPAT_DIRTY | QCOW2_INCOMPAT_CORRUPT;
    int ret;

    if (!(s->hdr.incompatible_features & bits))
        return 0;
    if ((ret = vimg_node_flush(node->file, err)) < 0)
        return ret;
    s->hdr.incompatible_features &= ~bits;
    s->is_corrupt = false;
    s->is_dirty = false;
    node->is_dirty = false;
    return qcow2_write_incompatible_features(node, err);
}

/* Lock held. */
int
qcow2_check_locked(struct vimg_node *node, int fix, struct vimg_check_result *result,
                   struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    struct qcow2_check_ctx c = { .node = node, .s = s, .res = result };
    int ret;

    if (node->is_read_only)
        fix = 0;
    if (!node->is_read_only && (ret = qcow2_flush_metadata(node, err)) < 0)
        return ret;
    result->total_clusters = (int64_t)((s->hdr.size + s->cluster_size - 1) / s->cluster_size);
    if ((ret = qcow2_check_snapshot_table(&c, fix, err)) < 0) {
        qcow2_check_free_sn(&c);
        memset(result, 0, sizeof(*result));
        return ret;
    }
    ret = qcow2_check_refcounts(&c, fix, err);
    if (ret == 0 && c.sn_rewrite)
        ret = qcow2_check_write_sn(&c, err);
    qcow2_check_free_sn(&c);
    free(c.refs);
    if (ret == 0 && !node->is_read_only)
        ret = qcow2_flush_metadata(node, err);
    if (ret == 0 && fix && result->check_errors == 0 && result->corruptions == 0)
        ret = qcow2_check_mark_clean(node, err);
    return ret;
}

int
qcow2_check(struct vimg_node *node, int fix, struct vimg_check_result *result,
            struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    int ret;

    pthread_mutex_lock(&s->lock);
    ret = qcow2_check_locked(node, fix, result, err);
    pthread_mutex_unlock(&s->lock);
    return ret;
}
