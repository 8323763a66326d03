/*
 * The cloop format, read-only: compressed loop images with the V2.0 header
 * that create_compressed_fs (cloop-utils) writes. There is no written spec;
 * the samples in testdata/ and cloop-utils are the ground truth (SPECS.md,
 * "cloop").
 *
 * Layout: a 128-byte shell preamble, BE32 block_size, BE32 n_blocks, then
 * n_blocks + 1 BE64 file offsets: block i is the zlib stream between
 * offsets[i] and offsets[i + 1] and inflates to exactly block_size bytes.
 * The virtual size is n_blocks * block_size.
 *
 * Whole blocks inflate without a lock, so the parallel requests of convert
 * use every core; partial blocks share a one-block cache.
 *
 * Left out: writing, the V3/V4 headers and their per-block compressor flags.
 * Table entries past the end of the file read as zeros, as in qemu-img.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <zlib.h>

#include "config.h"
#include "core/driver.h"

#ifdef VIMG_HAVE_LIBDEFLATE
#include <libdeflate.h>
#endif

#define CLOOP_OFF_BLOCK_SIZE    128     /* BE32 */
#define CLOOP_OFF_N_BLOCKS      132     /* BE32 */
#define CLOOP_OFF_OFFSETS       136     /* BE64[n_blocks + 1] */
#define CLOOP_HEADER_SIZE       136

#define CLOOP_MAGIC_V2 \
    "#!/bin/sh\n#V2.0 Format\nmodprobe cloop file=$0 && mount -r -t iso9660 /dev/cloop $1\n"

/* Limits as qemu-img 7.2 enforces them. */
#define CLOOP_MAX_BLOCK_SIZE        (64u << 20)
#define CLOOP_MAX_COMPRESSED_SIZE   (2 * (uint64_t)CLOOP_MAX_BLOCK_SIZE)
#define CLOOP_MAX_N_BLOCKS          (UINT32_MAX / 8)
#define CLOOP_MAX_OFFSETS_BYTES     (512u << 20)
#define CLOOP_MAX_TRANSFER          (16u << 20)

struct cloop_state {
    uint32_t block_size;
    uint32_t n_blocks;
    uint64_t *offsets;          /* the n_stored first table entries; later ones are zero */
    uint64_t n_stored;
    uint64_t max_compressed;    /* largest offsets[i + 1] - offsets[i] */
    pthread_mutex_t lock;       /* protects the cache below and its buffers */
    bool has_lock;
    uint8_t *compressed;        /* max_compressed bytes */
    uint8_t *cached;            /* block_size bytes: block cached_index, inflated */
    uint32_t cached_index;
    bool has_cached;
};

static uint32_t
cloop_be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

static uint64_t
cloop_be64(const uint8_t *p)
{
    return (uint64_t)cloop_be32(p) << 32 | cloop_be32(p + 4);
}

static int
cloop_probe(const uint8_t *buf, size_t len, const char *filename)
{
    size_t n = strlen(CLOOP_MAGIC_V2);

    (void)filename;
    /* Below the scores of formats with a binary magic, as in qemu-img. */
    return len >= n && memcmp(buf, CLOOP_MAGIC_V2, n) == 0 ? 2 : 0;
}

static int
cloop_check_header(uint32_t block_size, uint32_t n_blocks, struct vimg_error *err)
{
    if (block_size == 0)
        return vimg_error_set(err, EINVAL, "block_size cannot be zero");
    if (block_size % 512)
        return vimg_error_set(err, EINVAL, "block_size %" PRIu32 " must be a multiple of 512",
                              block_size);
    if (block_size > CLOOP_MAX_BLOCK_SIZE)
        return vimg_error_set(err, EINVAL, "block_size %" PRIu32 " must be %u MB or less",
                              block_size, CLOOP_MAX_BLOCK_SIZE >> 20);
    if (n_blocks > CLOOP_MAX_N_BLOCKS)
        return vimg_error_set(err, EINVAL, "n_blocks %" PRIu32 " must be %" PRIu32 " or less",
                              n_blocks, (uint32_t)CLOOP_MAX_N_BLOCKS);
    /* qemu-img sizes the table in 32 bits: one more block wraps it to 0. */
    if (n_blocks == CLOOP_MAX_N_BLOCKS)
        return vimg_error_set(err, ENOMEM, "Could not allocate offsets table");
    if (((uint64_t)n_blocks + 1) * 8 > CLOOP_MAX_OFFSETS_BYTES)
        return vimg_error_set(err, EINVAL, "image requires too many offsets, try increasing "
                              "block size");
    return 0;
}

