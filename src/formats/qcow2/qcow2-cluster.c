/*
 * qcow2 guest clusters (spec "Cluster mapping", "Extended L2 Entries"): L1
 * and L2 lookups, reads (plain, zero, compressed, through the backing file),
 * allocating writes with copy-on-write, zero writes and discard.
 *
 * Locking: s->lock covers the mapping and every allocation. Reads and
 * writes into clusters that are already allocated to this image (refcount
 * exactly one) do their data I/O outside the lock; allocating writes keep
 * the lock for the whole cluster, so two writers can never allocate the
 * same guest cluster twice.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "formats/qcow2/qcow2.h"

struct vimg_node *
qcow2_data_node(struct vimg_node *node)
{
    return node->data_file ? node->data_file : node->file;
}

/* ---- L1 / L2 ---- */

static uint64_t
qcow2_l2_entry(const struct qcow2_state *s, const uint8_t *l2, uint64_t index)
{
    return qcow2_be64(l2 + index * s->l2_entry_size);
}

static uint64_t
qcow2_l2_bitmap(const struct qcow2_state *s, const uint8_t *l2, uint64_t index)
{
    return s->has_extended_l2 ? qcow2_be64(l2 + index * s->l2_entry_size + 8) : 0;
}

static void
qcow2_set_l2(struct qcow2_state *s, uint8_t *l2, uint64_t index, uint64_t entry,
             uint64_t bitmap)
{
    qcow2_put_be64(l2 + index * s->l2_entry_size, entry);
    if (s->has_extended_l2)
        qcow2_put_be64(l2 + index * s->l2_entry_size + 8, bitmap);
    qcow2_cache_mark_dirty(&s->l2_cache, l2);
}

static uint64_t
qcow2_l2_coverage(const struct qcow2_state *s)
{
    return (uint64_t)s->l2_entries * s->cluster_size;
}

static int
qcow2_write_l1_entry(struct vimg_node *node, uint64_t index, struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint8_t buf[8];

    qcow2_put_be64(buf, s->l1[index]);
    return qcow2_pwrite_file(node->file, s->hdr.l1_table_offset + index * 8, buf, 8, err);
}

static int
qcow2_load_l2(struct vimg_node *node, uint64_t l2_offset, uint8_t **l2, struct vimg_error *err)
{
    struct qcow2_state *s = node->state;

    if (l2_offset % s->cluster_size)
        return vimg_error_set(err, EIO, "L2 table offset 0x%" PRIx64 " is not aligned to the "
                              "cluster size (%" PRIu32 ")", l2_offset, s->cluster_size);
    return qcow2_cache_get(node, &s->l2_cache, l2_offset, false, l2, err);
}

/*
 * A new L2 table for L1 entry index (a copy of the shared one it had, if
 * any). The table and its refcount are on disk before the L1 entry names it.
 */
static int
qcow2_alloc_l2(struct vimg_node *node, uint64_t index, uint8_t **l2, struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t old = s->l1[index] & QCOW2_OFFSET_MASK;
    uint8_t *old_table = NULL, *table;
    uint64_t new_off;
    int ret;

    if ((ret = qcow2_alloc_clusters(node, 1, &new_off, err)) < 0)
        return ret;
    if (old && (ret = qcow2_load_l2(node, old, &old_table, err)) < 0)
        return ret;
    if ((ret = qcow2_cache_get(node, &s->l2_cache, new_off, true, &table, err)) < 0)
        return ret;
    if (old_table)
        memcpy(table, old_table, s->cluster_size);
    qcow2_cache_mark_dirty(&s->l2_cache, table);
    if ((ret = qcow2_cache_write_dirty(node, &s->l2_cache, err)) < 0 ||
        (ret = vimg_node_flush(node->file, err)) < 0)
        return ret;
    s->l1[index] = new_off | QCOW2_OFLAG_COPIED;
    if ((ret = qcow2_write_l1_entry(node, index, err)) < 0)
        return ret;
    if (old && (ret = qcow2_free_clusters(node, old, s->cluster_size, err)) < 0)
        return ret;
    /* Freeing may have evicted the table: look it up again. */
    return qcow2_load_l2(node, new_off, l2, err);
}

int
qcow2_get_l2(struct vimg_node *node, uint64_t offset, bool alloc, uint8_t **l2,
             struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t index = offset / qcow2_l2_coverage(s);
    uint64_t entry;

    *l2 = NULL;
    if (index >= s->l1_size) {
        if (!alloc)
            return 0;
        return vimg_error_set(err, EIO, "L1 index %" PRIu64 " beyond the L1 table (%" PRIu32
                              " entries)", index, s->l1_size);
    }
    entry = s->l1[index];
    if ((entry & QCOW2_OFFSET_MASK) % s->cluster_size)
        return qcow2_corruption_error(node, err, "L2 table offset %#" PRIx64 " unaligned (L1 "
                                      "index: %#" PRIx64 ")", entry & QCOW2_OFFSET_MASK, index);
    if (alloc && (!(entry & QCOW2_OFFSET_MASK) || !(entry & QCOW2_OFLAG_COPIED)))
        return qcow2_alloc_l2(node, index, l2, err);
    if (!(entry & QCOW2_OFFSET_MASK))
        return 0;
    return qcow2_load_l2(node, entry & QCOW2_OFFSET_MASK, l2, err);
}

void
qcow2_compressed_extent(const struct qcow2_state *s, uint64_t entry, uint64_t *offset,
                        uint64_t *bytes)
{
    uint32_t x = 62 - (s->cluster_bits - 8);
    uint64_t n_sectors = ((entry >> x) & ((UINT64_C(1) << (s->cluster_bits - 8)) - 1)) + 1;

    *offset = entry & ((UINT64_C(1) << x) - 1);
    *bytes = n_sectors * 512 - (*offset & 511);
}

static bool
qcow2_entry_has_host(const struct qcow2_state *s, uint64_t entry)
{
    if (entry & QCOW2_OFLAG_COMPRESSED)
        return false;
    return (entry & QCOW2_OFFSET_MASK) || (s->has_data_file && (entry & QCOW2_OFLAG_COPIED));
}

