/*
 * qcow2 `measure`: the size a new qcow2 image needs for a virtual size or
 * for the contents of an input image, as qemu-img 7.2 computes it (checks,
 * texts and rounding observed from it). Metadata is counted as for a fully
 * allocated image (header, L2 and L1 tables, refcount structures, found as
 * the fixed point where they also count themselves); "required" then drops
 * the data clusters the input does not use. Persistent bitmaps of a qcow2
 * input are measured as the spec's "Bitmaps" section lays them out.
 *
 * With encrypt.format=luks the LUKS header's clusters count too
 * (qcow2_crypt_measure).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "formats/qcow2/qcow2.h"

#define QCOW2_BITMAP_ENTRY_FIXED 24     /* bitmap directory entry without name and extra */
#define QCOW2_MAX_BITMAP_DIR     (64u << 20)

struct qcow2_measure_params {
    uint64_t cluster_size;
    uint64_t refcount_bits;
    uint32_t version;
    bool has_extended_l2;
    int prealloc;
    uint64_t crypt_header_len;      /* LUKS header bytes, 0 without */
};

static int
qcow2_measure_version(struct vimg_opts *opts, uint32_t *version, struct vimg_error *err)
{
    const char *compat = vimg_opts_get(opts, "compat");

    *version = 3;
    if (!compat || strcmp(compat, "1.1") == 0)
        return 0;
    if (strcmp(compat, "0.10") == 0) {
        *version = 2;
        return 0;
    }
    return vimg_error_set(err, EINVAL, "Invalid compatibility level: '%s'", compat);
}

/* The options in the order qemu-img checks them, with its texts (compat takes no v2/v3). */
static int
qcow2_measure_parse(struct vimg_opts *opts, struct qcow2_measure_params *p,
                    struct vimg_error *err)
{
    const char *prealloc;
    int ret;

    memset(p, 0, sizeof(*p));
    if ((ret = qcow2_crypt_measure(opts, &p->crypt_header_len, err)) < 0 ||
        (ret = vimg_opts_get_size(opts, "cluster_size", 65536, &p->cluster_size, err)) < 0)
        return ret;
    if (p->cluster_size < 512 || p->cluster_size > (2u << 20) ||
        (p->cluster_size & (p->cluster_size - 1)))
        return vimg_error_set(err, EINVAL, "Cluster size must be a power of two between 512 "
                              "and 2048k");
    if ((ret = qcow2_measure_version(opts, &p->version, err)) < 0 ||
        (ret = vimg_opts_get_bool(opts, "extended_l2", false, &p->has_extended_l2, err)) < 0)
        return ret;
    if (p->has_extended_l2 && p->cluster_size < 16384)
        return vimg_error_set(err, EINVAL, "Extended L2 entries are only supported with "
                              "cluster sizes of at least 16384 bytes");
    if ((ret = vimg_opts_get_number(opts, "refcount_bits", 16, &p->refcount_bits, err)) < 0)
        return ret;
    if (p->refcount_bits == 0 || p->refcount_bits > 64 ||
        (p->refcount_bits & (p->refcount_bits - 1)))
        return vimg_error_set(err, EINVAL, "Refcount width must be a power of two and may not "
                              "exceed 64 bits");
    if (p->version < 3 && p->refcount_bits != 16)
        return vimg_error_set(err, EINVAL, "Different refcount widths than 16 bits require "
                              "compatibility level 1.1 or above (use compat=1.1 or greater)");
    prealloc = vimg_opts_get(opts, "preallocation");
    if (prealloc && vimg_prealloc_parse(prealloc, &p->prealloc, NULL) < 0)
        return vimg_error_set(err, EINVAL, "invalid parameter value: %s", prealloc);
    return 0;
}

/*
 * Refcount blocks and table clusters for n_clusters clusters: the fixed
 * point where the refcount structures also count themselves.
 */
uint64_t
qcow2_refcount_metadata_clusters(uint64_t n_clusters, uint64_t cluster_size,
                                 uint64_t refcount_bits)
{
    uint64_t per_block = cluster_size * 8 / refcount_bits, per_table = cluster_size / 8;
    uint64_t blocks = 0, table = 0, n = 0, last;

    do {
        last = n;
        blocks = (n_clusters + table + blocks + per_block - 1) / per_block;
        table = (blocks + per_table - 1) / per_table;
        n = n_clusters + blocks + table;
    } while (n != last);
    return blocks + table;
}

/* Bytes of a fully allocated image of size bytes (cluster aligned). */
static uint64_t
qcow2_prealloc_size(uint64_t size, const struct qcow2_measure_params *p)
{
    uint64_t cs = p->cluster_size, l2e = p->has_extended_l2 ? 16 : 8;
    uint64_t meta = cs, n_l2e, n_l1e;

    n_l2e = qcow2_align_up(size / cs, cs / l2e);
    meta += n_l2e * l2e;
    n_l1e = qcow2_align_up(n_l2e * l2e / cs, cs / 8);
    meta += n_l1e * 8;
    meta += cs * qcow2_refcount_metadata_clusters((meta + size) / cs, cs, p->refcount_bits);
    return meta + size;
}

