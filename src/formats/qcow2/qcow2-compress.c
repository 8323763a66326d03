/*
 * qcow2 compressed clusters (spec "Compressed Clusters Descriptor",
 * "compression_type"): raw deflate without zlib header ("zlib" in QEMU's
 * words) and, when libzstd is there, zstd. A compressed cluster's data may
 * be followed by unrelated bytes up to the end of its last sector:
 * decompression stops once a whole cluster has come out.
 *
 * Writes compress whole clusters as QEMU does: deflate with a 4 KiB window,
 * a cluster whose compressed form would take the whole cluster is written
 * uncompressed instead, compressed clusters are packed one after the other
 * into shared host clusters (each host cluster's refcount counts the
 * compressed clusters that touch it), and a compressed write never replaces
 * a cluster that has a host cluster already (EIO), as in QEMU.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include <zlib.h>

#include "config.h"
#include "formats/qcow2/qcow2.h"

#ifdef VIMG_HAVE_ZSTD
#include <zstd.h>
#include <zstd_errors.h>
#endif

static int
qcow2_inflate(const uint8_t *in, size_t in_len, uint8_t *out, size_t out_len,
              struct vimg_error *err)
{
    z_stream z;
    int zr;

    memset(&z, 0, sizeof(z));
    if (inflateInit2(&z, -15) != Z_OK)
        return vimg_error_set(err, ENOMEM, "Could not initialise zlib");
    z.next_in = (Bytef *)in;
    z.avail_in = (uInt)in_len;
    z.next_out = out;
    z.avail_out = (uInt)out_len;
    zr = inflate(&z, Z_FINISH);
    inflateEnd(&z);
    /* Output full is success even when the stream goes on (trailing bytes of the sector). */
    if ((zr == Z_STREAM_END || zr == Z_BUF_ERROR || zr == Z_OK) && z.avail_out == 0)
        return 0;
    return vimg_error_set(err, EIO, "Could not decompress a zlib-compressed cluster "
                          "(zlib status %d, %u bytes missing)", zr, z.avail_out);
}

#ifdef VIMG_HAVE_ZSTD
static int
qcow2_unzstd(const uint8_t *in, size_t in_len, uint8_t *out, size_t out_len,
             struct vimg_error *err)
{
    ZSTD_DCtx *dctx = ZSTD_createDCtx();
    ZSTD_inBuffer ib = { in, in_len, 0 };
    ZSTD_outBuffer ob = { out, out_len, 0 };
    size_t zr = 0;

    if (!dctx)
        return vimg_error_set(err, ENOMEM, "Could not initialise zstd");
    while (ob.pos < ob.size && ib.pos < ib.size) {
        zr = ZSTD_decompressStream(dctx, &ob, &ib);
        if (ZSTD_isError(zr) || zr == 0)
            break;
    }
    ZSTD_freeDCtx(dctx);
    if (ob.pos == ob.size && !ZSTD_isError(zr))
        return 0;
    return vimg_error_set(err, EIO, "Could not decompress a zstd-compressed cluster (%s)",
                          ZSTD_isError(zr) ? ZSTD_getErrorName(zr) : "truncated data");
}
#endif

int
qcow2_decompress(uint8_t type, const uint8_t *in, size_t in_len, uint8_t *out,
                 size_t out_len, struct vimg_error *err)
{
    if (type == QCOW2_COMPRESSION_ZLIB)
        return qcow2_inflate(in, in_len, out, out_len, err);
#ifdef VIMG_HAVE_ZSTD
    if (type == QCOW2_COMPRESSION_ZSTD)
        return qcow2_unzstd(in, in_len, out, out_len, err);
#endif
    return vimg_error_set(err, ENOTSUP, "Compression type %u is not supported by this build",
                          type);
}

/* ---- compressed writes ---- */

/*
 * Compresses in into at most out_cap bytes of out. *out_len is 0 when the
 * result does not fit (the cluster is then stored uncompressed).
 */
static int
qcow2_deflate(const uint8_t *in, size_t in_len, uint8_t *out, size_t out_cap,
              size_t *out_len, struct vimg_error *err)
{
    z_stream z;
    int zr;

    memset(&z, 0, sizeof(z));
    /* QEMU's parameters: raw deflate, 4 KiB window, memLevel 9. */
    if (deflateInit2(&z, Z_DEFAULT_COMPRESSION, Z_DEFLATED, -12, 9, Z_DEFAULT_STRATEGY) != Z_OK)
        return vimg_error_set(err, ENOMEM, "Could not initialise zlib");
    z.next_in = (Bytef *)in;
    z.avail_in = (uInt)in_len;
    z.next_out = out;
    z.avail_out = (uInt)out_cap;
    zr = deflate(&z, Z_FINISH);
    deflateEnd(&z);
    if (zr == Z_STREAM_END) {
        *out_len = out_cap - z.avail_out;
        return 0;
    }
    if (zr == Z_OK || zr == Z_BUF_ERROR) {
        *out_len = 0;
        return 0;
    }
    return vimg_error_set(err, EIO, "Could not compress a cluster (zlib status %d)", zr);
}