/*
 * What (sub)cluster sc of an L2 entry is. An invalid entry is a corruption
 * event as in QEMU (l2_offset and index name it in the report).
 */
static int
qcow2_classify(struct vimg_node *node, uint64_t l2_offset, uint64_t index, uint64_t entry,
               uint64_t bitmap, uint32_t sc, enum qcow2_kind *kind, struct vimg_error *err)
{
    const struct qcow2_state *s = node->state;
    const char *what = NULL;

    if (entry & QCOW2_OFLAG_COMPRESSED) {
        if (s->has_data_file)
            what = "Compressed cluster entry found in image with external data file";
        else
            *kind = QCOW2_COMPRESSED;
    } else if (s->has_extended_l2) {
        bool is_alloc = bitmap & (UINT64_C(1) << sc);
        bool is_zero = bitmap & (UINT64_C(1) << (sc + 32));
        if ((is_alloc && is_zero) || (is_alloc && !qcow2_entry_has_host(s, entry)))
            what = "Invalid cluster entry found ";
        else
            *kind = is_alloc ? QCOW2_NORMAL : is_zero ? QCOW2_ZERO : QCOW2_UNALLOCATED;
    } else if (s->hdr.version >= 3 && (entry & QCOW2_OFLAG_ZERO)) {
        *kind = QCOW2_ZERO;
    } else {
        *kind = qcow2_entry_has_host(s, entry) ? QCOW2_NORMAL : QCOW2_UNALLOCATED;
    }
    if (what)
        return qcow2_corruption_error(node, err, "%s (L2 offset: %#" PRIx64 ", L2 index: %#"
                                      PRIx64 ")", what, l2_offset, index);
    if (*kind == QCOW2_NORMAL && (entry & QCOW2_OFFSET_MASK) % s->cluster_size)
        return qcow2_corruption_error(node, err, "Cluster allocation offset %#" PRIx64
                                      " unaligned (L2 offset: %#" PRIx64 ", L2 index: %#"
                                      PRIx64 ")", entry & QCOW2_OFFSET_MASK, l2_offset, index);
    return 0;
}

int
qcow2_get_mapping(struct vimg_node *node, uint64_t offset, uint64_t bytes,
                  struct qcow2_mapping *m, struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t cover = qcow2_l2_coverage(s);
    uint64_t to_end = cover - offset % cover;
    uint64_t pos = offset, run = 0;
    uint8_t *l2;
    int ret;

    memset(m, 0, sizeof(*m));
    if (bytes > to_end)
        bytes = to_end;
    if ((ret = qcow2_get_l2(node, offset, false, &l2, err)) < 0)
        return ret;
    if (!l2) {
        m->kind = QCOW2_UNALLOCATED;
        m->bytes = bytes;
        return 0;
    }
    while (run < bytes) {
        uint64_t index = (pos / s->cluster_size) % s->l2_entries;
        uint64_t entry = qcow2_l2_entry(s, l2, index);
        uint64_t bitmap = qcow2_l2_bitmap(s, l2, index);
        uint32_t sc = (uint32_t)((pos % s->cluster_size) / s->subcluster_size);
        uint64_t host = (entry & QCOW2_OFFSET_MASK) + pos % s->cluster_size;
        enum qcow2_kind kind = QCOW2_UNALLOCATED;
        bool has_host;
        if ((ret = qcow2_classify(node, s->l1[offset / cover] & QCOW2_OFFSET_MASK, index, entry,
                                  bitmap, sc, &kind, err)) < 0)
            return ret;
        has_host = kind == QCOW2_NORMAL ||
                   (kind != QCOW2_COMPRESSED &&
                    (s->has_extended_l2 ? qcow2_entry_has_host(s, entry)
                                        : kind == QCOW2_ZERO && (entry & QCOW2_OFFSET_MASK)));
        if (run == 0) {
            m->kind = kind;
            m->l2_entry = entry;
            m->l2_bitmap = bitmap;
            m->host_offset = host;
            m->has_host = has_host;
            if (kind == QCOW2_COMPRESSED) {
                run = s->cluster_size - pos % s->cluster_size;
                break;
            }
        } else if (kind != m->kind || has_host != m->has_host ||
                   (has_host && host != m->host_offset + run)) {
            break;
        }
        run += s->subcluster_size - pos % s->subcluster_size;
        pos = offset + run;
    }
    m->bytes = run < bytes ? run : bytes;
    return 0;
}

/* ---- reads ---- */

static int
qcow2_read_backing(struct vimg_node *node, uint64_t offset, uint64_t bytes,
                   const struct iovec *iov, int n_iov, struct vimg_error *err)
{
    int64_t len;
    uint64_t in_backing;
    int ret = 0;

    if (!node->backing) {
        vimg_iov_memset(iov, n_iov, 0, bytes);
        return 0;
    }
    if ((len = vimg_node_length(node->backing, err)) < 0)
        return (int)len;
    in_backing = offset >= (uint64_t)len ? 0
                 : ((uint64_t)len - offset < bytes ? (uint64_t)len - offset : bytes);
    if (in_backing)
        ret = vimg_node_preadv(node->backing, offset, in_backing, iov, n_iov, 0, err);
    if (ret == 0 && in_backing < bytes)
        vimg_iov_memset(iov, n_iov, in_backing, bytes - in_backing);
    return ret;
}

static int
qcow2_read_compressed(struct vimg_node *node, uint64_t entry, uint64_t in_cluster,
                      uint64_t bytes, const struct iovec *iov, int n_iov,
                      struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t coff, csize;
    uint8_t *in = NULL, *out = NULL;
    int ret;

    qcow2_compressed_extent(s, entry, &coff, &csize);
    in = malloc(csize);
    out = malloc(s->cluster_size);
    if (!in || !out) {
        ret = vimg_error_set(err, ENOMEM, "Out of memory");
        goto out;
    }
    if ((ret = qcow2_read_meta(node->file, coff, in, csize, err)) < 0)
        goto out;
    if ((ret = qcow2_decompress(s->compression_type, in, csize, out, s->cluster_size,
                                err)) < 0)
        goto out;
    vimg_buf_to_iov(out + in_cluster, bytes, iov, n_iov, 0);
out:
    free(in);
    free(out);
    return ret;
}

