/*
 * qcow2 compressed clusters (spec "Compressed Clusters Descriptor",
 * "compression_type"): raw deflate without zlib header ("zlib" in QEMU's
 * words) and, when libzstd is there, zstd. A compressed cluster's data may
 * be followed by unrelated bytes up to the end of its last sector:
 * decompression stops once a whole cluster has come out.
 *
 * Writes compress whole clusters (see qcow2_compressor for the parameters)
 * and, as QEMU does, a cluster whose compressed form would take the whole
 * cluster is written uncompressed instead, compressed clusters are packed
 * one after the other into shared host clusters (each host cluster's
 * refcount counts the compressed clusters that touch it), and a compressed
 * write never replaces a cluster that has a host cluster already (EIO).
 */
#include <errno.h>
#include <stdbool.h>
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
#ifdef VIMG_HAVE_LIBDEFLATE
#include <libdeflate.h>
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
 * A compressor for one request's clusters, set up once per request rather
 * than once per cluster.
 *
 * zlib type: raw deflate. With libdeflate at level QCOW2_DEFLATE_LEVEL it
 * takes 0.4 of the CPU time of zlib at QEMU's level 6 on base64 text and
 * 0.2 on binaries and text (level 2: 0.6 and 0.25), for sizes within 1.3%
 * of zlib's: 0.5% smaller on base64 text, 2.6% smaller on text, 1.3% larger
 * on binaries (level 2: 3% smaller).
 * libdeflate's window is 32 KiB where QEMU compresses with 4 KiB; QEMU
 * inflates a cluster in one call into a whole cluster's buffer, so it
 * accepts matches reaching back to the cluster's start whatever its window
 * (tests/integration/qcow2-compress-window.sh checks this with qemu-img and
 * qemu-io). Without libdeflate: zlib with QEMU's parameters (4 KiB window,
 * memLevel 9).
 *
 * zstd type: a context reused across the request's clusters, QEMU's
 * parameters (the default level, one frame per cluster).
 */
#define QCOW2_DEFLATE_LEVEL 1

struct qcow2_compressor {
    uint8_t type;
#ifdef VIMG_HAVE_LIBDEFLATE
    struct libdeflate_compressor *deflate;
#endif
#ifdef VIMG_HAVE_ZSTD
    ZSTD_CCtx *zstd;
#endif
};

static int
qcow2_compressor_init(struct qcow2_compressor *z, uint8_t type, struct vimg_error *err)
{
    memset(z, 0, sizeof(*z));
    z->type = type;
#ifdef VIMG_HAVE_LIBDEFLATE
    if (type == QCOW2_COMPRESSION_ZLIB &&
        !(z->deflate = libdeflate_alloc_compressor(QCOW2_DEFLATE_LEVEL)))
        return vimg_error_set(err, ENOMEM, "Could not initialise libdeflate");
#endif
#ifdef VIMG_HAVE_ZSTD
    if (type == QCOW2_COMPRESSION_ZSTD && !(z->zstd = ZSTD_createCCtx()))
        return vimg_error_set(err, ENOMEM, "Could not initialise zstd");
#endif
    if (type != QCOW2_COMPRESSION_ZLIB
#ifdef VIMG_HAVE_ZSTD
        && type != QCOW2_COMPRESSION_ZSTD
#endif
        )
        return vimg_error_set(err, ENOTSUP, "Compression type %u is not supported by this "
                              "build", type);
    return 0;
}

static void
qcow2_compressor_fini(struct qcow2_compressor *z)
{
#ifdef VIMG_HAVE_LIBDEFLATE
    libdeflate_free_compressor(z->deflate);
#endif
#ifdef VIMG_HAVE_ZSTD
    ZSTD_freeCCtx(z->zstd);
#endif
    (void)z;
}

/*
 * Compresses in into at most out_cap bytes of out. *out_len is 0 when the
 * result does not fit (the cluster is then stored uncompressed).
 */
static int
qcow2_deflate(struct qcow2_compressor *z, const uint8_t *in, size_t in_len, uint8_t *out,
              size_t out_cap, size_t *out_len, struct vimg_error *err)
{
#ifdef VIMG_HAVE_LIBDEFLATE
    (void)err;
    *out_len = libdeflate_deflate_compress(z->deflate, in, in_len, out, out_cap);
    return 0;
#else
    z_stream zs;
    int zr;

    (void)z;
    memset(&zs, 0, sizeof(zs));
    if (deflateInit2(&zs, Z_DEFAULT_COMPRESSION, Z_DEFLATED, -12, 9, Z_DEFAULT_STRATEGY) != Z_OK)
        return vimg_error_set(err, ENOMEM, "Could not initialise zlib");
    zs.next_in = (Bytef *)in;
    zs.avail_in = (uInt)in_len;
    zs.next_out = out;
    zs.avail_out = (uInt)out_cap;
    zr = deflate(&zs, Z_FINISH);
    deflateEnd(&zs);
    if (zr == Z_STREAM_END) {
        *out_len = out_cap - zs.avail_out;
        return 0;
    }
    if (zr == Z_OK || zr == Z_BUF_ERROR) {
        *out_len = 0;
        return 0;
    }
    return vimg_error_set(err, EIO, "Could not compress a cluster (zlib status %d)", zr);
#endif
}