static uint64_t
cloop_offset(const struct cloop_state *s, uint64_t index)
{
    return index < s->n_stored ? s->offsets[index] : 0;
}

/*
 * Loads the part of the offsets table that lies inside the file: the rest
 * reads as zeros, so the allocation is bounded by the file size.
 */
static int
cloop_load_offsets(struct vimg_node *node, struct vimg_error *err)
{
    struct cloop_state *s = node->state;
    int64_t file_len = vimg_node_length(node->file, err);
    uint64_t n = (uint64_t)s->n_blocks + 1;
    uint8_t *raw;
    int ret;

    if (file_len < 0)
        return (int)file_len;
    if ((uint64_t)file_len <= CLOOP_OFF_OFFSETS)
        n = 0;
    else if (n > ((uint64_t)file_len - CLOOP_OFF_OFFSETS + 7) / 8)
        n = ((uint64_t)file_len - CLOOP_OFF_OFFSETS + 7) / 8;
    raw = malloc(n * 8 + 1);
    s->offsets = malloc(n * sizeof(*s->offsets) + 1);
    if (!raw || !s->offsets) {
        free(raw);
        return vimg_error_set(err, ENOMEM, "Out of memory");
    }
    ret = vimg_node_pread_padded(node->file, CLOOP_OFF_OFFSETS, raw, n * 8, err);
    for (uint64_t i = 0; ret == 0 && i < n; i++)
        s->offsets[i] = cloop_be64(raw + i * 8);
    s->n_stored = n;
    free(raw);
    return ret;
}

static int
cloop_check_offsets(struct cloop_state *s, struct vimg_error *err)
{
    for (uint64_t i = 1; i <= s->n_blocks; i++) {
        uint64_t prev = cloop_offset(s, i - 1), cur = cloop_offset(s, i);

        if (cur < prev)
            return vimg_error_set(err, EINVAL, "offsets not monotonically increasing at index "
                                  "%" PRIu64 ", image file is corrupt", i);
        if (cur - prev > CLOOP_MAX_COMPRESSED_SIZE)
            return vimg_error_set(err, EINVAL, "invalid compressed block size at index %" PRIu64
                                  ", image file is corrupt", i);
        if (cur - prev > s->max_compressed)
            s->max_compressed = cur - prev;
        if (i >= s->n_stored && cur == 0)
            break;      /* the rest of the table is zeros too */
    }
    return 0;
}

static void
cloop_close(struct vimg_node *node)
{
    struct cloop_state *s = node->state;

    free(s->offsets);
    free(s->compressed);
    free(s->cached);
    s->offsets = NULL;
    s->compressed = s->cached = NULL;
    if (s->has_lock)
        pthread_mutex_destroy(&s->lock);
    s->has_lock = false;
}

static int
cloop_open(struct vimg_node *node, struct vimg_opts *opts, unsigned flags,
           struct vimg_error *err)
{
    struct cloop_state *s = node->state;
    uint8_t buf[CLOOP_HEADER_SIZE];
    int ret;

    (void)opts;
    if (flags & VIMG_OPEN_RDWR)
        return vimg_error_set(err, EACCES, "Image is read-only");
    if ((ret = vimg_node_pread_padded(node->file, 0, buf, sizeof(buf), err)) < 0)
        return ret;
    s->block_size = cloop_be32(buf + CLOOP_OFF_BLOCK_SIZE);
    s->n_blocks = cloop_be32(buf + CLOOP_OFF_N_BLOCKS);
    if ((ret = cloop_check_header(s->block_size, s->n_blocks, err)) < 0)
        return ret;
    if ((ret = cloop_load_offsets(node, err)) < 0 || (ret = cloop_check_offsets(s, err)) < 0)
        goto fail;
    /* Both bounded: block_size <= 64 MiB, max_compressed <= 128 MiB. */
    s->compressed = malloc(s->max_compressed + 1);
    s->cached = malloc(s->block_size);
    if (!s->compressed || !s->cached) {
        ret = vimg_error_set(err, ENOMEM, "Out of memory");
        goto fail;
    }
    pthread_mutex_init(&s->lock, NULL);
    s->has_lock = true;
    node->request_alignment = 512;
    node->max_transfer = CLOOP_MAX_TRANSFER;
    return 0;
fail:
    cloop_close(node);
    return ret;
}

static int64_t
cloop_length(struct vimg_node *node, struct vimg_error *err)
{
    struct cloop_state *s = node->state;

    (void)err;
    return (int64_t)((uint64_t)s->n_blocks * s->block_size);
}