static int
qcow2_read_run(struct vimg_node *node, const struct qcow2_mapping *m, uint64_t offset,
               const struct iovec *iov, int n_iov, struct vimg_error *err)
{
    struct qcow2_state *s = node->state;

    switch (m->kind) {
    case QCOW2_UNALLOCATED:
        return qcow2_read_backing(node, offset, m->bytes, iov, n_iov, err);
    case QCOW2_ZERO:
        vimg_iov_memset(iov, n_iov, 0, m->bytes);
        return 0;
    case QCOW2_COMPRESSED:
        return qcow2_read_compressed(node, m->l2_entry, offset % s->cluster_size, m->bytes,
                                     iov, n_iov, err);
    case QCOW2_NORMAL:
        if (s->has_data_file && !node->data_file)
            return vimg_error_set(err, EIO, "The external data file is not open");
        if (s->crypt)
            return qcow2_crypt_read(node, qcow2_data_node(node), m->host_offset, offset,
                                    m->bytes, iov, n_iov, err);
        return vimg_node_preadv(qcow2_data_node(node), m->host_offset, m->bytes, iov, n_iov,
                                0, err);
    }
    return vimg_error_set(err, EIO, "Unknown cluster kind");
}

/* Reads as the image sees it; with is_locked the caller holds s->lock. */
static int
qcow2_read_impl(struct vimg_node *node, uint64_t offset, uint64_t bytes,
                const struct iovec *iov, int n_iov, bool is_locked, struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t done = 0;

    while (done < bytes) {
        struct qcow2_mapping m;
        struct iovec *sub = NULL;
        int n_sub, ret;
        bool is_host;

        if (!is_locked)
            pthread_mutex_lock(&s->lock);
        ret = qcow2_get_mapping(node, offset + done, bytes - done, &m, err);
        /* Data in our file: its clusters must not be freed and reused until read. */
        is_host = !is_locked && ret == 0 && (m.kind == QCOW2_NORMAL ||
                                             m.kind == QCOW2_COMPRESSED);
        if (is_host)
            pthread_rwlock_rdlock(&s->io_lock);
        if (!is_locked)
            pthread_mutex_unlock(&s->lock);
        if (ret < 0)
            return ret;
        if (vimg_iov_slice(iov, n_iov, done, m.bytes, &sub, &n_sub) < 0)
            ret = vimg_error_set(err, ENOMEM, "Out of memory");
        else
            ret = qcow2_read_run(node, &m, offset + done, sub, n_sub, err);
        if (is_host)
            pthread_rwlock_unlock(&s->io_lock);
        free(sub);
        if (ret < 0)
            return ret;
        done += m.bytes;
    }
    return 0;
}

int
qcow2_read(struct vimg_node *node, uint64_t offset, uint64_t bytes, const struct iovec *iov,
           int n_iov, struct vimg_error *err)
{
    return qcow2_read_impl(node, offset, bytes, iov, n_iov, false, err);
}

/* ---- writes ---- */

/* Bit mask of the subclusters that [start, end) of a cluster touches. */
static uint64_t
qcow2_sc_mask(const struct qcow2_state *s, uint64_t start, uint64_t end)
{
    uint32_t first = (uint32_t)(start / s->subcluster_size);
    uint32_t last = (uint32_t)((end - 1) / s->subcluster_size);
    uint64_t mask = 0;

    for (uint32_t i = first; i <= last; i++)
        mask |= UINT64_C(1) << i;
    return mask;
}

/*
 * Whether a write of [in, in + len) of the cluster at guest offset cl can go
 * to *host without touching metadata (else it needs an allocating write).
 */
static int
qcow2_in_place_target(struct vimg_node *node, uint64_t cl, uint64_t in, uint64_t len,
                      bool *is_in_place, uint64_t *host, struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint8_t *l2;
    uint64_t index, entry, mask;
    int ret;

    *is_in_place = false;
    if ((ret = qcow2_get_l2(node, cl, false, &l2, err)) < 0 || !l2)
        return ret;
    if (!(s->l1[cl / qcow2_l2_coverage(s)] & QCOW2_OFLAG_COPIED))
        return 0;
    index = (cl / s->cluster_size) % s->l2_entries;
    entry = qcow2_l2_entry(s, l2, index);
    if (!qcow2_entry_has_host(s, entry) || !(entry & QCOW2_OFLAG_COPIED))
        return 0;
    if (s->has_extended_l2) {
        mask = qcow2_sc_mask(s, in, in + len);
        if ((qcow2_l2_bitmap(s, l2, index) & mask) != mask)
            return 0;
    } else if (s->hdr.version >= 3 && (entry & QCOW2_OFLAG_ZERO)) {
        return 0;
    }
    *host = (entry & QCOW2_OFFSET_MASK) + in;
    *is_in_place = true;
    return 0;
}

/* Frees what an L2 entry pointed at, once nothing refers to it. */
static int
qcow2_free_entry_target(struct vimg_node *node, uint64_t entry, struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t coff, csize;

    if (s->has_data_file)
        return 0;
    if (entry & QCOW2_OFLAG_COMPRESSED) {
        qcow2_compressed_extent(s, entry, &coff, &csize);
        return qcow2_free_clusters(node, coff, csize, err);
    }
    if (entry & QCOW2_OFFSET_MASK)
        return qcow2_free_clusters(node, entry & QCOW2_OFFSET_MASK, s->cluster_size, err);
    return 0;
}

/*
 * Allocating write of [in, in + len) of the cluster at guest offset cl, data
 * from iov. The parts of the written (sub)clusters outside the request are
 * copied from what the guest sees there now. Caller holds s->lock.
 */
/*
 * Writes [start, end) of a cluster at host from buf, where [in, +len) is the
 * guest's data and the rest copy-on-write. Like QEMU, a new cluster whose
 * copied parts are all zeros is zeroed cheaply in the file (a hole or an
 * unwritten extent) and only the guest's data is written. An encrypted
 * image's buf is encrypted in place. The lock is held, so the writes may
 * extend the file themselves: every write outside the lock goes to a part
 * of the file grown under it.
 */