#ifdef VIMG_HAVE_ZSTD
static int
qcow2_zstd(struct qcow2_compressor *z, const uint8_t *in, size_t in_len, uint8_t *out,
           size_t out_cap, size_t *out_len, struct vimg_error *err)
{
    ZSTD_inBuffer ib = { in, in_len, 0 };
    ZSTD_outBuffer ob = { out, out_cap, 0 };
    size_t zr;

    /* A frame that did not fit leaves the context mid-frame: start each one afresh. */
    ZSTD_CCtx_reset(z->zstd, ZSTD_reset_session_only);
    zr = ZSTD_compressStream2(z->zstd, &ob, &ib, ZSTD_e_end);
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

/*
 * Whether a cluster looks like random bytes (half the bench's clusters; in
 * images, files that are compressed already), which come out of deflate or
 * zstd larger than they went in, so that compressing them is only a waste of
 * time. Two cheap signs must agree: the byte histogram is flat enough that
 * Huffman codes could save less than 0.4% (by its collision entropy, which
 * never exceeds the Shannon entropy: sum of squared counts <= len^2 / 250.8,
 * i.e. over 7.97 bits a byte), and a content-defined sample of its 4-byte
 * strings (one in 16, the same in every copy of a repeated run) repeats at
 * most 8 times, so matches could cover no more than about 150 bytes. Where it
 * is wrong, the cluster would have shrunk by a few hundred bytes at most (on
 * text with .gz files among it: 17 of 4096 clusters, 842 bytes in all).
 */
static bool
qcow2_looks_incompressible(const uint8_t *in, size_t len)
{
    uint32_t hist[4][256] = { { 0 } }, seen[1024] = { 0 };
    uint64_t squares = 0;
    unsigned repeats = 0;
    size_t i;

    if (len < 4096)
        return false;
    /* Four histograms, so that consecutive equal bytes do not wait on each other. */
    for (i = 0; i + 4 <= len; i += 4) {
        hist[0][in[i]]++;
        hist[1][in[i + 1]]++;
        hist[2][in[i + 2]]++;
        hist[3][in[i + 3]]++;
    }
    for (; i < len; i++)
        hist[0][in[i]]++;
    for (unsigned c = 0; c < 256; c++) {
        uint64_t n = (uint64_t)hist[0][c] + hist[1][c] + hist[2][c] + hist[3][c];
        squares += n * n;
    }
    if (squares * 2508 > (uint64_t)len * len * 10)
        return false;
    for (i = 0; i + 4 <= len; i++) {
        uint32_t v, h;

        memcpy(&v, in + i, 4);
        h = v * 0x9E3779B1u;
        if (h >> 28)
            continue;
        if (seen[(h >> 16) & 1023] == v + 1) {
            if (++repeats > 8)
                return false;
        } else {
            seen[(h >> 16) & 1023] = v + 1;
        }
    }
    return true;
}

static int
qcow2_compress(struct qcow2_compressor *z, const uint8_t *in, size_t in_len, uint8_t *out,
               size_t out_cap, size_t *out_len, struct vimg_error *err)
{
    if (qcow2_looks_incompressible(in, in_len)) {
        *out_len = 0;
        return 0;
    }
#ifdef VIMG_HAVE_ZSTD
    if (z->type == QCOW2_COMPRESSION_ZSTD)
        return qcow2_zstd(z, in, in_len, out, out_cap, out_len, err);
#endif
    return qcow2_deflate(z, in, in_len, out, out_cap, out_len, err);
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

/* Most bytes of a request compressed before they are stored. */
#define QCOW2_COMPRESS_BATCH_BYTES ((uint64_t)2 << 20)

/*
 * Clusters compressed together and then stored together, in guest order
 * under one hold of the lock, so that a request's clusters follow each other
 * in the file even while other threads compress theirs.
 */
struct qcow2_batch {
    struct qcow2_compressor z;
    uint64_t max_clusters;
    uint8_t *out;           /* max_clusters slots of a cluster each */
    size_t *lens;           /* compressed bytes in each slot; 0: stored as is */
    int *rets;              /* each cluster's result */
    uint8_t *pad;           /* the image's last cluster, zero-padded */
};

static void
qcow2_batch_fini(struct qcow2_batch *b)
{
    qcow2_compressor_fini(&b->z);
    free(b->out);
    free(b->lens);
    free(b->rets);
    free(b->pad);
}

static int
qcow2_batch_init(struct qcow2_batch *b, const struct qcow2_state *s, uint64_t bytes,
                 struct vimg_error *err)
{
    uint64_t n_clusters = (bytes + s->cluster_size - 1) / s->cluster_size;
    uint64_t batch = QCOW2_COMPRESS_BATCH_BYTES / s->cluster_size;
    int ret;

    memset(b, 0, sizeof(*b));
    batch = batch ? batch : 1;
    b->max_clusters = n_clusters < batch ? n_clusters : batch;
    if ((ret = qcow2_compressor_init(&b->z, s->compression_type, err)) < 0)
        return ret;
    b->out = malloc(b->max_clusters * s->cluster_size);
    b->lens = calloc(b->max_clusters, sizeof(*b->lens));
    b->rets = calloc(b->max_clusters, sizeof(*b->rets));
    b->pad = malloc(s->cluster_size);
    if (!b->out || !b->lens || !b->rets || !b->pad)
        return vimg_error_set(err, ENOMEM, "Out of memory");
    return 0;
}

/* Compresses slot i: bytes of data, zero-padded to a whole cluster when the image ends inside it. */
static int
qcow2_batch_compress(struct qcow2_batch *b, const struct qcow2_state *s, uint64_t i,
                     const uint8_t *data, uint64_t bytes, struct vimg_error *err)
{
    const uint8_t *in = data;

    if (bytes < s->cluster_size) {
        memcpy(b->pad, data, bytes);
        memset(b->pad + bytes, 0, s->cluster_size - bytes);
        in = b->pad;
    }
    return qcow2_compress(&b->z, in, s->cluster_size, b->out + i * s->cluster_size,
                          s->cluster_size - 1, &b->lens[i], err);
}

/*
 * Stores the n clusters of the batch at guest offset cl (data: the
 * uncompressed bytes, for those that did not shrink). The first error goes to
 * *err; the other clusters are stored all the same.
 */
static int
qcow2_batch_store(struct vimg_node *node, struct qcow2_batch *b, uint64_t cl, uint64_t n,
                  const uint8_t *data, uint64_t bytes, struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    struct vimg_error cluster_err = { 0 };
    bool is_locked = false;
    int ret = 0;

    for (uint64_t i = 0; i < n; i++) {
        uint64_t pos = i * s->cluster_size;
        uint64_t len = bytes - pos < s->cluster_size ? bytes - pos : s->cluster_size;
        struct iovec iov = { .iov_base = (void *)(data + pos), .iov_len = len };
        int r;

        if (b->rets[i] < 0)
            continue;   /* reported by the caller */
        if (b->lens[i] == 0 && is_locked) {
            pthread_mutex_unlock(&s->lock);
            is_locked = false;
        }
        if (b->lens[i] == 0) {
            r = qcow2_write(node, cl + pos, len, &iov, 1, &cluster_err);
        } else {
            if (!is_locked)
                pthread_mutex_lock(&s->lock);
            is_locked = true;
            r = qcow2_store_compressed(node, cl + pos, b->out + pos, b->lens[i], &cluster_err);
        }
        if (r < 0 && ret == 0) {
            ret = r;
            *err = cluster_err;
        }
    }
    if (is_locked)
        pthread_mutex_unlock(&s->lock);
    return ret;
}

/* Compresses and stores [offset, +bytes) a batch at a time. */
static int
qcow2_write_batches(struct vimg_node *node, struct qcow2_batch *b, uint64_t offset,
                    const uint8_t *buf, uint64_t bytes, struct vimg_error *err)
{
    struct qcow2_state *s = node->state;
    struct vimg_error cluster_err = { 0 };
    uint64_t batch_bytes = b->max_clusters * s->cluster_size;
    int ret = 0;

    for (uint64_t done = 0; done < bytes; done += batch_bytes) {
        uint64_t n_bytes = bytes - done < batch_bytes ? bytes - done : batch_bytes;
        uint64_t n = (n_bytes + s->cluster_size - 1) / s->cluster_size;
        int r;

        for (uint64_t i = 0; i < n; i++) {
            uint64_t pos = i * s->cluster_size;
            uint64_t len = n_bytes - pos < s->cluster_size ? n_bytes - pos : s->cluster_size;

            b->rets[i] = qcow2_batch_compress(b, s, i, buf + done + pos, len, &cluster_err);
            if (b->rets[i] < 0 && ret == 0) {
                ret = b->rets[i];
                *err = cluster_err;
            }
        }
        r = qcow2_batch_store(node, b, offset + done, n, buf + done, n_bytes, &cluster_err);
        if (r < 0 && ret == 0) {
            ret = r;
            *err = cluster_err;
        }
    }
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
    struct qcow2_batch b;
    int ret;

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
    if ((ret = qcow2_batch_init(&b, s, bytes, err)) == 0)
        ret = qcow2_write_batches(node, &b, offset, buf, bytes, err);
    qcow2_batch_fini(&b);
    return ret;
}