#ifdef VIMG_HAVE_ZSTD
static int
qcow2_zstd(const uint8_t *in, size_t in_len, uint8_t *out, size_t out_cap, size_t *out_len,
           struct vimg_error *err)
{
    ZSTD_CCtx *cctx = ZSTD_createCCtx();
    ZSTD_inBuffer ib = { in, in_len, 0 };
    ZSTD_outBuffer ob = { out, out_cap, 0 };
    size_t zr;

    if (!cctx)
        return vimg_error_set(err, ENOMEM, "Could not initialise zstd");
    zr = ZSTD_compressStream2(cctx, &ob, &ib, ZSTD_e_end);
    ZSTD_freeCCtx(cctx);
    *out_len = 0;
    if (ZSTD_isError(zr) && ZSTD_getErrorCode(zr) != ZSTD_error_dstSize_tooSmall)
        return vimg_error_set(err, EIO, "Could not compress a cluster (%s)",
                              ZSTD_getErrorName(zr));
    /* zr > 0: the frame did not fit. */
    if (!ZSTD_isError(zr) && zr == 0)
        *out_len = ob.pos;
    return 0;
}
#endif

static int
qcow2_compress(uint8_t type, const uint8_t *in, size_t in_len, uint8_t *out, size_t out_cap,
               size_t *out_len, struct vimg_error *err)
{
    if (type == QCOW2_COMPRESSION_ZLIB)
        return qcow2_deflate(in, in_len, out, out_cap, out_len, err);
#ifdef VIMG_HAVE_ZSTD
    if (type == QCOW2_COMPRESSION_ZSTD)
        return qcow2_zstd(in, in_len, out, out_cap, out_len, err);
#endif
    return vimg_error_set(err, ENOTSUP, "Compression type %u is not supported by this build",
                          type);
}

/* Whether the host cluster the last compressed cluster went to still holds it. */
static int
qcow2_packing_is_valid(struct vimg_node *node, bool *is_valid, struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    struct qcow2_mapping m;
    uint64_t rc;
    int ret;

    *is_valid = false;
    if (!s->free_byte_offset || s->free_byte_owner >= s->hdr.size)
        return 0;
    if ((ret = qcow2_get_mapping(node, s->free_byte_owner, 1, &m, err)) < 0)
        return ret;
    if (m.kind != QCOW2_COMPRESSED || m.l2_entry != s->free_byte_entry)
        return 0;
    if ((ret = qcow2_get_refcount(node, s->free_byte_offset >> s->cluster_bits, &rc, err)) < 0)
        return ret;
    *is_valid = rc < s->refcount_max;
    return 0;
}

/*
 * Host bytes for a compressed cluster of size bytes: right after the
 * previous one when they fit in its host cluster or the next free cluster
 * follows it, else at the start of a new cluster.
 */
static int
qcow2_alloc_bytes(struct vimg_node *node, uint64_t size, uint64_t *offset,
                  struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t off = s->free_byte_offset, free_in, new_cluster;
    bool is_valid;
    int ret;

    if ((ret = qcow2_packing_is_valid(node, &is_valid, err)) < 0)
        return ret;
    if (!is_valid)
        off = 0;
    free_in = off ? s->cluster_size - off % s->cluster_size : 0;
    if (off && free_in >= size) {
        ret = qcow2_update_refcount(node, off, size, 1, err);
    } else {
        /* The new cluster comes with its refcount of one. */
        if ((ret = qcow2_alloc_clusters(node, 1, &new_cluster, err)) < 0)
            return ret;
        if (off && qcow2_align_up(off, s->cluster_size) == new_cluster)
            ret = qcow2_update_refcount(node, off, 1, 1, err);
        else
            off = new_cluster;
    }
    if (ret < 0)
        return ret;
    *offset = off;
    s->free_byte_offset = (off + size) % s->cluster_size ? off + size : 0;
    return 0;
}

static uint64_t
qcow2_compressed_entry(const struct qcow2_state *s, uint64_t host, uint64_t size)
{
    uint32_t shift = 62 - (s->cluster_bits - 8);
    uint64_t n_sectors = ((host + size - 1) >> 9) - (host >> 9);

    return QCOW2_OFLAG_COMPRESSED | n_sectors << shift | host;
}