static int
qcow2_write_new_cluster(struct vimg_node *node, uint64_t cl, uint64_t host, uint64_t start,
                        uint64_t end, uint64_t in, uint64_t len, uint8_t *buf,
                        bool is_new, struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    struct vimg_node *data = qcow2_data_node(node);
    struct vimg_error zerr = { 0 };
    int ret;

    /* Encrypted zeros are not zeros in the file: the whole range is written. */
    if (s->crypt) {
        if ((ret = qcow2_crypt_buf(node, true, host + start, cl + start, buf,
                                   end - start, err)) < 0)
            return ret;
        return vimg_node_pwrite(data, host + start, buf, end - start, 0, err);
    }
    /* Not past the end of the disk: QEMU copies that part as data. */
    if (is_new && (in > start || in + len < end) && cl + end <= s->hdr.size &&
        vimg_buffer_is_zero(buf, in - start) &&
        vimg_buffer_is_zero(buf + (in + len - start), end - (in + len)) &&
        vimg_node_pwrite_zeroes(data, host + start, end - start, VIMG_REQ_NO_FALLBACK,
                                &zerr) == 0)
        return vimg_node_pwrite(data, host + in, buf + (in - start), len, 0, err);
    return vimg_node_pwrite(data, host + start, buf, end - start, 0, err);
}

static int
qcow2_write_alloc(struct vimg_node *node, uint64_t cl, uint64_t in, uint64_t len,
                  const struct iovec *iov, int n_iov, struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t index = (cl / s->cluster_size) % s->l2_entries;
    uint64_t entry, bitmap, host, start, end, mask;
    bool is_reuse, is_full;
    struct iovec biov;
    uint8_t *l2, *buf;
    int ret;

    if ((ret = qcow2_get_l2(node, cl, true, &l2, err)) < 0)
        return ret;
    entry = qcow2_l2_entry(s, l2, index);
    bitmap = qcow2_l2_bitmap(s, l2, index);
    is_reuse = qcow2_entry_has_host(s, entry) && (entry & QCOW2_OFLAG_COPIED);
    if (s->has_data_file) {
        is_reuse = true;
        host = cl;
    } else if (is_reuse) {
        host = entry & QCOW2_OFFSET_MASK;
    } else if ((ret = qcow2_alloc_clusters(node, 1, &host, err)) < 0) {
        return ret;
    }
    /* Without subclusters, or when the old data lives elsewhere, the whole cluster is new. */
    is_full = !s->has_extended_l2 || (!is_reuse && (entry & ~QCOW2_OFLAG_COPIED));
    start = is_full ? 0 : in / s->subcluster_size * s->subcluster_size;
    end = is_full ? s->cluster_size : qcow2_align_up(in + len, s->subcluster_size);
    if (!(buf = malloc(end - start)))
        return vimg_error_set(err, ENOMEM, "Out of memory");
    biov.iov_base = buf;
    biov.iov_len = in - start;
    ret = in > start ? qcow2_read_impl(node, cl + start, in - start, &biov, 1, true, err) : 0;
    biov.iov_base = buf + (in + len - start);
    biov.iov_len = end - (in + len);
    if (ret == 0 && end > in + len)
        ret = qcow2_read_impl(node, cl + in + len, end - (in + len), &biov, 1, true, err);
    if (ret == 0) {
        vimg_iov_to_buf(iov, n_iov, 0, buf + (in - start), len);
        ret = qcow2_write_new_cluster(node, cl, host, start, end, in, len, buf, !is_reuse,
                                      err);
    }
    free(buf);
    if (ret < 0)
        return ret;
    /* The cache may have moved while we read: find the table again. */
    if ((ret = qcow2_get_l2(node, cl, true, &l2, err)) < 0)
        return ret;
    mask = is_full ? UINT64_C(0xffffffff) : qcow2_sc_mask(s, start, end);
    bitmap = is_full ? mask : (bitmap | mask) & ~(mask << 32);
    qcow2_set_l2(s, l2, index, host | QCOW2_OFLAG_COPIED, bitmap);
    return is_reuse ? 0 : qcow2_free_entry_target(node, entry, err);
}

static int qcow2_drop_entry_ref(struct vimg_node *node, uint64_t entry,
                                struct vimg_error *err);

/*
 * How many whole clusters from cl on (at most max, all in cl's L2 table)
 * need a new host cluster: none of them is a cluster of ours already.
 */
static int
qcow2_count_alloc_run(struct vimg_node *node, uint64_t cl, uint64_t max, uint64_t *n,
                      struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t index = (cl / s->cluster_size) % s->l2_entries, i;
    uint8_t *l2;
    int ret;

    *n = 0;
    if ((ret = qcow2_get_l2(node, cl, true, &l2, err)) < 0)
        return ret;
    for (i = 0; i < max && index + i < s->l2_entries; i++) {
        uint64_t entry = qcow2_l2_entry(s, l2, index + i);
        if (qcow2_entry_has_host(s, entry) && (entry & QCOW2_OFLAG_COPIED))
            break;
    }
    *n = i;
    return 0;
}

/*
 * Allocating write of n whole clusters from guest offset cl, all in one L2
 * table. Under the lock: one run of host clusters and the file grown over
 * it (so no later growth can cut a write that is still going on). Outside
 * it: the data (encrypted, with the host offset as IV for LUKS), one write
 * for the run. Then the L2 entries, which the cache writes only after the
 * refcounts. What the entries held before is freed after them, with one
 * flush for the whole run; a concurrent write of the same clusters loses
 * its clusters that way too, so none leaks.
 */