/*
 * Whether libdeflate (about twice as fast as zlib) inflates the stream to
 * exactly out_len bytes; on any failure the caller decides with zlib, so
 * that what is accepted stays what zlib accepts.
 */
static bool
cloop_fast_inflate(const uint8_t *in, uint64_t in_len, uint8_t *out, uint64_t out_len)
{
#ifdef VIMG_HAVE_LIBDEFLATE
    struct libdeflate_decompressor *d = libdeflate_alloc_decompressor();
    bool is_done;

    if (!d)
        return false;
    is_done = libdeflate_zlib_decompress(d, in, in_len, out, out_len, NULL) ==
              LIBDEFLATE_SUCCESS;
    libdeflate_free_decompressor(d);
    return is_done;
#else
    (void)in;
    (void)in_len;
    (void)out;
    (void)out_len;
    return false;
#endif
}

/* Inflates block index into out (block_size bytes), using compressed as scratch. */
static int
cloop_inflate_block(struct vimg_node *node, uint32_t index, uint8_t *compressed, uint8_t *out,
                    struct vimg_error *err)
{
    struct cloop_state *s = node->state;
    uint64_t start = cloop_offset(s, index);
    uint64_t len = cloop_offset(s, (uint64_t)index + 1) - start;
    z_stream zs;
    int ret, zret;

    if ((ret = vimg_node_pread_padded(node->file, start, compressed, len, err)) < 0)
        return ret;
    if (cloop_fast_inflate(compressed, len, out, s->block_size))
        return 0;
    memset(&zs, 0, sizeof(zs));
    if (inflateInit(&zs) != Z_OK)
        return vimg_error_set(err, ENOMEM, "Out of memory");
    zs.next_in = compressed;
    zs.avail_in = (uInt)len;
    zs.next_out = out;
    zs.avail_out = s->block_size;
    zret = inflate(&zs, Z_FINISH);
    inflateEnd(&zs);
    if (zret != Z_STREAM_END || zs.total_out != s->block_size)
        return vimg_error_set(err, EIO, "Block %" PRIu32 " at offset 0x%" PRIx64 " does not "
                              "inflate to %" PRIu32 " bytes", index, start, s->block_size);
    return 0;
}

/* Makes block index the cached one. Called with s->lock held. */
static int
cloop_load_block(struct vimg_node *node, uint32_t index, struct vimg_error *err)
{
    struct cloop_state *s = node->state;
    int ret;

    if (s->has_cached && s->cached_index == index)
        return 0;
    s->has_cached = false;
    if ((ret = cloop_inflate_block(node, index, s->compressed, s->cached, err)) < 0)
        return ret;
    s->cached_index = index;
    s->has_cached = true;
    return 0;
}

/* Part of one block, through the shared one-block cache. */
static int
cloop_read_partial(struct vimg_node *node, uint32_t index, uint64_t in_block, uint8_t *out,
                   uint64_t len, struct vimg_error *err)
{
    struct cloop_state *s = node->state;
    int ret;

    pthread_mutex_lock(&s->lock);
    if ((ret = cloop_load_block(node, index, err)) == 0)
        memcpy(out, s->cached + in_block, len);
    pthread_mutex_unlock(&s->lock);
    return ret;
}

/*
 * Whole blocks inflate straight into out without the lock, so that the
 * parallel requests of convert decompress on every core; partial blocks go
 * through the cache.
 */
static int
cloop_read(struct vimg_node *node, uint64_t offset, uint8_t *out, uint64_t bytes,
           struct vimg_error *err)
{
    struct cloop_state *s = node->state;
    uint8_t *compressed = NULL;
    int ret = 0;

    while (bytes && ret == 0) {
        uint32_t index = (uint32_t)(offset / s->block_size);
        uint64_t in_block = offset % s->block_size;
        uint64_t len = s->block_size - in_block < bytes ? s->block_size - in_block : bytes;

        if (len < s->block_size) {
            ret = cloop_read_partial(node, index, in_block, out, len, err);
        } else if (!compressed && !(compressed = malloc(s->max_compressed + 1))) {
            ret = vimg_error_set(err, ENOMEM, "Out of memory");
        } else {
            ret = cloop_inflate_block(node, index, compressed, out, err);
        }
        offset += len;
        out += len;
        bytes -= len;
    }
    free(compressed);
    return ret;
}

const struct vimg_driver vimg_cloop_driver = {
    .name = "cloop",
    .kind = VIMG_DRIVER_FORMAT,
    .lacks_get_info = true,
    .state_size = sizeof(struct cloop_state),
    .probe = cloop_probe,
    .open = cloop_open,
    .close = cloop_close,
    .pread = cloop_read,
    .length = cloop_length,
};