/* Stores size bytes of compressed data as the cluster at guest offset cl; lock held. */
static int
qcow2_store_compressed(struct vimg_node *node, uint64_t cl, const uint8_t *data, uint64_t size,
                       struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint64_t index = (cl >> s->cluster_bits) % s->l2_entries, entry, host;
    uint8_t *l2;
    int ret;

    if ((ret = qcow2_get_l2(node, cl, true, &l2, err)) < 0)
        return ret;
    entry = qcow2_be64(l2 + index * s->l2_entry_size);
    if (entry & QCOW2_OFFSET_MASK)
        return vimg_error_set(err, EIO, "Compressed write to cluster 0x%" PRIx64 ", which is "
                              "allocated already (L2 entry 0x%" PRIx64 ")", cl, entry);
    if ((ret = qcow2_alloc_bytes(node, size, &host, err)) < 0)
        return ret;
    /* Under the lock, so the write may extend the file itself (no fstat and ftruncate). */
    if ((ret = vimg_node_pwrite(node->file, host, data, size, 0, err)) < 0)
        return ret;
    /* The cache may have moved while we allocated: find the table again. */
    if ((ret = qcow2_get_l2(node, cl, true, &l2, err)) < 0)
        return ret;
    entry = qcow2_compressed_entry(s, host, size);
    qcow2_put_be64(l2 + index * s->l2_entry_size, entry);
    if (s->has_extended_l2)
        qcow2_put_be64(l2 + index * s->l2_entry_size + 8, 0);
    qcow2_cache_mark_dirty(&s->l2_cache, l2);
    s->free_byte_owner = cl;
    s->free_byte_entry = entry;
    return 0;
}

/*
 * One cluster at guest offset cl: bytes of data, zero-padded to a whole
 * cluster when the image ends inside it. tmp holds two clusters.
 */
static int
qcow2_write_compressed_cluster(struct vimg_node *node, uint64_t cl, const uint8_t *data,
                               uint64_t bytes, uint8_t *tmp, struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    uint8_t *in = tmp, *out = tmp + s->cluster_size;
    struct iovec iov = { .iov_base = (void *)data, .iov_len = bytes };
    size_t out_len = 0;
    int ret;

    memcpy(in, data, bytes);
    memset(in + bytes, 0, s->cluster_size - bytes);
    if ((ret = qcow2_compress(s->compression_type, in, s->cluster_size, out,
                              s->cluster_size - 1, &out_len, err)) < 0)
        return ret;
    if (out_len == 0)
        return qcow2_write(node, cl, bytes, &iov, 1, err);
    pthread_mutex_lock(&s->lock);
    ret = qcow2_store_compressed(node, cl, out, out_len, err);
    pthread_mutex_unlock(&s->lock);
    return ret;
}

/*
 * Every cluster is tried, as QEMU tries all of a request's clusters at
 * once: one that fails does not stop the others. The first error is
 * returned.
 */
int
qcow2_pwrite_compressed(struct vimg_node *node, uint64_t offset, const void *buf,
                        uint64_t bytes, struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    struct vimg_error cluster_err = { 0 };
    uint8_t *tmp;
    int ret = 0;

    if (s->has_data_file)
        return vimg_error_set(err, ENOTSUP, "Compressed writes are not supported with an "
                              "external data file");
    if (bytes == 0)
        return 0;
    if (offset % s->cluster_size)
        return vimg_error_set(err, EINVAL, "Compressed write at offset %" PRIu64 " is not "
                              "aligned to the cluster size (%" PRIu32 ")", offset,
                              s->cluster_size);
    if (bytes % s->cluster_size && offset + bytes != s->hdr.size)
        return vimg_error_set(err, EINVAL, "Compressed write of %" PRIu64 " bytes is not a "
                              "whole number of clusters (%" PRIu32 " bytes) and does not "
                              "end the image", bytes, s->cluster_size);
    if (!(tmp = malloc(2 * (size_t)s->cluster_size)))
        return vimg_error_set(err, ENOMEM, "Out of memory");
    for (uint64_t done = 0; done < bytes; done += s->cluster_size) {
        uint64_t n = bytes - done < s->cluster_size ? bytes - done : s->cluster_size;
        int r = qcow2_write_compressed_cluster(node, offset + done, (const uint8_t *)buf + done,
                                               n, tmp, &cluster_err);
        if (r < 0 && ret == 0) {
            ret = r;
            *err = cluster_err;
        }
    }
    free(tmp);
    return ret;
}