static int
qcow2_write_alloc_run(struct vimg_node *node, uint64_t cl, uint64_t n, const struct iovec *iov,
                      int n_iov, struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t index = (cl / s->cluster_size) % s->l2_entries;
    uint64_t bytes = n * s->cluster_size, host;
    uint64_t *old = malloc(n * sizeof(*old));
    bool has_old = false;
    uint8_t *l2, *buf = NULL;
    int ret;

    if (!old)
        return vimg_error_set(err, ENOMEM, "Out of memory");
    if (s->crypt && !(buf = malloc(bytes))) {
        free(old);
        return vimg_error_set(err, ENOMEM, "Out of memory");
    }
    if ((ret = qcow2_alloc_clusters(node, n, &host, err)) < 0)
        goto out;
    if ((ret = qcow2_grow_file(node->file, host + bytes, err)) < 0) {
        qcow2_update_refcount(node, host, bytes, -1, &(struct vimg_error){ 0 });
        goto out;
    }
    pthread_mutex_unlock(&s->lock);
    if (buf) {
        /* Contiguous in both guest and host: one pass of the cipher does the run. */
        vimg_iov_to_buf(iov, n_iov, 0, buf, bytes);
        ret = qcow2_crypt_buf(node, true, host, cl, buf, bytes, err);
        if (ret == 0)
            ret = vimg_node_pwrite(node->file, host, buf, bytes, 0, err);
    } else {
        ret = vimg_node_pwritev(node->file, host, bytes, iov, n_iov, 0, err);
    }
    pthread_mutex_lock(&s->lock);
    if (ret < 0) {
        /* Nothing points at the run yet: it goes back to the free clusters. */
        qcow2_update_refcount(node, host, bytes, -1, &(struct vimg_error){ 0 });
        goto out;
    }
    /* The cache may have moved while we allocated: find the table again. */
    if ((ret = qcow2_get_l2(node, cl, true, &l2, err)) < 0)
        goto out;
    for (uint64_t i = 0; i < n; i++) {
        old[i] = qcow2_l2_entry(s, l2, index + i);
        has_old |= (old[i] & (QCOW2_OFFSET_MASK | QCOW2_OFLAG_COMPRESSED)) != 0;
        qcow2_set_l2(s, l2, index + i, (host + i * s->cluster_size) | QCOW2_OFLAG_COPIED,
                     UINT64_C(0xffffffff));
    }
    if (has_old && (ret = qcow2_flush_metadata(node, err)) == 0)
        ret = vimg_node_flush(node->file, err);
    for (uint64_t i = 0; has_old && ret == 0 && i < n; i++)
        ret = qcow2_drop_entry_ref(node, old[i], err);
out:
    free(buf);
    free(old);
    return ret;
}

static int
qcow2_write_locked(struct vimg_node *node, uint64_t offset, uint64_t bytes,
                   const struct iovec *iov, int n_iov, struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t done = 0;

    while (done < bytes) {
        uint64_t pos = offset + done;
        uint64_t cl = pos - pos % s->cluster_size, in = pos - cl;
        uint64_t len = s->cluster_size - in < bytes - done ? s->cluster_size - in
                                                           : bytes - done;
        uint64_t host;
        bool is_in_place;
        struct iovec *sub;
        int n_sub, ret;

        ret = qcow2_in_place_target(node, cl, in, len, &is_in_place, &host, err);
        if (ret < 0)
            return ret;
        if (!is_in_place && !s->has_data_file && in == 0 && len == s->cluster_size) {
            uint64_t n;
            if ((ret = qcow2_count_alloc_run(node, cl, (bytes - done) / s->cluster_size, &n,
                                             err)) < 0)
                return ret;
            if (n > 1) {
                len = n * s->cluster_size;
                if (vimg_iov_slice(iov, n_iov, done, len, &sub, &n_sub) < 0)
                    return vimg_error_set(err, ENOMEM, "Out of memory");
                ret = qcow2_write_alloc_run(node, cl, n, sub, n_sub, err);
                free(sub);
                if (ret < 0)
                    return ret;
                done += len;
                continue;
            }
        }
        /* The clusters after it that are ours and follow it in the file: one write for all. */
        while (is_in_place && (in + len) % s->cluster_size == 0 && done + len < bytes) {
            uint64_t next = bytes - done - len < s->cluster_size ? bytes - done - len
                                                                 : s->cluster_size;
            uint64_t host2;
            bool is_next;
            if ((ret = qcow2_in_place_target(node, pos + len, 0, next, &is_next, &host2,
                                             err)) < 0)
                return ret;
            if (!is_next || host2 != host + len)
                break;
            len += next;
        }
        if (vimg_iov_slice(iov, n_iov, done, len, &sub, &n_sub) < 0)
            return vimg_error_set(err, ENOMEM, "Out of memory");
        if (ret == 0 && is_in_place)
            ret = qcow2_grow_file(qcow2_data_node(node), host + len, err);
        if (ret == 0 && is_in_place) {
            /*
             * Allocated and ours alone: the data goes straight there, outside the
             * lock (io_lock keeps the clusters from being freed and reused first).
             */
            pthread_rwlock_rdlock(&s->io_lock);
            pthread_mutex_unlock(&s->lock);
            ret = s->crypt ? qcow2_crypt_write(node, qcow2_data_node(node), host, pos, len,
                                               sub, n_sub, err)
                           : vimg_node_pwritev(qcow2_data_node(node), host, len, sub, n_sub,
                                               0, err);
            pthread_rwlock_unlock(&s->io_lock);
            pthread_mutex_lock(&s->lock);
        } else if (ret == 0) {
            ret = qcow2_write_alloc(node, cl, in, len, sub, n_sub, err);
        }
        free(sub);
        if (ret < 0)
            return ret;
        done += len;
    }
    return 0;
}

int
qcow2_write(struct vimg_node *node, uint64_t offset, uint64_t bytes, const struct iovec *iov,
            int n_iov, struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    int ret;

    pthread_mutex_lock(&s->lock);
    ret = qcow2_write_locked(node, offset, bytes, iov, n_iov, err);
    pthread_mutex_unlock(&s->lock);
    return ret;
}

/* ---- zero writes and discard ---- */

static int
qcow2_write_zero_data(struct vimg_node *node, uint64_t offset, uint64_t bytes,
                      struct vimg_error *err)
{
    uint8_t *zeros = calloc(1, bytes);
    struct iovec iov = { .iov_base = zeros, .iov_len = bytes };
    int ret;