/* Bytes of data clusters the input uses: every cluster a data run touches, once per run. */
static int
qcow2_measure_data(struct vimg_node *in, uint64_t size, uint64_t cs, uint64_t *required,
                   struct vimg_error *err)
{
    struct vimg_block_status bs;
    uint64_t offset, pnum;
    int ret;

    *required = 0;
    for (offset = 0; offset < size; offset += pnum) {
        if ((ret = vimg_node_block_status_above(in, NULL, offset, size - offset, &bs,
                                                err)) < 0)
            return ret;
        pnum = bs.bytes;
        if (pnum == 0)
            return vimg_error_set(err, EIO, "Block status made no progress at offset 0x%"
                                  PRIx64, offset);
        if ((bs.flags & (VIMG_BS_DATA | VIMG_BS_ZERO)) != VIMG_BS_DATA)
            continue;
        pnum = qcow2_align_up(offset + pnum, cs) - offset;
        *required += offset % cs + pnum;
    }
    return 0;
}

/* Space for the input's persistent bitmaps, laid out with the new cluster size. */
static int
qcow2_measure_bitmaps(struct vimg_node *in, uint64_t size, uint64_t cs, uint64_t *out,
                      struct vimg_error *err)
{
    struct qcow2_state *s = in->state;
    uint64_t dir_bytes = 0, total = 0, at = 0;
    uint8_t *dir;
    int ret;

    *out = 0;
    if (!s->has_bitmaps_ext || !(s->hdr.autoclear_features & QCOW2_AUTOCLEAR_BITMAPS))
        return 0;
    if (s->bitmaps_dir_size > QCOW2_MAX_BITMAP_DIR)
        return vimg_error_set(err, EINVAL, "Bitmap directory size %" PRIu64 " is too large "
                              "(at most %u)", s->bitmaps_dir_size, QCOW2_MAX_BITMAP_DIR);
    if (!(dir = malloc(s->bitmaps_dir_size ? s->bitmaps_dir_size : 1)))
        return vimg_error_set(err, ENOMEM, "Out of memory");
    if ((ret = qcow2_read_meta(in->file, s->bitmaps_dir_offset, dir, s->bitmaps_dir_size,
                               err)) < 0)
        goto out;
    for (uint32_t i = 0; i < s->nb_bitmaps; i++) {
        uint64_t granularity, bits, bytes, extra, name_len;
        if (s->bitmaps_dir_size - at < QCOW2_BITMAP_ENTRY_FIXED) {
            ret = vimg_error_set(err, EINVAL, "Bitmap directory entry is truncated");
            goto out;
        }
        granularity = UINT64_C(1) << (dir[at + 17] & 63);
        name_len = qcow2_be16(dir + at + 18);
        extra = qcow2_be32(dir + at + 20);
        bits = size / granularity + (size % granularity ? 1 : 0);
        bytes = qcow2_align_up((bits + 7) / 8, cs);
        total += qcow2_align_up(bytes / cs * 8, cs) + bytes;
        dir_bytes += qcow2_align_up(QCOW2_BITMAP_ENTRY_FIXED + name_len, 8);
        at += qcow2_align_up(QCOW2_BITMAP_ENTRY_FIXED + extra + name_len, 8);
        if (at > s->bitmaps_dir_size)
            at = s->bitmaps_dir_size;
    }
    *out = total + qcow2_align_up(dir_bytes, cs);
out:
    free(dir);
    return ret;
}

int
qcow2_measure(struct vimg_opts *opts, struct vimg_node *in, uint64_t size,
              struct vimg_measure *out, struct vimg_error *err)
{
    struct qcow2_measure_params p;
    uint64_t virtual_size, required = 0, l2e;
    int ret;

    if ((ret = qcow2_measure_parse(opts, &p, err)) < 0)
        return ret;
    if (size > (uint64_t)INT64_MAX - p.cluster_size)
        return vimg_error_set(err, EINVAL, "The image size is too large (try using a larger "
                              "cluster size)");
    virtual_size = qcow2_align_up(size, p.cluster_size);
    l2e = p.has_extended_l2 ? 16 : 8;
    if ((virtual_size / p.cluster_size + p.cluster_size / l2e - 1) / (p.cluster_size / l2e) >
        QCOW2_MAX_L1_BYTES / 8)
        return vimg_error_set(err, EINVAL, "The image size is too large (try using a larger "
                              "cluster size)");
    if (in && (ret = qcow2_measure_data(in, size, p.cluster_size, &required, err)) < 0)
        return ret;
    if (p.prealloc == VIMG_PREALLOC_FULL || p.prealloc == VIMG_PREALLOC_FALLOC)
        required = virtual_size;
    out->fully_allocated = qcow2_prealloc_size(virtual_size, &p);
    out->fully_allocated += qcow2_align_up(p.crypt_header_len, p.cluster_size);
    out->required = out->fully_allocated - virtual_size + required;
    out->has_bitmaps = p.version >= 3 && in && strcmp(in->drv->name, "qcow2") == 0 &&
                       ((struct qcow2_state *)in->state)->hdr.version >= 3;
    if (out->has_bitmaps)
        return qcow2_measure_bitmaps(in, size, p.cluster_size, &out->bitmaps, err);
    return 0;
}