    if (!zeros)
        return vimg_error_set(err, ENOMEM, "Out of memory");
    ret = qcow2_write_locked(node, offset, bytes, &iov, 1, err);
    free(zeros);
    return ret;
}

/*
 * Makes whole (sub)clusters [in, in + len) of the cluster at cl read as
 * zeros: keeps an allocation of ours unless may_unmap, frees any other.
 * is_discard gives discard's result on version 2 (unallocated).
 */
static int
qcow2_zero_clusters(struct vimg_node *node, uint64_t cl, uint64_t in, uint64_t len,
                    bool may_unmap, bool is_discard, bool no_fallback, struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t index = (cl / s->cluster_size) % s->l2_entries;
    uint64_t entry, bitmap, new_entry, mask;
    bool is_whole = len == s->cluster_size, is_ours, keep;
    uint8_t *l2;
    int ret;

    if ((ret = qcow2_get_l2(node, cl, true, &l2, err)) < 0)
        return ret;
    entry = qcow2_l2_entry(s, l2, index);
    bitmap = qcow2_l2_bitmap(s, l2, index);
    is_ours = qcow2_entry_has_host(s, entry) && (entry & QCOW2_OFLAG_COPIED);
    /* As QEMU's discard: what this image does not allocate reads as zeros already. */
    if (is_discard && !node->backing && !qcow2_entry_has_host(s, entry) &&
        !(entry & QCOW2_OFLAG_COMPRESSED))
        return 0;
    if (s->has_extended_l2) {
        /* Part of a cluster whose data is not ours alone: write the zeros as data. */
        if (!is_whole && !is_ours && (entry & ~QCOW2_OFLAG_COPIED)) {
            if (no_fallback)
                return vimg_error_set(err, ENOTSUP, "Zero write of part of a shared cluster "
                                      "needs the zeros written as data");
            return qcow2_write_zero_data(node, cl + in, len, err);
        }
        mask = qcow2_sc_mask(s, in, in + len);
        keep = is_ours && (!may_unmap || !is_whole);
        if (keep || !is_whole)
            bitmap = (bitmap & ~mask) | (mask << 32);
        else
            bitmap = UINT64_C(0xffffffff) << 32;
        qcow2_set_l2(s, l2, index, keep ? entry : 0, bitmap);
    } else {
        keep = is_ours && !may_unmap && !is_discard && s->hdr.version >= 3;
        if (s->hdr.version < 3)
            new_entry = 0;
        else
            new_entry = (keep ? (entry & ~QCOW2_OFLAG_ZERO) : 0) | QCOW2_OFLAG_ZERO;
        qcow2_set_l2(s, l2, index, new_entry, 0);
    }
    return keep ? 0 : qcow2_free_entry_target(node, entry, err);
}

/* Does [offset, +bytes) already read as zeros in this image alone (no backing data)? */
static int
qcow2_reads_zero(struct vimg_node *node, uint64_t offset, uint64_t bytes, bool *is_zero,
                 struct vimg_error *err)
{
    struct qcow2_mapping m;
    struct vimg_block_status bs;
    int ret;

    *is_zero = false;
    if ((ret = qcow2_get_mapping(node, offset, bytes, &m, err)) < 0)
        return ret;
    if (m.bytes < bytes)
        return 0;
    *is_zero = m.kind == QCOW2_ZERO || (m.kind == QCOW2_UNALLOCATED && !node->backing);
    if (m.kind != QCOW2_UNALLOCATED || !node->backing)
        return 0;
    /*
     * As QEMU, zeros past the end of the backing file or where no layer of
     * the chain allocates count too (not holes of a raw file, which QEMU's
     * quick check calls data).
     */
    if ((ret = vimg_node_block_status_above(node->backing, NULL, offset, bytes, &bs, err)) < 0)
        return ret;
    *is_zero = bs.bytes >= bytes && (bs.flags & VIMG_BS_ZERO) &&
               !(bs.flags & VIMG_BS_ALLOCATED);
    return 0;
}

/* Does [offset, +bytes) read as zeros already? An empty range does. */
static int
qcow2_reads_zero_or_empty(struct vimg_node *node, uint64_t offset, uint64_t bytes,
                          bool *is_zero, struct vimg_error *err)
{
    *is_zero = true;
    return bytes ? qcow2_reads_zero(node, offset, bytes, is_zero, err) : 0;
}

/*
 * A piece of one subcluster. As QEMU does, the whole subcluster gets the
 * zero flag when the rest of it already reads as zeros and it holds no data
 * of its own (unallocated or zero); else the zeros are written as data, or
 * with no_fallback (VIMG_REQ_NO_FALLBACK) the request fails with ENOTSUP.
 */
static int
qcow2_zero_partial(struct vimg_node *node, uint64_t pos, uint64_t len, bool may_unmap,
                   bool no_fallback, struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t sc = pos - pos % s->subcluster_size;
    uint64_t cl = pos - pos % s->cluster_size;
    struct qcow2_mapping m;
    bool head_zero, tail_zero;
    int ret;

    if ((ret = qcow2_reads_zero_or_empty(node, sc, pos - sc, &head_zero, err)) < 0 ||
        (ret = qcow2_reads_zero_or_empty(node, pos + len, sc + s->subcluster_size - pos - len,
                                         &tail_zero, err)) < 0 ||
        (ret = qcow2_get_mapping(node, sc, s->subcluster_size, &m, err)) < 0)
        return ret;
    if (head_zero && tail_zero && (m.kind == QCOW2_ZERO || m.kind == QCOW2_UNALLOCATED)) {
        if (s->hdr.version < 3)
            return 0;
        return qcow2_zero_clusters(node, cl, sc - cl, s->subcluster_size, may_unmap, false,
                                   no_fallback, err);
    }
    if (no_fallback)
        return vimg_error_set(err, ENOTSUP, "Zero write of part of a cluster needs the "
                              "zeros written as data");
    return qcow2_write_zero_data(node, pos, len, err);
}

static int
qcow2_zero_locked(struct vimg_node *node, uint64_t offset, uint64_t bytes, bool may_unmap,
                  bool no_fallback, struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t done = 0;

    while (done < bytes) {
        uint64_t pos = offset + done;
        uint64_t cl = pos - pos % s->cluster_size, in = pos - cl;
        uint64_t len = s->cluster_size - in < bytes - done ? s->cluster_size - in
                                                           : bytes - done;
        uint64_t head = in % s->subcluster_size ? s->subcluster_size - in % s->subcluster_size
                                                : 0;
        uint64_t mid, tail;
        int ret;

        if (head > len)
            head = len;
        mid = (len - head) / s->subcluster_size * s->subcluster_size;
        tail = len - head - mid;
        if (head && (ret = qcow2_zero_partial(node, pos, head, may_unmap, no_fallback,
                                              err)) < 0)
            return ret;
        if (mid && (ret = qcow2_zero_clusters(node, cl, in + head, mid, may_unmap, false,
                                              no_fallback, err)) < 0)
            return ret;
        if (tail && (ret = qcow2_zero_partial(node, pos + head + mid, tail, may_unmap,
                                              no_fallback, err)) < 0)
            return ret;
        done += len;
    }
    return 0;
}

int
qcow2_zero(struct vimg_node *node, uint64_t offset, uint64_t bytes, unsigned flags,
           struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    int ret;

    /*
     * Version 2 has no zero flag, and a raw data file must hold the zeros
     * itself: the core then writes zeros as data (or, with
     * VIMG_REQ_NO_FALLBACK, the request fails, as in QEMU). Over no backing
     * file a version 2 image can still leave unallocated clusters alone.
     */
    if ((s->hdr.version < 3 && (node->backing || (flags & VIMG_REQ_NO_FALLBACK))) ||
        s->is_data_file_raw)
        return vimg_error_set(err, ENOTSUP, "Zero writes need the data written here");
    /* As QEMU, a request that ends the image covers its last (sub)cluster whole. */
    if (offset + bytes >= qcow2_align_up(s->hdr.size, 512))
        bytes = qcow2_align_up(offset + bytes, s->subcluster_size) - offset;
    pthread_mutex_lock(&s->lock);
    ret = qcow2_zero_locked(node, offset, bytes, flags & VIMG_REQ_MAY_UNMAP,
                            flags & VIMG_REQ_NO_FALLBACK, err);
    pthread_mutex_unlock(&s->lock);
    return ret;
}

int
qcow2_discard_range(struct vimg_node *node, uint64_t offset, uint64_t bytes,
                    struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t start = qcow2_align_up(offset, s->cluster_size);
    uint64_t end = (offset + bytes) / s->cluster_size * s->cluster_size;
    int ret = 0;

    /* As QEMU, the partial cluster that ends the image goes too. */
    if (offset + bytes >= qcow2_align_up(s->hdr.size, 512))
        end = qcow2_align_up(offset + bytes, s->cluster_size);

    /*
     * Only whole clusters go. A raw data file must stay the image: its range
     * becomes zeros there, as QEMU's does. A version 2 image over a backing
     * file keeps its data (it could only show the backing file's instead).
     */
    if (s->is_data_file_raw) {
        if (end > s->hdr.size)
            end = s->hdr.size;
        if (start >= end || !node->data_file)
            return 0;
        return vimg_node_pwrite_zeroes(node->data_file, start, end - start, VIMG_REQ_MAY_UNMAP,
                                       err);
    }
    if (s->hdr.version < 3 && node->backing_filename)
        return 0;
    pthread_mutex_lock(&s->lock);
    for (uint64_t cl = start; cl < end && ret == 0; cl += s->cluster_size)
        ret = qcow2_zero_clusters(node, cl, 0, s->cluster_size, true, true, false, err);
    pthread_mutex_unlock(&s->lock);
    return ret;
}

/* ---- L1 growth and preallocation ---- */

/*
 * Replaces the L1 table by one of at least min_size entries at a new place:
 * the new table is on disk before the header names it; the old one is
 * freed after.
 */
int
qcow2_grow_l1(struct vimg_node *node, uint64_t min_size, struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t old_off = s->hdr.l1_table_offset, old_size = s->l1_size;
    uint64_t new_off, bytes, clusters;
    uint64_t *l1;
    uint8_t *buf, hdr[12];
    int ret;

    if (min_size <= s->l1_size)
        return 0;
    if (min_size > QCOW2_MAX_L1_BYTES / 8)
        return vimg_error_set(err, EFBIG, "L1 table of %" PRIu64 " entries is too large "
                              "(at most %u)", min_size, QCOW2_MAX_L1_BYTES / 8);
    bytes = min_size * 8;
    clusters = qcow2_align_up(bytes, s->cluster_size) / s->cluster_size;
    l1 = calloc(min_size, sizeof(*l1));
    buf = calloc(1, bytes);
    if (!l1 || !buf) {
        free(l1);
        free(buf);
        return vimg_error_set(err, ENOMEM, "Out of memory");
    }
    memcpy(l1, s->l1, old_size * sizeof(*l1));
    for (uint64_t i = 0; i < min_size; i++)
        qcow2_put_be64(buf + i * 8, l1[i]);
    ret = qcow2_alloc_clusters(node, clusters, &new_off, err);
    if (ret == 0 && (ret = qcow2_flush_metadata(node, err)) == 0)
        ret = qcow2_pwrite_file(node->file, new_off, buf, bytes, err);
    if (ret == 0)
        ret = vimg_node_flush(node->file, err);
    free(buf);
    if (ret < 0) {
        free(l1);
        return ret;
    }
    qcow2_put_be32(hdr, (uint32_t)min_size);
    qcow2_put_be64(hdr + 4, new_off);
    if ((ret = qcow2_write_header_field(node, QCOW2_OFF_L1_SIZE, hdr, 12, err)) < 0 ||
        (ret = vimg_node_flush(node->file, err)) < 0) {
        free(l1);
        return ret;
    }
    free(s->l1);
    s->l1 = l1;
    s->l1_size = (uint32_t)min_size;
    s->hdr.l1_size = (uint32_t)min_size;
    s->hdr.l1_table_offset = new_off;
    if (old_size)
        return qcow2_free_clusters(node, old_off, qcow2_align_up(old_size * 8,
                                                                 s->cluster_size), err);
    return 0;
}

/*
 * n contiguous clusters for preallocation, as QEMU takes them (a hole too
 * small for the run is passed over). Ones that were freed may hold old data,
 * so the part of the run inside the file is zeroed.
 */
static int
qcow2_prealloc_run(struct vimg_node *node, uint64_t n, uint64_t *host, struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t end;
    int64_t len;
    int ret;

    if ((ret = qcow2_alloc_clusters(node, n, host, err)) < 0)
        return ret;
    if ((len = vimg_node_length(node->file, err)) < 0)
        return (int)len;
    if (*host >= (uint64_t)len)
        return 0;
    end = *host + n * s->cluster_size < (uint64_t)len ? *host + n * s->cluster_size
                                                       : (uint64_t)len;
    return vimg_node_pwrite_zeroes(node->file, *host, end - *host, 0, err);
}

/*
 * preallocation=metadata: every guest cluster of [offset, +bytes) gets a host
 * cluster (or, with a data file, its fixed mapping). Like QEMU, the clusters
 * of one L2 table that need one get a contiguous run.
 */
int
qcow2_preallocate_metadata(struct vimg_node *node, uint64_t offset, uint64_t bytes,
                           struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t end = offset + bytes;
    int ret = 0;

    pthread_mutex_lock(&s->lock);
    for (uint64_t cl = offset - offset % s->cluster_size; cl < end && ret == 0;) {
        uint64_t index = (cl / s->cluster_size) % s->l2_entries, host = cl, n = 1;
        uint8_t *l2;
        if ((ret = qcow2_get_l2(node, cl, true, &l2, err)) < 0)
            break;
        if (qcow2_entry_has_host(s, qcow2_l2_entry(s, l2, index))) {
            cl += s->cluster_size;
            continue;
        }
        /* The run: the clusters after it in this L2 table that have no host cluster either. */
        while (index + n < s->l2_entries && cl + n * s->cluster_size < end &&
               !qcow2_entry_has_host(s, qcow2_l2_entry(s, l2, index + n)))
            n++;
        if (!s->has_data_file && (ret = qcow2_prealloc_run(node, n, &host, err)) < 0)
            break;
        if ((ret = qcow2_get_l2(node, cl, true, &l2, err)) < 0)
            break;
        /* With subclusters, all stay unallocated: the backing file still shows through. */
        for (uint64_t i = 0; i < n; i++)
            qcow2_set_l2(s, l2, index + i, (host + i * s->cluster_size) | QCOW2_OFLAG_COPIED,
                         0);
        cl += n * s->cluster_size;
    }
    if (ret == 0)
        ret = qcow2_flush_metadata(node, err);
    pthread_mutex_unlock(&s->lock);
    return ret;
}

/* ---- shrinking ---- */

/* Drops the reference an L2 entry held; the metadata naming it is already on disk. */
static int
qcow2_drop_entry_ref(struct vimg_node *node, uint64_t entry, struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t coff, csize;

    if (s->has_data_file)
        return 0;
    if (entry & QCOW2_OFLAG_COMPRESSED) {
        qcow2_compressed_extent(s, entry, &coff, &csize);
        return qcow2_update_refcount(node, coff, csize, -1, err);
    }
    if (entry & QCOW2_OFFSET_MASK)
        return qcow2_update_refcount(node, entry & QCOW2_OFFSET_MASK, s->cluster_size, -1, err);
    return 0;
}

/*
 * Unmaps entries [first, end) of the L2 table of L1 entry l1_index; with
 * is_whole the table itself goes too. The new entries reach disk before
 * the references they held are dropped.
 */
static int
qcow2_unmap_l2_range(struct vimg_node *node, uint64_t l1_index, uint64_t first, uint64_t end,
                     bool is_whole, struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t l2_off = s->l1[l1_index] & QCOW2_OFFSET_MASK;
    bool is_shared = !(s->l1[l1_index] & QCOW2_OFLAG_COPIED);
    uint64_t *old = calloc(s->l2_entries, sizeof(*old));
    uint8_t *l2;
    int ret;

    if (!old)
        return vimg_error_set(err, ENOMEM, "Out of memory");
    /* A table a snapshot shares keeps its entries: only its own reference goes. */
    ret = is_whole && is_shared ? 0 : qcow2_get_l2(node, l1_index * qcow2_l2_coverage(s),
                                                  !is_whole, &l2, err);
    for (uint64_t i = first; ret == 0 && !(is_whole && is_shared) && i < end; i++) {
        old[i] = qcow2_l2_entry(s, l2, i);
        if (!is_whole)
            qcow2_set_l2(s, l2, i, 0, 0);
    }
    if (ret == 0 && is_whole) {
        s->l1[l1_index] = 0;
        ret = qcow2_write_l1_entry(node, l1_index, err);
    }
    if (ret == 0 && (ret = qcow2_flush_metadata(node, err)) == 0)
        ret = vimg_node_flush(node->file, err);
    for (uint64_t i = first; ret == 0 && i < end; i++)
        ret = qcow2_drop_entry_ref(node, old[i], err);
    if (ret == 0 && is_whole)
        ret = qcow2_update_refcount(node, l2_off, s->cluster_size, -1, err);
    free(old);
    return ret;
}

/*
 * Unmaps every cluster from guest offset start (cluster aligned) to the end
 * of the L1 table, as QEMU's shrink does: even clusters that are allocated,
 * and the L2 tables wholly past start. The L1 table keeps its size.
 */
int
qcow2_discard_tail(struct vimg_node *node, uint64_t start, struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t cover = qcow2_l2_coverage(s);
    int ret = 0;

    for (uint64_t i = start / cover; i < s->l1_size && ret == 0; i++) {
        uint64_t first = i * cover >= start ? 0 : (start - i * cover) / s->cluster_size;
        if (!(s->l1[i] & QCOW2_OFFSET_MASK))
            continue;
        ret = qcow2_unmap_l2_range(node, i, first, s->l2_entries, first == 0, err);
    }
    s->free_byte_offset = 0;
    return ret;
}
